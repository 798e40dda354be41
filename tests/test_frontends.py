"""Governance sees every structured field, whatever front-end logged it (docs/GOVERNANCE.md).

Each test logs a secret through a real front-end into a real SpoolHandler, closes it, and
greps the bytes of every spool file for the secret; the Violations are read back too.
"""

from __future__ import annotations

import io
import json
import logging
import logging.handlers
import os
import pickle
import queue
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
import structlog
from spoolkit import read_all

from cerbistream_spool import CaptureContext
from cerbistream_spool.diagnostics import Reporter
from cerbistream_spool.governance import MAX_SCAN_CHARS, REDACTED
from cerbistream_spool.handler import SpoolHandler
from cerbistream_spool.spool.lanes import LANES_DIR

SECRET = "hunter2"  # a Block field (password) or a pattern match: the event is blocked
EMAIL = "bob@example.com"  # a Redact field: the value is replaced
RULES = {
    "profiles": {
        "default": {
            "rules": [
                {
                    "ruleId": "PII-001",
                    "code": "PII",
                    "fields": ["email", "user.email", "users.email"],
                    "severity": "Warning",
                    "message": "PII field detected",
                    "action": "Redact",
                },
                {
                    "ruleId": "SEC-001",
                    "code": "Security",
                    "fields": ["password", "user.password", "users.password"],
                    "severity": "Critical",
                    "action": "Block",
                },
                {
                    "ruleId": "SEC-002",
                    "code": "Security",
                    "patterns": [r"(?<=password=)[^&\s]+"],
                    "severity": "Error",
                    "action": "Redact",
                },
            ]
        }
    }
}


@pytest.fixture
def handler(spool_dir: str, tmp_path: Path) -> Iterator[SpoolHandler]:
    rules = tmp_path / "cerbi_governance.json"
    rules.write_text(json.dumps(RULES), encoding="utf-8")
    h = SpoolHandler(
        spool_dir,
        tenant_id="t",
        app_name="frontends",
        governance_config_path=str(rules),
        drain=False,
    )
    yield h
    h.close()


@pytest.fixture
def app_logger(handler: SpoolHandler) -> Iterator[logging.Logger]:
    logger = logging.getLogger("frontends.app")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(handler)
    yield logger
    logger.removeHandler(handler)


@pytest.fixture
def _structlog_reset() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def spooled(handler: SpoolHandler) -> List[Dict[str, Any]]:
    """Close the handler, assert no spool file holds the secrets, return the events."""
    handler.close()
    raw = b""
    for root, _dirs, files in os.walk(os.path.join(handler.spool_dir, LANES_DIR)):
        for name in files:
            raw += Path(root, name).read_bytes()
    assert raw, "nothing was spooled"
    assert SECRET.encode() not in raw
    assert EMAIL.encode() not in raw
    return [r.value() for r in read_all(handler.spool_dir) if r.kind == 1]


def rule_ids(event: Dict[str, Any]) -> List[str]:
    return [v["RuleId"] for v in event["Violations"]]


def test_structlog_processor_formatter_event_dict_is_governed(
    handler: SpoolHandler, app_logger: logging.Logger, _structlog_reset: None
) -> None:
    """structlog's wrap_for_formatter puts the event dict in record.msg: its keys are fields."""
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(processors=[structlog.processors.JSONRenderer()])
    )
    structlog.configure(
        processors=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    log = structlog.get_logger("frontends.app")
    log.info("login", email=EMAIL, user_id=7)
    log.bind(user_id=7).warning("reset", password=SECRET)
    first, second = spooled(handler)
    assert rule_ids(first) == ["PII-001"]
    payload = first["RawPayload"]
    assert payload["message"] == "login"
    assert payload["email"] == REDACTED and payload["user_id"] == 7
    assert payload["extra_level"] == "info"  # structlog's own key, kept beside ours
    assert rule_ids(second) == ["SEC-001"]
    assert second["RawPayload"] == {"logger": "frontends.app", "level": "WARNING", "blocked": True}


def test_structlog_render_to_log_kwargs_fields_arrive_as_extras(
    handler: SpoolHandler, app_logger: logging.Logger, _structlog_reset: None
) -> None:
    structlog.configure(
        processors=[structlog.stdlib.render_to_log_kwargs],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    log = structlog.get_logger("frontends.app")
    log.info("login", user={"email": EMAIL, "id": 7})
    log.info("reset", password=SECRET)
    first, second = spooled(handler)
    assert rule_ids(first) == ["PII-001"]
    assert first["RawPayload"]["user"] == {"email": REDACTED, "id": 7}
    assert first["RawPayload"]["message"] == "login"
    assert rule_ids(second) == ["SEC-001"] and second["RawPayload"]["blocked"] is True


def test_loguru_bound_fields_under_record_extra_are_governed(handler: SpoolHandler) -> None:
    """loguru hands a stdlib handler one attribute ``extra``: its entries are the fields."""
    loguru = pytest.importorskip("loguru")
    logger = loguru.logger
    sink = logger.add(handler, format="{message}", level="DEBUG")
    try:
        logger.bind(email=EMAIL, correlation_id="corr-1").info("login")
        logger.bind(user_id=7).info("reset", password=SECRET)
    finally:
        logger.remove(sink)
    first, second = spooled(handler)
    assert rule_ids(first) == ["PII-001"]
    assert first["CorrelationId"] == "corr-1"  # controls come from any source
    payload = first["RawPayload"]
    assert payload["message"] == "login" and payload["email"] == REDACTED
    assert "extra" not in payload
    assert rule_ids(second) == ["SEC-001"] and second["RawPayload"]["blocked"] is True


def test_a_dict_message_is_fields_and_its_event_key_the_message(
    handler: SpoolHandler, app_logger: logging.Logger
) -> None:
    app_logger.info({"event": "login", "email": EMAIL, b"note": "bytes key"})
    app_logger.info({"event": "reset", "password": SECRET})
    app_logger.info({b"password": SECRET})  # a bytes key is its UTF-8 text
    first, second, third = spooled(handler)
    assert rule_ids(first) == ["PII-001"]
    payload = first["RawPayload"]
    assert payload["message"] == "login"
    assert payload["email"] == REDACTED and payload["note"] == "bytes key"
    assert rule_ids(second) == ["SEC-001"] and rule_ids(third) == ["SEC-001"]
    assert second["RawPayload"]["blocked"] is True and third["RawPayload"]["blocked"] is True


def test_mapping_arguments_are_fields_and_the_message_is_rendered_redacted(
    handler: SpoolHandler, app_logger: logging.Logger
) -> None:
    app_logger.info("mail to %(email)s for %(user)s", {"email": EMAIL, "user": "bob"})
    app_logger.info("dump %s", {"password": SECRET})
    first, second = spooled(handler)
    assert first["RawPayload"]["message"] == f"mail to {REDACTED} for bob"
    assert first["RawPayload"]["email"] == REDACTED and rule_ids(first) == ["PII-001"]
    assert rule_ids(second) == ["SEC-001"] and second["RawPayload"]["blocked"] is True


def test_literal_dotted_keys_and_dicts_inside_lists_are_matched(
    handler: SpoolHandler, app_logger: logging.Logger
) -> None:
    """ECS-style ``user.email`` is the path user → email; a list's dicts are searched."""
    app_logger.info("ecs", extra={"user.email": EMAIL, "users": [{"email": EMAIL}, "x"]})
    app_logger.info("nested list", extra={"users": [[{"Email": EMAIL}], {"id": 1}]})
    app_logger.info("ecs block", extra={"user.password": SECRET})
    app_logger.info("list block", extra={"users": [{"id": 1}, {"password": SECRET}]})
    first, second, third, fourth = spooled(handler)
    assert [v["Field"] for v in first["Violations"]] == ["user.email", "users.email"]
    assert first["RawPayload"]["user.email"] == REDACTED
    assert first["RawPayload"]["users"] == [{"email": REDACTED}, "x"]
    assert second["RawPayload"]["users"] == [[{"Email": REDACTED}], {"id": 1}]
    assert [v["Field"] for v in third["Violations"]] == ["user.password"]
    assert [v["Field"] for v in fourth["Violations"]] == ["users.password"]
    assert third["RawPayload"]["blocked"] is True and fourth["RawPayload"]["blocked"] is True


def test_a_secret_in_the_text_of_an_access_log_line_is_redacted_by_a_pattern(
    handler: SpoolHandler, app_logger: logging.Logger
) -> None:
    app_logger.info("GET /reset?password=%s&next=/home 200", SECRET)
    app_logger.info("request", extra={"http": {"url": f"/login?password={SECRET}"}})
    first, second = spooled(handler)
    assert first["RawPayload"]["message"] == f"GET /reset?password={REDACTED}&next=/home 200"
    assert first["Violations"] == [
        {
            "RuleId": "SEC-002",
            "Code": "Security",
            "Field": "message",
            "Severity": "Error",
            "Message": "Field 'message' matches a pattern of rule SEC-002",
        }
    ]
    assert second["RawPayload"]["http"] == {"url": f"/login?password={REDACTED}"}
    assert [v["Field"] for v in second["Violations"]] == ["http.url"]


def test_a_secret_past_the_scan_bound_is_not_kept_when_no_pattern_matched_before_it(
    handler: SpoolHandler, app_logger: logging.Logger
) -> None:
    """The text beyond MAX_SCAN_CHARS is never scanned, so it must never be stored: the
    cut applies whether or not a pattern matched in the scanned part."""
    padding = "x" * MAX_SCAN_CHARS
    app_logger.info("%s password=%s", padding, SECRET)
    app_logger.info("upload", extra={"body": f"{padding} password={SECRET}"})
    first, second = spooled(handler)
    assert first["RawPayload"]["message"].endswith("more characters not scanned, removed]")
    assert second["RawPayload"]["body"].endswith("more characters not scanned, removed]")
    assert first["Violations"] == [] and second["Violations"] == []


@pytest.mark.parametrize("over_pickle", [False, True], ids=["queue", "pickled"])
def test_structured_fields_behind_a_queue_handler_are_governed(
    handler: SpoolHandler, _structlog_reset: None, over_pickle: bool
) -> None:
    """QueueHandler.prepare turns an event dict or mapping args into text, secrets included;
    CaptureContext keeps the fields (picklable, for a multiprocessing queue) for governance."""
    records: queue.Queue[logging.LogRecord] = queue.Queue()
    queue_handler = logging.handlers.QueueHandler(records)
    queue_handler.addFilter(CaptureContext())
    logger = logging.getLogger("frontends.queued")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.handlers = [queue_handler]
    structlog.configure(
        processors=[structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
    )
    structlog.get_logger("frontends.queued").info("login", email=EMAIL, user_id=7)
    logger.info({"event": "dict", "password": SECRET})
    logger.info("reset for %(email)s", {"email": EMAIL})
    logger.handlers = []
    while not records.empty():
        record = records.get_nowait()
        if over_pickle:
            record = pickle.loads(pickle.dumps(record))
        handler.handle(record)
    login, blocked, reset = spooled(handler)
    assert rule_ids(login) == ["PII-001"]
    assert login["RawPayload"]["message"] == "login"
    assert login["RawPayload"]["email"] == REDACTED
    assert rule_ids(blocked) == ["SEC-001"] and blocked["RawPayload"]["blocked"] is True
    assert reset["RawPayload"]["message"] == f"reset for {REDACTED}"


STALLING_RULES = {
    "profiles": {
        "default": {
            "rules": [
                {
                    "ruleId": "SEC-009",
                    "code": "Security",
                    "patterns": [r"a.*a.*x"],  # cubic backtracking, with re and regex
                    "severity": "Critical",
                    "action": "Redact",
                }
            ]
        }
    }
}


def test_a_pattern_scan_out_of_time_stores_the_text_redacted_and_reports_once(
    spool_dir: str, tmp_path: Path
) -> None:
    rules = tmp_path / "cerbi_governance.json"
    rules.write_text(json.dumps(STALLING_RULES), encoding="utf-8")
    stream = io.StringIO()
    handler = SpoolHandler(
        spool_dir,
        tenant_id="t",
        app_name="frontends",
        governance_config_path=str(rules),
        drain=False,
        reporter=Reporter(stream=stream),
    )
    logger = logging.getLogger("frontends.stall")
    logger.propagate = False
    logger.handlers = [handler]
    try:
        for _ in range(2):
            logger.warning("%s password=%s", "a" * 2000, SECRET)
    finally:
        logger.handlers = []
    events = spooled(handler)  # the secret is on no spool file
    assert [e["RawPayload"]["message"] for e in events] == [REDACTED, REDACTED]
    assert [(v["RuleId"], v["Field"], v["Severity"]) for v in events[0]["Violations"]] == [
        ("SEC-009", "message", "Critical")
    ]
    assert "the scan ran out of time" in events[0]["Violations"][0]["Message"]
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and "pattern scan ran out of time" in lines[0], lines


# patterns and texts that take re 3 to 17 s each (quadratic or worse retries)
STALLS = [
    (r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}", "a" * 65536),
    (r"\w+@\w+\.com", "a" * 65536),
    (r"(.*a){12}x", "a" * 28),
    (r"a.*a.*x", "a" * 2000),
]
STALL_APP = """
import json, logging, sys
from cerbistream_spool.handler import SpoolHandler
spool_dir, rules = sys.argv[1], sys.argv[2]
handler = SpoolHandler(spool_dir, tenant_id="t", app_name="stall",
                       governance_config_path=rules, drain=False)
logger = logging.getLogger("stall")
logger.propagate = False
logger.handlers = [handler]
for text in json.loads(sys.stdin.read()):
    logger.warning("%s password=hunter2", text)
handler.close()
"""


@pytest.mark.slow
def test_patterns_that_stall_re_end_and_no_secret_reaches_the_disk(
    spool_dir: str, tmp_path: Path
) -> None:
    """Each pattern on its text: re takes 43 s for the four, beyond the child's timeout.
    Each record comes back unmatched (text kept) or out of time (text replaced)."""
    rules = tmp_path / "cerbi_governance.json"
    rules.write_text(
        json.dumps(
            {
                "profiles": {
                    "default": {
                        "rules": [
                            *(
                                {
                                    "ruleId": f"P-{i}",
                                    "code": "Security",
                                    "patterns": [pattern],
                                    "severity": "Error",
                                    "action": "Redact",
                                }
                                for i, (pattern, _text) in enumerate(STALLS)
                            ),
                            {
                                "ruleId": "SEC-002",
                                "code": "Security",
                                "patterns": [r"(?<=password=)[^&\s]+"],
                                "severity": "Error",
                                "action": "Redact",
                            },
                        ]
                    }
                }
            }
        ),
        encoding="utf-8",
    )
    subprocess.run(
        [sys.executable, "-c", STALL_APP, spool_dir, str(rules)],
        input=json.dumps([text for _pattern, text in STALLS]),
        text=True,
        check=True,
        timeout=25,
    )
    raw = b"".join(
        Path(root, name).read_bytes()
        for root, _dirs, files in os.walk(os.path.join(spool_dir, LANES_DIR))
        for name in files
    )
    assert raw and SECRET.encode() not in raw
    events = [r.value() for r in read_all(spool_dir) if r.kind == 1]
    assert len(events) == len(STALLS)
    for (_pattern, text), event in zip(STALLS, events):
        message = event["RawPayload"]["message"]
        assert message in (REDACTED, f"{text} password={REDACTED}")
        out_of_time = [v for v in event["Violations"] if "ran out of time" in v["Message"]]
        assert bool(out_of_time) == (message == REDACTED)
