"""The per-lane cursor: the highest sequence the broker accepted (docs/FORMAT.md §5).

Layout (little-endian, do not reorder), 60 bytes::

    0   8  magic      b"CERBICUR"
    8   2  version    u16 = 1
    10  2  reserved   u16 = 0
    12  4  lane       u32
    16  8  acked_seq  u64: every record with seq <= acked_seq is delivered (0: none)
    24  32 acked_hash hash of record acked_seq (GENESIS when acked_seq is 0)
    56  4  crc        crc32 of bytes 0..55

Written only by :func:`write_cursor` (temp, fsync, rename, fsync dir).
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import NamedTuple, Optional, Union

from cerbistream_spool.spool.chain import GENESIS
from cerbistream_spool.spool.fsio import ForeignFileError, atomic_write, read_regular

__all__ = ["CURSOR_FILE", "Cursor", "read_cursor", "write_cursor"]

CURSOR_FILE = "cursor"
_MAGIC = b"CERBICUR"
_LAYOUT = struct.Struct("<8sHHIQ32s")
_SIZE = _LAYOUT.size + 4


class Cursor(NamedTuple):
    """Delivered position of one lane."""

    lane: int
    acked_seq: int = 0
    acked_hash: bytes = GENESIS

    def encode(self) -> bytes:
        """The 60 cursor bytes."""
        body = _LAYOUT.pack(_MAGIC, 1, 0, self.lane, self.acked_seq, self.acked_hash)
        return body + struct.pack("<I", zlib.crc32(body))


def read_cursor(lane_dir: str, lane: int) -> Union[Cursor, str]:
    """The lane's cursor (a zero cursor when there is none), or what is wrong with the file."""
    path = os.path.join(lane_dir, CURSOR_FILE)
    try:
        data = read_regular(path, _SIZE + 1)
    except FileNotFoundError:
        return Cursor(lane)
    except ForeignFileError:
        return "cursor is not a regular file (left alone)"
    except OSError as exc:
        return f"cursor unreadable: {exc}"
    if len(data) != _SIZE:
        return f"cursor is {len(data)} bytes; {_SIZE} expected"
    body = data[: _LAYOUT.size]
    (crc,) = struct.unpack_from("<I", data, _LAYOUT.size)
    magic, version, _reserved, file_lane, acked_seq, acked_hash = _LAYOUT.unpack(body)
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


def write_cursor(lane_dir: str, cursor: Cursor) -> None:
    """Persist ``cursor`` atomically."""
    atomic_write(os.path.join(lane_dir, CURSOR_FILE), cursor.encode())
