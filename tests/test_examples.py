"""Every recipe under examples/ runs as ``python examples/<name>.py`` and keeps the secret.

The convention each example follows (README "Recipes"): offline (``drain=False``),
spool directory ``./spool-example`` relative to the working directory, one record
carrying the secret ``hunter2`` in a field named ``password``, one summary line,
exit 0 within about 10 s. Each runs in a fresh temporary working directory.
The fast tier runs the stdlib and structlog recipes; the Django, FastAPI and loguru
ones spend 1-3 s importing those and are ``slow`` (CI runs every recipe).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.py"))
SECRET = b"hunter2"
FRAMEWORK_HEAVY = {"django_app", "fastapi_app", "loguru_app"}


def test_there_are_examples() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"django_app.py", "fastapi_app.py"} <= names


@pytest.mark.parametrize(
    "example",
    [
        pytest.param(p, id=p.stem, marks=[pytest.mark.slow] if p.stem in FRAMEWORK_HEAVY else [])
        for p in EXAMPLES
    ],
)
def test_example_runs_offline_and_the_secret_never_reaches_the_disk(
    example: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERBISTREAM_")}
    proc = subprocess.run(
        [sys.executable, str(example)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    assert proc.stdout.strip(), "an example prints a summary line"
    spool = tmp_path / "spool-example"
    segments = list(spool.glob("lanes/*/*.seg"))
    assert segments, f"no spool segment under {spool}"
    leaked = [p for p in spool.rglob("*") if p.is_file() and SECRET in p.read_bytes()]
    assert not leaked, f"{SECRET!r} reached the disk in {leaked}"
