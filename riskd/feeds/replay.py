"""Replay feed: a tape played back in event time at a configurable speed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from riskd.feeds.base import Tick
from riskd.tape import Tape, TapeError

BATCH_MAX = 2000

log = logging.getLogger("riskd.feeds.replay")


class ReplayFeed:
    """Plays a tape file or directory; its clock is the tape's event time.

    Ticks before `fast_forward_until` go as fast as possible (a warm-up on
    history); the rest at `speed` event seconds per wall second (0: no waiting).
    After the last tick the clock stops at the last event time.

    A tape with no usable row is an error here, at start-up (TapeError). Bad rows are
    skipped and counted by reason (`rejected`); a file that stops being readable part
    of the way is logged, counted (`unreadable`) and ends there, the replay goes on.
    """

    venue = "replay"

    def __init__(self, path: Path, speed: float, fast_forward_until: float | None = None) -> None:
        self.tape = Tape(path, on_unreadable=self._unreadable)
        self.speed = speed
        self.fast_forward_until = fast_forward_until
        self.finished = False
        self._last_ts = float("-inf")
        self._next_ts = float("-inf")
        self._anchor: tuple[float, float] | None = None  # (event time, loop time)
        self._resume_after = float("-inf")

    def resume_after(self, clock: float) -> None:
        """Restarting from a snapshot taken at `clock`: skip what it already holds."""
        self._resume_after = clock
        self._last_ts = max(self._last_ts, clock)

    def now(self) -> float:
        """Event time now: between ticks it runs at `speed`, never past the next tick."""
        if self._anchor is None or self.finished:
            return self._last_ts
        ev0, wall0 = self._anchor
        running = ev0 + (asyncio.get_running_loop().time() - wall0) * self.speed
        return max(self._last_ts, min(running, self._next_ts))

    def _unreadable(self, exc: TapeError) -> None:
        log.error(
            "%s; the rest of that file is skipped",
            exc,
            extra={"venue": self.venue, "reason": "unreadable"},
        )

    def rejected(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for report in self.tape.reports:
            for reason, n in report.by_reason.items():
                counts[reason] = counts.get(reason, 0) + n
        return counts

    async def ticks(self) -> AsyncIterator[list[Tick]]:
        loop = asyncio.get_running_loop()
        batch: list[Tick] = []
        ff = self.fast_forward_until
        for tick in self.tape:
            if tick.ts < self._resume_after:
                continue
            paced = self.speed > 0 and (ff is None or tick.ts >= ff)
            if paced:
                if self._anchor is None:
                    self._anchor = (tick.ts, loop.time())
                ev0, wall0 = self._anchor
                delay = wall0 + (tick.ts - ev0) / self.speed - loop.time()
                if delay > 0:
                    if batch:
                        yield batch
                        batch = []
                    self._next_ts = tick.ts
                    await asyncio.sleep(delay)
            batch.append(tick)
            self._last_ts = max(self._last_ts, tick.ts)
            self._next_ts = max(self._next_ts, tick.ts)
            if len(batch) >= BATCH_MAX:
                yield batch
                batch = []
                await asyncio.sleep(0)  # let the cycle and the API run during fast-forward
        if batch:
            yield batch
        self.finished = True
        if self.tape.rejected_total:  # where they are: file and line, by reason
            summary = "\n".join(r.summary() for r in self.tape.reports if r.rejected)
            log.warning(
                "tape rows skipped:\n%s",
                summary,
                extra={"venue": self.venue, "reason": "rejected_rows"},
            )
