"""What every benchmark shares: a throw-away database holding 28 pairs × 1 month of generated
bars with staging built, timing helpers, and `record()`, which merges one figure into
bench/results.json and re-renders bench/results.md.

The database lives on a throw-away embedded server (its own port and data directory, destroyed
at the end), or, when BQX_PG_DSN is set, in a throw-away database on that server (created and
dropped; the database the DSN names is never touched).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pandas as pd
import psycopg

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
sys.path.insert(0, str(PROJECT_DIR / "python"))

from bqx import server  # noqa: E402
from bqx.dbt import run_dbt  # noqa: E402
from bqx.project import external_dsn  # noqa: E402

RESULTS_JSON = BENCH_DIR / "results.json"
RESULTS_MD = BENCH_DIR / "results.md"
# data size and server of the last prepared database: results.md shows them at the top
ENVIRONMENT_JSON = BENCH_DIR / "environment.json"

# 28 pairs × 1 month: the size every figure of the suite is measured on
BENCH_START = dt.date(2024, 7, 1)
BENCH_END = dt.date(2024, 8, 1)

T = TypeVar("T")

# the settings results.md shows beside the figures: what moves a build's time, memory and disk
REPORTED_SETTINGS = (
    "shared_buffers", "work_mem", "maintenance_work_mem", "effective_cache_size", "max_wal_size",
    "checkpoint_timeout", "wal_level", "synchronous_commit", "jit", "max_parallel_workers_per_gather",
    "max_parallel_workers", "max_parallel_maintenance_workers", "random_page_cost",
)  # fmt: skip


def bench_months(variable: str = "BENCH_MONTHS", default: int = 1) -> int:
    """The size knob: months of 28 pairs from BENCH_START (1 = a laptop's and CI's size, 12 = FX-year)."""
    text = os.environ.get(variable, str(default))
    if not text.isdigit() or not 0 <= int(text) <= 120:
        raise SystemExit(f"{variable}={text!r}: expected a whole number of months from 0 to 120")
    return int(text)


def months_later(day: dt.date, months: int) -> dt.date:
    """The first of the month `months` after `day`'s month."""
    month = day.month - 1 + months
    return dt.date(day.year + month // 12, month % 12 + 1, 1)


def size_label(months: int, pairs: int = 28) -> str:
    """The size every note states, e.g. '28 pairs × 12 months (2024-07-01 .. 2025-07-01)'."""
    end = months_later(BENCH_START, months)
    return f"{pairs} pairs × {months} month{'s' if months != 1 else ''} ({BENCH_START:%Y-%m-%d} .. {end:%Y-%m-%d})"


def server_settings(dsn: str) -> dict[str, str]:
    """REPORTED_SETTINGS as the server reports them (with their unit)."""
    with psycopg.connect(dsn) as conn:
        return {name: str(conn.execute(f"show {name}").fetchone()[0]) for name in REPORTED_SETTINGS}


@dataclass(frozen=True)
class BenchDatabase:
    """A database holding raw bars and the staging models, ready for feature builds."""

    dsn: str
    rows: int  # rows of staging.m1_index
    pairs: int
    target_path: Path  # dbt target folder of this benchmark run (others run dbt concurrently)

    def dbt(self, *args: str) -> float:
        """Run dbt against this database; return wall seconds; raise with dbt's log on failure."""
        started = time.perf_counter()
        done = run_dbt(list(args), self.dsn, target_path=self.target_path, capture=True)
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"dbt {' '.join(args)} failed:\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}")
        return elapsed


def generate_month(pairs: list[str] | None = None, end: dt.date = BENCH_END) -> pd.DataFrame:
    """The benchmark's bars: every pair (or `pairs`) over BENCH_START .. BENCH_END (or `end`)."""
    from bqx.generate import PAIRS, generate_bars

    return generate_bars(BENCH_START, end, list(pairs or PAIRS))


def load_bars(dsn: str, bars: pd.DataFrame) -> None:
    """Load bars into raw.m1_bars with the project's loader."""
    from bqx.load import load_frame

    load_frame(dsn, bars, "bench")


def server_version(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        return str(conn.execute("select version()").fetchone()[0])


def machine_info() -> dict[str, str]:
    """nproc, memory and CPU model of this machine (read at render time)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    return {"nproc": str(os.cpu_count()), "memory": memory, "cpu": cpu, "python": platform.python_version()}


@contextmanager
def bench_database(
    purpose: str = "bench", pairs: list[str] | None = None, end: dt.date = BENCH_END
) -> Iterator[BenchDatabase]:
    """A throw-away database with 28 pairs × 1 month of generated bars (or up to `end`, a size
    its benchmark's notes then state: results.md's header names the common size) and staging built."""
    with tempfile.TemporaryDirectory(prefix=f"bqx_{purpose}_") as tmp:
        home = Path(tmp)
        database = f"bqx_{purpose}_{uuid.uuid4().hex[:8]}"
        with server.scratch_server(home) as admin_dsn:
            server.create_database(admin_dsn, database)
            try:
                dsn = server.with_database(admin_dsn, database)
                bars = generate_month(pairs, end)
                load_bars(dsn, bars)
                bench = BenchDatabase(dsn=dsn, rows=0, pairs=int(bars["pair"].nunique()), target_path=home / "target")
                bench.dbt("run", "--select", "path:models/staging")
                with psycopg.connect(dsn) as conn:
                    conn.execute("analyze staging.m1_index")
                    rows = int(conn.execute("select count(*) from staging.m1_index").fetchone()[0])
                bench = BenchDatabase(dsn=dsn, rows=rows, pairs=bench.pairs, target_path=bench.target_path)
                if end == BENCH_END:
                    _write_environment(bench)
                yield bench
            finally:
                server.drop_database(admin_dsn, database)


def _write_environment(bench: BenchDatabase) -> None:
    environment = json.loads(ENVIRONMENT_JSON.read_text()) if ENVIRONMENT_JSON.exists() else {}
    environment |= {
        "data": f"{bench.pairs} pairs × {BENCH_START:%Y-%m-%d} .. {BENCH_END:%Y-%m-%d} (end excluded), "
        f"{bench.rows:,} one-minute bars (generated by bqx.generate)",
        "rows": bench.rows,
        "postgres": server_version(bench.dsn),
        "server": "BQX_PG_DSN (throw-away database)" if external_dsn() else "embedded, throw-away",
    }
    ENVIRONMENT_JSON.write_text(json.dumps(environment, indent=2, ensure_ascii=False) + "\n")


def best_of(repeat: int, action: Callable[[], T]) -> tuple[float, T]:
    """The shortest wall time of `repeat` runs of `action` (the least disturbed), and its result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = action()
        best = min(best, time.perf_counter() - started)
    return best, result  # type: ignore[return-value]


def record(key: str, value: float, unit: str, note: str) -> None:
    """Merge one figure into bench/results.json and re-render bench/results.md."""
    results = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}
    results[key] = {"value": float(value), "unit": unit, "note": note}
    results = dict(sorted(results.items()))
    tmp = RESULTS_JSON.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(RESULTS_JSON)
    RESULTS_MD.write_text(render_markdown(results))
    print(f"  {key} = {_format_value(float(value))} {unit}  ({note})", flush=True)


def _format_value(value: float) -> str:
    if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-2):
        return f"{value:.3g}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def render_markdown(results: dict[str, dict[str, object]]) -> str:
    environment = json.loads(ENVIRONMENT_JSON.read_text()) if ENVIRONMENT_JSON.exists() else {}
    machine = machine_info()
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench` (bench/run.py); one key per figure in results.json.",
        "",
        f"- data: {environment.get('data', 'unknown')}",
        f"- machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory']} memory, "
        f"Python {machine['python']}",
        f"- PostgreSQL: {environment.get('postgres', 'unknown')} ({environment.get('server', '')})",
        *(
            f"- server settings of `{key.removesuffix('.settings')}.*`: {', '.join(f'{k} = {v}' for k, v in value.items())}"
            for key, value in environment.items() if key.endswith(".settings")
        ),
        *(f"- data of `{key.removesuffix('.data')}.*`: {value}" for key, value in environment.items() if key.endswith(".data")),
        "",
        "| key | value | unit | note |",
        "|---|---:|---|---|",
    ]
    for key, figure in results.items():
        note = str(figure.get("note", "")).replace("|", "\\|")
        lines.append(f"| `{key}` | {_format_value(float(figure['value']))} | {figure.get('unit', '')} | {note} |")
    return "\n".join(lines) + "\n"


def run_python(script: Path) -> int:
    """Run one benchmark script with this interpreter (bench/run.py)."""
    return subprocess.run([sys.executable, str(script)], cwd=PROJECT_DIR, check=False).returncode
