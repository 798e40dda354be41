"""The writer process of the crash tests, and the loader of tools/soak_spool.py.

The child loop, the kill plans and the spool checks live once, in
tools/soak_spool.py (its ``child`` command is the process the tests kill).
Tests import it from here: ``from spool_child import soak``. Run as a script,
this file is that child: ``python tests/spool_child.py --spool-dir D --mode M``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SOAK_PATH = Path(__file__).resolve().parents[1] / "tools" / "soak_spool.py"


def _load() -> ModuleType:
    name = "cerbistream_soak_spool"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SOAK_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


soak = _load()

if __name__ == "__main__":
    sys.exit(soak.main(["child", *sys.argv[1:]]))
