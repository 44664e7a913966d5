"""Ticks from a NATS subject (`[feed] kind = "nats"`), decoded by the generic JSON
feed's codec (riskd/feeds/websocket/codec.py): one message is one websocket frame.

The client (nats-py) reconnects by itself and resubscribes; each connection is a
session for freshness, as a websocket connection is (docs/model.md section 5): a
market whose top of book arrived on it stays fresh while messages keep coming on
it, and goes stale once it drops. Malformed messages are counted by reason."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import nats

from riskd.backoff import backoff
from riskd.feeds.base import Liveness, MarketEvent, Tick
from riskd.feeds.codec import MAX_FUTURE_S, Decoded
from riskd.feeds.connection import SESSIONS
from riskd.feeds.nats.config import NatsFeedSettings
from riskd.feeds.websocket.codec import WebsocketCodec
from riskd.secrets import mask_url

if TYPE_CHECKING:
    from riskd.metrics import Metrics

log = logging.getLogger("riskd.feeds")

# Messages decoded into one batch of ticks at most.
BATCH = 1000


class NatsFeed:
    def __init__(
        self,
        settings: NatsFeedSettings,
        *,
        url: str = "",
        metrics: Metrics | None = None,
        max_future_s: float = MAX_FUTURE_S,
    ) -> None:
        self.settings = settings
        self.venue = settings.venue
        self.url = url or settings.url
        self.codec = WebsocketCodec(settings.codec_settings(), max_future_s)
        self.metrics = metrics
        self.connected = False
        self.connections = 0
        self.heard_at = math.nan  # wall time of the last message on any connection
        self._session = -1  # the connection now, or -1
        self._life = math.nan  # wall time of its last message
        self._live = Liveness()
        self._rejected: dict[str, int] = {}
        self._queue: asyncio.Queue[tuple[int, bytes, float]] = asyncio.Queue(settings.max_pending)
        self._nc: Any = None

    # --- the Feed and LivenessSource protocols ------------------------------------

    def rejected(self) -> dict[str, int]:
        return dict(self._rejected)

    def take_events(self) -> list[MarketEvent]:
        return []

    def now(self) -> float:
        return time.time()

    def sessions(self) -> list[int]:
        return [self._session] if self._session >= 0 else []

    def take_liveness(self) -> Liveness:
        live, self._live = self._live, Liveness()
        if self._session >= 0:
            live.sessions[self._session] = self._life
            if self._life > self.heard_at or math.isnan(self.heard_at):
                self.heard_at = self._life
        return live

    async def ticks(self) -> AsyncIterator[list[Tick]]:
        self._set_connected(False)
        await self._connect()
        try:
            while True:
                batch = [await self._queue.get()]
                while len(batch) < BATCH and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                ticks = self._take(batch)
                if ticks is not None:
                    yield ticks
        finally:
            self._ended()
            if self._nc is not None:
                with contextlib.suppress(Exception):
                    await self._nc.close()
                self._nc = None

    # --- the connection -------------------------------------------------------------

    async def _connect(self) -> None:
        """Until the first connection; from then on the client reconnects by itself."""
        s = self.settings
        delays = backoff(s.backoff_initial_s, s.backoff_max_s)
        while True:
            try:
                self._nc = await nats.connect(
                    self.url,
                    connect_timeout=s.open_timeout_s,
                    reconnect_time_wait=s.backoff_initial_s,
                    max_reconnect_attempts=-1,
                    ping_interval=s.keepalive_s,
                    max_outstanding_pings=2,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    error_cb=self._on_error,
                )
                break
            except Exception as exc:  # not up yet: no prices, the markets go stale
                delay = next(delays)
                log.warning(
                    "%s: cannot reach %s (retrying in %.2fs): %s",
                    self.venue,
                    mask_url(self.url),
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)
        await self._nc.subscribe(
            s.subject, queue=s.queue, cb=self._on_message, pending_msgs_limit=s.max_pending
        )
        self._started()

    def _started(self) -> None:
        self._session, self._life = next(SESSIONS), math.nan
        self.codec.on_connect()  # what the codec keeps does not outlive a connection
        self.connections += 1
        if self.connections > 1 and self.metrics is not None:
            self.metrics.reconnects.labels(self.venue).inc()
        self._set_connected(True)
        log.info("%s: connected to %s", self.venue, mask_url(self.url))

    def _ended(self) -> None:
        if self._session >= 0:
            self._live.ended.append(self._session)
        self._session = -1
        self._set_connected(False)

    async def _on_disconnected(self) -> None:
        if self._session >= 0:
            log.warning("%s: connection to %s lost", self.venue, mask_url(self.url))
        self._ended()

    async def _on_reconnected(self) -> None:
        self._started()

    async def _on_error(self, exc: Exception) -> None:
        log.debug("%s: nats: %r", self.venue, exc)

    async def _on_message(self, msg: Any) -> None:
        try:
            self._queue.put_nowait((self._session, msg.data, time.time()))
        except asyncio.QueueFull:
            self._count("dropped")

    def _set_connected(self, up: bool) -> None:
        self.connected = up
        if self.metrics is not None:
            self.metrics.feed_connected.labels(self.venue).set(1 if up else 0)

    # --- decoding ---------------------------------------------------------------------

    def _count(self, reason: str) -> None:
        self._rejected[reason] = self._rejected.get(reason, 0) + 1

    def _take(self, batch: list[tuple[int, bytes, float]]) -> list[Tick] | None:
        """The ticks of these messages, or None when they changed nothing the daemon
        sees at once; what they say of freshness waits for `take_liveness`."""
        ticks: list[Tick] = []
        changed = False
        live = self._live
        for session, data, received in batch:
            decoded = self._decode(data, received)
            for reason in decoded.rejected:
                self._count(reason)
            if session >= 0 and session == self._session:
                self._life = received
            if decoded.heard:
                live.heard.append((session, received, decoded.heard))
            live.books.update(dict.fromkeys(decoded.books, (session, received)))
            ticks += decoded.ticks
            changed = changed or bool(decoded.ticks or decoded.rejected)
        return ticks if changed else None

    def _decode(self, data: bytes, received: float) -> Decoded:
        try:
            return self.codec.decode(data, received)
        except Exception:  # one hostile message must not stop the feed
            log.exception("%s: could not decode a message", self.venue)
            return Decoded(rejected=["decode_error"])
