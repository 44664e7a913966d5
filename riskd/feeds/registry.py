"""Live feeds by name (`[feed] kind`), each market id bound to one feed."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, cast

from riskd.config import ConfigError, Settings
from riskd.feeds.connection import WebsocketFeed
from riskd.markets import Market, MarketTable

if TYPE_CHECKING:
    from riskd.feeds.nats.feed import NatsFeed
    from riskd.metrics import Metrics

    LiveFeed = WebsocketFeed | NatsFeed

Builder = Callable[[Settings, MarketTable, str, "Metrics | None"], "LiveFeed"]


def _something_to_follow(venue: str, some: bool, binding: str) -> None:
    """A venue feed needs markets: bound in the markets file, or listed for lookup."""
    if not some:
        raise ConfigError(
            f"feed.kind = {venue}: no market to follow; bind markets in the markets file "
            f"({binding}) or list them in [feed.{venue}] markets (with [feed] metadata = true)"
        )


def _polymarket(
    settings: Settings, markets: MarketTable, url: str, metrics: Metrics | None
) -> WebsocketFeed:
    from riskd.feeds.polymarket.feed import PolymarketFeed

    cfg = settings.feed
    _something_to_follow(
        "polymarket",
        bool(markets or (cfg.metadata and cfg.polymarket.markets)),
        "polymarket_yes_token / polymarket_no_token",
    )
    return PolymarketFeed(
        cfg.polymarket,
        # It only reads them (a Mapping); the table is not copied into a dict.
        cast("dict[str, Market]", markets),
        url=url,
        metadata=cfg.metadata,
        metrics=metrics,
        max_future_s=cfg.max_future_s,
        band=settings.limits.max_slippage,
    )


def _kalshi(
    settings: Settings, markets: MarketTable, url: str, metrics: Metrics | None
) -> WebsocketFeed:
    from riskd.feeds.kalshi.auth import BadKey
    from riskd.feeds.kalshi.feed import KalshiFeed

    cfg = settings.feed
    _something_to_follow(
        "kalshi", bool(markets or (cfg.metadata and cfg.kalshi.markets)), "kalshi_ticker"
    )
    try:
        return KalshiFeed(
            cfg.kalshi,
            markets,
            url=url,
            metadata=cfg.metadata,
            metrics=metrics,
            max_future_s=cfg.max_future_s,
            band=settings.limits.max_slippage,
        )
    except BadKey as exc:
        where = "private_key_path" if cfg.kalshi.private_key_path else "private_key"
        raise ConfigError(f"feed.kalshi.{where}: {exc}") from None


def _websocket(
    settings: Settings, markets: MarketTable, url: str, metrics: Metrics | None
) -> WebsocketFeed:
    from riskd.feeds.websocket.feed import GenericWebsocketFeed

    feed = GenericWebsocketFeed(
        settings.feed.websocket, url=url, metrics=metrics, max_future_s=settings.feed.max_future_s
    )
    if not feed.url:
        raise ConfigError("feed.kind = websocket: set [feed.websocket] url (or [feed] url)")
    return feed


def _nats(settings: Settings, markets: MarketTable, url: str, metrics: Metrics | None) -> NatsFeed:
    from riskd.feeds.nats.feed import NatsFeed

    return NatsFeed(
        settings.feed.nats, url=url, metrics=metrics, max_future_s=settings.feed.max_future_s
    )


BUILDERS: dict[str, Builder] = {
    "polymarket": _polymarket,
    "kalshi": _kalshi,
    "websocket": _websocket,
    "nats": _nats,
}

# Which markets a venue can serve: those with its ids. The generic feed sends its
# own market ids, so nothing is bound to it.
BINDS: dict[str, tuple[str, ...]] = {
    "polymarket": ("polymarket_yes_token", "polymarket_no_token"),
    "kalshi": ("kalshi_ticker",),
    "websocket": (),
    "nats": (),
}


def live_feeds(
    settings: Settings, markets: Mapping[str, Market], metrics: Metrics | None = None
) -> list[LiveFeed]:
    """One feed per live kind; a market with ids on several venues goes to the first."""
    cfg = settings.feed
    kinds = cfg.kinds()
    follow = set(cfg.markets)
    unknown = sorted(follow - markets.keys())
    if unknown:
        raise ConfigError(f"feed.markets: not in the markets file: {', '.join(unknown)}")
    # The feeds share the daemon's table (each its part of it), not a dict of Markets.
    table = MarketTable.of(markets)
    free = [not follow or market_id in follow for market_id in table.ids]
    feeds: list[LiveFeed] = []
    for kind in kinds:
        has_ids = [table.present(name) for name in BINDS[kind]]
        bound = [k for k in range(len(table)) if free[k] and any(ids[k] for ids in has_ids)]
        for k in bound:
            free[k] = False
        feeds.append(
            BUILDERS[kind](
                settings,
                table.select([table.ids[k] for k in bound]),
                cfg.url if len(kinds) == 1 else "",
                metrics,
            )
        )
    return feeds
