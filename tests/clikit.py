"""`cerbispool` in this process (click.testing.CliRunner), for tests of arguments, messages
and exit codes; signals, terminals, stdin and ``python -m`` stay with real processes.

``drain`` installs SIGINT/SIGTERM handlers for its run: they are put back after each call,
so pytest's Ctrl-C keeps working.
"""

from __future__ import annotations

import signal
from typing import Dict, NamedTuple, Optional

from click.testing import CliRunner

from cerbistream_spool.cli import main


class Ran(NamedTuple):
    """What a command did: exit code, stdout, stderr."""

    code: int
    out: str
    err: str


def invoke(*args: str, env: Optional[Dict[str, Optional[str]]] = None) -> Ran:
    """Run ``cerbispool ARGS`` in-process; ``env`` sets (or, with None, unsets) variables."""
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:  # click >= 8.2 keeps stderr apart always
        runner = CliRunner()
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = runner.invoke(main, list(args), prog_name="cerbispool", env=env)
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)
