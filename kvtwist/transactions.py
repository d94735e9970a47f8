"""
Transactions: staged writes plus what the client has seen, committed all
or nothing with optimistic conflict checks.

A L{Transaction} records, for every key it reads or stages, the key's
mod_revision when it first touched it (0 if absent). Its commit carries one
C{Check.equals} per such key, plus the preconditions the client sent
(C{If-Match} / C{If-None-Match}); if another commit changed any of those keys
in between, the store refuses the whole commit and every conflict is named
(first committer wins).

The seed's shared queue is a transaction too, one that records nothing
(C{isolated=False}): last writer wins, as the seed did.

Transactions live in memory on the reactor thread; they are volatile, and
idle ones expire after C{Limits.txn_timeout} seconds of the injected clock.
"""

from __future__ import annotations

import secrets
from typing import Dict, Iterable, List, Optional

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from kvtwist.errors import LimitExceeded, TransactionNotFound
from kvtwist.interfaces import IKeyValueStore
from kvtwist.limits import Limits
from kvtwist.model import Check, CommitResult, Entry, Op
from kvtwist.staging import StagingArea

#: The C{tag} of the checks a transaction adds for what it read or staged.
OBSERVED = "observed"


class Transaction:
    """
    One client's staged ops and observed revisions; reactor thread only.

    @ivar isolated: record observed revisions and check them at commit.
    """

    def __init__(
        self,
        txn_id: str,
        limits: Limits,
        owner: Optional[str] = None,
        isolated: bool = True,
    ) -> None:
        self.id = txn_id
        self.owner = owner
        self.isolated = isolated
        self.staging = StagingArea(limits)
        self.observed: Dict[str, int] = {}
        self.preconditions: List[Check] = []
        # Store commits of this transaction not yet answered. Only the shared
        # queue has several at once: one client's commit may carry another
        # client's staged writes, so every commit must wait for the earlier
        # ones before it may say those writes are durable.
        self._inflight: List[_InFlight] = []

    def needs_observation(self, key: str) -> bool:
        """Whether C{key} has not been touched yet (so must be read first)."""
        return self.isolated and key not in self.observed

    def observe(self, key: str, entry: Optional[Entry]) -> None:
        """Record the committed state of C{key} as seen now, if first touch."""
        if self.needs_observation(key):
            self.observed[key] = entry.mod_revision if entry is not None else 0

    def staged(self, key: str) -> Optional[Op]:
        """The op staged for C{key}, if any."""
        return self.staging.staged(key)

    def stage(self, ops: Iterable[Op], preconditions: Iterable[Check] = ()) -> None:
        """
        Stage C{ops} and record C{preconditions} for the commit.

        @raise LimitExceeded: past a staging limit; nothing is staged then.
        """
        self.staging.stage(ops)
        self.preconditions.extend(preconditions)

    def checks(self) -> List[Check]:
        """Every check the commit must pass: observations, then preconditions."""
        observed = [
            Check.equals(key, revision, tag=OBSERVED)
            for key, revision in self.observed.items()
        ]
        return observed + self.preconditions

    def commit(self, store: IKeyValueStore) -> Deferred:
        """
        Commit everything staged so far, atomically and durably.

        @return: a Deferred firing with the L{kvtwist.model.CommitResult}.
            On failure (a conflict, an unavailable store) the staged ops are
            put back, behind anything staged meanwhile, and the error
            propagates.
        """
        earlier = [inflight.wait() for inflight in self._inflight]
        if not len(self.staging) and not (self.isolated and (self.observed or self.preconditions)):
            # Nothing to apply or verify: no trip to the store (and no sync),
            # but what earlier commits carried must be durable first.
            return _all_of(earlier, CommitResult(store.revision, ()))
        ops = self.staging.take()
        checks = self.checks()
        preconditions = self.preconditions
        if self.isolated:
            self.preconditions = []
        d = store.commit(ops, checks)

        def failed(reason):
            self.staging.restore(ops)
            if self.isolated:
                self.preconditions = preconditions + self.preconditions
            return reason

        d.addErrback(failed)
        if not earlier and self.isolated:
            return d
        inflight = _InFlight(d, self._inflight)
        return _all_of(earlier + [inflight.wait()], None)


class _InFlight:
    """
    One store commit in flight: anyone may wait for its outcome without
    taking it from the committer.
    """

    def __init__(self, d: Deferred, registry: List["_InFlight"]) -> None:
        self._registry = registry
        self._outcome: Optional[object] = None
        self._done = False
        self._waiters: List[Deferred] = []
        registry.append(self)
        d.addBoth(self._finished)

    def _finished(self, outcome: object) -> object:
        self._done = True
        self._outcome = outcome
        self._registry.remove(self)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            self._fire(waiter)
        # Consumed here: the committer hears the outcome through wait().
        return None

    def _fire(self, waiter: Deferred) -> None:
        if isinstance(self._outcome, Failure):
            waiter.errback(self._outcome)
        else:
            waiter.callback(self._outcome)

    def wait(self) -> Deferred:
        """A Deferred firing like the commit, once it is answered."""
        waiter: Deferred = Deferred()
        if self._done:
            self._fire(waiter)
        else:
            self._waiters.append(waiter)
        return waiter


def _all_of(waits: List[Deferred], otherwise: object) -> Deferred:
    """
    Once every one of C{waits} is answered: fail with the first failure if
    any failed, else fire with the last one's result (C{otherwise} if it gave
    none). Waiting for all, even after a failure, means a commit is never
    reported failed while its own write may still land.
    """
    if not waits:
        return succeed(otherwise)

    def settle(results: list) -> object:
        for ok, result in results:
            if not ok:
                return result
        last = results[-1][1]
        return last if last is not None else otherwise

    return DeferredList(waits, consumeErrors=True).addCallback(settle)


class TransactionManager:
    """
    The open transactions, their owners and idle timers.

    @param clock: the L{IReactorTime} that times idle transactions out.
    """

    def __init__(self, clock: IReactorTime, limits: Limits) -> None:
        self._clock = clock
        self._limits = limits
        self._open: Dict[str, Transaction] = {}
        self._timers: Dict[str, IDelayedCall] = {}

    def __len__(self) -> int:
        return len(self._open)

    @property
    def timeout(self) -> float:
        """Seconds of idleness after which a transaction expires."""
        return self._limits.txn_timeout

    def begin(self, owner: Optional[str] = None) -> Transaction:
        """
        Open a transaction for C{owner}.

        @raise LimitExceeded: (too many) when C{max_open_transactions} are
            already open.
        """
        if len(self._open) >= self._limits.max_open_transactions:
            raise LimitExceeded(
                "max_open_transactions",
                self._limits.max_open_transactions,
                len(self._open) + 1,
                too_many=True,
            )
        txn = Transaction(secrets.token_urlsafe(12), self._limits, owner)
        self._open[txn.id] = txn
        self._timers[txn.id] = self._clock.callLater(self.timeout, self._expire, txn.id)
        return txn

    def find(self, txn_id: str, owner: Optional[str] = None) -> Transaction:
        """
        The open transaction C{txn_id} of C{owner}, with its idle timer reset.

        @raise TransactionNotFound: if it is unknown, finished, expired, or
            someone else's (which is not revealed).
        """
        txn = self._open.get(txn_id)
        if txn is None or txn.owner != owner:
            raise TransactionNotFound(
                "no open transaction %r (finished, expired or never begun)" % (txn_id,)
            )
        self._timers[txn_id].reset(self.timeout)
        return txn

    def finish(self, txn_id: str) -> None:
        """Forget C{txn_id} (committed, aborted or conflicted)."""
        self._open.pop(txn_id, None)
        timer = self._timers.pop(txn_id, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _expire(self, txn_id: str) -> None:
        self._timers.pop(txn_id, None)
        self._open.pop(txn_id, None)

    def abort_all(self) -> None:
        """Forget every open transaction (at shutdown)."""
        for txn_id in list(self._open):
            self.finish(txn_id)
