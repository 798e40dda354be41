"""The field model: what governance sees of a record, whatever front-end logged it. Pure.

A record's *fields* are one ordered list of (key, value), merged from every place a
logging front-end puts structured data, in this order (docs/GOVERNANCE.md):

1. a mapping logged as the message (``logging.info({...})``; structlog's
   ``ProcessorFormatter.wrap_for_formatter`` puts its event dict there): its entries,
   except the message key (:data:`MESSAGE_KEYS`: ``event``, structlog's name, else
   ``message``), whose value is the message, and ``exc_info``, which is the exception
   when the record carries none (``True``: the exception being handled);
2. a mapping given as the logging arguments (``logging.info("%(user)s", {...})``):
   its entries; the message is then rendered from their governed values;
3. the record's extra attributes (``extra={...}``; structlog's ``render_to_log_kwargs``),
   where an attribute ``extra`` holding a mapping (:data:`BOUND_KEY`: loguru's bound
   fields, when a stdlib handler is a loguru sink) gives its entries in its place.

Keys starting with ``_`` are private in every source and left out (structlog's
``_logger`` and ``_name``). The event builder (cerbistream_spool/event.py) takes the
envelope controls out of these fields and gives every key its wire text; governance
(cerbistream_spool/governance.py) then checks the result.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, List, Mapping, NamedTuple, Optional, Sequence, Tuple

__all__ = ["BOUND_KEY", "MESSAGE_KEYS", "Fields", "collect", "structured"]

MESSAGE_KEYS = ("event", "message")
BOUND_KEY = "extra"
_EXC_INFO = "exc_info"


class Fields(NamedTuple):
    """A record's fields and what the message is made of."""

    items: List[Tuple[Any, Any]]  # (key, value) in source order, private keys left out
    message: Optional[str]  # a mapping message's text; None: render msg % args
    args: Optional[Mapping[Any, Any]]  # mapping arguments: items[args_at[0]:args_at[1]]
    args_at: Tuple[int, int]
    exc_info: Any  # from a mapping message, when the record has no exc_info; else None


def structured(record: logging.LogRecord, bound: bool) -> bool:
    """Whether ``record`` carries fields beyond plain extras (the slow path).

    ``bound``: the record has an attribute named :data:`BOUND_KEY`.
    """
    msg, args = record.msg, record.args
    return (
        (bound and isinstance(record.__dict__.get(BOUND_KEY), Mapping))
        or (msg.__class__ is not str and isinstance(msg, Mapping))
        or (args.__class__ is not tuple and isinstance(args, Mapping))
    )


def collect(record: logging.LogRecord, extras: Sequence[Tuple[Any, Any]]) -> Fields:
    """The fields of ``record``; ``extras`` are its extra attributes (name, value), in order."""
    items: List[Tuple[Any, Any]] = []
    message: Optional[str] = None
    exc_info: Any = None
    msg = record.msg
    if isinstance(msg, Mapping):
        message = ""
        message_key = next((k for k in MESSAGE_KEYS if k in msg), None)
        for key, value in _entries(msg):
            if key == message_key and key.__class__ is str:
                message = value if value.__class__ is str else _text(value)
            elif key == _EXC_INFO and key.__class__ is str:
                if not record.exc_info and value:
                    exc_info = sys.exc_info() if value is True else value
            else:
                items.append((key, value))
    args: Optional[Mapping[Any, Any]] = None
    start = len(items)
    if message is None and isinstance(record.args, Mapping):
        args = record.args
        items.extend(_entries(args))
    args_at = (start, len(items))
    for key, value in extras:
        if key == BOUND_KEY and key.__class__ is str and isinstance(value, Mapping):
            items.extend(_entries(value))
        else:
            items.append((key, value))
    return Fields(items, message, args, args_at, exc_info)


def _entries(mapping: Mapping[Any, Any]) -> List[Tuple[Any, Any]]:
    """The items of ``mapping`` without private keys; a broken mapping gives what it can."""
    out: List[Tuple[Any, Any]] = []
    try:
        for key, value in mapping.items():
            if isinstance(key, str) and key.startswith("_"):
                continue
            out.append((key, value))
    except Exception:  # noqa: BLE001 - a mapping that fails to iterate keeps its prefix
        out.append(("unreadable_fields", f"<unreadable {type(mapping).__qualname__}>"))
    return out


def _text(value: Any) -> str:
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the event
        return f"<unprintable {type(value).__qualname__}>"
