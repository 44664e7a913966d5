"""The Grafana dashboard and provisioning as files: structure, data source, variables,
and every metric a panel or an alert rule uses is one riskd exports (read from a real
daemon's /metrics). The queries themselves run against Prometheus in
test_monitoring.py."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import (
    Receiver,
    ReceiverThread,
    Riskd,
    base_config,
    free_port,
    merge,
    tape_rows,
    wait_for,
)
from tests.support.promstack import (
    DASHBOARD,
    DASHBOARD_PROVIDER,
    DATASOURCES,
    GRAFANA_BUILTINS,
    SYNTHETIC,
    Exposition,
    alert_rules,
    broken_tape,
    dashboard_queries,
    datasource_uid,
    load_dashboard,
    load_yaml,
    metric_names,
    panels,
    selectors,
    variables_used,
)

COMPOSE = DASHBOARD.parents[2] / "docker-compose.yml"


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exposition]:
    """/metrics of a daemon that replayed a tape with rejected rows, published over
    HTTP and reloaded its config: every family riskd declares, most with samples."""
    base = tmp_path_factory.mktemp("exposition")
    exchange = ReceiverThread(Receiver(b"dashboard-test"))
    tape = broken_tape(base / "tape" / "fed.csv")
    daemon = Riskd(
        base,
        merge(
            base_config(base, free_port()),
            {
                "feed": {"path": str(tape)},
                "publisher": {"http": {"url": exchange.url, "secret": "dashboard-test"}},
            },
        ),
    )
    try:
        daemon.wait_healthy()
        daemon.signal(signal.SIGHUP)
        rows = len(tape_rows(tape))

        def complete() -> Exposition | None:
            expo = Exposition.parse(daemon.metrics())
            seen = expo.labels
            ready = (
                "riskd_config_reloads_total" in seen
                and "riskd_ticks_rejected_total" in seen
                and "riskd_publish_latency_seconds_bucket" in seen
                and "riskd_max_leverage" in seen
            )
            return expo if ready else None

        expo = wait_for(complete, 20, f"the daemon to replay {rows} rows and reload")
        yield expo
    finally:
        daemon.close()
        exchange.close()


# --- structure ----------------------------------------------------------------------------


def test_dashboard_has_a_fixed_uid_and_unique_panel_ids() -> None:
    dash = load_dashboard()
    assert dash["uid"] == "riskd-overview"
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids))
    for panel in panels(dash):
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]


def test_every_panel_and_annotation_uses_the_provisioned_datasource_by_uid() -> None:
    uid = datasource_uid()
    dash = load_dashboard()
    for panel in panels(dash):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
    for ann in dash["annotations"]["list"]:
        assert ann["datasource"] == {"type": "prometheus", "uid": uid}, ann["name"]
    for variable in dash["templating"]["list"]:
        assert variable["datasource"] == {"type": "prometheus", "uid": uid}, variable["name"]


def test_the_rows_and_panels_the_issue_lists() -> None:
    dash = load_dashboard()
    used = {name for _, expr in dashboard_queries(dash) for name in metric_names(expr)}
    wanted = {
        "riskd_probability",
        "riskd_max_leverage",
        "riskd_fee_rate_hourly",
        "riskd_max_slippage",
        "riskd_time_to_resolution_seconds",
        "riskd_belief_volatility",
        "riskd_jump_intensity",
        "riskd_jumps_detected_total",
        "riskd_market_mode",
        "riskd_feed_connected",
        "riskd_feed_lag_seconds",
        "riskd_feed_reconnects_total",
        "riskd_ticks_rejected_total",
        "riskd_publishes_total",
        "riskd_publish_latency_seconds_bucket",
        "riskd_tick_to_publish_seconds_bucket",
        "riskd_cycle_seconds_bucket",
    }
    assert wanted <= used, wanted - used
    (jumps,) = [a for a in dash["annotations"]["list"] if a["name"] == "Jumps"]
    assert metric_names(jumps["expr"]) == {"riskd_jumps_detected_total"}
    # Panels showing one market's values follow the $market selection.
    for where, expr in dashboard_queries(dash):
        for sel in selectors(expr):
            if sel.metric.startswith(
                (
                    "riskd_probability",
                    "riskd_max_leverage",
                    "riskd_fee_rate",
                    "riskd_jump",
                    "riskd_market_mode",
                )
            ):
                assert "market" in variables_used(expr), where


def test_every_template_variable_is_defined(exposition: Exposition) -> None:
    dash = load_dashboard()
    defined = {v["name"] for v in dash["templating"]["list"]}
    assert "market" in defined
    texts: list[tuple[str, str]] = list(dashboard_queries(dash))
    for panel in panels(dash):
        texts.append((f"title of {panel['title']!r}", panel["title"]))
        for target in panel.get("targets", []):
            texts.append((f"legend of {panel['title']!r}", target.get("legendFormat", "")))
    for where, text in texts:
        unknown = variables_used(text) - defined - GRAFANA_BUILTINS
        assert not unknown, (where, unknown)
    # Each variable's query asks for a label of a metric the daemon exports with it.
    for variable in dash["templating"]["list"]:
        query = variable["query"]["query"]
        assert query == variable["definition"]
        inner = query.removeprefix("label_values(").removesuffix(")")
        metric, label = (part.strip() for part in inner.split(","))
        assert metric in exposition.names
        assert label in exposition.labels[metric], (variable["name"], metric, label)


def _refers_to_exported(where: str, expr: str, expo: Exposition) -> None:
    for sel in selectors(expr):
        if sel.metric in SYNTHETIC:
            continue
        assert sel.metric in expo.names, f"{where}: {sel.metric} is not exported"
        if sel.metric in expo.labels:
            extra = sel.labels - expo.labels[sel.metric] - {"job", "instance"}
            assert not extra, f"{where}: {sel.metric} has no label {extra}"


def test_no_panel_refers_to_a_metric_the_daemon_does_not_export(exposition: Exposition) -> None:
    for where, expr in dashboard_queries(load_dashboard()):
        _refers_to_exported(where, expr, exposition)


def test_no_alert_rule_refers_to_a_metric_the_daemon_does_not_export(
    exposition: Exposition,
) -> None:
    for rule in alert_rules():
        _refers_to_exported(f"rule {rule['alert']}", rule["expr"], exposition)


def _interface_metrics() -> list[tuple[str, set[str], str]]:
    """(name, labels, type) of every metric docs/interfaces.md lists, plus the two
    the observability issue adds."""
    text = (DASHBOARD.parents[2] / "docs" / "interfaces.md").read_text(encoding="utf-8")
    section = text[text.index("## Metrics") :]
    out = []
    for m in re.finditer(r"`(riskd_\w+)(?:\{([\w,]+)\})?`(\s+\(histogram\))?", section):
        name, labels, histogram = m.groups()
        kind = "histogram" if histogram else "counter" if name.endswith("_total") else "gauge"
        out.append((name, set(labels.split(",")) if labels else set(), kind))
    assert len(out) >= 19, out
    out.append(("riskd_build_info", {"version"}, "gauge"))
    out.append(("riskd_feed_last_message_timestamp_seconds", {"venue"}, "gauge"))
    return out


def test_every_interface_metric_is_exported_with_its_type_and_labels(
    exposition: Exposition,
) -> None:
    for name, labels, kind in _interface_metrics():
        assert exposition.types.get(name) == kind, (name, exposition.types.get(name), kind)
        sample = f"{name}_count" if kind == "histogram" else name
        assert sample in exposition.labels, f"{name} has no samples"
        assert exposition.labels[sample] == labels, (name, exposition.labels[sample], labels)


# --- provisioning ---------------------------------------------------------------------------


def test_datasource_provisioning() -> None:
    (source,) = load_yaml(DATASOURCES)["datasources"]
    assert source["type"] == "prometheus" and source["uid"] == "riskd-prometheus"
    compose = load_yaml(COMPOSE)
    assert "prometheus" in compose["services"]
    assert source["url"] == "http://prometheus:9090"
    assert "9090:9090" in compose["services"]["prometheus"]["ports"]


def test_dashboard_provider_is_a_read_only_file_provider() -> None:
    (provider,) = load_yaml(DASHBOARD_PROVIDER)["providers"]
    assert provider["type"] == "file"
    assert provider["allowUiUpdates"] is False
    # The provider reads the directory docker-compose.yml mounts grafana/dashboards at.
    mounts = _volumes(load_yaml(COMPOSE)["services"]["grafana"])
    assert mounts[provider["options"]["path"]] == "./grafana/dashboards"
    assert (DASHBOARD.parents[2] / "grafana" / "dashboards" / DASHBOARD.name).is_file()


def _volumes(service: dict[str, Any]) -> dict[str, str]:
    """container path -> host path of a compose service's volume strings."""
    out = {}
    for entry in service.get("volumes", []):
        host, container = entry.split(":")[:2]
        out[container] = host
    return out


def test_readme_monitoring_section_describes_every_row_and_alert() -> None:
    readme = (DASHBOARD.parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Monitoring") :]
    section = section[: section.find("\n## ", 1)]
    for panel in panels(load_dashboard()):
        if panel["type"] == "row":
            assert f"**{panel['title']}**" in section, panel["title"]
    for rule in alert_rules():
        assert f"`{rule['alert']}`" in section, rule["alert"]
