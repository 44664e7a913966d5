"""Fuzzing the inputs (issues 6 and 22): tape files, the venue codecs, the config loader,
the markets file, the engine boundary, the admin API of a live daemon and the reference
receiver (both served on 127.0.0.1, requests over real sockets).

Hypothesis, seeded from real-format inputs (tests/fixtures/ws, the bundled tapes) and
mutated: values replaced by hostile ones (NaN, inf, 1e309, huge integers, dates at
the ends of the calendar, wrong types), keys dropped or added, bytes flipped, files
truncated, gzip streams corrupted. Asserted everywhere: nothing escapes but the
documented error types, and no invalid tick reaches the model (finite positive time,
price in [0, 1], bid <= ask within [0, 1], finite depth >= 0, no time in the future
beyond `[feed] max_future_s`, no time going back per market).

CI runs a fixed budget derandomized (the same examples every run, about 40 s in
all); `make fuzz` sets RISKD_FUZZ_EXAMPLES and draws fresh examples each run.
RISKD_FUZZ_COUNTS=FILE writes the number of inputs tried per surface.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import hashlib
import hmac
import io
import json
import math
import os
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, get_args
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from riskd.config import ConfigError, Settings, load_settings, masked
from riskd.engine import Engine
from riskd.feeds.base import MAX_DEPTH, Tick
from riskd.feeds.codec import Decoded
from riskd.feeds.kalshi.codec import KalshiCodec
from riskd.feeds.polymarket.codec import Binding, PolymarketCodec
from riskd.feeds.websocket.codec import WebsocketCodec
from riskd.feeds.websocket.config import WebsocketFeedSettings
from riskd.markets import Market, MarketsError, parse_markets
from riskd.model import estimator
from riskd.tape import Tape, TapeError

FUZZ = int(os.environ.get("RISKD_FUZZ_EXAMPLES", "0"))
ROOT = Path(__file__).resolve().parent.parent
WS = ROOT / "tests" / "fixtures" / "ws"
FED_CSV = ROOT / "data" / "tapes" / "fed_dec2025" / "fed_nochange.csv"
RECEIVED = 1_770_921_600.0  # after every fixture's event time
MAX_FUTURE_S = 5.0
REASON = re.compile(r"[a-z][a-z0-9_]*")  # a metrics label value, never message content
# Inputs tried, per surface; written as JSON to $RISKD_FUZZ_COUNTS at the end of the module.
COUNTS: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    yield
    target = os.environ.get("RISKD_FUZZ_COUNTS")
    if target:
        Path(target).write_text(json.dumps(dict(sorted(COUNTS.items())), indent=1) + "\n")


def budget(examples: int) -> settings:
    """A fixed, derandomized budget in CI; `make fuzz` raises it and explores afresh."""
    return settings(
        max_examples=FUZZ or examples,
        derandomize=not FUZZ,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    )


# --- hostile values ----------------------------------------------------------------

NASTY_STRINGS = [
    "",
    " ",
    "NaN",
    "nan",
    "-nan",
    "inf",
    "-inf",
    "Infinity",
    "1e309",
    "-1e309",
    "1e-320",
    "-0",
    "-0.0",
    "0",
    "1",
    "1.0",
    "1.0000001",
    "-0.0000001",
    "0.5",
    " 0.5 ",
    "0x10",
    "1_0",
    "\u0663",
    "\u00b2",
    "9" * 40,
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "2026-02-12T17:00:00Z",
    "2026-02-12T17:00:00",
    "\x00",
    "BUY",
    "SELL",
    "yes",
    "no",
    "book",
    "price_change",
    "last_trade_price",
    "best_bid_ask",
    "orderbook_delta",
    "ticker",
    "trade",
]
NASTY_NUMBERS: list[Any] = [
    0,
    -1,
    1,
    2,
    100,
    10**20,
    -(10**20),
    10**400,
    1e308,
    -1e308,
    5e-324,
    0.5,
    1.0000000001,
    -0.0,
    1770921580000,
    1770921580,
    1e13,
    1e16,
    253402300800,
    1e30,
    math.nan,
    math.inf,
    -math.inf,
]
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(NASTY_STRINGS),
    st.sampled_from(NASTY_NUMBERS),
)


def json_values(keys: list[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        json_scalars,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.sampled_from(keys) | st.text(max_size=6), inner, max_size=3)
        ),
        max_leaves=8,
    )


def _slots(node: Any) -> Iterator[tuple[Any, Any]]:
    """Every (container, key) of a JSON document, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield node, key
            yield from _slots(value)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield node, i
            yield from _slots(value)


def _dicts(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
    for container, key in _slots(node):
        if isinstance(container[key], dict):
            yield container[key]


def _retype(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return [value]
    return {"value": value}


@st.composite
def mutated_doc(draw: st.DrawFn, seeds: list[Any], keys: list[str]) -> Any:
    """A seed document with one to four structural mutations."""
    doc = copy.deepcopy(draw(st.sampled_from(seeds)))
    values = json_values(keys)
    for _ in range(draw(st.integers(1, 4))):
        slots = list(_slots(doc))
        op = draw(st.sampled_from(["set", "set", "delete", "insert", "retype", "whole"]))
        if op == "whole":
            doc = draw(values)
        elif op == "insert" or not slots:
            dicts = list(_dicts(doc))
            if dicts:
                draw(st.sampled_from(dicts))[draw(st.sampled_from(keys))] = draw(values)
        else:
            container, key = draw(st.sampled_from(slots))
            if op == "delete":
                del container[key]
            elif op == "set":
                container[key] = draw(values)
            else:
                container[key] = _retype(container[key])
    return doc


@st.composite
def byte_mutation(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` with a few bytes flipped, inserted or removed, or cut short."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if not buf:
            op = "insert"
        at = draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip":
            buf[at] = draw(st.integers(0, 255))
        elif op == "insert":
            buf[at:at] = draw(
                st.binary(min_size=1, max_size=4)
                | st.sampled_from([b"\x00", b"\xff", b'"', b"\n", b",", b"]"])
            )
        elif op == "delete":
            del buf[at : at + draw(st.integers(1, 8))]
        else:
            del buf[at:]
    return bytes(buf)


def dumps(doc: Any) -> str:
    # The standard library writes what orjson would refuse: NaN, Infinity, huge integers.
    return json.dumps(doc, allow_nan=True)


@st.composite
def frames_of(draw: st.DrawFn, raw: list[str], keys: list[str]) -> str | bytes:
    """One frame: a real one, a structurally mutated one, or a byte-mangled one."""
    seeds = [json.loads(f) for f in raw]
    kind = draw(st.sampled_from(["real", "doc", "doc", "doc", "batch", "bytes"]))
    if kind == "real":
        return draw(st.sampled_from(raw))
    if kind == "batch":  # several updates in one frame (Polymarket's initial dump)
        return dumps(
            draw(
                st.lists(mutated_doc(seeds, keys) | st.sampled_from(seeds), min_size=1, max_size=4)
            )
        )
    if kind == "bytes":
        mangled = draw(byte_mutation(draw(st.sampled_from(raw)).encode()))
        if draw(st.booleans()):
            return mangled
        return mangled.decode("utf-8", "replace")
    return dumps(draw(mutated_doc(seeds, keys)))


def _keys(docs: list[Any]) -> list[str]:
    found = {key for doc in docs for d in _dicts(doc) for key in d}
    return sorted(found)


# --- what a valid tick is ------------------------------------------------------------


def assert_valid_tick(tick: Tick, latest: float = math.inf) -> None:
    """What may reach the model (the engine checks it again at its boundary)."""
    assert isinstance(tick.market, str) and tick.market, tick
    assert math.isfinite(tick.ts) and 0 < tick.ts <= latest, tick
    assert isinstance(tick.price, float | int) and 0.0 <= tick.price <= 1.0, tick
    for side in (tick.bid, tick.ask):
        assert side is None or 0.0 <= side <= 1.0, tick
    if tick.bid is not None and tick.ask is not None:
        assert tick.bid <= tick.ask, tick
    assert tick.depth is None or 0.0 <= tick.depth <= MAX_DEPTH, tick


def run_codec(codec: Any, frames: list[str | bytes], markets: set[str] | None = None) -> list[Tick]:
    """Decode frames one second apart; check every output; per-market time never goes back."""
    last: dict[str, float] = {}
    ticks: list[Tick] = []
    for k, frame in enumerate(frames):
        received = RECEIVED + k
        out = codec.decode(frame, received)
        assert isinstance(out, Decoded)
        for tick in out.ticks:
            assert_valid_tick(tick, received + MAX_FUTURE_S)
            assert tick.ts >= last.get(tick.market, -math.inf), (tick, last)
            last[tick.market] = tick.ts
            if markets is not None:
                assert tick.market in markets
        for reason in out.rejected:
            assert REASON.fullmatch(reason), reason
        for event in out.events:
            assert math.isfinite(event.ts)
            if markets is not None:
                assert event.market in markets
            if event.kind == "tick_size":
                assert event.tick_size is not None and 0 < event.tick_size < 1
        for reply in out.replies:
            assert isinstance(json.loads(reply), dict)
        ticks += out.ticks
    return ticks


# --- venue codecs ----------------------------------------------------------------------


def _lines(name: str) -> list[str]:
    return (WS / name).read_text(encoding="utf-8").splitlines()


PM_RAW = [
    line
    for name in ("polymarket_book.jsonl", "polymarket_events.jsonl", "polymarket_trade.jsonl")
    for line in _lines(name)
]
PM_DOCS = [json.loads(line) for line in PM_RAW]
PM_KEYS = _keys(PM_DOCS)
KALSHI_RAW = [
    line
    for name in ("kalshi_book.jsonl", "kalshi_ticker.jsonl", "kalshi_trade.jsonl")
    for line in _lines(name)
]
KALSHI_DOCS = [json.loads(line) for line in KALSHI_RAW]
KALSHI_KEYS = _keys(KALSHI_DOCS)


def _pm_codec() -> PolymarketCodec:
    """Every asset of the fixtures bound; the first market's tokens as YES and NO."""
    assets: dict[str, Binding] = {}
    markets: dict[str, list[str]] = {}
    for doc in PM_DOCS:
        for d in _dicts(doc):
            asset, market = d.get("asset_id"), d.get("market") or doc.get("market")
            if isinstance(asset, str) and isinstance(market, str):
                markets.setdefault(market, [])
                if asset not in markets[market]:
                    markets[market].append(asset)
    for market, tokens in markets.items():
        for i, token in enumerate(tokens[:2]):
            assets[token] = Binding(market, no=i == 1)
    codec = PolymarketCodec(assets)
    codec.on_connect()
    return codec


def _kalshi_codec() -> KalshiCodec:
    tickers = {
        d["msg"]["market_ticker"]: "k-" + d["msg"]["market_ticker"]
        for d in KALSHI_DOCS
        if isinstance(d.get("msg"), dict) and "market_ticker" in d["msg"]
    }
    codec = KalshiCodec(tickers, ["ticker", "orderbook_delta", "trade"])
    codec.on_connect()
    return codec


@budget(150)
@given(frames=st.lists(frames_of(PM_RAW, PM_KEYS), min_size=1, max_size=8))
def test_polymarket_codec_survives_mutated_frames(frames: list[str | bytes]) -> None:
    COUNTS["polymarket frames"] += len(frames)
    codec = _pm_codec()
    markets = {b.market for b in codec.assets.values()}
    run_codec(codec, list(PM_RAW[:3]) + frames, markets)


@budget(150)
@given(frames=st.lists(frames_of(KALSHI_RAW, KALSHI_KEYS), min_size=1, max_size=8))
def test_kalshi_codec_survives_mutated_frames(frames: list[str | bytes]) -> None:
    COUNTS["kalshi frames"] += len(frames)
    codec = _kalshi_codec()
    run_codec(codec, list(KALSHI_RAW[:3]) + frames, set(codec.tickers.values()))


WS_CONFIGS: list[tuple[WebsocketFeedSettings, list[dict[str, Any]]]] = [
    (
        WebsocketFeedSettings(url="ws://x"),
        [
            {"market": "m1", "price": 0.42, "ts": 1770921500000},
            {"market": "m2", "price": "0.9", "ts": "1770921501000"},
        ],
    ),
    (
        WebsocketFeedSettings(
            url="ws://x",
            items="data",
            match={"type": "quote"},
            timestamp_unit="iso",
            fields={
                "market": "sym",
                "price": "",
                "bid": "b.px",
                "ask": "a.px",
                "depth": "b.qty",
                "timestamp": "time",
            },
        ),
        [
            {
                "type": "quote",
                "data": [
                    {
                        "sym": "m1",
                        "b": {"px": 0.4, "qty": 10},
                        "a": {"px": 0.45},
                        "time": "2026-02-12T17:00:00Z",
                    },
                    {
                        "sym": 7,
                        "b": {"px": 0.1, "qty": 3},
                        "a": {"px": 0.2},
                        "time": "2026-02-12T17:00:01+00:00",
                    },
                ],
            },
            {"type": "heartbeat"},
        ],
    ),
    (
        WebsocketFeedSettings(
            url="ws://x",
            timestamp_unit="s",
            price_scale=0.01,
            market_ids={"X1": "m1"},
            ping_text="ping",
        ),
        [
            {"market": "X1", "price": 42, "ts": 1770921500.5},
            {"market": "X2", "price": "99", "ts": 1770921500},
        ],
    ),
    (
        WebsocketFeedSettings(url="ws://x", timestamp_unit="receive", items="u"),
        [{"u": [{"market": "m3", "price": 0.5}, {"market": "m4", "price": 0.01}]}],
    ),
]


@budget(150)
@given(data=st.data(), config=st.sampled_from(range(len(WS_CONFIGS))))
def test_generic_websocket_codec_survives_mutated_frames(data: st.DataObject, config: int) -> None:
    cfg, seeds = WS_CONFIGS[config]
    raw = [json.dumps(d) for d in seeds]
    keys = _keys(seeds) + ["ts", "price", "market"]
    frames = data.draw(st.lists(frames_of(raw, keys), min_size=1, max_size=8))
    COUNTS["websocket frames"] += len(frames)
    codec = WebsocketCodec(cfg)
    codec.on_connect()
    run_codec(codec, raw + frames)


@pytest.mark.parametrize("ts_ms", [RECEIVED * 1000 + 6_000, 4e12, 1e15])
def test_codecs_reject_times_in_the_future(ts_ms: float) -> None:
    """Beyond max_future_s ahead of the arrival time: rejected, and the market's clock
    is not poisoned (its next honest tick still gets through)."""
    codec = _pm_codec()
    token = PM_DOCS[0]["asset_id"]
    trade = {
        "event_type": "last_trade_price",
        "asset_id": token,
        "price": "0.5",
        "timestamp": str(int(ts_ms)),
    }
    out = codec.decode(json.dumps(trade), RECEIVED)
    assert out.ticks == [] and out.rejected == ["future_ts"]
    trade["timestamp"] = str(int(RECEIVED * 1000))
    assert len(codec.decode(json.dumps(trade), RECEIVED + 1).ticks) == 1

    ws = WebsocketCodec(WS_CONFIGS[0][0])
    out = ws.decode(json.dumps({"market": "m", "price": 0.5, "ts": ts_ms}), RECEIVED)
    assert out.ticks == [] and out.rejected == ["future_ts"]

    kalshi = _kalshi_codec()
    ticker = next(t for t in kalshi.tickers)
    msg = {
        "type": "trade",
        "sid": 3,
        "msg": {"market_ticker": ticker, "yes_price": 40, "ts_ms": ts_ms},
    }
    out = kalshi.decode(json.dumps(msg), RECEIVED)
    assert out.ticks == [] and out.rejected == ["future_ts"]
    msg["msg"]["ts_ms"] = RECEIVED * 1000  # type: ignore[index]
    assert len(kalshi.decode(json.dumps(msg), RECEIVED).ticks) == 1


# --- tapes -----------------------------------------------------------------------------

CSV_LINES = FED_CSV.read_text(encoding="utf-8").splitlines()[:25]
CSV_HEADER = CSV_LINES[0].split(",")
CSV_FIELDS = st.one_of(
    st.sampled_from(NASTY_STRINGS),
    st.text(max_size=8),
    st.sampled_from([repr(x) for x in NASTY_NUMBERS]),
)


def _jsonl(line: str) -> dict[str, Any]:
    row = dict(zip(CSV_HEADER, line.split(","), strict=True))
    return {k: (v if k in ("ts", "market") else float(v)) for k, v in row.items()}


JSONL_DOCS = [_jsonl(line) for line in CSV_LINES[1:]]


@st.composite
def tape_bytes(draw: st.DrawFn) -> tuple[str, bytes]:
    """A file name and its content: real rows, mutated line by line, maybe gzipped."""
    fmt = draw(st.sampled_from(["csv", "jsonl"]))
    if fmt == "csv":
        lines = list(CSV_LINES)
    else:
        lines = [json.dumps(d) for d in JSONL_DOCS]
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["field", "field", "drop", "dup", "swap", "junk", "bytes"]))
        at = draw(st.integers(0 if fmt == "jsonl" or op != "field" else 1, len(lines) - 1))
        if op == "field" and fmt == "csv":
            cells = lines[at].split(",")
            cells[draw(st.integers(0, len(cells) - 1))] = draw(CSV_FIELDS).replace("\n", " ")
            lines[at] = ",".join(cells)
        elif op == "field":
            lines[at] = dumps(
                draw(mutated_doc(JSONL_DOCS, ["ts", "market", "price", "bid", "ask", "depth"]))
            )
        elif op == "drop" and len(lines) > 1:
            del lines[at]
        elif op == "dup":
            lines.insert(at, lines[at])
        elif op == "swap":
            other = draw(st.integers(0, len(lines) - 1))
            lines[at], lines[other] = lines[other], lines[at]
        elif op == "junk":
            lines.insert(at, draw(st.text(max_size=30)).replace("\r", ""))
        else:
            lines[at] = draw(byte_mutation(lines[at].encode())).decode("utf-8", "replace")
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    bom = draw(st.sampled_from(["", "\ufeff"]))
    data = (bom + newline.join(lines) + newline).encode("utf-8", "surrogatepass")
    name = f"tape.{fmt}"
    if draw(st.booleans()):
        name += ".gz"
        data = gzip.compress(data)
        if draw(st.booleans()):  # a damaged archive: truncated, flipped bytes
            data = draw(byte_mutation(data))
    elif draw(st.integers(0, 9)) == 0:
        data = draw(byte_mutation(data))
    return name, data


@budget(200)
@given(tape=tape_bytes())
def test_tape_reader_survives_mutated_files(tape: tuple[str, bytes]) -> None:
    name, data = tape
    COUNTS["tape files"] += 1
    COUNTS["tape files gz" if name.endswith(".gz") else "tape files plain"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        try:
            reader = Tape(path)
            ticks = list(reader)
        except TapeError:
            COUNTS["tape files refused"] += 1
            return
    last: dict[str, float] = {}
    for tick in ticks:
        assert_valid_tick(tick)
        assert tick.ts >= last.get(tick.market, -math.inf)
        last[tick.market] = tick.ts
    (report,) = reader.reports
    COUNTS["tape rows"] += report.rows
    assert report.accepted == len(ticks)
    assert report.rows == report.accepted + report.rejected
    assert all(REASON.fullmatch(r) for r in report.by_reason)


@budget(100)
@given(tape=tape_bytes())
def test_tape_columns_are_what_iterating_it_gives(tape: tuple[str, bytes]) -> None:
    """The backtest's read (`Tape.columns`: a plain CSV file split at once, the rest
    read as iterating does) has the ticks, the reports and the errors of iterating."""
    name, data = tape
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        try:
            reader = Tape(path, require_rows=False)
        except TapeError:
            return
        try:
            ticks = list(reader)
        except TapeError as exc:
            with pytest.raises(TapeError, match=re.escape(str(exc))):
                reader.columns()
            return
        reports = [vars(r).copy() for r in reader.reports]
        (cols,) = reader.columns()
        assert list(cols.ticks()) == ticks
        assert [vars(r) for r in reader.reports] == reports


# --- the engine boundary -----------------------------------------------------------------

BASE_T = 1_770_000_000.0
KNOWN = ("a", "b", "c")
any_float = st.one_of(st.floats(), st.sampled_from([-1.0, 0.0, 0.5, 1.0, 1.5, 1e300, 1e13]))
maybe_float = st.none() | any_float | st.floats(0, 1)
ticks_st = st.builds(
    Tick,
    market=st.sampled_from([*KNOWN, "unknown-1", "unknown-2", ""]),
    ts=st.one_of(
        st.floats(BASE_T - 100, BASE_T + 100),
        any_float,
        st.sampled_from([BASE_T + 1e6, math.nan, -BASE_T]),
    ),
    price=st.one_of(st.floats(0, 1), any_float),
    bid=maybe_float,
    ask=maybe_float,
    depth=st.none() | st.floats(0, 1e6) | any_float,
)


@contextlib.contextmanager
def model_guard() -> Iterator[list[int]]:
    """Check every array the engine hands to the estimator; count the ticks applied."""
    applied = [0]
    update: Callable[..., np.ndarray] = estimator.update

    def checked(
        state: Any,
        cfg: Any,
        idx: np.ndarray,
        t: np.ndarray,
        p: np.ndarray,
        half_spread: np.ndarray,
        depth: np.ndarray | None = None,
        record: Any = None,
    ) -> np.ndarray:
        # A market may appear several times (ticks apply in order), never out of range.
        assert ((idx >= 0) & (idx < len(state.t))).all()
        assert np.isfinite(t).all() and (t > 0).all()
        assert np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
        assert np.isfinite(half_spread).all() and ((half_spread >= 0) & (half_spread <= 0.5)).all()
        if depth is not None:
            known = depth[~np.isnan(depth)]
            assert ((known >= 0) & (known <= MAX_DEPTH)).all()
        applied[0] += len(idx)
        return update(state, cfg, idx, t, p, half_spread, depth, record=record)

    with mock.patch.object(estimator, "update", checked):
        yield applied


MARKETS = {m: Market(m, BASE_T + 86_400, BASE_T + 86_400) for m in KNOWN}


@budget(200)
@given(
    batches=st.lists(st.lists(ticks_st, max_size=25), min_size=1, max_size=4),
    discover=st.booleans(),
    live=st.booleans(),
)
def test_engine_rejects_every_invalid_tick_with_a_reason(
    batches: list[list[Tick]], discover: bool, live: bool
) -> None:
    COUNTS["engine ticks"] += sum(map(len, batches))
    engine = Engine(Settings(), MARKETS, discover=discover)
    with model_guard() as applied:
        total = 0
        for k, batch in enumerate(batches):
            now = BASE_T + 10 * k if live else None
            result = engine.ingest(batch, now=now)
            assert result.accepted + sum(result.rejected.values()) == len(batch)
            assert all(REASON.fullmatch(r) for r in result.rejected)
            total += result.accepted
            if not discover:
                assert len(engine) == len(KNOWN)
        assert applied[0] == total
    assert np.isfinite(engine.est.t[engine.est.ticks > 0]).all()
    cycle = engine.cycle(BASE_T + 100)
    for entry in cycle.entries:
        assert all(math.isfinite(v) and v >= 1 for v in entry["max_leverage"].values())


def test_engine_counts_each_kind_of_bad_tick() -> None:
    engine = Engine(Settings(), MARKETS, discover=False)
    now = BASE_T
    bad = {
        "bad_price": [Tick("a", now, math.nan), Tick("a", now, 1.5), Tick("a", now, -0.1)],
        "bad_ts": [Tick("a", math.inf, 0.5), Tick("a", math.nan, 0.5), Tick("a", -5.0, 0.5)],
        "bad_bid_ask": [
            Tick("a", now, 0.5, 0.6, 0.4),
            Tick("a", now, 0.5, math.nan, 0.6),
            Tick("a", now, 0.5, -0.1, 0.6),
            Tick("a", now, 0.5, 0.4, math.inf),
        ],
        "bad_depth": [
            Tick("a", now, 0.5, depth=-1.0),
            Tick("a", now, 0.5, depth=math.inf),
            Tick("a", now, 0.5, depth=MAX_DEPTH * 10),
        ],
        "future_ts": [Tick("a", now + 3600, 0.5)],
        "unknown_market": [Tick("zz", now, 0.5)],
    }
    result = engine.ingest([t for ticks in bad.values() for t in ticks], now=now)
    assert result.accepted == 0
    assert result.rejected == {reason: len(ticks) for reason, ticks in bad.items()}
    assert engine.ingest([Tick("a", now, 0.5)], now=now).accepted == 1
    assert engine.ingest([Tick("a", now - 1, 0.5)], now=now).rejected == {"out_of_order": 1}
    # A replay judges no tick by the wall clock: its clock is the tape.
    assert engine.ingest([Tick("b", now + 3600, 0.5)]).accepted == 1


def test_invalid_ticks_do_not_discover_markets() -> None:
    engine = Engine(Settings(), {}, discover=True)
    result = engine.ingest(
        [Tick("x", math.nan, 0.5), Tick("y", BASE_T, 2.0), Tick("z", BASE_T + 1e6, 0.5)], now=BASE_T
    )
    assert result.accepted == 0 and len(engine) == 0


# --- the config loader ---------------------------------------------------------------


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    """Section -> key -> sub-schema (None for a leaf), from the pydantic models."""
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        sub = None
        for candidate in (info.annotation, *get_args(info.annotation)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                sub = _schema(candidate)
        out[name] = sub
    return out


SCHEMA = _schema(Settings)
LEAF_KEYS = sorted({k for sec in SCHEMA.values() if sec for k in sec})
toml_scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.text(max_size=10),
    st.sampled_from(
        [
            "replay",
            "polymarket",
            "kalshi",
            "websocket",
            "json",
            "text",
            "debug",
            "/nonexistent/x",
            "var/x",
            "ms",
            "iso",
            "receive",
            "ticker",
            "",
        ]
    ),
    st.sampled_from([0, 1, -1, 0.5, 1e-9, 1e300, 2**31, 65536, math.inf, -math.inf, math.nan]),
    st.datetimes(timezones=st.none() | st.timezones()),
    st.dates(),
    st.times(),
)


def _toml_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # A named function: hypothesis reads a multi-line lambda's source wrongly and warns
    # (an error here) that it does not recurse, in random runs only.
    return st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(LEAF_KEYS) | st.text(max_size=5), inner, max_size=3
    )


toml_values = st.recursive(toml_scalars, _toml_containers, max_leaves=6)


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml(value: Any) -> str:
    """One value as TOML (inline tables for tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON escapes are TOML basic-string escapes
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    return value.isoformat()  # dates, times, date-times


@st.composite
def config_docs(draw: st.DrawFn) -> dict[str, Any]:
    """Known sections and keys with random values, some unknown keys and shapes."""
    doc: dict[str, Any] = {}
    for section in draw(st.lists(st.sampled_from(sorted(SCHEMA)), max_size=4, unique=True)):
        keys = SCHEMA[section]
        if keys is None or draw(st.integers(0, 15)) == 0:
            doc[section] = draw(toml_values)
            continue
        table: dict[str, Any] = {}
        for key in draw(st.lists(st.sampled_from(sorted(keys)), max_size=4, unique=True)):
            sub = keys[key]
            if sub is not None and draw(st.booleans()):
                table[key] = {
                    k: draw(toml_values)
                    for k in draw(st.lists(st.sampled_from(sorted(sub)), max_size=3, unique=True))
                }
            else:
                table[key] = draw(toml_values)
        if draw(st.integers(0, 5)) == 0:
            table[draw(st.text(min_size=1, max_size=6))] = draw(toml_values)
        doc[section] = table
    return doc


def _walk_floats(node: Any) -> Iterator[float]:
    if isinstance(node, float):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _walk_floats(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk_floats(v)


@budget(200)
@given(
    doc=config_docs(),
    mangle=st.integers(0, 7),
    data=st.data(),
    env=st.dictionaries(
        st.sampled_from(
            [
                "RISKD_FEED__KIND",
                "RISKD_FEED__SPEED",
                "RISKD_GOVERNOR__TTL_S",
                "RISKD_PUBLISHER__HTTP",
                "RISKD_MARKETS__INLINE",
                "RISKD_SERVER__PORT",
                "RISKD_FEED__POLYMARKET__MARKETS",
                "RISKD_LIMITS__MAX_LEVERAGE",
            ]
        ),
        st.sampled_from(
            ["[", "{", "[1,", "nan", "inf", "1e999", '["replay"]', "{}", "x", "-1", '{"url": 3}']
        )
        | st.text(max_size=8),
        max_size=2,
    ),
)
def test_config_loader_gives_settings_or_config_error(
    doc: dict[str, Any], mangle: int, data: st.DataObject, env: dict[str, str]
) -> None:
    COUNTS["config documents"] += 1
    COUNTS["config env overrides"] += len(env)
    text = "\n".join(f"{_toml_key(k)} = {_toml(v)}" for k, v in doc.items()) + "\n"
    raw = text.encode("utf-8", "surrogatepass")
    if mangle == 0:
        raw = data.draw(byte_mutation(raw))
    env = {k: v.replace("\x00", "") for k, v in env.items()}
    with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, env):
        path = Path(tmp) / "riskd.toml"
        path.write_bytes(raw)
        try:
            loaded = load_settings(path)
        except ConfigError as exc:
            assert str(exc)
            return
    assert isinstance(loaded, Settings)
    # A valid config has no infinite or NaN number anywhere, and check-config prints it.
    dump = loaded.model_dump(mode="json")
    assert all(math.isfinite(x) for x in _walk_floats(dump)), dump
    json.dumps(masked(loaded))
    assert loaded.governor.ttl_s > loaded.governor.publish_interval_s


market_values = st.one_of(
    toml_scalars,
    st.none(),
    st.sampled_from(
        [
            "2026-11-03T00:00:00Z",
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "2026-11-03",
            "x",
        ]
    ),
)


@budget(200)
@given(
    entries=st.lists(
        st.dictionaries(
            st.sampled_from(
                [
                    "id",
                    "resolves_at",
                    "event_at",
                    "outcome",
                    "tick_size",
                    "title",
                    "max_leverage",
                    "max_slippage",
                    "fee_floor_hourly",
                    "limits",
                    "polymarket_yes_token",
                    "kalshi_ticker",
                    "rows",
                ]
            ),
            market_values
            | st.dictionaries(
                st.sampled_from(["max_leverage", "max_slippage"]), market_values, max_size=2
            ),
            max_size=6,
        ),
        max_size=4,
    )
    | toml_values
)
def test_markets_parser_gives_markets_or_markets_error(entries: Any) -> None:
    COUNTS["markets documents"] += 1
    try:
        markets = parse_markets(entries, "fuzz")
    except MarketsError as exc:
        assert str(exc)
        return
    for market in markets.values():
        assert math.isfinite(market.resolves_at) and math.isfinite(market.event_at)
        for limit in (market.max_leverage, market.max_slippage, market.fee_floor_hourly):
            assert limit is None or math.isfinite(limit)


# --- the admin API -------------------------------------------------------------------

ADMIN_TOKEN = "admin-token-fuzz"
POLY = "fed-dec2025-nochange-poly"
KALSHI = "fed-dec2025-nochange-kalshi"
OVERRIDE_SEEDS: list[Any] = [
    {"market": POLY, "mode": "halted", "note": "incident"},
    {"market": KALSHI, "max_leverage": 2.0},
    {"market": KALSHI, "mode": "reduce_only", "max_leverage": 1.5},
    {"market": POLY, "mode": None},
    {"market": POLY, "max_leverage": None},
    {"market": POLY, "clear": True},
    {"market": KALSHI, "max_leverage": 15.0, "loosen": True},
    {"market": "no-such-market", "mode": "halted"},
]
OVERRIDE_KEYS = ["market", "mode", "max_leverage", "loosen", "note", "clear", "colour"]
HOSTILE_TEXT = [
    "\ud800",
    "\udfff",
    "\x00",
    "x" * 70_000,
    POLY,
    KALSHI,
    "normal",
    "halted",
    "reduce_only",
    "../../etc/passwd",
    "%00",
    "\u202e",
]
# A few values for each way a field can be wrong: too big for a float, NaN and inf as
# text, not UTF-8 encodable, the wrong type, out of range.
HOSTILE_VALUES: list[Any] = [
    10**400,
    -(10**400),
    1e308,
    "NaN",
    "inf",
    "1e309",
    "\ud800",
    "x" * 70_000,
    None,
    True,
    [],
    {},
    [1],
    -1,
    0,
    0.999,
    1,
    1e9,
    "2",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "2026-02-12T17:00:00",
    "2026-02-30T00:00:00Z",
]
AUTHS: list[dict[str, str] | None] = [
    None,
    {},
    {"Authorization": "Bearer wrong"},
    {"Authorization": f"Basic {ADMIN_TOKEN}"},
    {"Authorization": ADMIN_TOKEN},
    {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
    {"Authorization": "Bearer " + ADMIN_TOKEN[:-1]},
    {"Authorization": "Bearer"},
]
CONTENT_TYPES = [
    None,
    "application/json",
    "text/plain",
    "application/octet-stream",
    "application/json; charset=latin-1",
    "application/json; charset=utf-16",
    "application/json; charset=no-such-charset",
    "multipart/form-data; boundary=x",
    "application/x-www-form-urlencoded",
]


class Blob(bytes):
    """A request body that prints short (a failing example may carry megabytes)."""

    def __repr__(self) -> str:
        return (
            f"Blob({bytes(self[:120])!r}... {len(self)} bytes)"
            if len(self) > 120
            else f"Blob({bytes(self)!r})"
        )


@st.composite
def json_bodies(draw: st.DrawFn, seeds: list[Any], keys: list[str]) -> Blob:
    return Blob(draw(_json_bodies(seeds, keys)))


@st.composite
def _json_bodies(draw: st.DrawFn, seeds: list[Any], keys: list[str]) -> bytes:
    """A request body: a real one, a mutated one, any JSON value, or not JSON at all."""
    kind = draw(
        st.sampled_from(
            [
                "real",
                "field",
                "field",
                "field",
                "doc",
                "doc",
                "value",
                "bytes",
                "binary",
                "deep",
                "huge",
            ]
        )
    )
    values = json_values(keys) | st.sampled_from(HOSTILE_TEXT)
    if kind == "real":
        return dumps(draw(st.sampled_from(seeds))).encode()
    if kind == "field":  # a valid document with one or two fields given hostile values
        doc = copy.deepcopy(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(1, 2))):
            hostile = draw(st.sampled_from(HOSTILE_VALUES) | json_scalars)
            slots = list(_slots(doc))
            if slots and draw(st.booleans()):
                container, key = draw(st.sampled_from(slots))
                container[key] = hostile
            else:
                draw(st.sampled_from(list(_dicts(doc))))[draw(st.sampled_from(keys))] = hostile
        return dumps(doc).encode()
    if kind == "doc":
        doc = draw(mutated_doc(seeds, keys))
        if isinstance(doc, dict) and draw(st.booleans()):
            doc[draw(st.sampled_from(keys))] = draw(values)
        return dumps(doc).encode()
    if kind == "value":
        return dumps(draw(values)).encode()
    if kind == "bytes":
        return draw(byte_mutation(dumps(draw(st.sampled_from(seeds))).encode()))
    if kind == "binary":
        return draw(st.binary(max_size=64))
    if kind == "deep":  # nesting that a recursive parser cannot follow
        depth = draw(st.sampled_from([100, 5_000, 100_000]))
        return draw(st.sampled_from([b"[", b'{"a":'])) * depth
    size = draw(st.sampled_from([10_000, 1024 * 1024 + 1, 3 * 1024 * 1024]))
    return dumps({**draw(st.sampled_from(seeds)), "note": "n" * size}).encode()


@st.composite
def admin_requests(draw: st.DrawFn) -> tuple[str, str, bytes | None, dict[str, str], bool]:
    """(method, path, body, headers, authorized)."""
    auth = draw(st.sampled_from(AUTHS)) if draw(st.integers(0, 3)) == 0 else None
    authorized = auth is None
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"} if auth is None else dict(auth)
    if draw(st.booleans()):
        headers["X-Riskd-Actor"] = draw(st.sampled_from(["alice", "", "x" * 200, "é"]))
    ctype = draw(st.sampled_from(CONTENT_TYPES))
    if ctype is not None:
        headers["Content-Type"] = ctype
    route = draw(
        st.sampled_from(["override"] * 12 + ["delete", "delete", "list", "reload", "wrong_method"])
    )
    if route == "override":
        return (
            "POST",
            "/v1/admin/override",
            draw(json_bodies(OVERRIDE_SEEDS, OVERRIDE_KEYS)),
            headers,
            authorized,
        )
    if route == "delete":
        market = draw(
            st.sampled_from([POLY, KALSHI, "no-such-market", "%2e%2e", "%ED%A0%80", "a%2Fb"])
            | st.from_regex(r"\A[A-Za-z0-9._~-]{1,20}\Z")
        )
        return "DELETE", f"/v1/admin/override/{market}", None, headers, authorized
    if route == "list":
        return "GET", "/v1/admin/overrides", None, headers, authorized
    if route == "reload":
        return (
            "POST",
            "/v1/admin/reload",
            draw(st.none() | st.binary(max_size=16)),
            headers,
            authorized,
        )
    return draw(st.sampled_from(["PUT", "PATCH"])), "/v1/admin/override", b"{}", headers, authorized


async def _request(
    session: Any, url: str, method: str, body: bytes | None, headers: dict[str, str]
) -> tuple[int, Any]:
    data: Any = body if body is None or len(body) < 2**16 else io.BytesIO(body)  # no warning
    async with session.request(
        method, url, data=data, headers=headers, skip_auto_headers=["Content-Type"]
    ) as resp:
        text = await resp.text()
        ctype = resp.headers.get("Content-Type", "")
        return resp.status, json.loads(text) if ctype.startswith("application/json") else text


def _sides(params: dict[str, Any]) -> dict[tuple[str, str], float]:
    return {
        (p["market"], side): lev
        for p in params["params"]
        for side, lev in p["max_leverage"].items()
    }


@pytest.fixture
async def admin_daemon(tmp_path: Path, in_process: Any) -> Any:
    """One daemon for all the examples of a test (it must keep serving through them):
    the whole FOMC tape replayed, then a frozen clock, so published leverage moves only
    with overrides. Yields it and the leverage published before any override."""
    from tests.support import FED_TAPE, base_config, http_json, wait_until

    d = await in_process(
        base_config(
            tmp_path,
            0,
            feed={"path": str(FED_TAPE), "speed": 0.0},
            server={"admin_token": ADMIN_TOKEN},
        )
    )
    d.start()

    async def settled() -> bool:
        return bool(d.daemon.feed.finished) and {POLY, KALSHI} <= set(d.daemon.engine.current)

    await wait_until(settled, what="the replay")
    status, doc = await http_json(d.url + "/v1/params")
    assert status == 200
    yield d, _sides(doc)


@budget(60)
@given(requests=st.lists(admin_requests(), min_size=1, max_size=6))
async def test_admin_api_answers_bad_requests_with_4xx_and_only_tightens(
    admin_daemon: Any, requests: list[tuple[str, str, bytes | None, dict[str, str], bool]]
) -> None:
    import aiohttp

    from riskd.overrides import OverrideStore
    from tests.support import wait_until

    d, baseline = admin_daemon
    daemon = d.daemon
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        for method, path, body, headers, authorized in requests:
            COUNTS["admin requests"] += 1
            before = dict(daemon.overrides.overrides)
            status, answer = await _request(session, d.url + path, method, body, headers)
            assert status < 500, (method, path, body and body[:200], headers, status, answer)
            routed = isinstance(answer, dict)  # aiohttp's own 404/405/413 are plain text
            if status == 413:
                assert body is not None and len(body) > daemon.settings.server.max_body_bytes
            elif not routed:
                # no such route: an id with a slash, or a method the route does not take
                assert (status, method) in ((404, "DELETE"), (405, "PUT"), (405, "PATCH"))
            elif not authorized:
                assert status == 401, (status, answer)
            elif path == "/v1/admin/override":
                assert status in (200, 400, 403, 404), (status, answer)
            elif method == "DELETE":
                assert status in (200, 404), (status, answer)
            else:
                assert status == 200, (path, status, answer)
            if status != 200:
                assert daemon.overrides.overrides == before  # refused: no effect
                assert not routed or answer["error"]
            if status == 200 and path == "/v1/admin/override":
                assert answer["override"] is None or answer["override"]["loosen"] is False
        # Nothing stored can loosen, the file reads back as what is in force, and the
        # daemon still publishes every market no looser than before any override.
        assert all(not o.loosen for o in daemon.overrides.overrides.values())
        stored = OverrideStore(daemon.settings.state.dir).load()
        assert stored == daemon.overrides.overrides
        for _ in range(2):  # the second cycle after the last request started after it
            mark = daemon.pipeline.last_cycle

            async def cycled(mark: float = mark) -> bool:
                return bool(daemon.pipeline.last_cycle != mark)

            await wait_until(cycled, what="a cycle")
        status, doc = await _request(session, d.url + "/v1/params", "GET", None, {})
        assert status == 200
        published = _sides(doc)
        assert published.keys() == baseline.keys()
        for key, lev in published.items():
            assert lev <= baseline[key] + 1e-9, (key, lev, baseline[key])
            market = daemon.overrides.overrides.get(key[0])
            if market is not None and market.mode == "halted":
                assert lev == 1.0
    assert d.task is not None and not d.task.done()


# --- the reference receiver ------------------------------------------------------------

RECEIVER_SECRET = b"receiver-fuzz-secret"
NOW = 1_770_921_600  # the receivers' fixed wall clock


def _entry(market: str, version: int, valid_until: float) -> dict[str, Any]:
    from riskd.timeutil import iso

    return {
        "market": market,
        "version": version,
        "mode": "normal",
        "max_leverage": {"long": 3.0, "short": 3.0},
        "initial_margin": {"long": 0.2, "short": 0.13},
        "maintenance_margin": {"long": 0.1, "short": 0.07},
        "fee_rate_hourly": {"long": 0.0004, "short": 0.0004},
        "max_slippage": 0.02,
        "oi_cap": None,
        "valid_until": iso(valid_until),
        "reasons": [],
        "inputs": {"p": 0.6, "tau_s": 86400.0},
    }


def _batch(instance: str, seq: int, generated: float, params: list[Any]) -> dict[str, Any]:
    from riskd.timeutil import iso

    return {
        "source": "riskd",
        "instance": instance,
        "seq": seq,
        "generated_at": iso(generated),
        "params": params,
    }


BATCH_SEEDS: list[Any] = [
    _batch("fz", 1, NOW, [_entry("m1", 1, NOW + 60), _entry("m2", 3, NOW + 60)]),
    _batch("fz", 2, NOW - 30, [_entry("m1", 2, NOW - 1)]),  # in force, then expired
    _batch("fz", 3, NOW + 10, []),
]
BATCH_KEYS = _keys(BATCH_SEEDS) + ["long", "short", "p"]
TIMESTAMPS = [
    str(NOW),
    str(NOW - 600),
    str(NOW + 600),
    str(NOW - 299),
    "",
    "abc",
    "-5",
    "0",
    f" {NOW}",
    f"{NOW}.0",
    "\u00b2",
    "\u0661\u0667\u0667\u0660",
    "9" * 30,
    "1" + "0" * 400,
    "9" * 5000,
]
RECEIVER_STATUSES = {200, 400, 401, 403, 409, 413, 415}


@st.composite
def receiver_posts(draw: st.DrawFn, instance: str) -> tuple[bytes, dict[str, str], bool]:
    """(body, headers, signed): a batch signed right or wrong, its headers mutated."""
    seeds = [{**s, "instance": instance} for s in BATCH_SEEDS]
    body = draw(json_bodies(seeds, BATCH_KEYS))
    ts = draw(st.sampled_from(TIMESTAMPS[:4]) | st.sampled_from(TIMESTAMPS))
    headers = {"Content-Type": "application/json", "X-Riskd-Timestamp": ts}
    signed = draw(
        st.sampled_from(["right", "right", "right", "wrong_secret", "flipped", "garbage", "none"])
    )
    mac = hmac.new(RECEIVER_SECRET, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    if signed == "wrong_secret":
        mac = hmac.new(b"other", ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    elif signed == "flipped":
        at = draw(st.integers(0, len(mac) - 1))
        mac = mac[:at] + ("0" if mac[at] != "0" else "1") + mac[at + 1 :]
    elif signed == "garbage":
        mac = draw(st.from_regex(r"\A[ -~]{0,70}\Z"))
    if signed != "none":
        headers["X-Riskd-Signature"] = mac if signed == "garbage" else f"sha256={mac}"
    try:
        doc = json.loads(body)
        key = f"{doc['instance']}:{doc['seq']}"
    except Exception:  # not a batch: any key will do
        key = f"{instance}:1"
    if not (key.isascii() and key.isprintable()):
        key = f"{instance}:1"  # the client refuses to send control characters
    key = draw(st.sampled_from([key, key, key, f"{instance}:0", ""]))
    if key:
        headers["Idempotency-Key"] = key
    ctype = draw(st.sampled_from(["application/json"] * 6 + CONTENT_TYPES))
    if ctype is None:
        del headers["Content-Type"]
    else:
        headers["Content-Type"] = ctype
    return body, headers, signed == "right"


def _valid_entry(entry: Any) -> bool:
    from riskd.timeutil import parse_iso

    try:
        ok = math.isfinite(parse_iso(entry["valid_until"]))
    except (KeyError, TypeError, ValueError, OverflowError):
        return False
    return ok and isinstance(entry["market"], str) and type(entry["version"]) is int


@pytest.fixture
async def receivers() -> Any:
    """A wall-clock and a feed-clock receiver on 127.0.0.1, shared by a test's examples."""
    from aiohttp import web

    from riskd.receiver import STATE, ReceiverConfig, make_app

    runners, out = [], []
    for clock in ("wall", "feed"):
        cfg = ReceiverConfig(
            secret=RECEIVER_SECRET, max_skew_s=300.0, clock=clock, max_body_bytes=1024 * 1024
        )
        app = make_app(cfg, wall_clock=lambda: float(NOW))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        out.append((f"http://127.0.0.1:{runner.addresses[0][1]}", app[STATE]))
    yield out
    for runner in runners:
        await runner.cleanup()


@budget(60)
@given(data=st.data())
async def test_receiver_answers_bad_batches_with_4xx_and_stores_only_valid_sets(
    receivers: Any, data: st.DataObject
) -> None:
    import aiohttp

    COUNTS["receiver examples"] += 1
    instance = f"fz{data.draw(st.integers(0, 2**48))}"  # most often a fresh seq space
    posts = data.draw(st.lists(receiver_posts(instance), min_size=1, max_size=6))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        for body, headers, signed in posts:
            for url, state in receivers:
                COUNTS["receiver posts"] += 1
                before = (copy.deepcopy(state.current), dict(state.last_seq))
                status, answer = await _request(
                    session, url + "/risk-params", "POST", body, headers
                )
                assert status in RECEIVER_STATUSES, (body[:300], headers, status, answer)
                if status != 200:
                    assert (state.current, state.last_seq) == before  # refused: no effect
                    continue
                assert signed and abs(NOW - int(headers["X-Riskd-Timestamp"])) <= 300
                assert answer["ok"] is True
                assert all(_valid_entry(e) for e in state.current.values())
                assert all(type(s) is int for s in state.last_seq.values())
        for url, _state in receivers:
            for path in ("/params", "/stats", "/healthz"):
                status, _ = await _request(session, url + path, "GET", None, {})
                assert status == 200, (url, path)
            for market in _state.current:
                status, _ = await _request(
                    session, url + "/params/" + market.replace("/", "%2F"), "GET", None, {}
                )
                assert status in (200, 404)


# --- what the fuzzing found (regressions) -------------------------------------------


@pytest.mark.parametrize("codec", ["polymarket", "kalshi"])
def test_an_event_type_that_is_not_a_string_is_a_bad_message(codec: str) -> None:
    """Was a TypeError (unhashable list) out of decode: fatal for the feed and the daemon."""
    if codec == "polymarket":
        out = _pm_codec().decode(json.dumps({"event_type": [], "asset_id": "x"}), RECEIVED)
    else:
        out = _kalshi_codec().decode(json.dumps({"type": {"a": 1}, "msg": {}}), RECEIVED)
    assert out.rejected == ["bad_message"] and out.ticks == []


def test_a_codec_that_raises_costs_one_frame_not_the_feed() -> None:
    from riskd.feeds.connection import WebsocketFeed
    from riskd.feeds.settings import ConnectionSettings

    class Broken:
        def on_connect(self) -> list[str]:
            return []

        def decode(self, frame: str | bytes, received: float) -> Decoded:
            raise KeyError("a bug")

    feed = WebsocketFeed("x", "ws://127.0.0.1:1", Broken(), ConnectionSettings())
    assert feed._decode("{}").rejected == ["decode_error"]
    assert feed._take(feed._decode("{}")) == []
    assert feed.rejected() == {"decode_error": 1}


def test_a_corrupt_gzip_tape_is_a_tape_error(tmp_path: Path) -> None:
    """Was zlib.error: a traceback and exit 1 instead of a message and exit 2."""
    data = bytearray(gzip.compress(b"ts,market,price\n" + b"1700000000,a,0.5\n" * 1000))
    data[30] ^= 0xFF
    path = tmp_path / "t.csv.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(TapeError, match="cannot read tape"):
        list(Tape(path))


def test_tape_rejects_absurd_depth_and_time_zero(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        "ts,market,price,bid,ask,depth\n"
        "1700000000,a,0.5,0.4,0.6,1e13\n"
        "0,a,0.5,,,\n"
        "-0.0,a,0.5,,,\n"
        "1700000001,a,0.5,0.4,0.6,1e12\n"
    )
    tape = Tape(path)
    assert [t.ts for t in tape] == [1700000001.0]
    assert tape.reports[0].by_reason == {"bad_depth": 1, "bad_ts": 2}


@pytest.mark.parametrize(
    ("text", "env"),
    [
        (b"[feed]\nspeed = 1.0\n# \xff\xfe not UTF-8\n", {}),
        (b"", {"RISKD_FEED__KIND": "[1,"}),
        (b"[limits]\nmax_leverage = inf\n", {}),
        (b"[model]\nk_liquidity = nan\n", {}),
        (b"[feed.polymarket]\nread_timeout_s = inf\n", {}),
        (b"[feed]\nmax_future_s = 0\n", {}),
    ],
)
def test_config_errors_found_by_fuzzing(tmp_path: Path, text: bytes, env: dict[str, str]) -> None:
    """Were UnicodeDecodeError and pydantic-settings' SettingsError (tracebacks, not
    messages; SIGHUP would not have said why), and inf accepted as a limit."""
    path = tmp_path / "riskd.toml"
    path.write_bytes(text)
    with mock.patch.dict(os.environ, env), pytest.raises(ConfigError):
        load_settings(path)


def test_books_keep_a_bounded_number_of_levels() -> None:
    """A venue sending endless distinct prices: the book keeps the best MAX_LEVELS."""
    from riskd.feeds.codec import MAX_LEVELS

    codec = _pm_codec()
    token = PM_DOCS[0]["asset_id"]
    levels = [{"price": f"{0.2 + i * 1e-6:.7f}", "size": "1"} for i in range(MAX_LEVELS + 500)]
    book = {
        "event_type": "book",
        "asset_id": token,
        "timestamp": str(int(RECEIVED * 1000)),
        "bids": levels,
        "asks": [{"price": "0.9", "size": "1"}],
    }
    (tick,) = codec.decode(json.dumps(book), RECEIVED).ticks
    assert len(codec.books[token].bids) == MAX_LEVELS
    assert tick.bid == pytest.approx(0.2 + (MAX_LEVELS + 499) * 1e-6)  # the best stays
    low = {
        "event_type": "price_change",
        "asset_id": token,
        "price": "0.01",
        "side": "BUY",
        "size": "5",
        "timestamp": str(int(RECEIVED * 1000)),
    }
    codec.decode(json.dumps(low), RECEIVED)  # worse than every level kept: ignored
    assert 0.01 not in codec.books[token].bids
    assert len(codec.books[token].bids) == MAX_LEVELS


@budget(300)
@given(
    text=st.one_of(
        st.from_regex(r"\A[ ]?-?[01]?\.?[0-9]{0,6}(e-?[0-9])?[ ]?\Z"), st.text(max_size=12)
    )
)
def test_interned_prices_parse_exactly_like_the_first_time(text: str) -> None:
    """probability() remembers each price text it parsed: the remembered answer is the
    parse itself (value or rejection), and 1 - p is the rounded complement."""
    from riskd.feeds import codec as shared

    COUNTS["price texts"] += 1

    def fresh() -> float:
        x = float(text)
        if not (x - x == 0.0 and 0.0 <= x <= 1.0):
            raise ValueError(text)
        return x

    try:
        expected = fresh()
    except ValueError:
        for _ in range(2):
            with pytest.raises(shared.BadMessage):
                shared.probability(text)
        return
    assert shared.probability(text) == expected == shared.probability(text)
    assert shared.complement(expected) == round(1.0 - expected, 10)
    assert shared.complement(expected) == shared.complement(expected)


def test_interned_prices_are_bounded() -> None:
    """A venue inventing prices cannot grow the interning tables beyond their cap."""
    from riskd.feeds import codec as shared

    with (
        mock.patch.object(shared, "MAX_INTERNED", 100),
        mock.patch.dict(shared._prices, clear=True),
        mock.patch.dict(shared._floats, clear=True),
        mock.patch.dict(shared._complements, clear=True),
    ):
        for i in range(1000):
            p = shared.probability(f"0.{i:06d}")
            assert p == i / 1e6
            assert shared.complement(p) == round(1.0 - p, 10)
        assert max(map(len, (shared._prices, shared._floats, shared._complements))) <= 100


def test_kalshi_remembers_a_bounded_number_of_subscriptions() -> None:
    from riskd.feeds.kalshi.codec import MAX_SUBSCRIPTIONS

    codec = _kalshi_codec()
    for sid in range(5 * MAX_SUBSCRIPTIONS):
        codec.decode(
            json.dumps({"type": "subscribed", "msg": {"channel": "ticker", "sid": 1000 + sid}}),
            RECEIVED,
        )
    assert len(codec.subscriptions) <= MAX_SUBSCRIPTIONS


def test_the_generic_feed_forgets_markets_beyond_its_cap() -> None:
    """Its market ids come from the messages: the tick maker's memory is bounded."""
    codec = WebsocketCodec(WS_CONFIGS[0][0])
    codec.maker.max_markets = 1000
    frame = [{"market": f"id-{i}", "price": 0.5, "ts": RECEIVED * 1000} for i in range(5000)]
    assert len(codec.decode(json.dumps(frame), RECEIVED).ticks) == 5000
    assert len(codec.maker._last_ts) == 1000 and len(codec.maker._last_quote) == 1000


def test_tape_rejects_json_integers_beyond_any_float(tmp_path: Path) -> None:
    """Found by `make fuzz` (20,000 examples): OverflowError out of the JSONL reader."""
    path = tmp_path / "t.jsonl"
    huge = "1" + "0" * 400
    path.write_text(
        f'{{"ts": {huge}, "market": "a", "price": 0.5}}\n'
        f'{{"ts": 1700000000, "market": "a", "price": {huge}}}\n'
        f'{{"ts": 1700000000, "market": "a", "price": 0.5, "depth": {huge}}}\n'
        '{"ts": 1700000001, "market": "a", "price": 0.5}\n'
    )
    tape = Tape(path)
    assert [t.ts for t in tape] == [1700000001.0]
    assert tape.reports[0].by_reason == {"bad_ts": 1, "bad_price": 1, "bad_depth": 1}
    from riskd.feeds.codec import BadMessage, number

    with pytest.raises(BadMessage):
        number(10**400)


def test_a_subnormal_depth_is_the_longest_horizon_without_a_warning() -> None:
    """Found by the engine fuzz: depth 2.2e-309 overflowed the depth ratio, a numpy
    RuntimeWarning in the model (an error under the test settings)."""
    engine = Engine(Settings(), MARKETS, discover=False)
    ticks = [Tick("a", BASE_T, 0.0)] * 5 + [Tick("a", BASE_T, 0.0, depth=2.225073858507203e-309)]
    assert engine.ingest(ticks).accepted == 6
    for entry in engine.cycle(BASE_T + 1).entries:
        assert all(math.isfinite(v) and v >= 1 for v in entry["max_leverage"].values())


@pytest.mark.parametrize(
    "body",
    [
        {"market": "m", "max_leverage": 10**400},  # was OverflowError out of math.isfinite
        {"market": "m", "mode": "halted", "note": "\ud800"},  # was orjson's TypeError at audit
        {"market": "\udfff", "mode": "halted"},
    ],
)
def test_override_requests_the_audit_trail_cannot_hold_are_refused(body: dict[str, Any]) -> None:
    """Both were 500s from the admin API (found while writing its fuzz test)."""
    from riskd.overrides import OverrideError, parse_request

    with pytest.raises(OverrideError):
        parse_request(json.loads(json.dumps(body)))


async def test_admin_api_refuses_bodies_it_cannot_parse(admin_daemon: Any) -> None:
    """Found by the admin fuzz: an unknown charset (LookupError) and nesting deeper than
    the parser follows (RecursionError) were 500s; now 400, and nothing changes."""
    import aiohttp

    d, _ = admin_daemon
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    bodies = [
        (
            b'{"market": "%s", "mode": "halted"}' % POLY.encode(),
            "application/json; charset=no-such-charset",
        ),
        (b"[" * 100_000, "application/json"),
        (b'{"a":' * 100_000, "application/json"),
        (
            b'{"market": "%s", "max_leverage": 1%s}' % (POLY.encode(), b"0" * 400),
            "application/json",
        ),
        (
            b'{"market": "%s", "mode": "halted", "note": "\\ud800"}' % POLY.encode(),
            "application/json",
        ),
    ]
    async with aiohttp.ClientSession() as session:
        for body, ctype in bodies:
            status, answer = await _request(
                session, d.url + "/v1/admin/override", "POST", body, {**auth, "Content-Type": ctype}
            )
            assert status == 400 and answer["error"], (body[:60], status, answer)
    assert d.daemon.overrides.overrides == {}


def _signed_receive(state: Any, doc: dict[str, Any], now: float = NOW) -> Any:
    from riskd.receiver import signature

    raw = json.dumps(doc).encode()
    ts = str(int(now))
    return state.receive(
        {
            "X-Riskd-Timestamp": ts,
            "Idempotency-Key": f"{doc['instance']}:{doc['seq']}",
            "X-Riskd-Signature": signature(RECEIVER_SECRET, ts, raw),
        },
        raw,
        now,
    )


def test_receiver_refuses_what_it_could_not_serve_back() -> None:
    """Signed but invalid batches that were accepted, or broke GET /params (a 500 on
    every call after): a timestamp of 401 digits or "²" (int() raised), `true` as seq or
    version, a generated_at in year 9999 (the feed clock could not be printed), and
    `inputs` that is not an object (the expired-set fallback raised)."""
    from riskd.receiver import ReceiverConfig, ReceiverState, signature

    state = ReceiverState(ReceiverConfig(secret=RECEIVER_SECRET, clock="feed"))
    raw = json.dumps(_batch("i", 1, NOW, [])).encode()
    for ts in ("1" + "0" * 400, "\u00b2", "\u0661\u0667"):
        verdict = state.receive(
            {
                "X-Riskd-Timestamp": ts,
                "Idempotency-Key": "i:1",
                "X-Riskd-Signature": signature(RECEIVER_SECRET, ts, raw),
            },
            raw,
            NOW,
        )
        assert verdict.status == 401 and verdict.body["reason"] == "bad_timestamp"
    bad = [
        _batch("i", True, NOW, []),
        _batch("i", 2, NOW, [_entry("m", 1, NOW + 60)]),
        {**_batch("i", 3, NOW, []), "generated_at": "9999-12-31T23:59:59-01:00"},
    ]
    bad[1]["params"][0]["version"] = False
    for doc in bad:
        assert _signed_receive(state, doc).status == 400
    assert state.current == {} and state.last_seq == {}
    expired = _entry("m", 1, NOW - 60)
    expired["inputs"] = [1]
    assert _signed_receive(state, _batch("i", 4, NOW, [expired])).status == 200
    (entry,) = state.params(NOW)["params"]
    assert entry["source"] == "safe" and "initial_margin" not in entry
