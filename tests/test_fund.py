"""The insurance fund in the backtest: riskd's OI caps against the alternatives' rules
on the midterms as one group (riskd/backtest/fund.py, docs/backtests.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from riskd.backtest import runner
from riskd.backtest.fund import STATED_FUND, Fund, account, night
from riskd.backtest.simulate import LossLog, Simulation
from riskd.config import ConfigError, InsuranceSettings, Settings, load_settings
from riskd.markets import load_markets

ROOT = Path(__file__).resolve().parent.parent
MIDTERMS = ROOT / "data/tapes/polymarket_midterms_2022"
FED = ROOT / "data/tapes/fed_dec2025"
FIGURES = ("bad_debt", "paid", "socialised", "beyond_fund", "losses")


@pytest.fixture(scope="module")
def config() -> Settings:
    return load_settings(ROOT / "config/riskd.toml")


@pytest.fixture(scope="module")
def midterms(config: Settings) -> tuple[list[runner.TapeResult], Simulation]:
    results, sim, _ = runner.run(MIDTERMS, config, settle=True, fund=Fund.of(config, STATED_FUND))
    return results, sim


def _log(t: list[float], market: list[int], amount: list[float]) -> LossLog:
    log = LossLog.empty(len(t))
    log.t[:], log.market[:], log.amount[:] = t, market, amount
    log.filled[0] = len(t)
    return log


def test_the_midterms_are_one_group_related_to_a_republican_wave() -> None:
    markets = load_markets(MIDTERMS / "markets.json")
    assert {m.group for m in markets.values()} == {"us-midterms-2022"}
    for m in markets.values():
        if m.title.endswith(": Republican"):
            assert m.relation == "same", m.id
        elif m.title.endswith((": Democrat", ": Democratic")):
            assert m.relation == "opposite", m.id
    assert markets["pm22-republican-house-and-democratic-senate"].relation == "independent"


def test_under_riskd_the_stated_fund_is_never_exhausted(
    midterms: tuple[list[runner.TapeResult], Simulation],
) -> None:
    _, sim = midterms
    assert sim.funds is not None
    ours = sim.funds["riskd"].as_dict()["total"]
    assert ours["socialised"] == 0.0 and ours["beyond_fund"] == 0.0
    assert ours["exhausted_nights"] == [] and ours["nights_over_fund"] == []
    assert ours["min_balance"] > ours["socialisation_threshold"]
    # Not vacuous: the caps acted, on openings traders would have made.
    assert ours["caps"]["reduced"] + ours["caps"]["refused"] > 0


def test_the_alternatives_exhaust_it_and_say_how_much_was_socialised(
    midterms: tuple[list[runner.TapeResult], Simulation],
) -> None:
    results, sim = midterms
    assert sim.funds is not None
    totals = runner.totals(results)
    for name in ("static_20x", "oi_scaled"):
        d = sim.funds[name].as_dict()["total"]
        assert d["first_exhausted"] is not None and d["first_exhausted"] < "2022-11-08"
        assert "2022-11-08" in d["nights_over_fund"]  # election night alone spends it
        assert d["paid"] == pytest.approx(STATED_FUND)
        assert d["socialised"] == pytest.approx(d["bad_debt"] - STATED_FUND, abs=1e-5)
        # The fund sees exactly the bad debt the tallies count.
        assert d["bad_debt"] == pytest.approx(totals[name].bad_debt, rel=1e-9)
    assert sim.funds["static_1x"].as_dict()["total"]["losses"] == 0


def test_per_group_accounting_sums_to_the_totals(
    midterms: tuple[list[runner.TapeResult], Simulation], config: Settings
) -> None:
    _, fed, _ = runner.run(FED, config, settle=True, fund=Fund.of(config, 10.0))
    for sim, groups in (
        (midterms[1], {"us-midterms-2022"}),
        (fed, {"fed-dec2025-nochange-poly", "fed-dec2025-nochange-kalshi"}),
    ):
        assert sim.funds is not None
        for name, report in sim.funds.items():
            d = report.as_dict()
            assert set(d["groups"]) == groups
            for key in FIGURES:
                parts = sum(g[key] for g in d["groups"].values())
                assert parts == pytest.approx(d["total"][key], abs=1e-5), (name, key)
                nights = sum(n[key] for n in d["total"]["nights"].values())
                assert nights == pytest.approx(d["total"][key], abs=1e-5), (name, key)


def test_a_fund_that_never_binds_changes_no_figure(config: Settings) -> None:
    """The pass paused and resumed at every cap evaluation, the caps never binding:
    every policy's figures are those without a fund."""
    plain, _, _ = runner.run(FED, config, settle=True)
    funded, sim, _ = runner.run(FED, config, settle=True, fund=Fund.of(config, 1e12))
    assert sim.funds is not None and sim.funds["riskd"].caps is not None
    assert sim.funds["riskd"].caps["evaluations"] > 0
    assert sim.funds["riskd"].caps["reduced"] == sim.funds["riskd"].caps["refused"] == 0
    for a, b in zip(plain, funded, strict=True):
        assert {k: v.as_dict() for k, v in a.tallies.items()} == {
            k: v.as_dict() for k, v in b.tallies.items()
        }


def _fund(balance: float, threshold: float = 0.0) -> Fund:
    return Fund(
        balance=balance,
        insurance=InsuranceSettings(
            fund_source="fixed", fund_balance=balance, socialisation_threshold=threshold
        ),
    )


@settings(max_examples=200, deadline=None)
@given(
    losses=st.lists(
        st.tuples(st.floats(0.0, 30 * 86_400.0), st.integers(0, 2), st.floats(1e-6, 50.0)),
        max_size=40,
    ),
    small=st.floats(0.5, 100.0),
    more=st.floats(0.0, 100.0),
    threshold=st.floats(0.0, 0.4),
)
def test_a_larger_fund_never_exhausts_earlier(
    losses: list[tuple[float, int, float]], small: float, more: float, threshold: float
) -> None:
    """The same losses (the alternatives' do not depend on the fund) through a fund and
    a larger one with the same threshold."""
    log = _log([x[0] for x in losses], [x[1] for x in losses], [x[2] for x in losses])
    names = ["a", "a", "b"]
    lo = account(log, names, _fund(small, threshold * small))
    hi = account(log, names, _fund(small + more, threshold * small))
    assert set(hi.exhausted_nights()) <= set(lo.exhausted_nights())
    assert set(hi.nights_over_fund()) <= set(lo.nights_over_fund())
    assert hi.total.socialised <= lo.total.socialised + 1e-9
    assert hi.total.beyond_fund <= lo.total.beyond_fund + 1e-9
    assert hi.min_balance >= lo.min_balance - 1e-9


def test_the_threshold_socialises_what_the_fund_above_it_cannot_pay(config: Settings) -> None:
    data = config.model_dump()
    data["insurance"] = {"socialisation_threshold": 4.0}
    cfg = Settings.model_validate(data)
    day = 86_400.0
    log = _log([0.0, day, 2 * day], [0, 1, 0], [3.0, 5.0, 1.0])
    report = account(log, ["x", "y"], Fund.of(cfg, 10.0))
    assert report.total.paid == pytest.approx(6.0)
    assert report.total.socialised == pytest.approx(3.0)
    assert report.total.beyond_fund == pytest.approx(0.0)  # 9 of 10 lost in all
    assert report.min_balance == pytest.approx(4.0)
    assert report.groups["y"].socialised == pytest.approx(2.0)
    assert len(report.exhausted_nights()) == 2 and len(report.exhausted_nights("x")) == 1
    with pytest.raises(ConfigError, match="socialisation_threshold"):
        Fund.of(cfg, 4.0)


def test_a_night_runs_from_noon_utc() -> None:
    def at(iso: str) -> float:
        return datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp()

    assert night(at("2022-11-09T03:00:00")) == "2022-11-08"  # election night
    assert night(at("2022-11-08T12:00:00")) == "2022-11-08"
    assert night(at("2022-11-08T11:59:59")) == "2022-11-07"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "riskd.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_fund_block_per_group_and_policy() -> None:
    out = _cli(
        "backtest",
        str(FED / "fed_nochange.csv"),
        "--json",
        "--insurance-fund",
        "5",
        "--group-share",
        "0.2",
    )
    assert out.returncode == 0, out.stderr
    fund = json.loads(out.stdout)["fund"]
    assert set(fund) == {"riskd", "static_20x", "static_1x", "oi_scaled", "d8x_entropy"}
    for report in fund.values():
        assert report["total"]["start"] == 5.0
        assert set(report["groups"]) == {"fed-dec2025-nochange-poly", "fed-dec2025-nochange-kalshi"}
    assert fund["static_20x"]["total"]["socialised"] > 0
    text = _cli("backtest", str(FED / "fed_nochange.csv"), "--insurance-fund", "5")
    assert text.returncode == 0 and "insurance fund 5" in text.stdout
    bad = _cli("backtest", str(FED / "fed_nochange.csv"), "--group-share", "0.2")
    assert bad.returncode == 2 and "--insurance-fund" in bad.stderr
