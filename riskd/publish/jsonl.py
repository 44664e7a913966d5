"""JSONL audit log: one line per published batch, flushed per batch."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import BinaryIO

from riskd.publish.base import Batch, PublishStats

log = logging.getLogger(__name__)


class JsonlPublisher:
    name = "jsonl"

    def __init__(self, path: Path, stats: PublishStats, fsync: bool = False) -> None:
        self.path = path
        self.stats = stats
        self.fsync = fsync
        self._fh: BinaryIO | None = None
        self._ok = True

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("ab")

    def submit(self, batch: Batch) -> None:
        if self._fh is None:
            raise RuntimeError("jsonl publisher not started")
        try:
            self._fh.write(batch.body() + b"\n")
            self._fh.flush()
            if self.fsync:
                os.fsync(self._fh.fileno())
        except OSError as exc:
            # The audit log failing must not stop the exchange from getting parameters.
            self._ok = False
            log.error("audit log write failed", extra={
                "publisher": self.name, "path": str(self.path), "reason": exc.strerror})
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
