"""What every venue codec shares: its output, strict number parsing, and the rules
for when a book becomes a tick. Pure: no sockets, no clock (times are arguments).

A codec is sans-I/O (after websockets' `protocol.py`): `on_connect()` gives the
frames to send after each (re)connect, `decode(text, received)` turns one received
frame into ticks, venue events, rejection reasons and frames to send back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from riskd.feeds.base import MAX_DEPTH, MarketEvent, Tick, make_tick

if TYPE_CHECKING:
    from riskd.markets import Market

# A venue timestamp may go back by this much (coarse clocks, e.g. whole seconds on
# one channel and milliseconds on another): the tick keeps the later time. Further
# back is rejected as out of order.
TS_TOLERANCE_S = 1.0
# A venue timestamp further ahead of the frame's arrival than this is rejected
# (`future_ts`): it would make the market's later, honest prices look out of order.
# `[feed] max_future_s` sets it for the live feeds.
MAX_FUTURE_S = 5.0
# Price levels kept per side of one book. Real books have at most one level per tick
# (9,999 at Polymarket's finest 0.0001); beyond the cap the level furthest from the
# top is dropped, so a venue sending endless distinct prices cannot grow memory.
MAX_LEVELS = 10_000
# Markets whose last quote and time a TickMaker remembers (the generic feed takes
# market ids from the messages): beyond it the least recently updated is forgotten
# (the engine still holds every known market's order).
MAX_MARKETS = 100_000


class BadMessage(ValueError):
    """A message that cannot be used; `reason` labels the rejection counter."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


@dataclass(init=False, slots=True)
class Decoded:
    ticks: list[Tick]  # or TickColumns, from a BatchCodec
    events: list[MarketEvent]
    rejected: list[str]
    replies: list[str]  # frames to send back
    # Freshness (docs/model.md section 5): markets a message was about, markets whose
    # book arrived as a snapshot, markets whose book broke (stale until the next
    # snapshot), and depth changes that came without a tick.
    heard: list[str]  # or HeardRows, from a BatchCodec
    books: list[str]
    broken: list[str]
    depths: dict[str, float]

    # Written out: one is made per frame, and dataclass default factories cost a call
    # each (1.0 us for all eight, against 0.3).
    def __init__(
        self,
        ticks: list[Tick] | None = None,
        events: list[MarketEvent] | None = None,
        rejected: list[str] | None = None,
        replies: list[str] | None = None,
        heard: list[str] | None = None,
        books: list[str] | None = None,
        broken: list[str] | None = None,
        depths: dict[str, float] | None = None,
    ) -> None:
        self.ticks = [] if ticks is None else ticks
        self.events = [] if events is None else events
        self.rejected = [] if rejected is None else rejected
        self.replies = [] if replies is None else replies
        self.heard = [] if heard is None else heard
        self.books = [] if books is None else books
        self.broken = [] if broken is None else broken
        self.depths = {} if depths is None else depths

    def extend(self, other: Decoded) -> None:
        self.ticks += other.ticks
        self.events += other.events
        self.rejected += other.rejected
        self.replies += other.replies
        self.heard += other.heard
        self.books += other.books
        self.broken += other.broken
        self.depths.update(other.depths)


class Codec(Protocol):
    def on_connect(self) -> list[str]:
        """Frames to send on a fresh connection (the subscriptions); resets the state
        that does not survive a reconnect (books, sequence numbers)."""
        ...

    def decode(self, text: str | bytes, received: float) -> Decoded:
        """One received frame; `received` is the wall time it arrived."""
        ...


class BatchCodec(Codec, Protocol):
    """A codec that reads frames received together at once (`decode_batch`)."""

    def decode_batch(
        self, frames: list[bytes], received: float, failed: Callable[[Exception], None]
    ) -> Decoded:
        """`decode` of each frame, in order, into one Decoded; a frame whose decoding
        raises is reported to `failed` and counted as `decode_error`."""
        ...


class MarketCodec(Codec, Protocol):
    """A venue codec that follows a list of markets (the venue's ids in each)."""

    def bind(self, markets: Iterable[Market]) -> None:
        """Follow these markets (from the next connection on)."""
        ...


def number(value: Any, reason: str = "bad_number") -> float:
    """A finite float from a JSON number or a numeric string (venues send both)."""
    kind = type(value)  # the exact types JSON gives first: this runs for every number
    if (
        kind is not str
        and kind is not float
        and kind is not int
        and (isinstance(value, bool) or not isinstance(value, int | float | str))
    ):
        raise BadMessage(reason, f"expected a number, got {value!r}")
    try:
        x = float(value)
    except (ValueError, OverflowError):  # OverflowError: an integer beyond any float
        raise BadMessage(reason, f"not a number: {value!r}") from None
    if x - x != 0.0:  # inf or nan
        raise BadMessage(reason, f"not finite: {value!r}")
    return x


# Prices come as a few thousand distinct texts ("0.41"): each is parsed once and its
# float shared by every book and tick that holds it (a float is 24 bytes, and the
# books of 100,000 markets hold a million prices). Bounded, so that a venue inventing
# prices cannot grow it.
MAX_INTERNED = 65_536
_prices: dict[str, float] = {}
PRICES = _prices  # read-only for the codecs' hot paths: a hit is `probability`'s answer
_complements: dict[float, float] = {}  # p -> 1 - p
_floats: dict[float, float] = {}  # one object per value


def _intern(x: float) -> float:
    return _floats.setdefault(x, x) if len(_floats) < MAX_INTERNED else x


def probability(value: Any) -> float:
    """A price in [0, 1]."""
    if type(value) is str:
        x = _prices.get(value)
        if x is not None:
            return x
    x = number(value, "bad_price")
    if not 0.0 <= x <= 1.0:
        raise BadMessage("bad_price", f"price {value!r} outside [0, 1]")
    if type(value) is str and len(_prices) < MAX_INTERNED:
        x = _prices[value] = _intern(x)
    return x


def complement(p: float) -> float:
    """1 - p, rounded so that venue decimals stay decimals (1 - 0.41 is 0.59)."""
    q = _complements.get(p)
    if q is None:
        q = _intern(round(1.0 - p, 10))
        if len(_complements) < MAX_INTERNED:
            _complements[p] = q
    return q


def text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise BadMessage("bad_message", f"{what}: expected a non-empty string, got {value!r}")
    return value


def size(value: Any) -> float:
    """A finite size (contracts or shares) of at most MAX_DEPTH in magnitude; a
    negative size is the venue's own business (a removal, a delta)."""
    x = number(value, "bad_size")
    if abs(x) > MAX_DEPTH:
        raise BadMessage("bad_size", f"size {value!r} is absurd")
    return x


def put_level(levels: dict[float, float], price: float, qty: float, bids: bool) -> None:
    """Set one level of a book side (qty <= 0 removes it), keeping at most MAX_LEVELS:
    when full, a new level better than the worst replaces it, a worse one is ignored."""
    if qty <= 0:
        levels.pop(price, None)
        return
    if price not in levels and len(levels) >= MAX_LEVELS:
        worst = min(levels) if bids else max(levels)
        if (price <= worst) if bids else (price >= worst):
            return
        del levels[worst]
    levels[price] = qty


def ms_time(value: Any) -> float:
    """Unix seconds from a millisecond timestamp (number or string)."""
    x = number(value, "bad_timestamp")
    if x <= 0:
        raise BadMessage("bad_timestamp", f"timestamp {value!r}")
    return x / 1000.0


# The depth that counts for a liquidation: what lies within this much of the mid
# (`[limits] max_slippage`, per market `max_slippage` in the markets file).
DEFAULT_BAND = 0.05
# A hair of tolerance at the band's edge: decimal prices on a binary grid (0.45 + 0.05
# is 0.5000...01).
HAIR = 1e-9
# A depth change without a tick is reported when it moves by more than this share:
# the horizon depends on depth smoothly, and a book's small churn is not news.
DEPTH_CHANGE = 0.05


def band_depth(levels: dict[float, float], edge: float, bids: bool) -> float:
    """Shares on one side at or inside `edge` (bids at or above it, asks at or below)."""
    if bids:
        return sum([q for price, q in levels.items() if price >= edge])
    return sum([q for price, q in levels.items() if price <= edge])


def book_depth(
    bid: float | None,
    ask: float | None,
    bids: dict[float, float],
    asks: dict[float, float],
    band: float,
) -> float | None:
    """Depth within `band` of the mid, in shares: the thinner side's, since a long
    position leaves through the bids and a short one through the asks. 0 when a side
    is empty (nothing to unwind into); None when neither side is known."""
    if bid is None and ask is None:
        return None
    if bid is None or ask is None:
        return 0.0
    mid = 0.5 * (bid + ask)
    return min(
        band_depth(bids, mid - band - HAIR, True), band_depth(asks, mid + band + HAIR, False)
    )


def yes_no_depth(
    bid: float | None,
    no_bid: float | None,
    yes_bids: dict[float, float],
    no_bids: dict[float, float],
    band: float,
) -> float | None:
    """`book_depth` of a book kept as YES bids and NO bids (a YES ask at 1 - n is a NO
    bid at n), from the best of each."""
    if bid is None and no_bid is None:
        return None
    if bid is None or no_bid is None:
        return 0.0
    mid = 0.5 * (bid + 1.0 - no_bid)
    return min(
        band_depth(yes_bids, mid - band - HAIR, True),
        band_depth(no_bids, 1.0 - mid - band - HAIR, True),
    )


@dataclass(slots=True)
class Quote:
    """The top of one market's YES book: what a tick is made of."""

    bid: float | None
    ask: float | None
    depth: float | None = None


class TickMaker:
    """Per market: a tick only when the top of the book moved or a trade printed, with
    event times that never go back and never beyond `max_future_s` ahead of the
    frame's arrival (`received`, set by the codec for each frame). Shared by the
    venue codecs."""

    def __init__(self, max_future_s: float = MAX_FUTURE_S, max_markets: int = MAX_MARKETS) -> None:
        self._last_quote: dict[str, tuple[float | None, float | None]] = {}
        self._last_ts: dict[str, float] = {}
        self._last_depth: dict[str, float] = {}
        self.max_future_s = max_future_s
        self.max_markets = max_markets
        self.received = math.inf  # arrival (wall) time of the frame being decoded

    def reset(self) -> None:
        """A new connection: the first quote of each market is news again."""
        self._last_quote.clear()
        self._last_depth.clear()

    def forget(self, market: str) -> None:
        self._last_quote.pop(market, None)
        self._last_depth.pop(market, None)

    def quote(self, market: str, ts: float, quote: Quote, last: float | None, out: Decoded) -> None:
        """A book update: a tick if the best bid or ask changed."""
        key = (quote.bid, quote.ask)
        if self._last_quote.get(market) == key:
            self.depth(market, quote.depth, out)
            return
        self._emit(market, ts, quote, last, out, key)

    def depth(self, market: str, depth: float | None, out: Decoded) -> None:
        """The book changed below its top: report the depth if it moved materially
        (not a tick: the price did not move, and the estimator must not see a zero
        move each time an order rests at another level)."""
        if depth is None or not 0.0 <= depth <= MAX_DEPTH:
            return
        prev = self._last_depth.get(market)
        if (
            prev is not None
            and abs(depth - prev) <= DEPTH_CHANGE * prev
            and (depth > 0.0) == (prev > 0.0)
        ):
            return
        if prev is None and market not in self._last_quote:
            return  # no price yet: the first tick carries it
        self._last_depth[market] = depth
        out.depths[market] = depth

    def trade(
        self, market: str, ts: float, price: float, quote: Quote | None, out: Decoded
    ) -> None:
        """A trade: always a price observation."""
        q = quote or Quote(None, None)
        self._emit(market, ts, q, price, out, (q.bid, q.ask))

    def _emit(
        self,
        market: str,
        ts: float,
        q: Quote,
        last: float | None,
        out: Decoded,
        key: tuple[float | None, float | None],
    ) -> None:
        bid, ask = q.bid, q.ask
        if bid is not None and ask is not None and bid > ask:
            out.rejected.append("crossed_book")
            return
        if bid is not None and ask is not None:
            price = 0.5 * (bid + ask)
        elif last is not None:
            # One side only: the last print, kept inside what the book allows.
            price = max(last, bid) if bid is not None else last
            price = min(price, ask) if ask is not None else price
        elif bid is not None or ask is not None:
            price = bid if bid is not None else ask  # type: ignore[assignment]
        else:
            return  # an empty book says nothing about the price
        if not ts > 0.0:
            out.rejected.append("bad_timestamp")
            return
        if ts > self.received + self.max_future_s:
            out.rejected.append("future_ts")
            return
        if q.depth is not None and not 0.0 <= q.depth <= MAX_DEPTH:
            out.rejected.append("bad_size")
            return
        prev = self._last_ts.pop(market, None)  # re-inserted: least recently used first
        if prev is not None and ts < prev:
            if ts < prev - TS_TOLERANCE_S:
                self._last_ts[market] = prev
                out.rejected.append("out_of_order")
                return
            ts = prev
        if prev is None and len(self._last_ts) >= self.max_markets:
            oldest = next(iter(self._last_ts))
            del self._last_ts[oldest]
            self._last_quote.pop(oldest, None)
            self._last_depth.pop(oldest, None)
        self._last_ts[market] = ts
        self._last_quote[market] = key
        if q.depth is not None:
            self._last_depth[market] = q.depth
        out.ticks.append(make_tick(market, ts, price, bid, ask, q.depth))
