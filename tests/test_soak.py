"""tools/soak.py end to end, short: writers, kill -9, a flapping peer and a killed drainer.

One bounded run (``--seconds 10 --writers 2``) must exit 0 and print one
summary line saying nothing was lost and the spool verifies. The soak itself
does the checking (see its docstring); this pins its verdict and its format.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest

pytest.importorskip("proton")
pytest.importorskip("azure.servicebus")

from tools import soak as soak_tool

ROOT = Path(__file__).resolve().parents[1]
SOAK = ROOT / "tools" / "soak.py"


def run_soak(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("CERBISTREAM_SERVICEBUS_CONNECTION", None)
    env.pop("CERBISTREAM_SPOOL_KEY", None)
    return subprocess.run(
        [sys.executable, str(SOAK), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=str(ROOT),
        env=env,
    )


def summary_fields(stdout: str) -> Dict[str, str]:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("soak ")]
    assert len(lines) == 1, f"expected one summary line, got {stdout!r}"
    return dict(re.findall(r"(\w+)=(\S+)", lines[0]))


@pytest.mark.slow
def test_short_soak_loses_nothing_and_verifies(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    done = run_soak(
        "--seconds", "10", "--writers", "2", "--seed", "5", "--spool-dir", str(spool_dir)
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-4000:]}"
    fields = summary_fields(done.stdout)
    assert fields["lost"] == "0"
    assert fields["unexplained_losses"] == "0"
    assert fields["verify"] == "ok"
    assert fields["bad_bodies"] == "0"
    assert fields["pending"] == "0"
    assert fields["failures"] == "0"
    # the chaos really happened, and records really flowed through it
    assert int(fields["writer_kills"]) > 0
    assert int(fields["verifies_after_kill"]) >= int(fields["writer_kills"])  # each one clean
    assert int(fields["drainer_kills"]) + int(fields["peer_restarts"]) > 0
    assert int(fields["emitted"]) > 100
    assert int(fields["delivered_unique"]) >= int(fields["emitted"])


def test_soak_checks_flag_a_lost_record_and_a_changed_duplicate_and_accept_a_dead_letter(
    tmp_path: Path,
) -> None:
    """The checker itself: a missing record and a re-send with another body are failures;
    a record the spool dead-lettered is an explained loss (no peer, no processes)."""

    def body(log_id: str, soak_id: str, text: str = "m") -> bytes:
        event = {"LogId": log_id, "RawPayload": {"soak_id": soak_id, "message": text}}
        return json.dumps(event).encode()

    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    run = soak_tool.Soak(argparse.Namespace(), str(spool_dir), random.Random(0), {})
    run.reported = {"a-0": (0, 1), "a-1": (0, 2), "a-2": (0, 3)}
    ok, other = body("m0", "a-0"), body("m0", "a-0", "changed")
    run.accepted = [
        (mid, soak_tool.QUEUE, "application/json", b)
        for mid, b in (
            ("m0", ok),
            ("m0", ok),
            ("m0", other),
        )
    ]
    (spool_dir / "deadletter").mkdir()
    (spool_dir / "deadletter" / "0000-00000000000000000003.json").write_text(
        json.dumps({"lane": 0, "seq": 3, "message_id": "m2", "body": body("m2", "a-2").decode()})
    )
    result = run.check()
    assert result["lost"] == 2  # a-1 and a-2 never reached the peer
    assert result["unexplained_losses"] == 1  # a-2 is in deadletter/
    assert result["duplicates"] == 2
    assert result["bad_bodies"] == 1
    assert result["verify"] == "ok"
    assert any("two different bodies" in f for f in run.failures)
    assert any("never delivered" in f and "a-1" in f for f in run.failures)
