"""Properties of the calibrated pieces of the model (docs/model.md sections 3-5):

- the long-run jump rate, each market's own shrunk toward the pool of all markets
  (Gamma-Poisson), lies between the two and moves the right way with the data;
- the backtest's row-by-row pool equals what a live engine computes at each row;
- a scheduled event is priced against the freeze in the fee only: it never raises
  the fee above a deadline market's, and it leaves the margins unchanged.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from riskd.config import ModelSettings, Settings
from riskd.engine import Engine
from riskd.feeds.base import Tick
from riskd.markets import Market
from riskd.model import parameters
from riskd.model.estimator import EstimatorState, logit
from riskd.model.parameters import RiskInputs
from riskd.model.scenarios import resolution_probability

CFG = ModelSettings()
PROPS = settings(max_examples=150, deadline=None)
counts = st.integers(0, 200).map(float)
seconds = st.floats(0.0, 1e8)


@PROPS
@given(counts, seconds, counts, seconds)
def test_long_run_rate_lies_between_the_market_and_its_pool(
    jumps: float, exposure: float, pool_jumps: float, pool_exposure: float
) -> None:
    pool_jumps += jumps  # the pool holds the market
    pool_exposure += exposure
    rate = float(
        parameters.pooled_jump_rate(
            np.array([jumps]), np.array([exposure]), pool_jumps, pool_exposure, CFG
        )[0]
    )
    pool = (pool_jumps + CFG.lambda_prior * CFG.jump_pool_prior_s) / (
        pool_exposure + CFG.jump_pool_prior_s
    )
    own = jumps / exposure if exposure > 0 else (math.inf if jumps > 0 else pool)
    assert min(own, pool) * (1 - 1e-12) <= rate <= max(own, pool) * (1 + 1e-12)


@PROPS
@given(counts, seconds, counts, seconds, st.integers(1, 20), st.floats(1.0, 1e6))
def test_more_jumps_raise_the_rate_and_quiet_time_lowers_it(
    jumps: float, exposure: float, pool_jumps: float, pool_exposure: float, more: int, quiet: float
) -> None:
    def rate(j: float, e: float) -> float:
        return float(
            parameters.pooled_jump_rate(
                np.array([j]), np.array([e]), pool_jumps, pool_exposure, CFG
            )[0]
        )

    assert rate(jumps + more, exposure) > rate(jumps, exposure)
    assert rate(jumps, exposure + quiet) < rate(jumps, exposure)


def test_with_no_data_the_rate_is_the_prior() -> None:
    rate = parameters.pooled_jump_rate(np.zeros(1), np.zeros(1), 0.0, 0.0, CFG)
    assert math.isclose(float(rate[0]), CFG.lambda_prior, rel_tol=1e-12)


def test_the_backtest_pool_is_the_live_pool_at_each_row() -> None:
    """Rows of a tape in one pass (`est=`, the backtest) against a live engine that
    takes the same ticks one by one: the same long-run rate at every row."""
    rng = np.random.default_rng(3)
    t0 = 1_700_000_000.0
    markets = {f"m{k}": Market(f"m{k}", t0 + 1e7, t0 + 1e7) for k in range(4)}
    ticks, p = [], {m: 0.5 for m in markets}
    t = t0
    for _ in range(400):
        t += float(rng.exponential(600.0))
        m = f"m{rng.integers(0, 4)}"
        step = 0.25 if rng.random() < 0.05 else 0.005  # now and then a jump
        p[m] = float(np.clip(p[m] + rng.choice((-step, step)), 0.05, 0.95))
        ticks.append(Tick(m, t, p[m]))
    settings = Settings()
    batch = Engine(settings, markets, discover=False)
    idx = np.array([batch.index[tk.market] for tk in ticks])
    times = np.array([tk.ts for tk in ticks])
    rec = EstimatorState(
        **{
            name: np.empty(len(ticks), getattr(batch.est, name).dtype)
            for name in EstimatorState.__dataclass_fields__
        }
    )
    batch.apply(
        idx,
        times,
        np.array([tk.price for tk in ticks]),
        np.zeros(len(ticks)),
        np.full(len(ticks), np.nan),
        record=rec,
    )
    rows = batch.long_jump_rate(times, idx, est=rec)
    assert int(rec.jumps.max()) > 0  # the tape has jumps
    live = Engine(settings, markets, discover=False)
    for k, tick in enumerate(ticks):
        live.ingest([tick])
        now = live_rate = live.long_jump_rate(tick.ts, np.array([idx[k]]))
        assert math.isclose(float(live_rate[0]), float(rows[k]), rel_tol=1e-9), (k, now)


@PROPS
@given(
    st.floats(0.02, 0.98),
    st.floats(1.0, 5.0),
    st.floats(2.0, 8.0),
    st.floats(1e-5, 1e-3),
    st.floats(0.3, 3.0),
)
def test_a_scheduled_event_lowers_the_fee_and_leaves_the_margins(
    p: float, log_h: float, log_tau: float, sigma: float, jump: float
) -> None:
    h, tau = 10.0**log_h, 10.0**log_tau
    one = np.ones(1)

    def targets(scheduled: bool) -> parameters.Targets:
        inp = RiskInputs(
            p=p * one,
            x=logit(p * one),
            tau=tau * one,
            sigma=sigma * one,
            lam=1e-6 * one,
            J=jump * one,
            gap=np.zeros(1),
            h=h * one,
            half_spread=np.zeros(1),
            tick=0.01 * one,
            scheduled=np.array([scheduled]),
        )
        return parameters.compute(inp, CFG, 20.0 * one, 0.05 * one, 1e-5 * one)

    deadline, dated = targets(False), targets(True)
    assert np.array_equal(dated.max_leverage, deadline.max_leverage)
    assert np.array_equal(dated.initial_margin, deadline.initial_margin)
    assert np.all(dated.fee_rate_hourly <= deadline.fee_rate_hourly * (1 + 1e-9))


@PROPS
@given(st.floats(1.0, 1e5), st.floats(0.0, 1e8), st.floats(0.0, 1.0))
def test_the_scheduled_hazard_is_below_the_uniform_and_one_at_the_event(
    h: float, tau: float, share: float
) -> None:
    uniform = resolution_probability(np.array([h]), np.array([tau]), CFG.h_min_s)
    dated = resolution_probability(
        np.array([h]), np.array([tau]), CFG.h_min_s, np.array([True]), 0.0, share
    )
    assert dated[0] <= uniform[0] + 1e-12
    if tau <= h:
        assert dated[0] == 1.0
