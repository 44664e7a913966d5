"""Kalshi's live feed: websocket v2 with signed headers, markets looked up on REST."""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp

from riskd.feeds.codec import DEFAULT_BAND, MAX_FUTURE_S
from riskd.feeds.connection import WebsocketFeed
from riskd.feeds.kalshi.auth import KalshiSigner, load_private_key
from riskd.feeds.kalshi.codec import KalshiCodec
from riskd.feeds.kalshi.config import KalshiSettings
from riskd.feeds.metadata import fetch_kalshi, listing_events, merge
from riskd.markets import Market

log = logging.getLogger("riskd.feeds")

if TYPE_CHECKING:
    from riskd.metrics import Metrics


class KalshiFeed(WebsocketFeed):
    codec: KalshiCodec

    def __init__(
        self,
        settings: KalshiSettings,
        markets: dict[str, Market],
        *,
        url: str = "",
        metadata: bool = True,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
        max_future_s: float = MAX_FUTURE_S,
        band: float = DEFAULT_BAND,
    ) -> None:
        codec = KalshiCodec.for_markets(markets.values(), settings.channels, max_future_s, band)
        super().__init__("kalshi", url or settings.url, codec, settings, metrics,
                         heartbeat=True, rng=rng)
        self.cfg = settings
        self.markets = dict(markets)
        self.metadata = metadata
        # Raises BadKey (without the key in the message) if the key is unusable.
        self.signer = KalshiSigner(settings.key_id, load_private_key(settings.private_key_pem()))
        # The signature covers the path of the websocket URL ("/trade-api/ws/v2").
        self.sign_path = urlsplit(self.url).path or "/"

    def headers(self) -> dict[str, str]:
        return self.signer.headers(int(time.time() * 1000), "GET", self.sign_path)

    async def prepare(self) -> None:
        if not self.metadata:
            return
        tickers = list(self.cfg.markets) + [m.kalshi_ticker for m in self.markets.values()
                                            if m.kalshi_ticker]
        if not tickers:
            return
        timeout = aiohttp.ClientTimeout(total=self.cfg.http_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            lookup = await fetch_kalshi(session, self.cfg.rest_url, tickers,
                                        page_size=self.cfg.rest_page_size)
        for reason, n in lookup.rejected.items():
            self.count(reason, n)
        merged = merge(self.markets, lookup.markets)
        self._events += listing_events(self.markets, merged, self.now())
        self.markets = merged
        self.codec.bind(merged.values())
        if not merged:
            log.warning("%s: no market found to follow", self.venue)
