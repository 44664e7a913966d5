"""The Polymarket codec on its compiled store (riskd/feeds/polymarket/_store.c)
against the same codec on the reference store (`PyStore`: the codecs' Book and
TickMaker objects): every kind of event the venue sends, good and bad, in random
order, must give the same ticks, rejections, freshness, books and tick-maker memory,
frame after frame, across reconnections and new bindings."""

from __future__ import annotations

import json
import os
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from riskd.feeds.codec import Decoded
from riskd.feeds.polymarket import store as stores
from riskd.feeds.polymarket.codec import Binding, PolymarketCodec, PriceChangeEvent
from riskd.markets import Market
from riskd.ticks import TickColumns

FUZZ = int(os.environ.get("RISKD_FUZZ_EXAMPLES", "0"))
RECEIVED = 1_770_921_600.0
TOKENS = ("111", "222", "333", "444", "555")  # m1 YES/NO, m2 YES/NO, m3 YES only
ASSETS = {
    "111": Binding("m1", no=False),
    "222": Binding("m1", no=True),
    "333": Binding("m2", no=False),
    "444": Binding("m2", no=True),
    "555": Binding("m3", no=False),
}


def test_the_compiled_store_is_built() -> None:
    """riskd is installed the way users install it (pip builds the store): it must be
    there, or every comparison below would set the reference against itself."""
    assert stores.CStore is not None
    assert isinstance(PolymarketCodec(dict(ASSETS)).store, stores.CStore)


def mostly(good: list[str], bad: list[str]) -> st.SearchStrategy[str]:
    """Good values four times as often as the bad ones taken together."""
    return st.sampled_from(good * 4 * len(bad) + bad * len(good))


token = mostly(list(TOKENS), ["999"])
# Prices seen before and not (each fresh text is parsed once, then remembered), the
# venue's "no price" forms, and prices that are not prices. Off the 0.0001 grid the
# compiled store keeps a side's prices as doubles, not ticks: such prices, and -0,
# among the others (the next double above 0.41 too).
off_grid = ["0.12345", "0.41000000000000003", "-0", "0.333333333333", "1e-5"]
price = (
    mostly(["0.41", "0.42", "0.59", "0.5", "0.4100"], ["0", "1", "1.5", "-0.1", "x"])
    | st.integers(1, 9999).map(lambda k: f"{k / 10000:.4f}")
    | mostly(["0.41", "0.4200"], off_grid)
)
top = mostly(["absent", "0.41", "0.59", "0.43", "0.42"], ["", "0", "1", "1.5"])
# Digits alone are read by the compiled store itself (up to 15): the forms around
# that path, which float() reads too, must come out the same.
size = mostly(
    ["100", "0", "-5", "12.5", "3", "1e12", "0005", "+3", " 7", "1_000", "\u0663", "999999999999"],
    ["1e13", "nan", "abc", "1234567890123456", "123456789012345"],
)
stamp = mostly(
    ["1770921590000", "1770921589000", "1770921599999", "1770921591000", "01770921590000"],
    ["1770921610000", "1770921580000", "0", "abc"],
)


def _entry(tok: str, p: str, s: str, side: str, bid: str, ask: str) -> dict[str, Any]:
    e = {"asset_id": tok, "price": p, "size": s, "side": side, "hash": "ab"}
    return e | {k: v for k, v in (("best_bid", bid), ("best_ask", ask)) if v != "absent"}


entry = st.builds(_entry, token, price, size, st.sampled_from(["BUY", "SELL", "buy"]), top, top)
level = st.fixed_dictionaries({"price": price, "size": size})
event = st.one_of(
    st.fixed_dictionaries(
        {
            "event_type": st.just("price_change"),
            "timestamp": stamp,
            "price_changes": st.lists(entry, min_size=1, max_size=4),
        }
    ),
    st.fixed_dictionaries(
        {
            "event_type": st.just("book"),
            "asset_id": token,
            "timestamp": stamp,
            "bids": st.lists(level, max_size=5),
            "asks": st.lists(level, max_size=5),
        },
        optional={"last_trade_price": price},
    ),
    st.fixed_dictionaries(
        {
            "event_type": st.just("price_change"),
            "asset_id": token,
            "timestamp": stamp,
            "price": price,
            "size": size,
            "side": st.sampled_from(["BUY", "SELL"]),
        }
    ),
    st.fixed_dictionaries(
        {
            "event_type": st.just("best_bid_ask"),
            "asset_id": token,
            "timestamp": stamp,
            "best_bid": top,
            "best_ask": top,
        }
    ),
    st.fixed_dictionaries(
        {
            "event_type": st.just("last_trade_price"),
            "asset_id": token,
            "timestamp": stamp,
            "price": price,
        }
    ),
)
# A frame, or a reconnection, or new bindings (m2 dropped, m4 added).
step = st.one_of(
    *[st.one_of(event, st.lists(event, min_size=1, max_size=3)).map(json.dumps)] * 8,
    st.just("connect"),
    st.just("rebind"),
)


def codec_state(codec: PolymarketCodec) -> tuple[Any, ...]:
    books = {
        token: (dict(b.bids), dict(b.asks), b.has_top, b.top_bid, b.top_ask, b.complete)
        for token, b in codec.books.items()
    }
    makers = [codec.store.maker_state(k) for k in range(len(codec.layout.ids))]
    return books, codec.last_trade, makers


REBOUND = [
    Market(id=m, resolves_at=2e9, event_at=2e9, polymarket_yes_token=y, polymarket_no_token=n)
    for m, y, n in (("m1", "111", "222"), ("m3", "555", None), ("m4", "666", "777"))
]


@settings(max_examples=FUZZ or 400, derandomize=not FUZZ, deadline=None)
@given(st.lists(step, min_size=1, max_size=25))
def test_the_compiled_store_decodes_as_the_reference(steps: list[str]) -> None:
    fast = PolymarketCodec(dict(ASSETS))
    slow = PolymarketCodec(dict(ASSETS), compiled=False)
    assert isinstance(slow.store, stores.PyStore)
    for k, text in enumerate(steps):
        if text == "connect":
            assert fast.on_connect() == slow.on_connect()
        elif text == "rebind":
            fast.bind(REBOUND)
            slow.bind(REBOUND)
        else:
            a = fast.decode(text, RECEIVED + k)
            b = slow.decode(text, RECEIVED + k)
            assert a == b, text
        assert codec_state(fast) == codec_state(slow), text


def test_the_compiled_store_takes_the_common_frame_itself() -> None:
    """The bench's frame (both tokens of a market, with the venue's top) is applied by
    the compiled store, not handed back to the Python path."""
    codec = PolymarketCodec(dict(ASSETS))
    doc = {
        "event_type": "price_change",
        "timestamp": "1770921590000",
        "price_changes": [
            _entry("111", "0.41", "100", "BUY", "0.41", "0.43"),
            _entry("222", "0.59", "100", "SELL", "0.57", "0.59"),
        ],
    }
    codec.decode(json.dumps(doc), RECEIVED)  # the prices are seen once
    event = msgspec.json.decode(json.dumps(doc), type=PriceChangeEvent)
    assert codec.store.price_changes(event) is True
    bad = msgspec.json.decode(json.dumps({**doc, "timestamp": "abc"}), type=PriceChangeEvent)
    assert codec.store.price_changes(bad) is False  # the Python path names the reason
    frame = json.dumps({**doc, "timestamp": "abc"})
    assert codec.decode(frame, RECEIVED).rejected == ["bad_timestamp"]


def test_depth_changes_under_a_steady_top_read_as_the_reference() -> None:
    """Levels added and removed within the band while the venue's top stays: depth
    reports (not ticks), each store the same."""
    frames = []
    for k, (qty, px) in enumerate([("100", "0.41"), ("300", "0.40"), ("0", "0.40"), ("5", "0.39")]):
        for tok, side in (("111", "BUY"), ("111", "SELL"), ("222", "BUY")):
            e = _entry(tok, px if side == "BUY" else "0.43", qty, side, "0.41", "0.43")
            doc = {"event_type": "price_change", "timestamp": str(1770921590000 + k)}
            frames.append(json.dumps({**doc, "price_changes": [e]}))
    fast = PolymarketCodec(dict(ASSETS))
    slow = PolymarketCodec(dict(ASSETS), compiled=False)
    depths = 0
    for k, text in enumerate(frames):
        a, b = fast.decode(text, RECEIVED + k), slow.decode(text, RECEIVED + k)
        assert a == b, text
        depths += len(a.depths)
    assert codec_state(fast) == codec_state(slow)
    assert depths >= 2


frame = st.one_of(event, st.lists(event, min_size=1, max_size=3)).map(json.dumps)


@settings(max_examples=FUZZ or 200, derandomize=not FUZZ, deadline=None)
@given(st.lists(st.lists(frame, min_size=1, max_size=6), min_size=1, max_size=6))
def test_frames_read_together_read_as_one_by_one(groups: list[list[str]]) -> None:
    """`decode_batch` (the compiled store: ticks as columns) against `decode` frame by
    frame on the reference store: the same ticks in the same order, the same
    rejections, freshness and books."""
    batched = PolymarketCodec(dict(ASSETS))
    single = PolymarketCodec(dict(ASSETS), compiled=False)
    failed: list[Exception] = []
    for k, group in enumerate(groups):
        frames = [f.encode() for f in group]
        a = batched.decode_batch(frames, RECEIVED + k, failed.append)
        b = Decoded()
        for f in frames:
            b.extend(single.decode(f, RECEIVED + k))
        assert isinstance(a.ticks, TickColumns)
        assert a.ticks == b.ticks
        a.ticks = b.ticks
        assert a == b, group
        assert codec_state(batched) == codec_state(single), group
    assert not failed


def test_a_frame_that_breaks_the_codec_costs_that_frame_only() -> None:
    """A bug (here: a store that raises) on one frame of a batch: reported, counted,
    and the frames around it are read."""
    codec = PolymarketCodec(dict(ASSETS))
    doc = {
        "event_type": "price_change",
        "timestamp": "1770921590000",
        "price_changes": [_entry("111", "0.41", "100", "BUY", "0.41", "0.43")],
    }
    good = json.dumps(doc).encode()
    other = json.dumps({**doc, "price_changes": [_entry("333", "0.41", "1", "BUY", "0.4", "0.5")]})
    failed: list[Exception] = []
    real = codec._price_changes
    codec.store = stores.PyStore(codec.layout)  # a store that takes no event itself

    def broken(event: Any) -> None:
        if event.price_changes[0].asset_id == "111":
            raise RuntimeError("a bug")
        real(event)

    codec._price_changes = broken  # type: ignore[method-assign]
    out = codec.decode_batch([good, other.encode()], RECEIVED, failed.append)
    assert [str(e) for e in failed] == ["a bug"]
    assert out.rejected == ["decode_error"]
    assert [t.market for t in out.ticks] == ["m2"]
