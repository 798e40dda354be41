"""Where spooled events go: the Transport protocol and its implementations."""

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
