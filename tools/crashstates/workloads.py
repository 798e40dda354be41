"""The workloads, recorded once each, and :func:`run_all` (what ``python -m`` runs).

Each workload works in ``ROOT/spool``: an optional setup (not recorded: its result is
the durable starting point, and the records it wrote are promised), then the recorded
run through a :class:`RecordingFileSystem` installed with ``fs.use``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Type

from cerbistream_spool.spool.config import SpoolConfig
from cerbistream_spool.spool.fs import use
from cerbistream_spool.spool.lanes import lane_dir
from cerbistream_spool.spool.reader import SpoolReader
from cerbistream_spool.spool.segments import HEADER_SIZE, list_segments
from cerbistream_spool.spool.writer import SpoolWriter
from tools.crashstates.checker import Failure, Key, check_state
from tools.crashstates.recorder import Recording, RecordingFileSystem
from tools.crashstates.states import build, digest, sample_states

__all__ = ["PENDING", "WORKLOADS", "Result", "Workload", "record", "run_all", "run_workload"]

KEY = b"crash-states-signing-key-32bytes"


@dataclass(frozen=True)
class Workload:
    """A named workload: its writer options, setup and recorded run."""

    name: str
    config: SpoolConfig
    run: Callable[[str, RecordingFileSystem, SpoolConfig], None]
    setup: Optional[Callable[[str], Dict[Key, str]]] = None
    verify_key: bool = True
    weight: int = 1
    excused: Tuple[str, ...] = ()  # gap reasons that excuse a promised record's absence


def _append(writer: SpoolWriter, rec: RecordingFileSystem, event_id: str, pad: int = 40) -> int:
    seq = writer.append({"id": event_id, "pad": "x" * pad})
    rec.note("append", writer.lane, seq, event_id, writer.config.fsync)
    return seq


def _close(writer: SpoolWriter, rec: RecordingFileSystem, token: str = "close") -> None:
    rec.note("close_begin", token)
    writer.close()
    rec.note("close_end", token)


def _flush(writer: SpoolWriter, rec: RecordingFileSystem, token: str) -> None:
    rec.note("flush_begin", token)
    writer.flush()
    rec.note("flush_end", token)


# -- the workloads ------------------------------------------------------------------------


def _always_threads(spool: str, rec: RecordingFileSystem, config: SpoolConfig) -> None:
    """First open, then three threads appending with ``fsync="always"`` (group commit)."""
    writer = SpoolWriter(spool, config)

    def work(t: int) -> None:
        for i in range(4):
            _append(writer, rec, f"t{t}-{i}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    _close(writer, rec)


def _interval(spool: str, rec: RecordingFileSystem, config: SpoolConfig) -> None:
    """``fsync="interval"``: appends while the flusher runs, a flush() in the middle."""
    writer = SpoolWriter(spool, config)
    for i in range(6):
        _append(writer, rec, f"i{i}")
        time.sleep(0.012)
    _flush(writer, rec, "flush-1")
    for i in range(6, 10):
        _append(writer, rec, f"i{i}")
        time.sleep(0.012)
    _close(writer, rec)


def _rotation(spool: str, rec: RecordingFileSystem, config: SpoolConfig) -> None:
    """Size rotation (4 KiB segments, 1 KiB events), then an age rotation."""
    writer = SpoolWriter(spool, config)
    for i in range(9):
        _append(writer, rec, f"r{i}", pad=900)
    time.sleep(config.segment_max_age_s * 1.5)
    for i in range(9, 11):
        _append(writer, rec, f"r{i}")
    _close(writer, rec)


def _ack(spool: str, rec: RecordingFileSystem, config: SpoolConfig) -> None:
    """Appends across segments; a reader acks batches (cursor, then unlink), appends go on."""
    writer = SpoolWriter(spool, config)
    for i in range(8):
        _append(writer, rec, f"a{i}", pad=900)
    reader = SpoolReader(spool, remove_idle_lanes=False)
    for _ in range(3):
        batch = reader.read_batch(max_records=3)
        if batch is None:
            break
        rec.note("ack_begin", batch.lane, batch.last_seq)
        reader.ack(batch)
        rec.note("ack_end", batch.lane, batch.last_seq)
    for i in range(8, 11):
        _append(writer, rec, f"a{i}", pad=900)
    _close(writer, rec)


def _idle_lane(spool: str, rec: RecordingFileSystem, config: SpoolConfig) -> None:
    """Everything delivered, the writer closed: the reader removes the idle lane."""
    writer = SpoolWriter(spool, config)
    for i in range(4):
        _append(writer, rec, f"l{i}")
    _close(writer, rec)
    reader = SpoolReader(spool)
    for batch in list(reader.batches()):
        rec.note("ack_begin", batch.lane, batch.last_seq)
        reader.ack(batch)
        rec.note("ack_end", batch.lane, batch.last_seq)
    reader.read_batch()  # finds the lane idle and removes it


def _overflow(spool: str, rec: RecordingFileSystem, config: SpoolConfig) -> None:
    """``drop_oldest`` at the size cap: the oldest segments go, gap records say so."""
    writer = SpoolWriter(spool, config)
    for i in range(16):
        _append(writer, rec, f"o{i}", pad=900)
    _close(writer, rec)


def _setup_writes(spool: str, config: SpoolConfig, prefix: str, n: int) -> Dict[Key, str]:
    with SpoolWriter(spool, config) as writer:
        return {
            (writer.lane, writer.append({"id": f"{prefix}{i}", "pad": "y" * 40})): f"{prefix}{i}"
            for i in range(n)
        }


def _torn_setup(spool: str) -> Dict[Key, str]:
    """Five records, then half a frame after the close record (a crashed append)."""
    pre = _setup_writes(spool, SpoolConfig(fsync="always"), "p", 5)
    _, path = list_segments(lane_dir(spool, 0))[-1]
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "ab") as f:
        f.write(data[HEADER_SIZE : HEADER_SIZE + 30])
    return pre


def _quarantine_setup(spool: str) -> Dict[Key, str]:
    """Six records; a byte of the fourth's frame flipped (valid frames follow it)."""
    pre = _setup_writes(spool, SpoolConfig(fsync="always"), "q", 6)
    _, path = list_segments(lane_dir(spool, 0))[-1]
    with open(path, "r+b") as f:
        data = f.read()
        at = data.find(b"q3")
        f.seek(at)
        f.write(b"Q")
    bad = min(seq for (lane, seq), eid in pre.items() if eid == "q3")
    return {key: eid for key, eid in pre.items() if key[1] < bad}


def _bad_header_setup(spool: str) -> Dict[Key, str]:
    """Two sealed segments and a last one whose header is damaged (quarantined whole)."""
    config = SpoolConfig(fsync="always", segment_max_bytes=4096)
    with SpoolWriter(spool, config) as writer:
        pre = {(0, writer.append({"id": f"h{i}", "pad": "z" * 900})): f"h{i}" for i in range(9)}
    base, path = list_segments(lane_dir(spool, 0))[-1]
    with open(path, "r+b") as f:
        f.write(b"XXXXXXXX")
    return {key: eid for key, eid in pre.items() if key[1] < base}


def _unkeyed_setup(spool: str) -> Dict[Key, str]:
    """Four records of an unkeyed chain (the recorded run opens it with a key)."""
    return _setup_writes(spool, SpoolConfig(fsync="always"), "u", 4)


def _reopen_and_append(spool: str, rec: RecordingFileSystem, config: SpoolConfig) -> None:
    """Open (recovery), three appends, close."""
    writer = SpoolWriter(spool, config)
    for i in range(3):
        _append(writer, rec, f"n{i}")
    _close(writer, rec)


ALWAYS = SpoolConfig(fsync="always")
WORKLOADS: Tuple[Workload, ...] = (
    Workload("always-threads", ALWAYS, _always_threads, weight=2),
    Workload("interval", SpoolConfig(fsync="interval", fsync_interval_s=0.02), _interval, weight=2),
    Workload(
        "rotation",
        SpoolConfig(fsync="always", segment_max_bytes=4096, segment_max_age_s=0.05),
        _rotation,
        weight=2,
    ),
    Workload("ack-unlink", SpoolConfig(fsync="always", segment_max_bytes=4096), _ack, weight=2),
    Workload("idle-lane", ALWAYS, _idle_lane),
    Workload("torn-tail", ALWAYS, _reopen_and_append, setup=_torn_setup),
    Workload("quarantine", ALWAYS, _reopen_and_append, setup=_quarantine_setup),
    Workload(
        "bad-header",
        SpoolConfig(fsync="always", segment_max_bytes=4096),
        _reopen_and_append,
        setup=_bad_header_setup,
    ),
    Workload(
        "signing-key",
        SpoolConfig(fsync="always", signing_key=KEY),
        _reopen_and_append,
        setup=_unkeyed_setup,
        verify_key=False,
    ),
    Workload(
        "overflow",
        SpoolConfig(
            fsync="always", segment_max_bytes=4096, max_spool_bytes=8192, overflow="drop_oldest"
        ),
        _overflow,
        excused=("overflow",),
    ),
)

# Workloads that find a bug not fixed yet (docs/RELIABILITY.md, "Found"): run with
# ``--workload NAME``; tests/test_crashstates.py keeps their failing state as a strict xfail.
PENDING: Tuple[Workload, ...] = ()


# -- running ------------------------------------------------------------------------------


def scratch_root() -> str:
    """Where states are built: tmpfs when there is one (no real fsync is needed)."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()


def record(
    workload: Workload,
    root: str,
    fs_class: Type[RecordingFileSystem] = RecordingFileSystem,
) -> Tuple[Recording, Dict[Key, str]]:
    """Run ``workload`` in ``root`` (created empty) under a recorder; its log and promises."""
    spool = os.path.join(root, "spool")
    os.makedirs(root, exist_ok=True)
    pre: Dict[Key, str] = {}
    if workload.setup is not None:
        pre = workload.setup(spool)
    rec = fs_class(root)
    with use(rec):
        workload.run(spool, rec, workload.config)
    return rec.recording, pre


@dataclass
class Result:
    """What running one workload's states found."""

    name: str
    ops: int = 0
    states: int = 0
    sampled: int = 0
    seconds: float = 0.0
    failures: List[Failure] = field(default_factory=list)


def run_workload(
    workload: Workload,
    states: int,
    seed: int,
    fs_class: Type[RecordingFileSystem] = RecordingFileSystem,
    keep: Optional[str] = None,
) -> Result:
    """Record ``workload`` once, check up to ``states`` distinct crash states of it."""
    base = tempfile.mkdtemp(prefix="crashstates-", dir=scratch_root())
    result = Result(workload.name)
    try:
        rec, pre = record(workload, os.path.join(base, "run"), fs_class)
        result.ops = len(rec.ops)
        seen = set()
        started = time.monotonic()
        for state in sample_states(rec, seed, attempts=states * 20):
            result.sampled += 1
            dirs, files = build(rec, state)
            image = digest(rec.root, dirs, files)
            if image in seen:
                continue
            seen.add(image)
            result.states += 1
            scratch = os.path.join(base, "state")
            failure = check_state(
                workload.name,
                rec,
                state,
                workload.config,
                pre,
                scratch,
                verify_key=workload.verify_key,
                excused=workload.excused,
            )
            if failure is not None:
                result.failures.append(failure)
                if keep is not None and len(result.failures) <= 3:
                    where = f"{workload.name}-seed{seed}-{len(result.failures)}"
                    shutil.copytree(scratch, os.path.join(keep, where), dirs_exist_ok=True)
            if result.states >= states:
                break
        result.seconds = time.monotonic() - started
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return result


def run_all(
    states: int,
    seed: int,
    names: Optional[List[str]] = None,
    fs_class: Type[RecordingFileSystem] = RecordingFileSystem,
    keep: Optional[str] = None,
) -> List[Result]:
    """Every workload (or those named), ``states`` split by weight."""
    chosen = [w for w in WORKLOADS + PENDING if w.name in names] if names else list(WORKLOADS)
    total = sum(w.weight for w in chosen)
    return [
        run_workload(w, max(1, states * w.weight // total), seed, fs_class, keep) for w in chosen
    ]
