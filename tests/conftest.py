"""Shared fixtures: a fresh spool directory and the root logger restored after each test."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import pytest


@pytest.fixture
def spool_dir(tmp_path: Path) -> str:
    """A path for a spool directory that does not exist yet."""
    return str(tmp_path / "spool")


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
