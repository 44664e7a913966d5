"""Property tests of the risk model, spec model.md section 6 (hypothesis).

Inputs are drawn over the whole valid domain, not only calm markets: p in
[eps, 1 - eps] with extra weight near both ends, tau >= 0 (0 included), sigma,
lambda (0 included) and J over several decades, horizons h from 1 s (below
h_min_s) to a day, any half-spread and tick size, and several model
configurations and per-market limits.

Tolerances. Symmetry (P2) and the vectorised/scalar comparison (P7) are held to
1e-12 (relative for leverage, margins and fees, absolute in price units for ES
and slippage); p is drawn on a dyadic grid so that 1 - p is exact and the
comparison measures the model's arithmetic, not the rounding of the input.
Monotonicity (P3, P4) allows a relative 1e-9: the ES sums the scenarios in
sorted order, and moving one input reorders them, so equal results can differ
in the last bits; 1e-9 is far below anything that matters and far above that
noise (observed <= 1e-15).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, note, settings
from hypothesis import strategies as st

from riskd.config import GovernorSettings, ModelSettings
from riskd.model import governor, parameters
from riskd.model.estimator import logit
from riskd.model.governor import LEVERAGE_STEP, REDUCE_ONLY, GovernorState
from riskd.model.parameters import BIT, LONG, SHORT, RiskInputs, Targets

MONO_RTOL = 1e-9  # float noise of re-sorted ES sums; see the module docstring
EXACT = 1e-12  # P2 and P7
DEFAULT_EPS = ModelSettings().eps
GRID = 2.0**40  # dyadic grid for p: 1 - p is exact
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------
# strategies


def log_uniform(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(math.log10(lo), math.log10(hi)).map(lambda e: 10.0**e)


def dyadic(p: float, eps: float = DEFAULT_EPS) -> float:
    k = min(max(round(p * GRID), math.ceil(eps * GRID)), math.floor((1.0 - eps) * GRID))
    return k / GRID


probabilities = st.one_of(
    st.floats(DEFAULT_EPS, 1.0 - DEFAULT_EPS),
    log_uniform(DEFAULT_EPS, 0.05),  # near 0
    log_uniform(DEFAULT_EPS, 0.05).map(lambda d: 1.0 - d),  # near 1
).map(dyadic)


@dataclass(frozen=True)
class Market:
    p: float
    tau: float
    sigma: float
    lam: float
    J: float
    h: float
    half_spread: float
    tick: float
    max_leverage: float
    max_slippage: float
    fee_floor: float


@st.composite
def markets(draw: Any, p: st.SearchStrategy[float] = probabilities) -> Market:
    return Market(
        p=draw(p),
        tau=draw(st.one_of(st.just(0.0), st.floats(0.0, 1e5), log_uniform(1.0, 1e8))),
        sigma=draw(log_uniform(1e-6, 1e-1)),
        lam=draw(st.one_of(st.just(0.0), log_uniform(1e-10, 1e-1))),
        J=draw(log_uniform(1e-2, 10.0)),
        h=draw(log_uniform(1.0, 1e5)),
        half_spread=draw(st.one_of(st.just(0.0), st.floats(0.0, 0.05))),
        tick=draw(log_uniform(1e-4, 0.05)),
        max_leverage=draw(st.one_of(st.just(20.0), st.floats(1.0, 100.0))),
        max_slippage=draw(st.one_of(st.just(0.05), st.floats(1e-4, 0.5))),
        fee_floor=draw(st.one_of(st.just(1e-5), st.just(0.0), st.floats(0.0, 1e-2))),
    )


model_settings = st.builds(
    ModelSettings,
    confidence=st.sampled_from([0.95, 0.99, 0.995]),
    nodes=st.sampled_from([8, 12, 16]),
    m_floor=st.sampled_from([0.02, 0.1]),
    fee_loading=st.sampled_from([0.0, 0.5]),
    maintenance_ratio=st.sampled_from([0.3, 0.5, 0.9]),
    h_min_s=st.sampled_from([1.0, 60.0, 600.0]),
)


def compute(ms: list[Market], cfg: ModelSettings, detail: bool = False) -> Targets:
    arr = {
        f.name: np.array([getattr(m, f.name) for m in ms], dtype=np.float64) for f in fields(Market)
    }
    p = arr["p"]
    inp = RiskInputs(
        p=p,
        x=logit(p),
        tau=arr["tau"],
        sigma=arr["sigma"],
        lam=arr["lam"],
        J=arr["J"],
        gap=np.full(len(ms), np.nan),
        h=arr["h"],
        half_spread=arr["half_spread"],
        tick=arr["tick"],
    )
    return parameters.compute(
        inp, cfg, arr["max_leverage"], arr["max_slippage"], arr["fee_floor"], detail=detail
    )


def one(m: Market, cfg: ModelSettings) -> Targets:
    return compute([m], cfg)


def lose_probability(m: Market, side: int) -> float:
    """Probability that the side's outcome loses (long YES loses on NO)."""
    return 1.0 - m.p if side == LONG else m.p


# ---------------------------------------------------------------------------
# P1 bounds


@FAST
@given(st.lists(markets(), min_size=1, max_size=6), model_settings)
def test_p1_bounds(ms: list[Market], cfg: ModelSettings) -> None:
    tg = compute(ms, cfg)
    lim_lev = np.array([m.max_leverage for m in ms])[:, None]
    lim_slip = np.array([m.max_slippage for m in ms])
    floor = np.array([m.fee_floor for m in ms])[:, None]
    p = np.array([m.p for m in ms])
    value = np.stack([p, 1.0 - p], axis=1)
    for name in (
        "max_leverage",
        "initial_margin",
        "maintenance_margin",
        "fee_rate_hourly",
        "max_slippage",
        "es",
        "q",
    ):
        assert np.all(np.isfinite(getattr(tg, name))), name
    assert np.all(tg.max_leverage >= 1.0)
    assert np.all(tg.max_leverage <= lim_lev)
    assert np.all(tg.fee_rate_hourly >= floor)
    assert np.all(tg.max_slippage > 0.0)
    assert np.all(tg.max_slippage <= lim_slip)
    assert np.all(tg.maintenance_margin > 0.0)
    assert np.all(tg.maintenance_margin < tg.initial_margin)
    assert np.all(tg.initial_margin <= value)


# ---------------------------------------------------------------------------
# P2 symmetry: long YES at p is long NO at 1 - p


def fee_rtol(lev: float) -> float:
    """The fee divides by debt = value (1 - 1/lev), a difference of near-equal numbers
    when leverage is near 1: its relative rounding error is ~1e-16 lev / (lev - 1).
    Observed: 3e-9 at lev - 1 = 1e-9, 4e-13 at lev - 1 = 1e-2."""
    return EXACT + (1e3 * np.finfo(float).eps * lev / (lev - 1.0) if lev > 1.0 else 0.0)


@FAST
@given(markets(), model_settings)
def test_p2_symmetry(m: Market, cfg: ModelSettings) -> None:
    mirror = replace(m, p=1.0 - m.p)
    assert 1.0 - mirror.p == m.p  # exact on the dyadic grid
    a, b = one(m, cfg), one(mirror, cfg)
    for side, other in ((LONG, SHORT), (SHORT, LONG)):
        lev_a, lev_b = a.max_leverage[0, side], b.max_leverage[0, other]
        assert lev_a == pytest.approx(lev_b, rel=EXACT, abs=0)
        for name in ("initial_margin", "maintenance_margin"):
            assert getattr(a, name)[0, side] == pytest.approx(
                getattr(b, name)[0, other], rel=EXACT, abs=0
            ), name
        assert a.es[0, side] == pytest.approx(b.es[0, other], rel=0, abs=EXACT)
        assert a.fee_rate_hourly[0, side] == pytest.approx(
            b.fee_rate_hourly[0, other], rel=fee_rtol(min(lev_a, lev_b)), abs=0
        )
    assert a.max_slippage[0] == pytest.approx(b.max_slippage[0], rel=0, abs=EXACT)
    assert a.q[0] == b.q[0]
    assert a.reasons[0] == b.reasons[0]


# ---------------------------------------------------------------------------
# P3 closer to resolution never loosens


NEAR_CERTAIN = Market(  # before the fix: 1.28x at 32 minutes, 7.7x at 12 minutes
    p=0.9996235631106704,
    tau=1910.1990911047035,
    sigma=0.02598763882414508,
    lam=0.0012771576109218306,
    J=3.9945546534132705,
    h=680.4022495063967,
    half_spread=0.0,
    tick=0.01,
    max_leverage=20.0,
    max_slippage=0.05,
    fee_floor=1e-5,
)


@FAST
@given(markets(), st.floats(0.0, 1.0), model_settings)
@example(NEAR_CERTAIN, 712.9107813380824 / 1910.1990911047035, ModelSettings())
def test_p3_leverage_non_increasing_as_tau_falls(m: Market, f: float, cfg: ModelSettings) -> None:
    far, near = one(m, cfg), one(replace(m, tau=m.tau * f), cfg)
    assert np.all(near.max_leverage <= far.max_leverage * (1.0 + MONO_RTOL))


@FAST
@given(markets(), st.floats(0.0, 1.0), model_settings)
def test_p3_leverage_is_one_at_resolution(m: Market, f: float, cfg: ModelSettings) -> None:
    """tau -> 0: once the decisive event is inside the horizon (tau <= h, which
    includes tau = 0) nothing is lent, whatever p; the fee is then the floor (P5)."""
    tg = one(replace(m, tau=f * m.h), cfg)
    assert tg.q[0] == 1.0
    assert np.all(tg.max_leverage == 1.0)
    assert np.all(tg.fee_rate_hourly == m.fee_floor)


@FAST
@given(markets(), log_uniform(1e-6, 1.0))
def test_p3_leverage_tends_to_one_as_tau_tends_to_zero(m: Market, tau_over_h: float) -> None:
    """Continuity from above: just past h, leverage is at most 1/q = tau/h."""
    cfg = ModelSettings()
    tau = m.h * (1.0 + tau_over_h)
    tg = one(replace(m, tau=tau), cfg)
    assert np.all(tg.max_leverage <= tau / m.h * (1.0 + MONO_RTOL))


# The fee clause of property 3. Two mechanisms make the fee, as section 4 defines
# it (the fair premium per unit lent at the published max leverage), fall as tau
# falls even while leverage stays above 1:
#  (a) smaller loan: as tau falls the margin rises, so the debt (value - margin)
#      falls and the bankruptcy price moves away from the price; the expected
#      shortfall per unit lent, E[(1 - value_h / debt)+], falls with the debt.
#      This is the common case (p = 0.46, 42 -> 31 days: -2.5%).
#  (b) mixture: at a fixed loan the premium moves with q as
#      P(lose) - E_liquid[(1 - value_h / debt)+]; when the losing outcome is less
#      likely than a shortfall in the news/diffusion scenarios (p near 0 or 1 with
#      wide jumps) the resolution event is the cheaper risk for the lender.
# Where neither can act the fee is monotone, and that is tested below; the full
# clause is kept as a strict xfail with one counterexample of each kind.

REALISTIC_SMALLER_LOAN = (
    Market(
        p=0.4632048989531684,
        tau=3660751.154990554,
        sigma=6.098328055127685e-4,
        lam=1.492467698970403e-5,
        J=1.357304110270921,
        h=2958.3810480942807,
        half_spread=0.0,
        tick=0.01,
        max_leverage=20.0,
        max_slippage=0.05,
        fee_floor=1e-5,
    ),
    2645708.5212654164 / 3660751.154990554,
)
MIXTURE = (
    Market(
        p=0.9996235631106704,
        tau=1910.1990911047035,
        sigma=0.02598763882414508,
        lam=0.0012771576109218306,
        J=3.9945546534132705,
        h=43.317208205406516,
        half_spread=0.0,
        tick=0.01,
        max_leverage=20.0,
        max_slippage=0.05,
        fee_floor=1e-5,
    ),
    712.9107813380824 / 1910.1990911047035,
)


@pytest.mark.xfail(
    strict=True,
    reason=(
        "spec 6.3 fee clause vs section 4 fee definition: the fair premium per unit lent "
        "falls when the loan shrinks (a) or when resolution is the cheaper risk (b)"
    ),
)
@settings(max_examples=20, deadline=None)
@given(markets(), st.floats(0.0, 1.0))
@example(*REALISTIC_SMALLER_LOAN)
@example(*MIXTURE)
def test_p3_fee_non_decreasing_as_tau_falls_while_levered(m: Market, f: float) -> None:
    cfg = ModelSettings()
    far, near = one(m, cfg), one(replace(m, tau=m.tau * f), cfg)
    levered = (far.max_leverage[0] > 1.0) & (near.max_leverage[0] > 1.0)
    assert np.all(
        near.fee_rate_hourly[0][levered] >= far.fee_rate_hourly[0][levered] * (1.0 - MONO_RTOL)
    )


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(
    # Calm markets, where leverage can sit at the cap.
    markets().map(
        lambda m: replace(
            m,
            sigma=min(m.sigma, 1e-4),
            lam=min(m.lam, 1e-6),
            J=min(m.J, 0.5),
            h=min(m.h, 900.0),
            tau=max(m.tau, 2e3),
        )
    ),
    st.floats(0.0, 1.0),
    st.floats(2.0, 10.0),
    st.integers(0, 1),
)
def test_p3_fee_non_decreasing_as_tau_falls_at_a_fixed_loan(
    m: Market, f: float, cap: float, side: int
) -> None:
    """Where the loan cannot shrink (leverage at the cap at both tau) and the losing
    outcome is at least as likely as (1 - alpha) / (cap - 1), the fee cannot fall as
    tau falls. Why: at a fixed debt d the premium is linear in q with slope
    P(lose) - E_liquid[(d - value_h)+] / d, and with the margin value / cap at
    least the liquid ES, E_liquid[(d - value_h)+] <= (1 - alpha) ES <= (1 - alpha)
    value / cap, so the slope is >= P(lose) - (1 - alpha) / (cap - 1) >= 0."""
    cfg = ModelSettings()
    m = replace(m, max_leverage=cap)
    assume(lose_probability(m, side) >= (1.0 - cfg.confidence) / (cap - 1.0))
    far, near = one(m, cfg), one(replace(m, tau=m.tau * f), cfg)
    assume(far.max_leverage[0, side] == cap and near.max_leverage[0, side] == cap)
    assert near.fee_rate_hourly[0, side] >= far.fee_rate_hourly[0, side] * (1.0 - MONO_RTOL)


# ---------------------------------------------------------------------------
# P4 more risk never loosens


@FAST
@given(markets(), st.sampled_from(["sigma", "lam", "J"]), log_uniform(1.0, 1e3), model_settings)
def test_p4_leverage_non_increasing_in_risk(
    m: Market, name: str, factor: float, cfg: ModelSettings
) -> None:
    base = getattr(m, name)
    bumped = base * factor if base > 0 else 1e-9 * factor
    calm, risky = one(m, cfg), one(replace(m, **{name: bumped}), cfg)
    note(f"{name}: {base} -> {bumped}")
    assert np.all(risky.max_leverage <= calm.max_leverage * (1.0 + MONO_RTOL))


# ---------------------------------------------------------------------------
# P5 at leverage 1 the fee is the floor


@FAST
@given(st.lists(markets(), min_size=1, max_size=6), model_settings)
def test_p5_fee_is_floor_at_leverage_one(ms: list[Market], cfg: ModelSettings) -> None:
    tg = compute(ms, cfg)
    floor = np.broadcast_to(np.array([m.fee_floor for m in ms])[:, None], (len(ms), 2))
    at_one = tg.max_leverage == 1.0
    assert np.array_equal(tg.fee_rate_hourly[at_one], floor[at_one])
    # Leverage is exactly 1 or measurably above it (or at a cap set just above 1):
    # never 1 + rounding, which would price a loan of 1e-16 at the full premium.
    cap = np.array([m.max_leverage for m in ms])[:, None]
    assert np.all(at_one | (tg.max_leverage > 1.0 + 1e-13) | (tg.max_leverage == cap))


# ---------------------------------------------------------------------------
# P7 vectorised and scalar paths agree


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(markets(), min_size=2, max_size=8), model_settings)
def test_p7_vectorised_equals_scalar(ms: list[Market], cfg: ModelSettings) -> None:
    together = compute(ms, cfg, detail=True)
    for i, m in enumerate(ms):
        alone = compute([m], cfg, detail=True)
        for f in fields(Targets):
            a, b = getattr(together, f.name), getattr(alone, f.name)
            assert a is not None and b is not None
            np.testing.assert_allclose(a[i], b[0], rtol=EXACT, atol=EXACT * 1e-3, err_msg=f.name)


# ---------------------------------------------------------------------------
# P6 governor


def targets(lev: np.ndarray, fee: np.ndarray, slip: np.ndarray) -> Targets:
    m = lev.shape[0]
    return Targets(
        max_leverage=lev,
        initial_margin=0.5 / lev,
        maintenance_margin=0.25 / lev,
        fee_rate_hourly=fee,
        max_slippage=slip,
        q=np.zeros(m),
        reasons=np.zeros(m, np.int64),
        es=np.zeros((m, 2)),
    )


def fresh(now: float, m: int, fee_floor: float = 1e-5, **kw: Any) -> governor.Conditions:
    args: dict[str, Any] = {
        "last_tick_t": np.full(m, now),
        "last_jump_t": np.full(m, np.nan),
        "event_t": np.full(m, np.nan),
        "resolve_t": np.full(m, np.nan),
        "warm": np.ones(m, bool),
        "fee_floor": np.full(m, fee_floor),
    }
    args.update(kw)
    return governor.Conditions(**args)


MARKETS = 3


@st.composite
def target_paths(draw: Any) -> tuple[list[float], list[Targets]]:
    """Cycle times and targets: mostly one cycle per second, sometimes a sparse gap;
    targets that hold, drift, or jump in either direction."""
    n = draw(st.integers(2, 40))
    times, out = [], []
    t = 1.7e9
    lev = np.full((MARKETS, 2), 3.0)
    fee = np.full((MARKETS, 2), 1e-3)
    slip = np.full(MARKETS, 0.01)
    for _ in range(n):
        t += draw(st.one_of(st.just(1.0), st.just(1.0), st.floats(0.5, 400.0)))
        kind = draw(st.sampled_from(["hold", "hold", "drift", "jump"]))
        if kind == "drift":
            lev = np.clip(lev * draw(st.floats(0.97, 1.05)), 1.0, 20.0)
            fee = fee * draw(st.floats(0.95, 1.03))
            slip = slip * draw(st.floats(0.97, 1.05))
        elif kind == "jump":
            lev = np.array(
                draw(st.lists(st.floats(1.0, 20.0), min_size=2 * MARKETS, max_size=2 * MARKETS))
            ).reshape(MARKETS, 2)
            fee = np.array(
                draw(st.lists(log_uniform(1e-5, 1e-1), min_size=2 * MARKETS, max_size=2 * MARKETS))
            ).reshape(MARKETS, 2)
            slip = np.array(
                draw(st.lists(log_uniform(1e-4, 0.05), min_size=MARKETS, max_size=MARKETS))
            )
        times.append(t)
        out.append(targets(lev.copy(), fee.copy(), slip.copy()))
    return times, out


governor_settings = st.builds(
    GovernorSettings,
    deadband=st.sampled_from([0.0, 0.02]),
    # A step of at least the deadband plus the 0.01 leverage rounding: else a single
    # step can never be published and steps pile up (a configuration question).
    max_loosen_step=st.sampled_from([0.05, 0.1, 0.25]),
    loosen_interval_s=st.sampled_from([1.0, 10.0, 60.0]),
    jump_cooldown_s=st.just(600.0),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(target_paths(), governor_settings)
def test_p6_governor_tightens_at_once_and_loosens_by_steps(
    path: tuple[list[float], list[Targets]], cfg: GovernorSettings
) -> None:
    times, tgs = path
    state = GovernorState.empty(MARKETS)
    s, interval = cfg.max_loosen_step, cfg.loosen_interval_s
    hist_t: list[float] = []
    hist_lev, hist_fee, hist_slip = [], [], []
    for now, tg in zip(times, tgs, strict=True):
        before = state.leverage.copy(), state.fee.copy(), state.slippage.copy()
        decision = governor.step(state, cfg, now, tg, fresh(now, MARKETS))
        # Tighten at once: what is in force is never looser than the target (up to
        # the published rounding: leverage down to 0.01 steps, the fee up).
        assert np.all(state.leverage <= tg.max_leverage + 1e-9)
        # (At 1x the fee is the floor whatever the target: nothing is lent, P5.)
        levered_now = state.leverage > 1.0
        assert np.all((state.fee >= tg.fee_rate_hourly * (1.0 - 1e-12)) | ~levered_now)
        assert np.all(levered_now | np.isclose(state.fee, 1e-5, rtol=1e-9, atol=0.0))
        assert np.all(state.slippage <= tg.max_slippage + 1e-12)
        tighter = (
            np.any(state.leverage < before[0], axis=1)
            | np.any(state.fee > before[1], axis=1)
            | (state.slippage < before[2])
        )
        assert np.all(decision.publish[tighter])
        assert np.all(state.published_at[tighter] == now)
        hist_t.append(now)
        hist_lev.append(state.leverage.copy())
        hist_fee.append(state.fee.copy())
        hist_slip.append(state.slippage.copy())
    # Loosen slowly: over any span, at most one step per whole interval plus one.
    t = np.array(hist_t)
    lev, fee, slip = np.array(hist_lev), np.array(hist_fee), np.array(hist_slip)
    for a in range(len(t)):
        span = t[a:] - t[a]
        # (Capped exponent: 1.05 ** 400 already exceeds any leverage ratio.)
        bound = (1.0 + s) ** np.minimum(1.0 + np.floor(span / interval + 1e-9), 400.0)
        assert np.all(lev[a:] <= lev[a] * bound[:, None, None] * (1.0 + 1e-9)), a
        assert np.all(slip[a:] <= slip[a] * bound[:, None] * (1.0 + 1e-9)), a
        # The fee may drop to the floor at once where leverage is 1 (P5): bound it
        # only while the side stayed levered throughout.
        levered = np.logical_and.accumulate(lev[a:] > 1.0, axis=0)
        ok = fee[a:] * bound[:, None, None] * (1.0 + 1e-9) >= fee[a]
        assert np.all(ok | ~levered), a


@settings(max_examples=40, deadline=None)
@given(
    st.floats(0.5, 5.0),  # publish interval
    st.floats(1.0, 60.0),  # stale_after_s
    st.floats(0.0, 60.0),  # when the last tick arrives, after the start
    st.floats(1.0, 20.0),
)
def test_p6_stale_feed_reaches_fail_safe(
    interval: float, stale_after: float, last_tick: float, lev: float
) -> None:
    cfg = GovernorSettings(
        publish_interval_s=interval, stale_after_s=stale_after, ttl_s=max(60.0, 2 * interval)
    )
    t0 = 1.7e9
    state = GovernorState.empty(1)
    tg = targets(np.full((1, 2), lev), np.full((1, 2), 2e-3), np.full(1, 0.01))
    floor = 1e-5
    now = t0
    deadline = t0 + last_tick + stale_after + interval
    reached = None
    while now <= deadline + 1e-9:
        tick_t = min(now, t0 + last_tick)
        governor.step(state, cfg, now, tg, fresh(now, 1, floor, last_tick_t=np.array([tick_t])))
        fail_safe = (
            state.mode[0] == REDUCE_ONLY
            and np.all(state.leverage[0] == 1.0)
            and np.all(state.fee[0] == pytest.approx(floor, rel=1e-9))
            and bool(state.reasons[0] & BIT["stale_feed"])
        )
        if now - tick_t < stale_after:
            assert not state.reasons[0] & BIT["stale_feed"]
        elif reached is None:
            reached = now
        if reached is not None:
            assert fail_safe, now - tick_t  # and it stays there until fresh data
        now += interval
    assert reached is not None and reached <= deadline
    # Fresh data again: the fail-safe lifts, and leverage loosens by steps from 1x.
    governor.step(state, cfg, now, tg, fresh(now, 1, floor))
    assert state.mode[0] != REDUCE_ONLY
    assert np.all(
        state.leverage[0]
        <= max(1.0, LEVERAGE_STEP * math.floor((1.0 + cfg.max_loosen_step) / LEVERAGE_STEP + 1e-9))
    )
