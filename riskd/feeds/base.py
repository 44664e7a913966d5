"""The one small contract every venue feed implements: yield normalised ticks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True, frozen=True)
class Tick:
    """A normalised price observation: what every feed and the tape reader produce."""

    market: str
    ts: float  # event time, unix seconds
    price: float  # YES probability in [0, 1]
    bid: float | None = None
    ask: float | None = None
    depth: float | None = None


class Feed(Protocol):
    """A source of ticks. `venue` labels metrics; `ticks()` runs until the feed ends."""

    venue: str

    def ticks(self) -> AsyncIterator[list[Tick]]:
        """Yield batches of ticks in arrival order."""
        ...

    def rejected(self) -> dict[str, int]:
        """Counts of rejected inputs by reason, since start."""
        ...
