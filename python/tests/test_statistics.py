"""statistics_rate and statistics_bqx against NumPy, window by window.

The reference recomputes every window from its own W values (sliding_window_view): two-pass
moments about the window mean in float64, the exact reference the SQL must meet within 1e-9
of the column's largest |value| per pair (it meets ~1e-13). The bqx domain reads the series the
model read (features.bqx), so these tests check this family's maths, not the bqx model's.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from bqx.project import PROJECT_DIR
from conftest import FLAT_BARS, FLAT_PAIR
from reference import (
    DOMAINS,
    VARS,
    assert_warm_up_then_values,
    assert_windows_match,
    flat_windows,
    model_with_series,
)

WINDOWS: list[int] = VARS["rolling_windows"]
METRICS = ["mean", "std", "skew", "kurt", "min", "max"]


def statistics_columns() -> list[str]:
    return [f"{metric}_w{w}" for w in WINDOWS for metric in METRICS]



def statistics_reference(y: np.ndarray, w: int) -> dict[str, np.ndarray]:
    """The six statistics of every window y[t-w+1 .. t], placed at t (NaN where not all w
    values exist, and skew/kurt NaN on flat windows)."""
    n = len(y)
    out = {metric: np.full(n, np.nan) for metric in METRICS}
    if n < w:
        return out
    windows = np.lib.stride_tricks.sliding_window_view(y, w)
    complete = ~np.isnan(windows).any(axis=1)
    values = windows[complete]
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
    rows = np.flatnonzero(complete) + w - 1
    out["mean"][rows] = mean
    out["std"][rows] = np.std(values, axis=1, ddof=1)
    out["std"][rows[flat]] = 0.0  # exactly, as the SQL (np.std of equal floats can be ~1e-15)
    out["skew"][rows] = skew
    out["kurt"][rows] = kurt
    out["min"][rows] = values.min(axis=1)
    out["max"][rows] = values.max(axis=1)
    return out



@pytest.fixture(scope="module", params=list(DOMAINS))
def built(request: pytest.FixtureRequest, wave1_dsn: str) -> tuple[str, pd.DataFrame]:
    """(domain, the model's rows joined to its input series y)."""
    domain = request.param
    return domain, model_with_series(wave1_dsn, f"statistics_{domain}", domain, statistics_columns())


def test_every_window_matches_numpy(built: tuple[str, pd.DataFrame]) -> None:
    domain, merged = built
    worst = assert_windows_match(f"statistics_{domain}", merged, WINDOWS, METRICS, statistics_reference)
    print(f"statistics_{domain}: max error / column max per metric {worst}")


def test_warm_up_is_null_then_values(built: tuple[str, pd.DataFrame]) -> None:
    """NULL on exactly the first warm-up bars of each pair (the series' own warm-up + W - 1);
    after it only skew/kurt may be NULL, and only on flat windows (std exactly 0)."""
    domain, merged = built
    assert_warm_up_then_values(domain, merged, WINDOWS, METRICS, null_when_zero={"skew": "std", "kurt": "std"})


def test_flat_stretch_gives_zero_std_and_null_skew_kurt(built: tuple[str, pd.DataFrame]) -> None:
    """The fixture's constant prices: std exactly 0, skew and kurt NULL, min = max = mean."""
    domain, merged = built
    rows = merged[merged["pair"] == FLAT_PAIR]
    y = rows["y"].to_numpy()
    for w in WINDOWS:
        flat = flat_windows(y, w)
        # rate: the whole stretch; bqx: the stretch minus the series' own window
        assert flat.sum() >= FLAT_BARS - DOMAINS[domain] - w + 1, f"{domain} w{w}: flat windows missing"
        flat_rows = rows[flat]
        assert (flat_rows[f"std_w{w}"] == 0).all()
        assert flat_rows[f"skew_w{w}"].isna().all() and flat_rows[f"kurt_w{w}"].isna().all()
        assert (flat_rows[f"min_w{w}"] == flat_rows[f"max_w{w}"]).all()
        assert np.allclose(flat_rows[f"mean_w{w}"], flat_rows[f"min_w{w}"], rtol=1e-15, atol=0)


def test_yaml_documents_every_column() -> None:
    """The YAML lists the columns generated from the vars, each described and tested."""
    doc = yaml.safe_load((PROJECT_DIR / "models" / "features" / "statistics" / "statistics.yml").read_text())
    models = {model["name"]: model for model in doc["models"]}
    assert set(models) == {"statistics_rate", "statistics_bqx"}
    for model in models.values():
        documented = [column["name"] for column in model["columns"] if column["name"] not in ("pair", "ts_utc")]
        assert documented == statistics_columns()
        for column in model["columns"]:
            assert column.get("description"), column["name"]
