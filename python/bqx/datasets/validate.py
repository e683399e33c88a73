"""Validate the extracted pairs; any failure names pair, column and first bad minute.

Checks (warm-ups, NULL rules and targets come from the feature catalog, never retyped here):
- every column of a file is known to the catalog, and every catalog column is there;
- minutes strictly increasing (no duplicates); no NaN or infinity in any column;
- NULL after a column's warm-up only where its YAML's `null_allowed_when` holds (the predicate
  is evaluated by the database on the model's own rows, aligned minute by minute);
  these three from the facts the extraction gathered while it wrote the file (bqx.datasets.facts:
  the values as written, after the float32 casts), or from the file when none were recorded;
- each pair's features reach its last bar (raw bars, index and every feature model end at the
  same minute: nothing stale);
- a seeded sample of targets recomputed from m1_index equals the extracted targets;
- no look-ahead, proved by recomputation: for a seeded sample of rows (`cuts`), the wave-1
  models are built in a scratch database from the bars of that pair cut at that row's minute,
  and the last rows up to the cut must equal the extracted ones. Cuts on different pairs share
  one scratch build (each pair cut at its own minute), so N cuts cost ceil(N / pairs) builds.
  The scratch holds only the history the compared rows depend on (`history_start`): the pair's
  baseline bar and its bars from a start found by the incremental builds' own definition of
  "the history a row needs" (bqx_functions.increment_bounds, chained through each model's
  input), so the proof costs the same on a month of bars as on ten years. A shorter history can
  only make a rebuild differ, never hide a look-ahead (no bar after the cut exists there).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bqx.datasets import facts as fa
from bqx.datasets.extract import KEY_COLUMNS, PairExtract, adbc_batches, connect, where
from bqx.datasets.options import DatasetError

COMPARE_BARS = 60  # rows up to each cut compared with the rebuild
FLOAT64_TOLERANCE = 1e-9  # of the column's largest |value| over the compared rows (the spec's)
FLOAT32_TOLERANCE = 2.0**-22  # two float32 ulps of the largest |value|: the cast, and no more
TARGET_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Problem:
    pair: str
    column: str
    minute: str
    rule: str

    def line(self) -> str:
        return f"{self.pair} {self.column} at {self.minute}: {self.rule}"


@dataclass
class ValidationReport:
    problems: list[Problem] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)
    checked: dict[str, Any] = field(default_factory=dict)

    def raise_if_failed(self, report_path: Path | None = None) -> None:
        if self.problems:
            first = self.problems[0]
            more = f" (and {len(self.problems) - 1} more problems" + (f", listed in {report_path}" if report_path else "") + ")" if len(self.problems) > 1 else ""
            raise DatasetError(f"validation failed: {first.line()}{more}")


def _minute(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M")


def _ts_us(table: pa.Table, name: str = "ts_utc") -> np.ndarray:
    column = table.column(name).combine_chunks()  # ADBC hands many small batches over
    return column.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()


def check_columns(extract: PairExtract, features: Sequence[str], targets: Sequence[str]) -> list[Problem]:
    names = pq.read_schema(extract.path).names
    present = [n for n in names if n not in KEY_COLUMNS]
    problems = [Problem(extract.pair, n, "-", "column not in the feature catalog") for n in present if n not in set(features) | set(targets)]
    problems += [Problem(extract.pair, n, "-", "catalog column missing from the extraction") for n in [*features, *targets] if n not in set(present)]
    return problems


def file_facts(extract: PairExtract, limits: fa.Limits, columns: Sequence[str] | None = None) -> dict[str, Any]:
    """The validation's facts of a pair's file: recorded by the extraction while it wrote the
    file, or (an extraction without the record) the file scanned by the same code (only the
    keys and `columns` when given)."""
    if extract.checks is not None:
        return extract.checks
    return fa.scan(pq.read_table(extract.path, columns=None if columns is None else ["ts_utc", "bar_number", *columns]), limits)


def _file_ts(extract: PairExtract) -> np.ndarray:
    return _ts_us(pq.read_table(extract.path, columns=["ts_utc"]))


def check_values(extract: PairExtract, columns: Sequence[str], facts: dict[str, Any] | None = None) -> list[Problem]:
    """Minutes strictly increasing; no NaN or infinity anywhere (NULL is not NaN)."""
    facts = facts if facts is not None else file_facts(extract, fa.Limits(), columns)
    bad = [(name, facts["nonfinite"][name]) for name in columns if name in facts["nonfinite"]]
    if facts["unordered_row"] is None and not bad:
        return []
    ts = _file_ts(extract)
    problems = []
    if facts["unordered_row"] is not None:
        problems.append(Problem(extract.pair, "ts_utc", _minute(ts[facts["unordered_row"]]), "minutes not strictly increasing (duplicate or out of order)"))
    problems += [Problem(extract.pair, name, _minute(ts[row]), "NaN or infinity") for name, row in bad]
    return problems


def check_target_nulls(extract: PairExtract, catalog: Any, facts: dict[str, Any] | None = None) -> list[Problem]:
    """A target is NULL only on rows without H later bars (the pair's last H rows)."""
    facts = facts if facts is not None else file_facts(extract, fa.Limits.of(catalog))
    if not facts["target_nulls"]:
        return []
    ts = _file_ts(extract)
    return [
        Problem(extract.pair, t.column, _minute(ts[facts["target_nulls"][t.column]]), f"NULL although {t.horizon_bars} later bars exist (marts.targets is stale): run `bqx build`")
        for t in catalog.targets
        if t.column in facts["target_nulls"]
    ]


# The var that renders the NULL rules as Citus's shards run them (macros/features/volume.sql,
# volume_pair_is_silent): on a Citus source a pair's query goes to the pair's shard, which cannot
# also run a subquery over every shard ("complex joins are only supported when all distributed
# tables are co-located"). dbt asks the server itself (distributed()); the in-process catalog
# cannot, so the builder renders a catalog with this var there and validates with its rules.
NULL_RULES_ON_SHARDS_VAR = "null_rules_on_shards"


def catalog_null_rules(catalog: Any) -> dict[str, str | None]:
    """Each feature's null_allowed_when by matrix column (one line each: bqx.catalog)."""
    return {f.matrix_column: f.null_allowed_when for f in catalog.features}


def null_rules(catalog: Any, rules: dict[str, str | None] | None = None) -> dict[str, list[tuple[str, str, int, str | None]]]:
    """Per feature model: (model column, matrix column, warm-up bars, null_allowed_when)."""
    rules = rules if rules is not None else catalog_null_rules(catalog)
    by_model: dict[str, list[tuple[str, str, int, str | None]]] = {}
    for feature in catalog.features:
        by_model.setdefault(feature.model, []).append((feature.column, feature.matrix_column, feature.warmup_bars, rules[feature.matrix_column]))
    return by_model


# up to this many rows needing a rule are looked up by minute; more, and the model's rows of the
# pair in the range are read whole (one index range scan instead of a very long literal array)
NULL_RULE_LOOKUP_ROWS = 20_000


def _late_null_masks(extract: PairExtract, facts: dict[str, Any], warmups: Mapping[str, int], rows: int) -> dict[str, np.ndarray]:
    """Per column with a NULL after its warm-up: which rows (from the facts' rows, or from the
    file's NULL mask when there were more than the facts keep)."""
    late = facts["late_nulls"]
    unkept = [name for name, entry in late.items() if entry["rows"] is None]
    table = pq.read_table(extract.path, columns=["bar_number", *unkept]) if unkept else None
    masks = {}
    for name, entry in late.items():
        if entry["rows"] is None:
            assert table is not None
            is_null = table.column(name).is_null().to_numpy(zero_copy_only=False)
            masks[name] = is_null & (table.column("bar_number").to_numpy() > warmups[name])
        else:
            masks[name] = np.zeros(rows, dtype=bool)
            masks[name][np.asarray(entry["rows"], dtype=np.int64)] = True
    return masks


def check_nulls(dsn: str, extract: PairExtract, catalog: Any, rules: dict[str, str | None] | None = None, facts: dict[str, Any] | None = None) -> list[Problem]:
    """NULL after a column's warm-up only where its null_allowed_when holds on that row (the
    predicate is the YAML's, over the model's columns, qualified by the model's name where its
    warm-up test needs a correlated subquery: the model is aliased by its own name here too).

    The database evaluates a rule only on the rows that need it: a NULL past its column's
    warm-up (from the file's facts). A clean build has few, so most models cost no query at all
    (evaluating every rule on every row took ~8 s per pair-2-months, most of the validation)."""
    limits = fa.Limits.of(catalog)
    facts = facts if facts is not None else file_facts(extract, limits)
    if not facts["late_nulls"]:
        return []
    ts = _file_ts(extract)
    late_nulls = _late_null_masks(extract, facts, limits.warmups, ts.size)
    problems = []
    for model, all_columns in null_rules(catalog, rules).items():
        columns = [c for c in all_columns if c[1] in late_nulls]
        predicates = sorted({p for _, c, _, p in columns if p and late_nulls[c].any()})
        allowed: dict[str, np.ndarray] = {}
        if predicates:
            needed = np.zeros(ts.size, dtype=bool)
            for _, matrix_column, _, predicate in columns:
                if predicate:
                    needed |= late_nulls[matrix_column]
            rows = np.flatnonzero(needed)
            select = ", ".join(f"coalesce(({p}), false) as allow_{i}" for i, p in enumerate(predicates))
            if rows.size <= NULL_RULE_LOOKUP_ROWS:
                minutes = ",".join(_minute_literal(int(us)) for us in ts[rows])
                where_rows = f"ts_utc = any('{{{minutes}}}'::timestamptz[])"
            else:
                where_rows = f"ts_utc >= '{extract.first_ts}' and ts_utc <= '{extract.last_ts}'"
            query = f"select ts_utc, {select} from features.{model} as {model} where pair = '{extract.pair}' and {where_rows} order by ts_utc"
            result = pa.Table.from_batches(list(adbc_batches(dsn, query)))
            result_ts = _ts_us(result)
            position = np.minimum(np.searchsorted(ts, result_ts), ts.size - 1)
            matches = ts[position] == result_ts  # a minute the file does not hold is ignored
            for i, predicate in enumerate(predicates):
                holds = np.zeros(ts.size, dtype=bool)  # a row the model lacks: the rule cannot hold
                holds[position[matches]] = result.column(f"allow_{i}").to_numpy(zero_copy_only=False).astype(bool)[matches]
                allowed[predicate] = holds
        for _, matrix_column, warmup, predicate in columns:
            bad = late_nulls[matrix_column]
            if predicate:
                bad = bad & ~allowed.get(predicate, np.zeros(ts.size, dtype=bool))
            if bad.any():
                index = int(np.flatnonzero(bad)[0])
                rule = f"NULL after its warm-up of {warmup} bars" + (f" where `{' '.join(predicate.split())}` does not hold" if predicate else " (never allowed)")
                problems.append(Problem(extract.pair, matrix_column, _minute(ts[index]), rule))
    return problems


def _minute_literal(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M:%S+00")


def check_fresh(conn: Any, extract: PairExtract, models: Sequence[str], end_ts: dt.datetime) -> list[Problem]:
    """The pair's bars, index and every feature model end at the same minute."""
    last_bar = conn.execute("select max(ts_utc) from raw.m1_bars where pair = %s and ts_utc < %s", (extract.pair, end_ts)).fetchone()[0]
    problems = []
    extracted_last = dt.datetime.fromisoformat(extract.last_ts)
    if last_bar is not None and last_bar > extracted_last:
        problems.append(Problem(extract.pair, "staging.m1_index", f"{extracted_last:%Y-%m-%d %H:%M}", f"bars run to {last_bar:%Y-%m-%d %H:%M} but the index ends here: run `bqx build`"))
    for model in models:
        last = conn.execute(f"select max(ts_utc) from features.{model} where pair = %s and ts_utc <= %s", (extract.pair, extracted_last)).fetchone()[0]
        if last is None or last < extracted_last:
            problems.append(Problem(extract.pair, f"features.{model}", f"{extracted_last:%Y-%m-%d %H:%M}", f"features end at {last} before the last bar (stale): run `bqx build`"))
    return problems


def check_targets(dsn: str, extract: PairExtract, catalog: Any, sample: int, seed: int) -> list[Problem]:
    """A seeded sample of rows: targets recomputed from m1_index's close_idx, window by window."""
    if sample == 0:
        return []
    names = [t.column for t in catalog.targets]
    table = pq.read_table(extract.path, columns=["ts_utc", *names])
    ts = _ts_us(table)
    query = f"select ts_utc, close_idx from staging.m1_index where pair = '{extract.pair}' and ts_utc >= '{extract.first_ts}' order by ts_utc"
    bars = pa.Table.from_batches(list(adbc_batches(dsn, query)))
    bar_ts = _ts_us(bars)
    close = bars.column("close_idx").to_numpy(zero_copy_only=False)
    position = np.searchsorted(bar_ts, ts)
    rng = np.random.default_rng([seed, _pair_seed(extract.pair)])
    rows = np.sort(rng.choice(ts.size, size=min(sample, ts.size), replace=False))
    problems = []
    for target in catalog.targets:
        stored = table.column(target.column).to_numpy(zero_copy_only=False)
        scale = np.nanmax(np.abs(stored)) if np.isfinite(stored).any() else 1.0
        for row in rows:
            p = position[row]
            future = close[p + 1 : p + 1 + target.horizon_bars]
            expected = (future.mean() - close[p]) / close[p] if future.size == target.horizon_bars else np.nan
            same = (np.isnan(expected) and np.isnan(stored[row])) or abs(expected - stored[row]) <= TARGET_TOLERANCE * scale
            if not same:
                problems.append(Problem(extract.pair, target.column, _minute(ts[row]), f"target {stored[row]!r} but m1_index gives {expected!r}"))
                break
    return problems


def _pair_seed(pair: str) -> int:
    return int.from_bytes(pair.encode(), "little") % (2**31)


@dataclass(frozen=True)
class Cut:
    pair: str
    ts_us: int


def choose_cuts(extracts: Sequence[PairExtract], count: int, longest_warmup: int, seed: int) -> list[Cut]:
    """`count` rows: distinct pairs first (one scratch build serves them all), each at a seeded
    row after the longest warm-up."""
    rng = np.random.default_rng(seed)
    order = [extracts[i] for i in rng.permutation(len(extracts))]
    cuts = []
    for index in range(count):
        extract = order[index % len(order)]
        keys = pq.read_table(extract.path, columns=["ts_utc", "bar_number"])
        eligible = np.flatnonzero(keys.column("bar_number").to_numpy() > longest_warmup + COMPARE_BARS)
        if eligible.size == 0:
            continue
        row = int(rng.choice(eligible))
        cuts.append(Cut(extract.pair, int(_ts_us(keys)[row])))
    return cuts


def _rounds(cuts: Sequence[Cut]) -> list[list[Cut]]:
    """Group cuts so that each round has at most one cut per pair."""
    rounds: list[list[Cut]] = []
    for cut in cuts:
        for group in rounds:
            if all(c.pair != cut.pair for c in group):
                group.append(cut)
                break
        else:
            rounds.append([cut])
    return rounds


@dataclass(frozen=True)
class History:
    """What a cut's rebuild holds of its pair: the baseline bar and the bars from `start_ts`
    (bar_number `start_bar`) to the cut; start_ts None: every bar from the baseline."""

    start_ts: dt.datetime | None
    start_bar: int
    bars: int  # bars of the pair in the rebuild, the baseline bar included


def history_start(conn: Any, cut: Cut, models: Sequence[Any]) -> History:
    """The first bar the features of the COMPARE_BARS rows up to `cut` depend on, as a full build
    computes them (`models`: bqx.audit.compiled_models, each with its incremental parameters):
    - per model, bqx_functions.increment_bounds gives the first input bar that emitting those rows
      reads (lookback, block grid and reference bars, and the technical smoothers' reach past a
      flat run); a model reading another model (bqx) needs that model's rows from there, so the
      bounds are chained down to m1_index; the earliest over all models;
    - then back to the start of the unchanged-close run before the one holding that bar (the run
      length of data_quality_features counts from the run's first bar, which a rebuild must hold,
      after a bar whose close differs);
    - then back to a bar_number ≡ 1 modulo every model's block grid: the baseline bar is bar 0 in
      the rebuild and this bar bar 1, so the block-restarted running sums restart on the same bars
      as in the full build and their roundings are the same.
    Index probes on the source database (a few per model)."""
    until = dt.datetime.fromtimestamp(cut.ts_us / 1e6, dt.UTC)
    everything = conn.execute(
        "select count(*) from staging.m1_index where pair = %s and ts_utc <= %s", (cut.pair, until)
    ).fetchone()[0]
    whole = History(None, 0, int(everything))
    first_compared = conn.execute(
        "select ts_utc from staging.m1_index where pair = %s and ts_utc <= %s order by ts_utc desc offset %s limit 1",
        (cut.pair, until, COMPARE_BARS - 1),
    ).fetchone()
    if first_compared is None:
        return whole
    producers = {m.relation: m for m in models}

    def read_from(model: Any, emit_from: dt.datetime) -> dt.datetime | None:
        p = model.increment
        row = conn.execute(
            "select case when isfinite(bounds.read_from_ts) then bounds.read_from_ts end from bqx_functions.increment_bounds(%s::regclass, %s, %s, %s, %s, %s, %s, 0, 0, %s, %s::text[]) as bounds",
            (model.input_relation, cut.pair, emit_from, until, int(p["lookback_bars"]), int(p["grid_bars"]), int(p["reference_bars"]), int(p["read_ahead_bars"]), p.get("moving_columns")),
        ).fetchone()
        return row[0] if row else None  # None: from the pair's first bar (-infinity)

    def needed(model: Any, emit_from: dt.datetime) -> dt.datetime | None:
        start = read_from(model, emit_from)
        upstream = producers.get(model.input_relation)
        if start is None or upstream is None or upstream.increment is None:
            return start  # m1_index: its rows are the bars
        return needed(upstream, start)

    starts = [needed(m, first_compared[0]) for m in models if m.increment is not None]
    if not starts or any(s is None for s in starts):
        return whole
    bar = conn.execute(
        "select bar_number from staging.m1_index where pair = %s and ts_utc >= %s order by ts_utc limit 1", (cut.pair, min(starts))
    ).fetchone()[0]

    def run_length(bar_number: int) -> int:
        """unchanged_close_run of the pair's bar `bar_number` (0 if none)."""
        row = conn.execute(
            "select unchanged_close_run from features.data_quality_features as dq inner join staging.m1_index as bars using (pair, ts_utc)"
            " where dq.pair = %s and bars.bar_number = %s",
            (cut.pair, bar_number),
        ).fetchone()
        return row[0] if row and row[0] else 0

    bar -= run_length(bar)  # the last bar of the run before
    bar -= max(run_length(bar) - 1, 0)  # that run's first bar
    grid = math.lcm(*(int(m.increment["grid_bars"]) for m in models if m.increment is not None))
    bar -= (bar - 1) % grid
    if bar <= 1:
        return whole  # nothing to leave out
    start_ts = conn.execute("select ts_utc from staging.m1_index where pair = %s and bar_number = %s", (cut.pair, bar)).fetchone()[0]
    bars = conn.execute("select count(*) from staging.m1_index where pair = %s and ts_utc >= %s and ts_utc <= %s", (cut.pair, start_ts, until)).fetchone()[0]
    return History(start_ts, bar, int(bars) + 1)


def _scratch_build(dsn: str, cuts: Sequence[Cut], histories: dict[Cut, History], dbt_vars: dict[str, Any], work: Path) -> tuple[str, str]:
    """A scratch database holding each cut pair's history up to its cut (its baseline bar and
    the bars from the history's start, see `history_start`), wave 1 built on them."""
    import pandas as pd

    from bqx import server
    from bqx.dbt import run_dbt
    from bqx.load import load_frame

    name = f"bqx_lookahead_{uuid.uuid4().hex[:10]}"
    try:
        server.create_database(dsn, name)
    except Exception as err:  # noqa: BLE001 - any refusal means the same thing to the user
        raise DatasetError(
            f"the no-look-ahead proof needs a scratch database on {where(dsn)} and could not create one "
            f"({str(err).strip().splitlines()[0]}): grant CREATEDB to the role, or pass --lookahead-cuts 0 (recorded in the manifest)"
        ) from None
    scratch = server.with_database(dsn, name)
    try:
        frames = []
        with connect(dsn) as conn:
            for cut in cuts:
                until = dt.datetime.fromtimestamp(cut.ts_us / 1e6, dt.UTC)
                start = histories[cut].start_ts
                cur = conn.execute(
                    "select pair, ts_utc, open, high, low, close, volume, spread from raw.m1_bars where pair = %(pair)s and ts_utc <= %(until)s"
                    " and (%(start)s::timestamptz is null or ts_utc >= %(start)s"
                    " or ts_utc = (select baseline_ts from staging.baseline_rates where pair = %(pair)s)) order by ts_utc",
                    {"pair": cut.pair, "until": until, "start": start},
                )
                frames.append(pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description]))
        bars = pd.concat(frames, ignore_index=True)
        bars["ts_utc"] = pd.to_datetime(bars["ts_utc"], utc=True)
        load_frame(scratch, bars, "lookahead cut")
        args = ["run", "--select", "+feature_matrix"]
        if dbt_vars:
            args += ["--vars", json.dumps(dbt_vars)]
        done = run_dbt(args, scratch, target_path=work / name, capture=True)
        if done.returncode != 0:
            tail = (done.stdout or "").strip().splitlines()[-3:]
            raise DatasetError(f"the scratch build for the no-look-ahead proof failed ({' | '.join(tail)}): run `bqx build` to see why")
        return name, scratch
    except BaseException:
        server.drop_database(dsn, name)
        raise


def compare_cut(scratch: str, extract: PairExtract, cut: Cut, features: Sequence[str]) -> list[Problem]:
    """The last COMPARE_BARS rows up to the cut: rebuilt from cut bars vs extracted."""
    until = dt.datetime.fromtimestamp(cut.ts_us / 1e6, dt.UTC).isoformat()
    query = (
        f"select ts_utc, {', '.join(features)} from marts.feature_matrix where pair = '{cut.pair}' "
        f"and ts_utc <= '{until}' order by ts_utc desc limit {COMPARE_BARS}"
    )
    rebuilt = pa.Table.from_batches(list(adbc_batches(scratch, query)))
    rebuilt_ts = _ts_us(rebuilt)
    file = pq.read_table(extract.path, columns=["ts_utc", *features])
    ts = _ts_us(file)
    rows = np.searchsorted(ts, rebuilt_ts)
    if (rows >= ts.size).any() or (ts[np.minimum(rows, ts.size - 1)] != rebuilt_ts).any():
        return [Problem(cut.pair, "ts_utc", _minute(cut.ts_us), "the rebuilt bars up to the cut are not the extracted ones")]
    problems = []
    for name in features:
        column = file.column(name)
        mine = column.cast(pa.float64()).to_numpy(zero_copy_only=False)[rows]
        theirs = rebuilt.column(name).cast(pa.float64()).to_numpy(zero_copy_only=False)
        null_differs = np.isnan(mine) != np.isnan(theirs)
        both = ~np.isnan(mine) & ~np.isnan(theirs)
        scale = max(np.abs(theirs[both]).max(initial=0), np.abs(mine[both]).max(initial=0), 1e-300)
        tolerance = (FLOAT32_TOLERANCE if column.type == pa.float32() else FLOAT64_TOLERANCE) * scale
        differs = null_differs | (both & (np.abs(np.where(both, mine - theirs, 0)) > tolerance))
        if differs.any():
            index = int(np.flatnonzero(differs)[-1])  # rows are newest first: report the earliest
            problems.append(
                Problem(
                    cut.pair, name, _minute(int(rebuilt_ts[index])),
                    f"differs from a rebuild on bars cut at {_minute(cut.ts_us)} (a look-ahead, or a dependence on older bars than "
                    f"bqx_functions.increment_bounds declares): extracted {mine[index]!r}, rebuilt {theirs[index]!r}",
                )  # fmt: skip
            )
    return problems


def check_lookahead(
    dsn: str, extracts: Sequence[PairExtract], features: Sequence[str], cuts: Sequence[Cut], dbt_vars: dict[str, Any], work: Path, progress: bool = True
) -> tuple[list[Problem], dict[Cut, History]]:
    from tqdm import tqdm

    from bqx import server
    from bqx.audit import compile_models

    try:
        models = compile_models(dsn, work / "lookahead_compile", dbt_vars or None)
    except RuntimeError as err:
        tail = " | ".join(str(err).strip().splitlines()[-3:])
        raise DatasetError(f"compiling the models for the no-look-ahead proof failed ({tail}): run `bqx build` to see why") from None
    with connect(dsn) as conn:
        histories = {cut: history_start(conn, cut, models) for cut in cuts}
    by_pair = {e.pair: e for e in extracts}
    problems: list[Problem] = []
    for group in tqdm(_rounds(cuts), desc="no-look-ahead rebuilds", disable=not progress, leave=False):
        name, scratch = _scratch_build(dsn, group, histories, dbt_vars, work)
        try:
            for cut in group:
                problems += compare_cut(scratch, by_pair[cut.pair], cut, features)
        finally:
            server.drop_database(dsn, name)
    return problems, histories


def _lookahead_result(lookahead: Any, failed: bool) -> tuple[list[Problem], dict[Cut, History]]:
    """The look-ahead rebuilds' problems and histories; none when they did not run or when the
    per-pair checks already failed (then an error of the rebuilds is not the one to report)."""
    if lookahead is None:
        return [], {}
    try:
        found, histories = lookahead.result()
    except Exception:
        if failed:
            return [], {}
        raise
    return ([], {}) if failed else (found, histories)


def validate(
    dsn: str,
    extracts: Sequence[PairExtract],
    catalog: Any,
    *,
    end_ts: dt.datetime,
    lookahead_cuts: int,
    target_checks: int,
    seed: int,
    work: Path,
    dbt_vars: dict[str, Any],
    progress: bool = True,
    rules: dict[str, str | None] | None = None,
) -> ValidationReport:
    """Every check above on every pair; problems are collected, not raised.

    `rules`: each column's null_allowed_when, when the server needs other forms than the
    catalog's (a Citus source: a catalog rendered with NULL_RULES_ON_SHARDS_VAR).

    The look-ahead rebuilds (dbt and the server, mostly) run in a thread beside the per-pair
    checks (the client reading and scanning the files), so the two overlap on two cores. Their
    result counts only when every pair passed: a pair that fails its checks is what the report
    names, and the rebuilds' findings would follow from it."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    features = [f.matrix_column for f in catalog.features]
    targets = [t.column for t in catalog.targets]
    models = sorted({f.model for f in catalog.features})
    rules = rules if rules is not None else catalog_null_rules(catalog)
    limits = fa.Limits.of(catalog)
    report = ValidationReport()
    cuts = choose_cuts(extracts, lookahead_cuts, catalog.longest_warmup_bars, seed)
    with ThreadPoolExecutor(max_workers=1) as background:
        lookahead = background.submit(check_lookahead, dsn, extracts, features, cuts, dbt_vars, work, progress) if cuts else None
        # when a check raises, leaving the executor still waits for the rebuilds (their thread
        # drops its scratch databases) and their outcome stays unread
        with connect(dsn) as conn:
            for extract in tqdm(extracts, desc="validate", disable=not progress, leave=False):
                report.problems += check_columns(extract, features, targets)
                if report.problems:
                    continue
                facts = file_facts(extract, limits)  # recorded by the extraction (else the file is read)
                report.problems += check_values(extract, [*features, *targets], facts)
                report.problems += check_target_nulls(extract, catalog, facts)
                report.problems += check_fresh(conn, extract, models, end_ts)
                report.problems += check_nulls(dsn, extract, catalog, rules, facts)
                report.problems += check_targets(dsn, extract, catalog, target_checks, seed)
        found, histories = _lookahead_result(lookahead, failed=bool(report.problems))
    if report.problems:
        cuts = []
    report.problems += found
    rows = sum(e.rows for e in extracts)
    report.checked = {
        "pairs": len(extracts),
        "rows": rows,
        "columns": len(features) + len(targets),
        "target_rows_recomputed_per_pair": target_checks,
        "lookahead_cuts": [
            {
                "pair": c.pair,
                "ts_utc": _minute(c.ts_us),
                "rebuilt_from": "baseline" if histories.get(c) is None or histories[c].start_ts is None else _minute(int(histories[c].start_ts.timestamp() * 1e6)),
                "rebuilt_bars": histories[c].bars if c in histories else None,
            }
            for c in cuts
        ],
        "lookahead_compared_bars_per_cut": COMPARE_BARS,
    }
    report.summary = [
        f"{len(extracts)} pairs, {rows:,} rows, {len(features)} features + {len(targets)} targets: no NaN or infinity, minutes strictly increasing, every column known to the catalog.",
        "NULL after a warm-up only where the column's `null_allowed_when` holds; every pair's features reach its last bar.",
        f"Targets of {target_checks} seeded rows per pair recomputed from m1_index: equal (within {TARGET_TOLERANCE:g} of the column's largest value).",
        (
            f"No look-ahead: features rebuilt from bars cut at {len(cuts)} seeded rows ({', '.join(f'{c.pair} {_minute(c.ts_us)}' for c in cuts)}) "
            f"equal the extracted ones on the {COMPARE_BARS} bars up to each cut (each rebuild held the baseline bar and the "
            f"{', '.join(f'{histories[c].bars - 1:,}' for c in cuts if c in histories)} bars before its cut that the compared rows depend on)."
            if cuts
            else "No look-ahead proof: --lookahead-cuts 0 (skipped on request)."
        ),
    ]
    return report
