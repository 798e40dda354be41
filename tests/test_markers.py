"""Marker bodies (spool/markers.py): on disk, the bytes of the plain maps, keys in order."""

from __future__ import annotations

import os

import msgpack

from cerbistream_spool.spool.markers import GAP_KEYS, Gap, GapReason, close_body, open_body


def _plain(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def test_gap_bodies_are_the_plain_maps_in_key_order() -> None:
    """A writer's gap leaves out lane; a drainer's carries it before detail; reasons are strings."""
    owed = Gap(GapReason.WRITE_ERROR, 3, "write failed")
    assert owed.encode() == _plain(
        {
            "reason": "write-error",
            "count": 3,
            "first_seq": None,
            "last_seq": None,
            "detail": "write failed",
        }
    )
    dead = Gap.span(GapReason.DEAD_LETTER, 7, 7, "too large", lane=0)
    assert dead.encode() == _plain(
        {
            "reason": "dead-letter",
            "count": 1,
            "first_seq": 7,
            "last_seq": 7,
            "lane": 0,
            "detail": "too large",
        }
    )
    assert tuple(dead.body()) == GAP_KEYS
    assert Gap("emit-error", 1, "x").body()["reason"] == GapReason.EMIT_ERROR


def test_open_and_close_bodies_are_the_plain_maps() -> None:
    pid = os.getpid()
    assert open_body(False, 12, ["note"]) == _plain(
        {"pid": pid, "clean": False, "truncated_bytes": 12, "notes": ["note"]}
    )
    assert close_body() == _plain({"pid": pid})
