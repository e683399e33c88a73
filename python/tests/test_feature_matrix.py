"""marts.feature_matrix: exactly the expected columns (derived here from dbt_project.yml's vars,
independently of the dbt macros), one row per m1_index row, no targets, values from the models."""

from __future__ import annotations

import pytest
import yaml

from bqx.dbt import PROJECT_DIR
from conftest import query_frame

VARS: dict = yaml.safe_load((PROJECT_DIR / "dbt_project.yml").read_text())["vars"]


def _windows(metrics: list[str], windows: list[int]) -> list[str]:
    return [f"{metric}_w{w}" for w in windows for metric in metrics]


def expected_families() -> list[tuple[str, str, list[str]]]:
    """(model, prefix in the matrix, the model's feature columns) per wave-1 feature model,
    written from the contract (spec.md) and the vars, not from the macros."""
    rolling = VARS["rolling_windows"]
    reg = _windows(["reg_a", "reg_b", "reg_c", "reg_r2", "reg_rmse", "reg_endpoint"], VARS["reg_windows"])
    bollinger = _windows(["bb_mid", "bb_upper", "bb_lower", "bb_width", "bb_pctb"], VARS["bollinger_windows"])
    statistics = _windows(["mean", "std", "skew", "kurt", "min", "max"], rolling)
    adx = VARS["adx_period"]
    technical = [
        *[f"rsi_{n}" for n in VARS["rsi_periods"]],
        "macd", "macd_signal", "macd_hist", "stoch_k", "stoch_d",
        f"adx_{adx}", f"plus_di_{adx}", f"minus_di_{adx}", f"cci_{VARS['cci_period']}",
    ]  # fmt: skip
    volume = [
        *_windows(["volume_mean", "volume_std", "volume_z", "volume_ratio", "volume_imbalance", "volume_vwap_dev"], rolling),
        f"volume_tod_ratio_d{VARS.get('volume_tod_days', 5)}",
    ]
    spread = _windows(["spread_bps_mean", "spread_bps_std", "spread_bps_z", "spread_bps_min", "spread_bps_max"], rolling)
    cities = ["sydney", "tokyo", "london", "new_york"]
    time = [
        "hour", "minute_of_day", "day_of_week", "hour_sin", "hour_cos", "dow_sin", "dow_cos",
        *[f"session_{city}" for city in cities],
        "session_overlap_sydney_tokyo", "session_overlap_tokyo_london", "session_overlap_london_new_york",
        "sessions_open",
        *[f"minutes_into_{city}" for city in cities],
    ]  # fmt: skip
    spike = VARS.get("spike_window", 60)
    data_quality = [
        "minutes_since_prev_bar", "unchanged_close_run", f"spike_score_w{spike}", f"spike_flag_w{spike}",
        "gap_in_bqx_window", "gap_in_reg_window", "gap_in_bollinger_window", "gap_in_rolling_window",
    ]  # fmt: skip
    return [
        ("bqx", "", [f"bqx_w{w}" for w in VARS["bqx_windows"]]),
        ("reg_rate", "rate_", reg),
        ("reg_bqx", "bqx_", reg),
        ("bollinger_rate", "rate_", bollinger),
        ("bollinger_bqx", "bqx_", bollinger),
        ("statistics_rate", "rate_", statistics),
        ("statistics_bqx", "bqx_", statistics),
        ("technical_rate", "rate_", technical),
        ("technical_bqx", "bqx_", technical),
        ("volume_features", "", volume),
        ("spread_features", "", spread),
        ("time_features", "", time),
        ("data_quality_features", "", data_quality),
    ]


def _view_columns(dsn: str) -> list[str]:
    return list(
        query_frame(
            dsn,
            "select column_name from information_schema.columns "
            "where table_schema = 'marts' and table_name = 'feature_matrix' order by ordinal_position",
        )["column_name"]
    )


def test_feature_matrix_is_a_view(wave1_dsn: str) -> None:
    kind = query_frame(
        wave1_dsn,
        "select table_type from information_schema.tables where table_schema = 'marts' and table_name = 'feature_matrix'",
    )
    assert list(kind["table_type"]) == ["VIEW"]


def test_feature_matrix_has_exactly_the_expected_columns(wave1_dsn: str) -> None:
    columns = _view_columns(wave1_dsn)
    expected = ["pair", "ts_utc"] + [prefix + c for _, prefix, cols in expected_families() for c in cols]
    assert len(columns) == len(set(columns)), "duplicate column names"
    assert sorted(columns) == sorted(expected), (
        f"missing {sorted(set(expected) - set(columns))[:10]}, unexpected {sorted(set(columns) - set(expected))[:10]}"
    )
    assert columns[:2] == ["pair", "ts_utc"]
    assert not [c for c in columns if c.startswith("target")]


def test_one_row_per_index_row(wave1_dsn: str) -> None:
    counts = query_frame(
        wave1_dsn,
        "select (select count(*) from staging.m1_index) as bars, count(*) as matrix_rows, "
        "count(distinct (pair, ts_utc)) as keys from marts.feature_matrix",
    ).iloc[0]
    assert counts["bars"] == counts["matrix_rows"] == counts["keys"] > 0


@pytest.mark.parametrize("family", expected_families(), ids=lambda family: family[0])
def test_columns_carry_their_model_values(wave1_dsn: str, family: tuple[str, str, list[str]]) -> None:
    """Each matrix column is its model's column of the same (unprefixed) name, row for row."""
    model, prefix, columns = family
    differing = ", ".join(
        f"count(*) filter (where matrix.{prefix}{c} is distinct from features.{c}) as {prefix}{c}" for c in columns
    )
    frame = query_frame(
        wave1_dsn,
        f"select count(*) as joined, {differing} from marts.feature_matrix as matrix "
        f"inner join features.{model} as features on matrix.pair = features.pair and matrix.ts_utc = features.ts_utc",
    )
    row = frame.iloc[0]
    assert row["joined"] > 0
    bad = {column: int(row[column]) for column in frame.columns if column != "joined" and row[column]}
    assert not bad, f"{model}: columns differing from the model: {bad}"
