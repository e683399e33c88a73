"""The dataset builder: extraction throughput three ways, then the whole builder's wall time and
peak memory, in one run on its own database: 28 pairs × BENCH_BUILDER_MONTHS months (default 1; a
size of its own because the builder takes about 20 minutes per month on this machine, so an FX-year
`make bench` keeps it small unless asked), wave 1 built. It runs after bench_scale.py has dropped
its database (bench/run.py runs one script at a time).

1. Extraction of every feature column and every target, per pair (BENCH_EXTRACT_PAIRS pairs, the
   same rows for each reader), best of REPEAT:
   - `relations_pgcopy`: the builder's reader (bqx.datasets.extract.read_rows), every column as
     float8 (the form of a pair's first rows; after them the builder reads its float32 columns
     as float4): each feature model's and marts.targets' rows of the pair by index, each column
     packed by the server into one field (string_agg of the values' binary form) and decoded by
     bqx.pgcopy into NumPy, on two connections at once, put side by side in Arrow (keys
     checked, NULLs kept);
   - `relations_rowcopy`: the builder's reader before that: the same reads as one binary COPY
     row per bar (one message each), decoded by bqx.pgcopy.read_fixed_rows;
   - `builder_parquet`: the builder's whole extraction step, the above plus the float32 decision,
     the casts and the zstd Parquet file per pair;
   - `relations_adbc`: the same per-relation reads (same two connections, same threads, keys
     checked), each decoded by the ADBC PostgreSQL driver (binary COPY into Arrow in C) instead;
   - `view_adbc`: marts.feature_matrix left-joined with marts.targets, read by the ADBC
     PostgreSQL driver: the builder's first reader;
   - `view_pgcopy`: the same view query, every value sent as a never-NULL float8 (NULL as NaN,
     with the row's NULL count beside, as the builder's reader does), decoded by bqx.pgcopy;
   - `psycopg_fetch`: the plain cursor a user would write on the same view query,
     `cur.execute(...)`, `fetchall()`, one Python object per value: the baseline.
   Rows/s and values/s (rows × columns); ratios against the plain cursor fetch, and the 2 × 2 of
   decoder (ADBC, psycopg binary COPY + pgcopy) × source (per relation, the view). And the
   server's ceiling: the backend's CPU time producing the builder's per-relation COPYs (read and
   thrown away), spread over every core: no reader on this machine can beat it; every column as
   float8 (`server_copy_ceiling`) and in the builder's form, its float32 columns as float4
   (`server_copy_ceiling_float4`). With the builder's own CPU in its extraction step beside it
   (`machine_ceiling`: both sides' CPU spread over every core), the most the builder's
   extraction can reach on this machine with no core ever idle.
   BENCH_READERS=0 skips this part (an FX-year run of the builder alone: the plain cursor
   baseline alone would take ~8 minutes on 4 pairs × 12 months).
2. `python python/build_datasets.py` on all pairs under `/usr/bin/time -v`: wall time and peak
   RSS (`builder.*`), the first (cold) run, and each step's wall time as its closing note prints
   it (`builder.step.<step>.s`); goals at FX-year size: <= 5 minutes, <= 4 GiB. And the CPU it
   took: its own (`builder.cpu.client_s`), the server's (`builder.cpu.server_s`, the server's
   process tree, exited backends included) and the share of the machine they kept busy
   (`builder.cpu.busy_share`: near 1, the wall time falls only with less work or more cores).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_START, PROJECT_DIR, bench_database, bench_months, best_of, months_later, record, size_label  # noqa: E402

from bqx.catalog import FeatureCatalog, feature_catalog  # noqa: E402
from bqx.datasets import extract as ex  # noqa: E402
from bqx.project import dbt_vars  # noqa: E402

REPEAT = 2
BENCH_EXTRACT_PAIRS = 4


def relations_pgcopy(dsn: str, sources: list[ex.PairSource], catalog: FeatureCatalog) -> int:
    """The builder's reader, without the Parquet file; returns the rows read."""
    rows = 0
    with contextlib.ExitStack() as stack:
        conns = [stack.enter_context(ex.connect(dsn)) for _ in range(ex.READ_CONNECTIONS)]
        relations = ex.plan_relations(conns[0], catalog)
        for source in sources:
            keys = ex.read_keys_between(conns[0], source.pair, source.first_ts, source.last_ts)
            for start in range(0, keys.size, ex.ROW_GROUP_ROWS):
                chunk = keys[start : start + ex.ROW_GROUP_ROWS]
                columns = ex.read_rows(conns, relations, source.pair, chunk)
                rows += len(next(iter(columns.values())))
    return rows


def relations_rowcopy(dsn: str, sources: list[ex.PairSource], catalog: FeatureCatalog) -> int:
    """The builder's reads as one COPY row per bar (never-NULL float8 + NULL count, as the packed
    reader sends them), decoded by read_fixed_rows, two connections; returns the rows read."""
    from concurrent.futures import ThreadPoolExecutor

    from bqx import pgcopy

    rows = 0
    with contextlib.ExitStack() as stack:
        conns = [stack.enter_context(ex.connect(dsn)) for _ in range(ex.READ_CONNECTIONS)]
        relations = ex.plan_relations(conns[0], catalog)
        groups = [relations[i :: len(conns)] for i in range(len(conns))]
        for source in sources:
            keys = ex.read_keys_between(conns[0], source.pair, source.first_ts, source.last_ts)
            for start in range(0, keys.size, ex.ROW_GROUP_ROWS):
                chunk = keys[start : start + ex.ROW_GROUP_ROWS]
                first, last = (dt.datetime.fromtimestamp(int(us) / 1e6, dt.UTC) for us in (chunk[0], chunk[-1]))

                def read_group(index: int) -> int:
                    for relation in groups[index]:
                        query = sql.SQL("select ts_utc, num_nulls({}), {} from {} where pair = {} and ts_utc >= {} and ts_utc <= {} order by ts_utc").format(
                            sql.SQL(", ").join(sql.Identifier(c) for c in relation.columns),
                            sql.SQL(", ").join(ex._as_float8(c, t) for c, t in zip(relation.columns, relation.sql_types)),
                            sql.Identifier(*relation.name.split(".")),
                            sql.Literal(source.pair), sql.Literal(first), sql.Literal(last),
                        )  # fmt: skip
                        ts, *_ = pgcopy.read_copy(conns[index], query.as_string(conns[index]), [">i8", ">i4", *([">f8"] * len(relation.columns))])
                        if ts.size != chunk.size or (ts + pgcopy.PG_EPOCH_US != chunk).any():
                            raise RuntimeError(f"{relation.name}: keys differ")
                    return chunk.size

                with ThreadPoolExecutor(len(conns)) as pool:
                    rows += min(pool.map(read_group, range(len(conns))))
    return rows


def proc_stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name: [1] the parent's pid, [11] and [12]
    user and system ticks, [13] and [14] those of the children it has reaped."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def server_copy_cpu(dsn: str, sources: list[ex.PairSource], catalog: FeatureCatalog, float4: dict[str, frozenset[str]] | None = None) -> float | None:
    """The server's side alone: the builder's per-relation queries (packed columns) as binary COPY
    read and thrown away (no decoding), one connection; returns the backend's CPU seconds (/proc/<pid>/stat, user
    + system), or None when the server is not on this machine. PostgreSQL produces COPY output
    on one core per connection, so rows ÷ (these seconds ÷ cores) is the most any reader can get
    out of this machine with every core producing COPY output and none left for decoding.
    `float4`: per pair, the columns sent as float4 (the builder's form after a pair's first
    rows: its float32 columns); None sends every column as float8."""
    ticks = os.sysconf("SC_CLK_TCK")
    with ex.connect(dsn) as conn:
        pid = conn.execute("select pg_backend_pid()").fetchone()[0]
        if not Path(f"/proc/{pid}/stat").exists():
            return None

        def cpu() -> float:
            fields = proc_stat(pid)
            return (int(fields[11]) + int(fields[12])) / ticks

        conn.execute("set max_parallel_workers_per_gather = 0")
        relations = ex.plan_relations(conn, catalog)
        started = cpu()
        for source in sources:
            for relation in relations:
                narrow = (float4 or {}).get(source.pair, frozenset())
                query = ex.relation_query(relation, source.pair, source.first_ts, source.last_ts, narrow).as_string(conn)
                with conn.cursor().copy(f"copy ({query}) to stdout (format binary)") as copy:
                    for _block in copy:
                        pass
        return cpu() - started


def relations_adbc(dsn: str, sources: list[ex.PairSource], catalog: FeatureCatalog) -> int:
    """The builder's per-relation reads, each decoded by ADBC into Arrow (NULLs native)."""
    from concurrent.futures import ThreadPoolExecutor

    import adbc_driver_postgresql.dbapi as adbc
    import pyarrow as pa

    rows = 0
    with contextlib.ExitStack() as stack:
        quoting = stack.enter_context(ex.connect(dsn))
        relations = ex.plan_relations(quoting, catalog)
        conns = [stack.enter_context(adbc.connect(dsn)) for _ in range(ex.READ_CONNECTIONS)]
        cursors = [stack.enter_context(conn.cursor()) for conn in conns]
        for cur in cursors:
            cur.execute("set max_parallel_workers_per_gather = 0")
        groups = [relations[i :: len(conns)] for i in range(len(conns))]
        for source in sources:
            keys = ex.read_keys_between(quoting, source.pair, source.first_ts, source.last_ts)
            for start in range(0, keys.size, ex.ROW_GROUP_ROWS):
                chunk = keys[start : start + ex.ROW_GROUP_ROWS]
                first, last = (dt.datetime.fromtimestamp(int(us) / 1e6, dt.UTC) for us in (chunk[0], chunk[-1]))
                queries = [
                    [
                        sql.SQL("select ts_utc, {} from {} where pair = {} and ts_utc >= {} and ts_utc <= {} order by ts_utc").format(
                            sql.SQL(", ").join(sql.Identifier(c) for c in relation.columns),
                            sql.Identifier(*relation.name.split(".")),
                            sql.Literal(source.pair), sql.Literal(first), sql.Literal(last),
                        ).as_string(quoting)
                        for relation in group
                    ]
                    for group in groups
                ]  # fmt: skip

                def read_group(index: int) -> dict[str, pa.Array]:
                    columns = {}
                    for relation, query in zip(groups[index], queries[index]):
                        cursors[index].execute(query)
                        table = cursors[index].fetch_arrow_table()
                        ts = table.column("ts_utc").cast(pa.int64()).to_numpy()
                        if ts.size != chunk.size or (ts != chunk).any():
                            raise RuntimeError(f"{relation.name}: keys differ")
                        columns.update(zip(relation.output, table.columns[1:]))
                    return columns

                with ThreadPoolExecutor(len(conns)) as pool:
                    parts = list(pool.map(read_group, range(len(conns))))
                merged = {name: array for part in parts for name, array in part.items()}
                rows += len(next(iter(merged.values())))
    return rows


def view_pgcopy(dsn: str, sources: list[ex.PairSource], catalog: FeatureCatalog, features: list[str], targets: list[str]) -> int:
    """The view query, every value a never-NULL float8 with the row's NULL count, decoded by pgcopy."""
    from bqx import pgcopy

    rows = 0
    with ex.connect(dsn) as conn:
        conn.execute("set max_parallel_workers_per_gather = 0")
        types = {name: sql_type for relation in ex.plan_relations(conn, catalog) for name, sql_type in zip(relation.output, relation.sql_types)}
        for source in sources:
            sql_text = ex.extraction_query(source, features, targets)
            values = []
            for name in [*features, *targets]:
                table = "targets" if name in targets else "matrix"
                expression = f"{table}.{name}::int::float8" if types[name] == "boolean" else f"{table}.{name}::float8"
                values.append(f"coalesce({expression}, 'NaN')")
            qualified = [f"{'targets' if n in targets else 'matrix'}.{n}" for n in [*features, *targets]]
            # num_nulls takes at most 100 arguments
            nulls = "(" + " + ".join("num_nulls(" + ", ".join(qualified[i : i + 100]) + ")" for i in range(0, len(qualified), 100)) + ")::int4"
            head, tail = sql_text.split("\nfrom marts.feature_matrix", 1)
            query = f"select matrix.ts_utc, {nulls}, {', '.join(values)}\nfrom marts.feature_matrix{tail}"
            ts, *_ = pgcopy.read_copy(conn, query, [">i8", ">i4", *([">f8"] * len(values))])
            rows += ts.size
    return rows


def view_adbc(dsn: str, source: ex.PairSource, features: list[str], targets: list[str]) -> int:
    return sum(batch.num_rows for batch in ex.adbc_batches(dsn, ex.extraction_query(source, features, targets)))


def psycopg_fetch(dsn: str, source: ex.PairSource, features: list[str], targets: list[str]) -> int:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(ex.extraction_query(source, features, targets)).fetchall()
    return len(rows)


def main() -> int:
    catalog = feature_catalog(PROJECT_DIR)
    features = [f.matrix_column for f in catalog.features]
    targets = [t.column for t in catalog.targets]
    models = sorted({f.model for f in catalog.features})
    months = bench_months("BENCH_BUILDER_MONTHS")
    if months == 0:
        print("BENCH_BUILDER_MONTHS=0: the extraction readers and the dataset builder are skipped")
        return 0
    with bench_database("datasets", end=months_later(BENCH_START, months)) as bench:
        wave1 = bench.dbt("run", "--select", "tag:wave1")
        print(f"wave 1 built in {wave1:.0f} s")
        with psycopg.connect(bench.dsn) as conn:
            pairs = ex.pairs_with_bars(conn, list(dbt_vars()["pairs"]))
            sources = ex.describe_pairs(conn, pairs[:BENCH_EXTRACT_PAIRS], None, None, models)
        rows = sum(s.rows for s in sources)
        width = len(features) + len(targets) + 2
        if os.environ.get("BENCH_READERS", "1") != "0":
            _readers(bench, sources, catalog, features, targets, months, rows, width)
        _builder(bench, months)
    return 0


def _readers(bench: Any, sources: list, catalog: Any, features: list[str], targets: list[str], months: int, rows: int, width: int) -> None:
    """Part 1 of the module doc: the readers on the same rows, and the server's ceiling."""
    seconds: dict[str, float] = {}
    extracted: list[ex.PairExtract] = []
    client_cpu: list[float] = []  # the builder's own CPU (every thread of this process) per run

    def builder_parquet(folder: Path) -> int:
        started = time.process_time()
        extracted[:] = ex.extract_pairs(bench.dsn, sources, catalog, folder, reuse=False, progress=False)
        client_cpu.append(time.process_time() - started)
        return len(extracted)

    with tempfile.TemporaryDirectory(prefix="bqx_extract_bench_") as tmp:
        readers = {
            "relations_pgcopy": lambda: relations_pgcopy(bench.dsn, sources, catalog),
            "builder_parquet": lambda: builder_parquet(Path(tmp)),
            "relations_rowcopy": lambda: relations_rowcopy(bench.dsn, sources, catalog),
            "relations_adbc": lambda: relations_adbc(bench.dsn, sources, catalog),
            "view_adbc": lambda: sum(view_adbc(bench.dsn, s, features, targets) for s in sources),
            "view_pgcopy": lambda: view_pgcopy(bench.dsn, sources, catalog, features, targets),
            "psycopg_fetch": lambda: sum(psycopg_fetch(bench.dsn, s, features, targets) for s in sources),
        }
        for name, action in readers.items():
            seconds[name], _ = best_of(REPEAT, action)
    what = f"{len(sources)} pairs × {months} month{'s' if months != 1 else ''} ({BENCH_START:%Y-%m-%d} .. {months_later(BENCH_START, months):%Y-%m-%d}), {rows:,} rows × {width} columns, best of {REPEAT}"
    labels = {
        "relations_pgcopy": "the builder's reader, every column as float8: each relation by index, its columns packed by the server (string_agg of each value's binary form) into one COPY row, decoded by bqx.pgcopy, two connections, side by side in Arrow",
        "relations_rowcopy": "the builder's reader before the packed columns: each relation by index, one binary COPY row per bar decoded by bqx.pgcopy.read_fixed_rows, two connections",
        "builder_parquet": "the builder's extraction step: the reader + float32 decision and casts + zstd Parquet file per pair",
        "relations_adbc": "each relation by index as the builder reads them, two connections, decoded by the ADBC PostgreSQL driver (binary COPY into Arrow in C)",
        "view_adbc": "the feature_matrix view joined with targets, ADBC PostgreSQL driver (binary COPY into Arrow in C)",
        "view_pgcopy": "the feature_matrix view joined with targets, psycopg binary COPY of never-NULL float8 + NULL count, decoded by bqx.pgcopy",
        "psycopg_fetch": "plain psycopg cursor.fetchall() of the view query, one Python object per value",
    }
    for name, value in seconds.items():
        record(f"extract.{name}.rows_per_s", rows / value, "rows/s", f"{labels[name]}; {what} (goal ≥ 100k rows/s at 300+ columns)")
        record(f"extract.{name}.values_per_s", rows * width / value, "values/s", f"{labels[name]}; {what}")
        if name != "psycopg_fetch":
            record(f"extract.ratio.{name}_over_fetch", seconds["psycopg_fetch"] / value, "×", f"{labels[name]} vs the plain cursor fetch, same rows, same run; {what}")
    server_cpu = min(filter(None, (server_copy_cpu(bench.dsn, sources, catalog) for _ in range(REPEAT))), default=None)
    if server_cpu:
        cores = os.cpu_count() or 1
        record(
            "extract.server_copy_ceiling.rows_per_s", rows / (server_cpu / cores), "rows/s",
            f"the server's side alone: PostgreSQL's CPU time producing the builder's per-relation packed COPYs "
            f"({server_cpu:.2f} s of backend CPU, read and thrown away, no decoding) spread over all {cores} cores: "
            f"the most any reader can extract on this machine ({rows * width / server_cpu:,.0f} values/s per core); {what} "
            f"(goal ≥ 100k rows/s at 300+ columns)",
        )  # fmt: skip
    # the builder's own form: its float32 columns as float4 (it sends a pair's first
    # PRECISION_ROWS rows as float8 to decide them: here every row is sent in the later form)
    float4 = {e.pair: frozenset(features) - set(e.float64_columns) for e in extracted}
    server_cpu = min(filter(None, (server_copy_cpu(bench.dsn, sources, catalog, float4) for _ in range(REPEAT))), default=None)
    if server_cpu:
        cores = os.cpu_count() or 1
        narrow = sum(len(v) for v in float4.values()) / max(len(float4), 1)
        record(
            "extract.server_copy_ceiling_float4.rows_per_s", rows / (server_cpu / cores), "rows/s",
            f"the server's side alone as extract.server_copy_ceiling, in the builder's form: the float32 columns "
            f"({narrow:.0f} per pair) sent as float4, every row (the builder sends a pair's first {ex.PRECISION_ROWS:,} rows as "
            f"float8); {server_cpu:.2f} s of backend CPU over {cores} cores; {what} (goal ≥ 100k rows/s at 300+ columns)",
        )  # fmt: skip
        client = min(client_cpu)
        record(
            "extract.machine_ceiling.rows_per_s", rows / ((server_cpu + client) / cores), "rows/s",
            f"rows ÷ ((the server's CPU in the builder's form, {server_cpu:.2f} s, + the builder's own CPU in its extraction step, "
            f"{client:.2f} s: decoding, casts, zstd Parquet, the validation's facts) ÷ {cores} cores): the builder's extraction "
            f"on this machine with every core busy and no idle time; {what} (goal ≥ 100k rows/s at 300+ columns)",
        )  # fmt: skip
    for decoder in ("pgcopy", "adbc"):
        record(
            f"extract.ratio.relations_over_view.{decoder}", seconds[f"view_{decoder}"] / seconds[f"relations_{decoder}"], "×",
            f"per relation vs the view, both decoded by {decoder} (> 1: per relation faster); same rows, same run; {what}",
        )  # fmt: skip
    for source in ("relations", "view"):
        record(
            f"extract.ratio.pgcopy_over_adbc.{source}", seconds[f"{source}_adbc"] / seconds[f"{source}_pgcopy"], "×",
            f"psycopg binary COPY + pgcopy vs ADBC, both reading {'per relation' if source == 'relations' else 'the view'} (> 1: pgcopy faster); same rows, same run; {what}",
        )  # fmt: skip
    record(
        "extract.ratio.packed_over_rowcopy", seconds["relations_rowcopy"] / seconds["relations_pgcopy"], "×",
        f"the builder's reader, columns packed by the server, vs one COPY row per bar (> 1: packed faster); same rows, same run; {what}",
    )  # fmt: skip


def server_tree_cpu(dsn: str) -> float | None:
    """CPU seconds (user + system) the server's processes have used so far: the postmaster, its
    live children (backends, parallel workers, background processes) and, through the
    postmaster's cutime/cstime, every child it has reaped (a connection closed meanwhile). The
    difference of two readings is the server's CPU between them, exited backends included.
    None when the server is not on this machine."""
    ticks = os.sysconf("SC_CLK_TCK")
    try:
        with psycopg.connect(dsn) as conn:
            backend = conn.execute("select pg_backend_pid()").fetchone()[0]
            postmaster = int(proc_stat(backend)[1])  # the backend's parent
        own = proc_stat(postmaster)
        total = sum(int(own[i]) for i in (11, 12, 13, 14))  # utime, stime, cutime, cstime
        for child in Path("/proc").glob("[0-9]*"):
            try:
                stat = proc_stat(int(child.name))
            except (OSError, ValueError):
                continue  # gone meanwhile: reaped, so counted in the postmaster's cutime/cstime
            if int(stat[1]) == postmaster:
                total += int(stat[11]) + int(stat[12]) + int(stat[13]) + int(stat[14])
        return total / ticks
    except OSError:
        return None


def _builder(bench: Any, months: int) -> None:
    """Part 2 of the module doc: the whole builder, cold, under /usr/bin/time -v."""
    with tempfile.TemporaryDirectory(prefix="bqx_builder_bench_") as tmp:
        env = dict(os.environ, BQX_PG_DSN=bench.dsn)
        command = ["/usr/bin/time", "-v", sys.executable, str(PROJECT_DIR / "python" / "build_datasets.py"), "--out", tmp, "--no-progress"]
        server_before = server_tree_cpu(bench.dsn)
        started = time.perf_counter()
        done = subprocess.run(command, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        server_after = server_tree_cpu(bench.dsn)
        if done.returncode != 0:
            print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(1)
        peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
        client_cpu = sum(float(re.search(rf"{kind} time \(seconds\): ([0-9.]+)", done.stderr).group(1)) for kind in ("User", "System"))
        print(done.stdout)
    size = f"{size_label(months, bench.pairs)}, {bench.rows:,} bars"
    record("builder.wall.s", wall, "s", f"python/build_datasets.py, cold (extraction, validation incl. look-ahead rebuilds, selection, datasets, models, report), {size} (goal at FX-year: ≤ 300 s)")
    record("builder.peak_rss.mib", peak_kib / 1024, "MiB", f"peak RSS of the builder (/usr/bin/time -v), {size} (goal at FX-year: ≤ 4096 MiB)")
    record("builder.cpu.client_s", client_cpu, "s", f"the builder's own CPU in that run, user + system of it and its threads (/usr/bin/time -v), {size}")
    if server_before is not None and server_after is not None:
        cores = os.cpu_count() or 1
        server_cpu = server_after - server_before
        record("builder.cpu.server_s", server_cpu, "s", f"the server's CPU during that run: its processes' user + system, exited backends included (the postmaster's reaped children), {size}")
        record(
            "builder.cpu.busy_share", (client_cpu + server_cpu) / (cores * wall), "ratio",
            f"(builder.cpu.client_s + builder.cpu.server_s) ÷ ({cores} cores × builder.wall.s): how much of the machine the run kept busy "
            f"(1: no core ever idle; the wall time can then only fall with less work or more cores), {size}",
        )  # fmt: skip
    steps = re.search(r"wall time per step: (.+)", done.stdout)
    for step, seconds in re.findall(r"([a-z][a-z ]*?) ([0-9.]+) s(?:,|$)", steps.group(1) if steps else ""):
        record(f"builder.step.{step.replace(' ', '_')}.s", float(seconds), "s", f"the builder's step '{step}' in that run (its closing note), {size}")


if __name__ == "__main__":
    sys.exit(main())
