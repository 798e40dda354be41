"""Spool directory layout and lane ownership (docs/FORMAT.md §1, §6).

::

    SPOOL_DIR/
      locks/lane-0000.lock   filelock held by the process writing lane 0 (never deleted)
      locks/drain.lock       held by the one drainer shipping this spool
      lanes/0000/            segments + cursor of lane 0
      quarantine/            segments that failed their checks, kept for a human

Each writing process owns one lane: it takes the first lane whose lock it can
acquire without waiting. A restarted single-process app therefore gets lane 0
back and continues its chain.
"""

from __future__ import annotations

import os
from typing import List, Optional, Tuple

from filelock import FileLock, Timeout

from cerbistream_spool.errors import LaneUnavailableError
from cerbistream_spool.spool.fsio import FILE_MODE, ensure_dir

__all__ = [
    "LANES_DIR",
    "LOCKS_DIR",
    "MAX_LANES",
    "QUARANTINE_DIR",
    "acquire_lane",
    "is_spool_dir",
    "lane_dir",
    "lane_lock",
    "list_lanes",
    "try_lock",
]

LANES_DIR = "lanes"
LOCKS_DIR = "locks"
QUARANTINE_DIR = "quarantine"
MAX_LANES = 256


def is_spool_dir(path: str) -> bool:
    """True when ``path`` has a spool's layout: a ``lanes/`` or a ``locks/`` directory.

    A writer creates both before its first record, so a new, empty spool counts;
    a copy off a device needs only ``lanes/``. An empty or unrelated directory does not.
    """
    return any(os.path.isdir(os.path.join(path, name)) for name in (LANES_DIR, LOCKS_DIR))


def lane_dir(spool_dir: str, lane: int) -> str:
    """Directory of one lane."""
    return os.path.join(spool_dir, LANES_DIR, f"{lane:04d}")


def lane_lock(spool_dir: str, lane: int) -> FileLock:
    """The (unacquired) lock guarding a lane's writer."""
    return _lock(os.path.join(spool_dir, LOCKS_DIR, f"lane-{lane:04d}.lock"))


def _lock(path: str) -> FileLock:
    # preserve_lock_file: never unlink a lock another process may be waiting on.
    return FileLock(
        path,
        timeout=0,
        mode=FILE_MODE,
        thread_local=False,
        preserve_lock_file=True,
        fallback_to_soft=False,
    )


def try_lock(lock: FileLock) -> bool:
    """Acquire ``lock`` without waiting; True on success."""
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    return True


def list_lanes(spool_dir: str) -> List[int]:
    """Lane ids that have a directory, ascending."""
    try:
        names = os.listdir(os.path.join(spool_dir, LANES_DIR))
    except FileNotFoundError:
        return []
    return sorted(int(n) for n in names if len(n) == 4 and n.isdigit())


def acquire_lane(spool_dir: str, max_lanes: int = MAX_LANES) -> Tuple[int, FileLock]:
    """Take the lowest free lane; returns ``(lane, held lock)``."""
    ensure_dir(os.path.join(spool_dir, LOCKS_DIR))
    ensure_dir(os.path.join(spool_dir, LANES_DIR))
    for lane in range(max_lanes):
        lock = lane_lock(spool_dir, lane)
        if try_lock(lock):
            ensure_dir(lane_dir(spool_dir, lane))
            return lane, lock
    raise LaneUnavailableError(f"all {max_lanes} lanes of {spool_dir} are held by live writers")


def lane_is_live(spool_dir: str, lane: int) -> bool:
    """True when a process holds the lane's writer lock right now."""
    if not os.path.exists(os.path.join(spool_dir, LOCKS_DIR, f"lane-{lane:04d}.lock")):
        return False
    lock = lane_lock(spool_dir, lane)
    if try_lock(lock):
        lock.release()
        return False
    return True


def drain_lock(spool_dir: str) -> FileLock:
    """The lock that makes one drainer per spool."""
    ensure_dir(os.path.join(spool_dir, LOCKS_DIR))
    return _lock(os.path.join(spool_dir, LOCKS_DIR, "drain.lock"))


def owner_lock(spool_dir: str, lane: int) -> Optional[FileLock]:
    """The lane's lock if it could be taken now (caller releases), else None."""
    lock = lane_lock(spool_dir, lane)
    return lock if try_lock(lock) else None
