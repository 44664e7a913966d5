"""The daemon clock: one callable, injected where time is read.

The daemon's default is its feed's own clock (`Feed.now`): event time for a replay,
wall time for a live venue. Tests and tools inject their own.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from riskd.timeutil import iso

Clock = Callable[[], float]  # unix seconds; -inf before a replay's first tick


def iso_or_empty(clock: Clock) -> str:
    """The clock's time in ISO 8601, or "" before it has one."""
    now = clock()
    return iso(now) if math.isfinite(now) else ""
