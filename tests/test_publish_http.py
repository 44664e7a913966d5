"""The HTTP publisher against a real exchange on 127.0.0.1 that fails on purpose: 5xx then
200, a timeout, 429 with Retry-After, 401, an outage with the circuit breaker, and the
batching order (max_batch, tightened markets first). Outcomes are read from the
exchange, the publisher's metrics (injected registry) and the daemon's API."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from riskd.backoff import backoff
from riskd.config import Settings
from riskd.engine import Engine
from riskd.feeds.base import Tick
from riskd.metrics import Metrics
from riskd.publish.base import Batch
from riskd.publish.http import DeliveryPolicy, HttpPublisher
from riskd.publish.retry import (
    CircuitBreaker,
    Outcome,
    classify_error,
    classify_status,
    retry_after,
)
from riskd.timeutil import iso
from tests.support import (
    FED_TAPE,
    SECRET,
    InProcessDaemon,
    Receiver,
    Step,
    base_config,
    check_delivery,
    wait_until,
)

FAST_RETRY = {"backoff_initial_s": 0.02, "backoff_max_s": 0.1, "timeout_s": 2.0}


@pytest.fixture
async def exchange(receiver: Receiver) -> Receiver:
    """The receiver, failing on purpose as each test's `script` says."""
    return receiver


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RISKD_PUBLISHER__HTTP__SECRET", SECRET)


def count(d: InProcessDaemon, name: str, **labels: str) -> float:
    return d.daemon.metrics.registry.get_sample_value(name, labels) or 0.0


def published(d: InProcessDaemon, result: str) -> float:
    return count(d, "riskd_publishes_total", publisher="http", result=result)


def latency_count(d: InProcessDaemon) -> float:
    return count(d, "riskd_publish_latency_seconds_count", publisher="http")


def http_publisher(d: InProcessDaemon) -> HttpPublisher:
    pub = next(p for p in d.daemon.publishers if p.name == "http")
    assert isinstance(pub, HttpPublisher)
    return pub


async def caught_up(d: InProcessDaemon, receiver: Receiver) -> bool:
    """The exchange holds exactly the daemon's current set of every market."""
    current = {m: e["version"] for m, e in d.daemon.engine.current.items()}
    return bool(current) and {m: e["version"] for m, e in receiver.latest.items()} == current


def fed_config(tmp_path: Path, url: str, speed: float = 1e6, **http: Any) -> dict[str, Any]:
    # ~1.9e6 event seconds: about two wall seconds at 1e6x, ~40 cycles of 0.05 s.
    return base_config(
        tmp_path,
        0,
        feed={"path": str(FED_TAPE), "speed": speed},
        publisher={"http": {"url": url, **FAST_RETRY, **http}},
    )


async def test_5xx_then_200_ends_with_the_newest_values(
    tmp_path: Path, in_process: Any, exchange: Receiver
) -> None:
    exchange.script.extend([Step(500), Step(503), Step(500), Step(502), Step(500)])
    d = await in_process(fed_config(tmp_path, exchange.url, circuit_failures=10))
    d.start()
    await wait_until(
        lambda: caught_up(d, exchange), timeout=15, what="the exchange to hold the current sets"
    )
    assert await d.stop() == 0

    receiver = exchange
    receiver.check_all()  # every attempt took the next seq; accepted ones are complete
    check_delivery(receiver)
    assert exchange.answers[:5] == [500, 503, 500, 502, 500]
    assert await caught_up(d, receiver)
    # Metrics: five retries, one ok per accepted message, a latency per answer.
    assert published(d, "retry") == 5
    assert published(d, "ok") == len(receiver.messages)
    assert published(d, "rejected") == 0
    assert latency_count(d) == len(receiver.attempts) == len(exchange.answers)
    assert count(d, "riskd_publisher_circuit_open", publisher="http") == 0


async def test_timeout_is_retried(tmp_path: Path, in_process: Any, exchange: Receiver) -> None:
    # The first request is held past the publisher's 0.3 s timeout and never recorded.
    exchange.script.append(Step(hang_s=1.0, status=200))
    d = await in_process(fed_config(tmp_path, exchange.url, timeout_s=0.3))
    d.start()
    await wait_until(
        lambda: caught_up(d, exchange), timeout=15, what="the exchange to hold the current sets"
    )
    assert await d.stop() == 0

    receiver = exchange
    check_delivery(receiver)
    first_seq = exchange.arrivals[0][1]
    assert first_seq not in [m.body["seq"] for m in receiver.messages]
    assert exchange.arrivals[1][1] == first_seq + 1  # the retry is a new message
    assert published(d, "retry") == 1  # the timeout
    assert published(d, "ok") == len(receiver.messages)
    # No latency for the request that got no answer in time.
    assert latency_count(d) == published(d, "ok")


async def test_429_waits_for_retry_after(
    tmp_path: Path, in_process: Any, exchange: Receiver
) -> None:
    exchange.script.append(Step(429, retry_after="1"))
    d = await in_process(fed_config(tmp_path, exchange.url))
    d.start()
    await wait_until(
        lambda: caught_up(d, exchange), timeout=15, what="the exchange to hold the current sets"
    )
    assert await d.stop() == 0

    check_delivery(exchange)
    (t429, _), (t_next, _) = exchange.arrivals[:2]
    # Backoff alone would retry within 0.02 s; the exchange asked for one second.
    assert t_next - t429 >= 0.95
    assert exchange.answers[0] == 429 and exchange.answers[1] == 200
    assert published(d, "retry") == 1
    assert published(d, "ok") == len(exchange.messages)
    assert latency_count(d) == len(exchange.answers)


async def test_401_is_permanent_and_counted(
    tmp_path: Path, in_process: Any, receiver: Receiver
) -> None:
    receiver.fail_status = 401  # e.g. the exchange rotated the secret
    d = await in_process(fed_config(tmp_path, receiver.url))
    d.start()

    async def settled() -> bool:
        return bool(d.daemon.feed.finished and receiver.attempts)

    await wait_until(settled, timeout=15, what="the replay to end")
    await asyncio.sleep(0.3)  # a retry, if there were one, would come within this
    status, body = await d.get_json("/readyz")
    assert status == 503 and "publisher_failing:http" in body["reasons"]
    assert await d.stop() == 0

    assert not receiver.messages and receiver.failed == len(receiver.attempts) >= 1
    assert published(d, "rejected") == len(receiver.attempts)
    assert published(d, "retry") == 0 and published(d, "ok") == 0
    assert latency_count(d) == len(receiver.attempts)
    # Nothing refused was sent again: each (market, version) went out once.
    sent = [(e["market"], e["version"]) for b in receiver.attempts for e in b["params"]]
    assert len(sent) == len(set(sent))
    # A permanent refusal is not an outage: the circuit stays closed.
    assert count(d, "riskd_publisher_circuit_open", publisher="http") == 0


# --- an outage: many markets, the exchange gone for a minute of the daemon's clock -----

N_MARKETS = 120
T0 = 1_760_000_000.0


def write_many_markets(tmp_path: Path, seconds: int = 1200, step: int = 5) -> tuple[Path, Path]:
    rng = random.Random(3)
    prices = [rng.uniform(0.2, 0.8) for _ in range(N_MARKETS)]
    rows = []
    for k in range(0, seconds, step):
        for m in range(N_MARKETS):
            prices[m] = min(0.95, max(0.05, prices[m] + rng.gauss(0.0, 0.01)))
            rows.append(f"{T0 + k:.1f},mkt-{m:03d},{prices[m]:.4f}")
    tape = tmp_path / "many.csv"
    tape.write_text("ts,market,price\n" + "\n".join(rows) + "\n", encoding="utf-8")
    markets = tmp_path / "many_markets.json"
    markets.write_text(
        json.dumps(
            {
                "markets": [
                    {"id": f"mkt-{m:03d}", "resolves_at": iso(T0 + 60 * 86400)}
                    for m in range(N_MARKETS)
                ]
            }
        ),
        encoding="utf-8",
    )
    return tape, markets


async def test_outage_opens_the_circuit_with_bounded_memory_then_recovers(
    tmp_path: Path, in_process: Any, exchange: Receiver
) -> None:
    tape, markets = write_many_markets(tmp_path)
    # 50 event seconds per wall second: the outage below spans over a minute of the
    # daemon clock (1.5 wall seconds), with a publish cycle every 0.02 s (1 event second).
    doc = base_config(
        tmp_path,
        0,
        feed={"path": str(tape), "speed": 50.0},
        markets={"file": str(markets)},
        governor={"publish_interval_s": 0.02, "ttl_s": 30.0},
        publisher={
            "http": {
                "url": exchange.url,
                **FAST_RETRY,
                "max_batch": 50,
                "circuit_failures": 3,
                "circuit_reset_s": 0.2,
                "circuit_max_reset_s": 0.4,
            }
        },
    )
    d = await in_process(doc)
    pub = http_publisher(d)
    d.start()
    receiver = exchange
    await wait_until(lambda: caught_up(d, receiver), timeout=15, what="a first delivery")
    # Every request carries at most max_batch markets.
    assert max(len(b["params"]) for b in receiver.attempts) <= 50
    assert len(receiver.latest) == N_MARKETS

    await exchange.stop()
    down_at, down_clock = time.monotonic(), d.daemon.now()
    retries_before = published(d, "retry")
    largest_backlog = 0
    versions_at_stop = sum(int(e["version"]) for e in d.daemon.engine.current.values())
    while d.daemon.now() - down_clock < 75.0:  # over a minute of the daemon's clock
        largest_backlog = max(largest_backlog, pub.backlog())
        await asyncio.sleep(0.01)  # sampling the backlog over the outage
    outage_s = time.monotonic() - down_at
    assert count(d, "riskd_publisher_circuit_open", publisher="http") == 1
    status, body = await d.get_json("/readyz")
    assert status == 503 and "publisher_failing:http" in body["reasons"]
    # The daemon went on publishing (the audit log, the API) while the exchange was gone.
    assert (
        sum(int(e["version"]) for e in d.daemon.engine.current.values())
        > versions_at_stop + N_MARKETS
    )
    # Bounded memory: what waits is at most one set per market, however long the outage.
    assert 0 < largest_backlog <= N_MARKETS
    # The open circuit stops the hammering: a few failures, then one probe per reset.
    tries = published(d, "retry") - retries_before
    assert 3 <= tries <= 3 + outage_s / 0.2 + 2, (tries, outage_s)

    await exchange.start()  # the same port
    await wait_until(
        lambda: caught_up(d, receiver),
        timeout=15,
        what="the exchange to hold the current sets after it came back",
    )
    assert count(d, "riskd_publisher_circuit_open", publisher="http") == 0
    assert await d.stop() == 0
    check_delivery(receiver)
    assert max(len(b["params"]) for b in receiver.attempts) <= 50
    ok = published(d, "ok")
    assert ok == len(receiver.messages)
    # Refused connections have no latency; every answered request has one.
    assert latency_count(d) == ok


# --- the order of requests: max_batch and tightened markets first ---------------------


def entry(market: str, version: int) -> dict[str, Any]:
    return {
        "market": market,
        "version": version,
        "mode": "normal",
        "max_leverage": {"long": 2.0, "short": 2.0},
    }


async def test_tightened_markets_go_first_in_batches_of_max_batch(exchange: Receiver) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    pub = HttpPublisher(
        exchange.url,
        SECRET.encode(),
        "riskd-test",
        metrics,
        2.0,
        DeliveryPolicy(max_batch=3, backoff_initial_s=0.02, backoff_max_s=0.05),
    )
    exchange.script.append(Step(hang_s=0.3, record=True))  # the first request is slow
    await pub.start()
    try:
        stamp = "2026-01-01T00:00:00.000Z"
        pub.submit(Batch("riskd-test", 1, stamp, [entry(f"m{k}", 1) for k in range(6)]))
        await wait_until(lambda: _true(len(exchange.arrivals) == 1), what="a first request")
        # While it is in flight: m4 tightens (version 2), m7 appears (a loosening).
        pub.submit(
            Batch(
                "riskd-test",
                2,
                stamp,
                [entry("m4", 2), entry("m7", 1)],
                tightened=frozenset({"m4"}),
            )
        )
        await pub.drain(5.0)
    finally:
        await pub.close()
    sent = [[(e["market"], e["version"]) for e in b["params"]] for b in exchange.attempts]
    assert sent == [
        [("m0", 1), ("m1", 1), ("m2", 1)],
        [("m4", 2), ("m3", 1), ("m5", 1)],  # the tightened market first; m4 v1 never sent
        [("m7", 1)],
    ]
    assert [b["seq"] for b in exchange.attempts] == [1, 2, 3]
    assert pub.seq == 3
    assert (
        registry.get_sample_value("riskd_publishes_total", {"publisher": "http", "result": "ok"})
        == 3
    )


async def test_seq_restored_before_start_continues(exchange: Receiver) -> None:
    """The state snapshot sets `seq` before start; the next message takes seq + 1."""
    pub = HttpPublisher(exchange.url, SECRET.encode(), "riskd-test", Metrics(CollectorRegistry()))
    pub.seq = 41
    await pub.start()
    try:
        pub.submit(Batch("riskd-test", 1, "2026-01-01T00:00:00.000Z", [entry("m0", 9)]))
        await pub.drain(5.0)
    finally:
        await pub.close()
    (message,) = exchange.messages
    assert message.body["seq"] == 42
    assert message.headers["Idempotency-Key"] == "riskd-test:42"


@pytest.mark.parametrize("with_rows", [False, True])
async def test_a_set_not_newer_than_the_delivered_one_is_not_sent(
    exchange: Receiver, with_rows: bool
) -> None:
    """Per market, the highest version delivered bars older and equal ones: markets
    kept by their engine row, one the rows do not hold yet (kept aside until it gets
    a row), and without rows at all."""
    rows = {"m0": 0, "m1": 1} if with_rows else None
    pub = HttpPublisher(
        exchange.url,
        SECRET.encode(),
        "riskd-test",
        Metrics(CollectorRegistry()),
        2.0,
        rows=rows,
    )
    stamp = "2026-01-01T00:00:00.000Z"
    batches = [
        [entry("m0", 5), entry("m1", 300), entry("m2", 7)],
        [entry("m0", 4), entry("m1", 300), entry("m2", 7), entry("m3", 1)],
        [entry("m0", 6), entry("m1", 299), entry("m2", 6)],
        [entry("m1", 301), entry("m2", 8), entry("m3", 1)],
    ]
    await pub.start()
    try:
        for seq, params in enumerate(batches, 1):
            if seq == 3 and rows is not None:
                rows["m2"] = 2  # discovered by the engine after its set was delivered
            pub.submit(Batch("riskd-test", seq, stamp, params))
            await pub.drain(5.0)
    finally:
        await pub.close()
    sent = [[(e["market"], e["version"]) for e in b["params"]] for b in exchange.attempts]
    assert sent == [
        [("m0", 5), ("m1", 300), ("m2", 7)],
        [("m3", 1)],
        [("m0", 6)],
        [("m1", 301), ("m2", 8)],
    ]


async def _true(value: bool) -> bool:
    return value


# --- the delivery policy, without I/O ---------------------------------------------------


def test_statuses_and_errors_are_classified_in_one_place() -> None:
    assert classify_status(200) is classify_status(204) is Outcome.DELIVERED
    for status in (408, 429, 500, 502, 503, 504):
        assert classify_status(status) is Outcome.RETRY, status
    for status in (400, 401, 403, 404, 409, 413, 422):
        assert classify_status(status) is Outcome.PERMANENT, status
    assert classify_error(TimeoutError()) is Outcome.RETRY
    assert classify_error(ConnectionRefusedError()) is Outcome.RETRY
    assert classify_error(ValueError("a bug")) is None


def test_backoff_is_capped_exponential_with_jitter() -> None:
    delays = backoff(0.1, 1.0, rng=random.Random(1))
    first = [next(delays) for _ in range(8)]
    caps = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
    assert all(cap * 0.5 <= d <= cap for d, cap in zip(first, caps, strict=True)), first
    assert len(set(first)) == len(first)  # jittered
    with pytest.raises(ValueError):
        next(backoff(0.0, 1.0))


def test_retry_after_seconds_or_date_capped() -> None:
    now = 1_760_000_000.0
    assert retry_after("3", now, 60.0) == 3.0
    assert retry_after("3600", now, 60.0) == 60.0
    assert retry_after("Thu, 09 Oct 2025 08:53:30 GMT", now, 60.0) == pytest.approx(10.0)
    assert retry_after("Thu, 09 Oct 2025 08:53:00 GMT", now, 60.0) == 0.0  # in the past
    assert retry_after(None, now, 60.0) is None
    assert retry_after("soon", now, 60.0) is None


def test_circuit_breaker_opens_probes_and_closes() -> None:
    breaker = CircuitBreaker(failures=3, reset_s=1.0, max_reset_s=3.0)
    assert not breaker.failure(0.0) and not breaker.failure(0.1)
    assert breaker.wait_s(0.2) == 0.0
    assert breaker.failure(0.2)  # the third: open
    assert breaker.is_open and breaker.wait_s(0.7) == pytest.approx(0.5)
    assert breaker.wait_s(1.2) == 0.0  # half-open: one probe may go
    assert not breaker.failure(1.2)  # the probe failed: open again, twice as long
    assert breaker.wait_s(1.2) == pytest.approx(2.0)
    breaker.failure(3.2)
    assert breaker.wait_s(3.2) == pytest.approx(3.0)  # capped at max_reset_s
    assert breaker.success()  # a probe got through: closed
    assert not breaker.is_open and breaker.wait_s(3.3) == 0.0
    assert not breaker.success()


def test_the_engine_names_the_markets_that_tightened(monkeypatch: pytest.MonkeyPatch) -> None:
    """What `Batch.tightened` carries: the governor's `Decision.tightened`, by market id."""
    monkeypatch.delenv("RISKD_PUBLISHER__HTTP__SECRET")
    settings = Settings(
        markets={"file": None, "discover": True},
        governor={"stale_after_s": 30.0, "stale_after_gaps": 0.0},
    )
    engine = Engine(settings, {}, discover=True)
    for k in range(40):
        engine.ingest([Tick(f"m{m}", T0 + 10 * k, 0.5 + 0.002 * (k % 2)) for m in range(3)])
        engine.cycle(T0 + 10 * k)
    before = {m: e["max_leverage"]["long"] for m, e in engine.current.items()}
    assert min(before.values()) > 1.0
    # m0 keeps trading; m1 and m2 go silent past stale_after_s: fail-safe values (1x).
    engine.ingest([Tick("m0", T0 + 400, 0.5)])
    result = engine.cycle(T0 + 425)
    assert {"m1", "m2"} <= result.tightened_markets
    assert result.tightened_markets <= {e["market"] for e in result.entries}
    assert result.tightened == len(result.tightened_markets)
    for market in ("m1", "m2"):
        assert engine.current[market]["max_leverage"]["long"] == 1.0 < before[market]
