"""The engine: ticks in, published parameter sets out. Shared by daemon and backtest.

Holds the market registry (id -> array slot), the estimator and governor state,
and turns one cycle's model output into the published JSON entries. No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import numpy as np

from riskd.config import Settings
from riskd.feeds.base import Tick
from riskd.markets import Market
from riskd.model import estimator, governor, parameters
from riskd.model.governor import MODES, Conditions, GovernorState
from riskd.model.parameters import SIDES, reason_names
from riskd.overrides import Override
from riskd.timeutil import iso

DEFAULT_TICK_SIZE = 0.01
ALL = slice(None)  # every market; else an index array
Index = slice | np.ndarray
S = TypeVar("S", estimator.EstimatorState, GovernorState)


@dataclass
class IngestResult:
    accepted: int = 0
    jumps: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


@dataclass
class CycleResult:
    now: float
    entries: list[dict[str, Any]]  # published sets, one per market that changed
    tightened: int  # markets tightened in this cycle
    tightened_markets: frozenset[str] = frozenset()  # their ids: publishers send them first


class Engine:
    """Market registry + model + governor for all markets, vectorised."""

    def __init__(self, settings: Settings, markets: dict[str, Market], discover: bool) -> None:
        self.settings = settings
        self.discover = discover
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self.meta: list[Market | None] = []
        cfg = settings.model
        self.est = estimator.EstimatorState.empty(0, cfg)
        self.gov = GovernorState.empty(0)
        self.event_t = np.zeros(0)
        self.resolve_t = np.zeros(0)
        self.first_t = np.zeros(0)
        self.max_leverage = np.zeros(0)
        self.max_slippage = np.zeros(0)
        self.fee_floor = np.zeros(0)
        self.current: dict[str, dict[str, Any]] = {}
        self.overrides: dict[str, Override] = {}  # market id -> admin override
        self.last_targets: parameters.Targets | None = None
        self.now = float("-inf")  # the latest event time seen
        for market in markets.values():
            self.add_market(market.id, market)

    def __len__(self) -> int:
        return len(self.ids)

    def add_market(self, market_id: str, meta: Market | None) -> int:
        i = len(self.ids)
        self.ids.append(market_id)
        self.index[market_id] = i
        self.meta.append(meta)
        lim = self.settings.limits
        tick = (meta.tick_size if meta and meta.tick_size else None) or DEFAULT_TICK_SIZE
        self.est.grow(i + 1, self.settings.model, tick)
        self.gov.grow(i + 1)

        def opt(value: float | None, default: float) -> float:
            return default if value is None else value

        row = {
            "event_t": opt(meta.event_at if meta else None, np.nan),
            "resolve_t": opt(meta.resolves_at if meta else None, np.nan),
            "first_t": np.nan,
            "max_leverage": opt(meta.max_leverage if meta else None, lim.max_leverage),
            "max_slippage": opt(meta.max_slippage if meta else None, lim.max_slippage),
            "fee_floor": opt(meta.fee_floor_hourly if meta else None, lim.fee_floor_hourly),
        }
        for name, value in row.items():
            setattr(self, name, np.append(getattr(self, name), value))
        return i

    def mark_resolved(self, market_id: str, ts: float) -> bool:
        """The venue says the market is over at `ts`: from then on it is resolved (1x,
        reduce-only, spec section 5) whatever the markets file said. False if unknown."""
        i = self.index.get(market_id)
        if i is None:
            return False
        self.resolve_t[i] = np.fmin(self.resolve_t[i], ts)
        self.event_t[i] = np.fmin(self.event_t[i], ts)
        return True

    def set_tick_size(self, market_id: str, tick_size: float) -> bool:
        """The venue changed the market's tick size (the estimator's noise floor)."""
        i = self.index.get(market_id)
        if i is None:
            return False
        self.est.tick_size[i] = tick_size
        return True

    def reconfigure(self, settings: Settings) -> None:
        """Take new settings (SIGHUP); per-market overrides from the markets file stay."""
        lim = settings.limits
        for i, meta in enumerate(self.meta):
            self.max_leverage[i] = (meta.max_leverage if meta and meta.max_leverage
                                    else lim.max_leverage)
            self.max_slippage[i] = (meta.max_slippage if meta and meta.max_slippage
                                    else lim.max_slippage)
            ff = meta.fee_floor_hourly if meta else None
            self.fee_floor[i] = lim.fee_floor_hourly if ff is None else ff
        self.settings = settings

    def ingest(self, ticks: list[Tick]) -> IngestResult:
        """Apply ticks in order; each market's ticks are applied one round at a time."""
        result = IngestResult()
        accepted: list[tuple[int, Tick]] = []
        last_t = self.est.t
        for tick in ticks:
            i = self.index.get(tick.market)
            if i is None:
                if not self.discover:
                    result.reject("unknown_market")
                    continue
                i = self.add_market(tick.market, None)
                last_t = self.est.t
            if not (0.0 <= tick.price <= 1.0) or not np.isfinite(tick.ts):
                result.reject("bad_price")
                continue
            if tick.ts < last_t[i]:
                result.reject("out_of_order")
                continue
            accepted.append((i, tick))
        for batch in rounds(accepted):
            jumps = self.apply(*tick_arrays(batch))
            result.jumps += int(jumps.sum())
            result.accepted += len(batch)
        return result

    def apply(self, idx: np.ndarray, t: np.ndarray, p: np.ndarray, half_spread: np.ndarray,
              depth: np.ndarray) -> np.ndarray:
        """One tick for each of the distinct markets `idx`; returns the jump mask."""
        self.first_t[idx] = np.fmin(self.first_t[idx], t)
        jumps = estimator.update(self.est, self.settings.model, idx, t, p, half_spread, depth)
        self.now = max(self.now, float(t.max()))
        return jumps

    def conditions(self, now: float | np.ndarray, idx: Index = ALL) -> Conditions:
        cfg = self.settings.model
        warm = (self.est.ticks[idx] >= cfg.warmup_ticks) & (now - self.first_t[idx] >= cfg.warmup_s)
        return Conditions(
            last_tick_t=self.est.t[idx],
            last_jump_t=self.est.last_jump_t[idx],
            event_t=self.event_t[idx],
            resolve_t=self.resolve_t[idx],
            warm=warm,
            fee_floor=self.fee_floor[idx],
            **self._override_conditions(idx),
        )

    def _overridden(self, idx: Index) -> list[tuple[int, Override]]:
        """(row of `idx`, override) for each market of `idx` with an admin override."""
        if not self.overrides:
            return []
        rows = None if idx is ALL else np.arange(len(self.ids))[idx]
        out = []
        for market, override in self.overrides.items():
            i = self.index.get(market)
            if i is None:
                continue  # not (yet) known: applies once the market appears
            if rows is None:
                out.append((i, override))
            else:
                out.extend((int(k), override) for k in np.flatnonzero(rows == i))
        return out

    def _override_conditions(self, idx: Index) -> dict[str, np.ndarray]:
        """Mode floors and leverage caps of the overrides (riskd/overrides.py)."""
        found = self._overridden(idx)
        if not found:
            return {}
        n = len(self.est.t[idx])
        floor = np.zeros(n, np.int64)
        cap = np.full((n, 2), np.inf)
        pins = self.settings.server.allow_loosen
        for k, override in found:
            floor[k] = override.mode_floor()
            if override.max_leverage is not None and not (override.loosen and pins):
                cap[k] = override.max_leverage
        return {"mode_floor": floor, "leverage_cap": cap}

    def _leverage_pins(self, idx: Index) -> np.ndarray | None:
        """Leverage targets of loosening overrides (nan: the model's), when allowed."""
        if not self.settings.server.allow_loosen:
            return None
        found = [(k, o) for k, o in self._overridden(idx)
                 if o.loosen and o.max_leverage is not None]
        if not found:
            return None
        pin = np.full(len(self.est.t[idx]), np.nan)
        for k, override in found:
            pin[k] = override.max_leverage
        return pin

    def inputs_at(self, now: float | np.ndarray, idx: Index = ALL) -> parameters.RiskInputs:
        est = self.est if idx is ALL else _take(self.est, idx)
        return parameters.risk_inputs(est, now, self.event_t[idx], self.settings.model)

    def targets(self, now: float | np.ndarray, idx: Index = ALL, detail: bool = False
                ) -> tuple[parameters.RiskInputs, parameters.Targets]:
        inp = self.inputs_at(now, idx)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            tg = parameters.compute(inp, self.settings.model, self.max_leverage[idx],
                                    self.max_slippage[idx], self.fee_floor[idx], detail=detail,
                                    leverage_pin=self._leverage_pins(idx))
        return inp, tg

    def govern(self, now: float | np.ndarray, idx: Index = ALL,
               computed: tuple[parameters.RiskInputs, parameters.Targets] | None = None,
               cond: Conditions | None = None,
               ) -> tuple[parameters.RiskInputs, governor.Decision]:
        """Model and governor at `now` (one time, or one per market of `idx`).

        The backtest passes targets it computed for many rounds at once, with the
        conditions it captured at each round."""
        inp, tg = computed if computed is not None else self.targets(now, idx)
        if cond is None:
            cond = self.conditions(now, idx)
        gov = self.gov if idx is ALL else _take(self.gov, idx)
        decision = governor.step(gov, self.settings.governor, now, tg, cond)
        if idx is not ALL:
            _put(self.gov, idx, gov)
        self.last_targets = tg
        return inp, decision

    def cycle(self, now: float, idx: Index = ALL) -> CycleResult:
        """One publish cycle at `now` for all markets, or only those in `idx`."""
        if not self.ids:
            return CycleResult(now=now, entries=[], tightened=0)
        inp, decision = self.govern(now, idx)
        rows = np.arange(len(self.ids))[idx]
        entries = [self._entry(int(rows[k]), inp, int(k))
                   for k in np.flatnonzero(decision.publish)]
        for entry in entries:
            self.current[entry["market"]] = entry
        tightened = frozenset(self.ids[int(rows[k])] for k in np.flatnonzero(decision.tightened))
        return CycleResult(now=now, entries=entries, tightened=len(tightened),
                           tightened_markets=tightened)

    def _entry(self, i: int, inp: parameters.RiskInputs, k: int) -> dict[str, Any]:
        """Market i's published set; row k of `inp` holds its inputs."""
        g = self.gov
        p = float(inp.p[k])
        value = (p, 1.0 - p)
        lev = g.leverage[i]
        im = [value[s] / lev[s] for s in range(2)]
        ratio = self.settings.model.maintenance_ratio
        tau = float(inp.tau[k])
        return {
            "market": self.ids[i],
            "version": int(g.version[i]),
            "mode": MODES[int(g.mode[i])],
            "max_leverage": {SIDES[s]: round(float(lev[s]), 2) for s in range(2)},
            "initial_margin": {SIDES[s]: _sig(im[s]) for s in range(2)},
            "maintenance_margin": {SIDES[s]: _sig(ratio * im[s]) for s in range(2)},
            "fee_rate_hourly": {SIDES[s]: _sig(float(g.fee[i, s])) for s in range(2)},
            "max_slippage": _sig(float(g.slippage[i])),
            "oi_cap": None,
            "valid_until": iso(float(g.valid_until[i])),
            "reasons": reason_names(int(g.reasons[i])),
            "inputs": {
                "p": _sig(p),
                "tau_s": round(tau, 3),
                "sigma": _sig(float(inp.sigma[k])),
                "lambda": _sig(float(inp.lam[k])),
                "J": _sig(float(inp.J[k])),
                "h_s": round(float(inp.h[k]), 3),
            },
        }


def rounds(pairs: list[tuple[int, Tick]]) -> list[list[tuple[int, Tick]]]:
    """Split ticks into rounds of distinct markets, keeping each market's order."""
    out: list[list[tuple[int, Tick]]] = []
    seen: dict[int, int] = {}
    for i, tick in pairs:
        r = seen.get(i, 0)
        seen[i] = r + 1
        if r == len(out):
            out.append([])
        out[r].append((i, tick))
    return out


def tick_arrays(batch: list[tuple[int, Tick]]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """idx, t, p, half_spread, depth of a round (spec section 2: p is the mid when there
    is a book, else the print)."""
    n = len(batch)
    idx = np.fromiter((i for i, _ in batch), np.int64, n)
    t = np.fromiter((tk.ts for _, tk in batch), np.float64, n)
    price = np.fromiter((tk.price for _, tk in batch), np.float64, n)
    bid = np.fromiter((np.nan if tk.bid is None else tk.bid for _, tk in batch), np.float64, n)
    ask = np.fromiter((np.nan if tk.ask is None else tk.ask for _, tk in batch), np.float64, n)
    depth = np.fromiter((np.nan if tk.depth is None else tk.depth for _, tk in batch),
                        np.float64, n)
    both = ~np.isnan(bid) & ~np.isnan(ask)
    p = np.where(both, 0.5 * (bid + ask), price)
    half_spread = np.where(both, 0.5 * (ask - bid), 0.0)
    return idx, t, p, half_spread, depth


def _take(state: S, idx: Index) -> S:
    """A copy of the rows `idx` of a struct-of-arrays state."""
    return type(state)(**{f.name: getattr(state, f.name)[idx] for f in fields(state)})


def _put(state: S, idx: Index, part: S) -> None:
    for f in fields(state):
        getattr(state, f.name)[idx] = getattr(part, f.name)


def _sig(x: float, digits: int = 6) -> float:
    """Round to significant digits for a readable payload (values are already governed)."""
    return float(f"{x:.{digits}g}")
