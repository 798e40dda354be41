"""Example budgets of the property tests by tier (docs/TESTING.md, "Tiers").

The whole suite (``pytest``, CI's default and minimums jobs) runs each property test
with its full budget; the fast tier (``pytest -m "not slow"``, the inner loop) runs
the same test with a smaller one. ``FAST_TIER`` is set by conftest.py before any test
module is imported.
"""

from __future__ import annotations

FAST_TIER = False


def examples(full: int, fast: int) -> int:
    """``max_examples`` for a property test: ``full``, or ``fast`` in the fast tier."""
    return fast if FAST_TIER else full
