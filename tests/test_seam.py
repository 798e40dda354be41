"""Every file-system operation of the spool goes through the seam (spool/fs.py).

A raw ``os.open`` / ``os.fsync`` / ``mmap.mmap`` / ... outside it would be invisible to
fault injection (tests/test_faults.py) and to a recorder of crash states: none may
creep back. Modules not converted yet are listed, each with its reason, so the list
only shrinks.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List

import cerbistream_spool

PACKAGE = Path(cerbistream_spool.__file__).parent

RAW_CALL = re.compile(
    r"\b(?:os\.(?:open|close|read|pread|write|pwrite|lseek|fsync|fdatasync|ftruncate|truncate"
    r"|replace|rename|link|unlink|remove|mkdir|makedirs|rmdir|chmod|listdir|scandir)"
    r"|mmap\.mmap|fcntl\.flock|shutil\.(?:copyfile|copy|copy2|copytree|rmtree|move))\s*\("
)

SEAM = "spool/fs.py"
NOT_YET: Dict[str, str] = {  # module -> why it still makes raw calls
}
NOT_SPOOL: Dict[str, str] = {
    "transports/jsonl.py": "the JSONL transport's own output file, not a spool file",
    "cli.py": "points the process's stdout at /dev/null after a failed write, not a spool file",
}


def _raw_calls(path: Path) -> List[str]:
    found = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        code = line.split("#", 1)[0]
        if RAW_CALL.search(code):
            found.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    return found


def test_no_raw_file_system_call_outside_the_seam() -> None:
    exempt = {SEAM, *NOT_YET, *NOT_SPOOL}
    offenders = [
        hit
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).as_posix() not in exempt
        for hit in _raw_calls(path)
    ]
    assert offenders == [], "use cerbistream_spool.spool.fsio.current() instead:\n" + "\n".join(
        offenders
    )


def test_the_modules_not_yet_converted_still_need_their_exemption() -> None:
    """Once a listed module is converted (or gone), it leaves the list."""
    stale = [
        name for name in NOT_YET if not (PACKAGE / name).exists() or not _raw_calls(PACKAGE / name)
    ]
    assert stale == [], f"remove from NOT_YET: {stale}"


def test_the_pattern_sees_the_calls_it_forbids() -> None:
    for line in ("os.fsync(fd)", "x = os.open(p, f)", "mmap.mmap(fd, 0)", "fcntl.flock(fd, 1)"):
        assert RAW_CALL.search(line), line
    for line in ("current().fsync(fd)", "os.path.join(a, b)", "Buffer = mmap.mmap"):
        assert not RAW_CALL.search(line), line
