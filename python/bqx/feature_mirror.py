"""The columnar mirror of the feature tables: how `bqx features` answers many events fast.

Why. The feature tables are row storage: a retrieval of many events (1,000,000 random events over
28 pairs x 2 months reach ~40 % of every pair's bars) makes the server read nearly every heap row
of every chosen feature model, hundreds of float8 per row, to return a few of them; measured, that
is 50 s where pandas.merge_asof over the same columns extracted to Parquet takes 8 s. A quant's
research loop retrieves again and again from features that change once a day (`bqx build`), so
the store keeps the columns it was asked for in a columnar copy beside the project and answers
from it, after checking that the copy is exactly what the database holds now.

What is kept. Per database, feature model and pair, one Arrow IPC file (uncompressed, read
memory-mapped: a retrieval maps the columns it needs, nothing is decoded) of the pair's rows in
ts_utc order: ts_utc and the model's columns asked for so far (a later call asking more re-reads
the model with the union), in the database's own types, as the SQL path returns them (float8
stays float64: values are exact, bit for bit). Also staging.m1_index's ts_utc per pair (which
bar each event gets). Each file carries in its metadata the stamp it was read under.

The stamp of (pair, model), read for every file a retrieval needs in one query at the start:
- the model's build_state.model_pairs record of the pair (dbt invocation, time, range rewritten,
  rows written; written in the same transaction as the rows: every build that rewrites rows of
  the pair makes a new one, a build that rewrote nothing keeps it) and the vars it was built with;
- the table's relfilenode (a full refresh or a truncate makes a new one);
- the pair's newest row (one index step: a deletion of the last rows by hand shows).
A file whose stamp differs is read again from the database, in the same repeatable-read snapshot
as the stamps, so its rows and its stamp always belong together. Not seen: a write by hand, not
by dbt, that keeps the newest row (an UPDATE of old rows): the same contract as the dataset
builder's reuse of its extraction; `--method index` reads the tables themselves.

The merge, per pair, in NumPy: each event's bar is the newest m1_index bar with
ts_utc + 1 minute <= event_time (a binary search of the sorted bars); age, staleness
(max_age, inclusive), before_first_bar and not_built (the bar is newer than the last row EVERY
feature model holds, read with the stamps: the frontier of macros/retrieval/features_as_of.sql)
as in the macro; then each model's row of that bar by a second binary search (a missing row
gives NULLs, as the macro's left join). bqx.features checks the result against the macro's in
the tests (python/tests/test_features_as_of.py): the same Arrow table.

The folders are created for the current user only (0700), files 0600: the features are the
database's data. Every file is opened through bqx.safe_files (no symlink someone else owns is
followed, files are written under a fresh name and renamed): bqx may run as root.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bqx import safe_files

MINUTE_US = 60_000_000
M1_INDEX = ("staging.m1_index", "m1_index")
STAMP_KEY = b"bqx_mirror_stamp"
COLUMNS_KEY = b"bqx_mirror_columns"
FORMAT = "1"  # a change of the file layout: files of another format are read again
_NAME = re.compile(r"[a-z_][a-z0-9_]*\Z")
_PAIR = re.compile(r"[A-Z]{6}\Z")
_RELATION = re.compile(r"[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*\Z")
# A model's build record of a pair as one text (build_state.model_pairs as `state`, joined with
# build_state.model_vars as `vars`): what changes whenever a build rewrites rows of the pair.
# Instants as epoch seconds: the same text whatever the session's TimeZone (and a full build's
# rewrite from -infinity, which Python's datetime cannot hold, stays text). The dataset builder's
# extraction fingerprint (bqx.datasets.extract) uses it too.
BUILD_RECORD_SQL = (
    "concat_ws('|', state.invocation_id, extract(epoch from state.built_at),"
    " extract(epoch from state.rewrote_from_ts), extract(epoch from state.rewrote_to_ts),"
    " extract(epoch from state.last_built_ts), state.rows_written, vars.vars)"
)


@dataclass(frozen=True)
class PairState:
    """What the database holds for one (pair, relation), read with the stamps."""

    stamp: str
    last_ts_us: int | None  # the pair's newest row (µs since the epoch), None: no row


def _literal(text: str, pattern: re.Pattern[str]) -> str:
    # names from the feature catalog and pairs checked against bqx.pairs: never user text, but
    # checked again here because they are spliced into SQL
    if not pattern.match(text):
        raise ValueError(f"not a plain name: {text!r}")
    return f"'{text}'"


def _quoted(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"not a plain name: {name!r}")
    return f'"{name}"'


def _relation(relation: str) -> str:
    schema, table = relation.split(".")
    return f"{_quoted(schema)}.{_quoted(table)}"


def database_folder(root: Path, cursor: Any, dsn_key: str) -> Path:
    """The mirror's folder for the database the cursor is connected to: a hash of the DSN's
    host, port and database name and the database's oid (a database dropped and created again
    under the same name gets another folder)."""
    cursor.execute("select current_database()::text, (select oid from pg_database where datname = current_database())::int8")
    name, oid = cursor.fetchone()
    digest = hashlib.sha256(f"{dsn_key}|{name}|{oid}|{FORMAT}".encode()).hexdigest()[:20]
    folder = root / f"db-{digest}"
    # created for the user alone (0700, missing parents too); an existing folder must be the
    # user's, reached through no symlink someone else owns (bqx.safe_files: bqx may run as root)
    with safe_files.opened_dir(folder, create_mode=0o700, owners={os.geteuid()}):
        pass
    return folder


def read_states(cursor: Any, pairs: Sequence[str], relations: Sequence[tuple[str, str]]) -> dict[tuple[str, str], PairState]:
    """The stamp and newest row of every (pair, relation), relation given as (relation, model),
    in one query: index steps and the small build_state tables, no scan."""
    if not pairs:
        return {}
    pair_list = ", ".join(f"({_literal(pair, _PAIR)})" for pair in pairs)
    relation_list = ", ".join(
        f"({_literal(relation, _RELATION)}, {_literal(model, _NAME)})" for relation, model in relations
    )
    cursor.execute(
        f"""
        select
            wanted_pairs.pair::text,
            wanted_relations.relation::text,
            concat_ws('|', {BUILD_RECORD_SQL},
                pg_relation_filenode(wanted_relations.relation::regclass))::text as stamp,
            (extract(epoch from newest.ts_utc) * 1000000)::int8 as last_ts_us
        from (values {pair_list}) as wanted_pairs (pair)
        cross join (values {relation_list}) as wanted_relations (relation, model)
        cross join lateral (
            select bqx_functions.pair_last_ts(wanted_relations.relation::regclass, wanted_pairs.pair) as ts_utc
        ) as newest
        left join build_state.model_pairs as state
            on state.model = wanted_relations.model and state.pair = wanted_pairs.pair
        left join build_state.model_vars as vars
            on vars.model = wanted_relations.model
        """
    )
    table = cursor.fetch_arrow_table()
    states = {}
    for pair, relation, stamp, last in zip(*(table.column(i).to_pylist() for i in range(4)), strict=True):
        states[(pair, relation)] = PairState(f"{stamp}|last {last}", last)
    return states


def fill_bytes(cursor: Any, stale: Sequence[tuple[str, str, Sequence[str]]]) -> int:
    """About how many bytes the stale files (pair, relation, columns) take once read: the
    relation's rows per pair (the planner's row count, or its size when never analysed) times
    8 bytes per column and ts_utc."""
    relations = sorted({relation for _, relation, _ in stale})
    if not relations:
        return 0
    listed = ", ".join(f"({_literal(relation, _RELATION)})" for relation in relations)
    cursor.execute(
        f"""
        select
            wanted.relation::text,
            (case
                when tables.reltuples >= 0 then tables.reltuples
                else pg_relation_size(tables.oid) / (8.0 * greatest(tables.relnatts, 1))
            end / greatest((
                select count(*) from build_state.model_pairs as state
                where state.model = split_part(wanted.relation, '.', 2)
            ), 1))::int8 as rows_per_pair
        from (values {listed}) as wanted (relation)
        inner join pg_class as tables on tables.oid = wanted.relation::regclass
        """
    )
    rows = dict(zip(*(column.to_pylist() for column in cursor.fetch_arrow_table().columns), strict=True))
    return sum(rows[relation] * 8 * (len(columns) + 1) for _, relation, columns in stale)


def _name(pair: str) -> str:
    return f"pair={pair}.arrow"


def _mapped(folder: Path, relation: str, pair: str) -> pa.ipc.RecordBatchFileReader | None:
    """The mirror file of (pair, relation), memory-mapped (its pages are read as they are used),
    opened without following a symlink and only if the user owns it; None: no usable file."""
    with safe_files.opened_dir(folder / relation, create_mode=0o700, owners={os.geteuid()}) as folder_fd:
        mapped = safe_files.map_file(folder_fd, _name(pair), folder / relation / _name(pair), owners={os.geteuid()})
    if mapped is None:
        return None
    try:
        # the buffer holds the mapping: it stays mapped as long as a table uses its pages
        return pa.ipc.open_file(pa.py_buffer(mapped))
    except pa.ArrowInvalid:  # cut short (a crash before it was complete): read it again
        return None


def _held(folder: Path, relation: str, pair: str) -> tuple[str | None, tuple[str, ...]]:
    """The stamp and columns a mirror file was written with (None: no usable file)."""
    reader = _mapped(folder, relation, pair)
    metadata = (reader.schema.metadata or {}) if reader is not None else {}
    columns = metadata.get(COLUMNS_KEY, b"").decode()
    return metadata.get(STAMP_KEY, b"").decode() or None, tuple(filter(None, columns.split(",")))


def columns_to_read(folder: Path, pair: str, relation: str, columns: Sequence[str], state: PairState) -> tuple[str, ...] | None:
    """None when the mirror file of (pair, relation) holds `columns` under `state`'s stamp; else
    the columns to read it again with: those asked for and, when its stamp is current, those it
    held (so no later call loses them)."""
    stamp, held = _held(folder, relation, pair)
    if stamp == state.stamp and set(columns) <= set(held):
        return None
    return tuple(dict.fromkeys([*(held if stamp == state.stamp else ()), *columns]))


def refresh(cursor: Any, folder: Path, pair: str, relation: str, wanted: Sequence[str], state: PairState) -> None:
    """Read the pair's rows of `relation` (ts_utc and `wanted`) into its mirror file under
    `state`'s stamp, replacing the file atomically (written aside, then renamed)."""
    listed = "".join(f", {_quoted(column)}" for column in wanted)
    cursor.execute(f"select ts_utc{listed} from {_relation(relation)} where pair = {_literal(pair, _PAIR)} order by ts_utc")
    reader = cursor.fetch_record_batch()
    schema = reader.schema.with_metadata({STAMP_KEY: state.stamp.encode(), COLUMNS_KEY: ",".join(wanted).encode()})
    with (
        safe_files.opened_dir(folder / relation, create_mode=0o700, owners={os.geteuid()}) as folder_fd,
        # not flushed to disk first: a file cut short by a crash fails to open and is read again
        safe_files.atomic_writer(folder_fd, _name(pair), mode=0o600, durable=False) as sink,
        pa.ipc.new_file(sink, schema) as writer,
    ):
        for batch in reader:
            writer.write_batch(pa.RecordBatch.from_arrays(batch.columns, schema=schema))


class MirrorChanged(Exception):
    """A mirror file was replaced (by another retrieval, after a newer build) since its stamp was
    read: the retrieval reads the stamps again, so that one snapshot answers each chunk."""


def read_mirror(folder: Path, relation: str, pair: str, columns: Sequence[str], stamp: str) -> pa.Table:
    """ts_utc and `columns` of a mirror file, memory-mapped (the pages are read as they are
    used), if it still holds `stamp`."""
    reader = _mapped(folder, relation, pair)
    if reader is None or (reader.schema.metadata or {}).get(STAMP_KEY, b"").decode() != stamp:
        raise MirrorChanged(f"{relation} {pair}")
    return reader.read_all().select(["ts_utc", *columns])


def epoch_us(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Timestamps (any unit and zone) as µs since the Unix epoch, UTC (NULL must not occur)."""
    return pc.cast(column, pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False)


@dataclass(frozen=True)
class Located:
    """Each event's bar, age and missing reason, for the events of one pair (µs since the epoch)."""

    bar_position: np.ndarray  # int64: the bar's position in the pair's bars; only where has_bar
    source_ts_us: np.ndarray  # int64; only where has_bar
    has_bar: np.ndarray  # bool: a bar is known at the event
    age_us: np.ndarray  # int64; only where has_bar
    reason: np.ndarray  # object: None, 'before_first_bar', 'stale' or 'not_built'


def locate(event_us: np.ndarray, bars_us: np.ndarray, frontier_us: int | None, max_age_us: int) -> Located:
    """features_as_of's semantics: the newest bar with ts_utc + 1 minute <= event_time."""
    position = np.searchsorted(bars_us, event_us - MINUTE_US, side="right") - 1
    has_bar = position >= 0
    source = np.where(has_bar, bars_us[np.maximum(position, 0)] if bars_us.size else 0, 0)
    age = event_us - (source + MINUTE_US)
    reason = np.full(event_us.size, None, dtype=object)
    stale = has_bar & (age > max_age_us)
    not_built = has_bar & ~stale & (True if frontier_us is None else source > frontier_us)
    reason[not_built] = "not_built"
    reason[stale] = "stale"
    reason[~has_bar] = "before_first_bar"
    return Located(np.maximum(position, 0), source, has_bar, age, reason)


def row_positions(
    model_ts_us: np.ndarray, wanted_us: np.ndarray, wanted: np.ndarray, bars_us: np.ndarray, bar_position: np.ndarray
) -> pa.Array:
    """The row of each wanted instant in a model's sorted ts_utc, NULL where not wanted or absent.
    A model holding exactly the pair's bars (the usual case) has them at the bars' positions."""
    if np.array_equal(model_ts_us, bars_us):
        return pa.array(bar_position, type=pa.int64(), mask=~wanted)
    position = np.searchsorted(model_ts_us, wanted_us)
    clipped = np.minimum(position, max(model_ts_us.size - 1, 0))
    found = wanted & (position < model_ts_us.size)
    if model_ts_us.size:
        found &= model_ts_us[clipped] == wanted_us
    return pa.array(clipped, type=pa.int64(), mask=~found)


def frontier(states: dict[tuple[str, str], PairState], pair: str, feature_relations: Sequence[str]) -> int | None:
    """The last bar every feature model holds for the pair (None: some model holds none)."""
    newest = [states[(pair, relation)].last_ts_us for relation in feature_relations]
    return None if any(ts is None for ts in newest) else min(newest)  # type: ignore[type-var]


def chunk_groups(pair_column: pa.ChunkedArray | pa.Array) -> Iterator[tuple[str, np.ndarray]]:
    """(pair, positions of its events in the chunk), pair by pair."""
    if isinstance(pair_column, pa.ChunkedArray):  # one array: one dictionary for all the events
        pair_column = pair_column.combine_chunks()
    encoded = pc.dictionary_encode(pair_column)
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(encoded.dictionary) + 1))
    for code, pair in enumerate(encoded.dictionary.to_pylist()):
        yield pair, order[bounds[code] : bounds[code + 1]]


@dataclass(frozen=True)
class MirrorPlan:
    """What a retrieval reads: per feature relation, its (column, feature_matrix name) pairs."""

    folder: Path
    states: dict[tuple[str, str], PairState]
    relations: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]
    feature_relations: tuple[str, ...]  # every feature model (the frontier is over all of them)
    names: tuple[str, ...]  # the feature columns of the result, in their order


def join_chunk(chunk: pa.Table, plan: MirrorPlan, max_age_us: int) -> pa.Table:
    """The chunk's events' feature_ts_utc, feature_age, feature_missing_reason and features, in
    the chunk's order (bqx.features puts them beside the events' own columns)."""
    event_us = epoch_us(chunk.column("event_time"))
    order_parts: list[np.ndarray] = []
    ts_parts: list[pa.Array] = []
    age_parts: list[pa.Array] = []
    reason_parts: list[pa.Array] = []
    values: dict[str, list[pa.Array]] = {name: [] for name in plan.names}
    ts_type = None
    for pair, rows in chunk_groups(chunk.column("pair")):
        bars = read_mirror(plan.folder, M1_INDEX[0], pair, [], plan.states[(pair, M1_INDEX[0])].stamp)
        ts_type = bars.schema.field("ts_utc").type
        edge = frontier(plan.states, pair, plan.feature_relations)
        # the pair's events in time order: every later gather then walks the files forwards
        rows = rows[np.argsort(event_us[rows], kind="stable")]
        bars_us = epoch_us(bars.column("ts_utc"))
        located = locate(event_us[rows], bars_us, edge, max_age_us)
        kept = np.equal(located.reason, None)
        ts_parts.append(pa.array(located.source_ts_us, pa.int64(), mask=~kept).cast(pa.timestamp("us", tz="UTC")).cast(ts_type))
        age_parts.append(pa.array(located.age_us, pa.int64(), mask=~located.has_bar).cast(pa.duration("us")))
        reason_parts.append(pa.array(located.reason, pa.string()))
        for relation, columns in plan.relations:
            table = read_mirror(plan.folder, relation, pair, [column for column, _ in columns], plan.states[(pair, relation)].stamp)
            positions = row_positions(epoch_us(table.column("ts_utc")), located.source_ts_us, kept, bars_us, located.bar_position)
            taken = table.take(positions)
            for column, name in columns:
                values[name].append(taken.column(column).combine_chunks())
        order_parts.append(rows)
    order = np.concatenate(order_parts)
    inverse = np.empty(order.size, dtype=np.int64)
    inverse[order] = np.arange(order.size)
    back = pa.array(inverse)

    def gathered(parts: list[pa.Array]) -> pa.Array:
        return pa.concat_arrays(parts).take(back)

    columns = {
        "feature_ts_utc": gathered(ts_parts),
        "feature_age": gathered(age_parts),
        "feature_missing_reason": gathered(reason_parts),
    }
    columns.update({name: gathered(values[name]) for name in plan.names})
    return pa.table(columns)
