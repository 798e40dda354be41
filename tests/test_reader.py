"""SpoolReader: batches from the cursor on, across segments and lanes; acks are durable."""

from __future__ import annotations

import os
import time

from spoolkit import SMALL, build, event, event_ids, flip, frames, read_all, segments

from cerbistream_spool import verify
from cerbistream_spool.spool import SpoolReader, SpoolWriter
from cerbistream_spool.spool.chain import GENESIS
from cerbistream_spool.spool.cursor import read_cursor
from cerbistream_spool.spool.lanes import lane_dir
from cerbistream_spool.spool.segments import SegmentHeader, create_segment, segment_name


def test_batches_respect_limits_and_cover_every_record_once(spool_dir: str) -> None:
    build(spool_dir, 200)
    reader = SpoolReader(spool_dir)
    seen = []
    for batch in reader.batches(max_records=7, max_bytes=1 << 20):
        assert 1 <= len(batch.records) <= 7
        assert [r.seq for r in batch.records] == list(range(batch.first_seq, batch.last_seq + 1))
        seen.extend(batch.records)
    assert event_ids(seen) == [f"id-{i}" for i in range(200)]


def test_reads_the_active_segment_while_the_writer_appends(spool_dir: str) -> None:
    with SpoolWriter(spool_dir, SMALL) as writer:
        reader = SpoolReader(spool_dir)
        writer.append(event(0))
        assert event_ids(next(reader.batches()).records) == ["id-0"]
        assert reader.read_batch() is None
        writer.append(event(1))
        assert event_ids(reader.read_batch().records) == ["id-1"]


def test_ack_persists_the_cursor_then_unlinks_acknowledged_segments(spool_dir: str) -> None:
    build(spool_dir, 150)
    before = segments(spool_dir)
    reader = SpoolReader(spool_dir)
    batch = reader.read_batch(max_records=80)
    reader.ack(batch)
    cursor = read_cursor(lane_dir(spool_dir, 0), 0)
    assert cursor.acked_seq == batch.last_seq and cursor.acked_hash == batch.records[-1].hash
    after = segments(spool_dir)
    assert after[0][0] <= batch.last_seq + 1 < (after[1][0] if len(after) > 1 else 10**9)
    assert len(after) < len(before)
    fresh = SpoolReader(spool_dir)  # a new reader (a restarted drainer) starts at the cursor
    assert fresh.read_batch().first_seq == batch.last_seq + 1
    assert verify(spool_dir).valid


def test_a_fully_acknowledged_unowned_lane_is_removed(spool_dir: str) -> None:
    build(spool_dir, 20)
    read_all(spool_dir, ack=True)
    assert SpoolReader(spool_dir).read_batch() is None
    assert not os.path.exists(lane_dir(spool_dir, 0))
    assert verify(spool_dir).valid


def test_an_owned_lane_is_kept_even_when_fully_acknowledged(spool_dir: str) -> None:
    with SpoolWriter(spool_dir, SMALL) as writer:
        writer.append(event(0))
        read_all(spool_dir, ack=True)
        SpoolReader(spool_dir).read_batch()
        assert os.path.isdir(lane_dir(spool_dir, 0))
        writer.append(event(1))
    assert event_ids(read_all(spool_dir)) == ["id-1"]


def test_lanes_are_read_round_robin(spool_dir: str) -> None:
    with SpoolWriter(spool_dir, SMALL) as a, SpoolWriter(spool_dir, SMALL) as b:
        for i in range(30):
            a.append(event(i))
            b.append(event(100 + i))
    reader = SpoolReader(spool_dir)
    lanes = [reader.read_batch(max_records=5).lane for _ in range(4)]
    assert lanes == [0, 1, 0, 1]


def test_a_segment_deleted_under_the_reader_is_skipped(spool_dir: str) -> None:
    build(spool_dir, 120)
    reader = SpoolReader(spool_dir)
    reader.read_batch(max_records=3)
    os.unlink(segments(spool_dir)[0][1])
    rest = [r.seq for b in reader.batches() for r in b.records]
    assert rest and rest[0] == segments(spool_dir)[0][0]


def test_damage_is_never_stepped_over_silently_the_batch_carries_it(spool_dir: str) -> None:
    """A bad record and a sealed segment with a broken header: the reader delivers the valid
    neighbours and reports each lost range (previous valid seq + 1 .. next valid seq - 1)."""
    build(spool_dir, 150)
    segs = segments(spool_dir)
    assert len(segs) >= 4
    path = segs[1][1]
    start, _, bad = frames(path)[3]
    flip(path, start + 25)
    flip(segs[2][1], 3)  # the header's magic
    reader = SpoolReader(spool_dir, remove_idle_lanes=False)
    batches = list(reader.batches(max_records=10_000))
    got = [r.seq for b in batches for r in b.records]
    damage = [d for b in batches for d in b.damage]
    assert [(d.segment, d.first_seq, d.last_seq, d.lost) for d in damage] == [
        (path, bad.seq, bad.seq, 1),
        (segs[2][1], segs[2][0], segs[3][0] - 1, segs[3][0] - segs[2][0]),
    ]
    assert damage[0].start == start
    lost = {bad.seq, *range(segs[2][0], segs[3][0])}
    assert sorted(got + sorted(lost)) == list(range(1, 153))  # everything else delivered
    assert {p["kind"] for p in reader.problems} == {"checksum", "format"}
    reader.ack(batches[-1])  # acked past the damage: nothing is pending any more
    assert SpoolReader(spool_dir, remove_idle_lanes=False).read_batch() is None


def test_a_lane_removed_and_recreated_under_the_reader_is_read_from_its_start(
    spool_dir: str,
) -> None:
    """A recreated lane restarts at seq 1 under the same number: the reader's old position
    must neither skip its records nor let a stale batch move the new lane's cursor."""
    import shutil  # noqa: PLC0415

    build(spool_dir, 30)
    reader = SpoolReader(spool_dir, remove_idle_lanes=False)
    stale = None
    for batch in reader.batches(max_records=10):
        if stale is None:
            stale = batch  # read, not yet acked, when the spool goes away
            continue
        reader.ack(batch)
    assert stale is not None
    shutil.rmtree(spool_dir)
    build(spool_dir, 5)
    reader.ack(stale)  # a batch of the vanished lane: must not touch the new cursor
    found = read_cursor(lane_dir(spool_dir, 0), 0)
    assert not isinstance(found, str) and found.acked_seq == 0
    assert event_ids(read_all_from(reader)) == [f"id-{i}" for i in range(5)]


def read_all_from(reader: SpoolReader) -> list:  # type: ignore[type-arg]
    out = []
    for batch in reader.batches():
        out.extend(batch.records)
    return out


def test_a_batch_read_while_the_writer_creates_its_next_segment_is_acknowledged(
    spool_dir: str,
) -> None:
    # the reader reached the next segment while it was still being created (shorter than
    # its header): the batch's records are all in the segment before, and its ack must
    # persist; it was dropped as "lane replaced" once the new header was written, and
    # the batch read again (201 events delivered twice in tests/test_multiprocess.py)
    with SpoolWriter(spool_dir) as writer:
        for i in range(5):
            last = writer.append(event(i))
    ldir = lane_dir(spool_dir, 0)
    nxt = last + 2  # after the close marker
    open(os.path.join(ldir, segment_name(nxt)), "wb").close()  # created, no header yet
    reader = SpoolReader(spool_dir)
    batch = reader.read_batch(100)
    assert batch is not None and len(batch.events()) == 5
    os.unlink(os.path.join(ldir, segment_name(nxt)))
    fd, _ = create_segment(ldir, SegmentHeader(0, nxt, time.time_ns(), GENESIS, 0))
    os.close(fd)
    reader.ack(batch)
    assert read_cursor(ldir, 0).acked_seq == batch.records[-1].seq
    assert reader.read_batch(100) is None  # nothing is read twice
