"""The embedded server: password authentication, least privilege, nothing followed or widened
by root, a clear refusal when the data directory is not what it must be, the upgrade of a
`trust` cluster made by an older bqx, and safe concurrent starts.

Run as root, each cluster gets its own system user; every one made here is removed by the
fixture's teardown (server.destroy)."""

from __future__ import annotations

import os
import pwd
import socket
import stat
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from bqx import server
from bqx.safe_files import UnsafePathError

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="another OS user and per-cluster system users need root")


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    return _private_project(tmp_path)


_MODES_AT_CREATION: dict[Path, int] = {}


def _private_project(root: Path) -> Path:
    home = root / "home" / "someone"
    home.mkdir(parents=True)
    home.chmod(0o700)  # a user's home, private as homes are
    project = home / "project"
    project.mkdir()
    _MODES_AT_CREATION.update({path: path.stat().st_mode for path in (home.parent, home, project)})
    return project


@pytest.fixture()
def clusters() -> Iterator[Callable[..., server.EmbeddedCluster]]:
    """`make(project, name=None)` → a cluster on a free port, destroyed (with its system user) at the end."""
    made: list[server.EmbeddedCluster] = []

    def make(project: Path, name: str | None = None) -> server.EmbeddedCluster:
        cluster = server.cluster_for(project, port=server.free_port(), name=name, throwaway=True)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        server.destroy(cluster)
        if cluster.run_as:
            with pytest.raises(KeyError):
                pwd.getpwnam(cluster.run_as)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[server.EmbeddedCluster, str]]:
    """One cluster for the tests of this module (a cluster costs seconds): each test that
    breaks something restores it before it ends."""
    cluster = server.cluster_for(_private_project(tmp_path_factory.mktemp("shared")), port=server.free_port(),
                                 throwaway=True)
    try:
        yield cluster, server.start(cluster)
    finally:
        server.destroy(cluster)
    if cluster.run_as:  # the teardown removed the cluster's system user
        with pytest.raises(KeyError):
            pwd.getpwnam(cluster.run_as)


@pytest.fixture()
def started(shared: tuple[server.EmbeddedCluster, str]) -> tuple[server.EmbeddedCluster, str]:
    """The shared cluster, running."""
    return shared[0], server.start(shared[0])


@pytest.fixture()
def stopped(shared: tuple[server.EmbeddedCluster, str]) -> Iterator[server.EmbeddedCluster]:
    """The shared cluster, stopped; running again afterwards."""
    server.stop(shared[0])
    yield shared[0]
    server.start(shared[0])


def _refused(conninfo: str) -> str:
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(conninfo, connect_timeout=5).close()
    return str(caught.value)


def test_start_is_idempotent_and_stop_stops(started: tuple[server.EmbeddedCluster, str]) -> None:
    cluster, dsn = started
    with psycopg.connect(dsn) as conn:
        assert conn.execute("show jit").fetchone()[0] == "off"
        assert conn.execute("show work_mem").fetchone()[0] == "256MB"
        assert conn.execute("show password_encryption").fetchone()[0] == "scram-sha-256"
    assert server.start(cluster) == dsn  # reused, not restarted
    assert server.stop(cluster) is True
    assert server.stop(cluster) is False
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)
    assert server.start(cluster) == dsn  # data and password kept across a restart
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select current_user").fetchone()[0] == server.PROJECT_ROLE


def test_a_taken_port_gives_a_clear_error(project: Path, clusters: Callable[..., server.EmbeddedCluster]) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        cluster = server.cluster_for(project, port=port)
        with pytest.raises(server.ServerError, match=f"port {port} .* taken .*BQX_PG_PORT"):
            server.start(cluster)
    server.destroy(cluster)


def test_a_connection_without_the_password_is_refused(started: tuple[server.EmbeddedCluster, str]) -> None:
    cluster, dsn = started
    password = cluster.passfile.read_text().split(":")[-1].strip()
    assert len(password) >= 32
    assert password not in dsn and "password" not in dsn  # the DSN names the file, never the secret
    assert f"passfile={cluster.passfile}" in dsn
    base = f"host=127.0.0.1 port={cluster.port} dbname=postgres connect_timeout=5"
    empty = cluster.state / "empty-pgpass"
    empty.write_text("")
    empty.chmod(0o600)
    assert "no password supplied" in _refused(f"{base} user={server.PROJECT_ROLE} passfile={empty}")
    assert "password authentication failed" in _refused(f"{base} user={server.PROJECT_ROLE} password=wrong")
    # the superuser never over TCP, with or without a password; no replication connection
    assert "rejects connection" in _refused(f"{base} user=postgres passfile={empty}")
    replication = _refused(f"{base} user={server.PROJECT_ROLE} passfile={cluster.passfile} replication=true")
    assert "max_wal_senders" in replication or "no pg_hba.conf entry for replication" in replication
    with psycopg.connect(f"{base} user={server.PROJECT_ROLE} password={password}") as conn:
        assert conn.execute("select 1").fetchone()[0] == 1


def test_password_file_and_config_are_private(started: tuple[server.EmbeddedCluster, str]) -> None:
    cluster, _ = started
    info = os.lstat(cluster.passfile)
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.geteuid()
    hba = (cluster.conf_dir / "pg_hba.conf").read_text()
    rules = [line.split() for line in hba.splitlines() if line.strip() and not line.startswith("#")]
    assert rules and all("trust" not in rule and "replication" not in rule for rule in rules)
    assert all(rule[0] == "local" or rule[3] == "127.0.0.1/32" for rule in rules)
    assert [rule[-2:] for rule in rules if rule[0] == "local" and rule[-1] != "reject"] == [["peer", "map=bqx_admin"]]
    socket_dir = os.lstat(cluster.socket_dir)
    assert stat.S_IMODE(socket_dir.st_mode) == 0o700
    assert socket_dir.st_uid == (pwd.getpwnam(cluster.run_as).pw_uid if cluster.run_as else os.geteuid())


def test_the_project_role_is_no_superuser(started: tuple[server.EmbeddedCluster, str]) -> None:
    cluster, dsn = started
    with psycopg.connect(dsn, autocommit=True) as conn:
        role = conn.execute(
            "select rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls "
            "from pg_roles where rolname = current_user"
        ).fetchone()
        assert role == (False, True, False, False, False)
        member_of = conn.execute(
            "select rolname from pg_roles where pg_has_role(current_user, oid, 'member') and rolname <> current_user"
        ).fetchall()
        assert member_of == [("pg_database_owner",)]  # implicit: it owns the project database
        owner = conn.execute("select pg_get_userbyid(datdba) from pg_database where datname = current_database()")
        assert owner.fetchone()[0] == server.PROJECT_ROLE
        for attack in (
            "copy (select 1) to program 'id > /tmp/bqx_pwned'",
            "copy (select 1) to '/tmp/bqx_pwned'",
            "select pg_read_file('/etc/passwd')",
            "select pg_ls_dir('.')",
            "alter system set port = 1",
            "create role intruder superuser",
        ):
            with pytest.raises((errors.InsufficientPrivilege, errors.ObjectNotInPrerequisiteState)):
                conn.execute(attack)
        assert not Path("/tmp/bqx_pwned").exists()
        # what the test suite needs: throw-away databases, created and dropped by the role
        name = f"bqx_scratch_{uuid.uuid4().hex[:8]}"
        server.create_database(dsn, name)
        server.drop_database(dsn, name)


@needs_root
def test_the_server_runs_as_its_own_user_and_group(started: tuple[server.EmbeddedCluster, str]) -> None:
    cluster, _ = started
    pid = int((cluster.pgdata / "postmaster.pid").read_text().split()[0])
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    account = pwd.getpwnam(cluster.run_as)
    assert status["Uid"].split() == [str(account.pw_uid)] * 4
    assert status["Gid"].split() == [str(account.pw_gid)] * 4 and account.pw_gid != 0
    assert status["Groups"].split() == []
    assert cluster.run_as.startswith(server.SERVICE_USER_PREFIX)


@needs_root
def test_another_os_user_cannot_connect(started: tuple[server.EmbeddedCluster, str]) -> None:
    cluster, _ = started
    intruder = f"bqxprobe{uuid.uuid4().hex[:6]}"
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", intruder],
                   check=True, capture_output=True)
    try:
        account = pwd.getpwnam(intruder)

        def as_intruder(*command: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(list(command), user=account.pw_uid, group=account.pw_gid, extra_groups=[],
                                  capture_output=True, text=True, cwd="/", env={"PATH": "/usr/bin:/bin"}, check=False)

        psql = str(cluster.bin_dir / "psql")
        for role in (server.PROJECT_ROLE, "postgres"):
            done = as_intruder(psql, "-X", "-w", "-h", "127.0.0.1", "-p", str(cluster.port), "-U", role, "-d", "postgres",
                               "-c", "select 1")
            assert done.returncode != 0, done.stdout
            assert "no password supplied" in done.stderr or "rejects connection" in done.stderr, done.stderr
        # the administration socket's folder is the service user's alone
        done = as_intruder(psql, "-X", "-w", "-h", str(cluster.socket_dir), "-p", str(cluster.port), "-U", "postgres",
                           "-d", "postgres", "-c", "select 1")
        assert done.returncode != 0 and "Permission denied" in done.stderr, done.stderr
        for secret in (cluster.passfile, cluster.pgdata / "PG_VERSION", cluster.conf_dir / "bqx.conf"):
            assert as_intruder("cat", str(secret)).returncode != 0 or secret.parent == cluster.conf_dir
    finally:
        server.remove_system_user(intruder)


@needs_root
def test_one_clusters_user_cannot_reach_another_clusters_data(
    started: tuple[server.EmbeddedCluster, str], project: Path, clusters: Callable[..., server.EmbeddedCluster]
) -> None:
    first, second = started[0], clusters(project, "second")
    server.start(second)
    assert first.run_as != second.run_as
    account = pwd.getpwnam(first.run_as)
    for target in (second.pgdata, second.socket_dir):
        done = subprocess.run(["ls", str(target)], user=account.pw_uid, group=account.pw_gid, extra_groups=[],
                              capture_output=True, text=True, cwd="/", check=False)
        assert done.returncode != 0 and "Permission denied" in done.stderr


def _victim(tmp_path: Path, kind: str) -> tuple[Path, tuple[int, int, int, bytes]]:
    """A root-only file or folder (run as root; the current user's otherwise) and its state."""
    victim = tmp_path / f"victim_{kind}"
    if kind == "folder":
        victim.mkdir(mode=0o700)
        (victim / "secret").write_text("root's own\n")
        content = b""
    else:
        victim.write_text("root's secret\n")
        victim.chmod(0o600)
        content = victim.read_bytes()
    info = os.lstat(victim)
    return victim, (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode), content)


def _state(victim: Path) -> tuple[int, int, int, bytes]:
    info = os.lstat(victim)
    return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode), b"" if victim.is_dir() else victim.read_bytes()


def _plant_symlink(cluster: server.EmbeddedCluster, path: Path, target: Path) -> None:
    """What the server's account can do to what it owns: replace an entry by a symlink."""
    if path.is_dir() and not path.is_symlink():
        path.rename(path.with_name(path.name + ".moved"))
    else:
        path.unlink()
    path.symlink_to(target)
    if cluster.run_as:
        account = pwd.getpwnam(cluster.run_as)
        os.lchown(path, account.pw_uid, account.pw_gid)


def test_a_data_directory_replaced_by_a_symlink_is_refused(stopped: server.EmbeddedCluster, tmp_path: Path) -> None:
    """The attack of issue 9: pgdata replaced by a symlink to a root-owned 0700 folder; root's
    start handed that folder to the service user. Now: refused, the folder untouched."""
    cluster = stopped
    victim, before = _victim(tmp_path, "folder")
    _plant_symlink(cluster, cluster.pgdata, victim)
    try:
        with pytest.raises(UnsafePathError, match=f"{cluster.pgdata} is a symlink"):
            server.start(cluster)
        assert _state(victim) == before
        assert sorted(os.listdir(victim)) == ["secret"]
    finally:
        cluster.pgdata.unlink()
        cluster.pgdata.with_name(cluster.pgdata.name + ".moved").rename(cluster.pgdata)


def test_a_config_file_replaced_by_a_symlink_is_refused(stopped: server.EmbeddedCluster, tmp_path: Path) -> None:
    """The attack of issue 9: bqx.conf in the data directory replaced by a symlink to a
    root-only file; root's start overwrote that file. Now: refused, the file untouched."""
    cluster = stopped
    victim, before = _victim(tmp_path, "file")
    config = cluster.pgdata / server.CONFIG_FILE
    if not config.exists():
        config.write_text("")
    _plant_symlink(cluster, config, victim)
    try:
        with pytest.raises(UnsafePathError, match=f"{config} is a symlink"):
            server.start(cluster)
        assert _state(victim) == before
    finally:
        config.unlink()


def test_a_data_directory_of_the_wrong_mode_or_owner_is_refused(stopped: server.EmbeddedCluster) -> None:
    cluster = stopped
    cluster.pgdata.chmod(0o755)
    try:
        with pytest.raises(UnsafePathError, match=f"{cluster.pgdata} has mode 755"):
            server.start(cluster)
    finally:
        cluster.pgdata.chmod(0o700)
    if IS_ROOT:
        account = pwd.getpwnam(cluster.run_as)
        os.chown(cluster.pgdata, 0, 0)
        try:
            with pytest.raises(UnsafePathError, match=f"{cluster.pgdata} belongs to uid 0"):
                server.start(cluster)
        finally:
            os.chown(cluster.pgdata, account.pw_uid, account.pw_gid)


def test_a_symlinked_password_file_is_refused_not_followed(stopped: server.EmbeddedCluster, tmp_path: Path) -> None:
    """.bqx/ may belong to someone else (root in another user's checkout): nothing planted
    there is read or written through."""
    cluster = stopped
    victim, before = _victim(tmp_path, "file")
    kept = cluster.passfile.with_name("kept")
    cluster.passfile.rename(kept)
    cluster.passfile.symlink_to(victim)
    try:
        with pytest.raises(UnsafePathError, match=f"{cluster.passfile} cannot be read safely"):
            server.start(cluster)
        assert _state(victim) == before
    finally:
        kept.replace(cluster.passfile)


def _legacy_cluster(cluster: server.EmbeddedCluster) -> None:
    """A cluster as bqx made it before authentication: initdb --auth=trust, superuser
    `postgres` open on 127.0.0.1, as root the shared `bqx_postgres` owning its folder, and a
    table the superuser created in the project database."""
    legacy = None
    if cluster.run_as:
        created_legacy = False
        try:
            pwd.getpwnam(server.LEGACY_SERVICE_USER)
        except KeyError:
            created_legacy = True
        legacy = server._ensure_system_user(server.LEGACY_SERVICE_USER, "bqx PostgreSQL (legacy, test)")
        with server._root_place():
            pass  # binaries and /var/lib/bqx/clusters, as the old layout had them
        cluster.home.mkdir(mode=0o700)
        os.chown(cluster.home, legacy.uid, legacy.gid)
        cluster.state.mkdir(mode=0o700, exist_ok=True)
        cluster.link.symlink_to(cluster.pgdata)
        if created_legacy:
            _created_legacy_users.append(server.LEGACY_SERVICE_USER)
    cluster.pgdata.mkdir(mode=0o700, parents=True)
    if legacy:
        os.chown(cluster.pgdata, legacy.uid, legacy.gid)
    server._run(cluster, "initdb", ["-D", str(cluster.pgdata), "--auth=trust", "-U", "postgres", "--locale=C", "--encoding=UTF8"],
                account=legacy)
    server._run(cluster, "pg_ctl", ["-D", str(cluster.pgdata), "-l", str(cluster.log_file), "-w",
                                    "-o", f"-c port={cluster.port} -c unix_socket_directories=", "start"],
                account=legacy)
    old = f"postgresql://postgres@127.0.0.1:{cluster.port}"
    with psycopg.connect(f"{old}/postgres", autocommit=True) as conn:
        conn.execute("create database bqx")
    with psycopg.connect(f"{old}/bqx", autocommit=True) as conn:
        conn.execute(
            "create schema raw; create table raw.bars (id serial primary key, v int) partition by range (id); "
            "create table raw.bars_1 partition of raw.bars for values from (0) to (1000); "
            "insert into raw.bars (v) values (1); create view raw.bars_view as select * from raw.bars; "
            "create function raw.one() returns int language sql as 'select 1'"
        )


_created_legacy_users: list[str] = []


@pytest.fixture()
def legacy_user_cleanup() -> Iterator[None]:
    yield
    while _created_legacy_users:
        server.remove_system_user(_created_legacy_users.pop())


def test_a_trust_cluster_of_an_older_bqx_is_closed_on_its_next_start(
    legacy_user_cleanup: None, project: Path, clusters: Callable[..., server.EmbeddedCluster]
) -> None:
    cluster = clusters(project)
    _legacy_cluster(cluster)  # left running, as an older `bqx db start` leaves it
    open_door = f"postgresql://postgres@127.0.0.1:{cluster.port}/bqx"
    psycopg.connect(open_door).close()  # today: anyone on the machine is superuser
    dsn = server.start(cluster)
    assert "rejects connection" in _refused(open_door)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("insert into raw.bars (v) values (2)")
        assert conn.execute("select count(*), raw.one() from raw.bars_view").fetchone() == (2, 1)
        owners = conn.execute(
            "select distinct pg_get_userbyid(relowner) from pg_class where relnamespace = 'raw'::regnamespace"
        ).fetchall()
        assert owners == [(server.PROJECT_ROLE,)]
    assert "trust" not in (cluster.pgdata / "pg_hba.conf").read_text()  # the data directory's copy too
    if cluster.run_as:
        legacy_uid = pwd.getpwnam(server.LEGACY_SERVICE_USER).pw_uid
        left = [path for path in [cluster.home, *cluster.home.rglob("*")] if path.lstat().st_uid == legacy_uid]
        assert left == []
        assert os.stat(cluster.home).st_uid == 0


def test_two_starts_at_once_share_one_server(stopped: server.EmbeddedCluster) -> None:
    """Two `bqx db start` at once: the second waits for the first (a lock) and reuses its server."""
    cluster = stopped
    script = textwrap.dedent(f"""
        from pathlib import Path
        from bqx import server
        print(server.start(server.cluster_for(Path({str(cluster.state.parent)!r}), port={cluster.port})))
    """)
    runs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(3)]
    results = [run.communicate(timeout=180) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], results
    assert {out for out, _ in results} == {cluster.dsn() + "\n"}
    with psycopg.connect(cluster.dsn()) as conn:
        assert conn.execute("select count(*) from pg_database where datname = 'bqx'").fetchone()[0] == 1


def test_nothing_is_widened_outside_our_own_place(started: tuple[server.EmbeddedCluster, str]) -> None:
    """As root the server runs as another user; the private home and the project keep their modes.
    Its folders: /var/lib/bqx and the cluster's home traverse-only, conf/ root's, pgdata 0700."""
    cluster, _ = started
    project = cluster.state.parent
    before = {path: mode for path, mode in _MODES_AT_CREATION.items() if project.is_relative_to(path)}
    assert len(before) == 3
    assert {path: path.stat().st_mode for path in before} == before
    if IS_ROOT:
        assert cluster.run_as == server.SERVICE_USER_PREFIX + cluster.home.name
        for place in (server.ROOT_PLACE, server.ROOT_PLACE / "clusters", cluster.home):
            info = os.lstat(place)
            assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o711)  # traverse only: nobody can list it
        conf = os.lstat(cluster.conf_dir)
        assert (conf.st_uid, stat.S_IMODE(conf.st_mode)) == (0, 0o755)
        assert (project / ".bqx" / "pgdata").is_symlink()
        assert stat.S_IMODE(cluster.pgdata.stat().st_mode) == 0o700


def test_dsn_helpers() -> None:
    url = "postgresql://alice:s3cret@db.example:5433/prod?sslmode=require"
    parts = server.dsn_parts(url)
    assert {key: parts[key] for key in ("host", "port", "user", "password", "dbname", "sslmode")} == {
        "host": "db.example", "port": "5433", "user": "alice", "password": "s3cret", "dbname": "prod",
        "sslmode": "require",
    }
    assert server.with_database(url, "scratch") == "postgresql://alice:s3cret@db.example:5433/scratch?sslmode=require"
    assert server.dsn_parts("host=h port=6000 user=u dbname=d")["port"] == "6000"
    assert server.dsn_parts("host=h passfile=/p/pgpass")["passfile"] == "/p/pgpass"
    assert psycopg.conninfo.conninfo_to_dict(server.with_database("host=h dbname=d", "x")) == {"host": "h", "dbname": "x"}
    assert "s3cret" not in server.redacted(url)
