"""Split by time with the same instants for every pair, purged and embargoed.

A row at bar t is known at `known_at` = ts_utc + 1 minute; its longest target (H = max horizon
bars) is known when bar t+H closes: `target_end` = ts_utc[t+H] + 1 minute, in the pair's own
bars (weekends skipped). The boundaries b1 < b2 are quantiles (default 70% and 85%) of the
pooled known_at of every pair's usable rows: crosses move together, so a per-pair boundary
would let one pair's training rows see another pair's validation period.

A row belongs to a part only if both its known_at and its target_end lie inside it:
    train: target_end <= b1
    val:   known_at > b1 and target_end <= b2
    test:  known_at > b2 and its target_end exists (t+H is an extracted bar)
Rows whose target window straddles a boundary are purged; with an embargo of E bars, the first
E bars of each pair after each boundary are dropped as well (a row at an event: when its bar is
one of them). Rows at events (`--events`, bqx.datasets.events) are split by the same rule with
known_at = the event's time and target_end = the close of bar t+H of the event's bar t. Walk-forward folds split the
train+val span the same way at K more pooled quantiles (expanding training windows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NONE, TRAIN, VAL, TEST = 0, 1, 2, 3
PART_NAMES = {TRAIN: "train", VAL: "val", TEST: "test"}
NO_END = np.iinfo(np.int64).max  # target window not complete inside the extracted bars
MINUTE_US = 60_000_000


@dataclass(frozen=True)
class PairKeys:
    """The key columns of one pair's extracted rows (timestamps in µs since the epoch, UTC)."""

    pair: str
    ts_us: np.ndarray
    bar_number: np.ndarray

    @property
    def known_at_us(self) -> np.ndarray:
        return self.ts_us + MINUTE_US


def usable_mask(keys: PairKeys, longest_warmup: int, longest_lag: int) -> np.ndarray:
    """Rows whose features and lagged features are all past their warm-ups: the lagged row
    (longest_lag bars back) is an extracted row and lies after the longest warm-up."""
    positions = np.arange(keys.ts_us.size)
    return (positions >= longest_lag) & (keys.bar_number - longest_lag > longest_warmup)


def target_end_us(keys: PairKeys, longest_horizon: int) -> np.ndarray:
    """When each row's longest target is known (the close of bar t+H); NO_END past the data."""
    end = np.full(keys.ts_us.size, NO_END, dtype=np.int64)
    if keys.ts_us.size > longest_horizon:
        end[:-longest_horizon] = keys.ts_us[longest_horizon:] + MINUTE_US
    return end


def pooled_boundaries(known_at: list[np.ndarray], fractions: list[float]) -> list[int]:
    """Quantiles of the pooled known_at (actual row instants, µs), one per fraction."""
    pooled = np.concatenate(known_at) if known_at else np.empty(0, dtype=np.int64)
    if pooled.size == 0:
        raise ValueError("no usable rows to split")
    return [int(np.quantile(pooled, f, method="inverted_cdf")) for f in fractions]


@dataclass(frozen=True)
class Assignment:
    """Each row's part (NONE, TRAIN, VAL, TEST) and why rows were dropped."""

    part: np.ndarray
    counts: dict[str, int]


def assign(
    known_at: np.ndarray,
    end: np.ndarray,
    usable: np.ndarray,
    cuts: list[int],
    embargo_bars: int,
    last_open_part: bool,
    bars: tuple[np.ndarray, np.ndarray] | None = None,
) -> Assignment:
    """Part i (1-based) holds the rows whose known_at AND target_end lie in (cut[i-1], cut[i]]
    (cut[0] = -inf); after the last cut comes an open-ended part when `last_open_part` (the
    test part), else none (walk-forward folds pass their val end as the last cut).

    Purged rows straddle a cut (known_at <= cut < target_end); embargoed rows are the first
    `embargo_bars` rows after a cut. With `bars` = (each row's bar position, the pair's bars'
    known_at), rows are events: embargoed are those whose bar is one of the pair's first
    `embargo_bars` bars known after the cut.
    """
    n = known_at.size
    part = np.zeros(n, dtype=np.int8)
    edges = [np.iinfo(np.int64).min, *cuts] + ([NO_END - 1] if last_open_part else [])
    counts = {"unusable": int((~usable).sum()), "purged": 0, "embargoed": 0, "incomplete_target": 0}
    for index in range(len(edges) - 1):
        low, high = edges[index], edges[index + 1]
        inside = usable & (known_at > low) & (known_at <= high)
        complete = inside & (end <= high)
        if index > 0 and embargo_bars > 0:
            if bars is None:
                embargoed = np.flatnonzero(inside)[:embargo_bars]
            else:
                first_bar_after = np.searchsorted(bars[1], low, side="right")
                embargoed = np.flatnonzero(inside & (bars[0] < first_bar_after + embargo_bars))
            counts["embargoed"] += int(complete[embargoed].sum())
            complete[embargoed] = False
        part[complete] = index + 1
        dropped = inside & (end > high)  # straddling the cut, or no complete target at all
        if high == NO_END - 1:
            counts["incomplete_target"] += int((dropped & (end == NO_END)).sum())
        else:
            counts["purged"] += int((dropped & (end != NO_END)).sum())
            counts["incomplete_target"] += int((dropped & (end == NO_END)).sum())
    if not last_open_part:
        counts["after_last_cut"] = int((usable & (known_at > cuts[-1])).sum())
    return Assignment(part=part, counts=counts)


def check_assignment(pair: str, known_at: np.ndarray, end: np.ndarray, assignment: Assignment, cuts: list[int], last_open_part: bool) -> None:
    """Re-check each assigned row against the rule, independently of `assign`: its known_at and
    its longest target's end inside its part, the target complete. A row that breaks it would be
    a look-ahead leak in the written files, so it stops the builder (naming pair, part, minute)."""
    edges = [np.iinfo(np.int64).min, *cuts] + ([NO_END - 1] if last_open_part else [])
    for code in range(1, len(edges)):
        rows = np.flatnonzero(assignment.part == code)
        bad = rows[(known_at[rows] <= edges[code - 1]) | (known_at[rows] > edges[code]) | (end[rows] > edges[code]) | (end[rows] == NO_END)]
        if bad.size:
            minute = np.datetime64(int(known_at[bad[0]] - MINUTE_US), "us")
            raise AssertionError(f"{pair}: row at {minute} assigned to part {code} although its target window is not inside it")


@dataclass(frozen=True)
class SplitPlan:
    """The instants every pair is split at (µs since the epoch, UTC)."""

    boundaries: tuple[int, int]  # b1, b2
    fold_cuts: tuple[tuple[int, ...], ...]  # per walk-forward fold: (train end, val end)
    embargo_bars: int
    longest_horizon: int


def plan_split(
    known_at_usable: list[np.ndarray], train_fraction: float, val_fraction: float, folds: int, embargo_bars: int, longest_horizon: int
) -> SplitPlan:
    """Boundaries from the pooled known_at of all pairs' usable rows; fold cuts inside train+val."""
    b1, b2 = pooled_boundaries(known_at_usable, [train_fraction, train_fraction + val_fraction])
    fold_cuts: list[tuple[int, ...]] = []
    if folds:
        inside = [k[k <= b2] for k in known_at_usable]
        cuts = pooled_boundaries(inside, [j / (folds + 1) for j in range(1, folds + 1)]) + [b2]
        fold_cuts = [(cuts[k], cuts[k + 1]) for k in range(folds)]
    return SplitPlan((b1, b2), tuple(fold_cuts), embargo_bars, longest_horizon)


@dataclass(frozen=True)
class PairTimes:
    """What the split needs of one pair's rows: when each is known and when its longest target
    is, whether it is usable, and (rows at events) each row's bar and the pair's bars' known_at."""

    pair: str
    known_at_us: np.ndarray
    target_end_us: np.ndarray
    usable: np.ndarray
    bars: tuple[np.ndarray, np.ndarray] | None = None


def minute_times(keys: PairKeys, usable: np.ndarray, longest_horizon: int) -> PairTimes:
    """Every minute of the pair is a row."""
    return PairTimes(keys.pair, keys.known_at_us, target_end_us(keys, longest_horizon), usable)


def event_times(keys: PairKeys, usable_bars: np.ndarray, known_at_us: np.ndarray, bar_position: np.ndarray, longest_horizon: int) -> PairTimes:
    """A row per event: known at the event's time, its targets those of its bar."""
    return PairTimes(keys.pair, known_at_us, target_end_us(keys, longest_horizon)[bar_position], usable_bars[bar_position], (bar_position, keys.known_at_us))


def split_times(times: PairTimes, plan: SplitPlan) -> Assignment:
    """train / val / test of one pair's rows."""
    assignment = assign(times.known_at_us, times.target_end_us, times.usable, list(plan.boundaries), plan.embargo_bars, last_open_part=True, bars=times.bars)
    check_assignment(times.pair, times.known_at_us, times.target_end_us, assignment, list(plan.boundaries), last_open_part=True)
    return assignment


def fold_times(times: PairTimes, plan: SplitPlan, fold: int) -> Assignment:
    """train / val of walk-forward fold `fold` (0-based) for one pair."""
    train_end, val_end = plan.fold_cuts[fold]
    assignment = assign(times.known_at_us, times.target_end_us, times.usable, [train_end, val_end], plan.embargo_bars, last_open_part=False, bars=times.bars)
    check_assignment(times.pair, times.known_at_us, times.target_end_us, assignment, [train_end, val_end], last_open_part=False)
    return assignment


def split_pair(keys: PairKeys, usable: np.ndarray, plan: SplitPlan) -> Assignment:
    """train / val / test of one pair's minutes."""
    return split_times(minute_times(keys, usable, plan.longest_horizon), plan)


def fold_pair(keys: PairKeys, usable: np.ndarray, plan: SplitPlan, fold: int) -> Assignment:
    """train / val of walk-forward fold `fold` (0-based) for one pair's minutes."""
    return fold_times(minute_times(keys, usable, plan.longest_horizon), plan, fold)
