"""SpoolReader: batches from each lane's cursor on, and durable acks (docs/FORMAT.md §5, §6).

The reader keeps one position per lane in memory and reads segments through
``mmap``, one batch at a time, so a large backlog is never loaded. It reads
the active segment up to its last complete record. ``ack`` persists the cursor
(in place, spool/cursor.py) and only then unlinks fully acknowledged segments; a
lane with nothing pending and no live writer is removed.

Losses outlive delivery: before a segment holding gap records is unlinked (or a
delivered lane removed), its gaps are appended to the losses ledger and fsynced
(spool/losses.py): ledger → cursor → unlink. The reader notes the gap records of
every segment it scans from the header, so this costs no extra read. When the
ledger cannot be written (a full disk), the segments holding gaps are kept and
pinned (``drop_oldest`` spares them) and the next ack tries again; the others are
unlinked, and acks and delivery go on.

Corruption is never skipped silently. Every bad frame or header goes into
:attr:`SpoolReader.problems`; when valid records follow it (in the same
segment or a newer one), the reader resynchronises past it and the batch that
carries the next records also carries a :class:`Damage` (segment, byte range,
the sequence numbers lost as best known from the valid neighbours), so the
caller can keep the segment for salvage and record the loss *before* acking
past it. Damage at the very end of a lane's newest segment stops the reader
there (a torn write the writer's recovery settles).

With ``pin=True`` (the drainer's reader) every segment records were handed out
from stays pinned (``flock(LOCK_SH)``, spool/lanes.py) until the batch is acked
or rewound, so ``drop_oldest`` never drops records in flight to the broker
(they would be counted lost and delivered).
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Set, Tuple

from cerbistream_spool.spool.claims import records_of
from cerbistream_spool.spool.cursor import CURSOR_FILE, Cursor, read_cursor, write_cursor
from cerbistream_spool.spool.fsio import (
    ForeignFileError,
    current,
    file_size,
    fsync_dir,
    identity,
    list_entries,
    map_regular,
    read_regular,
    remove_tree,
)
from cerbistream_spool.spool.lanes import (
    LANES_DIR,
    lane_dir,
    list_lanes,
    owner_lock,
    pin_segment,
)
from cerbistream_spool.spool.losses import LedgerEntry, record_gaps
from cerbistream_spool.spool.record import (
    FRAME_OVERHEAD,
    Kind,
    Record,
    Scanned,
    decode_payload,
    read_frame,
    scan,
)
from cerbistream_spool.spool.segments import (
    HEADER_SIZE,
    decode_header,
    lane_foreign,
    list_segments,
)

__all__ = ["Batch", "Damage", "SpoolReader"]

_MAX_PROBLEMS = 1000


class _Unreadable(Exception):
    """An I/O error reading a segment (reported): the lane's reading stops there."""


_GAP = int(Kind.GAP)  # a plain int: compared once per record read
_REMOVING = ".removing-"


class Damage(NamedTuple):
    """Bytes of a segment the reader could not use, and the records lost with them.

    ``first_seq..last_seq``: from the previous valid record's seq + 1 to the next
    valid record's seq - 1 (or the next segment's base - 1).
    """

    lane: int
    segment: str  # path of the damaged segment
    start: int  # offset of the first bad byte
    end: int  # offset where valid data resumes (the file size if it never does)
    first_seq: int
    last_seq: int
    detail: str

    @property
    def lost(self) -> int:
        """Records lost (0 when the damaged bytes held no record of the chain)."""
        return max(0, self.last_seq - self.first_seq + 1)


class Batch(NamedTuple):
    """Consecutive records of one lane; ack it to advance that lane's cursor.

    ``damage``: what the reader had to step over to reach these records; the
    ack moves the cursor past it.
    """

    lane: int
    records: List[Record]
    nbytes: int
    damage: Tuple[Damage, ...] = ()
    origin: Optional[Tuple[int, int]] = None  # (st_dev, st_ino) of the lane directory read
    tail: Optional[Tuple[str, int]] = None  # (path, header created_ns) of the last record's segment

    @property
    def first_seq(self) -> int:
        """Sequence number of the first record."""
        return self.records[0].seq

    @property
    def last_seq(self) -> int:
        """Sequence number of the last record."""
        return self.records[-1].seq

    def events(self) -> List[Record]:
        """Only the event records (markers and gaps are not shipped)."""
        return [r for r in self.records if r.kind == Kind.EVENT]


@dataclass
class _Position:
    acked: Cursor
    base: Optional[int] = None  # segment being read
    offset: int = HEADER_SIZE
    last_read: int = 0  # highest seq handed out
    exhausted: bool = False  # at the end of the newest segment
    prev_seq: int = 0  # seq of the last valid record seen in the segment being read
    damage: List[Damage] = field(default_factory=list)  # stepped over, not yet in a batch
    origin: Optional[Tuple[int, int]] = None  # identity of the lane directory read
    seg_created: Optional[int] = None  # header created_ns of the segment at ``base``
    stale: bool = False  # the segment at ``base`` was replaced under us: start again
    pins: Dict[str, int] = field(default_factory=dict)  # segment path -> pinning descriptor
    scanned: Set[str] = field(default_factory=set)  # segments read from their header on
    gaps: Dict[str, Dict[int, LedgerEntry]] = field(default_factory=dict)  # path -> seq -> gap

    def unpin(self) -> None:
        """Release the pins of records handed out (acked, or to be read again)."""
        pins, self.pins = self.pins, {}
        for fd in pins.values():
            with contextlib.suppress(OSError):
                current().close(fd)


@dataclass
class SpoolReader:
    """Reads every lane of ``spool_dir`` from its cursor on."""

    spool_dir: str
    remove_idle_lanes: bool = True
    lanes: Optional[Set[int]] = None  # read only these lanes (None: all)
    from_start: bool = False  # ignore cursors: everything still on disk (``tail --all``)
    unlink_acked: bool = True  # False: ack only moves the cursor (a replayed copy keeps all)
    pin: bool = False  # pin segments with records in flight until acked (the drainer's reader)
    sweep: bool = True  # finish lane removals a crash interrupted (False: spool/inventory.py)
    problems: List[Dict[str, Any]] = field(default_factory=list)
    losses_error: Optional[str] = None  # why delivered gaps could not go to the ledger (kept)
    _pos: Dict[int, _Position] = field(default_factory=dict)
    _held: Dict[str, int] = field(default_factory=dict)  # delivered, kept for its gaps: pin fd
    _unackable_lanes: Set[int] = field(default_factory=set)  # cursor is a directory: reported
    _next_lane: int = 0

    def __post_init__(self) -> None:
        if self.sweep:
            _sweep_removed_lanes(self.spool_dir)
        _READERS[id(self)] = self

    # -- public API ---------------------------------------------------------------

    def read_batch(self, max_records: int = 500, max_bytes: int = 1 << 20) -> Optional[Batch]:
        """The next batch from any lane (round-robin), or None when nothing is pending."""
        lanes = [n for n in list_lanes(self.spool_dir) if self.lanes is None or n in self.lanes]
        for gone in set(self._pos) - set(lanes):
            self._pos.pop(gone).unpin()
        if not lanes:
            return None
        start = next((i for i, lane in enumerate(lanes) if lane >= self._next_lane), 0)
        for lane in lanes[start:] + lanes[:start]:
            if self._unackable(lane):
                continue
            batch = self._read_lane(lane, max_records, max_bytes)
            if batch is not None:
                self._next_lane = lane + 1
                return batch
            if self.remove_idle_lanes:
                self._remove_if_idle(lane)
        return None

    def _unackable(self, lane: int) -> bool:
        """Whether the lane's cursor is a directory: no ack could move it (a rename cannot
        replace a directory), so its records would be sent again after every ack. The
        lane is left alone (neither read nor removed) and reported once."""
        try:
            blocked = stat.S_ISDIR(
                current().lstat(os.path.join(lane_dir(self.spool_dir, lane), CURSOR_FILE)).st_mode
            )
        except OSError:
            blocked = False
        if not blocked:
            self._unackable_lanes.discard(lane)
        elif lane not in self._unackable_lanes:
            self._unackable_lanes.add(lane)
            detail = "cursor is a directory: the lane cannot be acknowledged; left alone"
            self._problem(lane, "", 0, "cursor", detail)
        return blocked

    def batches(self, max_records: int = 500, max_bytes: int = 1 << 20) -> Iterator[Batch]:
        """Batches until nothing is pending (without acking them)."""
        while True:
            batch = self.read_batch(max_records, max_bytes)
            if batch is None:
                return
            yield batch

    def rewind(self) -> None:
        """Forget read positions: the next batch starts again at each lane's cursor."""
        self.release()
        self._pos.clear()

    def release(self) -> None:
        """Unpin every segment (also done by ``ack`` and ``rewind``)."""
        for pos in self._pos.values():
            pos.unpin()

    def ack(self, batch: Batch) -> None:
        """Persist that ``batch`` was delivered, then unlink fully acknowledged segments."""
        pos = self._position(batch.lane)
        last = batch.records[-1]
        if (batch.origin is not None and pos.origin != batch.origin) or _replaced(batch.tail):
            # the lane was removed or replaced since the batch was read (a new lane reuses
            # its number, maybe its inode): its cursor must not move by records it never held
            pos.unpin()
            self._pos.pop(batch.lane, None)
            return
        if last.seq <= pos.acked.acked_seq:
            pos.unpin()
            return
        ldir = lane_dir(self.spool_dir, batch.lane)
        doomed: List[str] = []
        if self.unlink_acked:
            segments = list_segments(ldir)
            for (_, path), (next_base, _) in zip(segments, segments[1:]):
                if next_base - 1 > last.seq:
                    break
                doomed.append(path)
            doomed = self._record_losses(batch.lane, pos, doomed)  # ledger durable first
        pos.acked = Cursor(batch.lane, last.seq, last.hash)
        write_cursor(ldir, pos.acked)
        pos.unpin()  # delivered and recorded: drop_oldest may take them now
        removed = False
        for path in doomed:
            try:
                current().unlink(path)
                removed = True
            except FileNotFoundError:
                pass
            self._forget(pos, path)
        if removed:
            fsync_dir(ldir)

    # -- losses ledger ----------------------------------------------------------------------

    def _record_losses(self, lane: int, pos: _Position, paths: List[str]) -> List[str]:
        """Record the gaps of ``paths`` (delivered, about to be unlinked) in the ledger;
        returns the ones that may go. On failure the segments holding gaps stay, pinned
        (``drop_oldest`` spares them), for the next ack to try again; the others go."""
        found = [self._gaps_of(lane, pos, path) for path in paths]
        entries = [entry for gaps in found for entry in gaps]
        if entries:
            try:
                record_gaps(self.spool_dir, entries)
            except OSError as exc:
                for path, gaps in zip(paths, found):
                    if gaps:
                        self._hold(path)
                self.losses_error = (
                    f"cannot record delivered gap records in losses/ledger ({exc}); their"
                    " segments are kept until it can"
                )
                return [path for path, gaps in zip(paths, found) if not gaps]
            self.losses_error = None
        return paths

    def _gaps_of(self, lane: int, pos: _Position, path: str) -> List[LedgerEntry]:
        """The gap records of a segment: noted while scanning it, else read now (a segment
        wholly below the cursor when this reader started: a crash before its unlink)."""
        if path in pos.scanned:
            return list(pos.gaps.get(path, {}).values())
        return _gaps_in_file(lane, path)

    def _hold(self, path: str) -> None:
        if path not in self._held:
            fd: Optional[int] = None
            with contextlib.suppress(OSError):  # unpinned, it is still kept: the next ack retries
                fd = pin_segment(path)
            if fd is not None:
                self._held[path] = fd

    def _forget(self, pos: _Position, path: str) -> None:
        """``path`` was unlinked: drop what the reader noted about it."""
        pos.scanned.discard(path)
        pos.gaps.pop(path, None)
        fd = self._held.pop(path, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                current().close(fd)

    # -- reading ----------------------------------------------------------------------

    def _position(self, lane: int) -> _Position:
        """The read position of ``lane``; a fresh one when the lane directory was removed or
        replaced since (a recreated lane restarts at seq 1 under the same number)."""
        ldir = lane_dir(self.spool_dir, lane)
        origin = identity(ldir)
        pos = self._pos.get(lane)
        if pos is not None and pos.origin == origin:
            on_disk = read_cursor(ldir, lane)
            if not isinstance(on_disk, Cursor) or on_disk.acked_seq >= pos.acked.acked_seq:
                return pos
        if pos is not None:  # replaced, or the cursor went back: a new lane in a reused inode
            pos.unpin()
        found = read_cursor(ldir, lane)
        if isinstance(found, str):
            self._problem(lane, "", 0, "cursor", found + "; reading lane from the start")
            found = Cursor(lane)
        start = 0 if self.from_start else found.acked_seq
        pos = self._pos[lane] = _Position(found, last_read=start, origin=origin)
        return pos

    def _read_lane(self, lane: int, max_records: int, max_bytes: int) -> Optional[Batch]:
        batch = self._read_lane_once(lane, max_records, max_bytes)
        if self._pos.get(lane) is None or not self._pos[lane].stale:
            return batch
        self._pos.pop(lane).unpin()  # its segment was replaced mid-read: read it afresh
        return self._read_lane_once(lane, max_records, max_bytes)

    def _read_lane_once(self, lane: int, max_records: int, max_bytes: int) -> Optional[Batch]:
        pos = self._position(lane)
        records: List[Record] = []
        nbytes = 0
        ldir = lane_dir(self.spool_dir, lane)
        segments = list_segments(ldir)
        pos.exhausted = not segments  # a lane without segments has nothing left to read
        tail: Optional[Tuple[str, int]] = None
        while segments and len(records) < max_records and nbytes < max_bytes:
            bases = [b for b, _ in segments]
            if pos.base is None or pos.base not in bases:
                # first visit, or the segment was deleted: start at the one holding last_read+1
                pos.base = _segment_for(bases, pos.last_read + 1)
                pos.offset, pos.prev_seq = HEADER_SIZE, pos.base - 1
            idx = bases.index(pos.base)
            next_base = bases[idx + 1] if idx + 1 < len(bases) else None
            path = segments[idx][1]
            held = len(records)
            try:
                more, used = self._scan(
                    lane,
                    path,
                    pos,
                    records,
                    next_base,
                    max_records=max_records,
                    max_bytes=max_bytes - nbytes,
                )
            except _Unreadable:  # the lane waits here: what came before it is handed out
                break
            nbytes += used
            if pos.stale:
                return None
            if len(records) > held:  # the batch's last record is in this segment (so far)
                tail = (path, pos.seg_created or 0)
            if more:
                continue
            if next_base is not None:
                pos.base, pos.offset, pos.prev_seq = next_base, HEADER_SIZE, next_base - 1
                continue
            pos.exhausted = True
            break
        if not records:
            return None  # damage stepped over so far rides with the next batch
        damage, pos.damage = tuple(pos.damage), []
        return Batch(lane, records, nbytes, damage, pos.origin, tail)

    def _scan(
        self,
        lane: int,
        path: str,
        pos: _Position,
        out: List[Record],
        next_base: Optional[int],
        *,
        max_records: int,
        max_bytes: int,
    ) -> Tuple[bool, int]:
        """Append records of one segment to ``out``; (a limit stopped us, payload bytes read).

        ``next_base``: base of the next segment of the lane, None for the newest one.
        """
        used = 0
        try:
            if self.pin and path not in pos.pins:
                fd = pin_segment(path)
                if fd is None:  # acked meanwhile, or dropped by drop_oldest (counted there)
                    return False, used
                pos.pins[path] = fd
            buf = map_regular(path)
        except (FileNotFoundError, ForeignFileError):  # acked meanwhile, or foreign now
            return False, used
        except OSError as exc:  # an I/O error: never stepped over; read again next time
            self._problem(lane, path, pos.offset, "io", f"segment unreadable: {exc}")
            raise _Unreadable from exc
        size = 0 if buf is None else len(buf)
        if buf is None or size < HEADER_SIZE:
            if buf is not None:
                buf.close()
            if next_base is not None:
                detail = f"segment is {size} bytes, shorter than its header"
                self._damaged(lane, path, pos, 0, size, next_base - 1, "format", detail)
            return False, used
        with buf:
            header = decode_header(buf[:HEADER_SIZE])
            keyed = not isinstance(header, str) and header.keyed
            if not isinstance(header, str) and pos.offset != HEADER_SIZE:
                if header.created_ns != pos.seg_created:  # same name, another file
                    pos.stale = True
                    return False, used
            elif pos.offset == HEADER_SIZE:
                if isinstance(header, str):
                    if next_base is None:
                        self._problem(lane, path, 0, "format", header)
                    else:
                        self._damaged(lane, path, pos, 0, size, next_base - 1, "format", header)
                    return False, used
                pos.seg_created = header.created_ns
                pos.scanned.add(path)  # every gap record of it is noted from here on
                pos.gaps[path] = {}
            if len(out) >= max_records or used >= max_bytes:
                return True, used
            gaps = pos.gaps[path] if path in pos.scanned else None
            for item in scan(buf, pos.offset):
                if isinstance(item, Scanned):
                    rec = item.record
                    pos.offset, pos.prev_seq = item.end, rec.seq
                    if gaps is not None and rec.kind == _GAP:
                        gaps[rec.seq] = LedgerEntry.of(lane, rec, keyed)
                    if rec.seq > pos.last_read:
                        pos.last_read = rec.seq
                        out.append(rec)
                        used += item.end - item.offset - FRAME_OVERHEAD
                        if len(out) >= max_records or used >= max_bytes:
                            return True, used
                    continue
                if item.kind == "torn" and next_base is None:
                    return False, used  # the writer has not finished this frame
                if item.resync is None:
                    if next_base is None:  # the newest segment's tail: do not pass it
                        self._problem(lane, path, pos.offset, "checksum", item.detail)
                        return False, used
                    last, end = next_base - 1, size
                else:
                    following = decode_payload(read_frame(buf, item.resync).payload)
                    assert isinstance(following, Record)  # the scan checked it
                    last, end = following.seq - 1, item.resync
                self._damaged(lane, path, pos, pos.offset, end, last, "checksum", item.detail)
                if item.resync is None:
                    return False, used
                pos.offset = item.resync
            return False, used  # the end of the data

    def _damaged(
        self,
        lane: int,
        path: str,
        pos: _Position,
        start: int,
        end: int,
        last_seq: int,
        kind: str,
        detail: str,
    ) -> None:
        """Report bytes the reader steps over; records not yet handed out become a Damage."""
        self._problem(lane, path, start, kind, detail)
        first = max(pos.prev_seq, pos.last_read) + 1
        if last_seq >= first:
            pos.damage.append(Damage(lane, path, start, end, first, last_seq, detail))

    def _remove_if_idle(self, lane: int) -> None:
        pos = self._pos.get(lane)
        if pos is None or not pos.exhausted or pos.acked.acked_seq < pos.last_read or pos.damage:
            return
        if lane_foreign(lane_dir(self.spool_dir, lane)):  # never delete what is not ours
            return
        lock = owner_lock(self.spool_dir, lane)
        if lock is None:
            return
        try:
            ldir = lane_dir(self.spool_dir, lane)
            segments = list_segments(ldir)
            # a writer may have appended between our read and taking the lock
            if segments and (
                segments[-1][0] != pos.base or file_size(segments[-1][1]) != pos.offset
            ):
                return
            entries = [e for _, path in segments for e in self._gaps_of(lane, pos, path)]
            if entries:  # the lane's gaps go to the ledger before the lane goes
                try:
                    record_gaps(self.spool_dir, entries)
                except OSError as exc:
                    self.losses_error = (
                        f"cannot record delivered gap records in losses/ledger ({exc});"
                        f" lane {lane} is kept until it can"
                    )
                    return
                self.losses_error = None
            # one rename makes the removal atomic: a crash leaves either the whole lane or a
            # ".removing-" directory that list_lanes ignores and the next reader sweeps
            lanes_dir = os.path.join(self.spool_dir, LANES_DIR)
            doomed = os.path.join(lanes_dir, f"{_REMOVING}{lane:04d}-{time.time_ns()}")
            current().rename(ldir, doomed)
            fsync_dir(lanes_dir)
            remove_tree(doomed)
            gone = self._pos.pop(lane)
            gone.unpin()
            for _, path in segments:
                self._forget(gone, path)
        finally:
            lock.release()

    def _problem(self, lane: int, path: str, offset: int, kind: str, detail: str) -> None:
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append(
                {
                    "lane": lane,
                    "segment": os.path.basename(path),
                    "offset": offset,
                    "kind": kind,
                    "detail": detail,
                }
            )


_READERS: weakref.WeakValueDictionary[int, SpoolReader] = weakref.WeakValueDictionary()


def _forget_pins_in_child() -> None:
    """A forked child closes its copies of the pins (never unlocking the parent's)."""
    for reader in list(_READERS.values()):
        for pos in reader._pos.values():
            pos.unpin()
        held, reader._held = reader._held, {}
        for fd in held.values():
            with contextlib.suppress(OSError):
                current().close(fd)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pins_in_child)


def _sweep_removed_lanes(spool_dir: str) -> None:
    """Finish lane removals a crash interrupted (their rename already took them out)."""
    lanes_dir = os.path.join(spool_dir, LANES_DIR)
    for name, kind in list_entries(lanes_dir):
        if name.startswith(_REMOVING) and kind == "dir":
            remove_tree(os.path.join(lanes_dir, name))


def _gaps_in_file(lane: int, path: str) -> List[LedgerEntry]:
    """Every readable gap record of a segment file (none when it is gone or unreadable)."""
    keyed, records = records_of(path)  # damage is stepped over: the drainer recorded it
    return [LedgerEntry.of(lane, rec, keyed) for rec in records if rec.kind == Kind.GAP]


def _replaced(tail: Optional[Tuple[str, int]]) -> bool:
    """True when the segment a batch ended in now holds another file (its header differs)."""
    if tail is None:
        return False
    try:
        header = decode_header(read_regular(tail[0], HEADER_SIZE))
    except OSError:  # unlinked since (drop_oldest): the lane itself is checked by origin
        return False
    return not isinstance(header, str) and header.created_ns != tail[1]


def _segment_for(bases: List[int], seq: int) -> int:
    """Base of the segment that holds ``seq`` (the first one if ``seq`` precedes them all)."""
    best = bases[0]
    for base in bases:
        if base <= seq:
            best = base
        else:
            break
    return best
