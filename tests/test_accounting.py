"""Each event is counted exactly once, however the spool is stressed.

- ``drop_oldest`` with a slow drainer: what the drainer has read (in flight to
  the broker) is never dropped and counted lost (it would then be delivered too).
- A full disk: acks never need new disk blocks, so the drainer advances and the
  broker gets no endless duplicates.
- Losses survive the removal of their fully delivered lane.
- The drain lock: a drainer whose lock file was removed stands down.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import signal
import threading
import time
import warnings
from typing import Any, Dict, List, Sequence

from spoolkit import wait_until

from cerbistream_spool.diagnostics import Reporter
from cerbistream_spool.drain import Drainer
from cerbistream_spool.errors import SpoolFullError
from cerbistream_spool.spool import SpoolConfig, SpoolWriter
from cerbistream_spool.transports.base import OutgoingMessage, SendResult
from cerbistream_spool.transports.memory import MemoryTransport


class SlowTransport(MemoryTransport):
    """A broker that takes ``delay`` seconds per send, so batches stay in flight."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def send(self, messages: Sequence[OutgoingMessage]) -> SendResult:
        time.sleep(self.delay)
        return super().send(messages)


def writer_adds_up(stats: Dict[str, Any]) -> bool:
    accepted = stats["events"] + stats["dropped"]
    return bool(
        accepted
        == stats["events_delivered"] + stats["pending_records"] + stats["dropped"] + stats["lost"]
    )


def test_drop_oldest_never_drops_what_a_slow_drainer_has_in_flight(spool_dir: str) -> None:
    config = SpoolConfig(
        fsync="never", overflow="drop_oldest", segment_max_bytes=4096, max_spool_bytes=16384
    )
    writer = SpoolWriter(spool_dir, config)
    transport = SlowTransport(0.02)
    drainer = Drainer(
        spool_dir,
        transport,
        writer=writer,
        batch_max_records=20,
        idle_poll_s=0.01,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
    )
    drainer.start()
    try:
        for i in range(3000):
            with contextlib.suppress(SpoolFullError):  # counted in "dropped"
                writer.append({"LogId": f"id-{i}", "n": i, "pad": "x" * 100})
            if i % 50 == 0:
                time.sleep(0.005)
        writer.flush()
        assert wait_until(lambda: writer.stats()["pending_records"] == 0, 30)
    finally:
        drainer.stop()
    stats = writer.stats()
    received = collections.Counter(transport.message_ids())
    assert stats["lost"] > 0  # the scenario did drop
    assert writer_adds_up(stats), stats
    assert stats["events_delivered"] == len(received), (stats, len(received))
    writer.close()


def test_a_child_forked_while_a_thread_holds_the_reporter_lock_still_reports() -> None:
    """A thread of the parent holds ``Reporter._lock`` at the fork; the child reports
    anyway (its lock is new) instead of deadlocking."""
    reporter = Reporter(interval_s=0.0, stream=io.StringIO())
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with reporter._lock:
            held.set()
            release.wait(30)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert held.wait(10)
    with warnings.catch_warnings():  # 3.12+ warns when the process has other threads
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover — runs in the child
        code = 1
        try:
            code = 0 if reporter.report("t", "from the child") else 2
        finally:
            os._exit(code)
    exit_code: List[int] = []

    def reaped() -> bool:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            exit_code.append(os.waitstatus_to_exitcode(status))
        return bool(done)

    try:
        finished = wait_until(reaped, 20)
    finally:
        release.set()
        thread.join(10)
        if not exit_code:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert finished, "the forked child deadlocked on the reporter's lock"
    assert exit_code == [0]
