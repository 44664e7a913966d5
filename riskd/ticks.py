"""The one check of a tick's values, for the tape reader and the engine (every feed's
ticks pass the engine): what may reach the model, and the reason counted otherwise.
Ticks come as Tick objects or, from the compiled Polymarket store, as columns
(`TickColumns`); `take_columns` is `tick_fault` and the engine's other checks over
columns, compiled (numpy's per-call cost would be most of a batch's)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

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


# --- ticks as columns --------------------------------------------------------------

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
# Faults by code - 1, in tick_fault's order (code 0 is none).
FAULTS = (BAD_TS, FUTURE_TS, BAD_MARKET, BAD_PRICE, BAD_BID, BAD_ASK, CROSSED, BAD_DEPTH)


@dataclass(frozen=True, slots=True, eq=False)
class TickColumns:
    """Ticks in arrival order as arrays, without a Python object per tick: `market`
    indexes `ids`; nan in bid, ask or depth is a field not sent (None in a Tick).
    Reads as a sequence of Ticks where something wants them one by one."""

    ids: Sequence[str]
    market: np.ndarray
    ts: np.ndarray
    price: np.ndarray
    bid: np.ndarray
    ask: np.ndarray
    depth: np.ndarray

    @classmethod
    def of_rows(cls, ids: Sequence[str], rows: bytes) -> TickColumns:
        a = np.frombuffer(rows, ROW)
        return cls(ids, a["market"], a["ts"], a["price"], a["bid"], a["ask"], a["depth"])

    def __len__(self) -> int:
        return len(self.market)

    def __getitem__(self, k: int) -> Tick:
        return self.ticks(slice(k, k + 1 or None))[0]

    def __iter__(self) -> Iterator[Tick]:
        return iter(self.ticks())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TickColumns | list | tuple):
            return self.ticks() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def ticks(self, rows: slice = slice(None)) -> list[Tick]:
        ids = self.ids
        columns: list[list[Any]] = [
            self.market[rows].tolist(),
            self.ts[rows].tolist(),
            self.price[rows].tolist(),
        ]
        for a in (self.bid, self.ask, self.depth):
            v = a[rows]
            values = v.astype(object)
            values[np.isnan(v)] = None  # not sent
            columns.append(values.tolist())
        return [
            make_tick(ids[m], ts, p, b, a, d) for m, ts, p, b, a, d in zip(*columns, strict=True)
        ]


# Codes of `take_columns` beyond FAULTS', in the engine's order after tick_fault.
UNKNOWN_MARKET, OUT_OF_ORDER = len(FAULTS) + 1, len(FAULTS) + 2
REASONS = ("", *(f.reason for f in FAULTS), "unknown_market", "out_of_order")


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
    """The engine's boundary for ticks as columns, in order: `tick_fault`'s checks,
    then the market (`rows_of[market]`: its engine row, -1 unknown, -2 an empty id),
    then out of order against the market's newest pending (`newest`, updated) else
    applied time. Returns (m, idx, t, p, half_spread, depth) of the m ticks taken (p
    the mid when there is a book, else the price: spec section 2) and each tick's code
    (0 taken, else REASONS[code])."""
    n = ts.shape[0]
    code = np.zeros(n, np.int8)
    idx = np.empty(n, np.int64)
    t_out, p_out, hs_out, d_out = np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    m = 0
    for k in range(n):
        i, t, b, a, d = rows_of[market[k]], ts[k], bid[k], ask[k], depth[k]
        if not (t > 0.0 and t < TS_MAX):
            code[k] = 1
        elif t > latest:
            code[k] = 2
        elif i == -2:
            code[k] = 3
        elif not (price[k] >= 0.0 and price[k] <= 1.0):
            code[k] = 4
        elif b == b and not (b >= 0.0 and b <= 1.0):  # nan: not sent
            code[k] = 5
        elif a == a and not (a >= 0.0 and a <= 1.0):
            code[k] = 6
        elif b > a:
            code[k] = 7
        elif d == d and not (d >= 0.0 and d <= MAX_DEPTH):
            code[k] = 8
        elif i == -1:
            code[k] = UNKNOWN_MARKET
        else:
            last = newest[i]
            if t < (applied[i] if last != last else last):  # nan (none yet): false
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


# A feed's batch of ticks.
TickBatch = list[Tick] | TickColumns
