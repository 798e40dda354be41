"""``python -m tools.crashstates --states N --seed S``: the last line is
``crash-states: states=N failures=F ...``; exit status 1 when F > 0."""

from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional

from tools.crashstates.recorder import RecordingFileSystem
from tools.crashstates.variants import VARIANTS
from tools.crashstates.workloads import PENDING, WORKLOADS, run_all


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.crashstates")
    parser.add_argument("--states", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workload", action="append", choices=[w.name for w in WORKLOADS + PENDING]
    )
    parser.add_argument("--keep", help="copy the first failing states of each workload here")
    parser.add_argument(
        "--variant", choices=sorted(VARIANTS), help="record through a broken filesystem"
    )
    args = parser.parse_args(argv)
    fs_class = VARIANTS[args.variant] if args.variant else RecordingFileSystem
    started = time.monotonic()
    results = run_all(args.states, args.seed, args.workload, fs_class, keep=args.keep)
    for r in results:
        per = 1000 * r.seconds / max(1, r.states)
        print(
            f"{r.name}: ops={r.ops} states={r.states} sampled={r.sampled}"
            f" failures={len(r.failures)} ms/state={per:.1f}"
        )
        for failure in r.failures[:5]:
            print(f"  FAIL {failure}")
    states = sum(r.states for r in results)
    failures = sum(len(r.failures) for r in results)
    checking = sum(r.seconds for r in results)
    per_state = 1000 * checking / max(1, states)
    print(
        f"crash-states: states={states} failures={failures} workloads={len(results)}"
        f" ops={sum(r.ops for r in results)} seed={args.seed}"
        f" seconds={time.monotonic() - started:.1f} ms_per_state={per_state:.1f}"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
