# -*- test-case-name: tests.unit.test_compactor -*-
"""
History compaction: automatic, by the retention in force, and on request.

L{Compactor} is a Service that, every C{Limits.compact_interval} seconds of
an injected L{IReactorTime}, works out the revision the retention allows
compacting to (L{kvtwist.limits.HistoryRetention}) and compacts towards it
in steps of at most C{Limits.compact_batch} records, one store-thread trip
each, the next step following at once until the target is reached, so
commits are never held up behind a long compaction.

The age kept is tracked as etcd's periodic compactor does it: the service
samples the store's revision at each check and compacts to the newest
revision sampled at least the age ago. Samples live in memory, so after a
restart nothing is compacted by age until the age has passed again.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Deque, Optional, Tuple

from twisted.internet.interfaces import IReactorTime

from kvtwist.batchloop import BatchLoop
from kvtwist.interfaces import IHistoricalStore
from kvtwist.limits import Limits


async def compact_until(store: IHistoricalStore, revision: int, batch: int) -> int:
    """
    Compact C{store}'s history to C{revision}, one bounded step at a time.

    @return: the compact revision reached (C{revision}, or more if the
        store was already compacted further).
    @raise kvtwist.errors.FutureRevision: C{revision} is in the future.
    @raise kvtwist.errors.StoreUnavailable: a step failed (earlier steps stay).
    """
    reached = await store.compact(revision, batch)
    while reached < revision:
        reached = await store.compact(revision, batch)
    return reached


class Compactor(BatchLoop):
    """Compact C{store}'s history by C{limits.history_retention} on C{clock}."""

    failure_message = "history compaction failed"

    def __init__(
        self,
        store: IHistoricalStore,
        clock: IReactorTime,
        limits: Limits,
        compacted: Optional[Callable[[], object]] = None,
    ) -> None:
        super().__init__(clock)
        self.setName("kvtwist-compactor")
        self._store = store
        self._limits = limits
        #: Called after each step (the owner of C{--workers} tells its
        #: workers the new compact revision: a compaction makes no commit).
        self._compacted = compacted
        #: (time, store revision then), oldest first: only while an age is kept.
        self._samples: Deque[Tuple[float, int]] = deque()

    @property
    def interval(self) -> float:
        return self._limits.compact_interval

    def target(self) -> int:
        """
        The revision the retention allows compacting to now (0: none),
        sampling the store's revision for the age kept.
        """
        retention = self._limits.history_retention
        current = self._store.revision
        targets = [0]
        if retention.revisions is not None:
            targets.append(current - retention.revisions)
        if retention.seconds is not None:
            now = self._clock.seconds()
            samples = self._samples
            samples.append((now, current))
            old_enough = now - retention.seconds
            while len(samples) > 1 and samples[1][0] <= old_enough:
                samples.popleft()
            if samples[0][0] <= old_enough:
                targets.append(samples[0][1])
        return min(max(targets), current)

    async def batch(self) -> bool:
        """One compaction step towards the retention's target; whether more remain."""
        target = self.target()
        if target <= self._store.compact_revision:
            return False
        reached = await self._store.compact(target, self._limits.compact_batch)
        if self._compacted is not None:
            self._compacted()
        return reached < target
