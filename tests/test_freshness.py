"""Freshness and liquidity from live books (issue: order-book venues), end to end: the
daemon in-process against real `websockets` servers on 127.0.0.1 speaking each
venue's protocol (tests/support/venues.py).

A deep market whose top of book stays put while the venue only answers pings (or
sends its heartbeat) and changes other levels is live: `normal`, above 1x after
warm-up, never `stale_feed`. When the venue goes silent the market is stale within
`stale_after_s` plus one cycle, and it recovers when the venue speaks again. A
shallow book at the same prices gets strictly lower leverage than a deep one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support import (
    InProcessDaemon,
    KalshiServer,
    PolymarketServer,
    VenueServer,
    now_ms,
    until,
    wait_until,
)
from tests.test_feeds_live import (
    FAST,
    RESOLVES,
    kalshi_key,  # noqa: F401 - a fixture
    live_config,
    metric,
    params,
    write_key,
)

STALE_S = 0.5
CYCLE_S = 0.05
QUIET_S = 20 * STALE_S  # the top of book stays put this long
SLACK_S = 0.75  # a loaded machine's scheduling, as in the other live tests
DEEP, SHALLOW = 50_000, 10
# Warm-up needs liveness, not top-of-book changes: more ticks than a quiet book gives.
MODEL = {"warmup_s": 0.3, "warmup_ticks": 50}
GOVERNOR = {
    "publish_interval_s": CYCLE_S,
    "stale_after_s": STALE_S,
    "ttl_s": 5.0,
    "loosen_interval_s": 0.05,
    "max_loosen_step": 1.0,
}
# The read timeout stays above the silence the tests make: staleness must come from
# the missing confirmations, and recovery happen on the same connection.
READ_TIMEOUT_S = 5.0


def config(tmp_path: Path, markets: list[dict[str, Any]], feed: dict[str, Any]) -> dict[str, Any]:
    doc = live_config(tmp_path, markets, feed, model=MODEL, governor=GOVERNOR)
    return doc


async def watch(
    d: InProcessDaemon, market: str, seconds: float, check: Callable[[dict[str, Any]], None]
) -> int:
    """Read the market's published set every cycle for `seconds`; `check` each."""
    seen = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        entry = await params(d, market)
        assert entry is not None
        check(entry)
        seen += 1
        await asyncio.sleep(CYCLE_S)  # sampling over a span: the span is under test
    return seen


def live_and_leveraged(entry: dict[str, Any]) -> None:
    assert "stale_feed" not in entry["reasons"], entry
    assert entry["mode"] == "normal", entry
    assert max(entry["max_leverage"].values()) > 1.0, entry


async def warm(d: InProcessDaemon, market: str) -> dict[str, Any]:
    async def ready() -> dict[str, Any] | None:
        entry = await params(d, market)
        ok = (
            entry is not None
            and entry["mode"] == "normal"
            and min(entry["max_leverage"].values()) > 1.0
        )
        return entry if ok else None

    entry = await wait_until(ready, what="warm, above 1x")
    assert isinstance(entry, dict)
    return entry


async def stale_within(d: InProcessDaemon, market: str, last_sign: Callable[[], float]) -> float:
    """Seconds from the venue's last sign of life to the first published stale set."""

    async def stale() -> bool:
        entry = await params(d, market)
        return entry is not None and "stale_feed" in entry["reasons"]

    await wait_until(stale, what="stale_feed")
    return time.monotonic() - last_sign()


# --- Polymarket -----------------------------------------------------------------------

PM_DEEP = ("1001", "1002")  # YES, NO tokens (made up; the server serves our books)
PM_SHALLOW = ("2001", "2002")


def pm_book(asset: str, size: int) -> dict[str, Any]:
    return {
        "event_type": "book",
        "asset_id": asset,
        "market": "0xabc",
        "bids": [{"price": "0.30", "size": "900"}, {"price": "0.45", "size": str(size)}],
        "asks": [{"price": "0.47", "size": str(size)}, {"price": "0.60", "size": "900"}],
        "hash": "0",
        "timestamp": str(now_ms()),
    }


def pm_level_change(asset: str, size: int) -> dict[str, Any]:
    """A change at a level far from the top: the venue's best bid/ask stay put."""
    return {
        "event_type": "price_change",
        "market": "0xabc",
        "timestamp": str(now_ms()),
        "price_changes": [
            {
                "asset_id": asset,
                "price": "0.30",
                "size": str(size),
                "side": "BUY",
                "best_bid": "0.45",
                "best_ask": "0.47",
                "hash": "0",
            }
        ],
    }


@pytest.fixture
async def quiet_pm() -> AsyncIterator[PolymarketServer]:
    """Answers PING with PONG (noting when), and can go mute (no PONG either)."""
    server = PolymarketServer(
        books={
            PM_DEEP[0]: pm_book(PM_DEEP[0], DEEP),
            PM_SHALLOW[0]: pm_book(PM_SHALLOW[0], SHALLOW),
        }
    )
    await server.start()
    yield server
    server.drop()
    await server.close()


def pm_markets() -> list[dict[str, Any]]:
    return [
        {
            "id": "pm-deep",
            "resolves_at": RESOLVES,
            "tick_size": 0.01,
            "polymarket_yes_token": PM_DEEP[0],
            "polymarket_no_token": PM_DEEP[1],
        },
        {
            "id": "pm-shallow",
            "resolves_at": RESOLVES,
            "tick_size": 0.01,
            "polymarket_yes_token": PM_SHALLOW[0],
            "polymarket_no_token": PM_SHALLOW[1],
        },
    ]


async def test_polymarket_quiet_deep_book_stays_live(
    tmp_path: Path, in_process: Any, quiet_pm: PolymarketServer
) -> None:
    d = await in_process(
        config(
            tmp_path,
            pm_markets(),
            {
                "kind": "polymarket",
                "url": quiet_pm.url,
                "metadata": False,
                "polymarket": {**FAST, "ping_interval_s": 0.2, "read_timeout_s": READ_TIMEOUT_S},
            },
        )
    )
    d.start()
    deep = await warm(d, "pm-deep")
    assert "thin_market" not in deep["reasons"]

    async def other_levels() -> None:
        k = 0
        while True:
            await asyncio.sleep(1.0)  # the venue's pace: a change a second
            await quiet_pm.publish(pm_level_change(PM_DEEP[0], 800 + k))
            k += 1

    changes = asyncio.create_task(other_levels())
    try:
        assert await watch(d, "pm-deep", QUIET_S, live_and_leveraged) > 20
    finally:
        changes.cancel()
    assert quiet_pm.handshakes == 1
    # The venue's freshness on /metrics follows its life, not its ticks (the stale-feed
    # alert reads it): a quiet book sent no tick for the whole wait.
    heard = await metric(d, "riskd_feed_last_message_timestamp_seconds", venue="polymarket")
    assert heard is not None and time.time() - heard < 2.0

    # Shallow at the same prices: strictly lower leverage, and called thin.
    shallow = await params(d, "pm-shallow")
    deep = await params(d, "pm-deep")
    assert shallow is not None and deep is not None
    assert shallow["inputs"]["p"] == deep["inputs"]["p"]
    for side in ("long", "short"):
        assert shallow["max_leverage"][side] < deep["max_leverage"][side], (shallow, deep)
    assert "thin_market" in shallow["reasons"] and "thin_market" not in deep["reasons"]
    explained = (await d.get_json("/v1/explain/pm-shallow"))[1]
    assert explained["inputs"]["depth"] == SHALLOW
    assert explained["inputs"]["h_s"] > explained["inputs"]["h0_s"]

    # Silent venue (no PONG, nothing): stale within stale_after_s and a cycle.
    quiet_pm.mute = True
    waited = await stale_within(d, "pm-deep", lambda: quiet_pm.last_sign)
    assert waited <= STALE_S + CYCLE_S + SLACK_S, waited
    status, body = await d.get_json("/readyz")
    assert status == 503 and "feed_stale:polymarket" in body["reasons"]

    # The venue speaks again: live on the same connection (its book still holds).
    quiet_pm.mute = False
    await wait_until(lambda: _live(d, "pm-deep"), what="recovery")
    assert quiet_pm.handshakes == 1
    status, body = await d.get_json("/readyz")
    assert "feed_stale:polymarket" not in body["reasons"]


async def _live(d: InProcessDaemon, market: str) -> bool:
    entry = await params(d, market)
    return entry is not None and "stale_feed" not in entry["reasons"]


# --- Kalshi ---------------------------------------------------------------------------

K_DEEP, K_SHALLOW = "KXDEEP-30", "KXSHALLOW-30"


def k_book(size: int) -> dict[str, Any]:
    # YES bids 45 (size) and 30; NO bids 53 (size) and 40: YES 0.45 / 0.47.
    return {"yes": [[30, 900], [45, size]], "no": [[40, 900], [53, size]]}


@pytest.fixture
async def quiet_kalshi(kalshi_key: rsa.RSAPrivateKey) -> AsyncIterator[KalshiServer]:  # noqa: F811
    server = KalshiServer(
        "riskd-test-key",
        kalshi_key.public_key(),
        {K_DEEP: k_book(DEEP), K_SHALLOW: k_book(SHALLOW)},
    )
    await server.start()
    yield server
    server.drop()
    await server.close()


async def test_kalshi_quiet_deep_book_stays_live(
    tmp_path: Path,
    in_process: Any,
    quiet_kalshi: KalshiServer,
    kalshi_key: rsa.RSAPrivateKey,  # noqa: F811
) -> None:
    d = await in_process(
        config(
            tmp_path,
            [
                {"id": "k-deep", "resolves_at": RESOLVES, "kalshi_ticker": K_DEEP},
                {"id": "k-shallow", "resolves_at": RESOLVES, "kalshi_ticker": K_SHALLOW},
            ],
            {
                "kind": "kalshi",
                "url": quiet_kalshi.url,
                "metadata": False,
                "kalshi": {
                    **FAST,
                    "read_timeout_s": READ_TIMEOUT_S,
                    "key_id": "riskd-test-key",
                    "channels": ["orderbook_delta"],
                    "private_key_path": str(write_key(tmp_path, kalshi_key)),
                },
            },
        )
    )
    async with quiet_kalshi.heartbeating():
        d.start()
        await warm(d, "k-deep")
        (sid,) = quiet_kalshi.book_sids

        async def other_levels() -> None:
            while True:
                await asyncio.sleep(1.0)  # the venue's pace: a change a second
                await quiet_kalshi.send(
                    quiet_kalshi.sequenced(
                        sid,
                        "orderbook_delta",
                        {"market_ticker": K_DEEP, "price": 30, "delta": 5, "side": "yes"},
                    )
                )

        changes = asyncio.create_task(other_levels())
        try:
            assert await watch(d, "k-deep", QUIET_S, live_and_leveraged) > 20
        finally:
            changes.cancel()
        shallow, deep = await params(d, "k-shallow"), await params(d, "k-deep")
        assert shallow is not None and deep is not None
        for side in ("long", "short"):
            assert shallow["max_leverage"][side] < deep["max_leverage"][side]

        # A sequence gap: stale at once (not after stale_after_s), until the snapshot
        # the resubscription brings.
        books, quiet_kalshi.books = quiet_kalshi.books, {}  # the snapshot comes late
        quiet_kalshi.book_sids.clear()
        await quiet_kalshi.send(
            quiet_kalshi.sequenced(
                sid,
                "orderbook_delta",
                {"market_ticker": K_DEEP, "price": 30, "delta": 5, "side": "yes"},
                skip=1,
            )
        )
        sent = time.monotonic()
        await stale_within(d, "k-deep", lambda: sent)
        assert time.monotonic() - sent < STALE_S, "stale at once, not after stale_after_s"
        await until(lambda: quiet_kalshi.book_sids, what="the resubscription")
        await asyncio.sleep(3 * STALE_S)  # stays stale for a while: the wait is under test
        assert not await _live(d, "k-deep"), "heartbeats do not confirm a broken book"
        quiet_kalshi.books = books
        (new_sid,) = quiet_kalshi.book_sids
        await quiet_kalshi.send(
            quiet_kalshi.sequenced(
                new_sid, "orderbook_snapshot", {"market_ticker": K_DEEP, **books[K_DEEP]}
            )
        )
        await wait_until(lambda: _live(d, "k-deep"), what="live after the new snapshot")

    # The heartbeat stops and nothing else comes: stale within stale_after_s + a cycle.
    waited = await stale_within(d, "k-deep", lambda: quiet_kalshi.last_ping)
    assert waited <= STALE_S + CYCLE_S + SLACK_S, waited
    status, body = await d.get_json("/readyz")
    assert status == 503 and "feed_stale:kalshi" in body["reasons"]
    async with quiet_kalshi.heartbeating():
        await wait_until(lambda: _live(d, "k-deep"), what="recovery")
    assert quiet_kalshi.handshakes == 1


# --- the generic websocket feed --------------------------------------------------------


async def test_generic_feed_quiet_deep_book_stays_live(tmp_path: Path, in_process: Any) -> None:
    # An exchange's own stream: top-of-book updates; "ping" -> "pong" unless mute.
    server = VenueServer(path="/prices", answers={"ping": "pong"})
    await server.start()
    try:
        d = await in_process(
            config(
                tmp_path,
                [
                    {"id": "x-deep", "resolves_at": RESOLVES, "tick_size": 0.01},
                    {"id": "x-shallow", "resolves_at": RESOLVES, "tick_size": 0.01},
                ],
                {
                    "kind": "websocket",
                    "url": server.url,
                    "websocket": {
                        **FAST,
                        "read_timeout_s": READ_TIMEOUT_S,
                        "venue": "exchange",
                        "ping_text": "ping",
                        "ping_interval_s": 0.2,
                        "timestamp_unit": "ms",
                        "fields": {
                            "market": "m",
                            "price": "",
                            "bid": "b",
                            "ask": "a",
                            "depth": "d",
                            "timestamp": "t",
                        },
                    },
                },
            )
        )
        d.start()
        await until(lambda: server.connections, what="a connection")
        for market, depth in (("x-deep", DEEP), ("x-shallow", SHALLOW)):
            await server.send({"m": market, "b": 0.45, "a": 0.47, "d": depth, "t": now_ms()})
        await warm(d, "x-deep")
        assert await watch(d, "x-deep", QUIET_S, live_and_leveraged) > 20
        shallow, deep = await params(d, "x-shallow"), await params(d, "x-deep")
        assert shallow is not None and deep is not None
        for side in ("long", "short"):
            assert shallow["max_leverage"][side] < deep["max_leverage"][side]

        server.mute = True
        waited = await stale_within(d, "x-deep", lambda: server.last_sign)
        assert waited <= STALE_S + CYCLE_S + SLACK_S, waited
        server.mute = False
        await wait_until(lambda: _live(d, "x-deep"), what="recovery")
        assert server.handshakes == 1
    finally:
        server.drop()
        await server.close()


# --- metrics exist at zero ------------------------------------------------------------


async def test_rejection_and_publish_counters_exist_at_zero(
    tmp_path: Path, in_process: Any, quiet_pm: PolymarketServer
) -> None:
    d = await in_process(
        config(
            tmp_path,
            pm_markets(),
            {
                "kind": "polymarket",
                "url": quiet_pm.url,
                "metadata": False,
                "polymarket": {**FAST, "ping_interval_s": 0.2, "read_timeout_s": READ_TIMEOUT_S},
            },
        )
    )
    d.start()
    for reason in (
        "bad_json",
        "unknown_asset",
        "out_of_order",
        "crossed_book",
        "unknown_market",
        "decode_error",
    ):
        value = await metric(d, "riskd_ticks_rejected_total", venue="polymarket", reason=reason)
        assert value == 0, reason
    for result in ("ok", "error"):
        assert (
            await metric(d, "riskd_publishes_total", publisher="jsonl", result=result) is not None
        ), result
    assert await metric(d, "riskd_publishes_total", publisher="jsonl", result="error") == 0


# --- a replayed CLOB-shaped tape -------------------------------------------------------


def test_clob_tape_with_hour_long_quiet_stretches_does_not_flap(tmp_path: Path) -> None:
    """A book-snapshot tape (bid, ask, depth columns) whose top sits still for hours and
    which has hour-long stretches without rows, replayed with the shipped settings
    (a row confirms the price: the tape rule) and evaluated every minute of event time:
    after warm-up no set is ever `stale_feed`, and the deep market gets above 1x."""
    from riskd.config import load_settings
    from riskd.engine import Engine
    from riskd.markets import Market
    from riskd.tape import Tape

    start = 1_767_225_600.0  # 2026-01-01
    rows = ["ts,market,price,bid,ask,depth"]
    t = start
    k = 0
    while t < start + 3 * 86_400:
        quiet = k % 31 == 30  # after each half hour of rows: an hour of nothing
        if not quiet:
            bid = 0.45 if (k // 120) % 2 == 0 else 0.46  # the top moves every 2 hours
            stamp = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            rows.append(f"{stamp},clob-deep,{bid + 0.01:.2f},{bid:.2f},{bid + 0.02:.2f},{DEEP}")
            t += 60.0
        else:
            t += 3600.0
        k += 1
    tape = tmp_path / "clob.csv"
    tape.write_text("\n".join(rows) + "\n", encoding="utf-8")

    settings = load_settings("config/riskd.toml")
    engine = Engine(
        settings,
        {
            "clob-deep": Market(
                "clob-deep", start + 30 * 86_400, start + 30 * 86_400, tick_size=0.01
            )
        },
        discover=False,
    )
    ticks = list(Tape(tape))
    assert len(ticks) == len(rows) - 1
    warm_until = start + 3600.0
    stale = leveraged = 0
    clock = start
    for tick in ticks:
        while clock + 60.0 < tick.ts:  # every minute of event time between the rows
            clock += 60.0
            for entry in engine.cycle(clock).entries:
                stale += clock > warm_until and "stale_feed" in entry["reasons"]
        engine.ingest([tick])
        clock = tick.ts
        for entry in engine.cycle(clock).entries:
            stale += clock > warm_until and "stale_feed" in entry["reasons"]
            leveraged += entry["max_leverage"]["long"] > 1.0
    assert stale == 0
    assert leveraged > 0
    assert engine.current["clob-deep"]["mode"] == "normal"
