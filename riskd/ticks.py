"""The one check of a tick's values, for the tape reader and the engine (every feed's
ticks pass the engine): what may reach the model, and the reason counted otherwise.
Also ticks as columns (`TickColumns`), as the tape reader hands them to the backtest."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import NamedTuple

import numpy as np

from riskd.feeds.base import MAX_DEPTH, Tick, make_tick

# Unix seconds from ~year 5138 on are not a time (almost surely milliseconds).
TS_MAX = 1e11


class Fault(NamedTuple):
    """Why a tick is rejected: the reason counted, and the field at fault ("spread":
    the bid above the ask)."""

    reason: str
    field: str


BAD_TS = Fault("bad_ts", "ts")
FUTURE_TS = Fault("future_ts", "ts")
BAD_MARKET = Fault("bad_market", "market")
BAD_PRICE = Fault("bad_price", "price")
BAD_BID = Fault("bad_bid_ask", "bid")
BAD_ASK = Fault("bad_bid_ask", "ask")
CROSSED = Fault("bad_bid_ask", "spread")
BAD_DEPTH = Fault("bad_depth", "depth")


def tick_fault(tick: Tick, latest: float = math.inf) -> Fault | None:
    """Why `tick` must not reach the model, or None. In this order, the first that
    fails: a time in (0, TS_MAX) and not after `latest`, a market id, a price in
    [0, 1], bid and ask in [0, 1] with bid <= ask, a depth in [0, MAX_DEPTH]. (NaN
    fails every comparison, so every check.)"""
    ts = tick.ts
    if not 0.0 < ts < TS_MAX:
        return BAD_TS
    if ts > latest:
        return FUTURE_TS
    if not tick.market:
        return BAD_MARKET
    if not 0.0 <= tick.price <= 1.0:
        return BAD_PRICE
    bid, ask, depth = tick.bid, tick.ask, tick.depth
    if bid is not None and not 0.0 <= bid <= 1.0:
        return BAD_BID
    if ask is not None and not 0.0 <= ask <= 1.0:
        return BAD_ASK
    if bid is not None and ask is not None and bid > ask:
        return CROSSED
    if depth is not None and not 0.0 <= depth <= MAX_DEPTH:
        return BAD_DEPTH
    return None


def clean(
    ts: np.ndarray,
    has_market: np.ndarray,
    price: np.ndarray,
    bid: np.ndarray | None = None,
    ask: np.ndarray | None = None,
    depth: np.ndarray | None = None,
) -> np.ndarray:
    """The rows that `tick_fault` lets through (with no `latest`), as a mask: its
    checks on columns, where nan in bid, ask or depth is a value not sent (None; a
    column None: none sent). A sent NaN cannot be written so: the tape reader leaves
    such rows to `tick_fault`. tests/test_tape.py checks both on the same rows."""
    ok = (ts > 0.0) & (ts < TS_MAX) & has_market & (price >= 0.0) & (price <= 1.0)
    if bid is not None:
        ok &= np.isnan(bid) | ((bid >= 0.0) & (bid <= 1.0))
    if ask is not None:
        ok &= np.isnan(ask) | ((ask >= 0.0) & (ask <= 1.0))
    if bid is not None and ask is not None:
        ok &= ~(bid > ask)  # false where either is not sent
    if depth is not None:
        ok &= np.isnan(depth) | ((depth >= 0.0) & (depth <= MAX_DEPTH))
    return ok


def book_arrays(
    price: np.ndarray, bid: np.ndarray, ask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """p and half_spread of ticks (spec section 2: p is the mid when there is a book,
    else the print), with nan for a bid or ask not sent."""
    both = ~np.isnan(bid) & ~np.isnan(ask)
    p = np.where(both, 0.5 * (bid + ask), price)
    half_spread = np.where(both, 0.5 * (ask - bid), 0.0)
    return p, half_spread


@dataclass(slots=True)
class TickColumns:
    """Ticks as columns, in row order: each row's market as an index into `markets`
    (in order of first appearance), its time and price, and bid, ask and depth (nan:
    not sent). What the tape reader hands the backtest, without a Tick per row."""

    markets: list[str]
    market: np.ndarray  # int64
    ts: np.ndarray
    price: np.ndarray
    bid: np.ndarray
    ask: np.ndarray
    depth: np.ndarray

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    @classmethod
    def of(cls, ticks: Sequence[Tick] | TickColumns) -> TickColumns:
        """The columns of ticks (columns as they are)."""
        if isinstance(ticks, TickColumns):
            return ticks
        names = [tick.market for tick in ticks]
        index = {m: i for i, m in enumerate(dict.fromkeys(names))}
        n = len(ticks)
        return cls(
            markets=list(index),
            market=np.fromiter(map(index.__getitem__, names), np.int64, n),
            ts=np.fromiter(map(_TS, ticks), np.float64, n),
            price=np.fromiter(map(_PRICE, ticks), np.float64, n),
            # None becomes nan.
            bid=np.array(list(map(_BID, ticks)), np.float64),
            ask=np.array(list(map(_ASK, ticks)), np.float64),
            depth=np.array(list(map(_DEPTH, ticks)), np.float64),
        )

    @classmethod
    def concat(cls, parts: Sequence[TickColumns]) -> TickColumns:
        """The rows of `parts`, one after the other."""
        if not parts:
            return cls.of([])
        names = list(dict.fromkeys(m for part in parts for m in part.markets))
        index = {m: i for i, m in enumerate(names)}
        codes = [np.array([index[m] for m in part.markets], np.int64) for part in parts]
        return cls(
            markets=names,
            market=np.concatenate([c[p.market] for c, p in zip(codes, parts, strict=True)]),
            ts=np.concatenate([part.ts for part in parts]),
            price=np.concatenate([part.price for part in parts]),
            bid=np.concatenate([part.bid for part in parts]),
            ask=np.concatenate([part.ask for part in parts]),
            depth=np.concatenate([part.depth for part in parts]),
        )

    def take(self, rows: np.ndarray) -> TickColumns:
        """The rows `rows` (indices or a mask), in that order; `markets` keeps only
        theirs, in order of first appearance."""
        market = self.market[rows]
        present, first, code = np.unique(market, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        rank = np.empty(order.shape[0], np.int64)
        rank[order] = np.arange(order.shape[0])
        return TickColumns(
            markets=[self.markets[i] for i in present[order].tolist()],
            market=rank[code.reshape(-1)],
            ts=self.ts[rows],
            price=self.price[rows],
            bid=self.bid[rows],
            ask=self.ask[rows],
            depth=self.depth[rows],
        )

    def in_time_order(self) -> TickColumns:
        """The rows sorted by time, rows of one time in their order."""
        return self.take(np.argsort(self.ts, kind="stable"))

    def names(self) -> list[str]:
        """Each row's market id."""
        return [self.markets[i] for i in self.market.tolist()]

    def ticks(self) -> Iterator[Tick]:
        """The rows as Ticks, made one at a time."""
        names, ts, price = self.names(), self.ts.tolist(), self.price.tolist()
        book = (self.bid, self.ask, self.depth)
        if all(np.isnan(a).all() for a in book):
            return map(make_tick, names, ts, price)
        bid, ask, depth = ([None if v != v else v for v in a.tolist()] for a in book)
        return map(make_tick, names, ts, price, bid, ask, depth)

    def book(self) -> tuple[np.ndarray, np.ndarray]:
        """p and half_spread of each row (`book_arrays`)."""
        return book_arrays(self.price, self.bid, self.ask)


_TS, _PRICE, _BID, _ASK, _DEPTH = (
    attrgetter(name) for name in ("ts", "price", "bid", "ask", "depth")
)
