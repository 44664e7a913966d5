"""The reference receiver: the exchange side of the HTTP publisher (`riskd receiver`).

An exchange can run it, or read it as the specification of what receiving
riskd's parameters means (interfaces.md):

1. Authenticate: `X-Riskd-Signature` is `sha256=` + hex HMAC-SHA256 of
   "<X-Riskd-Timestamp>.<raw body>" with the shared secret, compared in constant
   time; the timestamp (wall-clock unix seconds) must be within `max_skew_s` of
   the receiver's clock. Failures get 401 and change nothing.
2. Refuse replays: `seq` must be higher than the last accepted `seq` of the same
   `instance` (409 otherwise) and `Idempotency-Key` must be `<instance>:<seq>`.
   riskd's `seq` and `version` survive its restarts, so this never locks it out;
   a receiver restart forgets them (it then takes whatever comes next).
   Clustered riskd (docs/scaling.md) names each shard's stream `<instance>/<shard>`
   and carries the leader's term in `shard` and `epoch`: a batch whose `epoch` is
   below the highest accepted for its instance and shard is refused (409,
   `stale_epoch`): a deposed leader can never overwrite its successor.
3. Apply per market only what is newer: an entry replaces the current set only if
   its `version` is higher; older or equal ones are counted and dropped (a retried
   request whose first attempt did arrive carries the same versions).
4. Dead man's switch: a set is in force until its `valid_until`; after that,
   with nothing newer, the market falls back to the configured safe parameters.
   Expiry is judged by the receiver's clock: `wall` (default, what an exchange
   runs) or `feed`: the newest `generated_at` accepted plus the wall time since it
   arrived. A replayed tape stamps sets with the tape's event time, so in `wall`
   mode every set of a replay is already expired; `feed` mode follows the
   daemon's clock while it publishes and still expires everything, in real time,
   when it stops.

`GET /params` (and `/params/{market}`) is what is in force now; `GET /stats` the
counters; `GET /healthz` liveness. The core (`ReceiverState`) does no I/O.

5. Open interest: before opening, the exchange asks `POST /orders` `{"market", "side",
   "notional"}` (the lent notional the order adds). Refused (409) when the set in
   force expired (`expired`: the safe values lend nothing new), is not `normal`
   (its mode), or when the side's open interest (the positions file it reports to
   riskd plus what this endpoint accepted since it started) plus the notional would
   exceed the set's `oi_cap` (`oi_cap`); else accepted and added to its book, which
   the next report to riskd carries.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
from aiohttp import web

from riskd.exchange import SideBook
from riskd.model.governor import MODES
from riskd.receiver_client import (
    Book,
    ReportConfig,
    Reporter,
    ReportError,
    load_book,
    report_config,
)
from riskd.secrets import read_secret
from riskd.timeutil import iso, parse_iso

log = logging.getLogger("riskd.receiver")

SECRET_ENV = "RISKD_RECEIVER_SECRET"
Clock = Literal["wall", "feed"]


class ReceiverError(ValueError):
    """Bad receiver settings (a usage error: exit 2)."""


@dataclass(frozen=True)
class SafeParams:
    """What the exchange applies to a market whose set expired (its own safe values)."""

    mode: str = "reduce_only"
    max_leverage: float = 1.0
    fee_rate_hourly: float = 0.001
    max_slippage: float = 0.01


@dataclass(frozen=True)
class ReceiverConfig:
    secret: bytes
    max_skew_s: float = 300.0
    clock: Clock = "wall"
    safe: SafeParams = field(default_factory=SafeParams)
    instance: str | None = None  # accept only this instance (None: any)
    max_body_bytes: int = 16 * 1024 * 1024
    report: ReportConfig | None = None  # report the book to riskd (receiver_client.py)


@dataclass(frozen=True)
class Verdict:
    status: int
    body: dict[str, Any]


@dataclass(frozen=True)
class _Message:
    """A batch that passed every check: its sets with their valid_until in unix seconds."""

    instance: str
    seq: int
    generated: float | None  # generated_at, unix seconds
    sets: list[tuple[dict[str, Any], float]]
    term: tuple[tuple[str, int], int] | None = None  # (instance, shard), epoch


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    return (
        "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    )


class ReceiverState:
    """Authentication, replay protection, newest-wins storage and expiry, without I/O."""

    def __init__(self, cfg: ReceiverConfig) -> None:
        self.cfg = cfg
        self.last_seq: dict[str, int] = {}
        self.epochs: dict[tuple[str, int], int] = {}  # (instance, shard) -> highest epoch
        self.current: dict[str, dict[str, Any]] = {}  # market -> newest accepted set
        self._expiry: dict[str, float] = {}  # market -> valid_until, unix seconds
        # The positions file's book (as last read) and the lent notional accepted by
        # `POST /orders` since the start, per (market, side).
        self.positions: Book = {}
        self.opened: dict[tuple[str, str], float] = {}
        self.newest_generated = float("-inf")  # unix seconds
        self._newest_wall = 0.0  # wall time at which newest_generated arrived
        self.stats: dict[str, Any] = {
            "accepted": 0,
            "applied_sets": 0,
            "stale_sets": 0,
            "rejected": {},
        }
        self.orders: dict[str, int] = {}  # accepted, or the reason refused

    def _reject(self, status: int, reason: str, detail: str) -> Verdict:
        rejected = self.stats["rejected"]
        rejected[reason] = rejected.get(reason, 0) + 1
        return Verdict(status, {"error": detail, "reason": reason})

    def receive(self, headers: dict[str, str], raw: bytes, wall_now: float) -> Verdict:
        """One POST: verify, check for replay, apply; the verdict is the HTTP answer."""
        refused = self._authenticate(headers, raw, wall_now)
        if refused is not None:
            return refused
        message = self._read(headers, raw)
        if isinstance(message, Verdict):
            return message
        # Only a whole, valid message moves anything.
        self.last_seq[message.instance] = message.seq
        if message.term is not None:
            self.epochs[message.term[0]] = message.term[1]
        self.stats["accepted"] += 1
        if message.generated is not None and message.generated > self.newest_generated:
            self.newest_generated, self._newest_wall = message.generated, wall_now
        applied, stale = self._apply(message.sets)
        return Verdict(200, {"ok": True, "applied": applied, "stale": stale})

    def _authenticate(self, headers: dict[str, str], raw: bytes, wall_now: float) -> Verdict | None:
        """The refusal of a message not signed with the secret or not recent, or None."""
        ts = headers.get("X-Riskd-Timestamp", "")
        given = headers.get("X-Riskd-Signature", "")
        # ASCII digits only (isdigit() takes "²", which int() refuses), at most 12: a
        # longer number is no time and does not fit a float.
        if not (ts.isascii() and ts.isdigit() and len(ts) <= 12):
            return self._reject(401, "bad_timestamp", "X-Riskd-Timestamp must be unix seconds")
        expected = signature(self.cfg.secret, ts, raw)
        if not hmac.compare_digest(expected.encode(), given.encode()):
            return self._reject(401, "bad_signature", "bad signature")
        if abs(wall_now - int(ts)) > self.cfg.max_skew_s:
            return self._reject(
                401, "stale_timestamp", f"timestamp outside +-{self.cfg.max_skew_s:g} s"
            )
        return None

    def _read(self, headers: dict[str, str], raw: bytes) -> _Message | Verdict:
        """The message of an authenticated body, or the refusal of a malformed, foreign
        or replayed one."""
        try:
            doc = orjson.loads(raw)
            instance, seq, params = doc["instance"], doc["seq"], doc["params"]
            generated = parse_iso(doc["generated_at"]) if doc.get("generated_at") else None
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            return self._reject(400, "bad_body", f"not a riskd batch: {exc}")
        if not isinstance(instance, str) or not _integer(seq) or not isinstance(params, list):
            return self._reject(400, "bad_body", "instance, seq, params have the wrong types")
        if generated is not None and not 0.0 < generated < LATEST:
            return self._reject(400, "bad_body", "generated_at out of range")
        if self.cfg.instance is not None and instance != self.cfg.instance:
            return self._reject(403, "unknown_instance", f"instance {instance!r} not accepted")
        if headers.get("Idempotency-Key") != f"{instance}:{seq}":
            return self._reject(
                400, "bad_idempotency_key", "Idempotency-Key must be <instance>:<seq>"
            )
        term = self._term(doc, instance, headers)
        if isinstance(term, Verdict):
            return term
        last = self.last_seq.get(instance)
        if last is not None and seq <= last:
            return self._reject(
                409, "replayed_seq", f"seq {seq} is not newer than {last} for {instance!r}"
            )
        sets: list[tuple[dict[str, Any], float]] = []
        for entry in params:
            try:
                market, version = entry["market"], entry["version"]
                expiry = parse_iso(entry["valid_until"])
            except (KeyError, TypeError, ValueError) as exc:
                return self._reject(400, "bad_body", f"bad parameter set: {exc}")
            if not isinstance(market, str) or not _integer(version):
                return self._reject(400, "bad_body", "market and version have the wrong types")
            sets.append((entry, expiry))
        return _Message(instance, seq, generated, sets, term)

    def _term(
        self, doc: dict[str, Any], instance: str, headers: dict[str, str]
    ) -> tuple[tuple[str, int], int] | Verdict | None:
        """A clustered batch's (instance, shard) and epoch, or the refusal of a stale
        or malformed one; None for a batch of an unclustered riskd."""
        if "epoch" not in doc and "shard" not in doc:
            return None
        if not _integer(doc.get("epoch")) or not _integer(doc.get("shard")):
            return self._reject(400, "bad_body", "epoch and shard must be integers")
        epoch, shard = int(doc["epoch"]), int(doc["shard"])
        header = headers.get("X-Riskd-Epoch")
        if header is not None and header != str(epoch):
            return self._reject(400, "bad_epoch_header", "X-Riskd-Epoch is not the body's epoch")
        highest = self.epochs.get((instance, shard))
        if highest is not None and epoch < highest:
            return self._reject(
                409,
                "stale_epoch",
                f"epoch {epoch} is below {highest} for {instance!r} shard {shard}",
            )
        return (instance, shard), epoch

    def _apply(self, sets: list[tuple[dict[str, Any], float]]) -> tuple[int, int]:
        """Newest wins per market: (sets applied, sets not newer than the current one)."""
        applied = stale = 0
        for entry, expiry in sets:
            market = entry["market"]
            have = self.current.get(market)
            if have is not None and entry["version"] <= have["version"]:
                stale += 1
                continue
            self.current[market] = entry
            self._expiry[market] = expiry
            applied += 1
        self.stats["applied_sets"] += applied
        self.stats["stale_sets"] += stale
        return applied, stale

    def clock(self, wall_now: float) -> float:
        """The time valid_until is judged by (see the module docstring)."""
        if self.cfg.clock == "wall" or self.newest_generated == float("-inf"):
            return wall_now
        return self.newest_generated + max(0.0, wall_now - self._newest_wall)

    def in_force(self, market: str, wall_now: float) -> dict[str, Any] | None:
        entry = self.current.get(market)
        if entry is None:
            return None
        if self.clock(wall_now) < self._expiry[market]:
            return {**entry, "source": "riskd"}
        return self._safe(entry)

    def _safe(self, entry: dict[str, Any]) -> dict[str, Any]:
        safe = self.cfg.safe
        out: dict[str, Any] = {
            "market": entry["market"],
            "source": "safe",
            "reason": "expired",
            "expired_version": entry["version"],
            "expired_at": entry["valid_until"],
            "mode": safe.mode,
            "max_leverage": {"long": safe.max_leverage, "short": safe.max_leverage},
            "fee_rate_hourly": {"long": safe.fee_rate_hourly, "short": safe.fee_rate_hourly},
            "max_slippage": safe.max_slippage,
        }
        inputs = entry.get("inputs")
        p = inputs.get("p") if isinstance(inputs, dict) else None
        if isinstance(p, int | float) and not isinstance(p, bool) and 0.0 <= p <= 1.0:
            im = {"long": p / safe.max_leverage, "short": (1.0 - p) / safe.max_leverage}
            ratio = _maintenance_ratio(entry)
            out["initial_margin"] = im
            out["maintenance_margin"] = {s: ratio * v for s, v in im.items()}
        return out

    def params(self, wall_now: float) -> dict[str, Any]:
        clock = self.clock(wall_now)
        return {
            "clock": iso(clock) if clock != float("-inf") else None,
            "clock_kind": self.cfg.clock,
            "params": [p for m in self.current if (p := self.in_force(m, wall_now))],
        }

    def order(self, doc: Any, wall_now: float) -> Verdict:
        """`POST /orders`: may the exchange lend `notional` more on this market's side?"""
        try:
            market, side, notional = doc["market"], doc["side"], doc["notional"]
        except (KeyError, TypeError):
            return self._order(400, "bad_body", "need market, side and notional")
        if not isinstance(market, str) or side not in ("long", "short") or not _amount(notional):
            return self._order(
                400, "bad_body", "market: a string, side: long or short, notional: a number > 0"
            )
        entry = self.in_force(market, wall_now)
        if entry is None:
            return self._order(409, "no_params", f"no parameters for {market!r}")
        if entry["source"] != "riskd":
            return self._order(409, "expired", "the set expired: safe values lend nothing new")
        if entry["mode"] != "normal":
            return self._order(409, entry["mode"], f"the market is {entry['mode']}")
        book = self.positions.get(market, {}).get(side) or SideBook()
        have = book.notional + self.opened.get((market, side), 0.0)
        caps = entry.get("oi_cap")
        cap = caps.get(side) if isinstance(caps, dict) else None
        answer = {"market": market, "side": side, "open_interest": have, "oi_cap": cap}
        if cap is not None and have + notional > cap:
            verdict = self._order(409, "oi_cap", "over the open-interest cap")
            return Verdict(409, {**verdict.body, **answer})
        self.opened[(market, side)] = self.opened.get((market, side), 0.0) + notional
        self.orders["accepted"] = self.orders.get("accepted", 0) + 1
        return Verdict(200, {"accepted": True, **answer, "open_interest": have + notional})

    def _order(self, status: int, reason: str, detail: str) -> Verdict:
        self.orders[reason] = self.orders.get(reason, 0) + 1
        return Verdict(status, {"accepted": False, "error": detail, "reason": reason})

    def book(self) -> Book:
        """The positions file's book plus what `POST /orders` accepted: the reports'."""
        out = {market: dict(sides) for market, sides in self.positions.items()}
        for (market, side), amount in self.opened.items():
            sides = out.setdefault(market, {})
            have = sides.get(side) or SideBook()
            sides[side] = SideBook(have.notional + amount, have.leverage)
        return out


class BookReporter(Reporter):
    """Reports the positions file plus what the receiver accepted since it started."""

    def __init__(self, cfg: ReportConfig, state: ReceiverState) -> None:
        super().__init__(cfg)
        self.state = state

    def _reread(self) -> None:
        super()._reread()
        self.state.positions = self.book
        self.book = self.state.book()


def _amount(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and 0.0 < value < float("inf")
    )


# The feed clock is printed as a date: it must stay well inside datetime's years.
LATEST = parse_iso("9000-01-01T00:00:00Z")


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is no seq


def _maintenance_ratio(entry: dict[str, Any]) -> float:
    try:
        return float(entry["maintenance_margin"]["long"]) / float(entry["initial_margin"]["long"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return 0.5


# --- the aiohttp shell ----------------------------------------------------------------

STATE: web.AppKey[ReceiverState] = web.AppKey("receiver_state")


def make_app(
    cfg: ReceiverConfig, path: str = "/risk-params", wall_clock: Any = time.time
) -> web.Application:
    app = web.Application(client_max_size=cfg.max_body_bytes)
    app[STATE] = ReceiverState(cfg)
    if cfg.report is not None:
        app[STATE].positions = load_book(cfg.report.positions)

    async def post(request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            return web.json_response({"error": "Content-Type must be application/json"}, status=415)
        raw = await request.read()
        verdict = app[STATE].receive(dict(request.headers), raw, wall_clock())
        if verdict.status != 200:
            log.warning(
                "refused a message: %s",
                verdict.body["reason"],
                extra={"reason": verdict.body["reason"]},
            )
        return web.json_response(verdict.body, status=verdict.status)

    async def params(request: web.Request) -> web.Response:
        return web.json_response(app[STATE].params(wall_clock()))

    async def params_one(request: web.Request) -> web.Response:
        market = request.match_info["market"]
        entry = app[STATE].in_force(market, wall_clock())
        if entry is None:
            return web.json_response({"error": f"unknown market {market!r}"}, status=404)
        return web.json_response(entry)

    async def stats(request: web.Request) -> web.Response:
        state = app[STATE]
        epochs = {f"{inst}#{shard}": e for (inst, shard), e in state.epochs.items()}
        return web.json_response(
            {**state.stats, "last_seq": state.last_seq, **({"epochs": epochs} if epochs else {})}
        )

    async def orders(request: web.Request) -> web.Response:
        try:
            doc = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            doc = None
        verdict = app[STATE].order(doc, wall_clock())
        return web.json_response(verdict.body, status=verdict.status)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_post(path, post)
    app.router.add_get("/params", params)
    app.router.add_get("/params/{market}", params_one)
    app.router.add_get("/stats", stats)
    app.router.add_post("/orders", orders)
    app.router.add_get("/healthz", healthz)
    return app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--path", default="/risk-params", help="the POST path riskd sends to")
    parser.add_argument(
        "--secret-file",
        type=Path,
        help=f"file holding the shared secret (default: env {SECRET_ENV})",
    )
    parser.add_argument(
        "--max-skew-s",
        type=float,
        default=300.0,
        help="accepted clock difference on X-Riskd-Timestamp",
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "feed"),
        default="wall",
        help="judge valid_until by wall time, or by the newest generated_at "
        "seen plus wall time since (for replays)",
    )
    parser.add_argument("--instance", help="accept only this riskd instance")
    parser.add_argument("--safe-mode", choices=MODES, default="reduce_only")
    parser.add_argument("--safe-max-leverage", type=float, default=1.0)
    parser.add_argument("--safe-fee-rate-hourly", type=float, default=0.001)
    parser.add_argument("--safe-max-slippage", type=float, default=0.01)
    add_report_arguments(parser)


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """The reference exchange reports its book to riskd (riskd/receiver_client.py)."""
    parser.add_argument(
        "--riskd-url",
        help="riskd's API (http://host:port): report the exchange state to its /v1/exchange/state",
    )
    parser.add_argument(
        "--positions",
        type=Path,
        help="JSON file of per-market long/short lent notional (re-read before each report)",
    )
    parser.add_argument("--insurance-fund", type=float, default=0.0)
    parser.add_argument("--report-interval-s", type=float, default=5.0)
    parser.add_argument(
        "--exchange-name", default="reference-exchange", help="the `exchange` of the reports"
    )
    parser.add_argument(
        "--exchange-secret-file",
        type=Path,
        help="file holding riskd's [exchange] secret (default: env RISKD_RECEIVER_EXCHANGE_SECRET)",
    )


def config_from_args(args: argparse.Namespace) -> ReceiverConfig:
    secret = read_secret(
        args.secret_file, "--secret-file", SECRET_ENV, "no shared secret", ReceiverError
    )
    if args.safe_max_leverage < 1.0:
        raise ReceiverError("--safe-max-leverage must be >= 1")
    if args.max_skew_s <= 0:
        raise ReceiverError("--max-skew-s must be > 0")
    safe = SafeParams(
        args.safe_mode, args.safe_max_leverage, args.safe_fee_rate_hourly, args.safe_max_slippage
    )
    try:
        report = report_config(
            args.riskd_url,
            args.exchange_secret_file,
            args.positions,
            args.insurance_fund,
            args.report_interval_s,
            args.exchange_name,
        )
    except ReportError as exc:
        raise ReceiverError(str(exc)) from None
    return ReceiverConfig(
        secret=secret,
        max_skew_s=args.max_skew_s,
        clock=args.clock,
        safe=safe,
        instance=args.instance,
        report=report,
    )


async def serve(cfg: ReceiverConfig, host: str, port: int, path: str) -> int:
    """Run until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app = make_app(cfg, path)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ReceiverError(
            f"--port: cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None
    log.info(
        "receiver on http://%s:%d%s (clock: %s)", host, runner.addresses[0][1], path, cfg.clock
    )
    reporting = (
        asyncio.create_task(BookReporter(cfg.report, app[STATE]).run(stop))
        if cfg.report is not None
        else None
    )
    await stop.wait()
    if reporting is not None:
        await reporting
    await runner.cleanup()
    return 0
