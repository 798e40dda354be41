"""JsonlTransport: writes events as JSON lines to a file (``verify --replay --to``)."""

from __future__ import annotations

import contextlib
import errno
import os
from typing import IO, Optional, Sequence

from cerbistream_spool.errors import PermanentTransportError, TransientTransportError
from cerbistream_spool.spool.fsio import FILE_MODE
from cerbistream_spool.transports.base import OutgoingMessage, SendResult

__all__ = ["JsonlTransport"]

# the path is wrong or its disk is full: retrying the same write will not make it right
_PERMANENT_ERRNOS = {
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ELOOP,
    errno.ENAMETOOLONG,
    errno.ENOSPC,  # a full output disk: the operator must free space or pick another file
    errno.EFBIG,
}


class JsonlTransport:
    """Appends one JSON line per message; fsyncs after every batch before returning."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.max_batch_bytes: Optional[int] = None
        self._fh: Optional[IO[bytes]] = None

    def send(self, messages: Sequence[OutgoingMessage]) -> SendResult:
        """Append the bodies; durable when this returns."""
        try:
            if self._fh is None:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
                self._fh = os.fdopen(fd, "ab")
            self._fh.write(b"".join(m.body + b"\n" for m in messages))
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            self._close_quietly()
            if exc.errno in _PERMANENT_ERRNOS:
                raise PermanentTransportError(f"cannot write {self.path}: {exc}") from exc
            raise TransientTransportError(f"cannot write {self.path}: {exc}") from exc
        return SendResult()

    def _close_quietly(self) -> None:
        """Close after a failed write (the next send reopens and appends)."""
        fh, self._fh = self._fh, None
        if fh is not None:
            with contextlib.suppress(OSError):
                fh.close()

    def close(self) -> None:
        """Close the file."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
