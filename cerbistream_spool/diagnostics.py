"""Rate-limited reports to stderr: how the library tells about itself without logging.

Logging about ourselves through ``logging`` would feed our own handler (the Azure
Monitor exporter's #39104); so problems go to stderr, at most once per interval
per topic, with a count of what was suppressed in between.

A forked child gets a fresh lock in every reporter (``os.register_at_fork``): a
thread of the parent may have held it at the fork, and would never release it
in the child.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import weakref
from typing import Dict, Optional, TextIO, Tuple

__all__ = ["Reporter", "guard", "mark_internal_thread"]

guard = threading.local()  # .active: inside emit or one of our workers; .internal: a worker


def mark_internal_thread() -> None:
    """Records logged from the calling thread are never spooled (drainer, watcher threads)."""
    guard.active = True
    guard.internal = True


class Reporter:
    """Writes one line per topic per ``interval_s``; thread-safe."""

    def __init__(self, interval_s: float = 60.0, stream: Optional[TextIO] = None) -> None:
        self.interval_s = interval_s
        self._stream = stream
        self._lock = threading.Lock()
        self._last: Dict[str, Tuple[float, int]] = {}
        _REPORTERS.add(self)

    def report(self, topic: str, message: str) -> bool:
        """Print ``message`` unless ``topic`` was reported within the interval; True if printed."""
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._last.get(topic, (-1e18, 0))
            if now - last < self.interval_s:
                self._last[topic] = (last, suppressed + 1)
                return False
            self._last[topic] = (now, 0)
        extra = f" ({suppressed} similar suppressed)" if suppressed else ""
        stream = self._stream or sys.stderr
        try:
            stream.write(f"cerbistream_spool: {message}{extra}\n")
            stream.flush()
        except Exception:  # noqa: BLE001, S110 — stderr itself failing must not reach the app
            pass
        return True


_REPORTERS: weakref.WeakSet[Reporter] = weakref.WeakSet()


def _reinit_after_fork() -> None:
    for reporter in list(_REPORTERS):
        reporter._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_after_fork)
