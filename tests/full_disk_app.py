"""A spool on a really full filesystem (a small tmpfs): tests/test_accounting.py runs it.

Run inside a private mount namespace with ``MOUNT`` a fresh tmpfs of a few
hundred KiB: ``unshare -rm sh -c 'mount -t tmpfs -o size=512k tmpfs M && python
tests/full_disk_app.py M'``. Prints one JSON line:

- ``drain``: events written, then a ballast file fills the disk (``ENOSPC``), then a
  drainer ships through a memory transport: ``sent`` / ``unique`` message ids,
  ``pending`` after, ``error``;
- ``writer``: on the still-full disk, with undelivered sealed segments, events are
  appended under ``drop_oldest``: ``stats`` (writer.stats()) and ``gaps`` (reasons).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
from typing import Any, Dict, List

from cerbistream_spool import verify
from cerbistream_spool.drain import Drainer
from cerbistream_spool.spool import SpoolConfig, SpoolWriter
from cerbistream_spool.transports.memory import MemoryTransport

CONFIG = SpoolConfig(
    fsync="never", overflow="drop_oldest", segment_max_bytes=8192, max_spool_bytes=1 << 30
)


def event(i: int) -> Dict[str, Any]:
    return {"LogId": f"id-{i}", "n": i, "pad": "x" * 200}


def fill(path: str) -> int:
    """Write a ballast file until the filesystem is full; its size."""
    total = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (65536, 4096, 512, 64, 1):
            while True:
                try:
                    total += os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return total


def drain_on_full_disk(mount: str) -> Dict[str, Any]:
    spool = os.path.join(mount, "drain-spool")
    with SpoolWriter(spool, CONFIG) as writer:
        for i in range(300):
            writer.append(event(i))
    fill(os.path.join(mount, "ballast-1"))
    transport = MemoryTransport()
    drainer = Drainer(spool, transport, backoff_base_s=0.01, backoff_max_s=0.05)
    error = None
    try:
        pending = drainer.drain_until_idle(timeout=5.0)
    except OSError as exc:
        pending, error = -1, str(exc)
    finally:
        drainer.close()
    ids = transport.message_ids()
    return {
        "sent": len(ids),
        "unique": len(set(ids)),
        "pending": pending,
        "error": error or drainer.stats()["last_error"],
    }


def write_on_full_disk(mount: str) -> Dict[str, Any]:
    spool = os.path.join(mount, "write-spool")
    writer = SpoolWriter(spool, CONFIG)
    for i in range(150):  # several sealed segments, none delivered
        writer.append(event(i))
    fill(os.path.join(mount, "ballast-2"))
    failed: List[str] = []
    for i in range(150, 400):
        try:
            writer.append(event(i))
        except OSError as exc:
            failed.append(str(exc))
    stats = writer.stats()
    with contextlib.suppress(OSError):
        writer.close()
    gaps: Dict[str, int] = {}
    for gap in verify(spool).gaps:
        gaps[gap["reason"]] = gaps.get(gap["reason"], 0) + 1
    return {"stats": stats, "failed": len(failed), "gaps": gaps}


def main(argv: List[str]) -> int:
    mount = argv[0]
    out = {"drain": drain_on_full_disk(mount)}
    for name in os.listdir(mount):
        if name.startswith("ballast"):
            os.unlink(os.path.join(mount, name))
    out["writer"] = write_on_full_disk(mount)
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
