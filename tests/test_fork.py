"""Pre-fork servers: a handler configured in the parent, then workers forked.

The app (tests/fork_app.py) is a real process that forks real children; the
broker is the local AMQP peer driven by the real azure-servicebus SDK. Every
event must be on disk exactly once, in a lane of the process that logged it,
with a clean chain, and delivered.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from cerbistream_spool import SpoolHandler, verify
from cerbistream_spool.spool.lanes import lane_is_live
from cerbistream_spool.spool.reader import SpoolReader
from cerbistream_spool.spool.record import Kind

REPO = Path(__file__).resolve().parent.parent
APP = Path(__file__).resolve().parent / "fork_app.py"


def run_app(spool_dir: str, *args: str, timeout: float = 120) -> List[Dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, str(APP), "--spool-dir", spool_dir, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(REPO),
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def events_on_disk(spool_dir: str) -> List[Tuple[int, Dict[str, Any]]]:
    """``[(lane, event)]`` of every event record still on disk, delivered or not."""
    reader = SpoolReader(spool_dir, remove_idle_lanes=False, from_start=True)
    return [
        (batch.lane, r.value())
        for batch in reader.batches()
        for r in batch.records
        if r.kind == Kind.EVENT
    ]


def check_each_record_once(
    spool_dir: str, procs: range, records: int
) -> Tuple[List[Dict[str, Any]], Dict[int, int]]:
    """Every (proc, k) logged is on disk exactly once; returns events and proc -> lane."""
    on_disk = events_on_disk(spool_dir)
    keys = collections.Counter((e["RawPayload"]["proc"], e["RawPayload"]["k"]) for _, e in on_disk)
    expected = {(p, k) for p in procs for k in range(records)}
    assert set(keys) == expected, f"{len(expected - set(keys))} records missing"
    assert set(keys.values()) == {1}, "a record is on disk twice"
    ids = [e["LogId"] for _, e in on_disk]
    assert len(set(ids)) == len(ids), "a LogId repeats"
    lanes: Dict[int, set] = collections.defaultdict(set)
    for lane, e in on_disk:
        lanes[e["RawPayload"]["proc"]].add(lane)
    # a process writes one lane; no child writes the parent's (a child that has exited may
    # hand its lane to a later one, which continues that chain)
    assert all(len(v) == 1 for v in lanes.values())
    owner = {p: next(iter(v)) for p, v in lanes.items()}
    parent = owner[-1]
    assert owner[max(procs)] == parent
    assert all(owner[p] != parent for p in procs if -1 < p < max(procs))
    return [e for _, e in on_disk], owner


@pytest.fixture
def peer() -> Iterator[Any]:
    pytest.importorskip("proton")
    pytest.importorskip("azure.servicebus")
    from tools.amqp_peer import LocalPeer  # noqa: PLC0415 — needs the optional deps

    started = LocalPeer.start()
    yield started
    started.stop()


def test_forked_children_spool_into_lanes_of_their_own(spool_dir: str) -> None:
    """Without a drainer: 2 children + parent, every record once, chain clean, lanes free."""
    lines = run_app(spool_dir, "--fsync", "interval", "--children", "2", "--records", "60")
    check_each_record_once(spool_dir, range(-1, 3), 60)
    report = verify(spool_dir)
    assert report.valid, report.problems[:5]
    assert report.pending == 3 * 60 + 60
    children = [line for line in lines if "child" in line]
    assert len(children) == 2
    for child in children:  # a child's own counters, not its parent's
        assert child["stats"]["accepted"] == 60 and child["stats"]["dropped"] == 0
    assert not any(lane_is_live(spool_dir, lane) for lane in range(3))


@pytest.mark.slow
@pytest.mark.parametrize("fsync", ["interval", "always"])
def test_prefork_workers_every_record_once_verify_clean_and_delivered(
    spool_dir: str, fsync: str, peer: Any
) -> None:
    """Parent + 3 children, 300 records each, drain=True everywhere: the one drainer that
    holds the drain lock ships every lane; the others stand by."""
    lines = run_app(
        spool_dir,
        "--fsync",
        fsync,
        "--children",
        "3",
        "--records",
        "300",
        "--connection-string",
        peer.connection_string(),
    )
    report = verify(spool_dir)
    assert report.valid, report.problems[:5]
    assert report.pending == 0
    (parent,) = [line for line in lines if line.get("parent")]
    assert parent["shipped"] and parent["failed"] == 0
    # delivered lanes of exited children are removed: read the records back from the broker
    by_id = {m.message_id: json.loads(m.body) for m in peer.accepted()}  # re-sends: same id
    assert all(event["LogId"] == log_id for log_id, event in by_id.items())
    keys = collections.Counter(
        (e["RawPayload"]["proc"], e["RawPayload"]["k"]) for e in by_id.values()
    )
    expected = {(p, k) for p in range(-1, 4) for k in range(300)}
    assert set(keys) == expected, f"{len(expected - set(keys))} records never delivered"
    assert set(keys.values()) == {1}, "a record was spooled twice under different LogIds"
    children = [line for line in lines if "child" in line]
    assert len(children) == 3
    for child in children:
        # each child has its own committer/flusher: 300 emits take well under a second
        # each (on the original code every fsync="always" emit waited ~1 s)
        assert child["elapsed_s"] < 30
        assert child["stats"]["accepted"] == 300


def test_a_child_never_unlocks_or_writes_its_parents_lane(spool_dir: str) -> None:
    """In-process fork: the child's handler logs into its own lane; the parent's lane
    stays locked by the parent and its chain is untouched by the child."""
    handler = SpoolHandler(spool_dir, tenant_id="t", app_name="a", fsync="never", drain=False)
    writer = handler.writer
    assert writer is not None
    parent_lane = writer.lane
    with warnings.catch_warnings():  # 3.12+ warns when pytest's process has other threads
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover — runs in the child
        code = 1
        try:
            handler.handle(logging.makeLogRecord({"msg": "from the child", "levelno": 20}))
            child_writer = handler.writer
            ok = (
                child_writer is not None
                and child_writer.lane != parent_lane
                and writer.closed  # the inherited writer is forgotten
                and lane_is_live(spool_dir, parent_lane)  # the parent still holds its lane
            )
            handler.close()
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert lane_is_live(spool_dir, parent_lane)  # the child's exit did not unlock it
    handler.handle(logging.makeLogRecord({"msg": "from the parent", "levelno": 20}))
    handler.close()
    report = verify(spool_dir)
    assert report.valid, report.problems
    lanes = {lane: e["RawPayload"]["message"] for lane, e in events_on_disk(spool_dir)}
    assert lanes[parent_lane] == "from the parent"
    assert sorted(lanes.values()) == ["from the child", "from the parent"]


def _mp_worker(handler: SpoolHandler, proc: int) -> None:
    log = logging.getLogger(f"mp-worker.{id(handler)}")
    log.propagate, log.handlers = False, [handler]
    log.setLevel(logging.INFO)
    for k in range(20):
        log.info("mp %d %d", proc, k, extra={"proc": proc, "k": k})


def test_multiprocessing_fork_children_close_their_lanes_on_exit(spool_dir: str) -> None:
    """``multiprocessing`` (fork) children exit with ``os._exit``: their lanes still end
    with close records, so verify finds no lane without one."""
    import multiprocessing  # noqa: PLC0415

    handler = SpoolHandler(spool_dir, tenant_id="t", app_name="a", fsync="never", drain=False)
    ctx = multiprocessing.get_context("fork")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        procs = [ctx.Process(target=_mp_worker, args=(handler, p)) for p in range(2)]
        for p in procs:
            p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    _mp_worker(handler, -1)
    handler.close()
    report = verify(spool_dir)
    assert report.valid, report.problems
    on_disk = events_on_disk(spool_dir)
    keys = sorted((e["RawPayload"]["proc"], e["RawPayload"]["k"]) for _, e in on_disk)
    assert keys == sorted((p, k) for p in range(-1, 2) for k in range(20))
