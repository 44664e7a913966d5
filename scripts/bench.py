"""`make bench`: speed figures, printed (never asserted in unit tests).

The backtest on the shipped tapes, then riskd against a local venue
(scripts/bench_live.py, whose options this takes too: `--quick`, `--markets`, ...).
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import bench_live

from riskd.backtest import runner
from riskd.config import load_settings
from riskd.tape import Tape

ROOT = Path(__file__).resolve().parent.parent
TAPES = (ROOT / "data/tapes/polymarket_midterms_2022", ROOT / "data/tapes/fed_dec2025")


def best_of(n: int, fn) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def backtests(repeat: int) -> None:
    settings = load_settings(ROOT / "config/riskd.toml")
    print(f"machine: {platform.machine()}, {bench_live.cpus()}, "
          f"python {platform.python_version()}; best of {repeat}")
    print(f"{'what':<48} {'rows':>8} {'seconds':>8} {'rows/s':>10}")
    for path in TAPES:
        rows = sum(1 for _ in Tape(path))
        read = best_of(repeat, lambda p=path: sum(1 for _ in Tape(p)))
        print(f"{'tape read ' + path.name:<48} {rows:>8} {read:>8.3f} {rows / read:>10,.0f}")
        # The first run in a process also loads the compiled model kernels from their
        # cache (riskd/jit.py): shown apart, as `riskd backtest` pays it once per call.
        simulated: list[float] = []
        first = best_of(1, lambda p=path: runner.run(p, settings, settle=True))
        print(f"{'riskd backtest ' + path.name + ', first run':<48} {rows:>8} {first:>8.3f} "
              f"{rows / first:>10,.0f}")
        whole = best_of(repeat, lambda p=path, out=simulated: out.append(
            runner.run(p, settings, settle=True)[2]))
        print(f"{'riskd backtest ' + path.name:<48} {rows:>8} {whole:>8.3f} "
              f"{rows / whole:>10,.0f}")
        print(f"{'  of which the simulation':<48} {rows:>8} {min(simulated):>8.3f} "
              f"{rows / min(simulated):>10,.0f}", flush=True)


def main() -> None:
    args = bench_live.parse_args(sys.argv[1:])
    backtests(1 if args.quick else 3)
    print()
    bench_live.run(args)


if __name__ == "__main__":
    main()
