"""A pre-fork app for tests/test_fork.py: the parent configures logging, then forks.

The parent makes one SpoolHandler (as gunicorn ``--preload`` does), logs
``--records`` events, forks ``--children`` workers, and every process then logs
``--records`` more, concurrently. Each event carries ``extra={"proc", "k"}``.
Children end the way a worker exits (``logging.shutdown()``). The parent waits
for them, then, with a connection string, until nothing is pending in any
lane (its drainer ships every lane), and closes. It prints one JSON line.

Run: ``python tests/fork_app.py --spool-dir D --fsync always --children 3 --records 300
[--connection-string S]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import List, Optional

from spoolkit import wait_until

from cerbistream_spool import SpoolHandler
from cerbistream_spool.spool.reader import SpoolReader


def log_records(log: logging.Logger, proc: int, count: int) -> None:
    for k in range(count):
        log.info("proc %d record %d", proc, k, extra={"proc": proc, "k": k})


def nothing_pending(spool_dir: str) -> bool:
    reader = SpoolReader(spool_dir, remove_idle_lanes=False)
    return not any(batch.events() for batch in reader.batches())


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spool-dir", required=True)
    parser.add_argument("--fsync", default="interval")
    parser.add_argument("--children", type=int, default=3)
    parser.add_argument("--records", type=int, default=300)
    parser.add_argument("--connection-string", default="")
    args = parser.parse_args(argv)

    handler = SpoolHandler(
        args.spool_dir,
        tenant_id="tenant-fork",
        app_name="app-fork",
        fsync=args.fsync,
        connection_string=args.connection_string or None,
        drain=bool(args.connection_string),
    )
    log = logging.getLogger("forkapp")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    log_records(log, -1, args.records)  # before the fork, parent only

    children = []
    for proc in range(args.children):
        pid = os.fork()
        if pid == 0:  # a worker: log, then exit the way a worker does
            code = 0
            try:
                started = time.monotonic()
                log_records(log, proc, args.records)
                elapsed = time.monotonic() - started
                stats = handler.stats()
                line = json.dumps({"child": proc, "elapsed_s": elapsed, "stats": stats})
                os.write(1, (line + "\n").encode())  # one write: lines of workers never mix
                logging.shutdown()
            except BaseException:
                import traceback  # noqa: PLC0415

                traceback.print_exc()
                code = 1
            os._exit(code)
        children.append(pid)

    log_records(log, args.children, args.records)  # the parent logs alongside its workers
    failed = 0
    for pid in children:
        _, status = os.waitpid(pid, 0)
        failed += os.waitstatus_to_exitcode(status) != 0
    handler.flush()
    shipped = True
    if args.connection_string:

        def all_shipped() -> bool:
            handler.drainer_wake()
            return nothing_pending(args.spool_dir)

        shipped = wait_until(all_shipped, 60, every=0.05)
    stats = handler.stats()
    handler.close()
    print(json.dumps({"parent": True, "failed": failed, "shipped": shipped, "stats": stats}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
