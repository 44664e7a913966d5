"""Tape reader: CSV or JSON Lines (optionally gzipped) files of ticks for replay and backtest.

Bad rows are never used: each is counted, and the first few are kept with their line
number and a reason code so a user can find and fix them. A row with bytes that are not
UTF-8 is one such row (`bad_encoding`), not a reason to stop reading. A tape with no
usable row at all is an error (TapeError), never an empty stream.

Rows are read and checked a block at a time, as columns: a plain CSV file (no quotes,
each line as wide as the header) is split at once, numbers and ISO times of one width
are read on arrays (exactly as float() and datetime.fromisoformat read them), and the
checks run on the columns (`ticks.clean`, tick_fault's rules); a row in any doubt is
read again on its own, which names what is wrong with it. Iterating a tape gives Ticks;
the backtest takes the columns (`Tape.columns`, `read_columns`).
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import gzip
import heapq
import itertools
import json
import math
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TypeVar

import numpy as np

from riskd.feeds.base import MAX_DEPTH, Tick, make_tick
from riskd.jit import njit
from riskd.ticks import TickColumns, clean, tick_fault

__all__ = [
    "MAX_EXAMPLES",
    "RejectedRow",
    "Tape",
    "TapeError",
    "TapeReport",
    "no_rows_error",
    "read_columns",
    "read_tape",
    "tape_kind",
]

MAX_EXAMPLES = 100
REQUIRED = ("ts", "market", "price")
OPTIONAL = ("bid", "ask", "depth")

# A file that cannot be read on: I/O errors, a truncated or corrupt gzip stream.
_READ_ERRORS = (OSError, EOFError, UnicodeDecodeError, zlib.error)

# Bytes that are not UTF-8 are decoded as lone surrogates (surrogateescape) and counted,
# so the row holding them is rejected, not the file. Rows are only searched for them
# once this count has moved: a clean file pays nothing per row.
_DECODE_ERRORS = "riskd.tape"
_replaced = [0]
_escape = codecs.lookup_error("surrogateescape")


def _count_and_escape(exc: UnicodeError) -> tuple[str | bytes, int]:
    _replaced[0] += 1
    return _escape(exc)


codecs.register_error(_DECODE_ERRORS, _count_and_escape)
_SURROGATES = re.compile("[\ud800-\udfff]+")

_CSV_SUFFIXES = (".csv", ".csv.gz")
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson", ".ndjson.gz")
# Metadata files that live beside tapes and are not tapes themselves.
_NOT_TAPES = frozenset({"markets.json", "markets.toml"})

_fromisoformat = datetime.fromisoformat
T = TypeVar("T")


class TapeError(ValueError):
    """A tape that cannot be read at all (missing, unreadable, unknown format, bad header,
    no usable row), or a file that stops being readable part of the way (`line`)."""

    def __init__(self, message: str, line: int | None = None, cause: str = "") -> None:
        super().__init__(message)
        self.line = line
        self.cause = cause


@dataclasses.dataclass(frozen=True)
class RejectedRow:
    """One skipped row: where it is and why."""

    path: str
    line: int
    reason: str
    detail: str


@dataclasses.dataclass
class TapeReport:
    """Counts for one tape file; filled while the file is read."""

    path: str
    rows: int = 0
    accepted: int = 0
    rejected: int = 0
    by_reason: dict[str, int] = dataclasses.field(default_factory=dict)
    examples: list[RejectedRow] = dataclasses.field(default_factory=list)
    # Accepted rows earlier than an accepted row of *another* market before them in the
    # same file: valid (order is only required per market), but the stream is then not
    # globally time-ordered at that point.
    unsorted: int = 0

    def reject(self, line: int, reason: str, detail: str) -> None:
        """Count a bad row; keep it as an example while under the cap."""
        self.rejected += 1
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(RejectedRow(self.path, line, reason, detail))

    def summary(self) -> str:
        """Readable multi-line text: counts, reasons, then the listed bad lines."""
        head = f"{self.path}: {self.rows} rows, {self.accepted} accepted, {self.rejected} rejected"
        if self.by_reason:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.by_reason.items()))
            head += f" ({reasons})"
        lines = [head]
        if self.unsorted:
            lines.append(
                f"  note: {self.unsorted} rows are earlier than a previous row of another "
                "market (kept; per-market order is intact)"
            )
        for ex in self.examples:
            lines.append(f"  line {ex.line}: {ex.reason}: {ex.detail}")
        if self.rejected > len(self.examples):
            lines.append(f"  ... and {self.rejected - len(self.examples)} more not listed")
        return "\n".join(lines)


def tape_kind(path: Path) -> str | None:
    """'csv', 'jsonl', or None if the suffix is not a tape format."""
    name = path.name.lower()
    if name.endswith(_CSV_SUFFIXES):
        return "csv"
    if name.endswith(_JSONL_SUFFIXES):
        return "jsonl"
    return None


def _open_text(path: Path) -> IO[str]:
    # utf-8-sig: spreadsheet exports often start with a BOM that would corrupt the first column.
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", errors=_DECODE_ERRORS, newline="")
    return open(path, encoding="utf-8-sig", errors=_DECODE_ERRORS, newline="")


def _not_utf8(text: str) -> str | None:
    """Why `text` (as read) is not valid text, or None if it is."""
    m = _SURROGATES.search(text)
    if m is None:
        return None
    raw = bytes(ord(c) - 0xDC00 for c in m.group() if 0xDC80 <= ord(c) <= 0xDCFF)
    return f"bytes {raw!r} are not UTF-8" if raw else "a lone surrogate is not valid text"


def _read_header(path: Path, reader: Iterator[list[str]]) -> list[str]:
    """The stripped column names; TapeError if a required one is missing."""
    header = next(reader, None)
    if header is None:
        raise TapeError(f"{path}: empty file, expected a CSV header with columns ts,market,price")
    names = [h.strip() for h in header]
    bad = _not_utf8(",".join(names))
    if bad:
        raise TapeError(f"{path}: line 1: header: {bad}")
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise TapeError(f"{path}: line 1: duplicate column {n!r} in header")
        seen.add(n)
    for col in REQUIRED:
        if col not in seen:
            raise TapeError(
                f"{path}: line 1: missing required column {col!r} (header: {','.join(names)})"
            )
    return names


def _fatal(path: Path, exc: Exception, line: int | None = None) -> TapeError:
    where = f"line {line}: " if line else ""
    return TapeError(f"{path}: {where}cannot read tape: {exc}", line, str(exc))


class _Bad(Exception):
    """Internal: a row is invalid for `reason`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _iso(raw: object, s: str) -> float:
    try:
        dt = _fromisoformat(s)
    except ValueError:
        raise _Bad("bad_ts", f"ts {raw!r} is neither unix seconds nor ISO 8601") from None
    if dt.tzinfo is None:
        raise _Bad("bad_ts", f"ts {raw!r} has no UTC offset (add Z or +00:00)")
    return dt.timestamp()


def _ts(raw: object) -> float:
    """Unix seconds from a number, a numeric string, or ISO 8601 with an offset; the
    range is checked with the other fields (`tick_fault`)."""
    if isinstance(raw, str):
        s = raw.strip()
        if len(s) > 10 and s[4] == "-":
            t = _iso(raw, s)
        else:
            try:
                t = float(s)
            except ValueError:
                t = _iso(raw, s)  # e.g. the basic format 20221109T000000Z
    elif isinstance(raw, int | float) and not isinstance(raw, bool):
        try:
            t = float(raw)
        except OverflowError:  # a JSON integer beyond any float
            raise _Bad("bad_ts", f"ts {raw!r} is out of range") from None
    else:
        raise _Bad("bad_ts", f"ts {raw!r} is neither unix seconds nor ISO 8601")
    return t


def _float(raw: object) -> float | None:
    """float(raw) of a number or a numeric string, else None."""
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        return None
    try:
        return float(raw)
    except (ValueError, OverflowError):  # OverflowError: a JSON integer beyond any float
        return None


def _number(raw: object) -> float:
    """float(raw), or NaN for what is not a number: `tick_fault` rejects NaN."""
    value = _float(raw)
    return math.nan if value is None else value


def _market(raw: object) -> str:
    """The market id, stripped; "" (rejected) unless a non-empty string of valid text."""
    if not isinstance(raw, str) or (not raw.isascii() and _SURROGATES.search(raw)):
        return ""  # a lone surrogate: e.g. from a JSON \udcff escape
    return raw.strip()


def _absent(raw: object) -> bool:
    return raw is None or (isinstance(raw, str) and not raw.strip())


def _tick(
    raw_ts: object,
    market: object,
    raw_price: object,
    raw_bid: object,
    raw_ask: object,
    raw_depth: object,
) -> Tick:
    """Read and check one row's values (blank or None = absent for optional fields)."""
    tick = make_tick(
        _market(market),
        _ts(raw_ts),
        _number(raw_price),
        None if _absent(raw_bid) else _number(raw_bid),
        None if _absent(raw_ask) else _number(raw_ask),
        None if _absent(raw_depth) else _number(raw_depth),
    )
    fault = tick_fault(tick)
    if fault is not None:
        raw = {
            "market": market,
            "price": raw_price,
            "bid": raw_bid,
            "ask": raw_ask,
            "depth": raw_depth,
            "ts": raw_ts,
        }
        raise _Bad(fault.reason, _why(fault.field, raw.get(fault.field), tick))
    return tick


def _why(field: str, raw: object, tick: Tick) -> str:
    """What is wrong with the row's `field` (`Fault.field`), for a person to fix it."""
    if field == "spread":
        return f"bid {tick.bid} > ask {tick.ask}"
    if field == "ts":
        return f"ts {raw!r} is not unix seconds (non-finite or out of range)"
    if field == "market":
        if isinstance(raw, str) and raw.strip():
            return f"market {raw!r} is not valid text (a lone surrogate)"
        return f"market {raw!r} is not a non-empty string"
    if _float(raw) is None:
        return f"{field} {raw!r} is not a number"
    if field == "depth":
        return f"depth {raw!r} is not a number in [0, {MAX_DEPTH:g}]"
    return f"{field} {raw!r} is outside [0, 1]"


class _Order:
    """Per-market order check for one file, a block of rows at a time: a row earlier
    than an accepted row of its market before it is rejected (`out_of_order`); an
    accepted row earlier than an accepted row of another market before it counts as
    `unsorted`."""

    __slots__ = ("last", "high")

    def __init__(self) -> None:
        self.last: dict[str, float] = {}  # per market, its latest accepted time
        self.high = -math.inf

    def admit(self, cols: TickColumns) -> tuple[np.ndarray, np.ndarray, int]:
        """(accepted, each row's bound: the latest accepted time of its market before
        it, rows counted unsorted) for rows that follow those admitted so far."""
        floor = np.array([self.last.get(m, -math.inf) for m in cols.markets])
        # A rejected row is below its bound, so it never raises it: the bound is the
        # running maximum of all earlier rows of the market.
        if len(floor) == 1:
            bound = np.maximum.accumulate(np.concatenate((floor, cols.ts)))[:-1]
        else:
            bound = _running_max(cols.market, cols.ts, floor)
        ok = ~(cols.ts < bound)
        kept = cols.ts[ok]
        if not kept.shape[0]:
            return ok, bound, 0
        high = np.maximum.accumulate(np.concatenate(([self.high], kept)))
        self.high = float(high[-1])
        np.maximum.at(floor, cols.market[ok], kept)
        self.last.update(zip(cols.markets, floor.tolist(), strict=True))
        return ok, bound, int(np.count_nonzero(kept < high[:-1]))


def _running_max(market: np.ndarray, ts: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """Each row's maximum of its market's `floor` and the earlier rows' ts."""
    out = np.empty(ts.shape[0])
    order = np.argsort(market, kind="stable")
    for rows in np.split(order, np.flatnonzero(np.diff(market[order])) + 1):
        if rows.shape[0]:
            run = np.concatenate((floor[market[rows[:1]]], ts[rows]))
            out[rows] = np.maximum.accumulate(run)[:-1]
    return out


# A rejected row: (its place in its block, line, reason, detail).
Rejected = tuple[int, int, str, str]


class _Pending:
    """Rows read and not yet checked: the rows kept (CSV fields, or JSON Lines ticks)
    and their lines, appended by the reader, and the rows rejected on the way."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.lines: list[int] = []
        self.rejected: list[Rejected] = []

    def reject(self, line: int, reason: str, detail: str) -> None:
        self.rejected.append((len(self.items) + len(self.rejected), line, reason, detail))

    def places(self) -> np.ndarray:
        """Each kept row's place in the block, among the rows rejected."""
        kept = np.arange(len(self.items))
        if not self.rejected:
            return kept
        before = np.array([r[0] - j for j, r in enumerate(self.rejected)])  # rows kept before
        return kept + np.searchsorted(before, kept, side="right")

    def __bool__(self) -> bool:
        return bool(self.items or self.rejected)


@dataclasses.dataclass
class _Block:
    """Rows of a file, read and valid, before the order check, with each row's line
    and place in the block; the block's rows rejected so far; `rows` counts both."""

    cols: TickColumns
    lines: np.ndarray
    places: np.ndarray
    rejected: list[Rejected]
    rows: int


# Rows checked at once. A file's first block is one row: the probe reads no further,
# and a file's report starts to fill with its first row.
BLOCK = 4096


def _admit(block: _Block, order: _Order, report: TapeReport) -> TickColumns:
    """The block's rows in order (`_Order`); rejections reported in the order of the
    rows. The rows accepted."""
    ok, bound, unsorted = order.admit(block.cols)
    rejected = block.rejected
    late = np.flatnonzero(~ok)
    if late.shape[0]:
        names = block.cols.names()
        for k in late.tolist():
            rejected.append(
                (
                    int(block.places[k]),
                    int(block.lines[k]),
                    "out_of_order",
                    f"ts {block.cols.ts[k].item()} is earlier than the previous "
                    f"{bound[k].item()} for market {names[k]!r}",
                )
            )
    rejected.sort()
    for _, line, reason, detail in rejected:
        report.reject(line, reason, detail)
    report.rows += block.rows
    report.unsorted += unsorted
    accepted = block.cols if not late.shape[0] else block.cols.take(ok)
    report.accepted += len(accepted)
    return accepted


def _blocks(path: Path, report: TapeReport, small: int = 0) -> Iterator[TickColumns]:
    """A file's accepted rows, a block at a time; a plain CSV file of up to `small`
    characters split at once (`_csv_at_once`), its first row a block of its own."""
    order = _Order()
    if tape_kind(path) == "jsonl":
        blocks = _jsonl_blocks(path)
    else:
        raw = _csv_at_once(path, small) if small else None
        raws = _csv_lines(path) if raw is None else raw.split(1)
        blocks = (block for raw in raws for block in _parse(raw))
    for block in blocks:
        yield _admit(block, order, report)


# A plain CSV file up to this many characters is split at once when a tape is iterated:
# its columns take about the memory of a block.
SMALL_FILE = 1 << 19


def _ticks(path: Path, report: TapeReport) -> Iterator[Tick]:
    for block in _blocks(path, report, SMALL_FILE):
        yield from block.ticks()


@dataclasses.dataclass
class _Raw:
    """Rows of CSV files of one header as read: the fields of those to check, by
    header column (`where`: the columns of ts, market, price, bid, ask, depth), with
    their lines and places in their block; per file, how many rows to check (`sizes`,
    in order), the rows already rejected and the rows counted (`rows`)."""

    where: tuple[int | None, ...]
    columns: list[Sequence[str]]
    lines: np.ndarray
    places: np.ndarray
    sizes: list[int]
    rejected: list[list[Rejected]]
    rows: list[int]

    def split(self, first: int) -> list[_Raw]:
        """A file's first rows and the rest, as two blocks (none rejected yet)."""
        assert len(self.sizes) == 1 and not self.rejected[0]
        out = []
        for part in (slice(0, first), slice(first, None)):
            columns, n = [c[part] for c in self.columns], len(self.lines[part])
            out.append(
                _Raw(self.where, columns, self.lines[part], self.places[part], [n], [[]], [n])
            )
        return out


def _where(names: list[str]) -> tuple[int | None, ...]:
    return tuple(names.index(c) if c in names else None for c in (*REQUIRED, *OPTIONAL))


def _csv_lines(path: Path) -> Iterator[_Raw]:
    """A CSV file's rows in blocks, read line by line by the csv module. csv.Error
    (e.g. a field over the size limit) costs its row: the reader goes on at the next
    line. A file that cannot be read on ends with its rows read so far, then TapeError."""
    reader = None
    replaced, seen = _replaced, _replaced[0]
    pending, size = _Pending(), 1
    where: tuple[int | None, ...] = ()
    ncols = 0
    try:
        with _open_text(path) as f:
            reader = csv.reader(f)
            names = _read_header(path, reader)
            where, ncols = _where(names), len(names)
            while True:
                try:
                    rows, lines = pending.items, pending.lines
                    for row in reader:
                        if len(row) != ncols or replaced[0] != seen:
                            bad = _misfit(row, ncols)
                            if bad is not None:
                                if bad is not _BLANK:
                                    pending.reject(reader.line_num, *bad)
                                continue
                        rows.append(row)
                        lines.append(reader.line_num)
                        if len(rows) == size:
                            yield _raw(pending, where, ncols)
                            pending, size = _Pending(), BLOCK
                            rows, lines = pending.items, pending.lines
                    break
                except csv.Error as exc:
                    pending.reject(reader.line_num, "bad_row", f"not CSV: {exc}")
    except (*_READ_ERRORS, csv.Error) as exc:
        if pending:
            yield _raw(pending, where, ncols)
        raise _fatal(path, exc, reader.line_num if reader else None) from exc
    if pending:
        yield _raw(pending, where, ncols)


def _raw(pending: _Pending, where: tuple[int | None, ...], ncols: int) -> _Raw:
    rows = pending.items
    return _Raw(
        where=where,
        columns=list(zip(*rows, strict=True)) if rows else [()] * ncols,
        lines=np.array(pending.lines, np.int64),
        places=pending.places(),
        sizes=[len(rows)],
        rejected=[pending.rejected],
        rows=[len(rows) + len(pending.rejected)],
    )


_BLANK = ("", "")


def _misfit(row: list[str], ncols: int) -> tuple[str, str] | None:
    """Why a row that may not be (as wide as the header, or UTF-8) is not one to read:
    (reason, detail), or _BLANK for a blank line (no row); None: it is."""
    why = _not_utf8(",".join(row))
    if why:
        return "bad_encoding", why
    if len(row) == ncols:
        return None
    if len(row) > 1 or (row and row[0].strip()):
        return "bad_row", f"{len(row)} fields, header has {ncols}"
    return _BLANK


def _csv_at_once(path: Path, limit: int) -> _Raw | None:
    """A plain CSV file's rows at once (`_plain`), or None: `_csv_lines` reads it."""
    text = _plain(path, limit)
    if text is None:
        return None
    names, body = text
    raw, taken = _plain_rows(names, [body])
    return raw if taken else None


def _read_text(path: Path, limit: int) -> str:
    """The file's text as `_open_text` reads it, up to limit + 1 characters; all of it
    (limit < 0) decoded at once, which is what reading it through the text layer gives."""
    if limit >= 0:
        with _open_text(path) as f:
            return f.read(limit + 1)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as raw:
        data = raw.read()
    return data.decode("utf-8-sig", _DECODE_ERRORS)


def _plain(path: Path, limit: int = -1) -> tuple[list[str], str] | None:
    """A plain CSV file's header and its other lines (without the last newline), or
    None: the file is not plain (or not readable, or over `limit` characters). Plain:
    UTF-8 without quotes, NUL or a lone CR, the header's line within the csv module's
    field limit, no blank line at the end; and, checked by `_plain_rows`, each line as
    wide as the header and within the limit: splitting at commas and newlines is then
    what the csv module reads, line for line."""
    seen = _replaced[0]
    try:
        text = _read_text(path, limit)
    except _READ_ERRORS:
        return None
    if 0 <= limit < len(text):
        return None
    if _replaced[0] != seen or '"' in text or "\0" in text:
        return None
    if "\r" in text:
        lf = _lf(text)
        if lf is None:  # a lone CR
            return None
        text = lf
    at = text.find("\n")
    head = text if at < 0 else text[:at]
    if not head or text.endswith("\n\n", at + 1) or len(head) > csv.field_size_limit():
        return None
    # The other lines, without the last newline: one copy of a large text.
    body = "" if at < 0 else text[at + 1 : len(text) - text.endswith("\n", at + 1)]
    try:
        return _read_header(path, iter([head.split(",")])), body
    except TapeError:
        return None


def _lf(text: str) -> str | None:
    """`text` with each CRLF as LF, or None if it has a lone CR. ASCII on its bytes,
    where deleting every CR is one fast pass."""
    if not text.isascii():
        text = text.replace("\r\n", "\n")
        return None if "\r" in text else text
    raw = text.encode("ascii")
    data = np.frombuffer(raw, np.uint8)
    after = np.flatnonzero(data == 13) + 1
    if after.shape[0] and (after[-1] == data.shape[0] or (data[after] != 10).any()):
        return None
    return raw.replace(b"\r", b"").decode("ascii")


def _plain_rows(names: list[str], bodies: list[str]) -> tuple[_Raw, list[int]]:
    """The rows of plain files of one header (`_plain`), split at once: of the files
    whose every line is as wide as the header (their numbers: `taken`). ASCII files
    are split on their bytes (`_Fields`), others at commas into strings."""
    ncols = len(names)
    taken, sizes, bounds = [], [], []
    for k, body in enumerate(bodies):
        n = body.count("\n") + 1 if body else 0
        seps = _even(body, n, ncols)
        if seps is None:
            continue
        taken.append(k)
        sizes.append(n)
        bounds.append(seps)
    kept = [bodies[k] for k in taken]
    if all(map(str.isascii, kept)):
        columns: list[Sequence[str]] = _fields(kept, bounds, ncols)
    else:
        columns = _split(kept, ncols)
    places = np.concatenate([np.arange(n) for n in sizes] + [np.zeros(0, np.int64)])
    return _Raw(
        where=_where(names),
        columns=columns,
        lines=places + 2,  # after the header
        places=places,
        sizes=sizes,
        rejected=[[] for _ in sizes],
        rows=sizes,
    ), taken


def _split(bodies: list[str], ncols: int) -> list[Sequence[str]]:
    """The fields of plain bodies, column by column, as strings."""
    columns: list[list[str]] = [[] for _ in range(ncols)]
    for body in bodies:
        fields = body.replace("\n", ",").split(",") if body else []
        for i, column in enumerate(columns):
            column += fields[i::ncols]
    return list(columns)


def _fields(bodies: list[str], bounds: list[np.ndarray], ncols: int) -> list[Sequence[str]]:
    """The fields of plain ASCII bodies, column by column, as where each starts and
    ends in the bodies joined (`bounds`: each body's commas and newlines, `_even`)."""
    text = "".join(bodies)
    starts, ends, offset = [np.zeros((0, ncols), np.int64)], [np.zeros((0, ncols), np.int64)], 0
    for body, seps in zip(bodies, bounds, strict=True):
        if body:
            end = np.append(seps, len(body)) + offset
            # A field starts after the separator before it, a body's first at its start.
            starts.append(np.concatenate(([offset], end[:-1] + 1)).reshape(-1, ncols))
            ends.append(end.reshape(-1, ncols))
        offset += len(body)
    start, end = np.concatenate(starts), np.concatenate(ends)
    data = np.frombuffer(text.encode("ascii"), np.uint8)
    return [_Fields(text, data, start[:, i].copy(), end[:, i].copy()) for i in range(ncols)]


class _Fields(Sequence[str]):
    """A column of plain ASCII CSV text as where each field starts and ends in it:
    numbers and times are read from its bytes (`_decimals`, `_iso_times`), strings are
    made where asked for, once per run of equal fields (`texts`)."""

    def __init__(self, text: str, data: np.ndarray, start: np.ndarray, end: np.ndarray) -> None:
        self.text, self.data, self.start, self.end = text, data, start, end
        self._texts: list[str] | None = None

    def __len__(self) -> int:
        return int(self.start.shape[0])

    def __getitem__(self, k):  # type: ignore[no-untyped-def]
        if isinstance(k, slice):
            return _Fields(self.text, self.data, self.start[k], self.end[k])
        return self.text[self.start[k] : self.end[k]]

    def __iter__(self) -> Iterator[str]:
        return iter(self.texts())

    def __contains__(self, item: object) -> bool:
        if item == "":
            return bool((self.end == self.start).any())
        return item in self.texts()

    def texts(self) -> list[str]:
        """Every field as a string; a field equal to one of the few distinct ones
        before it is that string (`_same_as`)."""
        if self._texts is None:
            same = _same_as(self.data, self.start, self.end)
            made = np.flatnonzero(same == np.arange(same.shape[0]))
            strings = np.empty(same.shape[0], object)
            text, ends = self.text, self.end[made].tolist()
            strings[made] = [
                text[s:e] for s, e in zip(self.start[made].tolist(), ends, strict=True)
            ]
            self._texts = strings[same].tolist()
        return self._texts


# Distinct fields a field is compared with (`_same_as`): a tape's market column holds
# a few markets, often taking turns.
RECENT = 8


@njit
def _same_as(data, start, end):  # type: ignore[no-untyped-def]
    """For each field, the first earlier field of the same bytes among the RECENT
    distinct ones seen last, else itself."""
    n = start.shape[0]
    out = np.empty(n, np.int64)
    recent = np.full(RECENT, -1, np.int64)
    nxt = 0
    for k in range(n):
        out[k] = k
        width = end[k] - start[k]
        for j in range(RECENT):
            r = recent[j]
            if r < 0 or end[r] - start[r] != width:
                continue
            equal = True
            for c in range(width):
                if data[start[r] + c] != data[start[k] + c]:
                    equal = False
                    break
            if equal:
                out[k] = r
                break
        if out[k] == k:
            recent[nxt] = k
            nxt = (nxt + 1) % RECENT
    return out


def _even(body: str, n: int, ncols: int) -> np.ndarray | None:
    """Whether each of the n lines of `body` has ncols fields, none over the field limit:
    the places of its commas and newlines in order if so, else None."""
    if not n:
        return np.zeros(0, np.int64)
    data = np.frombuffer(body.encode("utf-8", "surrogatepass"), np.uint8)
    seps = np.flatnonzero((data == 10) | (data == 44))
    if seps.shape[0] != n * ncols - 1:
        return None
    # Each line's last field ends at a newline (the last line's at the end), the others
    # at a comma.
    ends = np.append(seps, data.shape[0]).reshape(n, ncols)
    line_ends = ends[:, -1]
    if line_ends.shape[0] > 1 and (data[line_ends[:-1]] != 10).any():
        return None
    widths = np.diff(line_ends, prepend=-1) - 1
    if widths.max() > csv.field_size_limit():
        return None
    return seps


def _parse(raw: _Raw) -> list[_Block]:
    """CSV rows read, as columns (`_read`), split into a block per file."""
    names, values, ok, rejected = _read(raw.where, raw.columns)
    lines, places = raw.lines, raw.places
    blocks, start = [], 0
    for size, done, rows in zip(raw.sizes, raw.rejected, raw.rows, strict=True):
        end = start + size
        keep: slice | np.ndarray = slice(start, end)
        mine = names[keep]
        if not ok[keep].all():
            keep = np.flatnonzero(ok[keep]) + start
            mine = [names[k] for k in keep.tolist()]
        index = {m: i for i, m in enumerate(dict.fromkeys(mine))}
        market = (
            np.zeros(len(mine), np.int64)
            if len(index) == 1
            else np.fromiter(map(index.__getitem__, mine), np.int64, len(mine))
        )
        cols = TickColumns(list(index), market, *(v[keep] for v in values))
        bad = [(int(places[k]), int(lines[k]), r, d) for k, r, d in rejected if start <= k < end]
        blocks.append(_Block(cols, lines[keep], places[keep], done + bad, rows))
        start = end
    return blocks


def _read(
    where: tuple[int | None, ...], columns: list[Sequence[str]]
) -> tuple[list[str], list[np.ndarray], np.ndarray, list[tuple[int, str, str]]]:
    """CSV rows as columns: float() per number and ISO times on arrays (`_times`,
    `_numbers`), the checks on the columns (`ticks.clean`). A row in any doubt is read
    again by `_tick`, which reads what the fast way does not and names the problem.
    (market ids, [ts, price, bid, ask, depth], where a row is valid, (row, reason,
    detail) of the others)."""
    i_ts, i_market, i_price, *i_book = where
    assert i_ts is not None and i_market is not None and i_price is not None
    n = len(columns[i_ts])
    ts, ok = _times(columns[i_ts])
    price, ok_price = _numbers(columns[i_price])
    names = list(map(str.strip, columns[i_market]))
    has_market = np.ones(n, bool) if "" not in names else np.array(list(map(bool, names)))
    ok &= ok_price
    book: list[np.ndarray | None] = []  # bid, ask, depth; None: no such column
    for i in i_book:
        values, ok_values = (None, True) if i is None else _optional(columns[i])
        book.append(values)
        ok &= ok_values
    ok &= clean(ts, has_market, price, *book)
    bid, ask, depth = (np.full(n, math.nan) if v is None else v for v in book)
    rejected = []
    for k in np.flatnonzero(~ok).tolist():
        try:
            tick = _tick(*(None if i is None else columns[i][k] for i in where))
        except _Bad as bad:
            rejected.append((k, bad.reason, bad.detail))
            continue
        names[k], ts[k], price[k], ok[k] = tick.market, tick.ts, tick.price, True
        for values, v in zip((bid, ask, depth), (tick.bid, tick.ask, tick.depth), strict=True):
            values[k] = math.nan if v is None else v
    return names, [ts, price, bid, ask, depth], ok, rejected


def _numbers(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """float() of each text, and where it is a number."""
    n = len(texts)
    values, ok = _decimals(texts) if n >= 64 else _nothing(n)
    rest = np.flatnonzero(~ok)
    others = texts if rest.shape[0] == n else [texts[k] for k in rest.tolist()]
    try:
        values[rest] = np.fromiter(map(float, others), np.float64, len(others))
        ok[rest] = True
    except ValueError:  # text by text: which are numbers
        for k in rest.tolist():
            try:
                values[k] = float(texts[k])
            except ValueError:
                continue
            ok[k] = True
    return values, ok


def _fixed(texts: Sequence[str]) -> np.ndarray | None:
    """The texts' bytes, one row per text, when they are ASCII all of one width (the
    first's): else None."""
    n = len(texts)
    width = len(texts[0]) if n else 0
    joined = "\n".join(texts) + "\n"
    if len(joined) != n * (width + 1) or not joined.isascii():
        return None
    chars = np.frombuffer(joined.encode("ascii"), np.uint8).reshape(n, width + 1)
    # With a newline after each text at the same place, every text has that width.
    if joined.count("\n") != n or not (chars[:, width] == 10).all():
        return None
    return chars[:, :width]


def _decimals(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """float() of texts of one width written as plain decimals (digits with at most
    one point, at most 15 digits), on arrays, and where a text is one. Exact: the
    digits as an integer m < 2**53 over 10**k, both exact doubles, divide with one
    rounding, as float() rounds the decimal once."""
    n = len(texts)
    if isinstance(texts, _Fields):
        return _field_decimals(texts.data, texts.start, texts.end)
    chars = _fixed(texts)
    if chars is None or not 0 < chars.shape[1] <= 16:
        return _nothing(n)
    digit = chars - ord("0")  # wraps below "0": a digit is 0..9
    is_digit, is_point = digit <= 9, chars == ord(".")
    digits, points = is_digit.sum(axis=1), is_point.sum(axis=1)
    ok = (digits + points == chars.shape[1]) & (points <= 1) & (digits >= 1) & (digits <= 15)
    mantissa = np.zeros(n)
    for col in range(chars.shape[1]):
        mantissa = np.where(is_digit[:, col], mantissa * 10.0 + digit[:, col], mantissa)
    after_point = chars.shape[1] - 1 - np.argmax(is_point, axis=1)
    values = mantissa / 10.0 ** np.where(points == 1, after_point, 0)
    values[~ok] = math.nan
    return values, ok


@njit
def _field_decimals(data, start, end):  # type: ignore[no-untyped-def]
    """`_decimals` of fields of any widths, from their bytes: the same digits, the same
    mantissa and the same one division, hence the same values."""
    n = start.shape[0]
    values = np.full(n, np.nan)
    ok = np.zeros(n, np.bool_)
    for k in range(n):
        width = end[k] - start[k]
        if width < 1 or width > 16:
            continue
        digits, points, after_point = 0, 0, 0
        mantissa = 0.0
        for c in range(start[k], end[k]):
            ch = data[c]
            if 48 <= ch <= 57:
                digits += 1
                mantissa = mantissa * 10.0 + (ch - 48)
                after_point += 1
            elif ch == 46:
                points += 1
                after_point = 0
            else:
                points = 2  # not a plain decimal
                break
        if points > 1 or digits < 1 or digits > 15:
            continue
        values[k] = mantissa / 10.0 ** (after_point if points == 1 else 0)
        ok[k] = True
    return values, ok


def _optional(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """An optional column's numbers (nan: empty, not sent), and where they are plainly
    numbers: a NaN sent is not (the columns cannot tell it from one not sent)."""
    if "" not in texts:
        values, ok = _numbers(texts)
        return values, ok & ~np.isnan(values)
    sent = np.array([text != "" for text in texts], bool)
    values, ok = _numbers([text or "nan" for text in texts])
    return values, ok & (~sent | ~np.isnan(values))


def _times(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Unix seconds of each text read the plain way (ISO 8601 with an offset, or a
    number), and where it is read so; the rest is left to `_tick`."""
    # On arrays where there are enough rows to pay for it.
    ts, ok = _iso_times(texts) if len(texts) >= 64 else _nothing(len(texts))
    for k in np.flatnonzero(~ok).tolist():
        text = texts[k]
        try:
            if text[4] == "-":
                dt = _fromisoformat(text)
                if dt.tzinfo is None:
                    continue
                ts[k] = dt.timestamp()
            else:
                ts[k] = float(text)
        except (ValueError, IndexError):
            continue
        ok[k] = True
    return ts, ok


# YYYY-MM-DDTHH:MM:SS, a fraction of 0, 3 or 6 digits, Z: by the text's width.
_ISO_FRACTION = {20: 0, 24: 3, 27: 6}
_ISO_DIGITS = np.array([0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18])
_MONTH_DAYS = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


def _iso_times(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Unix seconds of texts all written YYYY-MM-DDTHH:MM:SS[.fff[fff]]Z, from their
    bytes: what datetime.fromisoformat(text).timestamp() gives, and where the text is
    a valid such time (nowhere when the texts are not all of one such width)."""
    n = len(texts)
    width = len(texts[0]) if n else 0
    if width not in _ISO_FRACTION:
        return _nothing(n)
    if isinstance(texts, _Fields):
        if ((texts.end - texts.start) != width).any():
            return _nothing(n)
        data, start = texts.data, texts.start
    else:
        chars = _fixed(texts)
        if chars is None:
            return _nothing(n)
        data, start = np.ascontiguousarray(chars).ravel(), np.arange(n) * width
    return _iso_bytes(data, start, width, _ISO_FRACTION[width])


@njit
def _iso_bytes(data, start, width, fraction_digits):  # type: ignore[no-untyped-def]
    """`_iso_times` of the texts of `width` bytes from each of `start` in `data`."""
    n = start.shape[0]
    ts, ok = np.full(n, np.nan), np.zeros(n, np.bool_)
    for k in range(n):
        row = data[start[k] : start[k] + width]
        if not _iso_marks(row, width):
            continue
        bad = False
        for at in _ISO_DIGITS:
            bad = bad or not 48 <= row[at] <= 57
        for at in range(20, width - 1):
            bad = bad or not 48 <= row[at] <= 57
        if bad:
            continue
        year = _two(row, 0) * 100 + _two(row, 2)
        month, day = _two(row, 5), _two(row, 8)
        hour, minute, second = _two(row, 11), _two(row, 14), _two(row, 17)
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        days_in = _MONTH_DAYS[min(max(month, 1), 12) - 1] + (1 if leap and month == 2 else 0)
        if year < 1 or month < 1 or month > 12 or day < 1 or day > days_in:
            continue
        if hour > 23 or minute > 59 or second > 59:
            continue
        seconds = _days(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
        if width == 20:
            ts[k], ok[k] = seconds, True
            continue
        fraction = 0
        for at in range(20, width - 1):
            fraction = fraction * 10 + (np.int64(row[at]) - 48)
        micros = seconds * 1_000_000 + fraction * 10 ** (6 - fraction_digits)
        # timedelta.total_seconds(): microseconds / 10**6 rounded once, as here while exact.
        if abs(micros) < 2**53:
            ts[k], ok[k] = micros / 1e6, True
    return ts, ok


@njit
def _iso_marks(row, width):  # type: ignore[no-untyped-def]
    """Whether the text has the marks of YYYY-MM-DDTHH:MM:SS[.f]Z (by its width)."""
    marks = row[4] == 45 and row[7] == 45 and row[10] == 84 and row[13] == 58
    marks = marks and row[16] == 58 and row[width - 1] == 90
    return marks and (width == 20 or row[19] == 46)


@njit
def _two(row, at):  # type: ignore[no-untyped-def]
    return (np.int64(row[at]) - 48) * 10 + (np.int64(row[at + 1]) - 48)


def _nothing(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full(n, math.nan), np.zeros(n, bool)


@njit
def _days(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's days_from_civil)."""
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


def _jsonl_blocks(path: Path) -> Iterator[_Block]:
    """A JSON Lines file's rows in blocks, each row read by `_tick`."""
    line = 0
    replaced, seen = _replaced, _replaced[0]
    pending, size = _Pending(), 1
    try:
        with _open_text(path) as f:
            loads = json.loads
            for line, text in enumerate(f, 1):
                if not text.strip():
                    continue
                if replaced[0] != seen:
                    why = _not_utf8(text)
                    if why:
                        pending.reject(line, "bad_encoding", why)
                        continue
                try:
                    obj = loads(text)
                except ValueError as exc:
                    pending.reject(line, "bad_json", str(exc))
                    continue
                if not isinstance(obj, dict):
                    kind = type(obj).__name__
                    pending.reject(line, "bad_row", f"expected a JSON object, got {kind}")
                    continue
                get = obj.get
                missing = [k for k in REQUIRED if get(k) is None]
                if missing:
                    pending.reject(line, "missing_field", f"missing or null: {', '.join(missing)}")
                    continue
                try:
                    tick = _tick(
                        obj["ts"], obj["market"], obj["price"], get("bid"), get("ask"), get("depth")
                    )
                except _Bad as bad:
                    pending.reject(line, bad.reason, bad.detail)
                    continue
                pending.items.append(tick)
                pending.lines.append(line)
                if len(pending.items) == size:
                    yield _block(pending)
                    pending, size = _Pending(), BLOCK
    except _READ_ERRORS as exc:
        if pending:
            yield _block(pending)
        raise _fatal(path, exc, line or None) from exc
    if pending:
        yield _block(pending)


def _block(pending: _Pending) -> _Block:
    return _Block(
        TickColumns.of(pending.items),
        np.array(pending.lines, np.int64),
        pending.places(),
        pending.rejected,
        len(pending.items) + len(pending.rejected),
    )


def _probe(path: Path) -> TapeReport:
    """Read a file up to its first usable row: fails early (TapeError) on unreadable files
    and bad CSV headers; `accepted` of the report is 0 if the file has no usable row."""
    report = TapeReport(str(path))
    stream = _blocks(path, report)
    try:
        next((block for block in stream if len(block)), None)
    finally:
        getattr(stream, "close", lambda: None)()  # a generator: its file closes now
    return report


def _why_empty(report: TapeReport) -> str:
    if not report.rows:
        return f"{report.path}: no data rows"
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(report.by_reason.items()))
    first = report.examples[0]
    return (
        f"{report.path}: all {report.rows} rows rejected ({reasons}); first: "
        f"line {first.line}: {first.reason}: {first.detail}"
    )


def no_rows_error(path: Path, reports: list[TapeReport]) -> TapeError:
    """The error for a tape (file or directory) of which no row is usable, saying why."""
    whys = [_why_empty(r) for r in reports]
    if len(whys) == 1:
        return TapeError(f"{whys[0]}: nothing to replay")
    listed = "; ".join(whys[:3]) + ("; ..." if len(whys) > 3 else "")
    return TapeError(
        f"{path}: no usable rows in any of its {len(whys)} tape files ({listed}): nothing to replay"
    )


def _ts_key(tick: Tick) -> float:
    return tick.ts


class Tape:
    """One tape file or a directory of them, iterated as one stream of ticks.

    Order: each file in file order (which is time order per market); files of a
    directory (sorted by name) are merged by ts, ties keeping file order. A file whose
    markets step back in time relative to each other counts those rows in
    `TapeReport.unsorted`.
    """

    def __init__(
        self,
        path: str | Path,
        require_rows: bool = True,
        on_unreadable: Callable[[TapeError], None] | None = None,
    ) -> None:
        """`require_rows`: a tape none of whose files has a usable row is a TapeError
        (a replay of nothing would look like a quiet market). `on_unreadable`: a file
        that stops being readable part of the way (a truncated gzip stream, an I/O
        error) is passed to it and ends there, counted as an `unreadable` rejection at
        its line; the other files go on. Without it that is a TapeError."""
        self.path = Path(path)
        self.on_unreadable = on_unreadable
        if self.path.is_dir():
            self.files = sorted(
                (
                    p
                    for p in self.path.iterdir()
                    if p.is_file() and p.name.lower() not in _NOT_TAPES and tape_kind(p)
                ),
                key=lambda p: p.name,
            )
            if not self.files:
                raise TapeError(f"{self.path}: no tape files (.csv, .jsonl, ...) in directory")
        elif self.path.exists():
            if tape_kind(self.path) is None:
                raise TapeError(
                    f"{self.path}: unknown tape format; expected .csv, .csv.gz, .jsonl, "
                    ".jsonl.gz, .json or .ndjson"
                )
            self.files = [self.path]
        else:
            raise TapeError(f"{self.path}: no such file or directory")
        probes = [_probe(p) for p in self.files]
        if require_rows and not any(r.accepted for r in probes):
            raise no_rows_error(self.path, probes)
        self.reports: list[TapeReport] = [TapeReport(str(p)) for p in self.files]

    def __iter__(self) -> Iterator[Tick]:
        """Ticks in event-time order; resets and refills `reports`."""
        self.reports = [TapeReport(str(p)) for p in self.files]
        streams = [
            self._skipping(_ticks(p, r), r) for p, r in zip(self.files, self.reports, strict=True)
        ]
        if len(streams) == 1:
            return streams[0]
        return heapq.merge(*streams, key=_ts_key)

    def columns(self) -> list[TickColumns]:
        """Each file's ticks as columns, in file order (the rows of a file in its
        order); resets and refills `reports`. What the backtest reads: a plain CSV file
        at once, with no Tick per row (`read_columns`)."""
        return read_columns([self])[0]

    def _skipping(self, stream: Iterator[T], report: TapeReport) -> Iterator[T]:
        """`stream`, ended where its file stops being readable when `on_unreadable`
        takes that (then an `unreadable` rejection)."""
        if self.on_unreadable is None:
            return stream
        return self._skip(stream, report, self.on_unreadable)

    @staticmethod
    def _skip(
        stream: Iterator[T], report: TapeReport, on_unreadable: Callable[[TapeError], None]
    ) -> Iterator[T]:
        try:
            yield from stream
        except TapeError as exc:
            report.reject(
                exc.line or 0,
                "unreadable",
                f"cannot read on: {exc.cause}; the rest of the file is skipped",
            )
            on_unreadable(exc)

    @property
    def rejected_total(self) -> int:
        """Rejected rows over all files read so far."""
        return sum(r.rejected for r in self.reports)

    def summary(self) -> str:
        """The per-file summaries, one block per file."""
        return "\n".join(r.summary() for r in self.reports)


def read_columns(tapes: Sequence[Tape]) -> list[list[TickColumns]]:
    """`Tape.columns` of each tape. Plain CSV files (`_plain`) are read at once, and
    those of one header, of all the tapes, split and checked together: the arrays'
    work is paid once, not once per file."""
    files: list[tuple[Tape, Path, TapeReport]] = []
    for tape in tapes:
        tape.reports = [TapeReport(str(p)) for p in tape.files]
        files += [(tape, p, r) for p, r in zip(tape.files, tape.reports, strict=True)]
    texts = [None if tape_kind(p) == "jsonl" else _plain(p) for _, p, _ in files]
    plain: dict[int, _Block] = {}  # file number: its rows
    numbers = [k for k, text in enumerate(texts) if text is not None]
    for _, group in itertools.groupby(numbers, key=lambda k: texts[k][0]):  # type: ignore[index]
        ks = list(group)
        raw, taken = _plain_rows(texts[ks[0]][0], [texts[k][1] for k in ks])  # type: ignore[index]
        plain.update(zip([ks[k] for k in taken], _parse(raw), strict=True))
    out: dict[int, list[TickColumns]] = {id(tape): [] for tape in tapes}
    for k, (tape, path, report) in enumerate(files):
        if k in plain:
            blocks = [_admit(plain[k], _Order(), report)]
        else:
            blocks = list(tape._skipping(_blocks(path, report), report))
        out[id(tape)].append(TickColumns.concat(blocks))
    return [out[id(tape)] for tape in tapes]


def read_tape(path: str | Path) -> tuple[list[Tick], list[TapeReport]]:
    """Read a whole tape (file or directory) into memory."""
    tape = Tape(path)
    ticks = list(tape)
    return ticks, tape.reports


def _main(argv: list[str]) -> int:  # pragma: no cover - manual check and benchmark
    """`python -m riskd.tape PATH...`: read each tape, print its reports and rows/s."""
    import time

    for arg in argv:
        tape = Tape(arg)
        t0 = time.perf_counter()
        n = sum(1 for _ in tape)
        dt = time.perf_counter() - t0
        print(tape.summary())
        rows = sum(r.rows for r in tape.reports)
        print(f"{arg}: {n} ticks from {rows} rows in {dt:.3f}s = {rows / dt:,.0f} rows/s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    raise SystemExit(_main(sys.argv[1:]))
