"""The one check of a tick's values, for the tape reader and the engine (every feed's
ticks pass the engine): what may reach the model, and the reason counted otherwise.
Ticks come as Tick objects or as columns (`TickColumns`: from the compiled Polymarket
store, and from the tape reader for the backtest). `fault_code` is tick_fault's checks
on one row of columns, compiled: `take_columns` (the engine's boundary) and `clean`
(the tape reader's) run it; tests check it against `tick_fault`."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import NamedTuple

import numpy as np

from riskd.feeds.base import MAX_DEPTH, Tick, make_tick
from riskd.jit import njit

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


# One tick as the compiled store packs it (riskd/feeds/polymarket/_store.c, `Row`).
ROW = np.dtype(
    [
        ("market", "<i4"),
        ("unused", "<i4"),
        ("ts", "<f8"),
        ("price", "<f8"),
        ("bid", "<f8"),
        ("ask", "<f8"),
        ("depth", "<f8"),
    ]
)
# Faults by code - 1, in tick_fault's order (code 0 is none); then the engine's own.
FAULTS = (BAD_TS, FUTURE_TS, BAD_MARKET, BAD_PRICE, BAD_BID, BAD_ASK, CROSSED, BAD_DEPTH)
UNKNOWN_MARKET, OUT_OF_ORDER = len(FAULTS) + 1, len(FAULTS) + 2
REASONS = ("", *(f.reason for f in FAULTS), "unknown_market", "out_of_order")


@njit
def fault_code(
    t: float, latest: float, no_market: bool, p: float, b: float, a: float, d: float
) -> int:
    """`tick_fault` of one row of columns (nan in b, a or d: not sent): the code of the
    first check that fails (FAULTS[code - 1]), 0 if none does."""
    if not (t > 0.0 and t < TS_MAX):
        return 1
    if t > latest:
        return 2
    if no_market:
        return 3
    if not (p >= 0.0 and p <= 1.0):
        return 4
    if b == b and not (b >= 0.0 and b <= 1.0):
        return 5
    if a == a and not (a >= 0.0 and a <= 1.0):
        return 6
    if b > a:  # false where either is not sent
        return 7
    if d == d and not (d >= 0.0 and d <= MAX_DEPTH):
        return 8
    return 0


@njit
def fault_codes(
    ts: np.ndarray,
    no_market: np.ndarray,
    price: np.ndarray,
    bid: np.ndarray,
    ask: np.ndarray,
    depth: np.ndarray,
    latest: float,
) -> np.ndarray:
    """`fault_code` of every row."""
    code = np.zeros(ts.shape[0], np.int8)
    for k in range(ts.shape[0]):
        code[k] = fault_code(ts[k], latest, no_market[k], price[k], bid[k], ask[k], depth[k])
    return code


def clean(
    ts: np.ndarray,
    has_market: np.ndarray,
    price: np.ndarray,
    bid: np.ndarray | None = None,
    ask: np.ndarray | None = None,
    depth: np.ndarray | None = None,
) -> np.ndarray:
    """The rows that `tick_fault` lets through (with no `latest`), as a mask (a column
    None: none sent). A sent NaN cannot be written so: the tape reader leaves such
    rows to `tick_fault`. tests/test_tape.py checks both on the same rows."""
    unsent = np.full(ts.shape[0], np.nan)
    f64 = np.ascontiguousarray
    return fault_codes(
        f64(ts, np.float64), f64(~has_market), f64(price, np.float64),
        *(unsent if c is None else f64(c, np.float64) for c in (bid, ask, depth)),
        math.inf,
    ) == 0  # fmt: skip


@njit
def take_columns(
    market: np.ndarray,
    ts: np.ndarray,
    price: np.ndarray,
    bid: np.ndarray,
    ask: np.ndarray,
    depth: np.ndarray,
    rows_of: np.ndarray,
    newest: np.ndarray,
    applied: np.ndarray,
    latest: float,
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The engine's boundary for ticks as columns, in order: `fault_code`, then the
    market (`rows_of[market]`: its engine row, -1 unknown, -2 an empty id), then out of
    order against the market's newest pending (`newest`, updated) else applied time.
    Returns (m, idx, t, p, half_spread, depth) of the m ticks taken (p the mid when
    there is a book, else the price: spec section 2, `book_arrays`) and each tick's
    code (0 taken, else REASONS[code])."""
    n = ts.shape[0]
    code = np.zeros(n, np.int8)
    idx = np.empty(n, np.int64)
    t_out, p_out, hs_out, d_out = np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    m = 0
    for k in range(n):
        i, t, b, a, d = rows_of[market[k]], ts[k], bid[k], ask[k], depth[k]
        code[k] = fault_code(t, latest, i == -2, price[k], b, a, d)
        if code[k]:
            continue
        last = newest[i] if i >= 0 else 0.0
        if i == -1:
            code[k] = UNKNOWN_MARKET
        elif t < (applied[i] if last != last else last):  # nan (none yet): false
            code[k] = OUT_OF_ORDER
        else:
            newest[i] = t
            idx[m], t_out[m], d_out[m] = i, t, d
            if b == b and a == a:
                p_out[m], hs_out[m] = 0.5 * (b + a), 0.5 * (a - b)
            else:
                p_out[m], hs_out[m] = price[k], 0.0
            m += 1
    return m, idx, t_out, p_out, hs_out, d_out, code


def book_arrays(
    price: np.ndarray, bid: np.ndarray, ask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """p and half_spread of ticks (spec section 2: p is the mid when there is a book,
    else the print), with nan for a bid or ask not sent."""
    both = ~np.isnan(bid) & ~np.isnan(ask)
    p = np.where(both, 0.5 * (bid + ask), price)
    half_spread = np.where(both, 0.5 * (ask - bid), 0.0)
    return p, half_spread


@dataclass(slots=True, eq=False)
class TickColumns:
    """Ticks as columns, in row order, without a Tick per row: each row's market as an
    index into `markets`, its time and price, and bid, ask and depth (nan: not sent).
    What the tape reader hands the backtest, and the compiled Polymarket store the
    engine (`of_rows`). Reads as a sequence of Ticks where one is wanted."""

    markets: Sequence[str]
    market: np.ndarray  # int64 (int32 from the compiled store)
    ts: np.ndarray
    price: np.ndarray
    bid: np.ndarray
    ask: np.ndarray
    depth: np.ndarray

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    @classmethod
    def of_rows(cls, markets: Sequence[str], rows: bytes) -> TickColumns:
        """Rows packed as ROW (the compiled store's), as views on them."""
        a = np.frombuffer(rows, ROW)
        return cls(markets, a["market"], a["ts"], a["price"], a["bid"], a["ask"], a["depth"])

    def __getitem__(self, k: int) -> Tick:
        return next(self.take(np.arange(len(self))[k : k + 1 or None]).ticks())

    def __iter__(self) -> Iterator[Tick]:
        return self.ticks()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TickColumns | list | tuple):
            return list(self.ticks()) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

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


# A feed's batch of ticks.
TickBatch = list[Tick] | TickColumns


def last_ts(batch: TickBatch) -> float:
    """The time of a batch's last tick (of columns: without making a Tick)."""
    if isinstance(batch, TickColumns):
        return float(batch.ts[-1])
    return batch[-1].ts
