"""Writing one checked file: its bars by binary COPY, by month, its rejects and its load_log row,
in one transaction (a file is loaded whole or not at all).

A key that is new is inserted; a key that exists with identical values is left alone (loaded_at
unchanged); a key that exists with different values is updated (loaded_at = now(), source_file =
this file) after its old version is copied to raw.m1_bars_history with replaced_at and
replaced_by_file. Loading the same file twice changes nothing.

Three paths, chosen per month of the file:
  - a month without a partition: a new table filled by COPY, indexed, then attached as
    raw.m1_bars_YYYY_MM;
  - a month whose partition holds no bar of the file's pairs in the file's time range: COPY
    straight into raw.m1_bars;
  - otherwise: COPY into a temporary table and merge (new, unchanged, replaced) in SQL.
Partitions are UTC months whatever the session's TimeZone. Replacing many bars is the slow case
(~50k bars/s: every one is an UPDATE plus a history row); new and unchanged bars go at several
hundred thousand rows/s.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import psycopg
from psycopg import errors

from bqx import pgcopy
from bqx.bar_formats import BAR_COLUMNS, PRICE_COLUMNS
from bqx.load.errors import FileSkipped
from bqx.load.parse import ParsedRows
from bqx.load.rules import CheckedRows, RejectRecord
from bqx.distribute import record_loaded_changes, source_distributed
from bqx.pairs import PAIRS
from bqx.raw_schema import (
    attach_month,
    create_detached_month,
    ensure_month_partitions,
    existing_partitions,
    lock_partitions,
    partition_name,
)

BAR_COLUMNS_SQL = ", ".join(BAR_COLUMNS)
PAIR_BYTES = np.array(PAIRS, dtype="S6")

# errors that mean another session was loading the same bars or months at the same time
CONCURRENT_LOAD_ERRORS = (
    errors.UniqueViolation,
    errors.DuplicateTable,
    errors.SerializationFailure,
    errors.DeadlockDetected,
    errors.InvalidObjectDefinition,  # "partition would overlap"
)
ATTEMPTS = 3  # a file whose bars another session loaded meanwhile is merged on the next attempt


@dataclass(frozen=True)
class WrittenBars:
    new: int
    replaced: int
    unchanged: int


@dataclass(frozen=True)
class WrittenFile:
    bars: WrittenBars
    rejects_recorded: int  # rejects not recorded by an earlier load of the same file


def bar_copy_columns(rows: ParsedRows, source_file: str | None) -> list[pgcopy.CopyColumn]:
    """The COPY columns of raw.m1_bars (BAR_COLUMNS[, source_file]) for every row of a file."""
    columns = [
        pgcopy.text(PAIR_BYTES[rows.pair_code]),
        pgcopy.timestamptz(rows.ts_us),
        *(pgcopy.float8(rows.numbers[k], nan_is_null=False) for k in PRICE_COLUMNS),  # checked finite
        pgcopy.int8(rows.numbers["volume"]),  # float64 holding whole numbers, converted as they are copied
        pgcopy.float8(rows.numbers["spread"]),  # NaN = NULL
    ]
    if source_file is not None:
        columns.append(pgcopy.text(source_file))
    return columns


def to_datetime(us: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=int(us))


def bars_stored_between(cur: psycopg.Cursor, pair_codes: np.ndarray, lo_us: int, hi_us: int) -> bool:
    """Whether raw.m1_bars holds a bar of these pairs between the two instants (inclusive)."""
    pairs = [PAIRS[c] for c in np.unique(pair_codes)]
    row = cur.execute(
        "select exists (select 1 from raw.m1_bars where pair = any(%s) and ts_utc >= %s and ts_utc <= %s)",
        (pairs, to_datetime(lo_us), to_datetime(hi_us)),
    ).fetchone()
    return bool(row and row[0])


STAGE_SQL = """
create temp table bqx_load_stage (
    pair text, ts_utc timestamptz, open float8, high float8, low float8, close float8,
    volume int8, spread float8
) on commit drop
"""

DIFF_SQL = """
create temp table bqx_load_diff on commit drop as
select
    s.pair, s.ts_utc, s.open, s.high, s.low, s.close, s.volume, s.spread,
    b.ts_utc is null as is_new,
    b.open as old_open, b.high as old_high, b.low as old_low, b.close as old_close,
    b.volume as old_volume, b.spread as old_spread, b.loaded_at as old_loaded_at,
    b.source_file as old_source_file
from bqx_load_stage as s
left join raw.m1_bars as b
    on b.pair = s.pair and b.ts_utc = s.ts_utc and b.ts_utc >= %(lo)s and b.ts_utc <= %(hi)s
where b.ts_utc is null
    or (b.open, b.high, b.low, b.close, b.volume, b.spread)
    is distinct from (s.open, s.high, s.low, s.close, s.volume, s.spread)
"""

HISTORY_SQL = """
insert into raw.m1_bars_history (
    pair, ts_utc, open, high, low, close, volume, spread, loaded_at, source_file, replaced_at, replaced_by_file
)
select
    pair, ts_utc, old_open, old_high, old_low, old_close, old_volume, old_spread, old_loaded_at,
    old_source_file, now(), %(file)s
from bqx_load_diff
where not is_new
"""

UPDATE_SQL = """
update raw.m1_bars as b
set open = d.open, high = d.high, low = d.low, close = d.close, volume = d.volume, spread = d.spread,
    loaded_at = now(), source_file = %(file)s
from bqx_load_diff as d
where not d.is_new and b.pair = d.pair and b.ts_utc = d.ts_utc and b.ts_utc >= %(lo)s and b.ts_utc <= %(hi)s
"""

INSERT_SQL = f"""
insert into raw.m1_bars ({BAR_COLUMNS_SQL}, source_file)
select {BAR_COLUMNS_SQL}, %(file)s from bqx_load_diff where is_new order by pair, ts_utc
"""


def month_numbers(ts_us: np.ndarray) -> np.ndarray:
    """Months since 1970-01 (UTC) of Unix-microsecond timestamps."""
    return ts_us.astype("datetime64[us]").astype("datetime64[M]").astype(np.int64)


def month_start(number: int) -> dt.date:
    """The first day of a month numbered as by month_numbers."""
    return dt.date(1970 + number // 12, number % 12 + 1, 1)


def merge_staged(
    cur: psycopg.Cursor, rows: ParsedRows, part: np.ndarray, source_name: str
) -> tuple[int, int]:
    """Merge rows whose keys may exist already; return (new, replaced)."""
    lo_us, hi_us = int(rows.ts_us[part].min()), int(rows.ts_us[part].max())
    params = {"file": source_name, "lo": to_datetime(lo_us), "hi": to_datetime(hi_us)}
    cur.execute(STAGE_SQL)
    pgcopy.send(
        cur,
        f"copy bqx_load_stage ({BAR_COLUMNS_SQL}) from stdin (format binary)",
        pgcopy.copy_chunks(bar_copy_columns(rows, None), part),
    )
    # no ANALYZE: the planner's estimate from the table's size picks the right join (measured)
    cur.execute(DIFF_SQL, params)
    cur.execute(HISTORY_SQL, params)
    replaced = cur.rowcount
    cur.execute(UPDATE_SQL, params)
    if cur.rowcount != replaced:  # pragma: no cover - another session changed the rows meanwhile
        raise errors.SerializationFailure("bars changed during the load")
    cur.execute(INSERT_SQL, params)
    new = cur.rowcount
    cur.execute("drop table bqx_load_diff; drop table bqx_load_stage")
    return new, replaced


def write_bars(
    conn: psycopg.Connection, rows: ParsedRows, good: np.ndarray, source_name: str, *, cautious: bool
) -> WrittenBars:
    """Write the good rows in the caller's transaction, by the three paths of the module's doc.
    `cautious` (a retry after a concurrent session got in the way) merges everything."""
    if len(good) == 0:
        return WrittenBars(0, 0, 0)
    cur = conn.cursor()
    month_of = month_numbers(rows.ts_us[good])
    months = np.unique(month_of)
    if cautious:
        ensure_month_partitions(conn, [month_start(int(m)) for m in months])
        new, replaced = merge_staged(cur, rows, good, source_name)
        return WrittenBars(new, replaced, len(good) - new - replaced)
    have = existing_partitions(conn)
    fresh = [int(m) for m in months if partition_name(month_start(int(m))) not in have]
    if fresh and source_distributed(conn):
        # Citus: a table created apart and attached would keep a local copy of its rows on the
        # coordinator; a partition created empty is distributed as it is created (bqx.distribute)
        ensure_month_partitions(conn, [month_start(m) for m in fresh])
        fresh = []
    if fresh:
        # one creator of partitions at a time; another may have made some while we waited
        lock_partitions(conn)
        have = existing_partitions(conn)
        fresh = [m for m in fresh if partition_name(month_start(m)) not in have]
    with_source = bar_copy_columns(rows, source_name)
    new = replaced = 0
    for m in fresh:
        month = month_start(m)
        part = good[month_of == m]
        table = create_detached_month(conn, month)
        pgcopy.send(
            cur,
            # freeze: the new table was created in this (sub)transaction, so its rows can be written
            # frozen and all-visible; the first reader then does not rewrite every page for hint bits
            f"copy {table} ({BAR_COLUMNS_SQL}, source_file) from stdin (format binary, freeze)",
            pgcopy.copy_chunks(with_source, part),
        )
        attach_month(conn, month)
        new += len(part)
    rest = good[~np.isin(month_of, fresh)] if fresh else good
    if len(rest):
        lo_us, hi_us = int(rows.ts_us[rest].min()), int(rows.ts_us[rest].max())
        if not bars_stored_between(cur, rows.pair_code[rest], lo_us, hi_us):
            pgcopy.send(
                cur,
                f"copy raw.m1_bars ({BAR_COLUMNS_SQL}, source_file) from stdin (format binary)",
                pgcopy.copy_chunks(with_source, rest),
            )
            new += len(rest)
        else:
            merged_new, replaced = merge_staged(cur, rows, rest, source_name)
            new += merged_new
    return WrittenBars(new, replaced, len(good) - new - replaced)


def pair_ranges(rows: ParsedRows, good: np.ndarray) -> list[tuple[str, dt.datetime, dt.datetime, int]]:
    """Per pair of the good rows: first and last minute and the number of rows."""
    ranges = []
    codes = rows.pair_code[good]
    stamps = rows.ts_us[good]
    for code in np.unique(codes):
        mine = stamps[codes == code]
        ranges.append((PAIRS[int(code)], to_datetime(int(mine.min())), to_datetime(int(mine.max())), len(mine)))
    return ranges


REJECT_COLUMNS_SQL = "source_file, line_number, raw_text, pair, ts_utc, reason, detail"


def write_rejects(conn: psycopg.Connection, records: Sequence[RejectRecord]) -> int:
    """Record rejects in raw.m1_rejects, each (file, line, rule, line text) once: those an earlier
    load recorded already are left alone (its unique key m1_rejects_once). Returns how many are new."""
    if not records:
        return 0
    with conn.cursor() as cur:
        cur.execute(
            "create temp table bqx_load_rejects (source_file text, line_number bigint, raw_text text, "
            "pair text, ts_utc text, reason text, detail text) on commit drop"
        )
        with cur.copy(f"copy bqx_load_rejects ({REJECT_COLUMNS_SQL}) from stdin") as copy:
            for record in records:
                copy.write_row(record)
        cur.execute(
            f"insert into raw.m1_rejects ({REJECT_COLUMNS_SQL}) "
            f"select {REJECT_COLUMNS_SQL} from bqx_load_rejects order by line_number on conflict do nothing"
        )
        recorded = cur.rowcount
        cur.execute("drop table bqx_load_rejects")
    return recorded


def write_file(
    conn: psycopg.Connection,
    rows: ParsedRows,
    checked: CheckedRows,
    records: Sequence[RejectRecord],
    source_name: str,
    fmt: str,
    rows_read: int,
    started_at: dt.datetime,
) -> WrittenFile:
    """A file's bars, rejects and load_log row in one transaction (a savepoint inside the
    caller's), retried with a merge when a concurrent load got in the way. A file the database
    refuses (a constraint of its own that the rules do not know) is FileSkipped, nothing of it kept."""
    for attempt in range(ATTEMPTS):
        try:
            with conn.transaction():
                written = write_bars(conn, rows, checked.good, source_name, cautious=attempt > 0)
                if (written.new or written.replaced) and source_distributed(conn):
                    # no change-log trigger on a distributed source: the load records its ranges
                    record_loaded_changes(
                        conn, pair_ranges(rows, checked.good), "insert" if written.new else "update"
                    )
                recorded = write_rejects(conn, records)
                conn.execute(
                    "insert into raw.load_log (file, format, started_at, finished_at, rows_read, rows_loaded, "
                    "rows_unchanged, rows_replaced, rows_rejected) "
                    "values (%s, %s, %s, clock_timestamp(), %s, %s, %s, %s, %s)",
                    (
                        source_name,
                        fmt,
                        started_at,
                        rows_read,
                        written.new,
                        written.unchanged,
                        written.replaced,
                        len(records),
                    ),
                )
            return WrittenFile(written, recorded)
        except CONCURRENT_LOAD_ERRORS:
            # another session loaded some of these bars or months meanwhile: retry, merging
            if attempt == ATTEMPTS - 1:
                raise
        except (errors.CheckViolation, errors.NotNullViolation, errors.DataError) as err:
            # the primary message names the constraint; its DETAIL (the row) is left out
            raise FileSkipped(f"refused by the database: {err.diag.message_primary or type(err).__name__}") from None
    raise AssertionError("unreachable")  # pragma: no cover
