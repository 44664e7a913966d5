"""Behaviour of the governor (spec model.md section 5): what gets published, when."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from riskd.config import GovernorSettings
from riskd.model import governor
from riskd.model.governor import (
    HALTED,
    NORMAL,
    REDUCE_ONLY,
    SLIPPAGE_STEP,
    Conditions,
    Decision,
    GovernorState,
)
from riskd.model.parameters import BIT, Targets, reason_names

T0 = 1.7e9
FLOOR = 1e-5


def targets(lev: Any = 5.0, fee: Any = 2e-3, slip: Any = 0.01, m: int = 1) -> Targets:
    lev_a = np.broadcast_to(np.asarray(lev, dtype=np.float64), (m, 2)).copy()
    fee_a = np.broadcast_to(np.asarray(fee, dtype=np.float64), (m, 2)).copy()
    slip_a = np.broadcast_to(np.asarray(slip, dtype=np.float64), (m,)).copy()
    return Targets(
        max_leverage=lev_a,
        initial_margin=0.5 / lev_a,
        maintenance_margin=0.25 / lev_a,
        fee_rate_hourly=fee_a,
        max_slippage=slip_a,
        q=np.zeros(m),
        reasons=np.zeros(m, np.int64),
        es=np.zeros((m, 2)),
    )


class Gov:
    """One governor state driven through cycles; conditions default to a fresh,
    warm market with no jump and no known event."""

    def __init__(self, m: int = 1, **settings: Any) -> None:
        self.cfg = GovernorSettings(**settings)
        self.state = GovernorState.empty(m)
        self.m = m
        self.last_tick: float | None = None  # None: a tick every cycle
        self.last_jump = np.nan
        self.event_t = np.nan
        self.resolve_t = np.nan
        self.warm = True

    def step(self, now: float | np.ndarray, tg: Targets | None = None, **cond: Any) -> Decision:
        m = self.m
        tick = now if self.last_tick is None else self.last_tick
        args: dict[str, Any] = {
            "last_tick_t": np.full(m, tick),
            "last_jump_t": np.full(m, self.last_jump),
            "event_t": np.full(m, self.event_t),
            "resolve_t": np.full(m, self.resolve_t),
            "warm": np.full(m, self.warm),
            "fee_floor": np.full(m, FLOOR),
        }
        args.update(cond)
        return governor.step(self.state, self.cfg, now, tg or targets(m=m), Conditions(**args))

    @property
    def lev(self) -> np.ndarray:
        return self.state.leverage[0]

    @property
    def mode(self) -> int:
        return int(self.state.mode[0])

    @property
    def reasons(self) -> list[str]:
        return reason_names(int(self.state.reasons[0]))


def test_first_publish_takes_the_targets_rounded_safe() -> None:
    g = Gov()
    d = g.step(T0, targets(lev=[[5.678, 3.0]], fee=[[1.2341e-3, 2e-3]], slip=0.012345678))
    assert d.publish[0] and not d.tightened[0]
    assert list(g.lev) == [5.67, 3.0]  # leverage down to 0.01
    assert g.state.fee[0, 0] == pytest.approx(1.24e-3)  # fee up to 3 digits
    assert g.state.slippage[0] == pytest.approx(0.01234)  # slippage down to 1e-5
    assert g.mode == NORMAL
    assert g.state.version[0] == 1


@pytest.mark.parametrize("deadband", [0.0, 0.02, 0.5])
def test_tightening_is_published_in_the_same_cycle(deadband: float) -> None:
    g = Gov(deadband=deadband)
    g.step(T0, targets(lev=5.0, fee=2e-3, slip=0.01))
    # Leverage down by 0.2%: smaller than any deadband, still out at once.
    d = g.step(T0 + 1, targets(lev=4.99, fee=2e-3, slip=0.01))
    assert d.publish[0] and d.tightened[0]
    assert list(g.lev) == [4.99, 4.99]
    # Fee up, slippage down: also at once.
    d = g.step(T0 + 2, targets(lev=4.99, fee=2.01e-3, slip=0.0099))
    assert d.publish[0] and d.tightened[0]
    assert g.state.fee[0, 0] == pytest.approx(2.01e-3)
    assert g.state.slippage[0] == pytest.approx(0.0099)
    assert g.state.published_at[0] == T0 + 2


def test_loosening_rises_one_step_per_interval() -> None:
    g = Gov(max_loosen_step=0.1, loosen_interval_s=60.0, deadband=0.0)
    g.step(T0, targets(lev=2.0))
    history = []
    for k in range(1, 601):  # ten minutes of one-second cycles, target 5x
        g.step(T0 + k, targets(lev=5.0))
        history.append((T0 + k, g.lev[0]))
    changes = [(t, v) for (t, v), (_, u) in zip(history[1:], history[:-1], strict=True) if v != u]
    first = next(t for t, v in history if v > 2.0)
    assert first == T0 + 60  # a whole interval before the first step
    prev_t, prev_v = T0, 2.0
    for t, v in changes:
        assert t - prev_t >= 60.0
        assert v <= prev_v * 1.1 + 1e-9
        prev_t, prev_v = t, v
    assert len(changes) == 10 and history[-1][1] == 5.0  # 2.2, 2.42, ..., 4.68, then 5


def test_no_saved_up_steps_after_a_quiet_hour() -> None:
    """Steps are budgeted from the last change or the last cycle at which nothing
    waited to loosen: an hour at target does not buy a burst later (property 6.6)."""
    g = Gov(max_loosen_step=0.1, loosen_interval_s=60.0, deadband=0.0)
    for k in range(3600):
        g.step(T0 + k, targets(lev=2.0))
    for k in range(3600, 3659):  # the target jumps to 5x; the last idle cycle was 3599
        g.step(T0 + k, targets(lev=5.0))
        assert g.lev[0] == 2.0
    g.step(T0 + 3659, targets(lev=5.0))
    assert g.lev[0] == pytest.approx(2.2)


def test_sparse_cycles_compound_the_steps_of_the_time_between() -> None:
    """Cycles ten minutes apart (the backtest cycles at each tick): ten intervals
    passed, so up to ten steps at once, still capped by the target."""
    g = Gov(max_loosen_step=0.1, loosen_interval_s=60.0, deadband=0.0)
    g.step(T0, targets(lev=2.0))
    g.step(T0 + 600, targets(lev=4.0))
    assert g.lev[0] == 4.0  # 2 * 1.1**10 = 5.19 allowed, the target is 4
    g.step(T0 + 1200, targets(lev=20.0))
    assert g.lev[0] == pytest.approx(np.floor(4.0 * 1.1**10 * 100) / 100)


def test_fee_falls_and_slippage_widens_by_steps_too() -> None:
    g = Gov(max_loosen_step=0.1, loosen_interval_s=60.0, deadband=0.0)
    g.step(T0, targets(fee=1e-2, slip=0.01))
    g.step(T0 + 1, targets(fee=1e-3, slip=0.05))
    assert g.state.fee[0, 0] == pytest.approx(1e-2)
    assert g.state.slippage[0] == pytest.approx(0.01)
    for k in range(2, 62):
        g.step(T0 + k, targets(fee=1e-3, slip=0.05))
    assert g.state.fee[0, 0] == pytest.approx(1e-2 / 1.1)
    assert g.state.slippage[0] == pytest.approx(0.011)


def test_deadband_holds_a_small_loosening() -> None:
    g = Gov(deadband=0.05, max_loosen_step=0.1, loosen_interval_s=60.0, ttl_s=3600.0)
    g.step(T0, targets(lev=4.0))
    for k in range(1, 300):  # 2.5% looser: under the deadband, nothing goes out
        d = g.step(T0 + k, targets(lev=4.1))
        assert not d.publish[0]
    assert g.lev[0] == 4.0 and g.state.version[0] == 1
    # 7.5% looser: past the deadband (one interval since the last idle cycle).
    for k in range(300, 361):
        g.step(T0 + k, targets(lev=4.3))
    assert g.lev[0] == 4.3


def test_deadband_never_holds_a_tightening() -> None:
    g = Gov(deadband=0.5)
    g.step(T0, targets(lev=4.0, fee=1e-3, slip=0.02))
    d = g.step(T0 + 1, targets(lev=3.99, fee=1.005e-3, slip=0.01999))
    assert d.publish[0] and d.tightened[0]
    assert g.lev[0] == 3.99
    assert g.state.fee[0, 0] == pytest.approx(1.01e-3)  # up to three digits
    assert g.state.slippage[0] == pytest.approx(0.01999)


def test_jump_cooldown_holds_the_tightened_values() -> None:
    g = Gov(jump_cooldown_s=600.0, max_loosen_step=0.1, loosen_interval_s=60.0, deadband=0.0)
    g.step(T0, targets(lev=5.0))
    g.last_jump = T0 + 10
    g.step(T0 + 10, targets(lev=2.0))  # the jump: tightened at once
    assert g.lev[0] == 2.0
    assert "jump_detected" in g.reasons
    for k in range(11, 300):  # the model calms down; the governor holds 2x
        g.step(T0 + k, targets(lev=5.0))
        assert g.lev[0] == 2.0
    g.step(T0 + 300, targets(lev=1.5))  # a tightening inside the cool-down still goes out
    assert g.lev[0] == 1.5
    for k in range(301, 610):
        g.step(T0 + k, targets(lev=5.0))
        assert g.lev[0] == 1.5
    # Cool-down over at T0 + 610; one interval later, one step.
    for k in range(610, 670):
        g.step(T0 + k, targets(lev=5.0))
        assert g.lev[0] == 1.5
    assert "jump_detected" not in g.reasons
    g.step(T0 + 670, targets(lev=5.0))
    assert g.lev[0] == pytest.approx(1.65)


def test_halt_after_jump() -> None:
    g = Gov(jump_cooldown_s=600.0, halt_after_jump_s=120.0)
    g.step(T0, targets(lev=5.0))
    g.last_jump = T0 + 1
    g.step(T0 + 1, targets(lev=3.0))
    assert g.mode == HALTED
    assert {"halted_after_jump", "jump_detected"} <= set(g.reasons)
    assert list(g.lev) == [1.0, 1.0]  # halted: nothing new is lent
    assert list(g.state.fee[0]) == pytest.approx([FLOOR, FLOOR])  # and at 1x the fee is the floor
    g.step(T0 + 120, targets(lev=3.0))
    assert g.mode == HALTED and list(g.lev) == [1.0, 1.0]
    g.step(T0 + 121, targets(lev=3.0))
    assert g.mode == NORMAL
    assert "halted_after_jump" not in g.reasons and "jump_detected" in g.reasons
    assert list(g.lev) == [1.0, 1.0]  # the cool-down holds 1x; then it climbs by steps


def test_halt_disabled_by_zero() -> None:
    g = Gov(halt_after_jump_s=0.0)
    g.last_jump = T0
    g.step(T0, targets(lev=3.0))
    assert g.mode == NORMAL


def test_resolution_freeze() -> None:
    g = Gov(freeze_before_resolution_s=3600.0)
    g.event_t = T0 + 4000.0
    g.step(T0, targets(lev=5.0))
    assert g.mode == NORMAL and g.lev[0] == 5.0
    d = g.step(T0 + 400.0, targets(lev=5.0))  # exactly one hour before the event
    assert d.publish[0] and d.tightened[0]
    assert g.mode == REDUCE_ONLY
    assert list(g.lev) == [1.0, 1.0]
    assert g.state.fee[0] == pytest.approx([FLOOR, FLOOR])
    assert "near_resolution" in g.reasons


def test_after_resolution() -> None:
    g = Gov()
    g.event_t = T0 - 100.0
    g.resolve_t = T0
    g.step(T0 - 1, targets(lev=5.0))
    assert "near_resolution" in g.reasons  # votes being counted
    g.step(T0, targets(lev=5.0))
    assert "resolved" in g.reasons and "near_resolution" not in g.reasons
    assert g.mode == REDUCE_ONLY and list(g.lev) == [1.0, 1.0]


def assert_fail_safe(g: Gov, reason: str) -> None:
    assert g.mode == REDUCE_ONLY
    assert list(g.lev) == [1.0, 1.0]
    assert g.state.fee[0] == pytest.approx([FLOOR, FLOOR], rel=1e-9)
    assert reason in g.reasons


def test_stale_feed_fails_safe_until_fresh_data() -> None:
    g = Gov(stale_after_s=30.0, max_loosen_step=0.1, loosen_interval_s=60.0, deadband=0.0)
    g.last_tick = T0
    g.step(T0, targets(lev=5.0))
    g.step(T0 + 29.9, targets(lev=5.0))
    assert g.mode == NORMAL and "stale_feed" not in g.reasons
    d = g.step(T0 + 30.0, targets(lev=5.0))
    assert d.publish[0]
    assert_fail_safe(g, "stale_feed")
    for k in range(31, 600):
        g.step(T0 + k, targets(lev=5.0))
        assert_fail_safe(g, "stale_feed")
    g.last_tick = None  # fresh data: back to normal, loosening by steps from 1x
    g.step(T0 + 600, targets(lev=5.0))
    assert g.mode == NORMAL and "stale_feed" not in g.reasons
    assert g.lev[0] == 1.0
    g.step(T0 + 660, targets(lev=5.0))
    assert g.lev[0] == pytest.approx(1.1)


def test_no_data_is_stale() -> None:
    g = Gov()
    g.step(T0, targets(lev=5.0), last_tick_t=np.array([np.nan]))
    assert_fail_safe(g, "stale_feed")


def test_warming_up_fails_safe() -> None:
    g = Gov()
    g.warm = False
    g.step(T0, targets(lev=5.0))
    assert_fail_safe(g, "warming_up")
    assert "stale_feed" not in g.reasons


@pytest.mark.parametrize("field", ["lev", "fee", "slip"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_targets_fail_safe(field: str, bad: float) -> None:
    g = Gov()
    g.step(T0, targets(lev=5.0))
    kw: dict[str, Any] = {"lev": 5.0, "fee": 2e-3, "slip": 0.01}
    kw[field] = [[bad, 2e-3]] if field == "fee" else ([[bad, 5.0]] if field == "lev" else bad)
    d = g.step(T0 + 1, targets(**kw))
    assert d.publish[0]
    assert_fail_safe(g, "model_error")
    assert g.state.slippage[0] == SLIPPAGE_STEP
    assert np.all(np.isfinite(g.state.leverage)) and np.all(np.isfinite(g.state.fee))


def test_valid_until_is_now_plus_ttl() -> None:
    g = Gov(ttl_s=45.0)
    g.step(T0, targets(lev=5.0))
    assert g.state.valid_until[0] == T0 + 45.0
    g.step(T0 + 1.5, targets(lev=4.0))
    assert g.state.published_at[0] == T0 + 1.5
    assert g.state.valid_until[0] == T0 + 46.5


def test_republished_before_expiry() -> None:
    g = Gov(ttl_s=60.0, publish_interval_s=1.0)
    republished = 0
    for k in range(600):
        now = T0 + k
        before = g.state.valid_until[0]
        d = g.step(now, targets(lev=5.0))
        if k:
            assert before > now  # what is in force never expires between cycles
        republished += int(d.publish[0] and k > 0)
        assert g.state.valid_until[0] - now > 2 * g.cfg.publish_interval_s
        assert g.lev[0] == 5.0
    assert 10 <= republished <= 20  # about every 45 s, not every cycle


def test_refreshes_of_markets_published_together_spread_out() -> None:
    """1,000 markets first published in one cycle (a start-up) do not all refresh in
    one later cycle: each refreshes between 3/4 and 7/8 of the ttl, spread evenly."""
    m = 1000
    g = Gov(m=m, ttl_s=60.0, publish_interval_s=1.0)
    g.step(T0)
    per_cycle = []
    first_refresh = np.full(m, np.nan)
    for k in range(1, 61):
        d = g.step(T0 + k)
        per_cycle.append(int(d.publish.sum()))
        first_refresh[d.publish & np.isnan(first_refresh)] = k
        assert (g.state.valid_until - (T0 + k) > 2.0).all()  # nothing ever near expiry
    assert not np.isnan(first_refresh).any()
    assert first_refresh.min() >= 45 and first_refresh.max() <= 53
    # Seven or eight cycles share the wave, none takes more than a fifth of it.
    assert sum(n > 0 for n in per_cycle) >= 7 and max(per_cycle) <= m // 5


def test_versions_rise_by_one_per_publish_of_that_market() -> None:
    g = Gov(m=3)
    g.step(T0, targets(lev=5.0, m=3))
    assert list(g.state.version) == [1, 1, 1]
    d = g.step(T0 + 1, targets(lev=[[5.0, 5.0], [4.0, 4.0], [5.0, 5.0]], m=3))
    assert list(d.publish) == [False, True, False]
    assert list(g.state.version) == [1, 2, 1]
    for k in range(2, 200):
        before = g.state.version.copy()
        d = g.step(T0 + k, targets(lev=5.0 - 0.01 * k, m=3))
        assert np.array_equal(g.state.version, before + d.publish)


def test_one_time_per_market() -> None:
    """The backtest passes one `now` per row (a tape's rows, each of one market)."""
    g = Gov(m=2)
    now = np.array([T0, T0 + 10.0])
    g.step(now, targets(lev=5.0, m=2), last_tick_t=now)
    assert list(g.state.published_at) == list(now)
    assert list(g.state.valid_until) == list(now + g.cfg.ttl_s)


def test_overrides_cap_leverage_and_pin_the_mode() -> None:
    g = Gov()
    g.step(T0, targets(lev=5.0), leverage_cap=np.array([[2.0, 8.0]]))
    assert list(g.lev) == [2.0, 5.0]
    assert "config_override" in g.reasons
    g.step(T0 + 1, targets(lev=5.0), mode_floor=np.array([REDUCE_ONLY]))
    assert g.mode == REDUCE_ONLY and list(g.lev) == [1.0, 1.0]
    assert "config_override" in g.reasons


def test_a_halted_pin_publishes_1x_on_both_sides_whatever_the_cap() -> None:
    g = Gov()
    g.step(T0, targets(lev=[[5.0, 3.0]]))
    d = g.step(
        T0 + 1,
        targets(lev=[[5.0, 3.0]]),
        mode_floor=np.array([HALTED]),
        leverage_cap=np.array([[2.5, 2.5]]),
    )
    assert d.publish[0] and d.tightened[0]
    assert g.mode == HALTED and list(g.lev) == [1.0, 1.0]
    assert list(g.state.fee[0]) == pytest.approx([FLOOR, FLOOR])
    assert "config_override" in g.reasons


def test_unknown_resolution_is_flagged() -> None:
    g = Gov()
    g.step(T0, targets(lev=5.0))
    assert g.state.reasons[0] & BIT["unknown_resolution"]
