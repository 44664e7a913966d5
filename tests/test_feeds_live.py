"""Live feeds end to end: the daemon in-process against real `websockets` servers on
127.0.0.1 that speak each venue's protocol (tests/support/venues.py), observed through its
API (/v1/params, /readyz, /metrics). Times are short: stale_after_s is one second."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from riskd.config import Settings
from riskd.feeds.connection import FeedError
from riskd.feeds.kalshi.config import KalshiSettings
from riskd.feeds.kalshi.feed import KalshiFeed
from riskd.feeds.kalshi.metadata import fetch_kalshi
from riskd.feeds.metadata import merge
from riskd.feeds.polymarket.config import PolymarketSettings
from riskd.feeds.polymarket.feed import PolymarketFeed
from riskd.feeds.polymarket.metadata import fetch_polymarket
from riskd.feeds.websocket.config import WebsocketFeedSettings
from riskd.feeds.websocket.feed import GenericWebsocketFeed
from riskd.markets import Market
from tests.support import (
    InProcessDaemon,
    KalshiServer,
    PolymarketServer,
    RestServer,
    VenueServer,
    base_config,
    fixture_docs,
    http_get,
    now_ms,
    sample,
    until,
    wait_until,
)

PM_MARKET = "0x14002070e74acaf96f70c8dfb881586b156c814fac0c1ac417b84c6c76687d00"
PM_YES = "1627500284739545390204314775735988068784669364445492030335161034375823784781"
PM_NO = "7849332184617640056758089974170387917558941201674921732369975950049491747956"
KALSHI_TICKER = "KXBTCD-26FEB1217-T67749.99"
# A recorded Polymarket market (condition id) that only Gamma lists in the tests.
LISTED = "0x02330ccbfc1a90b7330ed35f27fadb01b64f5e523bfaaa5329ff0da249f836c1"
# The test venues are silent between the messages a test sends, and a test waits for
# the daemon between them: a read timeout within reach of a slow, loaded machine's
# pause drops the connection under a message being sent (seen once with 2 s, Kalshi,
# whose venue sends no application pings). The read-timeout test sets its own.
FAST = {
    "backoff_initial_s": 0.05,
    "backoff_max_s": 0.2,
    "open_timeout_s": 2.0,
    "read_timeout_s": 10.0,
}
STALE_AFTER_S = 1.0
CYCLE_S = 0.05
RESOLVES = "2030-01-01T00:00:00Z"


def unix(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def live_config(
    tmp_path: Path, markets: list[dict[str, Any]], feed: dict[str, Any], **sections: dict[str, Any]
) -> dict[str, Any]:
    path = tmp_path / "markets.json"
    path.write_text(json.dumps({"markets": markets}), encoding="utf-8")
    doc = base_config(
        tmp_path,
        0,
        feed=feed,
        markets={"file": str(path)},
        model={"warmup_s": 0.0, "warmup_ticks": 3},
        governor={"publish_interval_s": CYCLE_S, "stale_after_s": STALE_AFTER_S, "ttl_s": 5.0},
    )
    for name, section in sections.items():
        doc[name] = {**doc.get(name, {}), **section}
    return doc


async def params(d: InProcessDaemon, market: str) -> dict[str, Any] | None:
    status, body = await d.get_json(f"/v1/params/{market}")
    return body if status == 200 else None


async def metric(d: InProcessDaemon, name: str, **labels: str) -> float | None:
    status, _, text = await http_get(d.url + "/metrics")
    assert status == 200
    return sample(text, name, **labels)


async def price_is(d: InProcessDaemon, market: str, p: float, tol: float = 1e-6) -> bool:
    entry = await params(d, market)
    return entry is not None and abs(entry["inputs"]["p"] - p) <= tol


@pytest.fixture
async def polymarket() -> AsyncIterator[PolymarketServer]:
    server = PolymarketServer()
    await server.start()
    yield server
    server.drop()
    await server.close()


def pm_config(tmp_path: Path, url: str, **polymarket: Any) -> dict[str, Any]:
    market = {
        "id": "pm-x",
        "title": "recorded market",
        "resolves_at": RESOLVES,
        "tick_size": 0.01,
        "polymarket_yes_token": PM_YES,
        "polymarket_no_token": PM_NO,
    }
    return live_config(
        tmp_path,
        [market],
        {
            "kind": "polymarket",
            "url": url,
            "metadata": False,
            "polymarket": {**FAST, "ping_interval_s": 0.2, **polymarket},
        },
    )


def trade(asset: str, price: str) -> dict[str, Any]:
    return {
        "event_type": "last_trade_price",
        "asset_id": asset,
        "market": PM_MARKET,
        "price": price,
        "side": "BUY",
        "size": "10",
        "fee_rate_bps": "0",
        "timestamp": str(now_ms()),
    }


def book(asset: str, bid: str, ask: str) -> dict[str, Any]:
    return {
        "event_type": "book",
        "asset_id": asset,
        "market": PM_MARKET,
        "bids": [{"price": bid, "size": "100"}],
        "asks": [{"price": ask, "size": "100"}],
        "hash": "0",
        "timestamp": str(now_ms()),
    }


# --- Polymarket ----------------------------------------------------------------------------


async def test_polymarket_subscribes_follows_prices_survives_a_drop_and_garbage(
    tmp_path: Path, in_process: Any, polymarket: PolymarketServer
) -> None:
    d = await in_process(pm_config(tmp_path, polymarket.url))
    d.start()
    await until(polymarket.subscriptions, what="a subscription")
    assert polymarket.subscriptions()[0] == {
        "assets_ids": sorted([PM_YES, PM_NO]),
        "type": "market",
        "custom_feature_enabled": True,
    }
    # The recorded book of the YES token (0.46 / 0.47) arrives with the subscription.
    await wait_until(lambda: price_is(d, "pm-x", 0.465), what="p from the recorded book")
    await until(lambda: polymarket.pings() >= 1, what="a PING")  # every ping_interval_s
    assert await metric(d, "riskd_feed_connected", venue="polymarket") == 1

    # A NO-token book: NO 0.29 / 0.31 is YES 0.69 / 0.71.
    await polymarket.send(book(PM_NO, "0.29", "0.31"))
    await wait_until(lambda: price_is(d, "pm-x", 0.70), what="p from the NO book")

    # Garbage and wrong types: counted by reason, skipped, the feed goes on.
    await polymarket.send("this is not json")
    await polymarket.send(
        {
            "event_type": "book",
            "asset_id": PM_YES,
            "bids": 5,
            "asks": [],
            "timestamp": str(now_ms()),
        }
    )
    await polymarket.send({**trade(PM_YES, "0.5"), "price": "1.7"})
    await polymarket.send({**trade(PM_YES, "0.5"), "asset_id": "999"})
    await polymarket.send(book(PM_YES, "0.79", "0.81"))
    await wait_until(lambda: price_is(d, "pm-x", 0.80), what="p after the garbage")
    for reason in ("bad_json", "bad_message", "bad_price", "unknown_asset"):
        assert (
            await metric(d, "riskd_ticks_rejected_total", venue="polymarket", reason=reason) == 1
        ), reason

    # The server cuts the connection: riskd reconnects, resubscribes the same assets,
    # and follows the book the venue sends again.
    polymarket.drop()
    await until(lambda: len(polymarket.subscriptions()) == 2, what="a resubscription")
    assert polymarket.subscriptions()[1] == polymarket.subscriptions()[0]
    await wait_until(lambda: price_is(d, "pm-x", 0.465), what="p after the reconnect")
    assert await metric(d, "riskd_feed_reconnects_total", venue="polymarket") == 1
    assert await metric(d, "riskd_feed_connected", venue="polymarket") == 1
    lag = await metric(d, "riskd_feed_lag_seconds", venue="polymarket")
    assert lag is not None and 0 <= lag < 5


async def test_polymarket_resolution_and_tick_size(
    tmp_path: Path, in_process: Any, polymarket: PolymarketServer
) -> None:
    d = await in_process(pm_config(tmp_path, polymarket.url))
    d.start()
    await wait_until(lambda: price_is(d, "pm-x", 0.465), what="the first book")
    engine = d.daemon.engine
    i = engine.index["pm-x"]
    await polymarket.send(
        {
            "event_type": "tick_size_change",
            "asset_id": PM_YES,
            "market": PM_MARKET,
            "old_tick_size": "0.01",
            "new_tick_size": "0.001",
            "timestamp": str(now_ms()),
        }
    )
    await until(lambda: engine.est.tick_size[i] == 0.001, what="the new tick size")

    sent = time.time()
    await polymarket.send(
        {
            "event_type": "market_resolved",
            "id": "1",
            "market": PM_MARKET,
            "assets_ids": [PM_YES, PM_NO],
            "winning_asset_id": PM_YES,
            "winning_outcome": "Yes",
            "timestamp": str(now_ms()),
        }
    )

    async def resolved() -> bool:
        entry = await params(d, "pm-x")
        return entry is not None and "resolved" in entry["reasons"]

    await wait_until(resolved, what="the market resolved")
    entry = await params(d, "pm-x")
    assert entry is not None
    assert entry["mode"] == "reduce_only"
    assert entry["max_leverage"] == {"long": 1.0, "short": 1.0}
    assert entry["inputs"]["tau_s"] == 0
    assert engine.resolve_t[i] <= time.time() and engine.resolve_t[i] >= sent - 1


async def test_polymarket_splits_tokens_over_connections(
    tmp_path: Path, in_process: Any, polymarket: PolymarketServer
) -> None:
    # Five recorded books with both sides, each a market's YES token; the NO tokens
    # have no book. Four tokens per connection: two markets, two, one.
    books = [b for b in fixture_docs("polymarket_book.jsonl") if b["bids"] and b["asks"]][:5]
    markets = [
        {
            "id": f"pm-{k}",
            "resolves_at": RESOLVES,
            "tick_size": 0.001,
            "polymarket_yes_token": b["asset_id"],
            "polymarket_no_token": str(k + 1) * 70,
        }
        for k, b in enumerate(books)
    ]
    doc = live_config(
        tmp_path,
        markets,
        {
            "kind": "polymarket",
            "url": polymarket.url,
            "metadata": False,
            "polymarket": {**FAST, "ping_interval_s": 0.2, "assets_per_connection": 4},
        },
    )
    d = await in_process(doc)
    d.start()
    await until(lambda: len(polymarket.subscriptions()) == 3, what="three subscriptions")
    subs = [set(s["assets_ids"]) for s in polymarket.subscriptions()]
    assert sorted(map(len, subs)) == [2, 4, 4]
    tokens = [{m["polymarket_yes_token"], m["polymarket_no_token"]} for m in markets]
    assert set().union(*subs) == set().union(*tokens)
    assert all(any(pair <= sub for sub in subs) for pair in tokens)  # a market's together

    for m, b in zip(markets, books, strict=True):
        mid = (
            max(float(x["price"]) for x in b["bids"]) + min(float(x["price"]) for x in b["asks"])
        ) / 2
        await wait_until(
            lambda m=m, mid=mid: price_is(d, m["id"], mid),
            what=f"p of {m['id']} from its connection's book",
        )
    assert await metric(d, "riskd_feed_connected", venue="polymarket") == 1

    # One connection drops: it alone connects again, with its own tokens.
    last = markets[4]["polymarket_yes_token"]
    polymarket.connection_of(last).transport.abort()
    await until(lambda: len(polymarket.subscriptions()) == 4, what="a resubscription")
    assert set(polymarket.subscriptions()[-1]["assets_ids"]) == tokens[4]
    assert polymarket.handshakes == 4
    await polymarket.publish(book(last, "0.50", "0.52"))
    await wait_until(lambda: price_is(d, "pm-4", 0.51), what="p on the new connection")
    assert await metric(d, "riskd_feed_reconnects_total", venue="polymarket") == 1
    assert await metric(d, "riskd_feed_connected", venue="polymarket") == 1
    assert not await metric(
        d, "riskd_ticks_rejected_total", venue="polymarket", reason="unknown_asset"
    )


async def test_polymarket_split_feed_stops_on_a_fatal_error(polymarket: PolymarketServer) -> None:
    # A wrong path (HTTP 404 on every handshake): one connection's fatal error ends the
    # feed, and the other connections with it.
    markets = {
        f"pm-{k}": Market(
            f"pm-{k}",
            1.9e9,
            1.9e9,
            polymarket_yes_token=f"{k}1" * 30,
            polymarket_no_token=f"{k}2" * 30,
        )
        for k in range(3)
    }
    cfg = PolymarketSettings(**FAST, assets_per_connection=2)
    feed = PolymarketFeed(cfg, markets, url=polymarket.url + "/nowhere", metadata=False)
    assert len(feed.codecs()) == 3
    with pytest.raises(FeedError) as err:
        async with asyncio.timeout(10):
            async for _ in feed.ticks():
                pass
    assert "404" in str(err.value)
    assert not feed.connected and feed.connections == 0


async def test_silent_venue_goes_fail_safe_then_recovers(
    tmp_path: Path, in_process: Any, polymarket: PolymarketServer
) -> None:
    d = await in_process(pm_config(tmp_path, polymarket.url, read_timeout_s=0.6))
    streaming = asyncio.Event()
    last_sent = [0.0]

    async def stream() -> None:
        prices = ("0.46", "0.47")
        k = 0
        while True:
            await streaming.wait()
            await polymarket.send(trade(PM_YES, prices[k % 2]))
            last_sent[0] = time.monotonic()
            k += 1
            await asyncio.sleep(0.1)  # the venue's pace: a trade every 0.1 s

    streamer = asyncio.create_task(stream())
    try:
        d.start()
        streaming.set()

        async def live() -> bool:
            entry = await params(d, "pm-x")
            status, body = await d.get_json("/readyz")
            return (
                entry is not None
                and "stale_feed" not in entry["reasons"]
                and not [r for r in body["reasons"] if r.startswith("feed_")]
            )

        await wait_until(live, what="fresh data")

        # The venue stops sending prices but keeps the connection (it answers PINGs):
        # the book it sent on this connection still holds, so the market stays live
        # (issue: order-book venues; tests/test_freshness.py covers it at length).
        streaming.clear()
        polymarket.talking = False
        await asyncio.sleep(2 * STALE_AFTER_S)  # stays live over a span: the span is under test
        assert await live()
        assert polymarket.handshakes == 1  # the PONGs keep the connection

        # Now the venue stops answering PINGs too: the read timeout drops the silent
        # connection and riskd connects again. Websocket pings from the venue's stack
        # do not count as Polymarket speaking (they do for Kalshi, whose heartbeat
        # they are).
        pongs, polymarket.answers = polymarket.answers, {}
        heartbeat = asyncio.create_task(polymarket.heartbeat(0.1))
        try:

            async def fail_safe() -> bool:
                entry = await params(d, "pm-x")
                return entry is not None and "stale_feed" in entry["reasons"]

            await wait_until(fail_safe, what="fail-safe values")
            entry = await params(d, "pm-x")
            assert entry is not None and entry["mode"] == "reduce_only"
            assert entry["max_leverage"] == {"long": 1.0, "short": 1.0}
            status, body = await d.get_json("/readyz")
            assert status == 503 and {"feed_stale:polymarket", "feed_down:polymarket"} & set(
                body["reasons"]
            ), body
            await until(lambda: polymarket.handshakes >= 2, what="a reconnect after silence")
        finally:
            heartbeat.cancel()
        polymarket.answers = pongs

        # Data returns: the market leaves its fail-safe values and riskd is ready again.
        polymarket.talking = True
        streaming.set()
        await wait_until(live, what="recovery")
        status, body = await d.get_json("/readyz")
        assert not [r for r in body["reasons"] if r.startswith("feed_")], body
        assert (await metric(d, "riskd_feed_reconnects_total", venue="polymarket") or 0) >= 1
    finally:
        streamer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await streamer


# --- Kalshi ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kalshi_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
async def kalshi(kalshi_key: rsa.RSAPrivateKey) -> AsyncIterator[KalshiServer]:
    server = KalshiServer(
        "riskd-test-key",
        kalshi_key.public_key(),
        {KALSHI_TICKER: {"yes": [[55, 100], [57, 250]], "no": [[40, 80], [41, 300]]}},
    )
    await server.start()
    yield server
    server.drop()
    await server.close()


def write_key(tmp_path: Path, key: rsa.RSAPrivateKey) -> Path:
    from tests.support import private_key_pem

    path = tmp_path / "kalshi.pem"
    path.write_bytes(private_key_pem(key))
    path.chmod(0o600)
    return path


async def test_kalshi_signed_feed_book_ticker_and_seq_gap(
    tmp_path: Path, in_process: Any, kalshi: KalshiServer, kalshi_key: rsa.RSAPrivateKey
) -> None:
    doc = live_config(
        tmp_path,
        [{"id": "k-btc", "resolves_at": RESOLVES, "kalshi_ticker": KALSHI_TICKER}],
        {
            "kind": "kalshi",
            "url": kalshi.url,
            "metadata": False,
            "kalshi": {
                **FAST,
                "key_id": "riskd-test-key",
                "private_key_path": str(write_key(tmp_path, kalshi_key)),
            },
        },
    )
    d = await in_process(doc)
    d.start()
    await until(lambda: len(kalshi.commands("subscribe")) == 2, what="two subscriptions")
    assert kalshi.handshakes == 1 and kalshi.rejected_handshakes == 0
    subs = kalshi.commands("subscribe")
    assert [s["params"] for s in subs] == [
        {"channels": ["ticker"], "market_tickers": [KALSHI_TICKER]},
        {"channels": ["orderbook_delta"], "market_tickers": [KALSHI_TICKER]},
    ]
    # The snapshot: YES bid 0.57, NO bid 0.41 -> YES ask 0.59.
    await wait_until(lambda: price_is(d, "k-btc", 0.58), what="p from the snapshot")

    (sid,) = kalshi.book_sids
    await kalshi.send(
        kalshi.sequenced(
            sid,
            "orderbook_delta",
            {
                "market_ticker": KALSHI_TICKER,
                "price": 58,
                "delta": 40,
                "side": "yes",
                "ts": time.time(),
            },
        )
    )
    await wait_until(lambda: price_is(d, "k-btc", 0.585), what="p after a delta")
    # The ticker channel in the recorded format (dollar strings).
    await kalshi.send(
        {
            "type": "ticker",
            "sid": 1,
            "msg": {
                "market_ticker": KALSHI_TICKER,
                "price": 60,
                "yes_bid": 59,
                "yes_ask": 61,
                "price_dollars": "0.6000",
                "yes_bid_dollars": "0.5900",
                "yes_ask_dollars": "0.6100",
                "volume": 10,
                "ts": int(time.time()),
            },
        }
    )
    await wait_until(lambda: price_is(d, "k-btc", 0.60), what="p from the ticker")

    # A sequence gap: riskd unsubscribes the book and subscribes again; the new
    # snapshot (in `_dollars_fp` strings) is the book from then on.
    kalshi.books[KALSHI_TICKER] = {
        "yes_dollars_fp": [["0.7000", "10.00"]],
        "no_dollars_fp": [["0.2800", "10.00"]],
    }
    await kalshi.send(
        kalshi.sequenced(
            sid,
            "orderbook_delta",
            {"market_ticker": KALSHI_TICKER, "price": 30, "delta": 5, "side": "no"},
            skip=1,
        )
    )
    await until(lambda: kalshi.commands("unsubscribe"), what="an unsubscribe")
    assert kalshi.commands("unsubscribe")[0]["params"] == {"sids": [sid]}
    await until(lambda: len(kalshi.book_sids) == 2, what="a new book subscription")
    await wait_until(lambda: price_is(d, "k-btc", 0.71), what="p from the new snapshot")
    assert await metric(d, "riskd_ticks_rejected_total", venue="kalshi", reason="seq_gap") == 1
    assert kalshi.handshakes == 1  # a resubscription, not a reconnection


@contextlib.asynccontextmanager
async def pinged(
    feed: Any, venue: VenueServer, every: float = 0.1
) -> AsyncIterator[asyncio.Task[None]]:
    """`feed` read in the background while `venue` sends nothing but websocket pings
    (every `every` s); yields the pinging task, which a test may cancel to go silent."""

    async def read() -> None:
        async for _ in feed.ticks():
            pass

    tasks = [asyncio.create_task(read()), asyncio.create_task(venue.heartbeat(every))]
    try:
        yield tasks[1]
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_kalshi_heartbeat_keeps_a_quiet_feed_connected(
    tmp_path: Path, kalshi: KalshiServer, kalshi_key: rsa.RSAPrivateKey
) -> None:
    """Kalshi sends no message while the subscribed markets are quiet, only its
    heartbeat pings: those keep the connection; without them the read timeout drops it."""
    cfg = KalshiSettings(
        **{**FAST, "read_timeout_s": 0.5},
        url=kalshi.url,
        key_id="riskd-test-key",
        private_key_path=write_key(tmp_path, kalshi_key),
    )
    market = Market(id="k-btc", resolves_at=1.9e9, event_at=1.9e9, kalshi_ticker=KALSHI_TICKER)
    feed = KalshiFeed(cfg, {"k-btc": market}, metadata=False)
    async with pinged(feed, kalshi) as heartbeat:
        await until(lambda: len(kalshi.book_sids) == 1, what="the book subscription")
        await asyncio.sleep(1.6)  # three read timeouts with nothing but the venue's pings
        assert kalshi.handshakes == 1 and feed.connections == 1 and feed.connected

        heartbeat.cancel()  # now the venue says nothing at all
        await until(lambda: kalshi.handshakes == 2, what="a reconnection of the silent feed")
        assert feed.last_error.startswith("SilentConnection")


async def test_kalshi_wrong_key_is_fatal(
    tmp_path: Path, in_process: Any, kalshi: KalshiServer
) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cfg = KalshiSettings(
        **FAST, url=kalshi.url, key_id="riskd-test-key", private_key_path=write_key(tmp_path, other)
    )
    market = Market(id="k-btc", resolves_at=1.9e9, event_at=1.9e9, kalshi_ticker=KALSHI_TICKER)
    feed = KalshiFeed(cfg, {"k-btc": market}, metadata=False)
    with pytest.raises(FeedError) as err:
        async for _ in feed.ticks():
            pass
    assert "401" in str(err.value)
    assert kalshi.rejected_handshakes == 1 and kalshi.handshakes == 0

    # In the daemon: it stops with exit status 1 instead of retrying forever.
    doc = live_config(
        tmp_path,
        [{"id": "k-btc", "resolves_at": RESOLVES, "kalshi_ticker": KALSHI_TICKER}],
        {
            "kind": "kalshi",
            "url": kalshi.url,
            "metadata": False,
            "kalshi": {
                **FAST,
                "key_id": "riskd-test-key",
                "private_key_path": str(write_key(tmp_path, other)),
            },
        },
    )
    d = await in_process(doc)
    d.start()
    assert d.task is not None
    assert await asyncio.wait_for(d.task, 5.0) == 1
    assert kalshi.rejected_handshakes == 2


# --- metadata ------------------------------------------------------------------------------


def gamma_entry(
    cond: str, tokens: list[str], end: str | None, question: str, outcomes: str = '["Yes", "No"]'
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": str(abs(hash(cond)) % 10**6),
        "question": question,
        "conditionId": cond,
        "slug": question.lower().replace(" ", "-"),
        "outcomes": outcomes,
        "outcomePrices": '["0.5", "0.5"]',
        "clobTokenIds": json.dumps(tokens),
        "active": True,
        "closed": False,
        "orderPriceMinTickSize": 0.001,
    }
    if end is not None:
        entry["endDate"] = end
    return entry


@pytest.fixture
async def rest() -> AsyncIterator[RestServer]:
    server = RestServer()
    await server.start()
    yield server
    await server.close()


async def test_metadata_pagination_and_a_malformed_entry(rest: RestServer) -> None:
    import aiohttp

    conds = [f"0x{k:064x}" for k in range(1, 6)]
    rest.gamma = [
        gamma_entry(c, [f"{k}1", f"{k}2"], "2027-03-01T00:00:00Z", f"Market {k}")
        for k, c in enumerate(conds)
    ]
    rest.gamma[2]["clobTokenIds"] = "[not json"  # malformed: skipped and counted
    rest.gamma[3]["outcomes"] = '["No", "Yes"]'  # YES is the second token
    rest.kalshi = [
        {
            "ticker": f"KX-{k}",
            "title": f"Kalshi {k}",
            "close_time": "2027-03-01T19:00:00Z",
            "expected_expiration_time": "2027-03-01T21:00:00Z",
            "tick_size": 1,
        }
        for k in range(5)
    ]
    rest.kalshi[1]["close_time"] = "soon"  # malformed
    del rest.kalshi[4]["expected_expiration_time"]  # falls back to close_time
    async with aiohttp.ClientSession() as session:
        found = await fetch_polymarket(
            session, rest.url + "/gamma", condition_ids=conds, page_size=2
        )
        kal = await fetch_kalshi(
            session, rest.url + "/kalshi/trade-api/v2", [f"KX-{k}" for k in range(5)], page_size=2
        )
    assert [m.id for m in found.markets] == [conds[0], conds[1], conds[3], conds[4]]
    assert found.rejected == {"metadata_bad_entry": 1}
    assert [q for name, q in rest.requests if name == "gamma"] == [
        [*(("condition_ids", c) for c in conds), ("limit", "2"), ("offset", str(o))]
        for o in (0, 2, 4)
    ]
    m3 = found.markets[2]
    assert (m3.polymarket_yes_token, m3.polymarket_no_token) == ("32", "31")
    assert m3.resolves_at == m3.event_at == unix("2027-03-01T00:00:00Z")
    assert m3.tick_size == 0.001

    assert [m.id for m in kal.markets] == ["KX-0", "KX-2", "KX-3", "KX-4"]
    assert kal.rejected == {"metadata_bad_entry": 1}
    cursors = [dict(q).get("cursor", "") for name, q in rest.requests if name == "kalshi"]
    assert cursors == ["", "2", "4"]
    k0 = kal.markets[0]
    assert k0.event_at == unix("2027-03-01T19:00:00Z")  # trading closes
    assert k0.resolves_at == unix("2027-03-01T21:00:00Z")  # the expected expiration
    assert k0.tick_size == 0.01 and k0.kalshi_ticker == "KX-0"
    assert kal.markets[3].resolves_at == kal.markets[3].event_at == unix("2027-03-01T19:00:00Z")

    # Merged with a markets file: the file wins, the venue fills what it lacks.
    mine = Market(id="my-0", resolves_at=1.0, event_at=1.0, polymarket_yes_token="01")
    merged = merge({"my-0": mine}, found.markets)
    assert merged["my-0"].resolves_at == 1.0 and merged["my-0"].polymarket_no_token == "02"
    assert conds[0] not in merged and conds[1] in merged


async def test_polymarket_markets_from_gamma_join_the_markets_file(
    tmp_path: Path, in_process: Any, polymarket: PolymarketServer, rest: RestServer
) -> None:
    books = {b["market"]: b["asset_id"] for b in polymarket.books.values()}
    listed = LISTED
    undated = "0x7dbfab3a92a6a9218b2c8cd98b39c7c1bc5c6ba69e62b5636a52098993c3a7de"
    rest.gamma = [
        # pm-x is in the markets file: its resolution time there wins over endDate.
        gamma_entry(PM_MARKET, [PM_YES, PM_NO], "2026-12-31T00:00:00Z", "Recorded"),
        gamma_entry(listed, [books[listed], "1"], "2031-06-01T12:00:00Z", "Listed"),
        gamma_entry(undated, [books[undated], "2"], None, "Undated"),
        {**gamma_entry(f"0x{'e' * 64}", ["3", "4"], None, "Broken"), "clobTokenIds": "3,4"},
    ]
    doc = pm_config(
        tmp_path,
        polymarket.url,
        gamma_url=rest.url + "/gamma",
        markets=[listed, undated, f"0x{'e' * 64}"],
    )
    doc["feed"]["metadata"] = True
    d = await in_process(doc)
    d.start()
    await until(polymarket.subscriptions, what="a subscription")
    assert set(polymarket.subscriptions()[0]["assets_ids"]) == {
        PM_YES,
        PM_NO,
        books[listed],
        "1",
        books[undated],
        "2",
    }

    async def all_listed() -> bool:
        return all([await params(d, m) for m in ("pm-x", listed, undated)])

    await wait_until(all_listed, what="the listed markets' parameters")
    now = time.time()
    pm_x = await params(d, "pm-x")
    assert pm_x is not None
    assert abs(pm_x["inputs"]["tau_s"] - (unix(RESOLVES) - now)) < 60  # the file's time
    entry = await params(d, listed)
    assert entry is not None
    assert abs(entry["inputs"]["tau_s"] - (unix("2031-06-01T12:00:00Z") - now)) < 60
    entry = await params(d, undated)
    settings: Settings = d.daemon.settings
    assert entry is not None and "unknown_resolution" in entry["reasons"]
    assert entry["inputs"]["tau_s"] == settings.model.default_tau_s
    status, why = await d.get_json(f"/v1/explain/{undated}")  # flagged there too
    assert status == 200 and why["event_at"] is None and why["resolves_at"] is None
    assert "unknown_resolution" in why["published"]["reasons"]
    assert (
        await metric(
            d, "riskd_ticks_rejected_total", venue="polymarket", reason="metadata_bad_entry"
        )
        == 1
    )
    # Their recorded books price them.
    await wait_until(lambda: price_is(d, listed, 0.135), what="a listed market priced")


async def late_lookup(
    tmp_path: Path,
    in_process: Any,
    polymarket: PolymarketServer,
    rest: RestServer,
    **polymarket_cfg: Any,
) -> tuple[InProcessDaemon, str]:
    """A daemon following pm-x from its markets file and LISTED from Gamma, whose first
    answer fails: started; returns it and LISTED's (recorded) token."""
    token = next(b["asset_id"] for b in polymarket.books.values() if b["market"] == LISTED)
    rest.gamma = [gamma_entry(LISTED, [token, "1"], "2031-06-01T12:00:00Z", "Listed")]
    rest.failures = 1
    doc = pm_config(
        tmp_path,
        polymarket.url,
        gamma_url=rest.url + "/gamma",
        markets=[LISTED],
        metadata_retry_s=0.2,
        **polymarket_cfg,
    )
    doc["feed"]["metadata"] = True
    d = await in_process(doc)
    d.start()
    return d, token


async def test_a_failed_lookup_is_retried_while_the_feed_runs(
    tmp_path: Path, in_process: Any, polymarket: PolymarketServer, rest: RestServer
) -> None:
    d, token = await late_lookup(tmp_path, in_process, polymarket, rest)
    # Gamma is down: prices from the markets file's market meanwhile.
    await wait_until(lambda: price_is(d, "pm-x", 0.465), what="the file's market priced")
    assert polymarket.subscriptions()[0]["assets_ids"] == sorted([PM_YES, PM_NO])
    assert (
        await metric(
            d, "riskd_ticks_rejected_total", venue="polymarket", reason="metadata_unavailable"
        )
        == 1
    )
    # The retry finds the listed market; riskd subscribes again, with its token.
    await until(lambda: len(polymarket.subscriptions()) == 2, what="a second subscription")
    assert token in polymarket.subscriptions()[1]["assets_ids"]
    await wait_until(lambda: price_is(d, LISTED, 0.135), what="the listed market priced")


async def test_a_split_feed_subscribes_every_connection_again_after_a_late_lookup(
    tmp_path: Path, in_process: Any, polymarket: PolymarketServer, rest: RestServer
) -> None:
    # Two tokens per connection: the file's market on one; once the retried lookup
    # finds the listed market, riskd connects afresh, each market on its own.
    d, token = await late_lookup(tmp_path, in_process, polymarket, rest, assets_per_connection=2)
    await wait_until(lambda: price_is(d, "pm-x", 0.465), what="the file's market priced")
    await until(lambda: len(polymarket.subscriptions()) == 3, what="two more subscriptions")
    first, *again = [frozenset(sub["assets_ids"]) for sub in polymarket.subscriptions()]
    assert first == {PM_YES, PM_NO}
    assert set(again) == {frozenset({PM_YES, PM_NO}), frozenset({token, "1"})}
    await wait_until(lambda: price_is(d, LISTED, 0.135), what="the listed market priced")
    await wait_until(lambda: price_is(d, "pm-x", 0.465), what="the file's market again")
    assert await metric(d, "riskd_feed_connected", venue="polymarket") == 1


async def test_metadata_off_uses_the_markets_file_alone(
    tmp_path: Path, in_process: Any, polymarket: PolymarketServer, rest: RestServer
) -> None:
    rest.gamma = [
        gamma_entry(
            f"0x{'a' * 64}",
            ["55558439202698150487746672855322717857013777460388991228050731207297477093591", "1"],
            "2031-06-01T12:00:00Z",
            "Not asked for",
        )
    ]
    doc = pm_config(
        tmp_path, polymarket.url, gamma_url=rest.url + "/gamma", markets=[f"0x{'a' * 64}"]
    )
    d = await in_process(doc)  # pm_config has metadata = false
    d.start()
    await wait_until(lambda: price_is(d, "pm-x", 0.465), what="the file's market priced")
    assert rest.requests == []
    assert list(d.daemon.engine.index) == ["pm-x"]


# --- the generic websocket feed ---------------------------------------------------------------


async def test_generic_websocket_feed_with_a_field_mapping(tmp_path: Path, in_process: Any) -> None:
    server = VenueServer(path="/prices")
    await server.start()
    try:
        doc = live_config(
            tmp_path,
            [{"id": "fed-hold", "resolves_at": RESOLVES}],
            {
                "kind": "websocket",
                "url": server.url,
                "websocket": {
                    **FAST,
                    "venue": "exchange",
                    "subscribe": ['{"op": "subscribe", "channel": "prices"}'],
                    "items": "data",
                    "timestamp_unit": "ms",
                    "price_scale": 0.01,
                    "fields": {
                        "market": "sym",
                        "price": "",
                        "bid": "b",
                        "ask": "a",
                        "timestamp": "t",
                    },
                    "market_ids": {"FEDHOLD": "fed-hold"},
                },
            },
        )
        d = await in_process(doc)
        d.start()
        await until(server.frames, what="the subscribe frame")
        await server.send({"data": [{"sym": "FEDHOLD", "b": 61, "a": 63, "t": now_ms()}]})
        await wait_until(lambda: price_is(d, "fed-hold", 0.62), what="p from the mapping")
        await server.send({"data": [{"sym": "FEDHOLD", "b": "x", "a": 63, "t": now_ms()}]})
        server.drop()
        await until(lambda: len(server.frames()) == 2, what="the subscribe frame again")
        assert server.frames() == ['{"op": "subscribe", "channel": "prices"}'] * 2
        await server.send({"data": [{"sym": "FEDHOLD", "b": 70, "a": 72, "t": now_ms()}]})
        await wait_until(lambda: price_is(d, "fed-hold", 0.71), what="p after the reconnect")
        assert (
            await metric(d, "riskd_ticks_rejected_total", venue="exchange", reason="bad_price") == 1
        )
        assert await metric(d, "riskd_feed_reconnects_total", venue="exchange") == 1
    finally:
        server.drop()
        await server.close()


@pytest.mark.parametrize("heartbeat", [True, False])
async def test_generic_feed_heartbeat_option(heartbeat: bool) -> None:
    """`heartbeat = true`: an exchange's websocket pings keep its quiet stream
    connected; by default only messages do, and the read timeout reconnects."""
    server = VenueServer(path="/prices")
    await server.start()
    cfg = WebsocketFeedSettings(
        **{**FAST, "read_timeout_s": 0.5}, url=server.url, heartbeat=heartbeat
    )
    feed = GenericWebsocketFeed(cfg)
    try:
        async with pinged(feed, server):
            await until(lambda: server.handshakes == 1, what="a connection")
            await asyncio.sleep(1.6)  # three read timeouts with nothing but pings
            if heartbeat:
                assert server.handshakes == 1 and feed.connected
            else:
                assert server.handshakes >= 2
                assert feed.last_error.startswith("SilentConnection")
    finally:
        server.drop()
        await server.close()


# --- several feeds at once ---------------------------------------------------------------------


async def test_polymarket_and_kalshi_at_once(
    tmp_path: Path,
    in_process: Any,
    polymarket: PolymarketServer,
    kalshi: KalshiServer,
    kalshi_key: rsa.RSAPrivateKey,
) -> None:
    doc = live_config(
        tmp_path,
        [
            # The same event on two venues: one market id per venue, each on its own feed.
            {"id": "pm-x", "resolves_at": RESOLVES, "polymarket_yes_token": PM_YES},
            {"id": "k-btc", "resolves_at": RESOLVES, "kalshi_ticker": KALSHI_TICKER},
        ],
        {
            "kind": ["polymarket", "kalshi"],
            "metadata": False,
            "polymarket": {**FAST, "url": polymarket.url},
            "kalshi": {
                **FAST,
                "url": kalshi.url,
                "key_id": "riskd-test-key",
                "private_key_path": str(write_key(tmp_path, kalshi_key)),
            },
        },
    )
    d = await in_process(doc)
    d.start()
    await wait_until(lambda: price_is(d, "pm-x", 0.465), what="the Polymarket market")
    await wait_until(lambda: price_is(d, "k-btc", 0.58), what="the Kalshi market")
    assert polymarket.subscriptions()[0]["assets_ids"] == [PM_YES]
    for venue in ("polymarket", "kalshi"):
        assert (await metric(d, "riskd_ticks_total", venue=venue) or 0) >= 1, venue
        assert await metric(d, "riskd_feed_connected", venue=venue) == 1, venue
    # One venue failing leaves the other running.
    polymarket.drop()
    await until(lambda: len(polymarket.subscriptions()) == 2, what="the resubscription")
    (sid,) = kalshi.book_sids
    await kalshi.send(
        kalshi.sequenced(
            sid,
            "orderbook_delta",
            {"market_ticker": KALSHI_TICKER, "price": 58, "delta": 40, "side": "yes"},
        )
    )
    await wait_until(lambda: price_is(d, "k-btc", 0.585), what="Kalshi during the outage")
    assert await metric(d, "riskd_feed_reconnects_total", venue="kalshi") == 0
