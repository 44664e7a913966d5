"""From estimator state to target margins, leverage, fee and slippage (spec section 4).

Side 0 is long YES (value p), side 1 is long NO, i.e. short YES (value 1 - p).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from riskd.jit import njit
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
    # Open interest near its cap raised a margin (docs/model.md section 10).
    "oi_cap_binding",
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
    gap: np.ndarray  # effective gap between confirmations of the price, s
    h: np.ndarray  # effective liquidation horizon, s
    half_spread: np.ndarray
    tick: np.ndarray
    # The horizon without the book's share (section 4): what the fee's hour is
    # counted in. Equal to h where no book is known; None: h.
    h0: np.ndarray | None = None
    depth: np.ndarray | None = None  # shares within max_slippage of the mid (nan unknown)
    # The reference position's size over that depth, on the side where it is larger.
    book_ratio: np.ndarray | None = None
    scheduled: np.ndarray | None = None  # bool: the decisive event has a date


# A book too shallow to unwind the reference position gives a horizon this long at
# most: beyond 30 days every scenario is the resolution event anyway (q = 1).
H_MAX_S = 30 * 86_400.0


def risk_inputs(
    state: EstimatorState,
    now: float | np.ndarray,
    event_t: np.ndarray,
    cfg: ModelSettings,
    confirmed_t: np.ndarray | None = None,
    live_book: np.ndarray | None = None,
    notional: np.ndarray | float | None = None,
    scheduled: np.ndarray | None = None,
    lam_long: np.ndarray | None = None,
) -> RiskInputs:
    """Effective values at `now` (section 3 end, section 4 horizon, section 2 tau).

    `confirmed_t`: when each market's price was last confirmed (a live venue's
    messages and, for a book held on a live connection, the connection's life;
    default: the last tick, the tape rule). `live_book`: the market's book arrived as
    a snapshot on a connection that is still up, so silence there means "no change"
    and the time between its ticks says nothing about liquidity. `notional`: the
    reference position (default `cfg.liquidation_notional`)."""
    p = np.clip(expit(state.x), cfg.eps, 1.0 - cfg.eps)
    # Unknown resolution time -> default_tau_s; after the decisive event tau is 0.
    tau = np.where(np.isnan(event_t), cfg.default_tau_s, np.maximum(event_t - now, 0.0))
    sigma = np.maximum(np.sqrt(state.sigma2), cfg.sigma_floor)
    # The hot rate (a jump says "this market is moving now") or the market's long-run
    # rate shrunk toward the pool of all markets (`pooled_jump_rate`), the larger.
    lam = np.maximum(state.lambda_at(now, cfg), cfg.lambda_prior if lam_long is None else lam_long)
    J = np.maximum(np.sqrt(state.J2), cfg.J_floor)
    # The silence since the price was last confirmed is evidence about the wait for
    # the next one.
    last = state.t if confirmed_t is None else confirmed_t
    since = np.maximum(np.nan_to_num(now - last, nan=0.0), 0.0)
    gap = np.fmax(state.gap, since)
    if live_book is not None:
        gap = np.where(live_book, since, gap)
    h0 = np.maximum(cfg.liquidation_horizon_s, cfg.k_liquidity * np.nan_to_num(gap, nan=0.0))
    depth, ratio, h_book = book_horizon(
        state.depth, p, cfg, cfg.liquidation_notional if notional is None else notional
    )
    h = np.where(np.isnan(depth), h0, np.maximum(h0, h_book))
    # A margin-call window is waited through before the liquidation starts: both
    # horizons carry it (0 by default: adding 0.0 leaves them bit for bit).
    h0 = h0 + cfg.margin_call_window_s
    h = h + cfg.margin_call_window_s
    return RiskInputs(
        p=p,
        x=np.log(p) - np.log1p(-p),
        tau=tau,
        sigma=sigma,
        lam=lam,
        J=J,
        gap=gap,
        h=h,
        half_spread=state.half_spread,
        tick=state.tick_size,
        h0=h0,
        depth=depth,
        book_ratio=ratio,
        scheduled=scheduled,
    )


def book_horizon(
    depth: np.ndarray, p: np.ndarray, cfg: ModelSettings, notional: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Section 4, liquidity from the book: (depth, ratio, horizon).

    A position of `notional` is `notional / value` shares (value p long, 1 - p
    short): the larger count, on the cheaper side, is the one that meets the book.
    What the visible depth within max_slippage of the mid covers goes at once (the
    base horizon); each further depth's worth waits for the book to rebuild, one
    `book_refill_s` each. Nan where no book is known."""
    depth = np.asarray(depth, np.float64)
    # A depth near zero (even subnormal) overflows the ratio to inf: the longest horizon.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = np.asarray(notional, np.float64) / (np.minimum(p, 1.0 - p) * depth)
    waits = np.maximum(ratio - 1.0, 0.0)
    extra = cfg.book_refill_s * waits if cfg.book_refill_s > 0.0 else np.zeros_like(waits)
    h_book = np.minimum(cfg.liquidation_horizon_s + extra, H_MAX_S)
    return depth, ratio, h_book


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
    """Section 4 for all markets at once: margins, leverage and fee per market and side
    in one compiled pass (`_margins_and_fees`), slippage and reasons vectorised."""
    q = scenarios.resolution_probability(inp.h, inp.tau, cfg.h_min_s)
    q_fee = scenarios.resolution_probability(
        inp.h, inp.tau, cfg.h_min_s, inp.scheduled, cfg.early_news_rate, cfg.early_news_share
    )
    m = inp.p.shape[0]
    z, w = scenarios.gauss_hermite(cfg.nodes)
    out = MarginOut(
        detail=detail,
        leverage=np.empty((m, 2)),
        initial_margin=np.empty((m, 2)),
        fee=np.empty((m, 2)),
        es=np.empty((m, 2)),
        es_by_group=np.zeros((m if detail else 0, 2, 3)),
        fee_by_group=np.zeros((m if detail else 0, 2, 3)),
    )

    def per_market(a: np.ndarray) -> np.ndarray:
        return np.broadcast_to(np.asarray(a, np.float64), (m,)).copy()

    _margins_and_fees(
        MarketInputs.of(inp, q, q_fee),
        MarketLimits(
            max_leverage=per_market(max_leverage),
            fee_floor=per_market(fee_floor),
            pin=_f64(np.full(m, np.nan) if leverage_pin is None else leverage_pin),
        ),
        ScenarioNodes(z=z, w=w, group=scenarios.groups(cfg.nodes)),
        MarginSettings(confidence=cfg.confidence, m_floor=cfg.m_floor, fee_loading=cfg.fee_loading),
        out,
    )

    slip = _slippage(inp, cfg, max_slippage)
    reasons = _reasons(inp, cfg, leverage_pin)
    return Targets(
        max_leverage=out.leverage,
        initial_margin=out.initial_margin,
        maintenance_margin=cfg.maintenance_ratio * out.initial_margin,
        fee_rate_hourly=out.fee,
        max_slippage=slip,
        q=q,
        reasons=reasons,
        es=out.es,
        es_by_group=out.es_by_group if detail else None,
        fee_by_group=out.fee_by_group if detail else None,
    )


def _slippage(inp: RiskInputs, cfg: ModelSettings, max_slippage: np.ndarray) -> np.ndarray:
    """Section 4, max slippage: the price's move over the execution time, the half
    spread and, with a book, the reference position's own impact: the depth within
    max_slippage of the mid taken as spread evenly over that band, unwinding a share
    of it moves the price by that share of the band (all of it when the book is too
    shallow)."""
    price_vol = inp.p * (1.0 - inp.p) * inp.sigma
    impact = (
        0.0
        if inp.book_ratio is None
        else max_slippage * np.nan_to_num(np.minimum(inp.book_ratio, 1.0), nan=0.0)
    )
    return np.clip(
        cfg.z_slip * price_vol * np.sqrt(cfg.h_exec_s) + inp.half_spread + impact,
        inp.tick,
        max_slippage,
    )


def _reasons(inp: RiskInputs, cfg: ModelSettings, leverage_pin: np.ndarray | None) -> np.ndarray:
    """The model's reason bits per market."""
    reasons = np.zeros(inp.p.shape[0], dtype=np.int64)
    reasons |= np.where(np.minimum(inp.p, 1 - inp.p) < 0.05, BIT["extreme_probability"], 0)
    reasons |= np.where(inp.sigma > 4.0 * cfg.sigma_prior, BIT["high_volatility"], 0)
    # Sparse prices or a thin book, not the margin-call window every market waits.
    reasons |= np.where(
        inp.h > cfg.liquidation_horizon_s + cfg.margin_call_window_s, BIT["thin_market"], 0
    )
    if leverage_pin is not None:
        reasons |= np.where(np.isnan(leverage_pin), 0, BIT["config_override"])
    return reasons


class MarketInputs(NamedTuple):
    """Per market: RiskInputs' values and the resolution probabilities (section 4)."""

    p: np.ndarray
    x: np.ndarray
    sigma: np.ndarray
    lam: np.ndarray
    J: np.ndarray
    h: np.ndarray
    h0: np.ndarray  # the horizon without the book's share: the fee's hour
    q: np.ndarray
    q_fee: np.ndarray  # q as a position meets it (the fee's scenarios)

    @classmethod
    def of(cls, inp: RiskInputs, q: np.ndarray, q_fee: np.ndarray) -> MarketInputs:
        return cls(
            p=_f64(inp.p),
            x=_f64(inp.x),
            sigma=_f64(inp.sigma),
            lam=_f64(inp.lam),
            J=_f64(inp.J),
            h=_f64(inp.h),
            h0=_f64(inp.h if inp.h0 is None else inp.h0),
            q=_f64(q),
            q_fee=_f64(q_fee),
        )


def _f64(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float64)


class MarketLimits(NamedTuple):
    """Per market: the configured leverage cap and fee floor, and an override's pin."""

    max_leverage: np.ndarray
    fee_floor: np.ndarray
    pin: np.ndarray  # nan: none


class ScenarioNodes(NamedTuple):
    """Gauss-Hermite nodes and weights, and each scenario column's group."""

    z: np.ndarray
    w: np.ndarray
    group: np.ndarray  # int64


class MarginSettings(NamedTuple):
    confidence: float
    m_floor: float
    fee_loading: float


class MarginOut(NamedTuple):
    """What the pass writes, per market and side; with `detail` the split by group."""

    detail: bool
    leverage: np.ndarray  # (m, 2)
    initial_margin: np.ndarray
    fee: np.ndarray
    es: np.ndarray
    es_by_group: np.ndarray  # (m, 2, 3), or (0, 2, 3) without detail
    fee_by_group: np.ndarray


@njit
def _margins_and_fees(inp, limits, nodes, cfg, out):  # type: ignore[no-untyped-def]
    """Section 4 per market and side, into lev, im, fee, es (and the group split).

    The fee's hour is counted in h0, the horizon without the book's share: a thin
    book makes each liquidation slower and its loss larger, not liquidations more
    frequent (so at a given leverage more depth never raises the fee)."""
    p, x, sigma, lam, J = inp.p, inp.x, inp.sigma, inp.lam, inp.J
    h, h0, q, q_fee = inp.h, inp.h0, inp.q, inp.q_fee
    max_leverage, fee_floor, pin = limits.max_leverage, limits.fee_floor, limits.pin
    z, w, group = nodes.z, nodes.w, nodes.group
    confidence, m_floor, fee_loading = cfg.confidence, cfg.m_floor, cfg.fee_loading
    detail, lev, im, fee, es = out.detail, out.leverage, out.initial_margin, out.fee, out.es
    es_g, fee_g = out.es_by_group, out.fee_by_group
    s = 2 + 2 * z.shape[0]
    p_h, p_h_no = np.empty(s), np.empty(s)
    prob, prob_liquid = np.empty(s), np.empty(s)
    prob_fee, spare = np.empty(s), np.empty(s)
    loss, order = np.empty(s), np.empty(s, np.int64)
    w_all, w_liquid = np.empty(s), np.empty(s)
    for i in range(p.shape[0]):
        if np.isnan(p[i] + x[i] + sigma[i] + lam[i] + J[i] + h[i] + q[i]):
            # No model without its inputs: nan targets are the governor's model_error.
            lev[i, :] = np.nan
            im[i, :] = np.nan
            fee[i, :] = np.nan
            es[i, :] = np.nan
            continue
        scenarios.fill(
            p[i], x[i], sigma[i], lam[i], J[i], h[i], q[i], z, w, p_h, p_h_no, prob, prob_liquid
        )
        # The fee's scenarios: the same prices, weighted by the hazard a position can
        # meet (a scheduled event lies after the freeze: only early news counts).
        scenarios.weigh(p[i], lam[i], h[i], q_fee[i], w, prob_fee, spare)
        h_hours = h0[i] / 3600.0
        for side in range(2):
            value = p[i] if side == LONG else 1.0 - p[i]
            value_h = p_h if side == LONG else p_h_no
            for k in range(s):
                loss[k] = value - value_h[k]
            scenarios.worst_first(loss, order)
            scenarios.tail_weights(prob, order, confidence, w_all)
            scenarios.tail_weights(prob_liquid, order, confidence, w_liquid)
            es_side = 0.0
            es_liquid = 0.0
            for k in range(s):
                es_side += loss[k] * w_all[k]
                es_liquid += loss[k] * w_liquid[k]
            # The resolution event is margined in full: no liquidation can act on it,
            # so its share q of the position is held at its value and the rest at the
            # ES of the scenarios a liquidation can meet. Without this a near-certain
            # market (losing outcome less likely than 1 - confidence) gets looser as
            # tau falls, because the resolution atoms crowd the news/diffusion tail out
            # of the ES, and keeps leverage > 1 at tau = 0 (spec property 6.3). ES is
            # concave in q and meets this chord at q = 0 and, when the losing outcome
            # is at least 1 - confidence likely, at q = 1: there the ES is above it.
            settle = q[i] * value + (1.0 - q[i]) * es_liquid
            margin = min(max(max(es_side, settle), m_floor * value), value)
            # ES sums weights that add to 1 only to rounding: a margin within rounding
            # of the value is the value (leverage exactly 1, nothing lent, property
            # 6.5), not a loan of 1e-16 priced at the full gap premium.
            if margin >= (1.0 - 1e-12) * value:
                margin = value
            lev_side = min(max(value / margin, 1.0), max_leverage[i])
            if not np.isnan(pin[i]):  # an operator's loosening override (overrides.py)
                lev_side = min(max(pin[i], 1.0), max_leverage[i])
            im_side = value / lev_side
            debt = value - im_side
            # The lender's loss past the bankruptcy price: the fair put premium.
            scale = (1.0 + fee_loading) / debt / h_hours if debt > 0.0 else 0.0
            premium = 0.0
            for k in range(s):
                premium += prob_fee[k] * max(debt - value_h[k], 0.0)
            if detail:  # explain's split by scenario group
                for k in range(s):
                    es_g[i, side, group[k]] += loss[k] * w_all[k]
                    fee_g[i, side, group[k]] += prob_fee[k] * max(debt - value_h[k], 0.0) * scale
            fee[i, side] = max(premium * scale, fee_floor[i])
            lev[i, side], im[i, side], es[i, side] = lev_side, im_side, es_side
            if np.isnan(es_side + es_liquid + premium):  # inf - inf on the way: no model
                lev[i, side] = im[i, side] = fee[i, side] = es[i, side] = np.nan


def pooled_jump_rate(
    jumps: np.ndarray,
    exposure: np.ndarray,
    pool_jumps: float | np.ndarray,
    pool_exposure: float | np.ndarray,
    cfg: ModelSettings,
) -> np.ndarray:
    """Section 3, the long-run jump rate: each market's own count over its own time,
    shrunk toward the pool of all markets, itself shrunk toward `lambda_prior`
    (Gamma-Poisson: a prior of rate r and strength K seconds adds r K jumps and K
    seconds). A market with a week of data (`jump_shrinkage_s`) weighs its own rate
    as much as the pool's; the pool needs `jump_pool_prior_s` of market-time to
    outweigh the prior."""
    pool = (pool_jumps + cfg.lambda_prior * cfg.jump_pool_prior_s) / (
        pool_exposure + cfg.jump_pool_prior_s
    )
    return (jumps + pool * cfg.jump_shrinkage_s) / (exposure + cfg.jump_shrinkage_s)
