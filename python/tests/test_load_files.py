"""`bqx load` file by file: a file that cannot be loaded is named with the reason and skipped,
the others load; symbolic links are not followed; the command line says each problem in one
line (never a traceback) and its exit code tells loaded (0), files skipped (3) and fatal (2)."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bqx import cli
from bqx.load import format_summary, load_paths

HEADER = "pair,ts_utc,open,high,low,close,volume,spread"
SECRET = "TOPSECRET-7f3a"  # in files the loader must not read or quote


def bars_csv(path: Path, pair: str = "EURUSD", n: int = 3, header: str = HEADER) -> Path:
    lines = [f"{pair},2024-07-01T00:{i:02d}:00Z,1.1,1.2,1.0,1.1,{i},0.0001" for i in range(n)]
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


def stored(dsn: str, sql: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()


# every bad input of issue 9, each a file that is skipped with the reason
def wrong_header(d: Path) -> Path:
    return bars_csv(d / "wrong_header.csv", header="pair,timestamp,open,high,low,close,volume,spread")


def missing_header_column(d: Path) -> Path:
    path = d / "missing_column.csv"
    path.write_text("pair,ts_utc,open,high,low,close,spread\nEURUSD,2024-07-01T00:00:00Z,1.1,1.2,1.0,1.1,\n")
    return path


def no_header(d: Path) -> Path:
    path = d / "no_header.csv"
    path.write_text(f"EURUSD,2024-07-01T00:00:00Z,1.1,1.2,1.0,1.1,1,{SECRET}\n")
    return path


def binary_garbage(d: Path) -> Path:
    path = d / "garbage.csv"
    path.write_bytes(bytes(range(256)) * 8 + SECRET.encode() + b"\n\x00\xff")
    return path


def gzip_named_csv(d: Path) -> Path:
    path = d / "compressed.csv"
    path.write_bytes(gzip.compress(bars_csv(d / "plain.txt").read_bytes()))
    return path


def truncated_parquet(d: Path) -> Path:
    path = d / "truncated.parquet"
    full = d / "full.parquet.tmp"
    pq.write_table(pa.table({"pair": ["EURUSD"] * 100, "ts_utc": ["2024-07-01T00:00:00Z"] * 100}), full)
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    return path


def parquet_with_a_list_column(d: Path) -> Path:
    path = d / "list_column.parquet"
    table = pa.table(
        {
            "pair": ["EURUSD"],
            "ts_utc": ["2024-07-01T00:00:00Z"],
            "open": pa.array([[1.1, 1.2]], pa.list_(pa.float64())),
            "high": [1.2],
            "low": [1.0],
            "close": [1.1],
            "volume": [1],
        }
    )
    pq.write_table(table, path)
    return path


def broken_zip(d: Path) -> Path:
    path = d / "download.zip"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    return path


def histdata_without_pair(d: Path) -> Path:
    path = d / "export_202407.csv"
    path.write_text("20240701 000000;1.1;1.2;1.0;1.1;0\n")
    return path


def nonexistent(d: Path) -> Path:
    return d / "no_such_file.csv"


BAD_INPUTS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "wrong_header": (wrong_header, "the header lacks the column(s) ts_utc"),
    "missing_header_column": (missing_header_column, "the header lacks the column(s) volume"),
    "no_header": (no_header, "not bar data"),
    "binary_garbage": (binary_garbage, "not bar data"),
    "gzip_named_csv": (gzip_named_csv, "gzip-compressed data"),
    "truncated_parquet": (truncated_parquet, "not a readable parquet file"),
    "parquet_with_a_list_column": (parquet_with_a_list_column, "column open has type list<"),
    "broken_zip": (broken_zip, "not a readable zip file"),
    "histdata_without_pair": (histdata_without_pair, "pass --pair"),
    "nonexistent": (nonexistent, "no such file or directory"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_a_bad_file_is_skipped_and_the_others_load(case: str, dsn: str, tmp_path: Path) -> None:
    make, reason = BAD_INPUTS[case]
    bad = make(tmp_path)
    first, last = bars_csv(tmp_path / "EURUSD_1.csv"), bars_csv(tmp_path / "GBPUSD_2.csv", pair="GBPUSD")

    summary = load_paths(dsn, [first, bad, last])

    assert [f.file for f in summary.files] == [str(first), str(last)]
    [skipped] = summary.skipped
    assert skipped.file == str(bad) and reason in skipped.reason
    assert SECRET not in skipped.reason
    assert stored(dsn, "select pair, count(*) from raw.m1_bars group by 1 order by 1") == [("EURUSD", 3), ("GBPUSD", 3)]
    assert stored(dsn, f"select count(*) from raw.m1_rejects where raw_text like '%{SECRET}%'") == [(0,)]


def test_a_folder_with_a_bad_header_between_good_files(dsn: str, tmp_path: Path) -> None:
    folder = tmp_path / "bars"
    folder.mkdir()
    bars_csv(folder / "a_EURUSD.csv")
    bars_csv(folder / "b_bad.csv", header="pair,ts_utc,open,high,low,close")
    bars_csv(folder / "c_GBPUSD.csv", pair="GBPUSD")

    summary = load_paths(dsn, [folder])

    assert [Path(f.file).name for f in summary.files] == ["a_EURUSD.csv", "c_GBPUSD.csv"]
    assert [(Path(s.file).name, s.reason) for s in summary.skipped] == [
        ("b_bad.csv", f"the header lacks the column(s) volume (a bar csv starts with {HEADER})")
    ]
    assert stored(dsn, "select count(*) from raw.m1_bars") == [(6,)]
    text = format_summary(summary)
    assert "1 file(s) skipped" in text and "b_bad.csv: the header lacks" in text


def test_an_unreadable_file_is_skipped(dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Permission denied (simulated: root reads every file), named without the error's path."""
    from bqx.load import sources

    good, locked = bars_csv(tmp_path / "EURUSD.csv"), bars_csv(tmp_path / "locked_GBPUSD.csv", pair="GBPUSD")
    real_open = os.open

    def refusing(path: str | os.PathLike, flags: int, *args: object, **kwargs: object) -> int:
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(sources.os, "open", refusing)
    summary = load_paths(dsn, [good, locked])
    assert [(s.file, s.reason) for s in summary.skipped] == [(str(locked), "cannot be read: Permission denied")]
    assert summary.rows_loaded == 3


def test_symlinks_are_not_followed(dsn: str, tmp_path: Path) -> None:
    """A link in a loaded folder to a file only root may read: neither read nor quoted."""
    outside = tmp_path / "private"
    outside.mkdir(mode=0o700)
    secret = outside / "secret.csv"
    secret.write_text(f"{HEADER}\n{SECRET},2024-07-01T00:00:00Z,1.1,1.2,1.0,1.1,1,\nEURUSD,x,1,1,1,1,1,\n")
    secret.chmod(0o600)
    folder = tmp_path / "bars"
    folder.mkdir()
    bars_csv(folder / "EURUSD.csv")
    (folder / "linked.csv").symlink_to(secret)
    (folder / "linked_folder").symlink_to(outside, target_is_directory=True)
    given = tmp_path / "given.csv"
    given.symlink_to(secret)

    summary = load_paths(dsn, [folder, given])

    assert [Path(f.file).name for f in summary.files] == ["EURUSD.csv"]
    assert sorted(Path(s.file).name for s in summary.skipped) == ["given.csv", "linked.csv", "linked_folder"]
    assert all("symbolic link, not followed" in s.reason for s in summary.skipped)
    assert stored(dsn, "select count(*) from raw.m1_rejects") == [(0,)]
    assert stored(dsn, "select count(*) from raw.m1_bars") == [(3,)]

    followed = load_paths(dsn, [folder], follow_symlinks=True)  # asked for: the links are read
    assert sorted(Path(f.file).name for f in followed.files) == ["EURUSD.csv", "linked.csv", "secret.csv"]


def test_a_folder_swapped_for_a_link_after_the_listing_is_not_followed(tmp_path: Path) -> None:
    """Between finding a file and reading it, another user replaces a folder of the path by a
    link to a folder only root may read: the read is refused, nothing of the target is read."""
    from bqx.load import sources

    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "EURUSD.csv").write_text(f"{HEADER}\n{SECRET},2024-07-01T00:00:00Z,1.1,1.2,1.0,1.1,1,\n")
    folder = tmp_path / "bars"
    (folder / "sub").mkdir(parents=True)
    bars_csv(folder / "sub" / "EURUSD.csv")
    [source], skipped = sources.find_sources([folder], None, None)
    assert skipped == [] and source.name == str(folder / "sub" / "EURUSD.csv")

    (folder / "sub").rename(tmp_path / "moved")
    (folder / "sub").symlink_to(private, target_is_directory=True)

    with pytest.raises(sources.FileSkipped, match="symbolic link, not followed") as refused:
        source.read()
    assert SECRET not in str(refused.value)


def test_a_fifo_is_never_opened(dsn: str, tmp_path: Path) -> None:
    """A FIFO named like a bar file would block a reader forever: it is skipped unopened."""
    folder = tmp_path / "bars"
    folder.mkdir()
    bars_csv(folder / "EURUSD.csv")
    os.mkfifo(folder / "pipe.csv")
    summary = load_paths(dsn, [folder, folder / "pipe.csv"])
    assert [s.reason for s in summary.skipped] == ["not a regular file", "not a regular file"]
    assert summary.rows_loaded == 3


# -------------------------------------------------------------------------- the command line


def run_load(dsn: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, BQX_PG_DSN=dsn)
    command = [sys.executable, "-m", "bqx.cli", "load", *map(str, args)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_every_bad_input_is_one_line_on_stderr(
    dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each bad input through `bqx load` (in process: an escaping exception fails the test), then
    all of them at once in a real process: one stderr line each, no traceback, exit code 3."""
    monkeypatch.setenv("BQX_PG_DSN", dsn)
    bad_files = {}
    for case, (make, reason) in sorted(BAD_INPUTS.items()):
        bad = bad_files[case] = make(tmp_path)
        assert cli.main(["load", str(bad)]) == cli.LOAD_EXIT_FILES_SKIPPED, case
        out, err = capsys.readouterr()
        [line] = err.splitlines()
        assert line.startswith(f"bqx load: skipped {bad}: ") and reason in line, case
        assert SECRET not in out + err, case
        assert f"{bad}: " in out and "1 file(s) skipped" in out, case  # the summary lists it too

    done = run_load(dsn, *bad_files.values())
    assert done.returncode == cli.LOAD_EXIT_FILES_SKIPPED and "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.splitlines()
    assert len(lines) == len(BAD_INPUTS) and all(line.startswith("bqx load: skipped ") for line in lines)
    assert SECRET not in done.stderr + done.stdout


def test_exit_codes(dsn: str, tmp_path: Path) -> None:
    good = bars_csv(tmp_path / "EURUSD.csv")
    with_bad_rows = tmp_path / "GBPUSD.csv"
    with_bad_rows.write_text(
        f"{HEADER}\nGBPUSD,2024-07-01T00:00:00Z,1.1,1.2,1.0,1.1,1,\nGBPUSD,2100-01-01T00:00:00Z,1e308,1e308,1,1,1,\n"
    )
    loaded = run_load(dsn, good, with_bad_rows)  # rejected rows are normal: `bqx load && bqx build`
    assert (loaded.returncode, loaded.stderr) == (cli.LOAD_EXIT_OK, "")
    assert "1 rows rejected" in loaded.stdout

    partly = run_load(dsn, good, tmp_path / "missing.csv")
    assert partly.returncode == cli.LOAD_EXIT_FILES_SKIPPED
    assert partly.stderr == f"bqx load: skipped {tmp_path / 'missing.csv'}: no such file or directory\n"

    band = run_load(dsn, good, "--max-price", "1e9")
    assert band.returncode == cli.LOAD_EXIT_FATAL and len(band.stderr.splitlines()) == 1
    assert "above 100000, the highest price raw.m1_bars accepts" in band.stderr

    unreachable = run_load("postgresql://bqx@127.0.0.1:1/none?connect_timeout=3", good)
    assert unreachable.returncode == cli.LOAD_EXIT_FATAL and "Traceback" not in unreachable.stderr
    assert len(unreachable.stderr.splitlines()) == 1 and unreachable.stderr.startswith("bqx load: database error")

    help_text = subprocess.run(
        [sys.executable, "-m", "bqx.cli", "load", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "exit status" in help_text and "--follow-symlinks" in help_text


def test_a_file_name_with_a_newline_stays_on_one_line(dsn: str, tmp_path: Path) -> None:
    odd = tmp_path / "two\nlines.csv"
    odd.write_text("not bars\n")
    done = run_load(dsn, odd)
    assert done.returncode == cli.LOAD_EXIT_FILES_SKIPPED
    assert len(done.stderr.splitlines()) == 1 and "two\\nlines.csv" in done.stderr
