"""`bqx load`: validate 1-minute bars and load them into `raw.m1_bars`.

The steps, one module each:

    sources   which files: paths and folders expanded, zip members, format and pair detected
    parse     every format (csv, histdata, parquet, a DataFrame) to the same NumPy columns
    rules     the row checks: the first rule a row breaks, and its reject record
    write     one transaction per file: bars by binary COPY (new partitions, straight COPY or a
              merge with history), rejects, the load_log row
    summary   what each file and the whole load did, and the table `bqx load` prints

Rows are parsed and checked vectorised (pyarrow/numpy) and sent with binary COPY (bqx.pgcopy).
source_file is the path as given (a directory's files: the directory joined with their relative
path; a zip member: `archive.zip!member.csv`).
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pyarrow as pa

from bqx.bar_formats import FORMATS
from bqx.load import write
from bqx.load.errors import LoadError
from bqx.load.parse import ParsedRows, parse_source, parse_table
from bqx.load.rules import REASONS, check_rows, reject_records
from bqx.load.sources import BarSource, find_sources, normalise_pair
from bqx.load.summary import FileSummary, LoadSummary, by_reason, format_summary
from bqx.raw_schema import ensure_raw_schema

if TYPE_CHECKING:  # pandas is imported only where needed: it costs half a second at start-up
    import pandas as pd

__all__ = [
    "FORMATS",
    "REASONS",
    "FileSummary",
    "LoadError",
    "LoadSummary",
    "format_summary",
    "load_frame",
    "load_paths",
]


def load_parsed(conn: psycopg.Connection, rows: ParsedRows, source_name: str, fmt: str, started: float) -> FileSummary:
    """Check a file's rows and write them, its rejects and its log row in one transaction."""
    started_at = dt.datetime.now(dt.UTC)
    checked = check_rows(rows)
    records = reject_records(source_name, rows, checked, fmt)
    rows_read = rows.n + len(rows.unsplit_lines) + rows.rows_of_other_pairs
    written = write.write_file(conn, rows, checked, records, source_name, fmt, rows_read, started_at)
    return FileSummary(
        file=source_name,
        format=fmt,
        rows_read=rows_read,
        rows_loaded=written.new,
        rows_replaced=written.replaced,
        rows_unchanged=written.unchanged,
        rows_rejected=len(records),
        rows_skipped=rows.rows_of_other_pairs,
        rejected_by_reason=by_reason(Counter(r[5] for r in records)),
        seconds=time.perf_counter() - started,
        notes=rows.notes,
    )


def load_paths(
    dsn: str,
    paths: Sequence[Path],
    fmt: str | None = None,
    pair: str | None = None,
    *,
    progress: bool | None = None,
) -> LoadSummary:
    """Load files and directories of bars into raw.m1_bars (see the module docstring).

    Every file's format and pair are worked out before anything is written (an error names the
    file); then each file is loaded in its own transaction. `progress` shows a tqdm bar over the
    files (default: when there are several).
    """
    t0 = time.perf_counter()
    if fmt is not None and fmt not in FORMATS:
        raise LoadError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    pair = normalise_pair(pair)
    if not paths:
        raise LoadError("no PATH given: name files or directories of bars to load")
    sources = find_sources([Path(p) for p in paths], fmt, pair)
    summaries: list[FileSummary] = []
    with psycopg.connect(dsn) as conn:
        with conn.transaction():
            ensure_raw_schema(conn)
        show = progress if progress is not None else len(sources) > 1
        iterator: Sequence[BarSource] | Iterator[BarSource] = sources
        bar = None
        if show:
            from tqdm import tqdm

            bar = tqdm(sources, unit="file", desc="bqx load", file=sys.stderr)
            iterator = bar
        for source in iterator:
            started = time.perf_counter()
            rows = parse_source(source)
            summary = load_parsed(conn, rows, source.name, source.format, started)
            summaries.append(summary)
            if bar is not None:
                bar.set_postfix_str(f"{Path(source.name).name}: {summary.rows_read:,} rows")
        if bar is not None:
            bar.close()
    return LoadSummary(files=summaries, seconds=time.perf_counter() - t0)


def load_frame(conn_or_dsn: psycopg.Connection | str, bars: pd.DataFrame, source_name: str) -> LoadSummary:
    """Validate and load an in-memory DataFrame with the csv's columns (ts_utc tz-aware; naive
    values are read as UTC). Rejects carry the row position + 1 as line_number and the row as JSON.

    With a connection, the work runs in `conn.transaction()` blocks: inside a transaction of the
    caller they become savepoints and the caller decides to commit.
    """
    t0 = time.perf_counter()
    table = pa.Table.from_pandas(bars.reset_index(drop=True), preserve_index=False)
    rows = parse_table(source_name, table, None, "frame")
    if isinstance(conn_or_dsn, str):
        with psycopg.connect(conn_or_dsn) as conn:
            with conn.transaction():
                ensure_raw_schema(conn)
            summary = load_parsed(conn, rows, source_name, "frame", t0)
    else:
        with conn_or_dsn.transaction():
            ensure_raw_schema(conn_or_dsn)
        summary = load_parsed(conn_or_dsn, rows, source_name, "frame", t0)
    return LoadSummary(files=[summary], seconds=time.perf_counter() - t0)
