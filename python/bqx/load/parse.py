"""Every format to the same columns: a file's candidate rows as NumPy arrays (`ParsedRows`).

Nothing is rejected here except lines that cannot be split into the format's fields; what a
value means (a bad number, an unknown pair, a timestamp that is not one) is marked per row for
the rules (bqx.load.rules) to name.

    csv       header `pair,ts_utc,open,high,low,close,volume,spread` (any order; `spread` may be
              absent; `pair` may be absent when `--pair` or the file name gives it; other columns
              are ignored and named in the summary). `ts_utc` is ISO 8601 with `Z` or an offset,
              or naive (= UTC).
    histdata  HistData.com "ASCII M1": `YYYYMMDD HHMMSS;open;high;low;close;volume`, no header,
              times in EST without daylight saving (fixed UTC-5, so ts_utc = time + 5 h); the pair
              comes from `--pair` or the file name (e.g. DAT_ASCII_EURUSD_M1_202407.csv); spread
              is null.
    parquet   the csv's columns; `ts_utc` a timestamp (naive = UTC) or ISO text.

Text is read by pyarrow (multithreaded) and converted to NumPy through arrow's buffers:
pyarrow's own conversions (to_numpy with nulls, fill_null with a Python scalar) import pandas,
which costs half a second at start-up.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from bqx.bar_formats import (
    BAR_COLUMNS,
    CSV_HEADER,
    HISTDATA_COLUMNS,
    HISTDATA_DELIMITER,
    HISTDATA_TIMESTAMP_FORMAT,
    HISTDATA_UTC_OFFSET_US,
    NUMBER_COLUMNS,
    REQUIRED_COLUMNS,
)
from bqx.load.errors import FileSkipped
from bqx.load.sources import BarSource, first_line, header_fields, header_names
from bqx.pairs import PAIRS


def arrow_string_array(values: Sequence[str]) -> pa.Array:
    """pa.array(values) built from buffers: pa.array would import pandas (half a second)."""
    encoded = [v.encode("utf-8") for v in values]
    offsets = np.cumsum([0, *map(len, encoded)], dtype=np.int32)
    return pa.StringArray.from_buffers(len(encoded), pa.py_buffer(offsets.tobytes()), pa.py_buffer(b"".join(encoded)))


PAIR_NAMES = arrow_string_array(PAIRS)
SPREAD_NULL_TOKENS = arrow_string_array(("", "na", "n/a", "nan", "null", "none", "-nan"))
NUMBER_PATTERN = (
    r"^[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|[iI][nN][fF]([iI][nN][iI][tT][yY])?|[nN][aA][nN])$"
)


@dataclass
class ParsedRows:
    """Candidate rows of one source, columns as numpy arrays of length n."""

    line: np.ndarray  # int64, 1-based physical line (parquet/frames: row index + 1)
    pair_code: np.ndarray  # int16 index into PAIRS, -1 unknown
    ts_us: np.ndarray  # int64 Unix microseconds UTC (meaningless where ts_bad)
    ts_bad: np.ndarray  # bool
    numbers: dict[str, np.ndarray]  # open high low close volume spread as float64 (spread NaN = null)
    first_bad_number: np.ndarray  # int8: 0 fine, else 1 + index in NUMBER_COLUMNS of the first bad one
    cell_text: Callable[[str, int], str | None]  # the value as written of a column at row i
    row_text: Callable[[int], str]  # the row as written (a line, or the row as JSON)
    unsplit_lines: list[tuple[int, str, str, str]]  # (line, text, reason, detail): lines not in the arrays
    rows_of_other_pairs: int = 0  # skipped because of --pair
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.line)


# --------------------------------------------------------------------------------------------
# arrow columns -> numpy


def cell_as_written(columns: dict[str, pa.ChunkedArray], pair: str | None, column: str, i: int) -> str | None:
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


def single_chunk(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def unpack_bitmap(buffer: pa.Buffer | None, offset: int, n: int) -> np.ndarray:
    """An arrow bitmap (validity or boolean values) as a numpy bool array."""
    if buffer is None or n == 0:
        return np.zeros(n, bool)
    return np.unpackbits(np.frombuffer(buffer, np.uint8), bitorder="little")[offset : offset + n].astype(bool)


def not_null(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """True where the value is not null."""
    array = single_chunk(array)
    if array.null_count == 0:
        return np.ones(len(array), bool)
    return unpack_bitmap(array.buffers()[0], array.offset, len(array))


def fixed_width_numpy(array: pa.Array | pa.ChunkedArray, dtype: type, fill: object = 0) -> np.ndarray:
    """A fixed-width array (numbers, timestamps, booleans) as numpy, nulls replaced by `fill`: a
    read-only view of arrow's buffer when there is no null, else a copy."""
    array = single_chunk(array)
    n = len(array)
    if n == 0:
        return np.zeros(0, dtype)
    if pa.types.is_boolean(array.type):
        out = unpack_bitmap(array.buffers()[1], array.offset, n).astype(dtype)
    else:
        itemsize = np.dtype(dtype).itemsize
        if array.type.byte_width != itemsize:  # pragma: no cover - a caller's mistake
            raise TypeError(f"{array.type} is not {np.dtype(dtype)}")
        out = np.frombuffer(array.buffers()[1], dtype=dtype, count=n, offset=array.offset * itemsize)
        if not array.null_count:
            return out
        out = out.copy()
    if array.null_count:
        out[~not_null(array)] = fill
    return out


def is_text(data_type: pa.DataType) -> bool:
    if pa.types.is_dictionary(data_type):
        return is_text(data_type.value_type)
    return pa.types.is_string(data_type) or pa.types.is_large_string(data_type)


def is_number(data_type: pa.DataType) -> bool:
    return (
        pa.types.is_integer(data_type)
        or pa.types.is_floating(data_type)
        or pa.types.is_decimal(data_type)
        or pa.types.is_null(data_type)
        or pa.types.is_boolean(data_type)  # read, then rejected per row as not a number
    )


def check_column_types(columns: dict[str, pa.ChunkedArray | pa.Array]) -> None:
    """A column of another type than the rules can judge per row (a list, a struct, binary) makes
    the whole file unreadable: FileSkipped naming the column and its type."""
    for name, column in columns.items():
        data_type = column.type
        if name == "ts_utc":
            fits = pa.types.is_timestamp(data_type) or pa.types.is_date(data_type) or is_text(data_type)
            expected = "a timestamp or ISO 8601 text"
        elif name == "pair":
            fits, expected = is_text(data_type) or pa.types.is_null(data_type), "text"
        else:
            fits, expected = is_number(data_type) or is_text(data_type), "numbers"
        if not fits:
            raise FileSkipped(f"column {name} has type {data_type}; expected {expected}")


def as_strings(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    array = single_chunk(array)
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if not pa.types.is_string(array.type):
        array = pc.cast(array, pa.string())
    return array


def parse_numbers(array: pa.Array | pa.ChunkedArray, *, nullable: bool) -> tuple[np.ndarray, np.ndarray]:
    """float64 values (NaN where null) and a `bad` mask (not a number, or missing when not nullable)."""
    array = single_chunk(array)
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    n = len(array)
    if pa.types.is_null(array.type):
        return np.full(n, np.nan), np.full(n, not nullable)
    if pa.types.is_integer(array.type) or pa.types.is_floating(array.type) or pa.types.is_decimal(array.type):
        values = pc.cast(array, pa.float64(), safe=False)
        missing = ~not_null(values)
        return fixed_width_numpy(values, np.float64, np.nan), (missing if not nullable else np.zeros(n, bool))
    if pa.types.is_boolean(array.type):
        return np.full(n, np.nan), np.ones(n, bool)
    strings = as_strings(array)
    try:
        values = pc.cast(strings, pa.float64())
        missing = ~not_null(values)
        return fixed_width_numpy(values, np.float64, np.nan), (missing if not nullable else np.zeros(n, bool))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    strings = pc.utf8_trim(strings, characters=" \t\"'")
    is_null = fixed_width_numpy(pc.is_in(pc.utf8_lower(strings), value_set=SPREAD_NULL_TOKENS), bool, True)
    if not nullable:
        is_null = fixed_width_numpy(pc.equal(strings, ""), bool, True)
    looks = fixed_width_numpy(pc.match_substring_regex(strings, NUMBER_PATTERN), bool, False) & ~is_null
    out = np.full(n, np.nan)
    idx = np.flatnonzero(looks)
    if len(idx):
        subset = strings.take(pa.Array.from_buffers(pa.int64(), len(idx), [None, pa.py_buffer(idx.astype(np.int64))]))
        try:
            out[idx] = fixed_width_numpy(pc.cast(subset, pa.float64()), np.float64, np.nan)
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


def parse_iso_timestamps(array: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """ISO 8601 text (Z, offset, or naive = UTC) -> (Unix µs, bad)."""
    strings = as_strings(array)
    for target in (pa.timestamp("us", tz="UTC"), pa.timestamp("us")):
        try:
            parsed = pc.cast(strings, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        return fixed_width_numpy(parsed.view(pa.int64()), np.int64), ~not_null(parsed)
    # mixed forms or bad values: pandas' ISO 8601 parser (naive = UTC); bad ones become NaT
    import pandas as pd

    series = pd.Series(strings.to_pylist() if len(strings) < 1000 else strings.to_pandas(), dtype=object)
    series = series.str.strip().str.strip("\"'")
    parsed = pd.to_datetime(series, format="ISO8601", utc=True, errors="coerce")
    bad = parsed.isna().to_numpy()
    us = parsed.dt.tz_convert(None).to_numpy(dtype="datetime64[us]").view(np.int64).copy()
    us[bad] = 0
    # pandas' nanoseconds end in 1677 and 2262: arrow reads years 0001..9999 one by one, so that
    # such a year is judged by the timestamp rules rather than called unreadable
    for i in np.flatnonzero(bad):
        text = series.iloc[i]
        for target in (pa.timestamp("us", tz="UTC"), pa.timestamp("us")):
            try:
                one = pc.cast(arrow_string_array([text]), target)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError, AttributeError):
                continue
            us[i], bad[i] = int(one.view(pa.int64())[0].as_py()), False
            break
    return us, bad


def timestamps_us(array: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A timestamp/date/text column of a parquet file or frame -> (Unix µs UTC, bad)."""
    array = single_chunk(array)
    if pa.types.is_timestamp(array.type):
        # tz-aware values are stored as UTC instants; naive ones are read as UTC
        bad = ~not_null(array)
        raw = fixed_width_numpy(array.view(pa.int64()), np.int64)
        unit = array.type.unit
        if unit in ("s", "ms"):
            scale = 1_000_000 if unit == "s" else 1_000
            overflow = np.abs(raw) > np.iinfo(np.int64).max // scale  # would wrap around in µs
            return np.where(overflow, 0, raw) * scale, bad | overflow
        if unit == "ns":
            us = raw // 1_000
            us[raw % 1_000 != 0] += 1  # keep a sub-microsecond part visible to the whole-minute rule
            return us, bad
        return raw, bad
    if pa.types.is_date(array.type):
        as_us = pc.cast(pc.cast(array, pa.timestamp("s")), pa.timestamp("us"))
        return fixed_width_numpy(as_us.view(pa.int64()), np.int64), ~not_null(as_us)
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type) or pa.types.is_dictionary(array.type):
        return parse_iso_timestamps(array)
    raise FileSkipped(f"column ts_utc has type {array.type}; expected a timestamp or ISO 8601 text")


def pair_codes(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Index into PAIRS of each value (case, blanks, quotes and a slash forgiven); -1 unknown."""
    strings = as_strings(array)
    codes = pc.index_in(strings, value_set=PAIR_NAMES)
    if codes.null_count:
        cleaned = pc.utf8_upper(pc.utf8_trim(strings, characters=" \t\"'"))
        cleaned = pc.replace_substring(cleaned, "/", "")
        codes = pc.index_in(cleaned, value_set=PAIR_NAMES)
    return fixed_width_numpy(codes, np.int32, -1).astype(np.int16)


def number_columns(columns: dict[str, pa.ChunkedArray | pa.Array], n: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The numbers of every row as float64, and per row 1 + the index of its first bad number."""
    numbers: dict[str, np.ndarray] = {}
    first_bad = np.zeros(n, np.int8)
    for k, name in enumerate(NUMBER_COLUMNS):
        if name not in columns:
            numbers[name] = np.full(n, np.nan)
            if name != "spread":
                first_bad[first_bad == 0] = k + 1
            continue
        values, bad = parse_numbers(columns[name], nullable=name == "spread")
        if name == "volume":
            with np.errstate(invalid="ignore"):
                bad = bad | ~np.isfinite(values) | (np.floor(values) != values) | (np.abs(values) >= 2.0**63)
        if name == "spread":
            values = np.where(np.isnan(values), np.nan, values)
        numbers[name] = values
        first_bad[(first_bad == 0) & bad] = k + 1
    return numbers, first_bad


def keep_only_pair(rows: ParsedRows, pair: str) -> None:
    """--pair on a file with a pair column: drop the rows of the other (known) pairs."""
    other = (rows.pair_code >= 0) & (rows.pair_code != PAIRS.index(pair))
    if not other.any():
        return
    keep = np.flatnonzero(~other)
    rows.rows_of_other_pairs = int(other.sum())
    cell_text, row_text = rows.cell_text, rows.row_text
    rows.line = rows.line[keep]
    rows.pair_code = rows.pair_code[keep]
    rows.ts_us = rows.ts_us[keep]
    rows.ts_bad = rows.ts_bad[keep]
    rows.numbers = {k: v[keep] for k, v in rows.numbers.items()}
    rows.first_bad_number = rows.first_bad_number[keep]
    rows.cell_text = lambda column, i: cell_text(column, int(keep[i]))
    rows.row_text = lambda i: row_text(int(keep[i]))


def assemble_rows(
    columns: dict[str, pa.ChunkedArray],
    pair: str | None,
    only_pair: str | None,
    line: np.ndarray,
    ts_us: np.ndarray,
    ts_bad: np.ndarray,
    row_text: Callable[[int], str],
    unsplit_lines: list[tuple[int, str, str, str]],
    notes: list[str],
) -> ParsedRows:
    """The ParsedRows of a file's columns once its timestamps are parsed: pairs (from the pair
    column, else the file's pair) and numbers converted, rows of other pairs dropped (--pair)."""
    n = len(line)
    if "pair" in columns:
        codes = pair_codes(columns["pair"])
    else:
        codes = np.full(n, PAIRS.index(pair) if pair else -1, np.int16)
    numbers, first_bad = number_columns(columns, n)
    rows = ParsedRows(
        line=line,
        pair_code=codes,
        ts_us=ts_us,
        ts_bad=ts_bad,
        numbers=numbers,
        first_bad_number=first_bad,
        cell_text=functools.partial(cell_as_written, columns, pair),
        row_text=row_text,
        unsplit_lines=unsplit_lines,
        notes=notes,
    )
    if only_pair is not None and "pair" in columns:
        keep_only_pair(rows, only_pair)
    return rows


# --------------------------------------------------------------------------------------------
# delimited text (csv, histdata)


class LineIndex:
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


def normalise_text(data: bytes) -> bytes:
    """UTF-8 without a byte order mark, invalid bytes replaced, \\n line ends, NUL escaped."""
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


def read_delimited(
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


def parse_text(source: BarSource, data: bytes) -> ParsedRows:
    """A csv or HistData file's rows."""
    pair = source.pair
    data = normalise_text(data)
    lines = LineIndex(data)
    notes: list[str] = []
    if source.format == "histdata":
        names = list(HISTDATA_COLUMNS)
        delimiter, skip = HISTDATA_DELIMITER, 0
        if header_names(first_line(data)) is not None:
            raise FileSkipped("has a csv header, so it is not a HistData file; use --format csv")
    else:
        end = data.find(b"\n")
        first = (data if end < 0 else data[:end]).strip()
        names_or_none = header_fields(first)
        if names_or_none is None:
            if not data.strip():
                names_or_none = list(BAR_COLUMNS)
            else:  # its first line is not quoted: it may be anything
                raise FileSkipped(f"a csv file must start with the header {CSV_HEADER}")
        names = names_or_none
        delimiter, skip = ",", 1
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if "pair" not in names and pair is None:
            missing.insert(0, "pair")
        if missing:
            raise FileSkipped(
                f"the header lacks the column(s) {', '.join(missing)} (a bar csv starts with {CSV_HEADER})"
            )
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            ours = [n for n in twice if n in BAR_COLUMNS]
            raise FileSkipped(f"the header names {'the column ' + ', '.join(ours) if ours else 'a column'} twice")
        extra = [c for c in names if c not in BAR_COLUMNS]
        if extra:
            notes.append(f"ignored column(s) {', '.join(extra)}")
    as_text = {n: pa.string() for n in names}
    as_numbers = dict(as_text)
    for n in NUMBER_COLUMNS:
        if n in as_numbers:
            as_numbers[n] = pa.float64()
    try:
        table, line_no, bad_lines = read_delimited(data, names, delimiter, skip, as_numbers)
    except pa.ArrowInvalid:
        # a value that is not a number somewhere: read text and convert column by column
        table, line_no, bad_lines = read_delimited(data, names, delimiter, skip, as_text)
    expected = len(names)
    unsplit = [
        (
            line,
            text,
            "unparseable_row",
            f"expected {expected} fields separated by {delimiter!r} but found {text.count(delimiter) + 1}",
        )
        for line, text in bad_lines
    ]
    columns = {name: table[name] for name in names}
    check_column_types(columns)
    if source.format == "histdata":
        ts_text = as_strings(columns["ts_utc"])
        parsed = pc.strptime(ts_text, format=HISTDATA_TIMESTAMP_FORMAT, unit="us", error_is_null=True)
        if parsed.null_count:
            trimmed = pc.utf8_trim_whitespace(ts_text)
            parsed = pc.strptime(trimmed, format=HISTDATA_TIMESTAMP_FORMAT, unit="us", error_is_null=True)
        local_us = fixed_width_numpy(parsed.view(pa.int64()), np.int64)
        # EST + 5 h; a time so late that it would wrap around int64 is not a timestamp
        ts_bad = ~not_null(parsed) | (local_us > np.iinfo(np.int64).max - HISTDATA_UTC_OFFSET_US)
        ts_us = np.where(ts_bad, 0, local_us) + HISTDATA_UTC_OFFSET_US
    else:
        ts_us, ts_bad = parse_iso_timestamps(columns["ts_utc"])
    return assemble_rows(
        columns, pair, source.only_pair, line_no, ts_us, ts_bad, lambda i: lines.get(int(line_no[i])), unsplit, notes
    )


# --------------------------------------------------------------------------------------------
# tables (parquet, frames)


def json_cell(value: object) -> object:
    """A cell of a parquet row or frame as JSON can hold it (for raw_text)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date)):  # pandas' Timestamp is a datetime
        return value.isoformat()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def parse_table(table: pa.Table, pair: str | None, fmt: str, only_pair: str | None = None) -> ParsedRows:
    """A parquet file or a DataFrame (as an arrow table) with the csv's columns."""
    lower = {c.lower(): c for c in table.column_names}
    missing = [c for c in REQUIRED_COLUMNS if c not in lower]
    if "pair" not in lower and pair is None:
        missing.insert(0, "pair")
    if missing:
        raise FileSkipped(f"the {fmt} lacks the column(s) {', '.join(missing)}")
    notes = []
    extra = [c for c in table.column_names if c.lower() not in BAR_COLUMNS and not c.startswith("__index_level_")]
    if extra:
        notes.append(f"ignored column(s) {', '.join(extra)}")
    if len(lower) != len(table.column_names):
        raise FileSkipped(f"the {fmt} names a column twice (letter case aside)")
    columns = {c: table[lower[c]] for c in BAR_COLUMNS if c in lower}
    check_column_types(columns)
    n = table.num_rows
    ts_us, ts_bad = timestamps_us(columns["ts_utc"])

    def row_as_json(i: int) -> str:
        row = {c: json_cell(table[c][i].as_py()) for c in table.column_names}
        return json.dumps(row, allow_nan=False)

    line = np.arange(1, n + 1, dtype=np.int64)
    return assemble_rows(columns, pair, only_pair, line, ts_us, ts_bad, row_as_json, [], notes)


def parse_source(source: BarSource) -> ParsedRows:
    """Read a source and parse it by its format (FileSkipped when it cannot be)."""
    data = source.read()
    if source.format == "parquet":
        try:
            # ParquetFile.read without pandas metadata: read_table would import pandas
            table = pq.ParquetFile(io.BytesIO(data)).read(use_pandas_metadata=False)
        except (pa.ArrowException, OSError, ValueError) as err:
            # arrow's message says what is wrong with the file's structure, not what it holds
            reason = " ".join(str(err).split())[:200]
            raise FileSkipped(f"not a readable parquet file ({reason})") from None
        return parse_table(table, source.pair, "parquet", source.only_pair)
    return parse_text(source, data)
