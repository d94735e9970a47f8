# -*- test-case-name: tests.contract.test_store_memory -*-
"""
The commit listeners a store notifies (see
L{kvtwist.interfaces.IKeyValueStore.add_listener}).
"""

from __future__ import annotations

from typing import Callable, List

from twisted.logger import Logger

from kvtwist.model import CommitResult

log = Logger()

Listener = Callable[[CommitResult], None]


class Listeners:
    """An ordered list of listeners; one failing listener does not stop the rest."""

    def __init__(self) -> None:
        self._listeners: List[Listener] = []

    def add(self, listener: Listener) -> None:
        """Call C{listener} for every future commit that changed something."""
        self._listeners.append(listener)

    def notify(self, result: CommitResult) -> None:
        """Tell every listener about C{result} if it changed anything."""
        if not result.changes:
            return
        for listener in self._listeners:
            try:
                listener(result)
            except Exception:
                log.failure("a commit listener failed")
