"""The dataset builder's steps on generated arrays (no database): split, lags, selection,
the baseline models' early stopping, the float32 decision."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from bqx.datasets import extract as ex
from bqx.datasets import lags as lg
from bqx.datasets import select as sel
from bqx.datasets import split as sp
from bqx.datasets import train as tr

MINUTE = sp.MINUTE_US
T0 = 1_719_792_000_000_000  # 2024-07-01 00:00 UTC in µs


def _pair_keys(pair: str, n: int, offset_minutes: int, gap_every: int, seed: int) -> sp.PairKeys:
    """n bars one minute apart, with a multi-hour gap every `gap_every` bars (weekends, outages)."""
    rng = np.random.default_rng(seed)
    steps = np.ones(n, dtype=np.int64)
    steps[gap_every::gap_every] = rng.integers(60, 600, size=steps[gap_every::gap_every].size)
    ts = T0 + (offset_minutes + np.cumsum(steps)) * MINUTE
    return sp.PairKeys(pair, ts, np.arange(1, n + 1) + 500)


@pytest.fixture()
def three_pairs() -> list[sp.PairKeys]:
    return [_pair_keys("EURUSD", 5000, 0, 700, 1), _pair_keys("USDJPY", 5000, 3, 650, 2), _pair_keys("EURJPY", 4900, 7, 720, 3)]


def _split(keys: list[sp.PairKeys], horizon: int = 60, embargo: int = 0, folds: int = 0) -> tuple[sp.SplitPlan, list[np.ndarray], list[sp.Assignment]]:
    usable = [sp.usable_mask(k, longest_warmup=100, longest_lag=180) for k in keys]
    plan = sp.plan_split([k.known_at_us[u] for k, u in zip(keys, usable)], 0.7, 0.15, folds, embargo, horizon)
    return plan, usable, [sp.split_pair(k, u, plan) for k, u in zip(keys, usable)]


def test_boundaries_are_pooled_quantiles_shared_by_every_pair(three_pairs: list[sp.PairKeys]) -> None:
    plan, usable, assignments = _split(three_pairs)
    pooled = np.sort(np.concatenate([k.known_at_us[u] for k, u in zip(three_pairs, usable)]))
    b1, b2 = plan.boundaries
    assert b1 in pooled and b2 in pooled
    assert abs(np.searchsorted(pooled, b1, side="right") / pooled.size - 0.70) < 1e-3
    assert abs(np.searchsorted(pooled, b2, side="right") / pooled.size - 0.85) < 1e-3
    for keys, assignment in zip(three_pairs, assignments):
        known = keys.known_at_us
        # the same instants cut every pair: nothing of a later part is known before a boundary
        assert known[assignment.part == sp.TRAIN].max() <= b1 < known[assignment.part == sp.VAL].min()
        assert known[assignment.part == sp.VAL].max() <= b2 < known[assignment.part == sp.TEST].min()


def test_no_training_target_reaches_validation(three_pairs: list[sp.PairKeys]) -> None:
    horizon = 60
    plan, usable, assignments = _split(three_pairs, horizon)
    b1, b2 = plan.boundaries
    purged = 0
    for keys, assignment in zip(three_pairs, assignments):
        end = sp.target_end_us(keys, horizon)
        # the longest target of a row closes when the pair's bar t+H closes (bars, not minutes)
        assert end[0] == keys.ts_us[horizon] + MINUTE
        assert end[assignment.part == sp.TRAIN].max() <= b1
        assert end[assignment.part == sp.VAL].max() <= b2
        assert (end[assignment.part == sp.TEST] != sp.NO_END).all()
        straddling = usable[three_pairs.index(keys)] & (keys.known_at_us <= b1) & (end > b1)
        assert (assignment.part[straddling] == sp.NONE).all() and straddling.sum() == horizon
        purged += assignment.counts["purged"]
    assert purged == 2 * horizon * len(three_pairs)  # H rows before each of the two boundaries


def test_embargo_drops_bars_after_each_boundary(three_pairs: list[sp.PairKeys]) -> None:
    plan, _, plain = _split(three_pairs)
    _, _, embargoed = _split(three_pairs, embargo=30)
    for keys, a, b in zip(three_pairs, plain, embargoed):
        for code in (sp.VAL, sp.TEST):
            first_plain = np.flatnonzero(a.part == code)
            first_embargoed = np.flatnonzero(b.part == code)
            assert first_embargoed[0] == first_plain[0] + 30
        assert b.counts["embargoed"] == 60


def test_walk_forward_folds_are_expanding_and_purged(three_pairs: list[sp.PairKeys]) -> None:
    plan, usable, _ = _split(three_pairs, folds=3)
    assert len(plan.fold_cuts) == 3 and plan.fold_cuts[-1][1] == plan.boundaries[1]
    train_sizes = []
    for fold in range(3):
        train_end, val_end = plan.fold_cuts[fold]
        total = 0
        for keys, mask in zip(three_pairs, usable):
            a = sp.fold_pair(keys, mask, plan, fold)
            end = sp.target_end_us(keys, plan.longest_horizon)
            assert end[a.part == sp.TRAIN].max() <= train_end < keys.known_at_us[a.part == sp.VAL].min()
            assert end[a.part == sp.VAL].max() <= val_end
            total += int((a.part == sp.TRAIN).sum())
        train_sizes.append(total)
    assert train_sizes == sorted(train_sizes) and train_sizes[0] < train_sizes[-1]


def test_usable_rows_start_after_warmup_and_longest_lag() -> None:
    keys = sp.PairKeys("EURUSD", T0 + np.arange(1000) * MINUTE, np.arange(1, 1001) + 50)
    mask = sp.usable_mask(keys, longest_warmup=120, longest_lag=180)
    # bar_number - 180 > 120 -> bar_number > 300 -> position > 249; and position >= 180
    assert np.flatnonzero(mask)[0] == 250


def test_lags_are_a_within_pair_shift() -> None:
    values = np.arange(10, dtype=np.float32)
    lagged = lg.lag_column(values, 3)
    assert np.isnan(lagged[:3]).all() and (lagged[3:] == values[:7]).all()
    positions = np.array([0, 2, 5, 9])
    x, _ = sel.gather(pa.table({"v": values, "t": values.astype(np.float64)}), positions, [lg.Candidate("v_lag3", "v", 3)], ["t"])
    assert np.isnan(x[:2, 0]).all() and list(x[2:, 0]) == [2.0, 6.0]
    assert lg.parse_name("rate_rsi_14_lag120", ["rate_rsi_14"]) == lg.Candidate("rate_rsi_14_lag120", "rate_rsi_14", 120)
    assert lg.parse_name("rate_rsi_14", ["rate_rsi_14"]).lag == 0
    names = [c.name for c in lg.candidates(["a", "hour"], ["a"], [60, 120])]
    assert names == ["a", "hour", "a_lag60", "a_lag120"]  # time features are not lagged


def _random_walks(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return np.cumsum(rng.standard_normal((n, k)), axis=0).astype(np.float32) / 10


def test_selection_sample_rows_equal_each_column_shifted_within_the_pair() -> None:
    """The sample's features at some rows (only those rows and their lags are taken from the
    pair's table) equal each candidate's whole column shifted by its lag within the pair and
    read at those rows: NaN before the pair's first row, NULL as NaN, a float64 column rounded
    to float32 as a cast rounds it; the targets at the rows themselves, float64."""
    rng = np.random.default_rng(3)
    n = 500
    narrow = rng.standard_normal(n).astype(np.float32)
    wide = rng.standard_normal(n) * 1e-3 + 1.0  # a column the extraction kept float64
    gaps = pa.array(narrow, mask=rng.random(n) < 0.2)  # NULLs
    table = pa.table({"a": narrow, "b": wide, "c": gaps, "target_h": rng.standard_normal(n)})
    candidates = lg.candidates(["a", "b", "c"], ["a", "c", "b"], [60, 120])
    positions = np.sort(rng.choice(n, size=80, replace=False))
    x, y = sel.gather(table, positions, candidates, ["target_h"])
    assert x.dtype == np.float32 and y.dtype == np.float64 and x.shape == (80, len(candidates))
    for j, candidate in enumerate(candidates):
        whole = table.column(candidate.base).to_numpy(zero_copy_only=False).astype(np.float64)
        expected = lg.lag_column(whole, candidate.lag)[positions].astype(np.float32)
        np.testing.assert_array_equal(x[:, j], expected, err_msg=candidate.name)
    np.testing.assert_array_equal(y[:, 0], table.column("target_h").to_numpy()[positions])
    out = np.zeros_like(x)
    assert sel.gather(table, positions, candidates, ["target_h"], out=out)[0] is out and np.array_equal(out, x, equal_nan=True)


def test_planted_lagged_signal_is_selected_in_the_top_5() -> None:
    """A target that depends on one lagged feature (x7 120 bars back), among 20 features with
    three lags each whose neighbours are near-duplicates: selection ranks it in the top 5."""
    rng = np.random.default_rng(7)
    features = [f"f{i}" for i in range(20)]
    candidates = lg.candidates(features, features, [60, 120, 180])
    pairs = {}
    for pair in ("EURUSD", "USDJPY"):
        columns = dict(zip(features, _random_walks(6000, 20, rng).T))
        columns["f7"] = rng.standard_normal(6000).astype(np.float32)  # the signal's source
        planted = np.roll(columns["f7"].astype(np.float64), 120)
        columns["target_h"] = 0.8 * planted + 0.6 * rng.standard_normal(6000)
        columns["target_h2"] = 0.5 * planted + 0.8 * rng.standard_normal(6000)
        pairs[pair] = columns
    def sample(rows: range) -> sel.Sample:
        xs, ys = [], []
        for columns in pairs.values():
            x, y = sel.gather(pa.table(columns), np.array(rows), candidates, ["target_h", "target_h2"])
            xs.append(x)
            ys.append(y)
        n = sum(len(x) for x in xs)
        known = np.arange(n, dtype=np.int64)
        return sel.Sample(np.concatenate(xs), np.concatenate(ys), tuple(c.name for c in candidates), ("target_h", "target_h2"), known, known, np.zeros(n))
    fit, holdout = sample(range(200, 3000)), sample(range(5000, 6000))
    for importance in ("permutation", "mdi"):
        chosen = sel.select_features(fit, holdout, candidates, top_n=10, importance=importance, trees=30, seed=1)
        assert "f7_lag120" in chosen.selected[:5], (importance, chosen.selected)
    assert chosen.importances.iloc[0]["feature"] == "f7_lag120"


@pytest.mark.parametrize("targets", [1, 3])
def test_group_permutation_drops_equal_the_forests_own_predict_bit_for_bit(targets: int) -> None:
    """The permutation step sends down each tree again only the rows below a split on the
    group, from that split, on two threads: every drop equals, bit for bit, the drop computed
    the plain way (the whole forest's predict() on the shuffled rows, the same shuffles drawn in
    the same order), for one target and several, with NaN (a NULL feature) in the rows."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3000, 24)).astype(np.float32)
    y = x[:, :3] @ rng.standard_normal((3, targets)) + rng.standard_normal((3000, targets))
    x[rng.random(x.shape) < 0.05] = np.nan  # the trees learn where missing values go
    y = y[:, 0] if targets == 1 else y
    _, model = sel._mdi(x[:2000], y[:2000], 40, 3)
    holdout_x, holdout_y = x[2000:], y[2000:]
    groups = [[0, 1], [2], [5, 6, 7], [23]]
    drops, base = sel._group_drops(model, holdout_x, holdout_y, groups, seed=9)
    assert base == sel._r2(holdout_y, model.predict(holdout_x))
    plain_rng = np.random.default_rng(9)
    orders = [[plain_rng.permutation(holdout_x.shape[0]) for _ in range(sel.PERMUTATION_REPEATS)] for _ in groups]
    for columns, group_orders, drop in zip(groups, orders, drops, strict=True):
        plain = []
        for order in group_orders:
            shuffled = holdout_x.copy()
            shuffled[:, columns] = holdout_x[order][:, columns]
            plain.append(base - sel._r2(holdout_y, model.predict(shuffled)))
        assert drop == float(np.mean(plain))
    assert drops[0] > drops[3], "the signal's group matters more than noise"


def test_float32_only_where_the_bar_to_bar_changes_survive() -> None:
    rng = np.random.default_rng(3)
    level = 100 + np.cumsum(rng.standard_normal(5000) * 1e-3)  # a rate_index level: float64
    momentum = rng.standard_normal(5000) * 1e-4  # a bqx value: float32 is plenty
    hours = np.repeat(np.arange(24.0), 200)[:5000]  # exact in float32
    assert ex.needs_float64(level)
    assert not ex.needs_float64(momentum)
    assert not ex.needs_float64(hours)
    assert ex.needs_float64(np.full(10, np.nan))  # nothing measured: keep every bit


def test_a_leaking_assignment_is_refused(three_pairs: list[sp.PairKeys]) -> None:
    """The written parts are re-checked against the rule: a purged row put back into train, or
    a last row without its complete target put into test, stops the builder."""
    horizon = 60
    plan, usable, assignments = _split(three_pairs, horizon)
    keys, assignment = three_pairs[0], assignments[0]
    end = sp.target_end_us(keys, horizon)
    cuts = list(plan.boundaries)
    sp.check_assignment(keys.pair, keys.known_at_us, end, assignment, cuts, last_open_part=True)  # the honest one passes
    straddling = np.flatnonzero(usable[0] & (keys.known_at_us <= cuts[0]) & (end > cuts[0]))
    last_rows = np.flatnonzero(end == sp.NO_END)
    assert straddling.size == horizon and last_rows.size == horizon
    for rows, code in ((straddling[:1], sp.TRAIN), (last_rows[-1:], sp.TEST)):
        part = assignment.part.copy()
        part[rows] = code
        with pytest.raises(AssertionError, match="target window"):
            sp.check_assignment(keys.pair, keys.known_at_us, end, sp.Assignment(part, assignment.counts), cuts, last_open_part=True)


def _training_set(x: np.ndarray, y: np.ndarray) -> tr.TrainingSet:
    known = np.arange(y.shape[0], dtype=np.int64)
    return tr.TrainingSet(x, y, known, known, np.full(y.shape[0], "EURUSD"))


def test_ridges_of_every_target_and_penalty_in_one_fit_equal_least_squares() -> None:
    """The ridges fit at once (one X'X, a penalty per column) equal the ridge solution from an
    independent least-squares solve of the augmented system [X; sqrt(alpha) I] on centred data,
    at least as closely as a scikit-learn Ridge fit per target and penalty does."""
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(11)
    x = rng.standard_normal((4000, 12)) @ rng.standard_normal((12, 12))  # correlated columns
    y = x[:, :2] @ rng.standard_normal((2, 3)) + 3 + rng.standard_normal((4000, 3))
    coefficients, intercepts = tr._ridges(x, y)
    assert coefficients.shape == (3, len(tr.RIDGE_ALPHAS), 12) and intercepts.shape == (3, len(tr.RIDGE_ALPHAS))
    centred, y_centred = x - x.mean(axis=0), y - y.mean(axis=0)
    for a, alpha in enumerate(tr.RIDGE_ALPHAS):
        augmented = np.vstack([centred, np.sqrt(alpha) * np.eye(12)])
        for t in range(3):
            reference = np.linalg.lstsq(augmented, np.concatenate([y_centred[:, t], np.zeros(12)]), rcond=None)[0]
            one_fit = Ridge(alpha=alpha).fit(x, y[:, t])
            scale = np.abs(reference).max()
            error = np.abs(coefficients[t, a] - reference).max() / scale
            assert error <= max(2 * np.abs(one_fit.coef_ - reference).max() / scale, 1e-12), (alpha, t, error)
            assert intercepts[t, a] == pytest.approx(y[:, t].mean() - x.mean(axis=0) @ reference, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("scale", [1.0, 1e-4])
def test_boosting_early_stopping_follows_val_at_any_target_scale(scale: float) -> None:
    """The boosting stops on the val sample's loss the same whether the target is of order 1 or
    of a 15-minute BQX move (1e-4, a loss of ~1e-8): on a learnable target it fits on until val
    stops improving, on noise it stops after the 10 iterations without improvement. (An absolute
    tolerance of 1e-7, scikit-learn's default, stopped every fit of a small target at 10.)"""
    rng = np.random.default_rng(3)
    n = 30_000
    x = rng.standard_normal((3 * n, 4))
    signal = np.sin(2 * x[:, 0]) + 0.5 * x[:, 1] * x[:, 2]
    y = scale * np.column_stack([signal + 0.3 * rng.standard_normal(3 * n), rng.standard_normal(3 * n)])
    train, val, test = (slice(i * n, (i + 1) * n) for i in range(3))

    def chunks(part: slice):  # noqa: ANN202
        return lambda: iter([tr.Chunk("EURUSD", np.arange(n, dtype=np.int64), x[part], y[part])])

    evaluation = tr.fit_and_score(_training_set(x[train], y[train]), chunks(val), chunks(test), ["learnable", "noise"], 1, False, stopping=_training_set(x[val], y[val]))
    learnable, noise = evaluation.tuning["learnable"], evaluation.tuning["noise"]
    assert learnable["boosting_iterations_fitted"] > 30 and learnable["boosting_iterations"] > 20, learnable
    assert noise["boosting_iterations_fitted"] < 30, noise
    assert evaluation.stopping_rows == n
    r2 = evaluation.metrics.set_index(["model", "target", "pair"])["r2"]
    assert r2[("boosting", "learnable", "all")] > 0.5


def _facts_table(n: int, first_bar: int = 1) -> pa.Table:
    ts = T0 + np.arange(n, dtype=np.int64) * MINUTE
    feature = np.linspace(1.0, 2.0, n).astype(np.float32)
    session = np.where(np.arange(n) % 3 == 0, np.nan, 5.0)  # NULL on every third row (a session's minutes)
    target = np.ones(n)
    return pa.table(
        {
            "pair": pa.array(["EURUSD"] * n),
            "ts_utc": pa.array(ts, type=pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "known_at": pa.array(ts + MINUTE, type=pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "bar_number": pa.array(np.arange(first_bar, first_bar + n, dtype=np.int64)),
            "feature": pa.array(feature, mask=np.arange(n) < 10),  # NULL in its 10-bar warm-up
            "level": pa.array(np.linspace(100.0, 101.0, n)),  # no NULL at all (read by NumPy)
            "session": pa.array(session, from_pandas=True),
            "target_h5": pa.array(target, mask=np.arange(n) >= n - 5),  # NULL on the last 5 rows
        }
    )


def test_file_facts_gathered_chunk_by_chunk_equal_the_whole_file_scanned() -> None:
    """The validation's facts, gathered by the extraction chunk by chunk, are the facts of the
    whole file: problems found in a later chunk keep their file row, a minute repeated across a
    chunk boundary is caught, and late NULLs beyond what is kept by row are marked unkept."""
    from bqx.datasets import facts as fa

    limits = fa.Limits({"feature": 10, "level": 0, "session": 0}, {"target_h5": 5})
    clean = _facts_table(1000)
    whole = fa.scan(clean, limits)
    assert whole == {"unordered_row": None, "nonfinite": {}, "target_nulls": {}, "late_nulls": {"session": {"count": 334, "rows": list(range(0, 1000, 3))}}}
    broken = clean.to_pydict()
    broken["ts_utc"][600] = broken["ts_utc"][599]  # a duplicate minute, across a chunk boundary
    broken["feature"][650] = float("inf")
    broken["feature"][820] = None  # a NULL after the warm-up
    broken["target_h5"][400] = None  # a target NULL with 5 later bars
    broken["level"][123] = float("nan")  # a stored NaN (not a NULL)
    broken = pa.table(broken, schema=clean.schema)
    chunked = fa.FileFacts(limits, broken.num_rows)
    for start in range(0, broken.num_rows, 300):
        chunked.add(broken.slice(start, 300), start)
    assert chunked.record() == fa.scan(broken, limits)
    assert chunked.record()["unordered_row"] == 600 and chunked.record()["nonfinite"] == {"feature": 650, "level": 123}
    assert chunked.record()["target_nulls"] == {"target_h5": 400}
    assert chunked.record()["late_nulls"]["feature"] == {"count": 1, "rows": [820]}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fa, "LATE_NULL_ROWS_KEPT", 100)
        assert fa.scan(clean, limits)["late_nulls"]["session"] == {"count": 334, "rows": None}
