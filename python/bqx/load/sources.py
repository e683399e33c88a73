"""Which files to load: paths and folders expanded to files, zip archives to their members, and
each file's format and pair worked out before anything is written.

A PATH may be a file or a folder (searched recursively, in sorted order, for *.csv, *.csv.gz,
*.parquet, *.pq and *.zip; names starting with a dot are skipped). A .zip, e.g. a HistData
download, is read member by member (its .csv and .parquet members). The format is detected when
not given: .parquet -> parquet; a first line that is a csv header -> csv; a first line
`YYYYMMDD HHMMSS;...` -> histdata.

Only regular files are read, and symbolic links are not followed (neither a PATH that is one nor
one found in a folder) unless `follow_symlinks`. Folders are listed through their descriptors and
a file found in one is opened name by name from the PATH, each name with O_NOFOLLOW, then checked
to be a regular file on the descriptor that is read: a file or folder swapped for a link after the
listing is refused too, and a FIFO or a device is never read. Whatever a file holds, a problem with
it is reported as a `SkippedFile` (its name and a reason that quotes none of its content) and the
other files load.
"""

from __future__ import annotations

import errno
import gzip
import os
import stat
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from bqx.bar_formats import CSV_HEADER, HISTDATA_LINE, histdata_file_name
from bqx.load.errors import FileSkipped, LoadError
from bqx.pairs import PAIRS

BAR_FILE_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq", ".zip")
ZIP_MEMBER_SUFFIXES = (".csv", ".parquet")
HEAD_BYTES = 65536  # how much of a file format detection reads
GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = b"PK\x03\x04"
NOT_FOLLOWED = "a symbolic link, not followed (pass --follow-symlinks to load what it points to)"
# what reading a compressed file or an archive member can raise on bad data
UNREADABLE_DATA = (OSError, EOFError, zlib.error, zipfile.BadZipFile, NotImplementedError, RuntimeError)


@dataclass
class BarSource:
    """One file (or zip member) to load."""

    name: str  # as shown and stored in source_file
    read: Callable[[], bytes]  # its whole content, decompressed (raises FileSkipped)
    format: str
    pair: str | None  # the pair given by --pair or the file name: used where rows carry no pair
    only_pair: str | None = None  # --pair: rows of other pairs in a file with a pair column are skipped


@dataclass(frozen=True)
class SkippedFile:
    """A file (or path) that was not loaded, and why."""

    file: str
    reason: str


def pair_in_name(name: str) -> str | None:
    """The one pair a file name names (DAT_ASCII_EURUSD_M1_202407.csv -> EURUSD), if any."""
    upper = Path(name).name.upper()
    found = {p for p in PAIRS if p in upper}
    if len(found) == 1:
        return found.pop()
    if len(found) > 1:
        raise FileSkipped(f"the file name names several pairs ({', '.join(sorted(found))}); pass --pair")
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


def header_fields(line: bytes) -> list[str] | None:
    """The fields of `line` if it looks like a csv header, else None: printable ASCII, and it names
    ts_utc or has two or more fields that each start with a letter (a data line starts its
    timestamp and prices with digits)."""
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        return None
    if not text.isprintable():
        return None
    names = [n.strip().strip('"').strip().lower() for n in text.split(",")]
    if "ts_utc" in names:
        return names
    if len(names) < 2 or not all(n and (n[0].isalpha() or n[0] == "_") for n in names):
        return None
    return names


def header_names(line: bytes) -> list[str] | None:
    """The column names if `line` is a bar csv header (it names ts_utc), else None."""
    names = header_fields(line)
    return names if names is not None and "ts_utc" in names else None


def detect_format(head: bytes, name: str) -> str:
    """The format of a file from its name and first bytes."""
    if name.lower().endswith((".parquet", ".pq")) or head[:4] == b"PAR1":
        return "parquet"
    if head[:2] == GZIP_MAGIC:
        raise FileSkipped("gzip-compressed data, but the name does not end in .gz (name it .csv.gz)")
    if head[:4] == ZIP_MAGIC:
        raise FileSkipped("a zip archive, but the name does not end in .zip")
    first = first_line(head)
    if not first or header_fields(first) is not None:
        return "csv"  # an empty file has nothing to load; a header without ts_utc is reported by parse
    if HISTDATA_LINE.match(first):
        return "histdata"
    raise FileSkipped(
        f"not bar data: it starts neither with the csv header {CSV_HEADER} nor with a HistData line "
        "'YYYYMMDD HHMMSS;open;high;low;close;volume' (pass --format if it is one of them)"
    )


@dataclass(frozen=True)
class FoundFile:
    """A file to read: a path as given on the command line and the names below it (none: the path
    is the file itself)."""

    base: Path
    below: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        return self.base.joinpath(*self.below)


def open_regular(file: FoundFile, follow_symlinks: bool) -> BinaryIO:
    """`file` opened for reading if it is a regular file; a symbolic link (unless followed), a
    folder, a FIFO or a device is refused with FileSkipped, as is a file that cannot be opened.

    A file found in a folder is opened name by name from the given path, each name relative to
    the folder above it and with O_NOFOLLOW: a folder swapped for a link after the listing is
    not followed either."""
    nofollow = 0 if follow_symlinks else os.O_NOFOLLOW
    common = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | nofollow
    as_file = common | os.O_NONBLOCK  # NONBLOCK: a FIFO must not hang the load

    def open_folder(name: str | Path, above: int | None) -> int:
        try:
            return os.open(name, common | os.O_DIRECTORY, dir_fd=above)
        except NotADirectoryError:  # O_DIRECTORY | O_NOFOLLOW on a link fails with ENOTDIR
            if not follow_symlinks and stat.S_ISLNK(os.stat(name, dir_fd=above, follow_symlinks=False).st_mode):
                raise FileSkipped(NOT_FOLLOWED) from None
            raise

    try:
        if not file.below:
            descriptor = os.open(file.base, as_file)
        else:
            folder = open_folder(file.base, None)
            try:
                for name in file.below[:-1]:
                    inner = open_folder(name, folder)
                    os.close(folder)
                    folder = inner
                descriptor = os.open(file.below[-1], as_file, dir_fd=folder)
            finally:
                os.close(folder)
    except OSError as err:
        if err.errno == errno.ELOOP and not follow_symlinks:
            raise FileSkipped(NOT_FOLLOWED) from None
        raise FileSkipped(unreadable(err)) from None
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise FileSkipped("a folder" if stat.S_ISDIR(mode) else "not a regular file")
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def unreadable(err: OSError) -> str:
    """The reason for an OSError, without the path (the caller names the file)."""
    if isinstance(err, FileNotFoundError):
        return "no such file or directory"
    return f"cannot be read: {err.strerror or type(err).__name__}".rstrip()


def read_regular(file: FoundFile, follow_symlinks: bool) -> bytes:
    """A file's content, gunzipped when its name ends in .gz."""
    with open_regular(file, follow_symlinks) as handle:
        try:
            data = handle.read()
        except OSError as err:
            raise FileSkipped(unreadable(err)) from None
    if file.path.name.lower().endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except UNREADABLE_DATA:
            raise FileSkipped("not a readable gzip file (truncated or corrupt)") from None
    return data


def read_head(file: FoundFile, follow_symlinks: bool) -> bytes:
    """The first HEAD_BYTES of a file (decompressed when its name ends in .gz)."""
    with open_regular(file, follow_symlinks) as handle:
        try:
            if file.path.name.lower().endswith(".gz"):
                with gzip.GzipFile(fileobj=handle) as unzipped:
                    return unzipped.read(HEAD_BYTES)
            return handle.read(HEAD_BYTES)
        except OSError as err:
            if isinstance(err, gzip.BadGzipFile):
                raise FileSkipped("not a readable gzip file") from None
            raise FileSkipped(unreadable(err)) from None
        except UNREADABLE_DATA:
            raise FileSkipped("not a readable gzip file (truncated or corrupt)") from None


@dataclass
class FoundFiles:
    files: list[FoundFile]
    skipped: list[SkippedFile]


def walk_folder(folder: Path, follow_symlinks: bool, found: FoundFiles) -> int:
    """Add the bar files below `folder` to `found`, sorted by path, hidden names skipped; links are
    reported as skipped unless followed. Listed through folder descriptors (os.fwalk), so a
    folder swapped for a link while it is walked is not entered. Returns how many were added."""
    below_here: list[tuple[str, ...]] = []
    seen: set[tuple[int, int]] = set()

    def cannot_list(err: OSError) -> None:
        found.skipped.append(SkippedFile(str(err.filename or folder), f"cannot list this folder: {err.strerror}"))

    for directory, dirnames, filenames, directory_fd in os.fwalk(
        folder, follow_symlinks=follow_symlinks, onerror=cannot_list
    ):
        here = os.fstat(directory_fd)
        if (here.st_dev, here.st_ino) in seen:  # a loop of followed links
            dirnames.clear()
            continue
        seen.add((here.st_dev, here.st_ino))
        below = Path(directory).relative_to(folder).parts
        enter = []
        for name in sorted([*dirnames, *filenames]):
            if name.startswith("."):
                continue
            path = Path(directory, name)
            wanted = name.lower().endswith(BAR_FILE_SUFFIXES) or name in dirnames
            try:
                info = os.stat(name, dir_fd=directory_fd, follow_symlinks=False)
                if stat.S_ISLNK(info.st_mode):
                    if not follow_symlinks:
                        if wanted:
                            found.skipped.append(SkippedFile(str(path), NOT_FOLLOWED))
                        continue
                    info = os.stat(name, dir_fd=directory_fd)
            except OSError as err:
                if wanted:
                    found.skipped.append(SkippedFile(str(path), unreadable(err)))
                continue
            if stat.S_ISDIR(info.st_mode):
                enter.append(name)
            elif not wanted:
                continue
            elif stat.S_ISREG(info.st_mode):
                below_here.append((*below, name))
            else:
                found.skipped.append(SkippedFile(str(path), "not a regular file"))
        dirnames[:] = enter
    found.files.extend(FoundFile(folder, names) for names in sorted(below_here))
    return len(below_here)


def expand_paths(paths: Sequence[Path], follow_symlinks: bool) -> FoundFiles:
    """Files as given, and the bar files found in folders; what cannot be used is reported."""
    found = FoundFiles([], [])
    for path in map(Path, paths):
        try:
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                if not follow_symlinks:
                    found.skipped.append(SkippedFile(str(path), NOT_FOLLOWED))
                    continue
                info = os.stat(path)
        except OSError as err:
            found.skipped.append(SkippedFile(str(path), unreadable(err)))
            continue
        if stat.S_ISDIR(info.st_mode):
            skipped_before = len(found.skipped)
            if not walk_folder(path, follow_symlinks, found) and len(found.skipped) == skipped_before:
                found.skipped.append(
                    SkippedFile(str(path), "a folder without any *.csv, *.csv.gz, *.parquet or *.zip file")
                )
        elif stat.S_ISREG(info.st_mode):
            found.files.append(FoundFile(path))
        else:
            found.skipped.append(SkippedFile(str(path), "not a regular file"))
    return found


def zip_sources(
    file: FoundFile, fmt: str | None, pair: str | None, follow_symlinks: bool
) -> list[BarSource | SkippedFile]:
    """The .csv and .parquet members of a zip archive, each a source (or skipped)."""
    path = file.path
    handle = open_regular(file, follow_symlinks)
    try:
        archive = zipfile.ZipFile(handle)
        names = archive.namelist()
    except UNREADABLE_DATA:
        handle.close()
        raise FileSkipped("not a readable zip file") from None
    members = sorted(m for m in names if m.lower().endswith(ZIP_MEMBER_SUFFIXES) and not m.endswith("/"))
    if not members:
        handle.close()
        raise FileSkipped("the zip file holds no .csv or .parquet file")
    found: list[BarSource | SkippedFile] = []
    for member in members:
        name = f"{path}!{member}"

        def read_member(archive: zipfile.ZipFile = archive, member: str = member) -> bytes:
            try:
                return archive.read(member)
            except UNREADABLE_DATA:
                raise FileSkipped("a zip member that cannot be read (corrupt, encrypted or compressed oddly)") from None

        try:
            with archive.open(member) as member_handle:
                head = member_handle.read(HEAD_BYTES)
            member_fmt = fmt or detect_format(head, member)
            member_pair = pair or pair_in_name(member) or pair_in_name(path.name)
            found.append(check_pair(BarSource(name, read_member, member_fmt, member_pair, pair)))
        except FileSkipped as err:  # first: a FileSkipped is a RuntimeError too
            found.append(SkippedFile(name, str(err)))
        except UNREADABLE_DATA:
            found.append(SkippedFile(name, "a zip member that cannot be read (corrupt, encrypted or compressed oddly)"))
    return found


def check_pair(source: BarSource) -> BarSource:
    if source.format == "histdata" and source.pair is None:
        raise FileSkipped(
            "a HistData file carries no pair and its name names none of the 28 pairs; "
            f"pass --pair (e.g. --pair EURUSD) or rename it (e.g. {histdata_file_name('EURUSD', 2024, 7)})"
        )
    return source


def find_sources(
    paths: Sequence[Path], fmt: str | None, pair: str | None, *, follow_symlinks: bool = False
) -> tuple[list[BarSource], list[SkippedFile]]:
    """Every file to load with its format and pair (in the order of the paths; folders sorted),
    and the paths and files that cannot be loaded, with the reason."""
    found = expand_paths(paths, follow_symlinks)
    sources: list[BarSource] = []
    skipped: list[SkippedFile] = list(found.skipped)
    for file in found.files:
        path = file.path
        try:
            if path.name.lower().endswith(".zip"):
                for item in zip_sources(file, fmt, pair, follow_symlinks):
                    (sources if isinstance(item, BarSource) else skipped).append(item)  # type: ignore[arg-type]
                continue
            head = read_head(file, follow_symlinks)
            file_fmt = fmt or detect_format(head, path.name)

            def read_file(file: FoundFile = file) -> bytes:
                return read_regular(file, follow_symlinks)

            sources.append(check_pair(BarSource(str(path), read_file, file_fmt, pair or pair_in_name(path.name), pair)))
        except FileSkipped as err:
            skipped.append(SkippedFile(str(path), str(err)))
    return sources, skipped
