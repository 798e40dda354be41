"""Broken filesystems, to show the checker catches the bugs it is for (through the seam).

Each is a :class:`RecordingFileSystem` that silently skips one kind of sync the spool
asks for: the call returns, nothing is synced, nothing is logged, as a spool that
forgot it would behave.
"""

from __future__ import annotations

import os
from typing import Dict, Type

from tools.crashstates.recorder import RecordingFileSystem

__all__ = ["VARIANTS", "NoCursorSync", "NoDirSyncAfterSegmentCreate"]


class NoDirSyncAfterSegmentCreate(RecordingFileSystem):
    """The directory fsync right after a new segment's header fsync is skipped."""

    def fsync_dir(self, path: str, /) -> None:
        ops = self.recording.ops
        last = ops[-1] if ops else None
        if (
            last is not None
            and last.kind == "fsync"
            and self._created_as(last.fid).endswith(".seg")
        ):
            return
        super().fsync_dir(path)

    def _created_as(self, fid: int) -> str:
        for op in reversed(self.recording.ops):
            if op.kind == "create" and op.fid == fid:
                return op.path
        return ""


class NoCursorSync(RecordingFileSystem):
    """The fsync that makes a cursor write durable (before the segments go) is skipped."""

    def _is_cursor(self, fd: int) -> bool:
        fid = self._fds.get(fd)
        return fid is not None and any(
            f == fid and os.path.basename(p) == "cursor" for p, f in self._names.items()
        )

    def fdatasync(self, fd: int, /) -> None:  # type: ignore[override]
        if not self._is_cursor(fd):
            super().fdatasync(fd)

    def fsync(self, fd: int, /) -> None:  # type: ignore[override]
        if not self._is_cursor(fd):
            super().fsync(fd)


VARIANTS: Dict[str, Type[RecordingFileSystem]] = {
    "no-dir-sync-after-segment-create": NoDirSyncAfterSegmentCreate,
    "no-cursor-sync": NoCursorSync,
}
