"""The one check of a tick's values, for the tape reader and the engine (every feed's
ticks pass the engine): what may reach the model, and the reason counted otherwise."""

from __future__ import annotations

import math
from typing import NamedTuple

from riskd.feeds.base import MAX_DEPTH, Tick

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
