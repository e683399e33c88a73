"""Where the project is and what it declares: its folder, the dbt vars of `dbt_project.yml`
and the user's own server (`BQX_PG_DSN`).

One home for these facts: every module, test and benchmark asks here instead of working out
paths, parsing `dbt_project.yml` or reading the environment itself. The DSN every command
uses is `bqx.server.configured_dsn()` (`ensure_server()` also starts the embedded server):
BQX_PG_DSN when set, else the embedded server's.
"""

from __future__ import annotations

import copy
import os
from functools import cache
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parents[2]
DBT_PROJECT_FILE = "dbt_project.yml"
DSN_VARIABLE = "BQX_PG_DSN"


def external_dsn() -> str | None:
    """The user's own server (BQX_PG_DSN, used as given), or None for the embedded one.

    The only reader of BQX_PG_DSN: everything else asks here or bqx.server.configured_dsn()."""
    value = os.environ.get(DSN_VARIABLE, "").strip()
    return value or None


def state_dir(project_dir: Path = PROJECT_DIR) -> Path:
    """The project's private working folder (`.bqx/`: server link, dbt profile, secrets)."""
    return project_dir / ".bqx"


@cache
def _vars_of(path: Path, mtime_ns: int) -> dict[str, Any]:
    import yaml

    document = yaml.safe_load(path.read_text())
    return dict(document.get("vars") or {})


def dbt_vars(project_dir: Path = PROJECT_DIR) -> dict[str, Any]:
    """The `vars:` of the project's dbt_project.yml (a fresh copy: callers may change it)."""
    path = project_dir / DBT_PROJECT_FILE
    return copy.deepcopy(_vars_of(path, path.stat().st_mtime_ns))
