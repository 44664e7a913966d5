"""The bundled tape's audit log, made deterministically (no wall clock involved).

The daemon is built from config/riskd.toml, but driven here rather than run: the
replay at full speed, and a cycle at every `--cycle-s` of event time. Two commits whose
behaviour is the same write the same file (refactoring check:
`python scripts/audit_replay.py out.jsonl` on both, then `cmp`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path

from riskd.app import Daemon
from riskd.config import load_settings
from riskd.feeds import replay as replay_feed

ROOT = Path(__file__).resolve().parent.parent


async def replay(out: Path, cycle_s: float) -> int:
    with tempfile.TemporaryDirectory() as state:
        os.environ.update(
            {
                "RISKD_FEED__SPEED": "0",
                "RISKD_PUBLISHER__JSONL__PATH": str(out),
                "RISKD_STATE__DIR": state,
                "RISKD_STATE__ENABLED": "false",
                "RISKD_SERVER__ENABLED": "false",
            }
        )
        settings = load_settings(ROOT / "config/riskd.toml")
        replay_feed.BATCH_MAX = 1  # the clock moves tick by tick
        daemon = Daemon(settings, None)
        for pub in daemon.publishers:
            await pub.start()
        next_cycle = None
        async for batch in daemon.feed.ticks():
            daemon.engine.enqueue(batch, None)
            ts = batch[-1].ts
            if next_cycle is None:
                next_cycle = ts
            while ts >= next_cycle:
                daemon.cycle()
                next_cycle += cycle_s
        daemon.cycle()
        for pub in daemon.publishers:
            await pub.drain(10.0)
            await pub.close()
        return daemon.seq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--cycle-s", type=float, default=60.0)
    args = parser.parse_args()
    args.out.unlink(missing_ok=True)
    batches = asyncio.run(replay(args.out, args.cycle_s))
    print(f"{batches} batches -> {args.out}")


if __name__ == "__main__":
    main()
