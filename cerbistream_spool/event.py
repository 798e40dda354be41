"""The CerbiStream ScoringEventDto (schema 1.0, docs/CONTRACT.md §1), built from a LogRecord. Pure.

Key order is part of the contract; :data:`EVENT_KEYS` lists it and
:func:`build_event` writes the keys in that order (do not reorder).
:class:`EventEncoder` (the handler's path) writes the same event straight to msgpack,
byte for byte what ``msgpack.Packer(use_bin_type=True)`` makes of ``build_event``; both
take the per-record part from one function (:func:`_content`, in named steps), so they
cannot drift apart. tests/reference_event.py builds the same event plainly, without
memos or shortcuts; tests/test_event.py property-tests the encoder against it.

Extras are the record attributes a fresh stdlib ``LogRecord`` does not set
(:data:`RESERVED_ATTRS`, computed at import, plus ``message``, ``asctime`` and
``taskName`` on every Python version), minus names starting with ``_``.

Envelope controls (:data:`CONTROL_KEYS`: ``tenant_id``, ``app_name``,
``environment``, ``correlation_id``, ``governance_relaxed``) are taken out of the
extras: they steer the envelope and already appear there (``TenantId``, ...), so a
copy in RawPayload would only duplicate them, and governance rules never see them.
A control set to ``None`` (or an empty ``tenant_id``/``app_name``) does not override.

Wire values and keys: cerbistream_spool/wire.py (:func:`to_wire`).

Extras here are the record's fields (cerbistream_spool/fields.py): a mapping message
(structlog's ``wrap_for_formatter``), mapping arguments and loguru's ``extra`` attribute
are merged into them before governance; the message is then that mapping's ``event``
or ``message`` value, or ``msg % args`` with the arguments as governance left them.

RawPayload keeps ``logger, level, message, module, function`` first; an extra
with one of those names (or ``exception``/``blocked``) is stored as ``extra_<name>``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import threading
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

import msgpack

from cerbistream_spool.context import CAPTURED_ATTR, Captured, get_correlation_id
from cerbistream_spool.errors import SpoolConfigError
from cerbistream_spool.fields import BOUND_KEY, Fields, collect, structured
from cerbistream_spool.governance import (
    REDACTED,
    FlatPlan,
    Governance,
    Violation,
    apply_actions,
)
from cerbistream_spool.wire import (
    INT_MAX,
    INT_MIN,
    MAX_DEPTH,
    as_text,
    exception_fields,
    safe_str,
    to_wire,
    unique_keys,
    utf8,
    wire_key,
)

__all__ = [
    "CONTROL_KEYS",
    "EVENT_KEYS",
    "MAX_DEPTH",
    "RESERVED_ATTRS",
    "RUNTIME",
    "SCHEMA_VERSION",
    "EventEncoder",
    "build_event",
    "body_to_json",
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
_BASE_NAMES = tuple(logging.LogRecord("", 0, "", 0, "", (), None).__dict__)
_NBASE = len(_BASE_NAMES)

_ENVELOPE_CONTROLS = frozenset(("tenant_id", "app_name", "environment"))
_LEVEL_NAMES = ("Debug", "Information", "Warning", "Error", "Critical")
_MAX_LAYOUTS = 256  # per encoder and governance: name sequences whose _Layout is kept
_UNSCANNED = frozenset(("logger", "level", "message", "module", "function"))
_PAYLOAD_KEYS = frozenset(
    ("logger", "level", "message", "module", "function", "exception", "blocked")
)
_ID_BLOCK = 256  # 64 cost ~50 ns more per id (the per-block work, amortised)
_id_pool: List[str] = []  # ids drawn, not yet handed out; at most _ID_BLOCK per refill
_UUID_VARIANT = bytes.maketrans(b"0123456789abcdef", b"89ab" * 4)  # hex digit → 10xx
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_NO_VIOLATIONS: Tuple[Violation, ...] = ()

# One-slot memo of the per-second timestamp prefix: (epoch second, "YYYY-MM-DDTHH:MM:SS.").
# Bounded and thread-safe (read and replaced as one tuple).
_second_prefix: Tuple[int, str] = (-(2**63), "")
_DIGITS3 = tuple(f"{i:03d}" for i in range(1000))  # the microseconds, 3 digits at a time


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
    return _event_dict(
        _content(record, governance),
        record.levelno,
        tenant_id,
        app_name,
        environment,
        governance_profile,
    )


class EventEncoder:
    """Encodes records straight to the msgpack bytes of their ScoringEventDto.

    ``encode(record, governance)`` returns exactly what ``msgpack.Packer(use_bin_type=True)``
    makes of ``build_event(record, ...)`` with this encoder's options (LogId aside, it is
    random), without building the envelope dict: every constant part (map header, key
    names, options, LogLevel strings, GovernanceFlags) is packed once here, the Violations
    once per governance plan, and only the per-record values are packed per call. A
    record whose extras override TenantId, AppName or Environment takes the general path
    (pack the dict). Safe to share between threads; one per handler.
    """

    def __init__(
        self,
        *,
        tenant_id: str,
        app_name: str,
        environment: Optional[str] = None,
        governance_profile: str = "default",
    ) -> None:
        validate_event_options(
            tenant_id=tenant_id,
            app_name=app_name,
            environment=environment,
            governance_profile=governance_profile,
        )
        self.tenant_id = tenant_id
        self.app_name = app_name
        self.environment = environment
        self.governance_profile = governance_profile
        self._local = threading.local()  # one Packer per thread: a Packer is not thread-safe
        # (governance, the layouts for it, with their packed Violations): replaced as one,
        # when the rules change
        self._state: Tuple[Optional[Governance], _Layouts] = (None, _Layouts())
        self._parts: Optional[_Parts] = None
        with contextlib.suppress(ValueError):  # an option UTF-8 cannot encode: records fail
            self._parts = _Parts.of(tenant_id, app_name, environment, governance_profile)

    def encode(self, record: logging.LogRecord, governance: Optional[Governance] = None) -> bytes:
        """The msgpack bytes of ``build_event(record, ..., governance=governance)``."""
        state = self._state
        if state[0] is not governance:
            state = self._state = (governance, _Layouts())
        content = _content(record, governance, state[1])
        try:
            pack: Callable[[Any], bytes] = self._local.pack
        except AttributeError:
            pack = self._local.pack = msgpack.Packer(use_bin_type=True).pack
        parts = self._parts
        if content.overrides is not None or parts is None:
            return pack(
                _event_dict(
                    content,
                    record.levelno,
                    self.tenant_id,
                    self.app_name,
                    self.environment,
                    self.governance_profile,
                )
            )
        levelno = record.levelno
        level = parts.levelnos.get(levelno) if levelno.__class__ is int else None
        if level is None:
            level = parts.levels[log_level_name(levelno)]
        violations = content.violations
        if not violations:
            packed = parts.no_violations
        else:
            planned = content.planned  # the memo: on the layout, in this encoder's _state
            if planned is None:
                packed = pack([v.as_dict() for v in violations])
            else:
                memo = planned.packed
                if memo is None:
                    memo = planned.packed = pack([v.as_dict() for v in violations])
                packed = memo
        correlation_id = content.correlation_id
        return b"".join(
            (
                parts.head,
                pack(content.log_id),
                parts.no_correlation
                if correlation_id is None
                else parts.correlation_key + pack(correlation_id) + parts.timestamp_key,
                pack(content.timestamp),
                level,
                packed,
                parts.flags[content.relaxed],
                pack(content.payload),
            )
        )


class _Parts(NamedTuple):
    """The constant runs of one encoder's events (EVENT_KEYS order), each packed by msgpack."""

    head: bytes  # map header, SchemaVersion … Runtime, the LogId key
    correlation_key: bytes
    timestamp_key: bytes
    no_correlation: bytes  # CorrelationId key, nil, TimestampUtc key
    levels: Dict[str, bytes]  # LogLevel name → GovernanceProfile … the Violations key
    levelnos: Dict[int, bytes]  # the same for the standard levels, by levelno
    no_violations: bytes
    flags: Tuple[bytes, bytes]  # GovernanceFlags key and value, RawPayload key; False, True

    @classmethod
    def of(
        cls, tenant_id: str, app_name: str, environment: Optional[str], governance_profile: str
    ) -> _Parts:
        packer = msgpack.Packer(use_bin_type=True)
        pack = packer.pack
        head = packer.pack_map_header(len(EVENT_KEYS)) + b"".join(
            map(
                pack,
                (
                    "SchemaVersion",
                    SCHEMA_VERSION,
                    "TenantId",
                    tenant_id,
                    "AppName",
                    app_name,
                    "Environment",
                    environment,
                    "Runtime",
                    RUNTIME,
                    "LogId",
                ),
            )
        )
        levels = {
            name: b"".join(
                map(
                    pack,
                    (
                        "GovernanceProfile",
                        governance_profile,
                        "LogLevel",
                        name,
                        "Score",
                        None,
                        "Violations",
                    ),
                )
            )
            for name in _LEVEL_NAMES
        }
        false, true = (
            pack("GovernanceFlags") + pack({"GovernanceRelaxed": relaxed}) + pack("RawPayload")
            for relaxed in (False, True)
        )
        correlation_key = pack("CorrelationId")
        timestamp_key = pack("TimestampUtc")
        return cls(
            head=head,
            correlation_key=correlation_key,
            timestamp_key=timestamp_key,
            no_correlation=correlation_key + pack(None) + timestamp_key,
            levels=levels,
            levelnos={n: levels[log_level_name(n)] for n in range(logging.CRITICAL + 1)},
            no_violations=pack([]),
            flags=(false, true),
        )


class _Content(NamedTuple):
    """What a record contributes to its event, computed once by :func:`_content` for
    ``build_event`` and ``EventEncoder`` alike."""

    overrides: Optional[Mapping[str, Any]]  # the controls, if tenant_id/app_name/environment is one
    correlation_id: Optional[str]
    relaxed: bool  # GovernanceFlags.GovernanceRelaxed
    violations: Tuple[Violation, ...]
    planned: Optional[_Layout]  # the layout whose flat plan ``violations`` are, if they are
    payload: Dict[str, Any]  # RawPayload
    log_id: str
    timestamp: str


_new_content: Callable[[Any, Tuple[Any, ...]], _Content] = tuple.__new__


class _Layout:
    """What a record's attribute names decide, worked out once per name sequence.

    ``pairs``: (attribute, wire key) of each extra, in order; ``controls``: the envelope
    controls present; ``keys``: the extras' wire keys as the extras dict orders them (the
    flat plan key); ``renames``: whether a wire key needs the ``extra_`` prefix in RawPayload;
    ``plan``: the flat plan for ``keys``, once asked for; ``packed``: its Violations as
    msgpack, once an encoder packed them (a layout in an encoder's memo belongs to the one
    governance that memo is for); ``captured``: whether CaptureContext noted something on
    the record (cerbistream_spool/context.py).
    """

    __slots__ = ("bound", "captured", "controls", "keys", "packed", "pairs", "plan", "renames")

    def __init__(self, names: Tuple[str, ...]) -> None:
        self.captured = CAPTURED_ATTR in names
        if names[:_NBASE] == _BASE_NAMES:  # makeRecord's order: the extras come after these
            names = names[_NBASE:]
        pairs: List[Tuple[Any, str]] = []
        controls = []
        for key in names:
            if key.__class__ is not str:  # extra={1: ...}: logging puts it in __dict__ as is
                pairs.append((key, wire_key(key)))
            elif key in RESERVED_ATTRS or key[:1] == "_":
                continue
            elif key in CONTROL_KEYS:
                controls.append(key)
            else:
                pairs.append((key, key if key.isascii() else utf8(key)))
        wires = unique_keys([k for k, _ in pairs], [w for _, w in pairs])
        self.pairs = tuple(zip([k for k, _ in pairs], wires))
        self.controls = tuple(controls)
        self.keys = tuple(wires)  # unique (unique_keys): rules see every extra
        self.renames = not _PAYLOAD_KEYS.isdisjoint(self.keys)
        self.plan: Optional[FlatPlan] = None
        self.packed: Optional[bytes] = None
        self.bound = BOUND_KEY in self.keys  # loguru's bound fields, maybe (fields.py)

    @classmethod
    def of_fields(cls, wires: List[str], controls: List[str]) -> _Layout:
        """The layout of merged front-end fields whose wire keys are ``wires`` (unique)."""
        layout = cls.__new__(cls)
        layout.pairs = tuple((wire, wire) for wire in wires)
        layout.controls = tuple(controls)
        layout.keys = tuple(wires)
        layout.renames = not _PAYLOAD_KEYS.isdisjoint(layout.keys)
        layout.plan = None
        layout.packed = None
        layout.bound = False
        layout.captured = False
        return layout


class _Layouts:
    """An encoder's memo of layouts for one governance: by attribute-name sequence (at
    most ``_MAX_LAYOUTS``), and the last one used, compared first (records of one shape
    come in runs). Shared by threads: ``last`` is read and replaced as one tuple."""

    __slots__ = ("by_names", "last")

    def __init__(self) -> None:
        self.by_names: Dict[Tuple[Any, ...], _Layout] = {}
        self.last: Tuple[Tuple[Any, ...], Optional[_Layout]] = ((), None)

    def find(self, names: Tuple[Any, ...]) -> _Layout:
        """The layout for a record whose attribute names are ``names``; the last one."""
        layout = self.by_names.get(names)
        if layout is None:
            layout = _Layout(names)
            if len(self.by_names) < _MAX_LAYOUTS:
                self.by_names[names] = layout
        self.last = (names, layout)
        return layout


class _Merged(NamedTuple):
    """A front-end's fields (cerbistream_spool/fields.py), laid out like extras."""

    fields: Fields
    layout: _Layout  # one-off, for these fields
    source: Dict[str, Any]  # the values by wire key, controls too
    arg_wires: List[Tuple[Any, str]]  # (key, wire key) of each mapping argument


def _content(
    record: logging.LogRecord,
    governance: Optional[Governance],
    layouts: Optional[_Layouts] = None,
) -> _Content:
    """Everything per record, step by step: fields and their wire values, the envelope
    controls, field rules (Redact/Block), the message, RawPayload with the exception,
    pattern rules, then LogId and timestamp.

    ``layouts``: the encoder's memo of :class:`_Layout` for ``governance`` (a layout keeps
    that governance's flat plan for its keys); without it, a one-off layout.
    """
    names = tuple(record.__dict__)
    if layouts is None:
        layout = _Layout(names)
    else:  # the last layout found, else layouts.find (inline: ~0.1 µs a record)
        last_names, last = layouts.last
        layout = last if last is not None and last_names == names else layouts.find(names)
    captured = None
    if layout.captured:
        record, captured = _captured(record)
    source: Mapping[Any, Any] = record.__dict__
    merged = None
    if (
        layout.bound or record.msg.__class__ is not str or record.args.__class__ is not tuple
    ) and structured(record, layout.bound):  # a front-end's fields: the slow path
        merged = _merge(record, layout)
        layout, source = merged.layout, merged.source

    payload, extras, flat = _payload_and_extras(record, layout, source)
    if layout.controls:
        overrides, correlation_id, relaxed = _controls(layout, source)
    else:
        overrides, correlation_id, relaxed = None, None, False
    if correlation_id is None:
        correlation_id = get_correlation_id() if captured is None else captured.correlation_id
        if correlation_id is not None:
            correlation_id = as_text(correlation_id)

    # the mapping arguments before governance, to render the message from what it left
    before = None
    if merged is not None and merged.arg_wires:
        before = [(key, wire, extras[wire]) for key, wire in merged.arg_wires]
    violations: Tuple[Violation, ...] = _NO_VIOLATIONS
    blocked = False
    planned = None  # the layout whose flat plan gave the violations
    if governance is not None and layout.keys:
        if flat:  # scalar extras: the outcome depends on the key set only
            plan = layout.plan
            if plan is None:
                plan = layout.plan = governance.flat_plan(layout.keys)
            for key in plan.redact:  # extras keys: the value changes, the position stays
                extras[key] = REDACTED
            violations, blocked, planned = plan.violations, plan.blocked, layout
        else:
            violations, blocked = _field_rules(governance, layout.keys, extras, payload)

    if not blocked:
        payload["message"] = _message(record, captured, merged, before, extras)
        if extras is not payload:
            _add_renamed(payload, extras)
        if record.exc_info or merged is not None or captured is not None:
            _add_exception(payload, record, merged, captured)
        if governance is not None and governance.patterns:
            found, blocked = _pattern_rules(governance, payload)
            if found:
                violations += found
                planned = None  # its packed Violations no longer fit
    if blocked:
        payload = {"logger": payload["logger"], "level": payload["level"], "blocked": True}
    return _new_content(  # _Content(...), without its generated __new__'s Python call
        _Content,
        (
            overrides,
            correlation_id,
            relaxed,
            violations,
            planned,
            payload,
            new_log_id(),
            format_timestamp(record.created),
        ),
    )


def _captured(record: logging.LogRecord) -> Tuple[logging.LogRecord, Optional[Captured]]:
    """What CaptureContext noted on ``record`` (cerbistream_spool/context.py), and the
    record with the fields prepare() turned into text back in msg/args (a copy)."""
    captured = record.__dict__[CAPTURED_ATTR]
    if captured.__class__ is not Captured:
        return record, None
    if captured.fields is not None:
        record = copy.copy(record)  # the same attribute names
        record.msg, record.args = captured.fields
    return record, captured


def _merge(record: logging.LogRecord, layout: _Layout) -> _Merged:
    """The fields of a record a front-end logged (fields.py) and their one-off layout."""
    attrs = record.__dict__
    extras = [(key, attrs[key]) for key, _ in layout.pairs]
    fields = collect(record, extras + [(key, attrs[key]) for key in layout.controls])
    return _Merged(fields, *_merged_layout(fields))


def _payload_and_extras(
    record: logging.LogRecord, layout: _Layout, source: Mapping[Any, Any]
) -> Tuple[Dict[str, Any], Dict[str, Any], bool]:
    """RawPayload's fixed keys (the message is set once the record is known not blocked),
    the extras' wire values by wire key, and whether these are all scalars (no dict or
    list: governance then depends on the key set only). Without renames the extras go
    straight into RawPayload: the two dicts are one."""
    logger, level, module = record.name, record.levelname, record.module
    function = record.funcName
    if not (
        logger.__class__ is level.__class__ is module.__class__ is function.__class__ is str
        and f"{logger}{level}{module}{function}".isascii()
    ):  # what to_wire would return for all four, without four calls
        logger, level, module, function = map(to_wire, (logger, level, module, function))
    payload: Dict[str, Any] = {
        "logger": logger,
        "level": level,
        "message": None,
        "module": module,
        "function": function,
    }
    extras = {} if layout.renames else payload
    flat = True
    for key, wkey in layout.pairs:
        value = source[key]
        cls = value.__class__
        if (cls is str and value.isascii()) or (cls is int and INT_MIN <= value <= INT_MAX):
            extras[wkey] = value
        else:
            extras[wkey] = value = to_wire(value)
            if value.__class__ is dict or value.__class__ is list:
                flat = False
    return payload, extras, flat


def _controls(
    layout: _Layout, source: Mapping[Any, Any]
) -> Tuple[Optional[Mapping[str, Any]], Optional[str], bool]:
    """The envelope controls: (overrides when tenant_id/app_name/environment is among
    them, else None; correlation_id; governance_relaxed)."""
    controls = {key: source[key] for key in layout.controls}
    overrides = None if _ENVELOPE_CONTROLS.isdisjoint(controls) else controls
    value = controls.get("correlation_id")
    correlation_id = None if value is None else as_text(value)
    return overrides, correlation_id, _truthy(controls.get("governance_relaxed"))


def _field_rules(
    governance: Governance,
    keys: Tuple[str, ...],
    extras: Dict[str, Any],
    payload: Dict[str, Any],
) -> Tuple[Tuple[Violation, ...], bool]:
    """Field rules over extras holding dicts or lists, Redact applied in place:
    (violations, blocked). ``keys``: the extras' keys, when they went into ``payload``."""
    found = extras if extras is not payload else {k: payload[k] for k in keys}
    violations = governance.check(found)
    if not violations:
        return violations, False
    redacted, blocked = apply_actions(found, violations)
    extras.update(redacted)  # same keys, Redact values
    return violations, blocked


def _message(
    record: logging.LogRecord,
    captured: Optional[Captured],
    merged: Optional[_Merged],
    before: Optional[List[Tuple[Any, str, Any]]],
    extras: Mapping[str, Any],
) -> str:
    """RawPayload's message: what CaptureContext noted, a mapping message's text, the
    message rendered from mapping arguments as governance left them, or ``getMessage()``."""
    if captured is not None and captured.message is not None:
        message: Any = captured.message  # QueueHandler.prepare put its formatted text in msg
    elif merged is not None and merged.fields.message is not None:
        message = merged.fields.message
    elif merged is not None and merged.fields.args is not None:
        message = _render(record, merged.fields, before, extras)
    else:  # no mapping arguments (loguru's bound fields come with a text message)
        try:
            message = record.getMessage()
        except Exception as exc:  # noqa: BLE001 - a bad format string must not lose it
            message = _unformattable(record, exc)
    if message.__class__ is not str or not message.isascii():
        message = as_text(message)
    return message  # type: ignore[no-any-return]


def _add_renamed(payload: Dict[str, Any], extras: Mapping[str, Any]) -> None:
    """Add ``extras`` to RawPayload, one named like a payload key as ``extra_<name>``."""
    for key, value in extras.items():
        if key in _PAYLOAD_KEYS:
            key = "extra_" + key  # noqa: PLW2901
            while key in payload or key in extras:
                key = "extra_" + key  # noqa: PLW2901
        payload[key] = value


def _add_exception(
    payload: Dict[str, Any],
    record: logging.LogRecord,
    merged: Optional[_Merged],
    captured: Optional[Captured],
) -> None:
    """RawPayload's ``exception``: the record's (or a mapping message's) exc_info, else
    what CaptureContext noted before prepare() cleared it."""
    exc_info = record.exc_info or (merged.fields.exc_info if merged is not None else None)
    if exc_info:
        exception = exception_fields(exc_info)
        if exception is not None:
            payload["exception"] = exception
    elif captured is not None and captured.exception is not None:
        payload["exception"] = dict(captured.exception)


def _pattern_rules(
    governance: Governance, payload: Dict[str, Any]
) -> Tuple[Tuple[Violation, ...], bool]:
    """Pattern rules over the message and the fields, Redact applied in ``payload``:
    (violations, blocked)."""
    scanned = {k: v for k, v in payload.items() if k not in _UNSCANNED}
    scan = governance.scan_text(payload["message"], scanned)
    # with or without a match: a text longer than the scan bound comes back cut, and what
    # was not scanned must not be stored
    payload["message"] = scan.message
    if scan.values is not scanned:
        payload.update(scan.values)
    return scan.violations, scan.blocked


def _merged_layout(
    merged: Fields,
) -> Tuple[_Layout, Dict[str, Any], List[Tuple[Any, str]]]:
    """A one-off layout for the merged fields, the values by wire key (controls too), and
    (key, wire key) of each mapping argument.

    Controls may come from any source (a later one overrides); a field whose wire text is
    a control name or an earlier field's gets the first free ``~2``, ``~3``, ... suffix.
    """
    keys: List[Any] = []
    values: List[Any] = []
    controls: Dict[str, Any] = {}
    start, end = merged.args_at
    args: List[int] = []  # positions in keys of the mapping arguments
    for i, (key, value) in enumerate(merged.items):
        if key.__class__ is str and key in CONTROL_KEYS:
            controls.pop(key, None)
            controls[key] = value
        else:
            if start <= i < end:
                args.append(len(keys))
            keys.append(key)
            values.append(value)
    wires = unique_keys(keys, [wire_key(key) for key in keys])
    taken = set(CONTROL_KEYS)
    for i, wire in enumerate(wires):
        name, n = wire, 2
        while name in taken:
            name = f"{wire}~{n}"
            n += 1
        taken.add(name)
        wires[i] = name
    source: Dict[str, Any] = dict(zip(wires, values))
    source.update(controls)
    layout = _Layout.of_fields(wires, list(controls))
    return layout, source, [(keys[i], wires[i]) for i in args]


def _render(
    record: logging.LogRecord,
    merged: Fields,
    before: Optional[List[Tuple[Any, str, Any]]],
    extras: Mapping[str, Any],
) -> str:
    """``msg % args`` with mapping arguments as governance left them (Redact applied)."""
    args = dict(merged.args or {})
    for key, wire, value in before or ():
        governed = extras[wire]
        if governed is not value:
            args[key] = governed
    try:
        return str(record.msg) % args
    except Exception as exc:  # noqa: BLE001 - a bad format string must not lose the event
        return (
            f"{safe_str(record.msg)} [cerbistream_spool: message formatting failed: "
            f"{type(exc).__name__}: {safe_str(exc)}]"
        )


def _event_dict(
    content: _Content,
    levelno: Any,
    tenant_id: str,
    app_name: str,
    environment: Optional[str],
    governance_profile: str,
) -> Dict[str, Any]:
    """The ScoringEventDto dict: ``content`` of a record in the envelope (EVENT_KEYS order)."""
    overrides = content.overrides
    if overrides is not None:
        tenant_id = _override(overrides.get("tenant_id"), tenant_id)
        app_name = _override(overrides.get("app_name"), app_name)
        value = overrides.get("environment")
        if value is not None:
            environment = as_text(value)
    return {
        "SchemaVersion": SCHEMA_VERSION,
        "TenantId": tenant_id,
        "AppName": app_name,
        "Environment": environment,
        "Runtime": RUNTIME,
        "LogId": content.log_id,
        "CorrelationId": content.correlation_id,
        "TimestampUtc": content.timestamp,
        "GovernanceProfile": governance_profile,
        "LogLevel": log_level_name(levelno),
        "Score": None,
        "Violations": [v.as_dict() for v in content.violations],
        "GovernanceFlags": {"GovernanceRelaxed": content.relaxed},
        "RawPayload": content.payload,
    }


def event_to_json(event: Mapping[str, Any]) -> str:
    """Compact JSON, non-ASCII kept, key order preserved; the queue message body."""
    return _JSON.encode(event)


def body_to_json(body: Any) -> str:
    """Like :func:`event_to_json` for any decoded body (``tail``): what JSON cannot carry
    as it is (non-string keys, bytes, ``nan``, nesting deeper than the encoder takes, from
    a damaged or foreign spool) goes through :func:`to_wire` first. Never raises."""
    try:
        return _JSON.encode(body)
    except (TypeError, ValueError, RecursionError):
        return _JSON.encode(to_wire(body))


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

    Randomness comes from ``os.urandom``, ``_ID_BLOCK`` (256) ids per call (one syscall
    per 256 events), formatted as a block into a small shared pool; ``list.pop`` hands
    each id out once, so ids never repeat across threads or calls. A forked child starts
    with an empty pool: it never reuses ids its parent had drawn.
    """
    pool = _id_pool
    while True:
        try:
            return pool.pop()
        except IndexError:
            pool.extend(_log_id_block())


def _log_id_block() -> List[str]:
    """``_ID_BLOCK`` ids: hex in groups of 4 (``hex("-", 2)``, 40 chars per id), the
    group joins inside the first and last UUID field deleted, version and variant set."""
    text = bytearray(os.urandom(16 * _ID_BLOCK).hex("-", 2), "ascii")
    text[4::40] = text[29::40] = text[34::40] = b"+" * _ID_BLOCK  # joins to delete
    text[39::40] = b" " * (_ID_BLOCK - 1)  # between ids
    text[15::40] = b"4" * _ID_BLOCK  # nibble 12: the version
    text[20::40] = text[20::40].translate(_UUID_VARIANT)  # nibble 16: 10xx
    return text.translate(None, b"+").decode("ascii").split()


if hasattr(os, "register_at_fork"):  # POSIX: a forked child draws ids of its own
    os.register_at_fork(after_in_child=_id_pool.clear)


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
    if cached[0] != second:
        cached = _second_prefix = (
            second,
            datetime.fromtimestamp(second, timezone.utc).isoformat(timespec="seconds")[:-6] + ".",
        )
    return f"{cached[1]}{_DIGITS3[micros // 1000]}{_DIGITS3[micros % 1000]}Z"


def _override(value: Any, default: str) -> str:
    if value is None:
        return default
    text = as_text(value)
    return text if text.strip() else default


def _truthy(value: Any) -> bool:
    try:
        return bool(value)
    except Exception:  # noqa: BLE001 - an ambiguous flag (numpy array) counts as not set
        return False


def _unformattable(record: logging.LogRecord, exc: Exception) -> str:
    """The raw msg with a marker, for a record whose ``getMessage()`` raised ``exc``."""
    return (
        f"{safe_str(record.msg)} [cerbistream_spool: message formatting failed: "
        f"{type(exc).__name__}: {safe_str(exc)}; args={safe_str(record.args)}]"
    )
