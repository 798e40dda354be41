"""MemoryTransport: an in-process transport for tests (ours and our users')."""

from __future__ import annotations

import threading
from typing import List, Optional, Sequence

from cerbistream_spool.errors import TransientTransportError
from cerbistream_spool.transports.base import OutgoingMessage, SendResult

__all__ = ["MemoryTransport"]


class MemoryTransport:
    """Keeps every delivered message in ``messages``; ``fail_next`` makes sends fail."""

    def __init__(self, max_message_bytes: Optional[int] = None) -> None:
        self.max_batch_bytes: Optional[int] = None
        self.max_message_bytes = max_message_bytes
        self.messages: List[OutgoingMessage] = []
        self.fail_next = 0
        self.sends = 0
        self._lock = threading.Lock()

    def send(self, messages: Sequence[OutgoingMessage]) -> SendResult:
        """Record ``messages``, or raise TransientTransportError while ``fail_next`` > 0."""
        with self._lock:
            self.sends += 1
            if self.fail_next > 0:
                self.fail_next -= 1
                raise TransientTransportError("MemoryTransport: injected failure")
            result = SendResult()
            for message in messages:
                if (
                    self.max_message_bytes is not None
                    and len(message.body) > self.max_message_bytes
                ):
                    result.rejected.append((message, "larger than max_message_bytes"))
                else:
                    self.messages.append(message)
            return result

    def close(self) -> None:
        """Nothing to release."""

    def message_ids(self) -> List[str]:
        """MessageIds in delivery order (duplicates included)."""
        with self._lock:
            return [m.message_id for m in self.messages]
