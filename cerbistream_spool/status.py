"""status(spool_dir) → what ``cerbispool status`` prints: lanes, segments, pending, errors.

Lanes, sizes, cursors and pending events come from one inventory of the spool
(spool/inventory.py: pending events counted exactly, markers and gap records are not
events); added here: which lanes have a live writer, quarantined copies, foreign
entries, the drainer's last published counters and the totals of the losses ledger
(spool/losses.py): every loss whose gap record was delivered.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Optional

from cerbistream_spool.spool.fsio import atomic_write, list_entries, read_regular
from cerbistream_spool.spool.inventory import Depth, take_inventory
from cerbistream_spool.spool.lanes import QUARANTINE_DIR, foreign_entries, lane_is_live
from cerbistream_spool.spool.losses import read_ledger

__all__ = ["STATUS_FILE", "read_drain_status", "status", "write_drain_status"]

STATUS_FILE = "drain-status.json"
_STATUS_MAX_BYTES = 1 << 20


def status(spool_dir: str) -> Dict[str, Any]:
    """Per-lane and total pending records/bytes, oldest pending age, the drainer's last error."""
    now = time.time_ns()
    inventory = take_inventory(spool_dir, Depth.COUNT, tails=True)
    lanes = [
        {
            "lane": ln.lane,
            "live": lane_is_live(spool_dir, ln.lane),
            "segments": len(ln.segments),
            "bytes": ln.bytes,
            "pending_bytes": ln.pending_bytes or 0,
            "acked_seq": ln.acked_seq,
            "last_seq": ln.last_seq,
            "pending_records": ln.pending_events or 0,
            "oldest_pending_age_s": _age_s(now, ln.oldest_pending_ns),
            "cursor_problem": ln.cursor_problem,
        }
        for ln in inventory.lanes
    ]
    qdir = os.path.join(spool_dir, QUARANTINE_DIR)
    drain = read_drain_status(spool_dir) or {}
    ledger = read_ledger(spool_dir)
    return {
        "spool_dir": os.path.abspath(spool_dir),
        "lanes": lanes,
        "segments": sum(ln["segments"] for ln in lanes),
        "pending_records": inventory.pending_events,
        "pending_bytes": inventory.pending_bytes,
        "spool_bytes": inventory.bytes,
        "oldest_pending_age_s": _age_s(now, inventory.oldest_pending_ns),
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


def _age_s(now_ns: int, then_ns: Optional[int]) -> Optional[float]:
    return None if then_ns is None else max(0.0, (now_ns - then_ns) / 1e9)


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
