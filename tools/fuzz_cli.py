"""Fuzz the reading CLI commands with hostile spool contents: no traceback, ever.

Each case copies a pristine spool (two lanes, part acknowledged), damages it one seeded
way, and runs ``status``, ``status --json``, ``verify``, ``verify --json``, ``tail``,
``tail --all`` and ``verify --replay --to FILE`` (a drain to JSON lines) in process.
A case fails when a command raises (a traceback), exits with a code outside {0, 1, 2},
or takes longer than ``--case-timeout`` seconds. The damage:

- ``body``: a chain-valid event record whose body is hostile msgpack (non-string map
  keys, bytes, ``nan``, nesting to the unpacker's limit, ext types, invalid UTF-8, not a
  map at all, arbitrary bytes);
- ``segment``: random bytes written over, inserted into or cut from a segment;
- ``cursor``: random cursor bytes;
- ``status``: random ``drain-status.json`` bytes;
- ``new-lane``: a lane whose only segment is random bytes;
- ``ledger``: a losses ledger (``losses/ledger``) of entries with hostile gap bodies,
  hashes and fields, then random bytes written over, inserted into or cut from it, a
  frame with a valid checksum over hostile msgpack, random bytes, or a directory or
  symlink in its place; and hostile gap records in a lane.

Usage::

    python -m tools.fuzz_cli --cases 5000 [--seed 0] [--keep DIR]

Prints one line per failing case (seed and what broke) and a summary; exit 1 on any
failure. The test tier runs a few hundred cases through :func:`run_cases`.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import struct
import sys
import tempfile
import threading
import time
from typing import Any, Callable, List, Optional

import msgpack
from click.testing import CliRunner

from cerbistream_spool.cli import main as cli_main
from cerbistream_spool.spool import SpoolConfig, SpoolReader, SpoolWriter
from cerbistream_spool.spool.lanes import lane_dir
from cerbistream_spool.spool.losses import (
    FORMAT_NAME,
    LEDGER_FILE,
    LOSSES_DIR,
    LedgerEntry,
    record_gaps,
)
from cerbistream_spool.spool.record import Kind, encode_frame
from cerbistream_spool.spool.segments import HEADER_SIZE, list_segments

__all__ = ["DAMAGE", "COMMANDS", "damage", "hostile_body", "make_pristine", "run_case", "run_cases"]

DAMAGE = ("body", "segment", "cursor", "status", "new-lane", "ledger")
COMMANDS = (
    ["status", "--json"],
    ["status"],
    ["verify", "--json"],
    ["verify"],
    ["tail"],
    ["tail", "--all"],
    ["verify", "--replay", "--to", "{out}"],
)
_CONFIG = SpoolConfig(fsync="never", segment_max_bytes=4096, max_spool_bytes=1 << 24)


def make_pristine(spool: str) -> None:
    """Two lanes of small events, lane 0 partly acknowledged."""
    with SpoolWriter(spool, _CONFIG) as w0, SpoolWriter(spool, _CONFIG) as w1:
        for i in range(40):
            w0.append({"LogId": f"a-{i}", "RawPayload": {"message": "x" * 30}})
            w1.append({"LogId": f"b-{i}", "RawPayload": {"n": i}})
    reader = SpoolReader(spool, lanes={0})
    reader.ack(next(reader.batches(max_records=4)))


def _tree(rng: random.Random, depth: int) -> Any:
    pick = rng.randrange(10 if depth < 6 else 6)
    if pick == 0:
        return rng.choice([None, True, 1, -(2**63), 2**64 - 1, 1.5, math.nan, math.inf])
    if pick == 1:
        return rng.randbytes(rng.randrange(8))
    if pick == 2:
        return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(6)))
    if pick == 3:
        return msgpack.ExtType(rng.randrange(128), rng.randbytes(3))
    if pick in (4, 5):
        return rng.choice(["k", "", "1", "é"])
    if pick in (6, 7):
        keys: List[Any] = [1, "1", b"1", 1.0, None, True, -5, "k", (1, 2)]
        return {rng.choice(keys): _tree(rng, depth + 1) for _ in range(rng.randrange(4))}
    return [_tree(rng, depth + 1) for _ in range(rng.randrange(4))]


def hostile_body(rng: random.Random) -> bytes:
    """msgpack bytes a reader must survive (see the module docstring)."""
    kind = rng.randrange(6)
    if kind == 0:  # nested deeper than anything can take
        depth = rng.choice([40, 200, 1100, 5000])
        return b"\x81\xa1k" * depth + b"\xc0"
    if kind == 1:  # invalid UTF-8 in a str
        return b"\x81\xa1k\xa2\xff\xfe"
    if kind == 2:
        return rng.randbytes(rng.randrange(1, 40))
    if kind == 3:  # a map with a list key (unhashable when decoded)
        return b"\x81\x92\x01\x02\x01"
    body = {"LogId": "x", "RawPayload": _tree(rng, 0), rng.choice([1, b"k", 2.5]): _tree(rng, 0)}
    return msgpack.packb(
        body if kind == 4 else _tree(rng, 0), use_bin_type=True, strict_types=False
    )


def damage(spool: str, rng: random.Random, how: str) -> None:
    """Damage a copy of the pristine spool one way (see the module docstring)."""
    if how == "body":
        with SpoolWriter(spool, _CONFIG) as writer:
            for _ in range(rng.randrange(1, 4)):
                writer.append_body(hostile_body(rng))
    elif how == "segment":
        lane = rng.randrange(2)
        found = list_segments(lane_dir(spool, lane))
        path = rng.choice(found)[1]
        with open(path, "rb") as fh:
            data = bytearray(fh.read())
        at = rng.randrange(len(data) + 1)
        blob = rng.randbytes(rng.randrange(1, 64))
        if rng.random() < 0.3:  # a plausible length field: resync has to work
            blob = struct.pack("<I", rng.randrange(60, 4096)) + b"\x96" + blob
        op = rng.randrange(3)
        if op == 0:
            data[at : at + len(blob)] = blob
        elif op == 1:
            data[at:at] = blob
        else:
            del data[max(HEADER_SIZE // 2, at - len(blob)) : at]
        with open(path, "wb") as fh:
            fh.write(bytes(data))
    elif how == "cursor":
        with open(os.path.join(lane_dir(spool, rng.randrange(2)), "cursor"), "wb") as fh:
            fh.write(rng.randbytes(rng.choice([0, 1, 59, 60, 61, 200])))
    elif how == "status":
        with open(os.path.join(spool, "drain-status.json"), "wb") as fh:
            fh.write(rng.choice([rng.randbytes(30), b"[" * 100_000, b'{"last_error": 1}']))
    elif how == "ledger":
        _damage_ledger(spool, rng)
    else:
        os.makedirs(lane_dir(spool, 9))
        with open(os.path.join(lane_dir(spool, 9), "00000000000000000001.seg"), "wb") as fh:
            fh.write(rng.randbytes(rng.randrange(600)))


def _gap_body(rng: random.Random) -> bytes:
    """A gap body: well-formed with hostile values, or any hostile msgpack."""
    if rng.random() < 0.5:
        return hostile_body(rng)
    huge = [0, 1, 2**64 - 1, -1, None, "7", True, 2**63]
    body = {
        "reason": rng.choice(["overflow", "dead-letter", 3, None, "é" * 50]),
        "count": rng.choice(huge),
        "first_seq": rng.choice(huge),
        "last_seq": rng.choice(huge),
        "lane": rng.choice([0, 1, 9, -1, 2**64 - 1, "0"]),
        "detail": _tree(rng, 0),
    }
    return msgpack.packb(body, use_bin_type=True, strict_types=False)


def _damage_ledger(spool: str, rng: random.Random) -> None:
    entries = [
        LedgerEntry(
            rng.choice([0, 1, 9, 2**63 - 1]),
            rng.randrange(0, 60),
            rng.choice([0, -(2**63), 2**63 - 1]),
            rng.randbytes(32),
            rng.randbytes(32),
            rng.random() < 0.3,
            _gap_body(rng),
            rng.randrange(1, 2**62),
        )
        for _ in range(rng.randrange(1, 6))
    ]
    record_gaps(spool, entries)
    if rng.random() < 0.3:
        with SpoolWriter(spool, _CONFIG) as writer:
            writer.append_body(_gap_body(rng), Kind.GAP)
    path = os.path.join(spool, LOSSES_DIR, LEDGER_FILE)
    with open(path, "rb") as fh:
        data = bytearray(fh.read())
    op = rng.randrange(7)
    at = rng.randrange(len(data) + 1)
    blob = rng.randbytes(rng.randrange(1, 64))
    if op == 0:
        data[at : at + len(blob)] = blob
    elif op == 1:
        data[at:at] = blob
    elif op == 2:
        del data[max(0, at - len(blob)) : at]
    elif op == 3:
        keys = ("lane", "seq", "ts_ns", "prev_hash", "hash", "keyed", "body", "recorded_ns")
        hostile = {key: _tree(rng, 0) for key in keys}
        if rng.random() < 0.5:  # a header that is one in name only
            hostile = {"format": FORMAT_NAME, "version": 1, "carried": _tree(rng, 0)}
            data = bytearray()
        hostile["pad"] = "x" * 80  # past the smallest payload the framing allows
        data += encode_frame(msgpack.packb(hostile, use_bin_type=True, strict_types=False))
    elif op == 4:
        data = bytearray(rng.randbytes(rng.randrange(600)))
    if op == 5:
        os.unlink(path)
        os.mkdir(path)
    elif op == 6:
        os.unlink(path)
        os.symlink("/dev/zero", path)
    else:
        with open(path, "wb") as fh:
            fh.write(bytes(data))


def _bounded(fn: Callable[[], Any], timeout: float) -> Any:
    out: List[Any] = []

    def run() -> None:
        out.append(fn())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"still running after {timeout} s")
    return out[0] if out else None


def run_case(pristine: str, workdir: str, seed: int, case_timeout: float = 10.0) -> List[str]:
    """One seeded case; returns what went wrong (empty: nothing)."""
    rng = random.Random(seed)
    how = DAMAGE[seed % len(DAMAGE)]
    spool = os.path.join(workdir, f"case-{seed}")
    out = os.path.join(workdir, f"case-{seed}.jsonl")
    shutil.copytree(pristine, spool)
    failures: List[str] = []
    try:
        damage(spool, rng, how)
        for command in COMMANDS:
            args = [a.format(out=out) for a in command]
            args.insert(1, spool)
            try:
                result = _bounded(lambda a=args: CliRunner().invoke(cli_main, a), case_timeout)
            except TimeoutError as exc:
                failures.append(f"seed {seed} ({how}): {' '.join(command)}: {exc}")
                continue
            exc = result.exception
            if exc is not None and not isinstance(exc, SystemExit):
                what = f"traceback {type(exc).__name__}: {exc}"
                failures.append(f"seed {seed} ({how}): {' '.join(command)}: {what}")
            elif result.exit_code not in (0, 1, 2) or "Traceback" in result.output:
                failures.append(
                    f"seed {seed} ({how}): {' '.join(command)}: exit {result.exit_code}"
                )
    finally:
        if not failures:
            shutil.rmtree(spool, ignore_errors=True)
            if os.path.exists(out):
                os.unlink(out)
    return failures


def run_cases(seeds: range, workdir: Optional[str] = None, case_timeout: float = 10.0) -> List[str]:
    """Every failure over ``seeds`` (failing cases' spools are kept in ``workdir``)."""
    own = workdir is None
    base = workdir or tempfile.mkdtemp(prefix="fuzz-cli-")
    try:
        pristine = os.path.join(base, "pristine")
        if not os.path.isdir(pristine):
            make_pristine(pristine)
        failures: List[str] = []
        for seed in seeds:
            failures.extend(run_case(pristine, base, seed, case_timeout))
        return failures
    finally:
        if own and not failures_kept(base):
            shutil.rmtree(base, ignore_errors=True)


def failures_kept(base: str) -> bool:
    """True when a failing case's spool is still in ``base``."""
    return any(name.startswith("case-") for name in os.listdir(base))


def main(argv: Optional[List[str]] = None) -> int:
    """The command line; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0, help="First seed.")
    parser.add_argument("--keep", default=None, help="Work in (and keep failing cases in) DIR.")
    parser.add_argument("--case-timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
    started = time.monotonic()
    failures = run_cases(range(args.seed, args.seed + args.cases), args.keep, args.case_timeout)
    for line in failures:
        print(line)
    print(
        f"{args.cases} cases x {len(COMMANDS)} commands in {time.monotonic() - started:.1f} s:"
        f" {len(failures)} failure(s)"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
