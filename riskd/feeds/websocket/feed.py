"""A generic JSON websocket feed (an exchange's own price stream)."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from riskd.feeds.codec import MAX_FUTURE_S
from riskd.feeds.connection import WebsocketFeed
from riskd.feeds.websocket.codec import WebsocketCodec
from riskd.feeds.websocket.config import WebsocketFeedSettings

if TYPE_CHECKING:
    from riskd.metrics import Metrics


class GenericWebsocketFeed(WebsocketFeed):
    def __init__(
        self,
        settings: WebsocketFeedSettings,
        *,
        url: str = "",
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
        max_future_s: float = MAX_FUTURE_S,
    ) -> None:
        super().__init__(
            settings.venue,
            url or settings.url,
            WebsocketCodec(settings, max_future_s),
            settings,
            metrics,
            ping_text=settings.ping_text,
            ping_interval_s=settings.ping_interval_s,
            heartbeat=settings.heartbeat,
            rng=rng,
        )
