"""status(spool_dir) → what ``cerbispool status`` prints: lanes, segments, pending, errors.

Reads each lane's cursor and sizes, and the records above the cursor (to count
pending events exactly; markers and gap records are not events), and the totals of
the losses ledger (spool/losses.py): every loss whose gap record was delivered.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Optional

from cerbistream_spool.spool.cursor import Cursor, read_cursor
from cerbistream_spool.spool.fsio import atomic_write, file_size, list_entries, read_regular
from cerbistream_spool.spool.lanes import (
    QUARANTINE_DIR,
    foreign_entries,
    lane_dir,
    lane_is_live,
    list_lanes,
)
from cerbistream_spool.spool.losses import read_ledger
from cerbistream_spool.spool.reader import pending_events
from cerbistream_spool.spool.recovery import scan_tail
from cerbistream_spool.spool.segments import list_segments

__all__ = ["STATUS_FILE", "read_drain_status", "status", "write_drain_status"]

STATUS_FILE = "drain-status.json"
_STATUS_MAX_BYTES = 1 << 20


def status(spool_dir: str) -> Dict[str, Any]:
    """Per-lane and total pending records/bytes, oldest pending age, the drainer's last error."""
    lanes = []
    now = time.time_ns()
    for lane in list_lanes(spool_dir):
        ldir = lane_dir(spool_dir, lane)
        segments = list_segments(ldir)
        cursor = read_cursor(ldir, lane)
        acked = cursor.acked_seq if isinstance(cursor, Cursor) else 0
        last_seq = None
        if segments:
            try:
                tail = scan_tail(read_regular(segments[-1][1]))
                last_seq = tail.last.seq if tail.last else segments[-1][0] - 1
            except OSError:  # removed by a drainer meanwhile, or replaced by a foreign file
                last_seq = None
        pending, pending_bytes, oldest = pending_events(spool_dir, lane)
        lanes.append(
            {
                "lane": lane,
                "live": lane_is_live(spool_dir, lane),
                "segments": len(segments),
                "bytes": sum(file_size(p) for _, p in segments),
                "pending_bytes": pending_bytes,
                "acked_seq": acked,
                "last_seq": last_seq,
                "pending_records": pending,
                "oldest_pending_age_s": None if oldest is None else max(0.0, (now - oldest) / 1e9),
                "cursor_problem": cursor if isinstance(cursor, str) else None,
            }
        )
    ages = [ln["oldest_pending_age_s"] for ln in lanes if ln["oldest_pending_age_s"] is not None]
    qdir = os.path.join(spool_dir, QUARANTINE_DIR)
    drain = read_drain_status(spool_dir) or {}
    ledger = read_ledger(spool_dir)
    return {
        "spool_dir": os.path.abspath(spool_dir),
        "lanes": lanes,
        "segments": sum(ln["segments"] for ln in lanes),
        "pending_records": sum(ln["pending_records"] for ln in lanes),
        "pending_bytes": sum(ln["pending_bytes"] for ln in lanes),
        "spool_bytes": sum(ln["bytes"] for ln in lanes),
        "oldest_pending_age_s": max(ages) if ages else None,
        "quarantined": sorted(name for name, _ in list_entries(qdir)),
        "foreign": foreign_entries(spool_dir),
        "last_error": drain.get("last_error"),
        "last_delivery_unix": drain.get("last_delivery_unix"),
        "recorded_losses": {
            "by_reason": ledger.totals,
            "gaps": sum(t.get("gaps", 0) for t in ledger.totals.values()),
            "records": sum(t.get("records", 0) for t in ledger.totals.values()),
            "problems": [f"{p.file} @{p.offset}: {p.kind}: {p.detail}" for p in ledger.problems],
        },
    }


def write_drain_status(spool_dir: str, doc: Dict[str, Any]) -> None:
    """Publish the drainer's counters for ``status`` (rename, no fsync: advisory only)."""
    atomic_write(os.path.join(spool_dir, STATUS_FILE), json.dumps(doc).encode(), durable=False)


def read_drain_status(spool_dir: str) -> Optional[Dict[str, Any]]:
    """The drainer's last published counters, if any (a regular file, never via a link)."""
    try:
        doc = json.loads(read_regular(os.path.join(spool_dir, STATUS_FILE), _STATUS_MAX_BYTES))
    except (OSError, ValueError, RecursionError):  # missing, foreign, or not JSON
        return None
    return doc if isinstance(doc, dict) else None
