"""Point-in-time retrieval: the features known at each event (`bqx features`, `as_of`).

A bar with open time ts_utc is known from ts_utc + 1 minute (its close). For an event
(pair, event_time) the features are those of the last bar with ts_utc + 1 minute <= event_time;
its age is event_time - (ts_utc + 1 minute); older than `max_age` (inclusive: exactly max_age is
kept; default 5 minutes) the features are NULL and `feature_missing_reason` says why
(`stale`, `before_first_bar`, `not_built`). A pair that is not one of the 28 is an error, and so
is a naive `event_time` (which clock would it be?).

How: the events' keys (pair, event_time and their position) go to the server by binary COPY into
a temporary table (ADBC's bulk ingest), the dbt macro `features_as_of` (macros/retrieval/, the one
definition of the semantics, compiled once per set of arguments and cached) joins them with the
feature tables, and the result comes back as Arrow (ADBC reads the binary COPY in C). Every other
column of the events stays on the client and is put back beside its row, in the input's order.
Events are processed in chunks (`chunk_rows`, by default from the column count) in their input
order, so memory stays bounded and `write_as_of` streams to Parquet.

For many events on one server (`auto` from MIRROR_MIN_EVENTS; `method='mirror'` anywhere) the
events do not go to the server at all: the same semantics are applied in NumPy to a columnar copy
of the chosen columns that is checked against the build state first and read again where it is
stale (bqx.feature_mirror: why, and what it does not see). The tests hold it equal to the macro's
result, bit for bit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bqx.pairs import PAIRS
from bqx.project import PROJECT_DIR

if TYPE_CHECKING:  # imported where used: pandas costs half a second at start-up
    import pandas as pd

DEFAULT_MAX_AGE = dt.timedelta(minutes=5)
EVENTS_TABLE = "bqx_as_of_events"  # the chunk's event keys (_events_relation)
KEY_COLUMNS = ("pair", "event_time")
RESULT_COLUMNS = ("feature_ts_utc", "feature_age", "feature_missing_reason")
ORDINAL = "bqx_event_ordinal"  # the event's position in the input, sent with its keys
# Events per round trip, by default from the number of columns asked for: each chunk reads every
# chosen feature table once (hash joins for many events), so fewer, larger chunks cost less (1,000,000
# events with 34 columns: 70 s in chunks of 500,000, 54 s in one, measured on 28 pairs x 2 months),
# while the values of a chunk are held in memory at once (40M float8 values: ~320 MB).
CHUNK_VALUES = 40_000_000
MAX_CHUNK_ROWS = 1_000_000
METHODS = ("auto", "window", "index", "mirror")
# From this many events on, `auto` answers from the columnar mirror (bqx.feature_mirror) on one
# server: below it, the index probes' cost is small while a mirror not yet filled costs a read
# of every chosen model's rows of the events' pairs (measured: bench/bench_retrieval.py)
MIRROR_MIN_EVENTS = 100_000
MIRROR_ATTEMPTS = 3  # plans of a chunk when mirror files change under it (MirrorChanged)
# The share of the mirror folder's free disk a fill may take: `auto` reads the tables instead
# beyond a quarter (every column of an FX-year is ~28 GB), `mirror` asked for refuses beyond 90 %
MIRROR_DISK_SHARE = {"auto": 0.25, "mirror": 0.9}


class RetrievalError(ValueError):
    """Bad events or options; the message says what to change."""


class MirrorTooBig(RetrievalError):
    """Filling the mirror would take more of its disk than a retrieval may (MIRROR_DISK_SHARE)."""

    def __init__(self, need: str) -> None:
        super().__init__(f"{need}: ask for fewer --columns, free space, or use --method index")
        self.need = need


@dataclass(frozen=True)
class AsOfOptions:
    """What to retrieve and how (one home for the defaults of the API and the command line)."""

    columns: tuple[str, ...] | None = None  # feature_matrix columns; None = every one
    max_age: dt.timedelta = DEFAULT_MAX_AGE
    method: str = "auto"  # 'window', 'index', 'mirror', or 'auto': the faster one where it can run
    chunk_rows: int | None = None  # events per round trip; None: from the number of columns
    mirror_dir: Path | None = None  # the columnar mirror's folder; None: .bqx/cache/mirror in the project

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise RetrievalError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.max_age < dt.timedelta(0):
            raise RetrievalError(f"max_age must not be negative, got {self.max_age}")
        if self.chunk_rows is not None and self.chunk_rows < 1:
            raise RetrievalError("chunk_rows must be at least 1")

    def rows_per_chunk(self, feature_columns: int) -> int:
        if self.chunk_rows is not None:
            return self.chunk_rows
        return max(1_000, min(MAX_CHUNK_ROWS, CHUNK_VALUES // (feature_columns + len(RESULT_COLUMNS) + 1)))

    def method_for(self, distributed: bool, events: int) -> str:
        # On one server the index method beats sorting the events with the bars of their range
        # ('window') at every count measured (bench/bench_retrieval.py, 28 pairs x 2 months, 34
        # columns: 1,000 to 1,000,000 random events), and the mirror beats both for many events;
        # on Citus only the merge runs on the shards (the mirror is there for the asking).
        if self.method != "auto":
            return self.method
        if distributed:
            return "window"
        return "mirror" if events >= MIRROR_MIN_EVENTS else "index"


@dataclass
class RetrievalSummary:
    """What a retrieval returned: counts per missing reason, for the command line."""

    events: int = 0
    with_features: int = 0
    missing: dict[str, int] = field(default_factory=dict)

    def add(self, batch: pa.Table) -> None:
        self.events += batch.num_rows
        reasons = batch.column("feature_missing_reason")
        self.with_features += reasons.null_count
        counts = pc.value_counts(reasons.drop_null()) if reasons.null_count < len(reasons) else []
        for item in counts:
            name = item["values"].as_py()
            self.missing[name] = self.missing.get(name, 0) + item["counts"].as_py()

    def describe(self) -> str:
        parts = [f"{self.events:,} events, {self.with_features:,} with features"]
        parts += [f"{count:,} {reason}" for reason, count in sorted(self.missing.items())]
        return "; ".join(parts)


# ------------------------------------------------------------------------------------- events

_DURATION_UNITS = {
    "us": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hour": 3600, "hours": 3600, "d": 86400, "day": 86400, "days": 86400,
}


def parse_duration(text: str) -> dt.timedelta:
    """'90s', '5min', '5 minutes', '2h', '1d' -> a timedelta."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([a-z]+)\s*", text.lower())
    if not found or found.group(2) not in _DURATION_UNITS:
        raise RetrievalError(f"not a duration: {text!r} (write e.g. 90s, 5min, 2h)")
    return dt.timedelta(seconds=float(found.group(1)) * _DURATION_UNITS[found.group(2)])


def event_table(events: pd.DataFrame | pa.Table) -> pa.Table:
    """The events as an Arrow table with `pair` (string, one of the 28) and `event_time`
    (timestamp[us, UTC]); every other column kept as it is. Errors say what is wrong."""
    if not isinstance(events, pa.Table):
        import pandas as pd

        if not isinstance(events, pd.DataFrame):
            raise RetrievalError(f"events must be a pandas DataFrame or an Arrow table, not {type(events).__name__}")
        events = pa.Table.from_pandas(events, preserve_index=False)
    missing = [name for name in KEY_COLUMNS if name not in events.column_names]
    if missing:
        raise RetrievalError(f"the events lack the column(s) {', '.join(missing)} (need pair and event_time)")
    clash = [name for name in (*RESULT_COLUMNS, ORDINAL) if name in events.column_names]
    if clash:
        raise RetrievalError(f"the events already have column(s) named {', '.join(clash)}: rename them")
    pair = events.column("pair")
    if not (pa.types.is_string(pair.type) or pa.types.is_large_string(pair.type) or pa.types.is_dictionary(pair.type)):
        raise RetrievalError(f"pair must be text (e.g. 'EURUSD'), not {pair.type}")
    pair = pc.cast(pair, pa.string())
    if pair.null_count:
        raise RetrievalError(f"pair is missing on {pair.null_count:,} event(s)")
    unknown = pc.unique(pc.filter(pair, pc.invert(pc.is_in(pair, value_set=pa.array(PAIRS))))).to_pylist()
    if unknown:
        shown = ", ".join(repr(p) for p in sorted(unknown)[:5]) + (" ..." if len(unknown) > 5 else "")
        raise RetrievalError(f"unknown pair(s) {shown}: the pairs are {' '.join(PAIRS)}")
    event_time = events.column("event_time")
    if not pa.types.is_timestamp(event_time.type):
        raise RetrievalError(f"event_time must be a timestamp with a time zone, not {event_time.type}")
    if event_time.type.tz is None:
        raise RetrievalError(
            "event_time has no time zone: say which clock it is (e.g. pandas .dt.tz_localize('UTC')); "
            "naive times are refused rather than guessed"
        )
    if event_time.null_count:
        raise RetrievalError(f"event_time is missing on {event_time.null_count:,} event(s)")
    # to microseconds (PostgreSQL's resolution), rounding down: a bar is known at an instant or not,
    # and truncating a nanosecond part never makes a bar known earlier than it is
    event_time = pc.cast(pc.cast(event_time, pa.timestamp(event_time.type.unit, tz="UTC")), pa.timestamp("us", tz="UTC"), safe=False)
    events = events.set_column(events.column_names.index("pair"), "pair", pair)
    return events.set_column(events.column_names.index("event_time"), "event_time", event_time)


# ------------------------------------------------------------------------------------ the SQL


def _compile_key(project_dir: Path, dbname: str, arguments: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    for folder in ("macros", "models"):
        for path in sorted((project_dir / folder).rglob("*")):
            if path.is_file() and path.suffix in (".sql", ".yml"):
                digest.update(str(path.relative_to(project_dir)).encode())
                digest.update(path.read_bytes())
    digest.update((project_dir / "dbt_project.yml").read_bytes())
    digest.update(json.dumps([dbname, arguments], sort_keys=True).encode())
    return digest.hexdigest()[:24]


def as_of_sql(
    dsn: str, options: AsOfOptions, method: str, *, distributed: bool = False, project_dir: Path = PROJECT_DIR
) -> str:
    """The compiled `features_as_of` over the events table (see _events_relation), wrapped so
    that the age is microseconds (an Arrow duration, not an interval) and the ordinal comes back;
    cached in .bqx/cache/ per macro source, vars, database and arguments (dbt compiles in seconds)."""
    from bqx.dbt import run_dbt
    from bqx.server import dsn_parts

    arguments = {
        "columns": list(options.columns) if options.columns is not None else None,
        "max_age": f"{int(options.max_age.total_seconds() * 1_000_000)} microseconds",
        "method": method,
        "events": _events_relation(distributed),
        "event_columns": [*KEY_COLUMNS, ORDINAL],
    }
    key = _compile_key(project_dir, dsn_parts(dsn)["dbname"], arguments)
    cache = project_dir / ".bqx" / "cache" / "as_of" / f"{key}.sql"
    if cache.is_file():
        return cache.read_text()
    call = (
        f"{{{{ features_as_of('{arguments['events']}', columns={json.dumps(arguments['columns'])}, "
        f"max_age='{arguments['max_age']}', method='{method}', "
        f"event_columns={json.dumps(arguments['event_columns'])}) }}}}"
    ).replace("null", "none")
    done = run_dbt(["compile", "--quiet", "--output", "json", "--inline", call], dsn, project_dir=project_dir, capture=True)
    compiled = None
    if done.returncode == 0 and "{" in done.stdout:
        try:
            compiled = json.loads(done.stdout[done.stdout.index("{") :]).get("compiled")
        except ValueError:
            compiled = None
    if done.returncode != 0 or not compiled:
        message = next((line for line in done.stdout.splitlines() if "rror" in line), done.stdout.strip()[-300:])
        raise RetrievalError(f"cannot compile features_as_of: {message.strip()}")
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(f".{os.getpid()}.partial")  # processes compiling the same call do not share it
    partial.write_text(compiled)
    partial.replace(cache)
    return compiled


def _wrapped(compiled: str, feature_columns: Sequence[str]) -> str:
    listed = "".join(f",\n    retrieved.{name}" for name in feature_columns)
    return (
        f"select\n    retrieved.{ORDINAL},\n    retrieved.feature_ts_utc,\n"
        "    (extract(epoch from retrieved.feature_age) * 1000000)::bigint as feature_age_us,\n"
        f"    retrieved.feature_missing_reason{listed}\nfrom (\n{compiled}\n) as retrieved"
    )


# ----------------------------------------------------------------------------------- retrieve


def _connect(dsn: str) -> Any:
    import adbc_driver_postgresql.dbapi as adbc

    try:
        return adbc.connect(dsn)
    except Exception as err:  # the driver raises its own error types; the message is libpq's
        raise RetrievalError(f"cannot reach the database: {str(err).splitlines()[0]}") from None


def _events_relation(distributed: bool) -> str:
    """Where a chunk's event keys go. On one server a temporary table. On Citus a table
    distributed by pair beside the feature tables, so that every step of the retrieval runs on
    the pair's shard (a temporary table stays on the coordinator: each step over it would pull
    rows there); it lives in a schema of this session's own (_session_schema), found by the
    search path, so concurrent retrievals never share it."""
    return EVENTS_TABLE if distributed else f"pg_temp.{EVENTS_TABLE}"


def _is_distributed(cursor: Any) -> bool:
    """True on Citus with raw.m1_bars distributed (bqx db distribute): the tables are sharded by pair."""
    cursor.execute(
        "select exists (select from pg_extension where extname = 'citus') "
        "and to_regclass('raw.m1_bars') is not null"
    )
    if not cursor.fetchone()[0]:
        return False
    cursor.execute("select count(*) from pg_dist_partition where logicalrelid = 'raw.m1_bars'::regclass")
    return cursor.fetchone()[0] > 0


@contextlib.contextmanager
def _session_schema(conn: Any, cursor: Any) -> Iterator[None]:
    """On Citus: a schema of this session's own holding the distributed events table, first on
    the search path, dropped at the end (also when the retrieval fails)."""
    cursor.execute("select 'bqx_as_of_' || pg_backend_pid() || '_' || substr(md5(random()::text), 1, 8)")
    schema = cursor.fetchone()[0]
    cursor.execute(f"create schema {schema}")
    cursor.execute(
        f"create table {schema}.{EVENTS_TABLE} (pair text not null, event_time timestamptz not null, {ORDINAL} bigint not null)"
    )
    cursor.execute(
        f"select create_distributed_table('{schema}.{EVENTS_TABLE}', 'pair', colocate_with => 'raw.m1_bars')"
    )
    cursor.execute(f"set search_path to {schema}, public")
    conn.commit()
    try:
        yield
    finally:
        conn.rollback()
        cursor.execute(f"drop schema {schema} cascade")
        conn.commit()


def _retrieve_chunk(conn: Any, cursor: Any, keys: pa.Table, sql: str, distributed: bool) -> pa.Table:
    if distributed:
        cursor.execute(f"truncate {EVENTS_TABLE}")
        cursor.adbc_ingest(EVENTS_TABLE, keys, mode="append")
        cursor.execute(f"analyze {EVENTS_TABLE}")
        # committed before the query: its per-pair lookups run over connections of their own,
        # which Citus refuses inside a transaction that has written to the shards
        conn.commit()
    else:
        cursor.execute(f"drop table if exists pg_temp.{EVENTS_TABLE}")
        cursor.adbc_ingest(EVENTS_TABLE, keys, mode="create", temporary=True)
        cursor.execute(f"analyze pg_temp.{EVENTS_TABLE}")  # temporary tables are never auto-analysed
    cursor.execute(sql)
    result = cursor.fetch_arrow_table()
    order = pc.sort_indices(result.column(ORDINAL))
    result = result.take(order)
    age = pc.cast(result.column("feature_age_us"), pa.int64()).cast(pa.duration("us"))
    result = result.set_column(result.column_names.index("feature_age_us"), "feature_age", age)
    return result.drop_columns([ORDINAL])


def as_of_batches(
    events: pd.DataFrame | pa.Table,
    options: AsOfOptions = AsOfOptions(),
    *,
    dsn: str | None = None,
    progress: bool = False,
) -> Iterator[pa.Table]:
    """The events with their features, chunk by chunk in the input's order (see the module doc)."""
    from bqx.server import configured_dsn

    table = event_table(events)
    dsn = dsn or configured_dsn(PROJECT_DIR)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=table.num_rows, unit="event", desc="bqx features", unit_scale=True)
    with _connect(dsn) as conn, conn.cursor() as cursor:
        distributed = _is_distributed(cursor)
        if distributed and options.method == "index":
            raise RetrievalError("method 'index' needs a single server; on Citus use 'window' (or 'auto')")
        method = options.method_for(distributed, table.num_rows)
        feature_names = _feature_names(cursor, options)
        chunk_rows = options.rows_per_chunk(len(feature_names))
        if method == "mirror" and table.num_rows:
            try:
                chunks = _mirror_batches(conn, cursor, table, feature_names, options, dsn, chunk_rows, bar)
            except MirrorTooBig as err:
                if options.method != "auto":
                    raise
                if bar is not None:  # the command line says why it takes the slower way
                    bar.write(f"bqx features: {err.need}: reading the tables instead (--method index)")
                method = "index"
            else:
                yield from chunks
                if bar is not None:
                    bar.close()
                return
        if method == "mirror":  # no events: no pair to read; the SQL gives the empty result's types
            method = "index" if not distributed else "window"
        sql = _wrapped(as_of_sql(dsn, options, method, distributed=distributed), feature_names)
        with _session_schema(conn, cursor) if distributed else contextlib.nullcontext():
            for start in range(0, max(table.num_rows, 1), chunk_rows):
                chunk = table.slice(start, chunk_rows)
                keys = pa.table(
                    {
                        "pair": chunk.column("pair"),
                        "event_time": chunk.column("event_time"),
                        ORDINAL: pa.array(range(chunk.num_rows), pa.int64()),
                    }
                )
                found = _retrieve_chunk(conn, cursor, keys, sql, distributed)
                joined = chunk
                for name in found.column_names:
                    joined = joined.append_column(name, found.column(name))
                conn.commit()
                if bar is not None:
                    bar.update(chunk.num_rows)
                yield joined
    if bar is not None:
        bar.close()


def _feature_names(cursor: Any, options: AsOfOptions) -> list[str]:
    if options.columns is not None:
        return list(options.columns)
    from bqx.catalog import feature_catalog

    return [column.matrix_column for column in feature_catalog().features]


def _why(err: Exception) -> str:
    """An OS error's reason without its path (the message names the folder), else the message."""
    return err.strerror if isinstance(err, OSError) and err.strerror else str(err)


def _mirror_plan(
    cursor: Any, pairs: Sequence[str], feature_names: Sequence[str], options: AsOfOptions, dsn: str, progress: bool
) -> Any:
    """Bring the mirror files the retrieval needs up to date (bqx.feature_mirror: stamps read in
    one query, stale files read again, all in one repeatable-read snapshot) and say what to read."""
    import shutil

    from bqx import feature_mirror as mirror
    from bqx.catalog import feature_catalog
    from bqx.safe_files import UnsafePathError
    from bqx.server import dsn_parts

    catalog = feature_catalog()
    by_name = catalog.by_matrix_column()
    unknown = [name for name in feature_names if name not in by_name]
    if unknown:
        raise RetrievalError(f"'{unknown[0]}' is not a column of feature_matrix")
    models = list(catalog.by_model())
    feature_relations = tuple(f"features.{model}" for model in models)
    chosen: dict[str, list[tuple[str, str]]] = {}
    for name in feature_names:
        chosen.setdefault(f"features.{by_name[name].model}", []).append((by_name[name].column, name))
    parts = dsn_parts(dsn)
    root = options.mirror_dir or PROJECT_DIR / ".bqx" / "cache" / "mirror"
    try:
        folder = mirror.database_folder(root, cursor, f"{parts.get('host', '')}|{parts.get('port', '')}|{parts.get('dbname', '')}")
    except (OSError, UnsafePathError) as err:
        raise RetrievalError(f"cannot make the mirror's folder {root}: {_why(err)}; use --method index, or another folder") from None
    relations = [mirror.M1_INDEX, *((relation, relation.split(".", 1)[1]) for relation in feature_relations)]
    needed = [relation for relation, _ in relations] + ["build_state.model_pairs", "build_state.model_vars"]
    cursor.execute(
        "select name from unnest(array[" + ", ".join(f"'{name}'" for name in needed) + "]) as needed (name) "
        "where to_regclass(name) is null union all "
        "select 'bqx_functions.pair_last_ts' where to_regprocedure('bqx_functions.pair_last_ts(regclass, text, timestamptz)') is null"
    )
    missing = [row[0] for row in cursor.fetchall()]
    if missing:
        raise RetrievalError(f"the database lacks {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}: run `bqx build` first")
    states = mirror.read_states(cursor, pairs, relations)
    stale = []
    try:
        for pair in pairs:
            for relation, columns in [(mirror.M1_INDEX[0], []), *chosen.items()]:
                wanted = mirror.columns_to_read(folder, pair, relation, [column for column, _ in columns], states[(pair, relation)])
                if wanted is not None:
                    stale.append((pair, relation, wanted))
    except UnsafePathError as err:
        raise RetrievalError(f"the mirror in {folder} is not safe to use: {err}; remove it") from None
    needed_bytes, free_bytes = mirror.fill_bytes(cursor, stale), shutil.disk_usage(folder).free
    if needed_bytes > MIRROR_DISK_SHARE[options.method if options.method == "mirror" else "auto"] * free_bytes:
        raise MirrorTooBig(
            f"the mirror would need about {needed_bytes / 2**30:.1f} GiB more in {folder}, which has {free_bytes / 2**30:.1f} GiB free"
        )
    bar = None
    if progress and stale:
        from tqdm import tqdm

        bar = tqdm(total=len(stale), unit="file", desc="bqx features: reading the mirror's stale files")
    for pair, relation, wanted in stale:
        try:
            mirror.refresh(cursor, folder, pair, relation, wanted, states[(pair, relation)])
        except (OSError, UnsafePathError) as err:  # a full disk, a read-only folder: no file is left half-written
            raise RetrievalError(
                f"cannot write the mirror's file of {pair} {relation} in {folder}: {_why(err)}; free space there or use --method index"
            ) from None
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    return mirror.MirrorPlan(
        folder=folder,
        states=states,
        relations=tuple((relation, tuple(columns)) for relation, columns in chosen.items()),
        feature_relations=feature_relations,
        names=tuple(feature_names),
    )


def _mirror_batches(
    conn: Any, cursor: Any, table: pa.Table, feature_names: Sequence[str], options: AsOfOptions, dsn: str, chunk_rows: int, bar: Any
) -> Iterator[pa.Table]:
    """The chunks' results from the mirror; the mirror is brought up to date here, before the
    first chunk (so MirrorTooBig is raised by this call, not by the first iteration)."""
    from bqx import feature_mirror as mirror
    from bqx.safe_files import UnsafePathError

    pairs = sorted(pc.unique(table.column("pair")).to_pylist())

    def plan_now() -> Any:
        # the stamps and the rows read for stale files in one snapshot: a file's stamp always
        # belongs to its rows, whatever a concurrent build commits meanwhile
        conn.commit()
        cursor.execute("set transaction isolation level repeatable read")
        try:
            return _mirror_plan(cursor, pairs, feature_names, options, dsn, progress=bar is not None)
        finally:
            conn.rollback()  # it only read

    first_plan = plan_now()
    max_age_us = int(options.max_age / dt.timedelta(microseconds=1))

    def chunks() -> Iterator[pa.Table]:
        plan = first_plan
        for start in range(0, table.num_rows, chunk_rows):
            chunk = table.slice(start, chunk_rows)
            for attempt in range(MIRROR_ATTEMPTS):
                try:
                    found = mirror.join_chunk(chunk, plan, max_age_us)
                    break
                except mirror.MirrorChanged:  # another retrieval refreshed a file after a newer build
                    if attempt == MIRROR_ATTEMPTS - 1:
                        raise RetrievalError("the features kept changing while they were read (builds running?): try again") from None
                    plan = plan_now()
                except UnsafePathError as err:
                    raise RetrievalError(f"the mirror in {plan.folder} is not safe to use: {err}; remove it") from None
            joined = chunk
            for name in found.column_names:
                joined = joined.append_column(name, found.column(name))
            if bar is not None:
                bar.update(chunk.num_rows)
            yield joined

    return chunks()


def as_of(
    events: pd.DataFrame | pa.Table,
    columns: Sequence[str] | None = None,
    max_age: dt.timedelta = DEFAULT_MAX_AGE,
    *,
    dsn: str | None = None,
    method: str = "auto",
    mirror_dir: Path | None = None,
) -> pd.DataFrame | pa.Table:
    """The events (a DataFrame or Arrow table with pair and a time-zone-aware event_time, other
    columns kept) joined with the features known at each event, in the input's order; returns
    the same kind of frame it was given. `method` and `mirror_dir`: see AsOfOptions."""
    options = AsOfOptions(
        columns=tuple(columns) if columns is not None else None, max_age=max_age, method=method, mirror_dir=mirror_dir
    )
    pieces = list(as_of_batches(events, options, dsn=dsn))
    result = pa.concat_tables(pieces) if pieces else pa.table({})
    if isinstance(events, pa.Table):
        return result
    return result.to_pandas()


def write_as_of(
    events_path: Path, out_path: Path, options: AsOfOptions = AsOfOptions(), *, dsn: str | None = None
) -> RetrievalSummary:
    """`bqx features`: events from a Parquet (or CSV) file, joined, streamed to a Parquet file
    that appears only when complete."""
    events = _read_events(events_path)
    summary = RetrievalSummary()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(f".{out_path.name}.partial")
    writer: pq.ParquetWriter | None = None
    try:
        for joined in as_of_batches(events, options, dsn=dsn, progress=True):
            if writer is None:
                writer = pq.ParquetWriter(partial, joined.schema, compression="zstd")
            writer.write_table(joined)
            summary.add(joined)
    except BaseException:
        if writer is not None:
            writer.close()
        partial.unlink(missing_ok=True)  # a half-written result is never left behind
        raise
    if writer is not None:  # as_of_batches yields at least one chunk: no events, an empty file
        writer.close()
    partial.replace(out_path)
    return summary


def _read_events(path: Path) -> pa.Table:
    if not path.is_file():
        raise RetrievalError(f"{path}: no such file")
    try:
        if path.suffix.lower() in (".csv", ".gz"):
            import pyarrow.csv as pacsv

            return pacsv.read_csv(path)
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise RetrievalError(f"{path}: cannot read events from it ({str(err).splitlines()[0]})") from None
