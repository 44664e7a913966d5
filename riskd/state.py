"""Crash-safe state snapshots: every market's estimator and governor state, seqs, versions.

Written atomically (temp file, fsync, rename, fsync of the directory) as an
.npz (no pickle; zip CRCs detect corruption) with a JSON header carrying the
schema version. A snapshot that is corrupt, too old or of another schema is
never trusted: the daemon starts conservatively, and a corrupt file is moved
aside. Nothing here can make the published values looser.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import re
import threading
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import orjson

from riskd.engine import Engine
from riskd.exchange import ExchangeStore
from riskd.feeds.base import Replayed
from riskd.model.governor import MODES
from riskd.timeutil import parse_iso

log = logging.getLogger(__name__)

SCHEMA = 1
FILE = "snapshot.npz"


@dataclass
class Loaded:
    """What start-up found; `trusted` means the engine state was restored."""

    status: str  # restored | none | stale | schema | corrupt | unreadable
    message: str
    trusted: bool = False
    clock: float = float("-inf")  # the daemon clock when the snapshot was written
    published: float = float("-inf")  # generated_at of the last batch before it
    seqs: dict[str, int] = field(default_factory=dict)  # publisher/sink -> last seq
    markets: int = 0
    # When the last seqs and versions are lost, new ones start above this (wall-clock
    # milliseconds) so that a receiver still takes them as newer.
    floor: int = 0
    # The exchange's state (ExchangeStore.as_dict); None in a snapshot without it.
    exchange: dict[str, Any] | None = None


WRITE_STEP = 1 << 20


def savez(fh: Any, arrays: dict[str, Any]) -> None:
    """np.savez's file (a zip, stored, of one .npy per array; np.load reads it), each
    array written from its own memory a MiB at a time. np.savez copies into bytes 16
    MiB at a time to write into a zip, holding the GIL for each copy: in the writer
    thread at 100k markets that held the event loop 4-5 ms again and again. Here the
    zip's CRC and the file's write take the memory as it is, without the GIL."""
    with zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in arrays.items():
            array = np.asarray(value)
            if not array.flags.c_contiguous:  # (ascontiguousarray: no 0-d arrays)
                array = np.ascontiguousarray(array)
            if array.dtype.hasobject:  # as np.load(allow_pickle=False) would refuse
                raise ValueError(f"state array {name} holds Python objects")
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(
                    member, np.lib.format.header_data_from_array_1_0(array)
                )
                data = array.reshape(-1).view(np.uint8).data
                for start in range(0, len(data), WRITE_STEP):
                    member.write(data[start : start + WRITE_STEP])


class StateStore:
    def __init__(self, directory: Path, max_age_s: float) -> None:
        self.dir = directory
        self.path = directory / FILE
        self.max_age_s = max_age_s
        self._writing = threading.Lock()
        self._captured = self._written = 0  # capture numbers: the newest one wins

    # --- writing -------------------------------------------------------------

    def save(
        self,
        engine: Engine,
        clock: float,
        seqs: dict[str, int],
        published: float = float("-inf"),
        exchange: ExchangeStore | None = None,
    ) -> None:
        """Write a snapshot atomically; raises OSError (the caller counts it)."""
        self.write(self.capture(engine, clock, seqs, published, exchange))

    def capture(
        self,
        engine: Engine,
        clock: float,
        seqs: dict[str, int],
        published: float = float("-inf"),
        exchange: ExchangeStore | None = None,
        buffer: mmap.mmap | None = None,
    ) -> dict[str, Any]:
        """The snapshot's contents, copied: the engine may move on while `write` runs
        (in a thread: at 100k markets the file and its fsyncs take 40-100 ms, too long
        for the event loop). The arrays are copied into `buffer` while they fit
        (`capture_bytes`; riskd/heap.py `mapped`), else on the heap."""
        header = {
            "schema": SCHEMA,
            "written_at": time.time(),
            "clock": clock if np.isfinite(clock) else None,
            "published": published if np.isfinite(published) else None,
            "seqs": dict(seqs),
            "ids": list(engine.ids),
        }
        self._captured += 1
        arrays: dict[str, Any] = {"capture": self._captured, "header": header}
        if exchange is not None:
            arrays["exchange"] = exchange.copy()  # rendered in `write`, off the event loop
        copy = _Copier(buffer)
        for name, array in _engine_arrays(engine):
            arrays[name] = copy(array)
        return arrays

    @staticmethod
    def capture_bytes(engine: Engine) -> int:
        """The size of a `capture`'s array copies, as laid out in a buffer."""
        return sum(_Copier.span(array) for _, array in _engine_arrays(engine))

    def write(self, captured: dict[str, Any]) -> None:
        """Write what `capture` took, atomically; raises OSError. One write at a time,
        and never an older capture over a newer one (the final snapshot at shutdown
        may meet a periodic one still in its thread)."""
        arrays = dict(captured)
        n = arrays.pop("capture")
        header = arrays["header"]
        exchange = arrays.pop("exchange", None)
        if exchange is not None:
            header = {**header, "exchange": exchange.as_dict()}
        arrays["header"] = np.frombuffer(header_json(header), np.uint8)
        with self._writing:
            if n <= self._written:
                return
            self._written = n
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.dir / f".{FILE}.{os.getpid()}.tmp"
            try:
                with tmp.open("wb") as fh:
                    savez(fh, arrays)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            finally:
                tmp.unlink(missing_ok=True)
            fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(fd)  # the rename itself must survive a power cut
            finally:
                os.close(fd)

    # --- reading -------------------------------------------------------------

    def load(self, engine: Engine) -> Loaded:
        """Restore the engine from the snapshot when it can be trusted."""
        if not self.path.exists():
            if not self.dir.exists():
                return Loaded("none", f"no state directory {self.dir}: starting fresh")
            return Loaded("none", f"no snapshot in {self.dir}: starting fresh")
        try:
            # Our own handle: np.load leaks its file when the zip is broken.
            with self.path.open("rb") as fh, np.load(fh, allow_pickle=False) as npz:
                data = {name: npz[name] for name in npz.files}
            header = json.loads(bytes(data["header"]).decode())
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            if isinstance(exc, PermissionError):
                return Loaded(
                    "unreadable",
                    f"{self.path}: cannot read ({exc.strerror}): starting conservatively",
                    floor=_wall_ms(),
                )
            return self._corrupt(f"{type(exc).__name__}: {exc}")
        seqs = {str(k): int(v) for k, v in (header.get("seqs") or {}).items()}
        clock = header.get("clock")
        clock = float(clock) if isinstance(clock, int | float) else float("-inf")
        published = header.get("published")
        published = float(published) if isinstance(published, int | float) else float("-inf")
        if header.get("schema") != SCHEMA:
            return Loaded(
                "schema",
                f"{self.path}: schema {header.get('schema')!r}, this "
                f"build reads {SCHEMA}: starting conservatively",
                seqs=seqs,
                floor=_wall_ms(),
            )
        age = time.time() - float(header.get("written_at", 0.0))
        if not age <= self.max_age_s:
            # The model state is too old to trust, but seqs and versions must go on rising.
            _keep_versions(engine, header["ids"], data.get("gov_version"))
            return Loaded(
                "stale",
                f"{self.path}: {age:.0f} s old, more than state.max_age_s "
                f"= {self.max_age_s:.0f}: starting conservatively",
                seqs=seqs,
                exchange=_exchange(header),
            )
        try:
            restored = _restore(engine, header["ids"], data)
        except (KeyError, ValueError, IndexError) as exc:
            return self._corrupt(f"inconsistent arrays: {exc}")
        return Loaded(
            "restored",
            f"restored {restored} markets from {self.path} ({age:.0f} s old)",
            trusted=True,
            clock=clock,
            seqs=seqs,
            markets=restored,
            published=published,
            exchange=_exchange(header),
        )

    def _corrupt(self, why: str) -> Loaded:
        aside = self.path.with_name(f"{FILE}.corrupt-{int(time.time())}")
        try:
            os.replace(self.path, aside)
            where = f"moved aside to {aside.name}"
        except OSError as exc:
            where = f"could not move it aside: {exc.strerror}"
        return Loaded(
            "corrupt",
            f"{self.path}: corrupt snapshot ({why}); {where}; starting conservatively",
            floor=_wall_ms(),
        )


def _engine_arrays(engine: Engine) -> list[tuple[str, np.ndarray]]:
    """The engine arrays a snapshot holds, by their names in the file."""
    out = [("first_t", engine.first_t)]
    out += [("est_" + f.name, getattr(engine.est, f.name)) for f in fields(engine.est)]
    out += [("gov_" + f.name, getattr(engine.gov, f.name)) for f in fields(engine.gov)]
    return out


class _Copier:
    """Copies of arrays, one after another in a buffer while they fit, else on the heap."""

    ALIGN = 64

    def __init__(self, buffer: mmap.mmap | None) -> None:
        self.buffer = buffer
        self.offset = 0

    @classmethod
    def span(cls, array: np.ndarray) -> int:
        return -(-array.nbytes // cls.ALIGN) * cls.ALIGN

    def __call__(self, array: np.ndarray) -> np.ndarray:
        end = self.offset + self.span(array)
        if self.buffer is None or end > len(self.buffer):
            return array.copy()
        out = np.frombuffer(self.buffer, array.dtype, array.size, self.offset)
        out = out.reshape(array.shape)
        out[...] = array
        self.offset = end
        return out


def header_json(header: dict[str, Any]) -> bytes:
    """The snapshot's header as JSON. Its ids (every market's) by orjson: json.dumps
    holds the GIL ~10 ms for 100k of them, and the writer thread's hold stalls the
    event loop; the rest by json, which writes the exchange state's -inf as the
    -Infinity the reader (json.loads) gives back. (Ids are strings: no check of each
    here, which would hold the GIL as long again.)"""
    ids = header.get("ids")
    if not isinstance(ids, list):
        return json.dumps(header).encode()
    rest = json.dumps({k: v for k, v in header.items() if k != "ids"})
    head = rest[:-1] + (", " if len(rest) > 2 else "") + '"ids": '
    return head.encode() + orjson.dumps(ids) + b"}"


def _exchange(header: dict[str, Any]) -> dict[str, Any] | None:
    doc = header.get("exchange")
    return doc if isinstance(doc, dict) else None


def _keep_versions(engine: Engine, ids: list[str], versions: np.ndarray | None) -> None:
    """Each market's version at least the snapshot's."""
    if versions is None or len(versions) != len(ids):
        return
    for market_id, version in zip(ids, versions.tolist(), strict=True):
        i = engine.index.get(market_id)
        if i is not None:
            engine.gov.version[i] = max(int(engine.gov.version[i]), int(version))


def _wall_ms() -> int:
    return int(time.time() * 1000)


def _restore(engine: Engine, ids: list[str], data: dict[str, Any]) -> int:
    """Copy each market's rows into the engine, by id; markets no longer configured
    (and not discoverable) are dropped."""
    n = len(ids)
    # A field this build has and the snapshot lacks (added since) keeps its fresh value:
    # every state field starts at "unknown", which the governor reads conservatively.
    names = [
        (prefix, state, f.name)
        for prefix, state in (("est_", engine.est), ("gov_", engine.gov))
        for f in fields(state)
        if prefix + f.name in data
    ]
    for prefix, _, name in names:
        if data[prefix + name].shape[0] != n:
            raise ValueError(
                f"{prefix}{name} has {data[prefix + name].shape[0]} rows for {n} markets"
            )
    src, dst = [], []
    for k, market_id in enumerate(ids):
        i = engine.index.get(market_id)
        if i is None:
            if not engine.discover:
                continue
            i = engine.add_market(market_id, None)
        src.append(k)
        dst.append(i)
    s, d = np.array(src, dtype=np.int64), np.array(dst, dtype=np.int64)
    for prefix, state, name in names:
        # Static per-market settings come from the config of this run, not the snapshot.
        if name != "tick_size":
            getattr(state, name)[d] = data[prefix + name][s]
    engine.first_t[d] = data["first_t"][s]
    finite = engine.est.t[d]
    if finite.size and np.isfinite(finite).any():
        engine.now = max(engine.now, float(np.nanmax(finite)))
    return len(dst)


def tighten_from_audit(engine: Engine, path: Path, tail_bytes: int = 8 << 20) -> int:
    """Hold each market's governor state at least as tight as its last audited publish.

    A snapshot is taken every few seconds; what was published after it and before a
    crash is in the audit log. Starting from the tighter of the two means a restart
    never publishes looser than the governor allowed before the crash. Returns the
    number of markets the audit log tightened."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - tail_bytes))
            tail = fh.read()
    except OSError:
        return 0
    latest: dict[str, dict[str, Any]] = {}
    lines = tail.split(b"\n")
    if size > tail_bytes:
        lines = lines[1:]  # the first line is cut by the seek
    for line in lines:
        try:
            batch = json.loads(line)
            entries = batch["params"]
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line, or not a batch
        for entry in entries:
            if isinstance(entry, dict) and isinstance(entry.get("market"), str):
                latest[entry["market"]] = entry
    return hold_published(engine, latest)


def hold_published(engine: Engine, latest: dict[str, dict[str, Any]]) -> int:
    """Hold each market's governor state at least as tight as `latest[market]`, a set
    published before (by this process before a restart, or by another replica), and
    its version at least at that set's. Returns the number of markets it tightened."""
    g = engine.gov
    tightened = 0
    for market_id, entry in latest.items():
        i = engine.index.get(market_id)
        if i is None:
            continue
        try:
            lev = np.array(
                [float(entry["max_leverage"]["long"]), float(entry["max_leverage"]["short"])]
            )
            fee = np.array(
                [float(entry["fee_rate_hourly"]["long"]), float(entry["fee_rate_hourly"]["short"])]
            )
            slip = float(entry["max_slippage"])
            mode = MODES.index(entry["mode"])
            version = int(entry["version"])
        except (KeyError, TypeError, ValueError):
            continue
        before = (g.leverage[i].copy(), g.fee[i].copy(), g.slippage[i], g.mode[i])
        never = g.mode[i] < 0
        g.leverage[i] = lev if never else np.fmin(g.leverage[i], lev)
        g.fee[i] = fee if never else np.fmax(g.fee[i], fee)
        g.slippage[i] = slip if never else min(g.slippage[i], slip)
        g.mode[i] = max(int(g.mode[i]), mode)
        g.version[i] = max(int(g.version[i]), version)
        if never or not (np.array_equal(before[0], g.leverage[i]) and before[3] == g.mode[i]):
            tightened += 1
    return tightened


_GENERATED_AT = re.compile(rb'"generated_at"\s*:\s*"([^"]{1,64})"')


def last_published_at(path: Path, chunk: int = 1 << 16) -> float:
    """`generated_at` of the last whole batch in the audit log (or, just after a
    rotation, in the newest rotated file), in unix seconds; -inf if there is none.

    Batches published after the last snapshot are only in the audit log: a restart
    stamps nothing earlier than this. Only the start of the last line is parsed
    (`generated_at` comes before the params, however many markets follow)."""
    for candidate in (path, path.with_name(path.name + ".1")):
        try:
            with candidate.open("rb") as fh:
                start = _last_line_start(fh, chunk)
                if start is None:
                    continue
                fh.seek(start)
                found = _GENERATED_AT.search(fh.read(512))
        except OSError:
            continue
        if found is None:
            continue
        try:
            return parse_iso(found.group(1).decode())
        except ValueError:
            continue
    return float("-inf")


def _last_line_start(fh: Any, chunk: int) -> int | None:
    """Offset of the last line ended by a newline (a torn tail is not a batch)."""
    end = fh.seek(0, os.SEEK_END)
    newlines: list[int] = []  # the last two newline offsets, walking back
    pos = end
    while pos > 0 and len(newlines) < 2:
        start = max(0, pos - chunk)
        fh.seek(start)
        block = fh.read(pos - start)
        at = len(block)
        while len(newlines) < 2:
            at = block.rfind(b"\n", 0, at)
            if at < 0:
                break
            newlines.append(start + at)
        pos = start
    if not newlines:
        return None
    return newlines[1] + 1 if len(newlines) == 2 else 0


@runtime_checkable
class Sequenced(Protocol):
    """A publisher that numbers its own messages (the HTTP sink)."""

    name: str
    seq: int


def publisher_seqs(batch: int, publishers: Sequence[object]) -> dict[str, int]:
    """The seqs a snapshot keeps: the batch's, and each numbering publisher's."""
    seqs = {"batch": batch}
    for pub in publishers:
        if isinstance(pub, Sequenced) and isinstance(pub.seq, int):
            seqs[pub.name] = pub.seq
    return seqs


@dataclass
class Resumed:
    """What the daemon continues from after `resume`."""

    loaded: Loaded
    seq: int  # the batch seq to continue above
    # The floor under the next batch's generated_at (a replay resumed from the
    # snapshot re-reads ticks whose batches were published before the restart).
    stamp_floor: float = float("-inf")


def seq_gap(snapshot_interval_s: float, publish_interval_s: float) -> int:
    """How far seqs and versions may have run ahead of the last snapshot: at most one
    batch per cycle (and a few HTTP messages per batch) between two snapshots."""
    return int(8 * snapshot_interval_s / publish_interval_s) + 1000


def resume(
    store: StateStore,
    engine: Engine,
    publishers: Sequence[object],
    audit: Path | None,
    gap: int,
    replay: Replayed | None,
) -> Resumed:
    """Load the snapshot: continue from it when trusted, else start conservatively.

    Either way seqs and versions only rise, so the exchange takes what comes next."""
    loaded = store.load(engine)
    quiet = loaded.status in ("restored", "none")
    log.log(
        logging.INFO if quiet else logging.WARNING,
        "state: %s",
        loaded.message,
        extra={"reason": f"state_{loaded.status}"},
    )
    seq = max(loaded.seqs["batch"] + gap if "batch" in loaded.seqs else 0, loaded.floor)
    for pub in publishers:
        if isinstance(pub, Sequenced) and isinstance(pub.seq, int):
            last = loaded.seqs.get(pub.name)
            pub.seq = max(0 if last is None else last + gap, loaded.floor)
    if audit is not None:
        held = tighten_from_audit(engine, audit)
        if held:
            log.info("state: %d markets held at their last audited values", held)
    engine.resume_versions(gap, loaded.floor)
    resumed = Resumed(loaded, seq)
    if loaded.trusted and replay is not None:
        replay.resume_after(loaded.clock)
        # The snapshot is older than the last batches: the audit log has them.
        resumed.stamp_floor = max(
            loaded.published, last_published_at(audit) if audit is not None else float("-inf")
        )
    return resumed
