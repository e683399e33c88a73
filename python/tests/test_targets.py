"""marts.targets: the formula against NumPy, the NULL tail, what a target depends on, and
incremental runs (which must recompute backwards) equal to a full refresh."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from bqx.load import load_frame
from bqx.project import dbt_vars
from conftest import FIXTURE_PAIRS, query_frame
from model_compare import assert_same_values

HORIZONS: list[int] = dbt_vars()["target_horizons"]
TARGET_COLUMNS = [f"target_bqx_h{h}" for h in HORIZONS]
REL_TOL = 1e-9


def targets_reference(close: np.ndarray, h: int) -> np.ndarray:
    """(mean(close[t+1 ... t+h]) - close[t]) / close[t], each future window summed on its own."""
    n = len(close)
    out = np.full(n, np.nan)
    if n > h:
        future = np.lib.stride_tricks.sliding_window_view(close[1:], h)[: n - h]  # row t: close[t+1 ... t+h]
        out[: n - h] = (future.mean(axis=1) - close[: n - h]) / close[: n - h]
    return out


def _targets(dsn: str) -> pd.DataFrame:
    return query_frame(dsn, "select * from marts.targets order by pair, ts_utc")


def test_targets_match_numpy_with_a_null_tail(wave1_dsn: str) -> None:
    bars = query_frame(wave1_dsn, "select pair, ts_utc, close_idx from staging.m1_index order by pair, ts_utc")
    built = _targets(wave1_dsn)
    assert list(built.columns) == ["pair", "ts_utc", *TARGET_COLUMNS]
    assert len(built) == len(bars)
    for pair in FIXTURE_PAIRS:
        close = bars.loc[bars["pair"] == pair, "close_idx"].to_numpy(dtype=float)
        pair_built = built[built["pair"] == pair].reset_index(drop=True)
        assert pair_built["ts_utc"].equals(bars.loc[bars["pair"] == pair, "ts_utc"].reset_index(drop=True))
        for h, column in zip(HORIZONS, TARGET_COLUMNS):
            got = pair_built[column].to_numpy(dtype=float)
            want = targets_reference(close, h)
            # NULL exactly on the last h rows
            assert np.isnan(got[-h:]).all() and not np.isnan(got[:-h]).any(), f"{pair} {column}"
            scale = np.abs(want[:-h]).max()
            error = np.abs(got[:-h] - want[:-h]).max() / scale
            assert error <= REL_TOL, f"{pair} {column}: {error:.3g} of the largest |value|"


@pytest.fixture(scope="module")
def small_bars(fixture_bars: pd.DataFrame) -> pd.DataFrame:
    """Two days of one pair, from the default baseline date (its first bar is the baseline)."""
    keep = (
        (fixture_bars["pair"] == "EURUSD")
        & (fixture_bars["ts_utc"] >= pd.Timestamp("2024-07-01", tz="UTC"))
        & (fixture_bars["ts_utc"] < pd.Timestamp("2024-07-03", tz="UTC"))
    )
    return fixture_bars[keep].reset_index(drop=True)


@pytest.fixture(scope="module")
def small_targets(
    database_factory: Callable[[str], str], dbt_runner: Callable[..., None], small_bars: pd.DataFrame
) -> pd.DataFrame:
    """marts.targets of a full build of small_bars."""
    dsn = database_factory("targets_full")
    load_frame(dsn, small_bars, "small")
    dbt_runner(dsn, "run", "--select", "+targets")
    return _targets(dsn)


def test_changing_bar_s_changes_only_targets_from_s_minus_h_to_s(
    database_factory: Callable[[str], str],
    dbt_runner: Callable[..., None],
    small_bars: pd.DataFrame,
    small_targets: pd.DataFrame,
) -> None:
    """A target at t reads close_idx[t] (the reference level) and bars t+1 ... t+H: so a change of
    bar s's close moves the targets at t in [s - H, s] (s - H ... s - 1 through the future mean,
    s through the reference) and no other. No target at t > s may move: that would be a target
    reading the past; none at t < s - H: that would read beyond its horizon."""
    s = 1000  # well inside the bars, not the baseline bar (which would rescale every index)
    changed_bars = small_bars.copy()
    changed_bars.loc[s, "close"] *= 1.002
    changed_bars.loc[s, "high"] = max(changed_bars.loc[s, "high"], changed_bars.loc[s, "close"])
    dsn = database_factory("targets_dependence")
    load_frame(dsn, changed_bars, "one close changed")
    dbt_runner(dsn, "run", "--select", "+targets")
    before, after = small_targets, _targets(dsn)
    assert before["ts_utc"].equals(after["ts_utc"])
    for h, column in zip(HORIZONS, TARGET_COLUMNS):
        a = before[column].to_numpy(dtype=float)
        b = after[column].to_numpy(dtype=float)
        changed = ~((a == b) | (np.isnan(a) & np.isnan(b)))
        assert np.flatnonzero(changed).tolist() == list(range(s - h, s + 1)), column


def test_incremental_runs_equal_a_full_refresh(
    database_factory: Callable[[str], str],
    dbt_runner: Callable[..., None],
    small_bars: pd.DataFrame,
    small_targets: pd.DataFrame,
) -> None:
    """Increments smaller and larger than max(H): each must rewrite the NULL tail it completes."""
    dsn = database_factory("targets_incremental")
    for start, stop in [(0, 1500), (1500, 1507), (1507, len(small_bars))]:
        load_frame(dsn, small_bars.iloc[start:stop], f"bars {start}-{stop}")
        dbt_runner(dsn, "run", "--select", "+targets")
    assert_same_values(_targets(dsn), small_targets, "incremental targets", rel_tol=0)
