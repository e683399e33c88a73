"""The REG columns computed in NumPy, for the benchmark's comparisons (bench_reg.py).

* `reg_polyfit_loop`: numpy.polyfit on each window, one call per row and window: the naive
  reference speed.
* `reg_vectorised`: the same columns for a whole pair at once, with the SQL macro's algorithm
  (macros/features/regression.sql) vectorised: block-local running sums differenced per
  window (5.7e-10 of each column's largest value on r2, ~1e-11 elsewhere, against polyfit:
  it omits the SQL's exact-grid split of the sums, which only matters on near-flat windows).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METRICS = ("a", "b", "c", "r2", "rmse", "endpoint")


def column_names(windows: Sequence[int]) -> list[str]:
    return [f"reg_{metric}_w{window}" for window in windows for metric in METRICS]


def reg_polyfit_window(window_values: np.ndarray, relative_endpoint: bool = True) -> tuple[float, ...]:
    """a, b, c, r2, rmse, endpoint of one window by numpy.polyfit (x = -(W-1) .. 0)."""
    width = len(window_values)
    x = np.arange(-(width - 1), 1, dtype=np.float64)
    a, b, c = np.polyfit(x, window_values, 2)
    residuals = window_values - ((a * x + b) * x + c)
    sse = float(residuals @ residuals)
    centred = window_values - window_values.mean()
    sst = float(centred @ centred)
    r2 = 1.0 - sse / sst if sst > 0 else float("nan")
    if relative_endpoint:
        endpoint = window_values[-1] / window_values[0] - 1.0
    else:
        endpoint = window_values[-1] - window_values[0]
    return a, b, c, r2, np.sqrt(sse / width), endpoint


def reg_polyfit_loop(y: np.ndarray, windows: Sequence[int], rows: int) -> int:
    """The naive per-row loop on the last `rows` bars of one pair; returns the windows fitted."""
    fitted = 0
    for end in range(len(y) - rows, len(y)):
        for window in windows:
            if end + 1 >= window:
                reg_polyfit_window(y[end + 1 - window : end + 1])
                fitted += 1
    return fitted


def _block_running_sums(values: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Running sums restarting every `block` elements, and each element's block total."""
    n = len(values)
    blocks = -(-n // block)
    padded = np.zeros(blocks * block)
    padded[:n] = values
    running = np.cumsum(padded.reshape(blocks, block), axis=1)
    totals = np.repeat(running[:, -1], block)[:n]
    return running.reshape(-1)[:n], totals


def reg_vectorised(
    y: np.ndarray, windows: Sequence[int], block: int = 640, relative_endpoint: bool = True
) -> dict[str, np.ndarray]:
    """Every REG column for one pair's series y (NaN where SQL gives NULL)."""
    n = len(y)
    half = block // 2
    index = np.arange(n)
    local = (index % block - half).astype(np.float64)
    block_start = index - index % block
    # reference: the bar before the block (the first bar for block 0), as the SQL does
    reference = np.where(block_start == 0, y[0], y[np.maximum(block_start - 1, 0)])
    z = y - reference
    terms = (z, local * z, local * local * z, z * z)
    running, totals = zip(*(_block_running_sums(term, block) for term in terms))
    exclusive = [p - term for p, term in zip(running, terms)]
    suffix = [t - x for t, x in zip(totals, exclusive)]
    next_reference = np.empty(n)
    last_of_block = np.minimum(block_start + block - 1, n - 1)
    next_reference[:] = y[last_of_block]
    changed = np.ones(n, dtype=bool)
    changed[1:] = y[1:] != y[:-1]
    last_change = np.maximum.accumulate(np.where(changed, index, -1))
    # moments about the current bar, shared by every window
    p0, p1, p2, pq = running
    a1 = p1 - local * p0
    a2 = p2 - 2.0 * local * p1 + local * local * p0
    out: dict[str, np.ndarray] = {}
    for window in windows:
        m = -(window - 1) / 2.0
        k = (window * window - 1) / 12.0
        su = window * (window * window - 1) / 12.0
        sp = window * (window * window - 1) * (window * window - 4) / 180.0
        t = np.arange(window - 1, n)
        s = t - (window - 1)
        d = local[s] + (window - 1) / 2.0
        same = local[s] <= half - window
        n_prev = np.where(same, 0.0, half - local[s])
        delta = np.where(same, 0.0, next_reference[s] - reference[s])
        u1 = n_prev * m + n_prev * (n_prev - 1.0) / 2.0
        u2 = n_prev * m * m + m * n_prev * (n_prev - 1.0) + (n_prev - 1.0) * n_prev * (2.0 * n_prev - 1.0) / 6.0
        base = [np.where(same, -x[s], r[s]) for x, r in zip(exclusive, suffix)]
        l0 = base[0] - delta * n_prev
        l1 = base[1] - d * base[0] - delta * u1
        l2 = base[2] - 2.0 * d * base[1] + d * d * base[0] - delta * u2
        lq = base[3] - 2.0 * delta * base[0] + delta * delta * n_prev
        s0 = p0[t] + l0
        s1 = a1[t] - m * p0[t] + l1
        s2 = a2[t] - 2.0 * m * a1[t] + m * m * p0[t] + l2
        sq = pq[t] + lq
        flat = last_change[t] <= s
        beta1 = np.where(flat, 0.0, s1 / su)
        beta2 = np.where(flat, 0.0, (s2 - k * s0) / sp)
        sst = sq - s0 * s0 / window
        sse = np.where(flat, 0.0, np.maximum(sst - beta1 * beta1 * su - beta2 * beta2 * sp, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = np.where(flat | (sst <= 0), np.nan, 1.0 - np.minimum(sse, sst) / sst)
        values = {
            "a": beta2,
            "b": beta1 - 2.0 * m * beta2,
            "c": reference[t] + s0 / window - m * beta1 + (m * m - k) * beta2,
            "r2": r2,
            "rmse": np.sqrt(sse / window),
            "endpoint": y[t] / y[s] - 1.0 if relative_endpoint else y[t] - y[s],
        }
        for metric, column in values.items():
            full = np.full(n, np.nan)
            full[window - 1 :] = column
            out[f"reg_{metric}_w{window}"] = full
    return out
