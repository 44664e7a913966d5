"""What the API handlers (riskd/server.py, riskd/admin.py) see of the daemon: this
Protocol, never its parts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from riskd.config import Settings
    from riskd.exchange import ExchangeStore
    from riskd.metrics import Metrics
    from riskd.overrides import Override
    from riskd.publish.websocket import WebsocketPublisher


class DaemonApi(Protocol):
    settings: Settings
    metrics: Metrics
    stream: WebsocketPublisher | None
    state_status: str  # what start-up made of the snapshot
    reload_error: str | None  # why the last reload was refused
    exchange: ExchangeStore  # what the exchange last reported (read only here)

    def now(self) -> float: ...

    def now_iso(self) -> str: ...

    def alive(self) -> tuple[bool, str]: ...

    def ready(self) -> tuple[bool, list[str]]: ...

    def sets(self) -> list[dict[str, Any]]:
        """Every market's current published set."""
        ...

    def set_of(self, market: str) -> dict[str, Any] | None: ...

    def explain(self, market: str) -> dict[str, Any] | None: ...

    def reload(self) -> bool: ...

    def knows(self, market: str) -> bool:
        """The market is in the engine (configured, or listed by a venue)."""
        ...

    def exchange_state(self, headers: Mapping[str, str], raw: bytes) -> tuple[int, dict[str, Any]]:
        """One exchange state report (POST /v1/exchange/state): the status and answer.
        A refused report changes nothing."""
        ...

    def current_overrides(self) -> Mapping[str, Override]: ...

    def set_override(
        self, market: str, override: Override | None, actor: str, changes: dict[str, Any] | None
    ) -> Override | None:
        """Store (None: clear) a market's override and apply it; the one it replaced.
        Raises OSError when it cannot be stored (then nothing changed)."""
        ...
