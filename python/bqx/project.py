"""Where the project is and what it declares: its folder and the dbt vars of `dbt_project.yml`.

One home for these facts: every module, test and benchmark asks here instead of working out
paths or parsing `dbt_project.yml` itself.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parents[2]
DBT_PROJECT_FILE = "dbt_project.yml"


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
