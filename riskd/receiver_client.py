"""The reference exchange reports its book to riskd (`riskd receiver --riskd-url URL`).

Every `interval_s` it POSTs its whole state to riskd's `/v1/exchange/state`, signed
with the exchange secret as interfaces.md specifies: per market the lent notional of
each side (and the leverage buckets, if the positions file has them) and the
insurance fund. The positions file is read again before each report, so a changed
book goes out with the next one; a file that became unreadable or invalid is logged
and the last good book is reported. `seq` starts at the wall clock in milliseconds
and rises by at least one per report, so a restart never reuses one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from riskd.exchange import MAX_ID_CHARS, SideBook, check_book, open_interest_dict
from riskd.publish.http import sign
from riskd.secrets import read_secret
from riskd.timeutil import iso

log = logging.getLogger("riskd.receiver.report")

EXCHANGE_SECRET_ENV = "RISKD_RECEIVER_EXCHANGE_SECRET"
PATH = "/v1/exchange/state"
Book = dict[str, dict[str, SideBook]]


class ReportError(ValueError):
    """Bad reporting settings or positions file (a usage error)."""


@dataclass(frozen=True)
class ReportConfig:
    url: str  # riskd's API, e.g. http://127.0.0.1:8787
    secret: bytes
    exchange: str = "reference-exchange"
    positions: Path | None = None
    insurance_fund: float = 0.0
    interval_s: float = 5.0
    timeout_s: float = 5.0


def load_book(path: Path | None) -> Book:
    """The positions file: `{"<market>": {"long": n, "short": n, "leverage": {"long":
    {"2": n}}}}`, optionally wrapped as `{"open_interest": {...}}`; none: no positions."""
    if path is None:
        return {}
    try:
        doc = json.loads(path.read_bytes())
    except OSError as exc:
        raise ReportError(f"--positions: cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ReportError(f"--positions: {path} is not JSON: {exc}") from None
    if isinstance(doc, dict) and isinstance(doc.get("open_interest"), dict):
        doc = doc["open_interest"]
    try:
        return check_book(doc)
    except ValueError as exc:
        raise ReportError(f"--positions: {path}: {exc}") from None


def body(book: Book, exchange: str, seq: int, as_of: float, insurance_fund: float) -> bytes:
    return json.dumps(
        {
            "exchange": exchange,
            "seq": seq,
            "as_of": iso(as_of),
            "insurance_fund": insurance_fund,
            "open_interest": open_interest_dict(book),
        }
    ).encode()


def signed_headers(secret: bytes, raw: bytes, wall_now: float) -> dict[str, str]:
    ts = str(int(wall_now))
    return {
        "Content-Type": "application/json",
        "X-Riskd-Timestamp": ts,
        "X-Riskd-Signature": sign(secret, ts, raw),
    }


class Reporter:
    """Sends the book every `interval_s` until stopped; never raises for riskd's sake."""

    def __init__(self, cfg: ReportConfig, wall_clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.wall_clock = wall_clock
        self.book = load_book(cfg.positions)
        self.seq = 0
        self.last: tuple[int, Any] | None = None  # riskd's last answer (status, body)

    def _reread(self) -> None:
        try:
            self.book = load_book(self.cfg.positions)
        except ReportError as exc:
            log.warning("keeping the last good book: %s", exc, extra={"reason": "bad_positions"})

    async def report_once(self, session: aiohttp.ClientSession) -> tuple[int, Any]:
        self._reread()
        now = self.wall_clock()
        self.seq = max(self.seq + 1, int(now * 1000))
        raw = body(self.book, self.cfg.exchange, self.seq, now, self.cfg.insurance_fund)
        headers = signed_headers(self.cfg.secret, raw, now)
        async with session.post(
            self.cfg.url.rstrip("/") + PATH, data=raw, headers=headers, allow_redirects=False
        ) as resp:
            text = await resp.text()
            try:
                answer: Any = json.loads(text)
            except ValueError:
                answer = text[:200]
        self.last = (resp.status, answer)
        if resp.status == 200:
            log.debug("reported %d markets (seq %d)", len(self.book), self.seq)
        else:
            reason = answer.get("reason") if isinstance(answer, dict) else None
            log.warning(
                "riskd refused the exchange state: %d %s",
                resp.status,
                reason,
                extra={"reason": "exchange_state_refused"},
            )
        return self.last

    async def run(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                try:
                    await self.report_once(session)
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    log.warning(
                        "cannot report to riskd: %s",
                        type(exc).__name__,
                        extra={"reason": "exchange_state_unreachable"},
                    )
                try:
                    await asyncio.wait_for(stop.wait(), self.cfg.interval_s)
                except TimeoutError:
                    pass


def report_config(
    url: str | None,
    secret_file: Path | None,
    positions: Path | None,
    insurance_fund: float,
    interval_s: float,
    exchange: str,
) -> ReportConfig | None:
    """The settings of `riskd receiver`'s reporting options; None without --riskd-url."""
    if url is None:
        if positions is not None:
            raise ReportError("--positions needs --riskd-url (where to report them)")
        return None
    secret = read_secret(
        secret_file,
        "--exchange-secret-file",
        EXCHANGE_SECRET_ENV,
        "--riskd-url: no exchange secret",
        ReportError,
    )
    if not (insurance_fund >= 0 and insurance_fund < float("inf")):
        raise ReportError("--insurance-fund must be a finite number >= 0")
    if not interval_s > 0:
        raise ReportError("--report-interval-s must be > 0")
    if not 0 < len(exchange) <= MAX_ID_CHARS:
        raise ReportError(f"--exchange-name: 1 to {MAX_ID_CHARS} characters")
    cfg = ReportConfig(url, secret, exchange, positions, insurance_fund, interval_s)
    load_book(positions)  # a bad file is a usage error now, not a warning later
    return cfg
