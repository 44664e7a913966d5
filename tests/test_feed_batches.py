"""Frames that arrive together leave the feed together: one batch per socket read (at
most COALESCE frames), every tick kept, in order."""

from __future__ import annotations

import asyncio
import contextlib
import json

from websockets.asyncio.server import ServerConnection

from riskd.feeds import connection
from riskd.feeds.base import Tick
from riskd.feeds.connection import WebsocketFeed
from riskd.feeds.polymarket.codec import Binding, PolymarketCodec
from riskd.feeds.settings import ConnectionSettings
from tests.support import PolymarketServer, until

FRAMES = 500
T0_MS = 1_770_921_600_000


def _frame(k: int) -> str:
    """The k-th top of YES: bid and ask one cent apart, moving every frame."""
    bid = f"0.{40 + k % 20:02d}"
    ask = f"0.{41 + k % 20:02d}"
    change = {"asset_id": "111", "price": bid, "size": "10", "side": "BUY"}
    change |= {"best_bid": bid, "best_ask": ask}
    doc = {"event_type": "price_change", "timestamp": str(T0_MS + k)}
    return json.dumps([{**doc, "price_changes": [change]}])


async def _burst(conn: ServerConnection, assets: list[str]) -> None:
    for k in range(FRAMES):
        await conn.send(_frame(k))


async def test_frames_read_together_are_one_batch_and_no_tick_is_lost() -> None:
    venue = PolymarketServer(dump=False, stream=_burst)
    await venue.start()
    codec = PolymarketCodec({"111": Binding("m", no=False)})
    feed = WebsocketFeed("polymarket", venue.url, codec, ConnectionSettings())
    batches: list[list[Tick]] = []
    try:
        async with contextlib.aclosing(feed.ticks()) as stream:
            async for batch in stream:
                batches.append(batch)
                if sum(map(len, batches)) >= FRAMES:
                    break
    finally:
        await venue.close()
    ticks = [t for batch in batches for t in batch]
    assert [t.ts for t in ticks] == [(T0_MS + k) / 1000 for k in range(FRAMES)]
    assert len(batches) < FRAMES, len(batches)  # some reads held several frames
    assert max(map(len, batches)) <= connection.COALESCE


async def test_a_close_right_behind_frames_loses_none_of_them() -> None:
    """The venue sends a burst and closes at once (the close frame in the same socket
    reads as the last frames): every tick is yielded, then the feed reconnects,
    saying how the connection ended."""
    closes: list[int] = []

    async def burst_then_close(conn: ServerConnection, assets: list[str]) -> None:
        if closes:
            return  # the reconnection: nothing more
        closes.append(1001)
        for k in range(FRAMES):
            await conn.send(_frame(k))
        await conn.close(1001, "going away")

    venue = PolymarketServer(dump=False, stream=burst_then_close)
    await venue.start()
    codec = PolymarketCodec({"111": Binding("m", no=False)})
    settings = ConnectionSettings(backoff_initial_s=0.01, backoff_max_s=0.05)
    feed = WebsocketFeed("polymarket", venue.url, codec, settings)
    ticks: list[Tick] = []

    async def take() -> None:
        async for batch in feed.ticks():
            ticks.extend(batch)

    task = asyncio.create_task(take())
    try:
        await until(lambda: feed.connections >= 2, what="the reconnection")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await venue.close()
    assert [t.ts for t in ticks] == [(T0_MS + k) / 1000 for k in range(FRAMES)]
    assert "1001" in feed.last_error, feed.last_error
