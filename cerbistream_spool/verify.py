"""verify(spool_dir) → VerifyReport: checks exactly what docs/FORMAT.md §9 lists.

Framing and checksums, sequence continuity, chain links within and across
segments, HMAC signatures when a key is given ("unchecked" otherwise), the
cursor pointing at a real record, and the clean-close marker against the
actual tail. Read-only; never raises on file contents. The CLI only prints
the report.

The expected state after a crash (a lane without a live writer that ends
without a close record, perhaps with a torn last frame or a segment file cut
short before its header) is a :class:`Notice` (``unclean-close``), not a
problem: ``valid`` stays True. With a key, every segment must be keyed and
check under it. Gap records that name another lane (``lane``) explain holes in
that lane.

Gap records of delivered segments live on in the losses ledger (spool/losses.py):
they are listed with the lane's own (``source: "ledger"``), their hashes checked
again, and they explain holes like in-lane gaps — only in segments created before
the gap was written, so the gaps of a removed lane never explain holes of a new
chain that reuses its id. A damaged ledger frame is a problem naming the file.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Set, Tuple

from cerbistream_spool.spool.chain import GENESIS, Chain
from cerbistream_spool.spool.cursor import Cursor, read_cursor
from cerbistream_spool.spool.fsio import is_dir, list_entries, read_regular
from cerbistream_spool.spool.lanes import (
    QUARANTINE_DIR,
    foreign_entries,
    lane_dir,
    lane_is_live,
    list_lanes,
)
from cerbistream_spool.spool.losses import LedgerEntry, read_ledger
from cerbistream_spool.spool.markers import GapReason, gap_fields
from cerbistream_spool.spool.record import (
    Kind,
    Record,
    ScanBudget,
    ScanDamage,
    canonical_bytes,
    decode_body,
    scan,
)
from cerbistream_spool.spool.segments import HEADER_SIZE, decode_header, list_segments

__all__ = ["NOTICE_KINDS", "PROBLEM_KINDS", "Notice", "Problem", "VerifyReport", "verify"]

PROBLEM_KINDS = (
    "checksum",
    "chain",
    "truncated-tail",
    "missing-segment",
    "cursor",
    "signature",
    "format",
)
NOTICE_KINDS = ("unclean-close",)
_MAX_PROBLEMS = 10_000
_VANISHED_RETRIES = 5


@dataclass
class Problem:
    """One finding, with where it was found (docs/CONTRACT.md §5)."""

    lane: int
    segment: str
    offset: int
    seq: Optional[int]
    kind: str
    detail: str


@dataclass
class Notice(Problem):
    """An expected state worth knowing (a crash), not damage; ``seq``/``ts_ns``: the lane's
    last complete record."""

    ts_ns: Optional[int] = None


@dataclass
class VerifyReport:
    """What :func:`verify` found; ``valid`` is True when ``problems`` is empty."""

    records: int = 0
    segments: int = 0
    pending: int = 0
    problems: List[Problem] = field(default_factory=list)
    signatures: str = "none"  # none | checked | unchecked (keyed chain, no key given)
    lanes: List[Dict[str, Any]] = field(default_factory=list)
    quarantined: List[str] = field(default_factory=list)
    gaps: List[Dict[str, Any]] = field(default_factory=list)
    notices: List[Notice] = field(default_factory=list)
    foreign: List[str] = field(default_factory=list)  # entries left alone, not lane/segment/cursor

    @property
    def valid(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems

    def to_dict(self) -> Dict[str, Any]:
        """The ``verify --json`` object."""
        return {
            "valid": self.valid,
            "records": self.records,
            "segments": self.segments,
            "pending": self.pending,
            "problems": [asdict(p) for p in self.problems],
            "signatures": self.signatures,
            "lanes": self.lanes,
            "quarantined": self.quarantined,
            "gaps": self.gaps,
            "notices": [asdict(n) for n in self.notices],
            "foreign": self.foreign,
        }


def verify(spool_dir: str, key: Optional[bytes] = None) -> VerifyReport:
    """Check every lane of ``spool_dir``; see the module docstring."""
    report = VerifyReport()
    if not is_dir(spool_dir):
        report.problems.append(
            Problem(-1, "", 0, None, "format", f"{spool_dir} is not a directory")
        )
        return report
    covered: Dict[int, List[Tuple[int, int]]] = {}
    in_lanes: Set[Tuple[int, int, bytes]] = set()  # (lane, seq, hash) of gap records on disk
    checks = [
        _check_lane(spool_dir, lane, key, report, covered, in_lanes)
        for lane in list_lanes(spool_dir)
    ]
    recorded = _check_ledger(spool_dir, key, report, in_lanes)
    for check in checks:  # a gap in any lane may explain a hole (a drainer's corruption gap)
        check.report_holes(covered.get(check.lane, []), recorded.get(check.lane, []))
    qdir = os.path.join(spool_dir, QUARANTINE_DIR)
    report.quarantined = sorted(name for name, _ in list_entries(qdir))
    report.foreign = foreign_entries(spool_dir)
    return report


def _check_lane(
    spool_dir: str,
    lane: int,
    key: Optional[bytes],
    report: VerifyReport,
    covered: Dict[int, List[Tuple[int, int]]],
    in_lanes: Set[Tuple[int, int, bytes]],
) -> _LaneCheck:
    """Check one lane into ``report``. A drainer acking the lane meanwhile (cursor first, then
    unlinking segments) can make a listed segment vanish: the lane is then checked again."""
    for _ in range(_VANISHED_RETRIES):
        scratch = VerifyReport(signatures=report.signatures)
        ranges: Dict[int, List[Tuple[int, int]]] = {}
        check = _LaneCheck(spool_dir, lane, key, scratch, ranges)
        check.run()
        if not check.vanished:
            break
    room = max(0, _MAX_PROBLEMS - len(report.problems))
    report.problems += scratch.problems[:room]
    report.notices += scratch.notices
    report.gaps += scratch.gaps
    report.lanes += scratch.lanes
    report.records += scratch.records
    report.segments += scratch.segments
    report.pending += scratch.pending
    report.signatures = scratch.signatures
    for target, found in ranges.items():
        covered.setdefault(target, []).extend(found)
    in_lanes.update(check.gap_keys)
    check.report = report  # report_holes() adds to the real report
    return check


class _LaneCheck:
    """Walks one lane's segments in order, keeping the chain state between them."""

    def __init__(
        self,
        spool_dir: str,
        lane: int,
        key: Optional[bytes],
        report: VerifyReport,
        covered: Dict[int, List[Tuple[int, int]]],
    ):
        self.lane = lane
        self.dir = lane_dir(spool_dir, lane)
        self.live = lane_is_live(spool_dir, lane)
        self.report = report
        self.sha = Chain(None)
        self.hmac = Chain(key) if key else None
        self.prev: Optional[Record] = None  # last valid record, None after a break
        self.last: Optional[Record] = None  # last valid record seen at all
        self.resynced = False
        self.holes: List[Tuple[int, int, str, int]] = []  # lo, hi, segment, its created_ns
        self.gap_keys: Set[Tuple[int, int, bytes]] = set()
        self.covered = covered  # lane -> seq ranges explained by gap records (every lane's)
        self.torn: Optional[Tuple[str, int, str]] = None  # unclean end: segment, offset, detail
        self.cursor = Cursor(lane)
        self.cursor_found = False
        self.records = 0
        self.pending = 0
        self.tail_reported = False
        self.vanished = False  # a listed segment was gone when opened (unlinked after an ack)

    def problem(
        self, segment: str, offset: int, seq: Optional[int], kind: str, detail: str
    ) -> None:
        if len(self.report.problems) < _MAX_PROBLEMS:
            self.report.problems.append(Problem(self.lane, segment, offset, seq, kind, detail))

    def run(self) -> None:
        found = read_cursor(self.dir, self.lane)
        if isinstance(found, str):
            self.problem("cursor", 0, None, "cursor", found)
        else:
            self.cursor = found
        segments = list_segments(self.dir)
        for index, (base, path) in enumerate(segments):
            self.segment(base, path, is_last=index == len(segments) - 1)
        if read_cursor(self.dir, self.lane) != found:
            self.vanished = True  # acked meanwhile: what we listed may no longer be the lane
        self.finish(segments)

    # -- one segment ----------------------------------------------------------------------

    def segment(self, base: int, path: str, is_last: bool) -> None:
        name = os.path.basename(path)
        self.report.segments += 1
        try:
            buf = read_regular(path)
        except FileNotFoundError as exc:
            self.vanished = True
            self.problem(name, 0, None, "format", f"unreadable: {exc}")
            self.prev = None
            return
        except OSError as exc:
            self.problem(name, 0, None, "format", f"unreadable: {exc}")
            self.prev = None
            return
        header = decode_header(buf)
        if len(buf) < HEADER_SIZE and is_last and not self.live:
            # a crash between creating the file and writing its header; recovery removes it
            self.torn = (name, 0, f"segment is {len(buf)} bytes, shorter than its header")
            return
        if isinstance(header, str) or header.base_seq != base or header.lane != self.lane:
            detail = (
                header
                if isinstance(header, str)
                else (
                    f"header says lane {header.lane} base {header.base_seq}; file is lane"
                    f" {self.lane} base {base}"
                )
            )
            self.problem(name, 0, base, "format", detail)
            self.prev = None
            self.resynced = True
            return
        if header.keyed:
            self.report.signatures = "checked" if self.hmac else "unchecked"
        elif self.hmac is not None:
            # anyone can write an unkeyed chain: with a key, an unkeyed segment proves nothing
            self.problem(
                name, 0, base, "signature", "segment is not keyed (written without the key)"
            )
        self.link_segment(name, base, header.anchor, header.created_ns)
        anchor: Optional[bytes] = header.anchor
        first = True
        budget = ScanBudget(len(buf))
        for item in scan(buf, HEADER_SIZE, budget):
            if isinstance(item, ScanDamage) and item.kind == "torn":
                if is_last and not self.live:
                    self.torn = (name, item.offset, item.detail)
                elif not is_last:
                    self.tail_reported = True
                    self.problem(name, item.offset, None, "truncated-tail", item.detail)
                return
            if isinstance(item, ScanDamage):
                if item.resync is None and is_last and not self.live and not budget.exhausted:
                    # a bad last frame with nothing valid after it: a torn tail (FORMAT.md §8)
                    self.torn = (name, item.offset, item.detail)
                    return
                self.problem(name, item.offset, None, item.kind, item.detail)
                if item.resync is None:
                    self.tail_reported = self.tail_reported or is_last
                    return
                self.resynced, anchor = True, None
                continue
            rec = item.record
            if first and rec.seq != base and not self.resynced:
                self.problem(name, item.offset, rec.seq, "chain", f"first record is seq {rec.seq}")
            self.record(name, item.offset, rec, anchor, header.keyed)
            anchor, first = rec.hash, False

    def link_segment(self, name: str, base: int, anchor: bytes, created_ns: int) -> None:
        prev = self.prev
        if prev is None:
            if self.last is None:  # first segment present in the lane
                acked = self.cursor.acked_seq
                if base == 1 and anchor != GENESIS:
                    self.problem(name, 0, base, "chain", "first segment does not anchor at genesis")
                if base > acked + 1:
                    self.holes.append((acked + 1, base - 1, name, created_ns))
                elif acked and base == acked + 1 and anchor != self.cursor.acked_hash:
                    self.problem(name, 0, base, "cursor", "cursor hash differs from segment anchor")
            return
        if base <= prev.seq:
            self.problem(
                name, 0, base, "format", f"segment overlaps seq {prev.seq} of the previous"
            )
        elif base > prev.seq + 1:
            self.holes.append((prev.seq + 1, base - 1, name, created_ns))
        elif anchor != prev.hash:
            self.problem(name, 0, base, "chain", "anchor is not the previous segment's last hash")

    def record(
        self, name: str, offset: int, rec: Record, anchor: Optional[bytes], keyed: bool
    ) -> None:
        """Check one record against its predecessor; ``anchor`` is the expected prev_hash."""
        body: Any = None
        if rec.kind == Kind.GAP:
            body = _safe_body(rec.body)
            if isinstance(body, dict):
                fields = gap_fields(body)
                self.report.gaps.append(
                    {"lane": self.lane, "seq": rec.seq, **fields, "source": "lane"}
                )
                self.gap_keys.add((self.lane, rec.seq, rec.hash))
                explained = _explained(fields, self.lane)
                if explained is not None:
                    self.covered.setdefault(explained[0], []).append(explained[1:])
        prev = self.prev
        if not self.resynced:
            if anchor is not None and rec.prev_hash != anchor:
                self.problem(name, offset, rec.seq, "chain", "prev_hash does not link")
            if prev is not None and offset != HEADER_SIZE and rec.seq != prev.seq + 1:
                inline_gap = (
                    isinstance(body, dict)
                    and body.get("first_seq") == prev.seq + 1
                    and body.get("last_seq") == rec.seq - 1
                )
                if not inline_gap:
                    self.problem(name, offset, rec.seq, "chain", f"seq {rec.seq} after {prev.seq}")
        self.check_hash(name, offset, rec, keyed)
        if rec.seq == self.cursor.acked_seq:
            self.cursor_found = True
            if rec.hash != self.cursor.acked_hash:
                self.problem("cursor", 0, rec.seq, "cursor", "cursor hash differs from the record")
        if rec.kind == Kind.EVENT and rec.seq > self.cursor.acked_seq:
            self.pending += 1
        self.records += 1
        self.prev = self.last = rec
        self.resynced = False

    def check_hash(self, name: str, offset: int, rec: Record, keyed: bool) -> None:
        canonical = rec.canonical()
        if not keyed:
            if not self.sha.matches(rec.prev_hash, canonical, rec.hash):
                self.problem(name, offset, rec.seq, "chain", "sha256 does not match the record")
        elif self.hmac is not None and not self.hmac.matches(rec.prev_hash, canonical, rec.hash):
            self.problem(name, offset, rec.seq, "signature", "HMAC-SHA256 does not match")

    # -- lane end ---------------------------------------------------------------------------

    def report_holes(
        self, covered: List[Tuple[int, int]], recorded: List[Tuple[int, int, int]]
    ) -> None:
        """Sequence ranges missing from this lane that no gap record (of any lane, or in the
        ledger: ``(first, last, ts_ns)``, written after the segment was made) explains."""
        for first, hi, name, created_ns in self.holes:
            lo = max(first, self.cursor.acked_seq + 1)  # delivered records left: no loss
            if lo > hi:
                continue
            ranges = covered + [(f, t) for f, t, ts_ns in recorded if ts_ns >= created_ns]
            if not _covered(lo, hi, ranges):
                self.problem(name, 0, lo, "missing-segment", f"records {lo}..{hi} are missing")

    def finish(self, segments: List[Tuple[int, str]]) -> None:
        last_name = os.path.basename(segments[-1][1]) if segments else ""
        acked = self.cursor.acked_seq
        if acked and not self.cursor_found:
            top = self.last.seq if self.last else 0
            if acked > top:
                self.problem("cursor", 0, acked, "cursor", f"cursor at {acked}, lane ends at {top}")
            elif segments and acked >= segments[0][0]:
                self.problem("cursor", 0, acked, "cursor", f"cursor seq {acked} is not in the lane")
        last = self.last
        unclosed = last is not None and last.kind != Kind.CLOSE
        if (unclosed or self.torn) and not self.live and not self.tail_reported:
            self.unclean(last_name, last)
        self.report.records += self.records
        self.report.pending += self.pending
        self.report.lanes.append(
            {
                "lane": self.lane,
                "segments": len(segments),
                "records": self.records,
                "pending": self.pending,
                "acked_seq": acked,
                "live": self.live,
                "last_seq": self.last.seq if self.last else None,
            }
        )

    def unclean(self, last_name: str, last: Optional[Record]) -> None:
        """The lane ends the way a crash leaves it: a notice, not a problem."""
        segment, offset, torn = self.torn or (last_name, 0, "")
        if last is None:
            detail = "lane holds no complete record"
        else:
            when = datetime.fromtimestamp(last.ts_ns / 1e9, timezone.utc).isoformat()
            detail = f"last complete record is seq {last.seq} of {when}"
        if last is None or last.kind != Kind.CLOSE:
            detail += "; no clean-close marker after it (writer crashed, or tail removed)"
        if torn:
            detail += f"; torn tail at offset {offset}: {torn}"
        self.report.notices.append(
            Notice(
                self.lane,
                segment,
                offset,
                last.seq if last else None,
                "unclean-close",
                detail,
                last.ts_ns if last else None,
            )
        )


def _check_ledger(
    spool_dir: str,
    key: Optional[bytes],
    report: VerifyReport,
    in_lanes: Set[Tuple[int, int, bytes]],
) -> Dict[int, List[Tuple[int, int, int]]]:
    """List the ledger's gaps (those not also still in a lane), check their hashes, report
    damaged frames; returns the ranges they explain: lane -> [(first, last, ts_ns)]."""
    ledger = read_ledger(spool_dir)
    for problem in ledger.problems:
        report.problems.append(
            Problem(-1, problem.file, problem.offset, None, problem.kind, problem.detail)
        )
    sha, mac = Chain(None), Chain(key) if key else None
    explains: Dict[int, List[Tuple[int, int, int]]] = {}
    for entry in ledger.entries:
        if entry.key in in_lanes:  # recorded, then a crash before its segment was unlinked
            continue
        _check_entry(entry, sha, mac, report)
        body = entry.gap()
        fields = gap_fields(body) if body is not None else {}
        report.gaps.append(
            {
                "lane": entry.lane,
                "seq": entry.seq,
                **fields,
                "source": "ledger",
                "recorded_ns": entry.recorded_ns,
            }
        )
        explained = _explained(fields, entry.lane)
        if explained is not None:
            target, first, last = explained
            explains.setdefault(target, []).append((first, last, entry.ts_ns))
    return explains


def _check_entry(
    entry: LedgerEntry, sha: Chain, mac: Optional[Chain], report: VerifyReport
) -> None:
    """The entry's chain hash, as verify checks the record it copies."""
    canonical = canonical_bytes(entry.seq, Kind.GAP, entry.ts_ns, entry.body)
    where = f"losses/ledger gap of lane {entry.lane}"
    if not entry.keyed:
        if not sha.matches(entry.prev_hash, canonical, entry.hash):
            detail = f"{where}: sha256 does not match the record"
            report.problems.append(Problem(entry.lane, "losses", 0, entry.seq, "chain", detail))
    elif mac is not None:
        if report.signatures == "none":
            report.signatures = "checked"
        if not mac.matches(entry.prev_hash, canonical, entry.hash):
            detail = f"{where}: HMAC-SHA256 does not match"
            report.problems.append(Problem(entry.lane, "losses", 0, entry.seq, "signature", detail))
    elif report.signatures == "none":
        report.signatures = "unchecked"


def _explained(fields: Dict[str, Any], lane: int) -> Optional[Tuple[int, int, int]]:
    """``(lane, first, last)`` a gap explains, None for none.

    A dead-letter gap names a record that is still on disk (maybe in another lane): it
    explains no hole; any other gap explains the range it names, in the lane it names
    (a drainer records corruption of lane X in its own lane).
    """
    first, last = fields.get("first_seq"), fields.get("last_seq")
    if (
        fields.get("reason") == GapReason.DEAD_LETTER
        or first is None
        or last is None
        or first > last
    ):
        return None
    return fields.get("lane", lane), first, last


def _safe_body(body: bytes) -> Any:
    try:
        return decode_body(body)
    except Exception:  # noqa: BLE001 — arbitrary bytes must not crash verify
        return None


def _covered(lo: int, hi: int, ranges: List[Tuple[int, int]]) -> bool:
    """True when the union of ``ranges`` covers lo..hi."""
    need = lo
    for first, last in sorted(ranges):
        if first > need:
            break
        need = max(need, last + 1)
        if need > hi:
            return True
    return need > hi
