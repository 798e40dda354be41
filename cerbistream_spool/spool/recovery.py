"""Recovery of a lane when its writer opens it (docs/FORMAT.md §8).

Only the last segment is scanned, so opening costs the same with 1 KB or 1 GB
pending. Outcomes, each reported in :attr:`LaneState.notes`:

- torn tail (frame cut short, or a bad last frame with nothing valid after it):
  truncated to the last complete record;
- corruption followed by valid frames: the whole file is linked into ``quarantine/``,
  then its valid prefix replaces it in the lane, and a gap record covering the lost
  sequence range is queued for the writer;
- an unreadable header on the last segment: the file is quarantined and the
  chain resumes from the cursor or the previous segment's anchor.

Never loops, never raises on file contents (only on I/O errors).
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from cerbistream_spool.spool.chain import GENESIS
from cerbistream_spool.spool.cursor import Cursor, read_cursor
from cerbistream_spool.spool.fsio import (
    atomic_write,
    copy_file,
    current,
    ensure_dir,
    fsync_dir,
    read_regular,
)
from cerbistream_spool.spool.lanes import QUARANTINE_DIR, lane_dir
from cerbistream_spool.spool.markers import Gap, GapReason
from cerbistream_spool.spool.record import (
    Kind,
    Record,
    ScanBudget,
    ScanDamage,
    Scanned,
    decode_payload,
    read_frame,
    scan,
)
from cerbistream_spool.spool.segments import (
    HEADER_SIZE,
    SegmentHeader,
    decode_header,
    list_segments,
)

__all__ = ["LaneState", "Tail", "recover_lane", "scan_tail"]

_TRUNCATE_FLAGS = os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
_NO_LINK = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.EOPNOTSUPP, errno.ENOTSUP}


@dataclass
class Tail:
    """What scanning a segment's frames found."""

    good_end: int  # offset just past the last valid record of the valid prefix
    last: Optional[Record]  # last valid record of the prefix
    records: int  # valid records in the prefix
    torn_bytes: int = 0  # bytes after good_end that are a torn tail
    corrupt_at: Optional[int] = None  # offset of the first bad frame followed by valid ones
    max_seq_after: Optional[int] = None  # highest seq seen past the corruption
    detail: str = ""


def scan_tail(buf: bytes, decode_all: bool = False, budget: Optional[ScanBudget] = None) -> Tail:
    """Scan a segment image (header included) and classify how it ends.

    Every frame's length, trailer and CRC are checked; only the last valid
    frame's payload is decoded, unless it does not decode: then the scan runs
    again decoding every frame, and the first undecodable one counts as damage.
    """
    offset = HEADER_SIZE
    last_at: Optional[int] = None
    count = 0
    if budget is None:
        budget = ScanBudget(len(buf))
    damage: Optional[ScanDamage] = None
    items = scan(buf, offset, budget) if decode_all else scan(buf, offset, budget, decode=False)
    for item in items:
        if isinstance(item, ScanDamage):
            damage = item
            break
        last_at, count, offset = item.offset, count + 1, item.end
    last = None
    if last_at is not None:
        decoded = decode_payload(read_frame(buf, last_at).payload)
        if not isinstance(decoded, Record):
            return scan_tail(buf, decode_all=True, budget=budget)
        last = decoded
    if damage is None:
        return Tail(offset, last, count)
    detail = "undecodable payload" if damage.kind == "format" else damage.detail
    if damage.resync is None and damage.kind != "torn" and budget.exhausted:
        # crafted or badly damaged: keep it all
        return Tail(offset, last, count, corrupt_at=offset, detail=f"{detail}; resync gave up")
    if damage.resync is None:  # nothing valid after it: a torn (partially written) tail
        return Tail(offset, last, count, torn_bytes=len(buf) - offset, detail=detail)
    return Tail(
        offset,
        last,
        count,
        corrupt_at=offset,
        max_seq_after=_max_seq_from(buf, damage.resync, budget),
        detail=detail,
    )


def _max_seq_from(buf: bytes, offset: int, budget: Optional[ScanBudget] = None) -> Optional[int]:
    """Highest seq among valid frames from ``offset`` on, resyncing past bad ones."""
    seqs = [item.record.seq for item in scan(buf, offset, budget) if isinstance(item, Scanned)]
    return max(seqs) if seqs else None


@dataclass
class LaneState:
    """Where a lane's chain continues after recovery."""

    lane: int
    next_seq: int
    last_hash: bytes
    active: Optional[Tuple[int, str, SegmentHeader, int]]  # base, path, header, size
    sealed: List[Tuple[int, str, int]]  # base, path, size
    cursor: Cursor
    clean: bool
    notes: List[str] = field(default_factory=list)
    gaps: List[Gap] = field(default_factory=list)
    truncated_bytes: int = 0


def _quarantine(spool_dir: str, lane: int, path: str, *, keep: bool = False) -> str:
    """Move ``path`` to ``quarantine/``; ``keep``: link (or copy) it there, the lane keeps
    it until the caller replaces it, so a failure or crash in between loses nothing."""
    qdir = os.path.join(spool_dir, QUARANTINE_DIR)
    ensure_dir(qdir)
    target = os.path.join(qdir, f"{lane:04d}-{time.time_ns()}-{os.path.basename(path)}")
    fs = current()
    if not keep:
        fs.replace(path, target)
    else:
        try:
            fs.link(path, target)
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            copy_file(path, target)
    fsync_dir(qdir)
    if not keep:
        fsync_dir(os.path.dirname(path))
    return target


def recover_lane(spool_dir: str, lane: int) -> LaneState:
    """Bring a lane to a state the writer can append to; see the module docstring."""
    ldir = lane_dir(spool_dir, lane)
    # a cursor.tmp is left alone: a live drainer may be between its fsync and rename
    # (it holds drain.lock, not the lane lock); a stale one is truncated on the next write
    found_cursor = read_cursor(ldir, lane)
    notes: List[str] = []
    if isinstance(found_cursor, str):
        notes.append(f"cursor ignored ({found_cursor}); pending records will be re-sent")
        cursor = Cursor(lane)
    else:
        cursor = found_cursor
    segments = list_segments(ldir)
    fs = current()
    sealed = [(base, path, fs.stat(path).st_size) for base, path in segments[:-1]]
    state = LaneState(
        lane,
        max(1, cursor.acked_seq + 1),
        cursor.acked_hash if cursor.acked_seq else GENESIS,
        None,
        sealed,
        cursor,
        clean=True,
        notes=notes,
    )
    if not segments:
        return state
    base, path = segments[-1]
    buf = read_regular(path)
    header = decode_header(buf)
    if isinstance(header, str) or header.base_seq != base or header.lane != lane:
        problem = header if isinstance(header, str) else "header names another lane or base"
        if len(buf) < HEADER_SIZE:  # crash between create and header write: nothing was in it
            fs.unlink(path)
            fsync_dir(ldir)
            notes.append(f"removed empty segment {os.path.basename(path)} ({problem})")
        else:
            moved = _quarantine(spool_dir, lane, path)
            notes.append(f"quarantined {os.path.basename(path)} to {moved}: {problem}")
            state.clean = False
            state.next_seq = max(state.next_seq, (_max_seq_from(buf, HEADER_SIZE) or 0) + 1)
        prev_seq, prev_hash = base - 1, state.last_hash
        if sealed:  # the chain resumes after the previous segment's last record
            prev_seq, prev_hash = _last_record(sealed[-1][1], prev_seq, prev_hash)
        state.last_hash = prev_hash
        state.next_seq = max(state.next_seq, prev_seq + 1)
        if state.next_seq > prev_seq + 1:
            state.gaps.append(
                Gap.span(
                    GapReason.CORRUPTION,
                    prev_seq + 1,
                    state.next_seq - 1,
                    f"segment lost: {problem}",
                )
            )
        return state
    tail = scan_tail(buf)
    last_seq = tail.last.seq if tail.last else base - 1
    state.last_hash = tail.last.hash if tail.last else header.anchor
    state.clean = tail.last is not None and tail.last.kind == Kind.CLOSE
    size = len(buf)
    reason, detail = GapReason.LOST, "records delivered before a crash are gone from disk"
    if tail.torn_bytes:
        fd = fs.open(path, _TRUNCATE_FLAGS)
        try:
            fs.ftruncate(fd, tail.good_end)
            fs.fsync(fd)
        finally:
            fs.close(fd)
        size = tail.good_end
        state.truncated_bytes = tail.torn_bytes
        notes.append(
            f"truncated torn tail of {os.path.basename(path)}: {tail.torn_bytes} bytes"
            f" at offset {tail.good_end} ({tail.detail})"
        )
    elif tail.corrupt_at is not None:
        moved = _quarantine(spool_dir, lane, path, keep=True)
        atomic_write(path, buf[: tail.good_end])  # replaces the original in the lane
        size = tail.good_end
        reason, detail = GapReason.CORRUPTION, f"offset {tail.corrupt_at}: {tail.detail}"
        notes.append(
            f"corruption in {os.path.basename(path)} at offset {tail.corrupt_at} ({tail.detail});"
            f" original quarantined to {moved}, valid prefix kept"
        )
        state.next_seq = max(state.next_seq, (tail.max_seq_after or 0) + 1)
        state.clean = False
    if tail.last is None and sealed:
        _hole_before(state, sealed[-1][1], base, os.path.basename(path))
    state.next_seq = max(state.next_seq, last_seq + 1)
    if state.next_seq > last_seq + 1:  # in-line gap: consumes the lost sequence numbers
        state.gaps.append(Gap.span(reason, last_seq + 1, state.next_seq - 1, detail))
    state.active = (base, path, header, size)
    return state


def _hole_before(state: LaneState, previous: str, base: int, name: str) -> None:
    """Queue a gap for records missing between the previous segment and an empty last one.

    A recovery that lost records (a quarantined segment) creates the next segment, then
    writes the gap record naming them; a power loss before that record is durable
    leaves the segment empty and the quarantine done, so the hole would stand in no
    gap (found by tools/crashstates, docs/RELIABILITY.md). Only read for an empty last
    segment, so opening a lane still scans one segment in every other case.
    """
    prev_seq, _ = _last_record(previous, base - 1, GENESIS)
    first = max(prev_seq, state.cursor.acked_seq) + 1
    if first <= base - 1:
        detail = f"records missing before {name} (their gap record was lost in a crash)"
        state.gaps.append(Gap.span(GapReason.CORRUPTION, first, base - 1, detail))


def _last_record(path: str, seq: int, digest: bytes) -> Tuple[int, bytes]:
    """(seq, hash) of a sealed segment's last valid record, or the given defaults."""
    try:
        buf = read_regular(path)
    except OSError:  # gone or replaced by something foreign
        return seq, digest
    header = decode_header(buf)
    if isinstance(header, str):
        return seq, digest
    tail = scan_tail(buf)
    if tail.last is None:
        return header.base_seq - 1, header.anchor
    return tail.last.seq, tail.last.hash
