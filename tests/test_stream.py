"""The WebSocket publisher `/v1/stream` with a `websockets` client on 127.0.0.1: snapshot on
connect then every batch, the bearer token, a slow consumer cut off while a fast one
gets everything, and several publishers at once where a dead exchange blocks nobody."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from riskd.publish.base import Batch
from tests.support import (
    FED_TAPE,
    SECRET,
    InProcessDaemon,
    Receiver,
    base_config,
    read_audit,
    wait_until,
)

TOKEN = "stream-token-7d1"


def ws_url(d: InProcessDaemon) -> str:
    return d.url.replace("http://", "ws://") + "/v1/stream"


async def collect(ws: ClientConnection, into: list[dict[str, Any]]) -> None:
    """Read until the server closes the connection."""
    try:
        async for raw in ws:
            into.append(json.loads(raw))
    except ConnectionClosed:
        pass


def stream_doc(tmp_path: Path, **stream: Any) -> dict[str, Any]:
    return base_config(
        tmp_path, 0, feed={"path": str(FED_TAPE), "speed": 1e6}, publisher={"websocket": stream}
    )


async def test_snapshot_on_connect_then_every_batch(tmp_path: Path, in_process: Any) -> None:
    d = await in_process(stream_doc(tmp_path))
    d.start()

    async def some_batches() -> bool:
        return d.daemon.seq >= 3

    await wait_until(some_batches, what="a few batches")
    got: list[dict[str, Any]] = []
    async with connect(ws_url(d)) as ws:
        reader = asyncio.create_task(collect(ws, got))
        await wait_until(
            lambda: _true(bool(d.daemon.feed.finished)), timeout=15, what="the end of the replay"
        )
        assert await d.stop() == 0  # the publisher closes the stream (going away)
        await asyncio.wait_for(reader, 5)

    snapshot, batches = got[0], got[1:]
    assert snapshot["snapshot"] is True and snapshot["instance"] == "riskd-test"
    audit = read_audit(tmp_path / "audit.jsonl")
    # Then every batch after the snapshot, in order, exactly as the audit log has it.
    first = snapshot["seq"] + 1
    assert [b["seq"] for b in batches] == list(range(first, audit[-1]["seq"] + 1))
    assert batches == [b for b in audit if b["seq"] >= first]
    # The snapshot is every market's newest set as of its seq.
    newest: dict[str, dict[str, Any]] = {}
    for b in audit:
        if b["seq"] <= snapshot["seq"]:
            newest.update({e["market"]: e for e in b["params"]})
    assert {e["market"]: e for e in snapshot["params"]} == newest
    # Snapshot + batches is what the daemon holds.
    held = dict(newest)
    for b in batches:
        held.update({e["market"]: e for e in b["params"]})
    assert held == d.daemon.engine.current


async def test_stream_token(tmp_path: Path, in_process: Any) -> None:
    d = await in_process(stream_doc(tmp_path, token=TOKEN))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url(d), additional_headers=headers):
                pass
        assert refused.value.response.status_code == 401
    async with connect(ws_url(d), additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert first["snapshot"] is True and first["params"] == []


async def test_slow_consumer_is_cut_off_and_others_get_everything(
    tmp_path: Path, in_process: Any
) -> None:
    d = await in_process(stream_doc(tmp_path, max_backlog=4))
    stream = d.daemon.stream
    assert stream is not None
    fast_got: list[dict[str, Any]] = []
    fast = await connect(ws_url(d), max_size=None)
    fast_reader = asyncio.create_task(collect(fast, fast_got))
    # The slow one reads nothing: a small receive buffer and a one-message client queue,
    # so the server's writes back up after a few hundred kilobytes.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", int(d.url.rsplit(":", 1)[1])))
    slow = await connect(ws_url(d), sock=sock, max_queue=1, max_size=None)
    await wait_until(lambda: _true(len(stream.clients) == 2), what="two clients")

    payload = [{"market": f"m{k}", "version": 1, "pad": "x" * 1000} for k in range(64)]
    sent = 0
    started = time.monotonic()

    async def send_one() -> None:
        """One batch; the fast client reads it before the next (the slow one reads none)."""
        nonlocal sent
        sent += 1
        stream.submit(Batch("riskd-test", sent, "2026-01-01T00:00:00.000Z", payload))
        await wait_until(
            lambda: _true(len(fast_got) == sent + 1),
            timeout=5,
            what=f"the fast client to get batch {sent}",
        )

    while len(stream.clients) == 2 and sent < 2000:
        await send_one()
    assert len(stream.clients) == 1, "the slow consumer was never cut off"
    for _ in range(5):  # the fast client goes on getting every batch
        await send_one()
    assert time.monotonic() - started < 20
    # The fast client got every batch, before and after the slow one was cut off.
    assert [m["seq"] for m in fast_got[1:]] == list(range(1, sent + 1))

    # The slow client finds its connection closed once it reads what reached it.
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(slow.recv(), 10)
    if closed.value.rcvd is not None:  # else the close frame itself could not get through
        assert closed.value.rcvd.code == 1008
    registry = d.daemon.metrics.registry
    assert (
        registry.get_sample_value(
            "riskd_publishes_total", {"publisher": "websocket", "result": "slow_consumer"}
        )
        == 1
    )
    assert (
        registry.get_sample_value(
            "riskd_publishes_total", {"publisher": "websocket", "result": "ok"}
        )
        == sent
    )
    await fast.close()
    await fast_reader


async def test_a_dead_exchange_blocks_neither_the_audit_log_nor_the_stream(
    tmp_path: Path, in_process: Any, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RISKD_PUBLISHER__HTTP__SECRET", SECRET)
    receiver.hang = True  # the exchange accepts connections and never answers
    doc = base_config(
        tmp_path,
        0,
        feed={"path": str(FED_TAPE), "speed": 1e6},
        publisher={"websocket": {}, "http": {"url": receiver.url, "timeout_s": 30.0}},
    )
    d = await in_process(doc)
    got: list[dict[str, Any]] = []
    async with connect(ws_url(d)) as ws:
        reader = asyncio.create_task(collect(ws, got))
        d.start()
        await wait_until(
            lambda: _true(bool(d.daemon.feed.finished)), timeout=15, what="the end of the replay"
        )
        await wait_until(
            lambda: _true(bool(got) and got[-1]["seq"] == d.daemon.seq),
            what="the stream to catch up",
        )
        audit = read_audit(tmp_path / "audit.jsonl")
        assert len(audit) == d.daemon.seq >= 10
        assert got[1:] == audit  # connected before the first batch: every one of them
        assert len(receiver.attempts) == 1 and not receiver.messages  # stuck on the first
        started = time.monotonic()
        assert await d.stop(timeout=10) == 0
        assert time.monotonic() - started < 5.5  # drains in parallel, within the deadline
        await asyncio.wait_for(reader, 5)


async def _true(value: bool) -> bool:
    return value
