"""`riskd backtest`: tapes through the model, governor and trader simulation; the report."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from riskd.backtest.fund import Fund
from riskd.backtest.policies import all_policies
from riskd.backtest.simulate import Rules, Simulation, Tally, simulate
from riskd.config import Settings
from riskd.markets import Market, MarketsError, load_markets
from riskd.tape import Tape, TapeError, TapeReport, no_rows_error, read_columns, tape_kind
from riskd.ticks import TickColumns

MARKETS_FILES = ("markets.json", "markets.toml")


@dataclass
class TapeResult:
    name: str
    markets: list[str]
    ticks: int
    rejected_rows: int
    reports: list[TapeReport]
    tallies: dict[str, Tally]  # policy -> summed over the tape's markets

    def as_dict(self) -> dict[str, Any]:
        return {
            "tape": self.name,
            "markets": len(self.markets),
            "ticks": self.ticks,
            "rejected_rows": self.rejected_rows,
            "policies": {name: t.as_dict() for name, t in self.tallies.items()},
        }


def find_markets_file(tape: Path) -> Path | None:
    """The markets file beside a tape (or inside a tape directory), if any."""
    folder = tape if tape.is_dir() else tape.parent
    for name in MARKETS_FILES:
        if (folder / name).exists():
            return folder / name
    return None


def tape_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(
            p
            for p in path.iterdir()
            if p.is_file() and tape_kind(p) is not None and p.name not in MARKETS_FILES
        )
    return [path]


def run(
    path: Path,
    settings: Settings,
    markets_file: Path | None = None,
    settle: bool = False,
    record: bool = False,
    fund: Fund | None = None,
) -> tuple[list[TapeResult], Simulation, float]:
    """Backtest a tape, or every tape of a directory at once (one row per tape).

    A directory is simulated in one pass over the merged tape and split by tape
    afterwards. With a `fund`, every policy's bad debt goes through it and riskd's
    openings are capped by its open-interest caps (fund.py): sim.funds.
    """
    files, tapes, per_file, markets = load(path, markets_file, settle)
    ids: list[str] = []
    owner: dict[str, int] = {}
    for k, cols in enumerate(per_file):
        for market in cols.markets:
            if market not in owner:
                owner[market] = k
                ids.append(market)
    merged = merge(per_file)
    policies = all_policies(settings, markets)
    started = time.perf_counter()
    sim = simulate(
        merged,
        ids,
        markets,
        policies,
        settle=settle,
        rules=Rules.of(settings),
        record=record,
        fund=fund,
    )
    elapsed = time.perf_counter() - started
    results = []
    for k, f in enumerate(files):
        mine = [i for i, m in enumerate(ids) if owner[m] == k]
        tallies: dict[str, Tally] = {}
        for pol in policies:
            total = Tally()
            for i in mine:
                total.add(sim.tallies[pol.name][i])
            tallies[pol.name] = total
        results.append(
            TapeResult(
                name=f.name,
                markets=[ids[i] for i in mine],
                ticks=len(per_file[k]),
                rejected_rows=tapes[k].rejected_total,
                reports=tapes[k].reports,
                tallies=tallies,
            )
        )
    return results, sim, elapsed


def load(
    path: Path, markets_file: Path | None = None, settle: bool = False
) -> tuple[list[Path], list[Tape], list[TickColumns], dict[str, Market]]:
    """A tape, or every tape of a directory: (files, tapes, ticks per file, markets), the
    markets from `markets_file` or the file beside the tape (none: no markets)."""
    if markets_file is None:
        markets_file = find_markets_file(path)
    if markets_file is None:
        if settle:
            raise MarketsError(
                f"{path}: --settle needs outcomes: no markets file given "
                f"(--markets) or found beside the tape ({', '.join(MARKETS_FILES)})"
            )
        markets: dict[str, Market] = {}
    else:
        markets = load_markets(markets_file)
    files = tape_files(path)
    if not files:
        raise TapeError(f"{path}: no tape files (.csv, .jsonl, ...) in directory")
    # A file of a directory may be empty (its report says so); the whole may not.
    tapes = [Tape(f, require_rows=False) for f in files]
    per_file = [cols for (cols,) in read_columns(tapes)]
    if not any(len(cols) for cols in per_file):
        raise no_rows_error(path, [r for tp in tapes for r in tp.reports])
    return files, tapes, per_file, markets


def merge(per_file: list[TickColumns]) -> TickColumns:
    """The ticks of several tapes in one time order (ties: in file, then row order)."""
    return TickColumns.concat(per_file).in_time_order()


def totals(results: list[TapeResult]) -> dict[str, Tally]:
    out: dict[str, Tally] = {}
    for r in results:
        for name, tally in r.tallies.items():
            out.setdefault(name, Tally()).add(tally)
    return out


COLUMNS = (
    "bad_debt",
    "fees",
    "lp_pnl",
    "mean_max_leverage",
    "share_leveraged",
    "liquidations",
    "worst_jump_loss",
)


def table(results: list[TapeResult]) -> str:
    """A readable policy table: one row per tape and policy, totals when several tapes."""
    head = f"{'tape':<44} {'policy':<12} " + " ".join(f"{c:>17}" for c in COLUMNS)
    lines = [head, "-" * len(head)]
    rows = [(r.name, r.tallies) for r in results]
    if len(results) > 1:
        rows.append(("TOTAL", totals(results)))
    for name, tallies in rows:
        for policy, tally in tallies.items():
            d = tally.as_dict()
            cells = " ".join(
                f"{d[c]:>17.4f}" if isinstance(d[c], float) else f"{d[c]:>17}" for c in COLUMNS
            )
            lines.append(f"{name[:44]:<44} {policy:<12} {cells}")
    return "\n".join(lines)


FUND_COLUMNS = (
    "bad_debt",
    "paid",
    "socialised",
    "beyond_fund",
    "min_balance",
    "max_drawdown",
    "worst_night",
    "exhausted",
    "over_fund",
)


def fund_rows(sim: Simulation) -> list[tuple[str, str, dict[str, Any]]]:
    """(group, policy, figures) for every group of the tape and policy, then the
    totals ("TOTAL"): the fund's figures, its nights exhausted (`exhausted`: a loss
    socialised that night; `over_fund`: the night's bad debt alone above the
    spendable fund)."""
    assert sim.funds is not None
    rows = []
    for policy, report in sim.funds.items():
        d = report.as_dict()
        for group, g in d["groups"].items():
            rows.append((group, policy, g | {"exhausted": len(g["exhausted_nights"])}))
    for policy, report in sim.funds.items():
        d = report.as_dict()["total"]
        rows.append(
            (
                "TOTAL",
                policy,
                d
                | {
                    "exhausted": len(d["exhausted_nights"]),
                    "over_fund": len(d["nights_over_fund"]),
                },
            )
        )
    return rows


def fund_table(sim: Simulation) -> str:
    """The fund per group and policy, and its totals."""
    head = f"{'group':<24} {'policy':<12} " + " ".join(f"{c:>12}" for c in FUND_COLUMNS)
    lines = [head, "-" * len(head)]
    for group, policy, d in fund_rows(sim):
        cells = " ".join(_cell(d.get(c)) for c in FUND_COLUMNS)
        lines.append(f"{group[:24]:<24} {policy:<12} {cells}")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return f"{'-':>12}"
    return f"{value:>12.4f}" if isinstance(value, float) else f"{value:>12}"


def fund_dict(sim: Simulation) -> dict[str, Any]:
    """The `fund` block of the JSON report: per policy its totals and groups."""
    assert sim.funds is not None
    return {policy: report.as_dict() for policy, report in sim.funds.items()}
