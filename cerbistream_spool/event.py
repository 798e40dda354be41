"""The CerbiStream ScoringEventDto (schema 1.0, CONTRACT §1), built from a LogRecord. Pure.

Key order is part of the contract; :data:`EVENT_KEYS` lists it and
:func:`build_event` writes the keys in that order (do not reorder).

Extras are the record attributes a fresh stdlib ``LogRecord`` does not set
(:data:`RESERVED_ATTRS`, computed at import, plus ``message``, ``asctime`` and
``taskName`` on every Python version), minus names starting with ``_``.

Envelope controls (:data:`CONTROL_KEYS`: ``tenant_id``, ``app_name``,
``environment``, ``correlation_id``, ``governance_relaxed``) are taken out of the
extras: they steer the envelope and already appear there (``TenantId``, ...), so a
copy in RawPayload would only duplicate them, and governance rules never see them.
A control set to ``None`` (or an empty ``tenant_id``/``app_name``) does not override.

Wire values (:func:`to_wire`): what both msgpack and JSON carry is kept (``str``,
``bool``, ``None``, ``int`` in msgpack's 64-bit range, finite ``float``, ``dict``
with keys made ``str``, ``list``; tuples become lists; subclasses of these
become their base value, as ``json.dumps`` writes them). Everything else is
stored as ``str(value)``: ``bytes`` too (``"b'..'"``, JSON has no bytes and a
decode could fail or mislead), sets, ints beyond 64 bits, ``nan``/``inf``. Strings
that UTF-8 cannot encode (lone surrogates) are backslash-escaped, containers
nested deeper than :data:`MAX_DEPTH` are stringified, and a ``__str__`` that
raises gives ``<unprintable TypeName>``: building an event does not fail on data.

RawPayload keeps ``logger, level, message, module, function`` first; an extra
with one of those names (or ``exception``/``blocked``) is stored as ``extra_<name>``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import traceback
from datetime import datetime, timezone
from typing import Any, Dict, FrozenSet, Iterator, Mapping, Optional, Tuple

from cerbistream_spool.context import get_correlation_id
from cerbistream_spool.errors import SpoolConfigError
from cerbistream_spool.governance import REDACTED, Governance, Violation, apply_actions

__all__ = [
    "CONTROL_KEYS",
    "EVENT_KEYS",
    "MAX_DEPTH",
    "RESERVED_ATTRS",
    "RUNTIME",
    "SCHEMA_VERSION",
    "build_event",
    "event_to_json",
    "format_timestamp",
    "log_level_name",
    "new_log_id",
    "to_wire",
    "validate_event_options",
]

SCHEMA_VERSION = "1.0"
RUNTIME = "python"
EVENT_KEYS = (
    "SchemaVersion",
    "TenantId",
    "AppName",
    "Environment",
    "Runtime",
    "LogId",
    "CorrelationId",
    "TimestampUtc",
    "GovernanceProfile",
    "LogLevel",
    "Score",
    "Violations",
    "GovernanceFlags",
    "RawPayload",
)
CONTROL_KEYS = frozenset(
    ("tenant_id", "app_name", "environment", "correlation_id", "governance_relaxed")
)
RESERVED_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",  # set by LogRecord only on 3.12+; never an extra on any version
}
_BASE_NAMES = list(logging.LogRecord("", 0, "", 0, "", (), None).__dict__)
_NBASE = len(_BASE_NAMES)
MAX_DEPTH = 32  # below System.Text.Json's default MaxDepth of 64, envelope included

_PAYLOAD_KEYS = frozenset(
    ("logger", "level", "message", "module", "function", "exception", "blocked")
)
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1
_ID_BLOCK = 64
_ids = threading.local()
_UUID_VARIANT = {f"{i:x}": "89ab"[i & 3] for i in range(16)}
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_NO_VIOLATIONS: Tuple[Violation, ...] = ()
_NOTHING: FrozenSet[str] = frozenset()

# One-slot memo of the per-second timestamp prefix: (epoch second, "YYYY-MM-DDTHH:MM:SS").
# Bounded and thread-safe (read and replaced as one tuple).
_second_prefix: Tuple[int, str] = (-(2**63), "")


def validate_event_options(
    *,
    tenant_id: Any,
    app_name: Any,
    environment: Any = None,
    governance_profile: Any = "default",
) -> None:
    """Raise :class:`SpoolConfigError` unless the envelope options are usable."""
    for name, value in (
        ("tenant_id", tenant_id),
        ("app_name", app_name),
        ("governance_profile", governance_profile),
    ):
        if not isinstance(value, str) or not value.strip():
            raise SpoolConfigError(f"{name} must be a non-empty string, got {value!r}")
    if environment is not None and not isinstance(environment, str):
        raise SpoolConfigError(f"environment must be a string or None, got {environment!r}")


def build_event(
    record: logging.LogRecord,
    *,
    tenant_id: str,
    app_name: str,
    environment: Optional[str] = None,
    governance_profile: str = "default",
    governance: Optional[Governance] = None,
) -> Dict[str, Any]:
    """The ScoringEventDto dict for ``record``, after governance Redact/Block."""
    attrs = record.__dict__
    names = list(attrs)
    if names[:_NBASE] == _BASE_NAMES:  # makeRecord's order: the extras come after these
        names = names[_NBASE:]
    extras: Dict[str, Any] = {}
    controls: Optional[Dict[str, Any]] = None
    flat = True  # no mapping among the values: governance depends on the key set only
    for key in names:
        if key in RESERVED_ATTRS or key[:1] == "_":
            continue
        value = attrs[key]
        if key in CONTROL_KEYS:
            if controls is None:
                controls = {}
            controls[key] = value
            continue
        cls = value.__class__
        if (cls is str and value.isascii()) or (cls is int and _INT_MIN <= value <= _INT_MAX):
            wire = value
        else:
            wire = to_wire(value)
            if wire.__class__ is dict:
                flat = False
        extras[key if key.isascii() else _utf8(key)] = wire

    correlation_id: Optional[str] = None
    relaxed = False
    if controls is not None:
        tenant_id = _override(controls.get("tenant_id"), tenant_id)
        app_name = _override(controls.get("app_name"), app_name)
        value = controls.get("environment")
        if value is not None:
            environment = _as_text(value)
        value = controls.get("correlation_id")
        if value is not None:
            correlation_id = _as_text(value)
        relaxed = _truthy(controls.get("governance_relaxed"))
    if correlation_id is None:
        correlation_id = get_correlation_id()
        if correlation_id is not None:
            correlation_id = _as_text(correlation_id)

    violations: Tuple[Violation, ...] = _NO_VIOLATIONS
    blocked = False
    redact: FrozenSet[str] = _NOTHING  # flat path: keys whose value becomes REDACTED
    payload_extras: Mapping[str, Any] = extras
    if governance is not None and extras:
        if flat:
            violations, redact, blocked = governance.flat_plan(tuple(extras))
        else:
            violations = governance.check(extras)
            if violations:
                payload_extras, blocked = apply_actions(extras, violations)

    logger = to_wire(record.name)
    level = to_wire(record.levelname)
    payload: Dict[str, Any]
    if blocked:
        payload = {"logger": logger, "level": level, "blocked": True}
    else:
        payload = {
            "logger": logger,
            "level": level,
            "message": _message(record),
            "module": to_wire(record.module),
            "function": to_wire(record.funcName),
        }
        for key, value in payload_extras.items():
            if key in redact:  # decided on the original name, before any renaming
                value = REDACTED  # noqa: PLW2901
            if key in _PAYLOAD_KEYS:
                key = "extra_" + key  # noqa: PLW2901
                while key in payload or key in payload_extras:
                    key = "extra_" + key  # noqa: PLW2901
            payload[key] = value
        if record.exc_info:
            exception = _exception(record.exc_info)
            if exception is not None:
                payload["exception"] = exception

    return {
        "SchemaVersion": SCHEMA_VERSION,
        "TenantId": tenant_id,
        "AppName": app_name,
        "Environment": environment,
        "Runtime": RUNTIME,
        "LogId": new_log_id(),
        "CorrelationId": correlation_id,
        "TimestampUtc": format_timestamp(record.created),
        "GovernanceProfile": governance_profile,
        "LogLevel": log_level_name(record.levelno),
        "Score": None,
        "Violations": [v.as_dict() for v in violations],
        "GovernanceFlags": {"GovernanceRelaxed": relaxed},
        "RawPayload": payload,
    }


def event_to_json(event: Mapping[str, Any]) -> str:
    """Compact JSON, non-ASCII kept, key order preserved; the queue message body."""
    return _JSON.encode(event)


def log_level_name(levelno: int) -> str:
    """``Critical`` ≥ 50, ``Error`` ≥ 40, ``Warning`` ≥ 30, ``Information`` ≥ 20, else ``Debug``."""
    try:
        if levelno >= logging.INFO:
            if levelno >= logging.WARNING:
                if levelno >= logging.CRITICAL:
                    return "Critical"
                return "Error" if levelno >= logging.ERROR else "Warning"
            return "Information"
    except TypeError:  # a hand-made record (makeLogRecord({})) has levelno None
        pass
    return "Debug"


def new_log_id() -> str:
    """A random UUID4 string (same bits as ``str(uuid.uuid4())``, without the UUID object).

    Randomness comes from ``os.urandom`` in blocks of 64 ids per thread (one
    syscall per 64 events); ids never repeat across threads or calls.
    """
    try:
        return next(_ids.gen)  # type: ignore[no-any-return]
    except AttributeError:
        _ids.gen = _log_ids()
        return next(_ids.gen)  # type: ignore[no-any-return]


def _log_ids() -> Iterator[str]:
    variant = _UUID_VARIANT
    while True:
        block = os.urandom(16 * _ID_BLOCK).hex()
        for i in range(0, 32 * _ID_BLOCK, 32):
            h = block[i : i + 32]
            # nibble 12 is the version (4); nibble 16 keeps its 2 low random bits under 10xx
            yield f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant[h[16]]}{h[17:20]}-{h[20:]}"


def format_timestamp(created: float) -> str:
    """``created`` as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``, rounded as ``datetime.fromtimestamp``."""
    global _second_prefix  # noqa: PLW0603 - one-slot memo, see its definition
    frac, whole = math.modf(created)
    micros = round(frac * 1e6)  # half-even, like datetime.fromtimestamp
    second = int(whole)
    if micros >= 1_000_000:
        second += 1
        micros -= 1_000_000
    elif micros < 0:
        second -= 1
        micros += 1_000_000
    cached = _second_prefix
    if cached[0] == second:
        prefix = cached[1]
    else:
        prefix = datetime.fromtimestamp(second, timezone.utc).isoformat(timespec="seconds")[:-6]
        _second_prefix = (second, prefix)
    return f"{prefix}.{micros:06d}Z"


def to_wire(value: Any, _depth: int = 0) -> Any:
    """``value`` as msgpack and JSON can both carry it (see the module docstring)."""
    cls = value.__class__
    if cls is str:
        return value if value.isascii() else _utf8(value)
    if value is None or cls is bool:
        return value
    if cls is int:
        return value if _INT_MIN <= value <= _INT_MAX else str(value)
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
    return _safe_str(value)


def _container(value: Any, is_mapping: bool, depth: int) -> Any:
    if depth >= MAX_DEPTH:
        return _safe_str(value)
    depth += 1
    try:
        if is_mapping:
            out: Dict[str, Any] = {}
            for key, item in value.items():
                if key.__class__ is not str or not key.isascii():
                    key = _wire_key(key)  # noqa: PLW2901
                out[key] = to_wire(item, depth)
            return out
        return [to_wire(item, depth) for item in value]
    except Exception:  # noqa: BLE001 - a broken container is stored as text, not lost
        return _safe_str(value)


def _wire_key(key: Any) -> str:
    if key.__class__ is str:
        return key if key.isascii() else _utf8(key)
    if isinstance(key, str):
        return _utf8(str.__str__(key))
    return _safe_str(key)


def _utf8(text: str) -> str:
    """``text`` if UTF-8 can encode it, else with the offending code points backslash-escaped."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _safe_str(value: Any) -> str:
    try:
        text = str(value)
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the event
        return f"<unprintable {type(value).__qualname__}>"
    return text if text.isascii() else _utf8(text)


def _as_text(value: Any) -> str:
    if value.__class__ is str:
        return value if value.isascii() else _utf8(value)
    return _safe_str(value)


def _override(value: Any, default: str) -> str:
    if value is None:
        return default
    text = _as_text(value)
    return text if text.strip() else default


def _truthy(value: Any) -> bool:
    try:
        return bool(value)
    except Exception:  # noqa: BLE001 - an ambiguous flag (numpy array) counts as not set
        return False


def _message(record: logging.LogRecord) -> str:
    """``record.getMessage()``; if formatting raises, the raw msg with a marker instead."""
    try:
        message = record.getMessage()
    except Exception as exc:  # noqa: BLE001 - a bad format string must not lose the event
        return (
            f"{_safe_str(record.msg)} [cerbistream_spool: message formatting failed: "
            f"{type(exc).__name__}: {_safe_str(exc)}; args={_safe_str(record.args)}]"
        )
    return _as_text(message)


def _exception(exc_info: Any) -> Optional[Dict[str, str]]:
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
    qualname = getattr(etype, "__qualname__", None) or _safe_str(etype)
    name = qualname if module in (None, "builtins") else f"{module}.{qualname}"
    try:
        text = "".join(traceback.format_exception(etype, evalue, tb)).rstrip("\n")
    except Exception as exc:  # noqa: BLE001 - keep the event even if the traceback cannot render
        text = f"<traceback unavailable: {type(exc).__name__}>"
    return {
        "type": _as_text(name),
        "message": "" if evalue is None else _safe_str(evalue),
        "traceback": _as_text(text),
    }
