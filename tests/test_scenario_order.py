"""`scenarios.worst_first` is a stable sort by descending loss for any finite losses
(hypothesis): the scenarios' structure only predicts the order, and where rounding
(or anything else) puts neighbours out of it, the sort repairs it. The expected
shortfall sums the scenarios in this order, so a wrong order is a wrong margin."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from riskd.model.scenarios import worst_first

# Few distinct values make ties and out-of-order neighbours common.
VALUES = st.sampled_from([-1.0, -0.5, -1e-16, 0.0, 1e-16, 0.25, 0.5, 1.0])


def stable_descending(loss: np.ndarray) -> np.ndarray:
    return np.argsort(-loss, kind="stable")


def _sorted(loss: np.ndarray) -> np.ndarray:
    order = np.empty(loss.shape[0], np.int64)
    worst_first(loss, order)
    return order


@given(
    st.integers(0, 12).flatmap(lambda n: st.lists(VALUES, min_size=2 + 2 * n, max_size=2 + 2 * n))
)
@settings(max_examples=400, deadline=None)
def test_any_losses(values: list[float]) -> None:
    loss = np.array(values)
    assert _sorted(loss).tolist() == stable_descending(loss).tolist()


@given(
    st.integers(1, 12),
    st.floats(-3.0, 3.0),
    st.floats(0.0, 2.0),
    st.floats(0.0, 2.0),
    st.booleans(),
    st.lists(st.tuples(st.integers(0, 25), st.sampled_from([-1, 1])), max_size=3),
)
@settings(max_examples=400, deadline=None)
def test_structured_losses_with_rounding_slips(
    n: int, x: float, jump: float, diff: float, long_yes: bool, slips: list[tuple[int, int]]
) -> None:
    """Losses shaped like a market's (two atoms, then jump and diffusion nodes, each
    group monotone in z), with a few values nudged by an ulp out of that order."""
    z = np.linspace(-2.0, 2.0, n)
    p_h = np.concatenate(
        [[1.0, 0.0], 1 / (1 + np.exp(-(x + jump * z))), 1 / (1 + np.exp(-(x + diff * z)))]
    )
    value = 1 / (1 + np.exp(-x))
    loss = value - p_h if long_yes else p_h - value
    for col, step in slips:
        col = col % loss.shape[0]
        loss[col] = np.nextafter(loss[col], step * np.inf)
    assert _sorted(loss).tolist() == stable_descending(loss).tolist()
