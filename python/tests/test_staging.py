"""Staging: the rate index against pandas, the baseline rules, UTC everywhere."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from bqx.dbt import run_dbt
from bqx.load import load_frame
from conftest import FIXTURE_PAIRS, query_frame


def test_close_idx_matches_pandas(wave1_dsn: str, fixture_bars: pd.DataFrame) -> None:
    built = query_frame(
        wave1_dsn, "select pair, ts_utc, open_idx, high_idx, low_idx, close_idx, spread_bps from staging.m1_index"
    )
    bars = fixture_bars.copy()
    baseline_date = pd.Timestamp("2024-07-01", tz="UTC")  # dbt_project.yml's default
    first = bars[bars["ts_utc"] >= baseline_date].sort_values("ts_utc").groupby("pair").first()
    for column in ["open", "high", "low", "close"]:
        bars[f"{column}_idx"] = bars[column] / bars["pair"].map(first["close"]) * 100
    bars["spread_bps"] = bars["spread"] / bars["close"] * 1e4
    merged = bars.merge(built, on=["pair", "ts_utc"], suffixes=("_pd", "_db"), validate="one_to_one")
    assert len(merged) == len(bars) == len(built)
    for column in ["open_idx", "high_idx", "low_idx", "close_idx", "spread_bps"]:
        expected = merged[f"{column}_pd"].to_numpy(dtype=float)
        got = merged[f"{column}_db"].to_numpy(dtype=float)
        assert np.array_equal(np.isnan(expected), np.isnan(got)), column
        ok = ~np.isnan(expected)
        np.testing.assert_allclose(got[ok], expected[ok], rtol=1e-15, atol=0, err_msg=column)
    at_baseline = merged[merged["ts_utc"].isin(first["ts_utc"])]
    assert len(at_baseline) == len(FIXTURE_PAIRS)
    np.testing.assert_allclose(at_baseline["close_idx_db"].astype(float), 100.0, rtol=1e-15)


def test_baseline_is_the_first_bar_at_or_after_the_date_in_utc(wave1_dsn: str, fixture_bars: pd.DataFrame) -> None:
    """The suite runs with TimeZone Asia/Kolkata: 2024-07-01 00:00 there is 2024-06-30 18:30 UTC,
    so a model reading the date in the session's zone would pick an earlier bar."""
    baselines = query_frame(wave1_dsn, "select pair, baseline_ts, baseline_rate from staging.baseline_rates")
    assert sorted(baselines["pair"]) == sorted(FIXTURE_PAIRS)
    cutoff = pd.Timestamp("2024-07-01", tz="UTC")
    for row in baselines.itertuples():
        bars = fixture_bars[(fixture_bars["pair"] == row.pair) & (fixture_bars["ts_utc"] >= cutoff)]
        first = bars.sort_values("ts_utc").iloc[0]
        assert pd.Timestamp(row.baseline_ts) == first["ts_utc"]
        assert float(row.baseline_rate) == first["close"]


def test_a_pair_without_bars_after_the_baseline_date_fails_naming_it(
    database_factory: Callable[[str], str], fixture_bars: pd.DataFrame, tmp_path
) -> None:
    dsn = database_factory("nobaseline")
    early = fixture_bars[(fixture_bars["pair"] == "GBPUSD") & (fixture_bars["ts_utc"] < pd.Timestamp("2024-06-28", tz="UTC"))]
    later = fixture_bars[fixture_bars["pair"] == "EURUSD"]
    load_frame(dsn, pd.concat([early, later]), "partial")
    done = run_dbt(["run", "--select", "stg_m1_bars", "baseline_rates"], dsn, target_path=tmp_path, capture=True)
    assert done.returncode != 0
    assert "GBPUSD" in done.stdout and "baseline_date" in done.stdout
    assert "EURUSD (" not in done.stdout


@pytest.mark.parametrize("model", ["stg_m1_bars", "baseline_rates", "m1_index"])
def test_staging_models_are_in_schema_staging(wave1_dsn: str, model: str) -> None:
    found = query_frame(
        wave1_dsn, "select count(*) as n from information_schema.tables where table_schema = 'staging' and table_name = %s", (model,)
    )
    assert found["n"].iloc[0] == 1
