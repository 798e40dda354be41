"""Commit policies: when a writer's records are fsynced (docs/FORMAT.md §7, "fsync modes").

- :class:`GroupCommit` (``fsync="always"``): the appender returns once an fsync
  covered its record; a committer thread fsyncs for every thread waiting;
- :class:`IntervalFlush` (``fsync="interval"``): a flusher thread fsyncs every
  ``interval_s`` (at most 0.2 s, docs/CONTRACT.md §4); appenders never wait;
- :class:`NoSync` (``fsync="never"``): the OS writes back when it likes.

A policy is a value the user passes (``SpoolConfig(fsync=GroupCommit())``);
:class:`Durability` is one writer's runtime of it: the ``accepted`` and ``durable``
watermarks, the group-commit leader (:meth:`Durability.sync`, used in every mode
by ``flush``) and the policy's background thread.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import Callable, ClassVar, Optional, Tuple, Union

from cerbistream_spool.errors import SpoolClosedError, SpoolConfigError
from cerbistream_spool.spool.fs import current

__all__ = [
    "COMMIT_POLICIES",
    "CommitPolicy",
    "Durability",
    "GroupCommit",
    "IntervalFlush",
    "NoSync",
    "commit_policy",
]

_COMMITTER_CHECK_S = 1.0  # how often a waiting appender checks that the committer lives


@dataclass(frozen=True)
class GroupCommit:
    """``fsync="always"``: return from append once the record is on disk (group commit)."""

    mode: ClassVar[str] = "always"
    waits: ClassVar[bool] = True  # the appender waits for its fsync

    def thread(self, durability: Durability) -> Optional[Callable[[], None]]:
        """The committer: one fsync after another while records wait.

        Appenders write, wake this thread and wait; each fsync covers every record
        written before it started, so while one runs the next group gathers.
        """
        d = durability

        def commit_loop() -> None:
            while True:
                with d.cond:
                    while d.durable >= d.accepted or d.failed[0] >= d.accepted or d.fd() is None:
                        if d.stop_event.is_set():
                            return
                        d.work.wait()
                d.sync_and_report()  # a failure was told to the waiters; the next record retries

        return commit_loop


@dataclass(frozen=True)
class IntervalFlush:
    """``fsync="interval"``: a flusher thread fsyncs every ``interval_s`` (0 < s <= 0.2)."""

    interval_s: float = 0.2
    mode: ClassVar[str] = "interval"
    waits: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not 0 < self.interval_s <= 0.2:
            raise SpoolConfigError("fsync_interval_s must be in (0, 0.2] (docs/CONTRACT.md §4)")

    def thread(self, durability: Durability) -> Optional[Callable[[], None]]:
        """The flusher; each round also runs the writer's idle check (a vanished lane)."""
        d, interval = durability, self.interval_s

        def flush_loop() -> None:
            while not d.stop_event.wait(interval):
                d.sync_and_report(then=d.idle)

        return flush_loop


@dataclass(frozen=True)
class NoSync:
    """``fsync="never"``: no fsync but at rotation, close and ``flush``."""

    mode: ClassVar[str] = "never"
    waits: ClassVar[bool] = False

    def thread(self, durability: Durability) -> Optional[Callable[[], None]]:
        """No background thread."""
        return None


CommitPolicy = Union[GroupCommit, IntervalFlush, NoSync]
COMMIT_POLICIES = ("always", "interval", "never")


def commit_policy(fsync: object, interval_s: float = 0.2) -> CommitPolicy:
    """The policy for an ``fsync`` option: a policy object, or its mode's name."""
    if isinstance(fsync, (GroupCommit, IntervalFlush, NoSync)):
        return fsync
    if fsync == "always":
        return GroupCommit()
    if fsync == "interval":
        return IntervalFlush(interval_s)
    if fsync == "never":
        return NoSync()
    raise SpoolConfigError(
        f"fsync must be one of {COMMIT_POLICIES} or GroupCommit(), IntervalFlush(interval_s),"
        f" NoSync(), not {fsync!r}"
    )


class Durability:
    """One writer's watermarks and fsyncs; its policy's thread.

    ``fd`` returns the active segment's descriptor (None between segments);
    ``idle`` is the writer's periodic check, ``report`` sets (or with None clears)
    its fsync error. ``cond`` guards ``durable``, ``failed``, ``syncing`` and the
    active descriptor; ``accepted`` is written by the appender under the writer's lock.
    """

    def __init__(
        self,
        policy: CommitPolicy,
        fd: Callable[[], Optional[int]],
        idle: Callable[[], None],
        report: Callable[[Optional[str]], None],
    ) -> None:
        self.policy = policy
        self.fd = fd
        self.idle = idle
        self.report = report
        self.accepted = 0  # last seq written to the OS
        self.durable = 0  # last seq fsynced
        self.closed = False  # the writer closed: waiters stop waiting once the fd is gone
        self._reset_threading()

    def _reset_threading(self) -> None:
        lock = threading.Lock()
        self.cond = threading.Condition(lock)  # durability waiters
        self.work = threading.Condition(lock)  # the committer waits here
        self.syncing = False
        self.failed: Tuple[int, str] = (0, "")  # (last seq of a failed fsync, error)
        self.stop_event = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self, name: str) -> None:
        """Start the policy's thread, if it has one."""
        target = self.policy.thread(self)
        if target is not None:
            self._thread = threading.Thread(target=target, name=name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread (bounded: 5 s)."""
        self.stop_event.set()
        with self.cond:
            self.work.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def after_fork(self) -> None:
        """In a forked child: the thread did not survive; locks held in the parent are replaced."""
        self._reset_threading()
        self.closed = True

    def sync(self, target: Optional[int] = None) -> None:
        """Group commit: one thread fsyncs for everyone waiting up to ``target``."""
        with self.cond:
            while True:
                goal = self.accepted if target is None else target
                if self.durable >= goal or self.fd() is None:
                    return
                if not self.syncing:
                    self.syncing = True
                    break
                self.cond.wait()
        with self.cond:
            upto, fd = self.accepted, self.fd()
        synced = False
        try:
            if fd is not None:
                current().fsync(fd)
            synced = True
        finally:
            with self.cond:
                self.syncing = False
                if synced:
                    self.durable = max(self.durable, upto)
                else:
                    self.failed = (upto, f"fsync failed: {sys.exc_info()[1]}")
                self.cond.notify_all()

    def sync_and_report(self, then: Optional[Callable[[], None]] = None) -> None:
        """A background round: :meth:`sync` (then ``then``), reporting the error or its end."""
        try:
            self.sync()
            if then is not None:
                then()
        except OSError as exc:
            self.report(f"fsync failed: {exc}")
        else:
            self.report(None)

    def await_durable(self, seq: int) -> None:
        """:class:`GroupCommit`: have the committer fsync, return once ``seq`` is on disk.

        Raises ``OSError`` when the fsync that covered ``seq`` failed (or its
        segment was closed unsynced), :class:`SpoolClosedError` after ``close``.
        """
        with self.cond:
            while self.durable < seq:
                failed_upto, error = self.failed
                if failed_upto >= seq:
                    raise OSError(error)
                if self.closed and self.fd() is None:
                    raise SpoolClosedError("spool writer closed before the record was synced")
                if not self.syncing:
                    self.work.notify()
                if not self.cond.wait(_COMMITTER_CHECK_S) and not self._committer_alive():
                    break
            else:
                return
        self.sync(seq)  # the committer is gone (it never should be): sync here instead

    def _committer_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
