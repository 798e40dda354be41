"""Record framing and payload: pure functions over bytes (docs/FORMAT.md §3, §4).

Frame (little-endian, do not reorder)::

    u32 length | payload[length] | u32 crc32(length bytes ‖ payload) | u32 length

The trailing copy of the length detects a torn frame (Beats does the same);
the CRC covers the leading length, so a flipped length is caught too.

Payload: a msgpack array, positional, do not reorder::

    [seq: uint64, kind: uint8, ts_ns: int64, prev_hash: bin32, hash: bin32, body: bin]

``body`` is the msgpack encoding of the event (kind EVENT) or of a marker dict.
The hash covers ``prev_hash ‖ canonical_bytes(seq, kind, ts_ns, body)``.

Scanners never raise on bad input: they return :class:`Frame` values with a
status (Vector's ``RecordStatus``) and leave the decision to the caller.

Resynchronisation (:func:`find_next_frame`) is linear in the buffer: one forward
regex pass finds the offsets where a payload starts the way the writer packs it
(a 6-array, integer seq, kind 1..4, integer timestamp, two bin-32 hashes, a bin body);
a candidate is checksummed only when its length is plausible, it fits and its trailing
length matches; and the bytes checksummed for candidates that turn out bad are bounded
by a :class:`ScanBudget` per buffer (twice its size plus 1 MiB). Past that budget the
rest of the buffer counts as unreadable (``ScanBudget.exhausted``), so a crafted
segment cannot make a scan quadratic.

Walking a buffer (:func:`scan`) is done here once for every caller: it yields a
:class:`Scanned` record (offset, end) or a :class:`ScanDamage` (offset, kind
``checksum``/``format``/``torn``, where the scan resynchronised, None when nothing
valid follows) and goes on from there; each caller keeps only its policy (the reader
hands records out and reports damage, recovery truncates or quarantines, verify
collects problems).
"""

from __future__ import annotations

import mmap
import re
import struct
import threading
import zlib
from enum import IntEnum
from typing import Any, Iterator, Literal, NamedTuple, Optional, Tuple, Union, overload

import msgpack

from cerbistream_spool.errors import RecordTooLargeError
from cerbistream_spool.spool.chain import HASH_SIZE, Chain

__all__ = [
    "FRAME_OVERHEAD",
    "MAX_PAYLOAD",
    "Frame",
    "FrameStatus",
    "Kind",
    "Record",
    "ScanBudget",
    "ScanDamage",
    "Scanned",
    "canonical_bytes",
    "decode_body",
    "decode_payload",
    "encode_body",
    "encode_frame",
    "encode_record",
    "find_next_frame",
    "read_frame",
    "scan",
]

Buffer = Union[bytes, bytearray, memoryview, mmap.mmap]
_local = threading.local()
_U32 = struct.Struct("<I")
_U32X2 = struct.Struct("<II")
_new_tuple = tuple.__new__  # builds a NamedTuple without its Python-level __new__ (hot path)
_CANON = struct.Struct("<QBq")
FRAME_OVERHEAD = 12
MAX_PAYLOAD = 16 * 1024 * 1024
_MIN_PAYLOAD = 1 + 1 + 1 + 1 + 2 + HASH_SIZE + 2 + HASH_SIZE + 1  # smallest valid array
_ARRAY6 = 0x96


class Kind(IntEnum):
    """Record kinds (payload field 2)."""

    EVENT = 1
    GAP = 2
    OPEN = 3
    CLOSE = 4


class Record(NamedTuple):
    """One decoded record; ``body`` stays msgpack bytes until asked for."""

    seq: int
    kind: int
    ts_ns: int
    prev_hash: bytes
    hash: bytes
    body: bytes

    def canonical(self) -> bytes:
        """The bytes the chain hash covers (after prev_hash)."""
        return canonical_bytes(self.seq, self.kind, self.ts_ns, self.body)

    def value(self) -> Any:
        """The decoded body (event dict or marker dict)."""
        return decode_body(self.body)


class FrameStatus(IntEnum):
    """Outcome of reading one frame at an offset."""

    OK = 0
    END = 1  # no bytes left: clean end of data
    TORN = 2  # frame runs past the end of the data: torn tail or still being written
    CORRUPT = 3  # length/trailer/CRC mismatch


class Frame(NamedTuple):
    """Result of :func:`read_frame`: status, where, where the next frame starts, payload."""

    status: FrameStatus
    offset: int
    end: int
    payload: bytes
    detail: str


def encode_body(value: Any) -> bytes:
    """msgpack-encode an event or marker body."""
    return _packer().pack(value)


def _packer() -> msgpack.Packer:
    """This thread's Packer (``packb`` would build a new one per call)."""
    try:
        return _local.packer  # type: ignore[no-any-return]
    except AttributeError:
        _local.packer = msgpack.Packer(use_bin_type=True)
        return _local.packer  # type: ignore[no-any-return]


def decode_body(body: bytes) -> Any:
    """Decode a body written by :func:`encode_body`."""
    return msgpack.unpackb(body, raw=False, strict_map_key=False)


def canonical_bytes(seq: int, kind: int, ts_ns: int, body: bytes) -> bytes:
    """``u64 seq ‖ u8 kind ‖ i64 ts_ns ‖ body`` — what the chain hash covers."""
    return _CANON.pack(seq, kind, ts_ns) + body


def encode_record(
    seq: int, kind: int, ts_ns: int, prev_hash: bytes, body: bytes, chain: Chain
) -> Tuple[bytes, bytes]:
    """Frame one record; returns ``(frame bytes, record hash)``."""
    digest = chain.digest_parts(prev_hash, _CANON.pack(seq, kind, ts_ns), body)
    try:
        packer = _local.packer
    except AttributeError:
        packer = _packer()
    payload: bytes = packer.pack([seq, kind, ts_ns, prev_hash, digest, body])
    size = len(payload)
    if size > MAX_PAYLOAD:
        raise RecordTooLargeError(f"record payload is {size} bytes; the limit is {MAX_PAYLOAD}")
    head = _U32.pack(size)
    crc = _U32.pack(zlib.crc32(payload, zlib.crc32(head)))
    return b"".join((head, payload, crc, head)), digest


def encode_frame(payload: bytes) -> bytes:
    """Frame any payload (§3); :func:`encode_record` inlines the same for records."""
    head = _U32.pack(len(payload))
    return b"".join((head, payload, _U32.pack(zlib.crc32(payload, zlib.crc32(head))), head))


class ScanBudget:
    """Bytes that resynchronisation may checksum in vain over one buffer."""

    __slots__ = ("exhausted", "left")

    def __init__(self, size: int) -> None:
        self.left = 2 * max(0, size) + (1 << 20)
        self.exhausted = False  # set when a scan stopped on the budget, not on the data


def read_frame(
    buf: Buffer, offset: int, resync: bool = True, budget: Optional[ScanBudget] = None
) -> Frame:
    """Read the frame at ``offset`` of ``buf``; never raises.

    A frame that runs past the end is TORN only when nothing valid follows it:
    with a valid frame after it (or a whole frame by the trailing length), its
    length field was damaged, which is CORRUPT.
    """
    total = len(buf)
    payload = _sound_payload(buf, offset, total)
    if payload is not None:
        return Frame(FrameStatus.OK, offset, offset + len(payload) + FRAME_OVERHEAD, payload, "")
    if offset >= total:
        return Frame(FrameStatus.END, offset, offset, b"", "")
    if offset + 4 > total:
        return Frame(FrameStatus.TORN, offset, total, b"", "partial length field")
    (size,) = _U32.unpack_from(buf, offset)
    if size < _MIN_PAYLOAD or size > MAX_PAYLOAD:
        return Frame(FrameStatus.CORRUPT, offset, offset, b"", f"implausible length {size}")
    end = offset + 4 + size + 8
    if end > total:
        if _damaged_length(buf, offset, total) or (
            resync and find_next_frame(buf, offset + 1, budget) is not None
        ):
            return Frame(FrameStatus.CORRUPT, offset, total, b"", "length field damaged")
        return Frame(FrameStatus.TORN, offset, total, b"", f"frame of {size} bytes runs past end")
    payload = bytes(buf[offset + 4 : offset + 4 + size])
    crc, trailer = struct.unpack_from("<II", buf, offset + 4 + size)
    if trailer != size:
        return Frame(FrameStatus.CORRUPT, offset, end, payload, "trailing length mismatch")
    actual = zlib.crc32(payload, zlib.crc32(bytes(buf[offset : offset + 4])))
    if crc != actual:
        return Frame(
            FrameStatus.CORRUPT, offset, end, payload, f"crc32 {actual:#010x} != stored {crc:#010x}"
        )
    return Frame(FrameStatus.OK, offset, end, payload, "")


def _sound_payload(buf: Buffer, offset: int, total: int) -> Optional[bytes]:
    """The payload of the frame at ``offset`` when it is whole and its trailer and CRC match."""
    start = offset + 4
    if start > total:
        return None
    (size,) = _U32.unpack_from(buf, offset)
    if size < _MIN_PAYLOAD or size > MAX_PAYLOAD or start + size + 8 > total:
        return None
    payload = bytes(buf[start : start + size])
    crc, trailer = _U32X2.unpack_from(buf, start + size)
    if trailer != size or crc != zlib.crc32(payload, zlib.crc32(bytes(buf[offset:start]))):
        return None
    return payload


def _damaged_length(buf: Buffer, offset: int, total: int) -> bool:
    """True when the bytes to the end form a whole valid frame by its *trailing* length.

    Tells a flipped leading length (corruption) from a frame cut short (torn).
    """
    if total - offset < FRAME_OVERHEAD + _MIN_PAYLOAD:
        return False
    (trailer,) = _U32.unpack_from(buf, total - 4)
    if offset + 4 + trailer + 8 != total:
        return False
    (crc,) = _U32.unpack_from(buf, total - 8)
    payload = bytes(buf[offset + 4 : total - 8])
    return bool(zlib.crc32(payload, zlib.crc32(_U32.pack(trailer))) == crc)


_INT = rb"(?:[\x00-\x7f\xe0-\xff]|[\xcc\xd0].|[\xcd\xd1].{2}|[\xce\xd2].{4}|[\xcf\xd3].{8})"
_CANDIDATE = re.compile(
    rb"(?=\x96" + _INT + rb"[\x01-\x04]" + _INT + rb"\xc4\x20.{32}\xc4\x20.{32}[\xc4\xc5\xc6])",
    re.DOTALL,
)


def find_next_frame(buf: Buffer, start: int, budget: Optional[ScanBudget] = None) -> Optional[int]:
    """Offset of the next valid frame at or after ``start`` (resync after corruption).

    None when there is none, or when ``budget`` (one per buffer; a fresh one if not
    given) is spent.
    """
    total = len(buf)
    if budget is None:
        budget = ScanBudget(total - start)
    for match in _CANDIDATE.finditer(buf, max(0, start) + 4):
        candidate = match.start() - 4
        (size,) = _U32.unpack_from(buf, candidate)
        end = candidate + 4 + size + 8
        if size < _MIN_PAYLOAD or size > MAX_PAYLOAD or end > total:
            continue
        if _U32.unpack_from(buf, end - 4)[0] != size:
            continue
        if budget.left < size:
            budget.exhausted = True
            return None
        frame = read_frame(buf, candidate, resync=False)
        if frame.status is FrameStatus.OK and isinstance(decode_payload(frame.payload), Record):
            return candidate
        budget.left -= size
    return None


def decode_payload(payload: bytes) -> Union[Record, str]:
    """Decode a payload into a :class:`Record`, or return why it is malformed."""
    try:
        fields = msgpack.unpackb(payload, raw=False, use_list=True)
    except Exception as exc:  # noqa: BLE001 — arbitrary bytes: any decoder error is "malformed"
        return f"payload is not msgpack: {type(exc).__name__}"
    if not isinstance(fields, list) or len(fields) != 6:
        return "payload is not a 6-element array"
    seq, kind, ts_ns, prev_hash, digest, body = fields
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 2**64:
        return "seq is not a uint64"
    if not isinstance(kind, int) or kind not in _KINDS:
        return f"unknown record kind {kind!r}"
    if not isinstance(ts_ns, int) or isinstance(ts_ns, bool) or not -(2**63) <= ts_ns < 2**63:
        return "timestamp is not an int64"
    if not isinstance(prev_hash, bytes) or len(prev_hash) != HASH_SIZE:
        return "prev_hash is not 32 bytes"
    if not isinstance(digest, bytes) or len(digest) != HASH_SIZE:
        return "hash is not 32 bytes"
    if not isinstance(body, bytes):
        return "body is not bin"
    return _new_tuple(Record, fields)


_KINDS = frozenset(int(k) for k in Kind)


class Scanned(NamedTuple):
    """A valid record found by :func:`scan`: its frame spans ``buf[offset:end]``."""

    offset: int
    end: int
    record: Record


class ScanDamage(NamedTuple):
    """Bytes :func:`scan` could not read as a record.

    ``kind``: ``checksum`` (length, trailer or CRC mismatch), ``format`` (a sound frame
    whose payload is not a record) or ``torn`` (a frame running past the end with
    nothing valid after it). ``resync``: where the scan goes on, None when nothing
    valid follows (or the buffer's :class:`ScanBudget` is spent: see its ``exhausted``).
    """

    offset: int
    kind: str
    detail: str
    resync: Optional[int]


@overload
def scan(
    buf: Buffer,
    offset: int,
    budget: Optional[ScanBudget] = ...,
    *,
    decode: Literal[True] = ...,
    resync: bool = ...,
) -> Iterator[Union[Scanned, ScanDamage]]: ...


@overload
def scan(
    buf: Buffer,
    offset: int,
    budget: Optional[ScanBudget] = ...,
    *,
    decode: Literal[False],
    resync: bool = ...,
) -> Iterator[Union[Frame, ScanDamage]]: ...


def scan(
    buf: Buffer,
    offset: int,
    budget: Optional[ScanBudget] = None,
    *,
    decode: bool = True,
    resync: bool = True,
) -> Iterator[Union[Scanned, Frame, ScanDamage]]:
    """Walk the frames of ``buf`` from ``offset``; never raises.

    Yields a :class:`Scanned` per record (``decode=False``: the OK :class:`Frame`,
    payload not decoded) and a :class:`ScanDamage` per bad stretch, after which it
    goes on at the damage's ``resync``; it ends at the end of the data, at a torn
    frame, or at damage with nothing valid after it. ``budget``: one per buffer (a
    fresh one when not given). ``resync=False``: no resynchronisation at all
    (frames that are not records, such as the losses ledger's).
    """
    total = len(buf)
    if budget is None:
        budget = ScanBudget(total)
    while True:
        payload = _sound_payload(buf, offset, total)  # the common case, without a Frame
        if payload is not None:
            end = offset + len(payload) + FRAME_OVERHEAD
            if not decode:
                yield Frame(FrameStatus.OK, offset, end, payload, "")
                offset = end
                continue
            rec = decode_payload(payload)
            if isinstance(rec, Record):
                yield _new_tuple(Scanned, (offset, end, rec))
                offset = end
                continue
            kind, detail = "format", rec
        else:  # read_frame says why (it finds what _sound_payload found: not OK)
            frame = read_frame(buf, offset, resync, budget)
            if frame.status is FrameStatus.END:
                return
            if frame.status is FrameStatus.TORN:
                yield ScanDamage(offset, "torn", frame.detail, None)
                return
            kind, detail = "checksum", frame.detail
        following = find_next_frame(buf, offset + 1, budget) if resync else None
        yield ScanDamage(offset, kind, detail, following)
        if following is None:
            return
        offset = following
