"""The exchange: a real aiohttp server on 127.0.0.1 taking riskd's HTTP publisher's
POSTs (interfaces.md), signatures checked as riskd.receiver checks them.

One `Receiver` serves every test and script; its options give the variations:
failing on purpose (`fail_status`, `delay_s`, `hang`, a `script` of `Step`s, going
away with `stop()` and coming back on the same port), taking unsigned requests
(`secret=None`), and counting only (`keep=False`, for the benchmark's large bodies).
`ReceiverThread` runs one for blocking code.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from riskd.receiver import signature
from tests.support.checks import assert_complete_batch, assert_versions_increase
from tests.support.config import INSTANCE

# Clock skew the receiver tolerates on X-Riskd-Timestamp (replay protection).
MAX_SKEW_S = 300


@dataclass(frozen=True)
class Step:
    """One scripted answer to an authentic request."""

    status: int | None = None  # answer this (None: answer as a healthy exchange)
    retry_after: str | None = None
    hang_s: float = 0.0  # hold the request first (longer than the client's timeout: a timeout)
    record: bool = False  # after hang_s, answer as a healthy exchange (a slow success)


@dataclass
class Received:
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Receiver:
    """The exchange side of the HTTP publisher.

    Verifies `X-Riskd-Signature` over "<timestamp>.<body>" with the shared secret
    and the timestamp's freshness; a bad request gets 401 and is counted in
    `rejected`, never recorded. Every authentic body is appended to `attempts`
    (answered or not) and its arrival to `arrivals`. While `script` has steps (or,
    if it is a function, while it returns one), the next step decides the answer;
    otherwise the request is recorded in `messages`, unless `fail_status` is set,
    which answers that status instead. Like a real exchange it drops sets not newer
    than what it has, counting them in `stale_sets`.
    """

    secret: bytes | None  # None: take unsigned requests
    delay_s: float = 0.0
    fail_status: int | None = None
    hang: bool = False  # hold every request until the receiver closes
    script: deque[Step] | Callable[[], Step | None] = field(default_factory=deque)
    keep: bool = True  # False: parse and keep nothing, count and call `on_post` only
    on_post: Callable[[bytes, float], None] | None = None  # (raw body, wall time of arrival)
    max_body_bytes: int = 1024**2
    port: int = 0  # 0: any free port at the first start, then the same one
    requests: int = 0  # every POST
    messages: list[Received] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)  # every authentic body
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, seq)
    answers: list[int] = field(default_factory=list)  # statuses sent to authentic requests
    rejected: int = 0
    failed: int = 0
    stale_sets: int = 0
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/risk-params"

    async def start(self) -> None:
        app = web.Application(client_max_size=self.max_body_bytes)
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

    async def close(self) -> None:
        self._release.set()
        await self.stop()

    def verify(self, headers: dict[str, str], body: bytes) -> str | None:
        """None if the request is authentic, else why not."""
        if self.secret is None:
            return None
        ts = headers.get("X-Riskd-Timestamp", "")
        sig = headers.get("X-Riskd-Signature", "")
        if not ts.isdigit():
            return "bad timestamp"
        if abs(time.time() - int(ts)) > MAX_SKEW_S:
            return "stale timestamp"
        if not hmac.compare_digest(signature(self.secret, ts, body), sig):
            return "bad signature"
        return None

    def _next_step(self) -> Step | None:
        if callable(self.script):
            return self.script()
        return self.script.popleft() if self.script else None

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.requests += 1
        if not self.keep:
            if self.on_post is not None:
                self.on_post(raw, time.time())
            return web.json_response({"ok": True})
        headers = dict(request.headers)
        problem = self.verify(headers, raw)
        if problem is not None:
            self.rejected += 1
            return web.json_response({"error": problem}, status=401)
        if request.content_type != "application/json":
            self.rejected += 1
            return web.json_response({"error": "content type"}, status=415)
        body = json.loads(raw)
        self.arrivals.append((time.monotonic(), body["seq"]))
        step = self._next_step()
        if step is not None and step.hang_s:
            await asyncio.sleep(step.hang_s)
        if step is not None and not step.record:
            self.attempts.append(body)
            assert step.status is not None
            self.answers.append(step.status)
            extra = {"Retry-After": step.retry_after} if step.retry_after else None
            return web.json_response({"error": "on purpose"}, status=step.status, headers=extra)
        response = await self._accept(headers, body)
        self.answers.append(response.status)
        return response

    async def _accept(self, headers: dict[str, str], body: dict[str, Any]) -> web.Response:
        self.attempts.append(body)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.hang:
            await self._release.wait()
        if self.fail_status is not None:
            self.failed += 1
            return web.json_response({"error": "try later"}, status=self.fail_status)
        self.messages.append(Received(headers, body))
        for entry in body["params"]:
            have = self.latest.get(entry["market"])
            if have is not None and entry["version"] <= have["version"]:
                self.stale_sets += 1
                continue
            self.latest[entry["market"]] = entry
        return web.json_response({"ok": True})

    def batches(self) -> list[dict[str, Any]]:
        return [m.body for m in self.messages]

    def check_all(self, instance: str = INSTANCE) -> None:
        """What every HTTP message must satisfy (interfaces.md)."""
        assert self.messages, "the receiver got nothing"
        seqs = []
        for msg in self.messages:
            body = msg.body
            assert_complete_batch(body, instance)
            assert msg.headers["Idempotency-Key"] == f"{instance}:{body['seq']}"
            assert msg.headers["Content-Type"].startswith("application/json")
            seqs.append(body["seq"])
        assert all(b > a for a, b in zip(seqs, seqs[1:], strict=False)), seqs
        # Every request (retries are new messages) took the next seq, from 1.
        attempt_seqs = [b["seq"] for b in self.attempts]
        assert attempt_seqs == list(range(1, len(attempt_seqs) + 1))
        assert self.stale_sets == 0, "an older set was sent after a newer one"
        assert_versions_increase(self.batches())


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


class ReceiverThread:
    """A Receiver on its own event loop in a thread, for blocking code (a monitoring
    stack that lives for a whole test module, longer than any test's loop)."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(receiver.start(), self._loop).result(10)

    @property
    def url(self) -> str:
        return self.receiver.url

    @property
    def requests(self) -> int:
        return self.receiver.requests

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.receiver.close(), self._loop).result(70)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
