"""The main job end to end on one machine, with no Azure account.

1. An app logs through SpoolHandler while the queue is unreachable (the
   drainer keeps failing and backing off; nothing is lost, emit never waits).
2. A local Service Bus-compatible AMQP 1.0 peer comes up on that address.
3. The handler's own drainer ships the spool with the real azure-servicebus SDK.
4. The spool is verified. Prints logged / delivered / duplicates / verify.

Run from the repo root: ``python -m tools.demo``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import tempfile
import time
from typing import List, Optional

from cerbistream_spool import SpoolHandler, set_correlation_id, verify
from cerbistream_spool.testing import LocalPeer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--spool-dir", default=None)
    parser.add_argument("--fsync", default="interval", choices=["always", "interval", "never"])
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    spool_dir = args.spool_dir or tempfile.mkdtemp(prefix="cerbispool-demo-")
    port = free_port()
    conn = f"Endpoint=sb://127.0.0.1:{port};SharedAccessKeyName=demo;SharedAccessKey=demo;UseDevelopmentEmulator=true"

    handler = SpoolHandler(
        spool_dir,
        tenant_id="demo-tenant",
        app_name="demo-app",
        environment="edge",
        governance_config_path=os.path.join(REPO, "cerbi_governance.json"),
        connection_string=conn,
        fsync=args.fsync,
    )
    app = logging.getLogger("demo.app")
    app.propagate = False
    app.addHandler(handler)
    app.setLevel(logging.INFO)

    started = time.monotonic()
    set_correlation_id("demo-run")
    for i in range(args.records):  # the queue is unreachable: nothing listens on the port
        app.info("user %s logged in", i, extra={"user_id": i, "email": f"u{i}@example.com"})
    offline_s = time.monotonic() - started
    before = handler.stats()
    print(
        f"logged {args.records} records offline in {offline_s:.2f}s; "
        f"delivered so far {before['delivered']}, last error: {before['last_error']}"
    )

    peer = LocalPeer.start(port=port)
    try:
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and len(set(peer.message_ids())) < args.records:
            handler.drainer_wake()
            time.sleep(0.1)
        handler.close()
        accepted = peer.accepted()
    finally:
        peer.stop()
    report = verify(spool_dir)
    ids = [m.message_id for m in accepted]
    unique = set(ids)
    bodies_ok = all(json.loads(m.body)["LogId"] == m.message_id for m in accepted)
    print(
        f"logged={args.records} delivered={len(unique)} duplicates={len(ids) - len(unique)} "
        f"verify={'ok' if report.valid else 'FAILED'} pending={report.pending} "
        f"seconds={time.monotonic() - started:.2f} spool={spool_dir}"
    )
    ok = len(unique) == args.records and report.valid and report.pending == 0 and bodies_ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
