"""Waiting for a condition instead of sleeping: poll it until it holds, fail after a
timeout saying what was awaited and what the check last returned."""

from __future__ import annotations

import asyncio
import inspect
import time
import urllib.error
from collections.abc import Callable
from typing import Any, TypeVar

import aiohttp

T = TypeVar("T")


async def wait_until(
    check: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> Any:
    """Poll `check` (plain or async) until it returns something truthy; a connection
    error counts as not yet. Fails after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
            if inspect.isawaitable(last):
                last = await last
        except (aiohttp.ClientError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(interval)


async def until(check: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """`wait_until` with the feed tests' shorter timeout and finer polling."""
    return await wait_until(check, timeout, 0.01, what)


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.25) -> T:
    """`wait_until` for code without an event loop: blocks between polls."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(interval)
