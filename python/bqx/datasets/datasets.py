"""Datasets: `datasets/<id>/{train,val,test}/pair=P/part-0.parquet` + `manifest.json`.

Each file holds pair, ts_utc, known_at, the selected features (base and lagged, float32 unless
the extraction kept the base column float64 for some pair) and every target (float64). Built at
events (`--events`), a row is an event: pair, event_row, event_time, the events' own columns,
then ts_utc (the event's bar), known_at (= event_time), feature_age, the features and targets.

`<id>` hashes everything that shapes the files: each pair's source fingerprint and range, the
options, the events file (none yet), the feature catalog and the builder itself (a hash of its
source files, so an uncommitted fix counts, and the versions of the libraries that compute),
so a changed builder never reuses an old dataset. A finished dataset is never overwritten: an
existing `<id>` is reused. Everything is written into a partial folder that is renamed to
`<id>` when complete; `datasets/latest` (a one-line file naming the newest id) is replaced
atomically the same way.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bqx.datasets.extract import PARQUET_OPTIONS, ROW_GROUP_ROWS, TIMESTAMP, PairExtract, read_pair
from bqx.datasets.lags import lag_column, parse_name
from bqx.datasets.split import PART_NAMES, Assignment
from bqx.project import PROJECT_DIR

ID_LENGTH = 16
LIBRARIES = ("numpy", "pyarrow", "scikit-learn", "pandas", "adbc-driver-postgresql", "matplotlib")
# the builder's code, and the retrieval that finds the events' bars (--events)
BUILDER_FILES = ("python/build_datasets.py", "python/bqx/datasets", "python/bqx/catalog.py", "python/bqx/features.py", "python/bqx/feature_mirror.py", "macros/retrieval")


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def builder_code_hash(project_dir: Path = PROJECT_DIR) -> str:
    """sha256 of the builder's own source files (committed or not)."""
    digest = hashlib.sha256()
    for entry in BUILDER_FILES:
        path = project_dir / entry
        files = sorted(f for f in path.rglob("*") if f.suffix in (".py", ".sql")) if path.is_dir() else [path] if path.exists() else []
        for file in files:
            digest.update(str(file.relative_to(project_dir)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def git_state(project_dir: Path = PROJECT_DIR) -> dict[str, object]:
    """The commit and whether the builder's files differ from it (for the manifest)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=project_dir, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "unknown (not a git checkout)"
    changed = git("status", "--porcelain", "--", *BUILDER_FILES)
    return {"commit": commit, "builder_files_uncommitted": bool(changed)}


def dataset_id(sources: Sequence[PairExtract], options: dict[str, Any], catalog_hash: str, code_hash: str, events: str | None = None) -> str:
    identity = {
        "sources": [[s.pair, s.fingerprint, s.first_ts, s.last_ts, s.rows, s.columns_hash] for s in sources],
        "options": options,
        "events": events,
        "catalog": catalog_hash,
        "builder": code_hash,
        "libraries": library_versions(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:ID_LENGTH]


def column_types(selected: Sequence[str], bases: Sequence[str], extracts: Sequence[PairExtract]) -> dict[str, pa.DataType]:
    """float64 for a selected column whose base any pair kept float64, else float32."""
    wide = {c for e in extracts for c in e.float64_columns}
    return {name: pa.float64() if parse_name(name, bases).base in wide else pa.float32() for name in selected}


@dataclass(frozen=True)
class PartWriter:
    """Writes one pair's rows of each part into `<root>/<part>/pair=P/part-0.parquet`."""

    root: Path
    schema: pa.Schema

    def write(self, part: str, table: pa.Table) -> None:
        folder = self.root / part / f"pair={table.column('pair')[0].as_py()}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.cast(self.schema), folder / "part-0.parquet", row_group_size=ROW_GROUP_ROWS, **PARQUET_OPTIONS)


def dataset_schema(selected: Sequence[str], types: dict[str, pa.DataType], targets: Sequence[str], events: pa.Schema | None = None) -> pa.Schema:
    """The files' columns; `events` = the events' own columns (event_row, event_time, extras)."""
    at_events = []
    if events is not None:
        at_events = [events.field(name).with_nullable(name not in ("event_row", "event_time")) for name in events.names]
    return pa.schema(
        [
            pa.field("pair", pa.string(), nullable=False),
            *at_events,
            pa.field("ts_utc", TIMESTAMP, nullable=False),
            pa.field("known_at", TIMESTAMP, nullable=False),
            *([pa.field("feature_age", pa.duration("us"), nullable=False)] if events is not None else []),
            *(pa.field(name, types[name]) for name in selected),
            *(pa.field(name, pa.float64()) for name in targets),
        ]
    )


def pair_columns(extract: PairExtract, selected: Sequence[str], bases: Sequence[str], targets: Sequence[str]) -> pa.Table:
    """One pair's keys, selected columns (lags computed here, within the pair) and targets."""
    parsed = [parse_name(name, bases) for name in selected]
    needed = list(dict.fromkeys(c.base for c in parsed))
    table = read_pair(extract, [*needed, *targets])
    arrays: list[pa.Array] = [table.column("pair"), table.column("ts_utc"), table.column("known_at")]
    for candidate in parsed:
        column = table.column(candidate.base)
        if candidate.lag == 0:
            arrays.append(column)
            continue
        values = column.to_numpy(zero_copy_only=False)  # NULL -> NaN
        shifted = lag_column(values.astype(np.float64 if column.type == pa.float64() else np.float32), candidate.lag)
        arrays.append(pa.array(shifted, from_pandas=True))  # NaN -> NULL, as in the source
    arrays.extend(table.column(t) for t in targets)
    return pa.Table.from_arrays(arrays, names=["pair", "ts_utc", "known_at", *selected, *targets])


def event_rows(table: pa.Table, events: pa.Table, bar_position: np.ndarray) -> pa.Table:
    """Rows at events from a pair's every-minute rows (`pair_columns`): each event's bar's row
    (its features, lags within the pair, targets), the event's own columns before it, known_at
    the event's time and feature_age its distance to the bar's close."""
    at = table.take(pa.array(bar_position, pa.int64()))
    event_time = events.column("event_time")
    age = pc.subtract(event_time.cast(pa.int64()), pc.add(at.column("ts_utc").cast(TIMESTAMP).cast(pa.int64()), 60_000_000))
    arrays = [at.column("pair"), *events.columns, at.column("ts_utc"), event_time, age.cast(pa.duration("us"))]
    names = ["pair", *events.column_names, "ts_utc", "known_at", "feature_age"]
    rest = at.column_names[3:]  # the selected features and the targets, after pair, ts_utc, known_at
    return pa.Table.from_arrays([*arrays, *(at.column(n) for n in rest)], names=[*names, *rest])


def write_parts(
    writer: PartWriter, table: pa.Table, assignment: Assignment, targets: Sequence[str], parts: dict[int, str] = PART_NAMES
) -> dict[str, int]:
    """Write the rows of each part (each with every target known); return rows per part name."""
    counts = {}
    for code, name in parts.items():
        index = np.flatnonzero(assignment.part == code)
        counts[name] = int(index.size)
        if index.size:
            rows = table.take(pa.array(index))
            for target in targets:
                if rows.column(target).null_count:  # the split let in a row whose target is unknown
                    pair = rows.column("pair")[0].as_py()
                    raise AssertionError(f"{pair}: {rows.column(target).null_count} rows of {name} without {target}: the purge is broken")
            writer.write(name, rows)
    return counts


def part_files(root: Path, part: str) -> list[Path]:
    return sorted((root / part).glob("pair=*/part-*.parquet"))


def iter_part(root: Path, part: str, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
    """The part's rows, one pair at a time (pairs in file-name order)."""
    for path in part_files(root, part):
        yield pq.read_table(path, columns=list(columns) if columns is not None else None)


def write_latest(datasets: Path, identifier: str) -> None:
    from bqx.datasets.files import atomic_write_text

    atomic_write_text(datasets / "latest", identifier + "\n")


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")
