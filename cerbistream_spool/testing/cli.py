"""Run the local Service Bus-compatible AMQP peer as a dev tool.

    python -m cerbistream_spool.testing --port 5672 [--busy-rate 0.3] [--json] ...

Prints the connection string as the first line on stdout, then (with
``--json``) one JSON line per accepted message, until Ctrl-C / SIGTERM (or
``--duration`` seconds). NOT a production broker: nothing is stored.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import signal
import sys
import threading
from typing import Any, Dict, List, Optional

from cerbistream_spool.testing.peer import AcceptedMessage, LocalPeer

_SWITCHES = ("busy_rate", "close_after", "settle_delay", "auth_fail", "close_abort")


def record_to_json(rec: AcceptedMessage) -> str:
    """One accepted message as a JSON line (body as text if UTF-8, else base64)."""
    out: Dict[str, Any] = {
        "entity": rec.entity,
        "message_id": rec.message_id,
        "content_type": rec.content_type,
        "application_properties": rec.application_properties,
        "delivery_seq": rec.delivery_seq,
        "batch_index": rec.batch_index,
        "connection_id": rec.connection_id,
    }
    body = rec.body
    if isinstance(body, bytes):
        try:
            out["body"] = body.decode("utf-8")
        except UnicodeDecodeError:
            out["body_b64"] = base64.b64encode(body).decode("ascii")
    else:
        out["body"] = body
    return json.dumps(out, default=str, ensure_ascii=False)


def _parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m cerbistream_spool.testing",
        description="Local Service Bus-compatible AMQP 1.0 peer for tests and demos "
        "(127.0.0.1 only; NOT a production broker).",
    )
    ap.add_argument(
        "--port", type=int, default=5672, help="port on 127.0.0.1 (0 = pick a free one)"
    )
    ap.add_argument(
        "--entity", default=None, help="append EntityPath=<entity> to the printed string"
    )
    ap.add_argument(
        "--busy-rate", type=float, default=0.0, help="reject this fraction (0..1) as server-busy"
    )
    ap.add_argument(
        "--close-after",
        type=int,
        default=None,
        help="drop the connection on the N-th next delivery (once)",
    )
    ap.add_argument(
        "--close-abort", action="store_true", help="close_after cuts TCP instead of an AMQP close"
    )
    ap.add_argument(
        "--settle-delay", type=float, default=0.0, help="seconds before settling each delivery"
    )
    ap.add_argument("--auth-fail", action="store_true", help="answer CBS put-token with 401")
    ap.add_argument("--seed", type=int, default=0, help="seed for busy-rate decisions")
    ap.add_argument("--json", action="store_true", help="print one JSON line per accepted message")
    ap.add_argument(
        "--max-records", type=int, default=10_000, help="keep only the last N records in memory"
    )
    ap.add_argument("--duration", type=float, default=None, help="exit after this many seconds")
    ap.add_argument(
        "--control-stdin",
        action="store_true",
        help="read commands from stdin: 'busy_rate 0.5', 'close_after 3', 'settle_delay 1', "
        "'auth_fail 1', 'close_abort 1', 'restart [DOWN_S]', 'stats', 'clear'",
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="peer logging on stderr")
    return ap.parse_args(argv)


def apply_command(peer: LocalPeer, line: str) -> str:
    """Apply one ``--control-stdin`` command; return a one-line reply."""
    parts = line.split()
    if not parts:
        return ""
    cmd, args = parts[0].replace("-", "_"), parts[1:]
    try:
        if cmd in _SWITCHES:
            if not args:
                return f"{cmd} = {getattr(peer, cmd)}"
            raw = args[0]
            value: Any
            if cmd in ("auth_fail", "close_abort"):
                value = raw.lower() in ("1", "true", "on", "yes")
            elif cmd == "close_after":
                value = None if raw.lower() in ("none", "off", "0") else int(raw)
            else:
                value = float(raw)
            setattr(peer, cmd, value)
            return f"{cmd} = {getattr(peer, cmd)}"
        if cmd == "restart":
            peer.restart(down_for=float(args[0]) if args else 0.0)
            return f"restarted on port {peer.port}"
        if cmd == "stats":
            return json.dumps(peer.stats())
        if cmd == "clear":
            peer.clear()
            return "cleared"
    except ValueError as exc:
        return f"error: {exc}"
    return f"unknown command {cmd!r}"


def main(argv: Optional[List[str]] = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if not args.verbose:
        # proton logs an ERROR whenever a client hangs up mid-write; that is normal here
        logging.getLogger("proton").setLevel(logging.CRITICAL)
    out_lock = threading.Lock()

    def emit(line: str) -> None:
        with out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def on_accept(rec: AcceptedMessage) -> None:
        emit(record_to_json(rec))

    try:
        peer = LocalPeer(
            args.port,
            busy_rate=args.busy_rate,
            close_after=args.close_after,
            close_abort=args.close_abort,
            settle_delay=args.settle_delay,
            auth_fail=args.auth_fail,
            seed=args.seed,
            max_records=args.max_records,
            on_accept=on_accept if args.json else None,
        )
        peer.start()
    except (OSError, ValueError) as exc:
        print(f"amqp_peer: cannot start: {exc}", file=sys.stderr)
        return 2

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    emit(peer.connection_string(args.entity))
    print(
        f"amqp_peer: listening on 127.0.0.1:{peer.port} (NOT a production broker); Ctrl-C to stop",
        file=sys.stderr,
    )

    if args.control_stdin:

        def read_commands() -> None:
            for line in sys.stdin:
                reply = apply_command(peer, line)
                if reply:
                    print(f"amqp_peer: {reply}", file=sys.stderr)
            # stdin closed: keep running until a signal or --duration

        threading.Thread(target=read_commands, name="amqp-peer-stdin", daemon=True).start()

    try:
        done.wait(args.duration)
    except KeyboardInterrupt:
        pass
    finally:
        peer.stop()
        print(f"amqp_peer: stopped; stats {json.dumps(peer.stats())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
