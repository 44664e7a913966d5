"""The API server's limits ([server]): a connection cap, a request head timeout, header
and body sizes. Against `riskd run` over raw TCP: what a client sees, what is counted
in riskd_api_refused_total{reason}, and that the daemon's log has no traceback."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

from tests.support import DaemonProcess, base_config, free_port, metric_samples, wait_until

REASONS = ("max_connections", "header_timeout", "header_too_large", "bad_request", "body_too_large")


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _read_all(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything until the server closes the connection (fails if it does not)."""
    return await asyncio.wait_for(reader.read(), timeout)


async def _refused(daemon: DaemonProcess, reason: str) -> float:
    return metric_samples(await daemon.metrics())[
        ("riskd_api_refused_total", frozenset({("reason", reason)}))
    ]


async def _start(tmp_path: Path, start_daemon: Any, **server: Any) -> DaemonProcess:
    port = free_port()
    doc = base_config(tmp_path, port, server={"port": port, **server})
    return await start_daemon(doc)


def _log_has_no_traceback(daemon: DaemonProcess) -> None:
    log = daemon.stderr_path.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


async def test_connections_beyond_the_cap_are_refused_and_counted(
    tmp_path: Path, start_daemon: Any
) -> None:
    cap = 4
    daemon = await _start(tmp_path, start_daemon, max_connections=cap, header_timeout_s=20.0)
    text = await daemon.metrics()
    for reason in REASONS:  # exported at zero from the start
        assert (
            metric_samples(text)[("riskd_api_refused_total", frozenset({("reason", reason)}))] == 0
        )

    # The health probe's own connection is gone once the server has seen it close.
    async def quiet() -> bool:
        return metric_samples(await daemon.metrics())[("riskd_api_connections", frozenset())] <= 1

    await wait_until(quiet, what="no connection but the probe's")
    # No condition to wait on here: any probe opens a connection of its own, which the
    # count and the cap would take in.
    await asyncio.sleep(0.2)  # the probe's own connection closed too
    held = [await _open(daemon.port) for _ in range(cap)]
    await asyncio.sleep(0.3)  # the server has accepted them all
    reader, writer = await _open(daemon.port)
    answer = await _read_all(reader, 5.0)
    assert answer.startswith(b"HTTP/1.1 503"), answer
    writer.close()
    # The connections held were not disturbed: each still serves a request.
    r0, w0 = held[0]
    w0.write(b"GET /healthz HTTP/1.1\r\nHost: riskd\r\nConnection: close\r\n\r\n")
    assert (await _read_all(r0, 5.0)).startswith(b"HTTP/1.1 200")
    for _, w in held:
        w.close()

    async def counted() -> bool:
        return await _refused(daemon, "max_connections") == 1

    await wait_until(counted, what="the refusal counted")
    daemon.send(signal.SIGTERM)
    assert await daemon.wait_exit(5.0) == 0
    _log_has_no_traceback(daemon)


async def test_a_half_sent_request_head_is_closed_after_the_timeout(
    tmp_path: Path, start_daemon: Any
) -> None:
    daemon = await _start(tmp_path, start_daemon, header_timeout_s=1.0, keepalive_timeout_s=10.0)
    reader, writer = await _open(daemon.port)
    started = time.monotonic()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: riskd\r\nX-Slow: ")  # never finished
    answer = await _read_all(reader, 5.0)
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert 0.9 <= elapsed < 3.0, elapsed
    writer.close()

    # A connection that sends nothing at all is closed the same way.
    reader, writer = await _open(daemon.port)
    assert (await _read_all(reader, 5.0)).startswith(b"HTTP/1.1 408")
    writer.close()

    # A keep-alive connection idle between whole requests is not: only the time taken
    # by a request head counts.
    reader, writer = await _open(daemon.port)
    for _ in range(2):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: riskd\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
        assert head.startswith(b"HTTP/1.1 200"), head
        length = int(
            [h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0].split(
                b":"
            )[1]
        )
        await reader.readexactly(length)
        await asyncio.sleep(1.5)  # longer than the head timeout, shorter than keep-alive
    writer.close()

    async def counted() -> bool:
        return await _refused(daemon, "header_timeout") == 2

    await wait_until(counted, what="two head timeouts counted")
    _log_has_no_traceback(daemon)


async def test_oversized_headers_get_400_without_a_traceback(
    tmp_path: Path, start_daemon: Any
) -> None:
    daemon = await _start(
        tmp_path, start_daemon, max_field_bytes=1024, max_line_bytes=1024, max_headers=16
    )
    requests = [
        b"GET /healthz HTTP/1.1\r\nHost: riskd\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n",
        b"GET /healthz?" + b"q" * 4000 + b" HTTP/1.1\r\nHost: riskd\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: riskd\r\n"
        + b"".join(b"X-H%d: 1\r\n" % k for k in range(40))
        + b"\r\n",
    ]
    for raw in requests:
        reader, writer = await _open(daemon.port)
        writer.write(raw)
        answer = await _read_all(reader, 5.0)
        status = int(answer.split(b" ", 2)[1])
        assert status in (400, 431), answer[:200]
        writer.close()

    async def counted() -> bool:
        return await _refused(daemon, "header_too_large") == len(requests)

    await wait_until(counted, what="oversized heads counted")
    # A body beyond max_body_bytes (1 MiB by default) is refused before it is read.
    reader, writer = await _open(daemon.port)
    writer.write(
        b"POST /v1/admin/override HTTP/1.1\r\nHost: riskd\r\n"
        b"Content-Type: application/json\r\nContent-Length: 5000000\r\n\r\n{"
    )
    answer = await _read_all(reader, 15.0)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    writer.close()
    assert await _refused(daemon, "body_too_large") == 1
    status, _ = await daemon.get_json("/healthz")
    assert status == 200
    daemon.send(signal.SIGTERM)
    assert await daemon.wait_exit(5.0) == 0
    _log_has_no_traceback(daemon)
