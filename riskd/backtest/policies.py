"""Leverage policies compared by the backtest (spec section 7).

Each policy answers, for one market at one time: the max leverage it offers per
side, the maintenance margin as a fraction of position value, the borrow fee
per hour per unit lent, and the liquidation slippage limit (None: any price).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Protocol, TypeVar

import numpy as np

from riskd.config import Settings
from riskd.engine import Engine, rounds, tick_arrays
from riskd.feeds.base import Tick
from riskd.markets import Market
from riskd.model import parameters
from riskd.model.estimator import EstimatorState
from riskd.model.governor import NORMAL, Conditions
from riskd.model.parameters import BIT

# The perpetual-futures baseline: 0.01% per 8 hours.
FLAT_FEE_HOURLY = 0.0001 / 8


@dataclass(frozen=True, slots=True)
class Offer:
    leverage: tuple[float, float]  # long YES, long NO
    maintenance: tuple[float, float]  # fraction of position value
    fee_hourly: tuple[float, float]
    slippage: float | None = None
    opening: bool = True  # new positions allowed (mode normal)
    deleverage: bool = False  # positions carrying debt must close (before resolution)
    # riskd goes to its fail-safe values when a market has no price for stale_after_s;
    # from then until the next price the fallback is in force.
    expires_after: float = float("inf")
    fallback: Offer | None = None


class Policy(Protocol):
    name: str

    def prepare(self, ticks: list[Tick]) -> None:
        """See the whole tape once before the simulation (time order)."""
        ...

    def offer(self, row: int, t: float, p: float, open_interest: float) -> Offer:
        """What is offered after tape row `row` (at time t, price p)."""
        ...


class Static:
    """A fixed leverage with maintenance at half the initial margin and a flat fee."""

    def __init__(self, name: str, leverage: float, fee_hourly: float = FLAT_FEE_HOURLY) -> None:
        self.name = name
        mm = 0.5 / leverage
        self._offer = Offer((leverage, leverage), (mm, mm), (fee_hourly, fee_hourly))

    def prepare(self, ticks: list[Tick]) -> None:
        return None

    def offer(self, row: int, t: float, p: float, open_interest: float) -> Offer:
        return self._offer


class OpenInterestScaled:
    """dYdX v4 liquidity tier: IMF 5% rising linearly with open interest to 100%
    between the lower and upper cap; MMF 60% of the IMF."""

    name = "oi_scaled"

    def __init__(self, lower_cap: float = 20.0, upper_cap: float = 100.0,
                 base_imf: float = 0.05, fee_hourly: float = FLAT_FEE_HOURLY) -> None:
        self.lower_cap, self.upper_cap, self.base_imf = lower_cap, upper_cap, base_imf
        self.fee = fee_hourly

    def prepare(self, ticks: list[Tick]) -> None:
        return None

    def offer(self, row: int, t: float, p: float, open_interest: float) -> Offer:
        scale = (open_interest - self.lower_cap) / (self.upper_cap - self.lower_cap)
        imf = self.base_imf + (1.0 - self.base_imf) * min(1.0, max(0.0, scale))
        lev = 1.0 / imf
        return Offer((lev, lev), (0.6 * imf, 0.6 * imf), (self.fee, self.fee))


def binary_entropy(p: float) -> float:
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


class D8XEntropy:
    """D8X prediction-market margins: IM rate 0.2 + 0.3 h(p), MM 0.18 + 0.22 h(p)."""

    name = "d8x_entropy"

    def __init__(self, fee_hourly: float = FLAT_FEE_HOURLY) -> None:
        self.fee = fee_hourly

    def prepare(self, ticks: list[Tick]) -> None:
        return None

    def offer(self, row: int, t: float, p: float, open_interest: float) -> Offer:
        h = binary_entropy(p)  # symmetric: the same for the YES and the NO value
        im, mm = 0.2 + 0.3 * h, 0.18 + 0.22 * h
        return Offer((1 / im, 1 / im), (mm, mm), (self.fee, self.fee))


class Riskd:
    """riskd itself: the daemon's engine (model + governor), cycled at every tick of a
    market. Markets are independent, so the k-th ticks of all markets go through the
    model in one vectorised round."""

    name = "riskd"
    FREEZE = BIT["near_resolution"] | BIT["resolved"]

    def __init__(self, settings: Settings, markets: dict[str, Market]) -> None:
        self.engine = Engine(settings, markets, discover=True)
        self.ratio = settings.model.maintenance_ratio
        self.stale_after_s = settings.governor.stale_after_s

    def prepare(self, ticks: list[Tick]) -> None:
        eng = self.engine
        n = len(ticks)
        self.leverage = np.ones((n, 2))
        self.fee = np.zeros((n, 2))
        self.slippage = np.zeros(n)
        self.mode = np.full(n, -1, np.int64)
        self.reasons = np.zeros(n, np.int64)
        self.jump = np.zeros(n, bool)
        self._market = [tick.market for tick in ticks]
        idx = np.fromiter((eng.index[tk.market] if tk.market in eng.index
                           else eng.add_market(tk.market, None) for tk in ticks), np.int64, n)
        if n == 0:
            return
        _, t, p, half_spread, depth = tick_arrays([(0, tk) for tk in ticks])
        # Pass 1, one compiled pass in time order: the estimator, recording each market's
        # state right after each of its ticks.
        rec = EstimatorState(**{f.name: np.empty(n, getattr(eng.est, f.name).dtype)
                                for f in fields(EstimatorState)})
        self.jump[:] = eng.apply(idx, t, p, half_spread, depth, record=rec)
        # Pass 2, vectorised: what the model and the governor see at every row.
        model = eng.settings.model
        inputs = parameters.risk_inputs(rec, t, eng.event_t[idx], model)
        warm = (rec.ticks >= model.warmup_ticks) & (t - eng.first_t[idx] >= model.warmup_s)
        conds = Conditions(last_tick_t=rec.t, last_jump_t=rec.last_jump_t,
                           event_t=eng.event_t[idx], resolve_t=eng.resolve_t[idx], warm=warm,
                           fee_floor=eng.fee_floor[idx])
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            targets = parameters.compute(inputs, model, eng.max_leverage[idx],
                                         eng.max_slippage[idx], eng.fee_floor[idx])
        # Pass 3, sequential: the governor, round by round (the k-th row of every market).
        for batch in rounds([(m, r) for r, m in enumerate(idx.tolist())]):
            rows = np.fromiter((r for _, r in batch), np.int64, len(batch))
            i = idx[rows]
            eng.govern(t[rows], i, computed=(_rows(inputs, rows), _rows(targets, rows)),
                       cond=_rows(conds, rows))
            g = eng.gov
            self.leverage[rows] = g.leverage[i]
            self.fee[rows] = g.fee[i]
            self.slippage[rows] = g.slippage[i]
            self.mode[rows] = g.mode[i]
            self.reasons[rows] = g.reasons[i]

    def offer(self, row: int, t: float, p: float, open_interest: float) -> Offer:
        if self.mode[row] < 0:  # nothing published yet: no leverage
            return Offer((1.0, 1.0), (self.ratio, self.ratio), (0.0, 0.0), opening=False)
        lev = (float(self.leverage[row, 0]), float(self.leverage[row, 1]))
        floor = float(self.engine.fee_floor[self.engine.index[self._market[row]]])
        fail_safe = Offer((1.0, 1.0), (self.ratio, self.ratio), (floor, floor),
                          slippage=float(self.slippage[row]), opening=False)
        return Offer(
            leverage=lev,
            maintenance=(self.ratio / lev[0], self.ratio / lev[1]),
            fee_hourly=(float(self.fee[row, 0]), float(self.fee[row, 1])),
            slippage=float(self.slippage[row]),
            opening=int(self.mode[row]) == NORMAL,
            deleverage=bool(int(self.reasons[row]) & self.FREEZE),
            expires_after=self.stale_after_s,
            fallback=fail_safe,
        )


R = TypeVar("R", parameters.RiskInputs, parameters.Targets, Conditions)


def _rows(data: R, rows: np.ndarray) -> R:
    """The rows `rows` of a struct of per-row arrays (None fields stay None)."""
    sliced: dict[str, Any] = {}
    for f in fields(data):
        value = getattr(data, f.name)
        sliced[f.name] = None if value is None else value[rows]
    return type(data)(**sliced)


def all_policies(settings: Settings, markets: dict[str, Market]) -> list[Policy]:
    return [
        Riskd(settings, markets),
        Static("static_20x", 20.0),
        Static("static_1x", 1.0),
        OpenInterestScaled(),
        D8XEntropy(),
    ]
