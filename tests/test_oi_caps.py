"""Open-interest caps in the daemon (docs/model.md section 10, riskd/caps.py): with
`[insurance]` and a signed exchange state the sets carry `oi_cap`, linked markets get
tighter caps than the same markets alone, open interest at the cap and stale or
missing exchange state raise margins (`oi_cap_binding`), `/v1/explain` and /metrics
show the group, and the reference receiver refuses exposure beyond the cap. Real
daemons on the test's loop, real HTTP on 127.0.0.1."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from riskd import wire
from riskd.receiver import ReceiverConfig, make_app
from riskd.receiver_client import ReportConfig
from tests.support import (
    FED_TAPE,
    SECRET,
    InProcessDaemon,
    base_config,
    merge,
    read_audit,
    sample,
    wait_until,
    write_config,
)

EX_SECRET = "exchange-secret-0c1d"
POLY = "fed-dec2025-nochange-poly"
KALSHI = "fed-dec2025-nochange-kalshi"
MARKETS = (POLY, KALSHI)
GROUP = "fed-dec-2025"
FUND = 1_000_000.0
MAX_AGE_S = 5.0
# Past the tape's last jump cool-down: loosening steps count again.
LATER_S = 700.0
LOOSEN_S = 2.0  # under MAX_AGE_S: the report stays fresh


class Shifted:
    """The daemon clock: the replay's, moved on by `offset` seconds when a test says."""

    def __init__(self) -> None:
        self.feed: Any = None
        self.offset = 0.0

    def __call__(self) -> float:
        return -math.inf if self.feed is None else float(self.feed.now()) + self.offset


def markets_file(path: Path, grouped: bool) -> Path:
    """The Fed tape's two markets, resolving after the tape (so not at 1x for that),
    in one group linked "same" or each alone."""
    link = {"group": GROUP, "relation": "same"} if grouped else {}
    doc = {
        "markets": [
            {
                "id": market,
                "event_at": "2026-12-10T19:00:00Z",
                "resolves_at": "2026-12-10T19:00:00Z",
                "tick_size": 0.001,
                **link,
            }
            for market in MARKETS
        ]
    }
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def config(tmp_path: Path, grouped: bool, **sections: Any) -> dict[str, Any]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    doc = base_config(
        tmp_path,
        0,
        feed={"path": str(FED_TAPE), "speed": 0.0},
        markets={"file": str(markets_file(tmp_path / "markets.json", grouped))},
        exchange={"secret": EX_SECRET, "max_age_s": MAX_AGE_S},
        insurance={"group_share": 0.1, "margin_ramp_start": 0.5},
        governor={"loosen_interval_s": 1.0, "max_loosen_step": 1000.0},
    )
    return merge(doc, sections)


@pytest.fixture
async def capped() -> AsyncIterator[Callable[..., Awaitable[tuple[InProcessDaemon, Shifted]]]]:
    """Factory: a daemon from `doc` on a shiftable clock, its API served, its replay
    played to the end (the clock then stands at the last tick plus the offset)."""
    from riskd.app import Daemon
    from riskd.config import load_settings
    from riskd.server import make_app as api_app

    made: list[InProcessDaemon] = []

    async def build(doc: dict[str, Any], path: Path) -> tuple[InProcessDaemon, Shifted]:
        doc = merge(doc, {"server": {"enabled": False}})
        write_config(path, doc)
        clock = Shifted()
        daemon = Daemon(load_settings(path), path, clock=clock)
        clock.feed = daemon.feed
        runner = web.AppRunner(api_app(daemon), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        item = InProcessDaemon(daemon, f"http://127.0.0.1:{runner.addresses[0][1]}", runner)
        made.append(item)
        item.start()
        await wait_until(lambda: bool(daemon.feed.finished), what="the replay")
        return item, clock

    yield build
    for item in made:
        await item.close()


def report(seq: int, oi: dict[str, Any], fund: float = FUND) -> bytes:
    return json.dumps(
        {
            "exchange": "ex-a",
            "seq": seq,
            "as_of": "2025-12-07T05:00:00Z",
            "insurance_fund": fund,
            "open_interest": oi,
        }
    ).encode()


async def post_state(d: InProcessDaemon, body: bytes, secret: str = EX_SECRET) -> int:
    stamp = str(int(time.time()))
    mac = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-Riskd-Timestamp": stamp,
        "X-Riskd-Signature": f"sha256={mac}",
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(d.url + "/v1/exchange/state", data=body, headers=headers) as resp:
            return resp.status


async def sets(d: InProcessDaemon) -> dict[str, dict[str, Any]]:
    status, doc = await d.get_json("/v1/params")
    assert status == 200
    return {entry["market"]: entry for entry in doc["params"]}


async def wait_sets(
    d: InProcessDaemon, ok: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, dict[str, Any]]:
    """The published sets once every market's satisfies `ok`."""
    found: dict[str, dict[str, Any]] = {}

    async def ready() -> bool:
        found.update(await sets(d))
        return all(m in found and ok(found[m]) for m in MARKETS)

    await wait_until(ready, what=what)
    return found


def leveraged(entry: dict[str, Any]) -> bool:
    return entry["max_leverage"]["long"] > 1.0 and "oi_cap_binding" not in entry["reasons"]


async def fresh_state(d: InProcessDaemon, clock: Shifted, seq: int, oi: dict[str, Any]) -> None:
    """Move the clock on, then report: the state is fresh at the new time. The cycles
    before the report may find the last one stale (1x); a step of the clock after it
    lets the governor loosen again (one step of max_loosen_step reaches the target)."""
    clock.offset += LATER_S
    assert await post_state(d, report(seq, oi)) == 200
    clock.offset += LOOSEN_S


OI = {market: {"long": 2000.0, "short": 1000.0} for market in MARKETS}


async def caps_of(capped: Any, tmp_path: Path, grouped: bool) -> dict[str, dict[str, Any]]:
    d, clock = await capped(config(tmp_path, grouped), tmp_path / "riskd.toml")
    await fresh_state(d, clock, 1, OI)
    found = await wait_sets(d, leveraged, "leverage above 1x under the caps")
    return {m: found[m]["oi_cap"] for m in MARKETS}


# --- the tests ------------------------------------------------------------------------------


def test_the_set_carries_oi_cap_per_side() -> None:
    """Rounded as the other numbers; a side without a cap (inf) or none known: null."""
    one = np.ones((3, 2))
    rows = wire.SetRows(
        markets=["a", "b", "c"],
        version=np.array([1, 1, 1]),
        mode=np.zeros(3, np.int64),
        leverage=2.0 * one,
        initial_margin=0.25 * one,
        maintenance_margin=0.125 * one,
        fee_hourly=1e-4 * one,
        slippage=np.full(3, 0.01),
        valid_until=np.full(3, 1.7e9),
        reasons=np.zeros(3, np.int64),
        inputs=np.full((3, 6), 0.5),
        oi_cap=np.array([[123456.789, 0.0], [np.inf, 5.0], [np.nan, np.nan]]),
    )
    caps = [entry["oi_cap"] for entry in wire.param_sets(rows)]
    assert caps == [
        {"long": 123457.0, "short": 0.0},
        {"long": None, "short": 5.0},
        {"long": None, "short": None},
    ]
    assert all(e["oi_cap"] is None for e in wire.param_sets(replace(rows, oi_cap=None)))


async def test_no_exchange_state_is_1x_at_once(tmp_path: Path, capped: Any) -> None:
    d, _ = await capped(config(tmp_path, True), tmp_path / "riskd.toml")
    found = await wait_sets(d, lambda e: e["oi_cap"] is not None, "sets with oi_cap")
    for market in MARKETS:
        entry = found[market]
        assert entry["max_leverage"] == {"long": 1.0, "short": 1.0}, entry
        assert "oi_cap_binding" in entry["reasons"]
        assert set(entry["oi_cap"]) == {"long", "short"}
    # Every batch of the audit log carries the field per side.
    for batch in read_audit(tmp_path / "audit.jsonl"):
        for entry in batch["params"]:
            assert set(entry["oi_cap"]) == {"long", "short"}


async def test_linked_markets_get_tighter_caps_than_alone(tmp_path: Path, capped: Any) -> None:
    together = await caps_of(capped, tmp_path / "grouped", True)
    alone = await caps_of(capped, tmp_path / "alone", False)
    tighter = 0
    for market in MARKETS:
        for side in ("long", "short"):
            a, b = together[market][side], alone[market][side]
            assert a is not None and b is not None and 0.0 < a <= b, (market, side, a, b)
            tighter += a < b
    assert tighter >= 2, (together, alone)


async def test_oi_at_the_cap_raises_margins_and_stale_state_tightens_in_one_cycle(
    tmp_path: Path, capped: Any
) -> None:
    d, clock = await capped(config(tmp_path, True), tmp_path / "riskd.toml")
    await fresh_state(d, clock, 1, OI)
    before = (await wait_sets(d, leveraged, "leverage above 1x"))[POLY]
    cap = before["oi_cap"]["long"]
    at_cap = {**OI, POLY: {"long": cap, "short": 1000.0}}
    await fresh_state(d, clock, 2, at_cap)
    after = (await wait_sets(d, lambda e: e["version"] > 0, "sets"))[POLY]

    async def bound() -> bool:
        nonlocal after
        after = (await sets(d))[POLY]
        return "oi_cap_binding" in after["reasons"]

    await wait_until(bound, what="oi_cap_binding on the market at its cap")
    assert after["max_leverage"]["long"] == 1.0 < before["max_leverage"]["long"]
    p = after["inputs"]["p"]
    assert after["initial_margin"]["long"] == pytest.approx(p, rel=1e-5)
    # Explain: the group stress and the binding constraint.
    status, doc = await d.get_json(f"/v1/explain/{POLY}")
    assert status == 200
    oi = doc["open_interest"]
    assert oi["group"] == GROUP and oi["binding"] == "oi_cap_binding"
    assert oi["budget"] == pytest.approx(0.1 * FUND)
    assert oi["utilisation"] == pytest.approx(oi["expected_shortfall"] / oi["budget"])
    assert oi["sides"]["long"]["open_interest"] == cap
    # Recomputed since at a later time: within the deadband of the published cap.
    assert oi["sides"]["long"]["oi_cap"] == pytest.approx(cap, rel=0.02)
    # Metrics: the cap per side, the group's share of its fund.
    async with aiohttp.ClientSession() as session:
        async with session.get(d.url + "/metrics") as resp:
            text = await resp.text()
    published = after["oi_cap"]["long"]
    assert sample(text, "riskd_oi_cap", market=POLY, side="long") == pytest.approx(published)
    used = sample(text, "riskd_insurance_fund_utilisation", group=GROUP)
    assert used == pytest.approx(oi["utilisation"], rel=1e-5) and used > 0.0

    # Back under the cap, then the exchange goes silent: past max_age_s the very next
    # cycle publishes every market at 1x.
    await fresh_state(d, clock, 3, OI)
    await wait_sets(d, leveraged, "leverage above 1x again")
    seq = d.daemon.seq
    clock.offset += MAX_AGE_S + 1.0
    await wait_until(lambda: d.daemon.seq > seq, what="the next batch")

    def next_batch() -> dict[str, Any] | None:
        batches = [b for b in read_audit(tmp_path / "audit.jsonl") if b["seq"] == seq + 1]
        return batches[0] if batches else None

    await wait_until(lambda: next_batch() is not None, what="the batch in the audit log")
    batch = next_batch()
    assert batch is not None
    tightened = {e["market"]: e for e in batch["params"]}
    assert set(tightened) == set(MARKETS)
    for entry in tightened.values():
        assert entry["max_leverage"] == {"long": 1.0, "short": 1.0}
        assert "oi_cap_binding" in entry["reasons"]


async def test_the_receiver_refuses_exposure_beyond_the_cap(tmp_path: Path, capped: Any) -> None:
    positions = tmp_path / "positions.json"
    positions.write_text(json.dumps({POLY: {"long": 0.0}}))
    cfg = ReceiverConfig(
        secret=SECRET.encode(),
        clock="feed",  # the replay's sets carry the tape's time
        report=ReportConfig(url="http://127.0.0.1:1", secret=b"x", positions=positions),
    )
    runner = web.AppRunner(make_app(cfg), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    exchange = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        doc = config(
            tmp_path, True, publisher={"http": {"url": exchange + "/risk-params", "secret": SECRET}}
        )
        d, clock = await capped(doc, tmp_path / "riskd.toml")
        async with aiohttp.ClientSession() as session:

            async def order(market: str, side: str, notional: Any) -> tuple[int, Any]:
                body = {"market": market, "side": side, "notional": notional}
                async with session.post(exchange + "/orders", json=body) as resp:
                    return resp.status, await resp.json()

            async def at_exchange() -> dict[str, Any]:
                async with session.get(exchange + f"/params/{POLY}") as resp:
                    return dict(await resp.json()) if resp.status == 200 else {}

            # 1x while riskd has no exchange state: nothing new is lent.
            await wait_until(lambda: _has_cap(at_exchange()), what="a set at the exchange")
            assert (await order(POLY, "long", 1.0))[0] == 409
            await fresh_state(d, clock, 1, {POLY: {"long": 0.0, "short": 0.0}})
            await wait_sets(d, leveraged, "leverage above 1x")

            async def settled() -> bool:
                return (await at_exchange()).get("max_leverage", {}).get("long", 1.0) > 1.0

            await wait_until(settled, what="the loosened set at the exchange")
            cap = (await at_exchange())["oi_cap"]["long"]
            status, answer = await order(POLY, "long", 0.6 * cap)
            assert status == 200 and answer["accepted"] is True, answer
            status, answer = await order(POLY, "long", 0.5 * cap)
            assert status == 409 and answer["reason"] == "oi_cap", answer
            assert answer["open_interest"] == pytest.approx(0.6 * cap)
            assert (await order(POLY, "long", 0.3 * cap))[0] == 200
            for bad in (0, -1.0, "1", None):
                assert (await order(POLY, "long", bad))[0] == 400
            assert (await order(POLY, "sideways", 1.0))[0] == 400
            assert (await order("not-a-market", "long", 1.0))[1]["reason"] == "no_params"
    finally:
        await runner.cleanup()


async def _has_cap(entry: Awaitable[dict[str, Any]]) -> bool:
    return (await entry).get("oi_cap") is not None


async def test_without_insurance_oi_cap_stays_null(tmp_path: Path, capped: Any) -> None:
    doc = config(tmp_path, True, insurance=None)
    d, clock = await capped(doc, tmp_path / "riskd.toml")
    await fresh_state(d, clock, 1, OI)
    found = await wait_sets(d, lambda e: e["version"] > 0, "sets")
    assert all(found[m]["oi_cap"] is None for m in MARKETS)
    status, doc = await d.get_json(f"/v1/explain/{POLY}")
    assert status == 200 and doc["open_interest"] is None
