"""RecordingFileSystem: the real filesystem, logging every mutating operation.

Files are tracked by identity (a file id given at creation or in the initial snapshot),
so renames and links keep their data. Operations are logged under one lock together
with the real call, in the order they happened; an fsync is logged when it *returns*
(only then is anything durable). The overrides keep ``fs.FileSystem``'s os-like
signatures (``# type: ignore[override]``: OsFileSystem's are typeshed's, wider).
Workloads add their acknowledgements with :meth:`RecordingFileSystem.note` (an ``Op``
of kind ``event``).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Set, Tuple

from cerbistream_spool.spool.fs import Data, OsFileSystem

__all__ = ["Op", "Recording", "RecordingFileSystem", "snapshot"]


@dataclass(frozen=True)
class Op:
    """One logged operation.

    ``kind``: create, mkdir, rename, link, unlink, rmdir (metadata: ``path``, ``dst``),
    write (``fid``, ``offset``, ``data``), trunc (``fid``, ``offset`` = length),
    fsync (``fid``), fsync_dir (``path``), event (``name``, ``info``).
    """

    kind: str
    path: str = ""
    dst: str = ""
    fid: int = -1
    offset: int = 0
    data: bytes = b""
    name: str = ""
    info: Tuple[Any, ...] = ()
    thread: str = ""


@dataclass
class Recording:
    """The initial (durable) snapshot of ``root`` and the operations logged after it."""

    root: str
    dirs: Set[str]
    files: Dict[str, int]  # path -> fid
    contents: Dict[int, bytes]  # fid -> bytes
    ops: List[Op] = field(default_factory=list)

    def events(self, upto: int, name: str) -> List[Tuple[int, Op]]:
        """``(index, op)`` of the events called ``name`` logged before ``upto``."""
        return [
            (i, op)
            for i, op in enumerate(self.ops[:upto])
            if op.kind == "event" and op.name == name
        ]


def snapshot(root: str) -> Tuple[Set[str], Dict[str, int], Dict[int, bytes]]:
    """Directories, files and contents under ``root`` (the durable starting point)."""
    dirs: Set[str] = set()
    files: Dict[str, int] = {}
    contents: Dict[int, bytes] = {}
    for here, subdirs, names in os.walk(root):
        dirs.add(here)
        dirs.update(os.path.join(here, d) for d in subdirs)
        for name in names:
            path = os.path.join(here, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            fid = len(contents)
            files[path] = fid
            with open(path, "rb") as f:
                contents[fid] = f.read()
    return dirs, files, contents


class RecordingFileSystem(OsFileSystem):
    """See the module docstring; ``root``: only paths under it are recorded."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        dirs, files, contents = snapshot(self.root)
        self.recording = Recording(self.root, dirs, dict(files), contents)
        self._names: Dict[str, int] = dict(files)  # the live namespace: path -> fid
        self._fds: Dict[int, int] = {}  # fd -> fid
        self._next = len(contents)
        self._lock = threading.RLock()

    # -- logging -------------------------------------------------------------------------

    def _log(self, op: Op) -> None:
        self.recording.ops.append(op)

    def note(self, name: str, *info: Any) -> None:
        """Log a workload acknowledgement (e.g. ``append``, ``ack_end``)."""
        with self._lock:
            self._log(Op("event", name=name, info=info, thread=threading.current_thread().name))

    def _mine(self, path: str) -> bool:
        return path == self.root or path.startswith(self.root + os.sep)

    def _move(self, src: str, dst: str) -> None:
        """The live namespace after renaming ``src`` (a file or a directory) to ``dst``."""
        if src in self._names:
            self._names[dst] = self._names.pop(src)
            return
        prefix = src + os.sep
        for path in [p for p in self._names if p.startswith(prefix)]:
            self._names[dst + path[len(src) :]] = self._names.pop(path)

    # -- descriptors ------------------------------------------------------------------------

    def open(self, path: str, flags: int, mode: int = 0o777, /) -> int:  # type: ignore[override]
        path = os.path.abspath(path)
        with self._lock:
            existed = os.path.lexists(path)
            fd = os.open(path, flags, mode)
            if not self._mine(path) or os.path.isdir(path):
                return fd
            if not existed and flags & os.O_CREAT:
                fid = self._next
                self._next += 1
                self._names[path] = fid
                self._log(Op("create", path=path, fid=fid))
            fid = self._names.get(path, -1)
            if fid < 0:  # made outside the seam (cannot be): track it from now on
                fid = self._next
                self._next += 1
                self._names[path] = fid
            if existed and flags & os.O_TRUNC:
                self._log(Op("trunc", fid=fid, offset=0))
            self._fds[fd] = fid
            return fd

    def close(self, fd: int, /) -> None:
        with self._lock:
            self._fds.pop(fd, None)
            os.close(fd)

    def write(self, fd: int, data: Data, /) -> int:  # type: ignore[override]
        with self._lock:
            n = os.write(fd, data)
            fid = self._fds.get(fd)
            if fid is not None:
                offset = os.lseek(fd, 0, os.SEEK_CUR) - n
                self._log(Op("write", fid=fid, offset=offset, data=bytes(memoryview(data)[:n])))
            return n

    def pwrite(self, fd: int, data: Data, offset: int, /) -> int:  # type: ignore[override]
        with self._lock:
            n = os.pwrite(fd, data, offset)
            fid = self._fds.get(fd)
            if fid is not None:
                self._log(Op("write", fid=fid, offset=offset, data=bytes(memoryview(data)[:n])))
            return n

    def ftruncate(self, fd: int, length: int, /) -> None:
        with self._lock:
            os.ftruncate(fd, length)
            fid = self._fds.get(fd)
            if fid is not None:
                self._log(Op("trunc", fid=fid, offset=length))

    def _sync(self, fd: int, call: Any) -> None:
        with self._lock:
            fid = self._fds.get(fd)
            thread = threading.current_thread().name
            if fid is not None:
                self._log(Op("event", name="fsync_begin", fid=fid, thread=thread))
            call(fd)
            if fid is not None:
                self._log(Op("fsync", fid=fid, thread=thread))

    def fsync(self, fd: int, /) -> None:  # type: ignore[override]
        self._sync(fd, os.fsync)

    def fdatasync(self, fd: int, /) -> None:  # type: ignore[override]
        self._sync(fd, getattr(os, "fdatasync", os.fsync))

    # -- names ---------------------------------------------------------------------------

    def _rename(self, src: str, dst: str, call: Any) -> None:
        src, dst = os.path.abspath(src), os.path.abspath(dst)
        with self._lock:
            call(src, dst)
            if self._mine(dst):
                self._move(src, dst)
                self._log(Op("rename", path=src, dst=dst))

    def replace(self, src: str, dst: str, /) -> None:  # type: ignore[override]
        self._rename(src, dst, os.replace)

    def rename(self, src: str, dst: str, /) -> None:  # type: ignore[override]
        self._rename(src, dst, os.rename)

    def link(self, src: str, dst: str, /) -> None:  # type: ignore[override]
        src, dst = os.path.abspath(src), os.path.abspath(dst)
        with self._lock:
            os.link(src, dst)
            if self._mine(dst) and src in self._names:
                self._names[dst] = self._names[src]
                self._log(Op("link", path=src, dst=dst))

    def unlink(self, path: str, /) -> None:  # type: ignore[override]
        path = os.path.abspath(path)
        with self._lock:
            os.unlink(path)
            if self._mine(path):
                self._names.pop(path, None)
                self._log(Op("unlink", path=path))

    def mkdir(self, path: str, mode: int = 0o777, /) -> None:  # type: ignore[override]
        path = os.path.abspath(path)
        with self._lock:
            os.mkdir(path, mode)
            if self._mine(path):
                self._log(Op("mkdir", path=path))

    def rmdir(self, path: str, /) -> None:  # type: ignore[override]
        path = os.path.abspath(path)
        with self._lock:
            os.rmdir(path)
            if self._mine(path):
                self._log(Op("rmdir", path=path))

    def fsync_dir(self, path: str, /) -> None:
        path = os.path.abspath(path)
        with self._lock:
            super().fsync_dir(path)
            if self._mine(path):
                self._log(Op("fsync_dir", path=path))

    def fid_of(self, path: str) -> Optional[int]:
        """The file id the live namespace gives ``path``."""
        return self._names.get(os.path.abspath(path))
