"""
The owner and its workers over AMP, in memory (C{twisted.test.iosim}): the
wire values, the store and transaction contracts through a worker's
L{RemoteStore} and L{RemoteTransactions}, and read-your-writes across
workers (a commit is answered only once every worker applied it).
"""

from __future__ import annotations

import pickle

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from kvtwist import amp as wire
from kvtwist import owner as owner_module
from kvtwist.auth import WriteRights
from kvtwist.errors import ConflictError, Forbidden, LimitExceeded, StoreUnavailable
from kvtwist.events import ChangeHub
from kvtwist.limits import Limits
from kvtwist.metrics import Metrics
from kvtwist.interfaces import ICountedStore, IHistoricalStore, ILeaseListing, ILeasingStore, ILinearizableReads, IReadCache
from kvtwist.model import Check, CheckFailure, Entry, Put
from kvtwist.changefeed import FEED_TIMEOUT, ChangeFeed
from kvtwist.owner import Owner, OwnerProtocol
from kvtwist.store.cache import CachedStore
from kvtwist.store.remote import STATE, RemoteStore, RemoteTransactions, WorkerProtocol, call, state_of
from kvtwist.sweeper import Sweeper
from kvtwist.testing import MemoryStore
from kvtwist.transactions import TransactionManager
from tests.helpers.capability_fakes import UndeclaredExtras
from tests.contract.store_contract import StoreContract
from tests.contract.txn_contract import TransactionContract

CACHE = 1 << 20


class Cluster:
    """
    An owner over a L{MemoryStore} and C{workers} workers, each connected
    to it by an in-memory AMP connection with a pump of its own.
    """

    def __init__(self, workers: int = 1, **limits) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.limits = Limits(**limits)
        self.store = CachedStore(MemoryStore(self.clock), CACHE)
        self.transactions = TransactionManager(self.clock, self.limits, self.store)
        self.hub = ChangeHub(self.store, 100)
        self.owner = Owner(self.store, self.transactions, self.hub, Metrics(process=False), workers)
        self.pumps = []
        self.remotes = []
        self.caches = []
        for index in range(workers):
            self.add_worker(index)

    def add_worker(self, index: int) -> None:
        """Connect worker C{index} and say hello, as L{kvtwist.worker.Worker} does."""
        worker = WorkerProtocol(scrape=lambda: b"kvtwist_up 1.0\n")
        _, _, pump = iosim.connectedServerAndClient(
            lambda: OwnerProtocol(self.owner, index), lambda: worker
        )
        remote = RemoteStore(worker, self.clock)
        cache = CachedStore(remote, CACHE)
        self.pumps.append(pump)
        self.remotes.append(remote)
        self.caches.append(cache)
        remote.join(self.result(call(worker, "hello")))
        self.result(call(worker, "ready"))

    def flush(self) -> None:
        """Move every byte waiting on any connection."""
        for _ in range(100):
            if not any([pump.flush() for pump in self.pumps]):
                return

    def settle(self, d: Deferred) -> Deferred:
        """Pump until C{d} has fired; C{d}."""
        for _ in range(1000):
            if d.called:
                break
            self.flush()
        # What the answer did not wait for (the committer's own feed
        # acknowledgement) arrives too, as it would before a clock moves.
        self.flush()
        return d

    def result(self, d: Deferred):
        """C{d}'s result, after pumping (it must succeed)."""
        box = []
        self.settle(d).addBoth(box.append)
        assert box, "never answered"
        if hasattr(box[0], "raiseException"):
            box[0].raiseException()
        return box[0]


class WireTests(SynchronousTestCase):
    """Values cross as restricted pickles, of any size."""

    def test_model_values_round_trip(self):
        """Entries, checks and failures come back equal."""
        value = [Entry("k", b"v" * 10, "text/plain", 1, 2, 3, 4.5), CheckFailure(Check.absent("k", tag=0), 7)]
        self.assertEqual(wire.loads(wire.dumps(value)), value)

    def test_other_classes_refused(self):
        """A pickle naming any class outside the model is refused, not built."""
        with self.assertRaises(pickle.UnpicklingError):
            wire.loads(pickle.dumps(Limits()))

    def test_large_values_are_chunked(self):
        """A value past AMP's 64 KiB limit is split over keys and joined again."""
        argument = wire.Pickled()
        strings = {}
        big = b"x" * (3 * wire.CHUNK)
        argument.toBox(b"args", strings, {"args": big}, None)
        self.assertGreater(len(strings), 3)
        self.assertTrue(all(len(value) <= wire.CHUNK for value in strings.values()))
        objects = {}
        argument.fromBox(b"args", strings, objects, None)
        self.assertEqual(objects["args"], big)

    def test_small_value_is_one_key(self):
        """A value whose pickle fits one AMP value is that one key, and is read back."""
        argument = wire.Pickled()
        strings = {}
        argument.toBox(b"args", strings, {"args": ("get", "k")}, None)
        self.assertEqual(list(strings), [b"args"])
        objects = {}
        argument.fromBox(b"args", strings, objects, None)
        self.assertEqual(objects["args"], ("get", "k"))

    def test_domain_errors_cross(self):
        """A domain error comes back as itself, with its fields."""
        error = ConflictError([CheckFailure(Check.equals("a", 3), 4)])
        again = wire.error_from_state(*wire.loads(wire.dumps(wire.error_state(error))))
        self.assertIsInstance(again, ConflictError)
        self.assertEqual(again.failures, error.failures)
        self.assertEqual(again.detail, error.detail)
        limit = wire.error_from_state(*wire.error_state(LimitExceeded("max_staged_ops", 1, 2)))
        self.assertEqual(limit.extra["limit_name"], "max_staged_ops")


class OverCluster:
    """Contract tests whose coroutines await Deferreds that fire as bytes move."""

    cluster: Cluster

    def settle(self, d):
        self.successResultOf(self.cluster.settle(d))


class RemoteStoreContractTests(OverCluster, StoreContract, SynchronousTestCase):
    """A worker's cached RemoteStore keeps the store contract."""

    #: The owner sweeps; a worker lists nothing to expire.
    sweeps_itself = False
    #: History and leases are forwarded to the owner's store.
    keeps_history = True
    grants_leases = True
    #: The worker's read cache, over a RemoteStore that mirrors the count.
    capabilities = (IReadCache, ILinearizableReads, ICountedStore)

    async def make_store(self):
        self.cluster = Cluster()
        return self.cluster.caches[0]

    def advance(self, seconds):
        # Bytes in flight arrive before time passes, as they would (the
        # committer's own feed acknowledgement, which its answer did not
        # wait for).
        self.cluster.flush()
        self.cluster.clock.advance(seconds)



class TagTests(SynchronousTestCase):
    """A check's tag never crosses to the owner, and comes back on a conflict."""

    def test_any_tag(self):
        """A tag of any class (not picklable for the owner) is echoed in the conflict."""
        cluster = Cluster(1)
        tag = object()
        d = cluster.settle(cluster.caches[0].commit([Put("k", b"v")], [Check.present("k", tag=tag)]))
        failure = self.failureResultOf(d, ConflictError)
        self.assertIs(failure.value.failures[0].check.tag, tag)


class RemoteTransactionContractTests(OverCluster, TransactionContract, SynchronousTestCase):
    """Transactions held by the owner keep the contract through every worker."""

    shared = True

    async def make_managers(self, count, **limits):
        self.cluster = Cluster(count, **limits)
        self.limits = self.cluster.limits
        managers = [RemoteTransactions(remote, self.limits.txn_timeout) for remote in self.cluster.remotes]
        return self.cluster.caches[0], managers

    async def expire_idle(self, manager):
        self.cluster.clock.advance(self.limits.txn_timeout + 1)



class ReadYourWritesTests(SynchronousTestCase):
    """A commit is acknowledged only once every worker's cache has it."""

    def test_commit_waits_for_every_worker(self):
        """Until the other worker answers the feed, the committer hears nothing; then both read the write."""
        cluster = Cluster(2)
        first, second = cluster.caches
        self.assertIsNone(cluster.result(second.get("k")))
        d = first.commit([Put("k", b"v")])
        # Only the committer's connection moves: the owner commits and
        # feeds both, but the second worker has not answered.
        for _ in range(10):
            cluster.pumps[0].flush()
        self.assertNoResult(d)
        cluster.settle(d)
        self.assertEqual(self.successResultOf(d).revision, 1)
        hit, entry = second.peek("k")
        self.assertTrue(hit)
        self.assertEqual(entry.value, b"v")

    def test_lost_worker_does_not_hold_commits(self):
        """A worker whose connection is gone is not waited for, and its calls fail as unavailable."""
        cluster = Cluster(2)
        cluster.pumps[1].client.transport.loseConnection()
        cluster.flush()
        result = cluster.result(cluster.caches[0].commit([Put("k", b"v")]))
        self.assertEqual(result.revision, 1)
        self.failureResultOf(cluster.remotes[1].get("k"), StoreUnavailable)

    def test_new_worker_catches_up(self):
        """A worker that joins later starts at the owner's revision with its history."""
        cluster = Cluster(1)
        cluster.result(cluster.caches[0].commit([Put("a", b"1")]))
        cluster.result(cluster.caches[0].commit([Put("b", b"2")]))
        cluster.add_worker(1)
        self.assertEqual(cluster.remotes[1].revision, 2)
        self.assertEqual(cluster.caches[1].peek("b")[1].value, b"2")

    def test_ready_only_when_every_worker_is(self):
        """The owner's ping fails while a worker has not said it serves."""
        cluster = Cluster(2)
        cluster.owner.ready.discard(1)
        failure = self.failureResultOf(cluster.settle(cluster.remotes[0].ping()), StoreUnavailable)
        self.assertIn("worker(s) 1", failure.value.detail)
        cluster.owner.ready.add(1)
        cluster.result(cluster.remotes[0].ping())

    def test_metrics_of_every_process(self):
        """The owner's exposition carries each process's samples, labelled."""
        cluster = Cluster(2)
        text = cluster.result(call(cluster.remotes[0]._protocol, "metrics")).decode()
        self.assertIn('kvtwist_up{worker="0"} 1.0', text)
        self.assertIn('kvtwist_up{worker="1"} 1.0', text)
        self.assertIn('worker="owner"', text)

    def test_unknown_method_refused(self):
        """A call outside the whitelist fails as unavailable; nothing runs."""
        cluster = Cluster(1)
        self.failureResultOf(cluster.settle(call(cluster.remotes[0]._protocol, "close")), StoreUnavailable)


class HoldTests(SynchronousTestCase):
    """A transaction is held for the worker that vets and commits it."""

    def setUp(self):
        self.cluster = Cluster(2)
        self.queues = [RemoteTransactions(remote, 60).queue for remote in self.cluster.remotes]
        self.cluster.result(self.queues[0].record([Put("a", b"1")]))

    def staged(self):
        return [op.key for op in self.cluster.result(self.queues[0].view()).ops()]

    def test_staging_waits_for_the_commit(self):
        """While one worker holds the queue, another's write waits, and is not committed by that commit."""
        protocol = self.cluster.remotes[0]._protocol
        self.cluster.result(call(protocol, "txn_hold", "shared", None))
        staging = self.cluster.settle(self.queues[1].record([Put("b", b"2")]))
        self.assertNoResult(staging)
        result = self.cluster.result(call(protocol, "txn_commit", "shared", None))
        self.assertEqual([change.key for change in result.changes], ["a"])
        self.cluster.settle(staging)
        self.successResultOf(staging)
        self.assertEqual(self.staged(), ["b"])

    def test_refused_commit_lets_go(self):
        """A vet that refuses fails the commit, keeps the ops staged, and frees the queue."""

        def refuse(ops):
            raise Forbidden("no")

        self.failureResultOf(self.cluster.settle(self.queues[0].commit(vet=refuse)), Forbidden)
        self.cluster.result(self.queues[1].record([Put("b", b"2")]))
        self.assertEqual(self.staged(), ["a", "b"])

    def test_write_rights_vetted_in_one_call(self):
        """A token's write rights travel as data: the owner vets and commits in one call; a refusal keeps the ops staged."""
        remote = self.cluster.remotes[0]
        calls = []
        original = remote._call

        def counting(method, *args):
            calls.append(method)
            return original(method, *args)

        remote._call = counting
        self.failureResultOf(self.cluster.settle(self.queues[0].commit(vet=WriteRights("t", ("b",)))), Forbidden)
        result = self.cluster.result(self.queues[0].commit(vet=WriteRights("t", ("a",))))
        self.assertEqual(calls, ["txn_commit_as", "txn_commit_as"])
        self.assertEqual([change.key for change in result.changes], ["a"])
        self.assertEqual(self.cluster.owner._locks, {})

    def test_lost_worker_lets_go(self):
        """A worker lost while holding the queue frees it for the others."""
        self.cluster.result(call(self.cluster.remotes[1]._protocol, "txn_hold", "shared", None))
        self.cluster.pumps[1].client.transport.loseConnection()
        self.cluster.flush()
        self.cluster.result(self.queues[0].record([Put("c", b"3")]))
        self.assertEqual(self.staged(), ["a", "c"])


class FeedTimeoutTests(SynchronousTestCase):
    """A worker that does not apply the feed is cut off; commits go on."""

    def test_silent_worker_cut_off(self):
        """A commit waits for a silent worker only FEED_TIMEOUT seconds; then it is answered and the worker is lost."""
        cluster = Cluster(2)
        lost = []
        cluster.owner.on_lost = lost.append
        d = cluster.caches[0].commit([Put("k", b"v")])
        for _ in range(10):
            cluster.pumps[0].flush()
        self.assertNoResult(d)
        cluster.clock.advance(FEED_TIMEOUT)
        for _ in range(10):
            cluster.pumps[0].flush()
        self.assertEqual(self.successResultOf(d).revision, 1)
        cluster.flush()
        self.assertEqual([worker.index for worker in lost], [1])
        self.assertNotIn(1, cluster.owner.connected)


class ForwardedAbilitiesTests(SynchronousTestCase):
    """History and leases through one worker are the owner's, seen by every worker."""

    def setUp(self):
        self.cluster = Cluster(2)

    def test_remote_store_provides_both(self):
        """A worker's RemoteStore itself provides IHistoricalStore, ILeasingStore and ILeaseListing fully."""
        remote = self.cluster.remotes[0]
        self.assertTrue(verifyObject(IHistoricalStore, remote))
        self.assertTrue(verifyObject(ILeasingStore, remote))
        self.assertTrue(verifyObject(ILeaseListing, remote))

    def test_remote_store_capabilities(self):
        """A worker's RemoteStore provides ICountedStore and ILinearizableReads fully, and no read cache itself."""
        remote = self.cluster.remotes[0]
        self.assertTrue(verifyObject(ICountedStore, remote))
        self.assertTrue(verifyObject(ILinearizableReads, remote))
        self.assertFalse(IReadCache.providedBy(remote))

    def test_state_of_reads_declared_capabilities_only(self):
        """
        state_of mirrors the attributes of the capabilities a store declares:
        a store with a key count it does not declare is mirrored as 0 keys.
        """
        counted = MemoryStore()
        counted.key_count = 3
        self.assertEqual(state_of(counted)["key_count"], 3)
        undeclared = UndeclaredExtras()
        undeclared.key_count = 3
        state = state_of(undeclared)
        self.assertEqual((state["key_count"], state["lease_count"], state["next_deadline"]), (0, 0, None))
        self.assertEqual(set(state), set(STATE))

    def test_wrong_argument_types_refused(self):
        """A forwarded call whose arguments are not of the declared types runs nothing and fails as unavailable."""
        protocol = self.cluster.remotes[0]._protocol
        self.failureResultOf(self.cluster.settle(call(protocol, "get_at", "k", "1")), StoreUnavailable)
        self.failureResultOf(self.cluster.settle(call(protocol, "grant", 10)), StoreUnavailable)
        self.failureResultOf(self.cluster.settle(call(protocol, "keepalive", True)), StoreUnavailable)
        self.assertEqual(self.cluster.store.lease_count, 0)

    def test_replay_is_paged_at_the_owner(self):
        """changes() answers at most MAX_REPLAYED records a call, whatever a worker asks; paging reaches the end."""
        self.patch(owner_module, "MAX_REPLAYED", 2)
        cache = self.cluster.caches[0]
        for n in range(5):
            self.cluster.result(cache.commit([Put("k%d" % n, b"v")]))
        first = self.cluster.result(cache.changes(0, 5, 1000))
        self.assertEqual([c.revision for c in first], [1, 2])
        position, seen = 0, []
        while True:
            page = self.cluster.result(cache.changes(position, 5, 1000))
            if not page:
                break
            seen.extend(c.revision for c in page)
            position = page[-1].revision
        self.assertEqual(seen, [1, 2, 3, 4, 5])

    def test_compaction_reaches_every_worker(self):
        """A compaction through one worker is answered once the other worker's compact revision has moved too."""
        first, second = self.cluster.caches
        for n in range(3):
            self.cluster.result(first.commit([Put("k", b"%d" % n)]))
        d = first.compact(2, 100)
        # Only the compacting worker's connection moves: no answer yet.
        for _ in range(10):
            self.cluster.pumps[0].flush()
        self.assertNoResult(d)
        self.assertEqual(self.cluster.result(d), 2)
        self.assertEqual(first.compact_revision, 2)
        self.assertEqual((second.compact_revision, second.history_size), (2, self.cluster.store.history_size))

    def test_lease_granted_on_one_worker_used_on_another(self):
        """A lease granted through one worker is attached, renewed and revoked through the other; both see the keys go."""
        first, second = self.cluster.caches
        lease = self.cluster.result(first.grant(10, 100))
        self.cluster.result(second.commit([Put("a", b"1", lease=lease.id)]))
        self.assertEqual(first.lease_count, 1)
        self.cluster.clock.advance(8)
        renewed = self.cluster.result(second.keepalive(lease.id))
        self.assertEqual(renewed.deadline, self.cluster.clock.seconds() + 10)
        self.assertEqual(self.cluster.result(first.lease(lease.id)).keys, ("a",))
        result = self.cluster.result(second.revoke(lease.id))
        self.assertEqual([(c.kind, c.key) for c in result.changes], [("delete", "a")])
        self.assertEqual((first.peek("a"), second.peek("a")), ((True, None), (True, None)))
        self.assertEqual(second.lease_count, 0)

    def test_owner_sweeper_expires_a_workers_lease(self):
        """The owner's sweeper wakes at a worker's lease deadline and expires its keys in one commit every worker applies."""
        first, second = self.cluster.caches
        seen = []
        second.add_listener(seen.append)
        sweeper = Sweeper(self.cluster.store, self.cluster.clock, Limits(sweep_interval=60))
        lease = self.cluster.result(first.grant(5, 100))
        self.cluster.result(first.commit([Put("a", b"1", lease=lease.id), Put("b", b"1", lease=lease.id)]))
        # Started after the grant, it sleeps until the deadline, not 60 s.
        sweeper.startService()
        self.addCleanup(sweeper.stopService)
        self.cluster.clock.advance(5)
        self.cluster.flush()
        self.assertEqual(sorted((c.kind, c.key) for c in seen[-1].changes), [("expire", "a"), ("expire", "b")])
        self.assertEqual((second.peek("a"), first.peek("b")), ((True, None), (True, None)))
        self.assertEqual(self.cluster.store.lease_count, 0)


class _FakeProcessTransport:
    """What C{spawnProcess} answers: a pid, and signals recorded."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals = []

    def signalProcess(self, signal):
        self.signals.append(signal)


class _FakeReactor(Clock):
    """A clock that spawns nothing: it records each worker started."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned = []

    def spawnProcess(self, process, executable, args, env=None, childFDs=None):
        self.spawned.append(process)
        return _FakeProcessTransport(1000 + len(self.spawned))

    def adoptStreamConnection(self, fd, family, factory):
        pass


class _NoSockets:
    """A worker's listening sockets: none (the pool only hands them over)."""

    per_worker = [[]]
    addresses: list = []

    def close(self):
        pass


class RestartBackoffTests(SynchronousTestCase):
    """A worker that keeps dying is started again ever more slowly, up to a cap."""

    def setUp(self):
        self.reactor = _FakeReactor()
        self.pool = owner_module.WorkerPool(self.reactor, owner_module.Supervisor(Metrics(process=False), 1), _NoSockets(), {})
        self.pool.startService()
        self.addCleanup(lambda: setattr(self.pool, "running", False))

    def die(self, after: float) -> float:
        """Let the worker run C{after} seconds, end it; the wait until it is started again."""
        self.reactor.advance(after)
        started = len(self.reactor.spawned)
        self.reactor.spawned[-1].processEnded(None)
        [call] = self.reactor.getDelayedCalls()
        wait = call.getTime() - self.reactor.seconds()
        self.reactor.advance(wait)
        self.assertEqual(len(self.reactor.spawned), started + 1)
        return wait

    def test_waits_double_up_to_the_cap(self):
        """Each death soon after a start doubles the wait from RESTART_DELAY, never past RESTART_MAX_DELAY."""
        waits = [self.die(0) for _ in range(10)]
        self.assertAlmostEqual(waits[0], owner_module.RESTART_DELAY)
        self.assertAlmostEqual(waits[1], 2 * owner_module.RESTART_DELAY)
        self.assertAlmostEqual(max(waits), owner_module.RESTART_MAX_DELAY)
        self.assertEqual(waits, sorted(waits))

    def test_reset_after_staying_up(self):
        """A worker that stayed up RESTART_STABLE seconds is started again after RESTART_DELAY."""
        for _ in range(5):
            self.die(0)
        self.assertAlmostEqual(self.die(owner_module.RESTART_STABLE), owner_module.RESTART_DELAY)

    def test_stopped_pool_starts_nothing(self):
        """A worker that dies while the pool stops is not started again."""
        self.pool.running = False
        self.reactor.spawned[-1].processEnded(None)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class _FakeWorker:
    """A worker's connection as the feed sees it: each Feed sent, answered by hand."""

    transport = None

    def __init__(self) -> None:
        self.feeds = []

    def callRemote(self, command, **arguments):
        d = Deferred()
        self.feeds.append((wire.loads(arguments["feed"].data), d))
        return d


class ChangeFeedTests(SynchronousTestCase):
    """The feed: one message per group commit, and the committer is not waited for."""

    def setUp(self):
        self.clock = Clock()
        self.store = MemoryStore(self.clock)
        self.feed = ChangeFeed(self.store)
        self.workers = [_FakeWorker(), _FakeWorker()]
        for worker in self.workers:
            self.feed.attach(worker, 0)

    def commit(self, key):
        return self.successResultOf(self.store.commit([Put(key, b"v")]))

    def test_one_feed_per_flush(self):
        """Commits kept until the feed flushes go to each worker as one Feed, in order."""
        self.commit("a")
        self.commit("b")
        self.feed.flush()
        for worker in self.workers:
            [((results, state), _)] = worker.feeds
            self.assertEqual([r.revision for r in results], [1, 2])
            self.assertEqual(state["key_count"], 2)

    def test_unanswered_commits_flush_on_the_next_turn(self):
        """A commit nobody waits on (the sweeper's) still reaches every worker, on the reactor's next turn."""
        self.commit("a")
        self.assertEqual(self.workers[0].feeds, [])
        self.clock.advance(0)
        self.assertEqual([len(worker.feeds) for worker in self.workers], [1, 1])

    def test_committer_not_waited_for(self):
        """applied(revision, but_for) flushes and fires once every other worker answered, whatever the committer does."""
        committer, other = self.workers
        self.commit("a")
        d = self.feed.applied(1, committer)
        self.assertEqual([len(worker.feeds) for worker in self.workers], [1, 1])
        self.assertNoResult(d)
        other.feeds[0][1].callback({})
        self.successResultOf(d)

    def test_others_wait_for_every_worker(self):
        """Without but_for (a revoke, an expiry), every worker must have answered."""
        self.commit("a")
        d = self.feed.applied(1)
        self.workers[1].feeds[0][1].callback({})
        self.assertNoResult(d)
        self.workers[0].feeds[0][1].callback({})
        self.successResultOf(d)
