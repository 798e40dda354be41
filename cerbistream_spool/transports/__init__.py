"""Where spooled events go: the Transport protocol and its implementations.

The names load on first use (PEP 562), so importing ``transports.base`` for its
constants does not import every transport.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict

from cerbistream_spool._lazy import lazy_attributes

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


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _HOMES)
