"""`cerbispool`: the command line (CONTRACT §5). Commands print what the library returns."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from typing import Any, Optional

import click

from cerbistream_spool.handler import CONNECTION_ENV, DEFAULT_QUEUE
from cerbistream_spool.spool.chain import ENV_KEY
from cerbistream_spool.spool.lanes import lane_dir
from cerbistream_spool.spool.reader import SpoolReader
from cerbistream_spool.status import status as spool_status
from cerbistream_spool.verify import VerifyReport
from cerbistream_spool.verify import verify as verify_spool

__all__ = ["main"]

_DIR = click.Path(file_okay=False)


@click.group()
@click.version_option(package_name="cerbistream_spool")
def main() -> None:
    """Spool governance log events to disk and ship them to Azure Service Bus."""


def _existing(spool_dir: str) -> str:
    if not os.path.isdir(spool_dir):
        raise click.UsageError(f"{spool_dir} is not a directory")
    return spool_dir


def _transport(connection_string: Optional[str], queue: str) -> Any:
    from cerbistream_spool.transports.servicebus import (  # noqa: PLC0415 — SDK import is heavy
        ServiceBusTransport,
    )

    conn = connection_string or os.environ.get(CONNECTION_ENV)
    if not conn:
        raise click.UsageError(
            f"no connection string: pass --connection-string or set {CONNECTION_ENV}"
        )
    return ServiceBusTransport(queue_name=queue, connection_string=conn)


@main.command("drain")
@click.argument("spool_dir", type=_DIR)
@click.option("--connection-string", default=None, help=f"Else env {CONNECTION_ENV}.")
@click.option("--queue", default=DEFAULT_QUEUE, show_default=True)
@click.option("--follow", is_flag=True, help="Keep shipping new records until SIGINT/SIGTERM.")
@click.option("--timeout", type=float, default=None, help="Give up after SEC seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def drain_cmd(
    spool_dir: str,
    connection_string: Optional[str],
    queue: str,
    follow: bool,
    timeout: Optional[float],
    as_json: bool,
) -> None:
    """Ship every pending record; exit 0 when nothing is left, 1 when some remain."""
    from cerbistream_spool.drain import Drainer  # noqa: PLC0415

    os.makedirs(spool_dir, exist_ok=True) if follow else _existing(spool_dir)
    drainer = Drainer(spool_dir, _transport(connection_string, queue))
    started = time.monotonic()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: drainer.request_stop())
    try:
        if follow:
            if timeout is not None:
                threading.Timer(timeout, drainer.request_stop).start()
            drainer.follow()
            left = drainer.pending_events()
        elif sys.stdout.isatty() and not as_json:
            bar: Any  # click 8.1 (Python 3.9) leaves progressbar(length=...)'s item type open
            with click.progressbar(length=drainer.pending_events(), label="draining") as bar:
                left = drainer.drain_until_idle(timeout, progress=bar.update)
        else:
            left = drainer.drain_until_idle(timeout)
    finally:
        drainer.close()
    summary = {**drainer.stats(), "pending": left, "seconds": round(time.monotonic() - started, 3)}
    if as_json or not sys.stdout.isatty():
        click.echo(json.dumps(summary))
    else:
        click.echo(
            f"delivered {summary['delivered']}, pending {left}, dead-lettered"
            f" {summary['dead_lettered']}, last error {summary['last_error']}"
        )
    sys.exit(0 if left == 0 else 1)


@main.command("verify")
@click.argument("spool_dir", type=_DIR)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--key-env",
    default=ENV_KEY,
    show_default=True,
    help="Environment variable holding the HMAC signing key.",
)
@click.option("--replay", is_flag=True, help="Then re-ship pending records of verified lanes.")
@click.option(
    "--to",
    "to_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="With --replay: write JSON lines to this file instead of the queue.",
)
@click.option("--queue", default=DEFAULT_QUEUE, show_default=True, help="With --replay.")
@click.option("--strict", is_flag=True, help="Exit 1 on notices too (an unclean close).")
def verify_cmd(
    spool_dir: str,
    as_json: bool,
    key_env: str,
    replay: bool,
    to_file: Optional[str],
    queue: str,
    strict: bool,
) -> None:
    """Check framing, checksums, chain, sequence, cursor and clean-close tail."""
    _existing(spool_dir)
    if to_file and not replay:
        raise click.UsageError("--to needs --replay")
    raw_key = os.environ.get(key_env)
    report = verify_spool(spool_dir, key=raw_key.encode("utf-8") if raw_key else None)
    replayed = _replay(spool_dir, report, to_file, queue) if replay else None
    if as_json:
        doc = report.to_dict()
        if replayed is not None:
            doc["replayed"] = replayed
        click.echo(json.dumps(doc))
    else:
        _print_report(spool_dir, report)
        if replayed is not None:
            click.echo(f"  replayed {replayed} record(s) to {to_file or queue}")
    sys.exit(0 if report.valid and not (strict and report.notices) else 1)


def _replay(spool_dir: str, report: VerifyReport, to_file: Optional[str], queue: str) -> int:
    """Ship the pending records of lanes without problems (an unclean close is none).

    The copied spool gets nothing but new cursors: no lane is removed, no
    acknowledged segment unlinked, no gap lane opened, no tail truncated.
    """
    from cerbistream_spool.drain import Drainer  # noqa: PLC0415
    from cerbistream_spool.transports.jsonl import JsonlTransport  # noqa: PLC0415

    bad = {p.lane for p in report.problems}
    lanes = {ln["lane"] for ln in report.lanes} - bad
    readonly = [n for n in sorted(lanes) if not os.access(lane_dir(spool_dir, n), os.W_OK)]
    if readonly:  # acks would fail and be retried until the timeout
        raise click.ClickException(
            f"cannot replay: lane {readonly[0]:04d} of {spool_dir} is not writable (replay"
            " writes each lane's cursor); copy the spool somewhere writable first"
        )
    if to_file:
        with open(to_file, "a"):  # the file exists even when nothing is pending
            pass
    transport = JsonlTransport(to_file) if to_file else _transport(None, queue)
    try:
        drainer = Drainer(spool_dir, transport, replay=True)
    except OSError as exc:
        raise click.ClickException(f"cannot replay {spool_dir}: {exc}") from exc
    drainer.reader.lanes = lanes
    try:
        drainer.drain_until_idle(timeout=300)
    finally:
        drainer.close()
    return int(drainer.stats()["delivered"])


def _print_report(spool_dir: str, report: VerifyReport) -> None:
    state = "intact" if report.valid else f"{len(report.problems)} problem(s)"
    if report.notices:
        state += f", {len(report.notices)} notice(s)"
    click.echo(
        f"{spool_dir}: {state}; {report.records} records in {report.segments} segments,"
        f" {report.pending} pending, signatures {report.signatures}"
    )
    for p in report.problems:
        click.echo(f"  {p.kind}: lane {p.lane} {p.segment} @{p.offset} seq {p.seq}: {p.detail}")
    for n in report.notices:
        click.echo(f"  notice {n.kind}: lane {n.lane} {n.segment} @{n.offset}: {n.detail}")
    for gap in report.gaps:
        click.echo(
            f"  gap (lane {gap['lane']} seq {gap['seq']}): {gap.get('reason')}"
            f" {gap.get('count')} record(s) {gap.get('first_seq')}..{gap.get('last_seq')}"
        )
    for name in report.quarantined:
        click.echo(f"  quarantined: {name}")
    for name in report.foreign:
        click.echo(f"  foreign: {name} (not a lane, segment or cursor; left alone)")


@main.command("status")
@click.argument("spool_dir", type=_DIR)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status_cmd(spool_dir: str, as_json: bool) -> None:
    """Lanes, segments, pending records/bytes, oldest pending age, last error."""
    doc = spool_status(_existing(spool_dir))
    if as_json:
        click.echo(json.dumps(doc))
        return
    age = doc["oldest_pending_age_s"]
    click.echo(
        f"{doc['spool_dir']}: {doc['pending_records']} pending records"
        f" ({doc['pending_bytes']} bytes); {doc['spool_bytes']} bytes in {doc['segments']}"
        " segments; oldest pending"
        f" {'-' if age is None else f'{age:.1f}s'}; last error {doc['last_error']}"
    )
    for ln in doc["lanes"]:
        click.echo(
            f"  lane {ln['lane']:04d} {'live' if ln['live'] else 'idle'}: {ln['segments']}"
            f" segments, {ln['bytes']} bytes, {ln['pending_records']} pending,"
            f" acked {ln['acked_seq']}, last {ln['last_seq']}"
        )
    for name in doc["quarantined"]:
        click.echo(f"  quarantined: {name}")
    for name in doc["foreign"]:
        click.echo(f"  foreign: {name} (not a lane, segment or cursor; left alone)")


@main.command("tail")
@click.argument("spool_dir", type=_DIR)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events.")
@click.option("--all", "everything", is_flag=True, help="Include delivered events still on disk.")
def tail_cmd(spool_dir: str, follow: bool, everything: bool) -> None:
    """Print events as JSON lines (pending only unless --all)."""
    from cerbistream_spool.event import body_to_json  # noqa: PLC0415

    reader = SpoolReader(_existing(spool_dir), remove_idle_lanes=False, from_start=everything)
    wake = threading.Event()
    observer = _watch(spool_dir, wake) if follow else None
    try:
        while True:
            for batch in reader.batches():
                for record in batch.events():
                    try:
                        line = body_to_json(record.value())
                    except Exception as exc:  # noqa: BLE001 — a damaged body must not stop tail
                        click.echo(
                            f"lane {batch.lane} seq {record.seq}: undecodable event"
                            f" ({type(exc).__name__})",
                            err=True,
                        )
                        continue
                    click.echo(line)
            if not follow:
                return
            wake.wait(1.0)
            wake.clear()
    except KeyboardInterrupt:
        return
    finally:
        if observer is not None:
            observer.stop()
            observer.join(5)


def _watch(spool_dir: str, wake: threading.Event) -> Any:
    from watchdog.events import FileSystemEvent, FileSystemEventHandler  # noqa: PLC0415
    from watchdog.observers import Observer  # noqa: PLC0415

    class _Wake(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            wake.set()

    observer = Observer()
    observer.daemon = True
    observer.schedule(_Wake(), spool_dir, recursive=True)
    observer.start()
    return observer
