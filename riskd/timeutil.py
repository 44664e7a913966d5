"""Time formats shared by the payload, the API and the config."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(ts: float) -> str:
    """Unix seconds -> ISO 8601 UTC with milliseconds and a Z."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def parse_iso(text: str) -> float:
    """ISO 8601 with an offset (or Z) -> unix seconds; ValueError without an offset."""
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return dt.timestamp()
