"""Extract: per pair, every feature model's rows and marts.targets, read relation by relation
and put side by side in Arrow, written to `features/pair=P/part-0.parquet` (zstd).

How it reads (measured in `make bench`, bench/bench_datasets.py, against the alternatives):
each relation's rows of the pair come by its unique index on (pair, ts_utc), already in order,
as a binary COPY decoded by bqx.pgcopy into NumPy (no Python object per value, no Decimal);
every relation's minutes must equal m1_index's, checked chunk by chunk (a model missing a bar
is an error, where the feature_matrix view's left joins would give NULLs silently). The
`feature_matrix` view holds the same columns (generated from the same registry as the catalog)
but the server joins 14 wide relations for it; reading them one by one costs it less, and
pgcopy's decoding of fixed-width rows costs the client less than the ADBC driver's general
one. NULL travels as NaN with each row's count of NULLs beside it, so a NaN stored in the
database is still told apart from a NULL (and flagged by the validation).

What a pair's file holds, in this order:
- `pair`, `ts_utc` (bar open, UTC), `known_at` (= ts_utc + 1 minute, the bar's close: when the
  row's features are known), `bar_number` (1 = the pair's first bar in the database, so a
  column's warm-up is `bar_number <= warmup_bars`);
- every feature column of the catalog, float32 where the measurement below allows it, else
  float64 (integers and flags become float32: exact below 2^24);
- every target column, float64 (an R^2 is a ratio of sums of squares of small numbers).

float32 or float64, per column and pair, measured on the pair's first PRECISION_ROWS rows: a
column becomes float32 when every value is exact in float32 (counters, flags, hours) or when the
float32 rounding error stays below FLOAT32_TOLERANCE of the column's median bar-to-bar change
(its information is in those changes: a rate_index level ~100 moving 1e-3 per bar would lose
it, a bqx value ~1e-4 would not). The decision is written beside the file (`_source.json`).
Once decided, the float32 columns travel as float4 (read_first_chunk, read_ahead): the same
rounding on the server, half the bytes.

Reuse: a pair is extracted again only when its source fingerprint (see `source_fingerprint`:
the build state of each relation read, from the change log's bookkeeping), the column list or
the range changed; files appear complete or not at all (written aside, then renamed). Bars
changed since the last build are an error (run `bqx build`), not a silently stale extraction.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql

from bqx import pgcopy
from bqx.datasets import facts as fa
from bqx.datasets.files import atomic_write_text, temporary_path
from bqx.datasets.options import DatasetError
from bqx.feature_mirror import BUILD_RECORD_SQL

# Version of what an extracted file holds: a change here re-extracts every pair.
# 3: _source.json records the validation's file facts (bqx.datasets.facts)
EXTRACT_FORMAT = 3
READ_CONNECTIONS = 2  # relations read at once (two cores: one server process sends while the client decodes)
FLOAT32_TOLERANCE = 1e-3  # largest float32 rounding error, as a share of the median |Δx| per bar
ROW_GROUP_ROWS = 65_536  # rows read at a time and per row group: the same rows give byte-identical files
PRECISION_ROWS = 16_384  # a pair's first rows on which each column's float32/float64 decision is measured
PRECISION_MIN_VALUES = 1_000  # ... unless a column has fewer values there (then all of the first chunk)
MINUTE_US = 60_000_000
# zstd level 1: a pair-quarter of features (95k rows x 343 columns) wrote in 0.33 s against 0.51 s
# at level 3, for files 1.7% larger (lz4 0.20 s but 15% larger): the compression runs on the
# client while the server sends, and both share the two cores of the extraction
PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd", "compression_level": 1, "use_dictionary": ["pair"], "write_statistics": True}
TIMESTAMP = pa.timestamp("us", tz="UTC")
KEY_COLUMNS = fa.KEY_COLUMNS
# the extracted files keep min/max statistics for their keys only (what a reader filters a
# pair's file on): those of ~340 feature columns were ~10% of the Parquet writer's CPU (six
# pair-quarters rewritten: medians 3.58 against 3.20 s, runs 3.44-3.74 against 3.10-4.01 s),
# on the cores the server needs
EXTRACT_PARQUET_OPTIONS: dict[str, Any] = PARQUET_OPTIONS | {"write_statistics": list(KEY_COLUMNS)}
SOURCE_FILE = "_source.json"
FEATURE_RELATIONS = ("staging.m1_index", "marts.targets")


@dataclass(frozen=True)
class PairSource:
    """What the database holds for one pair in the requested range."""

    pair: str
    baseline_ts: dt.datetime
    first_ts: dt.datetime  # first bar extracted: max(baseline_ts, --start)
    last_ts: dt.datetime  # last bar in the range
    rows: int  # bars in [first_ts, last_ts]
    bars_before: int  # bars of the pair before first_ts (for warm-ups and lags)
    fingerprint: str


@dataclass(frozen=True)
class PairExtract:
    """One extracted pair: its file and what it was made from."""

    pair: str
    path: Path
    rows: int
    first_ts: str
    last_ts: str
    bars_before: int
    fingerprint: str
    columns_hash: str
    float64_columns: tuple[str, ...]
    checks: dict[str, Any] | None = None  # the validation's file facts (bqx.datasets.facts), recorded while writing
    reused: bool = False


def connect(dsn: str) -> psycopg.Connection:
    try:
        return psycopg.connect(dsn, connect_timeout=10)
    except psycopg.OperationalError:
        raise DatasetError(f"cannot reach the database ({where(dsn)}): start it with `bqx db start` or set BQX_PG_DSN") from None


def where(dsn: str) -> str:
    """host:port/database of a DSN, for messages (never the password)."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


def require_models(conn: psycopg.Connection, models: Sequence[str], dsn: str) -> None:
    """The relations the builder reads exist; else say to run `bqx build`."""
    wanted = [
        "raw.m1_bars", "raw.m1_changes", "build_state.model_pairs", "staging.baseline_rates", *FEATURE_RELATIONS,
        "marts.feature_matrix", *(f"features.{m}" for m in models),
    ]  # fmt: skip
    missing = [name for name in wanted if conn.execute("select to_regclass(%s)", (name,)).fetchone()[0] is None]
    if "raw.m1_bars" in missing:
        raise DatasetError(f"the database {where(dsn)} holds no bars (raw.m1_bars): load them with `bqx load`, then `bqx build`")
    if missing:
        raise DatasetError(f"the database {where(dsn)} lacks the feature models ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): run `bqx build` first")


def _bounds(start: dt.date | None, end: dt.date | None) -> tuple[dt.datetime, dt.datetime]:
    low = dt.datetime.combine(start, dt.time(), dt.UTC) if start else dt.datetime(1900, 1, 1, tzinfo=dt.UTC)
    high = dt.datetime.combine(end, dt.time(), dt.UTC) if end else dt.datetime(9999, 1, 1, tzinfo=dt.UTC)
    return low, high


def pairs_with_bars(conn: psycopg.Connection, candidates: Sequence[str]) -> list[str]:
    """The pairs of `candidates` (in that order) that have a baseline, i.e. bars in the database."""
    held = {row[0] for row in conn.execute("select pair from staging.baseline_rates")}
    return [pair for pair in candidates if pair in held]


def pending_changes(conn: psycopg.Connection, pair: str, models: Sequence[str]) -> tuple[int, dt.datetime | None]:
    """Rows of the change log (raw.m1_changes) of the pair that one of `models` (the relations the
    extraction reads; a model no longer in the project keeps its old state and is ignored) has not
    consumed yet: bars loaded, corrected or deleted since the last build, whose features are not built."""
    return conn.execute(
        """
        select count(*), min(changes.first_ts)
        from raw.m1_changes as changes
        where (changes.pair = %(pair)s or changes.pair is null)
          and exists (
              select from build_state.model_pairs as state
              where state.pair = %(pair)s and state.model = any(%(models)s)
                and not pg_visible_in_snapshot(changes.xid, state.consumed_snapshot)
          )
        """,
        {"pair": pair, "models": list(models)},
    ).fetchone()


def source_fingerprint(conn: psycopg.Connection, pair: str, end_ts: dt.datetime, models: Sequence[str], first_ts: dt.datetime) -> str:
    """What a pair's extraction depends on, from the build state (index lookups and small tables,
    no scan of bars or features).

    The pair's features must be built from every bar the database holds: a change of the change
    log (raw.m1_changes: any write to raw.m1_bars, by `bqx load` or by hand) that a model has not
    consumed yet is an error saying to run `bqx build` (extracting then would write features that
    lag behind their bars). Given that, the rows a model holds for the pair change only when a
    build rewrites some of them, and every such build records itself in build_state.model_pairs
    (invocation, time and range rewritten; a build that rewrote nothing leaves the row as it was,
    so a no-op `bqx build` keeps the fingerprint). The fingerprint covers, per relation read:
    - that record (or its absence), the vars the model was built with, and the storage identity
      (relfilenode: a full refresh makes a new one);
    - the first and last minute in the range (index lookups);
    and the pair's baseline and the feature_matrix view's definition (its column list).
    Conservative: a build that rewrote only minutes after the range changes it too.
    """
    relations = [*FEATURE_RELATIONS, *(f"features.{m}" for m in models)]
    model_names = [relation.split(".", 1)[1] for relation in relations]  # build_state names a model without its schema
    pending, first_pending = pending_changes(conn, pair, model_names)
    if pending:
        raise DatasetError(
            f"{pair} has bars changed since the last build ({pending} change(s) in raw.m1_changes from "
            f"{first_pending.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC): run `bqx build` first, so its features cover them"
        )
    digest = hashlib.sha256()
    baseline = conn.execute(
        "select extract(epoch from baseline_ts), baseline_rate from staging.baseline_rates where pair = %s", (pair,)
    ).fetchone()
    digest.update(f"baseline {baseline}\n".encode())
    # every model's record of the pair in one query (its text: feature_mirror.BUILD_RECORD_SQL)
    records = dict(
        conn.execute(
            f"select state.model, {BUILD_RECORD_SQL}"
            " from build_state.model_pairs as state left join build_state.model_vars as vars on vars.model = state.model"
            " where state.pair = %s and state.model = any(%s)",
            (pair, model_names),
        ).fetchall()
    )
    for relation, model in zip(relations, model_names, strict=True):
        state = conn.execute(
            f"select extract(epoch from min(ts_utc)), extract(epoch from max(ts_utc)), pg_relation_filenode(%s)"
            f" from {relation} where pair = %s and ts_utc >= %s and ts_utc < %s",
            (relation, pair, first_ts, end_ts),
        ).fetchone()
        built = (records[model],) if model in records else None  # the text the per-model lookup gave
        digest.update(f"{relation} {state[0]} {state[1]} {state[2]} {built}\n".encode())
    view = conn.execute("select md5(pg_get_viewdef('marts.feature_matrix'::regclass))").fetchone()[0]
    digest.update(f"view {view}\n".encode())
    return digest.hexdigest()


def describe_pairs(
    conn: psycopg.Connection, pairs: Sequence[str], start: dt.date | None, end: dt.date | None, models: Sequence[str]
) -> list[PairSource]:
    """Range, size and fingerprint of each pair; a pair without bars in the range is an error."""
    low, high = _bounds(start, end)
    described = []
    for pair in pairs:
        baseline = conn.execute("select baseline_ts from staging.baseline_rates where pair = %s", (pair,)).fetchone()
        if baseline is None:
            raise DatasetError(f"{pair} has no bars in the database (no baseline): load them with `bqx load` and run `bqx build`, or leave it out of --pairs")
        first_wanted = max(baseline[0], low)
        span = conn.execute(
            "select min(ts_utc), max(ts_utc), count(*) from staging.m1_index where pair = %s and ts_utc >= %s and ts_utc < %s",
            (pair, first_wanted, high),
        ).fetchone()
        if not span[2]:
            raise DatasetError(
                f"{pair} has no bars between {first_wanted:%Y-%m-%d %H:%M} (its baseline_ts or --start) and {_day(end)}: "
                "widen --start/--end, load its bars (`bqx load`, `bqx build`), or leave it out of --pairs"
            )
        before = conn.execute("select count(*) from staging.m1_index where pair = %s and ts_utc < %s", (pair, span[0])).fetchone()[0]
        fingerprint = source_fingerprint(conn, pair, high, models, span[0])
        described.append(PairSource(pair, baseline[0], span[0], span[1], int(span[2]), int(before), fingerprint))
    return described


def _day(day: dt.date | None) -> str:
    return str(day) if day else "the last bar"


def columns_hash(features: Sequence[str], targets: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps([EXTRACT_FORMAT, list(features), list(targets)]).encode()).hexdigest()


def extraction_query(source: PairSource, features: Sequence[str], targets: Sequence[str], wrap: str = "{}") -> str:
    """The per-pair query (literals inlined: ADBC streams a COPY of it; the pair is one of the
    known pairs and the timestamps are formatted here, so nothing user-typed reaches the SQL).
    `wrap` formats each value expression (the benchmark's alternative readers use it)."""
    if not source.pair.isalnum():
        raise DatasetError(f"not a pair name: {source.pair!r}")
    columns = [f"{wrap.format('matrix.' + _ident(c))} as {c}" for c in features]
    columns += [f"{wrap.format('targets.' + _ident(c))} as {c}" for c in targets]
    first, last = source.first_ts.astimezone(dt.UTC).isoformat(), source.last_ts.astimezone(dt.UTC).isoformat()
    listed = ",\n    ".join(columns)
    return (
        f"select\n    matrix.pair,\n    matrix.ts_utc,\n    {listed}\n"
        "from marts.feature_matrix as matrix\n"
        "left join marts.targets as targets on matrix.pair = targets.pair and matrix.ts_utc = targets.ts_utc\n"
        f"where matrix.pair = '{source.pair}' and matrix.ts_utc >= '{first}' and matrix.ts_utc <= '{last}'\n"
        "order by matrix.ts_utc"
    )


def _ident(name: str) -> str:
    if not name.replace("_", "").isalnum() or not name.islower():
        raise DatasetError(f"unexpected column name in the feature catalog: {name!r}")
    return name


def adbc_batches(dsn: str, query: str) -> Iterator[pa.RecordBatch]:
    """Arrow record batches of `query`, decoded from binary COPY by the ADBC driver (libpq-based:
    it takes the same DSN, passfile= included)."""
    import adbc_driver_postgresql.dbapi as adbc

    with adbc.connect(dsn) as conn, conn.cursor() as cur:
        # one pair's rows are already in (pair, ts_utc) order in every relation: serial merge
        # joins beat parallel hash joins of the view (6.2 s vs 8.3 s per pair-month, measured)
        cur.execute("set max_parallel_workers_per_gather = 0")
        cur.execute(query)
        reader = cur.fetch_record_batch()
        yield from reader


def needs_float64(values: np.ndarray) -> bool:
    """True when float32 would lose the column's information (see the module's docstring)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return True  # nothing to measure: keep every bit
    error = np.abs(finite - finite.astype(np.float32).astype(np.float64))
    if not error.any():
        return False  # exact in float32: counters, flags, hours
    steps = np.abs(np.diff(finite))
    steps = steps[steps > 0]
    if steps.size == 0:
        return True
    return bool(error.max() > FLOAT32_TOLERANCE * np.median(steps))


def output_schema(features: Sequence[str], targets: Sequence[str], float64_columns: Sequence[str]) -> pa.Schema:
    wide = set(float64_columns)
    fields = [
        pa.field("pair", pa.string(), nullable=False),
        pa.field("ts_utc", TIMESTAMP, nullable=False),
        pa.field("known_at", TIMESTAMP, nullable=False),
        pa.field("bar_number", pa.int64(), nullable=False),
        *(pa.field(name, pa.float64() if name in wide else pa.float32()) for name in features),
        *(pa.field(name, pa.float64()) for name in targets),
    ]
    return pa.schema(fields)


@dataclass(frozen=True)
class Relation:
    """A relation read side by side with the others: its columns and their names in the file."""

    name: str  # e.g. "features.reg_rate"
    columns: tuple[str, ...]  # its columns, e.g. ("reg_a_w60", ...)
    output: tuple[str, ...]  # the same columns' names in the file, e.g. ("rate_reg_a_w60", ...)
    sql_types: tuple[str, ...]  # information_schema data_type of each column


def plan_relations(conn: psycopg.Connection, catalog: Any) -> list[Relation]:
    """Every feature model of the catalog (in feature_matrix's column order), then marts.targets,
    with each column's type as the database holds it (booleans and integers travel as float8)."""
    wanted: list[tuple[str, list[tuple[str, str]]]] = [
        (f"features.{model}", [(f.column, f.matrix_column) for f in columns]) for model, columns in catalog.by_model().items()
    ]
    wanted.append(("marts.targets", [(t.column, t.column) for t in catalog.targets]))
    types = {
        (f"{schema}.{table}", column): data_type
        for schema, table, column, data_type in conn.execute(
            "select table_schema, table_name, column_name, data_type from information_schema.columns where table_schema in ('features', 'marts')"
        )
    }
    relations = []
    for name, pairs in wanted:
        missing = [column for column, _ in pairs if (name, column) not in types]
        if missing:
            raise DatasetError(f"{name} lacks the column {missing[0]} of the feature catalog: run `bqx build` (or `bqx build --full-refresh` after a change of vars)")
        relations.append(Relation(name, tuple(c for c, _ in pairs), tuple(o for _, o in pairs), tuple(types[(name, c)] for c, _ in pairs)))
    return relations


def _as_float8(column: str, sql_type: str) -> sql.Composable:
    """The column as a float8 that is never NULL: NULL travels as NaN (told apart below)."""
    ident = sql.Identifier(column)
    if sql_type == "boolean":
        value = sql.SQL("{}::int::float8").format(ident)
    elif sql_type == "double precision":
        value = ident
    else:
        value = sql.SQL("{}::float8").format(ident)
    return sql.SQL("coalesce({}, 'NaN')").format(value)


def relation_query(relation: Relation, pair: str, first: dt.datetime, last: dt.datetime, float4: frozenset[str] = frozenset()) -> sql.Composed:
    """One pair's rows of `relation` in [first, last] as one row of packed columns (see
    bqx.pgcopy.read_packed_columns): ts_utc, how many of the columns are NULL, then every column
    as a float8 (a float4 for the columns named in `float4`, by their names in the file), each
    the rows' values end to end in ts_utc order.

    The order: the aggregates read the rows of a subquery ordered by ts_utc (its unique index on
    (pair, ts_utc)) without an ORDER BY of their own, which PostgreSQL's documentation says
    "usually works" (an aggregate's own ORDER BY would sort once per column before PostgreSQL 16).
    Every column is aggregated in the same pass over the same rows, so they line up with ts_utc,
    and read_relation checks that ts_utc is exactly the pair's minutes in order: a reordering
    would be an error, never a silent shuffle.

    float4: PostgreSQL's float8 -> float4 cast rounds to nearest as the client's Arrow cast does
    (the same C conversion), so the file is the same bit for bit; it raises where the float4
    would be infinite or 0 from a finite or non-zero float8 (SQLSTATE 22003), and read_relation
    then reads the relation again as float8 and lets the client cast, as for a pair's first
    chunk."""
    aliases = [f"value_{index}" for index in range(len(relation.columns))]
    narrow = [name in float4 for name in relation.output]
    return sql.SQL(
        "select {packed} from ("
        "select ts_utc, num_nulls({columns})::int4 as null_count, {values} from {table}"
        " where pair = {pair} and ts_utc >= {first} and ts_utc <= {last} order by ts_utc"
        ") as ordered"
    ).format(
        packed=sql.SQL(", ").join(
            sql.SQL(pgcopy.packed(value, function))
            for value, function in [
                ("ts_utc", "timestamptz_send"),
                ("null_count", "int4send"),
                *((a, "float4send" if n else "float8send") for a, n in zip(aliases, narrow)),
            ]
        ),
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in relation.columns),
        values=sql.SQL(", ").join(
            sql.SQL("{}{} as {}").format(_as_float8(c, t), sql.SQL("::float4" if n else ""), sql.Identifier(a))
            for c, t, a, n in zip(relation.columns, relation.sql_types, aliases, narrow)
        ),
        table=sql.Identifier(*relation.name.split(".")),
        pair=sql.Literal(pair),
        first=sql.Literal(first),
        last=sql.Literal(last),
    )


def read_keys_between(conn: psycopg.Connection, pair: str, first: dt.datetime, last: dt.datetime) -> np.ndarray:
    """The pair's bar minutes in [first, last] (µs since the Unix epoch, UTC), from m1_index."""
    query = sql.SQL("select ts_utc from staging.m1_index where pair = {} and ts_utc >= {} and ts_utc <= {} order by ts_utc").format(
        sql.Literal(pair), sql.Literal(first), sql.Literal(last)
    )
    (ts,) = pgcopy.read_copy(conn, query.as_string(conn), [">i8"])
    return ts + pgcopy.PG_EPOCH_US


def read_relation(conn: psycopg.Connection, relation: Relation, pair: str, keys_us: np.ndarray, float4: frozenset[str] = frozenset()) -> dict[str, pa.Array]:
    """`relation`'s columns on the rows of `keys_us` (consecutive minutes of one pair), as Arrow
    arrays with NULLs kept as NULLs (a NaN stored in the database stays NaN): float32 for the
    columns named in `float4` (sent as float4 by the server), float64 for the others.

    One row of packed columns (relation_query) decoded by bqx.pgcopy: every value is sent as a
    float8 (or float4) that is never NULL (NULL as NaN), so NumPy decodes each column at once; the
    row's count of NULLs, sent beside, tells a NULL from a stored NaN (rows where they disagree
    are asked again, column by column: rare, and only on broken data). A value the float4 cast
    refuses (beyond float4's range) has the relation read again as float8 (relation_query)."""
    first, last = (dt.datetime.fromtimestamp(int(us) / 1e6, dt.UTC) for us in (keys_us[0], keys_us[-1]))
    narrow = [name in float4 for name in relation.output]
    wire = [">i8", ">i4", *(">f4" if n else ">f8" for n in narrow)]
    try:
        ts, nulls, *values = pgcopy.read_packed_columns(conn, relation_query(relation, pair, first, last, float4).as_string(conn), wire)
    except psycopg.errors.NumericValueOutOfRange:
        if not any(narrow):
            raise
        conn.rollback()
        return read_relation(conn, relation, pair, keys_us)
    ts = ts + pgcopy.PG_EPOCH_US
    if ts.size != keys_us.size or (ts != keys_us).any():
        missing = np.setdiff1d(keys_us, ts)
        at = missing[0] if missing.size else np.setdiff1d(ts, keys_us)[0] if np.setdiff1d(ts, keys_us).size else keys_us[0]
        raise DatasetError(
            f"{relation.name} does not hold exactly the bars of {pair} (first difference at "
            f"{dt.datetime.fromtimestamp(int(at) / 1e6, dt.UTC):%Y-%m-%d %H:%M}): run `bqx build`"
        )
    is_nan = [np.isnan(v) for v in values]
    null = list(is_nan)
    nan_count = np.sum(is_nan, axis=0) if is_nan else np.zeros(ts.size, dtype=np.int64)
    disagree = np.flatnonzero(nan_count != nulls)
    if disagree.size:  # a NaN stored in the database: find which fields are NULL on those rows
        flags = _null_flags(conn, relation, pair, ts[disagree])
        for j in range(len(values)):
            null[j] = null[j].copy()
            null[j][disagree] = flags[j]
    return {
        name: pa.array(v, type=pa.float32() if n else pa.float64(), mask=m if m.any() else None)
        for name, v, m, n in zip(relation.output, values, null, narrow)
    }


def _null_flags(conn: psycopg.Connection, relation: Relation, pair: str, ts_us: np.ndarray) -> list[np.ndarray]:
    """Which columns of `relation` are NULL on the given rows (in ts_utc order)."""
    minutes = [dt.datetime.fromtimestamp(int(us) / 1e6, dt.UTC) for us in ts_us]
    query = sql.SQL("select ts_utc, {flags} from {table} where pair = {pair} and ts_utc = any({minutes}) order by ts_utc").format(
        flags=sql.SQL(", ").join(sql.SQL("({} is null)::int4").format(sql.Identifier(c)) for c in relation.columns),
        table=sql.Identifier(*relation.name.split(".")),
        pair=sql.Literal(pair),
        minutes=sql.Literal(minutes),
    )
    _, *flags = pgcopy.read_copy(conn, query.as_string(conn), [">i8", *([">i4"] * len(relation.columns))])
    return [f.astype(bool) for f in flags]


def read_rows(
    conns: Sequence[psycopg.Connection], relations: Sequence[Relation], pair: str, keys_us: np.ndarray, float4: frozenset[str] = frozenset()
) -> dict[str, pa.Array]:
    """Every relation's columns on the rows of `keys_us`, side by side (keys checked per relation);
    the columns named in `float4` as float32 sent by the server (read_relation).

    The connections read at the same time, one thread each, taking the next relation (widest
    first) as they come free: each keeps one server process busy packing a relation while the
    client waits on its socket without the GIL."""
    import queue
    from concurrent.futures import ThreadPoolExecutor

    pending: queue.SimpleQueue[Relation] = queue.SimpleQueue()
    for relation in sorted(relations, key=lambda r: -len(r.columns)):
        pending.put(relation)

    def drain(conn: psycopg.Connection) -> dict[str, pa.Array]:
        columns: dict[str, pa.Array] = {}
        while True:
            try:
                relation = pending.get_nowait()
            except queue.Empty:
                return columns
            columns.update(read_relation(conn, relation, pair, keys_us, float4))

    with ThreadPoolExecutor(len(conns)) as pool:
        parts = list(pool.map(drain, conns))
    merged = {name: array for part in parts for name, array in part.items()}
    return {name: merged[name] for relation in relations for name in relation.output}  # the catalog's order


def precision_verdicts(head: dict[str, pa.Array], features: Sequence[str], more_rows: bool) -> tuple[list[str], list[str]]:
    """The feature columns that must stay float64 and those still undecided, from a pair's first
    PRECISION_ROWS rows (float64): a column with fewer than PRECISION_MIN_VALUES values there (a
    long warm-up) is decided on the whole first chunk instead, when it has `more_rows`."""
    wide, undecided = [], []
    for name in features:
        values = head[name].to_numpy(zero_copy_only=False)
        if more_rows and np.isfinite(values).sum() < PRECISION_MIN_VALUES:
            undecided.append(name)
        elif needs_float64(values):
            wide.append(name)
    return wide, undecided


def read_first_chunk(
    conns: Sequence[psycopg.Connection], relations: Sequence[Relation], pair: str, keys_us: np.ndarray, features: Sequence[str]
) -> tuple[dict[str, pa.Array], list[str]]:
    """A pair's first chunk and the features that stay float64 in its file (in catalog order).

    Its first PRECISION_ROWS rows come as float8 and decide (precision_verdicts); the rest of the
    chunk brings the float32 columns as float4 from the server, the undecided ones as float8 to
    be decided on the whole chunk. The float32 columns' head is cast by the client, as before."""
    head = read_rows(conns, relations, pair, keys_us[:PRECISION_ROWS])
    more_rows = keys_us.size > PRECISION_ROWS
    wide, undecided = precision_verdicts(head, features, more_rows)
    if not more_rows:
        return head, wide
    narrow = frozenset(features) - set(wide) - set(undecided)
    tail = read_rows(conns, relations, pair, keys_us[PRECISION_ROWS:], narrow)
    columns = {name: pa.concat_arrays([head[name].cast(tail[name].type, safe=False), tail[name]]) for name in tail}
    wide_set = set(wide) | {name for name in undecided if needs_float64(columns[name].to_numpy(zero_copy_only=False))}
    return columns, [name for name in features if name in wide_set]


def _chunk_table(pair: str, keys_us: np.ndarray, columns: dict[str, pa.Array], schema: pa.Schema, first_bar_number: int) -> pa.Table:
    """One chunk of a pair's rows in the file's schema (float32 casts where chosen)."""
    ts = pa.array(keys_us, type=pa.int64()).cast(TIMESTAMP)
    known_at = pa.array(keys_us + MINUTE_US, type=pa.int64()).cast(TIMESTAMP)
    arrays = [pa.array([pair] * keys_us.size, type=pa.string()), ts, known_at, pa.array(np.arange(first_bar_number, first_bar_number + keys_us.size, dtype=np.int64))]
    for field in list(schema)[len(KEY_COLUMNS) :]:
        arrays.append(columns[field.name].cast(field.type, safe=False))  # float64 -> float32: round to nearest
    return pa.Table.from_arrays(arrays, schema=schema)


ChunkRead = tuple[PairSource, int, np.ndarray, dict[str, pa.Array], list[str]]  # source, first row, minutes, columns, float64 columns


def read_ahead(
    conns: Sequence[psycopg.Connection], relations: Sequence[Relation], sources: Sequence[PairSource], features: Sequence[str]
) -> Iterator[ChunkRead]:
    """Every chunk (ROW_GROUP_ROWS rows) of every source in order, read one ahead in a thread of
    its own: while the caller casts and writes a chunk, the server packs the next one (the next
    pair's first, at a pair's end), on the two cores. At most two chunks are held at a time.

    A pair's first rows come as float8 and decide which features stay float64
    (read_first_chunk, the decision given with every chunk of the pair); the rest bring the
    others as float4 from the server: half the bytes to send and decode, and the server's
    float4send is cheaper than float8send (on EURUSD's 94,943 rows of every relation, one
    connection, drained and thrown away: 2.57-2.72 s against 3.15-3.65 s, 2026-12-04)."""

    def read(source: PairSource, start: int) -> ChunkRead:
        if start == 0:
            keys[source.pair] = read_keys_between(conns[0], source.pair, source.first_ts, source.last_ts)
            if keys[source.pair].size != source.rows:
                raise DatasetError(f"{source.pair}: m1_index now holds {keys[source.pair].size} bars in the range, not {source.rows}: was `bqx build` running? run again")
        chunk = keys[source.pair][start : start + ROW_GROUP_ROWS]
        if start == 0:
            columns, wide[source.pair] = read_first_chunk(conns, relations, source.pair, chunk, features)
        else:
            columns = read_rows(conns, relations, source.pair, chunk, frozenset(features) - set(wide[source.pair]))
        float64_columns = wide[source.pair]
        if start + ROW_GROUP_ROWS >= source.rows:
            del keys[source.pair], wide[source.pair]
        return source, start, chunk, columns, float64_columns

    keys: dict[str, np.ndarray] = {}
    wide: dict[str, list[str]] = {}
    reader = ThreadPoolExecutor(1)
    try:
        ahead = None
        for source in sources:
            for start in range(0, source.rows, ROW_GROUP_ROWS):
                submitted = reader.submit(read, source, start)  # runs once the one ahead is read
                if ahead is not None:
                    yield ahead.result()
                ahead = submitted
        if ahead is not None:
            yield ahead.result()
    finally:  # also when the caller stops early: the read under way ends, the next never starts
        reader.shutdown(wait=True, cancel_futures=True)


def extract_pair(
    reads: Iterator[ChunkRead],
    source: PairSource,
    features: Sequence[str],
    targets: Sequence[str],
    folder: Path,
    progress: bool = True,
    limits: fa.Limits | None = None,
) -> PairExtract:
    """Write one pair's chunks, taken from `reads` (read_ahead), into `folder/part-0.parquet`,
    gathering the validation's facts of each chunk on the way (`limits`: the catalog's warm-ups
    and horizons)."""
    from tqdm import tqdm

    if not source.pair.isalnum():
        raise DatasetError(f"not a pair name: {source.pair!r}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "part-0.parquet"
    bar = tqdm(total=source.rows, unit="rows", unit_scale=True, desc=f"extract {source.pair}", disable=not progress, leave=False)
    float64_columns: list[str] = []
    checks = fa.FileFacts(limits or fa.Limits(), source.rows)
    with temporary_path(path) as tmp:
        writer = None
        try:
            for expected_start in range(0, source.rows, ROW_GROUP_ROWS):
                read_source, start, chunk_keys, columns, decided = next(reads)
                if read_source != source or start != expected_start:
                    raise RuntimeError(f"chunks out of order: {read_source.pair} row {start} where {source.pair} row {expected_start} was due")
                if writer is None:  # the first rows decided each column's precision (read_ahead)
                    float64_columns = decided
                    schema = output_schema(features, targets, float64_columns)
                    writer = pq.ParquetWriter(tmp, schema, **EXTRACT_PARQUET_OPTIONS)
                table = _chunk_table(source.pair, chunk_keys, columns, schema, source.bars_before + 1 + start)
                del columns
                checks.add(table, start)  # the values as written (after the float32 casts)
                writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
                del table
                bar.update(chunk_keys.size)
        finally:
            if writer is not None:
                writer.close()
    bar.close()
    extract = PairExtract(
        pair=source.pair,
        path=path,
        rows=source.rows,
        first_ts=source.first_ts.astimezone(dt.UTC).isoformat(),
        last_ts=source.last_ts.astimezone(dt.UTC).isoformat(),
        bars_before=source.bars_before,
        fingerprint=source.fingerprint,
        columns_hash=columns_hash(features, targets),
        float64_columns=tuple(float64_columns),
        checks=checks.record(),
    )
    atomic_write_text(folder / SOURCE_FILE, json.dumps(_record(extract), indent=2) + "\n")
    return extract


def _record(extract: PairExtract) -> dict[str, Any]:
    record = asdict(extract)
    record["path"] = extract.path.name
    record.pop("reused")
    return record


def load_extract(folder: Path) -> PairExtract | None:
    """The extraction recorded in `folder` (its _source.json), if complete."""
    try:
        record = json.loads((folder / SOURCE_FILE).read_text())
        path = folder / str(record["path"])
        record.update(path=path, float64_columns=tuple(record["float64_columns"]), reused=True)
        extract = PairExtract(**record)
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None
    return extract if path.is_file() else None


def reusable(source: PairSource, features: Sequence[str], targets: Sequence[str], folder: Path) -> PairExtract | None:
    """The pair's earlier extraction if it was made from the same source, columns and range."""
    previous = load_extract(folder)
    if previous is None:
        return None
    same = (
        previous.fingerprint == source.fingerprint
        and previous.columns_hash == columns_hash(features, targets)
        and previous.first_ts == source.first_ts.astimezone(dt.UTC).isoformat()
        and previous.last_ts == source.last_ts.astimezone(dt.UTC).isoformat()
        and previous.rows == source.rows
    )
    return previous if same else None


def extract_pairs(
    dsn: str,
    sources: Sequence[PairSource],
    catalog: Any,
    out: Path,
    *,
    reuse: bool = True,
    progress: bool = True,
) -> list[PairExtract]:
    """Extract every pair (reusing unchanged ones) into `out/features/pair=P/`."""
    features = [f.matrix_column for f in catalog.features]
    targets = [t.column for t in catalog.targets]
    limits = fa.Limits.of(catalog)
    done = []
    with contextlib.ExitStack() as stack:
        conns = [stack.enter_context(connect(dsn)) for _ in range(READ_CONNECTIONS)]
        first = conns[0]
        for conn in conns:
            conn.execute("set max_parallel_workers_per_gather = 0")  # one pair's index range: no parallel plan pays
            conn.commit()  # kept by the session when read_relation rolls back a refused float4 cast
        relations = plan_relations(first, catalog)
        folders = {source.pair: out / "features" / f"pair={source.pair}" for source in sources}
        previous = {source.pair: reusable(source, features, targets, folders[source.pair]) if reuse else None for source in sources}
        todo = [source for source in sources if previous[source.pair] is None]
        reads = stack.enter_context(contextlib.closing(read_ahead(conns, relations, todo, features)))
        for source in sources:
            if previous[source.pair] is None:
                (folders[source.pair] / SOURCE_FILE).unlink(missing_ok=True)  # the old file no longer describes the source
                previous[source.pair] = extract_pair(reads, source, features, targets, folders[source.pair], progress, limits)
            done.append(previous[source.pair])
    return done


def read_pair(extract: PairExtract, columns: Sequence[str] | None = None) -> pa.Table:
    """A pair's extracted rows (only `columns` plus the keys, when given)."""
    wanted = None if columns is None else list(dict.fromkeys([*KEY_COLUMNS, *columns]))
    return pq.read_table(extract.path, columns=wanted)
