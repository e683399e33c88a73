"""raw.m1_changes: every write to raw.m1_bars is recorded per statement and pair, whoever writes
and however (INSERT, UPDATE, DELETE, COPY, TRUNCATE, through the parent or into a partition,
the loader's detached-table ATTACH path)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pandas as pd
import psycopg
import pytest

from bqx import raw_schema
from bqx.load import load_frame

BAR = "(%s, %s, 1.1, 1.2, 1.0, 1.1, 0)"


def _changes(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        "select pair, first_ts::text, last_ts::text, split_part(operation, ' ', 1), row_count "
        "from raw.m1_changes order by change_id"
    ).fetchall()


def test_every_kind_of_write_is_recorded(database_factory: Callable[[str], str]) -> None:
    dsn = database_factory("changelog")
    with psycopg.connect(dsn) as conn:
        conn.execute("set timezone = 'UTC'")  # only so that the expected texts below read as UTC
        raw_schema.ensure_raw_schema(conn)
        raw_schema.ensure_month_partitions(conn, [dt.date(2024, 7, 1)])
        conn.commit()
        insert = "insert into raw.m1_bars (pair, ts_utc, open, high, low, close, volume) values "
        conn.execute(insert + ", ".join([BAR] * 3), ("EURUSD", "2024-07-01 00:00Z", "EURUSD", "2024-07-01 00:05Z",
                                                     "USDJPY", "2024-07-02 00:01Z"))
        conn.execute("update raw.m1_bars_2024_07 set close = 1.15 where pair = 'EURUSD'")  # a partition
        conn.execute("update raw.m1_bars set ts_utc = '2024-07-09 00:00Z' where pair = 'USDJPY'")  # key moves
        conn.execute("delete from raw.m1_bars where pair = 'USDJPY'")
        with conn.cursor().copy("copy raw.m1_bars_2024_07 (pair, ts_utc, open, high, low, close, volume) from stdin") as copy:
            copy.write_row(("GBPUSD", "2024-07-03 00:01Z", 1.1, 1.2, 1.0, 1.1, 0))
        conn.commit()
        assert _changes(conn) == [
            ("EURUSD", "2024-07-01 00:00:00+00", "2024-07-01 00:05:00+00", "insert", 2),
            ("USDJPY", "2024-07-02 00:01:00+00", "2024-07-02 00:01:00+00", "insert", 1),
            ("EURUSD", "2024-07-01 00:00:00+00", "2024-07-01 00:05:00+00", "update", 2),
            ("USDJPY", "2024-07-02 00:01:00+00", "2024-07-09 00:00:00+00", "update", 1),  # old and new key
            ("USDJPY", "2024-07-09 00:00:00+00", "2024-07-09 00:00:00+00", "delete", 1),
            ("GBPUSD", "2024-07-03 00:01:00+00", "2024-07-03 00:01:00+00", "insert", 1),
        ]
        xids = conn.execute("select distinct xid::text from raw.m1_changes").fetchall()
        assert len(xids) == 1  # the writing transaction: all the statements above ran in one
        conn.execute("delete from raw.m1_changes")
        conn.commit()

        # the loader's path for a month without partition: COPY into a detached table, ATTACH
        bars = pd.DataFrame(
            {
                "pair": ["EURUSD", "EURUSD", "GBPUSD"],
                "ts_utc": pd.to_datetime(["2024-08-01 00:00", "2024-08-30 23:59", "2024-08-02 10:00"], utc=True),
                "open": 1.1, "high": 1.2, "low": 1.0, "close": 1.1, "volume": 0, "spread": None,
            }
        )
        load_frame(conn, bars, "august")
        conn.commit()
        assert sorted(_changes(conn)) == [
            ("EURUSD", "2024-08-01 00:00:00+00", "2024-08-30 23:59:00+00", "attach", 2),
            ("GBPUSD", "2024-08-02 10:00:00+00", "2024-08-02 10:00:00+00", "attach", 1),
        ]
        triggers = conn.execute(
            "select count(*) from pg_trigger where tgrelid = 'raw.m1_bars_2024_08'::regclass and tgname like 'm1_changes_%'"
        ).fetchone()[0]
        assert triggers == 4
        conn.execute("delete from raw.m1_changes")

        # a partition attached by hand, behind the loader's back, is recorded at the next ensure
        conn.execute("create table raw.by_hand (like raw.m1_bars including defaults including constraints)")
        conn.execute(insert.replace("raw.m1_bars", "raw.by_hand") + BAR, ("AUDUSD", "2024-09-05 00:00Z"))
        conn.execute("alter table raw.m1_bars attach partition raw.by_hand for values from ('2024-09-01 00:00Z') to ('2024-10-01 00:00Z')")
        conn.commit()
        raw_schema.ensure_change_log(conn)
        conn.execute("truncate raw.m1_bars_2024_07")
        conn.commit()
        rows = conn.execute(
            "select pair, operation, row_count, first_ts = '-infinity' from raw.m1_changes order by change_id"
        ).fetchall()
        assert rows == [("AUDUSD", "attach by_hand", 1, False), (None, "truncate m1_bars_2024_07", 0, True)]


def test_the_change_log_is_written_only_through_a_pinned_security_definer(
    database_factory: Callable[[str], str],
) -> None:
    """What makes the change log unbypassable, read from the catalog (holds on any server): the
    trigger function runs with its owner's rights and a pinned search_path, nobody but the owner
    has a right on raw.m1_changes, and every partition carries the statement triggers."""
    dsn = database_factory("changelog_catalog")
    with psycopg.connect(dsn) as conn:
        raw_schema.ensure_raw_schema(conn)
        raw_schema.ensure_month_partitions(conn, [dt.date(2024, 7, 1)])
        definer, config = conn.execute(
            "select p.prosecdef, p.proconfig from pg_proc as p join pg_namespace as n on n.oid = p.pronamespace "
            "where n.nspname = 'raw' and p.proname = 'record_m1_changes'"
        ).fetchone()
        assert definer and any(setting.startswith("search_path=") for setting in config or [])
        grants = conn.execute(
            "select grantee, privilege_type from information_schema.role_table_grants "
            "where table_schema = 'raw' and table_name = 'm1_changes' and grantee <> "
            "(select pg_get_userbyid(relowner) from pg_class where oid = 'raw.m1_changes'::regclass)"
        ).fetchall()
        assert grants == []
        triggered = conn.execute(
            "select c.relname, count(t.tgname) from pg_class as c join pg_namespace as n on n.oid = c.relnamespace "
            "left join pg_trigger as t on t.tgrelid = c.oid and not t.tgisinternal "
            "where n.nspname = 'raw' and c.relkind in ('r', 'p') and c.relname like 'm1_bars%%' and c.relname <> 'm1_bars_history' "
            "group by c.relname order by 1"
        ).fetchall()
        assert [name for name, _ in triggered] == ["m1_bars", "m1_bars_2024_07"]
        assert all(count >= len(raw_schema._CHANGE_TRIGGERS) for _, count in triggered), triggered


def test_a_writer_cannot_touch_the_change_log(database_factory: Callable[[str], str]) -> None:
    """The triggers write through a security-definer function: a role that may write bars but has
    no right on raw.m1_changes still gets its writes recorded, and cannot erase them. Needs a role
    that may create roles: the embedded server's project role may not (least privilege, by
    design), so there the catalog test above stands in for it; on BQX_PG_DSN's server as a
    superuser or CREATEROLE role it runs."""
    dsn = database_factory("changelog_rights")
    role = "bqx_test_bar_writer"
    with psycopg.connect(dsn) as conn:
        may_create_roles = conn.execute(
            "select rolsuper or rolcreaterole from pg_roles where rolname = current_user"
        ).fetchone()[0]
        if not may_create_roles:
            pytest.skip("the connected role may not create roles (the embedded server's project role)")
        raw_schema.ensure_raw_schema(conn)
        raw_schema.ensure_month_partitions(conn, [dt.date(2024, 7, 1)])
        conn.execute(f"drop role if exists {role}")
        conn.execute(f"create role {role}")
        conn.execute(f"grant usage on schema raw to {role}")
        conn.execute(f"grant insert, select on raw.m1_bars to {role}")
        conn.commit()
        try:
            conn.execute(f"set role {role}")
            conn.execute(
                "insert into raw.m1_bars (pair, ts_utc, open, high, low, close, volume) values " + BAR,
                ("EURUSD", "2024-07-01 00:00Z"),
            )
            try:
                conn.execute("delete from raw.m1_changes")
                raise AssertionError("a bar writer could erase the change log")
            except psycopg.errors.InsufficientPrivilege:
                conn.rollback()
            conn.execute(f"set role {role}")
            conn.execute(
                "insert into raw.m1_bars (pair, ts_utc, open, high, low, close, volume) values " + BAR,
                ("EURUSD", "2024-07-01 00:00Z"),
            )
            conn.execute("reset role")
            conn.commit()
            assert conn.execute("select count(*), min(changed_by) from raw.m1_changes").fetchone()[0] == 1
        finally:
            conn.rollback()
            conn.execute("reset role")
            conn.execute(f"drop owned by {role}")
            conn.execute(f"drop role {role}")
            conn.commit()
