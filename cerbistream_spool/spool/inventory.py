"""Inventory: one read-only snapshot of a spool, taken once and then asked.

What is on disk per lane: its segments (base seq, path, size), its cursor (or what is
wrong with the cursor file), and, as deep as asked:

- ``Depth.SIZES``: segments, sizes and cursors only (a listing, a stat per segment and
  one cursor read per lane): what the writer's ``stats()`` and capacity accounting need;
- ``Depth.OLDEST``: also the append time of the oldest pending event (records are read
  from the cursor up to the first event: markers and gaps are not events);
- ``Depth.COUNT``: also every record above the cursor: pending events, and the frame
  bytes of all pending records (what ``cerbispool status`` and the drainer report).

"Pending" is what a drainer would ship: the records the reader (spool/reader.py) hands
out above each cursor, so damage is stepped over as the drainer steps over it, and a
lane whose cursor is a directory (no ack could move it) has nothing pending.
``tails=True`` adds each lane's last complete sequence number (spool/recovery.py).
verify.py counts pending on its own walk of the chain (it checks what the reader
trusts); tests/test_inventory.py pins that both agree on an intact spool. Capacity
accounting can sum ``bytes_by_lane()`` / ``bytes_except(lane)`` of a ``Depth.SIZES``
inventory.

Read-only: files are read through spool/fsio.py (no symlink followed, nothing but
regular files read); nothing is written, pinned, swept or removed.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Tuple, Union

from cerbistream_spool.spool.cursor import Cursor, read_cursor
from cerbistream_spool.spool.fsio import file_size, read_regular
from cerbistream_spool.spool.lanes import lane_dir, list_lanes
from cerbistream_spool.spool.reader import SpoolReader
from cerbistream_spool.spool.record import FRAME_OVERHEAD
from cerbistream_spool.spool.recovery import scan_tail
from cerbistream_spool.spool.segments import list_segments

__all__ = ["Depth", "Inventory", "LaneInventory", "Segment", "take_inventory"]

_COUNT_BATCH = (10_000, 1 << 24)  # records, payload bytes per read while counting
_OLDEST_BATCH = (16, 1 << 20)  # small reads: the first pending event is usually first


class Depth(enum.IntEnum):
    """How much of each lane an inventory reads (each level includes the one before)."""

    SIZES = 0
    OLDEST = 1
    COUNT = 2


@dataclass(frozen=True)
class Segment:
    """One segment file as listed: base sequence number, path, size in bytes."""

    base: int
    path: str
    size: int


@dataclass(frozen=True)
class LaneInventory:
    """One lane. Counts are None where the inventory's depth did not read them."""

    lane: int
    segments: Tuple[Segment, ...]
    cursor: Union[Cursor, str]  # a str says what is wrong with the cursor file
    pending_events: Optional[int] = None  # Depth.COUNT
    pending_bytes: Optional[int] = None  # Depth.COUNT: frame bytes of every pending record
    oldest_pending_ns: Optional[int] = None  # Depth.OLDEST and up; None: no pending event
    last_seq: Optional[int] = None  # tails=True; None without segments or when unreadable

    @property
    def bytes(self) -> int:
        """Bytes of the lane's segment files."""
        return sum(s.size for s in self.segments)

    @property
    def acked_seq(self) -> int:
        """The cursor's position (0 when the cursor is missing or unreadable)."""
        return self.cursor.acked_seq if isinstance(self.cursor, Cursor) else 0

    @property
    def cursor_problem(self) -> Optional[str]:
        """What is wrong with the cursor file, None when it is fine (or absent)."""
        return self.cursor if isinstance(self.cursor, str) else None


@dataclass(frozen=True)
class Inventory:
    """Every lane asked for, ascending."""

    spool_dir: str
    depth: Depth
    lanes: Tuple[LaneInventory, ...]

    def lane(self, lane: int) -> Optional[LaneInventory]:
        """The lane, None when it has no directory (or was not asked for)."""
        return next((ln for ln in self.lanes if ln.lane == lane), None)

    @property
    def bytes(self) -> int:
        """Bytes of every segment file."""
        return sum(ln.bytes for ln in self.lanes)

    def bytes_by_lane(self) -> Dict[int, int]:
        """Segment bytes per lane (what capacity accounting sums)."""
        return {ln.lane: ln.bytes for ln in self.lanes}

    def bytes_except(self, lane: int) -> int:
        """Segment bytes of every lane but ``lane`` (a writer's "other lanes")."""
        return sum(ln.bytes for ln in self.lanes if ln.lane != lane)

    @property
    def pending_events(self) -> int:
        """Pending events over every lane (needs ``Depth.COUNT``)."""
        self._needs(Depth.COUNT)
        return sum(ln.pending_events or 0 for ln in self.lanes)

    @property
    def pending_bytes(self) -> int:
        """Frame bytes of every pending record (needs ``Depth.COUNT``)."""
        self._needs(Depth.COUNT)
        return sum(ln.pending_bytes or 0 for ln in self.lanes)

    @property
    def oldest_pending_ns(self) -> Optional[int]:
        """Append time of the oldest pending event of any lane (needs ``Depth.OLDEST``)."""
        self._needs(Depth.OLDEST)
        found = [ln.oldest_pending_ns for ln in self.lanes if ln.oldest_pending_ns is not None]
        return min(found) if found else None

    def _needs(self, depth: Depth) -> None:
        if self.depth < depth:
            raise ValueError(f"an inventory of depth {self.depth.name} has no {depth.name}")


def take_inventory(
    spool_dir: str,
    depth: Depth = Depth.SIZES,
    lanes: Optional[Iterable[int]] = None,
    *,
    tails: bool = False,
) -> Inventory:
    """A snapshot of ``lanes`` (None: every lane) of ``spool_dir`` read to ``depth``."""
    spool_dir = os.path.abspath(spool_dir)
    wanted = None if lanes is None else set(lanes)
    found = []
    for lane in list_lanes(spool_dir):  # real lane directories only, never through a link
        if wanted is not None and lane not in wanted:
            continue
        ldir = lane_dir(spool_dir, lane)
        segments = tuple(Segment(b, p, _size(p)) for b, p in list_segments(ldir))
        cursor = read_cursor(ldir, lane)
        events = nbytes = oldest = None
        if depth >= Depth.COUNT:
            events, nbytes, oldest = _count(spool_dir, lane)
        elif depth >= Depth.OLDEST:
            oldest = _oldest(spool_dir, lane)
        last = _last_seq(segments) if tails else None
        found.append(LaneInventory(lane, segments, cursor, events, nbytes, oldest, last))
    return Inventory(spool_dir, depth, tuple(found))


def _size(path: str) -> int:
    """Size of a listed segment; 0 when it is gone or cannot be stat'ed."""
    try:
        return file_size(path)
    except OSError:
        return 0


def _reader(spool_dir: str, lane: int) -> SpoolReader:
    """A reader of one lane that changes nothing on disk."""
    return SpoolReader(spool_dir, remove_idle_lanes=False, lanes={lane}, sweep=False)


def _count(spool_dir: str, lane: int) -> Tuple[int, int, Optional[int]]:
    """(pending events, frame bytes of all pending records, oldest event's append ns)."""
    count, nbytes, oldest = 0, 0, None
    for batch in _reader(spool_dir, lane).batches(*_COUNT_BATCH):
        nbytes += batch.nbytes + FRAME_OVERHEAD * len(batch.records)
        for record in batch.events():
            count += 1
            if oldest is None:
                oldest = record.ts_ns
    return count, nbytes, oldest


def _oldest(spool_dir: str, lane: int) -> Optional[int]:
    """Append time of the lane's oldest pending event; reads no further than it."""
    for batch in _reader(spool_dir, lane).batches(*_OLDEST_BATCH):
        events = batch.events()
        if events:
            return events[0].ts_ns
    return None


def _last_seq(segments: Tuple[Segment, ...]) -> Optional[int]:
    """Seq of the last complete record of the newest segment (its base - 1 when empty)."""
    if not segments:
        return None
    newest = segments[-1]
    try:
        tail = scan_tail(read_regular(newest.path))
    except OSError:  # removed by a drainer meanwhile, or replaced by a foreign file
        return None
    return tail.last.seq if tail.last else newest.base - 1
