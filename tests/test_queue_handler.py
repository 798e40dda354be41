"""A SpoolHandler behind the stdlib's QueueHandler / QueueListener.

The listener thread cannot see the app thread's correlation id (a contextvar),
and ``QueueHandler.prepare`` formats the message into ``msg`` and clears
``exc_info``. ``CaptureContext`` on the queue handler keeps all three: the event
in the spool is the one a directly attached handler would have written.
"""

from __future__ import annotations

import logging
import logging.config
import logging.handlers
import os
import pickle
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from spoolkit import read_all

from cerbistream_spool import CaptureContext, SpoolHandler, set_correlation_id
from cerbistream_spool.context import reset_correlation_id

Pipeline = Tuple[logging.Logger, SpoolHandler, logging.handlers.QueueListener]


def events(spool_dir: str) -> List[Dict[str, Any]]:
    return [r.value() for r in read_all(spool_dir) if r.kind == 1]


@pytest.fixture
def pipeline(spool_dir: str) -> Iterator[Any]:
    """``pipeline(capture=True)`` → (logger, spool handler, started listener); all closed after."""
    made: List[Tuple[logging.handlers.QueueListener, SpoolHandler]] = []

    def make(capture: bool = True) -> Pipeline:
        spool = SpoolHandler(spool_dir, tenant_id="t", app_name="a", drain=False)
        q: queue.Queue[logging.LogRecord] = queue.Queue()
        queue_handler = logging.handlers.QueueHandler(q)
        if capture:
            queue_handler.addFilter(CaptureContext())
        listener = logging.handlers.QueueListener(q, spool)
        listener.start()
        made.append((listener, spool))
        logger = logging.getLogger(f"queued.{id(spool)}")
        logger.propagate = False
        logger.handlers = [queue_handler]
        logger.setLevel(logging.INFO)
        return logger, spool, listener

    yield make
    for listener, spool in made:
        if listener._thread is not None:  # stop() twice fails on 3.9
            listener.stop()
        spool.close()


def _log_failure_in_a_request(logger: logging.Logger, request_id: str) -> None:
    """What a web app does: a correlation id per request, an exception logged in it."""
    token = set_correlation_id(request_id)
    try:
        try:
            raise ValueError("card declined")
        except ValueError:
            logger.exception("payment %s failed", "p-7", extra={"order_id": "o-1"})
    finally:
        reset_correlation_id(token)


def test_capture_context_keeps_correlation_id_message_and_exception_across_the_queue(
    pipeline: Any, spool_dir: str
) -> None:
    logger, spool, listener = pipeline()
    worker = threading.Thread(target=_log_failure_in_a_request, args=(logger, "req-42"))
    worker.start()
    worker.join()
    listener.stop()
    spool.close()

    [event] = events(spool_dir)
    assert event["CorrelationId"] == "req-42"
    payload = event["RawPayload"]
    assert payload["message"] == "payment p-7 failed"  # not the traceback-suffixed text
    assert payload["order_id"] == "o-1"
    assert payload["exception"]["type"] == "ValueError"
    assert payload["exception"]["message"] == "card declined"
    assert "Traceback (most recent call last)" in payload["exception"]["traceback"]
    assert "_cerbistream_captured" not in payload  # never an extra


def test_without_capture_context_the_listener_thread_loses_them(
    pipeline: Any, spool_dir: str
) -> None:
    """The stdlib behaviour CaptureContext exists for (documented in docs/OPERATIONS.md)."""
    logger, spool, listener = pipeline(capture=False)
    _log_failure_in_a_request(logger, "req-43")
    listener.stop()
    spool.close()

    [event] = events(spool_dir)
    assert event["CorrelationId"] is None
    assert "exception" not in event["RawPayload"]
    assert event["RawPayload"]["message"].startswith("payment p-7 failed\nTraceback")


def test_an_extra_correlation_id_still_wins_over_the_captured_one(
    pipeline: Any, spool_dir: str
) -> None:
    logger, spool, listener = pipeline()
    token = set_correlation_id("from-context")
    try:
        logger.info("explicit", extra={"correlation_id": "from-extra"})
        logger.info("implicit")
    finally:
        reset_correlation_id(token)
    listener.stop()
    spool.close()
    assert [e["CorrelationId"] for e in events(spool_dir)] == ["from-extra", "from-context"]


def test_a_prepared_record_pickles_with_what_was_captured(spool_dir: str) -> None:
    """A multiprocessing queue pickles the prepared record: the capture goes along."""
    queue_handler = logging.handlers.QueueHandler(queue.Queue())
    queue_handler.addFilter(CaptureContext())
    logger = logging.getLogger("pickled")
    token = set_correlation_id("req-mp")
    try:
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            record = logger.makeRecord(
                "pickled", logging.ERROR, __file__, 1, "div %d", (1,), sys.exc_info()
            )
        assert queue_handler.filter(record)  # on the app thread, in its context
    finally:
        reset_correlation_id(token)
    shipped = pickle.loads(pickle.dumps(queue_handler.prepare(record)))

    spool = SpoolHandler(spool_dir, tenant_id="t", app_name="a", drain=False)
    spool.handle(shipped)
    spool.close()
    [event] = events(spool_dir)
    assert event["CorrelationId"] == "req-mp"
    assert event["RawPayload"]["message"] == "div 1"
    assert event["RawPayload"]["exception"]["type"] == "ZeroDivisionError"


@pytest.mark.skipif(sys.version_info < (3, 12), reason="dictConfig 'queue' handlers: 3.12+")
def test_dictconfig_queue_handler_with_capture_context(spool_dir: str) -> None:
    """The README/OPERATIONS dictConfig recipe, as written there."""
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "filters": {"capture": {"()": "cerbistream_spool.CaptureContext"}},
            "handlers": {
                "spool": {
                    "class": "cerbistream_spool.SpoolHandler",
                    "spool_dir": spool_dir,
                    "tenant_id": "t",
                    "app_name": "a",
                    "drain": False,
                },
                "queue": {
                    "class": "logging.handlers.QueueHandler",
                    "handlers": ["spool"],
                    "filters": ["capture"],
                },
            },
            "root": {"handlers": ["queue"], "level": "INFO"},
        }
    )
    queue_handler: Any = logging.getHandlerByName("queue")  # type: ignore[attr-defined]
    spool: Any = logging.getHandlerByName("spool")  # type: ignore[attr-defined]
    queue_handler.listener.start()
    try:
        worker = threading.Thread(
            target=_log_failure_in_a_request, args=(logging.getLogger("app"), "req-dict")
        )
        worker.start()
        worker.join()
    finally:
        queue_handler.listener.stop()
        logging.getLogger().removeHandler(queue_handler)
        spool.close()
    [event] = events(spool_dir)
    assert event["CorrelationId"] == "req-dict"
    assert event["RawPayload"]["exception"]["type"] == "ValueError"
    assert event["RawPayload"]["message"] == "payment p-7 failed"


def test_examples_queue_app_runs_as_documented(tmp_path: Path) -> None:
    """``python examples/queue_app.py`` from any directory: one line, exit 0, spooled there."""
    script = Path(__file__).resolve().parent.parent / "examples" / "queue_app.py"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERBISTREAM_")}
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    assert "CorrelationId req-42" in line
    assert "exception ValueError" in line
    [event] = events(str(tmp_path / "spool-example"))
    assert event["RawPayload"]["order_id"] == "o-1001"
