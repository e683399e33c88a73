"""The peer: every wave-1 feature model built by dbt against the same columns computed the way a
quant would without us (bench/peer_models.py: NumPy/pandas + TA-Lib), in one run.

On one benchmark database (bench/common.py: 28 pairs × BENCH_PEER_MONTHS months, default 1):

1. `dbt run --select tag:wave1 --full-refresh --threads 1` once: each model's execution time
   from run_results.json is `sql.<model>.s` (one thread, because the peer runs on one core too).
2. For each model of peer_models.PEER_MODELS, the peer's round trip, timed per phase: read the
   inputs out of staging.m1_index (binary COPY parsed by NumPy), compute every column vectorised
   over all pairs, binary COPY into a new table peer.<model> and create its unique index on
   (pair, ts_utc) (`peer.<model>.s`).
3. Each peer table is compared with the SQL table, every column: float columns max |peer − sql|
   over the column's largest |sql| within the model's tolerance (peer_models.PeerModel.tolerance,
   the reason beside it), integers, booleans and NULL placement exact. A mismatch fails the bench
   for that model with one line naming model and column: a race between unequal outputs is
   worthless, so its figures are not recorded.
4. `ratio.<model>.peer_over_sql` (> 1: SQL faster) and the whole build over every covered model
   (`peer.wave1.s`, `sql.wave1.s`, `ratio.wave1.peer_over_sql`). Where the peer is faster, one
   EXPLAIN ANALYZE of the model's compiled SQL says which plan nodes take the SQL's time.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import psycopg
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_START, BenchDatabase, bench_database, bench_months, months_later, record, size_label  # noqa: E402
from peer_models import PEER_MODELS, PeerModel, read_bars, write_table  # noqa: E402

PHASES = ("read", "compute", "write")


def model_times(bench: BenchDatabase) -> dict[str, float]:
    """Execution time of every model of the last dbt run (run_results.json), by model name."""
    results = json.loads((bench.target_path / "run_results.json").read_text())
    return {
        r["unique_id"].split(".")[-1]: float(r["execution_time"])
        for r in results["results"]
        if r["unique_id"].startswith("model.")
    }


def peer_round_trip(dsn: str, model: str, spec: PeerModel) -> dict[str, float]:
    """Read, compute, write back + unique index into peer.<model>; seconds per phase."""
    seconds: dict[str, float] = {}
    with psycopg.connect(dsn) as conn:
        mark = time.perf_counter()
        bars = read_bars(conn, spec.inputs)
        seconds["read"] = time.perf_counter() - mark
        mark = time.perf_counter()
        with np.errstate(all="ignore"):
            columns = spec.compute(bars)
        seconds["compute"] = time.perf_counter() - mark
        mark = time.perf_counter()
        write_table(conn, f"peer.{model}", bars, columns)
        seconds["write"] = time.perf_counter() - mark
    return seconds


def compare(dsn: str, model: str, spec: PeerModel) -> tuple[float, str | None]:
    """(largest relative float difference, None) when peer.<model> equals the SQL table within
    the tolerance, else (…, one line naming the model and the first offending column)."""
    schema, table = spec.relation.split(".")
    with psycopg.connect(dsn) as conn:

        def columns_of(schema: str, table: str) -> dict[str, str]:
            return dict(conn.execute(
                "select column_name, data_type from information_schema.columns where table_schema = %s "
                "and table_name = %s and column_name not in ('pair', 'ts_utc') order by ordinal_position",
                (schema, table),
            ).fetchall())  # fmt: skip

        sql_types, peer_types = columns_of(schema, table), columns_of("peer", model)
        if set(sql_types) != set(peer_types):
            return 0.0, f"{model}: columns differ: {sorted(set(sql_types) ^ set(peer_types))}"
        checks = []
        for name, pg_type in sql_types.items():
            if pg_type == "double precision":
                checks += [
                    f"max(abs(s.{name} - p.{name})) / nullif(max(abs(s.{name})), 0)",
                    f"count(*) filter (where (s.{name} is null) <> (p.{name} is null))",
                ]
            else:
                checks += ["0", f"count(*) filter (where s.{name} is distinct from p.{name})"]
        row = conn.execute(
            f"select {', '.join(checks)}, count(*), (select count(*) from {spec.relation}), "
            f"(select count(*) from peer.{model}) "
            f"from {spec.relation} as s join peer.{model} as p on s.pair = p.pair and s.ts_utc = p.ts_utc"
        ).fetchone()
    *values, joined, sql_rows, peer_rows = row
    if not joined == sql_rows == peer_rows:
        return 0.0, f"{model}: {sql_rows} SQL rows, {peer_rows} peer rows, {joined} matched on (pair, ts_utc)"
    largest = 0.0
    for name, error, mismatched in zip(sql_types, values[0::2], values[1::2]):
        if mismatched:
            return largest, f"{model}.{name}: {mismatched} rows differ in NULL placement or value ({sql_types[name]})"
        if error is not None and float(error) > spec.tolerance:
            return float(error), f"{model}.{name}: max |peer − sql| / max |sql| = {float(error):.2e} > {spec.tolerance:.0e}"
        largest = max(largest, float(error or 0.0))
    return largest, None


def sql_time_split(bench: BenchDatabase, model: str) -> str:
    """One EXPLAIN ANALYZE of the model's compiled select: the plan nodes with the most
    exclusive time (their own, children excluded), as shares of the execution time."""
    found = sorted(bench.target_path.glob(f"compiled/*/models/**/{model}.sql"))
    if not found:
        return "compiled SQL not found"
    with psycopg.connect(bench.dsn) as conn:
        (plan,) = conn.execute(f"explain (analyze, format json) {found[0].read_text()}").fetchone()[0]
    own: dict[str, float] = {}

    def walk(node: dict) -> float:
        total = node["Actual Total Time"] * node.get("Actual Loops", 1)
        children = sum(walk(child) for child in node.get("Plans", []))
        own[node["Node Type"]] = own.get(node["Node Type"], 0.0) + max(total - children, 0.0)
        return total

    walk(plan["Plan"])
    spent = plan["Execution Time"]
    top = sorted(own.items(), key=lambda item: -item[1])[:3]
    return f"EXPLAIN ANALYZE ({spent / 1000:.1f} s): " + ", ".join(f"{name} {ms / spent:.0%}" for name, ms in top)


def main() -> int:
    months = bench_months("BENCH_PEER_MONTHS")
    if months < 1:
        raise SystemExit("BENCH_PEER_MONTHS=0: no bars to measure (1 or more months)")
    size = size_label(months)
    failed: list[str] = []
    with bench_database("peer", end=months_later(BENCH_START, months)) as bench:
        print(f"peer benchmark on {size}, {bench.rows:,} bars", flush=True)
        bench.dbt("run", "--select", "tag:wave1", "--full-refresh", "--threads", "1")
        sql = model_times(bench)
        with psycopg.connect(bench.dsn) as conn:
            conn.execute("create schema if not exists peer")
        peer: dict[str, dict[str, float]] = {}
        errors: dict[str, float] = {}
        progress = tqdm(PEER_MODELS.items(), desc="peer", unit="model")
        for model, spec in progress:
            progress.set_postfix_str(model)
            seconds = peer_round_trip(bench.dsn, model, spec)
            errors[model], problem = compare(bench.dsn, model, spec)
            with psycopg.connect(bench.dsn) as conn:
                conn.execute(f"drop table peer.{model}")  # the peer's tables are not kept
            if problem:
                print(f"MISMATCH {problem}", file=sys.stderr, flush=True)
                failed.append(model)
            else:
                peer[model] = seconds
        faster = {model: sql_time_split(bench, model) for model, s in peer.items() if sum(s.values()) < sql[model]}
        bars = bench.rows

    for model, seconds in peer.items():
        spec, total = PEER_MODELS[model], sum(seconds.values())
        record(
            f"sql.{model}.s", sql[model], "s",
            f"dbt's execution time of {model} in `dbt run --select tag:wave1 --full-refresh --threads 1` (one "
            f"thread: the peer runs on one core too); {size}, {bars:,} bars",
        )  # fmt: skip
        record(
            f"peer.{model}.s", total, "s",
            f"{model} by the NumPy/pandas/TA-Lib peer (bench/peer_models.py): binary COPY of its inputs out of "
            f"staging.m1_index {seconds['read']:.1f} s, compute {seconds['compute']:.1f} s, binary COPY into "
            f"peer.{model} + unique index {seconds['write']:.1f} s; equal to the SQL table within "
            f"{errors[model]:.1e} of each float column's largest |value| (tolerance {spec.tolerance:.0e}: {spec.why}), "
            f"integers, booleans and NULL placement exact; {size}",
        )  # fmt: skip
        record(
            f"ratio.{model}.peer_over_sql", total / sql[model], "×",
            f"peer.{model}.s ÷ sql.{model}.s (> 1: SQL faster; goal ≥ 1)"
            + (f"; SQL time by plan node, {faster[model]}" if model in faster else ""),
        )  # fmt: skip
    if failed:
        print(f"peer: no whole-build figures, mismatched models: {', '.join(failed)}", file=sys.stderr)
        return 1
    peer_total = sum(sum(s.values()) for s in peer.values())
    sql_total = sum(sql[model] for model in peer)
    phase_totals = ", ".join(f"{phase} {sum(s[phase] for s in peer.values()):.1f} s" for phase in PHASES)
    left_out = sorted(set(sql) - set(peer))
    record(
        "peer.wave1.s", peer_total, "s",
        f"the peer's round trips of all {len(peer)} models (every wave-1 feature model and targets), one after the other "
        f"({phase_totals}); {size}",
    )  # fmt: skip
    record(
        "sql.wave1.s", sql_total, "s",
        f"sum of the same {len(peer)} models' execution times at --threads 1 (not counted, the peer's input or no "
        f"feature: {', '.join(left_out)}, {sum(sql[m] for m in left_out):.1f} s); {size}",
    )  # fmt: skip
    record(
        "ratio.wave1.peer_over_sql", peer_total / sql_total, "×",
        "peer.wave1.s ÷ sql.wave1.s (> 1: the SQL build faster; goal ≥ 1)",
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
