"""The insurance fund in the backtest (docs/model.md section 8, section 10).

Every policy's bad debt, as it happens, is paid from one fund of the same size: the
balance above the socialisation threshold pays, what it cannot pay is socialised.
Under riskd an opening lends no more than the open-interest cap of its market side
(riskd/model/groups.py), at the open interest the simulation holds at that time and
the model of the set in force on every market of the group; the alternatives keep
their own rules. A night runs from 12:00 UTC to 12:00 UTC the next day (an American
evening and the night after it) and is named by its first date.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from riskd.config import ConfigError, InsuranceSettings, Settings
from riskd.markets import Market
from riskd.model import groups
from riskd.model.parameters import RiskInputs, Targets

if TYPE_CHECKING:
    from riskd.backtest.policies import Riskd
    from riskd.backtest.simulate import Book, CapState, LossLog, Replay

NIGHT_START_S = 12 * 3600.0  # nights start at 12:00 UTC
# The fund docs/backtests.md states for the midterms as one group (scripts/backtests.py,
# tests/test_fund.py): ten traders' collateral, of which the group's share is 0.1.
STATED_FUND = 10.0


@dataclass(frozen=True)
class Fund:
    """The fund every policy gets: its balance at the start (quote units, the traders'
    collateral's) and the tiers and group shares of `[insurance]`."""

    balance: float
    insurance: InsuranceSettings

    @classmethod
    def of(cls, settings: Settings, balance: float, group_share: float | None = None) -> Fund:
        """`[insurance]` of the settings (its defaults where absent) with a fixed fund of
        `balance`; `group_share` replaces the default share and every override."""
        base = settings.insurance or InsuranceSettings()
        data = base.model_dump()
        data.update(fund_source="fixed", fund_balance=balance)
        if group_share is not None:
            data.update(group_share=group_share, group_shares={})
        try:
            insurance = InsuranceSettings.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(
                f"insurance fund {balance:g}: "
                + "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
            ) from None
        return cls(balance=balance, insurance=insurance)

    @property
    def threshold(self) -> float:
        return self.insurance.socialisation_threshold


def group_names(ids: list[str], markets: dict[str, Market]) -> list[str]:
    """Each market's group; a market without one is a group of its own, named by its id."""
    return [markets[m].group or m if m in markets else m for m in ids]


class GroupCaps:
    """Sets riskd's caps (simulate.Capper) at a tape row: per market side, groups.oi_cap
    at the open interest of the book, each market's model that of its set in force
    (its latest row; the opening market's, this row's). A market resolved, or without
    a row yet, holds no open interest the caps count."""

    def __init__(
        self, policy: Riskd, replay: Replay, ids: list[str], markets: dict[str, Market], fund: Fund
    ) -> None:
        self.inputs, self.targets = policy.inputs, policy.targets
        self.replay, self.fund = replay, fund
        model = policy.engine.settings.model
        self.confidence, self.nodes = model.confidence, model.nodes
        # The caps are set again after every opening, else this often: the daemon's
        # longest interval between a market's evaluations.
        self.refresh_s = policy.engine.settings.governor.reevaluate_s
        self.group = [markets[m].group if m in markets else None for m in ids]
        self.relation = [markets[m].relation if m in markets else "independent" for m in ids]
        self.calls = 0

    def __call__(self, row: int, book: Book, caps: CapState) -> None:
        rp = self.replay
        rows = book.prev.copy()
        rows[rp.market[row]] = row
        live = np.flatnonzero((rows >= 0) & (rp.t[row] < rp.resolve_t))
        index, sign, names = groups.group_index(
            [self.group[i] for i in live], [self.relation[i] for i in live]
        )
        budget = groups.budgets(names, self.fund.balance, self.fund.insurance)
        risk = groups.group_risk(
            _rows(self.inputs, rows[live]),
            _rows(self.targets, rows[live]),
            book.lent()[live],
            index,
            sign,
            budget,
            self.confidence,
            self.nodes,
        )
        caps.lent[:] = np.inf
        # An unknown cap (nan) is reached at any open interest, as groups.oi_margins has it.
        caps.lent[live] = np.where(np.isnan(risk.oi_cap), 0.0, risk.oi_cap)
        caps.at[0] = rp.t[row]
        caps.stale[0] = False
        self.calls += 1


def _rows(obj: Any, rows: np.ndarray) -> Any:
    """A RiskInputs or Targets of the given rows."""
    assert isinstance(obj, RiskInputs | Targets)
    return type(obj)(**{f.name: _take(getattr(obj, f.name), rows) for f in fields(obj)})


def _take(value: Any, rows: np.ndarray) -> Any:
    return value[rows] if isinstance(value, np.ndarray) else value


@dataclass
class Account:
    """Bad debt and what became of it: paid by the fund, socialised past its threshold,
    and beyond the whole balance (the threshold's tier spent too)."""

    bad_debt: float = 0.0
    paid: float = 0.0
    socialised: float = 0.0
    beyond_fund: float = 0.0
    losses: int = 0

    def add(self, amount: float, paid: float, beyond: float) -> None:
        self.bad_debt += amount
        self.paid += paid
        self.socialised += amount - paid
        self.beyond_fund += beyond
        self.losses += 1

    def as_dict(self) -> dict[str, float | int]:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in vars(self).items()}


@dataclass
class FundReport:
    """One policy's fund over the tape: the whole, per group, per night (with the
    balance at the night's end), and under riskd how its caps acted."""

    start: float
    threshold: float
    total: Account = field(default_factory=Account)
    groups: dict[str, Account] = field(default_factory=dict)
    nights: dict[str, Account] = field(default_factory=dict)
    night_groups: dict[str, set[str]] = field(default_factory=dict)  # groups socialised
    balance: dict[str, float] = field(default_factory=dict)
    # riskd's: openings a cap reduced, rows at which it refused one, caps evaluated.
    caps: dict[str, int] | None = None

    @property
    def min_balance(self) -> float:
        return min([self.start, *self.balance.values()])

    def exhausted_nights(self, group: str | None = None) -> list[str]:
        """Nights on which a loss (of `group`) was socialised: the fund was spent."""
        return [
            n
            for n, a in self.nights.items()
            if a.socialised > 0.0 and (group is None or group in self.night_groups[n])
        ]

    def nights_over_fund(self) -> list[str]:
        """Nights whose bad debt alone exceeds the spendable fund: spent even if it were
        restored every night."""
        room = max(self.start - self.threshold, 0.0)
        return [n for n, a in self.nights.items() if a.bad_debt > room]

    def as_dict(self) -> dict[str, Any]:
        total: dict[str, Any] = {
            **self.total.as_dict(),
            **{
                "start": self.start,
                "socialisation_threshold": self.threshold,
                "min_balance": round(self.min_balance, 6),
                "max_drawdown": round(self.start - self.min_balance, 6),
                "first_exhausted": next(iter(self.exhausted_nights()), None),
                "exhausted_nights": self.exhausted_nights(),
                "nights_over_fund": self.nights_over_fund(),
                "worst_night": round(
                    max((a.bad_debt for a in self.nights.values()), default=0.0), 6
                ),
                "nights": {
                    n: a.as_dict() | {"balance": round(self.balance[n], 6)}
                    for n, a in self.nights.items()
                },
            },
        }
        if self.caps is not None:
            total["caps"] = self.caps
        return {
            "total": total,
            "groups": {
                g: a.as_dict() | {"exhausted_nights": self.exhausted_nights(g)}
                for g, a in self.groups.items()
            },
        }


def night(t: float) -> str:
    """The night of a time: the date of the 12:00 UTC that starts it."""
    start = math.floor((t - NIGHT_START_S) / 86_400.0) * 86_400.0
    return datetime.fromtimestamp(start, UTC).date().isoformat()


def account(log: LossLog, group_of: list[str], fund: Fund) -> FundReport:
    """The losses in time order through the fund: each paid from the balance above the
    threshold, the rest socialised. Every group starts with an empty account."""
    t, market, amount = log.used()
    order = np.argsort(t, kind="stable")
    report = FundReport(
        start=fund.balance,
        threshold=fund.threshold,
        groups={g: Account() for g in dict.fromkeys(group_of)},
    )
    balance = whole = fund.balance  # whole: were the threshold's tier spent too
    for k in order.tolist():
        loss, group, name = float(amount[k]), group_of[int(market[k])], night(float(t[k]))
        paid = min(loss, max(balance - fund.threshold, 0.0))
        beyond = max(loss - max(whole, 0.0), 0.0)
        balance -= paid
        whole -= loss
        for acc in (report.total, report.groups[group], report.nights.setdefault(name, Account())):
            acc.add(loss, paid, beyond)
        socialised = report.night_groups.setdefault(name, set())
        if paid < loss:
            socialised.add(group)
        report.balance[name] = balance
    return report
