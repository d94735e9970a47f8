# -*- test-case-name: tests.unit.test_watch -*-
"""
Flow control for streamed answers (event streams, snapshots): a streaming
Resource registers itself as a push producer, and a L{Drain} tracks whether
the connection pushed back and wakes whoever waits for it to take more.
"""

from __future__ import annotations

from typing import List

from twisted.internet.defer import Deferred


class Drain:
    """
    Whether the connection has pushed back (C{pauseProducing}), and the
    Deferreds waiting until it takes writes again.
    """

    def __init__(self) -> None:
        self.paused = False
        self._waiting: List[Deferred] = []

    def wait(self, closed: bool = False) -> Deferred:
        """
        A Deferred firing once the connection takes writes: at once if it
        does, or if the stream is C{closed} (the caller then stops).
        """
        d: Deferred = Deferred()
        if self.paused and not closed:
            self._waiting.append(d)
        else:
            d.callback(None)
        return d

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self.release()

    def release(self) -> None:
        """Wake every waiter (the connection takes writes, or is gone)."""
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)
