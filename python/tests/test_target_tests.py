"""The targets' `null_on_last_bars` test (macros/tests/generic_tests.sql) on an incremental
`dbt build` after a correction in the middle of the data: the build rewrites a range that ends
before the pair's end and tests only that range, so "the last bars" must be counted to the
pair's end (in m1_index), not to the end of the range tested."""

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
    (path,) = sorted((target / "compiled").rglob("null_on_last_bars_targets_15__target_bqx_h15.sql"))
    test_sql = path.read_text()
    assert "build_state.model_pairs" in test_sql
    with psycopg.connect(dsn) as conn:
        assert conn.execute(f"select count(*) from ({test_sql}) as failures").fetchone()[0] == 0
        conn.execute(
            "update marts.targets set target_bqx_h15 = null where pair = 'EURUSD' and ts_utc = %s", (CORRECTED,)
        )
        failures = conn.execute(f"select pair, ts_utc, failure from ({test_sql}) as failures").fetchall()
    assert [(pair, pd.Timestamp(ts), failure) for pair, ts, failure in failures] == [
        ("EURUSD", CORRECTED, "NULL with 15 bars or more after it")
    ]
