"""Wave 1 build times, on the shared benchmark database (bench/common.py: 28 pairs × 1 month of
generated bars): `dbt run --select tag:wave1 --full-refresh` once (the profile's threads): every
model's execution time from run_results.json (`build.<model>.s`), their sum
(`build.wave1_total.s`), the run's wall clock incl. dbt start-up and the on-run-start hook
(`build.wave1_wall.s`) and bars per wall second (`build.wave1.bars_per_s`).

The same models against the NumPy/pandas peer a quant would write are bench_peer.py's (which
replaced this script's pandas.<model>.s and ratio.<model>.pandas_over_sql).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_peer import model_times  # noqa: E402
from common import bench_database, record  # noqa: E402


def main() -> None:
    with bench_database("models") as bench:
        bars = bench.rows
        size = f"{bench.pairs} pairs × 1 month, {bars:,} bars"
        print(f"model benchmark on {size}", flush=True)

        wall = bench.dbt("run", "--select", "tag:wave1", "--full-refresh")
        wave1 = model_times(bench)
    for model, seconds in wave1.items():
        record(
            f"build.{model}.s", seconds, "s",
            f"dbt's execution time of {model} in `dbt run --select tag:wave1 --full-refresh` (the profile's "
            f"threads, BQX_DBT_THREADS, default 2: two models build at once); {size}",
        )  # fmt: skip
    total = sum(wave1.values())
    record(
        "build.wave1_total.s", total, "s",
        f"sum of the {len(wave1)} wave-1 models' execution times (build.<model>.s); {size}",
    )  # fmt: skip
    record(
        "build.wave1_wall.s", wall, "s",
        "wall clock of `dbt run --select tag:wave1 --full-refresh`, incl. dbt start-up, parsing and "
        f"the on-run-start hook; models build two at a time; {size}",
    )  # fmt: skip
    record(
        "build.wave1.bars_per_s", bars / wall, "bars/s",
        f"bars ÷ build.wave1_wall.s: bars per second whose rows of every wave-1 model are built "
        f"({bars / total:,.0f} bars/s on build.wave1_total.s); {size}",
    )  # fmt: skip


if __name__ == "__main__":
    main()
