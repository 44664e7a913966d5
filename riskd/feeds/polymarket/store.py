"""A Polymarket codec's state: one book per subscribed token, and the tick maker's
memory per market, addressed by index. Pure.

Two implementations of one interface: `PyStore`, the reference, on the codecs'
`Book` and `TickMaker` objects; and `_store.Store`, compiled from `_store.c` when
riskd is installed, the same state in C arrays (a few hundred bytes per market
instead of a few kilobytes of Python objects) with the batched `price_change` read
without a Python object per entry. `make_store` takes the compiled one when it is
there. tests/test_polymarket_store.py runs both on the same frames.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Any, Protocol

from msgspec import UNSET

from riskd.feeds.base import Tick, make_tick
from riskd.feeds.codec import (
    MAX_FUTURE_S,
    MAX_LEVELS,
    MAX_MARKETS,
    PRICES,
    Decoded,
    Quote,
    TickMaker,
    book_depth,
    complement,
    put_level,
)

try:
    from riskd.feeds.polymarket._store import Store as CStore
except ImportError:  # a source tree without the compiled part: the reference serves
    CStore = None

# (bid, ask, depth), None where absent
YesQuote = tuple[float | None, float | None, float | None]
# Tick maker state of one market: (quoted, bid, ask, depth, ts, last trade)
MakerState = tuple[bool, float | None, float | None, float | None, float | None, float | None]


NO_LEVELS: dict[float, float] = {}


@dataclass(slots=True)
class Book:
    """One token's order book in the reference store: price -> size per side."""

    # A side with no levels shares one empty dict, never written to (set_level makes
    # the side's own on its first level): most tokens only ever hear of one side.
    bids: dict[float, float] = field(default_factory=lambda: NO_LEVELS)
    asks: dict[float, float] = field(default_factory=lambda: NO_LEVELS)
    # The venue's own best bid/ask when it sends them (authoritative over the levels).
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

    def quote(self, band: float) -> Quote | None:
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


@dataclass(frozen=True, slots=True)
class Layout:
    """What a store is built on: market ids, and each token's market and side."""

    ids: list[str]  # market index -> id
    index: dict[str, int]  # token -> token index
    tok_market: array[int]  # token index -> market index
    tok_no: bytearray  # 1: the NO token, whose prices are 1 - YES
    bands: list[float]  # per market: depth counts within this much of the mid

    def market_tokens(self) -> tuple[list[int], list[int]]:
        """Each market's tokens in index order, as (first, tokens): market k's are
        tokens[first[k]:first[k + 1]]."""
        by_market: list[list[int]] = [[] for _ in self.ids]
        for tok, m in enumerate(self.tok_market):
            by_market[m].append(tok)
        first, tokens = [0], []
        for toks in by_market:
            tokens += toks
            first.append(len(tokens))
        return first, tokens


class Store(Protocol):
    received: float
    max_future_s: float

    def price_changes(self, event: Any) -> bool: ...
    def finish(
        self,
        ticks: list[Tick] | None,
        rejected: list[str],
        depths: dict[str, float],
        heard: list[str] | None,
    ) -> None:
        """The ticks of the markets touched since the last call, into `ticks` (the
        compiled store: None, as rows for `take_rows`); then heard (the compiled store:
        None, as rows for `take_heard`)."""

    def hear(self, market: int) -> None:
        """A market heard, as a row for `take_heard` (the compiled store only)."""

    def trade(
        self,
        market: int,
        ts: float,
        price: float,
        quote: YesQuote | None,
        ticks: list[Tick] | None,
        rejected: list[str],
        depths: dict[str, float],
    ) -> None: ...
    def drop(self) -> None: ...
    def quote(self, token: int) -> YesQuote | None: ...
    def touch(self, token: int, ts: float) -> None: ...
    def untouch(self, market: int) -> None: ...
    def new_book(self, token: int, complete: bool) -> None: ...
    def set_level(self, token: int, buy: bool, price: float, qty: float) -> None: ...
    def set_top(self, token: int, top: tuple[float | None, float | None] | None) -> None: ...
    def book(self, token: int) -> tuple[Any, ...] | None: ...
    def has_book(self, token: int) -> bool: ...
    def clear(self) -> None: ...
    def last_trade(self, market: int) -> float | None: ...
    def set_last_trade(self, market: int, price: float | None) -> None: ...
    def maker_state(self, market: int) -> MakerState: ...
    def set_maker_state(self, market: int, state: MakerState) -> None: ...


def make_store(layout: Layout, max_future_s: float = MAX_FUTURE_S, compiled: bool = True) -> Store:
    """The compiled store when it is installed, else the reference. The compiled
    tick maker forgets no market, so beyond TickMaker's MAX_MARKETS (one connection
    of more than 100,000 markets) the reference serves, as it bounds its memory."""
    if compiled and CStore is not None and len(layout.ids) <= MAX_MARKETS:
        first, tokens = layout.market_tokens()
        store: Store = CStore(
            layout.ids,
            layout.tok_market.tolist(),
            list(layout.tok_no),
            first,
            tokens,
            layout.bands,
            layout.index,
            (make_tick, complement, UNSET, PRICES),
            MAX_LEVELS,
            max_future_s,
        )
        return store
    return PyStore(layout, max_future_s)


class PyStore:
    """The reference store: the codecs' Book per token and a TickMaker per codec."""

    def __init__(self, layout: Layout, max_future_s: float = MAX_FUTURE_S) -> None:
        self.layout = layout
        self.first, self.tokens = layout.market_tokens()
        self.books: dict[int, Book] = {}
        self.trades: dict[int, float] = {}
        self.maker = TickMaker(max_future_s)
        self.touched: dict[int, tuple[float, int]] = {}  # market -> (ts, token)

    @property
    def received(self) -> float:
        return self.maker.received

    @received.setter
    def received(self, value: float) -> None:
        self.maker.received = value

    @property
    def max_future_s(self) -> float:
        return self.maker.max_future_s

    @max_future_s.setter
    def max_future_s(self, value: float) -> None:
        self.maker.max_future_s = value

    def price_changes(self, event: Any) -> bool:
        return False  # the codec reads every event

    def finish(
        self,
        ticks: list[Tick] | None,
        rejected: list[str],
        depths: dict[str, float],
        heard: list[str] | None,
    ) -> None:
        assert ticks is not None and heard is not None, "the reference store makes objects"
        out = Decoded(ticks=ticks, rejected=rejected, depths=depths)
        ids = self.layout.ids
        for market, (ts, token) in self.touched.items():
            quote = self.quote(token)
            if quote is not None:
                self.maker.quote(ids[market], ts, Quote(*quote), self.trades.get(market), out)
        heard += [ids[m] for m in self.touched]
        self.touched = {}

    def hear(self, market: int) -> None:
        raise NotImplementedError("the reference store names the markets heard")

    def trade(
        self,
        market: int,
        ts: float,
        price: float,
        quote: YesQuote | None,
        ticks: list[Tick] | None,
        rejected: list[str],
        depths: dict[str, float],
    ) -> None:
        assert ticks is not None, "the reference store makes Tick objects"
        out = Decoded(ticks=ticks, rejected=rejected, depths=depths)
        q = None if quote is None else Quote(*quote)
        self.maker.trade(self.layout.ids[market], ts, price, q, out)

    def quote(self, token: int) -> YesQuote | None:
        """codec._quote: the market's YES top from this token's book, else a sibling's."""
        m = self.layout.tok_market[token]
        band = self.layout.bands[m]
        for t in [token, *self.tokens[self.first[m] : self.first[m + 1]]]:
            book = self.books.get(t)
            q = book.quote(band) if book is not None else None
            if q is None:
                continue
            if not self.layout.tok_no[t]:
                return q.bid, q.ask, q.depth
            return (
                None if q.ask is None else complement(q.ask),
                None if q.bid is None else complement(q.bid),
                q.depth,
            )
        return None

    def touch(self, token: int, ts: float) -> None:
        self.touched[self.layout.tok_market[token]] = (ts, token)

    def untouch(self, market: int) -> None:
        self.touched.pop(market, None)

    def drop(self) -> None:
        self.touched = {}

    def _book(self, token: int) -> Book:
        book = self.books.get(token)
        if book is None:
            book = self.books[token] = Book()
        return book

    def new_book(self, token: int, complete: bool) -> None:
        self.books[token] = Book(complete=complete)

    def set_level(self, token: int, buy: bool, price: float, qty: float) -> None:
        self._book(token).set_level("BUY" if buy else "SELL", price, qty)

    def set_top(self, token: int, top: tuple[float | None, float | None] | None) -> None:
        self._book(token).set_top(top)

    def book(self, token: int) -> tuple[Any, ...] | None:
        b = self.books.get(token)
        if b is None:
            return None
        return dict(b.bids), dict(b.asks), b.has_top, b.top_bid, b.top_ask, b.complete

    def has_book(self, token: int) -> bool:
        return token in self.books

    def clear(self) -> None:
        self.books.clear()
        self.maker.reset()

    def last_trade(self, market: int) -> float | None:
        return self.trades.get(market)

    def set_last_trade(self, market: int, price: float | None) -> None:
        if price is None:
            self.trades.pop(market, None)
        else:
            self.trades[market] = price

    def maker_state(self, market: int) -> MakerState:
        key, maker = self.layout.ids[market], self.maker
        bid, ask = maker._last_quote.get(key, (None, None))
        return (
            key in maker._last_quote,
            bid,
            ask,
            maker._last_depth.get(key),
            maker._last_ts.get(key),
            self.trades.get(market),
        )

    def set_maker_state(self, market: int, state: MakerState) -> None:
        quoted, bid, ask, depth, ts, trade = state
        key, maker = self.layout.ids[market], self.maker
        maker.forget(key)  # the quote and the depth
        maker._last_ts.pop(key, None)
        if quoted:
            maker._last_quote[key] = (bid, ask)
        if depth is not None:
            maker._last_depth[key] = depth
        if ts is not None:
            maker._last_ts[key] = ts
        self.set_last_trade(market, trade)


def carry(old: Store, old_layout: Layout, new: Store, new_layout: Layout) -> None:
    """New bindings keep what the old ones knew of the markets and tokens in both:
    the tick maker's memory, and the books until the next connection clears them."""
    markets = {market: k for k, market in enumerate(new_layout.ids)}
    for j, market in enumerate(old_layout.ids):
        k = markets.get(market)
        if k is not None:
            new.set_maker_state(k, old.maker_state(j))
    for token, j in old_layout.index.items():
        k = new_layout.index.get(token)
        book = old.book(j) if k is not None else None
        if k is None or book is None:
            continue
        bids, asks, has_top, top_bid, top_ask, complete = book
        new.new_book(k, complete)
        for buy, levels in ((True, bids), (False, asks)):
            for price, qty in levels.items():
                new.set_level(k, buy, price, qty)
        if has_top:
            new.set_top(k, (top_bid, top_ask))


__all__ = ["Book", "Layout", "PyStore", "Store", "carry", "make_store"]
