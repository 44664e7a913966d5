"""The monitoring stack: the dashboard and alert files, PromQL inspection, and a real
Prometheus on 127.0.0.1 (with `Riskd` and `ReceiverThread` the whole stack).

Blocking on purpose: the processes live for a whole test module, longer than one
test's event loop.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.client import get_blocking
from tests.support.config import FED_CSV, REPO, free_port
from tests.support.waiting import wait_for

DASHBOARD = REPO / "grafana" / "dashboards" / "riskd.json"
DATASOURCES = REPO / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
DASHBOARD_PROVIDER = REPO / "grafana" / "provisioning" / "dashboards" / "riskd.yaml"
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "riskd.rules.yml"
RULES_TESTS = PROMETHEUS_DIR / "riskd.rules.test.yml"
COMPOSE_PROMETHEUS = PROMETHEUS_DIR / "prometheus.yml"

JOB = "riskd"  # the job name the alert rules and the dashboard expect
# Series Prometheus makes itself for every target (not exported by riskd).
SYNTHETIC = {"up"}


# --- the files --------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every annotation."""
    out = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r} target {target['refId']}", target["expr"]))
    for ann in dashboard.get("annotations", {}).get("list", []):
        if "expr" in ann:
            out.append((f"annotation {ann['name']!r}", ann["expr"]))
    return out


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def datasource_uid() -> str:
    (source,) = load_yaml(DATASOURCES)["datasources"]
    return str(source["uid"])


# --- Grafana's variable expansion ---------------------------------------------------

GRAFANA_BUILTINS = {
    "__interval",
    "__interval_ms",
    "__rate_interval",
    "__range",
    "__range_s",
    "__range_ms",
    "__dashboard",
    "__from",
    "__to",
}
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


def variables_used(text: str) -> set[str]:
    return {next(g for g in m.groups() if g) for m in VARIABLE.finditer(text)}


def expand(expr: str, values: dict[str, str], step_s: float, scrape_s: float) -> str:
    """What Grafana sends for `expr`: template variables replaced (a multi-value
    variable as a regex alternation), $__interval the step, $__rate_interval
    max($__interval + scrape interval, 4 * scrape interval) as Grafana computes it."""
    builtins = {
        "__interval": _duration(step_s),
        "__rate_interval": _duration(max(step_s + scrape_s, 4 * scrape_s)),
    }

    def sub(m: re.Match[str]) -> str:
        name = next(g for g in m.groups() if g)
        if name in builtins:
            return builtins[name]
        if name in values:
            return values[name]
        raise KeyError(f"template variable ${name} has no value")

    return VARIABLE.sub(sub, expr)


def regex_value(options: list[str]) -> str:
    """A multi-value selection as Grafana formats it for a Prometheus regex matcher."""
    escaped = [re.sub(r"([\\.^$*+?()\[\]{}|])", r"\\\\\1", o) for o in options]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def _duration(seconds: float) -> str:
    return f"{int(seconds * 1000)}ms"


# --- PromQL inspection ----------------------------------------------------------------

_TOKEN = re.compile(
    r"""
  (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
| (?P<number>(?<![\w:])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
| (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
| (?P<variable>\$\{?\w+\}?)
| (?P<open>[({\[])
| (?P<close>[)}\]])
| (?P<op>=~|!~|!=|==|<=|>=|[=<>+\-*/%^,])
| (?P<space>\s+)
""",
    re.X,
)
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}
_FUNCTIONS = {
    # aggregations
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    # functions
    "abs",
    "absent",
    "absent_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_count",
    "histogram_sum",
    "histogram_fraction",
    "histogram_quantile",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "ln",
    "log2",
    "log10",
    "minute",
    "month",
    "predict_linear",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sort",
    "sort_desc",
    "sqrt",
    "time",
    "timestamp",
    "vector",
    "year",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "quantile_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "last_over_time",
    "present_over_time",
}


@dataclass(frozen=True)
class Selector:
    metric: str
    labels: frozenset[str]  # label names matched in {...}


def selectors(expr: str) -> list[Selector]:
    """The vector selectors of a PromQL expression: metric names with the label names
    they match on. Function and aggregation names, grouping label lists, ranges and
    durations are not selectors."""
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr) if m.lastgroup != "space"]
    consumed = sum(len(m.group()) for m in _TOKEN.finditer(expr))
    assert consumed == len(expr), f"cannot tokenize PromQL: {expr!r}"
    out: list[Selector] = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if text == "[":  # a range or subquery duration
            i = _skip_group(tokens, i)
            continue
        if kind == "ident" and text in _GROUPING:
            i = _skip_group(tokens, i + 1) if nxt == "(" else i + 1
            continue
        if kind == "ident" and text == "offset":
            i += 3 if i + 2 < len(tokens) and tokens[i + 2][0] == "ident" else 2
            continue
        if kind == "ident" and (
            text in _KEYWORDS or (text in _FUNCTIONS and nxt in ("(", "by", "without"))
        ):
            i += 1
            continue
        if kind == "ident" and nxt == "(":
            raise AssertionError(f"unknown PromQL function {text!r} in {expr!r}")
        if kind == "ident":
            labels: set[str] = set()
            i += 1
            if nxt == "{":
                end = _skip_group(tokens, i)
                inner = tokens[i + 1 : end - 1]
                for k, (ikind, itext) in enumerate(inner):
                    if (
                        ikind == "ident"
                        and k + 1 < len(inner)
                        and inner[k + 1][1] in ("=", "!=", "=~", "!~")
                    ):
                        labels.add(itext)
                i = end
            out.append(Selector(text, frozenset(labels)))
            continue
        i += 1
    return out


def _skip_group(tokens: list[tuple[str | None, str]], i: int) -> int:
    """Index after the bracketed group that opens at tokens[i]."""
    depth = 0
    for j in range(i, len(tokens)):
        if tokens[j][1] in "([{":
            depth += 1
        elif tokens[j][1] in ")]}":
            depth -= 1
            if depth == 0:
                return j + 1
    raise AssertionError("unbalanced brackets")


def metric_names(expr: str) -> set[str]:
    return {s.metric for s in selectors(expr)}


@dataclass
class Exposition:
    """What a riskd /metrics page declares: queryable names and their label names."""

    names: set[str]
    labels: dict[str, set[str]]  # sample name -> label names seen
    types: dict[str, str]  # family name, and a counter's _total name -> type

    @classmethod
    def parse(cls, text: str) -> Exposition:
        names: set[str] = set()
        labels: dict[str, set[str]] = {}
        types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            types[family.name] = family.type
            if family.type == "counter":
                types[family.name + "_total"] = family.type
            suffixes = {
                "counter": ["_total", "_created"],
                "histogram": ["_bucket", "_sum", "_count", "_created"],
                "summary": ["_sum", "_count", "_created", ""],
            }.get(family.type, [""])
            for suffix in suffixes:
                names.add(family.name + suffix)
            for s in family.samples:
                labels.setdefault(s.name, set()).update(k for k in s.labels if k != "le")
        return cls(names, labels, types)


def broken_tape(path: Path) -> Path:
    """The Fed tape plus rows the tape reader and the engine reject."""
    rows = FED_CSV.read_text(encoding="utf-8").rstrip("\n").split("\n")
    rows += [
        "2025-12-07T05:00:00Z,fed-dec2025-nochange-poly,1.5,,,",  # bad_price (tape)
        "2025-12-07T05:00:00Z,fed-dec2025-nochange-kalshi,0.07,0.09,0.05,",  # bad_bid_ask
        "2025-12-07T05:00:00Z,not-a-listed-market,0.5,,,",  # unknown_market (engine)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


# --- Prometheus -------------------------------------------------------------------------


def tool(name: str) -> str:
    """Path of a Prometheus binary; skips the test when missing (fails under CI)."""
    path = shutil.which(name)
    if path is None:
        message = (
            f"{name} not found: `make test` installs the Debian package prometheus "
            "(make test-tools)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


class Prometheus:
    """A real Prometheus on 127.0.0.1 (free port, temporary data dir), scraping `targets`
    as job "riskd" every `scrape_s` and evaluating `rule_files` as often."""

    def __init__(
        self, workdir: Path, targets: list[str], rule_files: list[Path], scrape_s: float = 1.0
    ) -> None:
        binary = tool("prometheus")
        self.scrape_s = scrape_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        interval = f"{int(scrape_s * 1000)}ms"
        config = {
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": interval,
            },
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": targets}]}],
        }
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        self.started = time.time()

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-3000:]

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"prometheus exited with {self.proc.returncode}:\n{self.log()}"
                )
            return get_blocking(self.url + "/-/ready")[0] == 200

        wait_for(ready, timeout, "prometheus to be ready")

    def api(self, path: str, **params: str | float) -> Any:
        query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        status, body = get_blocking(f"{self.url}/api/v1/{path}?{query}")
        doc = json.loads(body)
        assert status == 200 and doc["status"] == "success", (path, params, doc)
        return doc["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query: the series of the result vector."""
        params: dict[str, str | float] = {"query": expr}
        if at is not None:
            params["time"] = at
        data = self.api("query", **params)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        data = self.api("query_range", query=expr, start=start, end=end, step=step)
        return list(data["result"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def finite_points(series: list[dict[str, Any]]) -> int:
    """Number of finite values in a range query result."""
    n = 0
    for s in series:
        for _, value in s.get("values", []):
            if value not in ("NaN", "+Inf", "-Inf"):
                n += 1
    return n
