"""What the daemon's output must satisfy: the audit log, published batches, /metrics."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support.config import INSTANCE

SIDES = ("long", "short")
MODES = ("normal", "reduce_only", "halted")


def parse_time(text: str) -> float:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text).timestamp()


def read_audit(path: Path) -> list[dict[str, Any]]:
    """Every line of the JSONL audit log, parsed; fails on a torn last line."""
    data = path.read_bytes()
    assert data, f"{path} is empty"
    assert data.endswith(b"\n"), "audit log ends in a torn line"
    return [json.loads(line) for line in data.splitlines()]


def entries_by_market(batches: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for batch in batches:
        for entry in batch["params"]:
            out.setdefault(entry["market"], []).append({**entry, "_at": batch["generated_at"]})
    return out


def assert_versions_increase(batches: list[dict[str, Any]]) -> None:
    for market, entries in entries_by_market(batches).items():
        versions = [e["version"] for e in entries]
        assert all(b > a for a, b in zip(versions, versions[1:], strict=False)), (market, versions)


def last_versions(batches: list[dict[str, Any]]) -> dict[str, int]:
    return {m: es[-1]["version"] for m, es in entries_by_market(batches).items()}


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def assert_complete_entry(entry: dict[str, Any]) -> None:
    """Every field of the published set of interfaces.md, with sane types and ranges."""
    assert isinstance(entry["market"], str) and entry["market"]
    assert isinstance(entry["version"], int) and entry["version"] >= 1
    assert entry["mode"] in MODES
    for key in ("max_leverage", "initial_margin", "maintenance_margin", "fee_rate_hourly"):
        assert set(entry[key]) >= set(SIDES), (key, entry[key])
        assert all(_number(entry[key][s]) for s in SIDES), (key, entry[key])
    for side in SIDES:
        assert entry["max_leverage"][side] >= 1.0
        assert entry["fee_rate_hourly"][side] >= 0.0
        assert 0.0 <= entry["maintenance_margin"][side] <= entry["initial_margin"][side]
    assert _number(entry["max_slippage"]) and 0.0 < entry["max_slippage"] < 1.0
    # null without [insurance]; else per side a cap >= 0, or null (none on that side)
    cap = entry["oi_cap"]
    assert cap is None or (
        set(cap) == set(SIDES) and all(v is None or (_number(v) and v >= 0.0) for v in cap.values())
    ), cap
    assert isinstance(entry["valid_until"], str)
    parse_time(entry["valid_until"])
    assert isinstance(entry["reasons"], list)
    assert all(isinstance(r, str) for r in entry["reasons"])
    inputs = entry["inputs"]
    for key in ("p", "tau_s", "sigma", "lambda", "J"):
        assert _number(inputs[key]), (key, inputs)
    assert 0.0 <= inputs["p"] <= 1.0
    assert inputs["tau_s"] >= 0.0


def assert_complete_batch(batch: dict[str, Any], instance: str = INSTANCE) -> None:
    assert batch["source"] == "riskd"
    assert batch["instance"] == instance
    assert isinstance(batch["seq"], int)
    generated = parse_time(batch["generated_at"])
    assert batch["params"], "an empty batch was published"
    for entry in batch["params"]:
        assert_complete_entry(entry)
        assert parse_time(entry["valid_until"]) > generated


# --- metrics --------------------------------------------------------------------


def metric_samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text -> {(sample name, labels): value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def metric_families(text: str) -> set[str]:
    """Declared family names, as written in the exposition (counters keep `_total`)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
    return names


def sample(text: str, name: str, **labels: str) -> float | None:
    return metric_samples(text).get((name, frozenset(labels.items())))
