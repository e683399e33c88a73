"""The `raw` schema: the bars as loaded, their rejects, their replaced values and the load log.

Every function here is idempotent (safe to call on every load) and takes a psycopg connection;
none of them commits: the caller owns the transaction.

    raw.m1_bars          the source of every feature: one row per (pair, ts_utc), partitioned by
                         month of ts_utc (UTC) into raw.m1_bars_YYYY_MM
    raw.m1_rejects       every input row that broke a load rule, with the rule and where it was
    raw.m1_bars_history  the previous values of a bar that a later load corrected
    raw.load_log         one row per file load, with its counts
    raw.m1_changes       the change log: per statement that wrote raw.m1_bars (any writer: bqx
                         load, psql, COPY) and per pair, the first and last minute it touched and
                         the writing transaction's id; kept by statement-level triggers, so the
                         incremental build finds what changed without scanning the bars
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import psycopg
from psycopg import errors, sql

SCHEMA = "raw"
BARS_TABLE = "m1_bars"

# The widest limits of a plausible bar: the CHECK constraints of raw.m1_bars below, and the
# bounds of the loader's configurable rules (bqx.load.rules), which may narrow them, never widen.
# Prices: the 28 pairs trade between ~0.5 and ~300; these bounds keep every feature finite in
# float8 (an index of close / baseline up to 1e9, its powers in REG, spread / close * 1e4).
PRICE_MIN = 1e-4
PRICE_MAX = 1e5
# A bigint must hold volume² (volume_features squares it): √(2⁶³) ≈ 3.04e9; a minute's tick
# volume is in the thousands.
VOLUME_MAX = 1_000_000_000
# Floating exchange rates start in the early 1970s; a CHECK cannot know "now" (its verdict must
# not change with time), so the database stops at 2100 and the loader at now + a few minutes.
EARLIEST_BAR = dt.datetime(1971, 1, 1, tzinfo=dt.UTC)
LATEST_BAR = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)  # exclusive


def _utc_literal(stamp: dt.datetime) -> str:
    return f"'{stamp.strftime('%Y-%m-%d %H:%M:%S')}+00'"


# The rules a bar must satisfy; the loader enforces the same rules row by row (and names the one a
# rejected row broke), the constraints are the last line of defence for anyone writing directly.
BAR_CONSTRAINTS: dict[str, str] = {
    "m1_bars_prices_in_range": " and ".join(
        f"{price} between {PRICE_MIN!r} and {PRICE_MAX!r}" for price in ("open", "high", "low", "close")
    ),  # NaN compares above every number in PostgreSQL, so NaN and ±Infinity are out of range
    "m1_bars_low_le_open_close": "low <= least(open, close)",
    "m1_bars_high_ge_open_close": "high >= greatest(open, close)",
    "m1_bars_volume_in_range": f"volume between 0 and {VOLUME_MAX}",
    "m1_bars_spread_in_range": "spread is null or (spread >= 0 and spread <= close)",
    # on the epoch, not date_trunc: date_trunc works in the session's zone, and zones with offsets
    # in seconds (Africa/Monrovia until 1972) would disagree with the loader
    "m1_bars_ts_whole_utc_minute": "extract(epoch from ts_utc) % 60 = 0",
    "m1_bars_ts_in_range": f"ts_utc >= {_utc_literal(EARLIEST_BAR)} and ts_utc < {_utc_literal(LATEST_BAR)}",
}
# constraints of earlier versions, replaced by the ones above when a schema is upgraded
OBSOLETE_BAR_CONSTRAINTS = (
    "m1_bars_prices_positive",
    "m1_bars_prices_finite",
    "m1_bars_volume_non_negative",
    "m1_bars_spread_non_negative",
    "m1_bars_ts_whole_minute",
)

_BARS_DDL = (
    """
create table if not exists raw.m1_bars (
    pair        text             not null,
    ts_utc      timestamptz      not null,
    open        double precision not null,
    high        double precision not null,
    low         double precision not null,
    close       double precision not null,
    volume      bigint           not null,
    spread      double precision,
    loaded_at   timestamptz      not null default now(),
    source_file text,
    constraint m1_bars_pkey primary key (pair, ts_utc),
"""
    + ",\n".join(f"    constraint {name} check ({check})" for name, check in BAR_CONSTRAINTS.items())
    + """
) partition by range (ts_utc)
"""
)

_REJECTS_DDL = """
create table if not exists raw.m1_rejects (
    reject_id   bigint generated always as identity primary key,
    rejected_at timestamptz not null default now(),
    source_file text,
    line_number bigint,
    raw_text    text,
    pair        text,
    ts_utc      text,
    reason      text not null,
    detail      text
)
"""

_HISTORY_DDL = """
create table if not exists raw.m1_bars_history (
    history_id       bigint generated always as identity primary key,
    pair             text             not null,
    ts_utc           timestamptz      not null,
    open             double precision not null,
    high             double precision not null,
    low              double precision not null,
    close            double precision not null,
    volume           bigint           not null,
    spread           double precision,
    loaded_at        timestamptz      not null,
    source_file      text,
    replaced_at      timestamptz      not null default now(),
    replaced_by_file text
)
"""

_LOAD_LOG_DDL = """
create table if not exists raw.load_log (
    load_id        bigint generated always as identity primary key,
    file           text        not null,
    format         text        not null,
    started_at     timestamptz not null,
    finished_at    timestamptz not null default clock_timestamp(),
    rows_read      bigint      not null,
    rows_loaded    bigint      not null,
    rows_unchanged bigint      not null,
    rows_replaced  bigint      not null,
    rows_rejected  bigint      not null
)
"""

# The change log. One row per (statement, pair): first_ts .. last_ts is the range of minutes the
# statement inserted, updated (old and new keys) or deleted for that pair; pair NULL means every
# pair from first_ts on (TRUNCATE, a partition attached by hand). `xid` is the writing
# transaction: a build consumes exactly the changes visible in the snapshot it read the bars
# with (pg_visible_in_snapshot), so a change committed during a build is never lost (change ids
# are assigned before commit and may become visible out of order: they are no watermark).
_CHANGES_DDL = """
create table if not exists raw.m1_changes (
    change_id  bigint generated always as identity primary key,
    pair       text,
    first_ts   timestamptz not null,
    last_ts    timestamptz not null,
    operation  text        not null,
    row_count  bigint      not null,
    xid        xid8        not null default pg_current_xact_id(),
    changed_at timestamptz not null default clock_timestamp(),
    changed_by text        not null default session_user
)
"""

_CHANGES_INDEX = "create index if not exists m1_changes_pair_xid on raw.m1_changes (pair, xid)"

# security definer: a writer of raw.m1_bars needs no right on the change log (and so cannot
# forge or erase entries); the search_path is pinned so the definer's rights cannot be steered.
_CHANGES_FUNCTION = """
create or replace function raw.record_m1_changes() returns trigger
language plpgsql security definer set search_path = pg_catalog, raw as $record$
begin
    if tg_op = 'INSERT' then
        insert into raw.m1_changes (pair, first_ts, last_ts, operation, row_count)
        select pair, min(ts_utc), max(ts_utc), 'insert', count(*) from new_rows group by pair;
    elsif tg_op = 'UPDATE' then
        insert into raw.m1_changes (pair, first_ts, last_ts, operation, row_count)
        select pair, min(ts_utc), max(ts_utc), 'update', count(*) filter (where side = 'new')
        from (
            select pair, ts_utc, 'old' as side from old_rows
            union all
            select pair, ts_utc, 'new' as side from new_rows
        ) as touched
        group by pair;
    elsif tg_op = 'DELETE' then
        insert into raw.m1_changes (pair, first_ts, last_ts, operation, row_count)
        select pair, min(ts_utc), max(ts_utc), 'delete', count(*) from old_rows group by pair;
    elsif tg_op = 'TRUNCATE' then
        insert into raw.m1_changes (pair, first_ts, last_ts, operation, row_count)
        values (null, '-infinity', 'infinity', 'truncate ' || tg_table_name, 0);
    end if;
    return null;
end
$record$
"""

# statement-level triggers (one call per statement, rows in transition tables): on the parent
# for DML through it, and on every partition for DML aimed at a partition directly (statement
# triggers of a partitioned table do not fire then). COPY fires them too.
_CHANGE_TRIGGERS = {
    "m1_changes_insert": "after insert on {table} referencing new table as new_rows",
    "m1_changes_update": "after update on {table} referencing old table as old_rows new table as new_rows",
    "m1_changes_delete": "after delete on {table} referencing old table as old_rows",
    "m1_changes_truncate": "after truncate on {table}",
}

_CHANGE_LOG_COMMENTS = [
    "comment on table raw.m1_changes is "
    "'change log of raw.m1_bars, kept by statement-level triggers on the table and on every partition: "
    "per statement and pair the first and last minute touched and the writing transaction (xid); "
    "pair null = every pair (truncate, attach by hand). dbt builds read it to find what to recompute'",
    "comment on column raw.m1_changes.xid is "
    "'the writing transaction: a build consumed this change iff pg_visible_in_snapshot(xid, its snapshot)'",
]

# Installs the triggers on raw.m1_bars and on each partition that lacks them. A partition without
# them was made behind the change log's back (attached by `bqx load` after a COPY into a detached
# table, or by hand): its rows are recorded first, per pair, as an 'attach' change. Callable from
# SQL (dbt's on-run-start calls it), so partitions made by hand are covered before every build.
_ENSURE_TRIGGERS_FUNCTION = """
create or replace function raw.ensure_change_triggers() returns integer
language plpgsql security definer set search_path = pg_catalog, raw as $ensure$
declare
    target regclass;
    is_partition boolean;
    trigger_spec record;
    added integer := 0;
    distributed boolean := false;
begin
    -- on Citus a distributed raw.m1_bars carries no trigger: bqx load records its changes itself
    -- (python/bqx/distribute.py)
    if to_regclass('pg_catalog.pg_dist_partition') is not null then
        execute 'select exists (select from pg_catalog.pg_dist_partition where logicalrelid = $1)'
            into distributed using 'raw.m1_bars'::regclass;
        if distributed then
            return 0;
        end if;
    end if;
    for target, is_partition in
        select 'raw.m1_bars'::regclass, false
        union all
        select inhrelid::regclass, true from pg_inherits where inhparent = 'raw.m1_bars'::regclass
    loop
        if (select count(*) from pg_trigger
            where tgrelid = target and tgname like 'm1\\_changes\\_%' and not tgisinternal) = 4 then
            continue;
        end if;
        if is_partition then
            execute format(
                'insert into raw.m1_changes (pair, first_ts, last_ts, operation, row_count) '
                'select pair, min(ts_utc), max(ts_utc), %L, count(*) from %s group by pair',
                'attach ' || target::text, target);
        end if;
        for trigger_spec in
            select * from (values {trigger_values}) as specs (name, timing)
        loop
            execute format('drop trigger if exists %I on %s', trigger_spec.name, target);
            execute format(
                'create trigger %I ' || replace(trigger_spec.timing, '{table}', target::text)
                || ' for each statement execute function raw.record_m1_changes()',
                trigger_spec.name);
        end loop;
        added := added + 1;
    end loop;
    return added;
end
$ensure$
"""

_COMMENTS = [
    "comment on table raw.m1_bars is "
    "'1-minute mid-price bars as loaded by `bqx load`; one row per (pair, ts_utc); "
    "partitioned by UTC month into raw.m1_bars_YYYY_MM'",
    "comment on column raw.m1_bars.ts_utc is 'bar open time, whole minute, UTC'",
    "comment on column raw.m1_bars.volume is 'tick volume, >= 0'",
    "comment on column raw.m1_bars.spread is 'mean bid-ask spread in price units, >= 0, may be null'",
    "comment on column raw.m1_bars.loaded_at is 'when this version of the bar was written'",
    "comment on column raw.m1_bars.source_file is 'the file (or frame) this version came from'",
    "comment on table raw.m1_rejects is "
    "'input rows that broke a load rule: reason is the rule code, detail a sentence naming file, line, rule, value'",
    "comment on column raw.m1_rejects.line_number is "
    "'1-based physical line of the file (parquet and frames: row index + 1)'",
    "comment on column raw.m1_rejects.raw_text is 'the original line (parquet and frames: the row as JSON)'",
    "comment on table raw.m1_bars_history is "
    "'previous versions of bars that a later load replaced with different values'",
    "comment on table raw.load_log is 'one row per file loaded by `bqx load`'",
]

# A reject is recorded once: the same file name, line, rule and line text (a reload of an
# unchanged file, or of one with lines appended, adds nothing; a changed line is a new reject).
# md5 of the text: a line can be longer than an index entry may be.
REJECTS_UNIQUE_INDEX = "m1_rejects_once"
_REJECTS_UNIQUE_DDL = (
    f"create unique index if not exists {REJECTS_UNIQUE_INDEX} on raw.m1_rejects "
    "(source_file, line_number, reason, md5(coalesce(raw_text, '')))"
)

_INDEXES = [
    "create index if not exists m1_bars_history_pair_ts on raw.m1_bars_history (pair, ts_utc)",
    "create index if not exists m1_rejects_source_file on raw.m1_rejects (source_file, line_number)",
    _REJECTS_UNIQUE_DDL,
]

_IDEMPOTENT_RACE = (errors.DuplicateTable, errors.DuplicateObject, errors.DuplicateSchema, errors.UniqueViolation)


def _execute_tolerant(conn: psycopg.Connection, statement: str | sql.Composable) -> None:
    """Run one `create ... if not exists`; a concurrent session creating the same object wins."""
    try:
        with conn.transaction():  # a savepoint when the caller is in a transaction
            conn.execute(statement)
    except _IDEMPOTENT_RACE:
        pass


def raw_schema_exists(conn: psycopg.Connection) -> bool:
    # a plain catalog query (not to_regclass, whose negative cache entries can outlive another
    # session's commit within our transaction) so that the answer follows the statement snapshot
    row = conn.execute(
        """
        select count(*) = 4
        from pg_class as c
        join pg_namespace as n on n.oid = c.relnamespace
        where n.nspname = 'raw' and c.relname in ('m1_bars', 'm1_rejects', 'm1_bars_history', 'load_log')
        """
    ).fetchone()
    return bool(row and row[0])


def ensure_raw_schema(conn: psycopg.Connection) -> list[str]:
    """Create the `raw` schema and its four tables if missing (no partition: see below), or bring
    an existing one up to date (`upgrade_raw_schema`); return notes for the user.

    Concurrent callers are serialised by a transaction-scoped advisory lock (call it inside a
    transaction: the lock is held until the caller commits, and a waiter then finds the schema)."""
    if raw_schema_exists(conn):
        notes = upgrade_raw_schema(conn)
    else:
        _lock_schema(conn)
        if raw_schema_exists(conn):
            notes = upgrade_raw_schema(conn)
        else:
            _execute_tolerant(conn, "create schema if not exists raw")
            for ddl in (_BARS_DDL, _REJECTS_DDL, _HISTORY_DDL, _LOAD_LOG_DDL, *_INDEXES):
                _execute_tolerant(conn, ddl)
            for comment in _COMMENTS:
                conn.execute(comment)
            notes = []
    # every write to raw.m1_bars is recorded in raw.m1_changes (statement triggers)
    ensure_change_log(conn)
    return notes


def _lock_schema(conn: psycopg.Connection) -> None:
    conn.execute("select pg_advisory_xact_lock(hashtext('bqx.raw schema'))")


def _bar_constraint_names(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute(
        "select conname from pg_constraint where conrelid = 'raw.m1_bars'::regclass and contype = 'c'"
    ).fetchall()
    return {name for (name,) in rows}


def _index_exists(conn: psycopg.Connection, name: str) -> bool:
    row = conn.execute(
        "select count(*) from pg_indexes where schemaname = %s and indexname = %s", (SCHEMA, name)
    ).fetchone()
    return bool(row and row[0])


def _up_to_date(conn: psycopg.Connection) -> bool:
    names = _bar_constraint_names(conn)
    return set(BAR_CONSTRAINTS) <= names and not names & set(OBSOLETE_BAR_CONSTRAINTS) and _index_exists(
        conn, REJECTS_UNIQUE_INDEX
    )


def upgrade_raw_schema(conn: psycopg.Connection) -> list[str]:
    """Bring a raw schema made by an earlier version to this version's rules; return notes.

    - raw.m1_bars gets the CHECK constraints of BAR_CONSTRAINTS that it lacks (which scans every
      bar once) and loses the obsolete ones, in one step: if a stored bar breaks a new constraint,
      nothing changes, and the note names the constraint, how many bars break it and the query
      that lists them (the loader's rules still apply to every new row; delete or correct the bars
      and the next load adds the constraints).
    - raw.m1_rejects gets its unique key; rejects recorded more than once by earlier versions
      (same file, line, rule and text) are deleted first, keeping the first of each.
    A quick catalog check when the schema is up to date (every load calls this)."""
    if _up_to_date(conn):
        return []
    _lock_schema(conn)
    notes: list[str] = []
    if not _index_exists(conn, REJECTS_UNIQUE_INDEX):
        removed = conn.execute(
            """
            delete from raw.m1_rejects as later
            using raw.m1_rejects as earlier
            where later.reject_id > earlier.reject_id
                and later.source_file is not distinct from earlier.source_file
                and later.line_number is not distinct from earlier.line_number
                and later.reason = earlier.reason
                and md5(coalesce(later.raw_text, '')) = md5(coalesce(earlier.raw_text, ''))
            """
        ).rowcount
        if removed > 0:
            notes.append(f"removed {removed:,} rejects that an earlier version had recorded more than once")
        _execute_tolerant(conn, _REJECTS_UNIQUE_DDL)
    names = _bar_constraint_names(conn)
    missing = {name: check for name, check in BAR_CONSTRAINTS.items() if name not in names}
    obsolete = [name for name in OBSOLETE_BAR_CONSTRAINTS if name in names]
    if not missing and not obsolete:
        return notes
    try:
        with conn.transaction():
            for name, check in missing.items():
                conn.execute(
                    sql.SQL("alter table raw.m1_bars add constraint {} check ({})").format(
                        sql.Identifier(name), sql.SQL(check)
                    )
                )
            for name in obsolete:
                conn.execute(sql.SQL("alter table raw.m1_bars drop constraint {}").format(sql.Identifier(name)))
    except errors.CheckViolation:
        for name, check in missing.items():
            query = sql.SQL("select count(*) from raw.m1_bars where not ({})").format(sql.SQL(check))
            row = conn.execute(query).fetchone()
            if row and row[0]:
                notes.append(
                    f"raw.m1_bars keeps the constraints of an earlier version: {row[0]:,} stored bars break "
                    f"{name} (list them with: select * from raw.m1_bars where not ({check})); "
                    "correct or delete them and the next bqx load adds the constraint"
                )
    return notes


def ensure_triggers_function_ddl() -> str:
    """The DDL of raw.ensure_change_triggers() (create or replace)."""
    return _ensure_triggers_ddl()


def _ensure_triggers_ddl() -> str:
    values = ", ".join(
        f"('{name}', '{timing.format(table='{table}')}')" for name, timing in _CHANGE_TRIGGERS.items()
    )
    return _ENSURE_TRIGGERS_FUNCTION.replace("{trigger_values}", values)


def change_log_installed(conn: psycopg.Connection) -> bool:
    row = conn.execute(
        """
        select count(*) = 2
        from pg_proc as p
        join pg_namespace as n on n.oid = p.pronamespace
        where n.nspname = 'raw' and p.proname in ('record_m1_changes', 'ensure_change_triggers')
        """
    ).fetchone()
    return bool(row and row[0]) and conn.execute("select to_regclass('raw.m1_changes') is not null").fetchone()[0]


def ensure_change_log(conn: psycopg.Connection) -> int:
    """Create raw.m1_changes and its triggers if missing, and put the triggers on every partition
    of raw.m1_bars that lacks them (recording such a partition's rows as changed). Returns the
    number of tables that got triggers. Call inside a transaction (the caller commits)."""
    if not change_log_installed(conn):
        conn.execute("select pg_advisory_xact_lock(hashtext('bqx.raw change log'))")
        if not change_log_installed(conn):
            for ddl in (_CHANGES_DDL, _CHANGES_INDEX):
                _execute_tolerant(conn, ddl)
            conn.execute(_CHANGES_FUNCTION)
            conn.execute(_ensure_triggers_ddl())
            for comment in _CHANGE_LOG_COMMENTS:
                conn.execute(comment)
    return int(conn.execute("select raw.ensure_change_triggers()").fetchone()[0])


def partition_name(month: dt.date) -> str:
    return f"{BARS_TABLE}_{month.year:04d}_{month.month:02d}"


def _month_start(day: dt.date) -> dt.date:
    return dt.date(day.year, day.month, 1)


def _next_month(month: dt.date) -> dt.date:
    return dt.date(month.year + month.month // 12, month.month % 12 + 1, 1)


def existing_partitions(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute(
        """
        select child.relname
        from pg_inherits
        join pg_class as child on child.oid = pg_inherits.inhrelid
        join pg_class as parent on parent.oid = pg_inherits.inhparent
        join pg_namespace as ns on ns.oid = parent.relnamespace
        where ns.nspname = %s and parent.relname = %s
        """,
        (SCHEMA, BARS_TABLE),
    ).fetchall()
    return {name for (name,) in rows}


def lock_partitions(conn: psycopg.Connection) -> None:
    """Serialise the sessions that create partitions of raw.m1_bars (until their commit)."""
    conn.execute("select pg_advisory_xact_lock(hashtext('bqx.raw.m1_bars partitions'))")


def ensure_month_partitions(conn: psycopg.Connection, months: Iterable[dt.date]) -> list[str]:
    """Create `raw.m1_bars_YYYY_MM` for each month (any day of it) if missing; return the new ones.

    Bounds are literal UTC instants ('YYYY-MM-01 00:00:00+00'), so the partition holds exactly the
    UTC month whatever the session's TimeZone. Concurrent loaders: a transaction-scoped advisory
    lock serialises creators, and a partition made meanwhile by another session is not an error.
    """
    wanted = sorted({_month_start(m) for m in months})
    if not wanted:
        return []
    have = existing_partitions(conn)
    missing = [m for m in wanted if partition_name(m) not in have]
    if not missing:
        return []
    lock_partitions(conn)
    have = existing_partitions(conn)
    created = []
    for month in missing:
        name = partition_name(month)
        if name in have:
            continue
        lo, hi = _bounds(month)
        statement = sql.SQL(
            "create table if not exists {schema}.{name} partition of {schema}.{parent} "
            "for values from ({lo}) to ({hi})"
        ).format(
            schema=sql.Identifier(SCHEMA), name=sql.Identifier(name), parent=sql.Identifier(BARS_TABLE), lo=lo, hi=hi
        )
        _execute_tolerant(conn, statement)
        created.append(name)
    if created:
        ensure_change_log(conn)  # the new partitions' triggers
    return created


def _bounds(month: dt.date) -> tuple[sql.Literal, sql.Literal]:
    return sql.Literal(f"{month.isoformat()} 00:00:00+00"), sql.Literal(f"{_next_month(month).isoformat()} 00:00:00+00")


def create_detached_month(conn: psycopg.Connection, month: dt.date) -> str:
    """Bulk-load path for a month that has no partition yet: create `raw.m1_bars_YYYY_MM` as a
    plain table shaped like raw.m1_bars (same columns, defaults and checks, no primary key yet)
    plus a check of the month's bounds; fill it, then `attach_month`, in the same transaction.

    A table created in the loading transaction is written without WAL (wal_level = minimal), the
    primary key is built once by a sort instead of row by row, and attaching takes only a SHARE
    UPDATE EXCLUSIVE lock on raw.m1_bars (readers are never blocked, unlike `create table ...
    partition of`, which locks the parent exclusively until commit). Returns the qualified name.
    """
    name = partition_name(month)
    lo, hi = _bounds(month)
    conn.execute(
        sql.SQL(
            "create table {schema}.{name} (like {schema}.{parent} including defaults including constraints)"
        ).format(schema=sql.Identifier(SCHEMA), name=sql.Identifier(name), parent=sql.Identifier(BARS_TABLE))
    )
    conn.execute(
        sql.SQL("alter table {schema}.{name} add constraint {check} check (ts_utc >= {lo} and ts_utc < {hi})").format(
            schema=sql.Identifier(SCHEMA),
            name=sql.Identifier(name),
            check=sql.Identifier(f"{name}_bounds"),
            lo=lo,
            hi=hi,
        )
    )
    return f"{SCHEMA}.{name}"


def attach_month(conn: psycopg.Connection, month: dt.date) -> None:
    """Index and attach a table made by `create_detached_month` as the month's partition."""
    name = partition_name(month)
    lo, hi = _bounds(month)
    ident = {"schema": sql.Identifier(SCHEMA), "name": sql.Identifier(name), "parent": sql.Identifier(BARS_TABLE)}
    conn.execute(
        sql.SQL("alter table {schema}.{name} add constraint {pkey} primary key (pair, ts_utc)").format(
            pkey=sql.Identifier(f"{name}_pkey"), **ident
        )
    )
    # the bounds check proves the partition constraint, so attaching does not scan the rows
    conn.execute(
        sql.SQL(
            "alter table {schema}.{parent} attach partition {schema}.{name} for values from ({lo}) to ({hi})"
        ).format(lo=lo, hi=hi, **ident)
    )
    conn.execute(
        sql.SQL("alter table {schema}.{name} drop constraint {check}").format(
            check=sql.Identifier(f"{name}_bounds"), **ident
        )
    )
    # the COPY into the detached table fired no trigger: record its rows per pair and give the
    # partition its triggers, in the loading transaction
    ensure_change_log(conn)
