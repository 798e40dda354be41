"""Crash states of the spool (docs/RELIABILITY.md): record a workload's file-system
operations through the seam (spool/fs.py), build every on-disk state a power loss could
leave, open the spool on each and check what it promised.

- recorder.py: :class:`RecordingFileSystem` (the log of operations and acknowledgements);
- states.py: the crash-state model and its seeded sampler;
- checker.py: materialise a state, recover, verify, read back, compare with the promises;
- workloads.py: the workloads; ``python -m tools.crashstates`` runs them all.
"""

from tools.crashstates.checker import Failure, check_state
from tools.crashstates.recorder import Op, Recording, RecordingFileSystem
from tools.crashstates.states import CrashState, sample_states
from tools.crashstates.workloads import WORKLOADS, Workload, run_all

__all__ = [
    "WORKLOADS",
    "CrashState",
    "Failure",
    "Op",
    "Recording",
    "RecordingFileSystem",
    "Workload",
    "check_state",
    "run_all",
    "sample_states",
]
