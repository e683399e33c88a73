"""Lags in bars, within one pair: `x_lag60` at a pair's row t is x at that pair's row t-60.

Which features are laggable comes from the feature catalog (the models' `meta: {laggable: ...}`
in the dbt manifest: time and data-quality features are not). Lags are computed only for what
the next step needs: at the sampled rows for selection (`select.gather`), for the selected
columns when the datasets are written (`lag_column`); never every lagged column of a pair at
once. A pair's file holds only that pair, so a lag cannot reach another pair's rows.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

_LAGGED = re.compile(r"^(?P<base>.+)_lag(?P<lag>\d+)$")


@dataclass(frozen=True)
class Candidate:
    """A column the selection may pick: a feature (lag 0) or one of its lags."""

    name: str
    base: str
    lag: int


def lag_name(column: str, lag: int) -> str:
    return f"{column}_lag{lag}" if lag else column


def parse_name(name: str, known_bases: Iterable[str]) -> Candidate:
    """The base feature and lag of a candidate's name (a feature's own name may end in digits)."""
    bases = set(known_bases)
    if name in bases:
        return Candidate(name, name, 0)
    match = _LAGGED.match(name)
    if match and match["base"] in bases:
        return Candidate(name, match["base"], int(match["lag"]))
    raise KeyError(name)


def candidates(features: Sequence[str], laggable: Iterable[str], lags: Sequence[int]) -> list[Candidate]:
    """Every feature, then each laggable feature's lags, in the catalog's order."""
    can_lag = set(laggable)
    found = [Candidate(name, name, 0) for name in features]
    for name in features:
        if name in can_lag:
            found.extend(Candidate(lag_name(name, lag), name, lag) for lag in sorted(lags))
    return found


def lag_column(values: np.ndarray, lag: int) -> np.ndarray:
    """The whole column shifted by `lag` rows of the same pair; the first `lag` rows are NaN."""
    shifted = np.full(values.shape, np.nan, dtype=values.dtype if values.dtype.kind == "f" else np.float64)
    if lag < values.size:
        shifted[lag:] = values[: values.size - lag]
    return shifted


def longest(lags: Sequence[int]) -> int:
    return max(lags, default=0)
