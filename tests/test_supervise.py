"""Supervised background tasks (riskd/supervise.py): a task that dies is logged with
its traceback, counted in riskd_task_failures_total{task}, named in /readyz and
restarted; one that cannot be restarted stops the daemon with exit 1."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from riskd.metrics import Metrics
from riskd.publish.base import Batch
from riskd.supervise import Fatal, Supervisor, watch_loop
from tests.support import base_config, http_get, metric_samples, wait_until


class CrashingPublisher:
    """A publisher whose background task raises on its first two batches, then
    delivers. A fake, and the only one here: riskd's own publishers no longer have a
    known crash path (the reversed backoff range that killed the HTTP sender is now a
    config error and cannot raise in its retry loop), and supervision must still be
    shown end to end on the real daemon."""

    name = "crashing"

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.queue: asyncio.Queue[Batch] = asyncio.Queue()
        self.crashes = 0
        self.delivered: list[Batch] = []

    async def start(self) -> None:
        self.task = asyncio.create_task(self._send(), name="crashing-sender")

    async def _send(self) -> None:
        while True:
            batch = await self.queue.get()
            if self.crashes < 2:
                self.crashes += 1
                raise ValueError("the sender broke")
            self.delivered.append(batch)

    def submit(self, batch: Batch) -> None:
        self.queue.put_nowait(batch)

    async def drain(self, timeout: float) -> None:
        return None

    async def close(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def healthy(self) -> bool:
        return True


async def test_a_crashing_publisher_task_is_logged_counted_shown_and_restarted(
    tmp_path: Path, in_process: Any
) -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    d = await in_process(base_config(tmp_path, 0, feed={"speed": 3600.0}))
    sup_log = logging.getLogger("riskd.supervise")
    level = sup_log.level
    sup_log.setLevel(logging.ERROR)  # the test session quiets riskd's loggers
    sup_log.addHandler(handler)
    crashing = CrashingPublisher()
    d.daemon.publishers.append(crashing)
    d.daemon.metrics.register_publishers([crashing.name])
    d.start()

    async def failures() -> float:
        _, _, text = await http_get(d.url + "/metrics")
        return metric_samples(text).get(
            ("riskd_task_failures_total", frozenset({("task", "publish-crashing")})), -1.0
        )

    await wait_until(lambda: _at_least(failures, 1), 15.0, what="the sender's failure counted")
    _, _, text = await http_get(d.url + "/metrics")
    for task in ("feed", "cycle", "snapshots", "loop-lag"):
        assert ("riskd_task_failures_total", frozenset({("task", task)})) in metric_samples(text), (
            task
        )
    status, ready = await d.get_json("/readyz")
    assert status == 503 and "task_failed:publish-crashing" in ready["reasons"], ready
    logged = [r for r in records if "publish-crashing" in r.getMessage()]
    assert logged and logged[0].exc_info is not None  # with its traceback
    assert logged[0].exc_info[0] is ValueError
    await wait_until(lambda: _at_least(failures, 2), 15.0, what="a restart that failed again")
    await wait_until(lambda: _delivered(crashing), 20.0, what="delivery after a restart")
    assert await d.stop() == 0
    sup_log.removeHandler(handler)
    sup_log.setLevel(level)


async def _delivered(pub: CrashingPublisher) -> bool:
    return bool(pub.delivered)


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
    await asyncio.sleep(0.1)  # an absence: a restart, if there were one, would come within this
    assert len(started) == 2
    assert _sample(metrics, "riskd_task_failures_total", "publish-x") == 2


@pytest.fixture(autouse=True)
def _quiet_supervisor_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("CRITICAL", logger="riskd.supervise")


async def test_a_loop_that_returns_because_the_daemon_stops_is_no_failure() -> None:
    """The daemon's loops return once its stop is set, and may see it before shutdown
    tells the supervisor (seen: the cycle loop, logged as a failure in a clean stop)."""
    sup, metrics, fatal = _supervisor()
    stop = asyncio.Event()
    sup.stopping = stop.is_set

    async def loop() -> None:
        while not stop.is_set():
            await asyncio.sleep(0.01)

    task = sup.spawn("cycle", loop, restart=True)
    await wait_until(
        lambda: _sample(metrics, "riskd_task_running", "cycle") == 1, what="the loop running"
    )
    stop.set()
    await asyncio.wait_for(task, 2.0)
    assert _sample(metrics, "riskd_task_failures_total", "cycle") == 0
    assert not fatal and sup.reasons() == []


async def test_the_loop_watcher_sees_a_stall_as_it_was() -> None:
    """riskd_event_loop_lag_seconds: a callback that holds the loop 150 ms shows as one
    wake-up at least that late; the wake-ups around it are observed too, and none is
    negative."""
    seen: list[float] = []
    watcher = asyncio.create_task(watch_loop(seen.append, interval=0.01))
    await wait_until(lambda: len(seen) >= 3, 5.0, what="wake-ups before the stall")
    before = len(seen)
    time.sleep(0.15)  # holds the event loop, as a long callback would
    await wait_until(lambda: len(seen) >= before + 3, 5.0, what="wake-ups after the stall")
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    assert max(seen[before:]) >= 0.14, seen
    assert min(seen) >= 0.0
