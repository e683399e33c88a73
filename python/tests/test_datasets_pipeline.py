"""The dataset builder end to end on the wave-1 fixture build (4 pairs, two weeks of generated
bars): leakage rules on the written files, determinism, interrupted runs, the look-ahead proof,
the report and the one-line errors."""

from __future__ import annotations

import dataclasses
import datetime as dt
import filecmp
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bqx.catalog import feature_catalog
from bqx.datasets import datasets as ds
from bqx.datasets import events as ev
from bqx.datasets import extract as ex
from bqx.datasets import pipeline
from bqx.datasets import select as sel
from bqx.datasets import split as sp
from bqx.datasets import train as tr
from bqx.datasets import validate as va
from bqx.datasets.options import BuilderOptions, DatasetError
from bqx.project import PROJECT_DIR

SMALL = {
    "top_n": 15,
    "selection_sample": 4000,
    "holdout_rows": 1500,
    "forest_trees": 20,
    "train_sample": 8000,
    "lookahead_cuts": 4,
    "target_checks": 40,
    "progress": False,
}


def options(out: Path, **changes: Any) -> BuilderOptions:
    return BuilderOptions(out=out, **(SMALL | changes))


@dataclasses.dataclass
class Built:
    result: pipeline.BuildResult
    options: BuilderOptions
    manifest: dict[str, Any]
    seen: dict[str, Any]


@pytest.fixture(scope="module")
def built(wave1_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """One build on the fixture, recording what the selection and the models were given."""
    seen: dict[str, Any] = {"selection": [], "training": []}
    real_select, real_fit = sel.select_features, tr.fit_and_score

    def select_spy(fit: sel.Sample, holdout: sel.Sample, *args: Any, **kwargs: Any) -> sel.Selection:
        seen["selection"].append((fit, holdout))
        return real_select(fit, holdout, *args, **kwargs)

    def fit_spy(train: tr.TrainingSet, *args: Any, **kwargs: Any) -> tr.Evaluation:
        seen["training"].append(train)
        seen.setdefault("stopping", []).append(kwargs.get("stopping"))
        return real_fit(train, *args, **kwargs)

    opts = options(tmp_path_factory.mktemp("datasets_out"), walk_forward=2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sel, "select_features", select_spy)
        patch.setattr(tr, "fit_and_score", fit_spy)
        result = pipeline.run(opts, dsn=wave1_dsn)
    manifest = json.loads((result.dataset_dir / "manifest.json").read_text())
    return Built(result, opts, manifest, seen)


def _us(iso: str) -> int:
    return int(pd.Timestamp(iso).value // 1000)


def _known_us(table: pa.Table) -> np.ndarray:
    return table.column("known_at").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()


def test_selection_and_models_see_training_rows_only(built: Built) -> None:
    b1 = _us(built.manifest["split"]["boundaries"]["train_end"])
    main_fit, main_holdout = built.seen["selection"][0]
    assert main_fit.size > 0 and main_holdout.size > 0
    assert main_fit.target_end_us.max() <= b1 and main_holdout.target_end_us.max() <= b1
    # the hold-out is after every fit row's target: purged inside the training period too
    assert main_holdout.known_at_us.min() >= main_fit.target_end_us.max()
    assert built.manifest["selection"]["sampled"]["fit_rows"] == main_fit.size
    # walk-forward folds: each fold's selection sees its own training rows only
    for (fit, holdout), fold in zip(built.seen["selection"][1:], built.manifest["folds"]):
        assert max(fit.target_end_us.max(), holdout.target_end_us.max()) <= _us(fold["train_end"])
    train = built.seen["training"][0]
    assert train.known_at_us.max() <= b1 and train.y.shape[0] == built.manifest["training"]["train_rows_sampled"]
    # the boosting's early stopping watches val rows only: none of train, none of test
    b2 = _us(built.manifest["split"]["boundaries"]["val_end"])
    stopping = built.seen["stopping"][0]
    assert stopping is not None and stopping.y.shape[0] == built.manifest["training"]["val_rows_sampled_for_early_stopping"] > 0
    assert stopping.known_at_us.min() > b1 and stopping.known_at_us.max() <= b2
    assert np.isfinite(stopping.y).all()
    for tuning in built.manifest["training"]["tuning"].values():
        assert 1 <= tuning["boosting_iterations"] <= tuning["boosting_iterations_fitted"] <= tr.BOOSTING["max_iter"]


def test_boundaries_are_shared_and_no_target_window_crosses_them(built: Built) -> None:
    root = built.result.dataset_dir
    b1 = _us(built.manifest["split"]["boundaries"]["train_end"])
    b2 = _us(built.manifest["split"]["boundaries"]["val_end"])
    horizon = built.manifest["split"]["longest_horizon"]
    extracted = {p: pq.read_table(built.options.out / "features" / f"pair={p}" / "part-0.parquet", columns=["ts_utc", "known_at"]) for p in built.manifest["source"]["pairs"]}
    parts_seen = 0
    for part, (low, high) in {"train": (None, b1), "val": (b1, b2), "test": (b2, None)}.items():
        for path in ds.part_files(root, part):
            table = pq.read_table(path, columns=["pair", "known_at", *built.manifest["targets"]])
            pair = table.column("pair")[0].as_py()
            # every row's targets are known: a NULL target means its window left the part
            assert all(table.column(t).null_count == 0 for t in built.manifest["targets"]), f"{part} {pair}: a row without its target"
            known = _known_us(table)
            all_known = _known_us(extracted[pair])
            # the longest target's last bar: H bars later in the pair's own rows
            position = np.searchsorted(all_known, known)
            end = np.where(position + horizon < all_known.size, all_known[np.minimum(position + horizon, all_known.size - 1)], np.iinfo(np.int64).max)
            if low is not None:
                assert known.min() > low, f"{part} {pair} starts before its boundary"
            assert (end < np.iinfo(np.int64).max).all(), f"{part} {pair}: a row whose target window passes the last bar"
            if high is not None:
                assert end.max() <= high, f"{part} {pair}: a target window reaches past the boundary"
            parts_seen += 1
    assert parts_seen == 3 * len(extracted)
    counts = built.manifest["parts"]
    assert all(counts[p]["rows"]["purged"] == 2 * horizon for p in counts)


def test_lags_are_within_pair_shifts(built: Built) -> None:
    catalog = feature_catalog(PROJECT_DIR)
    laggable = [f.matrix_column for f in catalog.features if f.laggable][:3]
    bases = [f.matrix_column for f in catalog.features]
    assert laggable
    for path in sorted((built.options.out / "features").glob("pair=*")):
        extract = ex.load_extract(path)
        wanted = [f"{laggable[0]}_lag60", f"{laggable[1]}_lag180", laggable[2]]
        table = ds.pair_columns(extract, wanted, bases, [t.column for t in catalog.targets])
        source = pq.read_table(extract.path, columns=laggable[:2]).to_pandas()
        for name, base, lag in ((wanted[0], laggable[0], 60), (wanted[1], laggable[1], 180)):
            lagged = table.column(name).to_numpy(zero_copy_only=False)
            expected = source[base].shift(lag).to_numpy()
            assert np.isnan(lagged[:lag]).all(), "a lag reached before the pair's first row (another pair?)"
            np.testing.assert_array_equal(lagged[lag:], expected[lag:].astype(lagged.dtype))


def test_same_seed_and_inputs_give_identical_files_and_id(built: Built, wave1_dsn: str, tmp_path: Path) -> None:
    again = tmp_path / "again"
    shutil.copytree(built.options.out / "features", again / "features")
    result = pipeline.run(dataclasses.replace(built.options, out=again), dsn=wave1_dsn)
    assert result.dataset_id == built.result.dataset_id and not result.reused_dataset
    _assert_same_tree(built.result.dataset_dir, result.dataset_dir)
    # extraction itself is deterministic: a fresh extraction of a pair is byte-identical
    catalog = feature_catalog(PROJECT_DIR)
    with ex.connect(wave1_dsn) as conn:
        sources = ex.describe_pairs(conn, ["EURJPY"], None, None, sorted({f.model for f in catalog.features}))
    fresh = ex.extract_pairs(wave1_dsn, sources, catalog, tmp_path / "fresh", reuse=False, progress=False)
    assert filecmp.cmp(fresh[0].path, built.options.out / "features" / "pair=EURJPY" / "part-0.parquet", shallow=False)
    assert set(pq.ParquetFile(fresh[0].path).metadata.metadata) == {b"ARROW:schema"}  # no timestamps in the file


def _columns() -> tuple[list[str], list[str]]:
    catalog = feature_catalog(PROJECT_DIR)
    return [f.matrix_column for f in catalog.features], [t.column for t in catalog.targets]


def _assert_same_tree(left: Path, right: Path) -> None:
    files = sorted(p.relative_to(left) for p in left.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(right) for p in right.rglob("*") if p.is_file())
    different = [str(f) for f in files if not filecmp.cmp(left / f, right / f, shallow=False)]
    assert not different, f"files differ: {different[:5]}"


def test_interrupted_run_then_rerun_gives_the_clean_files(built: Built, wave1_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "interrupted"
    real_extract = ex.extract_pair
    calls = []

    def dies_on_second_pair(*args: Any, **kwargs: Any) -> ex.PairExtract:
        calls.append(args[1].pair)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_extract(*args, **kwargs)

    monkeypatch.setattr(ex, "extract_pair", dies_on_second_pair)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(dataclasses.replace(built.options, out=out), dsn=wave1_dsn)
    monkeypatch.setattr(ex, "extract_pair", real_extract)
    shutil.copy(built.options.out / "features" / pipeline.VALIDATION_FILE, out / "features" / pipeline.VALIDATION_FILE)
    # a run killed while writing the dataset leaves a partial folder of a dead process
    dead = out / "datasets" / f".partial-99999999-{built.result.dataset_id}"
    (dead / "train").mkdir(parents=True)
    (dead / "train" / "junk.parquet").write_bytes(b"half a file")
    real_fit = tr.fit_and_score
    monkeypatch.setattr(tr, "fit_and_score", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(dataclasses.replace(built.options, out=out), dsn=wave1_dsn)
    assert not (out / "datasets" / built.result.dataset_id).exists(), "an interrupted run left a dataset that looks finished"
    monkeypatch.setattr(tr, "fit_and_score", real_fit)
    result = pipeline.run(dataclasses.replace(built.options, out=out), dsn=wave1_dsn)
    assert result.dataset_id == built.result.dataset_id
    assert not dead.exists()
    _assert_same_tree(built.result.dataset_dir, result.dataset_dir)
    for pair in built.manifest["source"]["pairs"]:
        name = Path("features") / f"pair={pair}" / "part-0.parquet"
        assert filecmp.cmp(built.options.out / name, out / name, shallow=False)


def test_existing_dataset_is_reused_not_rewritten(built: Built, wave1_dsn: str) -> None:
    before = {p: p.stat().st_mtime_ns for p in built.result.dataset_dir.rglob("*") if p.is_file()}
    result = pipeline.run(built.options, dsn=wave1_dsn)
    assert result.reused_dataset and result.reused_pairs == len(built.manifest["source"]["pairs"])
    assert before == {p: p.stat().st_mtime_ns for p in built.result.dataset_dir.rglob("*") if p.is_file()}
    assert (built.options.out / "datasets" / "latest").read_text().strip() == built.result.dataset_id
    # the closing note says where the time went: every step of the first run, only the reuse path here
    # (the validation runs beside the steps after the extraction: 'validate' is the wait for it)
    steps = ["describe", "extract", "split", "select", "write datasets", "baseline models", "validate", "validation alongside", "manifest and report"]
    assert list(built.result.step_seconds) == steps and all(s >= 0 for s in built.result.step_seconds.values())
    assert list(result.step_seconds) == ["describe", "extract", "validate", "validation alongside", "manifest and report"]
    assert "wall time per step: describe " in pipeline.closing_note(built.result)


def test_a_failed_validation_publishes_nothing_and_is_the_error_reported(built: Built, wave1_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The validation runs beside the later steps: when it fails, no dataset is published (not
    even one whose steps all finished), and when a later step fails too, the validation's
    error (bad data, the cause) is the one reported, not the step's."""
    out = tmp_path / "out"
    shutil.copytree(built.options.out / "features", out / "features")
    (out / "features" / pipeline.VALIDATION_FILE).unlink()

    def failing(*args: Any, **kwargs: Any) -> va.ValidationReport:
        time.sleep(0.5)  # finishes after the selection started
        return va.ValidationReport(problems=[va.Problem("EURUSD", "rate_rsi_14", "2024-07-03 10:00", "NaN or infinity")])

    monkeypatch.setattr(va, "validate", failing)
    with pytest.raises(DatasetError, match="validation failed: EURUSD rate_rsi_14"):
        pipeline.run(dataclasses.replace(built.options, out=out), dsn=wave1_dsn)
    assert not (out / "datasets").exists() or not any((out / "datasets").glob("*/manifest.json"))
    assert not (out / "datasets" / "latest").exists()

    def broken(*args: Any, **kwargs: Any) -> tr.Evaluation:
        raise RuntimeError("a model failed on the bad rows")

    monkeypatch.setattr(tr, "fit_and_score", broken)
    with pytest.raises(DatasetError, match="validation failed: EURUSD rate_rsi_14"):
        pipeline.run(dataclasses.replace(built.options, out=out), dsn=wave1_dsn)
    assert not any((out / "datasets").glob("*/manifest.json"))


def test_manifest_says_how_the_files_were_made(built: Built) -> None:
    manifest = built.manifest
    for key in ("features", "lags", "split", "parts", "source", "dbt_vars", "seed", "builder", "selection", "training"):
        assert key in manifest
    assert manifest["builder"]["libraries"]["scikit-learn"]
    assert len(manifest["features"]) == built.options.top_n
    assert set(manifest["parts"]) == set(manifest["source"]["pairs"])
    for fold, entry in enumerate(manifest["folds"], start=1):
        assert (built.result.dataset_dir / "folds" / str(fold) / "train").is_dir()
        assert len(entry["features"]) == built.options.top_n
    schema = pq.read_schema(ds.part_files(built.result.dataset_dir, "train")[0])
    assert schema.names == ["pair", "ts_utc", "known_at", *[f["name"] for f in manifest["features"]], *manifest["targets"]]
    assert all(schema.field(t).type == pa.float64() for t in manifest["targets"])


def test_report_has_its_table_and_plots(built: Built) -> None:
    report = built.result.report.read_text()
    assert "R² against the zero predictor" in report and "| **all** |" in report
    assert "Extra-trees forest (scikit-learn's ExtraTreesRegressor)" in report  # the forest it used (--forest extra)
    for png in ("r2_heatmap.png", "importances.png", "predicted_vs_actual.png", "r2_over_time.png", "split_timeline.png"):
        assert (built.result.report.parent / png).stat().st_size > 10_000, png
        assert f"({png})" in report
    importances = pd.read_csv(built.options.out / "selection" / "importances.csv")
    assert (importances["selected_rank"] > 0).sum() == built.options.top_n
    assert (built.options.out / "selection" / "importances.png").is_file()


def _plant(extract: ex.PairExtract, column: str, folder: Path, change: Callable[[np.ndarray], np.ndarray]) -> ex.PairExtract:
    table = pq.read_table(extract.path)
    values = table.column(column).to_numpy(zero_copy_only=False)
    index = table.schema.get_field_index(column)
    table = table.set_column(index, column, pa.array(change(values), type=table.schema.field(column).type, from_pandas=True))
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "part-0.parquet")
    return dataclasses.replace(extract, path=folder / "part-0.parquet", checks=None)  # a changed file: its recorded facts are gone


def test_planted_future_values_are_caught(built: Built, wave1_dsn: str, tmp_path: Path) -> None:
    """bqx_w15 replaced by its own value 5 bars later (a look-ahead): the rebuild on bars cut at
    a sampled row shows it, naming pair, column and minute."""
    catalog = feature_catalog(PROJECT_DIR)
    features = [f.matrix_column for f in catalog.features]
    extract = ex.load_extract(built.options.out / "features" / "pair=EURUSD")
    planted = _plant(extract, "bqx_w15", tmp_path / "planted", lambda v: np.concatenate([v[5:], v[-5:]]))
    cut = va.choose_cuts([planted], 1, catalog.longest_warmup_bars, seed=3)[0]
    problems, _ = va.check_lookahead(wave1_dsn, [planted], features, [cut], {}, tmp_path / "work", progress=False)
    assert [(p.pair, p.column) for p in problems] == [("EURUSD", "bqx_w15")]
    assert "look-ahead" in problems[0].rule
    # the honest file passes the same rebuild
    assert not va.check_lookahead(wave1_dsn, [extract], features, [cut], {}, tmp_path / "work", progress=False)[0]


def test_lookahead_rebuild_holds_only_the_history_the_compared_rows_need(
    database_factory: Callable[[str], str], dbt_runner: Callable[..., None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten weeks of one pair after its baseline (longer than the 50,400 bars of the models' common
    block grid, lcm(75, 630, 1440)), with flat stretches (the close unchanged for
    700 bars) where the rebuild's history begins: a cut at the last bar is rebuilt from the
    baseline bar and a bounded history (not the whole pair) and equals the extraction; a history
    shorter than the models declare makes the same rebuild differ (the bound is what makes it pass)."""
    from bqx.generate import generate_bars
    from bqx.load import load_frame

    dsn = database_factory("lookahead_history")
    bars = generate_bars(dt.date(2024, 7, 1), dt.date(2024, 9, 9), ["EURUSD"])
    for back in (12_000, 9_500, 7_600):  # around where the history starts: the run and smoother rules reach past them
        flat = bars.index[-back : -back + 700]
        bars.loc[flat, ["open", "high", "low", "close"]] = bars.loc[flat[0], "close"]
    load_frame(dsn, bars, "bars")
    dbt_runner(dsn, "run", "--select", "tag:wave1")
    catalog = feature_catalog(PROJECT_DIR)
    features = [f.matrix_column for f in catalog.features]
    with ex.connect(dsn) as conn:
        sources = ex.describe_pairs(conn, ["EURUSD"], None, None, sorted({f.model for f in catalog.features}))
    (extract,) = ex.extract_pairs(dsn, sources, catalog, tmp_path / "out", progress=False)
    cut = va.Cut("EURUSD", int(pq.read_table(extract.path, columns=["ts_utc"]).column("ts_utc").cast(pa.int64()).to_numpy()[-1]))
    problems, histories = va.check_lookahead(dsn, [extract], features, [cut], {}, tmp_path / "work", progress=False)
    assert problems == []
    history = histories[cut]
    assert history.start_ts is not None and 7_200 < history.bars < extract.rows + extract.bars_before - 3_000
    assert (history.start_bar - 1) % 50_400 == 0  # on every block grid (75, 630 and 1,440 bars)

    too_short = va.History(dt.datetime.fromtimestamp(cut.ts_us / 1e6, dt.UTC) - dt.timedelta(days=2), 0, 0)  # < volume's 7,200 bars
    monkeypatch.setattr(va, "history_start", lambda conn, c, models: too_short)
    problems, _ = va.check_lookahead(dsn, [extract], features, [cut], {}, tmp_path / "work", progress=False)
    assert problems and all("older bars" in p.rule for p in problems)


def test_recorded_file_facts_equal_the_files_scanned(built: Built) -> None:
    """What the extraction recorded while writing each pair's file (the validation's facts) is
    what a scan of the written file finds."""
    from bqx.datasets import facts as fa

    limits = fa.Limits.of(feature_catalog(PROJECT_DIR))
    folders = sorted((built.options.out / "features").glob("pair=*"))
    assert folders
    for folder in folders:
        extract = ex.load_extract(folder)
        assert extract is not None and extract.checks is not None, folder
        assert extract.checks == fa.scan(pq.read_table(extract.path), limits), folder


def test_nan_and_forbidden_nulls_are_caught(built: Built, wave1_dsn: str, tmp_path: Path) -> None:
    catalog = feature_catalog(PROJECT_DIR)
    extract = ex.load_extract(built.options.out / "features" / "pair=USDJPY")

    def nan_at_1000(values: np.ndarray) -> np.ndarray:
        values = values.copy()
        values[1000] = np.inf
        return values

    with_inf = _plant(extract, "rate_rsi_14", tmp_path / "inf", nan_at_1000)
    problems = va.check_values(with_inf, ["rate_rsi_14"])
    assert [(p.pair, p.column) for p in problems] == [("USDJPY", "rate_rsi_14")]
    ts = pq.read_table(extract.path, columns=["ts_utc"]).column("ts_utc")[1000].as_py()
    assert problems[0].minute == f"{ts:%Y-%m-%d %H:%M}"
    # a NULL after the warm-up where the YAML does not allow one
    ts_2000 = pq.read_table(extract.path, columns=["ts_utc"]).column("ts_utc")[2000].as_py()
    null_column = next(f.matrix_column for f in catalog.features if f.null_allowed_when is None and f.model == "reg_rate")
    with_null = _plant(extract, null_column, tmp_path / "null", lambda v: np.where(np.arange(v.size) == 2000, np.nan, v))
    problems = va.check_nulls(wave1_dsn, with_null, catalog)
    assert [(p.pair, p.column) for p in problems] == [("USDJPY", null_column)]
    assert not va.check_nulls(wave1_dsn, extract, catalog)
    # a NULL where the column's rule (asked of the database on that row) does not hold: r2 may be
    # NULL only where the window is flat (rmse = 0), which row 2000 is not
    ruled = "bqx_reg_r2_w60"
    assert catalog.by_matrix_column()[ruled].null_allowed_when == "reg_rmse_w60 = 0"
    with_ruled_null = _plant(extract, ruled, tmp_path / "ruled", lambda v: np.where(np.arange(v.size) == 2000, np.nan, v))
    problems = va.check_nulls(wave1_dsn, with_ruled_null, catalog)
    assert [(p.pair, p.column, p.minute) for p in problems] == [("USDJPY", ruled, f"{ts_2000:%Y-%m-%d %H:%M}")]
    assert "reg_rmse_w60 = 0" in problems[0].line()
    # ... and its rule is asked of the database once there are more such rows than a lookup by minute takes
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(va, "NULL_RULE_LOOKUP_ROWS", 0)
        assert [p.column for p in va.check_nulls(wave1_dsn, with_ruled_null, catalog)] == [ruled]
        assert not va.check_nulls(wave1_dsn, extract, catalog)


def test_errors_are_one_line_with_what_to_do(built: Built, wave1_dsn: str, database_factory: Callable[[str], str], fixture_bars: pd.DataFrame, tmp_path: Path) -> None:
    from bqx.load import load_frame

    bare = database_factory("bare")
    load_frame(bare, fixture_bars[fixture_bars["pair"] == "EURUSD"].head(500), "a few bars")
    cases = [
        (bare, {}, "run `bqx build`"),
        (wave1_dsn, {"pairs": ("EURUSD",), "start": dt.date(2030, 1, 1)}, "has no bars between"),
        (wave1_dsn, {"pairs": ("EURUSD",), "end": dt.date(2024, 7, 2), "lags": (60, 2000)}, "too short"),
        (wave1_dsn, {"pairs": ("EURGBP",)}, "has no bars in the database"),
    ]
    for dsn, changes, expected in cases:
        with pytest.raises(DatasetError) as caught:
            pipeline.run(options(tmp_path / "out", **changes), dsn=dsn)
        message = str(caught.value)
        assert expected in message and "\n" not in message, message
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    env = dict(os.environ, BQX_PG_DSN=wave1_dsn)
    done = subprocess.run(
        [sys.executable, str(PROJECT_DIR / "python" / "build_datasets.py"), "--out", str(blocker / "out"), "--no-progress"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "cannot write to the output folder" in done.stderr and "--out" in done.stderr


def test_corrected_bar_changes_fingerprint_and_extraction(
    database_factory: Callable[[str], str], dbt_runner: Callable[..., None], fixture_bars: pd.DataFrame, tmp_path: Path
) -> None:
    from bqx.load import load_frame

    dsn = database_factory("correction")
    bars = fixture_bars[fixture_bars["pair"].isin(["EURUSD", "USDJPY"]) & (fixture_bars["ts_utc"] < pd.Timestamp("2024-07-05", tz="UTC"))]
    load_frame(dsn, bars, "bars")
    dbt_runner(dsn, "run", "--select", "tag:wave1")
    catalog = feature_catalog(PROJECT_DIR)
    models = sorted({f.model for f in catalog.features})
    with ex.connect(dsn) as conn:
        before = ex.describe_pairs(conn, ["EURUSD", "USDJPY"], None, None, models)
        conn.execute("set time zone 'America/New_York'")  # the session's zone does not enter it
        assert [s.fingerprint for s in ex.describe_pairs(conn, ["EURUSD", "USDJPY"], None, None, models)] == [s.fingerprint for s in before]
    first = ex.extract_pairs(dsn, before, catalog, tmp_path, progress=False)
    old = pq.read_table(first[0].path, columns=["ts_utc", "rate_mean_w15", "bqx_w15"]).to_pandas()
    # a build that rewrote nothing keeps every fingerprint (a second `make demo` reuses the files)
    dbt_runner(dsn, "run", "--select", "tag:wave1")
    with ex.connect(dsn) as conn:
        assert [s.fingerprint for s in ex.describe_pairs(conn, ["EURUSD", "USDJPY"], None, None, models)] == [s.fingerprint for s in before]
    # one bar in the middle of the range, corrected: until a build consumes the change, the pair's
    # features lag behind its bars and extracting it is an error saying so (the other pair is fine)
    middle = pd.Timestamp("2024-07-03 12:00", tz="UTC")
    corrected = bars[(bars["pair"] == "EURUSD") & (bars["ts_utc"] == middle)].copy()
    corrected[["open", "high", "low", "close"]] *= 1.002
    load_frame(dsn, corrected, "correction")
    with ex.connect(dsn) as conn:
        with pytest.raises(DatasetError, match=r"^EURUSD has bars changed since the last build \(1 change\(s\) in raw.m1_changes from 2024-07-03 12:00 UTC\): run `bqx build`"):
            ex.describe_pairs(conn, ["EURUSD", "USDJPY"], None, None, models)
        assert ex.describe_pairs(conn, ["USDJPY"], None, None, models)[0].fingerprint == before[1].fingerprint
    # the build consumes it through the change log (no recompute_from needed); a model no longer
    # in the project (its build_state row left behind, its snapshot before every change) never
    # consumes it again and must not hold the extraction up
    dbt_runner(dsn, "run", "--select", "tag:wave1")
    with ex.connect(dsn) as conn:
        conn.execute(
            "insert into build_state.model_pairs (model, pair, consumed_snapshot) values ('retired_model', 'EURUSD', '1:1:')"
        )
        rebuilt = ex.describe_pairs(conn, ["EURUSD", "USDJPY"], None, None, models)
    second = ex.extract_pairs(dsn, rebuilt, catalog, tmp_path, progress=False)
    assert rebuilt[0].fingerprint != before[0].fingerprint  # rewritten from the corrected bar on
    assert rebuilt[1].fingerprint == before[1].fingerprint  # the other pair's rows were not
    assert [e.reused for e in second] == [False, True]
    new = pq.read_table(second[0].path, columns=["ts_utc", "rate_mean_w15", "bqx_w15"]).to_pandas()
    at = new["ts_utc"] == middle
    assert (new.loc[at, "bqx_w15"].to_numpy() != old.loc[at, "bqx_w15"].to_numpy()).all()
    assert (new["rate_mean_w15"] != old["rate_mean_w15"]).sum() >= 1
    # a NaN stored in a feature table stays NaN in the file (NULLs travel as NaN on the wire, so
    # the row's NULL count tells them apart), and a missing model row stops the extraction
    with ex.connect(dsn) as conn:
        conn.execute("update features.bqx set bqx_w15 = 'NaN' where pair = 'EURUSD' and ts_utc = %s", (middle,))
    nan_stored = ex.extract_pairs(dsn, rebuilt[:1], catalog, tmp_path / "nan", reuse=False, progress=False)[0]
    column = pq.read_table(nan_stored.path, columns=["ts_utc", "bqx_w15"])
    row = int(np.flatnonzero(column.column("ts_utc").to_pandas() == middle)[0])
    assert column.column("bqx_w15")[row].is_valid and np.isnan(column.column("bqx_w15")[row].as_py())
    assert column.column("bqx_w15").null_count == pq.read_table(second[0].path, columns=["bqx_w15"]).column("bqx_w15").null_count
    assert [p.column for p in va.check_values(nan_stored, ["bqx_w15"])] == ["bqx_w15"]
    with ex.connect(dsn) as conn:
        conn.execute("delete from features.volume_features where pair = 'EURUSD' and ts_utc = %s", (middle,))
    with pytest.raises(DatasetError, match="features.volume_features does not hold exactly the bars of EURUSD"):
        ex.extract_pairs(dsn, rebuilt[:1], catalog, tmp_path / "missing", reuse=False, progress=False)


def test_float4_from_the_server_gives_the_client_cast_files(
    database_factory: Callable[[str], str], dbt_runner: Callable[..., None], fixture_bars: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a pair's first chunk decided its float32 columns, the later chunks bring them as
    float4 from the server: the files are the bytes the client's own casts give, also where a
    value lies beyond float4 (the server refuses the cast, the relation is read again as float8
    and the client casts it to inf and to a signed 0, as before)."""
    from bqx.load import load_frame

    dsn = database_factory("float4")
    bars = fixture_bars[(fixture_bars["pair"] == "USDJPY") & (fixture_bars["ts_utc"] < pd.Timestamp("2024-07-05", tz="UTC"))]
    load_frame(dsn, bars, "bars")
    dbt_runner(dsn, "run", "--select", "tag:wave1")
    catalog = feature_catalog(PROJECT_DIR)
    models = sorted({f.model for f in catalog.features})
    with ex.connect(dsn) as conn:
        sources = ex.describe_pairs(conn, ["USDJPY"], None, None, models)
    monkeypatch.setattr(ex, "ROW_GROUP_ROWS", 1_000)  # several chunks on the fixture's few days,
    monkeypatch.setattr(ex, "PRECISION_ROWS", 400)  # the first one decided on its first rows ...
    monkeypatch.setattr(ex, "PRECISION_MIN_VALUES", 100)  # ... or, for the long warm-ups, on all its rows
    asked: list[frozenset[str]] = []
    real_query = ex.relation_query

    def spy(relation: ex.Relation, pair: str, first: dt.datetime, last: dt.datetime, float4: frozenset[str] = frozenset()) -> Any:
        asked.append(float4)
        return real_query(relation, pair, first, last, float4)

    def client_casts_only() -> Path:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(ex, "relation_query", lambda relation, pair, first, last, float4=frozenset(): real_query(relation, pair, first, last))
            patch.setattr(ex, "read_relation", lambda conn, relation, pair, keys, float4=frozenset(), read=ex.read_relation: read(conn, relation, pair, keys))
            folder = tmp_path / f"client_{len(list(tmp_path.iterdir()))}"
            return ex.extract_pairs(dsn, sources, catalog, folder, reuse=False, progress=False)[0].path

    monkeypatch.setattr(ex, "relation_query", spy)
    served = ex.extract_pairs(dsn, sources, catalog, tmp_path / "served", reuse=False, progress=False)[0]
    narrow = [f for f in asked if f]
    assert narrow and "rate_rsi_14" in narrow[0] and not set(served.float64_columns) & narrow[0]
    head = pq.read_table(served.path).slice(0, 400)
    undecided = [f.matrix_column for f in catalog.features if head.column(f.matrix_column).drop_null().length() < 100]
    assert undecided and not set(undecided) & narrow[0]  # read as float8 to the end of the first chunk
    assert set(undecided) - set(served.float64_columns) <= narrow[-1]  # later chunks: float4 where the whole chunk allowed
    assert set(undecided) - set(served.float64_columns)
    assert sources[0].rows > 3 * ex.ROW_GROUP_ROWS
    assert filecmp.cmp(served.path, client_casts_only(), shallow=False)
    # values float4 cannot hold, after the first chunk, in a float32 column
    column = catalog.by_matrix_column()["rate_rsi_14"]
    planted = {2500: 1e39, 2600: -1e39, 2700: 1e-50, 2800: -1e-50}
    minutes = pq.read_table(served.path, columns=["ts_utc"]).column("ts_utc").to_pylist()
    with ex.connect(dsn) as conn:
        for row, value in planted.items():
            conn.execute(f"update features.{column.model} set {column.column} = %s where pair = 'USDJPY' and ts_utc = %s", (value, minutes[row]))
    asked.clear()
    refused = ex.extract_pairs(dsn, sources, catalog, tmp_path / "refused", reuse=False, progress=False)[0]
    assert any(asked)  # float4 was asked: the planted values make the server refuse it, so what follows came from the float8 re-read
    assert filecmp.cmp(refused.path, client_casts_only(), shallow=False)
    values = pq.read_table(refused.path, columns=["rate_rsi_14"]).column("rate_rsi_14").to_numpy(zero_copy_only=False)
    assert pq.read_schema(refused.path).field("rate_rsi_14").type == pa.float32()
    assert values[2500] == np.inf and values[2600] == -np.inf
    assert values[2700] == 0 and not np.signbit(values[2700]) and values[2800] == 0 and np.signbit(values[2800])
    assert [p.column for p in va.check_values(refused, ["rate_rsi_14"])] == ["rate_rsi_14"]  # inf is caught, as before


# --- datasets at event times (--events) --------------------------------------------------------

MAX_AGE = pd.Timedelta(minutes=5)
MINUTE = pd.Timedelta(minutes=1)


def _extracted(out: Path, pair: str) -> pd.DataFrame:
    frame = pq.read_table(out / "features" / f"pair={pair}" / "part-0.parquet").to_pandas()
    frame["ts_utc"] = frame["ts_utc"].astype("datetime64[us, UTC]")
    return frame


def _make_events(out: Path, pairs: list[str], seed: int = 17) -> pd.DataFrame:
    """Random instants between bar closes, instants exactly at bar closes, and the cases that get
    no row: before the pair's first bar, a bar before the extracted range (before baseline_ts),
    inside the warm-ups, a Saturday (stale); shuffled, with two columns of the user's."""
    rng = np.random.default_rng(seed)
    frames = []
    for pair in pairs:
        ts = _extracted(out, pair)["ts_utc"]
        first, last = ts.min(), ts.max()
        span = (last - first).total_seconds() + 3600
        between = first + pd.to_timedelta(rng.uniform(-3600, span, 700).round(3), unit="s")
        closes = ts.sample(120, random_state=seed).to_numpy() + MINUTE
        edges = [
            pd.Timestamp("2024-06-20 12:00", tz="UTC"),  # before the fixture's first bar
            pd.Timestamp("2024-06-26 12:00:30", tz="UTC"),  # its bar is before baseline_ts
            pd.Timestamp("2024-07-01 01:00:30", tz="UTC"),  # inside the warm-ups + lags
            pd.Timestamp("2024-07-06 12:00", tz="UTC"),  # a Saturday
        ]
        times = pd.DatetimeIndex(np.concatenate([between.to_numpy(), closes, pd.DatetimeIndex(edges).to_numpy()]))
        frames.append(pd.DataFrame({"pair": pair, "event_time": times.tz_localize("UTC") if times.tz is None else times}))
    events = pd.concat(frames, ignore_index=True).sample(frac=1, random_state=seed).reset_index(drop=True)
    events["event_time"] = events["event_time"].astype("datetime64[us, UTC]")
    events["label"] = [f"e{i}" for i in range(len(events))]
    events["signal"] = rng.normal(size=len(events))
    return events


def _event_reference(out: Path, events: pd.DataFrame, columns: list[str], longest_warmup: int, longest_lag: int) -> pd.DataFrame:
    """Independent of the builder: pandas merge_asof of the events on the every-minute extraction
    (a bar is known from ts_utc + 1 minute, the newest known within max_age, inclusive), lags by
    a within-pair pandas shift, usable when the bar is past the warm-ups plus the longest lag."""
    pieces = []
    for pair, group in events.groupby("pair"):
        bars = _extracted(out, pair)
        for name in columns:
            match = re.fullmatch(r"(.+)_lag(\d+)", name)
            if match and name not in bars:
                bars[name] = bars[match[1]].shift(int(match[2]))
        bars["bar_known_at"] = bars["ts_utc"] + MINUTE
        merged = pd.merge_asof(
            group.sort_values("event_time"), bars, left_on="event_time", right_on="bar_known_at",
            direction="backward", allow_exact_matches=True, tolerance=MAX_AGE,
        )  # fmt: skip
        merged["usable"] = merged["bar_number"] > longest_warmup + longest_lag
        pieces.append(merged)
    return pd.concat(pieces, ignore_index=True).set_index("label")


def _dataset_rows(root: Path, parts: tuple[str, ...] = ("train", "val", "test")) -> pd.DataFrame:
    frames = []
    for part in parts:
        for path in ds.part_files(root, part):
            frames.append(pq.read_table(path).to_pandas().assign(part=part))
    return pd.concat(frames, ignore_index=True)


def _micros(times: pd.Series) -> np.ndarray:
    return ((times - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)).to_numpy(dtype=np.int64)


@dataclasses.dataclass
class EventsBuilt:
    result: pipeline.BuildResult
    options: BuilderOptions
    manifest: dict[str, Any]
    events: pd.DataFrame
    path: Path


@pytest.fixture(scope="module")
def events_built(built: Built, wave1_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> EventsBuilt:
    """The same options as `built`, at events: its extraction and validation are reused."""
    out = tmp_path_factory.mktemp("events_out")
    shutil.copytree(built.options.out / "features", out / "features")
    events = _make_events(out, built.manifest["source"]["pairs"])
    path = out / "events.parquet"
    events.to_parquet(path)
    opts = dataclasses.replace(built.options, out=out, events=path, walk_forward=1)
    result = pipeline.run(opts, dsn=wave1_dsn)
    return EventsBuilt(result, opts, json.loads((result.dataset_dir / "manifest.json").read_text()), events, path)


def test_events_dataset_is_the_minute_rows_at_the_events_bars(events_built: EventsBuilt, built: Built) -> None:
    """Each event's row = the every-minute row of its last closed bar (features, lags, targets),
    against merge_asof on the every-minute extraction; events exactly at a bar's close equal the
    every-minute dataset's row of that bar; every event is accounted for."""
    manifest, catalog = events_built.manifest, feature_catalog(PROJECT_DIR)
    selected, targets = [f["name"] for f in manifest["features"]], manifest["targets"]
    got = _dataset_rows(events_built.result.dataset_dir).set_index("label")
    assert list(got.columns[:4]) == ["pair", "event_row", "event_time", "signal"], "the user's columns are kept, in their order"
    expected = _event_reference(events_built.options.out, events_built.events, selected + targets, catalog.longest_warmup_bars, max(built.options.lags))
    kept = expected[expected["ts_utc"].notna() & expected["usable"]]
    assert got.index.is_unique and set(got.index) <= set(kept.index)
    ref = kept.loc[got.index]
    assert (got["ts_utc"] == ref["ts_utc"]).all(), "an event got another bar than the last one closed at its time"
    assert (got["known_at"] == got["event_time"]).all() and (got["event_time"] == ref["event_time"]).all()
    assert (got["feature_age"] == ref["event_time"] - ref["bar_known_at"]).all()
    np.testing.assert_array_equal(got["signal"].to_numpy(), ref["signal"].to_numpy())
    assert any(name.rsplit("_lag", 1)[-1].isdigit() for name in selected), "the selection has a lag to compare"
    for name in selected + targets:
        a, b = got[name].to_numpy(dtype=float), ref[name].to_numpy(dtype=float)
        assert np.array_equal(a, b, equal_nan=True), name
    # events between closes and exactly at closes both made it in
    at_close = got["event_time"] == got["ts_utc"] + MINUTE
    assert at_close.sum() > 50 and (~at_close).sum() > 500
    # ... and at a close, the row is the every-minute dataset's row of that bar
    minutes = _dataset_rows(built.result.dataset_dir).set_index(["pair", "ts_utc"])
    exact = got[at_close].set_index(["pair", "ts_utc"])
    common = [c for c in [*selected, *targets] if c in minutes.columns]
    both = exact.index.intersection(minutes.index)
    assert len(both) > 30 and len(common) > len(targets)
    for name in common:
        assert np.array_equal(exact.loc[both, name].to_numpy(float), minutes.loc[both, name].to_numpy(float), equal_nan=True), name
    # every event is accounted for: a row, a drop by reason, or the split's purge
    record = manifest["events"]
    assert record["events"] == len(events_built.events) and record["sha256"] == ev.file_sha256(events_built.path)
    assert record["dropped"]["stale"] + record["dropped"]["before_first_bar"] + record["dropped"]["outside_range"] == int(expected["ts_utc"].isna().sum())
    assert record["dropped"]["warm_up"] == int((expected["ts_utc"].notna() & ~expected["usable"]).sum()) > 0
    assert min(record["dropped"][r] for r in ("stale", "before_first_bar", "outside_range")) >= len(built.manifest["source"]["pairs"])
    assert len(kept) == len(got) + sum(record["dropped_by_split"].values())
    assert sum(record["rows"].values()) == len(got)
    assert "events" in events_built.result.report.read_text()
    # the rows come from the every-minute extraction, validated as for every-minute datasets
    assert manifest["validation"]["lookahead_cuts"] and manifest["validation"] == built.manifest["validation"]


def test_events_are_split_by_their_own_time(events_built: EventsBuilt) -> None:
    """Boundaries are the pooled quantiles of the usable events' times; a row's event time and
    its longest target's last close lie inside its part."""
    manifest = events_built.manifest
    b1, b2 = (pd.Timestamp(manifest["split"]["boundaries"][k]) for k in ("train_end", "val_end"))
    horizon = manifest["split"]["longest_horizon"]
    got = _dataset_rows(events_built.result.dataset_dir)
    for part, (low, high) in {"train": (None, b1), "val": (b1, b2), "test": (b2, None)}.items():
        rows = got[got["part"] == part]
        assert len(rows) >= pipeline.MIN_PART_ROWS
        for pair, group in rows.groupby("pair"):
            ts = _micros(_extracted(events_built.options.out, pair)["ts_utc"])
            position = np.searchsorted(ts, _micros(group["ts_utc"]))
            assert (position + horizon < ts.size).all()
            end = pd.to_datetime(ts[position + horizon], unit="us", utc=True) + MINUTE
            if low is not None:
                assert (group["event_time"] > low).all(), f"{part} {pair}: an event before its part"
            if high is not None:
                assert (end <= high).all(), f"{part} {pair}: a target window reaches past the boundary"
    catalog = feature_catalog(PROJECT_DIR)
    reference = _event_reference(events_built.options.out, events_built.events, [], catalog.longest_warmup_bars, max(events_built.options.lags))
    pooled = _micros(reference.loc[reference["ts_utc"].notna() & reference["usable"], "event_time"])
    quantiles = [pd.Timestamp(np.quantile(pooled, q, method="inverted_cdf"), unit="us", tz="UTC") for q in (0.70, 0.85)]
    assert [b1, b2] == quantiles


def test_an_event_is_split_by_its_time_not_its_bars() -> None:
    """An event 30 s after a bar's close, just past a boundary that the bar's close precedes, is
    a validation row (by its bar's close it would have been purged); the embargo counts bars."""
    ts = np.arange(1000, dtype=np.int64) * sp.MINUTE_US
    keys = sp.PairKeys("EURUSD", ts, np.arange(1, 1001))
    usable = np.ones(1000, dtype=bool)
    positions = np.arange(100, 900)
    event_us = ts[positions] + sp.MINUTE_US + 30_000_000
    b1 = int(ts[500] + sp.MINUTE_US + 10_000_000)  # 10 s after bar 500 closes, 20 s before its event
    plan = sp.SplitPlan((b1, int(ts[800])), (), 0, 5)
    part = sp.split_times(sp.event_times(keys, usable, event_us, positions, 5), plan).part
    at = {int(p): int(c) for p, c in zip(positions, part)}
    assert at[495] == sp.TRAIN and at[496] == sp.NONE  # bar 495's target ends at bar 500's close, before b1
    assert at[500] == sp.VAL, "split by the bar's close, not the event's time"
    embargoed = sp.split_times(sp.event_times(keys, usable, event_us, positions, 5), dataclasses.replace(plan, embargo_bars=3)).part
    assert [int(embargoed[positions == p][0]) for p in (500, 501, 503, 504)] == [sp.NONE, sp.NONE, sp.NONE, sp.VAL]


def test_a_bar_closing_after_an_event_changes_nothing_of_it(events_built: EventsBuilt, wave1_dsn: str, tmp_path: Path) -> None:
    """Every feature of every bar from X on changed (in the extracted file): events before X's
    close keep their features and lags exactly, later events see the change."""
    catalog = feature_catalog(PROJECT_DIR)
    features, targets = [f.matrix_column for f in catalog.features], [t.column for t in catalog.targets]
    laggable = next(f.matrix_column for f in catalog.features if f.laggable and f.model == "bqx")
    columns = [laggable, f"{laggable}_lag60", f"{laggable}_lag180", "rate_rsi_14", "hour"]
    x = pd.Timestamp("2024-07-03 12:00", tz="UTC")
    offsets = [-90, -30, 0, 30, 59.999999, 60, 90, 150]  # seconds from X's open; X closes at +60
    times = [x + pd.Timedelta(seconds=s) for s in offsets] + [x + pd.Timedelta(minutes=m) for m in (60, 182)]
    path = tmp_path / "around_x.csv"
    pd.DataFrame({"pair": "EURUSD", "event_time": [t.isoformat() for t in times]}).to_csv(path, index=False)
    events = ev.read_events(path)
    located = ev.locate(wave1_dsn, events, dt.timedelta(minutes=5), progress=False)
    extract = ex.load_extract(events_built.options.out / "features" / "pair=EURUSD")
    changed = _plant_from(extract, features, x, tmp_path / "changed")
    rows = []
    for source in (extract, changed):
        keys = pipeline.read_keys(source)
        usable = sp.usable_mask(keys, catalog.longest_warmup_bars, 180)
        (found,), _ = ev.pair_events(events, located, ["EURUSD"], [keys], [usable])
        rows.append(ds.event_rows(ds.pair_columns(source, columns, features, targets), found.table, found.bar_position).to_pandas())
    before, after = rows
    assert len(before) == len(times)
    earlier = (before["event_time"] < x + MINUTE).to_numpy()
    assert earlier.sum() == 5
    for name in columns:
        assert np.array_equal(before.loc[earlier, name].to_numpy(float), after.loc[earlier, name].to_numpy(float), equal_nan=True), name
    assert (before.loc[~earlier, laggable].to_numpy() != after.loc[~earlier, laggable].to_numpy()).all()
    # the event 182 minutes after X's open has bar X+181, whose 180-bar lag is bar X+1: changed
    assert before[f"{laggable}_lag180"].iloc[-1] != after[f"{laggable}_lag180"].iloc[-1]


def _plant_from(extract: ex.PairExtract, columns: list[str], start: pd.Timestamp, folder: Path) -> ex.PairExtract:
    table = pq.read_table(extract.path)
    later = (table.column("ts_utc").to_pandas() >= start).to_numpy()
    for name in columns:
        values = table.column(name).to_numpy(zero_copy_only=False)
        index = table.schema.get_field_index(name)
        table = table.set_column(index, name, pa.array(np.where(later, values * 2 + 1, values), type=table.schema.field(name).type, from_pandas=True))
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "part-0.parquet")
    return dataclasses.replace(extract, path=folder / "part-0.parquet", checks=None)  # a changed file: its recorded facts are gone


def test_build_datasets_events_on_the_command_line(events_built: EventsBuilt, wave1_dsn: str, tmp_path: Path) -> None:
    """`build_datasets.py --events FILE.csv`: the same events as CSV give the same rows under
    another id (the file's content is in it); the Parquet file again reuses its dataset."""
    out = tmp_path / "cli"
    shutil.copytree(events_built.options.out / "features", out / "features")
    csv = tmp_path / "events.csv"
    events_built.events.assign(event_time=events_built.events["event_time"].map(lambda t: t.isoformat())).to_csv(csv, index=False)
    # the same options as the Parquet run: only the events file differs
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items() if k != "progress"] + ["--walk-forward=1", "--no-progress"]
    env = dict(os.environ, BQX_PG_DSN=wave1_dsn)
    done = subprocess.run(
        [sys.executable, str(PROJECT_DIR / "python" / "build_datasets.py"), "--events", str(csv), "--out", str(out), *flags],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    identifier = (out / "datasets" / "latest").read_text().strip()
    assert identifier != events_built.result.dataset_id
    manifest = json.loads((out / "datasets" / identifier / "manifest.json").read_text())
    assert manifest["events"]["sha256"] == ev.file_sha256(csv) and "--events" in manifest["rebuild"]
    assert manifest["options"] == events_built.manifest["options"]
    from_csv = _dataset_rows(out / "datasets" / identifier).set_index("label").sort_index()
    from_parquet = _dataset_rows(events_built.result.dataset_dir).set_index("label").sort_index()
    assert from_csv.index.equals(from_parquet.index)
    assert (from_csv["event_row"] == from_parquet["event_row"] + 1).all()  # CSV rows are named by their line
    assert (from_csv["ts_utc"] == from_parquet["ts_utc"]).all() and (from_csv["event_time"] == from_parquet["event_time"]).all()
    assert np.array_equal(from_csv["target_bqx_h60"].to_numpy(), from_parquet["target_bqx_h60"].to_numpy())
    again = pipeline.run(events_built.options, dsn=wave1_dsn)
    assert again.reused_dataset and again.dataset_id == events_built.result.dataset_id
    # a naive time: one line naming the file, the line and the rule, exit 2
    csv.write_text("pair,event_time\nEURUSD,2024-07-03T12:00:00Z\nEURUSD,2024-07-03 12:00:30\n")
    done = subprocess.run(
        [str(PROJECT_DIR / ".venv" / "bin" / "bqx"), "datasets", "--events", str(csv), "--out", str(out), "--no-progress"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert f"{csv} line 3" in done.stderr and "time zone" in done.stderr


def test_bad_event_files_are_one_line_errors(tmp_path: Path) -> None:
    good = "2024-07-03T12:00:00Z"
    cases = {
        "naive.csv": (f"pair,event_time\nEURUSD,{good}\nEURUSD,2024-07-03 12:00\n", "line 3: event_time '2024-07-03 12:00' has no time zone"),
        "unknown.csv": (f"pair,event_time\nEURUSD,{good}\nEURXXX,{good}\n", "line 3: unknown pair 'EURXXX'"),
        "no_time.csv": ("pair,event_time\nEURUSD,\n", "line 2: event_time is empty"),
        "no_pair.csv": (f"pair,event_time\n,{good}\n", "line 2: pair is empty"),
        "garbled.csv": ("pair,event_time\nEURUSD,soon+01:00\n", "line 2: event_time 'soon+01:00' is not an ISO timestamp"),
        "columns.csv": (f"pair,time\nEURUSD,{good}\n", "no column event_time"),
        "clash.csv": (f"pair,event_time,known_at\nEURUSD,{good},1\n", "the column known_at is one the datasets write"),
        "feature.csv": (f"pair,event_time,bqx_w15\nEURUSD,{good},1\n", "the column bqx_w15 is one the datasets write"),
        "empty.csv": ("pair,event_time\n", "holds no events"),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
    utc = pd.Timestamp(good)
    pd.DataFrame({"pair": ["EURUSD"], "event_time": [utc.tz_localize(None)]}).to_parquet(tmp_path / "naive.parquet")
    pd.DataFrame({"pair": ["EURUSD", "EURUSD"], "event_time": [utc, None]}).to_parquet(tmp_path / "null.parquet")
    pd.DataFrame({"pair": ["EURUSD"], "event_time": [1.5]}).to_parquet(tmp_path / "number.parquet")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    cases.update(
        {
            "naive.parquet": ("", "event_time has no time zone (a timestamp[us] column)"),
            "null.parquet": ("", "row 2: event_time is empty"),
            "number.parquet": ("", "event_time must be a timestamp with a time zone, not double"),
            "broken.parquet": ("", "cannot read it as Parquet"),
            "missing.parquet": ("", "no such file"),
        }
    )
    for name, (_, expected) in cases.items():
        with pytest.raises(DatasetError) as caught:
            ev.read_events(tmp_path / name, reserved=["bqx_w15"])
        message = str(caught.value)
        assert f"--events {tmp_path / name}" in message and expected in message and "\n" not in message, message
    # any time zone is one instant; nanoseconds round down (never known earlier than it is)
    (tmp_path / "zones.csv").write_text("pair,event_time,note\nEURUSD,2024-07-03T14:00:00.0000009+02:00,a\nUSDJPY,2024-07-03T12:00:00Z,b\n")
    read = ev.read_events(tmp_path / "zones.csv").table.to_pandas()
    assert (read["event_time"] == pd.Timestamp("2024-07-03 12:00", tz="UTC")).all() and read["note"].tolist() == ["a", "b"]
    assert read["event_row"].tolist() == [2, 3]


def test_an_event_given_a_wrong_bar_stops_the_builder() -> None:
    """The re-check of every event row, independent of the SQL that found the bar: a bar that
    closes after the event, or one older than the last bar closed by then, is a leak or a wrong
    row and stops the builder naming the pair and the event's row."""
    ts = np.arange(100, dtype=np.int64) * sp.MINUTE_US
    keys = sp.PairKeys("EURUSD", ts, np.arange(1, 101))
    event_us = np.array([ts[10] + sp.MINUTE_US, ts[20] + sp.MINUTE_US + 30_000_000, ts[99] + 5 * sp.MINUTE_US])
    ev.check_rows("EURUSD", keys, event_us, np.array([10, 20, 99]), np.array([1, 2, 3]))  # the right bars pass
    with pytest.raises(AssertionError, match="event row 2 .* closes after the event"):
        ev.check_rows("EURUSD", keys, event_us, np.array([10, 21, 99]), np.array([1, 2, 3]))
    with pytest.raises(AssertionError, match="event row 1 .* not the last bar closed"):
        ev.check_rows("EURUSD", keys, event_us, np.array([9, 20, 99]), np.array([1, 2, 3]))
