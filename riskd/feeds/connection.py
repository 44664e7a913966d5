"""The thin connection shell every live feed shares: connect, subscribe, read, decode,
reconnect. All parsing is in the venue's codec; delays come from `backoff`.

Robustness: a capped exponential backoff with jitter between attempts (reset once a
connection delivered prices), everything resubscribed on each connection (the
codec's `on_connect`), a read timeout that drops a silent connection (no message,
nor a heartbeat ping where that is how the venue says it is there), a websocket
keepalive, a maximum message size, an optional application-level ping. Malformed
messages are counted by reason and skipped. Errors are classified in one place,
`classify`: retryable ones reconnect, fatal ones (bad credentials, a wrong URL)
stop the feed, and with it the daemon, with a message saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)
from websockets.frames import Frame, Opcode

from riskd.backoff import backoff
from riskd.feeds.base import MarketEvent, Tick
from riskd.feeds.codec import Codec, Decoded
from riskd.feeds.settings import ConnectionSettings

if TYPE_CHECKING:
    from riskd.metrics import Metrics

log = logging.getLogger("riskd.feeds")

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MESSAGE_TOO_BIG = 1009  # websocket close code


class HeartbeatConnection(ClientConnection):
    """A client connection that notes when the venue last pinged us (see `heartbeat`
    of WebsocketFeed; only there, as this runs for every frame)."""

    pinged_at = -math.inf  # loop time of the venue's last ping

    def process_event(self, event: Any) -> None:
        super().process_event(event)
        if isinstance(event, Frame) and event.opcode is Opcode.PING:
            self.pinged_at = self.loop.time()


class FeedError(RuntimeError):
    """A connection error that retrying will not fix (credentials, URL, protocol)."""


class SilentConnection(Exception):
    """No message within the read timeout."""


class Resubscribe(Exception):
    """A metadata lookup that had failed came through: connect again to subscribe."""


def classify(exc: BaseException) -> str | None:
    """The reason label of a retryable connection error, or None if it is fatal."""
    if isinstance(exc, SilentConnection):
        return "read_timeout"
    if isinstance(exc, Resubscribe):
        return "resubscribe"
    if isinstance(exc, ConnectionClosed):
        frame = exc.rcvd or exc.sent
        if frame is not None and frame.code == MESSAGE_TOO_BIG:
            return "message_too_big"
        return "connection_closed"
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        return f"http_{status}" if status in RETRY_STATUSES else None
    if isinstance(exc, InvalidURI):
        return None
    if isinstance(exc, InvalidHandshake):
        return "handshake"
    if isinstance(exc, TimeoutError):
        return "open_timeout"
    if isinstance(exc, OSError):
        return "network"
    return None


class WebsocketFeed:
    """One venue's live feed over one websocket connection.

    Venue feeds subclass it for the parts that differ: `headers()` (signed auth),
    `prepare()` (the metadata lookup before connecting)."""

    def __init__(
        self,
        venue: str,
        url: str,
        codec: Codec,
        settings: ConnectionSettings,
        metrics: Metrics | None = None,
        *,
        ping_text: str = "",
        ping_interval_s: float = 0.0,
        heartbeat: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        self.venue = venue
        self.url = url
        self.codec = codec
        self.settings = settings
        self.metrics = metrics
        self.ping_text = ping_text
        self.ping_interval_s = ping_interval_s
        # The venue's websocket pings are its heartbeat (Kalshi: every 10 s, and no
        # message at all while the subscribed markets are quiet): a ping counts as
        # hearing from it, or the read timeout would drop a healthy quiet feed every
        # `read_timeout_s`. Elsewhere only messages count (Polymarket answers our
        # PING), as pings and pongs come from the venue's websocket stack, whose
        # liveness the keepalive already checks.
        self.heartbeat = heartbeat
        self.rng = rng or random.Random()
        self.connected = False
        self.connections = 0  # successful connections since start
        self.last_error = ""
        self._rejected: dict[str, int] = {}
        self._events: list[MarketEvent] = []
        self._prepared = False
        self._prepare_at = 0.0  # monotonic time of the next lookup attempt
        self._lookup: asyncio.Task[None] | None = None
        # Loop time `_session` began waiting for the next message (None: not waiting).
        self._waiting_since: float | None = None

    # --- the Feed protocol ------------------------------------------------------------

    def rejected(self) -> dict[str, int]:
        return dict(self._rejected)

    def take_events(self) -> list[MarketEvent]:
        events, self._events = self._events, []
        return events

    def now(self) -> float:
        """Live feeds run on wall time."""
        return time.time()

    # --- hooks for the venues -----------------------------------------------------------

    def headers(self) -> dict[str, str]:
        """Extra HTTP headers of the opening handshake (made fresh for each attempt)."""
        return {}

    async def prepare(self) -> None:
        """Before connecting: e.g. look markets up; raise to try again next time."""

    # --- the loop -----------------------------------------------------------------------

    def count(self, reason: str, n: int = 1) -> None:
        self._rejected[reason] = self._rejected.get(reason, 0) + n

    def _backoff(self) -> Iterator[float]:
        s = self.settings
        return backoff(s.backoff_initial_s, s.backoff_max_s, s.backoff_factor,
                       s.backoff_jitter, self.rng)

    def _set_connected(self, up: bool) -> None:
        self.connected = up
        if self.metrics is not None:
            self.metrics.feed_connected.labels(self.venue).set(1 if up else 0)

    async def ticks(self) -> AsyncIterator[list[Tick]]:
        self._set_connected(False)  # until the first handshake succeeds
        delays = self._backoff()
        at_once = True
        while True:
            if not at_once:
                delay = next(delays)
                log.info("%s: reconnecting in %.2fs", self.venue, delay)
                await asyncio.sleep(delay)
            at_once = False
            if not self._prepared:
                await self._prepare()
            if self._events:
                yield []  # let the daemon take the listed markets before any price
            healthy = False
            try:
                async with contextlib.aclosing(self._session()) as session:
                    async for batch in session:
                        if batch:
                            healthy = True
                        yield batch
            except Exception as exc:
                reason = classify(exc)
                self.last_error = f"{type(exc).__name__}: {exc}"
                if reason is None:
                    raise FeedError(f"{self.venue} feed at {self.url}: {self.last_error}") \
                        from exc
                if reason == "message_too_big":
                    self.count(reason)
                    yield []  # so the daemon counts it now
                if reason == "resubscribe":
                    at_once = True
                    log.info("%s: metadata found, connecting again to subscribe", self.venue)
                else:
                    log.warning("%s: connection lost (%s): %s", self.venue, reason,
                                self.last_error)
            finally:
                self._set_connected(False)
            if healthy:
                delays = self._backoff()  # a connection that worked: start over

    async def _prepare(self) -> None:
        try:
            await self.prepare()
        except Exception as exc:  # noqa: BLE001 - metadata is optional, prices are not
            self.count("metadata_unavailable")
            self._prepare_at = time.monotonic() + self.settings.metadata_retry_s
            log.warning("%s: metadata lookup failed, using the markets file alone "
                        "(retrying in %gs): %s", self.venue, self.settings.metadata_retry_s,
                        exc)
        else:
            self._prepared = True

    def _check_lookup(self) -> None:
        """While connected without metadata: retry the lookup in the background, and
        connect again (to subscribe to what it found) once it succeeds."""
        if self._lookup is not None:
            if self._lookup.done():
                self._lookup = None
                if self._prepared:
                    raise Resubscribe("metadata lookup succeeded")
        elif not self._prepared and time.monotonic() >= self._prepare_at:
            self._lookup = asyncio.create_task(self._prepare(), name=f"{self.venue}-metadata")

    async def _session(self) -> AsyncGenerator[list[Tick]]:
        s = self.settings
        async with connect(
            self.url,
            additional_headers=self.headers(),
            open_timeout=s.open_timeout_s,
            ping_interval=s.keepalive_s,
            ping_timeout=s.keepalive_s,
            close_timeout=1.0,
            max_size=s.max_message_bytes,
            create_connection=HeartbeatConnection if self.heartbeat else ClientConnection,
        ) as ws:
            self._set_connected(True)
            self.connections += 1
            if self.connections > 1 and self.metrics is not None:
                self.metrics.reconnects.labels(self.venue).inc()
            log.info("%s: connected to %s", self.venue, self.url)
            for subscription in self.codec.on_connect():
                await ws.send(subscription)
            pinger = None
            if self.ping_text and self.ping_interval_s > 0:
                pinger = asyncio.create_task(self._ping(ws), name=f"{self.venue}-ping")
            loop = asyncio.get_running_loop()
            watchdog = asyncio.create_task(self._watchdog(ws, s.read_timeout_s),
                                           name=f"{self.venue}-read-timeout")
            try:
                while True:
                    self._waiting_since = loop.time()
                    try:
                        # Bytes: the codecs' JSON parser reads (and checks) UTF-8 itself.
                        frame = await ws.recv(decode=False)
                    except ConnectionClosed:
                        if watchdog.done():
                            raise SilentConnection(
                                f"nothing received for {s.read_timeout_s:g}s") from None
                        raise
                    self._waiting_since = None
                    decoded = self._decode(frame)
                    for reply in decoded.replies:
                        await ws.send(reply)
                    batch = self._take(decoded)
                    if batch is not None:
                        yield batch
                    self._check_lookup()
            finally:
                for task in (pinger, watchdog, self._lookup):
                    if task is not None:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                self._lookup = None

    def _decode(self, frame: str | bytes) -> Decoded:
        """The codec's reading of one frame. A codec that raises (a bug: bad input is
        rejected by reason) costs that frame only, counted as `decode_error`, never the
        connection or the daemon."""
        try:
            return self.codec.decode(frame, time.time())
        except Exception:  # noqa: BLE001 - one hostile frame must not stop the feed
            errors = self._rejected.get("decode_error", 0) + 1
            if errors in (1, 10, 100) or errors % 1000 == 0:
                log.exception("%s: could not decode a frame (%d so far)", self.venue, errors,
                              extra={"venue": self.venue, "reason": "decode_error"})
            return Decoded(rejected=["decode_error"])

    def _take(self, decoded: Decoded) -> list[Tick] | None:
        """The ticks to yield, or None when the frame changed nothing the daemon sees."""
        for reason in decoded.rejected:
            self.count(reason)
        self._events += decoded.events
        if decoded.ticks or decoded.events or decoded.rejected:
            return decoded.ticks
        return None

    async def _watchdog(self, ws: ClientConnection, timeout: float) -> None:
        """The read timeout: drops the connection once a wait for a message lasted
        `timeout` seconds with no ping from the venue either (`_session` then raises
        SilentConnection). One timer per timeout period, not one per message."""
        loop = asyncio.get_running_loop()
        while True:
            since = self._waiting_since
            if since is not None and isinstance(ws, HeartbeatConnection):
                since = max(since, ws.pinged_at)
            silent = 0.0 if since is None else loop.time() - since
            if silent >= timeout:
                break
            await asyncio.sleep(timeout - silent)
        ws.transport.abort()

    async def _ping(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(self.ping_interval_s)
                await ws.send(self.ping_text)
