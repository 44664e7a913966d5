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
import itertools
import logging
import math
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import ClientWebSocketResponse, WSMsgType

from riskd.backoff import backoff
from riskd.feeds.base import Liveness, MarketEvent, Tick
from riskd.feeds.codec import Codec, Decoded, MarketCodec
from riskd.feeds.metadata import Fetch, listing_events, look_up, merge
from riskd.feeds.settings import ConnectionSettings
from riskd.markets import MarketTable
from riskd.secrets import mask_url, mask_urls
from riskd.ticks import TickBatch, TickColumns

if TYPE_CHECKING:
    from riskd.markets import Market
    from riskd.metrics import Metrics

log = logging.getLogger("riskd.feeds")

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MESSAGE_TOO_BIG = 1009  # websocket close code
# A feed of several connections: batches waiting for the daemon (beyond, the reads
# wait), and the delay between opening one connection and the next.
MERGE_QUEUE = 256
CONNECT_STAGGER_S = 0.05
# Connections ("sessions") are numbered uniquely in the process, across venues: a
# market's book belongs to the session it arrived on (freshness, riskd/engine.py).
SESSIONS = itertools.count()


# Frames already received when one is decoded are decoded with it, up to this many,
# and their ticks yielded as one batch: one pass through the generators and the
# daemon's checks per socket read, not per frame. A frame read when nothing else waits
# is yielded at once; after this many the loop gets a turn (the cycle runs on time:
# 256 of Polymarket's batched frames take under a millisecond). At saturation the
# per-batch work (~50 us: the generators, the engine's checks, a turn of the loop) is
# spread over that many: 64 cost 0.8 us a tick more (docs/performance.md, seventh
# round). aiohttp holds up to 512 KiB of messages before it stops reading.
COALESCE = 256
# From this many frames read together on, a BatchCodec decodes them at once (ticks as
# columns, checked by the engine in one compiled pass: a fixed cost of ~10 us per
# batch, which pays from about here); fewer are decoded one by one.
BATCH_FROM = 4


def waiting_on(ws: ClientWebSocketResponse) -> Sized:
    """The messages received on `ws` and not yet read, as a sized collection (true
    while the next `receive` will not wait). aiohttp keeps them in its reader's
    `_buffer`; without one, nothing is taken as waiting: frames are read one by one."""
    buffer = getattr(getattr(ws, "_reader", None), "_buffer", None)
    return buffer if isinstance(buffer, Sized) else ()


class ConnectionClosed(Exception):
    """The connection ended: closed by the venue (`code`), or lost."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Link:
    """One of a feed's connections: the codec of what it subscribes, and its state."""

    codec: Codec
    number: int  # 0, 1, ...
    label: str = ""  # for logs: " 2/40", or nothing for a feed's only connection
    connections: int = 0  # successful handshakes
    connected: bool = False
    session: int = -1  # the current connection's number (SESSIONS), -1 while down
    life_t: float = math.nan  # wall time of the last frame received on it
    pinged_wall: float = -math.inf  # wall time of the venue's last ping on it
    ws: ClientWebSocketResponse | None = None
    # The connection's received messages waiting to be read (`waiting_on`), and the
    # message that ended it, kept while the ones before it are decoded.
    waiting: Sized = ()
    end: aiohttp.WSMessage | None = None


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
    if isinstance(exc, ConnectionClosed):
        return "message_too_big" if exc.code == MESSAGE_TOO_BIG else "connection_closed"
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        # A status other than 101: refused (credentials, a wrong path) unless it is
        # one that says "later"; 101 with a bad upgrade: a broken handshake.
        if exc.status == 101:
            return "handshake"
        return f"http_{exc.status}" if exc.status in RETRY_STATUSES else None
    if isinstance(exc, aiohttp.InvalidURL):
        return None
    if isinstance(exc, TimeoutError):
        return "open_timeout"
    if isinstance(exc, OSError | aiohttp.ClientConnectionError):
        return "network"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "handshake"
    return None


def describe(exc: BaseException) -> str:
    """An error for logs and status: its type and text, any URL in it masked."""
    return mask_urls(f"{type(exc).__name__}: {exc}")


class WebsocketFeed:
    """One venue's live feed over one websocket connection, or several when the venue
    serves a limited number of subscriptions per connection (`codecs()`: one codec per
    connection, each reconnected on its own; their batches merged in arrival order).

    Venue feeds subclass it for the parts that differ: `headers()` (signed auth),
    `prepare()` (before connecting: `LookupFeed`'s metadata lookup), `codecs()`."""

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
        self._decode_errors = 0
        self._events: list[MarketEvent] = []
        self._prepared = False
        self._prepare_at = 0.0  # monotonic time of the next lookup attempt
        self._lookup: asyncio.Task[None] | None = None
        self._links: list[Link] = []  # the connections of the current subscription
        self._live = Liveness()  # heard since the last `take_liveness`
        self.heard_at = math.nan  # wall time of the last sign of life on any connection

    # --- the Feed protocol ------------------------------------------------------------

    def rejected(self) -> dict[str, int]:
        return dict(self._rejected)

    def take_events(self) -> list[MarketEvent]:
        events, self._events = self._events, []
        return events

    def now(self) -> float:
        """Live feeds run on wall time."""
        return time.time()

    def sessions(self) -> list[int]:
        """The numbers of the connections open now."""
        return [link.session for link in self._links if link.session >= 0]

    def take_liveness(self) -> Liveness:
        """What was heard since the last call, and the life of each open connection:
        its last frame or, where the venue's pings are its heartbeat, its last ping."""
        live, self._live = self._live, Liveness()
        for link in self._links:
            if link.session < 0:
                continue
            life = max(link.life_t, link.pinged_wall) if self.heartbeat else link.life_t
            live.sessions[link.session] = life
            if life > self.heard_at or math.isnan(self.heard_at):
                self.heard_at = life
        return live

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
        return backoff(
            s.backoff_initial_s, s.backoff_max_s, s.backoff_factor, s.backoff_jitter, self.rng
        )

    def _set_connected(self, link: Link | None = None, up: bool = False) -> None:
        """`connected` (and the venue's gauge): every connection of the feed is up."""
        if link is not None:
            link.connected = up
        self.connected = bool(self._links) and all(k.connected for k in self._links)
        if self.metrics is not None:
            self.metrics.feed_connected.labels(self.venue).set(1 if self.connected else 0)

    def codecs(self) -> list[Codec]:
        """One codec per connection to open (Polymarket splits its tokens over several
        connections); the feed's own codec alone by default."""
        return [self.codec]

    async def ticks(self) -> AsyncIterator[TickBatch]:
        self._set_connected()  # until the first handshake succeeds
        while True:
            if not self._prepared:
                await self._prepare()
            if self._events:
                yield []  # let the daemon take the listed markets before any price
            codecs = self.codecs()
            self._links = [
                Link(codec, k, f" {k + 1}/{len(codecs)}" if len(codecs) > 1 else "")
                for k, codec in enumerate(codecs)
            ]
            self._set_connected()
            try:
                one = len(self._links) == 1
                batches = self._link(self._links[0]) if one else self._merged()
                async with contextlib.aclosing(batches):
                    async for batch in batches:
                        yield batch
            except Resubscribe:
                # Subscribe to what the lookup found: every connection afresh.
                log.info("%s: metadata found, connecting again to subscribe", self.venue)
            finally:
                self._links = []
                self._set_connected()

    async def _merged(self) -> AsyncGenerator[TickBatch]:
        """Every connection's batches, in arrival order. The queue is bounded, so a
        daemon that falls behind slows the reads (websocket flow control) instead of
        queueing without limit. A fatal error or a resubscription in one connection
        ends them all."""
        queue: asyncio.Queue[TickBatch | Exception] = asyncio.Queue(MERGE_QUEUE)

        async def pump(link: Link) -> None:
            # Connections open one after another: hundreds of handshakes at once would
            # meet the venue's connection rate limit (HTTP 429).
            await asyncio.sleep(link.number * CONNECT_STAGGER_S)
            try:
                async with contextlib.aclosing(self._link(link)) as batches:
                    async for batch in batches:
                        await queue.put(batch)
            except Exception as exc:  # noqa: BLE001 - handed to the consumer
                await queue.put(exc)

        pumps = [
            asyncio.create_task(pump(link), name=f"{self.venue}-{link.number}")
            for link in self._links
        ]
        try:
            while True:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def _link(self, link: Link) -> AsyncGenerator[TickBatch]:
        """One connection, reconnected after errors with backoff until the feed ends."""
        delays = self._backoff()
        at_once = True
        while True:
            if not at_once:
                delay = next(delays)
                log.info("%s: reconnecting%s in %.2fs", self.venue, link.label, delay)
                await asyncio.sleep(delay)
            at_once = False
            healthy = False
            try:
                async with contextlib.aclosing(self._session(link)) as session:
                    async for batch in session:
                        if batch:
                            healthy = True
                        yield batch
            except Resubscribe:
                raise
            except Exception as exc:
                reason = classify(exc)
                self.last_error = describe(exc)
                if reason is None:
                    raise FeedError(
                        f"{self.venue} feed at {mask_url(self.url)}: {self.last_error}"
                    ) from exc
                if reason == "message_too_big":
                    self.count(reason)
                    yield []  # so the daemon counts it now
                log.warning(
                    "%s: connection%s lost (%s): %s",
                    self.venue,
                    link.label,
                    reason,
                    self.last_error,
                )
            finally:
                self._set_connected(link, False)
            if healthy:
                delays = self._backoff()  # a connection that worked: start over

    async def _prepare(self) -> None:
        try:
            await self.prepare()
        except Exception as exc:  # noqa: BLE001 - metadata is optional, prices are not
            self.count("metadata_unavailable")
            self._prepare_at = time.monotonic() + self.settings.metadata_retry_s
            log.warning(
                "%s: metadata lookup failed, using the markets file alone (retrying in %gs): %s",
                self.venue,
                self.settings.metadata_retry_s,
                exc,
            )
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

    async def _session(self, link: Link) -> AsyncGenerator[TickBatch]:
        s = self.settings
        # Proxies from the environment, as a browser or curl would take them; no
        # timeout of the session's own: the handshake has `open_timeout_s`, the
        # connection's life `read_timeout_s` and the keepalive.
        async with aiohttp.ClientSession(
            trust_env=True, timeout=aiohttp.ClientTimeout(total=None)
        ) as http:
            async with asyncio.timeout(s.open_timeout_s):
                ws = await self._connect(http)
            async with ws:
                async for batch in self._frames(link, ws):
                    yield batch

    async def _frames(self, link: Link, ws: ClientWebSocketResponse) -> AsyncGenerator[TickBatch]:
        """One open connection: subscribe, then read, decode and yield until it ends."""
        await self._opened(link, ws)
        pinger = None
        if self.ping_text and self.ping_interval_s > 0:
            pinger = asyncio.create_task(self._ping(ws), name=f"{self.venue}-ping")
        try:
            while True:
                frames = await self._read(ws, link)
                received = link.life_t = time.time()
                decoded = self._decode_frames(frames, link.codec, received)
                for reply in decoded.replies:
                    await _send(ws, reply)
                batch = self._take(decoded, link.session, received)
                if batch is not None:
                    yield batch
                if len(frames) >= COALESCE:
                    await asyncio.sleep(0)  # a saturated socket: the cycle runs on time
                self._check_lookup()
        finally:
            await self._closed(link, pinger)

    def _connect(self, http: aiohttp.ClientSession) -> Any:
        """The opening handshake. Keepalive: our pings every `keepalive_s`, the
        connection dropped when a pong is late. The venue's pings are answered by
        `_read`, which also tells them apart from its messages (`heartbeat`)."""
        s = self.settings
        return http.ws_connect(
            self.url,
            headers=self.headers(),
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=1.0),
            heartbeat=s.keepalive_s,
            autoping=False,
            max_msg_size=s.max_message_bytes,
            compress=15,  # offered; the venue decides
            decode_text=False,  # bytes: the codecs' JSON parser checks UTF-8 itself
        )

    async def _read(self, ws: ClientWebSocketResponse, link: Link) -> list[bytes]:
        """The next message and those received with it (at most COALESCE)."""
        frames = [await self._first(ws, link)]
        waiting = link.waiting
        receive, text, binary = ws.receive, WSMsgType.TEXT, WSMsgType.BINARY
        while waiting and len(frames) < COALESCE:
            msg = await receive()
            if msg.type is text or msg.type is binary:
                frames.append(msg.data)
            elif not await self._control(ws, link, msg):
                link.end = msg  # after the messages before it
                break
        return frames

    async def _first(self, ws: ClientWebSocketResponse, link: Link) -> bytes:
        """The next message. The read timeout: no message for `read_timeout_s` (nor a
        ping, where the venue's pings are its heartbeat) drops the connection; a timer
        only when the read must wait."""
        limit = self.settings.read_timeout_s
        loop = asyncio.get_running_loop()
        since = loop.time()
        while True:
            if link.end is not None:
                raise _ended(ws, link.end)
            timeout = None if link.waiting else since + limit - loop.time()
            if timeout is not None and timeout <= 0:
                raise SilentConnection(f"nothing received for {limit:g}s")
            try:
                msg = await ws.receive(timeout)
            except TimeoutError:
                raise SilentConnection(f"nothing received for {limit:g}s") from None
            if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                return msg.data
            if not await self._control(ws, link, msg):
                link.end = msg
            elif msg.type is WSMsgType.PING and self.heartbeat:
                since = loop.time()

    async def _control(
        self, ws: ClientWebSocketResponse, link: Link, msg: aiohttp.WSMessage
    ) -> bool:
        """A ping answered (and noted, where it is the venue's heartbeat), a pong
        ignored: True; anything else ends the connection: False."""
        if msg.type is WSMsgType.PING:
            await ws.pong(msg.data)
            if self.heartbeat:
                link.pinged_wall = time.time()
            return True
        return msg.type is WSMsgType.PONG

    async def _opened(self, link: Link, ws: ClientWebSocketResponse) -> None:
        """A connection is up: count it and subscribe."""
        # Life is what the venue sends: a handshake alone confirms nothing.
        link.session, link.life_t, link.ws = next(SESSIONS), math.nan, ws
        link.waiting, link.end = waiting_on(ws), None
        self._set_connected(link, True)
        self.connections += 1
        link.connections += 1
        if link.connections > 1 and self.metrics is not None:
            self.metrics.reconnects.labels(self.venue).inc()
        log.info("%s: connected%s to %s", self.venue, link.label, mask_url(self.url))
        for subscription in link.codec.on_connect():
            await _send(ws, subscription)

    async def _closed(self, link: Link, *tasks: asyncio.Task[None] | None) -> None:
        """A connection ended: its session, and the tasks that served it."""
        self._live.ended.append(link.session)
        link.session, link.ws, link.waiting, link.end = -1, None, (), None
        for task in (*tasks, self._lookup):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._lookup = None

    def _decode(
        self, frame: str | bytes, codec: Codec | None = None, received: float | None = None
    ) -> Decoded:
        """The codec's reading of one frame. A codec that raises (a bug: bad input is
        rejected by reason) costs that frame only, counted as `decode_error`, never the
        connection or the daemon."""
        try:
            return (codec or self.codec).decode(
                frame, time.time() if received is None else received
            )
        except Exception as exc:  # noqa: BLE001 - one hostile frame must not stop the feed
            self._failed(exc)
            return Decoded(rejected=["decode_error"])

    def _decode_frames(self, frames: list[bytes], codec: Codec, received: float) -> Decoded:
        """Frames received together, in order: by the codec at once when it can (the
        Polymarket codec: ticks as columns), else one by one."""
        decode_batch = getattr(codec, "decode_batch", None)  # a BatchCodec
        if decode_batch is not None and len(frames) >= BATCH_FROM:
            decoded: Decoded = decode_batch(frames, received, self._failed)
            return decoded
        if len(frames) == 1:
            return self._decode(frames[0], codec, received)
        out = Decoded()
        for frame in frames:
            out.extend(self._decode(frame, codec, received))
        return out

    def _failed(self, exc: Exception) -> None:
        """A codec raised on a frame: logged at the 1st, 10th, 100th, then every
        1,000th (the frame is counted as `decode_error` by the caller)."""
        self._decode_errors += 1
        errors = self._decode_errors
        if errors in (1, 10, 100) or errors % 1000 == 0:
            log.error(
                "%s: could not decode a frame (%d so far)",
                self.venue,
                errors,
                exc_info=exc,
                extra={"venue": self.venue, "reason": "decode_error"},
            )

    def _take(
        self, decoded: Decoded, session: int = -1, received: float = math.nan
    ) -> list[Tick] | TickColumns | None:
        """The ticks to yield, or None when the frame changed nothing the daemon sees
        at once; what it says of freshness waits for `take_liveness`."""
        for reason in decoded.rejected:
            self.count(reason)
        self._events += decoded.events
        live = self._live
        if decoded.heard:
            live.heard.append((session, received, decoded.heard))
        if decoded.broken:
            live.books.update(dict.fromkeys(decoded.broken, (-1, received)))
        if decoded.books:
            live.books.update(dict.fromkeys(decoded.books, (session, received)))
        if decoded.depths:
            live.depths.update(decoded.depths)
        if decoded.ticks or decoded.events or decoded.rejected:
            return decoded.ticks
        return None

    async def _ping(self, ws: ClientWebSocketResponse) -> None:
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            while not ws.closed:
                await asyncio.sleep(self.ping_interval_s)
                await ws.send_str(self.ping_text)


async def _send(ws: ClientWebSocketResponse, message: str | bytes) -> None:
    if isinstance(message, str):
        await ws.send_str(message)
    else:
        await ws.send_bytes(message)


def _ended(ws: ClientWebSocketResponse, msg: aiohttp.WSMessage) -> ConnectionClosed:
    """Why a connection ended, from the message that said so: a close by the venue
    (its code), our own close for an error (a message too big: 1009), or a loss."""
    if msg.type is WSMsgType.ERROR:
        # aiohttp's WebSocketError carries the close code it closed with.
        return ConnectionClosed(f"connection failed: {msg.data}", getattr(msg.data, "code", None))
    if msg.type is WSMsgType.CLOSE:
        return ConnectionClosed(
            f"closed by the venue: code {msg.data} {msg.extra or ''}".strip(), msg.data
        )
    return ConnectionClosed(f"connection closed (code {ws.close_code})", ws.close_code)


class LookupFeed(WebsocketFeed):
    """A venue feed of a list of markets, looked up on the venue's REST API before
    connecting (`lookup()`, when `metadata` is on): the markets found join the list
    (the markets file wins, riskd/feeds/metadata.py) and are subscribed."""

    codec: MarketCodec

    def __init__(
        self,
        venue: str,
        url: str,
        codec: MarketCodec,
        settings: ConnectionSettings,
        markets: Mapping[str, Market],
        *,
        metadata: bool,
        metrics: Metrics | None,
        **connection: Any,
    ) -> None:
        super().__init__(venue, url, codec, settings, metrics, **connection)
        # Column by column, shared with the engine where it is the daemon's own table.
        self.markets: Mapping[str, Market] = MarketTable.of(markets)
        self.metadata = metadata

    def lookup(self) -> Fetch | None:
        """The venue's lookup of the markets to follow; None with nothing to look up."""
        raise NotImplementedError

    async def prepare(self) -> None:
        fetch = self.lookup() if self.metadata else None
        if fetch is None:
            return
        lookup = await look_up(fetch, self.settings.http_timeout_s)
        for reason, n in lookup.rejected.items():
            self.count(reason, n)
        merged = merge(self.markets, lookup.markets)
        self._events += listing_events(self.markets, merged, self.now())
        self.markets = merged
        self.codec.bind(merged.values())
        if not merged:
            log.warning("%s: no market found to follow", self.venue)
