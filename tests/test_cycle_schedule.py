"""When publish cycles start (`pipeline.next_cycle`): on a grid of the interval, whatever
the cycles take, as long as that leaves the loop at least as long after a cycle as the
cycle ended after its due time (up to one interval); never several cycles back to back
to make up for missed ones."""

from __future__ import annotations

import random

from riskd.pipeline import next_cycle

INTERVAL = 0.01


def starts(durations: list[float], late: float = 0.0, begin: float = 100.0) -> list[float]:
    """The start times of cycles taking these durations, each started `late` after it
    was due (0: as the cycle task's sleep wakes it on an idle loop)."""
    due, out = begin, []
    for took in durations:
        out.append(due + late)
        due = next_cycle(due, INTERVAL, due + late + took)
    return out


def test_cycles_up_to_half_the_interval_start_on_the_grid() -> None:
    rng = random.Random(7)
    durations = [rng.uniform(0.0, INTERVAL / 2) for _ in range(1000)]
    for k, start in enumerate(starts(durations)):
        assert abs(start - (100.0 + k * INTERVAL)) < 1e-9


def test_the_loop_gets_as_long_as_a_cycle_took_up_to_one_interval() -> None:
    rng = random.Random(8)
    durations = [rng.uniform(0.0, 3 * INTERVAL) for _ in range(1000)]
    s = starts(durations)
    for k in range(len(s) - 1):
        rest = s[k + 1] - (s[k] + durations[k])
        assert rest >= min(durations[k], INTERVAL) - 1e-9


def test_a_late_start_counts_as_time_the_loop_was_busy() -> None:
    # Cycles of 2 ms that start 4 ms late (a busy loop): the next one is due 6 ms after
    # each ends (the 6 ms the loop was kept busy since its due time), not the 4 ms the
    # grid would leave; and, the loop being as busy, starts 4 ms late again.
    s = starts([0.002] * 10, late=0.004)
    for a, b in zip(s, s[1:], strict=False):
        assert abs(b - (a + 0.002 + 0.006 + 0.004)) < 1e-9


def test_after_a_long_cycle_the_grid_goes_on_from_the_next_start() -> None:
    # The third cycle takes three and a half intervals: the fourth starts one interval
    # after it ends (the three cycles it overran are skipped), and the ones after on
    # the grid from there.
    took = 3.5 * INTERVAL
    s = starts([0.001, 0.001, took, 0.001, 0.001, 0.001])
    assert abs(s[3] - (s[2] + took + INTERVAL)) < 1e-9
    assert abs(s[4] - (s[3] + INTERVAL)) < 1e-9
    assert abs(s[5] - (s[3] + 2 * INTERVAL)) < 1e-9


def test_a_new_interval_takes_effect_at_the_next_cycle() -> None:
    # A reload changes `publish_interval_s`: the next start is one new interval after
    # the last one was due.
    assert next_cycle(5.0, 1.0, 5.2) == 6.0
    assert next_cycle(6.0, 0.5, 6.1) == 6.5
