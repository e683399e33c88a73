"""Datasets at given event times (`--events FILE`): the events file read and checked, each event
given its bar by the point-in-time retrieval, and the events turned into rows the split and the
writer take, instead of every minute.

What a row at an event is (README "Datasets", "Datasets at event times"):
- its *bar* t is the pair's last bar with ts_utc + 1 minute <= event_time, found by
  `bqx.features` (the dbt macro `features_as_of`, the one definition of the rule); older than
  `max_age` it has none (`stale`, `before_first_bar`) and the event is dropped, counted per reason;
- its *features* are those of bar t, its *lags* those of the bars k bars before t in the pair's
  own bars (exactly the every-minute dataset's row of bar t);
- its *targets* are bar t's: the mean of the closes of bars t+1 ... t+H against the close of t.
  The close of t is the last price known at the event; bars t+1 ... t+H all close after the
  event (t is the last bar closed by then), so no target reads a bar closed before the event and
  no feature reads one closed after it. Both are re-checked here on every row, independently of
  the SQL (`check_rows`);
- its *known_at* is the event's time: the split and the purge use it (a row belongs to a part
  only if its event time and its longest target's last close both fall inside it).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bqx.datasets.options import DatasetError
from bqx.datasets.split import MINUTE_US, PairKeys
from bqx.feature_mirror import epoch_us
from bqx.pairs import PAIRS

KEYS = ("pair", "event_time")
EVENT_ROW = "event_row"  # the event's row in the file (1-based, after the header for CSV): joins back
FEATURE_AGE = "feature_age"  # event_time - close of the event's bar
# columns the builder writes beside the events' own (an events column of one of these names is refused)
BUILDER_COLUMNS = (EVENT_ROW, "ts_utc", "known_at", "bar_number", FEATURE_AGE, "feature_ts_utc", "feature_missing_reason")
# why an event has no row in the datasets (counted per pair in the manifest); the split's own
# reasons (purged, embargoed, incomplete_target) come on top
DROP_REASONS = (
    "before_first_bar",  # the pair has no bar known at the event (retrieval)
    "stale",  # the newest known bar is older than max_age (retrieval; every weekend event)
    "not_built",  # the bar is loaded but not built by every feature model (retrieval)
    "pair_not_selected",  # the event's pair is not among the pairs built (--pairs)
    "outside_range",  # the event's bar lies outside the extracted range (--start/--end, baseline_ts)
    "warm_up",  # the event's bar or its longest lag lies inside the warm-ups
)
_ZONE = re.compile(r"(Z|[+-]\d{2}(:?\d{2})?)$", re.IGNORECASE)
_TZ_RULE = "event_time must carry its time zone (e.g. 2024-07-02T10:00:00Z or +02:00); naive times are refused, not guessed"


@dataclass(frozen=True)
class EventsFile:
    """The events as read: pair (string), event_time (timestamp[us, UTC], rounded down to the
    microsecond), event_row, then the file's other columns in their order."""

    path: Path
    table: pa.Table
    sha256: str
    extra_columns: tuple[str, ...]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_csv(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith((".csv", ".csv.gz", ".txt"))


def _read_table(path: Path) -> tuple[pa.Table, str]:
    """The file's rows and how a row is named in messages ('line' for CSV, 'row' for Parquet)."""
    if not path.is_file():
        raise DatasetError(f"--events {path}: no such file")
    try:
        if _is_csv(path):
            import pyarrow.csv as pacsv

            # every column as text first: event_time is parsed below, row by row with its rule
            convert = pacsv.ConvertOptions(column_types={name: pa.string() for name in KEYS})
            return pacsv.read_csv(path, convert_options=convert), "line"
        return pq.read_table(path), "row"
    except (pa.ArrowInvalid, OSError) as err:
        kind = "CSV" if _is_csv(path) else "Parquet (name a CSV file *.csv)"
        raise DatasetError(f"--events {path}: cannot read it as {kind}: {' '.join(str(err).split())[:200]}") from None


def _row_name(kind: str, index: int) -> str:
    # CSV: the file's line (the header is line 1); Parquet: the row, counted from 1
    return f"line {index + 2}" if kind == "line" else f"row {index + 1}"


def _first(mask: pa.Array | np.ndarray) -> int:
    values = mask.to_numpy(zero_copy_only=False) if isinstance(mask, (pa.Array, pa.ChunkedArray)) else mask
    return int(np.flatnonzero(values)[0])


def _parse_text_times(path: Path, kind: str, text: pa.ChunkedArray) -> pa.Array:
    """ISO timestamps with a zone designator, checked row by row, to timestamp[us, UTC]."""
    import pandas as pd

    values = text.to_numpy(zero_copy_only=False)
    stripped = np.array([v.strip() if isinstance(v, str) else v for v in values], dtype=object)
    has_zone = np.array([isinstance(v, str) and bool(_ZONE.search(v)) for v in stripped])
    if not has_zone.all():
        row = int(np.flatnonzero(~has_zone)[0])
        raise DatasetError(f"--events {path} {_row_name(kind, row)}: event_time {str(values[row])[:40]!r} has no time zone: {_TZ_RULE}")
    parsed = pd.to_datetime(pd.Series(stripped), utc=True, errors="coerce", format="ISO8601")
    if parsed.isna().any():
        row = int(np.flatnonzero(parsed.isna().to_numpy())[0])
        raise DatasetError(f"--events {path} {_row_name(kind, row)}: event_time {str(values[row])[:40]!r} is not an ISO timestamp (e.g. 2024-07-02T10:00:00Z)")
    return pa.array(parsed.astype("datetime64[us, UTC]"), type=pa.timestamp("us", tz="UTC"))


def read_events(path: Path, reserved: Collection[str] = ()) -> EventsFile:
    """Read and check an events file (Parquet, or CSV when named *.csv): columns pair and
    event_time (time-zone-aware), any others kept. Every error is one line naming the file, the
    row (or line) and the rule."""
    table, kind = _read_table(path)
    where = f"--events {path}"
    missing = [name for name in KEYS if name not in table.column_names]
    if missing:
        raise DatasetError(f"{where}: no column {missing[0]} (an events file has the columns pair and event_time, any others are kept)")
    if len(set(table.column_names)) != len(table.column_names):
        raise DatasetError(f"{where}: a column name appears twice")
    clash = [name for name in table.column_names if name in set(BUILDER_COLUMNS) | set(reserved)]
    if clash:
        raise DatasetError(f"{where}: the column {clash[0]} is one the datasets write themselves: rename it")
    if table.num_rows == 0:
        raise DatasetError(f"{where}: holds no events")
    pair = table.column("pair")
    if not (pa.types.is_string(pair.type) or pa.types.is_large_string(pair.type) or pa.types.is_dictionary(pair.type)):
        raise DatasetError(f"{where}: pair must be text (e.g. EURUSD), not {pair.type}")
    pair = pc.cast(pair, pa.string())
    empty = pc.fill_null(pc.equal(pair, ""), True)  # a CSV's empty field is "", a Parquet's NULL
    if pc.any(empty).as_py():
        raise DatasetError(f"{where} {_row_name(kind, _first(empty))}: pair is empty (every event names its pair)")
    unknown = pc.invert(pc.is_in(pair, value_set=pa.array(PAIRS)))
    if pc.any(unknown).as_py():
        row = _first(unknown)
        raise DatasetError(f"{where} {_row_name(kind, row)}: unknown pair {pair[row].as_py()[:20]!r} (the pairs are {' '.join(PAIRS[:4])} ... {PAIRS[-1]})")
    event_time = table.column("event_time")
    empty = pc.is_null(event_time)
    if pa.types.is_string(event_time.type) or pa.types.is_large_string(event_time.type):
        empty = pc.or_(empty, pc.fill_null(pc.equal(pc.utf8_trim_whitespace(event_time), ""), True))
    if pc.any(empty).as_py():
        raise DatasetError(f"{where} {_row_name(kind, _first(empty))}: event_time is empty (every event has its time)")
    if pa.types.is_timestamp(event_time.type):
        if event_time.type.tz is None:
            raise DatasetError(f"{where}: event_time has no time zone (a {event_time.type} column): {_TZ_RULE}")
        # to microseconds, rounding down (a bar is known at an instant or not: truncating never
        # makes a bar known earlier than it is), as bqx.features does
        event_time = pc.cast(pc.cast(event_time, pa.timestamp(event_time.type.unit, tz="UTC")), pa.timestamp("us", tz="UTC"), safe=False)
    elif pa.types.is_string(event_time.type) or pa.types.is_large_string(event_time.type):
        event_time = _parse_text_times(path, kind, event_time)
    else:
        raise DatasetError(f"{where}: event_time must be a timestamp with a time zone, not {event_time.type}")
    extras = tuple(name for name in table.column_names if name not in KEYS)
    columns = {
        "pair": pair,
        EVENT_ROW: pa.array(np.arange(1, table.num_rows + 1) + (1 if kind == "line" else 0), pa.int64()),
        "event_time": event_time,
    }
    columns.update({name: table.column(name) for name in extras})
    return EventsFile(path, pa.table(columns), file_sha256(path), extras)


def locate(dsn: str, events: EventsFile, max_age: object, progress: bool) -> pa.Table:
    """Per event, in the file's order: feature_ts_utc (the bar whose features it gets, NULL when
    none), feature_age and feature_missing_reason, from the point-in-time retrieval."""
    from bqx.features import AsOfOptions, RetrievalError, as_of_batches

    keys = events.table.select(["pair", "event_time"])
    try:
        pieces = [
            batch.select(["feature_ts_utc", "feature_age", "feature_missing_reason"])
            for batch in as_of_batches(keys, AsOfOptions(columns=(), max_age=max_age), dsn=dsn, progress=progress)
        ]
    except RetrievalError as err:
        raise DatasetError(f"--events {events.path}: {' '.join(str(err).split())}") from None
    return pa.concat_tables(pieces)


@dataclass(frozen=True)
class PairEvents:
    """One pair's events that have a usable bar, ordered by event time (then file order)."""

    pair: str
    table: pa.Table  # the events' own columns (event_row, event_time, extras), one per row
    known_at_us: np.ndarray  # the event's time (µs, UTC): when the row is known
    bar_position: np.ndarray  # the event's bar: its row in the pair's extraction
    dropped: dict[str, int]


def pair_events(events: EventsFile, located: pa.Table, pairs: Sequence[str], keys: Sequence[PairKeys], usable: Sequence[np.ndarray]) -> tuple[list[PairEvents], dict[str, int]]:
    """Each built pair's events with their bar's row in the extraction; the others counted by
    the reason they have no row. Returns the pairs' events and the counts of events of pairs
    that were not built (by reason)."""
    pair_of = events.table.column("pair").to_numpy(zero_copy_only=False)
    reason = located.column("feature_missing_reason").to_numpy(zero_copy_only=False)
    found = pc.cast(located.column("feature_ts_utc"), pa.timestamp("us", tz="UTC"))
    bar_us = np.where(pc.is_null(found).to_numpy(zero_copy_only=False), -1, epoch_us(pc.fill_null(found, pa.scalar(0, pa.timestamp("us", tz="UTC")))))
    event_us = epoch_us(events.table.column("event_time"))
    result = []
    for pair, key, mask in zip(pairs, keys, usable):
        rows = np.flatnonzero(pair_of == pair)
        rows = rows[np.argsort(event_us[rows], kind="stable")]
        dropped = dict.fromkeys(DROP_REASONS, 0)
        for name in DROP_REASONS[:3]:
            dropped[name] = int((reason[rows] == name).sum())
        rows = rows[reason[rows] == None]  # noqa: E711 - element-wise: NULL reason = a bar was found
        position = np.searchsorted(key.ts_us, bar_us[rows])
        inside = position < key.ts_us.size
        inside[inside] = key.ts_us[position[inside]] == bar_us[rows][inside]
        dropped["outside_range"] = int((~inside).sum())
        rows, position = rows[inside], position[inside]
        warm = ~mask[position]
        dropped["warm_up"] = int(warm.sum())
        rows, position = rows[~warm], position[~warm]
        check_rows(pair, key, event_us[rows], position, events.table.column(EVENT_ROW).to_numpy()[rows])
        result.append(PairEvents(pair, events.table.take(pa.array(rows, pa.int64())).drop_columns(["pair"]), event_us[rows], position, dropped))
    others = ~np.isin(pair_of, list(pairs))
    outside: dict[str, int] = {}
    for name in DROP_REASONS[:3]:
        outside[name] = int((others & (reason == name)).sum())
    outside["pair_not_selected"] = int((others & (reason == None)).sum())  # noqa: E711
    return result, outside


def check_rows(pair: str, keys: PairKeys, event_us: np.ndarray, position: np.ndarray, event_row: np.ndarray) -> None:
    """The point-in-time rule on every event row, independently of the SQL that found the bar:
    the bar closed at or before the event, and the next bar of the pair (the first a target
    reads) closes after it. A row that breaks it would leak, so it stops the builder."""
    closes = keys.ts_us + MINUTE_US
    late = closes[position] > event_us
    has_next = position + 1 < keys.ts_us.size
    early = np.zeros(position.size, dtype=bool)
    early[has_next] = closes[position[has_next] + 1] <= event_us[has_next]
    bad = np.flatnonzero(late | early)
    if bad.size:
        i = bad[0]
        what = "closes after the event" if late[i] else "is not the last bar closed at the event"
        raise AssertionError(f"{pair}: event row {event_row[i]} was given the bar of {np.datetime64(int(keys.ts_us[position[i]]), 'us')}, which {what}")
