"""The engine: ticks in, published parameter sets out. Shared by daemon and backtest.

Holds the market registry (id -> array slot), the estimator and governor state,
and turns one cycle's model output into the published JSON entries. No I/O.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from operator import attrgetter, itemgetter
from typing import Any, NamedTuple

import numpy as np

from riskd import wire
from riskd.caps import ExchangeSource, OpenInterestCaps, cap_moved, take
from riskd.config import Settings
from riskd.feeds.base import Heard, HeardRows, Liveness, Tick
from riskd.jit import configure_cache, fmax, fmin, njit
from riskd.markets import Market, MarketRows, MarketTable
from riskd.model import estimator, governor, parameters
from riskd.model.governor import Conditions, GovernorState
from riskd.overrides import Override
from riskd.ticks import REASONS, ROW, TickColumns, book_arrays, take_columns, tick_fault

DEFAULT_TICK_SIZE = 0.01
ALL = slice(None)  # every market; else an index array
# The published inputs kept per market (RiskInputs fields), in `published_inputs` order.
INPUTS = wire.INPUTS
EVALUATE_CHUNK = 4096  # markets per model pass: bounds the scenario arrays' memory
# Ticks waiting for the next cycle at most: beyond it `enqueue` applies them at once
# (the overflow policy of the feed -> engine queue: nothing is dropped or coalesced,
# the jump detector sees every price; memory stays bounded whatever the tick rate).
MAX_PENDING = 200_000
Index = slice | np.ndarray
# (confirmed_t, live_book) of some markets: `Engine.freshness`.
Freshness = tuple[np.ndarray, np.ndarray | None]


@dataclass
class IngestResult:
    accepted: int = 0
    jumps: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str, n: int = 1) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + n


class Columns(NamedTuple):
    """Pending ticks as the estimator takes them (spec section 2: p is the mid when
    there is a book, else the print)."""

    idx: np.ndarray
    t: np.ndarray
    p: np.ndarray
    half_spread: np.ndarray
    depth: np.ndarray

    @classmethod
    def of_ticks(cls, run: list[tuple[int, Tick]]) -> Columns:
        idx = np.fromiter(map(_FIRST, run), np.int64, len(run))
        return cls(idx, *tick_arrays(list(map(_SECOND, run))))


@dataclass
class CycleResult:
    now: float
    entries: list[dict[str, Any]]  # published sets, one per market that changed
    tightened: int  # markets tightened in this cycle
    tightened_markets: frozenset[str] = frozenset()  # their ids: publishers send them first


class Engine:
    """Market registry + model + governor for all markets, vectorised."""

    # Per market, grown with the others (`_grow_state`); columns are pending.
    _newest = np.zeros(0)
    _columns_pending = False
    _valid_rows: np.ndarray | None = None  # the rows `_positions` checked last

    def __init__(self, settings: Settings, markets: Mapping[str, Market], discover: bool) -> None:
        self.settings = settings
        self.discover = discover
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        cfg = settings.model
        self.est = estimator.EstimatorState.empty(0, cfg)
        self.gov = GovernorState.empty(0)
        self.event_t = np.zeros(0)
        self.resolve_t = np.zeros(0)
        self.first_t = np.zeros(0)
        # Markets that ticked since this process started (a snapshot's restored
        # markets too): their feed state, books and all, is made at the first tick.
        self.ticked = 0
        self._seen = np.zeros(0, bool)
        self.max_leverage = np.zeros(0)
        self.max_slippage = np.zeros(0)
        self.fee_floor = np.zeros(0)
        # When each market must be evaluated again without a tick: the next time one of
        # the governor's time-driven conditions can change (-inf: at the next cycle).
        self.due_t = np.zeros(0)
        self.idle = np.zeros(0, bool)  # nothing waited to loosen at its last evaluation
        # The inputs (INPUTS) of the set each market last published in this process;
        # `current` renders the published sets from them and the governor state.
        self.published = np.zeros(0, bool)
        self.published_inputs = np.zeros((0, len(INPUTS)))
        self.current = PublishedSets(self)
        # Freshness from the venue (docs/model.md section 5): per market, the live
        # connection (session) it was last heard on (-1: none, a tape's rule then: a
        # row is the confirmation), when a message about it last arrived, whether its
        # book arrived as a snapshot on that session (then every sign of the session's
        # life confirms its price) and since when, and whether that book broke (a
        # sequence gap: stale until the next snapshot). Per session, its last sign of
        # life (nan once it ended).
        self.link = np.zeros(0, np.int64)
        self.heard_t = np.zeros(0)
        self.booked = np.zeros(0, bool)
        self.book_since = np.zeros(0)
        self.broken = np.zeros(0, bool)
        self.life = np.full(16, np.nan)
        self.notional = np.zeros(0)  # the reference position (section 4)
        self.scheduled = np.zeros(0, bool)  # the decisive event has a date (section 4)
        self.overrides = {}  # market id -> admin override
        self.now = float("-inf")  # the latest event time seen
        # Ticks taken since the last cycle (`enqueue`), applied by `flush`.
        self._pending: list[list[tuple[int, Tick]] | Columns] = []
        self._pending_n = 0
        self._pending_t: dict[int, float] = {}
        self._rows_of: dict[int, tuple[Sequence[str], np.ndarray]] = {}
        self._sweep = 0  # where the next slow re-evaluation of every market goes on
        self._last_cycle = float("nan")
        self.discovered = 0  # markets added without metadata (discovery)
        # Open-interest caps (riskd/caps.py): with [insurance], once the daemon attaches
        # the exchange's state as `exchange`. The caps in the sets last published.
        self.exchange: ExchangeSource | None = None
        self.caps = _make_caps(settings)
        self.published_cap = np.zeros((0, 2))
        # Metadata column by column: no Market object per market is kept (riskd/markets.py).
        self.meta = MarketRows(MarketTable.of(markets))
        self._grow(self.meta.table.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def add_market(self, market_id: str, meta: Market | None) -> int:
        return self.add_markets([(market_id, meta)])

    def add_markets(self, markets: list[tuple[str, Market | None]]) -> int:
        """Append markets (one array copy for all of them); returns the first's index."""
        for _, meta in markets:
            if meta is None:
                self.discovered += 1
            self.meta.append(meta)
        return self._grow([market_id for market_id, _ in markets])

    def _grow(self, ids: list[str]) -> int:
        """Rows for the markets `ids`, whose metadata `meta` holds as its last rows."""
        self._rows_of.clear()  # an id unknown until now may be one of these
        first, k = len(self.ids), len(ids)
        self.est.grow(first + k, self.settings.model, DEFAULT_TICK_SIZE)
        self.gov.grow(first + k)
        self.ids += ids
        self.index.update(zip(ids, range(first, first + k), strict=True))
        for i, tick_size in enumerate(self.meta.column("tick_size", first), first):
            if tick_size:
                self.est.tick_size[i] = tick_size
        for name, values in self._static_columns(first).items():
            setattr(self, name, np.concatenate([getattr(self, name), values]))
        self._grow_state(k)
        return first

    def _static_columns(self, first: int) -> dict[str, list[float]]:
        """Per-market settings of the rows from `first` on: the markets file's value,
        else the config's."""
        lim, model = self.settings.limits, self.settings.model

        def column(field: str, default: float) -> list[float]:
            return [default if v is None else v for v in self.meta.column(field, first)]

        return {
            "event_t": column("event_at", np.nan),
            "resolve_t": column("resolves_at", np.nan),
            "max_leverage": column("max_leverage", lim.max_leverage),
            "max_slippage": column("max_slippage", lim.max_slippage),
            "fee_floor": column("fee_floor_hourly", lim.fee_floor_hourly),
            "notional": column("liquidation_notional", model.liquidation_notional),
        }

    def _grow_state(self, k: int) -> None:
        """`k` new markets' run-time state: nothing seen, nothing published yet."""

        def grown(name: str, fill: Any, dtype: Any = float, width: int | None = None) -> None:
            shape = (k,) if width is None else (k, width)
            setattr(self, name, np.concatenate([getattr(self, name), np.full(shape, fill, dtype)]))

        grown("first_t", np.nan)
        grown("_seen", False, bool)
        grown("due_t", -np.inf)
        grown("idle", False, bool)
        grown("published", False, bool)
        grown("published_inputs", np.nan, float, len(INPUTS))
        grown("link", -1, np.int64)
        grown("heard_t", np.nan)
        grown("booked", False, bool)
        grown("book_since", np.nan)
        grown("broken", False, bool)
        grown("_newest", np.nan)  # the event time of each market's newest pending column
        scheduled = [bool(v) for v in self.meta.column("scheduled", len(self.meta) - k)]
        self.scheduled = np.concatenate([self.scheduled, np.array(scheduled, bool)])

    @property
    def overrides(self) -> dict[str, Override]:
        return self._overrides

    @overrides.setter
    def overrides(self, value: dict[str, Override]) -> None:
        """New admin overrides: every market is evaluated at the next cycle."""
        self._overrides = value
        self.invalidate()

    def invalidate(self) -> None:
        """Evaluate every market at the next cycle: after anything that changed the
        state or settings the schedule was computed from (a restore, a reload)."""
        self.due_t[:] = -np.inf

    def resume_versions(self, gap: int, floor: int) -> None:
        """After a restart: versions continue `gap` above the snapshot's (the exchange
        may have seen later ones) and at least at `floor`; every market is republished
        in the first cycle, so the exchange and the API hear from this process at once."""
        version = self.gov.version
        version[version > 0] += gap
        np.maximum(version, floor, out=version)
        self.gov.valid_until[:] = np.nan
        self.invalidate()

    def mark_resolved(self, market_id: str, ts: float) -> bool:
        """The venue says the market is over at `ts`: from then on it is resolved (1x,
        reduce-only, spec section 5) whatever the markets file said. False if unknown."""
        i = self.index.get(market_id)
        if i is None:
            return False
        self.resolve_t[i] = np.fmin(self.resolve_t[i], ts)
        self.event_t[i] = np.fmin(self.event_t[i], ts)
        self.due_t[i] = -np.inf
        return True

    def set_tick_size(self, market_id: str, tick_size: float) -> bool:
        """The venue changed the market's tick size (the estimator's noise floor)."""
        i = self.index.get(market_id)
        if i is None:
            return False
        self.flush()  # the ticks before the change were priced with the old tick size
        self.est.tick_size[i] = tick_size
        return True

    def reconfigure(self, settings: Settings) -> None:
        """Take new settings (SIGHUP); per-market overrides from the markets file stay."""
        lim, meta = settings.limits, self.meta
        self.max_leverage[:] = [v or lim.max_leverage for v in meta.column("max_leverage")]
        self.max_slippage[:] = [v or lim.max_slippage for v in meta.column("max_slippage")]
        self.fee_floor[:] = [
            lim.fee_floor_hourly if v is None else v for v in meta.column("fee_floor_hourly")
        ]
        notional = settings.model.liquidation_notional
        self.notional[:] = [
            notional if v is None else v for v in meta.column("liquidation_notional")
        ]
        if (settings.insurance, settings.exchange.max_age_s) != (
            self.settings.insurance,
            self.settings.exchange.max_age_s,
        ):
            self.caps = _make_caps(settings)
        elif self.caps is not None:
            self.caps.refresh_s = settings.governor.reevaluate_s
            self.caps.computed_t[:] = -np.inf  # the model's settings may have changed
        self.settings = settings
        self.invalidate()

    def confirm(self, live: Liveness) -> None:
        """What a live feed heard since its last report (riskd/feeds/base.py Liveness):
        markets it heard of, books that arrived or broke, depth changes, and the life
        of its sessions. Markets whose freshness or depth changed are evaluated at the
        next cycle."""
        if live.sessions or live.ended:
            top = max(max(live.sessions, default=-1), max(live.ended, default=-1))
            if top >= len(self.life):
                grown = np.full(max(2 * len(self.life), top + 1), np.nan)
                grown[: len(self.life)] = self.life
                self.life = grown
            for session, life in live.sessions.items():
                self.life[session] = life
            if live.ended:
                ended = np.asarray(live.ended, np.int64)
                self.life[ended] = np.nan
                self.due_t[np.isin(self.link, ended)] = -np.inf  # stale at once
        if live.heard:  # a book belongs to the session it came on (`_heard`)
            _heard(*self._heard_rows(live.heard), self.link, self.booked, self.heard_t)
        if live.books:
            i, sid, t = self._rows(live.books)
            broke = sid < 0
            self.broken[i] = broke
            self.booked[i] = ~broke
            self.link[i] = np.where(broke, self.link[i], sid)
            self.book_since[i] = np.where(broke, np.nan, t)
            self.heard_t[i] = np.where(broke, self.heard_t[i], np.fmax(self.heard_t[i], t))
            self.due_t[i] = -np.inf
        if live.depths:
            rows = self._lookup(live.depths)
            depths = np.fromiter(live.depths.values(), np.float64, len(rows))
            _depths(rows, depths, self.est.depth, self.due_t)

    def _rows(
        self, table: Mapping[str, tuple[int, float]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, sessions, times) of a {market: (session, time)} report, known markets
        only. The pairs are read as one float array (sessions are small integers)."""
        rows = self._lookup(table)
        n = len(rows)
        pairs = np.fromiter(chain.from_iterable(table.values()), np.float64, 2 * n).reshape(n, 2)
        known = rows >= 0
        if not known.all():
            rows, pairs = rows[known], pairs[known]
        return rows, pairs[:, 0].astype(np.int64), pairs[:, 1]

    def _heard_rows(self, heard: list[Heard]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, sessions, times) of the markets of `heard`'s reports, in order (rows
        -1 or -2 for markets not known): named by id, or as rows of a codec's ids
        (`HeardRows`, mapped as its ticks are)."""
        parts = [
            self._feed_rows(m.ids)[m.rows] if isinstance(m, HeardRows) else self._lookup(m)
            for _, _, m in heard
        ]
        counts = [len(part) for part in parts]
        rows = parts[0] if len(parts) == 1 else np.concatenate(parts)
        sessions = np.repeat(np.array([r[0] for r in heard], np.int64), counts)
        times = np.repeat(np.array([r[1] for r in heard], np.float64), counts)
        return rows, sessions, times

    def _lookup(self, markets: Collection[str]) -> np.ndarray:
        """The rows of `markets` (-1: not known), looked up in a C loop: a report names
        hundreds of markets per cycle."""
        n = len(markets)
        return np.fromiter(map(self.index.get, markets, repeat(-1, n)), np.int64, n)

    def freshness(self, idx: Index = ALL) -> Freshness:
        """(confirmed_t, live_book) of markets `idx` (section 5, freshness): when each
        price was last confirmed (nan: not at all, e.g. its connection is down or its
        book broke), and whether its book is held on a live connection. Markets never
        heard on a live connection (a tape): the last tick, and None."""
        if isinstance(idx, np.ndarray) and idx.dtype == np.int64 and idx.ndim == 1:
            # A cycle's rows: one compiled pass (`_freshness`), the same values.
            n = idx.shape[0]
            confirmed, booked = np.empty(n), np.empty(n, np.bool_)
            live = _freshness(
                np.ascontiguousarray(idx), self.link, self.est.t, self.life, self.broken,
                self.booked, self.heard_t, confirmed, booked,
            )  # fmt: skip
            if live == 0:
                return confirmed, None
            if live == 1:
                return confirmed, booked
        return self._freshness_of(idx)

    def _freshness_of(self, idx: Index) -> Freshness:
        """`freshness` in numpy: any `idx`."""
        link = self.link[idx]
        t = self.est.t[idx]
        live = link >= 0
        if not live.any():
            return t, None
        life = self.life[np.maximum(link, 0)]
        up = live & ~np.isnan(life) & ~self.broken[idx]
        booked = self.booked[idx] & up
        heard = np.fmax(self.heard_t[idx], t)
        confirmed = np.where(booked, np.fmax(heard, life), heard)
        return np.where(live, np.where(up, confirmed, np.nan), t), booked

    def fresh_on(self, sessions: list[int], now: float, stale_after_s: float) -> int:
        """How many markets heard on these connections have a price confirmed within
        `stale_after_s` of `now` (a venue's readiness)."""
        if not sessions:
            return 0
        rows = np.flatnonzero(np.isin(self.link, sessions))
        confirmed, _ = self.freshness(rows)
        return int(np.count_nonzero(now - confirmed < stale_after_s))

    def ingest(self, ticks: list[Tick], now: float | None = None) -> IngestResult:
        """Apply ticks in order, at once (`enqueue` then `flush`)."""
        result = self.enqueue(ticks, now)
        result.jumps = self.flush()
        return result

    def enqueue(self, ticks: list[Tick] | TickColumns, now: float | None = None) -> IngestResult:
        """Check ticks and keep them for the next `flush` (the daemon's next cycle): the
        estimator then takes all of them in order, in one compiled pass, instead of
        one pass per feed message.

        The model's boundary: only valid ticks are kept (`tick_fault`), the others are
        counted by reason. `now` is the wall time a live feed's batch arrived: a tick
        further ahead than `[feed] max_future_s` is rejected (`future_ts`); a replay
        passes None (its clock is the tape). Ticks of markets not listed are dropped
        (`unknown_market`) unless `[markets] discover`, up to `discover_max` markets
        (then `discover_limit`)."""
        if self._pending_n + len(ticks) > MAX_PENDING:
            self.flush()
        latest = math.inf if now is None else now + self.settings.feed.max_future_s
        if isinstance(ticks, TickColumns):
            result = self._enqueue_columns(ticks, latest)
            if result is not None:
                return result
            ticks = list(ticks.ticks())  # markets to discover: one by one, in order
        return self._enqueue_ticks(ticks, latest)

    def _enqueue_ticks(self, ticks: list[Tick], latest: float) -> IngestResult:
        result = IngestResult()
        index, newest = self.index, self._pending_t
        # The columns' newest too, when some are pending (a market on two feeds).
        columns = self._newest if self._columns_pending else None
        pending = self._pending[-1] if self._pending else None
        if not isinstance(pending, list):
            pending = []
            self._pending.append(pending)
        applied_t = self.est.t
        for tick in ticks:
            fault = tick_fault(tick, latest)
            if fault is not None:
                result.reject(fault.reason)
                continue
            ts = tick.ts
            i = index.get(tick.market)
            if i is None:
                if not self.discover:
                    result.reject("unknown_market")
                    continue
                if self.discovered >= self.settings.markets.discover_max:
                    result.reject("discover_limit")
                    continue
                i = self.add_market(tick.market, None)
                applied_t = self.est.t
                columns = self._newest if self._columns_pending else None
            last = newest.get(i)
            if columns is not None:
                other = columns[i]
                if other == other and (last is None or other > last):
                    last = other
            if ts < (applied_t[i] if last is None else last):  # nan (none yet): false
                result.reject("out_of_order")
                continue
            newest[i] = ts
            pending.append((i, tick))
        result.accepted = len(ticks) - sum(result.rejected.values())
        self._pending_n += result.accepted
        return result

    def _enqueue_columns(self, cols: TickColumns, latest: float) -> IngestResult | None:
        """`_enqueue_ticks` on columns, in one compiled pass (`ticks.take_columns`);
        None when a market is to be discovered (the caller takes the ticks one by one)."""
        rows_of = self._feed_rows(cols.markets)
        if self.discover and (rows_of[cols.market] == -1).any():
            return None
        if self._pending_t:  # Tick objects pending too (a market on two feeds)
            keys = np.fromiter(self._pending_t, np.int64, len(self._pending_t))
            np.fmax.at(self._newest, keys, np.fromiter(self._pending_t.values(), float))
            self._pending_t.clear()
        self._columns_pending = True
        m, idx, t, p, half_spread, depth, code = take_columns(
            cols.market, cols.ts, cols.price, cols.bid, cols.ask, cols.depth,
            rows_of, self._newest, self.est.t, latest,
        )  # fmt: skip
        result = IngestResult(accepted=m)
        if m < len(code):
            for k, n in enumerate(np.bincount(code, minlength=len(REASONS)).tolist()):
                if k and n:
                    result.reject(REASONS[k], n)
        if m:
            self._pending.append(Columns(idx[:m], t[:m], p[:m], half_spread[:m], depth[:m]))
        self._pending_n += m
        return result

    def _feed_rows(self, ids: Sequence[str]) -> np.ndarray:
        """The engine row of each of a feed's market ids (-1 unknown, -2 empty), kept
        until a market is added (a codec's list of ids does not change: new bindings
        make a new list)."""
        known = self._rows_of.get(id(ids))
        if known is not None and known[0] is ids and len(known[1]) == len(ids):
            return known[1]
        if len(self._rows_of) >= 64:  # lists of bindings gone by
            self._rows_of.clear()
        get = self.index.get
        rows = np.fromiter((get(m, -1) if m else -2 for m in ids), np.int64, len(ids))
        self._rows_of[id(ids)] = (ids, rows)
        return rows

    def flush(self) -> int:
        """Apply the enqueued ticks, in one pass; returns the number of jumps they carried."""
        runs, self._pending = [run for run in self._pending if len(run)], []
        self._pending_n = 0
        self._pending_t.clear()
        self._columns_pending = False
        if not runs:
            return 0
        parts = [run if isinstance(run, Columns) else Columns.of_ticks(run) for run in runs]
        if len(parts) == 1:
            idx, t, p, half_spread, depth = parts[0]
        else:
            idx, t, p, half_spread, depth = (np.concatenate(c) for c in zip(*parts, strict=True))
        self._newest[idx] = np.nan
        return int(np.count_nonzero(self.apply(idx, t, p, half_spread, depth)))

    def apply(
        self,
        idx: np.ndarray,
        t: np.ndarray,
        p: np.ndarray,
        half_spread: np.ndarray,
        depth: np.ndarray,
        record: estimator.EstimatorState | None = None,
    ) -> np.ndarray:
        """The ticks (idx[k], ...) in order, a market possibly several times; returns the
        jump mask (`record`: see `estimator.update`)."""
        self.ticked += _mark_ticked(
            np.ascontiguousarray(idx, np.int64), _float64(t), self._seen, self.first_t, self.due_t
        )
        jumps = estimator.update(
            self.est, self.settings.model, idx, t, p, half_spread, depth, record=record
        )
        self.now = max(self.now, float(t.max()))
        return jumps

    def conditions(
        self,
        now: float | np.ndarray,
        idx: Index = ALL,
        est: estimator.EstimatorState | None = None,
        fresh: Freshness | None = None,
    ) -> Conditions:
        """The governor's conditions of markets `idx` at `now`; with `est` (the
        backtest), of the rows of its record. Live (without `est`), they carry when
        each market's warm-up ends: the cycle schedules with them."""
        rows = self._positions(idx)
        if est is None:
            confirmed, booked = self.freshness(idx) if fresh is None else fresh
            state, estimator_rows = self.est, rows
        else:
            confirmed, booked = est.t, None
            state, estimator_rows = est, np.arange(len(rows))
        gov, model = self.settings.governor, self.settings.model
        return governor.conditions(
            now,
            rows,
            estimator_rows,
            governor.MarketColumns(
                ticks=state.ticks,
                gap=state.gap,
                last_jump_t=state.last_jump_t,
                first_t=self.first_t,
                book_since=self.book_since,
                event_t=self.event_t,
                resolve_t=self.resolve_t,
                fee_floor=self.fee_floor,
            ),
            confirmed,
            booked,
            governor.ConditionSettings(
                warmup_ticks=model.warmup_ticks,
                warmup_s=float(model.warmup_s),
                stale_after_s=float(gov.stale_after_s),
                stale_after_gaps=float(gov.stale_after_gaps),
                scheduling=est is None,
            ),
            **self._override_conditions(idx),
        )

    def _positions(self, idx: Index) -> np.ndarray:
        """The market numbers `idx` stands for (ALL: every market), checked: the
        compiled passes read the engine's arrays at them."""
        if idx is self._valid_rows:  # a cycle's chunk, checked once for its three passes
            return idx
        n = len(self.ids)
        if isinstance(idx, np.ndarray) and idx.dtype == np.int64 and idx.ndim == 1:
            if not idx.size or (idx.min() >= 0 and idx.max() < n):
                self._valid_rows = rows = np.ascontiguousarray(idx)
                return rows
        return np.arange(n)[idx]

    def _overridden(self, idx: Index) -> list[tuple[int, Override]]:
        """(row of `idx`, override) for each market of `idx` with an admin override."""
        if not self.overrides:
            return []
        rows = None if idx is ALL else np.arange(len(self.ids))[idx]
        out = []
        for market, override in self.overrides.items():
            i = self.index.get(market)
            if i is None:
                continue  # not (yet) known: applies once the market appears
            if rows is None:
                out.append((i, override))
            else:
                out.extend((int(k), override) for k in np.flatnonzero(rows == i))
        return out

    def _override_conditions(self, idx: Index) -> dict[str, np.ndarray]:
        """Mode floors and leverage caps of the overrides (riskd/overrides.py)."""
        found = self._overridden(idx)
        if not found:
            return {}
        n = len(self.est.t[idx])
        floor = np.zeros(n, np.int64)
        cap = np.full((n, 2), np.inf)
        pins = self.settings.server.allow_loosen
        for k, override in found:
            floor[k] = override.mode_floor()
            if override.max_leverage is not None and not (override.loosen and pins):
                cap[k] = override.max_leverage
        return {"mode_floor": floor, "leverage_cap": cap}

    def _leverage_pins(self, idx: Index) -> np.ndarray | None:
        """Leverage targets of loosening overrides (nan: the model's), when allowed."""
        if not self.settings.server.allow_loosen:
            return None
        found = [
            (k, o) for k, o in self._overridden(idx) if o.loosen and o.max_leverage is not None
        ]
        if not found:
            return None
        pin = np.full(len(self.est.t[idx]), np.nan)
        for k, override in found:
            pin[k] = override.max_leverage
        return pin

    def inputs_at(
        self,
        now: float | np.ndarray,
        idx: Index = ALL,
        est: estimator.EstimatorState | None = None,
        fresh: Freshness | None = None,
    ) -> parameters.RiskInputs:
        if est is not None:
            confirmed, booked = None, None
        else:
            confirmed, booked = self.freshness(idx) if fresh is None else fresh
        return parameters.risk_inputs(
            self.est if est is None else est,
            now,
            self.event_t[idx],
            self.settings.model,
            confirmed,
            booked,
            self.notional[idx],
            self.scheduled[idx],
            self.long_jump_rate(now, idx, est),
            # The engine's rows of the markets; the backtest's record is row by row.
            rows=self._positions(idx) if est is None else None,
        )

    def long_jump_rate(
        self, now: float | np.ndarray, idx: Index = ALL, est: estimator.EstimatorState | None = None
    ) -> np.ndarray:
        """Each market's long-run jump rate, shrunk toward the pool of every market
        (`parameters.pooled_jump_rate`). Live: the markets now. With `est` (the
        backtest: rows of a tape in time order, a market per row, `now` per row): the
        pool as it stood at each row, from the rows before it."""
        cfg = self.settings.model
        if est is None:
            # The pool's totals: one pass over every market (its time is one `now`).
            jumps, exposure_all = parameters.pool_exposure(self.est.jumps, self.first_t, float(now))
            return parameters.pooled_jump_rate(
                self.est.jumps[idx].astype(np.float64),
                exposure_all[idx],
                float(jumps),
                float(exposure_all.sum()),
                cfg,
            )
        rows = np.asarray(idx)
        t = np.broadcast_to(np.asarray(now, np.float64), rows.shape)
        n = rows.shape[0]
        order = np.lexsort((np.arange(n), rows))  # by market, then row
        market = rows[order]
        same = np.concatenate([[False], market[1:] == market[:-1]])
        counts = est.jumps[order].astype(np.float64)
        inc = np.empty(n)
        inc[order] = np.where(same, counts - np.concatenate([[0.0], counts[:-1]]), counts)
        starts = np.maximum.accumulate(np.where(same, 0, np.arange(n)))
        first_time = np.empty(n)
        first_time[order] = t[order][starts]
        is_first = np.zeros(n, bool)
        is_first[order] = ~same
        started = np.cumsum(is_first)
        pool_exposure = started * t - np.cumsum(np.where(is_first, t, 0.0))
        return parameters.pooled_jump_rate(
            est.jumps.astype(np.float64), t - first_time, np.cumsum(inc), pool_exposure, cfg
        )

    def targets(
        self,
        now: float | np.ndarray,
        idx: Index = ALL,
        detail: bool = False,
        est: estimator.EstimatorState | None = None,
        fresh: Freshness | None = None,
    ) -> tuple[parameters.RiskInputs, parameters.Targets]:
        inp = self.inputs_at(now, idx, est, fresh)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            tg = parameters.compute(
                inp,
                self.settings.model,
                self.max_leverage[idx],
                self.max_slippage[idx],
                self.fee_floor[idx],
                detail=detail,
                leverage_pin=self._leverage_pins(idx),
            )
        return inp, tg

    def govern(
        self,
        now: float | np.ndarray,
        idx: Index = ALL,
        computed: tuple[parameters.RiskInputs, parameters.Targets] | None = None,
        cond: Conditions | None = None,
        record: GovernorState | None = None,
    ) -> tuple[parameters.RiskInputs, governor.Decision]:
        """Model and governor at `now` (one time, or one per row of `idx`).

        The backtest passes a whole tape at once: `idx` a market per row (a market
        possibly many times, in time order), the targets it computed for every row,
        the conditions at each, and `record` for what was in force after each."""
        inp, tg = computed if computed is not None else self.targets(now, idx)
        if cond is None:
            cond = self.conditions(now, idx)
        rows = None if idx is ALL else self._positions(idx)
        return inp, governor.step(self.gov, self.settings.governor, now, tg, cond, rows, record)

    def cycle(self, now: float, idx: Index | None = None) -> CycleResult:
        """One publish cycle at `now`: the enqueued ticks are applied, then the markets
        that ticked, those whose time-driven conditions came due (`governor.next_change`)
        and this cycle's share of the slow sweep are evaluated; with `idx`, those markets
        (ALL: every market) instead."""
        self.flush()
        previous, self._last_cycle = self._last_cycle, now
        if not self.ids:
            return CycleResult(now=now, entries=[], tightened=0)
        caps = self.capping()
        if caps is not None:
            self._observe_exchange(caps, now)
        rows = self._due(now, previous) if idx is None else np.arange(len(self.ids))[idx]
        # A market skipped while idle would have moved its idle anchor at each skipped
        # cycle (section 5): the latest of them was the previous one.
        if math.isfinite(previous) and previous < now:
            was_idle = rows[self.idle[rows]]
            self.gov.idle_at[was_idle] = np.fmax(self.gov.idle_at[was_idle], previous)
        entries: list[dict[str, Any]] = []
        tightened: list[str] = []
        for start in range(0, len(rows), EVALUATE_CHUNK):
            part = rows[start : start + EVALUATE_CHUNK]
            # Freshness once per chunk: the conditions, the inputs and the schedule use it.
            fresh = self.freshness(part)
            cond = self.conditions(now, part, fresh=fresh)
            computed = (
                self.targets(now, part, fresh=fresh)
                if caps is None
                else self._capped_targets(caps, now, part)
            )
            inp, decision = self.govern(now, part, computed=computed, cond=cond)
            published = part[decision.publish]
            if published.size:
                self.published[published] = True
                if caps is not None:
                    self.published_cap[published] = caps.cap[published]
                self.published_inputs[published] = np.stack(
                    [getattr(inp, name)[decision.publish] for name in INPUTS], axis=1
                )
                entries += self.render(published)
            tightened += [self.ids[i] for i in part[decision.tightened].tolist()]
            # When each must be evaluated again (`governor.next_change`).
            assert decision.due is not None
            self.due_t[part] = decision.due
            self.idle[part] = self.gov.idle_at[part] == now
        if caps is not None and caps.left_over:
            self.due_t[caps.pending()] = -np.inf  # their caps at the next cycle
        markets = frozenset(tightened)
        return CycleResult(
            now=now, entries=entries, tightened=len(markets), tightened_markets=markets
        )

    def capping(self) -> OpenInterestCaps | None:
        """The open-interest caps when they apply ([insurance] set, the exchange's state
        attached), grown to every market."""
        if self.caps is None or self.exchange is None:
            return None
        self.caps.grow(self.meta)
        n = len(self.ids)
        if self.published_cap.shape[0] < n:
            grown = np.full((n - self.published_cap.shape[0], 2), np.nan)
            self.published_cap = np.concatenate([self.published_cap, grown])
        return self.caps

    def _observe_exchange(self, caps: OpenInterestCaps, now: float) -> None:
        """The exchange's newest state: markets whose open interest or fund moved, and
        every market when it went stale or fresh, are evaluated in this cycle."""
        assert self.exchange is not None
        state, age = self.exchange(now)
        due = caps.observe(state, age, self.index)
        if due is not None:
            self.due_t[due] = -np.inf

    def _capped_targets(
        self, caps: OpenInterestCaps, now: float, part: np.ndarray
    ) -> tuple[parameters.RiskInputs, parameters.Targets]:
        """The targets of `part` with OI-scaled margins (docs/model.md section 10). The
        caps due among their units are recomputed first, with the other members'
        inputs at `now` (those members are governed when their own turn comes: at the
        next cycle if their cap moved). A set whose cap moved by the deadband is
        republished at once, as a refresh."""
        due, extra = caps.plan(now, part)
        ext = np.concatenate([part, extra]) if extra.size else part
        inp, tg = self.targets(now, ext)
        cfg = self.settings.model
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            caps.refresh(now, ext, inp, tg, due, cfg.confidence, cfg.nodes)
        deadband = self.settings.governor.deadband
        if extra.size:
            moved = cap_moved(caps.cap[extra], self.published_cap[extra], deadband)
            self.due_t[extra[moved & self.published[extra]]] = -np.inf
            inp, tg = take(inp, slice(0, len(part))), take(tg, slice(0, len(part)))
        moved = cap_moved(caps.cap[part], self.published_cap[part], deadband)
        self.gov.valid_until[part[moved & self.published[part]]] = np.nan
        return inp, caps.margins(part, inp, tg, cfg.maintenance_ratio)

    def _due(self, now: float, previous: float) -> np.ndarray:
        """The markets to evaluate at `now`: those due, and the sweep's share (every
        market at least every `reevaluate_s`: tau and lambda drift without ticks)."""
        n = len(self.ids)
        start = stop = 0
        if math.isfinite(previous) and now > previous:
            share = min(n, math.ceil(n * (now - previous) / self.settings.governor.reevaluate_s))
            start, stop = self._sweep, self._sweep + share
            self._sweep = stop % n
        rows = np.empty(n, np.int64)
        return rows[: _due_rows(self.due_t, float(now), start, stop, rows)]

    def render(self, rows: np.ndarray) -> list[dict[str, Any]]:
        """The sets markets `rows` last published (riskd/wire.py): the governor state
        and the inputs their publish recorded."""
        if not len(rows):
            return []
        g = self.gov
        inputs = self.published_inputs[rows]
        p = inputs[:, INPUTS.index("p")]
        leverage = g.leverage[rows]
        initial = np.stack([p, 1.0 - p], axis=1) / leverage
        ids = self.ids
        return wire.param_sets(
            wire.SetRows(
                markets=[ids[i] for i in rows.tolist()],
                version=g.version[rows],
                mode=g.mode[rows],
                leverage=leverage,
                initial_margin=initial,
                maintenance_margin=self.settings.model.maintenance_ratio * initial,
                fee_hourly=g.fee[rows],
                slippage=g.slippage[rows],
                valid_until=g.valid_until[rows],
                reasons=g.reasons[rows],
                inputs=inputs,
                oi_cap=self._published_caps(rows),
            )
        )

    def _published_caps(self, rows: np.ndarray) -> np.ndarray | None:
        """The caps the sets of `rows` carry; None without caps (`"oi_cap": null`)."""
        if self.caps is None or self.exchange is None:
            return None
        out = np.full((len(rows), 2), np.nan)
        held = rows < self.published_cap.shape[0]
        out[held] = self.published_cap[rows[held]]
        return out


class PublishedSets(Mapping[str, dict[str, Any]]):
    """`engine.current`: market id -> the set it last published in this process, made
    from the engine's arrays when asked for (not kept: a dict per market costs KiBs)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def __getitem__(self, market: str) -> dict[str, Any]:
        e = self._engine
        i = e.index.get(market)
        if i is None or not e.published[i]:
            raise KeyError(market)
        return e.render(np.array([i]))[0]

    def __iter__(self) -> Iterator[str]:
        ids = self._engine.ids
        return (ids[i] for i in np.flatnonzero(self._engine.published).tolist())

    def __len__(self) -> int:
        return int(np.count_nonzero(self._engine.published))

    def sets(self) -> list[dict[str, Any]]:
        """Every set, made in one pass."""
        return self._engine.render(np.flatnonzero(self._engine.published))


def _make_caps(settings: Settings) -> OpenInterestCaps | None:
    cfg = settings.insurance
    if cfg is None:
        return None
    return OpenInterestCaps(cfg, settings.exchange.max_age_s, settings.governor.reevaluate_s)


def compile_kernels(settings: Settings) -> None:
    """Run the model's compiled kernels once, on one market: numba compiles them now
    (the first start on a machine: seconds) or loads them from its cache, instead of
    in the first cycle, with a feed streaming into a blocked event loop. Configures the
    kernels' cache first: this is the daemon's start."""
    configure_cache()
    t0 = 1_700_000_000.0
    engine = Engine(
        settings, {"warm-up": Market("warm-up", t0 + 86_400, t0 + 86_400)}, discover=False
    )
    engine.ingest([Tick("warm-up", t0, 0.5, 0.49, 0.51, 100.0), Tick("warm-up", t0 + 60.0, 0.52)])
    # Ticks as columns, laid out as the compiled Polymarket store hands them over (two
    # rows: one would be contiguous, another layout to compile).
    rows = np.zeros(2, ROW)
    rows[0] = (0, 0, t0 + 61.0, 0.5, 0.49, 0.51, 100.0)
    rows[1] = (0, 0, t0 + 62.0, 0.5, 0.49, 0.51, 100.0)
    engine.enqueue(TickColumns.of_rows(["warm-up"], rows.tobytes()), t0 + 62.0)
    # A live feed's report: what it heard, on a session, and a depth.
    engine.confirm(
        Liveness(heard=[(0, t0 + 62.0, ["warm-up"])], depths={"warm-up": 90.0}, sessions={0: t0})
    )
    engine.cycle(t0 + 62.0)


@njit
def _mark_ticked(idx, t, seen, first_t, due_t):  # type: ignore[no-untyped-def]
    """Ticks (idx[k], t[k]) applied: each market seen, its first tick's time, due at
    the next cycle. Returns how many markets ticked for the first time."""
    new = 0
    for k in range(idx.shape[0]):
        i = idx[k]
        if not seen[i]:
            seen[i] = True
            new += 1
        first_t[i] = fmin(first_t[i], t[k])
        due_t[i] = -np.inf
    return new


@njit
def _heard(rows, sessions, times, link, booked, heard_t):  # type: ignore[no-untyped-def]
    """`Engine.confirm`'s markets heard, in report order (rows < 0: not known,
    skipped): each market once, with the (session, time) of its last report. A market
    heard on another session loses its book."""
    done = np.zeros(link.shape[0], np.bool_)
    for k in range(rows.shape[0] - 1, -1, -1):
        i = rows[k]
        if i < 0 or done[i]:
            continue
        done[i] = True
        if link[i] != sessions[k]:
            booked[i] = False
        link[i] = sessions[k]
        heard_t[i] = fmax(heard_t[i], times[k])


@njit
def _depths(rows, depths, depth, due_t):  # type: ignore[no-untyped-def]
    """`Engine.confirm`'s depth changes (rows -1: not known, skipped): due at once."""
    for k in range(rows.shape[0]):
        i = rows[k]
        if i >= 0:
            depth[i] = depths[k]
            due_t[i] = -np.inf


@njit
def _due_rows(due_t, now, start, stop, rows):  # type: ignore[no-untyped-def]
    """Into `rows`, in order, the markets due at `now` and those of the sweep's share
    [start, stop) (modulo the market count); returns how many."""
    n = due_t.shape[0]
    m = 0
    for i in range(n):
        if due_t[i] <= now or start <= i < stop or i < stop - n:
            rows[m] = i
            m += 1
    return m


@njit
def _freshness(rows, link, t, life, broken, booked, heard_t, confirmed, live_book):  # type: ignore[no-untyped-def]
    """`Engine.freshness` of `rows` into `confirmed` and `live_book`, row by row.
    Returns 0 if none of them is on a live connection, 1 if some are, 2 if a
    connection has no life reported (the numpy version's error, which it raises)."""
    live = 0
    for k in range(rows.shape[0]):
        i = rows[k]
        session = link[i]
        confirmed[k] = t[i]
        live_book[k] = False
        if session < 0:
            continue
        if session >= life.shape[0]:
            return 2
        live = 1
        up = not np.isnan(life[session]) and not broken[i]
        held = booked[i] and up
        heard = fmax(heard_t[i], t[i])
        confirmed[k] = (fmax(heard, life[session]) if held else heard) if up else np.nan
        live_book[k] = held
    return live


def _float64(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float64)


def tick_arrays(ticks: list[Tick]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """t, p, half_spread, depth of ticks (spec section 2: p is the mid when there is a
    book, else the print). Column by column: the per-tick Python work is one
    attribute read per field."""
    n = len(ticks)
    t = np.fromiter(map(_TS, ticks), np.float64, n)
    price = np.fromiter(map(_PRICE, ticks), np.float64, n)
    # None (not sent) becomes nan.
    bid = np.array(list(map(_BID, ticks)), np.float64)
    ask = np.array(list(map(_ASK, ticks)), np.float64)
    depth = np.array(list(map(_DEPTH, ticks)), np.float64)
    p, half_spread = book_arrays(price, bid, ask)
    return t, p, half_spread, depth


_TS, _PRICE, _BID, _ASK, _DEPTH = (
    attrgetter(name) for name in ("ts", "price", "bid", "ask", "depth")
)
_FIRST, _SECOND = itemgetter(0), itemgetter(1)
