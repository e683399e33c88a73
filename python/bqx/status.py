"""`bqx status`: coverage of the source and of every built model, per pair × month."""

from __future__ import annotations

import pandas as pd
import psycopg
from psycopg import sql

from bqx.pairs import PAIRS

MODEL_SCHEMAS = ("staging", "features", "marts")


def built_tables(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """(schema, table) of every materialised model holding pair and ts_utc, in build order.

    Views (stg_m1_bars, feature_matrix) are skipped: counting them re-runs their query."""
    rows = conn.execute(
        """
        select c.table_schema, c.table_name
        from information_schema.columns as c
        join information_schema.tables as t
          on t.table_schema = c.table_schema and t.table_name = c.table_name
        where c.table_schema = any(%s) and t.table_type = 'BASE TABLE'
          and c.column_name in ('pair', 'ts_utc')
        group by c.table_schema, c.table_name
        having count(*) = 2
        order by array_position(%s, c.table_schema::text), c.table_name
        """,
        (list(MODEL_SCHEMAS), list(MODEL_SCHEMAS)),
    ).fetchall()
    return [(schema, table) for schema, table in rows]


def _counts(conn: psycopg.Connection, schema: str, table: str) -> pd.Series:
    query = sql.SQL(
        "select pair, to_char(date_trunc('month', ts_utc at time zone 'UTC'), 'YYYY-MM') as month, "
        "count(*) from {}.{} group by 1, 2"
    ).format(sql.Identifier(schema), sql.Identifier(table))
    rows = conn.execute(query).fetchall()
    index = pd.MultiIndex.from_tuples([(r[0], r[1]) for r in rows], names=["pair", "month"])
    return pd.Series([r[2] for r in rows], index=index, dtype="int64")


def coverage(dsn: str) -> pd.DataFrame:
    """Rows per (pair, month): one column for raw.m1_bars, one per built model."""
    with psycopg.connect(dsn) as conn:
        has_source = conn.execute("select to_regclass('raw.m1_bars') is not null").fetchone()[0]
        columns: dict[str, pd.Series] = {}
        if has_source:
            columns["raw.m1_bars"] = _counts(conn, "raw", "m1_bars")
        for schema, table in built_tables(conn):
            columns[table] = _counts(conn, schema, table)
    if not columns:
        return pd.DataFrame()
    frame = pd.DataFrame(columns).fillna(0).astype("int64")
    # pairs in the market's order of precedence (EURGBP … CHFJPY), as the spec lists them
    rank = {pair: position for position, pair in enumerate(PAIRS)}
    return frame.sort_index(key=lambda level: level.map(rank) if level.name == "pair" else level)


def format_coverage(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "no bars loaded yet: run `bqx load PATH...`"
    pairs = frame.index.get_level_values("pair").nunique()
    months = frame.index.get_level_values("month").nunique()
    source = frame.columns[0]
    behind = [
        column
        for column in frame.columns[1:]
        if column not in ("baseline_rates",) and (frame[column] < frame[source]).any()
    ]
    lines = [
        f"{pairs} pairs × {months} months; rows per pair and month (source first, then each built model)",
        frame.reset_index().to_string(index=False),
    ]
    if behind:
        lines.append("behind the source (run `bqx build`): " + ", ".join(behind))
    return "\n".join(lines)
