"""Creating and writing files without following what someone else controls.

`bqx` often runs as root (CI boxes, servers), in places other accounts can change: the data
directory of the server's service account, a checkout another user owns (`.bqx/`, `data/`),
shared temporary folders. A plain `open(path, "w")` there follows a symlink planted by that
account and overwrites whatever it points to (a root-only file, say). Every write of the
project therefore goes through this module:

- folders are opened component by component with `O_NOFOLLOW` once resolved, and a symlink
  on the way is followed only when root or the current user owns it (as the kernel's
  `protected_symlinks` does in sticky folders);
- files are written to a fresh temporary name (`O_CREAT | O_EXCL | O_NOFOLLOW`) and renamed
  over the target: a planted symlink or hard link is replaced, never written through;
- files are read with `O_NOFOLLOW` and their owner checked.

All work happens on folder descriptors (`dir_fd`), so a path changed between a check and a
use is never followed either.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePathError(Exception):
    """A path is not what it must be (a symlink, a wrong owner or mode); the message names it."""


def _trusted_owner(uid: int) -> bool:
    return uid in (0, os.geteuid())


def _check_symlinks_on_the_way(path: Path) -> None:
    """Refuse a symlink among the existing components of `path` unless root or we own it."""
    current = Path(path.anchor)
    for part in path.parts[1:]:
        current = current / part
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(info.st_mode) and not _trusted_owner(info.st_uid):
            raise UnsafePathError(f"{current} is a symlink owned by uid {info.st_uid}: not followed")


def open_dir(path: Path, *, create_mode: int | None = None, owners: set[int] | None = None) -> int:
    """A descriptor of folder `path`, never reached through a symlink someone else owns.

    Missing folders are created with `create_mode` (None: a missing folder is an error).
    `owners`: uids the folder itself may belong to (None: any). The caller closes the fd."""
    path = Path(os.path.abspath(path))
    _check_symlinks_on_the_way(path)
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    real = Path(os.path.realpath(existing))
    missing = path.relative_to(existing).parts if existing != path else ()
    fd = os.open("/", _DIR_FLAGS)
    try:
        for part in [*real.parts[1:], *missing]:
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if create_mode is None:
                    raise UnsafePathError(f"{path}: folder {part} does not exist") from None
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, create_mode, dir_fd=fd)
                child = _open_child_dir(fd, part, path)
            except OSError as err:
                raise UnsafePathError(f"{path}: {part} is not a folder (or is a symlink): {err.strerror}") from None
            os.close(fd)
            fd = child
        if owners is not None:
            uid = os.fstat(fd).st_uid
            if uid not in owners:
                raise UnsafePathError(f"{path} belongs to uid {uid}, expected {' or '.join(map(str, sorted(owners)))}")
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_child_dir(dir_fd: int, name: str, shown: Path) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as err:
        raise UnsafePathError(f"{shown}: {name} is not a folder (or is a symlink): {err.strerror}") from None


def open_subdir(
    dir_fd: int, name: str, shown: Path, *, create_mode: int | None = None, owner: tuple[int, int] | None = None
) -> int:
    """A descriptor of folder `name` inside `dir_fd` (never a symlink), created if missing.

    `owner` = (uid, gid) it is given when created and must have when it exists."""
    created = False
    if create_mode is not None:
        try:
            os.mkdir(name, create_mode, dir_fd=dir_fd)
            created = True
        except FileExistsError:
            pass
    fd = _open_child_dir(dir_fd, name, shown)
    try:
        if owner is not None:
            if created:
                os.fchown(fd, *owner)
                os.fchmod(fd, create_mode or 0o700)
            elif os.fstat(fd).st_uid != owner[0]:
                raise UnsafePathError(f"{shown} belongs to uid {os.fstat(fd).st_uid}, expected {owner[0]}")
        return fd
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def opened_dir(path: Path, *, create_mode: int | None = None, owners: set[int] | None = None) -> Iterator[int]:
    fd = open_dir(path, create_mode=create_mode, owners=owners)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(dir_fd: int, name: str, *, mode: int = 0o644, durable: bool = True) -> Iterator[BinaryIO]:
    """A binary file that replaces `name` in `dir_fd` when the block ends without error.

    It is written under a fresh name (O_EXCL | O_NOFOLLOW: nothing planted is followed) and
    renamed over `name`, so a symlink or hard link at `name` is replaced, not written through.
    `durable`: flushed to disk before the rename (a cache whose readers check what they read
    may skip it)."""
    temporary = f".{name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)  # the umask does not narrow what the caller asked for
        with os.fdopen(fd, "wb", closefd=True) as sink:
            yield sink
            sink.flush()
            if durable:
                os.fsync(sink.fileno())
        os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise


def write_file(dir_fd: int, name: str, data: bytes, *, mode: int = 0o644) -> None:
    """Replace `name` in `dir_fd` by `data` (see atomic_writer)."""
    with atomic_writer(dir_fd, name, mode=mode) as sink:
        sink.write(data)


def _open_regular(dir_fd: int, name: str, shown: Path, owners: set[int] | None) -> int | None:
    """A read-only descriptor of regular file `name` in `dir_fd` (None: it does not exist); a
    symlink, a non-regular file or (with `owners`) a file of another owner is refused."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise UnsafePathError(f"{shown} cannot be read safely (a symlink?): {err.strerror}") from None
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = f"{shown} is not a regular file"
    elif owners is not None and info.st_uid not in owners:
        problem = f"{shown} belongs to uid {info.st_uid}, not to the expected account"
    if problem:
        os.close(fd)
        raise UnsafePathError(problem)
    return fd


def read_file(dir_fd: int, name: str, shown: Path, *, owners: set[int] | None = None) -> bytes | None:
    """The bytes of regular file `name` in `dir_fd`; None when it does not exist.

    A symlink, a non-regular file or (with `owners`) a file of another owner is refused."""
    fd = _open_regular(dir_fd, name, shown, owners)
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as source:
        return source.read()


def map_file(dir_fd: int, name: str, shown: Path, *, owners: set[int] | None = None) -> mmap.mmap | None:
    """Regular file `name` in `dir_fd` mapped read-only (None: missing or empty), with
    read_file's checks: its pages are read as they are used, the mapping outlives the rename of
    a newer file over it."""
    fd = _open_regular(dir_fd, name, shown, owners)
    if fd is None:
        return None
    try:
        if os.fstat(fd).st_size == 0:
            return None
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)


def lstat_in(dir_fd: int, name: str) -> os.stat_result | None:
    """lstat of `name` inside `dir_fd` (None when missing)."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def ensure_symlink(dir_fd: int, name: str, target: Path, shown: Path) -> None:
    """`name` in `dir_fd` is a symlink to `target` (a wrong link is replaced; anything else is an error)."""
    info = lstat_in(dir_fd, name)
    if info is not None and stat.S_ISLNK(info.st_mode):
        if os.readlink(name, dir_fd=dir_fd) == str(target):
            return
        os.unlink(name, dir_fd=dir_fd)
    elif info is not None:
        raise UnsafePathError(f"{shown} exists and is not the link to {target}: move it away")
    os.symlink(str(target), name, dir_fd=dir_fd)


def chown_tree(dir_fd: int, shown: Path, from_uid: int, to_uid: int, to_gid: int) -> None:
    """Give every entry under `dir_fd` owned by `from_uid` to `to_uid:to_gid`, following nothing.

    Each entry is opened with O_NOFOLLOW and changed through its descriptor (no path is used
    twice); a regular file with several hard links is refused (it may be someone else's file
    linked in), entries of other owners are left alone."""
    if os.fstat(dir_fd).st_uid == from_uid:
        os.fchown(dir_fd, to_uid, to_gid)
    for entry in list(os.scandir(dir_fd)):
        info = lstat_in(dir_fd, entry.name)
        if info is None or info.st_uid != from_uid:
            continue
        if stat.S_ISLNK(info.st_mode):
            os.chown(entry.name, to_uid, to_gid, dir_fd=dir_fd, follow_symlinks=False)
            continue
        if not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
            os.chown(entry.name, to_uid, to_gid, dir_fd=dir_fd, follow_symlinks=False)
            continue
        flags = (os.O_DIRECTORY if stat.S_ISDIR(info.st_mode) else os.O_NONBLOCK) | os.O_RDONLY
        fd = os.open(entry.name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            opened = os.fstat(fd)
            if opened.st_uid != from_uid:
                continue
            if stat.S_ISDIR(opened.st_mode):
                chown_tree(fd, shown / entry.name, from_uid, to_uid, to_gid)
            elif stat.S_ISREG(opened.st_mode):
                if opened.st_nlink != 1:
                    raise UnsafePathError(f"{shown / entry.name} has {opened.st_nlink} hard links: not taken over")
                os.fchown(fd, to_uid, to_gid)
        finally:
            os.close(fd)
