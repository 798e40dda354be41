"""verify() reports every kind of damage with the right kind and place, and never crashes."""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib

import msgpack
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spoolkit import SMALL, build, flip, frames, read_bytes, segments, size

from cerbistream_spool import verify
from cerbistream_spool.cli import main
from cerbistream_spool.spool import SpoolConfig, SpoolReader, SpoolWriter
from cerbistream_spool.spool.cursor import Cursor, write_cursor
from cerbistream_spool.spool.lanes import lane_dir
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
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
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
    finally:
        with open(path, "wb") as fh:
            fh.write(backup)
    name = os.path.basename(path)
    if pos < HEADER_SIZE:
        expected = ("format", name, 0)
    else:
        start = next(off for off, end, _ in layout if off <= pos < end)
        expected = ("checksum", name, start)
    assert expected in found, found


def test_torn_last_frame_is_a_truncated_tail(spool: str) -> None:
    path = segments(spool)[-1][1]
    start, end, _ = frames(path)[-1]
    with open(path, "r+b") as fh:
        fh.truncate(end - 5)
    assert ("truncated-tail", os.path.basename(path), start) in kinds_at(spool)


def test_a_tail_cut_on_a_frame_boundary_misses_the_close_marker(spool: str) -> None:
    path = segments(spool)[-1][1]
    start, _, rec = frames(path)[-1]
    with open(path, "r+b") as fh:
        fh.truncate(start)
    problems = verify(spool).problems
    assert [p.kind for p in problems] == ["truncated-tail"]
    assert problems[0].seq == rec.seq - 1


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
    assert [k for k, _, _ in kinds_at(spool)] == ["truncated-tail"]


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
    flip(os.path.join(lane_dir(spool, 0), "cursor"), 20)
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
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
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
    if where == "new-lane" or where == "segment":
        assert not report.valid


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


def test_turning_signing_on_starts_a_new_segment_and_both_verify(spool_dir: str) -> None:
    build(spool_dir, 5)
    build(spool_dir, 5, SpoolConfig(fsync="never", signing_key=b"k"))
    assert len(segments(spool_dir)) == 2
    report = verify(spool_dir, key=b"k")
    assert report.valid, report.problems
    assert report.signatures == "checked"
