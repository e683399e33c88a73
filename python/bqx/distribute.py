"""Citus: the source distributed by pair (`bqx db distribute`, docs/scale-out.md).

    raw.m1_bars          distributed by pair (hash), its monthly partitions with it: a partition
                         created later (`create table ... partition of`, what bqx load does on
                         Citus) is distributed by Citus as it is created, so no copy of the bars
                         stays on the coordinator
    raw.m1_rejects, raw.m1_bars_history, raw.load_log
                         reference tables (a copy on every node): their primary key is an
                         identity column alone (and a reject's pair may be NULL), which a table
                         distributed by pair cannot have; they are written once per load
    raw.m1_changes, build_state.*
                         stay local tables of the coordinator: they hold transaction ids and
                         snapshots (pg_visible_in_snapshot), which mean something only on the node
                         whose transactions they name, and the coordinator's transaction is the one
                         that loads and builds; they are small (a row per statement and pair, per
                         model and pair) and are joined only with each other and literal VALUES

The dbt models follow by themselves: when raw.m1_bars is distributed, every table model is
created distributed by pair, colocated with it (macros/distribution/distribution.sql).

Statement triggers cannot record changes on Citus (their transition tables do not reach a
trigger on a worker's shard), so the change log's triggers are removed from raw.m1_bars and
`bqx load` records the ranges it wrote in raw.m1_changes itself, in its transaction."""

from __future__ import annotations

import psycopg
from psycopg import sql

from bqx import raw_schema

REFERENCE_TABLES = ("m1_rejects", "m1_bars_history", "load_log")


class DistributeError(ValueError):
    """The server cannot distribute the source (no Citus, no worker)."""


def citus_installed(conn: psycopg.Connection) -> bool:
    row = conn.execute("select count(*) from pg_extension where extname = 'citus'").fetchone()
    return bool(row and row[0])


def distributed_tables(conn: psycopg.Connection) -> dict[str, str]:
    """Qualified name -> Citus method ('h' hash-distributed, 'n' reference) of the raw tables
    Citus manages; empty without Citus."""
    if not citus_installed(conn):
        return {}
    rows = conn.execute(
        "select logicalrelid::regclass::text, partmethod from pg_dist_partition "
        "where logicalrelid::regclass::text like 'raw.%'"
    ).fetchall()
    return {name: method for name, method in rows}


def source_distributed(conn: psycopg.Connection) -> bool:
    """Whether raw.m1_bars is a Citus distributed table (the switch the models follow)."""
    return distributed_tables(conn).get("raw.m1_bars") == "h"


def _drop_change_triggers(conn: psycopg.Connection) -> None:
    rows = conn.execute(
        """
        select t.tgname, t.tgrelid::regclass::text
        from pg_trigger as t
        where not t.tgisinternal and t.tgname like 'm1\\_changes\\_%'
            and (t.tgrelid = 'raw.m1_bars'::regclass
                 or t.tgrelid in (select inhrelid from pg_inherits where inhparent = 'raw.m1_bars'::regclass))
        """
    ).fetchall()
    for name, table in rows:
        schema, relation = table.split(".")
        conn.execute(
            sql.SQL("drop trigger {} on {}.{}").format(sql.Identifier(name), sql.Identifier(schema), sql.Identifier(relation))
        )


def distribute(conn: psycopg.Connection) -> list[str]:
    """Create the raw schema if missing and distribute it as the module's doc says (idempotent);
    return what was done, one line each. Call inside a transaction (the caller commits)."""
    if not citus_installed(conn):
        raise DistributeError(
            "the server has no citus extension: bqx db distribute needs Citus (create extension citus "
            "in the database, and add its workers with citus_add_node)"
        )
    workers = conn.execute("select count(*) from citus_get_active_worker_nodes()").fetchone()[0]
    if workers == 0:
        raise DistributeError("the Citus coordinator has no active worker: add them with citus_add_node first")
    raw_schema.ensure_raw_schema(conn)
    # the trigger installer of an older version would put triggers back on the distributed table
    conn.execute(raw_schema.ensure_triggers_function_ddl())
    done: list[str] = []
    managed = distributed_tables(conn)
    if managed.get("raw.m1_bars") != "h":
        _drop_change_triggers(conn)
        had_rows = conn.execute("select exists (select from raw.m1_bars)").fetchone()[0]
        conn.execute("select create_distributed_table('raw.m1_bars', 'pair')")
        if had_rows:
            # the rows are copied to the shards; the coordinator's own copy is removed
            conn.execute("select truncate_local_data_after_distributing_table('raw.m1_bars')")
        done.append(f"raw.m1_bars distributed by pair over {workers} workers")
    for table in REFERENCE_TABLES:
        name = f"raw.{table}"
        if managed.get(name) != "n":
            had_rows = conn.execute(sql.SQL("select exists (select from raw.{})").format(sql.Identifier(table))).fetchone()[0]
            conn.execute("select create_reference_table(%s)", (name,))
            if had_rows:
                conn.execute("select truncate_local_data_after_distributing_table(%s)", (name,))
            done.append(f"{name} made a reference table")
    built = conn.execute(
        "select count(*) from pg_class as c join pg_namespace as n on n.oid = c.relnamespace "
        "where n.nspname in ('staging', 'features', 'marts') and c.relkind in ('r', 'p')"
    ).fetchone()[0]
    if done and built:
        done.append("models built before were left as they are: rebuild them with `bqx build --full-refresh`")
    return done or ["already distributed: nothing to do"]


def record_loaded_changes(
    conn: psycopg.Connection, ranges: list[tuple[str, object, object, int]], operation: str
) -> None:
    """On a distributed source (no triggers): record what a load wrote, one row per pair
    (pair, first minute, last minute, rows), in the loading transaction."""
    if not ranges:
        return
    with conn.cursor() as cur:
        cur.executemany(
            "insert into raw.m1_changes (pair, first_ts, last_ts, operation, row_count) values (%s, %s, %s, %s, %s)",
            [(pair, first, last, operation, rows) for pair, first, last, rows in ranges],
        )
