"""The size cap: bytes of every lane against ``max_spool_bytes``, and the overflow policies.

Overflow policies (docs/OPERATIONS.md, "Sizing the spool"), chosen once per writer:

- :class:`DropOldest` (``overflow="drop_oldest"``): unlink this lane's oldest
  sealed segments a drainer has not pinned; the events in them are lost (a gap
  record with the range from the cursor on);
- :class:`DropNewest` (``"drop_newest"``): refuse the new event (a gap record
  with the count once a write succeeds);
- :class:`Block` (``"block"``): wait up to ``timeout_s`` for a drainer to free
  space, then refuse as ``DropNewest``. The wait happens outside the writer's
  lock, so markers (spool/writer.py ``append_marker``), ``close`` and other
  threads never wait behind a blocked appender.

Markers are never refused: they may overshoot the cap by their own size.
"""

from __future__ import annotations

import bisect
import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Callable, ClassVar, List, Optional, Tuple, Union

from cerbistream_spool.errors import SpoolConfigError
from cerbistream_spool.spool.claims import coarsened, dropped_claims, merge_claims, records_of
from cerbistream_spool.spool.cursor import load_cursor
from cerbistream_spool.spool.fsio import current, file_size, fsync_dir
from cerbistream_spool.spool.lanes import lane_dir, list_lanes, unlink_unpinned
from cerbistream_spool.spool.losses import LedgerEntry, record_gaps
from cerbistream_spool.spool.markers import Gap
from cerbistream_spool.spool.record import Kind, Record
from cerbistream_spool.spool.segment_file import SegmentFile
from cerbistream_spool.spool.segments import list_segments

__all__ = [
    "OVERFLOW_POLICIES",
    "Block",
    "Capacity",
    "DropNewest",
    "DropOldest",
    "OverflowPolicy",
    "lose_range",
    "overflow_policy",
]

REFRESH_MIN_S = 0.05  # at most one directory walk per 50 ms while over the size cap


@dataclass(frozen=True)
class DropOldest:
    """Unlink the lane's oldest unpinned sealed segments to make room (the default)."""

    name: ClassVar[str] = "drop_oldest"

    def make_room(
        self, capacity: Capacity, need: int, deadline: Optional[float]
    ) -> Optional[float]:
        """Free space now (under the writer's lock); never wait."""
        capacity.drop_oldest(need)
        return None

    def on_disk_full(self, capacity: Capacity) -> bool:
        """A write failed with ENOSPC/EDQUOT: drop the oldest unpinned sealed segment."""
        capacity.refresh_sizes(force=True)
        return capacity.drop_oldest(0, at_least_one=True)


@dataclass(frozen=True)
class DropNewest:
    """Refuse the new event while the spool is full."""

    name: ClassVar[str] = "drop_newest"

    def make_room(
        self, capacity: Capacity, need: int, deadline: Optional[float]
    ) -> Optional[float]:
        """Nothing to free; never wait."""
        return None

    def on_disk_full(self, capacity: Capacity) -> bool:
        """A full disk drops the new record."""
        return False


@dataclass(frozen=True)
class Block:
    """Wait up to ``timeout_s`` for a drainer to free space, then refuse the event."""

    timeout_s: float = 1.0
    name: ClassVar[str] = "block"

    def __post_init__(self) -> None:
        if self.timeout_s < 0:
            raise SpoolConfigError("block_timeout_s must be >= 0")

    def make_room(
        self, capacity: Capacity, need: int, deadline: Optional[float]
    ) -> Optional[float]:
        """The deadline to wait until (outside the writer's lock), None once it passed."""
        now = time.monotonic()
        until = now + self.timeout_s if deadline is None else deadline
        return until if now < until else None

    def on_disk_full(self, capacity: Capacity) -> bool:
        """A full disk drops the new record (waiting would not free the disk)."""
        return False


OverflowPolicy = Union[DropOldest, DropNewest, Block]
OVERFLOW_POLICIES = ("drop_oldest", "drop_newest", "block")


def overflow_policy(overflow: object, block_timeout_s: float = 1.0) -> OverflowPolicy:
    """The policy for an ``overflow`` option: a policy object, or its name."""
    if isinstance(overflow, (DropOldest, DropNewest, Block)):
        return overflow
    if overflow == "drop_oldest":
        return DropOldest()
    if overflow == "drop_newest":
        return DropNewest()
    if overflow == "block":
        return Block(block_timeout_s)
    raise SpoolConfigError(
        f"overflow must be one of {OVERFLOW_POLICIES} or DropOldest(), DropNewest(),"
        f" Block(timeout_s), not {overflow!r}"
    )


class Capacity:
    """Sizes of every lane's segments as one writer sees them; frees space for ``DropOldest``.

    ``fixed_bytes`` is the other lanes plus this lane's sealed segments; the active
    segment's size is ``segment.size``. The callbacks belong to the writer (caller
    holds its lock): ``write_gap`` writes a gap record (raises ``OSError``),
    ``owe_gap`` owes it (written before the next record), ``lose(lo, hi)`` counts
    the events of a range as lost.
    """

    def __init__(
        self,
        spool_dir: str,
        max_spool: int,
        segment: SegmentFile,
        write_gap: Callable[[Gap], None],
        owe_gap: Callable[[Gap], None],
        lose: Callable[[int, int], None],
    ) -> None:
        self.spool_dir = spool_dir
        self.max_spool = max_spool
        self._seg = segment
        self._write_gap = write_gap
        self._owe_gap = owe_gap
        self._lose = lose
        self.space = threading.Event()  # set by notify_space: a drainer freed space
        self.last_refresh = 0.0
        self.move_to("", 0, [])

    def move_to(self, lane_dir: str, lane: int, sealed: List[Tuple[int, str, int]]) -> None:
        """Account for ``lane`` from now on, its sealed segments ``(base, path, size)``."""
        self.dir, self.lane = lane_dir, lane
        self.sealed = sealed
        self.other_bytes = 0
        self.fixed_bytes = 0

    def add_sealed(self, base: int, path: str, size: int) -> None:
        """The active segment was sealed."""
        self.sealed.append((base, path, size))
        self.fixed_bytes += size

    def lane_bytes(self) -> int:
        """This lane's bytes on disk."""
        seg = self._seg
        return self.fixed_bytes - self.other_bytes + (seg.size if seg.fd else 0)

    def refresh_sizes(self, force: bool = False) -> None:
        """Re-read segment sizes (the drainer deletes acked segments); rate-limited."""
        now = time.monotonic()
        if not force and now - self.last_refresh < REFRESH_MIN_S:
            return
        self.last_refresh = now
        active = self._seg.path if self._seg.fd is not None else None
        self.sealed = [
            (base, path, file_size(path))
            for base, path in list_segments(self.dir)
            if path != active
        ]
        self.other_bytes = sum(
            file_size(path)
            for lane in list_lanes(self.spool_dir)
            if lane != self.lane
            for _, path in list_segments(lane_dir(self.spool_dir, lane))
        )
        self.fixed_bytes = self.other_bytes + sum(size for _, _, size in self.sealed)

    def over_cap(self, need: int) -> bool:
        """True when ``need`` more bytes would pass ``max_spool_bytes``."""
        return self.fixed_bytes + self._seg.size + need > self.max_spool

    def wait_for_space(self) -> None:
        """Wait (outside the writer's lock) until a drainer frees space, at most 50 ms."""
        self.space.wait(REFRESH_MIN_S)
        self.space.clear()

    def notify_space(self) -> None:
        """Space was freed: the next check re-reads sizes; wake a waiting appender."""
        self.last_refresh = 0.0
        self.space.set()

    def drop_oldest(self, need: int, at_least_one: bool = False) -> bool:
        """Unlink our oldest sealed segments a drainer does not have in flight; True if any.

        A segment a drainer pinned (its records are being sent, spool/lanes.py) is
        skipped and the next oldest goes instead: no event is both lost and
        delivered. Each lost seq is claimed by exactly one gap record
        (docs/FORMAT.md §4.2, "Head gaps"): the gaps written claim the dropped
        records above the cursor, and carry the claims of the gap records that left
        with the dropped segments (read under the segment's lock, before the unlink).
        """
        cursor = load_cursor(self.dir, self.lane)
        acked = [cursor.acked_seq if cursor else 0]  # grows: a drainer may ack meanwhile
        detail = "drop_oldest: " + (
            "the disk is full" if at_least_one else "max_spool_bytes reached"
        )
        owed: List[Gap] = []
        dropped_to = 0
        # the segments sealed when the call began: the gap records written below may
        # rotate the active segment, and what they seal is not for this call to drop
        candidates = list(self.sealed)
        active_base = self._seg.base
        for idx, (base, path, size) in enumerate(candidates):
            if not (self.over_cap(need) or (at_least_one and not dropped_to)):
                break
            last = candidates[idx + 1][0] - 1 if idx + 1 < len(candidates) else active_base - 1

            def locked(path: str = path, base: int = base, last: int = last) -> None:
                # the cursor includes every ack of this segment now (spool/lanes.py)
                fresh = load_cursor(self.dir, self.lane)
                acked[0] = max(acked[0], fresh.acked_seq if fresh else 0)
                keyed, records = records_of(path)
                carry = self._ledger_delivered_gaps(keyed, records, acked[0])
                lo = max(base, acked[0] + 1)
                gaps = dropped_claims(carry, lo, last, detail)
                if gaps:
                    owed.extend(self._write_durably(coarsened(merge_claims(gaps))))

            done = unlink_unpinned(path, locked=locked)
            if done is False:  # in flight to the broker: it stays
                continue
            self.sealed = [entry for entry in self.sealed if entry[1] != path]
            self.fixed_bytes -= size
            if done and last > acked[0]:
                self._lose(max(base, acked[0] + 1), last)
                dropped_to = last
        fsync_dir(self.dir)
        for gap in owed:  # could not be written before the unlink (a full disk)
            self._owe_gap(gap)
        return bool(dropped_to)

    def _ledger_delivered_gaps(
        self, keyed: bool, records: List[Record], acked: int
    ) -> List[Record]:
        """Put the delivered gap records of a segment about to go into the losses ledger
        (as the reader does before it unlinks, spool/losses.py); returns the records
        whose claims the gaps written for the drop must carry: those above the cursor,
        and the delivered gaps too when the ledger cannot be written (a full disk)."""
        delivered = [rec for rec in records if rec.kind == Kind.GAP and rec.seq <= acked]
        rest = [rec for rec in records if rec.seq > acked]
        if delivered:
            try:
                record_gaps(
                    self.spool_dir, [LedgerEntry.of(self.lane, r, keyed) for r in delivered]
                )
            except OSError:
                return delivered + rest
        return rest

    def _write_durably(self, gaps: List[Gap]) -> List[Gap]:
        """Write ``gaps`` and fsync them, before their records' segment is unlinked: a
        power loss then leaves the segment or the gap records, never neither (the
        crash states of tools/crashstates, workload ``overflow``). Returns those that
        could not be written (the disk is full: they are owed, a crash may lose them)."""
        failed: List[Gap] = []
        for gap in gaps:
            try:
                self._write_gap(gap)
            except OSError:
                failed.append(gap)
        fd = self._seg.fd
        if fd is not None and len(failed) < len(gaps):
            with contextlib.suppress(OSError):  # the writer's next fsync reports it
                current().fsync(fd)
        return failed


def lose_range(
    ranges: List[Tuple[int, int]], lo: int, hi: int, events_between: Callable[[int, int], int]
) -> int:
    """Merge ``lo..hi`` into ``ranges``; the events in it not counted lost before.

    ``ranges`` stays sorted, disjoint and merged: a segment kept while pinned and
    dropped later may span ranges already lost after it.
    """
    lost = 0
    i = bisect.bisect_left(ranges, (lo, lo))
    if i and ranges[i - 1][1] >= lo - 1:
        i -= 1
    j, at = i, lo
    new_lo, new_hi = lo, hi
    while j < len(ranges) and ranges[j][0] <= hi + 1:
        r_lo, r_hi = ranges[j]
        if r_lo > at:
            lost += events_between(at, min(hi, r_lo - 1))
        at = max(at, r_hi + 1)
        new_lo, new_hi = min(new_lo, r_lo), max(new_hi, r_hi)
        j += 1
    if at <= hi:
        lost += events_between(at, hi)
    ranges[i:j] = [(new_lo, new_hi)]
    return lost
