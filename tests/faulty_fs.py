"""FaultyFileSystem: the real filesystem, failing chosen operations on chosen paths.

Used through the seam only (``with fsio.use(FaultyFileSystem()) as fs``). Rules are
deterministic: an operation (a primitive's name: "fsync", "fdatasync", "fsync_dir",
"open", "write", "ftruncate", "mmap", ...) on a path matching an ``fnmatch`` pattern
fails with the given errno, after ``skip`` matching calls, ``times`` times (-1: always).
Descriptor operations are matched by the path the descriptor was opened with.
``log`` lists every ``(operation, path)`` seen, in order.
"""

from __future__ import annotations

import errno
import fnmatch
import mmap
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from cerbistream_spool.spool.fs import Data, OsFileSystem


@dataclass
class Rule:
    op: str
    pattern: str
    err: int = errno.EIO
    times: int = 1  # -1: every matching call
    skip: int = 0  # matching calls let through first
    hits: int = 0  # calls it failed


@dataclass
class Room:
    """Disk space left for writes to matching paths: the write that reaches it is short,
    the next one fails with ENOSPC."""

    pattern: str
    left: int


class FaultyFileSystem(OsFileSystem):
    """See the module docstring."""

    def __init__(self) -> None:
        self.rules: List[Rule] = []
        self.rooms: List[Room] = []
        self.most: Dict[str, int] = {}  # pattern -> at most this many bytes per write
        self.paths: Dict[int, str] = {}
        self.log: List[Tuple[str, str]] = []

    # -- configuring -----------------------------------------------------------------------

    def fail(
        self, op: str, pattern: str, err: int = errno.EIO, *, times: int = 1, skip: int = 0
    ) -> Rule:
        rule = Rule(op, pattern, err, times, skip)
        self.rules.append(rule)
        return rule

    def disk_room(self, pattern: str, left: int) -> Room:
        room = Room(pattern, left)
        self.rooms.append(room)
        return room

    def short_writes(self, pattern: str, most: int) -> None:
        self.most[pattern] = most

    def clear(self) -> None:
        self.rules.clear()
        self.rooms.clear()
        self.most.clear()

    def ops(self, op: str) -> List[str]:
        """Paths of the logged calls of ``op``."""
        return [path for name, path in self.log if name == op]

    # -- the check -------------------------------------------------------------------------

    def _check(self, op: str, path: str) -> None:
        self.log.append((op, path))
        for rule in self.rules:
            if rule.op != op or not fnmatch.fnmatchcase(path, rule.pattern):
                continue
            if rule.skip > 0:
                rule.skip -= 1
                continue
            if rule.times != 0:
                rule.times -= 1 if rule.times > 0 else 0
                rule.hits += 1
                raise OSError(rule.err, f"injected {os.strerror(rule.err)}", path)

    def _of(self, fd: int) -> str:
        return self.paths.get(fd, f"<fd {fd}>")

    def _room(self, path: str, want: int) -> Tuple[int, Optional[Room]]:
        for pattern, most in self.most.items():
            if fnmatch.fnmatchcase(path, pattern):
                want = min(want, most)
        for room in self.rooms:
            if fnmatch.fnmatchcase(path, room.pattern):
                if room.left <= 0:
                    raise OSError(errno.ENOSPC, "injected No space left on device", path)
                return min(want, room.left), room
        return want, None

    # -- the primitives ----------------------------------------------------------------------

    def open(self, path: str, flags: int, mode: int = 0o777, /) -> int:
        path = os.path.abspath(path)
        self._check("open", path)
        fd = os.open(path, flags, mode)
        self.paths[fd] = path
        return fd

    def close(self, fd: int, /) -> None:
        self._check("close", self._of(fd))
        self.paths.pop(fd, None)
        os.close(fd)

    def read(self, fd: int, n: int, /) -> bytes:
        self._check("read", self._of(fd))
        return os.read(fd, n)

    def pread(self, fd: int, n: int, offset: int, /) -> bytes:
        self._check("pread", self._of(fd))
        return os.pread(fd, n, offset)

    def write(self, fd: int, data: Data, /) -> int:
        path = self._of(fd)
        self._check("write", path)
        n, room = self._room(path, len(data))
        written = os.write(fd, memoryview(data)[:n])
        if room is not None:
            room.left -= written
        return written

    def pwrite(self, fd: int, data: Data, offset: int, /) -> int:
        path = self._of(fd)
        self._check("pwrite", path)
        n, room = self._room(path, len(data))
        written = os.pwrite(fd, memoryview(data)[:n], offset)
        if room is not None:
            room.left -= written
        return written

    def fsync(self, fd: int, /) -> None:
        self._check("fsync", self._of(fd))
        os.fsync(fd)

    def fdatasync(self, fd: int, /) -> None:
        self._check("fdatasync", self._of(fd))
        getattr(os, "fdatasync", os.fsync)(fd)

    def ftruncate(self, fd: int, length: int, /) -> None:
        self._check("ftruncate", self._of(fd))
        os.ftruncate(fd, length)

    def replace(self, src: str, dst: str, /) -> None:
        self._check("replace", os.path.abspath(dst))
        os.replace(src, dst)

    def rename(self, src: str, dst: str, /) -> None:
        self._check("rename", os.path.abspath(dst))
        os.rename(src, dst)

    def link(self, src: str, dst: str, /) -> None:
        self._check("link", os.path.abspath(dst))
        os.link(src, dst)

    def unlink(self, path: str, /) -> None:
        self._check("unlink", os.path.abspath(path))
        os.unlink(path)

    def mkdir(self, path: str, mode: int = 0o777, /) -> None:
        self._check("mkdir", os.path.abspath(path))
        os.mkdir(path, mode)

    def fsync_dir(self, path: str, /) -> None:
        self._check("fsync_dir", os.path.abspath(path))
        super().fsync_dir(path)

    def mmap(self, fd: int, length: int, /) -> mmap.mmap:
        self._check("mmap", self._of(fd))
        return super().mmap(fd, length)
