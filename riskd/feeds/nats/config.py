"""`[feed.nats]`: ticks from a NATS subject, JSON mapped as by the generic websocket
feed (`[feed.websocket]`'s items, match, fields, timestamp unit, price scale)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from riskd.feeds.settings import VenueSection
from riskd.feeds.websocket.config import FieldMap, WebsocketFeedSettings
from riskd.validators import ordered


class NatsFeedSettings(VenueSection):
    url: str = "nats://127.0.0.1:4222"
    # Wildcards allowed ("prices.>"); with `queue`, replicas of a group share the messages.
    subject: str = Field("riskd.ticks", min_length=1)
    queue: str = ""
    venue: str = Field("nats", min_length=1)
    items: str = ""
    match: dict[str, str] = Field(default_factory=dict)
    fields: FieldMap = Field(default_factory=FieldMap)
    timestamp_unit: Literal["s", "ms", "us", "ns", "iso", "receive"] = "ms"
    price_scale: float = Field(1.0, gt=0.0)
    market_ids: dict[str, str] = Field(default_factory=dict)
    open_timeout_s: float = Field(2.0, gt=0.0)
    # The client's ping to the server: two unanswered and the connection is dropped.
    keepalive_s: float = Field(20.0, gt=0.0)
    backoff_initial_s: float = Field(0.5, gt=0.0)
    backoff_max_s: float = Field(30.0, gt=0.0)
    # Messages waiting for the daemon; beyond, the subscription drops them (slow consumer).
    max_pending: int = Field(65536, ge=16)

    @model_validator(mode="after")
    def _codec(self) -> NatsFeedSettings:
        ordered(self, "backoff_initial_s", "backoff_max_s")
        self.codec_settings()  # the field mapping's own checks
        return self

    def codec_settings(self) -> WebsocketFeedSettings:
        """The mapping, as the generic feed's codec reads it."""
        return WebsocketFeedSettings(
            venue=self.venue,
            items=self.items,
            match=self.match,
            fields=self.fields,
            timestamp_unit=self.timestamp_unit,
            price_scale=self.price_scale,
            market_ids=self.market_ids,
        )
