"""What the venues' REST market lookups share (each venue's own is its package's
`metadata.py`): the result, ISO 8601 times, the merge with the markets file (the file
wins), and the HTTP fetch with its size limit and errors.

A malformed entry is counted and skipped; a market without a resolution time is kept
with an unknown one (the model uses `model.default_tau_s` and flags it
`unknown_resolution`). A failed lookup is retried by the feed (`metadata_retry_s`,
riskd/feeds/connection.py) while it runs on the markets file alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import aiohttp

from riskd.feeds.base import MarketEvent
from riskd.markets import Market, MarketTable
from riskd.secrets import mask_url, mask_urls

UNKNOWN = math.nan  # an unknown time: the engine treats nan as "not known"
IDS_PER_REQUEST = 50  # keeps query strings short
# A market-list response larger than this is refused (a page of 500 markets is a few
# MiB): a broken or hostile API cannot make the daemon buffer without limit.
MAX_RESPONSE_BYTES = 32 * 2**20


class MetadataError(RuntimeError):
    """The venue's REST API could not be read (network, status, not JSON)."""


@dataclass
class Lookup:
    markets: list[Market] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)  # malformed entries by reason

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


# --- parsing (pure) -------------------------------------------------------------------


def iso_time(value: Any, what: str) -> float:
    """Unix seconds from ISO 8601 (`Z` or an offset); None/"" is unknown."""
    if value in (None, ""):
        return UNKNOWN
    if not isinstance(value, str):
        raise ValueError(f"{what}: expected an ISO 8601 string, got {value!r}")
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{what}: not ISO 8601: {value!r}") from None
    if when.tzinfo is None:
        raise ValueError(f"{what}: no UTC offset in {value!r}")
    return when.timestamp()


def parse_entries(entries: Iterable[Any], parse: Callable[[Any], Market], lookup: Lookup) -> None:
    for entry in entries:
        try:
            lookup.markets.append(parse(entry))
        except (ValueError, TypeError):
            lookup.reject("metadata_bad_entry")


def merge(file_markets: Mapping[str, Market], found: Iterable[Market]) -> MarketTable:
    """The markets file with the venue's markets added; for a market in both (same id
    or the same venue id) the file's values win and the venue fills what it lacks."""
    out = dict(file_markets.items())
    by_venue_id: dict[str, str] = {}
    for m in out.values():
        for vid in (m.polymarket_yes_token, m.polymarket_no_token, m.kalshi_ticker):
            if vid:
                by_venue_id[vid] = m.id
    for m in found:
        venue_ids = (m.polymarket_yes_token, m.polymarket_no_token, m.kalshi_ticker)
        mid = (
            m.id
            if m.id in out
            else next((by_venue_id[v] for v in venue_ids if v and v in by_venue_id), None)
        )
        if mid is None:
            out[m.id] = m
            continue
        have = out[mid]
        out[mid] = replace(
            have,
            tick_size=have.tick_size if have.tick_size is not None else m.tick_size,
            title=have.title or m.title,
            polymarket_yes_token=have.polymarket_yes_token or m.polymarket_yes_token,
            polymarket_no_token=have.polymarket_no_token or m.polymarket_no_token,
            kalshi_ticker=have.kalshi_ticker or m.kalshi_ticker,
        )
    return MarketTable(out.values())


def listing_events(
    old: Mapping[str, Market], merged: Mapping[str, Market], ts: float
) -> list[MarketEvent]:
    """What the daemon must learn from a lookup: the new markets, and the tick sizes
    the markets file left open."""
    events = []
    for mid, m in merged.items():
        have = old.get(mid)
        if have is None:
            events.append(MarketEvent(mid, ts, "listed", meta=m))
        elif have.tick_size is None and m.tick_size is not None:
            events.append(MarketEvent(mid, ts, "tick_size", tick_size=m.tick_size))
    return events


# --- HTTP ----------------------------------------------------------------------------


async def get_json(session: aiohttp.ClientSession, url: str, params: list[tuple[str, str]]) -> Any:
    try:
        async with session.get(url, params=params) as resp:
            if resp.status != 200:
                raise MetadataError(f"GET {mask_url(url)}: HTTP {resp.status}")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(1 << 16):
                body += chunk
                if len(body) > MAX_RESPONSE_BYTES:
                    raise MetadataError(
                        f"GET {mask_url(url)}: response larger than {MAX_RESPONSE_BYTES} bytes"
                    )
            return json.loads(body)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise MetadataError(
            f"GET {mask_url(url)}: {type(exc).__name__}: {mask_urls(str(exc))}"
        ) from None


def chunks(items: list[str], n: int) -> Iterable[list[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


Fetch = Callable[[aiohttp.ClientSession], Awaitable[Lookup]]


async def look_up(fetch: Fetch, timeout_s: float) -> Lookup:
    """One venue lookup in a session of its own (lookups are rare: none is kept open);
    `timeout_s` bounds each request."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        return await fetch(session)
