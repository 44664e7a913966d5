"""Resource bounds (issue 6): every queue bounded with a stated overflow policy, memory
per market constant, no growth from market ids a feed makes up.

The queues and their policies (docs/reliability.md has the table):
- venue socket -> codec: the websocket reader's buffer (it stops reading the socket
  at 512 KiB of messages, each at most `max_message_bytes`); a bigger frame closes the
  connection (counted `message_too_big`) and the feed reconnects.
- feed -> engine: `Engine.enqueue` keeps ticks for the next cycle, at most MAX_PENDING;
  beyond, it applies them at once (no tick dropped: the jump detector sees them all).
- engine -> HTTP exchange: one pending set per market, the newest wins (coalesced).
- engine -> /v1/stream clients: `max_backlog` batches per client, then it is cut off.
- audit log: written in the cycle, no queue.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from riskd import engine as engine_module
from riskd.config import Settings
from riskd.engine import Engine
from riskd.feeds import metadata
from riskd.feeds.base import Tick
from riskd.markets import Market
from tests.support import VenueServer, base_config, http_get, now_ms, sample, wait_until

BASE_T = 1_770_000_000.0
KNOWN = {m: Market(m, BASE_T + 86_400 * 30, BASE_T + 86_400 * 30) for m in ("a", "b", "c")}


def test_a_flood_of_unknown_market_ids_does_not_grow_the_engine() -> None:
    engine = Engine(Settings(), KNOWN, discover=False)
    flood = [Tick(f"spam-{i}", BASE_T, 0.5) for i in range(20_000)]
    result = engine.ingest(flood, now=BASE_T)
    assert result.rejected == {"unknown_market": 20_000} and len(engine) == len(KNOWN)
    assert len(engine.index) == len(KNOWN) and engine.est.t.shape == (len(KNOWN),)


def test_discovery_is_capped() -> None:
    settings = Settings(markets={"discover_max": 100})
    engine = Engine(settings, KNOWN, discover=True)
    result = engine.ingest([Tick(f"new-{i}", BASE_T, 0.5) for i in range(500)], now=BASE_T)
    assert result.accepted == 100 and result.rejected == {"discover_limit": 400}
    assert len(engine) == len(KNOWN) + 100
    # Ticks of a market already discovered still count.
    assert engine.ingest([Tick("new-7", BASE_T + 1, 0.5)], now=BASE_T + 1).accepted == 1


def test_the_pending_ticks_are_bounded_and_none_is_lost(monkeypatch: Any) -> None:
    """No cycle runs (a stalled publisher, a slow model): enqueue applies the backlog
    itself once it reaches MAX_PENDING, every tick in order."""
    monkeypatch.setattr(engine_module, "MAX_PENDING", 1000)
    engine = Engine(Settings(), KNOWN, discover=False)
    largest = 0
    for k in range(50):
        batch = [
            Tick(m, BASE_T + k * 100 + j, 0.5 + 0.001 * (j % 7)) for j in range(100) for m in KNOWN
        ]
        assert engine.enqueue(batch).accepted == len(batch)
        largest = max(largest, len(engine._pending))
    assert largest <= 1000
    engine.flush()
    assert engine.est.ticks.tolist() == [5000] * len(KNOWN)
    assert engine.est.t.tolist() == [BASE_T + 49 * 100 + 99] * len(KNOWN)


def footprint(obj: Any, depth: int = 2) -> int:
    """Bytes of numpy arrays plus entries of containers reachable through attributes:
    what grows if anything is kept per tick or per cycle."""
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, dict | list | set | tuple):
        return len(obj) + (
            sum(footprint(v, depth - 1) for v in (obj.values() if isinstance(obj, dict) else obj))
            if depth > 0
            else 0
        )
    if depth > 0 and hasattr(obj, "__dict__"):
        return sum(footprint(v, depth - 1) for v in vars(obj).values())
    if depth > 0 and dataclasses.is_dataclass(obj):
        return sum(footprint(getattr(obj, f.name), depth - 1) for f in dataclasses.fields(obj))
    return 0


def test_memory_per_market_is_constant() -> None:
    """Hours of ticks and cycles for the same markets: nothing in the engine grows."""
    engine = Engine(Settings(), KNOWN, discover=False)
    rng = np.random.default_rng(3)
    t = BASE_T

    def run(cycles: int) -> None:
        nonlocal t
        for _ in range(cycles):
            for _ in range(20):
                t += 1.0
                engine.enqueue(
                    [Tick(m, t, float(np.clip(0.5 + rng.normal(0, 0.02), 0, 1))) for m in KNOWN]
                )
            engine.cycle(t)

    run(50)
    before = footprint(engine)
    run(500)  # 10,000 more ticks per market, 500 cycles
    assert footprint(engine) == before
    assert len(engine) == len(KNOWN) and len(engine._pending) == 0


async def test_a_live_feed_flooding_unknown_ids_and_hostile_frames(
    tmp_path: Path, in_process: Any
) -> None:
    """Through the daemon: unknown ids, a time in the future and an oversized frame
    are counted by reason; the market table stays as configured; prices still flow."""
    server = VenueServer(path="/prices")
    await server.start()
    try:
        markets = tmp_path / "markets.json"
        markets.write_text(
            json.dumps({"markets": [{"id": "fed-hold", "resolves_at": "2030-01-01T00:00:00Z"}]}),
            encoding="utf-8",
        )
        doc = base_config(
            tmp_path,
            0,
            markets={"file": str(markets)},
            feed={
                "kind": "websocket",
                "url": server.url,
                "max_future_s": 5.0,
                "websocket": {
                    "backoff_initial_s": 0.05,
                    "backoff_max_s": 0.2,
                    "max_message_bytes": 4096,
                },
            },
            governor={"publish_interval_s": 0.05, "ttl_s": 5.0},
            model={"warmup_s": 0.0, "warmup_ticks": 2},
        )
        d = await in_process(doc)
        d.start()
        await wait_until(lambda: _true(bool(server.connections)), what="a connection")

        async def metric(reason: str) -> float:
            _, _, text = await http_get(d.url + "/metrics")
            return (
                sample(text, "riskd_ticks_rejected_total", venue="websocket", reason=reason) or 0.0
            )

        for k in range(10):  # 500 made-up ids, 50 per frame (each under 4 KiB)
            await server.send(
                [{"market": f"spam-{k}-{i}", "price": 0.5, "ts": now_ms()} for i in range(50)]
            )
        await server.send({"market": "fed-hold", "price": 0.5, "ts": now_ms() + 60_000})
        await wait_until(lambda: _equals(metric("unknown_market"), 500), what="unknown ids")
        await wait_until(lambda: _equals(metric("future_ts"), 1), what="the future tick")
        assert len(d.daemon.engine) == 1

        await server.send({"market": "fed-hold", "price": 0.5, "pad": "x" * 8192, "ts": now_ms()})
        await wait_until(lambda: _equals(metric("message_too_big"), 1), what="the big frame")
        await wait_until(lambda: _true(server.handshakes >= 2), what="the reconnection")
        for k in range(3):
            await server.send({"market": "fed-hold", "price": 0.5 + 0.01 * k, "ts": now_ms()})

        async def priced() -> bool:
            status, body = await d.get_json("/v1/params/fed-hold")
            return status == 200 and body["inputs"]["p"] > 0.5

        await wait_until(priced, what="prices after the flood")
        assert len(d.daemon.engine) == 1
    finally:
        server.drop()
        await server.close()


async def _equals(value: Any, want: float) -> bool:
    return bool(await value == want)


async def _true(value: bool) -> bool:
    return value


async def test_an_oversized_metadata_response_is_refused(monkeypatch: Any) -> None:
    """The venues' REST market lists are read with a size limit too."""
    monkeypatch.setattr(metadata, "MAX_RESPONSE_BYTES", 1 << 16)

    async def handler(request: web.Request) -> web.Response:
        return web.json_response([{"pad": "x" * (1 << 17)}])

    app = web.Application()
    app.router.add_get("/markets", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/markets"
    try:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(metadata.MetadataError, match="larger than"):
                await metadata.get_json(session, url, [])
            monkeypatch.setattr(metadata, "MAX_RESPONSE_BYTES", 1 << 20)
            assert len(await metadata.get_json(session, url, [])) == 1
    finally:
        await runner.cleanup()


async def test_the_audit_log_rotates_into_a_bounded_number_of_files(tmp_path: Path) -> None:
    from riskd.publish.base import Batch
    from riskd.publish.jsonl import JsonlPublisher, read_audit

    class Stats:
        def published(self, publisher: str, result: str, latency_s: float | None) -> None:
            pass

        def circuit(self, publisher: str, is_open: bool) -> None:
            pass

    path = tmp_path / "audit.jsonl"
    pub = JsonlPublisher(path, Stats(), max_bytes=2000, backups=3)
    await pub.start()
    entry = {"market": "a", "version": 1, "pad": "x" * 400}
    for seq in range(1, 101):
        pub.submit(Batch("i", seq, "2026-01-01T00:00:00Z", [entry]))
    await pub.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2", "audit.jsonl.3"]
    seqs = [
        b["seq"]
        for name in ("audit.jsonl.3", "audit.jsonl.2", "audit.jsonl.1", "audit.jsonl")
        for b in read_audit(tmp_path / name)
    ]
    assert seqs == list(range(seqs[0], 101))  # the newest kept, in order, no gap
    assert all(p.stat().st_size <= 2000 + 600 for p in tmp_path.iterdir())
