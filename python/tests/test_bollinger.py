"""bollinger_rate and bollinger_bqx against NumPy, window by window, and against TA-Lib BBANDS.

The NumPy reference recomputes every window from its own W values (sliding_window_view): mean,
population std (np.std, ddof 0, two-pass), then the bands; values must agree within 1e-9 of
the column's largest |value| per pair (they agree to ~1e-14). TA-Lib's BBANDS (SMA, population
std) is a second oracle for mid/upper/lower on the rate domain. The bqx domain reads the series
the model read (features.bqx), so these tests check this family's maths, not the bqx model's.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import talib

from conftest import FIXTURE_PAIRS, query_frame
from reference import VARS, assert_matches, complete_windows, domain_series, flat_window_rows
from reference import assert_every_window_matches, assert_warm_up_then_values, domain_model_fixture

WINDOWS: list[int] = VARS["bollinger_windows"]
K: float = float(VARS["bollinger_k"])
METRICS = ["bb_mid", "bb_upper", "bb_lower", "bb_width", "bb_pctb"]


def bollinger_columns() -> list[str]:
    return [f"{metric}_w{w}" for w in WINDOWS for metric in METRICS]


def bollinger_reference(y: np.ndarray, w: int, domain: str) -> dict[str, np.ndarray]:
    """The five band columns of every window y[t-w+1 .. t], placed at t (NaN where not all w
    values exist; pctb NaN on flat windows)."""
    out, values, rows = complete_windows(y, w, METRICS)
    mid = values.mean(axis=1)
    sigma = np.std(values, axis=1, ddof=0)
    flat = values.max(axis=1) == values.min(axis=1)
    sigma[flat] = 0.0  # exactly (np.std of equal floats can be ~1e-15)
    current = y[rows]
    out["bb_mid"][rows] = mid
    out["bb_upper"][rows] = mid + K * sigma
    out["bb_lower"][rows] = mid - K * sigma
    out["bb_width"][rows] = 2 * K * sigma / mid if domain == "rate" else 2 * K * sigma
    # y - mid as the mean of the deviations y - y[i]: y - mid at the rate's level (~100) would
    # carry mid's rounding (~1e-14), ~1e-11 of %b once divided by a small 2k·sigma
    above_mid = (current[:, None] - values).mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        pctb = (above_mid + K * sigma) / (2 * K * sigma)  # (y - lower) / (upper - lower)
    pctb[flat] = np.nan
    out["bb_pctb"][rows] = pctb
    return out


built = domain_model_fixture("bollinger", bollinger_columns)


def test_every_window_matches_numpy(built: tuple[str, pd.DataFrame]) -> None:
    assert_every_window_matches("bollinger", built, WINDOWS, METRICS, bollinger_reference)


def test_rate_bands_match_talib(wave1_dsn: str) -> None:
    """TA-Lib BBANDS(SMA, k, k) on close_idx: mid, upper and lower, NaN exactly in the warm-up.
    (TA-Lib's variance is E[x²] - E[x]², ~1e-12 at the index level: fine for the bands, too
    coarse for width and %b, which the NumPy test covers.)"""
    model = query_frame(wave1_dsn, "select * from features.bollinger_rate order by pair, ts_utc")
    series = domain_series(wave1_dsn, "rate")
    merged = series.merge(model, on=["pair", "ts_utc"], validate="one_to_one")
    for pair in FIXTURE_PAIRS:
        rows = merged[merged["pair"] == pair]
        y = rows["y"].to_numpy()
        for w in WINDOWS:
            upper, middle, lower = talib.BBANDS(y, timeperiod=w, nbdevup=K, nbdevdn=K, matype=0)
            for metric, expected in (("bb_upper", upper), ("bb_mid", middle), ("bb_lower", lower)):
                got = pd.to_numeric(rows[f"{metric}_w{w}"]).to_numpy(dtype=float)
                assert_matches(f"talib {pair} {metric}_w{w}", got, expected)


def test_warm_up_is_null_then_values(built: tuple[str, pd.DataFrame]) -> None:
    """NULL on exactly the first warm-up bars of each pair (the series' own warm-up + W - 1);
    after it only pctb may be NULL, and only on flat windows (width exactly 0)."""
    domain, merged = built
    assert_warm_up_then_values(domain, merged, WINDOWS, METRICS, null_when_zero={"bb_pctb": "bb_width"})


def test_flat_stretch_collapses_the_bands(built: tuple[str, pd.DataFrame]) -> None:
    """The fixture's constant prices: upper = mid = lower, width exactly 0, pctb NULL."""
    tested = 0
    for w, flat_rows in flat_window_rows(built, WINDOWS):
        tested += 1
        assert (flat_rows[f"bb_width_w{w}"] == 0).all()
        assert (flat_rows[f"bb_upper_w{w}"] == flat_rows[f"bb_lower_w{w}"]).all()
        assert (flat_rows[f"bb_mid_w{w}"] == flat_rows[f"bb_upper_w{w}"]).all()
        assert flat_rows[f"bb_pctb_w{w}"].isna().all()
    assert tested == len(WINDOWS)
