"""Handler benchmarks: SpoolHandler beside stdlib FileHandler baselines in the same process.

Run from the repository root::

    python tools/bench/handler_bench.py            # full run (~2 min)
    python tools/bench/handler_bench.py --quick    # smoke run (~20 s)
    python tools/bench/handler_bench.py --json     # machine-readable result on stdout
    python tools/bench/handler_bench.py --governance   # the cost of pattern rules (~1 min)

Workload, identical on every side (one call per record)::

    logger.info("user %s logged in", uid, extra={"user_id": uid,
                "email": f"u{uid}@example.com", "request_id": rid})

The ``email`` extra matches a Redact rule of the repository's
``cerbi_governance.json`` (profile ``default``), so each SpoolHandler record
carries one violation and a redacted field.

Each row pairs one SpoolHandler configuration with one baseline, with the same
thread count; the two sides alternate ``reps`` times and the medians are taken:

- ``SpoolHandler(fsync="interval" | "never")`` vs ``logging.FileHandler`` with a
  JSON formatter (``json.dumps`` of logger, level, message, module, function,
  timestamp and the extras; one ``write`` per record, as StreamHandler flushes);
- ``SpoolHandler(fsync="always")`` vs the same FileHandler whose ``emit`` also
  calls ``flush`` + ``os.fsync`` (stdlib ``Handler.handle`` holds the handler lock
  across ``emit``, so its fsyncs are serialised: that is what stdlib gives you).

Every SpoolHandler gets a fresh temp spool dir (``drain=False``, the repository's
governance file, otherwise defaults). Every logger has ``propagate=False`` and its
one handler, which is closed after the row. Latency is ``time.perf_counter_ns``
around each ``logger.info`` call (the timer itself costs ~0.1 µs, on both sides);
p50/p99 are over all calls of all threads of the median-throughput repetition.
Throughput is records / wall time from a barrier release to the last thread's end.

``--governance`` runs ``interval``, 1 thread twice: with the repository's governance
file (field rules only, no ``patterns``) and with the same file plus the pattern
rules of :data:`PATTERN_RULES` (which the workload does not match: the cost of
scanning the message and every string value). Each side is paired with its own
FileHandler baseline, so both are ratios against a baseline of the same run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import msgpack

from cerbistream_spool import SpoolHandler
from cerbistream_spool.event import build_event
from cerbistream_spool.governance import REDACTED, load_governance

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:  # tools/ is not installed: run as a script from anywhere
    sys.path.insert(0, REPO)

from tools.bench.common import fmt, log, machine, run_threads  # noqa: E402

GOVERNANCE = os.path.join(REPO, "cerbi_governance.json")
WARMUP = 50  # untimed records per thread before the barrier (thread-local packers, caches)


@dataclass(frozen=True)
class Row:
    """One comparison: a SpoolHandler fsync mode against a FileHandler baseline."""

    mode: str  # SpoolHandler fsync
    threads: int
    baseline: str  # "json" | "json+fsync"
    records: int  # per run, all threads together
    target: Optional[float] = None  # required spool/baseline throughput ratio, if any
    governance: str = "file"  # "file": cerbi_governance.json; "patterns": + PATTERN_RULES


@dataclass(frozen=True)
class Plan:
    """How much work the run does."""

    reps: int
    fast: int  # records per run for rows without fsync
    fsync1: int  # ... fsync per record, 1 thread
    fsync_mt: int  # ... fsync per record, 4 or 8 threads

    def rows(self) -> List[Row]:
        return [
            Row("interval", 1, "json", self.fast, target=1.0),
            Row("never", 1, "json", self.fast),
            Row("always", 1, "json+fsync", self.fsync1),
            Row("interval", 4, "json", self.fast),
            Row("never", 4, "json", self.fast),
            Row("always", 4, "json+fsync", self.fsync_mt),
            Row("always", 8, "json+fsync", self.fsync_mt, target=5.0),
        ]


GOVERNANCE_ROWS = [
    Row("interval", 1, "json", 60_000, governance="file"),
    Row("interval", 1, "json", 60_000, governance="patterns"),
]
# Pattern rules as an access-log or a token check would write them (none matches the workload)
PATTERN_RULES = [
    {
        "ruleId": "SEC-URL",
        "code": "Security",
        "patterns": [r"(?<=password=)[^&\s]+", r"(?<=token=)[^&\s]+"],
        "severity": "Critical",
        "action": "Redact",
    },
    {
        "ruleId": "SEC-KEY",
        "code": "Security",
        "patterns": [r"\bsk-[A-Za-z0-9]{20,}", r"\bAKIA[0-9A-Z]{16}\b"],
        "severity": "Critical",
        "action": "Block",
    },
]


def governance_file(root: str, kind: str) -> str:
    """The governance file of a row: the repository's, or it plus PATTERN_RULES."""
    if kind == "file":
        return GOVERNANCE
    path = os.path.join(root, "cerbi_governance.patterns.json")
    if not os.path.exists(path):
        with open(GOVERNANCE, encoding="utf-8") as f:
            doc = json.load(f)
        doc["profiles"]["default"]["rules"].extend(PATTERN_RULES)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f)
    return path


FULL = Plan(reps=5, fast=60_000, fsync1=2_000, fsync_mt=4_000)
QUICK = Plan(reps=3, fast=12_000, fsync1=800, fsync_mt=1_600)


# -- baselines -------------------------------------------------------------------------------

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: the fields of RawPayload, a timestamp, and the extras."""

    def format(self, record: logging.LogRecord) -> str:
        doc: Dict[str, Any] = {
            "logger": record.name,
            "level": record.levelname,
            "message": record.getMessage(),
            "module": record.module,
            "function": record.funcName,
            "timestamp": datetime.datetime.fromtimestamp(
                record.created, datetime.timezone.utc
            ).isoformat(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key[:1] != "_":
                doc[key] = value
        return json.dumps(doc, default=str)


class FsyncFileHandler(logging.FileHandler):
    """FileHandler that makes every record durable before ``emit`` returns."""

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)  # StreamHandler.emit writes and flushes
        try:
            self.flush()
            os.fsync(self.stream.fileno())
        except Exception:
            self.handleError(record)


# -- running one side ------------------------------------------------------------------------


def percentile(sorted_ns: List[int], q: float) -> float:
    """Nearest-rank percentile of sorted samples, in µs."""
    if not sorted_ns:
        return float("nan")
    k = min(len(sorted_ns) - 1, max(0, round(q * len(sorted_ns)) - 1))
    return sorted_ns[k] / 1e3


def drive(handler: logging.Handler, name: str, threads: int, records: int) -> Dict[str, Any]:
    """Log ``records`` workload records through ``handler`` from ``threads`` threads."""
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    for h in list(logger.handlers):
        logger.removeHandler(h)
    logger.addHandler(handler)
    quota = records // threads
    barrier = threading.Barrier(threads + 1)
    samples: List[List[int]] = [[] for _ in range(threads)]
    errors: List[BaseException] = []

    def body(t: int) -> None:
        info, clock = logger.info, time.perf_counter_ns
        lat = samples[t]
        add = lat.append
        base = t * 10_000_000
        try:
            for n in range(WARMUP):
                uid = base + 9_000_000 + n
                info(
                    "user %s logged in",
                    uid,
                    extra={"user_id": uid, "email": f"u{uid}@example.com", "request_id": "warm"},
                )
            barrier.wait()
            for n in range(quota):
                uid = base + n
                rid = f"req-{t}-{n}"
                t0 = clock()
                info(
                    "user %s logged in",
                    uid,
                    extra={"user_id": uid, "email": f"u{uid}@example.com", "request_id": rid},
                )
                add(clock() - t0)
        except BaseException as exc:  # surface worker failures in the main thread
            errors.append(exc)
            barrier.abort()

    pool = [threading.Thread(target=body, args=(t,), name=f"bench-{t}") for t in range(threads)]
    try:
        _, elapsed = run_threads(pool, barrier)
    finally:
        logger.removeHandler(handler)
    if errors:
        raise errors[0]
    lat_all = sorted(x for s in samples for x in s)
    return {
        "rec_s": len(lat_all) / elapsed,
        "p50_us": percentile(lat_all, 0.50),
        "p99_us": percentile(lat_all, 0.99),
        "records": len(lat_all),
    }


def run_spool(root: str, row: Row, rep: int) -> Dict[str, Any]:
    d = tempfile.mkdtemp(prefix=f"spool-{row.mode}-{row.threads}-", dir=root)
    handler = SpoolHandler(
        d,
        tenant_id="bench-tenant",
        app_name="handler-bench",
        environment="bench",
        governance_config_path=governance_file(root, row.governance),
        fsync=row.mode,
        drain=False,
    )
    try:
        res = drive(
            handler, f"bench.spool.{row.mode}.{row.threads}.{rep}", row.threads, row.records
        )
        stats = handler.stats()
    finally:
        handler.close()
        shutil.rmtree(d, ignore_errors=True)
    if stats["dropped"] or stats.get("suppressed") or stats["last_error"]:
        raise SystemExit(f"SpoolHandler dropped records in {row}: {stats}")
    return res


def run_file(root: str, row: Row, rep: int) -> Dict[str, Any]:
    path = os.path.join(root, f"file-{row.baseline}-{row.threads}-{rep}.log")
    cls = FsyncFileHandler if row.baseline == "json+fsync" else logging.FileHandler
    handler = cls(path, encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    try:
        res = drive(
            handler, f"bench.file.{row.baseline}.{row.threads}.{rep}", row.threads, row.records
        )
    finally:
        handler.close()
        os.unlink(path)
    return res


def run_row(root: str, row: Row, reps: int) -> Dict[str, Any]:
    spool_runs: List[Dict[str, Any]] = []
    base_runs: List[Dict[str, Any]] = []
    for rep in range(reps):  # alternate the sides so drift in machine load hits both
        spool_runs.append(run_spool(root, row, rep))
        base_runs.append(run_file(root, row, rep))

    def med(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
        rate = statistics.median(r["rec_s"] for r in runs)
        # latency of the run whose throughput is the median (lower median for even reps)
        mid = sorted(runs, key=lambda r: r["rec_s"])[(len(runs) - 1) // 2]
        return {
            "rec_s": rate,
            "us_per_rec": 1e6 / rate,
            "p50_us": statistics.median(r["p50_us"] for r in runs),
            "p99_us": statistics.median(r["p99_us"] for r in runs),
            "p99_us_of_median_run": mid["p99_us"],
        }

    spool, base = med(spool_runs), med(base_runs)
    ratios = [s["rec_s"] / b["rec_s"] for s, b in zip(spool_runs, base_runs)]
    out = {
        "governance": row.governance,
        "mode": row.mode,
        "threads": row.threads,
        "records_per_run": row.records,
        "baseline": "FileHandler+JSON" + (" +fsync per record" if row.baseline != "json" else ""),
        "spool": spool,
        "base": base,
        "ratio": spool["rec_s"] / base["rec_s"],
        "ratio_per_rep": ratios,
        "target": row.target,
        "met": None if row.target is None else spool["rec_s"] / base["rec_s"] >= row.target,
        "spool_runs": spool_runs,
        "baseline_runs": base_runs,
    }
    log(
        f"  {row.mode:8s} x{row.threads} {row.governance:8s}: {spool['rec_s']:9.0f} rec/s"
        f" p50 {spool['p50_us']:7.1f}"
        f" p99 {spool['p99_us']:8.1f} µs | {row.baseline:10s} {base['rec_s']:9.0f} rec/s"
        f" p50 {base['p50_us']:7.1f} p99 {base['p99_us']:8.1f} µs | ratio {out['ratio']:.2f}"
        f" (per rep {', '.join(f'{r:.2f}' for r in ratios)})"
    )
    return out


# -- sanity, machine, output ------------------------------------------------------------------


def check_workload() -> Dict[str, Any]:
    """The workload record must hit the Redact rule (one violation, email redacted)."""
    gov = load_governance(GOVERNANCE, "default")
    record = logging.LogRecord("bench", logging.INFO, __file__, 1, "user %s logged in", (7,), None)
    record.__dict__.update(user_id=7, email="u7@example.com", request_id="req-0-0")
    event = build_event(record, tenant_id="t", app_name="a", governance=gov)
    payload = event["RawPayload"]
    assert payload["email"] == REDACTED, payload
    assert [v["RuleId"] for v in event["Violations"]] == ["PII-001"], event["Violations"]
    body = msgpack.packb(event, use_bin_type=True)
    line = JsonFormatter().format(record)
    return {"event_body_bytes": len(body), "json_line_bytes": len(line) + 1}


def run(plan: Plan, root: str, rows: List[Row]) -> Dict[str, Any]:
    result: Dict[str, Any] = {"machine": machine(), "plan": plan.__dict__, **check_workload()}
    started = time.perf_counter()
    result["rows"] = [run_row(root, row, plan.reps) for row in rows]
    result["elapsed_s"] = time.perf_counter() - started
    result["machine"]["loadavg_at_end"] = list(os.getloadavg())
    return result


def markdown(res: Dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        f"Code {m['code']}. Machine: {m['nproc']} CPUs, {m['implementation']} {m['python']},"
        f" {m['platform']}, msgpack {m['msgpack']}; {m['date']};"
        f" event body {res['event_body_bytes']} bytes msgpack, JSON line"
        f" {res['json_line_bytes']} bytes; {res['plan']['reps']} reps per side;"
        f" total {res['elapsed_s']:.0f} s; 1-min load average"
        f" {m['loadavg_at_start'][0]:.2f} at start, {m['loadavg_at_end'][0]:.2f} at end.",
        "",
        "| SpoolHandler fsync | governance | threads | rec/s | µs/rec | p50 µs | p99 µs | baseline"
        " | rec/s | µs/rec | p50 µs | p99 µs | ratio (rec/s) | ratio per rep |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in res["rows"]:
        s, b = r["spool"], r["base"]
        lines.append(
            f"| {r['mode']} | {r['governance']} | {r['threads']} | {fmt(s['rec_s'])}"
            f" | {s['us_per_rec']:.1f}"
            f" | {s['p50_us']:.1f} | {s['p99_us']:.1f} | {r['baseline']}"
            f" | {fmt(b['rec_s'])} | {b['us_per_rec']:.1f} | {b['p50_us']:.1f}"
            f" | {b['p99_us']:.1f} | **{r['ratio']:.2f}** |"
            f" {' '.join(f'{x:.2f}' for x in r['ratio_per_rep'])} |"
        )
    lines += ["", "Targets:", ""]
    for r in res["rows"]:
        if r["target"] is not None:
            lines.append(
                f"- fsync={r['mode']}, {r['threads']} thread(s) ≥ {r['target']:.1f}x "
                f"{r['baseline']}: **{r['ratio']:.2f}x — {'met' if r['met'] else 'not met'}**"
            )
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer records, one repetition")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--governance", action="store_true", help="only the rows with and without patterns"
    )
    parser.add_argument("--tmpdir", default=None, help="where the temp directory goes")
    parser.add_argument(
        "--only", default=None, help="comma list of rows, e.g. interval:1,always:8 (debugging)"
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    rows = GOVERNANCE_ROWS if args.governance else plan.rows()
    if args.only:
        wanted: List[Tuple[str, int]] = []
        for item in args.only.split(","):
            mode, _, threads = item.partition(":")
            wanted.append((mode, int(threads or 1)))
        rows = [r for r in rows if (r.mode, r.threads) in wanted]
    root = tempfile.mkdtemp(prefix="cerbispool-handler-bench-", dir=args.tmpdir)
    log(f"temp dir {root} ({'quick' if args.quick else 'full'} plan)")
    try:
        res = run(plan, root, rows)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    res["command"] = " ".join(["python", "tools/bench/handler_bench.py", *(argv or sys.argv[1:])])
    print(json.dumps(res, indent=2) if args.json else markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
