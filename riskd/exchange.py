"""The exchange's state as riskd holds it (interfaces.md, "Exchange state"): per market
and side (long = long YES, short = long NO) the lent notional, that is the open
interest in quote units, optionally a histogram of position leverage (bucket ->
notional), and the insurance fund's balance.

The exchange sends its whole state each time, to `POST /v1/exchange/state` or as a
frame on /v1/stream, signed as riskd signs its own requests: `X-Riskd-Signature` is
`sha256=` + hex HMAC-SHA256 of "<X-Riskd-Timestamp>.<raw body>" with `[exchange]
secret`, the timestamp within `max_skew_s` of riskd's wall clock. `seq` must rise
per `exchange` (a replay gets 409). `ExchangeStore` does all of it without I/O and
keeps the newest state; anything refused changes nothing.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from riskd.model.parameters import SIDES
from riskd.publish.http import sign
from riskd.timeutil import iso, parse_iso

if TYPE_CHECKING:
    from riskd.config import ExchangeSettings

MAX_MARKETS = 100_000
MAX_BUCKETS = 64  # leverage buckets per side
MAX_ID_CHARS = 256
MAX_UNKNOWN_LISTED = 100  # unknown markets named in an answer (all are counted)
LATEST = parse_iso("9000-01-01T00:00:00Z")  # as_of is printed as a date
# Every result of a request, the label values of riskd_exchange_state_total{result}.
RESULTS = (
    "accepted",
    "disabled",
    "too_large",
    "bad_timestamp",
    "bad_signature",
    "stale_timestamp",
    "bad_body",
    "unknown_instance",
    "replayed_seq",
)

Amount = Annotated[float, Field(ge=0.0, strict=True)]  # a JSON number, finite, >= 0
Name = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS, strict=True)]
Buckets = Annotated[dict[str, Amount], Field(max_length=MAX_BUCKETS)]


class _Market(BaseModel):
    # Unknown keys are refused here: a misspelt side would read as no open interest.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    long: Amount = 0.0
    short: Amount = 0.0
    leverage: dict[Literal["long", "short"], Buckets] = Field(default_factory=dict)

    @field_validator("leverage")
    @classmethod
    def _buckets(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for side, buckets in value.items():
            seen: set[float] = set()
            for key in buckets:
                lev = _bucket(key)
                if lev in seen:
                    raise ValueError(f"{side}: leverage bucket {key!r} given twice")
                seen.add(lev)
        return value


class _Body(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)  # other top-level keys are ignored

    exchange: Name
    seq: Annotated[int, Field(ge=0, lt=2**63, strict=True)]
    as_of: Annotated[str, Field(max_length=64, strict=True)]
    insurance_fund: Amount
    open_interest: Annotated[dict[Name, _Market], Field(max_length=MAX_MARKETS)]

    @field_validator("as_of")
    @classmethod
    def _time(cls, value: str) -> str:
        try:
            t = parse_iso(value)
        except OverflowError:
            raise ValueError("out of range") from None
        if not 0.0 < t < LATEST:
            raise ValueError("out of range")
        return value


_BOOK: TypeAdapter[dict[str, _Market]] = TypeAdapter(
    Annotated[dict[Name, _Market], Field(max_length=MAX_MARKETS)]
)


def _bucket(key: str) -> float:
    try:
        lev = float(key)
    except ValueError:
        raise ValueError(f"leverage bucket {key[:32]!r} is not a number") from None
    if not (math.isfinite(lev) and lev >= 1.0):
        raise ValueError(f"leverage bucket {key[:32]!r} must be a finite number >= 1")
    return lev


def _key(lev: float) -> str:
    return str(int(lev)) if lev.is_integer() and lev < 1e15 else repr(lev)


@dataclass(frozen=True)
class SideBook:
    """One side of one market: the lent notional and, if sent, its leverage buckets."""

    notional: float = 0.0
    leverage: tuple[tuple[float, float], ...] = ()  # (leverage, notional), ascending

    def as_dict(self) -> dict[str, float]:
        return {_key(lev): amount for lev, amount in self.leverage}


@dataclass(frozen=True)
class ExchangeState:
    """One accepted report. `received` is the daemon clock when it arrived (-inf when
    the clock had not started); `as_of` the exchange's own time."""

    exchange: str
    seq: int
    as_of: float
    received: float
    insurance_fund: float
    open_interest: Mapping[str, Mapping[str, SideBook]]  # market -> side -> book

    def side(self, market: str, side: str) -> SideBook:
        """A market or side the report left out has no open interest."""
        return self.open_interest.get(market, {}).get(side) or SideBook()

    def as_dict(self) -> dict[str, Any]:
        """The body's shape (what `ExchangeStore.from_dict` reads back) plus `received`."""
        return {
            "exchange": self.exchange,
            "seq": self.seq,
            "as_of": iso(self.as_of),
            "insurance_fund": self.insurance_fund,
            "open_interest": open_interest_dict(self.open_interest),
            "received": self.received if math.isfinite(self.received) else None,
        }


def open_interest_dict(oi: Mapping[str, Mapping[str, SideBook]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for market, sides in oi.items():
        entry: dict[str, Any] = {side: book.notional for side, book in sides.items()}
        leverage = {side: book.as_dict() for side, book in sides.items() if book.leverage}
        if leverage:
            entry["leverage"] = leverage
        out[market] = entry
    return out


def _books(markets: Mapping[str, _Market]) -> dict[str, dict[str, SideBook]]:
    out: dict[str, dict[str, SideBook]] = {}
    for market, m in markets.items():
        out[market] = {}
        leverage: dict[str, dict[str, float]] = {str(k): v for k, v in m.leverage.items()}
        for side in SIDES:
            buckets = sorted((_bucket(k), v + 0.0) for k, v in leverage.get(side, {}).items())
            out[market][side] = SideBook(getattr(m, side) + 0.0, tuple(buckets))  # no -0.0
    return out


def _state(body: _Body, received: float) -> ExchangeState:
    return ExchangeState(
        body.exchange,
        body.seq,
        parse_iso(body.as_of),
        received,
        body.insurance_fund + 0.0,
        _books(body.open_interest),
    )


def check_book(doc: Any) -> dict[str, dict[str, SideBook]]:
    """A book of open interest ({market: {"long", "short", "leverage"}}) as the body
    carries it; ValueError saying what is wrong (the reference exchange's file)."""
    try:
        return _books(_BOOK.validate_python(doc))
    except ValidationError as exc:
        raise ValueError(_describe(exc)) from None


def _describe(exc: ValidationError, limit: int = 3) -> str:
    """The first errors, each at its place in the body, briefly (never the values)."""
    parts = []
    for err in exc.errors()[:limit]:
        where = ".".join(str(p)[:64] for p in err["loc"]) or "(body)"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


@dataclass(frozen=True)
class Verdict:
    status: int
    result: str  # "accepted" or the reason refused (RESULTS)
    body: dict[str, Any]


def refuse(status: int, reason: str, detail: str) -> Verdict:
    return Verdict(status, reason, {"accepted": False, "error": detail, "reason": reason})


def _authenticate(
    secret: bytes, max_skew_s: float, headers: Mapping[str, str], raw: bytes, wall_now: float
) -> Verdict | None:
    """None if the request is signed with `secret` at a time within the skew."""
    ts = headers.get("X-Riskd-Timestamp", "")
    given = headers.get("X-Riskd-Signature", "")
    # ASCII digits only (isdigit() takes "²"), at most 12: a longer number is no time.
    if not (isinstance(ts, str) and ts.isascii() and ts.isdigit() and len(ts) <= 12):
        return refuse(401, "bad_timestamp", "X-Riskd-Timestamp must be unix seconds")
    if not isinstance(given, str) or not hmac.compare_digest(
        sign(secret, ts, raw).encode(), given.encode(errors="replace")
    ):
        return refuse(401, "bad_signature", "bad signature")
    if abs(wall_now - int(ts)) > max_skew_s:
        return refuse(401, "stale_timestamp", f"timestamp outside +-{max_skew_s:g} s")
    return None


@dataclass
class ExchangeStore:
    """Authentication, replay protection and the newest accepted state, without I/O."""

    state: ExchangeState | None = None
    last_seq: dict[str, int] = field(default_factory=dict)  # exchange -> last accepted

    def current(self) -> ExchangeState | None:
        return self.state

    def age(self, now: float) -> float:
        """Daemon-clock seconds since the state arrived; inf without one."""
        if self.state is None or not (math.isfinite(now) and math.isfinite(self.state.received)):
            return math.inf
        return max(0.0, now - self.state.received)

    def receive(
        self,
        cfg: ExchangeSettings,
        headers: Mapping[str, str],
        raw: bytes,
        wall_now: float,
        now: float,
        max_bytes: int,
        known: Callable[[str], bool] = lambda market: True,
    ) -> Verdict:
        """One report: verify, check for replay, store; the verdict is the HTTP answer.
        `wall_now` judges the timestamp; `now` (the daemon clock) stamps the state."""
        secret = cfg.secret.get_secret_value()
        if not secret.strip():
            return refuse(
                403, "disabled", "the exchange state endpoint is disabled: set [exchange] secret"
            )
        if len(raw) > max_bytes:
            return refuse(413, "too_large", f"body over {max_bytes} bytes")
        refused = _authenticate(secret.encode(), cfg.max_skew_s, headers, raw, wall_now)
        if refused is not None:
            return refused
        try:
            body = _Body.model_validate_json(raw)
        except ValidationError as exc:
            if any(err["type"] == "too_long" for err in exc.errors()):
                return refuse(413, "too_large", f"over the limits: {_describe(exc)}")
            return refuse(400, "bad_body", f"not an exchange state: {_describe(exc)}")
        if cfg.instance is not None and body.exchange != cfg.instance:
            return refuse(
                403, "unknown_instance", f"exchange {body.exchange[:64]!r} is not accepted"
            )
        last = self.last_seq.get(body.exchange)
        if last is not None and body.seq <= last:
            return refuse(
                409,
                "replayed_seq",
                f"seq {body.seq} is not above {last} for {body.exchange[:64]!r}",
            )
        # Only a whole, valid report moves anything.
        self.state = _state(body, now)
        self.last_seq[body.exchange] = body.seq
        unknown = sorted(m for m in self.state.open_interest if not known(m))
        return Verdict(
            200,
            "accepted",
            {
                "accepted": True,
                "markets": len(self.state.open_interest),
                "unknown": unknown[:MAX_UNKNOWN_LISTED],
                "unknown_count": len(unknown),
            },
        )

    def view(self, now: float, enabled: bool, max_age_s: float) -> dict[str, Any]:
        """`GET /v1/exchange/state`: the state, its age, no secret."""
        age = self.age(now)
        state = self.state.as_dict() if self.state is not None else None
        if state is not None:
            received = state.pop("received")
            state["received_at"] = iso(received) if received is not None else None
        return {
            "enabled": enabled,
            "state": state,
            "age_s": age if math.isfinite(age) else None,
            "stale": not age <= max_age_s,
            "last_seq": dict(self.last_seq),
        }

    # --- the snapshot -----------------------------------------------------------------

    def copy(self) -> ExchangeStore:
        """For a snapshot written in another thread: a state is never changed, only
        replaced."""
        return ExchangeStore(self.state, dict(self.last_seq))

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.as_dict() if self.state is not None else None,
            "last_seq": dict(self.last_seq),
        }

    @classmethod
    def from_dict(cls, doc: Any, with_state: bool = True) -> ExchangeStore:
        """What `as_dict` wrote; ValueError if it is not that. Without `with_state`,
        only the seqs (a snapshot too old to trust still guards against replays)."""
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        last_seq = doc.get("last_seq", {})
        if not isinstance(last_seq, dict) or not all(
            isinstance(k, str) and type(v) is int for k, v in last_seq.items()
        ):
            raise ValueError("last_seq: not {exchange: int}")
        store = cls(None, dict(last_seq))
        saved = doc.get("state")
        if with_state and saved is not None:
            if not isinstance(saved, dict):
                raise ValueError("state: not an object")
            received = saved.get("received")
            if received is not None and not isinstance(received, int | float):
                raise ValueError("state.received: not a number")
            body = {k: v for k, v in saved.items() if k != "received"}
            try:
                parsed = _Body.model_validate_json(orjson.dumps(body))
            except (ValidationError, TypeError) as exc:
                raise ValueError(f"state: {exc}") from None
            store.state = _state(parsed, float(received) if received is not None else -math.inf)
        return store


# --- the stream ---------------------------------------------------------------------

FRAME_TYPE = "exchange_state"
REPLY_TYPE = "exchange_state_result"


def frame_request(text: str) -> tuple[dict[str, str], bytes] | None:
    """A /v1/stream text frame `{"type": "exchange_state", "timestamp", "signature",
    "body"}` as the headers and body of the HTTP request; None for any other frame
    (ignored, as before); ValueError for an exchange_state frame that lacks a part."""
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or doc.get("type") != FRAME_TYPE:
        return None
    ts, signature, body = (doc.get(k) for k in ("timestamp", "signature", "body"))
    if not (isinstance(ts, str) and isinstance(signature, str) and isinstance(body, str)):
        raise ValueError("timestamp, signature and body must be strings")
    return (
        {"X-Riskd-Timestamp": ts, "X-Riskd-Signature": signature},
        body.encode(errors="surrogatepass"),
    )


def reply_frame(verdict: Verdict) -> bytes:
    return orjson.dumps({"type": REPLY_TYPE, "status": verdict.status, "answer": verdict.body})
