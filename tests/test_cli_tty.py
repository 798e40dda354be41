"""`cerbispool drain` on a real terminal: a pseudo-terminal (``os.openpty``) as stderr.

The progress line advances per batch (records/s, pending) and says "outage" with
the last error and the next retry while the broker is down; the output format on
stdout follows ``--json`` alone, terminal or not.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

pytest.importorskip("proton")
pytest.importorskip("azure.servicebus")

from cerbistream_spool import SpoolHandler
from tools.amqp_peer import LocalPeer

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "cerbistream_spool"]
FRAME = re.compile(r"draining (\d+)/(\d+) \((\d+)%\), (\d+) records/s, (\d+) pending")


@pytest.fixture
def peer() -> Iterator[LocalPeer]:
    with LocalPeer.start() as running:
        yield running


def env() -> Dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("CERBISTREAM_")}
    out["PYTHONPATH"] = str(REPO)
    out["COLUMNS"] = "200"  # the line is cut to the terminal's width
    return out


def conn_for(port: int) -> str:
    return (
        f"Endpoint=sb://127.0.0.1:{port};SharedAccessKeyName=k;SharedAccessKey=v;"
        "UseDevelopmentEmulator=true"
    )


def make_spool(spool_dir: str, n: int) -> None:
    handler = SpoolHandler(spool_dir, tenant_id="t", app_name="a", drain=False)
    logger = logging.getLogger(f"tty.{id(handler)}")
    logger.propagate = False
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    for i in range(n):
        logger.info("order %d shipped", i, extra={"note": "x" * 300, "i": i})
    handler.close()


def in_terminal(*args: str, stdout_tty: bool = False) -> Tuple[int, str, str]:
    """Run the CLI with stderr (and optionally stdout) on a pseudo-terminal.

    Returns (exit code, stdout, what the terminal showed).
    """
    master, slave = os.openpty()
    shown: List[bytes] = []

    def read_terminal() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError as exc:  # EIO: every slave end closed (the process ended)
                assert exc.errno == errno.EIO
                return
            if not chunk:
                return
            shown.append(chunk)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    try:
        proc = subprocess.Popen(
            [*CLI, *args],
            stdin=subprocess.DEVNULL,
            stdout=slave if stdout_tty else subprocess.PIPE,
            stderr=slave,
            env=env(),
        )
    finally:
        os.close(slave)
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    os.close(master)
    return proc.returncode, (out or b"").decode(), b"".join(shown).decode(errors="replace")


def frames(terminal: str) -> List[str]:
    """Each state the progress line was drawn in (it is redrawn after a carriage return)."""
    return [part.strip() for part in re.split(r"[\r\n]", terminal) if part.strip()]


@pytest.mark.slow
def test_progress_advances_per_batch_with_rate_and_pending(tmp_path: Path, peer: LocalPeer) -> None:
    spool_dir = str(tmp_path / "spool")
    make_spool(spool_dir, 5000)
    code, out, terminal = in_terminal(
        "drain", spool_dir, "--connection-string", conn_for(peer.port)
    )
    assert code == 0, terminal
    drawn = [FRAME.search(f) for f in frames(terminal)]
    counts = [(int(m.group(1)), int(m.group(2)), int(m.group(5))) for m in drawn if m]
    assert counts, terminal
    assert all(total == 5000 and done + pending == total for done, total, pending in counts)
    partial = {done for done, total, _ in counts if 0 < done < total}
    assert len(partial) >= 2, f"progress did not advance per batch: {sorted(partial)}"
    assert counts[-1][0] == 5000
    assert any(int(m.group(4)) > 0 for m in drawn if m)  # a rate is shown
    assert out.startswith("delivered 5000, pending 0"), out  # text: stdout is a pipe, no --json


@pytest.mark.slow
def test_an_outage_is_shown_with_the_last_error_and_the_next_retry(tmp_path: Path) -> None:
    spool_dir = str(tmp_path / "spool")
    make_spool(spool_dir, 20)
    with socket.socket() as sock:  # a port nobody listens on: the broker is down
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, out, terminal = in_terminal(
        "drain", spool_dir, "--connection-string", conn_for(port), "--timeout", "3", "--json"
    )
    assert code == 1, terminal
    outage = [f for f in frames(terminal) if f.startswith("outage:")]
    assert outage, terminal
    assert re.match(
        r"outage: next retry in \d+\.\ds; 0/20 \(0%\), \d+ records/s, 20 pending; last error ",
        outage[0],
    ), outage[0]
    assert "ServiceBusConnectionError" in outage[0] or "Connection refused" in outage[0]
    assert json.loads(out.splitlines()[-1])["pending"] == 20  # --json: JSON on a pipe


def test_output_format_follows_json_alone_on_a_terminal(tmp_path: Path) -> None:
    """stdout a terminal: text without --json, JSON with it (status, verify)."""
    spool_dir = str(tmp_path / "spool")
    make_spool(spool_dir, 3)
    for command in ("status", "verify"):
        code, _, shown = in_terminal(command, spool_dir, stdout_tty=True)
        assert code == 0, shown
        assert not shown.lstrip().startswith("{"), shown
        code, _, shown = in_terminal(command, spool_dir, "--json", stdout_tty=True)
        assert code == 0, shown
        assert isinstance(json.loads(shown), dict)
