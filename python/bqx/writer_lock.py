"""One writer at a time: `bqx build` and `bqx load` hold a PostgreSQL advisory lock on the
database for their whole run, on a dedicated connection (session-level: released when the
connection closes, so a killed process never leaves it behind).

A second writer waits, saying who holds the lock (its application name, pid, since when), or
fails at once with `no_wait`. The models of a plain `dbt run` take the same lock shared for
each model's transaction (macros/incremental/build_state.sql, writer_lock_shared): they wait
behind a load, and a load waits for the model being written.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg

# (classid, objid) of the two-key advisory lock; the same numbers as writer_lock_keys() in
# macros/incremental/build_state.sql
LOCK_KEYS = (42817, 1)


class WriterBusy(RuntimeError):
    """Another writer holds the lock and the caller asked not to wait."""


@dataclass(frozen=True)
class Holder:
    pid: int
    application_name: str
    user: str
    since: dt.datetime | None
    client: str | None

    def describe(self) -> str:
        since = self.since.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if self.since else "?"
        where = f" from {self.client}" if self.client else ""
        name = self.application_name or "a session without application_name"
        return f"{name} (server pid {self.pid}, user {self.user}{where}, since {since})"


def holders(conn: psycopg.Connection) -> list[Holder]:
    """The sessions holding the writer lock (exclusively: a writer; shared: a dbt model)."""
    rows = conn.execute(
        """
        select activity.pid, coalesce(activity.application_name, ''), coalesce(activity.usename::text, ''),
               activity.backend_start, activity.client_addr::text
        from pg_catalog.pg_locks as held
        join pg_catalog.pg_stat_activity as activity on activity.pid = held.pid
        where held.locktype = 'advisory' and held.classid = %s and held.objid = %s and held.objsubid = 2
          and held.granted and held.database = (select oid from pg_database where datname = current_database())
        order by activity.backend_start
        """,
        LOCK_KEYS,
    ).fetchall()
    return [Holder(*row) for row in rows]


def _notify(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def writer_lock(
    dsn: str, purpose: str, *, wait: bool = True, notify: Callable[[str], None] = _notify
) -> Iterator[psycopg.Connection]:
    """Hold the writer lock for the `with` block; yields the lock's connection (its backend pid
    is what `bqx build` gives its dbt as the session setting bqx.writer_pid)."""
    name = f"bqx {purpose} (pid {os.getpid()})"
    conn = psycopg.connect(dsn, autocommit=True, application_name=name[:63])
    try:
        got = conn.execute("select pg_try_advisory_lock(%s, %s)", LOCK_KEYS).fetchone()[0]
        if not got:
            busy = holders(conn)
            who = "; ".join(h.describe() for h in busy) or "another session (it has just let go)"
            if not wait:
                raise WriterBusy(f"the database is being written by {who}: not waiting (--no-wait)")
            notify(f"bqx {purpose}: waiting for the database's writer lock, held by {who}")
            conn.execute("select pg_advisory_lock(%s, %s)", LOCK_KEYS)
            notify(f"bqx {purpose}: got the writer lock")
        yield conn
    finally:
        conn.close()  # releases the session lock
