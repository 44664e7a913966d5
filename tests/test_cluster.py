"""Clustered riskd (docs/scaling.md): real nats-server, real `riskd run` replicas, the
reference receiver. Failover under kill -9, fencing when NATS goes away, shards
spread over replicas."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import yaml

from tests.support import REPO, DaemonProcess, wait_until
from tests.support.cluster import (
    Exchange,
    Ticker,
    check_history,
    epoch_of,
    handovers_not_looser,
    holders,
    replica_config,
)
from tests.support.config import check_manifest_config
from tests.support.nats import NatsServer, nats_binary

pytestmark = pytest.mark.skipif(
    nats_binary() is None and os.environ.get("CI") != "true",
    reason="nats-server not installed (make test-tools)",
)

TTL_S = 1.0
DEFAULT_TTL_S = 2.0  # [cluster] lease_ttl_s when not set
Start = Callable[..., Awaitable[DaemonProcess]]


@pytest.fixture
def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(tmp_path / "nats-store")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def exchange() -> AsyncIterator[Exchange]:
    ex = Exchange()
    await ex.start()
    yield ex
    await ex.close()


@pytest.fixture
async def ticker() -> AsyncIterator[Ticker]:
    t = Ticker()
    await t.start()
    yield t
    await t.close()


@pytest.fixture
def replica(
    tmp_path: Path,
    start_daemon: Start,
    nats_server: NatsServer,
    exchange: Exchange,
    ticker: Ticker,
) -> Callable[..., Awaitable[DaemonProcess]]:
    async def start(name: str, shards: int = 1, ttl: float = TTL_S) -> DaemonProcess:
        doc = replica_config(
            tmp_path, name, ticker.server.url, nats_server.url, exchange.url, shards, ttl
        )
        return await start_daemon(doc, name=f"{name}.toml")

    return start


async def leader_of(nats_url: str, shard: int = 0) -> str:
    async def held() -> str | None:
        return (await holders(nats_url, shard + 1)).get(shard)

    await wait_until(held, 10.0, what=f"a leader of shard {shard}")
    return str(await held())


async def first_arrival(exchange: Exchange, since: float, epoch_above: int) -> float:
    async def arrived() -> float | None:
        for a in exchange.state.accepted(since):
            if epoch_of(a)[1] > epoch_above:
                return a.at
        return None

    await wait_until(arrived, 10.0, 0.01, what="a batch of a new epoch")
    return float(await arrived())


async def test_a_standby_takes_over_within_two_seconds_of_a_kill(
    replica: Start, nats_server: NatsServer, exchange: Exchange
) -> None:
    # The default TTL: the standby takes the silent lease over before it lapses.
    daemons = {"a": await replica("a", ttl=DEFAULT_TTL_S)}
    await wait_until(lambda: exchange.state.accepted(), 15.0, what="batches from a")
    daemons["b"] = await replica("b", ttl=DEFAULT_TTL_S)
    await asyncio.sleep(1.5)  # b warm: it has the ticks a has
    handovers = []
    for _ in range(3):
        leader = await leader_of(nats_server.url)
        epoch = epoch_of(exchange.state.accepted()[-1])[1]
        killed = time.monotonic()
        daemons[leader].proc.kill()
        handovers.append(await first_arrival(exchange, killed, epoch) - killed)
        daemons[leader].close()
        daemons[leader] = await replica(leader, ttl=DEFAULT_TTL_S)
        await asyncio.sleep(1.0)
    assert all(h < 2.0 for h in handovers), handovers
    check_history(exchange)
    assert handovers_not_looser(exchange) > 0


async def test_leaders_go_silent_without_nats_and_resume_after(
    replica: Start, nats_server: NatsServer, exchange: Exchange
) -> None:
    await replica("a", shards=2)
    await replica("b", shards=2)
    await wait_until(
        lambda: {epoch_of(a)[0] for a in exchange.state.accepted()} == {0, 1},
        15.0,
        what="batches of both shards",
    )
    stopped = time.monotonic()
    nats_server.stop()
    await asyncio.sleep(TTL_S + 1.0)
    late = exchange.state.accepted(stopped + TTL_S)
    assert late == [], f"{len(late)} batches after the leases lapsed"
    nats_server.start()
    restarted = time.monotonic()
    await wait_until(
        lambda: {epoch_of(a)[0] for a in exchange.state.accepted(restarted)} == {0, 1},
        15.0,
        what="both shards published again",
    )
    await asyncio.sleep(1.0)
    # One leader per shard: one epoch per shard since then.
    since = exchange.state.accepted(restarted + 0.5)
    epochs: dict[int, set[int]] = {}
    for a in since:
        shard, epoch = epoch_of(a)
        epochs.setdefault(shard, set()).add(epoch)
    assert all(len(e) == 1 for e in epochs.values()), epochs
    check_history(exchange)


async def test_three_replicas_share_eight_shards(
    replica: Start, nats_server: NatsServer, exchange: Exchange
) -> None:
    daemons = {name: await replica(name, shards=8) for name in ("a", "b", "c")}

    async def spread(names: set[str], low: int, high: int) -> bool:
        held = await holders(nats_server.url, 8)
        counts = [list(held.values()).count(n) for n in names]
        return (
            len(held) == 8
            and set(held.values()) == names
            and low <= min(counts)
            and max(counts) <= high
        )

    await wait_until(lambda: spread({"a", "b", "c"}, 2, 3), 20.0, 0.1, what="2 or 3 shards each")
    gone = (await holders(nats_server.url, 8))[0]
    daemons[gone].proc.kill()
    killed = time.monotonic()
    rest = {"a", "b", "c"} - {gone}
    await wait_until(lambda: spread(rest, 4, 4), 20.0, 0.1, what="4 shards each")
    await wait_until(
        lambda: (
            {epoch_of(a)[0] for a in exchange.state.accepted(killed + 3 * TTL_S)} == set(range(8))
        ),
        10.0,
        what="all eight shards published",
    )
    check_history(exchange)


def test_kubernetes_cluster_config_passes_check_config(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all((REPO / "deploy/kubernetes/riskd-cluster.yaml").read_text()))
    riskd = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "riskd")
    assert riskd["spec"]["replicas"] == 2
    assert any(d["kind"] == "Service" and d["metadata"]["name"] == "riskd-nats" for d in docs)
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    done = check_manifest_config(config, tmp_path, RISKD_CLUSTER__REPLICA="riskd-0")
    assert done.returncode == 0, done.stderr
