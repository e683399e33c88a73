"""`bqx status`: rows per pair × month for the source and every built model."""

from __future__ import annotations

from bqx.status import coverage, format_coverage
from conftest import FIXTURE_PAIRS


def test_coverage_counts_every_model_per_pair_and_utc_month(wave1_dsn: str, fixture_bars) -> None:
    frame = coverage(wave1_dsn)
    months = fixture_bars["ts_utc"].dt.strftime("%Y-%m")
    expected = fixture_bars.groupby([fixture_bars["pair"].astype(str), months]).size()
    assert frame.columns[0] == "raw.m1_bars"
    for (pair, month), count in expected.items():
        assert frame.loc[(pair, month), "raw.m1_bars"] == count
        for model in ("m1_index", "bqx", "reg_rate", "technical_bqx", "targets"):
            assert frame.loc[(pair, month), model] == count, (model, pair, month)
    assert "feature_matrix" not in frame.columns  # a view: counting it would run it
    pairs_in_order = list(dict.fromkeys(frame.index.get_level_values("pair")))
    assert pairs_in_order == [p for p in ("EURUSD", "EURJPY", "GBPUSD", "USDJPY") if p in FIXTURE_PAIRS]
    text = format_coverage(frame)
    assert text.startswith(f"{len(FIXTURE_PAIRS)} pairs × ") and "behind the source" not in text
