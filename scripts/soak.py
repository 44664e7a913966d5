"""Soak test (issue 6; `make soak`, not in CI): `riskd run` for a long time against a
flapping venue and a flapping exchange, watching its memory and its audit log.

- The venue: a local `websockets` server speaking Polymarket's CLOB market channel
  (subscription, initial books, then `price_change`, `last_trade_price` and
  `best_bid_ask` at `--rate` messages per second). Prices replay the bundled 2022
  midterm tapes in a loop, at high speed, stamped with the current time. It flaps:
  every ~`--drop-every` seconds it cuts all connections (no close frame), now and then
  it goes silent (PONGs only) for longer than riskd's stale limit, or refuses
  handshakes with 503 for a while. A small share of messages is hostile (not JSON,
  prices out of range, times in the future, unknown assets, absurd sizes).
- The exchange: a local aiohttp receiver that, in a repeating cycle, is healthy (with
  some random 503s and hangs), then down (503 + Retry-After), then timing out.
- A `/v1/stream` client that connects, reads for a while and goes away, repeatedly.

RSS of the riskd process is sampled every `--sample-every` seconds. At the end riskd
gets SIGTERM, and the script checks: exit 0; RSS growth over the last 5/6 of the run
(the last 50 minutes of the default hour) below `--max-growth` (5%); the audit log
(all rotated files) parses completely with contiguous seqs from 1; the exchange never
received an older version of a market after a newer one. It prints a summary and
writes it to <workdir>/summary.json. Exit 0 when every check holds.

    python scripts/soak.py --duration 3600        # the full soak (make soak)
    python scripts/soak.py --duration 600         # a 10-minute run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # riskd and the fakes of tests/support
from riskd.publish.jsonl import read_audit  # noqa: E402
from tests.support import PolymarketServer, Receiver, Step, free_port, now_ms  # noqa: E402

TAPES = ROOT / "data" / "tapes" / "polymarket_midterms_2022"
SECRET = "soak-secret"
INSTANCE = "riskd-soak"


# --- the venue -------------------------------------------------------------------------


@dataclass
class Market:
    id: str
    token: str
    condition: str
    prices: list[float]
    k: int = 0

    def next_price(self) -> float:
        self.k = (self.k + 1) % len(self.prices)
        return min(0.999, max(0.001, self.prices[self.k]))

    @property
    def price(self) -> float:
        return min(0.999, max(0.001, self.prices[self.k]))


def load_markets(limit: int) -> list[Market]:
    markets = []
    for i, path in enumerate(sorted(TAPES.glob("*.csv"))[:limit]):
        with path.open(encoding="utf-8") as fh:
            prices = [float(row["price"]) for row in csv.DictReader(fh)]
        if len(prices) < 2:
            continue
        markets.append(Market(f"soak-{path.stem}", f"{10**20 + i}", f"0x{i:064x}", prices))
    return markets


def book(m: Market, ts: int) -> dict[str, Any]:
    bid = round(max(0.001, m.price - 0.005), 3)
    ask = round(min(0.999, bid + 0.01), 3)
    return {
        "event_type": "book",
        "asset_id": m.token,
        "market": m.condition,
        "timestamp": str(ts),
        "hash": "soak",
        "bids": [
            {"price": f"{bid - 0.01 * j:.3f}", "size": "100"}
            for j in range(5)
            if bid - 0.01 * j > 0
        ],
        "asks": [
            {"price": f"{ask + 0.01 * j:.3f}", "size": "100"}
            for j in range(5)
            if ask + 0.01 * j < 1
        ],
        "last_trade_price": f"{m.price:.4f}",
    }


HOSTILE = [
    lambda m, ts: "not json {",
    lambda m, ts: json.dumps({"event_type": [], "asset_id": m.token}),
    lambda m, ts: json.dumps(
        {
            "event_type": "last_trade_price",
            "asset_id": m.token,
            "price": "1.5",
            "timestamp": str(ts),
        }
    ),
    lambda m, ts: json.dumps(
        {
            "event_type": "last_trade_price",
            "asset_id": m.token,
            "price": "0.5",
            "timestamp": str(ts + 3_600_000),
        }
    ),
    lambda m, ts: json.dumps(
        {"event_type": "last_trade_price", "asset_id": "999", "price": "0.5", "timestamp": str(ts)}
    ),
    lambda m, ts: json.dumps(
        {
            "event_type": "price_change",
            "market": m.condition,
            "timestamp": str(ts),
            "price_changes": [{"asset_id": m.token, "price": "0.5", "side": "BUY", "size": "1e30"}],
        }
    ),
]


@dataclass
class Venue:
    """The stream and the flapping; the protocol is tests/support's PolymarketServer."""

    markets: list[Market]
    rate: float
    drop_every: float
    hostile_share: float
    rng: random.Random
    server: PolymarketServer = field(init=False)
    sent: int = 0
    hostile: int = 0
    drops: int = 0
    silent_until: float = 0.0
    refuse_until: float = 0.0

    def __post_init__(self) -> None:
        by_token = {m.token: m for m in self.markets}

        def book_for(token: str) -> dict[str, Any] | None:
            m = by_token.get(token)
            return book(m, now_ms()) if m is not None else None

        self.server = PolymarketServer(book_for=book_for, serve_options={"max_size": 2**20})

    @property
    def url(self) -> str:
        return self.server.url

    def subscribed(self) -> list[Any]:
        return [c for c in self.server.subscribed if c.state is State.OPEN]

    def message(self) -> str:
        m = self.rng.choice(self.markets)
        ts = now_ms()
        if self.rng.random() < self.hostile_share:
            self.hostile += 1
            return str(self.rng.choice(HOSTILE)(m, ts))
        p = m.next_price()
        bid = round(max(0.001, p - 0.005), 3)
        ask = round(min(0.999, bid + 0.01), 3)
        kind = self.rng.random()
        if kind < 0.6:
            return json.dumps(
                {
                    "market": m.condition,
                    "event_type": "price_change",
                    "timestamp": str(ts),
                    "price_changes": [
                        {
                            "asset_id": m.token,
                            "price": f"{bid:.3f}",
                            "side": "BUY",
                            "size": str(self.rng.randint(1, 500)),
                            "best_bid": f"{bid:.3f}",
                            "best_ask": f"{ask:.3f}",
                        }
                    ],
                }
            )
        if kind < 0.9:
            return json.dumps(
                {
                    "asset_id": m.token,
                    "event_type": "last_trade_price",
                    "market": m.condition,
                    "price": f"{p:.4f}",
                    "side": "BUY",
                    "size": "5",
                    "timestamp": str(ts),
                }
            )
        return json.dumps(
            {
                "event_type": "best_bid_ask",
                "market": m.condition,
                "asset_id": m.token,
                "best_bid": f"{bid:.3f}",
                "best_ask": f"{ask:.3f}",
                "timestamp": str(ts),
            }
        )

    async def stream(self, stop: asyncio.Event) -> None:
        step = 0.05
        owed = 0.0
        next_drop = time.monotonic() + self.drop_every * self.rng.uniform(0.5, 1.5)
        next_silence = time.monotonic() + self.rng.uniform(240, 420)
        next_refusal = time.monotonic() + self.rng.uniform(420, 720)
        while not stop.is_set():
            await asyncio.sleep(step)
            now = time.monotonic()
            if now >= next_drop:  # a network failure: no close frame
                self.server.drop()
                self.drops += 1
                next_drop = now + self.drop_every * self.rng.uniform(0.5, 1.5)
            if now >= next_silence:  # PONGs only, longer than riskd's stale limit
                self.silent_until = now + 45
                next_silence = now + self.rng.uniform(240, 420)
            if now >= next_refusal:  # handshakes refused with 503 for a while
                self.refuse_until = now + 20
                self.server.refusing = 503
                self.server.drop()
                next_refusal = now + self.rng.uniform(420, 720)
            if now >= self.refuse_until:
                self.server.refusing = None
            subscribed = self.subscribed()
            if now < self.silent_until or not subscribed:
                continue
            owed += self.rate * step
            n, owed = int(owed), owed - int(owed)
            for ws in subscribed:
                frames = [self.message() for _ in range(n)]
                with contextlib.suppress(ConnectionClosed):
                    for frame in frames:
                        await ws.send(frame)
                    self.sent += len(frames)


# --- the exchange --------------------------------------------------------------------------


@dataclass
class Exchange:
    """In a repeating cycle: healthy (some random 503s and hangs), down (503 +
    Retry-After), timing out; the exchange itself is tests/support's Receiver."""

    rng: random.Random
    cycle_s: float = 120.0
    started: float = field(default_factory=time.monotonic)
    answers: dict[str, int] = field(default_factory=dict)
    last_seq: int = 0
    seq_errors: int = 0
    versions: dict[str, int] = field(default_factory=dict)
    version_errors: int = 0
    delivered: int = 0
    receiver: Receiver = field(init=False)

    def __post_init__(self) -> None:
        self.receiver = Receiver(SECRET.encode(), script=self.step, max_body_bytes=64 * 2**20)

    @property
    def url(self) -> str:
        return self.receiver.url

    def _count(self, what: str) -> None:
        self.answers[what] = self.answers.get(what, 0) + 1

    def step(self) -> Step | None:
        """This request's answer by the phase of the cycle; None: accept it."""
        phase = (time.monotonic() - self.started) % self.cycle_s / self.cycle_s
        if phase >= 0.6 and phase < 0.85:  # down
            self._count("503_down")
            return Step(503, retry_after="1")
        if phase >= 0.85 or self.rng.random() < 0.02:  # timing out
            self._count("hang")
            return Step(503, hang_s=3.0)
        if self.rng.random() < 0.05:
            self._count("503_random")
            return Step(503)
        self._count("200")
        return None

    def take(self) -> None:
        """Check what was accepted since the last call, and let it go (an hour's
        messages would fill this process)."""
        for msg in self.receiver.messages:
            doc = msg.body
            if doc["seq"] <= self.last_seq:
                self.seq_errors += 1
            self.last_seq = max(self.last_seq, doc["seq"])
            for entry in doc["params"]:
                market, version = entry["market"], entry["version"]
                if version < self.versions.get(market, 0):
                    self.version_errors += 1
                self.versions[market] = max(version, self.versions.get(market, 0))
            self.delivered += len(doc["params"])
        self.receiver.messages.clear()
        self.receiver.attempts.clear()
        self.receiver.arrivals.clear()
        self.receiver.answers.clear()


# --- a /v1/stream client that comes and goes -------------------------------------------------


@dataclass
class StreamClient:
    url: str
    sessions: int = 0
    snapshots: int = 0
    batches: int = 0
    errors: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                try:
                    async with session.ws_connect(self.url, heartbeat=10) as ws:
                        self.sessions += 1
                        deadline = time.monotonic() + 30
                        while time.monotonic() < deadline and not stop.is_set():
                            msg = await ws.receive(timeout=5)
                            if msg.type != aiohttp.WSMsgType.TEXT:
                                break
                            doc = json.loads(msg.data)
                            if doc.get("snapshot"):
                                self.snapshots += 1
                            else:
                                self.batches += 1
                except (aiohttp.ClientError, OSError, TimeoutError):
                    self.errors += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 5)


# --- riskd --------------------------------------------------------------------------------


def write_config(
    work: Path, markets: list[Market], venue_url: str, exchange_url: str, port: int
) -> Path:
    resolves = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 90 * 86400))
    (work / "markets.json").write_text(
        json.dumps(
            {
                "markets": [
                    {
                        "id": m.id,
                        "resolves_at": resolves,
                        "polymarket_yes_token": m.token,
                        "tick_size": 0.001,
                    }
                    for m in markets
                ]
            }
        ),
        encoding="utf-8",
    )
    config = f"""
[feed]
kind = "polymarket"
metadata = false

[feed.polymarket]
url = "{venue_url}"
backoff_initial_s = 0.2
backoff_max_s = 2.0
read_timeout_s = 10.0
ping_interval_s = 2.0

[markets]
file = "{work / "markets.json"}"

[model]
warmup_s = 30.0

[governor]
publish_interval_s = 1.0
stale_after_s = 20.0

[publisher]
instance = "{INSTANCE}"

[publisher.jsonl]
path = "{work / "audit.jsonl"}"
max_bytes = 16777216
backups = 10000

[publisher.http]
url = "{exchange_url}"
timeout_s = 1.0
backoff_max_s = 2.0
circuit_failures = 5
circuit_reset_s = 2.0
circuit_max_reset_s = 10.0

[publisher.websocket]
max_backlog = 64

[server]
port = {port}

[state]
dir = "{work / "state"}"
snapshot_interval_s = 10.0

[log]
level = "warning"
"""
    path = work / "riskd.toml"
    path.write_text(config, encoding="utf-8")
    return path


def rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


async def scrape(port: int) -> dict[str, float]:
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"http://127.0.0.1:{port}/metrics", timeout=aiohttp.ClientTimeout(total=5)
            ) as resp,
        ):
            return parse_metrics(await resp.text())
    except (aiohttp.ClientError, OSError, TimeoutError):
        return {}


def pick(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {
        k: v for k, v in sorted(metrics.items()) if k.startswith(prefix) and "_created" not in k
    }


# --- checks ---------------------------------------------------------------------------------


def audit_files(path: Path) -> list[Path]:
    rotated = sorted(
        (p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()),
        key=lambda p: int(p.suffix[1:]),
        reverse=True,
    )
    return rotated + ([path] if path.exists() else [])


def check_audit(path: Path) -> dict[str, Any]:
    files = audit_files(path)
    batches = gaps = version_back = 0
    first = last = None
    versions: dict[str, int] = {}
    error = ""
    try:
        for f in files:
            for batch in read_audit(f):
                seq = batch["seq"]
                if first is None:
                    first = seq
                elif seq != last + 1:  # type: ignore[operator]
                    gaps += 1
                last = seq
                batches += 1
                for entry in batch["params"]:
                    if entry["version"] < versions.get(entry["market"], 0):
                        version_back += 1
                    versions[entry["market"]] = entry["version"]
    except ValueError as exc:
        error = str(exc)
    return {
        "files": len(files),
        "bytes": sum(f.stat().st_size for f in files),
        "batches": batches,
        "first_seq": first,
        "last_seq": last,
        "seq_gaps": gaps,
        "version_went_back": version_back,
        "parse_error": error,
        "ok": not error and gaps == 0 and first == 1 and version_back == 0,
    }


def rss_growth(samples: list[tuple[float, int]], duration: float) -> dict[str, Any]:
    """Growth over the last 5/6 of the run (the last 50 min of an hour): the median of
    the first window after the start of that span against the median of the last."""
    start = duration / 6
    window = min(60.0, duration / 10)
    early = [kb for t, kb in samples if start <= t < start + window]
    late = [kb for t, kb in samples if t >= duration - window]
    span = [(t, kb) for t, kb in samples if t >= start]
    if not early or not late or len(span) < 3:
        return {"ok": False, "reason": "too few samples"}
    base, end = statistics.median(early), statistics.median(late)
    # Least-squares slope over the span, per hour: a leak shows as a steady climb.
    ts = [t for t, _ in span]
    kbs = [kb for _, kb in span]
    mt, mk = statistics.fmean(ts), statistics.fmean(kbs)
    slope = sum((t - mt) * (k - mk) for t, k in span) / sum((t - mt) ** 2 for t in ts)
    growth = (end - base) / base
    return {
        "window_start_s": round(start),
        "baseline_mb": round(base / 1024, 1),
        "end_mb": round(end / 1024, 1),
        "growth_pct": round(100 * growth, 2),
        "slope_mb_per_hour": round(slope * 3600 / 1024, 2),
        "min_mb": round(min(kbs) / 1024, 1),
        "max_mb": round(max(kbs) / 1024, 1),
        "ok": growth < 0.05,
    }


# --- main ------------------------------------------------------------------------------------


async def soak(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="riskd-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    markets = load_markets(args.markets)
    venue = Venue(markets, args.rate, args.drop_every, args.hostile, rng)
    await venue.server.start()
    exchange = Exchange(random.Random(args.seed + 1), cycle_s=args.exchange_cycle)
    await exchange.receiver.start()
    port = free_port()
    config = write_config(work, markets, venue.url, exchange.url, port)
    riskd = Path(sys.executable).with_name("riskd")
    cmd = (
        [str(riskd)]
        if riskd.exists()
        else [sys.executable, "-c", "from riskd.cli import main; raise SystemExit(main())"]
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RISKD_")},
        "RISKD_PUBLISHER__HTTP__SECRET": SECRET,
    }
    stderr = (work / "riskd.stderr").open("wb")
    proc = await asyncio.create_subprocess_exec(
        *cmd, "run", "-c", str(config), cwd=str(work), env=env, stdout=stderr, stderr=stderr
    )
    print(
        f"soak: riskd pid {proc.pid}, {len(markets)} markets, {args.rate:g} msg/s, "
        f"{args.duration:g} s; work dir {work}",
        flush=True,
    )
    stop = asyncio.Event()
    client = StreamClient(f"ws://127.0.0.1:{port}/v1/stream")
    tasks = [asyncio.create_task(venue.stream(stop)), asyncio.create_task(client.run(stop))]
    samples: list[tuple[float, int]] = []
    scrapes: list[tuple[float, dict[str, float]]] = []
    t0 = time.monotonic()
    next_report = 60.0
    exited_early = None
    while (elapsed := time.monotonic() - t0) < args.duration:
        await asyncio.sleep(args.sample_every)
        if proc.returncode is not None:
            exited_early = proc.returncode
            break
        exchange.take()
        kb = rss_kb(proc.pid)
        if kb is not None:
            samples.append((elapsed, kb))
        if elapsed >= next_report:
            metrics = await scrape(port)
            scrapes.append((elapsed, metrics))
            ticks = sum(pick(metrics, "riskd_ticks_total").values())
            print(
                f"soak: {elapsed / 60:5.1f} min  rss {kb / 1024 if kb else 0:6.1f} MB  "
                f"ticks {ticks:,.0f}  sent {venue.sent:,}  drops {venue.drops}  "
                f"exchange {exchange.answers}",
                flush=True,
            )
            next_report += 60.0
    final = await scrape(port)
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.wait_for(proc.wait(), 15)
    except TimeoutError:
        proc.kill()
        code = await proc.wait()
    stderr.close()
    await venue.server.close()
    await exchange.receiver.close()
    exchange.take()

    duration = samples[-1][0] if samples else 0.0
    growth = rss_growth(samples, duration)
    audit = check_audit(work / "audit.jsonl")
    summary = {
        "duration_s": round(duration),
        "markets": len(markets),
        "rate_msgs_per_s": args.rate,
        "exit_code": code,
        "exited_early": exited_early,
        "rss": growth,
        "rss_samples": len(samples),
        "audit": audit,
        "venue": {
            "messages_sent": venue.sent,
            "hostile_sent": venue.hostile,
            "connection_drops": venue.drops,
            "handshakes_refused": venue.server.refused,
        },
        "exchange": {
            "answers": exchange.answers,
            "sets_delivered": exchange.delivered,
            "seq_not_rising": exchange.seq_errors,
            "version_went_back": exchange.version_errors,
        },
        "stream_client": {
            "sessions": client.sessions,
            "snapshots": client.snapshots,
            "batches": client.batches,
            "errors": client.errors,
        },
        "metrics": {
            **pick(final, "riskd_ticks_total"),
            **pick(final, "riskd_ticks_rejected_total"),
            **pick(final, "riskd_feed_reconnects_total"),
            **pick(final, "riskd_publishes_total"),
            **pick(final, "riskd_markets"),
            **pick(final, "process_resident_memory_bytes"),
        },
    }
    checks = {
        "exit 0 on SIGTERM": code == 0 and exited_early is None,
        "RSS growth < 5% over the last 5/6": bool(growth.get("ok")),
        "audit log complete, seqs contiguous from 1": bool(audit["ok"]),
        "exchange never got an older version": exchange.version_errors == 0
        and exchange.seq_errors == 0,
    }
    summary["checks"] = checks
    (work / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    (work / "rss.csv").write_text(
        "t_s,rss_kb\n" + "".join(f"{t:.1f},{kb}\n" for t, kb in samples), encoding="utf-8"
    )
    print(json.dumps(summary, indent=2))
    for name, ok in checks.items():
        print(f"soak: {'PASS' if ok else 'FAIL'}  {name}")
    return 0 if all(checks.values()) else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds (default 3600)")
    parser.add_argument("--markets", type=int, default=39, help="markets (tapes) to replay")
    parser.add_argument("--rate", type=float, default=400.0, help="venue messages per second")
    parser.add_argument(
        "--drop-every", type=float, default=45.0, help="mean seconds between dropped connections"
    )
    parser.add_argument("--hostile", type=float, default=0.002, help="share of hostile messages")
    parser.add_argument(
        "--exchange-cycle",
        type=float,
        default=120.0,
        help="seconds of one healthy/down/timing-out exchange cycle",
    )
    parser.add_argument("--sample-every", type=float, default=5.0, help="RSS sample interval")
    parser.add_argument("--workdir", help="where config, audit log and summary go")
    parser.add_argument("--seed", type=int, default=6)
    return asyncio.run(soak(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
