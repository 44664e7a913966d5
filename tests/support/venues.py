"""Venue servers: real `websockets` servers on 127.0.0.1, one per protocol:
Polymarket's CLOB market channel, Kalshi's websocket v2 (signed handshake,
subscribe commands, snapshots then deltas) and a generic exchange stream; and an
aiohttp server for the venues' REST market lists. By default they replay the
recorded messages of tests/fixtures/ws with the event times moved to now (the
daemon runs on wall time)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

WS = Path(__file__).resolve().parents[1] / "fixtures" / "ws"


def fixture_docs(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (WS / name).read_text(encoding="utf-8").splitlines()]


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class VenueServer:
    """What every websocket venue shares: connections, what they received, control.

    A generic exchange stream as it is: it answers the frames in `answers` (its
    heartbeat, e.g. "ping" -> "pong") and nothing else; tests `send` the rest."""

    path: str
    answers: dict[str, str] = field(default_factory=dict)
    serve_options: dict[str, Any] = field(default_factory=dict)  # for websockets' serve
    server: Server | None = None
    url: str = ""
    connections: list[ServerConnection] = field(default_factory=list)  # every one made
    received: list[str] = field(default_factory=list)  # every text frame, in order
    handshakes: int = 0
    # While False, the server answers nothing but the protocol (pongs): a silent venue.
    talking: bool = True
    mute: bool = False  # answers nothing at all, not even pongs
    last_sign: float = field(default_factory=time.monotonic)  # of an answer, monotonic
    last_ping: float = field(default_factory=time.monotonic)  # of a `heartbeat` round
    refusing: int | None = None  # answer handshakes with this status (down for maintenance)
    refused: int = 0

    async def start(self) -> None:
        self.server = await serve(
            self._handler,
            "127.0.0.1",
            0,
            process_request=self._process_request,
            **self.serve_options,
        )
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}{self.path}"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.refusing is not None:
            self.refused += 1
            return connection.respond(self.refusing, "maintenance\n")
        if request.path != self.path:
            return connection.respond(404, "no such path\n")
        problem = self.check_handshake(request.headers)
        if problem:
            return connection.respond(401, problem + "\n")
        self.handshakes += 1
        return None

    def check_handshake(self, headers: Headers) -> str:
        return ""

    async def _handler(self, connection: ServerConnection) -> None:
        self.connections.append(connection)
        try:
            with contextlib.suppress(ConnectionClosed):
                async for frame in connection:
                    assert isinstance(frame, str)
                    self.received.append(frame)
                    if self.mute:
                        continue
                    if frame in self.answers:
                        await connection.send(self.answers[frame])
                        self.last_sign = time.monotonic()
                        continue
                    await self.on_frame(connection, frame)
        finally:
            await self.on_close(connection)

    async def on_frame(self, connection: ServerConnection, frame: str) -> None:
        """Anything but the heartbeat: a generic stream takes it and answers nothing."""

    async def on_close(self, connection: ServerConnection) -> None:
        pass

    def open_connections(self) -> list[ServerConnection]:
        return [c for c in self.connections if c.state is State.OPEN]

    async def send(self, frame: str | dict[str, Any] | list[Any]) -> None:
        """To every open connection."""
        text = frame if isinstance(frame, str) else json.dumps(frame)
        for conn in list(self.connections):
            with contextlib.suppress(ConnectionClosed):
                await conn.send(text)

    async def heartbeat(self, every: float) -> None:
        """Ping every open connection every `every` seconds and send nothing else, as
        Kalshi does (every 10 s) when the subscribed markets are quiet."""
        while True:
            for conn in list(self.connections):
                with contextlib.suppress(ConnectionClosed):
                    await conn.ping(b"heartbeat")  # the pong is not awaited
            self.last_ping = time.monotonic()
            await asyncio.sleep(every)  # the heartbeat's period, as the venue's

    @contextlib.asynccontextmanager
    async def heartbeating(self, every: float = 0.2) -> AsyncIterator[None]:
        """`heartbeat` until the block ends."""
        task = asyncio.create_task(self.heartbeat(every))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def drop(self) -> None:
        """Cut every connection mid-stream, as a network failure would (no close frame)."""
        for conn in self.connections:
            conn.transport.abort()
        self.connections.clear()

    def frames(self, where: Callable[[str], bool] = lambda f: True) -> list[str]:
        return [f for f in self.received if where(f)]


Stream = Callable[[ServerConnection, list[str]], Awaitable[None]]


class PolymarketServer(VenueServer):
    """The CLOB market channel: a subscription by asset ids, then the book of each
    subscribed asset (`books`, the recorded ones by default), then whatever the test
    sends; PING -> PONG.

    `book_for`, if given, makes each book at subscription time instead of `books`;
    `dump=False` sends no books. `stream`, if given, runs per connection after its
    first subscription until the connection ends (a benchmark's own writer)."""

    def __init__(
        self,
        books: dict[str, dict[str, Any]] | None = None,
        *,
        book_for: Callable[[str], dict[str, Any] | None] | None = None,
        dump: bool = True,
        stream: Stream | None = None,
        **options: Any,
    ) -> None:
        super().__init__(path="/ws/market", answers={"PING": "PONG"}, **options)
        self.books = (
            books
            if books is not None
            else {d["asset_id"]: d for d in fixture_docs("polymarket_book.jsonl")}
        )
        self.book_for = book_for
        self.dump = dump
        self.stream = stream
        self.subscribed: dict[ServerConnection, set[str]] = {}  # each connection's assets
        self._streams: dict[ServerConnection, asyncio.Task[None]] = {}

    async def publish(self, doc: dict[str, Any]) -> None:
        """An event to the connections subscribed to its asset, as the venue does (`send`
        is to every connection)."""
        for conn, assets in list(self.subscribed.items()):
            if doc["asset_id"] in assets:
                with contextlib.suppress(ConnectionClosed):
                    await conn.send(json.dumps(doc))

    def connection_of(self, asset: str) -> ServerConnection:
        (conn,) = [
            c for c, assets in self.subscribed.items() if asset in assets and c in self.connections
        ]
        return conn

    def subscriptions(self) -> list[dict[str, Any]]:
        return [json.loads(f) for f in self.received if f.startswith("{")]

    def pings(self) -> int:
        return sum(1 for f in self.received if f == "PING")

    def _books(self, assets: list[str]) -> list[dict[str, Any]]:
        find = self.book_for or self.books.get
        made = (find(a) for a in assets)
        return [{**b, "timestamp": str(now_ms())} for b in made if b is not None]

    async def on_frame(self, connection: ServerConnection, frame: str) -> None:
        try:
            sub = json.loads(frame)
        except ValueError:
            return
        assets = list(sub.get("assets_ids", []))
        self.subscribed[connection] = set(assets)
        if self.stream is not None and connection not in self._streams:
            self._streams[connection] = asyncio.create_task(self.stream(connection, assets))
        if self.talking and self.dump:
            # The initial dump is one JSON array.
            await connection.send(json.dumps(self._books(assets)))
        self.last_sign = time.monotonic()

    async def on_close(self, connection: ServerConnection) -> None:
        task = self._streams.pop(connection, None)
        if task is not None:
            task.cancel()


def private_key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class KalshiServer(VenueServer):
    """Websocket v2: the handshake must carry a valid RSA-PSS signature of the key
    `key_id`; `subscribe` commands are confirmed with a new sid, and an
    `orderbook_delta` subscription starts with a snapshot per ticker (seq 1)."""

    def __init__(
        self, key_id: str, public_key: rsa.RSAPublicKey, books: dict[str, dict[str, Any]]
    ) -> None:
        super().__init__(path="/trade-api/ws/v2")
        self.key_id = key_id
        self.public_key = public_key
        self.books = books  # ticker -> snapshot msg (yes/no levels)
        self.next_sid = 1
        self.seq: dict[int, int] = {}
        self.book_sids: list[int] = []
        self.rejected_handshakes = 0

    def check_handshake(self, headers: Headers) -> str:
        ts = headers.get("KALSHI-ACCESS-TIMESTAMP", "")
        sig = headers.get("KALSHI-ACCESS-SIGNATURE", "")
        if headers.get("KALSHI-ACCESS-KEY") != self.key_id or not ts.isdigit():
            self.rejected_handshakes += 1
            return "unknown key"
        if abs(int(ts) - now_ms()) > 10_000:
            self.rejected_handshakes += 1
            return "stale timestamp"
        try:
            self.public_key.verify(
                base64.b64decode(sig),
                f"{ts}GET{self.path}".encode(),
                padding.PSS(
                    mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH
                ),
                hashes.SHA256(),
            )
        except (InvalidSignature, ValueError):
            self.rejected_handshakes += 1
            return "bad signature"
        return ""

    def commands(self, cmd: str | None = None) -> list[dict[str, Any]]:
        out = [json.loads(f) for f in self.received]
        return [c for c in out if cmd is None or c.get("cmd") == cmd]

    async def on_frame(self, connection: ServerConnection, frame: str) -> None:
        doc = json.loads(frame)
        if doc.get("cmd") == "unsubscribe":
            await connection.send(
                json.dumps(
                    {"id": doc["id"], "type": "unsubscribed", "sid": doc["params"]["sids"][0]}
                )
            )
            return
        (channel,) = doc["params"]["channels"]
        sid = self.next_sid
        self.next_sid += 1
        await connection.send(
            json.dumps(
                {"id": doc["id"], "type": "subscribed", "msg": {"channel": channel, "sid": sid}}
            )
        )
        if channel == "orderbook_delta":
            self.book_sids.append(sid)
            self.seq[sid] = 0
            for ticker in doc["params"]["market_tickers"]:
                if ticker in self.books:
                    await connection.send(
                        self.sequenced(
                            sid,
                            "orderbook_snapshot",
                            {"market_ticker": ticker, **self.books[ticker]},
                        )
                    )

    def sequenced(self, sid: int, kind: str, msg: dict[str, Any], skip: int = 0) -> str:
        self.seq[sid] += 1 + skip
        return json.dumps({"type": kind, "sid": sid, "seq": self.seq[sid], "msg": msg})


@dataclass
class RestServer:
    """Gamma-shaped (`/markets`, a JSON list, limit/offset) and Kalshi-shaped
    (`/markets`, {"markets": [...], "cursor": ...}) market lists, paginated."""

    gamma: list[dict[str, Any]] = field(default_factory=list)
    kalshi: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)
    failures: int = 0  # answer this many requests with 503 first
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/gamma/markets", self._gamma)
        app.router.add_get("/kalshi/trade-api/v2/markets", self._kalshi)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _gamma(self, request: web.Request) -> web.Response:
        query = list(request.query.items())
        self.requests.append(("gamma", query))
        if self.failures > 0:
            self.failures -= 1
            return web.json_response({"error": "try later"}, status=503)
        wanted = {v for k, v in query if k in ("clob_token_ids", "condition_ids", "slug")}

        def matches(entry: dict[str, Any]) -> bool:
            try:
                tokens = set(json.loads(entry.get("clobTokenIds", "[]")))
            except ValueError:
                tokens = set()
            return bool(wanted & (tokens | {entry.get("conditionId"), entry.get("slug")}))

        hits = [e for e in self.gamma if matches(e)]
        limit, offset = int(request.query["limit"]), int(request.query["offset"])
        return web.json_response(hits[offset : offset + limit])

    async def _kalshi(self, request: web.Request) -> web.Response:
        query = list(request.query.items())
        self.requests.append(("kalshi", query))
        tickers = set(request.query["tickers"].split(","))
        hits = [e for e in self.kalshi if e.get("ticker") in tickers or "ticker" not in e]
        limit = int(request.query["limit"])
        start = int(request.query.get("cursor") or 0)
        page = hits[start : start + limit]
        more = start + limit < len(hits)
        return web.json_response({"markets": page, "cursor": str(start + limit) if more else ""})
