"""NATS publisher (`[publisher.nats]`): every batch, as rendered by riskd/wire.py, to
one subject, in order.

With `jetstream = true` each batch is a JetStream publish acknowledged by the server
(the subject must be in a stream), with `Nats-Msg-Id: <instance>:<seq>` so that a
retry after a lost ack is stored once; else a core NATS publish, confirmed by a flush
(the server has it; subscribers that are not there miss it). A failed attempt is
counted as `retry` and tried again after a backoff; a batch dropped because
`max_backlog` were waiting is counted as `error`. The client reconnects by itself.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import nats

from riskd.backoff import backoff
from riskd.publish.base import Batch, PublishStats
from riskd.secrets import mask_url

if TYPE_CHECKING:
    from riskd.config import NatsPublisherSettings

log = logging.getLogger(__name__)


class NatsPublisher:
    name = "nats"

    def __init__(self, cfg: NatsPublisherSettings, stats: PublishStats) -> None:
        self.cfg = cfg
        self.stats = stats
        self.task: asyncio.Task[None] | None = None
        self._queue: collections.deque[Batch] = collections.deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._ok = True
        self._nc: Any = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="publish-nats")

    def submit(self, batch: Batch) -> None:
        if len(self._queue) >= self.cfg.max_backlog:
            self._queue.popleft()
            self.stats.published(self.name, "error", None)
        self._queue.append(batch)
        self._idle.clear()
        self._wake.set()

    def healthy(self) -> bool:
        return self._ok

    async def drain(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning(
                "nats publisher: %d batches unsent at shutdown",
                len(self._queue),
                extra={"publisher": self.name, "reason": "shutdown_deadline"},
            )

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = None

    async def _run(self) -> None:
        await self._connect()
        loop = asyncio.get_running_loop()
        delays = backoff(0.1, 5.0)
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._queue[0]
            started = loop.time()
            try:
                await self._send(batch)
            except Exception as exc:  # no server, no stream, no ack: try again
                if self._ok:
                    log.warning(
                        "nats publisher: cannot publish to %s: %r",
                        self.cfg.subject,
                        exc,
                        extra={"publisher": self.name, "reason": "publish_failed"},
                    )
                self._ok = False
                self.stats.published(self.name, "retry", None)
                await asyncio.sleep(next(delays))
                continue
            if self._queue and self._queue[0] is batch:
                self._queue.popleft()
            self._ok = True
            delays = backoff(0.1, 5.0)
            self.stats.published(self.name, "ok", loop.time() - started)

    async def _send(self, batch: Batch) -> None:
        cfg, nc = self.cfg, self._nc
        headers = {"Riskd-Instance": batch.instance, "Riskd-Seq": str(batch.seq)}
        if cfg.jetstream:
            headers["Nats-Msg-Id"] = f"{batch.instance}:{batch.seq}"
            js = nc.jetstream(timeout=cfg.timeout_s)
            await js.publish(cfg.subject, batch.body(), headers=headers)
        else:
            await nc.publish(cfg.subject, batch.body(), headers=headers)
            await nc.flush(timeout=cfg.timeout_s)

    async def _connect(self) -> None:
        """Until the first connection; from then on the client reconnects by itself."""

        async def quiet(exc: Exception) -> None:
            log.debug("nats publisher: %r", exc)

        delays = backoff(0.2, 5.0)
        while True:
            try:
                self._nc = await nats.connect(
                    self.cfg.url,
                    connect_timeout=self.cfg.timeout_s,
                    reconnect_time_wait=0.5,
                    max_reconnect_attempts=-1,
                    error_cb=quiet,
                )
                return
            except Exception as exc:
                self._ok = False
                log.warning("nats publisher: cannot reach %s: %s", mask_url(self.cfg.url), exc)
                await asyncio.sleep(next(delays))
