"""reg_rate and reg_bqx against numpy.polyfit on each window.

The reference is numpy.polyfit itself, called once per window length with a 2-D y (every
window of a pair as a column: that is polyfit on each window, in one LAPACK call), x = -(W-1)
.. 0; SSE from the fit's residuals, SST two-pass about the window's mean. Every column must be
within 1e-9 of its largest |value| (per pair and window; the SQL meets ~1e-10). The bqx domain
reads the series the model read (features.bqx), so this checks the regression maths only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import FIXTURE_PAIRS, FLAT_BARS, FLAT_PAIR, query_frame, table_columns
from reference import DOMAINS, REL_TOL, SERIES_WINDOW, VARS, complete_windows
from test_bqx import longest_flat_run

WINDOWS: list[int] = VARS["reg_windows"]
METRICS = ["a", "b", "c", "r2", "rmse", "endpoint"]


def reg_columns() -> list[str]:
    return [f"reg_{metric}_w{w}" for w in WINDOWS for metric in METRICS]


def reg_frame(dsn: str, domain: str) -> pd.DataFrame:
    """pair, ts_utc, y (the series the model read) and the model's columns, by pair and ts_utc."""
    if domain == "rate":
        source = "select pair, ts_utc, close_idx as y from staging.m1_index"
    else:
        source = f"select pair, ts_utc, bqx_w{SERIES_WINDOW} as y from features.bqx"
    columns = ", ".join(f"r.{c}" for c in reg_columns())
    frame = query_frame(
        dsn,
        f"select s.pair, s.ts_utc, s.y, {columns} from ({source}) as s "
        f"left join features.reg_{domain} as r on r.pair = s.pair and r.ts_utc = s.ts_utc "
        "order by s.pair, s.ts_utc",
    )
    for column in frame.columns[2:]:
        frame[column] = pd.to_numeric(frame[column]).astype(float)
    return frame


def polyfit_reference(y: np.ndarray, window: int, relative_endpoint: bool) -> dict[str, np.ndarray]:
    """The six REG values of every window y[t-W+1 .. t] with W values, placed at t (NaN elsewhere;
    r2 NaN on flat windows)."""
    out, values, rows = complete_windows(y, window, METRICS)
    if len(values) == 0:
        return out
    x = np.arange(-(window - 1), 1, dtype=np.float64)
    a, b, c = np.polyfit(x, values.T, 2)  # numpy.polyfit on each window (one column each)
    residuals = values - (a[:, None] * x**2 + b[:, None] * x + c[:, None])
    sse = np.einsum("ij,ij->i", residuals, residuals)
    centred = values - values.mean(axis=1, keepdims=True)
    sst = np.einsum("ij,ij->i", centred, centred)
    flat = values.max(axis=1) == values.min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(flat, np.nan, 1.0 - sse / sst)
    out["a"][rows] = np.where(flat, 0.0, a)
    out["b"][rows] = np.where(flat, 0.0, b)
    out["c"][rows] = c
    out["r2"][rows] = r2
    out["rmse"][rows] = np.where(flat, 0.0, np.sqrt(sse / window))
    first, last = values[:, 0], values[:, -1]
    out["endpoint"][rows] = last / first - 1.0 if relative_endpoint else last - first
    return out


def check_reg(dsn: str, domain: str) -> dict[str, float]:
    """Assert every REG column of one domain against numpy.polyfit; return the worst relative
    error per metric (error / the column's largest |value|, per pair and window)."""
    frame = reg_frame(dsn, domain)
    worst = {metric: 0.0 for metric in METRICS}
    for pair, rows in frame.groupby("pair", sort=False):
        y = rows["y"].to_numpy()
        for window in WINDOWS:
            expected = polyfit_reference(y, window, relative_endpoint=(domain == "rate"))
            for metric in METRICS:
                label = f"reg_{domain}.reg_{metric}_w{window} {pair}"
                got = rows[f"reg_{metric}_w{window}"].to_numpy()
                differ = np.isnan(got) != np.isnan(expected[metric])
                assert not differ.any(), (
                    f"{label}: NULL on one side only at rows {np.flatnonzero(differ)[:5]} "
                    f"(sql {got[differ][:3]}, numpy {expected[metric][differ][:3]})"
                )
                scale = np.nanmax(np.abs(expected[metric]))
                if not scale > 0:
                    continue
                error = float(np.nanmax(np.abs(got - expected[metric])) / scale)
                assert error <= REL_TOL, f"{label}: relative error {error:.2e} > {REL_TOL}"
                worst[metric] = max(worst[metric], error)
    return worst


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_reg_matches_polyfit(wave1_dsn: str, domain: str) -> None:
    check_reg(wave1_dsn, domain)


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_reg_warmup_is_exact(wave1_dsn: str, domain: str) -> None:
    """Every column is NULL on exactly the first (series warm-up + W - 1) bars of each pair."""
    frame = reg_frame(wave1_dsn, domain)
    assert set(frame["pair"]) == set(FIXTURE_PAIRS)
    for pair, rows in frame.groupby("pair", sort=False):
        for window in WINDOWS:
            warmup = DOMAINS[domain] + window - 1
            for metric in METRICS:
                column = rows[f"reg_{metric}_w{window}"].to_numpy()
                assert np.isnan(column[:warmup]).all(), f"{pair} reg_{metric}_w{window}: value in the warm-up"
                assert not np.isnan(column[warmup]), f"{pair} reg_{metric}_w{window}: NULL after the warm-up"


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_reg_columns_follow_vars(wave1_dsn: str, domain: str) -> None:
    assert table_columns(wave1_dsn, "features", f"reg_{domain}") == ["pair", "ts_utc", *reg_columns()]


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_reg_on_a_flat_stretch(wave1_dsn: str, domain: str) -> None:
    """Windows inside the fixture's flat stretch: r2 NULL (SST = 0), rmse 0, a = b = 0 exactly,
    c the flat value, no error."""
    frame = reg_frame(wave1_dsn, domain)
    rows = frame[frame["pair"] == FLAT_PAIR].reset_index(drop=True)
    y = rows["y"].to_numpy()
    first, last = longest_flat_run(np.nan_to_num(y, nan=np.inf))
    assert last - first + 1 >= FLAT_BARS - DOMAINS[domain]  # bqx: exactly 0 once its window is flat
    for window in WINDOWS:
        inside = rows.iloc[first + window - 1 : last + 1]
        assert len(inside) > 0, f"no window of {window} bars inside the flat stretch"
        assert inside[f"reg_r2_w{window}"].isna().all()
        assert (inside[f"reg_rmse_w{window}"] == 0.0).all()
        assert (inside[f"reg_a_w{window}"] == 0.0).all()
        assert (inside[f"reg_b_w{window}"] == 0.0).all()
        scale = np.nanmax(np.abs(rows[f"reg_c_w{window}"].to_numpy()))
        assert np.abs(inside[f"reg_c_w{window}"].to_numpy() - y[first]).max() <= REL_TOL * scale
