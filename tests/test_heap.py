"""riskd/heap.py: freed memory goes back to the OS (glibc), or trim says it cannot."""

from __future__ import annotations

import ctypes.util
import sys

import pytest

from riskd import heap


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux") or ctypes.util.find_library("c")
                    != "libc.so.6", reason="malloc_trim is glibc's (this checks Linux/glibc)")
def test_trim_returns_freed_heap_memory() -> None:
    # 4 KiB blocks come from glibc's heap (not pymalloc, not mmap); one block kept
    # after them pins the heap's top, so free() alone cannot shrink it.
    blocks = [bytearray(4096) for _ in range(50_000)]  # ~200 MiB
    pin = bytearray(4096)
    del blocks
    freed = rss_mib()
    assert heap.trim()
    assert rss_mib() < freed - 100
    del pin
