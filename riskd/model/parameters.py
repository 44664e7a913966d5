"""From estimator state to target margins, leverage, fee and slippage (spec section 4).

Side 0 is long YES (value p), side 1 is long NO, i.e. short YES (value 1 - p).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from riskd.model import scenarios
from riskd.model.estimator import EstimatorState, expit

if TYPE_CHECKING:
    from riskd.config import ModelSettings

LONG, SHORT = 0, 1
SIDES = ("long", "short")

# Reason codes carried by every published set; a bitmask per market inside the model.
REASONS = (
    "near_resolution",
    "extreme_probability",
    "jump_detected",
    "stale_feed",
    "high_volatility",
    "config_override",
    "warming_up",
    "resolved",
    "unknown_resolution",
    "halted_after_jump",
    "thin_market",
    "model_error",
)
BIT = {name: 1 << i for i, name in enumerate(REASONS)}


def reason_names(mask: int) -> list[str]:
    return [name for name, bit in BIT.items() if mask & bit]


@dataclass(frozen=True)
class RiskInputs:
    """Per-market inputs of section 2 plus the effective estimator values of section 3."""

    p: np.ndarray
    x: np.ndarray
    tau: np.ndarray  # seconds to the decisive event, >= 0
    sigma: np.ndarray
    lam: np.ndarray
    J: np.ndarray
    gap: np.ndarray  # effective gap between prices, s
    h: np.ndarray  # effective liquidation horizon, s
    half_spread: np.ndarray
    tick: np.ndarray


def risk_inputs(
    state: EstimatorState, now: float | np.ndarray, event_t: np.ndarray, cfg: ModelSettings
) -> RiskInputs:
    """Effective values at `now` (section 3 end, section 4 horizon, section 2 tau)."""
    p = np.clip(expit(state.x), cfg.eps, 1.0 - cfg.eps)
    # Unknown resolution time -> default_tau_s; after the decisive event tau is 0.
    tau = np.where(np.isnan(event_t), cfg.default_tau_s, np.maximum(event_t - now, 0.0))
    sigma = np.maximum(np.sqrt(state.sigma2), cfg.sigma_floor)
    lam = np.maximum(state.lambda_at(now, cfg), cfg.lambda_prior)
    J = np.maximum(np.sqrt(state.J2), cfg.J_floor)
    # The silence since the last price is evidence about the wait for the next one.
    since = np.maximum(np.nan_to_num(now - state.t, nan=0.0), 0.0)
    gap = np.fmax(state.gap, since)
    h = np.maximum(cfg.liquidation_horizon_s, cfg.k_liquidity * np.nan_to_num(gap, nan=0.0))
    return RiskInputs(
        p=p, x=np.log(p) - np.log1p(-p), tau=tau, sigma=sigma, lam=lam, J=J, gap=gap, h=h,
        half_spread=state.half_spread, tick=state.tick_size,
    )


@dataclass(frozen=True)
class Targets:
    """Model values before the governor; arrays of shape (markets, 2) are per side."""

    max_leverage: np.ndarray
    initial_margin: np.ndarray  # price units per share
    maintenance_margin: np.ndarray
    fee_rate_hourly: np.ndarray
    max_slippage: np.ndarray  # (markets,)
    q: np.ndarray  # probability of the resolution event within h
    reasons: np.ndarray  # (markets,) int64 bitmask
    es: np.ndarray  # expected shortfall per side
    es_by_group: np.ndarray | None = None  # (markets, 2, 3) contributions, on request
    fee_by_group: np.ndarray | None = None


def compute(
    inp: RiskInputs,
    cfg: ModelSettings,
    max_leverage: np.ndarray,
    max_slippage: np.ndarray,
    fee_floor: np.ndarray,
    detail: bool = False,
    leverage_pin: np.ndarray | None = None,
) -> Targets:
    """Section 4 for all markets at once."""
    q = scenarios.resolution_probability(inp.h, inp.tau, cfg.h_min_s)
    sc = scenarios.build(inp.p, inp.x, inp.sigma, inp.lam, inp.J, inp.h, q, cfg.nodes)
    h_hours = inp.h / 3600.0
    m = inp.p.shape[0]
    lev = np.empty((m, 2))
    im = np.empty((m, 2))
    fee = np.empty((m, 2))
    es = np.empty((m, 2))
    es_g = np.zeros((m, 2, 3)) if detail else None
    fee_g = np.zeros((m, 2, 3)) if detail else None
    for side in (LONG, SHORT):
        if side == LONG:
            value, value_h = inp.p, sc.p_h
        else:
            value, value_h = 1.0 - inp.p, sc.p_h_no
        loss = value[:, None] - value_h
        w = scenarios.tail_weights(loss, sc.prob, cfg.confidence)
        es_side = np.sum(loss * w, axis=1)
        # The resolution event is margined in full: no liquidation can act on it, so
        # its share q of the position is held at its value and the rest at the ES of
        # the scenarios a liquidation can meet. Without this a near-certain market
        # (losing outcome less likely than 1 - confidence) gets looser as tau falls,
        # because the resolution atoms crowd the news/diffusion tail out of the ES,
        # and keeps leverage > 1 at tau = 0 (spec property 6.3). ES is concave in q
        # and meets this chord at q = 0 and, when the losing outcome is at least
        # 1 - confidence likely, at q = 1: there the ES is above it, unchanged.
        es_liquid = np.sum(loss * scenarios.tail_weights(loss, sc.prob_liquid, cfg.confidence),
                           axis=1)
        settle = q * value + (1.0 - q) * es_liquid
        margin = np.clip(np.maximum(es_side, settle), cfg.m_floor * value, value)
        # ES sums weights that add to 1 only to rounding: a margin within rounding of
        # the value is the value (leverage exactly 1, nothing lent, property 6.5), not
        # a loan of 1e-16 priced at the full gap premium.
        margin = np.where(margin >= (1.0 - 1e-12) * value, value, margin)
        lev_side = np.clip(value / margin, 1.0, max_leverage)
        if leverage_pin is not None:  # an operator's loosening override (riskd/overrides.py)
            lev_side = np.where(np.isnan(leverage_pin), lev_side,
                                np.clip(leverage_pin, 1.0, max_leverage))
        im_side = value / lev_side
        debt = value - im_side
        # The lender's loss past the bankruptcy price: the fair put premium (section 4).
        shortfall = sc.prob * np.maximum(debt[:, None] - value_h, 0.0)
        lent = debt > 0.0
        scale = np.where(lent, (1.0 + cfg.fee_loading) / np.where(lent, debt, 1.0) / h_hours, 0.0)
        fee[:, side] = np.maximum(np.sum(shortfall, axis=1) * scale, fee_floor)
        lev[:, side], im[:, side], es[:, side] = lev_side, im_side, es_side
        if es_g is not None and fee_g is not None:
            for g in range(3):
                in_g = sc.group == g
                es_g[:, side, g] = np.sum((loss * w)[:, in_g], axis=1)
                fee_g[:, side, g] = np.sum(shortfall[:, in_g], axis=1) * scale

    price_vol = inp.p * (1.0 - inp.p) * inp.sigma
    slip = np.clip(
        cfg.z_slip * price_vol * np.sqrt(cfg.h_exec_s) + inp.half_spread, inp.tick, max_slippage
    )
    reasons = np.zeros(m, dtype=np.int64)
    reasons |= np.where(np.minimum(inp.p, 1 - inp.p) < 0.05, BIT["extreme_probability"], 0)
    reasons |= np.where(inp.sigma > 4.0 * cfg.sigma_prior, BIT["high_volatility"], 0)
    reasons |= np.where(inp.h > cfg.liquidation_horizon_s, BIT["thin_market"], 0)
    if leverage_pin is not None:
        reasons |= np.where(np.isnan(leverage_pin), 0, BIT["config_override"])
    return Targets(
        max_leverage=lev, initial_margin=im, maintenance_margin=cfg.maintenance_ratio * im,
        fee_rate_hourly=fee, max_slippage=slip, q=q, reasons=reasons, es=es,
        es_by_group=es_g, fee_by_group=fee_g,
    )
