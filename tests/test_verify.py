"""verify() reports every kind of damage with the right kind and place, and never crashes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import struct
import zlib

import msgpack
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spool_child import soak
from spoolkit import SMALL, build, flip, frames, read_bytes, segments, size
from tiers import examples

from cerbistream_spool import verify
from cerbistream_spool.cli import main
from cerbistream_spool.spool import SpoolConfig, SpoolReader, SpoolWriter
from cerbistream_spool.spool.cursor import Cursor, write_cursor
from cerbistream_spool.spool.lanes import lane_dir
from cerbistream_spool.spool.record import Kind, encode_body
from cerbistream_spool.spool.segments import HEADER_SIZE

N = 90  # events: enough for several 4 KiB segments


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("pristine") / "spool")
    build(path, N)
    assert len(segments(path)) >= 4
    return path


@pytest.fixture
def spool(pristine: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("copy") / "spool")
    shutil.copytree(pristine, path)
    return path


def kinds_at(spool: str) -> list:
    return [(p.kind, p.segment, p.offset) for p in verify(spool).problems]


def test_a_cleanly_closed_spool_verifies(spool: str) -> None:
    report = verify(spool)
    assert report.valid, report.problems
    assert report.pending == N
    assert report.records == N + 2  # open and close markers
    assert report.segments == len(segments(spool))
    assert report.signatures == "none"


@settings(
    max_examples=examples(60, fast=15),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_any_single_byte_flip_is_reported_with_kind_and_place(
    spool: str, data: st.DataObject
) -> None:
    segs = segments(spool)
    index = data.draw(st.integers(0, len(segs) - 1), label="segment")
    path = segs[index][1]
    pos = data.draw(st.integers(0, size(path) - 1), label="offset")
    backup = read_bytes(path)
    layout = frames(path)
    try:
        flip(path, pos)
        found = kinds_at(spool)
        found += [(n.kind, n.segment, n.offset) for n in verify(spool).notices]
    finally:
        with open(path, "wb") as fh:
            fh.write(backup)
    name = os.path.basename(path)
    if pos < HEADER_SIZE:
        expected = ("format", name, 0)
    else:
        start = next(off for off, end, _ in layout if off <= pos < end)
        # the last frame of the lane damaged, nothing valid after it: a torn tail (a crash)
        torn = index == len(segs) - 1 and start == layout[-1][0]
        expected = ("unclean-close" if torn else "checksum", name, start)
    assert expected in found, found


def notices_at(spool: str) -> list:
    return [(n.kind, n.segment, n.offset, n.seq) for n in verify(spool).notices]


def test_torn_last_frame_is_an_unclean_close_notice_not_a_problem(spool: str) -> None:
    path = segments(spool)[-1][1]
    layout = frames(path)
    start, end, _ = layout[-1]
    with open(path, "r+b") as fh:
        fh.truncate(end - 5)
    report = verify(spool)
    assert report.valid, report.problems
    [notice] = report.notices
    last = layout[-2][2]  # the last complete record
    assert (notice.kind, notice.segment, notice.offset) == (
        "unclean-close",
        os.path.basename(path),
        start,
    )
    assert (notice.seq, notice.ts_ns) == (last.seq, last.ts_ns)
    assert f"seq {last.seq}" in notice.detail and "torn" in notice.detail


def test_a_torn_frame_in_a_sealed_segment_stays_a_truncated_tail_problem(spool: str) -> None:
    path = segments(spool)[1][1]
    start, end, _ = frames(path)[-1]
    with open(path, "r+b") as fh:
        fh.truncate(end - 5)
    assert ("truncated-tail", os.path.basename(path), start) in kinds_at(spool)


def test_a_zeroed_last_frame_after_power_loss_is_a_torn_tail_notice(spool: str) -> None:
    path = segments(spool)[-1][1]
    start, end, _ = frames(path)[-1]
    with open(path, "r+b") as fh:
        fh.seek(start)
        fh.write(bytes(end - start))
    report = verify(spool)
    assert report.valid, report.problems
    assert [(n.kind, n.offset) for n in report.notices] == [("unclean-close", start)]


def test_a_tail_cut_on_a_frame_boundary_misses_the_close_marker(spool: str) -> None:
    path = segments(spool)[-1][1]
    start, _, rec = frames(path)[-1]
    with open(path, "r+b") as fh:
        fh.truncate(start)
    report = verify(spool)
    assert report.valid, report.problems
    assert [(n.kind, n.seq) for n in report.notices] == [("unclean-close", rec.seq - 1)]


def test_a_last_segment_shorter_than_its_header_is_a_crash_notice(spool: str) -> None:
    path = segments(spool)[-1][1]
    last_before = frames(segments(spool)[-2][1])[-1][2]
    os.unlink(path)
    with open(path, "wb") as fh:
        fh.write(b"CERBI")  # killed while writing the header of a new segment
    report = verify(spool)
    assert report.valid, report.problems
    assert notices_at(spool) == [("unclean-close", os.path.basename(path), 0, last_before.seq)]


def test_cli_verify_strict_turns_an_unclean_close_into_exit_1(spool: str) -> None:
    path = segments(spool)[-1][1]
    start = frames(path)[-1][0]
    with open(path, "r+b") as fh:
        fh.truncate(start)
    runner = CliRunner()
    res = runner.invoke(main, ["verify", spool, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["valid"] is True and doc["problems"] == []
    assert [n["kind"] for n in doc["notices"]] == ["unclean-close"]
    assert set(doc["notices"][0]) == {"lane", "segment", "offset", "seq", "kind", "detail", "ts_ns"}
    text = runner.invoke(main, ["verify", spool])
    assert text.exit_code == 0 and "unclean-close" in text.output
    assert runner.invoke(main, ["verify", spool, "--strict"]).exit_code == 1


def _rewrite_without(path: str, index: int) -> tuple:
    layout = frames(path)
    data = read_bytes(path)
    start, end, rec = layout[index]
    with open(path, "wb") as fh:
        fh.write(data[:start] + data[end:])
    return start, rec


def test_a_deleted_record_breaks_the_chain_where_it_was(spool: str) -> None:
    path = segments(spool)[1][1]
    start, _ = _rewrite_without(path, 1)
    assert ("chain", os.path.basename(path), start) in kinds_at(spool)


def test_reordered_records_break_the_chain(spool: str) -> None:
    path = segments(spool)[1][1]
    layout = frames(path)
    data = read_bytes(path)
    (a0, a1, _), (b0, b1, _) = layout[1], layout[2]
    with open(path, "wb") as fh:
        fh.write(data[:a0] + data[b0:b1] + data[a0:a1] + data[b1:])
    assert ("chain", os.path.basename(path), a0) in kinds_at(spool)


def test_a_deleted_middle_segment_is_a_missing_segment(spool: str) -> None:
    segs = segments(spool)
    os.unlink(segs[1][1])
    found = kinds_at(spool)
    assert ("missing-segment", os.path.basename(segs[2][1]), 0) in found


def test_a_deleted_first_segment_is_missing_when_not_acknowledged(spool: str) -> None:
    segs = segments(spool)
    os.unlink(segs[0][1])
    assert ("missing-segment", os.path.basename(segs[1][1]), 0) in kinds_at(spool)


def test_a_deleted_last_segment_loses_the_close_marker(spool: str) -> None:
    os.unlink(segments(spool)[-1][1])
    report = verify(spool)
    assert report.valid, report.problems
    assert [n.kind for n in report.notices] == ["unclean-close"]


def test_swapped_segment_files_are_a_format_problem(spool: str) -> None:
    segs = segments(spool)
    (_, a), (_, b) = segs[1], segs[2]
    os.rename(a, a + ".x")
    os.rename(b, a)
    os.rename(a + ".x", b)
    found = kinds_at(spool)
    assert ("format", os.path.basename(a), 0) in found
    assert ("format", os.path.basename(b), 0) in found


def _rewrite_record(path: str, index: int, mutate) -> int:
    """Re-frame record ``index`` with a mutated payload and a *correct* CRC (a forger)."""
    data = read_bytes(path)
    start, end, _ = frames(path)[index]
    (length,) = struct.unpack_from("<I", data, start)
    fields = msgpack.unpackb(data[start + 4 : start + 4 + length], raw=False)
    payload = msgpack.packb(mutate(fields), use_bin_type=True)
    head = struct.pack("<I", len(payload))
    frame = head + payload + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + head
    with open(path, "wb") as fh:
        fh.write(data[:start] + frame + data[end:])
    return start


def _tamper_body(fields: list) -> list:
    event = msgpack.unpackb(fields[5], raw=False)
    event["message"] = "forged"
    fields[5] = msgpack.packb(event, use_bin_type=True)
    return fields


def test_a_forged_record_with_a_valid_crc_fails_the_sha256_chain(spool: str) -> None:
    path = segments(spool)[1][1]
    start = _rewrite_record(path, 1, _tamper_body)
    assert ("chain", os.path.basename(path), start) in kinds_at(spool)


def test_hmac_chain_is_unchecked_without_key_and_catches_forgery_with_it(spool_dir: str) -> None:
    key = b"k" * 32
    build(spool_dir, 30, SpoolConfig(fsync="never", segment_max_bytes=4096, signing_key=key))
    unkeyed = verify(spool_dir)
    assert unkeyed.valid and unkeyed.signatures == "unchecked"
    assert verify(spool_dir, key=key).signatures == "checked"
    assert verify(spool_dir, key=key).valid
    assert {p.kind for p in verify(spool_dir, key=b"wrong").problems} == {"signature"}
    path = segments(spool_dir)[0][1]
    start = _rewrite_record(path, 2, _tamper_body)
    found = [(p.kind, p.offset) for p in verify(spool_dir, key=key).problems]
    assert ("signature", start) in found
    assert verify(spool_dir).valid  # the links still hold; only the key reveals the forgery


def test_signing_key_comes_from_the_environment(
    spool_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CERBISTREAM_SPOOL_KEY", "from-env")
    build(spool_dir, 5)
    assert verify(spool_dir, key=b"from-env").signatures == "checked"
    assert verify(spool_dir, key=b"from-env").valid
    assert not verify(spool_dir, key=b"other").valid


def test_a_corrupt_cursor_is_reported(spool: str) -> None:
    reader = SpoolReader(spool)
    reader.ack(next(reader.batches(max_records=5)))
    flip(os.path.join(lane_dir(spool, 0), "cursor"), 20)  # slot 0
    flip(os.path.join(lane_dir(spool, 0), "cursor"), 512 + 20)  # slot 1
    assert [k for k, _, _ in kinds_at(spool)] == ["cursor"]


def test_a_cursor_beyond_the_last_record_is_reported(spool: str) -> None:
    write_cursor(lane_dir(spool, 0), Cursor(0, 10_000, b"\1" * 32))
    assert ("cursor", "cursor", 0) in kinds_at(spool)


def test_a_cursor_with_the_wrong_hash_is_reported(spool: str) -> None:
    write_cursor(lane_dir(spool, 0), Cursor(0, 3, b"\1" * 32))
    assert [k for k, _, _ in kinds_at(spool)] == ["cursor"]


def test_acked_and_deleted_segments_are_not_missing(spool: str) -> None:
    reader = SpoolReader(spool)
    batch = next(reader.batches(max_records=40))
    reader.ack(batch)
    assert segments(spool)[0][0] > 1  # acknowledged segments were unlinked
    report = verify(spool)
    assert report.valid, report.problems
    assert report.pending == N - len(batch.events())


@settings(
    max_examples=examples(80, fast=20),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(blob=st.binary(max_size=600), where=st.sampled_from(["segment", "cursor", "new-lane"]))
def test_verify_never_crashes_on_arbitrary_bytes(
    pristine: str, tmp_path_factory: pytest.TempPathFactory, blob: bytes, where: str
) -> None:
    spool = str(tmp_path_factory.mktemp("fuzz") / "spool")
    shutil.copytree(pristine, spool)
    if where == "segment":
        path = segments(spool)[1][1]
        data = read_bytes(path)
        with open(path, "wb") as fh:
            fh.write(data[: HEADER_SIZE + len(blob) % 200] + blob)
    elif where == "cursor":
        with open(os.path.join(lane_dir(spool, 0), "cursor"), "wb") as fh:
            fh.write(blob)
    else:
        os.makedirs(lane_dir(spool, 7), exist_ok=True)
        with open(os.path.join(lane_dir(spool, 7), "00000000000000000001.seg"), "wb") as fh:
            fh.write(blob)
    report = verify(spool)
    report.to_dict()
    if where == "segment":
        assert not report.valid
    if where == "new-lane":  # a short file may be a crash while creating the segment
        assert not report.valid or [n.lane for n in report.notices] == [7]


def test_cli_verify_exit_codes_and_json(spool: str, tmp_path) -> None:
    runner = CliRunner()
    ok = runner.invoke(main, ["verify", spool, "--json"])
    assert ok.exit_code == 0
    doc = json.loads(ok.output)
    assert list(doc)[:5] == ["valid", "records", "segments", "pending", "problems"]
    assert doc["valid"] is True and doc["pending"] == N
    flip(segments(spool)[2][1], HEADER_SIZE + 10)
    bad = runner.invoke(main, ["verify", spool, "--json"])
    assert bad.exit_code == 1
    problem = json.loads(bad.output)["problems"][0]
    assert set(problem) == {"lane", "segment", "offset", "seq", "kind", "detail"}
    assert problem["kind"] == "checksum"
    text = runner.invoke(main, ["verify", spool])
    assert text.exit_code == 1 and "checksum" in text.output
    assert runner.invoke(main, ["verify", str(tmp_path / "nope")]).exit_code == 2
    assert runner.invoke(main, ["verify"]).exit_code == 2


def test_cli_verify_reads_the_key_from_the_named_variable(spool_dir: str, monkeypatch) -> None:
    build(spool_dir, 5, SpoolConfig(fsync="never", signing_key=b"secret"))
    monkeypatch.setenv("MY_KEY", "wrong")
    runner = CliRunner()
    assert runner.invoke(main, ["verify", spool_dir, "--key-env", "MY_KEY"]).exit_code == 1
    monkeypatch.setenv("MY_KEY", "secret")
    assert runner.invoke(main, ["verify", spool_dir, "--key-env", "MY_KEY"]).exit_code == 0


def test_a_live_writers_unclosed_tail_is_not_a_problem(spool_dir: str) -> None:
    writer = SpoolWriter(spool_dir, SMALL)
    try:
        for i in range(10):
            writer.append({"i": i})
        report = verify(spool_dir)
        assert report.valid, report.problems
        assert report.lanes[0]["live"] is True
    finally:
        writer.close()


@pytest.mark.parametrize("byte", [0, 1, 2, 3])
def test_a_damaged_length_field_mid_segment_is_a_checksum_problem_not_a_torn_tail(
    spool: str, byte: int
) -> None:
    path = segments(spool)[1][1]
    start = frames(path)[1][0]
    flip(path, start + byte)
    found = kinds_at(spool)
    assert found[0] == ("checksum", os.path.basename(path), start), found
    assert {k for k, _, _ in found} == {"checksum"}


def test_turning_signing_on_starts_a_new_segment_and_the_unkeyed_one_is_a_signature_problem(
    spool_dir: str,
) -> None:
    build(spool_dir, 5)
    build(spool_dir, 5, SpoolConfig(fsync="never", signing_key=b"k"))
    assert len(segments(spool_dir)) == 2
    assert verify(spool_dir).valid  # without the key: the links hold across the change
    report = verify(spool_dir, key=b"k")
    assert [(p.kind, p.segment) for p in report.problems] == [
        ("signature", os.path.basename(segments(spool_dir)[0][1]))
    ]
    assert report.signatures == "checked"
    reader = SpoolReader(spool_dir)  # delivered and unlinked: only keyed segments remain
    reader.ack(next(reader.batches(max_records=9)))
    assert verify(spool_dir, key=b"k").valid


def _downgrade(path: str) -> None:
    """Forge a keyed segment without the key: edit a record, clear the keyed flag in the
    header and recompute a plain SHA-256 chain over every record."""
    data = bytearray(read_bytes(path))
    flags_at = 10
    struct.pack_into("<H", data, flags_at, 0)
    struct.pack_into("<I", data, 64, zlib.crc32(bytes(data[:64])))
    prev = bytes(data[32:64])  # the anchor
    out = bytes(data[:HEADER_SIZE])
    for index, (_, _, rec) in enumerate(frames(path)):
        body = rec.body
        if index == 1:
            event = msgpack.unpackb(body, raw=False)
            event["message"] = "forged"
            body = msgpack.packb(event, use_bin_type=True)
        canonical = struct.pack("<QBq", rec.seq, rec.kind, rec.ts_ns) + body
        digest = hashlib.sha256(prev + canonical).digest()
        fields = [rec.seq, rec.kind, rec.ts_ns, prev, digest, body]
        payload = msgpack.packb(fields, use_bin_type=True)
        head = struct.pack("<I", len(payload))
        out += head + payload + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + head
        prev = digest
    with open(path, "wb") as fh:
        fh.write(out)


def test_a_downgraded_keyed_lane_fails_verify_with_the_key(spool_dir: str) -> None:
    key = b"k" * 32
    build(spool_dir, 5, SpoolConfig(fsync="never", signing_key=key))
    [(_, path)] = segments(spool_dir)
    _downgrade(path)
    assert verify(spool_dir).valid  # a consistent unkeyed chain: without the key it holds
    problems = verify(spool_dir, key=key).problems
    assert [(p.kind, p.segment) for p in problems] == [("signature", os.path.basename(path))]


def test_a_keyed_writer_never_appends_to_an_empty_unkeyed_segment(spool_dir: str) -> None:
    """A crash right after an unkeyed writer created a segment, then the key is configured:
    the keyed writer must not write keyed records under that unkeyed header."""
    build(spool_dir, 3)
    [(_, first)] = segments(spool_dir)
    data = read_bytes(first)
    last = frames(first)[-1][2]
    header = bytearray(data[:HEADER_SIZE])
    base = last.seq + 1
    struct.pack_into("<Q", header, 16, base)
    header[32:64] = last.hash
    struct.pack_into("<I", header, 64, zlib.crc32(bytes(header[:64])))
    empty = os.path.join(os.path.dirname(first), f"{base:020d}.seg")
    with open(empty, "wb") as fh:
        fh.write(bytes(header))  # an unkeyed segment holding only its header
    key = b"k" * 32
    build(spool_dir, 3, SpoolConfig(fsync="never", signing_key=key))
    for _, path in segments(spool_dir)[1:]:
        assert read_bytes(path)[10] & 1, f"{path} holds keyed records under an unkeyed header"
    problems = verify(spool_dir, key=key).problems
    assert [(p.kind, p.segment) for p in problems] == [("signature", os.path.basename(first))]


def test_a_gap_in_another_lane_naming_this_lane_explains_its_hole(spool_dir: str) -> None:
    """A drainer records corruption of lane 0 in its own lane; verify counts that range as
    explained in lane 0. A dead-letter gap names a record still on disk: it explains none."""
    first, other = SpoolWriter(spool_dir, SMALL), SpoolWriter(spool_dir, SMALL)
    assert (first.lane, other.lane) == (0, 1)
    for i in range(90):
        first.append({"i": i, "pad": "x" * 40})
    first.close()
    segs = segments(spool_dir, 0)
    os.unlink(segs[1][1])
    lo, hi = segs[1][0], segs[2][0] - 1
    assert [p.kind for p in verify(spool_dir).problems] == ["missing-segment"]
    gap = {"reason": "dead-letter", "count": 1, "first_seq": lo, "last_seq": lo, "lane": 0}
    other.append_body(encode_body({**gap, "detail": "x"}), Kind.GAP)
    assert [p.kind for p in verify(spool_dir).problems] == ["missing-segment"]
    gap = {"reason": "corruption", "count": hi - lo + 1, "first_seq": lo, "last_seq": hi}
    other.append_body(encode_body({**gap, "lane": 0, "detail": "quarantined"}), Kind.GAP)
    other.close()
    report = verify(spool_dir)
    assert report.valid, report.problems


def test_replay_of_a_spool_copied_off_a_crashed_device_ships_every_complete_record(
    tmp_path, spool_dir: str
) -> None:
    """kill -9 of a real writer: verify says unclean-close (exit 0), --replay ships every
    event it reported, and writes nothing into the copy but the cursor."""
    plan = soak.KillPlan("records", records=150)
    with soak.Child(spool_dir, mode="interval", tag="crashed", plan=plan) as child:
        assert child.finish(timeout=30.0) == -signal.SIGKILL, child.describe()
    assert len(child.reported) >= 150
    before = _tree(spool_dir)
    out_file = tmp_path / "replayed.jsonl"
    runner = CliRunner()
    res = runner.invoke(main, ["verify", spool_dir, "--json", "--replay", "--to", str(out_file)])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["valid"] is True, doc["problems"]
    [notice] = doc["notices"]
    assert notice["kind"] == "unclean-close" and notice["ts_ns"] > 0
    shipped = [json.loads(ln)["id"] for ln in out_file.read_text("utf-8").splitlines()]
    assert set(child.reported) <= set(shipped)
    assert len(shipped) == len(set(shipped)) == doc["pending"] == doc["replayed"]
    after = _tree(spool_dir)
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    assert changed == {"lanes/0000/cursor", "locks/drain.lock"}, changed
    again = runner.invoke(main, ["verify", spool_dir, "--json", "--replay", "--to", str(out_file)])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["replayed"] == 0  # nothing is sent twice
    assert json.loads(again.output)["pending"] == 0


def test_replay_to_a_file_creates_it_even_when_nothing_is_pending(spool_dir: str, tmp_path) -> None:
    build(spool_dir, 1)
    reader = SpoolReader(spool_dir, remove_idle_lanes=False)
    reader.ack(next(reader.batches()))
    out_file = tmp_path / "none.jsonl"
    res = CliRunner().invoke(main, ["verify", spool_dir, "--replay", "--to", str(out_file)])
    assert res.exit_code == 0, res.output
    assert out_file.read_text() == ""


def _tree(root: str) -> dict:
    """Every file under ``root`` by relative path -> its bytes."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = read_bytes(path)
    return out
