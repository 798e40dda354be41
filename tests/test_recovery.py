"""Recovery on open: torn tails truncated, corruption quarantined, loss recorded, never a loop."""

from __future__ import annotations

import os
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spoolkit import SMALL, build, event_ids, flip, frames, read_all, read_bytes, segments
from tiers import examples

from cerbistream_spool import verify
from cerbistream_spool.spool import Kind, SpoolReader, SpoolWriter
from cerbistream_spool.spool.cursor import Cursor, write_cursor
from cerbistream_spool.spool.lanes import QUARANTINE_DIR, lane_dir
from cerbistream_spool.spool.segments import HEADER_SIZE


def reopen(spool_dir: str) -> list:
    with SpoolWriter(spool_dir, SMALL) as writer:
        notes = list(writer.recovery_notes)
        writer.append({"LogId": "after"})
    return notes


def gaps(spool_dir: str) -> list:
    return verify(spool_dir).gaps


def test_torn_tail_is_truncated_and_chain_still_verifies(spool_dir: str) -> None:
    build(spool_dir, 40)
    path = segments(spool_dir)[-1][1]
    _, end, rec = frames(path)[-1]
    assert rec.kind == Kind.CLOSE
    with open(path, "r+b") as fh:
        fh.truncate(end - 3)
    notes = reopen(spool_dir)
    assert any("truncated torn tail" in n for n in notes), notes
    report = verify(spool_dir)
    assert report.valid, report.problems
    assert event_ids(read_all(spool_dir)) == [f"id-{i}" for i in range(40)] + ["after"]


def test_garbage_after_the_last_record_is_truncated(spool_dir: str) -> None:
    build(spool_dir, 10)
    path = segments(spool_dir)[-1][1]
    with open(path, "ab") as fh:
        fh.write(b"\x40\x00\x00\x00partial frame")
    assert any("truncated" in n for n in reopen(spool_dir))
    assert verify(spool_dir).valid


def test_mid_segment_corruption_is_quarantined_with_prefix_kept_and_a_gap(spool_dir: str) -> None:
    build(spool_dir, 40)
    path = segments(spool_dir)[-1][1]
    layout = frames(path)
    bad_off, _, bad_rec = layout[2]
    last_seq = layout[-1][2].seq
    flip(path, bad_off + 20)
    notes = reopen(spool_dir)
    assert any("quarantined" in n for n in notes), notes
    quarantined = os.listdir(os.path.join(spool_dir, QUARANTINE_DIR))
    assert len(quarantined) == 1
    assert read_bytes(os.path.join(spool_dir, QUARANTINE_DIR, quarantined[0]))[bad_off:] != b""
    report = verify(spool_dir)
    assert report.valid, report.problems
    (gap,) = report.gaps
    assert gap["reason"] == "corruption"
    assert (gap["first_seq"], gap["last_seq"]) == (bad_rec.seq, last_seq)
    assert gap["count"] == last_seq - bad_rec.seq + 1
    records = read_all(spool_dir)
    assert [r.seq for r in records if r.seq < bad_rec.seq][-1] == bad_rec.seq - 1
    assert min(r.seq for r in records if r.value().get("LogId") == "after") > last_seq


def test_an_unreadable_last_header_is_quarantined_and_the_chain_resumes(spool_dir: str) -> None:
    build(spool_dir, 60)
    segs = segments(spool_dir)
    base, path = segs[-1]
    flip(path, 3)
    notes = reopen(spool_dir)
    assert any("quarantined" in n for n in notes), notes
    report = verify(spool_dir)
    assert report.valid, report.problems
    (gap,) = report.gaps
    assert gap["first_seq"] == base and gap["reason"] == "corruption"


def test_a_segment_shorter_than_its_header_is_removed(spool_dir: str) -> None:
    build(spool_dir, 10)
    base = frames(segments(spool_dir)[-1][1])[-1][2].seq + 1
    stray = os.path.join(lane_dir(spool_dir, 0), f"{base:020d}.seg")
    with open(stray, "wb") as fh:
        fh.write(b"CERBI")
    assert any("removed empty segment" in n for n in reopen(spool_dir))
    assert verify(spool_dir).valid


def test_a_cursor_ahead_of_the_tail_never_reuses_acknowledged_seqs(spool_dir: str) -> None:
    build(spool_dir, 10)
    write_cursor(lane_dir(spool_dir, 0), Cursor(0, 500, b"\0" * 32))
    reopen(spool_dir)
    report = verify(spool_dir)
    assert [g["reason"] for g in report.gaps] == ["lost"]
    seqs = [r.seq for r in read_all(spool_dir)]
    assert seqs and min(seqs) > 500


def test_an_interrupted_cursor_update_leaves_the_cursor_intact(spool_dir: str) -> None:
    build(spool_dir, 5)
    tmp = os.path.join(lane_dir(spool_dir, 0), "cursor.tmp")
    with open(tmp, "wb") as fh:
        fh.write(b"half")
    reopen(spool_dir)
    assert verify(spool_dir).valid
    reader = SpoolReader(spool_dir)
    reader.ack(reader.read_batch())
    assert verify(spool_dir).valid


@settings(
    max_examples=examples(40, fast=10),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(blob=st.binary(max_size=3000), keep=st.integers(0, 4000))
def test_opening_never_fails_or_loops_on_any_last_segment(
    tmp_path_factory, blob: bytes, keep: int
) -> None:
    spool_dir = str(tmp_path_factory.mktemp("garbage") / "spool")
    build(spool_dir, 30)
    path = segments(spool_dir)[-1][1]
    data = read_bytes(path)
    with open(path, "wb") as fh:
        fh.write(data[: HEADER_SIZE + keep] + blob)
    started = time.monotonic()
    reopen(spool_dir)
    assert time.monotonic() - started < 5
    report = verify(spool_dir)
    assert report.valid, report.problems
