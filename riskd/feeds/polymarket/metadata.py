"""Polymarket's Gamma `/markets`: offset pagination; `outcomes` and `clobTokenIds` are
JSON-encoded strings inside the JSON; `endDate` is ISO 8601. The parser is pure;
`fetch_polymarket` does the HTTP (riskd/feeds/metadata.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import aiohttp

from riskd.feeds.metadata import (
    IDS_PER_REQUEST,
    Lookup,
    MetadataError,
    chunks,
    get_json,
    iso_time,
    parse_entries,
)
from riskd.markets import Market
from riskd.secrets import mask_url

CONDITION_ID = re.compile(r"^0x[0-9a-fA-F]{64}$")


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
    resolves = iso_time(entry.get("endDate"), "endDate")
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
    queries = [
        ("clob_token_ids", sorted(set(token_ids))),
        ("condition_ids", sorted(set(condition_ids))),
        ("slug", sorted(set(slugs))),
    ]
    for key, values in queries:
        for chunk in chunks(values, IDS_PER_REQUEST):
            offset = 0
            while True:
                params = [(key, v) for v in chunk]
                params += [("limit", str(page_size)), ("offset", str(offset))]
                page = await get_json(session, url, params)
                if not isinstance(page, list):
                    raise MetadataError(f"GET {mask_url(url)}: expected a JSON list of markets")
                fresh = [
                    e for e in page if not (isinstance(e, dict) and e.get("conditionId") in seen)
                ]
                parse_entries(fresh, gamma_market, lookup)
                seen.update(m.id for m in lookup.markets)
                if len(page) < page_size:
                    break
                offset += len(page)
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
