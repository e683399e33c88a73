"""The models' YAML is generated (`bqx docs generate-yaml`): the committed files are exactly what
the registry and the vars give, and a window added to a var gets docs and warm-up checks."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import yaml

from bqx.catalog import feature_catalog
from bqx.dbt import run_dbt
from bqx.docs import generated_files, stale_files, write_files
from bqx.generate import generate_bars
from bqx.load import load_frame
from bqx.project import DBT_PROJECT_FILE, PROJECT_DIR
from conftest import FIXTURE_PAIRS, table_columns


def test_committed_yaml_is_what_the_registry_generates() -> None:
    """`make test` fails here when a model's YAML was edited by hand or a var changed without
    `bqx docs generate-yaml`."""
    stale = stale_files(PROJECT_DIR)
    assert not stale, f"run `bqx docs generate-yaml`: {', '.join(map(str, stale))} differ from what it writes"


def test_every_feature_column_is_documented_once_in_its_models_yaml() -> None:
    catalog = feature_catalog()
    documented: dict[tuple[str, str], str] = {}
    for file in generated_files(PROJECT_DIR):
        for model in yaml.safe_load(file.text)["models"]:
            for column in model["columns"]:
                key = (model["name"], column["name"])
                assert key not in documented, key
                documented[key] = column["description"].strip()
    for feature in catalog.features:
        assert documented[(feature.model, feature.column)] == feature.description
        assert feature.description in documented[("feature_matrix", feature.matrix_column)]
    for target in catalog.targets:
        assert ("targets", target.column) in documented


def test_generated_columns_are_the_built_tables_columns(wave1_dsn: str) -> None:
    """Every column of a feature model's table (features, bar_number carried by bqx), of targets
    and of the features_latest view is in its generated YAML, in the relation's order, and
    nothing else."""
    for file in generated_files(PROJECT_DIR):
        for model in yaml.safe_load(file.text)["models"]:
            if model["name"] == "feature_matrix":
                continue
            schema = "marts" if model["name"] in ("targets", "features_latest") else "features"
            documented = [column["name"] for column in model["columns"]]
            assert documented == table_columns(wave1_dsn, schema, model["name"]), model["name"]


# --- a window added to reg_windows in a scratch copy of the project -------------------------

NEW_WINDOW = 120
DAYS = ("2024-07-01", "2024-07-04")  # three days of the fixture's 4 pairs: > 630 bars each


def _scratch_project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    for name in (DBT_PROJECT_FILE, "profiles.example.yml"):
        shutil.copy(PROJECT_DIR / name, project / name)
    for folder in ("models", "macros", "tests"):
        shutil.copytree(PROJECT_DIR / folder, project / folder)
    return project


def _add_reg_window(project: Path, window: int) -> None:
    path = project / DBT_PROJECT_FILE
    text = path.read_text()
    windows = yaml.safe_load(text)["vars"]["reg_windows"]
    old = f"reg_windows: [{', '.join(map(str, windows))}]"
    assert old in text, "dbt_project.yml writes reg_windows on one line"
    path.write_text(text.replace(old, f"reg_windows: {json.dumps(sorted([*windows, window]))}"))


def test_a_new_window_needs_regenerated_yaml_then_builds_with_docs_and_warmup_checks(
    tmp_path: Path, database_factory: Callable[[str], str]
) -> None:
    project = _scratch_project(tmp_path)
    assert stale_files(project) == []
    _add_reg_window(project, NEW_WINDOW)
    stale = {path.name for path in stale_files(project)}
    assert {"regression.yml", "feature_matrix.yml"} <= stale  # the drift check fails ...
    write_files(project)
    assert stale_files(project) == []  # ... until the YAML is regenerated

    dsn = database_factory("new_window")
    bars = generate_bars(pd.Timestamp(DAYS[0]).date(), pd.Timestamp(DAYS[1]).date(), list(FIXTURE_PAIRS))
    load_frame(dsn, bars, "three days")
    target = tmp_path / "target"
    done = run_dbt(["build", "--select", "+reg_rate"], dsn, project_dir=project, target_path=target, capture=True)
    assert done.returncode == 0, done.stdout[-6000:]

    built = table_columns(dsn, "features", "reg_rate")
    assert f"reg_a_w{NEW_WINDOW}" in built and f"reg_endpoint_w{NEW_WINDOW}" in built
    manifest = json.loads((target / "manifest.json").read_text())
    model = manifest["nodes"]["model.bqx_feature_store.reg_rate"]
    description = model["columns"][f"reg_r2_w{NEW_WINDOW}"]["description"]
    assert f"Warm-up {NEW_WINDOW - 1} bars" in description and "SST = 0" in description  # its docs
    results = json.loads((target / "run_results.json").read_text())["results"]
    (warmup_test,) = [r for r in results if r["unique_id"].startswith("test.bqx_feature_store.warmup_nulls_reg_rate")]
    assert warmup_test["status"] == "pass"
    compiled = (target / "compiled").rglob("warmup_nulls_reg_rate*.sql")
    sql = "".join(path.read_text() for path in compiled)
    for metric in ("a", "b", "c", "r2", "rmse", "endpoint"):  # its warm-up checks
        assert f"reg_rate.bar_position <= {NEW_WINDOW - 1}" in sql
        assert f"'reg_{metric}_w{NEW_WINDOW}: NULL after its warm-up of {NEW_WINDOW - 1} bars'" in sql
    assert f"not coalesce(reg_rmse_w{NEW_WINDOW} = 0, false)" in sql  # and r2's NULL rule
