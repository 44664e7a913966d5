"""Operator overrides of single markets (the admin API), persisted and audited.

An override pins a market's mode (at least this mode) and/or caps its leverage. A
request changes only the fields it gives (a field given as null is cleared; with
neither a mode nor a leverage left, the override is gone), so pinning a halted
market's leverage leaves it halted; `clear` removes the whole override.
Applied through the governor's `Conditions.mode_floor` / `leverage_cap`, it can
only make a market tighter than the model. With `[server] allow_loosen = true`,
an override marked `loosen` replaces the model's leverage target instead (still
bounded by `[limits] max_leverage`, still reached by the governor's bounded
loosening steps, still overridden by the fail-safes: stale feed, resolution
freeze, jump cool-down). Turning `allow_loosen` off again makes every stored
override a cap once more.

Overrides live in `<[state] dir>/overrides.json` (written atomically: temp file,
fsync, rename), so they survive restarts; every change is appended to
`<[state] dir>/overrides.audit.jsonl` with who made it, when, why, and what was
in force before.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from riskd.model.governor import MODES

FILE = "overrides.json"
AUDIT_FILE = "overrides.audit.jsonl"
SCHEMA = 1


class OverrideError(ValueError):
    """A request or a file that does not describe a valid override."""


@dataclass(frozen=True)
class Override:
    mode: str | None = None  # "reduce_only" | "halted" (a floor); "normal"/None: no pin
    max_leverage: float | None = None  # a cap on both sides (a target with `loosen`)
    loosen: bool = False
    note: str = ""
    actor: str = ""
    set_at: float = 0.0  # wall-clock unix seconds

    def mode_floor(self) -> int:
        return MODES.index(self.mode) if self.mode else 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# The fields a request may change; the others of a stored override stay as they are.
FIELDS = ("mode", "max_leverage", "loosen", "note")


def parse_request(body: Any) -> tuple[str, dict[str, Any] | None]:
    """The admin override request -> (market, changes), changes None to clear the whole
    override. Only the fields given change (`merge`); a field given as null clears it.

    {"market": "...", "mode": "reduce_only"|"halted"|"normal"|null,
     "max_leverage": number >= 1 | null, "loosen": bool, "clear": false, "note": "..."}
    """
    if not isinstance(body, dict):
        raise OverrideError("the body must be a JSON object")
    known = {"market", "clear", *FIELDS}
    unknown = sorted(set(body) - known)
    if unknown:
        raise OverrideError(f"unknown field(s): {', '.join(unknown)}")
    market = body.get("market")
    if not isinstance(market, str) or not market or not _utf8(market):
        raise OverrideError("market: a market id is required")
    note = body.get("note")
    if note is not None and not (isinstance(note, str) and _utf8(note)):
        raise OverrideError("note: must be a string")
    clear = body.get("clear", False)
    if not isinstance(clear, bool):
        raise OverrideError("clear: must be true or false")
    if clear:
        if any(k in body for k in ("mode", "max_leverage", "loosen")):
            raise OverrideError("clear: give no mode, max_leverage or loosen with it")
        return market, None
    changes: dict[str, Any] = {}
    if "mode" in body:
        mode = body["mode"]
        if mode is not None and mode not in MODES:
            raise OverrideError(f"mode: one of {', '.join(MODES)} or null")
        changes["mode"] = None if mode == "normal" else mode
    if "max_leverage" in body:
        lev = body["max_leverage"]
        if lev is not None:
            if (
                isinstance(lev, bool)
                or not isinstance(lev, int | float)
                or not math.isfinite(lev := _float(lev))
                or lev < 1.0
            ):
                raise OverrideError("max_leverage: a number >= 1 or null")
        changes["max_leverage"] = lev
    if "loosen" in body:
        loosen = body["loosen"]
        if loosen is not None and not isinstance(loosen, bool):
            raise OverrideError("loosen: must be true, false or null")
        changes["loosen"] = bool(loosen)
    if not changes:
        raise OverrideError(
            "give mode, max_leverage and/or loosen (null clears one), or clear: true"
        )
    if "note" in body:
        changes["note"] = note or ""
    return market, changes


def _utf8(text: str) -> bool:
    """JSON may escape a lone surrogate; the file and the audit trail cannot hold one."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _float(number: int | float) -> float:
    try:
        return float(number)
    except OverflowError:  # an integer beyond any float
        return math.nan


def merge(current: Override | None, changes: dict[str, Any]) -> Override | None:
    """`current` with `changes` applied field by field; None when neither a mode nor a
    leverage is left (nothing to override: the market is the model's again)."""
    fields = {**(current or Override()).as_dict(), **changes}
    if fields["max_leverage"] is None:
        if changes.get("loosen"):
            raise OverrideError("loosen: only with max_leverage (the leverage to allow)")
        fields["loosen"] = False  # nothing left to loosen to
    if fields["mode"] is None and fields["max_leverage"] is None:
        return None
    return Override(**fields)


def loosens(changes: dict[str, Any] | None, merged: Override | None) -> bool:
    """Whether a request sets or moves a loosening target (needs `allow_loosen`); a
    request that changes only the mode or note of one does not."""
    return bool(
        changes
        and merged is not None
        and merged.loosen
        and ("loosen" in changes or "max_leverage" in changes)
    )


class OverrideStore:
    """The overrides in force, their file and their audit trail."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.path = directory / FILE
        self.audit_path = directory / AUDIT_FILE
        self.overrides: dict[str, Override] = {}

    def load(self) -> dict[str, Override]:
        """Read the file if there is one; a file that cannot be used is an error (an
        operator's pinned market silently loosening at a restart is worse)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return self.overrides
        except OSError as exc:
            raise OverrideError(f"{self.path}: cannot read: {exc.strerror}") from None
        try:
            doc = orjson.loads(raw)
            items = doc["overrides"]
            self.overrides = {str(m): Override(**o) for m, o in items.items()}
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise OverrideError(f"{self.path}: not a valid overrides file: {exc}") from None
        return self.overrides

    def set(
        self,
        market: str,
        override: Override | None,
        actor: str,
        now: float | None = None,
        changes: dict[str, Any] | None = None,
    ) -> Override | None:
        """Put (or clear, with None) a market's override: audit first, then the file;
        returns the override that was in force before. `changes`: the fields the
        request gave, for the audit trail."""
        wall = time.time() if now is None else now
        before = self.overrides.get(market)
        if override is not None:
            override = Override(**{**override.as_dict(), "actor": actor, "set_at": wall})
        record = {
            "at": wall,
            "actor": actor,
            "action": "clear" if override is None else "set",
            "market": market,
            "override": override.as_dict() if override else None,
            "previous": before.as_dict() if before else None,
            "changes": changes,
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        with self.audit_path.open("ab") as fh:
            fh.write(orjson.dumps(record) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        changed = dict(self.overrides)
        if override is None:
            changed.pop(market, None)
        else:
            changed[market] = override
        self._write(changed)
        self.overrides = changed
        return before

    def _write(self, overrides: dict[str, Override]) -> None:
        body = orjson.dumps(
            {"schema": SCHEMA, "overrides": {m: o.as_dict() for m, o in overrides.items()}},
            option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS,
        )
        tmp = self.dir / f".{FILE}.{os.getpid()}.tmp"
        with tmp.open("wb") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
