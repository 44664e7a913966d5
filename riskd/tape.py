"""Tape reader: CSV or JSON Lines (optionally gzipped) files of ticks for replay and backtest.

Bad rows are never used: each is counted, and the first few are kept with their line
number and a reason code so a user can find and fix them. A row with bytes that are not
UTF-8 is one such row (`bad_encoding`), not a reason to stop reading. A tape with no
usable row at all is an error (TapeError), never an empty stream.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import gzip
import heapq
import json
import math
import re
import zlib
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO

from riskd.feeds.base import MAX_DEPTH, Tick, make_tick
from riskd.ticks import tick_fault

__all__ = [
    "MAX_EXAMPLES",
    "RejectedRow",
    "Tape",
    "TapeError",
    "TapeReport",
    "no_rows_error",
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


def _reject_order(report: TapeReport, line: int, tick: Tick, prev: float) -> None:
    report.reject(
        line,
        "out_of_order",
        f"ts {tick.ts} is earlier than the previous {prev} for market {tick.market!r}",
    )


class _Order:
    """Per-market order check for one file."""

    __slots__ = ("last", "high", "report")

    def __init__(self, report: TapeReport) -> None:
        self.last: dict[str, float] = {}
        self.high = -math.inf
        self.report = report

    def admit(self, tick: Tick, line: int) -> bool:
        prev = self.last.get(tick.market)
        if prev is not None and tick.ts < prev:
            _reject_order(self.report, line, tick, prev)
            return False
        self.last[tick.market] = tick.ts
        if tick.ts < self.high:
            self.report.unsorted += 1
        else:
            self.high = tick.ts
        return True


def _iter_csv(path: Path, report: TapeReport) -> Iterator[Tick]:
    reader = None
    replaced, seen = _replaced, _replaced[0]
    try:
        with _open_text(path) as f:
            reader = csv.reader(f)
            names = _read_header(path, reader)
            read, ncols = _row_reader(names), len(names)
            order = _Order(report)
            # csv.Error (e.g. a field over the size limit) costs its row: the reader
            # goes on at the next line.
            while True:
                try:
                    for row in reader:
                        if (len(row) != ncols or replaced[0] != seen) and not _whole(
                            row, ncols, reader.line_num, report
                        ):
                            continue
                        report.rows += 1
                        try:
                            tick = read(row)
                        except _Bad as bad:
                            report.reject(reader.line_num, bad.reason, bad.detail)
                            continue
                        if order.admit(tick, reader.line_num):
                            report.accepted += 1
                            yield tick
                    break
                except csv.Error as exc:
                    report.rows += 1
                    report.reject(reader.line_num, "bad_row", f"not CSV: {exc}")
    except (*_READ_ERRORS, csv.Error) as exc:
        raise _fatal(path, exc, reader.line_num if reader else None) from exc


def _whole(row: list[str], ncols: int, line: int, report: TapeReport) -> bool:
    """Whether a row that may not be (as wide as the header, or UTF-8) is one to read;
    if not, it is rejected, unless it is a blank line (no row)."""
    why = _not_utf8(",".join(row))
    if why:
        report.rows += 1
        report.reject(line, "bad_encoding", why)
        return False
    if len(row) == ncols:
        return True
    if len(row) > 1 or (row and row[0].strip()):
        report.rows += 1
        report.reject(line, "bad_row", f"{len(row)} fields, header has {ncols}")
    return False


def _row_reader(names: list[str]) -> Callable[[list[str]], Tick]:
    """row -> Tick for a header's columns; raises _Bad. A plainly valid row is read
    with no more than float() per field (it runs for every row); any doubt goes to
    `_tick`, which reads the row again and names the problem."""
    i_ts, i_m, i_p = (names.index(c) for c in REQUIRED)
    i_b, i_a, i_d = (names.index(c) if c in names else None for c in OPTIONAL)
    has_opt = not (i_b is None and i_a is None and i_d is None)
    fromiso, fault, tick_, float_ = _fromisoformat, tick_fault, make_tick, float
    iso_text, iso_ts = "", 0.0  # the last ISO time and its value: one time, many markets

    def read(row: list[str]) -> Tick:
        nonlocal iso_text, iso_ts
        try:
            s = row[i_ts]
            if s == iso_text:
                ts = iso_ts
            elif s[4] == "-":
                dt = fromiso(s)
                ts = dt.timestamp() if dt.tzinfo is not None else -1.0
                iso_text, iso_ts = s, ts
            else:
                ts = float_(s)
            if has_opt:
                b = None if i_b is None else row[i_b]
                a = None if i_a is None else row[i_a]
                d = None if i_d is None else row[i_d]
                tick = tick_(
                    row[i_m].strip(),
                    ts,
                    float_(row[i_p]),
                    float_(b) if b else None,
                    float_(a) if a else None,
                    float_(d) if d else None,
                )
            else:
                tick = tick_(row[i_m].strip(), ts, float_(row[i_p]))
            if fault(tick) is None:
                return tick
        except (ValueError, IndexError):
            pass
        return _tick(*(None if i is None else row[i] for i in (i_ts, i_m, i_p, i_b, i_a, i_d)))

    return read


def _iter_jsonl(path: Path, report: TapeReport) -> Iterator[Tick]:
    line = 0
    replaced, seen = _replaced, _replaced[0]
    try:
        with _open_text(path) as f:
            order = _Order(report)
            loads = json.loads
            for line, text in enumerate(f, 1):
                if not text.strip():
                    continue
                report.rows += 1
                if replaced[0] != seen:
                    why = _not_utf8(text)
                    if why:
                        report.reject(line, "bad_encoding", why)
                        continue
                try:
                    obj = loads(text)
                except ValueError as exc:
                    report.reject(line, "bad_json", str(exc))
                    continue
                if not isinstance(obj, dict):
                    report.reject(
                        line, "bad_row", f"expected a JSON object, got {type(obj).__name__}"
                    )
                    continue
                get = obj.get
                missing = [k for k in REQUIRED if get(k) is None]
                if missing:
                    report.reject(line, "missing_field", f"missing or null: {', '.join(missing)}")
                    continue
                try:
                    tick = _tick(
                        obj["ts"], obj["market"], obj["price"], get("bid"), get("ask"), get("depth")
                    )
                except _Bad as bad:
                    report.reject(line, bad.reason, bad.detail)
                    continue
                if order.admit(tick, line):
                    report.accepted += 1
                    yield tick
    except _READ_ERRORS as exc:
        raise _fatal(path, exc, line or None) from exc


_READERS: dict[str, Callable[[Path, TapeReport], Iterator[Tick]]] = {
    "csv": _iter_csv,
    "jsonl": _iter_jsonl,
}


def _probe(path: Path) -> TapeReport:
    """Read a file up to its first usable row: fails early (TapeError) on unreadable files
    and bad CSV headers; `accepted` of the report is 0 if the file has no usable row."""
    report = TapeReport(str(path))
    stream = _READERS[tape_kind(path) or "csv"](path, report)
    try:
        next(stream, None)
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
            _READERS[tape_kind(p) or "csv"](p, r)
            for p, r in zip(self.files, self.reports, strict=True)
        ]
        if self.on_unreadable is not None:
            streams = [self._skipping(s, r) for s, r in zip(streams, self.reports, strict=True)]
        if len(streams) == 1:
            return streams[0]
        return heapq.merge(*streams, key=_ts_key)

    def _skipping(self, stream: Iterator[Tick], report: TapeReport) -> Iterator[Tick]:
        try:
            yield from stream
        except TapeError as exc:
            report.reject(
                exc.line or 0,
                "unreadable",
                f"cannot read on: {exc.cause}; the rest of the file is skipped",
            )
            if self.on_unreadable is not None:
                self.on_unreadable(exc)

    @property
    def rejected_total(self) -> int:
        """Rejected rows over all files read so far."""
        return sum(r.rejected for r in self.reports)

    def summary(self) -> str:
        """The per-file summaries, one block per file."""
        return "\n".join(r.summary() for r in self.reports)


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
