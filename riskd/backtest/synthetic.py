"""Seeded simulated markets with known dynamics: scheduled resolution and surprise jumps.

`python -m riskd.backtest.synthetic OUT_DIR [--markets N] [--seed S]` writes
`synthetic.csv` and `markets.json`, a tape set for `riskd backtest`.
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from riskd.feeds.base import Tick
from riskd.markets import Market
from riskd.timeutil import iso

START = 1_893_456_000.0  # 2030-01-01T00:00:00Z


@dataclass(frozen=True)
class Truth:
    """The parameters a market was drawn with."""

    sigma: float  # logit per sqrt(second)
    jump_rate: float  # per second
    jump_size: float  # logit standard deviation
    mean_gap: float  # seconds between prices


def logit_path(
    rng: np.random.Generator, times: np.ndarray, x0: float, truth: Truth
) -> tuple[np.ndarray, np.ndarray]:
    """Logit diffusion plus compound-Poisson jumps, sampled at `times`; returns (x, jumped)."""
    dt = np.diff(times, prepend=times[0])
    jumps = rng.poisson(truth.jump_rate * dt)
    steps = truth.sigma * np.sqrt(dt) * rng.standard_normal(len(times))
    steps += np.where(
        jumps > 0,
        truth.jump_size * np.sqrt(np.maximum(jumps, 1)) * rng.standard_normal(len(times)),
        0.0,
    )
    steps[0] = 0.0
    return x0 + np.cumsum(steps), jumps > 0


def market(rng: np.random.Generator, k: int, days: float) -> tuple[list[Tick], Market, Truth]:
    truth = Truth(
        sigma=float(rng.uniform(1e-4, 6e-4)),
        jump_rate=float(rng.uniform(0.1, 1.0)) / 86_400.0,
        jump_size=float(rng.uniform(0.4, 1.5)),
        mean_gap=float(rng.uniform(120.0, 1800.0)),
    )
    event_at = START + days * 86_400.0
    n = int(days * 86_400.0 / truth.mean_gap * 1.2) + 10
    times = START + np.cumsum(rng.exponential(truth.mean_gap, n))
    times = times[times < event_at]
    x, _ = logit_path(rng, times, float(rng.uniform(-2.0, 2.0)), truth)
    p = np.clip(1.0 / (1.0 + np.exp(-x)), 0.001, 0.999)
    # The decisive information at the scheduled time: YES with probability p (a martingale).
    outcome = int(rng.uniform() < p[-1])
    mid = f"sim-{k:04d}"
    ticks = [Tick(mid, float(t), float(round(q, 4))) for t, q in zip(times, p, strict=True)]
    ticks.append(Tick(mid, event_at, 0.999 if outcome else 0.001))
    meta = Market(
        id=mid,
        resolves_at=event_at + 3600.0,
        event_at=event_at,
        outcome=outcome,
        scheduled=True,
        tick_size=0.0001,
        title=f"simulated market {k}",
    )
    return ticks, meta, truth


def ensemble(
    n: int = 200, seed: int = 7, days: float = 3.0
) -> tuple[list[Tick], dict[str, Market], list[Truth]]:
    rng = np.random.default_rng(seed)
    ticks: list[Tick] = []
    markets: dict[str, Market] = {}
    truths = []
    for k in range(n):
        tk, meta, truth = market(rng, k, days)
        ticks += tk
        markets[meta.id] = meta
        truths.append(truth)
    ticks.sort(key=lambda t: t.ts)
    return ticks, markets, truths


def write(out: Path, n: int, seed: int, days: float) -> None:
    ticks, markets, _ = ensemble(n, seed, days)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "synthetic.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ts", "market", "price"])
        for t in ticks:
            w.writerow([f"{t.ts:.3f}", t.market, f"{t.price:.4f}"])
    entries = [
        {
            "id": m.id,
            "title": m.title,
            "event_at": iso(m.event_at),
            "resolves_at": iso(m.resolves_at),
            "outcome": m.outcome,
            "tick_size": m.tick_size,
        }
        for m in markets.values()
    ]
    (out / "markets.json").write_text(json.dumps({"markets": entries}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--markets", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--days", type=float, default=3.0)
    args = parser.parse_args()
    write(args.out, args.markets, args.seed, args.days)


if __name__ == "__main__":
    main()
