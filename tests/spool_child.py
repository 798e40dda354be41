"""The writer process of the crash tests, and the import of tools/soak_spool.py.

The child loop, the kill plans and the spool checks live once, in
tools/soak_spool.py (its ``child`` command is the process the tests kill).
Tests import it from here: ``from spool_child import soak``. Run as a script,
this file is that child: ``python tests/spool_child.py --spool-dir D --mode M``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: tools/ is not installed
    sys.path.insert(0, str(ROOT))

from tools import soak_spool as soak  # noqa: E402

if __name__ == "__main__":
    sys.exit(soak.main(["child", *sys.argv[1:]]))
