"""Structured logging: one event per line, JSON objects with the event's fields, and
no configured secret anywhere in the output. These tests read the log's structure
(keys, one object per line), never its message text."""

from __future__ import annotations

import io
import json
import logging
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from riskd import logs
from riskd.overrides import Override
from tests.support import (
    InProcessDaemon,
    Riskd,
    base_config,
    free_port,
    merge,
    metric_samples,
    wait_for,
    wait_until,
)

SECRET = "hmac-secret-9f3b1c77"
ADMIN_TOKEN = "admin-token-51d0e2aa"


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.RedactSecrets([SECRET, ADMIN_TOKEN]))
    logger = logging.getLogger("riskd.test_logging")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield logger, stream
    logger.handlers[:] = []


def events(text: str) -> list[dict[str, object]]:
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]
    assert all(isinstance(e, dict) for e in parsed)
    return parsed


def test_json_events_carry_their_fields_one_per_line(
    capture: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = capture
    logger.info(
        "market %s: mode %s",
        "m1",
        "reduce_only",
        extra={"market": "m1", "reason": "near_resolution"},
    )
    logger.warning("two\nlines", extra={"publisher": "http", "reason": "http_503"})
    first, second = events(stream.getvalue())
    assert {"ts", "level", "logger", "msg"} <= set(first)
    assert (first["market"], first["reason"], first["level"]) == ("m1", "near_resolution", "info")
    assert (second["publisher"], second["reason"]) == ("http", "http_503")


def test_secrets_are_masked_in_messages_fields_and_tracebacks(
    capture: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = capture
    logger.error("url http://x/?key=%s", SECRET, extra={"detail": f"Bearer {ADMIN_TOKEN}"})
    logger.info("config", extra={"secret": "anything", "admin_token": "whatever"})
    try:
        raise ValueError(f"bad secret {SECRET}")
    except ValueError:
        logger.exception("failed")
    out = stream.getvalue()
    assert SECRET not in out and ADMIN_TOKEN not in out
    masked, by_key, failed = events(out)
    assert masked["msg"] == f"url http://x/?key={logs.MASK}"
    assert masked["detail"] == f"Bearer {logs.MASK}"
    assert (by_key["secret"], by_key["admin_token"]) == (logs.MASK, logs.MASK)
    assert logs.MASK in str(failed["exc"])


def test_the_daemon_logs_json_events_without_secrets(tmp_path: Path) -> None:
    """A daemon with `format = "json"`, an HTTP publisher whose exchange is down, and
    secrets configured: every stderr line is one JSON event; market events carry market
    and reason, publisher events publisher and reason; no secret appears."""
    port = free_port()
    daemon = Riskd(
        tmp_path,
        merge(
            base_config(tmp_path, port),
            {
                "publisher": {
                    "http": {"url": f"http://127.0.0.1:{free_port()}/risk-params", "secret": SECRET}
                },
                "server": {"admin_token": ADMIN_TOKEN},
                "log": {"level": "info", "format": "json"},
            },
        ),
    )
    try:
        daemon.wait_healthy()

        def publish_failed() -> bool:
            samples = metric_samples(daemon.metrics())
            return any(
                name == "riskd_publishes_total"
                and ("publisher", "http") in labels
                and ("result", "ok") not in labels
                and value > 0
                for (name, labels), value in samples.items()
            )

        wait_for(publish_failed, 15, "an HTTP publish to fail")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(10) == 0
    finally:
        daemon.close()
    text = daemon.stderr_path.read_text(encoding="utf-8")
    assert SECRET not in text and ADMIN_TOKEN not in text
    parsed = events(text)
    assert parsed
    for event in parsed:
        assert {"ts", "level", "logger", "msg"} <= set(event), event
    assert any({"market", "reason"} <= set(e) for e in parsed)
    assert any({"publisher", "reason"} <= set(e) for e in parsed)


POLY = "fed-dec2025-nochange-poly"


async def test_mode_change_events_carry_the_previous_mode(
    tmp_path: Path, in_process: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """One event per change of a market's published mode: its first set's mode (no
    previous), then each change with the mode before it, reasons and leverage; an
    override halting a market and its removal are two changes."""
    caplog.set_level(logging.INFO, logger="riskd")
    d: InProcessDaemon = await in_process(base_config(tmp_path, 0))
    d.start()
    current = d.daemon.engine.current

    async def mode_is(market: str, wanted: bool, mode: str) -> bool:
        return market in current and (current[market]["mode"] == mode) is wanted

    await wait_until(lambda: mode_is(POLY, False, "halted"), what="a first set")
    d.daemon.set_override(POLY, Override(mode="halted"), "test", None)
    await wait_until(lambda: mode_is(POLY, True, "halted"), what="the market halted")
    d.daemon.set_override(POLY, None, "test", None)
    await wait_until(lambda: mode_is(POLY, False, "halted"), what="the override lifted")
    await d.stop()

    changes: dict[str, list[tuple[str, str | None]]] = {}
    for record in caplog.records:
        if hasattr(record, "previous_mode"):
            fields = vars(record)
            assert isinstance(fields["reason"], str) and fields["max_leverage"] > 0
            changes.setdefault(fields["market"], []).append(
                (fields["mode"], fields["previous_mode"])
            )
    assert set(changes) == set(current)
    for market, chain in changes.items():
        modes = [mode for mode, _ in chain]
        assert [previous for _, previous in chain] == [None, *modes[:-1]], market
        assert all(a != b for a, b in zip(modes, modes[1:], strict=False)), market
        assert modes[-1] == current[market]["mode"], market
    # The event that lifted the halt names it as the previous mode (the chain above).
    poly = [mode for mode, _ in changes[POLY]]
    assert "halted" in poly and poly[-1] != "halted"
