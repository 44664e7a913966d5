"""Governor: from the model's targets to what is published (spec section 5).

Tighten at once, loosen by bounded steps, deadband, jump cool-down and halt,
resolution freeze, stale and warm-up fail-safe, valid_until. Vectorised over
markets; time is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from riskd.jit import MAX_FLOAT, fmax, fmin, njit
from riskd.jit import maximum as _max
from riskd.jit import minimum as _min
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
        k = max(n - len(self), 0)  # 0 too: the arrays take their dtypes and shapes
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
    # Per market, how long without a confirmation makes it stale (None: stale_after_s
    # for all): a trade tape's market may wait a few of its own gaps (section 5).
    stale_limit: np.ndarray | None = None
    # When each market's warm-up ends (nan: not known yet); with it, `step` says when
    # each row must be evaluated again (`next_change`).
    warm_at: np.ndarray | None = None


class MarketColumns(NamedTuple):
    """What `conditions` reads: the estimator's columns at `estimator_rows`, and the
    engine's per-market ones at `rows`."""

    ticks: np.ndarray  # int64
    gap: np.ndarray
    last_jump_t: np.ndarray
    first_t: np.ndarray
    book_since: np.ndarray
    event_t: np.ndarray
    resolve_t: np.ndarray
    fee_floor: np.ndarray


class ConditionSettings(NamedTuple):
    warmup_ticks: int
    warmup_s: float
    stale_after_s: float
    stale_after_gaps: float
    scheduling: bool  # with when each market's warm-up ends


class ConditionOut(NamedTuple):
    warm: np.ndarray  # bool
    warm_at: np.ndarray  # empty: not scheduling
    stale_limit: np.ndarray  # empty: stale_after_s for all
    last_jump_t: np.ndarray
    event_t: np.ndarray
    resolve_t: np.ndarray
    fee_floor: np.ndarray


def conditions(
    now: float | np.ndarray,
    rows: np.ndarray,
    estimator_rows: np.ndarray,
    columns: MarketColumns,
    confirmed: np.ndarray,
    live_book: np.ndarray | None,
    cfg: ConditionSettings,
    **overrides: np.ndarray,
) -> Conditions:
    """Section 5's facts of markets `rows` at `now` (one time, or one per row), in one
    compiled pass: warm (warmup_ticks and warmup_s since the first tick, or a book
    snapshot and warmup_s of confirmed liveness) and, when scheduling, when the warm-up
    ends; how long without a confirmation makes each stale (a few of its own gaps, a
    live book stale_after_s). `confirmed`: when each price was last confirmed;
    `live_book`: the book is held on a live connection (None: no live books)."""
    n = rows.shape[0]
    out = ConditionOut(
        warm=np.empty(n, np.bool_),
        warm_at=np.empty(n if cfg.scheduling else 0),
        stale_limit=np.empty(n if cfg.stale_after_gaps > 0.0 else 0),
        last_jump_t=np.empty(n),
        event_t=np.empty(n),
        resolve_t=np.empty(n),
        fee_floor=np.empty(n),
    )
    at = np.full(n, now, np.float64) if np.ndim(now) == 0 else np.ascontiguousarray(now, np.float64)
    books = _NO_BOOKS if live_book is None else np.ascontiguousarray(live_book, np.bool_)
    _conditions(rows, estimator_rows, at, columns, books, cfg, out)
    return Conditions(
        last_tick_t=confirmed,
        last_jump_t=out.last_jump_t,
        event_t=out.event_t,
        resolve_t=out.resolve_t,
        warm=out.warm,
        fee_floor=out.fee_floor,
        stale_limit=out.stale_limit if cfg.stale_after_gaps > 0.0 else None,
        warm_at=out.warm_at if cfg.scheduling else None,
        **overrides,
    )


_NO_BOOKS = np.zeros(0, np.bool_)


@njit
def _conditions(rows, estimator_rows, now, col, live_book, cfg, out):  # type: ignore[no-untyped-def]
    books = live_book.shape[0] > 0
    for k in range(rows.shape[0]):
        i, j, t = rows[k], estimator_rows[k], now[k]
        ticks = col.ticks[j]
        first_t = col.first_t[i]
        warmed = ticks >= cfg.warmup_ticks
        warm = warmed and t - first_t >= cfg.warmup_s
        warm_at = first_t + cfg.warmup_s if warmed else np.nan
        live = books and live_book[k]
        if live and ticks >= 1:
            # A book snapshot and warmup_s of confirmed liveness: warm, however seldom
            # its top moved.
            book_since = col.book_since[i]
            warm = warm or t - book_since >= cfg.warmup_s
            warm_at = fmin(warm_at, book_since + cfg.warmup_s)
        out.warm[k] = warm
        if cfg.scheduling:
            out.warm_at[k] = warm_at
        if cfg.stale_after_gaps > 0.0:
            # A trade tape's rule: a few of its own gaps (a gap unknown counts 0: fmax
            # drops the nan); a live book keeps stale_after_s.
            gaps = cfg.stale_after_gaps * _min(col.gap[j], MAX_FLOAT)
            out.stale_limit[k] = cfg.stale_after_s if live else fmax(cfg.stale_after_s, gaps)
        out.last_jump_t[k] = col.last_jump_t[j]
        out.event_t[k] = col.event_t[i]
        out.resolve_t[k] = col.resolve_t[i]
        out.fee_floor[k] = col.fee_floor[i]


@dataclass(frozen=True)
class Decision:
    publish: np.ndarray  # bool (m,)
    tightened: np.ndarray  # bool (m,): some value got tighter this cycle
    # (m,) with the conditions' `warm_at`: when each row must be evaluated again.
    due: np.ndarray | None = None


def step(
    state: GovernorState,
    cfg: GovernorSettings,
    now: float | np.ndarray,
    targets: Targets,
    cond: Conditions,
    idx: np.ndarray | None = None,
    record: GovernorState | None = None,
) -> Decision:
    """Decide what to publish at `now` for the markets `idx` (None: all, in order);
    updates `state` for the published ones.

    Row k of `targets`, `cond` and `now` (one time, or one per row) is about market
    idx[k]. A market may appear several times: its rows apply one after the other
    (the backtest's whole tape in one call). With `record` (a GovernorState of as
    many rows), row k receives what is in force for market idx[k] right after row k.
    With the conditions' `warm_at`, the decision carries when each row must be
    evaluated again (`next_change`, right after its step)."""
    n = len(targets.reasons)
    rows = np.arange(n) if idx is None else np.asarray(idx, np.int64)
    # One layout for every caller (a C-contiguous array of its own): a broadcast scalar
    # would be another type signature for the kernel, compiled in the first live cycle.
    at = np.full(n, now, np.float64) if np.ndim(now) == 0 else np.ascontiguousarray(now, np.float64)
    if at.shape != (n,):
        raise ValueError(f"now: {at.shape[0]} times for {n} rows")
    out = StepOut(
        publish=np.zeros(n, np.bool_),
        tightened=np.zeros(n, np.bool_),
        recording=record is not None,
        record=_NO_RECORD if record is None else StateArrays.of(record),
        scheduling=cond.warm_at is not None,
        due=_NO_TIMES if cond.warm_at is None else np.empty(n),
    )
    _step(
        StateArrays.of(state),
        StepRows(market=rows, now=at),
        TargetArrays(
            leverage=targets.max_leverage,
            fee=targets.fee_rate_hourly,
            slippage=targets.max_slippage,
            reasons=targets.reasons,
        ),
        ConditionArrays.of(cond, cfg, n),
        GovernorLimits.of(cfg),
        out,
    )
    return Decision(
        publish=out.publish, tightened=out.tightened, due=out.due if out.scheduling else None
    )


class StateArrays(NamedTuple):
    """A GovernorState's arrays, as the compiled pass takes them (same names)."""

    leverage: np.ndarray
    fee: np.ndarray
    slippage: np.ndarray
    mode: np.ndarray
    reasons: np.ndarray
    published_at: np.ndarray
    valid_until: np.ndarray
    changed_at: np.ndarray
    idle_at: np.ndarray
    version: np.ndarray

    @classmethod
    def of(cls, state: GovernorState) -> StateArrays:
        return cls._make(map(state.__getattribute__, cls._fields))


class StepRows(NamedTuple):
    """Row k is about market market[k] at now[k]."""

    market: np.ndarray  # int64
    now: np.ndarray


class TargetArrays(NamedTuple):
    """The model's targets per row (Targets)."""

    leverage: np.ndarray  # (n, 2)
    fee: np.ndarray  # (n, 2), hourly
    slippage: np.ndarray
    reasons: np.ndarray  # int64


class ConditionArrays(NamedTuple):
    """Conditions per row, every optional one filled in."""

    last_tick_t: np.ndarray
    last_jump_t: np.ndarray
    event_t: np.ndarray
    resolve_t: np.ndarray
    warm: np.ndarray  # bool
    fee_floor: np.ndarray
    mode_floor: np.ndarray  # int64
    leverage_cap: np.ndarray  # (n, 2)
    stale_limit: np.ndarray
    warm_at: np.ndarray  # empty: not scheduling

    @classmethod
    def of(cls, cond: Conditions, cfg: GovernorSettings, n: int) -> ConditionArrays:
        return cls(
            last_tick_t=cond.last_tick_t,
            last_jump_t=cond.last_jump_t,
            event_t=cond.event_t,
            resolve_t=cond.resolve_t,
            warm=np.asarray(cond.warm, np.bool_),
            fee_floor=cond.fee_floor,
            mode_floor=np.zeros(n, np.int64) if cond.mode_floor is None else cond.mode_floor,
            leverage_cap=np.full((n, 2), np.inf)
            if cond.leverage_cap is None
            else cond.leverage_cap,
            stale_limit=np.full(n, cfg.stale_after_s)
            if cond.stale_limit is None
            else np.ascontiguousarray(cond.stale_limit, np.float64),
            warm_at=_NO_TIMES
            if cond.warm_at is None
            else np.ascontiguousarray(cond.warm_at, np.float64),
        )


class GovernorLimits(NamedTuple):
    """The settings of section 5, as the compiled pass takes them."""

    freeze_s: float
    cooldown_s: float
    halt_s: float
    loosen_interval_s: float
    max_loosen_step: float
    deadband: float
    ttl_s: float
    publish_interval_s: float

    @classmethod
    def of(cls, cfg: GovernorSettings) -> GovernorLimits:
        return cls(
            freeze_s=cfg.freeze_before_resolution_s,
            cooldown_s=cfg.jump_cooldown_s,
            halt_s=cfg.halt_after_jump_s,
            loosen_interval_s=cfg.loosen_interval_s,
            max_loosen_step=cfg.max_loosen_step,
            deadband=cfg.deadband,
            ttl_s=cfg.ttl_s,
            publish_interval_s=cfg.publish_interval_s,
        )


class StepOut(NamedTuple):
    """What the pass writes besides the state: per row whether it published and
    tightened, with `recording` what is in force right after it (leverage, fee,
    slippage, mode and reasons of `record`'s row k), with `scheduling` when it must
    be evaluated again."""

    publish: np.ndarray  # bool
    tightened: np.ndarray  # bool
    recording: bool
    record: StateArrays
    scheduling: bool
    due: np.ndarray


if StateArrays._fields != tuple(f.name for f in fields(GovernorState)):
    raise TypeError("StateArrays must name GovernorState's fields, in order")
_NO_RECORD = StateArrays.of(GovernorState.empty(0))
_NO_TIMES = np.zeros(0)
# Bits of the reasons the governor itself sets.
_STALE, _WARMING, _BROKEN = BIT["stale_feed"], BIT["warming_up"], BIT["model_error"]
_RESOLVED, _FROZEN, _COOLDOWN = BIT["resolved"], BIT["near_resolution"], BIT["jump_detected"]
_HALTED, _UNKNOWN = BIT["halted_after_jump"], BIT["unknown_resolution"]
_OVERRIDE = BIT["config_override"]


@njit
def _step(state, rows, targets, cond, cfg, out):  # type: ignore[no-untyped-def]
    """Section 5 for one row at a time. Comparisons with nan ("never published") are
    false, and the min/max below propagate nan, as numpy's do. Into `state`
    (StateArrays) and `out` (StepOut)."""
    leverage, fee, slippage, mode = state.leverage, state.fee, state.slippage, state.mode
    reasons_pub, published_at, valid_until = state.reasons, state.published_at, state.valid_until
    changed_at, idle_at, version = state.changed_at, state.idle_at, state.version
    last_tick_t, last_jump_t, event_t = cond.last_tick_t, cond.last_jump_t, cond.event_t
    resolve_t, warm, fee_floor = cond.resolve_t, cond.warm, cond.fee_floor
    mode_floor, leverage_cap, stale_limit = cond.mode_floor, cond.leverage_cap, cond.stale_limit
    freeze_s, cooldown_s, halt_s = cfg.freeze_s, cfg.cooldown_s, cfg.halt_s
    loosen_interval_s, max_loosen_step = cfg.loosen_interval_s, cfg.max_loosen_step
    deadband, ttl_s = cfg.deadband, cfg.ttl_s
    rec = out.record
    # Per side, reused from row to row (an allocation per row cost more than the row).
    lev_t, fee_t, prev_lev, prev_fee = np.empty(2), np.empty(2), np.empty(2), np.empty(2)
    lev_new, fee_new = np.empty(2), np.empty(2)
    for k in range(rows.market.shape[0]):
        i = rows.market[k]
        now = rows.now[k]
        lev_t[0], lev_t[1] = targets.leverage[k, 0], targets.leverage[k, 1]
        fee_t[0], fee_t[1] = targets.fee[k, 0], targets.fee[k, 1]
        slip_t = targets.slippage[k]
        reasons = targets.reasons[k]

        stale = not (now - last_tick_t[k] < stale_limit[k])  # nan (no data) counts as stale
        warming = not warm[k] and not stale
        broken = not (
            np.isfinite(lev_t[0])
            and np.isfinite(lev_t[1])
            and np.isfinite(fee_t[0])
            and np.isfinite(fee_t[1])
            and np.isfinite(slip_t)
        )
        resolved = now >= resolve_t[k]
        frozen = now >= event_t[k] - freeze_s and not resolved
        since_jump = now - last_jump_t[k]
        cooldown = since_jump < cooldown_s
        halted = since_jump < halt_s
        reasons |= (
            (_STALE if stale else 0)
            | (_WARMING if warming else 0)
            | (_BROKEN if broken else 0)
            | (_RESOLVED if resolved else 0)
            | (_FROZEN if frozen else 0)
            | (_COOLDOWN if cooldown else 0)
            | (_HALTED if halted else 0)
            | (_UNKNOWN if np.isnan(event_t[k]) else 0)
        )

        # Fail-safe: leverage 1, fee floor (below), the tightest slippage.
        if broken:
            slip_t = SLIPPAGE_STEP
        one_x = stale or warming or broken or frozen or resolved
        mode_t = HALTED if halted else (REDUCE_ONLY if one_x else NORMAL)
        for s in range(2):
            if leverage_cap[k, s] < lev_t[s]:
                lev_t[s] = leverage_cap[k, s]
                reasons |= _OVERRIDE
        if mode_floor[k] > mode_t:
            mode_t = mode_floor[k]
            reasons |= _OVERRIDE
        # Reduce-only and halted both mean nothing new is lent: 1x.
        for s in range(2):
            if one_x or mode_t >= REDUCE_ONLY:
                lev_t[s] = 1.0
            lev_t[s] = _max(np.floor(lev_t[s] / LEVERAGE_STEP + 1e-9) * LEVERAGE_STEP, 1.0)
        slip_t = _max(np.floor(slip_t / SLIPPAGE_STEP + 1e-9) * SLIPPAGE_STEP, SLIPPAGE_STEP)

        first = mode[i] < 0
        prev_lev[0], prev_lev[1] = leverage[i, 0], leverage[i, 1]
        prev_fee[0], prev_fee[1] = fee[i, 0], fee[i, 1]
        prev_slip = slippage[i]
        # Loosening: one bounded step per interval, counted from the last change, the
        # end of a jump cool-down or the last cycle at which nothing waited to loosen,
        # whichever is latest. Sparse cycles (the backtest's) compound the steps of the
        # time between them; a market whose targets sat at the published values saves
        # none up for one burst (property 6.6).
        anchor = np.fmax(np.fmax(changed_at[i], idle_at[i]), last_jump_t[k] + cooldown_s)
        steps = (now - anchor) / loosen_interval_s
        steps = 0.0 if cooldown or np.isnan(steps) else min(max(np.floor(steps), 0.0), 64.0)
        grow = (1.0 + max_loosen_step) ** steps

        for s in range(2):
            if first:  # a first publish takes the targets
                lev_new[s] = lev_t[s]
            elif lev_t[s] <= prev_lev[s]:
                lev_new[s] = lev_t[s]
            else:
                up = np.floor(_min(lev_t[s], prev_lev[s] * grow) / LEVERAGE_STEP + 1e-9)
                lev_new[s] = _max(up * LEVERAGE_STEP, prev_lev[s])
            # The fee follows the published leverage: at 1x nothing is lent (property 5);
            # so a first publish at 1x (warming up, no data yet) carries the floor too.
            if lev_new[s] <= 1.0:
                fee_t[s] = fee_floor[k]
            fee_t[s] = _round_up(fee_t[s])
            if first or fee_t[s] >= prev_fee[s] or lev_new[s] <= 1.0:
                fee_new[s] = fee_t[s]
            else:
                fee_new[s] = _max(fee_t[s], prev_fee[s] / grow)
        if first or slip_t <= prev_slip:
            slip_new = slip_t
        else:
            slip_new = _max(_min(slip_t, prev_slip * grow), prev_slip)

        tightened = not first and (
            lev_new[0] < prev_lev[0]
            or lev_new[1] < prev_lev[1]
            or fee_new[0] > prev_fee[0]
            or fee_new[1] > prev_fee[1]
            or slip_new < prev_slip
            or mode_t > mode[i]
        )
        loosen_rel = _max(_looser(lev_new, prev_lev, fee_new, prev_fee), slip_new / prev_slip - 1.0)
        loosened = loosen_rel >= deadband and not first
        if not loosened and not tightened and not first:
            # Below the deadband a loosening is not worth a message: keep what is in force.
            for s in range(2):
                lev_new[s] = _min(lev_new[s], prev_lev[s])
                fee_new[s] = _max(fee_new[s], prev_fee[s])
            slip_new = _min(slip_new, prev_slip)

        margin = refresh_margin(i, cfg.publish_interval_s, ttl_s)
        expiring = not (valid_until[i] - now > margin)
        publish = (
            first
            or tightened
            or loosened
            or mode_t != mode[i]
            or reasons != reasons_pub[i]
            or expiring
        )
        out.publish[k] = publish
        out.tightened[k] = tightened and publish
        if publish:
            moved = (
                first
                or lev_new[0] != prev_lev[0]
                or lev_new[1] != prev_lev[1]
                or fee_new[0] != prev_fee[0]
                or fee_new[1] != prev_fee[1]
                or slip_new != prev_slip
            )
            leverage[i] = lev_new
            fee[i] = fee_new
            slippage[i] = slip_new
            mode[i] = mode_t
            reasons_pub[i] = reasons
            published_at[i] = now
            valid_until[i] = now + ttl_s
            version[i] += 1
            if moved:
                changed_at[i] = now
        # Idle: no target looser than what is now in force by the deadband or more.
        want = _max(_looser(lev_t, leverage[i], fee_t, fee[i]), slip_t / slippage[i] - 1.0)
        if not (want > 0.0 and want >= deadband):
            idle_at[i] = now
        if out.recording:  # element by element: a row copy allocates and counts references
            for s in range(2):
                rec.leverage[k, s], rec.fee[k, s] = leverage[i, s], fee[i, s]
            rec.slippage[k] = slippage[i]
            rec.mode[k], rec.reasons[k] = mode[i], reasons_pub[i]
        if out.scheduling:
            out.due[k] = next_change(state, i, now, cond, k, cfg)


@njit
def _looser(lev, lev_ref, fee, fee_ref):  # type: ignore[no-untyped-def]
    """How much looser (lev, fee) is than (lev_ref, fee_ref), relatively, at most."""
    a = _max(lev[0] / lev_ref[0] - 1.0, fee_ref[0] / fee[0] - 1.0)
    b = _max(lev[1] / lev_ref[1] - 1.0, fee_ref[1] / fee[1] - 1.0)
    return _max(a, b)


def loosening_anchor(
    state: GovernorState, last_jump_t: np.ndarray, cooldown_s: float
) -> np.ndarray:
    """When the loosening steps start counting (section 5); nan: not yet."""
    return np.fmax(np.fmax(state.changed_at, state.idle_at), last_jump_t + cooldown_s)


GOLDEN = (5**0.5 - 1) / 2


@njit
def refresh_margin(market: int, publish_interval_s: float, ttl_s: float) -> float:
    """A set is republished when less than this is left of its validity: between an
    eighth and a quarter of the ttl, spread over markets (by index, golden-ratio
    spaced), never under two publish intervals. Markets first published together
    (at start-up: all of them) would otherwise refresh together, in one long cycle
    every ttl - margin seconds."""
    x = float(market) * GOLDEN
    spread = x - np.trunc(x)  # the fractional part, exactly
    return _max(2.0 * publish_interval_s, ttl_s / 4.0 * (1.0 - spread / 2.0))


@njit
def next_change(state, i, now, cond, k, cfg):  # type: ignore[no-untyped-def]
    """Right after `step` of row k (market i) at `now`: the first time after `now` at which
    `step` could decide otherwise for the same targets and conditions (inf: never). These
    are the time-driven rules of section 5: staleness, the end of warm-up (`warm_at`), the
    resolution freeze, resolution, the end of a jump cool-down or halt, the refresh before
    valid_until, and the next loosening step of a market that waits to loosen. A caller
    may skip a market until then, or until its targets move (a tick, or the slow drift of
    tau and lambda)."""
    last_jump_t = cond.last_jump_t[k]
    anchor = fmax(fmax(state.changed_at[i], state.idle_at[i]), last_jump_t + cfg.cooldown_s)
    steps = np.floor((now - anchor) / cfg.loosen_interval_s) + 1.0
    waiting = state.idle_at[i] != now
    first = np.inf
    for t in (
        cond.last_tick_t[k] + cond.stale_limit[k],
        cond.warm_at[k],
        cond.event_t[k] - cfg.freeze_s,
        cond.resolve_t[k],
        last_jump_t + cfg.cooldown_s,
        last_jump_t + cfg.halt_s,
        anchor + steps * cfg.loosen_interval_s if waiting else np.nan,
        state.valid_until[i] - refresh_margin(i, cfg.publish_interval_s, cfg.ttl_s),
    ):
        if t > now and t < first:
            first = t
    return first


@njit
def _round_up(fee: float) -> float:
    """Round up to FEE_DIGITS significant digits (positive values)."""
    if not fee > 0.0:
        return fee
    scale = 10.0 ** (np.floor(np.log10(fee)) - (FEE_DIGITS - 1))
    return np.ceil(fee / scale - 1e-9) * scale
