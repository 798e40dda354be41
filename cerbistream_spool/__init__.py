"""cerbistream_spool: a stdlib logging handler that never loses a governance log event.

Importing the package is light: the handler (and with it watchdog and the event
encoder) and the spool are imported on first use of their names (PEP 562), so the
CLI's ``status`` or ``verify`` and ``import cerbistream_spool.errors`` pay only for
what they use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict

from cerbistream_spool._lazy import lazy_attributes

if TYPE_CHECKING:
    from cerbistream_spool.context import (
        CaptureContext,
        get_correlation_id,
        set_correlation_id,
    )
    from cerbistream_spool.errors import (
        CerbiSpoolError,
        GovernanceConfigError,
        SpoolConfigError,
        SpoolError,
        SpoolFullError,
    )
    from cerbistream_spool.handler import SpoolHandler, SpoolStats
    from cerbistream_spool.spool import (
        Block,
        DropNewest,
        DropOldest,
        GroupCommit,
        IntervalFlush,
        NoSync,
        SpoolConfig,
        SpoolReader,
        SpoolWriter,
    )

# eager: importing the submodule cerbistream_spool.verify (as anything may) binds the
# package attribute ``verify`` to that module, which would hide a lazily loaded function
from cerbistream_spool.verify import VerifyReport, verify

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "SpoolHandler",
    "SpoolStats",
    "CaptureContext",
    "set_correlation_id",
    "get_correlation_id",
    "SpoolConfig",
    "SpoolReader",
    "SpoolWriter",
    "DropOldest",
    "DropNewest",
    "Block",
    "GroupCommit",
    "IntervalFlush",
    "NoSync",
    "VerifyReport",
    "verify",
    "CerbiSpoolError",
    "GovernanceConfigError",
    "SpoolConfigError",
    "SpoolError",
    "SpoolFullError",
]

# public name -> the module that defines it
_HOMES: Dict[str, str] = {
    "SpoolHandler": "cerbistream_spool.handler",
    "SpoolStats": "cerbistream_spool.handler",
    "CaptureContext": "cerbistream_spool.context",
    "set_correlation_id": "cerbistream_spool.context",
    "get_correlation_id": "cerbistream_spool.context",
    "SpoolConfig": "cerbistream_spool.spool",
    "SpoolReader": "cerbistream_spool.spool",
    "SpoolWriter": "cerbistream_spool.spool",
    "DropOldest": "cerbistream_spool.spool.capacity",
    "DropNewest": "cerbistream_spool.spool.capacity",
    "Block": "cerbistream_spool.spool.capacity",
    "GroupCommit": "cerbistream_spool.spool.commit",
    "IntervalFlush": "cerbistream_spool.spool.commit",
    "NoSync": "cerbistream_spool.spool.commit",
    "CerbiSpoolError": "cerbistream_spool.errors",
    "GovernanceConfigError": "cerbistream_spool.errors",
    "SpoolConfigError": "cerbistream_spool.errors",
    "SpoolError": "cerbistream_spool.errors",
    "SpoolFullError": "cerbistream_spool.errors",
}


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _HOMES)
