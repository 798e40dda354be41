"""No reading CLI command prints a traceback for any spool content (tools/fuzz_cli.py).

``status``, ``verify``, ``tail``, ``tail --all`` and a drain to JSON lines
(``verify --replay --to FILE``) over seeded hostile bodies, damaged segments, cursors,
drain-status files, stray lanes and damaged losses ledgers; ``python -m tools.fuzz_cli
--cases N`` runs many more.
"""

from __future__ import annotations

import json
import random

import msgpack
import pytest
from click.testing import CliRunner
from tiers import examples

from cerbistream_spool.cli import main
from cerbistream_spool.spool import SpoolWriter
from cerbistream_spool.spool.record import Kind
from tools.fuzz_cli import DAMAGE, hostile_body, make_pristine, run_cases


def test_fuzz_reading_commands_fast_tier(tmp_path) -> None:
    failures = run_cases(range(examples(20, fast=8)), str(tmp_path))  # every kind of damage
    assert not failures, "\n".join(failures)


def test_fuzz_a_damaged_losses_ledger_never_gives_a_traceback(tmp_path) -> None:
    """``losses/ledger`` with hostile entries, damaged frames, a hostile header, random
    bytes, or a directory or symlink in its place (tools/fuzz_cli.py ``ledger``)."""
    ledger = DAMAGE.index("ledger")
    cases = examples(20, fast=6)
    failures = run_cases(range(ledger, ledger + cases * len(DAMAGE), len(DAMAGE)), str(tmp_path))
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_fuzz_reading_commands_hundreds_of_cases_per_damage(tmp_path) -> None:
    failures = run_cases(range(20, 20 + 80 * len(DAMAGE)), str(tmp_path))
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    "body",
    [
        msgpack.packb({"LogId": "x", "RawPayload": {1: "a", b"k": b"v"}}, use_bin_type=True),
        b"\x81\xa1k" * 40 + b"\xc0",  # deeper than MAX_DEPTH, within the unpacker's limit
        b"\x81\xa1k" * 5000 + b"\xc0",  # beyond the unpacker's limit
        b"\x81\x92\x01\x02\x01",  # a list as a map key
        msgpack.packb({"n": float("nan")}),
    ],
)
def test_tail_all_prints_every_decodable_body_and_skips_the_rest(
    spool_dir: str, body: bytes
) -> None:
    with SpoolWriter(spool_dir) as writer:
        writer.append({"LogId": "before"})
        writer.append_body(body)
        writer.append({"LogId": "after"})
    result = CliRunner().invoke(main, ["tail", spool_dir, "--all"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == '{"LogId":"before"}' and lines[-1] == '{"LogId":"after"}'


def test_a_hostile_body_is_kept_as_text_not_dropped_by_tail(spool_dir: str) -> None:
    make_pristine(spool_dir)
    with SpoolWriter(spool_dir) as writer:
        writer.append_body(hostile_body(random.Random(7)))
    result = CliRunner().invoke(main, ["tail", spool_dir, "--all"])
    assert result.exit_code == 0 and result.exception is None


@pytest.mark.parametrize(
    "body",
    [
        msgpack.packb({"reason": "overflow", b"k": b"v", "count": 2}, use_bin_type=True),
        msgpack.packb({"reason": b"\xff", "first_seq": 1.5, "last_seq": [1]}, use_bin_type=True),
    ],
)
def test_a_hostile_gap_body_in_a_lane_keeps_verify_json_printable(
    spool_dir: str, body: bytes
) -> None:
    """verify lists a gap's FORMAT.md §4.2 fields that have their type, nothing else."""
    with SpoolWriter(spool_dir) as writer:
        writer.append_body(body, Kind.GAP)
    result = CliRunner().invoke(main, ["verify", spool_dir, "--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    (gap,) = json.loads(result.stdout)["gaps"]
    assert set(gap) <= {"lane", "seq", "source", "reason", "count", "first_seq", "last_seq"}
