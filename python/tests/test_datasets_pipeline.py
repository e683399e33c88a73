"""The dataset builder end to end on the wave-1 fixture build (4 pairs, two weeks of generated
bars): leakage rules on the written files, determinism, interrupted runs, the look-ahead proof,
the report and the one-line errors."""

from __future__ import annotations

import dataclasses
import datetime as dt
import filecmp
import json
import os
import shutil
import subprocess
import sys
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
    return dataclasses.replace(extract, path=folder / "part-0.parquet")


def test_planted_future_values_are_caught(built: Built, wave1_dsn: str, tmp_path: Path) -> None:
    """bqx_w15 replaced by its own value 5 bars later (a look-ahead): the rebuild on bars cut at
    a sampled row shows it, naming pair, column and minute."""
    catalog = feature_catalog(PROJECT_DIR)
    features = [f.matrix_column for f in catalog.features]
    extract = ex.load_extract(built.options.out / "features" / "pair=EURUSD")
    planted = _plant(extract, "bqx_w15", tmp_path / "planted", lambda v: np.concatenate([v[5:], v[-5:]]))
    cut = va.choose_cuts([planted], 1, catalog.longest_warmup_bars, seed=3)[0]
    problems = va.check_lookahead(wave1_dsn, [planted], features, [cut], {}, tmp_path / "work", progress=False)
    assert [(p.pair, p.column) for p in problems] == [("EURUSD", "bqx_w15")]
    assert "look-ahead" in problems[0].rule
    # the honest file passes the same rebuild
    assert not va.check_lookahead(wave1_dsn, [extract], features, [cut], {}, tmp_path / "work", progress=False)


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
    first = ex.extract_pairs(dsn, before, catalog, tmp_path, progress=False)
    old = pq.read_table(first[0].path, columns=["ts_utc", "rate_mean_w15", "bqx_w15"]).to_pandas()
    # one bar in the middle of the range, corrected
    middle = pd.Timestamp("2024-07-03 12:00", tz="UTC")
    corrected = bars[(bars["pair"] == "EURUSD") & (bars["ts_utc"] == middle)].copy()
    corrected[["open", "high", "low", "close"]] *= 1.002
    load_frame(dsn, corrected, "correction")
    with ex.connect(dsn) as conn:
        changed = ex.describe_pairs(conn, ["EURUSD", "USDJPY"], None, None, models)
    assert changed[0].fingerprint != before[0].fingerprint  # the bar itself changed
    assert changed[1].fingerprint == before[1].fingerprint  # the other pair did not
    dbt_runner(dsn, "run", "--select", "tag:wave1", "--vars", json.dumps({"recompute_from": middle.isoformat()}))
    with ex.connect(dsn) as conn:
        rebuilt = ex.describe_pairs(conn, ["EURUSD", "USDJPY"], None, None, models)
    second = ex.extract_pairs(dsn, rebuilt, catalog, tmp_path, progress=False)
    assert rebuilt[0].fingerprint != before[0].fingerprint
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
