"""Kalshi websocket v2: frames in, YES ticks and venue events out. Pure.

Channels `ticker` (no sequence numbers) and `orderbook_delta` (a snapshot, then
deltas, numbered per subscription `sid` by `seq`: a gap means the book can no longer
be trusted, so the codec drops those books and asks, in its replies, to unsubscribe
and subscribe again; those markets give no ticks at all until the new snapshot, and
go to their fail-safe values if it does not come within `governor.stale_after_s`).
Books are bids only, per side: the YES ask is 1 - the best NO bid. Prices come as
legacy integer cents (`price`, `yes_bid`, `[cents, count]` levels) and/or dollar
strings (`price_dollars`, `yes_dollars`, `yes_dollars_fp`, `delta_fp`); the dollar
fields win when both are sent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from riskd.feeds.base import MarketEvent
from riskd.feeds.codec import (
    DEFAULT_BAND,
    MAX_FUTURE_S,
    MAX_LEVELS,
    BadMessage,
    Decoded,
    Quote,
    TickMaker,
    complement,
    number,
    probability,
    put_level,
    size,
    text,
    yes_no_depth,
)
from riskd.markets import Market

SEQUENCED = frozenset({"orderbook_snapshot", "orderbook_delta"})
IGNORED = frozenset({"ok", "unsubscribed", "list_subscriptions"})
RESOLVED_EVENTS = frozenset({"determined", "settled"})
# Channels that take no market list (they cover every market).
ALL_MARKET_CHANNELS = frozenset({"market_lifecycle_v2"})
# Subscriptions (and unanswered subscribe commands, and dropped sids) remembered per
# connection: riskd makes a handful; a venue confirming endless sids grows nothing.
MAX_SUBSCRIPTIONS = 256


@dataclass
class Book:
    yes: dict[float, float] = field(default_factory=dict)  # YES bids: price -> contracts
    no: dict[float, float] = field(default_factory=dict)  # NO bids

    def quote(self, band: float = DEFAULT_BAND) -> Quote:
        """The YES top and the depth within `band` of the mid: the thinner of the YES
        bids and the NO bids (a YES ask at 1 - n is a NO bid at n), 0 with a side empty."""
        bid = max(self.yes) if self.yes else None
        no_bid = max(self.no) if self.no else None
        ask = None if no_bid is None else complement(no_bid)
        return Quote(bid, ask, yes_no_depth(bid, no_bid, self.yes, self.no, band))


@dataclass
class Subscription:
    channel: str
    tickers: list[str]


def price(msg: dict[str, Any], name: str) -> float | None:
    """A price field as dollars, from `<name>_dollars` or legacy cents `<name>`."""
    for key in (f"{name}_dollars", f"{name}_dollars_fp"):
        if msg.get(key) not in (None, ""):
            return probability(msg[key])
    if msg.get(name) is not None:
        return probability(number(msg[name], "bad_price") / 100.0)
    return None


def quantity(msg: dict[str, Any], name: str) -> float:
    for key in (f"{name}_fp", name):
        if msg.get(key) is not None:
            return size(msg[key])
    raise BadMessage("bad_message", f"no {name}")


def event_time(msg: dict[str, Any], received: float) -> float:
    """`ts_ms` (ms), else `ts` (unix seconds or ISO 8601), else `received`."""
    if msg.get("ts_ms") is not None:
        return number(msg["ts_ms"], "bad_timestamp") / 1000.0
    ts = msg.get("ts")
    if ts is None:
        return received
    if isinstance(ts, str) and not ts.replace(".", "", 1).isdigit():
        try:
            return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise BadMessage("bad_timestamp", f"ts {ts!r}") from None
    x = number(ts, "bad_timestamp")
    return x / 1000.0 if x > 1e11 else x  # milliseconds sent in `ts`


def levels(msg: dict[str, Any], side: str) -> dict[float, float]:
    """A snapshot side: `<side>_dollars_fp` / `<side>_dollars` ([dollars, count]) or
    legacy `<side>` ([cents, count])."""
    for key, cents in ((f"{side}_dollars_fp", False), (f"{side}_dollars", False), (side, True)):
        raw = msg.get(key)
        if raw is None:
            continue
        if not isinstance(raw, list):
            raise BadMessage("bad_message", f"{key}: expected a list")
        book: dict[float, float] = {}
        for level in raw:
            if not isinstance(level, list) or len(level) != 2:
                raise BadMessage("bad_message", f"{key}: expected [price, count] pairs")
            p = number(level[0], "bad_price")
            p = probability(p / 100.0 if cents else p)
            q = size(level[1])
            if q > 0:
                book[p] = q
        if len(book) > MAX_LEVELS:  # keep the best levels (bids: the highest prices)
            book = dict(sorted(book.items(), reverse=True)[:MAX_LEVELS])
        return book
    return {}


class KalshiCodec:
    """Tickers -> market ids; the subscriptions, sequence numbers and books of one
    connection."""

    def __init__(
        self,
        tickers: dict[str, str],
        channels: Iterable[str],
        max_future_s: float = MAX_FUTURE_S,
        band: float = DEFAULT_BAND,
    ) -> None:
        self.tickers = tickers
        # Depth counts within this much of the mid ([limits] max_slippage; per market
        # where the markets file sets it).
        self.band = band
        self.bands: dict[str, float] = {}
        self.channels = list(channels)
        self.books: dict[str, Book] = {}
        self.maker = TickMaker(max_future_s)
        self.last_price: dict[str, float] = {}  # per ticker, from the ticker channel
        self.subscriptions: dict[int, Subscription] = {}  # by sid
        self.seq: dict[int, int] = {}
        self._pending: dict[int, Subscription] = {}  # by command id
        self._dropped: dict[int, None] = {}  # sids unsubscribed after a gap (ordered)
        # Tickers whose book broke (a seq gap): no ticks from any channel until the
        # new snapshot, so the market goes stale rather than trade on a broken book.
        self.awaiting: set[str] = set()
        self._next_id = 1
        self.resubscribes = 0
        # The venue's clock: the latest `ts` seen. A message without one (a snapshot)
        # is dated by it, so one market's ticks do not mix two clocks.
        self.clock: float | None = None

    @classmethod
    def for_markets(
        cls,
        markets: Iterable[Market],
        channels: Iterable[str],
        max_future_s: float = MAX_FUTURE_S,
        band: float = DEFAULT_BAND,
    ) -> KalshiCodec:
        codec = cls({}, channels, max_future_s, band)
        codec.bind(markets)
        return codec

    def bind(self, markets: Iterable[Market]) -> None:
        """Follow these markets' tickers (from the next connection on)."""
        markets = list(markets)
        self.tickers = {m.kalshi_ticker: m.id for m in markets if m.kalshi_ticker}
        self.bands = {
            m.kalshi_ticker: m.max_slippage
            for m in markets
            if m.kalshi_ticker and m.max_slippage is not None
        }

    def _book_quote(self, ticker: str, book: Book) -> Quote:
        return book.quote(self.bands.get(ticker, self.band))

    def on_connect(self) -> list[str]:
        self.books.clear()
        self.maker.reset()
        self.subscriptions.clear()
        self.seq.clear()
        self._pending.clear()
        self._dropped.clear()
        self.awaiting.clear()
        if not self.tickers:
            return []
        tickers = sorted(self.tickers)
        return [self._command("subscribe", channel=ch, tickers=tickers) for ch in self.channels]

    def _command(
        self, cmd: str, channel: str = "", tickers: list[str] | None = None, sid: int | None = None
    ) -> str:
        cid = self._next_id
        self._next_id += 1
        params: dict[str, Any]
        if cmd == "subscribe":
            _bounded(self._pending)
            self._pending[cid] = Subscription(channel, tickers or [])
            params = {"channels": [channel]}
            if channel not in ALL_MARKET_CHANNELS:
                params["market_tickers"] = tickers
        else:
            params = {"sids": [sid]}
        return json.dumps({"id": cid, "cmd": cmd, "params": params})

    def decode(self, frame: str | bytes, received: float) -> Decoded:
        out = Decoded()
        self.maker.received = received
        try:
            doc = orjson.loads(frame)
        except ValueError:
            out.rejected.append("bad_json")
            return out
        try:
            self._message(doc, received, out)
        except BadMessage as exc:
            out.rejected.append(exc.reason)
        return out

    # --- one message ----------------------------------------------------------------

    def _message(self, doc: Any, received: float, out: Decoded) -> None:
        if not isinstance(doc, dict):
            raise BadMessage("bad_message", "expected an object")
        kind = doc.get("type")
        msg = doc.get("msg")
        if not isinstance(kind, str):
            raise BadMessage("bad_message", f"type {kind!r}")
        if kind in IGNORED:
            return
        if kind == "subscribed":
            self._subscribed(doc)
            return
        if kind == "error":
            raise BadMessage("venue_error", str(msg))
        if not isinstance(msg, dict):
            raise BadMessage("bad_message", "msg: expected an object")
        if kind in SEQUENCED and not self._in_sequence(doc, out):
            return
        if kind == "market_lifecycle_v2":
            self._lifecycle(msg, received, out)
            return
        ticker = text(msg.get("market_ticker"), "market_ticker")
        market = self.tickers.get(ticker)
        if market is None:
            raise BadMessage("unknown_ticker", ticker)
        ts = self._event_time(msg, market, received, out)
        if kind == "orderbook_snapshot":
            self._snapshot(msg, ticker, market, ts, out)
        elif kind == "orderbook_delta":
            self._delta(msg, ticker, market, ts, out)
        elif kind == "ticker":
            self._ticker(msg, ticker, market, ts, out)
        elif kind == "trade":
            self._trade(msg, ticker, market, ts, out)
        else:
            raise BadMessage("unknown_event", f"type {kind!r}")

    def _event_time(self, msg: dict[str, Any], market: str, received: float, out: Decoded) -> float:
        """The message's time (else the venue's clock), the market heard from."""
        ts = event_time(msg, math.nan)
        out.heard.append(market)
        if math.isnan(ts):
            return received if self.clock is None else self.clock
        if ts > received + self.maker.max_future_s:
            # Before it moves the venue clock, which dates the messages without a time.
            raise BadMessage("future_ts", f"ts {ts} ahead of arrival {received}")
        self.clock = ts if self.clock is None else max(self.clock, ts)
        return ts

    def _snapshot(
        self, msg: dict[str, Any], ticker: str, market: str, ts: float, out: Decoded
    ) -> None:
        self.books[ticker] = Book(levels(msg, "yes"), levels(msg, "no"))
        self.awaiting.discard(ticker)
        self.maker.forget(market)
        out.books.append(market)
        self.maker.quote(
            market,
            ts,
            self._book_quote(ticker, self.books[ticker]),
            self.last_price.get(ticker),
            out,
        )

    def _delta(
        self, msg: dict[str, Any], ticker: str, market: str, ts: float, out: Decoded
    ) -> None:
        book = self.books.get(ticker)
        if book is None:
            return  # no snapshot yet (or a gap is being repaired): nothing to apply to
        side = msg.get("side")
        if side not in ("yes", "no"):
            raise BadMessage("bad_message", f"side {side!r}")
        p = price(msg, "price")
        if p is None:
            raise BadMessage("bad_message", "no price")
        delta = quantity(msg, "delta")
        levels_ = book.yes if side == "yes" else book.no
        left = levels_.get(p, 0.0) + delta
        put_level(levels_, p, left if left > 1e-9 else 0.0, bids=True)
        self.maker.quote(
            market, ts, self._book_quote(ticker, book), self.last_price.get(ticker), out
        )

    def _ticker(
        self, msg: dict[str, Any], ticker: str, market: str, ts: float, out: Decoded
    ) -> None:
        bid, ask, last = price(msg, "yes_bid"), price(msg, "yes_ask"), price(msg, "price")
        # An empty side is sent as a bid of 0 or an ask of 1.
        quote = Quote(bid if bid else None, ask if ask is not None and ask < 1.0 else None)
        book = self.books.get(ticker)
        if book is not None:
            quote.depth = self._book_quote(ticker, book).depth
        last = last if last else None  # 0: never traded
        traded = last is not None and last != self.last_price.get(ticker)
        if last is not None:
            self.last_price[ticker] = last
        if ticker in self.awaiting:
            return
        if traded and last is not None:
            self.maker.trade(market, ts, last, quote, out)
        else:
            self.maker.quote(market, ts, quote, last, out)

    def _trade(
        self, msg: dict[str, Any], ticker: str, market: str, ts: float, out: Decoded
    ) -> None:
        p = price(msg, "yes_price")
        if p is None:
            raise BadMessage("bad_message", "no yes_price")
        if ticker in self.awaiting:
            return
        book = self.books.get(ticker)
        self.maker.trade(
            market, ts, p, None if book is None else self._book_quote(ticker, book), out
        )

    def _subscribed(self, doc: dict[str, Any]) -> None:
        msg = doc.get("msg")
        if not isinstance(msg, dict):
            raise BadMessage("bad_message", "subscribed without msg")
        sid = msg.get("sid")
        if not isinstance(sid, int) or isinstance(sid, bool):
            raise BadMessage("bad_message", f"sid {sid!r}")
        cid = doc.get("id")
        sub = self._pending.pop(cid, None) if isinstance(cid, int) else None
        if sub is None:
            sub = Subscription(str(msg.get("channel", "")), sorted(self.tickers))
        if sid not in self.subscriptions:
            self._room_for_subscription()
        self.subscriptions[sid] = sub

    def _in_sequence(self, doc: dict[str, Any], out: Decoded) -> bool:
        sid, seq = doc.get("sid"), doc.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(sid, int):
            raise BadMessage("bad_message", f"sid/seq {sid!r}/{seq!r}")
        if sid in self._dropped:
            return False  # still in flight from a subscription we dropped
        if sid not in self.subscriptions:
            # A book message before its `subscribed` confirmation: take it as ours.
            if any(s.channel == "orderbook_delta" for s in self._pending.values()):
                self._room_for_subscription()
                self.subscriptions[sid] = Subscription("orderbook_delta", sorted(self.tickers))
            else:
                return False  # not a book subscription of ours
        last = self.seq.get(sid)
        if last is not None and seq != last + 1:
            out.rejected.append("seq_gap")
            self._resubscribe(sid, out)
            return False
        self.seq[sid] = seq
        return True

    def _room_for_subscription(self) -> None:
        while len(self.subscriptions) >= MAX_SUBSCRIPTIONS:
            oldest = next(iter(self.subscriptions))
            del self.subscriptions[oldest]
            self.seq.pop(oldest, None)

    def _resubscribe(self, sid: int, out: Decoded) -> None:
        sub = self.subscriptions.pop(sid)
        self.seq.pop(sid, None)
        _bounded(self._dropped)
        self._dropped[sid] = None
        for ticker in sub.tickers:
            self.books.pop(ticker, None)
            self.awaiting.add(ticker)
            market = self.tickers.get(ticker)
            if market is not None:
                self.maker.forget(market)
                out.broken.append(market)
        self.resubscribes += 1
        out.replies.append(self._command("unsubscribe", sid=sid))
        out.replies.append(self._command("subscribe", channel=sub.channel, tickers=sub.tickers))

    def _lifecycle(self, msg: dict[str, Any], received: float, out: Decoded) -> None:
        ticker = msg.get("market_ticker")
        market = self.tickers.get(ticker) if isinstance(ticker, str) else None
        if market is None or msg.get("event_type") not in RESOLVED_EVENTS:
            return  # lifecycle of markets we do not follow, or not an ending
        raw = msg.get("determination_ts") or msg.get("settled_ts")
        ts = number(raw, "bad_timestamp") if raw is not None else received
        out.events.append(MarketEvent(market, ts, "resolved"))


def _bounded(table: dict[int, Any]) -> None:
    """Make room for one more entry: forget the oldest beyond MAX_SUBSCRIPTIONS."""
    while len(table) >= MAX_SUBSCRIPTIONS:
        oldest = next(iter(table))
        del table[oldest]
