"""Properties: any msgpack-able event round-trips; a stateful model of append/rotate/ack/reopen."""

from __future__ import annotations

import shutil
import tempfile
from typing import Any, Dict, List

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from tiers import examples

from cerbistream_spool import verify
from cerbistream_spool.spool import Kind, SpoolConfig, SpoolReader, SpoolWriter
from cerbistream_spool.spool.chain import GENESIS, Chain
from cerbistream_spool.spool.record import (
    FrameStatus,
    decode_payload,
    encode_body,
    encode_record,
    read_frame,
)

leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=50)
    | st.binary(max_size=50)
)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=examples(300, fast=60), deadline=None)
@given(value=values, seq=st.integers(1, 2**64 - 1), key=st.sampled_from([None, b"k"]))
def test_any_msgpack_value_round_trips_through_a_frame(value: Any, seq: int, key: Any) -> None:
    chain = Chain(key)
    frame, digest = encode_record(seq, Kind.EVENT, 123, GENESIS, encode_body(value), chain)
    read = read_frame(frame, 0)
    assert read.status is FrameStatus.OK and read.end == len(frame)
    rec = decode_payload(read.payload)
    assert not isinstance(rec, str)
    assert (rec.seq, rec.kind, rec.ts_ns, rec.prev_hash, rec.hash) == (
        seq,
        Kind.EVENT,
        123,
        GENESIS,
        digest,
    )
    assert rec.value() == value
    assert chain.matches(GENESIS, rec.canonical(), rec.hash)


@settings(max_examples=examples(25, fast=8), deadline=None)
@given(events=st.lists(st.dictionaries(st.text(max_size=8), values, max_size=4), max_size=20))
def test_any_events_round_trip_through_writer_and_reader(events: List[Dict[str, Any]]) -> None:
    spool_dir = tempfile.mkdtemp()
    try:
        with SpoolWriter(spool_dir, SpoolConfig(fsync="never", segment_max_bytes=4096)) as w:
            for e in events:
                w.append(e)
        reader = SpoolReader(spool_dir)
        got = [r.value() for b in reader.batches() for r in b.events()]
        assert got == events
        assert verify(spool_dir).valid
    finally:
        shutil.rmtree(spool_dir)


class SpoolModel(RuleBasedStateMachine):
    """The spool against a list: pending = appended minus acknowledged, always, across reopens."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp()
        self.config = SpoolConfig(fsync="never", segment_max_bytes=4096)
        self.writer = SpoolWriter(self.dir, self.config)
        self.reader = SpoolReader(self.dir)
        self.appended: List[int] = []
        self.acked = 0  # number of events acknowledged, in order
        self.counter = 0

    @rule(n=st.integers(1, 40), size=st.integers(0, 400))
    def append(self, n: int, size: int) -> None:
        for _ in range(n):
            self.counter += 1
            self.writer.append({"n": self.counter, "pad": "x" * size})
            self.appended.append(self.counter)

    @rule(limit=st.integers(1, 60))
    def ack_some(self, limit: int) -> None:
        batch = self.reader.read_batch(max_records=limit)
        if batch is None:
            return
        got = [r.value()["n"] for r in batch.events()]
        assert got == self.appended[self.acked : self.acked + len(got)]
        self.reader.ack(batch)
        self.acked += len(got)

    @rule()
    def reopen_writer(self) -> None:
        self.writer.close()
        self.writer = SpoolWriter(self.dir, self.config)
        assert self.writer.lane == 0 or self.acked == len(self.appended)

    @rule()
    def restart_reader(self) -> None:
        self.reader = SpoolReader(self.dir)

    @invariant()
    def pending_matches_the_model(self) -> None:
        fresh = SpoolReader(self.dir, remove_idle_lanes=False)
        pending = [r.value()["n"] for b in fresh.batches() for r in b.events()]
        assert pending == self.appended[self.acked :]

    def teardown(self) -> None:
        self.writer.close()
        report = verify(self.dir)
        shutil.rmtree(self.dir)
        assert report.valid, report.problems


TestSpoolModel = SpoolModel.TestCase
TestSpoolModel.settings = settings(
    max_examples=examples(30, fast=8), stateful_step_count=25, deadline=None
)
