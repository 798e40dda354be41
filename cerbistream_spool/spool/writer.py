"""SpoolWriter: appends records to this process's lane (docs/FORMAT.md §7).

Order of operations (docs/FORMAT.md §7: nothing is unlinked before what replaces it is durable):

- rotate: fsync + close the old segment → create the new one (header, fsync
  file, fsync directory) → only then write records into it;
- append: frame → one ``write`` (the record is in the OS when ``append``
  returns, in every fsync mode) → fsync per mode;
- a failed write is cut back with ``ftruncate`` so no torn frame is left in the
  middle of a segment; the next append tries again.

Watermarks (sequence numbers of this lane): ``accepted`` (written to the OS),
``durable`` (fsynced). ``delivered`` belongs to the reader's cursor.

Counts (events of this writer, never markers): ``events`` written, ``dropped``
(never written: size cap refused, write failed), ``lost`` (written, then gone
undelivered: ``drop_oldest``, the lane's files vanished). Every drop is a gap
record as soon as a write succeeds again (``note_loss`` adds drops counted
elsewhere, e.g. by the handler).

Fork: a forked child never writes through a writer it inherited; the
``after_in_child`` hook closes its descriptors without unlocking the lane (an
``flock`` is shared with the parent) and marks it closed.

Vanished directory: at most every ``_CHECK_NS`` (a clock compare on the append
path) and at rotation, the active segment's link count and the lane
directory's inode are checked; when the files are gone the writer takes a
fresh lane and writes a ``vanished`` gap counting the undelivered events.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import os
import sys
import threading
import time
import weakref
from typing import Any, Dict, List, Optional, Tuple

from cerbistream_spool.errors import SpoolClosedError, SpoolError, SpoolFullError
from cerbistream_spool.spool.chain import Chain
from cerbistream_spool.spool.config import SpoolConfig
from cerbistream_spool.spool.cursor import Cursor, ensure_cursor, load_cursor
from cerbistream_spool.spool.fsio import ensure_dir, file_size, fsync_dir, write_all
from cerbistream_spool.spool.inventory import Depth, Inventory, take_inventory
from cerbistream_spool.spool.lanes import acquire_lane, lane_dir, list_lanes, unlink_unpinned
from cerbistream_spool.spool.markers import Gap, GapReason, close_body, open_body
from cerbistream_spool.spool.record import Kind, encode_body, encode_record
from cerbistream_spool.spool.recovery import recover_lane
from cerbistream_spool.spool.segments import (
    FLAG_KEYED,
    HEADER_SIZE,
    SegmentHeader,
    create_segment,
    list_segments,
)

__all__ = ["SpoolWriter", "forget_inherited_lock"]

_EVENT = int(Kind.EVENT)
_time_ns = time.time_ns
_REFRESH_MIN_S = 0.05  # at most one directory walk per 50 ms while over the size cap
_COMMITTER_CHECK_S = 1.0  # how often a waiting appender checks that the committer lives
_CHECK_NS = 100_000_000  # how often (at most) the append path checks the lane's files still exist
_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
_WRITERS: weakref.WeakSet[SpoolWriter] = weakref.WeakSet()


class SpoolWriter:
    """Appends records to one lane of a spool directory; thread-safe.

    ``append(event) -> seq`` returns once the record is in the OS; with
    ``fsync="always"`` once it is on disk (group commit across threads).
    """

    def __init__(self, spool_dir: str, config: Optional[SpoolConfig] = None) -> None:
        self.config = config or SpoolConfig()
        self.spool_dir = os.path.abspath(spool_dir)
        self._chain = Chain(self.config.resolved_key())
        self._flags = FLAG_KEYED if self._chain.keyed else 0
        self._always = self.config.fsync == "always"
        self._max_spool = self.config.max_spool_bytes
        self._max_segment = self.config.segment_max_bytes
        self._max_age_ns = int(self.config.segment_max_age_s * 1e9)
        self._lock = threading.Lock()
        sync_lock = threading.Lock()
        self._sync_cond = threading.Condition(sync_lock)  # durability waiters
        self._work = threading.Condition(sync_lock)  # the committer waits here
        self._syncing = False
        self._failed: Tuple[int, str] = (0, "")  # (last seq of a failed fsync, error)
        self._space = threading.Event()
        self._closed = False
        self._fd: Optional[int] = None
        self._dropped = 0  # events never written (size cap, write errors)
        self._lost = 0  # events written, then gone undelivered (drop_oldest, vanished files)
        self._events = 0  # events written by this writer
        self._prior_events = 0  # ... of them into lanes that have vanished since
        self._prior_delivered = 0  # ... of those, delivered before they vanished
        self._unrecorded: Dict[str, List[Any]] = {}  # reason -> [count, detail]: gaps owed
        self._dropped_unrecorded = 0  # sum of the counts above (the hot path tests this)
        self._last_error: Optional[str] = None
        self._last_refresh = 0.0
        self._check_at = 0
        self._adrift = False  # the lane's files vanished and no new lane is open yet
        self._inherited = False
        ensure_dir(self.spool_dir)
        self.lane, self._lane_lock = acquire_lane(self.spool_dir, self.config.max_lanes)
        _WRITERS.add(self)  # from here on a fork forgets this writer in the child
        try:
            with self._lock:
                self._open_lane()
        except BaseException:
            self._release()
            raise
        self._stop = threading.Event()
        self._flusher: Optional[threading.Thread] = None
        if self.config.fsync != "never":
            loop = self._commit_loop if self._always else self._flush_loop
            self._flusher = threading.Thread(
                target=loop, name=f"cerbispool-flush-{self.lane}", daemon=True
            )
            self._flusher.start()

    # -- open -----------------------------------------------------------------

    def _open_lane(self) -> None:
        """Recover the lane, then write its open record (caller holds ``self._lock``)."""
        self._dir = lane_dir(self.spool_dir, self.lane)
        state = recover_lane(self.spool_dir, self.lane)
        self.recovery_notes: List[str] = state.notes
        self._next_seq = state.next_seq
        self._last_hash = state.last_hash
        self._sealed: List[Tuple[int, str, int]] = state.sealed
        self._other_bytes = 0
        self._fixed_bytes = 0  # other lanes + our sealed segments; the active one is _seg_size
        self._accepted = self._durable = self._next_seq - 1
        self._seg_records = self._seg_size = self._seg_base = self._seg_created_ns = 0
        self._seg_path = ""
        self._markers: List[int] = []  # seqs of the marker/gap records written by this writer
        self._lost_ranges: List[Tuple[int, int]] = []  # seq ranges of ours that drop_oldest removed
        self._last_acked = 0
        if state.active is not None:
            base, path, header, size = state.active
            if header.flags != self._flags and size > HEADER_SIZE:
                # signing changed (key set or removed): the segment stays as it was signed,
                # new records start a segment whose header says how they are chained
                self._sealed.append((base, path, size))
            elif header.flags == self._flags and (size > HEADER_SIZE or base == self._next_seq):
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
                self._seg_base, self._seg_path, self._seg_size = base, path, size
                self._seg_created_ns = header.created_ns
                self._seg_records = 1 if base < self._next_seq else 0
            else:  # an empty segment whose base or signing no longer fits the chain
                os.unlink(path)
                fsync_dir(self._dir)
        self._refresh_sizes(force=True)
        if self._fd is None:
            self._new_segment()
        self._dir_id = _inode(self._dir)
        with contextlib.suppress(OSError):  # the blocks every ack writes in place, taken now
            ensure_cursor(self._dir, self.lane)
        for gap in state.gaps:
            self._write(Kind.GAP, gap.encode())
        self._write(Kind.OPEN, open_body(state.clean, state.truncated_bytes, state.notes))
        self._first_seq = self._next_seq  # the first seq this writer can give an event
        self._sync()

    # -- public API -------------------------------------------------------------

    def append(self, event: Any) -> int:
        """Append one event (any msgpack-able value); returns its sequence number."""
        return self.append_body(encode_body(event))

    def append_body(self, body: bytes, kind: int = _EVENT) -> int:
        """Append an already msgpack-encoded body; returns its sequence number."""
        with self._lock:
            if self._closed:
                raise SpoolClosedError(
                    "spool writer was inherited from the parent process"
                    if self._inherited
                    else "spool writer is closed"
                )
            try:
                if (
                    self._fixed_bytes + self._seg_size + len(body) + 128 > self._max_spool
                    and kind == _EVENT  # markers (gaps) are small and must not be refused
                ):
                    self._make_room(len(body) + 128)
                if self._dropped_unrecorded:
                    self._write_pending_gap()
                seq = self._write(int(kind), body)
            except OSError as exc:
                seq = self._write_after_failure(exc, kind, body)
            if kind == _EVENT:
                self._events += 1
        if self._always:
            self._await_durable(seq)
        return seq

    def _write_after_failure(self, exc: OSError, kind: int, body: bytes) -> int:
        """A write failed: with ``drop_oldest`` and a full disk, free space by dropping the
        oldest sealed segment (counted, a gap record) and write again; else count the drop
        and raise (caller holds ``self._lock``)."""
        if (
            kind == _EVENT
            and exc.errno in _DISK_FULL
            and self.config.overflow == "drop_oldest"
            and not self._adrift
        ):
            try:
                self._refresh_sizes(force=True)
                if self._drop_oldest(0, at_least_one=True):
                    if self._dropped_unrecorded:
                        self._write_pending_gap()
                    return self._write(int(kind), body)
            except OSError as again:
                exc = again
        if kind == _EVENT:
            self._dropped += 1
            self._owe_gap(GapReason.WRITE_ERROR, 1, f"write failed: {exc}")
        raise exc

    def flush(self) -> None:
        """Return once every record accepted so far is fsynced."""
        self._sync()

    def note_loss(self, reason: str, count: int, detail: str) -> None:
        """Owe a gap record for ``count`` events dropped before reaching this writer.

        The caller counts them; the gap is written before the next record (or the
        close record).
        """
        if count <= 0:
            return
        with self._lock:
            self._owe_gap(reason, count, detail)

    def close(self) -> None:
        """Write the clean-close marker, fsync, stop the flusher, release the lane."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._check_lane(_time_ns())  # the close record goes where the spool is now
                self._write_pending_gap()
                self._write(Kind.CLOSE, close_body())
            except (OSError, SpoolError) as exc:
                self._last_error = f"close marker not written: {exc}"
        self._stop_flusher()
        try:
            self._sync()
        finally:
            with self._sync_cond:
                fd, self._fd = self._fd, None
            if fd is not None:
                os.close(fd)
            self._release()

    def stats(self, inventory: Optional[Inventory] = None) -> Dict[str, Any]:
        """Watermarks and counters of this lane; its cursor and size on disk come from
        ``inventory`` when it holds the lane, else from one taken now (spool/inventory.py)."""
        with self._lock:
            lane, lane_dir_now = self.lane, self._dir
        found = inventory.lane(lane) if inventory is not None else None
        if found is None:
            found = take_inventory(self.spool_dir, Depth.SIZES, (lane,)).lane(lane)
        with self._lock:
            current = self.lane == lane and self._dir == lane_dir_now
            if found is not None and isinstance(found.cursor, Cursor) and current:
                self._last_acked = max(self._last_acked, found.cursor.acked_seq)
            delivered = self._last_acked
            lane_events = self._events - self._prior_events
            delivered_events = self._delivered_events(delivered)
            lost_here = self._lost_events(self._accepted)
            pending = max(0, lane_events - delivered_events - lost_here)
            return {
                "lane": self.lane,
                "accepted": self._accepted,
                "durable": self._durable,
                "delivered": delivered,
                "pending_records": pending,
                # an upper bound: the lane's bytes on disk, delivered records not yet unlinked
                "pending_bytes": (found.bytes if found and current else self._lane_bytes())
                if pending
                else 0,
                "dropped": self._dropped,
                "lost": self._lost,
                "events": self._events,
                "events_durable": self._prior_events + self._events_between(1, self._durable),
                "events_delivered": self._prior_delivered + delivered_events,
                "last_error": self._last_error,
            }

    def _events_between(self, lo: int, hi: int) -> int:
        """Events of this writer with ``lo <= seq <= hi`` in the current lane (caller locks)."""
        lo = max(lo, self._first_seq)
        hi = min(hi, self._accepted)
        if hi < lo:
            return 0
        markers = bisect.bisect_right(self._markers, hi) - bisect.bisect_left(self._markers, lo)
        return hi - lo + 1 - markers

    def _lost_events(self, upto: int) -> int:
        """Events of the current lane up to ``upto`` that drop_oldest removed (caller locks)."""
        return sum(self._events_between(lo, min(hi, upto)) for lo, hi in self._lost_ranges)

    def _delivered_events(self, acked: int) -> int:
        """Events of the current lane the cursor has passed, less those removed unsent."""
        return self._events_between(1, acked) - self._lost_events(acked)

    @property
    def closed(self) -> bool:
        """True after close()."""
        return self._closed

    def __enter__(self) -> SpoolWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- append path (caller holds self._lock) ------------------------------------

    def _write(self, kind: int, body: bytes) -> int:
        """Frame and write one record (the hot path: keep it flat)."""
        now = _time_ns()
        if now > self._check_at:
            self._check_lane(now)
        if self._seg_records and (
            self._seg_size + len(body) + 128 > self._max_segment
            or now - self._seg_created_ns > self._max_age_ns
        ):
            self._rotate()
        fd = self._fd
        if fd is None:
            if self._adrift:
                self._reopen_vanished()
            else:
                self._new_segment()
            fd = self._fd
            assert fd is not None
        seq = self._next_seq
        frame, digest = encode_record(seq, kind, now, self._last_hash, body, self._chain)
        try:
            written = os.write(fd, frame)
            if written != len(frame):  # a short write is legal: finish it
                write_all(fd, frame[written:])
        except OSError as exc:
            self._last_error = f"write failed: {exc}"
            self._cut_back()
            raise
        if self._last_error is not None:
            self._clear_error("write failed")
        self._next_seq = seq + 1
        self._last_hash = digest
        self._seg_size += len(frame)
        self._seg_records += 1
        self._accepted = seq
        if kind != _EVENT:
            self._markers.append(seq)  # not events: stats() leaves them out of pending_records
        return seq

    def _cut_back(self) -> None:
        """Remove a partially written frame; if that fails, abandon the segment."""
        try:
            assert self._fd is not None
            os.ftruncate(self._fd, self._seg_size)
        except OSError:
            self._seal(fsync=False)

    def _rotate(self) -> None:
        self._seal(fsync=True)
        if self._lane_gone():
            self._reopen_vanished()
            return
        self._new_segment()

    # -- vanished spool directory (caller holds self._lock) ----------------------------

    def _check_lane(self, now: int) -> None:
        self._check_at = now + _CHECK_NS
        if self._adrift or self._lane_gone():
            self._reopen_vanished()
            return
        try:  # what is delivered stays known should the files vanish later
            cursor = load_cursor(self._dir, self.lane)
        except OSError:
            return
        if cursor is not None and cursor.acked_seq > self._last_acked:
            self._last_acked = cursor.acked_seq

    def _lane_gone(self) -> bool:
        """True when the active segment was unlinked or the lane directory replaced."""
        fd = self._fd
        try:
            if fd is not None and os.fstat(fd).st_nlink == 0:
                return True
            return _inode(self._dir) != self._dir_id
        except OSError:
            return True

    def _reopen_vanished(self) -> None:
        """Count what went with the old files as lost, take a fresh lane, owe a gap."""
        old_lane, last = self.lane, self._accepted
        first = max(self._first_seq, self._last_acked + 1)
        lane_events = self._events - self._prior_events
        delivered = self._delivered_events(self._last_acked)
        lost = max(0, lane_events - delivered - self._lost_events(last))
        with self._sync_cond:
            while self._syncing:
                self._sync_cond.wait()
            fd, self._fd = self._fd, None
            if self._durable < self._accepted:
                self._failed = (self._accepted, "the spool directory vanished before fsync")
            self._sync_cond.notify_all()
        if fd is not None:
            os.close(fd)
        self._adrift = True
        self._prior_events = self._events
        self._prior_delivered += delivered
        self._lost += lost
        self._owe_gap(
            GapReason.VANISHED,
            lost,
            f"lane {old_lane} seq {first}..{last}: files removed before delivery",
        )
        self._release()
        self._check_at = _time_ns() + _CHECK_NS
        ensure_dir(self.spool_dir)
        self.lane, self._lane_lock = acquire_lane(self.spool_dir, self.config.max_lanes)
        self._open_lane()
        self._adrift = False
        self._last_error = f"spool files of lane {old_lane} vanished; now on lane {self.lane}"
        self._write_pending_gap()

    def _seal(self, fsync: bool) -> None:
        with self._sync_cond:
            while self._syncing:
                self._sync_cond.wait()
            fd, self._fd = self._fd, None
            try:
                if fd is not None and fsync:
                    os.fsync(fd)
                    self._durable = self._accepted
            finally:
                if fd is not None:
                    os.close(fd)
                    self._sealed.append((self._seg_base, self._seg_path, self._seg_size))
                    self._fixed_bytes += self._seg_size
                    if self._durable < self._accepted:  # waiters must not wait for this fd
                        self._failed = (self._accepted, "segment closed before it was fsynced")
                self._sync_cond.notify_all()

    def _new_segment(self) -> None:
        header = SegmentHeader(
            self.lane, self._next_seq, time.time_ns(), self._last_hash, self._flags
        )
        fd, path = create_segment(self._dir, header)
        with self._sync_cond:
            self._fd = fd
        self._seg_base, self._seg_path = self._next_seq, path
        self._seg_size, self._seg_records, self._seg_created_ns = HEADER_SIZE, 0, header.created_ns
        self._refresh_sizes(force=True)

    # -- size cap -------------------------------------------------------------------

    def _lane_bytes(self) -> int:
        return self._fixed_bytes - self._other_bytes + (self._seg_size if self._fd else 0)

    def _refresh_sizes(self, force: bool = False) -> None:
        """Re-read segment sizes (the drainer deletes acked segments); rate-limited."""
        now = time.monotonic()
        if not force and now - self._last_refresh < _REFRESH_MIN_S:
            return
        self._last_refresh = now
        active = self._seg_path if self._fd is not None else None
        self._sealed = [
            (base, path, file_size(path))
            for base, path in list_segments(self._dir)
            if path != active
        ]
        self._other_bytes = sum(
            file_size(path)
            for lane in list_lanes(self.spool_dir)
            if lane != self.lane
            for _, path in list_segments(lane_dir(self.spool_dir, lane))
        )
        self._fixed_bytes = self._other_bytes + sum(size for _, _, size in self._sealed)

    def _over_cap(self, need: int) -> bool:
        return self._fixed_bytes + self._seg_size + need > self._max_spool

    def _make_room(self, need: int) -> None:
        self._refresh_sizes()
        if not self._over_cap(need):
            return
        policy = self.config.overflow
        if policy == "drop_oldest":
            self._drop_oldest(need)
            if not self._over_cap(need):
                return
        elif policy == "block":
            deadline = time.monotonic() + self.config.block_timeout_s
            while self._over_cap(need) and time.monotonic() < deadline:
                self._space.wait(_REFRESH_MIN_S)
                self._space.clear()
                self._refresh_sizes(force=True)
            if not self._over_cap(need):
                return
        self._dropped += 1
        self._owe_gap(GapReason.OVERFLOW, 1, f"{policy}: max_spool_bytes reached")
        raise SpoolFullError(
            f"spool {self.spool_dir} is full ({self.config.max_spool_bytes} bytes); record dropped"
        )

    def _drop_oldest(self, need: int, at_least_one: bool = False) -> bool:
        """Unlink our oldest sealed segments a drainer does not have in flight; True if any.

        A segment a drainer pinned (its records are being sent, spool/lanes.py) is
        skipped and the next oldest goes instead: no event is both lost and
        delivered. The gap records run from the cursor on (less the pinned
        segments), so they stay true even when an earlier gap record was itself in
        a dropped segment.
        """
        cursor = load_cursor(self._dir, self.lane)
        acked = cursor.acked_seq if cursor else 0
        cursor_now = [acked]

        def reread_cursor() -> None:  # a drainer may have acked it just before our lock
            fresh = load_cursor(self._dir, self.lane)
            cursor_now[0] = max(cursor_now[0], fresh.acked_seq if fresh else 0)

        dropped_to = 0
        kept: List[Tuple[int, int]] = []  # seq ranges of pinned segments
        idx = 0
        while idx < len(self._sealed) and (
            self._over_cap(need) or (at_least_one and not dropped_to)
        ):
            base, path, size = self._sealed[idx]
            last = (
                self._sealed[idx + 1][0] - 1 if idx + 1 < len(self._sealed) else self._seg_base - 1
            )
            done = unlink_unpinned(path, locked=reread_cursor)
            if done is False:  # in flight to the broker: it stays
                kept.append((base, last))
                idx += 1
                continue
            del self._sealed[idx]
            self._fixed_bytes -= size
            acked = max(acked, cursor_now[0])
            if done and last > acked:
                self._lose_range(max(base, acked + 1), last)
                dropped_to = last
        fsync_dir(self._dir)
        if not dropped_to:
            return False
        detail = "drop_oldest: " + (
            "the disk is full" if at_least_one else "max_spool_bytes reached"
        )
        lo = acked + 1
        for k_lo, k_hi in [*kept, (dropped_to + 1, dropped_to + 1)]:
            hi = min(k_lo - 1, dropped_to)
            if hi >= lo:
                try:
                    self._write(Kind.GAP, Gap.span(GapReason.OVERFLOW, lo, hi, detail).encode())
                except OSError:  # still no room: the gap is owed (without its range)
                    self._owe_gap(GapReason.OVERFLOW, hi - lo + 1, f"{detail}: seq {lo}..{hi}")
            lo = max(lo, k_hi + 1)
        return True

    def _lose_range(self, lo: int, hi: int) -> None:
        """Count the events of ``lo..hi`` not counted before as lost (caller locks).

        ``_lost_ranges`` stays sorted, disjoint and merged: a segment kept while pinned
        and dropped later may span ranges already lost after it.
        """
        ranges = self._lost_ranges
        i = bisect.bisect_left(ranges, (lo, lo))
        if i and ranges[i - 1][1] >= lo - 1:
            i -= 1
        j, at = i, lo
        new_lo, new_hi = lo, hi
        while j < len(ranges) and ranges[j][0] <= hi + 1:
            r_lo, r_hi = ranges[j]
            if r_lo > at:
                self._lost += self._events_between(at, min(hi, r_lo - 1))
            at = max(at, r_hi + 1)
            new_lo, new_hi = min(new_lo, r_lo), max(new_hi, r_hi)
            j += 1
        if at <= hi:
            self._lost += self._events_between(at, hi)
        ranges[i:j] = [(new_lo, new_hi)]

    def _owe_gap(self, reason: str, count: int, detail: str) -> None:
        """Remember ``count`` lost events for the next gap record (caller locks)."""
        if count <= 0:
            return
        owed = self._unrecorded.setdefault(reason, [0, detail])
        owed[0] += count
        owed[1] = detail
        self._dropped_unrecorded += count

    def _write_pending_gap(self) -> None:
        """One gap record per reason owed; a reason stays owed until its gap is written."""
        while self._unrecorded:
            reason, (count, detail) = self._unrecorded.popitem()
            self._dropped_unrecorded -= count
            try:
                self._write(Kind.GAP, Gap(reason, count, detail).encode())
            except BaseException:
                self._owe_gap(reason, count, detail)
                raise

    def notify_space(self) -> None:
        """Space was freed (the drainer calls this after deleting): re-read sizes, wake waiters."""
        self._last_refresh = 0.0
        self._space.set()

    # -- durability -----------------------------------------------------------------

    def _sync(self, target: Optional[int] = None) -> None:
        """Group commit: one thread fsyncs for everyone waiting up to ``target``.

        When the last fsync covered several records (other threads are appending),
        the leader first gives them a moment (half the last fsync's duration, at
        most 1 ms) to write theirs, so one fsync serves the whole group.
        """
        with self._sync_cond:
            while True:
                goal = self._accepted if target is None else target
                if self._durable >= goal or self._fd is None:
                    return
                if not self._syncing:
                    self._syncing = True
                    break
                self._sync_cond.wait()
        with self._sync_cond:
            upto, fd = self._accepted, self._fd
        synced = False
        try:
            if fd is not None:
                os.fsync(fd)
            synced = True
        finally:
            with self._sync_cond:
                self._syncing = False
                if synced:
                    self._durable = max(self._durable, upto)
                else:
                    self._failed = (upto, f"fsync failed: {sys.exc_info()[1]}")
                self._sync_cond.notify_all()

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.config.fsync_interval_s):
            try:
                self._sync()
                with self._lock:  # an idle app notices a vanished spool too
                    if not self._closed:
                        self._check_lane(_time_ns())
            except OSError as exc:
                self._last_error = f"fsync failed: {exc}"
            else:
                self._clear_error("fsync failed")

    def _await_durable(self, seq: int) -> None:
        """``fsync="always"``: have the committer fsync, return once ``seq`` is on disk.

        Raises ``OSError`` when the fsync that covered ``seq`` failed (or its
        segment was closed unsynced), :class:`SpoolClosedError` after ``close``.
        """
        with self._sync_cond:
            while self._durable < seq:
                failed_upto, error = self._failed
                if failed_upto >= seq:
                    raise OSError(error)
                if self._fd is None and self._closed:
                    raise SpoolClosedError("spool writer closed before the record was synced")
                if not self._syncing:
                    self._work.notify()
                if not self._sync_cond.wait(_COMMITTER_CHECK_S) and not self._committer_alive():
                    break
            else:
                return
        self._sync(seq)  # the committer is gone (it never should be): sync here instead

    def _clear_error(self, prefix: str) -> None:
        """Forget ``last_error`` once the condition it names has ended."""
        error = self._last_error
        if error is not None and error.startswith(prefix):
            self._last_error = None

    def _committer_alive(self) -> bool:
        return self._flusher is not None and self._flusher.is_alive()

    def _commit_loop(self) -> None:
        """``fsync="always"``: one fsync after another while records wait (group commit).

        Appenders write, wake this thread and wait; each fsync covers every record
        written before it started, so while one runs the next group gathers.
        """
        while True:
            with self._sync_cond:
                while (
                    self._durable >= self._accepted
                    or self._failed[0] >= self._accepted
                    or self._fd is None
                ):
                    if self._stop.is_set():
                        return
                    self._work.wait()
            try:
                self._sync()
            except OSError as exc:  # _sync told the waiters; the next record retries
                self._last_error = f"fsync failed: {exc}"
            else:
                self._clear_error("fsync failed")

    def _stop_flusher(self) -> None:
        self._stop.set()
        with self._sync_cond:
            self._work.notify()
        if self._flusher is not None:
            self._flusher.join(timeout=5)

    def _release(self) -> None:
        if self._lane_lock.is_locked:
            self._lane_lock.release()

    # -- fork --------------------------------------------------------------------------

    def _forget_after_fork(self) -> None:
        """In a forked child: drop the parent's descriptors, never its lane lock.

        The lane lock is an ``flock`` on an open file description shared with the
        parent: unlocking it here would unlock the parent. Threads (flusher,
        committer) did not survive the fork, and the locks they or other parent
        threads held are replaced.
        """
        self._lock = threading.Lock()
        sync_lock = threading.Lock()
        self._sync_cond = threading.Condition(sync_lock)
        self._work = threading.Condition(sync_lock)
        self._syncing = False
        self._closed = self._inherited = True
        self._flusher = None
        self._stop = threading.Event()
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        forget_inherited_lock(self._lane_lock)


def _inode(path: str) -> Tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def forget_inherited_lock(lock: Any) -> None:
    """Close a lock's inherited descriptor without ``flock(LOCK_UN)``.

    filelock >= 4 does this itself at fork (``lock_file_fd`` is then None);
    older versions keep the descriptor, which would hold the parent's lock
    for as long as the child lives.
    """
    context = getattr(lock, "_context", None)
    fd = getattr(context, "lock_file_fd", None)
    if context is None or fd is None:
        return
    with contextlib.suppress(OSError):
        os.close(fd)
    context.lock_file_fd = None
    if hasattr(context, "lock_counter"):
        context.lock_counter = 0


def _forget_writers_in_child() -> None:
    for writer in list(_WRITERS):
        writer._forget_after_fork()


if hasattr(os, "register_at_fork"):  # POSIX: a child opens a lane of its own
    os.register_at_fork(after_in_child=_forget_writers_in_child)
