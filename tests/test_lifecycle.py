"""Lifecycle of `riskd run`: SIGINT/SIGTERM drain and exit 0, SIGHUP reloads, exit at the
end of a replay."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    FED_CSV,
    SECRET,
    DaemonProcess,
    Receiver,
    assert_complete_batch,
    assert_versions_increase,
    base_config,
    free_port,
    last_versions,
    merge,
    parse_time,
    read_audit,
    tape_rows,
    wait_until,
    write_config,
)

SECRET_ENV = {"RISKD_PUBLISHER__HTTP__SECRET": SECRET}
LAST_TICK = max(parse_time(r[0]) for r in tape_rows(FED_CSV))


def audit_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_signal_drains_and_exits_0(
    tmp_path: Path,
    receiver: Receiver,
    start_daemon: Any,
    sig: signal.Signals,
) -> None:
    # A slow exchange: batches pile up and are coalesced, so there is something to
    # drain when the signal comes. The tape takes ~10 s at this speed: we stop mid-way.
    receiver.delay_s = 0.05
    doc = base_config(
        tmp_path,
        free_port(),
        feed={"speed": 2e5},
        governor={"publish_interval_s": 0.02},
        publisher={"http": {"url": receiver.url}},
    )
    daemon = await start_daemon(doc, env=SECRET_ENV)
    audit = tmp_path / "audit.jsonl"

    async def busy() -> bool:
        return audit_lines(audit) >= 3 and len(receiver.messages) >= 2

    await wait_until(busy, what="a few batches")
    started = time.monotonic()
    daemon.send(sig)
    assert await daemon.wait_exit(5) == 0
    assert time.monotonic() - started < 5

    batches = read_audit(audit)  # every line parses: no torn last line
    assert [b["seq"] for b in batches] == list(range(1, len(batches) + 1))
    for batch in batches:
        assert_complete_batch(batch)
    assert_versions_increase(batches)
    # Stopped mid-replay, not at its end.
    assert parse_time(batches[-1]["generated_at"]) < LAST_TICK
    # The final batch reached the exchange before the exit: it ends where the log does.
    receiver.check_all()
    assert last_versions(receiver.batches()) == last_versions(batches)


async def test_sigterm_with_a_hanging_exchange_exits_0_in_time(
    tmp_path: Path,
    receiver: Receiver,
    start_daemon: Any,
) -> None:
    receiver.hang = True  # accepts the connection, never answers
    doc = base_config(tmp_path, free_port(), publisher={"http": {"url": receiver.url}})
    daemon = await start_daemon(doc, env=SECRET_ENV)

    async def stuck() -> bool:
        return len(receiver.attempts) >= 1 and audit_lines(tmp_path / "audit.jsonl") >= 1

    await wait_until(stuck, what="a publish in flight")
    status, body = await daemon.get_json("/healthz")
    assert status == 200
    started = time.monotonic()
    daemon.send(signal.SIGTERM)
    assert await daemon.wait_exit(5) == 0
    assert time.monotonic() - started < 5
    read_audit(tmp_path / "audit.jsonl")
    assert not receiver.messages


async def test_second_sigint_forces_the_exit(
    tmp_path: Path,
    receiver: Receiver,
    start_daemon: Any,
) -> None:
    receiver.hang = True  # the drain would wait for its deadline
    doc = base_config(tmp_path, free_port(), publisher={"http": {"url": receiver.url}})
    daemon = await start_daemon(doc, env=SECRET_ENV)

    async def stuck() -> bool:
        return len(receiver.attempts) >= 1

    await wait_until(stuck, what="a publish in flight")
    daemon.send(signal.SIGINT)

    async def draining() -> bool:  # the first signal taken: a second one pending is lost
        return await daemon.metric("riskd_task_running", task="cycle") == 0

    await wait_until(draining, what="the drain to begin")
    started = time.monotonic()
    daemon.send(signal.SIGINT)
    assert await daemon.wait_exit(5) == 1  # forced: not a clean drain
    assert time.monotonic() - started < 1.0


async def test_exit_at_end(tmp_path: Path, receiver: Receiver, start_daemon: Any) -> None:
    doc = base_config(
        tmp_path,
        free_port(),
        feed={"speed": 0.0, "exit_at_end": True},
        publisher={"http": {"url": receiver.url}},
    )
    daemon = await start_daemon(doc, env=SECRET_ENV, wait=False)
    assert await daemon.wait_exit(15) == 0  # no signal sent

    batches = read_audit(tmp_path / "audit.jsonl")
    for batch in batches:
        assert_complete_batch(batch)
    # The clock stopped at the last tick, and the final batch was published there.
    assert parse_time(batches[-1]["generated_at"]) == pytest.approx(LAST_TICK, abs=1e-3)
    receiver.check_all()
    assert last_versions(receiver.batches()) == last_versions(batches)


async def reloads(daemon: DaemonProcess, result: str) -> float:
    return await daemon.metric("riskd_config_reloads_total", result=result) or 0.0


async def leverages(daemon: DaemonProcess) -> dict[tuple[str, str], float]:
    status, listing = await daemon.get_json("/v1/params")
    assert status == 200
    return {
        (e["market"], side): e["max_leverage"][side]
        for e in listing["params"]
        for side in ("long", "short")
    }


async def test_sighup_reloads_valid_config_and_keeps_old_on_error(
    tmp_path: Path,
    start_daemon: Any,
) -> None:
    doc = base_config(tmp_path, free_port(), limits={"max_leverage": 20.0})
    daemon = await start_daemon(doc)
    rows = len(tape_rows(FED_CSV))

    async def replayed() -> dict[tuple[str, str], float] | None:
        if await daemon.metric("riskd_ticks_total", venue="replay") != rows:
            return None
        lev = await leverages(daemon)
        return lev if lev and max(lev.values()) > 3.0 else None

    before = await wait_until(replayed, what="the replay, with some leverage above 3x")
    assert await reloads(daemon, "ok") == 0

    # A valid change: the cap is lowered and the published leverage follows at once.
    write_config(daemon.config, merge(doc, {"limits": {"max_leverage": 3.0}}))
    daemon.send(signal.SIGHUP)

    async def capped() -> dict[tuple[str, str], float] | None:
        lev = await leverages(daemon)
        return lev if max(lev.values()) <= 3.0 else None

    after = await wait_until(capped, what="leverage capped at 3x")
    assert await reloads(daemon, "ok") == 1
    assert set(after) == set(before)
    assert max(after.values()) == 3.0
    for key, value in after.items():
        assert value == min(before[key], 3.0), key
    lines = audit_lines(tmp_path / "audit.jsonl")

    # Invalid configs are refused whole: a lower cap next to an unknown key, then
    # broken TOML. The daemon runs on with the old values.
    write_config(daemon.config, merge(doc, {"limits": {"max_leverage": 2.0, "bogus": 1}}))
    daemon.send(signal.SIGHUP)

    async def refused(count: int) -> bool:
        return await reloads(daemon, "error") == count

    await wait_until(lambda: refused(1), what="reload error counted")
    daemon.config.write_text("[limits\nmax_leverage = 2.0\n", encoding="utf-8")
    daemon.send(signal.SIGHUP)
    await wait_until(lambda: refused(2), what="second reload error counted")
    cycles = await daemon.metric("riskd_cycle_seconds_count") or 0.0

    async def several_cycles() -> bool:
        return (await daemon.metric("riskd_cycle_seconds_count") or 0.0) >= cycles + 5

    await wait_until(several_cycles, what="several publish cycles")
    status, health = await daemon.get_json("/healthz")
    assert status == 200 and health["status"] == "ok"
    assert await leverages(daemon) == after
    assert await reloads(daemon, "ok") == 1
    assert daemon.proc.poll() is None

    daemon.send(signal.SIGTERM)
    assert await daemon.wait_exit(5) == 0
    batches = read_audit(tmp_path / "audit.jsonl")
    assert len(batches) >= lines
    assert_versions_increase(batches)
    for batch in batches[lines:]:  # published after the refused reloads
        for entry in batch["params"]:
            assert max(entry["max_leverage"].values()) <= 3.0


async def test_the_drain_stops_at_the_configured_shutdown_deadline(
    tmp_path: Path,
    receiver: Receiver,
    start_daemon: Any,
) -> None:
    receiver.hang = True  # the drain waits for its deadline, no longer
    doc = base_config(
        tmp_path,
        free_port(),
        publisher={"http": {"url": receiver.url}},
        server={"shutdown_deadline_s": 0.5},
    )
    daemon = await start_daemon(doc, env=SECRET_ENV)

    async def stuck() -> bool:
        return len(receiver.attempts) >= 1

    await wait_until(stuck, what="a publish in flight")
    started = time.monotonic()
    daemon.send(signal.SIGTERM)
    assert await daemon.wait_exit(5) == 0  # a deadline reached is a clean stop
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 2.5, elapsed


async def test_an_injected_clock_is_the_daemon_clock(tmp_path: Path) -> None:
    from riskd.app import Daemon
    from riskd.config import load_settings
    from riskd.timeutil import iso

    doc = base_config(tmp_path, 0, server={"enabled": False})
    path = write_config(tmp_path / "riskd.toml", doc)
    now = [LAST_TICK + 10.0]
    daemon = Daemon(load_settings(path), path, clock=lambda: now[0])
    async for batch in daemon.feed.ticks():
        daemon.engine.enqueue(batch, None)
    daemon.cycle()
    assert daemon.seq == 1
    assert daemon.now_iso() == iso(now[0])
    assert {s["valid_until"] for s in daemon.sets()} == {iso(now[0] + 60.0)}  # ttl_s
    now[0] += 30.0  # within the ttl and nothing new: nothing to publish
    daemon.cycle()
    assert daemon.seq == 1
    now[0] += 3600.0  # past every valid_until: every set is republished
    daemon.cycle()
    assert daemon.seq == 2
    assert {s["valid_until"] for s in daemon.sets()} == {iso(now[0] + 60.0)}
