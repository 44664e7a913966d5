"""Scenario distribution of the price after the liquidation horizon (spec section 4).

For every market at once: an array of prices p_h (markets x scenarios) with
probabilities, in the spirit of SPAN / Prisma scenario arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from riskd.model.estimator import expit

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


@dataclass(frozen=True)
class Scenarios:
    p_h: np.ndarray  # (markets, S) price after h
    p_h_no: np.ndarray  # (markets, S) 1 - p_h, computed without cancellation near p_h = 1
    prob: np.ndarray  # (markets, S) probabilities, rows sum to 1
    group: np.ndarray  # (S,) RESOLUTION | JUMP | DIFFUSION
    # (markets, S) probabilities given no resolution event inside h (resolution
    # columns 0, rows sum to 1): the scenarios a liquidation can still act on.
    prob_liquid: np.ndarray


def resolution_probability(h: np.ndarray, tau: np.ndarray, h_min: float) -> np.ndarray:
    """q: decisive information arrives uniformly over the remaining life (section 4.1).

    h_min only guards the division: within h of the event q is 1 even when h < h_min
    (section 2: tau 0 is the riskiest state; property 6.3 needs q -> 1 as tau -> 0).
    """
    return np.minimum(1.0, h / np.maximum(tau, np.minimum(h_min, h)))


def build(
    p: np.ndarray,
    x: np.ndarray,
    sigma: np.ndarray,
    lam: np.ndarray,
    J: np.ndarray,
    h: np.ndarray,
    q: np.ndarray,
    nodes: int,
) -> Scenarios:
    """The three groups of section 4: resolution event, news jump, diffusion."""
    z, w = gauss_hermite(nodes)
    diff_scale = sigma * np.sqrt(h)
    # A jump is never narrower than the diffusion over the same horizon: then more
    # jump intensity always means more tail risk (property 4 holds by construction).
    jump_scale = np.maximum(J, diff_scale)
    p_jump_liquid = -np.expm1(-lam * h)
    p_jump = (1.0 - q) * p_jump_liquid
    p_diff = (1.0 - q) - p_jump

    m = p.shape[0]
    x_h = np.empty((m, 2 * nodes))
    x_h[:, :nodes] = x[:, None] + jump_scale[:, None] * z
    x_h[:, nodes:] = x[:, None] + diff_scale[:, None] * z
    p_h = np.empty((m, 2 + 2 * nodes))
    p_h_no = np.empty_like(p_h)
    prob = np.empty_like(p_h)
    p_h[:, 0], p_h_no[:, 0] = 1.0, 0.0
    p_h[:, 1], p_h_no[:, 1] = 0.0, 1.0
    prob[:, 0] = q * p  # the price is a martingale: YES with probability p
    prob[:, 1] = q * (1.0 - p)
    # NO's value as expit(-x_h), not 1 - p_h: exact in relative terms at both ends,
    # so long NO at p is long YES at 1 - p to rounding (property 6.2).
    p_h[:, 2:] = expit(x_h)
    p_h_no[:, 2:] = expit(-x_h)
    prob[:, 2 : 2 + nodes] = p_jump[:, None] * w
    prob[:, 2 + nodes :] = p_diff[:, None] * w
    group = np.array([RESOLUTION] * 2 + [JUMP] * nodes + [DIFFUSION] * nodes)
    prob_liquid = np.zeros_like(prob)
    prob_liquid[:, 2 : 2 + nodes] = p_jump_liquid[:, None] * w
    prob_liquid[:, 2 + nodes :] = (1.0 - p_jump_liquid)[:, None] * w
    return Scenarios(
        p_h=p_h, p_h_no=p_h_no, prob=prob, group=group, prob_liquid=prob_liquid
    )


def tail_weights(loss: np.ndarray, prob: np.ndarray, alpha: float) -> np.ndarray:
    """Weight of each scenario in the worst (1 - alpha) of the distribution, summing to 1.

    Expected shortfall is sum(loss * weights); the atom on the boundary counts in
    part, so ES is exact for a discrete distribution.
    """
    tail = 1.0 - alpha
    order = np.argsort(-loss, axis=1, kind="stable")
    p_sorted = np.take_along_axis(prob, order, axis=1)
    before = np.cumsum(p_sorted, axis=1) - p_sorted
    take_sorted = np.clip(tail - before, 0.0, p_sorted) / tail
    weights = np.empty_like(take_sorted)
    np.put_along_axis(weights, order, take_sorted, axis=1)
    return weights
