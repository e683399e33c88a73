"""Market features (volume_features, spread_features, data_quality_features) against NumPy.

Every reference recomputes each window from its own values (NumPy on sliding windows, integer
sums exact in int64), never a running pandas rolling sum. Values must agree within 1e-9 of the
column's largest |value| per pair, NULLs exactly.
"""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from bqx.catalog import feature_catalog
from conftest import FIXTURE_PAIRS, ZERO_VOLUME_PAIR, query_frame, table_columns
from reference import VARS, assert_matches


ROLLING_WINDOWS: list[int] = VARS["rolling_windows"]
# defaults of the macros until dbt_project.yml declares these vars
TOD_DAYS: int = VARS.get("volume_tod_days", 5)
GAP_LIMIT_MINUTES: float = VARS.get("gap_limit_minutes", 5)
SPIKE_WINDOW: int = VARS.get("spike_window", 60)
SPIKE_SIGMA_MULTIPLE: float = VARS.get("spike_sigma_multiple", 10)


def _index_bars(dsn: str) -> pd.DataFrame:
    return query_frame(
        dsn,
        "select pair, ts_utc, high_idx, low_idx, close_idx, volume, spread_bps "
        "from staging.m1_index order by pair, ts_utc",
    )


def _model(dsn: str, table: str) -> pd.DataFrame:
    return query_frame(dsn, f"select * from features.{table} order by pair, ts_utc")


def _windows(values: np.ndarray, w: int) -> np.ndarray:
    """Row t - w + 1 of the result is the window values[t - w + 1 ... t]."""
    return np.lib.stride_tricks.sliding_window_view(values, w)


def _aligned(n: int, w: int, per_window: np.ndarray) -> np.ndarray:
    """A per-window result placed at the window's last bar; NaN during the first w - 1 bars."""
    out = np.full(n, np.nan)
    out[w - 1 :] = per_window
    return out



# --- references -----------------------------------------------------------------------------


def volume_reference(bars: pd.DataFrame) -> dict[str, np.ndarray]:
    """The volume columns of one pair's bars (ordered by ts_utc)."""
    volume = bars["volume"].to_numpy(dtype=np.int64)
    close = bars["close_idx"].to_numpy(dtype=float)
    typical = (bars["high_idx"].to_numpy(float) + bars["low_idx"].to_numpy(float) + close) / 3
    n = len(volume)
    signed = np.zeros(n, dtype=np.int64)
    signed[1:] = np.sign(np.diff(close)).astype(np.int64) * volume[1:]
    out: dict[str, np.ndarray] = {}
    for w in ROLLING_WINDOWS:
        if n < w:
            for metric in ["mean", "std", "z", "ratio", "imbalance", "vwap_dev"]:
                out[f"volume_{metric}_w{w}"] = np.full(n, np.nan)
            continue
        win = _windows(volume, w)
        total = win.sum(axis=1)  # exact: int64
        has_volume = total > 0
        mean = np.where(has_volume, total / w, np.nan)
        std = np.where(has_volume, win.astype(float).std(axis=1, ddof=1), np.nan)
        current = volume[w - 1 :].astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(std > 0, (current - mean) / std, np.nan)
            ratio = current / mean
            vwap = (_windows(typical, w) * win).sum(axis=1) / total
            vwap_dev = np.where(has_volume, close[w - 1 :] / vwap - 1, np.nan)
            imbalance = _windows(signed, w).sum(axis=1) / total
        imbalance = np.where(has_volume, imbalance, np.nan)
        out[f"volume_mean_w{w}"] = _aligned(n, w, mean)
        out[f"volume_std_w{w}"] = _aligned(n, w, std)
        out[f"volume_z_w{w}"] = _aligned(n, w, z)
        out[f"volume_ratio_w{w}"] = _aligned(n, w, ratio)
        out[f"volume_vwap_dev_w{w}"] = _aligned(n, w, vwap_dev)
        imbalance = _aligned(n, w, imbalance)
        imbalance[:w] = np.nan  # the first window's first bar has no previous close
        out[f"volume_imbalance_w{w}"] = imbalance
    out[f"volume_tod_ratio_d{TOD_DAYS}"] = tod_ratio_reference(bars)
    return out


def same_minute_history(bars: pd.DataFrame, lookback: int) -> tuple[np.ndarray, np.ndarray]:
    """Per bar t: how many bars share its UTC minute of day among bars t-lookback ... t-1, and
    their summed volume (from the bars' positions)."""
    volume = bars["volume"].to_numpy(dtype=np.int64)
    ts = pd.DatetimeIndex(bars["ts_utc"]).tz_convert("UTC")
    minute = (ts.hour * 60 + ts.minute).to_numpy()
    counts = np.zeros(len(volume), dtype=np.int64)
    totals = np.zeros(len(volume), dtype=np.int64)
    for m in np.unique(minute):
        rows = np.flatnonzero(minute == m)  # bar positions, increasing
        sums = np.concatenate([[0], np.cumsum(volume[rows])])
        first = np.searchsorted(rows, rows - lookback)  # earliest same-minute bar in range, per bar
        counts[rows] = np.arange(rows.size) - first
        totals[rows] = sums[np.arange(rows.size)] - sums[first]
    return counts, totals


def tod_ratio_reference(bars: pd.DataFrame) -> np.ndarray:
    """volume / mean volume of the bars at the same UTC minute of day among the previous
    TOD_DAYS × 1440 bars; NaN during the first TOD_DAYS × 1440 bars, without such bars, or
    when their mean is 0."""
    lookback = TOD_DAYS * 1440
    volume = bars["volume"].to_numpy(dtype=np.int64)
    counts, totals = same_minute_history(bars, lookback)
    out = np.full(len(volume), np.nan)
    valid = (np.arange(len(volume)) >= lookback) & (counts > 0) & (totals > 0)
    out[valid] = volume[valid] / (totals[valid] / counts[valid])
    return out


def spread_reference(bars: pd.DataFrame) -> dict[str, np.ndarray]:
    spread = bars["spread_bps"].to_numpy(dtype=float)  # NaN where the spread is NULL
    n = len(spread)
    out: dict[str, np.ndarray] = {}
    for w in ROLLING_WINDOWS:
        names = [f"spread_bps_{metric}_w{w}" for metric in ["mean", "std", "z", "min", "max"]]
        if n < w:
            out.update({name: np.full(n, np.nan) for name in names})
            continue
        win = _windows(spread, w)
        full = ~np.isnan(win).any(axis=1)  # a window is full only with W non-NULL spreads
        mean = np.where(full, win.mean(axis=1), np.nan)
        low = np.where(full, win.min(axis=1), np.nan)
        high = np.where(full, win.max(axis=1), np.nan)
        std = np.where(full, win.std(axis=1, ddof=1), np.nan)
        flat = full & (low == high)
        std[flat] = 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(full & ~flat, (spread[w - 1 :] - mean) / std, np.nan)
        for name, values in zip(names, [mean, std, z, low, high]):
            out[name] = _aligned(n, w, values)
    return out


def data_quality_reference(bars: pd.DataFrame, spans: dict[str, int]) -> dict[str, np.ndarray]:
    close = bars["close_idx"].to_numpy(dtype=float)
    ts = pd.DatetimeIndex(bars["ts_utc"]).tz_convert("UTC").to_numpy()
    n = len(close)
    minutes = np.full(n, np.nan)
    minutes[1:] = np.diff(ts).astype("timedelta64[s]").astype(float) / 60
    run = np.ones(n)
    for t in range(1, n):
        if close[t] == close[t - 1]:
            run[t] = run[t - 1] + 1
    log_return = np.full(n, np.nan)
    log_return[1:] = np.log(close[1:] / close[:-1])
    score = np.full(n, np.nan)
    flag = np.full(n, np.nan)
    for t in range(SPIKE_WINDOW + 1, n):
        sigma = log_return[t - SPIKE_WINDOW : t].std(ddof=1)
        flag[t] = float(abs(log_return[t]) > SPIKE_SIGMA_MULTIPLE * sigma)
        if sigma > 0:
            score[t] = abs(log_return[t]) / sigma
    out = {
        "minutes_since_prev_bar": minutes,
        "unchanged_close_run": run,
        f"spike_score_w{SPIKE_WINDOW}": score,
        f"spike_flag_w{SPIKE_WINDOW}": flag,
    }
    is_gap = np.nan_to_num(minutes, nan=0) > GAP_LIMIT_MINUTES
    for family, span in spans.items():
        gap = np.full(n, np.nan)
        for t in range(span - 1, n):
            gap[t] = float(is_gap[t - span + 2 : t + 1].any())  # the gaps inside bars t-span+1 ... t
        out[f"gap_in_{family}_window"] = gap
    return out


def gap_spans() -> dict[str, int]:
    """Bars each gap flag covers, from the catalog (the registry's window spans: a flag's warm-up
    is its span - 1); test_catalog checks the spans against the families' own warm-ups."""
    return {
        feature.column.removeprefix("gap_in_").removesuffix("_window"): feature.warmup_bars + 1
        for feature in feature_catalog().features
        if feature.family == "data_quality" and feature.column.startswith("gap_in_")
    }


# --- tests ----------------------------------------------------------------------------------


def _compare_model(dsn: str, table: str, reference, expected_columns: list[str]) -> dict[str, float]:
    bars = _index_bars(dsn)
    built = _model(dsn, table)
    assert list(built.columns) == ["pair", "ts_utc", *expected_columns]
    assert len(built) == len(bars)
    errors: dict[str, float] = {}
    for pair in FIXTURE_PAIRS:
        pair_bars = bars[bars["pair"] == pair].reset_index(drop=True)
        pair_built = built[built["pair"] == pair].reset_index(drop=True)
        assert pair_built["ts_utc"].equals(pair_bars["ts_utc"])
        expected = reference(pair_bars)
        for column in expected_columns:
            error = assert_matches(f"{table}.{column} {pair}", pair_built[column], expected[column])
            errors[column] = max(errors.get(column, 0.0), error)
    return errors


def volume_columns() -> list[str]:
    names = [
        f"volume_{metric}_w{w}"
        for w in ROLLING_WINDOWS
        for metric in ["mean", "std", "z", "ratio", "imbalance", "vwap_dev"]
    ]
    return [*names, f"volume_tod_ratio_d{TOD_DAYS}"]


def spread_columns() -> list[str]:
    return [f"spread_bps_{metric}_w{w}" for w in ROLLING_WINDOWS for metric in ["mean", "std", "z", "min", "max"]]


def data_quality_columns() -> list[str]:
    names = ["minutes_since_prev_bar", "unchanged_close_run", f"spike_score_w{SPIKE_WINDOW}", f"spike_flag_w{SPIKE_WINDOW}"]
    return [*names, *[f"gap_in_{family}_window" for family in gap_spans()]]


def test_volume_features_match_numpy(wave1_dsn: str) -> None:
    _compare_model(wave1_dsn, "volume_features", volume_reference, volume_columns())


def test_all_zero_volume_windows_are_null(wave1_dsn: str) -> None:
    """The fixture's zero-volume stretch is longer than every window: inside it every volume
    column is NULL (HistData-like data carries no volume information)."""
    w = max(ROLLING_WINDOWS)
    frame = query_frame(
        wave1_dsn,
        f"""
        select
            features.volume_mean_w{w},
            features.volume_std_w{w},
            features.volume_ratio_w{w},
            features.volume_vwap_dev_w{w},
            sum(bars.volume) over (order by bars.ts_utc rows between {w - 1} preceding and current row) as window_volume
        from staging.m1_index as bars
        inner join features.volume_features as features
            on bars.pair = features.pair and bars.ts_utc = features.ts_utc
        where bars.pair = %s
        order by bars.ts_utc
        """,
        (ZERO_VOLUME_PAIR,),
    )
    zero = frame["window_volume"].astype(float) == 0
    assert zero.sum() > 100
    assert frame.loc[zero].drop(columns="window_volume").isna().all().all()


def tod_silent_reference(bars: pd.DataFrame, days: int) -> np.ndarray:
    """Per bar: no bar with volume at its UTC minute of day among the previous days × 1440 bars
    (what volume_tod_is_silent must say of a NULL volume_tod_ratio); volumes are never negative."""
    _, totals = same_minute_history(bars, days * 1440)
    return totals == 0


@pytest.mark.parametrize(
    ("days", "probe_days", "every"),
    [(TOD_DAYS, None, 1), (TOD_DAYS, 6, 7), (1, None, 1), (1, 1, 11)],
    ids=["default", "mixed-probes-and-scans", "one-day-window", "scans"],
)
def test_tod_null_rule_matches_reference(wave1_dsn: str, days: int, probe_days: int | None, every: int) -> None:
    """volume_tod_is_silent (the NULL rule of volume_tod_ratio) says "silent" exactly where no bar
    with volume shares the minute of day among the previous days × 1440 bars, on every bar (every
    `every`-th where most windows are scanned): evaluated on a relation named as the model whose
    column is NULL on every bar, so the rule decides everywhere. The default probes days one by
    one; a probe window of 6 days leaves the windows across a weekend to the scan; one day of
    bars puts the same-minute bar of the day before at the window's edge (bar_number bound); one
    probe day scans nearly every window."""
    overrides = {"volume_tod_days": days} | ({"volume_tod_probe_days": probe_days} if probe_days else {})
    column = next(f for f in feature_catalog(vars=overrides).features if f.column == f"volume_tod_ratio_d{days}")
    assert column.null_allowed_when and "any(array[" in column.null_allowed_when
    frame = query_frame(
        wave1_dsn,
        f"""
        select volume_features.pair, volume_features.ts_utc, coalesce(({column.null_allowed_when}), false) as silent
        from (
            select pair, ts_utc, null::double precision as {column.column}
            from staging.m1_index
            where bar_number % {every} = 0
        ) as volume_features
        order by volume_features.pair, volume_features.ts_utc
        """,
    )
    bars = _index_bars(wave1_dsn)
    checked = 0
    for pair in FIXTURE_PAIRS:
        pair_bars = bars[bars["pair"] == pair].reset_index(drop=True)
        expected = tod_silent_reference(pair_bars, days)[::every]
        got = frame.loc[frame["pair"] == pair, "silent"].to_numpy(dtype=bool)
        assert got.size == expected.size
        wrong = np.flatnonzero(got != expected)
        assert not wrong.size, f"{pair}: {wrong.size} bars, first at {pair_bars['ts_utc'].iloc[wrong[0] * every]} (rule {got[wrong[0]]})"
        checked += got.size
        assert expected.any() and not expected.all()  # both verdicts occur
    assert checked > 1000


@pytest.mark.parametrize("table", ["volume_features", "spread_features"])
def test_window_null_rules_match_reference(wave1_dsn: str, table: str) -> None:
    """The NULL rule of every window's mean (volume: no volume in the window; spread: a NULL
    spread in it, leaning on the next shorter window's NULL) says "allowed" exactly where the
    reference says so, on every bar with a full window: evaluated with the tested column NULL on
    every bar and the model's other columns as built, so a rule too lenient anywhere fails."""
    metric = "volume_mean" if table == "volume_features" else "spread_bps_mean"
    columns = table_columns(wave1_dsn, "features", table)
    rules = {f.column: f.null_allowed_when for f in feature_catalog().features if f.model == table}
    bars = _index_bars(wave1_dsn)
    for w in ROLLING_WINDOWS:
        column = f"{metric}_w{w}"
        kept = ", ".join(f"{table}.{c}" if c != column else f"null::double precision as {c}" for c in columns)
        frame = query_frame(
            wave1_dsn,
            f"""
            select {table}.pair, coalesce(({rules[column]}), false) as allowed
            from (select {kept} from features.{table}) as {table}
            order by {table}.pair, {table}.ts_utc
            """,
        )
        for pair in FIXTURE_PAIRS:
            pair_bars = bars[bars["pair"] == pair].reset_index(drop=True)
            if table == "volume_features":
                expected = _windows(pair_bars["volume"].to_numpy(np.int64), w).sum(axis=1) == 0
            else:
                expected = _windows(pair_bars["spread_bps"].isna().to_numpy(), w).any(axis=1)
            got = frame.loc[frame["pair"] == pair, "allowed"].to_numpy(dtype=bool)[w - 1 :]
            wrong = np.flatnonzero(got != expected)
            assert not wrong.size, f"{column} {pair}: {wrong.size} bars, first at {pair_bars['ts_utc'].iloc[wrong[0] + w - 1]} (rule {got[wrong[0]]})"
            if pair == ZERO_VOLUME_PAIR and table == "volume_features":
                assert expected.sum() > 100  # the fixture's stretch without volume
        assert any(frame["allowed"]), column


def test_volume_rules_on_a_pair_without_volume(wave1_dsn: str) -> None:
    """A pair none of whose bars has volume (HistData's files): volume_pair_is_silent names it and
    no other pair, and every volume rule (the five means, the time-of-day ratio) says "silent" on
    every bar of it, while a pair with volume keeps the reference's verdicts (the rules' own
    window reads). The pair's volumes are set to 0 in m1_index inside a transaction rolled back."""
    import psycopg

    from bqx.macros import call_macro

    silent_pair = next(p for p in FIXTURE_PAIRS if p != ZERO_VOLUME_PAIR)
    other_pair = next(p for p in FIXTURE_PAIRS if p not in (silent_pair, ZERO_VOLUME_PAIR))
    tod_column = f"volume_tod_ratio_d{TOD_DAYS}"
    columns = [f"volume_mean_w{w}" for w in ROLLING_WINDOWS] + [tod_column]
    rules = {f.column: f.null_allowed_when for f in feature_catalog().features if f.column in columns}
    assert all(rules[c] and "silent_pairs" in rules[c] for c in columns)  # the pair-level check is in each
    nulls = ", ".join(f"null::double precision as {c}" for c in columns)
    verdicts = ", ".join(f"coalesce(({rules[c]}), false)" for c in columns)
    with psycopg.connect(wave1_dsn) as conn:
        conn.execute("update staging.m1_index set volume = 0 where pair = %s", (silent_pair,))
        named = conn.execute(
            "select volume_features.pair from (select distinct pair from staging.m1_index) as volume_features"
            f" where {call_macro('volume_pair_is_silent', 'volume_features')}"
        ).fetchall()
        rows = conn.execute(
            f"select volume_features.pair, {verdicts} from ("
            f"select pair, ts_utc, {nulls} from staging.m1_index where pair in (%s, %s)"
            ") as volume_features order by volume_features.pair, volume_features.ts_utc",
            (silent_pair, other_pair),
        ).fetchall()
        conn.rollback()
    assert [pair for (pair,) in named] == [silent_pair]
    frame = pd.DataFrame(rows, columns=["pair", *columns])
    assert frame.loc[frame["pair"] == silent_pair, columns].to_numpy(dtype=bool).all()
    bars = _index_bars(wave1_dsn)
    other_bars = bars[bars["pair"] == other_pair].reset_index(drop=True)
    other = frame[frame["pair"] == other_pair].reset_index(drop=True)
    assert len(other) == len(other_bars) > 0
    volume = other_bars["volume"].to_numpy(np.int64)
    for w in ROLLING_WINDOWS:
        expected = _windows(volume, w).sum(axis=1) == 0
        assert (other[f"volume_mean_w{w}"].to_numpy(dtype=bool)[w - 1 :] == expected).all(), w
    expected_tod = tod_silent_reference(other_bars, TOD_DAYS)
    assert (other[tod_column].to_numpy(dtype=bool) == expected_tod).all()
    assert expected_tod.any() and not expected_tod.all()


def test_volume_bars_index_is_one_partial_index(wave1_dsn: str) -> None:
    """m1_index's post-hook (volume_bars_index) left one partial index of the bars with volume on
    (pair, ts_utc), which the volume rules' probes read, and running the hook again (every
    incremental run of m1_index does) adds none. Each rule's verdicts are compared with NumPy in the
    tests above, with the index in place; dropped, the hook creates it again."""
    import psycopg

    from bqx.macros import call_macro

    hook = call_macro("volume_bars_index", "staging.m1_index")
    partial = (
        "select pg_get_indexdef(indexrelid) from pg_index"
        " where indrelid = 'staging.m1_index'::regclass and indpred is not null"
    )
    with psycopg.connect(wave1_dsn) as conn:
        built = [d for (d,) in conn.execute(partial).fetchall()]
        assert len(built) == 1 and built[0].endswith("USING btree (pair, ts_utc) WHERE (volume <> 0)"), built
        conn.execute(hook)
        assert [d for (d,) in conn.execute(partial).fetchall()] == built
        conn.execute(f"drop index staging.{built[0].split()[2]}")
        assert conn.execute(partial).fetchall() == []
        conn.execute(hook)
        assert [d.split()[3:] for (d,) in conn.execute(partial).fetchall()] == [built[0].split()[3:]]
        conn.rollback()


def test_volume_rules_in_the_form_citus_shards_run(wave1_dsn: str) -> None:
    """var null_rules_on_shards (the dataset builder's validation on a Citus source, where a pair's
    query runs on its shard) renders the volume rules without the subquery over every pair, and
    their verdicts stay those of the default form on every bar of the pair with a stretch without
    volume."""
    from bqx.datasets.validate import NULL_RULES_ON_SHARDS_VAR, catalog_null_rules

    columns = [f"volume_mean_w{w}" for w in ROLLING_WINDOWS] + [f"volume_tod_ratio_d{TOD_DAYS}"]
    default = catalog_null_rules(feature_catalog())
    on_shards = catalog_null_rules(feature_catalog(vars={NULL_RULES_ON_SHARDS_VAR: True}))
    assert all("silent_pairs" in default[c] and "silent_pairs" not in on_shards[c] for c in columns)
    nulls = ", ".join(f"null::double precision as {c}" for c in columns)
    verdicts = ", ".join(f"coalesce(({rules[c]}), false) as {name}_{c}" for name, rules in [("default", default), ("shards", on_shards)] for c in columns)
    frame = query_frame(
        wave1_dsn,
        f"select {verdicts} from (select pair, ts_utc, {nulls} from staging.m1_index where pair = '{ZERO_VOLUME_PAIR}') as volume_features",
    )
    for c in columns:
        assert (frame[f"default_{c}"] == frame[f"shards_{c}"]).all(), c
        assert frame[f"default_{c}"].any() and not frame[f"default_{c}"].all(), c


def test_spread_features_match_numpy(wave1_dsn: str) -> None:
    _compare_model(wave1_dsn, "spread_features", spread_reference, spread_columns())


def test_null_spreads_empty_every_window_holding_them(wave1_dsn: str) -> None:
    bars = _index_bars(wave1_dsn)
    nulls = bars["spread_bps"].isna()
    assert nulls.sum() > 0, "the fixture has null spreads"
    built = _model(wave1_dsn, "spread_features")
    for pair in bars.loc[nulls, "pair"].unique():
        positions = np.flatnonzero(nulls[bars["pair"] == pair].to_numpy())
        pair_built = built[built["pair"] == pair].reset_index(drop=True)
        for w in ROLLING_WINDOWS:
            touched = sorted({p + k for p in positions for k in range(w) if p + k < len(pair_built)})
            assert pair_built.loc[touched, f"spread_bps_mean_w{w}"].isna().all()
            after = max(touched) + 1
            if after < len(pair_built):
                assert pair_built.loc[after, f"spread_bps_mean_w{w}"] is not None


def test_data_quality_features_match_numpy(wave1_dsn: str) -> None:
    spans = gap_spans()
    _compare_model(
        wave1_dsn, "data_quality_features", lambda bars: data_quality_reference(bars, spans), data_quality_columns()
    )


def test_flat_stretch_shows_in_unchanged_close_run(wave1_dsn: str) -> None:
    from conftest import FLAT_BARS, FLAT_PAIR

    longest = query_frame(
        wave1_dsn,
        "select max(unchanged_close_run) as longest from features.data_quality_features where pair = %s",
        (FLAT_PAIR,),
    )["longest"].iloc[0]
    assert longest >= FLAT_BARS


def test_weekend_counts_as_a_gap(wave1_dsn: str) -> None:
    """The first bars after the weekend close carry a gap flag in every family."""
    frame = query_frame(
        wave1_dsn,
        "select pair, ts_utc, minutes_since_prev_bar, gap_in_bqx_window, gap_in_reg_window "
        "from features.data_quality_features where minutes_since_prev_bar > 24 * 60 order by pair, ts_utc",
    )
    assert len(frame) >= len(FIXTURE_PAIRS)  # one weekend per pair at least
    assert frame["gap_in_bqx_window"].dropna().all() and frame["gap_in_reg_window"].dropna().all()
