"""The online estimator (spec model.md section 3) on simulated paths with known
parameters: logit diffusion with known sigma (per sqrt-second) plus Poisson jumps
of known intensity and size, sampled at regular intervals and fed one tick at a
time, vectorised over several markets (numpy, seeded)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pytest

from riskd.config import ModelSettings
from riskd.model import estimator, parameters
from riskd.model.estimator import EstimatorState, expit, logit

CFG = ModelSettings()
T0 = 1.7e9
DAY = 86_400.0
LN2 = float(np.log(2.0))


@dataclass
class Run:
    state: EstimatorState
    true_jumps: np.ndarray  # (ticks, markets) bool
    detected: np.ndarray  # (ticks, markets) bool
    lam_path: np.ndarray  # (ticks, markets) lambda_at each tick, after it
    x_path: np.ndarray  # (ticks, markets) the efficient logit price
    seconds: float  # simulated time per market


def simulate(
    *,
    markets: int,
    days: float,
    dt: float,
    sigma: float,
    lam: float = 0.0,
    J: float = 0.0,
    seed: int,
    tick_size: float = 0.01,
    bounce: float = 0.0,
    alternate: bool = False,
) -> Run:
    """x_{k+1} = x_k + sigma sqrt(dt) z + jump; a jump (probability lam dt per tick)
    moves x by J towards 0, so that p stays where a jump of J is also a move of
    money (jump_min_move). With `bounce`, prints are p(x) +- bounce (a random side
    each tick, Roll's model, or alternating sides)."""
    rng = np.random.default_rng(seed)
    n = int(round(days * DAY / dt)) + 1
    state = EstimatorState.empty(markets, CFG)
    state.tick_size[:] = tick_size
    idx = np.arange(markets)
    x = np.zeros(markets)
    true = np.zeros((n, markets), bool)
    det = np.zeros((n, markets), bool)
    lam_path = np.zeros((n, markets))
    x_path = np.zeros((n, markets))
    for k in range(n):
        t = T0 + k * dt
        if k:
            x = x + sigma * np.sqrt(dt) * rng.standard_normal(markets)
            jump = rng.random(markets) < lam * dt
            x = x - np.where(jump, J * np.where(x > 0.0, 1.0, -1.0), 0.0)
            true[k] = jump
        p = expit(x)
        if bounce:
            side = (
                np.full(markets, 1.0 if k % 2 else -1.0)
                if alternate
                else np.where(rng.random(markets) < 0.5, 1.0, -1.0)
            )
            p = p + bounce * side
        det[k] = estimator.update(state, CFG, idx, np.full(markets, t), p)
        lam_path[k] = state.lambda_at(t, CFG)
        x_path[k] = x
    return Run(state, true, det, lam_path, x_path, (n - 1) * dt)


@pytest.fixture(scope="module")
def diffusion() -> Run:
    return simulate(markets=20, days=10, dt=60.0, sigma=1e-3, seed=1)


@pytest.fixture(scope="module")
def jumpy() -> Run:
    return simulate(
        markets=20, days=10, dt=60.0, sigma=1e-3, lam=4.0 / DAY, J=1.0, seed=2, tick_size=0.001
    )


def test_sigma_recovered_on_a_diffusion(diffusion: Run) -> None:
    """sigma = 1e-3 per sqrt-second, a price a minute for 10 days, 20 markets.

    Tolerance: each market within 10%, the mean of the 20 within 2.5%. Why: sigma2
    is an EWMA of per-tick variance samples with weight a = 1 - 2^(-dt / H),
    H = sigma_halflife_s = 1 day, i.e. about 2H / (dt ln 2) ~ 4150 effective
    samples; a chi-square(1) sample has relative sd sqrt(2), so sigma2 has ~2.2%
    and sigma ~1.1%, and the lag-1 autocovariance (Roll) correction in each sample
    about doubles that (observed sd 2.2%): 10% is > 4 sd for one market, 2.5% is
    > 5 sd of the mean. Bias is negligible: the prior has weight 2^-10 after 10
    half-lives, winsorising at k_jump = 4 sd removes E[z^2; |z| > 4] ~ 0.07% of
    the variance, and no diffusion tick is a jump (4.5 sd of a tick is ~0.035
    logit, under 0.01 in price, far below jump_min_move = 0.03)."""
    sigma_hat = np.sqrt(diffusion.state.sigma2)
    assert np.all(np.abs(sigma_hat / 1e-3 - 1.0) < 0.10), sigma_hat
    assert abs(sigma_hat.mean() / 1e-3 - 1.0) < 0.025
    assert diffusion.detected.sum() == 0


def test_jumps_detected_and_intensity_recovered(jumpy: Run) -> None:
    """4 jumps a day of 1 logit on top of sigma = 1e-3, 10 days, 20 markets (~800
    jumps), tick size 0.001.

    Detection: precision and recall at least 99%. A jump moves x by 1 +- 0.008
    (one tick of diffusion), while the threshold k_jump sqrt(sigma2 dt + s0^2) is
    ~0.035 logit, and it moves p by at least 0.08 while |x| stays under ~2.5 (checked),
    above jump_min_move = 0.03; a diffusion tick never moves p by 0.03.
    Intensity: the detected count over market-time within 12% of the truth (a
    Poisson count of ~800 has sd 3.5%: 12% is > 3 sd); the time average of
    lambda_at within 3% of that count rate (the decayed event rate integrates to
    one per jump; jumps within a few half-lives of the end, and sampling at ticks
    of 60 s against a half-life of 3600 s, move it by ~1%).
    Size: sqrt(J2) within 3% of J in each market: the EWMA (weight 0.3) of dx^2
    over > 20 jumps forgets the J_floor prior (0.7^20 < 1e-3), and each dx^2 is
    (1 +- 0.008)^2.
    Sigma: within 10% per market, mean within 5%: the sampling error above, plus
    the winsorised jumps, which add lambda thr^2 / sigma^2 ~ 5% to sigma2 (~2.5% to
    sigma) instead of lambda J^2 / sigma^2 ~ 4600% unwinsorised."""
    run = jumpy
    assert np.abs(run.x_path).max() < 2.5
    true, det = run.true_jumps, run.detected
    n_true, n_det = int(true.sum()), int(det.sum())
    assert n_true > 600
    assert (true & det).sum() >= 0.99 * n_true  # recall
    assert (true & det).sum() >= 0.99 * n_det  # precision
    assert np.array_equal(run.state.jumps, det.sum(axis=0))
    market_time = run.seconds * det.shape[1]
    lam_true = 4.0 / DAY
    assert abs(n_det / market_time / lam_true - 1.0) < 0.12
    assert abs(run.lam_path.mean() / (n_det / market_time) - 1.0) < 0.03
    assert np.all(np.abs(np.sqrt(run.state.J2) - 1.0) < 0.03)
    sigma_hat = np.sqrt(run.state.sigma2)
    assert np.all(np.abs(sigma_hat / 1e-3 - 1.0) < 0.10), sigma_hat
    assert abs(sigma_hat.mean() / 1e-3 - 1.0) < 0.05
    # Jump times are recorded.
    last = np.array([np.flatnonzero(det[:, i]).max() for i in range(det.shape[1])])
    assert np.array_equal(run.state.last_jump_t, T0 + last * 60.0)


def warmed(p0: float, tick_size: float, seed: int = 7) -> EstimatorState:
    """One market after a day of calm diffusion (sigma 1e-3, a price a minute) around p0."""
    rng = np.random.default_rng(seed)
    state = EstimatorState.empty(1, CFG)
    state.tick_size[:] = tick_size
    x = logit(np.array([p0]))
    for k in range(1441):
        x = x + (1e-3 * np.sqrt(60.0) * rng.standard_normal(1) if k else 0.0)
        estimator.update(state, CFG, np.array([0]), np.array([T0 + 60.0 * k]), expit(x))
    return state


def winsor_bound(state: EstimatorState, p_new: float, dt: float) -> float:
    """The largest sigma2 one tick can leave: the EWMA with the sample at the threshold
    (spec section 3 steps 1-3; noise2 is the signed Roll estimate)."""
    p_old = float(expit(state.x)[0])
    slope = max(p_new * (1 - p_new), p_old * (1 - p_old))  # the less extreme price
    s0sq = (state.tick_size[0] / slope) ** 2 + max(state.noise2[0], 0.0)
    thr2 = CFG.k_jump**2 * (state.sigma2[0] * dt + s0sq)
    w = np.exp(-LN2 * dt / CFG.sigma_halflife_s)
    return float(w * state.sigma2[0] + (1 - w) * (thr2 - 2 * state.noise2[0]) / dt)


def test_a_huge_move_is_winsorised() -> None:
    """p 0.5 -> 0.95 in one minute (+2.9 logit) is a jump, and it moves sigma2 at most
    as far as a sample at the threshold would: here under +25%, where the raw dx^2
    would have multiplied sigma2 by more than 100."""
    state = warmed(0.5, 0.001)
    before = state.sigma2[0]
    t = state.t[0] + 60.0
    p_new = 0.95
    bound = winsor_bound(state, p_new, 60.0)
    dx = float(logit(np.array([p_new]))[0] - state.x[0])
    w = np.exp(-LN2 * 60.0 / CFG.sigma_halflife_s)
    assert w * before + (1 - w) * dx * dx / 60.0 > 100 * before  # what raw dx^2 would do
    jump = estimator.update(state, CFG, np.array([0]), np.array([t]), np.array([p_new]))
    assert jump[0]
    assert state.sigma2[0] <= bound * (1 + 1e-12)
    assert state.sigma2[0] < 1.25 * before


def test_a_jump_to_an_extreme_on_a_cent_tick_is_winsorised() -> None:
    """0.5 -> 0.99 with a one-cent tick: the noise floor is taken at the less extreme
    price, so the jump's own tick size in logit units (about 1 at 0.99) does not widen
    its threshold: sigma2 moves by under 2x (taken at 0.99 it moved by ~236x)."""
    state = warmed(0.5, 0.01)
    before = state.sigma2[0]
    bound = winsor_bound(state, 0.99, 60.0)
    t = state.t[0] + 60.0
    jump = estimator.update(state, CFG, np.array([0]), np.array([t]), np.array([0.99]))
    assert jump[0]
    assert state.sigma2[0] <= bound * (1 + 1e-12)
    assert state.sigma2[0] < 2.0 * before


def test_a_large_non_jump_move_is_winsorised_not_excluded() -> None:
    """p 0.002 -> 0.004: 0.69 logit, beyond the threshold, but 0.002 in money: not a
    jump (jump_min_move). The move still counts (sigma2 rises: winsorise, do not
    exclude) and counts at most at the threshold."""
    state = warmed(0.002, 1e-4)
    before = state.sigma2[0]
    t = state.t[0] + 60.0
    bound = winsor_bound(state, 0.004, 60.0)
    jump = estimator.update(state, CFG, np.array([0]), np.array([t]), np.array([0.004]))
    assert not jump[0]
    assert before < state.sigma2[0] <= bound * (1 + 1e-12)


def test_lambda_decays_with_elapsed_time() -> None:
    state = EstimatorState.empty(1, CFG)
    one = np.array([0])
    H = CFG.jump_halflife_s
    estimator.update(state, CFG, one, np.array([T0]), np.array([0.5]))
    assert estimator.update(state, CFG, one, np.array([T0 + 60]), np.array([0.8]))[0]
    tj = T0 + 60
    lam0 = LN2 / H  # one jump on a zero rate
    assert state.lam[0] == pytest.approx(lam0, rel=1e-12)
    assert state.lambda_at(tj, CFG)[0] == pytest.approx(lam0, rel=1e-12)
    assert state.lambda_at(tj + H, CFG)[0] == pytest.approx(lam0 / 2, rel=1e-12)
    assert state.lambda_at(tj + 3 * H, CFG)[0] == pytest.approx(lam0 / 8, rel=1e-12)
    assert state.lambda_at(tj - 100.0, CFG)[0] == pytest.approx(lam0, rel=1e-12)  # no growth
    assert state.lam[0] == pytest.approx(lam0, rel=1e-12)  # reading does not change state
    # What the model reads between ticks: the decayed value, floored at the prior.
    inp = parameters.risk_inputs(state, tj + 2 * H, np.array([np.nan]), CFG)
    assert inp.lam[0] == pytest.approx(max(lam0 / 4, CFG.lambda_prior), rel=1e-12)
    # A calm tick one half-life later applies the same decay.
    assert not estimator.update(state, CFG, one, np.array([tj + H]), np.array([0.8]))[0]
    assert state.lam[0] == pytest.approx(lam0 / 2, rel=1e-12)
    # A second jump adds ln 2 / H to the decayed rate.
    assert estimator.update(state, CFG, one, np.array([tj + H + 60]), np.array([0.4]))[0]
    decay = 2.0 ** (-60 / H)
    assert state.lam[0] == pytest.approx(lam0 / 2 * decay + lam0, rel=1e-12)


@pytest.mark.parametrize("alternate", [False, True])
def test_bid_ask_bounce_is_not_volatility(alternate: bool) -> None:
    """A constant mid of 0.5 printed at the bid or the ask (0.495 / 0.505), a price a
    minute for 5 days, 10 markets. The naive realised volatility of those prints is
    sqrt(mean(dx^2) / dt) ~ 3.7e-3 (random sides) or 5.2e-3 (alternating).

    Bound: every market's sigma under 30% of the naive value. Why: Roll's estimate
    (the signed EWMA of -dx dx_prev) averages to the bounce variance, the variance
    sample subtracts twice it from dx^2, so the samples average to zero and sigma2
    sits near its floor; what remains is the fluctuation of the 20-tick noise EWMA,
    rectified by that floor (observed: at most 19% with random sides, the floor
    itself when alternating). With random sides the noise estimate itself is close
    to the bounce (mean over markets within 20% of 0.02 logit)."""
    run = simulate(
        markets=10, days=5, dt=60.0, sigma=0.0, seed=5, bounce=0.005, alternate=alternate
    )
    c = 0.005 / 0.25  # the bounce in logit units at p = 0.5
    naive = np.sqrt((4.0 if alternate else 2.0) * c * c / 60.0)
    sigma_hat = np.sqrt(run.state.sigma2)
    assert np.all(sigma_hat < 0.3 * naive), sigma_hat / naive
    assert run.detected.sum() == 0
    if alternate:
        assert np.all(sigma_hat == CFG.sigma_floor)
    else:
        noise = np.sqrt(np.maximum(run.state.noise2, 0.0))
        assert abs(noise.mean() / c - 1.0) < 0.2


def test_first_tick_initialises_without_a_jump() -> None:
    state = EstimatorState.empty(2, CFG)
    jump = estimator.update(state, CFG, np.array([0]), np.array([T0]), np.array([0.97]))
    assert not jump[0]
    assert state.ticks[0] == 1 and state.jumps[0] == 0
    assert state.x[0] == pytest.approx(logit(np.array([0.97]))[0])
    assert state.t[0] == T0
    assert state.sigma2[0] == CFG.sigma_prior**2
    assert state.lam[0] == 0.0 and np.isnan(state.last_jump_t[0])
    assert state.J2[0] == CFG.J_floor**2
    assert state.noise2[0] == 0.0 and np.isnan(state.gap[0])
    # The other market is untouched.
    assert state.ticks[1] == 0 and np.isnan(state.t[1])
    # The second tick measures the gap; a price of 1 is clipped to 1 - eps.
    estimator.update(state, CFG, np.array([0]), np.array([T0 + 30.0]), np.array([1.0]))
    assert state.gap[0] == 30.0
    assert state.x[0] == pytest.approx(logit(np.array([1.0 - CFG.eps]))[0])


def test_vectorised_update_equals_separate_updates() -> None:
    """Rounds in which a random subset of 6 markets ticks, in random order, with
    random moves (some jumps, some bounce): one call per round and one call per
    market give the same state (to 1e-12, the P7 tolerance) and the same jump
    masks."""
    rng = np.random.default_rng(11)
    m = 6
    together = EstimatorState.empty(m, CFG)
    alone = EstimatorState.empty(m, CFG)
    x = rng.normal(0.0, 1.5, m)
    t = np.full(m, T0)
    for _ in range(400):
        idx = rng.permutation(m)[: rng.integers(1, m + 1)]
        t[idx] += rng.exponential(120.0, idx.size)
        x[idx] += rng.normal(0.0, 0.05, idx.size) + np.where(
            rng.random(idx.size) < 0.05, rng.normal(0.0, 1.5, idx.size), 0.0
        )
        p = expit(x[idx]) + rng.choice([-0.002, 0.0, 0.002], idx.size)
        half = rng.uniform(0.0, 0.01, idx.size)
        depth = rng.uniform(10.0, 1e4, idx.size)
        jumps_a = estimator.update(together, CFG, idx, t[idx].copy(), p, half, depth)
        for k, i in enumerate(idx):
            one = np.array([i])
            jumps_b = estimator.update(
                alone, CFG, one, t[one].copy(), p[k : k + 1], half[k : k + 1], depth[k : k + 1]
            )
            assert jumps_a[k] == jumps_b[0]
    assert together.jumps.sum() > 0
    for f in fields(EstimatorState):
        a, b = getattr(together, f.name), getattr(alone, f.name)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=0.0, equal_nan=True, err_msg=f.name)


def test_a_batch_with_repeated_markets_equals_tick_by_tick() -> None:
    """One call with a market several times (a cycle's queued ticks, a whole tape in
    the backtest) applies them in order: the same state and jumps as one call per
    tick; `record` row k holds the market's state right after tick k."""
    rng = np.random.default_rng(5)
    m, n = 4, 600
    idx = rng.integers(0, m, n)
    t = T0 + np.cumsum(rng.exponential(60.0, n))
    x = np.zeros(m)
    p = np.empty(n)
    for k, i in enumerate(idx):
        x[i] += rng.normal(0.0, 0.05) + (rng.normal(0.0, 1.5) if rng.random() < 0.05 else 0.0)
        p[k] = expit(np.array([x[i]]))[0]
    half = rng.uniform(0.0, 0.01, n)
    depth = rng.uniform(10.0, 1e4, n)
    batch = EstimatorState.empty(m, CFG)
    rec = EstimatorState(
        **{f.name: np.empty(n, getattr(batch, f.name).dtype) for f in fields(EstimatorState)}
    )
    jumps = estimator.update(batch, CFG, idx, t, p, half, depth, record=rec)
    single = EstimatorState.empty(m, CFG)
    for k in range(n):
        one = slice(k, k + 1)
        assert (
            estimator.update(single, CFG, idx[one], t[one], p[one], half[one], depth[one])[0]
            == jumps[k]
        )
        for f in fields(EstimatorState):
            assert getattr(rec, f.name)[k] == getattr(single, f.name)[idx[k]] or (
                np.isnan(getattr(rec, f.name)[k]) and np.isnan(getattr(single, f.name)[idx[k]])
            )
    assert jumps.sum() > 0
    for f in fields(EstimatorState):
        np.testing.assert_array_equal(
            getattr(batch, f.name), getattr(single, f.name), err_msg=f.name
        )
