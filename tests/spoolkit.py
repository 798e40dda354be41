"""Helpers for spool tests: build spools, list frames, read everything back."""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, List, Tuple

from cerbistream_spool.spool import SpoolConfig, SpoolReader, SpoolWriter
from cerbistream_spool.spool.lanes import lane_dir
from cerbistream_spool.spool.record import Record, Scanned, scan
from cerbistream_spool.spool.segments import HEADER_SIZE, list_segments

SMALL = SpoolConfig(fsync="never", segment_max_bytes=4096, max_spool_bytes=1 << 24)


def event(i: int, size: int = 40) -> Dict[str, Any]:
    """A small event with a unique id."""
    return {"LogId": f"id-{i}", "n": i, "message": "x" * size}


def build(spool_dir: str, n: int, config: SpoolConfig = SMALL) -> List[int]:
    """Write ``n`` events and close cleanly; returns their seqs."""
    with SpoolWriter(spool_dir, config) as writer:
        return [writer.append(event(i)) for i in range(n)]


def segments(spool_dir: str, lane: int = 0) -> List[Tuple[int, str]]:
    """``[(base, path)]`` of a lane."""
    return list_segments(lane_dir(spool_dir, lane))


def frames(path: str) -> List[Tuple[int, int, Record]]:
    """``[(offset, end, record)]`` of a segment's valid frames."""
    with open(path, "rb") as fh:
        buf = fh.read()
    out = []
    for item in scan(buf, HEADER_SIZE):
        if not isinstance(item, Scanned):
            return out
        out.append((item.offset, item.end, item.record))
    return out


def read_all(spool_dir: str, ack: bool = False) -> List[Record]:
    """Every record a reader hands out (optionally acking as it goes)."""
    reader = SpoolReader(spool_dir)
    out: List[Record] = []
    for batch in reader.batches():
        out.extend(batch.records)
        if ack:
            reader.ack(batch)
    return out


def event_ids(records: List[Record]) -> List[str]:
    """LogIds of the event records."""
    return [r.value()["LogId"] for r in records if r.kind == 1]


def flip(path: str, offset: int) -> None:
    """Invert one byte of a file in place."""
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def size(path: str) -> int:
    """File size."""
    return os.path.getsize(path)


def read_bytes(path: str) -> bytes:
    """A whole file's bytes."""
    with open(path, "rb") as fh:
        return fh.read()


def wait_until(predicate: Callable[[], bool], timeout: float, every: float = 0.02) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()
