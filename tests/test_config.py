"""Configuration: `riskd check-config` and `riskd run` exit codes and messages, env
overrides and secret masking; `load_settings` for the rest."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from riskd.config import ConfigError, load_settings
from tests.support import FED_MARKETS, FED_TAPE, REPO, clean_env, free_port, merge, to_toml

FILE_SECRET = "file-secret-0d1b3c"
ENV_SECRET = "env-secret-77aa19"
ADMIN_TOKEN = "admin-token-9e4f21"
ENV_ADMIN_TOKEN = "env-admin-token-4c08d2"

VALID: dict[str, Any] = {
    "feed": {"kind": "replay", "path": str(FED_TAPE), "speed": 0.0},
    "markets": {"file": str(FED_MARKETS)},
    "limits": {"max_leverage": 10.0},
    "publisher": {
        "instance": "riskd-cfg",
        "http": {"url": "http://127.0.0.1:9/risk-params", "secret": FILE_SECRET},
    },
    "server": {"host": "127.0.0.1", "port": 8787, "admin_token": ADMIN_TOKEN},
}


def riskd(
    *args: str, env: dict[str, str] | None = None, cwd: Path = REPO, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "riskd.cli", *args],
        cwd=cwd,
        env=clean_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def write(tmp_path: Path, text: str, name: str = "riskd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config(tmp_path: Path, **override: Any) -> Path:
    return write(tmp_path, to_toml(merge(VALID, override)))


# --- check-config: success and masking ------------------------------------------------


def test_check_config_prints_effective_settings(tmp_path: Path) -> None:
    result = riskd("check-config", "-c", str(config(tmp_path)))
    assert result.returncode == 0, result.stderr
    settings = json.loads(result.stdout)
    assert settings["limits"]["max_leverage"] == 10.0
    assert settings["publisher"]["instance"] == "riskd-cfg"
    assert settings["feed"]["path"] == str(FED_TAPE)
    # Defaults are filled in for what the file leaves out.
    assert settings["model"]["confidence"] == 0.99
    assert settings["governor"]["publish_interval_s"] == 1.0
    # Secrets are masked, never printed.
    assert settings["publisher"]["http"]["secret"] == "***"
    assert settings["server"]["admin_token"] == "***"
    for out in (result.stdout, result.stderr):
        assert FILE_SECRET not in out and ADMIN_TOKEN not in out


def test_check_config_masks_secrets_from_env(tmp_path: Path) -> None:
    path = config(tmp_path, publisher={"http": {"secret": None}}, server={"admin_token": None})
    env = {
        "RISKD_PUBLISHER__HTTP__SECRET": ENV_SECRET,
        "RISKD_SERVER__ADMIN_TOKEN": ENV_ADMIN_TOKEN,
    }
    result = riskd("check-config", "-c", str(path), env=env)
    assert result.returncode == 0, result.stderr
    settings = json.loads(result.stdout)
    assert settings["publisher"]["http"]["secret"] == "***"
    assert settings["publisher"]["http"]["url"] == "http://127.0.0.1:9/risk-params"
    assert settings["server"]["admin_token"] == "***"
    for out in (result.stdout, result.stderr):
        assert ENV_SECRET not in out and ENV_ADMIN_TOKEN not in out
    # The env values are the ones in force.
    loaded = load_settings_with_env(path, env)
    assert loaded.publisher.http is not None
    assert loaded.publisher.http.secret_bytes() == ENV_SECRET.encode()
    assert loaded.server.admin_token.get_secret_value() == ENV_ADMIN_TOKEN


def test_secrets_are_not_printed_in_errors(tmp_path: Path) -> None:
    path = config(tmp_path, limits={"max_leverage": 0.5})
    result = riskd(
        "check-config", "-c", str(path), env={"RISKD_PUBLISHER__HTTP__SECRET": ENV_SECRET}
    )
    assert result.returncode == 2
    for out in (result.stdout, result.stderr):
        assert ENV_SECRET not in out and FILE_SECRET not in out and ADMIN_TOKEN not in out


def test_env_override_takes_effect(tmp_path: Path) -> None:
    path = config(tmp_path)
    result = riskd("check-config", "-c", str(path), env={"RISKD_LIMITS__MAX_LEVERAGE": "7"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["limits"]["max_leverage"] == 7.0
    assert (
        load_settings_with_env(path, {"RISKD_LIMITS__MAX_LEVERAGE": "7"}).limits.max_leverage == 7.0
    )


def load_settings_with_env(path: Path, env: dict[str, str]) -> Any:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        return load_settings(path)


# --- errors: exit 2, the message names the key -----------------------------------------

BAD_VALUES = [
    # (override, key the message must name)
    ({"model": {"bogus": 1}}, "model.bogus"),
    ({"limits": {"max_leverage": "high"}}, "limits.max_leverage"),
    ({"governor": {"publish_interval_s": [1, 2]}}, "governor.publish_interval_s"),
    ({"model": {"liquidation_horizon_s": -1}}, "model.liquidation_horizon_s"),
    ({"model": {"confidence": 0.5}}, "model.confidence"),
    ({"model": {"confidence": 1.0}}, "model.confidence"),
    ({"model": {"confidence": 1.5}}, "model.confidence"),
    ({"limits": {"max_leverage": 0.5}}, "limits.max_leverage"),
    ({"bogus_section": {"x": 1}}, "bogus_section"),
    ({"feed": {"kind": "carrier-pigeon"}}, "feed.kind"),
]


@pytest.mark.parametrize(
    ("override", "key"), BAD_VALUES, ids=[f"{k}-{i}" for i, (_, k) in enumerate(BAD_VALUES)]
)
def test_invalid_value_names_the_key(tmp_path: Path, override: dict[str, Any], key: str) -> None:
    path = config(tmp_path, **override)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert key in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"model": {"bogus": 1}}, "model.bogus"),
        ({"model": {"liquidation_horizon_s": -1}}, "model.liquidation_horizon_s"),
        ({"model": {"confidence": 1.0}}, "model.confidence"),
        ({"limits": {"max_leverage": 0.5}}, "limits.max_leverage"),
        ({"limits": {"max_leverage": "high"}}, "limits.max_leverage"),
        ({"bogus_section": {"x": 1}}, "bogus_section"),
    ],
)
def test_check_config_error_exits_2(tmp_path: Path, override: dict[str, Any], key: str) -> None:
    result = riskd("check-config", "-c", str(config(tmp_path, **override)))
    assert result.returncode == 2
    assert key in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_invalid_toml_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nmax_leverage = = 3\n")
    result = riskd("check-config", "-c", str(path))
    assert result.returncode == 2
    assert str(path) in result.stderr and "line 2" in result.stderr
    assert "Traceback" not in result.stderr
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path)


def test_missing_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    result = riskd("check-config", "-c", str(path))
    assert result.returncode == 2
    assert str(path) in result.stderr
    with pytest.raises(ConfigError, match="not found"):
        load_settings(path)


def test_bad_env_value_names_the_key(tmp_path: Path) -> None:
    path = config(tmp_path)
    env = {"RISKD_LIMITS__MAX_LEVERAGE": "lots"}
    result = riskd("check-config", "-c", str(path), env=env)
    assert result.returncode == 2
    assert "limits.max_leverage" in result.stderr
    assert "RISKD_LIMITS__MAX_LEVERAGE" in result.stderr
    with pytest.raises(ConfigError, match="RISKD_LIMITS__MAX_LEVERAGE"):
        load_settings_with_env(path, env)
    env = {"RISKD_MODEL__CONFIDENCE": "0.2"}
    with pytest.raises(ConfigError, match=r"model\.confidence"):
        load_settings_with_env(path, env)


def test_ttl_must_exceed_publish_interval(tmp_path: Path) -> None:
    path = config(tmp_path, governor={"publish_interval_s": 5.0, "ttl_s": 5.0})
    with pytest.raises(ConfigError, match="ttl_s"):
        load_settings(path)


def test_run_with_bad_config_exits_2(tmp_path: Path) -> None:
    path = config(tmp_path, limits={"max_leverage": 0.5}, server={"port": free_port()})
    result = riskd("run", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "limits.max_leverage" in result.stderr
    assert "Traceback" not in result.stderr
    result = riskd("run", "-c", str(tmp_path / "nowhere.toml"), cwd=tmp_path)
    assert result.returncode == 2


def test_secret_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "http.secret"
    secret_file.write_text(FILE_SECRET + "\n", encoding="utf-8")
    path = config(tmp_path, publisher={"http": {"secret": None, "secret_file": str(secret_file)}})
    result = riskd("check-config", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert FILE_SECRET not in result.stdout + result.stderr
    http = load_settings(path).publisher.http
    assert http is not None and http.secret_bytes() == FILE_SECRET.encode()

    secret_file.unlink()  # a missing secret file is a config error, found at load
    result = riskd("check-config", "-c", str(path))
    assert result.returncode == 2
    assert "publisher.http.secret_file" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_on_a_taken_port_exits_2(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = config(
            tmp_path,
            server={"port": port},
            publisher={"http": None, "jsonl": {"path": str(tmp_path / "a.jsonl")}},
            state={"dir": str(tmp_path / "state")},
        )
        result = riskd("run", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "server.port" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_with_an_unusable_audit_log_exits_2(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("", encoding="utf-8")
    path = config(
        tmp_path,
        server={"port": free_port()},
        publisher={"http": None, "jsonl": {"path": str(blocker / "audit.jsonl")}},
        state={"dir": str(tmp_path / "state")},
    )
    result = riskd("run", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "publisher.jsonl" in result.stderr
    assert "Traceback" not in result.stderr


# --- values that only make sense together (issue 22) ------------------------------------

PAIRS = [
    # (override, key the message must name): each would be accepted, then fail later.
    (
        {"publisher": {"http": {"backoff_initial_s": 20.0, "backoff_max_s": 1.0}}},
        "publisher.http.backoff_max_s",
    ),
    (
        {"publisher": {"http": {"circuit_reset_s": 30.0, "circuit_max_reset_s": 5.0}}},
        "publisher.http.circuit_max_reset_s",
    ),
    (
        {"feed": {"polymarket": {"backoff_initial_s": 5.0, "backoff_max_s": 1.0}}},
        "feed.polymarket.backoff_max_s",
    ),
    (
        {"feed": {"kalshi": {"backoff_initial_s": 5.0, "backoff_max_s": 1.0}}},
        "feed.kalshi.backoff_max_s",
    ),
    (
        {"feed": {"websocket": {"backoff_initial_s": 5.0, "backoff_max_s": 1.0}}},
        "feed.websocket.backoff_max_s",
    ),
    (
        {"feed": {"polymarket": {"ping_interval_s": 40.0, "read_timeout_s": 30.0}}},
        "feed.polymarket.read_timeout_s",
    ),
    (
        {
            "feed": {
                "websocket": {"ping_text": "ping", "ping_interval_s": 90.0, "read_timeout_s": 60.0}
            }
        },
        "feed.websocket.read_timeout_s",
    ),
    ({"feed": {"websocket": {"ping_interval_s": 5.0}}}, "feed.websocket.ping_text"),
    ({"governor": {"publish_interval_s": 5.0, "ttl_s": 5.0}}, "governor.ttl_s"),
    ({"state": {"snapshot_interval_s": 600.0, "max_age_s": 300.0}}, "state.max_age_s"),
    ({"model": {"sigma_floor": 1e-3, "sigma_prior": 2e-4}}, "model.sigma_prior"),
]


@pytest.mark.parametrize(("override", "key"), PAIRS, ids=[k for _, k in PAIRS])
def test_check_config_rejects_conflicting_values(
    tmp_path: Path, override: dict[str, Any], key: str
) -> None:
    result = riskd("check-config", "-c", str(config(tmp_path, **override)))
    assert result.returncode == 2, result.stdout
    assert f"\n  {key}: " in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_conflicting_env_value_names_the_key_and_variable(tmp_path: Path) -> None:
    env = {"RISKD_PUBLISHER__HTTP__BACKOFF_MAX_S": "0.01"}
    with pytest.raises(ConfigError) as info:
        load_settings_with_env(config(tmp_path), env)
    assert "publisher.http.backoff_max_s (or env RISKD_PUBLISHER__HTTP__BACKOFF_MAX_S)" in str(
        info.value
    )


def test_equal_bounds_are_accepted(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        publisher={
            "http": {
                "backoff_initial_s": 2.0,
                "backoff_max_s": 2.0,
                "circuit_reset_s": 7.0,
                "circuit_max_reset_s": 7.0,
            }
        },
    )
    http = load_settings(path).publisher.http
    assert http is not None and http.backoff_max_s == http.backoff_initial_s == 2.0


# --- the HTTP publisher signs: it needs a key -------------------------------------------


@pytest.mark.parametrize(
    ("http", "key"),
    [
        ({"secret": None}, "publisher.http.secret"),
        ({"secret": ""}, "publisher.http.secret"),
        ({"secret": "   "}, "publisher.http.secret"),
    ],
    ids=["absent", "empty", "blank"],
)
def test_http_publisher_without_secret_is_rejected(
    tmp_path: Path, http: dict[str, Any], key: str
) -> None:
    result = riskd("check-config", "-c", str(config(tmp_path, publisher={"http": http})))
    assert result.returncode == 2
    assert f"  {key}: required to sign requests" in result.stderr
    assert "Traceback" not in result.stderr


def test_http_secret_file_must_not_be_empty_or_doubled(tmp_path: Path) -> None:
    empty = tmp_path / "empty.secret"
    empty.write_text("\n", encoding="utf-8")
    path = config(tmp_path, publisher={"http": {"secret": None, "secret_file": str(empty)}})
    with pytest.raises(ConfigError, match=r"publisher\.http\.secret_file: .* is empty"):
        load_settings(path)
    full = tmp_path / "http.secret"
    full.write_text(FILE_SECRET, encoding="utf-8")
    path = config(tmp_path, publisher={"http": {"secret_file": str(full)}})  # and secret
    with pytest.raises(
        ConfigError,
        match=r"publisher\.http\.secret_file: set secret or "
        r"secret_file, not both",
    ):
        load_settings(path)


# --- files the daemon writes vs files it reads ------------------------------------------


def test_audit_log_must_not_be_the_tape_or_inside_its_directory(tmp_path: Path) -> None:
    tapes = tmp_path / "tapes"
    tapes.mkdir()
    tape = tapes / "t.csv"
    tape.write_text("ts,market,price\n1700000000,m,0.5\n", encoding="utf-8")
    markets = tmp_path / "markets.json"
    markets.write_bytes(FED_MARKETS.read_bytes())
    cases = [
        (
            {"feed": {"path": str(tape)}, "publisher": {"jsonl": {"path": str(tape)}}},
            "publisher.jsonl.path: is the replay tape feed.path",
        ),
        (
            {
                "feed": {"path": str(tapes)},
                "publisher": {"jsonl": {"path": str(tapes / "a.jsonl")}},
            },
            "publisher.jsonl.path: is inside the tape directory feed.path",
        ),
        (
            {
                "publisher": {"jsonl": {"path": str(tmp_path / "st")}},
                "state": {"dir": str(tmp_path / "st")},
            },
            "publisher.jsonl.path: is the state directory state.dir",
        ),
        (
            {"markets": {"file": str(markets)}, "publisher": {"jsonl": {"path": str(markets)}}},
            "publisher.jsonl.path: is the markets file markets.file",
        ),
        (
            {"feed": {"path": str(tapes)}, "state": {"dir": str(tapes)}},
            "state.dir: is the replay tape feed.path",
        ),
    ]
    for override, message in cases:
        result = riskd("check-config", "-c", str(config(tmp_path, **override)))
        assert result.returncode == 2, override
        assert message in result.stderr, result.stderr
    # Spelled differently, the same file: still caught (paths are compared resolved).
    alias = str(tapes / ".." / "tapes" / "t.csv")
    with pytest.raises(ConfigError, match="is the replay tape"):
        load_settings(
            config(tmp_path, feed={"path": str(tape)}, publisher={"jsonl": {"path": alias}})
        )
    # A live feed does not read feed.path: nothing to protect there.
    live = config(
        tmp_path,
        feed={"kind": "polymarket", "path": str(tapes)},
        publisher={"jsonl": {"path": str(tapes / "a.jsonl")}},
    )
    assert load_settings(live).publisher.jsonl is not None


# --- credentials inside URLs are masked -------------------------------------------------

URL_PASSWORD = "url-pw-3c9e71"
URL_TOKEN = "url-token-b04d2a"


def test_check_config_masks_credentials_in_urls(tmp_path: Path) -> None:
    url = f"http://exch:{URL_PASSWORD}@127.0.0.1:9/risk-params?token={URL_TOKEN}&venue=a"
    path = config(
        tmp_path,
        publisher={"http": {"url": url}},
        feed={"polymarket": {"gamma_url": f"https://gamma.example/?api_key={URL_TOKEN}"}},
    )
    result = riskd("check-config", "-c", str(path))
    assert result.returncode == 0, result.stderr
    settings = json.loads(result.stdout)
    assert (
        settings["publisher"]["http"]["url"]
        == "http://exch:***@127.0.0.1:9/risk-params?token=***&venue=a"
    )
    assert settings["feed"]["polymarket"]["gamma_url"] == "https://gamma.example/?api_key=***"
    for out in (result.stdout, result.stderr):
        assert URL_PASSWORD not in out and URL_TOKEN not in out
    # Masked for display only: the daemon uses the URL as written.
    http = load_settings(path).publisher.http
    assert http is not None and http.url == url


# --- which file was loaded is said ------------------------------------------------------


def test_check_config_says_which_file_it_loaded(tmp_path: Path) -> None:
    path = config(tmp_path)
    result = riskd("check-config", "-c", str(path))
    assert result.returncode == 0
    assert f"riskd: config file {path.resolve()}\n" in result.stderr
    json.loads(result.stdout)  # stdout stays one JSON document

    # No -c: ./config/riskd.toml of the working directory, and it says so.
    (tmp_path / "config").mkdir()
    implicit = write(tmp_path / "config", to_toml(merge(VALID, {"limits": {"max_leverage": 4.0}})))
    result = riskd("check-config", cwd=tmp_path, env={"RISKD_LIMITS__MAX_LEVERAGE": "3"})
    assert result.returncode == 0, result.stderr
    assert (
        f"config file {implicit.resolve()} (found as ./config/riskd.toml, no -c given)"
        in result.stderr
    )
    assert "environment overrides: RISKD_LIMITS__MAX_LEVERAGE" in result.stderr
    assert json.loads(result.stdout)["limits"]["max_leverage"] == 3.0

    # Neither: the built-in defaults, said as such.
    empty = tmp_path / "empty"
    empty.mkdir()
    result = riskd("check-config", cwd=empty)
    assert result.returncode == 0, result.stderr
    assert "no config file (no -c, no ./config/riskd.toml): built-in defaults" in result.stderr
    assert json.loads(result.stdout)["limits"]["max_leverage"] == 20.0


def test_load_settings_exposes_its_source(tmp_path: Path) -> None:
    path = config(tmp_path)
    assert load_settings(path).source == path
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)  # no config/ here
        assert load_settings().source is None
