"""Every ```python and ```sh block of README.md and docs/*.md runs as written.

Blocks run in the order a reader meets them, each in a process of its own, with a
temporary directory standing in for the repository root after the README's quick
start: ``cerbi_governance.json`` is there and ``.venv`` is the virtualenv running
these tests (its ``bin`` is on ``PATH`` too, as in an activated venv). The README
runs first; each docs/*.md file then starts from a copy of what the README's blocks
left (``./spool``). Offline: ``CERBISTREAM_*`` variables are removed, and brokers are
the local AMQP peer the blocks start themselves.

A block that cannot run here says why, visibly, in the line before it::

    <!-- not-run: needs an Azure Service Bus namespace -->

Each of those is reported as a skipped test with its reason; there are few. A block
that needs a newer interpreter than the oldest supported says so the same way, and runs
where it can::

    <!-- python>=3.12 -->
Untagged blocks (``` alone: layouts, formats, output) are not code and are not run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUN_LANGS = {"python": "python", "py": "python", "sh": "sh", "bash": "sh", "shell": "sh"}
MAX_NOT_RUN = 8
BLOCK_TIMEOUT_S = 120

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<lang>[^\s`]*)[^`]*$")
_NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(?P<reason>.*?)\s*-->$")
_MIN_PYTHON = re.compile(r"^<!--\s*python>=(?P<major>\d+)\.(?P<minor>\d+)\s*-->$")


class Block(NamedTuple):
    """One fenced block: where it starts (1-based line of the fence), its language tag,
    its code, the not-run reason given in the line before it (None: it runs), and the
    oldest interpreter it runs on, given the same way."""

    path: str
    line: int
    lang: str
    code: str
    not_run: Optional[str]
    min_python: Tuple[int, int] = (3, 9)


def extract_blocks(text: str, path: str = "<doc>") -> List[Block]:
    """Fenced code blocks of a Markdown text, in order (CommonMark fences, no nesting)."""
    blocks: List[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group("fence"), m.group("lang").lower(), i
        body: List[str] = []
        i += 1
        while i < len(lines) and not (
            lines[i].strip().startswith(fence[0] * len(fence))
            and not lines[i].strip().strip(fence[0])
        ):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence (or the end of the text)
        prev = next((ln.strip() for ln in reversed(lines[:start]) if ln.strip()), "")
        marker = _NOT_RUN.match(prev)
        needs = _MIN_PYTHON.match(prev)
        blocks.append(
            Block(
                path,
                start + 1,
                lang,
                "\n".join(body) + "\n",
                marker.group("reason") if marker else None,
                (int(needs.group("major")), int(needs.group("minor"))) if needs else (3, 9),
            )
        )
    return blocks


def _doc_blocks(path: Path) -> List[Block]:
    return extract_blocks(path.read_text("utf-8"), path.relative_to(REPO).as_posix())


ALL_BLOCKS = [b for doc in DOCS for b in _doc_blocks(doc)]
RUNNABLE = [b for b in ALL_BLOCKS if b.lang in RUN_LANGS]
NOT_RUN = [b for b in RUNNABLE if b.not_run is not None]


def _env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERBISTREAM_")}
    env.pop("PYTHONPATH", None)  # what the docs import must be installed (or in the cwd)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    return env


def _repo_root_stand_in(where: Path) -> Path:
    where.mkdir(parents=True)
    shutil.copy(REPO / "cerbi_governance.json", where / "cerbi_governance.json")
    (where / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    return where


def run_block(block: Block, cwd: Path) -> Optional[str]:
    """Run one block in ``cwd``; None if it succeeded, else why it failed."""
    if RUN_LANGS[block.lang] == "python":
        argv = [sys.executable, "-c", block.code]
    else:
        argv = ["bash", "-e", "-o", "pipefail", "-c", block.code]
    try:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            env=_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"{block.path}:{block.line}: still running after {BLOCK_TIMEOUT_S} s"
    if proc.returncode != 0 or "Traceback" in proc.stderr:
        return (
            f"{block.path}:{block.line} ({block.lang} block) exited {proc.returncode} "
            f"in {cwd}\n--- code\n{block.code}--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"
            "(a block that cannot run offline says why in the line before it: "
            "<!-- not-run: reason -->)"
        )
    return None


def run_doc(path: Path, cwd: Path) -> List[str]:
    """Run every runnable block of ``path`` in order in ``cwd``; the failures."""
    failures = []
    for block in _doc_blocks(path):
        runs_here = sys.version_info[:2] >= block.min_python
        if block.lang in RUN_LANGS and block.not_run is None and runs_here:
            failure = run_block(block, cwd)
            if failure:
                failures.append(failure)
    return failures


@pytest.fixture(scope="session")
def after_readme(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stand-in repository root once the README's blocks ran (README failures fail
    test_readme_runs_as_written; a docs/*.md test then starts from what was left)."""
    cwd = _repo_root_stand_in(tmp_path_factory.mktemp("docs") / "readme")
    failures = run_doc(REPO / "README.md", cwd)
    (cwd.parent / "readme-failures.txt").write_text("\n\n".join(failures), "utf-8")
    return cwd


@pytest.mark.slow
def test_readme_runs_as_written(after_readme: Path) -> None:
    failures = (after_readme.parent / "readme-failures.txt").read_text("utf-8")
    assert not failures, failures
    assert (after_readme / "spool" / "lanes").is_dir(), "the README's examples write ./spool"


@pytest.mark.slow
@pytest.mark.parametrize(
    "doc", [d for d in DOCS if d.name != "README.md"], ids=lambda d: d.relative_to(REPO).as_posix()
)
def test_doc_runs_as_written(doc: Path, after_readme: Path, tmp_path: Path) -> None:
    cwd = tmp_path / "repo"
    shutil.copytree(after_readme, cwd, symlinks=True)
    failures = run_doc(doc, cwd)
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("block", NOT_RUN, ids=[f"{b.path}:{b.line}" for b in NOT_RUN] or None)
def test_block_marked_not_run(block: Block) -> None:
    """Reported, not run: the summary lists each one with its reason (pytest -ra)."""
    assert block.not_run, f"{block.path}:{block.line}: a not-run marker needs a reason"
    pytest.skip(f"{block.path}:{block.line} not run: {block.not_run}")


def test_not_run_blocks_are_few_and_every_marker_sits_on_a_block() -> None:
    assert len(NOT_RUN) <= MAX_NOT_RUN, [f"{b.path}:{b.line}: {b.not_run}" for b in NOT_RUN]
    for doc in DOCS:
        lines = doc.read_text("utf-8").splitlines()
        for n, line in enumerate(lines):
            if _NOT_RUN.match(line.strip()) or _MIN_PYTHON.match(line.strip()):
                after = next((ln for ln in lines[n + 1 :] if ln.strip()), "")
                assert _FENCE.match(after), f"{doc.name}:{n + 1}: a not-run marker not on a block"
    print(f"{len(RUNNABLE) - len(NOT_RUN)} blocks run, {len(NOT_RUN)} marked not-run:")
    for b in NOT_RUN:
        print(f"  {b.path}:{b.line}: {b.not_run}")


def test_the_readme_quick_start_is_what_ci_runs() -> None:
    """The README's first two commands are not run here (one is the suite itself, the
    other its own demo); .ci/run runs them, in a fresh venv on a fresh clone."""
    first, second = [b for b in RUNNABLE if b.path == "README.md"][:2]
    assert first.not_run and second.not_run
    assert first.code.strip() == (
        "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' "
        "&& .venv/bin/python -m tools.demo"
    )
    assert second.code.strip() == (
        "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' "
        "&& .venv/bin/python -m pytest -q"
    )
    ci = (REPO / ".ci" / "run").read_text("utf-8").splitlines()
    for command in (
        "python3 -m venv .venv",
        ".venv/bin/pip install -q -e '.[dev]'",
        ".venv/bin/python -m tools.demo",
    ):
        assert command in ci, f".ci/run does not run {command!r}"
    assert "suite .venv default" in ci  # "$dir/bin/python" -m pytest -q with dir=.venv
    assert '        "$dir/bin/python" -m pytest -q || rc=$?' in ci


def test_extractor_finds_tagged_blocks_markers_and_long_fences() -> None:
    text = (
        "intro\n\n```python\nprint(1)\n```\n\n<!-- not-run: needs Azure -->\n\n```sh\nexit 1\n```\n"
        "````md\n```python\nnot a block\n```\n````\n```\nlayout\n```\n"
    )
    blocks = extract_blocks(text)
    assert [(b.line, b.lang, b.not_run) for b in blocks] == [
        (3, "python", None),
        (9, "sh", "needs Azure"),
        (12, "md", None),
        (17, "", None),
    ]
    assert blocks[0].code == "print(1)\n"
    assert blocks[2].code == "```python\nnot a block\n```\n"
    assert [b.min_python for b in extract_blocks("<!-- python>=3.12 -->\n```python\nx\n```\n")] == [
        (3, 12)
    ]
