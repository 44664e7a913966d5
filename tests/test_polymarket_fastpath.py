"""The Polymarket codec's typed path (msgspec structs for batched `price_change`
frames) against its general path (orjson and per-field checks) on the same frames:
the same ticks, rejection reasons, freshness and books, frame after frame."""

from __future__ import annotations

import json
import os
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from riskd.feeds.polymarket import codec as polymarket
from riskd.feeds.polymarket.codec import Binding, PolymarketCodec

FUZZ = int(os.environ.get("RISKD_FUZZ_EXAMPLES", "0"))
RECEIVED = 1_770_921_600.0
TOKENS = ("111", "222", "333", "444")  # two markets, YES and NO; "999" is not subscribed
ASSETS = {
    "111": Binding("m1", no=False),
    "222": Binding("m1", no=True),
    "333": Binding("m2", no=False),
    "444": Binding("m2", no=True),
}
# Mostly what the venue sends, now and then what it must not (a bad number, an empty
# field) or something of another type (a number, null, a list): those frames leave the
# typed path, which is part of what is checked.
odd = st.sampled_from([None, 0.5, 1770921590000, [], {}, True])


def mostly(good: list[str], bad: list[str], others: bool = True) -> st.SearchStrategy[Any]:
    """Each good value about as often as the others taken together."""
    choices = [st.just(g) for g in good for _ in range(2)] + [st.sampled_from(bad)]
    return st.one_of(*choices, odd) if others else st.one_of(*choices)


price = mostly(["0.41", "0.59", "0", "1", "1e-3", ""], ["1.5", "-0.1", "nan", "x"])
ABSENT = "absent"  # a field left out of the entry
maybe_price = st.booleans().flatmap(lambda sent: price if sent else st.just(ABSENT))
entry = st.fixed_dictionaries(
    {
        "asset_id": mostly(list(TOKENS), ["999", ""]),
        "price": price,
        "size": mostly(["100", "0", "-5", "12.5", "1e12"], ["1e13", "nan", "", "abc"], False),
        "side": mostly(["BUY", "SELL"], ["buy", ""], False),
        "best_bid": maybe_price,
        "best_ask": maybe_price,
    },
    optional={"hash": st.just("ab12"), "extra": st.just(1e400)},
).map(lambda e: {k: v for k, v in e.items() if v != ABSENT})
event = st.fixed_dictionaries(
    {
        "event_type": mostly(["price_change"], ["book", "tick_size_change"]),
        "timestamp": mostly(
            ["1770921590000", "1770921599000", "1770921610000"], ["0", "-1", "abc", "1e400", ""]
        ),
        "price_changes": st.one_of(*[st.lists(entry, min_size=1, max_size=3)] * 6, odd),
    },
    optional={"market": st.just("0xabc")},
)
frame = st.one_of(event, st.lists(event, max_size=3)).map(
    lambda doc: json.dumps(doc).replace("Infinity", "1e400")
)


def _general() -> msgspec.json.Decoder[Any]:
    """A decoder that fails on every frame: the codec reads them all the general way."""
    return msgspec.json.Decoder(bytes)


def _books(codec: PolymarketCodec) -> dict[str, Any]:
    return {
        token: (dict(b.bids), dict(b.asks), b.has_top, b.top_bid, b.top_ask, b.complete)
        for token, b in codec.books.items()
    }


@settings(max_examples=FUZZ or 600, derandomize=not FUZZ, deadline=None)
@given(st.lists(frame, min_size=1, max_size=12))
def test_the_typed_path_reads_frames_as_the_general_one(frames: list[str]) -> None:
    _both_ways(frames)


def test_the_bench_frame_takes_the_typed_path() -> None:
    """The frame Polymarket sends nearly always decodes into structs (else the typed
    path would be dead weight)."""
    entry = {"asset_id": "111", "price": "0.41", "size": "100", "side": "BUY", "hash": "ab"}
    doc = {
        "market": "0xabc",
        "price_changes": [{**entry, "best_bid": "0.41", "best_ask": "0.43"}],
        "timestamp": "1770921590000",
        "event_type": "price_change",
    }
    (decoded,) = polymarket.PRICE_CHANGES.decode(json.dumps([doc]))
    assert decoded.price_changes[0].best_ask == "0.43"
    assert isinstance(polymarket.PRICE_CHANGES.decode(json.dumps(doc)), polymarket.PriceChangeEvent)


def _both_ways(frames: list[str]) -> None:
    typed, general = PolymarketCodec(dict(ASSETS)), PolymarketCodec(dict(ASSETS))
    for k, text in enumerate(frames):
        a = typed.decode(text, RECEIVED + k)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(polymarket, "PRICE_CHANGES", _general())
            b = general.decode(text, RECEIVED + k)
        assert a == b, text
        assert _books(typed) == _books(general), text


TOPS = (ABSENT, "", "0", "1", "0.41", "0.59", "1.5", "x")


@pytest.mark.parametrize("token", ["111", "222", "999", ""])
def test_every_venue_top_reads_as_the_general_path_does(token: str) -> None:
    """best_bid/best_ask: absent, empty, 0 (no bid), 1 (no ask), a price, a bad one."""
    frames = []
    for k, (bid, ask) in enumerate((b, a) for b in TOPS for a in TOPS):
        change = {"asset_id": token, "price": "0.5", "size": str(100 + k), "side": "BUY"}
        change |= {key: v for key, v in (("best_bid", bid), ("best_ask", ask)) if v != ABSENT}
        doc = {"event_type": "price_change", "timestamp": str(1770921590000 + k)}
        frames.append(json.dumps({**doc, "price_changes": [change]}))
    _both_ways(frames)
