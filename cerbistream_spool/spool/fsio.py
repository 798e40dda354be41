"""Filesystem primitives with the crash-safe order of operations (docs/FORMAT.md §7).

Every durable change follows: write → fsync file → (rename) → fsync directory.
Directories are created 0700, files 0600.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import time
from typing import List, Tuple

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "atomic_write",
    "create_temp",
    "ensure_dir",
    "file_size",
    "fsync_dir",
    "sweep_temp_files",
    "write_all",
]

DIR_MODE = 0o700
FILE_MODE = 0o600


def fsync_dir(path: str) -> None:
    """fsync a directory so a create, rename or unlink inside it is durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: str) -> None:
    """Create ``path`` (and parents) 0700 if missing; fsync the parent of a new directory."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(os.path.abspath(path))
    ensure_dir(parent)
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:  # another process won the race (opencensus #816)
        return
    os.chmod(path, DIR_MODE)  # umask may have removed bits we do not need; never adds any
    fsync_dir(parent)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is in the OS (short writes are legal)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# NAME.<16 hex>.tmp: a fresh name per write, created O_EXCL|O_NOFOLLOW, so a planted
# file or symlink is never followed or overwritten and two writers never share one
_TEMP = re.compile(r"^(?P<name>.+)\.[0-9a-f]{16}\.tmp$")
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)


def create_temp(path: str) -> Tuple[str, int]:
    """A new temp file beside ``path``, 0600, never through a link: ``(name, fd)``."""
    while True:
        tmp = f"{path}.{secrets.token_hex(8)}.tmp"
        try:
            return tmp, os.open(tmp, _CREATE, FILE_MODE)
        except FileExistsError:  # 2**-64 per try, or someone planting names: pick another
            continue


def atomic_write(path: str, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync directory.

    ``durable=False`` skips both fsyncs (advisory files such as drain-status.json).
    """
    tmp, fd = create_temp(path)
    try:
        try:
            write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(os.path.dirname(os.path.abspath(path)))


def sweep_temp_files(directory: str, older_than_s: float = 600.0) -> List[str]:
    """Unlink our stale temp files (``NAME.<16 hex>.tmp``) in ``directory``; returns them.

    Only regular files (checked with ``lstat``: a symlink is never followed, and
    unlinking one removes the link, not its target) older than ``older_than_s``,
    so a write in progress in another process is left alone.
    """
    removed: List[str] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    cutoff = time.time() - older_than_s
    for name in names:
        if not _TEMP.match(name):
            continue
        path = os.path.join(directory, name)
        try:
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                os.unlink(path)
                removed.append(name)
        except OSError:
            continue
    return removed


def file_size(path: str) -> int:
    """Size of ``path``; 0 when it is gone (a drainer or writer may unlink it meanwhile)."""
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0
