"""statistics_rate and statistics_bqx against NumPy, window by window.

The reference recomputes every window from its own W values (sliding_window_view): two-pass
moments about the window mean in float64, the exact reference the SQL must meet within 1e-9
of the column's largest |value| per pair (it meets ~1e-13). The bqx domain reads the series the
model read (features.bqx), so these tests check this family's maths, not the bqx model's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from reference import VARS, complete_windows, flat_window_rows
from reference import assert_every_window_matches, assert_warm_up_then_values, domain_model_fixture, model_with_series

WINDOWS: list[int] = VARS["rolling_windows"]
METRICS = ["mean", "std", "skew", "kurt", "min", "max"]


def statistics_columns() -> list[str]:
    return [f"{metric}_w{w}" for w in WINDOWS for metric in METRICS]


def statistics_reference(y: np.ndarray, w: int) -> dict[str, np.ndarray]:
    """The six statistics of every window y[t-w+1 .. t], placed at t (NaN where not all w
    values exist, and skew/kurt NaN on flat windows)."""
    out, values, rows = complete_windows(y, w, METRICS)
    mean = values.mean(axis=1)
    dev = values - mean[:, None]
    dev -= dev.mean(axis=1)[:, None]  # second pass: removes the mean's own rounding
    m2 = (dev**2).mean(axis=1)
    m3 = (dev**3).mean(axis=1)
    m4 = (dev**4).mean(axis=1)
    flat = values.max(axis=1) == values.min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        skew = np.sqrt(w * (w - 1)) / (w - 2) * m3 / m2**1.5
        kurt = (w - 1) / ((w - 2) * (w - 3)) * ((w + 1) * m4 / m2**2 - 3 * (w - 1))
    skew[flat] = np.nan
    kurt[flat] = np.nan
    out["mean"][rows] = mean
    out["std"][rows] = np.std(values, axis=1, ddof=1)
    out["std"][rows[flat]] = 0.0  # exactly, as the SQL (np.std of equal floats can be ~1e-15)
    out["skew"][rows] = skew
    out["kurt"][rows] = kurt
    out["min"][rows] = values.min(axis=1)
    out["max"][rows] = values.max(axis=1)
    return out


built = domain_model_fixture("statistics", statistics_columns)


def test_every_window_matches_numpy(built: tuple[str, pd.DataFrame]) -> None:
    assert_every_window_matches("statistics", built, WINDOWS, METRICS, lambda y, w, domain: statistics_reference(y, w))


def test_warm_up_is_null_then_values(built: tuple[str, pd.DataFrame]) -> None:
    """NULL on exactly the first warm-up bars of each pair (the series' own warm-up + W - 1);
    after it only skew/kurt may be NULL, and only on flat windows (std exactly 0)."""
    domain, merged = built
    assert_warm_up_then_values(domain, merged, WINDOWS, METRICS, null_when_zero={"skew": "std", "kurt": "std"})


def test_flat_stretch_gives_zero_std_and_null_skew_kurt(built: tuple[str, pd.DataFrame]) -> None:
    """The fixture's constant prices: std exactly 0, skew and kurt NULL, min = max = mean."""
    tested = 0
    for w, flat_rows in flat_window_rows(built, WINDOWS):
        tested += 1
        assert (flat_rows[f"std_w{w}"] == 0).all()
        assert flat_rows[f"skew_w{w}"].isna().all() and flat_rows[f"kurt_w{w}"].isna().all()
        assert (flat_rows[f"min_w{w}"] == flat_rows[f"max_w{w}"]).all()
        assert np.allclose(flat_rows[f"mean_w{w}"], flat_rows[f"min_w{w}"], rtol=1e-15, atol=0)
    assert tested == len(WINDOWS)


# Windows whose segments (W_i - W_(i-1): 4, 1, 4, 11, 12) differ in length, one of them a single
# bar: window_deviation_sums_ctes then reads blocks of four lengths at five offsets, a shape the
# default windows (every segment 15 bars) never build.
UNEVEN_WINDOWS = [4, 5, 9, 20, 32]


def test_uneven_windows_match_numpy(
    database_factory: Callable[[str], str], fixture_bars: pd.DataFrame, tmp_path: Path
) -> None:
    """statistics_rate built with var rolling_windows = UNEVEN_WINDOWS equals NumPy on every window."""
    from bqx.dbt import run_dbt
    from bqx.load import load_frame

    dsn = database_factory("uneven_windows")
    load_frame(dsn, fixture_bars, "bars")
    # its own target folder and no shared parse cache: other vars mean a parse of their own
    done = run_dbt(["run", "--select", "+statistics_rate", "--vars", json.dumps({"rolling_windows": UNEVEN_WINDOWS})],
                   dsn, target_path=tmp_path / "target", capture=True)  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:]
    columns = [f"{metric}_w{w}" for w in UNEVEN_WINDOWS for metric in METRICS]
    merged = model_with_series(dsn, "statistics_rate", "rate", columns)
    assert_every_window_matches(
        "statistics", ("rate", merged), UNEVEN_WINDOWS, METRICS, lambda y, w, domain: statistics_reference(y, w)
    )
