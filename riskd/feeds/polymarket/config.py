"""`[feed.polymarket]`: the CLOB market channel and the Gamma metadata API."""

from __future__ import annotations

from pydantic import Field, model_validator

from riskd.feeds.settings import ConnectionSettings
from riskd.validators import ordered

POLYMARKET_WS_URL = "wss://ws-subscriptions-clob.polymarket.com/ws/market"
GAMMA_URL = "https://gamma-api.polymarket.com"


class PolymarketSettings(ConnectionSettings):
    url: str = POLYMARKET_WS_URL
    gamma_url: str = GAMMA_URL
    # The venue drops connections that send nothing: a text "PING" every 10 s
    # (answered by "PONG", which also keeps the read timeout from firing).
    ping_interval_s: float = Field(10.0, gt=0.0)
    read_timeout_s: float = Field(30.0, gt=0.0)
    # The first message is one JSON array with the book of every subscribed token.
    max_message_bytes: int = Field(64 * 2**20, ge=1024)
    # best_bid_ask, new_market and market_resolved events.
    custom_feature_enabled: bool = True
    # Tokens subscribed per connection: more are split over several connections (a
    # market's two tokens on the same one). The market channel stops answering a
    # connection beyond ~500 tokens (undocumented; NautilusTrader, Aug 2025).
    assets_per_connection: int = Field(500, ge=2)
    # Markets to follow besides those of the markets file: condition ids (0x...),
    # CLOB token ids or slugs, looked up on Gamma (needs [feed] metadata = true).
    markets: list[str] = Field(default_factory=list)
    gamma_page_size: int = Field(100, ge=1, le=500)

    @model_validator(mode="after")
    def _ping_before_timeout(self) -> PolymarketSettings:
        # Only messages count (the PONG): a ping later than the read timeout cannot
        # keep a quiet market's connection up.
        ordered(self, "ping_interval_s", "read_timeout_s")
        return self
