"""Filesystem primitives with the crash-safe order of operations (docs/FORMAT.md §7).

Every durable change follows: write → fsync file → (rename) → fsync directory.
Directories are created 0700, files 0600.
"""

from __future__ import annotations

import os

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "atomic_write",
    "ensure_dir",
    "file_size",
    "fsync_dir",
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


def atomic_write(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync directory."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def file_size(path: str) -> int:
    """Size of ``path``; 0 when it is gone (a drainer or writer may unlink it meanwhile)."""
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0
