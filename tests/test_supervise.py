"""Supervised background tasks (riskd/supervise.py): a task that dies is logged with
its traceback, counted in riskd_task_failures_total{task}, named in /readyz and
restarted; one that cannot be restarted stops the daemon with exit 1."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest
from conftest import SECRET, Receiver, base_config, free_port, metric_samples, wait_until
from prometheus_client import CollectorRegistry, generate_latest

from riskd.metrics import Metrics
from riskd.supervise import Fatal, Supervisor


async def test_a_crashing_http_sender_is_logged_counted_shown_and_restarted(
        tmp_path: Path, receiver: Receiver, start_daemon: Any) -> None:
    """The crash is real: a backoff whose first delay exceeds its cap makes the HTTP
    publisher's sender raise (riskd/backoff.py) at its first retryable failure, outside
    the per-request error handling, so its task dies. Before supervision it died
    without a log line and the daemon ran on, delivering nothing."""
    receiver.fail_status = 503
    port = free_port()
    doc = base_config(tmp_path, port, feed={"speed": 3600.0}, publisher={"http": {
        "url": receiver.url, "backoff_initial_s": 2.0, "backoff_max_s": 1.0}})
    daemon = await start_daemon(doc, env={"RISKD_PUBLISHER__HTTP__SECRET": SECRET})

    async def failures() -> float:
        text = await daemon.metrics()
        return metric_samples(text).get(
            ("riskd_task_failures_total", frozenset({("task", "publish-http")})), -1.0)

    # Exported from the start; other tasks too.
    text = await daemon.metrics()
    for task in ("feed", "cycle", "snapshots", "publish-http"):
        assert ("riskd_task_failures_total", frozenset({("task", task)})) in \
            metric_samples(text)
    await wait_until(lambda: _at_least(failures, 1), 15.0, what="the sender's failure counted")
    status, ready = await daemon.get_json("/readyz")
    assert status == 503 and "task_failed:publish-http" in ready["reasons"], ready
    log = daemon.stderr_path.read_text(encoding="utf-8", errors="replace")
    assert "task publish-http stopped unexpectedly" in log and "Traceback" in log, log[-3000:]
    assert "ValueError" in log

    # Restarted (and failing again while the exchange refuses), then delivering once
    # the exchange is back.
    await wait_until(lambda: _at_least(failures, 2), 15.0, what="a restart that failed again")
    receiver.fail_status = None

    async def delivered() -> bool:
        return len(receiver.messages) > 0
    await wait_until(delivered, 20.0, what="delivery after a restart")
    text = await daemon.metrics()
    assert metric_samples(text)[("riskd_task_running",
                                 frozenset({("task", "publish-http")}))] == 1
    receiver.check_all()
    daemon.send(signal.SIGTERM)
    assert await daemon.wait_exit(5.0) == 0


async def _at_least(read: Any, n: float) -> bool:
    return bool(await read() >= n)


# --- the supervisor itself, on real tasks ---------------------------------------


def _supervisor() -> tuple[Supervisor, Metrics, list[Fatal]]:
    metrics = Metrics(CollectorRegistry())
    fatal: list[Fatal] = []
    return Supervisor(metrics, fatal.append, initial_s=0.05, max_s=0.2), metrics, fatal


def _sample(metrics: Metrics, name: str, task: str) -> float:
    text = generate_latest(metrics.registry).decode()
    return metric_samples(text)[(name, frozenset({("task", task)}))]


async def test_a_restartable_task_is_restarted_with_backoff() -> None:
    sup, metrics, fatal = _supervisor()
    runs: list[float] = []
    loop = asyncio.get_running_loop()

    async def flaky() -> None:
        runs.append(loop.time())
        if len(runs) <= 3:
            raise OSError("disk went away")
        await asyncio.Event().wait()  # then runs for good

    task = sup.spawn("flaky", flaky, restart=True)

    async def fourth_run() -> bool:
        return len(runs) >= 4
    await wait_until(fourth_run, 5.0, what="three restarts")
    assert _sample(metrics, "riskd_task_failures_total", "flaky") == 3
    assert _sample(metrics, "riskd_task_running", "flaky") == 1
    assert sup.reasons() == ["task_failed:flaky"]  # back, but failed recently
    assert all(b > a for a, b in zip(runs, runs[1:], strict=False)) and not fatal
    await sup.close()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_task_that_cannot_be_restarted_is_fatal_and_one_that_may_end_is_not() -> None:
    sup, metrics, fatal = _supervisor()

    async def ends() -> None:
        await asyncio.sleep(0)

    async def breaks() -> None:
        raise RuntimeError("bug")

    await sup.spawn("replay", ends, restart=False, may_end=True)
    assert not fatal and sup.reasons() == []
    await sup.spawn("feed", breaks, restart=False)
    assert [f.task for f in fatal] == ["feed"] and isinstance(fatal[0].error, RuntimeError)
    assert sup.reasons() == ["task_failed:feed"]
    assert _sample(metrics, "riskd_task_failures_total", "feed") == 1
    # A task that returns though it should run on is a failure too.
    await sup.spawn("cycle", ends, restart=False)
    assert [f.task for f in fatal] == ["feed"]  # the first fatal failure is the one reported
    assert _sample(metrics, "riskd_task_failures_total", "cycle") == 1


async def test_a_watched_task_is_restarted_through_its_owner() -> None:
    sup, metrics, _ = _supervisor()
    started: list[asyncio.Task[None]] = []

    async def sender(fail: bool) -> None:
        if fail:
            raise ValueError("sender bug")
        await asyncio.Event().wait()

    async def restart() -> asyncio.Task[None]:
        started.append(asyncio.create_task(sender(len(started) < 1)))
        return started[-1]

    first = asyncio.create_task(sender(True))
    sup.watch("publish-x", first, restart)

    async def running() -> bool:
        return len(started) == 2 and not started[-1].done()
    await wait_until(running, 5.0, what="the sender restarted twice")
    assert _sample(metrics, "riskd_task_failures_total", "publish-x") == 2
    await sup.close()
    # Cancelled at shutdown: not a failure, not restarted.
    started[-1].cancel()
    await asyncio.gather(started[-1], return_exceptions=True)
    await asyncio.sleep(0.1)
    assert len(started) == 2
    assert _sample(metrics, "riskd_task_failures_total", "publish-x") == 2


@pytest.fixture(autouse=True)
def _quiet_supervisor_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("CRITICAL", logger="riskd.supervise")
