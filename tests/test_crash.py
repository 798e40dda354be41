"""kill -9 crash tests: real writer processes, real files, real SIGKILL, no mocking.

A child process (``tools/soak_spool.py child``, loaded through
tests/spool_child.py) appends events and prints each returned seq and event
id, line-flushed. docs/CONTRACT.md §4: a returned append is in the OS in every fsync
mode, so SIGKILL must lose none of them. After each kill the test process
checks that ``verify`` is clean right away (an unclean close is a notice),
then re-opens the spool (recovery), closes it, and checks: ``verify`` clean, no
gap records, every reported event present exactly once at its reported seq,
the lane's records contiguous from seq 1 and hash-linked from genesis.

Kill moments: random (seeded) — during start-up, during the open, after k
records, with 16 KiB segments so rotations happen — and deterministic crash
points: the child SIGKILLs itself before the n-th file-system call of the
first open, of a rotation and of a recovery, for every n. The drainer
(``tools/soak_spool.py drain``) is killed the same way inside an ack and
inside the removal of an idle lane.

Lane removal and cursor updates are also checked against crashes at every step.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
from pathlib import Path
from typing import Dict, List

import pytest
from spool_child import soak

from cerbistream_spool import SpoolConfig, SpoolWriter, verify
from cerbistream_spool.spool.lanes import list_lanes
from cerbistream_spool.spool.record import Kind

pytestmark = pytest.mark.slow

KILLED = -signal.SIGKILL
CYCLES = 24
MAX_RECORDS = 1200
MAX_STEPS = 80  # bound on crash points per function (a fresh open has about 40)
CONFIG = {
    mode: SpoolConfig(fsync=mode, segment_max_bytes=soak.SEGMENT_BYTES)
    for mode in ("always", "interval")
}


def reopen(spool: Path, mode: str = "always") -> List[str]:
    """Recover lane 0 in this process and close it; returns the recovery notes."""
    writer = SpoolWriter(str(spool), CONFIG[mode])
    try:
        assert writer.lane == 0, "the killed child's lane lock must be free again"
        return writer.recovery_notes
    finally:
        writer.close()


def assert_verifies_after_kill(spool: Path) -> None:
    """Right after a kill, before anything reopens the spool: the crash state verifies
    (an unclean close is a notice, not a problem)."""
    if not spool.exists():  # killed before the app created its spool directory
        return
    report = verify(str(spool))
    assert report.valid, [f"{p.kind} {p.segment}@{p.offset}: {p.detail}" for p in report.problems]
    assert all(n.kind == "unclean-close" for n in report.notices), report.notices


def assert_intact(spool: Path, reported: Dict[str, soak.Where]) -> soak.Check:
    """verify clean, no gaps, every reported event once at its seq, lane 0 chained from 1."""
    check = soak.check_spool(str(spool), reported)
    assert not check.failures, "\n".join(check.failures)
    assert check.report.valid
    assert list(check.scan.lanes) == [0]
    assert check.scan.lanes[0][-1].kind == Kind.CLOSE
    return check


@pytest.mark.parametrize("mode", ["always", "interval"])
def test_kill9_at_random_moments_loses_no_returned_append(tmp_path: Path, mode: str) -> None:
    rng = random.Random(f"kill9-{mode}")
    spool = tmp_path / "spool"  # one spool for every cycle: recovery runs again and again
    reported: Dict[str, soak.Where] = {}
    triggers = set()
    for cycle in range(CYCLES):
        plan = soak.random_plan(rng, MAX_RECORDS)
        triggers.add(plan.trigger)
        with soak.Child(str(spool), mode=mode, tag=f"{mode}{cycle}", plan=plan) as child:
            returncode = child.finish(timeout=30.0)
        assert returncode == KILLED, child.describe()
        reported.update(child.reported)
        assert_verifies_after_kill(spool)
        reopen(spool, mode)
        check = assert_intact(spool, reported)
        assert check.found == len(reported)
    assert triggers == {"spawn", "opening", "records"}
    assert len(reported) > CYCLES * 100, "the children appended too little to test anything"
    assert check.report.segments > 10, "segments never rotated"


def test_kill_at_every_step_of_the_first_open(tmp_path: Path) -> None:
    """A brand-new spool killed before each file-system call of its first open reopens cleanly."""
    for step in range(1, MAX_STEPS):
        spool = tmp_path / f"s{step}"
        with soak.Child(
            str(spool),
            mode="always",
            tag=f"s{step}",
            count=3,
            die_in="writer.py:__init__",
            die_at=step,
        ) as child:
            returncode = child.finish(timeout=30.0)
        if child.steps is not None:  # the open has fewer steps: it completed
            assert returncode == 0, child.describe()
            assert step > 10, "the open makes more file-system calls than that"
            break
        assert returncode == KILLED, child.describe()
        assert "LANE" not in [line.split(" ")[0] for line in child.lines]
        assert_verifies_after_kill(spool)
        with SpoolWriter(str(spool), CONFIG["always"]) as writer:
            assert writer.lane == 0
            seq = writer.append({"id": "after", "tag": "test"})
        assert_intact(spool, {"after": (0, seq)})
    else:
        pytest.fail(f"SpoolWriter.__init__ still running after {MAX_STEPS} crash points")


def test_kill_at_random_moments_of_the_first_open(tmp_path: Path) -> None:
    rng = random.Random("first-open")
    for trial in range(8):
        spool = tmp_path / f"t{trial}"
        if trial % 4 == 3:
            plan = soak.KillPlan("spawn", delay=rng.uniform(0.03, 0.12))
        else:
            plan = soak.KillPlan("opening", delay=rng.uniform(0.0, 0.003))
        with soak.Child(str(spool), mode="interval", tag=f"t{trial}", plan=plan) as child:
            returncode = child.finish(timeout=30.0)
        assert returncode == KILLED, child.describe()
        assert_verifies_after_kill(spool)
        with SpoolWriter(str(spool), CONFIG["interval"]) as writer:
            assert writer.lane == 0
            seq = writer.append({"id": "after", "tag": "test"})
        assert_intact(spool, {**child.reported, "after": (0, seq)})


def test_kill_at_every_step_of_a_rotation(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    reported: Dict[str, soak.Where] = {}
    for step in range(1, MAX_STEPS):
        with soak.Child(
            str(spool),
            mode="interval",
            tag=f"r{step}",
            count=200,
            die_in="writer.py:_rotate",
            die_at=step,
        ) as child:
            returncode = child.finish(timeout=30.0)
        reported.update(child.reported)
        if child.steps is not None:
            assert returncode == 0, child.describe()
            assert step > 4, "a rotation makes more file-system calls than that"
            break
        assert returncode == KILLED, child.describe()
        assert child.reported, "killed before the first rotation"
        assert_verifies_after_kill(spool)
        reopen(spool, "interval")
        assert_intact(spool, reported)
    else:
        pytest.fail(f"rotation still running after {MAX_STEPS} crash points")
    assert_intact(spool, reported)


def test_kill_at_every_step_of_a_recovery(tmp_path: Path) -> None:
    """Recovery of a crashed lane, itself killed at each step; every state it leaves recovers.

    The lane is never cleanly re-opened between steps, so each child recovers
    what the previous killed recovery left; a copy of each state is recovered
    and checked here.
    """
    spool = tmp_path / "spool"
    plan = soak.KillPlan("records", records=150)
    with soak.Child(str(spool), mode="always", tag="crashed", plan=plan) as child:
        assert child.finish(timeout=30.0) == KILLED, child.describe()
    assert_verifies_after_kill(spool)
    reported = dict(child.reported)
    for step in range(1, MAX_STEPS):
        with soak.Child(
            str(spool),
            mode="always",
            tag=f"v{step}",
            count=20,
            die_in="writer.py:_open_lane",
            die_at=step,
        ) as child:
            returncode = child.finish(timeout=30.0)
        reported.update(child.reported)
        if child.steps is not None:
            assert returncode == 0, child.describe()
            assert step > 4, "a recovery makes more file-system calls than that"
            break
        assert returncode == KILLED, child.describe()
        copy = tmp_path / f"copy{step}"
        shutil.copytree(spool, copy)
        assert_verifies_after_kill(copy)
        reopen(copy)
        assert_intact(copy, reported)
    else:
        pytest.fail(f"recovery still running after {MAX_STEPS} crash points")
    assert_intact(spool, reported)


# -- the drainer killed: acks and the removal of idle lanes must be crash-safe too ------------


def drain_crash_failures(tmp_path: Path, crash_in: str) -> List[str]:
    """Kill a drainer before each file-system call of ``crash_in``; what went wrong after.

    After each kill: verify is clean; a fresh drain delivers every event beyond
    the batch whose ack was cut short, never one whose ack had returned, and
    leaves no lane behind.
    """
    failures: List[str] = []
    config = SpoolConfig(fsync="never", segment_max_bytes=4096)
    for step in range(1, MAX_STEPS):
        spool = tmp_path / f"d{step}"
        with SpoolWriter(str(spool), config) as writer:
            seqs = {f"e{i}": writer.append({"id": f"e{i}", "tag": "d"}) for i in range(120)}
        with soak.Child(
            str(spool), command="drain", die_in=crash_in, die_at=step, max_records=40
        ) as child:
            returncode = child.finish(timeout=30.0)
        if child.steps is not None:
            assert returncode == 0, child.describe()
            assert step > 3, f"{crash_in} makes more file-system calls than that"
            assert list_lanes(str(spool)) == [], "a completed drain removes the idle lane"
            return failures
        assert returncode == KILLED, child.describe()
        acked, in_flight = child.acked.get(0, 0), child.in_flight.get(0, 0)
        report = verify(str(spool))
        failures += [f"step {step}: verify: {p.kind}: {p.detail}" for p in report.problems]
        scan = soak.scan_spool(str(spool), ack=True)
        again = sorted(i for i in scan.events if seqs[i] <= acked)
        missing = sorted(i for i, seq in seqs.items() if seq > in_flight and i not in scan.events)
        if again:
            failures.append(f"step {step}: {len(again)} acked events delivered again: {again[:3]}")
        if missing:
            failures.append(f"step {step}: {len(missing)} events lost: {missing[:3]}")
        for lane in list_lanes(str(spool)):
            left = sorted(os.listdir(spool / "lanes" / f"{lane:04d}"))
            failures.append(f"step {step}: fully drained lane {lane} stays, holding {left}")
    pytest.fail(f"{crash_in} still running after {MAX_STEPS} crash points")


def test_kill_at_every_step_of_an_ack(tmp_path: Path) -> None:
    failures = drain_crash_failures(tmp_path, "reader.py:ack")
    assert not failures, "\n".join(failures)


def test_idle_lane_removal_is_crash_atomic(tmp_path: Path) -> None:
    failures = drain_crash_failures(tmp_path, "reader.py:_remove_if_idle")
    assert not failures, "\n".join(failures)


def test_writer_recovery_keeps_a_live_drainers_cursor_write(tmp_path: Path) -> None:
    """An app restarting while ``cerbispool drain`` acks its lane must not break the ack."""
    spool = tmp_path / "spool"
    with SpoolWriter(str(spool), SpoolConfig(fsync="never")) as writer:
        for i in range(50):
            writer.append({"id": f"e{i}", "tag": "d"})
    # the drainer stops between writing its cursor slot in place and its fdatasync
    with soak.Child(
        str(spool), command="drain", die_in="cursor.py:_write_slot", die_at=2, stop_instead=True
    ) as drainer:
        assert drainer.wait_for("STOPPED", timeout=30.0), drainer.describe()
        with SpoolWriter(str(spool), SpoolConfig(fsync="never")) as writer:  # the app restarts
            assert writer.lane == 0
        os.kill(drainer.pid, signal.SIGCONT)
        returncode = drainer.finish(timeout=30.0)
    assert returncode == 0, drainer.describe()
    # the first ack (open marker + 50 events + close = seq 52) went through, and the
    # drainer went on to the restarted app's open/close markers
    assert drainer.acked.get(0) == 54
    assert verify(str(spool)).valid
