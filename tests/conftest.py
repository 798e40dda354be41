"""Shared fixtures: a fresh spool directory, handlers that are always closed, and the root
logger restored after each test."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterator, List, Tuple

import pytest

from cerbistream_spool.handler import SpoolHandler


@pytest.fixture
def spool_dir(tmp_path: Path) -> str:
    """A path for a spool directory that does not exist yet."""
    return str(tmp_path / "spool")


@pytest.fixture
def make_handler() -> Iterator[Callable[..., Tuple[SpoolHandler, logging.Logger]]]:
    """``make_handler(spool_dir, **options)`` → (a SpoolHandler, a logger feeding only it).

    Every handler made is closed at teardown, also when the test failed (``close()`` is
    idempotent, so a test may close it itself first).
    """
    made: List[SpoolHandler] = []

    def make(spool_dir: str, **options: Any) -> Tuple[SpoolHandler, logging.Logger]:
        handler = SpoolHandler(spool_dir, **options)
        made.append(handler)
        logger = logging.getLogger(f"app.{len(made)}.{id(handler)}")
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        logger.handlers = [handler]
        return handler, logger

    yield make
    for handler in made:
        handler.close()


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def pytest_configure(config: pytest.Config) -> None:
    """The fast tier (``-m "not slow"``) runs the property tests with smaller budgets."""
    import tiers  # noqa: PLC0415 - tests/ is on sys.path once pytest loaded this file

    tiers.FAST_TIER = "not slow" in (config.getoption("markexpr") or "")
