"""
The expiry sweeper: removes expired keys as commits of their own, so each
removal gets a revision and an C{expire} event.

Expired keys already read as absent everywhere; the sweeper only makes the
removal durable and visible to watchers. It runs on an injected
L{IReactorTime}, removes at most C{Limits.sweep_batch} keys per commit,
never runs two sweeps at once, and never blocks the reactor (every store
call is a Deferred).
"""

from __future__ import annotations

from typing import Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from kvtwist.errors import StoreUnavailable
from kvtwist.interfaces import IKeyValueStore
from kvtwist.limits import Limits
from kvtwist.model import Expire

log = Logger()


class Sweeper(Service):
    """Sweep C{store} every C{limits.sweep_interval} seconds of C{clock}."""

    name = "kvtwist-sweeper"

    def __init__(self, store: IKeyValueStore, clock: IReactorTime, limits: Limits) -> None:
        self._store = store
        self._clock = clock
        self._limits = limits
        self._timer: Optional[IDelayedCall] = None
        self._sweeping: Optional[Deferred] = None
        self.swept = 0

    def startService(self) -> None:
        super().startService()
        self._schedule(self._limits.sweep_interval)

    def stopService(self) -> Optional[Deferred]:
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        return self._sweeping

    def _schedule(self, delay: float) -> None:
        if self.running:
            self._timer = self._clock.callLater(delay, self.sweep)

    def sweep(self) -> Deferred:
        """
        Remove one batch of expired keys now; the next sweep follows at once
        if the batch was full, else after the interval.
        """
        d = Deferred.fromCoroutine(self._sweep_once())
        self._sweeping = d

        def next_sweep(full: object) -> None:
            self._sweeping = None
            self._schedule(0 if full is True else self._limits.sweep_interval)

        def failed(reason) -> bool:
            if reason.check(StoreUnavailable):
                # A full or failing disk: it says what is wrong, and it
                # repeats every interval until it passes; no traceback.
                log.warn(
                    "expiry sweep failed, retrying later: {detail}",
                    detail=reason.value.detail,
                )
            else:
                log.failure("expiry sweep failed; retrying later", reason)
            return False

        return d.addErrback(failed).addCallback(next_sweep)

    async def _sweep_once(self) -> bool:
        due = await self._store.expired(self._limits.sweep_batch)
        if due:
            result = await self._store.commit([Expire(key, rev) for key, rev in due])
            self.swept += len(result.changes)
        return len(due) >= self._limits.sweep_batch
