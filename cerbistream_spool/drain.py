"""Drainer: ships the spool to a transport, at least once (docs/CONTRACT.md §2, §4).

Order: read a batch from the cursor → send → the broker accepted → ack
(gap records of the segments it frees copied to losses/ledger, cursor
persisted, then acknowledged segments unlinked; spool/reader.py). A failure rewinds the
reader to the cursor, so the batch is sent again (same MessageIds).

- ``run_once()`` ships what is pending now and raises on failure (tests, CLI).
- ``start()`` / ``stop()`` run it on a thread with tenacity backoff
  (exponential, full jitter, capped, interrupted by ``stop``), on its own
  schedule (every ``idle_poll_s``) and promptly after ``wake()``.
- ``drain_until_idle()`` / ``follow()`` are the engine of ``cerbispool drain``.
- A message the broker can never take is written to ``deadletter/`` and a
  ``gap`` record (reason ``dead-letter``) goes into the chain: it never blocks
  the queue.
- Damage the reader stepped over (a corrupt record in a segment with valid
  records after it) is never acked past silently: the segment is first copied
  to ``quarantine/`` (copy, fsync, fsync dir), a ``gap`` record (reason
  ``corruption``, naming the lane and lost range) goes into the chain,
  ``corrupt_records`` counts the lost records and ``last_error`` says so;
  only then is the batch acked. The valid records around it are delivered.
- ``locks/drain.lock`` (filelock) makes one drainer per spool at a time; its
  holder writes its pid to ``locks/drain.owner`` (never into the lock file) so a
  drainer that has to wait can say who it waits for.
- Errors retrying cannot fix (:class:`PermanentTransportError`, final after its
  ``confirm_after`` failures in a row) end ``drain_until_idle(give_up=True)``;
  the thread and ``follow()`` keep retrying them every ``backoff_max_s``.
- ``request_stop()`` also interrupts a send in progress (``transport.interrupt()``
  when the transport has one), so a stop never waits out a send timeout.

The drainer knows its spool and transport, never who writes the spool (like
``QueueListener(queue, *handlers)``): ``record_gap(gap)`` puts a gap record in the
chain and ``space_freed()`` is told after acknowledged segments were unlinked. By
default (``cerbispool drain``) gaps go into a lane of the drainer's own and nobody is
told; a SpoolHandler passes callables that reach its live writer at call time.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from filelock import Timeout
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_delay,
    stop_when_event_set,
    wait_fixed,
    wait_random_exponential,
)

from cerbistream_spool.diagnostics import mark_internal_thread
from cerbistream_spool.errors import PermanentTransportError, TransportError
from cerbistream_spool.spool.fsio import (
    atomic_write,
    copy_file,
    current,
    ensure_dir,
    fsync_dir,
    identity,
    read_regular,
    sweep_temp_files,
)
from cerbistream_spool.spool.inventory import Depth, take_inventory
from cerbistream_spool.spool.lanes import (
    LOCKS_DIR,
    QUARANTINE_DIR,
    drain_lock,
    lane_dir,
    list_lanes,
)
from cerbistream_spool.spool.markers import Gap, GapReason
from cerbistream_spool.spool.reader import Batch, Damage, SpoolReader
from cerbistream_spool.spool.record import Kind
from cerbistream_spool.spool.writer import SpoolWriter
from cerbistream_spool.status import write_drain_status
from cerbistream_spool.transports.base import OutgoingMessage, Transport, message_for_record

__all__ = ["DEADLETTER_DIR", "DRAIN_OWNER_FILE", "DrainStats", "Drainer", "read_drain_owner"]

DEADLETTER_DIR = "deadletter"
DRAIN_OWNER_FILE = "drain.owner"  # in locks/: {"pid", "since_unix"} of the drain.lock holder
_LOCK_POLL_S = 0.1
_OBSERVER_JOIN_S = 0.2
_RETRYABLE = (TransportError, OSError)
_WIRE_OVERHEAD = 200  # AMQP framing + MessageId + application properties, per message
_BUSY = "another drainer is shipping this spool"


@dataclass
class DrainStats:
    """Counters of one drainer."""

    delivered: int = 0  # event records the broker accepted (re-sends counted again)
    batches: int = 0
    dead_lettered: int = 0
    corrupt_records: int = 0  # records lost to damage on disk (each also a corruption gap)
    failures: int = 0
    last_error: Optional[str] = None  # None again once the condition ended
    last_error_at: Optional[float] = None  # unix time of the latest error; kept after it ended
    last_delivery_unix: Optional[float] = None


class Drainer:
    """Ships one spool directory through one transport."""

    def __init__(
        self,
        spool_dir: str,
        transport: Transport,
        *,
        record_gap: Optional[Callable[[Gap], None]] = None,
        space_freed: Optional[Callable[[], None]] = None,
        batch_max_records: int = 4500,
        batch_max_bytes: int = 1024 * 1024,
        idle_poll_s: float = 1.0,
        backoff_base_s: float = 0.2,
        backoff_max_s: float = 30.0,
        replay: bool = False,
        on_error: Optional[Callable[[BaseException], None]] = None,
    ) -> None:
        """``replay=True`` ships a copied spool and writes nothing into it but cursors (and
        ``locks/drain.lock``): no lane is removed, no acknowledged segment unlinked, no
        status file, gap lane or quarantine copy written; dead letters still go to
        ``deadletter/``, and losses are counted and reported in ``last_error``.

        ``record_gap(gap)`` writes a gap record into the chain (default: a lane of the
        drainer's own, opened on the first gap); ``space_freed()`` is called after each
        acknowledged batch (default: nothing)."""
        self.spool_dir = os.path.abspath(spool_dir)
        self.transport = transport
        self.reader = SpoolReader(self.spool_dir, pin=True)  # drop_oldest spares what is in flight
        self.batch_max_records = batch_max_records
        self.batch_max_bytes = batch_max_bytes
        self._wire_ratio = 1.5  # wire bytes per spooled byte, learnt from each batch
        self.idle_poll_s = idle_poll_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._record_gap = record_gap or self._gap_in_own_lane
        self._space_freed = space_freed or _nothing
        self._own_writer: Optional[SpoolWriter] = None
        self._lock = drain_lock(self.spool_dir)
        self._lock_id: Optional[Tuple[int, int]] = None  # (st_dev, st_ino) of the file we lock
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._stats = DrainStats()
        self.replay = replay
        if replay:
            self.reader.remove_idle_lanes = False
            self.reader.unlink_acked = False
        self._loss_note: Optional[str] = None  # stays in last_error once data was lost
        self._on_error = on_error  # called on every failed attempt (the CLI prints them)
        self._give_up = False  # drain_until_idle(give_up=True): confirmed permanent errors end it
        self._permanent_streak = 0  # permanent failures in a row
        self._published: Dict[str, Any] = {}
        self._published_at = 0.0
        self._progress: Optional[Callable[[int], None]] = None  # drain_until_idle's, per batch
        #: ``time.monotonic()`` of the next attempt while failing (an outage), else None
        self.retry_at: Optional[float] = None

    @classmethod
    def for_writer(
        cls, spool_dir: str, transport: Transport, writer: SpoolWriter, **options: Any
    ) -> Drainer:
        """A drainer whose gaps go into ``writer``'s lane while it is open (then into a
        lane of the drainer's own) and that tells ``writer`` when space was freed."""

        def record_gap(gap: Gap) -> None:
            if writer.closed:
                drainer._gap_in_own_lane(gap)
            else:
                append_gap(writer, gap)

        drainer = cls(
            spool_dir, transport, record_gap=record_gap, space_freed=writer.notify_space, **options
        )
        return drainer

    # -- one pass ----------------------------------------------------------------------

    def run_once(self) -> int:
        """Ship every record pending now; returns events delivered. Raises on failure."""
        self._check_lock()
        if not self._take_lock(0):
            self._stats.last_error = _BUSY
            return 0
        if self._stats.last_error == _BUSY:  # ours now: that condition ended
            self._stats.last_error = self._loss_note
        delivered = 0
        while not self._stop.is_set():
            batch = self.reader.read_batch(self.batch_max_records, self._batch_bytes())
            if batch is None:  # idle lanes were removed (or kept: reader.losses_error)
                self._stats.last_error = self._loss_note or self.reader.losses_error
                break
            try:
                delivered += self._ship(batch)
            except BaseException:
                self.reader.rewind()  # resend from the cursor: at-least-once
                raise
        return delivered

    def _ship(self, batch: Batch) -> int:
        messages: List[OutgoingMessage] = []
        for record in batch.events():
            try:
                messages.append(message_for_record(batch.lane, record))
            except Exception as exc:  # noqa: BLE001 — an undecodable body can never be sent
                self._dead_letter(batch.lane, record.seq, None, f"undecodable event: {exc}")
        if messages and batch.nbytes:
            wire = sum(len(m.body) + _WIRE_OVERHEAD for m in messages)
            self._wire_ratio = max(1.0, wire / batch.nbytes)
        rejected = self.transport.send(messages).rejected if messages else []
        for message, reason in rejected:
            self._dead_letter(message.lane, message.seq, message, reason)
        for damage in batch.damage:  # recorded before the ack can unlink the segment
            self._record_damage(damage)
        # the broker accepted: the transport's error has ended and the messages are
        # counted before the ack shows the records delivered (handler.stats() reads
        # pending, last_error and these counts apart); a failed ack resends, and the
        # broker is sent them (and they are counted) again: at least once
        stats = self._stats
        stats.last_error = self._loss_note or self.reader.losses_error
        stats.batches += 1
        stats.delivered += len(messages) - len(rejected)
        stats.last_delivery_unix = time.time()
        self.reader.ack(batch)
        self._space_freed()
        stats.last_error = self._loss_note or self.reader.losses_error
        self.retry_at = None
        if self._progress is not None:
            self._progress(len(messages) - len(rejected))
        return len(messages) - len(rejected)

    def _record_damage(self, damage: Damage) -> None:
        """Quarantine a copy of the damaged segment, then record the lost range as a gap."""
        name = os.path.basename(damage.segment)
        where = f"lane {damage.lane} segment {name} bytes {damage.start}..{damage.end}"
        lost = f"{damage.lost} record(s) seq {damage.first_seq}..{damage.last_seq}"
        copy = self._quarantine_copy(damage) if not self.replay else None
        detail = f"{where}: {damage.detail}" + (f"; copy in {copy}" if copy else "")
        if not self.replay and damage.lost:
            gap = Gap(
                GapReason.CORRUPTION,
                damage.lost,
                detail,
                damage.first_seq,
                damage.last_seq,
                damage.lane,
            )
            self._record_gap(gap)
        self._stats.corrupt_records += damage.lost
        self._loss_note = f"corruption: {lost} lost in {detail}"
        self._stats.last_error_at = time.time()

    def _quarantine_copy(self, damage: Damage) -> Optional[str]:
        """Copy the damaged segment into quarantine/ durably; its path, None if it is gone."""
        qdir = os.path.join(self.spool_dir, QUARANTINE_DIR)
        ensure_dir(qdir)
        name = f"{damage.lane:04d}-{time.time_ns()}-{os.path.basename(damage.segment)}"
        target = os.path.join(qdir, name)
        try:
            copy_file(damage.segment, target)  # and fsync it
        except FileNotFoundError:
            return None
        fsync_dir(qdir)
        return os.path.join(QUARANTINE_DIR, name)

    def _batch_bytes(self) -> int:
        """Spool bytes per reader batch so that it fills one broker batch (not 1.3 of one)."""
        limit = self.transport.max_batch_bytes or self.batch_max_bytes
        return max(1, int(0.95 * min(limit, self.batch_max_bytes) / self._wire_ratio))

    def _dead_letter(
        self, lane: int, seq: int, message: Optional[OutgoingMessage], reason: str
    ) -> None:
        """Persist the message under deadletter/, then record the gap in the chain."""
        directory = os.path.join(self.spool_dir, DEADLETTER_DIR)
        ensure_dir(directory)
        doc: Dict[str, Any] = {"lane": lane, "seq": seq, "reason": reason}
        if message is not None:
            doc["message_id"] = message.message_id
            doc["body"] = message.body.decode("utf-8")
        atomic_write(
            os.path.join(directory, f"{lane:04d}-{seq:020d}.json"), json.dumps(doc).encode()
        )
        if self.replay:
            self._stats.dead_lettered += 1
            return
        gap = Gap.span(GapReason.DEAD_LETTER, seq, seq, reason, lane)
        self._record_gap(gap)
        self._stats.dead_lettered += 1

    def _gap_in_own_lane(self, gap: Gap) -> None:
        """The default ``record_gap``: a lane of the drainer's own, opened on first use."""
        if self._own_writer is None:
            self._own_writer = SpoolWriter(self.spool_dir)
        append_gap(self._own_writer, gap)

    # -- retrying loops ------------------------------------------------------------------

    def _retrying(self, deadline: Optional[float] = None) -> Retrying:
        stop: Any = stop_when_event_set(self._stop)
        if deadline is not None:
            stop = stop | stop_after_delay(max(0.0, deadline - time.monotonic()))
        return Retrying(
            wait=self._wait,
            retry=retry_if_exception_type(_RETRYABLE) & retry_if_exception(self._worth_retrying),
            stop=stop,
            sleep=self._sleep,
            before_sleep=self._record_failure,
            reraise=True,
        )

    def _worth_retrying(self, exc: BaseException) -> bool:
        """False once a permanent error is confirmed and this run gives up on those."""
        if not isinstance(exc, PermanentTransportError):
            self._permanent_streak = 0
            return True
        self._permanent_streak += 1
        return not (self._give_up and self._permanent_streak >= exc.confirm_after)

    def _wait(self, retry_state: RetryCallState) -> float:
        # named retry_state: tenacity 8.0 (the floor) passes it by keyword
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, PermanentTransportError) and not self._give_up:
            return float(wait_fixed(self.backoff_max_s)(retry_state))  # slowly: a human must fix it
        backoff = wait_random_exponential(multiplier=self.backoff_base_s, max=self.backoff_max_s)
        return float(backoff(retry_state))

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)  # a stop() never waits out a backoff

    def _record_failure(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self._stats.failures += 1
        self._stats.last_error = f"{type(exc).__name__}: {exc}" if exc else "unknown failure"
        self._stats.last_error_at = time.time()
        if state.next_action is not None:
            self.retry_at = time.monotonic() + state.next_action.sleep
        self._publish()  # a long outage must show in `cerbispool status` while it lasts
        if exc is not None and self._on_error is not None:
            self._on_error(exc)

    def _round(self, deadline: Optional[float] = None) -> None:
        try:
            self._retrying(deadline)(self.run_once)
        except _RETRYABLE as exc:  # stopped, out of time, or given up while failing
            self._stats.last_error = f"{type(exc).__name__}: {exc}"
            self._stats.last_error_at = time.time()
            self.retry_at = None
            self._publish()
            if (
                self._give_up
                and isinstance(exc, PermanentTransportError)
                and self._permanent_streak >= exc.confirm_after
            ):
                raise  # confirmed: a one-shot drain ends (not merely stopped while failing)
        else:
            self._permanent_streak = 0
        self._publish()

    def _publish(self) -> None:
        """Share counters with ``cerbispool status`` (at most once a second, or on news)."""
        if self.replay:
            return  # a replay leaves the copied spool as it was
        doc = self.stats()
        now = time.monotonic()
        if doc == self._published or (
            doc.get("last_error") == self._published.get("last_error")
            and now - self._published_at < 1.0
        ):
            return
        try:
            write_drain_status(self.spool_dir, doc)
        except OSError:
            return
        self._published, self._published_at = doc, now

    def drain_until_idle(
        self,
        timeout: Optional[float] = None,
        progress: Optional[Callable[[int], None]] = None,
        *,
        give_up: bool = False,
    ) -> int:
        """Ship until nothing is pending, ``timeout`` or ``request_stop()``; returns events
        still pending. Waits for the drain lock (interruptibly) within ``timeout``. With
        ``give_up``, a confirmed :class:`PermanentTransportError` is raised instead of retried.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        self._give_up = give_up
        if not self._take_lock(timeout):
            self._stats.last_error = _BUSY
            return self.pending_events()
        self._progress = progress  # told the events of each batch as it is acknowledged
        try:
            while not self._stop.is_set():
                self._round(deadline)
                if self.reader.read_batch(1, 1) is None:
                    return 0
                self.reader.rewind()
                if deadline is not None and time.monotonic() >= deadline:
                    break
        finally:
            self._progress = None
        return self.pending_events()

    def follow(self, progress: Optional[Callable[[int], None]] = None) -> None:
        """Ship continuously, woken by file events under the spool, until ``stop()``;
        ``progress`` is told the events of each batch."""
        from watchdog.events import FileSystemEvent, FileSystemEventHandler  # noqa: PLC0415
        from watchdog.observers import Observer  # noqa: PLC0415

        drainer = self

        class _Wake(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                mark_internal_thread()
                drainer.wake()

        observer = Observer()
        observer.daemon = True
        observer.schedule(_Wake(), self.spool_dir, recursive=True)
        observer.start()
        self._progress = progress
        try:
            self._loop()
        finally:
            self._progress = None
            observer.stop()
            # older watchdog emitters notice a stop only at their next 1 s poll; the daemon
            # thread ends by itself, a stop request must not wait for it
            observer.join(_OBSERVER_JOIN_S)

    # -- thread --------------------------------------------------------------------------

    def start(self) -> None:
        """Run on a daemon thread until stop()."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="cerbispool-drain", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        mark_internal_thread()  # SDK log records from this thread never reach our handler
        while not self._stop.is_set():
            self._round()
            self._wake.wait(self.idle_poll_s)
            self._wake.clear()
        if threading.current_thread() is not threading.main_thread():
            self.close()  # idempotent; covers a stop() that gave up waiting for us

    def wake(self) -> None:
        """New records were written: ship soon (cheap when already signalled: emit calls it)."""
        if not self._wake.is_set():
            self._wake.set()

    def request_stop(self) -> None:
        """Ask the loops to end and cut a send in progress (safe from a signal handler)."""
        self._stop.set()
        self._wake.set()
        interrupt = getattr(self.transport, "interrupt", None)
        if interrupt is not None:
            interrupt()

    @property
    def stopping(self) -> bool:
        """True once ``request_stop()`` or ``stop()`` was called."""
        return self._stop.is_set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop within ``timeout``: interrupts backoff and sends, closes the transport, unlocks."""
        self.request_stop()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                # stuck in a send (bounded by the send timeout): the thread closes
                # everything itself when that returns; stop() stays bounded
                return
        self.close()

    def close(self) -> None:
        """Close the transport and our own gap lane; release the drain lock."""
        self.transport.close()
        if self._own_writer is not None:
            self._own_writer.close()
            self._own_writer = None
        if self._lock.is_locked:
            with contextlib.suppress(OSError):  # removed before the release: never another's
                current().unlink(os.path.join(self.spool_dir, LOCKS_DIR, DRAIN_OWNER_FILE))
            self._lock.release(force=True)

    def stats(self) -> Dict[str, Any]:
        """Counters as a dict (merged into SpoolHandler.stats())."""
        return asdict(self._stats)

    def pending_events(self) -> int:
        """Event records not yet acknowledged, over every lane (spool/inventory.py)."""
        return take_inventory(self.spool_dir, Depth.COUNT).pending_events

    def try_lock(self, timeout: Optional[float] = 0) -> bool:
        """Take the drain lock within ``timeout`` (None: until ``request_stop()``)."""
        return self._take_lock(timeout)

    def lock_owner(self) -> Optional[Dict[str, Any]]:
        """What the holder of the drain lock wrote about itself (pid, since_unix), if known."""
        return read_drain_owner(self.spool_dir)

    def _check_lock(self) -> None:
        """Let go of a drain lock whose file was removed or replaced (the spool directory
        vanished and was made again): another drainer could lock the new file, and two
        drainers would ship. One ``stat`` per pass; the caller takes the new lock."""
        if not self._lock.is_locked:
            return
        if identity(self._lock.lock_file) == self._lock_id:
            return
        self.reader.rewind()
        with contextlib.suppress(OSError):
            self._lock.release(force=True)
        self._stats.last_error = "the drain lock file was removed; taking the new one"

    def _take_lock(self, timeout: Optional[float]) -> bool:
        """Acquire the drain lock within ``timeout`` (None: until stopped); never ignores stop."""
        if self._lock.is_locked:
            return True
        stop: Any = stop_when_event_set(self._stop)
        if timeout is not None:
            stop = stop | stop_after_delay(max(0.0, timeout))
        try:
            Retrying(
                retry=retry_if_exception_type(Timeout),
                wait=wait_fixed(_LOCK_POLL_S),
                stop=stop,
                sleep=self._sleep,
                reraise=True,
            )(self._lock.acquire, timeout=0)
        except Timeout:
            return False
        self._lock_id = identity(self._lock.lock_file)
        owner = {"pid": os.getpid(), "since_unix": time.time()}
        with contextlib.suppress(OSError):  # advisory: a waiter then says "pid unknown"
            atomic_write(
                os.path.join(self.spool_dir, LOCKS_DIR, DRAIN_OWNER_FILE),
                json.dumps(owner).encode(),
            )
        # the drain lock's holder is the only writer of cursors and drain-status.json:
        # temp files a crashed drainer left are swept now (docs/FORMAT.md §1)
        for directory in (
            self.spool_dir,
            *(lane_dir(self.spool_dir, n) for n in list_lanes(self.spool_dir)),
        ):
            sweep_temp_files(directory)
        return True


def append_gap(writer: SpoolWriter, gap: Gap) -> None:
    """Write ``gap`` into ``writer``'s lane (a gap record is never refused for space)."""
    writer.append_body(gap.encode(), Kind.GAP)


def _nothing() -> None:
    """The default ``space_freed``."""


def read_drain_owner(spool_dir: str) -> Optional[Dict[str, Any]]:
    """The ``locks/drain.owner`` record of the drainer holding the lock, if readable."""
    try:
        doc = json.loads(read_regular(os.path.join(spool_dir, LOCKS_DIR, DRAIN_OWNER_FILE)))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
