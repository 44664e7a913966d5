"""Checks shared by config sections."""

from __future__ import annotations

from pathlib import Path


def readable_file(path: Path | None) -> Path | None:
    """A secret or key file must be readable when the config loads, so check-config
    and SIGHUP refuse it rather than the first publish or connect."""
    if path is not None:
        try:
            path.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    return path


class KeyValueError(ValueError):
    """A value that conflicts with another, raised by a section's model validator:
    `key` is relative to the section (the loader prefixes the section's path, so the
    message names the full key, e.g. `publisher.http.backoff_max_s`)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def ordered(section: object, low: str, high: str, *, strict: bool = False) -> None:
    """`low` <= `high` (< when strict) in `section`; else a KeyValueError naming `high`."""
    lo, hi = getattr(section, low), getattr(section, high)
    if hi < lo or (strict and hi == lo):
        relation = "exceed" if strict else "be at least"
        raise KeyValueError(high, f"must {relation} {low} ({hi:g} vs {lo:g})")
