"""Supervision of the daemon's background tasks: none ends silently.

A task that raises, or returns when it should run until cancelled, is logged with
its traceback, counted (`riskd_task_failures_total{task}`), named in `/readyz`
(`task_failed:<name>`, while it is down and for `RECENT_S` after) and either
restarted after a capped exponential backoff or, when it cannot be restarted,
reported as fatal: the daemon then stops and exits 1, so that its own supervisor
(systemd, Kubernetes) restarts it.

Two ways in: `spawn` runs a coroutine factory in a task of its own; `watch` follows
a task that a component created itself (a publisher's sender) and restarts the
component through a callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from riskd.backoff import backoff

log = logging.getLogger("riskd.supervise")

RECENT_S = 60.0  # a failure stays in /readyz this long after the task is back
STABLE_S = 60.0  # a task that ran this long before failing restarts at the first delay


def background_thread(name: str) -> ThreadPoolExecutor:
    """One thread for work that may wait but must not take a core from the event loop
    (the state snapshot: tens of MiB copied, checksummed and written at 100k markets):
    it runs at the lowest priority, so on a busy machine the loop goes first."""
    return ThreadPoolExecutor(1, thread_name_prefix=name, initializer=_lowest_priority)


LOOP_LAG_INTERVAL_S = 0.01


async def watch_loop(
    observe: Callable[[float], None], interval: float = LOOP_LAG_INTERVAL_S
) -> None:
    """How late the event loop wakes a task that sleeps `interval`, observed at each
    wake-up: everything the loop runs (a tick's decoding, a cycle, a request) waits
    behind whatever holds it, so a stall shows here whatever its cause (a long
    callback, the GIL held by a thread, the CPU taken by another process)."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval
        await asyncio.sleep(interval)
        observe(max(loop.time() - due, 0.0))


def _lowest_priority() -> None:
    # Linux gives each thread its own nice value (PRIO_PROCESS with the thread's id);
    # elsewhere that call would take the id for a process's, so it is left alone.
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


class TaskStats(Protocol):
    """Where failures are counted (the metrics module implements it)."""

    def task_declared(self, name: str) -> None: ...

    def task_state(self, name: str, running: bool) -> None: ...

    def task_failed(self, name: str) -> None: ...


@dataclass
class _State:
    running: bool = False
    failures: int = 0
    failed_at: float | None = None  # time.monotonic() of the last failure
    delays: Iterator[float] | None = None
    started_at: float = 0.0


@dataclass
class Fatal:
    task: str
    error: BaseException | None


@dataclass
class Supervisor:
    stats: TaskStats
    on_fatal: Callable[[Fatal], None]
    initial_s: float = 0.5
    max_s: float = 30.0
    fatal: Fatal | None = None
    # True once the owner is shutting down: a task that returns then (its loop saw the
    # stop) ended normally, even before `close()` ran.
    stopping: Callable[[], bool] = lambda: False
    _states: dict[str, _State] = field(default_factory=dict)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _closing: bool = False

    def declare(self, name: str) -> None:
        if name not in self._states:
            self._states[name] = _State()
            self.stats.task_declared(name)

    # --- tasks the supervisor runs -------------------------------------------------

    def spawn(
        self,
        name: str,
        factory: Callable[[], Awaitable[object]],
        *,
        restart: bool,
        may_end: bool = False,
    ) -> asyncio.Task[None]:
        """Run `factory()` in a task named `name`. `may_end`: returning is its normal
        end (a replay that finished), else returning is a failure too."""
        self.declare(name)
        task = asyncio.create_task(self._run(name, factory, restart, may_end), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(
        self, name: str, factory: Callable[[], Awaitable[object]], restart: bool, may_end: bool
    ) -> None:
        while True:
            self._started(name)
            error: BaseException | None = None
            try:
                await factory()
            except asyncio.CancelledError:
                self.stats.task_state(name, False)
                raise
            except Exception as exc:
                error = exc
            else:
                if may_end:
                    self._states[name].running = False
                    self.stats.task_state(name, False)
                    return
            if self._closing or (error is None and self.stopping()):
                return
            delay = self._failed(name, error, restart)
            if delay is None:
                return
            await asyncio.sleep(delay)

    # --- tasks a component runs --------------------------------------------------------

    def watch(
        self,
        name: str,
        task: asyncio.Task[Any],
        restart: Callable[[], Awaitable[asyncio.Task[Any] | None]],
    ) -> None:
        """Follow `task`; when it ends other than by cancellation, `restart()` (after the
        backoff) must bring the component back and return its new task."""
        self.declare(name)
        self._started(name)
        task.add_done_callback(lambda t: self._ended(name, t, restart))

    def _ended(
        self,
        name: str,
        task: asyncio.Task[Any],
        restart: Callable[[], Awaitable[asyncio.Task[Any] | None]],
    ) -> None:
        if self._closing or task.cancelled():
            self._states[name].running = False
            self.stats.task_state(name, False)
            return
        delay = self._failed(name, task.exception(), True)
        assert delay is not None
        again = asyncio.create_task(self._restart(name, delay, restart), name=f"restart-{name}")
        self._tasks.add(again)
        again.add_done_callback(self._tasks.discard)

    async def _restart(
        self, name: str, delay: float, restart: Callable[[], Awaitable[asyncio.Task[Any] | None]]
    ) -> None:
        while True:
            await asyncio.sleep(delay)
            if self._closing:
                return
            try:
                task = await restart()
            except Exception as exc:  # the restart itself failed: count it, try again later
                restarted = self._failed(name, exc, True)
                assert restarted is not None
                delay = restarted
                continue
            if task is not None:
                self.watch(name, task, restart)
            else:
                self._started(name)
            log.info("task %s restarted", name, extra={"task": name, "reason": "task_restarted"})
            return

    # --- bookkeeping ---------------------------------------------------------------------

    def _started(self, name: str) -> None:
        state = self._states[name]
        state.running = True
        state.started_at = time.monotonic()
        self.stats.task_state(name, True)

    def _failed(self, name: str, error: BaseException | None, restart: bool) -> float | None:
        """Log and count a failure; the delay before the restart, None if fatal."""
        state = self._states[name]
        now = time.monotonic()
        state.running = False
        state.failures += 1
        state.failed_at = now
        self.stats.task_failed(name)
        what = f"{type(error).__name__}: {error}" if error is not None else "returned"
        extra = {"task": name, "reason": "task_failed"}
        # The exception itself, so its traceback is logged (not the handler's context).
        exc_info = (type(error), error, error.__traceback__) if error is not None else None
        if not restart:
            log.error(
                "task %s stopped unexpectedly (%s): cannot be restarted, stopping the "
                "daemon (exit 1)",
                name,
                what,
                exc_info=exc_info,
                extra=extra,
            )
            if self.fatal is None:
                self.fatal = Fatal(name, error)
                self.on_fatal(self.fatal)
            return None
        if state.delays is None or now - state.started_at >= STABLE_S:
            state.delays = backoff(self.initial_s, self.max_s)
        delay = next(state.delays)
        log.error(
            "task %s stopped unexpectedly (%s), failure %d: restarting in %.1f s",
            name,
            what,
            state.failures,
            delay,
            exc_info=exc_info,
            extra=extra,
        )
        return delay

    def reasons(self) -> list[str]:
        """For /readyz: every task down, or back for less than RECENT_S."""
        now = time.monotonic()
        return [
            f"task_failed:{name}"
            for name, s in self._states.items()
            if s.failed_at is not None and (not s.running or now - s.failed_at < RECENT_S)
        ]

    async def close(self) -> None:
        """Shutdown: nothing is restarted any more; the restarts pending are cancelled."""
        self._closing = True
        pending = [t for t in self._tasks if t.get_name().startswith("restart-")]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
