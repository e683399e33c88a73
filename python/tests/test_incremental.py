"""Incremental runs give the same values as a full refresh, and features never look ahead."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import pytest

from bqx.load import load_frame
from conftest import query_frame
from model_compare import assert_same_values, feature_tables

# Two splits of the fixture's bars: the first build holds bars before SPLIT, the incremental
# run adds the rest. TRUNCATE_AT: the no-look-ahead check builds only bars up to it.
SPLIT = pd.Timestamp("2024-07-04 13:37", tz="UTC")
TRUNCATE_AT = pd.Timestamp("2024-07-02 23:59", tz="UTC")


def _table(dsn: str, table: str, where: str = "true") -> pd.DataFrame:
    return query_frame(dsn, f"select * from {table} where {where} order by pair, ts_utc")


def test_incremental_run_equals_full_refresh(
    database_factory: Callable[[str], str],
    dbt_runner: Callable[..., None],
    fixture_bars: pd.DataFrame,
    wave1_dsn: str,
) -> None:
    dsn = database_factory("incremental")
    load_frame(dsn, fixture_bars[fixture_bars["ts_utc"] < SPLIT], "first part")
    dbt_runner(dsn, "run", "--select", "tag:wave1")
    before = query_frame(dsn, "select count(*) as n from features.bqx")["n"].iloc[0]
    load_frame(dsn, fixture_bars[fixture_bars["ts_utc"] >= SPLIT], "second part")
    dbt_runner(dsn, "run", "--select", "tag:wave1")
    tables = feature_tables(wave1_dsn, ("features", "marts"))
    assert "features.bqx" in tables and before > 0
    assert set(feature_tables(dsn, ("features", "marts"))) == set(tables)
    for table in tables:
        assert_same_values(_table(dsn, table), _table(wave1_dsn, table), f"incremental {table}")


def test_recompute_from_rebuilds_a_corrected_month(
    database_factory: Callable[[str], str],
    dbt_runner: Callable[..., None],
    fixture_bars: pd.DataFrame,
    wave1_dsn: str,
) -> None:
    """A late correction: bars after a date change; `recompute_from` brings every feature back
    in line with a full build of the corrected bars."""
    dsn = database_factory("recompute")
    corrected = fixture_bars.copy()
    late = corrected["ts_utc"] >= SPLIT
    wrong = corrected.copy()
    wrong.loc[late, ["open", "high", "low", "close"]] *= 1.001
    load_frame(dsn, wrong, "wrong prices")
    dbt_runner(dsn, "run", "--select", "tag:wave1")
    load_frame(dsn, corrected, "corrected prices")
    dbt_runner(dsn, "run", "--select", "tag:wave1", "--vars", f'{{"recompute_from": "{SPLIT.isoformat()}"}}')
    for table in feature_tables(wave1_dsn, ("features",)):
        assert_same_values(_table(dsn, table), _table(wave1_dsn, table), f"recomputed {table}")


def test_features_do_not_look_ahead(
    database_factory: Callable[[str], str],
    dbt_runner: Callable[..., None],
    fixture_bars: pd.DataFrame,
    wave1_dsn: str,
) -> None:
    """Features at a minute ≤ T are the same whether or not a week of bars after T exists."""
    dsn = database_factory("truncated")
    load_frame(dsn, fixture_bars[fixture_bars["ts_utc"] <= TRUNCATE_AT], "bars up to T")
    dbt_runner(dsn, "run", "--select", "tag:wave1")
    until_t = f"ts_utc <= '{TRUNCATE_AT.isoformat()}'"
    tables = feature_tables(wave1_dsn, ("features",))
    assert len(tables) >= 1
    for table in tables:
        assert_same_values(_table(dsn, table, until_t), _table(wave1_dsn, table, until_t), f"truncated {table}")


@pytest.mark.parametrize("schema", ["staging", "features", "marts"])
def test_models_land_in_their_own_schema(wave1_dsn: str, schema: str) -> None:
    found = query_frame(
        wave1_dsn,
        "select count(*) as n from information_schema.tables where table_schema = %s",
        (schema,),
    )["n"].iloc[0]
    assert found > 0
