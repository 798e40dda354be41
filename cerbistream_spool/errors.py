"""The exception tree of cerbistream_spool.

::

    CerbiSpoolError                  base of everything raised by this package
    ├── GovernanceConfigError        governance file missing, bad JSON, unknown profile, bad rule
    ├── SpoolConfigError             invalid handler/spool option (bad fsync mode, sizes, ...)
    ├── SpoolError                   the spool could not do what was asked
    │   ├── SpoolClosedError         append/flush after close()
    │   ├── SpoolFullError           record dropped: max_spool_bytes reached (drop_newest / block)
    │   ├── RecordTooLargeError      one record larger than the format allows
    │   └── LaneUnavailableError     every lane of the spool directory is held by a live process
    └── TransportError               shipping to the queue failed
        ├── TransientTransportError  worth retrying (network, throttling, timeouts)
        └── PermanentTransportError  retrying cannot help (auth, missing entity, too large)

Inner storage loops return statuses (a corrupt record is a problem in a report, not
an exception); only public entry points raise. CLI exit
codes live on the classes as ``exit_code`` (click style).
"""

from __future__ import annotations

__all__ = [
    "CerbiSpoolError",
    "GovernanceConfigError",
    "LaneUnavailableError",
    "PermanentTransportError",
    "RecordTooLargeError",
    "SpoolClosedError",
    "SpoolConfigError",
    "SpoolError",
    "SpoolFullError",
    "TransientTransportError",
    "TransportError",
]


class CerbiSpoolError(Exception):
    """Base class of every error raised by cerbistream_spool."""

    exit_code = 1


class GovernanceConfigError(CerbiSpoolError):
    """The governance file is missing or invalid; names file, JSON location and problem."""

    exit_code = 2

    def __init__(self, path: str, location: str, problem: str) -> None:
        self.path = path
        self.location = location
        self.problem = problem
        super().__init__(f"{path}: at {location}: {problem}")


class SpoolConfigError(CerbiSpoolError, ValueError):
    """An option given to the spool or handler is invalid."""

    exit_code = 2


class SpoolError(CerbiSpoolError):
    """The spool could not do what was asked."""


class SpoolClosedError(SpoolError):
    """The spool writer was used after close()."""


class SpoolFullError(SpoolError):
    """The record was dropped because the spool reached max_spool_bytes."""


class RecordTooLargeError(SpoolError):
    """A single record is larger than the on-disk format allows."""


class LaneUnavailableError(SpoolError):
    """Every lane of the spool directory is owned by a live process."""


class TransportError(CerbiSpoolError):
    """Shipping records to the queue failed."""


class TransientTransportError(TransportError):
    """A failure worth retrying: network, throttling, timeouts."""


class PermanentTransportError(TransportError):
    """A failure retrying cannot fix: auth, missing entity, bad connection settings.

    ``confirm_after`` is how many failures of this kind in a row make it final
    for a one-shot drain (1: at once; authentication uses 3, since one refusal
    can be a key being rotated). Long-running drainers keep retrying, slowly.
    """

    exit_code = 2

    def __init__(self, message: str, *, confirm_after: int = 1) -> None:
        super().__init__(message)
        self.confirm_after = confirm_after
