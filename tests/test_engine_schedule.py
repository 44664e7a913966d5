"""The engine's cycle evaluates only the markets that ticked or whose time-driven
conditions came due (governor.next_change); it must publish exactly what evaluating
every market at every cycle publishes: staleness, warm-up, cool-down and halt ends,
the resolution freeze, resolution, loosening steps and the refresh before valid_until.

The model's own drift without ticks (tau, a decaying jump intensity, the pooled
long-run jump rate, the silence that widens the liquidation horizon) is what
`[governor] reevaluate_s` re-evaluates; it is switched off here (no event time for
markets with prices, no decay, no pool, k_liquidity 0) so that the comparison is
exact."""

from __future__ import annotations

import random

import numpy as np
import pytest

from riskd.config import Settings
from riskd.engine import ALL, Engine
from riskd.feeds.base import Tick
from riskd.markets import Market

T0 = 1_700_000_000.0
TRADED = 24
SCHEDULED = 6  # no prices; their freeze and resolution fall inside the run


def settings() -> Settings:
    return Settings(
        # The pooled long-run jump rate drifts with every market's time and jumps:
        # a prior of strength far beyond the run and a rate of 0 pin it at ~0.
        model={
            "warmup_ticks": 3,
            "warmup_s": 20.0,
            "jump_halflife_s": 1e12,
            "k_liquidity": 0.0,
            "lambda_prior": 0.0,
            "jump_pool_prior_s": 1e15,
            "jump_shrinkage_s": 1e15,
        },
        governor={
            "publish_interval_s": 1.0,
            "stale_after_s": 30.0,
            "ttl_s": 60.0,
            "loosen_interval_s": 60.0,
            "jump_cooldown_s": 120.0,
            "halt_after_jump_s": 30.0,
            "freeze_before_resolution_s": 600.0,
            "reevaluate_s": 1e9,
        },
    )


def markets() -> dict[str, Market]:
    out = {
        f"t{k}": Market(id=f"t{k}", resolves_at=float("nan"), event_at=float("nan"))
        for k in range(TRADED)
    }
    for k in range(SCHEDULED):
        at = T0 + 900.0 + 300.0 * k
        out[f"s{k}"] = Market(id=f"s{k}", resolves_at=at, event_at=at)
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_scheduled_cycles_publish_what_full_cycles_publish(seed: int) -> None:
    rng = random.Random(seed)
    full = Engine(settings(), markets(), discover=False)
    scheduled = Engine(settings(), markets(), discover=False)
    cents = [50] * TRADED
    silent = [rng.random() < 0.3 for _ in range(TRADED)]
    waiting = 0
    reasons: set[str] = set()
    loosened = 0
    leverage: dict[str, float] = {}
    for step in range(2400):
        now = T0 + step
        ticks = []
        for k in range(TRADED):
            if rng.random() < 0.01:
                silent[k] = not silent[k]
            if silent[k] or rng.random() > 0.2:
                continue
            move = rng.choice((-15, 15)) if rng.random() < 0.02 else rng.choice((-1, 1))
            cents[k] = min(95, max(5, cents[k] + move))
            p = cents[k] / 100
            # A deep book: its depth covers the reference position (the base horizon).
            ticks.append(Tick(f"t{k}", now - rng.random(), p, p - 0.005, p + 0.005, 1e6))
        ticks.sort(key=lambda tk: tk.ts)
        full.ingest(ticks)
        scheduled.enqueue(ticks)
        a = full.cycle(now, ALL)
        b = scheduled.cycle(now)
        waiting += int(np.count_nonzero(scheduled.due_t > now + 1.0))
        assert b.entries == a.entries, f"cycle {step}"
        assert b.tightened_markets == a.tightened_markets, f"cycle {step}"
        for entry in a.entries:
            reasons.update(entry["reasons"])
            lev = entry["max_leverage"]["long"]
            loosened += lev > leverage.get(entry["market"], lev)
            leverage[entry["market"]] = lev
    assert dict(scheduled.current) == dict(full.current)
    # Every time-driven rule came into play, and loosening steps were taken.
    assert {
        "stale_feed",
        "warming_up",
        "jump_detected",
        "halted_after_jump",
        "near_resolution",
        "resolved",
    } <= reasons
    assert loosened > 0
    # And the schedule skipped work: most markets sat out most cycles.
    assert waiting > 0.5 * 2400 * (TRADED + SCHEDULED)
