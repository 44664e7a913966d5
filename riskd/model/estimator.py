"""Online estimator of belief volatility and jumps (spec model.md section 3).

State is a struct of numpy arrays, one slot per market; `update` applies one
tick to each of a set of distinct markets in one vectorised pass. Constant
memory per market, O(1) work per tick, nothing recomputed for idle markets.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from riskd.config import ModelSettings

LN2 = float(np.log(2.0))


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def expit(x: np.ndarray) -> np.ndarray:
    # exp(-logaddexp(0, -x)) is 1/(1+exp(-x)) without overflow at either end.
    return np.exp(-np.logaddexp(0.0, -x))


@dataclass
class EstimatorState:
    """Per-market estimator state (section 3). Arrays grow with the market count."""

    x: np.ndarray  # last logit price
    t: np.ndarray  # last event time, unix s (nan before the first tick)
    half_spread: np.ndarray  # last half-spread in price units (0 when unknown)
    depth: np.ndarray  # last size near mid (nan when unknown)
    sigma2: np.ndarray  # diffusive variance per second, logit units
    lam: np.ndarray  # jump intensity per second, as of lam_t
    lam_t: np.ndarray
    J2: np.ndarray  # mean squared jump size, logit units
    last_jump_t: np.ndarray  # nan when none
    # Roll's microstructure noise variance, logit units: an EWMA of -dx * dx_prev,
    # signed (it averages to the noise variance; the variance used is max(noise2, 0)).
    noise2: np.ndarray
    gap: np.ndarray  # EWMA of the time between prices, s (nan until two ticks)
    dx_prev: np.ndarray  # last non-jump increment, for the noise estimate
    ticks: np.ndarray  # ticks seen (int64)
    jumps: np.ndarray  # jumps detected (int64)
    tick_size: np.ndarray  # per market, price units

    @classmethod
    def empty(cls, n: int, cfg: ModelSettings) -> EstimatorState:
        state = cls(**{f.name: np.zeros(0) for f in fields(cls)})
        state.grow(n, cfg)
        return state

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def grow(self, n: int, cfg: ModelSettings, tick_size: float = 0.01) -> None:
        """Make room for n markets; new slots start at the priors."""
        old = len(self)
        if n <= old:
            return
        k = n - old
        init = {
            "x": 0.0,
            "t": np.nan,
            "half_spread": 0.0,
            "depth": np.nan,
            "sigma2": cfg.sigma_prior**2,
            "lam": 0.0,
            "lam_t": np.nan,
            "J2": cfg.J_floor**2,
            "last_jump_t": np.nan,
            "noise2": 0.0,
            "gap": np.nan,
            "dx_prev": 0.0,
            "ticks": 0,
            "jumps": 0,
            "tick_size": tick_size,
        }
        for name, value in init.items():
            cur = getattr(self, name)
            dtype = np.int64 if name in ("ticks", "jumps") else np.float64
            setattr(self, name, np.concatenate([cur.astype(dtype), np.full(k, value, dtype)]))

    def lambda_at(self, now: float | np.ndarray, cfg: ModelSettings) -> np.ndarray:
        """Jump intensity decayed to `now` (step 6: decays with elapsed time only)."""
        return _decayed(self.lam, self.lam_t, now, cfg.jump_halflife_s)


def update(
    state: EstimatorState,
    cfg: ModelSettings,
    idx: np.ndarray,
    t: np.ndarray,
    p: np.ndarray,
    half_spread: np.ndarray | None = None,
    depth: np.ndarray | None = None,
) -> np.ndarray:
    """Apply one tick to each market in `idx` (distinct indices). Returns the jump mask.

    Implements section 3 steps 1-5. Two refinements: the noise estimate is Roll's,
    minus the autocovariance of consecutive increments, averaged signed (an average
    of per-tick positive parts would read a pure diffusion as noise, ~1/pi of its
    variance, and bias sigma ~20% low); and the winsorised variance sample is net
    of twice that autocovariance (the increment of a noisy price carries the noise
    of both ends), per tick and without clipping, so it averages to the efficient
    price's variance under bid-ask bounce; the EWMA itself is floored.
    """
    p = np.clip(p, cfg.eps, 1.0 - cfg.eps)
    x = logit(p)
    n_before = state.ticks[idx]
    first = n_before == 0
    t_prev = state.t[idx]
    dt = np.maximum(np.where(first, cfg.dt_min_s, t - t_prev), cfg.dt_min_s)
    x_prev = np.where(first, x, state.x[idx])
    dx = x - x_prev

    # Step 1: noise floor in logit units, at the less extreme of the two prices: a jump
    # to 0.99 must not widen its own threshold by the tick's size in logit terms there.
    noise2 = state.noise2[idx]
    p_prev = expit(x_prev)
    slope = np.maximum(p * (1.0 - p), p_prev * (1.0 - p_prev))
    dp = np.abs(p - p_prev)
    s0sq = (state.tick_size[idx] / slope) ** 2 + np.maximum(noise2, 0.0)
    # Step 2: a jump is a move beyond k standard deviations that also matters in money.
    sigma2 = state.sigma2[idx]
    thr2 = cfg.k_jump**2 * (sigma2 * dt + s0sq)
    dx2 = dx * dx
    jump = (~first) & (dx2 > thr2) & (dp >= cfg.jump_min_move)

    # Step 3: winsorise, do not exclude.
    w = np.exp(-LN2 * dt / cfg.sigma_halflife_s)
    sample = (np.minimum(dx2, thr2) - 2.0 * noise2) / dt
    sigma2_new = np.where(first, sigma2, w * sigma2 + (1.0 - w) * sample)
    state.sigma2[idx] = np.maximum(sigma2_new, cfg.sigma_floor**2)

    # Roll's noise estimate from consecutive non-jump increments.
    a_noise = 1.0 - 2.0 ** (-1.0 / cfg.noise_halflife_ticks)
    roll = -dx * state.dx_prev[idx]
    calm = (~first) & (~jump)
    state.noise2[idx] = np.where(calm, (1 - a_noise) * noise2 + a_noise * roll, noise2)
    state.dx_prev[idx] = np.where(calm, dx, 0.0)

    # Step 4: a jump raises the time-decayed event rate and updates the jump size.
    lam_now = _decayed(state.lam[idx], state.lam_t[idx], t, cfg.jump_halflife_s)
    state.lam[idx] = lam_now + np.where(jump, LN2 / cfg.jump_halflife_s, 0.0)
    state.lam_t[idx] = t
    a_jump = cfg.jump_size_weight
    state.J2[idx] = np.where(jump, (1 - a_jump) * state.J2[idx] + a_jump * dx2, state.J2[idx])
    state.last_jump_t[idx] = np.where(jump, t, state.last_jump_t[idx])
    state.jumps[idx] += jump

    # Step 5: how long this market goes between prices. Arithmetic, not geometric:
    # a liquidation waits for the next price, and long pauses are what it waits through.
    a_gap = 1.0 - 2.0 ** (-1.0 / cfg.gap_halflife_ticks)
    gap = state.gap[idx]
    real_dt = np.maximum(t - t_prev, 0.0)
    state.gap[idx] = np.where(
        first, np.nan, np.where(np.isnan(gap), real_dt, (1 - a_gap) * gap + a_gap * real_dt)
    )

    state.x[idx] = x
    state.t[idx] = t
    if half_spread is not None:
        state.half_spread[idx] = np.nan_to_num(half_spread, nan=0.0)
    if depth is not None:
        state.depth[idx] = depth
    state.ticks[idx] = n_before + 1
    return jump


def _decayed(
    value: np.ndarray, since: np.ndarray, now: float | np.ndarray, halflife: float
) -> np.ndarray:
    elapsed = np.maximum(np.nan_to_num(now - since, nan=0.0), 0.0)
    return value * np.exp(-LN2 * elapsed / halflife)
