"""The losses ledger: gap records outlive the segments that held them (docs/FORMAT.md §11).

::

    SPOOL_DIR/losses/      0700
      ledger               0600, the current file
      ledger.1             0600, the file before the last rotation

A ledger file is frames in the record framing of spool/record.py (``u32 length |
payload | u32 crc32 | u32 length``, do not reorder); each payload is a msgpack map:

- frame 0, the **header**: ``{"format": "cerbistream-spool losses ledger", "version": 1,
  "created_ns", "carried": {reason: {"gaps", "records"}}}`` — the totals of every file
  before this one, so the counts survive a rotation even when its entries do not;
- every later frame, an **entry**: one gap record as it stood in its lane, ``{"lane",
  "seq", "ts_ns", "prev_hash", "hash", "keyed", "body", "recorded_ns"}`` (``body``: the
  record's msgpack body bytes, so its chain hash can be checked again).

The reader (spool/reader.py) appends the gaps of a delivered segment, and fsyncs,
before it writes the cursor that lets it unlink the segment (or removes a delivered
lane). A crash in between appends the same gap again: entries are deduplicated by
``(lane, seq, hash)`` when written and when read. When an append would take the file
past :data:`LEDGER_MAX_BYTES`, the file becomes ``ledger.1`` (replacing the one before)
and a new file starts whose header carries the totals. Readers never raise on file
contents: a damaged frame is a problem; a frame running past the end is the trace of an
append a crash cut short (its gaps are still in their lane) and the next append cuts it.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple, Union

import msgpack

from cerbistream_spool.spool.chain import HASH_SIZE
from cerbistream_spool.spool.fsio import (
    DIR_MODE,
    ForeignFileError,
    create_temp,
    fsync_dir,
    list_entries,
    read_regular,
    sweep_temp_files,
    temp_target,
    write_all,
)
from cerbistream_spool.spool.fsio import current as current_fs  # `current`: the ledger file
from cerbistream_spool.spool.markers import gap_fields
from cerbistream_spool.spool.record import (
    MAX_PAYLOAD,
    Record,
    ScanDamage,
    decode_body,
    encode_body,
    encode_frame,
    scan,
)

__all__ = [
    "LEDGER_FILE",
    "LEDGER_MAX_BYTES",
    "LOSSES_DIR",
    "PREVIOUS_FILE",
    "LedgerEntry",
    "LedgerProblem",
    "LedgerView",
    "ledger_foreign",
    "read_ledger",
    "record_gaps",
]

LOSSES_DIR = "losses"
LEDGER_FILE = "ledger"
PREVIOUS_FILE = "ledger.1"
LEDGER_MAX_BYTES = 1 << 20  # per file; two files at most
FORMAT_NAME = "cerbistream-spool losses ledger"
VERSION = 1
_READ_LIMIT = MAX_PAYLOAD + LEDGER_MAX_BYTES  # a file we write is never larger
_WRITE = os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)

Totals = Dict[str, Dict[str, int]]  # reason -> {"gaps": entries, "records": sum of counts}


class LedgerEntry(NamedTuple):
    """One gap record, recorded before its segment left the disk."""

    lane: int
    seq: int
    ts_ns: int
    prev_hash: bytes
    hash: bytes
    keyed: bool
    body: bytes
    recorded_ns: int

    @classmethod
    def of(cls, lane: int, record: Record, keyed: bool, recorded_ns: int = 0) -> LedgerEntry:
        """The entry for a gap ``record`` of ``lane`` (its segment keyed or not)."""
        return cls(
            lane, record.seq, record.ts_ns, record.prev_hash, record.hash, keyed, record.body,
            recorded_ns,
        )  # fmt: skip

    @property
    def key(self) -> Tuple[int, int, bytes]:
        """What makes two entries the same gap: a reused lane id starts a new chain."""
        return self.lane, self.seq, self.hash

    def gap(self) -> Optional[Dict[Any, Any]]:
        """The decoded gap body, None when it is not a map."""
        try:
            body = decode_body(self.body)
        except Exception:  # noqa: BLE001 — arbitrary bytes must not crash a reader
            return None
        return body if isinstance(body, dict) else None


class LedgerProblem(NamedTuple):
    """A damaged ledger file: ``file`` relative to the spool directory."""

    file: str
    offset: int
    kind: str  # "checksum" | "format"
    detail: str


@dataclass
class LedgerView:
    """What the ledger holds: entries (oldest first, deduplicated), totals, problems."""

    entries: List[LedgerEntry] = field(default_factory=list)
    totals: Totals = field(default_factory=dict)
    problems: List[LedgerProblem] = field(default_factory=list)


@dataclass
class _File:
    name: str
    exists: bool = False
    carried: Totals = field(default_factory=dict)
    entries: List[LedgerEntry] = field(default_factory=list)
    end: int = 0  # end of the last valid frame: appends go here
    size: int = 0
    damaged: bool = False  # bad header or frame: never append after it
    problems: List[LedgerProblem] = field(default_factory=list)

    def totals(self) -> Totals:
        return _tally(self.carried, _unique(self.entries))


# -- reading -------------------------------------------------------------------------------


def read_ledger(spool_dir: str) -> LedgerView:
    """Entries of ``ledger.1`` then ``ledger``, and the totals of every loss recorded."""
    ldir = os.path.join(spool_dir, LOSSES_DIR)
    previous, current = _parse(ldir, PREVIOUS_FILE), _parse(ldir, LEDGER_FILE)
    # no current file beside a previous one: a crash between the two renames of a rotation
    base = current if current.exists else previous
    return LedgerView(
        _unique(previous.entries + current.entries),
        base.totals(),
        previous.problems + current.problems,
    )


def ledger_foreign(spool_dir: str) -> List[str]:
    """Entries of ``losses/`` that are not ours (paths relative to ``spool_dir``), and
    ``losses`` itself when it is not a directory."""
    path = os.path.join(spool_dir, LOSSES_DIR)
    try:
        if not stat.S_ISDIR(current_fs().lstat(path).st_mode):
            return [LOSSES_DIR]
    except OSError:  # absent
        return []
    ours = (LEDGER_FILE, PREVIOUS_FILE)
    return sorted(
        f"{LOSSES_DIR}/{name}"
        for name, kind in list_entries(path)
        if kind != "file" or (name not in ours and temp_target(name) != LEDGER_FILE)
    )


def _parse(ldir: str, name: str) -> _File:
    found = _File(name)
    rel = f"{LOSSES_DIR}/{name}"
    try:
        buf = read_regular(os.path.join(ldir, name), _READ_LIMIT + 1)
    except FileNotFoundError:
        return found
    except OSError as exc:  # foreign (listed as such) or unreadable
        found.problems.append(LedgerProblem(rel, 0, "format", f"unreadable: {exc}"))
        found.exists = found.damaged = True
        return found
    found.exists, found.size = True, len(buf)
    if len(buf) > _READ_LIMIT:
        buf = buf[:_READ_LIMIT]
        detail = f"larger than {_READ_LIMIT} bytes; the rest is not read"
        found.problems.append(LedgerProblem(rel, _READ_LIMIT, "format", detail))
        found.damaged = True
    offset = 0
    for item in scan(buf, 0, decode=False, resync=False):
        if isinstance(item, ScanDamage):
            if item.kind == "torn" and not found.damaged:
                break  # an append cut short by a crash: its gaps are still in their lane
            kind = "format" if item.kind == "torn" else item.kind
            detail = f"{item.detail}; the {len(buf) - item.offset} bytes from here are not read"
            found.problems.append(LedgerProblem(rel, item.offset, kind, detail))
            found.damaged = True
            break
        value = _unpack(item.payload)
        if offset == 0:
            carried = _header(value)
            if isinstance(carried, str):
                found.problems.append(LedgerProblem(rel, 0, "format", carried))
                found.damaged = True
                break
            found.carried = carried
        else:
            entry = _entry(value)
            if isinstance(entry, str):
                found.problems.append(LedgerProblem(rel, offset, "format", entry))
            else:
                found.entries.append(entry)
        offset = found.end = item.end
    if not buf:
        found.problems.append(LedgerProblem(rel, 0, "format", "empty, no header"))
        found.damaged = True
    return found


def _unpack(payload: bytes) -> Any:
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception:  # noqa: BLE001 — arbitrary bytes: any decoder error is "malformed"
        return None


def _header(value: Any) -> Union[Totals, str]:
    if not isinstance(value, dict) or value.get("format") != FORMAT_NAME:
        return "not a losses ledger (no header frame)"
    if value.get("version") != VERSION:
        return f"unknown ledger version {value.get('version')!r}"
    carried = value.get("carried")
    if not isinstance(carried, dict):
        return "header has no carried totals"
    totals: Totals = {}
    for reason, counts in carried.items():
        if not isinstance(reason, str) or not isinstance(counts, dict):
            return "carried totals are malformed"
        gaps, records = _count(counts.get("gaps")), _count(counts.get("records"))
        if gaps is None or records is None:
            return f"carried totals of {reason!r} are not counts"
        totals[reason] = {"gaps": gaps, "records": records}
    return totals


def _count(value: Any) -> Optional[int]:
    """``value`` when it is a non-negative int64, else None."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    return None


def _entry(value: Any) -> Union[LedgerEntry, str]:
    if not isinstance(value, dict):
        return "entry is not a map"
    lane, seq, recorded = (_count(value.get(k)) for k in ("lane", "seq", "recorded_ns"))
    ts_ns, prev, digest = value.get("ts_ns"), value.get("prev_hash"), value.get("hash")
    keyed, body = value.get("keyed"), value.get("body")
    if lane is None or seq is None or recorded is None:
        return "entry lane, seq or recorded_ns is not a count"
    if not isinstance(ts_ns, int) or isinstance(ts_ns, bool) or not -(2**63) <= ts_ns < 2**63:
        return "entry ts_ns is not an int64"
    if not isinstance(prev, bytes) or not isinstance(digest, bytes):
        return "entry hashes are not bin"
    if len(prev) != HASH_SIZE or len(digest) != HASH_SIZE:
        return "entry hashes are not 32 bytes"
    if not isinstance(keyed, bool) or not isinstance(body, bytes):
        return "entry keyed or body has the wrong type"
    return LedgerEntry(lane, seq, ts_ns, prev, digest, keyed, body, recorded)


def _unique(entries: Iterable[LedgerEntry]) -> List[LedgerEntry]:
    seen: Set[Tuple[int, int, bytes]] = set()
    out = []
    for entry in entries:
        if entry.key not in seen:
            seen.add(entry.key)
            out.append(entry)
    return out


def _tally(carried: Totals, entries: Iterable[LedgerEntry]) -> Totals:
    totals = {reason: dict(counts) for reason, counts in carried.items()}
    for entry in entries:
        gap = gap_fields(entry.gap() or {})
        reason = gap.get("reason")
        count = _count(gap.get("count"))
        slot = totals.setdefault(reason if isinstance(reason, str) else "unknown", {})
        slot["gaps"] = slot.get("gaps", 0) + 1
        slot["records"] = slot.get("records", 0) + (count or 0)
    return totals


# -- writing -------------------------------------------------------------------------------


def record_gaps(
    spool_dir: str, entries: Sequence[LedgerEntry], *, max_bytes: int = LEDGER_MAX_BYTES
) -> int:
    """Append the entries not yet recorded, durably; returns how many were new.

    Raises ``OSError`` (a full disk, a foreign ``losses`` entry, ...): then nothing of
    this call counts as recorded, and the caller keeps the gaps where they are.
    """
    ldir = os.path.join(spool_dir, LOSSES_DIR)
    _ensure_own_dir(ldir)
    sweep_temp_files(ldir)
    previous, current = _parse(ldir, PREVIOUS_FILE), _parse(ldir, LEDGER_FILE)
    seen = {e.key for e in previous.entries + current.entries}
    now = time.time_ns()
    fresh: List[LedgerEntry] = []
    for entry in entries:
        if entry.key not in seen:
            seen.add(entry.key)
            fresh.append(entry._replace(recorded_ns=entry.recorded_ns or now))
    frames = [encode_frame(_pack_entry(e)) for e in fresh]
    done = 0
    if frames and current.exists and not current.damaged:
        take = _fitting(current.end, frames, max_bytes, at_least_one=current.end == 0)
        if take:
            _append(os.path.join(ldir, LEDGER_FILE), current, b"".join(frames[:take]))
            current.entries += fresh[:take]
            done = take
    base = current if current.exists else previous  # no current: a rotation a crash cut short
    carried, retire = base.totals(), current.exists
    while done < len(frames):
        header = encode_frame(_pack_header(carried, now))
        take = _fitting(len(header), frames[done:], max_bytes, at_least_one=True)
        _rotate(ldir, header + b"".join(frames[done : done + take]), retire=retire)
        carried = _tally(carried, fresh[done : done + take])
        done, retire = done + take, True
    return len(fresh)


def _fitting(start: int, frames: List[bytes], max_bytes: int, *, at_least_one: bool) -> int:
    """How many of ``frames`` fit after ``start`` bytes of a file capped at ``max_bytes``."""
    size, take = start, 0
    for frame in frames:
        if size + len(frame) > max_bytes and not (at_least_one and take == 0):
            break
        size += len(frame)
        take += 1
    return take


def _ensure_own_dir(path: str) -> None:
    """``losses/`` as a real directory (never through a link), created 0700 if missing."""
    fs = current_fs()
    try:
        info = fs.lstat(path)
    except FileNotFoundError:
        try:
            fs.mkdir(path, DIR_MODE)
        except FileExistsError:
            pass
        else:
            fsync_dir(os.path.dirname(os.path.abspath(path)))
        info = fs.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise ForeignFileError(0, "not a directory (foreign entry, left alone)", path)


def _append(path: str, current: _File, data: bytes) -> None:
    """Write ``data`` at the end of the valid frames (cutting a torn tail), then fsync."""
    fs = current_fs()
    fd = fs.open(path, _WRITE)
    try:
        if not stat.S_ISREG(fs.fstat(fd).st_mode):
            raise ForeignFileError(0, "not a regular file", path)
        if current.size != current.end:
            fs.ftruncate(fd, current.end)  # a torn append left by a crash
        fs.lseek(fd, current.end, os.SEEK_SET)
        try:
            write_all(fd, data)
            fs.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                fs.ftruncate(fd, current.end)  # leave no torn frame behind
            raise
    finally:
        fs.close(fd)


def _rotate(ldir: str, data: bytes, *, retire: bool) -> None:
    """A new current file holding ``data``: temp, fsync, (ledger → ledger.1), rename, fsync
    dir. A foreign ``ledger`` or ``ledger.1`` is never replaced."""
    target, previous = os.path.join(ldir, LEDGER_FILE), os.path.join(ldir, PREVIOUS_FILE)
    fs = current_fs()
    for path in (target, previous):
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISREG(fs.lstat(path).st_mode):
                raise ForeignFileError(0, "not a regular file (foreign entry, left alone)", path)
    tmp, fd = create_temp(target)
    try:
        try:
            write_all(fd, data)
            fs.fsync(fd)
        finally:
            fs.close(fd)
        if retire:
            with contextlib.suppress(FileNotFoundError):
                fs.replace(target, previous)
        fs.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.unlink(tmp)
        raise
    fsync_dir(ldir)


def _pack_header(carried: Totals, now: int) -> bytes:
    doc = {"format": FORMAT_NAME, "version": VERSION, "created_ns": now, "carried": carried}
    return encode_body(doc)


def _pack_entry(entry: LedgerEntry) -> bytes:
    return encode_body(entry._asdict())
