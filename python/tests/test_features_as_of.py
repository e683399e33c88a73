"""Point-in-time retrieval (bqx.features, macros/retrieval/features_as_of.sql) against an
independent reference: pandas.merge_asof on the feature_matrix, with the contract's semantics
(a bar is known from its close; the newest known bar at or before the event; NULL beyond
max_age, inclusive, with the reason)."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pytest

from bqx.features import (
    CHUNK_VALUES,
    MAX_CHUNK_ROWS,
    AsOfOptions,
    RetrievalError,
    as_of,
    as_of_batches,
    as_of_sql,
    event_table,
)
from bqx.features import MIRROR_MIN_EVENTS
from bqx.load import load_frame
from conftest import FIXTURE_PAIRS, query_frame

COLUMNS = ["bqx_w15", "rate_rsi_14", "bqx_reg_a_w60", "volume_mean_w15", "hour", "minutes_since_prev_bar"]
MAX_AGE = dt.timedelta(minutes=5)
MINUTE = pd.Timedelta(minutes=1)


def _bars(dsn: str) -> pd.DataFrame:
    frame = query_frame(dsn, f"select pair, ts_utc, {', '.join(COLUMNS)} from marts.feature_matrix order by pair, ts_utc")
    for column in COLUMNS:
        frame[column] = pd.to_numeric(frame[column]).astype(float)
    frame["ts_utc"] = pd.to_datetime(frame["ts_utc"], utc=True)
    return frame


def reference(events: pd.DataFrame, bars: pd.DataFrame, max_age: dt.timedelta = MAX_AGE) -> pd.DataFrame:
    """merge_asof: the newest bar whose close (ts_utc + 1 minute) is at or before the event."""
    us = "datetime64[us, UTC]"
    known = bars.assign(ts_utc=bars["ts_utc"].astype(us))
    known = known.assign(known_at=known["ts_utc"] + MINUTE).sort_values("known_at")
    ordered = events.assign(position=np.arange(len(events)), event_time=events["event_time"].astype(us))
    ordered = ordered.sort_values("event_time", kind="stable")
    merged = pd.merge_asof(
        ordered, known, left_on="event_time", right_on="known_at", by="pair", direction="backward", allow_exact_matches=True
    ).sort_values("position")
    age = merged["event_time"] - merged["known_at"]
    reason = pd.Series(None, index=merged.index, dtype=object)
    reason[merged["known_at"].isna()] = "before_first_bar"
    reason[merged["known_at"].notna() & (age > pd.Timedelta(max_age))] = "stale"
    kept = reason.isna()
    merged.loc[~kept, COLUMNS] = np.nan
    merged["feature_ts_utc"] = merged["ts_utc"].where(kept)
    merged["feature_age"] = age
    merged["feature_missing_reason"] = reason
    return merged.reset_index(drop=True)


def _events(bars: pd.DataFrame, seed: int = 7) -> pd.DataFrame:
    """Random instants plus every awkward case the contract names, shuffled (order must hold)."""
    rng = np.random.default_rng(seed)
    first, last = bars["ts_utc"].min(), bars["ts_utc"].max()
    span = (last - first).total_seconds() + 3600
    random_times = first + pd.to_timedelta(rng.uniform(-600, span, 400), unit="s")
    rows = [pd.DataFrame({"pair": rng.choice(FIXTURE_PAIRS, 400), "event_time": random_times})]
    sample = bars.sample(40, random_state=seed)
    opens, closes = sample["ts_utc"], sample["ts_utc"] + MINUTE
    micro = pd.Timedelta(microseconds=1)
    for times in (opens, closes, closes - micro, closes + pd.Timedelta(MAX_AGE), closes + pd.Timedelta(MAX_AGE) + micro):
        rows.append(pd.DataFrame({"pair": sample["pair"].to_numpy(), "event_time": times.to_numpy()}))
    edges = []
    for pair, group in bars.groupby("pair"):
        edges += [
            (pair, group["ts_utc"].min() - pd.Timedelta(hours=3)),  # before the first bar
            (pair, group["ts_utc"].min() + MINUTE),  # exactly the first bar's close
            (pair, group["ts_utc"].max() + MINUTE),  # the last bar's close
            (pair, group["ts_utc"].max() + pd.Timedelta(days=2)),  # long after the last bar
            (pair, pd.Timestamp("2024-06-29 12:00", tz="UTC")),  # a Saturday: stale
        ]
    rows.append(pd.DataFrame(edges, columns=["pair", "event_time"]))
    events = pd.concat(rows, ignore_index=True)
    events = pd.concat([events, events.iloc[:25]], ignore_index=True)  # duplicated events
    events = events.sample(frac=1, random_state=seed).reset_index(drop=True)  # unsorted
    events["event_time"] = pd.to_datetime(events["event_time"], utc=True)
    events["label"] = [f"event {i}" for i in range(len(events))]  # an extra column, kept
    return events


def _assert_equal(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(got["label"]) == list(expected["label"]), "the input's order is kept"
    assert list(got["pair"]) == list(expected["pair"])
    assert (got["event_time"].astype("datetime64[us, UTC]") == expected["event_time"]).all()
    assert got["feature_missing_reason"].fillna("").tolist() == expected["feature_missing_reason"].fillna("").tolist()
    same_ts = (got["feature_ts_utc"] == expected["feature_ts_utc"]) | (got["feature_ts_utc"].isna() & expected["feature_ts_utc"].isna())
    assert same_ts.all(), got.loc[~same_ts, ["pair", "event_time", "feature_ts_utc"]].head()
    assert (got["feature_age"].fillna(pd.Timedelta(0)) == expected["feature_age"].fillna(pd.Timedelta(0))).all()
    for column in COLUMNS:
        a, b = got[column].to_numpy(dtype=float), expected[column].to_numpy(dtype=float)
        assert np.array_equal(a, b, equal_nan=True), column  # the stored values, bit for bit


@pytest.fixture(scope="module")
def fixture_features(wave1_dsn: str) -> pd.DataFrame:
    return _bars(wave1_dsn)


@pytest.mark.parametrize("method", ["window", "index", "mirror"])
def test_as_of_equals_merge_asof(wave1_dsn: str, fixture_features: pd.DataFrame, method: str, tmp_path: Path) -> None:
    events = _events(fixture_features)
    got = as_of(events, COLUMNS, MAX_AGE, dsn=wave1_dsn, method=method, mirror_dir=tmp_path / "mirror")
    expected = reference(events, fixture_features)
    _assert_equal(got, expected)
    reasons = set(got["feature_missing_reason"].dropna())
    assert reasons == {"stale", "before_first_bar"}, "the events cover every reason"
    assert got["feature_ts_utc"].notna().sum() > 300


def test_arrow_in_arrow_out_and_any_time_zone(wave1_dsn: str, fixture_features: pd.DataFrame) -> None:
    events = _events(fixture_features, seed=11)
    in_new_york = events.assign(event_time=events["event_time"].dt.tz_convert("America/New_York"))
    got = as_of(pa.Table.from_pandas(in_new_york), COLUMNS, MAX_AGE, dsn=wave1_dsn)
    assert isinstance(got, pa.Table)
    _assert_equal(got.to_pandas(), reference(events, fixture_features))


def test_chunks_give_the_same_result_in_order(wave1_dsn: str, fixture_features: pd.DataFrame) -> None:
    """Events retrieved in several round trips (each its own temporary table and query) come
    back in the input's order, equal to the reference; the default chunk follows the columns."""
    events = _events(fixture_features, seed=5)
    options = AsOfOptions(columns=tuple(COLUMNS), max_age=MAX_AGE, chunk_rows=97)
    batches = list(as_of_batches(events, options, dsn=wave1_dsn))
    assert len(batches) == -(-len(events) // 97) and all(batch.num_rows <= 97 for batch in batches)
    _assert_equal(pa.concat_tables(batches).to_pandas(), reference(events, fixture_features))
    by_columns = AsOfOptions().rows_per_chunk
    assert by_columns(0) == MAX_CHUNK_ROWS and by_columns(340) < by_columns(30) <= MAX_CHUNK_ROWS
    assert by_columns(340) * 344 <= CHUNK_VALUES


def test_default_columns_are_the_feature_matrix(wave1_dsn: str, fixture_features: pd.DataFrame) -> None:
    events = _events(fixture_features).iloc[:50]
    got = as_of(events, dsn=wave1_dsn)
    matrix = query_frame(wave1_dsn, "select * from marts.feature_matrix limit 0").columns
    assert list(got.columns) == [*events.columns, "feature_ts_utc", "feature_age", "feature_missing_reason", *matrix[2:]]


def test_bad_events_are_refused_with_a_reason() -> None:
    utc = pd.Timestamp("2024-07-02 10:00", tz="UTC")
    with pytest.raises(RetrievalError, match=r"unknown pair\(s\) 'USDEUR'"):
        event_table(pd.DataFrame({"pair": ["EURUSD", "USDEUR"], "event_time": [utc, utc]}))
    with pytest.raises(RetrievalError, match="no time zone"):
        event_table(pd.DataFrame({"pair": ["EURUSD"], "event_time": [utc.tz_localize(None)]}))
    with pytest.raises(RetrievalError, match="lack the column"):
        event_table(pd.DataFrame({"pair": ["EURUSD"]}))
    with pytest.raises(RetrievalError, match="missing on 1 event"):
        event_table(pd.DataFrame({"pair": ["EURUSD", None], "event_time": [utc, utc]}))
    with pytest.raises(RetrievalError, match="method"):
        AsOfOptions(method="guess")


def test_a_bar_not_built_yet_is_said(wave1_dsn: str, fixture_features: pd.DataFrame) -> None:
    """Bars in m1_index whose feature rows one model lacks: the events they would serve get NULL
    features with reason not_built, never NULLs without a reason (checked in a transaction that
    is rolled back, through the compiled macro itself)."""
    eurusd = fixture_features[fixture_features["pair"] == "EURUSD"]
    cut = eurusd["ts_utc"].iloc[-100]
    sql = as_of_sql(wave1_dsn, AsOfOptions(columns=tuple(COLUMNS)), "window")
    with psycopg.connect(wave1_dsn) as conn:
        conn.execute("delete from features.volume_features where pair = 'EURUSD' and ts_utc > %s", (cut,))
        conn.execute(
            "create temp table bqx_as_of_events (pair text, event_time timestamptz, bqx_event_ordinal bigint) on commit drop"
        )
        times = [cut + MINUTE, cut + 2 * MINUTE, eurusd["ts_utc"].iloc[-1] + MINUTE]
        conn.execute(
            "insert into bqx_as_of_events select 'EURUSD', t, ordinal from unnest(%s::timestamptz[]) with ordinality as e (t, ordinal)",
            ([t.to_pydatetime() for t in times],),
        )
        rows = conn.execute(f"select event_time, feature_ts_utc, feature_missing_reason, bqx_w15 from ({sql}) as r order by 1").fetchall()
        conn.rollback()
    assert rows[0][1] == cut.to_pydatetime() and rows[0][2] is None and rows[0][3] is not None
    assert [r[2] for r in rows[1:]] == ["not_built", "not_built"]
    assert all(r[1] is None and r[3] is None for r in rows[1:])


@pytest.fixture(scope="module")
def moved_dsn(database_factory: Callable[[str], str], dbt_runner: Callable[..., None], fixture_bars: pd.DataFrame) -> str:
    """The fixture's bars with every price from MOVED_FROM on moved by 1 %, built."""
    dsn = database_factory("as_of_moved")
    moved = fixture_bars.copy()
    later = moved["ts_utc"] >= MOVED_FROM
    moved.loc[later, ["open", "high", "low", "close"]] *= 1.01
    load_frame(dsn, moved, "moved bars")
    dbt_runner(dsn, "run", "--select", "tag:wave1")
    return dsn


MOVED_FROM = pd.Timestamp("2024-07-05 10:00", tz="UTC")


@pytest.mark.parametrize("method", ["index", "mirror"])
def test_moving_a_bar_changes_no_earlier_event(
    wave1_dsn: str, moved_dsn: str, fixture_features: pd.DataFrame, method: str, tmp_path: Path
) -> None:
    """Events before the close of the first moved bar get exactly the same features with or
    without the move; events after it see it (so the comparison has teeth)."""
    events = _events(fixture_features, seed=3)
    closes_of_moved = MOVED_FROM + MINUTE
    original = as_of(events, COLUMNS, MAX_AGE, dsn=wave1_dsn, method=method, mirror_dir=tmp_path)
    moved = as_of(events, COLUMNS, MAX_AGE, dsn=moved_dsn, method=method, mirror_dir=tmp_path)
    earlier = (events["event_time"] < closes_of_moved).to_numpy()
    assert earlier.sum() > 100 and (~earlier).sum() > 100
    for column in COLUMNS:
        a, b = original[column].to_numpy(dtype=float), moved[column].to_numpy(dtype=float)
        assert np.array_equal(a[earlier], b[earlier], equal_nan=True), f"{column} of an earlier event moved"
    later_differs = ~np.isclose(original["bqx_reg_a_w60"], moved["bqx_reg_a_w60"], rtol=0, atol=0, equal_nan=True)
    assert later_differs[~earlier].any() and not later_differs[earlier].any()


def test_features_latest_is_each_pairs_newest_built_row(wave1_dsn: str, fixture_features: pd.DataFrame) -> None:
    latest = query_frame(
        wave1_dsn, f"select pair, ts_utc, known_at, age, {', '.join(COLUMNS)} from marts.features_latest order by pair"
    )
    newest = fixture_features.sort_values("ts_utc").groupby("pair").tail(1).sort_values("pair").reset_index(drop=True)
    assert latest["pair"].tolist() == newest["pair"].tolist() == sorted(FIXTURE_PAIRS)
    assert (pd.to_datetime(latest["ts_utc"], utc=True) == newest["ts_utc"]).all()
    assert (pd.to_datetime(latest["known_at"], utc=True) == newest["ts_utc"] + MINUTE).all()
    assert (pd.to_timedelta(latest["age"]) > pd.Timedelta(0)).all()
    for column in COLUMNS:
        assert np.array_equal(pd.to_numeric(latest[column]).to_numpy(float), newest[column].to_numpy(float), equal_nan=True)


def test_a_pair_behind_in_one_model_shows_its_last_row_built_everywhere(wave1_dsn: str, fixture_features: pd.DataFrame) -> None:
    """features_latest never shows a row one feature model lacks (checked in a rolled-back transaction)."""
    eurusd = fixture_features[fixture_features["pair"] == "EURUSD"]
    cut = eurusd["ts_utc"].iloc[-30]
    with psycopg.connect(wave1_dsn) as conn:
        conn.execute("delete from features.reg_bqx where pair = 'EURUSD' and ts_utc > %s", (cut,))
        row = conn.execute("select ts_utc, bqx_reg_a_w60 from marts.features_latest where pair = 'EURUSD'").fetchone()
        conn.rollback()
    assert row[0] == cut.to_pydatetime()
    assert row[1] == eurusd["bqx_reg_a_w60"].iloc[-30]


def test_bqx_features_writes_the_joined_events(tmp_path: Path, wave1_dsn: str, fixture_features: pd.DataFrame) -> None:
    """`bqx features --events FILE --out FILE` as a user runs it: the same rows as as_of, and a
    bad events file is a one-line error naming it (exit 2), with no output left behind."""
    from test_cli import bqx_env, run_bqx

    env = bqx_env(tmp_path, wave1_dsn)
    events = _events(fixture_features, seed=5)
    events_path, out = tmp_path / "events.parquet", tmp_path / "joined.parquet"
    events.to_parquet(events_path)
    done = run_bqx(["features", "--events", str(events_path), "--out", str(out), "--columns", *COLUMNS, "--max-age", "5min"], env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "events" in done.stdout and "with features" in done.stdout
    _assert_equal(pd.read_parquet(out), reference(events, fixture_features))

    unknown = events.assign(pair=events["pair"].where(events.index != 3, "EURXXX"))
    unknown.to_parquet(events_path)
    bad_out = tmp_path / "bad.parquet"
    done = run_bqx(["features", "--events", str(events_path), "--out", str(bad_out)], env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "EURXXX" in done.stderr
    assert not bad_out.exists() and not list(tmp_path.glob(".bad.parquet*"))


def _mirror_and_sql(dsn: str, events: pd.DataFrame, mirror_dir: Path, columns: list[str] | None = COLUMNS) -> tuple[pa.Table, pa.Table]:
    arrow_events = pa.Table.from_pandas(events, preserve_index=False)
    mirrored = as_of(arrow_events, columns, MAX_AGE, dsn=dsn, method="mirror", mirror_dir=mirror_dir)
    probed = as_of(arrow_events, columns, MAX_AGE, dsn=dsn, method="index")
    return mirrored, probed


def test_mirror_gives_the_sql_result_bit_for_bit(wave1_dsn: str, fixture_features: pd.DataFrame, tmp_path: Path) -> None:
    """The columnar mirror answers with the same Arrow table as the macro (types, NULLs, values,
    order), for every feature column (booleans and integers too), twice: filling it, then from it;
    asking for more columns later widens a file without losing the ones it held; its folder is
    the user's own."""
    events = _events(fixture_features, seed=13)
    no_bars = pd.DataFrame({"pair": ["AUDNZD"], "event_time": [fixture_features["ts_utc"].iloc[100]], "label": ["no bars"]})
    events = pd.concat([events, no_bars], ignore_index=True)  # a pair the database holds no bar of
    mirrored, probed = _mirror_and_sql(wave1_dsn, events, tmp_path / "mirror", columns=None)
    assert mirrored.schema == probed.schema and mirrored.equals(probed)
    again, _ = _mirror_and_sql(wave1_dsn, events, tmp_path / "mirror", columns=None)
    assert again.equals(probed)
    narrow_dir = tmp_path / "narrow"
    first, _ = _mirror_and_sql(wave1_dsn, events, narrow_dir, columns=COLUMNS[:2])
    wider, probed_wider = _mirror_and_sql(wave1_dsn, events, narrow_dir, columns=COLUMNS)
    assert wider.equals(probed_wider) and first.select(COLUMNS[:2]).equals(wider.select(COLUMNS[:2]))
    folders = [narrow_dir, *narrow_dir.iterdir()]
    assert all(folder.stat().st_mode & 0o777 == 0o700 for folder in folders)
    with pytest.raises(RetrievalError, match="'no_such_feature' is not a column of feature_matrix"):
        as_of(events, ["no_such_feature"], dsn=wave1_dsn, method="mirror", mirror_dir=tmp_path / "mirror")
    blocked = tmp_path / "read-only"
    blocked.mkdir(mode=0o500)
    if os.geteuid() != 0:  # root writes anyway
        with pytest.raises(RetrievalError, match=r"cannot make the mirror's folder .*use --method index"):
            as_of(events, COLUMNS, dsn=wave1_dsn, method="mirror", mirror_dir=blocked / "mirror")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(RetrievalError, match=r"cannot make the mirror's folder"):
        as_of(events, COLUMNS, dsn=wave1_dsn, method="mirror", mirror_dir=tmp_path / "a-file" / "mirror")
    assert AsOfOptions().method_for(False, MIRROR_MIN_EVENTS) == "mirror"
    assert AsOfOptions().method_for(False, MIRROR_MIN_EVENTS - 1) == "index"
    assert AsOfOptions().method_for(True, 10 * MIRROR_MIN_EVENTS) == "window"


def test_mirror_follows_corrections_and_deletions(
    moved_dsn: str, dbt_runner: Callable[..., None], fixture_bars: pd.DataFrame, tmp_path: Path
) -> None:
    """The mirror is never stale: after a corrected bar is loaded and built, and after a model's
    last rows are deleted by hand (not_built), it answers what the tables hold, as the SQL does.
    Runs last in this file: it changes moved_dsn's bars."""
    mirror_dir = tmp_path / "mirror"
    features = _bars(moved_dsn)
    corrected_at = pd.Timestamp("2024-07-03 12:00", tz="UTC")
    after_it = pd.DataFrame({"pair": "EURUSD", "event_time": corrected_at + MINUTE * np.arange(1, 61), "label": "after"})
    events = pd.concat([_events(features, seed=17), after_it], ignore_index=True)
    before, probed = _mirror_and_sql(moved_dsn, events, mirror_dir)
    assert before.equals(probed)

    corrected = fixture_bars[(fixture_bars["pair"] == "EURUSD") & (fixture_bars["ts_utc"] == corrected_at)].copy()
    corrected[["open", "high", "low", "close"]] *= 1.03
    load_frame(moved_dsn, corrected, "correction")
    dbt_runner(moved_dsn, "run", "--select", "tag:wave1")
    after, probed = _mirror_and_sql(moved_dsn, events, mirror_dir)
    assert after.equals(probed)
    for column in ("bqx_w15", "bqx_reg_a_w60"):
        old, new = (table.column(column).to_numpy(zero_copy_only=False) for table in (before, after))
        assert not np.array_equal(old, new, equal_nan=True), f"the correction reached {column}"

    eurusd = features[features["pair"] == "EURUSD"]
    with psycopg.connect(moved_dsn) as conn:
        conn.execute("delete from features.volume_features where pair = 'EURUSD' and ts_utc > %s", (eurusd["ts_utc"].iloc[-100],))
    deleted, probed = _mirror_and_sql(moved_dsn, events, mirror_dir)
    assert deleted.equals(probed)
    assert "not_built" in deleted.column("feature_missing_reason").to_pylist()


def test_mirror_read_again_when_a_file_changes_under_it(
    wave1_dsn: str, fixture_features: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mirror file replaced after its stamp was read (another retrieval, after a newer build) is
    never read under the old stamp: the chunk is planned again; a file that keeps changing is an
    error, not a mix of two snapshots."""
    from bqx import feature_mirror

    events = _events(fixture_features, seed=19)
    expected = as_of(events, COLUMNS, MAX_AGE, dsn=wave1_dsn, method="index")
    calls = {"n": 0}
    real_join = feature_mirror.join_chunk

    def flaky_join(*args: object, **kwargs: object) -> pa.Table:
        calls["n"] += 1
        if calls["n"] == 1:
            raise feature_mirror.MirrorChanged("staging.m1_index EURUSD")
        return real_join(*args, **kwargs)

    monkeypatch.setattr(feature_mirror, "join_chunk", flaky_join)
    got = as_of(events, COLUMNS, MAX_AGE, dsn=wave1_dsn, method="mirror", mirror_dir=tmp_path)
    assert calls["n"] == 2
    pd.testing.assert_frame_equal(got, expected, check_exact=True)

    def always_changed(*args: object, **kwargs: object) -> pa.Table:
        raise feature_mirror.MirrorChanged("staging.m1_index EURUSD")

    monkeypatch.setattr(feature_mirror, "join_chunk", always_changed)
    with pytest.raises(RetrievalError, match="kept changing"):
        as_of(events, COLUMNS, MAX_AGE, dsn=wave1_dsn, method="mirror", mirror_dir=tmp_path)
    monkeypatch.undo()
    folder = next(tmp_path.glob("db-*"))
    with pytest.raises(feature_mirror.MirrorChanged):
        feature_mirror.read_mirror(folder, "staging.m1_index", "EURUSD", [], stamp="an older stamp")


def test_mirror_follows_no_planted_link_and_no_other_owner(wave1_dsn: str, fixture_features: pd.DataFrame, tmp_path: Path) -> None:
    """bqx may run as root: a mirror file replaced by a symlink (to a file someone wants written
    or read) is refused, never followed, and the file it points to is untouched; so is a file or
    a folder of another account. Files are the user's alone (0600)."""
    events = _events(fixture_features, seed=23)
    as_of(events, COLUMNS, MAX_AGE, dsn=wave1_dsn, method="mirror", mirror_dir=tmp_path / "mirror")
    folder = next((tmp_path / "mirror").glob("db-*"))
    files = sorted(folder.rglob("*.arrow"))
    assert files and all(path.stat().st_mode & 0o777 == 0o600 for path in files)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    target = folder / "staging.m1_index" / "pair=EURUSD.arrow"
    target.unlink()
    target.symlink_to(victim)
    with pytest.raises(RetrievalError, match=r"not safe to use: .*symlink"):
        as_of(events, COLUMNS, MAX_AGE, dsn=wave1_dsn, method="mirror", mirror_dir=tmp_path / "mirror")
    assert victim.read_bytes() == b"precious"
    target.unlink()
    if os.geteuid() == 0:  # only root can hand a file or a folder to another account
        other = folder / "features.bqx" / "pair=EURUSD.arrow"
        os.chown(other, 65534, 65534)
        with pytest.raises(RetrievalError, match=r"belongs to uid 65534"):
            as_of(events, COLUMNS, MAX_AGE, dsn=wave1_dsn, method="mirror", mirror_dir=tmp_path / "mirror")
        other.unlink()
        os.chown(folder, 65534, 65534)
        with pytest.raises(RetrievalError, match=r"cannot make the mirror's folder .*belongs to uid 65534"):
            as_of(events, COLUMNS, MAX_AGE, dsn=wave1_dsn, method="mirror", mirror_dir=tmp_path / "mirror")
        os.chown(folder, 0, 0)
    again = as_of(events, COLUMNS, MAX_AGE, dsn=wave1_dsn, method="mirror", mirror_dir=tmp_path / "mirror")
    pd.testing.assert_frame_equal(again, as_of(events, COLUMNS, MAX_AGE, dsn=wave1_dsn, method="index"), check_exact=True)


def test_a_mirror_too_big_for_its_disk_is_refused_or_skipped(
    wave1_dsn: str, fixture_features: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Filling the mirror may take only a share of its disk's free space: asked for, the mirror
    then refuses with a one-line reason; chosen by `auto`, the retrieval reads the tables instead
    (the same result), and nothing is written."""
    import bqx.features as features

    events = _events(fixture_features, seed=29)
    monkeypatch.setattr(features, "MIRROR_DISK_SHARE", {"auto": 1e-12, "mirror": 1e-12})
    with pytest.raises(RetrievalError, match=r"^the mirror would need about .* GiB free: ask for fewer --columns"):
        as_of(events, COLUMNS, MAX_AGE, dsn=wave1_dsn, method="mirror", mirror_dir=tmp_path / "mirror")
    monkeypatch.setattr(features, "MIRROR_MIN_EVENTS", 1)
    assert features.AsOfOptions().method_for(False, len(events)) == "mirror"
    got = as_of(events, COLUMNS, MAX_AGE, dsn=wave1_dsn, mirror_dir=tmp_path / "mirror")
    pd.testing.assert_frame_equal(got, as_of(events, COLUMNS, MAX_AGE, dsn=wave1_dsn, method="index"), check_exact=True)
    assert not list((tmp_path / "mirror").rglob("*.arrow"))
