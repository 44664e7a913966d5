"""Wires feed -> engine -> publishers and the API, and runs the lifecycle.

Where a tick enters: `_consume` (from the feed). Where numbers are computed:
`Engine.cycle` (riskd/model). Where they leave: `_publish` (riskd/publish).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from riskd import heap, wire
from riskd.config import ConfigError, Settings, describe_source, load_settings
from riskd.engine import Engine, compile_kernels
from riskd.feeds.base import EventSource, Feed, LivenessSource, MarketEvent
from riskd.feeds.replay import ReplayFeed
from riskd.markets import Market, load_markets, parse_markets
from riskd.metrics import Metrics
from riskd.overrides import OverrideError, OverrideStore
from riskd.publish.base import Batch, Publisher, background_task
from riskd.publish.http import DeliveryPolicy, HttpPublisher
from riskd.publish.jsonl import JsonlPublisher
from riskd.publish.websocket import WebsocketPublisher
from riskd.server import serve
from riskd.state import StateStore, last_published_at, tighten_from_audit
from riskd.supervise import Fatal, Supervisor
from riskd.timeutil import iso, parse_iso

log = logging.getLogger("riskd")

# Feed batches taken between two turns of the event loop at most: one socket read can
# hold hundreds of messages, all ready at once.
YIELD_EVERY = 64
SHUTDOWN_DEADLINE_S = 4.0  # SIGTERM to exit: the issue asks for under 5 s
# A cycle publishing this many sets (start-up, markets warming up together, a
# reconnect) leaves tens of MiB freed in the heap; as many markets ticking for the
# first time leave their books, there to stay (`_settle_memory`).
MASS_PUBLISH = 10_000


def load_market_table(settings: Settings) -> dict[str, Market]:
    """Inline tables, then the markets file on top: the file wins (interfaces.md)."""
    markets = parse_markets(settings.markets.inline, "[markets] inline") \
        if settings.markets.inline else {}
    if settings.markets.file is not None:
        markets.update(load_markets(settings.markets.file))
    return markets


def make_feeds(settings: Settings, metrics: Metrics | None = None,
               markets: dict[str, Market] | None = None) -> list[Feed]:
    """The feeds of `[feed] kind`: a replay, or one or more live venues."""
    cfg = settings.feed
    if cfg.kind == "replay":
        ff = parse_iso(cfg.fast_forward_until) if cfg.fast_forward_until else None
        return [ReplayFeed(cfg.path, cfg.speed, ff)]
    from riskd.feeds.registry import live_feeds

    table = markets if markets is not None else load_market_table(settings)
    return list(live_feeds(settings, table, metrics))


class Daemon:
    def __init__(self, settings: Settings, config_path: Path | None) -> None:
        self.settings = settings
        self.config_path = config_path
        markets = load_market_table(settings)
        self.engine = Engine(settings, markets, discover=settings.markets.discover)
        # Admin overrides survive restarts: <[state] dir>/overrides.json (riskd/overrides.py).
        self.overrides = OverrideStore(settings.state.dir)
        try:
            self.engine.overrides = self.overrides.load()
        except OverrideError as exc:
            raise ConfigError(f"state.dir: {exc}") from None
        self.stream: WebsocketPublisher | None = None
        self.reload_error: str | None = None  # why the last reload was refused
        self.metrics = Metrics(CollectorRegistry())
        self.metrics.watch(self.engine, settings.server.max_market_series, clock=self.now)
        self.feeds = make_feeds(settings, self.metrics, markets)
        self.feed = self.feeds[0]
        self.publishers: list[Publisher] = self._make_publishers(settings)
        self.metrics.register_publishers([p.name for p in self.publishers])
        self.seq = 0
        self.store = (StateStore(settings.state.dir, settings.state.max_age_s)
                      if settings.state.enabled else None)
        self.state_status = "disabled"  # what start-up made of the snapshot, for /readyz
        self._snapshot_errors = 0
        self._modes: dict[str, str] = {}  # market -> published mode, for change events
        self._settled_at = 0  # engine.ticked at the last _settle_memory
        self.stop = asyncio.Event()
        self._last_loop = time.monotonic()
        # Receive time of the oldest tick whose effect is not yet published.
        self._unpublished_since: float | None = None
        self._feed_done = False
        self._tallies: dict[str, FeedTally] = {}  # venue -> what came since the last cycle
        self.supervisor = Supervisor(self.metrics, self._fatal, stopping=self.stop.is_set)
        # Event time of the last batch stamped (generated_at), and the floor under the
        # next one: after a restart, the last one published before it (restore).
        self._stamped = self._stamp_floor = -math.inf

    def _make_publishers(self, settings: Settings) -> list[Publisher]:
        pubs: list[Publisher] = []
        cfg = settings.publisher
        if cfg.jsonl is not None:
            pubs.append(JsonlPublisher(cfg.jsonl.path, self.metrics, cfg.jsonl.fsync,
                                       cfg.jsonl.max_bytes, cfg.jsonl.backups))
        if cfg.http is not None:
            pubs.append(HttpPublisher(cfg.http.url, cfg.http.secret_bytes(), cfg.instance,
                                      self.metrics, cfg.http.timeout_s,
                                      DeliveryPolicy.from_settings(cfg.http)))
        if cfg.websocket is not None:
            self.stream = WebsocketPublisher(cfg.websocket, self.metrics, self.stream_snapshot)
            pubs.append(self.stream)
        return pubs

    def stream_snapshot(self) -> bytes:
        """What a /v1/stream client gets on connect: every current set, marked snapshot."""
        return wire.batch(self.settings.publisher.instance, self.seq, self.now_iso(),
                          self.engine.current.sets(), snapshot=True)

    # --- clock and health -------------------------------------------------

    def now(self) -> float:
        """The daemon clock: event time in replay, wall time for live feeds."""
        if isinstance(self.feed, ReplayFeed):
            return self.feed.now()
        return time.time()

    def now_iso(self) -> str:
        now = self.now()
        return iso(now) if math.isfinite(now) else ""

    def alive(self) -> tuple[bool, str]:
        idle = time.monotonic() - self._last_loop
        limit = max(5.0, 5 * self.settings.governor.publish_interval_s)
        return idle < limit, f"last cycle {idle:.1f}s ago"

    def ready(self) -> tuple[bool, list[str]]:
        reasons = []
        now = self.now()
        g = self.settings.governor
        live = [f for f in self.feeds if isinstance(f, LivenessSource)]
        if not live and (not math.isfinite(now) or not (now - self.engine.now < g.stale_after_s)):
            reasons.append("feed_stale")
        for feed in live:
            # Per venue: one silent venue makes the daemon unready for its markets
            # (down; or silent, or none of its markets confirmed, for stale_after_s).
            if not feed.connected:
                reasons.append(f"feed_down:{feed.venue}")
            elif not (now - feed.heard_at < g.stale_after_s) or \
                    not self.engine.fresh_on(feed.sessions(), now, g.stale_after_s):
                reasons.append(f"feed_stale:{feed.venue}")
        if self.seq == 0:
            reasons.append("nothing_published")
        reasons += [f"publisher_failing:{p.name}" for p in self.publishers if not p.healthy()]
        reasons += self.supervisor.reasons()
        return not reasons, reasons

    # --- the three stages -------------------------------------------------

    async def _consume(self) -> None:
        if len(self.feeds) == 1:
            await self._consume_feed(self.feed)
        else:  # several venues at once, each market bound to one of them
            async with asyncio.TaskGroup() as group:
                for feed in self.feeds:
                    group.create_task(self._consume_feed(feed), name=f"feed-{feed.venue}")
        self._feed_done = True
        if self.settings.feed.exit_at_end:
            self.stop.set()

    def _apply_events(self, events: list[MarketEvent]) -> None:
        """Venue facts that are not prices: listed markets, tick sizes, resolutions."""
        for event in events:
            if event.kind == "listed" and event.meta is not None:
                if event.market not in self.engine.index:  # the markets file wins
                    self.engine.add_market(event.market, event.meta)
                    log.info("market listed by the venue", extra={"market": event.market})
            elif event.kind == "tick_size" and event.tick_size is not None:
                self.engine.set_tick_size(event.market, event.tick_size)
            elif event.kind == "resolved":
                # At once: never later than the daemon clock, whatever the venue's clock.
                if self.engine.mark_resolved(event.market, min(event.ts, self.now())):
                    log.info("market resolved by the venue", extra={"market": event.market})

    async def _consume_feed(self, feed: Feed) -> None:
        venue = feed.venue
        events = feed if isinstance(feed, EventSource) else None
        self.metrics.feed_started(venue)
        tally = self._tallies[venue] = FeedTally(feed)
        taken = 0
        # Live ticks are judged against the wall clock (`[feed] max_future_s`); a
        # replay's clock is the tape itself.
        live = not isinstance(feed, ReplayFeed)
        try:
            async for batch in feed.ticks():
                taken += 1
                if taken % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # the cycle runs on time within a burst
                received = time.time()
                if events is not None:
                    self._apply_events(events.take_events())
                # Checked now, applied by the next cycle in one pass with the others.
                result = self.engine.enqueue(batch, received if live else None)
                if result.accepted:
                    if self._unpublished_since is None:
                        self._unpublished_since = received
                    # Feeds yield ticks in arrival order.
                    tally.took(result.accepted, received, batch[-1].ts, self.now())
                if result.rejected:
                    tally.rejected(result.rejected)
        finally:
            self._flush_tally(tally)
            self.metrics.feed_ended(venue)
        rejected = feed.rejected()
        log.info("feed ended: %s", _summary(feed),
                 extra={"venue": venue, "rejected": rejected} if rejected else {"venue": venue})

    async def _cycles(self) -> None:
        # A plain sleep: one wake-up, however busy the loop (waiting on the stop event
        # with a timeout takes several turns of the loop, each behind a burst of feed
        # messages). Shutdown cancels this task.
        while not self.stop.is_set():
            self.cycle()
            await asyncio.sleep(self.settings.governor.publish_interval_s)

    def cycle(self) -> None:
        """Compute and publish once at the daemon clock."""
        self._last_loop = time.monotonic()
        now = self.now()
        if not math.isfinite(now):
            return
        if now < self._stamp_floor:
            # A resumed replay re-reads the ticks after the snapshot: their batches
            # were published before the restart. Stamps never go back.
            if isinstance(self.feed, ReplayFeed) and not self.feed.finished:
                return
            now = self._stamp_floor
        for tally in self._tallies.values():
            self._flush_tally(tally)
        started = time.perf_counter()
        for feed in self.feeds:
            if isinstance(feed, LivenessSource):
                self.engine.confirm(feed.take_liveness())
                self.metrics.feed_heard(feed.venue, feed.heard_at)
        result = self.engine.cycle(now)
        self.metrics.cycle.observe(time.perf_counter() - started)
        self.metrics.markets.set(len(self.engine))
        if result.entries:
            self._log_mode_changes(result.entries)
            self._stamped = now
            self._publish(Batch(self.settings.publisher.instance, self.seq + 1, iso(now),
                                result.entries, tightened=result.tightened_markets))
        if len(result.entries) >= MASS_PUBLISH or \
                self.engine.ticked - self._settled_at >= MASS_PUBLISH:
            self._settle_memory()

    def _settle_memory(self) -> None:
        """After a mass publish, or once 10,000 more markets have their books: what is
        alive now is frozen out of the garbage collector's walk (a full collection
        over the books of 100k markets takes ~190 ms, a latency spike), and the heap's
        free memory goes back to the OS (riskd/heap.py). Cyclic garbage alive at this
        moment is never collected; this runs a few times per 10,000 markets, so that
        is bounded and small."""
        self._settled_at = self.engine.ticked
        gc.freeze()
        heap.trim()

    def _flush_tally(self, tally: FeedTally) -> None:
        """A feed's metrics, once per cycle: never per message or tick."""
        venue = tally.feed.venue
        if tally.accepted or tally.rejects:
            self.metrics.feed_batch(venue, tally.accepted, tally.rejects, tally.received,
                                    tally.latest_event, tally.now)
            tally.reset()
        self.metrics.sync_rejected(venue, tally.feed.rejected())

    def _log_mode_changes(self, entries: list[dict[str, Any]]) -> None:
        """One event per market whose published mode changed, with its reasons."""
        for entry in entries:
            market, mode = entry["market"], entry["mode"]
            before = self._modes.get(market)
            if mode != before:
                self._modes[market] = mode
                log.info("market %s: mode %s", market, mode, extra={
                    "market": market, "mode": mode, "previous_mode": before,
                    "reason": ",".join(entry["reasons"]) or "none",
                    "max_leverage": max(entry["max_leverage"].values())})

    def _publish(self, batch: Batch) -> None:
        self.seq = batch.seq
        for pub in self.publishers:
            try:
                pub.submit(batch)
            except Exception:  # one sink failing never blocks another
                log.exception("publisher %s failed to take a batch", pub.name,
                              extra={"publisher": pub.name, "reason": "submit_failed"})
        self.metrics.last_publish.set(self.now())
        if self._unpublished_since is not None:
            self.metrics.tick_to_publish.observe(time.time() - self._unpublished_since)
            self._unpublished_since = None

    # --- state -------------------------------------------------------------

    def _seq_gap(self) -> int:
        """How far seqs and versions may have run ahead of the last snapshot: at most one
        batch per cycle (and a few HTTP messages per batch) between two snapshots."""
        g, s = self.settings.governor, self.settings.state
        return int(8 * s.snapshot_interval_s / g.publish_interval_s) + 1000

    def _seqs(self) -> dict[str, int]:
        seqs = {"batch": self.seq}
        for pub in self.publishers:
            seq = getattr(pub, "seq", None)
            if isinstance(seq, int):
                seqs[pub.name] = seq
        return seqs

    def restore(self) -> None:
        """Load the snapshot: continue from it when trusted, else start conservatively.

        Either way seqs and versions only rise, so the exchange takes what comes next."""
        if self.store is None:
            return
        loaded = self.store.load(self.engine)
        self.state_status = loaded.status
        quiet = loaded.status in ("restored", "none")
        log.log(logging.INFO if quiet else logging.WARNING, "state: %s", loaded.message,
                extra={"reason": f"state_{loaded.status}"})
        gap = self._seq_gap()
        if "batch" in loaded.seqs:
            self.seq = loaded.seqs["batch"] + gap
        self.seq = max(self.seq, loaded.floor)
        for pub in self.publishers:
            if isinstance(getattr(pub, "seq", None), int):
                last = loaded.seqs.get(pub.name)
                pub.seq = max(0 if last is None else last + gap, loaded.floor)  # type: ignore[attr-defined]
        audit = self.settings.publisher.jsonl
        if audit is not None:
            held = tighten_from_audit(self.engine, audit.path)
            if held:
                log.info("state: %d markets held at their last audited values", held)
        version = self.engine.gov.version
        version[version > 0] += gap
        np.maximum(version, loaded.floor, out=version)
        # Republish everything in the first cycle: the exchange hears from the new
        # process at once, and the API has the current sets again.
        self.engine.gov.valid_until[:] = np.nan
        self.engine.invalidate()
        if loaded.trusted and isinstance(self.feed, ReplayFeed):
            self.feed.resume_after(loaded.clock)
            # The snapshot is older than the last batches: the audit log has them.
            floor = max(loaded.published, last_published_at(audit.path)
                        if audit is not None else -math.inf)
            self._stamped = self._stamp_floor = floor

    def snapshot(self) -> None:
        """Write a snapshot now, on the caller's thread (shutdown, tests)."""
        if self.store is not None:
            self._snapshot_done(self._try_write(self._capture()))

    async def _snapshots(self) -> None:
        """Every snapshot_interval_s: captured on the event loop (copies), written in a
        thread (the file and its fsyncs)."""
        while not self.stop.is_set():
            try:
                await asyncio.wait_for(self.stop.wait(), self.settings.state.snapshot_interval_s)
            except TimeoutError:
                if self.store is not None:
                    captured = self._capture()
                    self._snapshot_done(await asyncio.to_thread(self._try_write, captured))

    def _capture(self) -> dict[str, Any]:
        assert self.store is not None
        self.engine.flush()  # the snapshot holds every tick taken before its clock
        return self.store.capture(self.engine, self.now(), self._seqs(), self._stamped)

    def _try_write(self, captured: dict[str, Any]) -> OSError | None:
        assert self.store is not None
        try:
            self.store.write(captured)
        except OSError as exc:
            return exc
        return None

    def _snapshot_done(self, error: OSError | None) -> None:
        assert self.store is not None
        if error is None:
            self.metrics.snapshot_written(time.time())
            return
        self.metrics.snapshot_failed()
        self._snapshot_errors += 1
        if self._snapshot_errors in (1, 10, 100) or self._snapshot_errors % 1000 == 0:
            log.error("state snapshot failed (%d so far): %s", self._snapshot_errors,
                      error.strerror or error, extra={"reason": "snapshot_failed",
                                                      "path": str(self.store.path)})

    # --- lifecycle --------------------------------------------------------

    def reload(self) -> bool:
        """SIGHUP: a new valid config takes effect; an invalid one is logged and ignored."""
        try:
            settings = load_settings(self.config_path)
        except ConfigError as exc:
            log.error("config reload rejected, keeping the old config:\n%s", exc,
                      extra={"reason": "invalid_config"})
            self.metrics.reloads.labels("error").inc()
            self.reload_error = str(exc)
            return False
        self.reload_error = None
        self.engine.reconfigure(settings)
        self.settings = settings
        self.metrics.reloads.labels("ok").inc()
        log.info("config reloaded: %s", describe_source(settings))
        return True

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        interrupts = 0

        def on_stop(signame: str) -> None:
            nonlocal interrupts
            interrupts += 1
            if interrupts > 1:  # a second signal forces the exit (uvicorn's convention)
                log.warning("second %s: exiting now", signame)
                os._exit(1)
            log.info("%s: draining", signame, extra={"reason": signame})
            self.stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self.reload)

        compile_kernels(self.settings)
        runner = None
        if self.settings.server.enabled:
            host, port = self.settings.server.host, self.settings.server.port
            try:
                runner = await serve(self)
            except OSError as exc:  # port taken, address not local: the config's to fix
                raise ConfigError(f"server.port: cannot listen on {host}:{port}: "
                                  f"{exc.strerror or exc}") from None
            log.info("API on http://%s:%d", host, runner.addresses[0][1])
        started: list[Publisher] = []
        try:
            for pub in self.publishers:
                await pub.start()
                started.append(pub)
        except OSError as exc:  # e.g. the audit log's directory cannot be created
            for pub in started:
                await pub.close()
            if runner is not None:
                await runner.cleanup()
            raise ConfigError(f"publisher.{pub.name}: cannot start: {exc}") from None

        self.restore()
        gc.collect()  # the start-up's garbage, once, before the heap is trimmed
        heap.trim()
        sup = self.supervisor
        for pub in self.publishers:
            self._watch(pub)
        snapshot_task = sup.spawn("snapshots", self._snapshots, restart=True)
        # A feed that fails is not restarted here (a replay would start over): exit 1.
        # Its normal end (a replay's) is not a failure: the last state is served on.
        feed_task = sup.spawn("feed", self._consume, restart=False, may_end=True)
        cycle_task = sup.spawn("cycle", self._cycles, restart=True)
        await self.stop.wait()
        # Shutdown order: stop the feed, publish the final batch, drain, close the server.
        await sup.close()
        for task in (feed_task, cycle_task, snapshot_task):
            task.cancel()
        await asyncio.gather(feed_task, cycle_task, snapshot_task, return_exceptions=True)
        self.cycle()
        # All at once: a hanging exchange never eats the audit log's or the stream's time.
        await asyncio.gather(*(pub.drain(SHUTDOWN_DEADLINE_S) for pub in self.publishers))
        for pub in self.publishers:
            await pub.close()
        self.snapshot()
        if runner is not None:
            await runner.cleanup()
        if sup.fatal is not None:
            log.error("stopped after task %s failed: exit 1", sup.fatal.task,
                      extra={"task": sup.fatal.task, "reason": "task_failed"})
            return 1
        log.info("stopped cleanly after %d batches", self.seq)
        return 0

    def _fatal(self, fatal: Fatal) -> None:
        self.stop.set()  # run() drains and returns 1

    def _watch(self, pub: Publisher) -> None:
        """A publisher's own task (the HTTP sender) is supervised: when it dies the
        publisher is closed and started again; what it had pending is kept."""
        task = background_task(pub)
        if task is None:
            return

        async def restart() -> asyncio.Task[Any] | None:
            await pub.close()
            await pub.start()
            return background_task(pub)

        self.supervisor.watch(f"publish-{pub.name}", task, restart)


class FeedTally:
    """What one feed delivered since its metrics were last updated."""

    def __init__(self, feed: Feed) -> None:
        self.feed = feed
        self.reset()

    def reset(self) -> None:
        self.accepted = 0
        self.rejects: dict[str, int] = {}
        # Of the latest batch with accepted ticks: wall time, newest event, daemon clock.
        self.received = self.latest_event = self.now = math.nan

    def took(self, accepted: int, received: float, latest_event: float, now: float) -> None:
        self.accepted += accepted
        self.received, self.latest_event, self.now = received, latest_event, now

    def rejected(self, counts: dict[str, int]) -> None:
        for reason, n in counts.items():
            self.rejects[reason] = self.rejects.get(reason, 0) + n


def _summary(feed: Feed) -> str:
    rejected = feed.rejected()
    return "no rejected input" if not rejected else "rejected " + ", ".join(
        f"{k}={v}" for k, v in sorted(rejected.items()))
