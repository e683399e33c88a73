"""The dataset builder's options: one dataclass with defaults, from which `--help` is generated.

`python python/build_datasets.py` and `bqx datasets` both build their parser with
`add_arguments()` and turn the parsed namespace back into `BuilderOptions` with
`options_from_args()`, so an option is declared exactly once (here).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bqx.project import PROJECT_DIR


class DatasetError(RuntimeError):
    """A problem the user can act on; the message is one line saying what to do."""


def _opt(default: Any, help: str, *, flag: str | None = None, metavar: str | None = None, choices: tuple | None = None) -> Any:
    meta = {"help": help, "flag": flag, "metavar": metavar, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class BuilderOptions:
    """Every option of the dataset builder (defaults are the documented ones)."""

    pairs: tuple[str, ...] | None = _opt(None, "pairs to build (default: every pair of the dbt var `pairs` that has bars)", metavar="PAIR")
    start: dt.date | None = _opt(None, "first day (UTC, YYYY-MM-DD); each pair starts no earlier than its baseline_ts (default: its baseline_ts)")
    end: dt.date | None = _opt(None, "day after the last (UTC, YYYY-MM-DD; default: after each pair's last bar)")
    out: Path = _opt(PROJECT_DIR / "data", "output folder: features/, datasets/, selection/, report/")
    lags: tuple[int, ...] = _opt((60, 120, 180), "lags in bars of every laggable feature", metavar="BARS")
    train_fraction: float = _opt(0.70, "share of the pooled usable rows (by known_at) before the first boundary")
    val_fraction: float = _opt(0.15, "share between the first and the second boundary; the test part holds the rest")
    embargo_bars: int = _opt(0, "bars of each pair dropped after each boundary, on top of the purge")
    walk_forward: int = _opt(0, "K expanding, purged folds inside the train+val span (folds/k/{train,val}); 0 = none", metavar="K")
    top_n: int = _opt(100, "number of features selected (base and lagged columns count alike)")
    importance: str = _opt("permutation", "what ranks features: permutation (grouped with lags, on a purged hold-out) or mdi", choices=("permutation", "mdi"))
    selection_sample: int = _opt(50_000, "training rows (seeded, across all pairs) the selection forest is fit on")
    holdout_rows: int = _opt(10_000, "at most this many rows of the purged hold-out at the end of the training period (permutation importance)")
    forest: str = _opt("extra", "selection forest: extra (ExtraTrees: random thresholds, ~10x faster) or random (RandomForest)", choices=("extra", "random"))
    forest_trees: int = _opt(100, "trees of the selection forest")
    train_sample: int = _opt(100_000, "training rows (seeded) the baseline models are fit on; every val and test row is scored")
    stopping_sample: int = _opt(
        100_000, "val rows (seeded) whose loss stops the boosting after 10 iterations without improvement; every val row then chooses its iterations"
    )
    seed: int = _opt(20240701, "seed of every sample, forest and model")
    lookahead_cuts: int = _opt(4, "rows whose features are rebuilt from bars cut at their minute (no-look-ahead proof); 0 skips it (recorded)")
    target_checks: int = _opt(200, "rows per pair whose targets are recomputed from m1_index")
    events: Path | None = _opt(
        None,
        "build the datasets at the events of this file instead of every minute: Parquet, or CSV named *.csv, with the columns pair and "
        "event_time (with its time zone; any other column kept); each event gets the features of the last bar closed at its time, "
        "their lags and that bar's targets (default: none, every minute)",
        metavar="FILE",
    )
    max_age: str = _opt("5min", "with --events: an event whose last closed bar is older than this gets no row (dropped, counted as stale)", metavar="DURATION")
    vars: str | None = _opt(None, "dbt vars the database was built with (JSON, as for `bqx build --vars`)", flag="--vars", metavar="JSON")
    reuse: bool = _opt(True, "reuse extracted pairs whose fingerprint is unchanged and an existing dataset id (--no-reuse re-extracts)")
    progress: bool = _opt(True, "progress bars")

    def dbt_var_overrides(self) -> dict[str, Any]:
        if not self.vars:
            return {}
        try:
            value = json.loads(self.vars)
        except json.JSONDecodeError as err:
            raise DatasetError(f"--vars is not JSON ({err.msg} at character {err.pos}): write it as for `bqx build --vars`") from None
        if not isinstance(value, dict):
            raise DatasetError("--vars must be a JSON object, e.g. '{\"baseline_date\": \"2017-01-01\"}'")
        return value

    def identity(self) -> dict[str, Any]:
        """The options that shape a dataset (not where it is written, nor progress bars)."""
        values = dataclasses.asdict(self)
        for name in ("out", "progress", "reuse", "events"):  # the events by their content: dataset_id's `events`
            values.pop(name)
        if self.events is None:
            values.pop("max_age")  # it shapes nothing without events
        return json.loads(json.dumps(values, default=str))

    def event_max_age(self) -> dt.timedelta:
        from bqx.features import RetrievalError, parse_duration

        try:
            return parse_duration(self.max_age)
        except RetrievalError as err:
            raise DatasetError(f"--max-age: {err}") from None


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One argument per field of BuilderOptions, its help and default from the field."""
    for spec in dataclasses.fields(BuilderOptions):
        meta = spec.metadata
        flag = meta.get("flag") or "--" + spec.name.replace("_", "-")
        default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()  # type: ignore[misc]
        help_text = meta["help"] if "default:" in meta["help"] else f"{meta['help']} (default: {_show(default)})"
        kwargs: dict[str, Any] = {"dest": spec.name, "help": help_text, "default": default}
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if spec.name in ("pairs", "lags"):
            kwargs["nargs"] = "+"
            kwargs["type"] = int if spec.name == "lags" else str.upper
        elif spec.name in ("start", "end"):
            kwargs["type"] = _date
        elif spec.name in ("out", "events"):
            kwargs["type"] = Path
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            kwargs["type"] = type(default)
        parser.add_argument(flag, **kwargs)


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value)
    if isinstance(value, Path):
        try:
            return str(value.relative_to(PROJECT_DIR)) + "/"
        except ValueError:
            return str(value)
    return str(value)


def options_from_args(args: argparse.Namespace) -> BuilderOptions:
    values = {spec.name: getattr(args, spec.name) for spec in dataclasses.fields(BuilderOptions)}
    for name in ("pairs", "lags"):
        if values[name] is not None:
            values[name] = tuple(values[name])
    options = BuilderOptions(**values)
    check_options(options)
    return options


def check_options(options: BuilderOptions) -> None:
    """Reject options that cannot give a valid split, with a message naming the option."""
    if not (0 < options.train_fraction < 1 and 0 < options.val_fraction < 1 and options.train_fraction + options.val_fraction < 1):
        raise DatasetError("--train-fraction and --val-fraction must be in (0, 1) and leave a test part (their sum < 1)")
    if any(lag <= 0 for lag in options.lags) or len(set(options.lags)) != len(options.lags):
        raise DatasetError("--lags must be distinct positive numbers of bars")
    if options.start and options.end and options.start >= options.end:
        raise DatasetError(f"--start {options.start} is not before --end {options.end}")
    for name in ("embargo_bars", "walk_forward", "lookahead_cuts", "target_checks"):
        if getattr(options, name) < 0:
            raise DatasetError(f"--{name.replace('_', '-')} cannot be negative")
    for name in ("top_n", "selection_sample", "holdout_rows", "forest_trees", "train_sample", "stopping_sample"):
        if getattr(options, name) <= 0:
            raise DatasetError(f"--{name.replace('_', '-')} must be positive")
    options.dbt_var_overrides()
    options.event_max_age()
