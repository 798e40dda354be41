"""cerbistream_spool: a stdlib logging handler that never loses a governance log event."""

from cerbistream_spool.context import CaptureContext, get_correlation_id, set_correlation_id
from cerbistream_spool.errors import (
    CerbiSpoolError,
    GovernanceConfigError,
    SpoolConfigError,
    SpoolError,
    SpoolFullError,
)
from cerbistream_spool.handler import SpoolHandler, SpoolStats
from cerbistream_spool.spool import SpoolConfig, SpoolReader, SpoolWriter
from cerbistream_spool.verify import VerifyReport, verify

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "SpoolHandler",
    "SpoolStats",
    "set_correlation_id",
    "get_correlation_id",
    "CaptureContext",
    "SpoolConfig",
    "SpoolReader",
    "SpoolWriter",
    "VerifyReport",
    "verify",
    "CerbiSpoolError",
    "GovernanceConfigError",
    "SpoolConfigError",
    "SpoolError",
    "SpoolFullError",
]
