"""`make bench`: speed figures, printed (never asserted in unit tests)."""

from __future__ import annotations

import platform
import time
from pathlib import Path

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


def main() -> None:
    settings = load_settings(ROOT / "config/riskd.toml")
    print(f"machine: {platform.machine()}, python {platform.python_version()}")
    print(f"{'what':<48} {'rows':>8} {'seconds':>8} {'rows/s':>10}")
    for path in TAPES:
        rows = sum(1 for _ in Tape(path))
        read = best_of(3, lambda p=path: sum(1 for _ in Tape(p)))
        print(f"{'tape read ' + path.name:<48} {rows:>8} {read:>8.3f} {rows / read:>10,.0f}")
        whole = best_of(2, lambda p=path: runner.run(p, settings, settle=True))
        print(f"{'riskd backtest ' + path.name:<48} {rows:>8} {whole:>8.3f} "
              f"{rows / whole:>10,.0f}")


if __name__ == "__main__":
    main()
