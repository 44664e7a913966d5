"""Markets file: per-market metadata (resolution and event times, outcome, venue ids, limits)."""

from __future__ import annotations

import json
import math
import tomllib
from array import array
from bisect import bisect_left
from collections.abc import ItemsView, Iterable, Iterator, Mapping, Sequence, ValuesView
from dataclasses import dataclass, fields
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "LIMIT_KEYS",
    "RELATIONS",
    "Market",
    "MarketRows",
    "MarketTable",
    "MarketsError",
    "load_markets",
    "parse_markets",
]

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


# --- kept column by column ---------------------------------------------------------

_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Market)}
_AT = {name: i for i, name in enumerate(_DEFAULTS)}  # a field's position
_DEFAULT_ROW = list(_DEFAULTS.values())
_TIMES = ("resolves_at", "event_at")
_TOKENS = ("polymarket_yes_token", "polymarket_no_token")
_SCHEDULED = 1  # flag bits, one byte per market
_TOKEN_BITS = (2, 4)  # the YES, NO token is packed
_TOKEN_BYTES = 32
_NO_TOKEN = bytes(_TOKEN_BYTES)
# Fields with a column of their own; the others are kept aside where not the default.
_KEPT = frozenset(("id", *_TIMES, "tick_size", "title", "scheduled", *_TOKENS))


def _pack_token(token: Any) -> bytes | None:
    """A Polymarket token id (a decimal number below 2**256, 77 digits: 126 bytes as a
    str) in 32 bytes; None for anything that would not read back as the same str."""
    if type(token) is not str or not (0 < len(token) <= 78 and token.isascii()):
        return None
    if not token.isdigit() or (token[0] == "0" and len(token) > 1):
        return None
    value = int(token)
    return value.to_bytes(_TOKEN_BYTES, "big") if value < 1 << 256 else None


class MarketTable(Mapping[str, Market]):
    """Markets by id, in their order, kept column by column: a `Market` is made when one
    is asked for.

    What the daemon keeps of its markets for as long as it runs (the engine's metadata,
    each live feed's list): a `Market` object per market costs ~470 bytes at 100k
    markets (its slots, two 77-digit token strings, its floats), these columns ~120.
    Every value reads back as it was given: a field mostly at its default (limits,
    groups, outcome) and a value a column cannot hold (a token that is not a plain
    decimal number, a time that is not a float) are kept aside, by row."""

    def __init__(self, markets: Iterable[Market] = ()) -> None:
        self.ids: list[str] = []
        self._times = {name: array("d") for name in _TIMES}
        self._tick = array("d")  # nan: None
        self._titles: list[str] = []
        self._tokens = bytearray()  # per market the YES token's 32 bytes, then the NO's
        self._flags = bytearray()
        self._aside: dict[str, dict[int, Any]] = {}
        for market in markets:
            self._append(market)
        # Lookups by id are rare (a venue's listing, explain): a sorted copy of the ids
        # and their rows, 12 bytes per market, instead of a dict's ~80.
        order = sorted(range(len(self.ids)), key=self.ids.__getitem__)
        self._sorted = [self.ids[k] for k in order]
        self._order = array("i", order)
        for a, b in zip(self._sorted, self._sorted[1:], strict=False):
            if a == b:
                raise ValueError(f"duplicate market id {a!r}")

    @classmethod
    def of(cls, markets: Mapping[str, Market]) -> MarketTable:
        return markets if isinstance(markets, MarketTable) else cls(markets.values())

    def _append(self, m: Market) -> None:
        k = len(self.ids)
        self.ids.append(m.id)
        for name in _TIMES:
            t = getattr(m, name)
            if type(t) is not float:
                self._set_aside(name, k, t)
            self._times[name].append(t if type(t) is float else math.nan)
        tick = m.tick_size
        if tick is not None and (type(tick) is not float or math.isnan(tick)):
            self._set_aside("tick_size", k, tick)
        self._tick.append(tick if type(tick) is float else math.nan)
        self._titles.append(m.title)
        flags = _SCHEDULED if m.scheduled is True else 0
        if type(m.scheduled) is not bool:
            self._set_aside("scheduled", k, m.scheduled)
        for name, bit in zip(_TOKENS, _TOKEN_BITS, strict=True):
            token = getattr(m, name)
            packed = _pack_token(token)
            if packed is not None:
                flags |= bit
            elif token is not None:
                self._set_aside(name, k, token)
            self._tokens += packed or _NO_TOKEN
        self._flags.append(flags)
        for name, default in _DEFAULTS.items():
            if name in _KEPT:
                continue
            value = getattr(m, name)
            if value is not default and (value != default or type(value) is not type(default)):
                self._set_aside(name, k, value)

    def _set_aside(self, name: str, k: int, value: Any) -> None:
        self._aside.setdefault(name, {})[k] = value

    def at(self, k: int) -> Market:
        """The market of row `k`."""
        flags = self._flags[k]
        tick = self._tick[k]
        values = _DEFAULT_ROW.copy()  # Market's fields in order: made positionally
        values[_AT["id"]] = self.ids[k]
        values[_AT["resolves_at"]] = self._times["resolves_at"][k]
        values[_AT["event_at"]] = self._times["event_at"][k]
        values[_AT["tick_size"]] = None if math.isnan(tick) else tick
        values[_AT["title"]] = self._titles[k]
        values[_AT["scheduled"]] = bool(flags & _SCHEDULED)
        for side, name in enumerate(_TOKENS):
            if flags & _TOKEN_BITS[side]:
                values[_AT[name]] = self._token(k, side)
        for name, aside in self._aside.items():
            if k in aside:
                values[_AT[name]] = aside[k]
        return Market(*values)

    def _token(self, k: int, side: int) -> str:
        at = (2 * k + side) * _TOKEN_BYTES
        return str(int.from_bytes(self._tokens[at : at + _TOKEN_BYTES], "big"))

    def row(self, market_id: object) -> int | None:
        """The row of `market_id`, None if it is not in the table."""
        if not isinstance(market_id, str):
            return None
        i = bisect_left(self._sorted, market_id)
        if i < len(self._sorted) and self._sorted[i] == market_id:
            return self._order[i]
        return None

    def column(self, name: str) -> list[Any]:
        """One field of every market, in row order."""
        n = len(self.ids)
        if name == "id":
            values: list[Any] = list(self.ids)
        elif name in _TIMES:
            values = self._times[name].tolist()
        elif name == "tick_size":
            values = [None if math.isnan(t) else t for t in self._tick]
        elif name == "title":
            values = list(self._titles)
        elif name == "scheduled":
            values = [bool(f & _SCHEDULED) for f in self._flags]
        elif name in _TOKENS:
            side = _TOKENS.index(name)
            bit = _TOKEN_BITS[side]
            values = [self._token(k, side) if f & bit else None for k, f in enumerate(self._flags)]
        else:
            values = [_DEFAULTS[name]] * n
        for k, value in self._aside.get(name, {}).items():
            values[k] = value
        return values

    def present(self, name: str) -> list[bool]:
        """Per market: the field is set (not None, not empty)."""
        if name in _TOKENS:
            bit = _TOKEN_BITS[_TOKENS.index(name)]
            given = [bool(f & bit) for f in self._flags]
            for k, value in self._aside.get(name, {}).items():
                given[k] = bool(value)
            return given
        return [bool(v) for v in self.column(name)]

    def select(self, ids: Sequence[str]) -> MarketTable:
        """The markets `ids`, in that order (this table itself when they are all of it)."""
        if list(ids) == self.ids:
            return self
        return MarketTable(self[i] for i in ids)

    def __getitem__(self, market_id: str) -> Market:
        k = self.row(market_id)
        if k is None:
            raise KeyError(market_id)
        return self.at(k)

    def __contains__(self, market_id: object) -> bool:
        return self.row(market_id) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def values(self) -> ValuesView[Market]:
        return _Values(self)

    def items(self) -> ItemsView[str, Market]:
        return _Items(self)


class _Values(ValuesView[Market]):
    """The markets in row order, without a lookup by id each."""

    _mapping: MarketTable

    def __iter__(self) -> Iterator[Market]:
        return map(self._mapping.at, range(len(self._mapping)))


class _Items(ItemsView[str, Market]):
    _mapping: MarketTable

    def __iter__(self) -> Iterator[tuple[str, Market]]:
        table = self._mapping
        return zip(table.ids, map(table.at, range(len(table))), strict=True)


class MarketRows(Sequence[Market | None]):
    """The engine's metadata, row by row: the markets it started with (a MarketTable),
    then those added later (a venue's listing: its Market; a discovered market: None)."""

    def __init__(self, table: MarketTable) -> None:
        self.table = table
        self._added: list[Market | None] = []

    def append(self, meta: Market | None) -> None:
        self._added.append(meta)

    def column(self, name: str, start: int = 0) -> list[Any]:
        """One field of the rows from `start` on (None for a row without metadata)."""
        n = len(self.table)
        head = self.table.column(name)[start:] if start < n else []
        tail = self._added[max(start - n, 0) :]
        return head + [None if m is None else getattr(m, name) for m in tail]

    @overload
    def __getitem__(self, k: int) -> Market | None: ...

    @overload
    def __getitem__(self, k: slice) -> list[Market | None]: ...

    def __getitem__(self, k: int | slice) -> Market | None | list[Market | None]:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(k)
        n = len(self.table)
        return self.table.at(k) if k < n else self._added[k - n]

    def __len__(self) -> int:
        return len(self.table) + len(self._added)
