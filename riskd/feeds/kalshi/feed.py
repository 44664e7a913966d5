"""Kalshi's live feed: websocket v2 with signed headers, markets looked up on REST."""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from riskd.feeds.codec import DEFAULT_BAND, MAX_FUTURE_S
from riskd.feeds.connection import LookupFeed
from riskd.feeds.kalshi.auth import KalshiSigner, load_private_key
from riskd.feeds.kalshi.codec import KalshiCodec
from riskd.feeds.kalshi.config import KalshiSettings
from riskd.feeds.kalshi.metadata import fetch_kalshi
from riskd.feeds.metadata import Fetch
from riskd.markets import Market

if TYPE_CHECKING:
    from riskd.metrics import Metrics


class KalshiFeed(LookupFeed):
    codec: KalshiCodec

    def __init__(
        self,
        settings: KalshiSettings,
        markets: Mapping[str, Market],
        *,
        url: str = "",
        metadata: bool = True,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
        max_future_s: float = MAX_FUTURE_S,
        band: float = DEFAULT_BAND,
    ) -> None:
        codec = KalshiCodec.for_markets(markets.values(), settings.channels, max_future_s, band)
        super().__init__(
            "kalshi",
            url or settings.url,
            codec,
            settings,
            markets,
            metadata=metadata,
            metrics=metrics,
            heartbeat=True,
            rng=rng,
        )
        self.cfg = settings
        # Raises BadKey (without the key in the message) if the key is unusable.
        self.signer = KalshiSigner(settings.key_id, load_private_key(settings.private_key_pem()))
        # The signature covers the path of the websocket URL ("/trade-api/ws/v2").
        self.sign_path = urlsplit(self.url).path or "/"

    def headers(self) -> dict[str, str]:
        return self.signer.headers(int(time.time() * 1000), "GET", self.sign_path)

    def lookup(self) -> Fetch | None:
        tickers = list(self.cfg.markets) + [
            m.kalshi_ticker for m in self.markets.values() if m.kalshi_ticker
        ]
        if not tickers:
            return None
        return functools.partial(
            fetch_kalshi,
            base_url=self.cfg.rest_url,
            tickers=tickers,
            page_size=self.cfg.rest_page_size,
        )
