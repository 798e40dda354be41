"""An app with an in-process drainer, for tests/test_accounting.py (two processes, one lock).

It opens a SpoolWriter and a Drainer thread shipping to a JSON lines file, then
reads stdin: ``emit N`` appends N events, ``quit`` stops; each command is
answered with one JSON line: the drainer's stats.

Run: ``python tests/drain_lock_app.py SPOOL_DIR OUT.jsonl``.
"""

from __future__ import annotations

import json
import sys
from typing import List

from cerbistream_spool.drain import Drainer
from cerbistream_spool.spool import SpoolConfig, SpoolWriter
from cerbistream_spool.transports.jsonl import JsonlTransport


def main(argv: List[str]) -> int:
    spool_dir, out = argv[0], argv[1]
    writer = SpoolWriter(spool_dir, SpoolConfig(fsync="never"))
    drainer = Drainer.for_writer(
        spool_dir,
        JsonlTransport(out),
        writer,
        idle_poll_s=0.05,
        backoff_base_s=0.02,
        backoff_max_s=0.1,
    )
    drainer.start()
    emitted = 0
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "emit":
            for _ in range(int(cmd[1])):
                writer.append({"LogId": f"a-{emitted}", "n": emitted})
                emitted += 1
            drainer.wake()
        elif cmd[0] == "quit":
            break
        sys.stdout.write(json.dumps(drainer.stats()) + "\n")
        sys.stdout.flush()
    drainer.stop()
    writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
