"""riskd/heap.py: freed memory goes back to the OS (glibc), or trim says it cannot."""

from __future__ import annotations

import ctypes.util
import gc
import os
import sys
import threading
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest

from riskd import heap
from riskd.config import Settings
from riskd.engine import Engine
from riskd.markets import Market
from tests.support import base_config, wait_until


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or ctypes.util.find_library("c") != "libc.so.6",
    reason="malloc_trim is glibc's (this checks Linux/glibc)",
)
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


@pytest.mark.parametrize("mass", [1, None])
async def test_a_mass_publish_freezes_what_lives_and_trims(
    tmp_path: Path, in_process: Any, mass: int | None
) -> None:
    """A cycle publishing MASS_PUBLISH sets or more moves what is alive out of the
    garbage collector's walk and trims the heap; smaller ones do neither. (The Fed
    tape has 2 markets: MASS_PUBLISH 1 makes its first publish a mass publish.)"""
    from riskd import pipeline

    trims: list[bool] = []
    real_trim = heap.trim

    def counted() -> bool:  # the real trim, counted
        trims.append(True)
        return real_trim()

    gc.unfreeze()
    limit = pipeline.MASS_PUBLISH if mass is None else mass
    try:
        with (
            mock.patch.object(pipeline, "MASS_PUBLISH", limit),
            mock.patch.object(heap, "trim", counted),
        ):
            d = await in_process(base_config(tmp_path, 0))
            d.start()
            await wait_until(lambda: _published(d), what="a first publish")
            assert await d.stop() == 0
        # One trim at start-up; one more after each mass publish.
        if mass is None:
            assert gc.get_freeze_count() == 0 and len(trims) == 1
        else:
            assert gc.get_freeze_count() > 0 and len(trims) >= 2
    finally:
        gc.unfreeze()


async def _published(d: Any) -> bool:
    return bool(d.daemon.seq)


def test_the_engine_counts_markets_at_their_first_tick_once() -> None:
    """What the daemon settles memory on: markets whose feed state (books) now exists."""
    engine = Engine(
        Settings(), {f"m{i}": Market(f"m{i}", 2e9, 2e9) for i in range(5)}, discover=False
    )
    clock = [1.7e9]

    def apply(idx: list[int]) -> None:
        n = len(idx)
        t = clock[0] + np.arange(1, n + 1, dtype=float)
        clock[0] = float(t[-1])
        engine.apply(np.array(idx), t, np.full(n, 0.5), np.zeros(n), np.full(n, np.nan))

    apply([0, 1, 1, 3, 0])  # repeats count once
    assert engine.ticked == 3
    apply([3, 0])
    assert engine.ticked == 3
    engine.add_market("m5", None)
    apply([5, 4, 5])
    assert engine.ticked == 5


async def test_each_periodic_snapshot_hands_freed_memory_back(
    tmp_path: Path, in_process: Any
) -> None:
    """After writing a periodic snapshot, the writer thread trims the heap: what the
    daemon freed since goes back to the OS instead of staying resident for reuse. The
    writer is a thread of its own, at the lowest priority (Linux: its nice value)."""
    trims: list[bool] = []
    where: list[tuple[str, int]] = []
    real_trim = heap.trim

    def counted() -> bool:  # the real trim, counted, and where it ran
        trims.append(True)
        thread = threading.current_thread()
        if thread is not threading.main_thread():
            where.append((thread.name, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        return real_trim()

    with mock.patch.object(heap, "trim", counted):
        d = await in_process(base_config(tmp_path, 0, state={"snapshot_interval_s": 0.2}))
        d.start()
        # One trim at start-up (the Fed tape's two markets make no mass publish).
        await wait_until(lambda: len(trims) >= 3, what="trims after snapshots")
        assert await d.stop() == 0
    assert (tmp_path / "state" / "snapshot.npz").exists()
    assert len(where) >= 2 and all(name.startswith("riskd-snapshot") for name, _ in where)
    if sys.platform.startswith("linux"):
        assert {nice for _, nice in where} == {19}


@pytest.mark.parametrize("advice", [heap.MADV_POPULATE_WRITE, 9999])
def test_mapped_memory_is_zeroed_and_resident_when_it_comes(advice: int) -> None:
    """The capture's buffer is resident before the event loop copies into it (no page
    faults on the loop), made so a MiB at a time; where the kernel refuses the advice
    (9999: none), all at once."""
    nbytes = 48 << 20
    before = rss_mib()
    with mock.patch.object(heap, "MADV_POPULATE_WRITE", advice):
        buffer = heap.mapped(nbytes + 123)
    assert rss_mib() - before >= 46
    assert len(buffer) == nbytes + 123 and not any(buffer[:: 1 << 12])
    buffer.close()
