"""What every benchmark here shares: stderr progress, medians, and the machine line."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def log(msg: str) -> None:
    """Progress on stderr (stdout carries the report)."""
    print(msg, file=sys.stderr, flush=True)


def median(values: List[float]) -> float:
    """The median."""
    return statistics.median(values)


def fmt(x: float) -> str:
    """A rate with thousands separators."""
    return f"{x:,.0f}"


def run_threads(pool: List[threading.Thread], barrier: threading.Barrier) -> Tuple[float, float]:
    """Start ``pool``, release it through ``barrier`` (one party more than the pool) and
    join it; returns ``(perf_counter at the release, seconds until the last thread ended)``.
    """
    for th in pool:
        th.start()
    try:
        barrier.wait()
        start = time.perf_counter()
        for th in pool:
            th.join()
        return start, time.perf_counter() - start
    finally:
        for th in pool:
            th.join()


def code_version() -> str:
    """Short commit of the repository, ``+dirty`` when the package has local edits."""
    try:
        head = subprocess.run(
            ["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", REPO, "status", "--porcelain", "--", "cerbistream_spool"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def machine(**extra: Any) -> Dict[str, Any]:
    """Code version, date, load, interpreter and platform, plus ``extra`` versions."""
    import msgpack  # noqa: PLC0415

    return {
        "code": code_version(),
        "loadavg_at_start": list(os.getloadavg()),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "nproc": os.cpu_count(),
        "msgpack": ".".join(map(str, msgpack.version)),
        **extra,
    }
