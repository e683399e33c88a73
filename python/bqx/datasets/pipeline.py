"""The dataset builder: extraction -> validation -> lags -> split -> selection -> datasets ->
baseline models -> report. Each step is a module of this package; this one only wires them.

`run(options)` is what `python python/build_datasets.py` and `bqx datasets` call.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bqx.datasets import datasets as ds
from bqx.datasets import events as ev
from bqx.datasets import extract as ex
from bqx.datasets import lags as lg
from bqx.datasets import report as rp
from bqx.datasets import select as sel
from bqx.datasets import split as sp
from bqx.datasets import train as tr
from bqx.datasets import validate as va
from bqx.datasets.files import atomic_write_text, ensure_writable, remove_leftovers, temporary_path
from bqx.datasets.options import BuilderOptions, DatasetError, check_options
from bqx.distribute import source_distributed
from bqx.project import PROJECT_DIR, dbt_vars

MIN_PART_ROWS = 100  # fewer rows in a part (pooled) and the split is not worth the name
VALIDATION_FILE = "_validation.json"


@dataclass
class StepClock:
    """Wall seconds per step of one run, for the closing note (kept out of the manifest: the same
    inputs must give the same files)."""

    seconds: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def lap(self, step: str) -> None:
        """The time since the previous lap (or the start) is `step`'s."""
        now = time.perf_counter()
        self.seconds[step] = self.seconds.get(step, 0.0) + now - self.started
        self.started = now


@dataclass(frozen=True)
class BuildResult:
    dataset_id: str
    dataset_dir: Path
    report: Path
    reused_dataset: bool
    reused_pairs: int
    metrics: pd.DataFrame
    step_seconds: dict[str, float] = field(default_factory=dict)


def catalog_hash(catalog: Any) -> str:
    payload = {
        "features": [dataclasses.asdict(f) for f in catalog.features],
        "targets": [dataclasses.asdict(t) for t in catalog.targets],
        "vars": catalog.dbt_vars,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def load_catalog(project_dir: Path, overrides: dict[str, Any]) -> Any:
    from bqx.catalog import feature_catalog

    try:
        return feature_catalog(project_dir, vars=overrides or None)
    except DatasetError:
        raise
    except Exception as err:  # noqa: BLE001 - the catalog's own message says what is wrong
        raise DatasetError(f"cannot read the feature catalog: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}") from None


def _status(message: str, options: BuilderOptions) -> None:
    if options.progress:
        print(message, file=sys.stderr, flush=True)


def _validation_key(extracts: Sequence[ex.PairExtract], options: BuilderOptions, catalog_digest: str) -> str:
    payload = [
        [[e.pair, e.fingerprint, e.columns_hash, e.rows, e.first_ts, e.last_ts] for e in extracts],
        options.seed,
        options.lookahead_cuts,
        options.target_checks,
        catalog_digest,
        va.COMPARE_BARS,
    ]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def validated(
    dsn: str,
    extracts: Sequence[ex.PairExtract],
    catalog: Any,
    options: BuilderOptions,
    end_ts: dt.datetime,
    catalog_digest: str,
    rules: dict[str, str | None] | None = None,
) -> dict[str, Any]:
    """Validate (or reuse a passed validation of exactly these extractions); raise on failure."""
    path = options.out / "features" / VALIDATION_FILE
    key = _validation_key(extracts, options, catalog_digest)
    if options.reuse:
        try:
            previous = json.loads(path.read_text())
            if previous.get("key") == key and not previous.get("problems"):
                return previous
        except (OSError, json.JSONDecodeError):
            pass
    work = options.out / "features" / ".work"
    try:
        report = va.validate(
            dsn,
            extracts,
            catalog,
            end_ts=end_ts,
            lookahead_cuts=options.lookahead_cuts,
            target_checks=options.target_checks,
            seed=options.seed,
            work=work,
            dbt_vars=options.dbt_var_overrides(),
            progress=options.progress,
            rules=rules,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)  # dbt's target folders of the scratch builds
    record = {"key": key, "problems": [p.line() for p in report.problems], "summary": report.summary, "checked": report.checked}
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    report.raise_if_failed(path)
    return record


@dataclass(frozen=True)
class PairRows:
    """One pair's rows (every minute, or its events with --events) and their part: `keys` are
    the pair's extracted bars, `times` and `assignment` one entry per row, `bar_position` each
    row's bar in the extraction."""

    extract: ex.PairExtract
    keys: sp.PairKeys
    times: sp.PairTimes
    assignment: sp.Assignment
    bar_position: np.ndarray
    events: ev.PairEvents | None = None

    @property
    def usable(self) -> np.ndarray:
        return self.times.usable

    @property
    def known_at_us(self) -> np.ndarray:
        return self.times.known_at_us

    @property
    def target_end_us(self) -> np.ndarray:
        return self.times.target_end_us


def read_keys(extract: ex.PairExtract) -> sp.PairKeys:
    table = pq.read_table(extract.path, columns=["ts_utc", "bar_number"])
    ts = table.column("ts_utc").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
    return sp.PairKeys(extract.pair, ts, table.column("bar_number").to_numpy())


def _check_long_enough(sources: Sequence[ex.PairSource], longest_warmup: int, longest_lag: int) -> None:
    """Before any extraction: every pair has rows after its warm-ups and lags (the split's own
    minimum is checked once the rows are known)."""
    for source in sources:
        first_usable = max(longest_lag, longest_warmup + longest_lag - source.bars_before)  # 0-based position
        if source.rows <= first_usable:
            raise DatasetError(
                f"the range of {source.pair} is too short: {source.rows} bars, but usable rows start after the longest warm-up "
                f"({longest_warmup} bars) plus the longest lag ({longest_lag} bars); widen --start/--end or use shorter --lags"
            )


def split_rows(
    extracts: Sequence[ex.PairExtract], catalog: Any, options: BuilderOptions, events: ev.EventsFile | None = None, located: pa.Table | None = None
) -> tuple[sp.SplitPlan, list[PairRows], dict[str, int]]:
    """Every pair's rows and their parts. With `events` (and their bars, `located`), a row per
    event that has a usable bar; also returns the events of pairs not built, by reason."""
    longest_lag = lg.longest(options.lags)
    longest_horizon = max(t.horizon_bars for t in catalog.targets)
    keys = [read_keys(e) for e in extracts]
    usable = [sp.usable_mask(k, catalog.longest_warmup_bars, longest_lag) for k in keys]
    empty = [k.pair for k, u in zip(keys, usable) if not u.any()]
    if empty:
        raise DatasetError(
            f"the range of {empty[0]} is too short: no usable row after the longest warm-up ({catalog.longest_warmup_bars} bars) "
            f"plus the longest lag ({longest_lag} bars); widen --start/--end or use shorter --lags"
        )
    not_built: dict[str, int] = {}
    if events is None:
        at_events: list[ev.PairEvents | None] = [None] * len(keys)
        times = [sp.minute_times(k, u, longest_horizon) for k, u in zip(keys, usable)]
        positions = [np.arange(k.ts_us.size) for k in keys]
    else:
        found, not_built = ev.pair_events(events, located, [e.pair for e in extracts], keys, usable)
        at_events = list(found)
        times = [sp.event_times(k, u, f.known_at_us, f.bar_position, longest_horizon) for k, u, f in zip(keys, usable, found)]
        positions = [f.bar_position for f in found]
        if not any(t.usable.any() for t in times):
            dropped = {reason: not_built.get(reason, 0) + sum(f.dropped[reason] for f in found) for reason in ev.DROP_REASONS}
            shown = ", ".join(f"{n:,} {reason}" for reason, n in dropped.items() if n)
            raise DatasetError(f"--events {events.path}: no event has a usable bar ({shown}): give events inside the built range, after the warm-ups")
    plan = sp.plan_split([t.known_at_us[t.usable] for t in times], options.train_fraction, options.val_fraction, options.walk_forward, options.embargo_bars, longest_horizon)
    rows = []
    for extract, key, time, position, at in zip(extracts, keys, times, positions, at_events):
        rows.append(PairRows(extract, key, time, sp.split_times(time, plan), position, at))
    totals = {name: sum(int((r.assignment.part == code).sum()) for r in rows) for code, name in sp.PART_NAMES.items()}
    short = [name for name, n in totals.items() if n < MIN_PART_ROWS]
    if short and events is not None:
        raise DatasetError(
            f"--events {events.path}: the {short[0]} part holds {totals[short[0]]} events (< {MIN_PART_ROWS}) after the drops "
            f"and the purge ({longest_horizon} bars per boundary): give more events, spread over the range"
        )
    if short:
        raise DatasetError(
            f"the range is too short for the split: after the warm-ups ({catalog.longest_warmup_bars} bars), lags ({longest_lag}) and "
            f"the purge ({longest_horizon} bars per boundary) the {short[0]} part holds {totals[short[0]]} rows (< {MIN_PART_ROWS}); widen --start/--end"
        )
    return plan, rows, not_built


def selection_sample(
    rows: Sequence[PairRows], part_of: Sequence[np.ndarray], candidates: Sequence[lg.Candidate], targets: Sequence[str], options: BuilderOptions, seed_offset: int = 0
) -> tuple[sel.Sample, sel.Sample]:
    """Seeded samples of training rows across all pairs: the forest's fit rows (their targets
    close before the hold-out cut) and the hold-out (known after it), both training rows only."""
    train_known = np.concatenate([r.known_at_us[p == sp.TRAIN] for r, p in zip(rows, part_of)])
    cut = sel.holdout_cut(train_known)
    fit_pool, hold_pool = [], []
    for index, (r, p) in enumerate(zip(rows, part_of)):
        train = np.flatnonzero(p == sp.TRAIN)
        fit_pool.append(np.column_stack([np.full(train.size, index), train])[r.target_end_us[train] <= cut])
        hold_pool.append(np.column_stack([np.full(train.size, index), train])[r.known_at_us[train] > cut])
    rng = np.random.default_rng(options.seed + seed_offset)
    picks = []
    for pool, size in ((np.concatenate(fit_pool), options.selection_sample), (np.concatenate(hold_pool), options.holdout_rows if options.importance == "permutation" else 0)):
        chosen = pool[np.sort(rng.choice(pool.shape[0], size=min(size, pool.shape[0]), replace=False))] if size else pool[:0]
        picks.append(chosen)
    names = [c.name for c in candidates]
    bases = list(dict.fromkeys(c.base for c in candidates))
    # each sample's arrays made once at full size and filled pair by pair (no concatenation)
    wanted = [[pick[pick[:, 0] == index, 1] for pick in picks] for index in range(len(rows))]
    sizes = [sum(w[k].size for w in wanted) for k in range(2)]
    xs = [np.empty((size, len(names)), dtype=np.float32) for size in sizes]
    ys = [np.empty((size, len(targets))) for size in sizes]
    known, end = [np.empty(size, np.int64) for size in sizes], [np.empty(size, np.int64) for size in sizes]
    pair = [np.empty(size, dtype=object) for size in sizes]
    filled = [0, 0]
    for index, r in enumerate(rows):
        if not any(w.size for w in wanted[index]):
            continue
        table = ex.read_pair(r.extract, [*bases, *targets])  # one pair's file at a time
        for k, positions in enumerate(wanted[index]):
            if positions.size:
                at = slice(filled[k], filled[k] + positions.size)
                _, ys[k][at] = sel.gather(table, r.bar_position[positions], candidates, targets, out=xs[k][at])  # a row's bar (an event's)
                known[k][at], end[k][at], pair[k][at] = r.known_at_us[positions], r.target_end_us[positions], r.extract.pair
                filled[k] += positions.size
        del table
    fit, holdout = (sel.Sample(xs[k], ys[k], tuple(names), tuple(targets), known[k], end[k], pair[k]) for k in range(2))
    return fit, holdout


def run_selection(rows: Sequence[PairRows], part_of: Sequence[np.ndarray], candidates: Sequence[lg.Candidate], targets: Sequence[str], options: BuilderOptions, seed_offset: int = 0) -> sel.Selection:
    fit, holdout = selection_sample(rows, part_of, candidates, targets, options, seed_offset)
    return sel.select_features(fit, holdout, candidates, top_n=options.top_n, importance=options.importance, trees=options.forest_trees, seed=options.seed + seed_offset, forest=options.forest)


def _span(known_at_us: np.ndarray, part: np.ndarray, code: int) -> list[str] | None:
    index = np.flatnonzero(part == code)
    if not index.size:
        return None
    return [_iso(int(known_at_us[index].min())), _iso(int(known_at_us[index].max()))]


def _iso(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).isoformat()


def _chunk(table: pa.Table, selected: Sequence[str], targets: Sequence[str]) -> tr.Chunk:
    x = np.column_stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in selected])
    y = np.column_stack([table.column(t).to_numpy(zero_copy_only=False) for t in targets])
    known = table.column("known_at").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
    return tr.Chunk(table.column("pair")[0].as_py(), known, x, y)


def _chunks(root: Path, part: str, selected: Sequence[str], targets: Sequence[str]) -> Iterator[tr.Chunk]:
    for table in ds.iter_part(root, part, ["pair", "known_at", *selected, *targets]):
        yield _chunk(table, selected, targets)


def part_sample(root: Path, part: str, selected: Sequence[str], targets: Sequence[str], size: int, seed: int | Sequence[int]) -> tuple[tr.TrainingSet, int]:
    """A seeded sample of the written `part` (all of it when smaller than `size`) and its rows."""
    files = ds.part_files(root, part)
    counts = [pq.ParquetFile(f).metadata.num_rows for f in files]
    total = sum(counts)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(total, size=min(size, total), replace=False))
    offsets = np.cumsum([0, *counts])
    xs, ys, known, pairs = [], [], [], []
    for index, table in enumerate(ds.iter_part(root, part, ["pair", "known_at", *selected, *targets])):
        local = chosen[(chosen >= offsets[index]) & (chosen < offsets[index + 1])] - offsets[index]
        # the sampled rows are taken in Arrow first, not after converting the pair's whole part
        # to float64 (100k rows are kept of 7M at FX-year size)
        chunk = _chunk(table.take(pa.array(local)), selected, targets)
        xs.append(chunk.x)
        ys.append(chunk.y)
        known.append(chunk.known_at_us)
        pairs.append(np.full(local.size, chunk.pair))
    known_all = np.concatenate(known)
    return tr.TrainingSet(np.concatenate(xs), np.concatenate(ys), known_all, np.full(known_all.size, -1), np.concatenate(pairs)), total


def build_manifest(
    identifier: str,
    options: BuilderOptions,
    catalog: Any,
    plan: sp.SplitPlan,
    rows: Sequence[PairRows],
    part_counts: dict[str, dict[str, int]],
    selection: sel.Selection,
    selected_types: dict[str, pa.DataType],
    folds: list[dict[str, Any]],
    builder_state: dict[str, Any],
    catalog_digest: str,
    validation: dict[str, Any],
    events_record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    longest_lag = lg.longest(options.lags)
    per_pair = {}
    for r in rows:
        counts = dict(part_counts[r.extract.pair])
        counts.update(r.assignment.counts)
        if r.events is not None:
            counts["events"] = int(r.known_at_us.size + sum(r.events.dropped.values()))
            counts.update(r.events.dropped)
        per_pair[r.extract.pair] = {
            "rows": counts,
            "spans": {name: _span(r.known_at_us, r.assignment.part, code) for code, name in sp.PART_NAMES.items()},
        }
    totals: dict[str, int] = {}
    for entry in per_pair.values():
        for key, value in entry["rows"].items():
            totals[key] = totals.get(key, 0) + int(value)
    return {
        "id": identifier,
        "rebuild": "python python/build_datasets.py " + " ".join(_cli_args(options)),
        "events": events_record,
        "builder": builder_state,
        "options": options.identity(),
        "dbt_vars": dbt_vars(PROJECT_DIR) | options.dbt_var_overrides(),
        "dbt_var_overrides": options.dbt_var_overrides(),
        "catalog_sha256": catalog_digest,
        "source": {
            "pairs": [r.extract.pair for r in rows],
            "last_bar": max(r.extract.last_ts for r in rows),
            "per_pair": {
                r.extract.pair: {
                    "first_ts": r.extract.first_ts,
                    "last_ts": r.extract.last_ts,
                    "rows": r.extract.rows,
                    "bars_before": r.extract.bars_before,
                    "fingerprint": r.extract.fingerprint,
                    "float64_columns": list(r.extract.float64_columns),
                }
                for r in rows
            },
            "fingerprint_covers": "raw bars up to the end (count + hash sum), first/last minute and relfilenode of every relation read, the feature_matrix definition",
        },
        "usable_rows": {"longest_warmup_bars": catalog.longest_warmup_bars, "longest_lag_bars": longest_lag},
        "lags": list(options.lags),
        "features": [{"name": n, "type": str(selected_types[n])} for n in selection.selected],
        "targets": [t.column for t in catalog.targets],
        "target_horizons": {t.column: t.horizon_bars for t in catalog.targets},
        "split": {
            "fractions": [options.train_fraction, options.train_fraction + options.val_fraction],
            "boundaries": {"train_end": _iso(plan.boundaries[0]), "val_end": _iso(plan.boundaries[1])},
            "rule": "train: target_end <= train_end; val: known_at > train_end and target_end <= val_end; test: known_at > val_end"
            + ("; a row is an event: known_at = event_time, target_end = the close of bar t+H of its bar t" if events_record else ""),
            "longest_horizon": plan.longest_horizon,
            "embargo_bars": plan.embargo_bars,
            "fold_cuts": [[_iso(a), _iso(b)] for a, b in plan.fold_cuts],
        },
        "parts": per_pair,
        "totals": totals,
        "selection": {"sampled": selection.sampled, "stability": selection.stability, "selected": list(selection.selected)},
        "folds": folds,
        "validation": validation.get("checked", {}),
        "seed": options.seed,
    }


def _events_record(events: ev.EventsFile, options: BuilderOptions, rows: Sequence[PairRows], not_built: dict[str, int]) -> dict[str, Any]:
    """The events file (by content), the rule, and where every event went."""
    dropped = {reason: int(not_built.get(reason, 0)) + sum(r.events.dropped[reason] for r in rows if r.events is not None) for reason in ev.DROP_REASONS}
    split = {name: sum(int(r.assignment.counts.get(name, 0)) for r in rows) for name in ("purged", "embargoed", "incomplete_target")}
    written = {name: sum(int((r.assignment.part == code).sum()) for r in rows) for code, name in sp.PART_NAMES.items()}
    return {
        "file": str(options.events),
        "sha256": events.sha256,
        "events": events.table.num_rows,
        "columns_kept": list(events.extra_columns),
        "max_age": str(options.event_max_age()),
        "rule": "an event's row is its bar t = the pair's last bar with ts_utc + 1 minute <= event_time (age <= max_age): bar t's features, "
        "lags k bars before t in the pair, bar t's targets (closes of t+1 ... t+H, all after the event); known_at = event_time",
        "dropped": dropped,
        "dropped_by_split": split,
        "rows": written,
        "dropped_pairs_not_built": {reason: n for reason, n in not_built.items() if n},
    }


def _cli_args(options: BuilderOptions) -> list[str]:
    values = options.identity()
    args = ["--events", str(options.events)] if options.events is not None else []
    for name, value in values.items():
        if value is None:
            continue
        flag = "--vars" if name == "vars" else "--" + name.replace("_", "-")
        if isinstance(value, list):
            args += [flag, *map(str, value)]
        else:
            args += [flag, f"'{value}'" if name == "vars" else str(value)]
    return args


def _write_dataset(
    tmp: Path,
    rows: Sequence[PairRows],
    plan: sp.SplitPlan,
    catalog: Any,
    options: BuilderOptions,
    candidates: Sequence[lg.Candidate],
    selection: sel.Selection,
    event_schema: pa.Schema | None = None,
) -> tuple[dict[str, dict[str, int]], dict[str, pa.DataType], list[dict[str, Any]]]:
    from tqdm import tqdm

    features = [f.matrix_column for f in catalog.features]
    targets = [t.column for t in catalog.targets]
    extracts = [r.extract for r in rows]
    types = ds.column_types(selection.selected, features, extracts)
    writer = ds.PartWriter(tmp, ds.dataset_schema(selection.selected, types, targets, event_schema))

    def pair_rows(r: PairRows, selected: Sequence[str]) -> pa.Table:
        table = ds.pair_columns(r.extract, selected, features, targets)  # every minute, lags within the pair
        return table if r.events is None else ds.event_rows(table, r.events.table, r.bar_position)

    counts = {}
    for r in tqdm(rows, desc="write datasets", disable=not options.progress, leave=False):
        counts[r.extract.pair] = ds.write_parts(writer, pair_rows(r, selection.selected), r.assignment, targets)
    folds = []
    for k in range(len(plan.fold_cuts)):
        assignments = [sp.fold_times(r.times, plan, k) for r in rows]
        fold_selection = run_selection(rows, [a.part for a in assignments], candidates, targets, options, seed_offset=k + 1)
        fold_types = ds.column_types(fold_selection.selected, features, extracts)
        fold_writer = ds.PartWriter(tmp / "folds" / str(k + 1), ds.dataset_schema(fold_selection.selected, fold_types, targets, event_schema))
        fold_counts = {}
        for r, assignment in zip(rows, assignments):
            fold_counts[r.extract.pair] = ds.write_parts(fold_writer, pair_rows(r, fold_selection.selected), assignment, targets, {sp.TRAIN: "train", sp.VAL: "val"})
        fold_selection.importances.to_csv(tmp / "folds" / str(k + 1) / "importances.csv", index=False)
        folds.append(
            {
                "fold": k + 1,
                "train_end": _iso(plan.fold_cuts[k][0]),
                "val_end": _iso(plan.fold_cuts[k][1]),
                "features": list(fold_selection.selected),
                "rows": fold_counts,
                "purged": {r.extract.pair: a.counts for r, a in zip(rows, assignments)},
                "selection": {"sampled": fold_selection.sampled, "stability": fold_selection.stability},
            }
        )
    return counts, types, folds


def run(options: BuilderOptions, dsn: str | None = None, project_dir: Path = PROJECT_DIR) -> BuildResult:
    """Build (or reuse) the datasets and the report; raise DatasetError with what to do."""
    from bqx import server

    # the code this process runs, hashed before anything else: the id must name the code that
    # writes the files, not files edited while a long run went on (a demo dataset once carried
    # the id of code edited mid-run and files written by the code loaded before the edit)
    clock = StepClock()
    code_hash = ds.builder_code_hash(project_dir)
    builder_state = {"code_sha256": code_hash, **ds.git_state(project_dir), "libraries": ds.library_versions()}
    check_options(options)
    out = options.out.resolve()
    options = dataclasses.replace(options, out=out, events=options.events.resolve() if options.events is not None else None)
    ensure_writable(out)
    remove_leftovers(out)
    catalog = load_catalog(project_dir, options.dbt_var_overrides())
    features = [f.matrix_column for f in catalog.features]
    targets = [t.column for t in catalog.targets]
    models = sorted({f.model for f in catalog.features})
    events = ev.read_events(options.events, reserved=[*features, *targets]) if options.events is not None else None
    dsn = dsn or server.ensure_server(project_dir)  # BQX_PG_DSN, or the embedded server (started if need be)
    vars_in_force = dbt_vars(project_dir) | options.dbt_var_overrides()  # the catalog keeps the overrides only
    known_pairs = list(vars_in_force.get("pairs", []))
    if options.pairs:
        unknown = [p for p in options.pairs if p not in known_pairs]
        if unknown:
            raise DatasetError(f"--pairs: {unknown[0]} is not one of the pairs of the dbt var `pairs` ({', '.join(known_pairs[:4])}, ...)")
    with ex.connect(dsn) as conn:
        ex.require_models(conn, models, dsn)
        on_shards = source_distributed(conn)  # Citus: the NULL rules in the form the shards run
        if options.pairs:
            pairs = list(options.pairs)
        elif events is not None:  # the events' pairs that have bars (the others' events: before_first_bar)
            event_pairs = set(events.table.column("pair").unique().to_pylist())
            pairs = ex.pairs_with_bars(conn, [p for p in known_pairs if p in event_pairs])
            if not pairs:
                raise DatasetError(f"--events {options.events}: none of its pairs ({', '.join(sorted(event_pairs)[:4])}) has bars in the database {ex.where(dsn)}")
        else:
            pairs = ex.pairs_with_bars(conn, known_pairs)
        if not pairs:
            raise DatasetError(f"the database {ex.where(dsn)} holds no bars of any pair: load them with `bqx load`, then `bqx build`")
        _status(f"fingerprinting {len(pairs)} pairs", options)
        sources = ex.describe_pairs(conn, pairs, options.start, options.end, models)
    _, end_ts = ex._bounds(options.start, options.end)
    _check_long_enough(sources, catalog.longest_warmup_bars, lg.longest(options.lags))
    rules = va.catalog_null_rules(load_catalog(project_dir, options.dbt_var_overrides() | {va.NULL_RULES_ON_SHARDS_VAR: True})) if on_shards else None
    clock.lap("describe")
    extracts = ex.extract_pairs(dsn, sources, catalog, out, reuse=options.reuse, progress=options.progress)
    clock.lap("extract")
    reused_pairs = sum(e.reused for e in extracts)
    _status(f"extracted {len(extracts) - reused_pairs} pairs, reused {reused_pairs} unchanged", options)
    digest = catalog_hash(catalog)
    with ThreadPoolExecutor(1) as background:
        validation = BackgroundValidation(background, lambda: validated(dsn, extracts, catalog, dataclasses.replace(options, progress=False), end_ts, digest, rules), clock)
        try:
            return _build_from_extracts(options, catalog, dsn, extracts, events, digest, code_hash, builder_state, clock, validation)
        except BaseException:
            validation.raise_if_failed()  # bad data is the cause to report, not the step it broke
            raise


@dataclass
class BackgroundValidation:
    """The validation in a thread beside the steps after the selection (the datasets and the
    models). It reads only the extracted files and the database, so nothing waits for it but
    the publication: its record is awaited before the dataset is renamed into place. It starts
    after the selection, not at once: started with it, at FX-year size, it took the selection
    from 44.6 to 87.8 s (the forests use both cores) and the peak RSS from 3.2 to 4.5 GiB (both
    held a pair's columns at a time)."""

    pool: ThreadPoolExecutor
    run: Callable[[], dict[str, Any]]
    clock: StepClock
    future: Future | None = None

    def start(self) -> None:
        if self.future is None:
            self.future = self.pool.submit(self._timed)

    def _timed(self) -> tuple[dict[str, Any], float]:
        started = time.perf_counter()
        record = self.run()
        return record, time.perf_counter() - started

    def record(self) -> dict[str, Any]:
        """The validation's record once it passed (its DatasetError if not). The step 'validate'
        is the time waited for it; 'validation alongside' its own duration."""
        self.start()
        assert self.future is not None
        record, seconds = self.future.result()
        self.clock.lap("validate")
        self.clock.seconds["validation alongside"] = seconds
        return record

    def raise_if_failed(self) -> None:
        """Run it (if a step failed before it started) and raise its error if it found problems."""
        self.start()
        assert self.future is not None
        try:
            self.future.result()
        except Exception as failure:
            raise failure from None


def _build_from_extracts(
    options: BuilderOptions,
    catalog: Any,
    dsn: str,
    extracts: Sequence[ex.PairExtract],
    events: ev.EventsFile | None,
    digest: str,
    code_hash: str,
    builder_state: dict[str, Any],
    clock: StepClock,
    background_validation: BackgroundValidation,
) -> BuildResult:
    """Split, select, write the datasets, fit the models and write the report (or reuse a
    dataset built from the same inputs); nothing is published before the validation passed."""
    out = options.out
    features = [f.matrix_column for f in catalog.features]
    targets = [t.column for t in catalog.targets]
    reused_pairs = sum(e.reused for e in extracts)
    identifier = ds.dataset_id(extracts, options.identity(), digest, code_hash, events.sha256 if events is not None else None)
    datasets_dir = out / "datasets"
    root = datasets_dir / identifier
    reused = root.is_dir() and (root / "manifest.json").is_file() and options.reuse
    if not reused:
        if root.exists():  # --no-reuse: a finished dataset is never overwritten, only rebuilt aside and compared
            raise DatasetError(f"dataset {identifier} already exists at {root}: it is never overwritten (drop --no-reuse to reuse it, or delete it)")
        located = None
        if events is not None:
            _status(f"finding the bar of each of {events.table.num_rows:,} events (point-in-time retrieval)", options)
            located = ev.locate(dsn, events, options.event_max_age(), options.progress)
            clock.lap("locate events")
        plan, rows, not_built = split_rows(extracts, catalog, options, events, located)
        candidates = lg.candidates(features, [f.matrix_column for f in catalog.features if f.laggable], options.lags)
        clock.lap("split")
        _status(f"selecting {options.top_n} of {len(candidates)} candidates (forest on {options.selection_sample:,} training rows)", options)
        selection = run_selection(rows, [r.assignment.part for r in rows], candidates, targets, options)
        clock.lap("select")
        _status("validating beside the next steps", options)
        background_validation.start()
        datasets_dir.mkdir(parents=True, exist_ok=True)
        with temporary_path(root) as tmp:
            tmp.mkdir()
            event_schema = events.table.drop_columns(["pair"]).schema if events is not None else None
            counts, types, folds = _write_dataset(tmp, rows, plan, catalog, options, candidates, selection, event_schema)
            clock.lap("write datasets")
            _status("fitting the baseline models", options)
            train_set, train_rows = part_sample(tmp, "train", selection.selected, targets, options.train_sample, options.seed)
            # its own stream of the seed: the val sample does not follow the training sample's draws
            stopping_set, _ = part_sample(tmp, "val", selection.selected, targets, options.stopping_sample, [options.seed, 1])
            evaluation = tr.fit_and_score(
                train_set,
                lambda: _chunks(tmp, "val", selection.selected, targets),
                lambda: _chunks(tmp, "test", selection.selected, targets),
                targets,
                options.seed,
                options.progress,
                stopping=stopping_set,
            )
            del stopping_set
            clock.lap("baseline models")
            validation = background_validation.record()
            events_record = _events_record(events, options, rows, not_built) if events is not None else None
            manifest = build_manifest(identifier, options, catalog, plan, rows, counts, selection, types, folds, builder_state, digest, validation, events_record)
            manifest["training"] = {
                "train_rows": train_rows,
                "train_rows_sampled": int(train_set.y.shape[0]),
                "val_rows_sampled_for_early_stopping": int(evaluation.stopping_rows),
                "tuning": evaluation.tuning,
                "models": {"ridge_alphas": list(tr.RIDGE_ALPHAS), "boosting": tr.BOOSTING | tr.EARLY_STOPPING},
            }
            ds.write_manifest(tmp, manifest)
            (tmp / "evaluation").mkdir()
            evaluation.metrics.to_csv(tmp / "evaluation" / "metrics.csv", index=False)
            pq.write_table(pa.Table.from_pandas(evaluation.predictions, preserve_index=False), tmp / "evaluation" / "test_predictions.parquet", **ex.PARQUET_OPTIONS | {"use_dictionary": ["pair"]})
            selection.importances.to_csv(tmp / "importances.csv", index=False)
            (tmp / "validation.json").write_text(json.dumps({"summary": validation.get("summary", []), "checked": validation.get("checked", {})}, indent=2) + "\n")
    else:
        background_validation.record()
    manifest = json.loads((root / "manifest.json").read_text())
    metrics = pd.read_csv(root / "evaluation" / "metrics.csv")
    predictions = pq.read_table(root / "evaluation" / "test_predictions.parquet").to_pandas()
    importances = pd.read_csv(root / "importances.csv")
    validation_record = json.loads((root / "validation.json").read_text())
    ds.write_latest(datasets_dir, identifier)
    report = rp.write_report(out / "report", out / "selection", manifest, metrics, importances, predictions, validation_record)
    clock.lap("manifest and report")
    return BuildResult(identifier, root, report, reused, reused_pairs, metrics, clock.seconds)


def closing_note(result: BuildResult) -> str:
    """What the command prints at the end: where things are and the pooled test R^2."""
    pooled = result.metrics[(result.metrics["pair"] == "all") & (result.metrics["model"] != "zero")]
    table = pooled.pivot(index="model", columns="target", values="r2")
    lines = [
        f"dataset {result.dataset_id} ({'reused' if result.reused_dataset else 'built'}): {result.dataset_dir}",
        "test R² against the zero predictor, all pairs pooled:",
        "  model     " + " ".join(f"{c.replace('target_bqx_', ''):>9}" for c in table.columns),
        *[f"  {model:<9} " + " ".join(f"{v:>9.5f}" for v in table.loc[model]) for model in table.index],
        f"peak memory of the builder: {_peak_rss_mib():,.0f} MiB",
        "wall time per step: " + ", ".join(f"{step} {seconds:,.1f} s" for step, seconds in result.step_seconds.items()),
        f"report: {result.report}",
        f"  e.g. the R² heat-map (pairs × horizons): {result.report.parent / 'r2_heatmap.png'}",
    ]
    return "\n".join(lines)


def _peak_rss_mib() -> float:
    import resource

    # the builder's own peak, or its largest child's (dbt for the look-ahead rebuilds) if larger:
    # the figure `/usr/bin/time -v` reports as "Maximum resident set size"
    peak_kib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return peak_kib / 1024  # KiB on Linux


def main(argv: Sequence[str] | None = None, prog: str = "build_datasets.py") -> int:
    """Parse the options, run the builder, print the closing note; errors are one line."""
    import argparse

    from bqx.datasets.options import add_arguments, options_from_args

    parser = argparse.ArgumentParser(prog=prog, description="Turn the feature store into leakage-free train/val/test datasets, a feature selection, baseline models and a report.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_command(args, prog)


def run_command(args: Any, prog: str) -> int:
    from bqx.datasets.options import options_from_args

    import os

    import psycopg

    from bqx import server
    from bqx.safe_files import UnsafePathError

    try:
        result = run(options_from_args(args))
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (nothing half-written is left looking finished)", file=sys.stderr)
        return 130
    except (DatasetError, server.ServerError, UnsafePathError, OSError, psycopg.Error) as err:
        # bad input or an unusable server: one line saying what to do
        print(f"{prog}: {' '.join(str(err).split()) or type(err).__name__}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - a bug of the builder: one line, exit 4 as every bqx command
        if os.environ.get("BQX_TRACEBACK"):
            raise
        print(f"{prog}: internal error ({type(err).__name__}): {' '.join(str(err).split())} (set BQX_TRACEBACK=1 for the traceback)", file=sys.stderr)
        return 4
    print(closing_note(result))
    return 0
