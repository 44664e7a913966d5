"""Markets that resolve together: the group stress, open-interest caps and OI-scaled
margins (docs/model.md section 10; spec model.md section 4, the open-interest cap).

A lender does not lose per market: it loses when every market of one election night
resolves at once. Markets of a group whose YES moves with the group's event ("same")
or against it ("opposite") share one scenario array: the resolution-information and
news-jump scenarios hit them together, in their directions. Each market keeps its own
distribution (section 4) exactly; only the coupling is new. A market without a group,
and a group's "independent" member, is a block of its own, and a group's expected
shortfall is the sum of its blocks' (an upper bound: ES is subadditive).

Pure numpy: no I/O, no clock. Side 0 is long YES (value p), side 1 long NO.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from riskd.model import scenarios
from riskd.model.parameters import RiskInputs, Targets

if TYPE_CHECKING:
    from riskd.config import InsuranceSettings

SAME, OPPOSITE, INDEPENDENT = 1, -1, 0
SIGN = {"same": SAME, "opposite": OPPOSITE, "independent": INDEPENDENT}
OI_CAP_BINDING = "oi_cap_binding"  # reason code where the cap raises a margin
# The cap keeps the group's ES within its allowance to this relative tolerance.
CAP_RTOL = 1e-12
NEWTON_STEPS = 60


@dataclass(frozen=True)
class GroupRisk:
    """Per group (G,) and per market and side (n, 2)."""

    es: np.ndarray  # expected shortfall of the group's lender loss at today's OI
    budget: np.ndarray  # the share of the spendable fund allotted to the group
    oi_cap: np.ndarray  # largest lent notional per side; inf where nothing is lent


def group_index(
    groups: list[str | None], relations: list[str]
) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """(group of each market, its sign, the groups' names): a market without a group
    is a group of its own (name None), independent of every other."""
    names: list[str | None] = []
    seen: dict[str, int] = {}
    index = np.empty(len(groups), np.int64)
    sign = np.zeros(len(groups), np.int64)
    for i, (group, relation) in enumerate(zip(groups, relations, strict=True)):
        if group is None:
            index[i] = len(names)
            names.append(None)
            continue
        if group not in seen:
            seen[group] = len(names)
            names.append(group)
        index[i] = seen[group]
        sign[i] = SIGN[relation]
    return index, sign, names


def budgets(names: list[str | None], fund_balance: float, cfg: InsuranceSettings) -> np.ndarray:
    """Each group's share of the first-loss tier: the fund above the balance at which
    the exchange socialises losses instead."""
    spendable = max(fund_balance - cfg.socialisation_threshold, 0.0)
    return np.array([cfg.share(name) * spendable for name in names], np.float64)


def joint_scenarios(
    p: np.ndarray,
    x: np.ndarray,
    sigma: np.ndarray,
    lam: np.ndarray,
    J: np.ndarray,
    h: np.ndarray,
    q: np.ndarray,
    sign: np.ndarray,
    nodes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Joint prices after h of B blocks of m markets each (inputs (B, m)).

    Returns (value_h (B, m, 2, S), prob (B, S)). Two uniforms drive a block. The event
    clock U: market i meets the resolution information when U < q_i, a news jump when
    U < q_i + (1 - q_i)(1 - exp(-lam_i h_i)), else it diffuses; so whatever reaches one
    market reaches every market whose chance is larger. The direction Y: low Y is the
    event's YES; a "same" market reads Y, an "opposite" one 1 - Y, and resolves YES when
    that is below p_i, or takes the Gauss-Hermite node (highest z first) whose
    cumulative weight holds it. Columns are the cells between all the cut points, so
    each market's own distribution (section 4) is exact."""
    z, w = scenarios.gauss_hermite(nodes)
    b, m = p.shape
    diff_scale = sigma * np.sqrt(h)
    jump_scale = np.maximum(J, diff_scale)  # as scenarios.fill
    p_jump = (1.0 - q) * -np.expm1(-lam * h)
    u_cut = np.sort(
        np.concatenate([np.zeros((b, 1)), q, np.minimum(q + p_jump, 1.0), np.ones((b, 1))], axis=1),
        axis=1,
    )
    cum = np.cumsum(w)[:-1]
    own = np.where(sign == OPPOSITE, 1.0 - p, p)
    y_cut = np.sort(
        np.concatenate(
            [
                np.zeros((b, 1)),
                np.broadcast_to(cum, (b, cum.size)),
                np.broadcast_to(1.0 - cum, (b, cum.size)),
                own,
                np.ones((b, 1)),
            ],
            axis=1,
        ),
        axis=1,
    )
    u_mid = 0.5 * (u_cut[:, :-1] + u_cut[:, 1:])[:, None, :, None]  # (B, 1, Su, 1)
    y_mid = 0.5 * (y_cut[:, :-1] + y_cut[:, 1:])[:, None, None, :]  # (B, 1, 1, Sy)
    y = np.where((sign == OPPOSITE)[:, :, None, None], 1.0 - y_mid, y_mid)
    node = z[::-1][np.minimum(np.searchsorted(cum, y, side="right"), nodes - 1)]
    col = (slice(None), slice(None), None, None)
    resolved = u_mid < q[col]
    jumped = ~resolved & (u_mid < (q + p_jump)[col])
    x_h = x[col] + np.where(jumped, jump_scale[col], diff_scale[col]) * node
    yes = (y < p[col]).astype(np.float64)
    long_h = np.where(resolved, yes, _expit(x_h))
    short_h = np.where(resolved, 1.0 - yes, _expit(-x_h))
    s = long_h.shape[2] * long_h.shape[3]
    value_h = np.stack([long_h.reshape(b, m, s), short_h.reshape(b, m, s)], axis=2)
    prob = np.diff(u_cut, axis=1)[:, :, None] * np.diff(y_cut, axis=1)[:, None, :]
    return value_h, prob.reshape(b, s)


def _expit(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) without overflow at either end."""
    return np.exp(-np.logaddexp(0.0, -x))


def loss_per_unit_lent(
    value: np.ndarray,
    value_h: np.ndarray,
    margin: np.ndarray,
    fee_rate_hourly: np.ndarray,
    h: np.ndarray,
) -> np.ndarray:
    """The lender's loss per unit lent, per scenario ((..., 2) inputs, (..., 2, S) out).

    Lent per share is the debt d = value - margin; the lender loses what the side's
    value after h falls short of it, less the fee the position pays over h:
    max(0, 1 - value_h / d - fee h / 3600). Only the position's own fee offsets its
    loss: another position's fee is the lenders' premium for that position's risk, and
    counting it would let more open interest look safer. Nothing lent (d <= 0): 0. An
    input that is not finite (model_error): everything lent is lost."""
    debt = value - margin
    fee = fee_rate_hourly * (h[..., None] / 3600.0)
    lent = debt > 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        loss = 1.0 - value_h / np.where(lent, debt, 1.0)[..., None] - fee[..., None]
    loss = np.where(lent[..., None], np.maximum(loss, 0.0), 0.0)
    bad = ~np.isfinite(debt + fee)[..., None] | ~np.isfinite(value_h)
    return np.where(bad, 1.0, loss)


def expected_shortfall(
    loss: np.ndarray, prob: np.ndarray, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """ES_alpha over the last axis and its slope: the tail weights (summing to 1) of
    each scenario, the boundary atom in part, so ES is exact for a discrete
    distribution and sum(weights * dloss) is a subgradient. loss (..., S), prob
    broadcastable to it."""
    prob = np.broadcast_to(prob, loss.shape)
    order = np.argsort(-loss, axis=-1, kind="stable")
    p_sorted = np.take_along_axis(prob, order, axis=-1)
    tail = 1.0 - alpha
    before = np.cumsum(p_sorted, axis=-1) - p_sorted
    w_sorted = np.clip(tail - before, 0.0, p_sorted) / tail
    weights = np.empty_like(w_sorted)
    np.put_along_axis(weights, order, w_sorted, axis=-1)
    return (loss * weights).sum(axis=-1), weights


def solve_caps(
    rest: np.ndarray, unit: np.ndarray, prob: np.ndarray, allowance: np.ndarray, alpha: float
) -> np.ndarray:
    """The largest D >= 0 with ES(rest + D unit) <= allowance, per row (..., S).

    ES(rest + D unit) is convex, piecewise linear and non-decreasing in D (unit >= 0):
    Newton's method from the right (from allowance / ES(unit), where the ES is at
    least the allowance) never overshoots the root and ends on the root's linear
    piece; rows it has not settled are bisected. 0 where the rest alone exceeds the
    allowance; inf where unit is 0 everywhere."""
    f0, _ = expected_shortfall(rest, prob, alpha)
    per_unit, _ = expected_shortfall(unit, prob, alpha)
    target = np.broadcast_to(allowance, f0.shape)
    live = (f0 <= target) & (per_unit > 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(live, target / np.where(live, per_unit, 1.0), 0.0)
    for _ in range(NEWTON_STEPS):
        es, weights = expected_shortfall(rest + d[..., None] * unit, prob, alpha)
        over = live & (es > target * (1.0 + CAP_RTOL))
        if not over.any():
            break
        slope = (weights * unit).sum(axis=-1)
        # A flat tangent above the allowance cannot happen (f(0) <= allowance); to
        # rounding it falls back to 0, which is within it.
        with np.errstate(divide="ignore", invalid="ignore"):
            step = np.where(slope > 0.0, d - (es - target) / slope, 0.0)
        d = np.where(over, np.maximum(step, 0.0), d)
    else:
        d = _bisect(rest, unit, prob, target, alpha, live, d)
    # A side that adds no loss at any size (nothing lent at its margin) has no cap.
    return np.where(per_unit <= 0.0, np.inf, np.where(live, d, 0.0))


def _bisect(
    rest: np.ndarray,
    unit: np.ndarray,
    prob: np.ndarray,
    target: np.ndarray,
    alpha: float,
    live: np.ndarray,
    hi: np.ndarray,
) -> np.ndarray:
    lo = np.zeros_like(hi)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        es, _ = expected_shortfall(rest + mid[..., None] * unit, prob, alpha)
        ok = es <= target * (1.0 + CAP_RTOL)
        lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
    return np.where(live, lo, hi)


def group_risk(
    inp: RiskInputs,
    targets: Targets,
    oi: np.ndarray,
    index: np.ndarray,
    sign: np.ndarray,
    budget: np.ndarray,
    confidence: float,
    nodes: int,
) -> GroupRisk:
    """Section 10: each group's ES of lender loss at today's open interest `oi` (lent
    notional per market and side, finite and >= 0) and each side's cap: the largest lent
    notional that keeps its group's ES within `budget`, today's OI everywhere else.

    The margins and fees are the targets'; the resolution hazard is the margins' (q),
    the tail measure that holds whenever the information comes. A market without
    finite inputs (model_error) counts everything lent on it as lost, and its cap is 0."""
    n = inp.p.shape[0]
    es_group = np.zeros(budget.shape[0])
    cap = np.zeros((n, 2))
    blocks = _blocks(index, sign)
    parts = [_block_loss(inp, targets, oi, members, sign, nodes) for members in blocks]
    es_blocks = []
    for members, (unit, prob) in zip(blocks, parts, strict=True):
        lent = oi[members].reshape(unit.shape[:2])
        es, _ = expected_shortfall((lent[..., None] * unit).sum(axis=1), prob, confidence)
        es_blocks.append(es)
        np.add.at(es_group, index[members[:, 0]], es)
    for members, (unit, prob), es in zip(blocks, parts, es_blocks, strict=True):
        lent = oi[members].reshape(unit.shape[:2])[..., None] * unit
        rest = np.maximum(lent.sum(axis=1, keepdims=True) - lent, 0.0)
        group = index[members[:, 0]]
        allowance = budget[group] - es_group[group] + es
        caps = solve_caps(rest, unit, prob[:, None, :], allowance[:, None], confidence)
        cap[members] = caps.reshape(members.shape + (2,))
    finite = np.isfinite(inp.p + inp.x + inp.sigma + inp.lam + inp.J + inp.h + targets.q)
    cap[~finite] = 0.0
    return GroupRisk(es=es_group, budget=budget, oi_cap=cap)


def _blocks(index: np.ndarray, sign: np.ndarray) -> list[np.ndarray]:
    """Member arrays (B, m): every market alone in one batch of blocks of one, and one
    block per group with two or more linked ("same" or "opposite") markets."""
    alone = sign == INDEPENDENT
    linked = []
    for g in np.unique(index[~alone]):
        members = np.flatnonzero((index == g) & ~alone)
        if members.size == 1:
            alone[members] = True
        else:
            linked.append(members[None, :])
    singles = np.flatnonzero(alone)[:, None]
    return ([singles] if singles.size else []) + linked


def _block_loss(
    inp: RiskInputs,
    targets: Targets,
    oi: np.ndarray,
    members: np.ndarray,
    sign: np.ndarray,
    nodes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(loss per unit lent (B, 2m, S), prob (B, S)) of a batch of blocks, the columns
    without any loss merged into one (exact for the ES: equal losses)."""
    with np.errstate(invalid="ignore"):  # a market without a model: nan, lost below
        value_h, prob = joint_scenarios(
            inp.p[members],
            inp.x[members],
            inp.sigma[members],
            inp.lam[members],
            inp.J[members],
            inp.h[members],
            targets.q[members],
            sign[members],
            nodes,
        )
    value = np.stack([inp.p, 1.0 - inp.p], axis=-1)[members]
    unit = loss_per_unit_lent(
        value,
        value_h,
        targets.initial_margin[members],
        targets.fee_rate_hourly[members],
        inp.h[members],
    )
    b, m = members.shape
    unit = unit.reshape(b, 2 * m, -1)
    keep = (unit > 0.0).any(axis=(0, 1)) & (prob > 0.0).any(axis=0)
    quiet = prob[:, ~keep].sum(axis=1, keepdims=True)
    unit = np.concatenate([unit[..., keep], np.zeros((b, 2 * m, 1))], axis=-1)
    return unit, np.concatenate([prob[:, keep], quiet], axis=1)


def ramp(u: np.ndarray, start: float) -> np.ndarray:
    """0 up to `start`, 1 from 1 on, smoothstep between (3t^2 - 2t^3: continuous with
    its slope, so the margin has no kink for a trader to sit at)."""
    t = np.clip((u - start) / (1.0 - start), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def oi_margins(
    initial_margin: np.ndarray, p: np.ndarray, oi: np.ndarray, cap: np.ndarray, ramp_start: float
) -> tuple[np.ndarray, np.ndarray]:
    """Initial margins (n, 2) raised as open interest nears its cap, and the markets
    where the cap raised one (reason `oi_cap_binding`).

    margin = m + (value - m) ramp(oi / cap): the model's margin up to ramp_start of the
    cap, the side's value (1x: nothing more lent) at the cap and beyond. A cap of 0 (or
    unknown, nan) is reached at any open interest; an infinite one never."""
    value = np.stack([p, 1.0 - p], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        used = np.where(cap > 0.0, oi / np.where(cap > 0.0, cap, 1.0), 1.0)
    lift = ramp(np.where(np.isinf(cap), 0.0, used), ramp_start)
    margin = initial_margin + (value - initial_margin) * lift
    return margin, np.asarray((margin > initial_margin).any(axis=1))
