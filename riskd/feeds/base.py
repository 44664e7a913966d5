"""The one small contract every venue feed implements: yield normalised ticks."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import MemberDescriptorType
from typing import TYPE_CHECKING, Literal, Protocol, overload, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from riskd.markets import Market
    from riskd.ticks import TickColumns


# Depth (size at the top of the book, in contracts or shares) beyond this is absurd:
# no prediction market has a trillion contracts at one price. Rejected as `bad_depth`
# (`bad_size` for a book level) by the tape reader, the codecs and the engine.
MAX_DEPTH = 1e12


@dataclass(slots=True, frozen=True)
class Tick:
    """A normalised price observation: what every feed and the tape reader produce."""

    market: str
    ts: float  # event time, unix seconds
    price: float  # YES probability in [0, 1]
    bid: float | None = None
    ask: float | None = None
    depth: float | None = None


def _tick_factory() -> Callable[..., Tick]:
    """A constructor for Tick, about twice as fast as its frozen-dataclass __init__.

    Tick creation is the largest single per-row cost of a tape, and a large one of a
    live feed's message (the tape reader and the codecs use it). Filling the slots
    directly is equivalent only while Tick has exactly these six slot fields and no
    __post_init__, so anything else falls back to the real constructor.
    """
    names = tuple(f.name for f in dataclasses.fields(Tick))
    if (
        names != ("market", "ts", "price", "bid", "ask", "depth")
        or hasattr(Tick, "__post_init__")
        or not all(isinstance(vars(Tick).get(n), MemberDescriptorType) for n in names)
    ):
        return Tick
    new = object.__new__
    set_m, set_t, set_p, set_b, set_a, set_d = (getattr(Tick, n).__set__ for n in names)

    def make(
        market: str,
        ts: float,
        price: float,
        bid: float | None = None,
        ask: float | None = None,
        depth: float | None = None,
    ) -> Tick:
        t = new(Tick)
        set_m(t, market)
        set_t(t, ts)
        set_p(t, price)
        set_b(t, bid)
        set_a(t, ask)
        set_d(t, depth)
        return t

    return make


make_tick = _tick_factory()


class Feed(Protocol):
    """A source of ticks. `venue` labels metrics; `ticks()` runs until the feed ends."""

    venue: str

    def ticks(self) -> AsyncIterator[list[Tick] | TickColumns]:
        """Yield batches of ticks in arrival order (a list, or columns)."""
        ...

    def rejected(self) -> dict[str, int]:
        """Counts of rejected inputs by reason, since start."""
        ...

    def now(self) -> float:
        """The feed's clock: wall time for a live venue, event time for a replay."""
        ...


@runtime_checkable
class Replayed(Protocol):
    """A feed that plays recorded ticks (a tape): its clock is their event time, and a
    restart resumes after what the snapshot already holds."""

    finished: bool  # the last tick was delivered

    def resume_after(self, clock: float) -> None:
        """Skip the ticks before `clock`."""
        ...


@dataclass(slots=True, frozen=True)
class MarketEvent:
    """A venue fact that is not a price: a market listed by the venue's metadata
    (`meta`), a new tick size, or the market's resolution (it is over at `ts`)."""

    market: str
    ts: float  # event time, unix seconds
    kind: Literal["listed", "tick_size", "resolved"]
    tick_size: float | None = None
    meta: Market | None = None


@runtime_checkable
class EventSource(Protocol):
    """A feed that also reports venue events (the live feeds)."""

    def take_events(self) -> list[MarketEvent]:
        """The events received since the last call, in arrival order."""
        ...


class HeardRows(Sequence[str]):
    """Markets heard, as rows of a codec's list of market ids (`ids`): the compiled
    Polymarket store's, with no str per market. A sequence of the ids all the same."""

    __slots__ = ("ids", "rows")

    def __init__(self, ids: Sequence[str], rows: np.ndarray) -> None:
        self.ids = ids
        self.rows = rows  # int32

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, k: int) -> str: ...
    @overload
    def __getitem__(self, k: slice) -> list[str]: ...
    def __getitem__(self, k: int | slice) -> str | list[str]:
        if isinstance(k, slice):
            return [self.ids[i] for i in self.rows[k].tolist()]
        return self.ids[int(self.rows[k])]

    def __iter__(self) -> Iterator[str]:
        ids = self.ids
        return (ids[i] for i in self.rows.tolist())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"HeardRows({list(self)!r})"


# A report of markets heard: (session, time, markets), as `Liveness.heard` keeps them.
Heard = tuple[int, float, Sequence[str]]


@dataclass
class Liveness:
    """What a live feed heard since its last report, for freshness (docs/model.md
    section 5): a market's price is confirmed by any message about it and, when its
    book arrived as a snapshot on a connection, by every sign of that connection's
    life. Sessions are connections, numbered uniquely in the process."""

    # Markets heard, report by report in arrival order: the last report naming a
    # market is its (session, time), as in a dict updated report by report.
    heard: list[Heard] = field(default_factory=list)
    # market -> (session, t) of a book snapshot; session -1: its book broke (a
    # sequence gap), stale until the next snapshot.
    books: dict[str, tuple[int, float]] = field(default_factory=dict)
    depths: dict[str, float] = field(default_factory=dict)  # shares within the band
    sessions: dict[int, float] = field(default_factory=dict)  # live session -> last life
    ended: list[int] = field(default_factory=list)  # sessions closed since the last report


@runtime_checkable
class LivenessSource(Protocol):
    """A feed that reports freshness (the live feeds)."""

    venue: str
    connected: bool  # every connection of the feed is up
    heard_at: float  # wall time of the last sign of life on any connection

    def take_liveness(self) -> Liveness:
        """What was heard since the last call."""
        ...

    def sessions(self) -> list[int]:
        """The numbers of the connections open now."""
        ...
