"""SpoolWriter: sequence, rotation, permissions, watermarks, threads, size cap, errors."""

from __future__ import annotations

import os
import stat
import threading
import time

import pytest
from faulty_fs import FaultyFileSystem
from spoolkit import (
    SMALL,
    event,
    event_ids,
    frames,
    read_all,
    read_bytes,
    segments,
    wait_until,
)

from cerbistream_spool import SpoolConfigError, SpoolFullError, verify
from cerbistream_spool.errors import SpoolClosedError
from cerbistream_spool.spool import SpoolConfig, SpoolReader, SpoolWriter, fsio
from cerbistream_spool.spool import writer as spool_writer
from cerbistream_spool.spool.lanes import lane_dir


def test_append_returns_strictly_increasing_seqs_from_one(spool_dir: str) -> None:
    with SpoolWriter(spool_dir, SMALL) as writer:
        first = writer.append(event(0))
        seqs = [first] + [writer.append(event(i)) for i in range(1, 50)]
    assert first == 2  # seq 1 is the open marker
    assert seqs == list(range(2, 52))


def test_segments_rotate_by_size_with_kafka_names_and_sealed_ones_never_change(
    spool_dir: str,
) -> None:
    with SpoolWriter(spool_dir, SMALL) as writer:
        for i in range(100):
            writer.append(event(i))
        sealed = segments(spool_dir)[:-1]
        before = {path: read_bytes(path) for _, path in sealed}
        for i in range(100, 200):
            writer.append(event(i))
        assert all(read_bytes(path) == data for path, data in before.items())
    for base, path in segments(spool_dir):
        name = os.path.basename(path)
        assert name == f"{base:020d}.seg" and len(name) == 24
        assert os.path.getsize(path) <= SMALL.segment_max_bytes
        assert frames(path)[0][2].seq == base
    assert verify(spool_dir).valid


def test_segments_rotate_by_age(spool_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ahead = {"ns": 0}  # the writer's clock; moved 6 s on instead of sleeping
    monkeypatch.setattr(spool_writer, "_time_ns", lambda: time.time_ns() + ahead["ns"])
    config = SpoolConfig(fsync="never", segment_max_age_s=5)
    with SpoolWriter(spool_dir, config) as writer:
        writer.append(event(0))
        ahead["ns"] = 6_000_000_000
        writer.append(event(1))
        ahead["ns"] = 0  # (new segments are stamped by the real clock)
    assert len(segments(spool_dir)) == 2


def test_files_are_0600_and_directories_0700(spool_dir: str) -> None:
    os.umask(0o022)
    with SpoolWriter(spool_dir, SMALL) as writer:
        writer.append(event(0))
    SpoolReader(spool_dir, remove_idle_lanes=False).ack(next(SpoolReader(spool_dir).batches()))
    for root, _dirs, files in os.walk(spool_dir):
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o700, root
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode) == 0o600, name


def test_always_mode_returns_only_when_durable(spool_dir: str) -> None:
    with SpoolWriter(spool_dir, SpoolConfig(fsync="always")) as writer:
        for i in range(20):
            seq = writer.append(event(i))
            stats = writer.stats()
            assert stats["durable"] >= seq and stats["accepted"] >= seq


def test_always_mode_threads_share_fsyncs_and_each_return_is_durable(spool_dir: str) -> None:
    """Group commit: with 8 appenders one fsync covers several records, and still no
    append returns before its own record is fsynced."""
    fs = FaultyFileSystem()  # fails nothing: it logs every operation
    not_durable: list = []
    with fsio.use(fs), SpoolWriter(spool_dir, SpoolConfig(fsync="always")) as writer:
        before = len(fs.ops("fsync"))

        def work(t: int) -> None:
            for i in range(100):
                seq = writer.append(event(t * 1000 + i))
                if writer.stats()["durable"] < seq:
                    not_durable.append(seq)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        fsyncs = [p for p in fs.ops("fsync")[before:] if p.endswith(".seg")]
    assert not_durable == []
    assert 0 < len(fsyncs) < 800 * 0.9, len(fsyncs)
    assert verify(spool_dir).valid


def test_always_mode_failed_fsync_fails_the_records_it_covered_then_recovers(
    spool_dir: str,
) -> None:
    """An fsync error reaches the appender as OSError (never a hang, never a silent
    success); once the disk is back, the next append is durable again."""
    fs = FaultyFileSystem()
    with fsio.use(fs), SpoolWriter(spool_dir, SpoolConfig(fsync="always")) as writer:
        fs.fail("fsync", "*.seg", times=-1)
        errors: list = []

        def work() -> None:
            try:
                writer.append(event(1))
            except OSError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert not any(t.is_alive() for t in threads)
        assert len(errors) == 4 and all("Input/output error" in str(e) for e in errors)
        assert writer.stats()["durable"] < writer.stats()["accepted"]
        fs.clear()
        seq = writer.append(event(2))
        assert writer.stats()["durable"] >= seq
    assert verify(spool_dir).valid


def test_interval_mode_becomes_durable_within_the_interval(spool_dir: str) -> None:
    with SpoolWriter(spool_dir, SpoolConfig(fsync="interval")) as writer:
        seq = writer.append(event(0))
        assert writer.stats()["accepted"] == seq
        assert wait_until(lambda: writer.stats()["durable"] >= seq, timeout=2.0)


def test_never_mode_is_durable_after_flush(spool_dir: str) -> None:
    with SpoolWriter(spool_dir, SpoolConfig(fsync="never")) as writer:
        for i in range(5):
            seq = writer.append(event(i))
        writer.flush()
        assert writer.stats()["durable"] == seq


@pytest.mark.parametrize("mode", ["always", "interval", "never"])
def test_concurrent_appenders_get_unique_contiguous_seqs(spool_dir: str, mode: str) -> None:
    got: list = []
    lock = threading.Lock()
    config = SpoolConfig(fsync=mode, segment_max_bytes=16384)

    with SpoolWriter(spool_dir, config) as writer:

        def work(t: int) -> None:
            mine = [writer.append(event(t * 1000 + i)) for i in range(200)]
            with lock:
                got.extend(mine)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert sorted(got) == list(range(2, 2 + 1600))
    assert verify(spool_dir).valid
    assert len(event_ids(read_all(spool_dir))) == 1600


def test_reopen_continues_the_same_lane_and_chain(spool_dir: str) -> None:
    with SpoolWriter(spool_dir, SMALL) as writer:
        last = [writer.append(event(i)) for i in range(30)][-1]
    with SpoolWriter(spool_dir, SMALL) as writer:
        assert writer.lane == 0
        assert writer.append(event(99)) == last + 3  # close, open, then this
    assert verify(spool_dir).valid


def test_two_writers_in_one_process_take_separate_lanes(spool_dir: str) -> None:
    with SpoolWriter(spool_dir, SMALL) as a, SpoolWriter(spool_dir, SMALL) as b:
        assert (a.lane, b.lane) == (0, 1)
        a.append(event(1))
        b.append(event(2))
    assert sorted(event_ids(read_all(spool_dir))) == ["id-1", "id-2"]
    assert verify(spool_dir).valid


def test_drop_oldest_unlinks_old_segments_and_records_the_range(spool_dir: str) -> None:
    config = SpoolConfig(fsync="never", segment_max_bytes=8192, max_spool_bytes=32768)
    with SpoolWriter(spool_dir, config) as writer:
        for i in range(400):
            writer.append(event(i))
        dropped = writer.stats()["lost"]  # written, then removed undelivered
    assert dropped > 0
    report = verify(spool_dir)
    assert report.valid, report.problems
    # the gaps claim 1.. up to the first record kept, each seq once, counting the events
    ranges = sorted((g["first_seq"], g["last_seq"]) for g in report.gaps)
    assert {g["reason"] for g in report.gaps} == {"overflow"}
    assert all(a[1] + 1 == b[0] for a, b in zip(ranges, ranges[1:])), ranges
    kept = [r.seq for r in read_all(spool_dir)]
    assert ranges[0][0] == 1 and min(kept) == ranges[-1][1] + 1
    assert sum(g["count"] for g in report.gaps) == dropped
    total = sum(os.path.getsize(p) for _, p in segments(spool_dir))
    assert total <= config.max_spool_bytes


def test_drop_newest_refuses_and_then_records_how_many(spool_dir: str) -> None:
    config = SpoolConfig(
        fsync="never", segment_max_bytes=8192, max_spool_bytes=16384, overflow="drop_newest"
    )
    refused = 0
    with SpoolWriter(spool_dir, config) as writer:
        for i in range(300):
            try:
                writer.append(event(i))
            except SpoolFullError:
                refused += 1
        assert refused > 0 and writer.stats()["dropped"] == refused
        reader = SpoolReader(spool_dir)
        for batch in reader.batches():
            reader.ack(batch)
        writer.notify_space()
        writer.append(event(1000))
    report = verify(spool_dir)
    assert report.valid, report.problems
    (gap,) = report.gaps
    assert gap["count"] == refused and gap["first_seq"] is None


def test_block_waits_for_the_drainer_to_free_space(spool_dir: str) -> None:
    sizes = {"fsync": "never", "segment_max_bytes": 8192, "max_spool_bytes": 16384}
    config = SpoolConfig(**sizes, overflow="block", block_timeout_s=0.2)
    with SpoolWriter(spool_dir, config) as writer:
        started = time.monotonic()
        with pytest.raises(SpoolFullError):
            for i in range(300):
                writer.append(event(i))
        assert time.monotonic() - started >= 0.2  # the last append waited out its timeout
    # the cap counts every lane: the closed lane keeps the spool full for a second writer
    config = SpoolConfig(**sizes, overflow="block", block_timeout_s=5.0)
    with SpoolWriter(spool_dir, config) as writer:

        def drain() -> None:
            time.sleep(0.05)
            reader = SpoolReader(spool_dir)
            for batch in reader.batches():
                reader.ack(batch)
            writer.notify_space()

        helper = threading.Thread(target=drain)
        helper.start()
        writer.append(event(999))  # blocks until the drain frees space
        helper.join(5)
    assert verify(spool_dir).valid


def test_closed_writer_refuses_appends(spool_dir: str) -> None:
    writer = SpoolWriter(spool_dir, SMALL)
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(SpoolClosedError):
        writer.append(event(0))


@pytest.mark.parametrize(
    "options",
    [
        {"fsync": "sometimes"},
        {"overflow": "drop_random"},
        {"fsync_interval_s": 1.0},
        {"segment_max_bytes": 10},
        {"max_spool_bytes": 4096, "segment_max_bytes": 4096},
        {"segment_max_age_s": 0},
    ],
)
def test_bad_options_raise_a_clear_config_error(options: dict) -> None:
    with pytest.raises(SpoolConfigError):
        SpoolConfig(**options)


def test_cursor_and_stats_agree_after_acks(spool_dir: str) -> None:
    with SpoolWriter(spool_dir, SMALL) as writer:
        for i in range(10):
            writer.append(event(i))
        reader = SpoolReader(spool_dir)
        batch = next(reader.batches(max_records=5))
        reader.ack(batch)
        stats = writer.stats()
        assert stats["delivered"] == batch.last_seq
        assert stats["pending_records"] == stats["accepted"] - batch.last_seq
        assert os.path.exists(os.path.join(lane_dir(spool_dir, 0), "cursor"))
