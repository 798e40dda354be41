"""`cerbispool`: the command line (docs/CONTRACT.md §5). Commands print what the library returns.

Output is text, or JSON with ``--json``, whatever stdout is (a terminal, a pipe, a
file). ``drain`` draws its progress on stderr when stderr is a terminal. Also run
as ``python -m cerbistream_spool``; shell completion: ``_CERBISPOOL_COMPLETE=bash_source
cerbispool`` (README.md, CLI).
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import sys
import threading
import time
from typing import IO, TYPE_CHECKING, Any, Callable, Deque, Dict, List, NamedTuple, Optional, Tuple

import click

from cerbistream_spool import __version__
from cerbistream_spool.errors import PermanentTransportError
from cerbistream_spool.spool.chain import ENV_KEY
from cerbistream_spool.spool.lanes import is_spool_dir, lane_dir
from cerbistream_spool.transports.base import CONNECTION_ENV, DEFAULT_QUEUE

if TYPE_CHECKING:
    from cerbistream_spool.verify import VerifyReport

# Each command imports what only it needs where it starts (the drainer, the SDK, the
# event encoder, watchdog), so --help, status and verify load none of them
# (tests/test_imports.py).

__all__ = ["main"]

_DIR = click.Path(file_okay=False)
_STOP_GRACE_S = 3.0  # after a stop request, the process ends this soon whatever the SDK does
_NAMESPACE_HELP = (
    "Entra ID instead of a connection string: <name>.servicebus.windows.net, signed in"
    " with DefaultAzureCredential (pip install 'cerbistream_spool[identity]')."
)
_DRAW_EVERY_S = 0.25
_RATE_WINDOW_S = 5.0


class CommandError(click.ClickException):
    """A one-line ``Error: ...`` on stderr and exit 2: the command cannot do its job as asked."""

    exit_code = 2


class _Commands(click.Group):
    """The group: an OSError no command handled (stdout on a full disk, an I/O error) is
    one ``Error:`` line and exit 2, never a traceback. A closed pipe stays click's."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, **kwargs)
        except OSError as exc:  # click itself ends a closed pipe (EPIPE): exit 1, no message
            if exc.filename is None:  # a write to stdout (help and --version too)
                _silence_stdout()
                text = f"cannot write the output: {exc.strerror or exc}"
            else:
                text = str(exc)
            click.echo(f"Error: {text}", err=True)
            sys.exit(CommandError.exit_code)


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null, so the interpreter's last flush of stdout cannot fail."""
    try:
        fd = sys.stdout.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError):  # no real stdout (in-process runners): nothing to do
        return
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
# the version the code carries: a source tree without installed metadata has it too
@click.version_option(__version__, prog_name="cerbispool")
def main() -> None:
    """Spool governance log events to disk and ship them to Azure Service Bus."""


def _existing(spool_dir: str) -> str:
    """``spool_dir`` if it is a spool directory (docs/FORMAT.md §1), else exit 2."""
    if not os.path.isdir(spool_dir):
        raise CommandError(f"{spool_dir} is not a directory")
    if not is_spool_dir(spool_dir):
        raise CommandError(f"{spool_dir} is not a spool directory (it has no lanes/ or locks/)")
    return spool_dir


def _writable_output(path: str) -> str:
    """``path`` if a file can be created or appended there, else exit 2 (before any work)."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CommandError(f"cannot write {path}: it is a directory")
    if not os.path.isdir(parent):
        raise CommandError(f"cannot write {path}: no directory {parent}")
    target = path if os.path.exists(path) else parent
    if not os.access(target, os.W_OK):
        raise CommandError(f"cannot write {path}: permission denied")
    return path


def _transport(connection_string: Optional[str], queue: str, namespace: Optional[str]) -> Any:
    from cerbistream_spool.transports.servicebus import (  # noqa: PLC0415 — SDK import is heavy
        ServiceBusTransport,
    )

    if connection_string and namespace:
        raise click.UsageError("pass --connection-string or --namespace (Entra ID), not both")
    if namespace:  # Entra ID: DefaultAzureCredential (the identity extra)
        transport = ServiceBusTransport(queue_name=queue, fully_qualified_namespace=namespace)
    else:
        conn = connection_string or os.environ.get(CONNECTION_ENV)
        if not conn:
            raise click.UsageError(
                f"no connection string: pass --connection-string or --namespace,"
                f" or set {CONNECTION_ENV}"
            )
        transport = ServiceBusTransport(queue_name=queue, connection_string=conn)
    problem = transport.settings_problem()  # parsed here, so a typo never reaches a retry loop
    if problem:
        raise CommandError(problem)
    return transport


class _Backstop:
    """Ends the process ``_STOP_GRACE_S`` after a stop request if the command has not."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.code = 1
        self._armed = False

    def arm(self, code: int) -> None:
        if self._armed:
            return
        self._armed, self.code = True, code
        threading.Thread(target=self._run, name="cerbispool-backstop", daemon=True).start()

    def _run(self) -> None:
        if self.done.wait(_STOP_GRACE_S):
            return
        click.echo(
            f"cerbispool: still busy {_STOP_GRACE_S:g}s after the stop request; exiting", err=True
        )
        os._exit(self.code)


@main.command("drain")
@click.argument("spool_dir", type=_DIR)
@click.option("--connection-string", default=None, help=f"Else env {CONNECTION_ENV}.")
@click.option("--namespace", default=None, help=_NAMESPACE_HELP)
@click.option("--queue", default=DEFAULT_QUEUE, show_default=True)
@click.option("--follow", is_flag=True, help="Keep shipping new records until SIGINT/SIGTERM.")
@click.option("--timeout", type=float, default=None, help="Give up after SEC seconds.")
@click.option("--wait", is_flag=True, help="Wait for another drainer holding the spool.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def drain_cmd(
    spool_dir: str,
    connection_string: Optional[str],
    namespace: Optional[str],
    queue: str,
    follow: bool,
    timeout: Optional[float],
    wait: bool,
    as_json: bool,
) -> None:
    """Ship every pending record; exit 0 when nothing is left, 1 when some remain.

    Exit 2 at once for what retrying cannot fix: not a spool directory, a bad
    connection string or queue name; and (without --follow) a missing queue or
    authentication refused 3 times in a row. SIGINT/SIGTERM stop within a second
    and print the summary (without --follow: exit 130 / 143).
    """
    from cerbistream_spool.diagnostics import Reporter  # noqa: PLC0415
    from cerbistream_spool.drain import Drainer  # noqa: PLC0415

    _existing(spool_dir)  # only a writer creates a spool: a typo here must not make one
    reporter = Reporter()

    def on_error(exc: BaseException) -> None:
        reporter.report(type(exc).__name__, f"drain: {exc}; retrying")

    drainer = Drainer(spool_dir, _transport(connection_string, queue, namespace), on_error=on_error)
    backstop = _Backstop()
    signalled: List[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        signalled.append(signum)
        drainer.request_stop()
        backstop.arm(0 if follow else 128 + signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    started = time.monotonic()
    timer: Optional[threading.Timer] = None
    if timeout is not None:  # also cuts a send or lock wait in progress at the deadline

        def on_timeout() -> None:
            drainer.request_stop()
            backstop.arm(1)

        timer = threading.Timer(timeout, on_timeout)
        timer.daemon = True
        timer.start()
    gave_up: Optional[PermanentTransportError] = None
    try:
        if not _try_lock(drainer):
            holder = _lock_holder(drainer.lock_owner())
            if not wait:
                click.echo(
                    f"cerbispool drain: {spool_dir} is being shipped by {holder};"
                    " pass --wait to wait for it",
                    err=True,
                )
            else:
                click.echo(f"cerbispool drain: waiting for {holder} to release the spool", err=True)
            if not wait or not _try_lock(drainer, timeout):
                drainer.close()
                busy = f"another drainer ({holder}) is shipping this spool"
                _print_summary(
                    {**drainer.stats(), "last_error": busy},
                    drainer.pending_events(),
                    started,
                    as_json,
                )
                backstop.done.set()
                sys.exit(128 + signalled[0] if signalled else 1)
        with _Progress.on_stderr(drainer, follow) as progress:
            if follow:
                drainer.follow(progress=progress)
                left = drainer.pending_events()
            else:
                left = drainer.drain_until_idle(timeout, progress=progress, give_up=True)
    except PermanentTransportError as exc:
        gave_up = exc
        left = drainer.pending_events()
    finally:
        if timer is not None:
            timer.cancel()
        drainer.close()
    _print_summary(drainer.stats(), left, started, as_json)
    backstop.done.set()
    if gave_up is not None:
        click.echo(f"cerbispool drain: giving up: {gave_up}", err=True)
        sys.exit(2)
    if signalled and not follow:
        sys.exit(128 + signalled[0])
    sys.exit(0 if left == 0 else 1)


def _try_lock(drainer: Any, timeout: Optional[float] = 0) -> bool:
    """``drainer.try_lock``; a lock path that is not a lockable file ends the command (exit 2)."""
    try:
        return bool(drainer.try_lock(timeout))
    except OSError as exc:  # locks/ or drain.lock is a directory, a FIFO, unwritable...
        drainer.close()
        raise CommandError(f"cannot take the drain lock of {drainer.spool_dir}: {exc}") from exc


def _lock_holder(owner: Optional[Dict[str, Any]]) -> str:
    if owner and isinstance(owner.get("pid"), int):
        return f"pid {owner['pid']}"
    return "another process (pid unknown)"


class _Progress:
    """The drain's progress line on a terminal, redrawn per batch and every 250 ms.

    ``draining 1200/5000 (24%), 3100 records/s, 3800 pending``; while sends fail,
    ``outage: next retry in 4.1s; 1200/5000 (...); last error <error>`` (cut at the
    terminal's width). Called with the events of
    each acknowledged batch (``Drainer.drain_until_idle(progress=...)``).
    """

    def __init__(self, drainer: Any, follow: bool, out: Optional[IO[str]]) -> None:
        self._drainer = drainer
        self._follow = follow
        self._out = out  # None: not a terminal, draw nothing
        self._lock = threading.Lock()
        self._done = 0
        self._total = 0 if follow or out is None else drainer.pending_events()
        self._samples: Deque[Tuple[float, int]] = collections.deque()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._width = 0

    @staticmethod
    def on_stderr(drainer: Any, follow: bool) -> _Progress:
        """Drawn on stderr when it is a terminal; else nothing is drawn."""
        stderr = sys.stderr
        return _Progress(drainer, follow, stderr if stderr.isatty() else None)

    def __enter__(self) -> _Progress:
        if self._out is not None:
            self._samples.append((time.monotonic(), 0))
            self._draw()
            self._thread = threading.Thread(target=self._run, name="cerbispool-progress")
            self._thread.daemon = True
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)
            self._draw()
            with self._lock:
                assert self._out is not None
                self._out.write("\n")
                self._out.flush()

    def __call__(self, delivered: int) -> None:
        with self._lock:
            self._done += delivered
            self._samples.append((time.monotonic(), self._done))
        if self._out is not None:
            self._draw()

    def _run(self) -> None:
        while not self._stop.wait(_DRAW_EVERY_S):
            self._draw()

    def line(self) -> str:
        """The text of the progress line now."""
        with self._lock:
            done, now = self._done, time.monotonic()
            while len(self._samples) > 2 and now - self._samples[1][0] > _RATE_WINDOW_S:
                self._samples.popleft()
            since, base = self._samples[0] if self._samples else (now, 0)
        rate = (done - base) / (now - since) if now - since > 0.05 else 0.0
        if self._follow:
            where = f"{done} delivered, {rate:.0f} records/s"
        else:
            total = max(self._total, done)
            percent = 100 * done // total if total else 100
            where = f"{done}/{total} ({percent}%), {rate:.0f} records/s, {total - done} pending"
        retry_at = self._drainer.retry_at
        if retry_at is not None:  # failing: an outage, not a stall
            error = self._drainer.stats().get("last_error") or "send failed"
            wait = max(0.0, retry_at - now)
            return f"outage: next retry in {wait:.1f}s; {where}; last error {error}"
        return f"{'following' if self._follow else 'draining'} {where}"

    def _draw(self) -> None:
        out = self._out
        if out is None:
            return
        columns = shutil.get_terminal_size((100, 24)).columns
        text = self.line()[: max(20, columns - 1)]
        with self._lock:
            out.write("\r" + text.ljust(self._width))
            out.flush()
            self._width = len(text)


def _print_summary(stats: Dict[str, Any], left: int, started: float, as_json: bool) -> None:
    summary = {**stats, "pending": left, "seconds": round(time.monotonic() - started, 3)}
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(
            f"delivered {summary['delivered']}, pending {left}, dead-lettered"
            f" {summary['dead_lettered']}, last error {summary['last_error']}"
        )


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
@click.option(
    "--connection-string", default=None, help=f"With --replay. Else env {CONNECTION_ENV}."
)
@click.option("--namespace", default=None, help="With --replay. " + _NAMESPACE_HELP)
@click.option("--strict", is_flag=True, help="Exit 1 on notices too (an unclean close).")
def verify_cmd(
    spool_dir: str,
    as_json: bool,
    key_env: str,
    replay: bool,
    to_file: Optional[str],
    queue: str,
    connection_string: Optional[str],
    namespace: Optional[str],
    strict: bool,
) -> None:
    """Check framing, checksums, chain, sequence, cursor and clean-close tail."""
    from cerbistream_spool.verify import verify as verify_spool  # noqa: PLC0415

    _existing(spool_dir)
    if to_file and not replay:
        raise click.UsageError("--to needs --replay")
    if (connection_string or namespace) and not replay:
        raise click.UsageError("--connection-string and --namespace need --replay")
    if to_file and (connection_string or namespace):
        raise click.UsageError("--to writes a file: no --connection-string or --namespace")
    if to_file:
        _writable_output(to_file)
    raw_key = os.environ.get(key_env)
    report = verify_spool(spool_dir, key=raw_key.encode("utf-8") if raw_key else None)
    if not as_json:
        _print_report(spool_dir, report)  # before a replay, which may take a while
    target = _Target(queue, connection_string, namespace)
    replayed = _replay(spool_dir, report, to_file, target) if replay else None
    if as_json:
        doc = report.to_dict()
        if replayed is not None:
            doc["replayed"] = replayed.delivered
            doc["replay_pending"] = replayed.pending
            doc["replay_error"] = replayed.last_error
        click.echo(json.dumps(doc))
    elif replayed is not None:
        click.echo(f"  replayed {replayed.delivered} record(s) to {to_file or queue}")
    if replayed is not None and replayed.pending:
        click.echo(
            f"cerbispool verify: replay left {replayed.pending} record(s) pending:"
            f" {replayed.last_error or 'interrupted'}",
            err=True,
        )
    ok = report.valid and not (strict and report.notices)
    sys.exit(0 if ok and not (replayed is not None and replayed.pending) else 1)


class _Target(NamedTuple):
    queue: str
    connection_string: Optional[str]
    namespace: Optional[str]


class _Replayed(NamedTuple):
    delivered: int
    pending: int
    last_error: Optional[str]


def _replay(
    spool_dir: str, report: VerifyReport, to_file: Optional[str], target: _Target
) -> _Replayed:
    """Ship the pending records of lanes without problems (an unclean close is none).

    The copied spool gets nothing but new cursors: no lane is removed, no
    acknowledged segment unlinked, no gap lane opened, no tail truncated. A held
    drain lock or an error retrying cannot fix ends it at once (exit 2).
    """
    from cerbistream_spool.drain import Drainer  # noqa: PLC0415
    from cerbistream_spool.transports.jsonl import JsonlTransport  # noqa: PLC0415

    bad = {p.lane for p in report.problems}
    lanes = {ln["lane"] for ln in report.lanes} - bad
    readonly = [n for n in sorted(lanes) if not os.access(lane_dir(spool_dir, n), os.W_OK)]
    if readonly:  # acks would fail and be retried until the timeout
        raise CommandError(
            f"cannot replay: lane {readonly[0]:04d} of {spool_dir} is not writable (replay"
            " writes each lane's cursor); copy the spool somewhere writable first"
        )
    if to_file:
        try:
            with open(to_file, "a"):  # the file exists even when nothing is pending
                pass
        except OSError as exc:
            raise CommandError(f"cannot write {to_file}: {exc.strerror or exc}") from exc
    queue = target.queue
    transport = (
        JsonlTransport(to_file)
        if to_file
        else _transport(target.connection_string, queue, target.namespace)
    )
    try:
        drainer = Drainer(spool_dir, transport, replay=True)
    except OSError as exc:
        raise CommandError(f"cannot replay {spool_dir}: {exc}") from exc
    drainer.reader.lanes = lanes
    stop = _stop_on_signals(drainer)
    try:
        if not _try_lock(drainer):
            holder = _lock_holder(drainer.lock_owner())
            raise CommandError(f"cannot replay: {holder} is shipping {spool_dir} now")
        try:
            left = drainer.drain_until_idle(timeout=300, give_up=True)
        except PermanentTransportError as exc:
            raise CommandError(f"replay to {to_file or queue} failed: {exc}") from exc
    finally:
        stop()
        drainer.close()
    stats = drainer.stats()
    return _Replayed(int(stats["delivered"]), left, stats.get("last_error"))


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _stop_on_signals(drainer: Any) -> Callable[[], None]:
    """SIGINT/SIGTERM ask ``drainer`` to stop; returns what restores the old handlers."""
    if threading.current_thread() is not threading.main_thread():  # embedded: signals are not ours
        return lambda: None
    old = {s: signal.signal(s, lambda *_: drainer.request_stop()) for s in _STOP_SIGNALS}

    def restore() -> None:
        for signum, handler in old.items():
            signal.signal(signum, handler)

    return restore


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
            f"  gap (lane {gap['lane']} seq {gap['seq']}"
            f"{', delivered, in losses/ledger' if gap.get('source') == 'ledger' else ''}):"
            f" {gap.get('reason')}"
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
    from cerbistream_spool.status import status as spool_status  # noqa: PLC0415

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
    losses = doc["recorded_losses"]
    for reason, counts in sorted(losses["by_reason"].items()):
        click.echo(
            f"  recorded loss {reason}: {counts['records']} record(s) in {counts['gaps']} gap(s)"
        )
    for problem in losses["problems"]:
        click.echo(f"  losses ledger problem: {problem}")


@main.command("tail")
@click.argument("spool_dir", type=_DIR)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events.")
@click.option("--all", "everything", is_flag=True, help="Include delivered events still on disk.")
def tail_cmd(spool_dir: str, follow: bool, everything: bool) -> None:
    """Print events as JSON lines (pending only unless --all)."""
    from cerbistream_spool.event import body_to_json  # noqa: PLC0415
    from cerbistream_spool.spool.reader import SpoolReader  # noqa: PLC0415

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


if __name__ == "__main__":  # python -m cerbistream_spool.cli
    main()
