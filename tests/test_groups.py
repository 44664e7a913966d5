"""Markets that resolve together: the group stress, OI caps and OI-scaled margins
(riskd/model/groups.py, docs/model.md section 10), and the margin-call window.

"Ungrouped" has two meanings below. Markets without a group are groups of their own,
each with its own share of the fund: a linked pair is compared with that. A hedge
cannot beat that comparison (another market's loss never lowers a group's ES), so the
hedge is compared with the same two markets ungrouped at the same fund share: one
group of "independent" members, whose ES is the sum of theirs.

Tolerances: caps are solved to a relative 1e-12 in the ES; comparisons allow RTOL.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from riskd.config import ConfigError, InsuranceSettings, ModelSettings, Settings, load_settings
from riskd.model import groups, parameters
from riskd.model.estimator import EstimatorState
from riskd.model.parameters import LONG, SHORT, RiskInputs, Targets

CFG = ModelSettings()
RTOL = 1e-6
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def log_uniform(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(math.log10(lo), math.log10(hi)).map(lambda e: 10.0**e)


@st.composite
def market(draw: Any) -> dict[str, float]:
    return {
        "p": draw(st.floats(0.02, 0.98)),
        "tau": draw(log_uniform(3600.0, 90 * 86_400.0)),
        "h": draw(log_uniform(60.0, 86_400.0)),
        "sigma": draw(log_uniform(1e-5, 1e-2)),
        "lam": draw(log_uniform(1e-8, 1e-3)),
        "J": draw(log_uniform(0.5, 4.0)),
    }


def model(ms: list[dict[str, float]], cfg: ModelSettings = CFG) -> tuple[RiskInputs, Targets]:
    col = {k: np.array([m[k] for m in ms]) for k in ms[0]}
    n = len(ms)
    inp = RiskInputs(
        p=col["p"],
        x=np.log(col["p"] / (1.0 - col["p"])),
        tau=col["tau"],
        sigma=col["sigma"],
        lam=col["lam"],
        J=col["J"],
        gap=np.full(n, np.nan),
        h=col["h"],
        half_spread=np.zeros(n),
        tick=np.full(n, 0.01),
    )
    tg = parameters.compute(inp, cfg, np.full(n, 20.0), np.full(n, 0.05), np.full(n, 1e-5))
    return inp, tg


def risk(
    inp: RiskInputs,
    tg: Targets,
    oi: np.ndarray,
    names: list[str | None],
    relations: list[str],
    share_budget: float,
) -> groups.GroupRisk:
    index, sign, group_names = groups.group_index(names, relations)
    budget = np.full(len(group_names), share_budget)
    return groups.group_risk(inp, tg, oi, index, sign, budget, CFG.confidence, CFG.nodes)


def leq(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.all((a <= b * (1.0 + RTOL) + 1e-9) | np.isinf(b)))


lent = st.floats(0.0, 1e4)
budgets = log_uniform(1.0, 1e5)


# ---------------------------------------------------------------------------
# the joint scenarios keep each market's own distribution


@PROPS
@given(
    st.lists(market(), min_size=1, max_size=5),
    st.lists(st.sampled_from(["same", "opposite"]), min_size=5, max_size=5),
)
def test_each_market_keeps_its_own_distribution(
    ms: list[dict[str, float]], relations: list[str]
) -> None:
    inp, tg = model(ms)
    sign = np.array([groups.SIGN[r] for r in relations[: len(ms)]])[None, :]
    value_h, prob = groups.joint_scenarios(
        inp.p[None],
        inp.x[None],
        inp.sigma[None],
        inp.lam[None],
        inp.J[None],
        inp.h[None],
        tg.q[None],
        sign,
        CFG.nodes,
    )
    assert prob.sum() == pytest.approx(1.0, abs=1e-12)
    value = np.stack([inp.p, 1.0 - inp.p], axis=-1)
    es, _ = groups.expected_shortfall(
        value[None, :, :, None] - value_h, prob[:, None, None, :], CFG.confidence
    )
    np.testing.assert_allclose(es[0], tg.es, rtol=1e-9, atol=1e-12)
    # Given the resolution event, YES with probability p.
    yes = (value_h[0, :, LONG] == 1.0) * prob[0]
    np.testing.assert_allclose(yes.sum(axis=-1), tg.q * inp.p, rtol=1e-9, atol=1e-15)


def test_same_markets_lose_together_and_opposite_ones_apart() -> None:
    inp, tg = model(
        [{"p": 0.5, "tau": 86_400.0, "h": 3600.0, "sigma": 1e-4, "lam": 1e-6, "J": 1.0}] * 2
    )
    for relation, together in (("same", 0.5), ("opposite", 0.0)):
        sign = np.array([[groups.SAME, groups.SIGN[relation]]])
        value_h, prob = groups.joint_scenarios(
            inp.p[None],
            inp.x[None],
            inp.sigma[None],
            inp.lam[None],
            inp.J[None],
            inp.h[None],
            tg.q[None],
            sign,
            CFG.nodes,
        )
        both_no = (value_h[0, 0, LONG] == 0.0) & (value_h[0, 1, LONG] == 0.0)
        assert prob[0, both_no].sum() == pytest.approx(together * tg.q[0])


# ---------------------------------------------------------------------------
# caps


def pair_caps(ms: list[dict[str, float]], oi: np.ndarray, budget: float) -> dict[str, np.ndarray]:
    inp, tg = model(ms)
    return {
        "same": risk(inp, tg, oi, ["g", "g"], ["same", "same"], budget).oi_cap,
        "opposite": risk(inp, tg, oi, ["g", "g"], ["same", "opposite"], budget).oi_cap,
        "pooled": risk(inp, tg, oi, ["g", "g"], ["independent"] * 2, budget).oi_cap,
        "alone": risk(inp, tg, oi, [None, None], ["independent"] * 2, budget).oi_cap,
    }


@PROPS
@given(market(), market(), st.lists(lent, min_size=4, max_size=4), budgets)
def test_linked_same_caps_are_no_looser_than_ungrouped(
    a: dict[str, float], b: dict[str, float], oi: list[float], budget: float
) -> None:
    caps = pair_caps([a, b], np.reshape(oi, (2, 2)), budget)
    note(str(caps))
    assert leq(caps["same"], caps["alone"])


def test_linked_same_caps_are_tighter_than_ungrouped_in_a_typical_case() -> None:
    m = {"p": 0.6, "tau": 2 * 86_400.0, "h": 3600.0, "sigma": 2e-4, "lam": 1 / 2.6e6, "J": 1.0}
    oi = np.array([[1000.0, 0.0], [1000.0, 0.0]])
    caps = pair_caps([m, m], oi, 5000.0)
    assert np.all(np.isfinite(caps["same"][:, LONG]))
    assert np.all(caps["same"][:, LONG] < caps["alone"][:, LONG])
    # Both lose on NO, in the tail: the pair's ES is the sum, the cap the rest's share.
    assert caps["same"][0, LONG] == pytest.approx(caps["alone"][0, LONG] - 1000.0)
    assert np.all(caps["opposite"][:, LONG] > caps["same"][:, LONG])


@PROPS
@given(market(), market(), st.floats(0.0, 1e4), st.floats(0.0, 1e4), budgets)
def test_opposite_links_hedge(
    a: dict[str, float], b: dict[str, float], oi_a: float, oi_b: float, budget: float
) -> None:
    """Open interest on both long sides: one market's YES is the other's NO, so the
    lender's two loans lose in different outcomes."""
    caps = pair_caps([a, b], np.array([[oi_a, 0.0], [oi_b, 0.0]]), budget)
    note(str(caps))
    assert leq(caps["same"][:, LONG], caps["opposite"][:, LONG])
    assert leq(caps["pooled"], caps["opposite"])


@PROPS
@given(st.lists(market(), min_size=1, max_size=4), st.data(), budgets, log_uniform(1.001, 100.0))
def test_a_larger_fund_never_lowers_a_cap(
    ms: list[dict[str, float]], data: Any, budget: float, factor: float
) -> None:
    n = len(ms)
    oi = np.array(data.draw(st.lists(lent, min_size=2 * n, max_size=2 * n))).reshape(n, 2)
    names = data.draw(st.lists(st.sampled_from([None, "g", "h"]), min_size=n, max_size=n))
    relations = data.draw(st.lists(st.sampled_from(list(groups.SIGN)), min_size=n, max_size=n))
    inp, tg = model(ms)
    small = risk(inp, tg, oi, names, relations, budget)
    large = risk(inp, tg, oi, names, relations, budget * factor)
    assert leq(small.oi_cap, large.oi_cap)
    np.testing.assert_array_equal(small.es, large.es)


@PROPS
@given(st.lists(market(), min_size=1, max_size=4), st.data(), budgets)
def test_the_cap_is_the_largest_open_interest_within_the_share(
    ms: list[dict[str, float]], data: Any, budget: float
) -> None:
    n = len(ms)
    oi = np.array(data.draw(st.lists(lent, min_size=2 * n, max_size=2 * n))).reshape(n, 2)
    relations = data.draw(st.lists(st.sampled_from(list(groups.SIGN)), min_size=n, max_size=n))
    inp, tg = model(ms)
    caps = risk(inp, tg, oi, ["g"] * n, relations, budget).oi_cap
    for i in range(n):
        for side in (LONG, SHORT):
            cap = caps[i, side]
            if not 0.0 < cap < np.inf:
                continue
            at, above = oi.copy(), oi.copy()
            at[i, side], above[i, side] = cap, cap * (1.0 + 1e-6)
            assert risk(inp, tg, at, ["g"] * n, relations, budget).es[0] <= budget * (1.0 + 1e-9)
            assert risk(inp, tg, above, ["g"] * n, relations, budget).es[0] > budget


@PROPS
@given(st.lists(market(), min_size=1, max_size=4), st.data())
def test_group_es_is_monotone_in_open_interest(ms: list[dict[str, float]], data: Any) -> None:
    n = len(ms)
    oi = np.array(data.draw(st.lists(lent, min_size=2 * n, max_size=2 * n))).reshape(n, 2)
    more = oi + np.array(data.draw(st.lists(lent, min_size=2 * n, max_size=2 * n))).reshape(n, 2)
    relations = data.draw(st.lists(st.sampled_from(list(groups.SIGN)), min_size=n, max_size=n))
    inp, tg = model(ms)
    low = risk(inp, tg, oi, ["g"] * n, relations, 1.0).es
    high = risk(inp, tg, more, ["g"] * n, relations, 1.0).es
    assert np.all(low <= high * (1.0 + 1e-12) + 1e-12)


def test_a_market_without_a_model_gets_no_cap_and_counts_its_loans_lost() -> None:
    m = {"p": 0.6, "tau": 86_400.0, "h": 600.0, "sigma": 2e-4, "lam": 1e-6, "J": 1.0}
    inp, tg = model([m, {**m, "sigma": np.nan}])
    oi = np.array([[0.0, 0.0], [100.0, 0.0]])
    r = risk(inp, tg, oi, ["g", "g"], ["same", "same"], 1e6)
    assert np.all(r.oi_cap[1] == 0.0)
    assert r.es[0] == pytest.approx(100.0)


# ---------------------------------------------------------------------------
# margins


@PROPS
@given(market(), st.floats(0.0, 0.95), log_uniform(1.0, 1e5))
def test_open_interest_at_the_cap_raises_margins(
    m: dict[str, float], start: float, cap: float
) -> None:
    inp, tg = model([m])
    caps = np.full((1, 2), cap)
    value = np.array([[inp.p[0], 1.0 - inp.p[0]]])
    none, bound0 = groups.oi_margins(tg.initial_margin, inp.p, np.zeros((1, 2)), caps, start)
    full, bound1 = groups.oi_margins(tg.initial_margin, inp.p, caps, caps, start)
    np.testing.assert_array_equal(none, tg.initial_margin)
    np.testing.assert_allclose(full, value, rtol=1e-15)
    lent_side = tg.initial_margin < value
    assert np.all(full[lent_side] > none[lent_side])
    assert not bound0[0] and bound1[0] == bool(lent_side.any())
    # Smooth and monotone between.
    u = np.linspace(0.0, 1.2, 61)[:, None] * caps
    steps = [groups.oi_margins(tg.initial_margin, inp.p, k[None], caps, start)[0] for k in u]
    assert np.all(np.diff(np.array(steps), axis=0) >= 0.0)


def test_ramp_is_continuous_with_its_slope() -> None:
    u = np.linspace(0.0, 1.0, 100_001)
    r = groups.ramp(u, 0.5)
    assert r[0] == 0.0 and r[-1] == 1.0
    assert np.max(np.abs(np.diff(r))) < 4e-5  # slope at most 1.5 / (1 - start)
    assert np.max(np.abs(np.diff(r, 2))) < 1e-8  # no kink: O(du^2)
    np.testing.assert_array_equal(
        groups.oi_margins(
            np.array([[0.1, 0.1]]),
            np.array([0.5]),
            np.array([[1.0, 1.0]]),
            np.array([[np.inf, 0.0]]),
            0.5,
        )[0],
        [[0.1, 0.5]],
    )


# ---------------------------------------------------------------------------
# the margin-call window and the configuration


def horizon_targets(m: dict[str, float], window: float, gap: float) -> parameters.Targets:
    cfg = ModelSettings(margin_call_window_s=window)
    s = EstimatorState.empty(1, cfg)
    s.x[:] = math.log(m["p"] / (1.0 - m["p"]))
    s.t[:] = 0.0
    s.sigma2[:] = m["sigma"] ** 2
    s.lam[:] = m["lam"]
    s.lam_t[:] = 0.0
    s.J2[:] = m["J"] ** 2
    s.gap[:] = gap
    s.ticks[:] = 100
    inp = parameters.risk_inputs(s, 0.0, np.array([m["tau"]]), cfg)
    assert inp.h[0] == max(cfg.liquidation_horizon_s, cfg.k_liquidity * gap) + window
    return parameters.compute(inp, cfg, np.array([20.0]), np.array([0.05]), np.array([1e-5]))


@PROPS
@given(market(), log_uniform(1.0, 1e5), log_uniform(1.0, 1e5), log_uniform(1.0, 1e4))
def test_a_longer_margin_call_window_never_loosens(
    m: dict[str, float], short: float, extra: float, gap: float
) -> None:
    base, longer = horizon_targets(m, short, gap), horizon_targets(m, short + extra, gap)
    assert np.all(longer.max_leverage <= base.max_leverage * (1.0 + 1e-9))
    assert np.all(longer.initial_margin >= base.initial_margin * (1.0 - 1e-9))
    zero = horizon_targets(m, 0.0, gap)
    assert zero.reasons[0] == horizon_targets(m, extra, gap).reasons[0]  # not thin_market


def test_group_index_and_budgets() -> None:
    index, sign, names = groups.group_index(
        ["us", None, "us", "fed", None], ["same", "independent", "opposite", "same", "independent"]
    )
    assert names == ["us", None, "fed", None]
    assert index.tolist() == [0, 1, 0, 2, 3]
    assert sign.tolist() == [1, 0, -1, 1, 0]
    cfg = InsuranceSettings(
        group_share=0.1, group_shares={"us": 0.5}, socialisation_threshold=200.0
    )
    assert groups.budgets(names, 1200.0, cfg).tolist() == [500.0, 100.0, 100.0, 100.0]
    assert groups.budgets(names, 100.0, cfg).tolist() == [0.0] * 4


def test_insurance_is_off_by_default_and_checked(tmp_path: Any) -> None:
    assert Settings().insurance is None and Settings().model.margin_call_window_s == 0.0
    path = tmp_path / "c.toml"
    path.write_text(
        '[insurance]\nfund_source = "fixed"\nfund_balance = 1e6\n'
        'group_shares = { "us-midterms-2022" = 0.4 }\n'
        "[exchange]\nmax_age_s = 30\n[model]\nmargin_call_window_s = 900\n"
    )
    s = load_settings(path)
    assert s.insurance is not None and s.insurance.share("us-midterms-2022") == 0.4
    assert s.exchange.max_age_s == 30.0 and s.model.margin_call_window_s == 900.0
    for body, key in (
        ('fund_source = "fixed"', "insurance.fund_balance"),
        ("fund_balance = 5", "insurance.fund_balance"),
        ("group_shares = { g = 1.5 }", "insurance.group_shares"),
        (
            'fund_source = "fixed"\nfund_balance = 5\nsocialisation_threshold = 9',
            "insurance.fund_balance",
        ),
    ):
        path.write_text(f"[insurance]\n{body}\n")
        with pytest.raises(ConfigError, match=key):
            load_settings(path)
