"""volatility_rate and volatility_bqx against NumPy, window by window.

The reference recomputes every window from its own returns (sliding_window_view): r =
log1p(Δy / y[t-1]) (rate: the log return without ln's rounding of a ratio near 1) or Δy (bqx),
then ret, √Σr², √(π/2 Σ|r_k||r_k-1|) and |Σr| / Σ|r| per window in float64, the exact reference
the SQL must meet within 1e-9 of the column's largest |value| per pair. Warm-ups and NULL rules
come from the catalog (the registry), checked bar by bar; the fixture's flat stretch must give
exact zeros and a NULL efficiency ratio, never an error.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bqx.catalog import feature_catalog
from conftest import table_columns
from reference import DOMAINS, VARS, complete_windows, flat_window_rows
from reference import assert_every_window_matches, assert_warm_up_then_values, domain_model_fixture

WINDOWS: list[int] = VARS["volatility_windows"]
METRICS = ["ret", "rvol", "bpvol", "er"]


def volatility_columns() -> list[str]:
    return [f"{metric}_w{w}" for w in WINDOWS for metric in METRICS]


def one_bar_returns(y: np.ndarray, domain: str) -> np.ndarray:
    r = np.full(len(y), np.nan)
    if domain == "rate":
        r[1:] = np.log1p(np.diff(y) / y[:-1])
    else:
        r[1:] = np.diff(y)
    return r


def volatility_reference(y: np.ndarray, w: int, domain: str) -> dict[str, np.ndarray]:
    """The four columns of every window of w returns ending at t (NaN where not all w exist)."""
    out, values, rows = complete_windows(one_bar_returns(y, domain), w, METRICS)  # returns r[t-w+1 .. t]
    magnitude = np.abs(values)
    path = magnitude.sum(axis=1)
    start = y[rows - w]
    ret = np.log(y[rows] / start) if domain == "rate" else y[rows] - start
    out["ret"][rows] = ret
    out["rvol"][rows] = np.sqrt((values * values).sum(axis=1))
    out["bpvol"][rows] = np.sqrt(np.pi / 2 * (magnitude[:, 1:] * magnitude[:, :-1]).sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        out["er"][rows] = np.where(path > 0, np.minimum(np.abs(ret) / path, 1.0), np.nan)
    return out


built = domain_model_fixture("volatility", volatility_columns)


def test_every_window_matches_numpy(built: tuple[str, pd.DataFrame]) -> None:
    assert_every_window_matches("volatility", built, WINDOWS, METRICS, volatility_reference)


def test_warm_up_is_the_catalogs_then_values(built: tuple[str, pd.DataFrame]) -> None:
    """NULL on exactly the series' warm-up + W bars (W returns read W + 1 values), as the
    registry says; after it only er may be NULL, and only on flat windows (rvol exactly 0)."""
    domain, merged = built
    catalog = feature_catalog().by_matrix_column()
    for w in WINDOWS:
        assert catalog[f"{domain}_rvol_w{w}"].warmup_bars == DOMAINS[domain] + w
        assert catalog[f"{domain}_er_w{w}"].null_allowed_when == f"rvol_w{w} = 0"
    assert_warm_up_then_values(domain, merged, WINDOWS, METRICS, null_when_zero={"er": "rvol"}, warmup_offset=0)


def test_flat_stretch_gives_exact_zeros_and_no_efficiency(built: tuple[str, pd.DataFrame]) -> None:
    """The fixture's constant prices: every return 0, so rvol = bpvol = ret = 0 exactly and er
    NULL (no path to be efficient on), never an error."""
    tested = 0
    for w, flat_rows in flat_window_rows(built, WINDOWS, values_per_window=lambda w: w + 1):  # W + 1 values
        for metric in ("ret", "rvol", "bpvol"):
            assert (flat_rows[f"{metric}_w{w}"] == 0).all(), (metric, w)
        assert flat_rows[f"er_w{w}"].isna().all()
        tested += 1
    assert tested >= 2


def test_columns_follow_the_vars(wave1_dsn: str) -> None:
    for domain in DOMAINS:
        assert table_columns(wave1_dsn, "features", f"volatility_{domain}") == ["pair", "ts_utc", *volatility_columns()]
