"""The synthetic bar generator: consistent cross rates, valid bars, the market calendar,
determinism, realistic volatility, and the three file formats. No database needed."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bqx.generate import (
    COLUMNS,
    CURRENCIES,
    PAIRS,
    generate_bars,
    generate_command,
    generate_factors,
    write_bars,
)

SPEC_PAIRS = (
    "EURGBP EURAUD EURNZD EURUSD EURCAD EURCHF EURJPY GBPAUD GBPNZD GBPUSD GBPCAD GBPCHF GBPJPY "
    "AUDNZD AUDUSD AUDCAD AUDCHF AUDJPY NZDUSD NZDCAD NZDCHF NZDJPY USDCAD USDCHF USDJPY CADCHF "
    "CADJPY CHFJPY"
).split()

# Thursday to Tuesday: a full weekday, the Friday close, the weekend, the Sunday open, a Monday.
START, END = dt.date(2024, 7, 4), dt.date(2024, 7, 9)
# Rounding to 5 decimals (3 for JPY) moves a quote by at most ~1e-5 relative: three quotes
# in a triangle stay well below this; an independently generated pair is far above it.
CROSS_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    return generate_bars(START, END)


def closes(bars: pd.DataFrame) -> pd.DataFrame:
    """Closes per minute (rows) and pair (columns), minutes where every pair has a bar."""
    wide = bars.assign(pair=bars["pair"].astype(str)).pivot(index="ts_utc", columns="pair", values="close")
    return wide.dropna()


def rate(wide: pd.DataFrame, base: str, quote: str) -> pd.Series:
    """BASE/QUOTE from the quoted pair in either direction."""
    if base + quote in wide.columns:
        return wide[base + quote]
    return 1.0 / wide[quote + base]


def worst_triangle_error(wide: pd.DataFrame) -> float:
    """Largest relative gap of a/c against a/b × b/c over every triangle of currencies."""
    worst = 0.0
    for a, b, c in itertools.permutations(CURRENCIES, 3):
        implied = rate(wide, a, b) * rate(wide, b, c)
        worst = max(worst, float((implied / rate(wide, a, c) - 1.0).abs().max()))
    return worst


def test_pairs_and_currencies() -> None:
    assert PAIRS == tuple(SPEC_PAIRS)
    assert CURRENCIES == ("EUR", "GBP", "AUD", "NZD", "USD", "CAD", "CHF", "JPY")


def test_columns_and_order(bars: pd.DataFrame) -> None:
    assert list(bars.columns) == list(COLUMNS)
    assert list(bars["pair"].astype(str).unique()) == SPEC_PAIRS
    assert str(bars["ts_utc"].dt.tz) == "UTC"
    for _, group in bars.groupby("pair", observed=True):
        assert group["ts_utc"].is_monotonic_increasing and group["ts_utc"].is_unique
    assert bars["ts_utc"].min() >= pd.Timestamp(START, tz="UTC")
    assert bars["ts_utc"].max() < pd.Timestamp(END, tz="UTC")
    assert bars["volume"].dtype == np.int64


def test_cross_rates_are_consistent(bars: pd.DataFrame) -> None:
    wide = closes(bars)
    assert len(wide) > 3000
    assert worst_triangle_error(wide) < CROSS_TOLERANCE
    # the headline triangle, explicitly
    eurjpy = wide["EURUSD"] * wide["USDJPY"]
    assert float((eurjpy / wide["EURJPY"] - 1).abs().max()) < CROSS_TOLERANCE


def test_every_pair_follows_the_factor_model(bars: pd.DataFrame) -> None:
    factors = generate_factors(START, END)
    assert list(factors.columns) == list(CURRENCIES)
    for pair, group in bars.groupby("pair", observed=True):
        f = factors.loc[group["ts_utc"]]
        model = np.exp(f[pair[:3]].to_numpy() - f[pair[3:]].to_numpy())
        half_tick = 0.5 * (1e-3 if pair.endswith("JPY") else 1e-5)
        assert np.abs(group["close"].to_numpy() - model).max() <= half_tick * (1 + 1e-9), pair


def test_an_independently_generated_pair_is_caught(bars: pd.DataFrame) -> None:
    """The consistency check has teeth: EURJPY from another seed (same starting level, its own
    random walk) breaks the triangles by far more than rounding."""
    independent = generate_bars(START, END, ["EURJPY"], seed=12345)
    tampered = pd.concat([bars[bars["pair"] != "EURJPY"], independent], ignore_index=True)
    assert worst_triangle_error(closes(tampered)) > 10 * CROSS_TOLERANCE


def test_bars_are_valid(bars: pd.DataFrame) -> None:
    o, h, lo, c = (bars[k].to_numpy() for k in ("open", "high", "low", "close"))
    assert (lo > 0).all()
    assert (lo <= o).all() and (lo <= c).all() and (o <= h).all() and (c <= h).all()
    assert (h > lo).mean() > 0.5  # bars have a range, not just a price
    assert (bars["volume"] >= 0).all()
    assert bars["spread"].notna().all() and (bars["spread"] >= 0).all()
    ts = bars["ts_utc"]
    assert (ts.dt.second == 0).all() and (ts.dt.microsecond == 0).all()
    # prices are quotes: 5 decimals, 3 for JPY pairs
    for pair, group in bars.groupby("pair", observed=True):
        scale = 1e3 if pair.endswith("JPY") else 1e5
        ticks = group[["open", "high", "low", "close"]].to_numpy() * scale
        assert np.abs(ticks - np.round(ticks)).max() < 1e-6, pair


def test_calendar(bars: pd.DataFrame) -> None:
    ts = bars["ts_utc"]
    minute = ts.dt.hour * 60 + ts.dt.minute
    weekday = ts.dt.day_of_week
    closed = ((weekday == 4) & (minute >= 22 * 60)) | (weekday == 5) | ((weekday == 6) & (minute < 22 * 60))
    assert not closed.any()
    # the market trades right up to the Friday close and from the Sunday open
    assert ((weekday == 4) & (minute >= 21 * 60 + 50)).any()
    assert ((weekday == 6) & (minute < 22 * 60 + 10)).any()
    # Thu 1440 + Fri 1320 + Sun 120 + Mon 1440 open minutes per pair; a few are missing
    open_minutes = 1440 + 1320 + 120 + 1440
    counts = bars.groupby("pair", observed=True).size()
    missing = open_minutes - counts
    assert (missing >= 0).all()
    assert missing.sum() > 0
    assert (missing / open_minutes < 0.01).all()
    assert missing.nunique() > 1 or missing.iloc[0] == 0  # independent per pair


def test_deterministic_and_independent_of_request(bars: pd.DataFrame) -> None:
    again = generate_bars(START, END)
    pd.testing.assert_frame_equal(bars, again)

    subset = generate_bars(START, END, ["USDJPY", "eurusd"])  # any order, any case
    expected = bars[bars["pair"].isin(["EURUSD", "USDJPY"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(subset, expected)

    shorter = generate_bars(START, dt.date(2024, 7, 6), ["EURUSD"])
    longer = generate_bars(START, END, ["EURUSD"])
    pd.testing.assert_frame_equal(shorter, longer.iloc[: len(shorter)])
    assert len(longer) > len(shorter) > 0

    # a later start gives the same bars: ranges can be generated month by month
    later = generate_bars(dt.date(2024, 7, 8), END, ["EURUSD"])
    tail = longer[longer["ts_utc"] >= pd.Timestamp("2024-07-08", tz="UTC")].reset_index(drop=True)
    pd.testing.assert_frame_equal(later, tail)

    other_seed = generate_bars(START, END, ["EURUSD"], seed=1)
    assert not np.array_equal(other_seed["close"].to_numpy()[:100], longer["close"].to_numpy()[:100])


def test_unknown_pair_and_bad_range() -> None:
    with pytest.raises(ValueError, match="EURXYZ"):
        generate_bars(START, END, ["EURUSD", "EURXYZ"])
    with pytest.raises(ValueError):
        generate_bars(END, START)
    empty = generate_bars(START, START)
    assert list(empty.columns) == list(COLUMNS) and empty.empty


def test_realistic_levels_volatility_and_seasonality(bars: pd.DataFrame) -> None:
    first = bars.groupby("pair", observed=True)["close"].first()
    assert 0.9 < first["EURUSD"] < 1.3 and 130 < first["USDJPY"] < 190 and 1.0 < first["GBPUSD"] < 1.5

    returns = []
    for pair, group in bars.groupby("pair", observed=True):
        r = np.diff(np.log(group["close"].to_numpy()))
        step = np.diff(group["ts_utc"].to_numpy()) == np.timedelta64(60, "s")
        hour = group["ts_utc"].dt.hour.to_numpy()[1:]
        returns.append(pd.DataFrame({"pair": pair, "r": r[step], "hour": hour[step]}))
    returns = pd.concat(returns)

    eurusd = returns[returns["pair"] == "EURUSD"]
    assert 2e-5 < eurusd["r"].std() < 3e-4
    per_pair = returns.groupby("pair")["r"].std()
    assert (per_pair > 1e-5).all() and (per_pair < 5e-4).all()

    busy = returns[(returns["hour"] >= 13) & (returns["hour"] < 16)]["r"].abs().mean()
    quiet = returns[returns["hour"] < 5]["r"].abs().mean()
    assert busy > 1.4 * quiet
    eurusd_busy = eurusd[(eurusd["hour"] >= 13) & (eurusd["hour"] < 16)]["r"].abs().mean()
    assert eurusd_busy > 1.2 * eurusd[eurusd["hour"] < 5]["r"].abs().mean()


def test_volume_and_spread_follow_the_sessions(bars: pd.DataFrame) -> None:
    eurusd = bars[bars["pair"] == "EURUSD"]
    hour = eurusd["ts_utc"].dt.hour
    busy, quiet = (hour >= 13) & (hour < 16), hour < 5
    assert eurusd.loc[busy, "volume"].mean() > 1.5 * eurusd.loc[quiet, "volume"].mean()
    assert eurusd.loc[busy, "spread"].median() < eurusd.loc[quiet, "spread"].median()

    pips = eurusd["spread"] / 1e-4
    assert 0.5 < pips[busy].median() < 1.5
    spread = bars.groupby("pair", observed=True)["spread"].median()
    assert 0.005 < spread["USDJPY"] < 0.03  # JPY pairs in 0.01 units
    assert spread["GBPNZD"] > spread["EURUSD"]  # crosses are wider
    # the 22:00 UTC rollover is the widest time of day
    rollover = (eurusd["ts_utc"].dt.hour == 22) & (eurusd["ts_utc"].dt.minute < 5)
    assert eurusd.loc[rollover, "spread"].median() > 2 * eurusd["spread"].median()


def read_csv_bars(paths: list[Path]) -> pd.DataFrame:
    frame = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    frame["ts_utc"] = pd.to_datetime(frame["ts_utc"], utc=True).dt.as_unit("us")
    return frame


def as_plain(bars: pd.DataFrame) -> pd.DataFrame:
    return bars.assign(pair=bars["pair"].astype(str).astype(object)).reset_index(drop=True)


@pytest.fixture(scope="module")
def month_end_bars() -> pd.DataFrame:
    """Two pairs across the June/July boundary (the UTC month and the EST month differ)."""
    return generate_bars(dt.date(2024, 6, 27), dt.date(2024, 7, 3), ["EURUSD", "USDJPY"])


def test_write_csv_round_trip(month_end_bars: pd.DataFrame, tmp_path: Path) -> None:
    paths = write_bars(month_end_bars, tmp_path, "csv")
    assert [p.name for p in paths] == ["EURUSD_2024_06.csv", "EURUSD_2024_07.csv", "USDJPY_2024_06.csv", "USDJPY_2024_07.csv"]
    with open(paths[1]) as f:
        assert f.readline() == "pair,ts_utc,open,high,low,close,volume,spread\n"
        assert f.readline().startswith("EURUSD,2024-07-01T00:00:00Z,")
    back = read_csv_bars(paths)
    expected = as_plain(month_end_bars)
    pd.testing.assert_frame_equal(back.astype({"pair": object}), expected, check_dtype=False)
    assert (back[["open", "high", "low", "close", "spread"]] == expected[["open", "high", "low", "close", "spread"]]).all().all()
    for path in paths:  # every file holds its own pair and UTC month only
        part = pd.read_csv(path)
        assert set(part["pair"]) == {path.name[:6]}
        assert set(part["ts_utc"].str[:7]) == {path.name[7:11] + "-" + path.name[12:14]}


def test_write_csv_null_spread(month_end_bars: pd.DataFrame, tmp_path: Path) -> None:
    with_nulls = month_end_bars.copy()
    with_nulls.loc[with_nulls.index[:5], "spread"] = None
    paths = write_bars(with_nulls, tmp_path, "csv")
    line = Path(paths[0]).read_text().splitlines()[1]
    assert line.endswith(",")  # empty field
    back = read_csv_bars(paths)
    assert back["spread"].isna().sum() == 5


def test_write_parquet_round_trip(month_end_bars: pd.DataFrame, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    paths = write_bars(month_end_bars, tmp_path, "parquet")
    assert [p.name for p in paths] == [
        "EURUSD_2024_06.parquet", "EURUSD_2024_07.parquet", "USDJPY_2024_06.parquet", "USDJPY_2024_07.parquet"
    ]  # fmt: skip
    schema = pq.read_schema(paths[0])
    assert schema.names == list(COLUMNS)
    assert str(schema.field("ts_utc").type) == "timestamp[us, tz=UTC]"
    back = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    pd.testing.assert_frame_equal(back.astype({"pair": object}), as_plain(month_end_bars))


def test_write_histdata(month_end_bars: pd.DataFrame, tmp_path: Path) -> None:
    paths = write_bars(month_end_bars, tmp_path, "histdata")
    assert [p.name for p in paths] == [
        "DAT_ASCII_EURUSD_M1_202406.csv", "DAT_ASCII_EURUSD_M1_202407.csv",
        "DAT_ASCII_USDJPY_M1_202406.csv", "DAT_ASCII_USDJPY_M1_202407.csv",
    ]  # fmt: skip
    frames = []
    for path in paths:
        lines = path.read_text().splitlines()
        assert lines[0][:8].isdigit()  # no header
        fields = lines[0].split(";")
        assert len(fields) == 6 and len(fields[0]) == 15 and fields[0][8] == " "
        part = pd.read_csv(path, sep=";", header=None, names=["ts", "open", "high", "low", "close", "volume"])
        est = pd.to_datetime(part["ts"], format="%Y%m%d %H%M%S")
        assert set(est.dt.strftime("%Y%m")) == {path.stem[-6:]}  # grouped by the EST month
        part["ts_utc"] = (est + pd.Timedelta(hours=5)).dt.tz_localize("UTC").dt.as_unit("us")
        part["pair"] = path.name.split("_")[2]
        frames.append(part)
    back = pd.concat(frames, ignore_index=True)
    expected = as_plain(month_end_bars)
    pd.testing.assert_frame_equal(
        back[["pair", "ts_utc", "open", "high", "low", "close", "volume"]],
        expected[["pair", "ts_utc", "open", "high", "low", "close", "volume"]],
        check_dtype=False,
    )
    # 2024-07-01 00:00 UTC is 2024-06-30 19:00 EST: it belongs to the June file
    june = paths[0].read_text()
    first_july_utc = expected[(expected["pair"] == "EURUSD")]["ts_utc"]
    first_july_utc = first_july_utc[first_july_utc >= pd.Timestamp("2024-07-01", tz="UTC")].iloc[0]
    est_stamp = (first_july_utc - pd.Timedelta(hours=5)).strftime("%Y%m%d %H%M%S")
    assert f"\n{est_stamp};" in june
    # HistData prints six decimals
    assert all(len(f.split(".")[1]) == 6 for f in paths[2].read_text().splitlines()[0].split(";")[1:5])


def test_generate_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = generate_command("2024-07-01", "2024-07-03", ["EURUSD", "GBPUSD"], tmp_path / "out", "csv", 20240701)
    assert [p.name for p in paths] == ["EURUSD_2024_07.csv", "GBPUSD_2024_07.csv"]
    summary = capsys.readouterr().out.strip()
    assert len(summary.splitlines()) == 1 and "2 pairs" in summary and str(tmp_path / "out") in summary
    back = read_csv_bars(paths)
    expected = as_plain(generate_bars(dt.date(2024, 7, 1), dt.date(2024, 7, 3), ["EURUSD", "GBPUSD"]))
    pd.testing.assert_frame_equal(back.astype({"pair": object}), expected, check_dtype=False)
    with pytest.raises(ValueError):
        generate_command("2024-07-03", "2024-07-01", None, tmp_path, "csv", 1)
    with pytest.raises(ValueError):
        generate_command("2024-07-01", "2024-07-03", None, tmp_path, "xlsx", 1)
