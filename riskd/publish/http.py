"""HTTP publisher: signed POSTs of batches to the exchange, newest values coalesced."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import time
from typing import Any

import aiohttp
import orjson

from riskd.publish.base import Batch, PublishStats

log = logging.getLogger(__name__)

RETRYABLE = {408, 429}
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 10.0


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """X-Riskd-Signature value: HMAC-SHA256 of "<timestamp>.<body>" (interfaces.md)."""
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def backoff(attempt: int) -> float:
    """Capped exponential delay with full jitter."""
    return random.uniform(0.0, min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2.0**attempt))


class HttpPublisher:
    """Sends every batch; while a send is in flight or retrying, newer values for the
    same market replace older ones, so an older set is never sent after a newer one."""

    name = "http"

    def __init__(self, url: str, secret: bytes, instance: str, stats: PublishStats,
                 timeout_s: float = 5.0) -> None:
        self.url = url
        self._secret = secret
        self.instance = instance
        self.stats = stats
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.seq = 0
        self._pending: dict[str, dict[str, Any]] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._ok = True
        self._generated_at = ""

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self.timeout)
        self._task = asyncio.create_task(self._run(), name="publish-http")

    def submit(self, batch: Batch) -> None:
        self._generated_at = batch.generated_at  # the daemon clock: event time in replay
        for entry in batch.params:
            self._pending[entry["market"]] = entry
        if self._pending:
            self._idle.clear()
            self._wake.set()

    def healthy(self) -> bool:
        return self._ok

    async def drain(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning("http publisher: %d markets unsent at shutdown", len(self._pending),
                        extra={"publisher": self.name, "reason": "shutdown_deadline"})

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        attempt = 0
        while True:
            if not self._pending:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            taken, self._pending = self._pending, {}
            self.seq += 1
            result = await self._post(list(taken.values()))
            if result == "retry":
                # Put back only what nothing newer has replaced meanwhile.
                for market, entry in taken.items():
                    self._pending.setdefault(market, entry)
                await asyncio.sleep(backoff(attempt))
                attempt += 1
            else:
                attempt = 0

    async def _post(self, params: list[dict[str, Any]]) -> str:
        assert self._session is not None
        body = orjson.dumps({
            "source": "riskd", "instance": self.instance, "seq": self.seq,
            "generated_at": self._generated_at, "params": params,
        })
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": f"{self.instance}:{self.seq}",
            "X-Riskd-Timestamp": ts,
            "X-Riskd-Signature": sign(self._secret, ts, body),
        }
        started = time.perf_counter()
        try:
            async with self._session.post(self.url, data=body, headers=headers) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._ok = False
            log.warning("http publish failed, will retry: %s", type(exc).__name__,
                        extra={"publisher": self.name, "reason": type(exc).__name__})
            self.stats.published(self.name, "retry", None)
            return "retry"
        latency = time.perf_counter() - started
        if 200 <= status < 300:
            self._ok = True
            self.stats.published(self.name, "ok", latency)
            return "ok"
        if status in RETRYABLE or status >= 500:
            self._ok = False
            log.warning("http publish got %d, will retry", status,
                        extra={"publisher": self.name, "reason": f"http_{status}"})
            self.stats.published(self.name, "retry", latency)
            return "retry"
        self._ok = False
        log.error("http publish rejected with %d: %s", status, text[:500],
                  extra={"publisher": self.name, "reason": f"http_{status}"})
        self.stats.published(self.name, "rejected", latency)
        return "rejected"

