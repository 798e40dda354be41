"""The disk spool: framing, chain, segments, lanes, cursor, writer (segment file, capacity,
commit policies), reader.

See docs/FORMAT.md for the on-disk format this package implements.
"""

from cerbistream_spool.spool.capacity import Block, DropNewest, DropOldest
from cerbistream_spool.spool.commit import GroupCommit, IntervalFlush, NoSync
from cerbistream_spool.spool.config import SpoolConfig
from cerbistream_spool.spool.reader import Batch, SpoolReader
from cerbistream_spool.spool.record import Kind, Record
from cerbistream_spool.spool.writer import SpoolWriter

__all__ = [
    "Batch",
    "Block",
    "DropNewest",
    "DropOldest",
    "GroupCommit",
    "IntervalFlush",
    "Kind",
    "NoSync",
    "Record",
    "SpoolConfig",
    "SpoolReader",
    "SpoolWriter",
]
