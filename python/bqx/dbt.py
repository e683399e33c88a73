"""Running dbt against the configured server: the profile comes from profiles.example.yml,
filled through environment variables derived from a DSN."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from bqx import safe_files
from bqx.project import PROJECT_DIR, state_dir
from bqx.safe_files import UnsafePathError
from bqx.server import dsn_parts

# The DSN parameters profiles.example.yml reads itself; every other one (passfile, sslmode,
# sslrootcert, ...) reaches dbt's libpq through its environment variable (PGPASSFILE, ...).
PROFILE_VARIABLES = {
    "host": "BQX_PG_HOST",
    "port": "BQX_PG_PORT",
    "user": "BQX_PG_USER",
    "password": "BQX_PG_PASSWORD",
    "dbname": "BQX_PG_DATABASE",
}


def profiles_dir(project_dir: Path = PROJECT_DIR) -> Path:
    """A folder holding profiles.yml = the project's profiles.example.yml (kept in sync)."""
    folder = state_dir(project_dir) / "dbt"
    source = (project_dir / "profiles.example.yml").read_bytes()
    with safe_files.opened_dir(state_dir(project_dir), create_mode=0o700) as state:
        fd = safe_files.open_subdir(state, "dbt", folder, create_mode=0o700)
        try:
            if safe_files.read_file(fd, "profiles.yml", folder / "profiles.yml") != source:
                safe_files.write_file(fd, "profiles.yml", source, mode=0o644)
        finally:
            os.close(fd)
    return folder


def _libpq_variables() -> dict[str, str]:
    import psycopg

    return {
        option.keyword.decode(): option.envvar.decode()
        for option in psycopg.pq.Conninfo.get_defaults()
        if option.envvar is not None
    }


def dbt_env(dsn: str, project_dir: Path = PROJECT_DIR) -> dict[str, str]:
    """The environment under which the project's profile reaches the server of `dsn`.

    An empty password makes libpq (psycopg2 in dbt) read the password file, so the embedded
    server's DSN (`passfile=`) reaches dbt as PGPASSFILE and no password is ever in the env."""
    parts = dsn_parts(dsn)
    libpq = _libpq_variables()
    env = dict(os.environ)
    env.update({variable: parts[key] for key, variable in PROFILE_VARIABLES.items()})
    for key, value in parts.items():
        if key not in PROFILE_VARIABLES and key in libpq:
            env[libpq[key]] = value
    env.update(DBT_PROFILES_DIR=str(profiles_dir(project_dir)), DBT_SEND_ANONYMOUS_USAGE_STATS="false")
    return env


def dbt_executable() -> str:
    candidate = Path(sys.executable).with_name("dbt")
    return str(candidate) if candidate.exists() else "dbt"


def check_output_folder(path: Path) -> None:
    """dbt writes target/ and logs/ with plain opens: refuse a folder that is a symlink or
    belongs to someone else (run as root in another user's checkout, dbt would follow what
    that user plants there)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise UnsafePathError(f"{path} is not a folder (a symlink?): dbt would write through it; remove it")
    if info.st_uid not in (0, os.geteuid()):
        raise UnsafePathError(
            f"{path} belongs to uid {info.st_uid}: dbt would write into it as uid {os.geteuid()}; "
            "remove it or run as its owner"
        )


def run_dbt(
    args: list[str],
    dsn: str,
    *,
    project_dir: Path = PROJECT_DIR,
    target_path: Path | None = None,
    capture: bool = False,
    session_settings: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `dbt ARGS` in the project against `dsn`. `target_path` separates concurrent runs;
    `session_settings` are set on every connection dbt opens (libpq's PGOPTIONS), which unlike a
    var leaves dbt's partial parse valid."""
    command = [dbt_executable(), *args]
    env = dbt_env(dsn, project_dir)
    if session_settings:
        options = " ".join(f"-c {name}={value}" for name, value in session_settings.items())
        env["PGOPTIONS"] = f"{env['PGOPTIONS']} {options}" if env.get("PGOPTIONS") else options
    if target_path is not None:
        command += ["--target-path", str(target_path)]
        env["DBT_LOG_PATH"] = str(target_path / "logs")
    for folder in (
        Path(env.get("DBT_TARGET_PATH", target_path or project_dir / "target")),
        Path(env.get("DBT_LOG_PATH", project_dir / "logs")),
    ):
        check_output_folder(folder if folder.is_absolute() else project_dir / folder)
    return subprocess.run(command, cwd=project_dir, env=env, text=True, capture_output=capture, check=False)
