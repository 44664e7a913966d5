"""Prometheus metrics (interfaces.md). Per-market model state is collected at scrape time."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from riskd import __version__
from riskd.exchange import RESULTS as EXCHANGE_RESULTS
from riskd.model.governor import MODES
from riskd.model.parameters import SIDES

if TYPE_CHECKING:
    from riskd.engine import Engine

# Every rejection reason a feed or the engine's boundary can count (the codecs, the
# connection shell, riskd/ticks.py tick_fault, the tape reader): each venue's series
# exist at 0 from its start, so `rate()` in the dashboard and the alerts reads 0, not
# "no data".
REJECT_REASONS = (
    "bad_json",
    "bad_message",
    "bad_number",
    "bad_price",
    "bad_size",
    "bad_timestamp",
    "bad_tick_size",
    "crossed_book",
    "future_ts",
    "out_of_order",
    "unknown_asset",
    "unknown_event",
    "unknown_ticker",
    "venue_error",
    "seq_gap",
    "decode_error",
    "message_too_big",
    "metadata_unavailable",
    "metadata_bad_entry",
    "bad_ts",
    "bad_bid_ask",
    "bad_depth",
    "bad_market",
    "unknown_market",
    "discover_limit",
)
# Publish results by publisher: the same, for `riskd_publishes_total`.
PUBLISH_RESULTS = ("ok", "retry", "rejected", "error", "slow_consumer")
# riskd_api_refused_total{reason}: every reason is exported from the start.
API_REFUSALS = (
    "max_connections",
    "header_timeout",
    "header_too_large",
    "bad_request",
    "body_too_large",
)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Process-level metrics on an injected registry (never the global one in tests).

    Updated per batch, per cycle and per publish, never per tick; per-market model
    state is read at scrape time by `EngineCollector`. Metric names are a contract
    (docs/interfaces.md); dashboards and alert rules (grafana/, deploy/prometheus/)
    use them.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.build_info = Gauge(
            "riskd_build_info", "riskd build; the value is always 1", ["version"], registry=registry
        )
        self.build_info.labels(__version__).set(1)
        ProcessCollector(registry=registry)  # process_start_time_seconds, memory, CPU
        # Defined in this order: the order of /metrics.
        self._define_feed_metrics(registry)
        self._define_publish_metrics(registry)
        self._define_daemon_metrics(registry)
        self._rejected_seen: dict[tuple[str, str], int] = {}
        self._last_heard: dict[str, float] = {}
        self._feeds: dict[str, _FeedChildren] = {}

    def _define_feed_metrics(self, registry: CollectorRegistry) -> None:
        """Per venue: what its feed delivered, rejected, and how it is connected."""
        self.ticks = Counter("riskd_ticks", "Ticks accepted", ["venue"], registry=registry)
        self.rejected = Counter(
            "riskd_ticks_rejected", "Ticks rejected", ["venue", "reason"], registry=registry
        )
        self.feed_connected = Gauge(
            "riskd_feed_connected",
            "1 while the feed is connected (a replay: while its tape is being played)",
            ["venue"],
            registry=registry,
        )
        self.feed_lag = Gauge(
            "riskd_feed_lag_seconds",
            "Daemon clock at receipt minus event "
            "time of the latest tick (a replay's clock is event time)",
            ["venue"],
            registry=registry,
        )
        self.feed_last = Gauge(
            "riskd_feed_last_message_timestamp_seconds",
            "Wall-clock time of the venue's last sign of life: any frame "
            "or heartbeat on a live feed (a quiet book sends no ticks), the "
            "latest accepted ticks on a replay",
            ["venue"],
            registry=registry,
        )
        self.reconnects = Counter(
            "riskd_feed_reconnects", "Feed reconnections", ["venue"], registry=registry
        )

    def _define_publish_metrics(self, registry: CollectorRegistry) -> None:
        """Per publisher: attempts, latency, the breaker; and a tick's way to publish."""
        self.publishes = Counter(
            "riskd_publishes", "Publish attempts", ["publisher", "result"], registry=registry
        )
        self.publish_latency = Histogram(
            "riskd_publish_latency_seconds",
            "Publish latency",
            ["publisher"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.circuit_open = Gauge(
            "riskd_publisher_circuit_open",
            "1 while the publisher's circuit breaker is open",
            ["publisher"],
            registry=registry,
        )
        self.tick_to_publish = Histogram(
            "riskd_tick_to_publish_seconds",
            "Tick receive to publish of its effect",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def _define_daemon_metrics(self, registry: CollectorRegistry) -> None:
        """The daemon's own work: cycles, reloads, snapshots, the API, its tasks."""
        self.cycle = Histogram(
            "riskd_cycle_seconds",
            "Model + governor cycle time",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.loop_lag = Histogram(
            "riskd_event_loop_lag_seconds",
            "How late the event loop woke a task due every 10 ms: what ticks, cycles "
            "and requests waited behind",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.markets = Gauge("riskd_markets", "Markets tracked", registry=registry)
        self.reloads = Counter(
            "riskd_config_reloads", "Config reloads", ["result"], registry=registry
        )
        self.last_publish = Gauge(
            "riskd_last_publish_timestamp_seconds",
            "Daemon-clock time of the latest published batch",
            registry=registry,
        )
        self.snapshot_failures = Counter(
            "riskd_snapshot_failures",
            "State snapshots that could not be written",
            registry=registry,
        )
        self.last_snapshot = Gauge(
            "riskd_last_snapshot_timestamp_seconds",
            "Wall-clock time of the latest state snapshot written; 0 before the first",
            registry=registry,
        )
        self.api_refused = Counter(
            "riskd_api_refused",
            "API connections and requests refused by the server's limits ([server])",
            ["reason"],
            registry=registry,
        )
        for reason in API_REFUSALS:
            self.api_refused.labels(reason)
        self.api_connections = Gauge(
            "riskd_api_connections", "Open API connections", registry=registry
        )
        self.task_failures = Counter(
            "riskd_task_failures",
            "Background tasks that ended "
            "unexpectedly (each is logged and restarted, or the "
            "daemon exits 1)",
            ["task"],
            registry=registry,
        )
        self.task_running = Gauge(
            "riskd_task_running", "1 while the background task runs", ["task"], registry=registry
        )

    # --- feed ---------------------------------------------------------------

    def feed_started(self, venue: str) -> None:
        """The venue's series exist (at zero) from the start; its feed is connected."""
        children = self._feed(venue)
        children.connected.set(1)

    def feed_ended(self, venue: str) -> None:
        self._feed(venue).connected.set(0)

    def feed_heard(self, venue: str, wall_time: float) -> None:
        """A live venue's last sign of life (`WebsocketFeed.heard_at`): its freshness,
        which a deep book whose top sits still shows only this way (docs/model.md
        section 5)."""
        self._touch(venue, wall_time)

    def _touch(self, venue: str, wall_time: float) -> None:
        """The last-message gauge, never going back (ticks and liveness both move it)."""
        if math.isfinite(wall_time) and wall_time > self._last_heard.get(venue, -math.inf):
            self._last_heard[venue] = wall_time
            self._feed(venue).last.set(wall_time)

    def feed_batch(
        self,
        venue: str,
        accepted: int,
        rejected: dict[str, int],
        received: float,
        latest_event: float,
        now: float,
    ) -> None:
        """One batch from the feed (never called per tick): counts, arrival, lag."""
        children = self._feed(venue)
        for reason, n in rejected.items():
            self.rejected.labels(venue, reason).inc(n)
        if not accepted:  # events, rejects or nothing: no price arrived, not fresher
            return
        children.ticks.inc(accepted)
        self._touch(venue, received)
        if math.isfinite(now) and math.isfinite(latest_event):
            children.lag.set(max(0.0, now - latest_event))

    def _feed(self, venue: str) -> _FeedChildren:
        children = self._feeds.get(venue)
        if children is None:  # label lookups once per venue, not per batch
            children = _FeedChildren(
                self.ticks.labels(venue),
                self.feed_connected.labels(venue),
                self.feed_lag.labels(venue),
                self.feed_last.labels(venue),
            )
            self.reconnects.labels(venue)
            for reason in REJECT_REASONS:
                self.rejected.labels(venue, reason)
            self._feeds[venue] = children
        return children

    def sync_rejected(self, venue: str, counts: dict[str, int]) -> None:
        """Bring the rejection counters up to a source's cumulative counts."""
        for reason, total in counts.items():
            key = (venue, reason)
            delta = total - self._rejected_seen.get(key, 0)
            if delta > 0:
                self.rejected.labels(venue, reason).inc(delta)
                self._rejected_seen[key] = total

    # --- publishers and state -------------------------------------------------

    def register_publishers(self, names: list[str]) -> None:
        """Each configured publisher's series exist from the start, its circuit closed."""
        for name in names:
            self.circuit_open.labels(name).set(0)
            self.publish_latency.labels(name)
            for result in PUBLISH_RESULTS:
                self.publishes.labels(name, result)

    def published(self, publisher: str, result: str, latency_s: float | None) -> None:
        self.publishes.labels(publisher, result).inc()
        if latency_s is not None:
            self.publish_latency.labels(publisher).observe(latency_s)

    def circuit(self, publisher: str, is_open: bool) -> None:
        self.circuit_open.labels(publisher).set(1 if is_open else 0)

    # --- API server and background tasks -----------------------------------------

    def api_refusal(self, reason: str) -> None:
        self.api_refused.labels(reason).inc()

    def task_declared(self, name: str) -> None:
        """A supervised task's series exist (at zero) before it first fails."""
        self.task_failures.labels(name)
        self.task_running.labels(name).set(0)

    def task_state(self, name: str, running: bool) -> None:
        self.task_running.labels(name).set(1 if running else 0)

    def task_failed(self, name: str) -> None:
        self.task_failures.labels(name).inc()
        self.task_running.labels(name).set(0)

    def snapshot_written(self, wall_time: float) -> None:
        self.last_snapshot.set(wall_time)

    def snapshot_failed(self) -> None:
        self.snapshot_failures.inc()

    def watch_exchange(self, age: Callable[[], float]) -> None:
        """The exchange state's series: its age (daemon clock, read at scrape time; +Inf
        while there is none) and the reports by result, every result at 0 from the start."""
        gauge = Gauge(
            "riskd_exchange_state_age_seconds",
            "Daemon-clock seconds since the "
            "exchange's latest accepted state arrived; +Inf without one",
            registry=self.registry,
        )
        gauge.set_function(age)
        self.exchange_reports = Counter(
            "riskd_exchange_state",
            "Exchange state reports, by result: accepted or the reason refused",
            ["result"],
            registry=self.registry,
        )
        for result in EXCHANGE_RESULTS:
            self.exchange_reports.labels(result)

    def exchange_result(self, result: str) -> None:
        self.exchange_reports.labels(result).inc()

    def watch(
        self, engine: Engine, max_series: int, clock: Callable[[], float] | None = None
    ) -> None:
        """Export the engine's markets at scrape time, their inputs at `clock()` (the
        daemon clock, as the governor sees it); without a clock, at the latest tick."""
        self.registry.register(EngineCollector(engine, max_series, clock))
        self.registry.register(CapsCollector(engine, max_series))


@dataclass(frozen=True)
class _FeedChildren:
    ticks: Counter
    connected: Gauge
    lag: Gauge
    last: Gauge


class EngineCollector(Collector):
    """Per-market series read from the engine's arrays at scrape time, capped.

    The first `max_series` markets are exported; the rest are counted in
    `riskd_market_series_dropped`. The governor settings the alert rules compare
    against are exported here too, so they follow a SIGHUP reload.
    """

    def __init__(
        self, engine: Engine, max_series: int, clock: Callable[[], float] | None = None
    ) -> None:
        self.engine = engine
        self.max_series = max_series
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        yield from self._settings()
        yield from self._markets()

    def _settings(self) -> Iterator[Metric]:
        """The series cap and the settings the alert rules compare against."""
        e = self.engine
        n = min(len(e), self.max_series)
        cfg = e.settings
        for name, doc, value in (
            (
                "riskd_market_series_limit",
                "[server] max_market_series: markets whose series are exported",
                self.max_series,
            ),
            (
                "riskd_market_series_dropped",
                "Markets beyond [server] max_market_series, whose series are not exported",
                len(e) - n,
            ),
            (
                "riskd_governor_stale_after_seconds",
                "[governor] stale_after_s: a market without a tick this long is stale",
                cfg.governor.stale_after_s,
            ),
            (
                "riskd_governor_freeze_before_resolution_seconds",
                "[governor] freeze_before_resolution_s: 1x this long before the event",
                cfg.governor.freeze_before_resolution_s,
            ),
            (
                "riskd_snapshot_interval_seconds",
                "[state] snapshot_interval_s",
                cfg.state.snapshot_interval_s,
            ),
        ):
            yield _gauge(name, doc, float(value))

    def _markets(self) -> Iterator[Metric]:
        """Per market: what is published, and the model's inputs now."""
        e = self.engine
        n = min(len(e), self.max_series)
        by_side, by_market = ["market", "side"], ["market"]
        lev = GaugeMetricFamily("riskd_max_leverage", "Published max leverage", labels=by_side)
        fee = GaugeMetricFamily(
            "riskd_fee_rate_hourly", "Published borrow fee per hour", labels=by_side
        )
        slip = GaugeMetricFamily("riskd_max_slippage", "Published max slippage", labels=by_market)
        prob = GaugeMetricFamily("riskd_probability", "YES probability", labels=by_market)
        tau = GaugeMetricFamily(
            "riskd_time_to_resolution_seconds", "Seconds to the decisive event", labels=by_market
        )
        vol = GaugeMetricFamily(
            "riskd_belief_volatility", "Belief volatility, logit per sqrt(second)", labels=by_market
        )
        lam = GaugeMetricFamily(
            "riskd_jump_intensity", "Jump intensity per second", labels=by_market
        )
        jumps = CounterMetricFamily("riskd_jumps_detected", "Jumps detected", labels=by_market)
        mode = GaugeMetricFamily(
            "riskd_market_mode", "1 for the published mode", labels=["market", "mode"]
        )
        if n:
            now = self.clock() if self.clock is not None else e.now
            if not np.isfinite(now):
                now = e.now
            inp = e.inputs_at(now, slice(0, n)) if np.isfinite(now) else None
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


class CapsCollector(Collector):
    """The open-interest caps (docs/model.md section 10) at scrape time: the cap in
    each published set (finite ones; the first `max_series` markets, as the other
    per-market series) and each group's expected shortfall over its budget. Declared
    without samples when there are no caps."""

    def __init__(self, engine: Engine, max_series: int) -> None:
        self.engine = engine
        self.max_series = max_series

    def collect(self) -> Iterator[Metric]:
        cap = GaugeMetricFamily(
            "riskd_oi_cap",
            "Published open-interest cap: lent notional per market and side, quote units",
            labels=["market", "side"],
        )
        used = GaugeMetricFamily(
            "riskd_insurance_fund_utilisation",
            "A group's expected shortfall of lender loss over its share of the insurance fund",
            labels=["group"],
        )
        e = self.engine
        caps = e.capping()
        if caps is not None:
            n = min(len(e), self.max_series)
            rows = np.flatnonzero(e.published[:n])
            held = e.published_cap[rows]
            for i, (long, short) in zip(rows.tolist(), held.tolist(), strict=True):
                for side, value in zip(SIDES, (long, short), strict=True):
                    if math.isfinite(value):
                        cap.add_metric([e.ids[i], side], value)
            for unit, name in enumerate(caps.names):
                if name is not None and math.isfinite(caps.computed_t[unit]):
                    used.add_metric([name], caps.utilisation(unit))
        yield from (cap, used)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation)
    family.add_metric([], value)
    return family
