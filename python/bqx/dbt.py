"""Running dbt against the configured server: the profile comes from profiles.example.yml,
filled through environment variables derived from a DSN."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bqx.project import PROJECT_DIR
from bqx.server import dsn_parts


def profiles_dir(project_dir: Path = PROJECT_DIR) -> Path:
    """A folder holding profiles.yml = the project's profiles.example.yml (kept in sync)."""
    folder = project_dir / ".bqx" / "dbt"
    folder.mkdir(parents=True, exist_ok=True)
    source = project_dir / "profiles.example.yml"
    target = folder / "profiles.yml"
    if not target.exists() or target.read_bytes() != source.read_bytes():
        tmp = folder / f".profiles.{os.getpid()}.yml"
        shutil.copyfile(source, tmp)
        tmp.replace(target)
    return folder


def dbt_env(dsn: str, project_dir: Path = PROJECT_DIR) -> dict[str, str]:
    """The environment under which the project's profile reaches the server of `dsn`."""
    parts = dsn_parts(dsn)
    env = dict(os.environ)
    env.update(
        BQX_PG_HOST=parts["host"],
        BQX_PG_PORT=parts["port"],
        BQX_PG_USER=parts["user"],
        BQX_PG_PASSWORD=parts["password"],
        BQX_PG_DATABASE=parts["dbname"],
        DBT_PROFILES_DIR=str(profiles_dir(project_dir)),
        DBT_SEND_ANONYMOUS_USAGE_STATS="false",
    )
    return env


def dbt_executable() -> str:
    candidate = Path(sys.executable).with_name("dbt")
    return str(candidate) if candidate.exists() else "dbt"


def run_dbt(
    args: list[str],
    dsn: str,
    *,
    project_dir: Path = PROJECT_DIR,
    target_path: Path | None = None,
    capture: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run `dbt ARGS` in the project against `dsn`. `target_path` separates concurrent runs."""
    command = [dbt_executable(), *args]
    if target_path is not None:
        command += ["--target-path", str(target_path)]
        env_log = {"DBT_LOG_PATH": str(target_path / "logs")}
    else:
        env_log = {}
    env = dbt_env(dsn, project_dir) | env_log
    return subprocess.run(
        command,
        cwd=project_dir,
        env=env,
        text=True,
        capture_output=capture,
        check=False,
    )
