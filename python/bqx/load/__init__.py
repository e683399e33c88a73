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
from bqx.load.errors import FileSkipped, LoadError
from bqx.load.parse import ParsedRows, parse_source, parse_table
from bqx.load.rules import REASONS, PlausibleRanges, check_rows, reject_records
from bqx.load.sources import BarSource, SkippedFile, find_sources, normalise_pair
from bqx.load.summary import FileSummary, LoadSummary, by_reason, format_summary, printable
from bqx.raw_schema import ensure_raw_schema

if TYPE_CHECKING:  # pandas is imported only where needed: it costs half a second at start-up
    import pandas as pd

__all__ = [
    "FORMATS",
    "REASONS",
    "FileSkipped",
    "FileSummary",
    "LoadError",
    "LoadSummary",
    "PlausibleRanges",
    "SkippedFile",
    "format_summary",
    "load_frame",
    "load_paths",
    "printable",
]

# what parsing a file of unexpected content can raise besides FileSkipped: that file is skipped
# with the error's first line (arrow and pandas describe the structure, not the data)
UNPARSEABLE = (pa.ArrowException, ValueError, UnicodeError, OverflowError)


def load_parsed(
    conn: psycopg.Connection, rows: ParsedRows, source_name: str, fmt: str, started: float, ranges: PlausibleRanges
) -> FileSummary:
    """Check a file's rows and write them, its rejects and its log row in one transaction."""
    started_at = dt.datetime.now(dt.UTC)
    checked = check_rows(rows, ranges)
    records = reject_records(source_name, rows, checked, fmt, ranges)
    rows_read = rows.n + len(rows.unsplit_lines) + rows.rows_of_other_pairs
    written = write.write_file(conn, rows, checked, records, source_name, fmt, rows_read, started_at)
    return FileSummary(
        file=source_name,
        format=fmt,
        rows_read=rows_read,
        rows_loaded=written.bars.new,
        rows_replaced=written.bars.replaced,
        rows_unchanged=written.bars.unchanged,
        rows_rejected=len(records),
        rows_skipped=rows.rows_of_other_pairs,
        rejected_by_reason=by_reason(Counter(r[5] for r in records)),
        rejects_recorded=written.rejects_recorded,
        seconds=time.perf_counter() - started,
        notes=rows.notes,
    )


def parse_reason(err: Exception) -> str:
    """One line saying why a file could not be parsed."""
    if isinstance(err, FileSkipped):
        return str(err)
    return f"cannot be parsed: {type(err).__name__}: {' '.join(str(err).split())[:200]}"


def load_paths(
    dsn: str,
    paths: Sequence[Path | str],
    fmt: str | None = None,
    pair: str | None = None,
    *,
    ranges: PlausibleRanges | None = None,
    follow_symlinks: bool = False,
    progress: bool | None = None,
) -> LoadSummary:
    """Load files and folders of bars into raw.m1_bars (see the module docstring).

    Each file loads in its own transaction. A path or file that cannot be loaded (missing,
    unreadable, a symbolic link, not bar data, a header without the needed columns, refused by
    the database) is listed in the summary's `skipped` with the reason, and the others load.
    LoadError (nothing loaded) for what concerns the whole load: an unknown --format or --pair,
    bands wider than the database accepts, no path. Database errors other than a file's refusal
    (server unreachable, ...) propagate as psycopg errors.

    `ranges`: the plausible bands of prices and timestamps (default PlausibleRanges(): prices
    1e-4 ... 1e5, ts_utc from 1971 to 5 minutes after the load's start). `follow_symlinks`:
    load what symbolic links point to (by default they are reported and skipped). `progress`:
    a tqdm bar over the files (default: several files and stderr is a terminal).
    """
    t0 = time.perf_counter()
    if fmt is not None and fmt not in FORMATS:
        raise LoadError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    pair = normalise_pair(pair)
    ranges = (ranges or PlausibleRanges()).starting(dt.datetime.now(dt.UTC))
    if not paths:
        raise LoadError("no PATH given: name files or folders of bars to load")
    sources, skipped = find_sources([Path(p) for p in paths], fmt, pair, follow_symlinks=follow_symlinks)
    summaries: list[FileSummary] = []
    with psycopg.connect(dsn) as conn:
        with conn.transaction():
            notes = ensure_raw_schema(conn)
        show = progress if progress is not None else len(sources) > 1 and sys.stderr.isatty()
        iterator: Sequence[BarSource] | Iterator[BarSource] = sources
        bar = None
        if show:
            from tqdm import tqdm

            bar = tqdm(sources, unit="file", desc="bqx load", file=sys.stderr)
            iterator = bar
        for source in iterator:
            started = time.perf_counter()
            try:
                rows = parse_source(source)
                summary = load_parsed(conn, rows, source.name, source.format, started, ranges)
            except (FileSkipped, *UNPARSEABLE) as err:
                skipped.append(SkippedFile(source.name, parse_reason(err)))
                continue
            summaries.append(summary)
            if bar is not None:
                bar.set_postfix_str(f"{printable(Path(source.name).name)}: {summary.rows_read:,} rows")
        if bar is not None:
            bar.close()
    return LoadSummary(files=summaries, seconds=time.perf_counter() - t0, skipped=skipped, notes=notes)


def load_frame(
    conn_or_dsn: psycopg.Connection | str,
    bars: pd.DataFrame,
    source_name: str,
    *,
    ranges: PlausibleRanges | None = None,
) -> LoadSummary:
    """Validate and load an in-memory DataFrame with the csv's columns (ts_utc tz-aware; naive
    values are read as UTC). Rejects carry the row position + 1 as line_number and the row as JSON.
    A frame that cannot be loaded at all (a missing column) is a LoadError naming `source_name`.

    With a connection, the work runs in `conn.transaction()` blocks: inside a transaction of the
    caller they become savepoints and the caller decides to commit.
    """
    t0 = time.perf_counter()
    ranges = (ranges or PlausibleRanges()).starting(dt.datetime.now(dt.UTC))
    table = pa.Table.from_pandas(bars.reset_index(drop=True), preserve_index=False)
    try:
        rows = parse_table(table, None, "frame")
    except FileSkipped as err:
        raise LoadError(f"{source_name}: {err}") from None

    def load(conn: psycopg.Connection) -> LoadSummary:
        with conn.transaction():
            notes = ensure_raw_schema(conn)
        try:
            summary = load_parsed(conn, rows, source_name, "frame", t0, ranges)
        except FileSkipped as err:
            raise LoadError(f"{source_name}: {err}") from None
        return LoadSummary(files=[summary], seconds=time.perf_counter() - t0, notes=notes)

    if isinstance(conn_or_dsn, str):
        with psycopg.connect(conn_or_dsn) as conn:
            return load(conn)
    return load(conn_or_dsn)
