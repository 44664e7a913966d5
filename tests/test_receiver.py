"""The reference receiver (`riskd receiver`): signature, timestamp skew, replays, newer-only
sets, the dead man's switch with the wall clock and with the feed clock, on a real
server on 127.0.0.1; and end to end, `riskd receiver` and `riskd run` as subprocesses."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from riskd.receiver import Clock, ReceiverConfig, SafeParams, make_app
from riskd.timeutil import iso
from tests.support import (
    FED_TAPE,
    SECRET,
    base_config,
    clean_env,
    free_port,
    http_json,
    parse_time,
    wait_until,
)

SAFE = SafeParams(mode="reduce_only", max_leverage=1.0, fee_rate_hourly=0.002, max_slippage=0.005)
INSTANCE = "riskd-x"


def params_entry(
    market: str, version: int, valid_until: float, lev: float = 3.0, p: float = 0.6
) -> dict[str, Any]:
    im = {"long": p / lev, "short": (1 - p) / lev}
    return {
        "market": market,
        "version": version,
        "mode": "normal",
        "max_leverage": {"long": lev, "short": lev},
        "initial_margin": im,
        "maintenance_margin": {k: v / 2 for k, v in im.items()},
        "fee_rate_hourly": {"long": 0.0004, "short": 0.0004},
        "max_slippage": 0.02,
        "oi_cap": None,
        "valid_until": iso(valid_until),
        "reasons": [],
        "inputs": {"p": p, "tau_s": 86400.0, "sigma": 0.001, "lambda": 1e-5, "J": 0.5},
    }


def message(
    seq: int, generated_at: float, params: list[dict[str, Any]], instance: str = INSTANCE
) -> bytes:
    return json.dumps(
        {
            "source": "riskd",
            "instance": instance,
            "seq": seq,
            "generated_at": iso(generated_at),
            "params": params,
        }
    ).encode()


def signed(
    body: bytes, secret: str = SECRET, ts: float | None = None, key: str | None = None
) -> dict[str, str]:
    """Headers as interfaces.md specifies them, computed here independently."""
    stamp = str(int(time.time() if ts is None else ts))
    digest = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    doc = json.loads(body)
    return {
        "Content-Type": "application/json",
        "Idempotency-Key": key or f"{doc['instance']}:{doc['seq']}",
        "X-Riskd-Timestamp": stamp,
        "X-Riskd-Signature": f"sha256={digest}",
    }


Serve = Callable[..., Awaitable[str]]


@dataclass
class ShiftedClock:
    """The receivers' wall clock: time.time() moved on by `advance`, so that a test
    makes time pass without waiting for it."""

    offset: float = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def wall() -> ShiftedClock:
    return ShiftedClock()


@pytest.fixture
async def serve(wall: ShiftedClock) -> AsyncIterator[Serve]:
    """Factory: a reference receiver app on 127.0.0.1; returns its base URL."""
    runners: list[web.AppRunner] = []

    async def start(clock: Clock = "wall") -> str:
        cfg = ReceiverConfig(secret=SECRET.encode(), max_skew_s=60.0, clock=clock, safe=SAFE)
        runner = web.AppRunner(make_app(cfg, wall_clock=wall), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url + "/risk-params", data=body, headers=headers) as resp:
            return resp.status, await resp.json()


async def in_force(url: str) -> dict[str, dict[str, Any]]:
    status, doc = await http_json(url + "/params")
    assert status == 200
    return {e["market"]: e for e in doc["params"]}


async def test_signed_batch_is_stored_and_served(serve: Serve) -> None:
    url = await serve()
    now = time.time()
    body = message(1, now, [params_entry("m1", 1, now + 60), params_entry("m2", 4, now + 60)])
    status, answer = await post(url, body, signed(body))
    assert status == 200 and answer == {"ok": True, "applied": 2, "stale": 0}
    held = await in_force(url)
    assert set(held) == {"m1", "m2"}
    assert held["m2"]["source"] == "riskd" and held["m2"]["version"] == 4
    status, one = await http_json(url + "/params/m1")
    assert status == 200 and one["max_leverage"] == {"long": 3.0, "short": 3.0}
    status, _ = await http_json(url + "/params/nope")
    assert status == 404


async def test_bad_signature_and_stale_timestamp_are_refused(serve: Serve) -> None:
    url = await serve()
    now = time.time()
    body = message(1, now, [params_entry("m1", 1, now + 60)])
    # Signed with another secret.
    status, answer = await post(url, body, signed(body, secret="not-the-secret"))
    assert status == 401 and answer["reason"] == "bad_signature"
    # The right secret over another body.
    headers = signed(body)
    status, answer = await post(url, body.replace(b'"m1"', b'"m9"'), headers)
    assert status == 401 and answer["reason"] == "bad_signature"
    # A correct signature, but made 10 minutes ago (skew allowed: 60 s).
    status, answer = await post(url, body, signed(body, ts=now - 600))
    assert status == 401 and answer["reason"] == "stale_timestamp"
    # No timestamp at all.
    headers = signed(body)
    del headers["X-Riskd-Timestamp"]
    status, answer = await post(url, body, headers)
    assert status == 401
    assert await in_force(url) == {}
    _, stats = await http_json(url + "/stats")
    assert stats["rejected"] == {"bad_signature": 2, "stale_timestamp": 1, "bad_timestamp": 1}
    assert stats["accepted"] == 0


async def test_replays_and_older_sets_are_refused(serve: Serve) -> None:
    url = await serve()
    now = time.time()
    first = message(5, now, [params_entry("m1", 10, now + 60, lev=3.0)])
    headers = signed(first)
    assert (await post(url, first, headers))[0] == 200
    # The same request again (a replay, even with a fresh signature): refused.
    status, answer = await post(url, first, headers)
    assert status == 409 and answer["reason"] == "replayed_seq"
    status, _ = await post(url, first, signed(first))
    assert status == 409
    # An older seq carrying a newer version: refused as a whole.
    older = message(4, now, [params_entry("m1", 11, now + 60, lev=9.0)])
    assert (await post(url, older, signed(older)))[0] == 409
    # A newer seq with an older version of m1: accepted, the set dropped as not newer.
    stale = message(
        6, now, [params_entry("m1", 9, now + 60, lev=9.0), params_entry("m2", 1, now + 60)]
    )
    status, answer = await post(url, stale, signed(stale))
    assert status == 200 and answer == {"ok": True, "applied": 1, "stale": 1}
    # The Idempotency-Key must name the message.
    keyed = message(7, now, [params_entry("m1", 12, now + 60)])
    status, answer = await post(url, keyed, signed(keyed, key=f"{INSTANCE}:6"))
    assert status == 400 and answer["reason"] == "bad_idempotency_key"
    held = await in_force(url)
    assert held["m1"]["version"] == 10 and held["m1"]["max_leverage"]["long"] == 3.0
    _, stats = await http_json(url + "/stats")
    assert stats["last_seq"] == {INSTANCE: 6}
    assert stats["stale_sets"] == 1
    assert stats["rejected"]["replayed_seq"] == 3


async def test_expired_sets_fall_back_to_safe_values_by_wall_clock(
    serve: Serve, wall: ShiftedClock
) -> None:
    url = await serve()
    now = time.time()
    body = message(
        1,
        now,
        [params_entry("m1", 1, now + 0.4, lev=4.0), params_entry("m2", 1, now + 60, lev=4.0)],
    )
    assert (await post(url, body, signed(body)))[0] == 200
    assert (await in_force(url))["m1"]["source"] == "riskd"
    wall.advance(0.5)  # m1's valid_until passes with nothing newer
    held = await in_force(url)
    m1 = held["m1"]
    assert m1["source"] == "safe" and m1["reason"] == "expired"
    assert m1["mode"] == "reduce_only" and m1["expired_version"] == 1
    assert m1["max_leverage"] == {"long": 1.0, "short": 1.0}
    assert m1["fee_rate_hourly"] == {"long": 0.002, "short": 0.002}
    assert m1["max_slippage"] == 0.005
    assert m1["initial_margin"] == pytest.approx({"long": 0.6, "short": 0.4})  # 1x: in full
    assert held["m2"]["source"] == "riskd"  # still valid
    # Something newer puts riskd's values back in force.
    later = time.time()
    body = message(2, later, [params_entry("m1", 2, later + 60, lev=2.0)])
    assert (await post(url, body, signed(body)))[0] == 200
    m1 = (await in_force(url))["m1"]
    assert m1["source"] == "riskd" and m1["max_leverage"]["long"] == 2.0


async def test_feed_clock_judges_replayed_sets_by_their_event_time(serve: Serve) -> None:
    wall_url, feed_url = await serve("wall"), await serve("feed")
    tape_t = parse_time("2022-11-08T20:00:00Z")  # a replayed tape: event time in the past
    body = message(1, tape_t, [params_entry("m1", 1, tape_t + 60)])
    for url in (wall_url, feed_url):
        assert (await post(url, body, signed(body)))[0] == 200
    # By wall time the set expired years ago; by the feed clock it is in force.
    assert (await in_force(wall_url))["m1"]["source"] == "safe"
    status, doc = await http_json(feed_url + "/params")
    assert doc["clock_kind"] == "feed"
    assert abs(parse_time(doc["clock"]) - tape_t) < 5.0
    assert doc["params"][0]["source"] == "riskd"
    # Two event minutes later, with nothing newer for m1: it falls back.
    body = message(2, tape_t + 120, [params_entry("m2", 1, tape_t + 180)])
    assert (await post(feed_url, body, signed(body)))[0] == 200
    held = await in_force(feed_url)
    assert held["m1"]["source"] == "safe" and held["m2"]["source"] == "riskd"


# --- end to end: both programs as subprocesses -------------------------------------------


async def test_riskd_run_to_riskd_receiver_and_the_dead_mans_switch(
    tmp_path: Path, start_daemon: Any
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "receiver.stderr").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "riskd.cli",
            "receiver",
            "--port",
            str(port),
            "--clock",
            "feed",
            "--instance",
            "riskd-test",
            "--log-level",
            "warning",
        ],
        env=clean_env(RISKD_RECEIVER_SECRET=SECRET),
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
    )
    try:
        await wait_until(lambda: _ok(url + "/healthz"), timeout=10, what="riskd receiver")
        # The whole tape at once; sets valid for 3 s of the daemon's (event) clock.
        doc = base_config(
            tmp_path,
            free_port(),
            feed={"path": str(FED_TAPE), "speed": 0.0},
            governor={"ttl_s": 3.0},
            publisher={"http": {"url": url + "/risk-params"}},
        )
        daemon = await start_daemon(doc, env={"RISKD_PUBLISHER__HTTP__SECRET": SECRET})

        async def caught_up() -> bool:
            _, listing = await daemon.get_json("/v1/params")
            want = {e["market"]: e["version"] for e in listing["params"]}
            held = await in_force(url)
            return (
                bool(want)
                and {m: e["version"] for m, e in held.items() if e["source"] == "riskd"} == want
            )

        await wait_until(caught_up, timeout=15, what="the receiver to hold riskd's sets")
        daemon.proc.send_signal(signal.SIGKILL)  # the daemon dies: nothing newer comes
        daemon.proc.wait(5)

        async def all_safe() -> bool:
            held = await in_force(url)
            return bool(held) and all(e["source"] == "safe" for e in held.values())

        await wait_until(all_safe, timeout=6, what="the dead man's switch")
        _, stats = await http_json(url + "/stats")
        assert stats["rejected"] == {} and stats["accepted"] >= 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        log.close()


async def _ok(url: str) -> bool:
    status, _ = await http_json(url)
    return status == 200


def test_receiver_without_a_secret_is_a_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "riskd.cli", "receiver"],
        env=clean_env(),
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 2
