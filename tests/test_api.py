"""The HTTP API: /healthz, /readyz, /v1/params, /metrics, on an in-process daemon whose
app is served on 127.0.0.1 (and a real exchange receiver where publishing matters)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from riskd.timeutil import iso
from tests.support import (
    FED_CSV,
    SECRET,
    InProcessDaemon,
    Receiver,
    assert_complete_entry,
    base_config,
    http_get,
    metric_families,
    metric_samples,
    parse_time,
    sample,
    tape_rows,
    wait_until,
)

FED_MARKETS = {r[1] for r in tape_rows(FED_CSV)}


async def ready(d: InProcessDaemon) -> bool:
    status, body = await d.get_json("/readyz")
    return status == 200 and body["ready"] is True and body["reasons"] == []


async def settled(d: InProcessDaemon) -> bool:
    """Ready, the whole tape in, and every current set published at the final clock
    (the replay clock stops at the last tick; sets published earlier are refreshed)."""
    if not await ready(d):
        return False
    _, listing = await d.get_json("/v1/params")
    now = parse_time(listing["generated_at"])
    ttl = d.daemon.settings.governor.ttl_s
    return bool(d.daemon.feed.finished and listing["params"]) and all(
        abs(parse_time(e["valid_until"]) - ttl - now) < 2e-3 for e in listing["params"]
    )


async def test_not_ready_before_data_then_ready(tmp_path: Path, in_process: Any) -> None:
    d = await in_process(base_config(tmp_path, 0))

    status, body = await d.get_json("/healthz")
    assert status == 200 and body["status"] == "ok"
    status, body = await d.get_json("/readyz")
    assert status == 503
    assert body["ready"] is False
    assert {"feed_stale", "nothing_published"} <= set(body["reasons"])
    status, body = await d.get_json("/v1/params")
    assert status == 200 and body["params"] == []
    status, body = await d.get_json("/v1/params/fed-dec2025-nochange-poly")
    assert status == 404 and "error" in body

    d.start()
    await wait_until(lambda: ready(d), what="/readyz 200")
    status, body = await d.get_json("/healthz")
    assert status == 200 and body["status"] == "ok"

    status, listing = await d.get_json("/v1/params")
    assert status == 200
    sets = {e["market"]: e for e in listing["params"]}
    assert set(sets) == FED_MARKETS
    for market, entry in sets.items():
        assert_complete_entry(entry)
        status, one = await d.get_json(f"/v1/params/{market}")
        assert status == 200 and one == entry
    # The replay clock stopped at the last tick; the API reports it.
    last_tick = max(r[0] for r in tape_rows(FED_CSV))
    assert listing["generated_at"] == last_tick.replace("000Z", "Z")

    status, body = await d.get_json("/v1/params/no-such-market")
    assert status == 404
    assert "no-such-market" in body["error"]
    status, _, _ = await http_get(d.url + "/v1/nothing-here")
    assert status == 404
    assert await d.stop() == 0


async def test_readyz_reports_a_stale_feed(tmp_path: Path, in_process: Any) -> None:
    # Ticks every event second for 40 s, then a 160 s silence; at speed 20 the ticks
    # last 2 wall seconds (a window a loaded machine does not miss), the silence 8,
    # and the feed is stale after stale_after_s of it.
    t0 = 1_760_000_000.0
    rows = [f"{t0 + k:.1f},gap-market,{0.4 + 0.001 * (k % 3):.3f}" for k in range(41)]
    rows.append(f"{t0 + 200:.1f},gap-market,0.41")
    tape = tmp_path / "gap.csv"
    tape.write_text("ts,market,price\n" + "\n".join(rows) + "\n", encoding="utf-8")
    markets = tmp_path / "gap_markets.json"
    markets.write_text(
        json.dumps({"markets": [{"id": "gap-market", "resolves_at": iso(t0 + 90 * 86400)}]}),
        encoding="utf-8",
    )
    doc = base_config(
        tmp_path,
        0,
        feed={"path": str(tape), "speed": 20.0},
        markets={"file": str(markets)},
        governor={"stale_after_s": 3.0, "publish_interval_s": 0.02},
    )
    d = await in_process(doc)
    d.start()
    await wait_until(lambda: ready(d), what="/readyz 200 while ticks flow")

    async def stale() -> bool:
        status, body = await d.get_json("/readyz")
        return status == 503 and body["reasons"] == ["feed_stale"]

    await wait_until(stale, timeout=5, what="/readyz 503 feed_stale in the silence")

    # The published set falls to its fail-safe values too.
    async def fail_safe() -> dict[str, Any] | None:
        _, entry = await d.get_json("/v1/params/gap-market")
        return entry if "stale_feed" in entry["reasons"] else None

    entry = await wait_until(fail_safe, timeout=5, what="a stale_feed set")
    assert entry["mode"] == "reduce_only"
    assert entry["max_leverage"] == {"long": 1.0, "short": 1.0}
    assert await d.stop() == 0


async def test_readyz_reports_a_failing_publisher(
    tmp_path: Path,
    in_process: Any,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RISKD_PUBLISHER__HTTP__SECRET", SECRET)
    receiver.fail_status = 503
    d = await in_process(base_config(tmp_path, 0, publisher={"http": {"url": receiver.url}}))
    d.start()

    async def failing() -> bool:
        status, body = await d.get_json("/readyz")
        return status == 503 and "publisher_failing:http" in body["reasons"]

    await wait_until(failing, what="/readyz publisher_failing:http")
    assert receiver.failed >= 1 and not receiver.messages
    receiver.fail_status = None  # the exchange recovers
    await wait_until(lambda: ready(d), timeout=15, what="/readyz 200 after recovery")

    # Retries coalesced to the newest values: the exchange gets what the daemon holds.
    async def caught_up() -> bool:
        current = {m: e["version"] for m, e in d.daemon.engine.current.items()}
        return {m: e["version"] for m, e in receiver.latest.items()} == current

    await wait_until(caught_up, what="the exchange to hold the current sets")
    receiver.check_all()
    # A retry resends the newest set per market, never an older one than already sent.
    sent: dict[str, int] = {}
    for body in receiver.attempts:
        for entry in body["params"]:
            assert entry["version"] >= sent.get(entry["market"], 0), entry
            sent[entry["market"]] = entry["version"]
    text = (await http_get(d.url + "/metrics"))[2]
    assert (sample(text, "riskd_publishes_total", publisher="http", result="retry") or 0) >= 1
    assert (sample(text, "riskd_publishes_total", publisher="http", result="ok") or 0) >= 1
    assert await d.stop() == 0


async def test_permanent_rejection_is_not_retried(
    tmp_path: Path,
    in_process: Any,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RISKD_PUBLISHER__HTTP__SECRET", SECRET)
    receiver.fail_status = 400  # a 4xx other than 408/429: permanent
    d = await in_process(base_config(tmp_path, 0, publisher={"http": {"url": receiver.url}}))
    d.start()

    async def failing() -> bool:
        status, body = await d.get_json("/readyz")
        return status == 503 and "publisher_failing:http" in body["reasons"]

    await wait_until(failing, what="/readyz publisher_failing:http")
    await wait_until(lambda: settled_feed(d), what="the replay to end")
    await asyncio.sleep(0.5)  # a retry, if there were one, would come within this
    text = (await http_get(d.url + "/metrics"))[2]
    rejected = sample(text, "riskd_publishes_total", publisher="http", result="rejected")
    assert rejected == len(receiver.attempts) >= 1
    assert sample(text, "riskd_publishes_total", publisher="http", result="retry") == 0
    # Each set went out once: nothing rejected was sent again.
    sent = [(e["market"], e["version"]) for b in receiver.attempts for e in b["params"]]
    assert len(sent) == len(set(sent))
    assert not receiver.messages
    assert await d.stop() == 0


async def settled_feed(d: InProcessDaemon) -> bool:
    return bool(d.daemon.feed.finished and d.daemon.seq >= 1)


# Metric names of interfaces.md, by when the daemon has samples for them.
WITH_SAMPLES_AFTER_A_REPLAY = [
    "riskd_ticks_total",
    "riskd_max_leverage",
    "riskd_fee_rate_hourly",
    "riskd_max_slippage",
    "riskd_probability",
    "riskd_time_to_resolution_seconds",
    "riskd_belief_volatility",
    "riskd_jump_intensity",
    "riskd_jumps_detected_total",
    "riskd_market_mode",
    "riskd_publishes_total",
    "riskd_publish_latency_seconds",
    "riskd_tick_to_publish_seconds",
    "riskd_cycle_seconds",
    "riskd_markets",
]
# Declared now, with samples once the event happens (covered in test_daemon_e2e.py
# and test_lifecycle.py).
ON_EVENT = ["riskd_ticks_rejected_total", "riskd_config_reloads_total"]
# Live feeds only: a replay has no connection and no receive lag. Declared, not asserted
# to have samples.
LIVE_FEEDS_ONLY = ["riskd_feed_connected", "riskd_feed_lag_seconds"]
HISTOGRAMS = {
    "riskd_publish_latency_seconds",
    "riskd_tick_to_publish_seconds",
    "riskd_cycle_seconds",
}


async def test_metrics_exports_the_interface_names(tmp_path: Path, in_process: Any) -> None:
    d = await in_process(base_config(tmp_path, 0))
    d.start()
    await wait_until(lambda: settled(d), what="the replay to end and its sets to be current")

    status, ctype, text = await http_get(d.url + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    declared = metric_families(text)
    for name in WITH_SAMPLES_AFTER_A_REPLAY + ON_EVENT + LIVE_FEEDS_ONLY:
        assert name in declared, name
    names = {name for name, _ in metric_samples(text)}
    for name in WITH_SAMPLES_AFTER_A_REPLAY:
        wanted = f"{name}_count" if name in HISTOGRAMS else name
        assert wanted in names, name

    # Values agree with what is published.
    assert sample(text, "riskd_ticks_total", venue="replay") == len(tape_rows(FED_CSV))
    assert sample(text, "riskd_markets") == len(FED_MARKETS)
    assert sample(text, "riskd_publishes_total", publisher="jsonl", result="ok") == d.daemon.seq
    _, listing = await d.get_json("/v1/params")
    for entry in listing["params"]:
        m = entry["market"]
        for side in ("long", "short"):
            assert sample(text, "riskd_max_leverage", market=m, side=side) == pytest.approx(
                entry["max_leverage"][side], abs=1e-9
            )
            assert sample(text, "riskd_fee_rate_hourly", market=m, side=side) == pytest.approx(
                entry["fee_rate_hourly"][side], rel=1e-5
            )
        assert sample(text, "riskd_max_slippage", market=m) == pytest.approx(
            entry["max_slippage"], rel=1e-5
        )
        assert sample(text, "riskd_probability", market=m) == pytest.approx(
            entry["inputs"]["p"], rel=1e-5
        )
        assert sample(text, "riskd_time_to_resolution_seconds", market=m) == pytest.approx(
            entry["inputs"]["tau_s"], abs=1e-2
        )
        assert sample(text, "riskd_market_mode", market=m, mode=entry["mode"]) == 1.0
        assert (
            sum(
                sample(text, "riskd_market_mode", market=m, mode=mode) or 0.0
                for mode in ("normal", "reduce_only", "halted")
            )
            == 1.0
        )
    assert await d.stop() == 0
