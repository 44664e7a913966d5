"""Leveraged traders on a tape, under each policy (spec section 7).

On every market and side a trader opens with collateral 1.0 at the max leverage
offered (or, for a cohort, Traders.cohort: a leverage and a size drawn per
opening), pays the published fees, and is liquidated when equity falls below the
maintenance margin. The judge's rules are the same for every policy (Rules):
from `freeze_before_resolution_s` before the event nothing opens, the leverage
offered is 1x and positions carrying debt are closed; a liquidation takes the
book's depth at the row it goes out (where the tape has a depth), the rest
fills at the next row within `max_slippage` of the order's price, else the
order is re-priced there; what is left open at resolution settles at 0 or 1.
The lender's loss is the shortfall of a close below the debt.

Each policy gives its offers for all rows at once (policies.py); one compiled
pass per policy then walks the rows in time order, with each market's
positions and tallies in arrays.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from riskd.backtest.fund import Fund, FundReport, GroupCaps, account, group_names
from riskd.backtest.policies import Offers, Policy, Riskd
from riskd.config import Settings
from riskd.feeds.base import Tick
from riskd.jit import njit
from riskd.markets import Market
from riskd.ticks import TickColumns

COLLATERAL = 1.0


@dataclass(frozen=True)
class Rules:
    """The judge's rules, the same for every policy (docs/model.md section 8)."""

    max_slippage: float  # a liquidation fill within this of the order's price
    freeze_before_resolution_s: float  # before the event: no opening, debt closed

    @classmethod
    def of(cls, settings: Settings) -> Rules:
        return cls(
            max_slippage=settings.limits.max_slippage,
            freeze_before_resolution_s=settings.governor.freeze_before_resolution_s,
        )


@dataclass
class Tally:
    """One policy's results on one market."""

    bad_debt: float = 0.0
    fees: float = 0.0
    liquidations: int = 0
    worst_jump_loss: float = 0.0
    leverage_time: float = 0.0  # integral of the larger side's max leverage over time
    leveraged_time: float = 0.0  # time with any side above 1x
    time: float = 0.0
    borrowed_hours: float = 0.0  # integral of what the traders owe over time, in hours

    def loss(self, amount: float) -> None:
        if amount > 0.0:
            self.bad_debt += amount
            self.worst_jump_loss = max(self.worst_jump_loss, amount)

    def add(self, other: Tally) -> None:
        self.bad_debt += other.bad_debt
        self.fees += other.fees
        self.liquidations += other.liquidations
        self.worst_jump_loss = max(self.worst_jump_loss, other.worst_jump_loss)
        self.leverage_time += other.leverage_time
        self.leveraged_time += other.leveraged_time
        self.time += other.time
        self.borrowed_hours += other.borrowed_hours

    def as_dict(self) -> dict[str, float | int]:
        return {
            "bad_debt": round(self.bad_debt, 6),
            "fees": round(self.fees, 6),
            "lp_pnl": round(self.fees - self.bad_debt, 6),
            "mean_max_leverage": round(self.leverage_time / self.time, 4) if self.time else 1.0,
            "share_leveraged": round(self.leveraged_time / self.time, 4) if self.time else 0.0,
            "liquidations": self.liquidations,
            "worst_jump_loss": round(self.worst_jump_loss, 6),
        }


# The compiled pass's tally: one row per market, one column per Tally field.
(
    BAD_DEBT,
    FEES,
    LIQUIDATIONS,
    WORST_JUMP_LOSS,
    LEVERAGE_TIME,
    LEVERAGED_TIME,
    TIME,
    BORROWED_HOURS,
) = range(8)
TALLY_FIELDS = (
    "bad_debt",
    "fees",
    "liquidations",
    "worst_jump_loss",
    "leverage_time",
    "leveraged_time",
    "time",
    "borrowed_hours",
)

# The cohort's draws (docs/model.md section 8): the leverage a trader takes is
# uniform between 1x and the max offered, the collateral lognormal with mean 1.
SIZE_SIGMA = 1.0


@dataclass
class Traders:
    """Who opens a position, per tape row and side: the share `frac` of the leverage
    above 1x offered that the trader takes (1: the max) and the collateral `size`.
    Row k's draw is used when a position opens at row k."""

    frac: np.ndarray  # (n, 2) in [0, 1]
    size: np.ndarray  # (n, 2) > 0

    @classmethod
    def at_max(cls, n: int) -> Traders:
        return cls(frac=np.ones((n, 2)), size=np.ones((n, 2)))

    @classmethod
    def cohort(cls, market_ids: list[str], seed: int = 0) -> Traders:
        """Seeded draws for rows whose markets are `market_ids` (in row order). Each
        market's stream is its own (seeded by its id), so a market's draws do not depend
        on what other tapes it is replayed with."""
        n = len(market_ids)
        frac, size = np.ones((n, 2)), np.ones((n, 2))
        rows: dict[str, list[int]] = {}
        for r, m in enumerate(market_ids):
            rows.setdefault(m, []).append(r)
        for m, mine in rows.items():
            rng = np.random.default_rng([seed, zlib.crc32(m.encode())])
            k = len(mine)
            frac[mine] = rng.uniform(0.0, 1.0, (k, 2))
            size[mine] = rng.lognormal(-0.5 * SIZE_SIGMA**2, SIZE_SIGMA, (k, 2))
        return cls(frac=frac, size=size)


@dataclass
class Series:
    """What the plot needs for one market: time, price, each policy's leverage, riskd's fee."""

    t: list[float] = field(default_factory=list)
    p: list[float] = field(default_factory=list)
    leverage: dict[str, list[float]] = field(default_factory=dict)
    fee: list[float] = field(default_factory=list)


@dataclass
class Simulation:
    ids: list[str]
    tallies: dict[str, list[Tally]]  # policy -> per market
    series: list[Series] | None
    jump_times: list[list[float]]  # jumps riskd's estimator detected, per market
    ticks: int = 0
    funds: dict[str, FundReport] | None = None  # policy -> its insurance fund


class Replay(NamedTuple):
    """A tape as the compiled pass reads it: per row its market, time, price and depth;
    per market its resolution, freeze and settlement."""

    market: np.ndarray
    t: np.ndarray
    p: np.ndarray
    depth: np.ndarray
    resolve_t: np.ndarray
    freeze_t: np.ndarray
    settle_at: np.ndarray
    max_slippage: float

    @classmethod
    def of(
        cls,
        ticks: Sequence[Tick] | TickColumns,
        ids: list[str],
        markets: dict[str, Market],
        settle: bool,
        rules: Rules,
    ) -> Replay:
        cols = TickColumns.of(ticks)
        index = {m: i for i, m in enumerate(ids)}
        market = np.array([index[m] for m in cols.markets], np.int64)[cols.market]
        t = cols.ts
        # The mid when there is a book, else the print.
        p, _ = cols.book()
        # Shares within max_slippage of the mid where the tape has a book (nan: unknown).
        depth = cols.depth
        resolve_t = np.array(
            [markets[m].resolves_at if m in markets else np.inf for m in ids], np.float64
        )
        # The freeze, for every policy, from the event time where the markets file has one.
        freeze_t = np.array(
            [
                markets[m].event_at - rules.freeze_before_resolution_s if m in markets else np.inf
                for m in ids
            ],
            np.float64,
        )
        freeze_t[np.isnan(freeze_t)] = np.inf
        # Settlement: at the outcome where it is known and asked for (nan: at the last price).
        outcomes = [markets[m].outcome if settle and m in markets else None for m in ids]
        settle_at = np.array([np.nan if o is None else float(o) for o in outcomes], np.float64)
        return cls(
            market=market,
            t=t,
            p=p,
            depth=depth,
            resolve_t=resolve_t,
            freeze_t=freeze_t,
            settle_at=settle_at,
            max_slippage=float(rules.max_slippage),
        )

    def run(self, offers: Offers, traders: Traders | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One policy's offers through the pass: (tally per market, leverage offered)."""
        return _run(self, offers, traders)


def simulate(
    ticks: Sequence[Tick] | TickColumns,
    ids: list[str],
    markets: dict[str, Market],
    policies: list[Policy],
    settle: bool,
    rules: Rules,
    record: bool = False,
    traders: Traders | None = None,
    fund: Fund | None = None,
) -> Simulation:
    """Each policy through the pass. With a `fund`, riskd's openings are capped by the
    open-interest caps (fund.GroupCaps) and every policy's bad debt goes through it."""
    cols = TickColumns.of(ticks)
    replay = Replay.of(cols, ids, markets, settle, rules)
    market, t, p = replay.market, replay.t, replay.p
    live = ~(t >= replay.resolve_t[market])  # rows before resolution: trading has ended after

    for pol in policies:
        pol.prepare(cols)
    tallies: dict[str, list[Tally]] = {}
    max_leverage: dict[str, np.ndarray] = {}
    fee = np.zeros(0)
    funds: dict[str, FundReport] = {}
    for pol in policies:
        offers = pol.offers(t, p)
        if fund is None:
            table, leverage = replay.run(offers, traders)
        else:
            table, leverage, funds[pol.name] = _through_fund(
                pol, offers, replay, traders, ids, markets, fund
            )
        tallies[pol.name] = [_tally(row) for row in table.tolist()]
        max_leverage[pol.name] = _max2(leverage)
        if pol.name == "riskd":
            fee = _max2(offers.fee_hourly)

    series = _series(len(ids), market, live, t, p, max_leverage, fee) if record else None
    jump_times: list[list[float]] = [[] for _ in ids]
    for pol in policies:
        if isinstance(pol, Riskd):
            rows = np.flatnonzero(pol.jump)
            for i, jump_t in zip(market[rows].tolist(), t[rows].tolist(), strict=True):
                jump_times[i].append(jump_t)
    return Simulation(
        ids=ids,
        tallies=tallies,
        series=series,
        jump_times=jump_times,
        ticks=int(live.sum()),
        funds=None if fund is None else funds,
    )


def _through_fund(
    pol: Policy,
    offers: Offers,
    replay: Replay,
    traders: Traders | None,
    ids: list[str],
    markets: dict[str, Market],
    fund: Fund,
) -> tuple[np.ndarray, np.ndarray, FundReport]:
    """One policy through the pass with its bad debt through the fund; riskd's openings
    capped by its open-interest caps."""
    capper = GroupCaps(pol, replay, ids, markets, fund) if isinstance(pol, Riskd) else None
    table, leverage, log, caps = run_capped(
        replay, offers, traders, capper, capper.refresh_s if capper else 0.0
    )
    report = account(log, group_names(ids, markets), fund)
    if capper is not None:
        report.caps = {
            "reduced": int(caps.reduced.sum()),
            "refused": int(caps.refused.sum()),
            "evaluations": capper.calls,
        }
    return table, leverage, report


def _run(
    replay: Replay, offers: Offers, traders: Traders | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One policy through the compiled pass: the tally per market, and the leverage
    offered after each row (filled in by the pass for an open-interest tier)."""
    table, leverage, _, _ = run_capped(replay, offers, traders)
    return table, leverage


# Sets the caps (CapState.lent, at, stale) at a row, from the book: fund.py.
Capper = Callable[[int, "Book", "CapState"], None]


def run_capped(
    replay: Replay,
    offers: Offers,
    traders: Traders | None = None,
    capper: Capper | None = None,
    refresh_s: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, LossLog, CapState]:
    """`_run`, with a cap on what each opening lends where `capper` is given (set
    at the first opening, after every opening and every refresh_s), and each bad
    debt in time: (tally, leverage offered, the losses, the caps' counts)."""
    # Without a fallback the offer never expires: its own rows stand in for one.
    fb = offers if offers.fallback is None else offers.fallback
    n = replay.t.shape[0]
    m = replay.resolve_t.shape[0]
    # Copies: the pass writes a tier's leverage and maintenance, and the freeze's 1x, into them.
    offer = OfferRows(
        leverage=_f64(offers.leverage).copy(),
        maintenance=_f64(offers.maintenance).copy(),
        fee_hourly=_f64(offers.fee_hourly),
        open_fee=_f64(offers.open_fee),
        opening=_flags(offers.opening),
        deleverage=_flags(offers.deleverage),
        expires_after=_f64(np.full(n, np.inf) if offers.fallback is None else offers.expires_after),
    )
    fallback = FallbackRows(
        leverage=_f64(fb.leverage),
        maintenance=_f64(fb.maintenance),
        fee_hourly=_f64(fb.fee_hourly),
        deleverage=_flags(fb.deleverage),
    )
    tier = offers.oi_tier
    scaled = (
        TierScale(
            on=True,
            lower_cap=float(tier.lower_cap),
            upper_cap=float(tier.upper_cap),
            base_imf=float(tier.base_imf),
        )
        if tier
        else TierScale(False, 0.0, 0.0, 0.0)
    )
    if traders is None:
        traders = Traders.at_max(n)
    draws = TraderDraws(frac=_f64(traders.frac), size=_f64(traders.size))
    table = np.zeros((m, len(TALLY_FIELDS)))
    book = Book.empty(m)
    caps = CapState.empty(m, capper is not None, refresh_s)
    log = LossLog.empty(n + m)
    row = _trade(replay, offer, fallback, scaled, draws, table, book, caps, log, 0, False)
    while row >= 0:
        assert capper is not None
        capper(row, book, caps)
        row = _trade(replay, offer, fallback, scaled, draws, table, book, caps, log, row, True)
    return table, offer.leverage, log, caps


class Book(NamedTuple):
    """The pass's positions, per market and side (long YES, long NO), and per market
    the row whose offer is in force (-1: none yet) and its time and price."""

    held: np.ndarray
    shares: np.ndarray
    debt: np.ndarray  # lent, plus fees accrued on it, less what a partial fill paid
    armed: np.ndarray  # side value when a liquidation order went out (nan: none)
    prev: np.ndarray
    last_t: np.ndarray
    last_p: np.ndarray

    @classmethod
    def empty(cls, m: int) -> Book:
        return cls(
            held=np.zeros((m, 2), np.bool_),
            shares=np.zeros((m, 2)),
            debt=np.zeros((m, 2)),
            armed=np.full((m, 2), np.nan),
            prev=np.full(m, -1, np.int64),
            last_t=np.full(m, np.nan),
            last_p=np.full(m, np.nan),
        )

    def lent(self) -> np.ndarray:
        """Open interest: what each market side owes (m, 2), 0 where nothing is held."""
        return np.where(self.held, np.maximum(self.debt, 0.0), 0.0)


class CapState(NamedTuple):
    """The most an opening may lend per market and side (inf: no cap), when they were
    set and whether an opening has happened since; the openings a cap reduced, and
    the rows at which it refused one (a cap of 0: the trader tries again)."""

    on: bool
    lent: np.ndarray  # (m, 2)
    at: np.ndarray  # (1,)
    stale: np.ndarray  # (1,) bool
    refresh_s: float
    reduced: np.ndarray  # (m, 2) int64
    refused: np.ndarray  # (m, 2) int64

    @classmethod
    def empty(cls, m: int, on: bool, refresh_s: float) -> CapState:
        return cls(
            on=on,
            lent=np.full((m, 2), np.inf),
            at=np.full(1, -np.inf),
            stale=np.ones(1, np.bool_),
            refresh_s=float(refresh_s),
            reduced=np.zeros((m, 2), np.int64),
            refused=np.zeros((m, 2), np.int64),
        )


class LossLog(NamedTuple):
    """Bad debt as it happened: per entry its time, market and amount."""

    t: np.ndarray
    market: np.ndarray
    amount: np.ndarray
    filled: np.ndarray  # (1,): entries written

    @classmethod
    def empty(cls, size: int) -> LossLog:
        return cls(
            t=np.zeros(size),
            market=np.zeros(size, np.int64),
            amount=np.zeros(size),
            filled=np.zeros(1, np.int64),
        )

    def used(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k = int(self.filled[0])
        return self.t[:k], self.market[:k], self.amount[:k]


class OfferRows(NamedTuple):
    """Offers as the compiled pass reads them: row k is in force after row k."""

    leverage: np.ndarray  # (n, 2), written by the pass (a tier, the freeze)
    maintenance: np.ndarray  # (n, 2), likewise
    fee_hourly: np.ndarray  # (n, 2)
    open_fee: np.ndarray  # (n, 2)
    opening: np.ndarray  # bool
    deleverage: np.ndarray  # bool
    expires_after: np.ndarray  # s after row k the fallback's row k is in force


class FallbackRows(NamedTuple):
    """The fallback's offers: in force from expires_after[k] after row k."""

    leverage: np.ndarray
    maintenance: np.ndarray
    fee_hourly: np.ndarray
    deleverage: np.ndarray


class TierScale(NamedTuple):
    """An open-interest tier (policies.OITier); on False, none."""

    on: bool
    lower_cap: float
    upper_cap: float
    base_imf: float


class TraderDraws(NamedTuple):
    """Traders' draws, as the compiled pass reads them."""

    frac: np.ndarray  # (n, 2)
    size: np.ndarray  # (n, 2)


def _f64(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float64)


def _flags(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.bool_)


def _tally(row: list[float]) -> Tally:
    tally = Tally()
    for name, value in zip(TALLY_FIELDS, row, strict=True):
        setattr(tally, name, int(value) if name == "liquidations" else value)
    return tally


def _max2(a: np.ndarray) -> np.ndarray:
    """Each row's max(a[k, 0], a[k, 1]), taken as Python's max of the pair does."""
    return np.where(a[:, 1] > a[:, 0], a[:, 1], a[:, 0])


def _series(
    n: int,
    market: np.ndarray,
    live: np.ndarray,
    t: np.ndarray,
    p: np.ndarray,
    leverage: dict[str, np.ndarray],
    fee: np.ndarray,
) -> list[Series]:
    """Per market, its rows before resolution in time order."""
    rows = np.flatnonzero(live)
    rows = rows[np.argsort(market[rows], kind="stable")]
    end = np.cumsum(np.bincount(market[rows], minlength=n)).tolist()
    out = []
    for i in range(n):
        mine = rows[end[i - 1] if i else 0 : end[i]]
        out.append(
            Series(
                t=t[mine].tolist(),
                p=p[mine].tolist(),
                leverage={name: lev[mine].tolist() for name, lev in leverage.items()},
                fee=fee[mine].tolist() if fee.shape[0] else [],
            )
        )
    return out


@njit
def _trade(  # type: ignore[no-untyped-def]
    replay,
    offer,
    fallback,
    tier,
    traders,
    tally,
    book,
    caps,
    log,
    start,
    resume,
):
    """The rows from `start` in time order for one policy; tally (markets, 8) is added to.

    Row k of `offer` holds what is in force after row k; `fallback` what is in force
    from offer.expires_after[k] seconds after it. With a `tier` (TierScale), leverage
    and maintenance come from the open interest and are written into row k as it is
    reached; from freeze_t of its market a row's leverage is written as 1x. A
    position opening at row r takes traders.frac[r, s] of the leverage above 1x
    offered, with collateral traders.size[r, s], and lends no more than caps.lent.

    With caps.on, the pass returns the row at which a position would open while the
    caps are stale (an opening since they were set, or refresh_s passed): the caller
    sets them and resumes at that row (`resume`: its liquidations are done). Else it
    settles what is open and returns -1. Each row's and settlement's bad debt is
    written to `log`.
    """
    market, t, p, depth = replay.market, replay.t, replay.p, replay.depth
    resolve_t, freeze_t, settle_at = replay.resolve_t, replay.freeze_t, replay.settle_at
    slippage = replay.max_slippage
    leverage, maintenance, fee = offer.leverage, offer.maintenance, offer.fee_hourly
    open_fee, opening, deleverage = offer.open_fee, offer.opening, offer.deleverage
    expires_after = offer.expires_after
    frac, size = traders.frac, traders.size
    m = resolve_t.shape[0]
    # Per market and side (long YES, long NO): the trader's position, if held.
    held, shares, debt, armed = book.held, book.shares, book.debt, book.armed
    prev, last_t, last_p = book.prev, book.last_t, book.last_p
    values = np.zeros(2)
    for r in range(start, t.shape[0]):
        i = market[r]
        if t[r] >= resolve_t[i]:
            continue  # trading has ended; open positions settle below
        values[0], values[1] = p[r], 1.0 - p[r]
        frozen = t[r] >= freeze_t[i]
        if not (resume and r == start):
            bad_before = tally[i, BAD_DEBT]
            q = prev[i]
            if q >= 0:
                dt = t[r] - last_t[i]
                live = expires_after[q] if expires_after[q] < dt else dt
                _accrue(book, i, fee, q, live, tally)
                lev = _max(leverage, q)
                if dt <= live:
                    _step(
                        book,
                        i,
                        values,
                        depth[r],
                        maintenance,
                        q,
                        slippage,
                        deleverage[q] or frozen,
                        tally,
                    )
                    lev_now = lev
                else:  # no price for expires_after: the fallback for the rest
                    _accrue(book, i, fallback.fee_hourly, q, dt - live, tally)
                    _step(
                        book,
                        i,
                        values,
                        depth[r],
                        fallback.maintenance,
                        q,
                        slippage,
                        fallback.deleverage[q] or frozen,
                        tally,
                    )
                    lev_now = _max(fallback.leverage, q)
                tally[i, LEVERAGE_TIME] += lev * live + lev_now * (dt - live)
                tally[i, LEVERAGED_TIME] += live if lev > 1.0 else 0.0
                tally[i, TIME] += dt
            _log(log, t[r], i, tally[i, BAD_DEBT] - bad_before)
            if tier.on:
                oi = 0.0
                for s in range(2):
                    if held[i, s]:
                        oi += shares[i, s] * values[s]
                scale = (oi - tier.lower_cap) / (tier.upper_cap - tier.lower_cap)
                # min(1, max(0, scale)) as Python takes it
                scale = scale if scale > 0.0 else 0.0
                scale = scale if scale < 1.0 else 1.0
                imf = tier.base_imf + (1.0 - tier.base_imf) * scale
                leverage[r, 0] = leverage[r, 1] = 1.0 / imf
                maintenance[r, 0] = maintenance[r, 1] = 0.6 * imf
            if frozen:
                leverage[r, 0] = leverage[r, 1] = 1.0
            if (
                caps.on
                and opening[r]
                and not deleverage[r]
                and not frozen
                and (caps.stale[0] or t[r] > caps.at[0] + caps.refresh_s)
            ):
                for s in range(2):
                    if not held[i, s] and leverage[r, s] > 1.0 and values[s] > 0.0:
                        return r
        if opening[r] and not deleverage[r] and not frozen:
            for s in range(2):
                lev_s = leverage[r, s]
                if not held[i, s] and lev_s > 1.0 and values[s] > 0.0:
                    # Written so that frac 1 and size 1 give the max exactly.
                    lev_s = lev_s - (1.0 - frac[r, s]) * (lev_s - 1.0)
                    c = COLLATERAL * size[r, s]
                    # An opening fee comes out of the collateral: the rest is lent too.
                    paid = open_fee[r, s] * lev_s * c
                    lent = c * (lev_s - 1.0) + paid
                    if lent > caps.lent[i, s]:  # the cap: a smaller position, same leverage
                        if not caps.lent[i, s] > 0.0:
                            caps.refused[i, s] += 1
                            continue
                        caps.reduced[i, s] += 1
                        c *= caps.lent[i, s] / lent
                        paid = open_fee[r, s] * lev_s * c
                        lent = c * (lev_s - 1.0) + paid
                    held[i, s] = True
                    shares[i, s] = c * lev_s / values[s]
                    debt[i, s] = lent
                    tally[i, FEES] += paid
                    armed[i, s] = np.nan
                    caps.stale[0] = True
        prev[i] = r
        last_t[i], last_p[i] = t[r], p[r]

    # Settlement: at the outcome where it is known and asked for, else at the last price.
    for i in range(m):
        p_end = settle_at[i] if settle_at[i] == settle_at[i] else last_p[i]
        if p_end != p_end:
            continue
        bad_before = tally[i, BAD_DEBT]
        for s in range(2):
            if held[i, s]:
                value = p_end if s == 0 else 1.0 - p_end
                _loss(tally, i, debt[i, s] - shares[i, s] * value)
        _log(
            log,
            resolve_t[i] if resolve_t[i] < np.inf else last_t[i],
            i,
            tally[i, BAD_DEBT] - bad_before,
        )
    return -1


@njit
def _log(log, t, market, amount):  # type: ignore[no-untyped-def]
    if amount > 0.0:
        k = log.filled[0]
        log.t[k], log.market[k], log.amount[k] = t, market, amount
        log.filled[0] = k + 1


@njit
def _max(pairs: np.ndarray, k: int) -> float:
    return pairs[k, 1] if pairs[k, 1] > pairs[k, 0] else pairs[k, 0]


@njit
def _loss(tally: np.ndarray, i: int, amount: float) -> None:
    if amount > 0.0:
        tally[i, BAD_DEBT] += amount
        if amount > tally[i, WORST_JUMP_LOSS]:
            tally[i, WORST_JUMP_LOSS] = amount


@njit
def _accrue(book, i, fee_hourly, q, dt, tally):  # type: ignore[no-untyped-def]
    """The fee in force (row q of fee_hourly) on what market i lends, for dt seconds;
    unpaid fees add to the debt."""
    held, debt = book.held, book.debt
    for s in range(2):
        if held[i, s] and dt > 0.0 and debt[i, s] > 0.0:
            tally[i, BORROWED_HOURS] += debt[i, s] * dt / 3600.0
            fee = fee_hourly[q, s] * debt[i, s] * dt / 3600.0
            debt[i, s] += fee
            tally[i, FEES] += fee


@njit(inline=True)
def _step(book, i, values, depth, maintenance, q, slippage, deleverage, tally):  # type: ignore[no-untyped-def]
    """Liquidation fills and triggers of market i at this price (the row's depth:
    `depth`; the maintenance in force: row q of `maintenance`)."""
    held, shares, debt, armed = book.held, book.shares, book.debt, book.armed
    for s in range(2):
        if not held[i, s]:
            continue
        value = values[s]
        if armed[i, s] == armed[i, s]:  # an order is out
            if abs(value - armed[i, s]) <= slippage + 1e-12:
                _close(book, i, s, value, tally)
            else:
                armed[i, s] = value  # no fill within the limit: the order is re-priced
                _take_book(book, i, s, value, depth, slippage, tally)
            continue
        equity = shares[i, s] * value - debt[i, s]
        if equity < maintenance[q, s] * shares[i, s] * value or (deleverage and debt[i, s] > 0):
            armed[i, s] = value  # what the book does not take fills at the next price
            _take_book(book, i, s, value, depth, slippage, tally)


@njit
def _take_book(book, i, s, value, depth, slippage, tally):  # type: ignore[no-untyped-def]
    """An order going out at `value` sells into the book's depth (shares within slippage
    of the mid, nan unknown), walking a linear book: x of d shares fill on average
    slippage * x / (2 d) below the price."""
    if not depth > 0.0:
        return
    shares, debt = book.shares, book.debt
    x = shares[i, s] if shares[i, s] < depth else depth
    price = value - slippage * x / (2.0 * depth)
    price = price if price > 0.0 else 0.0
    debt[i, s] -= x * price
    shares[i, s] -= x
    if shares[i, s] <= 0.0:
        _close(book, i, s, 0.0, tally)


@njit
def _close(book, i, s, value, tally):  # type: ignore[no-untyped-def]
    """The rest of the position fills at `value`: a liquidation, a loss if short of debt."""
    _loss(tally, i, book.debt[i, s] - book.shares[i, s] * value)
    tally[i, LIQUIDATIONS] += 1
    book.held[i, s] = False
