"""Several processes on one spool directory: one lane each, never interleaved.

Writer processes are ``tools/soak_spool.py child`` (loaded through
tests/spool_child.py); each prints ``DONE <lane> <count> <first> <last>``
after ``close()``. Its event ids are ``<tag>-0 .. <tag>-<count-1>``.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Dict, List

import pytest
from spool_child import soak

from cerbistream_spool import SpoolReader, verify
from cerbistream_spool.spool.chain import GENESIS
from cerbistream_spool.spool.lanes import lane_dir, list_lanes
from cerbistream_spool.spool.record import Kind, Record

pytestmark = pytest.mark.slow


def expected_ids(child: soak.Child) -> Dict[str, soak.Where]:
    """Every event a cleanly finished child appended; (lane, -1): seq not reported."""
    assert child.done is not None, child.describe()
    lane, count, _, _ = child.done
    return {f"{child.tag}-{i}": (lane, -1) for i in range(count)}


def assert_chained(records: List[Record]) -> None:
    """Seq 1..N, each prev_hash the previous record's hash, starting at genesis."""
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    assert records[0].prev_hash == GENESIS
    for prev, rec in zip(records, records[1:]):
        assert rec.prev_hash == prev.hash, f"seq {rec.seq} does not link to seq {prev.seq}"


def test_concurrent_writers_get_separate_intact_lanes(tmp_path: Path) -> None:
    spool = str(tmp_path / "spool")  # not created yet: the children race to create it
    children = []
    try:
        for mode in ("always", "interval", "never"):
            children.append(soak.Child(spool, mode=mode, tag=mode, seconds=2.0, quiet=True))
    finally:
        for child in children:
            child.finish(timeout=40.0)
    for child in children:
        assert child.returncode == 0, child.describe()
    lanes = {child.done[0] for child in children if child.done}
    assert lanes == {0, 1, 2}, [child.done for child in children]

    report = verify(spool)
    assert report.valid, report.problems
    assert not report.gaps
    total = sum(child.done[1] for child in children if child.done)
    assert report.records == total + 2 * len(children)  # + one open and one close marker each
    scan = soak.scan_spool(spool)
    assert not scan.problems
    for child in children:
        assert child.done is not None
        lane, count, first, last = child.done
        assert count > 100, f"{child.tag} appended only {count} events in 2 s"
        records = scan.lanes[lane]
        assert_chained(records)
        assert (records[0].kind, records[-1].kind) == (Kind.OPEN, Kind.CLOSE)
        assert records[0].value()["pid"] == child.pid, "a lane holds one process's records"
        events = [r for r in records if r.kind == Kind.EVENT]
        assert (events[0].seq, events[-1].seq) == (first, last)
        assert [r.value()["id"] for r in events] == [f"{child.tag}-{i}" for i in range(count)]
    assert sum(len(places) for places in scan.events.values()) == total


def test_concurrent_writers_and_a_live_drainer_deliver_everything_once(tmp_path: Path) -> None:
    """The drainer acks (and deletes segments) while two writers append and rotate."""
    spool = str(tmp_path / "spool")
    delivered: Dict[str, int] = {}
    children = []
    try:
        for mode in ("interval", "always"):
            children.append(soak.Child(spool, mode=mode, tag=mode, seconds=1.5, quiet=True))
        reader = SpoolReader(spool)
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            running = any(child.proc.poll() is None for child in children)
            for batch in reader.batches(max_records=200):
                for rec in batch.events():
                    event_id = rec.value()["id"]
                    delivered[event_id] = delivered.get(event_id, 0) + 1
                reader.ack(batch)
            if not running:
                break  # one full pass after every writer has exited
            time.sleep(0.01)
        assert not reader.problems
    finally:
        for child in children:
            child.finish(timeout=40.0)
    expected: Dict[str, soak.Where] = {}
    for child in children:
        assert child.returncode == 0, child.describe()
        expected.update(expected_ids(child))
    twice = [i for i, n in delivered.items() if n > 1]
    assert not twice, f"{len(twice)} events delivered twice: {twice[:5]}"
    missing = sorted(set(expected) - set(delivered))
    assert not missing, f"{len(missing)} events never delivered: {missing[:5]}"
    assert set(delivered) == set(expected)
    assert list_lanes(spool) == [], "fully acked lanes of exited writers are removed"
    report = verify(spool)
    assert report.valid, report.problems
    assert report.records == 0


def test_restarted_process_continues_its_lane_chain(tmp_path: Path) -> None:
    """Clean exit, restart, kill -9, restart: always lane 0, one unbroken chain."""
    spool = str(tmp_path / "spool")
    runs = []
    plans = [
        soak.KillPlan(),
        soak.KillPlan(),
        soak.KillPlan("records", records=30),
        soak.KillPlan(),
    ]
    for n, plan in enumerate(plans):
        count = 0 if plan.trigger == "records" else 50  # the killed run appends until killed
        with soak.Child(spool, mode="always", tag=f"run{n}", count=count, plan=plan) as child:
            child.finish(timeout=30.0)
        assert child.returncode == (-signal.SIGKILL if plan.trigger == "records" else 0), (
            child.describe()
        )
        assert child.lane == 0
        runs.append(child)
    scan = soak.scan_spool(spool)
    assert list(scan.lanes) == [0]
    records = scan.lanes[0]
    assert_chained(records)
    opens = [i for i, r in enumerate(records) if r.kind == Kind.OPEN]
    assert len(opens) == len(runs)
    for run in runs:
        seqs = sorted(seq for _, seq in run.reported.values())
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "seqs continue without a gap"
    first_seqs = [min(seq for _, seq in run.reported.values()) for run in runs]
    assert first_seqs == sorted(first_seqs), "each restart continues after the previous run"
    # the reopened lane links to what the previous process left: close, or the killed tail
    for index in opens[1:]:
        prev, rec = records[index - 1], records[index]
        assert rec.prev_hash == prev.hash and rec.seq == prev.seq + 1
        assert rec.value()["clean"] is (prev.kind == Kind.CLOSE)
    assert [records[i - 1].kind for i in opens[1:]].count(Kind.CLOSE) == 2
    check = soak.check_spool(spool, {i: w for run in runs for i, w in run.reported.items()})
    assert not check.failures, "\n".join(check.failures)


def test_reader_removes_unowned_acked_lane_but_never_a_live_one(tmp_path: Path) -> None:
    spool = str(tmp_path / "spool")
    with soak.Child(spool, mode="always", tag="live", count=20, hold=True) as live:
        assert live.wait_for("HOLD", timeout=30.0), live.describe()
        assert live.lane == 0
        with soak.Child(spool, mode="always", tag="gone", count=20) as gone:
            assert gone.finish(timeout=30.0) == 0, gone.describe()
        assert gone.lane == 1

        reader = SpoolReader(spool)
        events = []
        for _ in range(5):  # several passes: the live lane is exhausted and fully acked each time
            for batch in reader.batches():
                events += [r.value()["id"] for r in batch.events()]
                reader.ack(batch)
        assert sorted(events) == sorted(
            [f"live-{i}" for i in range(20)] + [f"gone-{i}" for i in range(20)]
        )
        assert list_lanes(spool) == [0], "the unowned, fully acked lane 1 is removed"
        assert Path(lane_dir(spool, 0)).is_dir()
        report = verify(spool)
        assert report.valid, report.problems
        assert report.pending == 0

        live.release()
        assert live.finish(timeout=30.0) == 0, live.describe()
    # the close marker is pending now; once acked, the lane is unowned and goes too
    batches = list(reader.batches())
    assert [r.kind for b in batches for r in b.records] == [Kind.CLOSE]
    reader.ack(batches[-1])
    assert list(reader.batches()) == []
    assert list_lanes(spool) == []
    assert verify(spool).valid
