"""ScoringEventDto building and serialisation (docs/CONTRACT.md §1)."""

from __future__ import annotations

import asyncio
import contextvars
import copy
import json
import logging
import math
import os
import re
import subprocess
import sys
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiers import examples

from cerbistream_spool.context import (
    get_correlation_id,
    reset_correlation_id,
    set_correlation_id,
)
from cerbistream_spool.errors import SpoolConfigError
from cerbistream_spool.event import (
    _MAX_LAYOUTS,
    CONTROL_KEYS,
    EVENT_KEYS,
    MAX_DEPTH,
    RESERVED_ATTRS,
    EventEncoder,
    build_event,
    event_to_json,
    format_timestamp,
    log_level_name,
    new_log_id,
    to_wire,
    validate_event_options,
)
from cerbistream_spool.governance import REDACTED, Governance, load_governance, parse_governance
from cerbistream_spool.spool.record import encode_body
from tests.reference_event import reference_event

GOLDEN = Path(__file__).resolve().parent / "golden"
IN_CI = bool(os.environ.get("CI"))  # .ci/run: the property tests' full example counts
CONTRACT_CREATED = datetime(2026, 2, 3, 22, 0, 0, 123456, tzinfo=timezone.utc).timestamp()
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z")
CONTRACT_KEYS = [
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
]


@pytest.fixture(autouse=True)
def _no_correlation_id() -> Iterator[None]:
    token = set_correlation_id(None)
    yield
    reset_correlation_id(token)


@pytest.fixture(scope="module")
def contract_gov() -> Governance:
    return load_governance(GOLDEN / "contract_governance.json")


def make_record(
    msg: Any = "User logged in",
    *args: Any,
    name: str = "app",
    level: int = logging.INFO,
    extra: Optional[Dict[str, Any]] = None,
    exc_info: Any = None,
    created: Optional[float] = None,
) -> logging.LogRecord:
    """A record as Logger.makeRecord builds it (extras via ``extra=``) in views.login."""
    record = logging.getLogger(name).makeRecord(
        name, level, "/srv/app/views.py", 42, msg, args, exc_info, "login", extra
    )
    if created is not None:
        record.created = created
    return record


def build(record: logging.LogRecord, **kw: Any) -> Dict[str, Any]:
    options: Dict[str, Any] = {
        "tenant_id": "my-tenant",
        "app_name": "my-python-app",
        "environment": "production",
        "governance_profile": "default",
        "governance": None,
    }
    options.update(kw)
    return build_event(record, **options)


def golden(name: str) -> Dict[str, Any]:
    data: Dict[str, Any] = json.loads((GOLDEN / name).read_text(encoding="utf-8"))
    return data


# ---------------------------------------------------------------- golden shapes


def test_event_json_equals_contract_example_key_for_key_in_order(contract_gov: Governance) -> None:
    record = make_record(extra={"user_id": "12345", "email": "a@b.c"}, created=CONTRACT_CREATED)
    event = build(record, governance=contract_gov)
    expected = golden("contract_event.json")
    assert UUID4.match(event["LogId"])
    event["LogId"] = expected["LogId"]
    assert event_to_json(event) == event_to_json(expected)  # string equality pins nested order
    assert event == expected


def test_blocked_event_keeps_envelope_and_violations_only(contract_gov: Governance) -> None:
    token = set_correlation_id("req-42")
    try:
        record = make_record(
            "login failed for %s with %s",
            "bob",
            "hunter2",
            name="auth",
            level=logging.ERROR,
            extra={"user": {"EMAIL": "b@c.d"}, "password": "hunter2"},
            exc_info=_exc_info(),
            created=CONTRACT_CREATED,
        )
        event = build(record, governance=contract_gov)
    finally:
        reset_correlation_id(token)
    expected = golden("blocked_event.json")
    event["LogId"] = expected["LogId"]
    assert event_to_json(event) == event_to_json(expected)
    assert "hunter2" not in event_to_json(event) and "bob" not in event_to_json(event)


def test_event_keys_are_exactly_the_contract_keys_in_order() -> None:
    assert list(EVENT_KEYS) == CONTRACT_KEYS
    assert list(build(make_record())) == CONTRACT_KEYS


def test_raw_payload_starts_with_fixed_keys_then_extras_in_given_order() -> None:
    record = make_record(extra={"b": 1, "a": 2, "c": 3})
    assert list(build(record)["RawPayload"]) == [
        "logger",
        "level",
        "message",
        "module",
        "function",
        "b",
        "a",
        "c",
    ]


def test_constants_schema_runtime_and_profile() -> None:
    event = build(make_record(), governance_profile="payments")
    assert event["SchemaVersion"] == "1.0"
    assert event["Runtime"] == "python"
    assert event["GovernanceProfile"] == "payments"


def test_score_is_always_null_even_with_violations(contract_gov: Governance) -> None:
    assert build(make_record())["Score"] is None
    event = build(make_record(extra={"email": "x"}), governance=contract_gov)
    assert event["Violations"] and event["Score"] is None
    assert '"Score":null' in event_to_json(event)


def test_no_governance_means_no_violations_and_values_kept() -> None:
    event = build(make_record(extra={"password": "p"}))
    assert event["Violations"] == []
    assert event["RawPayload"]["password"] == "p"


# ---------------------------------------------------------------- governance in the event


def test_severity_in_event_is_copied_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gov.json"
    path.write_text(
        json.dumps(
            {
                "profiles": {
                    "default": {
                        "rules": [
                            {"ruleId": "X-1", "code": "C", "fields": ["a.B"], "severity": "Sev-7"}
                        ]
                    }
                }
            }
        )
    )
    event = build(make_record(extra={"A": {"b": 1}}), governance=load_governance(path))
    assert event["Violations"] == [
        {
            "RuleId": "X-1",
            "Code": "C",
            "Field": "a.B",
            "Severity": "Sev-7",
            "Message": "Field 'a.B' violates rule X-1",
        }
    ]
    assert event["RawPayload"]["A"] == {"b": 1}  # flag only: value kept


def test_nested_redact_in_payload_without_mutating_the_callers_extra(
    contract_gov: Governance,
) -> None:
    user = {"id": 7, "Email": "c@d.e"}
    record = make_record(extra={"user": user, "phone": "555"})
    event = build(record, governance=contract_gov)
    assert event["RawPayload"]["user"] == {"id": 7, "Email": REDACTED}
    assert event["RawPayload"]["phone"] == REDACTED
    assert user == {"id": 7, "Email": "c@d.e"}
    assert record.user is user  # type: ignore[attr-defined]
    assert [v["Field"] for v in event["Violations"]] == ["phone", "user.email"]


def test_block_drops_message_extras_and_exception(contract_gov: Governance) -> None:
    record = make_record("secret text", extra={"api_key": "k", "x": 1}, exc_info=_exc_info())
    event = build(record, governance=contract_gov)
    assert event["RawPayload"] == {"logger": "app", "level": "INFO", "blocked": True}
    assert [v["RuleId"] for v in event["Violations"]] == ["SEC-001"]
    assert event["TenantId"] == "my-tenant" and event["LogLevel"] == "Information"


# ---------------------------------------------------------------- envelope fields


def test_log_id_is_a_fresh_uuid4_per_event() -> None:
    ids = {build(make_record())["LogId"] for _ in range(200)}
    assert len(ids) == 200
    for log_id in ids:
        assert UUID4.match(log_id)
        parsed = uuid.UUID(log_id)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed) == log_id


def test_new_log_id_bits_are_random_outside_version_and_variant() -> None:
    ids = [uuid.UUID(new_log_id()).int for _ in range(64)]
    fixed = (0xF000 << 64) | (0xC000 << 48)
    varying = 0
    for n in ids[1:]:
        varying |= n ^ ids[0]
    assert varying & fixed == 0
    assert bin(varying).count("1") == 122


def test_timestamp_matches_the_contract_example() -> None:
    event = build(make_record(created=CONTRACT_CREATED))
    assert event["TimestampUtc"] == "2026-02-03T22:00:00.123456Z"


def _reference_timestamp(created: float) -> str:
    return datetime.fromtimestamp(created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.mark.parametrize(
    "created",
    [
        0.0,
        1.0,
        1770156000.0,
        1770156000.9999996,  # rounds up into the next second
        1770156000.9999994,
        1770156000.0000005,
        1770156000.0000015,
        1770156059.5,
        -1.5,
        -0.0000004,
        253402300799.5,  # 9999-12-31T23:59:59.500000
    ],
)
def test_timestamp_rounding_matches_datetime_fromtimestamp(created: float) -> None:
    assert format_timestamp(created) == _reference_timestamp(created)
    assert TIMESTAMP.match(format_timestamp(created))


@settings(max_examples=examples(500, fast=100))
@given(created=st.floats(min_value=0, max_value=4102444800, allow_nan=False, allow_infinity=False))
def test_timestamp_matches_datetime_for_any_created(created: float) -> None:
    assert format_timestamp(created) == _reference_timestamp(created)


def test_timestamp_prefix_cache_never_returns_a_stale_second() -> None:
    for created in (100.25, 101.5, 100.75, 100.75, 99.0, 101.5):
        assert format_timestamp(created) == _reference_timestamp(created)


@pytest.mark.parametrize(
    ("levelno", "name"),
    [
        (0, "Debug"),
        (10, "Debug"),
        (19, "Debug"),
        (20, "Information"),
        (25, "Information"),
        (30, "Warning"),
        (39, "Warning"),
        (40, "Error"),
        (49, "Error"),
        (50, "Critical"),
        (60, "Critical"),
    ],
)
def test_log_level_mapping_by_threshold(levelno: int, name: str) -> None:
    assert log_level_name(levelno) == name
    assert build(make_record(level=levelno))["LogLevel"] == name


def test_tenant_app_environment_come_from_options() -> None:
    event = build(make_record(), environment=None)
    assert (event["TenantId"], event["AppName"], event["Environment"]) == (
        "my-tenant",
        "my-python-app",
        None,
    )
    assert '"Environment":null' in event_to_json(event)


def test_extras_override_tenant_app_environment_and_are_not_in_payload() -> None:
    record = make_record(
        extra={"tenant_id": "t2", "app_name": "a2", "environment": "staging", "k": 1}
    )
    event = build(record)
    assert (event["TenantId"], event["AppName"], event["Environment"]) == ("t2", "a2", "staging")
    assert list(event["RawPayload"])[5:] == ["k"]


def test_none_or_empty_overrides_fall_back_to_options() -> None:
    record = make_record(extra={"tenant_id": "", "app_name": None, "environment": None})
    event = build(record)
    assert (event["TenantId"], event["AppName"], event["Environment"]) == (
        "my-tenant",
        "my-python-app",
        "production",
    )


def test_correlation_id_is_null_without_context_or_extra() -> None:
    assert build(make_record())["CorrelationId"] is None


def test_correlation_id_comes_from_the_context() -> None:
    token = set_correlation_id("req-1")
    try:
        assert get_correlation_id() == "req-1"
        assert build(make_record())["CorrelationId"] == "req-1"
    finally:
        reset_correlation_id(token)
    assert build(make_record())["CorrelationId"] is None


def test_extra_correlation_id_overrides_context_and_leaves_payload() -> None:
    token = set_correlation_id("req-1")
    try:
        event = build(make_record(extra={"correlation_id": uuid.UUID(int=5)}))
    finally:
        reset_correlation_id(token)
    assert event["CorrelationId"] == str(uuid.UUID(int=5))
    assert "correlation_id" not in event["RawPayload"]


def test_correlation_id_is_per_context() -> None:
    def in_other_context() -> Any:
        set_correlation_id("inner")
        return build(make_record())["CorrelationId"]

    assert contextvars.copy_context().run(in_other_context) == "inner"
    assert build(make_record())["CorrelationId"] is None


def test_set_correlation_id_rejects_non_strings() -> None:
    with pytest.raises(TypeError):
        set_correlation_id(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "flag"),
    [
        (True, True),
        ("yes", True),
        (1, True),
        (False, False),
        (0, False),
        ("", False),
        (None, False),
    ],
)
def test_governance_relaxed_flag_is_truthiness_of_the_extra(value: Any, flag: bool) -> None:
    event = build(make_record(extra={"governance_relaxed": value}))
    assert event["GovernanceFlags"] == {"GovernanceRelaxed": flag}
    assert "governance_relaxed" not in event["RawPayload"]


def test_governance_relaxed_defaults_to_false() -> None:
    assert build(make_record())["GovernanceFlags"] == {"GovernanceRelaxed": False}


def test_governance_relaxed_does_not_disable_redaction(contract_gov: Governance) -> None:
    event = build(
        make_record(extra={"governance_relaxed": True, "email": "x"}), governance=contract_gov
    )
    assert event["GovernanceFlags"]["GovernanceRelaxed"] is True
    assert event["RawPayload"]["email"] == REDACTED


# ---------------------------------------------------------------- extras


def test_stdlib_attributes_never_leak_into_payload() -> None:
    record = make_record(extra={"user_id": 1}, exc_info=_exc_info())
    record.stack_info = "Stack (most recent call last): ..."
    record.exc_text = "cached"
    record.taskName = "Task-7"
    record.message = "formatted"
    record.asctime = "2026-02-03"
    record._private = 1
    payload = build(record)["RawPayload"]
    assert list(payload) == [
        "logger",
        "level",
        "message",
        "module",
        "function",
        "user_id",
        "exception",
    ]


def test_reserved_set_covers_every_fresh_logrecord_attribute() -> None:
    fresh = logging.LogRecord("n", 10, "p", 1, "m", (), None, func="f", sinfo="s")
    assert set(fresh.__dict__) <= RESERVED_ATTRS
    assert {"taskName", "message", "asctime", "msecs", "exc_text", "stack_info"} <= RESERVED_ATTRS


def test_tasks_name_does_not_leak_when_logging_inside_asyncio() -> None:
    async def main() -> Dict[str, Any]:
        return build(make_record(extra={"k": 1}))

    payload = asyncio.run(main())["RawPayload"]
    assert "taskName" not in payload and payload["k"] == 1


def test_makelogrecord_extras_are_picked_up_too() -> None:
    record = logging.makeLogRecord({"msg": "m", "custom": 1, "taskName": "T"})
    event = build(record)
    assert event["RawPayload"]["custom"] == 1 and "taskName" not in event["RawPayload"]
    assert event["LogLevel"] == "Debug"  # makeLogRecord leaves levelno None


def test_extra_named_like_a_payload_key_is_kept_under_extra_prefix() -> None:
    record = make_record(extra={"level": "custom", "logger": "x", "extra_level": "y"})
    payload = build(record)["RawPayload"]
    assert payload["level"] == "INFO" and payload["logger"] == "app"
    assert payload["extra_logger"] == "x"
    assert {payload["extra_level"], payload["extra_extra_level"]} == {"custom", "y"}


class _Weird:
    def __str__(self) -> str:
        return "weird!"


class _BadStr:
    def __str__(self) -> str:
        raise RuntimeError("no")


class _Color(str):
    pass


def test_values_json_and_msgpack_cannot_carry_become_strings() -> None:
    obj = object()
    record = make_record(
        extra={
            "obj": obj,
            "weird": _Weird(),
            "a_set": {1},
            "raw": b"\x00ab",
            "huge": 2**64,
            "tiny": -(2**63) - 1,
            "nan": math.nan,
            "inf": -math.inf,
            "bad": _BadStr(),
            "dt": datetime(2026, 1, 2, tzinfo=timezone.utc),
        }
    )
    payload = build(record)["RawPayload"]
    assert payload["obj"] == str(obj)
    assert payload["weird"] == "weird!"
    assert payload["a_set"] == "{1}"
    assert payload["raw"] == "b'\\x00ab'"
    assert payload["huge"] == str(2**64)
    assert payload["tiny"] == str(-(2**63) - 1)
    assert payload["nan"] == "nan" and payload["inf"] == "-inf"
    assert payload["bad"] == "<unprintable _BadStr>"
    assert payload["dt"] == "2026-01-02 00:00:00+00:00"


def test_values_json_and_msgpack_carry_are_kept_with_tuples_as_lists() -> None:
    record = make_record(
        extra={
            "limits": (2**64 - 1, -(2**63)),
            "f": 1.5,
            "nested": {1: (True, None), "s": _Color("red")},
            "lvl": logging.INFO,
        }
    )
    payload = build(record)["RawPayload"]
    assert payload["limits"] == [2**64 - 1, -(2**63)]
    assert payload["f"] == 1.5
    assert payload["nested"] == {"1": [True, None], "s": "red"}
    assert type(payload["nested"]["s"]) is str


def test_lone_surrogates_are_escaped_so_utf8_encoding_works() -> None:
    record = make_record("bad \udcff name", extra={"path\udc80": "x\ud800"})
    event = build(record)
    event_to_json(event).encode("utf-8")
    msgpack.packb(event)
    assert event["RawPayload"]["message"] == "bad \\udcff name"
    assert event["RawPayload"]["path\\udc80"] == "x\\ud800"


def test_deep_and_cyclic_structures_are_cut_to_strings() -> None:
    cyclic: Dict[str, Any] = {}
    cyclic["self"] = cyclic
    deep: Any = "leaf"
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    payload = build(make_record(extra={"cyclic": cyclic, "deep": deep}))["RawPayload"]
    json.dumps(payload)
    msgpack.packb(payload)
    depth, node = 0, payload["deep"]
    while isinstance(node, list):
        depth, node = depth + 1, node[0]
    assert depth == MAX_DEPTH and isinstance(node, str)


def test_to_wire_does_not_mutate_its_input() -> None:
    value = {"a": [(1, 2), {"b": {3}}]}
    before = copy.deepcopy(value)
    to_wire(value)
    assert value == before


# ---------------------------------------------------------------- message and exception


def test_message_is_get_message_with_args() -> None:
    assert build(make_record("hello %s #%d", "bob", 3))["RawPayload"]["message"] == "hello bob #3"


def test_broken_format_string_keeps_raw_msg_with_a_marker() -> None:
    payload = build(make_record("count=%d", "not-a-number"))["RawPayload"]
    assert payload["message"].startswith("count=%d [cerbistream_spool: message formatting failed: ")
    assert "TypeError" in payload["message"]


@pytest.mark.parametrize(("msg", "args"), [("100% done", ()), ("hello %s", ("bob",))])
def test_bound_fields_keep_the_message_as_get_message_formats_it(msg: str, args: Any) -> None:
    """loguru's bound ``extra`` makes fields, not mapping arguments: the text message is
    ``getMessage()``, never ``msg % {}`` (a ``%`` in loguru's formatted text)."""
    record = make_record(msg, *args, extra={"extra": {"user": "bob"}})
    payload = build(record)["RawPayload"]
    assert payload["message"] == record.getMessage()
    assert payload["user"] == "bob"


def test_exception_is_recorded_after_extras() -> None:
    payload = build(make_record("failed", extra={"k": 1}, exc_info=_exc_info()))["RawPayload"]
    assert list(payload)[-2:] == ["k", "exception"]
    exception = payload["exception"]
    assert list(exception) == ["type", "message", "traceback"]
    assert exception["type"] == "ValueError"
    assert exception["message"] == "boom"
    assert exception["traceback"].startswith("Traceback (most recent call last):")
    assert exception["traceback"].endswith("ValueError: boom")


def test_exception_type_of_non_builtin_is_qualified() -> None:
    try:
        raise json.JSONDecodeError("bad", "doc", 0)
    except ValueError:
        info = sys.exc_info()
    assert build(make_record(exc_info=info))["RawPayload"]["exception"]["type"] == (
        "json.decoder.JSONDecodeError"
    )


def test_exc_info_without_an_active_exception_adds_nothing() -> None:
    payload = build(make_record(exc_info=(None, None, None)))["RawPayload"]
    assert "exception" not in payload


def _exc_info() -> Any:
    try:
        raise ValueError("boom")
    except ValueError:
        return sys.exc_info()


# ---------------------------------------------------------------- serialisation and options


def test_event_to_json_is_compact_unicode_and_ordered() -> None:
    event = build(make_record("héllo ✓", extra={"z": 1, "a": 2}))
    text = event_to_json(event)
    assert "héllo ✓" in text and ", " not in text and ": " not in text
    assert text.startswith('{"SchemaVersion":"1.0","TenantId":"my-tenant",')
    assert json.loads(text) == event


def test_event_to_json_refuses_nan_rather_than_writing_invalid_json() -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        event_to_json({"x": math.nan})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tenant_id": "", "app_name": "a"},
        {"tenant_id": "  ", "app_name": "a"},
        {"tenant_id": None, "app_name": "a"},
        {"tenant_id": "t", "app_name": ""},
        {"tenant_id": "t", "app_name": 5},
        {"tenant_id": "t", "app_name": "a", "governance_profile": ""},
        {"tenant_id": "t", "app_name": "a", "environment": 3},
    ],
)
def test_invalid_options_raise_spool_config_error(kwargs: Dict[str, Any]) -> None:
    with pytest.raises(SpoolConfigError):
        validate_event_options(**kwargs)


def test_valid_options_pass() -> None:
    validate_event_options(tenant_id="t", app_name="a")
    validate_event_options(tenant_id="t", app_name="a", environment="prod", governance_profile="p")


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # unbounded: beyond 64 bits must become str
    st.floats(),  # nan and inf included
    st.text(st.characters(exclude_categories=())),  # lone surrogates included
    st.binary(max_size=8),
    st.frozensets(st.integers(), max_size=3),
)
json_tree = st.recursive(
    json_leaf,
    lambda kids: (
        st.lists(kids, max_size=4)
        | st.lists(kids, max_size=3).map(tuple)
        | st.dictionaries(st.one_of(st.text(), st.integers()), kids, max_size=4)
    ),
    max_leaves=20,
)
extra_names = st.text(st.characters(exclude_categories=()), min_size=1, max_size=12).filter(
    lambda k: k not in RESERVED_ATTRS and not k.startswith("_")
)


@settings(max_examples=examples(300 if IN_CI else 100, fast=30), deadline=None)
@given(extras=st.dictionaries(extra_names, json_tree, max_size=6), relaxed=st.booleans())
def test_any_extras_round_trip_through_msgpack_and_json(
    extras: Dict[str, Any], relaxed: bool
) -> None:
    record = make_record(extra={**extras, "governance_relaxed": relaxed})
    gov = load_governance(GOLDEN / "contract_governance.json")
    event = build(record, governance=gov)
    packed = msgpack.packb(event)
    assert msgpack.unpackb(packed, raw=False) == event
    text = event_to_json(event)
    text.encode("utf-8")
    assert json.loads(text) == event
    assert json.dumps(event, allow_nan=False)


def test_a_redacted_extra_whose_name_clashes_with_payload_keys_stays_redacted(tmp_path) -> None:
    """The renamed ``extra_logger`` must carry the redacted value, on the memoised flat path too."""
    path = tmp_path / "g.json"
    path.write_text(
        json.dumps(
            {
                "profiles": {
                    "default": {
                        "rules": [
                            {
                                "ruleId": "R1",
                                "code": "C",
                                "fields": ["logger", "Email"],
                                "severity": "High",
                                "action": "Redact",
                            }
                        ]
                    }
                }
            }
        )
    )
    gov = load_governance(str(path), "default")
    for _ in range(2):  # second pass hits the memoised plan
        record = logging.LogRecord("app", 20, "m.py", 1, "msg", (), None, "f")
        record.logger = "secret-logger"
        record.EMAIL = "secret-mail"
        event = build_event(record, tenant_id="t", app_name="a", governance=gov)
        payload = event["RawPayload"]
        assert payload["extra_logger"] == "***REDACTED***"
        assert payload["EMAIL"] == "***REDACTED***"
        assert "secret" not in json.dumps(event)


# ---------------------------------------------------------------- EventEncoder: the same bytes


def assert_encoder_bytes_equal_build_event(
    encoder: EventEncoder, record: logging.LogRecord, governance: Optional[Governance]
) -> bytes:
    """``encoder.encode`` == ``encode_body(build_event(...))`` == ``encode_body`` of the
    plain reference builder (tests/reference_event.py) byte for byte, the LogId pinned."""
    body = encoder.encode(record, governance)
    log_id = msgpack.unpackb(body, raw=False)["LogId"]
    assert UUID4.match(log_id)
    options: Dict[str, Any] = {
        "tenant_id": encoder.tenant_id,
        "app_name": encoder.app_name,
        "environment": encoder.environment,
        "governance_profile": encoder.governance_profile,
        "governance": governance,
    }
    event = build_event(record, **options)
    event["LogId"] = log_id
    reference = reference_event(record, **options, log_id=log_id)
    if any(map(_ran_out_of_time, (msgpack.unpackb(body, raw=False), event, reference))):
        return body  # a time budget is not deterministic: one of the scans failed closed
    assert body == encode_body(reference), (msgpack.unpackb(body, raw=False), reference)
    assert body == encode_body(event), (msgpack.unpackb(body, raw=False), event)
    return body


def _ran_out_of_time(event: Dict[str, Any]) -> bool:
    return any("ran out of time" in v["Message"] for v in event["Violations"])


ENCODER_GOVERNANCE_TEXT = json.dumps(
    {
        "profiles": {
            "default": {
                "rules": [
                    {
                        "ruleId": "PII-001",
                        "code": "PII",
                        "fields": ["email", "ssn", "user.email", "logger", "Exception"],
                        "severity": "Warning",
                        "message": "PII field detected",
                        "action": "Redact",
                    },
                    {
                        "ruleId": "SEC-001",
                        "code": "Security",
                        "fields": ["password", "user.password"],
                        "severity": "Critical",
                        "action": "Block",
                    },
                    {"ruleId": "FLAG-1", "code": "F", "fields": ["iban"], "severity": "Low"},
                ]
            },
            "patterns": {
                "rules": [
                    {
                        "ruleId": "PII-001",
                        "code": "PII",
                        "fields": ["email", "users.email", "user.email"],
                        "severity": "Warning",
                        "action": "Redact",
                    },
                    {
                        "ruleId": "TXT-1",
                        "code": "Security",
                        "patterns": ["(?<=password=)[^&\\s]+", "ü+"],
                        "severity": "Error",
                        "action": "Redact",
                    },
                    {
                        "ruleId": "TXT-2",
                        "code": "Security",
                        "patterns": ["BLOCKME"],
                        "severity": "Critical",
                        "action": "Block",
                    },
                ]
            },
        }
    }
)
ENCODER_GOVERNANCE = parse_governance(ENCODER_GOVERNANCE_TEXT, path="<test>", profile="default")
PATTERN_GOVERNANCE = parse_governance(ENCODER_GOVERNANCE_TEXT, path="<test>", profile="patterns")


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str")


governed_names = st.sampled_from(
    [
        *("email", "EMAIL", "ssn", "password", "iban", "user", "users"),  # governed
        *("user.email", "User.Password", "email~2", "extra", b"password", b"\xffx"),
        *("logger", "level", "exception", "blocked", "function", "extra_level"),  # renamed
        *("_private", "naïve", "p\udc80th", "k"),
    ]
)
control_values = st.one_of(
    st.none(), st.just(""), st.text(max_size=4), st.integers(), st.booleans(), st.just(b"x")
)
odd_values = st.one_of(
    json_tree,
    st.builds(object),
    st.builds(_Unprintable),
    st.builds(_Weird),
    st.builds(_Color, st.text(max_size=3)),
    st.dictionaries(st.sampled_from(["email", "Email", "password", "id"]), json_tree, max_size=3),
    st.lists(  # dicts inside lists, and lists of them
        st.one_of(
            st.dictionaries(st.sampled_from(["email", "password", "id"]), json_leaf, max_size=2),
            st.lists(st.dictionaries(st.just("email"), json_leaf, max_size=1), max_size=2),
            st.sampled_from(["password=hunter2&x", "BLOCKME", "üü", "plain"]),
        ),
        max_size=3,
    ),
    st.sampled_from(["GET /?password=hunter2", "BLOCKME now", "naïve ü", "x" * 70000]),
)
# what a front-end puts in record.msg / record.args (docs/GOVERNANCE.md, field model)
messages = st.one_of(
    st.none(),  # the plain "%s" message of the test
    st.dictionaries(
        st.sampled_from(["event", "message", "email", "password", "exc_info", "_p", "tenant_id"]),
        st.one_of(json_leaf, st.just(True), st.just("GET /?password=hunter2")),
        max_size=4,
    ),
)
# what the fast path treats specially, dense: RawPayload names and their extra_ forms,
# keys that collide once made text, governed keys holding nested dicts and lists
nested_keys = st.sampled_from(["email", "Email", "password", "id"])
governed_trees = st.sampled_from(["x", 1, None, "password=hunter2"]) | st.recursive(
    st.dictionaries(nested_keys, st.sampled_from(["x", 1]), min_size=1, max_size=3),
    lambda kids: (
        st.lists(kids, min_size=1, max_size=3)
        | st.dictionaries(nested_keys, kids, min_size=1, max_size=3)
    ),
    max_leaves=6,
)
special_extras = st.dictionaries(
    st.sampled_from(["user", "users", "User"])  # where the rules look inside dicts and lists
    | st.sampled_from(
        [
            *("logger", "extra_logger", "level", "extra_level", "extra_extra_level"),
            *("email", "password", "iban", "1", 1, b"email", "email~2"),
        ]
    ),
    governed_trees,
    max_size=5,
)
mapping_args = st.dictionaries(
    st.sampled_from(["user", "email", "password", "n"]),
    st.one_of(st.text(max_size=4), st.integers(), st.just("password=x")),
    min_size=1,
    max_size=3,
)


# Encoders live across examples, one per option set and governance, so their layout and
# Violations memos are hit by records of other shapes too (never reset by a governance swap).
_ENCODERS: Dict[Any, EventEncoder] = {}


def shared_encoder(options: Dict[str, Any], governance: Optional[Governance]) -> EventEncoder:
    key = (*options.values(), id(governance))
    if key not in _ENCODERS:
        _ENCODERS[key] = EventEncoder(**options)
    return _ENCODERS[key]


@settings(max_examples=examples(500 if IN_CI else 150, fast=40), deadline=None)
@given(
    level=st.one_of(
        st.sampled_from([0, 5, 10, 19, 20, 25, 30, 40, 45, 50, 60]), st.integers(-(2**70), 2**70)
    ),
    extras=st.dictionaries(
        st.one_of(governed_names, extra_names, st.integers(-2, 2), st.sampled_from(["1", "1~2"])),
        odd_values,
        max_size=6,
    ),
    controls=st.dictionaries(st.sampled_from(sorted(CONTROL_KEYS)), control_values, max_size=3),
    governance=st.sampled_from([None, ENCODER_GOVERNANCE, Governance(), PATTERN_GOVERNANCE]),
    message=messages,
    arg_map=st.one_of(st.none(), mapping_args),
    options=st.fixed_dictionaries(
        {
            "tenant_id": st.sampled_from(["my-tenant", "tenant-ü"]),
            "app_name": st.just("my-python-app"),
            "environment": st.sampled_from([None, "production", "", "prod-ü"]),
            "governance_profile": st.sampled_from(["default", "payments"]),
        }
    ),
    args=st.sampled_from([(), ("x\udcff",), (1, 2)]),
    correlation_id=st.one_of(st.none(), st.text(max_size=8)),
    with_exception=st.booleans(),
    reorder=st.booleans(),
)
def test_encoder_bytes_equal_encode_body_of_build_event(
    level: int,
    extras: Dict[str, Any],
    controls: Dict[str, Any],
    governance: Optional[Governance],
    message: Optional[Dict[str, Any]],
    arg_map: Optional[Dict[str, Any]],
    options: Dict[str, Any],
    args: Any,
    correlation_id: Optional[str],
    with_exception: bool,
    reorder: bool,
) -> None:
    """Any record, any front-end, any governance: the encoder writes the bytes build_event +
    msgpack wrote (dict messages, mapping args, loguru's ``extra``, dotted keys, lists)."""
    encoder = shared_encoder(options, governance)
    msg: Any = "user %s logged in" if len(args) == 1 else "hello %s %s" if args else "plain ✓"
    if message is not None:
        msg = message
    elif arg_map is not None:
        msg, args = "%(user)s %(email)s %(password)s %(n)s?", (arg_map,)
    record = make_record(
        msg,
        *args,
        level=level,
        extra={**extras, **controls},
        exc_info=_exc_info() if with_exception else None,
    )
    if reorder:  # an attribute set again moves to the end: not makeRecord's order any more
        record.__dict__["msg"] = record.__dict__.pop("msg")
    token = set_correlation_id(correlation_id)
    try:
        first = assert_encoder_bytes_equal_build_event(encoder, record, governance)
        second = assert_encoder_bytes_equal_build_event(encoder, record, governance)  # memoised
    finally:
        reset_correlation_id(token)
    assert first != second  # a new LogId per event, everything else the same
    assert len(first) == len(second)


@settings(max_examples=examples(300 if IN_CI else 100, fast=30), deadline=None)
@given(
    extras=special_extras,
    governance=st.sampled_from([ENCODER_GOVERNANCE, PATTERN_GOVERNANCE]),
    reorder=st.booleans(),
)
def test_encoder_bytes_equal_the_reference_for_governed_and_renamed_fields(
    extras: Dict[str, Any], governance: Governance, reorder: bool
) -> None:
    """Dense in what the fast path decides by itself: the flat-plan shortcut (governed keys
    holding nested dicts and lists), ``extra_`` renames and keys that collide as text."""
    encoder = shared_encoder({"tenant_id": "t", "app_name": "a"}, governance)
    record = make_record(extra=extras)
    if reorder:
        record.__dict__["msg"] = record.__dict__.pop("msg")
    assert_encoder_bytes_equal_build_event(encoder, record, governance)
    assert_encoder_bytes_equal_build_event(encoder, record, governance)  # memoised


@settings(max_examples=examples(200, fast=50), deadline=None)
@given(
    shapes=st.lists(
        st.dictionaries(
            st.sampled_from(["email", "password", "iban", "tenant_id", "level", "_p", "a", "b"]),
            st.sampled_from(["v", 1, {"email": "x"}, None]),
            max_size=4,
        ),
        min_size=2,
        max_size=10,
    ),
    governance=st.sampled_from([None, ENCODER_GOVERNANCE]),
)
def test_one_encoder_keeps_records_of_different_shapes_apart(
    shapes: List[Dict[str, Any]], governance: Optional[Governance]
) -> None:
    """Records whose attribute names share a tail or a set still get their own layout."""
    encoder = EventEncoder(tenant_id="t", app_name="a")
    for extras in shapes + shapes[::-1]:
        record = make_record(extra=extras)
        assert_encoder_bytes_equal_build_event(encoder, record, governance)
        record.__dict__["msg"] = record.__dict__.pop("msg")  # the same names, another order
        assert_encoder_bytes_equal_build_event(encoder, record, governance)


def test_records_whose_names_share_a_tail_get_their_own_layout() -> None:
    tail = {"a": 1, "b": 2, "c": 3}
    shapes = [tail, {"password": "p", **tail}, {"email": "e", **tail}, {"_p": 0, **tail}]
    shapes += [{"tenant_id": "t2", **tail}, {"level": "x", **tail}, {"user": {"email": 1}, **tail}]
    encoder = EventEncoder(tenant_id="t", app_name="a")
    for extras in shapes + shapes[::-1]:
        assert_encoder_bytes_equal_build_event(
            encoder, make_record(extra=extras), ENCODER_GOVERNANCE
        )


def test_encoder_takes_the_general_path_for_envelope_overrides_and_odd_records() -> None:
    """tenant_id/app_name/environment extras, makeLogRecord records and bad formats agree too."""
    encoder = EventEncoder(tenant_id="t", app_name="a", environment="prod")
    records = [
        make_record(extra={"tenant_id": "t2", "app_name": None, "environment": 7, "k": 1}),
        make_record(extra={"correlation_id": 42, "governance_relaxed": "yes"}),
        make_record("count=%d", "not-a-number"),
        logging.makeLogRecord({"msg": "m", "custom": 1, "taskName": "T"}),
        logging.makeLogRecord({"msg": "m", "levelno": "WARNING", "levelname": None}),
    ]
    for record in records:
        assert_encoder_bytes_equal_build_event(encoder, record, ENCODER_GOVERNANCE)
    event = msgpack.unpackb(encoder.encode(records[0], None), raw=False)
    assert (event["TenantId"], event["AppName"], event["Environment"]) == ("t2", "a", "7")


def test_encoder_applies_new_rules_to_the_next_record_after_a_reload(tmp_path: Path) -> None:
    """Layouts and packed Violations are kept per Governance: a reload is never served stale."""
    encoder = EventEncoder(tenant_id="t", app_name="a")
    redact = load_governance(GOLDEN / "contract_governance.json")
    flag_only = parse_governance(
        json.dumps(
            {
                "profiles": {
                    "default": {
                        "rules": [
                            {"ruleId": "X", "code": "C", "fields": ["email"], "severity": "S"}
                        ]
                    }
                }
            }
        ),
        path="<test>",
        profile="default",
    )
    for governance, email, rule in [
        (redact, REDACTED, "PII-001"),
        (flag_only, "a@b.c", "X"),
        (redact, REDACTED, "PII-001"),
        (None, "a@b.c", None),
    ]:
        for _ in range(2):
            body = assert_encoder_bytes_equal_build_event(
                encoder, make_record(extra={"email": "a@b.c"}), governance
            )
            event = msgpack.unpackb(body, raw=False)
            assert event["RawPayload"]["email"] == email
            assert [v["RuleId"] for v in event["Violations"]] == ([rule] if rule else [])


def test_packed_violations_of_a_layout_are_not_served_to_a_record_a_pattern_matched() -> None:
    """The encoder keeps a layout's packed Violations; a record of the same shape whose
    text a pattern matches has more violations, and gets them (either order)."""
    for texts in (["plain", "password=x", "plain"], ["password=x", "plain", "password=x"]):
        encoder = EventEncoder(tenant_id="t", app_name="a")
        for text in texts:
            record = make_record(extra={"email": "a@b.c", "note": text})
            body = assert_encoder_bytes_equal_build_event(encoder, record, PATTERN_GOVERNANCE)
            rules = [v["RuleId"] for v in msgpack.unpackb(body, raw=False)["Violations"]]
            assert rules == (["PII-001", "TXT-1"] if text != "plain" else ["PII-001"])


def test_encoder_memo_stays_bounded_with_ever_new_extra_names() -> None:
    encoder = EventEncoder(tenant_id="t", app_name="a")
    gov = load_governance(GOLDEN / "contract_governance.json")
    for i in range(_MAX_LAYOUTS + 50):
        assert_encoder_bytes_equal_build_event(encoder, make_record(extra={f"k{i}": i}), gov)
    assert len(encoder._state[1].by_names) == _MAX_LAYOUTS


def test_encoder_with_an_option_utf8_cannot_encode_fails_per_record_like_encode_body() -> None:
    encoder = EventEncoder(tenant_id="t\udcff", app_name="a")
    record = make_record()
    with pytest.raises(UnicodeEncodeError):
        encode_body(build_event(record, tenant_id="t\udcff", app_name="a"))
    with pytest.raises(UnicodeEncodeError):
        encoder.encode(record)


def test_encoder_rejects_invalid_options() -> None:
    with pytest.raises(SpoolConfigError):
        EventEncoder(tenant_id="", app_name="a")


def test_contract_example_through_the_encoder_equals_the_golden_event(
    contract_gov: Governance,
) -> None:
    encoder = EventEncoder(
        tenant_id="my-tenant", app_name="my-python-app", environment="production"
    )
    record = make_record(extra={"user_id": "12345", "email": "a@b.c"}, created=CONTRACT_CREATED)
    event = msgpack.unpackb(encoder.encode(record, contract_gov), raw=False)
    expected = golden("contract_event.json")
    event["LogId"] = expected["LogId"]
    assert event_to_json(event) == event_to_json(expected)


def test_log_ids_stay_unique_across_threads() -> None:
    ids: List[str] = []

    def draw() -> None:
        ids.extend(new_log_id() for _ in range(1000))

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == len(ids) == 4000
    assert all(UUID4.match(i) for i in ids)


FORK_CHILD = """
import os
from cerbistream_spool.event import new_log_id
new_log_id()  # the parent holds a partly used block
read_end, write_end = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(write_end, " ".join(new_log_id() for _ in range(64)).encode())
    os._exit(0)
os.close(write_end)
os.waitpid(pid, 0)
with os.fdopen(read_end, "rb") as f:
    child = set(f.read().decode().split())
parent = {new_log_id() for _ in range(64)}
print(len(child), len(child & parent))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_never_reuses_its_parents_log_ids() -> None:
    """Workers forked after the parent logged (gunicorn preload) must not repeat its LogIds."""
    # in a fresh single-threaded interpreter: forking this multi-threaded one warns on 3.12+
    out = subprocess.run(
        [sys.executable, "-c", FORK_CHILD],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    ).stdout
    assert out.split() == ["64", "0"]


def test_extras_with_non_string_keys_keep_the_record_and_every_value(spool_dir: str) -> None:
    from cerbistream_spool import SpoolHandler  # noqa: PLC0415
    from cerbistream_spool.spool import SpoolReader  # noqa: PLC0415

    handler = SpoolHandler(spool_dir, tenant_id="t", app_name="a", drain=False, fsync="never")
    logger = logging.getLogger("extras.keys")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning("odd keys", extra={1: "x", "ok": "v"})
        logger.warning("nested", extra={"d": {1: "a", "1": "b"}})
        assert handler.stats()["dropped"] == 0
    finally:
        logger.removeHandler(handler)
        handler.close()
    events = [r.value() for b in SpoolReader(spool_dir).batches() for r in b.events()]
    payloads = [e["RawPayload"] for e in events]
    assert [p["message"] for p in payloads] == ["odd keys", "nested"]
    assert payloads[0]["1"] == "x" and payloads[0]["ok"] == "v"
    assert payloads[1]["d"] == {"1~2": "a", "1": "b"}


@pytest.mark.parametrize("value", ["x", {"id": 1}])
def test_a_key_renamed_with_a_suffix_is_still_governed(
    contract_gov: Governance, value: Any
) -> None:
    """``b"email"`` beside ``"email"`` is stored as ``email~2`` and still matches as
    ``email``: Redact reaches it on the flat-plan and the nested path, encoder too."""
    record = make_record(extra={b"email": value, "email": "y"})
    encoder = EventEncoder(tenant_id="t", app_name="a")
    for _ in range(2):  # the second record through the encoder's memoised layout
        event = msgpack.unpackb(encoder.encode(record, contract_gov), raw=False)
        assert event["RawPayload"]["email~2"] == event["RawPayload"]["email"] == REDACTED
    assert build(record, governance=contract_gov)["RawPayload"]["email~2"] == REDACTED


def test_colliding_keys_keep_the_string_key_and_suffix_the_others() -> None:
    """A bytes key is its UTF-8 text (``b"1"`` is ``"1"``), so it collides like an int."""
    extra = {1: "int", "1": "str", "1~2": "taken", b"1": "bytes", 2: "two", b"\xff": "bad"}
    payload = build(make_record(extra=extra))["RawPayload"]
    assert {k: payload[k] for k in ("1", "1~2", "1~3", "1~4", "2", "\\xff")} == {
        "1": "str",
        "1~2": "taken",
        "1~3": "int",
        "1~4": "bytes",
        "2": "two",
        "\\xff": "bad",
    }
    nested = build(make_record(extra={"d": extra}))["RawPayload"]["d"]
    assert nested == {
        "1~3": "int",
        "1": "str",
        "1~2": "taken",
        "1~4": "bytes",
        "2": "two",
        "\\xff": "bad",
    }
    encoder = EventEncoder(tenant_id="my-tenant", app_name="my-python-app")
    body = msgpack.unpackb(encoder.encode(make_record(extra={"d": extra})), raw=False)
    assert body["RawPayload"]["d"] == nested
