"""Ticks as columns (riskd/ticks.py TickColumns, from the compiled Polymarket store)
against the same ticks as Tick objects: the engine's boundary must keep and reject
exactly the same ticks for the same reasons, and apply the same prices."""

from __future__ import annotations

import math
import os
from dataclasses import fields

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from riskd.config import Settings
from riskd.engine import Engine
from riskd.feeds.base import Tick
from riskd.markets import Market
from riskd.ticks import FAULTS, OUT_OF_ORDER, TickColumns, take_columns, tick_fault

FUZZ = int(os.environ.get("RISKD_FUZZ_EXAMPLES", "0"))
T0 = 1_770_000_000.0
# The feed's ids: "" is no market, "zz" is not listed.
IDS = ["a", "b", "c", "", "zz"]
MARKETS = {m: Market(m, T0 + 86_400, T0 + 86_400) for m in ("a", "b", "c")}

maybe = st.one_of(st.none(), st.sampled_from([0.0, 0.4, 0.41, 0.5, 0.6, 1.0, -0.1, 1.5, math.inf]))
tick = st.builds(
    lambda m, dt, p, b, a, d: Tick(IDS[m], T0 + dt, p, b, a, d),
    st.integers(0, len(IDS) - 1),
    st.sampled_from([0.0, 1.0, 2.0, -5.0, 0.5, 10.0, math.nan, -T0, 1e12]),
    st.sampled_from([0.5, 0.45, 0.0, 1.0, -0.01, 1.01, math.nan]),
    maybe,
    maybe,
    st.one_of(st.none(), st.sampled_from([0.0, 100.0, 2e12, -1.0])),
)


def columns(ticks: list[Tick]) -> TickColumns:
    def col(name: str) -> np.ndarray:
        values = [getattr(t, name) for t in ticks]
        return np.array([math.nan if v is None else v for v in values], np.float64)

    market = np.array([IDS.index(t.market) for t in ticks], np.int32)
    return TickColumns(IDS, market, col("ts"), col("price"), col("bid"), col("ask"), col("depth"))


def test_columns_read_back_as_the_ticks_they_hold() -> None:
    ticks = [Tick("a", T0, 0.5, 0.49, 0.51, 10.0), Tick("b", T0 + 1, 0.4)]
    cols = columns(ticks)
    assert cols == ticks and list(cols) == ticks and cols[-1] == ticks[-1] and len(cols) == 2


@settings(max_examples=FUZZ or 300, derandomize=not FUZZ, deadline=None)
@given(st.lists(tick, max_size=20))
def test_the_compiled_check_is_tick_fault(ticks: list[Tick]) -> None:
    """Each tick's code is tick_fault's fault; past those checks, an unlisted market
    is unknown, and a market's tick before its newest taken is out of order."""
    cols = columns(ticks)
    latest = T0 + 5.0
    rows_of = np.array([-1 if m == "zz" else -2 if not m else k for k, m in enumerate(IDS)])
    nothing = np.full(len(IDS), np.nan)  # nothing applied yet
    m, *_, code = take_columns(
        cols.market, cols.ts, cols.price, cols.bid, cols.ask, cols.depth,
        rows_of, nothing.copy(), nothing, latest,
    )  # fmt: skip
    newest: dict[str, float] = {}
    for t, c in zip(ticks, code.tolist(), strict=True):
        fault = tick_fault(t, latest)
        if fault is not None:
            assert c and FAULTS[c - 1] == fault, t
        elif t.market == "zz":
            assert c == len(FAULTS) + 1, t
        elif t.ts < newest.get(t.market, -math.inf):
            assert c == OUT_OF_ORDER, t
        else:
            assert c == 0, t
            newest[t.market] = t.ts
    assert m == int(np.count_nonzero(code == 0))


@settings(max_examples=FUZZ or 60, derandomize=not FUZZ, deadline=None)
@given(st.lists(st.lists(tick, max_size=12), min_size=1, max_size=4), st.booleans())
def test_the_engine_takes_columns_as_it_takes_ticks(
    batches: list[list[Tick]], discover: bool
) -> None:
    """Batch after batch (markets repeated within and across batches, out of order
    against what is pending and what was applied), then a flush, then more."""
    by_ticks = Engine(Settings(), dict(MARKETS), discover=discover)
    by_columns = Engine(Settings(), dict(MARKETS), discover=discover)
    for k, batch in enumerate(batches):
        a = by_ticks.enqueue(batch, T0)
        b = by_columns.enqueue(columns(batch), T0)
        assert (a.accepted, a.rejected) == (b.accepted, b.rejected), batch
        if k % 2:
            assert by_ticks.flush() == by_columns.flush()
    assert by_ticks.flush() == by_columns.flush()
    assert by_ticks.ids == by_columns.ids
    for f in fields(by_ticks.est):
        a, b = getattr(by_ticks.est, f.name), getattr(by_columns.est, f.name)
        np.testing.assert_array_equal(a, b, err_msg=f.name)
