"""Comparing every feature table of two databases, column by column."""

from __future__ import annotations

import numpy as np
import pandas as pd

from conftest import query_frame


def feature_tables(dsn: str, schemas: tuple[str, ...] = ("features",)) -> list[str]:
    frame = query_frame(
        dsn,
        "select table_schema || '.' || table_name as name from information_schema.tables "
        "where table_schema = any(%s) and table_type = 'BASE TABLE' order by 1",
        (list(schemas),),
    )
    return list(frame["name"])


def assert_same_values(
    left: pd.DataFrame, right: pd.DataFrame, label: str, rel_tol: float = 1e-9
) -> None:
    """Same rows (pair, ts_utc), same NULLs, values within rel_tol × the column's largest |value|."""
    keys = ["pair", "ts_utc"]
    merged = left.merge(right, on=keys, how="outer", suffixes=("_l", "_r"), indicator=True)
    unmatched = merged[merged["_merge"] != "both"]
    assert unmatched.empty, f"{label}: rows only on one side:\n{unmatched[keys + ['_merge']].head()}"
    for column in [c for c in left.columns if c not in keys]:
        a = pd.to_numeric(merged[f"{column}_l"], errors="coerce").to_numpy(dtype=float)
        b = pd.to_numeric(merged[f"{column}_r"], errors="coerce").to_numpy(dtype=float)
        null_a, null_b = np.isnan(a), np.isnan(b)
        differ = null_a != null_b
        assert not differ.any(), (
            f"{label}.{column}: NULL on one side only at "
            f"{merged.loc[differ, keys].head(3).to_dict('records')}"
        )
        both = ~null_a
        if not both.any():
            continue
        scale = max(np.abs(a[both]).max(), np.abs(b[both]).max(), 1e-300)
        error = np.abs(a[both] - b[both]).max() / scale
        assert error <= rel_tol, f"{label}.{column}: max difference {error:.3g} of the column's largest |value|"


def model_tables(dsn: str) -> list[str]:
    """Every table a model writes per (pair, ts_utc): staging.m1_index, the features, the marts."""
    frame = query_frame(
        dsn,
        "select c.table_schema || '.' || c.table_name as name from information_schema.columns as c "
        "join information_schema.tables as t using (table_schema, table_name) "
        "where c.table_schema in ('staging', 'features', 'marts') and c.column_name = 'ts_utc' "
        "and t.table_type = 'BASE TABLE' order by 1",
    )
    return list(frame["name"])


def table_rows(dsn: str, table: str, where: str = "true") -> pd.DataFrame:
    return query_frame(dsn, f"select * from {table} where {where} order by pair, ts_utc")


def assert_same_tables(dsn: str, reference_dsn: str, label: str, rel_tol: float = 0.0) -> list[str]:
    """Every model table of `dsn` equals `reference_dsn`'s (bit for bit by default)."""
    tables = model_tables(reference_dsn)
    assert "features.bqx" in tables and "staging.m1_index" in tables
    assert model_tables(dsn) == tables
    for table in tables:
        assert_same_values(table_rows(dsn, table), table_rows(reference_dsn, table), f"{label} {table}", rel_tol)
    return tables
