"""Polymarket's live feed: the CLOB market channel, markets looked up on Gamma."""

from __future__ import annotations

import functools
import logging
import random
from typing import TYPE_CHECKING

from riskd.feeds.codec import DEFAULT_BAND, MAX_FUTURE_S, Codec
from riskd.feeds.connection import LookupFeed
from riskd.feeds.metadata import Fetch
from riskd.feeds.polymarket.codec import PolymarketCodec
from riskd.feeds.polymarket.config import PolymarketSettings
from riskd.feeds.polymarket.metadata import fetch_polymarket, split_polymarket_ids
from riskd.markets import Market

log = logging.getLogger("riskd.feeds")

if TYPE_CHECKING:
    from riskd.metrics import Metrics


class PolymarketFeed(LookupFeed):
    codec: PolymarketCodec

    def __init__(
        self,
        settings: PolymarketSettings,
        markets: dict[str, Market],
        *,
        url: str = "",
        metadata: bool = True,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
        max_future_s: float = MAX_FUTURE_S,
        band: float = DEFAULT_BAND,
    ) -> None:
        codec = PolymarketCodec.for_markets(
            markets.values(), settings.custom_feature_enabled, max_future_s, band
        )
        super().__init__(
            "polymarket",
            url or settings.url,
            codec,
            settings,
            markets,
            metadata=metadata,
            metrics=metrics,
            ping_text="PING",
            ping_interval_s=settings.ping_interval_s,
            rng=rng,
        )
        self.cfg = settings

    def codecs(self) -> list[Codec]:
        """The markets' tokens over connections of at most `assets_per_connection`,
        both tokens of a market on the same one (a NO price needs its YES sibling's
        book). Built from `markets`, the feed's list, each time the feed subscribes."""
        limit = self.cfg.assets_per_connection
        chunks: list[list[Market]] = [[]]
        tokens = 0
        for market in self.markets.values():
            n = bool(market.polymarket_yes_token) + bool(market.polymarket_no_token)
            if tokens + n > limit and chunks[-1]:
                chunks.append([])
                tokens = 0
            chunks[-1].append(market)
            tokens += n
        if len(chunks) == 1:
            return [self.codec]  # bound to the same markets
        self.codec.bind([])  # unused while split (memory); `prepare` binds it again
        log.info("%s: %d markets over %d connections", self.venue, len(self.markets), len(chunks))
        return [
            PolymarketCodec.for_markets(
                chunk,
                self.cfg.custom_feature_enabled,
                self.codec.max_future_s,
                self.codec.band,
            )
            for chunk in chunks
        ]

    def lookup(self) -> Fetch | None:
        tokens, conditions, slugs = split_polymarket_ids(self.cfg.markets)
        tokens += [
            t
            for m in self.markets.values()
            for t in (m.polymarket_yes_token, m.polymarket_no_token)
            if t
        ]
        if not (tokens or conditions or slugs):
            return None
        return functools.partial(
            fetch_polymarket,
            base_url=self.cfg.gamma_url,
            token_ids=tokens,
            condition_ids=conditions,
            slugs=slugs,
            page_size=self.cfg.gamma_page_size,
        )
