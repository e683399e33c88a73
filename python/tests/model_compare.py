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
