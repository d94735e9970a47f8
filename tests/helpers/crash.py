"""
What the kill -9 loops count (C{tests/e2e/test_crash_loop.py},
C{tests/e2e/test_crash_txn.py}): each loop subclasses L{Tally} with its own
figures and its own one-line summary.
"""

from __future__ import annotations

from typing import List


class Tally:
    """
    A crash loop's figures: the cycles run, the commits the server
    acknowledged, and what the restarted server showed wrong.

    @ivar lost: acknowledged commits missing after a restart.
    @ivar partial: commits found applied in part.
    @ivar phantom: commits found applied that were never sent.
    @ivar violations: one line per violation, for the failure message.
    """

    def __init__(self) -> None:
        self.cycles = 0
        self.acknowledged = 0
        self.lost = 0
        self.partial = 0
        self.phantom = 0
        self.violations: List[str] = []

    def summary(self, seconds: float, seed: int) -> str:
        """One line for the test output: the figures, the wall time, the seed."""
        raise NotImplementedError
