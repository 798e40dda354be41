"""SpoolWriter: appends records to this process's lane (docs/FORMAT.md §7).

Order of operations (DESIGN-NOTES lesson 2):

- rotate: fsync + close the old segment → create the new one (header, fsync
  file, fsync directory) → only then write records into it;
- append: frame → one ``write`` (the record is in the OS when ``append``
  returns, in every fsync mode) → fsync per mode;
- a failed write is cut back with ``ftruncate`` so no torn frame is left in the
  middle of a segment; the next append tries again.

Watermarks (sequence numbers of this lane): ``accepted`` (written to the OS),
``durable`` (fsynced). ``delivered`` belongs to the reader's cursor.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from cerbistream_spool.errors import SpoolClosedError, SpoolError, SpoolFullError
from cerbistream_spool.spool.chain import Chain
from cerbistream_spool.spool.config import SpoolConfig
from cerbistream_spool.spool.cursor import load_cursor
from cerbistream_spool.spool.fsio import ensure_dir, file_size, fsync_dir, write_all
from cerbistream_spool.spool.lanes import acquire_lane, lane_dir, list_lanes
from cerbistream_spool.spool.record import Kind, encode_body, encode_record
from cerbistream_spool.spool.recovery import recover_lane
from cerbistream_spool.spool.segments import (
    FLAG_KEYED,
    HEADER_SIZE,
    SegmentHeader,
    create_segment,
    list_segments,
)

__all__ = ["SpoolWriter"]

_EVENT = int(Kind.EVENT)
_time_ns = time.time_ns
_REFRESH_MIN_S = 0.05  # at most one directory walk per 50 ms while over the size cap
_COMMITTER_CHECK_S = 1.0  # how often a waiting appender checks that the committer lives


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
        self._dropped = 0
        self._dropped_unrecorded = 0
        self._last_error: Optional[str] = None
        self._last_refresh = 0.0
        ensure_dir(self.spool_dir)
        self.lane, self._lane_lock = acquire_lane(self.spool_dir, self.config.max_lanes)
        try:
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
        with self._lock:
            for gap in state.gaps:
                self._write(Kind.GAP, encode_body(gap))
            self._write(
                Kind.OPEN,
                encode_body(
                    {
                        "pid": os.getpid(),
                        "clean": state.clean,
                        "truncated_bytes": state.truncated_bytes,
                        "notes": state.notes,
                    }
                ),
            )
        self._sync()

    # -- public API -------------------------------------------------------------

    def append(self, event: Any) -> int:
        """Append one event (any msgpack-able value); returns its sequence number."""
        return self.append_body(encode_body(event))

    def append_body(self, body: bytes, kind: int = _EVENT) -> int:
        """Append an already msgpack-encoded body; returns its sequence number."""
        with self._lock:
            if self._closed:
                raise SpoolClosedError("spool writer is closed")
            if self._fixed_bytes + self._seg_size + len(body) + 128 > self._max_spool:
                self._make_room(len(body) + 128)
            if self._dropped_unrecorded:
                self._write_pending_gap()
            seq = self._write(int(kind), body)
        if self._always:
            self._await_durable(seq)
        return seq

    def flush(self) -> None:
        """Return once every record accepted so far is fsynced."""
        self._sync()

    def close(self) -> None:
        """Write the clean-close marker, fsync, stop the flusher, release the lane."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._write_pending_gap()
                self._write(Kind.CLOSE, encode_body({"pid": os.getpid()}))
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

    def stats(self) -> Dict[str, Any]:
        """Watermarks and counters of this lane."""
        cursor = load_cursor(self._dir, self.lane)
        delivered = cursor.acked_seq if cursor else 0
        with self._lock:
            pending = self._pending_events(delivered)
            return {
                "lane": self.lane,
                "accepted": self._accepted,
                "durable": self._durable,
                "delivered": delivered,
                "pending_records": pending,
                # an upper bound: the lane's bytes on disk, delivered records not yet unlinked
                "pending_bytes": self._lane_bytes() if pending else 0,
                "dropped": self._dropped,
                "last_error": self._last_error,
            }

    def _pending_events(self, delivered: int) -> int:
        """Records above ``delivered`` minus this writer's markers among them (caller locks).

        Markers written by earlier sessions of the lane (two per restart) are not
        known without a scan and still count; ``cerbispool status`` counts exactly.
        """
        self._markers = [seq for seq in self._markers if seq > delivered]
        return max(0, self._accepted - delivered - len(self._markers))

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
        seq = self._next_seq
        now = _time_ns()
        if self._seg_records and (
            self._seg_size + len(body) + 128 > self._max_segment
            or now - self._seg_created_ns > self._max_age_ns
        ):
            self._rotate()
        fd = self._fd
        if fd is None:
            self._new_segment()
            fd = self._fd
            assert fd is not None
        frame, digest = encode_record(seq, kind, now, self._last_hash, body, self._chain)
        try:
            written = os.write(fd, frame)
            if written != len(frame):  # a short write is legal: finish it
                write_all(fd, frame[written:])
        except OSError as exc:
            self._last_error = f"write failed: {exc}"
            self._cut_back()
            raise
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
        self._new_segment()

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
        self._dropped_unrecorded += 1
        raise SpoolFullError(
            f"spool {self.spool_dir} is full ({self.config.max_spool_bytes} bytes); record dropped"
        )

    def _drop_oldest(self, need: int) -> None:
        """Unlink our oldest sealed segments; one gap record names everything lost so far.

        The range runs from the cursor on, so it stays true even when an earlier
        gap record was itself in a dropped segment.
        """
        cursor = load_cursor(self._dir, self.lane)
        acked = cursor.acked_seq if cursor else 0
        dropped_to = 0
        while self._sealed and self._over_cap(need):
            base, path, size = self._sealed.pop(0)
            self._fixed_bytes -= size
            last = self._sealed[0][0] - 1 if self._sealed else self._seg_base - 1
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            if last > acked:
                self._dropped += last - max(base, acked + 1) + 1
                dropped_to = last
        fsync_dir(self._dir)
        if dropped_to:
            self._write(
                Kind.GAP,
                encode_body(
                    {
                        "reason": "overflow",
                        "count": dropped_to - acked,
                        "first_seq": acked + 1,
                        "last_seq": dropped_to,
                        "detail": "drop_oldest: max_spool_bytes reached",
                    }
                ),
            )

    def _write_pending_gap(self) -> None:
        if not self._dropped_unrecorded:
            return
        count = self._dropped_unrecorded
        self._write(
            Kind.GAP,
            encode_body(
                {
                    "reason": "overflow",
                    "count": count,
                    "first_seq": None,
                    "last_seq": None,
                    "detail": f"{self.config.overflow}: max_spool_bytes reached",
                }
            ),
        )
        self._dropped_unrecorded = 0

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
            except OSError as exc:
                self._last_error = f"fsync failed: {exc}"

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

    def _stop_flusher(self) -> None:
        self._stop.set()
        with self._sync_cond:
            self._work.notify()
        if self._flusher is not None:
            self._flusher.join(timeout=5)

    def _release(self) -> None:
        if self._lane_lock.is_locked:
            self._lane_lock.release()
