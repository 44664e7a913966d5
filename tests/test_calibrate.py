"""`riskd calibrate`: the margin backtest's statistics, its exceedances on a tape whose
answer is known, and the command on a shipped tape."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from riskd.backtest import calibrate as cal
from riskd.config import Settings, load_settings
from riskd.feeds.base import Tick
from riskd.markets import Market

ROOT = Path(__file__).resolve().parent.parent
FED = ROOT / "data/tapes/fed_dec2025"


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(ROOT / "config/riskd.toml")


# -- statistics -------------------------------------------------------------------------


def test_chi2_survival_at_known_quantiles() -> None:
    # The 95% and 99% quantiles of chi-square(1), and P(chi2(1) > 1) = P(|Z| > 1).
    assert cal.chi2_sf(3.841458820694124) == pytest.approx(0.05, abs=1e-12)
    assert cal.chi2_sf(6.634896601021214) == pytest.approx(0.01, abs=1e-12)
    assert cal.chi2_sf(1.0) == pytest.approx(0.3173105078629141, abs=1e-12)
    assert cal.chi2_sf(0.0) == 1.0
    # chi-square(2) is exponential with mean 2: its 95% quantile is 2 ln 20.
    assert cal.chi2_sf(2.0 * math.log(20.0), 2) == pytest.approx(0.05, abs=1e-12)


def test_kupiec_five_exceedances_in_250_at_one_percent() -> None:
    # By hand: phat = 0.02, LR = 2 [245 ln(0.98 / 0.99) + 5 ln(0.02 / 0.01)] = 1.95681.
    lr, p = cal.kupiec(5, 250, 0.01)
    assert lr == pytest.approx(1.956810, abs=1e-6)
    assert p == pytest.approx(0.161855, abs=1e-6)
    # None: LR = -2 * 250 ln 0.99 = 5.0252, too few for a 1% model at 5%.
    lr0, p0 = cal.kupiec(0, 250, 0.01)
    assert lr0 == pytest.approx(-500.0 * math.log(0.99), rel=1e-12)
    assert p0 < 0.05
    # At the expected rate the statistic is 0; 6 of 250 is accepted at 5%, 7 is not.
    assert cal.kupiec(10, 1000, 0.01) == (0.0, 1.0)
    assert cal.kupiec(6, 250, 0.01)[1] > 0.05 > cal.kupiec(7, 250, 0.01)[1]
    assert all(math.isnan(v) for v in cal.kupiec(0, 0, 0.01))


def test_christoffersen_on_a_hand_counted_sequence() -> None:
    hits = np.array([0, 0, 0, 1, 1, 1, 0, 0, 0, 0], bool)
    counts = cal.transitions(hits, np.zeros(10, np.int64))
    assert counts == (5, 1, 1, 2)
    # pi = 3/9, pi0 = 1/6, pi1 = 2/3:
    null = 6 * math.log(2 / 3) + 3 * math.log(1 / 3)
    alt = 5 * math.log(5 / 6) + math.log(1 / 6) + math.log(1 / 3) + 2 * math.log(2 / 3)
    lr, p = cal.christoffersen(*counts)
    assert lr == pytest.approx(-2.0 * (null - alt), rel=1e-12)
    assert lr == pytest.approx(2.231436, abs=1e-6)
    assert p == pytest.approx(math.erfc(math.sqrt(lr / 2.0)), rel=1e-12)
    # No exceedance at all, or none twice in a row at the independent rate: nothing to see.
    assert cal.christoffersen(9, 0, 0, 0) == (0.0, 1.0)
    assert cal.christoffersen(0, 0, 0, 0)[0] != cal.christoffersen(0, 0, 0, 0)[0]  # nan


def test_transitions_stay_within_a_sequence() -> None:
    # Two markets' sides back to back: the 1 ending the first does not precede the
    # 1 starting the second.
    hits = np.array([0, 0, 1, 1, 0, 0], bool)
    group = np.array([0, 0, 0, 1, 1, 1])
    assert cal.transitions(hits, group) == (2, 1, 1, 0)  # no (1, 1) across the seam


# -- worst moves ------------------------------------------------------------------------


def test_worst_move_takes_the_window_then_the_next_price_and_skips_the_end() -> None:
    market = np.array([0, 0, 0, 0, 0, 1, 1])
    t = np.array([0.0, 100.0, 200.0, 1000.0, 1100.0, 0.0, 50.0])
    p = np.array([0.5, 0.45, 0.55, 0.2, 0.9, 0.3, 0.4])
    h = np.full(7, 250.0)
    down, up = cal.worst_moves(market, t, p, h)
    # Row 0: prices 0.5, 0.45, 0.55 within 250 s.
    assert down[0] == pytest.approx(0.05) and up[0] == pytest.approx(0.05)
    # Row 2: nothing within 250 s: the next price after it (0.2, at 1000 s).
    assert down[2] == pytest.approx(0.35) and up[2] == 0.0
    # Row 3: the window reaches 1250 s, past the market's last price: skipped.
    assert np.isnan(down[3]) and np.isnan(up[3]) and np.isnan(down[4])
    # Market 1 ends at 50 s: row 5's window (to 250 s) is not on the tape.
    assert np.isnan(down[5])


def test_range_extremes_against_a_loop() -> None:
    rng = np.random.default_rng(3)
    x = rng.uniform(size=300)
    lo = rng.integers(0, 299, size=500)
    hi = lo + 1 + rng.integers(0, 300 - lo)
    mins, maxs = cal.range_extremes(x, lo, hi)
    for k in range(500):
        assert mins[k] == x[lo[k] : hi[k]].min() and maxs[k] == x[lo[k] : hi[k]].max()


# -- exceedances through the engine ------------------------------------------------------


T0 = 1_800_000_000.0
JUMP_ROW = 400


def _tape() -> tuple[list[Tick], dict[str, Market]]:
    """A minute-by-minute market at 0.5 with a 0.002 bounce, a jump of 0.8 during the
    warm-up (riskd offers 1x then), and a fall to 0.2 at row 400."""
    ticks = []
    for k in range(600):
        p = 0.5 if k < JUMP_ROW else 0.2
        p += 0.002 * (k % 2)
        if k == 2:
            p = 0.9
        ticks.append(Tick("m", T0 + 60.0 * k, p))
    event = T0 + 10 * 86_400.0
    return ticks, {"m": Market("m", event, event)}


def test_exceedances_are_the_jump_inside_h_and_nothing_else(settings: Settings) -> None:
    ticks, markets = _tape()
    result = cal.calibrate("constructed", ticks, markets, settings, settle=False)
    obs = result.obs
    assert obs is not None
    jump_t = T0 + 60.0 * JUMP_ROW
    # Only sides above 1x are observed: the warm-up's 0.4 jump, at 1x, is not one.
    assert (obs.leverage > 1.0).all()
    assert obs.t.min() > T0 + 120.0
    # Some rows whose window reaches the fall were leveraged, on both sides.
    yes, no = obs.group == 0, obs.group == 1
    reaching = (obs.t < jump_t) & (obs.t + obs.h >= jump_t)
    assert (reaching & yes).sum() >= 3 and (reaching & no).sum() >= 3
    # The fall (0.3) is larger than any margin offered above 1x at 0.5 (at most 0.5 /
    # 1.1): long YES rows whose window holds it exceed, and only those; the bounce and
    # the long NO side (the fall is its gain) never do.
    assert (obs.initial[reaching & yes] < 0.3).all()
    hits = obs.hits("initial")
    assert np.array_equal(hits, reaching & yes)
    assert result.coverage["all"]["initial"].exceedances == int((reaching & yes).sum())
    # The maintenance buffer is the smaller amount: at least the same exceedances.
    assert (obs.hits("buffer") >= hits).all()
    assert np.allclose(obs.buffer, obs.initial * (1.0 - settings.model.maintenance_ratio))


def test_a_move_smaller_than_the_margin_is_not_an_exceedance(settings: Settings) -> None:
    ticks, markets = _tape()
    # The fall is only 0.01 now: below every margin riskd offers at 0.5 (20x: 0.025).
    ticks = [
        Tick(tk.market, tk.ts, tk.price + 0.29) if k >= JUMP_ROW else tk
        for k, tk in enumerate(ticks)
    ]
    result = cal.calibrate("constructed", ticks, markets, settings, settle=False)
    assert result.obs is not None and result.obs.t.shape[0] > 300
    assert result.obs.loss.max() == pytest.approx(0.012, abs=1e-9)
    assert result.coverage["all"]["initial"].exceedances == 0
    assert result.coverage["all"]["buffer"].exceedances == 0


def test_regimes_split_the_observations(settings: Settings) -> None:
    ticks, markets = _tape()
    # The event a day away from row 300 on: those rows are "event_day".
    event = T0 + 60.0 * 300 + 86_400.0
    markets = {"m": Market("m", event, event)}
    result = cal.calibrate("constructed", ticks, markets, settings, settle=False)
    obs = result.obs
    assert obs is not None
    assert np.array_equal(obs.event_day, obs.t > T0 + 60.0 * 300)
    calm = obs.regime("calm")
    assert not (calm & (obs.event_day | obs.after_jump)).any()
    n = {r: result.coverage[r]["initial"].n for r in cal.REGIMES}
    assert n["all"] == obs.t.shape[0] == int(calm.sum() + (obs.event_day | obs.after_jump).sum())
    assert n["event_day"] > 0


def test_disjoint_windows_do_not_overlap() -> None:
    group = np.array([0, 0, 0, 0, 1, 1])
    t = np.array([0.0, 100.0, 300.0, 350.0, 10.0, 20.0])
    h = np.full(6, 300.0)
    assert cal.disjoint(group, t, h).tolist() == [True, False, True, False, True, False]


# -- the command --------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "riskd.cli", "calibrate", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )


def test_cli_prints_the_table_and_json_on_the_fed_tape(tmp_path: Path) -> None:
    out = _cli(str(FED), "-c", "config/riskd.toml")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.split()[:2] == ["fed_dec2025", "all"] for line in lines)
    assert "kupiec_lr" in out.stdout and "fee_to_loss" in out.stdout
    for regime in cal.REGIMES:
        assert any(line.split()[:2] == ["fed_dec2025", regime] for line in lines)

    out = _cli(str(FED), "-c", "config/riskd.toml", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    rate = 1.0 - load_settings(ROOT / "config/riskd.toml").model.confidence
    assert doc["expected_rate"] == pytest.approx(rate)
    (fed,) = doc["sets"]
    assert fed["set"] == "fed_dec2025" and fed["markets"] == 2
    im = fed["regimes"]["all"]["initial"]
    assert im["observations"] > 1000
    assert 0 <= im["exceedances"] <= im["observations"]
    lr, p = cal.kupiec(im["exceedances"], im["observations"], rate)
    assert im["kupiec_lr"] == pytest.approx(lr, abs=1e-4)
    assert im["kupiec_p"] == pytest.approx(p, abs=1e-4)
    assert fed["lender"]["fees"] > 0


def test_cli_without_tapes_is_a_usage_error() -> None:
    out = _cli()
    assert out.returncode == 2
    assert "no tape given" in out.stderr


def test_plot_writes_a_png(settings: Settings, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    ticks, markets = _tape()
    result = cal.calibrate("constructed", ticks, markets, settings, settle=False)
    out = tmp_path / "rates.png"
    cal.plot([result], out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
