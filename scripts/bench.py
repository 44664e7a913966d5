"""`make bench`: speed figures, printed (never asserted in unit tests).

The backtest on the shipped tapes, the Polymarket codec alone, then riskd against a
local venue (scripts/bench_live.py, whose options this takes too: `--quick`,
`--markets`, ...).
"""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path

import bench_live
import orjson

from riskd.backtest import runner
from riskd.config import Settings, load_settings
from riskd.engine import Engine
from riskd.feeds.connection import COALESCE, WebsocketFeed
from riskd.feeds.polymarket.codec import PolymarketCodec
from riskd.feeds.settings import ConnectionSettings
from riskd.jit import configure_cache
from riskd.markets import Market
from riskd.tape import Tape

ROOT = Path(__file__).resolve().parent.parent
TAPES = (ROOT / "data/tapes/polymarket_midterms_2022", ROOT / "data/tapes/fed_dec2025")


def best_of(n: int, fn) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def backtests(repeat: int) -> None:
    settings = load_settings(ROOT / "config/riskd.toml")
    print(
        f"machine: {platform.machine()}, {bench_live.cpus()}, "
        f"python {platform.python_version()}; best of {repeat}"
    )
    print(f"{'what':<48} {'rows':>8} {'seconds':>8} {'rows/s':>10}")
    for path in TAPES:
        rows = sum(1 for _ in Tape(path))
        read = best_of(repeat, lambda p=path: sum(1 for _ in Tape(p)))
        print(f"{'tape read ' + path.name:<48} {rows:>8} {read:>8.3f} {rows / read:>10,.0f}")
        # The first run in a process also loads the compiled model kernels from their
        # cache (riskd/jit.py): shown apart, as `riskd backtest` pays it once per call.
        simulated: list[float] = []
        first = best_of(1, lambda p=path: runner.run(p, settings, settle=True))
        print(
            f"{'riskd backtest ' + path.name + ', first run':<48} {rows:>8} {first:>8.3f} "
            f"{rows / first:>10,.0f}"
        )
        whole = best_of(
            repeat,
            lambda p=path, out=simulated: out.append(runner.run(p, settings, settle=True)[2]),
        )
        print(f"{'riskd backtest ' + path.name:<48} {rows:>8} {whole:>8.3f} {rows / whole:>10,.0f}")
        print(
            f"{'  of which the simulation':<48} {rows:>8} {min(simulated):>8.3f} "
            f"{rows / min(simulated):>10,.0f}",
            flush=True,
        )


def frontier_timing() -> None:
    """`riskd frontier` on the midterms, as the command runs it (a fresh process: tape
    reading, the compiled kernels' cache and every point of the sweep)."""
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "riskd.cli", "frontier", str(TAPES[0]), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    points = len(orjson.loads(out.stdout)["sets"][TAPES[0].name]["points"])
    print(
        f"{'riskd frontier ' + TAPES[0].name:<48} {points:>8} {elapsed:>8.3f}  "
        f"({points} points, both trader models)",
        flush=True,
    )


def decoding(repeat: int, markets: int = 10_000, frames: int = 200_000) -> None:
    """The Polymarket codec alone on the live bench's frames (in memory, no socket):
    the part of riskd's per-tick cost that is per-message Python (docs/performance.md,
    "Throughput"), beside orjson's parse of the same frames, which the raw client pays
    too."""
    u = bench_live.Universe(markets, 0)
    ts_s = time.time()
    bound = [
        Market(
            id=u.ids[k],
            resolves_at=ts_s + 30 * 86400,
            event_at=ts_s + 30 * 86400,
            polymarket_yes_token=u.yes[k],
            polymarket_no_token=u.no[k],
        )
        for k in range(markets)
    ]
    # The saturated phase's frames: each moves one market's top by a tick, round robin;
    # the first round makes the books.
    ts_ms = int(ts_s * 1000)
    payloads = [
        bench_live.price_change_json(
            u, k % markets, 40 + (k // markets) % 20, 100 + (k & 63), ts_ms + k
        )
        for k in range(markets + frames)
    ]
    warm, timed = payloads[:markets], payloads[markets:]
    received = ts_s + len(payloads)

    def parse() -> None:
        for p in timed:
            orjson.loads(p)

    def decode() -> tuple[float, int]:
        """Seconds for the timed frames, on a fresh codec whose books `warm` made; ticks."""
        codec = PolymarketCodec.for_markets(bound)
        for p in warm:
            codec.decode(p, received)
        started = time.perf_counter()
        ticks = 0
        for p in timed:
            ticks += len(codec.decode(p, received).ticks)
        return time.perf_counter() - started, ticks

    runs = [decode() for _ in range(repeat)]
    whole = min(hot_path(bound, warm, timed, received) for _ in range(repeat))
    batched = min(hot_path(bound, warm, timed, received, COALESCE) for _ in range(repeat))
    cycled = min(
        hot_path(bound, warm, timed, received, COALESCE, cycle_every=2_000) for _ in range(repeat)
    )
    print(f"{'what':<48} {'frames':>8} {'seconds':>8} {'us/frame':>10}")
    for what, seconds in (
        ("orjson.loads, bench frames", best_of(repeat, parse)),
        ("polymarket codec decode, parse included", min(runs)[0]),
        ("hot path: decode, feed, enqueue, flush per 500", whole),
        (f"  the same, {COALESCE} frames per socket read", batched),
        ("  and a cycle every 2,000 ticks, as at saturation", cycled),
    ):
        print(f"{what:<48} {frames:>8} {seconds:>8.3f} {seconds / frames * 1e6:>10.2f}")
    print(f"  ({runs[-1][1]:,} ticks; {markets:,} markets)", flush=True)


def hot_path(
    bound: list[Market],
    warm: list[bytes],
    timed: list[bytes],
    received: float,
    per_read: int = 1,
    cycle_every: int = 0,
) -> float:
    """Seconds for the timed frames through what riskd does with a frame besides the
    socket: the codec, the feed's bookkeeping, the engine's checks and, every 500
    ticks (a cycle's worth at 50k ticks/s), the estimator's pass. `per_read` frames
    per batch: 1 as a feed yields when nothing else waits, COALESCE when the socket
    holds more (saturation). With `cycle_every`, a whole cycle instead every that many
    ticks (the feed's freshness report, then `Engine.cycle`: at 200k ticks/s and 10 ms
    cycles, 2,000)."""
    codec = PolymarketCodec.for_markets(bound)
    feed = WebsocketFeed("polymarket", "ws://127.0.0.1:1", codec, ConnectionSettings())
    engine = Engine(Settings(), {m.id: m for m in bound}, discover=False)
    for p in warm:  # the books, and the estimator's kernel loaded
        engine.enqueue(codec.decode(p, received).ticks, received)
    engine.flush()
    if cycle_every:  # the first cycle evaluates every market: not the steady state
        engine.confirm(feed.take_liveness())
        engine.cycle(received)
    reads = [timed[k : k + per_read] for k in range(0, len(timed), per_read)]
    started = time.perf_counter()
    ticks = 0
    for frames in reads:
        batch = feed._take(feed._decode_frames(frames, codec, received), 0, received)
        if batch is not None:
            engine.enqueue(batch, received)
            ticks += len(batch)
        if cycle_every and ticks >= cycle_every:
            engine.confirm(feed.take_liveness())
            engine.cycle(received)
            ticks = 0
        elif not cycle_every and ticks >= 500:
            engine.flush()
            ticks = 0
    engine.flush()
    return time.perf_counter() - started


def main() -> None:
    args = bench_live.parse_args(sys.argv[1:])
    configure_cache()
    backtests(1 if args.quick else 3)
    frontier_timing()
    print()
    decoding(1 if args.quick else 3)
    print()
    bench_live.run(args)


if __name__ == "__main__":
    main()
