"""Delivered gaps on a really full filesystem: tests/test_losses_ledger.py runs it.

Run like tests/full_disk_app.py (a fresh tmpfs of a few hundred KiB in a private mount
namespace). A lane gets an ``overflow`` gap in an early sealed segment and events after
it; a ballast file fills the disk; a drainer ships everything through a memory
transport while the losses ledger cannot be written (idle lanes not yet removed), the
disk is filled again and the drainer passes once more (removing the idle lane needs
the ledger too), then the ballast goes and it passes again. Prints one JSON line:
``refused`` and, after each phase, ``full``, ``still_full``, ``freed``: ``sent`` /
``unique`` message ids, ``pending``, ``lanes`` left, ``last_error``, verify's ``valid``,
``problems`` and ``gaps``, status's ``recorded_losses``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List

from full_disk_app import event, fill

from cerbistream_spool import verify
from cerbistream_spool.drain import Drainer
from cerbistream_spool.errors import SpoolFullError
from cerbistream_spool.spool import SpoolConfig, SpoolReader, SpoolWriter
from cerbistream_spool.spool.lanes import list_lanes
from cerbistream_spool.status import status
from cerbistream_spool.transports.memory import MemoryTransport

TINY = SpoolConfig(
    fsync="never", overflow="drop_newest", segment_max_bytes=4096, max_spool_bytes=8192
)
ROOMY = SpoolConfig(fsync="never", segment_max_bytes=4096, max_spool_bytes=1 << 30)


def spool_with_an_early_gap(spool: str) -> int:
    """Lane 0: an overflow gap in a sealed segment, 120 events after it; the refused count."""
    refused = 0
    with SpoolWriter(spool, TINY) as writer:
        for i in range(60):
            try:
                writer.append(event(i))
            except SpoolFullError:
                refused += 1
        reader = SpoolReader(spool)
        for batch in reader.batches():
            reader.ack(batch)
        writer.notify_space()
        writer.append(event(1000))  # the gap record goes first
    with SpoolWriter(spool, ROOMY) as writer:
        for i in range(2000, 2120):
            writer.append(event(i))
    return refused


def observe(spool: str, transport: MemoryTransport, drainer: Drainer) -> Dict[str, Any]:
    ids = transport.message_ids()
    report = verify(spool)
    return {
        "sent": len(ids),
        "unique": len(set(ids)),
        "pending": drainer.pending_events(),
        "lanes": list_lanes(spool),
        "last_error": drainer.stats()["last_error"],
        "valid": report.valid,
        "problems": [p.detail for p in report.problems],
        "gaps": report.gaps,
        "recorded_losses": status(spool)["recorded_losses"],
    }


def main(argv: List[str]) -> int:
    mount = argv[0]
    spool = os.path.join(mount, "spool")
    out: Dict[str, Any] = {"refused": spool_with_an_early_gap(spool)}
    fill(os.path.join(mount, "ballast-1"))
    transport = MemoryTransport()
    drainer = Drainer(spool, transport, backoff_base_s=0.01, backoff_max_s=0.05)
    try:
        drainer.reader.remove_idle_lanes = False  # see the acks alone first
        drainer.drain_until_idle(timeout=5.0)
        out["full"] = observe(spool, transport, drainer)
        fill(os.path.join(mount, "ballast-2"))  # take back what the unlinked segments freed
        drainer.reader.remove_idle_lanes = True
        drainer.run_once()  # the idle lane's removal needs the ledger too: it waits
        out["still_full"] = observe(spool, transport, drainer)
        for name in ("ballast-1", "ballast-2"):
            os.unlink(os.path.join(mount, name))
        drainer.run_once()
        out["freed"] = observe(spool, transport, drainer)
    finally:
        drainer.close()
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
