"""A generic JSON websocket feed: updates in, ticks out, through a field mapping. Pure.

For an exchange's own internal price feed. `[feed.websocket]` names where, in each
update, the market id, the price (or the best bid and ask), the depth and the
timestamp are, and the timestamp's unit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from riskd.feeds.codec import (
    MAX_FUTURE_S,
    BadMessage,
    Decoded,
    Quote,
    TickMaker,
    number,
    probability,
    size,
)
from riskd.feeds.websocket.config import WebsocketFeedSettings

_UNIT = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
_MISSING = object()


def lookup(doc: Any, path: str) -> Any:
    """The value at a dotted path ("data.0.px"), or _MISSING."""
    node = doc
    for part in path.split("."):
        if isinstance(node, dict):
            node = node.get(part, _MISSING)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
        if node is _MISSING:
            return node
    return node


class WebsocketCodec:
    def __init__(self, cfg: WebsocketFeedSettings, max_future_s: float = MAX_FUTURE_S) -> None:
        self.cfg = cfg
        self.maker = TickMaker(max_future_s)

    def on_connect(self) -> list[str]:
        self.maker.reset()
        return list(self.cfg.subscribe)

    def decode(self, frame: str | bytes, received: float) -> Decoded:
        out = Decoded()
        self.maker.received = received
        cfg = self.cfg
        if cfg.ping_text and not _json_like(frame):
            return out  # the answer to our ping: any plain-text frame
        try:
            doc = orjson.loads(frame)
        except ValueError:
            out.rejected.append("bad_json")
            return out
        for key, want in cfg.match.items():
            if str(lookup(doc, key)) != want:
                return out
        items = lookup(doc, cfg.items) if cfg.items else doc
        if items is _MISSING:
            out.rejected.append("bad_message")
            return out
        for item in items if isinstance(items, list) else [items]:
            try:
                self._update(item, received, out)
            except BadMessage as exc:
                out.rejected.append(exc.reason)
        return out

    def _field(self, item: Any, path: str, required: bool = False) -> Any:
        if not path:
            return None
        value = lookup(item, path)
        if value is _MISSING or value is None:
            if required:
                raise BadMessage("bad_message", f"no {path!r}")
            return None
        return value

    def _price(self, item: Any, path: str) -> float | None:
        raw = self._field(item, path)
        return None if raw is None else probability(number(raw, "bad_price") * self.cfg.price_scale)

    def _update(self, item: Any, received: float, out: Decoded) -> None:
        cfg, f = self.cfg, self.cfg.fields
        if not isinstance(item, dict):
            raise BadMessage("bad_message", "an update must be an object")
        raw_id = self._field(item, f.market, required=True)
        if not isinstance(raw_id, str | int) or isinstance(raw_id, bool) or raw_id == "":
            raise BadMessage("bad_message", f"market id {raw_id!r}")
        market = cfg.market_ids.get(str(raw_id), str(raw_id))
        price = self._price(item, f.price)
        bid, ask = self._price(item, f.bid), self._price(item, f.ask)
        if price is None and (bid is None or ask is None):
            raise BadMessage("bad_message", "no price, and not both bid and ask")
        depth_raw = self._field(item, f.depth)
        depth = None if depth_raw is None else size(depth_raw)
        if depth is not None and depth < 0:
            raise BadMessage("bad_size", f"depth {depth}")
        ts = self._time(item, received)
        out.heard.append(market)
        if bid is not None and ask is not None:
            # A top of book is all this feed sends of a book: it is the snapshot, and
            # on a live connection silence afterwards means "no change".
            out.books.append(market)
        quote = Quote(bid, ask, depth)
        if price is None:
            self.maker.quote(market, ts, quote, None, out)
        else:
            self.maker.trade(market, ts, price, quote, out)

    def _time(self, item: Any, received: float) -> float:
        unit = self.cfg.timestamp_unit
        if unit == "receive":
            return received
        raw = self._field(item, self.cfg.fields.timestamp, required=True)
        if unit == "iso":
            if not isinstance(raw, str):
                raise BadMessage("bad_timestamp", f"{raw!r}")
            try:
                when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            except ValueError:
                raise BadMessage("bad_timestamp", f"{raw!r}") from None
            if when.tzinfo is None:
                raise BadMessage("bad_timestamp", f"no UTC offset in {raw!r}")
            return when.timestamp()
        ts = number(raw, "bad_timestamp") * _UNIT[unit]
        if ts <= 0:
            raise BadMessage("bad_timestamp", f"{raw!r}")
        return ts


def _json_like(frame: str | bytes) -> bool:
    """Starts like a JSON object or array (the frame may be text or its UTF-8 bytes)."""
    start = frame.lstrip()[:1]
    return start in ("{", "[") if isinstance(start, str) else start in (b"{", b"[")
