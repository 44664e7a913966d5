"""What every live feed's config section has: where to connect and how hard to try.

Each venue package declares its own section (`riskd/feeds/<venue>/config.py`) on top
of `ConnectionSettings`; `riskd/config.py` composes them under `[feed.<venue>]`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from riskd.validators import ordered


class VenueSection(BaseModel):
    # Frozen, as every section of riskd/config.py.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ConnectionSettings(VenueSection):
    """Reconnection and liveness of one websocket connection (all times in seconds)."""

    url: str = ""
    open_timeout_s: float = Field(10.0, gt=0.0)
    # No message at all for this long: the connection is silent, reconnect.
    read_timeout_s: float = Field(60.0, gt=0.0)
    # websocket-level keepalive ping (RFC 6455), answered by the peer's stack.
    keepalive_s: float = Field(20.0, gt=0.0)
    max_message_bytes: int = Field(8 * 2**20, ge=1024)
    backoff_initial_s: float = Field(0.5, gt=0.0)
    backoff_max_s: float = Field(30.0, gt=0.0)
    backoff_factor: float = Field(2.0, ge=1.0)
    backoff_jitter: float = Field(0.5, ge=0.0, le=1.0)
    # Timeout of one metadata (REST) request, and the wait before retrying a failed
    # lookup (meanwhile the feed runs on the markets file alone).
    http_timeout_s: float = Field(10.0, gt=0.0)
    metadata_retry_s: float = Field(60.0, gt=0.0)

    @model_validator(mode="after")
    def _backoff_order(self) -> ConnectionSettings:
        ordered(self, "backoff_initial_s", "backoff_max_s")
        return self
