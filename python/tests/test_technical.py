"""technical_rate and technical_bqx against TA-Lib (the `ta-lib` wheel, `import talib`).

Every indicator on each fixture pair, both domains: NULL exactly where TA-Lib returns NaN,
and equal within 1e-9 of the column's largest |value| on that pair (per pair and column).
The bqx domain runs TA-Lib on the non-NULL part of the series (its own warm-up skipped), as
the models document. The flat GBPUSD stretch must give TA-Lib's values, never an error."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import psycopg
import pytest
import talib

from bqx.project import dbt_vars
from conftest import FIXTURE_PAIRS, FLAT_BARS, FLAT_PAIR, query_frame

TOLERANCE = 1e-9  # of the column's largest |value| on the pair


VARS = dbt_vars()
ADX = VARS["adx_period"]
CCI = VARS["cci_period"]


def column_names() -> list[str]:
    """What technical_column_names() generates, from the same vars."""
    return (
        [f"rsi_{period}" for period in VARS["rsi_periods"]]
        + ["macd", "macd_signal", "macd_hist", "stoch_k", "stoch_d"]
        + [f"adx_{ADX}", f"plus_di_{ADX}", f"minus_di_{ADX}", f"cci_{CCI}"]
    )


def talib_reference(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> dict[str, np.ndarray]:
    """TA-Lib's outputs for one series, keyed by our column names."""
    macd, signal, hist = talib.MACD(close, VARS["macd_fast"], VARS["macd_slow"], VARS["macd_signal"])
    slow_k, slow_d = talib.STOCH(
        high, low, close, VARS["stoch_fastk"], VARS["stoch_slowk"], talib.MA_Type.SMA, VARS["stoch_slowd"], talib.MA_Type.SMA
    )
    reference = {f"rsi_{period}": talib.RSI(close, period) for period in VARS["rsi_periods"]}
    reference |= {
        "macd": macd,
        "macd_signal": signal,
        "macd_hist": hist,
        "stoch_k": slow_k,
        "stoch_d": slow_d,
        f"adx_{ADX}": talib.ADX(high, low, close, ADX),
        f"plus_di_{ADX}": talib.PLUS_DI(high, low, close, ADX),
        f"minus_di_{ADX}": talib.MINUS_DI(high, low, close, ADX),
        f"cci_{CCI}": talib.CCI(high, low, close, CCI),
    }
    return reference


def bqx_domain_reference(series: np.ndarray) -> dict[str, np.ndarray]:
    """TA-Lib on the non-NULL part of the bqx series (high = low = close = the series),
    placed back at the series' bars; NaN on the series' own warm-up."""
    valid = ~np.isnan(series)
    start = int(np.argmax(valid))
    assert valid[start:].all(), "the bqx series is NULL only on its warm-up"
    values = series[start:]
    out = {}
    for name, column in talib_reference(values, values, values).items():
        full = np.full(len(series), np.nan)
        full[start:] = column
        out[name] = full
    return out


def relative_error(name: str, pair: str, got: np.ndarray, want: np.ndarray) -> float:
    """Max |got - want| over the column's largest |want|; asserts NULL where TA-Lib gives NaN."""
    mismatch = np.nonzero(np.isnan(got) != np.isnan(want))[0]
    assert len(mismatch) == 0, f"{pair} {name}: NULL where TA-Lib is not NaN (or back) at bars {mismatch[:10]}"
    defined = ~np.isnan(want)
    scale = np.max(np.abs(want[defined]))
    if scale == 0:
        assert np.all(got[defined] == 0), f"{pair} {name}: TA-Lib gives 0 throughout"
        return 0.0
    return float(np.max(np.abs(got[defined] - want[defined])) / scale)


def frame_of(dsn: str, sql: str) -> pd.DataFrame:
    frame = query_frame(dsn, sql)
    for column in frame.columns:
        if column not in ("pair", "ts_utc"):
            frame[column] = frame[column].astype(float)
    return frame


@pytest.fixture(scope="module")
def rate_frames(wave1_dsn: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    bars = frame_of(wave1_dsn, "select pair, ts_utc, high_idx, low_idx, close_idx from staging.m1_index order by pair, ts_utc")
    features = frame_of(wave1_dsn, "select * from features.technical_rate order by pair, ts_utc")
    return bars, features


@pytest.fixture(scope="module")
def bqx_frames(wave1_dsn: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    series = f"bqx_w{VARS['bqx_series_window']}"
    bars = frame_of(wave1_dsn, f"select pair, ts_utc, {series} as series from features.bqx order by pair, ts_utc")
    features = frame_of(wave1_dsn, "select * from features.technical_bqx order by pair, ts_utc")
    return bars, features


def compare_domain(
    bars: pd.DataFrame, features: pd.DataFrame, reference: Callable[[pd.DataFrame], dict[str, np.ndarray]]
) -> dict[str, float]:
    """Worst relative error per column over the fixture pairs (asserting NULL placement)."""
    worst: dict[str, float] = {}
    assert sorted(features["pair"].unique()) == sorted(FIXTURE_PAIRS)
    for pair in FIXTURE_PAIRS:
        pair_bars = bars[bars["pair"] == pair]
        pair_features = features[features["pair"] == pair]
        assert pair_features["ts_utc"].tolist() == pair_bars["ts_utc"].tolist(), f"{pair}: one row per bar"
        for name, want in reference(pair_bars).items():
            error = relative_error(name, pair, pair_features[name].to_numpy(), want)
            worst[name] = max(worst.get(name, 0.0), error)
    return worst


def test_columns_follow_the_vars(rate_frames, bqx_frames) -> None:
    for _, features in (rate_frames, bqx_frames):
        assert list(features.columns) == ["pair", "ts_utc", *column_names()]


def test_rate_domain_equals_talib(rate_frames) -> None:
    bars, features = rate_frames
    worst = compare_domain(
        bars,
        features,
        lambda pair_bars: talib_reference(
            pair_bars["high_idx"].to_numpy(), pair_bars["low_idx"].to_numpy(), pair_bars["close_idx"].to_numpy()
        ),
    )
    print("technical_rate max relative error:", {k: f"{v:.1e}" for k, v in worst.items()})
    assert max(worst.values()) <= TOLERANCE, worst


def test_bqx_domain_equals_talib(bqx_frames) -> None:
    bars, features = bqx_frames
    worst = compare_domain(bars, features, lambda pair_bars: bqx_domain_reference(pair_bars["series"].to_numpy()))
    print("technical_bqx max relative error:", {k: f"{v:.1e}" for k, v in worst.items()})
    assert max(worst.values()) <= TOLERANCE, worst


def test_warmups_are_talib_lookbacks(rate_frames, bqx_frames) -> None:
    """First non-NULL bar (0-based) = TA-Lib's lookback, + the series' warm-up for bqx."""
    lookbacks = {f"rsi_{p}": p for p in VARS["rsi_periods"]}
    macd = max(VARS["macd_fast"], VARS["macd_slow"]) + VARS["macd_signal"] - 2
    lookbacks |= {"macd": macd, "macd_signal": macd, "macd_hist": macd}
    stoch = VARS["stoch_fastk"] + VARS["stoch_slowk"] + VARS["stoch_slowd"] - 3
    lookbacks |= {"stoch_k": stoch, "stoch_d": stoch}
    lookbacks |= {f"adx_{ADX}": 2 * ADX - 1, f"plus_di_{ADX}": ADX, f"minus_di_{ADX}": ADX, f"cci_{CCI}": CCI - 1}
    for (_, features), offset in ((rate_frames, 0), (bqx_frames, VARS["bqx_series_window"])):
        for pair in FIXTURE_PAIRS:
            pair_features = features[features["pair"] == pair]
            for name, lookback in lookbacks.items():
                values = pair_features[name].to_numpy()
                assert np.isnan(values[: lookback + offset]).all(), (pair, name)
                assert not np.isnan(values[lookback + offset :]).any(), (pair, name)


def test_flat_prices_give_talib_values(rate_frames) -> None:
    """Inside GBPUSD's flat stretch (high = low = close for 700 bars) the indicators keep
    TA-Lib's values: %K/%D and CCI are 0 once their windows are flat, nothing is NULL."""
    bars, features = rate_frames
    pair_bars = bars[bars["pair"] == FLAT_PAIR].reset_index(drop=True)
    pair_features = features[features["pair"] == FLAT_PAIR].reset_index(drop=True)
    flat = (
        (pair_bars["high_idx"] == pair_bars["low_idx"])
        & (pair_bars["close_idx"] == pair_bars["close_idx"].shift())
        & (pair_bars["high_idx"] == pair_bars["close_idx"])
    )
    run = flat.groupby((~flat).cumsum()).cumsum()
    assert run.max() >= FLAT_BARS - 1, "the fixture has its flat stretch"
    inside = run >= 40  # past every window (STOCH 14 + 3 + 3, CCI 20)
    assert (pair_features.loc[inside, "stoch_k"] == 0).all()
    assert (pair_features.loc[inside, "stoch_d"] == 0).all()
    assert (pair_features.loc[inside, f"cci_{CCI}"] == 0).all()
    assert not pair_features.loc[inside, column_names()].isna().any().any()


def smoothers_aggregate() -> str:
    fast, slow = sorted([VARS["macd_fast"], VARS["macd_slow"]])
    rsi = "_".join(str(p) for p in VARS["rsi_periods"])
    return f"bqx_functions.ta_smoothers_rsi{rsi}_macd{fast}_{slow}_{VARS['macd_signal']}_dmi{ADX}"


@pytest.mark.parametrize(
    ("label", "series_sql"),
    [
        ("constant price", "100.123456789::float8"),
        ("tiny constant", "1e-17::float8"),
        ("zero", "0::float8"),
        ("tiny moves", "1e-300 * (1 + (i % 7))::float8"),
        ("long flat after moves", "case when i < 50 then 100 + (i % 5) else 100 end::float8"),
    ],
)
def test_smoothers_are_total(wave1_dsn: str, label: str, series_sql: str) -> None:
    """No float8 error on degenerate series (PostgreSQL raises on underflow where C keeps a
    denormal): 12,000 bars of each, the last output row finite."""
    with psycopg.connect(wave1_dsn) as conn:
        row = conn.execute(
            f"""
            select smoothed from (
                select i, {smoothers_aggregate()}(x, x, x) over (order by i) as smoothed
                from (select i, {series_sql} as x from generate_series(0, 12000) as i) as series
            ) as steps
            order by i desc limit 1
            """
        ).fetchone()
    outputs = np.array(row[0][: 6 + len(VARS["rsi_periods"])], dtype=float)
    assert np.isfinite(outputs).all(), (label, outputs)
