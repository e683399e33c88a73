"""bqx.catalog: the in-process evaluation of the registry equals dbt's own, follows the vars,
and names exactly the columns of the built feature_matrix."""

from __future__ import annotations

import json
import re

from bqx.catalog import FeatureColumn, feature_catalog
from bqx.dbt import run_dbt
from bqx.project import dbt_vars
from conftest import table_columns

# a user's build with other windows: the catalog must follow (and dbt's evaluation too)
OVERRIDES = {"reg_windows": [60, 120], "rolling_windows": [10, 20], "bqx_series_window": 30}


def _dbt_catalog(dsn: str, tmp_path, vars: dict) -> dict:
    done = run_dbt(
        ["run-operation", "print_feature_catalog", "--vars", json.dumps(vars)],
        dsn,
        target_path=tmp_path / "target",
        capture=True,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("feature_catalog: ")]
    return json.loads(line.removeprefix("feature_catalog: "))


def _normalised(predicate: str | None) -> str | None:
    """dbt renders the relations its predicates read with the database ("db"."staging"."m1_index");
    outside dbt they are schema-qualified (staging.m1_index): the same table."""
    if predicate is None:
        return None
    unquoted = re.sub(r'"[^"]+"\."(\w+)"\."(\w+)"', r"\1.\2", str(predicate))
    return " ".join(unquoted.split())


def test_catalog_equals_dbts_own_evaluation(wave1_dsn: str, tmp_path) -> None:
    """`dbt run-operation print_feature_catalog --vars ...` and feature_catalog(vars=...): the same
    columns, warm-ups, NULL rules, laggability and descriptions, with the vars overridden."""
    expected = _dbt_catalog(wave1_dsn, tmp_path, OVERRIDES)
    catalog = feature_catalog(vars=OVERRIDES)
    got = [
        {
            "model": f.model, "column": f.column, "matrix_column": f.matrix_column, "family": f.family,
            "domain": f.domain, "warmup_bars": f.warmup_bars, "null_allowed_when": _normalised(f.null_allowed_when),
            "laggable": f.laggable, "description": f.description,
        }
        for f in catalog.features
    ]  # fmt: skip
    for entry in expected["features"]:
        entry["null_allowed_when"] = _normalised(entry["null_allowed_when"])
    assert len(got) == len(expected["features"])
    for mine, dbts in zip(got, expected["features"]):
        assert mine == dbts
    assert [(t.column, t.horizon_bars) for t in catalog.targets] == [
        (t["column"], t["horizon_bars"]) for t in expected["targets"]
    ]


def test_catalog_names_the_built_feature_matrix_columns_in_order(wave1_dsn: str) -> None:
    assert table_columns(wave1_dsn, "marts", "feature_matrix") == ["pair", "ts_utc", *[f.matrix_column for f in feature_catalog().features]]


def test_catalog_follows_the_vars() -> None:
    default = feature_catalog()
    changed = feature_catalog(vars=OVERRIDES)
    series = OVERRIDES["bqx_series_window"]
    by_name = changed.by_matrix_column()
    assert by_name["rate_reg_a_w120"].warmup_bars == 119
    assert by_name["bqx_reg_r2_w120"].warmup_bars == series + 119
    assert by_name["bqx_reg_r2_w120"].null_allowed_when == "reg_rmse_w120 = 0"
    assert "rate_reg_a_w630" not in by_name and "rate_reg_a_w630" in default.by_matrix_column()
    assert by_name["bqx_skew_w20"].warmup_bars == series + 19
    # the gap flag of the regression family spans its longest read: max(reg_windows) + series
    assert by_name["gap_in_reg_window"].warmup_bars == 120 + series - 1
    assert feature_catalog(vars=OVERRIDES) is changed  # evaluated once per vars
    assert changed.dbt_vars == dbt_vars() | OVERRIDES and default.dbt_vars == dbt_vars()


def test_catalog_facts() -> None:
    catalog = feature_catalog()
    features = catalog.features
    names = [f.matrix_column for f in features]
    assert len(names) == len(set(names))
    vars = dbt_vars()
    for feature in features:
        assert feature.matrix_column == {"rate": "rate_", "bqx": "bqx_", None: ""}[feature.domain] + feature.column
        assert feature.description and "{" not in feature.description, feature
        assert f"Warm-up {feature.warmup_bars} " in feature.description or feature.warmup_bars == 0, feature
    lagged = {f.family for f in features if f.laggable}
    assert {f.family for f in features} - lagged == {"time", "data_quality"}
    assert catalog.longest_warmup_bars == max(f.warmup_bars for f in features)
    assert [t.horizon_bars for t in catalog.targets] == vars["target_horizons"]
    assert catalog.targets[0].column == f"target_bqx_h{vars['target_horizons'][0]}"


def test_feature_column_is_the_interface() -> None:
    """The fields the dataset builder reads (docs: /work/notes/catalog_interface.md)."""
    assert list(FeatureColumn.__dataclass_fields__) == [
        "model", "column", "matrix_column", "family", "domain", "warmup_bars", "null_allowed_when",
        "laggable", "description",
    ]  # fmt: skip


def test_each_gap_flag_spans_the_longest_read_of_its_families() -> None:
    """gap_in_<name>_window covers exactly the bars the longest feature of the families sharing
    that window list reads on either domain: 1 + the largest warm-up among their columns (a value
    at bar warm-up + 1 reads that many bars). volume_tod_ratio's days-long window is left out by
    design (it always spans a weekend)."""
    features = feature_catalog().features
    flags = {f.column: f.warmup_bars for f in features if f.column.startswith("gap_in_")}
    assert flags, "no gap flags"
    families = {f.family for f in features}
    registry = {entry["name"]: entry for entry in _registry()}
    assert set(registry) == families
    for name, span_warmup in flags.items():
        gap_window = name.removeprefix("gap_in_").removesuffix("_window")
        covered = [family for family, entry in registry.items() if entry["gap_window"] == gap_window]
        longest = max(
            f.warmup_bars
            for f in features
            if f.family in covered and not f.column.startswith("volume_tod_ratio_")
        )
        assert span_warmup == longest, (name, covered)
    for family, entry in registry.items():  # a family with a finite window has its flag
        assert (entry["gap_window"] is None) == (family in ("technical", "time", "data_quality")), family


def _registry() -> list[dict]:
    from bqx.macros import call_macro

    return [
        {"name": entry["name"], "gap_window": entry["gap_window"]} for entry in call_macro("feature_families")
    ]
