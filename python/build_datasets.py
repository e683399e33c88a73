"""Build the datasets and the report from the feature store: `python python/build_datasets.py --help`.

Thin entry point: the options are declared in bqx.datasets.options, the steps in bqx.datasets.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # a clone without `pip install -e .` works too

from bqx.datasets.pipeline import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
