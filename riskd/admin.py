"""The admin API (interfaces.md): reload, per-market overrides (changed field by field,
cleared whole by DELETE or `"clear": true`). Every route needs
`Authorization: Bearer <[server] admin_token>` (constant-time comparison); with
no token configured the admin API is disabled (403)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from riskd.auth import bearer_matches
from riskd.overrides import OverrideError, loosens, merge, parse_request

if TYPE_CHECKING:
    from riskd.api import DaemonApi

log = logging.getLogger("riskd.admin")

ACTOR_HEADER = "X-Riskd-Actor"  # who, for the audit trail (the token is shared)


def add_routes(app: web.Application, daemon_key: web.AppKey[DaemonApi]) -> None:
    handlers = _Handlers(daemon_key)
    app.router.add_post("/v1/admin/reload", handlers.reload)
    app.router.add_post("/v1/admin/override", handlers.override)
    app.router.add_delete("/v1/admin/override/{market}", handlers.delete_override)
    app.router.add_get("/v1/admin/overrides", handlers.overrides)


def _error(message: str, status: int, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


class _Handlers:
    def __init__(self, daemon_key: web.AppKey[DaemonApi]) -> None:
        self.key = daemon_key

    def _authorized(self, request: web.Request) -> tuple[DaemonApi, web.Response | None]:
        daemon = request.app[self.key]
        token = daemon.settings.server.admin_token.get_secret_value()
        if not token:
            return daemon, _error("the admin API is disabled: set [server] admin_token", 403)
        if not bearer_matches(request.headers.get("Authorization"), token):
            log.warning(
                "admin request refused: missing or wrong token",
                extra={"reason": "unauthorized", "path": request.path},
            )
            return daemon, _error(
                "a valid bearer token is required", 401, **{"WWW-Authenticate": "Bearer"}
            )
        return daemon, None

    async def reload(self, request: web.Request) -> web.Response:
        daemon, refused = self._authorized(request)
        if refused is not None:
            return refused
        if daemon.reload():
            return web.json_response({"reloaded": True})
        return web.json_response({"reloaded": False, "error": daemon.reload_error}, status=422)

    async def overrides(self, request: web.Request) -> web.Response:
        daemon, refused = self._authorized(request)
        if refused is not None:
            return refused
        return web.json_response(
            {
                "allow_loosen": daemon.settings.server.allow_loosen,
                "overrides": {m: o.as_dict() for m, o in daemon.current_overrides().items()},
            }
        )

    async def override(self, request: web.Request) -> web.Response:
        """Changes the fields given of a market's override (null clears one)."""
        daemon, refused = self._authorized(request)
        if refused is not None:
            return refused
        try:
            body: Any = await request.json()
        except (ValueError, LookupError, RecursionError):
            # not JSON, not in its charset or an unknown one, nested beyond the parser
            return _error("the body must be JSON", 400)
        try:
            market, changes = parse_request(body)
        except OverrideError as exc:
            return _error(str(exc), 400)
        return self._apply(daemon, request, market, changes)

    async def delete_override(self, request: web.Request) -> web.Response:
        """Clears a market's whole override (as `"clear": true`)."""
        daemon, refused = self._authorized(request)
        if refused is not None:
            return refused
        return self._apply(daemon, request, request.match_info["market"], None)

    def _apply(
        self, daemon: DaemonApi, request: web.Request, market: str, changes: dict[str, Any] | None
    ) -> web.Response:
        try:
            override = (
                None if changes is None else merge(daemon.current_overrides().get(market), changes)
            )
        except OverrideError as exc:
            return _error(str(exc), 400)
        if not daemon.knows(market) and not (
            override is None and market in daemon.current_overrides()
        ):
            return _error(f"unknown market {market!r}", 404)
        if loosens(changes, override) and not daemon.settings.server.allow_loosen:
            return _error(
                "an override may only tighten: loosening needs [server] allow_loosen = true", 403
            )
        actor = request.headers.get(ACTOR_HEADER) or f"admin@{request.remote}"
        try:
            before = daemon.set_override(market, override, actor, changes)
        except OSError as exc:
            log.error(
                "override not stored: %s",
                exc.strerror or exc,
                extra={"market": market, "reason": "override_not_persisted"},
            )
            return _error(f"cannot persist the override: {exc.strerror or exc}", 500)
        log.warning(
            "override %s for %s by %s",
            "cleared" if override is None else "set",
            market,
            actor,
            extra={"market": market, "reason": "config_override"},
        )
        stored = daemon.current_overrides().get(market)
        return web.json_response(
            {
                "market": market,
                "override": stored.as_dict() if stored else None,
                "previous": before.as_dict() if before else None,
            }
        )
