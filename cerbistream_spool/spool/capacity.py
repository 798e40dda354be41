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
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, ClassVar, Dict, List, Optional, Tuple, Union

from cerbistream_spool.errors import SpoolConfigError
from cerbistream_spool.spool.cursor import load_cursor
from cerbistream_spool.spool.fsio import file_size, fsync_dir, read_regular
from cerbistream_spool.spool.lanes import lane_dir, list_lanes, unlink_unpinned
from cerbistream_spool.spool.markers import Gap, GapReason, gap_fields
from cerbistream_spool.spool.record import Kind, Record, Scanned, decode_body, scan
from cerbistream_spool.spool.segment_file import SegmentFile
from cerbistream_spool.spool.segments import HEADER_SIZE, decode_header, list_segments

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
        acked = cursor.acked_seq if cursor else 0
        cursor_now = [acked]
        detail = "drop_oldest: " + (
            "the disk is full" if at_least_one else "max_spool_bytes reached"
        )

        dropped_to = 0
        claims: List[Gap] = []
        idx = 0
        while idx < len(self.sealed) and (self.over_cap(need) or (at_least_one and not dropped_to)):
            base, path, size = self.sealed[idx]
            last = self.sealed[idx + 1][0] - 1 if idx + 1 < len(self.sealed) else self._seg.base - 1
            seen: List[Record] = []

            def locked(path: str = path, seen: List[Record] = seen) -> None:
                # a drainer may have acked just before our lock; what the segment holds
                fresh = load_cursor(self.dir, self.lane)
                cursor_now[0] = max(cursor_now[0], fresh.acked_seq if fresh else 0)
                seen.extend(_records_of(path))

            done = unlink_unpinned(path, locked=locked)
            if done is False:  # in flight to the broker: it stays
                idx += 1
                continue
            del self.sealed[idx]
            self.fixed_bytes -= size
            acked = max(acked, cursor_now[0])
            if done and last > acked:
                lo = max(base, acked + 1)
                self._lose(lo, last)
                claims += dropped_claims(seen, lo, last, detail)
                dropped_to = last
        fsync_dir(self.dir)
        for gap in merge_claims(claims):
            try:
                self._write_gap(gap)
            except OSError:  # still no room: the gap is owed, its range kept
                self._owe_gap(gap)
        return bool(dropped_to)


def _records_of(path: str) -> List[Record]:
    """The readable records of a segment file (none when it is gone or unreadable)."""
    try:
        buf = read_regular(path)
    except OSError:
        return []
    if isinstance(decode_header(buf[:HEADER_SIZE]), str):
        return []
    return [item.record for item in scan(buf, HEADER_SIZE) if isinstance(item, Scanned)]


def dropped_claims(records: List[Record], lo: int, hi: int, detail: str) -> List[Gap]:
    """The claims to write for a segment unlinked undelivered from ``lo`` to ``hi``.

    Every gap record the segment held is carried as it was (delivered or not, it
    leaves the disk without reaching the ledger); the seqs ``lo..hi`` that no carried
    gap claims become ``overflow`` ranges whose ``count`` is the events among them
    (seqs the scan could not read count as events: an upper bound).
    """
    carried: List[Gap] = []
    for rec in records:
        if rec.kind != Kind.GAP:
            continue
        body = _safe_body(rec.body)
        fields = gap_fields(body) if isinstance(body, dict) else {}
        if "reason" in fields and "count" in fields:
            carried.append(
                Gap(
                    fields["reason"],
                    fields["count"],
                    fields.get("detail", ""),
                    fields.get("first_seq"),
                    fields.get("last_seq"),
                    fields.get("lane"),
                )
            )
    taken = sorted(
        (g.first_seq, g.last_seq)
        for g in carried
        if g.first_seq is not None
        and g.last_seq is not None
        and g.lane is None
        and g.reason != GapReason.DEAD_LETTER  # names records still on disk
    )
    markers = [rec.seq for rec in records if rec.kind != Kind.EVENT and lo <= rec.seq <= hi]
    fresh: List[Gap] = []
    at = lo
    for t_lo, t_hi in [*taken, (hi + 1, hi + 1)]:
        top = min(hi, t_lo - 1)
        if top >= at:
            non_events = bisect.bisect_right(markers, top) - bisect.bisect_left(markers, at)
            fresh.append(Gap(GapReason.OVERFLOW, top - at + 1 - non_events, detail, at, top))
        at = max(at, t_hi + 1)
    return carried + fresh


def merge_claims(claims: List[Gap]) -> List[Gap]:
    """One gap per run of adjacent ranges (and per reason without a range) of one
    reason and lane, so repeated drops keep a bounded number of gap records.

    Ranges of one run are disjoint as this release writes them; an older release
    wrote nested head gaps (each from the cursor on): the outer one's count stands.
    """
    out: List[Gap] = []
    counts: Dict[Tuple[str, Optional[int]], Gap] = {}
    ranged = sorted(
        (g for g in claims if g.first_seq is not None and g.last_seq is not None),
        key=lambda g: (_reason(g), -1 if g.lane is None else g.lane, g.first_seq),
    )
    for gap in claims:
        if gap.first_seq is None or gap.last_seq is None:
            key = (_reason(gap), gap.lane)
            had = counts.get(key)
            counts[key] = gap if had is None else replace(had, count=had.count + gap.count)
    out = list(counts.values())
    run: Optional[Gap] = None
    for gap in ranged:
        assert gap.first_seq is not None and gap.last_seq is not None
        if (
            run is not None
            and _reason(run) == _reason(gap)
            and run.lane == gap.lane
            and run.last_seq is not None
            and gap.first_seq <= run.last_seq + 1
        ):
            if gap.last_seq <= run.last_seq:  # nested: already claimed
                count = max(run.count, gap.count)
            else:
                count = run.count + gap.count
            run = replace(run, count=count, last_seq=max(run.last_seq, gap.last_seq))
            out[-1] = run
            continue
        run = gap
        out.append(run)
    return out


def _safe_body(body: bytes) -> Any:
    try:
        return decode_body(body)
    except Exception:  # noqa: BLE001 — a damaged body: nothing to carry
        return None


def _reason(gap: Gap) -> str:
    return gap.reason.value if isinstance(gap.reason, GapReason) else gap.reason


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
