"""Where spooled events go: the Transport protocol and its implementations.

The names load on first use (PEP 562), so importing ``transports.base`` for its
constants does not import every transport.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Dict, List

if TYPE_CHECKING:
    from cerbistream_spool.transports.base import (
        OutgoingMessage,
        SendResult,
        Transport,
        message_for_record,
    )
    from cerbistream_spool.transports.jsonl import JsonlTransport
    from cerbistream_spool.transports.memory import MemoryTransport

__all__ = [
    "JsonlTransport",
    "MemoryTransport",
    "OutgoingMessage",
    "SendResult",
    "Transport",
    "message_for_record",
]

# public name -> the module that defines it
_HOMES: Dict[str, str] = {
    "JsonlTransport": "cerbistream_spool.transports.jsonl",
    "MemoryTransport": "cerbistream_spool.transports.memory",
    "OutgoingMessage": "cerbistream_spool.transports.base",
    "SendResult": "cerbistream_spool.transports.base",
    "Transport": "cerbistream_spool.transports.base",
    "message_for_record": "cerbistream_spool.transports.base",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # once: later lookups are plain attribute reads
    return value


def __dir__() -> List[str]:
    return sorted([*globals(), *_HOMES])
