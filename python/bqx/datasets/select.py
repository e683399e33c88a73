"""Select features with a random forest fit on training rows only.

One list for all horizons: a single multi-output forest fit on every target at once, each
target divided by its standard deviation on the fit rows so that every horizon weighs the same
in the impurity decrease (otherwise the 60-bar target, whose variance is the largest, would
choose alone).

The forest is scikit-learn's ExtraTreesRegressor by default (`--forest extra`: a random forest
whose split thresholds are drawn at random instead of searched, on bootstrap samples) and
RandomForestRegressor on request (`--forest random`). Measured on 50k rows x 1,200 candidates:
ten depth-10 trees took 39 s with RandomForestRegressor (it sorts every candidate at every
node) and 3.5 s with ExtraTrees, so only the latter fits the 5-minute FX-year budget; random
thresholds also soften MDI's preference for features with many distinct values.

MDI (mean decrease in impurity) favours continuous and correlated features, and the 60/120/180
lags of a feature are near-duplicates that share its importance. So the MDI top 3N candidates
are re-ranked by permutation importance on a purged hold-out carved from the END of the
training period (the forest never saw those rows nor any row whose target reaches into them):
a feature and all its lags are permuted together, as one group, and the drop in R^2 (averaged
over the standardised targets) is the group's importance. `importance="permutation"` (the
default) then fills the N slots group by group in that order, each group contributing its
members that are among the MDI candidates (best MDI first); `importance="mdi"` takes the MDI
top N. Stability: the overlap of the MDI top N of two forests fit on the two halves (by time)
of the fit rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from bqx.datasets.lags import Candidate

PERMUTATION_REPEATS = 2
FOREST_MIN_LEAF = 50  # leaves of at least 50 rows: minute returns are mostly noise
FOREST_MAX_FEATURES = 0.05  # share of the candidates tried at each split
FOREST_MAX_DEPTH = 12  # enough to rank features; deeper trees only fit noise, slowly
FOREST_MAX_SAMPLES = 0.5  # each tree sees a bootstrap of half the sampled rows
FORESTS = ("extra", "random")


@dataclass(frozen=True)
class Sample:
    """Training rows drawn for the selection: features (float32), targets, and when each row
    is known and when its longest target is known (µs since the epoch, UTC)."""

    x: np.ndarray
    y: np.ndarray
    names: tuple[str, ...]
    targets: tuple[str, ...]
    known_at_us: np.ndarray
    target_end_us: np.ndarray
    pair: np.ndarray

    def rows(self, index: np.ndarray) -> Sample:
        return Sample(self.x[index], self.y[index], self.names, self.targets, self.known_at_us[index], self.target_end_us[index], self.pair[index])

    @property
    def size(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True)
class Selection:
    selected: tuple[str, ...]
    importances: pd.DataFrame  # one row per candidate
    stability: dict[str, float]
    sampled: dict[str, object] = field(default_factory=dict)


def holdout_cut(train_known_at_us: np.ndarray, share: float = 0.15) -> int:
    """The instant after which the training period's last `share` of rows form the hold-out."""
    return int(np.quantile(train_known_at_us, 1 - share, method="inverted_cdf"))


def _forest(kind: str, trees: int, seed: int):  # noqa: ANN202
    from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor

    forest = {"extra": ExtraTreesRegressor, "random": RandomForestRegressor}[kind]
    return forest(
        n_estimators=trees,
        max_features=FOREST_MAX_FEATURES,
        min_samples_leaf=FOREST_MIN_LEAF,
        max_depth=FOREST_MAX_DEPTH,
        bootstrap=True,
        max_samples=FOREST_MAX_SAMPLES,
        n_jobs=2,
        random_state=seed,
    )


def _standardise(y: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return y / scale


def _r2(y: np.ndarray, predicted: np.ndarray) -> float:
    """R^2 per standardised target against its hold-out mean, averaged over targets."""
    residual = ((y - predicted) ** 2).sum(axis=0)
    total = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    return float(np.mean(1 - residual / np.where(total > 0, total, 1)))


def _mdi(x: np.ndarray, y: np.ndarray, trees: int, seed: int, kind: str = "extra") -> tuple[np.ndarray, object]:
    forest = _forest(kind, trees, seed)
    forest.fit(x, y)  # trees are fit in parallel, each from its own seed: deterministic
    # predictions summed by parallel threads add the trees in a varying order, which changes
    # the last bits of an R^2 (and so importances.csv) from run to run: predict serially
    forest.set_params(n_jobs=1)
    return forest.feature_importances_, forest


def _forest_predict(model: Any, x: np.ndarray, tree_predictions: Sequence[np.ndarray]) -> np.ndarray:
    """The forest's prediction from its trees' (in tree order): exactly what its predict() gives
    on one thread (the same float64 sum in the same order, divided by the number of trees)."""
    total = np.zeros_like(tree_predictions[0], dtype=np.float64)
    for predicted in tree_predictions:
        total += predicted
    total /= len(tree_predictions)
    return total


@dataclass(frozen=True)
class _TreeArrays:
    """A fitted tree's node arrays (scikit-learn builds new arrays at each attribute read)."""

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    missing_left: np.ndarray
    value: np.ndarray
    ancestors: np.ndarray  # per node, the nodes on its path from the root (padded with the root)

    @classmethod
    def of(cls, tree: Any) -> _TreeArrays:
        structure = tree.tree_
        parent = np.zeros(structure.node_count, dtype=np.intp)
        split = np.flatnonzero(structure.children_left >= 0)
        parent[structure.children_left[split]] = split
        parent[structure.children_right[split]] = split
        paths = [np.arange(structure.node_count)]
        for _ in range(structure.max_depth):
            paths.append(parent[paths[-1]])  # the root is its own parent: short paths end padded with it
        return cls(
            structure.feature, structure.threshold, structure.children_left, structure.children_right,
            structure.missing_go_to_left.astype(bool), structure.value, np.column_stack(paths),
        )

    def moved(self, columns: np.ndarray, leaves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows (of the leaves `leaves`) whose path passes a split on one of `columns` (a
        boolean mask over x's columns), and for each the first such split from the root: above
        it the row's path cannot change whatever values those columns take."""
        splits = (self.feature >= 0) & columns[np.maximum(self.feature, 0)]
        if not splits.any():
            return np.empty(0, dtype=np.intp), np.empty(0, dtype=np.intp)
        on_path = splits[self.ancestors]  # per node and ancestor (the node first, the root last)
        rows = np.flatnonzero(on_path.any(axis=1)[leaves])
        last = on_path.shape[1] - 1 - np.argmax(on_path[:, ::-1], axis=1)  # the split nearest the root
        first_split = self.ancestors[np.arange(self.ancestors.shape[0]), last]
        return rows, first_split[leaves[rows]]

    def leaves(self, x: np.ndarray, start: np.ndarray, rows: np.ndarray, source: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """The leaf each of `rows` reaches from node `start` when the values of `columns` (a
        boolean mask over x's columns) are read from row `source` instead: scikit-learn's own
        descent (a NaN goes where the node sends missing values; otherwise left when value <=
        threshold, the float32 value compared as a float64 with the float64 threshold)."""
        node = start
        for _ in range(self.ancestors.shape[1] - 1):
            feature = self.feature[node]
            inner = feature >= 0
            if not inner.any():
                break
            feature = np.where(inner, feature, 0)
            value = x[np.where(columns[feature], source, rows), feature]
            left = np.where(np.isnan(value), self.missing_left[node], value <= self.threshold[node])
            node = np.where(inner, np.where(left, self.left[node], self.right[node]), node)
        return node


def _group_drops(model: Any, x: np.ndarray, y: np.ndarray, groups: Sequence[Sequence[int]], seed: int) -> tuple[list[float], float]:
    """Permutation importance of each group of columns on the hold-out (x, y): the mean drop of
    R^2 over PERMUTATION_REPEATS shuffles of the group's rows together, and the unshuffled R^2.

    A row whose path through a tree passes no node splitting on one of the group's columns
    reaches the same leaf whatever values those columns take, so after a shuffle only the rows
    below such a node are sent down that tree again, reading the group's columns from their
    shuffled rows (no shuffled copy of the hold-out is made); every other prediction is kept
    from the unshuffled pass. The sum over trees is then the forest's predict() on the shuffled
    rows, bit for bit (tested), at a fraction of the cost (on 28 pairs x 3 months, 184 groups of
    a 100-tree forest: a group is split on by ~28 trees and moves ~16% of their rows). Groups
    are spread over two threads; every shuffle is drawn beforehand, in group order, from one
    generator seeded with `seed`, so the result does not depend on the threads."""
    from concurrent.futures import ThreadPoolExecutor

    trees = model.estimators_
    x = np.ascontiguousarray(x, dtype=np.float32)
    unshuffled = [tree.predict(x, check_input=False) for tree in trees]
    base_score = _r2(y, _forest_predict(model, x, unshuffled))
    arrays = [_TreeArrays.of(tree) for tree in trees]
    leaves = [tree.apply(x, check_input=False) for tree in trees]
    rng = np.random.default_rng(seed)
    orders = [[rng.permutation(x.shape[0]) for _ in range(PERMUTATION_REPEATS)] for _ in groups]

    def drop(index: int) -> float:
        columns = np.zeros(x.shape[1], dtype=bool)
        columns[list(groups[index])] = True
        moved = [(t, *tree.moved(columns, leaves[t])) for t, tree in enumerate(arrays)]
        moved = [(t, rows, start) for t, rows, start in moved if rows.size]
        scores = []
        for order in orders[index]:
            predictions = list(unshuffled)
            for t, rows, start in moved:
                predicted = unshuffled[t].copy()
                value = arrays[t].value[arrays[t].leaves(x, start, rows, order[rows], columns)]
                predicted[rows] = value.reshape(rows.size, *predicted.shape[1:])
                predictions[t] = predicted
            scores.append(base_score - _r2(y, _forest_predict(model, x, predictions)))
        return float(np.mean(scores))

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(drop, range(len(groups)))), base_score


def _top(scores: np.ndarray, n: int) -> list[int]:
    order = np.lexsort((np.arange(scores.size), -scores))  # ties: catalog order (deterministic)
    return [int(i) for i in order[:n]]


def select_features(
    fit: Sample,
    holdout: Sample,
    candidates: Sequence[Candidate],
    *,
    top_n: int,
    importance: str,
    trees: int,
    seed: int,
    forest: str = "extra",
) -> Selection:
    """Rank `candidates` (columns of fit.x, in order) and pick the top N (see the module doc)."""
    if fit.size == 0:
        raise ValueError("no training rows to select features on")
    names = [c.name for c in candidates]
    if tuple(names) != fit.names:
        raise ValueError("the sample's columns are not the candidates")
    scale = fit.y.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    y_fit = _standardise(fit.y, scale)
    mdi, model = _mdi(fit.x, y_fit, trees, seed, forest)
    top_n = min(top_n, len(names))
    mdi_top = _top(mdi, top_n)
    mdi_candidates = _top(mdi, min(3 * top_n, len(names)))

    permutation = np.full(len(names), np.nan)
    base_score = float("nan")
    if importance == "permutation" and holdout.size:
        y_hold = _standardise(holdout.y, scale)
        members: dict[str, list[int]] = {}
        for index, candidate in enumerate(candidates):
            members.setdefault(candidate.base, []).append(index)
        groups = list(dict.fromkeys(candidates[i].base for i in mdi_candidates))
        drops, base_score = _group_drops(model, holdout.x, y_hold, [members[base] for base in groups], seed)
        for base, drop in zip(groups, drops, strict=True):
            for i in members[base]:
                if i in mdi_candidates:
                    permutation[i] = drop

    if importance == "permutation" and holdout.size:
        chosen = _fill_by_groups(candidates, mdi, permutation, mdi_candidates, top_n)
    else:
        chosen = mdi_top

    rank = np.full(len(names), 0)
    for position, index in enumerate(chosen, start=1):
        rank[index] = position
    importances = pd.DataFrame(
        {
            "feature": names,
            "base": [c.base for c in candidates],
            "lag": [c.lag for c in candidates],
            "mdi": mdi,
            "mdi_rank": _ranks(mdi),
            "permutation_group": permutation,
            "selected_rank": rank,
        }
    )
    importances = importances.sort_values(["selected_rank", "mdi_rank"], key=lambda s: s.where(s > 0, 10**9), kind="stable")
    stability = _stability(fit, y_fit, candidates, top_n, trees, seed, chosen, forest)
    sampled = {
        "fit_rows": fit.size,
        "holdout_rows": holdout.size,
        "candidates": len(names),
        "forest": forest,
        "trees": trees,
        "max_depth": FOREST_MAX_DEPTH,
        "max_samples": FOREST_MAX_SAMPLES,
        "max_features": FOREST_MAX_FEATURES,
        "min_samples_leaf": FOREST_MIN_LEAF,
        "holdout_r2_standardised": base_score,
        "permutation_repeats": PERMUTATION_REPEATS if importance == "permutation" else 0,
        "permuted_groups": int(len({candidates[i].base for i in mdi_candidates})) if importance == "permutation" else 0,
    }
    return Selection(tuple(names[i] for i in chosen), importances.reset_index(drop=True), stability, sampled)


def _ranks(scores: np.ndarray) -> np.ndarray:
    ranks = np.empty(scores.size, dtype=np.int64)
    ranks[_top(scores, scores.size)] = np.arange(1, scores.size + 1)
    return ranks


def _fill_by_groups(candidates: Sequence[Candidate], mdi: np.ndarray, permutation: np.ndarray, pool: list[int], top_n: int) -> list[int]:
    """Groups in order of permutation importance (ties: best MDI member), each contributing its
    members from the MDI candidate pool, best MDI first, until N columns are chosen."""
    by_group: dict[str, list[int]] = {}
    for index in pool:  # pool is in MDI order
        by_group.setdefault(candidates[index].base, []).append(index)
    order = sorted(by_group, key=lambda base: (-permutation[by_group[base][0]], pool.index(by_group[base][0])))
    chosen: list[int] = []
    for base in order:
        for index in by_group[base]:
            if len(chosen) < top_n:
                chosen.append(index)
    return chosen


def _stability(
    fit: Sample, y_fit: np.ndarray, candidates: Sequence[Candidate], top_n: int, trees: int, seed: int, chosen: list[int], forest: str
) -> dict[str, float]:
    """Overlap of the MDI top N of forests on the early and the late half of the fit rows (by
    known_at), and of each with the selection."""
    order = np.argsort(fit.known_at_us, kind="stable")
    halves = [order[: order.size // 2], order[order.size // 2 :]]
    tops = []
    for index, half in enumerate(halves):
        mdi, _ = _mdi(fit.x[half], y_fit[half], max(trees // 2, 10), seed + 1 + index, forest)
        tops.append(set(_top(mdi, top_n)))
    selected = set(chosen)
    return {
        "top_n": float(top_n),
        "halves_overlap": len(tops[0] & tops[1]) / top_n,
        "early_half_vs_selection": len(tops[0] & selected) / top_n,
        "late_half_vs_selection": len(tops[1] & selected) / top_n,
    }


def gather(
    table: pa.Table, positions: np.ndarray, candidates: Sequence[Candidate], targets: Sequence[str], out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Features (base and lagged, float32) and targets at `positions` of one pair's rows (its
    extracted file's table); a lag is read `lag` rows back in the same pair's rows (NaN before
    its first row, as lags.lag_column gives). `out`, when given, receives the features.

    Only the rows the sample reads (each position and its lags) are taken from the table and
    converted to NumPy: converting every column of a pair whole, as this did before, cost more
    than reading the file (on 28 pairs x 3 months, 19 s of CPU for the sample)."""
    lags = sorted({c.lag for c in candidates})
    sources = np.concatenate([positions, *(positions - lag for lag in lags)])  # the rows themselves: the targets
    needed = np.unique(sources[sources >= 0])
    bases = list(dict.fromkeys(c.base for c in candidates))
    rows = table.select([*bases, *targets]).take(pa.array(needed, type=pa.int64()))
    values = np.empty((needed.size + 1, len(bases)), dtype=np.float32)  # its last row: NaN, before the pair's first row
    values[-1] = np.nan
    for column, base in enumerate(bases):
        values[:-1, column] = rows.column(base).to_numpy(zero_copy_only=False)  # NULL -> NaN; float64 rounded as an assignment does
    base_column = {base: column for column, base in enumerate(bases)}
    x = out if out is not None else np.empty((positions.size, len(candidates)), dtype=np.float32)
    for lag in lags:
        columns = [j for j, c in enumerate(candidates) if c.lag == lag]
        source = positions - lag
        at = np.where(source >= 0, np.searchsorted(needed, source), needed.size)
        x[:, columns] = values[np.ix_(at, [base_column[candidates[j].base] for j in columns])]
    at = np.searchsorted(needed, positions)
    y = np.column_stack([rows.column(t).to_numpy(zero_copy_only=False)[at] for t in targets]).astype(np.float64)
    return x, y
