from __future__ import annotations

import dataclasses
import gzip
import json
import math
import random
import shutil
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from riskd.feeds.base import MAX_DEPTH, Tick
from riskd.tape import MAX_EXAMPLES, Tape, TapeError, TapeReport, read_tape
from riskd.ticks import TS_MAX, TickColumns, clean, tick_fault

TAPES = Path(__file__).resolve().parent.parent / "data" / "tapes"
MIDTERMS = TAPES / "polymarket_midterms_2022"
FED = TAPES / "fed_dec2025" / "fed_nochange.csv"

T0 = 1667952000.0  # 2022-11-09T00:00:00Z


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def rejections(report: TapeReport) -> list[tuple[int, str]]:
    return [(r.line, r.reason) for r in report.examples]


# --- the shipped tapes -----------------------------------------------------------------


def test_midterm_directory_reads_every_market_in_time_order() -> None:
    ticks, reports = read_tape(MIDTERMS)
    meta = json.loads((MIDTERMS / "markets.json").read_text())["markets"]

    assert len(reports) == 39  # one per CSV; markets.json and SOURCE.md are not tapes
    assert all(r.rejected == 0 and r.rows == r.accepted for r in reports)
    assert len(ticks) == sum(m["rows"] for m in meta) == 28002
    assert {t.market for t in ticks} == {m["id"] for m in meta}
    assert all(a.ts <= b.ts for a, b in zip(ticks, ticks[1:], strict=False))
    assert all(0.0 <= t.price <= 1.0 and t.bid is None and t.depth is None for t in ticks)
    # pennsylvania_senate's first trade, straight from the CSV
    pa = [t for t in ticks if t.market == "pm22-pennsylvania-senate"]
    first = (MIDTERMS / "pennsylvania_senate.csv").read_text().splitlines()[1].split(",")
    assert pa[0].price == float(first[2])
    assert pa[0].ts == datetime.fromisoformat(first[0]).timestamp()


def test_fed_tape_has_book_fields_and_two_interleaved_markets() -> None:
    ticks, (report,) = read_tape(FED)
    assert report.rows == report.accepted == 2011 and report.rejected == 0
    assert report.unsorted == 0
    assert {t.market for t in ticks} == {"fed-dec2025-nochange-poly", "fed-dec2025-nochange-kalshi"}
    assert all(t.bid is not None and t.ask is not None and t.bid <= t.ask for t in ticks)
    assert all(t.depth is not None and t.depth >= 0 for t in ticks)
    assert ticks[0] == Tick("fed-dec2025-nochange-poly", 1763272880.028, 0.505, 0.5, 0.51, 64469.59)


def test_ticks_are_real_ticks() -> None:
    # The reader builds Ticks without the dataclass __init__; they must be indistinguishable.
    ticks, _ = read_tape(FED)
    t = ticks[0]
    rebuilt = Tick(t.market, t.ts, t.price, t.bid, t.ask, t.depth)
    assert type(t) is Tick and t == rebuilt and hash(t) == hash(rebuilt)
    with pytest.raises(AttributeError):
        t.price = 0.1  # type: ignore[misc]


def test_gzip_jsonl_and_jsonl_gz_match_the_csv(tmp_path: Path) -> None:
    expected, _ = read_tape(FED)

    gz = tmp_path / "fed.csv.gz"
    with gzip.open(gz, "wb") as f:
        f.write(FED.read_bytes())

    lines = []
    for t in expected:
        lines.append(
            json.dumps(
                {
                    "ts": t.ts,
                    "market": t.market,
                    "price": t.price,
                    "bid": t.bid,
                    "ask": t.ask,
                    "depth": t.depth,
                }
            )
        )
    body = "\n".join(lines) + "\n"
    jl = write(tmp_path / "fed.jsonl", body)
    nd = write(tmp_path / "fed.ndjson", body)
    js = write(tmp_path / "fed.json", body)
    jlgz = tmp_path / "fed.jsonl.gz"
    with gzip.open(jlgz, "wt", encoding="utf-8") as f:
        f.write(body)

    for path in (gz, jl, nd, js, jlgz):
        ticks, (report,) = read_tape(path)
        assert ticks == expected, path
        assert report.rejected == 0 and report.rows == 2011


def test_midterm_directory_gzipped_matches(tmp_path: Path) -> None:
    for src in sorted(MIDTERMS.glob("*.csv"))[:5]:
        with gzip.open(tmp_path / (src.name + ".gz"), "wb") as f:
            f.write(src.read_bytes())
        shutil.copy(src, tmp_path / ("plain_" + src.name))
    ticks, reports = read_tape(tmp_path)
    assert len(reports) == 10 and all(r.rejected == 0 for r in reports)
    names = [Path(r.path).name for r in reports]
    assert names[0].endswith(".csv.gz") and names[-1].startswith("plain_")
    by_file = {Path(r.path).name: r.accepted for r in reports}
    for src in sorted(MIDTERMS.glob("*.csv"))[:5]:
        assert by_file[src.name + ".gz"] == by_file["plain_" + src.name] > 0
    # every tick appears twice (once per copy; the source has duplicate trades too)
    assert all(n % 2 == 0 for n in Counter(ticks).values())
    assert all(a.ts <= b.ts for a, b in zip(ticks, ticks[1:], strict=False))


# --- timestamps ------------------------------------------------------------------------


def test_unix_and_iso_timestamps(tmp_path: Path) -> None:
    p = write(
        tmp_path / "t.csv",
        "ts,market,price\n"
        f"{int(T0)},a,0.1\n"
        f"{T0 + 0.5},a,0.2\n"
        "2022-11-09T00:00:01Z,a,0.3\n"
        "2022-11-09T01:00:02+01:00,a,0.4\n"
        "2022-11-09T00:00:03.250000+00:00,a,0.5\n"
        " 2022-11-09T00:00:04Z ,a,0.6\n"
        "20221109T000005Z,a,0.7\n",
    )
    ticks, (report,) = read_tape(p)
    assert report.rejected == 0
    assert [t.ts for t in ticks] == [T0, T0 + 0.5, T0 + 1, T0 + 2, T0 + 3.25, T0 + 4, T0 + 5]
    assert [t.price for t in ticks] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]


def test_blank_optional_cells_are_absent(tmp_path: Path) -> None:
    p = write(
        tmp_path / "t.csv",
        f"ts,market,price,bid,ask,depth\n{T0},a,0.5,,0.6, \n{T0 + 1},a,0.5, ,,7\n",
    )
    ticks, (report,) = read_tape(p)
    assert report.rejected == 0
    assert ticks == [Tick("a", T0, 0.5, None, 0.6, None), Tick("a", T0 + 1, 0.5, None, None, 7.0)]


def test_jsonl_numeric_and_string_timestamps(tmp_path: Path) -> None:
    p = write(
        tmp_path / "t.jsonl",
        f'{{"ts": {int(T0)}, "market": "a", "price": 0.5}}\n'
        f'{{"ts": "{T0 + 1}", "market": "a", "price": "0.6"}}\n'
        '{"ts": "2022-11-09T00:00:02Z", "market": "a", "price": 0.7, "bid": null, "ask": ""}\n',
    )
    ticks, (report,) = read_tape(p)
    assert report.rejected == 0
    assert ticks == [Tick("a", T0, 0.5), Tick("a", T0 + 1, 0.6), Tick("a", T0 + 2, 0.7)]


# --- bad rows --------------------------------------------------------------------------


def test_each_bad_csv_row_is_rejected_with_line_and_reason(tmp_path: Path) -> None:
    rows = [
        "ts,market,price,bid,ask,depth",  # line 1
        f"{T0},a,0.50,0.49,0.51,100",  # 2 ok
        f"{T0 + 1},a,nan,,,",  # 3 bad_price
        f"{T0 + 1},a,inf,,,",  # 4 bad_price
        f"{T0 + 1},a,1.5,,,",  # 5 bad_price
        f"{T0 + 1},a,abc,,,",  # 6 bad_price
        f"{T0 + 1},a,-0.1,,,",  # 7 bad_price
        "yesterday,a,0.5,,,",  # 8 bad_ts
        "2022-11-09T00:00:05,a,0.5,,,",  # 9 bad_ts (no offset)
        "nan,a,0.5,,,",  # 10 bad_ts
        f"{T0 * 1000},a,0.5,,,",  # 11 bad_ts (milliseconds)
        f"{T0 + 1},,0.5,,,",  # 12 bad_market
        f"{T0 + 1},a,0.5",  # 13 bad_row (field count)
        f"{T0 + 1},a,0.5,0.6,0.4,",  # 14 bad_bid_ask (bid > ask)
        f"{T0 + 1},a,0.5,1.2,,",  # 15 bad_bid_ask (out of range)
        f"{T0 + 1},a,0.5,,x,",  # 16 bad_bid_ask (unparsable)
        f"{T0 + 1},a,0.5,,,-1",  # 17 bad_depth
        f"{T0 + 1},a,0.5,,,inf",  # 18 bad_depth
        f"{T0 + 1},a,0.5,,,lots",  # 19 bad_depth
        f"{T0 + 2},a,0.55,,,",  # 20 ok, optional cells empty
        "",  # 21 blank: skipped, not a row
        f"{T0 + 1},a,0.52,,,",  # 22 out_of_order
        f"{T0 + 3},a,0.60,0.6,0.6,0",  # 23 ok (bid == ask, depth 0)
        f"{T0 + 3},a,1,,,",  # 24 ok: equal ts is in order; price 1 is in range
    ]
    p = write(tmp_path / "bad.csv", "\n".join(rows) + "\n")
    ticks, (report,) = read_tape(p)

    assert rejections(report) == [
        (3, "bad_price"), (4, "bad_price"), (5, "bad_price"), (6, "bad_price"),
        (7, "bad_price"), (8, "bad_ts"), (9, "bad_ts"), (10, "bad_ts"), (11, "bad_ts"),
        (12, "bad_market"), (13, "bad_row"), (14, "bad_bid_ask"), (15, "bad_bid_ask"),
        (16, "bad_bid_ask"), (17, "bad_depth"), (18, "bad_depth"), (19, "bad_depth"),
        (22, "out_of_order"),
    ]  # fmt: skip
    assert ticks == [
        Tick("a", T0, 0.5, 0.49, 0.51, 100.0),
        Tick("a", T0 + 2, 0.55),
        Tick("a", T0 + 3, 0.6, 0.6, 0.6, 0.0),
        Tick("a", T0 + 3, 1.0),
    ]
    assert report.rows == 22 and report.accepted == 4 and report.rejected == 18
    assert report.by_reason == {
        "bad_price": 5, "bad_ts": 4, "bad_market": 1, "bad_row": 1,
        "bad_bid_ask": 3, "bad_depth": 3, "out_of_order": 1,
    }  # fmt: skip
    assert all(r.path == str(p) for r in report.examples)
    assert "UTC offset" in report.examples[6].detail


def test_each_bad_jsonl_row_is_rejected_with_line_and_reason(tmp_path: Path) -> None:
    rows = [
        f'{{"ts": {T0}, "market": "a", "price": 0.5}}',  # 1 ok
        '{"ts": 1, "market": "a", "price": ',  # 2 bad_json
        "[1, 2, 3]",  # 3 bad_row (not an object)
        f'{{"ts": {T0 + 1}, "market": "a"}}',  # 4 missing_field
        f'{{"ts": {T0 + 1}, "market": "a", "price": null}}',  # 5 missing_field
        f'{{"ts": {T0 + 1}, "market": 7, "price": 0.5}}',  # 6 bad_market
        f'{{"ts": {T0 + 1}, "market": "a", "price": true}}',  # 7 bad_price
        f'{{"ts": {T0 + 1}, "market": "a", "price": NaN}}',  # 8 bad_price
        f'{{"ts": {T0 + 1}, "market": "a", "price": 0.5, "depth": Infinity}}',  # 9 bad_depth
        '{"ts": "2022-11-09T00:00:01", "market": "a", "price": 0.5}',  # 10 bad_ts
        f'{{"ts": {T0 + 1}, "market": "a", "price": 0.5, "bid": 0.7, "ask": 0.6}}',  # 11
        "   ",  # 12 blank: skipped
        f'{{"ts": {T0 + 2}, "market": "a", "price": 0.6, "extra": "ignored"}}',  # 13 ok
        f'{{"ts": {T0 + 1}, "market": "a", "price": 0.7}}',  # 14 out_of_order
    ]
    p = write(tmp_path / "bad.jsonl", "\n".join(rows) + "\n")
    ticks, (report,) = read_tape(p)
    assert rejections(report) == [
        (2, "bad_json"), (3, "bad_row"), (4, "missing_field"), (5, "missing_field"),
        (6, "bad_market"), (7, "bad_price"), (8, "bad_price"), (9, "bad_depth"),
        (10, "bad_ts"), (11, "bad_bid_ask"), (14, "out_of_order"),
    ]  # fmt: skip
    assert ticks == [Tick("a", T0, 0.5), Tick("a", T0 + 2, 0.6)]
    assert report.rows == 13 and report.accepted == 2 and report.rejected == 11
    assert "price" in report.examples[2].detail


def test_out_of_order_is_per_market(tmp_path: Path) -> None:
    p = write(
        tmp_path / "mix.csv",
        "ts,market,price\n"
        f"{T0 + 10},a,0.1\n"  # 2
        f"{T0 + 5},b,0.2\n"  # 3 earlier than a's row, but b's first: fine
        f"{T0 + 11},a,0.3\n"  # 4
        f"{T0 + 4},b,0.4\n"  # 5 earlier than b's previous: rejected
        f"{T0 + 6},b,0.5\n"  # 6 fine
        f"{T0 + 11},a,0.6\n",  # 7 equal to a's previous: fine
    )
    ticks, (report,) = read_tape(p)
    assert rejections(report) == [(5, "out_of_order")]
    assert [(t.market, t.price) for t in ticks] == [
        ("a", 0.1), ("b", 0.2), ("a", 0.3), ("b", 0.5), ("a", 0.6),
    ]  # fmt: skip
    # b's rows step back relative to a's: kept, but counted as not globally sorted
    assert report.unsorted == 2
    assert "earlier than a previous row of another market" in report.summary()


def test_directory_merges_by_time_and_ties_keep_file_order(tmp_path: Path) -> None:
    write(tmp_path / "b.csv", f"ts,market,price\n{T0},b,0.2\n{T0 + 2},b,0.2\n")
    write(
        tmp_path / "a.jsonl",
        f'{{"ts": {T0}, "market": "a", "price": 0.1}}\n'
        f'{{"ts": {T0 + 3}, "market": "a", "price": 0.1}}\n',
    )
    write(tmp_path / "c.csv", f"ts,market,price\n{T0 + 1},c,0.3\n{T0 + 2},c,0.3\n")
    write(tmp_path / "markets.json", '{"markets": []}')  # metadata, not a tape
    write(tmp_path / "notes.txt", "not a tape")
    tape = Tape(tmp_path)
    assert [Path(r.path).name for r in tape.reports] == ["a.jsonl", "b.csv", "c.csv"]
    got = [(t.ts - T0, t.market) for t in tape]
    assert got == [(0, "a"), (0, "b"), (1, "c"), (2, "b"), (2, "c"), (3, "a")]
    assert [r.accepted for r in tape.reports] == [2, 2, 2]


def test_bad_rows_in_one_file_do_not_affect_others(tmp_path: Path) -> None:
    write(tmp_path / "a.csv", f"ts,market,price\n{T0},a,0.1\n{T0 + 1},a,2\n")
    write(tmp_path / "b.csv", f"ts,market,price\n{T0},b,0.2\n")
    tape = Tape(tmp_path)
    ticks = list(tape)
    assert [t.market for t in ticks] == ["a", "b"]
    assert tape.rejected_total == 1
    assert [(r.rows, r.rejected) for r in tape.reports] == [(2, 1), (1, 0)]
    assert rejections(tape.reports[0]) == [(3, "bad_price")]


def test_reports_fill_during_iteration_and_reset_on_reiteration(tmp_path: Path) -> None:
    p = write(tmp_path / "t.csv", f"ts,market,price\n{T0},a,0.1\n{T0 + 1},a,x\n{T0 + 2},a,0.3\n")
    tape = Tape(p)
    it = iter(tape)
    next(it)
    assert tape.reports[0].accepted == 1 and tape.reports[0].rejected == 0
    next(it)
    assert tape.reports[0].rejected == 1 and tape.rejected_total == 1
    assert len(list(tape)) == 2  # a second pass starts fresh
    assert tape.reports[0].rows == 3 and tape.rejected_total == 1


def test_examples_are_capped_but_counts_are_exact(tmp_path: Path) -> None:
    body = "ts,market,price\n" + "".join(f"{T0 + i},a,9\n" for i in range(250))
    tape = Tape(write(tmp_path / "t.csv", body), require_rows=False)
    assert list(tape) == []
    (report,) = tape.reports
    assert report.rejected == 250 and report.by_reason == {"bad_price": 250}
    assert len(report.examples) == MAX_EXAMPLES
    assert report.examples[-1].line == MAX_EXAMPLES + 1
    text = report.summary()
    assert "250 rejected" in text and "line 2: bad_price" in text
    assert "150 more not listed" in text


def test_summary_names_file_lines_and_reasons(tmp_path: Path) -> None:
    p = write(tmp_path / "t.csv", f"ts,market,price\n{T0},a,0.1\n{T0},a,1.7\nnope,a,0.2\n")
    _, (report,) = read_tape(p)
    lines = report.summary().splitlines()
    assert lines[0] == f"{p}: 3 rows, 1 accepted, 2 rejected (bad_price 1, bad_ts 1)"
    assert lines[1].startswith("  line 3: bad_price: price '1.7'")
    assert lines[2].startswith("  line 4: bad_ts: ts 'nope'")


# --- fatal errors ----------------------------------------------------------------------


@pytest.mark.parametrize("column", ["ts", "market", "price"])
def test_missing_required_column_is_fatal_and_named(tmp_path: Path, column: str) -> None:
    cols = [c for c in ("ts", "market", "price", "bid") if c != column]
    p = write(tmp_path / "t.csv", ",".join(cols) + "\n" + ",".join(["1"] * len(cols)) + "\n")
    with pytest.raises(TapeError, match=rf"t\.csv: line 1: missing required column '{column}'"):
        Tape(p)


def test_missing_column_in_any_directory_file_fails_up_front(tmp_path: Path) -> None:
    write(tmp_path / "a.csv", f"ts,market,price\n{T0},a,0.1\n")
    write(tmp_path / "b.csv", f"ts,market\n{T0},b\n")
    with pytest.raises(TapeError, match=r"b\.csv.*'price'"):
        Tape(tmp_path)


def test_other_fatal_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(TapeError, match="nowhere.csv: no such file"):
        Tape(tmp_path / "nowhere.csv")
    with pytest.raises(TapeError, match=r"t\.parquet: unknown tape format"):
        Tape(write(tmp_path / "t.parquet", "x"))
    with pytest.raises(TapeError, match=r"empty\.csv: empty file"):
        Tape(write(tmp_path / "empty.csv", ""))
    with pytest.raises(TapeError, match=r"dup\.csv: line 1: duplicate column 'ts'"):
        Tape(write(tmp_path / "dup.csv", "ts,market,price,ts\n"))
    notgz = write(tmp_path / "fake.csv.gz", "ts,market,price\n")
    with pytest.raises(TapeError, match=r"fake\.csv\.gz: cannot read tape"):
        Tape(notgz)
    sub = tmp_path / "emptydir"
    sub.mkdir()
    with pytest.raises(TapeError, match="emptydir: no tape files"):
        Tape(sub)
    assert issubclass(TapeError, ValueError)


def test_truncated_gzip_fails_during_iteration_naming_the_file(tmp_path: Path) -> None:
    body = "ts,market,price\n" + "".join(f"{T0 + i},a,0.5\n" for i in range(20000))
    data = gzip.compress(body.encode())
    p = tmp_path / "cut.csv.gz"
    p.write_bytes(data[: len(data) // 2])
    tape = Tape(p)  # the header is still readable
    with pytest.raises(TapeError, match=r"cut\.csv\.gz: line \d+: cannot read tape"):
        list(tape)


def test_bom_and_padded_header_are_accepted(tmp_path: Path) -> None:
    p = tmp_path / "bom.csv"
    p.write_bytes(b"\xef\xbb\xbfts, market ,price\r\n" + f"{T0},a,0.25\r\n".encode())
    ticks, _ = read_tape(p)
    assert ticks == [Tick("a", T0, 0.25)]


# --- bytes that are not UTF-8, rows the CSV parser refuses -----------------------------


def _gzip(path: Path) -> Path:
    gz = path.with_name(path.name + ".gz")
    gz.write_bytes(gzip.compress(path.read_bytes()))
    return gz


def test_a_csv_row_with_bytes_that_are_not_utf8_costs_only_that_row(tmp_path: Path) -> None:
    p = tmp_path / "latin1.csv"
    p.write_bytes(
        b"ts,market,price,note\n"
        + f"{T0},a,0.5,ok\n".encode()  # 2
        + f"{T0 + 1},a\xe9,0.6,\n".encode("latin-1")  # 3: the market id
        + f"{T0 + 2},a,0.6,caf\xe9\n".encode("latin-1")  # 4: a column riskd does not use
        + b"\xff\xfe\n"  # 5: nothing but bad bytes
        + f"{T0 + 3},a,0.7,\n".encode()  # 6
    )
    for path in (p, _gzip(p)):
        ticks, (report,) = read_tape(path)
        assert ticks == [Tick("a", T0, 0.5), Tick("a", T0 + 3, 0.7)], path
        assert rejections(report) == [(3, "bad_encoding"), (4, "bad_encoding"), (5, "bad_encoding")]
        assert report.rows == 5 and report.accepted == 2
        assert report.examples[0].path == str(path)
        assert "b'\\xe9' are not UTF-8" in report.examples[0].detail
        assert f"{path}: 5 rows, 2 accepted, 3 rejected (bad_encoding 3)" in report.summary()


def test_a_jsonl_line_with_bytes_that_are_not_utf8_costs_only_that_line(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    p.write_bytes(
        f'{{"ts": {T0}, "market": "a", "price": 0.5}}\n'.encode()
        + f'{{"ts": {T0 + 1}, "market": "a\xe9", "price": 0.6}}\n'.encode("latin-1")
        + f'{{"ts": {T0 + 2}, "market": "a", "price": 0.7}}\n'.encode()
        # valid UTF-8 text, but the JSON escape makes a lone surrogate: not a market id
        + f'{{"ts": {T0 + 3}, "market": "b\\udcff", "price": 0.7}}\n'.encode()
    )
    for path in (p, _gzip(p)):
        ticks, (report,) = read_tape(path)
        assert ticks == [Tick("a", T0, 0.5), Tick("a", T0 + 2, 0.7)], path
        assert rejections(report) == [(2, "bad_encoding"), (4, "bad_market")]
        assert report.examples[0].path == str(path)


def test_a_row_the_csv_parser_refuses_costs_only_that_row(tmp_path: Path) -> None:
    huge = "x" * 200_000  # over the csv module's field size limit
    p = write(
        tmp_path / "t.csv",
        f"ts,market,price,note\n{T0},a,0.5,\n{T0 + 1},a,0.6,{huge}\n{T0 + 2},a,0.7,\n",
    )
    ticks, (report,) = read_tape(p)
    assert ticks == [Tick("a", T0, 0.5), Tick("a", T0 + 2, 0.7)]
    assert rejections(report) == [(3, "bad_row")]
    assert "field limit" in report.examples[0].detail


def test_a_header_that_is_not_utf8_is_fatal_and_named(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_bytes(b"ts,market,price\xff\n" + f"{T0},a,0.5\n".encode())
    with pytest.raises(TapeError, match=r"t\.csv: line 1: header: bytes b'\\xff' are not UTF-8"):
        Tape(p)


# --- tapes with nothing to replay ------------------------------------------------------


def test_a_tape_without_a_usable_row_is_an_error_saying_why(tmp_path: Path) -> None:
    with pytest.raises(TapeError, match=r"header\.csv: no data rows: nothing to replay"):
        Tape(write(tmp_path / "header.csv", "ts,market,price\n\n"))
    with pytest.raises(TapeError, match=r"empty\.jsonl: no data rows"):
        Tape(write(tmp_path / "empty.jsonl", "\n"))
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"ts,market,price\n" + f"{T0},a,7\n".encode() + b"\xff,a,0.5\n")
    with pytest.raises(
        TapeError,
        match=r"bad\.csv: all 2 rows rejected \(bad_encoding 1, "
        r"bad_price 1\); first: line 2: bad_price: price '7'",
    ):
        read_tape(bad)
    # Not required: read as empty, with the reasons in the report.
    tape = Tape(bad, require_rows=False)
    assert list(tape) == [] and tape.reports[0].rejected == 2


def test_a_directory_needs_a_usable_row_in_some_file(tmp_path: Path) -> None:
    write(tmp_path / "a.csv", "ts,market,price\n")
    write(tmp_path / "b.jsonl", '{"ts": "yesterday", "market": "b", "price": 0.5}\n')
    with pytest.raises(
        TapeError,
        match=r"no usable rows in any of its 2 tape files .*a\.csv: "
        r"no data rows; .*b\.jsonl: all 1 rows rejected \(bad_ts 1\)",
    ):
        Tape(tmp_path)
    write(tmp_path / "c.csv", f"ts,market,price\n{T0},c,0.5\n")
    ticks, reports = read_tape(tmp_path)  # one file with rows is enough; the others report
    assert ticks == [Tick("c", T0, 0.5)]
    assert [(r.rows, r.accepted, r.rejected) for r in reports] == [(0, 0, 0), (1, 0, 1), (1, 1, 0)]


def test_a_file_cut_short_can_cost_only_the_rest_of_that_file(tmp_path: Path) -> None:
    body = "ts,market,price\n" + "".join(f"{T0 + i},a,0.5\n" for i in range(20000))
    data = gzip.compress(body.encode())
    (tmp_path / "cut.csv.gz").write_bytes(data[: len(data) // 2])
    write(tmp_path / "whole.csv", f"ts,market,price\n{T0},b,0.5\n{T0 + 30000},b,0.6\n")
    seen: list[TapeError] = []
    tape = Tape(tmp_path, on_unreadable=seen.append)
    ticks = list(tape)
    cut, whole = tape.reports
    assert whole.accepted == 2 and ticks[-1] == Tick("b", T0 + 30000, 0.6)
    assert 0 < cut.accepted < 20000 and cut.by_reason == {"unreadable": 1}
    (err,) = seen
    assert err.line is not None and cut.examples[0].line == err.line > cut.accepted
    assert "cut.csv.gz" in str(err) and "the rest of the file is skipped" in cut.summary()
    with pytest.raises(TapeError, match=r"cut\.csv\.gz: line \d+: cannot read tape"):
        list(Tape(tmp_path))  # without on_unreadable: an error, as before


# --- the backtest's columns ------------------------------------------------------------


def _read_both(path: Path) -> None:
    """`Tape.columns` (a plain CSV read at once) has each file's ticks and reports as
    iterating the file has."""
    tape = Tape(path, require_rows=False)
    ticks = list(tape)
    reports = [dataclasses.asdict(r) for r in tape.reports]
    (cols,) = tape.columns()
    assert list(cols.ticks()) == ticks
    assert [dataclasses.asdict(r) for r in tape.reports] == reports


def test_columns_are_the_ticks_of_the_shipped_tapes() -> None:
    for path in [FED, *sorted(MIDTERMS.glob("*.csv"))[:8]]:
        _read_both(path)


def test_columns_are_the_ticks_whatever_the_rows(tmp_path: Path) -> None:
    rng = random.Random(3)
    good = [f"{T0 + i:.1f},{rng.choice('ab')},0.{rng.randint(1000, 9999)}" for i in range(300)]
    bad = [f"{T0},a,1.5", f"{T0},,0.5", "x,a,0.5", f"{T0},a", "", f"{T0},a,0.5,7", "  "]
    rows = good[:]
    for at in rng.sample(range(300), 40):  # bad rows, and rows out of order
        rows[at] = rng.choice([*bad, f"{T0 - 1:.1f},a,0.5"])
    body = "ts,market,price\n" + "\n".join(rows) + "\n"
    files = {
        "plain.csv": body,
        "crlf.csv": body.replace("\n", "\r\n"),
        "quoted.csv": body.replace(",b,", ',"b",'),
        "blank_end.csv": body + "\n\n",
        "no_newline.csv": body.rstrip("\n"),
        "one_market.csv": f"ts,market,price\n{T0 + 5},a,0.5\n{T0 + 1},a,0.5\n"
        + "".join(f"{T0 + i},a,0.5\n" for i in range(99)),
        "book.csv": "ts,market,price,bid,ask,depth\n"
        + "".join(
            f"{T0 + i},a,0.5,{rng.choice(['0.4', '', '0.6', 'nan'])},0.55,7\n" for i in range(99)
        ),
    }
    for name, text in files.items():
        path = tmp_path / name
        path.write_bytes(text.encode())
        _read_both(path)
        _read_both(_gzip(path))


def test_columns_keep_the_rows_of_a_file_cut_short(tmp_path: Path) -> None:
    body = "ts,market,price\n" + "".join(f"{T0 + i},a,0.5\n" for i in range(20000))
    data = gzip.compress(body.encode())
    (tmp_path / "cut.csv.gz").write_bytes(data[: len(data) // 2])
    seen: list[TapeError] = []
    tape = Tape(tmp_path / "cut.csv.gz", on_unreadable=seen.append)
    ticks = list(tape)
    (cols,) = tape.columns()
    assert list(cols.ticks()) == ticks and len(seen) == 2 and str(seen[0]) == str(seen[1])
    assert tape.reports[0].by_reason == {"unreadable": 1}
    with pytest.raises(TapeError, match=r"cut\.csv\.gz: line \d+: cannot read tape"):
        Tape(tmp_path / "cut.csv.gz").columns()


@pytest.mark.parametrize("fraction", ["", ".123", ".123456"])
def test_times_and_prices_of_one_width_are_read_as_python_reads_them(
    tmp_path: Path, fraction: str
) -> None:
    # Enough rows of one width that the reader takes them on arrays; among them dates
    # that do not exist, times out of range and prices that are not plain decimals.
    rng = random.Random(5)
    rows, expected = [], []
    for k in range(2000):
        ts = datetime.fromtimestamp(T0 + 37 * k, UTC).isoformat(timespec="seconds")
        ts = f"{ts[:19]}{fraction}Z"
        if rng.random() < 0.05:
            at = rng.randrange(len(ts))
            ts = ts[:at] + rng.choice("0912:-TZ x") + ts[at + 1 :]
        if rng.random() < 0.05:
            day = rng.choice(["2023-02-29", "2024-02-29", "2100-02-29", "2000-02-29", "2100-03-01"])
            ts = day + ts[10:]
        if rng.random() < 0.02:
            time = rng.choice(["24:00:00", "23:59:60", "23:60:59", "00:00:00"])
            ts = ts[:11] + time + ts[19:]
        price = f"{rng.randint(0, 10**6) / 10**6:.6f}"
        if rng.random() < 0.05:
            at = rng.randrange(len(price))
            price = price[:at] + rng.choice("05.-e ") + price[at + 1 :]
        rows.append(f"{ts},m,{price}")
        try:
            when = datetime.fromisoformat(ts)
            tick = Tick("m", when.timestamp() if when.tzinfo else -1.0, float(price))
        except ValueError:
            continue
        if tick_fault(tick) is None and (not expected or tick.ts >= expected[-1].ts):
            expected.append(tick)
    p = write(tmp_path / "t.csv", "ts,market,price\n" + "\n".join(rows) + "\n")
    ticks, (report,) = read_tape(p)
    assert ticks == expected and report.rejected == 2000 - len(expected) > 100
    _read_both(p)


def test_the_columns_check_is_tick_fault() -> None:
    values = [None, -math.inf, -1.0, -0.0, 0.0, 0.5, 1.0, 1.5, 7.0, MAX_DEPTH, 2e12, math.inf]
    times = [-1.0, 0.0, 1.0, T0, TS_MAX - 1, TS_MAX, math.inf, math.nan]
    ticks = [
        Tick(m, t, p, b, a, d)
        for m in ("", "a")
        for t in times
        for p in [0.5, 2.0, math.nan]
        for b in values[:7:3]
        for a in values[::2]
        for d in values
    ] + [Tick("a", T0, 0.5, b, a) for b in values for a in values]
    cols = TickColumns.of(ticks)
    has_market = np.array([bool(t.market) for t in ticks])
    ok = clean(cols.ts, has_market, cols.price, cols.bid, cols.ask, cols.depth)
    assert ok.tolist() == [tick_fault(t) is None for t in ticks]
    assert 0 < ok.sum() < len(ticks)
