"""How many fsync'ed records per second this disk and interpreter allow, with no spool at all.

Run from the repository root::

    python tools/bench/fsync_ceiling.py            # ~30 s
    python tools/bench/fsync_ceiling.py --json

It bounds the ``fsync="always"`` target of docs/BENCHMARKS.md: N threads each
append a 650-byte record (the size of a framed workload event) and wait until
it is on disk, with no logging, no event building and no framing, under four
disciplines:

- ``serial``: write + fsync under one lock, as stdlib ``Handler.handle`` does
  with an fsync in ``emit`` (the baseline of the handler benchmark);
- ``concurrent``: write under a lock, then each thread its own fsync (the
  kernel's journal batches concurrent fsyncs);
- ``group``: write under a lock, then one thread at a time fsyncs for everyone
  written so far while the others wait (group commit, as the spool does);
- ``group-prealloc``: group commit into a file already filled with zeros,
  ``pwrite`` at the next offset and ``fdatasync``: no size or block-allocation
  change per commit, so no journal commit (a layout the spool does not use).

Each runs with and without ``--work-us`` of pure-Python CPU per record (default
15 µs, about what one SpoolHandler record costs before its write), which is what
the GIL serialises between the threads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import timeit
from typing import Any, Callable, Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:  # tools/ is not installed: run as a script from anywhere
    sys.path.insert(0, REPO)

from tools.bench.common import fmt, log, machine, median, run_threads  # noqa: E402

RECORD = b"r" * 650
PREALLOC = 16 * 1024 * 1024
DISCIPLINES = ("serial", "concurrent", "group", "group-prealloc")


def spin_loops(work_us: float) -> int:
    """Loop count of :func:`spin` that takes about ``work_us`` µs here."""
    per = timeit.timeit("spin(1000)", globals={"spin": spin}, number=200) / 200 / 1000
    return max(0, round(work_us * 1e-6 / per))


def spin(loops: int) -> int:
    """Pure-Python CPU work that holds the GIL."""
    x = 0
    for _ in range(loops):
        x += 1
    return x


class File:
    """One file and the state the four disciplines need."""

    def __init__(self, path: str, prealloc: bool) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        if prealloc:
            os.write(self.fd, bytes(PREALLOC))
            os.fsync(self.fd)
        self.lock = threading.Lock()
        self.cond = threading.Condition()
        self.offset = 0
        self.accepted = 0
        self.durable = 0
        self.syncing = False

    def append(self, prealloc: bool) -> int:
        with self.lock:
            if prealloc:
                os.pwrite(self.fd, RECORD, self.offset)
            else:
                os.write(self.fd, RECORD)
            self.offset += len(RECORD)
            self.accepted += 1
            return self.accepted

    def group_sync(self, seq: int, sync: Callable[[int], None]) -> None:
        with self.cond:
            while self.durable < seq:
                if not self.syncing:
                    self.syncing = True
                    upto = self.accepted
                    break
                self.cond.wait()
            else:
                return
        sync(self.fd)
        with self.cond:
            self.syncing = False
            self.durable = max(self.durable, upto)
            self.cond.notify_all()


def run_one(root: str, discipline: str, threads: int, records: int, loops: int) -> float:
    """Records per second for one discipline."""
    prealloc = discipline == "group-prealloc"
    path = os.path.join(root, f"{discipline}-{threads}")
    f = File(path, prealloc)
    per = records // threads
    barrier = threading.Barrier(threads + 1)

    def body() -> None:
        barrier.wait()
        for _ in range(per):
            spin(loops)
            if discipline == "serial":
                with f.lock:
                    os.write(f.fd, RECORD)
                    os.fsync(f.fd)
                continue
            seq = f.append(prealloc)
            if discipline == "concurrent":
                os.fsync(f.fd)
            else:
                f.group_sync(seq, os.fdatasync if prealloc else os.fsync)

    _, elapsed = run_threads([threading.Thread(target=body) for _ in range(threads)], barrier)
    os.close(f.fd)
    os.unlink(path)
    return per * threads / elapsed


def run(root: str, threads: int, records: int, reps: int, work_us: float) -> Dict[str, Any]:
    """Median rec/s per (discipline, work) and the ratios to ``serial``."""
    rows: List[Dict[str, Any]] = []
    for work in (0.0, work_us):
        loops = spin_loops(work) if work else 0
        rates: Dict[str, List[float]] = {d: [] for d in DISCIPLINES}
        for rep in range(reps):
            for d in DISCIPLINES:
                rates[d].append(run_one(root, d, threads, records, loops))
                log(f"work {work} µs rep {rep + 1}/{reps} {d}: {rates[d][-1]:,.0f} rec/s")
        base = median(rates["serial"])
        for d in DISCIPLINES:
            rows.append(
                {
                    "discipline": d,
                    "threads": threads,
                    "work_us": work,
                    "rec_per_s": median(rates[d]),
                    "ratio_to_serial": median(rates[d]) / base,
                    "runs": rates[d],
                }
            )
    return {"machine": machine(), "records": records, "reps": reps, "rows": rows}


def markdown(res: Dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        f"Code {m['code']}. {m['nproc']} CPUs, CPython {m['python']}, {m['platform']}; "
        f"{m['date']}; {res['records']:,} records per run, {res['reps']} reps, medians; "
        f"1-min load average {m['loadavg_at_start'][0]:.2f} at start.",
        "",
        "| discipline | threads | Python work per record | rec/s | ratio to serial |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['discipline']} | {r['threads']} | {r['work_us']:g} µs | "
            f"{fmt(r['rec_per_s'])} | **{r['ratio_to_serial']:.2f}** |"
        )
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--records", type=int, default=4000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--work-us", type=float, default=15.0)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--tmpdir", default=None, help="where the files go (default: temp)")
    args = parser.parse_args(argv)
    root = tempfile.mkdtemp(prefix="cerbispool-fsync-ceiling-", dir=args.tmpdir)
    try:
        res = run(root, args.threads, args.records, args.reps, args.work_us)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(res, indent=2) if args.json else markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
