"""Damage in a sealed segment: never acked past silently, quarantined, recorded, neighbours shipped.

A bit flipped in an older, sealed segment of a closed app's lane; the drainer
ships the spool with the real azure-servicebus SDK to the local AMQP peer
(tools/amqp_peer). The records around the damage arrive; the damaged segment
is copied into ``quarantine/`` before its ack unlinks it; a ``corruption`` gap
naming the lane and the lost seq range goes into the chain (here: the lane of
another app the drainer runs beside), ``corrupt_records`` counts the loss and
``last_error``/``status`` say so. verify afterwards shows the gap and nothing
else. The fast tier ships to a MemoryTransport (the damage handling is the
drainer's, whatever the broker); the SDK runs are ``slow``.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Tuple

import pytest

pytest.importorskip("proton")
pytest.importorskip("azure.servicebus")

from spoolkit import flip, frames, read_bytes, segments
from test_drain import (  # noqa: F401 — fixtures are found by name
    FAST,
    MemoryBroker,
    _no_connection_env,
    check_delivered,
    make_handler,
    peers,
    spooled_events,
    transport_for,
)

from cerbistream_spool import SpoolHandler, verify
from cerbistream_spool.drain import Drainer
from cerbistream_spool.spool.lanes import QUARANTINE_DIR, lane_dir
from cerbistream_spool.status import status as spool_status
from tools.amqp_peer import LocalPeer

SMALL_SEGMENTS = {"segment_max_bytes": 4096, "max_spool_bytes": 1 << 24, "fsync": "never"}


@pytest.mark.parametrize("broker", ["memory", pytest.param("peer", marks=pytest.mark.slow)])
@pytest.mark.parametrize("where", ["payload-bit", "length-field"])
def test_a_damaged_record_in_a_sealed_segment_is_quarantined_recorded_and_its_neighbours_shipped(
    spool_dir: str,
    peers: Callable[..., LocalPeer],  # noqa: F811
    make_handler: Callable[..., Tuple[SpoolHandler, logging.Logger]],  # noqa: F811
    where: str,
    broker: str,
) -> None:
    old_app, old_log = make_handler(spool_dir, drain=False, **SMALL_SEGMENTS)  # lane 0
    live_app, live_log = make_handler(spool_dir, drain=False, **SMALL_SEGMENTS)  # lane 1
    assert (old_app.writer.lane, live_app.writer.lane) == (0, 1)
    for i in range(40):
        old_log.info("old %d", i, extra={"i": i})
    old_app.close()  # lane 0 is now an idle lane of a gone process
    live_log.info("live")
    live_app.flush()

    segs = segments(spool_dir, 0)
    assert len(segs) >= 4
    path = segs[1][1]  # sealed: newer segments follow
    start, _, damaged = frames(path)[2]
    if where == "payload-bit":
        flip(path, start + 30)
    else:
        flip(path, start + 1)  # the frame's length field
    image = read_bytes(path)
    spooled = spooled_events(spool_dir)
    lost_id = damaged.value()["LogId"]
    expected = {k: v for k, v in spooled.items() if k != lost_id}
    assert len(expected) == 40  # 39 old + 1 live: the damaged one cannot be read

    peer: Any = peers() if broker == "peer" else MemoryBroker()
    transport = transport_for(peer.connection_string()) if broker == "peer" else peer.transport
    drainer = Drainer.for_writer(spool_dir, transport, live_app.writer, **FAST)
    try:
        assert drainer.drain_until_idle(timeout=20) == 0
    finally:
        drainer.close()

    counts = check_delivered(peer.accepted(), expected)  # the neighbours arrived
    assert lost_id not in counts
    qdir = os.path.join(spool_dir, QUARANTINE_DIR)
    copies = os.listdir(qdir) if os.path.isdir(qdir) else []
    assert len(copies) == 1, f"no quarantine copy of the damaged segment: {copies}"
    [copy] = copies
    assert copy.startswith("0000-") and copy.endswith(os.path.basename(path))
    stats = drainer.stats()
    assert stats.get("corrupt_records") == 1
    assert "corruption" in stats["last_error"]
    assert os.path.basename(path) in stats["last_error"]
    assert read_bytes(os.path.join(spool_dir, QUARANTINE_DIR, copy)) == image  # for salvage
    assert not os.path.exists(path)  # acked past, then unlinked: only after the copy
    doc = spool_status(spool_dir)
    assert "corruption" in (doc["last_error"] or "")
    assert doc["quarantined"] == [copy]

    live_app.close()
    report = verify(spool_dir)
    assert report.valid, report.problems
    assert report.pending == 0
    assert not os.path.exists(lane_dir(spool_dir, 0))  # the drained lane is gone ...
    [gap] = [g for g in report.gaps if g.get("reason") == "corruption"]  # ... its loss is not
    assert gap["lane"] == 0  # the lane it names (it was written in lane 1, the live app's)
    assert (gap["first_seq"], gap["last_seq"], gap["count"]) == (damaged.seq, damaged.seq, 1)
    assert gap["detail"].startswith(f"lane 0 segment {os.path.basename(path)}")
    assert report.quarantined == [copy]
