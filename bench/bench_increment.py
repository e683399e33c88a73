"""A one-day increment beside the full build it follows, in the same run, as an operator runs
them: `bqx build` (dbt build: models and their data tests, then the small audit), dbt start-up
included.

Size: BENCH_MONTHS months of generated bars for the 28 pairs (default 1; the issue's goal is
stated at BENCH_MONTHS=12, FX-year) from 2024-07-01, then one more day.

1. load every bar but the last day, `bqx build` on the empty database: the full build with all
   its tests (`increment.full_build.s`);
2. load the last day (28 × 1,440 bars), `bqx build`: the increment, its tests reading only the
   rows it wrote, and its audit (`increment.one_day_build.s`);
3. `increment.one_day_over_full.ratio` = 2 ÷ 1, beside `increment.one_day_share_of_bars.ratio`
   (the day's bars ÷ all bars): an increment that costs its share of the bars is proportional;
   the rest is dbt's fixed cost per run and per test, and the lookback each model reads.
Both builds go through bqx.build.run_build (the CLI's code) against a throw-away server.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import load_bars, record, server  # noqa: E402

from bqx.build import BuildOptions, run_build  # noqa: E402
from bqx.generate import PAIRS, generate_bars  # noqa: E402

START = dt.date(2024, 7, 1)


def _months_later(day: dt.date, months: int) -> dt.date:
    month = day.month - 1 + months
    return dt.date(day.year + month // 12, month % 12 + 1, 1)


def _timed_build(dsn: str, target: Path) -> float:
    started = time.perf_counter()
    status = run_build(dsn, BuildOptions(dbt_args=[]), target_path=target)
    if status != 0:
        raise RuntimeError(f"bqx build failed ({status})")
    return time.perf_counter() - started


def _model_seconds(dsn: str) -> float:
    with psycopg.connect(dsn) as conn:
        return float(conn.execute(
            "select coalesce(sum(extract(epoch from finished_at - started_at)), 0) from build_state.model_runs "
            "where invocation_id = (select invocation_id from build_state.runs order by started_at desc limit 1)"
        ).fetchone()[0])


def _audit_seconds(dsn: str) -> float:
    with psycopg.connect(dsn) as conn:
        found = conn.execute(
            "select extract(epoch from finished_at - started_at) from build_state.audits order by audit_id desc limit 1"
        ).fetchone()
    return float(found[0]) if found else 0.0


def main() -> None:
    months = int(os.environ.get("BENCH_MONTHS", "1"))
    end = _months_later(START, months)
    last_day = end + dt.timedelta(days=1)
    size = f"28 pairs × {months} month{'s' if months > 1 else ''} + 1 day"
    bars = generate_bars(START, last_day, list(PAIRS))
    history = bars[bars["ts_utc"] < str(end)]
    day = bars[bars["ts_utc"] >= str(end)]
    with tempfile.TemporaryDirectory(prefix="bqx_increment_") as tmp:
        home = Path(tmp)
        database = f"bqx_increment_{uuid.uuid4().hex[:8]}"
        # a throw-away embedded server, or throw-away databases on BQX_PG_DSN's server
        with server.scratch_server(home) as admin:
            server.create_database(admin, database)
            try:
                dsn = server.with_database(admin, database)
                load_bars(dsn, history)
                # one dbt target for both, as an operator's checkout has: the increment's dbt
                # re-parses only what changed (a fresh target re-parses the whole project, ~10 s)
                full = _timed_build(dsn, home / "target")
                full_models = _model_seconds(dsn)
                load_bars(dsn, day)
                one_day = _timed_build(dsn, home / "target")
                day_models = _model_seconds(dsn)
                day_audit = _audit_seconds(dsn)
            finally:
                server.drop_database(admin, database)
    note = f"{size}: {len(history):,} bars, then {len(day):,}"
    record("increment.full_build.s", full, "s",
           f"`bqx build` on an empty database (dbt build: models and every data test), wall incl. dbt start-up; {note}")
    record("increment.one_day_build.s", one_day, "s",
           f"`bqx build` after loading one more day (models, tests on the rows written, the small audit), wall; {note}")
    record("increment.full_build_models.s", full_models, "s", f"sum of the models' times in the full build; {note}")
    record("increment.one_day_build_models.s", day_models, "s", f"sum of the models' times in the one-day build; {note}")
    record("increment.one_day_audit.s", day_audit, "s",
           f"the small audit at the end of the one-day `bqx build` (included in increment.one_day_build.s); {note}")
    record("increment.one_day_over_full.ratio", one_day / full, "ratio",
           f"increment.one_day_build.s ÷ increment.full_build.s (goal at BENCH_MONTHS=12: ≤ 0.03); {note}")
    record("increment.one_day_share_of_bars.ratio", len(day) / len(bars), "ratio",
           f"the day's bars ÷ all bars: what a proportional increment would cost; {note}")


if __name__ == "__main__":
    main()
