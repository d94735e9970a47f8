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

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from kvtwist.batchloop import BatchLoop
from kvtwist.interfaces import IKeyValueStore
from kvtwist.limits import Limits
from kvtwist.model import Expire


class Sweeper(BatchLoop):
    """Sweep C{store} every C{limits.sweep_interval} seconds of C{clock}."""

    name = "kvtwist-sweeper"
    failure_message = "expiry sweep failed"

    def __init__(self, store: IKeyValueStore, clock: IReactorTime, limits: Limits) -> None:
        super().__init__(clock)
        self._store = store
        self._limits = limits
        self.swept = 0

    @property
    def interval(self) -> float:
        return self._limits.sweep_interval

    def sweep(self) -> Deferred:
        """
        Remove one batch of expired keys now; the next sweep follows at once
        if the batch was full, else after the interval.
        """
        return self.run_batch()

    async def batch(self) -> bool:
        due = await self._store.expired(self._limits.sweep_batch)
        if due:
            result = await self._store.commit([Expire(key, rev) for key, rev in due])
            self.swept += len(result.changes)
        return len(due) >= self._limits.sweep_batch
