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

The variants run interleaved in one process on one database, best of REPEAT each, so a burst
of machine load hits all of them. The two results are compared (max difference
over the column's largest |value|) so the race is between equal outputs.
"""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pandas as pd
import psycopg
import talib
from common import BenchDatabase, bench_database, record

from bqx import pgcopy

REPEAT = 3
COLUMNS = [
    "rsi_14", "rsi_21", "macd", "macd_signal", "macd_hist", "stoch_k", "stoch_d",
    "adx_14", "plus_di_14", "minus_di_14", "cci_20",
]  # fmt: skip
PANDAS_TABLE = "public.bench_technical_pandas"


def sql_build(bench: BenchDatabase) -> float:
    """Seconds dbt reports for building technical_rate from scratch."""
    bench.dbt("run", "--select", "technical_rate", "--full-refresh")
    results = json.loads((bench.target_path / "run_results.json").read_text())
    (node,) = [
        r for r in results["results"] if r["unique_id"].startswith("model.") and r["unique_id"].endswith(".technical_rate")
    ]
    return float(node["execution_time"])


def indicators(frame: pd.DataFrame) -> pd.DataFrame:
    """TA-Lib on one pair's bars (sorted by ts_utc)."""
    high, low, close = (frame[c].to_numpy(dtype=float) for c in ("high_idx", "low_idx", "close_idx"))
    macd, signal, hist = talib.MACD(close, 12, 26, 9)
    slow_k, slow_d = talib.STOCH(high, low, close, 14, 3, talib.MA_Type.SMA, 3, talib.MA_Type.SMA)
    return pd.DataFrame(
        {
            "pair": frame["pair"].to_numpy(),
            "ts_utc": frame["ts_utc"].to_numpy(),
            "rsi_14": talib.RSI(close, 14),
            "rsi_21": talib.RSI(close, 21),
            "macd": macd,
            "macd_signal": signal,
            "macd_hist": hist,
            "stoch_k": slow_k,
            "stoch_d": slow_d,
            "adx_14": talib.ADX(high, low, close, 14),
            "plus_di_14": talib.PLUS_DI(high, low, close, 14),
            "minus_di_14": talib.MINUS_DI(high, low, close, 14),
            "cci_20": talib.CCI(high, low, close, 20),
        }
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


def largest_difference(dsn: str) -> float:
    """Max over columns of max |sql - pandas| / max |pandas| (and NULL placement must agree)."""
    checks = ", ".join(
        f"max(abs(s.{c} - p.{c})) / nullif(max(abs(p.{c})), 0), "
        f"count(*) filter (where (s.{c} is null) <> (p.{c} is null))"
        for c in COLUMNS
    )
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            f"select {checks} from features.technical_rate as s "
            f"join {PANDAS_TABLE} as p on s.pair = p.pair and s.ts_utc = p.ts_utc"
        ).fetchone()
    errors, null_mismatches = row[0::2], row[1::2]
    if any(null_mismatches):
        raise AssertionError(f"NULL placement differs: {dict(zip(COLUMNS, null_mismatches))}")
    return max(float(e or 0.0) for e in errors)


def main() -> None:
    with bench_database("technical") as bench:
        sql_build(bench)  # warm-up: the hook creates the aggregate, caches fill
        sql_runs, csv_runs, binary_runs = [], [], []
        for _ in range(REPEAT):  # interleaved, so a burst of machine load hits every variant
            sql_runs.append(sql_build(bench))
            csv_runs.append(pandas_talib(bench.dsn, "csv"))
            binary_runs.append(pandas_talib(bench.dsn, "binary"))
        difference = largest_difference(bench.dsn)
    sql_seconds = min(sql_runs)
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
