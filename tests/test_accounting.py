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
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from spoolkit import build, wait_until
from tiers import examples

from cerbistream_spool import verify
from cerbistream_spool.diagnostics import Reporter
from cerbistream_spool.drain import Drainer
from cerbistream_spool.errors import SpoolFullError
from cerbistream_spool.spool import SpoolConfig, SpoolReader, SpoolWriter
from cerbistream_spool.spool.claims import MOST_CLAIMS
from cerbistream_spool.spool.cursor import CURSOR_FILE, Cursor, read_cursor
from cerbistream_spool.spool.lanes import drain_lock, lane_dir, try_lock
from cerbistream_spool.transports.base import OutgoingMessage, SendResult
from cerbistream_spool.transports.memory import MemoryTransport

REPO = Path(__file__).resolve().parent.parent


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
    drainer = Drainer.for_writer(
        spool_dir,
        transport,
        writer,
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


FULL_DISK_APP = Path(__file__).resolve().parent / "full_disk_app.py"


def _on_a_full_tmpfs(tmp_path: Path, app: Path = FULL_DISK_APP) -> Dict[str, Any]:
    """Run ``app`` (tests/full_disk_app.py) on a 512 KiB tmpfs in a private mount namespace."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs unshare(1) to mount a small tmpfs")
    mount = tmp_path / "mnt"
    mount.mkdir()
    script = 'mount -t tmpfs -o size=512k tmpfs "$1" || exit 77; shift; exec "$@"'
    proc = subprocess.run(
        [
            unshare,
            "-rm",
            "sh",
            "-c",
            script,
            "sh",
            str(mount),
            sys.executable,
            str(app),
            str(mount),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(REPO),
        check=False,
    )
    if proc.returncode == 77 or "unshare failed" in proc.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    result: Dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def full_disk(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    return _on_a_full_tmpfs(tmp_path_factory.mktemp("full"))


def test_on_a_full_disk_the_drainer_acks_and_ships_each_record_once(
    full_disk: Dict[str, Any],
) -> None:
    """Acks write the preallocated cursor in place: no new block, so the drainer
    advances (and frees space) instead of resending the same batch forever."""
    drain = full_disk["drain"]
    assert drain["pending"] == 0, drain
    assert drain["sent"] == drain["unique"] == 300, drain


def test_on_a_full_disk_drop_oldest_frees_space_instead_of_dropping_new_records(
    full_disk: Dict[str, Any],
) -> None:
    writer = full_disk["writer"]
    stats = writer["stats"]
    assert writer["failed"] == 0 and stats["dropped"] == 0, writer
    assert stats["lost"] > 0 and writer["gaps"].get("overflow", 0) > 0, writer
    assert writer_adds_up(stats), stats


def test_a_version_1_cursor_is_read_and_replaced_by_the_first_ack(spool_dir: str) -> None:
    build(spool_dir, 30)
    ldir = lane_dir(spool_dir, 0)
    path = os.path.join(ldir, CURSOR_FILE)
    reader = SpoolReader(spool_dir)
    first = next(reader.batches(max_records=10))
    os.unlink(path)
    with open(path, "wb") as fh:  # what an older release wrote: 60 bytes
        fh.write(Cursor(0, first.last_seq, first.records[-1].hash).encode())
    assert read_cursor(ldir, 0) == Cursor(0, first.last_seq, first.records[-1].hash)
    assert verify(spool_dir).valid
    reader = SpoolReader(spool_dir)
    batch = next(reader.batches(max_records=10))
    assert batch.first_seq == first.last_seq + 1  # the old cursor is honoured
    reader.ack(batch)
    assert os.path.getsize(path) == 1024
    assert read_cursor(ldir, 0) == Cursor(0, batch.last_seq, batch.records[-1].hash)
    assert verify(spool_dir).valid


def test_a_torn_cursor_slot_leaves_the_previous_cursor(spool_dir: str) -> None:
    build(spool_dir, 30)
    ldir = lane_dir(spool_dir, 0)
    reader = SpoolReader(spool_dir)
    batches = list(reader.batches(max_records=10))
    reader.ack(batches[0])
    before = read_cursor(ldir, 0)
    inode = os.stat(os.path.join(ldir, CURSOR_FILE)).st_ino
    reader.ack(batches[1])
    assert os.stat(os.path.join(ldir, CURSOR_FILE)).st_ino == inode  # written in place
    newer = read_cursor(ldir, 0)
    assert isinstance(newer, Cursor) and newer.acked_seq == batches[1].last_seq
    with open(os.path.join(ldir, CURSOR_FILE), "r+b") as fh:  # tear the slot just written
        data = fh.read()
        seq = newer.acked_seq.to_bytes(8, "little")
        slot = next(i for i in (0, 1) if data[i * 512 + 24 : i * 512 + 32] == seq)
        fh.seek(slot * 512 + 40)
        fh.write(b"\xff" * 8)
    assert read_cursor(ldir, 0) == before


LOCK_APP = Path(__file__).resolve().parent / "drain_lock_app.py"


def _held_by_another(spool_dir: str) -> bool:
    """True when another process holds ``locks/drain.lock`` (as it is now on disk)."""
    if not os.path.isdir(os.path.join(spool_dir, "locks")):
        return False
    lock = drain_lock(spool_dir)
    if try_lock(lock):
        lock.release()
        return False
    return True


def test_a_drainer_whose_spool_vanished_takes_the_new_drain_lock(
    spool_dir: str, tmp_path: Path
) -> None:
    """The spool is removed under an app with an in-process drainer; the writer makes it
    again. The app's drainer must hold the *new* drain lock, so a second drainer
    (another process: this one) stands by instead of shipping beside it."""
    out = tmp_path / "a.jsonl"
    app = subprocess.Popen(
        [sys.executable, str(LOCK_APP), spool_dir, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(REPO),
    )

    def run(cmd: str) -> None:
        assert app.stdin is not None and app.stdout is not None
        app.stdin.write(cmd + "\n")
        app.stdin.flush()
        assert app.stdout.readline(), app.communicate(timeout=10)[1]

    try:
        run("emit 5")
        assert wait_until(lambda: out.exists() and len(out.read_text().splitlines()) == 5, 10)
        assert _held_by_another(spool_dir)
        os.rename(spool_dir, f"{spool_dir}.gone")  # (rm -rf races the app's own writes)
        time.sleep(0.15)  # past the writer's 100 ms check: the next append recreates it
        run("emit 5")
        assert wait_until(lambda: _held_by_another(spool_dir), 10), "nobody holds the new lock"
        second = Drainer(spool_dir, MemoryTransport())
        try:
            assert second.run_once() == 0
            assert second.transport.message_ids() == []  # type: ignore[attr-defined]
        finally:
            second.close()
        assert wait_until(lambda: len(out.read_text().splitlines()) == 10, 10)
        app.communicate("quit\n", timeout=30)
    finally:
        if app.poll() is None:
            app.kill()
            app.communicate(timeout=10)
    assert app.returncode == 0


# -- drop_oldest: every lost seq claimed by exactly one gap --------------------------------

TIGHT = SpoolConfig(
    fsync="never", overflow="drop_oldest", segment_max_bytes=4096, max_spool_bytes=8192
)


class LossBook:
    """A writer and a reader driven by a test, and what became of each event."""

    def __init__(self, spool_dir: str, config: SpoolConfig = TIGHT) -> None:
        self.spool_dir = spool_dir
        self.writer = SpoolWriter(spool_dir, config)
        self.reader = SpoolReader(spool_dir)
        self.appended: List[int] = []
        self.delivered: List[int] = []

    def append(self, n: int, size: int = 900) -> None:
        for _ in range(n):
            self.appended.append(self.writer.append({"n": len(self.appended), "pad": "x" * size}))

    def deliver(self, records: int) -> None:
        batch = self.reader.read_batch(max_records=records)
        if batch is not None:
            self.delivered += [rec.seq for rec in batch.records]
            self.reader.ack(batch)

    def check(self) -> None:
        """Lost events = appended less delivered less on disk; the gaps of the lane and of
        the ledger claim each lost seq once, nothing delivered or on disk, and their counts
        add up to the lost events and to the writer's ``lost``."""
        stats = self.writer.stats()
        on_disk = SpoolReader(self.spool_dir, from_start=True, remove_idle_lanes=False, sweep=False)
        kept = {rec.seq for batch in on_disk.batches() for rec in batch.records}
        lost = set(self.appended) - set(self.delivered) - kept
        report = verify(self.spool_dir)
        assert report.valid, report.problems
        claimed: Dict[int, int] = collections.Counter()
        total = 0
        for gap in report.gaps:
            assert gap["reason"] == "overflow", gap
            total += gap["count"]
            for seq in range(gap["first_seq"], gap["last_seq"] + 1):
                claimed[seq] += 1
        assert {seq for seq, n in claimed.items() if n > 1} == set(), report.gaps
        assert lost <= set(claimed), (sorted(lost - set(claimed)), report.gaps)
        assert not set(claimed) & (set(self.delivered) | kept), report.gaps
        assert total == len(lost) == stats["lost"], (total, len(lost), stats, report.gaps)
        assert writer_adds_up(stats), stats


def test_drop_oldest_past_the_cursor_still_claims_the_older_hole_once(spool_dir: str) -> None:
    """The cursor passes a hole (dropped records), then the segment holding the hole's gap
    record is dropped too: the gap written then carries the older range, so no lost seq
    is left unclaimed below the cursor and no range is claimed twice."""
    book = LossBook(spool_dir)
    book.append(12)
    book.deliver(1)
    book.append(12)
    book.check()
    assert book.writer.stats()["lost"] == 17
    book.writer.close()


def test_a_delivered_gap_record_in_a_segment_drop_oldest_unlinks_goes_to_the_ledger(
    spool_dir: str,
) -> None:
    """The property test's find: the segment holding a delivered gap record (the cursor
    passed it) is unlinked by drop_oldest, not by the reader: the gap must go to the
    losses ledger first, as the reader's unlink does, or the loss it names is in no count."""
    book = LossBook(spool_dir)
    book.append(1, 900)
    book.append(4, 1500)
    book.append(1, 900)  # the first segment dropped: a gap record for 1..3
    for n in (1, 1, 1, 2):
        book.deliver(n)  # the cursor passes the gap record
    book.append(4, 1500)  # the segment holding it is dropped
    book.check()
    assert [g.get("source") for g in verify(spool_dir).gaps] == ["ledger"]
    book.writer.close()


@settings(max_examples=examples(40, 8), deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.integers(1, 12), st.sampled_from([200, 900, 1500])),
            st.tuples(st.just("deliver"), st.integers(1, 6), st.just(0)),
        ),
        min_size=1,
        max_size=14,
    )
)
def test_drop_oldest_claims_every_lost_seq_once_under_random_appends_and_acks(
    tmp_path_factory: pytest.TempPathFactory, ops: Sequence[Any]
) -> None:
    book = LossBook(str(tmp_path_factory.mktemp("claims") / "spool"))
    try:
        for op, n, size in ops:
            if op == "append":
                book.append(n, size)
            else:
                book.deliver(n)
            book.check()
    finally:
        book.writer.close()
        book.reader.release()


def test_a_spool_that_stays_full_keeps_a_bounded_number_of_gap_records(spool_dir: str) -> None:
    """No drainer for days at a tiny cap: every drop carries the older claims forward.
    Unbounded, the gap records grew until they alone filled the cap and append spun for
    ever (the adversarial pass: 500 appends at 8 KiB never returned). Now the claims of
    one drop are coarsened (spool/claims.py), and the counts stay exact."""
    config = SpoolConfig(
        fsync="never", overflow="drop_oldest", segment_max_bytes=4096, max_spool_bytes=8192
    )
    with SpoolWriter(spool_dir, config) as writer:
        for i in range(3000):
            writer.append({"n": i, "pad": "x" * 100})
        stats = writer.stats()
    report = verify(spool_dir)
    assert report.valid, report.problems
    assert stats["lost"] > 2900
    assert sum(g["count"] for g in report.gaps) == stats["lost"]
    assert len(report.gaps) <= 2 * MOST_CLAIMS + 4  # bounded, whatever the number lost
