"""The active segment of a lane: create, write frames, cut back, seal (docs/FORMAT.md §7).

- create: ``open(O_CREAT|O_EXCL)`` → header → fsync file → fsync directory
  (spool/segments.py) → only then records;
- write: one ``write`` per frame (a short write is finished), so the record is
  in the OS when it returns;
- cut back: a failed write is cut back with ``ftruncate`` so no torn frame is
  left between records; if that fails too, the segment is sealed unsynced;
- seal: fsync (waiting for a group commit under way) and close; the segment is
  then sealed and never written again. Rotation is seal, then create.

The descriptor is read by the commit policy's thread (spool/commit.py), so it is
swapped under the :class:`Durability` condition.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Optional

from cerbistream_spool.spool.commit import Durability
from cerbistream_spool.spool.fsio import current, write_all
from cerbistream_spool.spool.segments import HEADER_SIZE, SegmentHeader, create_segment

__all__ = ["SegmentFile"]


class SegmentFile:
    """The segment a writer appends to; ``fd`` is None between segments."""

    __slots__ = (
        "_durability",
        "_on_sealed",
        "base",
        "created_ns",
        "dir",
        "fd",
        "flags",
        "lane",
        "path",
        "records",
        "size",
    )

    def __init__(
        self,
        durability: Durability,
        flags: int,
        on_sealed: Callable[[int, str, int], None],
    ) -> None:
        self._durability = durability
        self._on_sealed = on_sealed  # (base, path, size) of a segment just sealed
        self.flags = flags
        self.dir = ""
        self.lane = 0
        self.fd: Optional[int] = None
        self.path = ""
        self.base = self.size = self.records = self.created_ns = 0

    def move_to(self, lane_dir: str, lane: int) -> None:
        """Write into ``lane_dir`` from now on (no segment open)."""
        self.dir, self.lane = lane_dir, lane
        self.fd = None
        self.path = ""
        self.base = self.size = self.records = self.created_ns = 0

    def reopen(self, base: int, path: str, created_ns: int, size: int, next_seq: int) -> None:
        """Append to an existing segment (recovered, its header matching the chain)."""
        self.fd = current().open(path, os.O_WRONLY | os.O_APPEND)
        self.base, self.path, self.size = base, path, size
        self.created_ns = created_ns
        self.records = 1 if base < next_seq else 0

    def create(self, next_seq: int, last_hash: bytes) -> None:
        """Create the next segment, its first record to be ``next_seq``."""
        header = SegmentHeader(self.lane, next_seq, time.time_ns(), last_hash, self.flags)
        fd, path = create_segment(self.dir, header)
        with self._durability.cond:
            self.fd = fd
        self.base, self.path = next_seq, path
        self.size, self.records, self.created_ns = HEADER_SIZE, 0, header.created_ns

    def write(self, frame: bytes) -> None:
        """One frame, whole (the caller cuts back on ``OSError``)."""
        fd = self.fd
        assert fd is not None
        size = len(frame)
        written = current().write(fd, frame)
        if written != size:  # a short write is legal: finish it
            write_all(fd, frame[written:])
        self.size += size
        self.records += 1

    def cut_back(self) -> None:
        """Remove a partially written frame; if that fails, abandon the segment."""
        try:
            assert self.fd is not None
            current().ftruncate(self.fd, self.size)
        except OSError:
            self.seal(fsync=False)

    def seal(self, fsync: bool) -> None:
        """Close the segment (fsynced first with ``fsync``); it is sealed from now on."""
        d = self._durability
        with d.cond:
            while d.syncing:
                d.cond.wait()
            fd, self.fd = self.fd, None
            try:
                if fd is not None and fsync:
                    current().fsync(fd)
                    d.durable = d.accepted
            finally:
                if fd is not None:
                    current().close(fd)
                    self._on_sealed(self.base, self.path, self.size)
                    if d.durable < d.accepted:  # waiters must not wait for this fd
                        d.failed = (d.accepted, "segment closed before it was fsynced")
                d.cond.notify_all()
