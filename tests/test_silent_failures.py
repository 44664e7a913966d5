"""Issue 22, nothing accepted can fail silently: the HTTP sender survives any delay
settings, credentials inside URLs never reach the log, and `riskd run` says which
config file it runs on. The daemon runs as a real subprocess; the exchange and the
venue are real servers on 127.0.0.1."""

from __future__ import annotations

import http.server
import io
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from riskd import logs
from riskd.metrics import Metrics
from riskd.publish.base import Batch
from riskd.publish.http import DeliveryPolicy, HttpPublisher
from riskd.publish.retry import retry_delays
from riskd.secrets import mask_url, mask_urls
from tests.support import FED_MARKETS, SECRET, Receiver, free_port, to_toml, wait_until
from tests.test_config import riskd

URL_PASSWORD = "feed-pw-5e1f0c"
URL_TOKEN = "feed-token-a81b93"


# --- the HTTP sender never dies of its delay settings ---------------------------------


@pytest.mark.parametrize(
    ("initial", "cap", "longest"),
    [
        (20.0, 1.0, 20.0),  # reversed: the cap is raised to the first delay
        (0.0, 5.0, 5.0),  # not positive: a short first delay
        (-1.0, -1.0, 0.1),
        (float("nan"), float("inf"), 0.1),
    ],
)
def test_retry_delays_never_raise(initial: float, cap: float, longest: float) -> None:
    delays = retry_delays(initial, cap)
    taken = [next(delays) for _ in range(20)]
    assert all(0.0 < d <= longest for d in taken), taken


async def _true(value: bool) -> bool:
    return value


async def test_http_publisher_with_a_reversed_backoff_range_keeps_retrying(
    receiver: Receiver,
) -> None:
    """Was: the first retry raised ValueError in backoff() inside the sender task, which
    ended without a word; every later batch was queued and never sent."""
    receiver.fail_status = 503
    pub = HttpPublisher(
        receiver.url,
        SECRET.encode(),
        "riskd-test",
        Metrics(CollectorRegistry()),
        2.0,
        DeliveryPolicy(backoff_initial_s=0.05, backoff_max_s=0.01, circuit_failures=1000),
    )
    await pub.start()
    try:
        entry = {"market": "m0", "version": 1, "mode": "normal"}
        pub.submit(Batch("riskd-test", 1, "2026-01-01T00:00:00.000Z", [entry]))
        await wait_until(lambda: _true(receiver.failed >= 3), what="three retries")
        receiver.fail_status = None  # the exchange recovers: the set gets through
        await pub.drain(5.0)
        assert [m.body["params"][0]["market"] for m in receiver.messages] == ["m0"]
        assert pub.healthy()
    finally:
        await pub.close()


# --- credentials inside URLs ------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:pw@host/x", "http://user:***@host/x"),
        ("https://TOKEN@host:8443/p", "https://***@host:8443/p"),
        ("wss://h/ws?api_key=k1&x=1&signature=s2", "wss://h/ws?api_key=***&x=1&signature=***"),
        ("https://h/cb#access_token=t&state=1", "https://h/cb#access_token=***&state=1"),
        ("http://127.0.0.1:9000/risk-params", "http://127.0.0.1:9000/risk-params"),
        ("data/tapes/x.csv", "data/tapes/x.csv"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_the_log_masks_urls_without_being_told_the_secret() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.TextFormatter("%(message)s"))
    handler.addFilter(logs.RedactSecrets())  # no configured secrets at all
    logger = logging.getLogger("riskd.test_silent_failures")
    logger.handlers[:] = [handler]
    logger.propagate = False
    try:
        url = f"wss://u:{URL_PASSWORD}@venue.example/ws?token={URL_TOKEN}"
        logger.warning("connected to %s", url, extra={"endpoint": url})
        try:
            raise ConnectionError(f"cannot reach {url}")
        except ConnectionError:
            logger.exception("failed")
    finally:
        logger.handlers[:] = []
    out = stream.getvalue()
    assert URL_PASSWORD not in out and URL_TOKEN not in out
    # The message, the field and the exception in the traceback.
    assert out.count("wss://u:***@venue.example/ws?token=***") == 3
    assert mask_urls(f"at {url}.") == "at wss://u:***@venue.example/ws?token=***"


class _Refuses(http.server.BaseHTTPRequestHandler):
    """A venue that refuses the websocket handshake with 403: not retryable, so the
    feed stops with an error quoting its URL."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.send_response(403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def refusing_venue() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refuses)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_feed_url_credentials_never_reach_the_daemon_log(
    tmp_path: Path, refusing_venue: int
) -> None:
    url = f"ws://feeduser:{URL_PASSWORD}@127.0.0.1:{refusing_venue}/ws?token={URL_TOKEN}&x=1"
    path = tmp_path / "riskd.toml"
    path.write_text(
        to_toml(
            {
                "feed": {"kind": "websocket", "url": url},
                "markets": {"file": str(FED_MARKETS)},
                "publisher": {"jsonl": {"path": str(tmp_path / "audit.jsonl")}},
                "server": {"port": free_port()},
                "state": {"dir": str(tmp_path / "state")},
                "log": {"level": "info", "format": "json"},
            }
        ),
        encoding="utf-8",
    )
    result = riskd("run", "-c", str(path), cwd=tmp_path, timeout=60)
    assert result.returncode == 1, result.stderr  # the feed's fatal error
    assert URL_PASSWORD not in result.stderr and URL_TOKEN not in result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    # The feed task's failure (riskd/supervise.py), its error naming the URL masked.
    failure = next(json.dumps(e) for e in events if "feeduser" in json.dumps(e))
    assert f"ws://feeduser:***@127.0.0.1:{refusing_venue}/ws?token=***&x=1" in failure


# --- which config file `riskd run` runs on ------------------------------------------------


def test_run_logs_the_config_file_found_in_the_working_directory(tmp_path: Path) -> None:
    tape = tmp_path / "t.csv"
    tape.write_text(
        "ts,market,price\n" + "".join(f"{1_700_000_000 + 60 * i},m,0.5\n" for i in range(5)),
        encoding="utf-8",
    )
    markets = tmp_path / "markets.json"
    markets.write_text(
        json.dumps({"markets": [{"id": "m", "resolves_at": "2030-01-01T00:00:00Z"}]}),
        encoding="utf-8",
    )
    (tmp_path / "config").mkdir()
    found = tmp_path / "config" / "riskd.toml"
    found.write_text(
        to_toml(
            {
                "feed": {"kind": "replay", "path": str(tape), "speed": 0.0, "exit_at_end": True},
                "markets": {"file": str(markets)},
                "publisher": {"jsonl": {"path": str(tmp_path / "audit.jsonl")}},
                "server": {"port": free_port()},
                "state": {"dir": str(tmp_path / "state")},
                "log": {"level": "info", "format": "json"},
            }
        ),
        encoding="utf-8",
    )
    result = riskd("run", cwd=tmp_path, timeout=60)  # no -c
    assert result.returncode == 0, result.stderr
    first = json.loads(result.stderr.splitlines()[0])
    assert first["level"] == "info"
    assert first["config"] == str(found.resolve())
    assert first["msg"] == (
        f"config file {found.resolve()} (found as ./config/riskd.toml, no -c given)"
    )


def test_run_on_built_in_defaults_warns_first(tmp_path: Path) -> None:
    # No config/ here: the defaults, whose tape is not here either (exit 2), but the
    # first line says which settings were tried.
    result = riskd("run", cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    first = result.stderr.splitlines()[0]
    assert (
        " WARNING riskd: no config file (no -c, no ./config/riskd.toml): built-in defaults" in first
    )
