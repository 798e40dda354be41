"""Power loss, checked state by state (docs/RELIABILITY.md; tools/crashstates).

Each workload is recorded once through the filesystem seam; the crash states its log
allows are built, recovered, verified and read back. The fast tier checks about 150
states, the whole suite more than 2,000; the broken filesystems of
tools/crashstates/variants.py (installed through the seam, like any FileSystem)
show the checker fails when a sync the spool needs is missing.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from tools.crashstates.__main__ import main
from tools.crashstates.checker import check_state, promises
from tools.crashstates.recorder import Op, Recording
from tools.crashstates.states import CrashState, build
from tools.crashstates.variants import NoCursorSync, NoDirSyncAfterSegmentCreate
from tools.crashstates.workloads import WORKLOADS, record, run_all, run_workload

BY_NAME = {w.name: w for w in WORKLOADS}


def test_every_workload_survives_every_sampled_crash_state_fast_budget() -> None:
    results = run_all(150, seed=14)
    assert [str(f) for r in results for f in r.failures] == []
    assert sum(r.states for r in results) >= 120


@pytest.mark.slow
def test_every_workload_survives_more_than_two_thousand_crash_states() -> None:
    results = run_all(2400, seed=2026)
    assert [str(f) for r in results for f in r.failures] == []
    assert sum(r.states for r in results) >= 2000


def test_checker_fails_when_the_directory_fsync_after_segment_creation_is_dropped() -> None:
    result = run_workload(BY_NAME["rotation"], 150, seed=14, fs_class=NoDirSyncAfterSegmentCreate)
    assert result.failures, "a rotated segment whose name is not durable must lose records"
    assert any("lost" in f.detail for f in result.failures)


def test_checker_fails_when_the_cursor_write_is_not_synced_before_segments_go() -> None:
    result = run_workload(BY_NAME["ack-unlink"], 150, seed=14, fs_class=NoCursorSync)
    assert any("cursor" in f.detail or "lost" in f.detail for f in result.failures)


def test_the_promises_of_a_finished_always_workload_cover_every_append(tmp_path: Path) -> None:
    rec, pre = record(BY_NAME["always-threads"], str(tmp_path / "run"))
    want = promises(rec, len(rec.ops), pre)
    assert sorted(want.records.values()) == sorted(f"t{t}-{i}" for t in range(3) for i in range(4))
    assert promises(rec, 0, pre).records == {}


def test_cli_prints_the_summary_last_and_exits_1_on_failures() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ok = main(["--states", "10", "--seed", "1", "--workload", "torn-tail"])
    assert ok == 0
    assert out.getvalue().splitlines()[-1].startswith("crash-states: states=10 failures=0 ")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        variant = ["--variant", "no-dir-sync-after-segment-create"]
        bad = main(["--states", "60", "--seed", "1", "--workload", "rotation", *variant])
    assert bad == 1
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("crash-states: states=") and " failures=0 " not in last


# -- the model --------------------------------------------------------------------------


def _recording(root: str, ops: list) -> Recording:  # type: ignore[type-arg]
    return Recording(root, {root}, {}, {}, ops)


def test_a_created_file_exists_after_a_crash_only_once_its_directory_was_synced() -> None:
    ops = [
        Op("create", path="/r/f", fid=0),
        Op("write", fid=0, offset=0, data=b"abcd"),
        Op("fsync", fid=0),
        Op("fsync_dir", path="/r"),
    ]
    rec = _recording("/r", ops)
    assert build(rec, CrashState(3, (), ()))[1] == {}  # file synced, its name not
    assert build(rec, CrashState(3, (0,), ()))[1] == {"/r/f": b"abcd"}  # may persist earlier
    assert build(rec, CrashState(4, (), ()))[1] == {"/r/f": b"abcd"}


def test_unsynced_writes_persist_as_a_prefix_the_last_torn_or_zeroed() -> None:
    ops = [
        Op("create", path="/r/f", fid=0),
        Op("fsync_dir", path="/r"),
        Op("write", fid=0, offset=0, data=b"aa"),
        Op("fsync", fid=0),
        Op("write", fid=0, offset=2, data=b"bbbb"),
        Op("write", fid=0, offset=6, data=b"cc"),
    ]
    rec = _recording("/r", ops)

    def files(*data: tuple) -> bytes:  # type: ignore[type-arg]
        return build(rec, CrashState(6, (), data))[1]["/r/f"]

    assert files((0, 0, "whole", 0)) == b"aa"
    assert files((0, 1, "torn", 3)) == b"aabbb"
    assert files((0, 1, "zeros", 0)) == b"aa\0\0\0\0"
    assert files((0, 2, "whole", 0)) == b"aabbbbcc"


def test_a_rename_is_atomic_and_persists_with_either_directory_sync() -> None:
    ops = [
        Op("mkdir", path="/r/q"),
        Op("fsync_dir", path="/r"),
        Op("create", path="/r/f", fid=0),
        Op("fsync_dir", path="/r"),
        Op("rename", path="/r/f", dst="/r/q/f"),
        Op("fsync_dir", path="/r/q"),
    ]
    rec = Recording("/r", {"/r"}, {}, {}, ops)
    assert set(build(rec, CrashState(5, (), ()))[1]) == {"/r/f"}
    assert set(build(rec, CrashState(5, (4,), ()))[1]) == {"/r/q/f"}
    assert set(build(rec, CrashState(6, (), ()))[1]) == {"/r/q/f"}


# -- found by the checker ---------------------------------------------------------------


def test_drop_oldest_never_loses_records_without_a_durable_gap_record(tmp_path: Path) -> None:
    """The failing state, kept: the crash right after the directory fsync that made the
    unlink of the oldest segment durable: the gap record naming its records is durable
    before it (spool/capacity.py ``Capacity._write_durably``)."""
    [workload] = [w for w in WORKLOADS if w.name == "overflow"]
    rec, pre = record(workload, str(tmp_path / "run"))
    unlinked = next(
        i for i, op in enumerate(rec.ops) if op.kind == "unlink" and op.path.endswith(".seg")
    )
    k = next(i for i, op in enumerate(rec.ops) if i > unlinked and op.kind == "fsync_dir") + 1
    failure = check_state(
        workload.name,
        rec,
        CrashState(k, (), ()),
        workload.config,
        pre,
        str(tmp_path / "state"),
        excused=workload.excused,
    )
    assert failure is None, str(failure)


def test_a_quarantined_segments_loss_survives_a_crash_before_its_gap_record_is_durable(
    tmp_path: Path,
) -> None:
    """The failing state, kept (fixed in spool/recovery.py): recovery quarantined a
    segment with a damaged header (durable), created the next segment (durable), and the
    power went before the gap record naming the lost records was. The next recovery
    sees an empty last segment after a hole and writes the gap then: verify is clean."""
    workload = BY_NAME["bad-header"]
    rec, pre = record(workload, str(tmp_path / "run"))
    created = next(
        i for i, op in enumerate(rec.ops) if op.kind == "create" and op.path.endswith(".seg")
    )
    k = next(i for i, op in enumerate(rec.ops) if i > created and op.kind == "fsync_dir") + 1
    assert rec.ops[k].kind == "write"  # the gap record, not yet written
    failure = check_state(
        workload.name, rec, CrashState(k, (), ()), workload.config, pre, str(tmp_path / "s")
    )
    assert failure is None, str(failure)
