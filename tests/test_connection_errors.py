"""How a live feed's connection fails, against real servers on 127.0.0.1: a status
that says "later" is retried, one that says "no" stops the feed, a handshake that
never answers times out and is retried; and an error's text never shows a secret of
the URL (the HTTP client puts the URL in its exceptions)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from riskd.feeds.connection import FeedError, WebsocketFeed
from riskd.feeds.polymarket.codec import Binding, PolymarketCodec
from riskd.feeds.settings import ConnectionSettings
from tests.support import until

SECRET = "s3cr3t-t0ken"
FAST = ConnectionSettings(backoff_initial_s=0.01, backoff_max_s=0.05, open_timeout_s=0.3)


class Refusing:
    """An HTTP server that answers every handshake with `status`."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.hits = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(status=self.status, text="no")

    async def __aenter__(self) -> Refusing:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


def feed(url: str) -> WebsocketFeed:
    codec = PolymarketCodec({"111": Binding("m", no=False)})
    return WebsocketFeed("polymarket", url, codec, FAST)


@contextlib.asynccontextmanager
async def running(f: WebsocketFeed) -> AsyncIterator[asyncio.Task[None]]:
    async def drain() -> None:
        async for _ in f.ticks():
            pass

    task = asyncio.create_task(drain())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, FeedError):
            await task


async def test_a_busy_venue_is_retried_and_the_secret_stays_hidden() -> None:
    async with Refusing(503) as venue:
        f = feed(f"ws://127.0.0.1:{venue.port}/ws?token={SECRET}")
        async with running(f) as task:
            await until(lambda: venue.hits >= 3, what="three attempts")
            assert not task.done()
        assert "503" in f.last_error and SECRET not in f.last_error, f.last_error


@pytest.mark.parametrize("status", [401, 404])
async def test_a_refusal_stops_the_feed_without_the_secret(status: int) -> None:
    async with Refusing(status) as venue:
        f = feed(f"ws://127.0.0.1:{venue.port}/ws?api_key={SECRET}")
        with pytest.raises(FeedError) as err:
            async for _ in f.ticks():
                pass
        assert venue.hits == 1
        assert str(status) in str(err.value) and SECRET not in str(err.value)


async def test_a_handshake_that_never_answers_times_out_and_is_retried() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # reads nothing, answers nothing

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        f = feed(f"ws://127.0.0.1:{port}/ws")
        async with running(f) as task:
            await until(lambda: len(accepted) >= 2, what="a second attempt")
            assert not task.done()
        assert f.last_error.startswith("TimeoutError"), f.last_error
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_url_that_is_not_a_url_stops_the_feed() -> None:
    f = feed("ws://")
    with pytest.raises(FeedError):
        async for _ in f.ticks():
            pass
