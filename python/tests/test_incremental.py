"""Changes drive the build: whatever reaches raw.m1_bars, in whatever order, the next build equals
a full refresh bit for bit on every model; features never look ahead."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import psycopg
import pytest

from bqx.load import load_frame
from conftest import query_frame
from model_compare import assert_same_tables, assert_same_values, feature_tables, table_rows

TRUNCATE_AT = pd.Timestamp("2024-07-02 23:59", tz="UTC")  # the no-look-ahead check builds bars up to it
BOGUS_BAR = pd.Timestamp("2024-06-29 12:00", tz="UTC")  # a Saturday: no bar of the fixture there
GAP = (pd.Timestamp("2024-06-26", tz="UTC"), pd.Timestamp("2024-06-28", tz="UTC"))  # EURUSD: loaded late
CORRECTED_BAR = pd.Timestamp("2024-07-03 14:07", tz="UTC")  # USDJPY: loaded wrong, corrected mid-month


def _scaled(bars: pd.DataFrame, factor: float) -> pd.DataFrame:
    wrong = bars.copy()
    wrong[["open", "high", "low", "close"]] *= factor
    return wrong


def staged_loads(fixture_bars: pd.DataFrame) -> list[list[tuple[str, pd.DataFrame | str]]]:
    """The fixture's bars arriving as they do in operation, stage by stage (a build after each):
    uneven ends per pair, a pair arriving later, a gap of days filled late, a bar loaded wrong
    and corrected mid-month, a baseline bar corrected, a bogus bar deleted by SQL. After the
    last stage raw.m1_bars holds exactly the fixture's bars."""
    bars = fixture_bars
    pair, ts = bars["pair"], bars["ts_utc"]
    baseline_bar = (pair == "EURJPY") & (ts == ts[(pair == "EURJPY") & (ts >= "2024-07-01")].min())
    corrected = (pair == "USDJPY") & (ts == CORRECTED_BAR)
    gap = (pair == "EURUSD") & (ts >= GAP[0]) & (ts < GAP[1])
    ends = {"EURUSD": "2024-07-04 13:37", "USDJPY": "2024-07-05 02:11", "EURJPY": "2024-07-03 20:00"}
    first = pd.Series(False, index=bars.index)
    for name, end in ends.items():
        first |= (pair == name) & (ts < pd.Timestamp(end, tz="UTC"))
    first &= ~gap
    bogus = bars[(pair == "EURUSD") & (ts < BOGUS_BAR)].tail(1).assign(ts_utc=BOGUS_BAR)
    gbp = pair == "GBPUSD"
    stage_1 = [
        ("uneven first load", bars[first & ~baseline_bar & ~corrected]),
        ("baseline bar, wrong", _scaled(bars[first & baseline_bar], 1.01)),
        ("a bar, wrong", _scaled(bars[first & corrected], 0.99)),
        ("a bogus weekend bar", bogus),
    ]
    rest = ~first & ~gap & ~gbp
    stage_2 = [
        ("the rest, a new pair's first half", bars[rest | (gbp & (ts < "2024-07-02"))]),
        ("the wrong bar corrected", bars[corrected]),
        ("delete", f"delete from raw.m1_bars where pair = 'EURUSD' and ts_utc = '{BOGUS_BAR.isoformat()}'"),
    ]
    stage_3 = [
        ("the gap filled late", bars[gap]),
        ("the baseline bar corrected", bars[baseline_bar]),
        ("the new pair's second half", bars[gbp & (ts >= "2024-07-02")]),
    ]
    return [stage_1, stage_2, stage_3]


def apply_stage(dsn: str, stage: list[tuple[str, pd.DataFrame | str]]) -> None:
    for name, what in stage:
        if isinstance(what, str):
            with psycopg.connect(dsn) as conn:
                assert conn.execute(what).rowcount == 1, name
        else:
            summary = load_frame(dsn, what, name)
            assert sum(f.rows_rejected for f in summary.files) == 0, name


def test_staged_loads_then_builds_equal_a_full_refresh_bit_for_bit(
    database_factory: Callable[[str], str],
    dbt_runner: Callable[..., None],
    fixture_bars: pd.DataFrame,
    wave1_dsn: str,
) -> None:
    dsn = database_factory("staged")
    stages = staged_loads(fixture_bars)
    for stage in stages:
        apply_stage(dsn, stage)
        dbt_runner(dsn, "run", "--select", "tag:wave1")
    rows = query_frame(dsn, "select count(*) as n from raw.m1_bars")["n"].iloc[0]
    assert rows == len(fixture_bars)
    # what the last build of each pair rewrote: from the bar changed (a correction: USDJPY; a new
    # pair's second half: GBPUSD), or the whole pair when the change was at or before its
    # baseline bar (the late gap of EURUSD, the corrected baseline bar of EURJPY)
    state = query_frame(
        dsn, "select pair, rewrote_from_ts::text as rewrote_from from build_state.model_pairs where model = 'bqx'"
    ).set_index("pair")["rewrote_from"]
    assert state["EURUSD"] == state["EURJPY"] == "-infinity"
    assert pd.Timestamp(state["USDJPY"]) == CORRECTED_BAR
    assert pd.Timestamp(state["GBPUSD"]) == pd.Timestamp("2024-07-02", tz="UTC")
    assert_same_tables(dsn, wave1_dsn, "staged")


def test_a_backfill_is_exact_at_both_edges_and_touches_nothing_else(
    database_factory: Callable[[str], str],
    dbt_runner: Callable[..., None],
    fixture_bars: pd.DataFrame,
    wave1_dsn: str,
) -> None:
    """`bqx build --from X --to Y` (vars recompute_from / recompute_to) rewrites the rows in
    [X, Y) of every model equal to a full build (and the rows after Y whose windows reach into
    it), and leaves the rows before X alone (targets, which look forward: before X - max(H))."""
    dsn = database_factory("backfill")
    load_frame(dsn, fixture_bars, "all")
    dbt_runner(dsn, "run", "--select", "tag:wave1")
    start, stop = "2024-07-02 10:00:00+00", "2024-07-03 10:00:00+00"
    before = f"ts_utc >= timestamptz '{start}' - interval '3 hours' and ts_utc < timestamptz '{start}' - interval '2 hours'"
    tables = feature_tables(dsn, ("features", "marts"))
    corrupted = {}
    with psycopg.connect(dsn) as conn:
        for table in tables:
            schema, name = table.split(".")
            column = query_frame(
                dsn,
                "select column_name from information_schema.columns where table_schema = %s and table_name = %s "
                "and data_type = 'double precision' order by ordinal_position desc limit 1",
                (schema, name),
            )["column_name"].iloc[0]
            corrupted[table] = column
            # inside the backfill, and two hours before it (untouched even by targets' lookback)
            conn.execute(
                f"update {table} set {column} = -12345 where ({before}) or (ts_utc >= '{start}' and ts_utc < '{stop}')"
            )
    expected_left = {
        table: query_frame(dsn, f"select count(*) as n from {table} where {before}")["n"].iloc[0] for table in tables
    }
    dbt_runner(dsn, "run", "--select", "tag:wave1", "--vars", f'{{"recompute_from": "{start}", "recompute_to": "{stop}"}}')
    inside = f"ts_utc >= '{start}' and ts_utc < '{stop}'"
    for table, column in corrupted.items():
        assert_same_values(table_rows(dsn, table, inside), table_rows(wave1_dsn, table, inside), table, rel_tol=0.0)
        left = query_frame(dsn, f"select count(*) as n from {table} where {column} = -12345")["n"].iloc[0]
        assert left == expected_left[table] > 0, f"{table}: rows before the backfill were rewritten"


def test_features_do_not_look_ahead(
    database_factory: Callable[[str], str],
    dbt_runner: Callable[..., None],
    fixture_bars: pd.DataFrame,
    wave1_dsn: str,
) -> None:
    """Features at a minute ≤ T are the same whether or not a week of bars after T exists."""
    dsn = database_factory("truncated")
    load_frame(dsn, fixture_bars[fixture_bars["ts_utc"] <= TRUNCATE_AT], "bars up to T")
    dbt_runner(dsn, "run", "--select", "tag:wave1")
    until_t = f"ts_utc <= '{TRUNCATE_AT.isoformat()}'"
    tables = feature_tables(wave1_dsn, ("features",))
    assert len(tables) >= 1
    for table in tables:
        assert_same_values(table_rows(dsn, table, until_t), table_rows(wave1_dsn, table, until_t), f"truncated {table}", 0.0)


@pytest.mark.parametrize("schema", ["staging", "features", "marts"])
def test_models_land_in_their_own_schema(wave1_dsn: str, schema: str) -> None:
    found = query_frame(
        wave1_dsn,
        "select count(*) as n from information_schema.tables where table_schema = %s",
        (schema,),
    )["n"].iloc[0]
    assert found > 0


LONG_FLAT_BARS = 3500  # longer than smoother_lookback_bars (2000) by more than a day's increment


def test_a_restart_inside_a_flat_run_longer_than_the_smoothers_lookback_equals_a_full_refresh(
    database_factory: Callable[[str], str], dbt_runner: Callable[..., None], fixture_bars: pd.DataFrame
) -> None:
    """A constant price for 3500 bars, built up to 2600 bars into the run, then to the end: the
    increment's smoothers must not restart on flat bars only (0/0: RSI and ±DI 0, ADX frozen)
    but keep the ratios of the last move, as a full build and TA-Lib do."""
    bars = fixture_bars[fixture_bars["pair"] == "GBPUSD"].reset_index(drop=True)
    flat = bars.index[3000 : 3000 + LONG_FLAT_BARS]
    bars.loc[flat, ["open", "high", "low", "close"]] = bars.loc[flat[0], "close"]
    split = bars.loc[flat[0] + 2600, "ts_utc"]
    # one pair, the fixture's first half only before the split: a baseline at its start
    models = ("--select", "+technical_rate", "+technical_bqx", "--vars", '{"baseline_date": "2024-06-24"}')
    full = database_factory("flat_full")
    load_frame(full, bars, "all")
    dbt_runner(full, "run", *models)
    staged = database_factory("flat_staged")
    load_frame(staged, bars[bars["ts_utc"] < split], "into the flat run")
    dbt_runner(staged, "run", *models)
    load_frame(staged, bars[bars["ts_utc"] >= split], "the rest")
    dbt_runner(staged, "run", *models)
    for table in ("features.technical_rate", "features.technical_bqx"):
        after = f"ts_utc >= '{split.isoformat()}'"
        rows = table_rows(full, table, after)
        # the case is real: the full build's ratios after the split are not 0 (the last move's)
        assert (rows["rsi_14"].dropna() > 0).all() and rows["plus_di_14"].notna().any(), table
        assert_same_values(table_rows(staged, table, after), rows, table, rel_tol=0.0)
