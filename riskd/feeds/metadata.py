"""Market lists with resolution times from the venues' REST APIs, merged with the
markets file (the file wins).

Polymarket's Gamma `/markets` (offset pagination; `outcomes` and `clobTokenIds`
are JSON-encoded strings inside the JSON; `endDate` ISO 8601) and Kalshi's
`/markets` (cursor pagination; `close_time`, `expected_expiration_time`). The
parsers are pure; `fetch_*` do the HTTP through aiohttp. A malformed entry is
counted and skipped; a market without a resolution time is kept with an unknown
one (the model uses `model.default_tau_s` and flags it `unknown_resolution`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import aiohttp

from riskd.feeds.base import MarketEvent
from riskd.markets import Market
from riskd.secrets import mask_url, mask_urls

UNKNOWN = math.nan  # an unknown time: the engine treats nan as "not known"
CONDITION_ID = re.compile(r"^0x[0-9a-fA-F]{64}$")
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


def _time(value: Any, what: str) -> float:
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


def _json_list(value: Any, what: str) -> list[Any]:
    """Gamma sends lists as JSON-encoded strings; accept real lists too."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(f"{what}: not a JSON-encoded list: {value!r}") from None
    if not isinstance(value, list):
        raise ValueError(f"{what}: expected a list, got {value!r}")
    return value


def gamma_market(entry: Any) -> Market:
    """One Gamma `/markets` entry -> Market (id = the condition id); ValueError if unusable."""
    if not isinstance(entry, dict):
        raise ValueError("entry is not an object")
    cid = entry.get("conditionId")
    if not isinstance(cid, str) or not cid:
        raise ValueError("conditionId missing")
    tokens = _json_list(entry.get("clobTokenIds"), "clobTokenIds")
    outcomes = _json_list(entry.get("outcomes", '["Yes", "No"]'), "outcomes")
    if len(tokens) != 2 or not all(isinstance(t, str) and t for t in tokens):
        raise ValueError(f"clobTokenIds: expected two token ids, got {tokens!r}")
    if len(outcomes) != len(tokens):
        raise ValueError("outcomes and clobTokenIds differ in length")
    # YES is the outcome named "Yes"; for named outcomes ("Team A", "Team B") the first.
    names = [str(o).strip().lower() for o in outcomes]
    yes = names.index("yes") if "yes" in names else 0
    resolves = _time(entry.get("endDate"), "endDate")
    tick = entry.get("orderPriceMinTickSize")
    tick_size = float(tick) if isinstance(tick, int | float | str) and tick != "" else None
    if tick_size is not None and not 0.0 < tick_size < 1.0:
        raise ValueError(f"orderPriceMinTickSize {tick!r}")
    return Market(
        id=cid,
        resolves_at=resolves,
        event_at=resolves,
        tick_size=tick_size,
        title=str(entry.get("question") or entry.get("slug") or ""),
        polymarket_yes_token=tokens[yes],
        polymarket_no_token=tokens[1 - yes],
    )


def kalshi_market(entry: Any) -> Market:
    """One Kalshi `/markets` entry -> Market (id = the ticker); ValueError if unusable.

    Trading closes at `close_time`, when the decisive information is due; the outcome
    is expected at `expected_expiration_time` (else the latest possible expiration)."""
    if not isinstance(entry, dict):
        raise ValueError("entry is not an object")
    ticker = entry.get("ticker")
    if not isinstance(ticker, str) or not ticker:
        raise ValueError("ticker missing")
    close = _time(entry.get("close_time"), "close_time")
    expected = _time(entry.get("expected_expiration_time"), "expected_expiration_time")
    latest = _time(entry.get("latest_expiration_time"), "latest_expiration_time")
    resolves = next((t for t in (expected, close, latest) if not math.isnan(t)), UNKNOWN)
    event = close if not math.isnan(close) else resolves
    if not math.isnan(resolves) and not math.isnan(event):
        event = min(event, resolves)
    tick = entry.get("tick_size")  # cents
    tick_size = tick / 100.0 if isinstance(tick, int) and not isinstance(tick, bool) \
        and 0 < tick < 100 else None
    title = " ".join(str(x) for x in (entry.get("title"), entry.get("yes_sub_title")) if x)
    return Market(id=ticker, resolves_at=resolves, event_at=event, tick_size=tick_size,
                  title=title, kalshi_ticker=ticker)


def parse_entries(entries: Iterable[Any], parse: Any, lookup: Lookup) -> None:
    for entry in entries:
        try:
            lookup.markets.append(parse(entry))
        except (ValueError, TypeError):
            lookup.reject("metadata_bad_entry")


def merge(file_markets: dict[str, Market], found: Iterable[Market]) -> dict[str, Market]:
    """The markets file with the venue's markets added; for a market in both (same id
    or the same venue id) the file's values win and the venue fills what it lacks."""
    out = dict(file_markets)
    by_venue_id: dict[str, str] = {}
    for m in file_markets.values():
        for vid in (m.polymarket_yes_token, m.polymarket_no_token, m.kalshi_ticker):
            if vid:
                by_venue_id[vid] = m.id
    for m in found:
        venue_ids = (m.polymarket_yes_token, m.polymarket_no_token, m.kalshi_ticker)
        mid = m.id if m.id in out else next(
            (by_venue_id[v] for v in venue_ids if v and v in by_venue_id), None)
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
    return out


def listing_events(old: dict[str, Market], merged: dict[str, Market], ts: float
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


async def _get(session: aiohttp.ClientSession, url: str, params: list[tuple[str, str]]) -> Any:
    try:
        async with session.get(url, params=params) as resp:
            if resp.status != 200:
                raise MetadataError(f"GET {mask_url(url)}: HTTP {resp.status}")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(1 << 16):
                body += chunk
                if len(body) > MAX_RESPONSE_BYTES:
                    raise MetadataError(f"GET {mask_url(url)}: response larger than "
                                        f"{MAX_RESPONSE_BYTES} bytes")
            return json.loads(body)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise MetadataError(f"GET {mask_url(url)}: {type(exc).__name__}: "
                            f"{mask_urls(str(exc))}") from None


def _chunks(items: list[str], n: int) -> Iterable[list[str]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


async def fetch_polymarket(
    session: aiohttp.ClientSession,
    base_url: str,
    *,
    token_ids: Iterable[str] = (),
    condition_ids: Iterable[str] = (),
    slugs: Iterable[str] = (),
    page_size: int = 100,
) -> Lookup:
    """Gamma `/markets` for the given tokens, condition ids and slugs, every page."""
    url = base_url.rstrip("/") + "/markets"
    lookup = Lookup()
    seen: set[str] = set()
    queries = [("clob_token_ids", sorted(set(token_ids))),
               ("condition_ids", sorted(set(condition_ids))), ("slug", sorted(set(slugs)))]
    for key, values in queries:
        for chunk in _chunks(values, IDS_PER_REQUEST):
            offset = 0
            while True:
                params = [(key, v) for v in chunk]
                params += [("limit", str(page_size)), ("offset", str(offset))]
                page = await _get(session, url, params)
                if not isinstance(page, list):
                    raise MetadataError(f"GET {mask_url(url)}: expected a JSON list of markets")
                fresh = [e for e in page
                         if not (isinstance(e, dict) and e.get("conditionId") in seen)]
                parse_entries(fresh, gamma_market, lookup)
                seen.update(m.id for m in lookup.markets)
                if len(page) < page_size:
                    break
                offset += len(page)
    return lookup


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
    for chunk in _chunks(sorted(set(tickers)), IDS_PER_REQUEST):
        cursor = ""
        while True:
            params = [("tickers", ",".join(chunk)), ("limit", str(page_size))]
            if cursor:
                params.append(("cursor", cursor))
            page = await _get(session, url, params)
            if not isinstance(page, dict) or not isinstance(page.get("markets"), list):
                raise MetadataError(f"GET {mask_url(url)}: expected an object with a markets list")
            parse_entries(page["markets"], kalshi_market, lookup)
            cursor = page.get("cursor") or ""
            if not isinstance(cursor, str) or not cursor or not page["markets"]:
                break
    return lookup


def split_polymarket_ids(ids: Iterable[str]) -> tuple[list[str], list[str], list[str]]:
    """`[feed.polymarket] markets` entries as (token ids, condition ids, slugs)."""
    tokens, conditions, slugs = [], [], []
    for raw in ids:
        v = raw.strip()
        if CONDITION_ID.match(v):
            conditions.append(v)
        elif v.isdigit():
            tokens.append(v)
        elif v:
            slugs.append(v)
    return tokens, conditions, slugs
