"""The correlation id of the current context (contextvars), read by :func:`build_event`.

Each thread and each asyncio task sees its own value, so a web framework can set
it once per request::

    token = set_correlation_id(request_id)
    try:
        handle(request)
    finally:
        reset_correlation_id(token)

A record's extra ``correlation_id`` takes precedence over this value.

:class:`CaptureContext` keeps it (and the message and exception) across a
``QueueHandler``: attached to the queue handler, it runs on the app's thread at
enqueue time, before ``QueueHandler.prepare`` formats the record and clears its
``exc_info``; the ``SpoolHandler`` behind the ``QueueListener`` uses what it
captured instead of what the listener thread sees.
"""

from __future__ import annotations

import contextlib
import logging
from contextvars import ContextVar, Token
from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

from cerbistream_spool.wire import exception_fields, to_wire

__all__ = [
    "CAPTURED_ATTR",
    "CaptureContext",
    "Captured",
    "get_correlation_id",
    "reset_correlation_id",
    "set_correlation_id",
]

#: the record attribute :class:`CaptureContext` sets (``_``: never an extra)
CAPTURED_ATTR = "_cerbistream_captured"

_correlation_id: ContextVar[Optional[str]] = ContextVar(
    "cerbistream_spool_correlation_id", default=None
)


def set_correlation_id(correlation_id: Optional[str]) -> Token[Optional[str]]:
    """Set the correlation id for the current context; ``None`` clears it.

    Returns a token for :func:`reset_correlation_id`.
    """
    if correlation_id is not None and not isinstance(correlation_id, str):
        raise TypeError(
            f"correlation_id must be a str or None, not {type(correlation_id).__name__}"
        )
    return _correlation_id.set(correlation_id)


def get_correlation_id() -> Optional[str]:
    """The correlation id of the current context, or ``None``."""
    return _correlation_id.get()


def reset_correlation_id(token: Token[Optional[str]]) -> None:
    """Restore the value that was current before the matching :func:`set_correlation_id`."""
    _correlation_id.reset(token)


class Captured(NamedTuple):
    """What :class:`CaptureContext` took from a record on the app's thread (picklable)."""

    correlation_id: Optional[str]
    message: Optional[str]  # ``record.getMessage()``; None when it raised or for ``fields``
    exception: Optional[Dict[str, str]]  # RawPayload.exception: type, message, traceback
    #: ``(msg, args)`` in wire form when either is a mapping (a structlog event dict, a
    #: dict message, mapping args: docs/GOVERNANCE.md): governance needs the fields, and
    #: ``QueueHandler.prepare`` replaces them with their text, secrets included
    fields: Optional[Tuple[Any, Any]] = None


class CaptureContext(logging.Filter):
    """A filter for a ``logging.handlers.QueueHandler`` in front of a ``SpoolHandler``.

    It passes every record and notes, at enqueue time, the correlation id of the
    logging context, the formatted message and the structured exception, which
    the listener thread cannot see (docs/OPERATIONS.md, "Behind a QueueHandler")::

        queue_handler = QueueHandler(q)
        queue_handler.addFilter(CaptureContext())
        QueueListener(q, spool_handler).start()

    Records it already saw (two queue handlers) keep what was captured first.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Capture and pass the record; never fails it."""
        attrs = record.__dict__
        if CAPTURED_ATTR not in attrs:
            with contextlib.suppress(Exception):  # a capture must never cost the record
                attrs[CAPTURED_ATTR] = capture(record)
        return True


def capture(record: logging.LogRecord) -> Captured:
    """What :class:`CaptureContext` stores on ``record``."""
    exception = exception_fields(record.exc_info) if record.exc_info else None
    msg, args = record.msg, record.args
    if isinstance(msg, Mapping) or isinstance(args, Mapping):
        fields = (to_wire(msg), to_wire(args) if isinstance(args, Mapping) else ())
        return Captured(_correlation_id.get(), None, exception, fields)
    try:
        message: Optional[str] = record.getMessage()
    except Exception:  # noqa: BLE001 — the SpoolHandler marks the unformattable message itself
        message = None
    return Captured(_correlation_id.get(), message, exception)
