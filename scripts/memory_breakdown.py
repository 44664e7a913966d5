"""Where riskd's memory goes, in the live bench's run (scripts/bench_live.py).

    python scripts/memory_breakdown.py --markets 100000 [--seconds 4] [--json FILE]

runs the bench's flow for a riskd with 4 markets (the baseline) and one with N: a
local Polymarket venue, a markets file binding both tokens of every market, warm-up,
saturated and paced phases. riskd is started through this script (`daemon`), which
runs `riskd run` unchanged and answers SIGUSR1 with what it holds, written as JSON
beside the config: RSS; glibc's heap (`mallinfo2`: in use, free, the free top);
Python's allocator (`sys._debugmallocstats`: arenas, blocks in use, free blocks,
unused pools, all resident); and the daemon's parts, each the deep size of the
objects reached from it (every object counted once, for the first part that reaches
it: the engine's attributes, then each feed's and its codec's, the pipeline's, each
publisher's, the daemon's own). What no part reaches is allocator overhead, freed
memory the allocators keep, and what the process has before any market (numba,
LLVM, the modules): RSS above the baseline minus the parts.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_live  # noqa: E402

from riskd import heap  # noqa: E402

DUMP = "memory.json"  # beside the config, in the bench's folder
SKIP = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.CodeType,
    types.MethodType,
    types.FrameType,
)


# --- in the daemon ---------------------------------------------------------------------


MALLINFO2 = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"


class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in MALLINFO2.split()]


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def glibc() -> dict[str, int]:
    """glibc's main heap: its size, in use, free, and the free top it could trim."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Mallinfo2
    info = libc.mallinfo2()
    return {
        "heap": info.arena,
        "in_use": info.uordblks,
        "free": info.fordblks,
        "free_top": info.keepcost,
        "mapped": info.hblkhd,
    }


def pymalloc() -> dict[str, int]:
    """Python's small-object allocator, from `sys._debugmallocstats` (on stderr)."""
    read, write = os.pipe()
    saved = os.dup(2)
    os.dup2(write, 2)
    try:
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(write)
    text = os.read(read, 1 << 20).decode()
    os.close(read)

    def number(pattern: str) -> int:
        found = re.search(pattern + r"\s*=\s*([\d,]+)", text)
        return int(found.group(1).replace(",", "")) if found else 0

    return {
        "arenas": number(r"# arenas allocated current"),
        "in_use": number(r"# bytes in allocated blocks"),
        "free_blocks": number(r"# bytes in available blocks"),
        "unused_pools": number(r"unused pools \* \d+ bytes"),
    }


def deep_size(root: object, seen: set[int]) -> int:
    """The objects reached from `root` not yet in `seen` (added to it), in bytes."""
    import numpy as np

    size, stack = 0, [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, SKIP):
            continue
        seen.add(id(obj))
        size += sys.getsizeof(obj)
        if isinstance(obj, np.ndarray):
            if obj.base is not None:
                stack.append(obj.base)
            if obj.dtype == object:
                stack.extend(obj.ravel().tolist())
            continue
        stack.extend(gc.get_referents(obj))
    return size


def owners(daemon: Any) -> list[object]:
    """The objects whose attributes are the parts (not parts themselves: a back
    reference to one, as `engine.current` has to the engine, claims nothing), and the
    event loop (a connection reaches it, and through it every task's locals)."""
    feeds = list(daemon.feeds)
    codecs = [getattr(feed, "codec", None) for feed in feeds]
    loop = asyncio.get_running_loop()
    return [daemon, daemon.engine, daemon.pipeline, *feeds, *codecs, *daemon.publishers, loop]


def parts(daemon: Any) -> list[tuple[str, object]]:
    """The daemon's parts, in the order they claim what they reach."""
    out: list[tuple[str, object]] = [(f"engine.{k}", v) for k, v in vars(daemon.engine).items()]
    for feed in daemon.feeds:
        codec = getattr(feed, "codec", None)
        if codec is not None:
            out += [(f"feed {feed.venue}: codec.{k}", v) for k, v in vars(codec).items()]
        out += [(f"feed {feed.venue}: {k}", v) for k, v in vars(feed).items() if k != "codec"]
    out += [(f"pipeline.{k}", v) for k, v in vars(daemon.pipeline).items()]
    for pub in daemon.publishers:
        out += [(f"publisher {pub.name}: {k}", v) for k, v in vars(pub).items()]
    out += [(f"daemon.{k}", v) for k, v in vars(daemon).items()]
    return out


def dump(daemon: Any, path: Path) -> None:
    doc: dict[str, Any] = {"rss": rss(), "glibc": glibc(), "pymalloc": pymalloc()}
    seen = {id(owner) for owner in owners(daemon)}
    sizes = [(name, deep_size(obj, seen)) for name, obj in parts(daemon)]
    doc["parts"] = {name: size for name, size in sizes if size}
    doc["markets"] = len(daemon.engine)
    doc["kernels"] = kernel_signatures()
    # Then what the allocator gives back at once: the rest of RSS is what is held
    # (riskd/heap.py). Measured after the rest, as it changes the heap.
    started = time.perf_counter()
    heap.trim()
    doc["trim_s"], doc["rss_trimmed"] = time.perf_counter() - started, rss()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


def kernel_signatures() -> dict[str, int]:
    """How many signatures each of riskd's compiled kernels has loaded: one that a
    larger riskd loads and the baseline did not holds LLVM's memory for it (several
    MiB, outside malloc's heap)."""
    from numba.core.registry import CPUDispatcher

    out: dict[str, int] = {}
    for name, module in list(sys.modules.items()):
        if name.startswith("riskd"):
            for attr, value in vars(module).items():
                if isinstance(value, CPUDispatcher):
                    out[f"{name}.{attr}"] = len(value.signatures)
    return out


def daemon_main(argv: list[str]) -> None:
    """`riskd run ...`, answering SIGUSR1 with a breakdown in DUMP beside the config."""
    import riskd.app
    from riskd.cli import main

    folder = Path(argv[argv.index("-c") + 1]).parent
    made: list[Any] = []
    init = riskd.app.Daemon.__init__

    def remember(self: Any, *args: Any, **kwargs: Any) -> None:
        made.append(self)
        init(self, *args, **kwargs)

    riskd.app.Daemon.__init__ = remember  # type: ignore[method-assign]
    signal.signal(signal.SIGUSR1, lambda *_: dump(made[0], folder / DUMP))
    sys.argv = ["riskd", *argv]
    sys.exit(main())


# --- the bench's side -------------------------------------------------------------------

BREAKDOWNS: list[dict[str, Any]] = []


def ask(pid: int) -> None:
    """Ask riskd (`pid`) for its breakdown and wait for it."""
    # Its command line ends with the config, in the bench's folder.
    folder = Path(Path(f"/proc/{pid}/cmdline").read_text().split("\0")[-2]).parent
    path = folder / DUMP
    path.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 600
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError("riskd wrote no breakdown")
        time.sleep(0.2)
    BREAKDOWNS.append(json.loads(path.read_text()))


def report(base: dict[str, Any], full: dict[str, Any], floor: float = 1.0) -> str:
    """Per market above the baseline: RSS, the allocators, the parts."""
    n = full["markets"] - base["markets"]

    def per(key: str, group: str | None = None) -> float:
        a, b = (full, base) if group is None else (full[group], base[group])
        return (a[key] - b[key]) / n

    top = per("free_top", "glibc")
    lines = [
        f"{full['markets']:,} markets; bytes per market above the "
        f"{base['markets']}-market baseline",
        f"{per('rss'):8.0f}  RSS",
        f"{per('rss_trimmed'):8.0f}  RSS after malloc_trim ({full['trim_s'] * 1e3:.1f} ms)",
        f"{per('in_use', 'glibc'):8.0f}  glibc heap in use (numpy arrays, dict tables, bytes)",
        f"{per('free', 'glibc'):8.0f}  glibc heap free (of which its top {top:.0f})",
        f"{per('mapped', 'glibc'):8.0f}  glibc blocks mapped on their own (large arrays)",
        f"{per('in_use', 'pymalloc'):8.0f}  Python objects in pymalloc's blocks",
        f"{per('unused_pools', 'pymalloc'):8.0f}  pymalloc unused pools (in arenas still used)",
        f"{per('free_blocks', 'pymalloc'):8.0f}  pymalloc free blocks in used pools",
        "parts (deep sizes of what each reaches first):",
    ]
    rows = sorted(full["parts"].items(), key=lambda kv: -kv[1])
    total = sum(full["parts"].values()) - sum(base["parts"].values())
    for name, size in rows:
        if size / n >= floor:
            lines.append(f"{size / n:8.0f}  {name}")
    lines.append(f"{total / n:8.0f}  all parts, above the baseline's")
    for name, count in sorted(full["kernels"].items()):
        if count != base["kernels"].get(name, 0):
            lines.append(
                f"kernel {name}: {count} signatures (baseline {base['kernels'].get(name, 0)})"
            )
    return "\n".join(lines)


async def run(markets: int, seconds: float) -> None:
    await bench_live.one_size_tiny()
    await bench_live.one_size(markets, seconds, 2.0, None, 0.25)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "daemon":
        daemon_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--markets", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=4.0, help="per measured phase")
    parser.add_argument("--json", type=Path, help="write both breakdowns here")
    args = parser.parse_args()
    bench_live.RISKD_COMMAND = [sys.executable, str(Path(__file__).resolve()), "daemon"]
    bench_live.AT_END = ask
    # The kernels in numba's cache first, as the bench does: compiling takes more memory.
    subprocess.run(
        [str(bench_live.RISKD), "backtest", str(bench_live.ROOT / "data/tapes/fed_dec2025")],
        stdout=subprocess.DEVNULL,
        check=True,
    )
    bench_live.loop_policy()
    asyncio.run(run(args.markets, args.seconds))
    base, full = BREAKDOWNS
    print(report(base, full))
    if args.json is not None:
        args.json.write_text(json.dumps({"baseline": base, "markets": full}, indent=1))


if __name__ == "__main__":
    main()
