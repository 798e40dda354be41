"""Spool benchmarks: every figure beside a baseline measured in the same process.

Run from the repository root::

    python tools/bench/spool_bench.py            # full run (~1.3 GB of temp data, < 5 min)
    python tools/bench/spool_bench.py --quick    # smoke run (~30 MB, well under a minute)
    python tools/bench/spool_bench.py --json     # machine-readable result on stdout

Sections (docs/BENCHMARKS.md explains how to read them):

1. append throughput per fsync mode (``always`` with 1 and 8 threads,
   ``interval``, ``never``) for a ~600-byte ScoringEventDto-shaped dict; the
   baseline encodes the same dict with ``msgpack.packb`` and writes it with
   ``f.write`` to a plain buffered file (plus ``flush`` + ``os.fsync`` per
   record, same thread count, for the ``always`` rows);
2. ``verify`` MB/s over a ~200 MB spool; baselines: a plain ``f.read()`` of
   the same segment files, and ``f.read()`` + ``zlib.crc32`` over the same bytes
   (plus, for context, + one bulk SHA-256 over them);
3. open time (``SpoolWriter(...)``, recovery included) with ~1 MB, ~100 MB and
   ~1 GB of pending records; baseline: opening an empty spool, interleaved.

Peak RSS of ``verify`` is measured in a child process (``resource.getrusage``)
so the benchmark's own allocations do not count. All data lives in one temp
directory that is removed on exit; free space is checked before starting.
Sizes and rates use MB = 10**6 bytes.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import msgpack

from cerbistream_spool import SpoolConfig, SpoolWriter, verify
from cerbistream_spool.spool.record import encode_body

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:  # tools/ is not installed: run as a script from anywhere
    sys.path.insert(0, REPO)

from tools.bench.common import log, machine, median  # noqa: E402

MB = 1_000_000
BIG_CAP = 8 * 1024**3  # max_spool_bytes for every benchmark spool: never drop records
AGE = 3600.0  # segment_max_age_s: no age rotation in the middle of a measurement
POOL_SIZE = 512


@dataclass(frozen=True)
class Plan:
    """How much work each section does."""

    duration_s: float  # per append run (or until max_records)
    max_records: int  # per append run, all threads together
    reps: int  # append runs per row and side (median taken)
    verify_mb: int
    verify_runs: int
    backlogs_mb: Tuple[int, ...]
    opens: int  # timed opens per backlog (and as many empty ones, interleaved)
    rss_on_largest: bool  # also run verify in a child on the largest backlog


FULL = Plan(2.0, 300_000, 3, 200, 3, (1, 100, 1000), 7, True)
QUICK = Plan(0.5, 60_000, 1, 30, 2, (1, 30), 5, False)


# -- the event -----------------------------------------------------------------------------


def make_events(n: int, seed: int = 20241123) -> List[Dict[str, Any]]:
    """``n`` distinct ScoringEventDto-shaped dicts (~600 bytes msgpack-encoded each)."""
    rng = random.Random(seed)
    base = datetime.datetime(2024, 11, 23, 10, 43, 0, tzinfo=datetime.timezone.utc)
    events = []
    for i in range(n):
        ts = base + datetime.timedelta(microseconds=rng.randrange(10**9))
        user = rng.randrange(10**6)
        events.append(
            {
                "SchemaVersion": "1.0",
                "TenantId": "contoso-eu",
                "AppName": "checkout-api",
                "Environment": "production",
                "Runtime": "python",
                "LogId": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "CorrelationId": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "TimestampUtc": ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
                "GovernanceProfile": "pci-strict",
                "LogLevel": "Warning",
                "Score": None,
                "Violations": [
                    {
                        "RuleId": "PII-EMAIL-001",
                        "Code": "ForbiddenField",
                        "Field": "email",
                        "Severity": "Error",
                        "Message": "Field 'email' is forbidden",
                    }
                ],
                "GovernanceFlags": {"GovernanceRelaxed": False},
                "RawPayload": {
                    "logger": "checkout.payments",
                    "level": "WARNING",
                    "message": (
                        f"Payment retried for order {100000 + i} (attempt {1 + i % 3} of 3)"
                    ),
                    "module": "payments",
                    "function": "authorize",
                    "user_id": f"u-{user:06d}",
                    "email": f"customer.{user:06d}@example.com",
                },
            }
        )
    return events


def pack(event: Any) -> bytes:
    """The baseline's encoding; asserted byte-identical to the spool's record body."""
    return msgpack.packb(event, use_bin_type=True)


# -- helpers -------------------------------------------------------------------------------


def spool_bytes(spool_dir: str) -> Tuple[int, List[str]]:
    """(total bytes, segment paths) of every lane of ``spool_dir``."""
    paths: List[str] = []
    lanes = os.path.join(spool_dir, "lanes")
    for lane in sorted(os.listdir(lanes)) if os.path.isdir(lanes) else []:
        ldir = os.path.join(lanes, lane)
        paths.extend(os.path.join(ldir, n) for n in sorted(os.listdir(ldir)) if n.endswith(".seg"))
    return sum(os.path.getsize(p) for p in paths), paths


def run_threads(
    threads: int, plan: Plan, make_worker: Callable[[int], Callable[[int], None]]
) -> float:
    """Run ``threads`` workers for ``plan.duration_s`` (or ``plan.max_records``); records/s."""
    stop = threading.Event()
    barrier = threading.Barrier(threads + 1)
    counts = [0] * threads
    quota = plan.max_records // threads

    def body(t: int) -> None:
        work = make_worker(t)
        barrier.wait()
        n = 0
        while n < quota and not stop.is_set():
            work(n)
            n += 1
        counts[t] = n

    pool = [threading.Thread(target=body, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    barrier.wait()
    start = time.perf_counter()
    timer = threading.Timer(plan.duration_s, stop.set)
    timer.start()
    for th in pool:
        th.join()
    elapsed = time.perf_counter() - start
    timer.cancel()
    return sum(counts) / elapsed


# -- 1. append throughput ------------------------------------------------------------------


def bench_spool_append(
    root: str, mode: str, threads: int, plan: Plan, events: List[Dict[str, Any]]
) -> float:
    d = tempfile.mkdtemp(prefix=f"append-{mode}-", dir=root)
    cfg = SpoolConfig(fsync=mode, max_spool_bytes=BIG_CAP, segment_max_age_s=AGE)
    writer = SpoolWriter(d, cfg)
    n_ev = len(events)

    def make_worker(t: int) -> Callable[[int], None]:
        append = writer.append
        offset = t * 61

        def work(n: int) -> None:
            append(events[(n + offset) % n_ev])

        return work

    try:
        rate = run_threads(threads, plan, make_worker)
    finally:
        writer.close()
        shutil.rmtree(d)
    return rate


def bench_file_append(
    root: str, fsync: bool, threads: int, plan: Plan, events: List[Dict[str, Any]]
) -> float:
    path = os.path.join(root, "baseline.bin")
    n_ev = len(events)
    lock = threading.Lock()
    with open(path, "wb") as f:  # default buffering: a plain buffered file
        fd = f.fileno()

        def make_worker(t: int) -> Callable[[int], None]:
            write, flush = f.write, f.flush
            offset = t * 61

            if not fsync:

                def work(n: int) -> None:
                    data = pack(events[(n + offset) % n_ev])
                    with lock:
                        write(data)

                return work

            def work_fsync(n: int) -> None:
                data = pack(events[(n + offset) % n_ev])
                with lock:
                    write(data)
                    flush()
                os.fsync(fd)  # one fsync per record, no group commit

            return work_fsync

        try:
            rate = run_threads(threads, plan, make_worker)
        finally:
            f.flush()
    os.unlink(path)
    return rate


def section_append(root: str, plan: Plan, events: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    rows = []
    for mode, threads in (("always", 1), ("always", 8), ("interval", 1), ("never", 1)):
        spool_rates: List[float] = []
        base_rates: List[float] = []
        for _ in range(plan.reps):  # alternate the two sides so drift hits both
            spool_rates.append(bench_spool_append(root, mode, threads, plan, events))
            base_rates.append(bench_file_append(root, mode == "always", threads, plan, events))
        spool, base = median(spool_rates), median(base_rates)
        rows.append(
            {
                "mode": mode,
                "threads": threads,
                "spool_rec_s": spool,
                "baseline": "write+flush+fsync per record"
                if mode == "always"
                else "buffered write",
                "baseline_rec_s": base,
                "ratio": spool / base,
                "spool_runs": spool_rates,
                "baseline_runs": base_rates,
            }
        )
        log(
            f"  append {mode:8s} x{threads}: {spool:10.0f} rec/s  baseline {base:10.0f}  "
            f"ratio {spool / base:.3f}"
        )
    return rows


# -- 2. verify -----------------------------------------------------------------------------


def bench_read(paths: List[str], crc: bool, sha: bool) -> float:
    start = time.perf_counter()
    c = 0
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            data = f.read()
        if crc:
            c = zlib.crc32(data, c)
        if sha:
            h.update(data)
    return time.perf_counter() - start


def section_verify(spool_dir: str, plan: Plan) -> Dict[str, Any]:
    total, paths = spool_bytes(spool_dir)
    times: Dict[str, List[float]] = {
        "verify": [],
        "read": [],
        "read+crc32": [],
        "read+crc32+sha256": [],
    }
    report = None
    bench_read(paths, crc=False, sha=False)  # same page-cache state for every side
    for _ in range(plan.verify_runs):
        start = time.perf_counter()
        report = verify(spool_dir)
        times["verify"].append(time.perf_counter() - start)
        times["read"].append(bench_read(paths, crc=False, sha=False))
        times["read+crc32"].append(bench_read(paths, crc=True, sha=False))
        times["read+crc32+sha256"].append(bench_read(paths, crc=True, sha=True))
    assert report is not None
    if not report.valid:
        raise SystemExit(f"verify found problems in the benchmark spool: {report.problems[:3]}")
    rates = {k: total / median(v) / MB for k, v in times.items()}
    out = {
        "spool_bytes": total,
        "segments": len(paths),
        "records": report.records,
        "verify_mb_s": rates["verify"],
        "baselines_mb_s": {k: v for k, v in rates.items() if k != "verify"},
        "ratios": {k: rates["verify"] / v for k, v in rates.items() if k != "verify"},
        "runs_s": times,
    }
    log(
        f"  verify {total / MB:.0f} MB: {rates['verify']:.1f} MB/s  "
        + "  ".join(f"{k} {v:.0f} MB/s" for k, v in rates.items() if k != "verify")
    )
    return out


_RSS_CHILD = r"""
import json, resource, sys, time
from cerbistream_spool import verify
scale = 1 if sys.platform == "darwin" else 1024
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
before = peak()
start = time.perf_counter()
report = verify(sys.argv[1])
elapsed = time.perf_counter() - start
after = peak()
print(json.dumps({"rss_before": before, "rss_peak": after, "seconds": elapsed,
                  "valid": report.valid, "records": report.records}))
"""
# Linux carries the spawner's RSS high-water mark into an exec'd child's ru_maxrss
# (vfork/fork + exec), so the measuring child is started by a tiny launcher whose own
# high-water mark (~10 MB) is below the child's post-import RSS.
_LAUNCHER = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"


def section_rss(spool_dir: str) -> Dict[str, Any]:
    """Peak RSS of ``verify`` in a fresh child; baseline: the same child's peak before verify."""
    total, paths = spool_bytes(spool_dir)
    child = [sys.executable, "-c", _RSS_CHILD, spool_dir]
    out = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *child], check=True, capture_output=True, text=True
    )
    res = json.loads(out.stdout)
    res.update(
        spool_bytes=total,
        largest_segment=max(os.path.getsize(p) for p in paths),
        growth=res["rss_peak"] - res["rss_before"],
        verify_mb_s=total / res["seconds"] / MB,
    )
    log(
        f"  verify RSS on {total / MB:.0f} MB: peak {res['rss_peak'] / MB:.1f} MB "
        f"(+{res['growth'] / MB:.1f} MB over the peak before verify),"
        f" {res['verify_mb_s']:.1f} MB/s"
    )
    return res


# -- 3. open time --------------------------------------------------------------------------


def open_config() -> SpoolConfig:
    return SpoolConfig(max_spool_bytes=BIG_CAP, segment_max_age_s=AGE)


def time_open(spool_dir: str) -> Tuple[float, List[str]]:
    start = time.perf_counter()
    writer = SpoolWriter(spool_dir, open_config())
    elapsed = time.perf_counter() - start
    notes = writer.recovery_notes
    writer.close()
    return elapsed, notes


def grow(spool_dir: str, target: int, events: List[Dict[str, Any]]) -> None:
    """Append events (fsync="never", default 4 MiB segments) until the spool holds ``target``."""
    cfg = SpoolConfig(fsync="never", max_spool_bytes=BIG_CAP, segment_max_age_s=AGE)
    bodies = [encode_body(e) for e in events]  # the same bytes append() would write
    with SpoolWriter(spool_dir, cfg) as writer:
        n = 0
        while True:
            missing = target - writer.stats()["pending_bytes"]
            if missing <= 0:
                return
            for _ in range(min(8192, 1 + missing // 1024)):  # re-check before overshooting
                writer.append_body(bodies[n % len(bodies)])
                n += 1


def section_open(spool_dir: str, empty_dir: str, backlog_mb: int, plan: Plan) -> Dict[str, Any]:
    total, paths = spool_bytes(spool_dir)
    empty: List[float] = []
    full: List[float] = []
    notes: List[str] = []
    for _ in range(plan.opens):  # interleaved: E, B, E, B, ...
        empty.append(time_open(empty_dir)[0])
        t, n = time_open(spool_dir)
        full.append(t)
        notes.extend(n)
    e, b = median(empty), median(full)
    row = {
        "backlog_target_mb": backlog_mb,
        "backlog_bytes": total,
        "segments": len(paths),
        "last_segment_bytes": os.path.getsize(paths[-1]),
        "open_ms": b * 1e3,
        "empty_open_ms": e * 1e3,
        "ratio": b / e,
        "open_runs_ms": [x * 1e3 for x in full],
        "empty_runs_ms": [x * 1e3 for x in empty],
        "recovery_notes": sorted(set(notes)),
    }
    log(
        f"  open with {total / MB:.0f} MB ({len(paths)} segments): {b * 1e3:.2f} ms  "
        f"empty {e * 1e3:.2f} ms  ratio {b / e:.2f}"
    )
    return row


# -- main ----------------------------------------------------------------------------------


def check_space(root: str, plan: Plan) -> None:
    need = (max(*plan.backlogs_mb, plan.verify_mb) + 600) * MB * 3 // 2
    free = shutil.disk_usage(root).free
    if free < need:
        raise SystemExit(
            f"not enough free space in {root}: {free / MB:.0f} MB free, {need / MB:.0f} MB needed"
            " (try --quick or --tmpdir)"
        )


def run(plan: Plan, root: str) -> Dict[str, Any]:
    events = make_events(POOL_SIZE)
    sizes = [len(pack(e)) for e in events]
    assert all(pack(e) == encode_body(e) for e in events[:16]), "baseline bytes differ"
    result: Dict[str, Any] = {
        "machine": machine(),
        "event_bytes_mean": sum(sizes) / len(sizes),
        "plan": plan.__dict__,
    }
    started = time.perf_counter()

    log("1. append throughput")
    result["append"] = section_append(root, plan, events)

    log("2/3. growing one spool: open time at each backlog, verify at its size")
    spool_dir = os.path.join(root, "backlog")
    empty_dir = os.path.join(root, "empty")
    time_open(empty_dir)  # creates the layout; later opens see only OPEN/CLOSE markers
    levels = sorted(set(plan.backlogs_mb) | {plan.verify_mb})
    result["open"] = []
    for level in levels:
        t0 = time.perf_counter()
        grow(spool_dir, level * MB, events)
        log(
            f"  grew to {spool_bytes(spool_dir)[0] / MB:.0f} MB in {time.perf_counter() - t0:.1f} s"
        )
        if level in plan.backlogs_mb:
            result["open"].append(section_open(spool_dir, empty_dir, level, plan))
        if level == plan.verify_mb:
            result["verify"] = section_verify(spool_dir, plan)
            result["verify"]["rss"] = section_rss(spool_dir)
    if plan.rss_on_largest and levels[-1] != plan.verify_mb:
        result["verify_largest"] = section_rss(spool_dir)
    result["elapsed_s"] = time.perf_counter() - started
    result["machine"]["loadavg_at_end"] = list(os.getloadavg())
    return result


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def markdown(res: Dict[str, Any]) -> str:
    lines = []
    m = res["machine"]
    lines.append(
        f"Code {m['code']}. Machine: {m['nproc']} CPUs, {m['implementation']} {m['python']},"
        f" {m['platform']},"
        f" msgpack {m['msgpack']}; {m['date']};"
        f" event {res['event_bytes_mean']:.0f} bytes msgpack; total {res['elapsed_s']:.0f} s;"
        f" 1-min load average {m['loadavg_at_start'][0]:.2f} at start,"
        f" {m['loadavg_at_end'][0]:.2f} at end."
    )
    lines += [
        "",
        "### Append throughput",
        "",
        "| fsync | threads | spool rec/s | spool µs/rec | baseline | baseline rec/s | ratio |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for r in res["append"]:
        lines.append(
            f"| {r['mode']} | {r['threads']} | {fmt_rate(r['spool_rec_s'])}"
            f" | {1e6 / r['spool_rec_s']:.1f} | {r['baseline']} ({r['threads']} thr)"
            f" | {fmt_rate(r['baseline_rec_s'])} | {r['ratio']:.2f} |"
        )
    v = res["verify"]
    lines += [
        "",
        f"### verify ({v['spool_bytes'] / MB:.0f} MB, {v['segments']} segments,"
        f" {v['records']:,} records, warm page cache)",
        "",
        "| what | MB/s | verify / this |",
        "|---|---:|---:|",
        f"| `verify()` | {v['verify_mb_s']:.1f} | — |",
    ]
    for k, rate in v["baselines_mb_s"].items():
        lines.append(f"| baseline: {k} | {rate:.0f} | {v['ratios'][k]:.3f} |")
    lines += [
        "",
        "### verify peak RSS (child process, `resource.getrusage`)",
        "",
        "| spool MB | largest segment MB | peak RSS before verify MB | peak RSS MB | growth MB"
        " | verify MB/s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for rss in (v["rss"], res.get("verify_largest")):
        if rss:
            lines.append(
                f"| {rss['spool_bytes'] / MB:.0f} | {rss['largest_segment'] / MB:.1f}"
                f" | {rss['rss_before'] / MB:.1f}"
                f" | {rss['rss_peak'] / MB:.1f}"
                f" | {rss['growth'] / MB:.1f} | {rss['verify_mb_s']:.1f} |"
            )
    lines += [
        "",
        "### Open time (SpoolWriter construction incl. recovery; median)",
        "",
        "| backlog MB | segments | last segment MB | open ms | empty-spool open ms | ratio |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["open"]:
        lines.append(
            f"| {r['backlog_bytes'] / MB:.0f} | {r['segments']}"
            f" | {r['last_segment_bytes'] / MB:.2f}"
            f" | {r['open_ms']:.2f} | {r['empty_open_ms']:.2f} | {r['ratio']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, short runs")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--tmpdir", default=None, help="where the temp directory goes")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    parent = args.tmpdir or tempfile.gettempdir()
    check_space(parent, plan)
    root = tempfile.mkdtemp(prefix="cerbispool-bench-", dir=parent)
    log(f"temp dir {root} ({'quick' if args.quick else 'full'} plan)")
    try:
        res = run(plan, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    res["command"] = " ".join(["python", "tools/bench/spool_bench.py", *(argv or sys.argv[1:])])
    print(json.dumps(res, indent=2) if args.json else markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
