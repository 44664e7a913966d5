"""The hot path: ticks in from the feeds, a cycle of the engine, batches out.

Where a tick enters: `_consume_feed`. Where numbers are computed: `Engine.cycle`
(riskd/model). Where they leave: `_publish` (riskd/publish).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
from typing import TYPE_CHECKING, Any

from riskd import heap
from riskd.clock import Clock
from riskd.config import Settings
from riskd.engine import Engine
from riskd.feeds.base import EventSource, Feed, LivenessSource, MarketEvent, Replayed
from riskd.metrics import Metrics
from riskd.model.governor import MODES
from riskd.publish.base import Batch, Publisher
from riskd.rows import RowValues
from riskd.ticks import last_ts
from riskd.timeutil import iso

if TYPE_CHECKING:
    from riskd.cluster import Cluster

log = logging.getLogger("riskd")

# Feed batches taken between two turns of the event loop at most: one socket read can
# hold hundreds of messages, all ready at once.
YIELD_EVERY = 64
# A cycle publishing this many sets (start-up, markets warming up together, a
# reconnect) leaves tens of MiB freed in the heap; as many markets ticking for the
# first time leave their books, there to stay (`_settle_memory`).
MASS_PUBLISH = 10_000
# A market's published mode by code, 0 before its first set (`Pipeline._modes`).
MODE_NAMES: tuple[str | None, ...] = (None, *MODES)
MODE_CODES = {name: code for code, name in enumerate(MODE_NAMES)}


class Pipeline:
    """Feeds -> engine -> publishers. `settings` is replaced on reload."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        feeds: list[Feed],
        publishers: list[Publisher],
        metrics: Metrics,
        clock: Clock,
        stop: asyncio.Event,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.feeds = feeds
        # Checked once: a runtime Protocol check costs tens of microseconds per call.
        self._liveness = [f for f in feeds if isinstance(f, LivenessSource)]
        self.publishers = publishers  # shared with the daemon: one list
        self.metrics = metrics
        self.now: Clock = clock
        self.stop = stop
        self.seq = 0
        self.last_cycle = time.monotonic()
        self.feed_done = False
        # Event time of the last batch stamped (generated_at), and the floor under the
        # next one: after a restart, the last one published before it (state.resume).
        self.stamped = self.stamp_floor = -math.inf
        # Receive time of the oldest tick whose effect is not yet published.
        self._unpublished_since: float | None = None
        # market -> code of its published mode (MODE_NAMES), for change events.
        self._modes = RowValues(engine.index, "b", 0)
        self._settled_at = 0  # engine.ticked at the last _settle_memory
        self._tallies: dict[str, FeedTally] = {}  # venue -> what came since the last cycle
        # `[cluster]`: batches go by shard to the leases this replica holds.
        self.cluster: Cluster | None = None

    # --- in -------------------------------------------------------------------

    async def consume(self) -> None:
        if len(self.feeds) == 1:
            await self._consume_feed(self.feeds[0])
        else:  # several venues at once, each market bound to one of them
            async with asyncio.TaskGroup() as group:
                for feed in self.feeds:
                    group.create_task(self._consume_feed(feed), name=f"feed-{feed.venue}")
        self.feed_done = True
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
        live = not isinstance(feed, Replayed)
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
                    tally.took(result.accepted, received, last_ts(batch), self.now())
                if result.rejected:
                    tally.rejected(result.rejected)
        finally:
            self._flush_tally(tally)
            self.metrics.feed_ended(venue)
        rejected = feed.rejected()
        log.info(
            "feed ended: %s",
            _summary(feed),
            extra={"venue": venue, "rejected": rejected} if rejected else {"venue": venue},
        )

    # --- the cycle --------------------------------------------------------------

    async def cycles(self) -> None:
        # Cycles start on a grid of `publish_interval_s` (`next_cycle`): a tick waits at
        # most one interval for the next cycle, whatever the cycles take. A plain sleep:
        # one wake-up, however busy the loop (waiting on the stop event with a timeout
        # takes several turns of the loop, each behind a burst of feed messages).
        # Shutdown cancels this task.
        due = time.monotonic()
        while not self.stop.is_set():
            self.cycle()
            now = time.monotonic()
            due = next_cycle(due, self.settings.governor.publish_interval_s, now)
            await asyncio.sleep(due - now)

    def cycle(self) -> None:
        """Compute and publish once at the daemon clock."""
        self.last_cycle = time.monotonic()
        now = self._stamp(self.now())
        if now is None:
            return
        for tally in self._tallies.values():
            self._flush_tally(tally)
        started = time.perf_counter()
        for feed in self._liveness:
            self.engine.confirm(feed.take_liveness())
            self.metrics.feed_heard(feed.venue, feed.heard_at)
        result = self.engine.cycle(now)
        self.metrics.cycle.observe(time.perf_counter() - started)
        self.metrics.markets.set(len(self.engine))
        if result.entries:
            self._log_mode_changes(result.entries)
            self.stamped = now
            self._publish(
                Batch(
                    self.settings.publisher.instance,
                    self.seq + 1,
                    iso(now),
                    result.entries,
                    tightened=result.tightened_markets,
                )
            )
        if (
            len(result.entries) >= MASS_PUBLISH
            or self.engine.ticked - self._settled_at >= MASS_PUBLISH
        ):
            self._settle_memory()

    def _stamp(self, now: float) -> float | None:
        """The time this cycle publishes at, or None for no cycle now."""
        if not math.isfinite(now):
            return None
        if now < self.stamp_floor:
            # A resumed replay re-reads the ticks after the snapshot: their batches
            # were published before the restart. Stamps never go back.
            if any(isinstance(f, Replayed) and not f.finished for f in self.feeds):
                return None
            return self.stamp_floor
        return now

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
            self.metrics.feed_batch(
                venue, tally.accepted, tally.rejects, tally.received, tally.latest_event, tally.now
            )
            tally.reset()
        self.metrics.sync_rejected(venue, tally.feed.rejected())

    def _log_mode_changes(self, entries: list[dict[str, Any]]) -> None:
        """One event per market whose published mode changed, with its reasons."""
        for entry in entries:
            market, mode = entry["market"], entry["mode"]
            before = MODE_NAMES[self._modes.get(market)]
            if mode != before:
                self._modes.set(market, MODE_CODES[mode])
                log.info(
                    "market %s: mode %s",
                    market,
                    mode,
                    extra={
                        "market": market,
                        "mode": mode,
                        "previous_mode": before,
                        "reason": ",".join(entry["reasons"]) or "none",
                        "max_leverage": max(entry["max_leverage"].values()),
                    },
                )

    # --- out ----------------------------------------------------------------------

    def _publish(self, batch: Batch) -> None:
        self.seq = batch.seq
        if self.cluster is not None:
            self.cluster.submit(batch)
        for pub in self.publishers if self.cluster is None else ():
            try:
                pub.submit(batch)
            except Exception:  # one sink failing never blocks another
                log.exception(
                    "publisher %s failed to take a batch",
                    pub.name,
                    extra={"publisher": pub.name, "reason": "submit_failed"},
                )
        self.metrics.last_publish.set(self.now())
        if self._unpublished_since is not None:
            self.metrics.tick_to_publish.observe(time.time() - self._unpublished_since)
            self._unpublished_since = None


def next_cycle(due: float, interval: float, ended: float) -> float:
    """When the next cycle starts, given when the last one was due and when it ended:
    one interval after it was due, so that the cycles' durations do not add up into
    the period; but never sooner after its end than it ended after its due time, up to
    one interval. A cycle that started late or ran long means a busy loop (a loaded
    machine, a feed catching up, a mass publish): a whole interval after each cycle,
    as before the grid, is what lets the feed keep up then. Missed cycles are
    skipped, never run back to back."""
    return max(due + interval, ended + min(ended - due, interval))


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
    return (
        "no rejected input"
        if not rejected
        else "rejected " + ", ".join(f"{k}={v}" for k, v in sorted(rejected.items()))
    )
