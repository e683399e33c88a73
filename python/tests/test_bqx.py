"""The bqx model against the spec's formula computed by NumPy, window by window.

bqx_wW[t] = (mean(close_idx[t-W .. t-1]) - close_idx[t]) / close_idx[t]: the reference takes
the mean of each window's own W values (sliding_window_view, pairwise summation), so it does not
share the SQL's running sums. Tolerance: 1e-9 of the column's largest |value| per pair.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from bqx.project import dbt_vars
from conftest import FIXTURE_PAIRS, FLAT_BARS, FLAT_PAIR, query_frame, table_columns

REL_TOL = 1e-9
VARS: dict = dbt_vars()
WINDOWS: list[int] = VARS["bqx_windows"]


def bqx_reference(close: np.ndarray, window: int) -> np.ndarray:
    """The spec's bqx_w{window} at every bar (NaN in the warm-up: the first `window` bars)."""
    out = np.full(len(close), np.nan)
    if len(close) > window:
        previous = np.lib.stride_tricks.sliding_window_view(close, window)[:-1]
        out[window:] = (previous.mean(axis=1) - close[window:]) / close[window:]
    return out


def bqx_frame(dsn: str) -> pd.DataFrame:
    columns = ", ".join(f"b.bqx_w{w}" for w in WINDOWS)
    frame = query_frame(
        dsn,
        f"select i.pair, i.ts_utc, i.close_idx, {columns} from staging.m1_index as i "
        "left join features.bqx as b on b.pair = i.pair and b.ts_utc = i.ts_utc order by i.pair, i.ts_utc",
    )
    for column in frame.columns[2:]:
        frame[column] = pd.to_numeric(frame[column]).astype(float)
    return frame


def check_bqx(dsn: str) -> dict[str, float]:
    """Assert every bqx column against the reference; return the worst relative error per column."""
    frame = bqx_frame(dsn)
    assert set(frame["pair"]) == set(FIXTURE_PAIRS)
    worst: dict[str, float] = {}
    for pair, rows in frame.groupby("pair", sort=False):
        close = rows["close_idx"].to_numpy()
        for window in WINDOWS:
            column = f"bqx_w{window}"
            got = rows[column].to_numpy()
            expected = bqx_reference(close, window)
            assert np.isnan(got[:window]).all(), f"{pair} {column}: a value inside the warm-up of {window} bars"
            differ = np.isnan(got) != np.isnan(expected)
            assert not differ.any(), f"{pair} {column}: NULL on one side only at rows {np.flatnonzero(differ)[:5]}"
            scale = np.nanmax(np.abs(expected))
            error = float(np.nanmax(np.abs(got - expected)) / scale)
            assert error <= REL_TOL, f"{pair} {column}: relative error {error:.2e} > {REL_TOL}"
            worst[column] = max(worst.get(column, 0.0), error)
    return worst


def test_bqx_matches_numpy(wave1_dsn: str) -> None:
    check_bqx(wave1_dsn)


def test_bqx_columns_follow_vars(wave1_dsn: str) -> None:
    # bar_number: m1_index's, carried for the bqx-domain models that read this table
    assert table_columns(wave1_dsn, "features", "bqx") == [
        "pair", "ts_utc", "bar_number", *[f"bqx_w{w}" for w in WINDOWS]
    ]


def longest_flat_run(values: np.ndarray) -> tuple[int, int]:
    """First and last index of the longest run of equal consecutive values."""
    change = np.flatnonzero(np.r_[True, values[1:] != values[:-1], True])
    lengths = np.diff(change)
    longest = int(np.argmax(lengths))
    return int(change[longest]), int(change[longest + 1] - 1)


def test_bqx_is_zero_on_a_flat_stretch(wave1_dsn: str) -> None:
    """Inside the fixture's flat stretch every window holds one value: bqx is exactly 0."""
    frame = bqx_frame(wave1_dsn)
    flat = frame[frame["pair"] == FLAT_PAIR].reset_index(drop=True)
    first, last = longest_flat_run(flat["close_idx"].to_numpy())
    assert last - first + 1 >= FLAT_BARS
    inside = flat.iloc[first + max(WINDOWS) : last + 1]
    for window in WINDOWS:
        assert (inside[f"bqx_w{window}"].to_numpy() == 0.0).all()
