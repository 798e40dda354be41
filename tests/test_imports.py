"""The package imports light and its public names are the documented objects."""

from __future__ import annotations

import subprocess
import sys


def test_every_public_name_resolves_to_what_its_module_defines() -> None:
    import cerbistream_spool.verify  # noqa: PLC0415 - the submodule named like a function

    for name in cerbistream_spool.__all__:
        assert getattr(cerbistream_spool, name) is not None, name
    assert callable(cerbistream_spool.verify)
    assert cerbistream_spool.SpoolHandler.__module__ == "cerbistream_spool.handler"
    assert set(cerbistream_spool.__all__) <= set(dir(cerbistream_spool))


def test_importing_the_package_loads_neither_the_handler_nor_watchdog() -> None:
    code = (
        "import sys, cerbistream_spool, cerbistream_spool.cli\n"
        "heavy = [m for m in ('cerbistream_spool.handler', 'watchdog') if m in sys.modules]\n"
        "print(heavy)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
