"""Spool options, validated once at construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from cerbistream_spool.errors import SpoolConfigError
from cerbistream_spool.spool.capacity import (
    OVERFLOW_POLICIES,
    Block,
    OverflowPolicy,
    overflow_policy,
)
from cerbistream_spool.spool.chain import ENV_KEY, key_from_env
from cerbistream_spool.spool.commit import (
    COMMIT_POLICIES,
    CommitPolicy,
    IntervalFlush,
    commit_policy,
)
from cerbistream_spool.spool.lanes import MAX_LANES

__all__ = ["FSYNC_MODES", "OVERFLOW_POLICIES", "SpoolConfig"]

FSYNC_MODES = COMMIT_POLICIES
MiB = 1024 * 1024


@dataclass(frozen=True)
class SpoolConfig:
    """Options of a spool writer; see docs/FORMAT.md and docs/CONTRACT.md §4.

    ``fsync`` is a mode's name or a commit policy (spool/commit.py), ``overflow``
    a policy's name or an overflow policy (spool/capacity.py). A policy object is
    stored as its name, its parameter in ``fsync_interval_s`` / ``block_timeout_s``
    (the object's value wins); the writer builds its policies once from them.
    """

    fsync: Union[str, CommitPolicy] = "interval"
    fsync_interval_s: float = 0.2
    segment_max_bytes: int = 4 * MiB
    segment_max_age_s: float = 60.0
    max_spool_bytes: int = 512 * MiB
    overflow: Union[str, OverflowPolicy] = "drop_oldest"
    block_timeout_s: float = 1.0
    signing_key: Optional[bytes] = field(default=None, repr=False)
    max_lanes: int = MAX_LANES

    def __post_init__(self) -> None:
        commit = commit_policy(self.fsync, self.fsync_interval_s)  # raises on a bad value
        object.__setattr__(self, "fsync", commit.mode)
        if isinstance(commit, IntervalFlush):
            object.__setattr__(self, "fsync_interval_s", commit.interval_s)
        overflow = overflow_policy(self.overflow, self.block_timeout_s)
        object.__setattr__(self, "overflow", overflow.name)
        if isinstance(overflow, Block):
            object.__setattr__(self, "block_timeout_s", overflow.timeout_s)
        if not 0 < self.fsync_interval_s <= 0.2:
            raise SpoolConfigError("fsync_interval_s must be in (0, 0.2] (docs/CONTRACT.md §4)")
        if self.segment_max_bytes < 4096:
            raise SpoolConfigError("segment_max_bytes must be at least 4096")
        if self.segment_max_age_s <= 0:
            raise SpoolConfigError("segment_max_age_s must be positive")
        if self.max_spool_bytes < 2 * self.segment_max_bytes:
            raise SpoolConfigError("max_spool_bytes must be at least twice segment_max_bytes")
        if self.block_timeout_s < 0:
            raise SpoolConfigError("block_timeout_s must be >= 0")
        if not 1 <= self.max_lanes <= 9999:
            raise SpoolConfigError("max_lanes must be in 1..9999")
        if isinstance(self.signing_key, str):
            object.__setattr__(self, "signing_key", self.signing_key.encode("utf-8"))

    def commit_policy(self) -> CommitPolicy:
        """The commit policy these options name."""
        return commit_policy(self.fsync, self.fsync_interval_s)

    def overflow_policy(self) -> OverflowPolicy:
        """The overflow policy these options name."""
        return overflow_policy(self.overflow, self.block_timeout_s)

    def resolved_key(self) -> Optional[bytes]:
        """``signing_key``, else env CERBISTREAM_SPOOL_KEY, else None."""
        return self.signing_key or key_from_env(ENV_KEY)
