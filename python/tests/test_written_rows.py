"""On an incremental `dbt build` the data tests read the rows the build wrote
(macros/tests/written_rows.sql); the one warm-up test per model then checks each written row
against its absolute position (m1_index.bar_number) and the written ranges for skipped bars
(macros/tests/warmup_nulls.sql). Here its compiled SQL is run against rows broken by hand."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import psycopg

from bqx.dbt import run_dbt
from bqx.load import load_frame

PAIRS = ["EURUSD", "USDJPY"]
LAST_DAY = pd.Timestamp("2024-07-08", tz="UTC")


def _dbt(dsn: str, target: Path, parse_cache: Path, *args: str) -> None:
    target.mkdir(parents=True)
    cache = parse_cache / "partial_parse.msgpack"
    if cache.exists():
        shutil.copyfile(cache, target / cache.name)
    done = run_dbt(list(args), dsn, target_path=target, capture=True)
    assert done.returncode == 0, done.stdout[-6000:]


def _compiled_test(target: Path, name: str) -> str:
    (path,) = sorted((target / "compiled").rglob(f"{name}.sql"))
    return path.read_text()


def _failures(dsn: str, test_sql: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"select pair, ts_utc, failures from ({test_sql}) as test_rows order by 1, 2").fetchall()


def test_the_warmup_test_of_an_incremental_build_checks_the_rows_it_wrote(
    database_factory: Callable[[str], str], fixture_bars: pd.DataFrame, dbt_parse_cache: Path, tmp_path: Path
) -> None:
    dsn = database_factory("written_rows")
    bars = fixture_bars[fixture_bars["pair"].isin(PAIRS)]
    load_frame(dsn, bars[bars["ts_utc"] < LAST_DAY], "all but the last day")
    _dbt(dsn, tmp_path / "full", dbt_parse_cache, "run", "--select", "tag:wave1")
    load_frame(dsn, bars[bars["ts_utc"] >= LAST_DAY], "the last day")
    target = tmp_path / "increment"
    _dbt(dsn, target, dbt_parse_cache, "build", "--select", "m1_index", "bqx", "statistics_bqx")

    for model in ("bqx", "statistics_bqx"):
        sql = _compiled_test(target, f"warmup_nulls_{model}_")
        # the restricted form: positions from m1_index, the written ranges; no window over the table
        assert "row_number()" not in sql and "build_state.model_pairs" in sql, sql[:2000]
        assert _failures(dsn, sql) == [], model

    sql = _compiled_test(target, "warmup_nulls_statistics_bqx_")
    column = "std_w15"
    written = pd.Timestamp("2024-07-08 12:00", tz="UTC")  # inside the written range (the last day)
    kept = pd.Timestamp("2024-07-05 12:00", tz="UTC")  # before it: checked by the build that wrote it
    with psycopg.connect(dsn) as conn:
        for at in (written, kept):
            assert conn.execute(
                f"update features.statistics_bqx set {column} = null where pair = 'EURUSD' and ts_utc = %s", (at,)
            ).rowcount == 1
        deleted = conn.execute(
            "delete from features.statistics_bqx where pair = 'USDJPY' and ts_utc = "
            "(select min(ts_utc) from features.statistics_bqx where pair = 'USDJPY' and ts_utc >= %s)",
            (LAST_DAY + pd.Timedelta(hours=3),),
        ).rowcount
        assert deleted == 1
    failures = _failures(dsn, sql)
    assert [(pair, failure.split(":")[0]) for pair, _, failure in failures] == [
        ("EURUSD", column),
        ("USDJPY", "no row of statistics_bqx for this bar of m1_index"),
    ], failures
    assert pd.Timestamp(failures[0][1]) == written
    assert "NULL after its warm-up" in failures[0][2]


def test_the_warmup_test_of_a_whole_table_judges_only_rows_that_can_fail_and_misses_none(
    database_factory: Callable[[str], str], fixture_bars: pd.DataFrame, dbt_parse_cache: Path, tmp_path: Path
) -> None:
    """The whole-table form skips rows past every warm-up without a NULL (most rows) before its
    per-column verdicts: a value inside a warm-up, a NULL after it and a NULL its rule allows are
    still judged as before."""
    dsn = database_factory("warmup_whole_table")
    load_frame(dsn, fixture_bars[fixture_bars["pair"].isin(PAIRS)], "bars")
    target = tmp_path / "full"
    _dbt(dsn, target, dbt_parse_cache, "build", "--select", "+statistics_bqx")
    sql = _compiled_test(target, "warmup_nulls_statistics_bqx_")
    assert "row_number()" in sql and "num_nulls(" in sql
    assert _failures(dsn, sql) == []
    with psycopg.connect(dsn) as conn:
        positions = conn.execute(
            "select ts_utc from features.statistics_bqx where pair = 'USDJPY' order by ts_utc"
        ).fetchall()
        early, late, flat = positions[2][0], positions[5000][0], positions[6000][0]
        # bar 3 is inside mean_w15's warm-up (the bqx series' warm-up plus 14 bars)
        conn.execute("update features.statistics_bqx set mean_w15 = 1 where pair = 'USDJPY' and ts_utc = %s", (early,))
        conn.execute("update features.statistics_bqx set max_w75 = null where pair = 'USDJPY' and ts_utc = %s", (late,))
        # skew is allowed to be NULL where std is 0 (a flat window), and only there
        conn.execute(
            "update features.statistics_bqx set skew_w30 = null, std_w30 = 0 where pair = 'USDJPY' and ts_utc = %s", (flat,)
        )
        conn.execute("update features.statistics_bqx set skew_w45 = null where pair = 'USDJPY' and ts_utc = %s", (flat,))
        # the last bar of the longest warm-up with every NULL there filled in: a row without a NULL
        # that only its position lets through to the verdicts
        columns = [
            name
            for (name,) in conn.execute(
                "select column_name from information_schema.columns where table_schema = 'features' "
                "and table_name = 'statistics_bqx' and column_name not in ('pair', 'ts_utc') order by ordinal_position"
            ).fetchall()
        ]
        rows = conn.execute(
            f"select ts_utc, num_nulls({', '.join(columns)}) from features.statistics_bqx "
            "where pair = 'USDJPY' order by ts_utc limit 1000"
        ).fetchall()
        last_warmup = max(index for index, (_, nulls) in enumerate(rows) if nulls > 0)
        filled = [
            name
            for name in columns
            if conn.execute(
                f"select {name} is null from features.statistics_bqx where pair = 'USDJPY' and ts_utc = %s",
                (rows[last_warmup][0],),
            ).fetchone()[0]
        ]
        conn.execute(
            f"update features.statistics_bqx set {', '.join(f'{name} = 1' for name in filled)} "
            "where pair = 'USDJPY' and ts_utc = %s",
            (rows[last_warmup][0],),
        )
    failures = _failures(dsn, sql)
    # the warm-ups' lengths come from the registry: the messages are compared up to them
    assert [(pd.Timestamp(ts), re.sub(r" of \d+ bars", "", failure)) for _, ts, failure in failures] == [
        (pd.Timestamp(early), "mean_w15: a value inside its warm-up"),
        (pd.Timestamp(rows[last_warmup][0]), "; ".join(f"{name}: a value inside its warm-up" for name in filled)),
        (pd.Timestamp(late), "max_w75: NULL after its warm-up"),
        (pd.Timestamp(flat), "skew_w45: NULL after its warm-up"),
    ], failures
