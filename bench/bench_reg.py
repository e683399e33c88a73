"""REG benchmark: the SQL model reg_rate against NumPy, on 28 pairs × 1 month, in one run.

Figures (bench/results.json keys):
  reg.polyfit_loop.rows_per_s      numpy.polyfit per row and window (6 windows), on a sample
  reg.numpy_vectorised.rows_per_s  all REG columns vectorised in NumPy, including reading the
                                   index out of PostgreSQL (binary COPY) and writing the result
                                   back (binary COPY into a new table + its unique index)
  reg.sql.model.rows_per_s         the model's SQL alone: CREATE TABLE AS + unique index, what
                                   `dbt run` executes, without dbt's start-up
  reg.sql.dbt_run.rows_per_s       `dbt run --select reg_rate --full-refresh`, wall clock
  reg.sql_vs_polyfit_loop.ratio    model SQL rows/s ÷ polyfit loop rows/s (goal ≥ 100)
  reg.sql_vs_numpy.ratio           model SQL rows/s ÷ vectorised NumPy rows/s (goal ≥ 1)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchDatabase, bench_database, best_of, record  # noqa: E402
from peer_models import read_bars, reg_columns, reg_polyfit_loop, write_table  # noqa: E402

from bqx import pgcopy  # noqa: E402

from bqx.project import dbt_vars  # noqa: E402

WINDOWS: list[int] = dbt_vars()["reg_windows"]
POLYFIT_SAMPLE_ROWS = 1000
REPEAT = 2


def polyfit_loop_rows_per_s(bench: BenchDatabase) -> float:
    with psycopg.connect(bench.dsn) as conn:
        (y,) = pgcopy.read_copy(
            conn, "select close_idx from staging.m1_index where pair = 'EURUSD' order by ts_utc", [">f8"]
        )
    started = time.perf_counter()
    reg_polyfit_loop(y, WINDOWS, POLYFIT_SAMPLE_ROWS)
    return POLYFIT_SAMPLE_ROWS / (time.perf_counter() - started)


def numpy_vectorised_build(bench: BenchDatabase) -> int:
    """The peer's reg_rate round trip (bench/peer_models.py): read the index, every REG column per
    pair, binary COPY into a new table + its unique index."""
    with psycopg.connect(bench.dsn) as conn:
        bars = read_bars(conn, {"close_idx": "float8"})
        write_table(conn, "public.bench_reg_numpy", bars, reg_columns(bars.values["close_idx"], bars, True))
    return len(bars.position)


def compiled_model_sql(bench: BenchDatabase) -> str:
    """The SQL dbt compiled for reg_rate on its full-refresh run."""
    found = sorted(bench.target_path.glob("compiled/*/models/features/regression/reg_rate.sql"))
    if not found:
        raise FileNotFoundError(f"no compiled reg_rate.sql under {bench.target_path}")
    return found[0].read_text()


def sql_model_build(bench: BenchDatabase, model_sql: str) -> None:
    """What dbt runs for the model, without dbt: CREATE TABLE AS + the unique index."""
    with psycopg.connect(bench.dsn) as conn:
        conn.execute("drop table if exists public.bench_reg_sql")
        conn.execute(f"create table public.bench_reg_sql as {model_sql}")
        conn.execute("create unique index on public.bench_reg_sql (pair, ts_utc)")
        conn.commit()


def main() -> None:
    with bench_database("reg") as bench:
        rows = bench.rows
        size = f"{bench.pairs} pairs × 1 month, {rows:,} bars, {len(WINDOWS)} windows"
        print(f"REG benchmark on {size}", flush=True)

        loop = polyfit_loop_rows_per_s(bench)
        record(
            "reg.polyfit_loop.rows_per_s", loop, "rows/s",
            f"numpy.polyfit per row and window, {POLYFIT_SAMPLE_ROWS} rows of EURUSD × {len(WINDOWS)} windows",
        )

        # dbt first: it creates the model's composite type and writes the compiled SQL
        dbt_seconds = bench.dbt("run", "--select", "reg_rate", "--full-refresh")
        record(
            "reg.sql.dbt_run.rows_per_s", rows / dbt_seconds, "rows/s",
            f"dbt run --select reg_rate --full-refresh, wall {dbt_seconds:.1f} s incl. dbt start-up; {size}",
        )
        model_sql = compiled_model_sql(bench)
        sql_seconds, _ = best_of(REPEAT, lambda: sql_model_build(bench, model_sql))
        sql_rate = rows / sql_seconds
        record(
            "reg.sql.model.rows_per_s", sql_rate, "rows/s",
            f"the model's compiled SQL: create table as + unique index, best of {REPEAT}, "
            f"{sql_seconds:.2f} s; {size}",
        )

        numpy_seconds, _ = best_of(REPEAT, lambda: numpy_vectorised_build(bench))
        numpy_rate = rows / numpy_seconds
        record(
            "reg.numpy_vectorised.rows_per_s", numpy_rate, "rows/s",
            f"binary COPY out, NumPy (same block algorithm), binary COPY into a new table + unique index, "
            f"best of {REPEAT}, {numpy_seconds:.2f} s; {size}",
        )

        record("reg.sql_vs_polyfit_loop.ratio", sql_rate / loop, "×", "reg.sql.model ÷ reg.polyfit_loop (goal ≥ 100)")
        record("reg.sql_vs_numpy.ratio", sql_rate / numpy_rate, "×", "reg.sql.model ÷ reg.numpy_vectorised (goal ≥ 1)")


if __name__ == "__main__":
    main()
