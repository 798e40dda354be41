"""The main job end to end on one machine, no Azure account needed.

An app logs events into a spool while the queue is unreachable; the spool is
then read back from its cursor, acknowledged, and verified. Prints counts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from cerbistream_spool import SpoolConfig, SpoolReader, SpoolWriter, verify


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--spool-dir", default=None)
    args = parser.parse_args(argv)
    spool_dir = args.spool_dir or tempfile.mkdtemp(prefix="cerbispool-demo-")

    started = time.perf_counter()
    with SpoolWriter(spool_dir, SpoolConfig(fsync="interval")) as writer:
        for i in range(args.records):
            writer.append({"LogId": f"demo-{i}", "message": "user logged in", "n": i})
    logged = args.records
    before = verify(spool_dir)

    reader = SpoolReader(spool_dir)
    delivered = 0
    for batch in reader.batches():
        delivered += len(batch.events())
        reader.ack(batch)
    after = verify(spool_dir)
    elapsed = time.perf_counter() - started
    print(
        f"spool={spool_dir} logged={logged} spooled_valid={before.valid} "
        f"pending_before={before.pending} read_and_acked={delivered} "
        f"pending_after={after.pending} verify={'ok' if after.valid else 'FAILED'} "
        f"seconds={elapsed:.2f}"
    )
    return 0 if before.valid and after.valid and delivered == logged else 1


if __name__ == "__main__":
    sys.exit(main())
