"""Faults injected through the filesystem seam: each test pins what a component claims.

Every fault is a real OSError from a :class:`FaultyFileSystem` behind ``fsio.use`` on a
real spool; the claims are those of docs/FORMAT.md §5, §7, §8, §11 and the module
docstrings of fsio, reader, recovery and drain.
"""

from __future__ import annotations

import errno
import os
import shutil
from typing import Iterator, List

import pytest
from faulty_fs import FaultyFileSystem
from spoolkit import SMALL, build, event, event_ids, flip, read_all, segments

from cerbistream_spool.drain import Drainer
from cerbistream_spool.spool import SpoolReader, SpoolWriter, fsio
from cerbistream_spool.spool.chain import GENESIS, Chain
from cerbistream_spool.spool.cursor import Cursor, read_cursor
from cerbistream_spool.spool.lanes import QUARANTINE_DIR, lane_dir
from cerbistream_spool.spool.losses import (
    LOSSES_DIR,
    LedgerEntry,
    read_ledger,
    record_gaps,
)
from cerbistream_spool.spool.markers import Gap, GapReason
from cerbistream_spool.spool.record import Kind, Record, canonical_bytes, encode_body
from cerbistream_spool.spool.recovery import recover_lane
from cerbistream_spool.spool.segments import SegmentHeader, create_segment
from cerbistream_spool.transports.memory import MemoryTransport


@pytest.fixture
def faults() -> Iterator[FaultyFileSystem]:
    """The seam routed through a FaultyFileSystem for the test."""
    with fsio.use(FaultyFileSystem()) as fs:
        assert isinstance(fs, FaultyFileSystem)
        yield fs


def _cursor(spool_dir: str, lane: int = 0) -> Cursor:
    found = read_cursor(lane_dir(spool_dir, lane), lane)
    assert isinstance(found, Cursor), found
    return found


def _tmp_files(directory: str) -> List[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".tmp"))


def test_use_swaps_the_filesystem_for_the_block_and_restores_it_after_an_error() -> None:
    real = fsio.current()
    fake = FaultyFileSystem()
    with pytest.raises(RuntimeError), fsio.use(fake):
        assert fsio.current() is fake
        raise RuntimeError
    assert fsio.current() is real


# -- the cursor (docs/FORMAT.md §5; drain: a failure resends from the cursor) ---------------


def test_eio_on_the_cursor_fdatasync_fails_the_pass_and_loses_nothing(
    spool_dir: str, faults: FaultyFileSystem
) -> None:
    """The ack is not reported persisted (run_once raises, the drainer rewinds to what the
    cursor file says); the next pass finishes and every record was delivered. (Whether the
    batch goes again depends on the page cache: the failed fdatasync did not undo the
    pwrite, so the cursor may read as written — at least once either way.)"""
    build(spool_dir, 30)
    transport = MemoryTransport()
    drainer = Drainer(spool_dir, transport)
    try:
        faults.fail("fdatasync", "*/cursor")
        with pytest.raises(OSError, match="injected"):
            drainer.run_once()
        assert faults.rules[0].hits == 1
        drainer.run_once()
        assert drainer.pending_events() == 0
        assert sorted(set(transport.message_ids())) == sorted(transport.message_ids()[:30])
        assert len(set(transport.message_ids())) == 30
    finally:
        drainer.close()


def test_an_ack_retried_after_a_failed_cursor_write_persists_it(
    spool_dir: str, faults: FaultyFileSystem
) -> None:
    """A failed cursor write is not an ack: acking the same batch again writes it."""
    build(spool_dir, 10)
    reader = SpoolReader(spool_dir, remove_idle_lanes=False)
    batch = reader.read_batch()
    assert batch is not None
    faults.fail("pwrite", "*/cursor")
    with pytest.raises(OSError):
        reader.ack(batch)
    reader.ack(batch)
    assert _cursor(spool_dir).acked_seq == batch.last_seq


def test_a_short_cursor_write_raises_and_the_previous_cursor_still_reads(
    spool_dir: str, faults: FaultyFileSystem
) -> None:
    """A slot written short is a torn ack: the other slot is the cursor (two slots)."""
    build(spool_dir, 10)
    reader = SpoolReader(spool_dir, remove_idle_lanes=False)
    first = reader.read_batch(max_records=4)
    assert first is not None
    reader.ack(first)
    second = reader.read_batch(max_records=4)
    assert second is not None
    faults.short_writes("*/cursor", 40)  # the slot's CRC is at byte 64
    with pytest.raises(OSError, match="short write"):
        reader.ack(second)
    assert _cursor(spool_dir).acked_seq == first.last_seq
    faults.clear()
    reader.ack(second)
    assert _cursor(spool_dir).acked_seq == second.last_seq


# -- the losses ledger (docs/FORMAT.md §11) ---------------------------------------------


def _gap_entry(seq: int) -> LedgerEntry:
    body = encode_body({"reason": "write-error", "count": 2, "first_seq": None, "last_seq": None})
    digest = Chain(None).digest(GENESIS, canonical_bytes(seq, Kind.GAP, 0, body))
    return LedgerEntry.of(0, Record(seq, Kind.GAP, 0, GENESIS, digest, body), False, 1)


@pytest.mark.parametrize("fault", ["enospc-mid-write", "eio-on-fsync"])
def test_a_failed_ledger_append_is_cut_back_and_counts_as_nothing_recorded(
    spool_dir: str, faults: FaultyFileSystem, fault: str
) -> None:
    """record_gaps raises, the file is cut back to its last valid frame (no torn frame is
    left behind), the earlier entries read as before, and the next append succeeds."""
    fsio.ensure_dir(spool_dir)
    assert record_gaps(spool_dir, [_gap_entry(7)]) == 1
    ledger = os.path.join(spool_dir, LOSSES_DIR, "ledger")
    before = os.path.getsize(ledger)
    if fault == "enospc-mid-write":
        faults.disk_room("*/losses/ledger", 10)
    else:
        faults.fail("fsync", "*/losses/ledger")
    with pytest.raises(OSError, match="injected"):
        record_gaps(spool_dir, [_gap_entry(9)])
    assert os.path.getsize(ledger) == before
    view = read_ledger(spool_dir)
    assert [e.seq for e in view.entries] == [7]
    assert view.problems == []
    faults.clear()
    assert record_gaps(spool_dir, [_gap_entry(9)]) == 1
    assert [e.seq for e in read_ledger(spool_dir).entries] == [7, 9]


def test_enospc_writing_a_new_ledger_file_leaves_neither_ledger_nor_temp(
    spool_dir: str, faults: FaultyFileSystem
) -> None:
    fsio.ensure_dir(spool_dir)
    faults.disk_room("*/losses/ledger.*.tmp", 20)
    with pytest.raises(OSError, match="No space"):
        record_gaps(spool_dir, [_gap_entry(7)])
    assert os.listdir(os.path.join(spool_dir, LOSSES_DIR)) == []
    assert read_ledger(spool_dir).entries == []


def test_a_full_disk_for_the_ledger_keeps_the_gap_segment_and_delivery_goes_on(
    spool_dir: str, faults: FaultyFileSystem
) -> None:
    """The cursor still moves and the segments without gaps are unlinked; the one holding
    the gap stays (losses_error says why) until an ack can record it."""
    with SpoolWriter(spool_dir, SMALL) as writer:
        for i in range(60):
            writer.append(event(i))
        gap_seq = writer.append_body(Gap(GapReason.WRITE_ERROR, 3, "test").encode(), Kind.GAP)
        for i in range(60, 200):
            writer.append(event(i))
    assert len(segments(spool_dir)) > 4
    faults.fail("open", "*/losses/ledger*", errno.ENOSPC, times=-1)
    reader = SpoolReader(spool_dir, remove_idle_lanes=False)
    delivered = []
    for batch in reader.batches():
        delivered += event_ids(batch.records)
        reader.ack(batch)
    assert delivered == [f"id-{i}" for i in range(200)]
    assert reader.losses_error is not None and "kept" in reader.losses_error
    last = segments(spool_dir)[-1][0]
    assert _cursor(spool_dir).acked_seq >= last  # the cursor moved on
    kept = [base for base, _ in segments(spool_dir)[:-1]]
    assert len(kept) == 1 and kept[0] <= gap_seq  # only the gap's segment stayed
    assert read_ledger(spool_dir).entries == []
    faults.clear()
    with SpoolWriter(spool_dir, SMALL) as writer:  # more to deliver: the next ack retries
        for i in range(200, 300):
            writer.append(event(i))
    for batch in reader.batches():
        reader.ack(batch)
    assert reader.losses_error is None
    assert [e.seq for e in read_ledger(spool_dir).entries] == [gap_seq]
    assert all(base > gap_seq for base, _ in segments(spool_dir))


# -- atomic_write and the helpers (spool/fsio.py) ------------------------------------------


def test_atomic_write_completes_through_short_writes(
    tmp_path: str, faults: FaultyFileSystem
) -> None:
    path = os.path.join(str(tmp_path), "doc")
    data = bytes(range(256)) * 4
    faults.short_writes("*.tmp", 7)
    fsio.atomic_write(path, data)
    with open(path, "rb") as fh:
        assert fh.read() == data
    assert len(faults.ops("write")) == -(-len(data) // 7)


@pytest.mark.parametrize("fault", ["enospc-mid-write", "eio-on-fsync", "eio-on-rename"])
def test_a_failed_atomic_write_leaves_the_old_file_and_no_temp(
    tmp_path: str, faults: FaultyFileSystem, fault: str
) -> None:
    path = os.path.join(str(tmp_path), "doc")
    fsio.atomic_write(path, b"old")
    if fault == "enospc-mid-write":
        faults.disk_room("*.tmp", 5)
    elif fault == "eio-on-fsync":
        faults.fail("fsync", "*.tmp")
    else:
        faults.fail("replace", path)
    with pytest.raises(OSError, match="injected"):
        fsio.atomic_write(path, b"new contents")
    with open(path, "rb") as fh:
        assert fh.read() == b"old"
    assert _tmp_files(str(tmp_path)) == []


def test_a_failing_directory_fsync_after_the_rename_is_reported_not_swallowed(
    tmp_path: str, faults: FaultyFileSystem
) -> None:
    """The rename happened (the file is complete, never partial) but is not durable:
    the caller is told, so it does not report the write as persisted."""
    path = os.path.join(str(tmp_path), "doc")
    faults.fail("fsync_dir", str(tmp_path))
    with pytest.raises(OSError, match="injected"):
        fsio.atomic_write(path, b"new contents")
    with open(path, "rb") as fh:
        assert fh.read() == b"new contents"
    assert _tmp_files(str(tmp_path)) == []
    ops = [op for op, _ in faults.log if op in ("fsync", "replace", "fsync_dir")]
    assert ops == ["fsync", "replace", "fsync_dir"]  # write → fsync → rename → fsync dir


def test_a_failing_directory_fsync_creating_a_segment_leaves_no_half_made_file(
    spool_dir: str, faults: FaultyFileSystem
) -> None:
    """A segment is used only once its directory entry is durable; a failed one is
    removed so the retry (O_EXCL) can create it (docs/FORMAT.md §7)."""
    ldir = lane_dir(spool_dir, 0)
    fsio.ensure_dir(ldir)
    header = SegmentHeader(0, 1, 0, GENESIS)
    faults.fail("fsync_dir", ldir)
    with pytest.raises(OSError, match="injected"):
        create_segment(ldir, header)
    assert os.listdir(ldir) == []
    fd, _path = create_segment(ldir, header)
    os.close(fd)
    assert len(segments(spool_dir)) == 1


# -- reading segments (spool/reader.py: never skipped silently) ---------------------------


@pytest.mark.parametrize("op", ["open", "mmap"])
@pytest.mark.parametrize("pin", [False, True])
def test_eio_reading_a_segment_is_reported_and_never_stepped_over(
    spool_dir: str, faults: FaultyFileSystem, op: str, pin: bool
) -> None:
    """Records of an unreadable segment are neither skipped nor acked past, its file
    stays, the reader reports it; once it reads again every record is delivered once."""
    build(spool_dir, 200)
    segs = segments(spool_dir)
    assert len(segs) >= 4
    stuck_base, stuck = segs[2]
    faults.fail(op, stuck, times=-1)
    reader = SpoolReader(spool_dir, pin=pin)
    got = []
    for _ in range(3):  # the lane waits at the unreadable segment, pass after pass
        for batch in reader.batches():
            got += batch.records
            reader.ack(batch)
    assert got and max(r.seq for r in got) < stuck_base
    assert os.path.exists(stuck)
    assert _cursor(spool_dir).acked_seq < stuck_base
    assert any(
        p["kind"] == "io" and p["segment"] == os.path.basename(stuck) for p in reader.problems
    )
    faults.clear()
    for batch in reader.batches():
        got += batch.records
        reader.ack(batch)
    assert event_ids(got) == [f"id-{i}" for i in range(200)]


# -- recovery (docs/FORMAT.md §8: only I/O errors raise) --------------------------------


def _torn_spool(spool_dir: str) -> str:
    build(spool_dir, 20)
    path = segments(spool_dir)[-1][1]
    with open(path, "ab") as fh:
        fh.write(b"\x40\x00\x00\x00partial frame")  # a frame cut short by a crash
    return path


@pytest.mark.parametrize("op", ["ftruncate", "fsync"])
def test_a_failing_truncate_of_a_torn_tail_raises_and_the_next_open_recovers(
    spool_dir: str, faults: FaultyFileSystem, op: str
) -> None:
    path = _torn_spool(spool_dir)
    torn_size = os.path.getsize(path)
    faults.fail(op, path)
    with pytest.raises(OSError, match="injected"):
        recover_lane(spool_dir, 0)
    state = recover_lane(spool_dir, 0)
    if op == "ftruncate":  # nothing was done: the next open does it all
        assert state.truncated_bytes == 17
    else:  # truncated, not known durable: the next open truncates nothing more, loses nothing
        assert os.path.getsize(path) == torn_size - 17
    assert event_ids(read_all(spool_dir)) == [f"id-{i}" for i in range(20)]


def test_a_writer_whose_recovery_fails_releases_its_lane_for_the_next_open(
    spool_dir: str, faults: FaultyFileSystem
) -> None:
    """A restarted app reopens lane 0 and continues its chain (docs/FORMAT.md §6), also
    after an open that failed on an I/O error."""
    _torn_spool(spool_dir)
    faults.fail("ftruncate", "*.seg")
    with pytest.raises(OSError, match="injected") as failed:  # its traceback keeps it alive
        SpoolWriter(spool_dir, SMALL)
    with SpoolWriter(spool_dir, SMALL) as writer:
        assert writer.lane == 0
        writer.append(event(20))
    del failed
    assert event_ids(read_all(spool_dir)) == [f"id-{i}" for i in range(21)]


def _corrupt_middle(spool_dir: str, n: int = 20) -> str:
    """A spool whose last segment has a bad frame with valid frames after it."""
    build(spool_dir, n)
    path = segments(spool_dir)[-1][1]
    flip(path, os.path.getsize(path) // 2)
    return path


@pytest.mark.parametrize("fault", ["eio-on-quarantine-dir-fsync", "enospc-writing-the-prefix"])
def test_a_failed_quarantine_in_recovery_loses_no_valid_record(
    spool_dir: str, faults: FaultyFileSystem, fault: str
) -> None:
    """Corruption with valid frames after it: the original goes to quarantine and its
    valid prefix stays in the lane. When that fails midway, the next open still finds
    every valid record in the lane and continues the chain past the damaged range."""
    path = _corrupt_middle(spool_dir)
    twin = spool_dir + "-twin"
    shutil.copytree(spool_dir, twin)
    expected = recover_lane(twin, 0)  # the same spool, recovered without a fault
    if fault == "eio-on-quarantine-dir-fsync":
        faults.fail("fsync_dir", "*/" + QUARANTINE_DIR)
    else:
        faults.disk_room(os.path.dirname(path) + "/*.tmp", 100)
    with pytest.raises(OSError, match="injected"):
        recover_lane(spool_dir, 0)
    faults.clear()
    state = recover_lane(spool_dir, 0)
    assert state.gaps == expected.gaps and state.gaps  # the damaged range has its gap
    assert state.next_seq == expected.next_seq  # no seq is given out again
    assert event_ids(read_all(spool_dir)) == event_ids(read_all(twin))  # the valid prefix
    assert os.listdir(os.path.join(spool_dir, QUARANTINE_DIR))


# -- the drainer's quarantine copy (drain.py: copied durably before the ack) ------------


def test_a_failed_quarantine_copy_acks_nothing_past_the_damage(
    spool_dir: str, faults: FaultyFileSystem
) -> None:
    build(spool_dir, 200)
    segs = segments(spool_dir)
    damaged = segs[1][1]
    flip(damaged, os.path.getsize(damaged) // 2)
    transport = MemoryTransport()
    drainer = Drainer(spool_dir, transport)
    try:
        faults.fail("fsync", "*/" + QUARANTINE_DIR + "/*")
        with pytest.raises(OSError, match="injected"):
            drainer.run_once()
        assert _cursor(spool_dir).acked_seq < segs[2][0]
        assert os.path.exists(damaged)
        drainer.run_once()
        assert drainer.pending_events() == 0
        assert drainer.stats()["corrupt_records"] >= 1
        assert os.listdir(os.path.join(spool_dir, QUARANTINE_DIR))
    finally:
        drainer.close()


# -- the writer, where it goes through the seam (segment creation) ----------------------


def test_enospc_creating_a_segment_drops_records_counted_in_one_gap_and_writing_goes_on(
    spool_dir: str, faults: FaultyFileSystem
) -> None:
    """Rotation cannot create the next segment: the appends fail (counted dropped), every
    append that returned is on disk, and once space is back a write-error gap with the
    exact count precedes the next record (docs/FORMAT.md §4.2, §7)."""
    returned, failed = [], 0
    with SpoolWriter(spool_dir, SMALL) as writer:
        for i in range(40):
            writer.append(event(i))
            returned.append(i)
        faults.fail("open", "*/lanes/0000/*.seg", errno.ENOSPC, times=-1)
        for i in range(40, 120):
            try:
                writer.append(event(i))
                returned.append(i)
            except OSError:
                failed += 1
        assert failed and writer.stats()["dropped"] == failed
        faults.clear()
        for i in range(120, 130):
            writer.append(event(i))
            returned.append(i)
    records = read_all(spool_dir)
    assert event_ids(records) == [f"id-{i}" for i in returned]
    gaps = [r.value() for r in records if r.kind == Kind.GAP]
    assert [(g["reason"], g["count"]) for g in gaps] == [("write-error", failed)]
