"""SpoolHandler: stdlib logging in, governed ScoringEventDtos on disk; never raises into the app."""

from __future__ import annotations

import errno
import io
import json
import logging
import logging.config
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest
from faulty_fs import FaultyFileSystem
from spoolkit import read_all, wait_until

from cerbistream_spool import GovernanceConfigError, SpoolConfigError, verify
from cerbistream_spool.diagnostics import Reporter
from cerbistream_spool.event import build_event
from cerbistream_spool.handler import SpoolHandler
from cerbistream_spool.spool import SpoolWriter, fsio
from cerbistream_spool.spool import writer as spool_writer
from cerbistream_spool.spool.lanes import LANES_DIR
from cerbistream_spool.spool.record import encode_body
from cerbistream_spool.spool.segments import SEGMENT_SUFFIX

MakeHandler = Callable[..., Tuple[SpoolHandler, logging.Logger]]
REPO = Path(__file__).resolve().parent.parent
RULES = {
    "profiles": {
        "default": {
            "rules": [
                {
                    "ruleId": "PII-001",
                    "code": "PII",
                    "fields": ["email", "user.email"],
                    "severity": "Warning",
                    "message": "PII field detected",
                    "action": "Redact",
                },
                {
                    "ruleId": "SEC-001",
                    "code": "Security",
                    "fields": ["password"],
                    "severity": "Critical",
                    "message": "Security field detected",
                    "action": "Block",
                },
            ]
        }
    }
}


def write_rules(path: Path, severity: str = "Warning") -> None:
    doc = json.loads(json.dumps(RULES))
    doc["profiles"]["default"]["rules"][0]["severity"] = severity
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules" / "cerbi_governance.json"
    path.parent.mkdir()
    write_rules(path)
    return path


def events(spool_dir: str) -> List[Dict[str, Any]]:
    return [r.value() for r in read_all(spool_dir) if r.kind == 1]


def spool_bytes(spool_dir: str) -> bytes:
    out = b""
    for root, _dirs, files in os.walk(os.path.join(spool_dir, LANES_DIR)):
        for name in files:
            out += Path(root, name).read_bytes()
    return out


def test_a_logged_record_becomes_a_contract_event_on_disk(
    spool_dir: str, rules: Path, make_handler: MakeHandler
) -> None:
    handler, logger = make_handler(
        spool_dir,
        tenant_id="my-tenant",
        app_name="my-python-app",
        environment="production",
        governance_config_path=str(rules),
        drain=False,
    )
    logger.info("User logged in", extra={"user_id": "12345", "email": "a@b.c"})
    handler.close()
    (event,) = events(spool_dir)
    assert list(event) == [
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
    assert event["Score"] is None and event["TenantId"] == "my-tenant"
    assert event["Violations"] == [
        {
            "RuleId": "PII-001",
            "Code": "PII",
            "Field": "email",
            "Severity": "Warning",
            "Message": "PII field detected",
        }
    ]
    assert event["RawPayload"]["email"] == "***REDACTED***"
    assert event["RawPayload"]["user_id"] == "12345"
    assert verify(spool_dir).valid


def test_the_spooled_body_is_encode_body_of_build_event_byte_for_byte(
    spool_dir: str, rules: Path, make_handler: MakeHandler
) -> None:
    """The handler's encoder writes what ``encode_body(build_event(...))`` would (LogId aside)."""
    options: Dict[str, Any] = {"tenant_id": "t", "app_name": "a", "environment": "prod"}
    handler, logger = make_handler(
        spool_dir, governance_config_path=str(rules), drain=False, **options
    )
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    extras: List[Dict[str, Any]] = [
        {"user_id": 5, "email": "u5@example.com", "request_id": "r-5"},
        {"password": "hunter2"},
        {"user": {"email": "x@y.z"}, "n": 1.5},
        {"tenant_id": "t2", "correlation_id": "c-1", "governance_relaxed": True},
        {},
    ]
    records = [
        logger.makeRecord(logger.name, level, "m.py", 1, "m %s", ("ü",), exc, "f", extra)
        for extra in extras
        for level, exc in ((logging.INFO, None), (logging.ERROR, exc_info))
    ]
    for record in records:
        handler.handle(record)
    handler.close()
    stored = [r for r in read_all(spool_dir) if r.kind == 1]
    assert len(stored) == len(records)
    for record, spooled in zip(records, stored):
        event = build_event(record, governance=handler.governance, **options)
        event["LogId"] = spooled.value()["LogId"]
        assert spooled.body == encode_body(event)


@pytest.mark.parametrize("mode", ["always", "interval", "never"])
def test_redact_and_block_keep_secrets_off_the_disk(
    spool_dir: str, rules: Path, mode: str, make_handler: MakeHandler
) -> None:
    handler, logger = make_handler(
        spool_dir,
        tenant_id="t",
        app_name="a",
        governance_config_path=str(rules),
        fsync=mode,
        drain=False,
    )
    logger.info("hello", extra={"user": {"Email": "nested-secret@example.com"}})
    logger.warning("pw %s", "message-secret", extra={"password": "hunter2-secret"})
    handler.flush()
    raw = spool_bytes(spool_dir)
    handler.close()
    raw += spool_bytes(spool_dir)
    for secret in (b"nested-secret@example.com", b"hunter2-secret", b"message-secret"):
        assert secret not in raw
    redacted, blocked = events(spool_dir)
    assert redacted["RawPayload"]["user"]["Email"] == "***REDACTED***"
    assert blocked["RawPayload"] == {
        "logger": blocked["RawPayload"]["logger"],
        "level": "WARNING",
        "blocked": True,
    }
    assert blocked["Violations"][0]["Severity"] == "Critical"


def test_severity_comes_from_the_file_and_hot_reload_applies_the_next_record(
    spool_dir: str, rules: Path, make_handler: MakeHandler
) -> None:
    stream = io.StringIO()
    handler, logger = make_handler(
        spool_dir,
        tenant_id="t",
        app_name="a",
        governance_config_path=str(rules),
        drain=False,
        reporter=Reporter(stream=stream),
    )
    logger.info("one", extra={"email": "x"})
    before = handler.governance.sha256
    write_rules(rules, severity="Sev-7")
    assert wait_until(lambda: handler.governance.sha256 != before, 10), "reload not seen"
    logger.info("two", extra={"email": "x"})
    rules.write_text("{ not json")
    rules.write_text("{ not json either")
    assert wait_until(lambda: "governance reload rejected" in stream.getvalue(), 10)
    time.sleep(0.3)  # give further events time to arrive: they must not be reported again
    logger.info("three", extra={"email": "x"})
    handler.close()
    severities = [e["Violations"][0]["Severity"] for e in events(spool_dir)]
    assert severities == ["Warning", "Sev-7", "Sev-7"]
    assert stream.getvalue().count("governance reload rejected") <= 2


def test_a_debug_log_file_beside_the_governance_file_does_not_feed_back(tmp_path: Path) -> None:
    """The watcher watches the governance file's directory. With the root logger at DEBUG
    and a log file in that directory, each line written is an inotify event that watchdog
    logs at DEBUG from the watcher's thread, which writes the next line: one record became
    thousands a second. watchdog's records from the watcher's own threads are dropped."""
    write_rules(tmp_path / "cerbi_governance.json")
    script = textwrap.dedent(
        """
        import logging, time
        from cerbistream_spool import SpoolHandler
        handler = SpoolHandler("./spool", tenant_id="t", app_name="a",
                               governance_config_path="cerbi_governance.json", drain=False)
        logging.basicConfig(level=logging.DEBUG,
                            handlers=[handler, logging.FileHandler("app.log")])
        logging.getLogger("app").info("one line")
        time.sleep(0.3)  # a feedback loop writes hundreds of lines in this time
        print(handler.stats()["accepted"])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = (tmp_path / "app.log").read_text().splitlines()
    assert "watchdog" not in "".join(lines), lines[:5]
    assert int(out.stdout) < 5


def test_construction_fails_early_on_bad_governance_and_options(spool_dir: str, tmp_path) -> None:
    with pytest.raises(GovernanceConfigError) as err:
        SpoolHandler(
            spool_dir,
            tenant_id="t",
            app_name="a",
            governance_config_path=str(tmp_path / "missing.json"),
            drain=False,
        )
    assert "missing.json" in str(err.value)
    with pytest.raises(SpoolConfigError):
        SpoolHandler(spool_dir, tenant_id="", app_name="a", drain=False)
    with pytest.raises(SpoolConfigError):
        SpoolHandler(spool_dir, tenant_id="t", app_name="a", fsync="sometimes", drain=False)


class Exploding:
    def __str__(self) -> str:
        raise RuntimeError("boom")

    def __repr__(self) -> str:
        raise RuntimeError("boom")


def test_emit_never_raises_and_counts_what_it_could_not_spool(
    spool_dir: str, make_handler: MakeHandler
) -> None:
    stream = io.StringIO()
    handler, logger = make_handler(
        spool_dir, tenant_id="t", app_name="a", drain=False, reporter=Reporter(stream=stream)
    )
    logger.info("bad %s %s", "too-few-args")  # noqa: PLE1206 — the point of the test
    logger.info("odd extra", extra={"thing": Exploding()})
    logger.info("fine")
    stats = handler.stats()
    handler.close()
    assert [e["RawPayload"]["message"] for e in events(spool_dir)][-1] == "fine"
    assert stats["accepted"] >= 2


def test_a_log_call_made_while_handling_a_record_does_not_recurse(
    spool_dir: str, make_handler: MakeHandler
) -> None:
    handler, logger = make_handler(spool_dir, tenant_id="t", app_name="a", drain=False)

    class Chatty:
        def __str__(self) -> str:
            logger.error("logged from inside emit")
            return "chatty"

    logger.info("outer", extra={"obj": Chatty()})
    stats = handler.stats()
    handler.close()
    assert [e["RawPayload"]["message"] for e in events(spool_dir)] == ["outer"]
    # not spooled, so counted and owed as a gap (only our own threads' records are
    # "suppressed"): the gap stands in the chain before the close record
    assert (stats["suppressed"], stats["dropped"], stats["accepted"]) == (0, 1, 2)
    [gap] = verify(spool_dir).gaps
    assert (gap["reason"], gap["count"]) == ("emit-error", 1)


def test_a_record_logged_from_a_signal_handler_inside_emit_stands_as_a_gap(
    spool_dir: str, make_handler: MakeHandler
) -> None:
    """A SIGALRM watchdog (or a SIGTERM "shutting down" line) lands while the main thread
    is inside emit: the handler cannot take its own locks again, so the record is
    dropped, counted and owed as a gap; nothing is lost from the count."""
    handler, logger = make_handler(spool_dir, tenant_id="t", app_name="a", drain=False)
    fired = {"n": 0}

    def on_alarm(signum: int, frame: Any) -> None:
        fired["n"] += 1
        logger.warning("from the signal handler")

    old = signal.signal(signal.SIGALRM, on_alarm)
    calls = 0
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
        for i in range(20000):
            logger.info("main %d", i)
            calls += 1
            if fired["n"] >= 50 and i >= 2000:
                break
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)
    handler.close()
    stats = handler.stats()
    total = calls + fired["n"]
    assert stats["suppressed"] == 0
    assert stats["accepted"] == total
    on_disk = len(events(spool_dir))
    gaps = sum(g["count"] for g in verify(spool_dir).gaps)
    assert on_disk + gaps == total  # every call is an event or counted in a gap
    assert gaps == stats["dropped"]


def test_records_logged_to_a_handler_that_dictconfig_closed_stand_as_a_gap(
    tmp_path: Path,
) -> None:
    """dictConfig again (a settings reload) closes the old handler while a thread still
    logs through it: those records are counted in the next handler's chain as a gap."""
    spool = str(tmp_path / "spool")
    config = {
        "version": 1,
        "handlers": {
            "spool": {
                "class": "cerbistream_spool.SpoolHandler",
                "spool_dir": spool,
                "tenant_id": "t",
                "app_name": "a",
                "drain": False,
            }
        },
        "loggers": {"reconf": {"handlers": ["spool"], "level": "INFO", "propagate": False}},
    }
    logging.config.dictConfig(config)
    old = logging.getLogger("reconf").handlers[0]
    logging.config.dictConfig(config)  # closes ``old``
    new = logging.getLogger("reconf").handlers[0]
    try:
        assert old is not new
        record = logging.LogRecord("reconf", logging.INFO, __file__, 1, "late", None, None)
        for _ in range(3):
            old.handle(record)  # what a thread that fetched the handler list earlier does
        logging.getLogger("reconf").info("after")
    finally:
        logging.getLogger("reconf").handlers.clear()
        new.close()
    assert old.stats()["dropped"] == 3
    assert [e["RawPayload"]["message"] for e in events(spool)] == ["after"]
    late = [g for g in verify(spool).gaps if "closed SpoolHandler" in g.get("detail", "")]
    assert [(g["reason"], g["count"]) for g in late] == [("write-error", 3)]


def test_dictconfig_builds_the_handler_with_class_and_factory(tmp_path: Path) -> None:
    for style in ("class", "()"):
        spool = str(tmp_path / style.strip("()") / "spool")
        logging.config.dictConfig(
            {
                "version": 1,
                "handlers": {
                    "spool": {
                        style: "cerbistream_spool.SpoolHandler",
                        "spool_dir": spool,
                        "tenant_id": "t",
                        "app_name": "a",
                        "drain": False,
                        "level": "INFO",
                    }
                },
                "loggers": {"dc": {"handlers": ["spool"], "level": "DEBUG", "propagate": False}},
            }
        )
        logging.getLogger("dc").debug("filtered out by the handler level")
        logging.getLogger("dc").info("via dictConfig", extra={"k": 1})
        logging.getLogger("dc").handlers[0].close()
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
        assert [e["RawPayload"]["message"] for e in events(spool)] == ["via dictConfig"]


def test_structlog_rendering_through_stdlib_reaches_the_spool(
    spool_dir: str, rules: Path, make_handler: MakeHandler
) -> None:
    structlog = pytest.importorskip("structlog")
    handler, std = make_handler(
        spool_dir, tenant_id="t", app_name="a", governance_config_path=str(rules), drain=False
    )
    structlog.configure(
        processors=[structlog.stdlib.render_to_log_kwargs],
        logger_factory=lambda *args: std,
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    try:
        structlog.get_logger().info("signed up", email="s@x.io", plan="pro")
    finally:
        structlog.reset_defaults()
    handler.close()
    (event,) = events(spool_dir)
    assert event["RawPayload"]["message"] == "signed up"
    assert event["RawPayload"]["plan"] == "pro"
    assert event["RawPayload"]["email"] == "***REDACTED***"


def test_close_releases_the_lane_and_flush_makes_everything_durable(
    spool_dir: str, make_handler: MakeHandler
) -> None:
    handler, logger = make_handler(
        spool_dir, tenant_id="t", app_name="a", fsync="never", drain=False
    )
    for i in range(10):
        logger.info("r%d", i)
    handler.flush()
    stats = handler.stats()
    assert stats["durable"] == stats["accepted"]
    assert stats["pending_records"] >= 10 and stats["oldest_pending_age_s"] is not None
    handler.close()
    with SpoolWriter(spool_dir) as writer:
        assert writer.lane == 0


def test_concurrent_emitters_share_group_commit(spool_dir: str, make_handler: MakeHandler) -> None:
    handler, logger = make_handler(
        spool_dir, tenant_id="t", app_name="a", fsync="always", drain=False
    )
    threads = [
        threading.Thread(target=lambda: [logger.info("x") for _ in range(50)]) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    handler.close()
    assert len(events(spool_dir)) == 200
    assert verify(spool_dir).valid


CHILD = textwrap.dedent(
    """
    import json, logging, os, resource, signal, sys
    from cerbistream_spool.handler import SpoolHandler
    spool, mode = sys.argv[1], sys.argv[2]
    if mode == "readonly":
        os.setgid(65534); os.setuid(65534)
    handler = SpoolHandler(spool, tenant_id="t", app_name="a", drain=False, fsync="never",
                           segment_max_bytes=65536)
    log = logging.getLogger("child"); log.addHandler(handler); log.propagate = False
    log.setLevel(logging.INFO)
    if mode == "full":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, hard))
    for i in range(400):
        log.info("record %d", i, extra={"pad": "x" * 200})
    full = handler.stats()
    if mode == "full":
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        for i in range(5):
            log.info("after %d", i)
    after = handler.stats()
    handler.close()
    print(json.dumps({"full": full, "after": after}))
    """
)


def run_child(spool_dir: str, mode: str) -> Dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, spool_dir, mode],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(REPO),
    )
    assert proc.returncode == 0, proc.stderr
    result: Dict[str, Any] = json.loads(proc.stdout)
    result["stderr"] = proc.stderr
    return result


def test_a_full_disk_drops_and_counts_and_writing_resumes(spool_dir: str) -> None:
    result = run_child(spool_dir, "full")
    assert result["full"]["dropped"] > 0
    assert result["stderr"].count("record dropped") == 1  # one rate-limited line
    messages = [e["RawPayload"]["message"] for e in events(spool_dir)]
    assert messages[-5:] == [f"after {i}" for i in range(5)]
    assert verify(spool_dir).valid


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to an unprivileged user")
def test_an_unwritable_spool_directory_does_not_stop_the_app(tmp_path: Path) -> None:
    spool = tmp_path / "locked"
    spool.mkdir(mode=0o700)
    os.chmod(tmp_path, 0o755)
    result = run_child(str(spool), "readonly")
    assert result["after"]["dropped"] == 400
    assert "cannot open spool" in result["stderr"]
    assert result["stderr"].count("cannot open spool") == 1


# ---------------------------------------------------------------------------
# stats()


def test_stats_count_events_only_and_an_idle_lane_has_no_pending_age(
    spool_dir: str, make_handler: MakeHandler
) -> None:
    """Open and close records are never counted, also across restarts of the app."""
    for _ in range(2):
        handler, _ = make_handler(spool_dir, tenant_id="t", app_name="a", drain=False)
        stats = handler.stats()
        handler.close()
        assert (stats["accepted"], stats["pending_records"], stats["pending_bytes"]) == (0, 0, 0)
        assert stats["oldest_pending_age_s"] is None


def test_oldest_pending_age_is_the_first_events_not_the_lanes_open_record(
    spool_dir: str, make_handler: MakeHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the writer's record clock runs 1.5 s behind while the lane opens: its open record
    # is 1.5 s old when the first event comes (no real sleep)
    behind = {"ns": 1_500_000_000}
    monkeypatch.setattr(spool_writer, "_time_ns", lambda: time.time_ns() - behind["ns"])
    handler, logger = make_handler(spool_dir, tenant_id="t", app_name="a", drain=False)
    behind["ns"] = 0
    logger.info("first")
    age = handler.stats()["oldest_pending_age_s"]
    assert age is not None
    assert age < 1.5


def test_stats_keep_their_last_values_after_close(
    spool_dir: str, make_handler: MakeHandler
) -> None:
    handler, logger = make_handler(spool_dir, tenant_id="t", app_name="a", drain=False)
    for i in range(3):
        logger.info("event %d", i)
    before = handler.stats()
    handler.close()
    after = handler.stats()
    assert after["accepted"] == after["pending_records"] == 3
    assert after["durable"] == 3
    assert after["lane"] == before["lane"] == 0
    assert after["pending_bytes"] > 0
    assert after["oldest_pending_age_s"] is not None
    assert after["governance_sha256"] == before["governance_sha256"]

    logger.info("after close")  # dropped and counted, the rest stays
    late = handler.stats()
    assert (late["accepted"], late["dropped"], late["pending_records"]) == (4, 1, 3)
    assert (
        late["accepted"]
        == late["delivered"] + late["pending_records"] + late["dropped"] + late["lost"]
    )


def test_last_error_clears_when_the_condition_ends_and_last_error_at_stays(
    spool_dir: str, rules: Path, make_handler: MakeHandler
) -> None:
    stream = io.StringIO()
    handler, _ = make_handler(
        spool_dir,
        tenant_id="t",
        app_name="a",
        governance_config_path=str(rules),
        drain=False,
        reporter=Reporter(stream=stream),
    )
    try:
        assert handler.stats()["last_error"] is None
        assert handler.stats()["last_error_at"] is None
        rules.write_text("{not json")  # a bad reload: the old rules stay
        assert wait_until(lambda: handler.stats()["last_error"] is not None, 10)
        failed = handler.stats()
        assert "governance reload rejected" in str(failed["last_error"])
        assert failed["last_error_at"] is not None

        write_rules(rules, severity="Error")  # fixed: the condition is over
        assert wait_until(lambda: handler.stats()["last_error"] is None, 10)
        assert handler.stats()["last_error_at"] == failed["last_error_at"]
    finally:
        handler.close()


def test_a_write_error_clears_once_a_record_is_spooled_again(
    spool_dir: str, make_handler: MakeHandler
) -> None:
    with fsio.use(FaultyFileSystem()) as faults:  # before the lane opens: it knows its paths
        handler, logger = make_handler(spool_dir, tenant_id="t", app_name="a", drain=False)
        faults.fail("write", "*" + SEGMENT_SUFFIX, errno.ENOSPC, times=-1)
        logger.info("lost to a full disk")
        assert "No space left" in str(handler.stats()["last_error"])
        faults.clear()
        logger.info("spooled")
    stats = handler.stats()
    handler.close()
    assert stats["last_error"] is None
    assert stats["last_error_at"] is not None
    assert (stats["dropped"], stats["pending_records"]) == (1, 1)


def test_stats_is_a_typed_dict_with_exactly_its_keys(
    spool_dir: str, make_handler: MakeHandler
) -> None:
    from cerbistream_spool import SpoolStats  # noqa: PLC0415

    handler, _ = make_handler(spool_dir, tenant_id="t", app_name="a", drain=False)
    live = handler.stats()
    handler.close()
    assert set(live) == set(SpoolStats.__annotations__)
    assert set(handler.stats()) == set(SpoolStats.__annotations__)


@pytest.mark.slow
def test_mypy_sees_the_keys_of_stats(tmp_path: Path) -> None:
    """A user's mypy strict run catches a mistyped key."""
    user = tmp_path / "user_app.py"
    user.write_text(
        textwrap.dedent(
            """
            from cerbistream_spool import SpoolHandler

            def pending(handler: SpoolHandler) -> int:
                return handler.stats()["pending_records"]

            def typo(handler: SpoolHandler) -> int:
                return handler.stats()["pending_record"]
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(user)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, "MYPYPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert done.returncode == 1, done.stdout
    errors = [ln for ln in done.stdout.splitlines() if "user_app.py:" in ln and "error:" in ln]
    assert errors, done.stdout
    assert all("user_app.py:8:" in ln for ln in errors), done.stdout  # line 5 is an int, not Any
    assert any('has no key "pending_record"' in ln for ln in errors), done.stdout


def test_policy_objects_are_accepted_and_group_commit_emits_outside_the_handler_lock(
    spool_dir: str, make_handler: Any
) -> None:
    """``fsync=GroupCommit()`` is asked, not compared with "always": a record is emitted
    while another thread holds the handler-wide lock; ``overflow=DropNewest()`` refuses
    instead of dropping the oldest."""
    from cerbistream_spool.spool.capacity import DropNewest  # noqa: PLC0415
    from cerbistream_spool.spool.commit import GroupCommit  # noqa: PLC0415

    handler, log = make_handler(
        spool_dir,
        tenant_id="t",
        app_name="a",
        drain=False,
        fsync=GroupCommit(),
        overflow=DropNewest(),
        max_spool_bytes=64 * 1024,
        segment_max_bytes=8192,
    )
    handler.acquire()
    try:
        thread = threading.Thread(target=log.info, args=("while the lock is held",))
        thread.start()
        thread.join(20)
        emitted_outside = not thread.is_alive()
    finally:
        handler.release()
        thread.join(20)
    assert emitted_outside, "the record waited for the handler-wide lock"
    stats = handler.stats()
    assert stats["accepted"] == 1 and stats["durable"] >= 1
    for i in range(400):
        log.info("fill %d %s", i, "x" * 400)
    stats = handler.stats()
    assert stats["dropped"] > 0 and stats["lost"] == 0, stats


SIGNAL_DURING_CALL = """
import logging, signal, sys, tempfile
from cerbistream_spool import SpoolHandler, verify
mode, call = sys.argv[1], sys.argv[2]
log = logging.getLogger("app"); log.propagate = False; log.setLevel(logging.INFO)
fired = [0]
def on_alarm(signum, frame):
    fired[0] += 1
    log.info("tick %d", fired[0])
signal.signal(signal.SIGALRM, on_alarm)
spool = tempfile.mkdtemp()
h = SpoolHandler(spool, tenant_id="t", app_name="a", fsync=mode, drain=False)
log.addHandler(h)
signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
for _ in range(2000):
    getattr(h, call)()
    if fired[0] >= 200:
        break
signal.setitimer(signal.ITIMER_REAL, 0, 0)
h.close()
st = h.stats()
report = verify(spool)
print(fired[0], st["accepted"], st["dropped"], sum(g["count"] for g in report.gaps), report.valid)
"""


@pytest.mark.parametrize("call", ["flush", "stats"])
def test_a_signal_handler_that_logs_during_flush_or_stats_never_deadlocks(call: str) -> None:
    """``flush``/``stats`` hold locks ``emit`` needs: a record logged from a signal handler
    landing there deadlocked the thread (fsync "always", the adversarial pass). It is
    counted and stands as a gap instead. A real process, so a deadlock is a timeout."""
    done = subprocess.run(
        [sys.executable, "-c", SIGNAL_DURING_CALL, "always", call],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    fired, accepted, dropped, gap_counts, valid = done.stdout.split()
    assert valid == "True"
    assert int(accepted) == int(fired) > 0
    assert int(gap_counts) == int(dropped)
