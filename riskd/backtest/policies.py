"""Leverage policies compared by the backtest (spec section 7).

Each policy answers, for one market after each tape row: the max leverage it
offers per side, the maintenance margin as a fraction of position value, the
borrow fee per hour per unit lent and any fee charged once at opening. The
answers for all rows come at once, as arrays, so that the trader simulation can
run compiled (simulate.py). What is not a policy's to choose (the resolution
freeze, settlement, how liquidations fill) is the judge's, the same for every
policy (simulate.Rules).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np

from riskd.config import Settings
from riskd.engine import Engine
from riskd.feeds.base import Tick
from riskd.jit import njit
from riskd.markets import Market
from riskd.model.estimator import EstimatorState
from riskd.model.governor import NORMAL, GovernorState
from riskd.model.parameters import BIT
from riskd.ticks import TickColumns

# The perpetual-futures interest baseline: 0.01% per 8 hours (0.125 bp an hour), the
# default funding rate Binance and Bybit use and dYdX's governance proposed for its
# isolated markets (docs/model.md section 8, fees table).
FLAT_FEE_HOURLY = 0.0001 / 8


@dataclass
class OITier:
    """dYdX v4 liquidity tier: IMF `base_imf` rising linearly with open interest to
    100% between the lower and upper cap; MMF 60% of the IMF."""

    lower_cap: float
    upper_cap: float
    base_imf: float


@dataclass
class Offers:
    """What a policy offers after each tape row: row k of every array is the offer
    in force after row k (n rows)."""

    leverage: np.ndarray  # (n, 2) float: long YES, long NO
    maintenance: np.ndarray  # (n, 2) float: fraction of position value
    fee_hourly: np.ndarray  # (n, 2) float
    open_fee: np.ndarray  # (n, 2) float: paid once at opening, fraction of position value
    opening: np.ndarray  # (n,) bool: new positions allowed (mode normal)
    deleverage: np.ndarray  # (n,) bool: positions carrying debt must close (before resolution)
    # riskd goes to its fail-safe values when a market has no price for stale_after_s:
    # from expires_after seconds after the row until the market's next row, the
    # fallback's row is in force. inf: never (the fallback's row is then not used).
    expires_after: np.ndarray  # (n,) float
    fallback: Offers | None = None
    # Leverage and maintenance depend on the open interest, hence on the simulated
    # positions: the simulation fills them in as it goes (they start as nan).
    oi_tier: OITier | None = None

    @classmethod
    def constant(cls, n: int, leverage: float, maintenance: float, fee_hourly: float) -> Offers:
        """The same offer, on both sides, after every row: no opening fee, opening."""
        return cls(
            leverage=np.full((n, 2), leverage),
            maintenance=np.full((n, 2), maintenance),
            fee_hourly=np.full((n, 2), fee_hourly),
            open_fee=np.zeros((n, 2)),
            opening=np.ones(n, bool),
            deleverage=np.zeros(n, bool),
            expires_after=np.full(n, np.inf),
        )


class Policy(Protocol):
    name: str

    def prepare(self, ticks: Sequence[Tick] | TickColumns) -> None:
        """See the whole tape once before the simulation (time order)."""
        ...

    def offers(self, t: np.ndarray, p: np.ndarray) -> Offers:
        """What is offered after each tape row (times t, prices p) of the tape prepared."""
        ...


class Static:
    """A fixed leverage with maintenance at half the initial margin and a flat fee."""

    def __init__(self, name: str, leverage: float, fee_hourly: float = FLAT_FEE_HOURLY) -> None:
        self.name = name
        self.leverage, self.fee = leverage, fee_hourly

    def prepare(self, ticks: Sequence[Tick] | TickColumns) -> None:
        return None

    def offers(self, t: np.ndarray, p: np.ndarray) -> Offers:
        return Offers.constant(t.shape[0], self.leverage, 0.5 / self.leverage, self.fee)


class OpenInterestScaled:
    """dYdX v4 liquidity tier: IMF 5% rising linearly with open interest to 100%
    between the lower and upper cap; MMF 60% of the IMF."""

    def __init__(
        self,
        lower_cap: float = 20.0,
        upper_cap: float = 100.0,
        base_imf: float = 0.05,
        fee_hourly: float = FLAT_FEE_HOURLY,
        name: str = "oi_scaled",
    ) -> None:
        self.name = name
        self.lower_cap, self.upper_cap, self.base_imf = lower_cap, upper_cap, base_imf
        self.fee = fee_hourly

    def prepare(self, ticks: Sequence[Tick] | TickColumns) -> None:
        return None

    def offers(self, t: np.ndarray, p: np.ndarray) -> Offers:
        # Open interest comes from the simulated positions: the simulation applies the
        # tier row by row (simulate.py) and fills in leverage and maintenance.
        offer = Offers.constant(t.shape[0], np.nan, np.nan, self.fee)
        offer.oi_tier = OITier(self.lower_cap, self.upper_cap, self.base_imf)
        return offer


@njit
def binary_entropy(p: np.ndarray) -> np.ndarray:
    # Compiled for math.log2 (the C library's): numpy's own log2 differs in the last
    # bit for a few values, which would move the backtest's figures.
    h = np.zeros(p.shape[0])
    for k in range(p.shape[0]):
        if not (p[k] <= 0.0 or p[k] >= 1.0):
            h[k] = -(p[k] * math.log2(p[k]) + (1.0 - p[k]) * math.log2(1.0 - p[k]))
    return h


class D8XEntropy:
    """D8X's prediction-market perpetuals as its SDK computes them (D8-X/d8x-futures-node-sdk,
    src/d8XMath.ts: pmInitialMarginRate, pmMaintenanceMarginRate, pmMarginThresh,
    pmExchangeFee).

    A position's margin is on its own side's value, p a contract long and 1 - p short
    (a short YES perp is the long NO here): IM rate 0.2 + 0.3 h(p), MM rate
    0.18 + 0.22 h(p). Opening pays the exchange fee, the pool's expected loss per
    contract, max(p (1 - p) (1 - v IM), 0.001) for a side worth v; nothing is paid
    while holding (funding passes between traders). Collateral 1 pays both margin
    and fee, V IM + V f = 1 with f the fee per unit of value V, so the leverage a
    trader gets is 1 / (IM + f): below 1x on the long shot's side, where the fee is
    most of the value (a long NO at p near 1 gets none).

    `scale` multiplies both margin rates (the frontier's knob; 1 is D8X's); the fee
    follows the scaled initial margin, as the SDK's formula does.
    """

    def __init__(self, scale: float = 1.0, name: str = "d8x_entropy") -> None:
        self.scale, self.name = scale, name

    def prepare(self, ticks: Sequence[Tick] | TickColumns) -> None:
        return None

    def offers(self, t: np.ndarray, p: np.ndarray) -> Offers:
        h = binary_entropy(p)  # symmetric: the same for the YES and the NO side
        im, mm = self.scale * (0.2 + 0.3 * h), self.scale * (0.18 + 0.22 * h)
        offer = Offers.constant(t.shape[0], 1.0, np.nan, 0.0)
        offer.maintenance[:] = mm[:, None]
        for s, v in enumerate((p, 1.0 - p)):
            worth = v > 0.0  # a side worth nothing cannot be bought
            v = np.where(worth, v, 1.0)
            fee = np.maximum(p * (1.0 - p) * (1.0 - v * im), 0.001) / v
            offer.leverage[:, s] = np.where(worth, 1.0 / (im + fee), 1.0)
            offer.open_fee[:, s] = np.where(worth, fee, 0.0)
        return offer


class Riskd:
    """riskd itself: the daemon's engine (model + governor), cycled at every tick of a
    market. `prepare` takes the whole tape in three passes: the estimator and the
    governor each in one compiled pass in time order, the model over all rows at
    once (markets are independent, and the model has no state)."""

    name = "riskd"
    FREEZE = BIT["near_resolution"] | BIT["resolved"]

    def __init__(self, settings: Settings, markets: dict[str, Market]) -> None:
        self.engine = Engine(settings, markets, discover=True)
        self.ratio = settings.model.maintenance_ratio
        self.stale_after_s = settings.governor.stale_after_s

    def prepare(self, ticks: Sequence[Tick] | TickColumns) -> None:
        eng = self.engine
        cols = TickColumns.of(ticks)
        n = len(cols)
        # Markets the tape holds and the markets file does not, in order of appearance.
        unknown: list[tuple[str, Market | None]] = [
            (m, None) for m in cols.markets if m not in eng.index
        ]
        if unknown:  # growing by none would copy every array of the engine for nothing
            eng.add_markets(unknown)
        slot = np.array([eng.index[m] for m in cols.markets], np.int64)
        idx = self._idx = slot[cols.market]
        # What was in force after each row, as published (mode -1: nothing yet).
        published = GovernorState.empty(n)
        self.leverage, self.fee, self.slippage = (
            published.leverage,
            published.fee,
            published.slippage,
        )
        self.mode, self.reasons = published.mode, published.reasons
        self.jump = np.zeros(n, bool)
        self.stale_limit = np.full(n, self.stale_after_s)
        self.horizon = np.full(n, np.nan)
        self.last_jump_t = np.full(n, np.nan)
        if n == 0:
            return
        t, (p, half_spread), depth = cols.ts, cols.book(), cols.depth
        # Pass 1, one compiled pass in time order: the estimator, recording each market's
        # state right after each of its ticks.
        rec = EstimatorState(
            **{f.name: np.empty(n, getattr(eng.est, f.name).dtype) for f in fields(EstimatorState)}
        )
        self.jump[:] = eng.apply(idx, t, p, half_spread, depth, record=rec)
        # Pass 2, vectorised: the model and the governor's conditions at every row.
        inputs, targets = eng.targets(t, idx, est=rec)
        # Each row's model, for the open-interest caps of a fund backtest (fund.py).
        self.inputs, self.targets = inputs, targets
        conds = eng.conditions(t, idx, est=rec)
        # How long each row's values stay in force without a price (the engine's rule).
        self.stale_limit = (
            np.full(n, self.stale_after_s) if conds.stale_limit is None else conds.stale_limit
        )
        self.gap_at = np.nan_to_num(rec.gap, nan=0.0)  # each row's mean gap (tests, docs)
        # Pass 3, one compiled pass in time order: the governor, recording what was in
        # force after each row.
        _, decision = eng.govern(t, idx, computed=(inputs, targets), cond=conds, record=published)
        # For the margin backtest (calibrate.py): the liquidation horizon of the set in
        # force after each row, as the daemon publishes it (the inputs of the set's own
        # publish, not the row's), and the estimator's last jump.
        self.horizon[:] = _carry(inputs.h, decision.publish, idx)
        self.last_jump_t[:] = rec.last_jump_t

    def offers(self, t: np.ndarray, p: np.ndarray) -> Offers:
        """What the governor published after each row of the tape prepared, and its
        fail-safe values (leverage 1, the fee floor) once stale_after_s passes."""
        n = len(self._idx)
        floor = self.engine.fee_floor[self._idx]
        fail_safe = Offers.constant(n, 1.0, self.ratio, 0.0)
        fail_safe.fee_hourly[:] = floor[:, None]
        fail_safe.opening[:] = False
        offer = Offers(
            leverage=self.leverage.copy(),
            maintenance=self.ratio / self.leverage,
            fee_hourly=self.fee.copy(),
            open_fee=np.zeros((n, 2)),
            opening=self.mode == NORMAL,
            deleverage=(self.reasons & self.FREEZE) != 0,
            expires_after=self.stale_limit.copy(),
            fallback=fail_safe,
        )
        # Nothing published yet: no leverage, no fee, no opening, never stale.
        none = self.mode < 0
        offer.leverage[none] = 1.0
        offer.maintenance[none] = self.ratio
        offer.fee_hourly[none] = 0.0
        offer.opening[none] = False
        offer.deleverage[none] = False
        offer.expires_after[none] = np.inf
        return offer


def _carry(values: np.ndarray, publish: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Row k: `values` at the latest row j <= k of the same market with publish[j]
    (nan before the market's first publish)."""
    n = len(idx)
    order = np.argsort(idx, kind="stable")
    at = np.arange(n)
    latest = np.maximum.accumulate(np.where(publish[order], at, -1)) if n else at
    # Where each market's run starts in `order`: a carry never crosses markets.
    first = np.ones(n, bool)
    first[1:] = idx[order][1:] != idx[order][:-1]
    start = np.maximum.accumulate(np.where(first, at, 0)) if n else at
    out = np.empty(n)
    out[order] = np.where(latest >= start, values[order[np.maximum(latest, 0)]], np.nan)
    return out


def all_policies(settings: Settings, markets: dict[str, Market]) -> list[Policy]:
    return [
        Riskd(settings, markets),
        Static("static_20x", 20.0),
        Static("static_1x", 1.0),
        OpenInterestScaled(),
        D8XEntropy(),
    ]
