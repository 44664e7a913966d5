"""The compiled trader simulation against a plain Python one (spec section 7).

The reference below is the row-by-row loop the backtest used before it was
compiled, with the judge's rules since added (freeze, depth, one slippage
limit), reading the same offers; on a seeded ensemble with random offers
(stale fallbacks, opening fees, deleveraging, rows after resolution, a book's
depth, a freeze) both must give the same floats, not merely close ones. The policies' offer arrays
are checked against their per-row definitions the same way.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import pytest

from riskd.backtest import synthetic
from riskd.backtest.policies import (
    FLAT_FEE_HOURLY,
    D8XEntropy,
    Offers,
    OpenInterestScaled,
    Policy,
    Riskd,
    Static,
    all_policies,
)
from riskd.backtest.simulate import Rules, Series, Tally, Traders, simulate
from riskd.config import Settings, load_settings
from riskd.feeds.base import Tick
from riskd.markets import Market
from riskd.model.governor import NORMAL

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(ROOT / "config/riskd.toml")


@dataclass
class Position:
    shares: float
    debt: float
    armed: float | None = None


@dataclass
class Offer:
    leverage: tuple[float, float]
    maintenance: tuple[float, float]
    fee_hourly: tuple[float, float]
    open_fee: tuple[float, float]
    opening: bool
    deleverage: bool
    expires_after: float
    fallback: Offer | None


def _row(o: Offers, r: int) -> Offer:
    def pair(a: np.ndarray) -> tuple[float, float]:
        return float(a[r, 0]), float(a[r, 1])

    return Offer(
        pair(o.leverage),
        pair(o.maintenance),
        pair(o.fee_hourly),
        pair(o.open_fee),
        bool(o.opening[r]),
        bool(o.deleverage[r]),
        float(o.expires_after[r]) if o.fallback else math.inf,
        _row(o.fallback, r) if o.fallback else None,
    )


def _offer(o: Offers, r: int, oi: float) -> Offer:
    offer = _row(o, r)
    if o.oi_tier is not None:  # the tier's rule as OpenInterestScaled.offer had it
        tier = o.oi_tier
        scale = (oi - tier.lower_cap) / (tier.upper_cap - tier.lower_cap)
        imf = tier.base_imf + (1.0 - tier.base_imf) * min(1.0, max(0.0, scale))
        offer = replace(offer, leverage=(1.0 / imf, 1.0 / imf), maintenance=(0.6 * imf, 0.6 * imf))
    return offer


def _accrue(pos: list[Position | None], offer: Offer, dt: float, tally: Tally) -> None:
    for s in (0, 1):
        q = pos[s]
        if q is not None and dt > 0.0 and q.debt > 0.0:
            tally.borrowed_hours += q.debt * dt / 3600.0
            fee = offer.fee_hourly[s] * q.debt * dt / 3600.0
            q.debt += fee
            tally.fees += fee


def _close(pos: list[Position | None], s: int, value: float, tally: Tally) -> None:
    q = pos[s]
    assert q is not None
    tally.loss(q.debt - q.shares * value)
    tally.liquidations += 1
    pos[s] = None


def _take_book(
    pos: list[Position | None],
    s: int,
    value: float,
    depth: float | None,
    slippage: float,
    tally: Tally,
) -> None:
    q = pos[s]
    if q is None or depth is None or not depth > 0.0:
        return
    x = min(q.shares, depth)
    price = max(value - slippage * x / (2.0 * depth), 0.0)
    q.debt -= x * price
    q.shares -= x
    if q.shares <= 0.0:
        _close(pos, s, 0.0, tally)


def _step(
    pos: list[Position | None],
    offer: Offer,
    values: tuple[float, float],
    depth: float | None,
    slippage: float,
    frozen: bool,
    tally: Tally,
) -> None:
    for s in (0, 1):
        q = pos[s]
        if q is None:
            continue
        value = values[s]
        if q.armed is not None:
            if abs(value - q.armed) <= slippage + 1e-12:
                _close(pos, s, value, tally)
            else:
                q.armed = value
                _take_book(pos, s, value, depth, slippage, tally)
            continue
        equity = q.shares * value - q.debt
        if equity < offer.maintenance[s] * q.shares * value or (
            (offer.deleverage or frozen) and q.debt > 0
        ):
            q.armed = value
            _take_book(pos, s, value, depth, slippage, tally)


def reference(
    ticks: list[Tick],
    ids: list[str],
    markets: dict[str, Market],
    policies: list[Policy],
    settle: bool,
    rules: Rules,
    traders: Traders | None = None,
) -> tuple[dict[str, list[Tally]], list[Series], int]:
    """The backtest's former Python loop, on the policies' offer arrays; a trader opening
    at a row takes that row's draw of `traders` (default: the max, collateral 1)."""
    if traders is None:
        traders = Traders.at_max(len(ticks))
    index = {m: i for i, m in enumerate(ids)}
    n = len(ids)
    resolve_t = [markets[m].resolves_at if m in markets else float("inf") for m in ids]
    freeze_t = [
        markets[m].event_at - rules.freeze_before_resolution_s if m in markets else float("inf")
        for m in ids
    ]
    tallies = {pol.name: [Tally() for _ in range(n)] for pol in policies}
    positions: list[list[list[Position | None]]] = [
        [[None, None] for _ in range(n)] for _ in policies
    ]
    offers: list[list[Offer | None]] = [[None] * n for _ in policies]
    last_t = [float("nan")] * n
    last_p = [float("nan")] * n
    series = [Series(leverage={pol.name: [] for pol in policies}) for _ in range(n)]
    count = stale = 0
    t_all = np.array([tk.ts for tk in ticks])
    p_all = np.array(
        [tk.price if tk.bid is None or tk.ask is None else 0.5 * (tk.bid + tk.ask) for tk in ticks]
    )
    for pol in policies:
        pol.prepare(ticks)
    arrays = [pol.offers(t_all, p_all) for pol in policies]
    for row, tick in enumerate(ticks):
        i = index[tick.market]
        t = tick.ts
        if t >= resolve_t[i]:
            continue
        count += 1
        p = tick.price if tick.bid is None or tick.ask is None else 0.5 * (tick.bid + tick.ask)
        values = (p, 1.0 - p)
        frozen = t >= freeze_t[i]
        dt = t - last_t[i] if last_t[i] == last_t[i] else 0.0
        for k, pol in enumerate(policies):
            tally = tallies[pol.name][i]
            prev = offers[k][i]
            if prev is not None:
                live = min(dt, prev.expires_after)
                now_in_force = prev if prev.fallback is None or dt <= live else prev.fallback
                stale += now_in_force is not prev
                _accrue(positions[k][i], prev, live, tally)
                if now_in_force is not prev:
                    _accrue(positions[k][i], now_in_force, dt - live, tally)
                _step(
                    positions[k][i],
                    now_in_force,
                    values,
                    tick.depth,
                    rules.max_slippage,
                    frozen,
                    tally,
                )
                lev = max(prev.leverage)
                tally.leverage_time += lev * live + max(now_in_force.leverage) * (dt - live)
                tally.leveraged_time += live if lev > 1.0 else 0.0
                tally.time += dt
            pos = positions[k][i]
            oi = sum(q.shares * values[s] for s, q in enumerate(pos) if q is not None)
            offer = _offer(arrays[k], row, oi)
            if frozen:
                offer = replace(offer, leverage=(1.0, 1.0))
            offers[k][i] = offer
            if offer.opening and not offer.deleverage and not frozen:
                for s in (0, 1):
                    lev_s = offer.leverage[s]
                    if pos[s] is None and lev_s > 1.0 and values[s] > 0.0:
                        frac, size = traders.frac[row, s], traders.size[row, s]
                        lev_s = lev_s - (1.0 - frac) * (lev_s - 1.0)
                        paid = offer.open_fee[s] * lev_s * size
                        pos[s] = Position(
                            shares=size * lev_s / values[s], debt=size * (lev_s - 1.0) + paid
                        )
                        tally.fees += paid
            series[i].leverage[pol.name].append(max(offer.leverage))
            if pol.name == "riskd":
                series[i].fee.append(max(offer.fee_hourly))
        series[i].t.append(t)
        series[i].p.append(p)
        last_t[i], last_p[i] = t, p
    for k, pol in enumerate(policies):
        for i, m in enumerate(ids):
            outcome = markets[m].outcome if settle and m in markets else None
            p_end = float(outcome) if outcome is not None else last_p[i]
            for s, pos_s in enumerate(positions[k][i]):
                if pos_s is None or p_end != p_end:
                    continue
                value = p_end if s == 0 else 1.0 - p_end
                tallies[pol.name][i].loss(pos_s.debt - pos_s.shares * value)
    assert stale > 0 or not any(a.fallback for a in arrays)
    return tallies, series, count


class RandomOffers:
    """Seeded random offers with every feature the simulation reads, fallback included."""

    def __init__(self, name: str, seed: int, fallback: bool) -> None:
        self.name, self.seed, self.fallback = name, seed, fallback

    def prepare(self, ticks: list[Tick]) -> None:
        return None

    def offers(self, t: np.ndarray, p: np.ndarray) -> Offers:
        rng = np.random.default_rng(self.seed)
        n = t.shape[0]

        def draw(top: float) -> Offers:
            o = Offers.constant(n, 1.0, 0.0, 0.0)
            o.leverage[:] = np.where(rng.random((n, 2)) < 0.1, 1.0, rng.uniform(1.0, top, (n, 2)))
            o.maintenance[:] = rng.uniform(0.01, 0.3, (n, 2))
            o.fee_hourly[:] = rng.uniform(0.0, 1e-3, (n, 2))
            o.open_fee[:] = np.where(rng.random((n, 2)) < 0.5, 0.0, rng.uniform(0.0, 0.2, (n, 2)))
            o.opening[:] = rng.random(n) < 0.9
            o.deleverage[:] = rng.random(n) < 0.03
            o.expires_after[:] = rng.choice([np.inf, 120.0, 900.0], n)
            return o

        offers = draw(25.0)
        if self.fallback:
            offers.fallback = draw(3.0)
        return offers


def _ensemble(seed: int) -> tuple[list[Tick], list[str], dict[str, Market]]:
    """Seeded markets, some resolving early (rows after it), one without metadata, one
    quoted with a book and its depth (often less than a position), two touching a price
    of 0 or 1, one whose event (and freeze) comes halfway through its rows."""
    ticks, markets, _ = synthetic.ensemble(n=12, seed=seed, days=1.0)
    ids = sorted(markets)
    for m, price in ((ids[6], 1.0), (ids[7], 0.0)):
        rows = [r for r, tk in enumerate(ticks) if tk.market == m]
        for r in rows[len(rows) // 2 : len(rows) // 2 + 3]:
            ticks[r] = replace(ticks[r], price=price)
    for k, m in enumerate(ids[:4]):  # at one of its rows: that row is after resolution
        times = [tk.ts for tk in ticks if tk.market == m]
        markets[m] = replace(markets[m], resolves_at=times[len(times) * (k + 1) // 5])
    del markets[ids[4]]
    times = [tk.ts for tk in ticks if tk.market == ids[8]]
    markets[ids[8]] = replace(markets[ids[8]], event_at=times[len(times) // 2])
    depth = np.random.default_rng(seed).choice([0.0, 0.5, 3.0, 20.0, 1e4], len(ticks)).tolist()
    ticks = [
        Tick(
            tk.market,
            tk.ts,
            tk.price,
            max(tk.price - 0.01, 0.0),
            min(tk.price + 0.01, 1.0),
            depth[r],
        )
        if tk.market == ids[5]
        else tk
        for r, tk in enumerate(ticks)
    ]
    return ticks, ids, markets


def _policies(settings: Settings, markets: dict[str, Market]) -> list[Policy]:
    return [
        *all_policies(settings, markets),
        RandomOffers("random", 1, fallback=False),
        RandomOffers("random_stale", 2, fallback=True),
    ]


@pytest.mark.parametrize(("seed", "rules"), [(5, Rules(0.05, 3600.0)), (6, Rules(0.002, 7200.0))])
@pytest.mark.parametrize("settle", [True, False])
@pytest.mark.parametrize("cohort", [False, True])
def test_compiled_simulation_matches_the_python_loop(
    settings: Settings, seed: int, rules: Rules, settle: bool, cohort: bool
) -> None:
    ticks, ids, markets = _ensemble(seed)
    traders = Traders.cohort([tk.market for tk in ticks], seed) if cohort else None
    sim = simulate(
        ticks,
        ids,
        markets,
        _policies(settings, markets),
        settle=settle,
        rules=rules,
        record=True,
        traders=traders,
    )
    tallies, series, count = reference(
        ticks, ids, markets, _policies(settings, markets), settle, rules, traders
    )
    assert sim.ticks == count < len(ticks)
    for name, per_market in tallies.items():
        assert [asdict(x) for x in sim.tallies[name]] == [asdict(x) for x in per_market], name
    assert sim.series == series
    total = Tally()
    for x in sim.tallies["random_stale"]:
        total.add(x)
    assert total.liquidations > 10 and total.bad_debt > 0 and total.fees > 0


def test_offer_arrays_match_the_per_row_definitions(settings: Settings) -> None:
    ticks, ids, markets = _ensemble(7)
    t = np.array([tk.ts for tk in ticks])
    p = np.array([tk.price for tk in ticks])
    p[:3] = (0.0, 1.0, 0.5)  # the ends of the entropy and its maximum

    static = Static("static_20x", 20.0).offers(t, p)
    assert np.all(static.leverage == 20.0) and np.all(static.maintenance == 0.5 / 20.0)
    assert np.all(static.fee_hourly == FLAT_FEE_HOURLY) and np.all(static.open_fee == 0.0)

    def entropy(q: float) -> float:
        if q <= 0.0 or q >= 1.0:
            return 0.0
        return -(q * math.log2(q) + (1 - q) * math.log2(1 - q))

    d8x = D8XEntropy().offers(t, p)
    for r, q in enumerate(p.tolist()):
        h = entropy(q)
        im = 0.2 + 0.3 * h
        for s, v in enumerate((q, 1.0 - q)):
            fee = max(q * (1.0 - q) * (1.0 - v * im), 0.001) / v if v > 0.0 else 0.0
            assert d8x.open_fee[r, s] == fee
            assert d8x.leverage[r, s] == (1 / (im + fee) if v > 0.0 else 1.0)
        assert d8x.maintenance[r].tolist() == [0.18 + 0.22 * h] * 2
        assert d8x.fee_hourly[r].tolist() == [0.0, 0.0]

    oi = OpenInterestScaled().offers(t, p)
    assert oi.oi_tier is not None and np.all(np.isnan(oi.leverage))

    pol = Riskd(settings, markets)
    pol.prepare(ticks)
    pol.mode[:5] = -1  # rows before anything is published
    got = pol.offers(t, p)
    assert got.fallback is not None
    ratio, eng = pol.ratio, pol.engine
    for r, tk in enumerate(ticks):
        if pol.mode[r] < 0:
            assert got.leverage[r].tolist() == [1.0, 1.0] and got.fee_hourly[r].tolist() == [0, 0]
            assert got.maintenance[r].tolist() == [ratio, ratio]
            assert got.expires_after[r] == np.inf
            assert not got.opening[r] and not got.deleverage[r]
            continue
        lev = pol.leverage[r].tolist()
        assert got.leverage[r].tolist() == lev
        assert got.maintenance[r].tolist() == [ratio / lev[0], ratio / lev[1]]
        assert got.fee_hourly[r].tolist() == pol.fee[r].tolist()
        assert got.opening[r] == (pol.mode[r] == NORMAL)
        assert got.deleverage[r] == bool(int(pol.reasons[r]) & Riskd.FREEZE)
        # The engine's staleness rule at that row: a few of the market's own gaps.
        gov = settings.governor
        assert got.expires_after[r] == max(gov.stale_after_s, gov.stale_after_gaps * pol.gap_at[r])
        floor = float(eng.fee_floor[eng.index[tk.market]])
        assert got.fallback.leverage[r].tolist() == [1.0, 1.0]
        assert got.fallback.maintenance[r].tolist() == [ratio, ratio]
        assert got.fallback.fee_hourly[r].tolist() == [floor, floor]
        assert not got.fallback.deleverage[r]


# The judge's rules (docs/model.md section 8): the same for every policy.


def _tape(
    prices: list[float], depth: list[float | None] | None = None, gap: float = 600.0
) -> list[Tick]:
    depth = depth or [None] * len(prices)
    return [
        Tick("m", 1e9 + k * gap, q, depth=d)
        for k, (q, d) in enumerate(zip(prices, depth, strict=True))
    ]


def _one(
    policy: Policy,
    ticks: list[Tick],
    rules: Rules,
    event_at: float = math.inf,
    outcome: int | None = None,
) -> Tally:
    markets = {"m": Market("m", resolves_at=event_at, event_at=event_at, outcome=outcome)}
    sim = simulate(ticks, ["m"], markets, [policy], settle=outcome is not None, rules=rules)
    return sim.tallies[policy.name][0]


def test_a_policy_without_a_freeze_of_its_own_is_closed_before_the_event() -> None:
    """static_20x has no freeze; the judge's closes it at the flat price before an event
    that resolves NO, instead of settling 20x YES at 0 (19 lost)."""
    ticks = _tape([0.5] * 13)  # two hours, a row every 10 minutes
    event = ticks[-1].ts + 1.0
    unfrozen = _one(Static("s", 20.0), ticks, Rules(0.05, 0.0), event, outcome=0)
    assert unfrozen.bad_debt == pytest.approx(19.0, abs=0.01) and unfrozen.liquidations == 0
    frozen = _one(Static("s", 20.0), ticks, Rules(0.05, 3600.0), event, outcome=0)
    assert frozen.bad_debt == 0.0 and frozen.liquidations == 2  # both sides, nothing reopened
    # The freeze starts 3599 s before the last row: rows 7 to 12 offer 1x, so of the 12
    # ten-minute gaps 7 are at 20x and 5 at 1x.
    assert frozen.leverage_time == pytest.approx((7 * 20.0 + 5 * 1.0) * 600.0)
    assert unfrozen.leverage_time == pytest.approx(12 * 20.0 * 600.0)


def test_d8x_long_no_near_1_is_bounded() -> None:
    """A long NO is a short YES perp: its margin is on the NO value, and the opening fee,
    the pool's expected loss, is most of that value near p = 1: no leverage there (the
    margin alone would allow 5x on the NO value, ~25,000x the YES notional at 0.9998)."""
    p = np.array([0.9, 0.99, 0.999, 0.9998, 0.5])
    d8x = D8XEntropy().offers(p, p)
    assert np.all(d8x.leverage[:4, 1] < 1.0)  # the NO side of a favourite: nothing lent
    assert np.all(d8x.leverage[:4, 0] > 2.4)  # the favourite's own side: leverage
    grid = np.linspace(0.0005, 0.9995, 1999)
    lev_no = D8XEntropy().offers(grid, grid).leverage[:, 1]
    exposure = np.where(lev_no > 1.0, lev_no * grid / (1.0 - grid), 0.0)  # YES notional
    assert exposure.max() < 2.0
    # On a tape at 0.9998 a simulated long NO never opens.
    tally = _one(D8XEntropy(), _tape([0.9998] * 6), Rules(0.05, 0.0))
    assert tally.liquidations == 0 and tally.bad_debt == 0.0
    assert tally.fees == pytest.approx(d8x.open_fee[3, 0] * d8x.leverage[3, 0])  # YES opened


def test_a_liquidation_takes_the_depth_then_the_next_row() -> None:
    """20x YES at 0.5 (40 shares, 19 lent) triggers at 0.47 with 10 shares of depth within
    max_slippage: 10 fill there, on a linear book 0.05 * 10 / 20 below it; 30 at the next
    row, 0.45. Without depth all 40 fill at 0.45."""
    prices = [0.5, 0.47, 0.45]
    pol = Static("s", 20.0, fee_hourly=0.0)
    rules = Rules(0.05, 0.0)
    booked = _one(pol, _tape(prices, [None, 10.0, None]), rules)
    assert booked.bad_debt == pytest.approx(19.0 - 10 * (0.47 - 0.025) - 30 * 0.45)
    assert booked.liquidations == 1
    bare = _one(pol, _tape(prices), rules)
    assert bare.bad_debt == pytest.approx(19.0 - 40 * 0.45) and bare.liquidations == 1
    # Depth for the whole position: it all fills at the trigger row.
    deep = _one(pol, _tape(prices, [None, 1e6, None]), rules)
    assert deep.bad_debt == pytest.approx(19.0 - 40 * (0.47 - 0.05 * 40 / 2e6))


def test_every_policy_shares_the_slippage_rule() -> None:
    """No policy sets its own limit: an order is re-priced when the next row is beyond
    [limits] max_slippage of it, for static_20x as for riskd (it was any price for the
    alternatives, riskd's own limit for riskd)."""
    assert "slippage" not in {f.name for f in fields(Offers)}
    prices = [0.5, 0.47, 0.30, 0.29]  # trigger at 0.47, a gap to 0.30, then 0.29
    pol = Static("s", 20.0, fee_hourly=0.0)
    capped = _one(pol, _tape(prices), Rules(0.05, 0.0))
    assert capped.bad_debt == pytest.approx(19.0 - 40 * 0.29)  # re-priced at 0.30
    wide = _one(pol, _tape(prices), Rules(0.5, 0.0))
    assert wide.bad_debt == pytest.approx(19.0 - 40 * 0.30)
