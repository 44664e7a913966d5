"""The daemon under test: `riskd run` as a subprocess (observed from async tests or
from blocking code), or a `Daemon` on the test's own event loop."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.support.checks import sample
from tests.support.client import get_blocking, http_get, http_json
from tests.support.config import clean_env, merge, write_config
from tests.support.waiting import wait_for, wait_until


class _Subprocess:
    """`riskd run -c CONFIG`, its stdout and stderr in a file read only for failure
    messages: tests observe the daemon over its API, never its log text."""

    def __init__(
        self, config: Path, port: int, cwd: Path, env: dict[str, str], stderr_path: Path
    ) -> None:
        self.config = config
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.stderr_path = stderr_path
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

    def _check_running(self, before: str) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(
                f"riskd exited with {self.proc.returncode}{before}:\n{self.stderr()}"
            )

    def send(self, sig: signal.Signals) -> None:
        assert self.proc.poll() is None, f"riskd already exited:\n{self.stderr()}"
        self.proc.send_signal(sig)

    signal = send

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._stderr.close()


class DaemonProcess(_Subprocess):
    """The subprocess observed from an async test."""

    def __init__(self, config: Path, port: int, cwd: Path, env: dict[str, str]) -> None:
        super().__init__(config, port, cwd, env, cwd / f"riskd-{port}.stderr")

    async def wait_healthy(self, timeout: float = 15.0) -> None:
        async def healthy() -> bool:
            self._check_running(" before serving")
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

    async def wait_exit(self, timeout: float) -> int:
        try:
            await wait_until(lambda: self.proc.poll() is not None, timeout, 0.01)
        except AssertionError:
            raise AssertionError(
                f"riskd still running after {timeout}s:\n{self.stderr()}"
            ) from None
        return self.proc.returncode


class Riskd(_Subprocess):
    """The subprocess observed from blocking code (a module-scoped monitoring stack
    outlives any one test's event loop): the config `doc` written to `workdir`."""

    def __init__(self, workdir: Path, doc: dict[str, Any]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        port = int(doc["server"]["port"])
        config = write_config(workdir / "riskd.toml", doc)
        super().__init__(config, port, workdir, clean_env(), workdir / "riskd.stderr")
        self.target = f"127.0.0.1:{self.port}"

    def wait_healthy(self, timeout: float = 20.0) -> None:
        def healthy() -> bool:
            self._check_running("")
            return get_blocking(self.url + "/healthz")[0] == 200

        wait_for(healthy, timeout, f"riskd on {self.target} to be healthy")

    def metrics(self) -> str:
        status, body = get_blocking(self.url + "/metrics")
        assert status == 200
        return body.decode()

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"riskd still running after {timeout}s:\n{self.stderr()}"
            ) from None


@dataclass
class InProcessDaemon:
    """A `Daemon` on the test's event loop, its API (make_app) served on 127.0.0.1."""

    daemon: Any  # riskd.app.Daemon
    url: str
    runner: web.AppRunner | None = None
    task: asyncio.Task[int] | None = None

    @classmethod
    async def build(cls, doc: dict[str, Any], path: Path) -> InProcessDaemon:
        """A Daemon from `doc` (written to `path`, so SIGHUP-style reloads read it),
        its API already served, not yet running."""
        from riskd.app import Daemon
        from riskd.config import load_settings
        from riskd.server import make_app

        # The daemon's own server is off: the same app is served here, before `run`,
        # so the state before any data is observable too.
        doc = merge(doc, {"server": {"enabled": False}})
        write_config(path, doc)
        daemon = Daemon(load_settings(path), path)
        runner = web.AppRunner(make_app(daemon), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return cls(daemon, f"http://127.0.0.1:{runner.addresses[0][1]}", runner)

    def start(self) -> None:
        """Run the daemon's feed, cycles and publishers (`Daemon.run`)."""
        self.task = asyncio.create_task(self.daemon.run())

    async def stop(self, timeout: float = 5.0) -> int:
        assert self.task is not None
        self.daemon.stop.set()
        return await asyncio.wait_for(self.task, timeout)

    async def get_json(self, path: str) -> tuple[int, Any]:
        return await http_json(self.url + path)

    async def close(self) -> None:
        if self.task is not None and not self.task.done():
            await self.stop()
        if self.runner is not None:
            await self.runner.cleanup()
