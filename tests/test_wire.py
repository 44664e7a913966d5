"""The wire format (riskd/wire.py): every publisher sends one envelope, the stream's
snapshot is that envelope marked, and the published numbers are rounded as Python's
round() and the 6-significant-digit format would round them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from riskd import wire
from riskd.app import Daemon
from riskd.config import Settings, load_settings
from riskd.engine import Engine
from riskd.feeds.base import Tick
from riskd.markets import Market
from riskd.metrics import Metrics
from riskd.publish.base import Batch
from riskd.publish.http import HttpPublisher

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000.0
ENVELOPE = ["source", "instance", "seq", "generated_at", "params"]


def published_sets() -> list[dict[str, Any]]:
    markets = {m: Market(m, T0 + 86_400, T0 + 86_400) for m in ("a", "b")}
    engine = Engine(Settings(), markets, discover=False)
    engine.ingest([Tick(m, T0 + k, 0.4 + 0.01 * k) for k in range(30) for m in markets])
    return engine.cycle(T0 + 3600, idx=slice(None)).entries


async def test_the_http_body_is_the_audit_and_stream_body() -> None:
    params = published_sets()
    bodies: list[bytes] = []

    async def receive(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/risk-params", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    pub = HttpPublisher(
        f"http://127.0.0.1:{port}/risk-params",
        b"secret",
        "riskd-test",
        Metrics(CollectorRegistry()),
    )
    try:
        await pub.start()
        batch = Batch("riskd-test", 1, "2023-11-14T23:13:20.000Z", params)
        pub.submit(batch)
        await pub.drain(5.0)
    finally:
        await pub.close()
        await runner.cleanup()
    assert bodies == [batch.body()]
    assert list(orjson.loads(batch.body())) == ENVELOPE


def test_the_stream_snapshot_is_the_envelope_marked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in {
        "RISKD_STATE__DIR": str(tmp_path),
        "RISKD_STATE__ENABLED": "false",
        "RISKD_SERVER__ENABLED": "false",
        "RISKD_PUBLISHER__JSONL__PATH": str(tmp_path / "audit.jsonl"),
    }.items():
        monkeypatch.setenv(name, value)
    daemon = Daemon(load_settings(ROOT / "config/riskd.toml"), None)
    snapshot = orjson.loads(daemon.stream_snapshot())
    assert list(snapshot) == [*ENVELOPE[:-1], "snapshot", "params"]
    assert snapshot["snapshot"] is True and snapshot["source"] == "riskd"


def test_sets_are_named_and_rounded() -> None:
    rows = wire.SetRows(
        markets=["m"],
        version=np.array([7]),
        mode=np.array([1]),
        leverage=np.array([[3.14159, 2.0]]),
        initial_margin=np.array([[0.1234567891, 0.5]]),
        maintenance_margin=np.array([[0.0617283945, 0.25]]),
        fee_hourly=np.array([[1.23456789e-5, 2e-5]]),
        slippage=np.array([0.0123456789]),
        valid_until=np.array([T0]),
        reasons=np.array([0]),
        inputs=np.array([[0.123456789, 12.34567, 1e-4, 2e-6, 0.05, 3599.99951]]),
    )
    (entry,) = wire.param_sets(rows)
    assert entry == {
        "market": "m",
        "version": 7,
        "mode": "reduce_only",
        "max_leverage": {"long": 3.14, "short": 2.0},
        "initial_margin": {"long": 0.123457, "short": 0.5},
        "maintenance_margin": {"long": 0.0617284, "short": 0.25},
        "fee_rate_hourly": {"long": 1.23457e-5, "short": 2e-5},
        "max_slippage": 0.0123457,
        "oi_cap": None,
        "valid_until": "2023-11-14T22:13:20.000Z",
        "reasons": [],
        "inputs": {
            "p": 0.123457,
            "tau_s": 12.346,
            "sigma": 1e-4,
            "lambda": 2e-6,
            "J": 0.05,
            "h_s": 3600.0,
        },
    }


finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False)


@given(st.lists(finite, min_size=1, max_size=20), st.integers(-3, 12))
def test_round_places_is_python_round(values: list[float], places: int) -> None:
    assert wire.round_places(np.array(values), places).tolist() == [
        round(v, places) for v in values
    ]


@given(
    st.lists(finite | st.sampled_from([math.inf, -math.inf, 0.0, 5e-324]), min_size=1, max_size=20)
)
def test_round_sig_is_six_significant_digits(values: list[float]) -> None:
    assert wire.round_sig(np.array(values)).tolist() == [float(f"{v:.6g}") for v in values]
