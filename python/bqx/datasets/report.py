"""The report: `report/report.md` and its plots, from a dataset's manifest and evaluation.

Plots: R^2 heat-map (pairs x horizons, per model), importances (also written to
`selection/importances.png`), predicted vs actual on the test part, R^2 over time on the test
part (per day, pooled over pairs), and the split timeline (each pair's train / val / test spans
and the common boundaries).
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bqx.datasets.train import r2_against_zero

PART_COLOURS = {"train": "#4C72B0", "val": "#DD8452", "test": "#55A868"}
NO_SIGNAL_R2 = 0.001  # below this, pooled over every test row, we call the R^2 "about zero"


# the selection forest as the report names it (options.forest)
FOREST_NAMES = {"extra": "Extra-trees forest (scikit-learn's ExtraTreesRegressor)", "random": "Random forest (scikit-learn's RandomForestRegressor)"}

def _plt():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _when(us: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC)


def r2_table(metrics: pd.DataFrame, model: str) -> pd.DataFrame:
    """Test R^2 of `model`: rows pairs (+ all), columns targets."""
    frame = metrics[(metrics["model"] == model) & (metrics["part"] == "test")]
    table = frame.pivot(index="pair", columns="target", values="r2")
    order = [p for p in table.index if p != "all"] + (["all"] if "all" in table.index else [])
    return table.loc[order]


def plot_heatmap(metrics: pd.DataFrame, models: list[str], path: Path) -> None:
    plt = _plt()
    tables = [r2_table(metrics, m) for m in models]
    limit = max(1e-4, max(float(np.nanmax(np.abs(t.to_numpy()))) for t in tables))
    fig, axes = plt.subplots(1, len(models), figsize=(3.6 * len(models) + 1.5, 0.32 * len(tables[0]) + 1.8), squeeze=False, layout="constrained")
    for index, (ax, model, table) in enumerate(zip(axes[0], models, tables)):
        image = ax.imshow(table.to_numpy(), cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        ax.set_xticks(range(table.shape[1]), [c.replace("target_bqx_", "") for c in table.columns])
        if index == 0:
            ax.set_yticks(range(table.shape[0]), table.index)
        else:
            ax.set_yticks([])
        ax.set_xlabel("horizon")
        ax.set_title(f"{model}: test R² vs zero")
        for (i, j), value in np.ndenumerate(table.to_numpy()):
            ax.text(j, i, f"{value:.4f}", ha="center", va="center", fontsize=6)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="R² against the zero predictor")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_importances(importances: pd.DataFrame, path: Path, top: int = 30) -> None:
    plt = _plt()
    chosen = importances[importances["selected_rank"] > 0].sort_values("selected_rank").head(top)
    use_permutation = chosen["permutation_group"].notna().any()
    values = chosen["permutation_group"] if use_permutation else chosen["mdi"]
    fig, ax = plt.subplots(figsize=(8, 0.26 * len(chosen) + 1.4))
    ax.barh(range(len(chosen)), values.to_numpy(), color="#4C72B0")
    ax.set_yticks(range(len(chosen)), chosen["feature"])
    ax.invert_yaxis()
    ax.set_xlabel("permutation importance of the feature's group (drop in hold-out R²)" if use_permutation else "MDI importance")
    ax.set_title(f"Selected features, top {len(chosen)} of {int((importances['selected_rank'] > 0).sum())}")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_predicted_vs_actual(predictions: pd.DataFrame, targets: list[str], model: str, path: Path, seed: int) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(targets), figsize=(3.9 * len(targets), 3.9), squeeze=False, layout="constrained")
    rng = np.random.default_rng(seed)
    for ax, target in zip(axes[0], targets):
        actual = predictions[target].to_numpy()
        predicted = predictions[f"{target}__{model}"].to_numpy()
        show = rng.choice(actual.size, size=min(actual.size, 20_000), replace=False) if actual.size else []
        ax.scatter(predicted[show], actual[show], s=1, alpha=0.25, color="#4C72B0", rasterized=True)
        low, high = np.percentile(actual, [0.5, 99.5]) if actual.size else (0, 1)
        ax.set_ylim(low, high)
        span = max(abs(predicted).max(initial=0), 1e-12)
        ax.set_xlim(-span * 1.1, span * 1.1)
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.axvline(0, color="grey", linewidth=0.5)
        ax.ticklabel_format(style="sci", scilimits=(0, 0))
        ax.set_xlabel(f"predicted ({model})")
        ax.set_ylabel("actual")
        ax.set_title(target.replace("target_bqx_", "horizon "))
    fig.suptitle("Test part: predicted vs actual (20k rows sampled; y clipped to the 0.5-99.5% range)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def daily_r2(predictions: pd.DataFrame, targets: list[str], models: list[str]) -> pd.DataFrame:
    day = pd.to_datetime(predictions["known_at_us"], unit="us", utc=True).dt.floor("D")
    rows = []
    for (when, group) in predictions.groupby(day):
        for target in targets:
            y = group[target].to_numpy()
            for model in models:
                sse = float(((y - group[f"{target}__{model}"].to_numpy()) ** 2).sum())
                rows.append({"day": when, "target": target, "model": model, "rows": y.size, "r2": r2_against_zero(sse, float((y**2).sum()))})
    return pd.DataFrame(rows)


def plot_r2_over_time(daily: pd.DataFrame, targets: list[str], models: list[str], path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(len(models), 1, figsize=(9, 2.6 * len(models)), sharex=True, squeeze=False)
    for ax, model in zip(axes[:, 0], models):
        for target in targets:
            series = daily[(daily["model"] == model) & (daily["target"] == target)]
            ax.plot(series["day"], series["r2"], marker="o", markersize=3, label=target.replace("target_bqx_", ""))
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.set_ylabel("R² vs zero")
        ax.set_title(f"{model}: test R² per day (all pairs pooled)")
        ax.legend(fontsize=7, ncols=len(targets))
    axes[-1, 0].set_xlabel("day (UTC) of known_at")
    if not daily.empty:
        # half a day either side: with one test day matplotlib's automatic range spans years
        half_day = pd.Timedelta(hours=12)
        axes[-1, 0].set_xlim(daily["day"].min() - half_day, daily["day"].max() + half_day)
    fig.autofmt_xdate()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_timeline(manifest: dict[str, Any], path: Path) -> None:
    plt = _plt()
    pairs = list(manifest["parts"])
    fig, ax = plt.subplots(figsize=(9, 0.25 * len(pairs) + 1.5))
    for row, pair in enumerate(pairs):
        for part, span in manifest["parts"][pair]["spans"].items():
            if span:
                start, end = (pd.Timestamp(v) for v in span)
                ax.barh(row, end - start, left=start, color=PART_COLOURS[part], height=0.7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in PART_COLOURS.values()]
    labels = list(PART_COLOURS)
    for name, value in manifest["split"]["boundaries"].items():
        line = ax.axvline(pd.Timestamp(value), color="black", linewidth=0.8, linestyle="--")
        handles.append(line)
        labels.append(f"{name} {pd.Timestamp(value):%Y-%m-%d %H:%M}")
    for k, (train_end, _) in enumerate(manifest["split"].get("fold_cuts", []), start=1):
        line = ax.axvline(pd.Timestamp(train_end), color="purple", linewidth=0.7, linestyle=":")
        if k == 1:
            handles.append(line)
            labels.append("walk-forward fold ends")
    ax.set_yticks(range(len(pairs)), pairs, fontsize=7)
    ax.invert_yaxis()
    ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_xlabel("known_at (UTC)")
    ax.set_title("Split: the same boundaries for every pair (purged rows are the gaps)")
    fig.autofmt_xdate()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _markdown_table(table: pd.DataFrame, digits: int = 4) -> str:
    columns = [str(c).replace("target_bqx_", "") for c in table.columns]
    lines = ["| pair | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for index, row in table.iterrows():
        cells = ["" if (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}" for v in row.to_numpy()]
        label = f"**{index}**" if index == "all" else str(index)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(metrics: pd.DataFrame) -> str:
    """What R^2 the data supports, in one paragraph."""
    pooled = metrics[(metrics["pair"] == "all") & (metrics["model"] != "zero")]
    best = pooled.loc[pooled["r2"].idxmax()] if not pooled.empty else None
    if best is None:
        return "No test rows: nothing to say about R²."
    text = (
        f"Best pooled test R² against the zero predictor: {best['r2']:.5f} ({best['model']}, {best['target']}, "
        f"{int(best['rows']):,} test rows)."
    )
    if best["r2"] < NO_SIGNAL_R2:
        return text + (
            " That is about 0: on these bars the baselines find no predictable part of the future BQX move that"
            " survives out of sample. On generated bars that is the honest answer (their returns are built as noise"
            " around slow drifts); it says nothing about real data, where the same pipeline measures it the same way."
        )
    return text + (
        " Per pair and per horizon the table shows where it holds; a positive pooled value that is small (below 1%) is"
        " typical of minute-bar returns and must be judged with the R² over time plot (is it steady, or one day?)."
    )


def _events_lines(events: dict | None) -> list[str]:
    """What an events dataset is made of (nothing for an every-minute dataset)."""
    if not events:
        return []
    dropped = ", ".join(f"{n:,} {reason}" for reason, n in {**events["dropped"], **events["dropped_by_split"]}.items() if n) or "none"
    return [
        "",
        f"Rows at the {events['events']:,} events of `{events['file']}` (sha256 {events['sha256'][:12]}…), not every minute: each event has the "
        f"features and lags of the last bar closed at its time (max age {events['max_age']}) and that bar's targets; split by the event's time. "
        f"Written: train {events['rows']['train']:,}, val {events['rows']['val']:,}, test {events['rows']['test']:,}; dropped: {dropped}.",
    ]


def write_report(
    folder: Path,
    selection_folder: Path,
    manifest: dict[str, Any],
    metrics: pd.DataFrame,
    importances: pd.DataFrame,
    predictions: pd.DataFrame,
    validation: dict[str, Any],
) -> Path:
    """Write report.md and its PNGs into `folder`; return the report's path."""
    folder.mkdir(parents=True, exist_ok=True)
    selection_folder.mkdir(parents=True, exist_ok=True)
    targets = list(manifest["targets"])
    models = ["ridge", "boosting"]
    plot_heatmap(metrics, models, folder / "r2_heatmap.png")
    plot_importances(importances, folder / "importances.png")
    plot_importances(importances, selection_folder / "importances.png")
    importances.to_csv(selection_folder / "importances.csv", index=False)
    plot_predicted_vs_actual(predictions, targets, "boosting", folder / "predicted_vs_actual.png", manifest["options"]["seed"])
    daily = daily_r2(predictions, targets, models)
    plot_r2_over_time(daily, targets, models, folder / "r2_over_time.png")
    plot_timeline(manifest, folder / "split_timeline.png")

    split = manifest["split"]
    selection = manifest["selection"]
    lines = [
        f"# Dataset {manifest['id']}",
        "",
        f"Pairs: {len(manifest['source']['pairs'])} ({', '.join(manifest['source']['pairs'])}); rows from each pair's "
        f"baseline_ts or --start to {manifest['source']['last_bar']}; {len(manifest['features'])} selected features "
        f"of {selection['sampled']['candidates']} candidates; targets {', '.join(targets)}.",
        f"Files: `datasets/{manifest['id']}/` (manifest.json says how to rebuild them).",
        *_events_lines(manifest.get("events")),
        "",
        "## What R² the data supports",
        "",
        verdict(metrics),
        "",
        "## Test R² against the zero predictor",
        "",
        "Boosting (HistGradientBoosting, iterations chosen on val):",
        "",
        _markdown_table(r2_table(metrics, "boosting")),
        "",
        "Ridge (median imputer + standard scaler fit on train, penalty chosen on val):",
        "",
        _markdown_table(r2_table(metrics, "ridge")),
        "",
        "![R² heat-map](r2_heatmap.png)",
        "",
        "Settings chosen on val: "
        + "; ".join(f"{t.replace('target_bqx_', '')}: alpha {v['ridge_alpha']:g}, {_iterations(v)}" for t, v in manifest["training"]["tuning"].items())
        + f". Fit on {manifest['training']['train_rows_sampled']:,} of {manifest['training']['train_rows']:,} training rows (seeded sample)"
        + _stopping_note(manifest["training"])
        + ".",
        "",
        "![R² over time](r2_over_time.png)",
        "",
        "![Predicted vs actual](predicted_vs_actual.png)",
        "",
        "## Split",
        "",
        f"Boundaries (pooled known_at quantiles {split['fractions']}, the same for every pair): "
        + ", ".join(f"{k} {v}" for k, v in split["boundaries"].items())
        + f". Purge: a row belongs to a part only if its {split['longest_horizon']}-bar target closes inside it; embargo {split['embargo_bars']} bars."
        + (f" Walk-forward: {len(split['fold_cuts'])} folds." if split.get("fold_cuts") else ""),
        "",
        f"Rows: train {manifest['totals']['train']:,}, val {manifest['totals']['val']:,}, test {manifest['totals']['test']:,}; "
        f"purged {manifest['totals']['purged']:,}, embargoed {manifest['totals']['embargoed']:,}, "
        f"before the warm-ups and lags {manifest['totals']['unusable']:,}, target incomplete at the end {manifest['totals']['incomplete_target']:,}.",
        "",
        "![Split timeline](split_timeline.png)",
        "",
        "## Selection",
        "",
        f"{FOREST_NAMES.get(manifest['options'].get('forest'), 'Random forest')} ({selection['sampled']['trees']} trees, multi-output on the standardised targets) on "
        f"{selection['sampled']['fit_rows']:,} training rows; ranked by {manifest['options']['importance']}"
        + (f" on a purged hold-out of {selection['sampled']['holdout_rows']:,} rows at the end of the training period" if manifest["options"]["importance"] == "permutation" else "")
        + f". Stability: the MDI top {int(selection['stability']['top_n'])} of forests on the early and late halves of the"
        f" fit rows overlap {selection['stability']['halves_overlap']:.0%}.",
        "",
        "![Importances](importances.png)",
        "",
        "## Validation",
        "",
        *[f"- {line}" for line in validation.get("summary", [])],
        "",
    ]
    path = folder / "report.md"
    path.write_text("\n".join(lines))
    return path


def _iterations(tuning: dict[str, Any]) -> str:
    """The boosting iterations chosen on val (and how many were fitted, when it stopped early)."""
    chosen = f"{int(tuning['boosting_iterations'])} iterations"
    fitted = tuning.get("boosting_iterations_fitted")
    return f"{chosen} of {int(fitted)} fitted" if fitted is not None else chosen


def _stopping_note(training: dict[str, Any]) -> str:
    """How the boosting stopped, as the manifest records it (its settings, not today's code's)."""
    rows = training.get("val_rows_sampled_for_early_stopping", 0)
    if not rows:
        return ""
    patience = training["models"]["boosting"]["n_iter_no_change"]
    return f"; the boosting stopped after {patience} iterations without improvement on {rows:,} val rows (seeded sample)"
