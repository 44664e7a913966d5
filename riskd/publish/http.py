"""HTTP publisher: signed POSTs of parameter sets to the exchange (interfaces.md).

One request is in flight at a time. While it is in flight, retrying or waiting for
the circuit breaker, newer sets replace older ones for the same market
(coalescing), so an older set is never sent after a newer one and what waits is at
most one set per market: memory is bounded by the market count, whatever the
outage length. Markets whose newest set tightened go first, in requests of at most
`max_batch` markets, ahead of any pure loosening. Every request takes the next
`seq` (`Idempotency-Key: <instance>:<seq>`); `seq` is a plain attribute the state
snapshot reads and restores before `start`.

Outcomes are classified in riskd/publish/retry.py: 2xx delivered; 408, 429, 5xx,
timeouts and connection errors retried with capped exponential backoff and
jitter, never sooner than `Retry-After`; other 4xx permanent (logged with the
response body, counted as `rejected`, not retried). After `circuit_failures`
consecutive retryable failures the circuit opens: no request for
`circuit_reset_s`, then one probe; its success closes the circuit.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from riskd import wire
from riskd.publish.base import Batch, PublishStats
from riskd.publish.retry import (
    CircuitBreaker,
    Outcome,
    classify_error,
    classify_status,
    error_reason,
    retry_after,
    retry_delays,
)
from riskd.rows import RowValues
from riskd.secrets import mask_url

if TYPE_CHECKING:
    from riskd.config import HttpPublisherSettings

log = logging.getLogger(__name__)
# A set waiting to be sent: its version, and the set as JSON (embedded as it is).
Pending = tuple[int, orjson.Fragment]

BODY_LOG_CHARS = 500


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """X-Riskd-Signature value: HMAC-SHA256 of "<timestamp>.<body>" (interfaces.md)."""
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


@dataclass(frozen=True)
class DeliveryPolicy:
    """Batching, retry and circuit-breaker settings (`[publisher.http]`)."""

    max_batch: int = 500
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 10.0
    retry_after_max_s: float = 60.0
    circuit_failures: int = 5
    circuit_reset_s: float = 5.0
    circuit_max_reset_s: float = 60.0

    @classmethod
    def from_settings(cls, cfg: HttpPublisherSettings) -> DeliveryPolicy:
        return cls(
            max_batch=cfg.max_batch,
            backoff_initial_s=cfg.backoff_initial_s,
            backoff_max_s=cfg.backoff_max_s,
            retry_after_max_s=cfg.retry_after_max_s,
            circuit_failures=cfg.circuit_failures,
            circuit_reset_s=cfg.circuit_reset_s,
            circuit_max_reset_s=max(cfg.circuit_max_reset_s, cfg.circuit_reset_s),
        )


@dataclass(frozen=True)
class Attempt:
    """What one request came to: its outcome, status (None without a response) and
    the wait the exchange asked for."""

    outcome: Outcome
    status: int | None = None
    retry_after_s: float | None = None


class HttpPublisher:
    """Sends the newest set of every market that changed, coalesced while busy."""

    name = "http"

    def __init__(
        self,
        url: str,
        secret: bytes,
        instance: str,
        stats: PublishStats,
        timeout_s: float = 5.0,
        policy: DeliveryPolicy | None = None,
        rows: Mapping[str, int] | None = None,
    ) -> None:
        self.url = url
        self._secret = secret
        self.instance = instance
        self.stats = stats
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.policy = policy or DeliveryPolicy()
        self.seq = 0  # the last seq sent; restored from the state snapshot before start
        # market -> newest set not yet delivered; at most one per market.
        # market -> (version, the set as JSON): serialised when it arrives, so that a
        # start-up's hundred thousand sets wait as bytes, not as dicts of floats that
        # would leave Python's small-object pools fragmented once sent.
        self._pending: dict[str, Pending] = {}
        # Pending markets whose newest set tightened (an ordered set): sent first.
        self._tight: dict[str, None] = {}
        # market -> highest version delivered (0: none): a set not newer is never
        # sent. Kept at the market's row of `rows` (the engine's id -> row).
        self._delivered = RowValues(rows, "q", 0)
        self.breaker = CircuitBreaker(
            self.policy.circuit_failures,
            self.policy.circuit_reset_s,
            self.policy.circuit_max_reset_s,
        )
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._ok = True
        self._generated_at = ""

    # --- the Publisher protocol ------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self.timeout)
        self._task = asyncio.create_task(self._run(), name="publish-http")
        self._task.add_done_callback(self._stopped)

    def _stopped(self, task: asyncio.Task[None]) -> None:
        """The sender only ends when closed; any other end is said, not silent, and
        makes the publisher unhealthy (/readyz)."""
        if task.cancelled():
            return
        self._ok = False
        exc = task.exception()
        log.error(
            "http publisher stopped, nothing more is sent to %s: %r",
            mask_url(self.url),
            exc,
            exc_info=exc,
            extra={"publisher": self.name, "reason": "publisher_stopped"},
        )

    def submit(self, batch: Batch) -> None:
        self._generated_at = batch.generated_at  # the daemon clock: event time in replay
        for entry in batch.params:
            market = entry["market"]
            version = entry["version"]
            if version <= self._delivered.get(market):
                continue
            self._pending[market] = (version, orjson.Fragment(orjson.dumps(entry)))
            # Sticky until sent: a newer set replacing a tightening one may be looser
            # than it, but is still tighter than what the exchange holds.
            if market in batch.tightened:
                self._tight[market] = None
        if self._pending:
            self._idle.clear()
            self._wake.set()

    def healthy(self) -> bool:
        alive = self._task is None or not self._task.done()
        return alive and self._ok and not self.breaker.is_open

    async def drain(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning(
                "http publisher: %d markets unsent at shutdown",
                len(self._pending),
                extra={"publisher": self.name, "reason": "shutdown_deadline"},
            )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    # --- inspection ------------------------------------------------------------

    def backlog(self) -> int:
        """Markets waiting to be sent (never more than the market count)."""
        return len(self._pending)

    # --- the sender -------------------------------------------------------------

    def _take(self) -> dict[str, Pending]:
        """Up to max_batch pending markets, tightened ones first, oldest waiting first."""
        limit = self.policy.max_batch
        order: list[str] = list(self._tight)[:limit]
        if len(order) < limit:
            for market in self._pending:
                if market not in self._tight:
                    order.append(market)
                    if len(order) == limit:
                        break
        taken = {m: self._pending.pop(m) for m in order}
        for market in order:
            self._tight.pop(market, None)
        return taken

    def _put_back(self, taken: dict[str, Pending], tight: set[str]) -> None:
        """After a retryable failure: what nothing newer replaced meanwhile waits again."""
        for market, entry in taken.items():
            if market not in self._pending:
                self._pending[market] = entry
                if market in tight:
                    self._tight[market] = None
            elif market in tight:
                self._tight[market] = None

    async def _run(self) -> None:
        delays: Iterator[float] | None = None
        while True:
            if not self._pending:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            wait = self.breaker.wait_s(time.monotonic())
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            tight = set(self._tight)
            taken = self._take()
            try:
                attempt = await self._post(taken, bool(tight & taken.keys()))
            except Exception:  # a bug (classify_error): drop these sets, keep the sender
                self._ok = False
                log.exception(
                    "http publisher: could not send %d sets",
                    len(taken),
                    extra={"publisher": self.name, "reason": "publisher_error"},
                )
                self.stats.published(self.name, "error", None)
                continue
            if attempt.outcome is Outcome.RETRY:
                self._put_back(taken, tight)
                if self.breaker.failure(time.monotonic()):
                    self.stats.circuit(self.name, True)
                    log.error(
                        "http publisher: circuit open after %d consecutive failures",
                        self.breaker.consecutive,
                        extra={"publisher": self.name, "reason": "circuit_open"},
                    )
                if delays is None:
                    delays = retry_delays(self.policy.backoff_initial_s, self.policy.backoff_max_s)
                delay = next(delays)
                if attempt.retry_after_s is not None:
                    delay = max(delay, attempt.retry_after_s)
                # An open circuit waits in the loop above (and may wait longer).
                await asyncio.sleep(delay)
                continue
            delays = None
            # A permanent refusal still means the exchange is up and answering.
            if self.breaker.success():
                self.stats.circuit(self.name, False)
                log.info(
                    "http publisher: circuit closed, the exchange answers again",
                    extra={"publisher": self.name, "reason": "circuit_closed"},
                )
            if attempt.outcome is Outcome.DELIVERED:
                delivered = self._delivered
                for market, (version, _) in taken.items():
                    delivered.set(market, max(delivered.get(market), int(version)))

    # Clustered (riskd/cluster.py): the shard and the leader's epoch this publisher
    # sends for, in every body and as X-Riskd-Epoch. None: not clustered.
    fence: dict[str, int] | None = None

    def fence_headers(self) -> dict[str, str]:
        return {} if self.fence is None else {"X-Riskd-Epoch": str(self.fence["epoch"])}

    async def _post(self, taken: dict[str, Pending], tightens: bool) -> Attempt:
        assert self._session is not None
        self.seq += 1
        sets = [entry for _, entry in taken.values()]
        body = wire.batch(self.instance, self.seq, self._generated_at, sets, fence=self.fence)
        extra: dict[str, Any] = {
            "publisher": self.name,
            "seq": self.seq,
            "markets": len(taken),
            "tightens": tightens,
        }
        started = time.perf_counter()
        try:
            # A redirect is answered as it is (permanent): signed parameters go to the
            # configured URL only.
            async with self._session.post(
                self.url, data=body, headers=self._headers(body), allow_redirects=False
            ) as resp:
                text = await resp.text(errors="replace")
                status = resp.status
                wait_header = resp.headers.get("Retry-After")
        except Exception as exc:
            if classify_error(exc) is None:
                raise
            self._ok = False
            reason = error_reason(exc)
            level = logging.DEBUG if self.breaker.is_open else logging.WARNING
            log.log(
                level,
                "http publish failed (%s), will retry",
                reason,
                extra={**extra, "reason": reason},
            )
            self.stats.published(self.name, Outcome.RETRY.value, None)
            return Attempt(Outcome.RETRY)
        latency = time.perf_counter() - started
        return self._answered(status, text, wait_header, latency, extra)

    def _headers(self, body: bytes) -> dict[str, str]:
        """The request's headers (interfaces.md): idempotency key and signature."""
        ts = str(int(time.time()))
        return {
            "Content-Type": "application/json",
            "Idempotency-Key": f"{self.instance}:{self.seq}",
            "X-Riskd-Timestamp": ts,
            "X-Riskd-Signature": sign(self._secret, ts, body),
            **self.fence_headers(),
        }

    def _answered(
        self,
        status: int,
        text: str,
        wait_header: str | None,
        latency: float,
        extra: dict[str, Any],
    ) -> Attempt:
        """What an answer means: delivered, retry (after Retry-After), or refused."""
        outcome = classify_status(status)
        self.stats.published(self.name, outcome.value, latency)
        extra["reason"] = f"http_{status}"
        if outcome is Outcome.DELIVERED:
            self._ok = True
            return Attempt(outcome, status)
        self._ok = False
        if outcome is Outcome.RETRY:
            wait = retry_after(wait_header, time.time(), self.policy.retry_after_max_s)
            level = logging.DEBUG if self.breaker.is_open else logging.WARNING
            log.log(
                level,
                "http publish got %d, will retry%s",
                status,
                f" after {wait:g} s (Retry-After)" if wait is not None else "",
                extra=extra,
            )
            return Attempt(outcome, status, wait)
        log.error(
            "http publish refused with %d (not retried): %s",
            status,
            text[:BODY_LOG_CHARS],
            extra=extra,
        )
        return Attempt(outcome, status)
