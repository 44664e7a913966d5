"""The daemon's HTTP API: health, readiness, current parameters, Prometheus metrics,
explain, the admin API (riskd/admin.py) and the stream (riskd/publish/websocket.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from riskd import admin
from riskd.explain import explain

if TYPE_CHECKING:
    from riskd.app import Daemon

DAEMON: web.AppKey[Daemon] = web.AppKey("daemon")


def make_app(daemon: Daemon) -> web.Application:
    app = web.Application()
    app[DAEMON] = daemon
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/params", params_all)
    app.router.add_get("/v1/params/{market}", params_one)
    app.router.add_get("/v1/explain/{market}", explain_one)
    admin.add_routes(app, DAEMON)
    if daemon.stream is not None:
        app.router.add_get("/v1/stream", daemon.stream.handle)
        app.on_shutdown.append(_close_stream)  # open streams would hold the shutdown up
    return app


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
    return _json({"generated_at": daemon.now_iso(), "params": daemon.engine.current.sets()})


async def params_one(request: web.Request) -> web.Response:
    market = request.match_info["market"]
    entry = request.app[DAEMON].engine.current.get(market)
    if entry is None:
        return _json({"error": f"unknown market {market!r}"}, 404)
    return _json(entry)


async def explain_one(request: web.Request) -> web.Response:
    market = request.match_info["market"]
    daemon = request.app[DAEMON]
    doc = explain(daemon.engine, market, daemon.now())
    if doc is None:
        return _json({"error": f"unknown market {market!r}"}, 404)
    return _json(doc)


