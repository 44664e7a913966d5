"""HTTP GETs against the daemon's API: async (aiohttp) and blocking (urllib)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import aiohttp


async def http_get(url: str) -> tuple[int, str, str]:
    """(status, content type, body text); a fresh session so nothing leaks."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        async with session.get(url) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def http_json(url: str) -> tuple[int, Any]:
    status, ctype, body = await http_get(url)
    assert ctype.startswith("application/json"), (url, ctype, body)
    return status, json.loads(body)


def get_blocking(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body) without an event loop."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
