"""`[feed.kalshi]`: websocket v2 with signed headers, and the REST market list."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from riskd.feeds.settings import ConnectionSettings
from riskd.validators import readable_file

KALSHI_WS_URL = "wss://api.elections.kalshi.com/trade-api/ws/v2"
KALSHI_REST_URL = "https://api.elections.kalshi.com/trade-api/v2"

Channel = Literal["ticker", "orderbook_delta", "trade", "market_lifecycle_v2"]
DEFAULT_CHANNELS: tuple[Channel, ...] = ("ticker", "orderbook_delta")


class KalshiSettings(ConnectionSettings):
    url: str = KALSHI_WS_URL
    rest_url: str = KALSHI_REST_URL
    # The API key id and its RSA private key (PEM). Give the key as a file path, or
    # as text through the environment (RISKD_FEED__KALSHI__PRIVATE_KEY); never logged.
    key_id: str = ""
    private_key_path: Path | None = None
    private_key: SecretStr = SecretStr("")
    channels: list[Channel] = Field(default_factory=lambda: list(DEFAULT_CHANNELS))
    # Markets to follow besides those of the markets file: Kalshi market tickers.
    markets: list[str] = Field(default_factory=list)
    rest_page_size: int = Field(200, ge=1, le=1000)

    _readable = field_validator("private_key_path")(readable_file)

    @model_validator(mode="after")
    def _usable_key(self) -> KalshiSettings:
        # Parsed at load, so check-config and SIGHUP refuse a bad key (never shown).
        if self.private_key_path is not None or self.private_key.get_secret_value():
            from riskd.feeds.kalshi.auth import BadKey, load_private_key

            where = "private_key_path" if self.private_key_path is not None else "private_key"
            try:
                load_private_key(self.private_key_pem())
            except BadKey as exc:
                raise ValueError(f"{where}: {exc}") from None
        return self

    def private_key_pem(self) -> bytes:
        if self.private_key_path is not None:
            return self.private_key_path.read_bytes()
        return self.private_key.get_secret_value().encode()

    def missing_credentials(self) -> list[str]:
        missing = []
        if not self.key_id:
            missing.append("feed.kalshi.key_id")
        if self.private_key_path is None and not self.private_key.get_secret_value():
            missing.append("feed.kalshi.private_key_path (or private_key)")
        return missing
