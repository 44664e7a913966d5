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
