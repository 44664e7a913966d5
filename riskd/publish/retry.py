"""Delivery policy of the HTTP publisher, without I/O: what to do with each outcome,
how long to wait, and when to stop trying (the circuit breaker).

Errors are classified here and nowhere else (`classify_status`, `classify_error`):
2xx is delivered; 408, 429, 5xx, timeouts and connection errors are retried; any
other 4xx is permanent. Delays come from the pure generator `backoff` (through
`retry_delays`, which never raises); the breaker is a small state machine whose
clock is an argument.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import aiohttp

from riskd.backoff import backoff

RETRYABLE_STATUSES = frozenset({408, 429})


class Outcome(enum.Enum):
    DELIVERED = "ok"
    RETRY = "retry"
    PERMANENT = "rejected"


def classify_status(status: int) -> Outcome:
    """interfaces.md: 2xx ok; 408, 429 and 5xx retried; any other status permanent."""
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status in RETRYABLE_STATUSES or status >= 500:
        return Outcome.RETRY
    return Outcome.PERMANENT


def classify_error(exc: BaseException) -> Outcome | None:
    """A transport failure: timeouts and connection errors are retried; anything else
    (None) is a bug and propagates."""
    if isinstance(exc, TimeoutError | aiohttp.ClientError | ConnectionError):
        return Outcome.RETRY
    return None


def error_reason(exc: BaseException) -> str:
    """A short label for logs: `timeout`, `connection_refused`, ..."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError | ConnectionRefusedError):
        return "connection_refused"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "disconnected"
    return type(exc).__name__


def retry_after(value: str | None, now: float, limit: float) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date),
    capped at `limit` so a misconfigured exchange cannot park the publisher for hours;
    None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), limit)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(0.0, when - now), limit)


def retry_delays(
    initial_s: float, max_s: float, rng: random.Random | None = None
) -> Iterator[float]:
    """`backoff` delays for any pair of settings: the config rejects a reversed or
    non-positive range, but the sender runs in a task where a ValueError would stop
    publishing for good, so a bad range is made usable (max raised to initial) rather
    than raised."""
    initial = initial_s if initial_s > 0 and math.isfinite(initial_s) else 0.1
    cap = max_s if math.isfinite(max_s) and max_s >= initial else initial
    return backoff(initial, cap, rng=rng)


@dataclass
class CircuitBreaker:
    """Closed until `failures` consecutive retryable failures, then open for `reset_s`;
    then half-open: one request is let through as a probe, whose success closes the
    circuit and whose failure opens it again (for up to `max_reset_s`, doubling)."""

    failures: int = 5
    reset_s: float = 5.0
    max_reset_s: float = 60.0
    consecutive: int = 0
    open_until: float | None = None  # None: closed
    _current_reset_s: float = 0.0

    @property
    def is_open(self) -> bool:
        """Open or half-open: the exchange has not answered since it failed."""
        return self.open_until is not None

    def wait_s(self, now: float) -> float:
        """How long before the next request may go (0: now, as the probe if half-open)."""
        if self.open_until is None:
            return 0.0
        return max(0.0, self.open_until - now)

    def success(self) -> bool:
        """A delivered (or permanently refused: the exchange is up) request; True if
        this closes an open circuit."""
        was_open = self.open_until is not None
        self.consecutive = 0
        self.open_until = None
        self._current_reset_s = 0.0
        return was_open

    def failure(self, now: float) -> bool:
        """A retryable failure; True if this opens the circuit (from closed)."""
        self.consecutive += 1
        if self.open_until is not None:  # the half-open probe failed: open again, longer
            self._current_reset_s = min(2.0 * self._current_reset_s, self.max_reset_s)
            self.open_until = now + self._current_reset_s
            return False
        if self.consecutive >= self.failures:
            self._current_reset_s = self.reset_s
            self.open_until = now + self.reset_s
            return True
        return False
