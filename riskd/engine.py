"""The engine: ticks in, published parameter sets out. Shared by daemon and backtest.

Holds the market registry (id -> array slot), the estimator and governor state,
and turns one cycle's model output into the published JSON entries. No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from riskd.config import Settings
from riskd.feeds.base import Tick
from riskd.markets import Market
from riskd.model import estimator, governor, parameters
from riskd.model.governor import MODES, Conditions, GovernorState
from riskd.model.parameters import SIDES, reason_names
from riskd.timeutil import iso

DEFAULT_TICK_SIZE = 0.01


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
        self.last_targets: parameters.Targets | None = None
        self.now = float("-inf")  # the latest event time seen
        for market in markets.values():
            self._add(market.id, market)

    def __len__(self) -> int:
        return len(self.ids)

    def _add(self, market_id: str, meta: Market | None) -> int:
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
        rounds: list[list[tuple[int, Tick]]] = []
        seen: dict[int, int] = {}
        last_t = self.est.t
        for tick in ticks:
            i = self.index.get(tick.market)
            if i is None:
                if not self.discover:
                    result.reject("unknown_market")
                    continue
                i = self._add(tick.market, None)
                last_t = self.est.t
            if not (0.0 <= tick.price <= 1.0) or not np.isfinite(tick.ts):
                result.reject("bad_price")
                continue
            if tick.ts < last_t[i]:
                result.reject("out_of_order")
                continue
            r = seen.get(i, 0)
            seen[i] = r + 1
            if r == len(rounds):
                rounds.append([])
            rounds[r].append((i, tick))
        for batch in rounds:
            result.jumps += self._apply(batch)
            result.accepted += len(batch)
        return result

    def _apply(self, batch: list[tuple[int, Tick]]) -> int:
        n = len(batch)
        idx = np.fromiter((i for i, _ in batch), np.int64, n)
        t = np.fromiter((tk.ts for _, tk in batch), np.float64, n)
        price = np.fromiter((tk.price for _, tk in batch), np.float64, n)
        bid = np.fromiter((np.nan if tk.bid is None else tk.bid for _, tk in batch), np.float64, n)
        ask = np.fromiter((np.nan if tk.ask is None else tk.ask for _, tk in batch), np.float64, n)
        depth = np.fromiter((np.nan if tk.depth is None else tk.depth for _, tk in batch),
                            np.float64, n)
        both = ~np.isnan(bid) & ~np.isnan(ask)
        # Spec section 2: the mid of the best bid/ask when there is a book, else the print.
        p = np.where(both, 0.5 * (bid + ask), price)
        half_spread = np.where(both, 0.5 * (ask - bid), 0.0)
        self.first_t[idx] = np.fmin(self.first_t[idx], t)
        jumps = estimator.update(self.est, self.settings.model, idx, t, p, half_spread, depth)
        self.now = max(self.now, float(t.max()))
        return int(jumps.sum())

    def conditions(self, now: float) -> Conditions:
        cfg = self.settings.model
        warm = (self.est.ticks >= 2) & (now - self.first_t >= cfg.warmup_s)
        return Conditions(
            last_tick_t=self.est.t,
            last_jump_t=self.est.last_jump_t,
            event_t=self.event_t,
            resolve_t=self.resolve_t,
            warm=warm,
            fee_floor=self.fee_floor,
        )

    def inputs_at(self, now: float) -> parameters.RiskInputs:
        return parameters.risk_inputs(self.est, now, self.event_t, self.settings.model)

    def targets(self, now: float, detail: bool = False) -> tuple[parameters.RiskInputs,
                                                                  parameters.Targets]:
        inp = self.inputs_at(now)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            tg = parameters.compute(inp, self.settings.model, self.max_leverage,
                                    self.max_slippage, self.fee_floor, detail=detail)
        return inp, tg

    def cycle(self, now: float) -> CycleResult:
        """One publish cycle at `now`: model for every market, governor, changed entries."""
        if not self.ids:
            return CycleResult(now=now, entries=[], tightened=0)
        inp, tg = self.targets(now)
        decision = governor.step(self.gov, self.settings.governor, now, tg, self.conditions(now))
        self.last_targets = tg
        entries = [self._entry(int(i), inp) for i in np.flatnonzero(decision.publish)]
        for entry in entries:
            self.current[entry["market"]] = entry
        return CycleResult(now=now, entries=entries, tightened=int(decision.tightened.sum()))

    def _entry(self, i: int, inp: parameters.RiskInputs) -> dict[str, Any]:
        g = self.gov
        p = float(inp.p[i])
        value = (p, 1.0 - p)
        lev = g.leverage[i]
        im = [value[s] / lev[s] for s in range(2)]
        ratio = self.settings.model.maintenance_ratio
        tau = float(inp.tau[i])
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
                "sigma": _sig(float(inp.sigma[i])),
                "lambda": _sig(float(inp.lam[i])),
                "J": _sig(float(inp.J[i])),
                "h_s": round(float(inp.h[i]), 3),
            },
        }


def _sig(x: float, digits: int = 6) -> float:
    """Round to significant digits for a readable payload (values are already governed)."""
    return float(f"{x:.{digits}g}")
