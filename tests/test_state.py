"""State snapshots, restarts and the kill -9 drill (issue 6)."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from riskd import heap
from riskd.config import Settings
from riskd.engine import Engine
from riskd.feeds.base import Tick
from riskd.publish.jsonl import read_audit, repair_tail
from riskd.state import SCHEMA, StateStore, last_published_at, tighten_from_audit
from riskd.timeutil import parse_iso
from tests.support import base_config, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
MIDTERMS = ROOT / "data/tapes/polymarket_midterms_2022"


def _engine(ticks: int = 40) -> Engine:
    settings = Settings()
    engine = Engine(settings, {}, discover=True)
    rng = np.random.default_rng(1)
    for k in range(ticks):
        for m, p0 in (("a", 0.3), ("b", 0.6), ("c", 0.9)):
            engine.ingest(
                [
                    Tick(
                        m,
                        1_700_000_000.0 + 60 * k,
                        float(np.clip(p0 + rng.normal(0, 0.01), 0.01, 0.99)),
                    )
                ]
            )
    engine.cycle(1_700_000_000.0 + 60 * (ticks - 1))
    return engine


def test_snapshot_round_trip_restores_every_array(tmp_path: Path) -> None:
    engine = _engine()
    store = StateStore(tmp_path / "state", max_age_s=60)
    store.save(engine, clock=engine.now, seqs={"batch": 17, "http": 5})
    fresh = Engine(Settings(), {}, discover=True)
    loaded = store.load(fresh)
    assert loaded.trusted and loaded.status == "restored" and loaded.markets == 3
    assert loaded.seqs == {"batch": 17, "http": 5} and loaded.clock == engine.now
    for name in ("x", "t", "sigma2", "lam", "J2", "gap", "ticks", "jumps"):
        np.testing.assert_array_equal(getattr(fresh.est, name), getattr(engine.est, name))
    for name in ("leverage", "fee", "slippage", "mode", "version", "changed_at"):
        np.testing.assert_array_equal(getattr(fresh.gov, name), getattr(engine.gov, name))
    # No temp file is left behind by the atomic write.
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["snapshot.npz"]


def test_a_capture_is_a_copy_and_an_older_one_never_lands_last(tmp_path: Path) -> None:
    """The daemon captures on the event loop and writes in a thread: the engine moves
    on meanwhile, and the final snapshot at shutdown may be written before a periodic
    one still in its thread. What is on disk is the newest capture, as captured."""
    engine = _engine()
    store = StateStore(tmp_path, max_age_s=60)
    older = store.capture(engine, engine.now, {"batch": 1})
    engine.est.sigma2[:] = 123.0  # the engine moves on after the capture
    newer = store.capture(engine, engine.now, {"batch": 2})
    store.write(newer)
    store.write(older)  # late: must not replace the newer snapshot
    fresh = Engine(Settings(), {}, discover=True)
    loaded = store.load(fresh)
    assert loaded.seqs == {"batch": 2}
    np.testing.assert_array_equal(fresh.est.sigma2, np.full(3, 123.0))
    store.write(store.capture(engine, engine.now, {"batch": 3}))
    assert store.load(Engine(Settings(), {}, discover=True)).seqs == {"batch": 3}
    assert older["est_sigma2"][0] != 123.0  # captured before the change, a copy


def test_a_capture_into_mapped_memory_round_trips_and_lets_it_go(tmp_path: Path) -> None:
    """The daemon's periodic capture copies the arrays into memory mapped for it
    (riskd/heap.py `mapped`): zeroed when it comes, the arrays in it copies that the
    engine's later changes do not reach, the snapshot written from them the same as
    one from the heap, and the memory closable once the copies are gone."""
    engine = _engine()
    store = StateStore(tmp_path, max_age_s=60)
    nbytes = store.capture_bytes(engine)
    assert nbytes > 0
    buffer = heap.mapped(nbytes)
    assert len(buffer) >= nbytes and not any(buffer[:nbytes])
    captured = store.capture(engine, engine.now, {"batch": 4}, buffer=buffer)
    sigma2 = engine.est.sigma2.copy()
    engine.est.sigma2[:] = 7.0  # after the capture
    assert not np.shares_memory(captured["est_sigma2"], engine.est.sigma2)
    on_map = np.frombuffer(buffer, np.uint8)
    assert np.shares_memory(captured["est_sigma2"], on_map)  # copied into the map
    del on_map
    store.write(captured)
    fresh = Engine(Settings(), {}, discover=True)
    assert store.load(fresh).seqs == {"batch": 4}
    np.testing.assert_array_equal(fresh.est.sigma2, sigma2)
    np.testing.assert_array_equal(fresh.gov.leverage, engine.gov.leverage)
    with pytest.raises(BufferError):
        buffer.close()  # the copies still use it
    del captured
    buffer.close()


def test_corrupt_snapshot_is_moved_aside_and_nothing_restored(tmp_path: Path) -> None:
    engine = _engine()
    store = StateStore(tmp_path, max_age_s=60)
    store.save(engine, clock=engine.now, seqs={"batch": 3})
    data = store.path.read_bytes()
    store.path.write_bytes(data[: len(data) // 2] + b"\x00" * 64)
    fresh = Engine(Settings(), {}, discover=True)
    loaded = store.load(fresh)
    assert loaded.status == "corrupt" and not loaded.trusted
    assert loaded.floor > 1_600_000_000_000  # seqs restart above anything sent before
    assert len(fresh) == 0 and not store.path.exists()
    assert len(list(tmp_path.glob("snapshot.npz.corrupt-*"))) == 1


def test_old_schema_and_old_age_are_not_trusted(tmp_path: Path) -> None:
    engine = _engine()
    store = StateStore(tmp_path, max_age_s=60)
    store.save(engine, clock=engine.now, seqs={"batch": 9})
    with np.load(store.path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    header = json.loads(bytes(arrays["header"]).decode())

    header["written_at"] -= 3600
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(store.path, **arrays)
    fresh = Engine(Settings(), {}, discover=False)
    for m in ("a", "b", "c"):
        fresh.add_market(m, None)
    stale = store.load(fresh)
    assert stale.status == "stale" and not stale.trusted and stale.seqs == {"batch": 9}
    assert np.all(fresh.est.ticks == 0)  # model state not taken
    np.testing.assert_array_equal(fresh.gov.version, engine.gov.version)  # versions are

    header["schema"] = SCHEMA + 1
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(store.path, **arrays)
    other = store.load(Engine(Settings(), {}, discover=True))
    assert other.status == "schema" and not other.trusted and other.floor > 0


def test_missing_state_directory_starts_fresh(tmp_path: Path) -> None:
    loaded = StateStore(tmp_path / "nowhere", 60).load(Engine(Settings(), {}, discover=True))
    assert loaded.status == "none" and not loaded.trusted and loaded.floor == 0


def test_audit_log_tail_holds_the_governor_tight(tmp_path: Path) -> None:
    engine = _engine()
    audit = tmp_path / "audit.jsonl"
    entry: dict[str, Any] = {
        "market": "b",
        "version": 999,
        "mode": "reduce_only",
        "max_leverage": {"long": 1.0, "short": 1.0},
        "fee_rate_hourly": {"long": 0.5, "short": 0.5},
        "max_slippage": 0.0001,
    }
    audit.write_text(json.dumps({"seq": 1, "params": [entry]}) + "\n" + '{"seq": 2, "par')
    i = engine.index["b"]
    assert engine.gov.leverage[i].max() > 1.0
    assert tighten_from_audit(engine, audit) == 1
    assert engine.gov.leverage[i].tolist() == [1.0, 1.0]
    assert engine.gov.fee[i].tolist() == [0.5, 0.5]
    assert engine.gov.version[i] == 999 and engine.gov.mode[i] == 1


def test_torn_audit_line_is_cut_and_skipped(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_bytes(b'{"seq": 1}\n{"seq": 2}\n{"seq": 3, "par')
    assert [b["seq"] for b in read_audit(log)] == [1, 2]
    assert repair_tail(log) == len(b'{"seq": 3, "par')
    assert log.read_bytes() == b'{"seq": 1}\n{"seq": 2}\n'
    assert repair_tail(log) == 0


def _drill_config(tmp_path: Path, port: int) -> dict[str, Any]:
    return base_config(
        tmp_path,
        port,
        feed={
            "path": str(MIDTERMS),
            "speed": 86400.0,
            "fast_forward_until": "2022-10-15T00:00:00Z",
        },
        markets={"file": str(MIDTERMS / "markets.json")},
        # Loosening one step per 5 event-days keeps the bound below tight enough to bite.
        governor={
            "publish_interval_s": 0.05,
            "loosen_interval_s": 432000.0,
            "max_loosen_step": 0.1,
        },
        state={"snapshot_interval_s": 0.2},
    )


async def test_kill_9_drill(tmp_path: Path, start_daemon: Any) -> None:
    """Run, kill -9 mid-replay, restart: never looser than the governor allowed, seq and
    version keep rising, the audit log parses completely."""
    port = free_port()
    doc = _drill_config(tmp_path, port)
    audit = Path(doc["publisher"]["jsonl"]["path"])
    first = await start_daemon(doc)

    async def published_enough() -> bool:
        return audit.exists() and audit.read_bytes().count(b"\n") >= 30

    await wait_until(published_enough, 30.0, what="30 batches")
    first.proc.send_signal(signal.SIGKILL)
    assert await first.wait_exit(5.0) == -signal.SIGKILL
    before = list(read_audit(audit))
    assert (tmp_path / "state" / "snapshot.npz").exists()

    second = await start_daemon(doc, name="riskd2.toml")
    _, ready = await second.get_json("/readyz")
    assert ready["state"] == "restored"

    async def more() -> bool:
        return len(list(read_audit(audit))) >= len(before) + 20

    await wait_until(more, 30.0, what="20 batches after the restart")
    _, listing = await second.get_json("/v1/params")
    assert len(listing["params"]) == 39  # every market republished by the new process
    second.send(signal.SIGINT)
    assert await second.wait_exit(5.0) == 0

    batches = list(read_audit(audit))  # raises on any bad line: the log parses completely
    assert batches[: len(before)] == before
    after = batches[len(before) :]
    seqs = [b["seq"] for b in batches]
    assert all(b > a for a, b in zip(seqs, seqs[1:], strict=False))
    last_before: dict[str, tuple[float, dict[str, Any]]] = {}
    for batch in before:
        for entry in batch["params"]:
            last_before[entry["market"]] = (parse_iso(batch["generated_at"]), entry)
    step, interval = 0.1, 432000.0
    checked = 0
    for batch in after:
        t = parse_iso(batch["generated_at"])
        for entry in batch["params"]:
            if entry["market"] not in last_before:
                continue
            t0, old = last_before[entry["market"]]
            assert entry["version"] > old["version"]
            steps = max(0.0, np.floor((t - t0) / interval))
            for side in ("long", "short"):
                bound = old["max_leverage"][side] * (1 + step) ** steps + 0.01
                assert entry["max_leverage"][side] <= bound, (entry["market"], side)
            checked += 1
    assert checked > 20


@pytest.mark.parametrize("damage", ["corrupt", "schema", "unwritable"])
async def test_daemon_starts_conservatively_on_bad_state(
    tmp_path: Path, start_daemon: Any, damage: str, request: pytest.FixtureRequest
) -> None:
    port = free_port()
    # Paced (10 event-hours per second) so that cycles run during the warm-up.
    doc = base_config(tmp_path, port, state={"snapshot_interval_s": 0.1}, feed={"speed": 36000.0})
    state = Path(doc["state"]["dir"])
    if damage == "unwritable":
        # Root ignores permission bits; the immutable attribute makes the directory
        # read-only even for root (ext4), so every snapshot write fails.
        state.mkdir(parents=True)
        subprocess.run(["chattr", "+i", str(state)], check=True)
        request.addfinalizer(lambda: subprocess.run(["chattr", "-i", str(state)], check=True))
    else:
        engine = _engine()
        store = StateStore(state, 60)
        store.save(engine, engine.now, {"batch": 5})
        if damage == "corrupt":
            store.path.write_bytes(b"PK\x03\x04 definitely not a snapshot")
        else:
            with np.load(store.path) as npz:
                arrays = {k: npz[k] for k in npz.files}
            header = json.loads(bytes(arrays["header"]).decode())
            header["schema"] = 0
            arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
            np.savez(store.path, **arrays)
    daemon = await start_daemon(doc)
    _, ready = await daemon.get_json("/readyz")
    assert (
        ready["state"] == {"corrupt": "corrupt", "schema": "schema", "unwritable": "none"}[damage]
    )
    if damage == "unwritable":

        async def failing() -> bool:
            return (await daemon.metric("riskd_snapshot_failures_total") or 0) >= 2

        await wait_until(failing, 10.0, what="snapshot failures counted")
    if damage == "corrupt":
        assert list(state.glob("snapshot.npz.corrupt-*"))

    # Fresh start: every market begins at its fail-safe values while it warms up.
    async def published() -> dict[str, Any] | None:
        _, body = await daemon.get_json("/v1/params")
        return body if body["params"] else None

    params = await wait_until(published, what="parameter sets on the API")
    daemon.send(signal.SIGTERM)
    assert await daemon.wait_exit(5.0) == 0
    batches = list(read_audit(Path(doc["publisher"]["jsonl"]["path"])))
    assert batches and batches[0]["seq"] > (1000 if damage != "unwritable" else 0)
    first_seen: dict[str, dict[str, Any]] = {}
    for batch in batches:
        for entry in batch["params"]:
            first_seen.setdefault(entry["market"], entry)
    for entry in first_seen.values():
        assert entry["max_leverage"] == {"long": 1.0, "short": 1.0}
        assert entry["mode"] == "reduce_only" and "warming_up" in entry["reasons"]
    assert params["params"]


def test_snapshot_without_a_newer_field_restores_the_rest(tmp_path: Path) -> None:
    """A field added since the snapshot was written starts at its fresh value."""
    engine = _engine()
    store = StateStore(tmp_path, max_age_s=60)
    store.save(engine, clock=engine.now, seqs={"batch": 4})
    with np.load(store.path) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "gov_idle_at"}
    np.savez(store.path, **arrays)
    fresh = Engine(Settings(), {}, discover=True)
    loaded = store.load(fresh)
    assert loaded.trusted and loaded.markets == 3
    np.testing.assert_array_equal(fresh.gov.leverage, engine.gov.leverage)
    assert np.all(np.isnan(fresh.gov.idle_at))


def test_last_published_time_from_the_audit_log(tmp_path: Path) -> None:
    """The last whole batch's generated_at, however long its line; a torn tail is no
    batch; just after a rotation the rotated file has it."""
    audit = tmp_path / "audit.jsonl"
    assert last_published_at(audit) == float("-inf")
    first = b'{"source":"riskd","seq":1,"generated_at":"2022-11-08T00:00:00.000Z","params":[]}'
    big = (
        b'{"source":"riskd","seq":2,"generated_at":"2022-11-09T00:00:00.000Z","params":['
        + b'{"market":"m"},' * 20_000
        + b"{}]}"
    )
    audit.write_bytes(first + b"\n" + big + b"\n" + b'{"seq":3,"generated_at":"2023-01-01T0')
    assert last_published_at(audit, chunk=4096) == parse_iso("2022-11-09T00:00:00Z")
    audit.rename(tmp_path / "audit.jsonl.1")
    audit.write_bytes(b"")
    assert last_published_at(audit) == parse_iso("2022-11-09T00:00:00Z")


def test_snapshot_keeps_the_last_stamp(tmp_path: Path) -> None:
    engine = _engine()
    store = StateStore(tmp_path, max_age_s=60)
    store.save(engine, clock=engine.now, seqs={"batch": 2}, published=engine.now - 5.0)
    loaded = store.load(Engine(Settings(), {}, discover=True))
    assert loaded.published == engine.now - 5.0


def _snapshot_clock(state: Path) -> float:
    with np.load(state / "snapshot.npz") as npz:
        return float(json.loads(bytes(npz["header"]).decode())["clock"])


async def test_kill_9_mid_replay_never_stamps_a_batch_earlier(
    tmp_path: Path, start_daemon: Any
) -> None:
    """After kill -9 the replay resumes from the snapshot, older than the last batches
    published: the new process's batches are never stamped (generated_at) earlier
    than the last one before the kill."""
    port = free_port()
    doc = _drill_config(tmp_path, port)
    doc["state"]["snapshot_interval_s"] = 2.0  # batches run well ahead of it
    audit = Path(doc["publisher"]["jsonl"]["path"])
    state = Path(doc["state"]["dir"])
    first = await start_daemon(doc)

    async def snapshot() -> bool:
        return (state / "snapshot.npz").exists()

    await wait_until(snapshot, 30.0, what="a first snapshot")
    written = (state / "snapshot.npz").stat().st_mtime_ns

    async def fresh_snapshot() -> bool:
        return (state / "snapshot.npz").stat().st_mtime_ns != written

    await wait_until(fresh_snapshot, 10.0, what="a fresh snapshot")
    lines = audit.read_bytes().count(b"\n")

    async def batches_after_it() -> bool:
        return audit.read_bytes().count(b"\n") >= lines + 8

    await wait_until(batches_after_it, 10.0, what="batches after the snapshot")
    first.proc.send_signal(signal.SIGKILL)
    assert await first.wait_exit(5.0) == -signal.SIGKILL
    before = list(read_audit(audit))
    last = parse_iso(before[-1]["generated_at"])
    # The case in point: the snapshot's clock is behind the last batch published.
    assert _snapshot_clock(state) < last

    second = await start_daemon(doc, name="riskd2.toml")
    _, ready = await second.get_json("/readyz")
    assert ready["state"] == "restored"

    async def more() -> bool:
        return len(list(read_audit(audit))) >= len(before) + 10

    await wait_until(more, 30.0, what="10 batches after the restart")
    second.send(signal.SIGINT)
    assert await second.wait_exit(5.0) == 0
    batches = list(read_audit(audit))
    stamps = [parse_iso(b["generated_at"]) for b in batches]
    assert stamps[len(before)] >= last, (stamps[len(before)], last)
    assert all(b >= a for a, b in zip(stamps, stamps[1:], strict=False))
    seqs = [b["seq"] for b in batches]
    assert all(b > a for a, b in zip(seqs, seqs[1:], strict=False))


def test_the_header_json_reads_back_as_the_header() -> None:
    """The snapshot's header: ids by one encoder, the rest by another; what json reads
    back is the header, ids of any text and the exchange state's infinities included."""
    from riskd.state import header_json

    ids = ["m1", 'q"uote', "back\\slash", "naïve", "\u2028", "tab\tnew\nline", "0x" + "a" * 64]
    header = {
        "schema": SCHEMA,
        "written_at": 1.5,
        "clock": None,
        "seqs": {"batch": 3},
        "ids": ids,
        "exchange": {"received": float("-inf"), "fund": float("inf")},
    }
    assert json.loads(header_json(header).decode()) == header
    assert json.loads(header_json({"ids": []}).decode()) == {"ids": []}
    # Not a list: json alone, as before.
    odd = {"ids": None, "x": 1}
    assert json.loads(header_json(odd).decode()) == odd


def test_savez_writes_what_np_load_reads_as_np_savez_wrote_it(tmp_path: Path) -> None:
    """The snapshot's own writer (arrays written from their memory, a MiB at a time)
    against numpy's: the same names, dtypes, shapes and values read back, whatever the
    layout; Python objects refused as numpy's loader would refuse them."""
    from riskd import state

    rng = np.random.default_rng(7)
    arrays: dict[str, Any] = {
        "f": rng.normal(size=(3 * (1 << 17) + 5)),  # more than two steps of a MiB
        "pairs": rng.normal(size=(1001, 2)),
        "by_col": np.asfortranarray(rng.normal(size=(7, 3))),
        "every_other": np.arange(40, dtype=np.int64)[::2],
        "flags": rng.random(33) > 0.5,
        "codes": np.arange(-3, 300, dtype=np.int8),
        "text": np.array(["yes", "no", "naïve"]),
        "empty": np.empty((0, 2)),
        "one": np.float64(np.inf),
    }
    ours, theirs = tmp_path / "ours.npz", tmp_path / "theirs.npz"
    with ours.open("wb") as fh:
        state.savez(fh, arrays)
    np.savez(theirs, **arrays)
    with np.load(ours, allow_pickle=False) as a, np.load(theirs, allow_pickle=False) as b:
        assert sorted(a.files) == sorted(b.files) == sorted(arrays)
        for name in arrays:
            assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
            np.testing.assert_array_equal(a[name], b[name])
    with pytest.raises(ValueError, match="Python objects"):
        with (tmp_path / "bad.npz").open("wb") as fh:
            state.savez(fh, {"o": np.array([object()])})
