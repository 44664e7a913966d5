"""Handing freed memory back to the OS.

glibc keeps what a process frees for reuse, so RSS (what an operator's limits and
dashboards see) stays at its peak: after start-up (the markets file's parse, the
subscription) and after a cycle that publishes every market at once (start-up,
markets warming up together, a feed reconnecting), that peak is ~1 KiB per market
above what the daemon holds. `trim()` returns it: ~10 ms on a heap of 700 MiB.

What is made and dropped again and again in large blocks (the state snapshot's
copies, ~230 bytes per market every 10 s) takes memory of its own (`mapped`): in
glibc's heap each freed block is kept for reuse, and once the daemon has freed a few
large blocks glibc's own thresholds keep tens of MiB free at the top of the heap
(15 MiB at 100k markets in `make bench`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        fn: Callable[[int], int] = ctypes.CDLL(
            ctypes.util.find_library("c") or "libc.so.6"
        ).malloc_trim
        return fn
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to hand back
        return None


_TRIM = _malloc_trim()


def trim() -> bool:
    """Return the heap's free memory to the OS; False where the C library cannot."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


# Linux 5.14+; Python's mmap module does not name it.
MADV_POPULATE_WRITE = 23
POPULATE_STEP = 1 << 20


def mapped(nbytes: int) -> mmap.mmap:
    """`nbytes` of zeroed memory straight from the OS, resident at once (faulting tens
    of MiB in takes milliseconds: do it off the event loop); it goes back to the OS
    when the last array on it is gone. Made resident a MiB at a time: in one call
    (MAP_POPULATE, 15-30 ms at 100k markets) the event loop stalled beside it."""
    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    size = max(nbytes, 1)
    if not flags:  # not a POSIX system: a plain anonymous map
        return mmap.mmap(-1, size)
    buffer = mmap.mmap(-1, size, flags=flags)
    try:
        for start in range(0, size, POPULATE_STEP):
            buffer.madvise(MADV_POPULATE_WRITE, start, min(POPULATE_STEP, size - start))
    except (OSError, AttributeError):  # an older kernel, or no madvise: all at once
        buffer.close()
        return mmap.mmap(-1, size, flags=flags | getattr(mmap, "MAP_POPULATE", 0))
    return buffer
