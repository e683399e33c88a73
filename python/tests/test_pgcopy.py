"""bqx.pgcopy: columns encoded by NumPy, COPYed into PostgreSQL and read back by psycopg (text
protocol, an independent decoder), and the binary COPY output decoded by `read_fixed_rows` and
`read_packed_columns`."""

from __future__ import annotations

import datetime as dt
import math
import struct

import numpy as np
import psycopg
import pytest

from bqx import pgcopy

UTC = dt.UTC
TABLE_DDL = """
create table copied (
    id bigint, x double precision, n integer, flag boolean, ts timestamptz, label text, source text
)
"""


def sample(n: int = 1000, seed: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n) * 10.0 ** rng.integers(-300, 300, n)
    x[:6] = [0.0, -0.0, np.inf, -np.inf, 5e-324, np.finfo(float).max]
    x[rng.random(n) < 0.2] = np.nan  # NULL
    words = np.array(["", "a", "EURUSD", "ünïcødé €", "x" * 40, "tab\tand,comma"], dtype=object)
    return {
        "id": np.arange(n, dtype=np.int64) * 7 - 3500,
        "x": x,
        "n": rng.integers(-(2**31), 2**31, n),
        "n_null": rng.random(n) < 0.3,
        "flag": rng.random(n) < 0.5,
        "flag_null": rng.random(n) < 0.1,
        # microseconds around both epochs, centuries apart
        "ts": rng.integers(-2_000_000_000, 9_000_000_000, n) * 1_000_000 + rng.integers(0, 1_000_000, n),
        "label": words[rng.integers(0, len(words), n)],
        "label_null": rng.random(n) < 0.1,
    }


def columns_of(data: dict[str, np.ndarray]) -> dict[str, pgcopy.CopyColumn]:
    return {
        "id": pgcopy.int8(data["id"]),
        "x": pgcopy.float8(data["x"]),
        "n": pgcopy.int4(data["n"], data["n_null"]),
        "flag": pgcopy.boolean(data["flag"], data["flag_null"]),
        "ts": pgcopy.timestamptz(data["ts"]),
        "label": pgcopy.text(data["label"], data["label_null"]),
        "source": pgcopy.text("the same file.csv"),
    }


def expected_row(data: dict[str, np.ndarray], i: int) -> tuple:
    x = float(data["x"][i])
    return (
        int(data["id"][i]),
        None if math.isnan(x) else x,
        None if data["n_null"][i] else int(data["n"][i]),
        None if data["flag_null"][i] else bool(data["flag"][i]),
        dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(microseconds=int(data["ts"][i])),
        None if data["label_null"][i] else str(data["label"][i]),
        "the same file.csv",
    )


def copy_and_fetch(dsn: str, columns: dict[str, pgcopy.CopyColumn], rows: np.ndarray | None = None, **kw) -> list:
    with psycopg.connect(dsn) as conn:
        conn.execute("set timezone = 'UTC'")
        conn.execute("drop table if exists copied")
        conn.execute(TABLE_DDL)
        with conn.cursor() as cur:
            chunks = pgcopy.copy_chunks(list(columns.values()), rows, **kw)
            pgcopy.send(cur, pgcopy.copy_statement("copied", columns), chunks)
        # a new heap table returns the rows in the order they were copied
        fetched = conn.execute("select * from copied").fetchall()
        conn.rollback()
    return fetched


@pytest.mark.parametrize("chunk_rows", [pgcopy.CHUNK_ROWS, 7])
def test_every_type_round_trips_in_order(dsn: str, chunk_rows: int) -> None:
    data = sample()
    fetched = copy_and_fetch(dsn, columns_of(data), chunk_rows=chunk_rows)
    assert fetched == [expected_row(data, i) for i in range(len(data["id"]))]


def test_selected_rows_contiguous_or_not(dsn: str) -> None:
    data = sample(300)
    for rows in (np.arange(40, 260), np.array([299, 0, 5, 5, 120]), np.zeros(0, np.int64)):
        fetched = copy_and_fetch(dsn, columns_of(data), rows, chunk_rows=64)
        assert fetched == [expected_row(data, int(i)) for i in rows]


def test_chunks_without_null_are_the_records_themselves() -> None:
    """The fast path: no NULL and full-width text, the chunk is the record buffer as is."""
    values = np.arange(5, dtype=np.float64)
    chunks = list(pgcopy.copy_chunks([pgcopy.text(np.array(["EURUSD"] * 5)), pgcopy.float8(values)]))
    assert chunks[0] == pgcopy.HEADER and chunks[-1] == pgcopy.TRAILER
    assert isinstance(chunks[1], memoryview)  # no copy, no byte dropped
    body = bytes(chunks[1])
    assert len(body) == 5 * (2 + 4 + 6 + 4 + 8)
    assert body[:24] == b"\x00\x02\x00\x00\x00\x06EURUSD\x00\x00\x00\x08" + np.float64(0).astype(">f8").tobytes()


def test_read_fixed_rows_decodes_copy_output(dsn: str) -> None:
    data = sample(500)
    columns = columns_of(data)
    copy_and_fetch(dsn, columns)  # leaves nothing: the table is rolled back
    with psycopg.connect(dsn) as conn:
        conn.execute(TABLE_DDL)
        pgcopy.copy_into(conn, "copied", columns)
        pair, ts, x = pgcopy.read_copy(
            conn, "select 'GBPJPY'::text, ts, coalesce(x, 'NaN') from copied order by id", ["S6", ">i8", ">f8"]
        )
        with pytest.raises(ValueError, match="field 2 is NULL"):
            pgcopy.read_copy(conn, "select 'GBPJPY'::text, x from copied", ["S6", ">f8"])
        conn.rollback()
    assert pair.tolist() == [b"GBPJPY"] * 500
    np.testing.assert_array_equal(ts + pgcopy.PG_EPOCH_US, data["ts"])
    np.testing.assert_array_equal(x, data["x"])  # NaN where NULL, every other bit exact


def test_read_packed_columns_decodes_one_row_of_packed_columns(dsn: str) -> None:
    data = sample(700)
    with psycopg.connect(dsn) as conn:
        conn.execute(TABLE_DDL)
        pgcopy.copy_into(conn, "copied", columns_of(data))
        ordered = "(select ts, coalesce(n, -1) as n, coalesce(x, 'NaN') as x from copied order by id) as ordered"
        query = f"select {pgcopy.packed('ts', 'timestamptz_send')}, {pgcopy.packed('n', 'int4send')}, {pgcopy.packed('x', 'float8send')} from {ordered}"
        ts, n, x = pgcopy.read_packed_columns(conn, query, [">i8", ">i4", ">f8"])
        empty = pgcopy.read_packed_columns(conn, f"select {pgcopy.packed('x', 'float8send')} from copied where false", [">f8"])
        with pytest.raises(ValueError, match="more than one packed row"):
            pgcopy.read_packed_columns(conn, f"select {pgcopy.packed('x', 'float8send')} from copied group by flag", [">f8"])
        with pytest.raises(ValueError, match="not a whole number of 8-byte values"):
            pgcopy.read_packed_columns(conn, f"select {pgcopy.packed('coalesce(n, 0)', 'int4send')} from copied where id = 0", [">f8"])
        conn.rollback()
    np.testing.assert_array_equal(ts + pgcopy.PG_EPOCH_US, data["ts"])
    np.testing.assert_array_equal(n, np.where(data["n_null"], -1, data["n"]))
    np.testing.assert_array_equal(x, data["x"])  # NaN where NULL, every other bit exact
    assert x.dtype == np.float64 and x.dtype.isnative and empty[0].size == 0


def test_mismatched_lengths_and_out_of_range_are_errors() -> None:
    with pytest.raises(ValueError, match="different lengths"):
        list(pgcopy.copy_chunks([pgcopy.float8(np.zeros(3)), pgcopy.float8(np.zeros(4))]))
    with pytest.raises(ValueError, match="integer"):
        pgcopy.int4(np.array([2**31]))


def test_packed_columns_read_the_same_however_the_stream_is_cut_into_messages() -> None:
    """PostgreSQL sends the header with the row and the trailer alone, and the row is read where
    it arrived; a row cut over several messages (any cut) decodes the same, a stream that ends
    inside the row or holds a second one is an error, not a short column."""
    x = np.array([1.5, -0.0, np.nan, 5e-324, np.inf], dtype=np.float64)
    n = np.array([7, -1, 0], dtype=np.int32)
    row = struct.pack(">h", 2)
    for values, wire in ((x, ">f8"), (n, ">i4")):
        payload = values.astype(wire).tobytes()
        row += struct.pack(">i", len(payload)) + payload
    stream = pgcopy.HEADER + row + pgcopy.TRAILER
    for cuts in ([len(stream) - 2], [], [5], [19, 40], list(range(1, len(stream), 7))):
        bounds = [0, *cuts, len(stream)]
        messages = [memoryview(stream[a:b]) for a, b in zip(bounds, bounds[1:])]
        decoded_x, decoded_n = pgcopy.packed_columns(messages, [">f8", ">i4"])
        assert decoded_x.tobytes() == x.tobytes() and decoded_x.dtype.isnative
        np.testing.assert_array_equal(decoded_n, n)
    with pytest.raises(ValueError, match="ends inside the packed row"):
        pgcopy.packed_columns([memoryview(stream[:30])], [">f8", ">i4"])
    with pytest.raises(ValueError, match="more than one packed row"):
        pgcopy.packed_columns([memoryview(pgcopy.HEADER + row), memoryview(row), memoryview(pgcopy.TRAILER)], [">f8", ">i4"])
