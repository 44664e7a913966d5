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
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import orjson
from msgspec import UNSET, UnsetType

from riskd.feeds.base import MarketEvent
from riskd.feeds.codec import (
    DEFAULT_BAND,
    MAX_FUTURE_S,
    MAX_LEVELS,
    PRICES,
    BadMessage,
    Decoded,
    Quote,
    TickMaker,
    book_depth,
    complement,
    ms_time,
    number,
    probability,
    put_level,
    size,
    text,
)
from riskd.markets import Market

# Known events riskd does not use.
IGNORED_EVENTS = frozenset({"new_market"})
# Text frames that are not JSON: the answer to our PING, and the venue's complaint
# about a bad subscription.
PONG = frozenset({"PONG", "pong", b"PONG", b"pong"})
SIDES = ("BUY", "SELL")


class PriceChangeEntry(msgspec.Struct, forbid_unknown_fields=True):
    """One entry of a batched `price_change`, every field a string as the venue sends
    it. Anything else (a number, null, another field) fails msgspec's validation and
    the frame takes the general path, whose checks name the rejection."""

    asset_id: str
    price: str
    size: str
    side: str
    hash: str = ""
    best_bid: str | UnsetType = UNSET
    best_ask: str | UnsetType = UNSET


class PriceChangeEvent(msgspec.Struct, forbid_unknown_fields=True):
    """The batched `price_change` event (since Sept 2025): nearly every frame."""

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


NO_LEVELS: dict[float, float] = {}


@dataclass(slots=True)
class Book:
    """One token's order book: price -> size per side."""

    # A side with no levels shares one empty dict, never written to (set_level makes
    # the side's own on its first level): most tokens only ever hear of one side.
    bids: dict[float, float] = field(default_factory=lambda: NO_LEVELS)
    asks: dict[float, float] = field(default_factory=lambda: NO_LEVELS)
    # The venue's own best bid/ask when it sends them (authoritative over the levels);
    # two fields, not a tuple: one object less per book, and 200,000 books.
    has_top: bool = False
    top_bid: float | None = None
    top_ask: float | None = None
    complete: bool = False  # a snapshot arrived: the levels are the whole book

    def set_level(self, side: str, price: float, qty: float) -> None:
        bids = side == "BUY"
        levels = self.bids if bids else self.asks
        if levels is NO_LEVELS:
            if qty <= 0:
                return  # removing what is not there
            levels = {}
            if bids:
                self.bids = levels
            else:
                self.asks = levels
        put_level(levels, price, qty, bids)

    def set_top(self, top: tuple[float | None, float | None] | None) -> None:
        self.has_top = top is not None
        self.top_bid, self.top_ask = top or (None, None)

    def quote(self, band: float = DEFAULT_BAND) -> Quote | None:
        """The top of this token's book and its depth within `band` of the mid, or
        None if it is not known."""
        if self.has_top:
            bid, ask = self.top_bid, self.top_ask
        elif self.complete:
            bid = max(self.bids) if self.bids else None
            ask = min(self.asks) if self.asks else None
        else:
            return None
        return Quote(bid, ask, book_depth(bid, ask, self.bids, self.asks, band))


def _venue_top(bid_raw: Any, ask_raw: Any) -> tuple[float | None, float | None]:
    """best_bid/best_ask as sent: 0 means no bid, 1 (or 0) means no ask."""
    bid = probability(bid_raw) if bid_raw is not None and bid_raw != "" else None
    ask = probability(ask_raw) if ask_raw is not None and ask_raw != "" else None
    return (bid if bid else None, ask if ask and ask < 1.0 else None)


def _yes(quote: Quote, no: bool) -> Quote:
    if not no:
        return quote
    return Quote(
        None if quote.ask is None else complement(quote.ask),
        None if quote.bid is None else complement(quote.bid),
        quote.depth,
    )


class PolymarketCodec:
    """Subscribed tokens -> market ids; keeps the books of one connection."""

    def __init__(
        self,
        assets: dict[str, Binding],
        custom_feature_enabled: bool = True,
        max_future_s: float = MAX_FUTURE_S,
        band: float = DEFAULT_BAND,
    ) -> None:
        self.assets: dict[str, Binding] = {}
        self.tokens: dict[str, list[str]] = {}  # market -> its subscribed tokens
        # Depth counts within this much of the mid ([limits] max_slippage; per market
        # where the markets file sets it).
        self.band = band
        self.bands: dict[str, float] = {}
        self._set_assets(assets)
        self.custom_feature_enabled = custom_feature_enabled
        self.books: dict[str, Book] = {}
        self.last_trade: dict[str, float] = {}  # per market, as YES
        self.maker = TickMaker(max_future_s)

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
        self._set_assets(assets)
        self.bands = bands

    def _set_assets(self, assets: dict[str, Binding]) -> None:
        self.assets = assets
        self.tokens = {}
        for token, binding in assets.items():
            self.tokens.setdefault(binding.market, []).append(token)

    def on_connect(self) -> list[str]:
        self.books.clear()
        self.maker.reset()
        if not self.assets:
            return []
        sub: dict[str, Any] = {"assets_ids": sorted(self.assets), "type": "market"}
        if self.custom_feature_enabled:
            sub["custom_feature_enabled"] = True
        return [json.dumps(sub)]

    def decode(self, frame: str | bytes, received: float) -> Decoded:
        out = Decoded()
        self.maker.received = received
        if len(frame) < 16 and frame.strip() in PONG:
            return out
        touched: dict[str, tuple[float, str]] = {}  # market -> (ts, token) of its last update
        try:
            batch = PRICE_CHANGES.decode(frame)
        except msgspec.MsgspecError:
            batch = None
        if batch is not None:
            for event in batch if isinstance(batch, list) else [batch]:
                try:
                    self._price_changes(event, touched)
                except BadMessage as exc:
                    out.rejected.append(exc.reason)
        else:
            try:
                doc = orjson.loads(frame)  # surrounding whitespace is fine
            except ValueError:
                # Not JSON (or not UTF-8): the venue's plain-text errors ("INVALID
                # OPERATION") or garbage.
                out.rejected.append("bad_json")
                return out
            for event in doc if isinstance(doc, list) else [doc]:
                try:
                    self._event(event, out, touched)
                except BadMessage as exc:
                    out.rejected.append(exc.reason)
        for market, (ts, token) in touched.items():
            quote = self._quote(token)
            if quote is None:
                continue
            self.maker.quote(market, ts, quote, self.last_trade.get(market), out)
        out.heard += touched
        return out

    def _quote(self, token: str) -> Quote | None:
        """The market's YES top of book: from this token's book, else its sibling's."""
        binding = self.assets[token]
        band = self.bands.get(binding.market, self.band) if self.bands else self.band
        book = self.books.get(token)
        quote = book.quote(band) if book is not None else None
        if quote is not None:
            return _yes(quote, binding.no)
        for t in self.tokens[binding.market]:
            book = self.books.get(t)
            quote = book.quote(band) if book is not None else None
            if quote is not None:
                return _yes(quote, self.assets[t].no)
        return None

    # --- one event ----------------------------------------------------------------

    def _binding(self, event: dict[str, Any]) -> tuple[str, Binding]:
        token = text(event.get("asset_id"), "asset_id")
        binding = self.assets.get(token)
        if binding is None:
            raise BadMessage("unknown_asset", f"asset {token} is not subscribed")
        return token, binding

    def _event(self, event: Any, out: Decoded, touched: dict[str, tuple[float, str]]) -> None:
        if not isinstance(event, dict):
            raise BadMessage("bad_message", f"expected an object, got {type(event).__name__}")
        kind = event.get("event_type")
        if not isinstance(kind, str):
            raise BadMessage("bad_message", f"event_type {kind!r}")
        if kind == "book":
            self._book(event, touched, out)
        elif kind == "price_change":
            self._price_change(event, touched)
        elif kind == "best_bid_ask":
            token, binding = self._binding(event)
            ts = ms_time(event.get("timestamp"))
            book = self.books.setdefault(token, Book())
            book.set_top(_venue_top(event.get("best_bid"), event.get("best_ask")))
            touched[binding.market] = (ts, token)
        elif kind == "last_trade_price":
            token, binding = self._binding(event)
            ts = ms_time(event.get("timestamp"))
            price = probability(event.get("price"))
            yes_price = complement(price) if binding.no else price
            self.last_trade[binding.market] = yes_price
            touched.pop(binding.market, None)  # the trade tick carries the book too
            out.heard.append(binding.market)
            self.maker.trade(binding.market, ts, yes_price, self._quote(token), out)
        elif kind == "tick_size_change":
            _, binding = self._binding(event)
            ts = ms_time(event.get("timestamp"))
            tick = number(event.get("new_tick_size"), "bad_tick_size")
            if not 0.0 < tick < 1.0:
                raise BadMessage("bad_tick_size", f"tick size {tick}")
            out.events.append(MarketEvent(binding.market, ts, "tick_size", tick_size=tick))
        elif kind == "market_resolved":
            ts = ms_time(event.get("timestamp"))
            tokens = event.get("assets_ids") or []
            if not isinstance(tokens, list):
                raise BadMessage("bad_message", "assets_ids: expected a list")
            tokens = tokens + [event.get("winning_asset_id")]
            markets = {
                self.assets[t].market for t in tokens if isinstance(t, str) and t in self.assets
            }
            if not markets:
                raise BadMessage("unknown_asset", "market_resolved for no subscribed token")
            for market in sorted(markets):
                out.events.append(MarketEvent(market, ts, "resolved"))
        elif kind in IGNORED_EVENTS:
            return
        else:
            raise BadMessage("unknown_event", f"event_type {kind!r}")

    def _book(
        self, event: dict[str, Any], touched: dict[str, tuple[float, str]], out: Decoded
    ) -> None:
        token, binding = self._binding(event)
        ts = ms_time(event.get("timestamp"))
        book = Book(complete=True)
        for side, key in (("BUY", "bids"), ("SELL", "asks")):
            levels = event.get(key)
            if levels is None:
                levels = event.get("buys" if key == "bids" else "sells", [])
            if not isinstance(levels, list):
                raise BadMessage("bad_message", f"{key}: expected a list")
            for level in levels:
                if not isinstance(level, dict):
                    raise BadMessage("bad_message", f"{key}: expected price/size objects")
                book.set_level(side, probability(level.get("price")), size(level.get("size")))
        last = event.get("last_trade_price")
        if last not in (None, ""):
            q = probability(last)
            self.last_trade[binding.market] = complement(q) if binding.no else q
        self.books[token] = book
        touched[binding.market] = (ts, token)
        out.books.append(binding.market)

    def _price_change(self, event: dict[str, Any], touched: dict[str, tuple[float, str]]) -> None:
        ts = ms_time(event.get("timestamp"))
        changes = event.get("price_changes")
        if changes is not None:  # the batched form (since Sept 2025)
            if not isinstance(changes, list):
                raise BadMessage("bad_message", "price_changes: expected a list")
            self._apply_changes(ts, [self._change(change) for change in changes], touched)
            return
        token, binding = self._binding(event)
        if "changes" in event:  # 2024: one token, several levels
            raw = event["changes"]
            if not isinstance(raw, list) or not all(isinstance(c, dict) for c in raw):
                raise BadMessage("bad_message", "changes: expected a list of objects")
            levels = [self._level(c) for c in raw]
        else:  # the single-level form
            levels = [self._level(event)]
        book = self._book_of(token, binding)
        for side, price, qty in levels:
            book.set_level(side, price, qty)
        book.set_top(None)
        touched[binding.market] = (ts, token)

    def _price_changes(
        self, event: PriceChangeEvent, touched: dict[str, tuple[float, str]]
    ) -> None:
        """The batched form, typed by msgspec: the checks of `_change`, in its order,
        with the common case (a price seen before) a dictionary lookup."""
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
        self._apply_changes(ts, parsed, touched)

    def _apply_changes(
        self,
        ts: float,
        parsed: list[
            tuple[str, tuple[str, float, float], tuple[float | None, float | None] | None]
        ],
        touched: dict[str, tuple[float, str]],
    ) -> None:
        """All or nothing: the entries are checked before any book changes."""
        books, assets = self.books, self.assets
        for token, (side, price, qty), top in parsed:
            binding = assets.get(token)
            if binding is None:
                continue  # the other token of a market we follow by one token only
            book = books.get(token) or self._book_of(token, binding)
            levels = book.bids if side == "BUY" else book.asks
            if (
                qty > 0
                and (price in levels or len(levels) < MAX_LEVELS)
                and levels is not NO_LEVELS
            ):
                levels[price] = qty  # put_level's common case
            else:
                book.set_level(side, price, qty)
            if top is None:
                book.has_top, book.top_bid, book.top_ask = False, None, None
            else:
                book.has_top = True
                book.top_bid, book.top_ask = top
            touched[binding.market] = (ts, token)

    def _book_of(self, token: str, binding: Binding) -> Book:
        """The token's book, made on its first update (keyed by the subscribed token's
        own string, not the copy each message carries)."""
        book = self.books.get(token)
        if book is None:
            key = next((t for t in self.tokens[binding.market] if t == token), token)
            book = self.books[key] = Book()
        return book

    @classmethod
    def _change(
        cls, change: Any
    ) -> tuple[str, tuple[str, float, float], tuple[float | None, float | None] | None]:
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
