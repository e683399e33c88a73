"""`make test-citus`: the wave-1 build distributed by pair on a real Citus cluster equals the same
builds on the same PostgreSQL 15 without distribution, bit for bit, and every model's select runs on
the workers (one task per shard, no distributed subplan).

Collected only when BQX_CITUS_DSN names a Citus coordinator as a superuser (`make test-citus`
starts ../shared/citus/cluster.sh and sets it; conftest.py leaves this module out otherwise, so
`make test` neither runs nor counts it). Each run creates its own databases on the coordinator
and the workers and drops them at the end."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest

from bqx.distribute import distribute, record_loaded_changes
from bqx.features import AsOfOptions, RetrievalError, as_of, as_of_sql
from bqx.load import load_frame
from citus_cluster import create_citus_database, create_plain_database, drop_database
from conftest import FIXTURE_PAIRS, query_frame
from model_compare import assert_same_tables, model_tables
from test_incremental import staged_loads
from test_window_partitions import compiled_models, unpartitioned_windows

CITUS_DSN = os.environ["BQX_CITUS_DSN"]


@pytest.fixture(scope="module")
def databases() -> Iterator[tuple[str, str]]:
    """(distributed, plain): a Citus database on every node of the cluster, distributed by
    `bqx db distribute`'s code, and a database without Citus on the coordinator's server."""
    suffix = uuid.uuid4().hex[:8]
    names = (f"bqx_test_citus_{suffix}", f"bqx_test_plain_{suffix}")
    try:
        citus = create_citus_database(CITUS_DSN, names[0])
        plain = create_plain_database(CITUS_DSN, names[1])
        with psycopg.connect(citus) as conn:
            done = distribute(conn)
        assert done[0] == "raw.m1_bars distributed by pair over 2 workers", done
        yield citus, plain
    finally:
        for name in names:
            drop_database(CITUS_DSN, name)


def _apply(dsn: str, stage: list[tuple[str, pd.DataFrame | str]], *, distributed: bool) -> None:
    for name, what in stage:
        if isinstance(what, str):
            # a write by SQL: on Citus no trigger records it, so the writer records it (README)
            pair, ts = re.search(r"pair = '(\w+)' and ts_utc = '([^']+)'", what).groups()
            with psycopg.connect(dsn) as conn:
                assert conn.execute(what).rowcount == 1, name
                if distributed:
                    at = pd.Timestamp(ts)
                    record_loaded_changes(conn, [(pair, at, at, 1)], "delete")
        else:
            summary = load_frame(dsn, what, name)
            assert sum(f.rows_rejected for f in summary.files) == 0, name


def _shard_count(dsn: str) -> int:
    return int(query_frame(dsn, "select count(*) as n from pg_dist_shard where logicalrelid = 'raw.m1_bars'::regclass")["n"][0])


def _explain(dsn: str, select: str) -> str:
    with psycopg.connect(dsn) as conn:
        return "\n".join(row[0] for row in conn.execute(f"explain (costs off) {select}").fetchall())


def _assert_pushed_down(dsn: str, name: str, select: str, shards: int) -> None:
    plan = _explain(dsn, select)
    assert "subplan" not in plan.lower(), f"{name}: a distributed subplan:\n{plan[:3000]}"
    assert f"Task Count: {shards}" in plan, f"{name}: not one task per shard:\n{plan[:3000]}"


def test_the_wave1_build_on_citus_equals_postgresql_bit_for_bit(
    databases: tuple[str, str], dbt_runner: Callable[..., Path], fixture_bars: pd.DataFrame
) -> None:
    citus, plain = databases
    shards = _shard_count(citus)
    for number, stage in enumerate(staged_loads(fixture_bars), start=1):
        _apply(citus, stage, distributed=True)
        _apply(plain, stage, distributed=False)
        # a full build first (no table yet), then incremental builds of each stage's changes:
        # the corrections (a bar loaded wrong, the baseline bar), a deleted bar, a gap filled late
        target = dbt_runner(citus, "run", "--select", "tag:wave1")
        dbt_runner(plain, "run", "--select", "tag:wave1")
        tables = assert_same_tables(citus, plain, f"stage {number}")
        # each table model's select as this build ran it (dbt's compiled/: rendered while running,
        # so an increment's bounds are there as the VALUES list it joined)
        compiled = compiled_models(target)
        for table in ["staging.baseline_rates", *tables]:
            name = table.split(".")[1]
            _assert_pushed_down(citus, f"stage {number} {name}", compiled[name], shards)
        unpartitioned = {name: bad for name, sql in compiled.items() if (bad := unpartitioned_windows(sql)[1])}
        assert not unpartitioned, unpartitioned

    # distributed by pair, colocated with the bars; nothing left on the coordinator
    placed = query_frame(
        citus,
        "select logicalrelid::regclass::text as name, partmethod, colocationid = "
        "(select colocationid from pg_dist_partition where logicalrelid = 'raw.m1_bars'::regclass) as colocated "
        "from pg_dist_partition",
    ).set_index("name")
    for table in tables:
        assert placed.loc[table, "partmethod"] == "h" and placed.loc[table, "colocated"], table
    assert placed.loc["staging.baseline_rates", "partmethod"] == "n"
    local = query_frame(
        citus,
        "select c.oid::regclass::text as name, pg_relation_size(c.oid) as bytes from pg_class as c "
        "join pg_namespace as n on n.oid = c.relnamespace "
        "where n.nspname in ('raw', 'staging', 'features', 'marts') and c.relkind = 'r' "
        "and c.relname not in ('m1_changes') and pg_relation_size(c.oid) > 0",
    )
    assert local.empty, f"rows stored on the coordinator:\n{local}"
    assert model_tables(citus) == tables

    # every data test on every row, on the cluster
    dbt_runner(citus, "test", "--select", "tag:wave1")


def test_point_in_time_retrieval_on_citus_equals_postgresql(databases: tuple[str, str], tmp_path: Path) -> None:
    citus, plain = databases
    rng = np.random.default_rng(13)
    count = 2000
    start = pd.Timestamp("2024-06-23", tz="UTC")
    events = pd.DataFrame(
        {
            "pair": rng.choice(list(FIXTURE_PAIRS), count),
            "event_time": start + pd.to_timedelta(rng.integers(0, 17 * 24 * 60 * 60, count), unit="s"),
            "signal": np.arange(count),
        }
    )
    # at a bar's open and close, duplicated
    events.loc[0:3, "event_time"] = pd.Timestamp("2024-07-03 14:07", tz="UTC")
    events.loc[4:5, "event_time"] = pd.Timestamp("2024-07-03 14:08", tz="UTC")
    on_citus = as_of(events, dsn=citus)  # auto: the merge, the one method that runs on the shards
    assert len(on_citus) == count
    assert set(on_citus["feature_missing_reason"].dropna()) >= {"stale", "before_first_bar"}
    for method in ("window", "index"):
        on_plain = as_of(events, dsn=plain, method=method)
        pd.testing.assert_frame_equal(on_citus, on_plain, check_exact=True)
    # the columnar mirror, filled from the distributed tables (per-pair router queries), then read
    for _ in range(2):
        mirrored = as_of(events, dsn=citus, method="mirror", mirror_dir=tmp_path / "mirror")
        pd.testing.assert_frame_equal(on_citus, mirrored, check_exact=True)
    with pytest.raises(RetrievalError, match="single server"):
        as_of(events, dsn=citus, method="index")
    # the session's events schema is gone, whether the retrieval ended or failed
    assert query_frame(citus, "select count(*) as n from pg_namespace where nspname like 'bqx_as_of_%'")["n"][0] == 0

    # every step over the events runs on the shards: one task per shard, and the one query
    # planned apart is the frontier (the configured pairs' lookups, on the coordinator)
    sql = as_of_sql(citus, AsOfOptions(), "window", distributed=True)
    with psycopg.connect(citus) as conn:
        conn.execute("create schema bqx_as_of_plan")
        conn.execute("create table bqx_as_of_plan.bqx_as_of_events (pair text, event_time timestamptz, bqx_event_ordinal bigint)")
        conn.execute("select create_distributed_table('bqx_as_of_plan.bqx_as_of_events', 'pair', colocate_with => 'raw.m1_bars')")
        conn.execute("set search_path to bqx_as_of_plan, public")
        plan = "\n".join(row[0] for row in conn.execute(f"explain (costs off) {sql}").fetchall())
        conn.rollback()
    subplans = re.findall(r"Distributed Subplan \S+\n\s+->  (.*)", plan)
    assert subplans == ['Values Scan on "*VALUES*"'], plan[:4000]
    assert f"Task Count: {_shard_count(citus)}" in plan, plan[:4000]
