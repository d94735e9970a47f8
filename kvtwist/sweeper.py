# -*- test-case-name: tests.unit.test_watch,tests.unit.test_web_lease -*-
"""
The expiry sweeper: removes expired keys as commits of their own, so each
removal gets a revision and an C{expire} event.

Expired keys already read as absent everywhere; the sweeper only makes the
removal durable and visible to watchers. On a store with leases it also
ends each lease past its deadline, its keys removed in one commit of their
own (until then those keys still read as present: a lease's keys go all at
once, at its deadline: between sweeps, the sweeper wakes at the soonest
lease deadline it is told of). It runs on an injected
L{IReactorTime}, removes at most C{Limits.sweep_batch} keys per commit,
never runs two sweeps at once, and never blocks the reactor (every store
call is a Deferred).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from kvtwist.batchloop import BatchLoop
from kvtwist.interfaces import IKeyValueStore, ILeasingStore
from kvtwist.limits import Limits
from kvtwist.model import Expire


class Sweeper(BatchLoop):
    """Sweep C{store} every C{limits.sweep_interval} seconds of C{clock}."""

    failure_message = "expiry sweep failed"

    def __init__(self, store: IKeyValueStore, clock: IReactorTime, limits: Limits) -> None:
        super().__init__(clock)
        self.setName("kvtwist-sweeper")
        self._store = store
        self._limits = limits
        self.swept = 0
        self.leases_expired = 0

    @property
    def interval(self) -> float:
        interval = self._limits.sweep_interval
        if ILeasingStore.providedBy(self._store):
            deadline = self._store.next_deadline
            now = self._clock.seconds()
            # Wake at the soonest lease deadline, so its keys go at once
            # rather than up to an interval later. One already past was
            # just swept or failed to be: wait the interval as usual.
            if deadline is not None and deadline > now:
                interval = min(interval, deadline - now)
        return interval

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
        ends = []
        if ILeasingStore.providedBy(self._store):
            ends = await self._store.expired_leases(self._limits.sweep_batch)
            for lease_id in ends:
                # One commit per lease: its keys go together, at one revision.
                if await self._store.expire_lease(lease_id) is not None:
                    self.leases_expired += 1
        return max(len(due), len(ends)) >= self._limits.sweep_batch
