"""Packaging: the metadata a user and PyPI see, and an sdist that carries its own tests.

The sdist is built from a clean copy of this checkout (no egg-info whose SOURCES.txt
setuptools would reuse, no venv) with the venv's setuptools (``--no-isolation``,
so no index is needed): it must hold every file of tests/, docs/, examples/, tools/
and constraints/ that the checkout has, and setuptools must not warn about the
project table (the SPDX ``license`` string replaced the deprecated table form).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import List, Set

import pytest

REPO = Path(__file__).resolve().parents[1]
CARRIED = ("tests", "docs", "examples", "tools", "constraints")
TOP_FILES = ("LICENSE", "CHANGELOG.md", "README.md", "cerbi_governance.json", "pyproject.toml")

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover — 3.9/3.10
    tomllib = pytest.importorskip("tomli")


def _checkout_files() -> Set[str]:
    out = set()
    for top in CARRIED:
        for path in (REPO / top).rglob("*"):
            rel = path.relative_to(REPO)
            if path.is_file() and not any(
                part == "__pycache__" or part.startswith(".") for part in rel.parts
            ):
                out.add(rel.as_posix())
    return out


def test_project_metadata_is_complete() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    assert "MIT License" in (REPO / "LICENSE").read_text("utf-8")
    assert "The cerbistream_spool authors" in (REPO / "LICENSE").read_text("utf-8")
    assert not any(c.startswith("License ::") for c in project["classifiers"])  # SPDX says it
    assert "Typing :: Typed" in project["classifiers"]
    assert project["optional-dependencies"]["testing"] == ["python-qpid-proton>=0.39"]
    assert "## [0.1.0] - Unreleased" in (REPO / "CHANGELOG.md").read_text("utf-8")


@pytest.mark.slow
def test_sdist_carries_what_its_tests_need(tmp_path: Path) -> None:
    pytest.importorskip("build")
    clone = tmp_path / "clone"
    shutil.copytree(
        REPO,
        clone,
        ignore=shutil.ignore_patterns(".*", "*.egg-info", "__pycache__"),
    )
    shutil.copytree(REPO / ".ci", clone / ".ci")
    out = tmp_path / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out)],
        cwd=clone,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    output = proc.stdout + proc.stderr
    assert "deprecated" not in output.lower(), output
    assert "scheme" not in output, output  # a project URL that is not a URL
    [sdist] = out.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        names: List[str] = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
    inside = set(names)
    missing = sorted((_checkout_files() | set(TOP_FILES) | {".ci/run"}) - inside)
    assert not missing, f"not in the sdist: {missing}"
    assert "cerbistream_spool/testing/peer.py" in inside
    assert "cerbistream_spool/spool/writer.py" in inside
    assert "cerbistream_spool/py.typed" in inside
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
