"""The correlation id of the current context (contextvars), read by :func:`build_event`.

Each thread and each asyncio task sees its own value, so a web framework can set
it once per request::

    token = set_correlation_id(request_id)
    try:
        handle(request)
    finally:
        reset_correlation_id(token)

A record's extra ``correlation_id`` takes precedence over this value.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Optional

__all__ = ["get_correlation_id", "reset_correlation_id", "set_correlation_id"]

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
