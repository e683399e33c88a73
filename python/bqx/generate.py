"""Deterministic synthetic 1-minute FX bars for the 28 pairs of the 8 major currencies.

The model
---------
Every currency c has a log value ``L_c(t)`` against an abstract numeraire, and every pair is
the difference of two of them::

    mid(BASE/QUOTE, t) = exp(L_BASE(t) - L_QUOTE(t))

so the cross rates are consistent by construction (EURJPY = EURUSD x USDJPY up to the
rounding of the quotes). ``L_c = mu_c + x_c(t)``: ``mu_c`` puts the pairs at realistic levels
(EURUSD 1.08, USDJPY 160, GBPUSD 1.27, AUDUSD 0.66, NZDUSD 0.60, USDCAD 1.37, USDCHF 0.90 on
the reference day 2024-07-01) and ``x_c`` is the random part, in two layers:

* **Daily anchors.** ``x_c`` at 00:00 UTC of every day follows a slowly mean-reverting AR(1)
  (half-life about 1.5 years, so levels stay realistic over decades), whose daily shock has
  the variance the intraday model will spend that day. The shocks are correlated across
  currencies (a European block EUR/CHF/GBP, a commodity block AUD/NZD/CAD, a safe-haven
  block JPY/CHF) and scaled by a daily volatility regime (a log-AR(1), half-life ~3 weeks:
  volatility clustering from day to day). The anchors are drawn outwards from the reference
  day in fixed blocks of days, so the value at a day depends on the seed and that day only.
* **Intraday paths.** Between two anchors the path is a Brownian bridge on 12 ticks per
  minute (5-second steps) with time-varying variance: an intraday seasonality (quiet Asian
  night, London morning, busiest in the London/New York overlap 13:00-16:00 UTC, a lull at
  the 22:00 UTC rollover, small spikes at the 12:30 and 14:00 UTC data releases) times an
  intraday stochastic volatility (log-AR(1) per minute, half-life ~70 minutes, shared plus
  per-currency). Each UTC day uses its own random stream
  ``SeedSequence([seed, 1, date.toordinal()])``.

Because anchors and days are keyed by the date, the bars of a minute depend on the seed only:
not on ``start``, ``end`` or the pairs requested. A shorter range is a slice of a longer one,
and consecutive ranges join without a jump, so data can be generated (and loaded) month by
month. Every random draw is made for all 8 currencies and all 28 pairs, in a fixed order,
whether or not a pair is requested.

Bars: open is the first tick of the minute, close the last, high/low the extremes of the 12
ticks (so they include open and close). Prices are rounded to 5 decimals (3 for JPY pairs)
after OHLC is built; rounding is monotone, so low <= open, close <= high still holds.

Calendar: the market is closed from Friday 22:00 UTC to Sunday 22:00 UTC (no bars; the
factors do not move, except a weekend gap at the Sunday open). About 0.1 % of the open
minutes are missing, independently per pair. No holidays and no daylight saving are modelled.

Volume is Poisson tick volume whose mean follows the session activity and the size of the
minute's move. Spread is the mean bid-ask spread in price units: a per-pair typical spread in
pips (EURUSD 0.8, crosses wider), wider in the quiet hours, much wider around the 22:00 UTC
rollover and the Sunday open, with noise.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm import tqdm

from bqx import safe_files
from bqx.bar_formats import (
    BAR_COLUMNS,
    CSV_HEADER,
    CSV_TIMESTAMP_FORMAT,
    HISTDATA_DELIMITER,
    HISTDATA_TIMESTAMP_FORMAT,
    HISTDATA_UTC_OFFSET_US,
    NUMBER_COLUMNS,
    PRICE_COLUMNS,
    histdata_file_name,
)
from bqx.bar_formats import FORMATS as _FORMATS
from bqx.pairs import CURRENCIES as _CURRENCIES
from bqx.pairs import PAIRS as _PAIRS

DEFAULT_SEED = 20240701

# Market order of precedence and the file formats; defined once for the package in bqx.pairs
# and bqx.bar_formats, re-exported here.
CURRENCIES: tuple[str, ...] = _CURRENCIES
PAIRS: tuple[str, ...] = _PAIRS
COLUMNS: tuple[str, ...] = BAR_COLUMNS
FORMATS: tuple[str, ...] = _FORMATS

MINUTES_PER_DAY = 1440
TICKS_PER_MINUTE = 12  # 5-second ticks: enough for a realistic high-low range, cheap to simulate
REFERENCE_DAY = dt.date(2024, 7, 1)  # the day whose 00:00 UTC levels are the ones below
MISSING_RATE = 0.001  # share of open minutes without a bar, per pair
WEEKEND_CLOSE_MINUTE = 22 * 60  # Friday 22:00 UTC close, Sunday 22:00 UTC open
ANCHOR_BLOCK_DAYS = 1024  # daily anchors are drawn in blocks keyed by (seed, direction, block)
_UNIX_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()

# Level of every currency in USD on the reference day: pairs then follow from the ratios.
_USD_VALUE = {
    "EUR": 1.08,
    "GBP": 1.27,
    "AUD": 0.66,
    "NZD": 0.60,
    "USD": 1.0,
    "CAD": 1 / 1.37,
    "CHF": 1 / 0.90,
    "JPY": 1 / 160.0,
}
_MU = np.log(np.array([_USD_VALUE[c] for c in CURRENCIES]))

# Per-minute volatility of each currency's log value (weekday average). With the correlations
# below this gives EURUSD ~1.0e-4 per minute (~7 % a year at 260 x 1440 minutes), USDJPY ~1.2e-4,
# EURCHF and EURGBP ~0.8-0.9e-4 (the calm crosses), AUDJPY and NZDJPY ~1.4e-4 (the wild ones).
#                   EUR   GBP   AUD   NZD   USD   CAD   CHF   JPY
_SIGMA = np.array([0.70, 0.80, 0.95, 1.00, 0.75, 0.70, 0.80, 0.90]) * 1e-4


def _correlation() -> np.ndarray:
    """Correlation of the currencies' shocks: blocks that real FX has (EUR/CHF/GBP move together
    against USD, AUD/NZD/CAD with commodities, JPY/CHF as safe havens); the rest idiosyncratic."""
    #            europe commodity haven
    loadings = {
        "EUR": (0.70, 0.00, 0.00),
        "GBP": (0.50, 0.10, 0.00),
        "AUD": (0.00, 0.75, -0.10),
        "NZD": (0.00, 0.72, -0.10),
        "USD": (0.00, 0.00, 0.00),
        "CAD": (0.00, 0.40, 0.00),
        "CHF": (0.60, 0.00, 0.40),
        "JPY": (0.00, -0.10, 0.55),
    }
    lam = np.array([loadings[c] for c in CURRENCIES])
    cov = lam @ lam.T
    cov[np.diag_indices_from(cov)] = 1.0  # idiosyncratic part fills each variance up to 1
    return cov


_CORR = _correlation()
_CHOL = np.linalg.cholesky(_CORR)

_PAIR_LEGS = np.array([(CURRENCIES.index(p[:3]), CURRENCIES.index(p[3:])) for p in PAIRS])
_PAIR_DECIMALS = np.array([3 if p.endswith("JPY") else 5 for p in PAIRS])
_PIP = np.where(_PAIR_DECIMALS == 3, 0.01, 0.0001)
_PAIR_SIGMA = np.sqrt(
    _SIGMA[_PAIR_LEGS[:, 0]] ** 2
    + _SIGMA[_PAIR_LEGS[:, 1]] ** 2
    - 2 * _CORR[_PAIR_LEGS[:, 0], _PAIR_LEGS[:, 1]] * _SIGMA[_PAIR_LEGS[:, 0]] * _SIGMA[_PAIR_LEGS[:, 1]]
)  # long-run per-minute sd of each pair's log price

# Typical spreads in pips in liquid hours (ECN-like), and the scale of tick volumes per minute
# (a quiet minute gets a fraction of it, a busy one several times it).
_SPREAD_PIPS = {
    "EURUSD": 0.8, "USDJPY": 0.9, "GBPUSD": 1.1, "AUDUSD": 0.9, "USDCAD": 1.3, "USDCHF": 1.2,
    "NZDUSD": 1.4, "EURGBP": 1.1, "EURJPY": 1.3, "EURCHF": 1.4, "GBPJPY": 2.2, "EURAUD": 1.8,
    "EURCAD": 1.9, "EURNZD": 2.8, "GBPAUD": 2.4, "GBPNZD": 3.5, "GBPCAD": 2.6, "GBPCHF": 2.2,
    "AUDNZD": 2.0, "AUDCAD": 1.7, "AUDCHF": 1.8, "AUDJPY": 1.4, "NZDCAD": 2.4, "NZDCHF": 2.4,
    "NZDJPY": 1.8, "CADCHF": 2.0, "CADJPY": 1.7, "CHFJPY": 2.0,
}  # fmt: skip
_VOLUME_MEAN = {
    "EURUSD": 90, "USDJPY": 80, "GBPUSD": 70, "AUDUSD": 50, "USDCAD": 45, "USDCHF": 40,
    "NZDUSD": 35, "EURJPY": 45, "GBPJPY": 45, "EURGBP": 35, "AUDJPY": 30, "EURCHF": 25,
}  # fmt: skip
_BASE_SPREAD = np.array([_SPREAD_PIPS[p] for p in PAIRS]) * _PIP
_BASE_VOLUME = np.array([_VOLUME_MEAN.get(p, 20) for p in PAIRS], dtype=float)

# Mean reversion of the daily anchors and the volatility regimes.
_ANCHOR_PHI = 0.5 ** (1 / 390)  # half-life 390 trading days ~ 1.5 years
_REGIME_PHI = 0.5 ** (1 / 15)  # half-life 15 days
_REGIME_SD_GLOBAL, _REGIME_SD_CURRENCY = 0.20, 0.12  # stationary sd of the log regimes
_INTRADAY_PHI = 0.5 ** (1 / 70)  # half-life 70 minutes
_INTRADAY_SD_GLOBAL, _INTRADAY_SD_CURRENCY = 0.25, 0.12
_WEEKEND_GAP_MINUTES = 8.0  # weekend gap sd, in per-minute sds: a few pips on EURUSD


def _seasonality() -> np.ndarray:
    """Volatility multiplier per minute of the UTC day (no daylight saving), mean square 1.

    Three session bumps (Tokyo, London, New York) on a quiet floor; the London afternoon and
    New York morning overlap (13:00-16:00 UTC) is the busiest, the hours around the 22:00 UTC
    rollover the quietest."""
    hour = np.arange(MINUTES_PER_DAY) / 60.0

    def bump(center: float, width: float) -> np.ndarray:
        dist = (hour - center + 12.0) % 24.0 - 12.0  # circular: Tokyo wraps past midnight
        return np.exp(-0.5 * (dist / width) ** 2)

    s = 0.30 + 0.35 * bump(1.5, 2.2) + 0.80 * bump(9.5, 2.8) + 0.90 * bump(14.5, 2.5)
    s *= 1.0 - 0.5 * bump(22.0, 0.6)  # rollover lull
    return s / np.sqrt(np.mean(s**2))


_SEASON = _seasonality()


def _day_profile(weekday: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(open mask, volatility profile incl. news spikes, gap variance in minute units) of a
    UTC day by weekday (Monday = 0, as date.weekday())."""
    minute = np.arange(MINUTES_PER_DAY)
    if weekday == 4:  # Friday: closes at 22:00 UTC
        is_open = minute < WEEKEND_CLOSE_MINUTE
    elif weekday == 5:  # Saturday: closed
        is_open = np.zeros(MINUTES_PER_DAY, dtype=bool)
    elif weekday == 6:  # Sunday: opens at 22:00 UTC
        is_open = minute >= WEEKEND_CLOSE_MINUTE
    else:
        is_open = np.ones(MINUTES_PER_DAY, dtype=bool)
    profile = _SEASON.copy()
    if weekday < 5:  # scheduled data releases (US 12:30, US/EU 14:00 UTC) move the market
        for release in (12 * 60 + 30, 14 * 60):
            profile[release] *= 2.2
            profile[release + 1] *= 1.5
    profile = np.where(is_open, profile, 0.0)
    gap = _WEEKEND_GAP_MINUTES**2 if weekday == 6 else 0.0
    return is_open, profile, gap


_PROFILES = [_day_profile(w) for w in range(7)]
# Expected daily variance of a currency, in units of its per-minute variance.
_DAY_VARIANCE = np.array([np.sum(p[1] ** 2) + p[2] for p in _PROFILES])


def _validate_pairs(pairs: Sequence[str] | None) -> list[int]:
    """Indices into PAIRS of the requested pairs, in PAIRS order, without duplicates."""
    if pairs is None:
        return list(range(len(PAIRS)))
    if isinstance(pairs, str):
        pairs = [pairs]
    wanted = set()
    for name in pairs:
        key = str(name).strip().upper().replace("/", "")
        if key not in PAIRS:
            raise ValueError(f"unknown pair {name!r}: expected one of {', '.join(PAIRS)}")
        wanted.add(PAIRS.index(key))
    return sorted(wanted)


def _as_date(value: dt.date, name: str) -> dt.date:
    if isinstance(value, dt.datetime):
        if value.time() != dt.time(0):
            raise ValueError(f"{name} must be a date (midnight UTC), got {value!r}")
        return value.date()
    if not isinstance(value, dt.date):
        raise TypeError(f"{name} must be a datetime.date, got {type(value).__name__}")
    return value


def _anchors(first: dt.date, last: dt.date, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Daily anchors for the days first .. last (inclusive).

    Returns (x, regime): x[k] is the log-value deviation of every currency at 00:00 UTC of day
    first + k (shape (n + 1, 8), one more for the end of the last day), regime[k] the
    volatility multiplier of that day (shape (n, 8)). Computed outwards from REFERENCE_DAY,
    where x = 0 and the regime is 1, with the normals of day d at a fixed place of a block
    keyed by (seed, direction, block): a day's anchor depends on the seed and that day only."""
    ref = REFERENCE_DAY.toordinal()
    lo, hi = min(first.toordinal(), ref), max(last.toordinal() + 1, ref)
    n_cur = len(CURRENCIES)
    x = np.zeros((hi - lo + 1, n_cur))  # x at 00:00 of days lo .. hi
    log_regime = np.zeros((hi - lo + 1, n_cur + 1))  # global + per currency, days lo .. hi
    regime_sd = np.array([_REGIME_SD_GLOBAL] + [_REGIME_SD_CURRENCY] * n_cur)
    regime_shock_sd = regime_sd * np.sqrt(1 - _REGIME_PHI**2)

    def block_normals(direction: int, block: int) -> np.ndarray:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 2, direction, block]))
        return rng.standard_normal((ANCHOR_BLOCK_DAYS, 2 * n_cur + 1))

    def regime_of(lr: np.ndarray) -> np.ndarray:
        # E[regime^2] = 1 so the long-run volatility is the one in _SIGMA
        total = lr[0] + lr[1:]
        return np.exp(total - (_REGIME_SD_GLOBAL**2 + _REGIME_SD_CURRENCY**2))

    def day_sd(ordinal: int, lr: np.ndarray) -> np.ndarray:
        weekday = dt.date.fromordinal(ordinal).weekday()
        return _SIGMA * regime_of(lr) * np.sqrt(_DAY_VARIANCE[weekday])

    # Forward: day d moves x from 00:00 of d to 00:00 of d + 1.
    normals, block = None, -1
    for ordinal in range(ref, hi):
        k = ordinal - ref
        if k // ANCHOR_BLOCK_DAYS != block:
            block = k // ANCHOR_BLOCK_DAYS
            normals = block_normals(0, block)
        z = normals[k % ANCHOR_BLOCK_DAYS]
        i = ordinal - lo
        if k > 0:
            log_regime[i] = _REGIME_PHI * log_regime[i - 1] + regime_shock_sd * z[2 * n_cur :]
        sd = day_sd(ordinal, log_regime[i])
        phi = _ANCHOR_PHI if sd[0] > 0 else 1.0  # no mean reversion on a closed Saturday
        x[i + 1] = phi * x[i] + sd * (_CHOL @ z[:n_cur])
    # Backward: day d is reached from 00:00 of d + 1 (a reversed AR(1) is an AR(1)).
    normals, block = None, -1
    for ordinal in range(ref - 1, lo - 1, -1):
        k = ref - 1 - ordinal
        if k // ANCHOR_BLOCK_DAYS != block:
            block = k // ANCHOR_BLOCK_DAYS
            normals = block_normals(1, block)
        z = normals[k % ANCHOR_BLOCK_DAYS]
        i = ordinal - lo
        log_regime[i] = _REGIME_PHI * log_regime[i + 1] + regime_shock_sd * z[2 * n_cur :]
        sd = day_sd(ordinal, log_regime[i])
        phi = _ANCHOR_PHI if sd[0] > 0 else 1.0
        x[i] = phi * x[i + 1] + sd * (_CHOL @ z[:n_cur])
    a, b = first.toordinal() - lo, last.toordinal() - lo
    regime = np.array([regime_of(lr) for lr in log_regime[a : b + 1]])
    return x[a : b + 2], regime


def _ar1(shocks: np.ndarray, phi: float) -> np.ndarray:
    """AR(1) along the last axis, h[t] = phi h[t-1] + shocks[t], h[-1] = 0, vectorised with the
    closed form h[t] = phi^t sum_{k<=t} phi^-k shocks[k] (phi^-1440 ~ 1e6 at most: exact enough)."""
    t = np.arange(shocks.shape[-1])
    return phi**t * np.cumsum(shocks * phi ** (-t), axis=-1)


def _simulate_day(
    day: dt.date, x0: np.ndarray, x1: np.ndarray, regime: np.ndarray, seed: int
) -> dict[str, np.ndarray] | None:
    """Tick paths of the 8 currencies and the per-pair random draws of one UTC day.

    Every draw is made for all currencies and all 28 pairs in a fixed order, so a pair's bars
    never depend on which pairs are requested. None when the market is closed all day."""
    weekday = day.weekday()
    is_open, profile, gap = _PROFILES[weekday]
    if not is_open.any():
        return None
    n_cur, n_min, k = len(CURRENCIES), MINUTES_PER_DAY, TICKS_PER_MINUTE
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1, day.toordinal()]))
    shocks = _CHOL @ rng.standard_normal((n_cur, n_min * k))  # correlated tick shocks
    vol_shocks = rng.standard_normal((n_cur + 1, n_min))
    missing_u = rng.random((len(PAIRS), n_min))
    spread_noise = rng.standard_normal((len(PAIRS), n_min))

    # Intraday stochastic volatility: stationary log-AR(1) (started from its stationary law,
    # so midnight is not special), shared + per currency, normalised to E[mult^2] = 1.
    sd = np.array([_INTRADAY_SD_GLOBAL] + [_INTRADAY_SD_CURRENCY] * n_cur)
    innov = vol_shocks * (sd * np.sqrt(1 - _INTRADAY_PHI**2))[:, None]
    innov[:, 0] = vol_shocks[:, 0] * sd
    h = _ar1(innov, _INTRADAY_PHI)
    log_mult = h[0] + h[1:] - (_INTRADAY_SD_GLOBAL**2 + _INTRADAY_SD_CURRENCY**2)
    minute_sd = _SIGMA[:, None] * regime[:, None] * profile[None, :] * np.exp(log_mult)

    # Tick variances: each minute's variance spread over its ticks; the weekend gap lands on
    # the first tick of the Sunday open.
    tick_var = np.repeat(minute_sd**2 / k, k, axis=1)
    if gap:
        tick_var[:, WEEKEND_CLOSE_MINUTE * k] += gap * (_SIGMA * regime) ** 2
    walk = np.cumsum(np.sqrt(tick_var) * shocks, axis=1)
    spent = np.cumsum(tick_var, axis=1)
    frac = spent / spent[:, -1:]
    # Brownian bridge from today's anchor to tomorrow's, pinned at 00:00 UTC of both days.
    path = x0[:, None] + frac * (x1 - x0)[:, None] + walk - frac * walk[:, -1:]
    log_value = (_MU[:, None] + path).reshape(n_cur, n_min, k)
    return {
        "log_value": log_value,
        "minute_sd": minute_sd,
        "is_open": is_open,
        "missing_u": missing_u,
        "spread_noise": spread_noise,
        "rng": rng,
    }


def _day_bars(day: dt.date, sim: dict[str, np.ndarray], pair_idx: list[int]) -> dict[str, np.ndarray]:
    """OHLC, volume and spread of the requested pairs for one simulated day, shape (P, 1440)."""
    legs = _PAIR_LEGS
    log_value, minute_sd = sim["log_value"], sim["minute_sd"]
    n_min = MINUTES_PER_DAY

    # Volume needs every pair's move (the Poisson draw consumes a value-dependent amount of
    # randomness, so it is drawn for all 28 pairs, last).
    open_all = log_value[legs[:, 0], :, 0] - log_value[legs[:, 1], :, 0]
    close_all = log_value[legs[:, 0], :, -1] - log_value[legs[:, 1], :, -1]
    var_b, var_q = minute_sd[legs[:, 0]] ** 2, minute_sd[legs[:, 1]] ** 2
    cov = _CORR[legs[:, 0], legs[:, 1]][:, None] * minute_sd[legs[:, 0]] * minute_sd[legs[:, 1]]
    pair_sd = np.sqrt(np.maximum(var_b + var_q - 2 * cov, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(pair_sd > 0, np.abs(close_all - open_all) / pair_sd, 0.0)
    activity = pair_sd / _PAIR_SIGMA[:, None]  # session x regime x intraday state, mean ~1
    lam = _BASE_VOLUME[:, None] * activity**1.2 * (0.55 + 0.45 * np.minimum(z, 5.0))
    volume = sim["rng"].poisson(np.where(sim["is_open"][None, :], lam, 0.0))

    # Spread: wider when the market is quiet (inverse activity), at the rollover and the Sunday
    # open, a little wider when volatile, with lognormal noise.
    hour = np.arange(n_min) / 60.0
    rollover = 1.0 + 4.0 * np.exp(-0.5 * ((hour - 22.05) / 0.12) ** 2)
    if day.weekday() == 6:
        rollover = rollover * np.where((hour >= 22.0) & (hour < 22.5), 1.8, 1.0)
    quiet = np.clip(1.0 / np.sqrt(np.maximum(_SEASON, 1e-9)), 0.8, 2.5)
    vol_state = np.clip(activity / np.maximum(_SEASON, 1e-9)[None, :], 0.5, 3.0) ** 0.3
    spread = (
        _BASE_SPREAD[:, None]
        * quiet[None, :]
        * rollover[None, :]
        * vol_state
        * np.exp(0.2 * sim["spread_noise"] - 0.02)
    )

    sel = np.asarray(pair_idx)
    ticks = log_value[legs[sel, 0]] - log_value[legs[sel, 1]]  # (P, 1440, k) log prices
    ohlc = np.exp(
        np.stack([ticks[..., 0], ticks.max(axis=-1), ticks.min(axis=-1), ticks[..., -1]])
    )  # exp is monotone: extremes in log space are the extremes of the prices
    decimals = _PAIR_DECIMALS[sel][None, :, None]
    scale = 10.0**decimals
    ohlc = np.round(ohlc * scale) / scale  # monotone, so the OHLC order survives
    o, h, l, c = ohlc
    h = np.maximum(h, np.maximum(o, c))  # belt and braces against any rounding surprise
    l = np.minimum(l, np.minimum(o, c))
    spread_scale = 10.0 ** (decimals[0] + 2)
    keep = sim["is_open"][None, :] & (sim["missing_u"][sel] >= MISSING_RATE)
    return {
        "open": o,
        "high": h,
        "low": l,
        "close": c,
        "volume": volume[sel].astype(np.int64),
        "spread": np.round(spread[sel] * spread_scale) / spread_scale,
        "keep": keep,
    }


def _iter_days(start: dt.date, end: dt.date):
    day = start
    while day < end:
        yield day
        day += dt.timedelta(days=1)


def _check_range(start: dt.date, end: dt.date) -> tuple[dt.date, dt.date]:
    start, end = _as_date(start, "start"), _as_date(end, "end")
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    return start, end


def _minute_stamps(day: dt.date) -> np.ndarray:
    """Epoch microseconds of the 1440 minutes of a UTC day."""
    first = (day.toordinal() - _UNIX_EPOCH_ORDINAL) * MINUTES_PER_DAY
    return (first + np.arange(MINUTES_PER_DAY, dtype=np.int64)) * 60_000_000


def generate_bars(
    start: dt.date,
    end: dt.date,
    pairs: Sequence[str] | None = None,
    seed: int = DEFAULT_SEED,
) -> pd.DataFrame:
    """Synthetic M1 bars with start <= ts_utc < end (dates, UTC) for the given pairs (all 28
    by default), sorted by pair (in PAIRS order) then ts_utc.

    Columns: pair (categorical, categories PAIRS), ts_utc (datetime64[us, UTC]), open, high,
    low, close, spread (float64), volume (int64). The bars of a minute depend only on the seed:
    not on start, end or the other pairs requested."""
    start, end = _check_range(start, end)
    pair_idx = _validate_pairs(pairs)
    pieces: list[list[dict[str, np.ndarray]]] = [[] for _ in pair_idx]
    n_days = (end - start).days
    if n_days > 0:
        anchors, regimes = _anchors(start, end - dt.timedelta(days=1), seed)
        for k, day in enumerate(_iter_days(start, end)):
            sim = _simulate_day(day, anchors[k], anchors[k + 1], regimes[k], seed)
            if sim is None:
                continue
            bars = _day_bars(day, sim, pair_idx)
            stamps = _minute_stamps(day)
            for j in range(len(pair_idx)):
                keep = bars["keep"][j]
                piece = {name: bars[name][j][keep] for name in NUMBER_COLUMNS}
                piece["ts"] = stamps[keep]
                pieces[j].append(piece)

    def column(name: str, dtype: type) -> np.ndarray:
        parts = [piece[name] for per_pair in pieces for piece in per_pair]
        return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)

    counts = [sum(len(piece["ts"]) for piece in per_pair) for per_pair in pieces]
    codes = np.repeat(np.asarray(pair_idx, dtype=np.int8), counts)
    ts = pd.DatetimeIndex(column("ts", np.int64).astype("datetime64[us]")).tz_localize("UTC")
    return pd.DataFrame(
        {
            "pair": pd.Categorical.from_codes(codes, categories=list(PAIRS)),
            "ts_utc": ts,
            "open": column("open", np.float64),
            "high": column("high", np.float64),
            "low": column("low", np.float64),
            "close": column("close", np.float64),
            "volume": column("volume", np.int64),
            "spread": column("spread", np.float64),
        }
    )


def generate_factors(start: dt.date, end: dt.date, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """Log value of every currency at the close of every open minute (before rounding and
    before missing minutes are removed): index ts_utc, one column per currency. The close of
    pair BASE/QUOTE is round(exp(f[BASE] - f[QUOTE])) — the model behind generate_bars."""
    start, end = _check_range(start, end)
    frames = []
    if end > start:
        anchors, regimes = _anchors(start, end - dt.timedelta(days=1), seed)
        for k, day in enumerate(_iter_days(start, end)):
            sim = _simulate_day(day, anchors[k], anchors[k + 1], regimes[k], seed)
            if sim is None:
                continue
            is_open = sim["is_open"]
            frames.append((_minute_stamps(day)[is_open], sim["log_value"][:, is_open, -1].T))
    stamps = np.concatenate([f[0] for f in frames]) if frames else np.empty(0, np.int64)
    values = np.concatenate([f[1] for f in frames]) if frames else np.empty((0, len(CURRENCIES)))
    index = pd.DatetimeIndex(stamps.astype("datetime64[us]"), name="ts_utc").tz_localize("UTC")
    return pd.DataFrame(values, index=index, columns=list(CURRENCIES))


# ----------------------------------------------------------------------------- writing


def _month_file(fmt: str, pair: str, month: np.datetime64) -> str:
    year, mon = str(month)[:4], str(month)[5:7]
    if fmt == "histdata":
        return histdata_file_name(pair, int(year), int(mon))
    return f"{pair}_{year}_{mon}.{fmt}"


def write_bars(bars: pd.DataFrame, out_dir: Path, fmt: str = "csv") -> list[Path]:
    """One file per pair and month in out_dir (created if needed); returns the paths written.

    csv: ``{PAIR}_{YYYY}_{MM}.csv``, header ``pair,ts_utc,open,high,low,close,volume,spread``,
    ts_utc as ``2024-07-01T00:00:00Z``, shortest round-trip prices, empty spread for null.
    parquet: ``{PAIR}_{YYYY}_{MM}.parquet``, the same columns, ts_utc timestamp[us, tz=UTC].
    histdata: HistData.com ASCII M1, ``DAT_ASCII_{PAIR}_M1_{YYYYMM}.csv``, no header, lines
    ``YYYYMMDD HHMMSS;open;high;low;close;volume`` in EST without daylight saving
    (UTC-5), one file per EST month, no spread."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    missing = [c for c in COLUMNS if c not in bars.columns]
    if missing:
        raise ValueError(f"bars lack the columns {missing}")
    out_dir = Path(out_dir)
    # run as root in a folder someone else controls (data/ of their checkout), nothing they
    # planted there (a symlink to a root-only file) is followed: see bqx.safe_files
    out_fd = safe_files.open_dir(out_dir, create_mode=0o755)
    try:
        return _write_bar_files(bars, out_dir, out_fd, fmt)
    finally:
        os.close(out_fd)


def _write_bar_files(bars: pd.DataFrame, out_dir: Path, out_fd: int, fmt: str) -> list[Path]:
    if bars.empty:
        return []

    ts = pd.DatetimeIndex(bars["ts_utc"])
    ts = ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")
    micros = ts.as_unit("us").asi8
    pair = bars["pair"].astype(str).to_numpy()
    # Files are named by the month of the file's clock: UTC, or EST for HistData.
    local = micros - (HISTDATA_UTC_OFFSET_US if fmt == "histdata" else 0)
    month = local.astype("datetime64[us]").astype("datetime64[M]")
    pair_rank = pd.Categorical(pair, categories=sorted(set(pair), key=_pair_sort_key)).codes
    order = np.lexsort((micros, month, pair_rank))
    pair, micros, local, month = pair[order], micros[order], local[order], month[order]

    table = pa.table(
        {
            "pair": pa.array(pair, pa.string()),
            "ts_utc": pa.array(micros, pa.timestamp("us", tz="UTC")),
            "open": pa.array(bars["open"].to_numpy(np.float64)[order]),
            "high": pa.array(bars["high"].to_numpy(np.float64)[order]),
            "low": pa.array(bars["low"].to_numpy(np.float64)[order]),
            "close": pa.array(bars["close"].to_numpy(np.float64)[order]),
            "volume": pa.array(bars["volume"].to_numpy(np.int64)[order]),
            "spread": pa.array(bars["spread"].to_numpy(np.float64, na_value=np.nan)[order], from_pandas=True),
        }
    )
    if fmt == "csv":
        text_ts = pc.strftime(_whole_seconds(micros), format=CSV_TIMESTAMP_FORMAT)
        table = table.set_column(1, "ts_utc", text_ts)
    elif fmt == "histdata":
        # the EST clock: UTC-5 shifted stamps, formatted as if they were UTC
        text_ts = pc.strftime(_whole_seconds(local), format=HISTDATA_TIMESTAMP_FORMAT)
        table = pa.table(
            {
                "ts": text_ts,
                **{name: _six_decimals(table[name]) for name in PRICE_COLUMNS},
                "volume": table["volume"],
            }
        )

    # Group boundaries: (pair, month) changes.
    change = np.flatnonzero((pair[1:] != pair[:-1]) | (month[1:] != month[:-1])) + 1
    bounds = np.concatenate([[0], change, [len(pair)]])
    groups = list(zip(bounds[:-1], bounds[1:]))
    paths: list[Path] = []
    header = (CSV_HEADER + "\n").encode()
    for lo, hi in tqdm(groups, desc=f"writing {fmt}", unit="file", disable=len(groups) <= 8, file=sys.stderr):
        name = _month_file(fmt, pair[lo], month[lo])
        part = table.slice(lo, hi - lo)
        with safe_files.atomic_writer(out_fd, name) as sink:
            if fmt == "parquet":
                pq.write_table(part, sink)
            elif fmt == "csv":
                sink.write(header)
                pacsv.write_csv(part, sink, pacsv.WriteOptions(include_header=False, quoting_style="none"))
            else:
                pacsv.write_csv(
                    part,
                    sink,
                    pacsv.WriteOptions(include_header=False, delimiter=HISTDATA_DELIMITER, quoting_style="none"),
                )
        paths.append(out_dir / name)
    return paths


def _pair_sort_key(name: str) -> tuple[int, str]:
    return (PAIRS.index(name), name) if name in PAIRS else (len(PAIRS), name)


def _whole_seconds(micros: np.ndarray) -> pa.Array:
    """Timestamps as timestamp[s] (strftime would print microseconds otherwise); a stamp with
    a fraction of a second is an error, not something to truncate silently."""
    if np.any(micros % 1_000_000):
        raise ValueError("ts_utc must be whole seconds (bars are whole minutes)")
    return pa.array(micros // 1_000_000, pa.timestamp("s", tz="UTC"))


def _six_decimals(values: pa.ChunkedArray) -> pa.Array:
    """Prices as HistData prints them, with six decimals (``1.081230``, ``160.123000``):
    integer and fraction formatted separately, which is exact for the 5-decimal prices and far
    faster than a per-value format string."""
    v = values.to_numpy()
    if not np.all(np.isfinite(v) & (v >= 0)):
        raise ValueError("histdata prices must be finite and >= 0")
    micro = np.round(v * 1_000_000).astype(np.int64)
    whole, frac = micro // 1_000_000, micro % 1_000_000
    frac_text = pc.utf8_lpad(pc.cast(pa.array(frac), pa.string()), width=6, padding="0")
    return pc.binary_join_element_wise(pc.cast(pa.array(whole), pa.string()), frac_text, ".")


# ----------------------------------------------------------------------------- command


def generate_command(
    start: str,
    end: str,
    pairs: list[str] | None,
    out: Path,
    fmt: str,
    seed: int = DEFAULT_SEED,
) -> list[Path]:
    """`bqx generate`: parse ISO dates, generate, write, print a one-line summary."""
    try:
        start_date, end_date = dt.date.fromisoformat(str(start)), dt.date.fromisoformat(str(end))
    except ValueError as exc:
        raise ValueError(f"dates must be ISO (YYYY-MM-DD): {exc}") from None
    if end_date <= start_date:
        raise ValueError(f"--end {end_date} must be after --start {start_date}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    bars = generate_bars(start_date, end_date, pairs or None, seed=seed)
    paths = write_bars(bars, Path(out), fmt)
    n_pairs = bars["pair"].nunique()
    print(
        f"generated {len(bars):,} bars for {n_pairs} pairs, {start_date} to {end_date} "
        f"(seed {seed}): {len(paths)} {fmt} files in {Path(out)}"
    )
    return paths
