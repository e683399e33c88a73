"""`bqx load` throughput: 28 pairs × 1 month of generated csv files into an empty database,
then the same files again (every row unchanged). Goal: ≥ 200k rows/s."""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import generate_month, record  # noqa: E402

from bqx import server  # noqa: E402
from bqx.generate import write_bars  # noqa: E402
from bqx.load import load_paths  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bqx_load_bench_") as tmp:
        home = Path(tmp)
        files = write_bars(generate_month(), home / "bars", "csv")
        size_mb = sum(path.stat().st_size for path in files) / 1e6
        with server.scratch_server(home) as admin:
            for attempt in ("first", "reload"):
                database = f"bqx_load_{attempt}_{uuid.uuid4().hex[:8]}"
                server.create_database(admin, database)
                try:
                    dsn = server.with_database(admin, database)
                    if attempt == "reload":
                        load_paths(dsn, files)
                    started = time.perf_counter()
                    summary = load_paths(dsn, files)
                    seconds = time.perf_counter() - started
                finally:
                    server.drop_database(admin, database)
                what = "into an empty database" if attempt == "first" else "again: every row unchanged"
                record(
                    f"load.csv.{attempt}.rows_per_s",
                    summary.rows_read / seconds,
                    "rows/s",
                    f"bqx load of {len(files)} csv files ({summary.rows_read:,} rows, {size_mb:.0f} MB) {what}, "
                    f"{seconds:.2f} s incl. parsing, validation, COPY and partitions (goal ≥ 200k rows/s)",
                )
                print(f"{attempt}: {summary.rows_read / seconds:,.0f} rows/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
