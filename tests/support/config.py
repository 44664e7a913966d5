"""Paths of the bundled data, daemon configs as TOML, free ports, a clean environment."""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TAPES = REPO / "data" / "tapes"
FED_TAPE = TAPES / "fed_dec2025"
FED_CSV = FED_TAPE / "fed_nochange.csv"
FED_MARKETS = FED_TAPE / "markets.json"
MIDTERMS = TAPES / "polymarket_midterms_2022"

SECRET = "test-shared-secret-5f2c"
INSTANCE = "riskd-test"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML has no literal for {value!r} in these tests")
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # JSON string escapes are valid TOML basic strings
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {type(value).__name__}")


def to_toml(doc: dict[str, Any]) -> str:
    """A nested dict as TOML: scalars first, then sub-tables as [a.b] headers."""
    lines: list[str] = []

    def table(prefix: str, data: dict[str, Any]) -> None:
        scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
        tables = {k: v for k, v in data.items() if isinstance(v, dict)}
        if prefix and (scalars or not tables):
            lines.append(f"[{prefix}]")
        for key, value in scalars.items():
            if value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
        if prefix and (scalars or not tables):
            lines.append("")
        for key, sub in tables.items():
            table(f"{prefix}.{key}" if prefix else key, sub)

    table("", doc)
    return "\n".join(lines) + "\n"


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge; a None in `override` removes the key."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def write_config(path: Path, doc: dict[str, Any]) -> Path:
    """Write `doc` as TOML atomically (a SIGHUP never reads half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(to_toml(doc), encoding="utf-8")
    tmp.replace(path)
    return path


def base_config(tmp_path: Path, port: int, **sections: dict[str, Any]) -> dict[str, Any]:
    """A complete daemon config: fed tape as fast as possible, API on `port`, audit log
    and state under tmp_path. Keyword sections are deep-merged on top."""
    doc: dict[str, Any] = {
        "feed": {"kind": "replay", "path": str(FED_TAPE), "speed": 0.0, "exit_at_end": False},
        "markets": {"file": str(FED_MARKETS)},
        "governor": {"publish_interval_s": 0.05, "stale_after_s": 14400.0, "ttl_s": 60.0},
        "publisher": {"instance": INSTANCE, "jsonl": {"path": str(tmp_path / "audit.jsonl")}},
        "server": {"host": "127.0.0.1", "port": port},
        "state": {"dir": str(tmp_path / "state")},
        "log": {"level": "warning"},
    }
    return merge(doc, sections)


def clean_env(**extra: str) -> dict[str, str]:
    """The test process environment without any RISKD_ variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKD_")}
    env.update(extra)
    return env


def tape_rows(path: Path) -> list[list[str]]:
    """Data rows of a CSV tape (header dropped)."""
    with path.open(encoding="utf-8", newline="") as fh:
        return [row for row in list(csv.reader(fh))[1:] if row]


def check_manifest_config(
    config: dict[str, str], tmp_path: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    """`riskd check-config` on a Kubernetes ConfigMap's riskd.toml, its mounted markets
    file and HTTP secret placed in tmp_path; `env` on top of a clean environment."""
    secret = tmp_path / "http-secret"
    secret.write_text("s3cret")
    (tmp_path / "markets.toml").write_text(config["markets.toml"])
    toml = (
        config["riskd.toml"]
        .replace("/etc/riskd/markets.toml", str(tmp_path / "markets.toml"))
        .replace("/etc/riskd/secrets/http-secret", str(secret))
    )
    (tmp_path / "riskd.toml").write_text(toml)
    return subprocess.run(
        [sys.executable, "-m", "riskd.cli", "check-config", "-c", str(tmp_path / "riskd.toml")],
        capture_output=True,
        text=True,
        env=clean_env(**env),
    )
