"""sqlfluff (postgres dialect, dbt templater) on every model, analysis and singular test.

The dbt templater compiles each model and looks its relation up (is_incremental()), so it
needs a server: it lints against the built wave-1 test database, i.e. the incremental branch
of every feature model, the one production runs take."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bqx.dbt import dbt_env
from bqx.project import PROJECT_DIR


def test_sqlfluff_lint_is_clean(wave1_dsn: str) -> None:
    sqlfluff = Path(sys.executable).with_name("sqlfluff")
    paths = [folder for folder in ("models", "analyses", "tests") if (PROJECT_DIR / folder).is_dir()]
    assert "models" in paths
    done = subprocess.run(
        [str(sqlfluff), "lint", *paths],
        cwd=PROJECT_DIR,
        env=dbt_env(wave1_dsn),
        capture_output=True,
        text=True,
        check=False,
    )
    report = "\n".join(line for line in done.stdout.splitlines() if "Skipped file" not in line)
    assert done.returncode == 0, f"sqlfluff lint found problems:\n{report[-8000:]}\n{done.stderr[-2000:]}"
