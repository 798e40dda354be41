"""Wire values: what msgpack and JSON both carry, made of any Python value. Pure.

Wire values (:func:`to_wire`): what both msgpack and JSON carry is kept (``str``,
``bool``, ``None``, ``int`` in msgpack's 64-bit range, finite ``float``, ``dict``
with keys made ``str``, ``list``; tuples become lists; subclasses of these
become their base value, as ``json.dumps`` writes them). Everything else is
stored as ``str(value)``: ``bytes`` too (``"b'..'"``, JSON has no bytes and a
decode could fail or mislead), sets, ints beyond 64 bits, ``nan``/``inf``. Strings
that UTF-8 cannot encode (lone surrogates) are backslash-escaped, containers
nested deeper than :data:`MAX_DEPTH` are stringified, and a ``__str__`` that
raises gives ``<unprintable TypeName>``: building an event does not fail on data.

Keys (of the extras and of every nested mapping) become ``str``: a ``str`` key that
UTF-8 can encode stays as it is, a bytes key is its UTF-8 text (undecodable bytes
backslash-escaped), any other key its ``str`` (``1`` → ``"1"``, a lone surrogate
backslash-escaped). When two keys of one mapping give the same text,
the key that was that text already keeps it, and each other one, in the mapping's
order, gets the first free ``~2``, ``~3``, … suffix: ``{1: "a", "1": "b"}`` becomes
``{"1~2": "a", "1": "b"}``; nothing is dropped.
"""

from __future__ import annotations

import math
import traceback
from typing import Any, Dict, List, Mapping, Optional

__all__ = [
    "INT_MAX",
    "INT_MIN",
    "MAX_DEPTH",
    "as_text",
    "exception_fields",
    "safe_str",
    "to_wire",
    "unique_keys",
    "utf8",
    "wire_key",
]

INT_MIN = -(2**63)  # msgpack's integer range
INT_MAX = 2**64 - 1
MAX_DEPTH = 32  # below System.Text.Json's default MaxDepth of 64, envelope included


def to_wire(value: Any, _depth: int = 0) -> Any:
    """``value`` as msgpack and JSON can both carry it (see the module docstring)."""
    cls = value.__class__
    if cls is str:
        return value if value.isascii() else utf8(value)
    if value is None or cls is bool:
        return value
    if cls is int:
        return value if INT_MIN <= value <= INT_MAX else str(value)
    if cls is float:
        return value if math.isfinite(value) else str(value)
    if cls is dict or cls is list or cls is tuple:
        return _container(value, cls is dict, _depth)
    if isinstance(value, Mapping):
        return _container(value, True, _depth)
    if isinstance(value, (list, tuple)):
        return _container(value, False, _depth)
    if isinstance(value, str):
        return to_wire(str.__str__(value), _depth)
    if isinstance(value, int):  # bool is final, so this is an int subclass (IntEnum, ...)
        return to_wire(int.__int__(value), _depth)
    if isinstance(value, float):
        return to_wire(float.__float__(value), _depth)
    return safe_str(value)


def _container(value: Any, is_mapping: bool, depth: int) -> Any:
    if depth >= MAX_DEPTH:
        return safe_str(value)
    depth += 1
    try:
        if is_mapping:
            out: Dict[str, Any] = {}
            for key, item in value.items():
                if key.__class__ is not str or not key.isascii():
                    key = wire_key(key)  # noqa: PLW2901
                out[key] = to_wire(item, depth)
            if len(out) != len(value):  # two keys gave the same text: rename, drop nothing
                keys = list(value)
                wires = unique_keys(keys, [wire_key(key) for key in keys])
                return {wire: to_wire(value[key], depth) for key, wire in zip(keys, wires)}
            return out
        return [to_wire(item, depth) for item in value]
    except Exception:  # noqa: BLE001 - a broken container is stored as text, not lost
        return safe_str(value)


def unique_keys(keys: List[Any], wires: List[str]) -> List[str]:
    """``wires`` (the text of each of ``keys``) made unique by the rule in the module
    docstring: a key already equal to its text keeps it, the others get ``~N``."""
    taken = {wire for key, wire in zip(keys, wires) if key.__class__ is str and key == wire}
    if len(taken) == len(wires):
        return wires
    out = []
    for key, text in zip(keys, wires):
        name = text
        if not (key.__class__ is str and key == text):
            n = 2
            while name in taken:
                name = f"{text}~{n}"
                n += 1
            taken.add(name)
        out.append(name)
    return out


def wire_key(key: Any) -> str:
    if key.__class__ is str:
        return key if key.isascii() else utf8(key)
    if isinstance(key, str):
        return utf8(str.__str__(key))
    if isinstance(key, (bytes, bytearray)):
        return bytes(key).decode("utf-8", "backslashreplace")
    return safe_str(key)


def utf8(text: str) -> str:
    """``text`` if UTF-8 can encode it, else with the offending code points backslash-escaped."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def safe_str(value: Any) -> str:
    try:
        text = str(value)
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the event
        return f"<unprintable {type(value).__qualname__}>"
    return text if text.isascii() else utf8(text)


def as_text(value: Any) -> str:
    if value.__class__ is str:
        return value if value.isascii() else utf8(value)
    return safe_str(value)


def exception_fields(exc_info: Any) -> Optional[Dict[str, str]]:
    """``{"type", "message", "traceback"}`` for a record's ``exc_info``, or None."""
    if isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    if not isinstance(exc_info, tuple) or len(exc_info) != 3:
        return None
    etype, evalue, tb = exc_info
    if evalue is None and etype is None:
        return None
    if etype is None:
        etype = type(evalue)
    module = getattr(etype, "__module__", None)
    qualname = getattr(etype, "__qualname__", None) or safe_str(etype)
    name = qualname if module in (None, "builtins") else f"{module}.{qualname}"
    try:
        text = "".join(traceback.format_exception(etype, evalue, tb)).rstrip("\n")
    except Exception as exc:  # noqa: BLE001 - keep the event even if the traceback cannot render
        text = f"<traceback unavailable: {type(exc).__name__}>"
    return {
        "type": as_text(name),
        "message": "" if evalue is None else safe_str(evalue),
        "traceback": as_text(text),
    }
