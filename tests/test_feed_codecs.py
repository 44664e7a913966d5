"""Venue codecs on real recorded messages (tests/fixtures/ws/SOURCE.md), without a
socket: frames in, ticks, venue events, rejection reasons and replies out."""

from __future__ import annotations

import base64
import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from riskd.backoff import backoff
from riskd.feeds.base import Tick
from riskd.feeds.kalshi.auth import BadKey, KalshiSigner, load_private_key
from riskd.feeds.kalshi.codec import KalshiCodec
from riskd.feeds.polymarket.codec import Binding, PolymarketCodec
from riskd.feeds.websocket.codec import WebsocketCodec
from riskd.feeds.websocket.config import WebsocketFeedSettings

WS = Path(__file__).parent / "fixtures" / "ws"
# One Polymarket market of the captures, with both of its tokens.
PM_MARKET = "0x14002070e74acaf96f70c8dfb881586b156c814fac0c1ac417b84c6c76687d00"
PM_YES = "1627500284739545390204314775735988068784669364445492030335161034375823784781"
PM_NO = "7849332184617640056758089974170387917558941201674921732369975950049491747956"
RECEIVED = 1_770_921_600.0


def frames(name: str) -> list[str]:
    return (WS / name).read_text(encoding="utf-8").splitlines()


def docs(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in frames(name)]


def pm_codec(**extra: Binding) -> PolymarketCodec:
    assets = {PM_YES: Binding("pm-x", no=False), PM_NO: Binding("pm-x", no=True), **extra}
    return PolymarketCodec(assets)


def one_tick(ticks: list[Tick]) -> Tick:
    assert len(ticks) == 1, ticks
    return ticks[0]


# --- Polymarket ------------------------------------------------------------------------


def test_polymarket_subscription_message() -> None:
    codec = pm_codec()
    (sub,) = codec.on_connect()
    assert json.loads(sub) == {
        "assets_ids": sorted([PM_YES, PM_NO]),
        "type": "market",
        "custom_feature_enabled": True,
    }


def test_polymarket_real_books_give_the_top_of_book() -> None:
    books = docs("polymarket_book.jsonl")
    codec = PolymarketCodec({b["asset_id"]: Binding(b["market"], no=False) for b in books})
    codec.on_connect()
    for line, book in zip(frames("polymarket_book.jsonl"), books, strict=True):
        out = codec.decode(line, RECEIVED)
        assert out.rejected == [] and out.events == []
        tick = one_tick(out.ticks)
        bids = [float(level["price"]) for level in book["bids"]]
        asks = [float(level["price"]) for level in book["asks"]]
        assert tick.market == book["market"]
        assert tick.ts == int(book["timestamp"]) / 1000
        assert tick.bid == (max(bids) if bids else None)
        assert tick.ask == (min(asks) if asks else None)
        if bids and asks:
            assert tick.price == pytest.approx((max(bids) + min(asks)) / 2)
            assert tick.depth is not None and tick.depth > 0
        else:  # one side only (a market at 0.999): the last trade, inside the book
            assert tick.price == pytest.approx(float(book["last_trade_price"]))


def test_polymarket_no_token_trades_are_yes_one_minus_q() -> None:
    codec = pm_codec()
    codec.on_connect()
    yes_book = next(line for line in frames("polymarket_book.jsonl") if PM_YES in line)
    assert one_tick(codec.decode(yes_book, RECEIVED).ticks).price == pytest.approx(0.465)
    for line in frames("polymarket_trade.jsonl"):
        doc = json.loads(line)
        out = codec.decode(line, RECEIVED)
        if doc["asset_id"] not in (PM_YES, PM_NO):
            assert out.rejected == ["unknown_asset"] and out.ticks == []
            continue
        tick = one_tick(out.ticks)
        q = float(doc["price"])
        # A trade is a price: the book's mid once there is a book, the print kept.
        assert tick.market == "pm-x"
        assert tick.ts == int(doc["timestamp"]) / 1000
        assert tick.bid == 0.46 and tick.ask == 0.47
        yes = 1 - q if doc["asset_id"] == PM_NO else q
        assert codec.last_trade["pm-x"] == pytest.approx(yes)
        assert 0.44 <= yes <= 0.48  # the two tokens' trades agree once NO is turned


def test_polymarket_events_price_change_forms_tick_size_and_resolution() -> None:
    codec = pm_codec()
    codec.on_connect()
    yes_book = next(line for line in frames("polymarket_book.jsonl") if PM_YES in line)
    codec.decode(yes_book, RECEIVED)
    lines = frames("polymarket_events.jsonl")

    # Batched price_changes[] for both tokens: one tick for the market, from the last
    # token's best bid/ask (NO 0.52/0.53 -> YES 0.47/0.48).
    out = codec.decode(lines[0], RECEIVED)
    tick = one_tick(out.ticks)
    assert (tick.market, tick.ts) == ("pm-x", 1770921580.0)
    assert tick.bid == pytest.approx(0.47) and tick.ask == pytest.approx(0.48)

    # The older single-level form removes the YES bid at 0.47: the book's levels decide.
    out = codec.decode(lines[1], RECEIVED)
    tick = one_tick(out.ticks)
    assert tick.bid == 0.46 and tick.ask == 0.47

    out = codec.decode(lines[2], RECEIVED)  # best_bid_ask
    tick = one_tick(out.ticks)
    assert (tick.bid, tick.ask) == (0.49, 0.5)
    assert codec.decode(lines[2], RECEIVED).ticks == []  # the same top again: no tick

    out = codec.decode(lines[3], RECEIVED)  # tick_size_change
    assert out.ticks == [] and out.rejected == []
    (event,) = out.events
    assert (event.market, event.kind, event.tick_size, event.ts) == (
        "pm-x",
        "tick_size",
        0.001,
        1770921583.0,
    )

    out = codec.decode(lines[4], RECEIVED)  # new_market: known, not used
    assert (out.ticks, out.events, out.rejected) == ([], [], [])

    out = codec.decode(lines[5], RECEIVED)  # market_resolved
    (event,) = out.events
    assert (event.market, event.kind, event.ts) == ("pm-x", "resolved", 1770921590.0)


def test_polymarket_batched_frame_and_the_pong() -> None:
    codec = pm_codec()
    codec.on_connect()
    books = [json.loads(line) for line in frames("polymarket_book.jsonl") if PM_YES in line]
    out = codec.decode(json.dumps(books), RECEIVED)  # the initial dump is a JSON array
    assert len(out.ticks) == 1
    assert codec.decode("PONG", RECEIVED).ticks == []
    assert codec.decode("PONG", RECEIVED).rejected == []


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("not json at all", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        ("[1]", "bad_message"),
        (
            json.dumps(
                {
                    "event_type": "book",
                    "asset_id": PM_YES,
                    "timestamp": "1770921580000",
                    "bids": "many",
                    "asks": [],
                }
            ),
            "bad_message",
        ),
        (
            json.dumps(
                {
                    "event_type": "last_trade_price",
                    "asset_id": PM_YES,
                    "price": "1.5",
                    "timestamp": "1770921580000",
                }
            ),
            "bad_price",
        ),
        (
            json.dumps(
                {
                    "event_type": "last_trade_price",
                    "asset_id": PM_YES,
                    "price": "NaN",
                    "timestamp": "1770921580000",
                }
            ),
            "bad_price",
        ),
        (
            json.dumps(
                {
                    "event_type": "last_trade_price",
                    "asset_id": PM_YES,
                    "price": 0.5,
                    "timestamp": "yesterday",
                }
            ),
            "bad_timestamp",
        ),
        (
            json.dumps(
                {
                    "event_type": "price_change",
                    "asset_id": PM_YES,
                    "price": "0.5",
                    "side": "MAYBE",
                    "size": "1",
                    "timestamp": "1770921580000",
                }
            ),
            "bad_message",
        ),
        (
            json.dumps(
                {
                    "event_type": "tick_size_change",
                    "asset_id": PM_YES,
                    "new_tick_size": "0",
                    "timestamp": "1770921580000",
                }
            ),
            "bad_tick_size",
        ),
        (json.dumps({"event_type": "mystery", "asset_id": PM_YES}), "unknown_event"),
        (json.dumps({"event_type": "book", "asset_id": None}), "bad_message"),
    ],
)
def test_polymarket_malformed_frames_are_rejected_with_a_reason(frame: Any, reason: str) -> None:
    codec = pm_codec()
    codec.on_connect()
    out = codec.decode(frame, RECEIVED)
    assert out.rejected == [reason]
    assert out.ticks == [] and out.events == []


def test_polymarket_a_bad_batched_entry_changes_no_book() -> None:
    codec = pm_codec()
    codec.on_connect()
    codec.decode(next(line for line in frames("polymarket_book.jsonl") if PM_YES in line), RECEIVED)
    before = dict(codec.books[PM_YES].bids)
    frame = json.dumps(
        {
            "event_type": "price_change",
            "market": PM_MARKET,
            "timestamp": "1770921580000",
            "price_changes": [
                {"asset_id": PM_YES, "price": "0.30", "side": "BUY", "size": "9"},
                {"asset_id": PM_YES, "price": "2", "side": "BUY", "size": "9"},
            ],
        }
    )
    assert codec.decode(frame, RECEIVED).rejected == ["bad_price"]
    assert codec.books[PM_YES].bids == before


def test_polymarket_timestamps_going_back_are_rejected() -> None:
    codec = pm_codec()
    codec.on_connect()

    def trade(price: str, ms: int) -> str:
        return json.dumps(
            {
                "event_type": "last_trade_price",
                "asset_id": PM_YES,
                "price": price,
                "timestamp": str(ms),
            }
        )

    assert one_tick(codec.decode(trade("0.5", 1770921580000), RECEIVED).ticks).ts == 1770921580
    # Within a second: kept at the later time (venues mix clocks of different grain).
    assert one_tick(codec.decode(trade("0.51", 1770921579500), RECEIVED).ticks).ts == 1770921580
    assert codec.decode(trade("0.52", 1770921570000), RECEIVED).rejected == ["out_of_order"]


# --- Kalshi ------------------------------------------------------------------------------


def kalshi_codec(channels: tuple[str, ...] = ("ticker", "orderbook_delta")) -> KalshiCodec:
    tickers = {
        d["msg"]["market_ticker"]: "k-" + d["msg"]["market_ticker"]
        for name in ("kalshi_ticker.jsonl", "kalshi_trade.jsonl", "kalshi_book.jsonl")
        for d in docs(name)
        if "market_ticker" in d.get("msg", {})
    }
    return KalshiCodec(tickers, channels)


def test_kalshi_subscriptions_one_command_per_channel() -> None:
    codec = kalshi_codec()
    subs = [json.loads(s) for s in codec.on_connect()]
    assert [s["cmd"] for s in subs] == ["subscribe", "subscribe"]
    assert [s["params"]["channels"] for s in subs] == [["ticker"], ["orderbook_delta"]]
    assert subs[0]["params"]["market_tickers"] == sorted(codec.tickers)
    assert len({s["id"] for s in subs}) == 2


def _without_dollars(doc: dict[str, Any]) -> dict[str, Any]:
    msg = {k: v for k, v in doc["msg"].items() if "_dollars" not in k and not k.endswith("_fp")}
    return {**doc, "msg": msg}


def test_kalshi_real_tickers_in_dollars_and_in_legacy_cents() -> None:
    for doc in docs("kalshi_ticker.jsonl"):
        msg = doc["msg"]
        ticks = []
        for frame in (json.dumps(doc), json.dumps(_without_dollars(doc))):
            codec = kalshi_codec()
            codec.on_connect()
            out = codec.decode(frame, RECEIVED)
            assert out.rejected == []
            ticks.append(one_tick(out.ticks))
        assert ticks[0] == ticks[1]  # the same numbers, either encoding
        tick = ticks[0]
        bid, ask, last = (
            float(msg[k]) for k in ("yes_bid_dollars", "yes_ask_dollars", "price_dollars")
        )
        assert tick.market == "k-" + msg["market_ticker"] and tick.ts == msg["ts"]
        assert tick.bid == (bid or None)  # a bid of 0 is no bid
        assert tick.ask == (ask if ask < 1 else None)  # an ask of 1 is no ask
        if tick.bid is not None and tick.ask is not None:
            assert tick.price == pytest.approx((bid + ask) / 2)
        elif last:
            assert tick.price == pytest.approx(max(last, bid))
        else:
            assert tick.price == bid


def test_kalshi_real_trades() -> None:
    codec = kalshi_codec(("trade",))
    codec.on_connect()
    for doc, line in zip(docs("kalshi_trade.jsonl"), frames("kalshi_trade.jsonl"), strict=True):
        tick = one_tick(codec.decode(line, RECEIVED).ticks)
        assert tick.price == float(doc["msg"]["yes_price_dollars"])
        assert tick.ts == doc["msg"]["ts"]


def test_kalshi_book_snapshot_then_deltas_cents_and_dollars() -> None:
    codec = kalshi_codec()
    codec.on_connect()
    lines = frames("kalshi_book.jsonl")
    ticker = "KXBTCD-26FEB1217-T67749.99"
    arrived = 1770897989.5
    assert codec.decode(lines[0], arrived).ticks == []  # subscribed
    tick = one_tick(codec.decode(lines[1], arrived).ticks)  # snapshot in cents
    assert tick.market == "k-" + ticker and tick.ts == arrived  # no ts yet: arrival time
    assert (tick.bid, tick.ask) == (0.57, 0.59)  # YES ask = 1 - best NO bid
    # Depth within max_slippage (0.05) of the mid 0.58: YES bids 55+57 (350), NO bids
    # 40+41 (380); the thinner side counts.
    assert tick.depth == 350
    tick = one_tick(codec.decode(lines[2], arrived + 1).ticks)  # +50 YES at 58 cents
    assert tick.bid == 0.58 and tick.ts == 1770897990  # the venue's `ts`
    tick = one_tick(codec.decode(lines[3], arrived + 2).ticks)  # NO 0.41 gone (delta_fp)
    assert tick.ask == 0.60 and tick.ts == 1770897991.25  # `ts_ms`
    tick = one_tick(codec.decode(lines[4], arrived + 3).ticks)  # snapshot in _dollars_fp
    assert (tick.bid, tick.ask) == (0.77, 0.78)
    assert tick.ts == 1770897991.25  # no ts: the venue's clock so far
    assert tick.depth == 35.0  # YES 10 + 25 within 0.05 of 0.775; NO 40


def test_kalshi_seq_gap_resubscribes_and_waits_for_a_new_snapshot() -> None:
    codec = kalshi_codec()
    codec.on_connect()
    lines = frames("kalshi_book.jsonl")
    for line in lines[:3]:
        codec.decode(line, 1770897989.5)
    ticker = "KXBTCD-26FEB1217-T67749.99"
    gap = json.loads(lines[3])
    gap["seq"] = 5  # 4 is missing
    out = codec.decode(json.dumps(gap), RECEIVED)
    assert out.rejected == ["seq_gap"] and out.ticks == []
    unsub, sub = (json.loads(r) for r in out.replies)
    assert unsub["cmd"] == "unsubscribe" and unsub["params"] == {"sids": [2]}
    assert sub["cmd"] == "subscribe" and sub["params"]["channels"] == ["orderbook_delta"]
    assert ticker in sub["params"]["market_tickers"]
    assert ticker not in codec.books
    # The old subscription's deltas still in flight are dropped, not applied.
    late = json.loads(lines[2])
    late["seq"] = 6
    assert codec.decode(json.dumps(late), RECEIVED).ticks == []
    # Nor does the ticker channel price the market until the book is whole again.
    ticker_msg = {
        "type": "ticker",
        "sid": 1,
        "msg": {
            "market_ticker": ticker,
            "price_dollars": "0.5000",
            "yes_bid_dollars": "0.4900",
            "yes_ask_dollars": "0.5100",
            "ts": 1770897995,
        },
    }
    assert codec.decode(json.dumps(ticker_msg), RECEIVED).ticks == []
    # The new subscription: confirmed, a snapshot, and the book ticks again.
    codec.decode(
        json.dumps(
            {"id": sub["id"], "type": "subscribed", "msg": {"channel": "orderbook_delta", "sid": 7}}
        ),
        RECEIVED,
    )
    snap = json.loads(lines[1])
    snap["sid"], snap["seq"] = 7, 1
    tick = one_tick(codec.decode(json.dumps(snap), RECEIVED + 1).ticks)
    assert tick.bid == 0.57


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("{", "bad_json"),
        ('"text"', "bad_message"),
        ('{"type": "ticker", "msg": []}', "bad_message"),
        (
            '{"type": "ticker", "sid": 1, "msg": {"market_ticker": "NOPE", "yes_bid": 5}}',
            "unknown_ticker",
        ),
        (
            '{"type": "ticker", "sid": 1, "msg": {"market_ticker": "KXBTCD-26FEB1217-T67749.99",'
            ' "yes_bid_dollars": "abc", "ts": 1770897990}}',
            "bad_price",
        ),
        (
            '{"type": "ticker", "sid": 1, "msg": {"market_ticker": "KXBTCD-26FEB1217-T67749.99",'
            ' "yes_bid": 250, "ts": 1770897990}}',
            "bad_price",
        ),
        ('{"type": "orderbook_delta", "sid": 2, "seq": "x", "msg": {}}', "bad_message"),
        (
            '{"id": 3, "type": "error", "msg": {"code": 6, "msg": "Already subscribed"}}',
            "venue_error",
        ),
        (
            '{"type": "fill", "sid": 1, "msg": {"market_ticker": "KXBTCD-26FEB1217-T67749.99"}}',
            "unknown_event",
        ),
    ],
)
def test_kalshi_malformed_messages_are_rejected_with_a_reason(frame: str, reason: str) -> None:
    codec = kalshi_codec()
    codec.on_connect()
    out = codec.decode(frame, RECEIVED)
    assert out.rejected == [reason] and out.ticks == []


def test_kalshi_lifecycle_determined_resolves_the_market() -> None:
    codec = kalshi_codec(("market_lifecycle_v2",))
    (sub,) = (json.loads(s) for s in codec.on_connect())
    assert "market_tickers" not in sub["params"]  # the channel covers every market
    frame = json.dumps(
        {
            "type": "market_lifecycle_v2",
            "sid": 9,
            "msg": {
                "market_ticker": "KXBTCD-26FEB1217-T67749.99",
                "event_type": "determined",
                "result": "yes",
                "determination_ts": 1770898000,
            },
        }
    )
    (event,) = codec.decode(frame, RECEIVED).events
    assert (event.market, event.kind, event.ts) == (
        "k-KXBTCD-26FEB1217-T67749.99",
        "resolved",
        1770898000,
    )


def test_kalshi_signature_verifies_with_the_public_key() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    from cryptography.hazmat.primitives import serialization

    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    signer = KalshiSigner("key-123", load_private_key(pem))
    headers = signer.headers(1770897976123, "GET", "/trade-api/ws/v2")
    assert headers["KALSHI-ACCESS-KEY"] == "key-123"
    assert headers["KALSHI-ACCESS-TIMESTAMP"] == "1770897976123"
    key.public_key().verify(
        base64.b64decode(headers["KALSHI-ACCESS-SIGNATURE"]),
        b"1770897976123GET/trade-api/ws/v2",
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH),
        hashes.SHA256(),
    )
    assert "BEGIN" not in repr(signer) and "key-123" in repr(signer)
    with pytest.raises(BadKey) as err:
        load_private_key(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    assert "not a key" not in str(err.value)


# --- the generic websocket feed ----------------------------------------------------------


def test_generic_codec_maps_fields_units_and_scale() -> None:
    cfg = WebsocketFeedSettings.model_validate(
        {
            "items": "data",
            "match": {"type": "prices"},
            "fields": {
                "market": "m.id",
                "price": "",
                "bid": "b",
                "ask": "a",
                "depth": "q",
                "timestamp": "t",
            },
            "timestamp_unit": "us",
            "price_scale": 0.01,
            "market_ids": {"7": "fed-hold"},
        }
    )
    codec = WebsocketCodec(cfg)
    assert codec.on_connect() == []
    frame = json.dumps(
        {
            "type": "prices",
            "data": [
                {"m": {"id": 7}, "b": "61", "a": 63, "q": 500, "t": 1770897976000000},
                {"m": {"id": "other"}, "b": 10, "a": 12, "t": 1770897977000000},
            ],
        }
    )
    out = codec.decode(frame, RECEIVED)
    assert out.rejected == []
    first, second = out.ticks
    assert first == Tick("fed-hold", 1770897976.0, 0.62, 0.61, 0.63, 500.0)
    assert second.market == "other" and second.price == pytest.approx(0.11)
    assert codec.decode(json.dumps({"type": "heartbeat"}), RECEIVED).rejected == []
    bad = json.dumps(
        {
            "type": "prices",
            "data": [
                {"m": {"id": 7}, "b": 61, "t": 1},
                "x",
                {"m": {"id": 7}, "b": 61, "a": 300, "t": 1},
            ],
        }
    )
    assert codec.decode(bad, RECEIVED).rejected == ["bad_message", "bad_message", "bad_price"]


def test_generic_codec_iso_times_and_receive_time() -> None:
    cfg = WebsocketFeedSettings.model_validate({"timestamp_unit": "iso"})
    codec = WebsocketCodec(cfg)
    out = codec.decode('{"market": "a", "price": 0.4, "ts": "2026-02-12T12:00:00Z"}', RECEIVED)
    assert one_tick(out.ticks).ts == 1770897600.0
    assert codec.decode(
        '{"market": "a", "price": 0.4, "ts": "2026-02-12T12:00:00"}', RECEIVED
    ).rejected == ["bad_timestamp"]
    codec = WebsocketCodec(WebsocketFeedSettings.model_validate({"timestamp_unit": "receive"}))
    assert one_tick(codec.decode('{"market": "a", "price": 0.4}', RECEIVED).ticks).ts == RECEIVED


# --- backoff -------------------------------------------------------------------------------


def test_backoff_is_capped_exponential_with_jitter() -> None:
    plain = backoff(0.5, 8.0, 2.0, jitter=0.0)
    assert [next(plain) for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    jittered = backoff(0.5, 8.0, 2.0, jitter=0.5, rng=random.Random(7))
    delays = [next(jittered) for _ in range(50)]
    caps = [min(0.5 * 2**i, 8.0) for i in range(50)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, caps, strict=True))
    assert len(set(delays[10:])) > 1  # clients cut off together spread out
    again = backoff(0.5, 8.0, 2.0, jitter=0.5, rng=random.Random(7))
    assert [next(again) for _ in range(50)] == delays  # pure: same seed, same delays
    with pytest.raises(ValueError):
        next(backoff(0.0))
    assert math.isfinite(next(backoff(1.0, 1.0, 1.0, 1.0)))
