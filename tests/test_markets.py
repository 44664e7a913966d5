from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from riskd.config import Settings
from riskd.engine import Engine
from riskd.markets import (
    RELATIONS,
    Market,
    MarketsError,
    MarketTable,
    load_markets,
    parse_markets,
)

TAPES = Path(__file__).resolve().parent.parent / "data" / "tapes"

T0 = 1667952000.0  # 2022-11-09T00:00:00Z


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def entry(**kw: object) -> dict[str, object]:
    return {"id": "m", "resolves_at": "2022-11-09T00:00:00Z", **kw}


def test_shipped_midterm_markets() -> None:
    markets = load_markets(TAPES / "polymarket_midterms_2022" / "markets.json")
    assert len(markets) == 39
    pa = markets["pm22-pennsylvania-senate"]
    assert pa.id == "pm22-pennsylvania-senate"
    assert pa.event_at == T0  # 2022-11-09T00:00:00Z
    assert pa.resolves_at > pa.event_at
    assert pa.outcome == 1 and pa.tick_size == 0.0001
    assert markets["pm22-georgia-senate"].outcome is None  # runoff
    assert all(m.max_leverage is None for m in markets.values())  # `rows` etc. ignored


def test_shipped_fed_markets() -> None:
    markets = load_markets(TAPES / "fed_dec2025" / "markets.json")
    assert set(markets) == {"fed-dec2025-nochange-poly", "fed-dec2025-nochange-kalshi"}
    k = markets["fed-dec2025-nochange-kalshi"]
    assert k.resolves_at == k.event_at == 1765393200.0  # 2025-12-10T19:00:00Z
    assert k.outcome == 0 and k.tick_size == 0.01


def test_toml_file_with_limits_both_ways(tmp_path: Path) -> None:
    p = write(
        tmp_path / "markets.toml",
        """
[[markets]]
id = "top"
title = "Top-level overrides"
resolves_at = "2022-11-10T00:00:00Z"
event_at = 2022-11-09T00:00:00Z          # a native TOML date-time
outcome = 1
tick_size = 0.01
max_leverage = 5
max_slippage = 0.02
fee_floor_hourly = 0.0

[[markets]]
id = "nested"
resolves_at = "2022-11-09T02:00:00+02:00"
kalshi_ticker = "KXSENATEPA-22"
polymarket_yes_token = "123"
polymarket_no_token = "456"
rows = 41                                 # informational, ignored

[markets.limits]
max_leverage = 3.5
max_slippage = 0.5
fee_floor_hourly = 1e-5
""",
    )
    markets = load_markets(p)
    assert list(markets) == ["top", "nested"]
    assert markets["top"] == Market(
        id="top",
        resolves_at=T0 + 86400,
        event_at=T0,
        outcome=1,
        tick_size=0.01,
        title="Top-level overrides",
        max_leverage=5.0,
        max_slippage=0.02,
        fee_floor_hourly=0.0,
        scheduled=True,  # event_at given: the decisive event has a date
    )
    n = markets["nested"]
    assert n.resolves_at == T0 and n.event_at == T0  # event_at defaults to resolves_at
    assert not n.scheduled  # a deadline: decisive news may come any time before it
    assert (n.max_leverage, n.max_slippage, n.fee_floor_hourly) == (3.5, 0.5, 1e-5)
    assert (n.kalshi_ticker, n.polymarket_yes_token, n.polymarket_no_token) == (
        "KXSENATEPA-22", "123", "456",
    )  # fmt: skip
    assert n.outcome is None and n.tick_size is None and n.title == ""


def test_json_wrapped_and_bare_list(tmp_path: Path) -> None:
    entries = [entry(id="a", outcome=0, limits={"max_leverage": 2}), entry(id="b", outcome=None)]
    wrapped = load_markets(write(tmp_path / "w.json", json.dumps({"markets": entries})))
    bare = load_markets(write(tmp_path / "b.json", json.dumps(entries)))
    assert wrapped == bare
    assert wrapped["a"].outcome == 0 and wrapped["a"].max_leverage == 2.0
    assert wrapped["b"].outcome is None and wrapped["b"].event_at == T0


def test_same_limit_in_both_places_must_agree() -> None:
    same = parse_markets([entry(max_leverage=4, limits={"max_leverage": 4.0})])
    assert same["m"].max_leverage == 4.0
    with pytest.raises(MarketsError, match="'max_leverage': given both"):
        parse_markets([entry(max_leverage=4, limits={"max_leverage": 3})])


@pytest.mark.parametrize("bad", [2, -1, 0.5, True, "1", "yes"])
def test_bad_outcome_names_the_key(bad: object) -> None:
    with pytest.raises(MarketsError) as exc:
        parse_markets([entry(), entry(id="x", outcome=bad)], "cfg.toml")
    msg = str(exc.value)
    assert msg.startswith("cfg.toml: markets[1] (id 'x'): key 'outcome'")
    assert "1, 0 or null" in msg


@pytest.mark.parametrize(
    ("key", "value", "expect"),
    [
        ("resolves_at", "2022-11-09T00:00:00", "no UTC offset"),
        ("resolves_at", "tomorrow", "not an ISO 8601"),
        ("resolves_at", 1667952000, "ISO 8601"),
        ("event_at", "2022-13-01T00:00:00Z", "not an ISO 8601"),
        ("event_at", None, None),  # null event_at is the same as absent
    ],
)
def test_bad_times_name_the_key(key: str, value: object, expect: str | None) -> None:
    if expect is None:
        assert parse_markets([entry(**{key: value})])["m"].event_at == T0
        return
    with pytest.raises(MarketsError, match=rf"markets\[0\] \(id 'm'\): key '{key}': .*{expect}"):
        parse_markets([entry(**{key: value})])


def test_toml_date_without_time_or_offset_is_rejected(tmp_path: Path) -> None:
    p = write(tmp_path / "m.toml", '[[markets]]\nid = "a"\nresolves_at = 2022-11-09\n')
    with pytest.raises(MarketsError, match=r"m\.toml: markets\[0\] \(id 'a'\): key 'resolves_at'"):
        load_markets(p)
    p = write(tmp_path / "n.toml", '[[markets]]\nid = "a"\nresolves_at = 2022-11-09T00:00:00\n')
    with pytest.raises(MarketsError, match="no UTC offset"):
        load_markets(p)


def test_duplicate_id_names_both_entries(tmp_path: Path) -> None:
    p = write(tmp_path / "m.json", json.dumps([entry(id="a"), entry(id="b"), entry(id="a")]))
    with pytest.raises(MarketsError) as exc:
        load_markets(p)
    assert str(exc.value) == (
        f"{p}: markets[2] (id 'a'): key 'id': duplicate id 'a' (first at markets[0])"
    )


@pytest.mark.parametrize("ident", [None, "", "   ", 7])
def test_missing_or_bad_id(ident: object) -> None:
    raw = {"resolves_at": "2022-11-09T00:00:00Z"}
    if ident is not None:
        raw["id"] = ident  # type: ignore[assignment]
    with pytest.raises(MarketsError, match=r"<inline>: markets\[0\].*key 'id'"):
        parse_markets([raw])


def test_missing_resolves_at() -> None:
    with pytest.raises(MarketsError, match="key 'resolves_at': required key is missing"):
        parse_markets([{"id": "a"}])


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({"max_leverage": 0.5}, "max_leverage"),
        ({"max_slippage": 1}, "max_slippage"),
        ({"max_slippage": 0}, "max_slippage"),
        ({"fee_floor_hourly": -1e-6}, "fee_floor_hourly"),
        ({"tick_size": 0}, "tick_size"),
        ({"tick_size": 1}, "tick_size"),
        ({"tick_size": "0.01"}, "tick_size"),
        ({"max_leverage": float("inf")}, "max_leverage"),
        ({"limits": {"max_leverage": 0.9}}, "limits.max_leverage"),
        ({"limits": {"max_leverag": 3}}, "limits.max_leverag"),  # typo in our own table
        ({"limits": 3}, "limits"),
        ({"kalshi_ticker": 5}, "kalshi_ticker"),
    ],
)
def test_out_of_range_values_name_the_key(kw: dict[str, object], key: str) -> None:
    with pytest.raises(MarketsError, match=rf"key '{key}'"):
        parse_markets([entry(**kw)])


def test_extra_keys_are_ignored_and_ids_are_stripped() -> None:
    markets = parse_markets([entry(id=" a ", rows=1725, notes="anything", title=None)])
    assert list(markets) == ["a"]
    assert markets["a"].title == ""


def test_file_level_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(MarketsError, match=r"m\.yaml: unknown markets file format"):
        load_markets(write(tmp_path / "m.yaml", "markets: []"))
    with pytest.raises(MarketsError, match=r"gone\.json: cannot read"):
        load_markets(tmp_path / "gone.json")
    with pytest.raises(MarketsError, match=r"bad\.json: invalid JSON: .*line 1"):
        load_markets(write(tmp_path / "bad.json", '{"markets": [}'))
    with pytest.raises(MarketsError, match=r"bad\.toml: invalid TOML"):
        load_markets(write(tmp_path / "bad.toml", "[[markets]\n"))
    with pytest.raises(MarketsError, match=r"none\.toml: no 'markets' list"):
        load_markets(write(tmp_path / "none.toml", 'title = "x"\n'))
    with pytest.raises(MarketsError, match=r"str\.json: key 'markets': expected a list"):
        load_markets(write(tmp_path / "str.json", '{"markets": "a"}'))
    with pytest.raises(MarketsError, match=r"item\.json: markets\[0\]: expected a table"):
        load_markets(write(tmp_path / "item.json", '["a"]'))
    assert issubclass(MarketsError, ValueError)


def test_market_is_frozen() -> None:
    m = parse_markets([entry()])["m"]
    with pytest.raises(AttributeError):
        m.outcome = 1  # type: ignore[misc]


def test_group_and_relation(tmp_path: Path) -> None:
    p = write(
        tmp_path / "m.toml",
        """
[[markets]]
id = "pa"
resolves_at = "2022-11-10T00:00:00Z"
group = " us-midterms-2022 "
relation = "same"

[[markets]]
id = "pa-no"
resolves_at = "2022-11-10T00:00:00Z"
group = "us-midterms-2022"
relation = "opposite"

[[markets]]
id = "ga"
resolves_at = "2022-11-10T00:00:00Z"
group = "us-midterms-2022"
relation = "independent"

[[markets]]
id = "alone"
resolves_at = "2022-11-10T00:00:00Z"
""",
    )
    markets = load_markets(p)
    assert [(m.group, m.relation) for m in markets.values()] == [
        ("us-midterms-2022", "same"), ("us-midterms-2022", "opposite"),
        ("us-midterms-2022", "independent"), (None, "independent"),
    ]  # fmt: skip
    assert parse_markets([entry(group=None, relation=None)])["m"].group is None


@pytest.mark.parametrize(
    ("kw", "expect"),
    [
        ({"group": "g"}, r"key 'relation': required with group 'g' \(one of same, opposite"),
        ({"relation": "same"}, "key 'relation': given without 'group'"),
        ({"group": "g", "relation": "up"}, "key 'relation': must be one of same, opposite"),
        ({"group": "g", "relation": 1}, "key 'relation': must be one of"),
        ({"group": "  ", "relation": "same"}, "key 'group': must not be blank"),
        ({"group": 3, "relation": "same"}, "key 'group': "),
    ],
)
def test_bad_group_or_relation_names_the_key(kw: dict[str, object], expect: str) -> None:
    with pytest.raises(MarketsError, match=rf"^m\.json: markets\[0\] \(id 'm'\): {expect}"):
        parse_markets([entry(**kw)], "m.json")


# --- MarketTable: the markets column by column ------------------------------------

TOKEN = "71321045679252212594626385532706912750332728571942532289631379312455583992563"

tokens = st.one_of(
    st.none(),
    st.just(TOKEN),
    st.integers(0, 2**256 - 1).map(str),
    st.integers(2**256, 10**78 - 1).map(str),  # a decimal number too large to pack
    st.sampled_from(["", "0", "007", "01", "abc", "\u0661\u0662", " 12"]),
)
floats = st.floats(allow_nan=True, allow_infinity=True)
maybe_floats = st.one_of(st.none(), floats, st.integers(-5, 5))


@st.composite
def markets(draw: st.DrawFn) -> list[Market]:
    ids = draw(st.lists(st.text(min_size=1, max_size=8), unique=True, max_size=12))
    return [
        Market(
            id=market_id,
            resolves_at=draw(st.one_of(floats, st.integers(0, 2**40))),
            event_at=draw(floats),
            outcome=draw(st.sampled_from([None, 0, 1, 2])),
            tick_size=draw(maybe_floats),
            title=draw(st.text(max_size=5)),
            polymarket_yes_token=draw(tokens),
            polymarket_no_token=draw(tokens),
            kalshi_ticker=draw(st.one_of(st.none(), st.text(max_size=6))),
            max_leverage=draw(maybe_floats),
            max_slippage=draw(maybe_floats),
            fee_floor_hourly=draw(maybe_floats),
            liquidation_notional=draw(maybe_floats),
            scheduled=draw(st.booleans()),
            group=draw(st.one_of(st.none(), st.text(max_size=4))),
            relation=draw(st.sampled_from(RELATIONS)),
        )
        for market_id in ids
    ]


def same(a: object, b: object) -> bool:
    """Equal and of one type, nan equal to nan."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


@given(markets())
@settings(max_examples=200, deadline=None)
def test_a_market_table_reads_every_market_back_as_given(given_markets: list[Market]) -> None:
    table = MarketTable(given_markets)
    assert list(table) == [m.id for m in given_markets] and len(table) == len(given_markets)
    names = [f.name for f in fields(Market)]
    for k, m in enumerate(given_markets):
        for back in (table[m.id], table.at(k), list(table.values())[k], dict(table.items())[m.id]):
            assert all(same(getattr(back, n), getattr(m, n)) for n in names), (m, back)
        assert m.id in table and table.get(m.id) is not None
    for n in names:
        assert all(map(same, table.column(n), [getattr(m, n) for m in given_markets]))
        assert table.present(n) == [bool(getattr(m, n)) for m in given_markets]
    assert "no such market" not in table and None not in table
    assert table.select([m.id for m in given_markets]) is table
    part = [m.id for m in given_markets[::2]]
    assert list(table.select(part)) == part


def test_a_market_table_refuses_an_id_twice() -> None:
    with pytest.raises(ValueError, match="duplicate market id 'm'"):
        MarketTable([Market("m", 1.0, 1.0), Market("m", 2.0, 2.0)])


def test_the_engine_reads_its_metadata_from_the_table() -> None:
    """The engine's per-market settings and `meta` are the same whether it is given a
    dict of Markets or a table; markets added later (a venue's listing, discovery)
    follow them."""
    given_markets = load_markets(TAPES / "polymarket_midterms_2022" / "markets.json")
    first = next(iter(given_markets.values()))
    given_markets[first.id] = dataclasses.replace(
        first, max_leverage=3.0, max_slippage=0.02, fee_floor_hourly=0.0, liquidation_notional=5.0
    )
    config = Settings()
    from_dict = Engine(config, given_markets, discover=True)
    from_table = Engine(config, MarketTable(given_markets.values()), discover=True)
    listed = Market("listed", T0, T0, tick_size=0.05, max_leverage=2.0, scheduled=True)
    for engine in (from_dict, from_table):
        engine.add_market("listed", listed)
        engine.add_market("discovered", None)
        assert list(engine.meta) == [*given_markets.values(), listed, None]
        assert engine.meta[-2] == listed and engine.meta[0].max_leverage == 3.0
    for name in ("event_t", "resolve_t", "max_leverage", "max_slippage", "fee_floor", "notional"):
        assert np.array_equal(getattr(from_dict, name), getattr(from_table, name), equal_nan=True)
    assert from_table.max_leverage[0] == 3.0 and from_table.max_leverage[-2] == 2.0
    assert from_table.est.tick_size[-2] == 0.05 and from_table.scheduled[-2]
    # A reload keeps the markets file's own limits; the rest follow the new config.
    reloaded = Settings.model_validate({"limits": {"max_leverage": 4.0, "max_slippage": 0.03}})
    from_table.reconfigure(reloaded)
    assert from_table.max_leverage[0] == 3.0 and from_table.max_leverage[-2] == 2.0
    assert from_table.max_leverage[1] == 4.0 and from_table.max_leverage[-1] == 4.0
    assert from_table.max_slippage[0] == 0.02 and from_table.max_slippage[1] == 0.03
    assert from_table.fee_floor[0] == 0.0 and from_table.notional[0] == 5.0
