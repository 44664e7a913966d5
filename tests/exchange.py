"""An exchange that fails on purpose: a real aiohttp server on 127.0.0.1 in front of the
conftest `Receiver` (which verifies signatures and records what it accepts).

Each request is authenticated by the Receiver's own check; then, while `script`
has steps, the next step decides the answer (a status, a Retry-After header, a
hang longer than the publisher's timeout, a slow success); once the script is
used up the Receiver answers as a healthy exchange. `stop()` and `start()` make it
go away and come back on the same port. Every authentic request is appended to
`receiver.attempts`, answered or not, and its arrival time kept in `arrivals`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from conftest import Receiver


@dataclass(frozen=True)
class Step:
    status: int | None = None  # answer this (None: let the Receiver answer)
    retry_after: str | None = None
    hang_s: float = 0.0  # hold the request first (longer than the client's timeout: a timeout)
    record: bool = False  # after hang_s, hand over to the Receiver (a slow success)


@dataclass
class Exchange:
    receiver: Receiver
    script: deque[Step] = field(default_factory=deque)
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, seq)
    answers: list[int] = field(default_factory=list)  # statuses sent, in order
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/risk-params"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/risk-params", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Go away: the port refuses connections until `start()`."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        if self.receiver.verify(dict(request.headers), raw) is not None:
            return await self.receiver._handle(request)  # counts and answers 401
        body: dict[str, Any] = json.loads(raw)
        self.arrivals.append((time.monotonic(), body["seq"]))
        if not self.script:
            response = await self.receiver._handle(request)
            self.answers.append(response.status)
            return response
        step = self.script.popleft()
        if step.hang_s:
            await asyncio.sleep(step.hang_s)
        if step.record:
            response = await self.receiver._handle(request)
            self.answers.append(response.status)
            return response
        self.receiver.attempts.append(body)
        assert step.status is not None
        headers = {"Retry-After": step.retry_after} if step.retry_after else None
        self.answers.append(step.status)
        return web.json_response({"error": "on purpose"}, status=step.status, headers=headers)


def check_delivery(receiver: Receiver) -> None:
    """What must hold whatever failed: every accepted message newer than the last, no
    set older than or equal to one the exchange has, versions rising per market, and
    no attempt ever carrying an older set of a market than an earlier attempt did."""
    assert receiver.messages, "the exchange accepted nothing"
    seqs = [m.body["seq"] for m in receiver.messages]
    assert all(b > a for a, b in zip(seqs, seqs[1:], strict=False)), seqs
    assert receiver.stale_sets == 0, "an older set was sent after a newer one"
    sent: dict[str, int] = {}
    for body in receiver.attempts:
        for entry in body["params"]:
            assert entry["version"] >= sent.get(entry["market"], 0), entry["market"]
            sent[entry["market"]] = entry["version"]
