"""The drainer end to end: SpoolHandler/Drainer/CLI → real azure-servicebus SDK → local peer.

Every test starts its own AMQP peer (tools/amqp_peer) on a free 127.0.0.1 port
and stops it. Assertions are on what the peer recorded (docs/CONTRACT.md §2): every
LogId arrives, the body is the spooled event as UTF-8 JSON, MessageId = LogId,
content type ``application/json`` and the four application properties.
Duplicates (at-least-once) must carry the same MessageId and the same body.
All waits are bounded; drainers use small backoff values.

Each SDK session costs about a second of fixed waits, so the fast tier keeps the
process-level runs (kill -9, ``drain --follow`` + SIGTERM) and one authentication
failure; the other SDK runs are ``slow`` (CI runs them), each naming what covers
its logic in the fast tier. CLI tests of output and exit codes run in-process
(tests/clikit.py) and use a MemoryTransport where the broker is not the subject.
"""

from __future__ import annotations

import collections
import gc
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

pytest.importorskip("proton")
pytest.importorskip("azure.servicebus")

from clikit import invoke
from spoolkit import wait_until

from cerbistream_spool import SpoolHandler, verify
from cerbistream_spool import handler as handler_module
from cerbistream_spool.drain import DEADLETTER_DIR, Drainer
from cerbistream_spool.errors import TransientTransportError
from cerbistream_spool.event import EventEncoder
from cerbistream_spool.spool import SpoolWriter
from cerbistream_spool.spool.lanes import lane_dir, list_lanes
from cerbistream_spool.spool.reader import SpoolReader
from cerbistream_spool.spool.record import Kind, decode_body
from cerbistream_spool.status import status as spool_status
from cerbistream_spool.transports import servicebus
from cerbistream_spool.transports.memory import MemoryTransport
from cerbistream_spool.transports.servicebus import ServiceBusTransport
from tools.amqp_peer import AcceptedMessage, LocalPeer

QUEUE = "cerbishield.log-scoring"
TENANT = "tenant-drain"
APP = "app-drain"
PROPS = ("TenantId", "AppName", "LogLevel", "SchemaVersion")
FAST: Dict[str, float] = {"backoff_base_s": 0.05, "backoff_max_s": 0.5, "idle_poll_s": 0.2}
CHILD = Path(__file__).resolve().parent / "drain_child.py"
CLI = [sys.executable, "-c", "from cerbistream_spool.cli import main; main()"]
Events = Dict[str, Dict[str, Any]]


# ---------------------------------------------------------------------------
# helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def conn_for(port: int) -> str:
    """The connection string of a peer that will listen on ``port`` (maybe not yet)."""
    return (
        f"Endpoint=sb://127.0.0.1:{port};SharedAccessKeyName=k;SharedAccessKey=v;"
        "UseDevelopmentEmulator=true"
    )


def spooled_events(spool_dir: str) -> Events:
    """Every event record still on disk (delivered or not), by LogId."""
    reader = SpoolReader(spool_dir, remove_idle_lanes=False, from_start=True)
    return {
        r.value()["LogId"]: r.value()
        for batch in reader.batches()
        for r in batch.records
        if r.kind == Kind.EVENT
    }


def pending_events(spool_dir: str) -> Events:
    """Event records after each lane's cursor, by LogId."""
    reader = SpoolReader(spool_dir, remove_idle_lanes=False)
    return {r.value()["LogId"]: r.value() for b in reader.batches() for r in b.events()}


def dead_letter_gaps(spool_dir: str) -> Dict[int, List[Tuple[int, int]]]:
    """Lane holding each dead-letter gap record -> [(lane, seq) of the record it names]."""
    reader = SpoolReader(spool_dir, remove_idle_lanes=False, from_start=True)
    found: Dict[int, List[Tuple[int, int]]] = {}
    for batch in reader.batches():
        for rec in batch.records:
            body = rec.value() if rec.kind == Kind.GAP else None
            if isinstance(body, dict) and body.get("reason") == "dead-letter":
                found.setdefault(batch.lane, []).append((body["lane"], body["first_seq"]))
    return found


def check_delivered(records: List[AcceptedMessage], expected: Events) -> collections.Counter:
    """Every expected event arrived, each copy exactly as spooled; returns copies per LogId."""
    first_body: Dict[str, bytes] = {}
    for rec in records:
        assert rec.entity == QUEUE
        assert rec.message_id in expected, f"unexpected message {rec.message_id!r}"
        event = json.loads(rec.body.decode("utf-8"))
        assert event == expected[rec.message_id]
        assert event["LogId"] == rec.message_id
        assert rec.content_type == "application/json"
        assert rec.application_properties == {k: event[k] for k in PROPS}
        # a duplicate is the same message again: same MessageId, byte-identical body
        assert rec.body == first_body.setdefault(rec.message_id, rec.body)
    missing = set(expected) - set(first_body)
    assert not missing, f"{len(missing)} of {len(expected)} events never arrived"
    return collections.Counter(rec.message_id for rec in records)


def cli(*args: str, timeout: float = 30, env: Optional[Dict[str, str]] = None) -> Any:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env if env is not None else clean_env(),
    )


def clean_env() -> Dict[str, str]:
    env = dict(os.environ)
    env.pop("CERBISTREAM_SERVICEBUS_CONNECTION", None)
    env.pop("CERBISTREAM_SPOOL_KEY", None)
    return env


def last_json_line(text: str) -> Dict[str, Any]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert lines, "no output"
    doc = json.loads(lines[-1])
    assert isinstance(doc, dict)
    return doc


def transport_for(peer_conn: str) -> ServiceBusTransport:
    return ServiceBusTransport(queue_name=QUEUE, connection_string=peer_conn, send_timeout_s=5)


# ---------------------------------------------------------------------------
# fixtures


@pytest.fixture(autouse=True)
def _no_connection_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CERBISTREAM_SERVICEBUS_CONNECTION", raising=False)
    monkeypatch.delenv("CERBISTREAM_SPOOL_KEY", raising=False)


@pytest.fixture
def peers() -> Iterator[Callable[..., LocalPeer]]:
    """``peers(**kw)`` starts a LocalPeer; every one is stopped at teardown."""
    started: List[LocalPeer] = []

    def start(**kwargs: Any) -> LocalPeer:
        peer = LocalPeer.start(**kwargs)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()


@pytest.fixture
def fast_handler_drainer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A SpoolHandler's own drainer retries with small backoff values (the defaults are 30 s)."""
    original = SpoolHandler._new_drainer

    def new_drainer(handler: SpoolHandler) -> Drainer:
        drainer: Drainer = original(handler)
        drainer.transport.send_timeout_s = 5  # type: ignore[attr-defined]
        for name, value in FAST.items():
            setattr(drainer, name, value)
        return drainer

    monkeypatch.setattr(SpoolHandler, "_new_drainer", new_drainer)


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> Events:
    """Every event the handlers of this test encoded, by LogId, exactly as encoded."""
    events: Events = {}
    original = EventEncoder.encode

    def capture(self: EventEncoder, *args: Any, **kwargs: Any) -> bytes:
        body = original(self, *args, **kwargs)
        event = decode_body(body)
        events[event["LogId"]] = json.loads(json.dumps(event))
        return body

    monkeypatch.setattr(EventEncoder, "encode", capture)
    return events


@pytest.fixture
def make_handler(
    make_handler: Callable[..., Tuple[SpoolHandler, logging.Logger]],
) -> Callable[..., Tuple[SpoolHandler, logging.Logger]]:
    """conftest's ``make_handler`` (every handler closed at teardown), this file's names."""

    def make(spool_dir: str, **options: Any) -> Tuple[SpoolHandler, logging.Logger]:
        options.setdefault("tenant_id", TENANT)
        options.setdefault("app_name", APP)
        return make_handler(spool_dir, **options)

    return make


# ---------------------------------------------------------------------------
# 1. offline start


def assert_spool_clean(spool_dir: str) -> None:
    """verify() finds nothing wrong and nothing pending."""
    report = verify(spool_dir)
    assert report.valid, report.problems
    assert report.pending == 0


# the fast tier: retry then delivery (test_cbs_401_...), handler to peer end to end
# (tests/test_amqp_peer.py::test_handler_ships_to_the_peer_and_events_decodes_them)
@pytest.mark.slow
def test_offline_start_then_peer_appears_delivers_everything_once(
    spool_dir: str,
    peers: Callable[..., LocalPeer],
    make_handler: Callable[..., Tuple[SpoolHandler, logging.Logger]],
    fast_handler_drainer: None,
    built: Events,
) -> None:
    port = free_port()  # nothing listens there yet
    handler, log = make_handler(spool_dir, connection_string=conn_for(port), environment="edge")
    levels = [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL]
    for i in range(200):
        log.log(levels[i % 5], "offline %d", i, extra={"i": i, "user": {"id": i}})
    handler.flush()
    assert len(built) == 200

    assert wait_until(lambda: handler.stats()["drain"]["failures"] >= 2, timeout=10)
    offline = handler.stats()
    assert "ServiceBusConnectionError" in offline["last_error"]
    assert offline["drain"]["delivered"] == 0
    assert offline["pending_records"] >= 200  # nothing acked
    assert offline["oldest_pending_age_s"] is not None
    assert offline["oldest_pending_age_s"] > 0
    assert pending_events(spool_dir) == built

    peer = peers(port=port)
    handler.drainer_wake()
    assert peer.wait_for(200, timeout=15)
    assert wait_until(lambda: handler.stats()["pending_records"] == 0, timeout=5)

    counts = check_delivered(peer.accepted(), built)
    assert set(counts.values()) == {1}  # the first send after the outage took everything
    assert {json.loads(r.body)["LogLevel"] for r in peer.accepted()} == {
        "Debug",
        "Information",
        "Warning",
        "Error",
        "Critical",
    }
    stats = handler.stats()
    # watermarks (sequence numbers of the lane): everything accepted is durable and acked
    assert stats["delivered"] == stats["accepted"] == stats["durable"] >= 200
    assert stats["pending_records"] == 0
    assert stats["oldest_pending_age_s"] is None
    assert stats["last_error"] is None
    assert stats["dropped"] == 0
    assert stats["drain"]["delivered"] == 200  # the drainer's count of accepted events
    assert stats["drain"]["dead_lettered"] == 0
    assert stats["drain"]["last_delivery_unix"] is not None
    assert pending_events(spool_dir) == {}

    handler.close()
    assert_spool_clean(spool_dir)


# ---------------------------------------------------------------------------
# 2. restarts during steady logging


@pytest.mark.slow  # ~9 s; section 3 covers a dropped connection mid-batch
def test_peer_restarted_six_times_during_steady_logging_loses_nothing(
    spool_dir: str,
    peers: Callable[..., LocalPeer],
    make_handler: Callable[..., Tuple[SpoolHandler, logging.Logger]],
    fast_handler_drainer: None,
    built: Events,
) -> None:
    peer = peers()
    handler, log = make_handler(spool_dir, connection_string=peer.connection_string())
    stop = threading.Event()
    logged: List[int] = []

    def app() -> None:
        i = 0
        while not stop.is_set():
            log.info("steady %d", i, extra={"i": i})
            logged.append(i)
            i += 1
            time.sleep(0.004)

    thread = threading.Thread(target=app, name="steady-logger")
    thread.start()
    try:
        for _ in range(6):
            time.sleep(0.35)
            peer.restart(down_for=0.25)
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    handler.flush()
    assert len(built) == len(logged) > 300

    handler.drainer_wake()
    assert wait_until(lambda: set(peer.message_ids()) >= set(built), timeout=20)
    counts = check_delivered(peer.accepted(), built)
    assert sum(counts.values()) >= len(built)
    assert peer.stats()["connections"] >= 3  # the drainer reconnected after restarts
    assert handler.stats()["drain"]["failures"] >= 2
    assert wait_until(lambda: handler.stats()["pending_records"] == 0, timeout=5)
    handler.close()
    assert_spool_clean(spool_dir)


def test_failed_connects_leave_no_socket_open() -> None:
    """A broker that accepts TCP and resets before the AMQP header: every failed send
    closes its socket (the SDK alone leaves it to the garbage collector)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(5)
    port = server.getsockname()[1]

    def reset_each_connection() -> None:
        for _ in range(3):
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.close()

    acceptor = threading.Thread(target=reset_each_connection)
    acceptor.start()
    transport = ServiceBusTransport(
        connection_string=f"Endpoint=sb://127.0.0.1:{port}/;SharedAccessKeyName=k;"
        "SharedAccessKey=v;UseDevelopmentEmulator=true",
        queue_name="q",
        send_timeout_s=5,
    )
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                with pytest.raises(TransientTransportError):
                    transport.send([])
            gc.collect()
    finally:
        transport.close()
        acceptor.join(10)
        server.close()
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert unclosed == []


# ---------------------------------------------------------------------------
# 3. connection closed mid-batch + server busy


# the fast tier: a cut mid-batch (tests/test_amqp_peer.py::test_close_after_drops_...) and
# a re-send with the same MessageIds and bodies (test_kill_9_after_send_before_ack_...)
@pytest.mark.slow
def test_connection_closed_mid_batch_and_30pct_busy_lose_nothing_duplicates_identical(
    spool_dir: str,
    peers: Callable[..., LocalPeer],
    make_handler: Callable[..., Tuple[SpoolHandler, logging.Logger]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # one drainer batch of 30 goes out as 3 SDK batches (deliveries): a failure after the
    # first delivery makes the drainer re-send records the broker already has
    monkeypatch.setattr(servicebus, "MAX_BATCH_MESSAGES", 10)
    handler, log = make_handler(spool_dir, drain=False)
    for i in range(90):
        log.error("faulty %d", i, extra={"i": i, "payload": "p" * (i % 50)})
    handler.flush()
    spooled = spooled_events(spool_dir)
    assert len(spooled) == 90

    accepted: List[AcceptedMessage] = []

    def close_again(rec: AcceptedMessage) -> None:  # on the peer's reactor thread
        accepted.append(rec)
        if len(accepted) == 30:
            peer.close_after = 2  # drop the connection once more, later in the run

    # seed 2: the 1st delivery passes, the 2nd is cut with the connection (close_after=2),
    # then busy rejections follow at random (30 %)
    peer = peers(busy_rate=0.3, close_after=2, seed=2, on_accept=close_again)
    drainer = Drainer.for_writer(
        spool_dir,
        transport_for(peer.connection_string()),
        handler.writer,
        batch_max_records=30,
        **FAST,
    )
    drainer.start()
    try:
        assert wait_until(lambda: set(peer.message_ids()) >= set(spooled), timeout=30)
        assert wait_until(lambda: not pending_events(spool_dir), timeout=5)
    finally:
        drainer.stop()

    counts = check_delivered(peer.accepted(), spooled)
    stats = peer.stats()
    assert stats["rejected_deliveries"] > 0  # server busy happened
    assert stats["dropped_deliveries"] >= 2  # both connection closes happened
    assert stats["connections"] >= 3
    assert max(counts.values()) > 1  # re-sends happened, and each copy was identical
    assert drainer.stats()["failures"] >= stats["rejected_deliveries"] + 2
    assert drainer.stats()["dead_lettered"] == 0
    handler.close()
    assert_spool_clean(spool_dir)


# ---------------------------------------------------------------------------
# 4. kill -9 between send and ack


def _read_lines(stream: Any, out: queue.Queue) -> None:
    for line in stream:
        out.put(line.strip())
    out.put(None)


def _expect_line(lines: queue.Queue, prefix: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {prefix!r} line from the child"
        line = lines.get(timeout=remaining)
        assert line is not None, f"child exited before printing {prefix!r}"
        if line.startswith(prefix):
            return line


def test_kill_9_after_send_before_ack_resends_everything_after_restart(
    spool_dir: str, peers: Callable[..., LocalPeer], tmp_path: Path
) -> None:
    peer = peers()
    stderr_path = tmp_path / "child.stderr"
    with open(stderr_path, "w") as stderr:
        child = subprocess.Popen(
            [
                sys.executable,
                str(CHILD),
                "--spool-dir",
                spool_dir,
                "--connection-string",
                peer.connection_string(),
                "--records",
                "40",
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=clean_env(),
        )
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(child.stdout, lines), daemon=True)
    reader.start()
    try:
        assert _expect_line(lines, "LOGGED", 30) == "LOGGED 40"
        assert _expect_line(lines, "SENT", 30) == "SENT 40"
        assert peer.wait_for(40, timeout=5)  # the broker has them ...
    finally:
        child.send_signal(signal.SIGKILL)  # ... and the app dies before it could ack
        child.wait(10)
        reader.join(5)
        assert child.stdout is not None
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL, stderr_path.read_text()

    spooled = pending_events(spool_dir)  # still pending: the cursor never moved
    assert len(spooled) == 40
    assert set(check_delivered(peer.accepted(), spooled).values()) == {1}

    drainer = Drainer(spool_dir, transport_for(peer.connection_string()), **FAST)
    try:
        assert drainer.drain_until_idle(timeout=15) == 0
    finally:
        drainer.close()
    assert peer.wait_for(80, timeout=5)
    counts = check_delivered(peer.accepted(), spooled)
    assert set(counts.values()) == {2}  # each one re-sent once, same MessageId, same body
    assert drainer.stats()["delivered"] == 40
    assert pending_events(spool_dir) == {}
    assert_spool_clean(spool_dir)


# ---------------------------------------------------------------------------
# 5. authentication failure


def test_cbs_401_keeps_records_pending_and_says_authentication_then_recovers(
    spool_dir: str,
    peers: Callable[..., LocalPeer],
    make_handler: Callable[..., Tuple[SpoolHandler, logging.Logger]],
    fast_handler_drainer: None,
    built: Events,
) -> None:
    peer = peers(auth_fail=True)
    handler, log = make_handler(spool_dir, connection_string=peer.connection_string())
    for i in range(25):
        log.info("auth %d", i, extra={"i": i})
    handler.flush()

    def says_authentication() -> bool:
        return "authentication" in (handler.stats()["last_error"] or "").lower()

    assert wait_until(says_authentication, timeout=15)
    assert wait_until(  # what `cerbispool status` shows meanwhile
        lambda: "authentication" in (spool_status(spool_dir)["last_error"] or "").lower(),
        timeout=2,
    )
    stats = handler.stats()
    assert "ServiceBusAuthenticationError" in stats["last_error"]
    assert stats["drain"]["last_error"] == stats["last_error"]
    assert stats["drain"]["delivered"] == 0
    assert stats["pending_records"] >= 25
    assert stats["oldest_pending_age_s"] is not None
    assert peer.accepted() == []
    assert peer.stats()["cbs_rejected"] >= 1
    assert pending_events(spool_dir) == built  # no data lost while refused

    peer.auth_fail = False
    handler.drainer_wake()
    assert peer.wait_for(25, timeout=15)
    # the cursor moves (pending 0) a moment before the drainer clears last_error
    assert wait_until(
        lambda: handler.stats()["pending_records"] == 0 and handler.stats()["last_error"] is None,
        timeout=5,
    ), handler.stats()
    check_delivered(peer.accepted(), built)
    stats = handler.stats()
    assert stats["last_error"] is None
    assert stats["oldest_pending_age_s"] is None
    handler.close()
    assert verify(spool_dir).valid


@pytest.mark.slow  # test_cbs_401_... checks the status too
def test_status_shows_authentication_error_while_the_drainer_keeps_failing(
    spool_dir: str,
    peers: Callable[..., LocalPeer],
    make_handler: Callable[..., Tuple[SpoolHandler, logging.Logger]],
    fast_handler_drainer: None,
) -> None:
    peer = peers(auth_fail=True)
    handler, log = make_handler(spool_dir, connection_string=peer.connection_string())
    log.info("refused")
    assert wait_until(
        lambda: "authentication" in (handler.stats()["last_error"] or "").lower(), timeout=15
    )
    assert wait_until(
        lambda: "authentication" in (spool_status(spool_dir)["last_error"] or "").lower(),
        timeout=2,
    )


# ---------------------------------------------------------------------------
# 6. oversize event → dead-letter


class MemoryBroker:
    """A MemoryTransport with the peer's 1 MiB limit, read back like a peer."""

    def __init__(self) -> None:
        self.transport = MemoryTransport(max_message_bytes=1024 * 1024)

    def accepted(self) -> List[Any]:
        return [Accepted(QUEUE, m) for m in self.transport.messages]


class Accepted:
    """An OutgoingMessage as check_delivered reads a peer's AcceptedMessage."""

    def __init__(self, entity: str, message: Any) -> None:
        self.entity = entity
        self.message_id = message.message_id
        self.body = message.body
        self.content_type = message.content_type
        self.application_properties = message.application_properties


@pytest.mark.parametrize("broker", ["memory", pytest.param("peer", marks=pytest.mark.slow)])
def test_oversize_event_is_dead_lettered_and_the_rest_flows(
    spool_dir: str,
    peers: Callable[..., LocalPeer],
    make_handler: Callable[..., Tuple[SpoolHandler, logging.Logger]],
    broker: str,
) -> None:
    """The SDK's size refusal ("peer", slow) or a transport's rejection ("memory")."""
    if broker == "peer":
        peer: Any = peers()  # max message size 1 MiB

        def transport() -> Any:
            return transport_for(peer.connection_string())
    else:
        peer = MemoryBroker()

        def transport() -> Any:
            return peer.transport

    handler, log = make_handler(spool_dir, drain=False)
    for i in range(5):
        log.info("before %d", i, extra={"i": i})
    log.info("huge", extra={"blob": "x" * (2 * 1024 * 1024)})
    for i in range(5):
        log.info("after %d", i, extra={"i": i})
    handler.flush()
    spooled = spooled_events(spool_dir)
    [huge_id] = [k for k, v in spooled.items() if v["RawPayload"]["message"] == "huge"]
    huge = spooled.pop(huge_id)
    huge_seq = next(
        r.seq
        for b in SpoolReader(spool_dir, remove_idle_lanes=False).batches()
        for r in b.events()
        if r.value()["LogId"] == huge_id
    )

    drainer = Drainer.for_writer(spool_dir, transport(), handler.writer, **FAST)
    try:
        assert drainer.drain_until_idle(timeout=20) == 0
    finally:
        drainer.close()

    counts = check_delivered(peer.accepted(), spooled)  # the 10 others, not the huge one
    assert huge_id not in counts
    assert drainer.stats()["dead_lettered"] == 1
    files = sorted(os.listdir(os.path.join(spool_dir, DEADLETTER_DIR)))
    assert files == [f"{handler.writer.lane:04d}-{huge_seq:020d}.json"]
    with open(os.path.join(spool_dir, DEADLETTER_DIR, files[0])) as fh:
        doc = json.load(fh)
    assert doc["message_id"] == huge_id
    assert doc["seq"] == huge_seq
    assert json.loads(doc["body"]) == huge
    assert ("limit" if broker == "peer" else "max_message_bytes") in doc["reason"]

    log.info("later")  # the queue is not blocked behind it
    handler.flush()
    later = pending_events(spool_dir)
    assert len(later) == 1
    drainer = Drainer.for_writer(spool_dir, transport(), handler.writer, **FAST)
    try:
        assert drainer.drain_until_idle(timeout=10) == 0
    finally:
        drainer.close()
    check_delivered(peer.accepted(), {**spooled, **later})

    handler.close()
    assert_spool_clean(spool_dir)
    report = verify(spool_dir)
    dead = [g for g in report.gaps if g.get("reason") == "dead-letter"]
    assert len(dead) == 1
    assert dead[0]["first_seq"] == dead[0]["last_seq"] == huge_seq
    assert dead[0]["count"] == 1


def test_a_handler_whose_spool_opened_late_gets_its_drainers_gaps_in_its_own_lane(
    spool_dir: str,
    peers: Callable[..., LocalPeer],
    make_handler: Callable[..., Tuple[SpoolHandler, logging.Logger]],
    fast_handler_drainer: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The drainer is built while no lane can be opened (``lanes`` is a file); the spool
    opens on a later emit. A dead letter's gap then goes into the handler's live lane:
    the process never holds a second lane."""
    monkeypatch.setattr(handler_module, "_REOPEN_EVERY_S", 0.0)  # retry the open at once
    blocker = Path(spool_dir, "lanes")
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a directory: no lane can be opened yet")
    peer = peers()  # max message size 1 MiB
    handler, log = make_handler(spool_dir, connection_string=peer.connection_string())
    assert handler.writer is None
    blocker.unlink()
    log.info("huge", extra={"blob": "x" * (2 * 1024 * 1024)})  # opens the spool
    log.info("after")
    handler.flush()
    writer = handler.writer
    assert writer is not None
    assert wait_until(lambda: handler.stats()["drain"]["dead_lettered"] == 1, timeout=15)
    assert wait_until(lambda: handler.stats()["pending_records"] == 0, timeout=10)
    assert list_lanes(spool_dir) == [writer.lane]  # no lane of the drainer's own
    handler.close()
    assert list_lanes(spool_dir) in ([], [writer.lane])
    report = verify(spool_dir)
    assert report.valid, report.problems
    assert dead_letter_gaps(spool_dir) == {writer.lane: [(writer.lane, 2)]}


def test_a_gap_recorded_while_the_handlers_spool_is_not_open_is_written_once_it_opens(
    spool_dir: str,
    peers: Callable[..., LocalPeer],
    make_handler: Callable[..., Tuple[SpoolHandler, logging.Logger]],
    fast_handler_drainer: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another writer holds lane 0 and every other lane is unusable (a foreign file in it):
    the handler cannot open its spool, its drainer ships lane 0 and dead-letters a record
    there. The gap is owed to the handler and lands in the handler's lane when it opens."""
    monkeypatch.setattr(handler_module, "_REOPEN_EVERY_S", 0.0)
    other = SpoolWriter(spool_dir)
    try:
        other.append({"LogId": "too-big", "blob": "x" * (2 * 1024 * 1024)})
        other.flush()
        for lane in range(1, 256):
            os.makedirs(lane_dir(spool_dir, lane))
            Path(lane_dir(spool_dir, lane), "foreign").write_text("not a spool file")
        peer = peers()  # max message size 1 MiB
        handler, log = make_handler(spool_dir, connection_string=peer.connection_string())
        assert handler.writer is None
        assert wait_until(lambda: handler.stats()["drain"]["dead_lettered"] == 1, timeout=15)
        Path(lane_dir(spool_dir, 1), "foreign").unlink()  # lane 1 is usable now
        # the drainer may be looking at the now empty lane 1 (its lock, briefly): the
        # handler retries its open on the next record
        assert wait_until(
            lambda: log.info("opens the spool") or handler.writer is not None, timeout=10
        )
        writer = handler.writer
        assert writer is not None and writer.lane == 1
        handler.close()
    finally:
        other.close()
    assert dead_letter_gaps(spool_dir) == {1: [(0, 2)]}  # lane 0's seq 2, noted in lane 1
    assert all(os.listdir(lane_dir(spool_dir, n)) == ["foreign"] for n in range(2, 256))


# ---------------------------------------------------------------------------
# 7. cerbispool drain --follow


def test_cli_drain_follow_ships_another_process_records_within_a_second_and_exits_on_sigterm(
    tmp_path: Path,
    peers: Callable[..., LocalPeer],
    make_handler: Callable[..., Tuple[SpoolHandler, logging.Logger]],
    built: Events,
) -> None:
    peer = peers()
    spool_dir = str(tmp_path / "followed")
    os.makedirs(os.path.join(spool_dir, "locks"))  # a new, empty spool: drain never makes one
    follower = subprocess.Popen(
        [
            *CLI,
            "drain",
            spool_dir,
            "--follow",
            "--connection-string",
            peer.connection_string(),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        # its first round publishes drain-status.json: it is running and watching
        status_file = os.path.join(spool_dir, "drain-status.json")
        assert wait_until(lambda: os.path.exists(status_file), timeout=20)

        handler, log = make_handler(spool_dir, drain=False)
        log.warning("first")  # the follower connects on its first send (cold start)
        assert peer.wait_for(1, timeout=10)
        t0 = time.monotonic()
        for i in range(50):
            log.warning("followed %d", i, extra={"i": i})
        handler.flush()
        assert peer.wait_for(51, timeout=10)
        picked_up_s = time.monotonic() - t0
        assert picked_up_s < 1.0, f"picked up after {picked_up_s:.2f}s"
        check_delivered(peer.accepted(), built)
        assert wait_until(lambda: not pending_events(spool_dir), timeout=5)

        follower.send_signal(signal.SIGTERM)
        out, err = follower.communicate(timeout=15)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate(timeout=5)
    assert follower.returncode == 0, err
    summary = last_json_line(out)
    assert summary["pending"] == 0
    assert summary["delivered"] == 51
    assert summary["dead_lettered"] == 0
    assert summary["last_error"] is None
    assert isinstance(summary["seconds"], float)


# ---------------------------------------------------------------------------
# 8. CLI


def _closed_spool(
    make_handler: Callable[..., Tuple[SpoolHandler, logging.Logger]], d: str, n: int
) -> Events:
    handler, log = make_handler(d, drain=False)
    for i in range(n):
        log.info("cli %d", i, extra={"i": i})
    handler.close()
    return spooled_events(d)


def test_cli_drain_exits_2_without_a_connection_and_0_with_nothing_pending(
    spool_dir: str,
    tmp_path: Path,
    make_handler: Callable[..., Tuple[SpoolHandler, logging.Logger]],
) -> None:
    """In-process; the real-process run against a peer is the next test (slow)."""
    _closed_spool(make_handler, spool_dir, 3)
    no_conn = invoke("drain", spool_dir, "--json")
    assert no_conn.code == 2
    assert "connection string" in no_conn.err
    assert len(pending_events(spool_dir)) == 3

    empty = tmp_path / "empty"
    (empty / "locks").mkdir(parents=True)
    done = invoke("drain", str(empty), "--connection-string", conn_for(free_port()), "--json")
    assert done.code == 0, done.err
    assert last_json_line(done.out)["pending"] == 0


# the fast tier: exit 2 and 0 above, exit 1 on a timeout with records left
# (tests/test_cli.py::test_drain_timeout_is_honoured_within_a_second)
@pytest.mark.slow
def test_cli_drain_exit_codes_2_without_connection_1_when_peer_down_0_when_all_shipped(
    spool_dir: str,
    peers: Callable[..., LocalPeer],
    make_handler: Callable[..., Tuple[SpoolHandler, logging.Logger]],
) -> None:
    spooled = _closed_spool(make_handler, spool_dir, 12)

    no_conn = cli("drain", spool_dir, "--json")
    assert no_conn.returncode == 2
    assert "connection string" in no_conn.stderr

    port = free_port()
    t0 = time.monotonic()
    down = cli(
        "drain", spool_dir, "--connection-string", conn_for(port), "--timeout", "1", "--json"
    )
    assert down.returncode == 1, down.stderr
    assert time.monotonic() - t0 < 20
    summary = last_json_line(down.stdout)
    assert summary["pending"] == 12
    assert summary["delivered"] == 0
    assert "ServiceBusConnectionError" in summary["last_error"]
    assert pending_events(spool_dir) == spooled

    peer = peers(port=port)
    up = cli("drain", spool_dir, "--connection-string", conn_for(port), "--json")
    assert up.returncode == 0, up.stderr
    summary = last_json_line(up.stdout)
    assert summary["pending"] == 0
    assert summary["delivered"] == 12
    assert summary["last_error"] is None
    counts = check_delivered(peer.accepted(), spooled)
    assert set(counts.values()) == {1}

    again = cli("drain", spool_dir, "--connection-string", conn_for(port), "--json")
    assert again.returncode == 0  # nothing left
    assert last_json_line(again.stdout)["delivered"] == 0
    assert len(peer.accepted()) == 12


def test_cli_status_json_reports_pending_records_bytes_age_and_lanes(
    spool_dir: str,
    make_handler: Callable[..., Tuple[SpoolHandler, logging.Logger]],
) -> None:
    handler, log = make_handler(spool_dir, drain=False)
    for i in range(7):
        log.info("status %d", i)
    handler.flush()

    time.sleep(0.01)  # the oldest pending age is > 0 at a clock of 1 ms or coarser
    res = invoke("status", spool_dir, "--json")
    assert res.code == 0, res.err
    doc = json.loads(res.out)
    assert doc["spool_dir"] == os.path.abspath(spool_dir)
    assert doc["pending_records"] >= 7
    assert doc["pending_bytes"] > 0
    assert doc["oldest_pending_age_s"] > 0
    assert doc["last_error"] is None
    [lane] = doc["lanes"]
    assert lane["lane"] == handler.writer.lane
    assert lane["live"] is True
    assert lane["acked_seq"] == 0
    assert lane["pending_records"] == doc["pending_records"]
    assert lane["segments"] >= 1
    assert lane["pending_bytes"] == doc["pending_bytes"]
    # nothing acknowledged yet: every byte but the segment headers is pending
    assert lane["bytes"] == doc["spool_bytes"] == doc["pending_bytes"] + 68 * lane["segments"]

    drainer = Drainer.for_writer(spool_dir, MemoryTransport(), handler.writer, **FAST)
    try:
        assert drainer.drain_until_idle(timeout=10) == 0
    finally:
        drainer.close()
    doc = json.loads(invoke("status", spool_dir, "--json").out)
    assert doc["pending_records"] == 0
    assert doc["pending_bytes"] == 0
    assert doc["oldest_pending_age_s"] is None
    assert doc["last_error"] is None
    assert doc["last_delivery_unix"] is not None
    assert doc["lanes"][0]["acked_seq"] == doc["lanes"][0]["last_seq"]


def test_status_pending_records_counts_pending_events_only(
    spool_dir: str, make_handler: Callable[..., Tuple[SpoolHandler, logging.Logger]]
) -> None:
    spooled = _closed_spool(make_handler, spool_dir, 5)
    assert verify(spool_dir).pending == len(spooled) == 5
    assert spool_status(spool_dir)["pending_records"] == 5


def test_cli_tail_prints_pending_only_and_all_includes_delivered_still_on_disk(
    spool_dir: str,
    make_handler: Callable[..., Tuple[SpoolHandler, logging.Logger]],
) -> None:
    peer = MemoryBroker()
    handler, log = make_handler(spool_dir, drain=False)
    for i in range(3):
        log.info("shipped %d", i)
    handler.flush()
    shipped = pending_events(spool_dir)
    drainer = Drainer.for_writer(spool_dir, peer.transport, handler.writer, **FAST)
    try:
        assert drainer.drain_until_idle(timeout=10) == 0
    finally:
        drainer.close()
    check_delivered(peer.accepted(), shipped)
    for i in range(2):
        log.info("waiting %d", i)
    handler.close()
    waiting = pending_events(spool_dir)
    assert len(waiting) == 2

    res = invoke("tail", spool_dir)
    assert res.code == 0, res.err
    lines = [json.loads(ln) for ln in res.out.splitlines()]
    assert lines == list(waiting.values())  # pending only, in order

    res = invoke("tail", spool_dir, "--all")
    assert res.code == 0, res.err
    lines = [json.loads(ln) for ln in res.out.splitlines()]
    assert lines == [*shipped.values(), *waiting.values()]


def test_cli_verify_replay_to_file_writes_pending_events_then_none_are_pending(
    spool_dir: str,
    tmp_path: Path,
    make_handler: Callable[..., Tuple[SpoolHandler, logging.Logger]],
) -> None:
    spooled = _closed_spool(make_handler, spool_dir, 9)
    out_file = tmp_path / "replayed.jsonl"

    res = invoke("verify", spool_dir, "--json", "--replay", "--to", str(out_file))
    assert res.code == 0, res.err
    doc = json.loads(res.out)
    assert doc["valid"] is True
    assert doc["pending"] == 9  # what verify saw before the replay
    assert doc["replayed"] == 9
    lines = [json.loads(ln) for ln in out_file.read_text("utf-8").splitlines()]
    assert lines == list(spooled.values())

    assert pending_events(spool_dir) == {}
    res = invoke("verify", spool_dir, "--json")
    assert res.code == 0, res.err
    assert json.loads(res.out)["pending"] == 0
    assert invoke("tail", spool_dir).out == ""
    assert json.loads(invoke("status", spool_dir, "--json").out)["pending_records"] == 0


def test_the_error_has_ended_by_the_time_the_records_leave_pending(spool_dir: str) -> None:
    # whoever sees the records acknowledged (pending 0) must not still see the old error
    # nor an old delivered count: handler.stats() reads them apart, and read them between
    # the ack and the stats update (test_offline_start_then_peer_appears_..., under load)
    with SpoolWriter(spool_dir) as writer:
        for i in range(5):
            writer.append({"LogId": f"id-{i}", "n": i})
    transport = MemoryTransport()
    transport.fail_next = 1
    seen: List[Tuple[Optional[str], int]] = []
    drainer = Drainer(
        spool_dir,
        transport,
        space_freed=lambda: seen.append(
            (drainer.stats()["last_error"], drainer.stats()["delivered"])
        ),
        backoff_base_s=0.001,
        backoff_max_s=0.001,
    )
    try:
        drainer.drain_until_idle(timeout=10)
    finally:
        drainer.close()
    assert transport.sends == 2  # one failure, then the batch
    assert drainer.stats()["failures"] == 1
    # at the ack, the transport's error had already ended and the 5 were counted
    assert seen == [(None, 5)]
