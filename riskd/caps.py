"""Open-interest caps in the daemon (docs/model.md section 10, "In the daemon").

The engine keeps one `OpenInterestCaps` when `[insurance]` is set and the exchange's
state is attached (the daemon; never the backtest, which sizes its own fund). Per
cycle it reads the exchange's open interest and fund (`observe`), recomputes the caps
of the groups whose markets are evaluated and whose caps are due (`plan`, `refresh`),
and raises the margins of the evaluated markets as their open interest nears the cap
(`margins`), before the governor: tightening at once, loosening on its schedule.

A cap unit is a group of the markets file, or an ungrouped market alone. Its caps are
recomputed when a member is evaluated and they are older than `[governor]
reevaluate_s` (the slow sweep's period), and at the first evaluation after a report
that moved the open interest of one of its markets (or the fund: then every unit), a
reload or a restart. At most `MAX_ROWS_PER_CYCLE` markets' caps are recomputed per
cycle (~35 us a market alone, ~1 ms a member of a 39-market linked group); units
left over are evaluated again at the next cycle. Exchange state that is missing or
older than `[exchange] max_age_s` counts as open interest at the cap: every margin is
the side's value (1x) until a fresh report arrives.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from riskd.model import groups
from riskd.model.parameters import BIT, RiskInputs, Targets

if TYPE_CHECKING:
    from riskd.config import InsuranceSettings
    from riskd.exchange import ExchangeState
    from riskd.markets import Market

# Markets whose caps are recomputed in one cycle at most (~150 ms of numpy): a report
# that moved every market's open interest is worked off over several cycles.
MAX_ROWS_PER_CYCLE = 4096
# now -> (the newest exchange state or None, its age in seconds on the daemon clock)
ExchangeSource = Callable[[float], tuple["ExchangeState | None", float]]
_BINDING = BIT[groups.OI_CAP_BINDING]
T = TypeVar("T", RiskInputs, Targets)


def take(obj: T, sel: np.ndarray | slice) -> T:
    """The rows `sel` of every per-market array of RiskInputs or Targets."""
    out = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, np.ndarray) and value.ndim:
            out[f.name] = value[sel]
    return replace(obj, **out)


def cap_moved(new: np.ndarray, old: np.ndarray, deadband: float) -> np.ndarray:
    """Per market: a side's cap moved from the published one by `deadband` (relative)
    or more, either way, or went to or from infinite; never published (nan): moved."""
    with np.errstate(invalid="ignore"):
        moved = (new != old) & ~(np.abs(new - old) < deadband * old)
    return np.asarray(moved.any(axis=-1))


class OpenInterestCaps:
    """Per market: its unit, open interest and cap; per unit: its stress."""

    def __init__(self, cfg: InsuranceSettings, max_age_s: float, refresh_s: float) -> None:
        self.cfg = cfg
        self.max_age_s = max_age_s
        # A unit's caps are recomputed at most this often while no report moved what
        # they depend on: prices and margins drift between reports.
        self.refresh_s = refresh_s
        self.room = MAX_ROWS_PER_CYCLE  # markets whose caps this cycle may still compute
        self.left_over = False  # units were due beyond the room
        self.unit = np.zeros(0, np.int64)  # per market
        self.sign = np.zeros(0, np.int64)  # groups.SAME, OPPOSITE or INDEPENDENT
        self.grouped = np.zeros(0, bool)  # in a group of the markets file
        self.names: list[str | None] = []  # per unit; None: an ungrouped market
        self._named: dict[str, int] = {}
        self.es = np.zeros(0)  # per unit, at the last computation
        self.budget = np.zeros(0)
        self.computed_t = np.zeros(0)  # -inf: due at the next evaluation
        self.cap = np.zeros((0, 2))  # per market and side; nan before the first
        self.oi = np.zeros((0, 2))  # the latest report's, 0 where it says nothing
        self.fund = 0.0
        self.stale = True  # no report, or one older than max_age_s
        self._state: ExchangeState | None = None  # the report `oi` was read from

    def __len__(self) -> int:
        return int(self.unit.shape[0])

    def grow(self, meta: Sequence[Market | None]) -> None:
        """Take the markets added since the last call (`meta`: every market's)."""
        first = len(self)
        if len(meta) == first:
            return
        units, signs, grouped = [], [], []
        before = len(self.names)
        for m in meta[first:]:
            name = m.group if m is not None else None
            known = self._named.get(name) if name is not None else None
            if known is None:
                known = len(self.names)
                self.names.append(name)
                if name is not None:
                    self._named[name] = known
            units.append(known)
            grouped.append(name is not None)
            signs.append(groups.SIGN[m.relation] if m is not None and name is not None else 0)
        k, added = len(units), len(self.names) - before
        self.es = np.concatenate([self.es, np.zeros(added)])
        self.budget = np.concatenate([self.budget, np.zeros(added)])
        self.computed_t = np.concatenate([self.computed_t, np.full(added, -math.inf)])
        new_units = np.asarray(units, np.int64)
        self.computed_t[new_units] = -math.inf  # a group with a new member: recompute
        self.unit = np.concatenate([self.unit, new_units])
        self.sign = np.concatenate([self.sign, np.asarray(signs, np.int64)])
        self.grouped = np.concatenate([self.grouped, np.asarray(grouped, bool)])
        self.cap = np.concatenate([self.cap, np.full((k, 2), np.nan)])
        self.oi = np.concatenate([self.oi, np.zeros((k, 2))])
        self._state = None  # read the report again: it may name the new markets

    def observe(
        self, state: ExchangeState | None, age: float, index: dict[str, int]
    ) -> np.ndarray | None:
        """The exchange's newest state (once per cycle): the markets to evaluate now
        because what their margins or caps depend on changed, or None."""
        n = len(self)
        due = np.zeros(n, bool)
        self.room, self.left_over = MAX_ROWS_PER_CYCLE, False
        stale = state is None or not age <= self.max_age_s
        if stale != self.stale:
            self.stale = stale
            due[:] = True  # every margin goes to or leaves 1x
        if state is not self._state:
            oi = self._read(state, index)
            fund = self._fund(state)
            if fund != self.fund:
                self.computed_t[:] = -math.inf
                due[:] = True
            moved = (oi != self.oi).any(axis=1)
            if moved.any():
                units = np.unique(self.unit[moved])
                self.computed_t[units] = -math.inf
                due |= np.isin(self.unit, units)
            self.oi, self.fund, self._state = oi, fund, state
        return due if due.any() else None

    def _read(self, state: ExchangeState | None, index: dict[str, int]) -> np.ndarray:
        oi = np.zeros((len(self), 2))
        if state is None:
            return oi
        for market in state.open_interest:
            i = index.get(market)
            if i is not None and i < len(oi):
                oi[i] = [state.side(market, "long").notional, state.side(market, "short").notional]
        return oi

    def _fund(self, state: ExchangeState | None) -> float:
        if self.cfg.fund_source == "fixed":
            return float(self.cfg.fund_balance or 0.0)
        return state.insurance_fund if state is not None else 0.0

    def plan(self, now: float, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(units of `rows` whose caps are due, their members outside `rows`): the
        engine computes the members' targets at `now` with those of `rows`."""
        none = np.zeros(0, np.int64)
        units = np.unique(self.unit[rows])
        due = units[~(self.computed_t[units] > now - self.refresh_s)]
        if not due.size:
            return due, none
        if self.room <= 0:
            self.left_over = True
            return none, none
        named = due[np.asarray([self.names[u] is not None for u in due.tolist()], bool)]
        members = np.flatnonzero(self.grouped & np.isin(self.unit, named)) if named.size else none
        extra = np.setdiff1d(members, rows)
        self.room -= int(np.count_nonzero(np.isin(self.unit[rows], due))) + extra.size
        return due, extra

    def pending(self) -> np.ndarray:
        """Markets of units whose caps a report or a reload made due and that no cycle
        has recomputed yet (left over when a cycle ran out of room)."""
        return np.flatnonzero(self.computed_t[self.unit] == -math.inf)

    def refresh(
        self,
        now: float,
        rows: np.ndarray,
        inp: RiskInputs,
        tg: Targets,
        due: np.ndarray,
        confidence: float,
        nodes: int,
    ) -> None:
        """Recompute the caps of units `due`, every member of which is in `rows` (the
        rows of `inp` and `tg`), at today's open interest and fund."""
        if not due.size:
            return
        sel = np.isin(self.unit[rows], due)
        sub = rows[sel]
        units, local = np.unique(self.unit[sub], return_inverse=True)
        budget = groups.budgets([self.names[u] for u in units.tolist()], self.fund, self.cfg)
        risk = groups.group_risk(
            take(inp, sel),
            take(tg, sel),
            self.oi[sub],
            local.astype(np.int64),
            self.sign[sub],
            budget,
            confidence,
            nodes,
        )
        self.cap[sub] = risk.oi_cap
        self.es[units], self.budget[units] = risk.es, risk.budget
        self.computed_t[units] = now

    def margins(self, rows: np.ndarray, inp: RiskInputs, tg: Targets, ratio: float) -> Targets:
        """`tg` of markets `rows` with initial margins raised as open interest nears the
        cap (all at the side's value while the exchange state is stale or missing), the
        leverage and maintenance margin following, `oi_cap_binding` where raised.
        `ratio`: maintenance over initial margin."""
        value = np.stack([inp.p, 1.0 - inp.p], axis=-1)
        im = tg.initial_margin
        if self.stale:
            margin = np.where(im < value, value, im)
        else:
            margin, _ = groups.oi_margins(
                im, inp.p, self.oi[rows], self.cap[rows], self.cfg.margin_ramp_start
            )
        raised = margin > im
        if not raised.any():
            return tg
        with np.errstate(divide="ignore", invalid="ignore"):
            leverage = np.where(
                raised, np.minimum(tg.max_leverage, value / margin), tg.max_leverage
            )
        return replace(
            tg,
            max_leverage=leverage,
            initial_margin=np.where(raised, margin, im),
            maintenance_margin=np.where(raised, ratio * margin, tg.maintenance_margin),
            reasons=tg.reasons | np.where(raised.any(axis=1), _BINDING, 0),
        )

    def utilisation(self, unit: int) -> float:
        """A unit's ES over its budget (inf: ES with no budget; 0: neither)."""
        es, budget = float(self.es[unit]), float(self.budget[unit])
        if budget > 0.0:
            return es / budget
        return math.inf if es > 0.0 else 0.0
