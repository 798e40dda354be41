"""The spool as devices and servers treat it: races between an app's writer and its
drainer, odd files where spool files should be, fork and kill -9.

Each test pins one defect found by running the spool that way.
"""

from __future__ import annotations

from typing import Any, Dict

import msgpack
import pytest
from spoolkit import event

import cerbistream_spool.spool.capacity as capacity_module
from cerbistream_spool.spool import SpoolConfig, SpoolReader, SpoolWriter
from cerbistream_spool.spool.record import Kind

DROP_OLDEST = SpoolConfig(
    fsync="never", overflow="drop_oldest", segment_max_bytes=4096, max_spool_bytes=16384
)


def _gaps(spool: str) -> list:  # type: ignore[type-arg]
    reader = SpoolReader(spool, from_start=True, remove_idle_lanes=False)
    return [
        msgpack.unpackb(rec.body, strict_map_key=False)
        for batch in reader.batches()
        for rec in batch.records
        if rec.kind == Kind.GAP
    ]


def test_drop_oldest_never_counts_lost_what_was_acked_while_it_dropped(
    spool_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drainer acks (and unpins) a segment after the writer read the cursor for a
    drop but before it locked that segment: its events were delivered, not lost."""
    writer = SpoolWriter(spool_dir, DROP_OLDEST)
    for i in range(80):
        writer.append(event(i, 100))
    reader = SpoolReader(spool_dir, pin=True)  # the drainer's reader
    batch = reader.read_batch(max_records=10)
    assert batch is not None
    sent = [rec.seq for rec in batch.events()]
    real = capacity_module.unlink_unpinned
    acked = []

    def ack_first(path: str, **kwargs: Any) -> Any:
        if not acked:
            reader.ack(batch)  # the broker took the batch: cursor written, pins dropped
            acked.append(batch)
        return real(path, **kwargs)

    monkeypatch.setattr(capacity_module, "unlink_unpinned", ack_first)
    for i in range(80, 200):
        writer.append(event(i, 100))
    monkeypatch.undo()
    assert acked
    stats: Dict[str, Any] = dict(writer.stats())
    writer.close()
    assert stats["events_delivered"] == len(sent)  # what the broker got
    assert stats["events"] == (
        stats["events_delivered"] + stats["pending_records"] + stats["dropped"] + stats["lost"]
    )
    for gap in _gaps(spool_dir):
        if gap.get("first_seq") is not None:  # a gap without a range claims no event
            # no gap claims a delivered event (a gap carried from before the read may
            # claim seqs below it: docs/FORMAT.md §4.2)
            assert not gap["first_seq"] <= sent[-1] or gap["last_seq"] < sent[0], gap


def test_drop_oldest_counts_lost_a_segment_the_drainer_acks_past_right_after_its_unlink(
    spool_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right after the writer unlinks the oldest segment, the drainer skips it (gone),
    ships the next records and acks past it: its events are lost, not delivered."""
    writer = SpoolWriter(spool_dir, DROP_OLDEST)
    for i in range(80):
        writer.append(event(i, 100))
    reader = SpoolReader(spool_dir, pin=True)
    real = capacity_module.unlink_unpinned
    sent: list = []  # type: ignore[type-arg]

    def then_ship(path: str, **kwargs: Any) -> Any:
        done = real(path, **kwargs)
        if done and not sent:
            batch = reader.read_batch(max_records=10)
            assert batch is not None
            sent.extend(rec.seq for rec in batch.events())
            reader.ack(batch)
        return done

    monkeypatch.setattr(capacity_module, "unlink_unpinned", then_ship)
    for i in range(80, 200):
        writer.append(event(i, 100))
    monkeypatch.undo()
    assert sent
    stats: Dict[str, Any] = dict(writer.stats())
    writer.close()
    assert stats["events_delivered"] == len(sent)
    assert stats["events"] == (
        stats["events_delivered"] + stats["pending_records"] + stats["dropped"] + stats["lost"]
    )
