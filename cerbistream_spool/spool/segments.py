"""Segment files: naming, the 68-byte header, creation (docs/FORMAT.md §2).

Header (little-endian, do not reorder)::

    0   8  magic        b"CERBISPL"
    8   2  version      u16 = 1
    10  2  flags        u16, bit 0: chain is HMAC-SHA256 keyed
    12  4  lane         u32 lane id
    16  8  base_seq     u64 sequence number of the first record
    24  8  created_ns   i64 wall-clock creation time (age-based rotation)
    32  32 anchor       hash of the previous segment's last record (GENESIS for a new lane)
    64  4  header_crc   crc32 of bytes 0..63

Segments are named by base sequence, 20 digits zero-padded (Kafka style):
``00000000000000000001.seg``.

A lane directory holds segments (regular files), ``cursor`` and the temp files of
atomic replaces (``*.tmp``); anything else, or one of these names on something that is
not a regular file, is foreign (:func:`lane_foreign`) and never opened.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import List, NamedTuple, Optional, Tuple, Union

from cerbistream_spool.spool.fsio import FILE_MODE, current, list_entries, temp_target, write_all

__all__ = [
    "FLAG_KEYED",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAGIC",
    "SEGMENT_SUFFIX",
    "SegmentHeader",
    "create_segment",
    "decode_header",
    "lane_foreign",
    "list_segments",
    "parse_segment_name",
    "segment_name",
]

MAGIC = b"CERBISPL"
FORMAT_VERSION = 1
FLAG_KEYED = 0x1
SEGMENT_SUFFIX = ".seg"
_HEADER = struct.Struct("<8sHHIQq32s")
HEADER_SIZE = _HEADER.size + 4  # 68


class SegmentHeader(NamedTuple):
    """The decoded fixed header of a segment file."""

    lane: int
    base_seq: int
    created_ns: int
    anchor: bytes
    flags: int = 0
    version: int = FORMAT_VERSION

    @property
    def keyed(self) -> bool:
        """True when the segment's chain is HMAC-keyed."""
        return bool(self.flags & FLAG_KEYED)

    def encode(self) -> bytes:
        """The 68 header bytes."""
        body = _HEADER.pack(
            MAGIC, self.version, self.flags, self.lane, self.base_seq, self.created_ns, self.anchor
        )
        return body + struct.pack("<I", zlib.crc32(body))


def decode_header(data: Union[bytes, memoryview]) -> Union[SegmentHeader, str]:
    """Decode a header, or return what is wrong with it; never raises."""
    if len(data) < HEADER_SIZE:
        return f"header is {len(data)} bytes; {HEADER_SIZE} expected"
    body = bytes(data[: _HEADER.size])
    (crc,) = struct.unpack_from("<I", data, _HEADER.size)
    magic, version, flags, lane, base_seq, created_ns, anchor = _HEADER.unpack(body)
    if magic != MAGIC:
        return f"bad magic {magic!r}"
    if zlib.crc32(body) != crc:
        return "header checksum mismatch"
    if version != FORMAT_VERSION:
        return f"unsupported format version {version}"
    return SegmentHeader(lane, base_seq, created_ns, anchor, flags, version)


def segment_name(base_seq: int) -> str:
    """``00000000000000000042.seg`` for base sequence 42."""
    return f"{base_seq:020d}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> Optional[int]:
    """The base sequence encoded in a segment file name, or None if not a segment."""
    stem, dot, suffix = name.partition(".")
    if dot + suffix != SEGMENT_SUFFIX or len(stem) != 20 or not _DIGITS.issuperset(stem):
        return None  # str.isdigit() and int() would take Unicode digits too
    return int(stem)


_DIGITS = frozenset("0123456789")
_OWN_FILES = ("cursor", "cursor.tmp")


def _own_file(name: str) -> bool:
    """The cursor, or a temp file of the cursor or of a segment (ours, never foreign)."""
    if name in _OWN_FILES:
        return True
    target = temp_target(name) or (name[:-4] if name.endswith(".tmp") else None)
    return target is not None and (target == "cursor" or parse_segment_name(target) is not None)


def _classify(lane_dir: str) -> Tuple[List[Tuple[int, str]], List[str]]:
    segments, foreign = [], []
    for name, kind in list_entries(lane_dir):
        base = parse_segment_name(name)
        if kind == "file" and base is not None:
            segments.append((base, os.path.join(lane_dir, name)))
        elif kind != "file" or not _own_file(name):
            foreign.append(name)
    segments.sort()
    return segments, sorted(foreign)


def list_segments(lane_dir: str) -> List[Tuple[int, str]]:
    """``[(base_seq, path)]`` of the segment files of a lane directory, oldest first."""
    return _classify(lane_dir)[0]


def lane_foreign(lane_dir: str) -> List[str]:
    """Names in a lane directory that are not its segments, cursor or temp files."""
    return _classify(lane_dir)[1]


def create_segment(lane_dir: str, header: SegmentHeader) -> Tuple[int, str]:
    """Create a segment durably (create → header → fsync file → fsync dir); returns (fd, path)."""
    path = os.path.join(lane_dir, segment_name(header.base_seq))
    fs = current()
    fd = fs.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, FILE_MODE)
    try:
        write_all(fd, header.encode())
        fs.fsync(fd)
        fs.fsync_dir(lane_dir)
    except BaseException:
        fs.close(fd)
        fs.unlink(path)  # a half-made segment would block the retry (O_EXCL)
        raise
    return fd, path
