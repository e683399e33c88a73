"""`bqx status`: every model against the source from the build log, not from scans."""

from __future__ import annotations

import json
import time

import psycopg

from bqx.status import format_status, status
from conftest import FIXTURE_PAIRS


def test_status_after_a_build_reads_the_build_log(wave1_dsn: str) -> None:
    started = time.perf_counter()
    data = status(wave1_dsn)
    elapsed = time.perf_counter() - started
    assert set(data["source"]) == set(FIXTURE_PAIRS)
    assert "bqx" in data["models"] and "targets" in data["models"]
    for model, per_pair in data["models"].items():
        assert set(per_pair) == set(FIXTURE_PAIRS), model
        for pair, row in per_pair.items():
            assert row["last_built"] == data["source"][pair]["last_bar"], (model, pair)
            assert row["rows_behind_index"] == 0
    assert data["build"] is None and data["last_build"]["status"] == "success"
    text = format_status(data)
    assert text.startswith(f"source raw.m1_bars: {len(FIXTURE_PAIRS)} pairs") and "last build (full" in text
    json.dumps(data, default=str)  # --json
    assert elapsed < 30  # a guard against a scan creeping in; the goal (≤ 1 s on FX-year) is in make bench


def test_status_counts_rows_behind_from_bar_numbers(wave1_dsn: str) -> None:
    """Rows behind = m1_index's bars after the model's last built minute: a model whose state
    says it stopped 10 bars early is 10 rows behind (no count(*) over the table)."""
    with psycopg.connect(wave1_dsn) as conn:
        original = conn.execute(
            "select last_built_ts from build_state.model_pairs where model = 'reg_rate' and pair = 'EURUSD'"
        ).fetchone()[0]
        conn.execute(
            "update build_state.model_pairs set last_built_ts = ("
            " select ts_utc from staging.m1_index where pair = 'EURUSD' order by ts_utc desc offset 10 limit 1)"
            " where model = 'reg_rate' and pair = 'EURUSD'"
        )
        conn.commit()
        try:
            data = status(wave1_dsn)
            assert data["models"]["reg_rate"]["EURUSD"]["rows_behind_index"] == 10
            assert " 10  " in next(line for line in format_status(data).splitlines() if line.startswith("reg_rate "))
        finally:
            conn.execute(
                "update build_state.model_pairs set last_built_ts = %s where model = 'reg_rate' and pair = 'EURUSD'",
                (original,),
            )
            conn.commit()
