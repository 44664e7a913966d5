"""Wires the daemon's parts together; each part has one job.

- riskd/pipeline.py: the hot path. Where a tick enters (`Pipeline._consume_feed`),
  where numbers are computed (`Engine.cycle`, riskd/model), where they leave
  (`Pipeline._publish`, riskd/publish).
- riskd/lifecycle.py: start-up, serving, signals and shutdown.
- riskd/state.py: snapshots and resuming from them; riskd/health.py: /healthz, /readyz.
- riskd/api.py: what the API handlers see of the daemon (this class implements it).
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import time
from collections.abc import Mapping
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from riskd import health, heap, wire
from riskd.clock import Clock, iso_or_empty
from riskd.config import ConfigError, Settings, describe_source, load_settings
from riskd.engine import Engine
from riskd.exchange import ExchangeState, ExchangeStore, Verdict, frame_request, refuse, reply_frame
from riskd.explain import explain
from riskd.feeds.base import Feed, Replayed
from riskd.feeds.replay import ReplayFeed
from riskd.lifecycle import Lifecycle
from riskd.markets import Market, MarketTable, load_markets, parse_markets
from riskd.metrics import Metrics
from riskd.overrides import Override, OverrideError, OverrideStore
from riskd.pipeline import Pipeline
from riskd.publish.base import Publisher
from riskd.publish.registry import PublishContext, make_publishers
from riskd.publish.websocket import WebsocketPublisher
from riskd.state import Loaded, StateStore, publisher_seqs, resume, seq_gap
from riskd.supervise import Fatal, Supervisor, background_thread
from riskd.timeutil import parse_iso

log = logging.getLogger("riskd")


def load_market_table(settings: Settings) -> MarketTable:
    """Inline tables, then the markets file on top: the file wins (interfaces.md)."""
    markets = (
        parse_markets(settings.markets.inline, "[markets] inline")
        if settings.markets.inline
        else {}
    )
    if settings.markets.file is not None:
        markets.update(load_markets(settings.markets.file))
    return MarketTable(markets.values())


def make_feeds(
    settings: Settings,
    metrics: Metrics | None = None,
    markets: Mapping[str, Market] | None = None,
) -> list[Feed]:
    """The feeds of `[feed] kind`: a replay, or one or more live venues."""
    cfg = settings.feed
    if cfg.kind == "replay":
        ff = parse_iso(cfg.fast_forward_until) if cfg.fast_forward_until else None
        return [ReplayFeed(cfg.path, cfg.speed, ff)]
    from riskd.feeds.registry import live_feeds

    table = markets if markets is not None else load_market_table(settings)
    return list(live_feeds(settings, table, metrics))


class Daemon:
    """The parts, built from the settings; `run` runs them (riskd/lifecycle.py).

    `clock`: the daemon clock (riskd/clock.py); by default the feed's own."""

    def __init__(
        self, settings: Settings, config_path: Path | None, clock: Clock | None = None
    ) -> None:
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
        self.reload_error: str | None = None
        self.metrics = Metrics(CollectorRegistry())
        self.feeds = make_feeds(settings, self.metrics, markets)
        self.feed = self.feeds[0]
        self.now: Clock = clock or self.feed.now
        self.metrics.watch(self.engine, settings.server.max_market_series, clock=self.now)
        self.exchange = ExchangeStore()
        self.engine.exchange = self._exchange_now  # open-interest caps ([insurance])
        self.metrics.watch_exchange(lambda: self.exchange.age(self.now()))
        self.publishers: list[Publisher] = self._make_publishers(settings)
        self.metrics.register_publishers([p.name for p in self.publishers])
        self.store = (
            StateStore(settings.state.dir, settings.state.max_age_s)
            if settings.state.enabled
            else None
        )
        self.state_status = "disabled"
        self._snapshot_errors = 0
        self.stop = asyncio.Event()
        self.pipeline = Pipeline(
            settings, self.engine, self.feeds, self.publishers, self.metrics, self.now, self.stop
        )
        self.supervisor = Supervisor(self.metrics, self._fatal, stopping=self.stop.is_set)

    def _make_publishers(self, settings: Settings) -> list[Publisher]:
        # A stream frame may carry an exchange state report: as large as a POST's
        # body, string-escaped.
        frame = (
            2 * settings.server.max_body_bytes + 4096
            if settings.exchange.secret.get_secret_value().strip()
            else 4096
        )
        context = PublishContext(
            self.metrics,
            settings.publisher.instance,
            self.stream_snapshot,
            self.stream_message,
            frame,
            rows=self.engine.index,
        )
        pubs = make_publishers(settings.publisher, context)
        # /v1/stream is served by the websocket publisher (riskd/server.py).
        self.stream = next((p for p in pubs if isinstance(p, WebsocketPublisher)), None)
        return pubs

    def stream_snapshot(self) -> bytes:
        """What a /v1/stream client gets on connect: every current set, marked snapshot."""
        return wire.batch(
            self.settings.publisher.instance,
            self.seq,
            self.now_iso(),
            self.engine.current.sets(),
            snapshot=True,
        )

    async def run(self) -> int:
        return await Lifecycle(self).run()

    @property
    def seq(self) -> int:
        """The last batch's seq."""
        return self.pipeline.seq

    def cycle(self) -> None:
        self.pipeline.cycle()

    # --- the API's view (riskd/api.py) ------------------------------------------

    def now_iso(self) -> str:
        return iso_or_empty(self.now)

    def alive(self) -> tuple[bool, str]:
        return health.alive(self.pipeline.last_cycle, self.settings.governor.publish_interval_s)

    def ready(self) -> tuple[bool, list[str]]:
        reasons = health.not_ready(
            self.now(),
            self.settings.governor,
            self.feeds,
            self.engine,
            self.seq > 0,
            self.publishers,
        )
        reasons += self.supervisor.reasons()
        return not reasons, reasons

    def sets(self) -> list[dict[str, Any]]:
        return self.engine.current.sets()

    def set_of(self, market: str) -> dict[str, Any] | None:
        return self.engine.current.get(market)

    def explain(self, market: str) -> dict[str, Any] | None:
        return explain(self.engine, market, self.now())

    def knows(self, market: str) -> bool:
        return market in self.engine.index

    def exchange_state(self, headers: Mapping[str, str], raw: bytes) -> tuple[int, dict[str, Any]]:
        return self._exchange_counted(self._exchange_receive(headers, raw))

    def stream_message(self, text: str) -> bytes | None:
        """A text frame from a /v1/stream client: an exchange state report gets the
        HTTP endpoint's answer as a frame; anything else is ignored."""
        try:
            request = frame_request(text)
        except ValueError as exc:
            verdict = refuse(400, "bad_body", f"not an exchange_state frame: {exc}")
        else:
            if request is None:
                return None
            verdict = self._exchange_receive(*request)
        self._exchange_counted(verdict)
        return reply_frame(verdict)

    def _exchange_now(self, now: float) -> tuple[ExchangeState | None, float]:
        return self.exchange.current(), self.exchange.age(now)

    def _exchange_receive(self, headers: Mapping[str, str], raw: bytes) -> Verdict:
        # The timestamp is judged by the wall clock, the state stamped by the daemon's.
        return self.exchange.receive(
            self.settings.exchange,
            headers,
            raw,
            time.time(),
            self.now(),
            self.settings.server.max_body_bytes,
            self.knows,
        )

    def _exchange_counted(self, verdict: Verdict) -> tuple[int, dict[str, Any]]:
        self.metrics.exchange_result(verdict.result)
        if verdict.status == 200:
            log.debug("exchange state accepted: %d markets", verdict.body["markets"])
        else:
            log.warning(
                "exchange state refused: %s",
                verdict.result,
                extra={"reason": f"exchange_{verdict.result}"},
            )
        return verdict.status, verdict.body

    def current_overrides(self) -> Mapping[str, Override]:
        return self.overrides.overrides

    def set_override(
        self, market: str, override: Override | None, actor: str, changes: dict[str, Any] | None
    ) -> Override | None:
        before = self.overrides.set(market, override, actor, changes=changes)
        self.engine.overrides = self.overrides.overrides
        return before

    def reload(self) -> bool:
        """SIGHUP: a new valid config takes effect; an invalid one is logged and ignored."""
        try:
            settings = load_settings(self.config_path)
        except ConfigError as exc:
            log.error(
                "config reload rejected, keeping the old config:\n%s",
                exc,
                extra={"reason": "invalid_config"},
            )
            self.metrics.reloads.labels("error").inc()
            self.reload_error = str(exc)
            return False
        self.reload_error = None
        self.engine.reconfigure(settings)
        self.settings = self.pipeline.settings = settings
        self.metrics.reloads.labels("ok").inc()
        log.info("config reloaded: %s", describe_source(settings))
        return True

    # --- state --------------------------------------------------------------------

    def restore(self) -> None:
        """Continue from the snapshot when trusted, else start conservatively."""
        if self.store is None:
            return
        audit = self.settings.publisher.jsonl
        gap = seq_gap(
            self.settings.state.snapshot_interval_s, self.settings.governor.publish_interval_s
        )
        replay = self.feed if isinstance(self.feed, Replayed) else None
        resumed = resume(
            self.store,
            self.engine,
            self.publishers,
            audit.path if audit is not None else None,
            gap,
            replay,
        )
        self.state_status = resumed.loaded.status
        self.pipeline.seq = resumed.seq
        self.pipeline.stamped = self.pipeline.stamp_floor = resumed.stamp_floor
        self._restore_exchange(resumed.loaded)

    def _restore_exchange(self, loaded: Loaded) -> None:
        """The exchange state of a trusted snapshot; of an untrusted one only the seqs
        (a captured report must not be replayed after a restart)."""
        if loaded.exchange is None:
            return  # an older snapshot, or none
        try:
            self.exchange = ExchangeStore.from_dict(loaded.exchange, with_state=loaded.trusted)
        except ValueError as exc:
            log.warning(
                "state: the snapshot's exchange state is not usable (%s): starting without it",
                exc,
                extra={"reason": "state_exchange"},
            )

    def snapshot(self) -> None:
        """Write a snapshot now, on the caller's thread (shutdown, tests)."""
        if self.store is not None:
            self._snapshot_done(self._try_write(self._capture()))

    async def snapshots(self) -> None:
        """Every snapshot_interval_s: captured on the event loop (copies), written in a
        thread of its own at the lowest priority (the file and its fsyncs)."""
        writer = background_thread("riskd-snapshot")
        try:
            while not self.stop.is_set():
                try:
                    await asyncio.wait_for(
                        self.stop.wait(), self.settings.state.snapshot_interval_s
                    )
                except TimeoutError:
                    if self.store is not None:
                        await self._snapshot_in_thread(writer)
        finally:
            # A write under way finishes in its thread; the shutdown's own snapshot
            # waits for it (StateStore.write).
            writer.shutdown(wait=False)

    async def _snapshot_in_thread(self, writer: Executor) -> None:
        """The capture's copies (~230 bytes per market) in memory of their own, made
        resident in the writer's thread, filled on the loop and handed back to the OS
        there (riskd/heap.py): in the C heap they would stay in RSS, freed, between
        snapshots."""
        assert self.store is not None
        loop = asyncio.get_running_loop()
        size = self.store.capture_bytes(self.engine)
        buffer = await loop.run_in_executor(writer, heap.mapped, size)
        held = [self._capture(buffer)]
        del buffer  # the copies hold it; when they go, it goes
        self._snapshot_done(await loop.run_in_executor(writer, self._write_held, held))

    def _write_held(self, held: list[dict[str, Any]]) -> OSError | None:
        captured = held.pop()  # the last reference: the copies die in this thread
        error = self._try_write(captured)
        del captured
        # And what the daemon freed since the last snapshot goes back to the OS: glibc
        # keeps it resident for reuse, so RSS drifts towards the peak of the transient
        # allocations (at 100k markets, 0-360 bytes per market between runs of the
        # same bench; docs/performance.md). 3-5 ms at 100k, off the event loop.
        heap.trim()
        return error

    def _capture(self, buffer: mmap.mmap | None = None) -> dict[str, Any]:
        assert self.store is not None
        self.engine.flush()  # the snapshot holds every tick taken before its clock
        return self.store.capture(
            self.engine,
            self.now(),
            publisher_seqs(self.seq, self.publishers),
            self.pipeline.stamped,
            exchange=self.exchange.copy(),
            buffer=buffer,
        )

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
            log.error(
                "state snapshot failed (%d so far): %s",
                self._snapshot_errors,
                error.strerror or error,
                extra={"reason": "snapshot_failed", "path": str(self.store.path)},
            )

    def _fatal(self, fatal: Fatal) -> None:
        self.stop.set()  # the lifecycle drains and exits 1
