"""The embedded server: idempotent start, clear errors, nothing widened on the machine."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import psycopg
import pytest

from bqx import server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    home = tmp_path / "home" / "someone"
    home.mkdir(parents=True)
    home.chmod(0o700)  # a user's home, private as homes are
    project = home / "project"
    project.mkdir()
    return project


def test_start_is_idempotent_and_stop_stops(project: Path) -> None:
    cluster = server.cluster_for(project, port=_free_port())
    link = project / ".bqx" / "pgdata"
    try:
        dsn = server.start(cluster, link=link)
        with psycopg.connect(dsn) as conn:
            assert conn.execute("show jit").fetchone()[0] == "off"
            assert conn.execute("show work_mem").fetchone()[0] == "256MB"
        assert server.start(cluster, link=link) == dsn  # reused, not restarted
        assert server.stop(cluster) is True
        assert server.stop(cluster) is False
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsn, connect_timeout=2)
        assert server.start(cluster, link=link) == dsn  # data kept across a restart
    finally:
        server.destroy(cluster)


def test_a_taken_port_gives_a_clear_error(project: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        cluster = server.cluster_for(project, port=port)
        with pytest.raises(server.ServerError, match=f"port {port} .* taken .*BQX_PG_PORT"):
            server.start(cluster, link=project / ".bqx" / "pgdata")
    server.destroy(cluster)


def test_nothing_is_widened_outside_our_own_place(project: Path) -> None:
    """As root the server runs as another user; the private home and the project keep their modes."""
    home = project.parent
    before = {path: path.stat().st_mode for path in (home, project, home.parent)}
    cluster = server.cluster_for(project, port=_free_port())
    try:
        server.start(cluster, link=project / ".bqx" / "pgdata")
        after = {path: path.stat().st_mode for path in before}
        assert after == before
        if os.geteuid() == 0:
            assert cluster.run_as == server.SERVICE_USER
            place = stat.S_IMODE(server.ROOT_PLACE.stat().st_mode)
            assert place == 0o711  # traverse only: nobody can list it
            assert (project / ".bqx" / "pgdata").is_symlink()
            assert stat.S_IMODE(cluster.pgdata.stat().st_mode) == 0o700
    finally:
        server.destroy(cluster)


def test_dsn_helpers() -> None:
    url = "postgresql://alice:s3cret@db.example:5433/prod"
    assert server.dsn_parts(url) == {
        "host": "db.example", "port": "5433", "user": "alice", "password": "s3cret", "dbname": "prod",
    }
    assert server.with_database(url, "scratch") == "postgresql://alice:s3cret@db.example:5433/scratch"
    assert server.dsn_parts("host=h port=6000 user=u dbname=d")["port"] == "6000"
    assert server.with_database("host=h dbname=d", "x") == "host=h dbname=x"
