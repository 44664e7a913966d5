"""`riskd run` replaying tapes with bad input: bad bytes cost their row, a file that
stops being readable costs the rest of that file, and a tape with nothing to replay is
an error at start-up. The daemon runs as a subprocess, observed over its API."""

from __future__ import annotations

import gzip
import json
import signal
from pathlib import Path
from typing import Any

from tests.support import FED_CSV, base_config, free_port, sample, tape_rows, wait_until

POLY = "fed-dec2025-nochange-poly"
KALSHI = "fed-dec2025-nochange-kalshi"
HEADER = "ts,market,price,bid,ask,depth"


def _split_fed() -> tuple[list[list[str]], list[list[str]]]:
    rows = tape_rows(FED_CSV)
    return [r for r in rows if r[1] == POLY], [r for r in rows if r[1] == KALSHI]


def _csv_bytes(rows: list[list[str]]) -> bytes:
    return ("\n".join([HEADER, *(",".join(r) for r in rows)]) + "\n").encode()


def _jsonl_lines(rows: list[list[str]]) -> list[bytes]:
    keys = HEADER.split(",")
    return [json.dumps(dict(zip(keys, r, strict=True))).encode() for r in rows]


async def _replayed(daemon: Any, ticks: int, **rejected: int) -> str:
    """The metrics text once the replay has taken `ticks` and counted `rejected`."""

    async def done() -> str | None:
        text = await daemon.metrics()
        if sample(text, "riskd_ticks_total", venue="replay") != ticks:
            return None
        for reason, n in rejected.items():
            if sample(text, "riskd_ticks_rejected_total", venue="replay", reason=reason) != n:
                return None
        return text

    return str(await wait_until(done, timeout=20, what="the whole tape to be replayed"))


async def _last_prices_published(daemon: Any, expected: dict[str, float]) -> None:
    status, listing = await daemon.get_json("/v1/params")
    assert status == 200
    sets = {e["market"]: e for e in listing["params"]}
    for market, price in expected.items():
        assert abs(sets[market]["inputs"]["p"] - price) < 1e-6, (market, sets[market])


async def test_a_row_with_bytes_that_are_not_utf8_does_not_stop_the_replay(
    tmp_path: Path, start_daemon: Any
) -> None:
    poly, kalshi = _split_fed()
    tape = tmp_path / "tape"
    tape.mkdir()
    csv_body = _csv_bytes(poly).splitlines()
    csv_body[101] = csv_body[101].replace(b"nochange", b"no\xe7hange")  # Latin-1
    (tape / "poly.csv").write_bytes(b"\n".join(csv_body) + b"\n")
    lines = _jsonl_lines(kalshi)
    lines[50] = lines[50].replace(b"kalshi", b"kal\xff\xfeshi")
    (tape / "kalshi.jsonl").write_bytes(b"\n".join(lines) + b"\n")

    daemon = await start_daemon(base_config(tmp_path, free_port(), feed={"path": str(tape)}))
    await _replayed(daemon, len(poly) + len(kalshi) - 2, bad_encoding=2)
    await _last_prices_published(daemon, {POLY: float(poly[-1][2]), KALSHI: float(kalshi[-1][2])})
    status, _ = await daemon.get_json("/healthz")
    assert status == 200
    daemon.send(signal.SIGTERM)
    assert await daemon.wait_exit(5) == 0


async def test_a_file_cut_short_costs_the_rest_of_that_file_only(
    tmp_path: Path, start_daemon: Any
) -> None:
    poly, kalshi = _split_fed()
    tape = tmp_path / "tape"
    tape.mkdir()
    data = gzip.compress(_csv_bytes(poly))
    (tape / "poly.csv.gz").write_bytes(data[: len(data) // 2])  # a download cut short
    (tape / "kalshi.csv").write_bytes(_csv_bytes(kalshi))

    daemon = await start_daemon(base_config(tmp_path, free_port(), feed={"path": str(tape)}))

    async def done() -> str | None:
        text = await daemon.metrics()
        ticks = sample(text, "riskd_ticks_total", venue="replay") or 0
        cut = sample(text, "riskd_ticks_rejected_total", venue="replay", reason="unreadable")
        return text if cut == 1 and ticks > len(kalshi) else None

    await wait_until(done, timeout=20, what="the cut file to be counted as unreadable")
    # The other file is replayed to its end, and the daemon still serves.
    await wait_until(
        lambda: _published_price(daemon, KALSHI, float(kalshi[-1][2])),
        what="the last price of the readable file",
    )
    status, _ = await daemon.get_json("/healthz")
    assert status == 200
    daemon.send(signal.SIGTERM)
    assert await daemon.wait_exit(5) == 0


async def _published_price(daemon: Any, market: str, price: float) -> bool:
    status, entry = await daemon.get_json(f"/v1/params/{market}")
    return status == 200 and abs(entry["inputs"]["p"] - price) < 1e-6


async def test_a_tape_with_nothing_to_replay_is_an_error_at_start(
    tmp_path: Path, start_daemon: Any
) -> None:
    tape = tmp_path / "header_only.csv"
    tape.write_text(HEADER + "\n")
    daemon = await start_daemon(
        base_config(tmp_path, free_port(), feed={"path": str(tape)}), wait=False
    )
    assert await daemon.wait_exit(20) == 2
    err = daemon.stderr()
    assert f"{tape}: no data rows" in err and "Traceback" not in err
