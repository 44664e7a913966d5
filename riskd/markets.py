"""Markets file: per-market metadata (resolution and event times, outcome, venue ids, limits)."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = ["LIMIT_KEYS", "RELATIONS", "Market", "MarketsError", "load_markets", "parse_markets"]

LIMIT_KEYS = ("max_leverage", "max_slippage", "fee_floor_hourly")
# How a market's YES relates to its group's event (docs/model.md section 10).
RELATIONS = ("same", "opposite", "independent")
Relation = Literal["same", "opposite", "independent"]


class MarketsError(ValueError):
    """An invalid markets file or entry; the message names the file, entry and key."""


@dataclass(frozen=True, slots=True)
class Market:
    """One market's metadata; times are unix seconds."""

    id: str
    resolves_at: float
    event_at: float
    outcome: int | None = None
    tick_size: float | None = None
    title: str = ""
    polymarket_yes_token: str | None = None
    polymarket_no_token: str | None = None
    kalshi_ticker: str | None = None
    max_leverage: float | None = None
    max_slippage: float | None = None
    fee_floor_hourly: float | None = None
    # The reference position whose unwind through the book sets the liquidation
    # horizon ([model] liquidation_notional when None; docs/model.md section 4).
    liquidation_notional: float | None = None
    # `event_at` was given: the decisive information has a date (polls close, an FOMC
    # statement), and the freeze closes positions before it. Else the decisive news
    # may come any time before `resolves_at` (docs/model.md section 4).
    scheduled: bool = False
    # Markets that resolve together (one election night, one rate decision): the
    # group's name and how this market's YES relates to the group's event. Without a
    # group a market is independent of every other (docs/model.md section 10).
    group: str | None = None
    relation: Relation = "independent"


def _unix(value: Any) -> float:
    """Unix seconds from an ISO 8601 string with offset (or a TOML offset date-time)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"not an ISO 8601 date-time: {value!r}") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"no UTC offset in {value.isoformat()!r} (add Z or +00:00)")
        return value.timestamp()
    if isinstance(value, date):
        raise ValueError(f"a date without a time: {value.isoformat()!r}")
    raise ValueError(f"expected an ISO 8601 date-time string, got {value!r}")


class _Limits(BaseModel):
    """Per-market overrides of [limits]."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # strict: numbers only, so "20" or true are reported rather than coerced.
    max_leverage: float | None = Field(default=None, ge=1, strict=True)
    max_slippage: float | None = Field(default=None, gt=0, lt=1, strict=True)
    fee_floor_hourly: float | None = Field(default=None, ge=0, strict=True)


class MarketEntry(_Limits):
    """One entry of a markets file, as written (before defaults are resolved)."""

    # Unknown keys are informational (e.g. `rows`), not errors: see the interfaces spec.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    id: str = Field(min_length=1)
    resolves_at: float
    event_at: float | None = None
    outcome: int | None = None
    tick_size: float | None = Field(default=None, gt=0, lt=1, strict=True)
    title: str = ""
    polymarket_yes_token: str | None = None
    polymarket_no_token: str | None = None
    kalshi_ticker: str | None = None
    liquidation_notional: float | None = Field(default=None, gt=0, strict=True)
    limits: _Limits | None = None
    group: str | None = Field(default=None, strict=True)
    relation: Relation | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        # Tape market ids are stripped, so these must be too or they would never match.
        if not v.strip():
            raise ValueError("must not be blank")
        return v.strip()

    @field_validator("group")
    @classmethod
    def _group(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must not be blank (leave it out for an independent market)")
        return None if v is None else v.strip()

    @field_validator("relation", mode="before")
    @classmethod
    def _relation(cls, v: Any) -> Any:
        if v is None or v in RELATIONS:
            return v
        raise ValueError(f"must be one of {', '.join(RELATIONS)}, got {v!r}")

    @field_validator("resolves_at", "event_at", mode="before")
    @classmethod
    def _time(cls, v: Any) -> Any:
        return None if v is None else _unix(v)

    @field_validator("outcome", mode="before")
    @classmethod
    def _outcome(cls, v: Any) -> Any:
        # bool is an int in Python; `true` is not a valid outcome here.
        if v is None or (type(v) is int and v in (0, 1)):
            return v
        raise ValueError(f"must be 1, 0 or null, got {v!r}")

    @field_validator("title", mode="before")
    @classmethod
    def _title(cls, v: Any) -> Any:
        return "" if v is None else v

    def to_market(self) -> Market:
        """Resolve defaults and the two places limit overrides may be written."""
        limits = {k: getattr(self, k) for k in LIMIT_KEYS}
        if self.limits is not None:
            for k in LIMIT_KEYS:
                v = getattr(self.limits, k)
                if v is None:
                    continue
                if limits[k] is not None and limits[k] != v:
                    raise ValueError(
                        f"key {k!r}: given both at top level ({limits[k]}) and in limits ({v})"
                    )
                limits[k] = v
        # Both or neither: a group without a relation would guess the direction of the
        # market's loss on the group's event; a relation without a group has no event.
        if self.group is not None and self.relation is None:
            raise ValueError(
                f"key 'relation': required with group {self.group!r} "
                f"(one of {', '.join(RELATIONS)})"
            )
        if self.group is None and self.relation is not None:
            raise ValueError("key 'relation': given without 'group'")
        return Market(
            id=self.id,
            resolves_at=self.resolves_at,
            event_at=self.resolves_at if self.event_at is None else self.event_at,
            outcome=self.outcome,
            tick_size=self.tick_size,
            title=self.title,
            polymarket_yes_token=self.polymarket_yes_token,
            polymarket_no_token=self.polymarket_no_token,
            kalshi_ticker=self.kalshi_ticker,
            liquidation_notional=self.liquidation_notional,
            scheduled=self.event_at is not None,
            group=self.group,
            relation=self.relation or "independent",
            **limits,
        )


def _where(source: str, index: int, entry: Any) -> str:
    ident = entry.get("id") if isinstance(entry, dict) else None
    label = f"markets[{index}]"
    if isinstance(ident, str) and ident:
        label += f" (id {ident!r})"
    return f"{source}: {label}"


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "entry"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "required key is missing"
        parts.append(f"key {key!r}: {msg}")
    return "; ".join(parts)


def parse_markets(entries: list[dict[str, Any]], source: str = "<inline>") -> dict[str, Market]:
    """Validate market entries (from a file or inline config tables), keyed by id."""
    if not isinstance(entries, list):
        raise MarketsError(
            f"{source}: expected a list of market entries, got {type(entries).__name__}"
        )
    out: dict[str, Market] = {}
    first: dict[str, int] = {}
    for i, raw in enumerate(entries):
        where = _where(source, i, raw)
        if not isinstance(raw, dict):
            raise MarketsError(f"{where}: expected a table/object, got {type(raw).__name__}")
        try:
            market = MarketEntry.model_validate(raw).to_market()
        except ValidationError as exc:
            raise MarketsError(f"{where}: {_describe(exc)}") from None
        except ValueError as exc:
            raise MarketsError(f"{where}: {exc}") from None
        if market.id in first:
            raise MarketsError(
                f"{where}: key 'id': duplicate id {market.id!r} "
                f"(first at markets[{first[market.id]}])"
            )
        first[market.id] = i
        out[market.id] = market
    return out


def load_markets(path: str | Path) -> dict[str, Market]:
    """Read a markets file (.toml or .json), keyed by market id."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise MarketsError(f"{p}: unknown markets file format; expected .toml or .json")
    try:
        if suffix == ".toml":
            with open(p, "rb") as f:
                doc: Any = tomllib.load(f)
        else:
            with open(p, encoding="utf-8-sig") as f:
                doc = json.load(f)
    except OSError as exc:
        raise MarketsError(f"{p}: cannot read markets file: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MarketsError(f"{p}: invalid {suffix[1:].upper()}: {exc}") from None
    if isinstance(doc, dict):
        if "markets" not in doc:
            raise MarketsError(
                f"{p}: no 'markets' list (expected [[markets]] or {{\"markets\": [...]}})"
            )
        entries = doc["markets"]
    else:
        entries = doc
    if not isinstance(entries, list):
        raise MarketsError(f"{p}: key 'markets': expected a list of entries")
    return parse_markets(entries, str(p))
