"""The feature catalog: every column of marts.feature_matrix with its model, family, domain,
warm-up, NULL rule, laggability and description, and the targets with their horizons.

Evaluated from the registry macro `feature_families()` (macros/catalog/) and the family's column
specs with the project's vars plus the caller's overrides (`vars`, as `dbt --vars` would give
them), never typed here and never read from a database: a user who builds with
`--vars '{"reg_windows": [...]}'` asks `feature_catalog(vars={"reg_windows": [...]})` for the
matching catalog. The macros are rendered in-process (bqx.macros), in about half a second once
their compiled form is cached.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from bqx.macros import call_macro
from bqx.project import DBT_PROJECT_FILE, PROJECT_DIR, dbt_vars


@dataclass(frozen=True)
class FeatureColumn:
    model: str  # the feature model, e.g. "reg_rate"
    column: str  # its column there, e.g. "reg_a_w60"
    matrix_column: str  # its name in marts.feature_matrix, e.g. "rate_reg_a_w60"
    family: str  # registry name, e.g. "regression"
    domain: str | None  # "rate" | "bqx" | None (single-domain families)
    warmup_bars: int  # NULL on exactly the first warmup_bars bars of every pair
    null_allowed_when: str | None  # SQL predicate over the model's columns (qualified by the model's
    #   name where a correlated subquery needs it, as in its warm-up test) where a NULL after the
    #   warm-up is allowed; None = never
    laggable: bool  # the dataset builder lags it (time and data-quality: False)
    description: str


@dataclass(frozen=True)
class TargetColumn:
    column: str  # e.g. "target_bqx_h15" (marts.targets)
    horizon_bars: int  # H: uses bars t+1 .. t+H
    description: str = ""


@dataclass(frozen=True)
class FeatureCatalog:
    features: tuple[FeatureColumn, ...]  # in feature_matrix column order
    targets: tuple[TargetColumn, ...]
    dbt_vars: dict = field(hash=False, compare=False)  # the vars it was generated with: dbt_project.yml's + overrides

    def by_matrix_column(self) -> dict[str, FeatureColumn]:
        return {feature.matrix_column: feature for feature in self.features}

    def by_model(self) -> dict[str, tuple[FeatureColumn, ...]]:
        """The feature models in feature_matrix's order, each with its columns."""
        models: dict[str, list[FeatureColumn]] = {}
        for feature in self.features:
            models.setdefault(feature.model, []).append(feature)
        return {model: tuple(columns) for model, columns in models.items()}

    @property
    def longest_warmup_bars(self) -> int:
        return max(feature.warmup_bars for feature in self.features)

    @property
    def longest_horizon_bars(self) -> int:
        return max(target.horizon_bars for target in self.targets)


def feature_catalog(project_dir: Path = PROJECT_DIR, vars: dict | None = None) -> FeatureCatalog:
    """Evaluated from the registry macro with the project's vars (+ overrides), not typed."""
    overrides = json.dumps(vars or {}, sort_keys=True, default=str)
    return _catalog(project_dir.resolve(), overrides, _sources_stamp(project_dir))


def _sources_stamp(project_dir: Path) -> tuple[tuple[str, int], ...]:
    """What the catalog depends on: the macros and dbt_project.yml (a change re-evaluates)."""
    files = [project_dir / DBT_PROJECT_FILE, *sorted((project_dir / "macros").rglob("*.sql"))]
    return tuple((str(path), path.stat().st_mtime_ns) for path in files)


@cache
def _catalog(project_dir: Path, overrides: str, stamp: tuple[tuple[str, int], ...]) -> FeatureCatalog:
    vars = json.loads(overrides)
    evaluated = call_macro("feature_catalog", project_dir=project_dir, vars=vars)
    return FeatureCatalog(
        features=tuple(_feature(entry) for entry in evaluated["features"]),
        targets=tuple(
            TargetColumn(str(t["column"]), int(t["horizon_bars"]), str(t["description"])) for t in evaluated["targets"]
        ),
        dbt_vars=dbt_vars(project_dir) | vars,
    )


def _feature(entry: Mapping[str, Any]) -> FeatureColumn:
    null_rule = entry["null_allowed_when"]
    return FeatureColumn(
        model=str(entry["model"]),
        column=str(entry["column"]),
        matrix_column=str(entry["matrix_column"]),
        family=str(entry["family"]),
        domain=None if entry["domain"] is None else str(entry["domain"]),
        warmup_bars=int(entry["warmup_bars"]),
        null_allowed_when=None if null_rule is None else " ".join(str(null_rule).split()),
        laggable=bool(entry["laggable"]),
        description=str(entry["description"]),
    )
