"""Spool directory layout and lane ownership (docs/FORMAT.md §1, §6).

::

    SPOOL_DIR/
      locks/lane-0000.lock   filelock held by the process writing lane 0 (never deleted)
      locks/drain.lock       held by the one drainer shipping this spool
      lanes/0000/            segments + cursor of lane 0
      quarantine/            segments that failed their checks, kept for a human
      losses/ledger          gap records of delivered segments (spool/losses.py)

Anything else under ``lanes/`` (a file or symlink named like a lane, a name that is
not four ASCII digits) is *foreign*: left alone, never read, listed by ``status`` and
``verify``. A lane whose directory holds foreign entries is still read, but no writer
takes it.

Each writing process owns one lane: it takes the first lane whose lock it can
acquire without waiting. A restarted single-process app therefore gets lane 0
back and continues its chain.
"""

from __future__ import annotations

import contextlib
import fcntl
import inspect
import os
import re
import stat
from typing import Any, Callable, Dict, List, Optional, Tuple

import filelock
from filelock import FileLock, Timeout

from cerbistream_spool.errors import LaneUnavailableError, SpoolError
from cerbistream_spool.spool.fsio import (
    FILE_MODE,
    ForeignFileError,
    current,
    ensure_dir,
    is_dir,
    list_entries,
    open_regular,
)
from cerbistream_spool.spool.losses import ledger_foreign
from cerbistream_spool.spool.segments import lane_foreign

__all__ = [
    "LANES_DIR",
    "LOCKS_DIR",
    "MAX_LANES",
    "QUARANTINE_DIR",
    "acquire_lane",
    "foreign_entries",
    "is_spool_dir",
    "lane_dir",
    "lane_lock",
    "list_lanes",
    "pin_segment",
    "scan_lanes",
    "try_lock",
    "unlink_unpinned",
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
    return any(is_dir(os.path.join(path, name)) for name in (LANES_DIR, LOCKS_DIR))


def lane_dir(spool_dir: str, lane: int) -> str:
    """Directory of one lane."""
    return os.path.join(spool_dir, LANES_DIR, f"{lane:04d}")


def lane_lock(spool_dir: str, lane: int) -> FileLock:
    """The (unacquired) lock guarding a lane's writer."""
    return _lock(os.path.join(spool_dir, LOCKS_DIR, f"lane-{lane:04d}.lock"))


def filelock_is_safe(version: str) -> bool:
    """False for the filelock releases that break lane ownership on Unix.

    3.20.4 to 3.29.x unlink a lock file on release (a waiter can then lock a
    stale inode while a newcomer locks a fresh one) or silently fall back to a
    soft lock where flock is missing; they ignore the options that forbid both.
    Releases before 3.20.4 never unlink and never fall back; 3.30 and later
    honour ``preserve_lock_file`` and ``fallback_to_soft``.
    """
    parts = tuple(int(p) for p in re.findall(r"\d+", version)[:3])
    return not ((3, 20, 4) <= parts < (3, 30))


# preserve_lock_file / fallback_to_soft exist from filelock 3.30; older releases either
# reject them (3.12-3.15.1) or drop them unread. Pass them where they are understood.
_FILELOCK_PARAMS = inspect.signature(FileLock.__init__).parameters
_STRICT_OPTIONS: Dict[str, Any] = {
    name: value
    for name, value in (("preserve_lock_file", True), ("fallback_to_soft", False))
    if name in _FILELOCK_PARAMS
}


def _lock(path: str) -> FileLock:
    # Never unlink a lock another process may be waiting on; never degrade to a soft lock.
    if not filelock_is_safe(filelock.__version__):
        raise SpoolError(
            f"filelock {filelock.__version__} deletes lock files or falls back to soft locks,"
            " which breaks one-writer-per-lane; install filelock>=3.30 (or <3.20.4)"
        )
    return FileLock(path, timeout=0, mode=FILE_MODE, thread_local=False, **_STRICT_OPTIONS)


def try_lock(lock: FileLock) -> bool:
    """Acquire ``lock`` without waiting; True on success."""
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    return True


REMOVING_PREFIX = ".removing-"  # a lane being removed (see reader.py); not foreign
_DIGITS = frozenset("0123456789")


def parse_lane_name(name: str) -> Optional[int]:
    """The lane id of a ``lanes/`` entry name (four ASCII digits), else None."""
    if len(name) != 4 or not _DIGITS.issuperset(name):
        return None
    return int(name)


def scan_lanes(spool_dir: str) -> Tuple[List[int], List[str]]:
    """``(lane ids that are real directories, ascending; foreign entries of lanes/)``.

    Foreign entries are paths relative to ``spool_dir``.
    """
    lanes, foreign = [], []
    for name, kind in list_entries(os.path.join(spool_dir, LANES_DIR)):
        lane = parse_lane_name(name)
        if lane is not None and kind == "dir":
            lanes.append(lane)
        elif not (name.startswith(REMOVING_PREFIX) and kind == "dir"):
            foreign.append(f"{LANES_DIR}/{name}")
    return sorted(lanes), sorted(foreign)


def list_lanes(spool_dir: str) -> List[int]:
    """Lane ids that have a (real, not symlinked) directory, ascending."""
    return scan_lanes(spool_dir)[0]


def foreign_entries(spool_dir: str) -> List[str]:
    """Everything in the spool's lane tree (and ``losses/``) that is not ours, sorted."""
    lanes, foreign = scan_lanes(spool_dir)
    for name in (LANES_DIR, LOCKS_DIR, QUARANTINE_DIR):
        try:
            if not stat.S_ISDIR(current().lstat(os.path.join(spool_dir, name)).st_mode):
                foreign.append(name)
        except OSError:  # absent
            pass
    for lane in lanes:
        prefix = f"{LANES_DIR}/{lane:04d}/"
        foreign.extend(prefix + name for name in lane_foreign(lane_dir(spool_dir, lane)))
    foreign.extend(ledger_foreign(spool_dir))
    return sorted(foreign)


def _usable(spool_dir: str, lane: int) -> bool:
    """True when a writer may take ``lane``: its directory is absent or a plain one
    without foreign entries."""
    ldir = lane_dir(spool_dir, lane)
    try:
        info = current().lstat(ldir)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and not lane_foreign(ldir)


def acquire_lane(spool_dir: str, max_lanes: int = MAX_LANES) -> Tuple[int, FileLock]:
    """Take the lowest free lane; returns ``(lane, held lock)``."""
    ensure_dir(os.path.join(spool_dir, LOCKS_DIR))
    ensure_dir(os.path.join(spool_dir, LANES_DIR))
    for lane in range(max_lanes):
        if not _usable(spool_dir, lane):  # a hostile or damaged lane is left to the readers
            continue
        lock = lane_lock(spool_dir, lane)
        try:
            taken = try_lock(lock)
        except OSError:  # the lock file is not one we can lock (a directory, ...)
            continue
        if taken:
            if _usable(spool_dir, lane):  # it may have changed while we took the lock
                ensure_dir(lane_dir(spool_dir, lane))
                return lane, lock
            lock.release()
    raise LaneUnavailableError(
        f"all {max_lanes} lanes of {spool_dir} are held by live writers or unusable"
    )


def lane_is_live(spool_dir: str, lane: int) -> bool:
    """True when a process holds the lane's writer lock right now."""
    if not os.path.exists(os.path.join(spool_dir, LOCKS_DIR, f"lane-{lane:04d}.lock")):
        return False
    lock = lane_lock(spool_dir, lane)
    try:
        if try_lock(lock):
            lock.release()
            return False
    except OSError:  # a lock path that cannot be locked (a directory, ...): no live writer
        return False
    return True


def drain_lock(spool_dir: str) -> FileLock:
    """The lock that makes one drainer per spool."""
    ensure_dir(os.path.join(spool_dir, LOCKS_DIR))
    return _lock(os.path.join(spool_dir, LOCKS_DIR, "drain.lock"))


def owner_lock(spool_dir: str, lane: int) -> Optional[FileLock]:
    """The lane's lock if it could be taken now (caller releases), else None."""
    lock = lane_lock(spool_dir, lane)
    try:
        return lock if try_lock(lock) else None
    except OSError:  # a lock path that cannot be locked (a directory, ...): treat as held
        return None


# -- segment pins: what a drainer has in flight is never dropped -------------------------
#
# A drainer holds ``flock(LOCK_SH)`` on every segment it handed out records from until
# the batch is acked (or rewound). ``drop_oldest`` unlinks a segment only while it holds
# ``flock(LOCK_EX)`` on it, taken without waiting: a pinned segment is skipped (the next
# oldest goes instead), and a reader that pins a segment after its unlink sees
# ``st_nlink == 0`` and treats it as gone. Works across processes (a sidecar drainer)
# and within one (flock locks belong to open file descriptions). The lock is on the
# segment itself, which filelock cannot lock without truncating it, hence ``fcntl``.


def pin_segment(path: str) -> Optional[int]:
    """A descriptor holding a shared pin on the segment at ``path``; None when it is gone
    (or foreign now). Raises ``OSError`` for an I/O error: a segment is never taken for
    gone because it could not be read.

    The caller closes the descriptor to unpin (a forked child closes its copy).
    """
    try:
        fd, _ = open_regular(path)
    except (FileNotFoundError, ForeignFileError):
        return None
    fs = current()
    try:
        fs.flock(fd, fcntl.LOCK_SH)  # an unlinking writer holds LOCK_EX only briefly
        if fs.fstat(fd).st_nlink == 0:  # dropped before we pinned it
            fs.close(fd)
            return None
    except BaseException:
        fs.close(fd)
        raise
    return fd


def unlink_unpinned(path: str, locked: Optional[Callable[[], None]] = None) -> Optional[bool]:
    """Unlink the segment unless a reader pins it: True unlinked, False pinned, None gone.

    ``locked`` is called once the segment is locked, before the unlink: what it reads
    of the cursor then includes every ack of the segment's records (a drainer writes
    the cursor before it unpins), and no ack can yet pass the segment.
    """
    try:
        fd, _ = open_regular(path)
    except FileNotFoundError:
        return None
    fs = current()
    try:
        try:
            fs.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        if locked is not None:
            locked()
        try:
            fs.unlink(path)
        except FileNotFoundError:
            return None
        return True
    finally:
        with contextlib.suppress(OSError):
            fs.close(fd)
