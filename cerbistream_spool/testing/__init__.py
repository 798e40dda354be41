"""Test your app's logging offline: a local Service Bus-compatible AMQP 1.0 peer.

Installed with ``pip install 'cerbistream_spool[testing]'`` (it needs
python-qpid-proton). The peer listens on ``127.0.0.1`` only, keeps what it
receives in memory and checks no credentials: a test double, not a broker
(docs/TESTING.md)::

    from cerbistream_spool.testing import LocalPeer

    with LocalPeer.start() as peer:              # a free loopback port; stopped on exit
        handler = SpoolHandler("./spool", ..., connection_string=peer.connection_string())
        ...                                      # the app logs; the handler's drainer ships
        assert peer.wait_for(1, timeout=10)      # True once one message arrived
        [event] = peer.events()                  # the ScoringEventDto dicts received
        peer.accepted()                          # every message: id, body, properties

``python -m cerbistream_spool.testing --port 0`` runs one from a shell and prints
its connection string first.
"""

from __future__ import annotations

try:
    import proton  # noqa: F401 — fail here, with the fix in the message
except ImportError as exc:  # pragma: no cover — exercised in a subprocess by the tests
    raise ImportError(
        "cerbistream_spool.testing needs python-qpid-proton: "
        "pip install 'cerbistream_spool[testing]'"
    ) from exc

from cerbistream_spool.testing.peer import (
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
