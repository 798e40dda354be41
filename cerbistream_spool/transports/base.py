"""The Transport protocol and the queue message built from a record (docs/CONTRACT.md §2).

Light on purpose: the CLI reads the queue and connection defaults from here, so the
event encoder (and with it governance and regex) loads on the first message built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Protocol, Sequence, Tuple

if TYPE_CHECKING:
    from cerbistream_spool.spool.record import Record

__all__ = [
    "CONNECTION_ENV",
    "DEFAULT_QUEUE",
    "OutgoingMessage",
    "SendResult",
    "Transport",
    "message_for_record",
]

DEFAULT_QUEUE = "cerbishield.log-scoring"  # docs/CONTRACT.md §2
CONNECTION_ENV = "CERBISTREAM_SERVICEBUS_CONNECTION"  # the connection string, else none

_PROPERTIES = ("TenantId", "AppName", "LogLevel", "SchemaVersion")


@dataclass(frozen=True)
class OutgoingMessage:
    """One event as it goes on the wire: MessageId = LogId, UTF-8 JSON body."""

    lane: int
    seq: int
    message_id: str
    body: bytes
    application_properties: Dict[str, Any]
    content_type: str = "application/json"


@dataclass
class SendResult:
    """What a transport could not deliver and never will (dead-letter these)."""

    rejected: List[Tuple[OutgoingMessage, str]] = field(default_factory=list)


class Transport(Protocol):
    """Sends messages in order; raises TransientTransportError / PermanentTransportError.

    A call that returns means the broker accepted every message not listed in
    ``SendResult.rejected``. A call that raises may have delivered a prefix:
    the drainer re-sends the whole batch (at-least-once, same MessageIds).
    """

    max_batch_bytes: Optional[int]

    def send(self, messages: Sequence[OutgoingMessage]) -> SendResult:
        """Deliver ``messages``; see the class docstring."""

    def close(self) -> None:
        """Release connections; the transport may be used again afterwards."""


def message_for_record(lane: int, record: Record) -> OutgoingMessage:
    """The queue message for an event record; MessageId is its LogId."""
    from cerbistream_spool.event import event_to_json  # noqa: PLC0415 - light module

    event = record.value()
    if not isinstance(event, dict):
        event = {"value": event}
    log_id = event.get("LogId")
    message_id = log_id if isinstance(log_id, str) and 0 < len(log_id) <= 128 else None
    props = {k: event[k] for k in _PROPERTIES if isinstance(event.get(k), (str, int, float))}
    return OutgoingMessage(
        lane=lane,
        seq=record.seq,
        message_id=message_id or record.hash.hex()[:32],
        body=event_to_json(event).encode("utf-8"),
        application_properties=props,
    )
