"""``tools.amqp_peer.peer`` is ``cerbistream_spool.testing.peer`` (kept for old imports)."""

from cerbistream_spool.testing.peer import *  # noqa: F403
