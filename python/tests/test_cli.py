"""The `bqx` command line: dbt's and sqlfluff's options reach them, errors are one line, and
every `bqx` command the README shows runs as written.

The commands run as the installed console script (`.venv/bin/bqx`) in the project folder,
against a copy of the wave-1 test database (BQX_PG_DSN), with HOME, dbt's target and logs in
temporary folders: nothing of the checkout's own server or build is touched."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from bqx import cli, server
from bqx.project import PROJECT_DIR

BQX = Path(sys.executable).with_name("bqx")
README = PROJECT_DIR / "README.md"


def clone_database(admin_dsn: str, source_dsn: str, purpose: str) -> str:
    """A copy of the database of `source_dsn` (CREATE DATABASE … TEMPLATE: a file copy)."""
    source = psycopg.conninfo.conninfo_to_dict(source_dsn).get("dbname") or server.dsn_parts(source_dsn)["dbname"]
    name = f"bqx_test_{purpose}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        for attempt in range(20):  # a session of an earlier test may still be closing
            try:
                conn.execute(
                    psycopg.sql.SQL("create database {} template {}").format(
                        psycopg.sql.Identifier(name), psycopg.sql.Identifier(source)
                    )
                )
                break
            except psycopg.errors.ObjectInUse:
                if attempt == 19:
                    raise
                time.sleep(0.5)
    return server.with_database(admin_dsn, name)


@pytest.fixture()
def database_copy(pg_admin_dsn: str, wave1_dsn: str) -> Callable[[str], str]:
    made: list[str] = []

    def make(purpose: str) -> str:
        dsn = clone_database(pg_admin_dsn, wave1_dsn, purpose)
        made.append(server.dsn_parts(dsn)["dbname"])
        return dsn

    yield make
    for name in made:
        server.drop_database(pg_admin_dsn, name)


def bqx_env(tmp_path: Path, dsn: str | None) -> dict[str, str]:
    """A user's environment: HOME in a temporary folder, dbt's target and logs there too."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("BQX_", "DBT_"))}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), DBT_TARGET_PATH=str(tmp_path / "target"), DBT_LOG_PATH=str(tmp_path / "logs"))
    if dsn is not None:
        env["BQX_PG_DSN"] = dsn
    return env


def run_bqx(args: list[str], env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BQX), *args], cwd=PROJECT_DIR, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


# --- arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "dbt_args"),
    [
        (["build"], ["build", "--select", "tag:wave1"]),
        (["build", "--full-refresh"], ["build", "--select", "tag:wave1", "--full-refresh"]),
        (["build", "--vars", '{"baseline_date": "2017-01-01"}'],
         ["build", "--select", "tag:wave1", "--vars", '{"baseline_date": "2017-01-01"}']),
        (["build", "-s", "bqx"], ["build", "-s", "bqx"]),
        (["build", "--select=bqx+", "--exclude", "targets", "--threads", "1"],
         ["build", "--select=bqx+", "--exclude", "targets", "--threads", "1"]),
        (["build", "--exclude", "targets"], ["build", "--select", "tag:wave1", "--exclude", "targets"]),
    ],
)
def test_build_hands_every_option_to_dbt(argv: list[str], dbt_args: list[str]) -> None:
    args = cli.parse(argv)
    assert args.func is cli.cmd_build
    assert cli.build_arguments(args.extra) == dbt_args


def test_dbt_and_lint_hand_their_arguments_over_untouched(tmp_path: Path) -> None:
    assert cli.parse(["dbt", "ls", "-s", "bqx", "--output", "json"]).extra == ["ls", "-s", "bqx", "--output", "json"]
    assert cli.parse(["dbt", "--help"]).extra == ["--help"]
    lint = cli.parse(["lint", "--rules", "LT01", "--format", "json"])
    # the default paths are the project's SQL folders that exist (this checkout has no analyses/)
    for folder in ("models/staging", "analyses", "tests"):
        (tmp_path / folder).mkdir(parents=True)
    assert cli.lint_arguments(lint.extra, tmp_path) == [
        "lint", "--rules", "LT01", "--format", "json", "models", "analyses", "tests"
    ]
    assert cli.lint_arguments(["models/staging", "-v"], tmp_path) == ["lint", "models/staging", "-v"]


@pytest.mark.parametrize(
    ("argv", "own", "dbt_args"),
    [
        (["build", "--from", "2024-08-01", "--to=2024-09-01", "--full-refresh"],
         {"recompute_from": "2024-08-01", "recompute_to": "2024-09-01"}, ["--full-refresh"]),
        (["build", "-s", "bqx+", "--no-wait", "--full-tests", "--audit-sample", "0"],
         {"no_wait": True, "full_tests": True, "audit_sample": 0}, ["-s", "bqx+"]),
        (["build", "--vars", '{"baseline_date": "2017-01-01"}'], {}, ["--vars", '{"baseline_date": "2017-01-01"}']),
    ],
)
def test_build_takes_its_own_options_and_hands_the_rest_to_dbt(
    argv: list[str], own: dict[str, object], dbt_args: list[str]
) -> None:
    assert cli.split_build_options(cli.parse(argv).extra) == (own, dbt_args)


@pytest.mark.parametrize("argv", [["--from"], ["--no-wait=yes"], ["--audit-sample", "many"]])
def test_build_options_in_error_are_named(argv: list[str]) -> None:
    with pytest.raises(ValueError, match=r"^bqx build: --"):
        cli.split_build_options(argv)


def test_options_reach_dbt_and_sqlfluff_themselves(tmp_path: Path) -> None:
    """Their own help, which only they print: the option was not eaten on the way."""
    env = bqx_env(tmp_path, "postgresql://nobody@127.0.0.1:1/none")
    build = run_bqx(["build", "--help"], env)
    assert build.returncode == 0 and "--full-refresh" in build.stdout and "Usage: dbt build" in build.stdout
    lint = run_bqx(["lint", "--help"], env)
    assert lint.returncode == 0 and "Usage: sqlfluff lint" in lint.stdout


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["status"], r"^bqx: connection failed: .*port 1 failed: Connection refused"),
        (["dbt"], r"^bqx: bqx dbt needs a dbt command"),
        (["generate", "--start", "2024-13-01", "--end", "2024-07-02", "--out", "x"], r"^bqx: dates must be ISO"),
        (["db", "status"], None),
    ],
)
def test_errors_are_one_line(tmp_path: Path, argv: list[str], message: str | None) -> None:
    env = bqx_env(tmp_path, "postgresql://nobody@127.0.0.1:1/none")
    done = run_bqx(argv, env, timeout=120)
    assert "Traceback" not in done.stderr
    if message is None:  # not an error: the status says the server is unreachable
        assert done.returncode == 0 and json.loads(done.stdout)["running"] is False
        return
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert re.search(message, done.stderr), done.stderr


def test_db_url_is_the_users_dsn_as_given(tmp_path: Path) -> None:
    dsn = "postgresql://me@db.internal:5432/fx?passfile=/home/me/.pgpass&sslmode=require"
    done = run_bqx(["db", "url"], bqx_env(tmp_path, dsn))
    assert done.returncode == 0 and done.stdout == dsn + "\n"


# --- dbt receives the options -----------------------------------------------------------------


def test_build_full_refresh_vars_select_exclude_threads_reach_dbt(
    tmp_path: Path, database_copy: Callable[[str], str]
) -> None:
    """The README's own instruction for bars before 2024-07-01, with a full refresh of the
    staging models: dbt records the options it parsed, and the baseline really moved."""
    dsn = database_copy("cli_build")
    done = run_bqx(
        ["build", "--full-refresh", "--vars", '{"baseline_date": "2017-01-01"}', "-s", "baseline_rates", "m1_index",
         "stg_m1_bars", "--exclude", "stg_m1_bars", "--threads", "1", "--indirect-selection", "cautious"],
        bqx_env(tmp_path, dsn),
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    run = json.loads((tmp_path / "target" / "run_results.json").read_text())
    args = run["args"]
    assert args["full_refresh"] is True
    assert args["vars"] == {"baseline_date": "2017-01-01"}
    assert sorted(args["select"]) == ["baseline_rates", "m1_index", "stg_m1_bars"]
    assert args["exclude"] == ["stg_m1_bars"] and args["threads"] == 1
    models = {result["unique_id"].rsplit(".", 1)[1] for result in run["results"] if result["unique_id"].startswith("model.")}
    assert models == {"baseline_rates", "m1_index"}
    with psycopg.connect(dsn) as conn:
        moved = conn.execute(
            "select count(*) from staging.baseline_rates as b "
            "where b.baseline_ts = (select min(ts_utc) from raw.m1_bars as r where r.pair = b.pair)"
        ).fetchone()[0]
        pairs = conn.execute("select count(distinct pair) from raw.m1_bars").fetchone()[0]
    assert moved == pairs  # 2017-01-01: each pair's first bar is its baseline


# --- the README, as written ------------------------------------------------------------------


def readme_bqx_commands(text: str) -> list[str]:
    """Every `bqx` command line of the README's sh blocks, without its comment."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            for part in (piece.strip() for piece in line.split("&&")):
                if re.match(r"^(\.venv/bin/)?bqx\b", part):
                    commands.append(part)
    return commands


# Commands that need what the test suite does not have: the demo's bar files (load) or a
# placeholder to fill in. They are still checked to parse (argparse), below.
NEEDS_FILES = re.compile(r"\bload\b|\.\.\.|\[")


def test_every_bqx_command_of_the_readme_runs_as_written(tmp_path: Path, database_copy: Callable[[str], str]) -> None:
    """Including `bqx lint`: sqlfluff (postgres dialect, dbt templater) on every model,
    analysis and singular test. The dbt templater compiles each model and looks its relation
    up (is_incremental()), so it lints against a built wave-1 database, i.e. the incremental
    branch of every feature model, the one production runs take."""
    commands = readme_bqx_commands(README.read_text())
    runnable = [command for command in commands if not NEEDS_FILES.search(command)]
    shown = {c.split("bqx ", 1)[1].split()[0] for c in runnable}
    assert {"status", "db", "build", "dbt", "lint"} <= shown
    if not (PROJECT_DIR / ".venv" / "bin" / "bqx").exists():
        pytest.skip("the README's commands call .venv/bin/bqx: run the tests with `make test`")
    env = bqx_env(tmp_path, database_copy("readme"))
    for command in dict.fromkeys(commands):  # each once (the README shows `bqx build` twice)
        argv = shlex.split(command)
        if NEEDS_FILES.search(command):
            assert argv[1] == "load"
            continue
        done = subprocess.run(argv, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=1800, check=False)
        report = "\n".join(line for line in done.stdout.splitlines() if "Skipped file" not in line)
        assert done.returncode == 0, f"{command}:\n{report[-8000:]}\n{done.stderr[-2000:]}"
        assert "Traceback" not in done.stderr, command
