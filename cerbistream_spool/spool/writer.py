"""SpoolWriter: appends records to this process's lane (docs/FORMAT.md §7).

The writer holds the append lock, the sequence and hash chain, the lane, the
markers (open, close and gap records) and fork handling; the roles it runs:

- spool/segment_file.py: the active segment (create, write a frame, cut back a
  failed write, seal; rotation is seal then create);
- spool/capacity.py: the cross-lane size cap and the overflow policy
  (``DropOldest``, ``DropNewest``, ``Block``), chosen once here;
- spool/commit.py: the commit policy (``GroupCommit``, ``IntervalFlush``,
  ``NoSync``), its watermarks and thread, chosen once here.

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

Waiting for space (``Block``) happens outside the lock: the appender releases
it, waits, and takes it again to re-check, so a marker (``append_marker``), a
``close`` or another thread's append never waits behind it.

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
import threading
import time
import weakref
from typing import Any, Dict, List, Optional, Tuple

from cerbistream_spool.errors import SpoolClosedError, SpoolError, SpoolFullError
from cerbistream_spool.spool.capacity import Capacity, lose_range
from cerbistream_spool.spool.chain import Chain
from cerbistream_spool.spool.commit import Durability
from cerbistream_spool.spool.config import SpoolConfig
from cerbistream_spool.spool.cursor import Cursor, ensure_cursor, load_cursor
from cerbistream_spool.spool.fsio import current, ensure_dir, fsync_dir, identity
from cerbistream_spool.spool.inventory import Depth, Inventory, take_inventory
from cerbistream_spool.spool.lanes import acquire_lane, lane_dir
from cerbistream_spool.spool.markers import Gap, GapReason, close_body, open_body
from cerbistream_spool.spool.record import Kind, encode_body, encode_record
from cerbistream_spool.spool.recovery import recover_lane
from cerbistream_spool.spool.segment_file import SegmentFile
from cerbistream_spool.spool.segments import FLAG_KEYED, HEADER_SIZE

__all__ = ["SpoolWriter", "forget_inherited_lock"]

_EVENT = int(Kind.EVENT)
_time_ns = time.time_ns
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
        self._commit = Durability(
            self.config.commit_policy(), self._active_fd, self._idle_check, self._fsync_report
        )
        self._always = self._commit.policy.waits
        self._await_durable = self._commit.await_durable
        self._seg = SegmentFile(self._commit, FLAG_KEYED if self._chain.keyed else 0, self._sealed)
        self._cap = Capacity(
            self.spool_dir,
            self.config.max_spool_bytes,
            self._seg,
            self._write_gap,
            self._owe_gap_record,
            self._lose_range,
        )
        self._overflow = self.config.overflow_policy()
        self._max_spool = self.config.max_spool_bytes
        self._max_segment = self.config.segment_max_bytes
        self._max_age_ns = int(self.config.segment_max_age_s * 1e9)
        self._lock = threading.Lock()
        self._closed = False
        self._dropped = 0  # events never written (size cap, write errors)
        self._lost = 0  # events written, then gone undelivered (drop_oldest, vanished files)
        self._events = 0  # events written by this writer
        self._prior_events = 0  # ... of them into lanes that have vanished since
        self._prior_delivered = 0  # ... of those, delivered before they vanished
        self._unrecorded: Dict[str, List[Any]] = {}  # reason -> [count, detail]: gaps owed
        self._owed_gaps: List[Gap] = []  # gaps with a range owed (drop_oldest on a full disk)
        self._dropped_unrecorded = 0  # the counts above + 1 per owed range (the hot path tests it)
        self._last_error: Optional[str] = None
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
        self._commit.start(f"cerbispool-flush-{self.lane}")

    # -- watermarks (the commit policy's) ---------------------------------------------

    @property
    def _accepted(self) -> int:
        return self._commit.accepted

    @property
    def _durable(self) -> int:
        return self._commit.durable

    # -- open -----------------------------------------------------------------

    def _open_lane(self) -> None:
        """Recover the lane, then write its open record (caller holds ``self._lock``)."""
        self._dir = lane_dir(self.spool_dir, self.lane)
        state = recover_lane(self.spool_dir, self.lane)
        self.recovery_notes: List[str] = state.notes
        self._next_seq = state.next_seq
        self._last_hash = state.last_hash
        seg, cap = self._seg, self._cap
        seg.move_to(self._dir, self.lane)
        cap.move_to(self._dir, self.lane, state.sealed)
        self._commit.accepted = self._commit.durable = self._next_seq - 1
        self._markers: List[int] = []  # seqs of the marker/gap records written by this writer
        self._lost_ranges: List[Tuple[int, int]] = []  # seq ranges of ours that drop_oldest removed
        self._last_acked = 0
        if state.active is not None:
            base, path, header, size = state.active
            if header.flags != seg.flags and size > HEADER_SIZE:
                # signing changed (key set or removed): the segment stays as it was signed,
                # new records start a segment whose header says how they are chained
                cap.sealed.append((base, path, size))
            elif header.flags == seg.flags and (size > HEADER_SIZE or base == self._next_seq):
                seg.reopen(base, path, header.created_ns, size, self._next_seq)
            else:  # an empty segment whose base or signing no longer fits the chain
                current().unlink(path)
                fsync_dir(self._dir)
        cap.refresh_sizes(force=True)
        if seg.fd is None:
            self._new_segment()
        self._dir_id = identity(self._dir)
        with contextlib.suppress(OSError):  # the blocks every ack writes in place, taken now
            ensure_cursor(self._dir, self.lane)
        for gap in state.gaps:
            self._write(Kind.GAP, gap.encode())
        self._write(Kind.OPEN, open_body(state.clean, state.truncated_bytes, state.notes))
        self._first_seq = self._next_seq  # the first seq this writer can give an event
        self._commit.sync()

    # -- public API -------------------------------------------------------------

    def append(self, event: Any) -> int:
        """Append one event (any msgpack-able value); returns its sequence number."""
        return self.append_body(encode_body(event))

    def append_body(self, body: bytes, kind: int = _EVENT) -> int:
        """Append an already msgpack-encoded body; returns its sequence number.

        A marker (``kind`` other than an event) is never refused nor made to wait
        for space, as with :meth:`append_marker`.
        """
        deadline: Optional[float] = None
        while True:
            if deadline is not None:
                self._cap.wait_for_space()  # Block: outside the lock
            with self._lock:
                if self._closed:
                    raise SpoolClosedError(
                        "spool writer was inherited from the parent process"
                        if self._inherited
                        else "spool writer is closed"
                    )
                try:
                    if (
                        self._cap.fixed_bytes + self._seg.size + len(body) + 128 > self._max_spool
                        and kind == _EVENT  # markers (gaps) are small and must not be refused
                    ):
                        deadline = self._make_room(len(body) + 128, deadline)
                        if deadline is not None:
                            continue  # wait for space, the lock released
                    if self._dropped_unrecorded:
                        self._write_pending_gap()
                    seq = self._write(int(kind), body)
                except OSError as exc:
                    seq = self._write_after_failure(exc, kind, body)
                if kind == _EVENT:
                    self._events += 1
            break
        if self._always:
            self._await_durable(seq)
        return seq

    def append_marker(self, kind: int, body: bytes) -> int:
        """Append a marker record (e.g. a gap, docs/FORMAT.md §4); returns its sequence number.

        Never waits for space nor for an appender waiting for space (``Block``): a
        marker may overshoot ``max_spool_bytes`` by its own size. Waits for its
        fsync under ``GroupCommit`` like any record.
        """
        if int(kind) == _EVENT:
            raise ValueError("append_marker writes markers; append events with append()")
        return self.append_body(body, int(kind))

    def _write_after_failure(self, exc: OSError, kind: int, body: bytes) -> int:
        """A write failed: on a full disk the overflow policy may free space (``DropOldest``
        drops the oldest sealed segment, counted, a gap record): write again; else count
        the drop and raise (caller holds ``self._lock``)."""
        if kind == _EVENT and exc.errno in _DISK_FULL and not self._adrift:
            try:
                if self._overflow.on_disk_full(self._cap):
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
        self._commit.sync()

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
            self._closed = self._commit.closed = True
            try:
                self._check_lane(_time_ns())  # the close record goes where the spool is now
                self._write_pending_gap()
                self._write(Kind.CLOSE, close_body())
            except (OSError, SpoolError) as exc:
                self._last_error = f"close marker not written: {exc}"
        self._cap.notify_space()  # an appender waiting for space sees the writer closed
        self._commit.stop()
        try:
            self._commit.sync()
        finally:
            with self._commit.cond:
                fd, self._seg.fd = self._seg.fd, None
            if fd is not None:
                current().close(fd)
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
        seg = self._seg
        if seg.records and (
            seg.size + len(body) + 128 > self._max_segment
            or now - seg.created_ns > self._max_age_ns
        ):
            self._rotate()
        if seg.fd is None:
            if self._adrift:
                self._reopen_vanished()
            else:
                self._new_segment()
        seq = self._next_seq
        frame, digest = encode_record(seq, kind, now, self._last_hash, body, self._chain)
        try:
            seg.write(frame)
        except OSError as exc:
            self._last_error = f"write failed: {exc}"
            seg.cut_back()
            raise
        if self._last_error is not None:
            self._clear_error("write failed")
        self._next_seq = seq + 1
        self._last_hash = digest
        self._commit.accepted = seq
        if kind != _EVENT:
            self._markers.append(seq)  # not events: stats() leaves them out of pending_records
        return seq

    def _write_gap(self, gap: Gap) -> None:
        self._write(Kind.GAP, gap.encode())

    def _rotate(self) -> None:
        self._seg.seal(fsync=True)
        if self._lane_gone():
            self._reopen_vanished()
            return
        self._new_segment()

    def _new_segment(self) -> None:
        self._seg.create(self._next_seq, self._last_hash)
        self._cap.refresh_sizes(force=True)

    def _sealed(self, base: int, path: str, size: int) -> None:
        """The active segment was sealed: the size cap counts it as fixed."""
        self._cap.add_sealed(base, path, size)

    def _active_fd(self) -> Optional[int]:
        return self._seg.fd

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

    def _idle_check(self) -> None:
        """The flusher's round: an idle app notices a vanished spool too."""
        with self._lock:
            if not self._closed:
                self._check_lane(_time_ns())

    def _lane_gone(self) -> bool:
        """True when the active segment was unlinked or the lane directory replaced."""
        fd = self._seg.fd
        try:
            if fd is not None and current().fstat(fd).st_nlink == 0:
                return True
            return identity(self._dir) != self._dir_id
        except OSError:
            return True

    def _reopen_vanished(self) -> None:
        """Count what went with the old files as lost, take a fresh lane, owe a gap."""
        old_lane, last = self.lane, self._accepted
        first = max(self._first_seq, self._last_acked + 1)
        lane_events = self._events - self._prior_events
        delivered = self._delivered_events(self._last_acked)
        lost = max(0, lane_events - delivered - self._lost_events(last))
        commit = self._commit
        with commit.cond:
            while commit.syncing:
                commit.cond.wait()
            fd, self._seg.fd = self._seg.fd, None
            if commit.durable < commit.accepted:
                commit.failed = (commit.accepted, "the spool directory vanished before fsync")
            commit.cond.notify_all()
        if fd is not None:
            current().close(fd)
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

    # -- size cap (caller holds self._lock) ---------------------------------------------

    def _lane_bytes(self) -> int:
        return self._cap.lane_bytes()

    def _make_room(self, need: int, deadline: Optional[float]) -> Optional[float]:
        """Make room under the overflow policy; the deadline to wait until, else None.

        None: there is room now. A deadline (``Block``): the caller waits outside
        the lock and calls again with it. No room and no wait: the event is
        refused (counted, a gap owed, :class:`SpoolFullError`).
        """
        cap = self._cap
        cap.refresh_sizes(force=deadline is not None)
        if not cap.over_cap(need):
            return None
        policy = self._overflow
        wait_until = policy.make_room(cap, need, deadline)
        if not cap.over_cap(need):
            return None
        if wait_until is not None:
            return wait_until
        self._dropped += 1
        self._owe_gap(GapReason.OVERFLOW, 1, f"{policy.name}: max_spool_bytes reached")
        raise SpoolFullError(
            f"spool {self.spool_dir} is full ({self.config.max_spool_bytes} bytes); record dropped"
        )

    def _lose_range(self, lo: int, hi: int) -> None:
        """Count the events of ``lo..hi`` not counted before as lost (caller locks)."""
        self._lost += lose_range(self._lost_ranges, lo, hi, self._events_between)

    def _owe_gap(self, reason: str, count: int, detail: str) -> None:
        """Remember ``count`` lost events for the next gap record (caller locks)."""
        if count <= 0:
            return
        owed = self._unrecorded.setdefault(reason, [0, detail])
        owed[0] += count
        owed[1] = detail
        self._dropped_unrecorded += count

    def _owe_gap_record(self, gap: Gap) -> None:
        """Owe ``gap`` as it is, its range kept, for the next record (caller locks)."""
        if gap.first_seq is None:
            self._owe_gap(str(gap.reason), gap.count, gap.detail)
            return
        self._owed_gaps.append(gap)
        self._dropped_unrecorded += gap.count + 1

    def _write_pending_gap(self) -> None:
        """The owed gaps with a range, then one gap record per reason owed; each stays
        owed until it is written."""
        while self._owed_gaps:
            gap = self._owed_gaps[0]
            self._write(Kind.GAP, gap.encode())
            self._owed_gaps.pop(0)
            self._dropped_unrecorded -= gap.count + 1
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
        self._cap.notify_space()

    # -- errors -------------------------------------------------------------------------

    def _fsync_report(self, error: Optional[str]) -> None:
        """The commit thread's fsync failed (``error``) or succeeded (None)."""
        if error is None:
            self._clear_error("fsync failed")
        else:
            self._last_error = error

    def _clear_error(self, prefix: str) -> None:
        """Forget ``last_error`` once the condition it names has ended."""
        error = self._last_error
        if error is not None and error.startswith(prefix):
            self._last_error = None

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
        self._commit.after_fork()
        self._closed = self._inherited = True
        fd, self._seg.fd = self._seg.fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                current().close(fd)
        forget_inherited_lock(self._lane_lock)


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
        current().close(fd)  # filelock's descriptor, closed without unlocking
    context.lock_file_fd = None
    if hasattr(context, "lock_counter"):
        context.lock_counter = 0


def _forget_writers_in_child() -> None:
    for writer in list(_WRITERS):
        writer._forget_after_fork()


if hasattr(os, "register_at_fork"):  # POSIX: a child opens a lane of its own
    os.register_at_fork(after_in_child=_forget_writers_in_child)
