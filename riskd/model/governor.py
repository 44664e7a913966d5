"""Governor: from the model's targets to what is published (spec section 5).

Tighten at once, loosen by bounded steps, deadband, jump cool-down and halt,
resolution freeze, stale and warm-up fail-safe, valid_until. Vectorised over
markets; time is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

from riskd.model.parameters import BIT, Targets

if TYPE_CHECKING:
    from riskd.config import GovernorSettings

NORMAL, REDUCE_ONLY, HALTED = 0, 1, 2
MODES = ("normal", "reduce_only", "halted")

# Published values are rounded in the safe direction, so a published set never
# claims more precision than it has and tiny wobbles do not cause publishes.
LEVERAGE_STEP = 0.01
SLIPPAGE_STEP = 1e-5
FEE_DIGITS = 3


@dataclass
class GovernorState:
    """What was last published per market (nan/-1 before the first publish)."""

    leverage: np.ndarray  # (m, 2)
    fee: np.ndarray  # (m, 2)
    slippage: np.ndarray  # (m,)
    mode: np.ndarray  # (m,) int64, -1 never published
    reasons: np.ndarray  # (m,) int64
    published_at: np.ndarray
    valid_until: np.ndarray
    changed_at: np.ndarray  # last time leverage/fee/slippage moved: anchors loosening steps
    idle_at: np.ndarray  # last cycle with nothing waiting to loosen: also anchors them
    version: np.ndarray  # (m,) int64

    @classmethod
    def empty(cls, n: int) -> GovernorState:
        state = cls(**{f.name: np.zeros(0) for f in fields(cls)})
        state.grow(n)
        return state

    def __len__(self) -> int:
        return int(self.mode.shape[0])

    def grow(self, n: int) -> None:
        k = n - len(self)
        if k <= 0:
            return
        init: dict[str, tuple[float, type, tuple[int, ...]]] = {
            "leverage": (np.nan, np.float64, (k, 2)),
            "fee": (np.nan, np.float64, (k, 2)),
            "slippage": (np.nan, np.float64, (k,)),
            "mode": (-1, np.int64, (k,)),
            "reasons": (0, np.int64, (k,)),
            "published_at": (np.nan, np.float64, (k,)),
            "valid_until": (np.nan, np.float64, (k,)),
            "changed_at": (np.nan, np.float64, (k,)),
            "idle_at": (np.nan, np.float64, (k,)),
            "version": (0, np.int64, (k,)),
        }
        for name, (value, dtype, shape) in init.items():
            cur = getattr(self, name).astype(dtype).reshape((-1,) + shape[1:])
            setattr(self, name, np.concatenate([cur, np.full(shape, value, dtype)]))


@dataclass(frozen=True)
class Conditions:
    """Per-market facts the governor needs besides the targets (all shape (m,))."""

    last_tick_t: np.ndarray  # nan: no data yet
    last_jump_t: np.ndarray  # nan: none
    event_t: np.ndarray  # decisive event time, nan unknown
    resolve_t: np.ndarray  # nan unknown
    warm: np.ndarray  # bool: enough data for the estimator
    fee_floor: np.ndarray
    mode_floor: np.ndarray | None = None  # int64: an override pins at least this mode
    leverage_cap: np.ndarray | None = None  # an override caps leverage


@dataclass(frozen=True)
class Decision:
    publish: np.ndarray  # bool (m,)
    tightened: np.ndarray  # bool (m,): some value got tighter this cycle


def step(
    state: GovernorState,
    cfg: GovernorSettings,
    now: float | np.ndarray,
    targets: Targets,
    cond: Conditions,
) -> Decision:
    """Decide what to publish at `now`; updates `state` for the published markets."""
    # nan marks "never published"; comparisons with it are meant to be false.
    with np.errstate(invalid="ignore", divide="ignore"):
        return _step(state, cfg, now, targets, cond)


def _step(
    state: GovernorState,
    cfg: GovernorSettings,
    now: float | np.ndarray,
    targets: Targets,
    cond: Conditions,
) -> Decision:
    m = len(state)
    lev_t = targets.max_leverage.copy()
    fee_t = targets.fee_rate_hourly.copy()
    slip_t = targets.max_slippage.copy()
    reasons = targets.reasons.copy()

    since_tick = now - cond.last_tick_t
    stale = ~(since_tick < cfg.stale_after_s)  # nan (no data) counts as stale
    warming = ~cond.warm & ~stale
    broken = ~(np.all(np.isfinite(lev_t), axis=1) & np.all(np.isfinite(fee_t), axis=1)
               & np.isfinite(slip_t))
    resolved = now >= cond.resolve_t
    frozen = (now >= cond.event_t - cfg.freeze_before_resolution_s) & ~resolved
    since_jump = now - cond.last_jump_t
    cooldown = since_jump < cfg.jump_cooldown_s
    halted = since_jump < cfg.halt_after_jump_s

    reasons |= np.where(stale, BIT["stale_feed"], 0)
    reasons |= np.where(warming, BIT["warming_up"], 0)
    reasons |= np.where(broken, BIT["model_error"], 0)
    reasons |= np.where(resolved, BIT["resolved"], 0)
    reasons |= np.where(frozen, BIT["near_resolution"], 0)
    reasons |= np.where(cooldown, BIT["jump_detected"], 0)
    reasons |= np.where(halted, BIT["halted_after_jump"], 0)
    reasons |= np.where(np.isnan(cond.event_t), BIT["unknown_resolution"], 0)

    # Fail-safe: leverage 1, fee floor (below), the tightest slippage.
    slip_t[broken] = SLIPPAGE_STEP
    mode_t = np.full(m, NORMAL, np.int64)
    one_x = stale | warming | broken | frozen | resolved
    mode_t[one_x] = REDUCE_ONLY
    mode_t[halted] = HALTED
    if cond.leverage_cap is not None:
        capped = cond.leverage_cap < lev_t
        lev_t = np.minimum(lev_t, cond.leverage_cap)
        reasons |= np.where(np.any(capped, axis=1), BIT["config_override"], 0)
    if cond.mode_floor is not None:
        pinned = cond.mode_floor > mode_t
        mode_t = np.maximum(mode_t, cond.mode_floor)
        reasons |= np.where(pinned, BIT["config_override"], 0)
    # Reduce-only means nothing new is lent: 1x. Halted keeps the tightened values.
    lev_t[one_x | (mode_t == REDUCE_ONLY)] = 1.0

    lev_t = np.maximum(np.floor(lev_t / LEVERAGE_STEP + 1e-9) * LEVERAGE_STEP, 1.0)
    slip_t = np.maximum(np.floor(slip_t / SLIPPAGE_STEP + 1e-9) * SLIPPAGE_STEP, SLIPPAGE_STEP)

    first = state.mode < 0
    prev_lev, prev_fee, prev_slip = state.leverage, state.fee, state.slippage
    # Loosening: one bounded step per interval, counted from the last change, the
    # end of a jump cool-down or the last cycle at which nothing waited to loosen,
    # whichever is latest (section 5). Sparse cycles (the backtest's) compound the
    # steps of the time between them; a market whose targets sat at the published
    # values saves none up for one burst (property 6.6).
    anchor = loosening_anchor(state, cond.last_jump_t, cfg.jump_cooldown_s)
    steps = np.floor(np.nan_to_num((now - anchor) / cfg.loosen_interval_s, nan=0.0))
    steps = np.clip(np.where(cooldown, 0.0, steps), 0.0, 64.0)
    grow = (1.0 + cfg.max_loosen_step) ** steps

    lev_up = np.minimum(lev_t, prev_lev * grow[:, None])
    lev_up = np.floor(lev_up / LEVERAGE_STEP + 1e-9) * LEVERAGE_STEP
    lev_new = np.where(lev_t <= prev_lev, lev_t, np.maximum(lev_up, prev_lev))
    # A first publish takes the targets; before the fee below, so that a first
    # publish at 1x (warming up, no data yet) carries the fee floor too.
    lev_new = np.where(first[:, None], lev_t, lev_new)
    slip_up = np.minimum(slip_t, prev_slip * grow)
    slip_new = np.where(slip_t <= prev_slip, slip_t, np.maximum(slip_up, prev_slip))
    # The fee follows the published leverage: at 1x nothing is lent (property 5).
    fee_t = np.where(lev_new <= 1.0, cond.fee_floor[:, None], fee_t)
    fee_t = _round_up(fee_t)
    fee_down = np.maximum(fee_t, prev_fee / grow[:, None])
    fee_new = np.where(fee_t >= prev_fee, fee_t, np.where(lev_new <= 1.0, fee_t, fee_down))

    slip_new = np.where(first, slip_t, slip_new)
    fee_new = np.where(first[:, None], fee_t, fee_new)

    tightened = (
        np.any(lev_new < prev_lev, axis=1)
        | np.any(fee_new > prev_fee, axis=1)
        | (slip_new < prev_slip)
        | (mode_t > state.mode)
    ) & ~first
    loosen_rel = np.maximum(
        np.max(np.maximum(lev_new / prev_lev - 1.0, prev_fee / fee_new - 1.0), axis=1),
        slip_new / prev_slip - 1.0,
    )
    loosened = (loosen_rel >= cfg.deadband) & ~first
    # Below the deadband a loosening is not worth a message: keep what is in force.
    small = ~loosened & ~tightened & ~first
    lev_new = np.where(small[:, None], np.minimum(lev_new, prev_lev), lev_new)
    fee_new = np.where(small[:, None], np.maximum(fee_new, prev_fee), fee_new)
    slip_new = np.where(small, np.minimum(slip_new, prev_slip), slip_new)

    expiring = ~(state.valid_until - now > refresh_margin(cfg))
    publish = (
        first | tightened | loosened | (mode_t != state.mode)
        | (reasons != state.reasons) | expiring
    )
    moved = publish & (
        first
        | np.any(lev_new != prev_lev, axis=1)
        | np.any(fee_new != prev_fee, axis=1)
        | (slip_new != prev_slip)
    )

    state.leverage[publish] = lev_new[publish]
    state.fee[publish] = fee_new[publish]
    state.slippage[publish] = slip_new[publish]
    state.mode[publish] = mode_t[publish]
    state.reasons[publish] = reasons[publish]
    # `now` may be one time for all, or one per market (the backtest's rounds).
    at = np.broadcast_to(np.asarray(now, dtype=np.float64), (m,))
    state.published_at[publish] = at[publish]
    state.valid_until[publish] = at[publish] + cfg.ttl_s
    state.changed_at[moved] = at[moved]
    state.version[publish] += 1
    # Idle: no target looser than what is now in force by the deadband or more.
    pub_lev, pub_fee, pub_slip = state.leverage, state.fee, state.slippage
    want = np.maximum(
        np.max(np.maximum(lev_t / pub_lev - 1.0, pub_fee / fee_t - 1.0), axis=1),
        slip_t / pub_slip - 1.0,
    )
    idle = ~((want > 0.0) & (want >= cfg.deadband))
    state.idle_at[idle] = at[idle]
    return Decision(publish=publish, tightened=tightened & publish)


def loosening_anchor(state: GovernorState, last_jump_t: np.ndarray, cooldown_s: float
                     ) -> np.ndarray:
    """When the loosening steps start counting (section 5); nan: not yet."""
    return np.fmax(np.fmax(state.changed_at, state.idle_at), last_jump_t + cooldown_s)


def refresh_margin(cfg: GovernorSettings) -> float:
    """A set is republished when less than this is left of its validity."""
    return max(2.0 * cfg.publish_interval_s, cfg.ttl_s / 4.0)


def next_change(state: GovernorState, cfg: GovernorSettings, now: float, cond: Conditions,
                warm_at: np.ndarray) -> np.ndarray:
    """Right after `step` at `now`: the first time after `now` at which `step` could decide
    otherwise for the same targets and conditions (inf: never). These are the time-driven
    rules of section 5: staleness, the end of warm-up (`warm_at`), the resolution freeze,
    resolution, the end of a jump cool-down or halt, the refresh before valid_until, and
    the next loosening step of a market that waits to loosen. A caller may skip a market
    until then, or until its targets move (a tick, or the slow drift of tau and lambda)."""
    with np.errstate(invalid="ignore"):
        waiting = state.idle_at != now
        anchor = loosening_anchor(state, cond.last_jump_t, cfg.jump_cooldown_s)
        steps = np.floor((now - anchor) / cfg.loosen_interval_s) + 1.0
        times = (
            cond.last_tick_t + cfg.stale_after_s,
            warm_at,
            cond.event_t - cfg.freeze_before_resolution_s,
            cond.resolve_t,
            cond.last_jump_t + cfg.jump_cooldown_s,
            cond.last_jump_t + cfg.halt_after_jump_s,
            np.where(waiting, anchor + steps * cfg.loosen_interval_s, np.nan),
            state.valid_until - refresh_margin(cfg),
        )
        due = np.full(len(state), np.inf)
        for t in times:
            due = np.where(t > now, np.fmin(due, t), due)
    return due


def _round_up(fee: np.ndarray) -> np.ndarray:
    """Round up to FEE_DIGITS significant digits (positive values)."""
    safe = np.where(fee > 0, fee, 1.0)
    scale = 10.0 ** (np.floor(np.log10(safe)) - (FEE_DIGITS - 1))
    return np.where(fee > 0, np.ceil(fee / scale - 1e-9) * scale, fee)
