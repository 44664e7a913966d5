"""The daemon's HTTP API: health, readiness, current parameters, Prometheus metrics,
explain, the admin API (riskd/admin.py) and the stream (riskd/publish/websocket.py)."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from riskd import admin, wire

if TYPE_CHECKING:
    from riskd.api import DaemonApi
    from riskd.config import ServerSettings

log = logging.getLogger("riskd.api")

DAEMON: web.AppKey[DaemonApi] = web.AppKey("daemon")

Refused = Callable[[str], None]  # counts a refusal by reason (riskd_api_refused_total)


def make_app(daemon: DaemonApi) -> web.Application:
    limits = daemon.settings.server
    app = web.Application(
        client_max_size=limits.max_body_bytes,
        middlewares=[_limit_middleware(limits.max_body_bytes, daemon.metrics.api_refusal)],
    )
    app[DAEMON] = daemon
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/params", params_all)
    app.router.add_get("/v1/params/{market}", params_one)
    app.router.add_get("/v1/explain/{market}", explain_one)
    app.router.add_post("/v1/exchange/state", exchange_state_in)
    app.router.add_get("/v1/exchange/state", exchange_state_out)
    admin.add_routes(app, DAEMON)
    if daemon.stream is not None:
        app.router.add_get("/v1/stream", daemon.stream.handle)
        app.on_shutdown.append(_close_stream)  # open streams would hold the shutdown up
    return app


async def serve(daemon: DaemonApi) -> web.AppRunner:
    """The API on [server] host:port with the limits of [server]; raises OSError when
    it cannot listen."""
    limits = daemon.settings.server
    refused = daemon.metrics.api_refusal
    runner = web.AppRunner(
        make_app(daemon),
        access_log=None,
        handle_signals=False,
        # RequestHandler arguments: aiohttp closes idle keep-alive connections itself
        # and answers an oversized or malformed request head with 400.
        keepalive_timeout=limits.keepalive_timeout_s,
        max_line_size=limits.max_line_bytes,
        max_field_size=limits.max_field_bytes,
        max_headers=limits.max_headers,
        logger=_ProtocolLog(refused),
    )
    await runner.setup()
    guard = ConnectionGuard(limits, refused, daemon.metrics.api_connections.set)
    site = GuardedSite(runner, limits.host, limits.port, guard)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return runner


class _ProtocolLog(logging.LoggerAdapter):
    """aiohttp's server logger. A malformed or oversized request head is the client's
    error: counted and logged at debug, without a traceback. Anything else (a bug in a
    handler) stays an ERROR with its traceback."""

    def __init__(self, refused: Refused) -> None:
        super().__init__(logging.getLogger("riskd.api"), {})
        self.refused = refused

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if exc is True:
            exc = sys.exc_info()[1]
        if isinstance(exc, HttpProcessingError):
            reason = _refusal_reason(exc)
            self.refused(reason)
            self.logger.debug(
                "refused a request head (%s): %s", reason, exc.message, extra={"reason": reason}
            )
            return
        super().log(level, msg, *args, **kwargs)


def _refusal_reason(exc: HttpProcessingError) -> str:
    if isinstance(exc, LineTooLong) or "too many headers" in exc.message.lower():
        return "header_too_large"
    if isinstance(exc, BadHttpMethod):
        return "bad_request"  # e.g. TLS or another protocol sent to the HTTP port
    return "bad_request"


def _limit_middleware(max_body: int, refused: Refused) -> Any:
    @web.middleware
    async def limit(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        conn = _guarded(request)
        if conn is not None:
            conn.request_started()
        try:
            if request.content_length is not None and request.content_length > max_body:
                raise web.HTTPRequestEntityTooLarge(
                    max_size=max_body, actual_size=request.content_length
                )
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            refused("body_too_large")
            raise
        finally:
            if conn is not None:
                conn.request_ended()

    return limit


def _guarded(request: web.Request) -> GuardedConnection | None:
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    return protocol if isinstance(protocol, GuardedConnection) else None


class ConnectionGuard:
    """What aiohttp does not limit: the number of connections, and how long a client
    may take to send a request head. Shared by the connections of one server."""

    def __init__(
        self, limits: ServerSettings, refused: Refused, gauge: Callable[[int], None]
    ) -> None:
        self.max_connections = limits.max_connections
        self.header_timeout_s = limits.header_timeout_s
        self.refused = refused
        self.gauge = gauge
        self.open = 0

    def protocol_factory(
        self, inner: Callable[[], asyncio.Protocol]
    ) -> Callable[[], asyncio.Protocol]:
        return lambda: GuardedConnection(self, inner)


_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 21\r\n\r\ntoo many connections\n"
)
_SLOW = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 21\r\n\r\nrequest head too slow\n"
)


class GuardedConnection(asyncio.Protocol):
    """Sits between the event loop and aiohttp's protocol for one connection: refuses
    it beyond the cap, and closes it when a request head takes longer than
    header_timeout_s (counted from the connection, or from the first byte after the
    previous request; the idle time between requests is aiohttp's keep-alive)."""

    def __init__(self, guard: ConnectionGuard, inner: Callable[[], asyncio.Protocol]) -> None:
        self.guard = guard
        self._make_inner = inner
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self._in_request = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; same interface.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        guard = self.guard
        if guard.open >= guard.max_connections:
            guard.refused("max_connections")
            log.debug(
                "refused a connection: %d open", guard.open, extra={"reason": "max_connections"}
            )
            transport.write(_BUSY)
            transport.close()
            return
        guard.open += 1
        guard.gauge(guard.open)
        self.inner = self._make_inner()
        self.inner.connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.inner is None:
            return
        if not self._in_request and self._timer is None:
            self._arm()  # the first byte of the next request head
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.inner is None:
            return
        self.guard.open -= 1
        self.guard.gauge(self.guard.open)
        inner, self.inner = self.inner, None
        inner.connection_lost(exc)

    # --- the request head timer ----------------------------------------------------

    def request_started(self) -> None:
        self._in_request = True
        self._disarm()

    def request_ended(self) -> None:
        self._in_request = False

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.guard.header_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _too_slow(self) -> None:
        self._timer = None
        if self._in_request or self.transport is None or self.transport.is_closing():
            return
        self.guard.refused("header_timeout")
        log.debug(
            "closed a connection: no request head within %.1f s",
            self.guard.header_timeout_s,
            extra={"reason": "header_timeout"},
        )
        self.transport.write(_SLOW)
        self.transport.close()


class GuardedSite(web.BaseSite):
    """A TCP site whose connections go through `ConnectionGuard` (aiohttp's TCPSite
    hands the loop its own protocol factory, with no hook for a cap)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, guard: ConnectionGuard) -> None:
        super().__init__(runner)
        self._host, self._port, self.guard = host, port, guard

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.guard.protocol_factory(server),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=True,
        )


async def _close_stream(app: web.Application) -> None:
    stream = app[DAEMON].stream
    if stream is not None:
        await stream.close()


def _json(data: object, status: int = 200) -> web.Response:
    import orjson

    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    alive, why = daemon.alive()
    return _json({"status": "ok" if alive else "stuck", "detail": why}, 200 if alive else 503)


async def readyz(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    ready, reasons = daemon.ready()
    body = {"ready": ready, "reasons": reasons, "state": daemon.state_status}
    return _json(body, 200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[DAEMON].metrics.registry)
    resp = web.Response(body=body)
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    resp.charset = "utf-8"
    return resp


async def params_all(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    body = wire.current(daemon.now_iso(), daemon.sets())
    return web.Response(body=body, content_type="application/json")


async def params_one(request: web.Request) -> web.Response:
    market = request.match_info["market"]
    entry = request.app[DAEMON].set_of(market)
    if entry is None:
        return _json({"error": f"unknown market {market!r}"}, 404)
    return _json(entry)


async def explain_one(request: web.Request) -> web.Response:
    market = request.match_info["market"]
    daemon = request.app[DAEMON]
    doc = daemon.explain(market)
    if doc is None:
        return _json({"error": f"unknown market {market!r}"}, 404)
    return _json(doc)


async def exchange_state_in(request: web.Request) -> web.Response:
    """The exchange reports its state (riskd/exchange.py); a body over [server]
    max_body_bytes is refused (413) before it is read whole."""
    raw = await request.read()
    status, answer = request.app[DAEMON].exchange_state(request.headers, raw)
    return _json(answer, status)


async def exchange_state_out(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    cfg = daemon.settings.exchange
    return _json(
        daemon.exchange.view(
            daemon.now(), bool(cfg.secret.get_secret_value().strip()), cfg.max_age_s
        )
    )
