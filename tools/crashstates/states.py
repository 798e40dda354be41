"""The crash-state model (docs/RELIABILITY.md, "The model") and its seeded sampler.

A crash after operation ``k`` (``ops[:k]`` issued) leaves:

- per file, every write and truncate before the file's last completed fsync, then
  a prefix of the later ones in issue order, the last of which may be torn at a
  byte or land as zeros (its range allocated, its data not written);
- every create, mkdir, rename, link, unlink and rmdir followed (before ``k``) by an
  fsync of the directory holding the entry (a rename: either directory; it is one
  journal transaction), plus a chosen set of the others: none, all, a prefix in
  issue order (a journal), or any subset.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Set, Tuple

from tools.crashstates.recorder import Op, Recording

__all__ = ["META_MODES", "CrashState", "build", "materialise", "sample_states"]

_META = frozenset({"create", "mkdir", "rename", "link", "unlink", "rmdir"})
META_MODES = ("none", "all", "prefix", "subset")
TEARS = ("whole", "torn", "zeros")


@dataclass(frozen=True)
class CrashState:
    """A crash after ``k`` operations and the choices the model left open."""

    k: int
    meta: Tuple[int, ...]  # indices of the unsynced metadata operations that persisted
    data: Tuple[Tuple[int, int, str, int], ...]  # (fid, unsynced ops kept, tear, tear at)

    def describe(self) -> str:
        """One line naming the state (for a failure report)."""
        return f"k={self.k} meta={list(self.meta)} data={list(self.data)}"


def _parents(op: Op) -> Tuple[str, ...]:
    if op.kind in ("rename", "link"):
        return (os.path.dirname(op.dst), os.path.dirname(op.path))
    return (os.path.dirname(op.path),)


def unsynced_meta(rec: Recording, k: int) -> Tuple[List[int], List[int]]:
    """(durable, open) indices of the metadata operations before ``k``."""
    synced_at: Dict[str, int] = {}
    for i in range(k - 1, -1, -1):
        op = rec.ops[i]
        if op.kind == "fsync_dir" and op.path not in synced_at:
            synced_at[op.path] = i
    durable: List[int] = []
    undecided: List[int] = []
    for i, op in enumerate(rec.ops[:k]):
        if op.kind not in _META:
            continue
        if op.kind == "link":  # the new name is the entry: only its directory persists it
            sure = synced_at.get(os.path.dirname(op.dst), -1) > i
        else:
            sure = any(synced_at.get(d, -1) > i for d in _parents(op))
        (durable if sure else undecided).append(i)
    return durable, undecided


def data_ops(rec: Recording, k: int) -> Dict[int, Tuple[List[Op], List[Op]]]:
    """fid -> (durable, unsynced) writes and truncates before ``k``."""
    per: Dict[int, List[Tuple[int, Op]]] = {}
    last_sync: Dict[int, int] = {}
    for i, op in enumerate(rec.ops[:k]):
        if op.kind in ("write", "trunc"):
            per.setdefault(op.fid, []).append((i, op))
        elif op.kind == "fsync":
            last_sync[op.fid] = i
    out = {}
    for fid, items in per.items():
        cut = last_sync.get(fid, -1)
        out[fid] = ([op for i, op in items if i < cut], [op for i, op in items if i > cut])
    return out


def _apply(content: bytearray, op: Op, tear: str = "whole", at: int = 0) -> None:
    if op.kind == "trunc":
        del content[op.offset :]
        return
    data = op.data
    if tear == "torn":
        data = data[:at]
    elif tear == "zeros":
        data = bytes(len(data))
    end = op.offset + len(data)
    if len(content) < op.offset:
        content.extend(bytes(op.offset - len(content)))
    content[op.offset : end] = data


def build(rec: Recording, state: CrashState) -> Tuple[Set[str], Dict[str, bytes]]:
    """The directories and files (path -> bytes) of ``state``."""
    durable, _ = unsynced_meta(rec, state.k)
    chosen = sorted(set(durable) | set(state.meta))
    dirs = set(rec.dirs)
    names: Dict[str, int] = dict(rec.files)
    for i in chosen:
        op = rec.ops[i]
        parent_ok = os.path.dirname(op.dst or op.path) in dirs
        if op.kind == "create" and parent_ok:
            names[op.path] = op.fid
        elif op.kind == "mkdir" and parent_ok:
            dirs.add(op.path)
        elif op.kind == "link" and op.path in names and parent_ok:
            names[op.dst] = names[op.path]
        elif op.kind == "unlink":
            names.pop(op.path, None)
        elif op.kind == "rmdir":
            _drop_tree(dirs, names, op.path)
        elif op.kind == "rename" and parent_ok:
            if op.path in names:
                names[op.dst] = names.pop(op.path)
            elif op.path in dirs:
                _drop_tree(dirs, names, op.dst)
                prefix = op.path + os.sep
                for d in [d for d in dirs if d == op.path or d.startswith(prefix)]:
                    dirs.discard(d)
                    dirs.add(op.dst + d[len(op.path) :])
                for p in [p for p in names if p.startswith(prefix)]:
                    names[op.dst + p[len(op.path) :]] = names.pop(p)
    ops = data_ops(rec, state.k)
    choice = {fid: (keep, tear, at) for fid, keep, tear, at in state.data}
    contents: Dict[int, bytes] = {}
    for fid in set(names.values()):
        content = bytearray(rec.contents.get(fid, b""))
        sure, open_ = ops.get(fid, ([], []))
        for op in sure:
            _apply(content, op)
        keep, tear, at = choice.get(fid, (len(open_), "whole", 0))
        for j, op in enumerate(open_[:keep]):
            _apply(content, op, tear if j == keep - 1 else "whole", at)
        contents[fid] = bytes(content)
    files = {p: contents[f] for p, f in names.items() if os.path.dirname(p) in dirs}
    return dirs, files


def _drop_tree(dirs: Set[str], names: Dict[str, int], top: str) -> None:
    prefix = top + os.sep
    for d in [d for d in dirs if d == top or d.startswith(prefix)]:
        dirs.discard(d)
    for p in [p for p in names if p.startswith(prefix)]:
        del names[p]


def digest(root: str, dirs: Set[str], files: Dict[str, bytes]) -> str:
    """A digest of a state's image, relative to ``root`` (equal images, equal digests)."""
    h = hashlib.sha256()
    for d in sorted(dirs):
        h.update(b"D" + os.path.relpath(d, root).encode() + b"\0")
    for p in sorted(files):
        h.update(b"F" + os.path.relpath(p, root).encode() + b"\0")
        h.update(hashlib.sha256(files[p]).digest())
    return h.hexdigest()


def materialise(root: str, target: str, dirs: Set[str], files: Dict[str, bytes]) -> None:
    """Write the image under ``target`` (``root`` in the recording maps to ``target``)."""
    for d in sorted(dirs, key=len):
        os.makedirs(os.path.join(target, os.path.relpath(d, root)), mode=0o700, exist_ok=True)
    for p, data in files.items():
        with open(os.path.join(target, os.path.relpath(p, root)), "wb") as f:
            f.write(data)


def _crash_points(rec: Recording) -> List[int]:
    """Every crash point; the ones just before and after a sync or rename twice over
    (CrashMonkey/ACE: the bugs cluster around fsync)."""
    n = len(rec.ops)
    points = list(range(n + 1))
    for i, op in enumerate(rec.ops):
        if op.kind in ("fsync", "fsync_dir", "rename", "link", "unlink"):
            points += [i, i + 1]
    return points


def sample_states(rec: Recording, seed: int, attempts: int) -> Iterator[CrashState]:
    """``attempts`` crash states drawn from a seeded RNG (the same recording and seed give
    the same states); every crash point with no open choice is drawn first, in order."""
    rng = random.Random(seed)
    points = _crash_points(rec)
    for k in range(len(rec.ops) + 1):
        if attempts <= 0:
            return
        attempts -= 1
        yield CrashState(k, (), ())  # the metadata that is sure, the data all written
    for _ in range(attempts):
        k = rng.choice(points)
        _, undecided = unsynced_meta(rec, k)
        mode = rng.choice(META_MODES)
        if mode == "none":
            meta: List[int] = []
        elif mode == "all":
            meta = undecided
        elif mode == "prefix":
            meta = undecided[: rng.randint(0, len(undecided))]
        else:
            meta = [i for i in undecided if rng.random() < 0.5]
        data = []
        for fid, (_sure, open_) in sorted(data_ops(rec, k).items()):
            if not open_:
                continue
            keep = rng.randint(0, len(open_))
            tear, at = "whole", 0
            if keep:
                last: Optional[Op] = open_[keep - 1]
                assert last is not None
                tear = rng.choice(TEARS) if last.kind == "write" else "whole"
                if tear == "torn":
                    at = rng.randrange(0, max(1, len(last.data)))
            data.append((fid, keep, tear, at))
        yield CrashState(k, tuple(meta), tuple(data))
