"""An app that tests/test_losses.py drives line by line over stdin, with real faults.

Each stdin line is a JSON command; each reply is one JSON line with
``handler.stats()`` after the command (the writer is quiescent then):

- ``["emit", n]``: log ``n`` records;
- ``["full", headroom]``: the disk "fills": ``RLIMIT_FSIZE`` is set to the size of
  the newest segment plus ``headroom`` bytes (SIGXFSZ ignored, so writes past it
  fail with a real ``EFBIG``); ``["heal"]`` lifts it;
- ``["ack", batches]``: a reader delivers and acks up to ``batches`` batches;
- ``["vanish"]``: the spool directory is removed under the running app
  (``["replace"]``: moved away and a new empty one made in its place);
- ``["close"]``: ``handler.close()`` (later emits are dropped and counted).

Run: ``python tests/loss_app.py SPOOL_DIR [fsync] [overflow] [max_spool_bytes]``.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import signal
import sys
from typing import Any, List

from cerbistream_spool import SpoolHandler
from cerbistream_spool.spool.lanes import lane_dir, list_lanes
from cerbistream_spool.spool.reader import SpoolReader
from cerbistream_spool.spool.segments import list_segments


def newest_segment_size(spool_dir: str) -> int:
    sizes = [
        os.path.getsize(path)
        for lane in list_lanes(spool_dir)
        for _, path in list_segments(lane_dir(spool_dir, lane))[-1:]
    ]
    return max(sizes, default=0)


def main(argv: List[str]) -> int:
    spool_dir = argv[0]
    fsync = argv[1] if len(argv) > 1 else "never"
    overflow = argv[2] if len(argv) > 2 else "drop_newest"
    max_spool = int(argv[3]) if len(argv) > 3 else 1 << 26
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = SpoolHandler(
        spool_dir,
        tenant_id="t",
        app_name="a",
        fsync=fsync,
        drain=False,
        overflow=overflow,
        max_spool_bytes=max_spool,
        segment_max_bytes=16384,
    )
    log = logging.getLogger("lossapp")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    emitted = replaced = 0
    for line in sys.stdin:
        cmd: List[Any] = json.loads(line)
        op = cmd[0]
        if op == "emit":
            for _ in range(int(cmd[1])):
                log.info("record %d", emitted, extra={"n": emitted, "pad": "x" * 100})
                emitted += 1
        elif op == "full":
            limit = newest_segment_size(spool_dir) + int(cmd[1])
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        elif op == "heal":
            resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        elif op == "ack":  # a drainer: another process, not under the app's RLIMIT_FSIZE
            limit = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
            reader = SpoolReader(spool_dir)
            for i, batch in enumerate(reader.batches(max_records=20)):
                if i >= int(cmd[1]):
                    break
                reader.ack(batch)
            resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        elif op == "vanish":
            shutil.rmtree(spool_dir, ignore_errors=True)
        elif op == "replace":
            if os.path.exists(spool_dir):
                os.rename(spool_dir, f"{spool_dir}.old{replaced}")
                replaced += 1
            os.mkdir(spool_dir, 0o700)
        elif op == "close":
            handler.close()
        stats = handler.stats()
        stats["emitted"] = emitted
        sys.stdout.write(json.dumps(stats) + "\n")
        sys.stdout.flush()
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    handler.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
