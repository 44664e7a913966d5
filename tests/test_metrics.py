"""Metrics on an injected registry: per-market series behind the cap, the overflow
counted, settings the alert rules use; the per-tick path never touches metrics."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from riskd.config import load_settings
from riskd.engine import Engine
from riskd.markets import load_markets
from riskd.metrics import Metrics
from riskd.tape import Tape
from tests.support import FED_CSV, FED_MARKETS, REPO

PER_MARKET = (
    "riskd_max_leverage",
    "riskd_fee_rate_hourly",
    "riskd_max_slippage",
    "riskd_probability",
    "riskd_time_to_resolution_seconds",
    "riskd_belief_volatility",
    "riskd_jump_intensity",
    "riskd_jumps_detected_total",
    "riskd_market_mode",
)


@pytest.fixture(scope="module")
def engine() -> Engine:
    """The Fed tape (two markets) through the engine, one cycle at its end."""
    settings = load_settings(REPO / "config" / "riskd.toml")
    eng = Engine(settings, load_markets(FED_MARKETS), discover=False)
    ticks = list(Tape(FED_CSV))
    for start in range(0, len(ticks), 500):
        eng.ingest(ticks[start : start + 500])
    eng.cycle(eng.now)
    return eng


def markets_exported(registry: CollectorRegistry) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for family in registry.collect():
        for s in family.samples:
            if s.name in PER_MARKET:
                out.setdefault(s.name, set()).add(s.labels["market"])
    return out


@pytest.mark.parametrize("cap", [0, 1, 2, 100])
def test_per_market_series_are_capped_and_the_overflow_counted(engine: Engine, cap: int) -> None:
    registry = CollectorRegistry()
    Metrics(registry).watch(engine, cap)
    exported = markets_exported(registry)
    shown = min(cap, len(engine))
    assert registry.get_sample_value("riskd_market_series_limit") == cap
    assert registry.get_sample_value("riskd_market_series_dropped") == len(engine) - shown
    if shown == 0:
        assert exported == {}
    else:
        assert set(exported) == set(PER_MARKET)
        assert all(markets == set(engine.ids[:shown]) for markets in exported.values())


def test_alert_thresholds_follow_the_settings(engine: Engine) -> None:
    registry = CollectorRegistry()
    Metrics(registry).watch(engine, 10)
    g = engine.settings.governor
    assert registry.get_sample_value("riskd_governor_stale_after_seconds") == g.stale_after_s
    assert (
        registry.get_sample_value("riskd_governor_freeze_before_resolution_seconds")
        == g.freeze_before_resolution_s
    )
    assert (
        registry.get_sample_value("riskd_snapshot_interval_seconds")
        == engine.settings.state.snapshot_interval_s
    )


def test_resting_values_before_any_event() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.register_publishers(["jsonl", "http"])
    metrics.feed_started("replay")
    assert registry.get_sample_value("riskd_publisher_circuit_open", {"publisher": "http"}) == 0
    assert registry.get_sample_value("riskd_snapshot_failures_total") == 0
    assert registry.get_sample_value("riskd_last_snapshot_timestamp_seconds") == 0
    assert registry.get_sample_value("riskd_feed_reconnects_total", {"venue": "replay"}) == 0
    assert registry.get_sample_value("riskd_feed_connected", {"venue": "replay"}) == 1
    metrics.feed_batch(
        "replay", 3, {"bad_price": 1}, received=1000.0, latest_event=990.0, now=995.0
    )
    assert registry.get_sample_value("riskd_ticks_total", {"venue": "replay"}) == 3
    assert (
        registry.get_sample_value(
            "riskd_ticks_rejected_total", {"venue": "replay", "reason": "bad_price"}
        )
        == 1
    )
    assert (
        registry.get_sample_value("riskd_feed_last_message_timestamp_seconds", {"venue": "replay"})
        == 1000.0
    )
    assert registry.get_sample_value("riskd_feed_lag_seconds", {"venue": "replay"}) == 5.0
    metrics.feed_ended("replay")
    assert registry.get_sample_value("riskd_feed_connected", {"venue": "replay"}) == 0


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_per_tick_path_has_no_metric_updates() -> None:
    """Ticks are applied by the engine and the model; metrics are updated per batch by
    the daemon and read from the engine at scrape time, so neither imports them."""
    paths = [REPO / "riskd" / "engine.py", *sorted((REPO / "riskd" / "model").glob("*.py"))]
    for path in paths:
        imported = _imports(path)
        assert not {"prometheus_client", "riskd.metrics"} & imported, path


def test_only_accepted_ticks_make_the_feed_fresher() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.feed_started("polymarket")
    metrics.feed_batch("polymarket", 2, {}, received=50.0, latest_event=49.0, now=50.5)
    # A batch of venue events or rejected input only: counted, but no price arrived.
    metrics.feed_batch(
        "polymarket", 0, {"unknown_market": 4}, received=60.0, latest_event=59.0, now=60.0
    )
    labels = {"venue": "polymarket"}
    assert registry.get_sample_value("riskd_feed_last_message_timestamp_seconds", labels) == 50
    assert registry.get_sample_value("riskd_feed_lag_seconds", labels) == 1.5
    assert registry.get_sample_value("riskd_ticks_total", labels) == 2
    assert (
        registry.get_sample_value(
            "riskd_ticks_rejected_total", {"venue": "polymarket", "reason": "unknown_market"}
        )
        == 4
    )
