"""The filesystem seam: every file-system operation of the spool goes through one object.

:class:`FileSystem` names the primitives (os-like signatures, positional arguments);
:class:`OsFileSystem` is the real one, each primitive *being* the ``os`` / ``fcntl``
function (a call costs one attribute lookup more than calling ``os`` directly).
:func:`current` is the process-wide filesystem the spool uses; :func:`use` swaps it
for a block — the one supported way, for tests that inject faults and tools that
record operations. A directory fsync is one primitive (:meth:`FileSystem.fsync_dir`),
so a recorder sees it as one operation.

Outside the seam: filelock's own lock files (``locks/*.lock``, opened and locked by
filelock itself), and file name arithmetic (``os.path.join`` and the like).
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap as _mmap
import os
from typing import ContextManager, Iterator, Union

__all__ = ["Data", "Entries", "FileSystem", "OsFileSystem", "current", "use"]

Data = Union[bytes, bytearray, memoryview]  # what write and pwrite take
Entries = ContextManager[Iterator["os.DirEntry[str]"]]  # what scandir gives


class FileSystem:
    """The primitives, as ``os`` defines them; subclass :class:`OsFileSystem` to wrap them."""

    def open(self, path: str, flags: int, mode: int = 0o777, /) -> int:
        """``os.open``."""
        raise NotImplementedError

    def close(self, fd: int, /) -> None:
        """``os.close``."""
        raise NotImplementedError

    def read(self, fd: int, n: int, /) -> bytes:
        """``os.read``."""
        raise NotImplementedError

    def pread(self, fd: int, n: int, offset: int, /) -> bytes:
        """``os.pread``."""
        raise NotImplementedError

    def write(self, fd: int, data: Data, /) -> int:
        """``os.write``: may write fewer bytes than given."""
        raise NotImplementedError

    def pwrite(self, fd: int, data: Data, offset: int, /) -> int:
        """``os.pwrite``: may write fewer bytes than given."""
        raise NotImplementedError

    def lseek(self, fd: int, pos: int, how: int, /) -> int:
        """``os.lseek``."""
        raise NotImplementedError

    def fsync(self, fd: int, /) -> None:
        """``os.fsync``."""
        raise NotImplementedError

    def fdatasync(self, fd: int, /) -> None:
        """``os.fdatasync`` (``os.fsync`` where there is none, macOS)."""
        raise NotImplementedError

    def ftruncate(self, fd: int, length: int, /) -> None:
        """``os.ftruncate``."""
        raise NotImplementedError

    def fstat(self, fd: int, /) -> os.stat_result:
        """``os.fstat``."""
        raise NotImplementedError

    def lstat(self, path: str, /) -> os.stat_result:
        """``os.lstat``."""
        raise NotImplementedError

    def stat(self, path: str, /) -> os.stat_result:
        """``os.stat`` (follows symlinks)."""
        raise NotImplementedError

    def replace(self, src: str, dst: str, /) -> None:
        """``os.replace``."""
        raise NotImplementedError

    def rename(self, src: str, dst: str, /) -> None:
        """``os.rename``."""
        raise NotImplementedError

    def link(self, src: str, dst: str, /) -> None:
        """``os.link``: never over an existing ``dst``."""
        raise NotImplementedError

    def unlink(self, path: str, /) -> None:
        """``os.unlink``."""
        raise NotImplementedError

    def mkdir(self, path: str, mode: int = 0o777, /) -> None:
        """``os.mkdir``."""
        raise NotImplementedError

    def rmdir(self, path: str, /) -> None:
        """``os.rmdir``."""
        raise NotImplementedError

    def chmod(self, path: str, mode: int, /) -> None:
        """``os.chmod``."""
        raise NotImplementedError

    def scandir(self, path: str, /) -> Entries:
        """``os.scandir``: the entries of a directory, as a context manager."""
        raise NotImplementedError

    def fsync_dir(self, path: str, /) -> None:
        """fsync a directory, so a create, rename or unlink inside it is durable."""
        raise NotImplementedError

    def mmap(self, fd: int, length: int, /) -> _mmap.mmap:
        """A read-only ``mmap`` of the first ``length`` bytes of ``fd``."""
        raise NotImplementedError

    def flock(self, fd: int, operation: int, /) -> None:
        """``fcntl.flock``."""
        raise NotImplementedError


_DIRECTORY_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)


class OsFileSystem(FileSystem):
    """The real filesystem."""

    open = staticmethod(os.open)
    close = staticmethod(os.close)
    read = staticmethod(os.read)
    pread = staticmethod(os.pread)
    write = staticmethod(os.write)
    pwrite = staticmethod(os.pwrite)
    lseek = staticmethod(os.lseek)
    fsync = staticmethod(os.fsync)
    fdatasync = staticmethod(getattr(os, "fdatasync", os.fsync))
    ftruncate = staticmethod(os.ftruncate)
    fstat = staticmethod(os.fstat)
    lstat = staticmethod(os.lstat)
    stat = staticmethod(os.stat)
    replace = staticmethod(os.replace)
    rename = staticmethod(os.rename)
    link = staticmethod(os.link)
    unlink = staticmethod(os.unlink)
    mkdir = staticmethod(os.mkdir)
    rmdir = staticmethod(os.rmdir)
    chmod = staticmethod(os.chmod)
    flock = staticmethod(fcntl.flock)

    def fsync_dir(self, path: str, /) -> None:
        """Open the directory read-only, fsync, close."""
        fd = os.open(path, _DIRECTORY_FLAGS)  # not self.open: a wrapper sees one operation
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def scandir(self, path: str, /) -> Entries:
        """``os.scandir(path)``."""
        return os.scandir(path)

    def mmap(self, fd: int, length: int, /) -> _mmap.mmap:
        """``mmap.mmap(fd, length, access=ACCESS_READ)``."""
        return _mmap.mmap(fd, length, access=_mmap.ACCESS_READ)


_current: FileSystem = OsFileSystem()


def current() -> FileSystem:
    """The filesystem every spool operation goes through now."""
    return _current


@contextlib.contextmanager
def use(fs: FileSystem) -> Iterator[FileSystem]:
    """Route the spool's file-system operations through ``fs`` for the block (process-wide,
    every thread); the previous one is back afterwards, also when the block raises."""
    global _current  # noqa: PLW0603 — the seam is process-wide by design
    previous, _current = _current, fs
    try:
        yield fs
    finally:
        _current = previous
