"""Operating the store: one writer at a time, loads during builds, builds killed at any moment,
the self-audit, loud failure and `bqx status` — each ending in tables equal to a full refresh
(the session's wave-1 build of the same bars) bit for bit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import psycopg
import pytest

from bqx import server
from bqx.audit import compiled_models, merge_ranges, run_audit
from bqx.build import BuildOptions, run_build
from bqx.dbt import dbt_env, run_dbt
from bqx.load import load_frame
from bqx.project import PROJECT_DIR
from bqx.status import format_status, status
from bqx.writer_lock import WriterBusy, writer_lock
from conftest import query_frame
from model_compare import assert_same_tables

PARSE_CACHE: list[Path] = []  # set by the module fixture: the session's dbt parse cache
LAST_DAY = pd.Timestamp("2024-07-08", tz="UTC")  # the "daily increment" of these tests
CORRECTED = pd.Timestamp("2024-07-03 09:30", tz="UTC")  # EURUSD: loaded wrong, corrected later


def _wrong(bars: pd.DataFrame, at: pd.Timestamp = CORRECTED, pair: str = "EURUSD") -> pd.DataFrame:
    wrong = bars[(bars["pair"] == pair) & (bars["ts_utc"] == at)].copy()
    wrong[["open", "high", "low", "close"]] *= 1.003
    return wrong


def _bqx(*args: str, dsn: str, target: Path, parse_cache: Path | None = None) -> subprocess.Popen:
    """`bqx ARGS` as a user would start it, in its own process group (to be killed whole)."""
    target.mkdir(parents=True, exist_ok=True)
    cache = (parse_cache or PARSE_CACHE[0]) / "partial_parse.msgpack" if (parse_cache or PARSE_CACHE) else None
    if cache is not None and cache.exists():
        shutil.copyfile(cache, target / cache.name)
    env = dbt_env(dsn) | {"BQX_PG_DSN": dsn, "DBT_TARGET_PATH": str(target), "DBT_LOG_PATH": str(target / "logs")}
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("bqx")), *args],
        cwd=PROJECT_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def _waiting_on_lock(dsn: str, application: str) -> bool:
    frame = query_frame(
        dsn,
        "select count(*) as n from pg_stat_activity where wait_event_type = 'Lock' and wait_event = 'advisory' "
        "and application_name like %s",
        (application + "%",),
    )
    return int(frame["n"].iloc[0]) > 0


def _models_done(dsn: str) -> int:
    frame = query_frame(
        dsn,
        "select count(*) as n from build_state.model_runs where invocation_id = "
        "(select invocation_id from build_state.runs order by started_at desc limit 1)",
    )
    return int(frame["n"].iloc[0])


def _build_running(dsn: str) -> bool:
    try:
        frame = query_frame(dsn, "select count(*) as n from build_state.runs where finished_at is null")
    except psycopg.Error:
        return False
    return int(frame["n"].iloc[0]) > 0


@pytest.fixture(scope="module")
def ops_dsn(
    database_factory: Callable[[str], str],
    dbt_runner: Callable[..., None],
    fixture_bars: pd.DataFrame,
    dbt_parse_cache: Path,
) -> str:
    """The fixture's bars but the last day, with one EURUSD bar loaded wrong, built."""
    PARSE_CACHE[:] = [dbt_parse_cache]
    dsn = database_factory("operations")
    before = fixture_bars[fixture_bars["ts_utc"] < LAST_DAY]
    load_frame(dsn, before, "all but the last day")
    load_frame(dsn, _wrong(before), "a wrong bar")
    dbt_runner(dsn, "run", "--select", "tag:wave1")
    return dsn


def test_a_second_writer_waits_naming_the_first_or_fails_at_once(ops_dsn: str, tmp_path: Path) -> None:
    with writer_lock(ops_dsn, "test-holder"):
        with pytest.raises(WriterBusy, match=r"bqx test-holder \(pid \d+\).*server pid \d+.*since"):
            run_build(ops_dsn, BuildOptions(dbt_args=[], wait=False))
        bars = tmp_path / "bars"
        subprocess.run(
            [str(Path(sys.executable).with_name("bqx")), "generate", "--start", "2024-07-10", "--end", "2024-07-11",
             "--pairs", "EURUSD", "--out", str(bars)],
            check=True, capture_output=True,
        )
        refused = _bqx("load", str(bars), "--no-wait", dsn=ops_dsn, target=tmp_path)
        assert refused.wait(120) == 2 and "bqx test-holder" in refused.stdout.read()
        waiting = _bqx("load", str(bars), dsn=ops_dsn, target=tmp_path)
        _wait_for(lambda: _waiting_on_lock(ops_dsn, "bqx load"), "the load to wait for the writer lock", 120)
        assert waiting.poll() is None
    assert waiting.wait(120) == 0
    assert "waiting for the database's writer lock, held by bqx test-holder" in waiting.stdout.read()
    # a plain `dbt run` (no bqx): each model waits for the writer lock while a writer holds it
    with writer_lock(ops_dsn, "load-alike"):
        target = tmp_path / "plain_dbt"
        target.mkdir()
        if PARSE_CACHE and (PARSE_CACHE[0] / "partial_parse.msgpack").exists():
            shutil.copyfile(PARSE_CACHE[0] / "partial_parse.msgpack", target / "partial_parse.msgpack")
        plain = subprocess.Popen(
            [str(Path(sys.executable).with_name("dbt")), "run", "--select", "bqx", "--target-path", str(target)],
            cwd=PROJECT_DIR, env=dbt_env(ops_dsn), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        _wait_for(lambda: _waiting_on_lock(ops_dsn, "dbt"), "the plain dbt run to wait for the writer lock", 300)
        assert plain.poll() is None
    assert plain.wait(300) == 0, plain.stdout.read()[-3000:]
    with psycopg.connect(ops_dsn) as conn:  # leave the module's database as it was
        conn.execute("delete from raw.m1_bars where ts_utc >= '2024-07-10'")


def test_builds_and_a_load_during_a_build_queue_and_end_equal_to_a_full_refresh(
    ops_dsn: str, fixture_bars: pd.DataFrame, wave1_dsn: str, tmp_path: Path
) -> None:
    """Build A runs (a correction to compute); a load of the last day and the corrected bar is
    started during A, then build B: the load waits for A, B for the load; B brings every model
    to a full refresh of the final bars. `bqx status` shows A in progress."""
    another = pd.Timestamp("2024-07-05 16:00", tz="UTC")
    load_frame(ops_dsn, _wrong(fixture_bars, another, "USDJPY"), "another wrong bar")
    last_day = tmp_path / "last_day.parquet"
    # the last day and both wrong bars corrected: the fixture's bars exactly
    ts = fixture_bars["ts_utc"]
    final = fixture_bars[(ts >= LAST_DAY) | (ts == CORRECTED) | ((ts == another) & (fixture_bars["pair"] == "USDJPY"))]
    final.to_parquet(last_day)
    no_tests = ("--exclude", "resource_type:test")  # the queueing is the point here, not the tests
    runs_before = len(query_frame(ops_dsn, "select invocation_id from build_state.runs"))
    build_a = _bqx("build", *no_tests, dsn=ops_dsn, target=tmp_path / "a")
    _wait_for(lambda: _build_running(ops_dsn) and _models_done(ops_dsn) >= 1, "build A's first model")
    during = status(ops_dsn)
    assert during["build"] is not None and during["build"]["alive"], during["build"]
    assert "build in progress since" in format_status(during)
    load = _bqx("load", str(last_day), dsn=ops_dsn, target=tmp_path / "load")
    _wait_for(lambda: _waiting_on_lock(ops_dsn, "bqx load"), "the load to wait for build A")
    build_b = _bqx("build", *no_tests, dsn=ops_dsn, target=tmp_path / "b")
    _wait_for(lambda: _waiting_on_lock(ops_dsn, "bqx build"), "build B to wait")
    outputs = {}
    for name, process in (("a", build_a), ("load", load), ("b", build_b)):
        try:
            assert process.wait(1800) == 0, process.stdout.read()[-4000:]
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name} still running; status:\n{format_status(status(ops_dsn))}") from None
        outputs[name] = process.stdout.read()
    assert "waiting for the database's writer lock, held by bqx build" in outputs["load"]
    assert "waiting for the database's writer lock, held by bqx" in outputs["b"]
    assert "bqx build success" in outputs["b"] and "rows written" in outputs["b"]
    runs = query_frame(ops_dsn, "select started_at, finished_at from build_state.runs order by started_at")
    assert len(runs) == runs_before + 2, runs
    a, b = runs.iloc[-2], runs.iloc[-1]
    # the file's own row, matched exactly: a LIKE '%last_day%' also matched the fixture's load
    # "all but the last day" (`_` matches any character), a row from before build A began, which
    # is what once looked like a load interleaved with A
    loads = query_frame(
        ops_dsn, "select started_at, finished_at from raw.load_log where file = %s", (str(last_day),)
    )
    assert len(loads) == 1, loads
    load_row = loads.iloc[0]
    assert a["finished_at"] <= load_row["started_at"], (a, load_row)  # the load waited for A to end
    assert load_row["finished_at"] <= b["started_at"], (load_row, b)  # B queued behind the load
    assert_same_tables(ops_dsn, wave1_dsn, "after builds and a load in between")
    after = format_status(status(ops_dsn))
    assert "last build (incremental" in after and "rows behind" in after


def test_a_build_killed_early_midway_or_in_its_tests_then_a_build_equals_a_full_refresh(
    database_factory: Callable[[str], str], fixture_bars: pd.DataFrame, wave1_dsn: str, tmp_path: Path
) -> None:
    dsn = database_factory("killed")
    parts = [fixture_bars["ts_utc"] < "2024-07-02", fixture_bars["ts_utc"] < "2024-07-05", fixture_bars["ts_utc"] < "2024-07-09"]
    moments = {
        "early": lambda: _build_running(dsn),
        "midway": lambda: _build_running(dsn) and _models_done(dsn) >= 4,
        "in its tests": lambda: _build_running(dsn) and _models_done(dsn) >= 15,
    }
    for (moment, reached), part in zip(moments.items(), parts, strict=True):
        load_frame(dsn, fixture_bars[part], f"bars before {moment}")
        build = _bqx("build", dsn=dsn, target=tmp_path / moment.replace(" ", "_"))
        _wait_for(reached, f"the build's {moment} moment", timeout=900)
        os.killpg(build.pid, signal.SIGKILL)
        build.wait()
    # the killed dbt's last query stops within client_connection_check_interval (bqx build sets 1 s)
    _wait_for(lambda: "did not finish" in format_status(status(dsn)), "status to see the killed build", 60)
    run_build(dsn, BuildOptions(dbt_args=[]), target_path=tmp_path / "final")
    assert_same_tables(dsn, wave1_dsn, "after three killed builds")


def test_the_server_killed_during_a_build_then_a_build_equals_a_full_refresh(
    fixture_bars: pd.DataFrame, wave1_dsn: str, tmp_path: Path
) -> None:
    if os.environ.get("BQX_PG_DSN"):
        pytest.skip("kills a server: only the embedded one the test starts itself")
    home = tmp_path / "server"
    home.mkdir()
    cluster = server.cluster_for(home, port=server.free_port(), throwaway=True)
    dsn = server.start(cluster, database="killed_server")
    try:
        load_frame(dsn, fixture_bars[fixture_bars["ts_utc"] < "2024-07-05"], "first part")
        run_build(dsn, BuildOptions(dbt_args=[]), target_path=tmp_path / "first")
        load_frame(dsn, fixture_bars[fixture_bars["ts_utc"] >= "2024-07-05"], "second part")
        build = _bqx("build", dsn=dsn, target=tmp_path / "killed")
        _wait_for(lambda: _build_running(dsn) and _models_done(dsn) >= 3, "the build's third model")
        # the server dies at once, postmaster and every backend (a crash, the OOM killer)
        postmaster = int((cluster.pgdata / "postmaster.pid").read_text().split()[0])
        children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
        for pid in [postmaster, *map(int, children)]:
            os.kill(pid, signal.SIGKILL)
        _wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in [postmaster, *map(int, children)]),
                  "the server's processes to be gone", 60)
        try:
            build.wait(300)
        except subprocess.TimeoutExpired:
            os.killpg(build.pid, signal.SIGKILL)
            build.wait()
        server.start(cluster, database="killed_server")
        run_build(dsn, BuildOptions(dbt_args=[]), target_path=tmp_path / "after")
        assert_same_tables(dsn, wave1_dsn, "after the server was killed")
    finally:
        server.destroy(cluster)


def test_audit_passes_clean_and_catches_a_corrupted_row(ops_dsn: str, fixture_bars: pd.DataFrame, tmp_path: Path) -> None:
    """Clean: passes. A row changed by hand (not through a build): --full finds it whatever the
    seed; a changed minute written stale (what a build racing a load used to leave) is found by
    the changed-minutes rule with no random sample at all."""
    target = tmp_path / "audit"
    clean = run_audit(ops_dsn, sample=2, seed=1, target=target)
    assert clean.passed and sum(m.rows for m in clean.models) > 0, clean.as_dict()
    compiled = compiled_models(target)  # compiled by the first audit: reused below
    with psycopg.connect(ops_dsn) as conn:
        conn.execute(
            "update features.reg_rate set reg_b_w90 = reg_b_w90 * (1 + 1e-15) "
            "where pair = 'GBPUSD' and ts_utc = '2024-07-04 11:11Z'"
        )
    full = run_audit(ops_dsn, full=True, models=compiled)
    assert not full.passed and [m.model for m in full.models if m.mismatched_rows] == ["reg_rate"]
    assert full.mismatches == 1
    # the stale row: the bar is corrected and built, then its feature row is put back as it was
    at = pd.Timestamp("2024-07-04 12:00", tz="UTC")
    before = query_frame(ops_dsn, f"select * from features.bqx where pair = 'USDJPY' and ts_utc = '{at.isoformat()}'")
    load_frame(ops_dsn, _wrong(fixture_bars, at, "USDJPY"), "a late correction")
    # no audit at the build's end: the audit below must find the change by itself (an audit
    # checks the changes made since the last audit, which the build's own would be)
    run_build(ops_dsn, BuildOptions(dbt_args=[], audit_sample=0), target_path=tmp_path / "build")
    with psycopg.connect(ops_dsn) as conn:
        conn.execute(
            "update features.reg_rate set reg_b_w90 = reg_b_w90 / (1 + 1e-15) "
            "where pair = 'GBPUSD' and ts_utc = '2024-07-04 11:11Z'"
        )
        conn.execute(
            "update features.bqx set bqx_w15 = %s where pair = 'USDJPY' and ts_utc = %s",
            (float(before["bqx_w15"].iloc[0]), at),
        )
    changed = run_audit(ops_dsn, sample=0, models=compiled)
    assert not changed.passed and [m.model for m in changed.models if m.mismatched_rows] == ["bqx"]
    # put the bar back as the fixture has it (the module's other tests expect its bars)
    load_frame(ops_dsn, fixture_bars[(fixture_bars["pair"] == "USDJPY") & (fixture_bars["ts_utc"] == at)], "undo")
    run_build(ops_dsn, BuildOptions(dbt_args=[]), target_path=tmp_path / "undo")
    # the audit at the end of a build samples the rows that build wrote: rows of one model and
    # pair written wrong (every row of the range, so any seeded minute of it lands on one) fail it
    invocation = json.loads((tmp_path / "undo" / "run_results.json").read_text())["metadata"]["invocation_id"]
    written_range = (
        "from build_state.model_pairs as written where written.model = 'statistics_rate' "
        "and written.invocation_id = %(inv)s and written.pair = 'USDJPY' "
        "and stats.pair = written.pair and stats.ts_utc between written.rewrote_from_ts and written.rewrote_to_ts"
    )
    with psycopg.connect(ops_dsn) as conn:
        saved = conn.execute(f"select stats.ts_utc, stats.std_w15 from features.statistics_rate as stats, {written_range[5:]}",
                             {"inv": invocation}).fetchall()
        assert saved, "the build wrote no statistics_rate row for USDJPY"
        conn.execute(f"update features.statistics_rate as stats set std_w15 = stats.std_w15 * (1 + 1e-15) {written_range}",
                     {"inv": invocation})
    written = run_audit(ops_dsn, sample=1, models=compiled, written_by=invocation)
    assert not written.passed and [m.model for m in written.models if m.mismatched_rows] == ["statistics_rate"]
    with psycopg.connect(ops_dsn) as conn, conn.cursor() as cursor:
        cursor.executemany(
            "update features.statistics_rate set std_w15 = %s where pair = 'USDJPY' and ts_utc = %s",
            [(value, ts) for ts, value in saved],
        )
    assert run_audit(ops_dsn, sample=1, models=compiled).passed


def test_audit_checks_a_change_committed_after_a_build_once_a_build_consumed_it(
    ops_dsn: str, fixture_bars: pd.DataFrame, tmp_path: Path
) -> None:
    """A correction loaded after a build is pending at the next audit (skipped there: its rows
    are not rebuilt yet); the audit after the build that consumes it must still check its minutes.
    It did not when "changed since the last audit" meant since that audit's snapshot, which
    already held the correction. With no random sample, only that rule can find the row."""
    at = pd.Timestamp("2024-07-05 09:30", tz="UTC")
    assert run_audit(ops_dsn, sample=0, target=tmp_path / "audit").passed
    compiled = compiled_models(tmp_path / "audit")
    load_frame(ops_dsn, _wrong(fixture_bars, at, "EURJPY"), "a correction after the build")
    pending = run_audit(ops_dsn, sample=0, models=compiled)
    assert pending.passed and all("EURJPY" in m.pending_pairs for m in pending.models), pending.as_dict()
    run_build(ops_dsn, BuildOptions(dbt_args=[], audit_sample=0), target_path=tmp_path / "build")
    # the build consumed the correction; its bqx row is then written wrong (by hand here)
    with psycopg.connect(ops_dsn) as conn:
        assert conn.execute(
            "update features.bqx set bqx_w15 = bqx_w15 * (1 + 1e-15) where pair = 'EURJPY' and ts_utc = %s", (at,)
        ).rowcount == 1
    caught = run_audit(ops_dsn, sample=0, models=compiled)
    assert not caught.passed and [m.model for m in caught.models if m.mismatched_rows] == ["bqx"], caught.as_dict()
    # a failed model's changes stay unaudited: the next audit checks them again
    assert not run_audit(ops_dsn, sample=0, models=compiled).passed
    # put the bar back as the fixture has it (the module's other tests expect its bars)
    load_frame(ops_dsn, fixture_bars[(fixture_bars["pair"] == "EURJPY") & (fixture_bars["ts_utc"] == at)], "undo")
    run_build(ops_dsn, BuildOptions(dbt_args=[], audit_sample=0), target_path=tmp_path / "undo")
    assert run_audit(ops_dsn, sample=0, models=compiled).passed


def _project_with_bqx_rows_where(project: Path, condition: str) -> Path:
    """A copy of the dbt project at `project` whose bqx model writes only the rows that also
    satisfy `condition` (over its CTE bqx_values): a model that loses rows, for the loud checks."""
    shutil.copytree(PROJECT_DIR, project, ignore=shutil.ignore_patterns(".venv", ".bqx", "target", "logs", "data", ".git"))
    model = project / "models" / "features" / "bqx" / "bqx.sql"
    written = "{{ new_feature_rows('bqx_values', ['bar_number'] + bqx_column_names()) }}"
    assert written in model.read_text(), "bqx.sql no longer selects its rows this way"
    model.write_text(model.read_text().replace(written, f"{written} and {condition}"))
    return project


def test_a_model_writing_no_row_for_a_pair_with_new_bars_fails_the_build(
    ops_dsn: str, fixture_bars: pd.DataFrame, tmp_path: Path
) -> None:
    """Loud failure: a model whose SQL lost a pair (here: a copy of the project with a filter
    added to bqx) stops the build naming the pair, instead of writing nothing quietly."""
    project = _project_with_bqx_rows_where(tmp_path / "project", "bqx_values.pair <> 'EURJPY'")
    load_frame(ops_dsn, _wrong(fixture_bars, pd.Timestamp("2024-07-04 10:00", tz="UTC"), "EURJPY"), "a change for EURJPY")
    done = run_dbt(["run", "--select", "m1_index", "bqx"], ops_dsn, project_dir=project, target_path=tmp_path / "t", capture=True)
    assert done.returncode != 0
    assert "bqx wrote 0 rows for pairs whose input has bars to (re)compute: EURJPY" in done.stdout
    load_frame(ops_dsn, fixture_bars[(fixture_bars["pair"] == "EURJPY") & (fixture_bars["ts_utc"] == "2024-07-04 10:00")], "undo")


def _rows_written_and_counted(dsn: str, schema: str, model: str) -> tuple[dict[str, int], dict[str, int]]:
    """Per pair with rows: the rows the last build recorded for `model`, and the rows its table holds."""
    with psycopg.connect(dsn) as conn:
        recorded = dict(conn.execute(
            "select pair, rows_written from build_state.model_pairs where model = %s and rows_written > 0",
            (model,)).fetchall())
        counted = dict(conn.execute(f"select pair, count(*) from {schema}.{model} group by pair").fetchall())
    return recorded, counted


def test_a_full_build_records_the_rows_each_pair_has_even_with_a_row_skipped_inside(
    database_factory: Callable[[str], str], dbt_runner: Callable[..., Path], fixture_bars: pd.DataFrame,
    tmp_path: Path,
) -> None:
    """A full build records each pair's rows from the span of m1_index bars between its first and
    last row (macros/incremental/recompute_strategy.sql: no scan of the table), trusted only when
    the spans add up to the rows inserted. A model that skipped rows inside a pair's span (a copy
    of the project whose bqx leaves out an hour of EURJPY) must record the rows it holds."""
    dsn = database_factory("rows_written")
    load_frame(dsn, fixture_bars[fixture_bars["pair"].isin(["EURJPY", "GBPUSD"])], "two pairs")
    dbt_runner(dsn, "run", "--select", "+bqx")
    for schema, model in (("staging", "m1_index"), ("features", "bqx")):
        recorded, counted = _rows_written_and_counted(dsn, schema, model)
        assert recorded == counted and set(counted) == {"EURJPY", "GBPUSD"}, model

    project = _project_with_bqx_rows_where(
        tmp_path / "project",
        "not (bqx_values.pair = 'EURJPY' and bqx_values.ts_utc between '2024-07-03 10:00+00' and '2024-07-03 10:59+00')",
    )
    done = run_dbt(["run", "--full-refresh", "--select", "bqx"], dsn, project_dir=project,
                   target_path=tmp_path / "gap", capture=True)
    assert done.returncode == 0, done.stdout[-6000:]
    recorded, counted = _rows_written_and_counted(dsn, "features", "bqx")
    eurjpy = fixture_bars.loc[fixture_bars["pair"] == "EURJPY", "ts_utc"].sort_values()
    skipped = eurjpy.between(pd.Timestamp("2024-07-03 10:00", tz="UTC"), pd.Timestamp("2024-07-03 10:59", tz="UTC"))
    assert skipped.any() and not skipped.iloc[0] and not skipped.iloc[-1]  # the hour is inside the pair's span
    assert recorded == counted and counted["EURJPY"] == len(eurjpy) - skipped.sum(), (recorded, counted)


def test_a_changed_baseline_date_stops_an_incremental_build(ops_dsn: str, tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    if PARSE_CACHE and (PARSE_CACHE[0] / "partial_parse.msgpack").exists():
        shutil.copyfile(PARSE_CACHE[0] / "partial_parse.msgpack", target / "partial_parse.msgpack")
    done = run_dbt(
        ["run", "--select", "m1_index", "--vars", '{"baseline_date": "2024-07-02"}'], ops_dsn, target_path=target, capture=True
    )
    assert done.returncode != 0
    assert 'm1_index was built with other values of baseline_date: "2024-07-01" -> "2024-07-02"' in done.stdout
    assert "bqx build --full-refresh" in done.stdout


def _change_ids(dsn: str) -> set[int]:
    return set(query_frame(dsn, "select change_id from raw.m1_changes")["change_id"].astype(int))


def test_the_change_log_keeps_every_change_a_model_has_not_consumed_and_prunes_the_rest(
    database_factory: Callable[[str], str], fixture_bars: pd.DataFrame, wave1_dsn: str, tmp_path: Path
) -> None:
    """raw.m1_changes loses a change only once every model has built every pair after it and an
    audit has seen it: not after a build killed midway, nor after a build of m1_index alone; and
    the builds that follow still equal a full refresh."""
    dsn = database_factory("pruned")
    load_frame(dsn, fixture_bars[fixture_bars["ts_utc"] < "2024-07-03"], "first part")
    first = _change_ids(dsn)
    run_build(dsn, BuildOptions(dbt_args=[]), target_path=tmp_path / "first")
    assert run_audit(dsn, sample=0, models=[]).passed  # an audit's snapshot after the first part
    load_frame(dsn, fixture_bars[(fixture_bars["ts_utc"] >= "2024-07-03") & (fixture_bars["ts_utc"] < "2024-07-05")],
               "second part")
    second = _change_ids(dsn) - first
    assert second
    # killed after m1_index and a few models consumed the second part: the others have not
    build = _bqx("build", dsn=dsn, target=tmp_path / "killed")
    _wait_for(lambda: _build_running(dsn) and _models_done(dsn) >= 4, "the build's fourth model", timeout=900)
    os.killpg(build.pid, signal.SIGKILL)
    build.wait()
    _wait_for(lambda: not _build_running(dsn) or "did not finish" in format_status(status(dsn)),
              "the killed build's last query to stop", 60)
    assert second <= _change_ids(dsn), "a change was pruned by a killed build"
    # the first part: every model has consumed it and the audit has seen it, but no build has
    # finished since (pruning runs at a build's end), so it is still there too
    assert first <= _change_ids(dsn)
    assert run_audit(dsn, sample=0, models=[]).passed  # an audit's snapshot after the second part
    # m1_index alone: every model downstream still needs the second part; the first goes
    run_dbt(["run", "--select", "m1_index"], dsn, target_path=tmp_path / "index_only", capture=True)
    assert second <= _change_ids(dsn), "a change the downstream models had not consumed was pruned"
    assert not first & _change_ids(dsn), "changes consumed by every model and audited were kept"
    # the rest of the bars, then a build: the second part is consumed by all and goes; the third
    # (not audited yet) stays; the tables equal a full refresh
    load_frame(dsn, fixture_bars[fixture_bars["ts_utc"] >= "2024-07-05"], "third part")
    third = _change_ids(dsn) - first - second
    run_build(dsn, BuildOptions(dbt_args=[], audit_sample=0), target_path=tmp_path / "final")
    left = _change_ids(dsn)
    assert not second & left and third <= left, (sorted(second & left), sorted(third - left))
    assert_same_tables(dsn, wave1_dsn, "after pruning the change log")


def test_audit_ranges_closer_than_the_lookback_are_recomputed_as_one() -> None:
    minute = "2024-07-0{} {}:00+00"
    ranges = [(minute.format(2, "10:05"), minute.format(2, "10:05")), (minute.format(1, "00:00"), minute.format(1, "01:00")),
              (minute.format(1, "00:30"), minute.format(1, "00:40")), (minute.format(1, "02:00"), minute.format(1, "03:00"))]
    assert merge_ranges(ranges, pd.Timedelta(minutes=60).to_pytimedelta()) == [
        (minute.format(1, "00:00"), minute.format(1, "03:00")), (minute.format(2, "10:05"), minute.format(2, "10:05")),
    ]
    assert merge_ranges(ranges, pd.Timedelta(0).to_pytimedelta()) == [
        (minute.format(1, "00:00"), minute.format(1, "01:00")), (minute.format(1, "02:00"), minute.format(1, "03:00")),
        (minute.format(2, "10:05"), minute.format(2, "10:05")),
    ]
    assert merge_ranges([], pd.Timedelta(0).to_pytimedelta()) == []
