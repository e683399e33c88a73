"""time_features against Python's zoneinfo, on both sides of the 2024 daylight-saving changes
of New York, London and Sydney, and the same values whatever the session TimeZone."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from bqx.load import load_frame
from conftest import query_frame

# (city, zone, open hour, close hour): the contract's sessions, [open, close) local, Mon-Fri local.
SESSIONS: list[tuple[str, str, int, int]] = [
    ("sydney", "Australia/Sydney", 7, 16),
    ("tokyo", "Asia/Tokyo", 9, 18),
    ("london", "Europe/London", 8, 17),
    ("new_york", "America/New_York", 8, 17),
]
OVERLAPS: list[tuple[str, str]] = [("sydney", "tokyo"), ("tokyo", "london"), ("london", "new_york")]

# The 2024 daylight-saving changes (all on a Sunday, local date).
DST_CHANGES: list[dt.date] = [
    dt.date(2024, 3, 10),  # New York: EST -> EDT
    dt.date(2024, 11, 3),  # New York: EDT -> EST
    dt.date(2024, 3, 31),  # London: GMT -> BST
    dt.date(2024, 10, 27),  # London: BST -> GMT
    dt.date(2024, 4, 7),  # Sydney: AEDT -> AEST
    dt.date(2024, 10, 6),  # Sydney: AEST -> AEDT
]
BASELINE_VARS = '{"baseline_date": "2024-01-01"}'


def dst_bars() -> pd.DataFrame:
    """Every minute (weekends included: the model must say "closed") from the Thursday before
    to the Monday after each change, in UTC, as bars of one pair."""
    ts = pd.DatetimeIndex([], tz="UTC")
    for change in DST_CHANGES:
        start = pd.Timestamp(change - dt.timedelta(days=3), tz="UTC")
        ts = ts.union(pd.date_range(start, start + pd.Timedelta(days=5), freq="min", inclusive="left"))
    n = len(ts)
    return pd.DataFrame(
        {
            "pair": "EURUSD",
            "ts_utc": ts,
            "open": 1.1,
            "high": 1.1,
            "low": 1.1,
            "close": 1.1,
            "volume": np.ones(n, dtype=np.int64),
            "spread": 0.0001,
        }
    )


def expected_time_features(ts: pd.Series) -> pd.DataFrame:
    """The contract computed with zoneinfo (Python's own copy of the tz database)."""
    rows = []
    for stamp in ts:
        utc = stamp.to_pydatetime().astimezone(dt.timezone.utc)
        minute_of_day = utc.hour * 60 + utc.minute
        row: dict[str, object] = {
            "hour": utc.hour,
            "minute_of_day": minute_of_day,
            "day_of_week": utc.isoweekday(),
            "hour_sin": np.sin(2 * np.pi * minute_of_day / 1440),
            "hour_cos": np.cos(2 * np.pi * minute_of_day / 1440),
            "dow_sin": np.sin(2 * np.pi * (utc.isoweekday() - 1) / 7),
            "dow_cos": np.cos(2 * np.pi * (utc.isoweekday() - 1) / 7),
        }
        for city, zone, open_hour, close_hour in SESSIONS:
            local = utc.astimezone(ZoneInfo(zone))
            is_open = local.isoweekday() <= 5 and open_hour <= local.hour < close_hour
            row[f"session_{city}"] = is_open
            row[f"minutes_into_{city}"] = (local.hour - open_hour) * 60 + local.minute if is_open else None
        for a, b in OVERLAPS:
            row[f"session_overlap_{a}_{b}"] = row[f"session_{a}"] and row[f"session_{b}"]
        row["sessions_open"] = sum(bool(row[f"session_{city}"]) for city, *_ in SESSIONS)
        rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def dst_dsn(database_factory: Callable[[str], str], dbt_runner: Callable[..., None]) -> str:
    """time_features built (and its dbt tests run) on the DST bars, under PGTZ=Asia/Kolkata."""
    dsn = database_factory("timefeatures")
    load_frame(dsn, dst_bars(), "dst bars")
    dbt_runner(dsn, "build", "--select", "+time_features", "--vars", BASELINE_VARS)
    return dsn


def _built(dsn: str) -> pd.DataFrame:
    return query_frame(dsn, "select * from features.time_features order by pair, ts_utc")


def test_time_features_match_zoneinfo(dst_dsn: str) -> None:
    built = _built(dst_dsn)
    assert len(built) == len(dst_bars())
    expected = expected_time_features(built["ts_utc"])
    for column in expected.columns:
        got, want = built[column], expected[column]
        if column.endswith(("_sin", "_cos")):
            np.testing.assert_allclose(got.astype(float), want.astype(float), rtol=0, atol=1e-15, err_msg=column)
        else:
            mismatch = ~((got == want) | (got.isna() & want.isna()))
            assert not mismatch.any(), (
                f"{column}: {built.loc[mismatch, 'ts_utc'].head(3).tolist()} "
                f"got {got[mismatch].head(3).tolist()} want {want[mismatch].head(3).tolist()}"
            )


@pytest.mark.parametrize(
    ("utc", "city", "minutes_into"),
    [
        # New York opens 13:00 UTC in winter (EST), 12:00 UTC in summer (EDT)
        ("2024-03-08 12:59", "new_york", None),
        ("2024-03-08 13:00", "new_york", 0),
        ("2024-03-11 11:59", "new_york", None),
        ("2024-03-11 12:00", "new_york", 0),
        ("2024-11-01 12:00", "new_york", 0),
        ("2024-11-04 12:00", "new_york", None),
        ("2024-11-04 13:00", "new_york", 0),
        ("2024-11-04 21:59", "new_york", 539),
        ("2024-11-04 22:00", "new_york", None),
        # London opens 08:00 UTC in winter (GMT), 07:00 UTC in summer (BST)
        ("2024-03-29 07:00", "london", None),
        ("2024-03-29 08:00", "london", 0),
        ("2024-04-01 07:00", "london", 0),
        ("2024-10-25 07:00", "london", 0),
        ("2024-10-28 07:00", "london", None),
        ("2024-10-28 08:00", "london", 0),
        ("2024-03-30 10:00", "london", None),  # Saturday
        # Sydney: Monday 07:00 local is Sunday 20:00 UTC in summer (AEDT), 21:00 UTC in winter
        ("2024-04-04 20:00", "sydney", 0),  # Friday 07:00 AEDT
        ("2024-04-05 04:59", "sydney", 539),  # Friday 15:59 AEDT
        ("2024-04-05 05:00", "sydney", None),
        ("2024-04-07 20:59", "sydney", None),  # Monday 06:59 AEST
        ("2024-04-07 21:00", "sydney", 0),  # Monday 07:00 AEST
        ("2024-10-03 21:00", "sydney", 0),  # Friday 07:00 AEST
        ("2024-10-06 19:59", "sydney", None),  # Monday 06:59 AEDT
        ("2024-10-06 20:00", "sydney", 0),  # Monday 07:00 AEDT
        ("2024-04-06 21:00", "sydney", None),  # Sunday 07:00 AEST: weekend in Sydney
        # Tokyo has no daylight saving: 09:00 JST = 00:00 UTC
        ("2024-03-11 00:00", "tokyo", 0),
        ("2024-03-10 00:00", "tokyo", None),  # Sunday
        ("2024-03-08 08:59", "tokyo", 539),
    ],
)
def test_session_edges_around_daylight_saving(dst_dsn: str, utc: str, city: str, minutes_into: int | None) -> None:
    """Hand-checked session edges (independent of zoneinfo too)."""
    row = query_frame(
        dst_dsn,
        f"select session_{city} as is_open, minutes_into_{city} as minutes_into "
        "from features.time_features where ts_utc = %s",
        (pd.Timestamp(utc, tz="UTC").to_pydatetime(),),
    )
    assert len(row) == 1
    assert bool(row["is_open"].iloc[0]) == (minutes_into is not None)
    got = row["minutes_into"].iloc[0]
    assert (got is None or pd.isna(got)) if minutes_into is None else int(got) == minutes_into


def test_same_values_under_another_session_timezone(
    dst_dsn: str,
    database_factory: Callable[[str], str],
    dbt_runner: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Built under America/Los_Angeles (which has its own DST dates) instead of Asia/Kolkata:
    identical rows. The rows are also read back in a Los Angeles session."""
    monkeypatch.setenv("PGTZ", "America/Los_Angeles")
    dsn = database_factory("timefeatures_la")
    load_frame(dsn, dst_bars(), "dst bars")
    dbt_runner(dsn, "run", "--select", "+time_features", "--vars", BASELINE_VARS)
    pd.testing.assert_frame_equal(_built(dsn), _built(dst_dsn))
    import psycopg

    with psycopg.connect(dsn) as conn:
        conn.execute("set time zone 'America/Los_Angeles'")
        hours = conn.execute(
            "select count(*) filter (where hour <> extract(hour from ts_utc at time zone 'UTC')), count(*) "
            "from features.time_features"
        ).fetchone()
    assert hours[0] == 0 and hours[1] > 0


def test_fixture_build_has_sessions(wave1_dsn: str) -> None:
    """On the wave-1 fixture (summer 2024): London opens at 07:00 UTC and every flag is set somewhere."""
    frame = query_frame(
        wave1_dsn,
        "select min(minute_of_day) filter (where session_london) as london_open, "
        "bool_or(session_overlap_london_new_york) as ln, bool_or(session_overlap_tokyo_london) as tl, "
        "bool_or(session_overlap_sydney_tokyo) as st, max(sessions_open) as most "
        "from features.time_features",
    )
    row = frame.iloc[0]
    assert row["london_open"] == 7 * 60
    assert row["ln"] and row["tl"] and row["st"]
    assert row["most"] == 2
