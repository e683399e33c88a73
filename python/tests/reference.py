"""What the feature tests share: the project's vars, the series each domain reads, and the
comparison with an exact reference (same NULLs; values within REL_TOL × the column's largest
|value|, the contract's precision)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import pytest
from bqx.project import dbt_vars
from conftest import FIXTURE_PAIRS, FLAT_BARS, FLAT_PAIR, query_frame

REL_TOL = 1e-9
VARS: dict = dbt_vars()
SERIES_WINDOW: int = VARS["bqx_series_window"]
DOMAINS = {"rate": 0, "bqx": SERIES_WINDOW}  # domain -> warm-up of its input series


def domain_series(dsn: str, domain: str) -> pd.DataFrame:
    """pair, ts_utc, y: the series the domain's model reads, ordered by pair and ts_utc."""
    if domain == "rate":
        sql = "select pair, ts_utc, close_idx as y from staging.m1_index order by pair, ts_utc"
    else:
        sql = f"select pair, ts_utc, bqx_w{SERIES_WINDOW} as y from features.bqx order by pair, ts_utc"
    frame = query_frame(dsn, sql)
    frame["y"] = pd.to_numeric(frame["y"]).astype(float)
    return frame


def model_with_series(dsn: str, model: str, domain: str, columns: list[str]) -> pd.DataFrame:
    """A feature model's rows joined to the series y its domain reads (one row per bar)."""
    rows = query_frame(dsn, f"select * from features.{model} order by pair, ts_utc")
    merged = domain_series(dsn, domain).merge(rows, on=["pair", "ts_utc"], how="outer", validate="one_to_one")
    assert len(merged) == len(rows), "the model has one row per bar of its input"
    for column in columns:
        merged[column] = pd.to_numeric(merged[column]).astype(float)
    return merged


def assert_matches(label: str, got: pd.Series | np.ndarray, expected: np.ndarray) -> float:
    """Same NULLs, values within REL_TOL × the column's largest |expected|; returns the error."""
    got = pd.to_numeric(pd.Series(got), errors="coerce").to_numpy(dtype=float)
    expected = np.asarray(expected, dtype=float)
    differ = np.isnan(got) != np.isnan(expected)
    assert not differ.any(), (
        f"{label}: NULL on one side only at rows {np.flatnonzero(differ)[:5]} "
        f"(sql {got[differ][:3]}, numpy {expected[differ][:3]})"
    )
    both = ~np.isnan(expected)
    if not both.any():
        return 0.0
    scale = max(np.abs(expected[both]).max(), 1e-300)
    error = float(np.abs(got[both] - expected[both]).max() / scale)
    assert error <= REL_TOL, f"{label}: max error {error:.3g} of the column's largest |value|"
    return error


def assert_windows_match(
    label: str,
    merged: pd.DataFrame,
    windows: list[int],
    metrics: list[str],
    reference: Callable[[np.ndarray, int], dict[str, np.ndarray]],
) -> dict[str, float]:
    """Every `<metric>_w<W>` column of every fixture pair against reference(y, W)[metric];
    returns the worst error per metric."""
    worst: dict[str, float] = {}
    for pair in FIXTURE_PAIRS:
        rows = merged[merged["pair"] == pair]
        assert len(rows) > max(windows) + SERIES_WINDOW, pair
        y = rows["y"].to_numpy()
        for w in windows:
            expected = reference(y, w)
            for metric in metrics:
                column = f"{metric}_w{w}"
                error = assert_matches(f"{label}.{column} {pair}", rows[column].to_numpy(), expected[metric])
                worst[metric] = max(worst.get(metric, 0.0), error)
    return worst


def assert_warm_up_then_values(
    domain: str,
    merged: pd.DataFrame,
    windows: list[int],
    metrics: list[str],
    null_when_zero: dict[str, str],
    warmup_offset: int = -1,
) -> None:
    """NULL on exactly the first warm-up bars of each pair (the series' own warm-up + W +
    warmup_offset: W - 1 for a window of W values); after it a metric may be NULL only where its
    `null_when_zero` column is exactly 0."""
    for pair in FIXTURE_PAIRS:
        rows = merged[merged["pair"] == pair]
        for w in windows:
            warmup = DOMAINS[domain] + w + warmup_offset
            for metric in metrics:
                values = rows[f"{metric}_w{w}"].to_numpy()
                assert np.isnan(values[:warmup]).all(), f"{domain} {pair} {metric}_w{w}: value in the warm-up"
                after = np.isnan(values[warmup:])
                if metric in null_when_zero:
                    flat = rows[f"{null_when_zero[metric]}_w{w}"].to_numpy()[warmup:] == 0
                    assert not (after & ~flat).any(), f"{domain} {pair} {metric}_w{w}: NULL on a non-flat window"
                else:
                    assert not after.any(), f"{domain} {pair} {metric}_w{w}: NULL after the warm-up"


def flat_windows(y: np.ndarray, w: int) -> np.ndarray:
    """Rows whose W values ending there are all equal and non-NULL."""
    flat = np.zeros(len(y), dtype=bool)
    windows = np.lib.stride_tricks.sliding_window_view(y, w)
    flat[w - 1 :] = (windows.max(axis=1) == windows.min(axis=1)) & ~np.isnan(windows).any(axis=1)
    return flat


def domain_model_fixture(family: str, columns: Callable[[], list[str]]) -> Callable:
    """The module fixture `built` of a family computed on both domains: (domain, the
    <family>_<domain> model's rows joined to the series y it read), once per domain."""

    @pytest.fixture(scope="module", params=list(DOMAINS), name="built")
    def built(request: pytest.FixtureRequest, wave1_dsn: str) -> tuple[str, pd.DataFrame]:
        domain = request.param
        return domain, model_with_series(wave1_dsn, f"{family}_{domain}", domain, columns())

    return built


def assert_every_window_matches(
    family: str,
    built: tuple[str, pd.DataFrame],
    windows: list[int],
    metrics: list[str],
    reference: Callable[[np.ndarray, int, str], dict[str, np.ndarray]],
) -> None:
    """assert_windows_match of the built model against reference(y, W, domain); prints the worst
    error per metric (pytest -s shows the precision the README quotes)."""
    domain, merged = built
    worst = assert_windows_match(f"{family}_{domain}", merged, windows, metrics, lambda y, w: reference(y, w, domain))
    print(f"{family}_{domain}: max error / column max per metric {worst}")


def flat_window_rows(
    built: tuple[str, pd.DataFrame], windows: list[int], values_per_window: Callable[[int], int] = lambda w: w
) -> Iterator[tuple[int, pd.DataFrame]]:
    """Per window W: the rows of the fixture's flat pair whose window of values_per_window(W)
    values is flat (asserting the stretch holds them all: rate the whole stretch, bqx the stretch
    minus the series' own window); windows longer than the stretch are skipped."""
    domain, merged = built
    rows = merged[merged["pair"] == FLAT_PAIR]
    y = rows["y"].to_numpy()
    for w in windows:
        values = values_per_window(w)
        if values > FLAT_BARS - DOMAINS[domain]:
            continue
        flat = flat_windows(y, values)
        assert flat.sum() >= FLAT_BARS - DOMAINS[domain] - values + 1, f"{domain} w{w}: flat windows missing"
        yield w, rows[flat]


def complete_windows(y: np.ndarray, w: int, metrics: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """What a window reference starts from: the output columns (NaN everywhere), the windows
    y[t-w+1 .. t] holding w non-NaN values (one row each) and the position t each ends at."""
    out = {metric: np.full(len(y), np.nan) for metric in metrics}
    if len(y) < w:
        return out, np.empty((0, w)), np.empty(0, dtype=int)
    windows = np.lib.stride_tricks.sliding_window_view(y, w)
    complete = ~np.isnan(windows).any(axis=1)
    return out, windows[complete], np.flatnonzero(complete) + w - 1
