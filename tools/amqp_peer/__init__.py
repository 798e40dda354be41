"""The local AMQP peer, now ``cerbistream_spool.testing``; this name stays for checkouts.

``from tools.amqp_peer import LocalPeer`` and ``python -m tools.amqp_peer`` work as before.
"""

from cerbistream_spool.testing import (
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
