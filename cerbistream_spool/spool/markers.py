"""Marker bodies: gap, open and close records (docs/FORMAT.md §4.2).

A marker body is a msgpack map, encoded like an event body (spool/record.py
``encode_body``). Keys are written in this order, do not reorder (the chain
hash covers the bytes)::

    gap (kind 2)    {"reason", "count", "first_seq", "last_seq", "lane"?, "detail"}
    open (kind 3)   {"pid", "clean", "truncated_bytes", "notes"}
    close (kind 4)  {"pid"}

``lane`` is written only by the drainer (the lane the range belongs to, which may
be another than the one the gap record is in); ``first_seq``/``last_seq`` are nil
when the lost records never received sequence numbers in this lane. ``reason``
is one of :class:`GapReason` (str-valued: the bytes on disk are the plain
strings); readers keep any other string they find, so an unknown reason from a
newer release is still counted.

:class:`Gap` builds a gap body and :func:`gap_fields` reads one back, keeping
only the keys of :data:`GAP_KEYS` that have their type: a hostile body never
reaches a report as anything but these.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from typing import Any, Dict, List, Optional, Tuple, Union

from cerbistream_spool.spool.record import encode_body

__all__ = [
    "GAP_KEYS",
    "Gap",
    "GapReason",
    "close_body",
    "gap_fields",
    "open_body",
]


class GapReason(str, Enum):
    """Why records are missing (the ``reason`` of a gap record)."""

    OVERFLOW = "overflow"  # refused by the size cap, or unlinked by drop_oldest
    WRITE_ERROR = "write-error"  # never written: the write failed or the spool was not open
    EMIT_ERROR = "emit-error"  # the handler could not build the event
    VANISHED = "vanished"  # the lane's files were removed under the writer
    CORRUPTION = "corruption"  # damaged on disk (recovery, drainer)
    LOST = "lost"  # delivered records gone from disk after a crash (recovery)
    DEAD_LETTER = "dead-letter"  # the broker can never take it (drainer)


GAP_KEYS: Tuple[str, ...] = ("reason", "count", "first_seq", "last_seq", "lane", "detail")
_GAP_TYPES: Dict[str, Tuple[type, ...]] = {
    "reason": (str,),
    "count": (int,),
    "first_seq": (int, type(None)),
    "last_seq": (int, type(None)),
    "lane": (int,),
    "detail": (str,),
}


@dataclass(frozen=True)
class Gap:
    """One gap record's body: ``count`` records lost, ``first_seq..last_seq`` when known."""

    reason: Union[GapReason, str]
    count: int
    detail: str
    first_seq: Optional[int] = None
    last_seq: Optional[int] = None
    lane: Optional[int] = None  # the drainer's gaps: the lane the range belongs to

    @classmethod
    def span(
        cls,
        reason: Union[GapReason, str],
        first: int,
        last: int,
        detail: str,
        lane: Optional[int] = None,
    ) -> Gap:
        """The gap of the sequence range ``first..last``."""
        return cls(reason, last - first + 1, detail, first, last, lane)

    def body(self) -> Dict[str, Any]:
        """The body map, keys in the on-disk order."""
        reason = self.reason.value if isinstance(self.reason, GapReason) else self.reason
        body: Dict[str, Any] = {
            "reason": reason,
            "count": self.count,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
        }
        if self.lane is not None:
            body["lane"] = self.lane
        body["detail"] = self.detail
        return body

    def encode(self) -> bytes:
        """The msgpack body bytes of the gap record."""
        return encode_body(self.body())


def gap_fields(body: Dict[Any, Any]) -> Dict[str, Any]:
    """The keys of :data:`GAP_KEYS` in a decoded gap body that have their type."""
    return {
        name: body[name]
        for name, types in _GAP_TYPES.items()
        if name in body and isinstance(body[name], types) and not isinstance(body[name], bool)
    }


def open_body(clean: bool, truncated_bytes: int, notes: List[str]) -> bytes:
    """The body of the open record a writer appends when it opens a lane."""
    return encode_body(
        {"pid": os.getpid(), "clean": clean, "truncated_bytes": truncated_bytes, "notes": notes}
    )


def close_body() -> bytes:
    """The body of the close record ``close()`` appends."""
    return encode_body({"pid": os.getpid()})
