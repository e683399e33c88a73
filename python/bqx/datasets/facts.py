"""What the validation asks of an extracted file, gathered from each chunk while it is written.

The validation's file checks (minutes strictly increasing, no NaN or infinity, a target NULL
only on a pair's last H rows, a feature NULL after its warm-up only where its YAML's
`null_allowed_when` holds) need one pass over every value of a pair. The extraction holds each
chunk in memory as it writes it, so it makes that pass there and records the result in the
pair's _source.json; the validation then reads only the keys it needs to name a minute (and the
columns with more late NULLs than are recorded by row) instead of reading and decompressing
every column of every pair again (1.1 s of CPU per pair-quarter, measured; the pass itself
costs 0.165 s, and ran in the validation too). An extraction without the record (a file
changed by hand, tests) is scanned from its file by the same code."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# late NULLs of a column kept by row; beyond, the validation reads the column's NULL mask from
# the file (time_features' session minutes are NULL outside their session: most rows)
LATE_NULL_ROWS_KEPT = 20_000
KEY_COLUMNS = ("pair", "ts_utc", "known_at", "bar_number")  # every file's columns before the features


@dataclass(frozen=True)
class Limits:
    """Where a NULL is expected: a feature's warm-up (bars), a target's horizon (bars)."""

    warmups: Mapping[str, int] = field(default_factory=dict)
    horizons: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, catalog: Any) -> Limits:
        return cls({f.matrix_column: f.warmup_bars for f in catalog.features}, {t.column: t.horizon_bars for t in catalog.targets})


@dataclass
class FileFacts:
    """The facts of one pair's file, chunk by chunk (rows are the file's, from 0)."""

    limits: Limits
    rows: int  # the pair's rows in the file (a target's last H rows may be NULL)
    unordered_row: int | None = None  # first row whose minute is not after the previous one
    nonfinite: dict[str, int] = field(default_factory=dict)  # column -> first NaN/±inf row
    target_nulls: dict[str, int] = field(default_factory=dict)  # target -> first NULL row with H later rows
    late_null_counts: dict[str, int] = field(default_factory=dict)  # feature -> NULLs after its warm-up
    late_null_rows: dict[str, list[int]] = field(default_factory=dict)  # ... their rows, up to LATE_NULL_ROWS_KEPT
    _last_ts: int | None = None

    def add(self, table: pa.Table, start: int) -> None:
        """A chunk of the file: its rows are start, start + 1, ..."""
        ts = table.column("ts_utc").cast(pa.int64()).to_numpy()
        if self.unordered_row is None and ts.size:
            previous = ts[:1] - 1 if self._last_ts is None else np.array([self._last_ts])
            steps = np.diff(ts, prepend=previous)
            if (steps <= 0).any():
                self.unordered_row = start + int(np.flatnonzero(steps <= 0)[0])
        if ts.size:
            self._last_ts = int(ts[-1])
        bar_number = table.column("bar_number").to_numpy()
        row = start + np.arange(ts.size)
        for name in table.column_names:
            if name in KEY_COLUMNS:
                continue
            column = table.column(name)
            if name not in self.nonfinite and pa.types.is_floating(column.type):
                index = _first_nonfinite(column)
                if index >= 0:
                    self.nonfinite[name] = start + index
            if not column.null_count:
                continue
            is_null = column.is_null().to_numpy(zero_copy_only=False)
            if name in self.limits.horizons:
                bad = np.flatnonzero(is_null & (row < self.rows - self.limits.horizons[name]))
                if bad.size and name not in self.target_nulls:
                    self.target_nulls[name] = start + int(bad[0])
            elif name in self.limits.warmups:
                late = np.flatnonzero(is_null & (bar_number > self.limits.warmups[name]))
                if late.size:
                    count = self.late_null_counts.get(name, 0)
                    self.late_null_counts[name] = count + int(late.size)
                    kept = self.late_null_rows.setdefault(name, [])
                    if count + late.size <= LATE_NULL_ROWS_KEPT:
                        kept.extend((start + late).tolist())

    def record(self) -> dict[str, Any]:
        """JSON: the late NULL rows of a column only when all of them were kept."""
        return {
            "unordered_row": self.unordered_row,
            "nonfinite": dict(self.nonfinite),
            "target_nulls": dict(self.target_nulls),
            "late_nulls": {
                name: {"count": count, "rows": self.late_null_rows[name] if count <= LATE_NULL_ROWS_KEPT else None}
                for name, count in self.late_null_counts.items()
            },
        }


def _first_nonfinite(column: pa.ChunkedArray) -> int:
    """The first row holding NaN or ±inf (a NULL is neither), -1 if none. A column without
    NULLs is read by NumPy in place (3-4x faster than Arrow's is_finite + index)."""
    values = column.combine_chunks()
    if values.null_count == 0:
        finite = np.isfinite(values.to_numpy(zero_copy_only=True))
        return -1 if finite.all() else int(np.argmin(finite))
    return int(pc.index(pc.is_finite(values), False).as_py())


def scan(table: pa.Table, limits: Limits) -> dict[str, Any]:
    """The facts of a whole file's table (an extraction that did not record them)."""
    facts = FileFacts(limits, table.num_rows)
    facts.add(table, 0)
    return facts.record()
