"""The rules a row must satisfy, and the reject records of the rows that break one.

A row breaking a rule is written to raw.m1_rejects with the first rule it breaks, in this order,
and the good rows beside it load normally:

    unparseable_row       wrong number of fields, a price/volume/spread that is not a number, a
                          missing price/volume, a volume that is not a whole number
    unknown_pair          pair not one of the 28 (case, blanks around it and a slash as in
                          EUR/USD are forgiven)
    bad_timestamp         ts_utc not a timestamp (also one that cannot exist, e.g. year 10000)
    timestamp_too_early   ts_utc before the earliest plausible bar (default 1971-01-01 00:00 UTC)
    timestamp_in_future   ts_utc later than the load's start + a few minutes (default 5): a bar
                          cannot come from the future
    not_whole_minute      ts_utc with seconds
    non_finite_price      a price is NaN or infinite
    non_positive_price    a price <= 0
    price_out_of_range    a price outside the plausible band (default 1e-4 ... 1e5)
    high_low_inconsistent not (low <= open, close <= high)
    negative_volume       volume < 0
    volume_out_of_range   volume > 1e9 (volume_features squares it in a bigint)
    non_finite_spread     spread infinite (NaN and empty mean null)
    negative_spread       spread < 0
    spread_out_of_range   spread wider than the bar's close price
    duplicate_in_file     a (pair, ts_utc) already seen earlier in the same file: the FIRST valid
                          occurrence is kept, every later one is rejected (naming the kept line)

The bands (prices, timestamps) are a `PlausibleRanges`; they may narrow the database's own limits
(bqx.raw_schema: the CHECK constraints of raw.m1_bars), never widen them, so that a row the rules
accept is never refused by the database.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from dataclasses import dataclass

import numpy as np

from bqx.bar_formats import NUMBER_COLUMNS, PRICE_COLUMNS
from bqx.load.errors import LoadError
from bqx.load.parse import ParsedRows
from bqx.pairs import PAIRS
from bqx.raw_schema import EARLIEST_BAR, LATEST_BAR, PRICE_MAX, PRICE_MIN, VOLUME_MAX

# rule codes, in the order they are checked (a row is rejected for the first it breaks)
REASONS: dict[str, str] = {
    "unparseable_row": "wrong field count, or a price/volume/spread that is not a number",
    "unknown_pair": "pair is not one of the 28",
    "bad_timestamp": "ts_utc is not a timestamp",
    "timestamp_too_early": "ts_utc is before the earliest plausible bar",
    "timestamp_in_future": "ts_utc is later than the load's start + the minutes allowed",
    "not_whole_minute": "ts_utc is not a whole minute",
    "non_finite_price": "a price is NaN or infinite",
    "non_positive_price": "a price is <= 0",
    "price_out_of_range": "a price is outside the plausible band",
    "high_low_inconsistent": "not low <= open, close <= high",
    "negative_volume": "volume < 0",
    "volume_out_of_range": f"volume > {VOLUME_MAX:,}",
    "non_finite_spread": "spread is infinite",
    "negative_spread": "spread < 0",
    "spread_out_of_range": "spread is wider than the close price",
    "duplicate_in_file": "(pair, ts_utc) seen earlier in the file; the first occurrence is kept",
}
# a row's verdict as a small integer: 0 = good, else the rule's position in REASONS + 1
REASON_NUMBER = {name: i + 1 for i, name in enumerate(REASONS)}
REASON_OF_NUMBER = {i: name for name, i in REASON_NUMBER.items()}

MINUTE_US = 60_000_000
UNIX_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def unix_us(stamp: dt.datetime) -> int:
    """Microseconds since 1970-01-01 UTC of an aware datetime."""
    return (stamp - UNIX_EPOCH) // dt.timedelta(microseconds=1)


@dataclass(frozen=True)
class PlausibleRanges:
    """The bands a bar must lie in: every price within [min_price, max_price]; ts_utc from
    `earliest` to `future_minutes` after `now` (None: the load's start, see `starting`). They may
    narrow the database's limits (bqx.raw_schema), never widen them: a LoadError says which limit
    a band crosses."""

    min_price: float = PRICE_MIN
    max_price: float = PRICE_MAX
    earliest: dt.datetime = EARLIEST_BAR
    future_minutes: float = 5.0
    now: dt.datetime | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_price) and math.isfinite(self.max_price)):
            raise LoadError("--min-price and --max-price must be finite numbers")
        if not self.min_price < self.max_price:
            raise LoadError(f"--min-price {self.min_price:g} must be below --max-price {self.max_price:g}")
        if self.min_price < PRICE_MIN:
            raise LoadError(
                f"--min-price {self.min_price:g} is below {PRICE_MIN:g}, the lowest price raw.m1_bars accepts"
            )
        if self.max_price > PRICE_MAX:
            raise LoadError(
                f"--max-price {self.max_price:g} is above {PRICE_MAX:g}, the highest price raw.m1_bars accepts"
            )
        if self.earliest.tzinfo is None or self.earliest < EARLIEST_BAR:
            raise LoadError(f"the earliest bar must be an aware datetime from {EARLIEST_BAR:%Y-%m-%d} on")
        if not (math.isfinite(self.future_minutes) and self.future_minutes >= 0):
            raise LoadError("--future-minutes must be a number >= 0")

    def starting(self, now: dt.datetime) -> PlausibleRanges:
        """These ranges with `now` set (unless given), for a load that starts at `now`."""
        return self if self.now is not None else dataclasses.replace(self, now=now)

    @property
    def earliest_us(self) -> int:
        return unix_us(self.earliest)

    @property
    def latest_us(self) -> int:
        """The latest plausible ts_utc: now + future_minutes, and before the database's limit."""
        latest = unix_us(self.now or dt.datetime.now(dt.UTC)) + int(self.future_minutes * MINUTE_US)
        return min(latest, unix_us(LATEST_BAR) - MINUTE_US)

# one reject as raw.m1_rejects stores it:
# (source_file, line_number, raw_text, pair, ts_utc as written, reason, detail)
RejectRecord = tuple[str, int, str | None, str | None, str | None, str, str]


@dataclass
class CheckedRows:
    """The verdict on every row of a ParsedRows."""

    good: np.ndarray  # row indices to load, sorted by (pair, ts_utc)
    reason: np.ndarray  # int8 per row: 0 = good, else REASON_NUMBER of the first rule broken
    kept_line: np.ndarray  # int64 per row: for a duplicate, the line of the occurrence kept


def check_rows(rows: ParsedRows, ranges: PlausibleRanges) -> CheckedRows:
    """Apply every rule to every row (vectorised); the first rule a row breaks is its reason."""
    n = rows.n
    reason = np.zeros(n, np.int8)

    def mark(mask: np.ndarray, name: str) -> None:
        reason[(reason == 0) & mask] = REASON_NUMBER[name]

    o, h, lo, c, vol, spread = (rows.numbers[k] for k in NUMBER_COLUMNS)
    with np.errstate(invalid="ignore"):
        mark(rows.first_bad_number > 0, "unparseable_row")
        mark(rows.pair_code < 0, "unknown_pair")
        mark(rows.ts_bad, "bad_timestamp")
        mark(rows.ts_us < ranges.earliest_us, "timestamp_too_early")
        mark(rows.ts_us > ranges.latest_us, "timestamp_in_future")
        mark(rows.ts_us % MINUTE_US != 0, "not_whole_minute")
        mark(~(np.isfinite(o) & np.isfinite(h) & np.isfinite(lo) & np.isfinite(c)), "non_finite_price")
        mark((o <= 0) | (h <= 0) | (lo <= 0) | (c <= 0), "non_positive_price")
        out_of_band = np.zeros(n, bool)
        for price in (o, h, lo, c):
            out_of_band |= (price < ranges.min_price) | (price > ranges.max_price)
        mark(out_of_band, "price_out_of_range")
        mark((lo > np.minimum(o, c)) | (h < np.maximum(o, c)) | (lo > h), "high_low_inconsistent")
        mark(vol < 0, "negative_volume")
        mark(vol > VOLUME_MAX, "volume_out_of_range")
        mark(np.isinf(spread), "non_finite_spread")
        mark(spread < 0, "negative_spread")
        mark(spread > c, "spread_out_of_range")
    ok = np.flatnonzero(reason == 0)
    key = (rows.pair_code[ok].astype(np.int64) << 40) | (rows.ts_us[ok] // MINUTE_US + (1 << 39))
    order = np.argsort(key, kind="stable")  # stable: the earliest line of a key comes first
    sorted_key = key[order]
    repeat = np.zeros(len(ok), bool)
    repeat[1:] = sorted_key[1:] == sorted_key[:-1]
    kept_line = np.zeros(n, np.int64)
    if repeat.any():
        group_start = np.maximum.accumulate(np.where(repeat, 0, np.arange(len(ok))))
        duplicates = ok[order[repeat]]
        reason[duplicates] = REASON_NUMBER["duplicate_in_file"]
        kept_line[duplicates] = rows.line[ok[order[group_start[repeat]]]]
    return CheckedRows(good=ok[order[~repeat]], reason=reason, kept_line=kept_line)


def format_timestamp(us: int) -> str:
    """Unix microseconds as 'YYYY-MM-DD HH:MM:SS[.ffffff] UTC', for any int64 (numpy's calendar
    goes beyond Python's datetime, whose years end at 9999)."""
    return str(np.datetime64(int(us), "us")).replace("T", " ").removesuffix(".000000") + " UTC"


def format_number(x: float) -> str:
    """A float as Python writes it back exactly ('inf' and 'nan' for the others)."""
    return repr(float(x)) if math.isfinite(x) else str(float(x))


def explain(rows: ParsedRows, i: int, code: str, kept_line: int, fmt: str, ranges: PlausibleRanges) -> str:
    """The sentence naming what is wrong with row i."""
    numbers = rows.numbers
    if code == "unparseable_row":
        name = NUMBER_COLUMNS[int(rows.first_bad_number[i]) - 1]
        raw = rows.cell_text(name, i)
        if raw is None or str(raw).strip() == "":
            return f"{name} is missing"
        if name == "volume":
            return f"volume {raw!r} is not a whole number"
        return f"{name} {raw!r} is not a number"
    if code == "unknown_pair":
        raw = rows.cell_text("pair", i)
        if raw is None or not raw.strip():
            return "pair is missing"
        hint = ""
        if raw:
            cleaned = raw.strip().upper()
            if len(cleaned) == 6 and cleaned[3:] + cleaned[:3] in PAIRS:
                hint = f" (the market quotes it as {cleaned[3:] + cleaned[:3]})"
        return f"pair {raw!r} is not one of the 28 pairs{hint}"
    if code == "bad_timestamp":
        raw = rows.cell_text("ts_utc", i)
        want = "'YYYYMMDD HHMMSS' (EST, UTC-5)" if fmt == "histdata" else "an ISO 8601 timestamp"
        return f"ts_utc {raw!r} is not {want}"
    if code == "timestamp_too_early":
        return f"ts_utc {format_timestamp(rows.ts_us[i])} is before {format_timestamp(ranges.earliest_us)}"
    if code == "timestamp_in_future":
        return (
            f"ts_utc {format_timestamp(rows.ts_us[i])} is after {format_timestamp(ranges.latest_us)} "
            f"(the load's start + {ranges.future_minutes:g} minutes): a bar cannot come from the future"
        )
    if code == "not_whole_minute":
        return f"ts_utc {format_timestamp(rows.ts_us[i])} is not a whole minute (bars open on the minute)"
    price_rule = {
        "non_finite_price": "every price must be a finite number",
        "non_positive_price": "every price must be > 0",
        "price_out_of_range": f"every price must be within [{ranges.min_price:g}, {ranges.max_price:g}]",
        "high_low_inconsistent": "need low <= open, close <= high",
    }.get(code)
    if price_rule is not None:
        return f"{price_rule}; got " + ", ".join(f"{k} {format_number(numbers[k][i])}" for k in PRICE_COLUMNS)
    if code == "negative_volume":
        return f"volume {int(numbers['volume'][i])} is negative"
    if code == "volume_out_of_range":
        return f"volume {int(numbers['volume'][i]):,} is above {VOLUME_MAX:,}"
    if code in ("negative_spread", "non_finite_spread"):
        return f"spread {format_number(numbers['spread'][i])} must be a finite number >= 0 (or empty)"
    if code == "spread_out_of_range":
        return (
            f"spread {format_number(numbers['spread'][i])} is wider than the close {format_number(numbers['close'][i])}"
        )
    if code == "duplicate_in_file":
        return (
            f"{PAIRS[rows.pair_code[i]]} at {format_timestamp(rows.ts_us[i])} already appeared on line {kept_line}; "
            "the first occurrence is kept"
        )
    return REASONS[code]


def escape_nul(value: str | None) -> str | None:
    """PostgreSQL's text cannot hold NUL: written as the four characters \\x00."""
    return None if value is None else value.replace("\x00", "\\x00")


def reject_records(
    source_name: str, rows: ParsedRows, checked: CheckedRows, fmt: str, ranges: PlausibleRanges
) -> list[RejectRecord]:
    """One record per rejected row (and per line that could not be split), by line."""
    what = "row" if fmt in ("parquet", "frame") else "line"
    records: list[RejectRecord] = []
    for line, text, code, explanation in rows.unsplit_lines:
        detail = f"{source_name}, {what} {line}: {code}: {explanation}"
        records.append((source_name, line, escape_nul(text), None, None, code, detail))
    for i in np.flatnonzero(checked.reason):
        code = REASON_OF_NUMBER[int(checked.reason[i])]
        line = int(rows.line[i])
        explanation = explain(rows, i, code, int(checked.kept_line[i]), fmt, ranges)
        detail = f"{source_name}, {what} {line}: {code}: {explanation}"
        pair_text, ts_text = rows.cell_text("pair", i), rows.cell_text("ts_utc", i)
        records.append(
            (
                source_name,
                line,
                escape_nul(rows.row_text(i)),
                escape_nul(pair_text),
                escape_nul(ts_text),
                code,
                detail,
            )
        )
    records.sort(key=lambda r: r[1])
    return records
