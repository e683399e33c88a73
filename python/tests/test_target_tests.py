"""The targets' `null_on_last_bars` test (macros/tests/generic_tests.sql: every target column in
one scan). On an incremental `dbt build` after a correction in the middle of the data, the build
rewrites a range that ends before the pair's end and tests only that range, so "the last bars"
must be counted to the pair's end (in m1_index), not to the end of the range tested; on the whole
table, NULLs far from the end, values near it and orphan rows are each named."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import psycopg

from bqx.load import load_frame
from conftest import built_pairs_database

PAIRS = ["EURUSD", "USDJPY"]
CORRECTED = pd.Timestamp("2024-07-03 12:00", tz="UTC")


def test_targets_tested_on_a_corrected_range_count_bars_to_the_pairs_end(
    database_factory: Callable[[str], str], fixture_bars: pd.DataFrame, dbt_runner: Callable[..., Path]
) -> None:
    dsn, bars = built_pairs_database(database_factory, dbt_runner, fixture_bars, "target_tests", PAIRS, "+targets")

    corrected = bars[(bars["pair"] == "EURUSD") & (bars["ts_utc"] == CORRECTED)].copy()
    assert len(corrected) == 1
    for column in ("open", "high", "low", "close"):
        corrected[column] = corrected[column] * 1.0005
    load_frame(dsn, corrected, "a corrected bar")
    # the written range ends ~60 bars after the correction, days before the pair's end: the
    # test must pass (it failed here when it counted the bars to the end of that range)
    target = dbt_runner(dsn, "build", "--select", "m1_index", "targets")
    with psycopg.connect(dsn) as conn:
        last_bar = conn.execute("select max(ts_utc) from staging.m1_index where pair = 'EURUSD'").fetchone()[0]
        increments = conn.execute(
            "select rewrote_from_ts, rewrote_to_ts from build_state.model_pairs where model = 'targets' "
            "and pair = 'EURUSD' and rewrote_from_ts <= %s and rewrote_to_ts < %s",
            (CORRECTED, last_bar),
        ).fetchall()
    assert len(increments) == 1 and increments[0][1] >= CORRECTED, increments

    # the compiled test of the rows that build wrote still catches a wrong NULL inside them
    (path,) = sorted((target / "compiled").rglob("null_on_last_bars_targets_*.sql"))
    test_sql = path.read_text()
    assert "build_state.model_pairs" in test_sql
    with psycopg.connect(dsn) as conn:
        assert conn.execute(f"select count(*) from ({test_sql}) as failures").fetchone()[0] == 0
        conn.execute(
            "update marts.targets set target_bqx_h15 = null, target_bqx_h60 = null where pair = 'EURUSD' and ts_utc = %s",
            (CORRECTED,),
        )
        failures = conn.execute(f"select pair, ts_utc, failure from ({test_sql}) as failures").fetchall()
    assert [(pair, pd.Timestamp(ts), failure) for pair, ts, failure in failures] == [
        (
            "EURUSD",
            CORRECTED,
            "target_bqx_h15: NULL with 15 bars or more after it; target_bqx_h60: NULL with 60 bars or more after it",
        )
    ]


def test_targets_test_on_the_whole_table_judges_every_target_in_one_scan(
    database_factory: Callable[[str], str], fixture_bars: pd.DataFrame, dbt_runner: Callable[..., Path]
) -> None:
    dsn, _ = built_pairs_database(database_factory, dbt_runner, fixture_bars, "target_tests_full", PAIRS, "+targets")
    target = dbt_runner(dsn, "compile", "--select", "targets")
    (path,) = sorted((target / "compiled").rglob("null_on_last_bars_targets_*.sql"))
    test_sql = path.read_text()
    assert "build_state.model_pairs" not in test_sql and test_sql.count("from marts.targets") + test_sql.count('"marts"."targets"') == 1
    with psycopg.connect(dsn) as conn:
        assert conn.execute(f"select count(*) from ({test_sql}) as failures").fetchone()[0] == 0
        last_bar = conn.execute("select max(ts_utc) from marts.targets where pair = 'USDJPY'").fetchone()[0]
        # a NULL far from the end (judged without looking at m1_index), a value where fewer than
        # 60 bars follow, a NULL 40 bars before the end (30 bars follow), and a row after the
        # pair's last bar of m1_index
        conn.execute(
            "update marts.targets set target_bqx_h45 = null where pair = 'USDJPY' and ts_utc = "
            "(select ts_utc from staging.m1_index where pair = 'USDJPY' order by ts_utc offset 1000 limit 1)"
        )
        conn.execute("update marts.targets set target_bqx_h60 = 0.5 where pair = 'USDJPY' and ts_utc = %s", (last_bar,))
        conn.execute(
            "update marts.targets set target_bqx_h30 = null where pair = 'USDJPY' and ts_utc = "
            "(select ts_utc from staging.m1_index where pair = 'USDJPY' order by ts_utc desc offset 40 limit 1)"
        )
        conn.execute(
            "insert into marts.targets (pair, ts_utc) select pair, max(ts_utc) + interval '1 minute' "
            "from marts.targets where pair = 'EURUSD' group by pair"
        )
        failures = conn.execute(f"select pair, ts_utc, failure from ({test_sql}) as failures order by pair, ts_utc").fetchall()
    assert [(pair, failure) for pair, _, failure in failures if pair == "USDJPY"] == [
        ("USDJPY", "target_bqx_h45: NULL with 45 bars or more after it"),
        ("USDJPY", "target_bqx_h30: NULL with 30 bars or more after it"),
        ("USDJPY", "target_bqx_h60: a value with fewer than 60 bars after it"),
    ]
    # the orphan row is named (the rows before it then count one row too many after them: they
    # fail too, as they did with a test per column)
    assert [failure for pair, _, failure in failures if pair == "EURUSD"][-1] == "no bar of m1_index at this minute"
