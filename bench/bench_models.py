"""Wave 1 build times, and four models against pandas/NumPy doing the same job, in one run.

On the shared benchmark database (bench/common.py: 28 pairs × 1 month of generated bars):

1. `dbt run --select tag:wave1 --full-refresh` once (the profile's threads): every model's
   execution time from run_results.json (`build.<model>.s`), their sum (`build.wave1_total.s`),
   the run's wall clock incl. dbt start-up and the on-run-start hook (`build.wave1_wall.s`) and
   bars per wall second (`build.wave1.bars_per_s`).
2. volume_features, spread_features, time_features and targets (technical_rate has its own
   benchmark, bench_technical.py) computed with pandas/NumPy, the whole round trip: the columns
   they need read out of staging.m1_index (binary COPY parsed by NumPy), the same output columns
   computed vectorised over all pairs at once (a window crossing a pair boundary is masked), the
   result COPYed back in binary into a new table, then its unique index on (pair, ts_utc); best
   of REPEAT (`pandas.<model>.s`). The SQL side is the model's execution time, best of the wave-1
   build and a rebuild of the four models alone (`--threads 1`, as the pandas side runs alone)
   (`sql.<model>.s`); `ratio.<model>.pandas_over_sql` > 1 means SQL is faster. The runs are
   interleaved (wave 1, pandas, SQL rebuild, pandas) so a burst of machine load hits both sides.
   Both outputs are compared afterwards (float columns: max |difference| over the column's
   largest |value|; integer and boolean columns and NULL placement: exact), so the race is
   between equal outputs.

Both directions use the project's binary COPY codec (bqx.pgcopy), which the loader uses too:
NULLs and integer and boolean columns cost no per-row Python.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchDatabase, bench_database, record  # noqa: E402

from bqx import pgcopy  # noqa: E402
from bqx.project import dbt_vars  # noqa: E402

VARS: dict = dbt_vars()
ROLLING_WINDOWS: list[int] = VARS["rolling_windows"]
TARGET_HORIZONS: list[int] = VARS["target_horizons"]
VOLUME_TOD_DAYS: int = int(VARS.get("volume_tod_days", 5))  # the macro's default is 5 too
REPEAT = 2
COMPARED = ("volume_features", "spread_features", "time_features", "targets")
# The sessions of macros/features/time.sql (market_sessions, market_session_overlaps): a macro,
# not a var, so the reference restates them; compare() catches any drift in the output.
SESSIONS = (
    ("sydney", "Australia/Sydney", 7, 16),
    ("tokyo", "Asia/Tokyo", 9, 18),
    ("london", "Europe/London", 8, 17),
    ("new_york", "America/New_York", 8, 17),
)
SESSION_OVERLAPS = (("sydney", "tokyo"), ("tokyo", "london"), ("london", "new_york"))

US_PER_MINUTE = 60_000_000
PAIR_WIDTH = 6


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


def read_bars(conn: psycopg.Connection, columns: dict[str, str]) -> Bars:
    """`columns` (name → 'float8' | 'int8') of every bar, read with a binary COPY (bqx.pgcopy).
    A fixed row layout keeps the parse vectorised, so a nullable float8 comes out as NaN
    (coalesced to 'NaN' in the query); an int8 column must hold no NULL."""
    selected = [
        f"coalesce({name}, 'NaN'::double precision) as {name}" if kind == "float8" else name
        for name, kind in columns.items()
    ]
    query = f"select {', '.join(['pair', 'ts_utc', *selected])} from staging.m1_index order by pair, ts_utc"
    wire = [f"S{PAIR_WIDTH}", ">i8", *(">f8" if kind == "float8" else ">i8" for kind in columns.values())]
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
    """One output column: float8 (NULL = NaN), int4 or bool with an optional NULL mask."""

    name: str
    pg_type: str  # 'double precision' | 'integer' | 'boolean'
    values: np.ndarray
    null: np.ndarray | None = None

    def copy_column(self) -> pgcopy.CopyColumn:
        """The column as bqx.pgcopy sends it."""
        if self.pg_type == "double precision":
            return pgcopy.float8(self.values)  # NaN = NULL
        if self.pg_type == "integer":
            return pgcopy.int4(self.values, self.null)
        return pgcopy.boolean(self.values, self.null)


def copy_binary(conn: psycopg.Connection, table: str, bars: Bars, columns: list[Column]) -> None:
    """COPY (pair, ts_utc, columns...) into `table` in binary format (bqx.pgcopy); rows keep their order."""
    pgcopy.copy_into(
        conn,
        table,
        {
            "pair": pgcopy.text(bars.pair),
            "ts_utc": pgcopy.timestamptz(bars.ts_us),
            **{column.name: column.copy_column() for column in columns},
        },
    )


# --------------------------------------------------------------------------------------------
# the columns, vectorised over all pairs at once


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

    def window_sum(values: np.ndarray, w: int) -> np.ndarray:
        running = np.r_[0, np.cumsum(values)]
        out = np.zeros(len(values), dtype=running.dtype)
        out[w - 1 :] = running[w:] - running[: len(values) - w + 1]
        return out

    columns: list[Column] = []
    for w in ROLLING_WINDOWS:
        total = window_sum(volume, w)
        spread = w * window_sum(volume * volume, w) - total * total  # W(W−1)·variance, exact
        signed_total = window_sum(signed, w)
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
    tod_bars = VOLUME_TOD_DAYS * 1440
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
    columns.append(Column(f"volume_tod_ratio_d{VOLUME_TOD_DAYS}", "double precision", ratio))
    return columns


def spread_columns(bars: Bars) -> list[Column]:
    """macros/features/spread.sql with pandas' rolling windows (a NULL spread in the window: NaN)."""
    spread = pd.Series(bars.values["spread_bps"])
    columns: list[Column] = []
    for w in ROLLING_WINDOWS:
        window = spread.rolling(w, min_periods=w)
        full = bars.position >= w - 1
        mean = np.where(full, window.mean().to_numpy(), np.nan)
        low, high = window.min().to_numpy(), window.max().to_numpy()
        flat = low == high
        std = np.where(flat, 0.0, window.std().to_numpy())
        std = np.where(full, std, np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(~flat & (std != 0), (spread.to_numpy() - mean) / std, np.nan)
        values = {
            "mean": mean, "std": std, "z": z, "min": np.where(full, low, np.nan), "max": np.where(full, high, np.nan),
        }  # fmt: skip
        columns += [Column(f"spread_bps_{metric}_w{w}", "double precision", values[metric]) for metric in values]
    return columns


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
    for h in TARGET_HORIZONS:
        future_mean = close.rolling(h).mean().shift(-h).to_numpy()
        values = np.where(bars.remaining >= h, (future_mean - close.to_numpy()) / close.to_numpy(), np.nan)
        columns.append(Column(f"target_bqx_h{h}", "double precision", values))
    return columns


@dataclass(frozen=True)
class PandasModel:
    inputs: dict[str, str]  # m1_index columns read (name → float8 | int8)
    compute: Callable[[Bars], list[Column]]
    relation: str  # where dbt builds the model


PANDAS_MODELS = {
    "volume_features": PandasModel(
        {"high_idx": "float8", "low_idx": "float8", "close_idx": "float8", "volume": "int8"},
        volume_columns, "features.volume_features",
    ),
    "spread_features": PandasModel({"spread_bps": "float8"}, spread_columns, "features.spread_features"),
    "time_features": PandasModel({}, time_columns, "features.time_features"),
    "targets": PandasModel({"close_idx": "float8"}, target_columns, "marts.targets"),
}  # fmt: skip


def pandas_table(model: str) -> str:
    return f"public.bench_pandas_{model}"


def pandas_round_trip(dsn: str, model: str) -> dict[str, float]:
    """Read, compute, write back + unique index; seconds per phase and in total."""
    spec = PANDAS_MODELS[model]
    phases: dict[str, float] = {}
    started = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        bars = read_bars(conn, spec.inputs)
        phases["read"] = time.perf_counter() - started
        mark = time.perf_counter()
        columns = spec.compute(bars)
        phases["compute"] = time.perf_counter() - mark
        mark = time.perf_counter()
        table = pandas_table(model)
        conn.execute(f"drop table if exists {table}")
        definitions = ", ".join(f"{c.name} {c.pg_type}" for c in columns)
        conn.execute(f"create table {table} (pair text, ts_utc timestamptz, {definitions})")
        copy_binary(conn, table, bars, columns)
        conn.execute(f"create unique index on {table} (pair, ts_utc)")
        conn.commit()
        phases["write"] = time.perf_counter() - mark
    phases["total"] = time.perf_counter() - started
    return phases


# --------------------------------------------------------------------------------------------
# the SQL side, and the comparison


def model_times(bench: BenchDatabase) -> dict[str, float]:
    """Execution time of every model of the last dbt run (run_results.json), by model name."""
    results = json.loads((bench.target_path / "run_results.json").read_text())
    return {
        r["unique_id"].split(".")[-1]: float(r["execution_time"])
        for r in results["results"]
        if r["unique_id"].startswith("model.")
    }


def compare(dsn: str, model: str) -> tuple[float, int]:
    """(max over float columns of max |sql − pandas| / max |sql|, count of rows where an integer
    or boolean value or a NULL placement differs), joined on (pair, ts_utc)."""
    relation = PANDAS_MODELS[model].relation
    with psycopg.connect(dsn) as conn:
        types = dict(
            conn.execute(
                "select column_name, data_type from information_schema.columns "
                "where table_schema = 'public' and table_name = %s and column_name not in ('pair', 'ts_utc')",
                (pandas_table(model).split(".")[1],),
            ).fetchall()
        )
        sql_columns = {
            name
            for (name,) in conn.execute(
                "select column_name from information_schema.columns where table_schema = %s and table_name = %s "
                "and column_name not in ('pair', 'ts_utc')",
                tuple(relation.split(".")),
            ).fetchall()
        }
        if sql_columns != set(types):
            raise AssertionError(f"{model}: columns differ: {sorted(sql_columns ^ set(types))}")
        checks = []
        for name, pg_type in types.items():
            if pg_type == "double precision":
                checks.append(f"max(abs(s.{name} - p.{name})) / nullif(max(abs(s.{name})), 0)")
        differing = " or ".join(
            f"(s.{n} is null) <> (p.{n} is null)" if t == "double precision" else f"s.{n} is distinct from p.{n}"
            for n, t in types.items()
        )
        checks.append(f"count(*) filter (where {differing})")
        checks.append("count(*)")
        row = conn.execute(
            f"select {', '.join(checks)}, (select count(*) from {relation}) from {relation} as s "
            f"join {pandas_table(model)} as p on s.pair = p.pair and s.ts_utc = p.ts_utc"
        ).fetchone()
    *errors, mismatched, joined, sql_rows = row
    if joined != sql_rows:
        raise AssertionError(f"{model}: {sql_rows} SQL rows, {joined} matched by the pandas table")
    return max((float(e or 0.0) for e in errors), default=0.0), int(mismatched)


def main() -> None:
    with bench_database("models") as bench:
        bars = bench.rows
        size = f"{bench.pairs} pairs × 1 month, {bars:,} bars"
        print(f"model benchmark on {size}", flush=True)

        wall = bench.dbt("run", "--select", "tag:wave1", "--full-refresh")
        wave1 = model_times(bench)
        pandas_runs: dict[str, list[dict[str, float]]] = {model: [] for model in COMPARED}
        for model in COMPARED:
            pandas_runs[model].append(pandas_round_trip(bench.dsn, model))
        # the four models again, alone and one at a time, like the pandas side
        bench.dbt("run", "--select", *COMPARED, "--full-refresh", "--threads", "1")
        solo = model_times(bench)
        for model in COMPARED:
            pandas_runs[model].append(pandas_round_trip(bench.dsn, model))
        agreement = {model: compare(bench.dsn, model) for model in COMPARED}

    for model, seconds in wave1.items():
        record(
            f"build.{model}.s", seconds, "s",
            f"dbt's execution time of {model} in `dbt run --select tag:wave1 --full-refresh` (the profile's "
            f"threads, BQX_DBT_THREADS, default 2: two models build at once); {size}",
        )  # fmt: skip
    total = sum(wave1.values())
    record(
        "build.wave1_total.s", total, "s",
        f"sum of the {len(wave1)} wave-1 models' execution times (build.<model>.s); {size}",
    )  # fmt: skip
    record(
        "build.wave1_wall.s", wall, "s",
        "wall clock of `dbt run --select tag:wave1 --full-refresh`, incl. dbt start-up, parsing and "
        f"the on-run-start hook; models build two at a time; {size}",
    )  # fmt: skip
    record(
        "build.wave1.bars_per_s", bars / wall, "bars/s",
        f"bars ÷ build.wave1_wall.s: bars per second whose rows of every wave-1 model are built "
        f"({bars / total:,.0f} bars/s on build.wave1_total.s); {size}",
    )  # fmt: skip
    for model in COMPARED:
        sql_seconds = min(wave1[model], solo[model])
        best = min(pandas_runs[model], key=lambda run: run["total"])
        error, mismatched = agreement[model]
        record(
            f"sql.{model}.s", sql_seconds, "s",
            f"{model} in SQL: best of dbt's execution time in the wave-1 build ({wave1[model]:.1f} s) and in a "
            f"rebuild of the compared models alone with --threads 1 ({solo[model]:.1f} s); {size}",
        )  # fmt: skip
        record(
            f"pandas.{model}.s", best["total"], "s",
            f"{model} with pandas/NumPy, best of {REPEAT}: binary COPY of the inputs out of staging.m1_index "
            f"{best['read']:.1f} s, compute {best['compute']:.1f} s, binary COPY into a new table + unique "
            f"index {best['write']:.1f} s; outputs agree with SQL to {error:.1e} of each float column's "
            f"largest |value|, {mismatched} rows with a differing integer, boolean or NULL",
        )  # fmt: skip
        record(
            f"ratio.{model}.pandas_over_sql", best["total"] / sql_seconds, "×",
            f"pandas.{model}.s ÷ sql.{model}.s (> 1: SQL faster; goal ≥ 1)",
        )  # fmt: skip


if __name__ == "__main__":
    main()
