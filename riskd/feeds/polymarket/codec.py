"""Polymarket CLOB market channel: frames in, YES ticks and venue events out. Pure.

One book per subscribed asset (token), from `book` snapshots and `price_change`
updates (the batched `price_changes[]` form with `best_bid`/`best_ask`, and the
older single-level forms); `best_bid_ask` and `last_trade_price` events;
`tick_size_change` and `market_resolved` become venue events. Numbers arrive as
strings and timestamps in milliseconds. Both tokens of a market map to its id: a
NO price q is a YES probability 1 - q (the NO bid is 1 - the YES ask).
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import numpy as np
import orjson
from msgspec import UNSET, UnsetType

from riskd.feeds.base import HeardRows, MarketEvent, Tick
from riskd.feeds.codec import (
    DEFAULT_BAND,
    MAX_FUTURE_S,
    PRICES,
    BadMessage,
    Decoded,
    complement,
    ms_time,
    number,
    probability,
    size,
    text,
)
from riskd.feeds.polymarket.store import Book, CStore, Layout, Store, carry, make_store
from riskd.markets import Market
from riskd.ticks import TickColumns

# Known events riskd does not use.
IGNORED_EVENTS = frozenset({"new_market"})
# Text frames that are not JSON: the answer to our PING, and the venue's complaint
# about a bad subscription.
PONG = frozenset({"PONG", "pong", b"PONG", b"pong"})
SIDES = ("BUY", "SELL")


class PriceChangeEntry(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """One entry of a batched `price_change`, every field a string as the venue sends
    it. Anything else (a number, null, another field) fails msgspec's validation and
    the frame takes the general path, whose checks name the rejection. Outside the
    garbage collector's lists (`gc=False`): strings alone cannot make a cycle, and
    hundreds of thousands of them a second would set off its collections."""

    asset_id: str
    price: str
    size: str
    side: str
    hash: str = ""
    best_bid: str | UnsetType = UNSET
    best_ask: str | UnsetType = UNSET


class PriceChangeEvent(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The batched `price_change` event (since Sept 2025): nearly every frame. Its
    list holds entries only, so no cycle either."""

    event_type: Literal["price_change"]
    timestamp: str
    price_changes: list[PriceChangeEntry]
    market: str = ""


# Typed while parsing, in C: only frames made of batched price changes with string
# fields decode; every other frame is parsed again by orjson and read by `_event`.
# Unknown fields are refused so that no number is skipped unread (msgspec takes
# 1e400 as inf where orjson refuses the frame).
# A checked entry: token, (side, price, size), the venue's top (None: none sent).
Change = tuple[str, tuple[str, float, float], tuple[float | None, float | None] | None]
PRICE_CHANGES = msgspec.json.Decoder(list[PriceChangeEvent] | PriceChangeEvent)


@dataclass(frozen=True, slots=True)
class Binding:
    market: str
    no: bool  # the NO token: its prices are 1 - YES


def _venue_top(bid_raw: Any, ask_raw: Any) -> tuple[float | None, float | None]:
    """best_bid/best_ask as sent: 0 means no bid, 1 (or 0) means no ask."""
    bid = probability(bid_raw) if bid_raw is not None and bid_raw != "" else None
    ask = probability(ask_raw) if ask_raw is not None and ask_raw != "" else None
    return (bid if bid else None, ask if ask and ask < 1.0 else None)


class Books(Mapping[str, Book]):
    """The codec's books by token, read-only copies out of its store (for tests and
    inspection; the codec itself works on the store)."""

    def __init__(self, codec: PolymarketCodec) -> None:
        self.codec = codec

    def __getitem__(self, token: str) -> Book:
        state = self.codec.store.book(self.codec.index[token])
        if state is None:
            raise KeyError(token)
        bids, asks, has_top, top_bid, top_ask, complete = state
        return Book(bids, asks, has_top, top_bid, top_ask, complete)

    def __iter__(self) -> Iterator[str]:
        store = self.codec.store
        return (token for token, k in self.codec.index.items() if store.has_book(k))

    def __len__(self) -> int:
        return sum(1 for _ in self)


class PolymarketCodec:
    """Subscribed tokens -> market ids; keeps the books of one connection in its
    store (riskd/feeds/polymarket/store.py), tokens and markets by index."""

    def __init__(
        self,
        assets: dict[str, Binding],
        custom_feature_enabled: bool = True,
        max_future_s: float = MAX_FUTURE_S,
        band: float = DEFAULT_BAND,
        compiled: bool = True,
    ) -> None:
        # Depth counts within this much of the mid ([limits] max_slippage; per market
        # where the markets file sets it).
        self.band = band
        self.custom_feature_enabled = custom_feature_enabled
        self.max_future_s = max_future_s
        self.compiled = compiled  # False: the reference store (tests)
        self.layout = Layout([], {}, array("i"), bytearray(), [])
        self.store: Store = make_store(self.layout, max_future_s, compiled)
        self._sink: list[Tick] | None = None  # where the frame's ticks go (None: rows)
        self._set_assets(assets, {})
        self.books = Books(self)

    @classmethod
    def for_markets(
        cls,
        markets: Iterable[Market],
        custom_feature_enabled: bool = True,
        max_future_s: float = MAX_FUTURE_S,
        band: float = DEFAULT_BAND,
    ) -> PolymarketCodec:
        codec = cls({}, custom_feature_enabled, max_future_s, band)
        codec.bind(markets)
        return codec

    def bind(self, markets: Iterable[Market]) -> None:
        """Follow these markets' tokens (from the next connection on)."""
        assets: dict[str, Binding] = {}
        bands: dict[str, float] = {}
        for m in markets:
            if m.max_slippage is not None:
                bands[m.id] = m.max_slippage
            if m.polymarket_yes_token:
                assets[m.polymarket_yes_token] = Binding(m.id, no=False)
            if m.polymarket_no_token:
                assets[m.polymarket_no_token] = Binding(m.id, no=True)
        self._set_assets(assets, bands)

    def _set_assets(self, assets: dict[str, Binding], bands: dict[str, float]) -> None:
        """A new layout and store; what the old store knew of the markets and tokens
        in both is carried over."""
        markets: dict[str, int] = {}
        index: dict[str, int] = {}
        tok_market, tok_no = array("i"), bytearray()
        for token, binding in assets.items():
            index[token] = len(tok_market)
            tok_market.append(markets.setdefault(binding.market, len(markets)))
            tok_no.append(binding.no)
        ids = list(markets)
        layout = Layout(ids, index, tok_market, tok_no, [bands.get(m, self.band) for m in ids])
        store = make_store(layout, self.max_future_s, self.compiled)
        carry(self.store, self.layout, store, layout)
        self.layout, self.store, self.index = layout, store, index
        self.tok_market, self.tok_no = tok_market, tok_no

    @property
    def assets(self) -> dict[str, Binding]:
        """token -> its market and side (built on demand)."""
        ids = self.layout.ids
        return {
            token: Binding(ids[self.tok_market[k]], no=bool(self.tok_no[k]))
            for token, k in self.index.items()
        }

    @property
    def last_trade(self) -> dict[str, float]:
        """market -> its last trade as YES (built on demand)."""
        trades = ((market, self.store.last_trade(k)) for k, market in enumerate(self.layout.ids))
        return {market: price for market, price in trades if price is not None}

    def on_connect(self) -> list[str]:
        self.store.clear()
        if not self.index:
            return []
        sub: dict[str, Any] = {"assets_ids": sorted(self.index), "type": "market"}
        if self.custom_feature_enabled:
            sub["custom_feature_enabled"] = True
        return [json.dumps(sub)]

    def decode(self, frame: str | bytes, received: float) -> Decoded:
        out = Decoded()
        self.store.received = received
        self._sink = out.ticks
        self._frame(frame, out)
        return out

    def decode_batch(
        self, frames: list[bytes], received: float, failed: Callable[[Exception], None]
    ) -> Decoded:
        """Frames received together, in order, into one Decoded whose ticks are columns
        (`TickColumns`) and markets heard rows (`HeardRows`) when the store is
        compiled: no Python object per tick. A frame
        whose decoding raises (a bug) is reported to `failed` and counted as
        `decode_error`; the others are kept."""
        out = Decoded()
        self.store.received = received
        compiled = self.store if isinstance(self.store, CStore) else None
        self._sink = None if compiled is not None else out.ticks
        k, events, at = 0, None, 0
        while k < len(frames):
            if compiled is not None:  # as far as it takes the frames whole
                k, events, at = compiled.frames(
                    frames, k, PRICE_CHANGES.decode, out.rejected, out.depths, None
                )
                if k == len(frames):
                    break
            try:
                self._frame(frames[k], out, events, at)
            except Exception as exc:  # noqa: BLE001 - one hostile frame costs that frame
                failed(exc)
                out.rejected.append("decode_error")
            k += 1
        if compiled is not None:
            ids = self.layout.ids
            out.ticks = TickColumns.of_rows(ids, compiled.take_rows())  # type: ignore[assignment]
            out.heard = HeardRows(ids, np.frombuffer(compiled.take_heard(), np.int32))  # type: ignore[assignment]
        return out

    def _frame(
        self, frame: str | bytes, out: Decoded, events: list[Any] | None = None, at: int = 0
    ) -> None:
        """One frame's events (from `events[at]` on when the compiled store already
        took the ones before), then the ticks of the markets it touched."""
        store = self.store
        if events is None:
            if len(frame) < 16 and frame.strip() in PONG:
                return
            try:
                batch = PRICE_CHANGES.decode(frame)
            except msgspec.MsgspecError:
                batch = None
            events = None if batch is None else batch if isinstance(batch, list) else [batch]
        try:
            if events is not None:
                for event in events[at:]:
                    if store.price_changes(event):  # compiled: the common case, done
                        continue
                    try:
                        self._price_changes(event)
                    except BadMessage as exc:
                        out.rejected.append(exc.reason)
            elif not self._events(frame, out):
                return
            # The markets touched: a tick each where the top moved, then heard.
            # A batch on the compiled store (no sink): heard as rows, as the ticks.
            heard = out.heard if self._sink is not None else None
            store.finish(self._sink, out.rejected, out.depths, heard)
        except BaseException:
            store.drop()  # what this frame touched is not news for the next
            raise

    def _events(self, frame: str | bytes, out: Decoded) -> bool:
        """Any other frame, parsed by orjson: False if it is not JSON."""
        try:
            doc = orjson.loads(frame)  # surrounding whitespace is fine
        except ValueError:
            # Not JSON (or not UTF-8): the venue's plain-text errors ("INVALID
            # OPERATION") or garbage.
            out.rejected.append("bad_json")
            return False
        for event in doc if isinstance(doc, list) else [doc]:
            try:
                self._event(event, out)
            except BadMessage as exc:
                out.rejected.append(exc.reason)
        return True

    # --- one event ----------------------------------------------------------------

    def _binding(self, event: dict[str, Any]) -> tuple[int, int]:
        """(token, market) indexes of the event's asset."""
        token = text(event.get("asset_id"), "asset_id")
        k = self.index.get(token)
        if k is None:
            raise BadMessage("unknown_asset", f"asset {token} is not subscribed")
        return k, self.tok_market[k]

    def _event(self, event: Any, out: Decoded) -> None:
        if not isinstance(event, dict):
            raise BadMessage("bad_message", f"expected an object, got {type(event).__name__}")
        kind = event.get("event_type")
        if not isinstance(kind, str):
            raise BadMessage("bad_message", f"event_type {kind!r}")
        if kind == "book":
            self._book(event, out)
        elif kind == "price_change":
            self._price_change(event)
        elif kind == "best_bid_ask":
            token, _ = self._binding(event)
            ts = ms_time(event.get("timestamp"))
            self.store.set_top(token, _venue_top(event.get("best_bid"), event.get("best_ask")))
            self.store.touch(token, ts)
        elif kind == "last_trade_price":
            self._trade(event, out)
        elif kind == "tick_size_change":
            _, market = self._binding(event)
            ts = ms_time(event.get("timestamp"))
            tick = number(event.get("new_tick_size"), "bad_tick_size")
            if not 0.0 < tick < 1.0:
                raise BadMessage("bad_tick_size", f"tick size {tick}")
            out.events.append(MarketEvent(self.layout.ids[market], ts, "tick_size", tick_size=tick))
        elif kind == "market_resolved":
            ts = ms_time(event.get("timestamp"))
            tokens = event.get("assets_ids") or []
            if not isinstance(tokens, list):
                raise BadMessage("bad_message", "assets_ids: expected a list")
            tokens = tokens + [event.get("winning_asset_id")]
            ids, index = self.layout.ids, self.index
            markets = {
                ids[self.tok_market[index[t]]] for t in tokens if isinstance(t, str) and t in index
            }
            if not markets:
                raise BadMessage("unknown_asset", "market_resolved for no subscribed token")
            for market_id in sorted(markets):
                out.events.append(MarketEvent(market_id, ts, "resolved"))
        elif kind in IGNORED_EVENTS:
            return
        else:
            raise BadMessage("unknown_event", f"event_type {kind!r}")

    def _trade(self, event: dict[str, Any], out: Decoded) -> None:
        token, market = self._binding(event)
        ts = ms_time(event.get("timestamp"))
        price = probability(event.get("price"))
        yes_price = complement(price) if self.tok_no[token] else price
        store = self.store
        store.set_last_trade(market, yes_price)
        store.untouch(market)  # the trade tick carries the book too
        if self._sink is not None:
            out.heard.append(self.layout.ids[market])
        else:  # a batch on the compiled store: heard as rows (`decode_batch`)
            store.hear(market)
        store.trade(market, ts, yes_price, store.quote(token), self._sink, out.rejected, out.depths)

    def _book(self, event: dict[str, Any], out: Decoded) -> None:
        token, market = self._binding(event)
        ts = ms_time(event.get("timestamp"))
        sides: list[tuple[bool, list[tuple[float, float]]]] = []
        for buy, key in ((True, "bids"), (False, "asks")):
            levels = event.get(key)
            if levels is None:
                levels = event.get("buys" if key == "bids" else "sells", [])
            if not isinstance(levels, list):
                raise BadMessage("bad_message", f"{key}: expected a list")
            parsed = []
            for level in levels:
                if not isinstance(level, dict):
                    raise BadMessage("bad_message", f"{key}: expected price/size objects")
                parsed.append((probability(level.get("price")), size(level.get("size"))))
            sides.append((buy, parsed))
        last = event.get("last_trade_price")
        if last not in (None, ""):
            q = probability(last)
            self.store.set_last_trade(market, complement(q) if self.tok_no[token] else q)
        # Checked whole: the snapshot replaces the book.
        self.store.new_book(token, True)
        for buy, parsed in sides:
            for price, qty in parsed:
                self.store.set_level(token, buy, price, qty)
        self.store.touch(token, ts)
        out.books.append(self.layout.ids[market])

    def _price_change(self, event: dict[str, Any]) -> None:
        ts = ms_time(event.get("timestamp"))
        changes = event.get("price_changes")
        if changes is not None:  # the batched form (since Sept 2025)
            if not isinstance(changes, list):
                raise BadMessage("bad_message", "price_changes: expected a list")
            self._apply_changes(ts, [self._change(change) for change in changes])
            return
        token, _ = self._binding(event)
        if "changes" in event:  # 2024: one token, several levels
            raw = event["changes"]
            if not isinstance(raw, list) or not all(isinstance(c, dict) for c in raw):
                raise BadMessage("bad_message", "changes: expected a list of objects")
            levels = [self._level(c) for c in raw]
        else:  # the single-level form
            levels = [self._level(event)]
        for side, price, qty in levels:
            self.store.set_level(token, side == "BUY", price, qty)
        self.store.set_top(token, None)
        self.store.touch(token, ts)

    def _price_changes(self, event: PriceChangeEvent) -> None:
        """The batched form, typed by msgspec, when the compiled store did not take it
        (the reference store, a price not seen before, a bad field): the checks of
        `_change`, in its order, with a price seen before one dictionary lookup."""
        ts = ms_time(event.timestamp)
        parsed: list[Change] = []
        seen = PRICES.get
        for change in event.price_changes:
            token, side, bid_raw, ask_raw = (
                change.asset_id,
                change.side,
                change.best_bid,
                change.best_ask,
            )
            if not token:
                text(token, "asset_id")
            if side != "BUY" and side != "SELL":
                raise BadMessage("bad_message", f"side {side!r}")
            price = seen(change.price)
            if price is None:
                price = probability(change.price)
            level = (side, price, size(change.size))
            if bid_raw is UNSET and ask_raw is UNSET:
                parsed.append((token, level, None))
                continue
            # _venue_top: "" or absent is no price, 0 no bid, 0 or 1 no ask.
            bid = ask = None
            if bid_raw is not UNSET and bid_raw != "":
                bid = seen(bid_raw) or probability(bid_raw) or None
            if ask_raw is not UNSET and ask_raw != "":
                ask = seen(ask_raw) or probability(ask_raw)
                ask = ask if ask < 1.0 else None
            parsed.append((token, level, (bid, ask or None)))
        self._apply_changes(ts, parsed)

    def _apply_changes(self, ts: float, parsed: list[Change]) -> None:
        """All or nothing: the entries are checked before any book changes."""
        store, index = self.store, self.index
        for token, (side, price, qty), top in parsed:
            k = index.get(token)
            if k is None:
                continue  # the other token of a market we follow by one token only
            store.set_level(k, side == "BUY", price, qty)
            store.set_top(k, top)
            store.touch(k, ts)

    @classmethod
    def _change(cls, change: Any) -> Change:
        """One entry of a batched price_change, checked: token, level, and the venue's
        top (None when the entry has none)."""
        if type(change) is not dict:
            raise BadMessage("bad_message", "price_changes: expected objects")
        token = change.get("asset_id")
        if type(token) is not str or not token:
            token = text(token, "asset_id")
        level = cls._level(change)
        if "best_bid" not in change and "best_ask" not in change:
            return token, level, None
        return token, level, _venue_top(change.get("best_bid"), change.get("best_ask"))

    @staticmethod
    def _level(change: dict[str, Any]) -> tuple[str, float, float]:
        side = change.get("side")
        if side not in SIDES:
            raise BadMessage("bad_message", f"side {side!r}")
        return side, probability(change.get("price")), size(change.get("size"))
