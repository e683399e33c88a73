"""The peer: every wave-1 feature model's columns as a quant would compute them outside the
database, with NumPy/pandas (+TA-Lib), for the benchmarks (bench_peer.py, bench_technical.py,
bench_reg.py).

Data to data: `read_bars` reads the inputs out of staging.m1_index (binary COPY parsed by
NumPy, bqx.pgcopy), one function per model turns them into `Column`s, vectorised over all pairs
at once (`Bars.position` masks every window crossing a pair boundary), and `write_table` COPYs
them back in binary into a new table with its unique index on (pair, ts_utc). The windows come
from the dbt vars (bqx.project.dbt_vars()); each function names the macro it restates, whose YAML
gives every column's formula, warm-up and precision.

The bqx-domain models (*_bqx) read close_idx too and compute the series bqx_w<bqx_series_window>
in memory first (`bqx_series`), as a quant's script would: no intermediate table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import psycopg
import talib

from bqx import pgcopy
from bqx.project import dbt_vars

VARS: dict = dbt_vars()
US_PER_MINUTE = 60_000_000
PAIR_WIDTH = 6
WIRE = {"float8": ">f8", "int8": ">i8", "int4": ">i4"}  # read_bars' input kinds as they come over the wire
CHUNK_ROWS = 1 << 15  # rows per slice of a sliding-window computation: bounded memory
# The sessions of macros/features/time.sql (market_sessions, market_session_overlaps): a macro,
# not a var, so the peer restates them; the comparison with the SQL table catches any drift.
SESSIONS = (
    ("sydney", "Australia/Sydney", 7, 16),
    ("tokyo", "Asia/Tokyo", 9, 18),
    ("london", "Europe/London", 8, 17),
    ("new_york", "America/New_York", 8, 17),
)
SESSION_OVERLAPS = (("sydney", "tokyo"), ("tokyo", "london"), ("london", "new_york"))
REG_METRICS = ("a", "b", "c", "r2", "rmse", "endpoint")


# --------------------------------------------------------------------------------------------
# reading bars out, writing results back


@dataclass(frozen=True)
class Bars:
    """Columns of staging.m1_index ordered by (pair, ts_utc)."""

    pair: np.ndarray  # S6 pair codes
    ts_us: np.ndarray  # int64 µs since the Unix epoch
    values: dict[str, np.ndarray]  # float8 columns as float64 (NULL = NaN), bigint as int64
    position: np.ndarray  # 0-based bar number within the pair
    remaining: np.ndarray  # bars after this one in the pair

    def pair_bounds(self) -> list[tuple[int, int]]:
        """[start, end) of each pair's rows."""
        starts = np.flatnonzero(self.position == 0)
        return list(zip(starts.tolist(), np.r_[starts[1:], len(self.position)].tolist()))


def read_bars(conn: psycopg.Connection, columns: dict[str, str]) -> Bars:
    """`columns` (name → 'float8' | 'int8' | 'int4') of every bar, read with a binary COPY
    (bqx.pgcopy). A fixed row layout keeps the parse vectorised, so a nullable float8 comes out
    as NaN (coalesced to 'NaN' in the query); an integer column must hold no NULL."""
    selected = [
        f"coalesce({name}, 'NaN'::double precision) as {name}" if kind == "float8" else name
        for name, kind in columns.items()
    ]
    query = f"select {', '.join(['pair', 'ts_utc', *selected])} from staging.m1_index order by pair, ts_utc"
    wire = [f"S{PAIR_WIDTH}", ">i8", *(WIRE[kind] for kind in columns.values())]
    pair, ts_pg, *decoded = pgcopy.read_copy(conn, query, wire)
    first = np.r_[True, pair[1:] != pair[:-1]]
    starts = np.flatnonzero(first)
    lengths = np.diff(np.r_[starts, len(pair)])
    position = np.arange(len(pair)) - np.repeat(starts, lengths)
    remaining = np.repeat(lengths, lengths) - 1 - position
    values = {name: array.astype(np.float64 if kind == "float8" else np.int64)
              for (name, kind), array in zip(columns.items(), decoded)}  # fmt: skip
    return Bars(pair, ts_pg + pgcopy.PG_EPOCH_US, values, position, remaining)


@dataclass(frozen=True)
class Column:
    """One output column: float8 (NULL = NaN), bigint, integer or boolean with an optional NULL mask."""

    name: str
    pg_type: str  # 'double precision' | 'bigint' | 'integer' | 'boolean'
    values: np.ndarray
    null: np.ndarray | None = None

    def copy_column(self) -> pgcopy.CopyColumn:
        """The column as bqx.pgcopy sends it."""
        if self.pg_type == "double precision":
            return pgcopy.float8(self.values)  # NaN = NULL
        if self.pg_type == "bigint":
            return pgcopy.int8(self.values, self.null)
        if self.pg_type == "integer":
            return pgcopy.int4(self.values, self.null)
        return pgcopy.boolean(self.values, self.null)


def write_table(conn: psycopg.Connection, table: str, bars: Bars, columns: list[Column]) -> None:
    """A new `table` (pair, ts_utc, columns...) filled by a binary COPY (bqx.pgcopy; rows keep
    their order), then its unique index on (pair, ts_utc), committed."""
    conn.execute(f"drop table if exists {table}")
    definitions = ", ".join(f"{c.name} {c.pg_type}" for c in columns)
    conn.execute(f"create table {table} (pair text, ts_utc timestamptz, {definitions})")
    pgcopy.copy_into(
        conn,
        table,
        {
            "pair": pgcopy.text(bars.pair),
            "ts_utc": pgcopy.timestamptz(bars.ts_us),
            **{column.name: column.copy_column() for column in columns},
        },
    )
    conn.execute(f"create unique index on {table} (pair, ts_utc)")
    conn.commit()


def floats(names_values: dict[str, np.ndarray]) -> list[Column]:
    return [Column(name, "double precision", values) for name, values in names_values.items()]


# --------------------------------------------------------------------------------------------
# shared window helpers


def trailing_windows(values: np.ndarray, width: int, lo: int, hi: int, *, shift: int = 0) -> np.ndarray:
    """Rows lo .. hi-1 of the (n, width) view whose row t holds values[t-shift-width+1 .. t-shift]
    (NaN before the first value): a view, no copy."""
    start = lo - (width - 1 + shift)
    source = values[max(start, 0) : hi - shift]
    if start < 0:
        source = np.r_[np.full(-start, np.nan), source]
    return np.lib.stride_tricks.sliding_window_view(source, width)


def central_moments(series: np.ndarray, width: int, powers: int, extremes: bool = False) -> dict[str, np.ndarray]:
    """Per bar, over the `width` values ending at it (NaN if one is NaN, or before the first):
    `shift` = mean − y[t] and the central moments m2 .. m<powers> (divided by W), two-pass on
    deviations from y[t] (exact for nearby values, so a flat window gives exactly 0), plus
    `min` and `max`. Windows crossing a pair boundary are the caller's to mask."""
    n = len(series)
    out = {name: np.empty(n) for name in ("shift", *(f"m{k}" for k in range(2, powers + 1)))}
    if extremes:
        out |= {"min": np.empty(n), "max": np.empty(n)}
    for lo in range(0, n, CHUNK_ROWS):
        hi = min(lo + CHUNK_ROWS, n)
        window = trailing_windows(series, width, lo, hi)
        deviations = window - series[lo:hi, None]
        shift = deviations.mean(axis=1)
        centred = deviations - shift[:, None]
        squared = centred * centred
        out["shift"][lo:hi] = shift
        out["m2"][lo:hi] = squared.mean(axis=1)
        if powers >= 3:
            out["m3"][lo:hi] = (squared * centred).mean(axis=1)
        if powers >= 4:
            out["m4"][lo:hi] = (squared * squared).mean(axis=1)
        if extremes:
            out["min"][lo:hi] = window.min(axis=1)
            out["max"][lo:hi] = window.max(axis=1)
    return out


def window_sum(values: np.ndarray, width: int) -> np.ndarray:
    """Sum of the `width` values ending at each bar (NaN counted as 0), pandas' Kahan-compensated
    rolling sum; 0 exactly when they are all 0."""
    return pd.Series(np.nan_to_num(values)).rolling(width, min_periods=1).sum().to_numpy()


def non_null_part(series: np.ndarray, bars: Bars) -> list[tuple[int, int]]:
    """Per pair, [start, end) of its rows from the first non-NaN value of `series` on."""
    parts = []
    for lo, hi in bars.pair_bounds():
        valid = np.flatnonzero(~np.isnan(series[lo:hi]))
        parts.append((lo + (int(valid[0]) if len(valid) else hi - lo), hi))
    return parts


# --------------------------------------------------------------------------------------------
# the models, vectorised over all pairs at once


def bqx_values(close: np.ndarray, position: np.ndarray, width: int) -> np.ndarray:
    """macros/features/bqx.sql: (mean(close[t-W .. t-1]) − close[t]) / close[t], NaN for
    position < W; deviations from close[t], so a flat window gives exactly 0."""
    out = np.empty(len(close))
    for lo in range(0, len(close), CHUNK_ROWS):
        hi = min(lo + CHUNK_ROWS, len(close))
        window = trailing_windows(close, width, lo, hi, shift=1)
        out[lo:hi] = (window - close[lo:hi, None]).mean(axis=1) / close[lo:hi]
    return np.where(position >= width, out, np.nan)


def bqx_series(bars: Bars) -> np.ndarray:
    """The series the bqx-domain models read: bqx_w<bqx_series_window>."""
    return bqx_values(bars.values["close_idx"], bars.position, int(VARS["bqx_series_window"]))


def bqx_columns(bars: Bars) -> list[Column]:
    close = bars.values["close_idx"]
    return [
        Column("bar_number", "integer", bars.values["bar_number"]),
        *floats({f"bqx_w{w}": bqx_values(close, bars.position, w) for w in VARS["bqx_windows"]}),
    ]


def statistics_columns(series: np.ndarray, position: np.ndarray) -> list[Column]:
    """macros/features/statistics.sql: mean, std (ddof 1), skew and kurt as pandas' rolling
    skew/kurt define them (NULL on a flat window), min and max, per W of rolling_windows."""
    columns: dict[str, np.ndarray] = {}
    for w in map(int, VARS["rolling_windows"]):
        moments = central_moments(series, w, 4, extremes=True)
        full = position >= w - 1
        m2, m3, m4 = moments["m2"], moments["m3"], moments["m4"]
        with np.errstate(divide="ignore", invalid="ignore"):
            varying = m2 > 0
            skew = np.sqrt(w * (w - 1.0)) / (w - 2) * m3 / (m2 * np.sqrt(m2))
            kurt = (w - 1.0) / ((w - 2) * (w - 3)) * ((w + 1.0) * m4 / (m2 * m2) - 3 * (w - 1))
        values = {
            "mean": series + moments["shift"],
            "std": np.sqrt(m2 * w / (w - 1)),
            "skew": np.where(varying, skew, np.nan),
            "kurt": np.where(varying, kurt, np.nan),
            "min": moments["min"],
            "max": moments["max"],
        }
        columns |= {f"{metric}_w{w}": np.where(full, value, np.nan) for metric, value in values.items()}
    return floats(columns)


def bollinger_columns(series: np.ndarray, position: np.ndarray, width_relative: bool) -> list[Column]:
    """macros/features/bollinger.sql: mid ± k·sigma (population sigma, as TA-Lib BBANDS), width
    (relative to the mid on the rate domain), %b (NULL on a flat window)."""
    k = float(VARS["bollinger_k"])
    columns: dict[str, np.ndarray] = {}
    for w in map(int, VARS["bollinger_windows"]):
        moments = central_moments(series, w, 2)
        sigma = np.sqrt(moments["m2"])
        mid = series + moments["shift"]
        with np.errstate(divide="ignore", invalid="ignore"):
            values = {
                "mid": mid,
                "upper": mid + k * sigma,
                "lower": mid - k * sigma,
                "width": 2 * k * sigma / np.where(mid != 0, mid, np.nan) if width_relative else 2 * k * sigma,
                "pctb": np.where(sigma > 0, (k * sigma - moments["shift"]) / (2 * k * sigma), np.nan),
            }
        full = position >= w - 1
        columns |= {f"bb_{metric}_w{w}": np.where(full, value, np.nan) for metric, value in values.items()}
    return floats(columns)


def volatility_columns(series: np.ndarray, position: np.ndarray, log_returns: bool) -> list[Column]:
    """macros/features/volatility.sql: W-bar return, realised and bipower volatility and the
    efficiency ratio over the W one-bar returns ending at t (NULL unless all W exist)."""
    previous = np.r_[np.nan, series[:-1]]
    previous[position == 0] = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        returns = np.log(series / previous) if log_returns else series - previous
    size = np.abs(returns)
    product = size * np.r_[np.nan, size[:-1]]
    product[position == 0] = np.nan
    columns: dict[str, np.ndarray] = {}
    for w in map(int, VARS["volatility_windows"]):
        count = window_sum(~np.isnan(returns), w)
        full = (position >= w) & (count == w)
        start = np.r_[np.full(w, np.nan), series[:-w]][: len(series)]  # fewer bars than W: all NaN
        with np.errstate(divide="ignore", invalid="ignore"):
            window_return = np.log(series / start) if log_returns else series - start
        # clamped at 0: a compensated sum of non-negative terms can still round below 0
        path = np.maximum(window_sum(size, w), 0)
        values = {
            "ret": window_return,
            "rvol": np.sqrt(np.maximum(window_sum(size * size, w), 0)),
            "bpvol": np.sqrt(np.pi / 2 * np.maximum(window_sum(product, w - 1), 0)),
            "er": np.where(path > 0, np.minimum(np.abs(window_return) / np.where(path > 0, path, 1), 1.0), np.nan),
        }
        columns |= {f"{metric}_w{w}": np.where(full, value, np.nan) for metric, value in values.items()}
    return floats(columns)


def talib_indicators(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> dict[str, np.ndarray]:
    """macros/features/technical.sql's columns for one pair's bars, by TA-Lib, periods from the vars."""
    fast, slow = sorted((int(VARS["macd_fast"]), int(VARS["macd_slow"])))
    macd, signal, hist = talib.MACD(close, fast, slow, int(VARS["macd_signal"]))
    slow_k, slow_d = talib.STOCH(
        high, low, close, int(VARS["stoch_fastk"]), int(VARS["stoch_slowk"]), talib.MA_Type.SMA,
        int(VARS["stoch_slowd"]), talib.MA_Type.SMA,
    )  # fmt: skip
    adx, cci = int(VARS["adx_period"]), int(VARS["cci_period"])
    return {
        **{f"rsi_{p}": talib.RSI(close, int(p)) for p in VARS["rsi_periods"]},
        "macd": macd,
        "macd_signal": signal,
        "macd_hist": hist,
        "stoch_k": slow_k,
        "stoch_d": slow_d,
        f"adx_{adx}": talib.ADX(high, low, close, adx),
        f"plus_di_{adx}": talib.PLUS_DI(high, low, close, adx),
        f"minus_di_{adx}": talib.MINUS_DI(high, low, close, adx),
        f"cci_{cci}": talib.CCI(high, low, close, cci),
    }


def technical_column_names() -> list[str]:
    """talib_indicators' columns, in order (technical_rate's and technical_bqx's)."""
    ramp = np.linspace(1.0, 2.0, 128)
    return list(talib_indicators(ramp, ramp, ramp))


def per_pair(
    bars: Bars, parts: Sequence[tuple[int, int]], compute: Callable[[int, int], dict[str, np.ndarray]]
) -> list[Column]:
    """Columns filled pair by pair (recursive indicators cannot be vectorised across pairs): NaN
    outside the given [start, end) parts."""
    columns: dict[str, np.ndarray] = {}
    for lo, hi in parts:
        if hi <= lo:
            continue
        for name, values in compute(lo, hi).items():
            columns.setdefault(name, np.full(len(bars.position), np.nan))[lo:hi] = values
    return floats(columns)


def technical_rate_columns(bars: Bars) -> list[Column]:
    high, low, close = (bars.values[c] for c in ("high_idx", "low_idx", "close_idx"))
    return per_pair(bars, bars.pair_bounds(), lambda lo, hi: talib_indicators(high[lo:hi], low[lo:hi], close[lo:hi]))


def technical_bqx_columns(bars: Bars) -> list[Column]:
    """TA-Lib with high = low = close = the BQX series, on its non-NULL part (technical_bqx.sql)."""
    series = bqx_series(bars)
    return per_pair(bars, non_null_part(series, bars), lambda lo, hi: talib_indicators(*(series[lo:hi],) * 3))


def reg_columns(series: np.ndarray, bars: Bars, relative_endpoint: bool) -> list[Column]:
    """macros/features/regression.sql per pair on the series' non-NULL part (reg_vectorised)."""
    windows = [int(w) for w in VARS["reg_windows"]]
    return per_pair(
        bars, non_null_part(series, bars), lambda lo, hi: reg_vectorised(series[lo:hi], windows, relative_endpoint=relative_endpoint)
    )


def volume_columns(bars: Bars) -> list[Column]:
    """macros/features/volume.sql: window sums of volume, volume² and signed volume exactly in
    int64 (cumulative sums differenced), Σ typical·volume with pandas' rolling sum."""
    volume = bars.values["volume"]
    close = bars.values["close_idx"]
    high, low = bars.values["high_idx"], bars.values["low_idx"]
    volume_f = volume.astype(np.float64)
    previous_close = np.r_[np.nan, close[:-1]]
    signed = np.where(close > previous_close, volume, np.where(close < previous_close, -volume, 0))
    signed[bars.position == 0] = 0  # no previous close: excluded by the full-window test below
    typical_volume = pd.Series((high + low + close) / 3 * volume_f)

    def exact_window_sum(values: np.ndarray, w: int) -> np.ndarray:
        running = np.r_[0, np.cumsum(values)]
        out = np.zeros(len(values), dtype=running.dtype)
        out[w - 1 :] = running[w:] - running[: len(values) - w + 1]
        return out

    columns: list[Column] = []
    for w in map(int, VARS["rolling_windows"]):
        total = exact_window_sum(volume, w)
        spread = w * exact_window_sum(volume * volume, w) - total * total  # W(W−1)·variance, exact
        signed_total = exact_window_sum(signed, w)
        price_volume = typical_volume.rolling(w).sum().to_numpy()
        has_volume = (bars.position >= w - 1) & (total > 0)
        total_f = np.where(has_volume, total, np.nan)
        std = np.sqrt(spread / (w * (w - 1)))
        with np.errstate(divide="ignore", invalid="ignore"):
            values = {
                "mean": total_f / w,
                "std": np.where(has_volume, std, np.nan),
                "z": np.where(has_volume & (spread > 0), (w * volume_f - total_f) / (w * std), np.nan),
                "ratio": w * volume_f / total_f,
                "imbalance": np.where(bars.position >= w, signed_total / total_f, np.nan),
                "vwap_dev": close * total_f / price_volume - 1,
            }
        columns += [Column(f"volume_{metric}_w{w}", "double precision", values[metric]) for metric in values]

    # volume_tod_ratio: mean volume at the same UTC minute of day among the previous N × 1440 bars
    # (a range over the bar number): per (pair, minute) group, cumulative sums and searchsorted
    tod_days = int(VARS.get("volume_tod_days", 5))  # the macro's default is 5 too
    tod_bars = tod_days * 1440
    minute = (bars.ts_us // US_PER_MINUTE) % 1440
    pair_index = np.cumsum(bars.position == 0) - 1
    group = pair_index * 1440 + minute
    order = np.argsort(group, kind="stable")  # within a group, bar order is kept
    key = group[order] * (1 << 32) + bars.position[order]
    first = np.searchsorted(key, key - tod_bars, side="left")
    running = np.r_[0, np.cumsum(volume[order])]
    here = np.arange(len(key))
    count = here - first
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = (running[here] - running[first]) / count
        ratio_sorted = np.where((bars.position[order] + 1 > tod_bars) & (count > 0) & (mean != 0),
                                volume_f[order] / mean, np.nan)  # fmt: skip
    ratio = np.empty(len(key))
    ratio[order] = ratio_sorted
    columns.append(Column(f"volume_tod_ratio_d{tod_days}", "double precision", ratio))
    return columns


def spread_columns(bars: Bars) -> list[Column]:
    """macros/features/spread.sql: mean, std (ddof 1, 0 on a constant window), z (NULL there),
    min and max of spread_bps, two-pass on each window (a NULL spread in the window: NaN;
    pandas' rolling std drifted to 2.4e-9 of the column's scale on z)."""
    spread = bars.values["spread_bps"]
    columns: dict[str, np.ndarray] = {}
    for w in map(int, VARS["rolling_windows"]):
        moments = central_moments(spread, w, 2, extremes=True)
        std = np.sqrt(moments["m2"] * w / (w - 1))
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(std > 0, -moments["shift"] / std, np.nan)
        values = {"mean": spread + moments["shift"], "std": std, "z": z, "min": moments["min"], "max": moments["max"]}
        full = bars.position >= w - 1
        columns |= {f"spread_bps_{metric}_w{w}": np.where(full, value, np.nan) for metric, value in values.items()}
    return floats(columns)


def time_columns(bars: Bars) -> list[Column]:
    """macros/features/time.sql: UTC fields by integer arithmetic, sessions from pandas' tz_convert."""
    minutes = bars.ts_us // US_PER_MINUTE
    minute_of_day = (minutes % 1440).astype(np.int32)
    day_of_week = ((minutes // 1440 + 3) % 7 + 1).astype(np.int32)  # 1970-01-01 was a Thursday (4)
    stamps = pd.DatetimeIndex(pd.to_datetime(bars.ts_us, unit="us", utc=True))
    columns = [
        Column("hour", "integer", minute_of_day // 60),
        Column("minute_of_day", "integer", minute_of_day),
        Column("day_of_week", "integer", day_of_week),
        Column("hour_sin", "double precision", np.sin(2 * np.pi * minute_of_day / 1440)),
        Column("hour_cos", "double precision", np.cos(2 * np.pi * minute_of_day / 1440)),
        Column("dow_sin", "double precision", np.sin(2 * np.pi * (day_of_week - 1) / 7)),
        Column("dow_cos", "double precision", np.cos(2 * np.pi * (day_of_week - 1) / 7)),
    ]
    minutes_into: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for city, zone, open_hour, close_hour in SESSIONS:
        # the local wall clock as minutes since 1970-01-01 00:00 local
        local = stamps.tz_convert(zone).tz_localize(None).to_numpy().astype("datetime64[m]").astype(np.int64)
        local_hour = (local % 1440) // 60
        local_dow = (local // 1440 + 3) % 7 + 1
        is_open = (local_dow <= 5) & (local_hour >= open_hour) & (local_hour < close_hour)
        minutes_into[city] = (((local % 1440) - open_hour * 60).astype(np.int32), is_open)
    columns += [Column(f"session_{city}", "boolean", minutes_into[city][1]) for city, *_ in SESSIONS]
    columns += [
        Column(f"session_overlap_{a}_{b}", "boolean", minutes_into[a][1] & minutes_into[b][1])
        for a, b in SESSION_OVERLAPS
    ]
    columns.append(Column("sessions_open", "integer", sum(m[1].astype(np.int32) for m in minutes_into.values())))
    columns += [
        Column(f"minutes_into_{city}", "integer", minutes_into[city][0], null=~minutes_into[city][1])
        for city, *_ in SESSIONS
    ]
    return columns


def target_columns(bars: Bars) -> list[Column]:
    """macros/features/targets.sql: mean of the next H closes (pandas' rolling mean, shifted)."""
    close = pd.Series(bars.values["close_idx"])
    columns = []
    for h in map(int, VARS["target_horizons"]):
        future_mean = close.rolling(h).mean().shift(-h).to_numpy()
        values = np.where(bars.remaining >= h, (future_mean - close.to_numpy()) / close.to_numpy(), np.nan)
        columns.append(Column(f"target_bqx_h{h}", "double precision", values))
    return columns


def gap_spans() -> dict[str, int]:
    """The bars each gap flag covers: macros/catalog/feature_families.sql's window_span per
    gap_window (a Jinja registry, not a var, so restated here from the vars; the comparison with
    the SQL table catches any drift)."""
    series, rolling = int(VARS["bqx_series_window"]), max(map(int, VARS["rolling_windows"]))
    return {
        "bqx": max(map(int, VARS["bqx_windows"])) + 1,
        "reg": max(map(int, VARS["reg_windows"])) + series,
        "bollinger": max(map(int, VARS["bollinger_windows"])) + series,
        "rolling": max(rolling + series, rolling + 1, rolling),  # statistics, volume, spread
        "volatility": max(map(int, VARS["volatility_windows"])) + series + 1,
    }


def data_quality_columns(bars: Bars) -> list[Column]:
    """macros/features/data_quality.sql: minutes since the previous bar, the run of equal closes,
    the spike score and flag against the σ of the previous spike_window returns, gap flags."""
    gap_limit = float(VARS.get("gap_limit_minutes", 5))  # the macro's defaults, as it states them
    spike_window = int(VARS.get("spike_window", 60))
    spike_multiple = float(VARS.get("spike_sigma_multiple", 10))
    first = bars.position == 0
    close = bars.values["close_idx"]
    minutes = np.r_[0, np.diff(bars.ts_us) // US_PER_MINUTE]
    index = np.arange(len(close))
    changed = first | np.r_[True, close[1:] != close[:-1]]
    run = index - np.maximum.accumulate(np.where(changed, index, 0)) + 1
    with np.errstate(divide="ignore", invalid="ignore"):
        returns = np.where(first, np.nan, np.log(close / np.r_[np.nan, close[:-1]]))
    previous = np.r_[np.nan, returns[:-1]]  # the σ window ends at t-1
    m2 = central_moments(previous, spike_window, 2)["m2"]
    sigma = np.sqrt(m2 * spike_window / (spike_window - 1))
    scored = bars.position >= spike_window + 1
    size = np.abs(returns)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(scored & (sigma > 0), size / sigma, np.nan)
    # bar numbers from 1 as the macro counts them; the last bar opening a gap, per pair
    number = bars.position + 1
    pair_start = index - bars.position
    gap_opened = ~first & (minutes > gap_limit)
    last_gap = np.maximum.accumulate(np.where(gap_opened, index, -1))
    last_gap_number = np.where(last_gap >= pair_start, last_gap - pair_start + 1, -(1 << 40))
    columns = [
        Column("minutes_since_prev_bar", "integer", minutes, null=first),
        Column("unchanged_close_run", "bigint", run),
        Column(f"spike_score_w{spike_window}", "double precision", score),
        Column(f"spike_flag_w{spike_window}", "boolean", size > spike_multiple * sigma, null=~scored),
    ]
    columns += [
        Column(f"gap_in_{name}_window", "boolean", last_gap_number >= number - (span - 2), null=number < span)
        for name, span in gap_spans().items()
    ]
    return columns


# --------------------------------------------------------------------------------------------
# REG: numpy.polyfit per window (the naive reference speed) and the macro's block algorithm
# vectorised (5.7e-10 of each column's largest value on r2, ~1e-11 elsewhere, against polyfit:
# it omits the SQL's exact-grid split of the sums, which only matters on near-flat windows)


def reg_column_names(windows: Sequence[int]) -> list[str]:
    return [f"reg_{metric}_w{window}" for window in windows for metric in REG_METRICS]


def reg_polyfit_window(window_values: np.ndarray, relative_endpoint: bool = True) -> tuple[float, ...]:
    """a, b, c, r2, rmse, endpoint of one window by numpy.polyfit (x = -(W-1) .. 0)."""
    width = len(window_values)
    x = np.arange(-(width - 1), 1, dtype=np.float64)
    a, b, c = np.polyfit(x, window_values, 2)
    residuals = window_values - ((a * x + b) * x + c)
    sse = float(residuals @ residuals)
    centred = window_values - window_values.mean()
    sst = float(centred @ centred)
    r2 = 1.0 - sse / sst if sst > 0 else float("nan")
    if relative_endpoint:
        endpoint = window_values[-1] / window_values[0] - 1.0
    else:
        endpoint = window_values[-1] - window_values[0]
    return a, b, c, r2, np.sqrt(sse / width), endpoint


def reg_polyfit_loop(y: np.ndarray, windows: Sequence[int], rows: int) -> int:
    """The naive per-row loop on the last `rows` bars of one pair; returns the windows fitted."""
    fitted = 0
    for end in range(len(y) - rows, len(y)):
        for window in windows:
            if end + 1 >= window:
                reg_polyfit_window(y[end + 1 - window : end + 1])
                fitted += 1
    return fitted


def _block_running_sums(values: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Running sums restarting every `block` elements, and each element's block total."""
    n = len(values)
    blocks = -(-n // block)
    padded = np.zeros(blocks * block)
    padded[:n] = values
    running = np.cumsum(padded.reshape(blocks, block), axis=1)
    totals = np.repeat(running[:, -1], block)[:n]
    return running.reshape(-1)[:n], totals


def reg_vectorised(
    y: np.ndarray, windows: Sequence[int], block: int = 640, relative_endpoint: bool = True
) -> dict[str, np.ndarray]:
    """Every REG column for one pair's series y (NaN where SQL gives NULL)."""
    n = len(y)
    half = block // 2
    index = np.arange(n)
    local = (index % block - half).astype(np.float64)
    block_start = index - index % block
    # reference: the bar before the block (the first bar for block 0), as the SQL does
    reference = np.where(block_start == 0, y[0], y[np.maximum(block_start - 1, 0)])
    z = y - reference
    terms = (z, local * z, local * local * z, z * z)
    running, totals = zip(*(_block_running_sums(term, block) for term in terms))
    exclusive = [p - term for p, term in zip(running, terms)]
    suffix = [t - x for t, x in zip(totals, exclusive)]
    next_reference = np.empty(n)
    last_of_block = np.minimum(block_start + block - 1, n - 1)
    next_reference[:] = y[last_of_block]
    changed = np.ones(n, dtype=bool)
    changed[1:] = y[1:] != y[:-1]
    last_change = np.maximum.accumulate(np.where(changed, index, -1))
    # moments about the current bar, shared by every window
    p0, p1, p2, pq = running
    a1 = p1 - local * p0
    a2 = p2 - 2.0 * local * p1 + local * local * p0
    out: dict[str, np.ndarray] = {}
    for window in windows:
        m = -(window - 1) / 2.0
        k = (window * window - 1) / 12.0
        su = window * (window * window - 1) / 12.0
        sp = window * (window * window - 1) * (window * window - 4) / 180.0
        t = np.arange(window - 1, n)
        s = t - (window - 1)
        d = local[s] + (window - 1) / 2.0
        same = local[s] <= half - window
        n_prev = np.where(same, 0.0, half - local[s])
        delta = np.where(same, 0.0, next_reference[s] - reference[s])
        u1 = n_prev * m + n_prev * (n_prev - 1.0) / 2.0
        u2 = n_prev * m * m + m * n_prev * (n_prev - 1.0) + (n_prev - 1.0) * n_prev * (2.0 * n_prev - 1.0) / 6.0
        base = [np.where(same, -x[s], r[s]) for x, r in zip(exclusive, suffix)]
        l0 = base[0] - delta * n_prev
        l1 = base[1] - d * base[0] - delta * u1
        l2 = base[2] - 2.0 * d * base[1] + d * d * base[0] - delta * u2
        lq = base[3] - 2.0 * delta * base[0] + delta * delta * n_prev
        s0 = p0[t] + l0
        s1 = a1[t] - m * p0[t] + l1
        s2 = a2[t] - 2.0 * m * a1[t] + m * m * p0[t] + l2
        sq = pq[t] + lq
        flat = last_change[t] <= s
        beta1 = np.where(flat, 0.0, s1 / su)
        beta2 = np.where(flat, 0.0, (s2 - k * s0) / sp)
        sst = sq - s0 * s0 / window
        sse = np.where(flat, 0.0, np.maximum(sst - beta1 * beta1 * su - beta2 * beta2 * sp, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = np.where(flat | (sst <= 0), np.nan, 1.0 - np.minimum(sse, sst) / sst)
        values = {
            "a": beta2,
            "b": beta1 - 2.0 * m * beta2,
            "c": reference[t] + s0 / window - m * beta1 + (m * m - k) * beta2,
            "r2": r2,
            "rmse": np.sqrt(sse / window),
            "endpoint": y[t] / y[s] - 1.0 if relative_endpoint else y[t] - y[s],
        }
        for metric, column in values.items():
            full = np.full(n, np.nan)
            full[window - 1 :] = column
            out[f"reg_{metric}_w{window}"] = full
    return out


# --------------------------------------------------------------------------------------------
# the registry: what each model reads and how its columns are computed


@dataclass(frozen=True)
class PeerModel:
    inputs: dict[str, str]  # m1_index columns read (name → float8 | int8)
    compute: Callable[[Bars], list[Column]]
    relation: str  # where dbt builds the model
    tolerance: float  # largest accepted max |peer − sql| / max |sql| of a float column
    why: str  # why that tolerance


CLOSE = {"close_idx": "float8"}
PLAIN = 1e-9  # the plain statistics: both sides are float8 on deviations or compensated sums
PLAIN_WHY = "plain window statistics, both sides on deviations from a bar in the window (YAML: within 1e-9)"


def _close(bars: Bars) -> np.ndarray:
    return bars.values["close_idx"]


PEER_MODELS: dict[str, PeerModel] = {
    "bqx": PeerModel({**CLOSE, "bar_number": "int4"}, bqx_columns, "features.bqx", PLAIN, PLAIN_WHY),
    "statistics_rate": PeerModel(
        CLOSE, lambda b: statistics_columns(_close(b), b.position), "features.statistics_rate", PLAIN, PLAIN_WHY
    ),
    "statistics_bqx": PeerModel(
        CLOSE, lambda b: statistics_columns(bqx_series(b), b.position), "features.statistics_bqx", PLAIN, PLAIN_WHY
    ),
    "bollinger_rate": PeerModel(
        CLOSE, lambda b: bollinger_columns(_close(b), b.position, True), "features.bollinger_rate", PLAIN, PLAIN_WHY
    ),
    "bollinger_bqx": PeerModel(
        CLOSE, lambda b: bollinger_columns(bqx_series(b), b.position, False), "features.bollinger_bqx", PLAIN, PLAIN_WHY
    ),
    "volatility_rate": PeerModel(
        CLOSE, lambda b: volatility_columns(_close(b), b.position, True), "features.volatility_rate", PLAIN,
        "SQL sums exact numeric terms, the peer Kahan-compensated float8 rolling sums (YAML: within 1e-9)",
    ),
    "volatility_bqx": PeerModel(
        CLOSE, lambda b: volatility_columns(bqx_series(b), b.position, False), "features.volatility_bqx", PLAIN,
        "as volatility_rate, on the peer's own BQX series",
    ),
    "technical_rate": PeerModel(
        {"high_idx": "float8", "low_idx": "float8", "close_idx": "float8"}, technical_rate_columns,
        "features.technical_rate", PLAIN, "TA-Lib itself is the reference (YAML: within 1e-9 of TA-Lib)",
    ),
    "technical_bqx": PeerModel(
        CLOSE, technical_bqx_columns, "features.technical_bqx", PLAIN,
        "TA-Lib on the peer's own BQX series (YAML: within 1e-9 of TA-Lib)",
    ),
    "reg_rate": PeerModel(
        CLOSE, lambda b: reg_columns(_close(b), b, True), "features.reg_rate", 1e-8,
        "r2 of near-flat windows is ill-conditioned and the peer omits the SQL's exact-grid split of the sums "
        "(5.7e-10 on r2 against numpy.polyfit)",
    ),
    "reg_bqx": PeerModel(
        CLOSE, lambda b: reg_columns(bqx_series(b), b, False), "features.reg_bqx", 1e-8, "as reg_rate",
    ),
    "volume_features": PeerModel(
        {"high_idx": "float8", "low_idx": "float8", "close_idx": "float8", "volume": "int8"}, volume_columns,
        "features.volume_features", PLAIN, "integer sums exact, Σ typical·volume by pandas' compensated rolling sum",
    ),
    "spread_features": PeerModel(
        {"spread_bps": "float8"}, spread_columns, "features.spread_features", PLAIN,
        PLAIN_WHY,
    ),
    "time_features": PeerModel({}, time_columns, "features.time_features", PLAIN, "closed forms of the minute"),
    "data_quality_features": PeerModel(
        CLOSE, data_quality_columns, "features.data_quality_features", PLAIN,
        "σ by two-pass NumPy against PostgreSQL's stddev_samp (Youngs-Cramer); integers and flags exact",
    ),
    "targets": PeerModel(CLOSE, target_columns, "marts.targets", PLAIN, "pandas' compensated rolling mean"),
}  # fmt: skip
