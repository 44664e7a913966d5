"""Leveraged traders on a tape, under each policy (spec section 7).

On every market and side a trader opens with collateral 1.0 at the max leverage
offered, pays the published fee on what is lent, is liquidated when equity
falls below the maintenance margin (the fill at the next tape price, within the
policy's slippage limit, else re-armed at the next), and settles at 0 or 1 at
resolution. The lender's loss is the shortfall of a close below the debt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from riskd.backtest.policies import Offer, Policy, Riskd
from riskd.feeds.base import Tick
from riskd.markets import Market

COLLATERAL = 1.0


@dataclass(slots=True)
class Position:
    shares: float
    debt: float  # lent, plus fees accrued on it
    armed: float | None = None  # side value when a liquidation order went out


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


def simulate(
    ticks: list[Tick],
    ids: list[str],
    markets: dict[str, Market],
    policies: list[Policy],
    settle: bool,
    record: bool = False,
) -> Simulation:
    index = {m: i for i, m in enumerate(ids)}
    n = len(ids)
    resolve_t = [markets[m].resolves_at if m in markets else float("inf") for m in ids]
    tallies = {pol.name: [Tally() for _ in range(n)] for pol in policies}
    positions: list[list[list[Position | None]]] = [[[None, None] for _ in range(n)]
                                                    for _ in policies]
    offers: list[list[Offer | None]] = [[None] * n for _ in policies]
    last_t = [float("nan")] * n
    last_p = [float("nan")] * n
    series = [Series(leverage={pol.name: [] for pol in policies}) for _ in range(n)] \
        if record else None
    count = 0

    for pol in policies:
        pol.prepare(ticks)
    for row, tick in enumerate(ticks):
        i = index[tick.market]
        t = tick.ts
        if t >= resolve_t[i]:
            continue  # trading has ended; open positions settle below
        count += 1
        p = tick.price if tick.bid is None or tick.ask is None else 0.5 * (tick.bid + tick.ask)
        values = (p, 1.0 - p)
        dt = t - last_t[i] if last_t[i] == last_t[i] else 0.0
        for k, pol in enumerate(policies):
            tally = tallies[pol.name][i]
            prev = offers[k][i]
            if prev is not None:
                live = min(dt, prev.expires_after)
                now_in_force = prev if prev.fallback is None or dt <= live else prev.fallback
                _accrue(positions[k][i], prev, live, tally)
                if now_in_force is not prev:
                    _accrue(positions[k][i], now_in_force, dt - live, tally)
                _step_positions(positions[k][i], now_in_force, values, tally)
                lev = max(prev.leverage)
                tally.leverage_time += lev * live + max(now_in_force.leverage) * (dt - live)
                tally.leveraged_time += live if lev > 1.0 else 0.0
                tally.time += dt
            pos = positions[k][i]
            oi = sum(q.shares * values[s] for s, q in enumerate(pos) if q is not None)
            offer = pol.offer(row, t, p, oi)
            offers[k][i] = offer
            if offer.opening and not offer.deleverage:
                for s in (0, 1):
                    lev_s = offer.leverage[s]
                    if pos[s] is None and lev_s > 1.0 and values[s] > 0.0:
                        pos[s] = Position(shares=COLLATERAL * lev_s / values[s],
                                          debt=COLLATERAL * (lev_s - 1.0))
            if series is not None:
                series[i].leverage[pol.name].append(max(offer.leverage))
                if pol.name == "riskd":
                    series[i].fee.append(max(offer.fee_hourly))
        if series is not None:
            series[i].t.append(t)
            series[i].p.append(p)
        last_t[i], last_p[i] = t, p

    # Settlement: at the outcome where it is known and asked for, else at the last price.
    for k, pol in enumerate(policies):
        for i, m in enumerate(ids):
            outcome = markets[m].outcome if settle and m in markets else None
            p_end = float(outcome) if outcome is not None else last_p[i]
            for s, pos_s in enumerate(positions[k][i]):
                if pos_s is None or p_end != p_end:
                    continue
                value = p_end if s == 0 else 1.0 - p_end
                tallies[pol.name][i].loss(pos_s.debt - pos_s.shares * value)
    jump_times: list[list[float]] = [[] for _ in ids]
    for pol in policies:
        if isinstance(pol, Riskd):
            for jump_row in np.flatnonzero(pol.jump).tolist():
                jump_times[index[ticks[jump_row].market]].append(ticks[jump_row].ts)
    return Simulation(ids=ids, tallies=tallies, series=series, jump_times=jump_times,
                      ticks=count)


def _accrue(pos: list[Position | None], offer: Offer, dt: float, tally: Tally) -> None:
    """The fee in force on what is lent, for dt seconds; unpaid fees add to the debt."""
    for s in (0, 1):
        q = pos[s]
        if q is not None and dt > 0.0:
            fee = offer.fee_hourly[s] * q.debt * dt / 3600.0
            q.debt += fee
            tally.fees += fee


def _step_positions(pos: list[Position | None], offer: Offer, values: tuple[float, float],
                    tally: Tally) -> None:
    """Liquidation fills and triggers at this price."""
    for s in (0, 1):
        q = pos[s]
        if q is None:
            continue
        value = values[s]
        if q.armed is not None:
            limit = offer.slippage
            if limit is None or abs(value - q.armed) <= limit + 1e-12:
                tally.loss(q.debt - q.shares * value)
                tally.liquidations += 1
                pos[s] = None
            else:
                q.armed = value  # no fill within the limit: the order is re-priced
            continue
        equity = q.shares * value - q.debt
        if equity < offer.maintenance[s] * q.shares * value or (offer.deleverage and q.debt > 0):
            q.armed = value  # fills at the next tape price
