"""Kalshi's REST `/markets`: cursor pagination; `close_time` and
`expected_expiration_time` in ISO 8601. The parser is pure; `fetch_kalshi` does the
HTTP (riskd/feeds/metadata.py)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import aiohttp

from riskd.feeds.metadata import (
    IDS_PER_REQUEST,
    UNKNOWN,
    Lookup,
    MetadataError,
    chunks,
    get_json,
    iso_time,
    parse_entries,
)
from riskd.markets import Market
from riskd.secrets import mask_url


def kalshi_market(entry: Any) -> Market:
    """One Kalshi `/markets` entry -> Market (id = the ticker); ValueError if unusable.

    Trading closes at `close_time`, when the decisive information is due; the outcome
    is expected at `expected_expiration_time` (else the latest possible expiration)."""
    if not isinstance(entry, dict):
        raise ValueError("entry is not an object")
    ticker = entry.get("ticker")
    if not isinstance(ticker, str) or not ticker:
        raise ValueError("ticker missing")
    close = iso_time(entry.get("close_time"), "close_time")
    expected = iso_time(entry.get("expected_expiration_time"), "expected_expiration_time")
    latest = iso_time(entry.get("latest_expiration_time"), "latest_expiration_time")
    resolves = next((t for t in (expected, close, latest) if not math.isnan(t)), UNKNOWN)
    event = close if not math.isnan(close) else resolves
    if not math.isnan(resolves) and not math.isnan(event):
        event = min(event, resolves)
    tick = entry.get("tick_size")  # cents
    tick_size = (
        tick / 100.0
        if isinstance(tick, int) and not isinstance(tick, bool) and 0 < tick < 100
        else None
    )
    title = " ".join(str(x) for x in (entry.get("title"), entry.get("yes_sub_title")) if x)
    return Market(
        id=ticker,
        resolves_at=resolves,
        event_at=event,
        tick_size=tick_size,
        title=title,
        kalshi_ticker=ticker,
    )


async def fetch_kalshi(
    session: aiohttp.ClientSession,
    base_url: str,
    tickers: Iterable[str],
    *,
    page_size: int = 200,
) -> Lookup:
    """Kalshi `/markets?tickers=...`, following `cursor` to the last page."""
    url = base_url.rstrip("/") + "/markets"
    lookup = Lookup()
    for chunk in chunks(sorted(set(tickers)), IDS_PER_REQUEST):
        cursor = ""
        while True:
            params = [("tickers", ",".join(chunk)), ("limit", str(page_size))]
            if cursor:
                params.append(("cursor", cursor))
            page = await get_json(session, url, params)
            if not isinstance(page, dict) or not isinstance(page.get("markets"), list):
                raise MetadataError(f"GET {mask_url(url)}: expected an object with a markets list")
            parse_entries(page["markets"], kalshi_market, lookup)
            cursor = page.get("cursor") or ""
            if not isinstance(cursor, str) or not cursor or not page["markets"]:
                break
    return lookup
