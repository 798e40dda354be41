"""Lazy package attributes (PEP 562): a public name imports its module on first use."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, List, MutableMapping, Tuple


def lazy_attributes(
    package: str, namespace: MutableMapping[str, Any], homes: Dict[str, str]
) -> Tuple[Callable[[str], Any], Callable[[], List[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``homes`` maps name -> module."""

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        namespace[name] = value  # once: later lookups are plain attribute reads
        return value

    def __dir__() -> List[str]:
        return sorted([*namespace, *homes])

    return __getattr__, __dir__
