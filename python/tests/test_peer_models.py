"""bench/peer_models.py, the benchmark's NumPy peer, against NumPy on each window: pair
boundaries masked, warm-ups NULL, flat windows exact (the bench compares it with the SQL tables;
this guards the peer's own maths without a database)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from bqx.project import PROJECT_DIR

sys.path.insert(0, str(PROJECT_DIR / "bench"))

import peer_models  # noqa: E402

BARS_PER_PAIR = 200


@pytest.fixture(scope="module")
def bars() -> peer_models.Bars:
    """Two pairs of different levels; the second holds a flat stretch of 90 bars."""
    rng = np.random.default_rng(7)
    first = 100 * np.exp(np.cumsum(rng.normal(0, 1e-4, BARS_PER_PAIR)))
    second = 150 * np.exp(np.cumsum(rng.normal(0, 1e-4, BARS_PER_PAIR)))
    second[60:150] = second[60]
    position = np.tile(np.arange(BARS_PER_PAIR), 2)
    return peer_models.Bars(
        pair=np.repeat(np.array([b"AAABBB", b"CCCDDD"]), BARS_PER_PAIR),
        ts_us=np.tile(np.arange(BARS_PER_PAIR) * peer_models.US_PER_MINUTE, 2),
        values={"close_idx": np.r_[first, second]},
        position=position,
        remaining=BARS_PER_PAIR - 1 - position,
    )


def by_name(columns: list[peer_models.Column]) -> dict[str, np.ndarray]:
    return {column.name: column.values for column in columns}


def each_window(bars: peer_models.Bars, width: int, reference, shift: int = 0) -> np.ndarray:
    """reference(window, t) on the `width` values ending `shift` bars before each bar, NaN where
    that window leaves the pair."""
    close = bars.values["close_idx"]
    out = np.full(len(close), np.nan)
    for t in np.flatnonzero(bars.position >= width - 1 + shift):
        out[t] = reference(close[t - shift - width + 1 : t - shift + 1], t)
    return out


def assert_equal_columns(got: np.ndarray, expected: np.ndarray, name: str) -> None:
    assert np.array_equal(np.isnan(got), np.isnan(expected)), f"{name}: NULL placement"
    scale = np.nanmax(np.abs(expected))
    assert np.nanmax(np.abs(got - expected)) <= 1e-9 * scale, name


def test_statistics_against_each_window(bars: peer_models.Bars) -> None:
    got = by_name(peer_models.statistics_columns(bars.values["close_idx"], bars.position))

    def moments(window: np.ndarray) -> tuple[float, float, float]:
        centred = window - window.mean()
        return tuple(float(np.mean(centred**k)) for k in (2, 3, 4))

    for w in map(int, peer_models.VARS["rolling_windows"]):
        def skew(x, _, w=w):
            m2, m3, _m4 = moments(x)
            return np.sqrt(w * (w - 1)) / (w - 2) * m3 / m2**1.5 if x.min() < x.max() else np.nan

        def kurt(x, _, w=w):
            m2, _m3, m4 = moments(x)
            return (w - 1) / ((w - 2) * (w - 3)) * ((w + 1) * m4 / m2**2 - 3 * (w - 1)) if x.min() < x.max() else np.nan

        expected = {
            "mean": each_window(bars, w, lambda x, _: x.mean()),
            "std": each_window(bars, w, lambda x, _: x.std(ddof=1)),
            "skew": each_window(bars, w, skew),
            "kurt": each_window(bars, w, kurt),
            "min": each_window(bars, w, lambda x, _: x.min()),
            "max": each_window(bars, w, lambda x, _: x.max()),
        }
        for metric, values in expected.items():
            assert_equal_columns(got[f"{metric}_w{w}"], values, f"{metric}_w{w}")
        flat = (bars.pair == b"CCCDDD") & (bars.position >= 60 + w - 1) & (bars.position < 150)
        assert np.all(got[f"std_w{w}"][flat] == 0), "a flat window's std is exactly 0"


def test_bqx_and_volatility_against_each_window(bars: peer_models.Bars) -> None:
    close = bars.values["close_idx"]
    for w in map(int, peer_models.VARS["bqx_windows"]):
        got = peer_models.bqx_values(close, bars.position, w)
        assert_equal_columns(got, each_window(bars, w, lambda x, t: (x.mean() - close[t]) / close[t], shift=1), f"bqx_w{w}")
    got = by_name(peer_models.volatility_columns(close, bars.position, log_returns=True))
    for w in (int(w) for w in peer_models.VARS["volatility_windows"] if int(w) < BARS_PER_PAIR):
        def rvol(x, _):
            return np.sqrt(np.sum(np.diff(np.log(x)) ** 2))

        def efficiency(x, _):
            r = np.diff(np.log(x))
            return min(abs(r.sum()) / np.abs(r).sum(), 1.0) if np.abs(r).sum() > 0 else np.nan

        assert_equal_columns(got[f"rvol_w{w}"], each_window(bars, w + 1, rvol), f"rvol_w{w}")
        assert_equal_columns(got[f"er_w{w}"], each_window(bars, w + 1, efficiency), f"er_w{w}")
