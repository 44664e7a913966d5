"""Scenario distribution of the price after the liquidation horizon (spec section 4).

Per market: prices p_h over 2 + 2 * nodes scenarios with probabilities, in the
spirit of SPAN / Prisma scenario arrays, and the expected shortfall of a loss
over them. Written per market and compiled (numba): a market's 26 scenarios are
too few for numpy's per-call cost to pay off, and parameters.py loops over
markets in one compiled pass.

Scenario columns: 0 and 1 the resolution atoms (YES, NO), then `nodes` news-jump
nodes, then `nodes` diffusion nodes (Gauss-Hermite, ascending z).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from riskd.jit import maximum, minimum, njit

RESOLUTION, JUMP, DIFFUSION = 0, 1, 2
GROUP_NAMES = ("resolution", "jump", "diffusion")


@lru_cache(maxsize=8)
def gauss_hermite(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the standard normal (probabilists' rule), weights sum to 1."""
    z, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / w.sum()
    z.setflags(write=False)
    w.setflags(write=False)
    return z, w


@lru_cache(maxsize=8)
def groups(nodes: int) -> np.ndarray:
    """The group of each scenario column."""
    g = np.array([RESOLUTION] * 2 + [JUMP] * nodes + [DIFFUSION] * nodes, np.int64)
    g.setflags(write=False)
    return g


def resolution_probability(
    h: np.ndarray,
    tau: np.ndarray,
    h_min: float,
    scheduled: np.ndarray | None = None,
    early_rate: float = 0.0,
    early_share: float = 0.0,
) -> np.ndarray:
    """q, the probability that the decisive information arrives within h (section 4.1).

    Unscheduled (a deadline): it arrives uniformly over the remaining life, h / tau.
    Scheduled (the event has a date, and the freeze closes positions before it): the
    event itself strikes a position only once it lies within h; before that, only
    early decisive news can, at `early_rate` per second.
    h_min only guards the division: within h of the event q is 1 even when h < h_min
    (section 2: tau 0 is the riskiest state; property 6.3 needs q -> 1 as tau -> 0).
    Per market: `uniform_probability`, `dated_probability`.
    """
    h, tau = (np.ascontiguousarray(a, np.float64) for a in np.broadcast_arrays(h, tau))
    dated = (
        np.zeros(h.shape, np.bool_) if scheduled is None else np.broadcast_to(scheduled, h.shape)
    )
    dated = np.ascontiguousarray(dated, np.bool_)
    # Read only where dated.
    early = early_news(h, tau, early_rate, early_share) if dated.any() else h
    q = np.empty(h.shape)
    _probabilities(h.ravel(), tau.ravel(), h_min, dated.ravel(), early.ravel(), q.ravel())
    return q


def early_news(h: np.ndarray, tau: np.ndarray, rate: float, share: float) -> np.ndarray:
    """The probability of early decisive news within h, at `rate` plus `share` / tau per
    second (numpy's expm1, as every transcendental function outside the kernels)."""
    # tau 0 (or subnormal, overflowing): q is 1 (`dated_probability`).
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        hazard = rate + share / tau
        return -np.expm1(-hazard * h)


@njit
def _probabilities(h, tau, h_min, dated, early, q):  # type: ignore[no-untyped-def]
    for i in range(h.shape[0]):
        uniform = uniform_probability(h[i], tau[i], h_min)
        q[i] = dated_probability(h[i], tau[i], uniform, early[i]) if dated[i] else uniform


@njit
def uniform_probability(h: float, tau: float, h_min: float) -> float:
    """q of an unscheduled market: h over the remaining life."""
    return minimum(1.0, h / maximum(tau, minimum(h_min, h)))


@njit
def dated_probability(h: float, tau: float, uniform: float, early: float) -> float:
    """q of a scheduled market: 1 within h of the event, else the early news (never
    above the uniform hazard: a date can only make the news later)."""
    return 1.0 if tau <= h else minimum(early, uniform)


@njit
def expit(x: float) -> float:
    # exp(-logaddexp(0, -x)) is 1/(1+exp(-x)) without overflow at either end.
    return np.exp(-np.logaddexp(0.0, -x))


@njit(inline=True)
def fill(
    p: float,
    x: float,
    sigma: float,
    lam: float,
    J: float,
    h: float,
    q: float,
    z: np.ndarray,
    w: np.ndarray,
    p_h: np.ndarray,
    p_h_no: np.ndarray,
    prob: np.ndarray,
    prob_liquid: np.ndarray,
) -> None:
    """One market's scenarios (section 4: resolution event, news jump, diffusion).

    prob sums to 1; prob_liquid is the distribution given no resolution event inside
    h (resolution columns 0): the scenarios a liquidation can still act on."""
    n = z.shape[0]
    diff_scale = sigma * np.sqrt(h)
    # A jump is never narrower than the diffusion over the same horizon: then more
    # jump intensity always means more tail risk (property 4 holds by construction).
    jump_scale = max(J, diff_scale)
    p_h[0], p_h_no[0] = 1.0, 0.0
    p_h[1], p_h_no[1] = 0.0, 1.0
    for k in range(n):
        _node(x + jump_scale * z[k], 2 + k, p_h, p_h_no)
        _node(x + diff_scale * z[k], 2 + n + k, p_h, p_h_no)
    weigh(p, lam, h, q, w, prob, prob_liquid)


@njit(inline=True)
def weigh(
    p: float,
    lam: float,
    h: float,
    q: float,
    w: np.ndarray,
    prob: np.ndarray,
    prob_liquid: np.ndarray,
) -> None:
    """The probabilities of `fill`'s scenarios for a probability q of the resolution
    event within h (the prices do not depend on q)."""
    n = w.shape[0]
    p_jump_liquid = -np.expm1(-lam * h)
    p_jump = (1.0 - q) * p_jump_liquid
    p_diff = (1.0 - q) - p_jump
    prob[0], prob_liquid[0] = q * p, 0.0
    prob[1], prob_liquid[1] = q * (1.0 - p), 0.0
    for k in range(n):
        prob[2 + k], prob_liquid[2 + k] = p_jump * w[k], p_jump_liquid * w[k]
        prob[2 + n + k], prob_liquid[2 + n + k] = p_diff * w[k], (1.0 - p_jump_liquid) * w[k]


@njit(inline=True)
def _node(x_h: float, col: int, p_h: np.ndarray, p_h_no: np.ndarray) -> None:
    # YES and NO values from one exp of -|x_h|: each side's value is a quotient
    # without cancellation, exact in relative terms at both ends, so long NO at p is
    # long YES at 1 - p to rounding (property 6.2).
    e = np.exp(-abs(x_h))
    big, small = 1.0 / (1.0 + e), e / (1.0 + e)
    p_h[col], p_h_no[col] = (big, small) if x_h >= 0.0 else (small, big)


@njit(inline=True)
def worst_first(loss: np.ndarray, order: np.ndarray) -> None:
    """Scenario columns by descending loss, ties in column order (a stable sort).

    Insertion sort from the order the scenarios' structure predicts (each group is
    monotone in z), run only where rounding put neighbours out of that order."""
    n = (loss.shape[0] - 2) // 2
    # The prediction: the larger-loss resolution atom, the jump and diffusion nodes
    # merged by loss, the other atom.
    first, last = (1, 0) if loss[1] >= loss[0] else (0, 1)
    order[0] = first
    j, d, k = 0, 0, 1
    down = loss[2] >= loss[1 + n] if n > 0 else True  # losses fall with z: long YES
    # Whether a neighbour pair is out of order: the one thing the sort below acts on.
    prev, prev_col, moved = loss[first], first, False
    while j < n or d < n:
        jc = 2 + (j if down else n - 1 - j)
        dc = 2 + n + (d if down else n - 1 - d)
        if d >= n or (j < n and loss[jc] >= loss[dc]):
            col = jc
            j += 1
        else:
            col = dc
            d += 1
        order[k] = col
        k += 1
        moved = moved or prev < loss[col] or (prev == loss[col] and prev_col > col)
        prev, prev_col = loss[col], col
    order[k] = last
    moved = moved or prev < loss[last] or (prev == loss[last] and prev_col > last)
    if not moved:
        return
    for a in range(1, order.shape[0]):
        col = order[a]
        b = a - 1
        while b >= 0 and (
            loss[order[b]] < loss[col] or (loss[order[b]] == loss[col] and order[b] > col)
        ):
            order[b + 1] = order[b]
            b -= 1
        order[b + 1] = col


@njit(inline=True)
def tail_weights(prob: np.ndarray, order: np.ndarray, alpha: float, weights: np.ndarray) -> None:
    """Weight of each scenario in the worst (1 - alpha) of the distribution, summing to 1.

    Expected shortfall is sum(loss * weights); the atom on the boundary counts in
    part, so ES is exact for a discrete distribution."""
    tail = 1.0 - alpha
    weights[:] = 0.0
    cum = 0.0
    for col in order:
        cum += prob[col]
        before = cum - prob[col]
        if before >= tail:
            break
        weights[col] = min(max(tail - before, 0.0), prob[col]) / tail
