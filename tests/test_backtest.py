"""The backtest on the shipped real tapes and a seeded ensemble (spec section 7)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from riskd.backtest import runner, synthetic
from riskd.backtest.policies import Riskd, all_policies
from riskd.backtest.simulate import Rules, Tally, simulate
from riskd.config import Settings, load_settings
from riskd.model.governor import REDUCE_ONLY

ROOT = Path(__file__).resolve().parent.parent
MIDTERMS = ROOT / "data/tapes/polymarket_midterms_2022"
FED = ROOT / "data/tapes/fed_dec2025"
LEVERAGED = ("static_20x", "oi_scaled", "d8x_entropy")


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(ROOT / "config/riskd.toml")


@pytest.fixture(scope="module")
def midterms(settings: Settings) -> list[runner.TapeResult]:
    results, _, _ = runner.run(MIDTERMS, settings, settle=True)
    return results


@pytest.fixture(scope="module")
def fed(settings: Settings) -> list[runner.TapeResult]:
    results, _, _ = runner.run(FED, settings, settle=True)
    return results


def _check_lender_safety(result: runner.TapeResult) -> None:
    ours = result.tallies["riskd"]
    assert ours.fees - ours.bad_debt >= 0.0, f"{result.name}: riskd LP P&L negative"
    for name in LEVERAGED:
        theirs = result.tallies[name]
        if theirs.bad_debt > 0:
            assert ours.bad_debt < theirs.bad_debt, f"{result.name}: riskd vs {name}"


def test_every_midterm_tape_keeps_lenders_whole(midterms: list[runner.TapeResult]) -> None:
    assert len(midterms) == 39
    for result in midterms:
        _check_lender_safety(result)
    # Somebody must have lost money for the comparison to mean anything.
    assert runner.totals(midterms)["static_20x"].bad_debt > 100


def test_fed_tape_keeps_lenders_whole(fed: list[runner.TapeResult]) -> None:
    assert [r.markets for r in fed] == [
        ["fed-dec2025-nochange-poly", "fed-dec2025-nochange-kalshi"]
    ]
    _check_lender_safety(fed[0])


def test_riskd_is_not_1x_everywhere(
    midterms: list[runner.TapeResult], fed: list[runner.TapeResult]
) -> None:
    """More than 1x for a material share of the time where markets are calm."""
    assert fed[0].tallies["riskd"].as_dict()["share_leveraged"] > 0.5
    by_tape = {r.name: r.tallies["riskd"].as_dict() for r in midterms}
    for busy in ("us_senate_overall.csv", "us_house_overall.csv"):
        assert by_tape[busy]["share_leveraged"] > 0.2
        assert by_tape[busy]["mean_max_leverage"] > 1.5
    assert runner.totals(midterms)["riskd"].as_dict()["share_leveraged"] > 0.05


def test_freeze_before_event_is_1x_reduce_only(settings: Settings) -> None:
    ticks, markets, _ = synthetic.ensemble(n=20, seed=3, days=2.0)
    pol = Riskd(settings, markets)
    pol.prepare(ticks)
    freeze = settings.governor.freeze_before_resolution_s
    event = np.array([markets[t.market].event_at for t in ticks])
    t = np.array([t.ts for t in ticks])
    inside = (t >= event - freeze) & (pol.mode >= 0)
    assert inside.sum() > 20
    assert np.all(pol.leverage[inside] == 1.0)
    assert np.all(pol.mode[inside] == REDUCE_ONLY)
    outside = (t < event - freeze - 86_400) & (pol.mode >= 0)
    assert np.any(pol.leverage[outside] > 1.0)


def test_seeded_ensemble_of_200_markets(settings: Settings) -> None:
    ticks, markets, _ = synthetic.ensemble(n=200, seed=11, days=1.5)
    ids = sorted(markets)
    sim = simulate(
        ticks, ids, markets, all_policies(settings, markets), settle=True, rules=Rules.of(settings)
    )
    total = {name: Tally() for name in sim.tallies}
    for name, tallies in sim.tallies.items():
        for tally in tallies:
            total[name].add(tally)
    ours = total["riskd"]
    assert (ours.fees - ours.bad_debt) / len(ids) >= 0.0
    for name in LEVERAGED:
        assert ours.bad_debt < total[name].bad_debt, name
    assert ours.as_dict()["share_leveraged"] > 0.3


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "riskd.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_json_report_schema() -> None:
    out = _cli("backtest", str(FED / "fed_nochange.csv"), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["tape"] == "fed_nochange.csv"
    assert report["markets"] == 2 and report["ticks"] == 2011 and report["rejected_rows"] == 0
    assert set(report["policies"]) == {
        "riskd",
        "static_20x",
        "static_1x",
        "oi_scaled",
        "d8x_entropy",
    }
    for values in report["policies"].values():
        assert set(values) == {
            "bad_debt",
            "fees",
            "lp_pnl",
            "mean_max_leverage",
            "share_leveraged",
            "liquidations",
            "worst_jump_loss",
        }
        assert values["lp_pnl"] == pytest.approx(values["fees"] - values["bad_debt"], abs=1e-5)
    assert report["policies"]["static_1x"]["bad_debt"] == 0.0


def test_directory_table_has_a_row_per_tape_and_totals(tmp_path: Path) -> None:
    for name in ("pennsylvania_senate.csv", "ohio_senate.csv"):
        (tmp_path / name).write_bytes((MIDTERMS / name).read_bytes())
    (tmp_path / "markets.json").write_bytes((MIDTERMS / "markets.json").read_bytes())
    out = _cli("backtest", str(tmp_path))
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if line.strip()]
    tapes = {r[0] for r in rows if len(r) == 9 and r[1] in ("riskd", "static_20x")}
    assert tapes == {"pennsylvania_senate.csv", "ohio_senate.csv", "TOTAL"}


def test_bad_rows_are_reported_by_line_and_skipped(tmp_path: Path) -> None:
    lines = (MIDTERMS / "ohio_senate.csv").read_text().splitlines()
    lines.insert(5, "2022-13-40T00:00:00Z,pm22-ohio-senate,0.5")
    lines.insert(9, "2022-03-01T00:00:00Z,pm22-ohio-senate,1.7")
    tape = tmp_path / "ohio.csv"
    tape.write_text("\n".join(lines) + "\n")
    out = _cli("backtest", str(tape), "--markets", str(MIDTERMS / "markets.json"), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["rejected_rows"] == 2
    assert "line 6" in out.stderr and "line 10" in out.stderr


def test_missing_markets_file_is_an_error_only_for_settlement(tmp_path: Path) -> None:
    tape = tmp_path / "ohio.csv"
    tape.write_bytes((MIDTERMS / "ohio_senate.csv").read_bytes())
    settled = _cli("backtest", str(tape), "--settle")
    assert settled.returncode == 2
    assert "markets file" in settled.stderr and "Traceback" not in settled.stderr
    plain = _cli("backtest", str(tape), "--json")
    assert plain.returncode == 0, plain.stderr


def test_plot_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "plot.png"
    done = _cli("backtest", str(MIDTERMS / "pennsylvania_senate.csv"), "--plot", str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_row_that_is_not_utf8_is_skipped_and_reported(tmp_path: Path, kind: str) -> None:
    lines = (MIDTERMS / "ohio_senate.csv").read_bytes().splitlines()
    if kind == "jsonl":  # the same rows as JSON objects, no header line
        keys = lines[0].decode().split(",")
        lines = [
            json.dumps(dict(zip(keys, row.decode().split(","), strict=True))).encode()
            for row in lines[1:]
        ]
    lines[6] = lines[6].replace(b"pm22", b"pm\xe922")  # line 7: a Latin-1 byte
    tape = tmp_path / f"ohio.{kind}"
    tape.write_bytes(b"\n".join(lines) + b"\n")
    out = _cli("backtest", str(tape), "--markets", str(MIDTERMS / "markets.json"), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    rows = len((MIDTERMS / "ohio_senate.csv").read_text().splitlines()) - 1
    assert report["rejected_rows"] == 1 and report["ticks"] == rows - 1
    assert f"{tape}: {rows} rows, {rows - 1} accepted, 1 rejected (bad_encoding 1)" in out.stderr
    assert "line 7: bad_encoding: bytes b'\\xe9' are not UTF-8" in out.stderr


def test_a_tape_with_no_usable_row_exits_2_saying_why(tmp_path: Path) -> None:
    header_only = tmp_path / "header.csv"
    header_only.write_text("ts,market,price\n")
    all_bad = tmp_path / "bad.csv"
    all_bad.write_text("ts,market,price\n2022-11-09T00:00:00Z,pm22-ohio-senate,1.7\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.csv").write_text("ts,market,price\n")
    (folder / "b.jsonl").write_text("")
    for tape, why in (
        (header_only, f"{header_only}: no data rows"),
        (all_bad, f"{all_bad}: all 1 rows rejected (bad_price 1)"),
        (folder, f"{folder}: no usable rows in any of its 2 tape files"),
    ):
        out = _cli("backtest", str(tape), "--json")
        assert out.returncode == 2, (tape, out.stderr)
        # After the line saying which config file it ran on.
        assert out.stderr.splitlines()[-1].startswith(f"riskd: {why}"), out.stderr
        assert "Traceback" not in out.stderr and out.stdout == ""


def test_an_empty_file_beside_good_ones_is_a_row_of_its_own(tmp_path: Path) -> None:
    (tmp_path / "ohio_senate.csv").write_bytes((MIDTERMS / "ohio_senate.csv").read_bytes())
    (tmp_path / "empty.csv").write_text("ts,market,price\n")
    out = _cli("backtest", str(tmp_path), "--markets", str(MIDTERMS / "markets.json"), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [(t["tape"], t["ticks"]) for t in doc["tapes"]][0] == ("empty.csv", 0)
    assert doc["tapes"][1]["ticks"] > 0


def test_backtest_says_which_config_it_ran_on(tmp_path: Path) -> None:
    """The same backtest on another file or on the built-in defaults gives other
    figures: stderr names the file, or says the defaults were used."""
    out = _cli("backtest", str(FED / "fed_nochange.csv"), "-c", "config/riskd.toml")
    assert out.returncode == 0, out.stderr
    assert f"config file {ROOT / 'config/riskd.toml'}" in out.stderr
    bare = subprocess.run(
        [sys.executable, "-m", "riskd.cli", "backtest", str(FED / "fed_nochange.csv")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bare.returncode == 0, bare.stderr
    assert "built-in defaults" in bare.stderr
