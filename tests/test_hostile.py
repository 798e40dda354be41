"""Stray and hostile entries in a spool directory: every CLI command and SpoolHandler
construction finish quickly, print no traceback, leave the entries alone and list them
as foreign; the app keeps writing to a lane of its own."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import struct
import threading
import time
import zlib
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
from click.testing import CliRunner, Result

from cerbistream_spool import SpoolHandler
from cerbistream_spool.cli import main
from cerbistream_spool.spool import SpoolReader, SpoolWriter
from cerbistream_spool.spool.lanes import lane_dir
from cerbistream_spool.spool.record import MAX_PAYLOAD, find_next_frame
from cerbistream_spool.spool.segments import HEADER_SIZE, SegmentHeader
from cerbistream_spool.verify import verify
from tests.spoolkit import SMALL, event, read_bytes, segments

CASE_TIMEOUT_S = 10.0
SEG = "00000000000000009999.seg"


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


def _base(spool: str) -> None:
    """Lanes 0 and 1 with events; lane 0 partly acknowledged (it has a cursor)."""
    with SpoolWriter(spool, SMALL) as w0, SpoolWriter(spool, SMALL) as w1:
        assert (w0.lane, w1.lane) == (0, 1)
        for i in range(30):
            w0.append(event(i))
            w1.append(event(100 + i))
    reader = SpoolReader(spool, lanes={0})
    reader.ack(next(reader.batches(max_records=5)))


def _away(spool: str, lane: int) -> str:
    """Move a lane's directory out of the spool; returns where it went."""
    target = spool + f"-moved-{lane}"
    os.rename(lane_dir(spool, lane), target)
    return target


def _mknod_zero(path: str) -> None:
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")


def _replace_cursor(spool: str, make: Callable[[str], None]) -> None:
    path = os.path.join(lane_dir(spool, 0), "cursor")
    os.unlink(path)
    make(path)


# name -> (make it, foreign entries status/verify must list, lanes a writer must not take)
CASES: Dict[str, Tuple[Callable[[str], None], List[str], List[int]]] = {
    "file-as-lane": (lambda s: _write(lane_dir(s, 2), b"junk"), ["lanes/0002"], [2]),
    "file-as-lane-0": (
        lambda s: (shutil.rmtree(lane_dir(s, 0)), _write(lane_dir(s, 0), b"junk")),
        ["lanes/0000"],
        [0],
    ),
    "symlink-as-lane-0": (
        lambda s: os.symlink(_away(s, 0), lane_dir(s, 0)),
        ["lanes/0000"],
        [0],
    ),
    "unicode-digit-lanes": (
        lambda s: (
            os.mkdir(os.path.join(s, "lanes", "\u0660\u0660\u0660\u0665")),
            os.mkdir(os.path.join(s, "lanes", "\u00b2000")),
        ),
        ["lanes/\u00b2000", "lanes/\u0660\u0660\u0660\u0665"],
        [],
    ),
    "unicode-digit-segment": (
        lambda s: shutil.copy(
            segments(s, 1)[0][1], os.path.join(lane_dir(s, 1), "0000000000000000000\u00b9.seg")
        ),
        ["lanes/0001/0000000000000000000\u00b9.seg"],
        [1],
    ),
    "directory-as-segment": (
        lambda s: os.mkdir(os.path.join(lane_dir(s, 0), SEG)),
        [f"lanes/0000/{SEG}"],
        [0],
    ),
    "fifo-as-segment": (
        lambda s: os.mkfifo(os.path.join(lane_dir(s, 0), SEG)),
        [f"lanes/0000/{SEG}"],
        [0],
    ),
    "dev-zero-symlink-as-segment": (
        lambda s: os.symlink("/dev/zero", os.path.join(lane_dir(s, 1), SEG)),
        [f"lanes/0001/{SEG}"],
        [1],
    ),
    "device-node-as-segment": (
        lambda s: _mknod_zero(os.path.join(lane_dir(s, 0), SEG)),
        [f"lanes/0000/{SEG}"],
        [0],
    ),
    "fifo-as-cursor": (
        lambda s: _replace_cursor(s, os.mkfifo),
        ["lanes/0000/cursor"],
        [0],
    ),
    "dev-zero-symlink-as-cursor": (
        lambda s: _replace_cursor(s, lambda p: os.symlink("/dev/zero", p)),
        ["lanes/0000/cursor"],
        [0],
    ),
    "cursor-is-a-directory": (
        lambda s: _replace_cursor(s, os.mkdir),
        ["lanes/0000/cursor"],
        [0],
    ),
    "lanes-is-a-file": (
        lambda s: (shutil.rmtree(os.path.join(s, "lanes")), _write(os.path.join(s, "lanes"), b"")),
        ["lanes"],
        [],
    ),
    "fifo-as-drain-status": (lambda s: os.mkfifo(os.path.join(s, "drain-status.json")), [], []),
    "directory-as-lane-0-lock": (
        lambda s: (
            os.unlink(os.path.join(s, "locks", "lane-0000.lock")),
            os.mkdir(os.path.join(s, "locks", "lane-0000.lock")),
        ),
        [],
        [0],
    ),
}


def _bounded(fn: Callable[[], Any]) -> Tuple[Any, float]:
    """Run ``fn`` in a thread; fail the test if it takes longer than CASE_TIMEOUT_S."""
    out: List[Any] = []
    errors: List[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            errors.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(CASE_TIMEOUT_S)
    elapsed = time.monotonic() - started
    assert not thread.is_alive(), f"hung for more than {CASE_TIMEOUT_S} s"
    if errors:
        raise errors[0]
    return out[0], elapsed


def _cli(args: List[str]) -> Result:
    result, _ = _bounded(lambda: CliRunner().invoke(main, args))
    assert isinstance(result, Result)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{args[0]} crashed: {result.exception!r}\n{result.output}")
    assert "Traceback" not in result.output, result.output
    assert result.exit_code in (0, 1, 2), (args, result.exit_code, result.output)
    return result


def _entries(spool: str, foreign: List[str]) -> Dict[str, int]:
    """lstat mode of each foreign entry (to check they are left alone)."""
    return {name: os.lstat(os.path.join(spool, name)).st_mode for name in foreign}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_entry_every_command_finishes_without_traceback(tmp_path, case: str) -> None:
    make, foreign, _ = CASES[case]
    spool = str(tmp_path / "spool")
    _base(spool)
    make(spool)
    before = _entries(spool, foreign)
    started = time.monotonic()

    status = _cli(["status", spool, "--json"])
    assert status.exit_code == 0
    assert json.loads(status.output)["foreign"] == foreign
    _cli(["status", spool])
    checked = _cli(["verify", spool, "--json"])
    assert json.loads(checked.output)["foreign"] == foreign
    text = _cli(["verify", spool])
    for name in foreign:
        assert f"foreign: {name}" in text.output
    _cli(["tail", spool])
    _cli(["tail", spool, "--all"])
    _cli(["verify", spool, "--replay", "--to", str(tmp_path / "out.jsonl")])
    assert _entries(spool, foreign) == before  # left alone: not read, moved or deleted
    assert time.monotonic() - started < 5 * CASE_TIMEOUT_S


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_entry_spool_handler_writes_to_a_usable_lane(tmp_path, case: str) -> None:
    make, foreign, avoid = CASES[case]
    spool = str(tmp_path / "spool")
    _base(spool)
    make(spool)
    before = _entries(spool, foreign)

    def construct() -> SpoolHandler:
        return SpoolHandler(spool, tenant_id="t", app_name="a", drain=False, fsync="never")

    handler, elapsed = _bounded(construct)
    try:
        assert elapsed < 5.0
        if case == "lanes-is-a-file":  # no lane can exist: counted, never raised
            logger = logging.getLogger(f"hostile.{case}")
            logger.propagate = False
            logger.addHandler(handler)
            logger.error("lost")
            logger.removeHandler(handler)
            assert handler.stats()["dropped"] == 1
            return
        writer = handler.writer
        assert writer is not None, handler.stats()["last_error"]
        assert writer.lane not in avoid
        record = logging.LogRecord("hostile", logging.ERROR, __file__, 1, "kept", (), None)
        handler.emit(record)
        handler.flush()
        assert handler.stats()["accepted"] >= 1 and handler.stats()["dropped"] == 0
        lane = writer.lane
    finally:
        handler.close()
    logged = [
        r.value()
        for b in SpoolReader(spool, lanes={lane}, from_start=True).batches()
        for r in b.events()
    ]
    assert any(e.get("RawPayload", {}).get("message") == "kept" for e in logged)
    assert _entries(spool, foreign) == before


# -- a crafted segment that made resynchronisation quadratic -------------------------------


def crafted_segment(size: int, spacing: int = 256) -> bytes:
    """A segment of ``size`` bytes: one damaged frame, then a candidate frame every
    ``spacing`` bytes whose length fits, whose trailing length matches and whose payload
    starts the way the writer packs one, but whose checksum is wrong."""
    header = SegmentHeader(lane=0, base_seq=1, created_ns=0, anchor=b"\0" * 32).encode()
    buf = bytearray(size)
    buf[:HEADER_SIZE] = header
    struct.pack_into("<I", buf, HEADER_SIZE, 0xFFFFFFFF)  # implausible length: resync
    prefix = b"\x96\x01\x01\x01\xc4\x20" + b"\0" * 32 + b"\xc4\x20" + b"\0" * 32 + b"\xc4\x00"
    half = size // 2
    first = HEADER_SIZE + 8
    count = (half - first) // spacing
    for i in range(count):
        at = first + i * spacing
        crc_at = half + 8 * i  # each candidate ends at its own 8 bytes of the second half
        length = crc_at - at - 4
        if not 80 <= length <= MAX_PAYLOAD or crc_at + 8 > size:
            break
        struct.pack_into("<I", buf, at, length)
        buf[at + 4 : at + 4 + len(prefix)] = prefix
        struct.pack_into("<II", buf, crc_at, zlib.crc32(b"x"), length)
    return bytes(buf)


def test_resync_over_a_crafted_segment_is_linear(tmp_path) -> None:
    small, large = crafted_segment(1 << 18), crafted_segment(1 << 20)
    timings = []
    for buf in (small, large):
        started = time.perf_counter()
        assert find_next_frame(buf, HEADER_SIZE + 1) is None
        timings.append(time.perf_counter() - started)
    # 4x the bytes (and 4x the candidates): linear is ~4x, the old scan was ~16x
    assert timings[1] < 1.0, timings
    assert timings[1] < 8 * timings[0] + 0.05, timings


def test_a_crafted_segment_delays_neither_verify_nor_spool_handler(tmp_path) -> None:
    spool = str(tmp_path / "spool")
    os.makedirs(lane_dir(spool, 0))
    crafted = crafted_segment(4 << 20, spacing=128)  # the old scan: ~7 s each, on 2 CPUs
    _write(os.path.join(lane_dir(spool, 0), "00000000000000000001.seg"), crafted)
    started = time.monotonic()
    report, _ = _bounded(lambda: verify(spool))
    assert not report.valid
    assert time.monotonic() - started < 2.0
    handler: Optional[SpoolHandler] = None
    started = time.monotonic()
    handler, _ = _bounded(
        lambda: SpoolHandler(spool, tenant_id="t", app_name="a", drain=False, fsync="never")
    )
    try:
        assert time.monotonic() - started < 2.0
        assert handler.writer is not None
    finally:
        handler.close()
    assert os.listdir(os.path.join(spool, "quarantine"))  # kept for a human, not truncated


def test_a_crafted_segment_still_has_its_valid_frames_found(tmp_path) -> None:
    """The budget only bites crafted input: real frames after damage are still found."""
    spool = str(tmp_path / "spool")
    with SpoolWriter(spool, SMALL) as writer:
        for i in range(10):
            writer.append(event(i))
    path = segments(spool)[0][1]
    data = bytearray(read_bytes(path))
    data[HEADER_SIZE : HEADER_SIZE + 4] = b"\xff\xff\xff\xff"
    found = find_next_frame(bytes(data), HEADER_SIZE + 1)
    assert found is not None and found > HEADER_SIZE


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_entry_cli_drain_ships_the_healthy_lanes(tmp_path, case: str) -> None:
    """``cerbispool drain`` as a process, the real SDK, the local AMQP peer."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from tools.amqp_peer import LocalPeer  # noqa: PLC0415

    make, foreign, _ = CASES[case]
    spool = str(tmp_path / "spool")
    _base(spool)
    make(spool)
    before = _entries(spool, foreign)
    peer = LocalPeer.start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CERBISTREAM_")}
        started = time.monotonic()
        conn = peer.connection_string()
        command = ["drain", spool, "--connection-string", conn, "--timeout", "20", "--json"]
        done = subprocess.run(
            [sys.executable, "-c", "from cerbistream_spool.cli import main; main()", *command],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
        )
        assert time.monotonic() - started < 30
        assert "Traceback" not in done.stderr, done.stderr
        assert done.returncode in (0, 1), done.stderr
        sent = [json.loads(m.body)["LogId"] for m in peer.accepted()]
        ids = set(sent)
    finally:
        peer.stop()
    if case != "lanes-is-a-file":  # lane 1 is healthy in every other case
        assert {f"id-{100 + i}" for i in range(30)} <= ids, (done.stdout, done.stderr)
    if case.endswith("-as-cursor"):  # a foreign cursor is replaced by the first ack (rename)
        assert {f"id-{i}" for i in range(30)} <= ids  # its lane re-sent from the start
        # once: the first ack renames a cursor over it, the lane is not re-sent forever
        assert len(sent) == len(ids), f"{len(sent)} sends of {len(ids)} events"
        assert stat.S_ISCHR(os.stat("/dev/zero").st_mode)
        return
    if case == "cursor-is-a-directory":  # no ack could move it: left alone, never re-sent
        assert not any(f"id-{i}" in ids for i in range(30)), (done.stdout, done.stderr)
        assert len(sent) == len(ids), f"{len(sent)} sends of {len(ids)} events"
    assert _entries(spool, foreign) == before
