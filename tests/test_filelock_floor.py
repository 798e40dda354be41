"""Lane locks with the installed filelock: the lock file stays, a second process is kept out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import filelock
import pytest

from cerbistream_spool.errors import SpoolError
from cerbistream_spool.spool import lanes

_TRY_LOCK = """
import sys
from cerbistream_spool.spool.lanes import lane_lock, try_lock
lock = lane_lock(sys.argv[1], 0)
got = try_lock(lock)
if got:
    lock.release()
print("took" if got else "held")
"""


def _other_process_try(spool: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-c", _TRY_LOCK, str(spool)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    return out.stdout.strip()


def test_lane_lock_file_survives_release_and_keeps_a_second_process_out(tmp_path: Path) -> None:
    lane, lock = lanes.acquire_lane(str(tmp_path))
    path = tmp_path / lanes.LOCKS_DIR / f"lane-{lane:04d}.lock"
    inode = path.stat().st_ino
    assert _other_process_try(tmp_path) == "held"
    lock.release()
    # A lock file unlinked on release lets a waiter and a newcomer lock two inodes.
    assert path.exists(), f"filelock {filelock.__version__} deleted {path} on release"
    assert path.stat().st_ino == inode
    assert _other_process_try(tmp_path) == "took"
    assert path.stat().st_ino == inode
    again, relock = lanes.acquire_lane(str(tmp_path))
    assert again == lane
    relock.release()


@pytest.mark.parametrize(
    ("version", "safe"),
    [
        ("3.12.0", True),
        ("3.19.1", True),
        ("3.20.3", True),
        ("3.20.4", False),
        ("3.24.0", False),
        ("3.29.7", False),
        ("3.30.0", True),
        ("4.3.1", True),
    ],
)
def test_filelock_is_safe_marks_the_unlinking_releases(version: str, safe: bool) -> None:
    assert lanes.filelock_is_safe(version) is safe


def test_lane_lock_refuses_a_filelock_that_unlinks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(filelock, "__version__", "3.24.0")
    with pytest.raises(SpoolError, match=r"filelock 3\.24\.0"):
        lanes.lane_lock(str(tmp_path), 0)
    assert not os.path.exists(tmp_path / lanes.LOCKS_DIR)
