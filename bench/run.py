"""`make bench`: run every bench/bench_*.py (discovered, in name order), each in its own
process; results accumulate in bench/results.json and bench/results.md. Exit status 1 if any
benchmark failed (the others still run)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_DIR, RESULTS_MD, run_python  # noqa: E402


def main(argv: list[str]) -> int:
    """Run the benchmarks named in argv (e.g. `reg`), or all of them."""
    scripts = sorted(BENCH_DIR.glob("bench_*.py"))
    if argv:
        wanted = {name.removeprefix("bench_").removesuffix(".py") for name in argv}
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in wanted]
    failed = []
    for script in scripts:
        print(f"== {script.name}", flush=True)
        started = time.perf_counter()
        status = run_python(script)
        print(f"== {script.name}: {'ok' if status == 0 else f'FAILED ({status})'} in {time.perf_counter() - started:.0f} s")
        if status != 0:
            failed.append(script.name)
    print(f"results: {RESULTS_MD}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
