"""Baseline models per horizon, fit on training rows, tuned on val, scored once on test.

- zero: predicts 0 (a target is a relative move; its R^2 against zero is 0 by definition);
- ridge: median imputer -> standard scaler -> ridge regression, all fit on the training rows;
  the penalty is chosen on val (pooled R^2) from RIDGE_ALPHAS;
- boosting: scikit-learn's HistGradientBoostingRegressor (NaN handled natively, no imputer),
  its number of iterations chosen on val (early stopping on val, never on a slice of train).

R^2 is against the zero predictor: 1 - sum((y - y_hat)^2) / sum(y^2), per pair x horizon on
the test part (and pooled), the usual out-of-sample measure for returns. Val and test are
streamed pair by pair; only the training sample is in memory at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

RIDGE_ALPHAS = (1e-1, 1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7)
BOOSTING = {"learning_rate": 0.1, "max_iter": 100, "max_leaf_nodes": 15, "min_samples_leaf": 500, "l2_regularization": 1.0}
# with a val sample given: fitting stops once 10 iterations in a row did not lower its loss
# (the iterations past that point are never chosen on generated bars, and each costs a tree
# fit on train and a prediction of every val row); the iteration kept is then still chosen on
# every val row, among those fitted. tol is absolute in scikit-learn: its default 1e-7 exceeds
# the whole loss of a 15-minute BQX target (~2e-8), which stopped every fit at 10 iterations
# whatever val said; 0 lets any improvement count, the same at every target scale (tested)
EARLY_STOPPING = {"early_stopping": True, "scoring": "loss", "n_iter_no_change": 10, "tol": 0.0}
MODELS = ("zero", "ridge", "boosting")


@dataclass(frozen=True)
class Chunk:
    """Rows of one pair of one part: features (float32, NaN = NULL) and every target."""

    pair: str
    known_at_us: np.ndarray
    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class TrainingSet:
    x: np.ndarray
    y: np.ndarray
    known_at_us: np.ndarray
    target_end_us: np.ndarray
    pair: np.ndarray


@dataclass(frozen=True)
class Evaluation:
    metrics: pd.DataFrame  # part, model, target, pair (or "all"), rows, r2
    tuning: dict[str, dict[str, float]]  # per target: ridge alpha, boosting iterations
    predictions: pd.DataFrame  # test rows: pair, known_at, per target y and each model's y_hat
    stopping_rows: int = 0  # val rows the boosting's early stopping watched (0: none, all iterations fit)


def _preprocessing():  # noqa: ANN202
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler())


def _ridges(transformed: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every target's ridge at every penalty on the (already fitted) imputer + scaler's output
    of the training rows: coefficients (targets x penalties x features) and intercepts.

    One scikit-learn Ridge fit with one column per (target, penalty) and the penalties as its
    per-column alpha: its Cholesky solver forms X'X and X'y once and solves X'X + alpha*I per
    column, where a Ridge per target and penalty formed the same X'X 36 times (9.5 of the
    31 s of baseline models on 28 pairs x 3 months; 0.1 s against 2.6 s on their own). Its
    coefficients are as close to an independent least-squares solution as those fits' (tested;
    on ill-conditioned features both are off by the same ~1e-9 at the smallest penalty)."""
    from sklearn.linear_model import Ridge

    targets = y.shape[1]
    columns = np.repeat(y, len(RIDGE_ALPHAS), axis=1)  # target-major: each target's penalties side by side
    ridge = Ridge(alpha=np.tile(RIDGE_ALPHAS, targets), solver="cholesky").fit(transformed, columns)
    coefficients = ridge.coef_.reshape(targets, len(RIDGE_ALPHAS), -1)
    return coefficients, np.asarray(ridge.intercept_).reshape(targets, len(RIDGE_ALPHAS))


def _boosting(seed: int, early_stopping: bool):  # noqa: ANN202
    from sklearn.ensemble import HistGradientBoostingRegressor

    stopping = EARLY_STOPPING if early_stopping else {"early_stopping": False}
    return HistGradientBoostingRegressor(random_state=seed, **BOOSTING, **stopping)


def r2_against_zero(sse: float, sum_y2: float) -> float:
    return 1.0 - sse / sum_y2 if sum_y2 > 0 else float("nan")


def fit_and_score(
    train: TrainingSet,
    val: Callable[[], Iterator[Chunk]],
    test: Callable[[], Iterator[Chunk]],
    targets: Sequence[str],
    seed: int,
    progress: bool = True,
    stopping: TrainingSet | None = None,
) -> Evaluation:
    """Fit each target's models on `train`, choose their settings on val, score test once.

    `stopping`, a sample of val rows, stops each boosting fit early (EARLY_STOPPING); the
    iterations kept are then chosen on every val row. Val is read once for every target (not
    once per target), and each chunk goes through the imputer and scaler once for every ridge
    of every target (they are fit once, on train)."""
    from tqdm import tqdm

    tuning: dict[str, dict[str, float]] = {}
    fitted: dict[str, dict[str, object]] = {}
    preprocessing = _preprocessing().fit(train.x)  # the imputer and the scaler see training rows only
    transformed = preprocessing.transform(train.x)
    ridge_coefficients, ridge_intercepts = _ridges(transformed, train.y)
    boostings = []
    for t in tqdm(range(len(targets)), desc="baseline models", disable=not progress, leave=False):
        if stopping is not None and stopping.y.shape[0]:
            boostings.append(_boosting(seed, True).fit(train.x, train.y[:, t], X_val=stopping.x, y_val=stopping.y[:, t]))
        else:
            boostings.append(_boosting(seed, False).fit(train.x, train.y[:, t]))
    del transformed
    # every ridge of every target predicts in one matrix product per chunk: the chunk is read
    # once instead of once per ridge (9 penalties x 4 targets), the same sums X·coef + intercept
    coefficients = ridge_coefficients.reshape(-1, ridge_coefficients.shape[-1]).T
    intercepts = ridge_intercepts.reshape(-1)
    ridge_sse = np.zeros((len(targets), len(RIDGE_ALPHAS)))
    stage_sse = [np.zeros(boosting.n_iter_) for boosting in boostings]
    for chunk in val():
        ridge_predictions = (preprocessing.transform(chunk.x) @ coefficients + intercepts).reshape(-1, len(targets), len(RIDGE_ALPHAS))
        ridge_sse += ((chunk.y[:, :, None] - ridge_predictions) ** 2).sum(axis=0)
        for t in range(len(targets)):
            truth = chunk.y[:, t]
            for stage, predicted in enumerate(boostings[t].staged_predict(chunk.x)):
                stage_sse[t][stage] += float(((truth - predicted) ** 2).sum())
    for t, target in enumerate(targets):
        best_ridge = int(np.argmin(ridge_sse[t]))
        best_stage = int(np.argmin(stage_sse[t]))
        tuning[target] = {"ridge_alpha": RIDGE_ALPHAS[best_ridge], "boosting_iterations": best_stage + 1, "boosting_iterations_fitted": int(boostings[t].n_iter_)}
        fitted[target] = {"ridge": (ridge_coefficients[t, best_ridge], ridge_intercepts[t, best_ridge]), "boosting": boostings[t], "stage": best_stage}

    sums: dict[tuple[str, str, str], list[float]] = {}
    frames = []
    for chunk in test():
        if not np.isfinite(chunk.y).all():  # an R^2 over a NaN target would be NaN, or silently skip rows
            raise ValueError(f"{chunk.pair}: a test row without a finite target: the split is broken")
        frame = {"pair": np.full(chunk.known_at_us.size, chunk.pair), "known_at_us": chunk.known_at_us}
        chunk_transformed = preprocessing.transform(chunk.x)  # once for every target's ridge
        for t, target in enumerate(targets):
            truth = chunk.y[:, t]
            predictions = {
                "zero": np.zeros_like(truth),
                "ridge": chunk_transformed @ fitted[target]["ridge"][0] + fitted[target]["ridge"][1],  # type: ignore[index]
                "boosting": _stage(fitted[target]["boosting"], chunk.x, int(fitted[target]["stage"])),  # type: ignore[arg-type]
            }
            frame[f"{target}"] = truth
            for model, predicted in predictions.items():
                if model != "zero":
                    frame[f"{target}__{model}"] = predicted.astype(np.float32)
                for key in ((model, target, chunk.pair), (model, target, "all")):
                    acc = sums.setdefault(key, [0.0, 0.0, 0])
                    acc[0] += float(((truth - predicted) ** 2).sum())
                    acc[1] += float((truth**2).sum())
                    acc[2] += truth.size
        frames.append(pd.DataFrame(frame))
    metrics = pd.DataFrame(
        [
            {"part": "test", "model": model, "target": target, "pair": pair, "rows": int(n), "r2": r2_against_zero(sse, sum_y2)}
            for (model, target, pair), (sse, sum_y2, n) in sums.items()
        ]
    )
    predictions = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    stopping_rows = int(stopping.y.shape[0]) if stopping is not None else 0
    return Evaluation(metrics=metrics, tuning=tuning, predictions=predictions, stopping_rows=stopping_rows)


def _stage(model, x: np.ndarray, stage: int) -> np.ndarray:  # noqa: ANN001
    """The boosting model's prediction after `stage` + 1 iterations (the one chosen on val)."""
    for index, predicted in enumerate(model.staged_predict(x)):
        if index == stage:
            return predicted
    raise AssertionError("stage beyond the fitted iterations")
