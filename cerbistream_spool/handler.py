"""SpoolHandler: ``emit`` = governance check → build the event → append to the spool.

The contract (docs/CONTRACT.md §4): ``emit`` never raises into the app and never
touches the network; a returned ``emit`` is in the OS (``always``: on disk).
Problems are counted in ``stats()`` and reported on stderr, rate-limited,
never through ``logging`` (that would feed this handler).

Fork (gunicorn ``--preload``, uwsgi, celery prefork, ``multiprocessing`` fork):
the ``after_in_child`` hook forgets the parent's writer, drainer and watcher;
the child opens a lane of its own on its first emit and, with ``drain=True``,
starts a drainer that stands by on the spool's drain lock.

The drainer knows no handler (drain.py): it is given ``record_gap`` and
``space_freed``, which find the live writer when called. A gap the drainer records
while the spool is not open (it could not be opened yet) is owed to the handler and
written into its lane as soon as the spool opens, never into a second lane of the
process; after ``close()`` it goes into a lane opened for it (the handler's own lane
number again unless another process took it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import weakref
from typing import Any, Dict, Iterator, List, Optional, Tuple, TypedDict, Union

from cerbistream_spool.diagnostics import Reporter, guard
from cerbistream_spool.errors import (
    GovernanceConfigError,
    SpoolConfigError,
    SpoolError,
    SpoolFullError,
)
from cerbistream_spool.event import EventEncoder
from cerbistream_spool.governance import (
    REDACTED,
    SCAN_BUDGET_S,
    Governance,
    load_governance,
)
from cerbistream_spool.governance_watch import GovernanceWatcher
from cerbistream_spool.spool.capacity import OverflowPolicy
from cerbistream_spool.spool.commit import CommitPolicy
from cerbistream_spool.spool.config import MiB, SpoolConfig
from cerbistream_spool.spool.inventory import Depth, take_inventory
from cerbistream_spool.spool.markers import Gap
from cerbistream_spool.spool.record import Kind
from cerbistream_spool.spool.writer import SpoolWriter, forget_inherited_lock
from cerbistream_spool.transports.base import CONNECTION_ENV, DEFAULT_QUEUE

__all__ = ["DEFAULT_QUEUE", "SpoolHandler", "SpoolStats"]

_REOPEN_EVERY_S = 5.0
_HANDLERS: weakref.WeakSet[SpoolHandler] = weakref.WeakSet()
# kinds of handler error that a record spooled afterwards proves over
_APPEND_ERRORS = frozenset(("emit", "full", "write", "open"))


class SpoolStats(TypedDict):
    """What :meth:`SpoolHandler.stats` returns (docs/OPERATIONS.md, "Watching a spool").

    Counts are of events (log records), never of open, close or gap records.
    While no ``emit`` is under way: ``accepted == delivered + pending_records +
    dropped + lost``.
    """

    lane: Optional[int]  # None until the spool could be opened
    accepted: int
    durable: int
    delivered: int
    pending_records: int
    pending_bytes: int
    dropped: int
    lost: int
    accepted_seq: int
    durable_seq: int
    delivered_seq: int
    oldest_pending_age_s: Optional[float]
    suppressed: int
    last_error: Optional[str]  # the condition now, None once it ended
    last_error_at: Optional[float]  # unix time of the latest error; kept after it ended
    drain: Optional[Dict[str, Any]]  # the in-process drainer's counters, None without one
    governance_sha256: str


class SpoolHandler(logging.Handler):
    """A logging handler that spools governance-checked ScoringEventDtos to disk."""

    def __init__(
        self,
        spool_dir: str,
        *,
        tenant_id: str,
        app_name: str,
        environment: Optional[str] = None,
        governance_config_path: Optional[str] = None,
        governance_profile: str = "default",
        connection_string: Optional[str] = None,
        fully_qualified_namespace: Optional[str] = None,
        credential: Any = None,
        queue_name: str = DEFAULT_QUEUE,
        fsync: Union[str, CommitPolicy] = "interval",
        drain: bool = True,
        signing_key: Optional[str] = None,
        max_spool_bytes: int = 512 * MiB,
        overflow: Union[str, OverflowPolicy] = "drop_oldest",
        segment_max_bytes: int = 4 * MiB,
        segment_max_age_s: float = 60.0,
        level: int = logging.NOTSET,
        reporter: Optional[Reporter] = None,
    ) -> None:
        super().__init__(level)
        # set first: logging keeps a reference even when construction fails, and calls
        # flush()/close() at shutdown
        self._writer: Optional[SpoolWriter] = None
        self._watcher: Optional[GovernanceWatcher] = None
        self._drainer: Any = None
        self._closed = False
        self._final_stats: Optional[SpoolStats] = None  # taken by close(), returned after it
        self._built = False  # construction finished (a failed one is still closed at shutdown)
        self._dropped_at_close = 0
        self._open_lock = threading.Lock()
        self._owed = 0  # drops while no writer was open: a gap record once one opens
        self._owed_gaps: List[Gap] = []  # the drainer's gaps while no writer was open
        self._gap_lock = threading.Lock()  # after _open_lock when both are taken
        self._restart_drainer = False
        self._restart_watcher = False
        self._forked = False
        _HANDLERS.add(self)
        self._encoder = EventEncoder(  # validates the envelope options
            tenant_id=tenant_id,
            app_name=app_name,
            environment=environment,
            governance_profile=governance_profile,
        )
        if not isinstance(spool_dir, (str, os.PathLike)) or not os.fspath(spool_dir):
            raise SpoolConfigError(f"spool_dir must be a non-empty path, got {spool_dir!r}")
        self.spool_dir = os.path.abspath(os.fspath(spool_dir))
        self.tenant_id = tenant_id
        self.app_name = app_name
        self.environment = environment
        self.governance_profile = governance_profile
        self.queue_name = queue_name
        if connection_string and fully_qualified_namespace:
            raise SpoolConfigError(
                "pass connection_string or fully_qualified_namespace (Entra ID), not both"
            )
        if credential is not None and not fully_qualified_namespace:
            raise SpoolConfigError("credential needs fully_qualified_namespace")
        #: Entra ID: the namespace (``<name>.servicebus.windows.net``) and its credential
        #: (None: ``azure.identity.DefaultAzureCredential``, from the ``identity`` extra)
        self.fully_qualified_namespace = fully_qualified_namespace or None
        self.credential = credential
        self.connection_string = (
            None
            if self.fully_qualified_namespace
            else connection_string or os.environ.get(CONNECTION_ENV) or None
        )
        self.config = SpoolConfig(
            fsync=fsync,
            max_spool_bytes=max_spool_bytes,
            overflow=overflow,
            segment_max_bytes=segment_max_bytes,
            segment_max_age_s=segment_max_age_s,
            signing_key=signing_key.encode("utf-8") if signing_key else None,
        )
        # GroupCommit: handle() emits outside the handler-wide lock (threads share fsyncs)
        self._group_commit = self.config.commit_policy().waits
        self._reporter = reporter or Reporter()
        self._governance = (
            load_governance(governance_config_path, governance_profile)
            if governance_config_path
            else Governance(profile=governance_profile)
        )
        self._governance.on_timeout(self._scan_timed_out)
        self._dropped = 0
        self._suppressed = 0
        self._reentered = 0  # app records logged on this thread while it was inside emit
        self._reentered_noted = 0  # ... of which a gap record is owed already
        self._last_error: Optional[str] = None
        self._error_kind: Optional[str] = None  # what ends self._last_error (_APPEND_ERRORS...)
        self._last_error_at: Optional[float] = None
        self._next_open = 0.0
        self._governance_config_path = governance_config_path
        self._built = True
        self._open_writer()
        if governance_config_path:
            self._start_watcher()
        if drain and (self.connection_string or self.fully_qualified_namespace):
            self._start_drainer()

    # -- logging.Handler ------------------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        """Check, build and spool ``record``; never raises, never blocks on the network."""
        if getattr(guard, "active", False):  # never recurse
            if getattr(guard, "internal", False):
                self._suppressed += 1  # one of our own threads (SDK, watchdog): by design
            else:
                # the app logged while this thread was inside emit: a signal handler, or a
                # value's __str__ that logs. The writer's lock may be held below us, so it
                # is counted here (no lock) and its gap owed by the emit it interrupted.
                self._reentered += 1
            return
        guard.active = True
        try:
            self._append(self._encoder.encode(record, self._governance))
        except Exception:  # noqa: BLE001 — the app must never see our failures
            self.handleError(record)
        finally:
            if self._reentered != self._reentered_noted:
                self._note_reentered()
            guard.active = False

    @contextlib.contextmanager
    def _app_call(self) -> Iterator[None]:
        """``flush``, ``stats`` and ``close`` take the locks ``emit`` takes: while they run,
        a record logged on the same thread (a signal handler) is counted and owed as a
        gap, as inside ``emit``, instead of waiting on a lock its own thread holds."""
        if getattr(guard, "active", False):  # inside emit or one of our threads already
            yield
            return
        guard.active = True
        try:
            yield
        finally:
            if self._reentered != self._reentered_noted:
                self._note_reentered()
            guard.active = False

    def handle(self, record: logging.LogRecord) -> Any:
        """With ``fsync="always"`` (``GroupCommit()``): filter, then emit without the
        handler-wide lock, so threads share fsyncs (group commit). Otherwise the stdlib
        way, under the lock: threads queueing there beat threads convoying on the
        writer's lock across ``os.write`` (+27 to 33 % with 4 threads, docs/BENCHMARKS.md)."""
        if not self._group_commit:
            return super().handle(record)
        rv = self.filter(record)
        if rv:
            self.emit(rv if isinstance(rv, logging.LogRecord) else record)
        return rv

    def handleError(self, record: logging.LogRecord) -> None:
        """Count the record as dropped (a gap record follows) and report once per interval."""
        exc = sys.exc_info()[1]
        self._dropped += 1
        self._error("emit", f"{type(exc).__name__}: {exc}" if exc else "unknown error")
        self._reporter.report("emit", f"record dropped: {self._last_error}")
        self._owe(1, "emit-error", f"record dropped: {self._last_error}")

    def flush(self) -> None:
        """Return once every record accepted so far is on disk (fsync)."""
        with self._app_call():
            self._flush()

    def _flush(self) -> None:
        writer = self._writer
        if writer is not None:
            try:
                writer.flush()
            except OSError as exc:
                self._error("flush", f"flush failed: {exc}")
                self._reporter.report("flush", f"flush failed: {exc}")
            else:
                self._ended("flush")

    def close(self) -> None:
        """Stop the drainer and watcher (bounded), flush, write the close marker, release.

        Records logged afterwards are dropped and counted (``stats()["dropped"]``).
        """
        with self._app_call():
            self._close()

    def _close(self) -> None:
        self._closed = True
        try:
            drainer = self._drainer
            if drainer is not None:
                drainer.stop()
            if self._watcher is not None:
                self._watcher.stop()
                self._watcher = None
            if self._reentered != self._reentered_noted:
                self._note_reentered()
            with self._gap_lock:  # a late gap of the drainer waits, then takes a lane of its own
                writer, self._writer = self._writer, None
                if writer is not None:
                    self._write_owed_gaps(writer)
                    writer.close()
                if self._owed_gaps:
                    count, self._owed_gaps = len(self._owed_gaps), []
                    self._reporter.report("gaps", f"{count} drainer gap record(s) lost at close")
            if self._built and self._final_stats is None:  # kept; a second close changes none
                self._dropped_at_close = self._dropped
                self._final_stats = self._stats(writer, drainer)
            self._drainer = None
        finally:
            super().close()

    # -- stats -------------------------------------------------------------------------

    def stats(self) -> SpoolStats:
        """Counts of events (never markers) and the lane's watermarks (docs/OPERATIONS.md).

        While no append is under way, ``accepted == delivered + pending_records +
        dropped + lost``. After ``close()`` the values at close are kept; records
        logged afterwards are added to ``accepted`` and ``dropped``.
        """
        with self._app_call():
            return self._stats_now()

    def _stats_now(self) -> SpoolStats:
        final = self._final_stats
        if final is None:
            return self._stats(self._writer, self._drainer)
        late = self._dropped - self._dropped_at_close
        out = SpoolStats(**final)
        out["accepted"] += late
        out["dropped"] += late
        out["suppressed"] = self._suppressed
        if self._last_error_at is not None and self._last_error_at > (out["last_error_at"] or 0):
            out["last_error"], out["last_error_at"] = self._last_error, self._last_error_at
        return out

    def _stats(self, writer: Optional[SpoolWriter], drainer: Any) -> SpoolStats:
        lane = None if writer is None else writer.lane
        inventory = None if lane is None else take_inventory(self.spool_dir, Depth.OLDEST, (lane,))
        ws: Dict[str, Any] = writer.stats(inventory) if writer is not None else {}
        drain: Optional[Dict[str, Any]] = drainer.stats() if drainer is not None else None
        dstats = drain or {}
        # records the drainer passed without delivering them: the cursor is beyond them
        unsent = dstats.get("dead_lettered", 0) + dstats.get("corrupt_records", 0)
        dropped = ws.get("dropped", 0) + self._dropped
        pending = int(ws.get("pending_records", 0))
        pending_bytes = int(ws.get("pending_bytes", 0))
        oldest_age: Optional[float] = None
        found = None if inventory is None or lane is None else inventory.lane(lane)
        if pending and found is not None and found.oldest_pending_ns is not None:
            oldest_age = max(0.0, (time.time_ns() - found.oldest_pending_ns) / 1e9)
        times = [t for t in (self._last_error_at, dstats.get("last_error_at")) if t is not None]
        return SpoolStats(
            lane=ws.get("lane"),
            accepted=ws.get("events", 0) + dropped,
            durable=ws.get("events_durable", 0),
            delivered=ws.get("events_delivered", 0) - unsent,
            pending_records=pending,
            pending_bytes=pending_bytes,
            dropped=dropped,
            lost=ws.get("lost", 0) + unsent,
            accepted_seq=ws.get("accepted", 0),
            durable_seq=ws.get("durable", 0),
            delivered_seq=ws.get("delivered", 0),
            oldest_pending_age_s=oldest_age,
            suppressed=self._suppressed,
            last_error=dstats.get("last_error") or self._last_error or ws.get("last_error"),
            last_error_at=max(times) if times else None,
            drain=drain,  # the drainer's counters; "delivered" above counts events
            governance_sha256=self._governance.sha256,
        )

    def drainer_wake(self) -> None:
        """Ask the drainer (if any) to ship now instead of at its next poll."""
        if self._drainer is not None:
            self._drainer.wake()

    @property
    def writer(self) -> Optional[SpoolWriter]:
        """The spool writer of this handler (None while the spool cannot be opened)."""
        return self._writer

    @property
    def governance(self) -> Governance:
        """The rules in force now."""
        return self._governance

    # -- internals -------------------------------------------------------------------

    def _append(self, body: bytes) -> None:
        writer = self._writer or self._open_writer()
        if writer is None:
            self._dropped += 1
            self._owe(1, "write-error", "dropped: the spool could not be opened")
            return
        if _LATE_DROPS.counts:  # a plain dict check on the hot path
            self._note_late_drops(writer)
        try:
            writer.append_body(body, Kind.EVENT)
        except SpoolFullError as exc:  # counted by the writer; a gap record follows
            self._error("full", str(exc))
            self._reporter.report("full", str(exc))
        except OSError as exc:  # disk full, read-only, I/O error: the writer counted it
            self._error("write", f"spool write failed: {exc}")
            self._reporter.report("write", f"record dropped: spool write failed: {exc}")
        else:
            if self._error_kind is not None and self._error_kind in _APPEND_ERRORS:
                self._ended(*_APPEND_ERRORS)  # a record spooled: that condition is over
            if self._drainer is not None:
                self._drainer.wake()

    def _open_writer(self) -> Optional[SpoolWriter]:
        """Open the spool; on failure degrade (count drops) and retry every few seconds."""
        with self._open_lock:
            if self._closed:
                return None
            if self._writer is not None or time.monotonic() < self._next_open:
                return self._writer
            try:
                self._writer = SpoolWriter(self.spool_dir, self.config)
            except (OSError, SpoolConfigError, Exception) as exc:  # noqa: BLE001
                self._next_open = time.monotonic() + _REOPEN_EVERY_S
                self._error("open", f"cannot open spool {self.spool_dir}: {exc}")
                self._reporter.report(
                    "open", f"cannot open spool {self.spool_dir}: {exc}; records are dropped"
                )
                return None
            self._ended("open")
            for note in self._writer.recovery_notes:
                self._reporter.report(f"recovery:{note}", f"recovered {self.spool_dir}: {note}")
            owed, self._owed = self._owed, 0
            self._writer.note_loss("write-error", owed, "dropped: the spool could not be opened")
            self._note_late_drops(self._writer)
            with self._gap_lock:
                self._write_owed_gaps(self._writer)
            if self._restart_watcher:  # a forked child: the parent's threads did not come along
                self._restart_watcher = False
                self._start_watcher()
            if self._restart_drainer:
                self._restart_drainer = False
                self._start_drainer()
            if self._forked:
                self._forked = False
                _close_at_worker_exit(self)
            return self._writer

    def _note_reentered(self) -> None:
        """Count the records logged while this thread was inside emit; owe their gap."""
        count = self._reentered - self._reentered_noted
        self._reentered_noted += count
        self._dropped += count
        self._owe(count, "emit-error", "logged inside emit (a signal handler, a __str__ that logs)")

    def _owe(self, count: int, reason: str, detail: str) -> None:
        """A gap record for ``count`` dropped events: in the open lane, once the spool
        opens, or (after close) by the next handler of this spool in the process."""
        writer = self._writer
        if writer is not None and not writer.closed:
            writer.note_loss(reason, count, detail)
        elif not self._closed:
            self._owed += count  # written as "the spool could not be opened"
        else:
            _LATE_DROPS.add(self.spool_dir, count)

    def _note_late_drops(self, writer: SpoolWriter) -> None:
        """Owe the gap of records logged to closed handlers of this spool in this process."""
        count = _LATE_DROPS.take(self.spool_dir)
        writer.note_loss(
            "write-error", count, "logged to a closed SpoolHandler (logging reconfigured)"
        )

    def _set_governance(self, governance: Governance) -> None:
        governance.on_timeout(self._scan_timed_out)
        self._governance = governance
        self._ended("governance")

    def _governance_error(self, exc: GovernanceConfigError) -> None:
        text = f"governance reload rejected, old rules kept: {exc}"
        self._error("governance", text)
        self._reporter.report(f"governance:{exc}", text)

    def _scan_timed_out(self, rule_ids: Tuple[str, ...], path: str) -> None:
        """A pattern scan ran out of time: the record was stored failed closed; say so."""
        self._reporter.report(
            "governance-timeout",
            f"pattern scan ran out of time ({SCAN_BUDGET_S * 1000:g} ms per record) at "
            f"{path!r}, rules {', '.join(rule_ids)}: the text was stored as {REDACTED} "
            "(docs/GOVERNANCE.md, Patterns)",
        )

    def _error(self, kind: str, text: str) -> None:
        """Record the handler's current error; ``kind`` names what ends it (``_ended``)."""
        self._last_error, self._error_kind, self._last_error_at = text, kind, time.time()

    def _ended(self, *kinds: str) -> None:
        """The condition behind ``last_error`` is over: clear it (``last_error_at`` stays)."""
        if self._error_kind in kinds:
            self._last_error = self._error_kind = None

    def _start_watcher(self) -> None:
        assert self._governance_config_path is not None
        self._watcher = GovernanceWatcher(
            self._governance_config_path,
            self.governance_profile,
            self._governance,
            on_change=self._set_governance,
            on_error=self._governance_error,
        )
        self._watcher.start()

    # -- the drainer's callbacks (drainer thread) ---------------------------------------

    def _record_gap(self, gap: Gap) -> None:
        """The drainer's ``record_gap``: into the live writer's lane; owed while none is open."""
        with self._gap_lock:
            writer = self._writer
            if writer is not None and not writer.closed:
                self._write_owed_gaps(writer)
                _append_gap(writer, gap)
                return
            if not self._closed:
                self._owed_gaps.append(gap)  # written by _open_writer once the spool opens
                return
        with SpoolWriter(self.spool_dir, self.config) as late:  # closed: our lane is released
            _append_gap(late, gap)

    def _space_freed(self) -> None:
        """The drainer's ``space_freed``: wake the live writer's space waiters."""
        writer = self._writer
        if writer is not None:
            writer.notify_space()

    def _write_owed_gaps(self, writer: SpoolWriter) -> None:
        """Write the gaps owed while the spool was not open, oldest first (caller holds
        ``_gap_lock``). One that cannot be written stays owed, for the next gap or close."""
        try:
            while self._owed_gaps:
                _append_gap(writer, self._owed_gaps[0])
                del self._owed_gaps[0]
        except (OSError, SpoolError) as exc:
            self._error("write", f"drainer gap record not written: {exc}")
            self._reporter.report("gaps", f"drainer gap record(s) not written yet: {exc}")

    def _new_drainer(self) -> Any:
        """The Service Bus drainer of this handler (the SDK is imported only now)."""
        from cerbistream_spool.drain import Drainer  # noqa: PLC0415 — optional part
        from cerbistream_spool.transports.servicebus import (  # noqa: PLC0415 — heavy SDK
            ServiceBusTransport,
        )

        transport = ServiceBusTransport(
            queue_name=self.queue_name,
            connection_string=self.connection_string,
            fully_qualified_namespace=self.fully_qualified_namespace,
            credential=self.credential,
        )
        return Drainer(
            self.spool_dir, transport, record_gap=self._record_gap, space_freed=self._space_freed
        )

    def _start_drainer(self) -> None:
        self._drainer = self._new_drainer()
        problem = self._drainer.transport.settings_problem()  # once, at construction
        if problem:
            self._reporter.report("connection", f"the drainer cannot ship until fixed: {problem}")
        self._drainer.start()

    def _forget_after_fork(self) -> None:
        """In a forked child: forget the parent's writer, drainer and watcher.

        Their threads did not survive the fork and their locks may be held by
        parent threads; the child opens its own lane on its first emit, and
        restarts the watcher and (with ``drain=True``) a drainer there.
        """
        self._open_lock = threading.Lock()
        self._gap_lock = threading.Lock()
        self._owed_gaps = []  # the parent's drainer owed them, in the parent
        self._writer = None
        self._forked = True
        self._next_open = 0.0
        self._dropped = self._owed = self._suppressed = 0
        self._reentered = self._reentered_noted = 0
        self._last_error = self._error_kind = self._last_error_at = None
        self._restart_drainer = self._restart_drainer or self._drainer is not None
        self._restart_watcher = self._restart_watcher or self._watcher is not None
        if self._drainer is not None:  # its drain lock belongs to the parent
            forget_inherited_lock(getattr(self._drainer, "_lock", None))
        self._drainer = None
        self._watcher = None


class _LateDrops:
    """Records logged to a closed handler (``dictConfig`` again while threads log), per
    spool directory: the next handler of that spool in this process writes their gap.

    Re-entrant: a signal handler that logs to a closed handler may interrupt ``add``
    or ``take`` on the same thread. ``counts`` read without the lock is a hint.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.counts: Dict[str, int] = {}

    def add(self, spool_dir: str, count: int = 1) -> None:
        with self._lock:
            self.counts[spool_dir] = self.counts.get(spool_dir, 0) + count

    def take(self, spool_dir: str) -> int:
        with self._lock:
            return self.counts.pop(spool_dir, 0)

    def forget_after_fork(self) -> None:
        """In a forked child: the parent's counts are the parent's; the lock is new."""
        self._lock = threading.RLock()
        self.counts = {}


_LATE_DROPS = _LateDrops()


def _append_gap(writer: SpoolWriter, gap: Gap) -> None:
    """Write one of the drainer's gap records into ``writer``'s lane (the one place)."""
    writer.append_marker(Kind.GAP, gap.encode())


def _close_at_worker_exit(handler: SpoolHandler) -> None:
    """A ``multiprocessing`` child leaves with ``os._exit`` (no ``logging.shutdown``):
    close the handler from its exit finalizers, so the child's lane ends with a close
    record. Registered on the child's first open (``Process`` clears earlier ones)."""
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        mp_util.Finalize(handler, handler.close, exitpriority=10)


def _forget_handlers_in_child() -> None:
    _LATE_DROPS.forget_after_fork()
    for handler in list(_HANDLERS):
        handler._forget_after_fork()


if hasattr(os, "register_at_fork"):  # POSIX: each forked child spools through a lane of its own
    os.register_at_fork(after_in_child=_forget_handlers_in_child)
