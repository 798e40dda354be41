"""Losses outlive delivery: gap records of delivered segments go to losses/ledger.

A gap record lives in a lane segment; once the drainer acks past it the segment is
unlinked and an idle delivered lane removed. The reader first appends the gaps to the
ledger (fsynced), so ``verify`` and ``status`` still show every loss afterwards: through
the real SDK and the local peer, across a drainer killed at every step of the ledger
append (each gap listed and counted once), with a damaged ledger (reported, never a
traceback) and on a really full disk (the gap is kept in its lane, delivery goes on).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest
from click.testing import CliRunner
from spool_child import soak
from spoolkit import event
from test_accounting import _on_a_full_tmpfs

from cerbistream_spool import verify
from cerbistream_spool.cli import main
from cerbistream_spool.drain import Drainer
from cerbistream_spool.errors import SpoolFullError
from cerbistream_spool.spool import SpoolConfig, SpoolReader, SpoolWriter
from cerbistream_spool.spool.chain import GENESIS, Chain
from cerbistream_spool.spool.lanes import lane_dir, list_lanes
from cerbistream_spool.spool.losses import (
    LEDGER_FILE,
    LOSSES_DIR,
    PREVIOUS_FILE,
    LedgerEntry,
    read_ledger,
    record_gaps,
)
from cerbistream_spool.spool.record import Kind, Record, canonical_bytes, encode_body, encode_frame
from cerbistream_spool.spool.segments import list_segments
from cerbistream_spool.status import status
from cerbistream_spool.transports.memory import MemoryTransport
from cerbistream_spool.transports.servicebus import ServiceBusTransport
from tools.amqp_peer import LocalPeer

TINY = SpoolConfig(
    fsync="never", overflow="drop_newest", segment_max_bytes=4096, max_spool_bytes=8192
)
ROOMY = SpoolConfig(fsync="never", segment_max_bytes=4096, max_spool_bytes=1 << 30)
FULL_DISK_LEDGER_APP = Path(__file__).resolve().parent / "full_disk_ledger_app.py"


def spool_with_a_drop(spool_dir: str, after: int = 0) -> int:
    """Lane 0 with one ``overflow`` gap (drop_newest at a tiny cap), then ``after`` more
    events (so the gap sits in a sealed segment); returns how many were refused."""
    refused = 0
    with SpoolWriter(spool_dir, TINY) as writer:
        for i in range(60):
            try:
                writer.append(event(i))
            except SpoolFullError:
                refused += 1
        reader = SpoolReader(spool_dir)
        for batch in reader.batches():
            reader.ack(batch)
        writer.notify_space()
        writer.append(event(1000))  # the owed gap record goes first
    if after:
        with SpoolWriter(spool_dir, ROOMY) as writer:
            for i in range(after):
                writer.append(event(2000 + i))
    assert refused > 0
    return refused


def drain_all(spool_dir: str) -> None:
    drainer = Drainer(spool_dir, MemoryTransport(), backoff_base_s=0.01, backoff_max_s=0.05)
    try:
        assert drainer.drain_until_idle(timeout=20) == 0
        drainer.run_once()
    finally:
        drainer.close()


def cli_json(*args: str) -> Dict[str, Any]:
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    doc: Dict[str, Any] = json.loads(result.stdout)
    return doc


def overflow_gaps(doc: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [g for g in doc["gaps"] if g.get("reason") == "overflow"]


@pytest.fixture
def peer() -> Iterator[LocalPeer]:
    started = LocalPeer.start()
    yield started
    started.stop()


def test_a_drop_delivered_through_the_peer_still_shows_in_verify_and_status(
    spool_dir: str, peer: LocalPeer
) -> None:
    refused = spool_with_a_drop(spool_dir, after=80)
    transport = ServiceBusTransport(
        queue_name="q", connection_string=peer.connection_string(), send_timeout_s=5
    )
    drainer = Drainer(spool_dir, transport, backoff_base_s=0.05, backoff_max_s=0.5)
    try:
        assert drainer.drain_until_idle(timeout=30) == 0
        drainer.run_once()
    finally:
        drainer.close()
    assert peer.wait_for(80, timeout=15)
    assert list_lanes(spool_dir) == [], "the delivered lane is removed"
    report = cli_json("verify", spool_dir, "--json")
    assert report["valid"] and report["foreign"] == [], report
    (gap,) = overflow_gaps(report)
    assert gap["count"] == refused and gap["source"] == "ledger" and gap["lane"] == 0
    losses = cli_json("status", spool_dir, "--json")["recorded_losses"]
    assert losses["by_reason"] == {"overflow": {"gaps": 1, "records": refused}}
    assert losses["problems"] == []
    text = CliRunner().invoke(main, ["status", spool_dir]).stdout
    assert f"recorded loss overflow: {refused} record(s) in 1 gap(s)" in text


def test_a_gap_in_a_sealed_segment_is_recorded_when_that_segment_is_unlinked(
    spool_dir: str,
) -> None:
    refused = spool_with_a_drop(spool_dir, after=200)
    reader = SpoolReader(spool_dir, remove_idle_lanes=False)
    for batch in reader.batches(max_records=20):
        reader.ack(batch)
    assert list_lanes(spool_dir) == [0]
    report = verify(spool_dir)
    assert report.valid, report.problems
    (gap,) = [g for g in report.gaps if g.get("reason") == "overflow"]
    assert gap["source"] == "ledger" and gap["count"] == refused


def kill_failures(spool: str, refused: int, crash_in: str, step: int) -> List[str]:
    """Drain ``spool`` in a child killed before the ``step``-th file-system call of
    ``crash_in``; what is wrong right after, and after a fresh drain. None when the call
    returned before that step (``["done"]``)."""
    with soak.Child(spool, command="drain", die_in=crash_in, die_at=step, max_records=40) as child:
        returncode = child.finish(timeout=30.0)
    if child.steps is not None:
        assert returncode == 0, child.describe()
        return ["done"]
    assert returncode == -signal.SIGKILL, child.describe()
    where = f"{crash_in} step {step}"
    report = verify(spool)
    failures = [f"{where}: verify: {p.kind}: {p.detail}" for p in report.problems]
    if [g["count"] for g in overflow_gaps(report.to_dict())] != [refused]:
        failures.append(f"{where}: right after the kill: {report.gaps}")
    drain_all(spool)
    gaps = [(g["count"], g["source"]) for g in overflow_gaps(verify(spool).to_dict())]
    totals = status(spool)["recorded_losses"]["by_reason"]
    if gaps != [(refused, "ledger")] or totals != {"overflow": {"gaps": 1, "records": refused}}:
        failures.append(f"{where}: after a fresh drain: {gaps} {totals}")
    return failures


def test_after_a_kill_between_ledger_and_cursor_the_gap_is_listed_and_counted_once(
    tmp_path: Path,
) -> None:
    """The ledger is durable before the cursor moves; the next ack appends the same gap
    again, deduplicated by (lane, seq, hash)."""
    spool = str(tmp_path / "spool")
    refused = spool_with_a_drop(spool, after=120)
    failures = kill_failures(spool, refused, "cursor.py:write_cursor", 1)
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_a_drainer_killed_at_every_step_of_the_ledger_append_loses_no_gap(
    tmp_path: Path,
) -> None:
    failures: List[str] = []
    for step in range(1, 80):
        spool = str(tmp_path / f"s{step}")
        refused = spool_with_a_drop(spool, after=120)
        found = kill_failures(spool, refused, "losses.py:record_gaps", step)
        if found == ["done"]:
            assert step > 4, "record_gaps makes more file-system calls than that"
            break
        failures += found
    else:
        pytest.fail("record_gaps still running after 80 crash points")
    assert not failures, "\n".join(failures)


def a_gap_entry(lane: int = 0, seq: int = 7, count: int = 3) -> LedgerEntry:
    """The entry of a chain-valid (unkeyed) ``write-error`` gap record."""
    body = encode_body(
        {"reason": "write-error", "count": count, "first_seq": None, "last_seq": None}
    )
    digest = Chain(None).digest(GENESIS, canonical_bytes(seq, Kind.GAP, 0, body))
    return LedgerEntry.of(lane, Record(seq, Kind.GAP, 0, GENESIS, digest, body), False, 1)


def test_the_same_entry_twice_in_the_file_is_listed_and_counted_once(spool_dir: str) -> None:
    os.makedirs(os.path.join(spool_dir, "lanes"))
    entry = a_gap_entry()
    assert record_gaps(spool_dir, [entry]) == 1
    assert record_gaps(spool_dir, [entry]) == 0, "deduplicated when written"
    path = os.path.join(spool_dir, LOSSES_DIR, LEDGER_FILE)
    with open(path, "ab") as fh:  # as an older writer, or a copy, could leave it
        fh.write(encode_frame(encode_body(entry._asdict())))
    view = read_ledger(spool_dir)
    assert view.entries == [entry] and view.totals == {"write-error": {"gaps": 1, "records": 3}}
    report = verify(spool_dir)
    assert report.valid, report.problems
    assert [(g["reason"], g["count"], g["source"]) for g in report.gaps] == [
        ("write-error", 3, "ledger")
    ]


def test_rotation_keeps_one_previous_file_and_every_count(spool_dir: str) -> None:
    os.makedirs(os.path.join(spool_dir, "lanes"))
    for seq in range(1, 41):
        record_gaps(spool_dir, [a_gap_entry(seq=seq, count=seq)], max_bytes=2048)
    ldir = os.path.join(spool_dir, LOSSES_DIR)
    assert sorted(os.listdir(ldir)) == [LEDGER_FILE, PREVIOUS_FILE]
    assert all(os.path.getsize(os.path.join(ldir, n)) <= 2048 for n in os.listdir(ldir))
    view = read_ledger(spool_dir)
    assert 0 < len(view.entries) < 40, "older entries went with the rotations"
    assert view.totals == {"write-error": {"gaps": 40, "records": sum(range(1, 41))}}
    assert verify(spool_dir).valid


@pytest.mark.parametrize(
    ("damage", "harmless"),
    [
        (lambda data: data[:100] + bytes([data[100] ^ 0x40]) + data[101:], False),  # bit flip
        (lambda data: b"\x00" * len(data), False),
        (lambda data: os.urandom(300), False),
        (lambda data: b"", False),
        (lambda data: data[:-5], True),  # a torn last append: its gap is still in its lane
    ],
    ids=["bit-flip", "zeroed", "random", "empty", "torn"],
)
def test_a_damaged_ledger_is_reported_and_never_crashes_a_command(
    spool_dir: str, damage: Callable[[bytes], bytes], harmless: bool
) -> None:
    os.makedirs(os.path.join(spool_dir, "lanes"))
    record_gaps(spool_dir, [a_gap_entry(seq=1), a_gap_entry(seq=2)])
    path = os.path.join(spool_dir, LOSSES_DIR, LEDGER_FILE)
    with open(path, "rb") as fh:
        data = damage(fh.read())
    with open(path, "wb") as fh:
        fh.write(data)
    report = verify(spool_dir)
    if harmless:
        assert report.valid and len(report.gaps) == 1, report.problems
    else:
        assert report.problems and {p.segment for p in report.problems} == {"losses/ledger"}
        assert {p.kind for p in report.problems} <= {"checksum", "format"}
    for args in (["verify", spool_dir, "--json"], ["status", spool_dir], ["verify", spool_dir]):
        result = CliRunner().invoke(main, args)
        assert result.exception is None or isinstance(result.exception, SystemExit), args
        assert result.exit_code in (0, 1), (args, result.output)
    record_gaps(spool_dir, [a_gap_entry(seq=3)])  # the next append starts a sound file
    view = read_ledger(spool_dir)
    assert a_gap_entry(seq=3) in view.entries
    assert not [p for p in view.problems if p.file == "losses/ledger"]


def test_entries_of_losses_other_than_the_ledger_are_foreign(spool_dir: str) -> None:
    os.makedirs(os.path.join(spool_dir, "lanes"))
    record_gaps(spool_dir, [a_gap_entry()])
    ldir = os.path.join(spool_dir, LOSSES_DIR)
    os.symlink("/etc/passwd", os.path.join(ldir, "stray"))
    assert verify(spool_dir).foreign == ["losses/stray"]
    assert status(spool_dir)["foreign"] == ["losses/stray"]


def test_a_full_disk_keeps_the_gap_in_its_lane_and_delivery_goes_on(tmp_path: Path) -> None:
    """The ledger cannot be written: the segment holding the gap stays (verify still shows
    the gap, from the lane), the others are unlinked, every event is delivered once; the
    idle lane is not removed while the ledger stays unwritable; once there is room the
    next pass records the gap and removes the lane."""
    out = _on_a_full_tmpfs(tmp_path, FULL_DISK_LEDGER_APP)
    refused = out["refused"]
    for phase in ("full", "still_full", "freed"):
        seen = out[phase]
        assert seen["pending"] == 0 and seen["sent"] == seen["unique"] == 121, (phase, seen)
        assert seen["valid"], (phase, seen["problems"])
        source = "ledger" if phase == "freed" else "lane"
        assert [(g["count"], g["source"]) for g in seen["gaps"]] == [(refused, source)], seen
    for phase in ("full", "still_full"):
        seen = out[phase]
        assert seen["lanes"] == [0] and "losses/ledger" in seen["last_error"], (phase, seen)
        assert seen["recorded_losses"]["records"] == 0
    freed = out["freed"]
    assert freed["lanes"] == [] and freed["last_error"] is None, freed
    assert freed["recorded_losses"]["by_reason"] == {"overflow": {"gaps": 1, "records": refused}}


def test_a_ledger_gap_explains_a_hole_only_in_segments_older_than_the_gap(
    spool_dir: str,
) -> None:
    """A drainer's corruption gap for lane 0, delivered from its own lane, still explains
    lane 0's hole; the gap of an older chain on a reused lane id does not."""
    with SpoolWriter(spool_dir, ROOMY) as writer:
        for i in range(90):
            writer.append(event(i))
    segs = list_segments(lane_dir(spool_dir, 0))
    os.unlink(segs[1][1])
    lo, hi = segs[1][0], segs[2][0] - 1
    assert [p.kind for p in verify(spool_dir).problems] == ["missing-segment"]
    fields = {"reason": "corruption", "count": hi - lo + 1, "first_seq": lo, "last_seq": hi}
    body = encode_body({**fields, "lane": 0, "detail": "quarantined"})

    def entry(ts_ns: int, seq: int) -> LedgerEntry:
        digest = Chain(None).digest(GENESIS, canonical_bytes(seq, Kind.GAP, ts_ns, body))
        return LedgerEntry.of(5, Record(seq, Kind.GAP, ts_ns, GENESIS, digest, body), False)

    record_gaps(spool_dir, [entry(1, 1)])  # written long before lane 0's segments
    assert [p.kind for p in verify(spool_dir).problems] == ["missing-segment"]
    record_gaps(spool_dir, [entry(time.time_ns(), 2)])
    assert verify(spool_dir).valid
