"""The compiled store's reader of plain `price_change` frames (riskd/feeds/polymarket/
_scan.c) against the typed path it stands in front of (msgspec's structs, then the
codec's general path for what they do not take): the same ticks, rejections,
freshness and books, frame after frame, for frames the reader takes and frames it
must decline (escapes, repeated keys, numbers, other keys, whitespace, non-ASCII,
cut-off frames)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from riskd.feeds.polymarket import codec as polymarket
from riskd.feeds.polymarket import store as stores
from riskd.feeds.polymarket.codec import Binding, PolymarketCodec
from tests.test_polymarket_store import codec_state

FUZZ = int(os.environ.get("RISKD_FUZZ_EXAMPLES", "0"))
RECEIVED = 1_770_921_600.0
ASSETS = {
    "111": Binding("m1", no=False),
    "222": Binding("m1", no=True),
    "333": Binding("m2", no=False),
    "444": Binding("m2", no=True),
    "11": Binding("m3", no=False),  # a prefix of another token
    "\u0661\u0662": Binding("m4", no=False),  # not ASCII: never read from bytes
}
PLAIN_TOKENS = ["111", "222", "333", "444", "11", "999", "1111"]  # 999, 1111: not followed


def _pair(assets: dict[str, Binding]) -> tuple[PolymarketCodec, PolymarketCodec]:
    scanned, typed = PolymarketCodec(dict(assets)), PolymarketCodec(dict(assets))
    assert isinstance(scanned.store, stores.CStore), "the compiled store is not built"
    typed.store.scan = False  # type: ignore[union-attr]
    return scanned, typed


def _same(groups: list[list[bytes]], assets: dict[str, Binding] = ASSETS) -> None:
    scanned, typed = _pair(assets)
    failed: list[Exception] = []
    for k, frames in enumerate(groups):
        a = scanned.decode_batch(frames, RECEIVED + k, failed.append)
        b = typed.decode_batch(frames, RECEIVED + k, failed.append)
        assert a.ticks == b.ticks, frames
        assert a == b, frames
        assert codec_state(scanned) == codec_state(typed), frames
    assert not failed


class Values:
    """A field's good texts (the plain form the reader takes) and bad ones."""

    def __init__(self, good: list[Any], bad: list[Any]) -> None:
        self.good, self.bad = good, bad

    def of(self, clean: bool) -> st.SearchStrategy[Any]:
        """Good only in a clean frame; else good as often as bad."""
        if clean:
            return st.sampled_from(self.good)
        return st.sampled_from(self.good * len(self.bad) + self.bad * len(self.good))


odd = [None, 0.5, 7, [], {}, True, "caf\u00e9", 'a"b', "a\\b", "a\nb"]
ABSENT = "absent"
PRICE = Values(
    ["0.41", "0.59", "0.5", ".5", "0.4100", "1.", "00.43", "0", "1"],
    ["1.5", "-0.1", "1e-3", "0.1234567890123456", "x", "", "0.", ".", *odd],
)
SIZE = Values(
    ["100", "0", "12.5", "0005", "999999999999", "1000000000000.0"],
    ["1e12", "1000000000001", "-5", "1e13", "nan", "1234567890123456", "12..5", "+3", " 7", *odd],
)
STAMP = Values(
    ["1770921590000", "1770921591000", "1770921599999", "01770921590000", "1770921610000"],
    ["0", "abc", "1770921590000.5", "17709215900000000", *odd],
)
TOP = Values([ABSENT, "0.41", "0.59", "0.43", "", "0", "1"], ["1.5", "x", "-0", *odd])
SIDE = Values(["BUY", "SELL"], ["buy", "SELLS", "", *odd])
TOKEN = Values(PLAIN_TOKENS, ["", "\u0661\u0662", *odd])
HASH = Values([ABSENT, "0xab12", ""], odd)
MARKET = Values([ABSENT, "0xabc"], odd)
KIND = Values(["price_change"], ["price_changes", "book", *odd])


def _entry(tok: str, p: str, s: str, side: str, bid: str, ask: str, h: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"asset_id": tok, "price": p, "size": s, "side": side}
    if h != ABSENT:
        e["hash"] = h
    return e | {k: v for k, v in (("best_bid", bid), ("best_ask", ask)) if v != ABSENT}


def event(clean: bool) -> st.SearchStrategy[dict[str, Any]]:
    entry = st.builds(_entry, *(v.of(clean) for v in (TOKEN, PRICE, SIZE, SIDE, TOP, TOP, HASH)))
    return st.builds(
        lambda kind, ts, changes, market, extra: (
            {
                "event_type": kind,
                "timestamp": ts,
                "price_changes": changes,
            }
            | ({} if market == ABSENT else {"market": market})
            | ({} if extra == ABSENT else {"extra": extra})
        ),
        KIND.of(clean),
        STAMP.of(clean),
        st.lists(entry, min_size=1 if clean else 0, max_size=4),
        MARKET.of(clean),
        st.just(ABSENT) if clean else st.sampled_from([ABSENT, 1, "x"]),
    )


@st.composite
def frame(draw: st.DrawFn) -> bytes:
    """A document in one of the ways JSON can be written, now and then altered the way
    a frame can differ from the plain form: a field's value replaced, a key repeated,
    a string written with escapes, the frame cut short or followed by bytes."""
    clean = draw(st.booleans())  # half the frames in the plain form the reader takes
    one = event(clean)
    doc = draw(st.one_of(one, st.lists(one, min_size=1 if clean else 0, max_size=3)))
    rng = random.Random(draw(st.integers(0, 2**32)))
    for ev in doc if isinstance(doc, list) else [doc]:
        if rng.random() < 0.5:  # keys in another order
            items = list(ev.items())
            rng.shuffle(items)
            ev.clear()
            ev.update(items)
    seps = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t")]))
    text = json.dumps(doc, separators=seps, ensure_ascii=clean or draw(st.booleans()))
    changes = ["escape", "repeat", "cut", "tail", "pad"]
    change = "none" if clean else draw(st.sampled_from(["none", *changes]))
    if change == "escape" and '"1' in text:  # "111" as "\u0031\u0031\u0031"
        text = text.replace('"1', '"\\u0031', 1)
    elif change == "repeat" and '"side"' in text:
        text = text.replace('"side"', '"side":"SELL","side"', 1)
    elif change == "cut":
        text = text[: rng.randrange(len(text))]
    elif change == "tail":
        text += draw(st.sampled_from(["}", "]", "x", ",", " \n"]))
    elif change == "pad":
        text = "\r\n " + text
    return text.encode()


@settings(max_examples=FUZZ or 500, derandomize=not FUZZ, deadline=None)
@given(st.lists(st.lists(frame(), min_size=1, max_size=5), min_size=1, max_size=6))
def test_frames_read_from_bytes_read_as_the_typed_path(groups: list[list[bytes]]) -> None:
    _same(groups)


TYPED = polymarket.PRICE_CHANGES


class Counting:
    """PRICE_CHANGES, counting the frames handed to it."""

    def __init__(self) -> None:
        self.frames = 0

    def decode(self, frame: bytes) -> Any:
        self.frames += 1
        return TYPED.decode(frame)


def _plain(tok: str = "111", **extra: str) -> dict[str, Any]:
    return {
        "market": "0xabc",
        "price_changes": [
            {"asset_id": tok, "price": "0.41", "size": "100", "side": "BUY", "hash": "ab"}
            | {"best_bid": "0.41", "best_ask": "0.43"},
            {"asset_id": "222", "price": "0.59", "size": "100", "side": "SELL", "hash": "cd"}
            | {"best_bid": "0.57", "best_ask": "0.59"},
        ],
        "timestamp": "1770921590000",
        "event_type": "price_change",
    } | extra


@pytest.mark.parametrize(
    ("text", "read_from_bytes"),
    [
        (json.dumps(_plain(), separators=(",", ":")), True),  # the venue's own form
        (json.dumps([_plain(), _plain()], indent=2), True),
        (json.dumps(_plain()).replace('"111"', '"\\u0031\\u0031\\u0031"'), False),
        (json.dumps(_plain()).replace('"100"', "100", 1), False),
        (json.dumps(_plain(extra="1")), False),
        (json.dumps(_plain()).replace('"side"', '"side": "SELL", "side"', 1), False),
        (json.dumps(_plain(market="\u00e9"), ensure_ascii=False), False),
        (json.dumps(_plain()) + " x", False),
    ],
)
def test_only_the_plain_form_is_read_from_bytes(text: str, read_from_bytes: bool) -> None:
    """The plain frame never reaches msgspec; every other one does, and reads the same."""
    counting = Counting()
    scanned, typed = _pair(ASSETS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(polymarket, "PRICE_CHANGES", counting)
        a = scanned.decode_batch([text.encode()], RECEIVED, pytest.fail)
    assert (counting.frames == 0) is read_from_bytes
    assert a == typed.decode_batch([text.encode()], RECEIVED, pytest.fail)
    assert codec_state(scanned) == codec_state(typed)


def test_many_tokens_each_find_their_market() -> None:
    """Thousands of 77-digit token ids (the venue's), with ids that are prefixes of one
    another: each frame's tick lands on its own market, as on the typed path."""
    rng = random.Random(7)
    assets: dict[str, Binding] = {}
    for k in range(3000):
        yes = str(rng.randrange(10**76, 10**77))
        assets[yes] = Binding(f"m{k}", no=False)
        assets[yes[: 1 + k % 76]] = Binding(f"p{k}", no=False)  # prefixes of other ids
    tokens = list(assets)
    frames = []
    for k, tok in enumerate(tokens + ["0" * 77, "12345"]):
        doc = _plain(tok) | {"timestamp": str(1770921590000 + k)}
        doc["price_changes"] = doc["price_changes"][:1]
        frames.append(json.dumps(doc, separators=(",", ":")).encode())
    _same([frames[i : i + 64] for i in range(0, len(frames), 64)], assets)
    scanned, _ = _pair(assets)
    out = scanned.decode_batch(frames[: len(tokens)], RECEIVED, pytest.fail)
    assert [t.market for t in out.ticks] == [assets[tok].market for tok in tokens]


def test_the_venues_batched_frame_is_read_from_bytes() -> None:
    """The batched price_change of tests/fixtures/ws (the venue's documented shape, as
    sent and pretty-printed like Polymarket's own samples) skips msgspec."""
    fixture = Path(__file__).parent / "fixtures" / "ws" / "polymarket_events.jsonl"
    line = next(t for t in fixture.read_text().splitlines() if '"price_changes"' in t)
    doc = json.loads(line)
    tokens = [c["asset_id"] for c in doc["price_changes"]]
    assets = {tok: Binding("m1", no=k > 0) for k, tok in enumerate(dict.fromkeys(tokens))}
    for text in (line, json.dumps(doc, indent=2)):
        counting = Counting()
        scanned, typed = _pair(assets)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(polymarket, "PRICE_CHANGES", counting)
            a = scanned.decode_batch([text.encode()], RECEIVED, pytest.fail)
        assert counting.frames == 0
        assert a == typed.decode_batch([text.encode()], RECEIVED, pytest.fail)
        assert len(a.ticks) == 1
        assert codec_state(scanned) == codec_state(typed)


def _raw(doc: dict[str, Any], bent: str) -> bytes:
    """The frame of `doc` in the venue's compact form, `bent` in it as is (unescaped)."""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    return text.replace(json.dumps(bent, ensure_ascii=False)[1:-1], bent).encode()


@pytest.mark.parametrize("odd", ['"', "\\", "\x1f", "\x7f", "\u00e9", "\t"])
def test_an_odd_byte_anywhere_in_a_string_is_seen(odd: str) -> None:
    """The reader looks at a string 16 or 8 bytes at a time while that many are left in
    the frame, then byte by byte: a quote, a backslash, a control byte, DEL or non-ASCII
    at any place of a 77-digit id (in the middle of the frame) or of a market id of any
    length up to 40 (the frame's last value: its end falls in each of those steps) is
    seen there, and the frame reads as on the typed path. An unescaped quote or control
    byte is not JSON: both paths reject that frame alike."""
    tok = "4" * 77
    assets = ASSETS | {tok: Binding("m5", no=False)}
    frames = [_raw(_plain(tok[:at] + odd + tok[at:]), odd) for at in range(78)]
    for n in range(41):
        for at in range(n + 1):
            doc = _plain(tok, market="4" * at + odd + "4" * (n - at))
            last = {k: doc[k] for k in ("event_type", "timestamp", "price_changes", "market")}
            frames.append(_raw(last, odd))
    frames.append(json.dumps(_plain(tok, market=tok), separators=(",", ":")).encode())
    _same([frames[i : i + 8] for i in range(0, len(frames), 8)], assets)
