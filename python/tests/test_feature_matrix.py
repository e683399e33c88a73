"""marts.feature_matrix: a view with one row per m1_index row, no targets, and every column of
every feature model of the registry under its matrix name (the catalog's), carrying the model's
values. The columns themselves are checked against the contract by each family's test."""

from __future__ import annotations

import pytest

from bqx.catalog import feature_catalog
from bqx.docs import CARRIED_COLUMNS
from conftest import query_frame, table_columns


def test_feature_matrix_is_a_view(wave1_dsn: str) -> None:
    kind = query_frame(
        wave1_dsn,
        "select table_type from information_schema.tables where table_schema = 'marts' and table_name = 'feature_matrix'",
    )
    assert list(kind["table_type"]) == ["VIEW"]


def test_feature_matrix_holds_every_feature_model_column_once(wave1_dsn: str) -> None:
    """Each feature table's columns, prefixed by its domain (rate_, bqx_) where the family has
    two, in the registry's order; nothing else (no target)."""
    expected = ["pair", "ts_utc"]
    for model, features in feature_catalog().by_model().items():
        built = table_columns(wave1_dsn, "features", model)
        carried = [name for name, _ in CARRIED_COLUMNS.get(model, ())]  # bqx's bar_number: not a feature
        assert built[:2] == ["pair", "ts_utc"] and built[2:] == carried + [f.column for f in features], model
        prefixes = {f.matrix_column.removesuffix(f.column) for f in features}
        assert prefixes == ({f"{features[0].domain}_"} if features[0].domain else {""}), model
        expected += [f.matrix_column for f in features]
    columns = table_columns(wave1_dsn, "marts", "feature_matrix")
    assert len(columns) == len(set(columns)), "duplicate column names"
    assert columns == expected
    assert not [c for c in columns if c.startswith("target")]


def test_one_row_per_index_row(wave1_dsn: str) -> None:
    counts = query_frame(
        wave1_dsn,
        "select (select count(*) from staging.m1_index) as bars, count(*) as matrix_rows, "
        "count(distinct (pair, ts_utc)) as keys from marts.feature_matrix",
    ).iloc[0]
    assert counts["bars"] == counts["matrix_rows"] == counts["keys"] > 0


@pytest.mark.parametrize("model", list(feature_catalog().by_model()))
def test_columns_carry_their_model_values(wave1_dsn: str, model: str) -> None:
    """Each matrix column is its model's column of the same (unprefixed) name, row for row."""
    features = feature_catalog().by_model()[model]
    differing = ", ".join(
        f"count(*) filter (where matrix.{f.matrix_column} is distinct from features.{f.column}) as {f.matrix_column}"
        for f in features
    )
    frame = query_frame(
        wave1_dsn,
        f"select count(*) as joined, {differing} from marts.feature_matrix as matrix "
        f"inner join features.{model} as features on matrix.pair = features.pair and matrix.ts_utc = features.ts_utc",
    )
    row = frame.iloc[0]
    assert row["joined"] > 0
    bad = {column: int(row[column]) for column in frame.columns if column != "joined" and row[column]}
    assert not bad, f"{model}: columns differing from the model: {bad}"
