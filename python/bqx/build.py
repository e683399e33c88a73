"""`bqx build`: `dbt build --select tag:wave1` under the writer lock, then a summary of what it
built (pairs × models, rows written) from build_state.

The build itself is dbt's; this module adds what dbt cannot hold for a whole run: the writer
lock (python/bqx/writer_lock.py), the change log's triggers on partitions made by hand, the
backfill range (--from/--to) and the full data tests on demand, passed to dbt as vars merged
into the user's own --vars.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import yaml

from bqx import raw_schema
from bqx.audit import compiled_models, format_report, run_audit
from bqx.build_arguments import build_arguments
from bqx.dbt import run_dbt
from bqx.project import PROJECT_DIR
from bqx.writer_lock import writer_lock


@dataclass(frozen=True)
class BuildOptions:
    dbt_args: list[str]  # dbt build's options as the user gave them (--full-refresh, -s, --vars, ...)
    recompute_from: str | None = None
    recompute_to: str | None = None
    full_tests: bool = False
    wait: bool = True
    audit_sample: int = 1  # random minutes per pair and model of the audit after the build (0: none)


def merge_vars(dbt_args: list[str], extra: dict[str, Any]) -> list[str]:
    """dbt arguments with `extra` merged into their --vars (dbt accepts a single --vars)."""
    args = list(dbt_args)
    merged: dict[str, Any] = {}
    for position, arg in enumerate(args):
        if arg == "--vars" and position + 1 < len(args):
            merged = yaml.safe_load(args[position + 1]) or {}
            del args[position : position + 2]
            break
        if arg.startswith("--vars="):
            merged = yaml.safe_load(arg.split("=", 1)[1]) or {}
            del args[position]
            break
    if not isinstance(merged, dict):
        raise ValueError(f"--vars must be a mapping, got {merged!r}")
    merged.update({key: value for key, value in extra.items() if value is not None})
    return [*args, "--vars", json.dumps(merged)] if merged else args


def _invocation_id(target: Path) -> str | None:
    try:
        return json.loads((target / "run_results.json").read_text())["metadata"]["invocation_id"]
    except (OSError, KeyError, ValueError):
        return None


def build_summary(dsn: str, invocation_id: str) -> dict[str, Any]:
    """What one invocation built: per model, pairs recomputed and rows written, and the run."""
    with psycopg.connect(dsn) as conn:
        run = conn.execute(
            "select status, extract(epoch from coalesce(finished_at, clock_timestamp()) - started_at), "
            "full_refresh from build_state.runs where invocation_id = %s",
            (invocation_id,),
        ).fetchone()
        models = conn.execute(
            "select model, pairs_recomputed, rows_written, extract(epoch from finished_at - started_at) "
            "from build_state.model_runs where invocation_id = %s order by started_at",
            (invocation_id,),
        ).fetchall()
    return {
        "invocation_id": invocation_id,
        "status": run[0] if run else "unknown",
        "seconds": float(run[1]) if run else None,
        "full_refresh": bool(run[2]) if run else None,
        "models": [
            {"model": m, "pairs": int(p), "rows_written": int(r), "seconds": round(float(s), 2)}
            for m, p, r, s in models
        ],
    }


def format_build_summary(summary: dict[str, Any]) -> str:
    models = summary["models"]
    pairs = max((m["pairs"] for m in models), default=0)
    rows = sum(m["rows_written"] for m in models)
    seconds = summary["seconds"] or 0.0
    lines = [
        f"bqx build {summary['status']}: {len(models)} models × up to {pairs} pairs recomputed, "
        f"{rows:,} rows written in {seconds:.1f} s"
        + (" (full refresh)" if summary["full_refresh"] else "")
    ]
    for m in models:
        lines.append(f"  {m['model']:<24} {m['pairs']:>3} pairs {m['rows_written']:>12,} rows {m['seconds']:>8.2f} s")
    return "\n".join(lines)


def ensure_change_log(dsn: str) -> None:
    """The change log's triggers on every partition (a no-op before the first load)."""
    with psycopg.connect(dsn) as conn:
        if raw_schema.raw_schema_exists(conn):
            raw_schema.ensure_change_log(conn)


def run_build(dsn: str, options: BuildOptions, *, target_path: Path | None = None) -> int:
    """`dbt build --select tag:wave1 [dbt args]` (no selection added when the args select) under
    the writer lock; prints the summary, then audits an incremental build."""
    with writer_lock(dsn, "build", wait=options.wait) as lock:
        ensure_change_log(dsn)
        extra = {
            "recompute_from": options.recompute_from,
            "recompute_to": options.recompute_to,
            "full_tests": True if options.full_tests else None,
        }
        args = merge_vars(build_arguments(options.dbt_args), extra)
        settings = {
            # the models of this dbt skip the shared writer lock that this process holds
            # exclusively (macros/incremental/build_state.sql, writer_lock_shared)
            "bqx.writer_pid": str(lock.info.backend_pid),
            # a build killed mid-query stops its server work within a second instead of running
            # the query to its end (then `bqx status` says it did not finish)
            "client_connection_check_interval": "1000",
        }
        done = run_dbt(args, dsn, target_path=target_path, session_settings=settings)
        target = target_path or Path(os.environ.get("DBT_TARGET_PATH", PROJECT_DIR / "target"))
        invocation = _invocation_id(target)
        if invocation:
            try:
                print(format_build_summary(build_summary(dsn, invocation)), file=sys.stderr)
            except psycopg.Error:
                pass  # no build_state yet: dbt failed before on-run-start
        if done.returncode != 0 or options.audit_sample <= 0:
            return done.returncode
        if _source_distributed(dsn):
            print("bqx build: no audit on Citus (the audit does not run there yet: docs/scale-out.md)", file=sys.stderr)
            return 0
        return _small_audit(dsn, target, options.audit_sample, invocation)


def _source_distributed(dsn: str) -> bool:
    from bqx.distribute import source_distributed

    with psycopg.connect(dsn) as conn:
        return source_distributed(conn)


def _small_audit(dsn: str, target: Path, sample: int, invocation: str | None) -> int:
    """The audit every incremental build ends with: the minutes changed in the source since the
    last audit (their first and last hour of bars per pair) and `sample` seeded minutes per pair
    and model among the rows this build wrote, through the SQL the build just compiled. Its cost
    is the sample's (each range reads its model's lookback; ranges closer than that are read as
    one), not the table's. A full build (compiled in full form) is not re-audited."""
    models = compiled_models(target)
    if not models:
        return 0
    report = run_audit(dsn, sample=sample, changed_limit=60, models=models, written_by=invocation)
    print(format_report(report).splitlines()[0], file=sys.stderr)
    if not report.passed:
        print(format_report(report), file=sys.stderr)
        return 1
    return 0
