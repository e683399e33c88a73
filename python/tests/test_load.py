"""`bqx load`: every load rule, replacement and history, formats, partitions, atomicity.

Each rule test feeds a file with one bad row among good rows and finds the bad row in
raw.m1_rejects (reason, file, line), while every good row is loaded. The session TimeZone of
every connection is Asia/Kolkata (conftest sets PGTZ), so partition bounds are checked under a
non-UTC session."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import threading
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest

from bqx import load as loader
from bqx.load import LoadError, LoadSummary, format_summary, load_frame, load_paths
from bqx.pairs import PAIRS
from bqx.raw_schema import ensure_month_partitions, ensure_raw_schema

HEADER = "pair,ts_utc,open,high,low,close,volume,spread"
UTC = dt.timezone.utc


def good_lines(n: int, pair: str = "EURUSD", start: str = "2024-07-01T00:00:00Z", price: float = 1.1) -> list[str]:
    t0 = pd.Timestamp(start)
    lines = []
    for i in range(n):
        ts = (t0 + pd.Timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
        o = round(price + i * 1e-4, 5)
        c = round(o + 5e-5, 5)
        lines.append(f"{pair},{ts},{o},{round(c + 1e-4, 5)},{round(o - 1e-4, 5)},{c},{10 + i},0.00012")
    return lines


def write_csv(path: Path, lines: list[str], header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


def fetch(dsn: str, sql: str, params: tuple | None = None) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


def bar_count(dsn: str) -> int:
    return fetch(dsn, "select count(*) from raw.m1_bars")[0][0]


def rejects(dsn: str) -> list[tuple]:
    return fetch(
        dsn,
        "select source_file, line_number, raw_text, reason, detail, pair, ts_utc from raw.m1_rejects "
        "order by line_number",
    )


# ------------------------------------------------------------------------------------- rules

BAD_ROWS = {
    "unknown_pair": "XAUUSD,2024-07-01T01:00:00Z,1.1,1.2,1.0,1.1,5,0.0001",
    "unknown_pair_inverted": "USDEUR,2024-07-01T01:00:00Z,1.1,1.2,1.0,1.1,5,0.0001",
    "bad_timestamp": "EURUSD,2024-13-01T01:00:00Z,1.1,1.2,1.0,1.1,5,0.0001",
    "bad_timestamp_text": "EURUSD,yesterday,1.1,1.2,1.0,1.1,5,0.0001",
    "not_whole_minute": "EURUSD,2024-07-01T01:00:30Z,1.1,1.2,1.0,1.1,5,0.0001",
    "non_positive_price": "EURUSD,2024-07-01T01:00:00Z,1.1,1.2,-1.0,1.1,5,0.0001",
    "non_positive_price_zero": "EURUSD,2024-07-01T01:00:00Z,0,0,0,0,5,0.0001",
    "non_finite_price": "EURUSD,2024-07-01T01:00:00Z,1.1,inf,1.0,1.1,5,0.0001",
    "non_finite_price_nan": "EURUSD,2024-07-01T01:00:00Z,1.1,1.2,1.0,nan,5,0.0001",
    "high_low_inconsistent": "EURUSD,2024-07-01T01:00:00Z,1.1,1.05,1.0,1.1,5,0.0001",
    "high_low_inconsistent_low": "EURUSD,2024-07-01T01:00:00Z,1.1,1.2,1.15,1.18,5,0.0001",
    "negative_volume": "EURUSD,2024-07-01T01:00:00Z,1.1,1.2,1.0,1.1,-5,0.0001",
    "negative_spread": "EURUSD,2024-07-01T01:00:00Z,1.1,1.2,1.0,1.1,5,-0.0001",
    "non_finite_spread": "EURUSD,2024-07-01T01:00:00Z,1.1,1.2,1.0,1.1,5,inf",
    "unparseable_row": "EURUSD,2024-07-01T01:00:00Z,1.1,1.2",
    "unparseable_row_too_many": "EURUSD,2024-07-01T01:00:00Z,1.1,1.2,1.0,1.1,5,0.0001,7",
    "unparseable_row_text": "EURUSD,2024-07-01T01:00:00Z,abc,1.2,1.0,1.1,5,0.0001",
    "unparseable_row_volume": "EURUSD,2024-07-01T01:00:00Z,1.1,1.2,1.0,1.1,12.5,0.0001",
    "unparseable_row_empty": "EURUSD,2024-07-01T01:00:00Z,1.1,,1.0,1.1,5,0.0001",
    # issue 9: values that used to pass and break the build, or abort the load
    "bad_timestamp_year_10000": "EURUSD,10000-01-01T00:00:00Z,1.1,1.2,1.0,1.1,5,0.0001",
    "timestamp_too_early": "EURUSD,0001-01-01T00:00:00Z,1.1,1.2,1.0,1.1,5,0.0001",
    "timestamp_too_early_1900": "EURUSD,1900-01-01T00:00:00Z,1.1,1.2,1.0,1.1,5,0.0001",
    "timestamp_in_future": "EURUSD,2100-01-01T00:00:00Z,1.1,1.2,1.0,1.1,5,0.0001",
    "timestamp_in_future_9999": "EURUSD,9999-12-31T23:59:00Z,1.1,1.2,1.0,1.1,5,0.0001",
    "price_out_of_range": "EURUSD,2024-07-01T01:00:00Z,1e308,1e308,1.0,1.1,5,0.0001",
    "price_out_of_range_tiny": "EURUSD,2024-07-01T01:00:00Z,1e-320,1e-320,1e-320,1e-320,5,",
    "volume_out_of_range": "EURUSD,2024-07-01T01:00:00Z,1.1,1.2,1.0,1.1,5000000000,0.0001",
    "spread_out_of_range": "EURUSD,2024-07-01T01:00:00Z,1.1,1.2,1.0,1.1,5,1e308",
    "spread_out_of_range_wider_than_price": "EURUSD,2024-07-01T01:00:00Z,1.1,1.2,1.0,1.1,5,2.5",
}


def reason_of(case: str) -> str:
    """The rule a BAD_ROWS case breaks: its name without the variant suffix."""
    return max((r for r in loader.REASONS if case == r or case.startswith(r + "_")), key=len)


def test_every_rule_has_a_case() -> None:
    assert {reason_of(case) for case in BAD_ROWS} | {"duplicate_in_file"} == set(loader.REASONS)


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_rule_rejects_the_bad_row_and_loads_the_good_ones(case: str, shared_dsn: str, tmp_path: Path) -> None:
    # no reset between the cases: each loads its own file on its own day and looks only at it
    reason = reason_of(case)
    day = pd.Timestamp("2024-07-01", tz="UTC") + pd.Timedelta(days=sorted(BAD_ROWS).index(case))
    lines = good_lines(10, start=day.isoformat())
    lines.insert(5, BAD_ROWS[case])  # physical line 7 (the header is line 1)
    path = write_csv(tmp_path / f"{case}.csv", lines)

    summary = load_paths(shared_dsn, [path])

    assert summary.rows_read == 11
    assert summary.rows_loaded == 10 and summary.rows_rejected == 1
    assert summary.rejected_by_reason == {reason: 1}
    assert fetch(shared_dsn, "select count(*) from raw.m1_bars where source_file = %s", (str(path),)) == [(10,)]
    [(line, raw, got_reason, detail)] = fetch(
        shared_dsn,
        "select line_number, raw_text, reason, detail from raw.m1_rejects where source_file = %s",
        (str(path),),
    )
    assert (line, raw, got_reason) == (7, BAD_ROWS[case], reason)
    assert str(path) in detail and "line 7" in detail and reason in detail
    if case == "unknown_pair_inverted":
        assert "EURUSD" in detail


def test_duplicate_in_file_keeps_the_first_occurrence(dsn: str, tmp_path: Path) -> None:
    lines = good_lines(10)
    key = lines[2].split(",")[:2]
    duplicate = ",".join([*key, "1.2", "1.3", "1.1", "1.2", "7", ""])
    lines.insert(8, duplicate)  # physical line 10; the first occurrence is on line 4
    path = write_csv(tmp_path / "dups.csv", lines)

    summary = load_paths(dsn, [path])

    assert summary.rows_loaded == 10 and summary.rejected_by_reason == {"duplicate_in_file": 1}
    [(_, line, raw, reason, detail, *_)] = rejects(dsn)
    assert (line, raw, reason) == (10, duplicate, "duplicate_in_file")
    assert "line 4" in detail and "line 10" in detail
    kept = fetch(dsn, "select open, volume from raw.m1_bars where ts_utc = %s", (pd.Timestamp(key[1]).to_pydatetime(),))
    assert kept == [(float(lines[2].split(",")[2]), 12)]


def test_a_bad_duplicate_does_not_hide_a_good_row(dsn: str, tmp_path: Path) -> None:
    """An invalid row and a valid row with the same key: the valid one loads."""
    lines = good_lines(3)
    bad = lines[1].replace(",0.00012", ",-1")
    path = write_csv(tmp_path / "b.csv", [lines[0], bad, lines[1], lines[2]])
    summary = load_paths(dsn, [path])
    assert summary.rows_loaded == 3 and summary.rejected_by_reason == {"negative_spread": 1}


def test_blank_lines_crlf_and_case_are_tolerated(dsn: str, tmp_path: Path) -> None:
    lines = good_lines(4)
    lines[1] = " eurusd ," + lines[1].split(",", 1)[1]
    path = tmp_path / "crlf.csv"
    path.write_bytes(("\r\n".join([HEADER, lines[0], "", lines[1], "   ", lines[2], lines[3]]) + "\r\n").encode())
    summary = load_paths(dsn, [path])
    assert summary.rows_loaded == 4 and summary.rows_rejected == 0 and summary.rows_read == 4


def test_mixed_file_with_bad_rows_spread_out(dsn: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    good: list[str] = []
    for k, pair in enumerate(["EURUSD", "USDJPY", "GBPUSD"]):
        good += good_lines(700, pair=pair, price=1.1 + 100 * (pair == "USDJPY") + 0.2 * k)
    cases = sorted(BAD_ROWS)
    positions = sorted(rng.choice(len(good), size=len(cases), replace=False), reverse=True)
    lines: list[object] = list(good)
    for offset, (pos, case) in enumerate(zip(positions, cases)):
        # other minutes than the good rows', so that no bad row is a duplicate of a good one
        minute = f"2024-07-02T{offset // 60:02d}:{offset % 60:02d}"
        lines.insert(pos, (case, BAD_ROWS[case].replace("2024-07-01T01:00", minute)))
    lines.insert(1000, "")  # a blank line shifts the physical line numbers below it
    expected = {i + 2: (row[1], reason_of(row[0])) for i, row in enumerate(lines) if isinstance(row, tuple)}
    path = write_csv(tmp_path / "mixed.csv", [row[1] if isinstance(row, tuple) else row for row in lines])

    summary = load_paths(dsn, [path])

    assert summary.rows_read == len(good) + len(cases)
    assert summary.rows_loaded == len(good) and bar_count(dsn) == len(good)
    assert {line: (raw, reason) for _, line, raw, reason, *_ in rejects(dsn)} == expected
    # every good row is there with its values
    stored = fetch(dsn, "select count(*) from raw.m1_bars where pair in ('EURUSD', 'USDJPY', 'GBPUSD')")[0][0]
    assert stored == len(good)


def test_every_row_bad(dsn: str, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "junk.csv", ["a,b", "EURUSD,x,1,1,1,1,1,1", "1,2,3,4,5,6,7,8"])
    summary = load_paths(dsn, [path])
    assert summary.rows_rejected == 3 and summary.rows_loaded == 0
    assert fetch(dsn, "select rows_read, rows_rejected from raw.load_log") == [(3, 3)]


# ------------------------------------------------------------------ reloads and corrections


def test_same_file_twice_changes_nothing(dsn: str, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "bars.csv", good_lines(50) + ["EURUSD,2024-07-01T09:00:00Z,1,1,1,1,-1,"])
    first = load_paths(dsn, [path])
    stamps = fetch(dsn, "select pair, ts_utc, loaded_at from raw.m1_bars order by 1, 2")

    second = load_paths(dsn, [path])

    assert (first.rows_loaded, first.rows_unchanged) == (50, 0)
    assert (second.rows_loaded, second.rows_replaced, second.rows_unchanged) == (0, 0, 50)
    assert fetch(dsn, "select pair, ts_utc, loaded_at from raw.m1_bars order by 1, 2") == stamps
    assert fetch(dsn, "select count(*) from raw.m1_bars_history") == [(0,)]
    assert fetch(dsn, "select rows_loaded, rows_unchanged, rows_replaced from raw.load_log order by load_id") == [
        (50, 0, 0),
        (0, 50, 0),
    ]


def test_corrected_file_replaces_and_keeps_history(dsn: str, tmp_path: Path) -> None:
    original = good_lines(20)
    first_path = write_csv(tmp_path / "v1.csv", original)
    load_paths(dsn, [first_path])
    before = dict(
        (ts, (o, h, lo, c, v, s, la))
        for ts, o, h, lo, c, v, s, la in fetch(
            dsn, "select ts_utc, open, high, low, close, volume, spread, loaded_at from raw.m1_bars"
        )
    )

    corrected = list(original)
    for i in (3, 11):
        f = corrected[i].split(",")
        f[5] = str(round(float(f[5]) + 5e-5, 5))  # a new close, still inside [low, high]
        f[7] = ""  # and the spread becomes null
        corrected[i] = ",".join(f)
    corrected += good_lines(2, start="2024-07-01T00:20:00Z")  # two new bars
    second_path = write_csv(tmp_path / "v2.csv", corrected)

    summary = load_paths(dsn, [second_path])

    assert (summary.rows_loaded, summary.rows_replaced, summary.rows_unchanged) == (2, 2, 18)
    assert "2 bars replaced with corrected values; old values kept in raw.m1_bars_history" in format_summary(summary)
    history = fetch(
        dsn,
        "select ts_utc, open, high, low, close, volume, spread, loaded_at, source_file, replaced_at, replaced_by_file "
        "from raw.m1_bars_history order by ts_utc",
    )
    assert len(history) == 2
    for ts, o, h, lo, c, v, s, la, src, replaced_at, by_file in history:
        assert (o, h, lo, c, v, s, la) == before[ts]
        assert src == str(first_path) and by_file == str(second_path)
        assert replaced_at is not None and replaced_at > la
    current = fetch(
        dsn, "select close, spread, source_file, loaded_at from raw.m1_bars where ts_utc = %s", (history[0][0],)
    )
    assert current[0][0] == float(corrected[3].split(",")[5]) and current[0][1] is None
    assert current[0][2] == str(second_path) and current[0][3] > history[0][7]
    # an untouched bar keeps its first load
    untouched = fetch(dsn, "select source_file from raw.m1_bars where ts_utc = '2024-07-01 00:00:00+00'")
    assert untouched == [(str(first_path),)]


def test_a_file_is_loaded_whole_or_not_at_all(dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = write_csv(tmp_path / "a_good.csv", good_lines(5))
    bad_row = "XAUUSD,2024-07-01T00:00:00Z,1,1,1,1,1,"
    broken = write_csv(tmp_path / "b_broken.csv", good_lines(5, pair="GBPUSD") + [bad_row])
    real = loader.write.write_rejects

    def failing(conn: psycopg.Connection, records: list[tuple]) -> int:
        if records:
            raise RuntimeError("simulated crash after the bars were written")
        return real(conn, records)

    monkeypatch.setattr(loader.write, "write_rejects", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        load_paths(dsn, [good, broken], progress=False)
    assert fetch(dsn, "select distinct pair from raw.m1_bars") == [("EURUSD",)]
    assert fetch(dsn, "select file from raw.load_log") == [(str(good),)]
    assert fetch(dsn, "select count(*) from raw.m1_rejects") == [(0,)]


# ------------------------------------------------------------------------------ formats


def test_histdata_is_est_and_takes_the_pair_from_the_file_name(dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "DAT_ASCII_EURUSD_M1_202407.csv"
    path.write_text(
        "20240701 000000;1.071230;1.071500;1.071000;1.071400;0\n"
        "20240701 000100;1.071400;1.071600;1.071300;1.071500;3\n"
        "20240701 000200;1.071400;1.071300;1.071300;1.071500;3\n"  # high < close
        "20240731 185900;1.081000;1.081000;1.081000;1.081000;0\n"
    )
    summary = load_paths(dsn, [path])
    assert summary.files[0].format == "histdata"
    assert (summary.rows_loaded, summary.rows_rejected) == (3, 1)
    rows = fetch(dsn, "select pair, ts_utc, open, volume, spread from raw.m1_bars order by ts_utc")
    assert rows[0] == ("EURUSD", dt.datetime(2024, 7, 1, 5, 0, tzinfo=UTC), 1.07123, 0, None)
    assert rows[-1][1] == dt.datetime(2024, 7, 31, 23, 59, tzinfo=UTC)
    [(_, line, raw, reason, _, pair, ts)] = rejects(dsn)
    assert (line, reason, pair, ts) == (3, "high_low_inconsistent", "EURUSD", "20240701 000200")


def test_histdata_pair_from_option_and_error_without_one(dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "export_202407.csv"
    path.write_text("20240701 000000;150.1;150.2;150.0;150.1;4\n")
    [skipped] = load_paths(dsn, [path]).skipped
    assert skipped.file == str(path) and "--pair" in skipped.reason
    summary = load_paths(dsn, [path], fmt="histdata", pair="usdjpy")
    assert summary.rows_loaded == 1
    assert fetch(dsn, "select pair, ts_utc from raw.m1_bars") == [("USDJPY", dt.datetime(2024, 7, 1, 5, tzinfo=UTC))]


def test_histdata_zip_download(dsn: str, tmp_path: Path) -> None:
    """A HistData download as is: a zip holding the csv and a status .txt; a member that is not
    bar data is skipped by itself."""
    archive = tmp_path / "HISTDATA_COM_ASCII_GBPUSD_M1202407.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("DAT_ASCII_GBPUSD_M1_202407.csv", "20240701 000000;1.26;1.27;1.25;1.26;0\n")
        zf.writestr("DAT_ASCII_GBPUSD_M1_202407.txt", "HistData.com status report\n")
        zf.writestr("notes.csv", "hello\n")
    summary = load_paths(dsn, [archive])
    assert summary.rows_loaded == 1
    assert [(s.file, s.reason.split(":")[0]) for s in summary.skipped] == [(f"{archive}!notes.csv", "not bar data")]
    assert fetch(dsn, "select pair from raw.m1_bars") == [("GBPUSD",)]


def test_parquet_rows_and_rejects(dsn: str, tmp_path: Path) -> None:
    ts = pd.date_range("2024-07-01", periods=6, freq="1min", tz="UTC")
    frame = pd.DataFrame(
        {
            "pair": ["EURUSD"] * 6,
            "ts_utc": ts,
            "open": [1.1] * 6,
            "high": [1.2] * 6,
            "low": [1.0] * 6,
            "close": [1.1] * 6,
            "volume": [1, 2, 3, -4, 5, 6],
            "spread": [0.0001, None, 0.0001, 0.0001, 0.0001, 0.0001],
        }
    )
    path = tmp_path / "bars.parquet"
    frame.to_parquet(path)
    summary = load_paths(dsn, [path])
    assert summary.files[0].format == "parquet"
    assert (summary.rows_loaded, summary.rows_rejected) == (5, 1)
    [(_, line, raw, reason, detail, _, _)] = rejects(dsn)
    assert (line, reason) == (4, "negative_volume")
    assert json.loads(raw)["volume"] == -4 and "row 4" in detail
    assert fetch(dsn, "select count(*) from raw.m1_bars where spread is null") == [(1,)]


def test_load_frame_and_directories(dsn: str, tmp_path: Path) -> None:
    from bqx.generate import generate_bars, write_bars

    bars = generate_bars(dt.date(2024, 7, 1), dt.date(2024, 7, 2), ["EURUSD", "USDJPY"])
    summary = load_frame(dsn, bars, "generated")
    assert summary.rows_loaded == len(bars) and summary.rows_rejected == 0
    # the same bars written as files in nested folders, with a file to ignore: all unchanged
    write_bars(bars[bars["pair"] == "EURUSD"], tmp_path / "a", "csv")
    write_bars(bars[bars["pair"] == "USDJPY"], tmp_path / "b" / "c", "parquet")
    (tmp_path / "b" / "notes.txt").write_text("not bars")
    again = load_paths(dsn, [tmp_path])
    assert len(again.files) == 2
    assert again.rows_unchanged == len(bars) and again.rows_loaded == again.rows_replaced == 0
    text = format_summary(again)
    assert "total (2 files)" in text and f"{len(bars):,}" in text


def test_load_frame_inside_a_callers_transaction(dsn: str) -> None:
    frame = pd.DataFrame(
        {
            "pair": ["EURUSD", "EURUSD"],
            "ts_utc": pd.to_datetime(["2024-07-01 00:00:00", "2024-07-01 00:00:10"]).tz_localize("UTC"),
            "open": [1.1, 1.1],
            "high": [1.2, 1.2],
            "low": [1.0, 1.0],
            "close": [1.1, 1.1],
            "volume": [1, 1],
            "spread": [None, None],
        }
    )
    with psycopg.connect(dsn) as conn:
        conn.execute("select 1")  # the caller's transaction is open: load_frame works in savepoints
        summary = load_frame(conn, frame, "in-memory")
        assert isinstance(summary, LoadSummary)
        conn.rollback()  # the caller decides: nothing stays
    assert summary.rows_loaded == 1 and summary.rejected_by_reason == {"not_whole_minute": 1}
    assert fetch(dsn, "select to_regclass('raw.m1_bars')") == [(None,)]  # even the schema rolled back


def test_gzip_and_csv_without_pair_column(dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "AUDNZD_2024_07.csv.gz"
    lines = [",".join(line.split(",")[1:]) for line in good_lines(3, pair="AUDNZD")]
    path.write_bytes(gzip.compress(("ts_utc,open,high,low,close,volume,spread\n" + "\n".join(lines)).encode()))
    summary = load_paths(dsn, [path])
    assert summary.rows_loaded == 3
    assert fetch(dsn, "select distinct pair from raw.m1_bars") == [("AUDNZD",)]


def test_pair_option_filters_a_multi_pair_file(dsn: str, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "many.csv", good_lines(3) + good_lines(4, pair="GBPUSD"))
    summary = load_paths(dsn, [path], pair="GBPUSD")
    assert (summary.rows_read, summary.rows_loaded, summary.rows_skipped) == (7, 4, 3)
    assert "skipped" in format_summary(summary)


def test_timestamp_forms_and_offsets(dsn: str, tmp_path: Path) -> None:
    rows = [
        "EURUSD,2024-07-01T00:00:00Z,1.1,1.2,1.0,1.1,1,",
        "EURUSD,2024-07-01 00:01:00+00:00,1.1,1.2,1.0,1.1,1,",
        "EURUSD,2024-07-01T05:32:00+05:30,1.1,1.2,1.0,1.1,1,",  # 00:02 UTC
        "EURUSD,2024-07-01 00:03,1.1,1.2,1.0,1.1,1,",  # naive = UTC
    ]
    path = write_csv(tmp_path / "forms.csv", rows)
    summary = load_paths(dsn, [path])
    assert summary.rows_loaded == 4
    stamps = [r[0] for r in fetch(dsn, "select ts_utc from raw.m1_bars order by 1")]
    assert stamps == [dt.datetime(2024, 7, 1, 0, m, tzinfo=UTC) for m in range(4)]


def test_format_errors_name_the_file(dsn: str, tmp_path: Path) -> None:
    """A file that is not bar data is skipped with a reason that quotes none of its content."""
    odd = tmp_path / "odd.csv"
    odd.write_text("hello world\n1 2 3\n")
    no_header = tmp_path / "noheader.csv"
    no_header.write_text("EURUSD,2024-07-01T00:00:00Z,1,1,1,1,1,\n")
    summary = load_paths(dsn, [odd, tmp_path / "missing.csv"])
    reasons = {s.file: s.reason for s in summary.skipped}
    assert set(reasons) == {str(odd), str(tmp_path / "missing.csv")}
    assert "not bar data" in reasons[str(odd)] and "hello" not in reasons[str(odd)]
    assert reasons[str(tmp_path / "missing.csv")] == "no such file or directory"
    [skipped] = load_paths(dsn, [no_header], fmt="csv").skipped
    assert "must start with the header" in skipped.reason and "EURUSD" not in skipped.reason
    # what concerns the whole load stops it
    with pytest.raises(LoadError, match="not one of the 28"):
        load_paths(dsn, [odd], pair="XAUUSD")
    with pytest.raises(LoadError, match="unknown format"):
        load_paths(dsn, [odd], fmt="xlsx")


# ---------------------------------------------------------------------------- partitions


def partition_of(dsn: str, ts: str) -> str:
    return fetch(dsn, "select tableoid::regclass::text from raw.m1_bars where ts_utc = %s::timestamptz", (ts,))[0][0]


def test_partitions_are_utc_months_under_another_session_timezone(dsn: str, tmp_path: Path) -> None:
    assert fetch(dsn, "show timezone") == [("Asia/Kolkata",)]
    rows = [
        "EURUSD,2024-07-31T23:59:00Z,1.1,1.2,1.0,1.1,1,",  # 2024-08-01 05:29 in Kolkata
        "EURUSD,2024-08-01T00:00:00Z,1.1,1.2,1.0,1.1,1,",
        "EURUSD,2024-06-30T18:30:00Z,1.1,1.2,1.0,1.1,1,",  # 2024-07-01 00:00 in Kolkata
    ]
    load_paths(dsn, [write_csv(tmp_path / "edges.csv", rows)])
    assert partition_of(dsn, "2024-07-31 23:59:00+00") == "raw.m1_bars_2024_07"
    assert partition_of(dsn, "2024-08-01 00:00:00+00") == "raw.m1_bars_2024_08"
    assert partition_of(dsn, "2024-06-30 18:30:00+00") == "raw.m1_bars_2024_06"
    with psycopg.connect(dsn) as conn:
        conn.execute("set timezone = 'UTC'")
        bounds = dict(
            conn.execute(
                "select c.relname, pg_get_expr(c.relpartbound, c.oid) from pg_inherits i "
                "join pg_class c on c.oid = i.inhrelid where i.inhparent = 'raw.m1_bars'::regclass"
            ).fetchall()
        )
    assert bounds["m1_bars_2024_07"] == "FOR VALUES FROM ('2024-07-01 00:00:00+00') TO ('2024-08-01 00:00:00+00')"
    assert set(bounds) == {"m1_bars_2024_06", "m1_bars_2024_07", "m1_bars_2024_08"}


def test_ensure_month_partitions_uses_utc_bounds(dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(dsn) as conn:
        assert conn.execute("show timezone").fetchone() == ("Asia/Kolkata",)
        ensure_raw_schema(conn)
        assert ensure_month_partitions(conn, [dt.date(2024, 9, 15), dt.date(2024, 12, 1)]) == [
            "m1_bars_2024_09",
            "m1_bars_2024_12",
        ]
        assert ensure_month_partitions(conn, [dt.date(2024, 9, 1)]) == []  # idempotent
        conn.commit()
    # the partition exists already: this load copies straight into it
    rows = ["EURUSD,2024-09-30T23:59:00Z,1.1,1.2,1.0,1.1,1,", "EURUSD,2024-12-31T23:59:00Z,1.1,1.2,1.0,1.1,1,"]
    load_paths(dsn, [write_csv(tmp_path / "sep.csv", rows)])
    assert partition_of(dsn, "2024-09-30 23:59:00+00") == "raw.m1_bars_2024_09"
    assert partition_of(dsn, "2024-12-31 23:59:00+00") == "raw.m1_bars_2024_12"


def test_constraints_guard_direct_writes(dsn: str, tmp_path: Path) -> None:
    load_paths(dsn, [write_csv(tmp_path / "one.csv", good_lines(1))])
    with psycopg.connect(dsn) as conn:
        # partitions for the implausible years, so that the constraint (not the routing) refuses
        ensure_month_partitions(conn, [dt.date(1900, 1, 1), dt.date(2100, 1, 1)])
        for values, constraint in [
            ("('EURUSD', '2024-07-01 00:05:30+00', 1.1, 1.2, 1.0, 1.1, 1, null)", "m1_bars_ts_whole_utc_minute"),
            ("('EURUSD', '2024-07-01 00:06+00', 1.1, 1.05, 1.0, 1.1, 1, null)", "m1_bars_high_ge_open_close"),
            ("('EURUSD', '2024-07-01 00:07+00', 1.1, 1.2, 1.0, 1.1, -1, null)", "m1_bars_volume_in_range"),
            ("('EURUSD', '2024-07-01 00:07+00', 1.1, 1.2, 1.0, 1.1, 5000000000, null)", "m1_bars_volume_in_range"),
            ("('EURUSD', '2024-07-01 00:08+00', 1.1, 'NaN', 1.0, 1.1, 1, null)", "m1_bars_prices_in_range"),
            ("('EURUSD', '2024-07-01 00:08+00', 1.1, 1e308, 1.0, 1.1, 1, null)", "m1_bars_prices_in_range"),
            ("('EURUSD', '2024-07-01 00:08+00', 1e-320, 1e-320, 1e-320, 1e-320, 1, null)", "m1_bars_prices_in_range"),
            ("('EURUSD', '2024-07-01 00:09+00', 1.1, 1.2, 1.0, 1.1, 1, 2.5)", "m1_bars_spread_in_range"),
            ("('EURUSD', '2024-07-01 00:09+00', 1.1, 1.2, 1.0, 1.1, 1, 'Infinity')", "m1_bars_spread_in_range"),
            ("('EURUSD', '1900-01-01 00:00+00', 1.1, 1.2, 1.0, 1.1, 1, null)", "m1_bars_ts_in_range"),
            ("('EURUSD', '2100-01-01 00:00+00', 1.1, 1.2, 1.0, 1.1, 1, null)", "m1_bars_ts_in_range"),
        ]:
            with pytest.raises(psycopg.errors.CheckViolation, match=constraint), conn.transaction():
                conn.execute(
                    f"insert into raw.m1_bars (pair, ts_utc, open, high, low, close, volume, spread) values {values}"
                )


def test_the_rules_and_the_constraints_agree_at_the_limits(dsn: str, tmp_path: Path) -> None:
    """The loader accepts the database's limits themselves, and the database accepts them too."""
    rows = [
        "EURUSD,1971-01-01T00:00:00Z,1.1,1.2,1.0,1.1,1,",
        "EURUSD,2024-07-01T00:00:00Z,0.0001,0.0001,0.0001,0.0001,1000000000,0.0001",
        "USDJPY,2024-07-01T00:00:00Z,100000,100000,100000,100000,0,",
    ]
    summary = load_paths(dsn, [write_csv(tmp_path / "limits.csv", rows)])
    assert (summary.rows_loaded, summary.rows_rejected, summary.skipped) == (3, 0, [])


def test_plausible_ranges_are_configurable_within_the_databases_limits(dsn: str, tmp_path: Path) -> None:
    now = dt.datetime.now(UTC).replace(second=0, microsecond=0)
    soon = (now + dt.timedelta(minutes=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    later = (now + dt.timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    rows = [
        f"EURUSD,{soon},1.1,1.2,1.0,1.1,1,",  # 3 minutes ahead: a clock a little ahead is tolerated
        f"EURUSD,{later},1.1,1.2,1.0,1.1,1,",  # 10 minutes ahead: a bar from the future
        "EURUSD,2024-07-01T00:00:00Z,0.9,1.2,0.9,1.1,1,",
    ]
    path = write_csv(tmp_path / "future.csv", rows)
    summary = load_paths(dsn, [path])
    assert (summary.rows_loaded, summary.rejected_by_reason) == (2, {"timestamp_in_future": 1})
    [(line, detail)] = fetch(dsn, "select line_number, detail from raw.m1_rejects")
    assert line == 3 and "a bar cannot come from the future" in detail
    # narrower: no minute ahead, prices from 1.0
    strict = loader.PlausibleRanges(min_price=1.0, future_minutes=0)
    again = load_paths(dsn, [write_csv(tmp_path / "strict.csv", rows)], ranges=strict)
    assert again.rejected_by_reason == {"timestamp_in_future": 2, "price_out_of_range": 1}
    # wider than the database accepts, or nonsense: the whole load stops before anything
    for bad in ({"max_price": 1e6}, {"min_price": 1e-6}, {"min_price": 2.0, "max_price": 1.0}, {"future_minutes": -1}):
        with pytest.raises(LoadError):
            loader.PlausibleRanges(**bad)


def test_histdata_year_10000_is_a_row_reject_not_an_abort(dsn: str, tmp_path: Path) -> None:
    """9999-12-31 23:59 EST is 10000-01-01 04:59 UTC: beyond Python's datetime, rejected by row."""
    path = tmp_path / "DAT_ASCII_EURUSD_M1_202407.csv"
    path.write_text(
        "20240701 000000;1.071230;1.071500;1.071000;1.071400;0\n"
        "99991231 235900;1.071400;1.071600;1.071300;1.071500;3\n"
        "20240701 000200;1.071400;1.071600;1.071300;1.071500;3\n"
    )
    summary = load_paths(dsn, [path])
    assert (summary.rows_loaded, summary.rejected_by_reason) == (2, {"timestamp_in_future": 1})
    [(line, detail)] = fetch(dsn, "select line_number, detail from raw.m1_rejects")
    assert line == 2 and "10000-01-01 04:59:00 UTC" in detail


def test_implausible_years_create_no_partition(dsn: str, tmp_path: Path) -> None:
    rows = [
        "EURUSD,0001-01-01T00:00:00Z,1.1,1.2,1.0,1.1,1,",
        "EURUSD,1900-01-01T00:00:00Z,1.1,1.2,1.0,1.1,1,",
        "EURUSD,2100-01-01T00:00:00Z,1.1,1.2,1.0,1.1,1,",
        "EURUSD,2024-07-01T00:00:00Z,1.1,1.2,1.0,1.1,1,",
    ]
    summary = load_paths(dsn, [write_csv(tmp_path / "years.csv", rows)])
    assert summary.rejected_by_reason == {"timestamp_too_early": 2, "timestamp_in_future": 1}
    partitions = fetch(dsn, "select relname from pg_class where relname like 'm1\\_bars\\_____\\___' order by 1")
    assert partitions == [("m1_bars_2024_07",)]


def test_reloading_a_file_records_each_reject_once(dsn: str, tmp_path: Path) -> None:
    lines = good_lines(10)
    lines[3] = "EURUSD,2024-07-01T00:03:00Z,1.1,1.2,1.0,1.1,-5,"  # negative volume
    lines[6] = "EURUSD,2024-07-01T00:06:00Z,1e308,1e308,1.0,1.1,5,"  # price out of range
    path = write_csv(tmp_path / "bars.csv", lines)
    first = load_paths(dsn, [path])
    stored = fetch(dsn, "select reject_id, line_number, reason from raw.m1_rejects order by reject_id")
    second = load_paths(dsn, [path])
    assert (first.rows_rejected, first.rejects_recorded) == (2, 2)
    assert (second.rows_rejected, second.rejects_recorded) == (2, 0)
    assert "2 of them recorded there by an earlier load" in format_summary(second)
    assert fetch(dsn, "select reject_id, line_number, reason from raw.m1_rejects order by reject_id") == stored
    # the file changed: the line that changed is a new reject, the unchanged one is not
    lines[3] = "EURUSD,2024-07-01T00:03:00Z,1.1,1.2,1.0,1.1,-6,"
    third = load_paths(dsn, [write_csv(path, lines)])
    assert third.rejects_recorded == 1
    assert fetch(dsn, "select line_number, count(*) from raw.m1_rejects group by 1 order by 1") == [(5, 2), (8, 1)]


def bar_constraints(dsn: str) -> set[str]:
    sql = "select conname from pg_constraint where conrelid = 'raw.m1_bars'::regclass and contype = 'c'"
    return {name for (name,) in fetch(dsn, sql)}


def test_an_earlier_raw_schema_is_upgraded(dsn: str, tmp_path: Path) -> None:
    """A raw schema of the previous version (weaker constraints, rejects recorded twice) gets the
    new constraints and loses its duplicate rejects on the next load; while a stored bar breaks a
    new constraint, it keeps the old ones and the summary says which bars to look at."""
    from bqx import raw_schema

    path = write_csv(tmp_path / "bars.csv", good_lines(3) + ["EURUSD,2024-07-01T09:00:00Z,1,1,1,1,-1,"])
    load_paths(dsn, [path])
    with psycopg.connect(dsn) as conn:  # back to the previous version's schema, with its duplicates
        for name in set(raw_schema.BAR_CONSTRAINTS) - {"m1_bars_low_le_open_close", "m1_bars_high_ge_open_close"}:
            conn.execute(f"alter table raw.m1_bars drop constraint {name}")
        conn.execute("alter table raw.m1_bars add constraint m1_bars_prices_positive check (open > 0)")
        conn.execute("drop index raw.m1_rejects_once")
        conn.execute(
            "insert into raw.m1_rejects (source_file, line_number, raw_text, reason, detail) "
            "select source_file, line_number, raw_text, reason, detail from raw.m1_rejects"
        )
        ensure_month_partitions(conn, [dt.date(2100, 1, 1)])
        conn.execute(
            "insert into raw.m1_bars (pair, ts_utc, open, high, low, close, volume) "
            "values ('EURUSD', '2100-01-01 00:00+00', 1.1, 1.2, 1.0, 1.1, 1)"
        )

    held_back = load_paths(dsn, [path])

    removed, kept = held_back.notes
    assert removed == "removed 1 rejects that an earlier version had recorded more than once"
    assert "1 stored bars break m1_bars_ts_in_range" in kept and "note: raw.m1_bars keeps" in format_summary(held_back)
    assert "m1_bars_prices_positive" in bar_constraints(dsn) and "m1_bars_ts_in_range" not in bar_constraints(dsn)
    assert fetch(dsn, "select count(*) from raw.m1_rejects") == [(1,)]
    assert held_back.rows_unchanged == 3  # the loader's own rules applied all along
    with psycopg.connect(dsn) as conn:
        conn.execute("delete from raw.m1_bars where ts_utc >= '2100-01-01'")

    upgraded = load_paths(dsn, [path])

    assert upgraded.notes == []
    assert bar_constraints(dsn) == set(raw_schema.BAR_CONSTRAINTS)
    assert fetch(dsn, "select count(*) from raw.m1_rejects") == [(1,)]


def test_concurrent_loads_of_the_same_new_month(dsn: str, tmp_path: Path) -> None:
    """Two sessions loading files of a month that has no partition yet both succeed."""
    paths = [write_csv(tmp_path / f"{p}.csv", good_lines(300, pair=p)) for p in ("EURUSD", "GBPUSD")]
    paths.append(write_csv(tmp_path / "overlap.csv", good_lines(300, pair="EURUSD")))
    results: list[LoadSummary] = []
    errors_seen: list[BaseException] = []

    def run(path: Path) -> None:
        try:
            results.append(load_paths(dsn, [path]))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors_seen.append(err)

    threads = [threading.Thread(target=run, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors_seen
    assert bar_count(dsn) == 600
    assert sum(r.rows_loaded for r in results) == 600 and sum(r.rows_unchanged for r in results) == 300


def test_pairs_constant() -> None:
    assert len(PAIRS) == 28 and PAIRS[0] == "EURGBP" and PAIRS[-1] == "CHFJPY"
