"""Extract: per pair, marts.feature_matrix joined with marts.targets, streamed from the database
into Arrow by the ADBC PostgreSQL driver (binary COPY decoded in C, no Python object per value)
and written to `features/pair=P/part-0.parquet` (zstd).

Faster than psycopg's binary COPY decoded into NumPy, and far faster than a cursor fetch:
`make bench` measures all three in one run (bench/bench_datasets.py).

What a pair's file holds, in this order:
- `pair`, `ts_utc` (bar open, UTC), `known_at` (= ts_utc + 1 minute, the bar's close: when the
  row's features are known), `bar_number` (1 = the pair's first bar in the database, so a
  column's warm-up is `bar_number <= warmup_bars`);
- every feature column of the catalog, float32 where the measurement below allows it, else
  float64 (integers and flags become float32: exact below 2^24);
- every target column, float64 (an R^2 is a ratio of sums of squares of small numbers).

float32 or float64, per column and pair, measured on the pair's first rows: a column becomes
float32 when every value is exact in float32 (counters, flags, hours) or when the float32
rounding error stays below FLOAT32_TOLERANCE of the column's median bar-to-bar change (its
information is in those changes: a rate_index level ~100 moving 1e-3 per bar would lose it,
a bqx value ~1e-4 would not). The decision is written beside the file (`_source.json`).

Reuse: a pair is extracted again only when its source fingerprint (see `source_fingerprint`),
the column list or the range changed; files appear complete or not at all (written aside,
then renamed).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq

from bqx.datasets.files import atomic_write_text, temporary_path
from bqx.datasets.options import DatasetError

# Version of what an extracted file holds: a change here re-extracts every pair.
EXTRACT_FORMAT = 1
FLOAT32_TOLERANCE = 1e-3  # largest float32 rounding error, as a share of the median |Δx| per bar
PRECISION_ROWS = 16_384  # rows measured before a pair's column types are fixed
PRECISION_MIN_VALUES = 1_000  # non-NULL values a column needs for its measurement
PRECISION_MAX_ROWS = 65_536  # ... but never more rows than this held back before writing
ROW_GROUP_ROWS = 65_536  # fixed row groups: the same rows give byte-identical files
PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd", "compression_level": 3, "use_dictionary": ["pair"], "write_statistics": True}
TIMESTAMP = pa.timestamp("us", tz="UTC")
KEY_COLUMNS = ("pair", "ts_utc", "known_at", "bar_number")
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
    wanted = ["raw.m1_bars", "staging.baseline_rates", *FEATURE_RELATIONS, "marts.feature_matrix", *(f"features.{m}" for m in models)]
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


def source_fingerprint(conn: psycopg.Connection, pair: str, end_ts: dt.datetime, models: Sequence[str], first_ts: dt.datetime) -> str:
    """A checksum of everything a pair's extraction depends on, cheap to compute.

    Until the operations work adds a change log to `raw`, it covers:
    - every raw bar of the pair up to the end of the range (features depend on all history:
      recursive smoothers are seeded at the first bar): count and an order-free sum of a 64-bit
      hash of each bar's values (one pass over the narrow bars table, no feature column read);
      a corrected bar anywhere, the middle of the range included, changes it;
    - the built state of every relation read: first and last minute in the range (index
      lookups) and the storage identity (relfilenode: a full refresh makes a new one);
    - the feature_matrix view's definition (its column list).
    It does not prove that the features were rebuilt after a correction (no change log yet):
    run `bqx build --vars '{"recompute_from": ...}'` after correcting bars, as the README says;
    the validation step then compares the rebuilt features against a fresh truncated build.
    """
    digest = hashlib.sha256()
    bars = conn.execute(
        "select count(*), coalesce(sum(hashtextextended(concat_ws('|', extract(epoch from ts_utc), open, high, low, close,"
        " volume, spread), 0)::numeric), 0)::text from raw.m1_bars where pair = %s and ts_utc < %s",
        (pair, end_ts),
    ).fetchone()
    digest.update(f"bars {bars[0]} {bars[1]}\n".encode())
    for relation in [*FEATURE_RELATIONS, *(f"features.{m}" for m in models)]:
        state = conn.execute(
            f"select min(ts_utc), max(ts_utc), pg_relation_filenode(%s) from {relation} where pair = %s and ts_utc >= %s and ts_utc < %s",
            (relation, pair, first_ts, end_ts),
        ).fetchone()
        # staging tables are re-created by every dbt run (a new relfilenode each time) and hold
        # what the raw checksum covers: only the incremental models' storage identity counts
        identity = "" if relation.startswith("staging.") else state[2]
        digest.update(f"{relation} {state[0]} {state[1]} {identity}\n".encode())
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


def choose_float64(table: pa.Table, features: Sequence[str]) -> list[str]:
    """The feature columns of `table` (a pair's first rows) that must stay float64."""
    chosen = []
    for name in features:
        column = table.column(name)
        if not pa.types.is_floating(column.type) and not pa.types.is_decimal(column.type):
            if pa.types.is_integer(column.type):
                values = column.to_numpy(zero_copy_only=False).astype(np.float64)
                if np.nanmax(np.abs(values), initial=0) >= 2**24:
                    chosen.append(name)
            continue
        if needs_float64(column.cast(pa.float64()).to_numpy(zero_copy_only=False)):
            chosen.append(name)
    return chosen


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


def _conform(table: pa.Table, schema: pa.Schema, first_bar_number: int) -> pa.Table:
    """Cast a slice of query rows to the file's schema, adding known_at and bar_number."""
    ts = table.column("ts_utc").cast(TIMESTAMP)
    known_at = pa.compute.add(ts, pa.scalar(dt.timedelta(minutes=1), pa.duration("us")))
    numbers = pa.array(np.arange(first_bar_number, first_bar_number + table.num_rows, dtype=np.int64))
    columns = [table.column("pair").cast(pa.string()), ts, known_at.cast(TIMESTAMP), numbers]
    for field in list(schema)[len(KEY_COLUMNS) :]:
        columns.append(table.column(field.name).cast(field.type, safe=False))
    return pa.Table.from_arrays(columns, schema=schema)


def _fixed_chunks(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """Re-cut a stream of batches into tables of exactly `rows` rows (the last one shorter)."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        pending.append(batch)
        held += batch.num_rows
        while held >= rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows).combine_chunks()
            rest = table.slice(rows).combine_chunks()
            pending = rest.to_batches() if rest.num_rows else []
            held = rest.num_rows
    if held:
        yield pa.Table.from_batches(pending).combine_chunks()


def extract_pair(
    source: PairSource,
    features: Sequence[str],
    targets: Sequence[str],
    folder: Path,
    batches: Callable[[str], Iterator[pa.RecordBatch]],
    progress: bool = True,
) -> PairExtract:
    """Stream one pair into `folder/part-0.parquet`: a fixed number of rows in memory at a time."""
    from tqdm import tqdm

    query = extraction_query(source, features, targets)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "part-0.parquet"
    stream = _fixed_chunks(iter(batches(query)), ROW_GROUP_ROWS // 4)
    held: list[pa.Table] = []
    held_rows = 0
    bar = tqdm(total=source.rows, unit="rows", unit_scale=True, desc=f"extract {source.pair}", disable=not progress, leave=False)
    # hold back the first rows until every column has enough values to measure its precision
    for chunk in stream:
        held.append(chunk)
        held_rows += chunk.num_rows
        if held_rows >= PRECISION_MAX_ROWS or (held_rows >= PRECISION_ROWS and _measurable(pa.concat_tables(held), features)):
            break
    if not held:
        raise DatasetError(f"{source.pair}: the feature matrix returned no rows between {source.first_ts} and {source.last_ts}: run `bqx build`")
    head = pa.concat_tables(held)
    float64_columns = choose_float64(head, features)
    schema = output_schema(features, targets, float64_columns)
    rows = 0
    with temporary_path(path) as tmp:
        with pq.ParquetWriter(tmp, schema, **PARQUET_OPTIONS) as writer:
            buffer: list[pa.Table] = []
            buffered = 0
            for chunk in _chain(held, stream):
                table = _conform(chunk, schema, source.bars_before + 1 + rows)
                rows += table.num_rows
                bar.update(table.num_rows)
                buffer.append(table)
                buffered += table.num_rows
                if buffered >= ROW_GROUP_ROWS:
                    combined = pa.concat_tables(buffer)
                    writer.write_table(combined.slice(0, ROW_GROUP_ROWS), row_group_size=ROW_GROUP_ROWS)
                    rest = combined.slice(ROW_GROUP_ROWS)
                    buffer, buffered = ([rest] if rest.num_rows else []), rest.num_rows
            if buffered:
                writer.write_table(pa.concat_tables(buffer), row_group_size=ROW_GROUP_ROWS)
    bar.close()
    if rows != source.rows:
        raise DatasetError(f"{source.pair}: {rows} rows extracted but m1_index holds {source.rows} in the range: was `bqx build` running? run again")
    extract = PairExtract(
        pair=source.pair,
        path=path,
        rows=rows,
        first_ts=source.first_ts.astimezone(dt.UTC).isoformat(),
        last_ts=source.last_ts.astimezone(dt.UTC).isoformat(),
        bars_before=source.bars_before,
        fingerprint=source.fingerprint,
        columns_hash=columns_hash(features, targets),
        float64_columns=tuple(float64_columns),
    )
    atomic_write_text(folder / SOURCE_FILE, json.dumps(_record(extract), indent=2) + "\n")
    return extract


def _measurable(table: pa.Table, features: Sequence[str]) -> bool:
    return all(table.num_rows - table.column(name).null_count >= PRECISION_MIN_VALUES for name in features)


def _chain(first: list[pa.Table], rest: Iterator[pa.Table]) -> Iterator[pa.Table]:
    while first:
        yield first.pop(0)  # drop each held table as soon as it is written
    yield from rest


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
    features: Sequence[str],
    targets: Sequence[str],
    out: Path,
    *,
    reuse: bool = True,
    progress: bool = True,
    batches: Callable[[str], Iterator[pa.RecordBatch]] | None = None,
) -> list[PairExtract]:
    """Extract every pair (reusing unchanged ones) into `out/features/pair=P/`."""
    reader = batches or (lambda query: adbc_batches(dsn, query))
    done = []
    for source in sources:
        folder = out / "features" / f"pair={source.pair}"
        previous = reusable(source, features, targets, folder) if reuse else None
        if previous is None:
            (folder / SOURCE_FILE).unlink(missing_ok=True)  # the old file no longer describes the source
            previous = extract_pair(source, features, targets, folder, reader, progress)
        done.append(previous)
    return done


def read_pair(extract: PairExtract, columns: Sequence[str] | None = None) -> pa.Table:
    """A pair's extracted rows (only `columns` plus the keys, when given)."""
    wanted = None if columns is None else list(dict.fromkeys([*KEY_COLUMNS, *columns]))
    return pq.read_table(extract.path, columns=wanted)
