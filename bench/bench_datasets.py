"""The dataset builder: extraction throughput three ways, then the whole builder's wall time and
peak memory, in one run on the shared benchmark database (28 pairs × 1 month, wave 1 built).

1. Extraction of marts.feature_matrix joined with marts.targets, every column, per pair
   (BENCH_EXTRACT_PAIRS pairs, the same rows for each reader), best of REPEAT:
   - `adbc`: the builder's reader, the ADBC PostgreSQL driver (binary COPY decoded into Arrow
     in C), record batches only (`extract.adbc.*`), and the builder's whole extraction step
     incl. float32 casts and the zstd Parquet file (`extract.adbc_parquet.*`);
   - `psycopg_copy_numpy`: psycopg binary COPY, the bytes parsed by one NumPy structured dtype
     (every column sent as float8 with NULL coalesced to NaN, so the rows have a fixed width;
     it loses the NULL/NaN distinction the validation needs, which only flatters it);
   - `psycopg_fetch`: the plain cursor a user would write, `cur.execute(...)`, `fetchall()`,
     one Python object per value.
   Rows/s and values/s (rows × columns); ratios against the plain cursor fetch.
2. `python python/build_datasets.py` on all pairs under `/usr/bin/time -v`: wall time and peak
   RSS (`builder.*`), the first (cold) run; goals at FX-year size: <= 5 minutes, <= 4 GiB.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PROJECT_DIR, bench_database, best_of, record  # noqa: E402

from bqx.catalog import feature_catalog  # noqa: E402
from bqx.project import dbt_vars  # noqa: E402
from bqx.datasets import extract as ex  # noqa: E402

REPEAT = 2
BENCH_EXTRACT_PAIRS = 4


def psycopg_copy_numpy(dsn: str, source: ex.PairSource, features: list[str], targets: list[str]) -> int:
    """Binary COPY parsed by NumPy; returns the rows read."""
    columns = [*features, *targets]
    query = ex.extraction_query(source, features, targets, wrap="coalesce({}::float8, 'NaN')").replace("matrix.pair,\n", "", 1)
    with psycopg.connect(dsn) as conn:  # booleans (session flags) go through int: no boolean -> float8 cast
        flags = [r[0] for r in conn.execute("select column_name from information_schema.columns where table_schema = 'marts' and table_name = 'feature_matrix' and data_type = 'boolean'")]
    for flag in flags:
        query = query.replace(f"coalesce(matrix.{flag}::float8,", f"coalesce(matrix.{flag}::int::float8,")
    sql = f"copy ({query}) to stdout (format binary)"
    record_type = np.dtype([("n", ">i2"), ("ts_len", ">i4"), ("ts", ">i8"), *[x for i in range(len(columns)) for x in ((f"l{i}", ">i4"), (f"v{i}", ">f8"))]])
    buffer = bytearray()
    with psycopg.connect(dsn) as conn, conn.cursor().copy(sql) as copy:
        for data in copy:
            buffer += data
    body = memoryview(buffer)[19:-2]  # header (signature, flags, extension) and trailer
    rows = np.frombuffer(body, dtype=record_type)
    values = np.empty((rows.size, len(columns)), dtype=np.float64)
    for i in range(len(columns)):
        values[:, i] = rows[f"v{i}"]
    return int(rows.size)


def psycopg_fetch(dsn: str, source: ex.PairSource, features: list[str], targets: list[str]) -> int:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(ex.extraction_query(source, features, targets)).fetchall()
    return len(rows)


def adbc_batches_only(dsn: str, source: ex.PairSource, features: list[str], targets: list[str]) -> int:
    return sum(batch.num_rows for batch in ex.adbc_batches(dsn, ex.extraction_query(source, features, targets)))


def main() -> int:
    catalog = feature_catalog(PROJECT_DIR)
    features = [f.matrix_column for f in catalog.features]
    targets = [t.column for t in catalog.targets]
    models = sorted({f.model for f in catalog.features})
    with bench_database("datasets") as bench:
        wave1 = bench.dbt("run", "--select", "tag:wave1")
        print(f"wave 1 built in {wave1:.0f} s")
        with psycopg.connect(bench.dsn) as conn:
            pairs = ex.pairs_with_bars(conn, list(dbt_vars()["pairs"]))
            sources = ex.describe_pairs(conn, pairs[:BENCH_EXTRACT_PAIRS], None, None, models)
        rows = sum(s.rows for s in sources)
        width = len(features) + len(targets) + 2
        seconds: dict[str, float] = {}
        with tempfile.TemporaryDirectory(prefix="bqx_extract_bench_") as tmp:
            readers = {
                "adbc": lambda: sum(adbc_batches_only(bench.dsn, s, features, targets) for s in sources),
                "adbc_parquet": lambda: len(ex.extract_pairs(bench.dsn, sources, features, targets, Path(tmp), reuse=False, progress=False)),
                "psycopg_copy_numpy": lambda: sum(psycopg_copy_numpy(bench.dsn, s, features, targets) for s in sources),
                "psycopg_fetch": lambda: sum(psycopg_fetch(bench.dsn, s, features, targets) for s in sources),
            }
            for name, action in readers.items():
                seconds[name], _ = best_of(REPEAT, action)
        what = f"{len(sources)} pairs × 1 month, {rows:,} rows × {width} columns, best of {REPEAT}"
        labels = {
            "adbc": "ADBC PostgreSQL driver, binary COPY into Arrow record batches (the builder's reader)",
            "adbc_parquet": "the builder's extraction step: ADBC + float32 casts + zstd Parquet file per pair",
            "psycopg_copy_numpy": "psycopg binary COPY parsed by a NumPy structured dtype (NULL sent as NaN)",
            "psycopg_fetch": "plain psycopg cursor.fetchall(), one Python object per value",
        }
        for name, value in seconds.items():
            record(f"extract.{name}.rows_per_s", rows / value, "rows/s", f"{labels[name]}; {what} (goal ≥ 100k rows/s at 300+ columns)")
            record(f"extract.{name}.values_per_s", rows * width / value, "values/s", f"{labels[name]}; {what}")
            if name != "psycopg_fetch":
                record(f"extract.ratio.{name}_over_fetch", seconds["psycopg_fetch"] / value, "×", f"{labels[name]} vs the plain cursor fetch, same rows, same run")

        with tempfile.TemporaryDirectory(prefix="bqx_builder_bench_") as tmp:
            env = dict(os.environ, BQX_PG_DSN=bench.dsn)
            command = ["/usr/bin/time", "-v", sys.executable, str(PROJECT_DIR / "python" / "build_datasets.py"), "--out", tmp, "--no-progress"]
            started = time.perf_counter()
            done = subprocess.run(command, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, check=False)
            wall = time.perf_counter() - started
            if done.returncode != 0:
                print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
                return 1
            peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
            print(done.stdout)
        size = f"{bench.pairs} pairs × 1 month ({bench.rows:,} bars)"
        record("builder.wall.s", wall, "s", f"python/build_datasets.py, cold (extraction, validation incl. look-ahead rebuilds, selection, datasets, models, report), {size} (goal at FX-year: ≤ 300 s)")
        record("builder.peak_rss.mib", peak_kib / 1024, "MiB", f"peak RSS of the builder (/usr/bin/time -v), {size} (goal at FX-year: ≤ 4096 MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
