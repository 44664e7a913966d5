"""`riskd frontier`: the sweeps, the trader cohort, the dominance check, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from riskd.backtest import frontier
from riskd.backtest.frontier import Figures, Point
from riskd.backtest.simulate import Traders
from riskd.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
FED = ROOT / "data/tapes/fed_dec2025"


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(ROOT / "config/riskd.toml")


@pytest.fixture(scope="module")
def fed(settings: Settings) -> list[Point]:
    """The alternatives' whole sweeps and a riskd confidence line on the Fed tape."""
    tapes = frontier.load_set(FED)
    points = [(f, s) for f, s in frontier.grid() if f != "riskd"]
    points += [
        ("riskd", {"confidence": c, "k_liquidity": 3.0, "fee_loading": 0.4})
        for c in (0.95, 0.975, 0.99, 0.995)
    ]
    return frontier.sweep(tapes, settings, points)


def _line(
    points: list[Point], family: str, knob: str, traders: str = "max"
) -> list[tuple[float, Figures]]:
    return sorted(
        ((p.setting[knob], p.figures[traders]) for p in points if p.family == family),
        key=lambda kv: kv[0],
    )


def test_static_offers_more_leverage_as_its_knob_rises(fed: list[Point]) -> None:
    line = _line(fed, "static", "leverage")
    assert [k for k, _ in line] == list(frontier.STATIC_LEVERAGE)
    lev = [f.mean_leverage for _, f in line]
    assert lev == pytest.approx(list(frontier.STATIC_LEVERAGE))
    # Above 1x the Fed tape's moves cost the lenders more at every step up.
    bad = [f.bad_debt for _, f in line]
    assert bad[0] == 0.0 and all(b < c for b, c in zip(bad, bad[1:], strict=False))


def test_margin_knobs_lower_leverage_as_they_rise(fed: list[Point]) -> None:
    """More margin, less leverage: D8X's scale on its rates, riskd's confidence (with
    the max traders the tier's open interest is the same at every base margin above 1x)."""
    for family, knob in (("d8x_entropy", "scale"), ("riskd", "confidence")):
        lev = [f.mean_leverage for _, f in _line(fed, family, knob)]
        assert all(a > b for a, b in zip(lev, lev[1:], strict=False)), (family, lev)
    oi = [f.mean_leverage for _, f in _line(fed, "oi_scaled", "base_imf", "cohort")]
    assert all(a >= b for a, b in zip(oi, oi[1:], strict=False)) and oi[-1] == 1.0


def test_the_cohort_borrows_less_than_traders_at_the_max(fed: list[Point]) -> None:
    for p in fed:
        if p.family in ("static", "oi_scaled") and p.figures["max"].mean_leverage > 1.0:
            assert p.figures["cohort"].borrowed_hours < p.figures["max"].borrowed_hours, p.label
    total = {t: sum(p.figures[t].borrowed_hours for p in fed) for t in frontier.TRADERS}
    assert total["cohort"] < 0.7 * total["max"]


def test_the_cohort_is_deterministic_and_its_draws_are_per_market() -> None:
    ids = ["a", "b", "a", "c", "b", "a"]
    one, two = Traders.cohort(ids, 3), Traders.cohort(ids, 3)
    assert np.array_equal(one.frac, two.frac) and np.array_equal(one.size, two.size)
    assert np.all((one.frac >= 0.0) & (one.frac <= 1.0)) and np.all(one.size > 0.0)
    # Market a's rows draw the same with other markets around them, not with another seed.
    alone = Traders.cohort(["a", "a", "a"], 3)
    assert np.array_equal(alone.frac, one.frac[[0, 2, 5]])
    assert not np.array_equal(Traders.cohort(ids, 4).frac, one.frac)
    # The collateral's mean is 1, as at the max: on many draws.
    many = Traders.cohort([f"m{k}" for k in range(20_000)], 0)
    assert many.size.mean() == pytest.approx(1.0, abs=0.03)
    assert many.frac.mean() == pytest.approx(0.5, abs=0.01)


def test_a_sweep_is_deterministic(settings: Settings) -> None:
    tapes = frontier.load_set(FED)
    pts = [("riskd", frontier.defaults(settings)), ("static", {"leverage": 5.0})]
    a = [p.as_dict() for p in frontier.sweep(tapes, settings, pts)]
    b = [p.as_dict() for p in frontier.sweep(tapes, settings, pts)]
    assert a == b


def _point(family: str, setting: dict[str, float], lev: float, lp: float) -> Point:
    f = Figures(
        mean_leverage=lev,
        borrowed_hours=0.0,
        fees=max(lp, 0.0),
        bad_debt=max(-lp, 0.0),
        lp_pnl=lp,
        worst_tape_lp=lp,
    )
    return Point(family, setting, {"max": f, "cohort": f})


def _riskd(c: float, lev: float, lp: float, k: float = 3.0, fl: float = 0.4) -> Point:
    return _point("riskd", {"confidence": c, "k_liquidity": k, "fee_loading": fl}, lev, lp)


def test_dominance_on_a_constructed_frontier() -> None:
    points = [
        _riskd(0.99, 2.0, 0.5),
        _riskd(0.95, 6.0, 0.1),
        _riskd(0.9, 9.0, -1.0),
        _point("static", {"leverage": 1.0}, 1.0, 0.0),  # covered and Pareto-dominated
        _point("static", {"leverage": 5.0}, 5.0, 0.2),  # covered by the 6x point, not on LP
        _point("static", {"leverage": 8.0}, 8.0, 0.2),  # only riskd's losing 9x has more
        _point("static", {"leverage": 20.0}, 20.0, -3.0),  # loses: not checked
        _point("d8x_entropy", {"scale": 1.0}, 1.8, 4.0),  # covered, not on its LP P&L
    ]
    checks = {c.alternative.label: c for c in frontier.dominance(points)}
    assert set(checks) == {
        "static(leverage=1)",
        "static(leverage=5)",
        "static(leverage=8)",
        "d8x_entropy(scale=1)",
    }
    assert checks["static(leverage=1)"].covered and checks["static(leverage=1)"].pareto
    assert checks["static(leverage=5)"].covered and not checks["static(leverage=5)"].pareto
    assert not checks["static(leverage=8)"].covered
    assert checks["d8x_entropy(scale=1)"].covered and not checks["d8x_entropy(scale=1)"].pareto
    best = checks["static(leverage=8)"].best
    assert best is not None and best.setting["confidence"] == 0.95


def test_select_wants_every_tape_whole_and_prefers_the_cheaper_loading() -> None:
    a = [
        _riskd(0.95, 6.0, 1.0, fl=0.4),
        _riskd(0.95, 6.0, 1.0, fl=1.0),
        _riskd(0.9, 9.0, 2.0, fl=0.4),
        _riskd(0.99, 2.0, 0.1, fl=0.4),
    ]
    b = [
        _riskd(0.95, 5.0, 0.3, fl=0.4),
        _riskd(0.95, 5.0, 0.3, fl=1.0),
        _riskd(0.9, 8.0, -0.5, fl=0.4),
        _riskd(0.99, 1.5, 0.0, fl=0.4),
    ]
    assert frontier.select({"a": a})["confidence"] == 0.9
    # 0.9 loses on b: 0.95 is the most leverage kept whole on both, at the lower loading.
    assert frontier.select({"a": a, "b": b}) == {
        "confidence": 0.95,
        "k_liquidity": 3.0,
        "fee_loading": 0.4,
    }
    # A tape file of a set in the red rules a setting out even when the set's total is not.
    b[0].figures["cohort"].worst_tape_lp = -0.01
    b[1].figures["max"].worst_tape_lp = -0.01
    assert frontier.select({"a": a, "b": b})["confidence"] == 0.99
    oos = frontier.out_of_sample({"a": a, "b": b}, ["a"], ["b"])
    assert oos["chosen"]["confidence"] == 0.9
    assert oos["chosen_on_test"]["b"]["max"]["lp_pnl"] == -0.5


def test_cli_on_the_fed_tape(tmp_path: Path, settings: Settings) -> None:
    png = tmp_path / "frontier.png"
    out = subprocess.run(
        [sys.executable, "-m", "riskd.cli", "frontier", str(FED), "--json", "--plot", str(png)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    points = doc["sets"]["fed_dec2025"]["points"]
    assert len(points) == len(frontier.grid())
    assert {p["family"] for p in points} == set(frontier.FAMILIES)
    for p in points:
        for figures in p["traders"].values():
            assert figures["lp_pnl"] == pytest.approx(
                figures["fees"] - figures["bad_debt"], abs=1e-5
            )
    assert doc["defaults"] == frontier.defaults(settings)
    assert set(doc["sets"]["fed_dec2025"]["dominance"]) == {"max", "cohort"}
    assert png.stat().st_size > 10_000


def test_cli_without_tapes_exits_2() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "riskd.cli", "frontier"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "no tape given" in out.stderr


def test_select_refuses_a_setting_kept_whole_by_fees_far_above_the_loss() -> None:
    """LP P&L >= 0 because the simulated traders pay fees many times the loss is not a
    result: the fee must pay for the loss borne, at most FEE_TO_LOSS_MAX times."""
    loose, fair = _riskd(0.95, 6.0, 9.0, fl=2.0), _riskd(0.99, 3.0, 0.5, fl=0.0)
    for point, fees, loss in ((loose, 10.0, 1.0), (fair, 1.5, 1.0)):
        for f in point.figures.values():
            f.fees, f.bad_debt, f.lp_pnl = fees, loss, fees - loss
    assert frontier.select({"a": [loose, fair]})["confidence"] == 0.99
    loose.figures["max"].fees = frontier.FEE_TO_LOSS_MAX * 1.0
    assert frontier.select({"a": [loose, fair]})["confidence"] == 0.95
