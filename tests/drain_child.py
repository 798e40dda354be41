"""The app process that tests/test_drain.py kills with SIGKILL between send and ack.

It logs ``--records`` events through a SpoolHandler (``drain=False``), flushes,
prints ``LOGGED <n>``, then runs one Drainer pass whose transport is the real
ServiceBusTransport with one change: after the broker accepted the batch
(``send`` returned), it prints ``SENT <n>`` and sleeps forever, so the drainer
never acks. The test kills it there.

Run: ``python tests/drain_child.py --spool-dir D --connection-string S --records N``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import List, Optional, Sequence

from cerbistream_spool import SpoolHandler
from cerbistream_spool.drain import Drainer
from cerbistream_spool.transports.base import OutgoingMessage, SendResult
from cerbistream_spool.transports.servicebus import ServiceBusTransport

QUEUE = "cerbishield.log-scoring"


class SendThenHang(ServiceBusTransport):
    """Sends for real, then never returns: the ack after a send never happens."""

    def send(self, messages: Sequence[OutgoingMessage]) -> SendResult:
        super().send(messages)
        print(f"SENT {len(messages)}", flush=True)
        while True:  # the test sends SIGKILL here
            time.sleep(60)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spool-dir", required=True)
    parser.add_argument("--connection-string", required=True)
    parser.add_argument("--records", type=int, default=20)
    args = parser.parse_args(argv)

    handler = SpoolHandler(
        args.spool_dir, tenant_id="child-tenant", app_name="child-app", drain=False
    )
    log = logging.getLogger("drain_child")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    for i in range(args.records):
        log.warning("child record %d", i, extra={"i": i})
    handler.flush()
    print(f"LOGGED {args.records}", flush=True)

    transport = SendThenHang(
        queue_name=QUEUE, connection_string=args.connection_string, send_timeout_s=10
    )
    drainer = Drainer.for_writer(args.spool_dir, transport, handler.writer)
    drainer.run_once()  # never returns: SendThenHang.send hangs after the broker accepted
    print("UNREACHABLE", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
