"""Hot reload of cerbi_governance.json with watchdog (docs/CONTRACT.md §3).

A valid new version applies to the next record; an invalid one keeps the old
rules and is reported once per distinct error. Editors that save by rename
(write temp, move over) are handled as well as in-place writes.

watchdog logs (DEBUG) each inotify event of the watched directory from its own
threads. With the root logger at DEBUG and a log file in that directory, each line
written would be an event logged as the next line, without end; so the records
watchdog logs from the threads of our observers are dropped (:data:`_OWN_THREADS`,
a filter on watchdog's loggers). Records of the app's own watchdog observers pass.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable, Optional, Set

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from cerbistream_spool.diagnostics import mark_internal_thread
from cerbistream_spool.errors import GovernanceConfigError
from cerbistream_spool.governance import Governance, load_governance

__all__ = ["GovernanceWatcher"]


class _OwnThreads(logging.Filter):
    """Drops the records logged from the threads of our observers."""

    def __init__(self) -> None:
        super().__init__()
        self.idents: Set[int] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread not in self.idents


_OWN_THREADS = _OwnThreads()


def _filter_watchdog_loggers() -> None:
    """Put :data:`_OWN_THREADS` on every watchdog logger (a logger's filters see only the
    records logged on it, not those of its children)."""
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if (
            (name == "watchdog" or name.startswith("watchdog."))
            and isinstance(logger, logging.Logger)
            and _OWN_THREADS not in logger.filters
        ):
            logger.addFilter(_OWN_THREADS)


class GovernanceWatcher(FileSystemEventHandler):
    """Watches one governance file; calls ``on_change(new)`` or ``on_error(exc)``."""

    def __init__(
        self,
        path: str,
        profile: str,
        current: Governance,
        on_change: Callable[[Governance], None],
        on_error: Callable[[GovernanceConfigError], None],
    ) -> None:
        super().__init__()
        self.path = os.path.abspath(path)
        self.profile = profile
        self._current = current
        self._on_change = on_change
        self._on_error = on_error
        self._last_error: Optional[str] = None
        self._lock = threading.Lock()
        self._observer: Any = None
        self._threads: Set[int] = set()  # idents of the observer's threads (_OWN_THREADS)

    def start(self) -> None:
        """Start the watchdog observer thread on the file's directory."""
        _filter_watchdog_loggers()
        before = set(threading.enumerate())
        observer = Observer()
        observer.daemon = True
        observer.schedule(self, os.path.dirname(self.path), recursive=False)
        observer.start()  # the emitter and inotify reader threads have started when it returns
        self._threads = {
            t.ident for t in threading.enumerate() if t not in before and t.ident is not None
        }
        _OWN_THREADS.idents |= self._threads
        _filter_watchdog_loggers()  # loggers created while starting
        self._observer = observer

    def stop(self, timeout: float = 5.0) -> None:
        """Stop and join the observer (bounded)."""
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(timeout)
        _OWN_THREADS.idents -= self._threads
        self._threads = set()

    def on_any_event(self, event: FileSystemEvent) -> None:
        """React to writes, creates and moves that end at the watched path."""
        mark_internal_thread()  # watchdog's own log records from this thread are not spooled
        paths = {os.fsdecode(event.src_path), os.fsdecode(getattr(event, "dest_path", "") or "")}
        if self.path in {os.path.abspath(p) for p in paths if p} and event.event_type in (
            "modified",
            "created",
            "moved",
            "closed",
        ):
            self.reload()

    def reload(self) -> None:
        """Load the file now; apply it if valid and changed, else report once."""
        with self._lock:
            try:
                new = load_governance(self.path, self.profile)
            except GovernanceConfigError as exc:
                if str(exc) != self._last_error:
                    self._last_error = str(exc)
                    self._on_error(exc)
                return
            self._last_error = None
            if new.sha256 == self._current.sha256:
                return
            self._current = new
        self._on_change(new)
