"""technical_rate: the in-database build against pandas + TA-Lib doing the same job.

Both produce the 11 indicator columns of every bar of 28 pairs × 1 month and leave them in a
table with a unique index on (pair, ts_utc):

- SQL: `dbt run --select technical_rate --full-refresh`; the figure is the model's own
  execution time from dbt's run_results.json (create table as select + its index), without
  dbt's start-up and parsing, which are the same whatever the model does.
- pandas + TA-Lib: COPY the bars out of staging.m1_index (CSV into pandas), TA-Lib per pair,
  COPY the results back, then the same unique index. Two writers: DataFrame.to_csv into
  COPY FROM STDIN (what one usually writes), and a binary COPY stream built with numpy (the
  fastest we know; formatting 10M floats as text is most of the CSV variant's time).

- SQL without the aggregate: window_sums_sql() below, the smoothers as block-restarted window
  sums (the alternative macros/features/technical.yml measured and rejected), create table as
  + the same unique index, so `make bench` re-checks that choice.

The variants run interleaved in one process on one database, best of REPEAT each, so a burst
of machine load hits all of them. The results are compared with pandas + TA-Lib (max difference
over the column's largest |value|) so the race is between equal outputs.
"""

from __future__ import annotations

import io
import json
import math
import time

import numpy as np
import pandas as pd
import psycopg
from common import BenchDatabase, bench_database, record
from peer_models import talib_indicators, technical_column_names

from bqx import pgcopy

REPEAT = 3
COLUMNS = technical_column_names()
PANDAS_TABLE = "public.bench_technical_pandas"
WINDOW_SUMS_TABLE = "public.bench_technical_window_sums"


def sql_build(bench: BenchDatabase) -> float:
    """Seconds dbt reports for building technical_rate from scratch."""
    bench.dbt("run", "--select", "technical_rate", "--full-refresh")
    results = json.loads((bench.target_path / "run_results.json").read_text())
    (node,) = [
        r for r in results["results"] if r["unique_id"].startswith("model.") and r["unique_id"].endswith(".technical_rate")
    ]
    return float(node["execution_time"])


def indicators(frame: pd.DataFrame) -> pd.DataFrame:
    """TA-Lib on one pair's bars (sorted by ts_utc): the peer's (bench/peer_models.py)."""
    high, low, close = (frame[c].to_numpy(dtype=float) for c in ("high_idx", "low_idx", "close_idx"))
    return pd.DataFrame(
        {"pair": frame["pair"].to_numpy(), "ts_utc": frame["ts_utc"].to_numpy(), **talib_indicators(high, low, close)}
    )


def copy_binary(conn: psycopg.Connection, result: pd.DataFrame) -> None:
    """result into PANDAS_TABLE with a binary COPY built by NumPy (bqx.pgcopy: NULLs, the
    warm-up rows' NaNs, cost no per-row Python)."""
    stamps = pd.to_datetime(result["ts_utc"], utc=True).dt.tz_localize(None).to_numpy()
    columns = {
        "pair": pgcopy.text(result["pair"].to_numpy().astype("S6")),
        "ts_utc": pgcopy.timestamptz(stamps.astype("datetime64[us]").astype(np.int64)),
        **{column: pgcopy.float8(result[column].to_numpy(dtype=float)) for column in COLUMNS},
    }
    pgcopy.copy_into(conn, PANDAS_TABLE, columns)


def pandas_talib(dsn: str, writer: str = "csv") -> dict[str, float]:
    """Read, compute, write back (`csv`: DataFrame.to_csv into COPY, the usual way; `binary`:
    binary COPY built with numpy); seconds per phase and in total."""
    phases: dict[str, float] = {}
    started = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        buffer = io.BytesIO()
        query = (
            "copy (select pair, ts_utc, high_idx, low_idx, close_idx from staging.m1_index "
            "order by pair, ts_utc) to stdout (format csv)"
        )
        with conn.cursor().copy(query) as copy:
            for chunk in copy:
                buffer.write(chunk)
        buffer.seek(0)
        # ts_utc stays the server's text: it goes back unchanged
        bars = pd.read_csv(buffer, names=["pair", "ts_utc", "high_idx", "low_idx", "close_idx"], dtype={"ts_utc": str})
        phases["read"] = time.perf_counter() - started

        mark = time.perf_counter()
        result = pd.concat([indicators(group) for _, group in bars.groupby("pair", sort=False)], ignore_index=True)
        phases["compute"] = time.perf_counter() - mark

        mark = time.perf_counter()
        conn.execute(f"drop table if exists {PANDAS_TABLE}")
        conn.execute(
            f"create table {PANDAS_TABLE} (pair text, ts_utc timestamptz, "
            + ", ".join(f"{c} double precision" for c in COLUMNS)
            + ")"
        )
        if writer == "csv":
            text = io.StringIO()
            result.to_csv(text, header=False, index=False)  # repr of a float8 round-trips exactly
            with conn.cursor().copy(f"copy {PANDAS_TABLE} from stdin (format csv)") as copy:
                copy.write(text.getvalue())
        else:
            copy_binary(conn, result)
        conn.execute(f"create unique index on {PANDAS_TABLE} (pair, ts_utc)")
        conn.commit()
        phases["write"] = time.perf_counter() - mark
    phases["total"] = time.perf_counter() - started
    return phases


def largest_difference(dsn: str, table: str = "features.technical_rate") -> float:
    """Max over columns of max |table - pandas| / max |pandas| (and NULL placement must agree)."""
    checks = ", ".join(
        f"max(abs(s.{c} - p.{c})) / nullif(max(abs(p.{c})), 0), "
        f"count(*) filter (where (s.{c} is null) <> (p.{c} is null))"
        for c in COLUMNS
    )
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            f"select {checks} from {table} as s "
            f"join {PANDAS_TABLE} as p on s.pair = p.pair and s.ts_utc = p.ts_utc"
        ).fetchone()
    errors, null_mismatches = row[0::2], row[1::2]
    if any(null_mismatches):
        raise AssertionError(f"NULL placement differs: {dict(zip(COLUMNS, null_mismatches))}")
    return max(float(e or 0.0) for e in errors)


# --------------------------------------------------------------------------------------------
# The measured alternative to the smoothing aggregate (macros/functions/smoothers.sql): every
# smoother as window sums in plain SQL. Kept here, not in the models, because it measured slower
# (macros/features/technical.yml, "Measured choice"); `make bench` re-measures it beside the
# aggregate so the choice can be re-checked on another server or PostgreSQL version.
#
# Each smoother is a linear recursion y_t = beta * y_(t-1) + kappa_t * u_t (Wilder: beta =
# (n-1)/n; EMA: 1 - 2/(n+1)) with TA-Lib's seeds folded into kappa. Bars are cut into blocks of
# BLOCK_BARS; inside a block y_t = beta^j * (sum_(k<=t in block) kappa_k beta^(-j_k) u_k +
# beta^BLOCK_BARS * E), E the previous block's total of the same scaled terms (older blocks are
# dropped: their weight is below beta^BLOCK_BARS, 2e-44 for RSI 21). Both sums are one WindowAgg each over
# (pair order by z), z = bar + 2 * BLOCK_BARS * block, with RANGE frames that restart at block
# boundaries (current block up to the row; the previous block), so one sort serves all levels.
# MACD runs on the changes of the close (EMA - close obeys the same recursion), the signal by
# partial fractions (signal = cF * fast + cS * slow + cN * EMA9-like, no second level); ADX is a
# second level (Wilder over DX). Ratios (RSI, DI, DX) need no unscaling. Rate domain only (no
# NULL bars); ADX's "unchanged when DX is undefined" and flat runs longer than a block are not
# modelled: it is a lower bound of what an exact replacement would cost.
BLOCK_BARS = 2048  # beta^-BLOCK_BARS <= 1e198 for the fastest smoother (EMA 9)


def _f8(value: float) -> str:
    return f"{float(value)!r}::float8"


def window_sums_sql() -> str:
    """technical_rate's columns computed with block-restarted window sums instead of the aggregate."""
    rsi_periods, adx, (fast, slow, signal) = (14, 21), 14, (12, 26, 9)
    bars = BLOCK_BARS
    k_fast, k_slow, k_signal = 2 / (fast + 1), 2 / (slow + 1), 2 / (signal + 1)
    b_fast, b_slow, b_signal = 1 - k_fast, 1 - k_slow, 1 - k_signal
    c_fast = k_signal * b_fast / (b_fast - b_signal)
    c_slow = -k_signal * b_slow / (b_slow - b_signal)
    c_n = -(c_fast + c_slow)
    seed = slow + signal - 2  # first MACD output bar (33)
    # TA-Lib's seeds as weights on close_0..close_seed: slow/fast EMA SMA seeds, signal SMA seed
    def ema_weights(bar: int) -> tuple[np.ndarray, np.ndarray]:
        fw, sw = np.zeros(seed + 1), np.zeros(seed + 1)
        sw[:slow] = 1 / slow
        fw[slow - fast : slow] = 1 / fast
        for t in range(slow, bar + 1):
            fw *= b_fast; fw[t] += k_fast
            sw *= b_slow; sw[t] += k_slow
        return fw, sw
    signal_seed = sum((lambda f, s: (f - s) / signal)(*ema_weights(m)) for m in range(slow - 1, seed + 1))
    f_seed, s_seed = ema_weights(seed)
    n_weights = (signal_seed - c_fast * f_seed - c_slow * s_seed) / c_n  # sums to 1
    def kappa(weights: np.ndarray, seed_bar: int, beta: float) -> str:
        # EMA - close = beta * (previous EMA - previous close) - beta * change; the seed's weights
        # on close_k become minus the cumulated weight on the change of bar m
        cumulated = np.cumsum(weights)
        cases = " ".join(f"when {m} then {_f8(-cumulated[m - 1])}" for m in range(1, seed_bar + 1))
        return f"(case when inputs.i > {seed_bar} then {_f8(-beta)} else case inputs.i {cases} end end)"
    def scale(beta: float, seed_bar: int) -> str:
        return f"exp({_f8(-math.log(beta))} * (greatest(bars.i, {seed_bar}) - bars.i / {bars} * {bars}))"
    slow_w = np.full(slow, 1 / slow)
    fast_w = np.zeros(slow)
    fast_w[slow - fast :] = 1 / fast
    wilder = (adx - 1) / adx
    betas = {f"gain_{p}": (p - 1) / p for p in rsi_periods} | {f"loss_{p}": (p - 1) / p for p in rsi_periods}
    betas |= {"tr": wilder, "plus_dm": wilder, "minus_dm": wilder, "ema_fast": b_fast, "ema_slow": b_slow, "ema_n": b_signal}
    rsi_terms = []
    for p in rsi_periods:
        if p == adx:  # shares the DMI scale beta^-max(i, n - 1); RSI's seed ends one bar later
            factor, seed_scale = "inputs.scale_dmi", f"(case when inputs.i < {p} then {_f8(1 / p / wilder)} else {_f8(1 / p)} end)"
        else:
            factor, seed_scale = f"inputs.scale_rsi_{p}", _f8(1 / p)
        rsi_terms += [f"inputs.gain * {factor} * {seed_scale} as u_gain_{p}", f"inputs.loss * {factor} * {seed_scale} as u_loss_{p}"]
    extra_scales = "".join(f", {scale((p - 1) / p, p)} as scale_rsi_{p}" for p in rsi_periods if p != adx)
    lag_cols = ",\n    ".join(f"lag(s.h + s.l + s.c, {k}) over w / 3 as tp_{k}" for k in range(1, 20))
    mean = " + ".join([f"lag(s.h + s.l + s.c, {k}) over w / 3" for k in range(19, 0, -1)] + ["(s.h + s.l + s.c) / 3"])
    mad = " + ".join(["abs(bars.tp - bars.tm)"] + [f"abs(bars.tp_{k} - bars.tm)" for k in range(1, 20)])
    sums = ",\n    ".join(
        f"sum(scaled.u_{name}) over current_block + coalesce(sum(scaled.u_{name}) over previous_block * {_f8(beta**bars)}, 0)"
        f" as s_{name}"
        for name, beta in betas.items()
    )
    def unscale(beta: float, seed_bar: int, row: str) -> str:
        return f"exp({_f8(math.log(beta))} * (greatest({row}.i, {seed_bar}) - {row}.b * {bars}))"
    rsi = ",\n    ".join(
        f"case when smoothed.i >= {p} then case when smoothed.s_gain_{p} + smoothed.s_loss_{p} > 0 then "
        f"100 * (smoothed.s_gain_{p} / (smoothed.s_gain_{p} + smoothed.s_loss_{p})) else 0 end end as rsi_{p}"
        for p in rsi_periods
    )
    frames = (
        f"current_block as (partition by {{t}}.pair order by {{t}}.z range between {bars} preceding and current row), "
        f"previous_block as (partition by {{t}}.pair order by {{t}}.z range between {4 * bars} preceding and {bars} preceding)"
    )
    return f"""
with bars as (
  select s.pair, s.ts_utc, row_number() over w - 1 as i,
    s.c - lag(s.c) over w as change,
    case when lag(s.c) over w is not null then greatest(s.h - s.l, abs(s.h - lag(s.c) over w), abs(s.l - lag(s.c) over w)) end as tr,
    s.h - lag(s.h) over w as up_move, lag(s.l) over w - s.l as down_move,
    case when count(s.c) over w = 14 then
      case when abs(max(s.h) over w - min(s.l) over w) <= 1e-14 * (abs(max(s.h) over w) + abs(min(s.l) over w)) then 0
      else (s.c - min(s.l) over w) / ((max(s.h) over w - min(s.l) over w) / 100) end end as fast_k,
    (s.h + s.l + s.c) / 3 as tp, ({mean}) / 20 as tm,
    {lag_cols}
  from (select pair, ts_utc, high_idx as h, low_idx as l, close_idx as c from staging.m1_index) as s
  window w as (partition by s.pair order by s.ts_utc rows between 13 preceding and current row)
),
inputs as (
  select bars.pair, bars.ts_utc, bars.i, bars.fast_k, bars.change, bars.tr,
    greatest(bars.change, 0) as gain, greatest(-bars.change, 0) as loss,
    case when bars.up_move > 0 and bars.up_move > bars.down_move then bars.up_move else 0 end as plus_dm,
    case when bars.down_move > 0 and bars.down_move > bars.up_move then bars.down_move else 0 end as minus_dm,
    {scale(wilder, adx - 1)} as scale_dmi{extra_scales},
    {scale(b_slow, slow - 1)} as scale_slow, {scale(b_fast, slow - 1)} as scale_fast, {scale(b_signal, seed)} as scale_n,
    case when bars.tm is null then null when abs(bars.tp - bars.tm) <= 1e-14 * abs(bars.tm) then 0
      else coalesce((bars.tp - bars.tm) / (0.015 * nullif(greatest(({mad}) / 20, 1e-14 * abs(bars.tm)), 1e-14 * abs(bars.tm))), 0) end as cci
  from bars offset 0
),
scaled as (
  select inputs.pair, inputs.ts_utc, inputs.i, inputs.i / {bars} as b, inputs.i + inputs.i / {bars} * {2 * bars} as z,
    inputs.fast_k, inputs.cci, {", ".join(rsi_terms)},
    inputs.tr * inputs.scale_dmi as u_tr, inputs.plus_dm * inputs.scale_dmi as u_plus_dm, inputs.minus_dm * inputs.scale_dmi as u_minus_dm,
    inputs.change * inputs.scale_fast * {kappa(fast_w, slow - 1, b_fast)} as u_ema_fast,
    inputs.change * inputs.scale_slow * {kappa(slow_w, slow - 1, b_slow)} as u_ema_slow,
    inputs.change * inputs.scale_n * {kappa(n_weights, seed, b_signal)} as u_ema_n
  from inputs offset 0
),
smoothed as (
  select scaled.pair, scaled.ts_utc, scaled.i, scaled.b, scaled.z, scaled.cci,
    {sums},
    (lag(scaled.fast_k, 2) over current_block + lag(scaled.fast_k, 1) over current_block + scaled.fast_k) / 3 as slow_k,
    ((lag(scaled.fast_k, 4) over current_block + lag(scaled.fast_k, 3) over current_block + lag(scaled.fast_k, 2) over current_block) / 3
     + (lag(scaled.fast_k, 3) over current_block + lag(scaled.fast_k, 2) over current_block + lag(scaled.fast_k, 1) over current_block) / 3
     + (lag(scaled.fast_k, 2) over current_block + lag(scaled.fast_k, 1) over current_block + scaled.fast_k) / 3) / 3 as slow_d
  from scaled window {frames.format(t="scaled")}
),
outputs as (
  select smoothed.pair, smoothed.ts_utc, smoothed.i, smoothed.b, smoothed.z, smoothed.cci, smoothed.slow_k, smoothed.slow_d,
    {rsi},
    case when smoothed.i >= {adx} then case when smoothed.s_tr > 0 then 100 * (smoothed.s_plus_dm / smoothed.s_tr) else 0 end end as plus_di,
    case when smoothed.i >= {adx} then case when smoothed.s_tr > 0 then 100 * (smoothed.s_minus_dm / smoothed.s_tr) else 0 end end as minus_di,
    case when smoothed.i >= {adx} and smoothed.s_tr > 0 and (smoothed.s_plus_dm + smoothed.s_minus_dm) * 100 / smoothed.s_tr >= 1e-14
      then 100 * abs(smoothed.s_plus_dm - smoothed.s_minus_dm) / (smoothed.s_plus_dm + smoothed.s_minus_dm)
        * exp({_f8(-math.log(wilder))} * (greatest(smoothed.i, {2 * adx - 1}) - smoothed.b * {bars})) * {_f8(1 / adx)} end as u_adx,
    smoothed.s_ema_fast * {unscale(b_fast, slow - 1, "smoothed")} as fast_dev,
    smoothed.s_ema_slow * {unscale(b_slow, slow - 1, "smoothed")} as slow_dev,
    smoothed.s_ema_n * {unscale(b_signal, seed, "smoothed")} as n_dev
  from smoothed
),
adx_smoothed as (
  select outputs.*,
    sum(outputs.u_adx) over current_block + coalesce(sum(outputs.u_adx) over previous_block * {_f8(wilder**bars)}, 0) as s_adx
  from outputs window {frames.format(t="outputs")}
)
select a.pair, a.ts_utc, {", ".join(f"a.rsi_{p}" for p in rsi_periods)},
  case when a.i >= {seed} then a.fast_dev - a.slow_dev end as macd,
  case when a.i >= {seed} then {_f8(c_fast)} * a.fast_dev + {_f8(c_slow)} * a.slow_dev + {_f8(c_n)} * a.n_dev end as macd_signal,
  case when a.i >= {seed} then a.fast_dev - a.slow_dev - ({_f8(c_fast)} * a.fast_dev + {_f8(c_slow)} * a.slow_dev + {_f8(c_n)} * a.n_dev) end as macd_hist,
  case when a.slow_d is not null then a.slow_k end as stoch_k, a.slow_d as stoch_d,
  case when a.i >= {2 * adx - 1} then a.s_adx * {unscale(wilder, 2 * adx - 1, "a")} end as adx_{adx},
  a.plus_di as plus_di_{adx}, a.minus_di as minus_di_{adx}, a.cci as cci_20
from adx_smoothed as a
"""


def window_sums_build(dsn: str) -> float:
    """Seconds to build the same table with window_sums_sql() (create table as + unique index)."""
    query = window_sums_sql()
    with psycopg.connect(dsn) as conn:
        conn.execute(f"drop table if exists {WINDOW_SUMS_TABLE}")
        conn.commit()
        started = time.perf_counter()
        conn.execute(f"create table {WINDOW_SUMS_TABLE} as {query}")
        conn.execute(f"create unique index on {WINDOW_SUMS_TABLE} (pair, ts_utc)")
        conn.commit()
        return time.perf_counter() - started


def main() -> None:
    with bench_database("technical") as bench:
        sql_build(bench)  # warm-up: the hook creates the aggregate, caches fill
        sql_runs, window_runs, csv_runs, binary_runs = [], [], [], []
        for _ in range(REPEAT):  # interleaved, so a burst of machine load hits every variant
            sql_runs.append(sql_build(bench))
            window_runs.append(window_sums_build(bench.dsn))
            csv_runs.append(pandas_talib(bench.dsn, "csv"))
            binary_runs.append(pandas_talib(bench.dsn, "binary"))
        difference = largest_difference(bench.dsn)
        window_difference = largest_difference(bench.dsn, WINDOW_SUMS_TABLE)
    sql_seconds = min(sql_runs)
    window_seconds = min(window_runs)
    csv = min(csv_runs, key=lambda run: run["total"])
    binary = min(binary_runs, key=lambda run: run["total"])
    rows = f"{bench.rows:,} bars ({bench.pairs} pairs × 1 month)"

    def phases(run: dict[str, float]) -> str:
        return f"read {run['read']:.1f} s, TA-Lib {run['compute']:.1f} s, write back + index {run['write']:.1f} s"

    record(
        "technical_rate_sql_build_s", sql_seconds, "s",
        f"technical_rate full build in SQL (dbt's execution time of the model), {rows}, best of {REPEAT}",
    )  # fmt: skip
    record(
        "technical_rate_window_sums_sql_s", window_seconds, "s",
        f"same columns in plain SQL with block-restarted window sums instead of the smoothing aggregate "
        f"(window_sums_sql(), not used by the models), create table as + unique index, {rows}, best of {REPEAT} "
        f"({', '.join(f'{s:.1f}' for s in sorted(window_runs))} s; aggregate build {', '.join(f'{s:.1f}' for s in sorted(sql_runs))} s); "
        f"outputs agree with pandas + TA-Lib to {window_difference:.1e} of each column's scale",
    )  # fmt: skip
    record(
        "technical_rate_window_sums_over_aggregate", window_seconds / sql_seconds, "x",
        "window-sum build time / aggregate build time (> 1: the aggregate, which the models use, is faster)",
    )  # fmt: skip
    record(
        "technical_rate_pandas_talib_csv_s", csv["total"], "s",
        f"same columns with pandas + TA-Lib, results COPYed back as CSV (DataFrame.to_csv): {phases(csv)}; "
        f"best of {REPEAT}",
    )  # fmt: skip
    record(
        "technical_rate_pandas_talib_binary_s", binary["total"], "s",
        f"same, results COPYed back in binary format built with numpy: {phases(binary)}; best of {REPEAT}",
    )  # fmt: skip
    record(
        "technical_rate_sql_vs_pandas_csv", csv["total"] / sql_seconds, "x",
        f"pandas + TA-Lib (CSV COPY) time / SQL time (> 1: SQL faster); outputs agree to {difference:.1e} "
        "of each column's scale",
    )  # fmt: skip
    record(
        "technical_rate_sql_vs_pandas_binary", binary["total"] / sql_seconds, "x",
        "pandas + TA-Lib (binary COPY) time / SQL time (> 1: SQL faster)",
    )  # fmt: skip


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
