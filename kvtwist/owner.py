# -*- test-case-name: tests.unit.test_workers_amp -*-
"""
The owner of the store when kvcache serves with C{--workers N}: the process
twistd starts. It opens the store (its thread, group commit, the expiry
sweeper), holds the transactions and the seed's queue, binds every
listening socket and spawns the workers that serve HTTP on them
(docs/architecture.md, "Workers").

  - L{ListeningSockets}: the sockets, bound here once and handed to every
    worker through C{spawnProcess(childFDs=...)}, where the worker adopts
    them (C{adoptStreamPort}).
  - L{OwnerProtocol}: the owner's end of one worker's AMP connection; it
    answers L{kvtwist.amp.Call} from a whitelist (L{Owner.methods}; on
    etcd, where every worker is a node with a store of its own, only
    L{Supervisor.methods}).
  - L{kvtwist.changefeed.ChangeFeed} (its own module): sends every commit
    to every worker and tells when they have applied a revision; the owner
    answers a commit only then, so a GET on any worker after the 2xx sees
    it.
  - L{WorkerPool}: spawns the workers, restarts one that dies, stops them
    all (SIGTERM) before the store closes.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from twisted.application.service import Service
from twisted.internet import protocol
from twisted.internet.defer import Deferred, DeferredList, DeferredLock, fail, maybeDeferred, succeed
from twisted.internet.protocol import connectionDone
from twisted.internet.endpoints import TCP6ServerEndpoint, UNIXServerEndpoint, serverFromString
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from kvtwist.amp import Call, Scrape, error_state
from kvtwist.auth import WriteRights
from kvtwist.changefeed import ChangeFeed
from kvtwist.errors import HistoryUnsupported, KVError, LeasesUnsupported, StoreUnavailable
from kvtwist.events import ChangeHub
from kvtwist.interfaces import (
    IHistoricalStore,
    ILeaseListing,
    ILeasingStore,
    ITransactionManager,
)
from kvtwist.metrics import Metrics, merge_expositions
from kvtwist.model import Change, CommitResult
from kvtwist.store.cache import CachedStore
from kvtwist.store.remote import QUEUE_ID, state_of

log = Logger()

#: Seconds before a dead worker is started again, the first time; each
#: time it dies again soon the wait doubles, up to L{RESTART_MAX_DELAY}, so
#: a worker that cannot start at all is not restarted in a tight loop.
RESTART_DELAY = 0.1
#: The longest wait before a worker that keeps dying is started again.
RESTART_MAX_DELAY = 5.0
#: Seconds a worker must stay up for its next death to wait
#: L{RESTART_DELAY} again.
RESTART_STABLE = 10.0
#: Seconds the workers get to stop after SIGTERM before they are killed.
STOP_TIMEOUT = 10.0
#: The endpoint kinds workers can share (a TLS endpoint's context lives in
#: the process that parsed it).
SHAREABLE = ("tcp", "tcp6", "unix")
#: The file descriptor of a worker's AMP connection; its listening sockets
#: follow.
AMP_FD = 3
#: The most history records one forwarded C{changes} call answers (a
#: commit is never split): a replay pages, so no answer grows with the
#: history a worker asks for.
MAX_REPLAYED = 1000
#: Argument types for L{typed}.
OPTIONAL_STR = (str, type(None))
OPTIONAL_INT = (int, type(None))
NUMBER = (int, float)


def typed(method: Callable[..., Any], *types: Any) -> Callable[..., Any]:
    """
    A whitelist entry calling C{method(*args)} only with exactly one
    argument of each of C{types} (a type or a tuple of them; no entry takes
    a bool, so one is never taken for an int): a worker's call with any
    other arguments fails as unavailable and runs nothing.
    """

    def checked(worker: Any, *args: Any) -> Any:
        if len(args) != len(types) or not all(
            type(arg) is not bool and isinstance(arg, kind) for arg, kind in zip(args, types)
        ):
            raise StoreUnavailable("a worker called %s with arguments of the wrong types" % (method.__name__,))
        return method(*args)

    return checked


class ListeningSockets:
    """
    The listening sockets of C{endpoints}, for C{count} workers: each
    worker gets its own socket for every TCP endpoint, all bound to one
    address with C{SO_REUSEPORT} so the kernel spreads connections evenly
    over the workers; a UNIX endpoint has one socket all of them share.

    The owner keeps them open, never accepting: a worker that dies leaves
    its connections queued for the one that replaces it.

    @raise ValueError: for an endpoint that cannot be shared (TLS, or not
        a server endpoint at all); C{OSError} if a socket cannot be bound.
    """

    def __init__(self, reactor, endpoints: Sequence[str], count: int) -> None:
        self.per_worker: List[List[Tuple[socket.socket, int]]] = [[] for _ in range(count)]
        self.addresses: List[str] = []
        self._paths: List[str] = []
        for description in endpoints:
            kind = description.split(":", 1)[0].strip().lower()
            if kind not in SHAREABLE:
                raise ValueError(
                    "%r cannot be shared by workers: use tcp: or unix: endpoints with "
                    "--workers (TLS in front, or --workers 1)" % (description,)
                )
            endpoint = serverFromString(reactor, description)
            # The endpoints keep what they parsed in private attributes:
            # reading them is how to bind exactly what the string names.
            if isinstance(endpoint, UNIXServerEndpoint):
                self._bind_unix(endpoint._address, endpoint._mode, endpoint._backlog)
            else:
                family = socket.AF_INET6 if isinstance(endpoint, TCP6ServerEndpoint) else socket.AF_INET
                self._bind_tcp(family, endpoint._interface, endpoint._port, endpoint._backlog, count)

    def _bind_tcp(self, family: int, interface: str, port: int, backlog: int, count: int) -> None:
        for worker in self.per_worker:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((interface or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
            # Port 0 picks one port for the first socket; the others join it.
            port = sock.getsockname()[1]
            sock.listen(backlog)
            sock.setblocking(False)
            worker.append((sock, family))
        self.addresses.append("%s:%d" % (interface, port))

    def _bind_unix(self, path: str, mode: int, backlog: int) -> None:
        if os.path.exists(path):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        os.chmod(path, mode)
        sock.listen(backlog)
        sock.setblocking(False)
        for worker in self.per_worker:
            worker.append((sock, socket.AF_UNIX))
        self.addresses.append(path)
        self._paths.append(path)

    def close(self) -> None:
        """Close every socket and remove the UNIX sockets' files (at shutdown)."""
        for worker in self.per_worker:
            for sock, _ in worker:
                sock.close()
        for path in self._paths:
            try:
                os.unlink(path)
            except OSError:
                pass


def _state(view) -> tuple:
    """An L{ITransactionView} as the plain tuple a worker rebuilds it from."""
    return (view.isolated, dict(view.observed), list(view.preconditions), list(view.ops()))


class Supervisor:
    """
    What every worker reaches over AMP whatever the store: its own
    readiness and every process's metrics. On etcd (C{--store etcd://})
    this is all the twistd process does; each worker is a node of its own.

    @ivar methods: the whitelist of L{Call}: method name to C{f(worker,
        *args)}, returning a value or a Deferred.
    """

    #: Called with a worker's protocol when its connection is lost (the
    #: L{WorkerPool} ends that process, so a hung one is replaced).
    on_lost: Optional[Callable[["OwnerProtocol"], None]] = None

    def __init__(self, metrics: Metrics, workers: int) -> None:
        self.metrics = metrics
        self.workers = workers
        self.connected: Dict[int, "OwnerProtocol"] = {}
        self.ready: Set[int] = set()
        self.methods: Dict[str, Callable[..., Any]] = {
            "ready": self.worker_ready,
            "metrics": self.exposition,
        }

    def connected_worker(self, worker: "OwnerProtocol") -> None:
        self.connected[worker.index] = worker

    def lost_worker(self, worker: "OwnerProtocol") -> None:
        if self.connected.get(worker.index) is worker:
            del self.connected[worker.index]
            self.ready.discard(worker.index)
        if self.on_lost is not None:
            self.on_lost(worker)

    def worker_ready(self, worker: "OwnerProtocol") -> None:
        self.ready.add(worker.index)
        log.info("kvcache worker {index} ready", index=worker.index)

    def exposition(self, worker: Optional["OwnerProtocol"]) -> Deferred:
        """Every process's metrics in one exposition, labelled by process."""
        indexes = sorted(self.connected)
        scrapes = [self.connected[i].callRemote(Scrape) for i in indexes]

        def merge(results: list) -> bytes:
            texts = {"owner": self.metrics.exposition()}
            for index, (ok, box) in zip(indexes, results):
                if ok:
                    texts[str(index)] = box["text"]
            return merge_expositions(texts)

        return DeferredList(scrapes, consumeErrors=True).addCallback(merge)


class Owner(Supervisor):
    """
    The owner of the store: besides L{Supervisor}'s, the workers reach the
    store (the whole stack: its L{CachedStore}, whose listeners include the
    change feed) and the transactions.
    """

    def __init__(
        self,
        store: CachedStore,
        transactions: ITransactionManager,
        hub: ChangeHub,
        metrics: Metrics,
        workers: int,
    ) -> None:
        super().__init__(metrics, workers)
        self.store = store
        self.transactions = transactions
        self.hub = hub
        self.feed = ChangeFeed(store)
        # Transactions held for a worker's commit (see txn_hold).
        self._locks: Dict[str, DeferredLock] = {}
        self.methods.update({
            "hello": self.hello,
            "ping": self.ping,
            "get": lambda worker, key: store.get(key),
            "get_many": lambda worker, keys: store.get_many(keys),
            "get_linearizable": lambda worker, key: store.get_linearizable(key),
            "list": lambda worker, *args: store.list(*args),
            "commit": lambda worker, ops, checks: self._acknowledged(store.commit(ops, checks), worker),
            "delete_prefix": lambda worker, prefix, max_keys: self._acknowledged(
                store.delete_prefix(prefix, max_keys), worker
            ),
            "txn_begin": lambda worker, owner: transactions.begin(owner).addCallback(lambda txn: txn.id),
            "txn_find": lambda worker, txn_id, owner: self._txn(txn_id, owner).addCallback(
                lambda txn: txn.isolated
            ),
            "txn_view": lambda worker, txn_id, owner: self._txn(txn_id, owner)
            .addCallback(lambda txn: txn.view())
            .addCallback(_state),
            "txn_record": self.txn_record,
            "txn_hold": self.txn_hold,
            "txn_let_go": self.txn_let_go,
            "txn_commit": self.txn_commit,
            "txn_commit_as": self.txn_commit_as,
            "txn_finish": lambda worker, txn_id: transactions.finish(txn_id),
        })
        if IHistoricalStore.providedBy(store):
            self.methods.update({
                "get_at": typed(store.get_at, str, int),
                "list_at": typed(store.list_at, str, OPTIONAL_STR, int, int, OPTIONAL_INT),
                "changes": typed(self.changes, int, int, int),
                "compact": typed(self.compact, int, int),
            })
        else:
            self.methods.update(dict.fromkeys(("get_at", "list_at", "changes", "compact"), _refuse(HistoryUnsupported)))
        if ILeasingStore.providedBy(store):
            self.methods.update({
                "grant": typed(self._stateful(store.grant), NUMBER, int),
                "keepalive": typed(self._stateful(store.keepalive), int),
                "lease": typed(store.lease, int),
                "revoke": typed(self._stateful(store.revoke, committed=True), int),
                "expired_leases": typed(store.expired_leases, int),
                "expire_lease": typed(self._stateful(store.expire_lease, committed=True), int),
            })
        else:
            self.methods.update(
                dict.fromkeys(
                    ("grant", "keepalive", "lease", "revoke", "expired_leases", "expire_lease"),
                    _refuse(LeasesUnsupported),
                )
            )
        if ILeaseListing.providedBy(store):
            self.methods["held_leases"] = typed(store.held_leases, int)
        else:
            self.methods["held_leases"] = _refuse(LeasesUnsupported)

    # -- the workers ---------------------------------------------------------

    def lost_worker(self, worker: "OwnerProtocol") -> None:
        super().lost_worker(worker)
        self.feed.detach(worker)
        for txn_id in list(worker.held):
            self.txn_let_go(worker, txn_id)

    def hello(self, worker: "OwnerProtocol") -> Tuple[int, List[CommitResult], Dict[str, Any]]:
        """
        A worker joins: from now on it gets every commit. Answered: the
        revision its history starts after, and the kept commits, which it
        replays (so watches resume the same on every worker, and it ends
        at the owner's revision); and the store's attributes a worker
        mirrors (L{kvtwist.store.remote.STATE}).
        """
        self.feed.attach(worker, self.store.revision)
        history = [
            CommitResult(revision, tuple(Change(e.kind, e.key, e.entry, None) for e in events))
            for revision, events in self.hub.history()
        ]
        return self.hub.horizon, history, state_of(self.store)

    def ping(self, worker: Optional["OwnerProtocol"]) -> Deferred:
        """Ready when the store is and every worker serves."""
        missing = sorted(set(range(self.workers)) - self.ready)
        if missing:
            return fail(StoreUnavailable("worker(s) %s not serving yet" % (", ".join(map(str, missing)),)))
        return self.store.ping()

    # -- history and leases --------------------------------------------------

    def changes(self, after: int, upto: int, max_records: int) -> Deferred:
        """The store's C{changes}, at most L{MAX_REPLAYED} records a call."""
        return self.store.changes(after, upto, max(1, min(max_records, MAX_REPLAYED)))

    def compact(self, revision: int, max_records: int) -> Deferred:
        """
        One compaction step, answered with the store's attributes after
        it once every worker has them too (L{ChangeFeed.publish_state}):
        after the 2xx, a resume from before it is refused on any worker.
        """
        return self._stateful(self.store.compact)(revision, max_records).addCallback(self._published)

    def _published(self, answer: object) -> Deferred:
        return self.feed.publish_state().addCallback(lambda _: answer)

    def _stateful(self, method: Callable[..., Deferred], committed: bool = False) -> Callable[..., Deferred]:
        """
        C{method}, answered with C{(result, state)}: its result and the
        store's attributes after it (L{kvtwist.store.remote.STATE}), for
        the caller to read its own change at once. C{committed}: the result
        is a commit's (or L{None}), answered once every worker applied it.
        """

        def call(*args: Any) -> Deferred:
            d = method(*args)
            if committed:
                d.addCallback(self._applied_or_none)
            return d.addCallback(lambda result: (result, state_of(self.store)))

        call.__name__ = method.__name__
        return call

    def _applied_or_none(self, result: Optional[CommitResult]) -> Deferred:
        if result is None:
            return succeed(None)
        return self.feed.applied(result.revision).addCallback(lambda _: result)

    # -- commits and transactions --------------------------------------------

    def _acknowledged(self, d: Deferred, worker: Optional["OwnerProtocol"]) -> Deferred:
        """
        C{d}'s commit result, once every worker has applied it: every
        worker but C{worker}, the one it is answered to, which reads the
        commit's L{kvtwist.amp.Feed} before the answer (L{ChangeFeed.applied}).
        """

        def wait(result: CommitResult) -> Deferred:
            return self.feed.applied(result.revision, worker).addCallback(lambda _: result)

        return d.addCallback(wait)

    def _txn(self, txn_id: str, owner: Optional[str]) -> Deferred:
        if txn_id == QUEUE_ID:
            return succeed(self.transactions.queue)
        return self.transactions.find(txn_id, owner)

    def _lock(self, txn_id: str) -> DeferredLock:
        lock = self._locks.get(txn_id)
        if lock is None:
            lock = self._locks[txn_id] = DeferredLock()
        return lock

    def _locked(self, txn_id: str, f: Callable[..., Any], *args: Any) -> Deferred:
        """C{f(*args)} once no worker holds C{txn_id}."""
        return self._lock(txn_id).run(f, *args).addBoth(self._forget_lock, txn_id)

    def _forget_lock(self, result: object, txn_id: str) -> object:
        # A lock nobody holds or waits for goes: one per open transaction.
        lock = self._locks.get(txn_id)
        if lock is not None and not lock.locked and not lock.waiting:
            del self._locks[txn_id]
        return result

    def txn_record(self, worker, txn_id, owner, ops, observed, preconditions) -> Deferred:
        """Stage into the transaction, once no worker holds it for a commit."""

        def record(_: object) -> Deferred:
            return self._txn(txn_id, owner).addCallback(lambda txn: txn.record(ops, observed, preconditions))

        return self._locked(txn_id, record, None).addCallback(_state)

    def txn_hold(self, worker: "OwnerProtocol", txn_id: str, owner: Optional[str]) -> Deferred:
        """
        Hold the transaction for C{worker}'s commit: nothing is staged into
        it until C{worker} commits or lets go (or is lost), so the ops it
        vets are exactly the ops it commits. Answered: the state held.
        """
        lock = self._lock(txn_id)

        def held(_: object) -> Deferred:
            worker.held.add(txn_id)
            d = self._txn(txn_id, owner).addCallback(lambda txn: txn.view()).addCallback(_state)
            return d.addErrback(self._let_go_failing, worker, txn_id)

        return lock.acquire().addCallback(held)

    def _let_go_failing(self, reason: Failure, worker: "OwnerProtocol", txn_id: str) -> Failure:
        self.txn_let_go(worker, txn_id)
        return reason

    def txn_let_go(self, worker: "OwnerProtocol", txn_id: str) -> None:
        """Stop holding the transaction (its commit was refused, or C{worker} is lost)."""
        if txn_id in worker.held:
            worker.held.discard(txn_id)
            self._lock(txn_id).release()
            self._forget_lock(None, txn_id)

    def txn_commit(self, worker: "OwnerProtocol", txn_id: str, owner: Optional[str]) -> Deferred:
        """
        Commit the transaction: the one C{worker} holds (L{txn_hold}, then
        let go as soon as the commit has taken the staged ops), or, if it
        holds none, whatever is staged.
        """
        if txn_id in worker.held:
            d = self._commit(worker, txn_id, owner)
            self.txn_let_go(worker, txn_id)
            return d
        return self._commit_locked(worker, txn_id, owner)

    def txn_commit_as(self, worker: "OwnerProtocol", txn_id: str, owner: Optional[str], name: str, write: Any) -> Deferred:
        """
        Commit the transaction if the token C{name}, with the write
        prefixes C{write}, may write every key staged
        (L{kvtwist.auth.WriteRights}, run here: one call, no hold).
        """
        if not (isinstance(name, str) and isinstance(write, tuple) and all(isinstance(p, str) for p in write)):
            return fail(StoreUnavailable("a worker called txn_commit_as with arguments of the wrong types"))
        if txn_id in worker.held:
            return fail(StoreUnavailable("a worker called txn_commit_as on a transaction it holds"))
        return self._commit_locked(worker, txn_id, owner, WriteRights(name, write))

    def _commit_locked(
        self, worker: "OwnerProtocol", txn_id: str, owner: Optional[str], vet: Optional[WriteRights] = None
    ) -> Deferred:
        """L{_commit} under the transaction's lock, taken for no longer than the commit takes the staged ops."""
        lock = self._lock(txn_id)

        def take(_: object) -> Deferred:
            # Held only while the commit takes the staged ops, not while it
            # syncs: commits of the queue overlap, as in one process.
            d = self._commit(worker, txn_id, owner, vet)
            lock.release()
            self._forget_lock(None, txn_id)
            return d

        return lock.acquire().addCallback(take)

    def _commit(self, worker, txn_id: str, owner: Optional[str], vet: Optional[WriteRights] = None) -> Deferred:
        # The transaction's commit takes the staged ops before it returns,
        # so the hold may end as soon as it is called.
        committed = self._txn(txn_id, owner).addCallback(lambda txn: txn.commit(vet))
        return self._acknowledged(committed, worker)


def _refuse(error: Callable[[], KVError]) -> Callable[..., Any]:
    """A whitelist entry for an ability the owner's store lacks: C{error}."""

    def refuse(worker: Any, *args: Any) -> Deferred:
        return fail(error())

    return refuse


class OwnerProbes:
    """
    What the owner's own C{--ops-listen} probes read: ready when the store
    is and every worker serves (L{Owner.ping}), the metrics of every
    process (L{Supervisor.exposition}).
    """

    def __init__(self, owner: Owner) -> None:
        self._owner = owner

    @property
    def revision(self) -> int:
        return self._owner.store.revision

    def ping(self) -> Deferred:
        return self._owner.ping(None)

    def exposition(self) -> Deferred:
        return self._owner.exposition(None)


class OwnerProtocol(amp.AMP):
    """The owner's end of worker C{index}'s AMP connection."""

    def __init__(self, owner: Supervisor, index: int) -> None:
        super().__init__()
        self.owner = owner
        self.index = index
        #: The transactions held for this worker's commits.
        self.held: Set[str] = set()

    def connectionMade(self) -> None:
        super().connectionMade()
        self.owner.connected_worker(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.owner.lost_worker(self)

    @Call.responder
    def call(self, call: Any) -> Deferred:
        method, args = call if isinstance(call, tuple) and len(call) == 2 else (None, ())
        handler = self.owner.methods.get(method) if isinstance(method, str) else None
        if handler is None or not isinstance(args, tuple):
            d = fail(StoreUnavailable("the owner does not answer %r" % (method,)))
        else:
            d = maybeDeferred(handler, self, *args)
        return d.addCallbacks(lambda result: {"answer": (True, result)}, self._failed)

    def _failed(self, reason) -> Dict[str, Any]:
        if reason.check(KVError):
            return {"answer": (False, error_state(reason.value))}
        log.failure("a worker's call failed", reason)
        return {"answer": (False, error_state(StoreUnavailable("the store failed; see the owner's log")))}


class _WorkerProcess(protocol.ProcessProtocol):
    """One worker process: tells the pool when it ends."""

    def __init__(self, pool: "WorkerPool", index: int) -> None:
        self.pool = pool
        self.index = index
        self.ended: Deferred = Deferred()

    def processEnded(self, reason) -> None:
        self.ended.callback(None)
        self.pool.ended(self)


class WorkerPool(Service):
    """
    Spawns C{owner.workers} workers (C{python -m kvtwist.worker}) over
    C{sockets}, restarts one that dies, and stops them all on shutdown.

    @param given: the command-line settings, passed on so that each worker
        resolves the same configuration (with the same environment).
    """

    name: Optional[str] = "kvtwist-workers"  # type: ignore[assignment]  # Service declares it None

    def __init__(self, reactor, owner: Supervisor, sockets: ListeningSockets, given: Dict[str, Any]) -> None:
        self._reactor = reactor
        self._owner = owner
        self._sockets = sockets
        self._given = given
        self.processes: Dict[int, _WorkerProcess] = {}
        self.transports: Dict[int, Any] = {}
        self.protocols: Dict[int, OwnerProtocol] = {}
        self.starts = 0
        #: Each worker's last start (the reactor's clock) and the wait
        #: before its next restart (see L{restart_delay}).
        self._started_at: Dict[int, float] = {}
        self._delays: Dict[int, float] = {}
        owner.on_lost = self.lost

    def startService(self) -> None:
        super().startService()
        log.info(
            "kvcache: {count} workers starting on {addresses}",
            count=self._owner.workers,
            addresses=", ".join(self._sockets.addresses),
        )
        for index in range(self._owner.workers):
            self.spawn(index)

    def spawn(self, index: int) -> None:
        """Start worker C{index}, with its AMP socketpair and listening sockets."""
        if not self.running:
            return
        ours, theirs = socket.socketpair()
        listening = self._sockets.per_worker[index]
        child_fds: Dict[int, Any] = {0: "w", 1: 1, 2: 2, AMP_FD: theirs.fileno()}
        described = []
        for offset, (sock, family) in enumerate(listening):
            fd = AMP_FD + 1 + offset
            child_fds[fd] = sock.fileno()
            described.append("%d:%d" % (fd, family))
        args = [
            sys.executable,
            "-m",
            "kvtwist.worker",
            "--index",
            str(index),
            "--given",
            json.dumps(self._given),
        ] + ["--socket=" + d for d in described]
        process = _WorkerProcess(self, index)
        self.processes[index] = process
        self.transports[index] = self._reactor.spawnProcess(
            process, sys.executable, args, env=dict(os.environ), childFDs=child_fds
        )
        self.starts += 1
        self._started_at[index] = self._reactor.seconds()
        theirs.close()
        amp_protocol = self.protocols[index] = OwnerProtocol(self._owner, index)
        factory = protocol.Factory.forProtocol(lambda: amp_protocol)
        self._reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, factory)
        ours.close()

    def lost(self, worker: OwnerProtocol) -> None:
        """
        A worker's AMP connection is gone: a worker without one serves
        nobody well (a hung one holds its share of connections), so its
        process is killed, and started again like any that dies.
        """
        transport = self.transports.get(worker.index)
        if self.protocols.get(worker.index) is worker and transport is not None and self.running:
            try:
                transport.signalProcess("KILL")
            except Exception:
                pass

    def ended(self, process: _WorkerProcess) -> None:
        """A worker exited: start another in its place, unless stopping."""
        if self.processes.get(process.index) is process:
            del self.processes[process.index]
            self.transports.pop(process.index, None)
        if self.running:
            delay = self.restart_delay(process.index)
            log.warn(
                "kvcache worker {index} died; starting it again in {delay:.1f} s", index=process.index, delay=delay
            )
            self._reactor.callLater(delay, self.spawn, process.index)

    def restart_delay(self, index: int) -> float:
        """
        The seconds to wait before starting worker C{index} again, now that
        it died: L{RESTART_DELAY} if it had stayed up L{RESTART_STABLE}
        seconds (or never died before), else twice the last wait, at most
        L{RESTART_MAX_DELAY}.
        """
        up = self._reactor.seconds() - self._started_at.get(index, float("-inf"))
        last = self._delays.get(index)
        if last is None or up >= RESTART_STABLE:
            delay = RESTART_DELAY
        else:
            delay = min(last * 2, RESTART_MAX_DELAY)
        self._delays[index] = delay
        return delay

    def pids(self) -> List[int]:
        """The worker processes' ids (for tests and operators)."""
        return [t.pid for t in self.transports.values() if t.pid is not None]

    def stopService(self) -> Deferred:
        super().stopService()
        ended = [process.ended for process in self.processes.values()]
        for index, transport in list(self.transports.items()):
            try:
                transport.signalProcess("TERM")
            except Exception:
                pass
        timer = self._reactor.callLater(STOP_TIMEOUT, self._kill)

        def done(_: object) -> None:
            if timer.active():
                timer.cancel()
            self._sockets.close()

        return DeferredList(ended).addCallback(done)

    def _kill(self) -> None:
        for transport in list(self.transports.values()):
            try:
                transport.signalProcess("KILL")
            except Exception:
                pass
