"""`bqx db distribute` on a server without Citus: a one-line error, nothing changed (the Citus
side is tested by `make test-citus`, python/tests/test_citus.py)."""

from __future__ import annotations

import psycopg
import pytest

from bqx.distribute import DistributeError, distribute, source_distributed


def test_distribute_needs_citus_and_changes_nothing_without_it(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        with pytest.raises(DistributeError, match="no citus extension"):
            distribute(conn)
        assert not source_distributed(conn)
        assert conn.execute("select to_regclass('raw.m1_bars')").fetchone()[0] is None
