"""Overflow and commit policies: objects and strings choose the same policy; Block waits
for space outside the writer's lock, so markers and close never wait behind it."""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, Iterator, List

import pytest
from spoolkit import event

from cerbistream_spool import SpoolConfigError, SpoolFullError, verify
from cerbistream_spool.errors import SpoolClosedError
from cerbistream_spool.spool import (
    Block,
    DropNewest,
    DropOldest,
    GroupCommit,
    IntervalFlush,
    Kind,
    NoSync,
    SpoolConfig,
    SpoolReader,
    SpoolWriter,
)
from cerbistream_spool.spool.markers import Gap, GapReason

CAP: Dict[str, Any] = {"segment_max_bytes": 8192, "max_spool_bytes": 16384}

EQUIVALENT = [
    ({"fsync": "always"}, {"fsync": GroupCommit()}),
    ({"fsync": "interval"}, {"fsync": IntervalFlush()}),
    ({"fsync": "interval", "fsync_interval_s": 0.05}, {"fsync": IntervalFlush(0.05)}),
    ({"fsync": "never"}, {"fsync": NoSync()}),
    ({"fsync": "never", "overflow": "drop_oldest"}, {"fsync": NoSync(), "overflow": DropOldest()}),
    ({"fsync": "never", "overflow": "drop_newest"}, {"fsync": NoSync(), "overflow": DropNewest()}),
    (
        {"fsync": "never", "overflow": "block", "block_timeout_s": 0.0},
        {"fsync": NoSync(), "overflow": Block(0.0)},
    ),
]


def run(spool_dir: str, config: SpoolConfig) -> Dict[str, Any]:
    """Write past the cap; what the writer counted and the gaps verify finds."""
    refused = 0
    with SpoolWriter(spool_dir, config) as writer:
        for i in range(200):
            try:
                writer.append(event(i))
            except SpoolFullError:
                refused += 1
        stats = writer.stats()
    report = verify(spool_dir)
    assert report.valid, report.problems
    gaps = [(g["reason"], g["count"], g["first_seq"], g["last_seq"]) for g in report.gaps]
    return {
        "refused": refused,
        "dropped": stats["dropped"],
        "lost": stats["lost"],
        "accepted": stats["accepted"],
        "gaps": gaps,
    }


@pytest.mark.parametrize(("names", "objects"), EQUIVALENT)
def test_policy_objects_and_their_strings_configure_and_behave_the_same(
    tmp_path: Any, names: Dict[str, Any], objects: Dict[str, Any]
) -> None:
    by_name = SpoolConfig(**names, **CAP)
    by_object = SpoolConfig(**objects, **CAP)
    assert by_name == by_object
    assert by_name.commit_policy() == by_object.commit_policy()
    assert by_name.overflow_policy() == by_object.overflow_policy()
    assert run(str(tmp_path / "names"), by_name) == run(str(tmp_path / "objects"), by_object)


def test_the_policies_a_config_names() -> None:
    config = SpoolConfig(fsync="interval", fsync_interval_s=0.1, overflow="block")
    assert config.commit_policy() == IntervalFlush(0.1)
    assert config.overflow_policy() == Block(1.0)
    assert SpoolConfig().commit_policy() == IntervalFlush(0.2)
    assert SpoolConfig().overflow_policy() == DropOldest()
    assert SpoolConfig(fsync=GroupCommit()).fsync == "always"  # handler code reads the name


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fsync": "sometimes"}, r"fsync must be one of .*GroupCommit\(\).*'sometimes'"),
        ({"fsync": Block(1.0)}, r"fsync must be one of .*NoSync\(\), not Block"),
        ({"fsync": GroupCommit}, r"fsync must be one of .*GroupCommit'>"),
        ({"overflow": "drop_random"}, r"overflow must be one of .*Block\(timeout_s\).*random"),
        ({"overflow": GroupCommit()}, r"overflow must be one of .*not GroupCommit\(\)"),
        ({"overflow": None}, r"overflow must be one of .*not None"),
    ],
)
def test_a_bad_policy_value_is_a_config_error_naming_the_choices(
    options: Dict[str, Any], message: str
) -> None:
    with pytest.raises(SpoolConfigError, match=message):
        SpoolConfig(**options)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Block(-1.0), "block_timeout_s must be >= 0"),
        (lambda: IntervalFlush(0.5), r"fsync_interval_s must be in \(0, 0.2\]"),
        (lambda: IntervalFlush(0.0), r"fsync_interval_s must be in \(0, 0.2\]"),
    ],
)
def test_a_policy_with_a_bad_parameter_is_a_config_error(make: Any, message: str) -> None:
    with pytest.raises(SpoolConfigError, match=message):
        make()


# -- Block waits outside the writer's lock --------------------------------------------------


@pytest.fixture
def full_spool(spool_dir: str) -> Iterator[SpoolWriter]:
    """A spool at its cap, filled by a ``drop_newest`` writer of another lane (kept open)."""
    config = SpoolConfig(fsync="never", overflow="drop_newest", **CAP)
    filler = SpoolWriter(spool_dir, config)
    try:
        with pytest.raises(SpoolFullError):
            for i in range(1000):
                filler.append(event(i))
        yield filler
    finally:
        filler.close()


class BlockedAppender:
    """A thread appending one event through ``writer`` (it blocks while the spool is full)."""

    def __init__(self, writer: SpoolWriter) -> None:
        self.outcome: List[Any] = []
        self.thread = threading.Thread(target=self._run, args=(writer,), daemon=True)
        self.thread.start()

    def _run(self, writer: SpoolWriter) -> None:
        try:
            self.outcome.append(writer.append(event(10_000)))
        except Exception as exc:  # the test asserts which one
            self.outcome.append(exc)


def in_thread(call: Any, timeout: float) -> List[Any]:
    """Run ``call`` in a thread; its result (empty if it did not return within ``timeout``)."""
    out: List[Any] = []
    thread = threading.Thread(target=lambda: out.append(call()), daemon=True)
    thread.start()
    thread.join(timeout)
    return out


def free_space(spool_dir: str, writer: SpoolWriter) -> None:
    reader = SpoolReader(spool_dir)
    for batch in reader.batches():
        reader.ack(batch)
    writer.notify_space()


def test_a_marker_is_written_promptly_while_an_appender_waits_for_space(
    spool_dir: str, full_spool: SpoolWriter
) -> None:
    config = SpoolConfig(fsync="never", overflow=Block(30.0), **CAP)
    with SpoolWriter(spool_dir, config) as writer:
        blocked = BlockedAppender(writer)
        time.sleep(0.3)
        assert blocked.thread.is_alive() and not blocked.outcome, "the appender should wait"
        gap = Gap(GapReason.DEAD_LETTER, 1, "test marker")
        started = time.monotonic()
        written = in_thread(lambda: writer.append_marker(Kind.GAP, gap.encode()), timeout=5.0)
        assert written, "append_marker waited behind the appender waiting for space"
        assert time.monotonic() - started < 2.0
        assert blocked.thread.is_alive(), "the appender still waits: the spool is still full"
        free_space(spool_dir, writer)
        blocked.thread.join(10.0)
        assert blocked.outcome and isinstance(blocked.outcome[0], int), blocked.outcome
        assert blocked.outcome[0] > written[0]
    report = verify(spool_dir)
    assert report.valid, report.problems
    assert ("dead-letter", 1) in [(g["reason"], g["count"]) for g in report.gaps]


def test_close_does_not_wait_out_an_appender_blocked_for_space(
    spool_dir: str, full_spool: SpoolWriter
) -> None:
    config = SpoolConfig(fsync="never", overflow=Block(30.0), **CAP)
    writer = SpoolWriter(spool_dir, config)
    blocked = BlockedAppender(writer)
    time.sleep(0.3)
    assert blocked.thread.is_alive() and not blocked.outcome, "the appender should wait"
    assert in_thread(lambda: writer.close() or True, timeout=5.0), "close waited"
    blocked.thread.join(5.0)
    assert blocked.outcome and isinstance(blocked.outcome[0], SpoolClosedError), blocked.outcome
    assert verify(spool_dir).valid


def test_a_marker_over_the_cap_is_written_not_refused(
    spool_dir: str, full_spool: SpoolWriter
) -> None:
    """A marker may overshoot max_spool_bytes by its own size; an event is refused."""
    config = SpoolConfig(fsync="never", overflow="drop_newest", **CAP)
    with SpoolWriter(spool_dir, config) as writer:
        with pytest.raises(SpoolFullError):
            writer.append(event(1))
        seq = writer.append_marker(Kind.GAP, Gap(GapReason.DEAD_LETTER, 1, "over").encode())
        assert seq == writer.stats()["accepted"]
        with pytest.raises(ValueError, match="append_marker writes markers"):
            writer.append_marker(Kind.EVENT, b"\x80")
