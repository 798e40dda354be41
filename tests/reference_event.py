"""A plain ScoringEventDto builder, straight from docs/CONTRACT.md §1, for the tests.

The slow twin of cerbistream_spool/event.py: no layout or plan memos, no packed parts,
no shortcuts for ASCII text or scalar extras; each step of the contract in order, over
the record as it is. tests/test_event.py property-tests that ``EventEncoder.encode`` and
``build_event`` give these events byte for byte. It reuses only building blocks with
tests of their own: the field model (``fields.collect``), governance (``check``,
``apply_actions``, ``scan_text``) and ``to_wire`` (the value conversion).
"""

from __future__ import annotations

import copy
import logging
import traceback
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Set, Tuple

from cerbistream_spool.context import CAPTURED_ATTR, Captured, get_correlation_id
from cerbistream_spool.event import CONTROL_KEYS, RESERVED_ATTRS, to_wire
from cerbistream_spool.fields import collect
from cerbistream_spool.governance import Governance, apply_actions

FIXED_KEYS = ("logger", "level", "message", "module", "function")
PAYLOAD_KEYS = (*FIXED_KEYS, "exception", "blocked")


def reference_event(
    record: logging.LogRecord,
    *,
    tenant_id: str,
    app_name: str,
    environment: Optional[str] = None,
    governance_profile: str = "default",
    governance: Optional[Governance] = None,
    log_id: str,
) -> Dict[str, Any]:
    """The event of ``record`` with the given LogId (the one random part)."""
    captured = record.__dict__.get(CAPTURED_ATTR)
    if type(captured) is not Captured:
        captured = None
    elif captured.fields is not None:  # QueueHandler: prepare() turned the fields into text
        record = copy.copy(record)
        record.msg, record.args = captured.fields

    # fields: what a fresh LogRecord does not set, in order, private names left out
    attributes = [
        (key, value)
        for key, value in record.__dict__.items()
        if not (type(key) is str and (key in RESERVED_ATTRS or key.startswith("_")))
    ]
    model = collect(record, attributes)
    controls: Dict[str, Any] = {}
    items: List[Tuple[Any, Any, bool]] = []  # (key, value, a mapping argument?)
    for position, (key, value) in enumerate(model.items):
        if type(key) is str and key in CONTROL_KEYS:
            controls.pop(key, None)  # a later source overrides
            controls[key] = value
        else:
            is_arg = model.args_at[0] <= position < model.args_at[1]
            items.append((key, value, is_arg))
    wire_keys = unique_texts([key for key, _, _ in items])
    fields = {wire: to_wire(value) for wire, (_, value, _) in zip(wire_keys, items)}
    ungoverned = dict(fields)

    violations: List[Any] = []
    blocked = False
    if governance is not None and fields:
        violations += governance.check(fields)
        redacted, blocked = apply_actions(fields, violations)
        fields = dict(redacted)
    # the mapping arguments as governance left them: the new value where it changed one
    governed_args = {
        key: fields[wire]
        for wire, (key, _, is_arg) in zip(wire_keys, items)
        if is_arg and fields[wire] is not ungoverned[wire]
    }

    payload: Dict[str, Any] = {
        "logger": to_wire(record.name),
        "level": to_wire(record.levelname),
        "message": None,
        "module": to_wire(record.module),
        "function": to_wire(record.funcName),
    }
    if not blocked:
        payload["message"] = message(record, captured, model, governed_args)
        for key, value in fields.items():
            name = key
            if name in PAYLOAD_KEYS:  # stored as extra_<name>, extra_extra_<name>, ...
                name = "extra_" + name
                while name in payload or name in fields:
                    name = "extra_" + name
            payload[name] = value
        exc_info = record.exc_info or model.exc_info
        if exc_info:
            exception = exception_of(exc_info)
            if exception is not None:
                payload["exception"] = exception
        elif captured is not None and captured.exception is not None:
            payload["exception"] = dict(captured.exception)
        if governance is not None and governance.patterns:
            scanned = {k: v for k, v in payload.items() if k not in FIXED_KEYS}
            scan = governance.scan_text(payload["message"], scanned)
            violations += scan.violations
            blocked = scan.blocked
            payload["message"] = scan.message
            payload.update(scan.values)
    if blocked:
        payload = {"logger": payload["logger"], "level": payload["level"], "blocked": True}

    correlation_id = controls.get("correlation_id")
    if correlation_id is None:
        correlation_id = get_correlation_id() if captured is None else captured.correlation_id
    environment_field = controls.get("environment")
    return {
        "SchemaVersion": "1.0",
        "TenantId": option_or_field(tenant_id, controls.get("tenant_id")),
        "AppName": option_or_field(app_name, controls.get("app_name")),
        "Environment": environment if environment_field is None else text(environment_field),
        "Runtime": "python",
        "LogId": log_id,
        "CorrelationId": None if correlation_id is None else text(correlation_id),
        "TimestampUtc": timestamp(record.created),
        "GovernanceProfile": governance_profile,
        "LogLevel": level_name(record.levelno),
        "Score": None,
        "Violations": [v.as_dict() for v in violations],
        "GovernanceFlags": {"GovernanceRelaxed": truthy(controls.get("governance_relaxed"))},
        "RawPayload": payload,
    }


def message(
    record: logging.LogRecord,
    captured: Optional[Captured],
    model: Any,
    governed_args: Dict[Any, Any],
) -> str:
    """The noted text, a mapping message's text, ``msg % mapping args`` (as governance left
    them), or ``getMessage()``; a format that fails keeps the raw msg with a marker."""
    if captured is not None and captured.message is not None:
        return text(captured.message)
    if model.message is not None:
        return text(model.message)
    if model.args is not None:
        try:
            return text(str(record.msg) % {**model.args, **governed_args})
        except Exception as exc:
            return text(f"{safe_str(record.msg)} {failed(exc)}]")
    try:
        return text(record.getMessage())
    except Exception as exc:
        return text(f"{safe_str(record.msg)} {failed(exc)}; args={safe_str(record.args)}]")


def failed(exc: Exception) -> str:
    return f"[cerbistream_spool: message formatting failed: {type(exc).__name__}: {safe_str(exc)}"


def unique_texts(keys: List[Any]) -> List[str]:
    """Each key's text, made unique: a key that already is its text keeps it, the others
    of the same text get the first free ``~2``, ``~3``, ...; then, the same key from two
    sources (a mapping argument and an extra): the later one gets the first free suffix."""
    texts = [key_text(key) for key in keys]
    taken = {t for key, t in zip(keys, texts) if type(key) is str and key == t}
    named = []
    for key, t in zip(keys, texts):
        name = t
        if not (type(key) is str and key == t):
            name = first_free(t, taken)
            taken.add(name)
        named.append(name)
    used: Set[str] = set()
    out = []
    for name in named:
        name = first_free(name, used)  # noqa: PLW2901
        used.add(name)
        out.append(name)
    return out


def first_free(text: str, taken: Set[str]) -> str:
    name, n = text, 2
    while name in taken:
        name = f"{text}~{n}"
        n += 1
    return name


def key_text(key: Any) -> str:
    if isinstance(key, str):
        return utf8(str.__str__(key))
    if isinstance(key, (bytes, bytearray)):
        return bytes(key).decode("utf-8", "backslashreplace")
    return safe_str(key)


def utf8(value: str) -> str:
    """``value`` with what UTF-8 cannot encode (lone surrogates) backslash-escaped."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def safe_str(value: Any) -> str:
    try:
        return utf8(str(value))
    except Exception:
        return f"<unprintable {type(value).__qualname__}>"


def text(value: Any) -> str:
    return utf8(value) if type(value) is str else safe_str(value)


def option_or_field(option: str, field: Any) -> str:
    """A field overrides an option unless it is None or blank."""
    if field is None or not text(field).strip():
        return option
    return text(field)


def truthy(value: Any) -> bool:
    try:
        return bool(value)
    except Exception:
        return False


def timestamp(created: float) -> str:
    moment = datetime.fromtimestamp(created, timezone.utc)
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def level_name(levelno: Any) -> str:
    for threshold, name in ((50, "Critical"), (40, "Error"), (30, "Warning"), (20, "Information")):
        if isinstance(levelno, (int, float)) and levelno >= threshold:
            return name
    return "Debug"


def exception_of(exc_info: Any) -> Optional[Dict[str, str]]:
    """``{"type", "message", "traceback"}`` of an exc_info tuple or exception, else None."""
    if isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    if not isinstance(exc_info, tuple) or len(exc_info) != 3:
        return None
    if exc_info[0] is None and exc_info[1] is None:
        return None
    etype, evalue, tb = exc_info
    etype = type(evalue) if etype is None else etype
    module = getattr(etype, "__module__", None)
    name = getattr(etype, "__qualname__", None) or safe_str(etype)
    if module not in (None, "builtins"):
        name = f"{module}.{name}"
    try:
        trace = "".join(traceback.format_exception(etype, evalue, tb)).rstrip("\n")
    except Exception as exc:
        trace = f"<traceback unavailable: {type(exc).__name__}>"
    return {
        "type": text(name),
        "message": "" if evalue is None else safe_str(evalue),
        "traceback": text(trace),
    }
