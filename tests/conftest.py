"""Shared fixtures: free ports, config files, `riskd run` subprocesses, an exchange receiver.

Everything is real: the daemon runs as a subprocess (or in-process on the test's loop),
the exchange is an aiohttp server on 127.0.0.1 that verifies signatures the way
interfaces.md specifies, and the daemon is observed through its API, /metrics, the
audit log and what the receiver got, never through its log text.
"""

from __future__ import annotations

import asyncio
import copy
import csv
import hashlib
import hmac
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
TAPES = REPO / "data" / "tapes"
FED_TAPE = TAPES / "fed_dec2025"
FED_CSV = FED_TAPE / "fed_nochange.csv"
FED_MARKETS = FED_TAPE / "markets.json"
MIDTERMS = TAPES / "polymarket_midterms_2022"

SECRET = "test-shared-secret-5f2c"
INSTANCE = "riskd-test"
SIDES = ("long", "short")
MODES = ("normal", "reduce_only", "halted")
# Clock skew the receiver tolerates on X-Riskd-Timestamp (replay protection).
MAX_SKEW_S = 300


# --- small helpers ------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _kernels_compiled() -> None:
    """The model's kernels compiled before the first test: numba compiles them on a
    machine's first use (seconds; a fresh CI machine's cache is empty) and caches them
    on disk. A daemon compiles them before its feed starts, so on a cold cache the
    first test to start one would spend its timeouts waiting for the compiler (seen:
    "timed out waiting for a subscription"). Later daemons, in-process or not, load
    them from the cache."""
    from riskd.config import Settings
    from riskd.engine import compile_kernels

    compile_kernels(Settings())


@pytest.fixture(autouse=True)
def _no_riskd_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """RISKD_ variables of the developer's shell must not change what a test loads."""
    for key in list(os.environ):
        if key.startswith("RISKD_"):
            monkeypatch.delenv(key)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML has no literal for {value!r} in these tests")
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # JSON string escapes are valid TOML basic strings
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {type(value).__name__}")


def to_toml(doc: dict[str, Any]) -> str:
    """A nested dict as TOML: scalars first, then sub-tables as [a.b] headers."""
    lines: list[str] = []

    def table(prefix: str, data: dict[str, Any]) -> None:
        scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
        tables = {k: v for k, v in data.items() if isinstance(v, dict)}
        if prefix and (scalars or not tables):
            lines.append(f"[{prefix}]")
        for key, value in scalars.items():
            if value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
        if prefix and (scalars or not tables):
            lines.append("")
        for key, sub in tables.items():
            table(f"{prefix}.{key}" if prefix else key, sub)

    table("", doc)
    return "\n".join(lines) + "\n"


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge; a None in `override` removes the key."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def write_config(path: Path, doc: dict[str, Any]) -> Path:
    """Write `doc` as TOML atomically (a SIGHUP never reads half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(to_toml(doc), encoding="utf-8")
    tmp.replace(path)
    return path


def base_config(tmp_path: Path, port: int, **sections: dict[str, Any]) -> dict[str, Any]:
    """A complete daemon config: fed tape as fast as possible, API on `port`, audit log
    and state under tmp_path. Keyword sections are deep-merged on top."""
    doc: dict[str, Any] = {
        "feed": {"kind": "replay", "path": str(FED_TAPE), "speed": 0.0, "exit_at_end": False},
        "markets": {"file": str(FED_MARKETS)},
        "governor": {"publish_interval_s": 0.05, "stale_after_s": 14400.0, "ttl_s": 60.0},
        "publisher": {"instance": INSTANCE, "jsonl": {"path": str(tmp_path / "audit.jsonl")}},
        "server": {"host": "127.0.0.1", "port": port},
        "state": {"dir": str(tmp_path / "state")},
        "log": {"level": "warning"},
    }
    return merge(doc, sections)


def clean_env(**extra: str) -> dict[str, str]:
    """The test process environment without any RISKD_ variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKD_")}
    env.update(extra)
    return env


def tape_rows(path: Path) -> list[list[str]]:
    """Data rows of a CSV tape (header dropped)."""
    with path.open(encoding="utf-8", newline="") as fh:
        return [row for row in list(csv.reader(fh))[1:] if row]


def parse_time(text: str) -> float:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text).timestamp()


def read_audit(path: Path) -> list[dict[str, Any]]:
    """Every line of the JSONL audit log, parsed; fails on a torn last line."""
    data = path.read_bytes()
    assert data, f"{path} is empty"
    assert data.endswith(b"\n"), "audit log ends in a torn line"
    return [json.loads(line) for line in data.splitlines()]


def entries_by_market(batches: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for batch in batches:
        for entry in batch["params"]:
            out.setdefault(entry["market"], []).append({**entry, "_at": batch["generated_at"]})
    return out


def assert_versions_increase(batches: list[dict[str, Any]]) -> None:
    for market, entries in entries_by_market(batches).items():
        versions = [e["version"] for e in entries]
        assert all(b > a for a, b in zip(versions, versions[1:], strict=False)), (market, versions)


def last_versions(batches: list[dict[str, Any]]) -> dict[str, int]:
    return {m: es[-1]["version"] for m, es in entries_by_market(batches).items()}


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def assert_complete_entry(entry: dict[str, Any]) -> None:
    """Every field of the published set of interfaces.md, with sane types and ranges."""
    assert isinstance(entry["market"], str) and entry["market"]
    assert isinstance(entry["version"], int) and entry["version"] >= 1
    assert entry["mode"] in MODES
    for key in ("max_leverage", "initial_margin", "maintenance_margin", "fee_rate_hourly"):
        assert set(entry[key]) >= set(SIDES), (key, entry[key])
        assert all(_number(entry[key][s]) for s in SIDES), (key, entry[key])
    for side in SIDES:
        assert entry["max_leverage"][side] >= 1.0
        assert entry["fee_rate_hourly"][side] >= 0.0
        assert 0.0 <= entry["maintenance_margin"][side] <= entry["initial_margin"][side]
    assert _number(entry["max_slippage"]) and 0.0 < entry["max_slippage"] < 1.0
    assert "oi_cap" in entry and (entry["oi_cap"] is None or _number(entry["oi_cap"]))
    assert isinstance(entry["valid_until"], str)
    parse_time(entry["valid_until"])
    assert isinstance(entry["reasons"], list)
    assert all(isinstance(r, str) for r in entry["reasons"])
    inputs = entry["inputs"]
    for key in ("p", "tau_s", "sigma", "lambda", "J"):
        assert _number(inputs[key]), (key, inputs)
    assert 0.0 <= inputs["p"] <= 1.0
    assert inputs["tau_s"] >= 0.0


def assert_complete_batch(batch: dict[str, Any], instance: str = INSTANCE) -> None:
    assert batch["source"] == "riskd"
    assert batch["instance"] == instance
    assert isinstance(batch["seq"], int)
    generated = parse_time(batch["generated_at"])
    assert batch["params"], "an empty batch was published"
    for entry in batch["params"]:
        assert_complete_entry(entry)
        assert parse_time(entry["valid_until"]) > generated


# --- metrics --------------------------------------------------------------------


def metric_samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text -> {(sample name, labels): value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def metric_families(text: str) -> set[str]:
    """Declared family names, as written in the exposition (counters keep `_total`)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
    return names


def sample(text: str, name: str, **labels: str) -> float | None:
    return metric_samples(text).get((name, frozenset(labels.items())))


# --- HTTP client helpers --------------------------------------------------------


async def http_get(url: str) -> tuple[int, str, str]:
    """(status, content type, body text); a fresh session so nothing leaks."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        async with session.get(url) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def http_json(url: str) -> tuple[int, Any]:
    status, ctype, body = await http_get(url)
    assert ctype.startswith("application/json"), (url, ctype, body)
    return status, json.loads(body)


async def wait_until(
    check: Callable[[], Awaitable[Any]],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> Any:
    """Poll an async check until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = await check()
        except (aiohttp.ClientError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(interval)


# --- the daemon as a subprocess -------------------------------------------------


class DaemonProcess:
    """`riskd run -c CONFIG` in a subprocess, observed over its API."""

    def __init__(self, config: Path, port: int, cwd: Path, env: dict[str, str]) -> None:
        self.config = config
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.stderr_path = cwd / f"riskd-{port}.stderr"
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "riskd.cli", "run", "-c", str(config)],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
        )

    def stderr(self) -> str:
        """For failure messages only; tests never assert on it."""
        self._stderr.flush()
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")[-4000:]

    async def wait_healthy(self, timeout: float = 15.0) -> None:
        async def healthy() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"riskd exited with {self.proc.returncode} before serving:\n{self.stderr()}"
                )
            status, _, _ = await http_get(self.url + "/healthz")
            return status == 200

        await wait_until(healthy, timeout, what="/healthz")

    async def get_json(self, path: str) -> tuple[int, Any]:
        return await http_json(self.url + path)

    async def metrics(self) -> str:
        status, _, body = await http_get(self.url + "/metrics")
        assert status == 200
        return body

    async def metric(self, name: str, **labels: str) -> float | None:
        return sample(await self.metrics(), name, **labels)

    def send(self, sig: signal.Signals) -> None:
        assert self.proc.poll() is None, f"riskd already exited:\n{self.stderr()}"
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"riskd still running after {timeout}s:\n{self.stderr()}")
            await asyncio.sleep(0.01)
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._stderr.close()


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Awaitable[DaemonProcess]]]:
    """Factory: `await start_daemon(doc, env=...)` writes the config, starts riskd and
    waits for /healthz. Every process started is killed at teardown if still running."""
    started: list[DaemonProcess] = []

    async def start(
        doc: dict[str, Any],
        env: dict[str, str] | None = None,
        name: str = "riskd.toml",
        wait: bool = True,
    ) -> DaemonProcess:
        config = write_config(tmp_path / name, doc)
        daemon = DaemonProcess(
            config, int(doc["server"]["port"]), tmp_path, clean_env(**(env or {}))
        )
        started.append(daemon)
        if wait:
            await daemon.wait_healthy()
        return daemon

    yield start
    for daemon in started:
        daemon.close()


# --- the exchange receiver ------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Receiver:
    """The exchange side of the HTTP publisher (interfaces.md).

    Verifies `X-Riskd-Signature` over "<timestamp>.<body>" with the shared secret
    and the timestamp's freshness; a bad request gets 401 and is counted in
    `rejected`, never recorded. A good one is recorded in `messages`, unless
    `fail_status` is set, which answers that status instead (for retry tests).
    Like a real exchange it drops sets not newer than what it has, counting them.
    """

    secret: bytes
    delay_s: float = 0.0
    fail_status: int | None = None
    hang: bool = False  # hold every request until the receiver closes
    messages: list[Received] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)  # every authentic body
    rejected: int = 0
    failed: int = 0
    stale_sets: int = 0
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    url: str = ""
    _runner: web.AppRunner | None = None
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/risk-params", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/risk-params"

    async def close(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def verify(self, headers: dict[str, str], body: bytes) -> str | None:
        """None if the request is authentic, else why not."""
        ts = headers.get("X-Riskd-Timestamp", "")
        sig = headers.get("X-Riskd-Signature", "")
        if not ts.isdigit():
            return "bad timestamp"
        if abs(time.time() - int(ts)) > MAX_SKEW_S:
            return "stale timestamp"
        expected = (
            "sha256=" + hmac.new(self.secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        )
        if not hmac.compare_digest(expected, sig):
            return "bad signature"
        return None

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        headers = dict(request.headers)
        problem = self.verify(headers, raw)
        if problem is not None:
            self.rejected += 1
            return web.json_response({"error": problem}, status=401)
        if request.content_type != "application/json":
            self.rejected += 1
            return web.json_response({"error": "content type"}, status=415)
        body = json.loads(raw)
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


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver(SECRET.encode())
    await r.start()
    yield r
    await r.close()


# --- the daemon in-process ------------------------------------------------------


@dataclass
class InProcessDaemon:
    """A `Daemon` on the test's event loop, its API (make_app) served on 127.0.0.1."""

    daemon: Any  # riskd.app.Daemon
    url: str
    task: asyncio.Task[int] | None = None

    def start(self) -> None:
        """Run the daemon's feed, cycles and publishers (`Daemon.run`)."""
        self.task = asyncio.create_task(self.daemon.run())

    async def stop(self, timeout: float = 5.0) -> int:
        assert self.task is not None
        self.daemon.stop.set()
        return await asyncio.wait_for(self.task, timeout)

    async def get_json(self, path: str) -> tuple[int, Any]:
        return await http_json(self.url + path)


@pytest.fixture
async def in_process(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[InProcessDaemon]]]:
    """Factory: `await in_process(doc)` builds a Daemon from `doc` (written as the config
    file, so SIGHUP-style reloads read it) and serves its API; `.start()` runs it."""
    from riskd.app import Daemon
    from riskd.config import load_settings
    from riskd.server import make_app

    made: list[tuple[InProcessDaemon, web.AppRunner]] = []

    async def build(doc: dict[str, Any]) -> InProcessDaemon:
        # The daemon's own server is off: the same app is served here, before `run`,
        # so the state before any data is observable too.
        doc = merge(doc, {"server": {"enabled": False}})
        path = write_config(tmp_path / "riskd.toml", doc)
        daemon = Daemon(load_settings(path), path)
        runner = web.AppRunner(make_app(daemon), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        item = InProcessDaemon(daemon, f"http://127.0.0.1:{runner.addresses[0][1]}")
        made.append((item, runner))
        return item

    yield build
    for item, runner in made:
        if item.task is not None and not item.task.done():
            await item.stop()
        await runner.cleanup()
