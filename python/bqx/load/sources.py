"""Which files to load: paths and folders expanded to files, zip archives to their members, and
each file's format and pair worked out before anything is written.

A PATH may be a file or a directory (searched recursively, in sorted order, for *.csv, *.csv.gz,
*.parquet, *.pq and *.zip; names starting with a dot are skipped). A .zip, e.g. a HistData
download, is read member by member (its .csv and .parquet members). The format is detected when
not given: .parquet -> parquet; a first line that is the csv header -> csv; a first line
`YYYYMMDD HHMMSS;...` -> histdata.
"""

from __future__ import annotations

import gzip
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bqx.bar_formats import CSV_HEADER, FORMATS, HISTDATA_LINE, histdata_file_name
from bqx.load.errors import LoadError
from bqx.pairs import PAIRS

BAR_FILE_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq", ".zip")
ZIP_MEMBER_SUFFIXES = (".csv", ".parquet")
HEAD_BYTES = 65536  # how much of a file format detection reads


@dataclass
class BarSource:
    """One file (or zip member) to load."""

    name: str  # as shown and stored in source_file
    read: Callable[[], bytes]  # its whole content, decompressed
    format: str
    pair: str | None  # the pair given by --pair or the file name: used where rows carry no pair
    only_pair: str | None = None  # --pair: rows of other pairs in a file with a pair column are skipped


def pair_in_name(name: str) -> str | None:
    """The one pair a file name names (DAT_ASCII_EURUSD_M1_202407.csv -> EURUSD), if any."""
    upper = Path(name).name.upper()
    found = {p for p in PAIRS if p in upper}
    if len(found) == 1:
        return found.pop()
    if len(found) > 1:
        raise LoadError(f"{name}: the file name names several pairs ({', '.join(sorted(found))}); pass --pair")
    return None


def normalise_pair(pair: str | None) -> str | None:
    """--pair as one of the 28 (case, blanks and a slash as in EUR/USD are forgiven)."""
    if pair is None:
        return None
    p = pair.strip().upper().replace("/", "")
    if p not in PAIRS:
        raise LoadError(f"--pair {pair!r} is not one of the 28 pairs: {' '.join(PAIRS)}")
    return p


def first_line(data: bytes) -> bytes:
    """The first non-blank line of the start of a file, without a UTF-8 byte order mark."""
    for raw in data[:HEAD_BYTES].splitlines():
        if raw.strip():
            return raw.strip().lstrip(b"\xef\xbb\xbf")
    return b""


def header_names(line: bytes) -> list[str] | None:
    """The column names if `line` is a csv header (it names ts_utc), else None."""
    names = [n.strip().strip('"').strip().lower() for n in line.decode("utf-8", "replace").split(",")]
    return names if "ts_utc" in names else None


def detect_format(name: str, head: bytes, fmt: str | None) -> str:
    """The format of a file from its name and first bytes, unless `fmt` says it."""
    lower = name.lower()
    if fmt is not None:
        if fmt not in FORMATS:
            raise LoadError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
        return fmt
    if lower.endswith((".parquet", ".pq")) or head[:4] == b"PAR1":
        return "parquet"
    first = first_line(head)
    if header_names(first) is not None:
        return "csv"
    if HISTDATA_LINE.match(first):
        return "histdata"
    if not first:
        return "csv"  # empty file: nothing to load
    raise LoadError(
        f"{name}: cannot tell the format from its first line {first[:80].decode('utf-8', 'replace')!r}: "
        f"expected the csv header {CSV_HEADER} or a HistData line "
        "'YYYYMMDD HHMMSS;open;high;low;close;volume'; pass --format"
    )


def read_bytes(path: Path) -> bytes:
    """A file's content, gunzipped when its name ends in .gz."""
    data = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        data = gzip.decompress(data)
    return data


def expand_paths(paths: Sequence[Path]) -> list[Path]:
    """Files as given, and the bar files found in folders (sorted, hidden names skipped)."""
    files: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            found = [
                p
                for p in sorted(path.rglob("*"))
                if p.is_file()
                and p.name.lower().endswith(BAR_FILE_SUFFIXES)
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            ]
            if not found:
                raise LoadError(f"{path}: no *.csv, *.csv.gz, *.parquet or *.zip file in this directory")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise LoadError(f"{path}: no such file or directory")
    return files


def find_sources(paths: Sequence[Path], fmt: str | None, pair: str | None) -> list[BarSource]:
    """Every file to load, with its format and pair, checked before anything is loaded."""
    sources: list[BarSource] = []
    for path in expand_paths(paths):
        if path.name.lower().endswith(".zip"):
            try:
                archive = zipfile.ZipFile(path)
            except zipfile.BadZipFile as err:
                raise LoadError(f"{path}: not a readable zip file ({err})") from err
            members = sorted(
                m for m in archive.namelist() if m.lower().endswith(ZIP_MEMBER_SUFFIXES) and not m.endswith("/")
            )
            if not members:
                raise LoadError(f"{path}: the zip file holds no .csv or .parquet file")
            for member in members:
                name = f"{path}!{member}"

                def read_member(archive: zipfile.ZipFile = archive, member: str = member) -> bytes:
                    return archive.read(member)

                with archive.open(member) as handle:
                    head = handle.read(HEAD_BYTES)
                member_fmt = detect_format(name, head, fmt)
                member_pair = pair or pair_in_name(member) or pair_in_name(path.name)
                sources.append(BarSource(name, read_member, member_fmt, member_pair, pair))
            continue
        try:
            if path.name.lower().endswith(".gz"):
                with gzip.open(path, "rb") as handle:
                    head = handle.read(HEAD_BYTES)
            else:
                with path.open("rb") as handle:
                    head = handle.read(HEAD_BYTES)
        except OSError as err:
            raise LoadError(f"{path}: cannot read it ({err})") from err
        file_fmt = detect_format(str(path), head, fmt)

        def read_file(path: Path = path) -> bytes:
            return read_bytes(path)

        sources.append(BarSource(str(path), read_file, file_fmt, pair or pair_in_name(path.name), pair))
    for source in sources:
        if source.format == "histdata" and source.pair is None:
            raise LoadError(
                f"{source.name}: a HistData file carries no pair and its name names none of the 28 pairs; "
                f"pass --pair (e.g. --pair EURUSD) or rename it (e.g. {histdata_file_name('EURUSD', 2024, 7)})"
            )
    return sources
