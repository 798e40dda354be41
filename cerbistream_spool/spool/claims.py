"""Claims of lost records: which gap records stand for what a dropped segment held.

When ``drop_oldest`` unlinks a segment undelivered (spool/capacity.py), every lost
seq must stay claimed by exactly one gap record (docs/FORMAT.md §4.2, "Head gaps"):
the gap records the segment itself held are carried, and the seqs no carried gap
claims become ``overflow`` ranges. This module reads the segment and builds those
gaps; the capacity writes them.
"""

from __future__ import annotations

import bisect
from dataclasses import replace
from typing import Any, Dict, List, Optional, Tuple

from cerbistream_spool.spool.fsio import read_regular
from cerbistream_spool.spool.markers import Gap, GapReason, gap_fields
from cerbistream_spool.spool.record import Kind, Record, Scanned, decode_body, scan
from cerbistream_spool.spool.segments import HEADER_SIZE, decode_header

__all__ = ["MOST_CLAIMS", "coarsened", "dropped_claims", "merge_claims", "records_of"]

# at most this many ranged gap records per reason and lane for one dropped segment
MOST_CLAIMS = 8


def records_of(path: str) -> Tuple[bool, List[Record]]:
    """Whether a segment file is keyed, and its readable records (damage is stepped over;
    none when it is gone or unreadable)."""
    try:
        buf = read_regular(path)
    except OSError:
        return False, []
    header = decode_header(buf[:HEADER_SIZE])
    if isinstance(header, str):
        return False, []
    return header.keyed, [
        item.record for item in scan(buf, HEADER_SIZE) if isinstance(item, Scanned)
    ]


def dropped_claims(records: List[Record], lo: int, hi: int, detail: str) -> List[Gap]:
    """The claims to write for a segment unlinked undelivered from ``lo`` to ``hi``.

    Every gap record the segment held is carried as it was (delivered or not, it
    leaves the disk without reaching the ledger); the seqs ``lo..hi`` that no carried
    gap claims become ``overflow`` ranges whose ``count`` is the events among them
    (seqs the scan could not read count as events: an upper bound).
    """
    carried: List[Gap] = []
    for rec in records:
        if rec.kind != Kind.GAP:
            continue
        body = _safe_body(rec.body)
        fields = gap_fields(body) if isinstance(body, dict) else {}
        if "reason" in fields and "count" in fields:
            carried.append(
                Gap(
                    fields["reason"],
                    fields["count"],
                    fields.get("detail", ""),
                    fields.get("first_seq"),
                    fields.get("last_seq"),
                    fields.get("lane"),
                )
            )
    taken = sorted(
        (g.first_seq, g.last_seq)
        for g in carried
        if g.first_seq is not None
        and g.last_seq is not None
        and g.lane is None
        and g.reason != GapReason.DEAD_LETTER  # names records still on disk
    )
    markers = [rec.seq for rec in records if rec.kind != Kind.EVENT and lo <= rec.seq <= hi]
    fresh: List[Gap] = []
    at = lo
    for t_lo, t_hi in [*taken, (hi + 1, hi + 1)]:
        top = min(hi, t_lo - 1)
        if top >= at:
            non_events = bisect.bisect_right(markers, top) - bisect.bisect_left(markers, at)
            fresh.append(Gap(GapReason.OVERFLOW, top - at + 1 - non_events, detail, at, top))
        at = max(at, t_hi + 1)
    return carried + fresh


def merge_claims(claims: List[Gap]) -> List[Gap]:
    """One gap per run of adjacent ranges (and per reason without a range) of one
    reason and lane, so repeated drops keep a bounded number of gap records.

    Ranges of one run are disjoint as this release writes them; an older release
    wrote nested head gaps (each from the cursor on): the outer one's count stands.
    """
    out: List[Gap] = []
    counts: Dict[Tuple[str, Optional[int]], Gap] = {}
    ranged = sorted(
        (g for g in claims if g.first_seq is not None and g.last_seq is not None),
        key=lambda g: (_reason(g), -1 if g.lane is None else g.lane, g.first_seq),
    )
    for gap in claims:
        if gap.first_seq is None or gap.last_seq is None:
            key = (_reason(gap), gap.lane)
            had = counts.get(key)
            counts[key] = gap if had is None else replace(had, count=had.count + gap.count)
    out = list(counts.values())
    run: Optional[Gap] = None
    for gap in ranged:
        assert gap.first_seq is not None and gap.last_seq is not None
        if (
            run is not None
            and _reason(run) == _reason(gap)
            and run.lane == gap.lane
            and run.last_seq is not None
            and gap.first_seq <= run.last_seq + 1
        ):
            if gap.last_seq <= run.last_seq:  # nested: already claimed
                count = max(run.count, gap.count)
            else:
                count = run.count + gap.count
            run = replace(run, count=count, last_seq=max(run.last_seq, gap.last_seq))
            out[-1] = run
            continue
        run = gap
        out.append(run)
    return out


def coarsened(claims: List[Gap], most: int = MOST_CLAIMS) -> List[Gap]:
    """``claims`` with at most ``most`` ranged gaps per reason and lane: past that, one
    gap spans them all and its ``count`` is their sum.

    Without this bound a spool that stays full (no drainer for days) carries every
    older claim forward at each drop, and the gap records grow until they alone fill
    the cap. A spanning gap keeps the count exact; its range may then also hold seqs
    delivered or claimed by another gap record (docs/FORMAT.md §4.2).
    """
    groups: Dict[Tuple[str, Optional[int]], List[Gap]] = {}
    out: List[Gap] = []
    for gap in claims:
        if gap.first_seq is None or gap.last_seq is None:
            out.append(gap)
        else:
            groups.setdefault((_reason(gap), gap.lane), []).append(gap)
    for group in groups.values():
        if len(group) <= most:
            out.extend(group)
            continue
        first, lo, hi = (
            group[0],
            min(g.first_seq or 0 for g in group),
            max(g.last_seq or 0 for g in group),
        )
        out.append(replace(first, count=sum(g.count for g in group), first_seq=lo, last_seq=hi))
    return out


def _safe_body(body: bytes) -> Any:
    try:
        return decode_body(body)
    except Exception:  # noqa: BLE001 — a damaged body: nothing to carry
        return None


def _reason(gap: Gap) -> str:
    return gap.reason.value if isinstance(gap.reason, GapReason) else gap.reason
