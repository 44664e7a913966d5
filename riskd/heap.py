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
from typing import Any


def _libc(name: str, *argtypes: Any) -> Any:
    """A C library function, or None where there is none (not glibc: musl, macOS).
    Called through ctypes, it runs without the GIL: the event loop goes on beside it."""
    try:
        fn = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
    if argtypes:
        fn.argtypes, fn.restype = list(argtypes), ctypes.c_int
    return fn


_TRIM: Callable[[int], int] | None = _libc("malloc_trim")


def trim() -> bool:
    """Return the heap's free memory to the OS; False where the C library cannot."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


# Linux 5.14+; Python's mmap module does not name it.
MADV_POPULATE_WRITE = 23
POPULATE_STEP = 1 << 20
_MADVISE = _libc("madvise", ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def mapped(nbytes: int) -> mmap.mmap:
    """`nbytes` of zeroed memory straight from the OS, resident at once (faulting tens
    of MiB in takes milliseconds: do it off the event loop); it goes back to the OS
    when the last array on it is gone. Made resident a MiB at a time by the C
    library's madvise, without the GIL: in one call (MAP_POPULATE, 15-30 ms at 100k
    markets) the event loop stalled beside it, and so it did behind Python's own
    `mmap.madvise`, which holds the GIL."""
    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    size = max(nbytes, 1)
    if not flags:  # not a POSIX system: a plain anonymous map
        return mmap.mmap(-1, size)
    buffer = mmap.mmap(-1, size, flags=flags)
    if _MADVISE is not None and _populate(buffer, size):
        return buffer
    buffer.close()  # an older kernel, or no madvise: all at once
    return mmap.mmap(-1, size, flags=flags | getattr(mmap, "MAP_POPULATE", 0))


def _populate(buffer: mmap.mmap, size: int) -> bool:
    view = (ctypes.c_char * size).from_buffer(buffer)
    try:
        start = ctypes.addressof(view)
        for offset in range(0, size, POPULATE_STEP):
            if _MADVISE(start + offset, min(POPULATE_STEP, size - offset), MADV_POPULATE_WRITE):
                return False
        return True
    finally:
        del view  # the map can close only when nothing points into it
