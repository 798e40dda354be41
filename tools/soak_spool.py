#!/usr/bin/env python3
"""kill -9 soak for the cerbistream spool, and the writer process the crash tests drive.

Soak (the default command)::

    python tools/soak_spool.py --mode interval --seconds 60 --writers 2

Each cycle starts ``--writers`` writer processes (the ``child`` command) on one
spool directory. A child appends events as fast as it can and prints every
returned seq with the event's unique id, one flushed line each; docs/CONTRACT.md §4
says a returned append is in the OS, so a ``kill -9`` must not lose it. The
parent SIGKILLs each child at a random moment from a seeded RNG — during
start-up, right after it announces the open (lane lock, recovery, first
segment), or after it reported k records — reaps it, checks that ``verify`` is
clean right away (an unclean close is a notice), re-opens every lane in
process (recovery) and closes it, then checks: ``verify`` clean, no gap
records, every reported event present exactly once at the reported
(lane, seq), each lane's records contiguous and hash-linked. By default the
parent then acks everything it read (every fifth cycle letting the reader
remove the idle lanes), so the spool stays small however long the soak runs;
``--no-ack`` keeps every record and re-checks all of them every cycle.
One summary line; exit status 1 on any loss or problem (the spool is kept).

Writer and drainer processes::

    python tools/soak_spool.py child --spool-dir D --mode M [--count N] [--seconds S]
        [--tag T] [--quiet] [--hold] [--die-in FILE:FUNC --die-at N]
    python tools/soak_spool.py drain --spool-dir D [--die-in FILE:FUNC --die-at N]

Lines on stdout: ``OPENING`` (before ``SpoolWriter`` is built), ``LANE <lane>``,
``A <seq> <id>`` per append (unless ``--quiet``), ``HOLD`` (with ``--hold``: the
writer stays open until stdin closes), ``DONE <lane> <count> <first> <last>``
after ``close()``. The drainer acks everything it reads and prints
``BATCH <lane> <first> <last>`` before and ``ACKED <lane> <seq>`` after each
ack, then ``DRAINED <events>``. ``--die-in writer.py:_rotate --die-at 3`` makes the child
SIGKILL itself just before the 3rd file-system call (open, write, fsync,
close, mkdir, rename, unlink, truncate, flock, ...) made during the first call
of that function; if the function returns first it prints ``STEPS <n>``.
``--stop-instead`` prints ``STOPPED`` and SIGSTOPs there instead, so a test can
act in between and SIGCONT it. That
only chooses the instant of a real kill: nothing is replaced or mocked.

tests/test_crash.py and tests/test_multiprocess.py load this file (through
tests/spool_child.py) and use :class:`Child`, :func:`recover_lanes` and
:func:`check_spool`, so the loop and the checks exist once.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from cerbistream_spool import SpoolConfig, SpoolReader, SpoolWriter, VerifyReport, verify
from cerbistream_spool.spool.chain import GENESIS
from cerbistream_spool.spool.lanes import list_lanes
from cerbistream_spool.spool.record import Record

SCRIPT = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(SCRIPT))
SEGMENT_BYTES = 16 * 1024
MODES = ("always", "interval", "never")
# names of the C calls that change files or locks: a crash point sits before one of them
MUTATING_CALLS = frozenset(
    {
        "chmod",
        "close",
        "fchmod",
        "fdatasync",
        "flock",
        "fsync",
        "ftruncate",
        "lockf",
        "mkdir",
        "open",
        "pwrite",
        "remove",
        "rename",
        "replace",
        "rmdir",
        "truncate",
        "unlink",
        "write",
    }
)

Where = Tuple[int, int]  # (lane, seq)


# -- the writer process -----------------------------------------------------------------


def _emit(line: str) -> None:
    """One protocol line, in one write(2): a kill never leaves half a line."""
    data = (line + "\n").encode()
    while data:
        data = data[os.write(1, data) :]


def _add_crash_point_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--die-in", metavar="FILE:FUNC", help="crash point function")
    parser.add_argument("--die-at", type=int, default=1, help="crash before this mutating call")
    parser.add_argument(
        "--stop-instead", action="store_true", help="SIGSTOP (print STOPPED) instead of SIGKILL"
    )


def _install_crash_point(spec: str, step: int, stop: bool = False) -> None:
    """SIGKILL this process before the ``step``-th mutating call inside ``FILE:FUNC``.

    With ``stop``, print ``STOPPED`` and SIGSTOP instead: the parent acts, then SIGCONTs.
    """
    filename, _, func = spec.rpartition(":")
    suffix = os.sep + filename
    state: Dict[str, Any] = {"frame": None, "steps": 0}

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        target = state["frame"]
        if target is None:
            code = frame.f_code
            if event == "call" and code.co_name == func and code.co_filename.endswith(suffix):
                state["frame"] = frame
        elif event == "return" and frame is target:
            sys.setprofile(None)
            _emit(f"STEPS {state['steps']}")
        elif event == "c_call" and getattr(arg, "__name__", "") in MUTATING_CALLS:
            state["steps"] += 1
            if state["steps"] == step:
                if stop:
                    _emit("STOPPED")
                os.kill(os.getpid(), signal.SIGSTOP if stop else signal.SIGKILL)

    sys.setprofile(profile)


def child_main(argv: Sequence[str]) -> int:
    """The writer process; see the module docstring."""
    parser = argparse.ArgumentParser(prog="soak_spool.py child")
    parser.add_argument("--spool-dir", required=True)
    parser.add_argument("--mode", choices=MODES, default="interval")
    parser.add_argument("--segment-max-bytes", type=int, default=SEGMENT_BYTES)
    parser.add_argument("--count", type=int, default=0, help="events to append (0: no limit)")
    parser.add_argument("--seconds", type=float, default=20.0, help="stop appending after this")
    parser.add_argument("--tag", default=f"p{os.getpid()}", help="event ids are TAG-0, TAG-1, ...")
    parser.add_argument("--pad", type=int, default=96, help="filler bytes per event")
    parser.add_argument("--quiet", action="store_true", help="do not report each append")
    parser.add_argument("--hold", action="store_true", help="keep the writer open until stdin EOF")
    _add_crash_point_options(parser)
    args = parser.parse_args(argv)

    _emit("OPENING")
    if args.die_in:
        _install_crash_point(args.die_in, args.die_at, args.stop_instead)
    config = SpoolConfig(fsync=args.mode, segment_max_bytes=args.segment_max_bytes)
    writer = SpoolWriter(args.spool_dir, config)
    _emit(f"LANE {writer.lane}")
    deadline = time.monotonic() + args.seconds
    pid, pad = os.getpid(), "x" * args.pad
    count = first = last = 0
    while (args.count <= 0 or count < args.count) and time.monotonic() < deadline:
        event_id = f"{args.tag}-{count}"
        last = writer.append({"id": event_id, "tag": args.tag, "i": count, "pid": pid, "pad": pad})
        first = first or last
        count += 1
        if not args.quiet:
            _emit(f"A {last} {event_id}")
    if args.hold:
        _emit("HOLD")
        sys.stdin.read()
    writer.close()
    _emit(f"DONE {writer.lane} {count} {first} {last}")
    return 0


def drain_main(argv: Sequence[str]) -> int:
    """A drainer process: read and ack everything, letting the reader remove idle lanes.

    Prints ``BATCH <lane> <first> <last>`` before acking a batch, ``ACKED <lane> <seq>``
    after the ack returns, and ``DRAINED <events>`` at the end.
    """
    parser = argparse.ArgumentParser(prog="soak_spool.py drain")
    parser.add_argument("--spool-dir", required=True)
    _add_crash_point_options(parser)
    parser.add_argument("--max-records", type=int, default=500, help="records per batch")
    args = parser.parse_args(argv)
    _emit("OPENING")
    if args.die_in:
        _install_crash_point(args.die_in, args.die_at, args.stop_instead)
    reader = SpoolReader(args.spool_dir)
    events = 0
    for batch in reader.batches(max_records=args.max_records):
        _emit(f"BATCH {batch.lane} {batch.first_seq} {batch.last_seq}")
        reader.ack(batch)
        events += len(batch.events())
        _emit(f"ACKED {batch.lane} {batch.last_seq}")
    _emit(f"DRAINED {events}")
    return 0


# -- driving a writer process -------------------------------------------------------------


@dataclass(frozen=True)
class KillPlan:
    """When the parent SIGKILLs a child.

    ``trigger``: ``spawn`` (``delay`` s after start), ``opening`` (``delay`` s after the
    OPENING line), ``records`` (``delay`` s after the ``records``-th reported append),
    ``none`` (never).
    """

    trigger: str = "none"
    delay: float = 0.0
    records: int = 0


def random_plan(rng: random.Random, max_records: int) -> KillPlan:
    """A kill moment: 20 % during start-up, 20 % during the open, 60 % while appending."""
    roll = rng.random()
    if roll < 0.2:
        return KillPlan("spawn", delay=rng.uniform(0.0, 0.15))
    if roll < 0.4:
        return KillPlan("opening", delay=rng.uniform(0.0, 0.004))
    return KillPlan("records", delay=rng.uniform(0.0, 0.002), records=rng.randint(1, max_records))


class Child:
    """A ``child`` writer (or ``drain``) process, its parsed output and kill plan; reap it.

    Use as a context manager, or call :meth:`finish`; both kill a child that is
    still running at the deadline, so no process outlives its test.
    """

    def __init__(
        self,
        spool_dir: str,
        *,
        command: str = "child",
        mode: str = "interval",
        tag: str = "t",
        plan: KillPlan = KillPlan(),
        count: int = 0,
        seconds: float = 20.0,
        segment_max_bytes: int = SEGMENT_BYTES,
        quiet: bool = False,
        hold: bool = False,
        die_in: Optional[str] = None,
        die_at: int = 1,
        stop_instead: bool = False,
        max_records: int = 500,
        cmd: Optional[List[str]] = None,
        env: Optional[Dict[str, str]] = None,
    ) -> None:
        """``cmd`` (with ``env``) runs any command instead of this script's own."""
        if cmd is not None:
            self._spawn(cmd, tag, plan, hold, env)
            return
        cmd = [sys.executable, SCRIPT, command, "--spool-dir", str(spool_dir)]
        if command == "drain":
            cmd += ["--max-records", str(max_records)]
        if command == "child":
            cmd += ["--mode", mode, "--tag", tag, "--count", str(count), "--seconds", str(seconds)]
            cmd += ["--segment-max-bytes", str(segment_max_bytes)]
            cmd += ["--quiet"] * quiet + ["--hold"] * hold
        if die_in:
            cmd += ["--die-in", die_in, "--die-at", str(die_at)] + ["--stop-instead"] * stop_instead
        self._spawn(cmd, tag, plan, hold, env)

    def _spawn(
        self, cmd: List[str], tag: str, plan: KillPlan, hold: bool, env: Optional[Dict[str, str]]
    ) -> None:
        self.tag, self.plan = tag, plan
        self.lines: List[str] = []
        self.reported: Dict[str, Where] = {}  # event id -> (lane, seq), as the child printed
        self.lane: Optional[int] = None
        self.done: Optional[Tuple[int, int, int, int]] = None  # lane, count, first, last seq
        self.steps: Optional[int] = None
        self.acked: Dict[int, int] = {}  # drain: lane -> last seq whose ack returned
        self.in_flight: Dict[int, int] = {}  # drain: lane -> last seq of the batch being acked
        self.killed = False
        self.returncode: Optional[int] = None
        self.stderr = ""
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._err: List[bytes] = []
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE if hold else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=str(ROOT),
        )
        self.pid = self.proc.pid
        self._timer: Optional[threading.Timer] = None
        if plan.trigger == "spawn":
            self._timer = threading.Timer(plan.delay, self.kill)
            self._timer.daemon = True
            self._timer.start()
        self._out_thread = threading.Thread(target=self._read_stdout, daemon=True)
        self._err_thread = threading.Thread(target=self._read_stderr, daemon=True)
        self._out_thread.start()
        self._err_thread.start()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish(timeout=10.0)

    # -- output -----------------------------------------------------------------------

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        reported = 0
        for raw in self.proc.stdout:
            if not raw.endswith(b"\n"):
                break  # cut short by the kill: never reported
            line = raw.decode().rstrip("\n")
            word, _, rest = line.partition(" ")
            if word == "A" and self.lane is not None:
                seq, event_id = rest.split(" ")
                self.reported[event_id] = (self.lane, int(seq))
                reported += 1
            elif word == "LANE":
                self.lane = int(rest)
            elif word == "DONE":
                lane, count, first, last = (int(x) for x in rest.split(" "))
                self.done = (lane, count, first, last)
            elif word == "STEPS":
                self.steps = int(rest)
            elif word == "ACKED":
                lane, seq = (int(x) for x in rest.split(" "))
                self.acked[lane] = seq
            elif word == "BATCH":
                lane, _first, seq = (int(x) for x in rest.split(" "))
                self.in_flight[lane] = seq
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
            plan = self.plan
            if (plan.trigger == "opening" and word == "OPENING") or (
                plan.trigger == "records" and word == "A" and reported == plan.records
            ):
                if plan.delay:
                    time.sleep(plan.delay)
                self.kill()
        with self._cond:
            self.lines.append("")  # EOF marker for wait_for
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self._err.append(self.proc.stderr.read())

    def wait_for(self, word: str, timeout: float) -> bool:
        """Wait until the child printed a line starting with ``word`` (False at EOF/timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if any(line.split(" ", 1)[0] == word for line in self.lines):
                    return True
                left = deadline - time.monotonic()
                if (self.lines and self.lines[-1] == "") or left <= 0:
                    return False
                self._cond.wait(left)

    # -- life cycle ---------------------------------------------------------------------

    def kill(self) -> None:
        """SIGKILL the child (no-op once reaped, so a reused pid is never hit)."""
        with self._lock:
            if self.returncode is None:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.killed = True

    def release(self) -> None:
        """Let a ``--hold`` child close its writer and exit."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()

    def finish(self, timeout: float = 30.0) -> int:
        """Wait for the child to die or exit (its output ends), reap it; returns the exit code.

        A child still running at ``timeout`` is killed. Idempotent.
        """
        if self.returncode is not None:
            return self.returncode
        deadline = time.monotonic() + timeout
        self._out_thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            try:
                self.returncode = self.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.killed = True
                self.returncode = self.proc.wait(10.0)
        if self._timer is not None:
            self._timer.cancel()
        self._out_thread.join(5.0)
        self._err_thread.join(5.0)
        self.stderr = b"".join(self._err).decode(errors="replace")
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(BrokenPipeError):
                    pipe.close()
        return self.returncode

    def describe(self) -> str:
        """For failure messages."""
        return (
            f"child {self.tag} pid {self.pid} plan {self.plan} rc {self.returncode}"
            f" lane {self.lane} reported {len(self.reported)} last lines {self.lines[-3:]}"
            f" stderr {self.stderr[-2000:]!r}"
        )


# -- recovery and checks ---------------------------------------------------------------------


def recover_lanes(spool_dir: str, config: SpoolConfig) -> Dict[int, List[str]]:
    """Open (recover) and close every lane up to the highest one present; returns the notes.

    Writers take the lowest free lane, so holding them all open at once walks
    lanes 0..top. Call it only when no writer process is alive.
    """
    notes: Dict[int, List[str]] = {}
    writers: List[SpoolWriter] = []
    top = max(list_lanes(spool_dir), default=0)
    try:
        while True:
            writer = SpoolWriter(spool_dir, config)
            writers.append(writer)
            notes[writer.lane] = writer.recovery_notes
            if writer.lane >= top:
                break
    finally:
        for writer in writers:
            writer.close()
    return notes


@dataclass
class Scan:
    """Everything a reader hands out."""

    lanes: Dict[int, List[Record]] = field(default_factory=dict)
    events: Dict[str, List[Where]] = field(default_factory=dict)  # id -> where found
    tags: Dict[str, str] = field(default_factory=dict)  # id -> tag
    problems: List[Dict[str, Any]] = field(default_factory=list)


def scan_spool(spool_dir: str, *, ack: bool = False, remove_idle_lanes: bool = True) -> Scan:
    """Read every pending record through a :class:`SpoolReader` (acking if asked)."""
    scan = Scan()
    reader = SpoolReader(spool_dir, remove_idle_lanes=remove_idle_lanes)
    for batch in reader.batches():
        scan.lanes.setdefault(batch.lane, []).extend(batch.records)
        for rec in batch.events():
            body = rec.value()
            event_id = str(body.get("id")) if isinstance(body, dict) else repr(body)
            scan.events.setdefault(event_id, []).append((batch.lane, rec.seq))
            scan.tags[event_id] = str(body.get("tag")) if isinstance(body, dict) else ""
        if ack:
            reader.ack(batch)
    scan.problems = list(reader.problems)
    return scan


def chain_failures(scan: Scan, from_genesis: bool) -> List[str]:
    """Each lane's records must be seq-contiguous and hash-linked (from genesis if asked)."""
    out = []
    for lane, records in sorted(scan.lanes.items()):
        if from_genesis and (records[0].seq != 1 or records[0].prev_hash != GENESIS):
            out.append(f"lane {lane}: starts at seq {records[0].seq}, not at 1 from genesis")
        for prev, rec in zip(records, records[1:]):
            if rec.seq != prev.seq + 1 or rec.prev_hash != prev.hash:
                out.append(f"lane {lane}: seq {rec.seq} does not follow seq {prev.seq}")
                break
    return out


@dataclass
class Check:
    """Outcome of :func:`check_spool`; ``failures`` is empty when all is well."""

    report: VerifyReport
    scan: Scan
    failures: List[str]
    found: int
    lost: int
    duplicates: int


def check_spool(
    spool_dir: str,
    reported: Dict[str, Where],
    *,
    ack: bool = False,
    remove_idle_lanes: bool = True,
    from_genesis: bool = True,
    tags: Optional[Set[str]] = None,
) -> Check:
    """verify() clean, no gaps, and every reported event present once where reported.

    ``tags``: when given, every event read must carry one of them (after acking
    earlier cycles, an older event read again would be a redelivery).
    """
    report = verify(spool_dir)
    failures = [f"verify: {p}" for p in report.problems[:20]]
    if report.gaps:
        failures.append(f"gap records (data lost): {report.gaps[:5]}")
    scan = scan_spool(spool_dir, ack=ack, remove_idle_lanes=remove_idle_lanes)
    failures += [f"reader: {p}" for p in scan.problems[:20]]
    failures += chain_failures(scan, from_genesis)
    duplicates = {i: w for i, w in scan.events.items() if len(w) > 1}
    if duplicates:
        failures.append(f"{len(duplicates)} events stored twice: {list(duplicates.items())[:5]}")
    if tags is not None:
        foreign = [i for i, tag in scan.tags.items() if tag not in tags]
        if foreign:
            failures.append(f"{len(foreign)} events of earlier cycles read again: {foreign[:5]}")
    lost = [i for i in reported if i not in scan.events]
    if lost:
        failures.append(f"{len(lost)} reported events lost: {lost[:10]}")
    moved = [(i, w, scan.events[i]) for i, w in reported.items() if scan.events.get(i, [w]) != [w]]
    if moved:
        failures.append(f"{len(moved)} events not at their reported (lane, seq): {moved[:5]}")
    return Check(report, scan, failures, len(reported) - len(lost), len(lost), len(duplicates))


# -- the soak ---------------------------------------------------------------------------------


def soak_main(argv: Sequence[str]) -> int:
    """The kill -9 soak; see the module docstring."""
    parser = argparse.ArgumentParser(prog="soak_spool.py", description="kill -9 spool soak")
    parser.add_argument("--cycles", type=int, default=1_000_000, help="at most this many cycles")
    parser.add_argument("--seconds", type=float, default=60.0, help="stop starting cycles after")
    parser.add_argument("--mode", choices=MODES, default="interval")
    parser.add_argument("--writers", type=int, default=1, help="concurrent writer processes")
    parser.add_argument("--spool-dir", help="default: a new temporary directory")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-records", type=int, default=3000, help="latest kill, in records")
    parser.add_argument("--segment-max-bytes", type=int, default=SEGMENT_BYTES)
    parser.add_argument("--no-ack", dest="ack", action="store_false", help="never ack")
    parser.add_argument("--keep", action="store_true", help="keep the spool directory")
    args = parser.parse_args(argv)
    if args.writers < 1 or args.cycles < 1:
        parser.error("--writers and --cycles must be at least 1")

    rng = random.Random(args.seed)
    spool_dir = args.spool_dir or tempfile.mkdtemp(prefix="soak-spool-")
    config = SpoolConfig(fsync=args.mode, segment_max_bytes=args.segment_max_bytes)
    start = time.monotonic()
    cycles = reported_total = found_total = lost_total = dup_total = recovered_notes = 0
    all_reported: Dict[str, Where] = {}
    failures: List[str] = []
    while cycles < args.cycles and time.monotonic() - start < args.seconds and not failures:
        children: List[Child] = []
        try:
            for n in range(args.writers):
                plan = random_plan(rng, args.max_records)
                tag = f"c{cycles}w{n}"
                children.append(Child(spool_dir, mode=args.mode, tag=tag, plan=plan))
        finally:
            for child in children:
                child.finish(timeout=40.0)
        reported: Dict[str, Where] = {}
        for child in children:
            if child.returncode != -signal.SIGKILL:
                failures.append(f"unexpected exit: {child.describe()}")
            reported.update(child.reported)
        reported_total += len(reported)
        killed = verify(spool_dir)  # the crash state itself verifies: a notice, not a problem
        failures += [f"cycle {cycles}: verify right after the kill: {p}" for p in killed.problems]
        try:
            notes = recover_lanes(spool_dir, config)
            recovered_notes += sum(1 for lane_notes in notes.values() if lane_notes)
            if args.ack:
                check = check_spool(
                    spool_dir,
                    reported,
                    ack=True,
                    remove_idle_lanes=cycles % 5 == 4,
                    from_genesis=False,
                    tags={c.tag for c in children},
                )
            else:
                all_reported.update(reported)
                check = check_spool(spool_dir, all_reported)
        except Exception:
            failures.append(f"cycle {cycles}: recovery or check raised:\n{traceback.format_exc()}")
            cycles += 1
            break
        failures += [f"cycle {cycles}: {f}" for f in check.failures]
        found_total += sum(1 for event_id in reported if event_id in check.scan.events)
        lost_total += check.lost
        dup_total += check.duplicates
        cycles += 1
    verdict = "ok" if not failures else f"FAILED({len(failures)})"
    print(
        f"soak_spool mode={args.mode} writers={args.writers} cycles={cycles}"
        f" records_reported={reported_total} records_found={found_total} lost={lost_total}"
        f" duplicates={dup_total} recoveries_with_notes={recovered_notes} verify={verdict}"
        f" elapsed={time.monotonic() - start:.1f}s"
    )
    for failure in failures[:20]:
        print(f"  {failure}", file=sys.stderr)
    if failures:
        print(f"  spool kept at {spool_dir}", file=sys.stderr)
        return 1
    if not args.spool_dir and not args.keep:
        shutil.rmtree(spool_dir, ignore_errors=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``child ...`` runs a writer process, ``drain ...`` a drainer; anything else the soak."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command: Callable[[Sequence[str]], int] = soak_main
    if argv and argv[0] in ("child", "drain"):
        command, argv = (child_main if argv[0] == "child" else drain_main), argv[1:]
    return command(argv)


if __name__ == "__main__":
    sys.exit(main())
