"""Property tests of liquidity from the book (docs/model.md section 4) and of freshness
for live books (section 5), through the same path as the engine: estimator state ->
`risk_inputs` (depth, confirmations) -> `compute` (hypothesis).

- More depth never lowers leverage.
- At a given leverage (the loan fixed), more depth never raises the fee, while the
  shallower book's horizon stays short of the decisive event; past it the
  resolution event replaces news jumps in the scenarios, and where a jump costs the
  lender more than the losing outcome does the premium can fall (the mixture effect
  of spec property 6.3's fee clause; `test_fee_past_the_event_is_the_mixture_effect`
  shows one); likewise where the diffusion's spread over the horizon is many logit
  units. Across leverages the fee is per unit lent: a deeper book lends more,
  nearer the bankruptcy price, and a book too shallow to lend at all carries the
  floor (property 5), so "more depth never raises the fee" cannot hold there.
- At equal depth and volatility, how often the top of a live book moves changes
  nothing: neither the gap between its ticks nor when it last ticked.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from riskd.config import ModelSettings
from riskd.model import parameters
from riskd.model.estimator import EstimatorState

RTOL = 1e-9  # re-sorted ES sums (tests/test_properties.py)
NOW = 1_700_000_000.0
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def log_uniform(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(math.log10(lo), math.log10(hi)).map(lambda e: 10.0**e)


@st.composite
def books(draw: Any) -> dict[str, float]:
    """One market's estimator state and book, over the whole valid domain."""
    return {
        "p": draw(
            st.one_of(
                st.floats(1e-3, 1 - 1e-3),
                log_uniform(1e-4, 0.05),
                log_uniform(1e-4, 0.05).map(lambda d: 1 - d),
            )
        ),
        "sigma": draw(log_uniform(1e-6, 1e-2)),
        "lam": draw(st.one_of(st.just(0.0), log_uniform(1e-9, 1e-2))),
        "J": draw(log_uniform(0.05, 5.0)),
        "tau": draw(log_uniform(60.0, 1e8)),
        "depth": draw(st.one_of(st.just(0.0), log_uniform(1.0, 1e7))),
        "notional": draw(log_uniform(10.0, 1e6)),
        "gap": draw(log_uniform(0.01, 1e5)),
        "since": draw(st.floats(0.0, 3600.0)),
    }


model_settings = st.builds(
    ModelSettings,
    confidence=st.sampled_from([0.95, 0.99]),
    book_refill_s=st.sampled_from([0.0, 60.0, 300.0, 3600.0]),
    k_liquidity=st.sampled_from([0.0, 3.0]),
    fee_loading=st.sampled_from([0.0, 0.5]),
)


def state(
    b: dict[str, float],
    cfg: ModelSettings,
    depth: float | None = None,
    gap: float | None = None,
    last_tick: float | None = None,
) -> EstimatorState:
    s = EstimatorState.empty(1, cfg)
    s.x[:] = math.log(b["p"]) - math.log1p(-b["p"])
    s.t[:] = NOW - b["since"] if last_tick is None else last_tick
    s.sigma2[:] = b["sigma"] ** 2
    s.lam[:] = b["lam"]
    s.lam_t[:] = NOW
    s.J2[:] = b["J"] ** 2
    s.gap[:] = b["gap"] if gap is None else gap
    s.depth[:] = b["depth"] if depth is None else depth
    s.ticks[:] = 100
    return s


def targets(
    b: dict[str, float], cfg: ModelSettings, live: bool, pin: float | None = None, **kw: Any
) -> tuple[parameters.RiskInputs, parameters.Targets]:
    s = state(b, cfg, **kw)
    confirmed = np.array([NOW - b["since"]]) if live else None
    inp = parameters.risk_inputs(
        s,
        NOW,
        np.array([NOW + b["tau"]]),
        cfg,
        confirmed,
        np.array([live]) if live else None,
        np.array([b["notional"]]),
    )
    with np.errstate(all="ignore"):
        tg = parameters.compute(
            inp,
            cfg,
            np.array([20.0]),
            np.array([0.05]),
            np.array([1e-5]),
            leverage_pin=None if pin is None else np.array([pin]),
        )
    return inp, tg


@PROPS
@given(books(), log_uniform(1.0, 1e4), st.booleans(), model_settings)
def test_more_depth_never_lowers_leverage(
    b: dict[str, float], factor: float, live: bool, cfg: ModelSettings
) -> None:
    deeper = max(b["depth"], 1.0) * factor
    _, thin = targets(b, cfg, live)
    inp, deep = targets(b, cfg, live, depth=deeper)
    assert inp.h is not None
    assert np.all(deep.max_leverage >= thin.max_leverage * (1.0 - RTOL))


@PROPS
@given(books(), log_uniform(1.0, 1e4), st.booleans(), st.floats(1.01, 20.0), model_settings)
def test_more_depth_never_raises_the_fee_at_a_given_leverage(
    b: dict[str, float], factor: float, live: bool, pin: float, cfg: ModelSettings
) -> None:
    deeper = max(b["depth"], 1.0) * factor
    thin_inp, thin = targets(b, cfg, live, pin=pin)
    # See the module docstring; and the diffusion's spread over the thin book's horizon
    # within 2 logit units: beyond, the logit scenarios are far from mean-preserving
    # in price (sigma 0.01 over 30 days is 16 logit units) and can order either way.
    assume(float(thin_inp.h[0]) < b["tau"])
    assume(b["sigma"] * math.sqrt(float(thin_inp.h[0])) <= 2.0)
    _, deep = targets(b, cfg, live, pin=pin, depth=deeper)
    assert np.all(deep.fee_rate_hourly <= thin.fee_rate_hourly * (1.0 + RTOL))


def test_fee_past_the_event_is_the_mixture_effect() -> None:
    """Past the event the premium is the losing outcome's alone: cheaper than the news
    jump it replaces at p near 1 with wide jumps (the counterexample behind the
    `assume` above, and behind spec 6.3's fee clause)."""
    cfg = ModelSettings(book_refill_s=3600.0)
    b = {
        "p": 0.986,
        "sigma": 1.5e-4,
        "lam": 1e-3,
        "J": 2.85,
        "tau": 27_115.0,
        "depth": 30.0,
        "notional": 10_000.0,
        "gap": 10.0,
        "since": 0.0,
    }
    thin_inp, thin = targets(b, cfg, live=True, pin=17.0)
    _, deep = targets(b, cfg, live=True, pin=17.0, depth=1e6)
    assert thin_inp.h[0] > b["tau"]
    assert thin.fee_rate_hourly[0, 0] < deep.fee_rate_hourly[0, 0]


@PROPS
@given(books(), log_uniform(0.01, 1e5), st.floats(0.0, 86_400.0), model_settings)
def test_top_of_book_tick_rate_changes_nothing_on_a_live_book(
    b: dict[str, float], gap: float, quiet: float, cfg: ModelSettings
) -> None:
    """A live book's market: the EWMA of the time between its ticks and when it last
    ticked (its top last moved) do not change its inputs or targets."""
    assume(b["depth"] > 0.0)
    inp_a, a = targets(b, cfg, live=True)
    inp_b, b2 = targets(b, cfg, live=True, gap=gap, last_tick=NOW - b["since"] - quiet)
    assert inp_a.h[0] == inp_b.h[0]
    for name in ("max_leverage", "fee_rate_hourly", "max_slippage", "reasons"):
        assert np.array_equal(getattr(a, name), getattr(b2, name)), name


@PROPS
@given(books(), model_settings)
def test_a_deep_live_book_is_not_thin_and_a_shallow_one_is(
    b: dict[str, float], cfg: ModelSettings
) -> None:
    assume(cfg.book_refill_s > 0 and b["since"] * cfg.k_liquidity <= cfg.liquidation_horizon_s)
    value = min(b["p"], 1 - b["p"])
    shares = b["notional"] / value
    thin_bit = parameters.BIT["thin_market"]
    _, deep = targets(b, cfg, live=True, depth=shares * 2.0)
    _, shallow = targets(b, cfg, live=True, depth=shares / 2.0)
    assert not deep.reasons[0] & thin_bit
    assert shallow.reasons[0] & thin_bit
