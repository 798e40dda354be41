"""Every loss stands in the chain, and ``stats()`` adds up.

Faults are real: a full disk is ``RLIMIT_FSIZE`` in the app process (a real
``EFBIG``), a vanished spool is ``rm -rf`` / ``mv`` of the directory under the
running app (tests/loss_app.py). The identity checked after every step:
``accepted == delivered + pending_records + dropped + lost``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cerbistream_spool import SpoolHandler, verify
from cerbistream_spool import handler as handler_module
from cerbistream_spool.spool.lanes import list_lanes

REPO = Path(__file__).resolve().parent.parent
APP = Path(__file__).resolve().parent / "loss_app.py"


class App:
    """tests/loss_app.py as a running process: ``app(cmd)`` returns its stats after it."""

    def __init__(self, spool_dir: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(APP), spool_dir, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=str(REPO),
        )

    def __call__(self, *cmd: Any) -> Dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(list(cmd)) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, self.finish()
        stats: Dict[str, Any] = json.loads(line)
        return stats

    def finish(self) -> str:
        """Close stdin, wait (bounded) and return stderr."""
        _, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err
        return err


def adds_up(stats: Dict[str, Any]) -> bool:
    return bool(
        stats["accepted"]
        == stats["delivered"] + stats["pending_records"] + stats["dropped"] + stats["lost"]
    )


def gap_counts(spool_dir: str) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for gap in verify(spool_dir).gaps:
        out[gap["reason"]] = out.get(gap["reason"], 0) + gap["count"]
    return out


@pytest.fixture
def app(spool_dir: str) -> Iterator[Any]:
    made: List[App] = []

    def start(*args: str) -> App:
        made.append(App(spool_dir, *args))
        return made[-1]

    yield start
    for one in made:
        if one.proc.poll() is None:
            one.proc.kill()
            one.proc.communicate(timeout=10)


def test_a_full_disk_leaves_a_write_error_gap_counting_every_drop(spool_dir: str, app: Any) -> None:
    run = app()
    run("emit", 20)
    run("full", 3000)
    full = run("emit", 200)
    assert full["dropped"] > 100 and adds_up(full)
    run("heal")
    after = run("emit", 5)
    assert adds_up(after) and after["accepted"] == 225
    run.finish()
    report = verify(spool_dir)
    assert report.valid, report.problems
    assert gap_counts(spool_dir) == {"write-error": full["dropped"]}
    assert report.pending == after["accepted"] - full["dropped"]


def test_records_logged_after_close_are_dropped_and_counted_not_spooled(
    spool_dir: str,
) -> None:
    handler = SpoolHandler(spool_dir, tenant_id="t", app_name="a", drain=False)
    log = logging.getLogger(f"after-close.{id(handler)}")
    log.propagate, log.handlers = False, [handler]
    log.setLevel(logging.INFO)
    log.info("before")
    handler.close()
    for i in range(5):
        log.info("after %d", i)
    stats = handler.stats()
    assert stats["dropped"] == 5 and stats["accepted"] == 6 and adds_up(stats)
    assert handler.writer is None
    assert list_lanes(spool_dir) == [0]  # no second lane was opened
    report = verify(spool_dir)
    assert report.valid, report.problems  # every lane ends with its close record
    assert report.pending == 1


def test_drops_while_the_spool_cannot_open_become_a_gap_once_it_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handler_module, "_REOPEN_EVERY_S", 0.0)  # retry on every emit
    blocker = tmp_path / "parent"
    blocker.write_text("a file where the spool's parent directory should be")
    spool_dir = str(blocker / "spool")
    handler = SpoolHandler(spool_dir, tenant_id="t", app_name="a", drain=False, fsync="never")
    log = logging.getLogger(f"cannot-open.{id(handler)}")
    log.propagate, log.handlers = False, [handler]
    log.setLevel(logging.INFO)
    try:
        for i in range(7):
            log.info("lost %d", i)
        assert handler.writer is None and handler.stats()["dropped"] == 7
        blocker.unlink()
        log.info("kept")
        stats = handler.stats()
        assert handler.writer is not None
        assert stats["accepted"] == 8 and stats["dropped"] == 7 and adds_up(stats)
    finally:
        handler.close()
    report = verify(spool_dir)
    assert report.valid, report.problems
    assert gap_counts(spool_dir) == {"write-error": 7}


@pytest.mark.parametrize("how", ["vanish", "replace"])
def test_a_spool_removed_under_the_app_is_recreated_with_a_vanished_gap(
    spool_dir: str, app: Any, how: str
) -> None:
    run = app("interval")
    run("emit", 30)
    acked = run("ack", 1)  # one batch delivered, the rest pending when the files go
    delivered, pending = acked["delivered"], acked["pending_records"]
    assert delivered > 0 and pending > 0 and delivered + pending == 30
    before = run(how)
    gone = run("emit", 1)  # the writer notices at its next check (≤ 100 ms) ...
    for _ in range(50):
        if gone["lost"]:
            break
        gone = run("emit", 1)
    # lost: what was pending, and what went into the unlinked files before the check
    assert gone["lost"] == pending + (gone["accepted"] - before["accepted"] - 1)
    assert gone["delivered"] == delivered and adds_up(gone)
    after = run("emit", 5)
    assert adds_up(after) and after["dropped"] == 0
    run.finish()
    report = verify(spool_dir)
    assert report.valid, report.problems
    assert gap_counts(spool_dir) == {"vanished": gone["lost"]}
    expected_pending = after["accepted"] - delivered - gone["lost"]
    assert report.pending == after["pending_records"] == expected_pending


OPS = st.one_of(
    st.tuples(st.just("emit"), st.integers(1, 60)),
    st.tuples(st.just("full"), st.integers(0, 4000)),
    st.tuples(st.just("heal")),
    st.tuples(st.just("ack"), st.integers(1, 3)),
    st.tuples(st.just("vanish")),
    st.tuples(st.just("replace")),
    st.tuples(st.just("close")),
)


@pytest.mark.slow
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    ops=st.lists(OPS, min_size=1, max_size=12),
    mode=st.sampled_from(
        [("never", "drop_newest"), ("interval", "drop_oldest"), ("always", "drop_newest")]
    ),
)
def test_stats_add_up_after_every_step_under_random_faults(
    tmp_path_factory: pytest.TempPathFactory, ops: Sequence[Any], mode: Any
) -> None:
    spool_dir = str(tmp_path_factory.mktemp("prop") / "spool")
    run = App(spool_dir, mode[0], mode[1], str(96 * 1024))
    try:
        vanished = closed = full = closed_full = False
        after_close = 0
        for op in [*ops, ("heal",), ("emit", 3)]:
            stats = run(*op)
            assert adds_up(stats), (op, stats)
            assert stats["accepted"] == stats["emitted"]
            vanished |= op[0] in ("vanish", "replace")
            if closed and op[0] == "emit":
                after_close += op[1]
            full = (full or op[0] == "full") and op[0] != "heal"
            closed_full |= op[0] == "close" and not closed and full
            closed |= op[0] == "close"
        run.finish()
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.communicate(timeout=10)
    if not os.path.isdir(spool_dir):  # removed after close(): nobody writes it any more
        assert closed
        return
    report = verify(spool_dir)
    if closed_full:  # a full disk at close: no room for the close record (nor the gaps owed)
        assert {p.kind for p in report.problems} <= {"truncated-tail"}, report.problems
        return
    assert report.valid, report.problems
    if not vanished:  # (a vanished spool takes the gaps written before it along)
        gaps = gap_counts(spool_dir)
        never_spooled = gaps.get("write-error", 0) + (
            gaps.get("overflow", 0) if mode[1] == "drop_newest" else 0
        )
        assert never_spooled == stats["dropped"] - after_close
