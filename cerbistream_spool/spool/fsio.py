"""File helpers with the crash-safe order of operations (docs/FORMAT.md §7).

Every operation goes through the filesystem seam (spool/fs.py): :func:`current` is the
one in use, :func:`use` swaps it for a block (tests inject faults, tools record).

Every durable change follows: write → fsync file → (rename) → fsync directory.
Directories are created 0700, files 0600.

Every read of a spool file goes through :func:`open_regular` (or :func:`read_regular`
/ :func:`map_regular` on top of it): no symlink is followed, nothing blocks (a FIFO
opens and is refused), only a regular file is read, and never past its size.
:func:`list_entries` names what a directory holds without following symlinks.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import time
from typing import TYPE_CHECKING, List, Optional, Tuple

from cerbistream_spool.spool.fs import FileSystem, OsFileSystem, current, use

if TYPE_CHECKING:
    import mmap

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "FileSystem",
    "ForeignFileError",
    "OsFileSystem",
    "atomic_write",
    "copy_file",
    "create_temp",
    "current",
    "ensure_dir",
    "file_size",
    "fsync_dir",
    "identity",
    "is_dir",
    "list_entries",
    "map_regular",
    "open_regular",
    "read_regular",
    "remove_tree",
    "sweep_temp_files",
    "use",
    "write_all",
]

DIR_MODE = 0o700
FILE_MODE = 0o600


def fsync_dir(path: str) -> None:
    """fsync a directory so a create, rename or unlink inside it is durable."""
    current().fsync_dir(path)


def is_dir(path: str) -> bool:
    """``os.path.isdir`` (follows symlinks) through the seam."""
    try:
        return stat.S_ISDIR(current().stat(path).st_mode)
    except (OSError, ValueError):
        return False


def ensure_dir(path: str) -> None:
    """Create ``path`` (and parents) 0700 if missing; fsync the parent of a new directory."""
    if is_dir(path):
        return
    parent = os.path.dirname(os.path.abspath(path))
    ensure_dir(parent)
    fs = current()
    try:
        fs.mkdir(path, DIR_MODE)
    except FileExistsError:  # another process won the race (opencensus #816)
        return
    fs.chmod(path, DIR_MODE)  # umask may have removed bits we do not need; never adds any
    fs.fsync_dir(parent)


def write_all(fd: int, data: bytes) -> None:
    """``write`` until every byte is in the OS (short writes are legal)."""
    write = current().write
    view = memoryview(data)
    while view:
        written = write(fd, view)
        view = view[written:]


# NAME.<16 hex>.tmp: a fresh name per write, created O_EXCL|O_NOFOLLOW, so a planted
# file or symlink is never followed or overwritten and two writers never share one
_TEMP = re.compile(r"^(?P<name>.+)\.[0-9a-f]{16}\.tmp$")
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)


def temp_target(name: str) -> Optional[str]:
    """The file name a temp file of ours (``create_temp``) stands for, else None."""
    found = _TEMP.match(name)
    return found.group("name") if found else None


def create_temp(path: str) -> Tuple[str, int]:
    """A new temp file beside ``path``, 0600, never through a link: ``(name, fd)``."""
    while True:
        tmp = f"{path}.{secrets.token_hex(8)}.tmp"
        try:
            return tmp, current().open(tmp, _CREATE, FILE_MODE)
        except FileExistsError:  # 2**-64 per try, or someone planting names: pick another
            continue


def atomic_write(path: str, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync directory.

    ``durable=False`` skips both fsyncs (advisory files such as drain-status.json).
    """
    fs = current()
    tmp, fd = create_temp(path)
    try:
        try:
            write_all(fd, data)
            if durable:
                fs.fsync(fd)
        finally:
            fs.close(fd)
        fs.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.unlink(tmp)
        raise
    if durable:
        fs.fsync_dir(os.path.dirname(os.path.abspath(path)))


def copy_file(src: str, dst: str) -> None:
    """Copy the regular file ``src`` to a new ``dst`` (0600, never through a link), fsync
    it; the caller fsyncs the directory. ``FileNotFoundError`` when ``src`` is gone."""
    fs = current()
    source, _ = open_regular(src)
    try:
        fd = fs.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NOFOLLOW, FILE_MODE)
        try:
            while True:
                chunk = fs.read(source, 1 << 20)
                if not chunk:
                    break
                write_all(fd, chunk)
            fs.fsync(fd)
        finally:
            fs.close(fd)
    finally:
        fs.close(source)


def remove_tree(path: str) -> None:
    """Delete a directory tree, never following a symlink; errors are ignored."""
    fs = current()
    for name, kind in list_entries(path):
        child = os.path.join(path, name)
        if kind == _DIRECTORY:
            remove_tree(child)
        else:
            with contextlib.suppress(OSError):
                fs.unlink(child)
    with contextlib.suppress(OSError):
        fs.rmdir(path)


def sweep_temp_files(directory: str, older_than_s: float = 600.0) -> List[str]:
    """Unlink our stale temp files (``NAME.<16 hex>.tmp``) in ``directory``; returns them.

    Only regular files (checked with ``lstat``: a symlink is never followed, and
    unlinking one removes the link, not its target) older than ``older_than_s``,
    so a write in progress in another process is left alone.
    """
    removed: List[str] = []
    fs = current()
    cutoff = time.time() - older_than_s
    for name, _kind in list_entries(directory):
        if not _TEMP.match(name):
            continue
        path = os.path.join(directory, name)
        try:
            st = fs.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                fs.unlink(path)
                removed.append(name)
        except OSError:
            continue
    return removed


def file_size(path: str) -> int:
    """Size of ``path`` itself (a link is not followed); 0 when it is gone (a drainer or
    writer may unlink it meanwhile)."""
    try:
        return current().lstat(path).st_size
    except FileNotFoundError:
        return 0


def identity(path: str) -> Optional[Tuple[int, int]]:
    """``(st_dev, st_ino)`` of ``path`` itself (a link is not followed); None when it is gone."""
    try:
        st = current().lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class ForeignFileError(OSError):
    """The path is a symlink, FIFO, device, socket or directory, not a regular file."""


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_READ_FLAGS = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_REGULAR, _DIRECTORY, _OTHER = "file", "dir", "other"


def open_regular(path: str) -> Tuple[int, int]:
    """Open a regular file read-only; returns ``(fd, size)``, the caller closes ``fd``.

    Raises :class:`ForeignFileError` for anything else (checked with ``lstat`` before
    the open, so a device node is never opened, and with ``fstat`` after it), and
    ``FileNotFoundError`` when it is gone.
    """
    fs = current()
    if not stat.S_ISREG(fs.lstat(path).st_mode):
        raise ForeignFileError(errno.EINVAL, "not a regular file", path)
    try:
        fd = fs.open(path, _READ_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # replaced by a symlink since the lstat
            raise ForeignFileError(errno.ELOOP, "not a regular file", path) from None
        raise
    try:
        info = fs.fstat(fd)
    except BaseException:
        fs.close(fd)
        raise
    if not stat.S_ISREG(info.st_mode):  # swapped for a FIFO or device since the lstat
        fs.close(fd)
        raise ForeignFileError(errno.EINVAL, "not a regular file", path)
    return fd, info.st_size


def read_regular(path: str, limit: Optional[int] = None) -> bytes:
    """The bytes of a regular file, at most its size at open (and at most ``limit``)."""
    fd, size = open_regular(path)
    fs = current()
    try:
        want = size if limit is None else min(size, limit)
        chunks: List[bytes] = []
        while want > 0:
            chunk = fs.read(fd, want)
            if not chunk:  # shrank meanwhile
                break
            chunks.append(chunk)
            want -= len(chunk)
        return b"".join(chunks)
    finally:
        fs.close(fd)


def map_regular(path: str) -> Optional[mmap.mmap]:
    """A read-only ``mmap`` of a regular file, its size at open (None when it is empty).

    The caller closes it; the descriptor is closed here (the mapping keeps its own).
    """
    fd, size = open_regular(path)
    fs = current()
    try:
        return fs.mmap(fd, size) if size else None
    finally:
        fs.close(fd)


def list_entries(path: str) -> List[Tuple[str, str]]:
    """``[(name, "file" | "dir" | "other")]`` of a directory, symlinks being "other".

    A directory that is missing or cannot be listed (not a directory, no permission)
    gives ``[]``.
    """
    try:
        with current().scandir(path) as it:
            found = []
            for entry in it:
                try:
                    if entry.is_symlink():
                        kind = _OTHER
                    elif entry.is_dir(follow_symlinks=False):
                        kind = _DIRECTORY
                    elif entry.is_file(follow_symlinks=False):
                        kind = _REGULAR
                    else:
                        kind = _OTHER
                except OSError:
                    kind = _OTHER
                found.append((entry.name, kind))
            return found
    except OSError:
        return []
