"""The file formats of 1-minute bars: one home for their names, columns, clocks and file names.

`bqx generate` writes these formats, `bqx load` reads them and the CLI offers them; all three
take the facts from here (spec.md, "Source").

    csv       header `pair,ts_utc,open,high,low,close,volume,spread`, ts_utc ISO 8601 in UTC
    histdata  HistData.com "ASCII M1": `YYYYMMDD HHMMSS;open;high;low;close;volume`, no header,
              no pair (it is in the file name), times in EST without daylight saving (UTC-5)
    parquet   the csv's columns, ts_utc a timestamp (UTC)
"""

from __future__ import annotations

import re

FORMATS: tuple[str, ...] = ("csv", "histdata", "parquet")

# the columns of a bar, in the order of the csv header and of raw.m1_bars
BAR_COLUMNS: tuple[str, ...] = ("pair", "ts_utc", "open", "high", "low", "close", "volume", "spread")
PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")
# the numbers of a bar, in the order the loader reports the first bad one
NUMBER_COLUMNS: tuple[str, ...] = (*PRICE_COLUMNS, "volume", "spread")
# what a file must hold; `pair` too unless the file name or --pair gives it; spread may be absent
REQUIRED_COLUMNS: tuple[str, ...] = ("ts_utc", *PRICE_COLUMNS, "volume")
CSV_HEADER: str = ",".join(BAR_COLUMNS)
CSV_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # what `bqx generate` writes; the loader reads any ISO 8601

HISTDATA_COLUMNS: tuple[str, ...] = ("ts_utc", *PRICE_COLUMNS, "volume")
HISTDATA_DELIMITER = ";"
HISTDATA_TIMESTAMP_FORMAT = "%Y%m%d %H%M%S"
# HistData's clock is EST without daylight saving all year: UTC = its time + 5 hours
HISTDATA_UTC_OFFSET_US: int = 5 * 3600 * 1_000_000
# a HistData line starts with its timestamp and the first separator
HISTDATA_LINE = re.compile(rb"^\s*\d{8} \d{6};")


def histdata_file_name(pair: str, year: int, month: int) -> str:
    """The name HistData gives a pair's month (the loader takes the pair from it)."""
    return f"DAT_ASCII_{pair}_M1_{year:04d}{month:02d}.csv"
