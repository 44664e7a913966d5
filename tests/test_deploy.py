"""The deployment files: the Kubernetes manifest parses and its riskd config is valid."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.support.config import check_manifest_config

ROOT = Path(__file__).resolve().parent.parent


def test_kubernetes_sidecar_config_passes_check_config(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy/kubernetes/riskd-sidecar.yaml").read_text()))
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "ConfigMap", "Secret", "PersistentVolumeClaim"} <= kinds
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    riskd = next(
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "riskd"
    )
    assert riskd["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert riskd["readinessProbe"]["httpGet"]["path"] == "/readyz"
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    done = check_manifest_config(config, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "s3cret" not in done.stdout


def test_systemd_unit_runs_the_daemon_and_keeps_config_errors_down() -> None:
    unit = (ROOT / "deploy/systemd/riskd.service").read_text()
    lines = {
        line.split("=", 1)[0]: line.split("=", 1)[1]
        for line in unit.splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert lines["ExecStart"].endswith("riskd run -c /etc/riskd/riskd.toml")
    assert lines["Restart"] == "on-failure"
    assert lines["RestartPreventExitStatus"] == "2"  # riskd's exit code for bad config
    assert lines["KillSignal"] == "SIGTERM"
