"""End to end: `riskd run` as a subprocess replaying tapes, publishing to a real exchange
receiver and the audit log, observed over its API and /metrics."""

from __future__ import annotations

import json
import random
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp

from riskd.publish.http import sign
from riskd.timeutil import iso
from tests.support import (
    FED_CSV,
    INSTANCE,
    MIDTERMS,
    SECRET,
    Receiver,
    assert_complete_batch,
    assert_complete_entry,
    assert_versions_increase,
    base_config,
    entries_by_market,
    free_port,
    last_versions,
    parse_time,
    read_audit,
    sample,
    tape_rows,
    wait_until,
)

SECRET_ENV = {"RISKD_PUBLISHER__HTTP__SECRET": SECRET}


async def test_fed_tape_end_to_end(tmp_path: Path, receiver: Receiver, start_daemon: Any) -> None:
    rows = tape_rows(FED_CSV)
    tape_markets = {r[1] for r in rows}
    port = free_port()
    # ~1.9e6 event seconds at 1e6x: about two wall seconds, ~40 publish cycles.
    doc = base_config(
        tmp_path, port, feed={"speed": 1e6}, publisher={"http": {"url": receiver.url}}
    )
    daemon = await start_daemon(doc, env=SECRET_ENV)

    async def all_ticks_in() -> bool:
        return await daemon.metric("riskd_ticks_total", venue="replay") == len(rows)

    await wait_until(all_ticks_in, timeout=20, what="every tick of the tape")

    async def ready() -> bool:
        status, body = await daemon.get_json("/readyz")
        return status == 200 and body["ready"]

    await wait_until(ready, what="/readyz 200")

    # The API lists every market of the tape, each set complete.
    status, listing = await daemon.get_json("/v1/params")
    assert status == 200
    api_sets = {e["market"]: e for e in listing["params"]}
    assert set(api_sets) == tape_markets
    for market, entry in api_sets.items():
        assert_complete_entry(entry)
        status, one = await daemon.get_json(f"/v1/params/{market}")
        # A cycle may have published a newer set in between, never an older one.
        assert status == 200 and one["market"] == market
        assert one == entry or one["version"] > entry["version"]

    metrics = await daemon.metrics()
    assert sample(metrics, "riskd_ticks_total", venue="replay") == len(rows) > 0
    assert sample(metrics, "riskd_markets") == len(tape_markets)
    assert (sample(metrics, "riskd_publishes_total", publisher="http", result="ok") or 0) >= 1

    # A request signed with another secret is refused by the receiver, and counted.
    body = json.dumps(
        {
            "source": "riskd",
            "instance": INSTANCE,
            "seq": 10**6,
            "generated_at": "2025-12-07T04:30:42.763Z",
            "params": [],
        }
    ).encode()
    ts = str(int(time.time()))
    forged = {
        "Content-Type": "application/json",
        "Idempotency-Key": f"{INSTANCE}:{10**6}",
        "X-Riskd-Timestamp": ts,
        "X-Riskd-Signature": sign(b"wrong-secret", ts, body),
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(receiver.url, data=body, headers=forged) as resp:
            assert resp.status == 401
        # The right secret over a different body is refused too.
        forged["X-Riskd-Signature"] = sign(SECRET.encode(), ts, body + b" ")
        async with session.post(receiver.url, data=body, headers=forged) as resp:
            assert resp.status == 401
    assert receiver.rejected == 2

    daemon.send(signal.SIGTERM)
    assert await daemon.wait_exit(5) == 0

    # Every message the daemon sent was authentic (the only rejections are ours above).
    assert receiver.rejected == 2
    receiver.check_all()
    assert set(receiver.latest) == tape_markets

    audit = read_audit(tmp_path / "audit.jsonl")
    assert [b["seq"] for b in audit] == list(range(1, len(audit) + 1))
    for batch in audit:
        assert_complete_batch(batch)
    assert_versions_increase(audit)
    assert set(entries_by_market(audit)) == tape_markets
    # Coalescing never loses the newest set: the exchange ends where the audit log does.
    assert last_versions(receiver.batches()) == last_versions(audit)
    # What the API served was a published set.
    published = {(e["market"], e["version"]): e for b in audit for e in b["params"]}
    for market, entry in api_sets.items():
        assert published[(market, entry["version"])] == entry
    # The daemon clock is event time: no batch is stamped after the last tick.
    last_tick = max(parse_time(r[0]) for r in rows)
    assert max(parse_time(b["generated_at"]) for b in audit) <= last_tick + 1e-3


# --- synthetic tape: resolution freeze and a jump ---------------------------------

T0 = 1_750_000_000.0  # 2025-06-15T15:06:40Z
STEP_S = 60.0
CALM_TICKS = 360  # six hours of a calm market before the jump
AFTER_TICKS = 15
JUMP_TS = T0 + STEP_S * CALM_TICKS
FAST_FORWARD_UNTIL = JUMP_TS - 600  # history at once, the last ten minutes paced
FREEZE_S = 4 * 3600.0
# The near-resolution market's freeze starts five minutes into the paced part.
NEAR_EVENT = FAST_FORWARD_UNTIL + FREEZE_S + 300


def write_synthetic_tape(tmp_path: Path) -> tuple[Path, Path]:
    rng = random.Random(7)
    rows = []
    p = 0.5
    for k in range(CALM_TICKS + AFTER_TICKS):
        ts = T0 + STEP_S * k
        if k < CALM_TICKS:
            p = min(0.52, max(0.48, p + rng.choice((-0.002, 0.002))))
            price = p
        else:
            price = 0.75 + rng.choice((-0.002, 0.0, 0.002))
        rows.append(f"{ts:.3f},syn-jump,{price:.4f}")
        rows.append(f"{ts:.3f},syn-near,{0.6 + rng.choice((-0.002, 0.0, 0.002)):.4f}")
    tape = tmp_path / "synthetic.csv"
    tape.write_text("ts,market,price\n" + "\n".join(rows) + "\n", encoding="utf-8")
    markets = tmp_path / "synthetic_markets.json"
    markets.write_text(
        json.dumps(
            {
                "markets": [
                    {"id": "syn-jump", "resolves_at": iso(T0 + 40 * 86400)},
                    {
                        "id": "syn-near",
                        "event_at": iso(NEAR_EVENT),
                        "resolves_at": iso(NEAR_EVENT + 3600),
                    },
                ]
            }
        ),
        encoding="utf-8",
    )
    return tape, markets


async def test_synthetic_tape_freeze_and_jump(tmp_path: Path, start_daemon: Any) -> None:
    tape, markets = write_synthetic_tape(tmp_path)
    # Paced at 600x, one cycle per 0.05 s wall is one per 30 event seconds: cycles land
    # between the ticks (every 60 s), so the sets just before and after the jump exist.
    doc = base_config(
        tmp_path,
        free_port(),
        feed={
            "path": str(tape),
            "speed": 600.0,
            "exit_at_end": True,
            "fast_forward_until": iso(FAST_FORWARD_UNTIL),
        },
        markets={"file": str(markets)},
        governor={"freeze_before_resolution_s": FREEZE_S, "stale_after_s": 3600.0},
    )
    daemon = await start_daemon(doc)
    assert await daemon.wait_exit(20) == 0

    audit = read_audit(tmp_path / "audit.jsonl")
    for batch in audit:
        assert_complete_batch(batch)
    by_market = entries_by_market(audit)

    # (a) Inside freeze_before_resolution_s of event_at: 1x, reduce-only, near_resolution.
    freeze_from = NEAR_EVENT - FREEZE_S
    near = by_market["syn-near"]
    before = [e for e in near if parse_time(e["_at"]) < freeze_from]
    frozen = [e for e in near if parse_time(e["_at"]) >= freeze_from]
    assert before and frozen
    for e in frozen:
        assert e["mode"] == "reduce_only", e
        assert e["max_leverage"] == {"long": 1.0, "short": 1.0}, e
        assert "near_resolution" in e["reasons"], e
    for e in before:
        assert e["mode"] == "normal" and "near_resolution" not in e["reasons"], e
    assert max(e["max_leverage"]["long"] for e in before) > 1.0

    # (b) The first set after the jump tick is tighter than the last one before it.
    jump = by_market["syn-jump"]
    # A cycle stamped exactly at the jump's time may run before the tick is applied.
    pre = [e for e in jump if parse_time(e["_at"]) < JUMP_TS]
    post = [e for e in jump if parse_time(e["_at"]) > JUMP_TS]
    assert pre and post
    last_before, first_after = pre[-1], post[0]
    assert parse_time(first_after["_at"]) - JUMP_TS <= 2 * STEP_S  # the next cycle or so
    assert "jump_detected" not in last_before["reasons"]
    assert "jump_detected" in first_after["reasons"]
    for side in ("long", "short"):
        assert first_after["max_leverage"][side] < last_before["max_leverage"][side], (
            last_before,
            first_after,
        )
    assert first_after["inputs"]["lambda"] > last_before["inputs"]["lambda"]


# --- bad rows --------------------------------------------------------------------

BAD_ROWS = {  # reason -> rows appended to alaska_governor.csv, after its last good row
    "bad_price": ["2022-11-20T00:00:00Z,pm22-alaska-governor,1.5"],
    "bad_ts": [
        "yesterday,pm22-alaska-governor,0.5",
        "2022-11-20T01:00:00,pm22-alaska-governor,0.5",
    ],  # no UTC offset
    "bad_row": ["2022-11-20T02:00:00Z,pm22-alaska-governor"],
    "out_of_order": ["2022-10-01T00:00:00Z,pm22-alaska-governor,0.9"],
}


async def test_bad_rows_are_counted_and_skipped(tmp_path: Path, start_daemon: Any) -> None:
    tape_dir = tmp_path / "tape"
    tape_dir.mkdir()
    names = ("alaska_governor.csv", "oh_09_house.csv", "pa_08_house.csv")
    for name in names:
        shutil.copy(MIDTERMS / name, tape_dir / name)
    good = {name: tape_rows(tape_dir / name) for name in names}
    alaska = tape_dir / "alaska_governor.csv"
    extra = [row for rows in BAD_ROWS.values() for row in rows]
    # A market missing from the markets file is dropped by the engine, also counted.
    extra.append("2022-11-20T03:00:00Z,pm22-nowhere,0.5")
    with alaska.open("a", encoding="utf-8") as fh:
        fh.write("\n".join(extra) + "\n")

    doc = base_config(
        tmp_path,
        free_port(),
        feed={"path": str(tape_dir)},
        markets={"file": str(MIDTERMS / "markets.json")},
    )
    daemon = await start_daemon(doc)
    n_good = sum(len(rows) for rows in good.values())

    async def done() -> str | None:
        text = await daemon.metrics()
        ticks = sample(text, "riskd_ticks_total", venue="replay")
        unknown = sample(
            text, "riskd_ticks_rejected_total", venue="replay", reason="unknown_market"
        )
        return text if ticks == n_good and unknown == 1 else None

    metrics = await wait_until(done, timeout=15, what="the tape to be replayed")
    for reason, rows in BAD_ROWS.items():
        got = sample(metrics, "riskd_ticks_rejected_total", venue="replay", reason=reason)
        assert got == len(rows), (reason, got)

    status, listing = await daemon.get_json("/v1/params")
    assert status == 200
    sets = {e["market"]: e for e in listing["params"]}
    tape_markets = {rows[0][1] for rows in good.values()}
    assert tape_markets <= set(sets)
    assert "pm22-nowhere" not in sets
    # The bad price after the last good row was not used.
    last_good = float(good["alaska_governor.csv"][-1][2])
    assert abs(sets["pm22-alaska-governor"]["inputs"]["p"] - last_good) < 1e-6

    daemon.send(signal.SIGTERM)
    assert await daemon.wait_exit(5) == 0
