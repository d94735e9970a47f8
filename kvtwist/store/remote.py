# -*- test-case-name: tests.unit.test_workers_amp -*-
"""
A worker's view of the store its owner process holds (C{--workers N}).

L{RemoteStore} is an L{IKeyValueStore} whose every method is one L{Call}
to the owner over AMP; the worker puts its L{kvtwist.store.cache.CachedStore}
and L{kvtwist.events.ChangeHub} in front of it, as one process does over
its own store. The owner's change feed arrives as L{Feed} boxes
(L{WorkerProtocol}), which L{RemoteStore.apply} passes to the listeners
before the box is answered: the owner acknowledges a commit only once every
worker has answered, so a GET on any worker after a commit's 2xx sees it.

L{RemoteTransactions} is an L{ITransactionManager} whose transactions and
shared queue live in the owner, so one begun on a worker can be staged and
committed through another.

History and leases (L{IHistoricalStore}, L{ILeasingStore}) are forwarded
the same way. Their attributes read on the reactor thread without I/O
(C{compact_revision}, C{history_size}, C{lease_count}, C{next_deadline},
and C{key_count}) are the owner store's, mirrored (L{STATE}): every L{Feed}
brings them as of its commits, and so does the answer to each call that
changes them without a commit (a compaction, a grant, a keepalive), so a
worker reads its own changes at once and the others' by their next feed.

Forwarding a new store method is one line here (C{self._call("name", ...)})
and one entry in the owner's whitelist (L{kvtwist.owner.OwnerProtocol}).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.protocol import connectionDone
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from kvtwist.amp import Call, Feed, Scrape, error_from_state
from kvtwist.auth import WriteRights
from kvtwist.errors import ConflictError, KVError, StoreUnavailable
from kvtwist.interfaces import (
    ICountedStore,
    IHistoricalStore,
    IKeyValueStore,
    ILeaseListing,
    ILeasingStore,
    ILinearizableReads,
    ITransaction,
    ITransactionManager,
    ITransactionView,
)
from kvtwist.model import Check, CheckFailure, CommitResult, DeletePrefix, Op
from kvtwist.transactions import EndsAfterCommit

#: The id of the seed's shared queue in L{Call}s.
QUEUE_ID = "shared"

#: The owner store's attributes a worker mirrors, with their value for a
#: store that keeps none.
STATE: Dict[str, Any] = {
    "key_count": 0,
    "compact_revision": 0,
    "history_size": 0,
    "lease_count": 0,
    "next_deadline": None,
}


def state_of(store: IKeyValueStore) -> Dict[str, Any]:
    """
    C{store}'s L{STATE} attributes now, for a worker to mirror: those of
    the capabilities it declares, the others as a store without them reads.
    """
    state = dict(STATE)
    if ICountedStore.providedBy(store):
        state["key_count"] = ICountedStore(store).key_count
    if IHistoricalStore.providedBy(store):
        history = IHistoricalStore(store)
        state.update(compact_revision=history.compact_revision, history_size=history.history_size)
    if ILeasingStore.providedBy(store):
        leasing = ILeasingStore(store)
        state.update(lease_count=leasing.lease_count, next_deadline=leasing.next_deadline)
    return state


class WorkerProtocol(amp.AMP):
    """
    The worker's end of the AMP connection to its owner: answers L{Feed}
    into C{store} and L{Scrape} with C{scrape()}, and calls L{lost} when
    the owner goes away.
    """

    def __init__(self, scrape: Callable[[], bytes] = lambda: b"") -> None:
        super().__init__()
        self.store: Optional["RemoteStore"] = None
        self._scrape = scrape
        self.lost: Deferred = Deferred()

    @Feed.responder
    def feed(self, feed: tuple) -> Dict[str, Any]:
        results, state = feed
        if self.store is not None:
            self.store.apply_state(state)
            self.store.apply(results)
        return {}

    @Scrape.responder
    def scrape(self) -> Dict[str, Any]:
        return {"text": self._scrape()}

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        if self.store is not None:
            self.store.closed = True
        self.lost.callback(None)


def call(protocol: amp.AMP, method: str, *args: Any) -> Deferred:
    """
    Run C{method} in the owner: a Deferred firing with its result, or
    failing with its domain error (L{kvtwist.errors.StoreUnavailable} if
    the owner is gone).
    """

    def answered(box: Dict[str, Any]) -> Any:
        ok, result = box["answer"]
        if ok:
            return result
        raise error_from_state(*result)

    def lost(reason):
        if reason.check(KVError):
            return reason
        # The connection closed, or the owner failed unexpectedly: no
        # traceback crosses, the request is answered 503.
        raise StoreUnavailable("the store's owner is unreachable: %s" % (reason.getErrorMessage(),))

    try:
        d = protocol.callRemote(Call, call=(method, args))
    except Exception as e:
        return fail(StoreUnavailable("the store's owner is unreachable: %s" % (e,)))
    # Handed over to a Deferred of our own: AMP treats a failure still on
    # its Deferred when the answer arrives as unhandled and drops the
    # connection, and a domain error (a conflict) is an ordinary answer.
    outcome: Deferred = Deferred()
    d.addCallbacks(answered, lost).addBoth(_hand_over, outcome)
    return outcome


def _hand_over(result: Any, outcome: Deferred) -> None:
    if isinstance(result, Failure):
        outcome.errback(result)
    else:
        outcome.callback(result)


@implementer(IHistoricalStore, ILeasingStore, ILeaseListing, ICountedStore, ILinearizableReads)
class RemoteStore:
    """
    The owner's store, through C{protocol} (reactor thread only). The owner
    holds a local store (memory or shelve: with C{--store etcd://} every
    worker is a node of its own), which keeps history and grants leases.

    @ivar revision: the revision of the last commit the owner's feed
        brought (the owner's revision when the worker joined, before any).
    @ivar key_count: the owner's store's keys, as of that commit; so are
        the other L{STATE} attributes, or as of the last call of this
        worker's that changed them.
    """

    def __init__(self, protocol: WorkerProtocol, clock, revision: int = 0) -> None:
        self._protocol = protocol
        self.clock = clock
        self.revision = revision
        self.key_count = 0
        self.compact_revision = 0
        self.history_size = 0
        self.lease_count = 0
        self.next_deadline: Optional[float] = None
        self.closed = False
        self._listeners: List[Callable[[CommitResult], None]] = []
        protocol.store = self

    def _call(self, method: str, *args: Any) -> Deferred:
        if self.closed:
            return fail(StoreUnavailable("the store's owner is gone"))
        return call(self._protocol, method, *args)

    def _call_stateful(self, method: str, *args: Any) -> Deferred:
        """
        C{_call} for a method the owner answers with C{(result, state)}:
        the mirrored L{STATE} is brought up to date before C{result} is.
        """

        def unpack(answer: tuple) -> Any:
            result, state = answer
            self.apply_state(state)
            return result

        return self._call(method, *args).addCallback(unpack)

    def join(self, hello: tuple) -> None:
        """Start from the owner's C{hello}: its history, replayed, and L{STATE}."""
        horizon, history, state = hello
        self.revision = horizon
        self.apply(history)
        self.apply_state(state)

    def apply_state(self, state: Mapping[str, Any]) -> None:
        """Mirror the owner store's L{STATE} attributes (others are ignored)."""
        for name, value in state.items():
            if name in STATE:
                setattr(self, name, value)

    def apply(self, results: Iterable[CommitResult]) -> None:
        """The owner's commits, in order: tell every listener."""
        for result in results:
            if result.revision > self.revision:
                self.revision = result.revision
            for listener in self._listeners:
                listener(result)

    # -- IKeyValueStore ------------------------------------------------------

    def open(self) -> Deferred:
        return succeed(None)

    def close(self) -> Deferred:
        self.closed = True
        return succeed(None)

    def get(self, key: str) -> Deferred:
        return self._call("get", key)

    def get_many(self, keys: Iterable[str]) -> Deferred:
        return self._call("get_many", list(keys))

    def get_linearizable(self, key: str) -> Deferred:
        """Read C{key} from the owner's store itself, never from a cache."""
        return self._call("get_linearizable", key)

    def list(self, prefix: str, after: Optional[str], limit: int, max_bytes: Optional[int] = None) -> Deferred:
        return self._call("list", prefix, after, limit, max_bytes)

    def commit(self, ops: Sequence[Op], checks: Sequence[Check] = ()) -> Deferred:
        # A check's tag is opaque to the store and may be any object of the
        # caller's: it stays here, and the owner sees the check's index.
        checks = list(checks)
        sent = [replace(check, tag=index) for index, check in enumerate(checks)]

        def retag(reason):
            if reason.check(ConflictError):
                reason.value.failures = [
                    CheckFailure(replace(f.check, tag=checks[f.check.tag].tag), f.actual)
                    for f in reason.value.failures
                ]
            return reason

        return self._call("commit", list(ops), sent).addErrback(retag)

    def delete_prefix(self, prefix: str, max_keys: int) -> Deferred:
        return self._call("delete_prefix", prefix, max_keys)

    def add_listener(self, listener: Callable[[CommitResult], None]) -> None:
        self._listeners.append(listener)

    def expired(self, limit: int) -> Deferred:
        # The owner's sweeper removes expired keys; workers never sweep.
        return succeed([])

    def ping(self) -> Deferred:
        return self._call("ping")

    # -- IHistoricalStore ----------------------------------------------------

    def get_at(self, key: str, revision: int) -> Deferred:
        return self._call("get_at", key, revision)

    def list_at(
        self, prefix: str, after: Optional[str], limit: int, revision: int, max_bytes: Optional[int] = None
    ) -> Deferred:
        return self._call("list_at", prefix, after, limit, revision, max_bytes)

    def changes(self, after: int, upto: int, max_records: int) -> Deferred:
        """
        See L{IHistoricalStore.changes}: the owner answers at most
        L{kvtwist.owner.MAX_REPLAYED} records a call (a commit is never
        split), so a caller pages as it does over any store.
        """
        return self._call("changes", after, upto, max_records)

    def compact(self, revision: int, max_records: int) -> Deferred:
        return self._call_stateful("compact", revision, max_records)

    # -- ILeasingStore -------------------------------------------------------

    def grant(self, ttl: float, max_leases: int) -> Deferred:
        return self._call_stateful("grant", ttl, max_leases)

    def keepalive(self, lease_id: int) -> Deferred:
        return self._call_stateful("keepalive", lease_id)

    def lease(self, lease_id: int) -> Deferred:
        return self._call("lease", lease_id)

    def revoke(self, lease_id: int) -> Deferred:
        return self._call_stateful("revoke", lease_id)

    def held_leases(self, limit: int) -> Deferred:
        return self._call("held_leases", limit)

    def expired_leases(self, limit: int) -> Deferred:
        # Workers never sweep (the owner's sweeper expires leases), but
        # what is due may still be asked.
        return self._call("expired_leases", limit)

    def expire_lease(self, lease_id: int) -> Deferred:
        return self._call_stateful("expire_lease", lease_id)


@implementer(ITransactionView)
class TransactionSnapshot:
    """A transaction's state as the owner answered it (read-only)."""

    def __init__(self, isolated: bool, observed: Mapping[str, int], preconditions: Sequence[Check], ops: Sequence[Op]):
        self.isolated = isolated
        self.observed = dict(observed)
        self.preconditions = list(preconditions)
        self._ops = list(ops)
        # Only ops with a key are staged (a transaction never stages a
        # delete by prefix).
        self._by_key = {op.key: op for op in self._ops if not isinstance(op, DeletePrefix)}

    def __len__(self) -> int:
        return len(self._ops)

    def staged(self, key: str) -> Optional[Op]:
        return self._by_key.get(key)

    def ops(self) -> List[Op]:
        return list(self._ops)


def snapshot(state: tuple) -> TransactionSnapshot:
    """The L{TransactionSnapshot} of the owner's C{(isolated, observed, preconditions, ops)}."""
    return TransactionSnapshot(*state)


@implementer(ITransaction)
class RemoteTransaction:
    """One transaction (or the shared queue) held by the owner."""

    def __init__(self, store: RemoteStore, txn_id: str, owner: Optional[str], isolated: bool) -> None:
        self._store = store
        self.id = txn_id
        self.owner = owner
        self.isolated = isolated

    def view(self) -> Deferred:
        return self._store._call("txn_view", self.id, self.owner).addCallback(snapshot)

    def record(self, ops: Iterable[Op] = (), observed: Optional[Mapping[str, int]] = None, preconditions: Iterable[Check] = ()) -> Deferred:
        return self._store._call(
            "txn_record", self.id, self.owner, list(ops), dict(observed or {}), list(preconditions)
        ).addCallback(snapshot)

    @inlineCallbacks
    def commit(self, vet: Optional[Callable[[Sequence[Op]], None]] = None):
        """
        See L{ITransaction.commit}: C{vet} runs here, on the ops the owner
        holds for this commit (nothing is staged into the transaction
        meanwhile), and the owner commits exactly those.
        """
        if vet is None:
            return (yield self._store._call("txn_commit", self.id, self.owner))
        if isinstance(vet, WriteRights):
            # Plain data: the owner vets and commits in one call.
            return (yield self._store._call("txn_commit_as", self.id, self.owner, vet.name, tuple(vet.write)))
        view = snapshot((yield self._store._call("txn_hold", self.id, self.owner)))
        try:
            vet(view.ops())
        except BaseException:
            # Refused here: the owner stops holding it (a failure to say so
            # ends with this worker's connection, which lets go too).
            self._store._call("txn_let_go", self.id).addErrback(lambda _: None)
            raise
        return (yield self._store._call("txn_commit", self.id, self.owner))


@implementer(ITransactionManager)
class RemoteTransactions(EndsAfterCommit):
    """The owner's transactions and shared queue, through C{store}."""

    def __init__(self, store: RemoteStore, timeout: float) -> None:
        self._store = store
        self.timeout = timeout
        self.queue = RemoteTransaction(store, QUEUE_ID, None, isolated=False)

    def __len__(self) -> int:
        # Counted where they live: the owner's own metrics carry the gauge.
        return 0

    def begin(self, owner: Optional[str] = None) -> Deferred:
        return self._store._call("txn_begin", owner).addCallback(
            lambda txn_id: RemoteTransaction(self._store, txn_id, owner, isolated=True)
        )

    def find(self, txn_id: str, owner: Optional[str] = None) -> Deferred:
        return self._store._call("txn_find", txn_id, owner).addCallback(
            lambda isolated: RemoteTransaction(self._store, txn_id, owner, isolated)
        )

    def finish(self, txn_id: str) -> Deferred:
        return self._store._call("txn_finish", txn_id)

    def abort_all(self) -> None:
        """Nothing to forget here: the owner holds every transaction."""
