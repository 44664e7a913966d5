"""The Dockerfile and docker-compose.yml, read (no Docker engine here to build or run
them): what they copy and mount exists, the image installs riskd the way `make run`
does, runs it as a non-root user with a health check on /healthz, and stops it with
SIGTERM; the compose file wires riskd, Prometheus and Grafana together."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from riskd.config import load_settings
from tests.support import REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "docker-compose.yml"
MAKEFILE = REPO / "Makefile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        word, _, args = current.partition(" ")
        out.append((word.upper(), args.strip()))
        current = ""
    return out


def stages() -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for word, args in instructions():
        if word == "FROM":
            out.append([])
        if out:
            out[-1].append((word, args))
    return out


def ignored(path: str) -> bool:
    """Whether .dockerignore leaves `path` out of the build context (last match wins,
    a match on a parent directory counts)."""
    patterns = [
        p.strip()
        for p in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if p.strip() and not p.startswith("#")
    ]
    parts = Path(path).parts
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        for k in range(1, len(parts) + 1):
            prefix = "/".join(parts[:k])
            if _match(pat, prefix):
                result = not negate
                break
    return result


def _match(pattern: str, path: str) -> bool:
    if pattern.startswith("**/"):
        return any(
            _match(pattern[3:], "/".join(path.split("/")[k:])) for k in range(len(path.split("/")))
        )
    regex = fnmatch.translate(pattern).replace(".*", "[^/]*")
    return re.fullmatch(regex, path) is not None


def pip_installs(commands: str) -> list[list[str]]:
    """Arguments after `pip install` of every pip invocation in a shell command."""
    out = []
    for part in re.split(r"&&|;|\n", commands):
        words = shlex.split(part)
        for k in range(len(words) - 1):
            if words[k].endswith("pip") and words[k + 1] == "install":
                out.append(words[k + 2 :])
    return out


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def args_of(stage: list[tuple[str, str]], word: str) -> list[str]:
    return [args for w, args in stage if w == word]


# --- the Dockerfile -------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_from_a_slim_python_matching_the_project() -> None:
    build, final = stages()
    assert re.search(r"\bAS build$", build[0][1])
    arg = [a for w, a in instructions() if w == "ARG" and a.startswith("PYTHON_IMAGE=")]
    image = arg[0].split("=", 1)[1] if arg else final[0][1]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", image), image
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11"
    assert final[0][1] in ("${PYTHON_IMAGE}", image)
    # The runtime stage takes only the built virtualenv from the build stage.
    froms = [a for a in args_of(final, "COPY") if a.startswith("--from=")]
    assert froms == ["--from=build /opt/riskd /opt/riskd"]


def test_everything_the_dockerfile_copies_exists_in_the_build_context() -> None:
    copies = [args for word, args in instructions() if word in ("COPY", "ADD")]
    assert copies
    for args in copies:
        if args.startswith("--from="):
            continue
        *sources, _ = shlex.split(args)
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: missing"
            assert not ignored(source), f"COPY {source}: excluded by .dockerignore"
            if (REPO / source).is_dir():
                files = [
                    p
                    for p in (REPO / source).rglob("*")
                    # Build products stay out: the image compiles its own store.
                    if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".so"
                ]
                assert files and not any(ignored(str(p.relative_to(REPO))) for p in files)
    # And what is not needed stays out of the context.
    for path in (".venv/bin/python", "var/audit.jsonl", ".git/HEAD", "tests/conftest.py"):
        assert ignored(path), path


def test_the_image_installs_riskd_the_way_make_run_does() -> None:
    """Makefile: a venv, pip upgraded, then `pip install -e '.[test,plot,dev]'`. The
    image: the same commands in a venv at /opt/riskd, the project without the
    developer extras and not editable (the source tree is not in the image)."""
    make = MAKEFILE.read_text(encoding="utf-8")
    recipe = make[make.index("$(STAMP):") :].split("\n\n")[0]
    make_installs = pip_installs(recipe.replace("$(BIN)/", ""))
    (build, _) = stages()
    run = " && ".join(args_of(build, "RUN"))
    assert "python -m venv /opt/riskd" in run
    docker_installs = pip_installs(run.replace("/opt/riskd/bin/", ""))
    assert len(make_installs) == len(docker_installs) == 2, (make_installs, docker_installs)
    make_upgrade, make_project = make_installs
    docker_upgrade, docker_project = docker_installs
    assert docker_upgrade == make_upgrade  # --quiet --upgrade pip

    def split(args: list[str]) -> tuple[list[str], str, set[str]]:
        flags = [a for a in args if a.startswith("-") and a != "-e"]
        (target,) = [a for a in args if not a.startswith("-")]
        m = re.fullmatch(r"\.(?:\[([\w,]*)\])?", target)
        assert m, target
        return flags, ".", set(filter(None, (m.group(1) or "").split(",")))

    make_flags, make_target, make_extras = split(make_project)
    docker_flags, docker_target, docker_extras = split(docker_project)
    assert docker_flags == make_flags and docker_target == make_target
    assert docker_extras <= make_extras
    assert "-e" in make_project and "-e" not in docker_project
    # `make run` runs the console script with a config file; so does the image.
    assert "$(BIN)/riskd run -c config/riskd.toml" in make


def test_the_image_builds_the_compiled_store_in_the_build_stage_only() -> None:
    """setup.py compiles riskd/feeds/polymarket/_store.c: the build stage has a C
    compiler and setup.py before pip runs; the runtime stage installs no compiler."""
    build, final = stages()
    runs = args_of(build, "RUN")
    compiler = next(k for k, run in enumerate(runs) if "gcc" in run)
    install = next(k for k, run in enumerate(runs) if "pip install" in run)
    assert compiler < install
    assert any("setup.py" in shlex.split(copy) for copy in args_of(build, "COPY"))
    assert not any("gcc" in run for run in args_of(final, "RUN"))


def test_the_image_runs_riskd_as_a_non_root_user_with_a_health_check() -> None:
    _, final = stages()
    words = [w for w, _ in final]
    (user,) = args_of(final, "USER")
    assert user not in ("root", "0")
    assert words.index("USER") < words.index("ENTRYPOINT")
    (health,) = args_of(final, "HEALTHCHECK")
    assert "/healthz" in health and "CMD" in health
    assert "8787" in health and "8787" in args_of(final, "EXPOSE")[0]


def test_the_image_stops_gracefully_on_sigterm_and_documents_its_config_path() -> None:
    _, final = stages()
    assert args_of(final, "STOPSIGNAL") == ["SIGTERM"]
    # Exec form: riskd itself is PID 1 and gets the signal (a shell would swallow it).
    entrypoint = exec_form(args_of(final, "ENTRYPOINT")[0])
    command = exec_form(args_of(final, "CMD")[0])
    assert entrypoint == ["riskd"]
    assert command == ["run", "-c", "/etc/riskd/riskd.toml"]
    assert "COPY config/riskd.toml /etc/riskd/riskd.toml" in [
        f"COPY {a}" for a in args_of(final, "COPY")
    ]
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "/etc/riskd/riskd.toml" in text.split("ARG")[0]  # in the header comment
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "/etc/riskd/riskd.toml" in readme


# --- docker-compose.yml ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def _volumes(service: dict[str, Any]) -> dict[str, str]:
    out = {}
    for entry in service.get("volumes", []):
        host, container = entry.split(":")[:2]
        out[container] = host
    return out


def test_compose_services_and_mounts(compose: dict[str, Any]) -> None:
    services = compose["services"]
    # nats: JetStream for clustering (docs/scaling.md); riskd alone does not need it.
    assert set(services) == {"riskd", "prometheus", "grafana", "nats"}
    assert services["riskd"]["build"] == "."
    named = set(compose.get("volumes", {}))
    for name, service in services.items():
        for container, host in _volumes(service).items():
            if host.startswith("."):
                assert (REPO / host).exists(), f"{name}: {host} does not exist"
            else:
                assert host in named, f"{name}: volume {host} is not declared"
            assert container.startswith("/"), (name, container)


def test_compose_riskd_uses_the_documented_config_path_and_port(compose: dict[str, Any]) -> None:
    riskd = compose["services"]["riskd"]
    mounts = _volumes(riskd)
    assert mounts["/etc/riskd/riskd.toml"] == "./config/riskd.toml"
    settings = load_settings(REPO / "config" / "riskd.toml")
    port = settings.server.port
    assert f"{port}:{port}" in riskd["ports"]
    assert riskd["environment"]["RISKD_SERVER__HOST"] == "0.0.0.0"
    # The state and audit log paths of the config land in the riskd-var volume.
    assert mounts["/var/lib/riskd/var"] == "riskd-var"
    assert str(settings.state.dir).startswith("var/")
    assert settings.publisher.jsonl is not None
    assert str(settings.publisher.jsonl.path).startswith("var/")


def test_compose_prometheus_scrapes_riskd_with_the_rules(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    mounts = _volumes(prometheus)
    assert mounts["/etc/prometheus"] == "./deploy/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "riskd"  # what the alert rules and the dashboard expect
    port = load_settings(REPO / "config" / "riskd.toml").server.port
    assert job["static_configs"][0]["targets"] == [f"riskd:{port}"]
    for rules in config["rule_files"]:
        assert (REPO / "deploy" / "prometheus" / rules).is_file()


def test_compose_grafana_is_provisioned(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = _volumes(grafana)
    assert mounts["/etc/grafana/provisioning/datasources"] == "./grafana/provisioning/datasources"
    assert mounts["/etc/grafana/provisioning/dashboards"] == "./grafana/provisioning/dashboards"
    provider = yaml.safe_load(
        (REPO / "grafana" / "provisioning" / "dashboards" / "riskd.yaml").read_text()
    )["providers"][0]
    assert mounts[provider["options"]["path"]] == "./grafana/dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == provider["options"]["path"] + "/riskd.json"
