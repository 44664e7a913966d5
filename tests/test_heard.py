"""Markets heard (freshness, docs/model.md section 5) travel from the Polymarket codec
as rows of its market ids (`HeardRows`) when its store is compiled, and reach the
engine report by report: the last report naming a market decides its session and
time, as a dict updated report by report would."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from riskd.config import Settings
from riskd.engine import Engine
from riskd.feeds.base import HeardRows, Liveness
from riskd.feeds.polymarket import store as stores
from riskd.feeds.polymarket.codec import Binding, PolymarketCodec
from riskd.markets import Market

IDS = [f"m{k}" for k in range(6)]
T0 = 1_770_921_600.0


def _engine() -> Engine:
    markets = {m: Market(m, T0 + 86_400, T0 + 86_400) for m in IDS}
    return Engine(Settings(), markets, discover=False)


# A report: (session, time offset, markets as positions in NAMES, named or as rows).
NAMES = [*IDS, "not-followed"]
report = st.tuples(
    st.integers(0, 3),
    st.floats(0, 100),
    st.lists(st.integers(0, len(NAMES) - 1), max_size=8),
    st.booleans(),
)


@given(
    books=st.dictionaries(st.sampled_from(IDS), st.integers(0, 3)),
    reports=st.lists(report, min_size=1, max_size=8),
)
def test_the_last_report_of_a_market_decides_as_a_dict_would(
    books: dict[str, int], reports: list[tuple[int, float, list[int], bool]]
) -> None:
    engine = _engine()
    engine.confirm(
        Liveness(books={m: (s, T0) for m, s in books.items()}, sessions={s: T0 for s in range(4)})
    )
    link, booked, heard_t = engine.link.copy(), engine.booked.copy(), engine.heard_t.copy()
    heard = []
    for session, dt, markets, as_rows in reports:
        names = [NAMES[k] for k in markets]
        if as_rows:
            rows = HeardRows(NAMES, np.array(markets, np.int32))
            assert list(rows) == names
            heard.append((session, T0 + dt, rows))
        else:
            heard.append((session, T0 + dt, names))
    engine.confirm(Liveness(heard=heard))
    # The reference: a dict updated report by report, then each market once.
    last: dict[str, tuple[int, float]] = {}
    for session, t, markets in heard:
        last.update(dict.fromkeys(markets, (session, t)))
    for market, (session, t) in last.items():
        if market not in engine.index:
            continue
        i = engine.index[market]
        if link[i] != session:
            booked[i] = False
        link[i] = session
        heard_t[i] = np.fmax(heard_t[i], t)
    np.testing.assert_array_equal(engine.link, link)
    np.testing.assert_array_equal(engine.booked, booked)
    np.testing.assert_array_equal(engine.heard_t, heard_t)


def _change(token: str, k: int) -> dict[str, str]:
    bid, ask = f"0.{40 + k:02d}", f"0.{41 + k:02d}"
    change = {"asset_id": token, "price": bid, "size": "10", "side": "BUY"}
    return change | {"best_bid": bid, "best_ask": ask}


def test_a_batch_names_its_markets_heard_as_its_frames_do_one_by_one() -> None:
    """Frames the compiled store reads whole, a trade the codec reads its own way, and a
    frame of unknown tokens: the batch's rows name the markets the frames name."""
    assets = {"111": Binding("m1", no=False), "222": Binding("m2", no=False)}
    ts = str(int(T0 * 1000))
    frames = [
        json.dumps({"event_type": "price_change", "timestamp": ts, "price_changes": [c]})
        for c in (_change("111", 0), _change("222", 1), _change("333", 2))
    ]
    trade = {"event_type": "last_trade_price", "asset_id": "222", "price": "0.5"}
    frames.insert(2, json.dumps(trade | {"timestamp": ts, "side": "BUY", "size": "1"}))
    frames.append(frames[0])
    batched, single = PolymarketCodec(dict(assets)), PolymarketCodec(dict(assets))
    assert isinstance(batched.store, stores.CStore), "the compiled store is not built"
    out = batched.decode_batch([f.encode() for f in frames], T0, lambda exc: None)
    assert isinstance(out.heard, HeardRows)
    one_by_one = [m for f in frames for m in single.decode(f.encode(), T0).heard]
    assert list(out.heard) == one_by_one == ["m1", "m2", "m2", "m1"]
