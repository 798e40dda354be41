#!/usr/bin/env python3
"""End-to-end chaos soak: writers, spool, out-of-process drainer, local AMQP peer, kill -9.

    python tools/soak.py --seconds 120 --writers 3 --seed 1 [--spool-dir D] [--keep]

Everything at once, for a bounded number of seconds:

- ``--writers`` writer processes (the ``writer`` command of this file) log through
  ``SpoolHandler(fsync="always", drain=False)`` into one spool directory. Each
  record carries a unique ``extra={"soak_id": ...}``; after every ``emit`` that
  returned, the writer prints ``A <seq> <soak_id>`` in one write(2), so a kill
  never leaves half a line (the protocol of tools/soak_spool.py, whose
  :class:`Child` parses it, kills once and reaps within a bound).
- writers are ``kill -9``'ed at random moments and restarted at once (they take
  the lowest free lane, so lanes are reused and recovered);
- ``cerbispool drain SPOOL --follow --connection-string ... --json`` ships the
  spool to a :class:`tools.amqp_peer.LocalPeer` on 127.0.0.1 with the real
  azure-servicebus SDK, and is itself ``kill -9``'ed and restarted now and then;
- the peer flaps (stop, then start on the same port), throttles (``busy_rate``),
  cuts connections mid-stream (``close_after``, sometimes ``close_abort``),
  settles late (``settle_delay``) and refuses CBS tokens (``auth_fail``).

Then the chaos stops: the peer is healed, the writers are asked to stop
(SIGTERM: a clean ``close()``), the follower gets SIGTERM, and one final
``cerbispool drain SPOOL --timeout`` ships what is left (bounded). The checks:

- every soak_id whose ``emit`` returned (fsync="always": on disk) reached the
  peer at least once (by ``RawPayload.soak_id`` in the accepted bodies);
- every copy of a MessageId has a byte-identical body, MessageId = body LogId,
  and one soak_id never travels under two LogIds (a record spooled twice);
- ``verify(spool)`` is clean right after every writer kill (the killed lane's
  unclean end is a notice), and at the end, with nothing left pending;
- a lost record is explained only by the spool's own loss records: a dead-letter
  file under ``deadletter/`` holding its body, or a ``gap`` record covering its
  (lane, seq). None are expected.

It prints ONE summary line and exits 1 on any unexplained loss, verify problem,
body mismatch, unexpected child exit or failed final drain (the spool is then
kept and its path printed on stderr). All waits are bounded, all children are
reaped, only 127.0.0.1 is used, and the temporary directory is removed unless
``--keep``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(Path(__file__).resolve())
QUEUE = "cerbishield.log-scoring"
CLI = [sys.executable, "-c", "from cerbistream_spool.cli import main; main()"]
SEGMENT_BYTES = 64 * 1024  # small segments: rotation and acked-segment unlinks happen often


if str(ROOT) not in sys.path:  # run as a script: tools/ is not installed
    sys.path.insert(0, str(ROOT))

from tools import soak_spool as spool_soak  # noqa: E402 — the one copy of Child and the checks

_emit = spool_soak._emit  # one protocol line in one write(2)


# -- the writer process ---------------------------------------------------------------------


def writer_main(argv: Sequence[str]) -> int:
    """A writer process: logs through SpoolHandler(fsync="always", drain=False).

    Lines: ``OPENING``, ``LANE <lane>``, ``A <seq> <soak_id>`` after each returned
    emit (seq 0 when the record never reached the writer: the handler dropped it),
    ``DONE <lane> <count> <first> <last>`` after a clean ``close()`` (on SIGTERM
    or at ``--seconds``).
    """
    parser = argparse.ArgumentParser(prog="soak.py writer")
    parser.add_argument("--spool-dir", required=True)
    parser.add_argument("--tag", required=True, help="soak ids are TAG-0, TAG-1, ...")
    parser.add_argument("--seconds", type=float, default=600.0, help="stop after this")
    parser.add_argument("--rate", type=float, default=0.0, help="emits per second (0: no limit)")
    parser.add_argument("--segment-max-bytes", type=int, default=SEGMENT_BYTES)
    args = parser.parse_args(argv)

    from cerbistream_spool import SpoolHandler  # noqa: PLC0415 — the parent never needs it
    from cerbistream_spool.spool.record import Kind  # noqa: PLC0415

    stop = threading.Event()

    def on_term(signum: int, frame: Optional[FrameType]) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    _emit("OPENING")
    handler = SpoolHandler(
        args.spool_dir,
        tenant_id="soak-tenant",
        app_name="soak-app",
        environment="soak",
        fsync="always",
        drain=False,
        segment_max_bytes=args.segment_max_bytes,
    )
    writer = handler.writer
    last_seq = [0]
    if writer is not None:
        append_body = writer.append_body

        def observed(body: bytes, kind: int = Kind.EVENT) -> int:  # observes, changes nothing
            seq = append_body(body, kind)
            last_seq[0] = seq
            return seq

        writer.append_body = observed  # type: ignore[method-assign]
    lane = writer.lane if writer is not None else -1
    _emit(f"LANE {lane}")
    log = logging.getLogger("soak")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    deadline = time.monotonic() + args.seconds
    period = 1.0 / args.rate if args.rate > 0 else 0.0
    next_at = time.monotonic()
    count = first = 0
    while not stop.is_set() and time.monotonic() < deadline:
        soak_id = f"{args.tag}-{count}"
        last_seq[0] = 0
        log.warning("soak record %d", count, extra={"soak_id": soak_id})
        _emit(f"A {last_seq[0]} {soak_id}")
        first = first or last_seq[0]
        count += 1
        if period:
            next_at += period
            pause = next_at - time.monotonic()
            if pause > 0:
                stop.wait(pause)
            elif pause < -1.0:
                next_at = time.monotonic()  # fell behind (loaded CPU): do not burst
    log.removeHandler(handler)
    handler.close()
    _emit(f"DONE {lane} {count} {first} {last_seq[0]}")
    return 0


# -- processes ------------------------------------------------------------------------------


class Proc(spool_soak.Child):
    """soak_spool's :class:`Child` (output parsing, kill-once, bounded reap) for any command."""

    def __init__(self, cmd: List[str], *, tag: str, env: Dict[str, str]) -> None:
        super().__init__("", cmd=cmd, tag=tag, env=env)

    def terminate(self) -> None:
        """SIGTERM (Popen never signals a reaped child, so a reused pid is never hit)."""
        with self._lock:
            if self.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(signal.SIGTERM)

    def exited(self) -> bool:
        """True once the process is gone (without reaping the pipes)."""
        return self.proc.poll() is not None


def child_env() -> Dict[str, str]:
    env = dict(os.environ)
    env.pop("CERBISTREAM_SERVICEBUS_CONNECTION", None)
    env.pop("CERBISTREAM_SPOOL_KEY", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


# -- the soak -------------------------------------------------------------------------------


@dataclass
class Counts:
    writer_kills: int = 0
    writer_starts: int = 0
    verifies_after_kill: int = 0
    drainer_kills: int = 0
    drainer_starts: int = 0
    peer_restarts: int = 0
    busy_toggles: int = 0
    close_afters: int = 0
    settle_delays: int = 0
    auth_fails: int = 0


@dataclass
class Soak:
    """State of one run."""

    args: argparse.Namespace
    spool_dir: str
    rng: random.Random
    env: Dict[str, str]
    peer: Any = None
    conn: str = ""
    counts: Counts = field(default_factory=Counts)
    writers: List[Optional[Proc]] = field(default_factory=list)
    incarnation: List[int] = field(default_factory=list)
    drainer: Optional[Proc] = None
    finished: List[Proc] = field(default_factory=list)
    reported: Dict[str, Tuple[int, int]] = field(default_factory=dict)
    accepted: List[Tuple[str, Optional[str], Optional[str], bytes]] = field(default_factory=list)
    failures: List[str] = field(default_factory=list)

    # -- children ----------------------------------------------------------------------

    def start_writer(self, slot: int) -> None:
        tag = f"w{slot}i{self.incarnation[slot]}"
        self.incarnation[slot] += 1
        cmd = [sys.executable, SCRIPT, "writer", "--spool-dir", self.spool_dir, "--tag", tag]
        cmd += ["--rate", str(self.args.rate), "--seconds", str(self.args.seconds + 120)]
        self.writers[slot] = Proc(cmd, tag=tag, env=self.env)
        self.counts.writer_starts += 1

    def start_drainer(self) -> None:
        tag = f"d{self.counts.drainer_starts}"
        cmd = [*CLI, "drain", self.spool_dir, "--follow", "--connection-string", self.conn]
        self.drainer = Proc([*cmd, "--json"], tag=tag, env=self.env)
        self.counts.drainer_starts += 1

    def reap(self, proc: Proc, timeout: float) -> int:
        """Reap ``proc`` (killed at ``timeout``), keep what it reported."""
        rc = int(proc.finish(timeout=timeout))
        self.reported.update(proc.reported)
        self.finished.append(proc)
        return rc

    def kill_writer(self, slot: int) -> None:
        proc = self.writers[slot]
        assert proc is not None
        if not proc.exited():
            self.counts.writer_kills += 1
        proc.kill()
        rc = self.reap(proc, timeout=15.0)
        if rc != -signal.SIGKILL:
            self.failures.append(f"writer exited by itself: {proc.describe()}")
        self.verify_after_kill(proc.tag)
        self.start_writer(slot)

    def verify_after_kill(self, tag: str) -> None:
        """The spool verifies right after a kill (the killed lane's unclean end is a notice),
        while the other writers and the drainer go on."""
        from cerbistream_spool import verify  # noqa: PLC0415

        report = verify(self.spool_dir)
        self.counts.verifies_after_kill += 1
        self.failures += [f"verify after killing {tag}: {p}" for p in report.problems[:5]]

    def kill_drainer(self) -> None:
        proc = self.drainer
        assert proc is not None
        if not proc.exited():
            self.counts.drainer_kills += 1
        proc.kill()
        rc = self.reap(proc, timeout=15.0)
        if rc != -signal.SIGKILL:
            self.failures.append(f"drainer exited by itself: {proc.describe()}")
        self.start_drainer()

    # -- the peer ----------------------------------------------------------------------

    def on_accept(self, rec: Any) -> None:  # the peer's reactor thread: keep it quick
        self.accepted.append((rec.message_id, rec.entity, rec.content_type, rec.body))

    def peer_up(self) -> None:
        """Start the peer on its port (bounded retries: the port may linger for a moment)."""
        for _ in range(50):
            try:
                self.peer.start()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the peer could not re-bind 127.0.0.1:{self.peer.port}")

    def heal_peer(self) -> None:
        peer = self.peer
        peer.busy_rate = 0.0
        peer.close_after = None
        peer.close_abort = False
        peer.settle_delay = 0.0
        peer.auth_fail = False
        if not peer.running:
            self.peer_up()

    # -- the run ------------------------------------------------------------------------

    def chaos(self) -> None:
        """Until ``--seconds``: writers, drainer and peer misbehave on a seeded schedule."""
        args, rng, peer, counts = self.args, self.rng, self.peer, self.counts
        now = time.monotonic()
        end = now + args.seconds
        writer_kill_at = [now + rng.uniform(0.3, 3.0) for _ in range(args.writers)]
        drainer_kill_at = now + rng.uniform(2.0, 8.0)
        fault_at = now + rng.uniform(0.5, 3.0)
        up_at: Optional[float] = None  # the peer is down until then
        heal_at: Optional[float] = None  # busy/settle/auth faults end then
        while now < end:
            for slot in range(args.writers):
                if now >= writer_kill_at[slot] or self.writers[slot].exited():  # type: ignore[union-attr]
                    self.kill_writer(slot)
                    writer_kill_at[slot] = time.monotonic() + rng.uniform(0.3, 3.0)
            if now >= drainer_kill_at or (self.drainer is not None and self.drainer.exited()):
                self.kill_drainer()
                drainer_kill_at = time.monotonic() + rng.uniform(2.0, 8.0)
            if up_at is not None and now >= up_at:
                self.peer_up()
                up_at = None
            if heal_at is not None and now >= heal_at:
                peer.busy_rate, peer.settle_delay, peer.auth_fail = 0.0, 0.0, False
                heal_at = None
            if up_at is None and now >= fault_at:
                roll = rng.random()
                if roll < 0.35:  # flap: down, then back on the same port
                    peer.stop()
                    counts.peer_restarts += 1
                    up_at = time.monotonic() + rng.uniform(0.1, 2.0)
                elif roll < 0.6:
                    peer.busy_rate = rng.choice((0.2, 0.5, 0.9))
                    counts.busy_toggles += 1
                    heal_at = now + rng.uniform(0.5, 3.0)
                elif roll < 0.85:
                    peer.close_abort = rng.random() < 0.3
                    peer.close_after = rng.randint(1, 5)
                    counts.close_afters += 1
                elif roll < 0.95:
                    peer.settle_delay = rng.uniform(0.05, 0.5)
                    counts.settle_delays += 1
                    heal_at = now + rng.uniform(0.5, 2.0)
                else:
                    peer.auth_fail = True
                    counts.auth_fails += 1
                    heal_at = now + rng.uniform(0.3, 1.5)
                fault_at = time.monotonic() + rng.uniform(0.5, 3.0)
            time.sleep(0.05)
            now = time.monotonic()

    def wind_down(self) -> Optional[Dict[str, Any]]:
        """Heal the peer, stop writers and follower cleanly, run one final bounded drain."""
        self.heal_peer()
        for proc in self.writers:
            if proc is not None:
                # SIGTERM before the writer installed its handler would kill it, not stop it
                proc.wait_for("OPENING", timeout=30.0)
                proc.terminate()
        for slot, proc in enumerate(self.writers):
            if proc is None:
                continue
            self.writers[slot] = None
            rc = self.reap(proc, timeout=30.0)
            if rc != 0 or proc.done is None:
                self.failures.append(f"writer did not close cleanly: {proc.describe()}")
        if self.drainer is not None:
            proc, self.drainer = self.drainer, None
            proc.terminate()
            rc = self.reap(proc, timeout=45.0)
            if rc not in (0, 1) or not any(ln.startswith("{") for ln in proc.lines):
                self.failures.append(f"follower did not stop cleanly: {proc.describe()}")
        cmd = [*CLI, "drain", self.spool_dir, "--connection-string", self.conn]
        cmd += ["--timeout", str(self.args.final_timeout), "--json"]
        try:
            final = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=self.args.final_timeout + 60,
                check=False,
                env=self.env,
                cwd=str(ROOT),
            )
        except subprocess.TimeoutExpired as exc:
            self.failures.append(f"final drain hung: {exc}")
            return None
        lines = [ln for ln in final.stdout.splitlines() if ln.startswith("{")]
        summary: Optional[Dict[str, Any]] = json.loads(lines[-1]) if lines else None
        if final.returncode != 0:
            self.failures.append(
                f"final drain exit {final.returncode}: {final.stdout[-500:]} {final.stderr[-2000:]}"
            )
        return summary

    # -- the checks -----------------------------------------------------------------------

    def check(self) -> Dict[str, Any]:
        from cerbistream_spool import verify  # noqa: PLC0415

        failures = self.failures
        first_body: Dict[str, bytes] = {}
        copies: collections.Counter[str] = collections.Counter()
        logids: Dict[str, Set[str]] = {}  # soak_id -> LogIds it travelled under
        bad_bodies = 0
        for message_id, entity, content_type, body in list(self.accepted):
            copies[message_id] += 1
            if body != first_body.setdefault(message_id, body):
                bad_bodies += 1
                if bad_bodies <= 5:
                    failures.append(f"MessageId {message_id} sent with two different bodies")
                continue
            if copies[message_id] > 1:
                continue
            try:
                event = json.loads(body.decode("utf-8"))
                soak_id = event["RawPayload"].get("soak_id")
                log_id = event["LogId"]
            except Exception as exc:
                bad_bodies += 1
                failures.append(f"MessageId {message_id}: undecodable body ({exc}): {body[:200]!r}")
                continue
            if log_id != message_id or entity != QUEUE or content_type != "application/json":
                bad_bodies += 1
                failures.append(
                    f"MessageId {message_id}: LogId {log_id} entity {entity} type {content_type}"
                )
            if isinstance(soak_id, str):
                logids.setdefault(soak_id, set()).add(message_id)
        split = {s: ids for s, ids in logids.items() if len(ids) > 1}
        if split:
            failures.append(f"{len(split)} soak_ids spooled twice: {list(split.items())[:5]}")

        report = verify(self.spool_dir)
        failures += [f"verify: {p}" for p in report.problems[:20]]
        if report.pending:
            failures.append(f"{report.pending} events still pending after the final drain")
        lost = sorted(s for s in self.reported if s not in logids)
        explained = self.explained(lost, report.gaps)
        unexplained = [s for s in lost if s not in explained]
        if unexplained:
            where = [(s, self.reported[s]) for s in unexplained[:10]]
            failures.append(f"{len(unexplained)} returned emits never delivered: {where}")
        noisy = [p for p in self.finished if "Traceback" in p.stderr]
        for proc in noisy[:3]:  # not a verdict by itself: shown for the reader of the run
            tail = proc.stderr.strip().splitlines()[-1:]
            print(f"  note: {proc.tag} (rc {proc.returncode}) stderr ends {tail}", file=sys.stderr)
        return {
            "tracebacks": len(noisy),
            "emitted": len(self.reported),
            "delivered_unique": len(first_body),
            "duplicates": sum(copies.values()) - len(copies),
            "bad_bodies": bad_bodies,
            "lost": len(lost),
            "unexplained_losses": len(unexplained),
            "gaps": len(report.gaps),
            "dead_letters": len(self.dead_letter_docs()),
            "pending": report.pending,
            "verify": "ok" if report.valid else f"FAILED({len(report.problems)})",
        }

    def dead_letter_docs(self) -> List[Dict[str, Any]]:
        directory = os.path.join(self.spool_dir, "deadletter")
        docs = []
        with contextlib.suppress(FileNotFoundError):
            for name in sorted(os.listdir(directory)):
                path = os.path.join(directory, name)
                with contextlib.suppress(OSError, ValueError), open(path, encoding="utf-8") as fh:
                    docs.append(json.load(fh))
        return docs

    def explained(self, lost: List[str], gaps: List[Dict[str, Any]]) -> Set[str]:
        """Lost soak_ids the spool itself accounts for: dead-lettered, or inside a gap."""
        out: Set[str] = set()
        for doc in self.dead_letter_docs():
            with contextlib.suppress(Exception):
                soak_id = json.loads(doc["body"])["RawPayload"].get("soak_id")
                if soak_id in lost:
                    out.add(soak_id)
        ranges = [
            (g.get("lane"), g.get("first_seq"), g.get("last_seq"))
            for g in gaps
            if g.get("reason") != "dead-letter"
        ]
        for soak_id in lost:
            lane, seq = self.reported[soak_id]
            if any(
                ln == lane and isinstance(lo, int) and isinstance(hi, int) and lo <= seq <= hi
                for ln, lo, hi in ranges
            ):
                out.add(soak_id)
        return out

    def cleanup(self) -> None:
        """Kill and reap every child still running, stop the peer (bounded)."""
        live = [p for p in [*self.writers, self.drainer] if p is not None]
        for proc in live:
            proc.kill()
        for proc in live:
            with contextlib.suppress(Exception):
                self.reap(proc, timeout=10.0)
        self.writers = [None] * len(self.writers)
        self.drainer = None
        if self.peer is not None:
            self.peer.stop()


def soak_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="soak.py", description="end-to-end kill -9 chaos soak")
    parser.add_argument("--seconds", type=float, default=60.0, help="chaos phase length")
    parser.add_argument("--writers", type=int, default=3, help="concurrent writer processes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=250.0, help="emits/s per writer (0: max)")
    parser.add_argument("--final-timeout", type=float, default=90.0, help="final drain bound")
    parser.add_argument("--spool-dir", help="default: a new temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the spool directory")
    args = parser.parse_args(argv)
    if args.writers < 1 or args.seconds <= 0:
        parser.error("--writers must be >= 1 and --seconds > 0")

    from tools.amqp_peer import LocalPeer  # noqa: PLC0415 — heavy; writers never need it

    logging.getLogger("proton").setLevel(logging.CRITICAL)  # BrokenPipe noise on flaps
    started = time.monotonic()
    temp = None if args.spool_dir else tempfile.mkdtemp(prefix="cerbisoak-")
    spool_dir = os.path.abspath(args.spool_dir or os.path.join(str(temp), "spool"))
    # a new, empty spool (drain refuses a directory without lanes/ or locks/)
    os.makedirs(os.path.join(spool_dir, "locks"), mode=0o700, exist_ok=True)
    soak = Soak(args, spool_dir, random.Random(args.seed), child_env())
    soak.writers = [None] * args.writers
    soak.incarnation = [0] * args.writers

    def on_term(signum: int, frame: Optional[FrameType]) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    result: Dict[str, Any] = {}
    interrupted = False
    try:
        soak.peer = LocalPeer.start(seed=args.seed, max_records=1000, on_accept=soak.on_accept)
        soak.conn = soak.peer.connection_string()
        for slot in range(args.writers):
            soak.start_writer(slot)
        soak.start_drainer()
        soak.chaos()
        soak.wind_down()
        result = soak.check()
    except KeyboardInterrupt:
        interrupted = True
        soak.failures.append("interrupted")
    except Exception as exc:
        soak.failures.append(f"soak raised {type(exc).__name__}: {exc}")
    finally:
        soak.cleanup()
        signal.signal(signal.SIGTERM, previous)
    c = soak.counts
    fields = {
        "writers": args.writers,
        "seconds": f"{args.seconds:g}",
        "seed": args.seed,
        "writer_kills": c.writer_kills,
        "verifies_after_kill": c.verifies_after_kill,
        "drainer_kills": c.drainer_kills,
        "peer_restarts": c.peer_restarts,
        "busy_toggles": c.busy_toggles,
        "close_afters": c.close_afters,
        "settle_delays": c.settle_delays,
        "auth_fails": c.auth_fails,
        **{k: result.get(k, "?") for k in ("emitted", "delivered_unique", "duplicates")},
        **{k: result.get(k, "?") for k in ("bad_bodies", "lost", "unexplained_losses", "gaps")},
        **{k: result.get(k, "?") for k in ("dead_letters", "pending", "tracebacks", "verify")},
        "failures": len(soak.failures),
        "elapsed": f"{time.monotonic() - started:.1f}s",
    }
    print("soak " + " ".join(f"{k}={v}" for k, v in fields.items()), flush=True)
    for failure in soak.failures[:20]:
        print(f"  {failure}", file=sys.stderr)
    if soak.failures:
        print(f"  spool kept at {spool_dir}", file=sys.stderr)
        return 130 if interrupted else 1
    if temp is not None and not args.keep:
        shutil.rmtree(temp, ignore_errors=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``writer ...`` runs a writer process; anything else the soak."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "writer":
        return writer_main(argv[1:])
    return soak_main(argv)


if __name__ == "__main__":
    sys.exit(main())
