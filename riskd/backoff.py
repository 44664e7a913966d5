"""Retry delays: capped exponential backoff with jitter, as a pure generator.

After websockets' `client.py::backoff`: a feed's connection shell and the HTTP
publisher take the next delay after each failure and start a fresh generator after
a success.
No I/O, no clock: the random source is an argument, so tests are deterministic.
"""

from __future__ import annotations

import random
from collections.abc import Iterator


def backoff(
    initial_s: float = 0.5,
    max_s: float = 30.0,
    factor: float = 2.0,
    jitter: float = 0.5,
    rng: random.Random | None = None,
) -> Iterator[float]:
    """Delays initial_s, initial_s*factor, ... capped at max_s, each shrunk by a random
    fraction up to `jitter` (0: none, 1: "full jitter"), so that many clients cut off
    at once do not reconnect in lockstep."""
    if initial_s <= 0 or max_s < initial_s or factor < 1.0 or not 0.0 <= jitter <= 1.0:
        raise ValueError("backoff: need 0 < initial_s <= max_s, factor >= 1, 0 <= jitter <= 1")
    draw = (rng or random.Random()).random
    delay = initial_s
    while True:
        yield delay * (1.0 - jitter * draw())
        delay = min(delay * factor, max_s)
