"""`[feed.websocket]`: a generic JSON websocket feed with a configurable field mapping."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from riskd.feeds.settings import ConnectionSettings, VenueSection
from riskd.validators import KeyValueError, ordered


class FieldMap(VenueSection):
    """Dotted paths into one update object ("data.px"); "" means not sent."""

    market: str = "market"
    price: str = "price"
    bid: str = ""
    ask: str = ""
    depth: str = ""
    timestamp: str = "ts"


class WebsocketFeedSettings(ConnectionSettings):
    # The `venue` label of this feed's metrics.
    venue: str = Field("websocket", min_length=1)
    # Text frames sent after every (re)connect, e.g. a JSON subscribe command.
    subscribe: list[str] = Field(default_factory=list)
    # Dotted path to the list of updates inside a message; "" = the message is one
    # update (or a JSON array of updates).
    items: str = ""
    # Only messages whose fields (dotted paths) equal these values are updates; the
    # rest (acks, heartbeats) are skipped without being counted as malformed.
    match: dict[str, str] = Field(default_factory=dict)
    fields: FieldMap = Field(default_factory=FieldMap)
    # Unit of the timestamp field; "receive" ignores it and uses the arrival time.
    timestamp_unit: Literal["s", "ms", "us", "ns", "iso", "receive"] = "ms"
    # Multiplies price, bid and ask: 0.01 for prices in cents.
    price_scale: float = Field(1.0, gt=0.0)
    # An application-level ping text and its interval (0 = none).
    ping_text: str = ""
    ping_interval_s: float = Field(0.0, ge=0.0)
    # The exchange's websocket pings are its heartbeat (it sends no message while its
    # markets are quiet): a ping keeps the read timeout from firing, as for Kalshi.
    heartbeat: bool = False
    # Optional renaming: the feed's market id -> riskd market id.
    market_ids: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _some_price(self) -> WebsocketFeedSettings:
        f = self.fields
        if not f.price and not (f.bid and f.ask):
            raise ValueError("fields: map `price`, or both `bid` and `ask`")
        if not f.market:
            raise ValueError("fields.market: must name the market id field")
        if self.timestamp_unit != "receive" and not f.timestamp:
            raise ValueError('fields.timestamp: required unless timestamp_unit = "receive"')
        # An interval with nothing to send pings nothing.
        if self.ping_interval_s > 0 and not self.ping_text:
            raise KeyValueError("ping_text", "required when ping_interval_s > 0")
        # Without the venue's pings as heartbeat, only the answer to ours keeps a quiet
        # connection up: it must come before the read timeout.
        if self.ping_interval_s > 0 and not self.heartbeat:
            ordered(self, "ping_interval_s", "read_timeout_s")
        return self
