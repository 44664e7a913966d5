"""NATS as a transport (issue 16, item 4): `[feed] kind = "nats"` and
`[publisher.nats]`, the daemon in-process against a real nats-server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from nats.js.api import StreamConfig

from tests.support import InProcessDaemon, base_config, http_get, now_ms, sample, wait_until
from tests.support.nats import NatsServer, nats_binary

pytestmark = pytest.mark.skipif(
    nats_binary() is None and os.environ.get("CI") != "true",
    reason="nats-server not installed (make test-tools)",
)

STALE_AFTER_S = 1.0
TICKS = "venue.prices"
PARAMS = "riskd.params"
MAPPING = {
    "venue": "exchange",
    "items": "data",
    "timestamp_unit": "ms",
    "price_scale": 0.01,
    "fields": {"market": "sym", "price": "", "bid": "b", "ask": "a", "timestamp": "t"},
    "backoff_initial_s": 0.05,
    "backoff_max_s": 0.2,
}


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats-store")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def client(nats_server: NatsServer) -> AsyncIterator[Any]:
    nc = await nats.connect(nats_server.url, reconnect_time_wait=0.05, max_reconnect_attempts=-1)
    yield nc
    await nc.close()


def nats_config(tmp_path: Path, url: str, jetstream: bool = False) -> dict[str, Any]:
    path = tmp_path / "markets.json"
    path.write_text(
        json.dumps({"markets": [{"id": "fed-hold", "resolves_at": "2030-01-01T00:00:00Z"}]}),
        encoding="utf-8",
    )
    doc = base_config(
        tmp_path,
        0,
        feed={"kind": "nats", "nats": {**MAPPING, "url": url, "subject": TICKS}},
        markets={"file": str(path)},
        model={"warmup_s": 0.0, "warmup_ticks": 3},
        governor={"publish_interval_s": 0.05, "stale_after_s": STALE_AFTER_S, "ttl_s": 5.0},
    )
    doc["feed"].pop("path", None)
    doc["feed"].pop("speed", None)
    doc["publisher"]["nats"] = {"url": url, "subject": PARAMS, "jetstream": jetstream}
    return doc


async def entry(d: InProcessDaemon) -> dict[str, Any] | None:
    status, body = await d.get_json("/v1/params/fed-hold")
    return body if status == 200 else None


async def metric(d: InProcessDaemon, name: str, **labels: str) -> float | None:
    status, _, text = await http_get(d.url + "/metrics")
    assert status == 200
    return sample(text, name, **labels)


async def send(nc: Any, bid: Any, ask: Any = 63) -> None:
    await nc.publish(
        TICKS, orjson.dumps({"data": [{"sym": "fed-hold", "b": bid, "a": ask, "t": now_ms()}]})
    )
    await nc.flush()


async def test_ticks_from_a_subject_and_batches_to_another(
    tmp_path: Path, in_process: Any, nats_server: NatsServer, client: Any
) -> None:
    batches: list[dict[str, Any]] = []

    async def got(msg: Any) -> None:
        batches.append(orjson.loads(msg.data))

    await client.subscribe(PARAMS, cb=got)
    d = await in_process(nats_config(tmp_path, nats_server.url))
    d.start()

    async def priced(p: float) -> bool:
        await send(client, round(p * 100) - 1, round(p * 100) + 1)
        e = await entry(d)
        return e is not None and abs(e["inputs"]["p"] - p) < 1e-9

    await wait_until(lambda: priced(0.62), 10.0, 0.05, what="p from the subject")
    await wait_until(lambda: priced(0.71), 5.0, 0.05, what="p moved")
    # The daemon's batches, as rendered for every publisher, on the publisher's subject.
    await wait_until(
        lambda: any(
            e["market"] == "fed-hold" and abs(e["inputs"]["p"] - 0.71) < 1e-9
            for b in batches
            for e in b["params"]
        ),
        5.0,
        what="a batch with the new p on the subject",
    )
    assert [b["seq"] for b in batches] == sorted(b["seq"] for b in batches)
    assert (await metric(d, "riskd_publishes_total", publisher="nats", result="ok") or 0) >= 1

    # Malformed messages: counted by reason, the feed goes on.
    await send(client, "x")
    await client.publish(TICKS, b"{not json")
    await wait_until(
        lambda: _rejections(d, {"bad_price": 1, "bad_json": 1}), 5.0, what="counted rejections"
    )

    # The server goes away: the market goes to its fail-safe values within
    # stale_after_s; back, the feed reconnects and prices it again.
    nats_server.stop()
    stopped = time.monotonic()

    async def fail_safe() -> bool:
        e = await entry(d)
        return e is not None and "stale_feed" in e["reasons"]

    await wait_until(fail_safe, 5.0, 0.02, what="fail-safe values")
    assert time.monotonic() - stopped < STALE_AFTER_S + 0.3
    e = await entry(d)
    assert e is not None and e["max_leverage"] == {"long": 1.0, "short": 1.0}
    status, body = await d.get_json("/readyz")
    assert status == 503 and "feed_down:exchange" in body["reasons"], body
    nats_server.start()
    await wait_until(lambda: priced(0.55), 10.0, 0.05, what="p after the server is back")
    assert await metric(d, "riskd_feed_reconnects_total", venue="exchange") == 1


async def _rejections(d: InProcessDaemon, want: dict[str, int]) -> bool:
    for reason, n in want.items():
        if await metric(d, "riskd_ticks_rejected_total", venue="exchange", reason=reason) != n:
            return False
    return True


async def test_batches_to_a_jetstream_stream_with_acks(
    tmp_path: Path, in_process: Any, nats_server: NatsServer, client: Any
) -> None:
    js = client.jetstream()
    await js.add_stream(StreamConfig(name="PARAMS", subjects=[PARAMS]))
    d = await in_process(nats_config(tmp_path, nats_server.url, jetstream=True))
    d.start()

    async def stored() -> bool:
        await send(client, 61)
        info = await js.stream_info("PARAMS")
        return info.state.messages >= 2

    await wait_until(stored, 10.0, 0.05, what="batches stored in the stream")
    await d.stop()
    last = await js.get_last_msg("PARAMS", PARAMS)
    doc = orjson.loads(last.data)
    assert last.headers is not None
    assert last.headers["Nats-Msg-Id"] == f"{doc['instance']}:{doc['seq']}"
    ok = await metric(d, "riskd_publishes_total", publisher="nats", result="ok")
    assert ok == (await js.stream_info("PARAMS")).state.messages
