"""The daemon's lifecycle: start-up, serving, shutdown; signals.

Start-up: the API, the publishers, the snapshot, then the supervised tasks (feed,
cycle, snapshots, each publisher's sender, the event loop's lag). Shutdown, on
SIGTERM or SIGINT: stop the feed, publish the final batch, drain the publishers
within `[server] shutdown_deadline_s`, write the snapshot, close the API. A second
signal cuts the drain at once and exits 1 (uvicorn's convention); a third exits
without cleanup.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from functools import partial
from typing import TYPE_CHECKING, Any

from aiohttp import web

from riskd import heap
from riskd.config import ConfigError
from riskd.engine import compile_kernels
from riskd.publish.base import Publisher, background_task
from riskd.server import serve
from riskd.supervise import watch_loop

if TYPE_CHECKING:
    from riskd.app import Daemon
    from riskd.cluster import Cluster

log = logging.getLogger("riskd")


class Lifecycle:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.hurry = asyncio.Event()  # a second signal: cut the drain short
        self.cluster: Cluster | None = None
        self.cluster_task: asyncio.Task[Any] | None = None
        self._signals = 0

    async def run(self) -> int:
        """Start, serve until stopped, shut down; the exit status."""
        self._install_signals()
        compile_kernels(self.daemon.settings)
        runner = await self._start_server()
        self._cluster()
        await self._start_publishers(runner)
        self.daemon.restore()
        gc.collect()  # the start-up's garbage, once, before the heap is trimmed
        heap.trim()
        tasks = self._spawn()
        await self.daemon.stop.wait()
        return await self._shutdown(runner, tasks)

    # --- signals ----------------------------------------------------------------

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.on_stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self.daemon.reload)

    def on_stop(self, signame: str) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("%s: draining", signame, extra={"reason": signame})
            self.daemon.stop.set()
        elif self._signals == 2:
            log.warning("second %s: cutting the drain short", signame, extra={"reason": signame})
            self.hurry.set()
        else:  # the shutdown itself is stuck
            log.warning("third %s: exiting now", signame)
            os._exit(1)

    # --- start-up -------------------------------------------------------------------

    async def _start_server(self) -> web.AppRunner | None:
        cfg = self.daemon.settings.server
        if not cfg.enabled:
            return None
        try:
            runner = await serve(self.daemon)
        except OSError as exc:  # port taken, address not local: the config's to fix
            raise ConfigError(
                f"server.port: cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}"
            ) from None
        log.info("API on http://%s:%d", cfg.host, runner.addresses[0][1])
        return runner

    async def _start_publishers(self, runner: web.AppRunner | None) -> None:
        started: list[Publisher] = []
        try:
            for pub in self.daemon.publishers:
                await pub.start()
                started.append(pub)
        except OSError as exc:  # e.g. the audit log's directory cannot be created
            for done in started:
                await done.close()
            if runner is not None:
                await runner.cleanup()
            raise ConfigError(f"publisher.{pub.name}: cannot start: {exc}") from None

    def _cluster(self) -> None:
        """`[cluster]`: the exchange-facing publishers become one per shard, started
        and stopped with the shard's lease (riskd/cluster.py); the others stay."""
        daemon = self.daemon
        cfg = daemon.settings.cluster
        if cfg is None:
            return
        from riskd.cluster import FENCED, Cluster
        from riskd.publish.registry import PublishContext, make_publishers

        publisher = daemon.settings.publisher
        daemon.publishers[:] = [p for p in daemon.publishers if p.name not in FENCED]

        def fenced(instance: str) -> list[Publisher]:
            context = PublishContext(
                daemon.metrics, instance, daemon.stream_snapshot, rows=daemon.engine.index
            )
            return make_publishers(publisher, context, only=FENCED)

        daemon.pipeline.cluster = self.cluster = Cluster(
            cfg, publisher.instance, daemon.engine, daemon.publishers, fenced
        )

    def _spawn(self) -> list[asyncio.Task[Any]]:
        daemon, sup = self.daemon, self.daemon.supervisor
        if self.cluster is not None:
            # Not among the tasks cancelled first at shutdown: it sends the final batch.
            self.cluster_task = sup.spawn("cluster", self.cluster.run, restart=True)
        for pub in daemon.publishers:
            self._watch(pub)
        return [
            sup.spawn("snapshots", daemon.snapshots, restart=True),
            # A feed that fails is not restarted here (a replay would start over):
            # exit 1. Its normal end (a replay's) is not a failure: the last state is
            # served on.
            sup.spawn("feed", daemon.pipeline.consume, restart=False, may_end=True),
            sup.spawn("cycle", daemon.pipeline.cycles, restart=True),
            sup.spawn(
                "loop-lag", partial(watch_loop, daemon.metrics.loop_lag.observe), restart=True
            ),
        ]

    def _watch(self, pub: Publisher) -> None:
        """A publisher's own task (the HTTP sender) is supervised: when it dies the
        publisher is closed and started again; what it had pending is kept."""
        task = background_task(pub)
        if task is None:
            return

        async def restart() -> asyncio.Task[Any] | None:
            await pub.close()
            await pub.start()
            return background_task(pub)

        self.daemon.supervisor.watch(f"publish-{pub.name}", task, restart)

    # --- shutdown -------------------------------------------------------------------

    async def _shutdown(self, runner: web.AppRunner | None, tasks: list[asyncio.Task[Any]]) -> int:
        daemon, sup = self.daemon, self.daemon.supervisor
        await sup.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        daemon.pipeline.cycle()  # the final batch
        await self._stop_cluster()
        await self._drain()
        for pub in daemon.publishers:
            await pub.close()
        daemon.snapshot()
        if runner is not None:
            await runner.cleanup()
        if sup.fatal is not None:
            log.error(
                "stopped after task %s failed: exit 1",
                sup.fatal.task,
                extra={"task": sup.fatal.task, "reason": "task_failed"},
            )
            return 1
        if self.hurry.is_set():
            log.warning("stopped with the drain cut short: exit 1")
            return 1
        log.info("stopped cleanly after %d batches", daemon.pipeline.seq)
        return 0

    async def _stop_cluster(self) -> None:
        if self.cluster is None:
            return
        await self.cluster.stop(self.daemon.settings.server.shutdown_deadline_s)
        if self.cluster_task is not None:
            self.cluster_task.cancel()
            await asyncio.gather(self.cluster_task, return_exceptions=True)

    async def _drain(self) -> None:
        """Every publisher at once (a hanging exchange never eats the audit log's or
        the stream's time), until the deadline or a second signal."""
        deadline = self.daemon.settings.server.shutdown_deadline_s
        drain: asyncio.Future[Any] = asyncio.gather(
            *(pub.drain(deadline) for pub in self.daemon.publishers)
        )
        hurry: asyncio.Future[Any] = asyncio.ensure_future(self.hurry.wait())
        await asyncio.wait({drain, hurry}, return_when=asyncio.FIRST_COMPLETED)
        for waiting in (drain, hurry):
            waiting.cancel()
        await asyncio.gather(drain, hurry, return_exceptions=True)
