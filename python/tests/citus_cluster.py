"""Throw-away databases on the shared Citus test cluster (../shared/citus/cluster.sh, started by
`make test-citus`, whose DSN names the coordinator's database `bqx` as the superuser): a Citus
database is created on the coordinator and on every worker, and the workers are added to it, so
each test run starts from empty nodes and leaves nothing behind."""

from __future__ import annotations

import time

import psycopg
from psycopg import sql

from bqx.server import with_database


def node_ports(admin_dsn: str) -> tuple[str, list[int]]:
    """The coordinator's host and the ports of the workers the cluster's database knows."""
    with psycopg.connect(admin_dsn) as conn:
        rows = conn.execute(
            "select nodename, nodeport from pg_dist_node where noderole = 'primary' and groupid <> 0 order by nodeport"
        ).fetchall()
        host = conn.info.host
    return host, [port for _, port in rows]


def _on_node(admin_dsn: str, port: int, database: str) -> str:
    return psycopg.conninfo.make_conninfo(with_database(admin_dsn, database), port=port)


def create_citus_database(admin_dsn: str, name: str) -> str:
    """A new database `name` with Citus on the coordinator and every worker, workers added;
    returns its DSN on the coordinator."""
    host, workers = node_ports(admin_dsn)
    coordinator_port = int(psycopg.conninfo.conninfo_to_dict(admin_dsn).get("port") or 5432)
    for port in [coordinator_port, *workers]:
        with psycopg.connect(_on_node(admin_dsn, port, "postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        with psycopg.connect(_on_node(admin_dsn, port, name), autocommit=True) as conn:
            conn.execute("set client_min_messages = warning")
            conn.execute("create extension citus")
    dsn = _on_node(admin_dsn, coordinator_port, name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select citus_set_coordinator_host(%s, %s)", (host, coordinator_port))
        for port in workers:
            conn.execute("select citus_add_node(%s, %s)", (host, port))
    return dsn


def create_plain_database(admin_dsn: str, name: str) -> str:
    """A database without Citus on the coordinator (the same PostgreSQL 15 server)."""
    with psycopg.connect(with_database(admin_dsn, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    return with_database(admin_dsn, name)


def drop_database(admin_dsn: str, name: str, attempts: int = 5) -> None:
    """Drop `name` on the coordinator and every worker (where it exists). A session that connects
    while the drop terminates the others (Citus' maintenance daemon, an autovacuum worker) can
    make one attempt fail: retried, then the error is raised."""
    _, workers = node_ports(admin_dsn)
    coordinator_port = int(psycopg.conninfo.conninfo_to_dict(admin_dsn).get("port") or 5432)
    for port in [coordinator_port, *workers]:
        for attempt in range(attempts):
            try:
                with psycopg.connect(_on_node(admin_dsn, port, "postgres"), autocommit=True) as conn:
                    conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
                break
            except psycopg.errors.ObjectInUse:
                if attempt == attempts - 1:
                    raise
                time.sleep(1 + attempt)
