"""Raw azure-servicebus batch-send throughput against the local peer.

    python -m tools.amqp_peer.bench [--messages 20000] [--body-size 300]

Starts a LocalPeer, sends ``--messages`` messages of ``--body-size`` bytes in
SDK batches (``create_message_batch()``, capped by the peer's 1 MiB
max-message-size), waits until the peer recorded all of them and prints one
JSON line with messages/s. It measures the SDK + this Python peer on one
machine: an upper bound for a Python sender, not a Service Bus number.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from typing import Any, Dict, List, Optional

from azure.servicebus import ServiceBusClient, ServiceBusMessage

from cerbistream_spool.testing import LocalPeer


def run(messages: int, body_size: int, queue: str = "bench") -> Dict[str, Any]:
    body = b"x" * body_size
    with LocalPeer.start() as peer:
        client = ServiceBusClient.from_connection_string(peer.connection_string())
        with client, client.get_queue_sender(queue) as sender:
            # warm-up: connection, CBS and link attach are not part of the rate
            sender.send_messages(ServiceBusMessage(b"warm-up"), timeout=10)
            peer.clear()
            t0 = time.perf_counter()
            batches = 0
            sent = 0
            batch = sender.create_message_batch()
            while sent < messages:
                msg = ServiceBusMessage(
                    body, message_id=str(uuid.uuid4()), content_type="application/json"
                )
                try:
                    batch.add_message(msg)
                except ValueError:  # MessageSizeExceededError: batch full
                    sender.send_messages(batch, timeout=30)
                    batches += 1
                    batch = sender.create_message_batch()
                    batch.add_message(msg)
                sent += 1
            if len(batch):
                sender.send_messages(batch, timeout=30)
                batches += 1
            send_s = time.perf_counter() - t0
            complete = peer.wait_for(messages, timeout=30)
            total_s = time.perf_counter() - t0
            stats = peer.stats()
    return {
        "messages": messages,
        "body_size": body_size,
        "batches": batches,
        "recorded": stats["accepted_messages"],
        "complete": complete,
        "seconds": round(total_s, 3),
        "msgs_per_s": round(messages / total_s, 1),
        "send_seconds": round(send_s, 3),
    }


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.amqp_peer.bench", description=__doc__)
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--body-size", type=int, default=300)
    args = ap.parse_args(argv)
    result = run(args.messages, args.body_size)
    print(json.dumps(result))
    return 0 if result["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
