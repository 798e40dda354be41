"""The local AMQP peer (cerbistream_spool.testing) against the real azure-servicebus SDK.

Every test starts its own peer on a free 127.0.0.1 port. Clients use
``retry_total=0`` unless a test is about the SDK's own retries, and every
send has a ``timeout=`` so nothing can hang. The old name, ``tools.amqp_peer``,
is a re-export kept for checkouts; the last tests pin that it stays one.

Senders here run without the SDK's keep-alive thread (``keep_alive=0``), whose
``close()`` otherwise waits out a 1 s sleep. The fast tier keeps one send with
every recorded field, the handler end to end and a connection cut mid-batch (an
authentication failure: tests/test_drain.py); the other SDK runs are ``slow``.
"""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

pytest.importorskip("proton")
servicebus = pytest.importorskip("azure.servicebus")
sb_exceptions = pytest.importorskip("azure.servicebus.exceptions")

from azure.servicebus import ServiceBusClient, ServiceBusMessage  # noqa: E402
from proton import Message  # noqa: E402

from cerbistream_spool import SpoolHandler  # noqa: E402
from cerbistream_spool.testing import LocalPeer, local_peer, split_batch  # noqa: E402
from cerbistream_spool.testing.cli import apply_command, record_to_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

QUEUE = "cerbishield.log-scoring"
SEND_TIMEOUT = 5


@pytest.fixture
def peer() -> Iterator[LocalPeer]:
    with LocalPeer.start() as p:
        yield p


def make_client(peer: LocalPeer, **kwargs: Any) -> ServiceBusClient:
    kwargs.setdefault("retry_total", 0)
    return ServiceBusClient.from_connection_string(peer.connection_string(), **kwargs)


def open_sender(client: ServiceBusClient) -> Any:
    """A sender to QUEUE without the keep-alive thread (its close() sleeps up to 1 s)."""
    return client.get_queue_sender(QUEUE, keep_alive=0)


def contract_message(i: int = 0) -> ServiceBusMessage:
    """A message shaped like docs/CONTRACT.md §2."""
    return ServiceBusMessage(
        f'{{"LogId": "id-{i:04d}", "n": {i}}}'.encode(),
        content_type="application/json",
        message_id=f"id-{i:04d}",
        application_properties={
            "TenantId": "tenant-a",
            "AppName": "app-b",
            "LogLevel": "Information",
            "SchemaVersion": "1.0",
        },
    )


def send_one(
    peer: LocalPeer, msg: Any, *, timeout: float = SEND_TIMEOUT, **client_kwargs: Any
) -> None:
    """Open a client, send ``msg`` (a message or a list = one batch), close."""
    with make_client(peer, **client_kwargs) as client, open_sender(client) as sender:
        sender.send_messages(msg, timeout=timeout)


# ---------------------------------------------------------------------------
# happy paths


def test_single_send_is_recorded(peer: LocalPeer) -> None:
    send_one(peer, contract_message(7))

    assert peer.wait_for(1, timeout=5)
    [rec] = peer.accepted()
    assert rec.entity == QUEUE
    assert rec.message_id == "id-0007"
    assert rec.body == b'{"LogId": "id-0007", "n": 7}'
    assert rec.content_type == "application/json"
    assert rec.application_properties == {
        "TenantId": "tenant-a",
        "AppName": "app-b",
        "LogLevel": "Information",
        "SchemaVersion": "1.0",
    }
    assert rec.batch_index is None
    assert peer.message_ids() == ["id-0007"]
    assert peer.entities() == [QUEUE]
    stats = peer.stats()
    assert stats["accepted_deliveries"] == 1
    assert stats["accepted_messages"] == 1
    assert stats["rejected_deliveries"] == 0
    assert stats["cbs_requests"] >= 1

    peer.clear()
    assert peer.accepted() == []
    assert peer.stats()["accepted_messages"] == 0


@pytest.mark.slow
def test_batch_of_200_recorded_in_order(peer: LocalPeer) -> None:
    with make_client(peer) as client, open_sender(client) as sender:
        batch = sender.create_message_batch()
        for i in range(200):
            batch.add_message(contract_message(i))
        sender.send_messages(batch, timeout=SEND_TIMEOUT)

    assert peer.wait_for(200, timeout=5)
    records = peer.accepted()
    assert [r.message_id for r in records] == [f"id-{i:04d}" for i in range(200)]
    assert [r.batch_index for r in records] == list(range(200))
    assert {r.batch_size for r in records} == {200}
    assert len({r.delivery_seq for r in records}) == 1  # one delivery carried them all
    assert records[123].body == b'{"LogId": "id-0123", "n": 123}'
    assert all(r.content_type == "application/json" for r in records)
    assert all(r.application_properties["TenantId"] == "tenant-a" for r in records)
    assert peer.stats()["accepted_deliveries"] == 1
    assert peer.stats()["accepted_messages"] == 200


def test_context_manager_helpers_and_entity_path() -> None:
    with local_peer(seed=3) as p:
        assert p.running
        assert p.port > 0
        cs = p.connection_string("q1")
        assert cs.endswith(";EntityPath=q1")
        assert f"sb://127.0.0.1:{p.port};" in cs
        assert "UseDevelopmentEmulator=true" in cs
    assert not p.running
    p.stop()  # idempotent


# ---------------------------------------------------------------------------
# faults


# the fast tier: tests/test_drain.py::test_cbs_401_keeps_records_pending_and_says_... (the
# same switch, on and off at runtime, through the drainer)
@pytest.mark.slow
def test_auth_fail_raises_authentication_error_then_recovers(peer: LocalPeer) -> None:
    peer.auth_fail = True
    t0 = time.monotonic()
    with pytest.raises(sb_exceptions.ServiceBusAuthenticationError):
        send_one(peer, contract_message())
    assert time.monotonic() - t0 < SEND_TIMEOUT
    assert peer.stats()["cbs_rejected"] == 1
    assert peer.accepted() == []

    peer.auth_fail = False  # switchable at runtime
    send_one(peer, contract_message(1))
    assert peer.wait_for(1, timeout=5)


@pytest.mark.slow
def test_busy_rate_one_raises_server_busy(peer: LocalPeer) -> None:
    peer.busy_rate = 1.0
    with make_client(peer) as client, open_sender(client) as sender:
        with pytest.raises(sb_exceptions.ServiceBusServerBusyError):
            sender.send_messages(contract_message(), timeout=SEND_TIMEOUT)
        assert peer.stats()["rejected_deliveries"] == 1
        assert peer.accepted() == []

        peer.busy_rate = 0.0  # same sender works again once the broker is not busy
        sender.send_messages(contract_message(1), timeout=SEND_TIMEOUT)
    assert peer.wait_for(1, timeout=5)
    assert peer.message_ids() == ["id-0001"]


def test_close_after_drops_connection_mid_batch(peer: LocalPeer) -> None:
    peer.close_after = 2  # 1st delivery accepted; the 2nd is dropped with the connection
    with make_client(peer) as client, open_sender(client) as sender:
        first = sender.create_message_batch()
        for i in range(50):
            first.add_message(contract_message(i))
        sender.send_messages(first, timeout=SEND_TIMEOUT)

        second = sender.create_message_batch()
        for i in range(50, 100):
            second.add_message(contract_message(i))
        with pytest.raises(sb_exceptions.ServiceBusConnectionError):
            sender.send_messages(second, timeout=SEND_TIMEOUT)

    assert peer.message_ids() == [f"id-{i:04d}" for i in range(50)]
    stats = peer.stats()
    assert stats["dropped_deliveries"] == 1
    assert stats["accepted_deliveries"] == 1
    assert peer.close_after is None  # one-shot


@pytest.mark.slow
def test_close_after_with_sdk_retries_resends(peer: LocalPeer) -> None:
    peer.close_after = 1
    batch = [contract_message(i) for i in range(10)]
    send_one(peer, batch, timeout=15, retry_total=2, retry_backoff_factor=0.05)
    assert peer.wait_for(10, timeout=5)
    assert peer.message_ids() == [f"id-{i:04d}" for i in range(10)]
    stats = peer.stats()
    assert stats["dropped_deliveries"] == 1
    assert stats["connections"] == 2  # the SDK reconnected and resent the whole batch


# The SDK (7.15, pyamqp) leaks its socket when the server cuts TCP under it;
# that ResourceWarning is the SDK's, not the peer's.
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")
def test_close_after_abort_cuts_tcp(peer: LocalPeer) -> None:
    peer.close_after = 1
    peer.close_abort = True
    with pytest.raises(sb_exceptions.ServiceBusConnectionError):
        send_one(peer, contract_message())
    assert peer.accepted() == []
    assert peer.stats()["dropped_deliveries"] == 1
    gc.collect()  # collect the SDK's leaked socket while the filter applies


@pytest.mark.slow
def test_settle_delay_makes_send_time_out(peer: LocalPeer) -> None:
    peer.settle_delay = 3.0
    t0 = time.monotonic()
    with pytest.raises(sb_exceptions.OperationTimeoutError):
        send_one(peer, contract_message(), timeout=1)
    assert time.monotonic() - t0 < 5
    assert peer.stats()["deliveries"] == 1


@pytest.mark.slow
def test_stop_start_same_port(peer: LocalPeer) -> None:
    port = peer.port
    with make_client(peer) as client, open_sender(client) as sender:
        sender.send_messages(contract_message(0), timeout=SEND_TIMEOUT)

        t0 = time.monotonic()
        peer.stop()  # the client is still connected: it gets an AMQP close
        assert time.monotonic() - t0 < 2
        assert not peer.running
        with pytest.raises(sb_exceptions.ServiceBusConnectionError):
            sender.send_messages(contract_message(1), timeout=SEND_TIMEOUT)

        peer.start()
        assert peer.port == port
        # the SDK reopens its handler on the next send, even with retry_total=0
        sender.send_messages(contract_message(2), timeout=SEND_TIMEOUT)

    send_one(peer, contract_message(3))  # and a brand-new client works too
    assert peer.wait_for(3, timeout=5)
    assert peer.message_ids() == ["id-0000", "id-0002", "id-0003"]
    assert peer.stats()["connections"] == 3


def test_taken_port_raises_without_leaking(peer: LocalPeer) -> None:
    with pytest.raises(OSError):
        LocalPeer(peer.port).start()
    gc.collect()  # a leaked listener socket would fail the run (filterwarnings=error)


def test_fault_switch_validation() -> None:
    p = LocalPeer()
    with pytest.raises(ValueError):
        p.busy_rate = 1.5
    with pytest.raises(ValueError):
        p.close_after = 0
    with pytest.raises(ValueError):
        p.settle_delay = -1
    with pytest.raises(RuntimeError):
        p.connection_string()  # no port before start()


# ---------------------------------------------------------------------------
# wire helpers and CLI


def test_split_batch_rejects_non_batches() -> None:
    single = Message(id="x", body=b"\x00\x53\x75\xa0\x00")  # body looks like a section
    encoded = single.encode()
    assert split_batch(encoded) is None
    assert split_batch(b"") is None
    assert split_batch(b"\x00\x53\x75\xb0\xff\xff\xff\xff") is None  # truncated

    inner = [Message(id=f"m{i}", body=b"abc").encode() for i in range(3)]
    payload = b"".join(b"\x00\x53\x75\xa0" + bytes([len(m)]) + m for m in inner)
    assert split_batch(payload) == inner


def test_cli_helpers(peer: LocalPeer) -> None:
    assert apply_command(peer, "busy_rate 0.25") == "busy_rate = 0.25"
    assert peer.busy_rate == 0.25
    assert apply_command(peer, "close-after 3") == "close_after = 3"
    assert apply_command(peer, "close_after off") == "close_after = None"
    assert apply_command(peer, "auth_fail on") == "auth_fail = True"
    assert apply_command(peer, "settle_delay x").startswith("error:")
    assert apply_command(peer, "bogus").startswith("unknown command")
    assert '"deliveries": 0' in apply_command(peer, "stats")


def test_cli_prints_connection_string_and_json_lines(peer: LocalPeer, tmp_path: Path) -> None:
    send_one(peer, contract_message(5))
    assert peer.wait_for(1, timeout=5)
    line = record_to_json(peer.accepted()[0])
    assert '"message_id": "id-0005"' in line
    assert '"body": "{\\"LogId\\": \\"id-0005\\", \\"n\\": 5}"' in line

    proc = subprocess.run(
        [sys.executable, "-m", "cerbistream_spool.testing", "--port", "0", "--duration", "0.2"],
        cwd=tmp_path,  # installed: no checkout on the path
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("Endpoint=sb://127.0.0.1:")
    assert first.endswith("UseDevelopmentEmulator=true")
    assert "NOT a production broker" in proc.stderr


# ---------------------------------------------------------------------------
# the public testing API and the old name


def test_handler_ships_to_the_peer_and_events_decodes_them(tmp_path: Path) -> None:
    """What a user's test does: point SpoolHandler at the peer, log, read the events."""
    with LocalPeer.start() as peer:
        handler = SpoolHandler(
            str(tmp_path / "spool"),
            tenant_id="t",
            app_name="my-app",
            governance_config_path=str(REPO / "cerbi_governance.json"),
            connection_string=peer.connection_string(),
        )
        log = logging.getLogger("test_amqp_peer.app")
        log.propagate = False
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        try:
            log.info("signed in", extra={"user_id": "7", "password": "hunter2"})
            assert peer.wait_for(1, timeout=30)
        finally:
            log.removeHandler(handler)
            handler.close()
        [event] = peer.events()
    assert event["AppName"] == "my-app"
    assert event["LogId"] == peer.message_ids()[0]
    assert [v["RuleId"] for v in event["Violations"]] == ["SEC-001"]
    assert b"hunter2" not in peer.accepted()[0].body


@pytest.mark.slow
def test_events_skips_bodies_that_are_not_json_objects(peer: LocalPeer) -> None:
    send_one(peer, [ServiceBusMessage(b"not json"), ServiceBusMessage(b"[1]"), contract_message(1)])
    assert peer.wait_for(3, timeout=5)
    assert peer.events() == [{"LogId": "id-0001", "n": 1}]


def test_tools_amqp_peer_is_the_same_peer() -> None:
    """Tests, tools and the demo of a checkout import tools.amqp_peer: the same objects."""
    import cerbistream_spool.testing as testing  # noqa: PLC0415
    import cerbistream_spool.testing.peer as peer_module  # noqa: PLC0415
    import tools.amqp_peer  # noqa: PLC0415
    import tools.amqp_peer.__main__ as old_main  # noqa: PLC0415
    import tools.amqp_peer.peer as old_peer  # noqa: PLC0415

    for name in testing.__all__:
        assert getattr(tools.amqp_peer, name) is getattr(testing, name)
    assert old_peer.LocalPeer is peer_module.LocalPeer
    assert old_peer.local_peer is peer_module.local_peer
    assert old_main.apply_command is apply_command


@pytest.mark.slow  # the fast tier: test_tools_amqp_peer_is_the_same_peer (the same main)
def test_python_m_tools_amqp_peer_still_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tools.amqp_peer", "--port", "0", "--duration", "0.2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Endpoint=sb://127.0.0.1:")


def test_without_proton_the_import_error_names_the_extra(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['proton'] = None\n"
        "try:\n    import cerbistream_spool.testing\n"
        "except ImportError as exc:\n    print(exc)\n"
        "import cerbistream_spool; print('core', cerbistream_spool.SpoolHandler.__name__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "pip install 'cerbistream_spool[testing]'" in proc.stdout
    assert "core SpoolHandler" in proc.stdout  # the library itself never needs proton
