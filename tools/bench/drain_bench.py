"""Drain benchmark: the Drainer beside a raw azure-servicebus send loop, same run, same peer.

Run from the repository root (dev venv)::

    python tools/bench/drain_bench.py              # N = 20,000 events, 5 paired reps (~1 min)
    python tools/bench/drain_bench.py --quick      # N = 5,000 events, 3 paired reps (~15 s)
    python tools/bench/drain_bench.py --json       # machine-readable result on stdout
    python tools/bench/drain_bench.py --profile    # + cProfile of one drain and variants

Workload. A template spool is filled once with N events written through
``SpoolHandler(drain=False)`` with the repository's ``cerbi_governance.json``
(profile ``default``; every other record has an ``email`` extra, which is
redacted and adds one Violation). JSON bodies are 532-658 bytes, 595 mean.

Both sides ship the same N messages (same MessageIds = LogIds, same UTF-8 JSON
bodies, same application properties) to the same in-process
:class:`tools.amqp_peer.LocalPeer`, over an already-open connection (a warm-up
send opens connection, CBS and link before the clock starts):

- **drainer**: a fresh copy of the template spool, ``Drainer(spool,
  ServiceBusTransport(...))`` with default settings, timed around
  ``run_once()`` (read from the cursor → msgpack→JSON → SDK batches → ack with
  the cursor fsync'd per batch);
- **raw**: ``ServiceBusClient.from_connection_string`` + ``create_message_batch()``
  + ``add_message(ServiceBusMessage(body, message_id=..., content_type=...,
  application_properties=...))`` + ``send_messages(batch, timeout=30)`` over
  the pre-built bodies: the floor for a Python sender with this SDK.

The clock stops when the sends returned *and* the peer recorded N messages.
After every run the peer's message ids must equal the expected set (no loss, no
duplicate), and the drained spool must have nothing pending. The two sides
alternate (raw first on even reps, drainer first on odd ones); medians are
reported with every run, and the ratio is drainer / raw of the medians.

Breakdown: every timed drainer run wraps ``reader.read_batch``,
``reader.ack`` and ``transport.send`` of that instance with a timer (a few
calls per batch, negligible cost); what is left of ``run_once`` is building
the messages (``message_for_record``: msgpack decode, JSON encode). ``--profile``
adds a cProfile of one more drain, and paired variants that show what a library
change would buy (reader batch sizing, ack without fsync).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import logging
import os
import pstats
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:  # tools/ is not installed: run as a script from anywhere
    sys.path.insert(0, REPO)

from azure.servicebus import ServiceBusClient, ServiceBusMessage  # noqa: E402

from cerbistream_spool import SpoolHandler  # noqa: E402
from cerbistream_spool.drain import Drainer  # noqa: E402
from cerbistream_spool.spool import reader as reader_mod  # noqa: E402
from cerbistream_spool.spool.cursor import CURSOR_FILE  # noqa: E402
from cerbistream_spool.spool.reader import SpoolReader  # noqa: E402
from cerbistream_spool.transports.base import OutgoingMessage, message_for_record  # noqa: E402
from cerbistream_spool.transports.servicebus import ServiceBusTransport  # noqa: E402
from tools.amqp_peer import LocalPeer  # noqa: E402
from tools.bench.common import fmt, log, machine, median  # noqa: E402

GOVERNANCE = os.path.join(REPO, "cerbi_governance.json")
QUEUE = "cerbishield.log-scoring"
SEND_TIMEOUT_S = 30.0
TARGET = 0.8  # drainer / raw
LATENCY_S = 0.05  # --profile: peer settle delay standing in for a real broker's round trip


@dataclass(frozen=True)
class Plan:
    """How much work the run does."""

    records: int
    reps: int


FULL = Plan(records=20_000, reps=5)
QUICK = Plan(records=5_000, reps=3)


@dataclass(frozen=True)
class Wire:
    """One message as both sides put it on the wire."""

    message_id: str
    body: bytes
    properties: Dict[str, Any]


# -- helpers ---------------------------------------------------------------------------------


def spread(values: List[float]) -> float:
    """(max - min) / median, as a fraction: how noisy a set of runs was."""
    return (max(values) - min(values)) / median(values) if values else 0.0


# -- the spool -------------------------------------------------------------------------------


def fill_spool(spool_dir: str, n: int) -> None:
    """``n`` realistic events through SpoolHandler (governance on, no drainer)."""
    handler = SpoolHandler(
        spool_dir,
        tenant_id="contoso-eu",
        app_name="checkout-api",
        environment="production",
        governance_config_path=GOVERNANCE,
        governance_profile="default",
        fsync="never",
        drain=False,
        max_spool_bytes=1 << 31,
        segment_max_age_s=3600.0,
    )
    logger = logging.getLogger("checkout.payments")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        for i in range(n):
            user = (i * 7919) % 1_000_000
            extra = {"user_id": f"u-{user:06d}"}
            if i % 2 == 0:  # every other event: an email, redacted, one Violation
                extra["email"] = f"customer.{user:06d}@example.com"
            logger.warning("Payment retried for order %d", 100_000 + i, extra=extra)
    finally:
        logger.removeHandler(handler)
        handler.close()
    stats = handler.stats()
    if stats.get("dropped"):
        raise SystemExit(f"the template spool dropped records: {stats}")


def wire_messages(spool_dir: str) -> List[Wire]:
    """The messages a drainer would send for the spool (without acking anything)."""
    reader = SpoolReader(spool_dir, remove_idle_lanes=False)
    out = []
    for batch in reader.batches(10_000, 1 << 26):
        for record in batch.events():
            m = message_for_record(batch.lane, record)
            out.append(Wire(m.message_id, m.body, m.application_properties))
    return out


# -- the two sides ---------------------------------------------------------------------------


def verify_peer(peer: LocalPeer, expected: List[str]) -> None:
    if not peer.wait_for(len(expected), timeout=60):
        raise SystemExit(f"peer recorded {len(peer.message_ids())} of {len(expected)} messages")
    got = [str(m) for m in peer.message_ids()]
    if len(got) != len(expected) or set(got) != set(expected):
        missing = len(set(expected) - set(got))
        raise SystemExit(
            f"peer has {len(got)} messages ({len(set(got))} distinct), {missing} missing"
        )


def run_raw(peer: LocalPeer, msgs: List[Wire]) -> Dict[str, Any]:
    """The floor: the SDK's batch loop over pre-built bodies, warm connection."""
    client = ServiceBusClient.from_connection_string(peer.connection_string(), retry_total=0)
    with client, client.get_queue_sender(QUEUE) as sender:
        sender.send_messages(ServiceBusMessage(b"warm-up"), timeout=SEND_TIMEOUT_S)
        peer.clear()
        t0 = time.perf_counter()
        batches = 0
        fits = 0
        batch = sender.create_message_batch()
        for w in msgs:
            msg = ServiceBusMessage(
                w.body,
                message_id=w.message_id,
                content_type="application/json",
                application_properties=w.properties,  # type: ignore[arg-type]
            )
            try:
                batch.add_message(msg)
            except ValueError:  # MessageSizeExceededError: the batch is full
                fits = fits or len(batch)
                sender.send_messages(batch, timeout=SEND_TIMEOUT_S)
                batches += 1
                batch = sender.create_message_batch()
                batch.add_message(msg)
        if len(batch):
            sender.send_messages(batch, timeout=SEND_TIMEOUT_S)
            batches += 1
        sent = time.perf_counter()
        verify_peer(peer, [w.message_id for w in msgs])
        done = time.perf_counter()
    return {
        "seconds": done - t0,
        "send_seconds": sent - t0,
        "rec_s": len(msgs) / (done - t0),
        "broker_batches": batches,
        "deliveries": peer.stats()["deliveries"],
        "messages_per_full_batch": fits,
        "max_batch_bytes": batch.max_size_in_bytes,
    }


def _timed(fn: Callable[..., Any], bucket: List[float]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            bucket.append(time.perf_counter() - t)

    return wrapper


@contextlib.contextmanager
def fresh_spool(template: str, root: str) -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="drain-", dir=root)
    os.rmdir(d)
    shutil.copytree(template, d)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run_drainer(
    peer: LocalPeer,
    template: str,
    root: str,
    expected: List[str],
    *,
    drainer_kw: Optional[Dict[str, Any]] = None,
    profile: Optional[cProfile.Profile] = None,
) -> Dict[str, Any]:
    """A default Drainer over a fresh copy of the template spool, warm connection."""
    with fresh_spool(template, root) as spool:
        transport = ServiceBusTransport(
            queue_name=QUEUE, connection_string=peer.connection_string()
        )
        transport.send([OutgoingMessage(0, 0, "warm-up", b"{}", {})])  # connect, CBS, attach
        peer.clear()
        drainer = Drainer(spool, transport, **(drainer_kw or {}))
        t_read: List[float] = []
        t_ack: List[float] = []
        t_send: List[float] = []
        reader = drainer.reader
        reader.read_batch = _timed(reader.read_batch, t_read)  # type: ignore[method-assign]
        reader.ack = _timed(reader.ack, t_ack)  # type: ignore[method-assign]
        transport.send = _timed(transport.send, t_send)  # type: ignore[method-assign]
        try:
            t0 = time.perf_counter()
            if profile is not None:
                profile.enable()
            delivered = drainer.run_once()
            if profile is not None:
                profile.disable()
            sent = time.perf_counter()
            verify_peer(peer, expected)
            done = time.perf_counter()
            if delivered != len(expected):
                raise SystemExit(f"drainer delivered {delivered}, expected {len(expected)}")
            pending = drainer.pending_events()
            if pending:
                raise SystemExit(f"{pending} events still pending after the drain")
            stats = drainer.stats()
        finally:
            drainer.close()
    run_s = sent - t0
    read_s, ack_s, send_s = sum(t_read), sum(t_ack), sum(t_send)
    return {
        "seconds": done - t0,
        "send_seconds": run_s,
        "rec_s": len(expected) / (done - t0),
        "reader_batches": stats["batches"],
        "deliveries": peer.stats()["deliveries"],
        "parts_s": {
            "read_batch": read_s,
            "build_messages": max(0.0, run_s - read_s - ack_s - send_s),
            "transport_send": send_s,
            "ack": ack_s,
        },
        "ack_ms_per_batch": 1e3 * ack_s / max(1, len(t_ack)),
    }


# -- profile ---------------------------------------------------------------------------------


def _no_fsync_write_cursor(lane_dir: str, cursor: Any) -> None:
    """write_cursor without fsync (same temp + rename): what an unsynced ack would cost."""
    path = os.path.join(lane_dir, CURSOR_FILE)
    with open(path + ".tmp", "wb") as fh:
        fh.write(cursor.encode())
    os.replace(path + ".tmp", path)


def profile_top(prof: cProfile.Profile, n: int = 25) -> str:
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(n)
    return out.getvalue()


def payload_bytes_per_record(spool_dir: str) -> float:
    """Mean reader bytes (msgpack payload) per record: the unit of ``batch_max_bytes``."""
    reader = SpoolReader(spool_dir, remove_idle_lanes=False)
    nbytes = records = 0
    for batch in reader.batches(10_000, 1 << 26):
        nbytes += batch.nbytes
        records += len(batch.records)
    return nbytes / records


def section_profile(
    peer: LocalPeer,
    template: str,
    root: str,
    msgs: List[Wire],
    reps: int,
    fits: int,
    latency_s: float,
) -> Dict[str, Any]:
    expected = [w.message_id for w in msgs]
    prof = cProfile.Profile()
    run_drainer(peer, template, root, expected, profile=prof)
    text = profile_top(prof)
    grouped = group_profile(prof)
    for k, v in grouped.items():
        log(f"  cProfile {k:40s} {v:.3f} s")
    micro = micro_build(template)
    for k, v in micro.items():
        log(f"  micro {k:45s} {v:6.2f} µs/rec")

    # reader batch = one full broker batch: bytes for ~97 % of what the broker batch held
    per_record = payload_bytes_per_record(template)
    sized = int(fits * per_record * 0.97)
    tuned = {"batch_max_records": 4500, "batch_max_bytes": sized}
    variants: Dict[str, Dict[str, Any]] = {
        "default (1000 records, 900 KiB)": {},
        "max_records 4500 (900 KiB)": {"batch_max_records": 4500},
        f"max_records 4500, max_bytes {sized // 1024} KiB (1 reader = 1 broker batch)": tuned,
        "max_records 250": {"batch_max_records": 250},
    }
    no_fsync = "default, ack without fsync (measurement only)"
    slow = f"settle delay {latency_s * 1e3:.0f} ms: "
    names = ["raw", *variants, no_fsync, slow + "raw", slow + "default", slow + "tuned"]
    runs: Dict[str, List[Dict[str, Any]]] = {k: [] for k in names}
    for rep in range(reps):
        log(f"  variants rep {rep + 1}/{reps}")
        runs["raw"].append(run_raw(peer, msgs))
        for name, kw in variants.items():
            runs[name].append(run_drainer(peer, template, root, expected, drainer_kw=kw))
        original = reader_mod.write_cursor
        reader_mod.write_cursor = _no_fsync_write_cursor  # type: ignore[assignment]
        try:
            runs[no_fsync].append(run_drainer(peer, template, root, expected))
        finally:
            reader_mod.write_cursor = original
        peer.settle_delay = latency_s
        try:
            runs[slow + "raw"].append(run_raw(peer, msgs))
            runs[slow + "default"].append(run_drainer(peer, template, root, expected))
            runs[slow + "tuned"].append(
                run_drainer(peer, template, root, expected, drainer_kw=tuned)
            )
        finally:
            peer.settle_delay = 0.0
    results: Dict[str, Any] = {}
    for name, values in runs.items():
        base = median([r["rec_s"] for r in runs[slow + "raw" if name.startswith(slow) else "raw"]])
        rate = median([r["rec_s"] for r in values])
        results[name] = {
            "rec_s": rate,
            "ratio": rate / base,
            "deliveries": values[0]["deliveries"],
            "reader_batches": values[0].get("reader_batches"),
            "ack_ms_per_batch": median([r.get("ack_ms_per_batch", 0.0) for r in values]),
            "runs": [r["rec_s"] for r in values],
        }
        log(f"  variant {name:70s} {rate:8.0f} rec/s  ratio {rate / base:.3f}")
    return {
        "cprofile_top": text,
        "grouped_s": grouped,
        "micro_us_per_rec": micro,
        "payload_bytes_per_record": per_record,
        "messages_per_full_broker_batch": fits,
        "tuned_batch_max_bytes": sized,
        "latency_s": latency_s,
        "variants": results,
    }


def group_profile(prof: cProfile.Profile) -> Dict[str, float]:
    """Inclusive time of the drainer's stages from the profile (cumulative seconds)."""
    from azure.servicebus import ServiceBusMessageBatch, ServiceBusSender  # noqa: PLC0415

    from cerbistream_spool.event import event_to_json  # noqa: PLC0415
    from cerbistream_spool.spool.record import Record, decode_payload, read_frame  # noqa: PLC0415

    wanted: List[Tuple[str, Any]] = [
        ("Drainer.run_once", Drainer.run_once),
        ("SpoolReader.read_batch", SpoolReader.read_batch),
        ("  read_frame (CRC, copy)", read_frame),
        ("  decode_payload", decode_payload),
        ("message_for_record", message_for_record),
        ("  Record.value (msgpack decode)", Record.value),
        ("  event_to_json", event_to_json),
        ("ServiceBusTransport.send", ServiceBusTransport.send),
        ("  ServiceBusMessage()", ServiceBusMessage.__init__),
        ("  batch.add_message (AMQP encode)", ServiceBusMessageBatch.add_message),
        ("  sender.send_messages (wire, settle)", ServiceBusSender.send_messages),
        ("  sender.create_message_batch", ServiceBusSender.create_message_batch),
        ("SpoolReader.ack (cursor fsync)", SpoolReader.ack),
    ]
    codes = {}
    for label, fn in wanted:
        code = fn.__code__
        codes[(code.co_filename, code.co_firstlineno, code.co_name)] = label
    stats = pstats.Stats(prof)
    out = {label: 0.0 for label, _ in wanted}
    for key, row in stats.stats.items():  # type: ignore[attr-defined]
        if key in codes:
            out[codes[key]] += row[3]
    return out


def micro_build(msgs_spool: str) -> Dict[str, float]:
    """µs per record of the pieces of message building (no network)."""

    from cerbistream_spool.event import event_to_json  # noqa: PLC0415

    reader = SpoolReader(msgs_spool, remove_idle_lanes=False)
    records = [(b.lane, r) for b in reader.batches(10_000, 1 << 26) for r in b.events()]
    n = len(records)
    out: Dict[str, float] = {}

    def clock(label: str, fn: Callable[[], Any]) -> Any:
        best = float("inf")
        value = None
        for _ in range(3):
            t = time.perf_counter()
            value = fn()
            best = min(best, time.perf_counter() - t)
        out[label] = 1e6 * best / n
        return value

    clock(
        "read (SpoolReader.batches, no ack)",
        lambda: sum(
            len(b.records)
            for b in SpoolReader(msgs_spool, remove_idle_lanes=False).batches(1000, 900 * 1024)
        ),
    )
    events = clock("msgpack decode (Record.value)", lambda: [r.value() for _, r in records])
    clock("JSON encode + utf-8", lambda: [event_to_json(e).encode("utf-8") for e in events])
    outs = clock(
        "message_for_record (all of it)", lambda: [message_for_record(ln, r) for ln, r in records]
    )
    clock(
        "OutgoingMessage() alone",
        lambda: [
            OutgoingMessage(m.lane, m.seq, m.message_id, m.body, m.application_properties)
            for m in outs
        ],
    )
    clock(
        "ServiceBusMessage() (both sides pay it)",
        lambda: [
            ServiceBusMessage(
                m.body,
                message_id=m.message_id,
                content_type=m.content_type,
                application_properties=m.application_properties,  # type: ignore[arg-type]
            )
            for m in outs
        ],
    )
    return out


# -- main ------------------------------------------------------------------------------------


def _sb_version() -> str:
    import azure.servicebus  # noqa: PLC0415

    return str(azure.servicebus.__version__)


def _proton_version() -> str:
    import proton  # noqa: PLC0415

    return ".".join(map(str, proton.VERSION))


def run(plan: Plan, root: str, profile: bool) -> Dict[str, Any]:
    result: Dict[str, Any] = {
        "machine": machine(azure_servicebus=_sb_version(), proton=_proton_version()),
        "plan": plan.__dict__,
    }
    started = time.perf_counter()
    template = os.path.join(root, "template")
    t0 = time.perf_counter()
    fill_spool(template, plan.records)
    msgs = wire_messages(template)
    if len(msgs) != plan.records or len({w.message_id for w in msgs}) != plan.records:
        raise SystemExit(f"template spool holds {len(msgs)} events, expected {plan.records}")
    expected = [w.message_id for w in msgs]
    bodies = [len(w.body) for w in msgs]
    seg_bytes = sum(
        os.path.getsize(os.path.join(dp, f))
        for dp, _, fs in os.walk(template)
        for f in fs
        if f.endswith(".seg")
    )
    result["workload"] = {
        "records": len(msgs),
        "json_body_bytes_mean": sum(bodies) / len(bodies),
        "json_body_bytes_min": min(bodies),
        "json_body_bytes_max": max(bodies),
        "spool_bytes": seg_bytes,
        "sample_body": msgs[0].body.decode("utf-8"),
        "sample_properties": msgs[0].properties,
    }
    log(
        f"template spool: {len(msgs)} events, {seg_bytes / 1e6:.1f} MB on disk,"
        f" JSON body {sum(bodies) / len(bodies):.0f} bytes mean"
        f" (built in {time.perf_counter() - t0:.1f} s)"
    )

    with LocalPeer.start() as peer:
        raw_runs: List[Dict[str, Any]] = []
        drain_runs: List[Dict[str, Any]] = []
        # warm-up of both paths (imports, caches, first-batch costs) on a small spool
        small = os.path.join(root, "warm-up")
        fill_spool(small, 500)
        small_msgs = wire_messages(small)
        run_raw(peer, small_msgs)
        run_drainer(peer, small, root, [w.message_id for w in small_msgs])
        for rep in range(plan.reps):
            sides = [("raw", raw_runs), ("drainer", drain_runs)]
            for side, bucket in sides if rep % 2 == 0 else sides[::-1]:
                if side == "raw":
                    res = run_raw(peer, msgs)
                else:
                    res = run_drainer(peer, template, root, expected)
                bucket.append(res)
                log(f"  rep {rep + 1} {side:8s} {res['rec_s']:8.0f} rec/s ({res['seconds']:.2f} s)")
        raw = median([r["rec_s"] for r in raw_runs])
        drain = median([r["rec_s"] for r in drain_runs])
        paired = [d["rec_s"] / r["rec_s"] for d, r in zip(drain_runs, raw_runs)]
        parts = {k: median([r["parts_s"][k] for r in drain_runs]) for k in drain_runs[0]["parts_s"]}
        result["drain"] = {
            "raw_rec_s": raw,
            "drainer_rec_s": drain,
            "ratio": drain / raw,
            "target": TARGET,
            "met": drain / raw >= TARGET,
            "paired_ratios": paired,
            "raw_spread": spread([r["rec_s"] for r in raw_runs]),
            "drainer_spread": spread([r["rec_s"] for r in drain_runs]),
            "raw_runs": raw_runs,
            "drainer_runs": drain_runs,
            "drainer_parts_s": parts,
            "raw_seconds": median([r["seconds"] for r in raw_runs]),
            "drainer_seconds": median([r["seconds"] for r in drain_runs]),
        }
        log(
            f"  median: drainer {drain:.0f} rec/s, raw {raw:.0f} rec/s, ratio {drain / raw:.3f}"
            f" (paired {min(paired):.3f}..{max(paired):.3f})"
        )
        if profile:
            fits = max(r["messages_per_full_batch"] for r in raw_runs)
            result["profile"] = section_profile(
                peer, template, root, msgs, plan.reps, fits, LATENCY_S
            )
    result["elapsed_s"] = time.perf_counter() - started
    result["machine"]["loadavg_at_end"] = list(os.getloadavg())
    return result


def markdown(res: Dict[str, Any]) -> str:
    m, w, d = res["machine"], res["workload"], res["drain"]
    n = w["records"]
    lines = [
        f"Code {m['code']}. Machine: {m['nproc']} CPUs, {m['implementation']} {m['python']},"
        f" {m['platform']}, azure-servicebus {m['azure_servicebus']},"
        f" python-qpid-proton {m['proton']}, msgpack {m['msgpack']}; {m['date']};"
        f" {n:,} events, JSON body {w['json_body_bytes_mean']:.0f} bytes mean"
        f" ({w['json_body_bytes_min']}-{w['json_body_bytes_max']});"
        f" total {res['elapsed_s']:.0f} s; 1-min load average"
        f" {m['loadavg_at_start'][0]:.2f} at start, {m['loadavg_at_end'][0]:.2f} at end.",
        "",
        f"### Drain throughput (median of {len(d['raw_runs'])} paired runs)",
        "",
        "| side | rec/s | µs/rec | seconds | broker batches | reader batches | run spread |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| Drainer.run_once() | {fmt(d['drainer_rec_s'])} | {1e6 / d['drainer_rec_s']:.1f}"
        f" | {d['drainer_seconds']:.2f} | {d['drainer_runs'][0]['deliveries']}"
        f" | {d['drainer_runs'][0]['reader_batches']} | {100 * d['drainer_spread']:.0f} % |",
        f"| baseline: raw SDK batch loop | {fmt(d['raw_rec_s'])} | {1e6 / d['raw_rec_s']:.1f}"
        f" | {d['raw_seconds']:.2f} | {d['raw_runs'][0]['deliveries']} | —"
        f" | {100 * d['raw_spread']:.0f} % |",
        "",
        f"**Ratio drainer / raw: {d['ratio']:.2f}** (target ≥ {d['target']}:"
        f" {'met' if d['met'] else 'not met'}); paired ratios per rep:"
        f" {', '.join(f'{x:.2f}' for x in d['paired_ratios'])}.",
        "",
        "Runs (rec/s): drainer "
        + ", ".join(fmt(r["rec_s"]) for r in d["drainer_runs"])
        + "; raw "
        + ", ".join(fmt(r["rec_s"]) for r in d["raw_runs"])
        + ".",
        "",
        "### Where the drainer's time goes (median seconds per run, timers per batch)",
        "",
        "| stage | seconds | µs/rec | share of run_once |",
        "|---|---:|---:|---:|",
    ]
    total = sum(d["drainer_parts_s"].values())
    for k, v in d["drainer_parts_s"].items():
        lines.append(f"| {k} | {v:.3f} | {1e6 * v / n:.1f} | {100 * v / total:.0f} % |")
    lines.append(
        f"| (raw loop, whole run) | {d['raw_seconds']:.3f} | {1e6 * d['raw_seconds'] / n:.1f} | — |"
    )
    p = res.get("profile")
    if p:
        lines += [
            "",
            f"### Variants (median of {len(d['raw_runs'])}, each beside a raw run of the same rep)",
            "",
            "| variant | rec/s | ratio to raw | broker deliveries | reader batches"
            " | ack ms/batch |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, v in p["variants"].items():
            lines.append(
                f"| {name} | {fmt(v['rec_s'])} | {v['ratio']:.2f} | {v['deliveries']}"
                f" | {v['reader_batches'] or '—'} | {v['ack_ms_per_batch']:.2f} |"
            )
        lines += [
            "",
            "### Message building, per record (best of 3, no network)",
            "",
            "| piece | µs/rec |",
            "|---|---:|",
        ]
        for k, v in p["micro_us_per_rec"].items():
            lines.append(f"| {k} | {v:.2f} |")
        lines += [
            "",
            "### cProfile of one drain (inclusive seconds)",
            "",
            "| function | seconds |",
            "|---|---:|",
        ]
        for k, v in p["grouped_s"].items():
            lines.append(f"| {k} | {v:.3f} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 5,000, 3 reps")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--profile", action="store_true", help="cProfile + drainer variants")
    parser.add_argument("--records", type=int, default=None, help="override N")
    parser.add_argument("--reps", type=int, default=None, help="override repetitions")
    parser.add_argument("--tmpdir", default=None, help="where the temp directory goes")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.records or args.reps:
        plan = Plan(records=args.records or plan.records, reps=args.reps or plan.reps)
    logging.getLogger("proton").setLevel(logging.CRITICAL)
    logging.getLogger("azure").setLevel(logging.WARNING)
    root = tempfile.mkdtemp(prefix="cerbispool-drain-bench-", dir=args.tmpdir)
    log(f"temp dir {root} ({plan.records} events, {plan.reps} reps)")
    try:
        res = run(plan, root, args.profile)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    res["command"] = " ".join(["python", "tools/bench/drain_bench.py", *(argv or sys.argv[1:])])
    print(json.dumps(res, indent=2) if args.json else markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
