"""`bqx load`: validate 1-minute bars and load them into `raw.m1_bars`.

Formats
    csv       header `pair,ts_utc,open,high,low,close,volume,spread` (any order; `spread` may be
              absent; `pair` may be absent when `--pair` or the file name gives it; other columns
              are ignored and named in the summary). `ts_utc` is ISO 8601 with `Z` or an offset,
              or naive (= UTC).
    histdata  HistData.com "ASCII M1": `YYYYMMDD HHMMSS;open;high;low;close;volume`, no header,
              times in EST without daylight saving (fixed UTC-5, so ts_utc = time + 5 h); the pair
              comes from `--pair` or the file name (e.g. DAT_ASCII_EURUSD_M1_202407.csv); spread
              is null.
    parquet   the csv's columns; `ts_utc` a timestamp (naive = UTC) or ISO text.
    A PATH may be a file or a directory (searched recursively, in sorted order, for *.csv,
    *.csv.gz, *.parquet and *.zip; a .zip, e.g. a HistData download, is read member by member).
    The format is detected when not given: .parquet -> parquet; a first line that is the csv
    header -> csv; a first line `YYYYMMDD HHMMSS;...` -> histdata.

Rules (a row breaking one is written to raw.m1_rejects with the first rule it breaks, in this
order, and the good rows beside it load normally)
    unparseable_row       wrong number of fields, a price/volume/spread that is not a number, a
                          missing price/volume, a volume that is not a whole number
    unknown_pair          pair not one of the 28 (case, blanks around it and a slash as in
                          EUR/USD are forgiven)
    bad_timestamp         ts_utc not a timestamp
    not_whole_minute      ts_utc with seconds
    non_finite_price      a price is NaN or infinite
    non_positive_price    a price <= 0
    high_low_inconsistent not (low <= open, close <= high)
    negative_volume       volume < 0
    non_finite_spread     spread infinite (NaN and empty mean null)
    negative_spread       spread < 0
    duplicate_in_file     a (pair, ts_utc) already seen earlier in the same file: the FIRST valid
                          occurrence is kept, every later one is rejected (naming the kept line)

Loading (one transaction per file: a file is loaded whole or not at all)
    a key that is new is inserted; a key that exists with identical values is left alone
    (loaded_at unchanged); a key that exists with different values is updated (loaded_at = now(),
    source_file = this file) after its old version is copied to raw.m1_bars_history with
    replaced_at and replaced_by_file. Loading the same file twice changes nothing.
    Rows are parsed and checked vectorised (pyarrow/numpy) and sent with binary COPY, by month:
    a month without a partition is copied into a new table that is then indexed and attached as
    raw.m1_bars_YYYY_MM; a month whose partition holds no bar of the file's pairs in the file's
    time range is copied straight into raw.m1_bars; anything else goes through a temporary table
    and is merged in SQL. Partitions are UTC months whatever the session's TimeZone.
    source_file is the path as given (a directory's files: the directory joined with their
    relative path; a zip member: `archive.zip!member.csv`).
    Replacing many bars is the slow case (~50k bars/s: every one is an UPDATE plus a history row);
    new and unchanged bars go at several hundred thousand rows/s.
"""

from __future__ import annotations

import datetime as dt
import functools
import gzip
import io
import json
import math
import re
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from psycopg import errors

from bqx.pairs import PAIRS
from bqx.raw_schema import (
    attach_month,
    create_detached_month,
    ensure_month_partitions,
    ensure_raw_schema,
    existing_partitions,
    lock_partitions,
    partition_name,
)

if TYPE_CHECKING:  # pandas is imported only where needed: it costs half a second at start-up
    import pandas as pd

FORMATS = ("csv", "histdata", "parquet")
CSV_COLUMNS = ("pair", "ts_utc", "open", "high", "low", "close", "volume", "spread")
HISTDATA_COLUMNS = ("ts_utc", "open", "high", "low", "close", "volume")
PRICE_COLUMNS = ("open", "high", "low", "close")
NUMERIC_COLUMNS = (*PRICE_COLUMNS, "volume", "spread")
HISTDATA_UTC_OFFSET_US = 5 * 3600 * 1_000_000  # EST without daylight saving = UTC-5

# rule codes, in the order they are checked (a row is rejected for the first it breaks)
REASONS: dict[str, str] = {
    "unparseable_row": "wrong field count, or a price/volume/spread that is not a number",
    "unknown_pair": "pair is not one of the 28",
    "bad_timestamp": "ts_utc is not a timestamp",
    "not_whole_minute": "ts_utc is not a whole minute",
    "non_finite_price": "a price is NaN or infinite",
    "non_positive_price": "a price is <= 0",
    "high_low_inconsistent": "not low <= open, close <= high",
    "negative_volume": "volume < 0",
    "non_finite_spread": "spread is infinite",
    "negative_spread": "spread < 0",
    "duplicate_in_file": "(pair, ts_utc) seen earlier in the file; the first occurrence is kept",
}
_CODE = {name: i + 1 for i, name in enumerate(REASONS)}
_REASON_BY_CODE = {i: name for name, i in _CODE.items()}

_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in Unix microseconds
_MINUTE_US = 60_000_000
_COPY_CHUNK_ROWS = 1 << 18


def _string_array(values: Sequence[str]) -> pa.Array:
    """pa.array(values) built from buffers: pa.array would import pandas (half a second)."""
    encoded = [v.encode("utf-8") for v in values]
    offsets = np.cumsum([0, *map(len, encoded)], dtype=np.int32)
    return pa.StringArray.from_buffers(len(encoded), pa.py_buffer(offsets.tobytes()), pa.py_buffer(b"".join(encoded)))


_PAIR_VALUES = _string_array(PAIRS)
_PAIR_BYTES = np.array(PAIRS, dtype="S6")
_SPREAD_NULL_TOKENS = ("", "na", "n/a", "nan", "null", "none", "-nan")
_NUMBER_RE = r"^[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|[iI][nN][fF]([iI][nN][iI][tT][yY])?|[nN][aA][nN])$"
_HISTDATA_LINE_RE = re.compile(rb"^\s*\d{8} \d{6};")


class LoadError(RuntimeError):
    """A problem with the input that stops the load before anything is written."""


# --------------------------------------------------------------------------------------------
# summaries


@dataclass
class FileSummary:
    """What happened to one file (or in-memory frame)."""

    file: str
    format: str
    rows_read: int = 0
    rows_loaded: int = 0  # new keys inserted
    rows_replaced: int = 0  # existing keys updated with different values (old values in history)
    rows_unchanged: int = 0  # existing keys with identical values (left alone)
    rows_rejected: int = 0
    rows_skipped: int = 0  # rows of another pair than --pair
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0


@dataclass
class LoadSummary:
    """Per-file summaries and their totals (`seconds` is the wall time of the whole load)."""

    files: list[FileSummary]
    seconds: float
    rows_read: int = field(init=False)
    rows_loaded: int = field(init=False)
    rows_replaced: int = field(init=False)
    rows_unchanged: int = field(init=False)
    rows_rejected: int = field(init=False)
    rows_skipped: int = field(init=False)
    rejected_by_reason: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        for name in ("rows_read", "rows_loaded", "rows_replaced", "rows_unchanged", "rows_rejected", "rows_skipped"):
            setattr(self, name, sum(getattr(f, name) for f in self.files))
        by_reason: Counter[str] = Counter()
        for f in self.files:
            by_reason.update(f.rejected_by_reason)
        self.rejected_by_reason = {name: by_reason[name] for name in REASONS if by_reason[name]}

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0


def format_summary(summary: LoadSummary) -> str:
    """A readable table of a load: one line per file, the totals, the rejects by rule."""
    headers = ["file", "format", "read", "new", "replaced", "unchanged", "rejected", "seconds", "rows/s"]

    def cells(name: str, fmt: str, s: FileSummary | LoadSummary) -> list[str]:
        return [
            name,
            fmt,
            f"{s.rows_read:,}",
            f"{s.rows_loaded:,}",
            f"{s.rows_replaced:,}",
            f"{s.rows_unchanged:,}",
            f"{s.rows_rejected:,}",
            f"{s.seconds:.2f}",
            f"{s.rows_per_second:,.0f}",
        ]

    rows = [cells(f.file, f.format, f) for f in summary.files]
    if len(summary.files) != 1:
        rows.append(cells(f"total ({len(summary.files)} files)", "", summary))
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows[: len(summary.files)]]
    if len(summary.files) != 1:
        out += ["  ".join("-" * w for w in widths), line(rows[-1])]
    if summary.rows_skipped:
        out.append(f"{summary.rows_skipped:,} rows of other pairs skipped (--pair)")
    if summary.rows_replaced:
        out.append(
            f"{summary.rows_replaced:,} bars replaced with corrected values; "
            "old values kept in raw.m1_bars_history"
        )
    if summary.rows_rejected:
        out.append(f"{summary.rows_rejected:,} rows rejected (details in raw.m1_rejects):")
        for name, count in summary.rejected_by_reason.items():
            out.append(f"  {name:<22} {count:>10,}  {REASONS[name]}")
    for f in summary.files:
        for note in f.notes:
            out.append(f"note: {f.file}: {note}")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# sources: files, zip members, frames


@dataclass
class _Source:
    name: str  # as shown and stored in source_file
    read: Callable[[], bytes]
    fmt: str
    pair: str | None  # the pair given by --pair or the file name: used where rows carry no pair
    only_pair: str | None = None  # --pair: rows of other pairs in a file with a pair column are skipped


def _pair_in_name(name: str) -> str | None:
    upper = Path(name).name.upper()
    found = {p for p in PAIRS if p in upper}
    if len(found) == 1:
        return found.pop()
    if len(found) > 1:
        raise LoadError(f"{name}: the file name names several pairs ({', '.join(sorted(found))}); pass --pair")
    return None


def _normalise_pair(pair: str | None) -> str | None:
    if pair is None:
        return None
    p = pair.strip().upper().replace("/", "")
    if p not in PAIRS:
        raise LoadError(f"--pair {pair!r} is not one of the 28 pairs: {' '.join(PAIRS)}")
    return p


def _first_line(data: bytes) -> bytes:
    for raw in data[:65536].splitlines():
        if raw.strip():
            return raw.strip().lstrip(b"\xef\xbb\xbf")
    return b""


def _header_names(line: bytes) -> list[str] | None:
    """The column names if `line` is a csv header (it names ts_utc), else None."""
    names = [n.strip().strip('"').strip().lower() for n in line.decode("utf-8", "replace").split(",")]
    return names if "ts_utc" in names else None


def _detect(name: str, data_head: bytes, fmt: str | None) -> str:
    lower = name.lower()
    if fmt is not None:
        if fmt not in FORMATS:
            raise LoadError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
        return fmt
    if lower.endswith((".parquet", ".pq")) or data_head[:4] == b"PAR1":
        return "parquet"
    first = _first_line(data_head)
    if _header_names(first) is not None:
        return "csv"
    if _HISTDATA_LINE_RE.match(first):
        return "histdata"
    if not first:
        return "csv"  # empty file: nothing to load
    raise LoadError(
        f"{name}: cannot tell the format from its first line {first[:80].decode('utf-8', 'replace')!r}: "
        "expected the csv header pair,ts_utc,open,high,low,close,volume,spread or a HistData line "
        "'YYYYMMDD HHMMSS;open;high;low;close;volume'; pass --format"
    )


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        data = gzip.decompress(data)
    return data


_WANTED_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq", ".zip")


def _expand(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            found = [
                p
                for p in sorted(path.rglob("*"))
                if p.is_file()
                and p.name.lower().endswith(_WANTED_SUFFIXES)
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            ]
            if not found:
                raise LoadError(f"{path}: no *.csv, *.csv.gz, *.parquet or *.zip file in this directory")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise LoadError(f"{path}: no such file or directory")
    return files


def _sources(paths: Sequence[Path], fmt: str | None, pair: str | None) -> list[_Source]:
    """Every file to load, with its format and pair, checked before anything is loaded."""
    sources: list[_Source] = []
    for path in _expand(paths):
        if path.name.lower().endswith(".zip"):
            try:
                archive = zipfile.ZipFile(path)
            except zipfile.BadZipFile as err:
                raise LoadError(f"{path}: not a readable zip file ({err})") from err
            members = sorted(
                m for m in archive.namelist() if m.lower().endswith((".csv", ".parquet")) and not m.endswith("/")
            )
            if not members:
                raise LoadError(f"{path}: the zip file holds no .csv or .parquet file")
            for member in members:
                name = f"{path}!{member}"

                def read(archive: zipfile.ZipFile = archive, member: str = member) -> bytes:
                    return archive.read(member)

                with archive.open(member) as handle:
                    head = handle.read(65536)
                member_fmt = _detect(name, head, fmt)
                member_pair = pair or _pair_in_name(member) or _pair_in_name(path.name)
                sources.append(_Source(name, read, member_fmt, member_pair, pair))
            continue
        try:
            if path.name.lower().endswith(".gz"):
                with gzip.open(path, "rb") as handle:
                    head = handle.read(65536)
            else:
                with path.open("rb") as handle:
                    head = handle.read(65536)
        except OSError as err:
            raise LoadError(f"{path}: cannot read it ({err})") from err
        file_fmt = _detect(str(path), head, fmt)

        def read_file(path: Path = path) -> bytes:
            return _read_bytes(path)

        sources.append(_Source(str(path), read_file, file_fmt, pair or _pair_in_name(path.name), pair))
    for source in sources:
        if source.fmt == "histdata" and source.pair is None:
            raise LoadError(
                f"{source.name}: a HistData file carries no pair and its name names none of the 28 pairs; "
                "pass --pair (e.g. --pair EURUSD) or rename it (e.g. DAT_ASCII_EURUSD_M1_202407.csv)"
            )
    return sources


# --------------------------------------------------------------------------------------------
# parsing: every format becomes the same set of columns


@dataclass
class _Rows:
    """Candidate rows of one source, columns as numpy arrays of length n."""

    line: np.ndarray  # int64, 1-based physical line (parquet/frames: row index + 1)
    pair_code: np.ndarray  # int16 index into PAIRS, -1 unknown
    ts_us: np.ndarray  # int64 Unix microseconds UTC (meaningless where ts_bad)
    ts_bad: np.ndarray  # bool
    values: dict[str, np.ndarray]  # open high low close volume spread as float64 (spread NaN = null)
    field_bad: np.ndarray  # int8: 0 fine, else 1 + index in NUMERIC_COLUMNS of the first bad field
    text: Callable[[str, int], str | None]  # the value as written of a column at row i
    raw_text: Callable[[int], str]  # the row as written (a line, or the row as JSON)
    early_rejects: list[tuple[int, str, str, str]]  # (line, raw text, reason, detail): rows not in the arrays
    skipped: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.line)


# arrow -> numpy through the buffers: pyarrow's own conversions (to_numpy with nulls, fill_null
# with a Python scalar) import pandas, which costs half a second at start-up.


def _cell_text(columns: dict[str, pa.ChunkedArray], pair: str | None, column: str, i: int) -> str | None:
    """A column's value at row i as written (for a reject's detail); `pair` when the file's
    pair comes from its name or --pair."""
    if column == "pair" and "pair" not in columns:
        return pair
    if column not in columns:
        return None
    value = columns[column][i].as_py()
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value)
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _combined(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def _bits(buffer: pa.Buffer | None, offset: int, n: int) -> np.ndarray:
    if buffer is None or n == 0:
        return np.zeros(n, bool)
    return np.unpackbits(np.frombuffer(buffer, np.uint8), bitorder="little")[offset : offset + n].astype(bool)


def _valid(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """True where the value is not null."""
    array = _combined(array)
    if array.null_count == 0:
        return np.ones(len(array), bool)
    return _bits(array.buffers()[0], array.offset, len(array))


def _values(array: pa.Array | pa.ChunkedArray, dtype: type, fill: object = 0) -> np.ndarray:
    """A fixed-width array (numbers, timestamps) as numpy, nulls replaced by `fill`: a read-only
    view of arrow's buffer when there is no null, else a copy."""
    array = _combined(array)
    n = len(array)
    if n == 0:
        return np.zeros(0, dtype)
    if pa.types.is_boolean(array.type):
        out = _bits(array.buffers()[1], array.offset, n).astype(dtype)
    else:
        itemsize = np.dtype(dtype).itemsize
        if array.type.byte_width != itemsize:  # pragma: no cover - a caller's mistake
            raise TypeError(f"{array.type} is not {np.dtype(dtype)}")
        out = np.frombuffer(array.buffers()[1], dtype=dtype, count=n, offset=array.offset * itemsize)
        if not array.null_count:
            return out
        out = out.copy()
    if array.null_count:
        out[~_valid(array)] = fill
    return out


def _strings(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if not pa.types.is_string(array.type):
        array = pc.cast(array, pa.string())
    return array


def _to_float(array: pa.Array | pa.ChunkedArray, *, nullable: bool) -> tuple[np.ndarray, np.ndarray]:
    """float64 values (NaN where null) and a `bad` mask (not a number, or missing when not nullable)."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    n = len(array)
    if pa.types.is_null(array.type):
        return np.full(n, np.nan), np.full(n, not nullable)
    if pa.types.is_integer(array.type) or pa.types.is_floating(array.type) or pa.types.is_decimal(array.type):
        values = pc.cast(array, pa.float64(), safe=False)
        missing = ~_valid(values)
        return _values(values, np.float64, np.nan), (missing if not nullable else np.zeros(n, bool))
    if pa.types.is_boolean(array.type):
        return np.full(n, np.nan), np.ones(n, bool)
    strings = _strings(array)
    try:
        values = pc.cast(strings, pa.float64())
        missing = ~_valid(values)
        return _values(values, np.float64, np.nan), (missing if not nullable else np.zeros(n, bool))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    strings = pc.utf8_trim(strings, characters=" \t\"'")
    is_null = _values(pc.is_in(pc.utf8_lower(strings), value_set=_string_array(_SPREAD_NULL_TOKENS)), bool, True)
    if not nullable:
        is_null = _values(pc.equal(strings, ""), bool, True)
    looks = _values(pc.match_substring_regex(strings, _NUMBER_RE), bool, False) & ~is_null
    out = np.full(n, np.nan)
    idx = np.flatnonzero(looks)
    if len(idx):
        subset = strings.take(pa.Array.from_buffers(pa.int64(), len(idx), [None, pa.py_buffer(idx.astype(np.int64))]))
        try:
            out[idx] = _values(pc.cast(subset, pa.float64()), np.float64, np.nan)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            for j, value in zip(idx, subset.to_pylist()):
                try:
                    out[j] = float(value)
                except (TypeError, ValueError):
                    looks[j] = False
    bad = ~looks & ~is_null if nullable else ~looks
    if nullable:
        out[is_null] = np.nan
    return out, bad


def _parse_iso_timestamps(array: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """ISO 8601 text (Z, offset, or naive = UTC) -> (Unix µs, bad)."""
    strings = _strings(array)
    for target in (pa.timestamp("us", tz="UTC"), pa.timestamp("us")):
        try:
            parsed = pc.cast(strings, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        return _values(parsed.view(pa.int64()), np.int64), ~_valid(parsed)
    # mixed forms or bad values: pandas' ISO 8601 parser (naive = UTC); bad ones become NaT
    import pandas as pd

    series = pd.Series(strings.to_pylist() if len(strings) < 1000 else strings.to_pandas(), dtype=object)
    series = series.str.strip().str.strip("\"'")
    parsed = pd.to_datetime(series, format="ISO8601", utc=True, errors="coerce")
    bad = parsed.isna().to_numpy()
    us = parsed.dt.tz_convert(None).to_numpy(dtype="datetime64[us]").view(np.int64).copy()
    us[bad] = 0
    return us, bad


def _timestamps_from_arrow(array: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A timestamp/date/text column of a parquet file or frame -> (Unix µs UTC, bad)."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_timestamp(array.type):
        # tz-aware values are stored as UTC instants; naive ones are read as UTC
        bad = ~_valid(array)
        raw = _values(array.view(pa.int64()), np.int64)
        unit = array.type.unit
        if unit == "s":
            return raw * 1_000_000, bad
        if unit == "ms":
            return raw * 1_000, bad
        if unit == "ns":
            us = raw // 1_000
            us[raw % 1_000 != 0] += 1  # keep a sub-microsecond part visible to the whole-minute rule
            return us, bad
        return raw, bad
    if pa.types.is_date(array.type):
        as_us = pc.cast(pc.cast(array, pa.timestamp("s")), pa.timestamp("us"))
        return _values(as_us.view(pa.int64()), np.int64), ~_valid(as_us)
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type) or pa.types.is_dictionary(array.type):
        return _parse_iso_timestamps(array)
    raise LoadError(f"ts_utc has type {array.type}; expected a timestamp or ISO 8601 text")


def _pair_codes(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    strings = _strings(array)
    codes = pc.index_in(strings, value_set=_PAIR_VALUES)
    if codes.null_count:
        cleaned = pc.utf8_upper(pc.utf8_trim(strings, characters=" \t\"'"))
        cleaned = pc.replace_substring(cleaned, "/", "")
        codes = pc.index_in(cleaned, value_set=_PAIR_VALUES)
    return _values(codes, np.int32, -1).astype(np.int16)


class _Lines:
    """Lazy access to the physical lines of a text buffer (only used for rejected rows)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._starts: np.ndarray | None = None

    def _index(self) -> np.ndarray:
        if self._starts is None:
            nl = np.flatnonzero(np.frombuffer(self.data, np.uint8) == 10)
            self._starts = np.r_[0, nl + 1]
        return self._starts

    def get(self, line_no: int) -> str:
        starts = self._index()
        start = int(starts[line_no - 1])
        end = int(starts[line_no]) - 1 if line_no < len(starts) else len(self.data)
        return self.data[start:end].decode("utf-8", "replace").rstrip("\r\n")


def _decode_check(data: bytes) -> bytes:
    data = data.removeprefix(b"\xef\xbb\xbf")
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            data = data.decode("utf-8", "replace").encode("utf-8")
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if b"\x00" in data:
        data = data.replace(b"\x00", b"\\x00")
    return data


def _read_delimited(
    data: bytes, names: list[str], delimiter: str, skip: int, typed: dict[str, pa.DataType]
) -> tuple[pa.Table, np.ndarray, list[tuple[int, str]]]:
    """Read delimited lines with pyarrow (multithreaded); return the table, each row's physical
    line number, and the (line, text) of lines with a wrong field count. Blank lines are ignored.

    Fast path: one read; if every line after the first `skip` has the right field count, row i is
    line skip + i + 1. Otherwise the field counts are found with numpy, the good lines are read
    again from a cleaned buffer and the bad ones are returned.
    """
    n_lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    if n_lines <= skip:
        empty = pa.schema([(n, typed.get(n, pa.string())) for n in names]).empty_table()
        return empty, np.zeros(0, np.int64), []
    invalid: list[str] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        invalid.append(row.text)
        return "skip"

    def read(buffer: bytes, skip_rows: int, handler: Callable[[pacsv.InvalidRow], str] | None) -> pa.Table:
        return pacsv.read_csv(
            io.BytesIO(buffer),
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=skip_rows, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter, quote_char=False, escape_char=False, invalid_row_handler=handler
            ),
            convert_options=pacsv.ConvertOptions(
                column_types=typed,
                null_values=[""],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )

    table = read(data, skip, on_invalid)
    if not invalid and table.num_rows == n_lines - skip:
        return table, np.arange(skip + 1, n_lines + 1, dtype=np.int64), []
    # slow path: locate the lines arrow skipped (blank) or refused (field count)
    raw = np.frombuffer(data, np.uint8)
    nl = np.flatnonzero(raw == 10)
    starts = np.r_[0, nl + 1][:n_lines]
    ends = np.r_[nl, len(data)][:n_lines]
    fields = np.bincount(np.searchsorted(nl, np.flatnonzero(raw == ord(delimiter))), minlength=n_lines)[:n_lines] + 1
    lengths = ends - starts
    body = np.arange(n_lines) >= skip
    blank = lengths == 0
    for i in np.flatnonzero((fields == 1) & ~blank & body & (lengths < 256)):
        if not data[starts[i] : ends[i]].strip():
            blank[i] = True
    good = body & ~blank & (fields == len(names))
    bad_lines = np.flatnonzero(body & ~blank & ~good)
    rejects = [(int(i) + 1, data[starts[i] : ends[i]].decode("utf-8", "replace")) for i in bad_lines]
    good_idx = np.flatnonzero(good)
    if len(good_idx) == 0:
        empty = pa.schema([(n, typed.get(n, pa.string())) for n in names]).empty_table()
        return empty, np.zeros(0, np.int64), rejects
    # runs of consecutive good lines, copied as byte ranges
    breaks = np.flatnonzero(np.diff(good_idx) != 1)
    run_first = good_idx[np.r_[0, breaks + 1]]
    run_last = good_idx[np.r_[breaks, len(good_idx) - 1]]
    clean = b"\n".join(data[starts[a] : ends[b]] for a, b in zip(run_first, run_last)) + b"\n"
    table = read(clean, 0, None)
    if table.num_rows != len(good_idx):  # pragma: no cover - would be a bug in the line accounting
        raise RuntimeError(f"line accounting failed: {table.num_rows} rows for {len(good_idx)} good lines")
    return table, good_idx.astype(np.int64) + 1, rejects


def _parse_text(source: _Source, data: bytes) -> _Rows:
    pair = source.pair
    data = _decode_check(data)
    lines = _Lines(data)
    notes: list[str] = []
    if source.fmt == "histdata":
        names = list(HISTDATA_COLUMNS)
        delimiter, skip = ";", 0
        if _header_names(_first_line(data)) is not None:
            raise LoadError(f"{source.name}: has a csv header, so it is not a HistData file; use --format csv")
    else:
        end = data.find(b"\n")
        first = (data if end < 0 else data[:end]).strip()
        names_or_none = _header_names(first)
        if names_or_none is None:
            if not data.strip():
                names_or_none = list(CSV_COLUMNS)
            else:
                raise LoadError(
                    f"{source.name}: a csv file must start with the header "
                    f"{','.join(CSV_COLUMNS)}; its first line is {first[:80].decode('utf-8', 'replace')!r}"
                )
        names = names_or_none
        delimiter, skip = ",", 1
        missing = [c for c in ("ts_utc", *PRICE_COLUMNS, "volume") if c not in names]
        if "pair" not in names and pair is None:
            missing.insert(0, "pair")
        if missing:
            raise LoadError(f"{source.name}: the header lacks the column(s) {', '.join(missing)}")
        if len(set(names)) != len(names):
            raise LoadError(f"{source.name}: the header names a column twice: {','.join(names)}")
        extra = [c for c in names if c not in CSV_COLUMNS]
        if extra:
            notes.append(f"ignored column(s) {', '.join(extra)}")
    typed = {n: pa.string() for n in names}
    fast = dict(typed)
    for n in NUMERIC_COLUMNS:
        if n in fast:
            fast[n] = pa.float64()
    try:
        table, line_no, bad_lines = _read_delimited(data, names, delimiter, skip, fast)
    except pa.ArrowInvalid:
        # a value that is not a number somewhere: read text and convert column by column
        table, line_no, bad_lines = _read_delimited(data, names, delimiter, skip, typed)
    expected = len(names)
    early = [
        (
            line,
            text,
            "unparseable_row",
            f"expected {expected} fields separated by {delimiter!r} but found {text.count(delimiter) + 1}",
        )
        for line, text in bad_lines
    ]
    n = table.num_rows
    columns = {name: table[name] for name in names}
    if source.fmt == "histdata":
        ts_text = _strings(columns["ts_utc"])
        parsed = pc.strptime(ts_text, format="%Y%m%d %H%M%S", unit="us", error_is_null=True)
        if parsed.null_count:
            trimmed = pc.utf8_trim_whitespace(ts_text)
            parsed = pc.strptime(trimmed, format="%Y%m%d %H%M%S", unit="us", error_is_null=True)
        ts_bad = ~_valid(parsed)
        ts_us = _values(parsed.view(pa.int64()), np.int64) + HISTDATA_UTC_OFFSET_US
        pair_code = np.full(n, PAIRS.index(pair), np.int16) if pair else np.full(n, -1, np.int16)
    else:
        ts_us, ts_bad = _parse_iso_timestamps(columns["ts_utc"])
        pair_code = _pair_codes(columns["pair"]) if "pair" in columns else np.full(n, PAIRS.index(pair or ""), np.int16)
    values, field_bad = _numeric_columns(columns, n)

    rows = _Rows(
        line=line_no,
        pair_code=pair_code,
        ts_us=ts_us,
        ts_bad=ts_bad,
        values=values,
        field_bad=field_bad,
        text=functools.partial(_cell_text, columns, pair),
        raw_text=lambda i: lines.get(int(line_no[i])),
        early_rejects=early,
        notes=notes,
    )
    if source.fmt == "csv" and source.only_pair is not None and "pair" in columns:
        _keep_pair(rows, source.only_pair)
    return rows


def _numeric_columns(
    columns: dict[str, pa.ChunkedArray | pa.Array], n: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    values: dict[str, np.ndarray] = {}
    field_bad = np.zeros(n, np.int8)
    for k, name in enumerate(NUMERIC_COLUMNS):
        if name not in columns:
            values[name] = np.full(n, np.nan)
            if name != "spread":
                field_bad[field_bad == 0] = k + 1
            continue
        vals, bad = _to_float(columns[name], nullable=name == "spread")
        if name == "volume":
            with np.errstate(invalid="ignore"):
                bad = bad | ~np.isfinite(vals) | (np.floor(vals) != vals) | (np.abs(vals) >= 2.0**63)
        if name == "spread":
            vals = np.where(np.isnan(vals), np.nan, vals)
        values[name] = vals
        field_bad[(field_bad == 0) & bad] = k + 1
    return values, field_bad


def _keep_pair(rows: _Rows, pair: str) -> None:
    """--pair on a file with a pair column: drop the rows of the other (known) pairs."""
    other = (rows.pair_code >= 0) & (rows.pair_code != PAIRS.index(pair))
    if not other.any():
        return
    keep = np.flatnonzero(~other)
    rows.skipped = int(other.sum())
    old_text, old_raw = rows.text, rows.raw_text
    rows.line = rows.line[keep]
    rows.pair_code = rows.pair_code[keep]
    rows.ts_us = rows.ts_us[keep]
    rows.ts_bad = rows.ts_bad[keep]
    rows.values = {k: v[keep] for k, v in rows.values.items()}
    rows.field_bad = rows.field_bad[keep]
    rows.text = lambda column, i: old_text(column, int(keep[i]))
    rows.raw_text = lambda i: old_raw(int(keep[i]))


def _json_value(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date)):  # pandas' Timestamp is a datetime
        return value.isoformat()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _parse_table(name: str, table: pa.Table, pair: str | None, fmt: str, only_pair: str | None = None) -> _Rows:
    """A parquet file or a DataFrame (as an arrow table) with the csv's columns."""
    lower = {c.lower(): c for c in table.column_names}
    missing = [c for c in ("ts_utc", *PRICE_COLUMNS, "volume") if c not in lower]
    if "pair" not in lower and pair is None:
        missing.insert(0, "pair")
    if missing:
        raise LoadError(f"{name}: the {fmt} lacks the column(s) {', '.join(missing)}")
    notes = []
    extra = [c for c in table.column_names if c.lower() not in CSV_COLUMNS and not c.startswith("__index_level_")]
    if extra:
        notes.append(f"ignored column(s) {', '.join(extra)}")
    columns = {c: table[lower[c]] for c in CSV_COLUMNS if c in lower}
    n = table.num_rows
    try:
        ts_us, ts_bad = _timestamps_from_arrow(columns["ts_utc"])
    except LoadError as err:
        raise LoadError(f"{name}: {err}") from err
    pair_code = _pair_codes(columns["pair"]) if "pair" in columns else np.full(n, PAIRS.index(pair or ""), np.int16)
    values, field_bad = _numeric_columns(columns, n)

    def raw_text(i: int) -> str:
        row = {c: _json_value(table[c][i].as_py()) for c in table.column_names}
        return json.dumps(row, allow_nan=False)

    rows = _Rows(
        line=np.arange(1, n + 1, dtype=np.int64),
        pair_code=pair_code,
        ts_us=ts_us,
        ts_bad=ts_bad,
        values=values,
        field_bad=field_bad,
        text=functools.partial(_cell_text, columns, pair),
        raw_text=raw_text,
        early_rejects=[],
        notes=notes,
    )
    if only_pair is not None and "pair" in columns:
        _keep_pair(rows, only_pair)
    return rows


def _parse_source(source: _Source) -> _Rows:
    try:
        data = source.read()
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise LoadError(f"{source.name}: cannot read it ({err})") from err
    if source.fmt == "parquet":
        try:
            # ParquetFile.read without pandas metadata: read_table would import pandas
            table = pq.ParquetFile(io.BytesIO(data)).read(use_pandas_metadata=False)
        except (pa.ArrowInvalid, OSError) as err:
            raise LoadError(f"{source.name}: not a readable parquet file ({err})") from err
        return _parse_table(source.name, table, source.pair, "parquet", source.only_pair)
    return _parse_text(source, data)


# --------------------------------------------------------------------------------------------
# validation


@dataclass
class _Checked:
    good: np.ndarray  # row indices to load, sorted by (pair, ts_utc)
    reason: np.ndarray  # int8 per row, 0 = good
    dup_of: np.ndarray  # int64 per row: the line of the kept occurrence (duplicates only)


def _check(rows: _Rows) -> _Checked:
    n = rows.n
    reason = np.zeros(n, np.int8)

    def mark(mask: np.ndarray, name: str) -> None:
        reason[(reason == 0) & mask] = _CODE[name]

    v = rows.values
    o, h, lo, c, vol, spread = (v[k] for k in NUMERIC_COLUMNS)
    with np.errstate(invalid="ignore"):
        mark(rows.field_bad > 0, "unparseable_row")
        mark(rows.pair_code < 0, "unknown_pair")
        mark(rows.ts_bad, "bad_timestamp")
        mark(rows.ts_us % _MINUTE_US != 0, "not_whole_minute")
        mark(~(np.isfinite(o) & np.isfinite(h) & np.isfinite(lo) & np.isfinite(c)), "non_finite_price")
        mark((o <= 0) | (h <= 0) | (lo <= 0) | (c <= 0), "non_positive_price")
        mark((lo > np.minimum(o, c)) | (h < np.maximum(o, c)) | (lo > h), "high_low_inconsistent")
        mark(vol < 0, "negative_volume")
        mark(np.isinf(spread), "non_finite_spread")
        mark(spread < 0, "negative_spread")
    ok = np.flatnonzero(reason == 0)
    key = (rows.pair_code[ok].astype(np.int64) << 40) | (rows.ts_us[ok] // _MINUTE_US + (1 << 39))
    order = np.argsort(key, kind="stable")  # stable: the earliest line of a key comes first
    sorted_key = key[order]
    repeat = np.zeros(len(ok), bool)
    repeat[1:] = sorted_key[1:] == sorted_key[:-1]
    dup_of = np.zeros(n, np.int64)
    if repeat.any():
        group_start = np.maximum.accumulate(np.where(repeat, 0, np.arange(len(ok))))
        dup_rows = ok[order[repeat]]
        reason[dup_rows] = _CODE["duplicate_in_file"]
        dup_of[dup_rows] = rows.line[ok[order[group_start[repeat]]]]
    return _Checked(good=ok[order[~repeat]], reason=reason, dup_of=dup_of)


def _fmt_ts(us: int) -> str:
    stamp = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=int(us))
    return stamp.isoformat(sep=" ").replace("+00:00", " UTC")


def _num(x: float) -> str:
    return repr(float(x)) if math.isfinite(x) else str(float(x))


def _explain(rows: _Rows, i: int, code: str, dup_line: int, fmt: str) -> str:
    v = rows.values
    if code == "unparseable_row":
        name = NUMERIC_COLUMNS[int(rows.field_bad[i]) - 1]
        raw = rows.text(name, i)
        if raw is None or str(raw).strip() == "":
            return f"{name} is missing"
        if name == "volume":
            return f"volume {raw!r} is not a whole number"
        return f"{name} {raw!r} is not a number"
    if code == "unknown_pair":
        raw = rows.text("pair", i)
        if raw is None or not raw.strip():
            return "pair is missing"
        hint = ""
        if raw:
            cleaned = raw.strip().upper()
            if len(cleaned) == 6 and cleaned[3:] + cleaned[:3] in PAIRS:
                hint = f" (the market quotes it as {cleaned[3:] + cleaned[:3]})"
        return f"pair {raw!r} is not one of the 28 pairs{hint}"
    if code == "bad_timestamp":
        raw = rows.text("ts_utc", i)
        want = "'YYYYMMDD HHMMSS' (EST, UTC-5)" if fmt == "histdata" else "an ISO 8601 timestamp"
        return f"ts_utc {raw!r} is not {want}"
    if code == "not_whole_minute":
        return f"ts_utc {_fmt_ts(rows.ts_us[i])} is not a whole minute (bars open on the minute)"
    prices = ", ".join(f"{k} {_num(v[k][i])}" for k in PRICE_COLUMNS)
    if code == "non_finite_price":
        return f"every price must be a finite number; got {prices}"
    if code == "non_positive_price":
        return f"every price must be > 0; got {prices}"
    if code == "high_low_inconsistent":
        return f"need low <= open, close <= high; got {prices}"
    if code == "negative_volume":
        return f"volume {int(v['volume'][i])} is negative"
    if code in ("negative_spread", "non_finite_spread"):
        return f"spread {_num(v['spread'][i])} must be a finite number >= 0 (or empty)"
    if code == "duplicate_in_file":
        return (
            f"{PAIRS[rows.pair_code[i]]} at {_fmt_ts(rows.ts_us[i])} already appeared on line {dup_line}; "
            "the first occurrence is kept"
        )
    return REASONS[code]


def _clean_text(value: str | None) -> str | None:
    return None if value is None else value.replace("\x00", "\\x00")


def _reject_records(source_name: str, rows: _Rows, checked: _Checked, fmt: str) -> list[tuple]:
    what = "row" if fmt in ("parquet", "frame") else "line"
    records = []
    for line, text, code, explanation in rows.early_rejects:
        detail = f"{source_name}, {what} {line}: {code}: {explanation}"
        records.append((source_name, line, _clean_text(text), None, None, code, detail))
    for i in np.flatnonzero(checked.reason):
        code = _REASON_BY_CODE[int(checked.reason[i])]
        line = int(rows.line[i])
        detail = f"{source_name}, {what} {line}: {code}: {_explain(rows, i, code, int(checked.dup_of[i]), fmt)}"
        pair_text, ts_text = rows.text("pair", i), rows.text("ts_utc", i)
        records.append(
            (
                source_name,
                line,
                _clean_text(rows.raw_text(i)),
                _clean_text(pair_text),
                _clean_text(ts_text),
                code,
                detail,
            )
        )
    records.sort(key=lambda r: r[1])
    return records


# --------------------------------------------------------------------------------------------
# writing


_COLUMNS_SQL = "pair, ts_utc, open, high, low, close, volume, spread"


def _binary_copy_chunks(rows: _Rows, index: np.ndarray, source_file: str | None) -> Iterator[bytes | memoryview]:
    """PostgreSQL binary COPY of the given rows (pair, ts_utc, prices, volume, spread[, source_file]),
    built with numpy structured arrays: fixed-width records, one layout with spread, one without."""
    yield b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
    src = source_file.encode("utf-8") if source_file is not None else None
    n_fields = 8 + (src is not None)
    base = [("nf", ">i2"), ("l_pair", ">i4"), ("pair", "S6"), ("l_ts", ">i4"), ("ts", ">i8")]
    for k in ("open", "high", "low", "close"):
        base += [(f"l_{k}", ">i4"), (k, ">f8")]
    base += [("l_volume", ">i4"), ("volume", ">i8")]
    tail = [("l_src", ">i4"), ("src", f"S{len(src)}")] if src else []
    with_spread = np.dtype([*base, ("l_spread", ">i4"), ("spread", ">f8"), *tail])
    null_spread = np.dtype([*base, ("l_spread", ">i4"), *tail])
    has_spread = ~np.isnan(rows.values["spread"][index])
    for dtype, part in ((with_spread, index[has_spread]), (null_spread, index[~has_spread])):
        if len(part) == 0:
            continue
        # one buffer per layout, its constant fields (counts and lengths) written once
        buffer = np.empty(min(len(part), _COPY_CHUNK_ROWS), dtype)
        buffer["nf"] = n_fields
        for name in ("l_pair", "l_ts", "l_open", "l_high", "l_low", "l_close", "l_volume", "l_spread"):
            buffer[name] = 6 if name == "l_pair" else 8
        if dtype is null_spread:
            buffer["l_spread"] = -1
        if src is not None:
            buffer["l_src"] = len(src)
            buffer["src"] = src
        contiguous = bool(part[-1] - part[0] == len(part) - 1 and np.all(np.diff(part) == 1))
        for start in range(0, len(part), _COPY_CHUNK_ROWS):
            if contiguous:
                lo = int(part[0]) + start
                chunk: slice | np.ndarray = slice(lo, min(lo + _COPY_CHUNK_ROWS, int(part[-1]) + 1))
            else:
                chunk = part[start : start + _COPY_CHUNK_ROWS]
            rec = buffer[: len(rows.ts_us[chunk])]
            rec["pair"] = _PAIR_BYTES[rows.pair_code[chunk]]
            rec["ts"] = rows.ts_us[chunk] - _PG_EPOCH_US
            for k in ("open", "high", "low", "close"):
                rec[k] = rows.values[k][chunk]
            rec["volume"] = rows.values["volume"][chunk]
            if dtype is with_spread:
                rec["spread"] = rows.values["spread"][chunk]
            yield rec.data  # the consumer sends it before the buffer is refilled
    yield b"\xff\xff"


def _copy(cur: psycopg.Cursor, statement: str, chunks: Iterator[bytes | memoryview]) -> None:
    with cur.copy(statement) as copy:
        for chunk in chunks:
            copy.write(chunk)


def _any_stored(cur: psycopg.Cursor, pair_codes: np.ndarray, lo_us: int, hi_us: int) -> bool:
    pairs = [PAIRS[c] for c in np.unique(pair_codes)]
    row = cur.execute(
        "select exists (select 1 from raw.m1_bars where pair = any(%s) and ts_utc >= %s and ts_utc <= %s)",
        (pairs, _to_datetime(lo_us), _to_datetime(hi_us)),
    ).fetchone()
    return bool(row and row[0])


def _to_datetime(us: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=int(us))


_STAGE_SQL = """
create temp table bqx_load_stage (
    pair text, ts_utc timestamptz, open float8, high float8, low float8, close float8,
    volume int8, spread float8
) on commit drop
"""

_DIFF_SQL = """
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

_HISTORY_SQL = """
insert into raw.m1_bars_history (
    pair, ts_utc, open, high, low, close, volume, spread, loaded_at, source_file, replaced_at, replaced_by_file
)
select
    pair, ts_utc, old_open, old_high, old_low, old_close, old_volume, old_spread, old_loaded_at,
    old_source_file, now(), %(file)s
from bqx_load_diff
where not is_new
"""

_UPDATE_SQL = """
update raw.m1_bars as b
set open = d.open, high = d.high, low = d.low, close = d.close, volume = d.volume, spread = d.spread,
    loaded_at = now(), source_file = %(file)s
from bqx_load_diff as d
where not d.is_new and b.pair = d.pair and b.ts_utc = d.ts_utc and b.ts_utc >= %(lo)s and b.ts_utc <= %(hi)s
"""

_INSERT_SQL = f"""
insert into raw.m1_bars ({_COLUMNS_SQL}, source_file)
select {_COLUMNS_SQL}, %(file)s from bqx_load_diff where is_new order by pair, ts_utc
"""


def _month_numbers(ts_us: np.ndarray) -> np.ndarray:
    """Months since 1970-01 (UTC) of Unix-microsecond timestamps."""
    return ts_us.astype("datetime64[us]").astype("datetime64[M]").astype(np.int64)


def _month_date(number: int) -> dt.date:
    return dt.date(1970 + number // 12, number % 12 + 1, 1)


def _merge_staged(cur: psycopg.Cursor, rows: _Rows, part: np.ndarray, source_name: str) -> tuple[int, int]:
    """Merge rows whose keys may exist already; return (new, replaced)."""
    lo_us, hi_us = int(rows.ts_us[part].min()), int(rows.ts_us[part].max())
    params = {"file": source_name, "lo": _to_datetime(lo_us), "hi": _to_datetime(hi_us)}
    cur.execute(_STAGE_SQL)
    _copy(
        cur,
        f"copy bqx_load_stage ({_COLUMNS_SQL}) from stdin (format binary)",
        _binary_copy_chunks(rows, part, None),
    )
    # no ANALYZE: the planner's estimate from the table's size picks the right join (measured)
    cur.execute(_DIFF_SQL, params)
    cur.execute(_HISTORY_SQL, params)
    replaced = cur.rowcount
    cur.execute(_UPDATE_SQL, params)
    if cur.rowcount != replaced:  # pragma: no cover - another session changed the rows meanwhile
        raise errors.SerializationFailure("bars changed during the load")
    cur.execute(_INSERT_SQL, params)
    new = cur.rowcount
    cur.execute("drop table bqx_load_diff; drop table bqx_load_stage")
    return new, replaced


def _write_bars(
    conn: psycopg.Connection, rows: _Rows, good: np.ndarray, source_name: str, *, cautious: bool
) -> tuple[int, int, int]:
    """Write the good rows in the caller's transaction; return (new, replaced, unchanged).

    Three paths, chosen per month of the file:
      - a month without a partition: a new table filled by COPY, indexed, then attached;
      - a month whose partition holds no bar of the file's pairs in the file's time range: COPY
        straight into raw.m1_bars;
      - otherwise: COPY into a temporary table and merge (new, unchanged, replaced) in SQL.
    `cautious` (a retry after a concurrent session got in the way) merges everything.
    """
    if len(good) == 0:
        return 0, 0, 0
    cur = conn.cursor()
    month_of = _month_numbers(rows.ts_us[good])
    months = np.unique(month_of)
    if cautious:
        ensure_month_partitions(conn, [_month_date(int(m)) for m in months])
        new, replaced = _merge_staged(cur, rows, good, source_name)
        return new, replaced, len(good) - new - replaced
    have = existing_partitions(conn)
    fresh = [int(m) for m in months if partition_name(_month_date(int(m))) not in have]
    if fresh:
        # one creator of partitions at a time; another may have made some while we waited
        lock_partitions(conn)
        have = existing_partitions(conn)
        fresh = [m for m in fresh if partition_name(_month_date(m)) not in have]
    new = replaced = 0
    for m in fresh:
        month = _month_date(m)
        part = good[month_of == m]
        table = create_detached_month(conn, month)
        _copy(
            cur,
            # freeze: the new table was created in this (sub)transaction, so its rows can be written
            # frozen and all-visible; the first reader then does not rewrite every page for hint bits
            f"copy {table} ({_COLUMNS_SQL}, source_file) from stdin (format binary, freeze)",
            _binary_copy_chunks(rows, part, source_name),
        )
        attach_month(conn, month)
        new += len(part)
    rest = good[~np.isin(month_of, fresh)] if fresh else good
    if len(rest):
        lo_us, hi_us = int(rows.ts_us[rest].min()), int(rows.ts_us[rest].max())
        if not _any_stored(cur, rows.pair_code[rest], lo_us, hi_us):
            _copy(
                cur,
                f"copy raw.m1_bars ({_COLUMNS_SQL}, source_file) from stdin (format binary)",
                _binary_copy_chunks(rows, rest, source_name),
            )
            new += len(rest)
        else:
            merged_new, replaced = _merge_staged(cur, rows, rest, source_name)
            new += merged_new
    return new, replaced, len(good) - new - replaced


def _write_rejects(conn: psycopg.Connection, records: list[tuple]) -> None:
    if not records:
        return
    with conn.cursor() as cur, cur.copy(
        "copy raw.m1_rejects (source_file, line_number, raw_text, pair, ts_utc, reason, detail) from stdin"
    ) as copy:
        for record in records:
            copy.write_row(record)


# errors that mean another session was loading the same bars or months at the same time
_CONCURRENT = (
    errors.UniqueViolation,
    errors.DuplicateTable,
    errors.SerializationFailure,
    errors.DeadlockDetected,
    errors.InvalidObjectDefinition,  # "partition would overlap"
)


def _load_rows(conn: psycopg.Connection, rows: _Rows, source_name: str, fmt: str, started: float) -> FileSummary:
    started_at = dt.datetime.now(dt.UTC)
    checked = _check(rows)
    records = _reject_records(source_name, rows, checked, fmt)
    rows_read = rows.n + len(rows.early_rejects) + rows.skipped
    for attempt in range(3):
        try:
            with conn.transaction():
                new, replaced, unchanged = _write_bars(conn, rows, checked.good, source_name, cautious=attempt > 0)
                _write_rejects(conn, records)
                conn.execute(
                    "insert into raw.load_log (file, format, started_at, finished_at, rows_read, rows_loaded, "
                    "rows_unchanged, rows_replaced, rows_rejected) "
                    "values (%s, %s, %s, clock_timestamp(), %s, %s, %s, %s, %s)",
                    (source_name, fmt, started_at, rows_read, new, unchanged, replaced, len(records)),
                )
            break
        except _CONCURRENT:
            # another session loaded some of these bars or months meanwhile: retry, merging
            if attempt == 2:
                raise
    by_reason = Counter(r[5] for r in records)
    return FileSummary(
        file=source_name,
        format=fmt,
        rows_read=rows_read,
        rows_loaded=new,
        rows_replaced=replaced,
        rows_unchanged=unchanged,
        rows_rejected=len(records),
        rows_skipped=rows.skipped,
        rejected_by_reason={name: by_reason[name] for name in REASONS if by_reason[name]},
        seconds=time.perf_counter() - started,
        notes=rows.notes,
    )


# --------------------------------------------------------------------------------------------
# public API


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
    pair = _normalise_pair(pair)
    if not paths:
        raise LoadError("no PATH given: name files or directories of bars to load")
    sources = _sources([Path(p) for p in paths], fmt, pair)
    summaries: list[FileSummary] = []
    with psycopg.connect(dsn) as conn:
        with conn.transaction():
            ensure_raw_schema(conn)
        show = progress if progress is not None else len(sources) > 1
        iterator: Sequence[_Source] | Iterator[_Source] = sources
        bar = None
        if show:
            from tqdm import tqdm

            bar = tqdm(sources, unit="file", desc="bqx load", file=sys.stderr)
            iterator = bar
        for source in iterator:
            started = time.perf_counter()
            rows = _parse_source(source)
            summary = _load_rows(conn, rows, source.name, source.fmt, started)
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
    rows = _parse_table(source_name, table, None, "frame")
    if isinstance(conn_or_dsn, str):
        with psycopg.connect(conn_or_dsn) as conn:
            with conn.transaction():
                ensure_raw_schema(conn)
            summary = _load_rows(conn, rows, source_name, "frame", t0)
    else:
        with conn_or_dsn.transaction():
            ensure_raw_schema(conn_or_dsn)
        summary = _load_rows(conn_or_dsn, rows, source_name, "frame", t0)
    return LoadSummary(files=[summary], seconds=time.perf_counter() - t0)
