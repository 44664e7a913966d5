"""The shared fixtures; what they build lives in tests/support/."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    SECRET,
    DaemonProcess,
    InProcessDaemon,
    Receiver,
    clean_env,
    write_config,
)


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


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver(SECRET.encode())
    await r.start()
    yield r
    await r.close()


@pytest.fixture
async def in_process(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[InProcessDaemon]]]:
    """Factory: `await in_process(doc)` builds a Daemon from `doc` (written as the config
    file, so SIGHUP-style reloads read it) and serves its API; `.start()` runs it."""
    made: list[InProcessDaemon] = []

    async def build(doc: dict[str, Any]) -> InProcessDaemon:
        item = await InProcessDaemon.build(doc, tmp_path / "riskd.toml")
        made.append(item)
        return item

    yield build
    for item in made:
        await item.close()
