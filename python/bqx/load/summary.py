"""What a load did: per file and in total, the files it skipped, and the table `bqx load` prints."""

from __future__ import annotations

import unicodedata
from collections import Counter
from dataclasses import dataclass, field

from bqx.load.rules import REASONS
from bqx.load.sources import SkippedFile

COUNTS = ("rows_read", "rows_loaded", "rows_replaced", "rows_unchanged", "rows_rejected", "rows_skipped")


@dataclass
class FileSummary:
    """What happened to one file (or in-memory frame)."""

    file: str
    format: str
    rows_read: int = 0
    rows_loaded: int = 0  # new keys inserted
    rows_replaced: int = 0  # existing keys updated with different values (old values in history)
    rows_unchanged: int = 0  # existing keys with identical values (left alone)
    rows_rejected: int = 0
    rows_skipped: int = 0  # rows of another pair than --pair
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    rejects_recorded: int = 0  # rejects written to raw.m1_rejects (the others were there already)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0


def by_reason(counts: Counter[str]) -> dict[str, int]:
    """Reject counts in the order of the rules, without the rules nothing broke."""
    return {name: counts[name] for name in REASONS if counts[name]}


@dataclass
class LoadSummary:
    """Per-file summaries and their totals (`seconds` is the wall time of the whole load), the
    files that were not loaded, and notes about the database (an upgrade of the raw schema)."""

    files: list[FileSummary]
    seconds: float
    skipped: list[SkippedFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rows_read: int = field(init=False)
    rows_loaded: int = field(init=False)
    rows_replaced: int = field(init=False)
    rows_unchanged: int = field(init=False)
    rows_rejected: int = field(init=False)
    rows_skipped: int = field(init=False)
    rejected_by_reason: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        for name in COUNTS:
            setattr(self, name, sum(getattr(f, name) for f in self.files))
        counts: Counter[str] = Counter()
        for f in self.files:
            counts.update(f.rejected_by_reason)
        self.rejected_by_reason = by_reason(counts)

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0

    @property
    def rejects_recorded(self) -> int:
        return sum(f.rejects_recorded for f in self.files)


def printable(text: str) -> str:
    """`text` on one line: control characters (a newline in a file name, ...) escaped."""
    return "".join(
        c if unicodedata.category(c)[0] != "C" else c.encode("unicode_escape").decode("ascii") for c in text
    )


def format_summary(summary: LoadSummary) -> str:
    """A readable table of a load: one line per file, the totals, the rejects by rule."""
    headers = ["file", "format", "read", "new", "replaced", "unchanged", "rejected", "seconds", "rows/s"]

    def cells(name: str, fmt: str, s: FileSummary | LoadSummary) -> list[str]:
        return [
            name,
            fmt,
            f"{s.rows_read:,}",
            f"{s.rows_loaded:,}",
            f"{s.rows_replaced:,}",
            f"{s.rows_unchanged:,}",
            f"{s.rows_rejected:,}",
            f"{s.seconds:.2f}",
            f"{s.rows_per_second:,.0f}",
        ]

    rows = [cells(printable(f.file), f.format, f) for f in summary.files]
    if len(summary.files) != 1:
        rows.append(cells(f"total ({len(summary.files)} files)", "", summary))
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows[: len(summary.files)]]
    if len(summary.files) != 1:
        out += ["  ".join("-" * w for w in widths), line(rows[-1])]
    if not summary.files:
        out = ["no file loaded"]
    if summary.rows_skipped:
        out.append(f"{summary.rows_skipped:,} rows of other pairs skipped (--pair)")
    if summary.rows_replaced:
        out.append(
            f"{summary.rows_replaced:,} bars replaced with corrected values; "
            "old values kept in raw.m1_bars_history"
        )
    if summary.rows_rejected:
        known = summary.rows_rejected - summary.rejects_recorded
        already = f"; {known:,} of them recorded there by an earlier load" if known else ""
        out.append(f"{summary.rows_rejected:,} rows rejected (details in raw.m1_rejects{already}):")
        for name, count in summary.rejected_by_reason.items():
            out.append(f"  {name:<22} {count:>10,}  {REASONS[name]}")
    if summary.skipped:
        out.append(f"{len(summary.skipped):,} file(s) skipped, nothing of them loaded:")
        for skipped in summary.skipped:
            out.append(f"  {printable(skipped.file)}: {printable(skipped.reason)}")
    for f in summary.files:
        for note in f.notes:
            out.append(f"note: {printable(f.file)}: {printable(note)}")
    for note in summary.notes:
        out.append(f"note: {note}")
    return "\n".join(out)
