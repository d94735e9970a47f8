# -*- test-case-name: tests.unit.test_compactor -*-
"""
The shape the background services share (the expiry sweeper, the history
compactor): do one bounded batch of work, then the next at once if there
is more, else after an interval, on an injected L{IReactorTime}; never two
batches at once; a failed batch is logged and retried after the interval
(a store that cannot write, a full disk say, in one warning line that says
what is wrong, repeated each interval until it passes; anything else with
its traceback).
"""

from __future__ import annotations

from typing import Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from kvtwist.errors import StoreUnavailable

log = Logger()


class BatchLoop(Service):
    """
    Run L{batch} every L{interval} seconds of C{clock} while running.
    Subclasses define C{interval}, C{batch} and C{failure_message}.
    """

    #: What failed, for the log line when a batch fails.
    failure_message = "a background batch failed"

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._timer: Optional[IDelayedCall] = None
        self._running_batch: Optional[Deferred] = None

    @property
    def interval(self) -> float:
        """Seconds between batches when the last one found no more work."""
        raise NotImplementedError

    async def batch(self) -> bool:
        """Do one batch; return whether more work is waiting."""
        raise NotImplementedError

    def startService(self) -> None:
        super().startService()
        self._schedule(self.interval)

    def stopService(self) -> Optional[Deferred]:
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        return self._running_batch

    def _schedule(self, delay: float) -> None:
        if self.running:
            self._timer = self._clock.callLater(delay, self.run_batch)

    def run_batch(self) -> Deferred:
        """Run one batch now, then schedule the next one."""
        d = Deferred.fromCoroutine(self.batch())
        self._running_batch = d

        def next_batch(more: object) -> None:
            self._running_batch = None
            self._schedule(0 if more is True else self.interval)

        def failed(reason) -> bool:
            if reason.check(StoreUnavailable):
                log.warn(
                    "{what}, retrying later: {detail}",
                    what=self.failure_message,
                    detail=reason.value.detail,
                )
            else:
                log.failure("%s; retrying later" % (self.failure_message,), reason)
            return False

        return d.addErrback(failed).addCallback(next_batch)
