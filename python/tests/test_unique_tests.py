"""The `unique_combination_of_columns` test (macros/tests/generic_tests.sql): on a table guarded
by a valid unique index on exactly its columns it reads the catalog and never scans the table;
without that index (dropped, or on other columns) it scans and catches a duplicate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import psycopg

from conftest import built_pairs_database

PAIRS = ["EURUSD", "USDJPY"]
TEST_FILE = "unique_combination_of_columns_bqx_pair__ts_utc.sql"


def _failures(dsn: str, test_sql: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"select * from ({test_sql}) as failures").fetchall()


def _scanned_rows(dsn: str, test_sql: str) -> int:
    """Rows the scan of features.bqx returned while the test ran (EXPLAIN ANALYZE)."""
    with psycopg.connect(dsn) as conn:
        plan = conn.execute(f"explain (analyze, format json) {test_sql}").fetchone()[0][0]["Plan"]

    def walk(node: dict) -> int:
        own = node.get("Actual Rows", 0) if node.get("Relation Name") == "bqx" else 0
        return own + sum(walk(child) for child in node.get("Plans", []))

    return walk(plan)


def test_unique_test_trusts_a_valid_unique_index_and_scans_without_one(
    database_factory: Callable[[str], str], fixture_bars: pd.DataFrame, dbt_runner: Callable[..., Path]
) -> None:
    dsn, _ = built_pairs_database(database_factory, dbt_runner, fixture_bars, "unique_tests", PAIRS, "+bqx")
    target = dbt_runner(dsn, "test", "--select", "bqx,test_name:unique_combination_of_columns")
    (path,) = sorted((target / "compiled").rglob(TEST_FILE))
    test_sql = path.read_text()
    assert "pg_index" in test_sql

    # guarded: nothing to report, and the table is not read at all
    assert _failures(dsn, test_sql) == []
    assert _scanned_rows(dsn, test_sql) == 0

    with psycopg.connect(dsn) as conn:
        unique_indexes = conn.execute(
            "select indexrelid::regclass::text from pg_index "
            "where indrelid = 'features.bqx'::regclass and indisunique"
        ).fetchall()
        assert unique_indexes
        rows = conn.execute("select count(*) from features.bqx").fetchone()[0]
        # a non-unique index on the same columns and a unique one on other columns guard nothing
        for (index,) in unique_indexes:
            conn.execute(f"drop index {index}")
        conn.execute("create index bqx_pair_ts_plain on features.bqx (pair, ts_utc)")
        conn.execute("insert into features.bqx select * from features.bqx where pair = 'USDJPY' order by ts_utc limit 1")
        conn.execute("update features.bqx set bqx_w15 = 12345 where ctid = (select max(ctid) from features.bqx)")
        conn.execute("create unique index bqx_pair_ts_value on features.bqx (pair, ts_utc, bqx_w15)")
    # unguarded: the test scans every row and names the duplicate
    failures = _failures(dsn, test_sql)
    assert [(pair, copies) for pair, _ts, copies in failures] == [("USDJPY", 2)]
    assert _scanned_rows(dsn, test_sql) == rows + 1


def test_the_sources_unique_test_is_its_primary_key_on_the_partitioned_table(
    database_factory: Callable[[str], str], fixture_bars: pd.DataFrame, dbt_runner: Callable[..., Path]
) -> None:
    """raw.m1_bars is partitioned by month: its primary key (a partitioned index, valid once
    every partition has its own) guards it, so the test of (pair, ts_utc) reads no bar; the view
    stg_m1_bars carries no test of its own (a filter and lossless casts cannot repeat a key)."""
    dsn, _ = built_pairs_database(database_factory, dbt_runner, fixture_bars, "unique_source", PAIRS, "stg_m1_bars")
    target = dbt_runner(dsn, "test", "--select", "source:raw.m1_bars", "stg_m1_bars")
    assert not sorted((target / "compiled").rglob("unique_combination_of_columns_stg_m1_bars*.sql"))
    (path,) = sorted((target / "compiled").rglob("source_unique_combination_of_columns_raw_m1_bars_pair__ts_utc.sql"))
    test_sql = path.read_text()
    with psycopg.connect(dsn) as conn:
        plan = conn.execute(f"explain (analyze, format json) {test_sql}").fetchone()[0][0]["Plan"]

    def bars_read(node: dict) -> int:
        own = node.get("Actual Rows", 0) if str(node.get("Relation Name", "")).startswith("m1_bars") else 0
        return own + sum(bars_read(child) for child in node.get("Plans", []))

    assert _failures(dsn, test_sql) == [] and bars_read(plan) == 0
