"""The checker: materialise a crash state, recover, verify, read back, compare.

Promises checked (docs/CONTRACT.md §4, docs/RELIABILITY.md "What is checked"):

- opening the spool (writer recovery, then close), ``verify`` and reading never raise;
- ``verify`` finds no problem (an ``unclean-close`` notice is the only one allowed);
- every *promised* record is read back exactly once at its (lane, seq), its chain
  linked to the record before it: an ``always``-mode append that returned, an append
  that returned before a ``flush()`` that returned began, before a ``close()`` that
  returned, or (``interval``) before the start of the last completed background fsync;
- no event id is read back twice;
- the cursor is at least the last ack that returned and at most the last ack begun;
  nothing at or below it comes back pending, nothing promised above it is lost; a lane
  that is gone (removed by the reader once idle) must have had every promised record
  in an ack begun.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from cerbistream_spool.spool.config import SpoolConfig
from cerbistream_spool.spool.cursor import Cursor, read_cursor
from cerbistream_spool.spool.fs import OsFileSystem, use
from cerbistream_spool.spool.lanes import lane_dir, list_lanes
from cerbistream_spool.spool.reader import SpoolReader
from cerbistream_spool.spool.record import Kind, decode_body
from cerbistream_spool.spool.writer import SpoolWriter
from cerbistream_spool.verify import verify
from tools.crashstates.recorder import Recording
from tools.crashstates.states import CrashState, build, materialise

__all__ = ["Failure", "Promises", "check_image", "check_state", "promises"]

Key = Tuple[int, int]  # (lane, seq)


@dataclass(frozen=True)
class Failure:
    """A crash state that broke a promise."""

    workload: str
    state: str
    detail: str

    def __str__(self) -> str:
        return f"{self.workload}: {self.state}: {self.detail}"


class _NoSync(OsFileSystem):
    """The checker's own filesystem: a recovery in a scratch directory needs no fsync."""

    def fsync(self, fd: int, /) -> None:  # type: ignore[override]
        return None

    def fdatasync(self, fd: int, /) -> None:  # type: ignore[override]
        return None

    def fsync_dir(self, path: str, /) -> None:
        return None


@dataclass
class Promises:
    """What the workload was told before the crash point."""

    records: Dict[Key, str]  # (lane, seq) -> event id, durable by promise
    appended: Dict[str, Key]  # every event id appended (returned) -> (lane, seq)
    acked_done: Dict[int, int]  # lane -> highest seq of an ack that returned
    acked_begun: Dict[int, int]  # lane -> highest seq of an ack begun


def promises(rec: Recording, k: int, pre: Dict[Key, str]) -> Promises:
    """The promises of the events before ``k`` (``pre``: records durable at the start)."""
    records: Dict[Key, str] = dict(pre)
    appended: Dict[str, Key] = {v: key for key, v in pre.items()}
    order: List[Tuple[int, Key, str]] = []
    begun: Dict[Any, int] = {}
    done: Dict[int, int] = {}
    begun_ack: Dict[int, int] = {}
    fsync_begin: Dict[str, int] = {}  # thread -> index of its fsync_begin
    for i, op in enumerate(rec.ops[:k]):
        if op.kind == "event":
            if op.name == "append":
                lane, seq, event_id, mode = op.info
                order.append((i, (lane, seq), event_id))
                appended[event_id] = (lane, seq)
                if mode == "always":
                    records[(lane, seq)] = event_id
            elif op.name in ("flush_begin", "close_begin"):
                begun[op.info] = i
            elif op.name in ("flush_end", "close_end"):
                upto = begun.get(op.info, -1)
                records.update((key, eid) for j, key, eid in order if j < upto)
            elif op.name == "ack_begin":
                begun_ack[op.info[0]] = max(begun_ack.get(op.info[0], 0), op.info[1])
            elif op.name == "ack_end":
                done[op.info[0]] = max(done.get(op.info[0], 0), op.info[1])
            elif op.name == "fsync_begin":
                fsync_begin[op.thread] = i
        elif op.kind == "fsync" and op.thread.startswith("cerbispool-flush"):
            upto = fsync_begin.get(op.thread, -1)  # interval: the background fsync returned
            records.update((key, eid) for j, key, eid in order if j < upto)
    return Promises(records, appended, done, begun_ack)


def check_image(
    spool: str,
    config: SpoolConfig,
    want: Promises,
    verify_key: Optional[bytes],
    excused: Tuple[str, ...] = (),
) -> List[str]:
    """Recover the spool at ``spool``, verify, read it back; what broke (empty: nothing)."""
    present = set(list_lanes(spool))
    try:
        with use(_NoSync()):
            # one writer per lane: each takes (and recovers) the first free lane
            writers = [SpoolWriter(spool, config) for _ in range(max(1, len(list_lanes(spool))))]
            for writer in writers:
                writer.close()
            report = verify(spool, verify_key)
            reader = SpoolReader(spool, remove_idle_lanes=False)
            batches = list(reader.batches())
    except Exception as exc:
        return [f"raised {type(exc).__name__}: {exc}"]
    broken = [
        f"verify: {p.kind} lane {p.lane} {p.segment}@{p.offset}: {p.detail}"
        for p in report.problems
    ]
    broken += [f"notice {n.kind}: {n.detail}" for n in report.notices if n.kind != "unclean-close"]
    broken += [f"reader: {p}" for p in reader.problems]
    seen: Dict[Key, str] = {}
    ids: Dict[str, int] = {}
    last: Dict[int, Any] = {}
    gaps: List[Tuple[int, int, int]] = []  # (lane, first, last) of excusing gap records
    for batch in batches:
        for record in batch.records:
            prev = last.get(batch.lane)
            if prev is not None and prev.seq + 1 == record.seq and record.prev_hash != prev.hash:
                broken.append(f"chain broken at lane {batch.lane} seq {record.seq}")
            last[batch.lane] = record
            body = decode_body(record.body)
            if (
                record.kind == Kind.GAP
                and isinstance(body, dict)
                and body.get("reason") in excused
                and isinstance(body.get("first_seq"), int)
            ):
                gaps.append((body.get("lane", batch.lane), body["first_seq"], body["last_seq"]))
            if record.kind != Kind.EVENT:
                continue
            event_id = body.get("id") if isinstance(body, dict) else None
            if isinstance(event_id, str):
                seen[(batch.lane, record.seq)] = event_id
                ids[event_id] = ids.get(event_id, 0) + 1
    broken += [f"event {eid} read {n} times" for eid, n in ids.items() if n > 1]
    cursors: Dict[int, int] = {}
    for lane in set(list_lanes(spool)) | set(want.acked_done):
        found = read_cursor(lane_dir(spool, lane), lane)
        cursors[lane] = found.acked_seq if isinstance(found, Cursor) else 0
    for lane in set(want.acked_begun) - present:  # removed once delivered (idle lane)
        cursors[lane] = want.acked_begun[lane]
    for lane, seq in want.acked_done.items():
        if cursors.get(lane, 0) < seq:
            broken.append(f"lane {lane}: cursor {cursors.get(lane, 0)} below returned ack {seq}")
    for lane, seq in cursors.items():
        if seq > want.acked_begun.get(lane, 0):
            broken.append(f"lane {lane}: cursor {seq} above any ack begun")
    for (lane, seq), eid in seen.items():
        if lane in present and seq <= cursors.get(lane, 0):
            broken.append(f"lane {lane} seq {seq} ({eid}) pending at or below the cursor")
    for (lane, seq), eid in sorted(want.records.items()):
        if seq <= cursors.get(lane, 0):
            continue
        got = seen.get((lane, seq))
        if got is None and any(g[0] == lane and g[1] <= seq <= g[2] for g in gaps):
            continue  # dropped by the overflow policy, and the gap record says so
        if got != eid:
            broken.append(f"promised lane {lane} seq {seq} ({eid}) lost (found {got})")
    for eid, n in ids.items():
        if n == 1 and eid in want.appended:
            where = next(key for key, v in seen.items() if v == eid)
            if where != want.appended[eid]:
                broken.append(f"event {eid} at {where}, appended at {want.appended[eid]}")
    return broken


def check_state(
    name: str,
    rec: Recording,
    state: CrashState,
    config: SpoolConfig,
    pre: Dict[Key, str],
    scratch: str,
    *,
    verify_key: bool = True,
    excused: Tuple[str, ...] = (),
) -> Optional[Failure]:
    """Check one crash state in ``scratch`` (emptied first); the failure, else None."""
    dirs, files = build(rec, state)
    if os.path.exists(scratch):
        shutil.rmtree(scratch)
    materialise(rec.root, scratch, dirs, files)
    spool = os.path.join(scratch, "spool")
    want = promises(rec, state.k, pre)
    key = config.signing_key if verify_key else None
    broken = check_image(spool, config, want, key, excused)
    if broken:
        return Failure(name, state.describe(), "; ".join(broken[:5]))
    return None
