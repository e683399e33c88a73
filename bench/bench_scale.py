"""The store at a chosen size, phase by phase, on ONE database: `BENCH_MONTHS` months of 28 pairs
(default 1; 12 = FX-year, ~10.3M bars) from 2024-07-01, then one more day.

Phases, in order, on the same throw-away database (an FX-year database is tens of GB: the disk
holds one, so no phase builds its own):

1. `generate`: bqx.generate's bars for the months and the extra day, written as csv files
   (one per pair and month) — the files an operator would load.
2. `load`: `bqx load` of the months' files into the empty database (the CLI, a subprocess).
3. `build`: `dbt run --select tag:wave1 --full-refresh` (the profile's threads): wall clock
   incl. dbt start-up, and every model's execution time from run_results.json.
4. `test`: `dbt test --select tag:wave1` on that build: every data test over every row (a plain
   dbt test is the full check); wall clock, the slowest tests from run_results.json.
5. `increment`: `bqx load` of the extra day (28 × 1,440 bars), then `bqx build` (the CLI: dbt
   build of the models and the tests on the rows written, then its small audit), wall clock
   incl. dbt start-up. Its ratio to the full build with its tests (3 + 4, dbt started twice
   there: a few seconds more than one `dbt build`) is issue 10's figure (goal ≤ 3% at 12 months).
6. `extract`: the dataset builder's extraction step (bqx.datasets.extract.extract_pairs: every
   feature and target column of a pair into zstd Parquet) for BENCH_EXTRACT_PAIRS pairs.

Each phase records its wall time, rows per second, the peak memory of the server (sum of the
proportional set size, PSS, of the postmaster and its children, sampled every 0.5 s) and of the
client side (this process and its children: the CLI, dbt), and the database and disk sizes after
it. The keys are `months_<N>.<phase>.*`, so a default run does not overwrite an FX-year one;
every note states the size. The PostgreSQL settings that matter and the machine go to
bench/environment.json and the head of results.md.

Disk: free space on the database's volume is watched every 0.5 s; below BENCH_MIN_FREE_GB
(default 5) the bench ends the server's sessions, drops its database, destroys the server and
fails, naming the phase. What a run needs per month is in the README's Performance section.
BENCH_MAX_WAL_SIZE (e.g. 2GB) lowers the throw-away server's max_wal_size (default: the
project's 8GB), which results.md's settings line then shows.

The dataset builder itself (bench_datasets.py, BENCH_BUILDER_MONTHS) and the pandas/NumPy
peers keep their own sizes and run after this database is dropped (bench/run.py runs one
script at a time).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    BENCH_START,
    ENVIRONMENT_JSON,
    PROJECT_DIR,
    bench_months,
    months_later,
    record,
    server_settings,
    server_version,
    size_label,
)

from bqx import server  # noqa: E402
from bqx.dbt import run_dbt  # noqa: E402
from bqx.project import external_dsn  # noqa: E402

MIB = 1024 * 1024
GIB = 1024 * MIB


# --------------------------------------------------------------------------------------------
# watching memory and disk while a phase runs


def _pss_kib(pid: int) -> int:
    """Proportional set size of one process (shared buffers split among the processes mapping
    them, so a sum over the server's processes counts them once); 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _tree_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


@dataclass
class Watch:
    """Samples, every `interval` s, the server's and the client's PSS and the free disk; ends
    the server's sessions when the disk runs low (the phase then fails and the bench cleans up)."""

    postmaster: int | None  # None on a BQX_PG_DSN server: its memory is not ours to read
    disk_path: Path
    min_free: int
    admin_dsn: str
    database: str
    interval: float = 0.5
    server_peak: int = 0
    client_peak: int = 0
    free_low: int = 1 << 62
    low_disk: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)

    def reset(self) -> None:
        self.server_peak = self.client_peak = 0
        self.free_low = 1 << 62

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            if self.postmaster is not None:
                self.server_peak = max(self.server_peak, sum(_pss_kib(p) for p in _descendants(self.postmaster)) * 1024)
            self.client_peak = max(self.client_peak, sum(_pss_kib(p) for p in _descendants(os.getpid())) * 1024)
            free = shutil.disk_usage(self.disk_path).free
            self.free_low = min(self.free_low, free)
            if free < self.min_free and not self.low_disk:
                self.low_disk = True
                print(f"!! free disk {free / GIB:.1f} GB < {self.min_free / GIB:.0f} GB: ending the bench's sessions", flush=True)
                with contextlib.suppress(psycopg.Error), psycopg.connect(self.admin_dsn, autocommit=True) as conn:
                    conn.execute(
                        "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s and pid <> pg_backend_pid()",
                        (self.database,),
                    )

    @contextlib.contextmanager
    def running(self) -> Iterator[Watch]:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


# --------------------------------------------------------------------------------------------
# the server: a throw-away embedded cluster (its data directory measurable) or BQX_PG_DSN's


@dataclass(frozen=True)
class Place:
    admin_dsn: str
    dsn: str
    database: str
    pgdata: Path | None  # None on a BQX_PG_DSN server


@contextlib.contextmanager
def bench_place(home: Path) -> Iterator[Place]:
    database = f"bqx_scale_{uuid.uuid4().hex[:8]}"
    external = external_dsn()
    cluster = None
    if external:
        admin = external
    else:
        wal = os.environ.get("BENCH_MAX_WAL_SIZE")
        if wal:
            # this throw-away server only (this process's copy of the settings): the WAL a
            # checkpoint may leave behind is disk an FX-year database needs; the full builds'
            # CREATE TABLE AS skip the WAL anyway (wal_level = minimal)
            if not (wal[:-2].isdigit() and wal.endswith(("MB", "GB"))):
                raise SystemExit(f"BENCH_MAX_WAL_SIZE={wal!r}: expected e.g. 2GB or 512MB")
            server.SERVER_SETTINGS["max_wal_size"] = f"'{wal}'"
        cluster = server.cluster_for(home, port=server.free_port(), throwaway=True)
        admin = server.start(cluster, database=None)
    try:
        server.create_database(admin, database)
        try:
            yield Place(admin, server.with_database(admin, database), database, cluster.pgdata if cluster else None)
        finally:
            server.drop_database(admin, database)
    finally:
        if cluster is not None:
            server.destroy(cluster)


def _postmaster_pid(pgdata: Path | None) -> int | None:
    if pgdata is None:
        return None
    try:
        return int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def disk_figures(place: Place) -> dict[str, int]:
    """Bytes: the database (pg_database_size), and on an embedded server the WAL folder and the
    whole data directory."""
    with psycopg.connect(place.dsn) as conn:
        figures = {"database": int(conn.execute("select pg_database_size(current_database())").fetchone()[0])}
    if place.pgdata is not None:
        figures["wal"] = _tree_size(place.pgdata / "pg_wal")
        figures["pgdata"] = _tree_size(place.pgdata)
    return figures


def largest_relations(dsn: str, limit: int = 12) -> list[tuple[str, int]]:
    with psycopg.connect(dsn) as conn:
        return [
            (name, int(size))
            for name, size in conn.execute(
                "select n.nspname || '.' || c.relname, pg_total_relation_size(c.oid) from pg_class as c "
                "join pg_namespace as n on n.oid = c.relnamespace where c.relkind in ('r', 'p', 'm') "
                "and n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast') "
                "order by 2 desc limit %s",
                (limit,),
            ).fetchall()
        ]


# --------------------------------------------------------------------------------------------
# the phases


@dataclass
class Phase:
    name: str
    seconds: float
    rows: int
    server_peak: int
    client_peak: int
    disk: dict[str, int]
    free_low: int


class Bench:
    def __init__(self, place: Place, watch: Watch, home: Path, size: str, prefix: str) -> None:
        self.place, self.watch, self.home, self.size, self.prefix = place, watch, home, size, prefix
        self.phases: list[Phase] = []

    @contextlib.contextmanager
    def phase(self, name: str, rows: int) -> Iterator[None]:
        print(f"-- {name} ({self.size}) {dt.datetime.now(dt.UTC):%H:%M:%S}", flush=True)
        self.watch.reset()
        started = time.perf_counter()
        yield
        seconds = time.perf_counter() - started
        if self.watch.low_disk:
            raise RuntimeError(f"{name}: free disk fell below {self.watch.min_free / GIB:.0f} GB; bench stopped")
        disk = disk_figures(self.place)
        if (self.home / name).is_dir() and name == "extract":
            disk["parquet"] = _tree_size(self.home / name)
        done = Phase(name, seconds, rows, self.watch.server_peak, self.watch.client_peak, disk, self.watch.free_low)
        self.phases.append(done)
        record_phase(self.prefix, self.size, done)
        print(f"   {name}: {seconds:.1f} s, disk {', '.join(f'{k} {v / GIB:.2f} GB' for k, v in disk.items())}, "
              f"free ≥ {done.free_low / GIB:.1f} GB", flush=True)  # fmt: skip

    def env(self) -> dict[str, str]:
        return dict(os.environ, BQX_PG_DSN=self.place.dsn, DBT_TARGET_PATH=str(self.home / "target"),
                    DBT_LOG_PATH=str(self.home / "target" / "logs"))  # fmt: skip

    def cli(self, *args: str) -> None:
        done = subprocess.run([str(Path(sys.executable).parent / "bqx"), *args], cwd=PROJECT_DIR, env=self.env(),
                              capture_output=True, text=True, check=False)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"bqx {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
        print(done.stderr[-1500:], flush=True)

    def dbt(self, *args: str) -> dict:
        target = self.home / f"target_{args[0]}"
        done = run_dbt(list(args), self.place.dsn, target_path=target, capture=True)
        if done.returncode != 0:
            raise RuntimeError(f"dbt {' '.join(args)} failed:\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}")
        return json.loads((target / "run_results.json").read_text())


WHAT = {
    "generate": "bqx.generate bars + csv files (one per pair and month), in this process",
    "load": "`bqx load` of the csv files into the empty database (CLI: parse, validate, COPY, partitions)",
    "build": "`dbt run --select tag:wave1 --full-refresh` (two models at a time), incl. dbt start-up",
    "test": "`dbt test --select tag:wave1` after the build: every data test over every row, incl. dbt start-up",
    "increment": "`bqx load` of one more day, then `bqx build` (models, tests on the rows written, the small audit), incl. dbt start-up",
    "extract": "the dataset builder's extraction step (every feature and target column into zstd Parquet)",
}
ROWS = {"generate": "bars", "load": "rows", "build": "bars", "test": "bars", "increment": "bars", "extract": "rows"}
DISK = {"database": "pg_database_size", "wal": "the server's pg_wal folder", "pgdata": "the whole data directory",
        "parquet": "the extracted Parquet files"}  # fmt: skip


def record_phase(prefix: str, size: str, p: Phase) -> None:
    """Every figure of one phase, recorded as soon as it ends (a later failure keeps them)."""
    note = f"{WHAT[p.name]}; {size}"
    record(f"{prefix}.{p.name}.s", p.seconds, "s", f"wall: {note}")
    if p.rows:
        unit = ROWS[p.name]
        record(f"{prefix}.{p.name}.{unit}_per_s", p.rows / p.seconds, f"{unit}/s",
               f"{p.rows:,} {unit} ÷ {prefix}.{p.name}.s; {note}")  # fmt: skip
    if p.server_peak:
        record(f"{prefix}.{p.name}.server_peak_mib", p.server_peak / MIB, "MiB",
               f"peak sum of the PSS of the server's processes (postmaster and backends, shared buffers counted once), "
               f"sampled every 0.5 s during: {note}")  # fmt: skip
    record(f"{prefix}.{p.name}.client_peak_mib", p.client_peak / MIB, "MiB",
           f"peak sum of the PSS of the bench's process and its children (bqx CLI, dbt), sampled every 0.5 s during: {note}")
    for part, value in p.disk.items():
        record(f"{prefix}.{p.name}.disk_{part}_gib", value / GIB, "GiB", f"{DISK[part]} after the {p.name} phase; {size}")
    record(f"{prefix}.{p.name}.free_disk_low_gib", p.free_low / GIB, "GiB",
           f"lowest free space on the database's volume during the {p.name} phase (a shared machine: others use it too); {size}")


def _timings(results: dict, kind: str) -> dict[str, float]:
    return {
        r["unique_id"].split(".", 2)[-1]: float(r["execution_time"])
        for r in results["results"]
        if r["unique_id"].startswith(f"{kind}.")
    }


def main() -> int:
    months = bench_months()
    extract_pairs = int(os.environ.get("BENCH_EXTRACT_PAIRS", "2"))
    min_free = int(float(os.environ.get("BENCH_MIN_FREE_GB", "5")) * GIB)
    end = months_later(BENCH_START, months)
    size = size_label(months)
    prefix = f"months_{months}"
    with tempfile.TemporaryDirectory(prefix="bqx_scale_") as tmp:
        home = Path(tmp)
        with bench_place(home) as place:
            watch = Watch(_postmaster_pid(place.pgdata), Path(place.pgdata or home), min_free, place.admin_dsn, place.database)
            environment = json.loads(ENVIRONMENT_JSON.read_text()) if ENVIRONMENT_JSON.exists() else {}
            environment[f"{prefix}.settings"] = server_settings(place.dsn)
            environment.setdefault("postgres", server_version(place.dsn))
            ENVIRONMENT_JSON.write_text(json.dumps(environment, indent=2, ensure_ascii=False) + "\n")
            with watch.running():
                run_phases(Bench(place, watch, home, size, prefix), months, end, extract_pairs)
    return 0


def run_phases(bench: Bench, months: int, end: dt.date, extract_pairs: int) -> None:
    from bqx.generate import PAIRS, generate_bars, write_bars

    home, prefix, size = bench.home, bench.prefix, bench.size
    with bench.phase("generate", 0):
        bars = generate_bars(BENCH_START, end + dt.timedelta(days=1), list(PAIRS))
        history = bars[bars["ts_utc"] < str(end)]
        day = bars[bars["ts_utc"] >= str(end)]
        write_bars(history, home / "bars", "csv")
        write_bars(day, home / "day", "csv")
        history_rows, day_rows = len(history), len(day)
        del bars, history, day
    # the generate phase's rows are known only at its end: its rows/s recorded here
    generated = bench.phases[-1]
    record(f"{prefix}.generate.bars_per_s", (history_rows + day_rows) / generated.seconds, "bars/s",
           f"{history_rows + day_rows:,} bars ÷ {prefix}.generate.s; {WHAT['generate']}; {size}")  # fmt: skip
    environment = json.loads(ENVIRONMENT_JSON.read_text())
    environment[f"{prefix}.data"] = (
        f"28 pairs × {BENCH_START:%Y-%m-%d} .. {end:%Y-%m-%d} (end excluded), {history_rows:,} bars, "
        f"then one more day ({day_rows:,} bars)"
    )
    ENVIRONMENT_JSON.write_text(json.dumps(environment, indent=2, ensure_ascii=False) + "\n")

    with bench.phase("load", history_rows):
        bench.cli("load", str(home / "bars"))
    shutil.rmtree(home / "bars")  # loaded: the files' space goes back before the build

    with bench.phase("build", history_rows):
        models = _timings(bench.dbt("run", "--select", "tag:wave1", "--full-refresh"), "model")
    build = bench.phases[-1].seconds
    for model, seconds in sorted(models.items()):
        record(f"{prefix}.build.model.{model}.s", seconds, "s",
               f"dbt's execution time of {model} in `dbt run --select tag:wave1 --full-refresh` (two models at a time); {size}")  # fmt: skip
    record(f"{prefix}.build.models_total.s", sum(models.values()), "s", f"sum of the {len(models)} models' execution times; {size}")
    record(f"{prefix}.build.goal_ratio", build / 480, "ratio",
           f"{prefix}.build.s ÷ 480 s (issue 12's goal at 12 months: wave-1 build ≤ 8 minutes on 2 cores, i.e. ≤ 1); {size}")
    record(f"{prefix}.build.old_workers_ratio", history_rows / build / 670, "×",
           f"{prefix}.build's bars/s ÷ the old workers' 670 rows/s (they computed one family, REG, at that rate); "
           f"here every wave-1 model; {size}")  # fmt: skip
    relations = largest_relations(bench.place.dsn)
    top = ", ".join(f"{name} {value / GIB:.2f}" for name, value in relations[:10])
    record(f"{prefix}.build.disk_per_month_gib", bench.phases[-1].disk["database"] / GIB / months, "GiB",
           f"pg_database_size after the build ÷ {months} month(s); the largest relations (GiB, indexes incl.): {top}; {size}")

    with bench.phase("test", history_rows):
        tests = _timings(bench.dbt("test", "--select", "tag:wave1"), "test")
    test = bench.phases[-1].seconds
    slowest = sorted(tests.items(), key=lambda item: -item[1])[:5]
    record(f"{prefix}.test.tests_total.s", sum(tests.values()), "s",
           f"sum of the {len(tests)} data tests' execution times (two at a time); the slowest: "
           + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in slowest) + f"; {size}")  # fmt: skip
    record(f"{prefix}.test.goal_ratio", test / 120, "ratio",
           f"{prefix}.test.s ÷ 120 s (issue 12's goal at 12 months: data tests ≤ 2 minutes, i.e. ≤ 1); {size}")

    with bench.phase("increment", day_rows):
        bench.cli("load", str(home / "day"))
        bench.cli("build")
    increment = bench.phases[-1].seconds
    record(f"{prefix}.increment.one_day_over_full.ratio", increment / (build + test), "ratio",
           f"{prefix}.increment.s ÷ ({prefix}.build.s + {prefix}.test.s): one day loaded and built by `bqx build` "
           f"against the full build with all its tests (goal at 12 months: ≤ 0.03); {size}")  # fmt: skip
    record(f"{prefix}.increment.one_day_share_of_bars.ratio", day_rows / (history_rows + day_rows), "ratio",
           f"the day's {day_rows:,} bars ÷ all {history_rows + day_rows:,}: what a proportional increment would cost; {size}")

    # `bqx status --json` after the increment, best of 3: it reads the build log and index probes
    # (no scan), so it should not grow with the history (issue 10: ≤ 1 s at FX-year)
    status_seconds = []
    for _ in range(3):
        started = time.perf_counter()
        bench.cli("status", "--json")
        status_seconds.append(time.perf_counter() - started)
    record(f"{prefix}.status.s", min(status_seconds), "s",
           f"wall of `bqx status --json` (the CLI process, its Python start-up included) after the increment, best of 3 "
           f"(goal at 12 months: ≤ 1 s); {size}")  # fmt: skip

    if extract_pairs > 0:
        from bqx.catalog import feature_catalog
        from bqx.datasets import extract as ex
        from bqx.project import dbt_vars

        catalog = feature_catalog(PROJECT_DIR)
        with psycopg.connect(bench.place.dsn) as conn:
            pairs = ex.pairs_with_bars(conn, list(dbt_vars()["pairs"]))[:extract_pairs]
            sources = ex.describe_pairs(conn, pairs, None, None, sorted({f.model for f in catalog.features}))
        WHAT["extract"] += f" for {len(sources)} pairs ({', '.join(pairs)}), cold"
        with bench.phase("extract", sum(s.rows for s in sources)):
            ex.extract_pairs(bench.place.dsn, sources, catalog, home / "extract", reuse=False, progress=False)


if __name__ == "__main__":
    sys.exit(main())
