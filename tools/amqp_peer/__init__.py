"""The local AMQP peer, now ``cerbistream_spool.testing``; this name stays for checkouts.

``from tools.amqp_peer import LocalPeer`` and ``python -m tools.amqp_peer`` work as before.
"""

from cerbistream_spool import testing
from cerbistream_spool.testing import *  # noqa: F403 - the same names, one list of them

__all__ = testing.__all__
