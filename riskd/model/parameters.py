"""From estimator state to target margins, leverage, fee and slippage (spec section 4).

Side 0 is long YES (value p), side 1 is long NO, i.e. short YES (value 1 - p).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from riskd.jit import MAX_FLOAT, clip, fmax, maximum, minimum, nan_to_zero, njit
from riskd.model import scenarios
from riskd.model.estimator import EstimatorState, expit
from riskd.model.scenarios import dated_probability, uniform_probability

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
    rows: np.ndarray | None = None,
) -> RiskInputs:
    """Effective values at `now` (section 3 end, section 4 horizon, section 2 tau).

    `confirmed_t`: when each market's price was last confirmed (a live venue's
    messages and, for a book held on a live connection, the connection's life;
    default: the last tick, the tape rule). `live_book`: the market's book arrived as
    a snapshot on a connection that is still up, so silence there means "no change"
    and the time between its ticks says nothing about liquidity. `notional`: the
    reference position (default `cfg.liquidation_notional`). `rows`: the markets'
    rows of `state` (default: all, in order); the other arguments are per market.

    The transcendental functions run in numpy, the rest per market in one compiled
    pass (`_effective_inputs`)."""
    at = np.arange(state.x.shape[0]) if rows is None else np.ascontiguousarray(rows, np.int64)
    n = at.shape[0]
    x = state.x if rows is None else state.x[at]
    out = EffectiveInputs(*np.empty((len(EffectiveInputs._fields), n)))
    _effective_inputs(
        EstimatorColumns.of(state, at),
        MarketRows(
            now=_per_row(now, n),
            event_t=_f64(event_t),
            p=expit(x),
            lam=_f64(state.lambda_at(now, cfg, rows)),
            lam_long=_per_row(cfg.lambda_prior if lam_long is None else lam_long, n),
            confirmed_t=_NO_TIMES if confirmed_t is None else _f64(confirmed_t),
            live_book=_bools(live_book),
            notional=_per_row(cfg.liquidation_notional if notional is None else notional, n),
        ),
        InputSettings.of(cfg),
        out,
    )
    p = out.p
    return RiskInputs(
        p=p,
        x=np.log(p) - np.log1p(-p),
        tau=out.tau,
        sigma=out.sigma,
        lam=out.lam,
        J=out.J,
        gap=out.gap,
        h=out.h,
        half_spread=out.half_spread,
        tick=out.tick,
        h0=out.h0,
        depth=out.depth,
        book_ratio=out.book_ratio,
        scheduled=scheduled,
    )


class EstimatorColumns(NamedTuple):
    """The estimator's columns `risk_inputs` reads, at `rows`."""

    rows: np.ndarray  # int64
    t: np.ndarray
    sigma2: np.ndarray
    J2: np.ndarray
    gap: np.ndarray
    depth: np.ndarray
    half_spread: np.ndarray
    tick_size: np.ndarray

    @classmethod
    def of(cls, state: EstimatorState, rows: np.ndarray) -> EstimatorColumns:
        return cls(rows, *(_f64(getattr(state, name)) for name in cls._fields[1:]))


class MarketRows(NamedTuple):
    """Per market: what `risk_inputs` was given, and the numpy-computed values."""

    now: np.ndarray
    event_t: np.ndarray
    p: np.ndarray  # expit(x), before the clip to [eps, 1 - eps]
    # The jump rate is the hot rate (a jump says "this market is moving now"),
    # decayed to now, or the market's long-run rate shrunk toward the pool of all
    # markets (`pooled_jump_rate`), the larger.
    lam: np.ndarray
    lam_long: np.ndarray
    confirmed_t: np.ndarray  # empty: the last tick
    live_book: np.ndarray  # bool; empty: no live books
    notional: np.ndarray


class InputSettings(NamedTuple):
    eps: float
    default_tau_s: float
    sigma_floor: float
    J_floor: float
    liquidation_horizon_s: float
    k_liquidity: float
    book_refill_s: float
    margin_call_window_s: float

    @classmethod
    def of(cls, cfg: ModelSettings) -> InputSettings:
        return cls(*(float(getattr(cfg, name)) for name in cls._fields))


class EffectiveInputs(NamedTuple):
    """What `_effective_inputs` writes, per market (RiskInputs' fields)."""

    p: np.ndarray
    tau: np.ndarray
    sigma: np.ndarray
    lam: np.ndarray
    J: np.ndarray
    gap: np.ndarray
    h: np.ndarray
    h0: np.ndarray
    book_ratio: np.ndarray
    half_spread: np.ndarray
    tick: np.ndarray
    depth: np.ndarray


# Optional columns that were not given.
_NOT_GIVEN = np.zeros(0, np.bool_)
_NO_TIMES = np.zeros(0)


@njit
def _effective_inputs(est, market, cfg, out):  # type: ignore[no-untyped-def]
    """Section 2 and 4's inputs per market, as numpy computed them: into `out`."""
    books = market.live_book.shape[0] > 0
    confirmed = market.confirmed_t.shape[0] > 0
    for k in range(est.rows.shape[0]):
        i = est.rows[k]
        now = market.now[k]
        p = clip(market.p[k], cfg.eps, 1.0 - cfg.eps)
        event_t = market.event_t[k]
        # Unknown resolution time -> default_tau_s; after the decisive event tau is 0.
        tau = cfg.default_tau_s if np.isnan(event_t) else maximum(event_t - now, 0.0)
        # The silence since the price was last confirmed is evidence about the wait for
        # the next one.
        last = market.confirmed_t[k] if confirmed else est.t[i]
        since = maximum(nan_to_zero(now - last), 0.0)
        gap = since if books and market.live_book[k] else fmax(est.gap[i], since)
        h0 = maximum(cfg.liquidation_horizon_s, cfg.k_liquidity * nan_to_zero(gap))
        depth = est.depth[i]
        ratio, h_book = book_horizon(depth, p, cfg, market.notional[k])
        h = h0 if np.isnan(depth) else maximum(h0, h_book)
        out.p[k] = p
        out.tau[k] = tau
        out.sigma[k] = maximum(np.sqrt(est.sigma2[i]), cfg.sigma_floor)
        out.lam[k] = maximum(market.lam[k], market.lam_long[k])
        out.J[k] = maximum(np.sqrt(est.J2[i]), cfg.J_floor)
        out.gap[k] = gap
        # A margin-call window is waited through before the liquidation starts: both
        # horizons carry it (0 by default: adding 0.0 leaves them bit for bit).
        out.h[k] = h + cfg.margin_call_window_s
        out.h0[k] = h0 + cfg.margin_call_window_s
        out.book_ratio[k] = ratio
        out.half_spread[k] = est.half_spread[i]
        out.tick[k] = est.tick_size[i]
        out.depth[k] = depth


@njit
def book_horizon(depth, p, cfg, notional):  # type: ignore[no-untyped-def]
    """Section 4, liquidity from the book: (ratio, horizon) of one market.

    A position of `notional` is `notional / value` shares (value p long, 1 - p
    short): the larger count, on the cheaper side, is the one that meets the book.
    What the visible depth within max_slippage of the mid covers goes at once (the
    base horizon); each further depth's worth waits for the book to rebuild, one
    `book_refill_s` each. Nan where no book is known."""
    # A depth near zero (even subnormal) overflows the ratio to inf: the longest horizon.
    ratio = notional / (minimum(p, 1.0 - p) * depth)
    extra = cfg.book_refill_s * maximum(ratio - 1.0, 0.0) if cfg.book_refill_s > 0.0 else 0.0
    return ratio, minimum(cfg.liquidation_horizon_s + extra, H_MAX_S)


def _bools(a: np.ndarray | None) -> np.ndarray:
    """An optional bool column as the kernels take it (empty: not given)."""
    return _NOT_GIVEN if a is None else np.ascontiguousarray(a, np.bool_)


def _per_row(a: np.ndarray | float, n: int) -> np.ndarray:
    """`a` for each of n rows, as the kernels take it (a C-contiguous float array)."""
    if isinstance(a, np.ndarray) and a.shape == (n,):
        return _f64(a)
    if np.ndim(a) == 0:
        return np.full(n, a, np.float64)
    return np.ascontiguousarray(np.broadcast_to(np.asarray(a, np.float64), (n,)))


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
    """Section 4 for all markets at once, in two compiled passes: the resolution
    probabilities, slippage and reasons (`_market_terms`), then margins, leverage and
    fee per market and side (`_margins_and_fees`)."""
    m = inp.p.shape[0]
    pin = np.full(m, np.nan) if leverage_pin is None else _f64(leverage_pin)
    terms = MarketTerms(
        q=np.empty(m), q_fee=np.empty(m), slippage=np.empty(m), reasons=np.empty(m, np.int64)
    )
    _market_terms(
        _term_inputs(inp, cfg, _per_row(max_slippage, m), pin), TermSettings.of(cfg), terms
    )
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
    _margins_and_fees(
        MarketInputs.of(inp, terms.q, terms.q_fee),
        MarketLimits(
            max_leverage=_per_row(max_leverage, m), fee_floor=_per_row(fee_floor, m), pin=pin
        ),
        ScenarioNodes(z=z, w=w, group=scenarios.groups(cfg.nodes)),
        MarginSettings(confidence=cfg.confidence, m_floor=cfg.m_floor, fee_loading=cfg.fee_loading),
        out,
    )
    return Targets(
        max_leverage=out.leverage,
        initial_margin=out.initial_margin,
        maintenance_margin=cfg.maintenance_ratio * out.initial_margin,
        fee_rate_hourly=out.fee,
        max_slippage=terms.slippage,
        q=terms.q,
        reasons=terms.reasons,
        es=out.es,
        es_by_group=out.es_by_group if detail else None,
        fee_by_group=out.fee_by_group if detail else None,
    )


def _term_inputs(
    inp: RiskInputs, cfg: ModelSettings, max_slippage: np.ndarray, pin: np.ndarray
) -> TermInputs:
    m = inp.p.shape[0]
    dated = _bools(inp.scheduled)
    early = (
        scenarios.early_news(inp.h, inp.tau, cfg.early_news_rate, cfg.early_news_share)
        if dated.any()
        else _NO_TIMES
    )
    return TermInputs(
        p=_f64(inp.p),
        sigma=_f64(inp.sigma),
        tau=_f64(inp.tau),
        h=_f64(inp.h),
        half_spread=_per_row(inp.half_spread, m),
        tick=_per_row(inp.tick, m),
        book_ratio=_NO_TIMES if inp.book_ratio is None else _f64(inp.book_ratio),
        scheduled=dated,
        early=_f64(early),
        max_slippage=max_slippage,
        pin=pin,
    )


class TermInputs(NamedTuple):
    """Per market: what the resolution probabilities, slippage and reasons need."""

    p: np.ndarray
    sigma: np.ndarray
    tau: np.ndarray
    h: np.ndarray
    half_spread: np.ndarray
    tick: np.ndarray
    book_ratio: np.ndarray  # empty: no book known
    scheduled: np.ndarray  # bool; empty: none
    early: np.ndarray  # `scenarios.early_news`; empty: no market is scheduled
    max_slippage: np.ndarray
    pin: np.ndarray  # an override's leverage pin, nan: none


class TermSettings(NamedTuple):
    h_min_s: float
    z_slip: float
    sqrt_h_exec: float
    sigma_prior: float
    liquidation_horizon_s: float
    margin_call_window_s: float

    @classmethod
    def of(cls, cfg: ModelSettings) -> TermSettings:
        return cls(
            h_min_s=float(cfg.h_min_s),
            z_slip=float(cfg.z_slip),
            sqrt_h_exec=float(np.sqrt(cfg.h_exec_s)),
            sigma_prior=float(cfg.sigma_prior),
            liquidation_horizon_s=float(cfg.liquidation_horizon_s),
            margin_call_window_s=float(cfg.margin_call_window_s),
        )


class MarketTerms(NamedTuple):
    q: np.ndarray  # the probability of the resolution event within h
    q_fee: np.ndarray  # q as a position meets it (the fee's scenarios)
    slippage: np.ndarray
    reasons: np.ndarray  # int64 bitmask


_EXTREME, _VOLATILE = BIT["extreme_probability"], BIT["high_volatility"]
_THIN, _PINNED = BIT["thin_market"], BIT["config_override"]


@njit
def _market_terms(inp, cfg, out):  # type: ignore[no-untyped-def]
    """Per market: q and q_fee (section 4.1, `scenarios`), the max slippage and the
    model's reason bits, into `out`.

    Max slippage (section 4): the price's move over the execution time, the half
    spread and, with a book, the reference position's own impact: the depth within
    max_slippage of the mid taken as spread evenly over that band, unwinding a share
    of it moves the price by that share of the band (all of it when the book is too
    shallow)."""
    books = inp.book_ratio.shape[0] > 0
    dated = inp.scheduled.shape[0] > 0
    for i in range(inp.p.shape[0]):
        p, h, tau, max_slippage = inp.p[i], inp.h[i], inp.tau[i], inp.max_slippage[i]
        q = uniform_probability(h, tau, cfg.h_min_s)
        out.q[i] = q
        out.q_fee[i] = (
            dated_probability(h, tau, q, inp.early[i]) if dated and inp.scheduled[i] else q
        )
        price_vol = p * (1.0 - p) * inp.sigma[i]
        slip = cfg.z_slip * price_vol * cfg.sqrt_h_exec + inp.half_spread[i]
        if books:
            slip = slip + max_slippage * nan_to_zero(minimum(inp.book_ratio[i], 1.0))
        else:
            slip = slip + 0.0
        out.slippage[i] = clip(slip, inp.tick[i], max_slippage)
        reasons = 0
        if minimum(p, 1 - p) < 0.05:
            reasons |= _EXTREME
        if inp.sigma[i] > 4.0 * cfg.sigma_prior:
            reasons |= _VOLATILE
        # Sparse prices or a thin book, not the margin-call window every market waits.
        if h > cfg.liquidation_horizon_s + cfg.margin_call_window_s:
            reasons |= _THIN
        if not np.isnan(inp.pin[i]):
            reasons |= _PINNED
        out.reasons[i] = reasons


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


def pool_exposure(jumps: np.ndarray, first_t: np.ndarray, now: float) -> tuple[int, np.ndarray]:
    """Section 3, the pool of `pooled_jump_rate` at `now`: every market's jump count
    summed, and each market's time since its first tick (`estimator.elapsed` of
    now - first_t), in one compiled pass over the markets."""
    exposure = np.empty(first_t.shape[0])
    return _pool_exposure(jumps, first_t, now, exposure), exposure


@njit
def _pool_exposure(jumps, first_t, now, exposure):  # type: ignore[no-untyped-def]
    total = 0
    for i in range(first_t.shape[0]):
        exposure[i] = minimum(fmax(now - first_t[i], 0.0), MAX_FLOAT)
        total += jumps[i]
    return total
