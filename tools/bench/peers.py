"""Peer benchmarks: SpoolHandler beside other durable/async logging setups, in one run.

Run from the repository root (dev venv with the ``[bench]`` extra)::

    python tools/bench/peers.py            # full run (~5-6 min)
    python tools/bench/peers.py --quick    # 10x fewer records (~1 min)
    python tools/bench/peers.py --json     # machine-readable result on stdout

Workload, identical for every row (one call per record, as in handler_bench.py)::

    logger.info("user %s logged in", uid, extra={"user_id": uid,
                "email": f"u{uid}@example.com", "request_id": rid})

from 1 thread (100,000 records) and from 4 threads (4 x 25,000); ``--quick`` does
10x fewer. Rows (the first one is the reference of every ratio):

- ``file_json``: ``logging.FileHandler`` + the JSON formatter of handler_bench.py;
- ``file_fsync``: the same, plus ``flush`` + ``os.fsync`` in every ``emit``;
- ``queue``: ``QueueHandler`` -> ``QueueListener`` -> FileHandler + JSON;
- ``logstash``: python-logstash-async ``AsynchronousLogstashHandler`` with its SQLite
  buffer (``database_path`` in the temp dir), pointed at a closed 127.0.0.1 port.
  An audit hook in that process refuses every connect/sendto/DNS look-up except
  the closed loopback port, so it cannot reach anything else;
- ``persistqueue``: ``persistqueue.SQLiteQueue(auto_commit=True, multithreading=True)``
  behind a minimal ``logging.Handler`` whose ``emit`` puts the JSON line;
- ``spool_always`` / ``spool_interval`` / ``spool_never``: ``SpoolHandler(fsync=...,
  drain=False, governance_config_path=cerbi_governance.json)``.

Rows whose every record costs an fsync (``file_fsync``, ``persistqueue``,
``spool_always``) log fewer records per run; their time until durable is scaled
linearly to the nominal record count (marked "scaled").

Every run is a fresh child process (started through a tiny launcher so that its
``ru_maxrss`` is its own, see spool_bench.py) and reports:

- records/s: timed records / wall time from a barrier release to the last thread's end;
- p50/p99 emit latency: ``perf_counter_ns`` around every ``logger.info`` call, all threads;
- time until durable: from the barrier release until every record is on disk
  (FileHandler: flush + fsync returned; queue: listener stopped, then fsync;
  logstash: a read-only sqlite3 connection counts rows of its ``event`` table,
  polled every 0.25 s up to a deadline, past it extrapolated at the mean insert
  rate since the producers ended; persistqueue: every ``put`` is a WAL commit
  with ``synchronous=FULL``, so its size when the last call returns;
  SpoolHandler: ``handler.flush()`` returned and ``stats()["durable"]`` reached
  ``accepted``);
- peak RSS: ``ru_maxrss`` of the child after the run minus that of a baseline child
  with the same imports and no workload (same rep);
- bytes on disk per record: apparent size of every file the row left in its
  directory after close (logstash: at the deadline), divided by the records stored.

Reps interleave the rows (rep 1: all rows, rep 2: all rows, ...) so machine drift
hits them alike; tables show medians. The kill -9 test runs once per row (twice for
``spool_always``) in a separate child that logs from one thread and writes every
returned index to a pipe; the parent SIGKILLs it after N/2 returns, then counts the
returned records it can recover from that row's storage.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import json
import logging
import logging.handlers
import os
import queue
import re
import resource
import select
import shutil
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import persistqueue
from logstash_async.handler import AsynchronousLogstashHandler

from cerbistream_spool import SpoolConfig, SpoolHandler, SpoolReader, SpoolWriter, verify

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:  # tools/ is not installed: run as a script from anywhere
    sys.path.insert(0, REPO)

from tools.bench.common import log, machine, run_threads  # noqa: E402
from tools.bench.handler_bench import FsyncFileHandler, JsonFormatter  # noqa: E402

GOVERNANCE = os.path.join(REPO, "cerbi_governance.json")
WARMUP = 50  # untimed records per thread before the barrier
POLL_S = 0.25  # logstash DB poll period
_LAUNCHER = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"

ROWS: List[Tuple[str, str]] = [
    ("file_json", "FileHandler + JSON"),
    ("file_fsync", "FileHandler + JSON + fsync/record"),
    ("queue", "QueueHandler → QueueListener → FileHandler + JSON"),
    ("logstash", "python-logstash-async (SQLite buffer, offline)"),
    ("persistqueue", "persist-queue SQLiteQueue handler"),
    ("spool_always", "SpoolHandler fsync=always"),
    ("spool_interval", "SpoolHandler fsync=interval"),
    ("spool_never", "SpoolHandler fsync=never"),
]
LABEL = dict(ROWS)
FSYNC_ROWS = ("file_fsync", "persistqueue", "spool_always")


@dataclass(frozen=True)
class Plan:
    reps: int
    records: int  # nominal records per run (all threads)
    fsync1: int  # file_fsync / spool_always, 1 thread
    fsync4: int  # ... 4 threads
    pq: int  # persistqueue, any thread count
    ls_deadline_s: float  # logstash: wait this long after the producers for its DB
    kill_reps: int

    def records_for(self, row: str, threads: int) -> int:
        if row == "persistqueue":
            return self.pq
        if row in FSYNC_ROWS:
            return self.fsync1 if threads == 1 else self.fsync4
        return self.records


FULL = Plan(
    reps=3, records=100_000, fsync1=2_000, fsync4=4_000, pq=10_000, ls_deadline_s=25, kill_reps=1
)
QUICK = Plan(reps=3, records=10_000, fsync1=200, fsync4=400, pq=1_000, ls_deadline_s=4, kill_reps=1)
WORKLOADS = (1, 4)


def percentile(sorted_ns: List[int], q: float) -> float:
    """Nearest-rank percentile of sorted samples, in µs."""
    if not sorted_ns:
        return float("nan")
    k = min(len(sorted_ns) - 1, max(0, round(q * len(sorted_ns)) - 1))
    return sorted_ns[k] / 1e3


def dir_bytes(path: str) -> int:
    total = 0
    for base, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # removed meanwhile
                total += os.lstat(os.path.join(base, name)).st_size
    return total


def maxrss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


# -- the network guard of the logstash row ------------------------------------------------------

_NET = {"loopback_connects": 0, "blocked": 0}


def install_network_guard(port: int) -> None:
    """Refuse every connect/sendto/DNS look-up except a connect to 127.0.0.1:``port``."""
    allowed = ("127.0.0.1", port)

    def hook(event: str, args: Tuple[Any, ...]) -> None:
        if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
            addr = args[1] if len(args) > 1 else None
            if event == "socket.connect" and isinstance(addr, tuple) and addr[:2] == allowed:
                _NET["loopback_connects"] += 1
                return
            _NET["blocked"] += 1
            raise PermissionError(f"peers bench: network access to {addr!r} refused")
        if event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr") and (
            args and args[0] not in ("127.0.0.1", b"127.0.0.1")
        ):
            _NET["blocked"] += 1
            raise PermissionError(f"peers bench: name look-up of {args[0]!r} refused")

    sys.addaudithook(hook)


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_port_closed(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return
    raise SystemExit(f"127.0.0.1:{port} accepted a connection; the logstash row needs it closed")


# -- rows: handler + how to wait for durability ---------------------------------------------------


class PersistQueueHandler(logging.Handler):
    """Minimal handler: ``emit`` puts the formatted (JSON) record into a SQLiteQueue."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.queue = persistqueue.SQLiteQueue(path, auto_commit=True, multithreading=True)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put(self.format(record))
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        try:
            self.queue.close()
        finally:
            super().close()


class _Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.n += 1


# finish(t0, total) -> dict with durable_s (from t0), stored, bytes, and row notes
Finish = Callable[[float, int], Dict[str, Any]]


def make_row(row: str, d: str, port: int, ls_deadline_s: float) -> Tuple[logging.Handler, Finish]:
    """The row's handler and the function that waits until ``total`` records are durable."""
    if row in ("file_json", "file_fsync", "queue"):
        path = os.path.join(d, "app.log")
        fh = (FsyncFileHandler if row == "file_fsync" else logging.FileHandler)(
            path, encoding="utf-8"
        )
        fh.setFormatter(JsonFormatter())
        listener = None
        handler: logging.Handler = fh
        if row == "queue":
            q: queue.Queue[logging.LogRecord] = queue.Queue()
            listener = logging.handlers.QueueListener(q, fh)
            listener.start()
            handler = logging.handlers.QueueHandler(q)

        def finish_file(t0: float, total: int) -> Dict[str, Any]:
            if listener is not None:
                listener.stop()  # drains the queue into the FileHandler
            fh.flush()
            os.fsync(fh.stream.fileno())
            t = time.perf_counter() - t0
            fh.close()
            stored = 0
            with open(path, "rb") as f:  # in chunks: reading it whole would inflate peak RSS
                for chunk in iter(lambda: f.read(1 << 16), b""):
                    stored += chunk.count(b"\n")
            return {"durable_s": t, "stored": stored, "bytes": dir_bytes(d)}

        return handler, finish_file

    if row == "persistqueue":
        pqh = PersistQueueHandler(os.path.join(d, "pq"))
        pqh.setFormatter(JsonFormatter())

        def finish_pq(t0: float, total: int) -> Dict[str, Any]:
            size = pqh.queue.qsize()  # every put committed (WAL, synchronous=FULL)
            t = time.perf_counter() - t0
            sync = pqh.queue._putter.execute("PRAGMA synchronous").fetchone()[0]
            jmode = pqh.queue._putter.execute("PRAGMA journal_mode").fetchone()[0]
            pqh.close()
            return {
                "durable_s": t,
                "stored": size,
                "bytes": dir_bytes(d),
                "sqlite": f"journal_mode={jmode} synchronous={sync}",
            }

        return pqh, finish_pq

    if row == "logstash":
        check_port_closed(port)
        install_network_guard(port)
        worker_log = logging.getLogger("LogProcessingWorker")
        worker_log.propagate = False
        counter = _Counter()
        worker_log.addHandler(counter)
        db = os.path.join(d, "logstash.db")
        lsh = AsynchronousLogstashHandler("127.0.0.1", port, database_path=db)

        def finish_ls(t0: float, total: int) -> Dict[str, Any]:
            produced = time.perf_counter() - t0
            deadline = time.perf_counter() + ls_deadline_s
            conn: Optional[sqlite3.Connection] = None
            samples: List[Tuple[float, int]] = []
            count = 0
            while True:
                now = time.perf_counter()
                try:
                    if conn is None:
                        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)
                    count = conn.execute("SELECT count(*) FROM event").fetchone()[0]
                    samples.append((now - t0, count))
                except sqlite3.Error:
                    pass  # not created yet, or busy
                if count >= total or now >= deadline:
                    break
                time.sleep(POLL_S)
            if conn is not None:
                conn.close()
            out: Dict[str, Any] = {
                "stored": count,
                "bytes": dir_bytes(d),
                "produced_s": produced,
                "durable_at_deadline": count,
                "loopback_connects": _NET["loopback_connects"],
                "blocked": _NET["blocked"],
                "worker_warnings": counter.n,
                "polls": [(round(a, 2), c) for a, c in samples[::4]],  # (s since t0, rows)
            }
            if count >= total:
                out["durable_s"] = samples[-1][0]
                out["durable_how"] = "measured"
            else:
                # mean insert rate over the whole post-producer window (checked against a
                # full wait: within -12 %..-2 % at a 25 s deadline, see docs/bench-peers.md)
                tail = [s for s in samples if s[0] >= produced] or samples
                first, last = tail[0], samples[-1]
                rate = (last[1] - first[1]) / max(1e-9, last[0] - first[0])
                out["insert_rate"] = rate
                out["durable_s"] = last[0] + (total - last[1]) / rate if rate > 0 else None
                out["durable_how"] = "extrapolated"
            return out

        return lsh, finish_ls

    if row.startswith("spool_"):
        sh = SpoolHandler(
            os.path.join(d, "spool"),
            tenant_id="bench-tenant",
            app_name="peers-bench",
            environment="bench",
            governance_config_path=GOVERNANCE,
            fsync=row.split("_", 1)[1],
            drain=False,
        )

        def finish_spool(t0: float, total: int) -> Dict[str, Any]:
            sh.flush()
            t = time.perf_counter() - t0
            st = sh.stats()
            if st["durable"] < st["accepted"]:
                raise SystemExit(f"flush returned before durable: {st}")
            if st["dropped"] or st.get("suppressed") or st["last_error"]:
                raise SystemExit(f"SpoolHandler dropped records: {st}")
            sh.close()
            return {
                "durable_s": t,
                "stored": total,  # nothing dropped (checked); verified in the kill test
                "bytes": dir_bytes(d),
                "watermarks": [st["accepted"], st["durable"]],
            }

        return sh, finish_spool

    raise SystemExit(f"unknown row {row!r}")


# -- child: one timed run ----------------------------------------------------------------------


def workload_kwargs(uid: int, rid: str) -> Dict[str, Any]:
    return {"extra": {"user_id": uid, "email": f"u{uid}@example.com", "request_id": rid}}


def bench_logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger


def child_run(spec: Dict[str, Any]) -> Dict[str, Any]:
    if spec["row"] == "baseline":
        return {"maxrss_kb": maxrss_kb()}
    row, threads, records = spec["row"], spec["threads"], spec["records"]
    handler, finish = make_row(row, spec["dir"], spec["port"], spec["ls_deadline_s"])
    logger = bench_logger(f"peers.{row}", handler)
    quota = records // threads
    barrier = threading.Barrier(threads + 1)
    samples = [array.array("q") for _ in range(threads)]
    errors: List[BaseException] = []

    def body(t: int) -> None:
        info, clock, add = logger.info, time.perf_counter_ns, samples[t].append
        base = t * 10_000_000
        try:
            for n in range(WARMUP):
                uid = base + 9_000_000 + n
                info("user %s logged in", uid, **workload_kwargs(uid, "warm"))
            barrier.wait()
            for n in range(quota):
                uid = base + n
                kw = workload_kwargs(uid, f"req-{t}-{n}")
                t0 = clock()
                info("user %s logged in", uid, **kw)
                add(clock() - t0)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    pool = [threading.Thread(target=body, args=(t,)) for t in range(threads)]
    t0, elapsed = run_threads(pool, barrier)
    if errors:
        raise errors[0]
    total = quota * threads + WARMUP * threads
    fin = finish(t0, total)
    lat = sorted(x for s in samples for x in s)
    out = {
        "rec_s": len(lat) / elapsed,
        "p50_us": percentile(lat, 0.50),
        "p99_us": percentile(lat, 0.99),
        "timed": len(lat),
        "total": total,
        "produce_s": elapsed,
        **fin,
        "maxrss_kb": maxrss_kb(),
    }
    out.setdefault("durable_how", "measured")
    if row != "logstash" and fin["stored"] != total:
        raise SystemExit(f"{row}: {fin['stored']} of {total} records stored")
    out["bytes_per_rec"] = fin["bytes"] / fin["stored"] if fin["stored"] else None
    return out


# -- child: kill -9 test ---------------------------------------------------------------------


def child_kill(spec: Dict[str, Any]) -> None:
    """Log ``records`` records; after each call returns, write its index to fd ``spec['fd']``."""
    handler, _finish = make_row(spec["row"], spec["dir"], spec["port"], 0.0)
    logger = bench_logger(f"peers.kill.{spec['row']}", handler)
    fd, pack, info = spec["fd"], struct.Struct("<I").pack, logger.info
    for i in range(spec["records"]):
        info("user %s logged in", i, **workload_kwargs(i, f"req-0-{i}"))
        os.write(fd, pack(i))
    time.sleep(120)  # the parent kills us long before this


_RID = re.compile(rb"req-0-(\d+)")


def recover(row: str, d: str) -> Dict[str, Any]:
    """Indices of the records that ``row``'s storage in ``d`` holds after the kill."""
    found: Set[int] = set()
    note: Dict[str, Any] = {}
    if row in ("file_json", "file_fsync", "queue"):
        with open(os.path.join(d, "app.log"), "rb") as f:
            for line in f:
                try:
                    found.add(int(json.loads(line)["request_id"].rsplit("-", 1)[1]))
                except (ValueError, KeyError):
                    note["torn_lines"] = note.get("torn_lines", 0) + 1
    elif row == "logstash":
        db = os.path.join(d, "logstash.db")
        if os.path.exists(db):  # read-write open: rolls back a hot journal, as a restart would
            conn = sqlite3.connect(db, timeout=5.0)
            try:
                for (text,) in conn.execute("SELECT event_text FROM event"):
                    raw = text if isinstance(text, bytes) else text.encode()
                    found.update(int(m) for m in _RID.findall(raw))
            except sqlite3.OperationalError as exc:  # the worker never created the table
                note["sqlite"] = str(exc)
            conn.close()
    elif row == "persistqueue":
        q = persistqueue.SQLiteQueue(os.path.join(d, "pq"), auto_commit=True)
        note["size"] = q.qsize()
        for item in q.queue():
            found.update(int(m) for m in _RID.findall(item["data"].encode()))
        q.close()
    elif row.startswith("spool_"):
        sd = os.path.join(d, "spool")
        SpoolWriter(sd, SpoolConfig()).close()  # recovery, as the app's restart would
        reader = SpoolReader(sd, remove_idle_lanes=False, from_start=True)
        for batch in reader.batches(max_records=5000, max_bytes=8 << 20):
            for rec in batch.events():
                rid = rec.value()["RawPayload"].get("request_id", "")
                if rid.startswith("req-0-"):
                    found.add(int(rid[6:]))
        rep = verify(sd)
        note["verify_valid"] = rep.valid
        note["verify_problems"] = [p.kind for p in rep.problems][:5]
    return {"found": found, **note}


def kill_test(row: str, records: int, root: str, port: int, rep: int) -> Dict[str, Any]:
    d = tempfile.mkdtemp(prefix=f"kill-{row}-{rep}-", dir=root)
    r, w = os.pipe()
    spec = {"mode": "kill", "row": row, "records": records, "dir": d, "port": port, "fd": w}
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
        pass_fds=(w,),
        stdout=subprocess.DEVNULL,
    )
    os.close(w)
    buf = bytearray()
    returned: Set[int] = set()
    killed_at = None
    deadline = time.monotonic() + 180
    try:
        while True:
            if killed_at is None and (len(buf) // 4 >= records // 2 or time.monotonic() > deadline):
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = len(buf) // 4
            ready, _, _ = select.select([r], [], [], 1.0)
            if not ready:
                if proc.poll() is not None and killed_at is not None:
                    break
                continue
            chunk = os.read(r, 65536)
            if not chunk:
                break
            buf += chunk
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        os.close(r)
    n = len(buf) // 4
    returned.update(struct.unpack(f"<{n}I", bytes(buf[: n * 4])))
    rec = recover(row, d)
    found = rec.pop("found")
    shutil.rmtree(d, ignore_errors=True)
    return {
        "row": row,
        "records": records,
        "returned_at_kill": killed_at,
        "returned": len(returned),
        "recovered": len(found & returned),
        "lost": len(returned - found),
        "recovered_not_returned": len(found - returned),
        "returncode": proc.returncode,
        **rec,
    }


# -- parent --------------------------------------------------------------------------------------


def run_child(spec: Dict[str, Any]) -> Dict[str, Any]:
    child = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    proc = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *child],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"child {spec['row']} failed ({proc.returncode}):\n{proc.stderr}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def summarise(
    plan: Plan,
    threads: int,
    rows: List[str],
    runs: Dict[str, List[Dict[str, Any]]],
    base: List[Dict[str, Any]],
) -> List[Dict[str, Any]]:
    base_rss = statistics.median(b["maxrss_kb"] for b in base)
    out = []
    for row in rows:
        rs = runs[row]
        n = plan.records_for(row, threads)
        scale = plan.records / n
        durs = [r["durable_s"] * scale for r in rs if r.get("durable_s") is not None]
        out.append(
            {
                "row": row,
                "label": LABEL[row],
                "threads": threads,
                "records_per_run": n,
                "rec_s": statistics.median(r["rec_s"] for r in rs),
                "rec_s_runs": [r["rec_s"] for r in rs],
                "p50_us": statistics.median(r["p50_us"] for r in rs),
                "p99_us": statistics.median(r["p99_us"] for r in rs),
                "durable_s": statistics.median(durs) if durs else None,
                "durable_s_runs": durs,
                "durable_how": sorted({r["durable_how"] for r in rs}),
                "durable_scaled": scale != 1.0,
                "rss_mb": (statistics.median(r["maxrss_kb"] for r in rs) - base_rss) / 1024,
                "bytes_per_rec": statistics.median(r["bytes_per_rec"] for r in rs),
                "extra": {
                    k: [r[k] for r in rs]
                    for k in (
                        "durable_at_deadline",
                        "insert_rate",
                        "produced_s",
                        "loopback_connects",
                        "blocked",
                        "worker_warnings",
                        "sqlite",
                    )
                    if k in rs[0]
                },
            }
        )
    ref = out[0]
    for o in out:
        o["ratio_rec_s"] = o["rec_s"] / ref["rec_s"]
        o["ratio_durable"] = (
            o["durable_s"] / ref["durable_s"] if o["durable_s"] and ref["durable_s"] else None
        )
    return out


def run(plan: Plan, root: str, rows: List[str], do_kill: bool) -> Dict[str, Any]:
    res: Dict[str, Any] = {
        "machine": machine(
            sqlite=sqlite3.sqlite_version,
            **{"python-logstash-async": version("python-logstash-async")},
            **{"persist-queue": version("persist-queue")},
        ),
        "plan": plan.__dict__,
        "rows": rows,
    }
    port = closed_port()
    res["closed_port"] = port
    started = time.perf_counter()
    tables = []
    for threads in WORKLOADS:
        runs: Dict[str, List[Dict[str, Any]]] = {row: [] for row in rows}
        base: List[Dict[str, Any]] = []
        for rep in range(plan.reps):
            base.append(run_child({"mode": "run", "row": "baseline"}))
            for row in rows:
                d = tempfile.mkdtemp(prefix=f"{row}-{threads}-{rep}-", dir=root)
                spec = {
                    "mode": "run",
                    "row": row,
                    "threads": threads,
                    "records": plan.records_for(row, threads),
                    "dir": d,
                    "port": port,
                    "ls_deadline_s": plan.ls_deadline_s,
                }
                try:
                    r = run_child(spec)
                finally:
                    shutil.rmtree(d, ignore_errors=True)
                runs[row].append(r)
                log(
                    f"  x{threads} rep {rep + 1} {row:15s} {r['rec_s']:9.0f} rec/s p50"
                    f" {r['p50_us']:7.1f} p99 {r['p99_us']:8.1f} µs durable"
                    f" {r['durable_s'] or float('nan'):8.3f} s ({r['durable_how']}) rss"
                    f" {r['maxrss_kb'] / 1024:6.1f} MB {r['bytes_per_rec'] or 0:6.0f} B/rec"
                )
        tables.append(
            {
                "threads": threads,
                "summary": summarise(plan, threads, rows, runs, base),
                "runs": runs,
                "baseline_rss_kb": [b["maxrss_kb"] for b in base],
            }
        )
    res["tables"] = tables
    kills = []
    if do_kill:
        for row in rows:
            for rep in range(plan.kill_reps + (1 if row == "spool_always" else 0)):
                k = kill_test(row, plan.records_for(row, 1), root, port, rep)
                kills.append(k)
                log(
                    f"  kill -9 {row:15s} returned {k['returned']:7d} recovered"
                    f" {k['recovered']:7d} lost {k['lost']:7d}"
                )
    res["kill"] = kills
    res["elapsed_s"] = time.perf_counter() - started
    res["machine"]["loadavg_at_end"] = list(os.getloadavg())
    return res


# -- output --------------------------------------------------------------------------------------


def fmt(x: Optional[float], nd: int = 0) -> str:
    return "—" if x is None else f"{x:,.{nd}f}"


def markdown(res: Dict[str, Any]) -> str:
    m, plan = res["machine"], res["plan"]
    lines = [
        f"Code {m['code']}. Machine: {m['nproc']} CPUs, {m['implementation']} {m['python']},"
        f" {m['platform']}, SQLite {m['sqlite']}, msgpack {m['msgpack']},"
        f" python-logstash-async {m['python-logstash-async']},"
        f" persist-queue {m['persist-queue']}; {m['date']}; {plan['reps']} reps per row"
        f" (medians); total {res['elapsed_s']:.0f} s; 1-min load average"
        f" {m['loadavg_at_start'][0]:.2f} at start, {m['loadavg_at_end'][0]:.2f} at end.",
    ]
    n = plan["records"]
    for t in res["tables"]:
        th = t["threads"]
        lines += [
            "",
            f"**{th} thread{'s' if th > 1 else ''}, {n:,} records"
            f"{f' ({th} x {n // th:,})' if th > 1 else ''}**",
            "",
            f"| row | records/run | rec/s | ratio | p50 µs | p99 µs | time until {n:,} durable, s"
            " | ratio | peak RSS Δ MB | bytes/rec on disk | rec/s per rep |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for s in t["summary"]:
            how = []
            if s["durable_scaled"]:
                how.append("scaled")
            if "extrapolated" in s["durable_how"]:
                how.append("extrapolated")
            dur = fmt(s["durable_s"], 3 if (s["durable_s"] or 0) < 10 else 1)
            lines.append(
                f"| {s['label']} | {s['records_per_run']:,} | {fmt(s['rec_s'])}"
                f" | **{s['ratio_rec_s']:.2f}** | {s['p50_us']:.1f} | {s['p99_us']:.1f}"
                f" | {dur}{' (' + ', '.join(how) + ')' if how else ''}"
                f" | {fmt(s['ratio_durable'], 2)} | {s['rss_mb']:.1f}"
                f" | {fmt(s['bytes_per_rec'])}"
                f" | {' '.join(f'{x:,.0f}' for x in s['rec_s_runs'])} |"
            )
    if res["kill"]:
        lines += [
            "",
            "**kill -9 mid-run** (1 thread; SIGKILL after N/2 calls had returned)",
            "",
            "| row | N | calls returned | recovered | lost | notes |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for k in res["kill"]:
            notes = []
            if "verify_valid" in k:
                notes.append(f"verify {'valid' if k['verify_valid'] else k['verify_problems']}")
            if k.get("torn_lines"):
                notes.append(f"{k['torn_lines']} torn line(s)")
            if k.get("recovered_not_returned"):
                notes.append(f"+{k['recovered_not_returned']} stored but not yet returned")
            if "sqlite" in k:
                notes.append(f"sqlite: {k['sqlite']}")
            lines.append(
                f"| {LABEL[k['row']]} | {k['records']:,} | {k['returned']:,}"
                f" | {k['recovered']:,} | **{k['lost']:,}** | {'; '.join(notes)} |"
            )
    for t in res["tables"]:
        ls = next((s for s in t["summary"] if s["row"] == "logstash"), None)
        if ls is not None:
            x = ls["extra"]
            rate = x.get("insert_rate") or []
            lines += [
                "",
                f"python-logstash-async, {t['threads']} thread(s): producers done after"
                f" {' '.join(f'{v:.1f}' for v in x.get('produced_s', []))} s; rows in its DB"
                f" at the {res['plan']['ls_deadline_s']:g} s deadline"
                f" {' '.join(f'{v:,}' for v in x.get('durable_at_deadline', []))};"
                f" insert rate {' '.join(f'{v:,.0f}' for v in rate) or '—'} rows/s;"
                f" connects to the closed port"
                f" {' '.join(str(v) for v in x.get('loopback_connects', []))},"
                f" other network calls refused {sum(x.get('blocked', []))}.",
            ]
    lines += ["", "Targets:", ""]
    lines += targets(res)
    return "\n".join(lines)


def targets(res: Dict[str, Any]) -> List[str]:
    out = []
    for t in res["tables"]:
        by = {s["row"]: s for s in t["summary"]}
        th = t["threads"]
        if "spool_interval" in by and "file_json" in by:
            r = by["spool_interval"]["ratio_rec_s"]
            out.append(
                f"- {th} thread(s): SpoolHandler fsync=interval ≥ 1.0x FileHandler+JSON rec/s:"
                f" **{r:.2f}x — {'met' if r >= 1.0 else 'not met'}**"
            )
        ls = by.get("logstash", {}).get("durable_s")
        sp = by.get("spool_interval", {}).get("durable_s")
        if ls and sp:
            r = ls / sp
            others = ", ".join(
                f"{m[6:]} {ls / by[m]['durable_s']:.1f}x"
                for m in ("spool_never", "spool_always")
                if by.get(m, {}).get("durable_s")
            )
            out.append(
                f"- {th} thread(s): time until {res['plan']['records']:,} durable,"
                f" python-logstash-async ÷ SpoolHandler (fsync=interval, the default) ≥ 30x:"
                f" **{r:.1f}x — {'met' if r >= 30 else 'not met'}**"
                + (f" (for information: {others})" if others else "")
            )
    for k in res["kill"]:
        if k["row"] == "spool_always":
            out.append(
                f"- 0 records lost under kill -9 at fsync=always: **{k['lost']} lost of"
                f" {k['returned']:,} returned — {'met' if k['lost'] == 0 else 'not met'}**"
            )
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10x fewer records")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--tmpdir", default=None, help="where the temp directory goes")
    parser.add_argument("--only", default=None, help="comma list of rows (debugging)")
    parser.add_argument("--reps", type=int, default=None, help="override the repetitions")
    parser.add_argument(
        "--ls-deadline", type=float, default=None, help="logstash: seconds to wait for its DB"
    )
    parser.add_argument("--no-kill", action="store_true", help="skip the kill -9 test")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        if spec["mode"] == "kill":
            child_kill(spec)
            return 0
        out = child_run(spec)
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
        os._exit(0)  # the logstash worker is a daemon thread that never finishes offline
    plan = QUICK if args.quick else FULL
    if args.reps or args.ls_deadline is not None:
        plan = Plan(
            **{
                **plan.__dict__,
                **({"reps": args.reps} if args.reps else {}),
                **({"ls_deadline_s": args.ls_deadline} if args.ls_deadline is not None else {}),
            }
        )
    rows = [r for r, _ in ROWS]
    if args.only:
        wanted = args.only.split(",")
        rows = [r for r in rows if r in wanted]
    root = tempfile.mkdtemp(prefix="cerbispool-peers-bench-", dir=args.tmpdir)
    log(f"temp dir {root} ({'quick' if args.quick else 'full'} plan)")
    try:
        res = run(plan, root, rows, not args.no_kill)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    res["command"] = " ".join(["python", "tools/bench/peers.py", *(argv or sys.argv[1:])])
    print(json.dumps(res, indent=2, default=str) if args.json else markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
