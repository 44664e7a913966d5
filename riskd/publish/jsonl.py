"""JSONL audit log: append-only, one line per published batch, flushed per batch.

Rotated by size with a bounded number of files; a torn last line left by a
crash is cut off at start-up (and skipped by `read_audit`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from riskd.publish.base import Batch, PublishStats

log = logging.getLogger(__name__)


class JsonlPublisher:
    name = "jsonl"

    def __init__(
        self,
        path: Path,
        stats: PublishStats,
        fsync: bool = False,
        max_bytes: int = 0,
        backups: int = 5,
    ) -> None:
        self.path = path
        self.stats = stats
        self.fsync = fsync
        self.max_bytes = max_bytes  # 0: never rotate
        self.backups = backups
        self._fh: BinaryIO | None = None
        self._ok = True
        self.torn_bytes = 0  # cut from the end of the log at start-up

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.torn_bytes = repair_tail(self.path)
        if self.torn_bytes:
            log.warning(
                "audit log ended in a torn line (a crash mid-write): cut %d bytes",
                self.torn_bytes,
                extra={"publisher": self.name, "path": str(self.path)},
            )
        self._fh = self.path.open("ab")

    def _rotate(self) -> None:
        """audit.jsonl -> audit.jsonl.1 -> ... -> audit.jsonl.<backups> (dropped)."""
        assert self._fh is not None
        self._fh.close()
        for k in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{k}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{k + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        self._fh = self.path.open("ab")

    def submit(self, batch: Batch) -> None:
        if self._fh is None:
            raise RuntimeError("jsonl publisher not started")
        try:
            if self.max_bytes and self._fh.tell() >= self.max_bytes:
                self._rotate()
            self._fh.write(batch.body() + b"\n")
            self._fh.flush()
            if self.fsync:
                os.fsync(self._fh.fileno())
        except OSError as exc:
            # The audit log failing must not stop the exchange from getting parameters.
            self._ok = False
            log.error(
                "audit log write failed",
                extra={"publisher": self.name, "path": str(self.path), "reason": exc.strerror},
            )
            self.stats.published(self.name, "error", None)
            return
        self._ok = True
        self.stats.published(self.name, "ok", 0.0)

    async def drain(self, timeout: float) -> None:
        if self._fh is not None:
            self._fh.flush()

    async def close(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None

    def healthy(self) -> bool:
        return self._ok


def repair_tail(path: Path) -> int:
    """Cut a torn last line (no newline) from the end of the file; returns bytes cut."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    if size == 0:
        return 0
    with path.open("rb+") as fh:
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return 0
        # Walk back to the previous newline; the torn line is never longer than a batch.
        pos, chunk = size, 1 << 16
        while pos > 0:
            start = max(0, pos - chunk)
            fh.seek(start)
            block = fh.read(pos - start)
            nl = block.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        else:
            keep = 0
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
        return size - keep


def read_audit(path: Path) -> Iterator[dict[str, Any]]:
    """Every batch in an audit log; a torn last line is skipped, any other bad line raises."""
    with path.open("rb") as fh:
        lines = fh.read().split(b"\n")
    torn = lines.pop()  # after the last newline: empty unless the last line is torn
    for number, line in enumerate(lines, 1):
        try:
            yield orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {number} is not JSON: {exc}") from None
    if torn:
        log.warning("%s: skipped a torn last line of %d bytes", path, len(torn))
