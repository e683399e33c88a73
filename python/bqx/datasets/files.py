"""Files appear complete or not at all: written aside (a name no reader takes for a result),
then renamed; leftovers of an interrupted run are removed by the next one."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bqx.datasets.options import DatasetError

TEMP_MARK = ".partial-"


def _temp_name(path: Path) -> Path:
    return path.with_name(f"{TEMP_MARK}{os.getpid()}-{path.name}")


@contextmanager
def temporary_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it to `path` when the block succeeds."""
    tmp = _temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    with temporary_path(path) as tmp:
        tmp.write_text(text)


def remove_leftovers(folder: Path) -> int:
    """Delete partial files and folders of runs that are no longer alive; return how many."""
    removed = 0
    if not folder.exists():
        return 0
    for candidate in folder.rglob(f"{TEMP_MARK}*"):
        pid_text = candidate.name[len(TEMP_MARK) :].split("-", 1)[0]
        if pid_text.isdigit() and _alive(int(pid_text)) and int(pid_text) != os.getpid():
            continue  # another builder is writing it
        shutil.rmtree(candidate, ignore_errors=True) if candidate.is_dir() else candidate.unlink(missing_ok=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ensure_writable(folder: Path) -> None:
    """The output folder exists (or can be made) and takes files; else a one-line error."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f"{TEMP_MARK}{os.getpid()}-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise DatasetError(f"cannot write to the output folder {folder} ({err.strerror}): choose another with --out or fix its permissions") from None
