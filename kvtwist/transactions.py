# -*- test-case-name: tests.contract.test_txn_managers -*-
"""
Transactions kept in this process: staged writes plus what the client has
seen, committed all or nothing with optimistic conflict checks.

A L{Transaction} records, for every key it reads or stages, the key's
mod_revision when it first touched it (0 if absent). Its commit carries one
C{Check.equals} per such key, plus the preconditions the client sent
(C{If-Match} / C{If-None-Match}); if another commit changed any of those keys
in between, the store refuses the whole commit and every conflict is named
(first committer wins).

The seed's shared queue is a transaction too, one that records nothing
(C{isolated=False}): last writer wins, as the seed did.

These transactions live in memory on the reactor thread; they are volatile,
and idle ones expire after C{Limits.txn_timeout} seconds of the injected
clock. Several nodes on etcd share theirs through etcd instead
(L{kvtwist.store.etcd.transactions}); both implement
L{kvtwist.interfaces.ITransactionManager}.
"""

from __future__ import annotations

import secrets
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence

from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from kvtwist.errors import ConflictError, LimitExceeded, TransactionNotFound
from kvtwist.interfaces import (
    IKeyValueStore,
    ITransaction,
    ITransactionManager,
    ITransactionView,
)
from kvtwist.limits import Limits
from kvtwist.model import Check, CommitResult, Op
from kvtwist.staging import StagedMemory, StagingArea

#: The C{tag} of the checks a transaction adds for what it read or staged.
OBSERVED = "observed"

#: C{vet(ops)}: refuses (raises) a commit of C{ops}, e.g. for lack of rights.
Vet = Callable[[Sequence[Op]], None]


def observation_checks(observed: Mapping[str, int], preconditions: Iterable[Check]) -> List[Check]:
    """Every check a commit must pass: observations, then preconditions."""
    return [
        Check.equals(key, revision, tag=OBSERVED) for key, revision in observed.items()
    ] + list(preconditions)


def not_found(txn_id: str) -> TransactionNotFound:
    """The error for a transaction that is not (or no longer) there."""
    return TransactionNotFound(
        "no open transaction %r (finished, expired or never begun)" % (txn_id,)
    )


class EndsAfterCommit:
    """
    L{ITransactionManager.commit_and_end} for any manager, over its
    C{finish}: the one place that decides which commits end their
    transaction (the in-memory, etcd and remote managers share it).
    """

    def finish(self, txn_id: str) -> Deferred:
        """Each manager's own L{ITransactionManager.finish}."""
        raise NotImplementedError()

    def commit_and_end(self, txn: ITransaction, vet: Optional[Vet] = None) -> Deferred:
        """See L{ITransactionManager.commit_and_end}."""
        return Deferred.fromCoroutine(self._commit_and_end(txn, vet))

    async def _commit_and_end(self, txn: ITransaction, vet: Optional[Vet]) -> CommitResult:
        try:
            result = await txn.commit(vet)
        except ConflictError:
            # The checks failed against commits made since: retrying the
            # same transaction would fail the same way.
            if txn.isolated:
                await self.finish(txn.id)
            raise
        if txn.isolated:
            await self.finish(txn.id)
        return result


class StagedView:
    """
    The staged-ops part of L{ITransactionView}, over a C{staging} attribute
    (a L{StagingArea}); shared by the in-memory transaction and a node's
    copy of one kept in etcd.
    """

    staging: StagingArea

    def __len__(self) -> int:
        return len(self.staging)

    def staged(self, key: str) -> Optional[Op]:
        """The op staged for C{key}, if any."""
        return self.staging.staged(key)

    def ops(self) -> List[Op]:
        """The staged ops in commit order."""
        return self.staging.ops()


@implementer(ITransaction, ITransactionView)
class Transaction(StagedView):
    """
    One client's staged ops and observed revisions, in memory; reactor
    thread only. It is its own L{ITransactionView}: views are live.

    @param memory: the process-wide account of staged bytes.
    @ivar isolated: record observed revisions and check them at commit.
    @ivar ended: set by the manager once it ended; recording into or
        committing an ended transaction fails with L{TransactionNotFound}
        (a request that found it may still be waiting for a read).
    """

    def __init__(
        self,
        txn_id: str,
        limits: Limits,
        store: IKeyValueStore,
        owner: Optional[str] = None,
        isolated: bool = True,
        memory: Optional[StagedMemory] = None,
    ) -> None:
        self.id = txn_id
        self.owner = owner
        self.isolated = isolated
        self.ended = False
        self._store = store
        self.staging = StagingArea(limits, memory)
        self.observed: Dict[str, int] = {}
        self.preconditions: List[Check] = []
        # Store commits of this transaction not yet answered. Only the shared
        # queue has several at once: one client's commit may carry another
        # client's staged writes, so every commit must wait for the earlier
        # ones before it may say those writes are durable.
        self._inflight: List[_InFlight] = []

    def view(self) -> Deferred:
        """This transaction itself (see L{ITransaction.view})."""
        if self.ended:
            return fail(not_found(self.id))
        return succeed(self)

    def record(
        self,
        ops: Iterable[Op] = (),
        observed: Optional[Mapping[str, int]] = None,
        preconditions: Iterable[Check] = (),
    ) -> Deferred:
        """See L{ITransaction.record}; answered at once."""
        if self.ended:
            return fail(not_found(self.id))
        try:
            self.staging.stage(ops)
        except LimitExceeded:  # StagedMemoryFull included
            return fail()
        if self.isolated and observed:
            for key, revision in observed.items():
                self.observed.setdefault(key, revision)
        self.preconditions.extend(preconditions)
        return succeed(self)

    def checks(self) -> List[Check]:
        """Every check the commit must pass: observations, then preconditions."""
        return observation_checks(self.observed, self.preconditions)

    def commit(self, vet: Optional[Vet] = None) -> Deferred:
        """
        Commit everything staged so far, atomically and durably.

        @return: a Deferred firing with the L{kvtwist.model.CommitResult}.
            On failure (a conflict, an unavailable store) the staged ops are
            put back, behind anything staged meanwhile, and the error
            propagates.
        """
        if self.ended:
            return fail(not_found(self.id))
        if vet is not None:
            try:
                vet(self.staging.ops())
            except Exception:
                return fail()
        store = self._store
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
            if not self.ended:
                self.staging.restore(ops)
            if self.isolated:
                self.preconditions = preconditions + self.preconditions
            return reason

        def settled(outcome):
            self.staging.settle(ops)
            return outcome

        d.addErrback(failed)
        d.addBoth(settled)
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


@implementer(ITransactionManager)
class TransactionManager(EndsAfterCommit):
    """
    The open transactions of this process, their owners and idle timers,
    and the seed's shared queue.

    @param clock: the L{IReactorTime} that times idle transactions out.
    @param store: where their commits go.
    """

    def __init__(self, clock: IReactorTime, limits: Limits, store: IKeyValueStore) -> None:
        self._clock = clock
        self._limits = limits
        self._store = store
        self._open: Dict[str, Transaction] = {}
        self._timers: Dict[str, IDelayedCall] = {}
        #: What every transaction and the queue stage, held under
        #: C{max_staged_bytes_total}.
        self.staged_memory = StagedMemory(limits.max_staged_bytes_total)
        self.queue = Transaction(
            "shared", limits, store, isolated=False, memory=self.staged_memory
        )

    def __len__(self) -> int:
        return len(self._open)

    @property
    def timeout(self) -> float:
        """Seconds of idleness after which a transaction expires."""
        return self._limits.txn_timeout

    def begin(self, owner: Optional[str] = None) -> Deferred:
        """See L{ITransactionManager.begin}; answered at once."""
        return maybeDeferred(self._begin, owner)

    def _begin(self, owner: Optional[str]) -> Transaction:
        if len(self._open) >= self._limits.max_open_transactions:
            raise LimitExceeded(
                "max_open_transactions",
                self._limits.max_open_transactions,
                len(self._open) + 1,
                too_many=True,
            )
        txn = Transaction(
            secrets.token_urlsafe(12), self._limits, self._store, owner,
            memory=self.staged_memory,
        )
        self._open[txn.id] = txn
        self._timers[txn.id] = self._clock.callLater(self.timeout, self._end, txn.id)
        return txn

    def find(self, txn_id: str, owner: Optional[str] = None) -> Deferred:
        """See L{ITransactionManager.find}; answered at once."""
        txn = self._open.get(txn_id)
        if txn is None or txn.owner != owner:
            return fail(not_found(txn_id))
        self._timers[txn_id].reset(self.timeout)
        return succeed(txn)

    def finish(self, txn_id: str) -> Deferred:
        """Forget C{txn_id} (committed, aborted or conflicted)."""
        timer = self._timers.get(txn_id)
        if timer is not None and timer.active():
            timer.cancel()
        self._end(txn_id)
        return succeed(None)

    def _end(self, txn_id: str) -> None:
        self._timers.pop(txn_id, None)
        txn = self._open.pop(txn_id, None)
        if txn is not None:
            txn.ended = True
            # Its staged bytes are free again (a commit still in flight
            # releases its own when answered).
            txn.staging.discard()

    def abort_all(self) -> None:
        """Forget every open transaction (at shutdown)."""
        for txn_id in list(self._open):
            self.finish(txn_id)
