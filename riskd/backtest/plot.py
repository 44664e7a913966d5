"""`riskd backtest --plot`: price, each policy's leverage, riskd's fee and the jumps."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from riskd.backtest.simulate import Simulation


def plot(sim: Simulation, out: Path, market: str | None = None, title: str = "") -> None:
    """Write a PNG for one market (the busiest one unless named)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render to a file
    import matplotlib.pyplot as plt

    if sim.series is None:
        raise ValueError("the simulation did not record series (record=True)")
    if market is None:
        i = max(range(len(sim.ids)), key=lambda k: len(sim.series[k].t))  # type: ignore[index]
    else:
        i = sim.ids.index(market)
    s = sim.series[i]
    when = [datetime.fromtimestamp(t, UTC) for t in s.t]
    jumps = [datetime.fromtimestamp(t, UTC) for t in sim.jump_times[i]]

    fig, (ax_p, ax_l, ax_f) = plt.subplots(
        3, 1, figsize=(11, 8), sharex=True, height_ratios=[2, 2, 1]
    )
    ax_p.plot(when, s.p, color="black", lw=0.9, label="YES probability")
    for j in jumps:
        ax_p.axvline(j, color="tab:red", alpha=0.35, lw=0.8)
    ax_p.set_ylim(0, 1)
    ax_p.set_ylabel("price")
    ax_p.set_title(title or sim.ids[i])
    if jumps:
        ax_p.plot([], [], color="tab:red", alpha=0.5, label="jump detected")
    ax_p.legend(loc="upper left", fontsize=8)

    for name, lev in s.leverage.items():
        ax_l.step(
            when,
            lev,
            where="post",
            lw=1.4 if name == "riskd" else 0.9,
            label=name,
            alpha=1.0 if name == "riskd" else 0.7,
        )
    ax_l.set_yscale("log")
    ax_l.set_ylabel("max leverage offered")
    ax_l.legend(loc="upper left", fontsize=8, ncol=5)

    ax_f.step(when, [f * 100 for f in s.fee], where="post", color="tab:purple", lw=0.9)
    ax_f.set_ylabel("riskd fee, %/hour")
    ax_f.set_yscale("log")
    fig.autofmt_xdate()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
