"""`riskd frontier`: each policy family swept along its own knob, on tape sets.

A point is one setting of one family on one tape set: the leverage it offers
(time-weighted), what the simulated traders borrow, the fees, the bad debt and the
lenders' P&L, under two trader models (docs/model.md section 8): `max`, a trader
on every side at the max offered, and `cohort`, leverage and collateral drawn per
opening. The judge (simulate.Rules) is the backtest's, the same for every point.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from riskd.backtest import runner, synthetic
from riskd.backtest.policies import D8XEntropy, OpenInterestScaled, Policy, Riskd, Static
from riskd.backtest.simulate import (
    BAD_DEBT,
    BORROWED_HOURS,
    FEES,
    LEVERAGE_TIME,
    TIME,
    Replay,
    Rules,
    Traders,
)
from riskd.config import ModelSettings, Settings
from riskd.markets import Market
from riskd.ticks import TickColumns

TRADERS = ("max", "cohort")
# The cohort: this many traders per market side, each with its own seeded draws;
# a point's figures are their mean (one trader's draws are too few to average out on
# a tape of a few markets).
COHORT_TRADERS = 8

# Each family's knob. Kept small: a riskd point costs one engine pass over the tape.
STATIC_LEVERAGE = (1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0)
D8X_SCALE = (0.5, 0.75, 1.0, 1.5, 2.0)  # times D8X's margin rates
OI_BASE_IMF = (1.0, 0.5, 0.33, 0.2, 0.1, 0.05)  # dYdX's tier is 0.05
RISKD_GRID: dict[str, tuple[float, ...]] = {
    "confidence": (0.95, 0.975, 0.99, 0.995),
    "k_liquidity": (1.0, 2.0, 3.0, 5.0),
    "fee_loading": (0.0, 0.2, 0.4, 1.0, 2.0),
}
FAMILIES = ("riskd", "static", "oi_scaled", "d8x_entropy")
TOL = 1e-9  # LP P&L >= 0 up to float noise


@dataclass
class TapeSet:
    """Tapes replayed together; their figures are summed, and kept per tape file too."""

    name: str
    ticks: TickColumns
    ids: list[str]
    markets: dict[str, Market]
    tapes: list[str]  # tape file names
    owner: np.ndarray  # per market: its tape's index
    settle: bool = True


def load_set(path: Path, markets_file: Path | None = None, settle: bool | None = None) -> TapeSet:
    if settle is None:
        settle = (markets_file or runner.find_markets_file(path)) is not None
    files, _, per_file, markets = runner.load(path, markets_file, settle)
    owner: dict[str, int] = {}
    for k, cols in enumerate(per_file):
        for market in cols.markets:
            owner.setdefault(market, k)
    return TapeSet(
        path.name,
        runner.merge(per_file),
        list(owner),
        markets,
        [f.name for f in files],
        np.fromiter(owner.values(), np.int64, len(owner)),
        settle,
    )


def synthetic_set(n: int = 200, seed: int = 7, days: float = 3.0) -> TapeSet:
    ticks, markets, _ = synthetic.ensemble(n=n, seed=seed, days=days)
    ids = sorted(markets)
    return TapeSet(
        f"ensemble_{n}_seed{seed}",
        TickColumns.of(ticks),
        ids,
        markets,
        [f"ensemble_{n}"],
        np.zeros(len(ids), np.int64),
    )


@dataclass
class Figures:
    """One point's results on one tape set under one trader model."""

    mean_leverage: float  # time-weighted max leverage offered
    borrowed_hours: float  # notional lent times hours held, summed
    fees: float
    bad_debt: float
    lp_pnl: float
    worst_tape_lp: float  # the lowest LP P&L of the set's tape files

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 6) for k, v in self.__dict__.items()}


@dataclass
class Point:
    family: str
    setting: dict[str, float]
    figures: dict[str, Figures] = field(default_factory=dict)  # trader model -> figures

    @property
    def label(self) -> str:
        return f"{self.family}(" + ", ".join(f"{k}={v:g}" for k, v in self.setting.items()) + ")"

    def as_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "setting": self.setting,
            "traders": {k: f.as_dict() for k, f in self.figures.items()},
        }


def riskd_settings(settings: Settings, **model: float) -> Settings:
    """The settings with these [model] keys changed (validated as the file would be)."""
    updated = ModelSettings.model_validate({**settings.model.model_dump(), **model})
    return settings.model_copy(update={"model": updated})


def grid() -> list[tuple[str, dict[str, float]]]:
    """Every (family, setting) the frontier sweeps."""
    out: list[tuple[str, dict[str, float]]] = []
    keys = list(RISKD_GRID)
    for values in itertools.product(*RISKD_GRID.values()):
        out.append(("riskd", dict(zip(keys, values, strict=True))))
    out += [("static", {"leverage": x}) for x in STATIC_LEVERAGE]
    out += [("oi_scaled", {"base_imf": x}) for x in OI_BASE_IMF]
    out += [("d8x_entropy", {"scale": x}) for x in D8X_SCALE]
    return out


def policy(
    family: str, setting: dict[str, float], settings: Settings, markets: dict[str, Market]
) -> Policy:
    if family == "riskd":
        return Riskd(riskd_settings(settings, **setting), markets)
    if family == "static":
        return Static("static", setting["leverage"])
    if family == "oi_scaled":
        return OpenInterestScaled(base_imf=setting["base_imf"])
    if family == "d8x_entropy":
        return D8XEntropy(scale=setting["scale"])
    raise ValueError(f"unknown policy family {family!r}")


def _figures(table: np.ndarray, owner: np.ndarray, ntapes: int) -> Figures:
    total = table.sum(axis=0)
    lp = table[:, FEES] - table[:, BAD_DEBT]
    per_tape = np.bincount(owner, weights=lp, minlength=ntapes) if len(owner) else np.zeros(1)
    time = total[TIME]
    return Figures(
        mean_leverage=float(total[LEVERAGE_TIME] / time) if time > 0 else 1.0,
        borrowed_hours=float(total[BORROWED_HOURS]),
        fees=float(total[FEES]),
        bad_debt=float(total[BAD_DEBT]),
        lp_pnl=float(total[FEES] - total[BAD_DEBT]),
        worst_tape_lp=float(per_tape.min()),
    )


def cohorts(tapes: TapeSet) -> dict[str, list[Traders]]:
    """Each trader model's traders per market side: one at the max, or the cohort."""
    ids = tapes.ticks.names()
    return {
        "max": [Traders.at_max(len(ids))],
        "cohort": [Traders.cohort(ids, seed) for seed in range(COHORT_TRADERS)],
    }


def sweep(
    tapes: TapeSet,
    settings: Settings,
    points: Iterable[tuple[str, dict[str, float]]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Point]:
    """Every point of `points` (default: the whole grid) on one tape set, under both
    trader models."""
    rules = Rules.of(settings)
    replay = Replay.of(tapes.ticks, tapes.ids, tapes.markets, tapes.settle, rules)
    traders = cohorts(tapes)
    out = []
    for family, setting in grid() if points is None else points:
        pol = policy(family, setting, settings, tapes.markets)
        pol.prepare(tapes.ticks)
        offers = pol.offers(replay.t, replay.p)
        point = Point(family, dict(setting))
        for name, crowd in traders.items():
            table = np.mean([replay.run(offers, who)[0] for who in crowd], axis=0)
            point.figures[name] = _figures(table, tapes.owner, len(tapes.tapes))
        if progress is not None:
            progress(f"{tapes.name}: {point.label}")
        out.append(point)
    return out


@dataclass
class Check:
    """One alternative's point with LP P&L >= 0 against riskd's points."""

    alternative: Point
    covered: bool  # riskd has a point with LP P&L >= 0 and at least the leverage
    pareto: bool  # riskd has a point with at least the LP P&L and at least the leverage
    best: Point | None  # riskd's point with LP P&L >= 0 and the most leverage

    def as_dict(self, traders: str) -> dict[str, Any]:
        alt = self.alternative.figures[traders]
        best = self.best.figures[traders] if self.best else None
        return {
            "alternative": self.alternative.label,
            "leverage": round(alt.mean_leverage, 4),
            "lp_pnl": round(alt.lp_pnl, 6),
            "covered": self.covered,
            "pareto": self.pareto,
            "riskd_best": self.best.label if self.best else None,
            "riskd_best_leverage": round(best.mean_leverage, 4) if best else None,
            "riskd_best_lp_pnl": round(best.lp_pnl, 6) if best else None,
        }


def dominance(points: list[Point], traders: str = "cohort") -> list[Check]:
    """For every alternative's point with LP P&L >= 0: whether riskd has a point with
    LP P&L >= 0 and at least as much leverage offered (`covered`), and one with at
    least its LP P&L too (`pareto`)."""
    ours = [p for p in points if p.family == "riskd"]
    safe = [p for p in ours if p.figures[traders].lp_pnl >= -TOL]
    best = max(safe, key=lambda p: p.figures[traders].mean_leverage, default=None)
    out = []
    for alt in points:
        a = alt.figures[traders]
        if alt.family == "riskd" or a.lp_pnl < -TOL:
            continue
        covered = any(p.figures[traders].mean_leverage >= a.mean_leverage - TOL for p in safe)
        pareto = any(
            p.figures[traders].mean_leverage >= a.mean_leverage - TOL
            and p.figures[traders].lp_pnl >= a.lp_pnl - TOL
            for p in ours
        )
        out.append(Check(alt, covered, pareto, best))
    return out


# The fee pays for the loss the lender bears, at most this many times over
# (docs/model.md section 9: 0.8-2 on the seeded ensemble).
FEE_TO_LOSS_MAX = 2.0


def setting_key(setting: dict[str, float]) -> tuple[float, ...]:
    return tuple(setting[k] for k in RISKD_GRID)


def select(results: dict[str, list[Point]]) -> dict[str, float] | None:
    """riskd's setting with the most leverage offered (the mean over the sets of each
    set's time-weighted mean) among those whose LP P&L is >= 0 on every tape file of
    every set under both trader models, and whose fees, where the lender bore a loss,
    are at most FEE_TO_LOSS_MAX times it (max traders): an LP P&L kept >= 0 by fees far
    above the risk is the simulated traders paying, not a result; ties go to the
    lower fee_loading (the cheaper for traders). None when no setting qualifies."""
    settings: dict[tuple[float, ...], list[Point]] = {}
    for points in results.values():
        for p in points:
            if p.family == "riskd":
                settings.setdefault(setting_key(p.setting), []).append(p)
    feasible = [
        (key, ps)
        for key, ps in settings.items()
        if len(ps) == len(results)
        and all(p.figures[t].worst_tape_lp >= -TOL for p in ps for t in TRADERS)
        and all(
            p.figures["max"].fees <= FEE_TO_LOSS_MAX * p.figures["max"].bad_debt
            for p in ps
            if p.figures["max"].bad_debt > TOL
        )
    ]
    if not feasible:
        return None
    key, ps = max(
        feasible,
        key=lambda kp: (
            sum(p.figures["cohort"].mean_leverage for p in kp[1]) / len(kp[1]),
            -kp[0][list(RISKD_GRID).index("fee_loading")],
        ),
    )
    return dict(ps[0].setting)


def find(points: list[Point], family: str, setting: dict[str, float]) -> Point | None:
    for p in points:
        if p.family == family and all(math.isclose(p.setting[k], v) for k, v in setting.items()):
            return p
    return None


def defaults(settings: Settings) -> dict[str, float]:
    return {k: float(getattr(settings.model, k)) for k in RISKD_GRID}


def out_of_sample(
    results: dict[str, list[Point]], train: list[str], test: list[str]
) -> dict[str, Any]:
    """riskd's setting chosen on `train` (select), reported on `test`, beside the setting
    `test` itself would choose."""
    chosen = select({k: results[k] for k in train})
    own = select({k: results[k] for k in test})
    doc: dict[str, Any] = {"train": train, "test": test, "chosen": chosen, "test_own": own}
    for name, setting in (("chosen_on_test", chosen), ("own_on_test", own)):
        doc[name] = {
            k: (
                {t: p.figures[t].as_dict() for t in TRADERS}
                if setting and (p := find(results[k], "riskd", setting))
                else None
            )
            for k in test
        }
    return doc


# Reports.

COLUMNS = ("mean_leverage", "borrowed_hours", "fees", "bad_debt", "lp_pnl", "worst_tape_lp")


def rows(points: list[Point]) -> list[tuple[str, str, dict[str, float]]]:
    return [(p.label, t, p.figures[t].as_dict()) for p in points for t in TRADERS]


def table(results: dict[str, list[Point]]) -> str:
    head = f"{'set':<26} {'point':<62} {'traders':<7} " + " ".join(f"{c:>14}" for c in COLUMNS)
    lines = [head, "-" * len(head)]
    for name, points in results.items():
        for label, t, d in rows(points):
            lines.append(
                f"{name[:26]:<26} {label[:62]:<62} {t:<7} "
                + " ".join(f"{d[c]:>14.4f}" for c in COLUMNS)
            )
    return "\n".join(lines)


def dominance_lines(results: dict[str, list[Point]]) -> list[str]:
    lines = []
    for name, points in results.items():
        for t in TRADERS:
            checks = dominance(points, t)
            missed = [c for c in checks if not c.covered]
            not_pareto = [c for c in checks if not c.pareto]
            lines.append(
                f"{name} ({t} traders): {len(checks) - len(missed)} of {len(checks)} "
                f"alternative points with LP P&L >= 0 covered by riskd at LP P&L >= 0; "
                f"{len(checks) - len(not_pareto)} also at their LP P&L"
            )
            for c in missed:
                d = c.as_dict(t)
                lines.append(
                    f"  not covered: {d['alternative']} leverage {d['leverage']} "
                    f"LP {d['lp_pnl']}; riskd's best {d['riskd_best']} leverage "
                    f"{d['riskd_best_leverage']} LP {d['riskd_best_lp_pnl']}"
                )
            for c in not_pareto:
                d = c.as_dict(t)
                lines.append(
                    f"  riskd has no point with at least this leverage and LP P&L: "
                    f"{d['alternative']} leverage {d['leverage']} LP {d['lp_pnl']}"
                )
    return lines


def as_json(results: dict[str, list[Point]], settings: Settings) -> dict[str, Any]:
    chosen = select(results)
    return {
        "grid": {
            "riskd": RISKD_GRID,
            "static": {"leverage": STATIC_LEVERAGE},
            "oi_scaled": {"base_imf": OI_BASE_IMF},
            "d8x_entropy": {"scale": D8X_SCALE},
        },
        "defaults": defaults(settings),
        "sets": {
            name: {
                "points": [p.as_dict() for p in points],
                "dominance": {t: [c.as_dict(t) for c in dominance(points, t)] for t in TRADERS},
            }
            for name, points in results.items()
        },
        "recommended": chosen,
    }


def plot(
    results: dict[str, list[Point]],
    out: Path,
    default: dict[str, float] | None = None,
    traders: Iterable[str] = TRADERS,
) -> None:
    """Lender P&L against leverage offered: a curve per family, riskd's grid as points
    with its upper envelope; a column per tape set, a row per trader model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(traders)
    names = list(results)
    fig, axes = plt.subplots(
        len(models), len(names), figsize=(5.2 * len(names), 4.2 * len(models)), squeeze=False
    )
    for row, t in enumerate(models):
        for col, name in enumerate(names):
            _panel(axes[row][col], results[name], t, default)
            axes[row][col].set_title(f"{name}: {t} traders", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


COLORS = {
    "riskd": "tab:blue",
    "static": "tab:gray",
    "oi_scaled": "tab:orange",
    "d8x_entropy": "tab:green",
}


def _panel(ax: Any, points: list[Point], t: str, default: dict[str, float] | None) -> None:
    """One tape set and trader model: a curve per family, riskd's envelope, defaults."""
    for family in FAMILIES:
        mine = [p.figures[t] for p in points if p.family == family]
        if not mine:
            continue
        mine.sort(key=lambda f: f.mean_leverage)
        x = [f.mean_leverage for f in mine]
        y = [f.lp_pnl for f in mine]
        if family == "riskd":
            ax.scatter(x, y, s=10, color=COLORS[family], alpha=0.45)
            env_x, env_y = _best_loading(points, t)
            ax.plot(env_x, env_y, color=COLORS[family], lw=1.4, label="riskd (best fee_loading)")
        else:
            ax.plot(x, y, marker="o", ms=3, lw=1.0, color=COLORS[family], label=family)
    if default is not None and (d := find(points, "riskd", default)):
        f = d.figures[t]
        ax.scatter(
            [f.mean_leverage],
            [f.lp_pnl],
            marker="*",
            s=140,
            color="black",
            zorder=5,
            label="riskd defaults",
        )
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xlabel("mean max leverage offered")
    ax.set_ylabel("LP P&L (collateral units)")
    ax.legend(fontsize=7, loc="lower left")


def _best_loading(points: list[Point], traders: str) -> tuple[list[float], list[float]]:
    """riskd's curve: for each (confidence, k_liquidity), the fee_loading with the
    highest LP P&L (fee_loading moves LP P&L, hardly the leverage), by leverage."""
    best: dict[tuple[float, float], Figures] = {}
    for p in points:
        if p.family != "riskd":
            continue
        key = (p.setting["confidence"], p.setting["k_liquidity"])
        f = p.figures[traders]
        if key not in best or f.lp_pnl > best[key].lp_pnl:
            best[key] = f
    curve = sorted(best.values(), key=lambda f: f.mean_leverage)
    return [f.mean_leverage for f in curve], [f.lp_pnl for f in curve]
