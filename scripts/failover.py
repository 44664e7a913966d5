"""Failover figures for docs/scaling.md: two `riskd run` replicas on a real
nats-server, one shard, against the reference receiver; the leader is killed with
SIGKILL `--kills` times (default 20) mid-stream and restarted as the next standby.

For each kill: the time from the kill to the first batch of the new term accepted by
the receiver. At the end: the distribution, and the checks of tests/test_cluster.py
(no older version or lower epoch taken, nothing refused, nothing looser right after a
handover than right before it). Exit status 1 if a handover took `--limit-s` or more
or a check failed.

    python scripts/failover.py [--kills 20] [--lease-ttl-s 2.0]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # riskd and the fakes of tests/support

from tests.support import DaemonProcess, clean_env, wait_until, write_config  # noqa: E402
from tests.support.cluster import (  # noqa: E402
    Exchange,
    Ticker,
    check_history,
    epoch_of,
    handovers_not_looser,
    holders,
    replica_config,
)
from tests.support.nats import NatsServer  # noqa: E402


async def start(
    work: Path, name: str, ticker: Ticker, nats: NatsServer, ex: Exchange, ttl: float
) -> DaemonProcess:
    doc = replica_config(work, name, ticker.server.url, nats.url, ex.url, 1, ttl)
    config = write_config(work / f"{name}.toml", doc)
    daemon = DaemonProcess(config, int(doc["server"]["port"]), work, clean_env())
    await daemon.wait_healthy(30.0)
    return daemon


async def kill_once(
    daemons: dict[str, DaemonProcess], nats: NatsServer, ex: Exchange
) -> tuple[str, float]:
    leader = await wait_until(lambda: _leader(nats.url), 10.0, 0.02, what="a leader of shard 0")
    epoch = epoch_of(ex.state.accepted()[-1])[1]
    killed = time.monotonic()
    daemons[leader].proc.kill()

    def arrived() -> float | None:
        new = [a for a in ex.state.accepted(killed) if epoch_of(a)[1] > epoch]
        return new[0].at if new else None

    at = await wait_until(arrived, 30.0, 0.005, what="a batch of the new term")
    return leader, at - killed


async def _leader(url: str) -> str | None:
    return (await holders(url, 1)).get(0)


async def run(kills: int, ttl: float, limit: float) -> int:
    with tempfile.TemporaryDirectory(prefix="riskd-failover-") as tmp:
        work = Path(tmp)
        nats = NatsServer(work / "nats-store")
        nats.start()
        ex, ticker = Exchange(), Ticker()
        await ex.start()
        await ticker.start()
        daemons: dict[str, DaemonProcess] = {}
        try:
            for name in ("a", "b"):
                daemons[name] = await start(work, name, ticker, nats, ex, ttl)
            await wait_until(lambda: ex.state.accepted(), 30.0, what="the first batches")
            await asyncio.sleep(2.0)
            times = []
            for k in range(kills):
                leader, took = await kill_once(daemons, nats, ex)
                times.append(took)
                print(f"kill {k + 1:2d}: {leader} killed, new term published after {took:.3f} s")
                daemons[leader].close()
                daemons[leader] = await start(work, leader, ticker, nats, ex, ttl)
                await asyncio.sleep(1.5)  # the restarted replica warm again
            check_history(ex)
            compared = handovers_not_looser(ex)
        finally:
            for daemon in daemons.values():
                daemon.close()
            await ticker.close()
            await ex.close()
            nats.stop()
    report(times, ttl, compared)
    return 0 if max(times) < limit else 1


def report(times: list[float], ttl: float, compared: int) -> None:
    q = statistics.quantiles(times, n=20) if len(times) >= 2 else times
    print(
        f"\n{len(times)} handovers, lease_ttl_s = {ttl:g}: min {min(times):.3f} s, "
        f"median {statistics.median(times):.3f} s, p95 {q[-1]:.3f} s, max {max(times):.3f} s"
    )
    print(
        f"checks: no older version, no lower epoch, nothing refused; "
        f"{compared} sets compared across handovers, none looser"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--lease-ttl-s", type=float, default=2.0)  # the default
    parser.add_argument("--limit-s", type=float, default=2.0)
    args = parser.parse_args()
    return asyncio.run(run(args.kills, args.lease_ttl_s, args.limit_s))


if __name__ == "__main__":
    sys.exit(main())
