"""`bqx audit`: recompute stored rows from their input, through the models' own SQL in one-shot
form, and compare them with what the tables hold.

Which rows, per model and pair:
  - every minute of raw.m1_changes the model has consumed since the pair's last passing audit of
    it (build_state.audited_pairs: a change committed after a build is checked by the first audit
    after the build that consumes it; a long range is checked at its first and last
    `changed_limit` bars), so a row written wrong by a build that raced a load, or edited by hand
    since, is found whatever the seed;
  - `sample` minutes drawn at random (numpy, seeded: the seed is printed and recorded), anywhere
    in the pair, or among the rows one build wrote (`written_by`: the audit `bqx build` ends with);
  - with `full`, every row.
How: the model's compiled SQL (`dbt compile`; incremental form) reads its input through the
temporary table of bounds an incremental build uses (macros/incremental/incremental_rows.sql);
the audit fills that table with bqx_functions.increment_bounds() for the minutes to check (the
same function the build uses for "the history a row needs"), one range per pair at a time (ranges
of a pair closer than the model's lookback merged into one: each range reads that lookback, so the
cost is the sample's, not the table's), runs the SQL and compares row by row in SQL: bit for bit (NULLs in the same places) for every
family, except the recursive smoothers of technical_* whose restart bounds them to 1e-12 of
the value (README). The report says what was compared; build_state.audits keeps it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from bqx.dbt import PROJECT_DIR, run_dbt
from bqx.server import dsn_parts

# relative bound of the families that are not bit-identical by construction (README, "Self-audit")
TOLERANCES = {"technical_rate": 1e-12, "technical_bqx": 1e-12}
_INCREMENT = re.compile(r"/\* bqx increment (\{.*?\}) \(read by `bqx audit`\) \*/")
_MINUS_INFINITY = "-infinity"


@dataclass
class ModelAudit:
    model: str
    rows: int = 0
    values: int = 0
    mismatched_rows: int = 0
    pending_pairs: list[str] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class AuditReport:
    seed: int
    sample: int
    full: bool
    models: list[ModelAudit]
    changed_ranges: int
    seconds: float
    written_by: str | None = None  # the sample was drawn from the rows this invocation wrote

    @property
    def mismatches(self) -> int:
        return sum(m.mismatched_rows for m in self.models)

    @property
    def passed(self) -> bool:
        return self.mismatches == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "seed": self.seed,
            "sample_per_pair": self.sample,
            "full": self.full,
            "changed_ranges": self.changed_ranges,
            "sampled_from": "rows written by " + self.written_by if self.written_by else "every row",
            "rows_compared": sum(m.rows for m in self.models),
            "values_compared": sum(m.values for m in self.models),
            "mismatched_rows": self.mismatches,
            "seconds": round(self.seconds, 2),
            "models": [m.__dict__ for m in self.models],
        }


@dataclass(frozen=True)
class CompiledModel:
    name: str
    relation: str  # schema.table
    select_sql: str
    increment: dict[str, Any] | None  # None: m1_index (its input is raw)

    @property
    def input_relation(self) -> str | None:
        """The relation the model reads, as schema.table (the compiled name is database-qualified)."""
        if self.increment is None:
            return None
        return ".".join(part.strip('"') for part in self.increment["input"].split(".")[-2:])


def compiled_models(target: Path) -> list[CompiledModel]:
    """The incremental models' compiled SQL under `target` (after `dbt compile`), build order."""
    folder = target / "compiled" / "bqx_feature_store" / "models"
    found: list[CompiledModel] = []
    for path in sorted(folder.rglob("*.sql")):
        if any(part.endswith(".yml") for part in path.relative_to(folder).parts):
            continue  # a data test's SQL
        text = path.read_text()
        if " as increment_bounds" not in text:
            continue  # a view, a table, or a model compiled in full form: nothing to read by bounds
        match = _INCREMENT.search(text)
        name = path.stem
        schema = {"staging": "staging", "marts": "marts"}.get(path.relative_to(folder).parts[0], "features")
        found.append(
            CompiledModel(name, f"{schema}.{name}", text, json.loads(match.group(1)) if match else None)
        )
    return sorted(found, key=lambda m: (m.name != "m1_index", m.name))


def audit_target(dsn: str, project_dir: Path = PROJECT_DIR) -> Path:
    """dbt's target folder for the audit's compile, one per server and database: dbt's partial
    parse keeps the database a manifest was parsed for, so a folder shared by two databases
    compiled relations of the other one ("cross-database references are not implemented")."""
    parts = dsn_parts(dsn)
    key = "_".join(re.sub(r"[^A-Za-z0-9]+", "-", parts.get(name, "")) for name in ("host", "port", "dbname"))
    return project_dir / "target" / "audit" / key


def compile_models(dsn: str, target: Path, dbt_vars: dict[str, Any] | None = None) -> list[CompiledModel]:
    args = ["compile", "--select", "tag:wave1"] + (["--vars", json.dumps(dbt_vars)] if dbt_vars else [])
    done = run_dbt(args, dsn, target_path=target, capture=True)
    if done.returncode != 0:
        raise RuntimeError(f"dbt compile failed:\n{done.stdout[-3000:]}")
    return compiled_models(target)


def _columns(conn: psycopg.Connection, relation: str) -> list[str]:
    schema, table = relation.split(".")
    rows = conn.execute(
        "select column_name from information_schema.columns where table_schema = %s and table_name = %s "
        "and column_name not in ('pair', 'ts_utc') order by ordinal_position",
        (schema, table),
    ).fetchall()
    return [name for (name,) in rows]


def _bounds_sql(model: CompiledModel) -> sql.Composed:
    """Fills bqx_increment_<model> from audit_ranges (pair, from_ts, to_ts): the audited minutes
    are emitted (no forward or backward extension), read with the model's own lookback."""
    table = sql.Identifier(f"bqx_increment_{model.name}")
    if model.increment is None:  # m1_index: row-wise; bar_number continues the stored numbering
        return sql.SQL(
            "create temporary table {table} as "
            "select ranges.pair, true as recompute, ranges.from_ts as emit_from_ts, ranges.to_ts as emit_to_ts, "
            "coalesce(("
            "  select kept.bar_number + 1 from staging.m1_index as kept"
            "  where kept.pair = ranges.pair and kept.ts_utc < ranges.from_ts order by kept.ts_utc desc limit 1"
            "), 0) as first_bar_number "
            "from audit_ranges as ranges"
        ).format(table=table)
    p = model.increment
    return sql.SQL(
        "create temporary table {table} as "
        "select ranges.pair, true as recompute, bounds.emit_from_ts, bounds.emit_to_ts, bounds.read_from_ts, "
        "bounds.read_to_ts "
        "from audit_ranges as ranges "
        "cross join lateral bqx_functions.increment_bounds({input}::regclass, ranges.pair, ranges.from_ts, "
        "ranges.to_ts, {lookback}, {grid}, {reference}, 0, 0, {ahead}, {moving}::text[]) as bounds"
    ).format(
        table=table,
        input=sql.Literal(p["input"].replace('"', "")),
        lookback=sql.Literal(int(p["lookback_bars"])),
        grid=sql.Literal(int(p["grid_bars"])),
        reference=sql.Literal(int(p["reference_bars"])),
        ahead=sql.Literal(int(p["read_ahead_bars"])),
        moving=sql.Literal(p.get("moving_columns")),
    )


def _compare_sql(model: CompiledModel, columns: list[str]) -> sql.Composed:
    """Per audited row: a mismatch count over the columns (a missing row on either side counts)."""
    tolerance = TOLERANCES.get(model.name)
    checks = []
    for column in columns:
        c = sql.Identifier(column)
        if tolerance is None:
            checks.append(sql.SQL("(recomputed.{c} is distinct from stored.{c})").format(c=c))
        else:
            checks.append(
                sql.SQL(
                    "(recomputed.{c} is null) <> (stored.{c} is null) or abs(recomputed.{c} - stored.{c}) "
                    "> {tol} * greatest(abs(recomputed.{c}), abs(stored.{c}))"
                ).format(c=c, tol=sql.Literal(tolerance))
            )
    differing = sql.SQL(" + ").join(sql.SQL("(coalesce({}, false))::int").format(check) for check in checks)
    return sql.SQL(
        "select coalesce(recomputed.pair, stored.pair), coalesce(recomputed.ts_utc, stored.ts_utc)::text, "
        "recomputed.pair is null as missing_recomputed, stored.pair is null as missing_stored, {differing} "
        "from audit_recomputed as recomputed "
        "full join ("
        "  select stored_rows.* from {relation} as stored_rows "
        "  join {bounds} as bounds on stored_rows.pair = bounds.pair "
        "   and stored_rows.ts_utc between bounds.emit_from_ts and bounds.emit_to_ts"
        ") as stored on recomputed.pair = stored.pair and recomputed.ts_utc = stored.ts_utc "
        "where recomputed.pair is null or stored.pair is null or ({differing}) > 0"
    ).format(
        differing=differing,
        relation=sql.SQL(model.relation),
        bounds=sql.Identifier(f"bqx_increment_{model.name}"),
    )


def _audit_round(conn: psycopg.Connection, model: CompiledModel, columns: list[str], ranges: list[tuple]) -> tuple[int, list]:
    """One range per pair: recompute, compare; returns (rows compared, mismatching rows)."""
    with conn.transaction():
        conn.execute("create temporary table audit_ranges (pair text, from_ts timestamptz, to_ts timestamptz) on commit drop")
        with conn.cursor().copy("copy audit_ranges from stdin") as copy:
            for row in ranges:
                copy.write_row(row)
        conn.execute(sql.SQL("drop table if exists {}").format(sql.Identifier(f"bqx_increment_{model.name}")))
        conn.execute(_bounds_sql(model))
        # statistics on the small temporary tables, as prepare_increment() gives the build: without
        # them the planner guesses ~1000 bounds rows and merge-joins the whole input (measured:
        # every round read all of m1_index, 1.6 s for 28 minutes at 28 pairs x 1 month)
        conn.execute(sql.SQL("analyze {}").format(sql.Identifier(f"bqx_increment_{model.name}")))
        conn.execute(sql.SQL("create temporary table audit_recomputed on commit drop as ") + sql.SQL(model.select_sql))
        conn.execute("analyze audit_recomputed")
        rows = conn.execute("select count(*) from audit_recomputed").fetchone()[0]
        bad = conn.execute(_compare_sql(model, columns)).fetchall()
        conn.execute(sql.SQL("drop table {}").format(sql.Identifier(f"bqx_increment_{model.name}")))
    return int(rows), bad


def _changed_ranges(
    conn: psycopg.Connection, model: str, since: str | None, limit: int
) -> tuple[dict[str, list[tuple[str, str]]], dict[str, str]]:
    """Per pair, the minutes changed in raw.m1_changes that `model` has consumed since the pair's
    last audit (build_state.audited_pairs; for a pair no audit has checked yet, since the
    snapshot `since` of the last audit, or every change if None): their hull's first and last
    `limit` bars. Also, per pair the model has built, its consumed snapshot now: what this audit
    marks as audited for the pairs it checks."""
    rows = conn.execute(
        """
        with model_state as (
            select state.pair, state.consumed_snapshot, audited.audited_snapshot
            from build_state.model_pairs as state
            left join build_state.audited_pairs as audited
              on audited.model = state.model and audited.pair = state.pair
            where state.model = %(model)s
        ),
        consumed as (
            select model_state.pair, changes.first_ts, changes.last_ts
            from model_state
            join raw.m1_changes as changes on changes.pair = model_state.pair or changes.pair is null
            where pg_visible_in_snapshot(changes.xid, model_state.consumed_snapshot)
              and (
                  coalesce(model_state.audited_snapshot, %(since)s::pg_snapshot) is null
                  or not pg_visible_in_snapshot(changes.xid, coalesce(model_state.audited_snapshot, %(since)s::pg_snapshot))
              )
        ),
        hulls as (
            select pair, min(first_ts) as first_ts, max(last_ts) as last_ts from consumed group by pair
        )
        select model_state.pair, model_state.consumed_snapshot::text,
               head.ts_from::text, head.ts_to::text, tail.ts_from::text, tail.ts_to::text
        from model_state
        left join hulls on hulls.pair = model_state.pair
        left join lateral (
            select min(ts_utc) as ts_from, max(ts_utc) as ts_to from (
                select ts_utc from staging.m1_index as bars
                where bars.pair = hulls.pair and bars.ts_utc >= hulls.first_ts and bars.ts_utc <= hulls.last_ts
                order by ts_utc limit %(limit)s
            ) as first_bars
        ) as head on true
        left join lateral (
            select min(ts_utc) as ts_from, max(ts_utc) as ts_to from (
                select ts_utc from staging.m1_index as bars
                where bars.pair = hulls.pair and bars.ts_utc >= hulls.first_ts and bars.ts_utc <= hulls.last_ts
                order by ts_utc desc limit %(limit)s
            ) as last_bars
        ) as tail on true
        """,
        {"model": model, "since": since, "limit": limit},
    ).fetchall()
    ranges: dict[str, list[tuple[str, str]]] = {}
    snapshots: dict[str, str] = {}
    for pair, snapshot, head_from, head_to, tail_from, tail_to in rows:
        snapshots[pair] = snapshot
        if head_from is None:
            continue
        ranges[pair] = [(head_from, head_to)]
        if tail_from > head_to:
            ranges[pair].append((tail_from, tail_to))
    return ranges, snapshots


def _sampled_minutes(
    conn: psycopg.Connection, model: str, sample: int, seed: int, written_by: str | None = None
) -> dict[str, list[str]]:
    """`sample` bars per pair drawn from m1_index's bar numbers (seeded per model): anywhere in the
    pair, or, with `written_by` (a dbt invocation id), among the bars whose rows that invocation
    rewrote in `model` (build_state.model_pairs; pairs it did not rewrite get none)."""
    if written_by is None:
        spans = conn.execute(
            "select pair, 0, last_bar.bar_number from build_state.model_pairs as state "
            "cross join lateral (select bar_number from staging.m1_index as bars where bars.pair = state.pair "
            "order by ts_utc desc limit 1) as last_bar where state.model = 'm1_index' order by pair"
        ).fetchall()
    else:
        spans = conn.execute(
            "select state.pair, first_bar.bar_number, last_bar.bar_number from build_state.model_pairs as state "
            "cross join lateral (select bar_number from staging.m1_index as bars where bars.pair = state.pair "
            "  and bars.ts_utc >= state.rewrote_from_ts order by ts_utc limit 1) as first_bar "
            "cross join lateral (select bar_number from staging.m1_index as bars where bars.pair = state.pair "
            "  and bars.ts_utc <= state.rewrote_to_ts order by ts_utc desc limit 1) as last_bar "
            "where state.model = %s and state.invocation_id = %s and first_bar.bar_number <= last_bar.bar_number "
            "order by state.pair",
            (model, written_by),
        ).fetchall()
    generator = np.random.default_rng([seed, zlib.crc32(model.encode())])
    minutes: dict[str, list[str]] = {}
    for pair, first_bar, last_bar in spans:
        bars = sorted({int(b) for b in generator.integers(int(first_bar), int(last_bar) + 1, size=sample)})
        found = conn.execute(
            "select ts_utc::text from staging.m1_index where pair = %s and bar_number = any(%s) order by ts_utc",
            (pair, bars),
        ).fetchall()
        minutes[pair] = [ts for (ts,) in found]
    return minutes


def _merge_gap(model: CompiledModel) -> dt.timedelta:
    """Ranges of one pair closer than this are checked as one: each range of a round reads the
    model's history before it (lookback_bars), so reading a gap of fewer bars than that costs less
    than a second round reading its own history (a gap of N minutes holds at most N bars)."""
    lookback = int(model.increment["lookback_bars"]) if model.increment else 0
    return dt.timedelta(minutes=lookback)


def merge_ranges(ranges: list[tuple[str, str]], gap: dt.timedelta) -> list[tuple[str, str]]:
    """`ranges` (from, to: timestamps as text) sorted, overlapping ones and those less than `gap`
    apart merged into their hull. Each range left costs one round of the model's SQL."""
    if not ranges:
        return []
    ordered = sorted(ranges, key=lambda r: dt.datetime.fromisoformat(r[0]))
    merged = [ordered[0]]
    for start, end in ordered[1:]:
        last_start, last_end = merged[-1]
        if dt.datetime.fromisoformat(start) - dt.datetime.fromisoformat(last_end) <= gap:
            if dt.datetime.fromisoformat(end) > dt.datetime.fromisoformat(last_end):
                merged[-1] = (last_start, end)
        else:
            merged.append((start, end))
    return merged


def _pending_pairs(conn: psycopg.Connection, model: str) -> list[str]:
    """Pairs with changes its input has that the model has not consumed (not errors: pending)."""
    rows = conn.execute(
        """
        select state.pair from build_state.model_pairs as state
        where state.model = %s and exists (
            select from raw.m1_changes as changes
            where (changes.pair = state.pair or changes.pair is null)
              and not pg_visible_in_snapshot(changes.xid, state.consumed_snapshot)
        )
        order by state.pair
        """,
        (model,),
    ).fetchall()
    return [pair for (pair,) in rows]


def run_audit(
    dsn: str,
    *,
    sample: int = 3,
    full: bool = False,
    seed: int | None = None,
    changed_limit: int = 1440,
    models: list[CompiledModel] | None = None,
    target: Path | None = None,
    progress: bool = False,
    written_by: str | None = None,
) -> AuditReport:
    """Recompute and compare; records the report in build_state.audits and returns it. With
    `written_by` (a dbt invocation id: the audit at the end of `bqx build`) the `sample` seeded
    minutes per pair and model are drawn from the rows that build wrote, instead of anywhere."""
    started = time.perf_counter()
    started_at = dt.datetime.now(dt.UTC)
    seed = int(seed if seed is not None else np.random.SeedSequence().entropy % 2**31)
    if models is None:
        models = compile_models(dsn, target or audit_target(dsn))
    audits: list[ModelAudit] = []
    # autocommit: each round is its own transaction (its temporary tables drop at its commit)
    with psycopg.connect(dsn, autocommit=True) as conn:
        snapshot = conn.execute("select pg_current_snapshot()::text").fetchone()[0]
        conn.commit()
        last = conn.execute(
            "select audit_snapshot::text from build_state.audits order by audit_id desc limit 1"
        ).fetchone()
        since = last[0] if last else None
        changed_count = 0
        audited: list[tuple[str, str, str]] = []  # (model, pair, consumed snapshot) checked here
        conn.commit()
        from tqdm import tqdm

        bar = tqdm(models, desc="bqx audit", unit="model", file=sys.stderr, disable=not progress)
        for model in bar:
            bar.set_postfix_str(model.name)
            t0 = time.perf_counter()
            audit = ModelAudit(model.name)
            pending = set(_pending_pairs(conn, model.name))
            audit.pending_pairs = sorted(pending)
            changed, consumed = _changed_ranges(conn, model.name, since, changed_limit)
            if full:
                changed = {}
            changed_count += sum(len(r) for p, r in changed.items() if p not in pending)
            # a pending pair is skipped: its changes stay unaudited until a build consumed them
            audited += [(model.name, pair, seen) for pair, seen in consumed.items() if pair not in pending]
            columns = _columns(conn, model.relation)
            rounds: list[list[tuple]] = []
            if full:
                pairs = [p for (p,) in conn.execute("select pair from build_state.model_pairs where model = %s", (model.name,))]
                rounds.append([(p, _MINUS_INFINITY, "infinity") for p in pairs if p not in pending])
            else:
                per_pair: dict[str, list[tuple[str, str]]] = {
                    pair: list(ranges) for pair, ranges in changed.items() if pair not in pending
                }
                for pair, minutes in _sampled_minutes(conn, model.name, sample, seed, written_by).items():
                    if pair not in pending:
                        per_pair.setdefault(pair, []).extend((m, m) for m in minutes)
                gap = _merge_gap(model)
                per_pair = {pair: merge_ranges(ranges, gap) for pair, ranges in per_pair.items()}
                depth = max((len(r) for r in per_pair.values()), default=0)
                for k in range(depth):
                    rounds.append([(pair, *ranges[k]) for pair, ranges in per_pair.items() if len(ranges) > k])
            for ranges in rounds:
                if not ranges:
                    continue
                rows, bad = _audit_round(conn, model, columns, ranges)
                audit.rows += rows
                audit.values += rows * len(columns)
                audit.mismatched_rows += len(bad)
                for pair, ts, missing_recomputed, missing_stored, differing in bad[:3]:
                    if len(audit.examples) < 5:
                        audit.examples.append({
                            "pair": pair, "ts_utc": ts,
                            "problem": "stored row without input bar" if missing_recomputed
                            else "row missing from the table" if missing_stored
                            else f"{differing} columns differ",
                        })
            audit.seconds = round(time.perf_counter() - t0, 2)
            audits.append(audit)
        report = AuditReport(
            seed, sample, full, audits, changed_count, time.perf_counter() - started, written_by
        )
        # the pairs' changes count as audited only for a model that passed: after a failure the
        # next audit checks the same changed minutes again, until they are right
        passed_models = {m.model for m in audits if m.mismatched_rows == 0}
        with conn.transaction():
            audit_id = conn.execute(
                "insert into build_state.audits (started_at, audit_snapshot, sample_per_pair, seed, full_audit, "
                "rows_compared, values_compared, mismatches, passed, report) "
                "values (%s, %s::pg_snapshot, %s, %s, %s, %s, %s, %s, %s, %s) returning audit_id",
                (
                    started_at, snapshot, sample, seed, full,
                    sum(m.rows for m in audits), sum(m.values for m in audits), report.mismatches, report.passed,
                    json.dumps(report.as_dict()),
                ),
            ).fetchone()[0]
            with conn.cursor() as cursor:
                cursor.executemany(
                    "insert into build_state.audited_pairs (model, pair, audited_snapshot, audit_id) "
                    "values (%s, %s, %s::pg_snapshot, %s) on conflict (model, pair) do update "
                    "set audited_snapshot = excluded.audited_snapshot, audit_id = excluded.audit_id",
                    [(model, pair, consumed, audit_id) for model, pair, consumed in audited if model in passed_models],
                )
    return report


def format_report(report: AuditReport) -> str:
    verdict = "passed" if report.passed else f"FAILED: {report.mismatches} rows differ"
    lines = [
        f"bqx audit {verdict} — {sum(m.rows for m in report.models):,} rows "
        f"({sum(m.values for m in report.models):,} values) of {len(report.models)} models recomputed and compared"
        f" in {report.seconds:.1f} s; "
        + ("every row" if report.full else
           f"{report.changed_ranges} changed ranges + {report.sample} random minutes per pair and model"
           + (" among the rows this build wrote" if report.written_by else "") + f" (seed {report.seed})")
    ]
    for m in report.models:
        line = f"  {m.model:<24} {m.rows:>10,} rows {m.mismatched_rows:>6} differ"
        if m.pending_pairs:
            line += f"  (not built yet, skipped: {', '.join(m.pending_pairs)})"
        lines.append(line)
        for example in m.examples:
            lines.append(f"      {example['pair']} {example['ts_utc']}: {example['problem']}")
    return "\n".join(lines)
