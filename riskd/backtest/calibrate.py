"""`riskd calibrate`: a margin backtest as a central counterparty runs one.

At every tape row where riskd's set is in force, and on every side it offers above
1x, the worst adverse price move over the set's own liquidation horizon h is
compared with the initial margin (value / max_leverage, price units per share) and
with the maintenance buffer (initial - maintenance margin). The exceedance rate is
tested against 1 - confidence with Kupiec's proportion-of-failures test and the
exceedance sequence for clustering with Christoffersen's independence test
(docs/model.md, "Margin backtest"; EMIR RTS 153/2013 art. 49).

The rows, the published sets and their horizons come from the backtest's own
preparation (policies.Riskd), and the lender's fees and borne loss from its
trader simulation (simulate.py), on riskd's policy alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from riskd.backtest import runner, synthetic
from riskd.backtest.policies import Riskd
from riskd.backtest.simulate import Rules, Tally, simulate
from riskd.config import Settings
from riskd.feeds.base import Tick
from riskd.markets import Market
from riskd.ticks import TickColumns

# A row is "after a jump" when riskd's estimator detected one within this long before
# it: long enough to hold the jump cool-down and the loosening back up to the cap.
AFTER_JUMP_S = 6 * 3600.0
# "Within a day of the event": event_at - t below this.
EVENT_DAY_S = 86_400.0
# "disjoint": all regimes, thinned so that a market side's windows do not overlap.
REGIMES = ("all", "calm", "event_day", "after_jump", "disjoint")
TESTS = ("initial", "buffer")
SIGNIFICANCE = 0.05  # the level of the table's verdict on Kupiec's test


# -- statistics ---------------------------------------------------------------------


def chi2_sf(x: float, dof: int = 1) -> float:
    """P(X > x) for X chi-square with 1 or 2 degrees of freedom (closed forms: no scipy).

    1 dof: X = Z^2, so P(X > x) = P(|Z| > sqrt(x)) = erfc(sqrt(x / 2)); 2 dof: exp(-x/2)."""
    if not x > 0.0:
        return 1.0 if x == x else float("nan")
    if dof == 1:
        return math.erfc(math.sqrt(x / 2.0))
    if dof == 2:
        return math.exp(-x / 2.0)
    raise ValueError(f"chi2_sf: {dof} degrees of freedom (1 or 2 only)")


def _xlogy(x: float, y: float) -> float:
    """x ln y with 0 ln 0 = 0 (the likelihoods' convention)."""
    return 0.0 if x == 0 else x * math.log(y)


def kupiec(exceedances: int, n: int, rate: float) -> tuple[float, float]:
    """Kupiec (1995) proportion-of-failures test: (LR_pof, p-value), chi-square 1 dof.

    LR = -2 ln[(1 - p)^(n-x) p^x] + 2 ln[(1 - x/n)^(n-x) (x/n)^x], p the expected rate.
    nan for no observation."""
    x = exceedances
    if n <= 0:
        return float("nan"), float("nan")
    phat = x / n
    lr = -2.0 * (_xlogy(n - x, 1.0 - rate) + _xlogy(x, rate)) + 2.0 * (
        _xlogy(n - x, 1.0 - phat) + _xlogy(x, phat)
    )
    lr = lr if lr > 0.0 else 0.0  # rounding below 0 when phat == rate
    return lr, chi2_sf(lr)


def transitions(hits: np.ndarray, group: np.ndarray) -> tuple[int, int, int, int]:
    """(n00, n01, n10, n11): pairs of consecutive observations of the same group (a
    market's side, in time order), n_ij counting i followed by j."""
    same = group[1:] == group[:-1]
    a, b = hits[:-1][same], hits[1:][same]
    return (
        int(np.count_nonzero(~a & ~b)),
        int(np.count_nonzero(~a & b)),
        int(np.count_nonzero(a & ~b)),
        int(np.count_nonzero(a & b)),
    )


def christoffersen(n00: int, n01: int, n10: int, n11: int) -> tuple[float, float]:
    """Christoffersen (1998) independence test: (LR_ind, p-value), chi-square 1 dof.

    A first-order Markov chain of exceedances (pi0 = P(hit | no hit before), pi1 =
    P(hit | hit before)) against independence (one pi). nan without transitions."""
    n0, n1 = n00 + n01, n10 + n11
    total = n0 + n1
    if total == 0:
        return float("nan"), float("nan")
    pi = (n01 + n11) / total
    pi0 = n01 / n0 if n0 else 0.0
    pi1 = n11 / n1 if n1 else 0.0
    null = _xlogy(n00 + n10, 1.0 - pi) + _xlogy(n01 + n11, pi)
    alt = _xlogy(n00, 1.0 - pi0) + _xlogy(n01, pi0) + _xlogy(n10, 1.0 - pi1) + _xlogy(n11, pi1)
    lr = -2.0 * (null - alt)
    lr = lr if lr > 0.0 else 0.0
    return lr, chi2_sf(lr)


@dataclass
class Coverage:
    """One test (initial margin or maintenance buffer) on one set of observations."""

    n: int
    exceedances: int
    expected_rate: float
    lr_pof: float
    p_pof: float
    lr_ind: float
    p_ind: float

    @property
    def rate(self) -> float:
        return self.exceedances / self.n if self.n else float("nan")

    @property
    def verdict(self) -> str:
        """Kupiec's test is two-sided: which way it rejects, at SIGNIFICANCE."""
        if not self.n:
            return "-"
        if not self.p_pof < SIGNIFICANCE:
            return "ok"
        return "too few" if self.rate < self.expected_rate else "too many"

    @classmethod
    def of(cls, hits: np.ndarray, group: np.ndarray, expected_rate: float) -> Coverage:
        n, x = int(hits.shape[0]), int(np.count_nonzero(hits))
        lr_pof, p_pof = kupiec(x, n, expected_rate)
        lr_ind, p_ind = christoffersen(*transitions(hits, group))
        return cls(n, x, expected_rate, lr_pof, p_pof, lr_ind, p_ind)

    def as_dict(self) -> dict[str, Any]:
        def num(v: float, places: int = 6) -> float | None:
            return round(v, places) if math.isfinite(v) else None

        lr_cc = self.lr_pof + self.lr_ind
        return {
            "observations": self.n,
            "exceedances": self.exceedances,
            "verdict": self.verdict,
            "rate": num(self.rate),
            "expected_rate": num(self.expected_rate),
            "kupiec_lr": num(self.lr_pof, 4),
            "kupiec_p": num(self.p_pof, 4),
            "christoffersen_lr": num(self.lr_ind, 4),
            "christoffersen_p": num(self.p_ind, 4),
            # Christoffersen's conditional coverage: both at once, 2 dof.
            "conditional_coverage_lr": num(lr_cc, 4),
            "conditional_coverage_p": num(
                chi2_sf(lr_cc, 2) if math.isfinite(lr_cc) else float("nan"), 4
            ),
        }


# -- exceedances ----------------------------------------------------------------------


def range_extremes(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """min and max of x[lo[k]:hi[k]] for every k (hi > lo), by a sparse table: O(n log n)
    however long the windows (a thin book's horizon spans days of rows)."""
    n = x.shape[0]
    mins, maxs = [x], [x]
    width = 1
    while 2 * width <= n:
        a, b = mins[-1], maxs[-1]
        pad = np.full(width, np.nan)
        mins.append(np.concatenate([np.minimum(a[:-width], a[width:]), pad]))
        maxs.append(np.concatenate([np.maximum(b[:-width], b[width:]), pad]))
        width *= 2
    level = np.floor(np.log2(np.maximum(hi - lo, 1))).astype(np.int64)
    top = np.stack(mins)  # (levels, n)
    bottom = np.stack(maxs)
    end = hi - (1 << level)
    return (
        np.minimum(top[level, lo], top[level, end]),
        np.maximum(bottom[level, lo], bottom[level, end]),
    )


def worst_moves(
    market: np.ndarray, t: np.ndarray, p: np.ndarray, h: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the worst adverse move over [t, t + h] in its market's later prices:
    long YES p - min, long NO max - p. Where no later price lies within h, the next
    price after h (the first a liquidation could fill at). nan where h is unknown or
    reaches past the market's last price (the window is not on the tape)."""
    n = t.shape[0]
    down = np.full(n, np.nan)
    up = np.full(n, np.nan)
    if n == 0:
        return down, up
    order = np.lexsort((t, market))  # by market, then time (stable: tape order in a time)
    ms, ts, ps, hs = market[order], t[order], p[order], h[order]
    pos = np.arange(n)
    seg_end = np.searchsorted(ms, ms, side="right")  # one past each market's last row
    last_t = ts[seg_end - 1]
    # Rows of the market at or before t + h: searched in the market's segment, by a key
    # that sorts market first (times shifted by market so segments never overlap).
    span = float(ts.max() - ts.min()) + 1.0
    key = ms * (2.0 * span) + (ts - ts.min())
    ok = np.isfinite(hs) & (ts + hs <= last_t)
    reach = np.where(ok, hs, 0.0)
    hi = np.searchsorted(key, ms * (2.0 * span) + (ts + reach - ts.min()), side="right")
    hi = np.minimum(np.maximum(hi, pos + 1), seg_end)
    # No later price within h: the next one after h.
    lonely = ok & (hi == pos + 1)
    hi = np.where(lonely, np.minimum(pos + 2, seg_end), hi)
    lo_p, hi_p = range_extremes(ps, pos, hi)
    down[order] = np.where(ok, ps - lo_p, np.nan)
    up[order] = np.where(ok, hi_p - ps, np.nan)
    return down, up


@dataclass
class Observations:
    """One entry per (row, side) with leverage above 1x and a horizon on the tape, in
    (side, market, time) order: each market's side is one exceedance sequence."""

    group: np.ndarray  # market * 2 + side
    t: np.ndarray
    loss: np.ndarray  # worst adverse move over h, price units per share
    initial: np.ndarray  # initial margin per share
    buffer: np.ndarray  # initial - maintenance margin per share
    leverage: np.ndarray
    h: np.ndarray
    event_day: np.ndarray  # bool
    after_jump: np.ndarray  # bool
    disjoint: np.ndarray  # bool: starts after the previous kept window of its sequence ended

    def hits(self, test: str) -> np.ndarray:
        return self.loss > (self.initial if test == "initial" else self.buffer)

    def regime(self, name: str) -> np.ndarray:
        if name == "all":
            return np.ones(self.t.shape[0], bool)
        if name == "calm":
            return ~self.event_day & ~self.after_jump
        if name == "disjoint":
            return self.disjoint
        return self.event_day if name == "event_day" else self.after_jump


def observe(pol: Riskd, settings: Settings, t: np.ndarray, p: np.ndarray) -> Observations:
    """The exceedance observations of a tape `pol` prepared (rows t, p in tape order)."""
    eng = pol.engine
    idx = pol._idx
    offers = pol.offers(t, p)
    leverage = offers.leverage
    h = pol.horizon
    live = ~(t >= eng.resolve_t[idx])  # after resolution nothing is lent
    down, up = worst_moves(idx, t, p, h)
    value = np.stack([p, 1.0 - p], axis=1)
    loss = np.stack([down, up], axis=1)
    initial = value / leverage
    buffer = initial * (1.0 - settings.model.maintenance_ratio)
    with np.errstate(invalid="ignore"):
        event_day = eng.event_t[idx] - t < EVENT_DAY_S
        after_jump = t - pol.last_jump_t <= AFTER_JUMP_S
    rows, sides = np.nonzero((leverage > 1.0) & np.isfinite(loss) & live[:, None])
    group = idx[rows] * 2 + sides
    order = np.lexsort((t[rows], group))
    rows, sides, group = rows[order], sides[order], group[order]
    return Observations(
        group=group,
        t=t[rows],
        loss=loss[rows, sides],
        initial=initial[rows, sides],
        buffer=buffer[rows, sides],
        leverage=leverage[rows, sides],
        h=h[rows],
        event_day=event_day[rows],
        after_jump=after_jump[rows],
        disjoint=disjoint(group, t[rows], h[rows]),
    )


def disjoint(group: np.ndarray, t: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Observations kept so that each sequence's windows [t, t + h] do not overlap: the
    first, then the first to start after the last kept one ended. Windows overlap when
    rows come faster than h, and one jump then counts in many of them: the clustering
    Christoffersen's test sees would be partly the sampling's own."""
    keep = np.zeros(t.shape[0], bool)
    free_at = -np.inf
    for k, (g, tk, hk) in enumerate(zip(group.tolist(), t.tolist(), h.tolist(), strict=True)):
        if k == 0 or g != group[k - 1]:
            free_at = -np.inf
        if tk >= free_at:
            keep[k] = True
            free_at = tk + hk
    return keep


# -- a tape set -----------------------------------------------------------------------


@dataclass
class SetResult:
    name: str
    rows: int
    markets: int
    expected_rate: float
    coverage: dict[str, dict[str, Coverage]]  # regime -> test -> coverage
    lender: Tally  # riskd's traders, summed over the set's markets
    obs: Observations | None = field(default=None, repr=False)

    @property
    def fee_to_loss(self) -> float:
        loss = self.lender.bad_debt
        return self.lender.fees / loss if loss > 0 else float("inf")

    def as_dict(self) -> dict[str, Any]:
        ratio = self.fee_to_loss
        return {
            "set": self.name,
            "rows": self.rows,
            "markets": self.markets,
            "regimes": {
                r: {k: c.as_dict() for k, c in tests.items()} for r, tests in self.coverage.items()
            },
            "lender": {
                "fees": round(self.lender.fees, 6),
                "borne_loss": round(self.lender.bad_debt, 6),
                "liquidations": self.lender.liquidations,
                # null: no loss borne, the ratio is unbounded
                "fee_to_loss": round(ratio, 4) if math.isfinite(ratio) else None,
            },
        }


def calibrate(
    name: str,
    ticks: Sequence[Tick] | TickColumns,
    markets: dict[str, Market],
    settings: Settings,
    settle: bool,
) -> SetResult:
    """The margin backtest of one tape set (ticks in time order)."""
    cols = TickColumns.of(ticks)
    ids = list(cols.markets)
    pol = Riskd(settings, markets)
    # The simulation prepares the policy (the backtest's passes) and tallies the lender.
    sim = simulate(cols, ids, markets, [pol], settle=settle, rules=Rules.of(settings))
    lender = Tally()
    for tally in sim.tallies[pol.name]:
        lender.add(tally)
    t, (p, _) = cols.ts, cols.book()
    obs = observe(pol, settings, t, p)
    rate = 1.0 - settings.model.confidence
    coverage = {}
    for regime in REGIMES:
        mask = obs.regime(regime)
        coverage[regime] = {
            test: Coverage.of(obs.hits(test)[mask], obs.group[mask], rate) for test in TESTS
        }
    return SetResult(
        name=name,
        rows=len(cols),
        markets=len(ids),
        expected_rate=rate,
        coverage=coverage,
        lender=lender,
        obs=obs,
    )


def calibrate_path(path: Path, settings: Settings, markets_file: Path | None = None) -> SetResult:
    """A tape, or a directory of tapes, as one set; settled at the outcomes when a
    markets file gives them (as `riskd backtest` does by default)."""
    if markets_file is None:
        markets_file = runner.find_markets_file(path)
    _, _, per_file, markets = runner.load(path, markets_file)
    return calibrate(
        path.name, runner.merge(per_file), markets, settings, settle=markets_file is not None
    )


def calibrate_synthetic(n: int, settings: Settings, seed: int = 7, days: float = 3.0) -> SetResult:
    """The seeded ensemble of `riskd.backtest.synthetic` (the backtest's: seed 7, 3 days)."""
    ticks, markets, _ = synthetic.ensemble(n=n, seed=seed, days=days)
    return calibrate(f"ensemble_{n}_seed{seed}", ticks, markets, settings, settle=True)


# -- reports ----------------------------------------------------------------------------

HEAD = (
    "set",
    "regime",
    "obs",
    "exceed",
    "rate",
    "kupiec_lr",
    "kupiec_p",
    "verdict",
    "chr_lr",
    "chr_p",
    "buf_exceed",
    "buf_rate",
)


def _f(v: float, places: int) -> str:
    return f"{v:.{places}f}" if math.isfinite(v) else "-"


def rows(results: list[SetResult]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for r in results:
        for regime, tests in r.coverage.items():
            im, buf = tests["initial"], tests["buffer"]
            out.append(
                (
                    r.name,
                    regime,
                    str(im.n),
                    str(im.exceedances),
                    _f(im.rate, 4),
                    _f(im.lr_pof, 2),
                    _f(im.p_pof, 3),
                    im.verdict,
                    _f(im.lr_ind, 2),
                    _f(im.p_ind, 3),
                    str(buf.exceedances),
                    _f(buf.rate, 4),
                )
            )
    return out


def lender_rows(results: list[SetResult]) -> list[tuple[str, ...]]:
    return [
        (
            r.name,
            f"{r.lender.fees:.4f}",
            f"{r.lender.bad_debt:.4f}",
            str(r.lender.liquidations),
            _f(r.fee_to_loss, 2) if r.lender.bad_debt > 0 else "inf (no loss)",
        )
        for r in results
    ]


LENDER_HEAD = ("set", "fees", "borne_loss", "liquidations", "fee_to_loss")


def table(results: list[SetResult]) -> str:
    """The readable report: coverage per set and regime, then the lender's fees and loss."""
    rate = results[0].expected_rate if results else float("nan")
    lines = [
        f"Margin backtest: initial margin vs the worst adverse move over h "
        f"(expected exceedance rate {rate:.4f} = 1 - confidence)",
        "",
    ]
    lines += _text_table(HEAD, rows(results))
    lines += ["", "Lender (riskd's simulated traders): fees charged vs loss borne", ""]
    lines += _text_table(LENDER_HEAD, lender_rows(results))
    return "\n".join(lines)


def _text_table(head: tuple[str, ...], body: list[tuple[str, ...]]) -> list[str]:
    widths = [
        max(len(h), *(len(row[k]) for row in body)) if body else len(h) for k, h in enumerate(head)
    ]
    fmt = [f"{{:<{w}}}" if k < 2 else f"{{:>{w}}}" for k, w in enumerate(widths)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(f.format(c) for f, c in zip(fmt, cells, strict=True)).rstrip()

    out = [line(head), "-" * len(line(head))]
    return out + [line(row) for row in body]


def markdown(results: list[SetResult]) -> list[str]:
    """The same two tables in Markdown (docs/backtests.md)."""
    out = ["| " + " | ".join(HEAD) + " |", "|---|---|" + "---:|" * (len(HEAD) - 2)]
    out += ["| " + " | ".join(row) + " |" for row in rows(results)]
    out += ["", "| " + " | ".join(LENDER_HEAD) + " |", "|---|" + "---:|" * (len(LENDER_HEAD) - 1)]
    out += ["| " + " | ".join(row) + " |" for row in lender_rows(results)]
    return out


def as_json(results: list[SetResult], settings: Settings) -> dict[str, Any]:
    return {
        "confidence": settings.model.confidence,
        "expected_rate": round(1.0 - settings.model.confidence, 12),
        "maintenance_ratio": settings.model.maintenance_ratio,
        "after_jump_s": AFTER_JUMP_S,
        "event_day_s": EVENT_DAY_S,
        "sets": [r.as_dict() for r in results],
    }


def plot(results: list[SetResult], out: Path) -> None:
    """Exceedance rates per set and regime (initial margin, maintenance buffer) against
    1 - confidence."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render to a file
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TESTS), figsize=(11, 4.5), sharey=False)
    width = 0.8 / max(len(results), 1)
    x = np.arange(len(REGIMES))
    for ax, test in zip(axes, TESTS, strict=True):
        for k, r in enumerate(results):
            rates = [r.coverage[g][test].rate for g in REGIMES]
            ax.bar(x + k * width, np.nan_to_num(rates), width, label=r.name)
        if test == "initial" and results:
            ax.axhline(
                results[0].expected_rate, color="black", lw=0.9, ls="--", label="1 - confidence"
            )
        ax.set_xticks(x + width * (len(results) - 1) / 2, REGIMES)
        ax.set_title(
            "exceedances of the initial margin"
            if test == "initial"
            else "exceedances of the maintenance buffer"
        )
        ax.set_ylabel("share of observations")
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
