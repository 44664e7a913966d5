"""Prometheus metrics (interfaces.md). Per-market model state is collected at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from riskd import __version__
from riskd.model.governor import MODES
from riskd.model.parameters import SIDES

if TYPE_CHECKING:
    from riskd.engine import Engine

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Process-level metrics on an injected registry (never the global one in tests)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.build_info = Gauge("riskd_build_info", "riskd build", ["version"], registry=registry)
        self.build_info.labels(__version__).set(1)
        self.ticks = Counter("riskd_ticks", "Ticks accepted", ["venue"], registry=registry)
        self.rejected = Counter("riskd_ticks_rejected", "Ticks rejected", ["venue", "reason"],
                                registry=registry)
        self.feed_connected = Gauge("riskd_feed_connected", "1 while the feed is connected",
                                    ["venue"], registry=registry)
        self.feed_lag = Gauge("riskd_feed_lag_seconds", "Receive time minus event time of the "
                              "latest tick", ["venue"], registry=registry)
        self.feed_last = Gauge("riskd_feed_last_message_timestamp_seconds",
                               "Event time of the latest tick", ["venue"], registry=registry)
        self.publishes = Counter("riskd_publishes", "Publish attempts", ["publisher", "result"],
                                 registry=registry)
        self.publish_latency = Histogram("riskd_publish_latency_seconds", "Publish latency",
                                         ["publisher"], buckets=LATENCY_BUCKETS,
                                         registry=registry)
        self.tick_to_publish = Histogram("riskd_tick_to_publish_seconds",
                                         "Tick receive to publish of its effect",
                                         buckets=LATENCY_BUCKETS, registry=registry)
        self.cycle = Histogram("riskd_cycle_seconds", "Model + governor cycle time",
                               buckets=LATENCY_BUCKETS, registry=registry)
        self.markets = Gauge("riskd_markets", "Markets tracked", registry=registry)
        self.reloads = Counter("riskd_config_reloads", "Config reloads", ["result"],
                               registry=registry)
        self.last_publish = Gauge("riskd_last_publish_timestamp_seconds",
                                  "Daemon-clock time of the latest published batch",
                                  registry=registry)
        self._rejected_seen: dict[tuple[str, str], int] = {}

    def published(self, publisher: str, result: str, latency_s: float | None) -> None:
        self.publishes.labels(publisher, result).inc()
        if latency_s is not None:
            self.publish_latency.labels(publisher).observe(latency_s)

    def sync_rejected(self, venue: str, counts: dict[str, int]) -> None:
        """Bring the rejection counters up to a source's cumulative counts."""
        for reason, total in counts.items():
            key = (venue, reason)
            delta = total - self._rejected_seen.get(key, 0)
            if delta > 0:
                self.rejected.labels(venue, reason).inc(delta)
                self._rejected_seen[key] = total

    def watch(self, engine: Engine, max_series: int) -> None:
        self.registry.register(EngineCollector(engine, max_series))


class EngineCollector(Collector):
    """Per-market series read from the engine's arrays at scrape time, capped."""

    def __init__(self, engine: Engine, max_series: int) -> None:
        self.engine = engine
        self.max_series = max_series

    def collect(self) -> Iterator[Metric]:
        e = self.engine
        n = min(len(e), self.max_series)
        dropped = GaugeMetricFamily("riskd_market_series_dropped",
                                    "Markets beyond server.max_market_series, not exported")
        dropped.add_metric([], float(len(e) - n))
        yield dropped
        lev = GaugeMetricFamily("riskd_max_leverage", "Published max leverage",
                                labels=["market", "side"])
        fee = GaugeMetricFamily("riskd_fee_rate_hourly", "Published borrow fee per hour",
                                labels=["market", "side"])
        slip = GaugeMetricFamily("riskd_max_slippage", "Published max slippage",
                                 labels=["market"])
        prob = GaugeMetricFamily("riskd_probability", "YES probability", labels=["market"])
        tau = GaugeMetricFamily("riskd_time_to_resolution_seconds",
                                "Seconds to the decisive event", labels=["market"])
        vol = GaugeMetricFamily("riskd_belief_volatility",
                                "Belief volatility, logit per sqrt(second)", labels=["market"])
        lam = GaugeMetricFamily("riskd_jump_intensity", "Jump intensity per second",
                                labels=["market"])
        jumps = CounterMetricFamily("riskd_jumps_detected", "Jumps detected", labels=["market"])
        mode = GaugeMetricFamily("riskd_market_mode", "1 for the published mode",
                                 labels=["market", "mode"])
        if n:
            now = e.now
            inp = e.inputs_at(now) if np.isfinite(now) else None
            g = e.gov
            for i in range(n):
                mid = e.ids[i]
                if g.mode[i] >= 0:
                    for s, side in enumerate(SIDES):
                        lev.add_metric([mid, side], float(g.leverage[i, s]))
                        fee.add_metric([mid, side], float(g.fee[i, s]))
                    slip.add_metric([mid], float(g.slippage[i]))
                    for k, name in enumerate(MODES):
                        mode.add_metric([mid, name], 1.0 if g.mode[i] == k else 0.0)
                if inp is not None and e.est.ticks[i] > 0:
                    prob.add_metric([mid], float(inp.p[i]))
                    tau.add_metric([mid], float(inp.tau[i]))
                    vol.add_metric([mid], float(inp.sigma[i]))
                    lam.add_metric([mid], float(inp.lam[i]))
                jumps.add_metric([mid], float(e.est.jumps[i]))
        yield from (lev, fee, slip, prob, tau, vol, lam, jumps, mode)
