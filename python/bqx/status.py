"""`bqx status`: where every model stands against the source, the build in progress, the last
build and the last audit.

Read from the build log the models write (build_state: model_pairs, model_runs, runs, audits),
the change log (raw.m1_changes) and a few index lookups per pair: never a count(*) over the bars
or the features, so it answers in well under a second on FX-year tables.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import psycopg

from bqx.pairs import PAIRS
from bqx.writer_lock import holders

_NODE = re.compile(r'"node_id": "model\.[^.]+\.([^"]+)"')


def _table_exists(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("select to_regclass(%s) is not null", (name,)).fetchone()[0]


def _source(conn: psycopg.Connection) -> dict[str, dict[str, Any]]:
    """Per pair: the last bar (one index probe), the rows of changes m1_index has not consumed."""
    rows = conn.execute(
        """
        select known.pair,
               (select bars.ts_utc from raw.m1_bars as bars where bars.pair = known.pair
                order by bars.ts_utc desc limit 1) as last_bar,
               (select coalesce(sum(changes.row_count), 0) from raw.m1_changes as changes
                left join build_state.model_pairs as state on state.model = 'm1_index' and state.pair = known.pair
                where (changes.pair = known.pair or changes.pair is null)
                  and (state.pair is null or not pg_visible_in_snapshot(changes.xid, state.consumed_snapshot))
               ) as pending_rows
        from unnest(%s::text[]) as known (pair)
        """,
        (list(PAIRS),),
    ).fetchall()
    return {pair: {"last_bar": last, "pending_change_rows": int(pending)} for pair, last, pending in rows if last}


def _models(conn: psycopg.Connection) -> dict[str, dict[str, dict[str, Any]]]:
    """Per model and pair: last built minute and rows behind m1_index (bar_number lookups)."""
    rows = conn.execute(
        """
        select state.model, state.pair, state.last_built_ts, state.built_at, state.rows_written,
               index_last.bar_number - coalesce(built_bar.bar_number, -1) as rows_behind_index
        from build_state.model_pairs as state
        left join lateral (
            select bars.bar_number from staging.m1_index as bars where bars.pair = state.pair
            order by bars.ts_utc desc limit 1
        ) as index_last on true
        left join lateral (
            select bars.bar_number from staging.m1_index as bars
            where bars.pair = state.pair and bars.ts_utc <= state.last_built_ts
            order by bars.ts_utc desc limit 1
        ) as built_bar on true
        order by state.model, state.pair
        """
    ).fetchall()
    models: dict[str, dict[str, dict[str, Any]]] = {}
    for model, pair, last_built, built_at, written, behind in rows:
        models.setdefault(model, {})[pair] = {
            "last_built": last_built,
            "built_at": built_at,
            "rows_written_last": int(written or 0),
            "rows_behind_index": 0 if model == "m1_index" or behind is None else max(int(behind), 0),
        }
    return models


def _running_models(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Models a dbt connection is writing now (dbt tags its queries with the node's id)."""
    rows = conn.execute(
        """
        select query, xact_start, pid from pg_stat_activity
        where datname = current_database() and state <> 'idle' and query like '%%"node_id": "model.%%'
          and pid <> pg_backend_pid()
        """
    ).fetchall()
    running = []
    for query, since, pid in rows:
        match = _NODE.search(query)
        if match:
            running.append({"model": match.group(1), "since": since, "server_pid": pid})
    return running


def _durations(conn: psycopg.Connection, invocation: str) -> dict[str, float]:
    rows = conn.execute(
        "select model, extract(epoch from finished_at - started_at) from build_state.model_runs where invocation_id = %s",
        (invocation,),
    ).fetchall()
    return {model: float(seconds) for model, seconds in rows}


def _builds(conn: psycopg.Connection, now: dt.datetime) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(the build in progress, the last finished build)."""
    runs = conn.execute(
        "select invocation_id, command, full_refresh, models_selected, started_at, finished_at, status, results "
        "from build_state.runs where command in ('run', 'build') order by started_at desc limit 20"
    ).fetchall()
    writing = [h for h in holders(conn) if h.application_name.startswith("bqx build")]
    running_models = _running_models(conn)
    current = None
    last = None
    for invocation, command, full, selected, started, finished, status, results in runs:
        if finished is None and current is None and last is None:
            alive = bool(writing or running_models)
            done = _durations(conn, invocation)
            rows_done = conn.execute(
                "select coalesce(sum(rows_written), 0), coalesce(sum(pairs_recomputed), 0) "
                "from build_state.model_runs where invocation_id = %s",
                (invocation,),
            ).fetchone()
            elapsed = (now - started).total_seconds()
            current = {
                "invocation_id": invocation,
                "command": command,
                "full_refresh": full,
                "started_at": started,
                "alive": alive,
                "models_selected": selected,
                "models_done": len(done),
                "pair_models_done": int(rows_done[1]),
                "rows_written": int(rows_done[0]),
                "rows_per_second": round(int(rows_done[0]) / elapsed, 1) if elapsed > 0 else None,
                "running": [m | {"seconds": round((now - m["since"]).total_seconds(), 1)} for m in running_models if m["since"]],
                "eta_seconds": None,
            }
            first = conn.execute(
                "select min(started_at) from build_state.model_runs where invocation_id = %s", (invocation,)
            ).fetchone()[0]
            if alive and done and first is not None and selected:
                # the models still to build, at this run's own pace so far
                per_model = (now - first).total_seconds() / len(done)
                current["eta_seconds"] = round(max(selected - len(done), 0) * per_model, 1)
            if not alive:
                current["status"] = "interrupted (no dbt connection and no writer lock: killed?)"
            continue
        if finished is not None and last is None:
            nodes = results or []
            built_in_full = conn.execute(
                "select bool_and(full_refresh) from build_state.model_runs where invocation_id = %s", (invocation,)
            ).fetchone()[0]
            last = {
                "invocation_id": invocation,
                "command": command,
                # a first build is a full one too, though dbt was not asked for --full-refresh
                "full_refresh": bool(full or built_in_full),
                "started_at": started,
                "finished_at": finished,
                "seconds": round((finished - started).total_seconds(), 1),
                "status": status,
                "nodes": len(nodes),
                "failed": [n["node"] for n in nodes if n.get("status") not in ("success", "pass", "warn")],
                "models": conn.execute(
                    "select model, pairs_recomputed, rows_written, round(extract(epoch from finished_at - started_at)::numeric, 2) "
                    "from build_state.model_runs where invocation_id = %s order by started_at",
                    (invocation,),
                ).fetchall(),
            }
            break
    return current, last


def _last_audit(conn: psycopg.Connection) -> dict[str, Any] | None:
    row = conn.execute(
        "select finished_at, passed, rows_compared, mismatches, sample_per_pair, seed, full_audit, "
        "coalesce(report ->> 'sampled_from', 'every row') <> 'every row' "
        "from build_state.audits order by audit_id desc limit 1"
    ).fetchone()
    if row is None:
        return None
    keys = ["finished_at", "passed", "rows_compared", "mismatches", "sample_per_pair", "seed", "full", "written_sample"]
    return dict(zip(keys, row, strict=True))


def status(dsn: str) -> dict[str, Any]:
    """Everything `bqx status` shows, as data."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        now = conn.execute("select clock_timestamp()").fetchone()[0]
        if not _table_exists(conn, "raw.m1_bars"):
            return {"now": now, "source": {}, "models": {}, "build": None, "last_build": None, "last_audit": None}
        has_state = _table_exists(conn, "build_state.model_pairs")
        source = _source(conn) if has_state and _table_exists(conn, "raw.m1_changes") else {}
        models = _models(conn) if has_state and _table_exists(conn, "staging.m1_index") else {}
        # only pairs that have bars (the state also lists var pairs never loaded)
        models = {m: {p: v for p, v in per_pair.items() if p in source} for m, per_pair in models.items()}
        build, last = _builds(conn, now) if has_state else (None, None)
        audit = _last_audit(conn) if has_state else None
        writers = [h.describe() for h in holders(conn)] if has_state else []
    return {
        "now": now,
        "source": source,
        "models": models,
        "build": build,
        "last_build": last,
        "last_audit": audit,
        "writer_lock": writers,
    }


def _minute(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M") if value else "-"


def format_status(data: dict[str, Any]) -> str:
    source = data["source"]
    if not source:
        return "no bars loaded yet (or not built yet): run `bqx load PATH...` then `bqx build`"
    models = data["models"]
    order = ["m1_index"] + sorted(m for m in models if m != "m1_index")
    pairs = [p for p in PAIRS if p in source]
    lines = [f"source raw.m1_bars: {len(pairs)} pairs, last bar {_minute(max(s['last_bar'] for s in source.values()))}"]
    pending = {p: s["pending_change_rows"] for p, s in source.items() if s["pending_change_rows"]}
    if pending:
        lines.append("  not built yet (rows changed since the last build): " + ", ".join(f"{p} {n:,}" for p, n in pending.items()))
    lines.append("")
    lines.append(f"{'model':<24} {'pairs':>5}  {'last built (oldest pair)':<24} {'rows behind':>11}  built at")
    for model in order:
        per_pair = models.get(model, {})
        built = [v["last_built"] for p, v in per_pair.items() if p in source and v["last_built"]]
        behind = sum(v["rows_behind_index"] for p, v in per_pair.items() if p in source) + (
            sum(pending.values()) if model == "m1_index" else 0
        )
        when = max((v["built_at"] for v in per_pair.values()), default=None)
        lines.append(f"{model:<24} {len(built):>5}  {_minute(min(built) if built else None):<24} {behind:>11,}  {_minute(when)}")
    build = data["build"]
    if build:
        lines.append("")
        if build["alive"]:
            eta = f", ETA ~{build['eta_seconds']:.0f} s" if build["eta_seconds"] is not None else ""
            running = ", ".join(f"{m['model']} ({m['seconds']:.0f} s)" for m in build["running"]) or (
                "data tests (models done)" if build["models_done"] >= (build["models_selected"] or 0) else "data tests"
            )
            lines.append(
                f"build in progress since {_minute(build['started_at'])}: {build['models_done']}/{build['models_selected']} models, "
                f"{build['pair_models_done']} pair×models, {build['rows_written']:,} rows ({build['rows_per_second'] or 0:,.0f} rows/s){eta}; "
                f"now: {running}"
            )
        else:
            lines.append(f"build started {_minute(build['started_at'])} did not finish: {build['status']}")
    last = data["last_build"]
    if last:
        lines.append("")
        kind = "full" if last["full_refresh"] else "incremental"
        lines.append(
            f"last build ({kind}, dbt {last['command']}): {last['status']} at {_minute(last['finished_at'])} in {last['seconds']:.0f} s, "
            f"{len(last['models'])} models, {sum(m[2] for m in last['models']):,} rows written"
            + (f"; failed: {', '.join(last['failed'][:5])}" if last["failed"] else "")
        )
    audit = data["last_audit"]
    lines.append("")
    if audit:
        verdict = "passed" if audit["passed"] else f"FAILED ({audit['mismatches']} rows differ)"
        among = " among the rows the build wrote" if audit.get("written_sample") else ""
        scope = "every row" if audit["full"] else (
            f"{audit['sample_per_pair']} random minutes per pair and model{among} + changed minutes, seed {audit['seed']}"
        )
        lines.append(f"last audit: {verdict} at {_minute(audit['finished_at'])}, {audit['rows_compared']:,} rows ({scope})")
    else:
        lines.append("last audit: none yet (`bqx audit`)")
    if data.get("writer_lock"):
        lines.append("writer lock held by: " + "; ".join(data["writer_lock"]))
    return "\n".join(lines)
