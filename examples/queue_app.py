"""Log through a QueueHandler: the app thread only enqueues, a QueueListener spools.

Run from anywhere: ``python examples/queue_app.py``. It spools into
``./spool-example`` (relative to the current directory) with ``drain=False``
(offline: ship later with ``cerbispool drain ./spool-example``), logs one
record inside a request with a correlation id and an exception, and prints
one summary line. ``CaptureContext`` on the queue handler is what keeps the
correlation id and the structured exception (docs/OPERATIONS.md).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import queue
from pathlib import Path

from cerbistream_spool import CaptureContext, SpoolHandler, SpoolReader, set_correlation_id

RULES = Path(__file__).resolve().parent.parent / "cerbi_governance.json"


def charge(order_id: str) -> None:
    raise ValueError(f"card declined for {order_id}")


def main() -> int:
    spool = SpoolHandler(
        "spool-example",
        tenant_id="example-tenant",
        app_name="queue-app",
        governance_config_path=str(RULES) if RULES.exists() else None,
        drain=False,
    )
    records: queue.Queue[logging.LogRecord] = queue.Queue()
    queue_handler = logging.handlers.QueueHandler(records)
    queue_handler.addFilter(CaptureContext())  # correlation id, message, exception: at enqueue
    listener = logging.handlers.QueueListener(records, spool)
    listener.start()

    root = logging.getLogger()
    root.addHandler(queue_handler)
    root.setLevel(logging.INFO)
    set_correlation_id("req-42")
    try:
        charge("o-1001")
    except ValueError:
        logging.getLogger("shop").exception("payment failed", extra={"order_id": "o-1001"})

    listener.stop()  # the listener's queue is empty once this returns
    root.removeHandler(queue_handler)
    spool.close()

    reader = SpoolReader(os.path.abspath("spool-example"), remove_idle_lanes=False)
    pending = [r.value() for batch in reader.batches() for r in batch.events()]
    last = pending[-1]
    print(
        f"queue_app: {spool.stats()['accepted']} event spooled to ./spool-example"
        f" ({len(pending)} pending there), CorrelationId {last['CorrelationId']},"
        f" exception {last['RawPayload']['exception']['type']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
