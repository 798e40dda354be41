"""Local Service Bus-compatible AMQP 1.0 peer for tests and demos (not a production broker)."""

from tools.amqp_peer.peer import (
    CONNECTION_FORCED,
    DEFAULT_MAX_MESSAGE_SIZE,
    SERVER_BUSY,
    AcceptedMessage,
    LocalPeer,
    decode_message,
    local_peer,
    split_batch,
)

__all__ = [
    "LocalPeer",
    "AcceptedMessage",
    "local_peer",
    "split_batch",
    "decode_message",
    "SERVER_BUSY",
    "CONNECTION_FORCED",
    "DEFAULT_MAX_MESSAGE_SIZE",
]
