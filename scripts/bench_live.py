"""`make bench`, live part: `riskd run` against a local Polymarket-format venue.

For each market count N, in one process (this one) run:

- the venue: a `websockets` server speaking the CLOB market channel. Every frame is
  one batched `price_change` event (both tokens of one market, with best_bid and
  best_ask, as Polymarket sends them since Sept 2025) that moves the market's top of
  book by one tick, markets in round robin. It writes as fast as the client reads
  (websocket flow control), or at a fixed rate;
- the exchange: an aiohttp receiver of riskd's HTTP publisher, time-stamping every
  request on arrival.

Against it, in separate processes:

1. the raw transport limit: a bare client that only receives the stream and parses
   every frame with orjson (riskd's parser), on the same event loop riskd would use:
   with websockets (`raw/s`, the yardstick of issue 18) and with aiohttp, the
   websocket client riskd's feeds use (`aio/s`);
2. `riskd run` (kind "polymarket", metadata off, markets file binding the tokens,
   HTTP publisher, publish_interval_s = 0.01): after a warm-up,
   - saturated: the venue writes as fast as riskd reads; sustained ticks/s from
     riskd_ticks_total, CPU from /proc (utime + stime) over the same window;
   - paced at half that rate, with probes: markets that ticked once at warm-up get
     one jump each (0.50 -> 0.80) at a scheduled time. A jump changes the market's
     reasons, so the governor publishes it in the next cycle; tick-to-publish
     latency is the receiver's arrival time of the first HTTP request carrying the
     market with `jump_detected` minus the time the venue wrote the jump (both on
     this machine's clock; at half load the socket adds microseconds);
   - RSS from /proc at the end, per market above a 1-market riskd's RSS.

Figures depend on the machine and on whatever else runs on it: each figure is
the best of `--repeat` runs. `--profile DIR` records riskd with py-spy during the
saturated phase (BENCH_PROFILE_PHASE=paced: the latency phase) and `profile-summary
FILE` prints where the samples went; BENCH_DETAIL=1 prints riskd's feed lag during
the latency phase and writes every probe's times to $TMPDIR/timeline-N.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from websockets.asyncio.server import ServerConnection

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the fakes of tests/support, run as `python scripts/...`
from tests.support import PolymarketServer, Receiver, free_port  # noqa: E402

RISKD = Path(sys.executable).with_name("riskd")
# How the daemon is started, and what runs once its RSS at the end is read (with its
# pid): scripts/memory_breakdown.py starts it through itself and asks it where its
# memory goes.
RISKD_COMMAND = [str(RISKD)]
AT_END: Callable[[int], None] | None = None
MARKET_COUNTS = (1_000, 10_000, 100_000)
CHUNK = 64  # frames per socket write at saturation
PROBE_JUMP = (79, 81)  # YES bid/ask in cents of a probe's jump (from 49/51)


def loop_policy() -> str:
    """Install uvloop when present, as riskd does; returns the loop's name."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


# --- the markets ---------------------------------------------------------------------


@dataclass
class Universe:
    """N markets with Polymarket-like ids: 77-digit token ids, 0x condition ids.

    The last `probes` markets only tick at warm-up and at their probe's jump."""

    n: int
    probes: int
    ids: list[str] = field(default_factory=list)
    payload: list[tuple[str, str, str, str]] = field(default_factory=list)  # frame parts
    yes: list[str] = field(default_factory=list)
    no: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = random.Random(self.n)
        regular = self.n - self.probes
        for k in range(self.n):
            self.ids.append(f"m{k:06d}" if k < regular else f"probe{k - regular:06d}")
            yes = str(rng.randrange(10**76, 10**77))
            no = str(rng.randrange(10**76, 10**77))
            cond = f"0x{rng.getrandbits(256):064x}"
            h1, h2 = f"{rng.getrandbits(160):040x}", f"{rng.getrandbits(160):040x}"
            self.yes.append(yes)
            self.no.append(no)
            # '{"market":..,"price_changes":[{YES BUY at bid},{NO SELL at 1-bid}],..}'
            self.payload.append(
                (
                    f'{{"market":"{cond}","price_changes":[{{"asset_id":"{yes}","price":"',
                    f'","hash":"{h1}","best_bid":"',
                    f'{{"asset_id":"{no}","price":"',
                    f'","hash":"{h2}","best_bid":"',
                )
            )

    def markets_file(self, path: Path) -> None:
        resolves = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 30 * 86400))
        path.write_bytes(
            orjson.dumps(
                {
                    "markets": [
                        {
                            "id": self.ids[k],
                            "resolves_at": resolves,
                            "tick_size": 0.01,
                            "polymarket_yes_token": self.yes[k],
                            "polymarket_no_token": self.no[k],
                        }
                        for k in range(self.n)
                    ]
                }
            )
        )


PRICE = [f"{c / 100:.2f}" for c in range(101)]


def frame_header(length: int) -> bytes:
    """An unmasked text frame (RFC 6455 5.2): what a server sends."""
    if length < 126:
        return bytes((0x81, length))
    if length < 1 << 16:
        return bytes((0x81, 126)) + length.to_bytes(2, "big")
    return bytes((0x81, 127)) + length.to_bytes(8, "big")


def price_change(u: Universe, k: int, bid: int, size: int, ts_ms: int) -> bytes:
    """One batched price_change frame: YES bid at bid/100 (ask one tick up); NO mirrored."""
    text = price_change_json(u, k, bid, size, ts_ms)
    return frame_header(len(text)) + text


def price_change_json(u: Universe, k: int, bid: int, size: int, ts_ms: int) -> bytes:
    """The JSON of `price_change`'s frame."""
    a, b, c, d = u.payload[k]
    yb, ya = PRICE[bid], PRICE[bid + 1]
    nb, na = PRICE[99 - bid], PRICE[100 - bid]
    text = (
        f'{a}{yb}","side":"BUY","size":"{size}{b}{yb}","best_ask":"{ya}"}},'
        f'{c}{na}","side":"SELL","size":"{size}{d}{nb}","best_ask":"{na}"}}],'
        f'"timestamp":"{ts_ms}","event_type":"price_change"}}'
    ).encode()
    return text


# --- the venue -----------------------------------------------------------------------


class Venue:
    """Streams price changes to every subscribed connection in the current mode:
    idle, warm (every market twice, then idle), saturate, paced (rate, probes)."""

    def __init__(self, universe: Universe) -> None:
        self.u = universe
        self.mode = "idle"
        self.rate = 0.0
        self.sent = 0
        self.subscribed = asyncio.Event()
        self.probe_at: list[float] = []  # scheduled monotonic times of the probes
        self.probe_sent: dict[str, float] = {}  # probe market -> wall time written
        self.warm_done = asyncio.Event()
        self._bid = [49] * universe.n
        self._next = 0
        self._rng = random.Random(1)
        # The subscription starts this venue's own writer; no initial books.
        self.server = PolymarketServer(
            dump=False,
            stream=self._stream,
            serve_options={"max_size": 256 * 2**20, "ping_interval": None, "compression": None},
        )

    @property
    def url(self) -> str:
        return self.server.url

    async def start(self) -> None:
        await self.server.start()

    async def close(self) -> None:
        await self.server.close()

    def set_mode(self, mode: str, rate: float = 0.0, probe_at: list[float] | None = None) -> None:
        self.mode, self.rate = mode, rate
        self.probe_at = probe_at or []

    def _regular(self, ts_ms: int) -> bytes:
        u = self.u
        k = self._next
        self._next = (k + 1) % (u.n - u.probes)
        bid = self._bid[k] + (1 if self._rng.random() < 0.5 else -1)
        bid = 6 if bid < 5 else 93 if bid > 94 else bid
        self._bid[k] = bid
        return price_change(u, k, bid, 100 + (k & 63), ts_ms)

    async def _stream(self, conn: ServerConnection, assets: list[str]) -> None:
        self.subscribed.set()
        transport = conn.transport
        loop = asyncio.get_running_loop()
        started, sent_at_start, mode = 0.0, 0, ""
        probe_next = 0
        while True:
            if self.mode != mode:
                mode, started, sent_at_start, probe_next = self.mode, loop.time(), self.sent, 0
            ts_ms = int(time.time() * 1000)
            if mode == "warm":
                u = self.u
                for rnd in range(2):
                    for k0 in range(0, u.n, CHUNK):
                        frames = [
                            price_change(u, k, 49 + rnd, 100, ts_ms)
                            for k in range(k0, min(u.n, k0 + CHUNK))
                        ]
                        transport.write(b"".join(frames))
                        self.sent += len(frames)
                        await conn.drain()
                        await asyncio.sleep(0)
                        ts_ms = int(time.time() * 1000)
                self._bid = [50] * u.n  # where warm-up left every book
                self._next = 0
                self.mode = mode = "idle"
                self.warm_done.set()
            elif mode == "saturate":
                transport.write(b"".join([self._regular(ts_ms) for _ in range(CHUNK)]))
                self.sent += CHUNK
                await conn.drain()
                await asyncio.sleep(0)
            elif mode == "paced":
                now = loop.time()
                due = int(self.rate * (now - started)) - (self.sent - sent_at_start)
                frames = [self._regular(ts_ms) for _ in range(min(max(due, 0), 4 * CHUNK))]
                probe = None
                if probe_next < len(self.probe_at) and now >= self.probe_at[probe_next]:
                    probe = self.u.n - self.u.probes + probe_next
                    probe_next += 1
                    frames.append(price_change(self.u, probe, PROBE_JUMP[0], 100, ts_ms))
                if frames:
                    transport.write(b"".join(frames))
                    if probe is not None:
                        self.probe_sent[self.u.ids[probe]] = time.time()
                    self.sent += len(frames)
                    await conn.drain()
                await asyncio.sleep(0.0005)
            else:
                await asyncio.sleep(0.005)


# --- the exchange --------------------------------------------------------------------


class Exchange:
    """Takes riskd's HTTP publishes (counting only: the bodies of 100,000 markets are
    not parsed unless they carry a probe); notes when each probe's jump first arrived."""

    def __init__(self) -> None:
        self.sets = 0
        self.bytes = 0
        self.probe_seen: dict[str, float] = {}
        self.generated: list[tuple[float, str]] = []  # (arrival, generated_at) with probes
        self.receiver = Receiver(
            secret=None, keep=False, on_post=self._post, max_body_bytes=256 * 2**20
        )

    @property
    def url(self) -> str:
        return self.receiver.url

    @property
    def requests(self) -> int:
        return self.receiver.requests

    async def start(self) -> None:
        await self.receiver.start()

    async def close(self) -> None:
        await self.receiver.close()

    def _post(self, body: bytes, arrived: float) -> None:
        self.bytes += len(body)
        self.sets += body.count(b'"market":')
        if b'"market":"probe' in body:
            doc = orjson.loads(body)
            self.generated.append((arrived, doc["generated_at"]))
            for entry in doc["params"]:
                market = entry["market"]
                if (
                    market.startswith("probe")
                    and "jump_detected" in entry["reasons"]
                    and market not in self.probe_seen
                ):
                    self.probe_seen[market] = arrived


# --- the processes -------------------------------------------------------------------


def py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling riskd for one phase (BENCH_PROFILE), raw stacks to `out`."""
    # The venv's own (the dev extra), whether or not the venv is on PATH.
    beside = Path(sys.executable).parent / "py-spy"
    return subprocess.Popen(
        [
            str(beside) if beside.exists() else "py-spy",
            "record",
            "-p",
            str(pid),
            "-d",
            str(int(seconds)),
            "-r",
            "200",
        ]
        + ["-f", "raw", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def scrape(port: int) -> dict[str, float]:
    """The unlabelled and venue/publisher-labelled samples riskd exports that we use."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(
            (
                "riskd_ticks_total",
                "riskd_cycle_seconds",
                "riskd_tick_to_publish_seconds",
                "riskd_publishes_total",
                "riskd_publish_latency_seconds",
                "riskd_feed_lag_seconds",
                "riskd_event_loop_lag_seconds",
            )
        ):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def histogram(
    before: dict[str, float], after: dict[str, float], name: str, labels: str = ""
) -> tuple[float, float, int]:
    """(mean, p99 upper bucket bound, count) of a histogram between two scrapes;
    `labels` as in the exposition ('publisher="http"')."""
    tail = f"{{{labels}}}" if labels else ""
    count = after.get(f"{name}_count{tail}", 0.0) - before.get(f"{name}_count{tail}", 0.0)
    total = after.get(f"{name}_sum{tail}", 0.0) - before.get(f"{name}_sum{tail}", 0.0)
    if count <= 0:
        return float("nan"), float("nan"), 0
    buckets = []
    prefix = f"{name}_bucket{{{labels + ',' if labels else ''}le="
    for key, value in after.items():
        if key.startswith(prefix):
            bound = key[len(prefix) :].split('"', 2)[1]
            buckets.append((float(bound), value - before.get(key, 0.0)))
    p99 = next((b for b, c in sorted(buckets) if c >= 0.99 * count), float("inf"))
    return total / count, p99, int(count)


async def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def riskd_config(folder: Path, venue_url: str, exchange_url: str, port: int) -> Path:
    config = folder / "riskd.toml"
    config.write_text(f"""
[feed]
kind = "polymarket"
url = "{venue_url}"
metadata = false

[feed.polymarket]
# One connection, as the raw client: the venue streams every market on each one,
# and the bench compares per-message cost on one stream.
assets_per_connection = 1_000_000

[markets]
file = "{folder / "markets.json"}"

[model]
# Markets warm up after two ticks: the benchmark measures steady state, not warm-up.
warmup_ticks = 2
warmup_s = 0.0

[governor]
publish_interval_s = 0.01

[publisher]
instance = "bench"

[publisher.jsonl]
path = "{folder / "audit.jsonl"}"

[publisher.http]
url = "{exchange_url}"
secret = "bench-secret"

[server]
port = {port}
max_market_series = 0

[state]
dir = "{folder / "state"}"

[log]
level = "info"
""")
    return config


@dataclass
class Result:
    markets: int
    raw_per_s: float = float("nan")
    raw_aio_per_s: float = float("nan")
    ticks_per_s: float = float("nan")
    cpu_per_million: float = float("nan")
    paced_per_s: float = float("nan")
    latency_ms: tuple[float, float, float] = (float("nan"),) * 3
    probes: tuple[int, int] = (0, 0)  # seen, sent
    cycle_ms: tuple[float, float] = (float("nan"), float("nan"))  # mean, p99 bucket (paced)
    cycle_sat_ms: tuple[float, float] = (float("nan"), float("nan"))
    sets_per_s: float = float("nan")
    rss: int = 0
    startup_s: float = float("nan")
    histogram_p99_ms: float = float("nan")  # riskd_tick_to_publish_seconds (paced)
    loop_lag_p99_ms: float = float("nan")  # riskd_event_loop_lag_seconds (paced)
    paced_cpu: float = float("nan")  # riskd's CPU share during the paced phase

    def better(self, other: Result) -> Result:
        """Best of two runs, figure by figure."""

        def lo(a: float, b: float) -> float:
            return b if a != a else a if b != b else min(a, b)

        def hi(a: float, b: float) -> float:
            return b if a != a else a if b != b else max(a, b)

        best_latency = (
            self.latency_ms
            if (
                self.latency_ms[1] <= other.latency_ms[1]
                or other.latency_ms[1] != other.latency_ms[1]
            )
            else other.latency_ms
        )
        best_cycle = self.cycle_ms if self.cycle_ms[0] <= other.cycle_ms[0] else other.cycle_ms
        return Result(
            markets=self.markets,
            raw_per_s=hi(self.raw_per_s, other.raw_per_s),
            raw_aio_per_s=hi(self.raw_aio_per_s, other.raw_aio_per_s),
            ticks_per_s=hi(self.ticks_per_s, other.ticks_per_s),
            cpu_per_million=lo(self.cpu_per_million, other.cpu_per_million),
            paced_per_s=hi(self.paced_per_s, other.paced_per_s),
            latency_ms=best_latency,
            probes=self.probes if best_latency is self.latency_ms else other.probes,
            cycle_ms=best_cycle,
            cycle_sat_ms=min(self.cycle_sat_ms, other.cycle_sat_ms),
            sets_per_s=hi(self.sets_per_s, other.sets_per_s),
            rss=min(self.rss, other.rss) if self.rss and other.rss else self.rss or other.rss,
            startup_s=lo(self.startup_s, other.startup_s),
            histogram_p99_ms=lo(self.histogram_p99_ms, other.histogram_p99_ms),
            loop_lag_p99_ms=lo(self.loop_lag_p99_ms, other.loop_lag_p99_ms),
            paced_cpu=lo(self.paced_cpu, other.paced_cpu),
        )


async def raw_limit(url: str, warm_s: float, seconds: float, client: str = "websockets") -> float:
    """Frames per second a bare client receives and parses (another process)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "raw-client",
        url,
        str(warm_s),
        str(seconds),
        client,
        stdout=subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    return float(json.loads(out)["frames_per_s"])


async def raw_client(url: str, warm_s: float, seconds: float) -> None:
    """The transport limit: websockets + orjson, nothing else."""
    from websockets.asyncio.client import connect

    loads = orjson.loads
    async with connect(url, max_size=256 * 2**20, compression=None, ping_interval=None) as ws:
        await ws.send('{"assets_ids": [], "type": "market"}')
        loop = asyncio.get_running_loop()
        start = loop.time()
        while loop.time() - start < warm_s:
            loads(await ws.recv(decode=False))
        frames, start = 0, loop.time()
        while True:
            loads(await ws.recv(decode=False))
            frames += 1
            if frames % 256 == 0 and loop.time() - start >= seconds:
                break
        elapsed = loop.time() - start
    print(json.dumps({"frames_per_s": frames / elapsed}))


async def raw_client_aiohttp(url: str, warm_s: float, seconds: float) -> None:
    """The same on aiohttp's websocket client, riskd's own transport."""
    import aiohttp

    loads = orjson.loads
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url, max_msg_size=256 * 2**20, decode_text=False) as ws,
    ):
        await ws.send_str('{"assets_ids": [], "type": "market"}')
        loop = asyncio.get_running_loop()
        start = loop.time()
        while loop.time() - start < warm_s:
            loads((await ws.receive()).data)
        frames, start = 0, loop.time()
        while True:
            loads((await ws.receive()).data)
            frames += 1
            if frames % 256 == 0 and loop.time() - start >= seconds:
                break
        elapsed = loop.time() - start
    print(json.dumps({"frames_per_s": frames / elapsed}))


async def run_riskd(
    folder: Path,
    universe: Universe,
    venue: Venue,
    exchange: Exchange,
    seconds: float,
    result: Result,
    profile: Path | None,
    load: float = 0.25,
) -> None:
    port = free_port()
    config = riskd_config(folder, venue.url, exchange.url, port)
    log = (folder / "riskd.log").open("wb")
    started = time.monotonic()
    proc = subprocess.Popen(
        [*RISKD_COMMAND, "run", "-c", str(config)], cwd=folder, stdout=log, stderr=subprocess.STDOUT
    )
    profiler = None
    try:
        await wait_for(
            lambda: venue.subscribed.is_set() or proc.poll() is not None, 300, "riskd to subscribe"
        )
        if proc.poll() is not None:
            raise RuntimeError(f"riskd exited with {proc.returncode}: see {folder}/riskd.log")
        await wait_for(lambda: _ok(port), 60, "riskd's API")
        result.startup_s = time.monotonic() - started
        # Warm-up: every market ticks twice (its book exists, the estimator is warm).
        venue.set_mode("warm")
        await venue.warm_done.wait()
        expected = 2 * universe.n
        await wait_for(
            lambda: scrape(port).get('riskd_ticks_total{venue="polymarket"}', 0) >= expected,
            120,
            "riskd to take the warm-up ticks",
        )
        await asyncio.sleep(1.0)

        # Saturated: as fast as riskd reads.
        venue.set_mode("saturate")
        await asyncio.sleep(min(2.0, seconds / 2))
        if profile is not None and os.environ.get("BENCH_PROFILE_PHASE") != "paced":
            profiler = py_spy(proc.pid, seconds, profile)
        before, cpu0, t0 = scrape(port), cpu_seconds(proc.pid), time.monotonic()
        await asyncio.sleep(seconds)
        after, cpu1, t1 = scrape(port), cpu_seconds(proc.pid), time.monotonic()
        key = 'riskd_ticks_total{venue="polymarket"}'
        ticks = after.get(key, 0) - before.get(key, 0)
        result.ticks_per_s = ticks / (t1 - t0)
        result.cpu_per_million = (cpu1 - cpu0) / ticks * 1e6 if ticks else float("nan")
        mean, p99, _ = histogram(before, after, "riskd_cycle_seconds")
        result.cycle_sat_ms = (mean * 1e3, p99 * 1e3)
        if profiler is not None:
            profiler.wait()

        # Drain what the sockets hold, then paced at half the sustained rate, with probes.
        venue.set_mode("idle")
        last = -1.0
        for _ in range(100):
            await asyncio.sleep(0.2)
            now = scrape(port).get(key, 0)
            if now == last:
                break
            last = now
        rate = load * result.ticks_per_s
        loop = asyncio.get_running_loop()
        begin = loop.time() + 0.5
        span = max(seconds - 1.0, 1.0)
        probe_at = [begin + (j + 0.5) * span / universe.probes for j in range(universe.probes)]
        before, sets0, t0 = scrape(port), exchange.sets, time.monotonic()
        cpu0 = cpu_seconds(proc.pid)
        venue.set_mode("paced", rate, probe_at)
        if profile is not None and os.environ.get("BENCH_PROFILE_PHASE") == "paced":
            profiler = py_spy(proc.pid, seconds, profile)
        if os.environ.get("BENCH_DETAIL"):
            for _ in range(int(seconds * 2)):
                await asyncio.sleep(0.5)
                print("feed lag", scrape(port).get('riskd_feed_lag_seconds{venue="polymarket"}'))
            await asyncio.sleep(0.5)
        else:
            await asyncio.sleep(seconds + 0.5)
        await asyncio.sleep(0.5)  # the last probes' publishes
        after, sets1, t1 = scrape(port), exchange.sets, time.monotonic()
        result.paced_cpu = (cpu_seconds(proc.pid) - cpu0) / (t1 - t0)
        venue.set_mode("idle")
        result.paced_per_s = (after.get(key, 0) - before.get(key, 0)) / (t1 - t0)
        result.sets_per_s = (sets1 - sets0) / (t1 - t0)
        mean, p99, _ = histogram(before, after, "riskd_cycle_seconds")
        result.cycle_ms = (mean * 1e3, p99 * 1e3)
        if os.environ.get("BENCH_DETAIL"):
            print(
                "publish latency",
                histogram(before, after, "riskd_publish_latency_seconds", 'publisher="http"'),
            )
        _, p99, _ = histogram(before, after, "riskd_tick_to_publish_seconds")
        result.histogram_p99_ms = p99 * 1e3
        _, lag_p99, _ = histogram(before, after, "riskd_event_loop_lag_seconds")
        result.loop_lag_p99_ms = lag_p99 * 1e3
        timeline = sorted(
            (t, exchange.probe_seen[m] - t)
            for m, t in venue.probe_sent.items()
            if m in exchange.probe_seen
        )
        if os.environ.get("BENCH_DETAIL"):
            (folder.parent / f"timeline-{universe.n}.json").write_text(
                json.dumps({"probes": timeline, "generated": exchange.generated})
            )
        lat = sorted(d for _, d in timeline)
        result.probes = (len(lat), len(venue.probe_sent))
        if lat:
            p99_lat = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
            result.latency_ms = (statistics.median(lat) * 1e3, p99_lat * 1e3, lat[-1] * 1e3)
        result.rss = rss_bytes(proc.pid)
        if AT_END is not None:
            AT_END(proc.pid)
    finally:
        if profiler is not None and profiler.poll() is None:
            profiler.kill()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def _ok(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
            return True
    except OSError:
        return False


async def one_size(
    n: int, seconds: float, raw_seconds: float, profile: Path | None, load: float
) -> Result:
    probes = min(n // 4, 1000)
    universe = Universe(n, probes)
    result = Result(markets=n)
    with tempfile.TemporaryDirectory(prefix=f"riskd-bench-{n}-") as tmp:
        folder = Path(tmp)
        universe.markets_file(folder / "markets.json")
        venue = Venue(universe)
        await venue.start()
        try:
            # The raw limit first: the same venue, the same frames.
            venue.set_mode("saturate")
            result.raw_per_s = await raw_limit(venue.url, 1.0, raw_seconds)
            result.raw_aio_per_s = await raw_limit(venue.url, 1.0, raw_seconds, "aiohttp")
            venue.set_mode("idle")
            venue.subscribed.clear()
            venue.sent = 0
            exchange = Exchange()
            await exchange.start()
            # The harness's own objects (the universe's payloads: ~1M at 100k) out of
            # its garbage collector's walk: a full collection took 36-113 ms here, a
            # pause of the venue and the exchange inside riskd's measured latency.
            gc.collect()
            gc.freeze()
            try:
                await run_riskd(folder, universe, venue, exchange, seconds, result, profile, load)
            finally:
                gc.unfreeze()
                await exchange.close()
        finally:
            await venue.close()
    return result


async def baseline_rss() -> int:
    """A riskd with one market after the same phases: the process baseline."""
    result = await one_size_tiny()
    return result.rss


async def one_size_tiny() -> Result:
    universe = Universe(4, 1)
    result = Result(markets=4)
    with tempfile.TemporaryDirectory(prefix="riskd-bench-base-") as tmp:
        folder = Path(tmp)
        universe.markets_file(folder / "markets.json")
        venue = Venue(universe)
        await venue.start()
        exchange = Exchange()
        await exchange.start()
        try:
            await run_riskd(folder, universe, venue, exchange, 2.0, result, None)
        finally:
            await exchange.close()
            await venue.close()
    return result


def profile_summary(path: Path, top: int = 25) -> str:
    """The functions riskd spent its samples in (py-spy's folded stacks): inclusive and
    self shares, the busiest first."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = [_short(f) for f in stack.split(";")]
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
    lines = [f"{path.name}: {total} samples", f"{'incl':>6} {'self':>6}  function"]
    for f, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{n / total:>6.1%} {own.get(f, 0) / total:>6.1%}  {f}")
    return "\n".join(lines)


def _short(frame: str) -> str:
    """'name (path/to/file.py:12)' -> 'name (file.py)'."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    parts = where.split("/")
    keep = "/".join(parts[parts.index("riskd") :]) if "riskd" in parts else parts[-1]
    return f"{name} ({keep})"


def table(results: list[Result], base_rss: int) -> str:
    head = (
        f"{'markets':>8} {'raw/s':>9} {'riskd/s':>9} {'ratio':>6} {'aio/s':>9} {'ratio':>6} "
        f"{'CPU s/Mtick':>11} "
        f"{'paced/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'probes':>9} "
        f"{'cycle ms':>9} {'sat cyc':>8} {'sets/s':>8} {'RSS MiB':>8} {'B/market':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        per_market = (r.rss - base_rss) / r.markets if r.rss else float("nan")
        lines.append(
            f"{r.markets:>8,} {r.raw_per_s:>9,.0f} {r.ticks_per_s:>9,.0f} "
            f"{r.ticks_per_s / r.raw_per_s:>6.0%} {r.raw_aio_per_s:>9,.0f} "
            f"{r.ticks_per_s / r.raw_aio_per_s:>6.0%} {r.cpu_per_million:>11.1f} "
            f"{r.paced_per_s:>8,.0f} {r.latency_ms[0]:>7.1f} {r.latency_ms[1]:>7.1f} "
            f"{r.latency_ms[2]:>7.1f} {r.probes[0]:>4}/{r.probes[1]:<4} "
            f"{r.cycle_ms[0]:>4.1f}/{_bound(r.cycle_ms[1]):<4} {r.cycle_sat_ms[0]:>8.1f} "
            f"{r.sets_per_s:>8,.0f} {r.rss / 2**20:>8.0f} {per_market:>9,.0f}"
        )
    return "\n".join(lines)


def _bound(ms: float) -> str:
    return "-" if ms != ms else f"{ms:g}" if ms != float("inf") else "inf"


async def main_async(args: argparse.Namespace) -> list[Result]:
    loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(
        f"live: event loop {loop_name}; {args.seconds:g} s per phase, latency at "
        f"{args.load:.0%} of the saturated rate; best of {args.repeat}",
        flush=True,
    )
    # A riskd that finds its kernels missing from the cache compiles them (riskd/jit.py),
    # which takes more memory than loading them: fill the cache first, so that the
    # baseline is the riskd of every later start.
    subprocess.run(
        [str(RISKD), "backtest", str(ROOT / "data/tapes/fed_dec2025")],
        stdout=subprocess.DEVNULL,
        check=True,
    )
    base = await baseline_rss()
    print(f"baseline RSS (riskd with 4 markets): {base / 2**20:.1f} MiB", flush=True)
    results = []
    for n in args.markets:
        best: Result | None = None
        for k in range(args.repeat):
            profile = (
                args.profile / f"riskd-{n}.folded" if args.profile is not None and k == 0 else None
            )
            r = await one_size(n, args.seconds, args.raw_seconds, profile, args.load)
            best = r if best is None else best.better(r)
            print(
                f"  {n:,} markets, run {k + 1}: raw {r.raw_per_s:,.0f}/s (aiohttp "
                f"{r.raw_aio_per_s:,.0f}/s), riskd "
                f"{r.ticks_per_s:,.0f}/s, p99 {r.latency_ms[1]:.1f} ms (riskd's own "
                f"{_bound(r.histogram_p99_ms)}, its loop's lag {_bound(r.loop_lag_p99_ms)}), "
                f"paced CPU {r.paced_cpu:.0%}, "
                f"startup {r.startup_s:.1f} s",
                flush=True,
            )
        assert best is not None
        results.append(best)
    print()
    print(
        "load average (1, 5, 15 min) at the end: "
        + ", ".join(f"{x:.2f}" for x in os.getloadavg())
        + f" on {os.cpu_count()} CPUs"
    )
    print(table(results, base))
    print()
    print(
        "raw/s: frames/s a bare websockets+orjson client takes; riskd/s: ticks/s riskd "
        "sustains, saturated; ratio = riskd/raw;\naio/s: the same bare client on aiohttp "
        "(riskd's websocket client), and riskd's ratio to it;\nCPU s/Mtick: riskd's CPU over the "
        "saturated window; paced/s: the load of the latency phase (--load x riskd/s);\n"
        "p50/p99/max: venue write of a jump -> exchange receipt of the HTTP request "
        "carrying it (probes seen/sent);\ncycle ms: riskd_cycle_seconds mean/p99 bucket "
        "(paced), sat cyc: mean saturated; sets/s: parameter sets the exchange got "
        "(paced);\nB/market: RSS above the baseline per market, at the end."
    )
    if args.json is not None:
        args.json.write_text(
            json.dumps({"baseline_rss": base, "results": [r.__dict__ for r in results]}, indent=1)
        )
    return results


def cpus() -> str:
    """The CPU model and count, for the record."""
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} x {model or 'unknown CPU'}"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--markets", type=lambda s: [int(x) for x in s.split(",")], default=list(MARKET_COUNTS)
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="per measured phase")
    parser.add_argument("--raw-seconds", type=float, default=4.0)
    parser.add_argument("--repeat", type=int, default=2, help="best of this many runs")
    parser.add_argument(
        "--load",
        type=float,
        default=0.25,
        help="the latency phase's rate, as a share of the saturated rate",
    )
    parser.add_argument("--quick", action="store_true", help="short phases, one run")
    parser.add_argument("--profile", type=Path, help="py-spy the saturated phase into DIR")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.raw_seconds, args.repeat = 4.0, 2.0, 1
    return args


def run(args: argparse.Namespace) -> None:
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    loop_policy()
    asyncio.run(main_async(args))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "profile-summary":
        for name in sys.argv[2:]:
            print(profile_summary(Path(name)))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "raw-client":
        loop_policy()
        client = raw_client_aiohttp if sys.argv[5:] == ["aiohttp"] else raw_client
        asyncio.run(client(sys.argv[2], float(sys.argv[3]), float(sys.argv[4])))
        return
    run(parse_args(sys.argv[1:]))


if __name__ == "__main__":
    main()
