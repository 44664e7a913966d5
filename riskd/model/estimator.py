"""Online estimator of belief volatility and jumps (spec model.md section 3).

State is a struct of numpy arrays, one slot per market; `update` applies a batch
of ticks in order, in one compiled pass. Constant memory per market, O(1) work
per tick, nothing recomputed for idle markets.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from riskd.jit import njit

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

    def lambda_at(
        self, now: float | np.ndarray, cfg: ModelSettings, rows: np.ndarray | None = None
    ) -> np.ndarray:
        """Jump intensity decayed to `now` (step 6: decays with elapsed time only), of
        the markets `rows` (default: all)."""
        if rows is None:
            return _decayed(self.lam, self.lam_t, now, cfg.jump_halflife_s)
        return _decayed(self.lam[rows], self.lam_t[rows], now, cfg.jump_halflife_s)


def update(
    state: EstimatorState,
    cfg: ModelSettings,
    idx: np.ndarray,
    t: np.ndarray,
    p: np.ndarray,
    half_spread: np.ndarray | None = None,
    depth: np.ndarray | None = None,
    record: EstimatorState | None = None,
) -> np.ndarray:
    """Apply the ticks (idx[k], t[k], p[k]) in order; returns the jump mask.

    A market may appear several times: its ticks apply one after the other, in one
    compiled pass over all of them. With `record` (an EstimatorState of len(idx)
    rows), row k receives market idx[k]'s state right after tick k: what the
    backtest needs to evaluate every tick in one vectorised pass afterwards.

    Implements section 3 steps 1-5 (`_apply`)."""
    n = len(idx)
    nan = np.full(n, np.nan)
    ticks = TickArrays(
        idx=np.asarray(idx, np.int64),
        t=np.asarray(t, np.float64),
        p=np.asarray(p, np.float64),
        half_spread=nan if half_spread is None else np.asarray(half_spread, np.float64),
        has_half_spread=half_spread is not None,
        depth=nan if depth is None else np.asarray(depth, np.float64),
        has_depth=depth is not None,
    )
    out = UpdateOut(
        jump=np.zeros(n, np.bool_),
        recording=record is not None,
        record=_NO_RECORD if record is None else StateArrays.of(record),
    )
    _apply(StateArrays.of(state), ticks, EstimatorSettings.of(cfg), out)
    return out.jump


class StateArrays(NamedTuple):
    """An EstimatorState's arrays, as the compiled pass takes them (same names)."""

    x: np.ndarray
    t: np.ndarray
    half_spread: np.ndarray
    depth: np.ndarray
    sigma2: np.ndarray
    lam: np.ndarray
    lam_t: np.ndarray
    J2: np.ndarray
    last_jump_t: np.ndarray
    noise2: np.ndarray
    gap: np.ndarray
    dx_prev: np.ndarray
    ticks: np.ndarray
    jumps: np.ndarray
    tick_size: np.ndarray

    @classmethod
    def of(cls, state: EstimatorState) -> StateArrays:
        return cls(**{name: getattr(state, name) for name in cls._fields})


class TickArrays(NamedTuple):
    """The ticks to apply, in order: tick k is about market idx[k]."""

    idx: np.ndarray  # int64
    t: np.ndarray
    p: np.ndarray
    half_spread: np.ndarray  # nan: unknown (0)
    has_half_spread: bool  # False: the markets keep their half-spreads
    depth: np.ndarray
    has_depth: bool  # False: the markets keep their depths


class EstimatorSettings(NamedTuple):
    """The settings of section 3, as the compiled pass takes them."""

    eps: float
    dt_min: float
    k_jump: float
    jump_min_move: float
    sigma_halflife: float
    sigma_floor: float
    noise_halflife: float  # ticks
    jump_halflife: float
    jump_weight: float
    gap_halflife: float  # ticks

    @classmethod
    def of(cls, cfg: ModelSettings) -> EstimatorSettings:
        return cls(
            eps=cfg.eps,
            dt_min=cfg.dt_min_s,
            k_jump=cfg.k_jump,
            jump_min_move=cfg.jump_min_move,
            sigma_halflife=cfg.sigma_halflife_s,
            sigma_floor=cfg.sigma_floor,
            noise_halflife=cfg.noise_halflife_ticks,
            jump_halflife=cfg.jump_halflife_s,
            jump_weight=cfg.jump_size_weight,
            gap_halflife=cfg.gap_halflife_ticks,
        )


class UpdateOut(NamedTuple):
    """What the pass writes besides the state: the jump mask, and with `recording`
    each tick's market state right after it (row k)."""

    jump: np.ndarray  # bool
    recording: bool
    record: StateArrays


if StateArrays._fields != tuple(f.name for f in fields(EstimatorState)):
    raise TypeError("StateArrays must name EstimatorState's fields, in order")
_NO_RECORD = StateArrays.of(
    EstimatorState(
        **{
            name: np.zeros(0, np.int64 if name in ("ticks", "jumps") else np.float64)
            for name in StateArrays._fields
        }
    )
)


@njit
def _apply(state, ticks, cfg, out):  # type: ignore[no-untyped-def]
    """Section 3, one tick at a time, into `state` (StateArrays) and `out` (UpdateOut).

    Two refinements: the noise estimate is Roll's, minus the autocovariance of
    consecutive increments, averaged signed (an average of per-tick positive parts
    would read a pure diffusion as noise, ~1/pi of its variance, and bias sigma ~20%
    low); and the winsorised variance sample is net of twice that autocovariance (the
    increment of a noisy price carries the noise of both ends), per tick and without
    clipping, so it averages to the efficient price's variance under bid-ask bounce;
    the EWMA itself is floored."""
    x, t_last, half_spread, depth = state.x, state.t, state.half_spread, state.depth
    sigma2, lam, lam_t, J2 = state.sigma2, state.lam, state.lam_t, state.J2
    last_jump_t, noise2, gap, dx_prev = state.last_jump_t, state.noise2, state.gap, state.dx_prev
    ticks_seen, jumps, tick_size = state.ticks, state.jumps, state.tick_size
    idx, t_new, p_new = ticks.idx, ticks.t, ticks.p
    eps, dt_min, k_jump, jump_min_move = cfg.eps, cfg.dt_min, cfg.k_jump, cfg.jump_min_move
    sigma_halflife, sigma_floor = cfg.sigma_halflife, cfg.sigma_floor
    jump_halflife, jump_weight = cfg.jump_halflife, cfg.jump_weight
    a_noise = 1.0 - 2.0 ** (-1.0 / cfg.noise_halflife)
    a_gap = 1.0 - 2.0 ** (-1.0 / cfg.gap_halflife)
    rec = out.record
    for k in range(idx.shape[0]):
        i = idx[k]
        t = t_new[k]
        p = min(max(p_new[k], eps), 1.0 - eps)
        xk = np.log(p) - np.log1p(-p)
        first = ticks_seen[i] == 0
        t_prev = t_last[i]
        dt = max(dt_min if first else t - t_prev, dt_min)
        x_prev = xk if first else x[i]
        dx = xk - x_prev

        # Step 1: noise floor in logit units, at the less extreme of the two prices: a
        # jump to 0.99 must not widen its own threshold by the tick's size in logit
        # terms there.
        p_prev = _expit(x_prev)
        slope = max(p * (1.0 - p), p_prev * (1.0 - p_prev))
        s0sq = (tick_size[i] / slope) ** 2 + max(noise2[i], 0.0)
        # Step 2: a jump is a move beyond k standard deviations that also matters in money.
        thr2 = k_jump**2 * (sigma2[i] * dt + s0sq)
        dx2 = dx * dx
        jump = (not first) and dx2 > thr2 and abs(p - p_prev) >= jump_min_move
        out.jump[k] = jump

        # Step 3: winsorise, do not exclude.
        if not first:
            w = np.exp(-LN2 * dt / sigma_halflife)
            sample = (min(dx2, thr2) - 2.0 * noise2[i]) / dt
            sigma2[i] = w * sigma2[i] + (1.0 - w) * sample
        sigma2[i] = max(sigma2[i], sigma_floor**2)

        # Roll's noise estimate from consecutive non-jump increments.
        if not first and not jump:
            noise2[i] = (1 - a_noise) * noise2[i] + a_noise * (-dx * dx_prev[i])
            dx_prev[i] = dx
        else:
            dx_prev[i] = 0.0

        # Step 4: a jump raises the time-decayed event rate and updates the jump size.
        elapsed = 0.0 if np.isnan(t - lam_t[i]) else max(t - lam_t[i], 0.0)
        lam[i] = lam[i] * np.exp(-LN2 * elapsed / jump_halflife)
        lam_t[i] = t
        if jump:
            lam[i] += LN2 / jump_halflife
            J2[i] = (1 - jump_weight) * J2[i] + jump_weight * dx2
            last_jump_t[i] = t
            jumps[i] += 1

        # Step 5: how long this market goes between prices. Arithmetic, not geometric:
        # a liquidation waits for the next price, and long pauses are what it waits
        # through.
        real_dt = max(t - t_prev, 0.0)
        if first:
            gap[i] = np.nan
        elif np.isnan(gap[i]):
            gap[i] = real_dt
        else:
            gap[i] = (1 - a_gap) * gap[i] + a_gap * real_dt

        x[i] = xk
        t_last[i] = t
        if ticks.has_half_spread:
            half_spread[i] = 0.0 if np.isnan(ticks.half_spread[k]) else ticks.half_spread[k]
        if ticks.has_depth:
            depth[i] = ticks.depth[k]
        ticks_seen[i] += 1
        if out.recording:
            rec.x[k], rec.t[k], rec.half_spread[k], rec.depth[k] = (
                x[i],
                t_last[i],
                half_spread[i],
                depth[i],
            )
            rec.sigma2[k], rec.lam[k], rec.lam_t[k], rec.J2[k] = sigma2[i], lam[i], lam_t[i], J2[i]
            rec.last_jump_t[k], rec.noise2[k], rec.gap[k] = last_jump_t[i], noise2[i], gap[i]
            rec.dx_prev[k], rec.ticks[k], rec.jumps[k] = dx_prev[i], ticks_seen[i], jumps[i]
            rec.tick_size[k] = tick_size[i]


@njit
def _expit(x: float) -> float:
    return np.exp(-np.logaddexp(0.0, -x))


def _decayed(
    value: np.ndarray, since: np.ndarray, now: float | np.ndarray, halflife: float
) -> np.ndarray:
    return value * np.exp(-LN2 * elapsed(now - since) / halflife)


MAX_FLOAT = float(np.finfo(np.float64).max)


def elapsed(dt: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """np.maximum(np.nan_to_num(dt, nan=0.0), 0.0) in two passes: a time since that is
    unknown or negative counts as 0, an infinite one as the largest float. Into `out`
    if given (it may be `dt`)."""
    return np.minimum(np.fmax(dt, 0.0, out=out), MAX_FLOAT, out=out)
