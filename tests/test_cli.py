"""`cerbispool` as an operator meets it: the real CLI in a subprocess, no terminal.

Commands run with stdin closed and stdout a pipe. Assertions are on exit
codes, stderr lines and elapsed time: each command must end (within --timeout,
within a second of SIGINT/SIGTERM, at once on an error that retrying cannot
fix), say why in one line, and never follow a planted symlink or make a spool
where none was. Brokers are the local AMQP peer (tools/amqp_peer) or a loopback
socket that accepts TCP and never answers. Tests of arguments, messages and exit
codes alone run the same command in this process (``inproc``, tests/clikit.py);
every command keeps a real-process test, and signals, timeouts and ``python -m``
are tested in real processes only.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

pytest.importorskip("proton")
pytest.importorskip("azure.servicebus")

from azure.servicebus.exceptions import (
    MessagingEntityNotFoundError,
    ServiceBusAuthenticationError,
    ServiceBusConnectionError,
)
from clikit import invoke
from spoolkit import wait_until

from cerbistream_spool import SpoolHandler
from cerbistream_spool.diagnostics import Reporter
from cerbistream_spool.drain import Drainer
from cerbistream_spool.errors import PermanentTransportError, TransientTransportError
from cerbistream_spool.spool.cursor import Cursor, read_cursor, write_cursor
from cerbistream_spool.spool.fsio import sweep_temp_files
from cerbistream_spool.status import STATUS_FILE, read_drain_status, write_drain_status
from cerbistream_spool.transports.base import OutgoingMessage
from cerbistream_spool.transports.jsonl import JsonlTransport
from cerbistream_spool.transports.memory import MemoryTransport
from cerbistream_spool.transports.servicebus import AUTH_CONFIRM_AFTER, ServiceBusTransport
from tools.amqp_peer import LocalPeer

CLI = [sys.executable, "-m", "cerbistream_spool.cli"]
REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------
# helpers


def conn_for(port: int) -> str:
    return (
        f"Endpoint=sb://127.0.0.1:{port};SharedAccessKeyName=k;SharedAccessKey=v;"
        "UseDevelopmentEmulator=true"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def env() -> Dict[str, str]:
    out = dict(os.environ)
    out.pop("CERBISTREAM_SERVICEBUS_CONNECTION", None)
    out.pop("CERBISTREAM_SPOOL_KEY", None)
    out["PYTHONPATH"] = str(REPO)
    return out


def start(*args: str, umask: Optional[int] = None) -> subprocess.Popen[str]:
    """The CLI with no terminal: stdin closed, stdout and stderr pipes."""
    return subprocess.Popen(
        [*CLI, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
        umask=-1 if umask is None else umask,
    )


def run(
    *args: str, timeout: float = 60, umask: Optional[int] = None
) -> Tuple[int, str, str, float]:
    """(exit code, stdout, stderr, wall seconds)."""
    t0 = time.monotonic()
    proc = start(*args, umask=umask)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err, time.monotonic() - t0


def inproc(*args: str) -> Tuple[int, str, str, float]:
    """``run``'s result for the command run in this process (tests/clikit.py)."""
    t0 = time.monotonic()
    ran = invoke(*args)
    return ran.code, ran.out, ran.err, time.monotonic() - t0


def summary_of(out: str) -> Dict[str, Any]:
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert lines, "no summary printed"
    doc = json.loads(lines[-1])
    assert isinstance(doc, dict)
    return doc


def make_spool(spool_dir: str, n: int = 5) -> None:
    handler = SpoolHandler(spool_dir, tenant_id="t", app_name="a", drain=False)
    logger = logging.getLogger(f"test_cli.{id(handler)}")
    logger.propagate = False
    logger.handlers = [handler]
    for i in range(n):
        logger.warning("cli %d", i)
    handler.close()


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(autouse=True)
def _no_connection_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CERBISTREAM_SERVICEBUS_CONNECTION", raising=False)
    monkeypatch.delenv("CERBISTREAM_SPOOL_KEY", raising=False)


@pytest.fixture
def spool(tmp_path: Path) -> str:
    d = str(tmp_path / "spool")
    make_spool(d)
    return d


class SilentListener:
    """A loopback port that accepts TCP connections and never sends a byte; ``greeted`` is
    set once a client sent its first bytes (the AMQP header) and so waits for a reply."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.server.settimeout(0.1)
        self.port = int(self.server.getsockname()[1])
        self.greeted = threading.Event()
        self.held: List[socket.socket] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            self.held.append(conn)
            conn.settimeout(5)
            with contextlib.suppress(OSError):
                if conn.recv(8):
                    self.greeted.set()

    def close(self) -> None:
        self.done.set()
        self.thread.join(10)
        for conn in self.held:
            conn.close()
        self.server.close()


@pytest.fixture
def silent_listener() -> Iterator[SilentListener]:
    listener = SilentListener()
    yield listener
    listener.close()


@pytest.fixture
def silent_port(silent_listener: SilentListener) -> int:
    """A loopback port that accepts TCP connections and never sends a byte."""
    return silent_listener.port


@pytest.fixture
def peer() -> Iterator[LocalPeer]:
    started = LocalPeer.start()
    yield started
    started.stop()


# ---------------------------------------------------------------------------
# 2. temp files and modes


def test_cursor_and_status_temp_files_never_follow_a_planted_symlink(tmp_path: Path) -> None:
    lane = tmp_path / "lane"
    lane.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    # the old fixed names, planted as links to a file the attacker wants overwritten
    (lane / "cursor.tmp").symlink_to(victim)
    (tmp_path / f"{STATUS_FILE}.tmp").symlink_to(victim)

    write_cursor(str(lane), Cursor(0, 7, b"\x01" * 32))
    write_drain_status(str(tmp_path), {"delivered": 3})

    assert victim.read_bytes() == b"precious"
    assert read_cursor(str(lane), 0) == Cursor(0, 7, b"\x01" * 32)
    assert read_drain_status(str(tmp_path)) == {"delivered": 3}
    assert (lane / "cursor").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / STATUS_FILE).stat().st_mode & 0o777 == 0o600
    assert not [n for n in os.listdir(lane) if n.startswith("cursor.") and n != "cursor.tmp"]


def test_drain_status_read_ignores_a_symlink_or_fifo(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text('{"last_error": "planted"}')
    (tmp_path / STATUS_FILE).symlink_to(target)
    assert read_drain_status(str(tmp_path)) is None
    os.unlink(tmp_path / STATUS_FILE)
    os.mkfifo(tmp_path / STATUS_FILE)
    assert read_drain_status(str(tmp_path)) is None  # returns at once, no writer needed


def test_sweep_removes_only_our_stale_regular_temp_files_and_never_follows_links(
    tmp_path: Path,
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    stale = tmp_path / "cursor.0123456789abcdef.tmp"
    stale.write_bytes(b"x")
    fresh = tmp_path / "cursor.fedcba9876543210.tmp"
    fresh.write_bytes(b"x")
    link = tmp_path / "drain-status.json.00112233445566ff.tmp"
    link.symlink_to(victim)
    other = tmp_path / "notes.tmp"
    other.write_bytes(b"x")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    os.utime(link, (old, old), follow_symlinks=False)

    assert sweep_temp_files(str(tmp_path)) == [stale.name]
    assert not stale.exists()
    assert fresh.exists()
    assert other.exists()
    assert link.is_symlink()
    assert victim.read_bytes() == b"keep"


def test_drainer_sweeps_stale_temp_files_when_it_takes_the_lock(spool: str, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    stale = Path(spool) / "drain-status.json.0123456789abcdef.tmp"  # a crashed drainer's
    stale.write_bytes(b'{"half": ')
    planted = Path(spool) / "drain-status.json.00000000000000ff.tmp"
    planted.symlink_to(victim)
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(planted, (old, old), follow_symlinks=False)
    drainer = Drainer(spool, MemoryTransport())
    try:
        assert drainer.drain_until_idle(timeout=10) == 0
    finally:
        drainer.close()
    assert not stale.exists()
    assert planted.is_symlink()  # not ours (we never create links): left, never followed
    assert victim.read_bytes() == b"keep"


def test_drain_follow_on_a_missing_directory_exits_2_and_creates_nothing(tmp_path: Path) -> None:
    typo = tmp_path / "spoool"
    code, _out, err, elapsed = inproc(
        "drain", str(typo), "--follow", "--connection-string", conn_for(free_port())
    )
    assert code == 2, err
    assert "not a directory" in one_line_error(err)
    assert not typo.exists()
    assert elapsed < 10


# ---------------------------------------------------------------------------
# 3. something that is not a spool


@pytest.mark.parametrize("command", ["verify", "status", "tail", "drain"])
def test_a_directory_that_is_not_a_spool_exits_2_for_every_command(
    tmp_path: Path, command: str
) -> None:
    etc_like = tmp_path / "etc"
    etc_like.mkdir()
    (etc_like / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (etc_like / "ssl").mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    extra = ["--connection-string", conn_for(free_port())] if command == "drain" else []
    for directory in (etc_like, empty):
        code, out, err, _ = inproc(command, str(directory), *extra)
        assert code == 2, (command, out, err)
        assert "not a spool directory" in one_line_error(err)
    assert sorted(os.listdir(etc_like)) == ["passwd", "ssl"]  # nothing created in it
    assert os.listdir(empty) == []


def test_a_new_empty_spool_is_still_a_spool(tmp_path: Path) -> None:
    """Also the real-process run of status, verify and tail (drain's are below)."""
    spool = tmp_path / "new"
    (spool / "locks").mkdir(parents=True)
    code, out, err, _ = run("status", str(spool), "--json")
    assert code == 0, err
    assert json.loads(out)["pending_records"] == 0
    code, out, err, _ = run("verify", str(spool), "--json")
    assert code == 0, err
    code, out, err, _ = run("tail", str(spool), "--all")
    assert (code, out, err) == (0, "", "")


# ---------------------------------------------------------------------------
# 4. the CLI always ends


@pytest.mark.parametrize(
    ("connection", "queue", "says"),
    [
        ("foo", "q", "malformed"),
        ("Endpoint=sb://", "q", "Invalid Endpoint"),
        ("Endpoint=sb://127.0.0.1:5671;SharedAccessKeyName=k", "q", "SharedAccessKey"),
        (conn_for(1), "", "Queue/Topic name is missing"),
    ],
)
def test_drain_with_bad_connection_settings_exits_2_at_once_with_one_line(
    spool: str, connection: str, queue: str, says: str
) -> None:
    code, _out, err, elapsed = inproc(
        "drain", spool, "--connection-string", connection, "--queue", queue
    )
    assert code == 2, err
    line = one_line_error(err)
    assert "bad connection settings" in line
    assert says in line
    assert elapsed < 10


@pytest.mark.parametrize(
    "timeout",
    [0.5, pytest.param(5.0, marks=pytest.mark.slow), pytest.param(20.0, marks=pytest.mark.slow)],
)
@pytest.mark.parametrize("target", ["refused", "silent"])
def test_drain_timeout_is_honoured_within_a_second(
    spool: str, silent_port: int, timeout: float, target: str
) -> None:
    port = free_port() if target == "refused" else silent_port
    code, out, err, wall = run(
        "drain",
        spool,
        "--connection-string",
        conn_for(port),
        "--timeout",
        f"{timeout:g}",
        "--json",
        timeout=timeout + 30,
    )
    assert code == 1, err
    summary = summary_of(out)
    assert summary["pending"] == 5
    assert timeout <= summary["seconds"] < timeout + 1.0, summary
    assert wall < timeout + 3.0  # + interpreter start and SDK import on a loaded machine
    assert "Traceback" not in err


@pytest.mark.slow
def test_authentication_refused_three_times_in_a_row_ends_one_shot_drain_with_exit_2(
    spool: str,
) -> None:
    with LocalPeer.start(auth_fail=True) as refusing:
        code, out, err, elapsed = run(
            "drain", spool, "--connection-string", refusing.connection_string(), "--json"
        )
        rejected = refusing.stats()["cbs_rejected"]
    assert code == 2, err
    assert "Traceback" not in err
    giving_up = [ln for ln in err.splitlines() if "giving up" in ln]
    assert len(giving_up) == 1, err
    assert "ServiceBusAuthenticationError" in giving_up[0]
    assert rejected == AUTH_CONFIRM_AFTER
    assert summary_of(out)["pending"] == 5
    assert elapsed < 20


def _follow(spool: str, connection: str, *extra: str) -> subprocess.Popen[str]:
    proc = start("drain", spool, "--follow", "--connection-string", connection, "--json", *extra)
    status_file = os.path.join(spool, STATUS_FILE)
    assert wait_until(lambda: os.path.exists(status_file) or proc.poll() is not None, 20)
    assert proc.poll() is None, proc.communicate()
    return proc


def _stop_within(proc: subprocess.Popen[str], signum: int, bound: float) -> Tuple[str, str, float]:
    t0 = time.monotonic()
    proc.send_signal(signum)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    took = time.monotonic() - t0
    assert took < bound, f"took {took:.2f}s to stop"
    return out, err, took


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_sigint_or_sigterm_ends_drain_follow_within_a_second_with_the_summary(
    spool: str, peer: LocalPeer, signum: int
) -> None:
    proc = _follow(spool, peer.connection_string())
    assert peer.wait_for(5, timeout=10)
    assert wait_until(
        lambda: read_drain_status(spool) and read_drain_status(spool)["delivered"] == 5, 5
    )  # type: ignore[index]
    out, err, _ = _stop_within(proc, signum, 1.0)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    summary = summary_of(out)
    assert summary["delivered"] == 5
    assert summary["pending"] == 0


def test_sigint_ends_drain_follow_within_a_second_while_a_send_hangs(
    spool: str, silent_listener: SilentListener
) -> None:
    port = silent_listener.port
    proc = start("drain", spool, "--follow", "--connection-string", conn_for(port), "--json")
    # started, connected, sent its header: stuck in the SDK's handshake read
    assert silent_listener.greeted.wait(30), "the drainer never connected"
    out, err, _ = _stop_within(proc, signal.SIGINT, 1.0)
    assert proc.returncode == 1, err  # records remain
    assert "Traceback" not in err
    assert summary_of(out)["pending"] == 5


def test_sigint_ends_one_shot_drain_with_summary_exit_130_and_no_traceback(
    spool: str, silent_listener: SilentListener
) -> None:
    proc = start("drain", spool, "--connection-string", conn_for(silent_listener.port), "--json")
    assert silent_listener.greeted.wait(30), "the drainer never connected"  # a send hangs
    out, err, _ = _stop_within(proc, signal.SIGINT, 1.0)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert summary_of(out)["pending"] == 5


@pytest.mark.slow
def test_second_drainer_names_the_holder_and_waits_only_with_wait(
    spool: str, peer: LocalPeer
) -> None:
    first = _follow(spool, peer.connection_string())
    try:
        code, out, err, elapsed = run(
            "drain", spool, "--connection-string", peer.connection_string(), "--json"
        )
        assert code == 1, err
        assert f"pid {first.pid}" in err
        assert "--wait" in err
        assert elapsed < 10

        code, out, err, elapsed = run(
            "drain",
            spool,
            "--connection-string",
            peer.connection_string(),
            "--wait",
            "--timeout",
            "1",
            "--json",
        )
        assert code == 1, err
        assert f"waiting for pid {first.pid}" in err
        assert summary_of(out)["seconds"] < 2.0
    finally:
        _stop_within(first, signal.SIGTERM, 5.0)
    locks = sorted(os.listdir(os.path.join(spool, "locks")))
    assert "drain.lock" in locks  # lock files are never deleted
    assert "drain.owner" not in locks  # the holder's note goes with the holder

    code, out, err, _ = run(
        "drain", spool, "--connection-string", peer.connection_string(), "--wait", "--json"
    )
    assert code == 0, err  # free now: --wait takes it at once


def test_verify_replay_to_a_missing_directory_fails_at_once(spool: str, tmp_path: Path) -> None:
    code, _out, err, elapsed = inproc(
        "verify", spool, "--replay", "--to", str(tmp_path / "no" / "such" / "x.jsonl")
    )
    assert code == 2, err
    assert "no directory" in one_line_error(err)
    assert elapsed < 10
    code, _out, err, _ = inproc("verify", spool, "--replay", "--to", str(tmp_path))
    assert code == 2
    assert "is a directory" in err


def test_handler_reports_a_malformed_connection_string_once_at_construction(
    spool_dir: str,
) -> None:
    stream = io.StringIO()
    handler = SpoolHandler(
        spool_dir,
        tenant_id="t",
        app_name="a",
        connection_string="foo",
        reporter=Reporter(stream=stream),
    )
    try:
        logger = logging.getLogger("test_cli.handler")
        logger.propagate = False
        logger.handlers = [handler]
        logger.warning("the app still starts and logs")
        handler.flush()
        assert handler.stats()["accepted"] >= 1
    finally:
        handler.close()
    lines = stream.getvalue().splitlines()
    assert len([ln for ln in lines if "bad connection settings" in ln]) == 1, lines


# ---------------------------------------------------------------------------
# classification


def test_sdk_errors_are_classified_permanent_or_transient() -> None:
    transport = ServiceBusTransport(queue_name="q", connection_string=conn_for(1))
    auth = transport._classify(ServiceBusAuthenticationError(message="401"))
    assert isinstance(auth, PermanentTransportError)
    assert auth.confirm_after == AUTH_CONFIRM_AFTER
    missing = transport._classify(MessagingEntityNotFoundError(message="no such queue"))
    assert isinstance(missing, PermanentTransportError)
    assert missing.confirm_after == 1
    assert "'q'" in str(missing)
    down = transport._classify(ServiceBusConnectionError(message="refused"))
    assert isinstance(down, TransientTransportError)


def test_jsonl_transport_to_a_missing_directory_is_permanent(tmp_path: Path) -> None:
    transport = JsonlTransport(str(tmp_path / "no" / "x.jsonl"))
    message = OutgoingMessage(0, 1, "id", b"{}", {})
    with pytest.raises(PermanentTransportError, match="cannot write"):
        transport.send([message])
    transport.close()


class _Refusing:
    """A transport whose broker refuses every send with a permanent error."""

    max_batch_bytes = None

    def __init__(self, confirm_after: int) -> None:
        self.confirm_after = confirm_after
        self.sends = 0

    def send(self, messages: Any) -> Any:
        self.sends += 1
        raise PermanentTransportError("refused", confirm_after=self.confirm_after)

    def close(self) -> None:
        """Nothing to release."""


def test_one_shot_drain_gives_up_after_confirm_after_refusals_and_keeps_the_records(
    spool: str,
) -> None:
    transport = _Refusing(confirm_after=3)
    drainer = Drainer(spool, transport, backoff_base_s=0.01, backoff_max_s=0.05)
    try:
        with pytest.raises(PermanentTransportError, match="refused"):
            drainer.drain_until_idle(timeout=20, give_up=True)
    finally:
        drainer.close()
    assert transport.sends == 3
    assert Drainer(spool, MemoryTransport()).pending_events() == 5


def test_a_timeout_before_the_refusals_are_confirmed_is_a_timeout_not_a_give_up(
    spool: str,
) -> None:
    transport = _Refusing(confirm_after=1000)
    drainer = Drainer(spool, transport, backoff_base_s=0.01, backoff_max_s=0.05)
    try:
        assert drainer.drain_until_idle(timeout=0.5, give_up=True) == 5
    finally:
        drainer.close()
    assert 3 < transport.sends < 1000


def test_verify_replay_ends_at_once_when_a_drainer_holds_the_spool(spool: str) -> None:
    """A replay never waits silently for a live drainer: exit 2, the holder named."""
    from cerbistream_spool.spool.lanes import drain_lock  # noqa: PLC0415

    lock = drain_lock(spool)
    lock.acquire()
    try:
        code, out, err, took = run("verify", spool, "--replay", "--to", spool + ".jsonl")
    finally:
        lock.release()
    assert code == 2, (out, err)
    assert "is shipping" in err
    assert "intact" in out  # the report comes before the replay
    assert took < 15


def test_verify_replay_to_a_full_file_exits_1_with_what_is_pending(spool: str) -> None:
    """A replay that cannot write says how many records stay pending and exits 1."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    code, out, err, took = inproc("verify", spool, "--replay", "--to", "/dev/full")
    assert code in (1, 2), (out, err)
    assert "pending" in err or "Error" in err
    assert took < 30


@pytest.mark.parametrize("damage", ["drain-lock-is-a-directory", "locks-is-a-fifo"])
def test_drain_with_an_unlockable_drain_lock_exits_2_without_traceback(
    spool: str, damage: str
) -> None:
    """A lock path that is no lockable file ends drain with one line, not a traceback."""
    import shutil  # noqa: PLC0415

    locks = os.path.join(spool, "locks")
    if damage == "drain-lock-is-a-directory":
        lock = os.path.join(locks, "drain.lock")
        if os.path.exists(lock):
            os.unlink(lock)
        os.mkdir(lock)
    else:
        shutil.rmtree(locks)
        os.mkfifo(locks)
    code, out, err, took = inproc(
        "drain", spool, "--connection-string", conn_for(1), "--timeout", "5"
    )
    assert code == 2, (out, err)
    assert "Traceback" not in err
    assert "drain lock" in one_line_error(err)
    assert took < 15


# ---------------------------------------------------------------------------
# what a person expects of a CLI


def test_h_is_help_everywhere_and_version_and_python_m_work() -> None:
    for args in ([], ["drain"], ["verify"], ["status"], ["tail"]):
        code, out, err, _ = inproc(*args, "-h")
        assert code == 0, err
        assert "Usage:" in out
    code, out, err, _ = run("--version")
    assert code == 0, err
    assert out.startswith("cerbispool, version ")
    module = subprocess.run(
        [sys.executable, "-m", "cerbistream_spool", "--help"],
        capture_output=True,
        text=True,
        env=env(),
        check=False,
    )
    assert module.returncode == 0, module.stderr
    assert "Usage: cerbispool" in module.stdout


def test_version_works_without_the_package_metadata(tmp_path: Path) -> None:
    """Run from a copy of the source (a vendored tree, a zipapp, PYTHONPATH to a checkout),
    there is no installed distribution to ask: ``--version`` still prints, no traceback."""
    import shutil  # noqa: PLC0415
    import site  # noqa: PLC0415

    import cerbistream_spool  # noqa: PLC0415

    deps = tmp_path / "deps"  # the dependencies without cerbistream_spool's metadata
    deps.mkdir()
    for packages in site.getsitepackages():
        for entry in Path(packages).iterdir():
            name = entry.name
            if name.startswith(("cerbistream", "__editable__")) or name.endswith(".pth"):
                continue
            if not (deps / name).exists():
                (deps / name).symlink_to(entry)
    shutil.copytree(Path(cerbistream_spool.__file__).parent, tmp_path / "src" / "cerbistream_spool")
    out = subprocess.run(
        [sys.executable, "-S", "-m", "cerbistream_spool", "--version"],
        capture_output=True,
        text=True,
        env={**env(), "PYTHONPATH": f"{tmp_path / 'src'}{os.pathsep}{deps}"},
        cwd=tmp_path,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stdout == f"cerbispool, version {cerbistream_spool.__version__}\n"


def test_bash_completion_script_is_what_the_readme_says() -> None:
    completion = subprocess.run(
        [sys.executable, "-m", "cerbistream_spool"],
        capture_output=True,
        text=True,
        env={**env(), "_CERBISPOOL_COMPLETE": "bash_source"},
        check=False,
    )
    assert completion.returncode == 0, completion.stderr
    assert "_cerbispool_completion" in completion.stdout


def test_drain_summary_is_text_unless_json(tmp_path: Path) -> None:
    """The format follows --json only (in-process; the real-process twin is below)."""
    empty = tmp_path / "empty"
    (empty / "locks").mkdir(parents=True)
    args = ("drain", str(empty), "--connection-string", conn_for(free_port()))
    code, out, err, _ = inproc(*args)
    assert code == 0, err
    assert out.startswith("delivered 0, pending 0,"), out
    code, out, err, _ = inproc(*args, "--json")
    assert code == 0, err
    assert summary_of(out)["pending"] == 0
    assert summary_of(out)["delivered"] == 0


@pytest.mark.slow  # the format logic: test_drain_summary_is_text_unless_json
def test_drain_summary_is_text_on_a_pipe_unless_json(spool: str) -> None:
    """The format follows --json only; stdout being a pipe does not make it JSON."""
    args = ("drain", spool, "--connection-string", conn_for(free_port()), "--timeout", "1")
    code, out, err, _ = run(*args)
    assert code == 1, err
    assert out.startswith("delivered 0, pending 5,"), out
    code, out, err, _ = run(*args, "--json")
    assert code == 1, err
    assert summary_of(out)["pending"] == 5


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("args", [["--help"], ["status", "{spool}"], ["tail", "{spool}", "--all"]])
def test_stdout_on_a_full_device_is_one_error_line_and_exit_2(spool: str, args: List[str]) -> None:
    """A full log partition behind stdout: no traceback (a real process: the last flush of
    stdout at exit must not fail either)."""
    with open("/dev/full", "w") as full:
        res = subprocess.run(
            [*CLI, *(a.format(spool=spool) for a in args)],
            stdout=full,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            check=False,
            text=True,
            timeout=60,
        )
    assert res.returncode == 2, res.stderr
    assert res.stderr.splitlines() == ["Error: cannot write the output: No space left on device"]
