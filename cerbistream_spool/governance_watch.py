"""Hot reload of cerbi_governance.json with watchdog (docs/CONTRACT.md §3).

A valid new version applies to the next record; an invalid one keeps the old
rules and is reported once per distinct error. Editors that save by rename
(write temp, move over) are handled as well as in-place writes.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Optional

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from cerbistream_spool.diagnostics import mark_internal_thread
from cerbistream_spool.errors import GovernanceConfigError
from cerbistream_spool.governance import Governance, load_governance

__all__ = ["GovernanceWatcher"]


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

    def start(self) -> None:
        """Start the watchdog observer thread on the file's directory."""
        observer = Observer()
        observer.daemon = True
        observer.schedule(self, os.path.dirname(self.path), recursive=False)
        observer.start()
        self._observer = observer

    def stop(self, timeout: float = 5.0) -> None:
        """Stop and join the observer (bounded)."""
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(timeout)

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
