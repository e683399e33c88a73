"""PostgreSQL's binary COPY format, from and to NumPy columns: the one encoder of the project.

The loader sends its bars with it and the benchmarks send their results back with it; formatting
a float as text costs more than everything else a load does, and binary COPY has no text.

A binary COPY stream is a header, one tuple per row (a field count, then each field as its byte
length, or -1 for NULL, and its big-endian payload) and a trailer. `copy_chunks` builds the
tuples of many rows at once as a NumPy record array: one slot per field, wide enough for its
longest value. When a chunk holds no NULL and no text shorter than its slot (the common case:
bars, features after their warm-up), the records are the wire bytes and are sent as they are;
otherwise the bytes a tuple does not use (a NULL's payload, the padding of a short text) are
dropped in one vectorised pass over the chunk. Either way no row is encoded in Python and rows
keep their order.

    from bqx import pgcopy
    columns = {"pair": pgcopy.text(pairs), "ts_utc": pgcopy.timestamptz(unix_us),
               "close": pgcopy.float8(close)}
    pgcopy.copy_into(conn, "raw.m1_bars", columns)

`read_fixed_rows` decodes the other direction for rows of fixed-width, non-NULL fields, and
`read_packed_columns` a single row whose fields each hold one column's values packed end to end
(the server's `string_agg(float8send(x), '')`): one message for many rows.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import psycopg
from psycopg import sql

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)  # signature, flags, no extension
TRAILER = struct.pack(">h", -1)
PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 00:00 UTC, PostgreSQL's epoch, in Unix microseconds
CHUNK_ROWS = 1 << 16  # rows per chunk: a few MB, large writes and bounded memory


@dataclass(frozen=True)
class CopyColumn:
    """The values of one column of a COPY, as they go on the wire.

    `values` has the wire's dtype or one NumPy converts to it when assigned (float64 to '>f8'),
    or is 0-dimensional: one value for every row. `null` marks NULL rows; `lengths` gives a
    text's byte length per row when it is shorter than its slot (None: every value fills it).
    """

    wire: np.dtype
    values: np.ndarray
    null: np.ndarray | None = None
    lengths: np.ndarray | None = None

    @property
    def constant(self) -> bool:
        return self.values.ndim == 0


def _null_mask(null: np.ndarray | None) -> np.ndarray | None:
    if null is None:
        return None
    null = np.asarray(null, dtype=bool)
    return null if null.any() else None


def float8(values: np.ndarray, null: np.ndarray | None = None, *, nan_is_null: bool = True) -> CopyColumn:
    """double precision; NaN is NULL unless `nan_is_null` is False (then NaN is sent as NaN)."""
    values = np.asarray(values, dtype=np.float64)
    if null is None and nan_is_null:
        null = np.isnan(values)
    return CopyColumn(np.dtype(">f8"), values, _null_mask(null))


def int8(values: np.ndarray, null: np.ndarray | None = None) -> CopyColumn:
    """bigint."""
    return CopyColumn(np.dtype(">i8"), np.asarray(values), _null_mask(null))


def int4(values: np.ndarray, null: np.ndarray | None = None) -> CopyColumn:
    """integer (values must fit: NumPy's cast wraps silently, so they are checked)."""
    values = np.asarray(values)
    if values.size and values.dtype.itemsize > 4 and (values.min() < -(2**31) or values.max() >= 2**31):
        raise ValueError("a value does not fit PostgreSQL's integer")
    return CopyColumn(np.dtype(">i4"), values, _null_mask(null))


def boolean(values: np.ndarray, null: np.ndarray | None = None) -> CopyColumn:
    """boolean."""
    return CopyColumn(np.dtype("u1"), np.asarray(values, dtype=bool).astype(np.uint8), _null_mask(null))


def timestamptz(unix_us: np.ndarray, null: np.ndarray | None = None) -> CopyColumn:
    """timestamptz (or timestamp) from int64 microseconds since 1970-01-01 UTC."""
    return CopyColumn(np.dtype(">i8"), np.asarray(unix_us, dtype=np.int64) - PG_EPOCH_US, _null_mask(null))


def text(values: np.ndarray | Sequence[str] | str, null: np.ndarray | None = None) -> CopyColumn:
    """text (or varchar) from str or UTF-8 bytes values; one str is a constant column."""
    if isinstance(values, str):
        encoded = values.encode("utf-8")
        # an empty text still needs a slot of one byte, sent with length 0
        slot = np.dtype(f"S{max(len(encoded), 1)}")
        return CopyColumn(slot, np.array(encoded), None, None if encoded else np.array(0))
    array = np.asarray(values)
    if array.dtype.kind != "S":
        array = np.char.encode(array.astype(str), "utf-8") if array.size else array.astype("S1")
    if array.dtype.itemsize == 0:
        array = array.astype("S1")
    # NumPy's bytes drop trailing NUL bytes, which PostgreSQL's text cannot hold anyway
    lengths = np.char.str_len(array).astype(np.int32) if array.size else np.zeros(0, np.int32)
    full = array.size == 0 or bool(np.all(lengths == array.dtype.itemsize))
    return CopyColumn(array.dtype, array, _null_mask(null), None if full else lengths)


def _record_type(columns: Sequence[CopyColumn]) -> np.dtype:
    fields: list[tuple[str, str | np.dtype]] = [("count", ">i2")]
    for i, column in enumerate(columns):
        fields += [(f"length{i}", ">i4"), (f"value{i}", column.wire)]
    return np.dtype(fields)


def _row_count(columns: Sequence[CopyColumn]) -> int:
    counts = {len(c.values) for c in columns if not c.constant}
    if len(counts) > 1:
        raise ValueError(f"columns of different lengths: {sorted(counts)}")
    if not counts:
        raise ValueError("every column is a constant: the row count is unknown (pass rows)")
    return counts.pop()


def copy_chunks(
    columns: Sequence[CopyColumn], rows: np.ndarray | None = None, *, chunk_rows: int = CHUNK_ROWS
) -> Iterator[bytes | memoryview]:
    """The binary COPY stream of `columns` (in the COPY statement's column order): the header,
    the tuples of `rows` (indices into the columns, in that order; default every row), the trailer.

    A chunk may be a view of a buffer that the next chunk overwrites: send each one before asking
    for the next (psycopg's `copy.write` does).
    """
    if not columns:
        raise ValueError("a COPY needs at least one column")
    count = len(rows) if rows is not None else _row_count(columns)
    record = _record_type(columns)
    yield HEADER
    if count:
        # the fields that are the same on every row (field count, full lengths, constants) are
        # written once into a template record and copied bytewise into the reused buffer:
        # assigning a scalar to a big-endian field row by row is ~20 times slower
        template = np.zeros((), record)
        template["count"] = len(columns)
        for i, column in enumerate(columns):
            template[f"length{i}"] = column.wire.itemsize
            if column.constant:
                template[f"value{i}"] = column.values
        buffer = np.empty(min(count, chunk_rows), record)
        buffer.view(np.uint8).reshape(len(buffer), record.itemsize)[:] = np.frombuffer(template.tobytes(), np.uint8)
        contiguous = rows is None or (len(rows) > 0 and int(rows[-1]) - int(rows[0]) == len(rows) - 1
                                      and bool(np.all(np.diff(rows) == 1)))  # fmt: skip
        first = 0 if rows is None else int(rows[0])
        for start in range(0, count, chunk_rows):
            stop = min(start + chunk_rows, count)
            taken: slice | np.ndarray = (
                slice(first + start, first + stop) if contiguous else rows[start:stop]  # type: ignore[index]
            )
            chunk = buffer[: stop - start]
            yield _encode(chunk, columns, taken)
    yield TRAILER


def _encode(chunk: np.ndarray, columns: Sequence[CopyColumn], taken: slice | np.ndarray) -> bytes | memoryview:
    """Fill `chunk` with the rows `taken`; return its wire bytes."""
    variable: list[tuple[int, np.ndarray]] = []  # (column, byte length per row) where not full width
    for i, column in enumerate(columns):
        if not column.constant:
            chunk[f"value{i}"] = column.values[taken]
        if column.null is None and column.lengths is None:
            continue
        size = column.wire.itemsize
        if column.lengths is None:
            lengths = np.full(len(chunk), size, np.int32)
        elif column.lengths.ndim == 0:
            lengths = np.full(len(chunk), int(column.lengths), np.int32)
        else:
            lengths = column.lengths[taken]
        if column.null is not None:
            lengths = np.where(column.null[taken], -1, lengths)
        chunk[f"length{i}"] = lengths
        if np.any(lengths != size):
            variable.append((i, lengths))
    if not variable:
        return chunk.data
    # drop the unused bytes: a NULL's payload, the padding after a short text
    keep = np.ones((len(chunk), chunk.dtype.itemsize), bool)
    for i, lengths in variable:
        offset = chunk.dtype.fields[f"value{i}"][1]
        size = columns[i].wire.itemsize
        keep[:, offset : offset + size] = np.arange(size) < np.maximum(lengths, 0)[:, None]
    return chunk.view(np.uint8).reshape(len(chunk), -1)[keep].tobytes()


def copy_statement(table: str, names: Iterable[str]) -> sql.Composed:
    """`copy TABLE (names...) from stdin (format binary)`, identifiers quoted (TABLE may be schema.name)."""
    return sql.SQL("copy {} ({}) from stdin (format binary)").format(
        sql.Identifier(*table.split(".")), sql.SQL(", ").join(map(sql.Identifier, names))
    )


def send(cursor: psycopg.Cursor, statement: str | sql.Composable, chunks: Iterable[bytes | memoryview]) -> None:
    """Run a `copy ... from stdin (format binary)` statement with the given stream."""
    with cursor.copy(statement) as copy:
        for chunk in chunks:
            copy.write(chunk)


def copy_into(
    conn: psycopg.Connection, table: str, columns: Mapping[str, CopyColumn], rows: np.ndarray | None = None
) -> None:
    """COPY the columns (name -> values) into `table` in binary format."""
    with conn.cursor() as cursor:
        send(cursor, copy_statement(table, columns), copy_chunks(list(columns.values()), rows))


def read_fixed_rows(data: bytes | bytearray | memoryview, wire: Sequence[str | np.dtype]) -> list[np.ndarray]:
    """Decode a binary COPY stream (`copy (...) to stdout (format binary)`) whose fields all have
    the fixed widths of `wire` (e.g. ['S6', '>i8', '>f8']) and no NULL; one array per field.
    A NULL or a field of another width is an error naming the field (coalesce NULLs in the query)."""
    view = memoryview(data)
    if bytes(view[:11]) != HEADER[:11]:
        raise ValueError("not a binary COPY stream (no PGCOPY signature)")
    start = 19 + struct.unpack(">i", view[15:19])[0]  # signature, flags, header extension
    dtypes = [np.dtype(w) for w in wire]
    record = _record_type([CopyColumn(d, np.zeros(0, d)) for d in dtypes])
    body = len(view) - start - len(TRAILER)
    rows = None
    if body >= 0 and body % record.itemsize == 0 and bytes(view[len(view) - len(TRAILER) :]) == TRAILER:
        rows = np.frombuffer(view, dtype=record, count=body // record.itemsize, offset=start)
        fixed = np.all(rows["count"] == len(dtypes)) and all(
            np.all(rows[f"length{i}"] == d.itemsize) for i, d in enumerate(dtypes)
        )
        rows = rows if fixed else None
    if rows is None:
        raise ValueError(_first_deviation(view, start, dtypes))
    return [rows[f"value{i}"].astype(dtypes[i].newbyteorder("=")) for i in range(len(dtypes))]


def _first_deviation(view: memoryview, start: int, dtypes: Sequence[np.dtype]) -> str:
    """Where a stream first departs from the fixed layout (walked row by row: errors only)."""
    position, row = start, 1
    while position + 2 <= len(view) - len(TRAILER):
        (count,) = struct.unpack_from(">h", view, position)
        if count != len(dtypes):
            return f"row {row} has {count} fields, not {len(dtypes)}"
        position += 2
        for i, dtype in enumerate(dtypes):
            (length,) = struct.unpack_from(">i", view, position)
            if length != dtype.itemsize:
                what = "NULL" if length == -1 else f"{length} bytes wide"
                return f"row {row}: field {i + 1} is {what}, not {dtype.itemsize} bytes (coalesce NULLs in the query)"
            position += 4 + length
        row += 1
    return "not a complete binary COPY stream"


def read_copy(conn: psycopg.Connection, query: str, wire: Sequence[str | np.dtype]) -> list[np.ndarray]:
    """The columns of `query` read with a binary COPY and decoded by `read_fixed_rows`."""
    buffer = bytearray()
    with conn.cursor().copy(f"copy ({query}) to stdout (format binary)") as copy:
        for chunk in copy:
            buffer += chunk
    return read_fixed_rows(buffer, wire)


def packed(value: str, send_function: str) -> str:
    """The SQL aggregate packing `value`'s rows end to end in their binary send form, e.g.
    packed('x', 'float8send') = "string_agg(float8send(x), ''::bytea)" (a NULL input row is
    skipped by string_agg: coalesce it first, or the columns' rows no longer line up)."""
    return f"string_agg({send_function}({value}), ''::bytea)"


class _Truncated(Exception):
    """The buffer ends before the packed row does."""


def _packed_row(view: memoryview, dtypes: Sequence[np.dtype]) -> tuple[list[np.ndarray], int]:
    """The packed row at the start of `view` (a binary COPY stream's header, then the row): its
    columns in native byte order and the position after it; _Truncated if `view` ends first."""
    if len(view) < 19:
        raise _Truncated
    if bytes(view[:11]) != HEADER[:11]:
        raise ValueError("not a binary COPY stream (no PGCOPY signature)")
    position = 19 + struct.unpack(">i", view[15:19])[0]
    if len(view) < position + 2:
        raise _Truncated
    (count,) = struct.unpack_from(">h", view, position)
    if count != len(dtypes):
        raise ValueError(f"the packed row has {count} fields, not {len(dtypes)}")
    position += 2
    columns = []
    for i, dtype in enumerate(dtypes):
        if len(view) < position + 4:
            raise _Truncated
        (length,) = struct.unpack_from(">i", view, position)
        position += 4
        if length == -1:
            columns.append(np.zeros(0, dtype.newbyteorder("=")))
            continue
        if length % dtype.itemsize:
            raise ValueError(f"field {i + 1} holds {length} bytes, not a whole number of {dtype.itemsize}-byte values")
        if len(view) < position + length:
            raise _Truncated
        columns.append(np.frombuffer(view, dtype, length // dtype.itemsize, position).astype(dtype.newbyteorder("=")))
        position += length
    return columns, position


def read_packed_columns(conn: psycopg.Connection, query: str, wire: Sequence[str | np.dtype]) -> list[np.ndarray]:
    """The columns of `query`, a select of one row whose fields are each one column's values packed
    end to end in their binary form (see `packed`; their widths in `wire`, e.g. ['>i8', '>f8']),
    read with a binary COPY: one array per field, native byte order; a NULL field (no rows) is
    an empty array.

    Why: a COPY sends one message per row, and psycopg spends ~0.8 µs per message in Python
    (measured: 4.6 s of client CPU for a pair-year's 6M rows of the feature relations, against
    0.8 s for the same values packed); packed, the server pays for the aggregate instead (~25%
    more of its CPU) and each value travels in 8 bytes instead of 12."""
    with conn.cursor().copy(f"copy ({query}) to stdout (format binary)") as copy:
        messages = [memoryview(message) for message in copy]
    return packed_columns(messages, wire)


def packed_columns(messages: Sequence[memoryview], wire: Sequence[str | np.dtype]) -> list[np.ndarray]:
    """The columns of a binary COPY stream of one packed row, as its messages arrived.

    PostgreSQL sends the header in the row's message and the trailer alone, so the row is read
    where it arrived; appending each message to one buffer, as this did before, copied the whole
    row once or twice more (~15 MB per relation and chunk: 3.6 s of the client's CPU on 28 pairs
    x 3 months, on the cores the server needs). A row split over messages is joined first."""
    dtypes = [np.dtype(w) for w in wire]
    try:
        columns, position = _packed_row(messages[0] if messages else memoryview(b""), dtypes)
        rest = bytes(messages[0][position:]) + b"".join(messages[1:])
    except _Truncated:
        whole = memoryview(b"".join(messages))
        try:
            columns, position = _packed_row(whole, dtypes)
        except _Truncated:
            raise ValueError("the COPY stream ends inside the packed row") from None
        rest = bytes(whole[position:])
    if rest != TRAILER:
        raise ValueError("more than one packed row (or no trailer): the query must aggregate to one row")
    return columns
