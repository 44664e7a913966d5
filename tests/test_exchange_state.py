"""The exchange's state in (riskd/exchange.py): `POST /v1/exchange/state` signed with
`[exchange] secret`, replay-protected, shown by `GET /v1/exchange/state`, the same over
/v1/stream, kept across a restart by the snapshot, and reported by `riskd receiver
--riskd-url`; refused requests change nothing. Real daemons and clients on 127.0.0.1."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import io
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect

from riskd.config import ExchangeSettings
from riskd.exchange import RESULTS, ExchangeStore, frame_request
from riskd.state import StateStore
from tests.support import (
    FED_TAPE,
    SECRET,
    InProcessDaemon,
    base_config,
    clean_env,
    free_port,
    sample,
    wait_until,
)

EX_SECRET = "exchange-secret-41c7"
POLY = "fed-dec2025-nochange-poly"
KALSHI = "fed-dec2025-nochange-kalshi"
STATUSES = {200, 400, 401, 403, 409, 413}


# --- helpers ---------------------------------------------------------------------------


def report(
    seq: int,
    oi: dict[str, Any] | None = None,
    exchange: str = "ex-a",
    fund: float = 1_250_000.0,
    **extra: Any,
) -> bytes:
    if oi is None:
        oi = {
            POLY: {
                "long": 120000.0,
                "short": 80000.0,
                "leverage": {"long": {"2": 50000.0, "5": 70000.0}},
            },
            KALSHI: {"long": 1000, "short": 0},
        }
    return json.dumps(
        {
            "exchange": exchange,
            "seq": seq,
            "as_of": "2026-12-06T10:00:00Z",
            "insurance_fund": fund,
            "open_interest": oi,
            **extra,
        }
    ).encode()


def signature(body: bytes, secret: str = EX_SECRET, ts: float | None = None) -> tuple[str, str]:
    """(timestamp, signature) as interfaces.md specifies them, computed here."""
    stamp = str(int(time.time() if ts is None else ts))
    mac = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return stamp, f"sha256={mac}"


def signed(body: bytes, secret: str = EX_SECRET, ts: float | None = None) -> dict[str, str]:
    stamp, sig = signature(body, secret, ts)
    return {
        "Content-Type": "application/json",
        "X-Riskd-Timestamp": stamp,
        "X-Riskd-Signature": sig,
    }


async def post(d: InProcessDaemon, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.post(
            d.url + "/v1/exchange/state", data=io.BytesIO(body), headers=headers
        ) as resp:
            text = await resp.text()
            # aiohttp's own 413 (the body over [server] max_body_bytes) is text.
            return resp.status, json.loads(text) if resp.status != 413 or text.startswith(
                "{"
            ) else {"error": text}


async def shown(d: InProcessDaemon) -> dict[str, Any]:
    status, view = await d.get_json("/v1/exchange/state")
    assert status == 200
    return dict(view)


async def metrics(d: InProcessDaemon) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(d.url + "/metrics") as resp:
            return await resp.text()


def exchange_doc(tmp_path: Path, **exchange: Any) -> dict[str, Any]:
    return base_config(
        tmp_path,
        0,
        feed={"path": str(FED_TAPE), "speed": 0.0},
        exchange={"secret": EX_SECRET, **exchange},
    )


async def running(in_process: Any, doc: dict[str, Any]) -> InProcessDaemon:
    """A daemon whose replay has ended: its clock stands at the tape's last tick."""
    d: InProcessDaemon = await in_process(doc)
    d.start()

    async def finished() -> bool:
        return bool(d.daemon.feed.finished) and math.isfinite(d.daemon.now())

    await wait_until(finished, what="the replay")
    return d


# --- accepted ----------------------------------------------------------------------------


async def test_a_signed_state_is_accepted_and_shown(tmp_path: Path, in_process: Any) -> None:
    d = await running(in_process, exchange_doc(tmp_path))
    before = await shown(d)
    assert before["enabled"] is True and before["state"] is None and before["stale"] is True
    assert sample(await metrics(d), "riskd_exchange_state_age_seconds") == math.inf
    oi = {
        POLY: {
            "long": 120000.0,
            "short": 80000.0,
            "leverage": {"long": {"2": 50000.0, "5": 70000.0}},
        },
        "not-a-riskd-market": {"long": 5.0},
    }
    status, answer = await post(d, report(12, oi), signed(report(12, oi)))
    assert status == 200, answer
    assert answer == {
        "accepted": True,
        "markets": 2,
        "unknown": ["not-a-riskd-market"],
        "unknown_count": 1,
    }
    view = await shown(d)
    state = view["state"]
    assert state["exchange"] == "ex-a" and state["seq"] == 12
    assert state["as_of"] == "2026-12-06T10:00:00.000Z"
    assert state["insurance_fund"] == 1_250_000.0
    assert state["open_interest"][POLY] == oi[POLY]
    # A side left out has no open interest.
    assert state["open_interest"]["not-a-riskd-market"] == {"long": 5.0, "short": 0.0}
    assert view["age_s"] == 0.0 and view["stale"] is False  # the replay's clock stands
    assert view["last_seq"] == {"ex-a": 12}
    assert EX_SECRET not in json.dumps(view)
    held = d.daemon.exchange.current()
    assert held.side(POLY, "long").leverage == ((2.0, 50000.0), (5.0, 70000.0))
    assert held.side(KALSHI, "short").notional == 0.0  # absent market: 0
    text = await metrics(d)
    assert sample(text, "riskd_exchange_state_total", result="accepted") == 1.0
    assert sample(text, "riskd_exchange_state_age_seconds") == 0.0
    for result in RESULTS:  # every result exported from the start
        assert sample(text, "riskd_exchange_state_total", result=result) is not None
    # A newer report replaces the whole state: markets it leaves out have none.
    status, _ = await post(
        d, report(13, {KALSHI: {"short": 7.5}}), signed(report(13, {KALSHI: {"short": 7.5}}))
    )
    assert status == 200
    assert set((await shown(d))["state"]["open_interest"]) == {KALSHI}


def _bad_requests() -> list[tuple[str, bytes, dict[str, str], int, str]]:
    """(what, body, headers, status, reason): every way of being refused."""
    good = report(50)
    now = time.time()
    stamp, sig = signature(good)
    cases = [
        ("unsigned", good, {"Content-Type": "application/json"}, 401, "bad_timestamp"),
        ("no signature", good, {"X-Riskd-Timestamp": stamp}, 401, "bad_signature"),
        ("wrong secret", good, signed(good, secret=SECRET), 401, "bad_signature"),
        (
            "body changed",
            report(51),
            {"X-Riskd-Timestamp": stamp, "X-Riskd-Signature": sig},
            401,
            "bad_signature",
        ),
        (
            "bare hex",
            good,
            {"X-Riskd-Timestamp": stamp, "X-Riskd-Signature": sig[7:]},
            401,
            "bad_signature",
        ),
        ("old timestamp", good, signed(good, ts=now - 400), 401, "stale_timestamp"),
        ("future timestamp", good, signed(good, ts=now + 400), 401, "stale_timestamp"),
        (
            "timestamp not digits",
            good,
            {"X-Riskd-Timestamp": f"{now:.3f}", "X-Riskd-Signature": sig},
            401,
            "bad_timestamp",
        ),
        ("replayed seq", report(10), signed(report(10)), 409, "replayed_seq"),
        ("older seq", report(3), signed(report(3)), 409, "replayed_seq"),
        (
            "too many buckets",
            report(
                52, {POLY: {"long": 1.0, "leverage": {"long": {str(k): 1.0 for k in range(1, 70)}}}}
            ),
            None,
            413,
            "too_large",
        ),
    ]
    malformed: list[bytes] = [
        b"",
        b"not json",
        b"[]",
        b'{"exchange": "ex-a"}',
        report(53, {POLY: {"long": -1.0}}),
        report(53, {POLY: {"long": "100"}}),
        report(53, {POLY: {"long": True}}),
        report(53, {POLY: {"lnog": 100.0}}),  # a misspelt side is no zero
        report(53, {POLY: {"long": 1.0, "leverage": {"long": {"0.5": 1.0}}}}),
        report(53, {POLY: {"long": 1.0, "leverage": {"long": {"2": 1.0, "2.0": 1.0}}}}),
        report(53, {POLY: {"long": 1.0, "leverage": {"both": {"2": 1.0}}}}),
        report(53, {"": {"long": 1.0}}),
        report(53, fund=-5.0),
        report(53).replace(b'"seq": 53', b'"seq": 53.5'),
        report(53).replace(b'"seq": 53', b'"seq": "53"'),
        report(53).replace(b"1250000.0", b"1e999"),
        report(53).replace(b"1250000.0", b"NaN"),
        report(53).replace(b"2026-12-06T10:00:00Z", b"2026-12-06T10:00:00"),
        report(53).replace(b"2026-12-06T10:00:00Z", b"tomorrow"),
    ]
    cases += [(f"malformed {i}", body, None, 400, "bad_body") for i, body in enumerate(malformed)]
    return [
        (what, body, headers if headers is not None else signed(body), status, reason)
        for what, body, headers, status, reason in cases
    ]


async def test_refused_requests_change_nothing(tmp_path: Path, in_process: Any) -> None:
    d = await running(in_process, exchange_doc(tmp_path))
    status, _ = await post(d, report(10), signed(report(10)))
    assert status == 200
    before = await shown(d)
    counted: dict[str, int] = {}
    for what, body, headers, want, reason in _bad_requests():
        status, answer = await post(d, body, headers)
        assert (status, answer.get("reason")) == (want, reason), (what, status, answer)
        assert answer["accepted"] is False and answer["error"], what
        counted[reason] = counted.get(reason, 0) + 1
        assert await shown(d) == before, what
    # A body over [server] max_body_bytes is cut off by the server before it is read.
    huge = report(60, {f"m{i}": {"long": 1.0} for i in range(50_000)})
    assert len(huge) > 1024 * 1024
    status, _ = await post(d, huge, signed(huge))
    assert status == 413
    assert await shown(d) == before
    text = await metrics(d)
    for reason, n in counted.items():
        assert sample(text, "riskd_exchange_state_total", result=reason) == n, reason
    assert sample(text, "riskd_api_refused_total", reason="body_too_large") == 1.0
    # Then the next seq is taken.
    status, _ = await post(d, report(11), signed(report(11)))
    assert status == 200


async def test_disabled_without_a_secret_and_one_instance_only(
    tmp_path: Path, in_process: Any
) -> None:
    d = await in_process(base_config(tmp_path, 0))
    for headers in ({}, signed(report(1))):
        status, answer = await post(d, report(1), headers)
        assert status == 403 and answer["reason"] == "disabled"
    view = await shown(d)
    assert view["enabled"] is False and view["state"] is None

    d = await in_process(exchange_doc(tmp_path / "b", instance="ex-a"))
    status, answer = await post(d, report(1, exchange="ex-b"), signed(report(1, exchange="ex-b")))
    assert status == 403 and answer["reason"] == "unknown_instance"
    assert d.daemon.exchange.current() is None and d.daemon.exchange.last_seq == {}
    status, _ = await post(d, report(1), signed(report(1)))
    assert status == 200


# --- the snapshot ------------------------------------------------------------------------


async def test_the_state_survives_a_restart(tmp_path: Path, in_process: Any) -> None:
    doc = exchange_doc(tmp_path)
    d = await running(in_process, doc)
    status, _ = await post(d, report(20), signed(report(20)))
    assert status == 200
    before = await shown(d)
    assert await d.stop() == 0  # writes the final snapshot

    again = await running(in_process, doc)
    after = await shown(again)
    assert after["state"] == before["state"] and after["last_seq"] == {"ex-a": 20}
    # The seqs survive too: a captured report cannot be replayed after a restart.
    status, answer = await post(again, report(20), signed(report(20)))
    assert status == 409 and answer["reason"] == "replayed_seq"
    status, _ = await post(again, report(21), signed(report(21)))
    assert status == 200


def test_a_snapshot_without_exchange_state_restores_none(tmp_path: Path) -> None:
    from riskd.config import Settings
    from riskd.engine import Engine
    from riskd.markets import load_markets

    def engine() -> Engine:
        return Engine(Settings(), load_markets(FED_TAPE / "markets.json"), discover=False)

    store = StateStore(tmp_path, 300.0)
    store.save(engine(), clock=1.0, seqs={"batch": 1})  # as older builds wrote it
    loaded = store.load(engine())
    assert loaded.status == "restored" and loaded.exchange is None

    held = ExchangeStore()
    verdict = held.receive(
        ExchangeSettings(secret=EX_SECRET),
        signed(report(4)),
        report(4),
        time.time(),
        123.0,
        1 << 20,
    )
    assert verdict.status == 200
    store.save(engine(), clock=1.0, seqs={"batch": 2}, exchange=held)
    loaded = store.load(engine())
    back = ExchangeStore.from_dict(loaded.exchange)
    assert back == held and back.age(130.0) == 7.0
    only_seqs = ExchangeStore.from_dict(loaded.exchange, with_state=False)
    assert only_seqs.current() is None and only_seqs.last_seq == {"ex-a": 4}
    for broken in (
        [],
        {"last_seq": {"ex-a": "4"}},
        {"state": {"seq": 1}},
        {"state": {**held.as_dict()["state"], "insurance_fund": -1}},
    ):
        with pytest.raises(ValueError):
            ExchangeStore.from_dict(broken)


# --- the stream --------------------------------------------------------------------------


def frame(body: bytes, secret: str = EX_SECRET, ts: float | None = None) -> str:
    stamp, sig = signature(body, secret, ts)
    return json.dumps(
        {"type": "exchange_state", "timestamp": stamp, "signature": sig, "body": body.decode()}
    )


async def reply(ws: ClientConnection, text: str) -> tuple[int, Any]:
    """Send a frame; the next reply frame among the batches."""
    await ws.send(text)
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if msg.get("type") == "exchange_state_result":
            return msg["status"], msg["answer"]


async def test_the_stream_gives_the_same_answers(tmp_path: Path, in_process: Any) -> None:
    doc = exchange_doc(tmp_path)
    doc["publisher"]["websocket"] = {}
    d = await running(in_process, doc)
    url = d.url.replace("http://", "ws://") + "/v1/stream"
    many = {f"m{i}": {"long": float(i), "short": 1.0} for i in range(300)}  # > 4 KiB
    async with connect(url, max_size=None) as ws:
        await ws.send("not json: ignored, as any frame that is no report")
        await ws.send(json.dumps({"type": "something else"}))
        status, answer = await reply(ws, frame(report(5, many)))
        assert status == 200 and answer["markets"] == 300 and answer["unknown_count"] == 300
        assert (await shown(d))["state"]["seq"] == 5
        # The same report again, and others refused: the HTTP endpoint's answers.
        for body, ts, secret in (
            (report(5), None, EX_SECRET),
            (report(6), time.time() - 900, EX_SECRET),
            (report(6), None, "wrong"),
            (b"{}", None, EX_SECRET),
        ):
            status, answer = await reply(ws, frame(body, secret, ts))
            http = await post(d, body, signed(body, secret, ts))
            assert (status, answer) == http, (body[:40], status, answer)
            assert status != 200
        status, answer = await reply(ws, json.dumps({"type": "exchange_state", "body": 5}))
        assert status == 400 and answer["reason"] == "bad_body"
        assert (await shown(d))["state"]["seq"] == 5
        status, _ = await reply(ws, frame(report(7)))
        assert status == 200
    text = await metrics(d)
    assert sample(text, "riskd_exchange_state_total", result="accepted") == 2.0
    assert sample(text, "riskd_exchange_state_total", result="replayed_seq") == 2.0


# --- the reference exchange reports its book -------------------------------------------------


async def test_the_receiver_reports_its_book(tmp_path: Path, in_process: Any) -> None:
    d = await running(in_process, exchange_doc(tmp_path))
    positions = tmp_path / "positions.json"
    positions.write_text(json.dumps({POLY: {"long": 300.0, "short": 100.0}}))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "riskd.cli",
            "receiver",
            "--port",
            str(free_port()),
            "--riskd-url",
            d.url,
            "--positions",
            str(positions),
            "--insurance-fund",
            "5000",
            "--report-interval-s",
            "0.1",
            "--exchange-name",
            "ref-ex",
            "--log-level",
            "debug",
        ],
        env=clean_env(RISKD_RECEIVER_SECRET=SECRET, RISKD_RECEIVER_EXCHANGE_SECRET=EX_SECRET),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:

        async def reported(long: float) -> bool:
            state = (await shown(d))["state"]
            return state is not None and state["open_interest"][POLY]["long"] == long

        await wait_until(lambda: reported(300.0), what="the first report")
        state = (await shown(d))["state"]
        assert state["exchange"] == "ref-ex" and state["insurance_fund"] == 5000.0
        assert state["seq"] > 1_700_000_000_000  # wall-clock milliseconds: rises over restarts
        positions.write_text(
            json.dumps({POLY: {"long": 450.0, "short": 100.0, "leverage": {"long": {"3": 450.0}}}})
        )
        await wait_until(lambda: reported(450.0), what="the changed book")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out.decode()
    assert EX_SECRET.encode() not in out and SECRET.encode() not in out
    assert sample(await metrics(d), "riskd_exchange_state_total", result="replayed_seq") == 0.0


def test_the_receiver_refuses_bad_reporting_options(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({POLY: {"long": -1}}))
    for args, env in (
        (["--riskd-url", "http://127.0.0.1:1"], {}),
        (["--positions", str(bad)], {"RISKD_RECEIVER_EXCHANGE_SECRET": "x"}),
        (
            ["--riskd-url", "http://127.0.0.1:1", "--positions", str(bad)],
            {"RISKD_RECEIVER_EXCHANGE_SECRET": "x"},
        ),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "riskd.cli", "receiver", *args],
            env=clean_env(RISKD_RECEIVER_SECRET=SECRET, **env),
            capture_output=True,
            timeout=30,
        )
        assert done.returncode == 2, (args, done.stderr)
        assert b"Traceback" not in done.stderr


# --- fuzz: the parser never fails other than by a counted refusal -----------------------------

NOW = 1_780_000_000
CFG = ExchangeSettings(secret=EX_SECRET)
SEED = json.loads(report(100))
hostile = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=8),
    st.sampled_from(
        [
            "",
            "NaN",
            "inf",
            "-1",
            "1e309",
            "2",
            "long",
            "short",
            "leverage",
            "2026-12-06T10:00:00Z",
            "0001-01-01T00:00:00+01:00",
            "\u00b2",
        ]
    ),
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    doc: Any = copy.deepcopy(SEED)
    doc["seq"] = draw(st.integers(0, 10**6))
    for _ in range(draw(st.integers(0, 4))):
        path = draw(
            st.sampled_from(
                [
                    ["exchange"],
                    ["seq"],
                    ["as_of"],
                    ["insurance_fund"],
                    ["open_interest"],
                    ["open_interest", POLY],
                    ["open_interest", POLY, "long"],
                    ["open_interest", POLY, "leverage"],
                    ["open_interest", POLY, "leverage", "long"],
                    ["open_interest", POLY, "leverage", "long", "2"],
                ]
            )
        )
        node = doc
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            if draw(st.booleans()):
                node[path[-1]] = draw(
                    hostile | st.dictionaries(st.text(max_size=4), hostile, max_size=3)
                )
            else:
                node.pop(path[-1], None)
    raw = json.dumps(doc).encode()
    cut = draw(st.sampled_from([None, None, None, 0, 1, len(raw) // 2]))
    return raw if cut is None else raw[:cut]


@settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(
    posts=st.lists(
        st.tuples(
            mutated(),
            st.sampled_from(["right"] * 4 + ["wrong", "none"]),
            st.sampled_from([NOW, NOW - 299, NOW + 301, NOW - 5000]),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_the_parser_only_ever_refuses_with_a_counted_reason(
    posts: list[tuple[bytes, str, int]],
) -> None:
    store = ExchangeStore()
    for raw, how, ts in posts:
        headers = signed(raw, EX_SECRET if how == "right" else "wrong", ts)
        if how == "none":
            del headers["X-Riskd-Signature"]
        before = copy.deepcopy(store.as_dict())
        verdict = store.receive(CFG, headers, raw, NOW, 50.0, 1 << 20)
        assert verdict.status in STATUSES and verdict.result in RESULTS
        if verdict.status != 200:
            assert store.as_dict() == before
            assert verdict.body["reason"] == verdict.result
            continue
        assert how == "right" and abs(NOW - ts) <= 300
        state = store.current()
        assert state is not None and math.isfinite(state.insurance_fund)
        for sides in state.open_interest.values():
            for book in sides.values():
                assert math.isfinite(book.notional) and book.notional >= 0
                assert all(lev >= 1 and math.isfinite(n) and n >= 0 for lev, n in book.leverage)
        assert ExchangeStore.from_dict(json.loads(json.dumps(store.as_dict()))) == store


@settings(max_examples=200, derandomize=True, deadline=None, database=None)
@given(
    text=st.one_of(
        st.text(max_size=50),
        st.builds(
            lambda parts: json.dumps({"type": "exchange_state", **parts}),
            st.dictionaries(st.sampled_from(["timestamp", "signature", "body"]), hostile),
        ),
    )
)
def test_a_stream_frame_is_a_request_ignored_or_a_value_error(text: str) -> None:
    try:
        request = frame_request(text)
    except ValueError:
        return
    if request is not None:
        headers, raw = request
        assert isinstance(raw, bytes) and set(headers) == {"X-Riskd-Timestamp", "X-Riskd-Signature"}
