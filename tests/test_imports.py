"""The package imports light and its public names are the documented objects."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import cerbistream_spool

# what only some commands need: the encoder (and governance, regex), the drainer, the SDK
_HEAVY = (
    "cerbistream_spool.event",
    "cerbistream_spool.governance",
    "regex",
    "cerbistream_spool.drain",
    "cerbistream_spool.handler",
    "cerbistream_spool.transports.servicebus",
    "azure",
    "watchdog",
)


def _loaded_after(code: str, modules: tuple = _HEAVY) -> List[str]:  # type: ignore[type-arg]
    """Which of ``modules`` a fresh interpreter has loaded after running ``code``."""
    probe = (
        f"import json, sys\n{code}\nprint(json.dumps([m for m in {modules!r} if m in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


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


def _import_graph() -> Dict[str, Set[str]]:
    """Module -> the package modules it imports, at module level or inside functions.

    The package ``__init__`` is left out: its lazy name map (PEP 562) names every
    public module without importing it.
    """
    root = Path(cerbistream_spool.__file__).parent
    modules: Dict[str, Path] = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path

    def owner(name: str) -> str:
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    graph: Dict[str, Set[str]] = {}
    for name, path in modules.items():
        if name == "cerbistream_spool":
            continue
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found: Set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    found.add(full if full in modules else base)
        graph[name] = {
            owner(t)
            for t in found
            if t.startswith("cerbistream_spool.") and owner(t) not in (name, "cerbistream_spool")
        }
    return graph


def test_the_package_import_graph_has_no_cycle() -> None:
    graph = _import_graph()
    assert "cerbistream_spool.spool.writer" in graph and graph["cerbistream_spool.drain"]
    state: Dict[str, int] = {}  # 1: on the path, 2: done
    cycles: List[List[str]] = []

    def visit(node: str, path: List[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path, node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert cycles == []


def test_the_drainer_and_the_spool_import_nothing_of_the_handler() -> None:
    graph = _import_graph()
    handler = "cerbistream_spool.handler"
    for module, imports in graph.items():
        if module == "cerbistream_spool.drain" or module.startswith("cerbistream_spool.spool"):
            assert handler not in imports, module


def test_the_transport_constants_load_neither_the_encoder_nor_any_transport() -> None:
    modules = (*_HEAVY, "cerbistream_spool.transports.jsonl", "cerbistream_spool.transports.memory")
    assert (
        _loaded_after("from cerbistream_spool.transports.base import DEFAULT_QUEUE", modules) == []
    )
    assert _loaded_after("from cerbistream_spool.transports import JsonlTransport") == []


def test_cli_help_status_and_verify_load_no_encoder_drainer_or_sdk(tmp_path: Path) -> None:
    """One interpreter runs the three in turn: none of them loaded any of ``_HEAVY``."""
    (tmp_path / "locks").mkdir()  # an empty spool (docs/FORMAT.md §1)
    runs = [["--help"], ["status", str(tmp_path)], ["verify", str(tmp_path)]]
    code = (
        "from cerbistream_spool.cli import main\n"
        f"for args in {runs!r}:\n"
        "    try:\n        main(args, prog_name='cerbispool')\n"
        "    except SystemExit as e:\n        assert not e.code, (args, e.code)"
    )
    assert _loaded_after(code) == []
