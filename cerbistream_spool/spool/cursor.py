"""The per-lane cursor: the highest sequence the broker accepted (docs/FORMAT.md §5).

Version 2 (written now): a 1024-byte file of two 512-byte slots, written in place
so that an ack never needs a new disk block (a full disk must not stop the
drainer). Each slot, little-endian, do not reorder (68 bytes, zero padded)::

    0   8  magic      b"CERBICUR"
    8   2  version    u16 = 2
    10  2  reserved   u16 = 0
    12  4  lane       u32
    16  8  generation u64: +1 per write; the valid slot with the higher one wins
    24  8  acked_seq  u64: every record with seq <= acked_seq is delivered (0: none)
    32  32 acked_hash hash of record acked_seq (GENESIS when acked_seq is 0)
    64  4  crc        crc32 of bytes 0..63

An ack writes the slot *not* holding the newest valid cursor (``pwrite`` +
``fdatasync``), so a torn write leaves the previous cursor in the other slot
(the LMDB meta-page scheme). The file is created once (both slots written:
temp file, fsync, ``link`` to ``cursor`` — never over an existing one — fsync
dir), by the writer when it opens the lane or by the first ack.

Version 1 (read, and replaced by the first ack): 60 bytes, the slot layout
without ``generation``::

    0 8 magic · 8 2 version = 1 · 10 2 reserved · 12 4 lane · 16 8 acked_seq ·
    24 32 acked_hash · 56 4 crc32 of bytes 0..55
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct
import zlib
from typing import NamedTuple, Optional, Tuple, Union

from cerbistream_spool.spool.chain import GENESIS
from cerbistream_spool.spool.fsio import (
    ForeignFileError,
    atomic_write,
    create_temp,
    current,
    fsync_dir,
    read_regular,
    write_all,
)

__all__ = ["CURSOR_FILE", "Cursor", "ensure_cursor", "read_cursor", "write_cursor"]

CURSOR_FILE = "cursor"
_MAGIC = b"CERBICUR"
_V1 = struct.Struct("<8sHHIQ32s")
_V1_SIZE = _V1.size + 4
_V2 = struct.Struct("<8sHHIQQ32s")
SLOT_SIZE = 512
FILE_SIZE = 2 * SLOT_SIZE
_WRITE_FLAGS = (
    os.O_RDWR
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


class Cursor(NamedTuple):
    """Delivered position of one lane."""

    lane: int
    acked_seq: int = 0
    acked_hash: bytes = GENESIS

    def encode(self) -> bytes:
        """The 60 bytes of a version 1 cursor file (read for old spools, no longer written)."""
        body = _V1.pack(_MAGIC, 1, 0, self.lane, self.acked_seq, self.acked_hash)
        return body + struct.pack("<I", zlib.crc32(body))

    def slot(self, generation: int) -> bytes:
        """One version 2 slot (``SLOT_SIZE`` bytes)."""
        body = _V2.pack(_MAGIC, 2, 0, self.lane, generation, self.acked_seq, self.acked_hash)
        return (body + struct.pack("<I", zlib.crc32(body))).ljust(SLOT_SIZE, b"\0")


def _decode_slot(data: bytes) -> Union[Tuple[int, int, int, bytes], str]:
    """``(lane, generation, acked_seq, acked_hash)`` of one slot, or what is wrong."""
    if len(data) < _V2.size + 4:
        return "cursor slot is short"
    body = data[: _V2.size]
    (crc,) = struct.unpack_from("<I", data, _V2.size)
    magic, version, _reserved, lane, generation, acked_seq, acked_hash = _V2.unpack(body)
    if magic != _MAGIC or version != 2:
        return "cursor has bad magic or version"
    if zlib.crc32(body) != crc:
        return "cursor checksum mismatch"
    return lane, generation, acked_seq, acked_hash


def _newest(data: bytes) -> Union[Tuple[int, int, int, bytes, int], str]:
    """The newest valid slot of a version 2 file: ``(lane, gen, seq, hash, index)``."""
    best: Optional[Tuple[int, int, int, bytes, int]] = None
    problem = ""
    for index in (0, 1):
        slot = _decode_slot(data[index * SLOT_SIZE : (index + 1) * SLOT_SIZE])
        if isinstance(slot, str):
            problem = slot
        elif best is None or slot[1] > best[1]:
            best = (*slot, index)
    return best if best is not None else f"{problem} (both slots)"


def read_cursor(lane_dir: str, lane: int) -> Union[Cursor, str]:
    """The lane's cursor (a zero cursor when there is none), or what is wrong with the file."""
    path = os.path.join(lane_dir, CURSOR_FILE)
    try:
        data = read_regular(path, FILE_SIZE + 1)
    except FileNotFoundError:
        return Cursor(lane)
    except ForeignFileError:
        return "cursor is not a regular file (left alone)"
    except OSError as exc:
        return f"cursor unreadable: {exc}"
    if len(data) == _V1_SIZE:
        return _read_v1(data, lane)
    if len(data) != FILE_SIZE:
        return f"cursor is {len(data)} bytes; {FILE_SIZE} (or {_V1_SIZE}, version 1) expected"
    found = _newest(data)
    if isinstance(found, str):
        return found
    file_lane, _gen, acked_seq, acked_hash, _index = found
    if file_lane != lane:
        return f"cursor names lane {file_lane}, found in lane {lane}"
    return Cursor(lane, acked_seq, acked_hash)


def _read_v1(data: bytes, lane: int) -> Union[Cursor, str]:
    body = data[: _V1.size]
    (crc,) = struct.unpack_from("<I", data, _V1.size)
    magic, version, _reserved, file_lane, acked_seq, acked_hash = _V1.unpack(body)
    if magic != _MAGIC or version != 1:
        return "cursor has bad magic or version"
    if zlib.crc32(body) != crc:
        return "cursor checksum mismatch"
    if file_lane != lane:
        return f"cursor names lane {file_lane}, found in lane {lane}"
    return Cursor(lane, acked_seq, acked_hash)


def load_cursor(lane_dir: str, lane: int) -> Optional[Cursor]:
    """Like :func:`read_cursor` but None for an unreadable cursor."""
    found = read_cursor(lane_dir, lane)
    return found if isinstance(found, Cursor) else None


def ensure_cursor(lane_dir: str, lane: int) -> bool:
    """Create the lane's (zero) cursor file unless one exists; True when it exists now.

    The writer calls this when it opens a lane, so the disk blocks of every later
    ack are taken while there is room.
    """
    path = os.path.join(lane_dir, CURSOR_FILE)
    try:
        current().lstat(path)
    except OSError:  # missing (as os.path.lexists: also when it cannot be looked up)
        return _create(path, Cursor(lane))
    return True


def _create(path: str, cursor: Cursor) -> bool:
    """Create a version 2 cursor file at ``path`` unless something is there already."""
    fs = current()
    tmp, fd = create_temp(path)
    try:
        try:
            write_all(fd, cursor.slot(1) + cursor.slot(0))
            fs.fsync(fd)
        finally:
            fs.close(fd)
        try:
            fs.link(tmp, path)  # never over an existing cursor (another process won)
            created = True
        except FileExistsError:
            created = False
    finally:
        with contextlib.suppress(OSError):
            fs.unlink(tmp)
    fsync_dir(os.path.dirname(os.path.abspath(path)))
    return created


def write_cursor(lane_dir: str, cursor: Cursor) -> None:
    """Persist ``cursor`` durably; in place (no new disk block) once the file exists."""
    path = os.path.join(lane_dir, CURSOR_FILE)
    for _ in range(3):  # created or upgraded meanwhile by another process: write again
        try:
            fd = _open_in_place(path)
        except FileNotFoundError:
            if _create(path, cursor):
                return
            continue
        if fd is not None:
            try:
                if current().fstat(fd).st_size == FILE_SIZE:
                    _write_slot(fd, path, cursor)
                    return
            finally:
                current().close(fd)
        # a version 1 cursor, a damaged size, or a symlink, FIFO or device where the
        # cursor should be (never written through): replaced once by a version 2 file
        atomic_write(path, cursor.slot(1) + cursor.slot(0))
        return
    raise OSError(f"cursor {path} keeps changing under the drainer")


def _open_in_place(path: str) -> Optional[int]:
    """A read-write descriptor of the regular cursor file, or None for anything else
    (checked with ``lstat`` before the open: a device is never opened, a symlink never
    followed, a FIFO never waited on; and with ``fstat`` after it)."""
    fs = current()
    if not stat.S_ISREG(fs.lstat(path).st_mode):
        return None
    try:
        fd = fs.open(path, _WRITE_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):  # swapped since the lstat
            return None
        raise
    if not stat.S_ISREG(fs.fstat(fd).st_mode):
        fs.close(fd)
        return None
    return fd


def _write_slot(fd: int, path: str, cursor: Cursor) -> None:
    fs = current()
    data = fs.pread(fd, FILE_SIZE, 0)
    found = _newest(data)
    if isinstance(found, str):  # both slots damaged: start over in slot 0
        generation, index = 1, 0
    else:
        generation, index = found[1] + 1, 1 - found[4]
    slot = cursor.slot(generation)
    if fs.pwrite(fd, slot, index * SLOT_SIZE) != len(slot):
        raise OSError(f"short write to cursor {path}")
    fs.fdatasync(fd)
