"""Clustered riskd under test (tests/test_cluster.py, scripts/failover.py): a venue
that keeps ticking, the reference receiver (riskd/receiver.py) recording what it
accepted, replica configs, and the shard leases read from NATS."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import orjson
from aiohttp import web
from nats.js.errors import NotFoundError

from riskd.model.governor import MODES
from riskd.receiver import STATE, ReceiverConfig, ReceiverState, Verdict, make_app
from tests.support.config import INSTANCE, SECRET, base_config, free_port
from tests.support.venues import VenueServer, now_ms

MARKETS = [f"m{i}" for i in range(12)]


@dataclass
class Arrival:
    at: float  # monotonic
    status: int
    body: dict[str, Any]


class RecordingState(ReceiverState):
    """The reference receiver, keeping every verdict with its body."""

    def __init__(self, cfg: ReceiverConfig) -> None:
        super().__init__(cfg)
        self.arrivals: list[Arrival] = []
        # For each accepted batch: the sets in force just before it, of its markets.
        self.before: list[dict[str, dict[str, Any]]] = []

    def receive(self, headers: dict[str, str], raw: bytes, wall_now: float) -> Verdict:
        try:
            body = orjson.loads(raw)
            before = {e["market"]: self.current.get(e["market"]) for e in body["params"]}
        except (orjson.JSONDecodeError, KeyError, TypeError):
            body, before = {}, {}
        verdict = super().receive(headers, raw, wall_now)
        self.arrivals.append(Arrival(time.monotonic(), verdict.status, body))
        if verdict.status == 200:
            self.before.append({m: e for m, e in before.items() if e is not None})
        return verdict

    def accepted(self, since: float = -math.inf) -> list[Arrival]:
        return [a for a in self.arrivals if a.status == 200 and a.at >= since]


@dataclass
class Exchange:
    state: RecordingState = field(default_factory=lambda: RecordingState(_cfg()))
    runner: web.AppRunner | None = None
    url: str = ""

    async def start(self) -> None:
        app = make_app(_cfg())
        app[STATE] = self.state
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/risk-params"

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def _cfg() -> ReceiverConfig:
    return ReceiverConfig(secret=SECRET.encode())


class Ticker:
    """A venue whose markets tick every `every` seconds, a random walk each."""

    def __init__(self, every: float = 0.1, seed: int = 7) -> None:
        self.server = VenueServer(path="/prices")
        self.every = every
        self.rng = random.Random(seed)
        self.price = {m: 50 for m in MARKETS}
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.server.start()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            data = []
            for market in MARKETS:
                p = min(90, max(10, self.price[market] + self.rng.choice((-1, 0, 1))))
                self.price[market] = p
                data.append({"sym": market, "b": p - 1, "a": p + 1, "t": now_ms()})
            await self.server.send({"data": data})
            await asyncio.sleep(self.every)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.server.drop()
        await self.server.close()


def replica_config(
    workdir: Path,
    name: str,
    venue_url: str,
    nats_url: str,
    exchange_url: str,
    shards: int = 1,
    lease_ttl_s: float = 1.0,
) -> dict[str, Any]:
    """A replica: the venue's markets, HTTP to the receiver, its own audit log and state."""
    home = workdir / name
    home.mkdir(parents=True, exist_ok=True)
    markets = home / "markets.json"
    markets.write_text(
        json.dumps(
            {"markets": [{"id": m, "resolves_at": "2030-01-01T00:00:00Z"} for m in MARKETS]}
        ),
        encoding="utf-8",
    )
    doc = base_config(
        home,
        free_port(),
        feed={
            "kind": "websocket",
            "url": venue_url,
            "websocket": {
                "venue": "exchange",
                "items": "data",
                "timestamp_unit": "ms",
                "price_scale": 0.01,
                "fields": {"market": "sym", "price": "", "bid": "b", "ask": "a", "timestamp": "t"},
                "backoff_initial_s": 0.05,
                "backoff_max_s": 0.2,
            },
        },
        markets={"file": str(markets)},
        model={"warmup_s": 0.0, "warmup_ticks": 3},
        governor={"publish_interval_s": 0.1, "stale_after_s": 2.0, "ttl_s": 5.0},
        publisher={"http": {"url": exchange_url, "secret": SECRET}},
        cluster={
            "nats_url": nats_url,
            "shards": shards,
            "lease_ttl_s": lease_ttl_s,
            "replica": name,
            "history_s": 60.0,
        },
    )
    doc["feed"].pop("path", None)
    doc["feed"].pop("speed", None)
    assert doc["publisher"]["instance"] == INSTANCE
    return doc


async def holders(nats_url: str, shards: int, bucket: str = "riskd_leases") -> dict[int, str]:
    """shard -> the replica holding its lease now (free shards left out)."""
    nc = await nats.connect(nats_url, connect_timeout=1, max_reconnect_attempts=0)
    try:
        kv = await nc.jetstream().key_value(bucket)
        out: dict[int, str] = {}
        for shard in range(shards):
            with contextlib.suppress(NotFoundError):
                entry = await kv.get(f"shard-{shard}")
                if entry.value:
                    out[shard] = entry.value.decode()
        return out
    finally:
        await nc.close()


def epoch_of(arrival: Arrival) -> tuple[int, int]:
    return int(arrival.body["shard"]), int(arrival.body["epoch"])


def looser(after: dict[str, Any], before: dict[str, Any]) -> bool:
    """A set looser than another: more leverage on a side, or a laxer mode."""
    modes = MODES
    lev = any(
        after["max_leverage"][s] > before["max_leverage"][s] + 1e-9 for s in ("long", "short")
    )
    mode = (
        after["mode"] in modes
        and before["mode"] in modes
        and modes.index(after["mode"]) < modes.index(before["mode"])
    )
    return lev or mode


def check_history(exchange: Exchange) -> None:
    """Never an older version nor a lower epoch taken; nothing refused."""
    state = exchange.state
    assert state.stats["rejected"] == {}, state.stats
    assert state.stats["stale_sets"] == 0, state.stats
    highest: dict[int, int] = {}
    versions: dict[str, int] = {}
    for arrival in state.accepted():
        shard, epoch = epoch_of(arrival)
        assert epoch >= highest.get(shard, 0)
        highest[shard] = epoch
        for entry in arrival.body["params"]:
            assert entry["version"] > versions.get(entry["market"], 0)
            versions[entry["market"]] = entry["version"]


def handovers_not_looser(exchange: Exchange) -> int:
    """The first sets of each new epoch are no looser than those in force before them."""
    state = exchange.state
    seen: dict[int, int] = {}
    checked = 0
    for arrival, before in zip(state.accepted(), state.before, strict=True):
        shard, epoch = epoch_of(arrival)
        if shard in seen and epoch > seen[shard]:
            for entry in arrival.body["params"]:
                old = before.get(entry["market"])
                if old is not None:
                    assert not looser(entry, old), (entry, old)
                    checked += 1
        seen[shard] = epoch
    return checked
