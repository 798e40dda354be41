"""The inventory: one read-only snapshot of a spool (lanes, segments, cursors, pending)."""

from __future__ import annotations

import os
import shutil
from typing import Dict, List, Optional, Tuple

import pytest
from spoolkit import SMALL, event, flip, frames, segments

from cerbistream_spool import verify
from cerbistream_spool.drain import Drainer
from cerbistream_spool.spool import SpoolReader, SpoolWriter
from cerbistream_spool.spool.cursor import CURSOR_FILE
from cerbistream_spool.spool.inventory import Depth, take_inventory
from cerbistream_spool.spool.lanes import LANES_DIR, lane_dir
from cerbistream_spool.spool.record import Kind, Record
from cerbistream_spool.status import status
from cerbistream_spool.transports.memory import MemoryTransport

Tree = Dict[str, Tuple[str, int, int]]


def two_lanes(spool_dir: str, acked_in_lane0: int = 60) -> None:
    """Lane 0: 150 events, lane 1: 40, both closed; lane 0 acked up to seq 60."""
    first, second = SpoolWriter(spool_dir, SMALL), SpoolWriter(spool_dir, SMALL)
    for i in range(150):
        first.append(event(i))
    for i in range(40):
        second.append(event(1000 + i))
    first.close()
    second.close()
    reader = SpoolReader(spool_dir, remove_idle_lanes=False, lanes={0})
    done = 0
    while done < acked_in_lane0:
        batch = reader.read_batch(20)
        assert batch is not None
        reader.ack(batch)
        done += len(batch.records)


def records_of(spool_dir: str, lane: int) -> List[Tuple[Record, int]]:
    """Every valid record of a lane on disk, with its frame size."""
    return [
        (rec, end - off) for _, path in segments(spool_dir, lane) for off, end, rec in frames(path)
    ]


def expected(spool_dir: str, lane: int, acked: int) -> Tuple[int, int, Optional[int]]:
    """(pending events, frame bytes of pending records, oldest pending event's ts) by hand."""
    above = [(rec, size) for rec, size in records_of(spool_dir, lane) if rec.seq > acked]
    events = [rec for rec, _ in above if rec.kind == Kind.EVENT]
    return len(events), sum(size for _, size in above), events[0].ts_ns if events else None


def tree(root: str) -> Tree:
    """Every entry under ``root``: kind, size and mtime (never through a link)."""
    out: Tree = {}
    for parent, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(parent, name)
            st = os.lstat(path)
            kind = "link" if os.path.islink(path) else "dir" if name in dirs else "file"
            out[os.path.relpath(path, root)] = (kind, st.st_size, st.st_mtime_ns)
    return out


def test_pending_and_oldest_are_the_records_above_each_cursor(spool_dir: str) -> None:
    two_lanes(spool_dir)
    inv = take_inventory(spool_dir, Depth.COUNT, tails=True)
    assert [ln.lane for ln in inv.lanes] == [0, 1]
    for ln in inv.lanes:
        assert (ln.pending_events, ln.pending_bytes, ln.oldest_pending_ns) == expected(
            spool_dir, ln.lane, ln.acked_seq
        )
        assert ln.last_seq == records_of(spool_dir, ln.lane)[-1][0].seq
    assert inv.lane(0).acked_seq == 60  # type: ignore[union-attr]
    assert inv.lane(1).acked_seq == 0  # type: ignore[union-attr]
    assert inv.pending_events == (150 - 59) + 40  # seq 1 is the open record: no event
    assert inv.oldest_pending_ns == min(ln.oldest_pending_ns or 0 for ln in inv.lanes)
    # what status and the drainer report is the inventory
    doc = status(spool_dir)
    assert doc["pending_records"] == inv.pending_events
    assert doc["pending_bytes"] == inv.pending_bytes
    assert doc["spool_bytes"] == inv.bytes
    assert [(ln["pending_records"], ln["acked_seq"], ln["last_seq"]) for ln in doc["lanes"]] == [
        (ln.pending_events, ln.acked_seq, ln.last_seq) for ln in inv.lanes
    ]
    drainer = Drainer(spool_dir, MemoryTransport())
    try:
        assert drainer.pending_events() == inv.pending_events
    finally:
        drainer.close()
    # verify counts pending on its own walk of the chain: on an intact spool they agree
    assert verify(spool_dir).pending == inv.pending_events


def test_sizes_are_the_segment_files_and_capacity_can_sum_them(spool_dir: str) -> None:
    two_lanes(spool_dir, acked_in_lane0=0)
    inv = take_inventory(spool_dir)  # Depth.SIZES: no record read
    by_lane = {
        lane: sum(os.path.getsize(path) for _, path in segments(spool_dir, lane)) for lane in (0, 1)
    }
    assert inv.bytes_by_lane() == by_lane
    assert inv.bytes == sum(by_lane.values())
    assert inv.bytes_except(0) == by_lane[1]
    assert [s.base for s in inv.lane(0).segments] == [b for b, _ in segments(spool_dir, 0)]  # type: ignore[union-attr]
    assert inv.lane(0).pending_events is None  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        inv.pending_events  # noqa: B018 — not counted at this depth
    oldest = take_inventory(spool_dir, Depth.OLDEST, lanes=[1])
    assert [ln.lane for ln in oldest.lanes] == [1]
    assert oldest.oldest_pending_ns == expected(spool_dir, 1, 0)[2]


def test_the_inventory_writes_nothing_and_sweeps_nothing(spool_dir: str) -> None:
    two_lanes(spool_dir)
    leftover = os.path.join(spool_dir, LANES_DIR, ".removing-0003-1")  # a crashed lane removal
    os.makedirs(leftover)
    with open(os.path.join(leftover, "x"), "w") as fh:
        fh.write("x")
    before = tree(spool_dir)
    take_inventory(spool_dir, Depth.COUNT, tails=True)
    assert tree(spool_dir) == before


def test_foreign_files_and_symlinks_are_never_counted_or_followed(
    spool_dir: str, tmp_path: str
) -> None:
    two_lanes(spool_dir)
    clean = take_inventory(spool_dir, Depth.COUNT, tails=True)
    outside = os.path.join(str(tmp_path), "outside")
    shutil.copytree(lane_dir(spool_dir, 1), outside)  # a whole lane's records, elsewhere
    ldir = lane_dir(spool_dir, 0)
    with open(os.path.join(ldir, "notes.txt"), "w") as fh:
        fh.write("not ours")
    # a symlink named like a segment (after the lane's last) and a symlinked lane directory
    os.symlink(segments(spool_dir, 1)[0][1], os.path.join(ldir, f"{99999:020d}.seg"))
    os.symlink(outside, os.path.join(spool_dir, LANES_DIR, "0007"))
    with open(os.path.join(spool_dir, LANES_DIR, "junk"), "w") as fh:
        fh.write("j")
    inv = take_inventory(spool_dir, Depth.COUNT, tails=True)
    assert inv == clean
    assert take_inventory(spool_dir, Depth.COUNT, lanes=[7]).lanes == ()


def test_a_missing_cursor_means_nothing_delivered(spool_dir: str) -> None:
    two_lanes(spool_dir)
    os.unlink(os.path.join(lane_dir(spool_dir, 0), CURSOR_FILE))
    found = take_inventory(spool_dir, Depth.COUNT).lane(0)
    assert found is not None
    assert (found.acked_seq, found.cursor_problem) == (0, None)
    assert (found.pending_events, found.pending_bytes, found.oldest_pending_ns) == expected(
        spool_dir, 0, 0
    )
    assert found.pending_events > 90  # more than above the lost cursor


def test_a_cursor_that_is_a_symlink_is_reported_not_followed(spool_dir: str, tmp_path: str) -> None:
    two_lanes(spool_dir)
    cursor = os.path.join(lane_dir(spool_dir, 0), CURSOR_FILE)
    elsewhere = os.path.join(str(tmp_path), "cursor-copy")
    shutil.copy(cursor, elsewhere)
    os.unlink(cursor)
    os.symlink(elsewhere, cursor)
    found = take_inventory(spool_dir, Depth.COUNT).lane(0)
    assert found is not None
    assert found.cursor_problem == "cursor is not a regular file (left alone)"
    assert found.acked_seq == 0
    assert (
        found.pending_events == expected(spool_dir, 0, 0)[0]
    )  # read from its start, as the drainer does


def test_a_lane_whose_cursor_is_a_directory_has_nothing_pending(spool_dir: str) -> None:
    two_lanes(spool_dir)
    cursor = os.path.join(lane_dir(spool_dir, 1), CURSOR_FILE)
    os.unlink(cursor)
    os.mkdir(cursor)
    found = take_inventory(spool_dir, Depth.COUNT).lane(1)
    assert found is not None
    assert found.cursor_problem is not None
    assert (found.pending_events, found.oldest_pending_ns) == (0, None)  # no ack could move it
    oldest = take_inventory(spool_dir, Depth.OLDEST, [1]).lane(1)
    assert oldest is not None
    assert oldest.oldest_pending_ns is None  # the same "pending" at every depth


def test_damage_is_stepped_over_as_the_drainer_steps_over_it(spool_dir: str) -> None:
    two_lanes(spool_dir, acked_in_lane0=0)
    path = segments(spool_dir, 0)[1][1]
    offset, _, lost = frames(path)[3]
    assert lost.kind == Kind.EVENT
    flip(path, offset + 20)
    found = take_inventory(spool_dir, Depth.COUNT).lane(0)
    assert found is not None
    assert found.pending_events == 150 - 1  # the damaged record is lost, the rest pending
