"""The admin API (bearer token, reload, overrides that persist across a restart and are
audited) and explain (`GET /v1/explain/{market}`, `riskd explain`), on daemons serving
on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.support import (
    FED_CSV,
    FED_TAPE,
    InProcessDaemon,
    base_config,
    free_port,
    merge,
    tape_rows,
    wait_until,
    write_config,
)

TOKEN = "admin-token-93c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
POLY = "fed-dec2025-nochange-poly"
KALSHI = "fed-dec2025-nochange-kalshi"
MARKETS = {r[1] for r in tape_rows(FED_CSV)}


async def call(
    url: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        data = (
            None
            if body is None
            else (body if isinstance(body, bytes) else json.dumps(body).encode())
        )
        async with session.request(method, url, data=data, headers=headers) as resp:
            text = await resp.text()
            return resp.status, json.loads(text) if text else None


def admin_doc(tmp_path: Path, **server: Any) -> dict[str, Any]:
    # The whole tape at once; the clock then stays at its last tick.
    return base_config(
        tmp_path,
        0,
        feed={"path": str(FED_TAPE), "speed": 0.0},
        server={"admin_token": TOKEN, **server},
    )


async def settled(d: InProcessDaemon) -> bool:
    return bool(d.daemon.feed.finished) and set(d.daemon.engine.current) == MARKETS


async def published(d: InProcessDaemon, market: str) -> dict[str, Any]:
    status, entry = await d.get_json(f"/v1/params/{market}")
    assert status == 200
    return dict(entry)


ENDPOINTS = [
    ("POST", "/v1/admin/reload", None),
    ("POST", "/v1/admin/override", {"market": POLY, "mode": "halted"}),
    ("GET", "/v1/admin/overrides", None),
]


async def test_admin_needs_the_bearer_token(tmp_path: Path, in_process: Any) -> None:
    d = await in_process(admin_doc(tmp_path))
    for method, path, body in ENDPOINTS:
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": TOKEN},
            {"Authorization": f"Bearer {TOKEN}x"},
        ):
            status, answer = await call(d.url + path, method, body, headers)
            assert status == 401, (path, headers, status)
            assert "error" in answer
    assert d.daemon.overrides.overrides == {}  # nothing refused had an effect
    assert not (tmp_path / "state" / "overrides.audit.jsonl").exists()
    for method, path, body in ENDPOINTS:
        status, _ = await call(d.url + path, method, body, AUTH)
        assert status == 200, path


async def test_admin_is_disabled_without_a_token(tmp_path: Path, in_process: Any) -> None:
    d = await in_process(base_config(tmp_path, 0))
    for method, path, body in ENDPOINTS:
        for headers in ({}, {"Authorization": "Bearer "}, AUTH):
            status, _ = await call(d.url + path, method, body, headers)
            assert status == 403, (path, headers)


async def test_overrides_pin_mode_cap_leverage_and_are_audited(
    tmp_path: Path, in_process: Any
) -> None:
    d = await in_process(admin_doc(tmp_path))
    d.start()
    await wait_until(lambda: settled(d), what="the replay")
    before = await published(d, KALSHI)
    model_lev = max(before["max_leverage"].values())
    assert model_lev > 1.2, before  # there is room to cap
    cap = round(1.0 + (model_lev - 1.0) / 2, 2)

    url = d.url + "/v1/admin/override"
    status, answer = await call(
        url,
        "POST",
        {"market": POLY, "mode": "halted", "note": "incident 42"},
        {**AUTH, "X-Riskd-Actor": "alice"},
    )
    assert status == 200 and answer["override"]["mode"] == "halted"
    assert answer["previous"] is None
    status, _ = await call(url, "POST", {"market": KALSHI, "max_leverage": cap}, AUTH)
    assert status == 200

    async def pinned() -> bool:
        poly, kalshi = await published(d, POLY), await published(d, KALSHI)
        return (
            poly["mode"] == "halted"
            and "config_override" in poly["reasons"]
            and max(kalshi["max_leverage"].values()) <= cap
            and "config_override" in kalshi["reasons"]
        )

    await wait_until(pinned, what="the overrides in the published sets")
    # The audit log of the batches has them too (what the exchange got).
    status, listing = await call(d.url + "/v1/admin/overrides", headers=AUTH)
    assert status == 200 and listing["allow_loosen"] is False
    assert set(listing["overrides"]) == {POLY, KALSHI}
    assert listing["overrides"][POLY]["actor"] == "alice"
    assert listing["overrides"][POLY]["note"] == "incident 42"

    # Refused: loosening without allow_loosen, bad requests, unknown markets.
    status, answer = await call(
        url, "POST", {"market": KALSHI, "max_leverage": 15.0, "loosen": True}, AUTH
    )
    assert status == 403 and "allow_loosen" in answer["error"]
    for bad in (
        {"market": POLY},
        {"market": POLY, "mode": "sideways"},
        {"market": POLY, "max_leverage": 0.5},
        {"market": POLY, "colour": "red"},
        {"mode": "halted"},
        [1, 2],
    ):
        status, _ = await call(url, "POST", bad, AUTH)
        assert status == 400, bad
    status, _ = await call(url, "POST", b"{not json", AUTH)
    assert status == 400
    status, _ = await call(url, "POST", {"market": "no-such-market", "mode": "halted"}, AUTH)
    assert status == 404

    # Clearing gives the market back to the model.
    status, answer = await call(url, "POST", {"market": POLY, "clear": True}, AUTH)
    assert status == 200 and answer["override"] is None
    assert answer["previous"]["mode"] == "halted"

    async def released() -> bool:
        return (await published(d, POLY))["mode"] != "halted"

    await wait_until(released, what="the pin to be cleared")
    assert await d.stop() == 0

    audit = [
        json.loads(line)
        for line in (tmp_path / "state" / "overrides.audit.jsonl").read_text().splitlines()
    ]
    assert [(r["action"], r["market"]) for r in audit] == [
        ("set", POLY),
        ("set", KALSHI),
        ("clear", POLY),
    ]
    assert audit[0]["actor"] == "alice" and audit[0]["override"]["note"] == "incident 42"
    assert audit[2]["previous"]["mode"] == "halted" and audit[2]["override"] is None
    stored = json.loads((tmp_path / "state" / "overrides.json").read_text())
    assert set(stored["overrides"]) == {KALSHI}


async def test_an_override_changes_only_the_fields_it_gives(
    tmp_path: Path, in_process: Any
) -> None:
    d = await in_process(admin_doc(tmp_path))
    d.start()
    await wait_until(lambda: settled(d), what="the replay")
    url = d.url + "/v1/admin/override"
    stored_file = tmp_path / "state" / "overrides.json"

    def stored() -> dict[str, Any] | None:
        return json.loads(stored_file.read_text())["overrides"].get(POLY)

    status, answer = await call(
        url, "POST", {"market": POLY, "mode": "halted", "note": "incident 7"}, AUTH
    )
    assert status == 200

    async def halted_1x() -> bool:
        entry = await published(d, POLY)
        return entry["mode"] == "halted" and entry["max_leverage"] == {"long": 1.0, "short": 1.0}

    await wait_until(halted_1x, what="a halted market at 1x on both sides")

    # A later cap keeps the halt (it used to replace the override whole: back to normal).
    status, answer = await call(url, "POST", {"market": POLY, "max_leverage": 1.5}, AUTH)
    assert status == 200
    assert answer["override"]["mode"] == "halted" and answer["override"]["max_leverage"] == 1.5
    assert answer["override"]["note"] == "incident 7"
    assert answer["previous"]["mode"] == "halted" and answer["previous"]["max_leverage"] is None
    assert stored() == answer["override"]
    await wait_until(halted_1x, what="the halt to stay")

    # null clears one field: the cap stays, the market is no longer halted.
    status, answer = await call(url, "POST", {"market": POLY, "mode": None}, AUTH)
    assert status == 200
    assert answer["override"]["mode"] is None and answer["override"]["max_leverage"] == 1.5

    async def capped() -> bool:
        entry = await published(d, POLY)
        return (
            entry["mode"] != "halted"
            and "config_override" in entry["reasons"]
            and max(entry["max_leverage"].values()) <= 1.5
        )

    await wait_until(capped, what="the cap alone")

    # Nothing left to override: the override is gone.
    status, answer = await call(url, "POST", {"market": POLY, "max_leverage": None}, AUTH)
    assert status == 200 and answer["override"] is None and stored() is None

    # DELETE clears a whole override.
    status, _ = await call(
        url, "POST", {"market": POLY, "mode": "reduce_only", "max_leverage": 2}, AUTH
    )
    assert status == 200
    status, answer = await call(f"{url}/{POLY}", "DELETE", headers=AUTH)
    assert status == 200 and answer["override"] is None
    assert answer["previous"]["mode"] == "reduce_only"
    assert answer["previous"]["max_leverage"] == 2.0
    assert stored() is None
    status, _ = await call(f"{url}/{POLY}", "DELETE")
    assert status == 401
    status, _ = await call(f"{url}/no-such-market", "DELETE", headers=AUTH)
    assert status == 404

    # Refused: loosen without a leverage to loosen to, a bad value for a field.
    for bad in (
        {"market": POLY, "loosen": True},
        {"market": POLY, "loosen": "yes"},
        {"market": POLY, "mode": "halted", "clear": True},
    ):
        status, _ = await call(url, "POST", bad, AUTH)
        assert status == 400, bad
    assert await d.stop() == 0

    audit = [
        json.loads(line)
        for line in (tmp_path / "state" / "overrides.audit.jsonl").read_text().splitlines()
    ]
    assert [(r["action"], r["changes"]) for r in audit] == [
        ("set", {"mode": "halted", "note": "incident 7"}),
        ("set", {"max_leverage": 1.5}),
        ("set", {"mode": None}),
        ("clear", {"max_leverage": None}),
        ("set", {"mode": "reduce_only", "max_leverage": 2.0}),
        ("clear", None),
    ]
    assert audit[1]["override"]["mode"] == "halted" and audit[3]["previous"]["max_leverage"] == 1.5


async def test_loosening_override_only_with_allow_loosen_and_reload(
    tmp_path: Path, in_process: Any
) -> None:
    doc = admin_doc(tmp_path, allow_loosen=True)
    d = await in_process(doc)
    d.start()
    await wait_until(lambda: settled(d), what="the replay")
    status, model = await d.get_json(f"/v1/explain/{KALSHI}")
    target = model["model"]["sides"]["long"]["max_leverage"]
    loose = float(min(20, math.ceil(target * 2) + 1))  # whole: no rounding to the 0.01 step
    status, _ = await call(
        d.url + "/v1/admin/override",
        "POST",
        {"market": KALSHI, "max_leverage": loose, "loosen": True},
        AUTH,
    )
    assert status == 200
    status, doc_now = await d.get_json(f"/v1/explain/{KALSHI}")
    # The override replaces the model's target; the governor loosens towards it by steps.
    assert doc_now["model"]["sides"]["long"]["max_leverage"] == loose
    assert "config_override" in doc_now["model"]["reasons"]
    assert doc_now["governor"]["override"]["loosen"] is True

    async def pending() -> bool:
        _, doc_gov = await d.get_json(f"/v1/explain/{KALSHI}")
        step = (doc_gov["governor"]["pending_loosening"] or {}).get("long")
        return bool(step and step["target_max_leverage"] == loose)

    await wait_until(pending, what="a pending loosening towards the override")

    # allow_loosen off again (reload over the admin API): the override is a cap once more.
    write_config(
        tmp_path / "riskd.toml", merge(doc, {"server": {"allow_loosen": False, "enabled": False}})
    )
    status, answer = await call(d.url + "/v1/admin/reload", "POST", headers=AUTH)
    assert status == 200 and answer == {"reloaded": True}
    status, doc_after = await d.get_json(f"/v1/explain/{KALSHI}")
    assert doc_after["model"]["sides"]["long"]["max_leverage"] == target

    # With loosening off, the stored loosening override may still be tightened (its mode),
    # not given a new leverage to loosen to.
    url = d.url + "/v1/admin/override"
    status, answer = await call(url, "POST", {"market": KALSHI, "mode": "reduce_only"}, AUTH)
    assert status == 200 and answer["override"]["loosen"] is True
    assert answer["override"]["max_leverage"] == loose
    status, _ = await call(url, "POST", {"market": KALSHI, "max_leverage": 19.0}, AUTH)
    assert status == 403
    status, answer = await call(
        url, "POST", {"market": KALSHI, "max_leverage": 2.0, "loosen": False}, AUTH
    )
    assert status == 200 and answer["override"]["loosen"] is False

    # An invalid file is refused with the reason; the running config stays.
    (tmp_path / "riskd.toml").write_text("[governor]\ndeadband = -1\n", encoding="utf-8")
    status, answer = await call(d.url + "/v1/admin/reload", "POST", headers=AUTH)
    assert status == 422 and answer["reloaded"] is False
    assert "governor.deadband" in answer["error"]
    assert d.daemon.settings.server.admin_token.get_secret_value() == TOKEN
    registry = d.daemon.metrics.registry
    assert registry.get_sample_value("riskd_config_reloads_total", {"result": "ok"}) == 1
    assert registry.get_sample_value("riskd_config_reloads_total", {"result": "error"}) == 1
    assert await d.stop() == 0


async def test_overrides_survive_a_restart(tmp_path: Path, start_daemon: Any) -> None:
    port = free_port()
    # No state snapshot: the second run replays the tape from scratch, so what pins the
    # market afterwards is the overrides file alone.
    doc = base_config(
        tmp_path, port, feed={"path": str(FED_TAPE), "speed": 0.0}, state={"enabled": False}
    )
    env = {"RISKD_SERVER__ADMIN_TOKEN": TOKEN}
    daemon = await start_daemon(doc, env=env)
    status, _ = await call(
        daemon.url + "/v1/admin/override",
        "POST",
        {"market": POLY, "mode": "reduce_only", "max_leverage": 1.0, "note": "before the restart"},
        AUTH,
    )
    assert status == 200
    daemon.send(signal.SIGTERM)
    assert await daemon.wait_exit(5) == 0

    again = await start_daemon(doc, env=env)
    status, listing = await call(again.url + "/v1/admin/overrides", headers=AUTH)
    assert status == 200
    assert listing["overrides"][POLY]["mode"] == "reduce_only"
    assert listing["overrides"][POLY]["note"] == "before the restart"

    async def in_force() -> bool:
        status, entry = await again.get_json(f"/v1/params/{POLY}")
        return (
            status == 200
            and entry["mode"] == "reduce_only"
            and entry["max_leverage"] == {"long": 1.0, "short": 1.0}
            and "config_override" in entry["reasons"]
        )

    await wait_until(in_force, what="the override in force after the restart")
    again.send(signal.SIGTERM)
    assert await again.wait_exit(5) == 0


async def test_explain_and_riskd_explain(tmp_path: Path, in_process: Any) -> None:
    d = await in_process(base_config(tmp_path, 0, feed={"path": str(FED_TAPE), "speed": 0.0}))
    d.start()
    await wait_until(lambda: settled(d), what="the replay")
    entry = await published(d, POLY)
    status, doc = await d.get_json(f"/v1/explain/{POLY}")
    assert status == 200
    assert doc["market"] == POLY and doc["published"]["version"] >= entry["version"]
    assert doc["inputs"]["p"] == entry["inputs"]["p"]
    assert doc["estimator"]["ticks"] > 0
    for side in ("long", "short"):
        s = doc["model"]["sides"][side]
        groups = s["margin_by_group"]
        assert set(groups) == {"resolution", "jump", "diffusion"}
        # The groups split the expected shortfall between them.
        assert abs(sum(groups.values()) - s["expected_shortfall"]) <= 1e-5 + 1e-4 * abs(
            s["expected_shortfall"]
        )
        assert sum(s["fee_by_group"].values()) <= s["fee_rate_hourly"] * (1 + 1e-4) + 1e-12
    gov = doc["governor"]
    assert gov["version"] == doc["published"]["version"]
    assert gov["mode"] == doc["published"]["mode"]
    for key in ("stale", "jump_cooldown", "halt", "freeze", "pending_loosening", "override"):
        assert key in gov
    status, missing = await d.get_json("/v1/explain/no-such-market")
    assert status == 404 and "no-such-market" in missing["error"]

    # `riskd explain` prints it readably, and says why it cannot (four CLI runs at once).
    (code, out), (code_json, out_json), (code_unknown, _), (code_down, _) = await asyncio.gather(
        run_cli("explain", POLY, "--url", d.url),
        run_cli("explain", POLY, "--url", d.url, "--json"),
        run_cli("explain", "no-such-market", "--url", d.url),
        run_cli("explain", POLY, "--url", f"http://127.0.0.1:{free_port()}"),
    )
    assert code == 0 and POLY in out and "diffusion" in out and "governor" in out
    assert code_json == 0 and json.loads(out_json)["market"] == POLY
    assert code_unknown == 2  # an unknown market is bad input
    assert code_down == 1  # no daemon there
    assert await d.stop() == 0


async def run_cli(*args: str) -> tuple[int, str]:
    """`riskd ...` in a subprocess, without blocking the loop the daemon serves on."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "riskd.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()
