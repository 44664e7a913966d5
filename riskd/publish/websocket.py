"""WebSocket publisher: `/v1/stream` on the daemon's server (interfaces.md).

A client gets a snapshot of every current parameter set on connect (the batch
envelope with `"snapshot": true`), then every batch, as text frames, in order:
the snapshot is queued in the same step as the client is registered, so no batch
is missed or sent twice. Each client has its own queue of at most `max_backlog`
messages and its own writer; a client that falls further behind is disconnected
(close code 1008, counted as `riskd_publishes_total{publisher="websocket",
result="slow_consumer"}`) instead of growing memory, and never slows the other
clients or publishers. With `token` set, the handshake needs
`Authorization: Bearer <token>`. A text frame from a client goes to `on_message`
(the exchange state reports of riskd/exchange.py); its reply, if any, is queued to
that client like a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import WSCloseCode, WSMsgType, web

from riskd.auth import bearer_matches
from riskd.publish.base import Batch, PublishStats

if TYPE_CHECKING:
    from riskd.config import WebsocketPublisherSettings

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 1.0  # a client that cannot even take the close frame is cut off
HEARTBEAT_S = 30.0


@dataclass(eq=False)
class _Client:
    request: web.Request
    ws: web.WebSocketResponse
    queue: asyncio.Queue[bytes]
    writer: asyncio.Task[None] | None = None
    dropped: bool = False
    peer: str = field(default="")


class WebsocketPublisher:
    name = "websocket"

    def __init__(
        self,
        cfg: WebsocketPublisherSettings,
        stats: PublishStats,
        snapshot: Callable[[], bytes],
        on_message: Callable[[str], bytes | None] | None = None,
        max_message_bytes: int = 4096,
    ) -> None:
        self.cfg = cfg
        self.stats = stats
        self.snapshot = snapshot
        self.on_message = on_message
        self.max_message_bytes = max_message_bytes
        self.clients: set[_Client] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._stopped = False

    # --- the Publisher protocol ------------------------------------------------

    async def start(self) -> None:
        self._stopped = False

    def submit(self, batch: Batch) -> None:
        body = batch.body()
        for client in list(self.clients):
            try:
                client.queue.put_nowait(body)
            except asyncio.QueueFull:
                self._drop(client)
        self.stats.published(self.name, "ok", None)

    def healthy(self) -> bool:
        return True  # a dashboard going away is not the daemon's failure

    async def drain(self, timeout: float) -> None:
        """Until every client has been sent what is queued for it (or the deadline)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(c.queue.join() for c in self.clients)), timeout)

    async def close(self) -> None:
        self._stopped = True
        for client in list(self.clients):
            self._disconnect(client, WSCloseCode.GOING_AWAY, b"riskd is shutting down")
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # --- the /v1/stream handler --------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        token = self.cfg.token.get_secret_value()
        if token and not bearer_matches(request.headers.get("Authorization"), token):
            return web.json_response(
                {"error": "a valid bearer token is required"},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        if self._stopped:
            return web.json_response({"error": "shutting down"}, status=503)
        if len(self.clients) >= self.cfg.max_clients:
            return web.json_response({"error": "too many stream clients"}, status=503)
        # Clients mostly read: bounded incoming frames, no compression work per client.
        ws = web.WebSocketResponse(
            heartbeat=HEARTBEAT_S, compress=False, max_msg_size=self.max_message_bytes
        )
        await ws.prepare(request)
        client = _Client(request, ws, asyncio.Queue(self.cfg.max_backlog), peer=str(request.remote))
        # Snapshot and registration in one step: every later batch follows it.
        client.queue.put_nowait(self.snapshot())
        self.clients.add(client)
        client.writer = asyncio.create_task(self._write(client), name="stream-writer")
        try:
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
                if msg.type == WSMsgType.TEXT and self.on_message is not None:
                    self._reply(client, self.on_message(msg.data))
        finally:
            self.clients.discard(client)
            if client.writer is not None:
                client.writer.cancel()
                await asyncio.gather(client.writer, return_exceptions=True)
        return ws

    def _reply(self, client: _Client, reply: bytes | None) -> None:
        if reply is None or client.dropped:
            return
        try:
            client.queue.put_nowait(reply)
        except asyncio.QueueFull:
            self._drop(client)

    async def _write(self, client: _Client) -> None:
        try:
            while True:
                message = await client.queue.get()
                await client.ws.send_frame(message, WSMsgType.TEXT)
                client.queue.task_done()
        except (ConnectionError, RuntimeError):
            pass  # the client went away: the handler cleans up
        except Exception:  # a bug: this client would get nothing more; say so, cut it off
            log.exception(
                "stream client %s: sending failed",
                client.peer,
                extra={"publisher": self.name, "reason": "stream_writer_failed"},
            )
            self.stats.published(self.name, "error", None)
            client.writer = None  # this task: _disconnect must not wait for itself
            self._disconnect(client, WSCloseCode.INTERNAL_ERROR, b"internal error")

    # --- disconnecting -------------------------------------------------------------

    def _drop(self, client: _Client) -> None:
        """A slow consumer: cut it off now, whatever it still has queued."""
        log.warning(
            "stream client %s fell %d batches behind: disconnected",
            client.peer,
            self.cfg.max_backlog,
            extra={"publisher": self.name, "reason": "slow_consumer"},
        )
        self.stats.published(self.name, "slow_consumer", None)
        self._disconnect(client, WSCloseCode.POLICY_VIOLATION, b"slow consumer")

    def _disconnect(self, client: _Client, code: int, reason: bytes) -> None:
        if client.dropped:
            return
        client.dropped = True
        self.clients.discard(client)
        if client.writer is not None:
            client.writer.cancel()
        task = asyncio.create_task(self._close(client, code, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, client: _Client, code: int, reason: bytes) -> None:
        if client.writer is not None:
            await asyncio.gather(client.writer, return_exceptions=True)
        try:
            await asyncio.wait_for(client.ws.close(code=code, message=reason), CLOSE_TIMEOUT_S)
        except Exception as exc:  # a client that cannot take the close frame is cut off
            if not isinstance(exc, TimeoutError | ConnectionError | RuntimeError):
                log.warning(
                    "stream client %s: close failed: %r",
                    client.peer,
                    exc,
                    extra={"publisher": self.name, "reason": "close_failed"},
                )
            transport = client.request.transport
            if transport is not None:
                transport.abort()
