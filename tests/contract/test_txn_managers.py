"""
The transaction contract run against both managers: the in-memory one
(L{kvtwist.transactions.TransactionManager}) and the etcd one
(L{kvtwist.store.etcd.transactions.EtcdTransactions}) on a real etcd; plus
what only a shared manager can do: one transaction, or the seed's queue,
used through several nodes at once.
"""

from __future__ import annotations

import json

from twisted.internet import reactor
from twisted.internet.defer import DeferredList, gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.errors import LimitExceeded, StoreUnavailable, TransactionNotFound
from kvtwist.limits import Limits
from kvtwist.model import Check, Delete, Put
from kvtwist.staging import staged_cost
from kvtwist.store.etcd.transactions import (
    EtcdTransactions,
    decode_record,
    encode_record,
)
from kvtwist.testing import MemoryStore
from kvtwist.transactions import TransactionManager
from tests.contract.store_contract import contract
from tests.contract.test_store_etcd import EtcdTestCase, unb64
from tests.contract.txn_contract import TransactionContract


class MemoryTransactionContractTests(TransactionContract, SynchronousTestCase):
    """The in-memory manager keeps the transaction contract."""

    async def make_managers(self, count, **limits):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        store = MemoryStore(self.clock)
        self.limits = Limits(**limits)
        return store, [TransactionManager(self.clock, self.limits, store) for _ in range(count)]

    async def expire_idle(self, manager):
        self.clock.advance(self.limits.txn_timeout + 1)

    def settle(self, d):
        self.successResultOf(d)


class MemoryManagerCommitTests(SynchronousTestCase):
    """What the in-memory manager decides after a commit that did not go through."""

    def test_unavailable_commit_leaves_transaction_open(self):
        """A commit the store could not make (503) leaves the transaction open, its ops staged, to retry."""
        clock = Clock()
        store = MemoryStore(clock)
        manager = TransactionManager(clock, Limits(), store)
        txn = self.successResultOf(manager.begin())
        self.successResultOf(txn.record([Put("a", b"1")], {"a": 0}))
        store.fail_commits = StoreUnavailable("the disk is gone")
        self.failureResultOf(manager.commit_and_end(txn), StoreUnavailable)
        found = self.successResultOf(manager.find(txn.id))
        self.assertEqual(self.successResultOf(found.view()).ops(), [Put("a", b"1")])
        store.fail_commits = None
        self.successResultOf(manager.commit_and_end(found))
        self.failureResultOf(manager.find(txn.id), TransactionNotFound)


class EtcdTransactionContractTests(TransactionContract, EtcdTestCase):
    """The etcd manager keeps the transaction contract, on a real etcd."""

    shared = True

    async def make_managers(self, count, **limits):
        # One etcd client per node, as separate kvcache processes would have.
        self.limits = Limits(**dict({"txn_timeout": 2.0}, **limits))
        stores = [await self.open_store(prefix="/t/") for _ in range(count)]
        managers = [EtcdTransactions(store, reactor, self.limits) for store in stores]
        return stores[0], managers

    async def expire_idle(self, manager):
        # etcd's clock decides: wait for the lease (TTL 2 s, checked by etcd
        # every 500 ms) to run out, bounded.
        await deferLater(reactor, self.limits.txn_timeout + 1.5, lambda: None)

    @contract
    async def test_layout(self):
        """A transaction's head and records live under P txn/, leased; the queue's under P queue/, not."""
        _, manager = await self.one()
        txn = await manager.begin("alice")
        await txn.record([Put("k", b"v")], {"k": 0})
        await manager.queue.record([Put("q", b"w")])
        heads = await self.raw.kvs(b"/t/txn/h/", prefix=True)
        self.assertEqual(len(heads), 1)
        head = json.loads(unb64(heads[0]["value"]))
        self.assertEqual((head["owner"], head["seq"]), ("alice", 1))
        self.assertNotEqual(heads[0].get("lease", "0"), "0")
        records = await self.raw.kvs(b"/t/txn/r/" + txn.id.encode() + b"/", prefix=True)
        self.assertEqual(decode_record(unb64(records[0]["value"])), ([Put("k", b"v")], {"k": 0}, []))
        queue = await self.raw.kvs(b"/t/queue/", prefix=True)
        self.assertEqual(len(queue), 2)
        self.assertEqual(queue[0].get("lease", "0"), "0")
        self.assertEqual(await self.raw.kvs(b"/t/kv/", prefix=True), [])

    @contract
    async def test_commit_removes_state_with_data(self):
        """A commit leaves no transaction keys behind: the state goes in the data's etcd transaction."""
        store, manager = await self.one()
        txn = await manager.begin()
        await txn.record([Put("k", b"v")], {"k": 0})
        before = await self.raw.revision()
        await (await manager.find(txn.id)).commit()
        self.assertEqual(await self.raw.kvs(b"/t/txn/", prefix=True), [])
        # one etcd revision for the data and the state's removal together
        self.assertEqual((await store.get("k")).mod_revision, before + 1)


class EtcdTransactionLimitTests(EtcdTestCase):
    """A transaction's commit is one etcd transaction, within etcd's --max-txn-ops."""

    async def test_commit_counts_its_state_removal(self):
        """
        etcd counts compares and requests apart: a commit of N observed keys
        needs N + 1 compares (the head) and N + 2 requests (removing head and
        records), so with max-txn-ops 5, three keys commit and four are a 413.
        """
        store = await self.open_store(prefix="/l/", max_txn_ops=5)
        manager = EtcdTransactions(store, reactor, Limits())
        fits = await manager.begin()
        await fits.record([Put("k%d" % n, b"") for n in range(3)], {"k%d" % n: 0 for n in range(3)})
        await (await manager.find(fits.id)).commit()
        too_big = await manager.begin()
        await too_big.record([Put("j%d" % n, b"") for n in range(4)], {"j%d" % n: 0 for n in range(4)})
        error = await self.expect(LimitExceeded, (await manager.find(too_big.id)).commit())
        self.assertEqual((error.extra["limit"], error.extra["size"]), (5, 6))
        self.assertIn("staged state", error.detail)
        self.assertEqual(len(await (await manager.find(too_big.id)).view()), 4)
        self.assertIsNone(await store.get("j0"))


class SharedTransactionTests(EtcdTestCase):
    """One etcd, three nodes (managers with their own etcd clients)."""

    async def nodes(self, count=3, **limits):
        self.limits = Limits(**limits)
        stores = [await self.open_store(prefix="/s/") for _ in range(count)]
        return stores, [EtcdTransactions(store, reactor, self.limits) for store in stores]

    async def test_transaction_spans_nodes(self):
        """Begun on A, staged on B and C, read on A, committed on C: every write lands once, at one revision."""
        stores, (a, b, c) = await self.nodes()
        txn = await a.begin("alice")
        await (await b.find(txn.id, "alice")).record([Put("x", b"1")], {"x": 0})
        await (await c.find(txn.id, "alice")).record([Put("y", b"2"), Delete("x")], {"y": 0})
        view = await (await a.find(txn.id, "alice")).view()
        self.assertEqual(view.ops(), [Delete("x"), Put("y", b"2")])
        self.assertEqual(dict(view.observed), {"x": 0, "y": 0})
        await (await b.find(txn.id, "alice")).record([Put("x", b"3")])
        result = await (await c.find(txn.id, "alice")).commit()
        self.assertEqual({ch.entry.mod_revision for ch in result.changes}, {result.revision})
        for store in stores:
            self.assertEqual((await store.get_many(["x", "y"]))["x"].value, b"3")
        for manager in (a, b, c):
            with self.assertRaises(TransactionNotFound):
                await manager.find(txn.id, "alice")

    async def test_conflict_seen_from_another_node(self):
        """A key a transaction read on A, changed by a commit on B, makes the commit on C a conflict."""
        stores, (a, b, c) = await self.nodes()
        txn = await a.begin()
        await txn.record(observed={"k": 0})
        await stores[1].commit([Put("k", b"other")])
        with self.assertRaises(Exception) as raised:
            await (await c.find(txn.id)).commit()
        self.assertEqual(type(raised.exception).__name__, "ConflictError")

    async def test_concurrent_records_all_kept(self):
        """Records sent at once from three nodes to one transaction are all kept, in some order, none lost."""
        _, managers = await self.nodes()
        txn = await managers[0].begin()
        writes = []
        for n in range(30):
            manager = managers[n % 3]
            writes.append(
                manager.find(txn.id).addCallback(
                    lambda t, n=n: t.record([Put("k%02d" % n, b"%d" % n)], {"k%02d" % n: 0})
                )
            )
        await gatherResults(writes, consumeErrors=True)
        view = await (await managers[1].find(txn.id)).view()
        self.assertEqual(sorted(op.key for op in view.ops()), ["k%02d" % n for n in range(30)])
        self.assertEqual(len(view.observed), 30)

    async def test_limit_holds_across_nodes(self):
        """max_staged_ops counts what every node staged: the node that would pass it gets LimitExceeded."""
        _, (a, b, _) = await self.nodes(max_staged_ops=3)
        txn = await a.begin()
        await txn.record([Put("a", b""), Put("b", b"")])
        with self.assertRaises(LimitExceeded):
            await (await b.find(txn.id)).record([Put("c", b""), Put("d", b"")])
        await (await b.find(txn.id)).record([Put("c", b"")])

    async def test_staged_total_bounds_cached_copies_not_staging(self):
        """On etcd max_staged_bytes_total refuses nothing (the staged writes live in etcd) but bounds a node's cached copies."""
        one = staged_cost(Put("v", b"x" * 1000))
        _, (a, _, _) = await self.nodes(max_staged_bytes_total=2 * one + 100)
        txns = [await a.begin() for _ in range(4)]
        for txn in txns:
            await txn.record([Put("v", b"x" * 1000)])
        cached = sum(state.staging.size for state in a._states.values())
        self.assertLessEqual(cached, 2 * one + 100)
        # A copy dropped from the cache is read again from etcd.
        view = await (await a.find(txns[0].id)).view()
        self.assertEqual(view.ops(), [Put("v", b"x" * 1000)])

    async def test_queue_shared(self):
        """POST /set's queue: staged on A and B, committed on C; a second commit on A finds it empty."""
        stores, (a, b, c) = await self.nodes()
        await a.queue.record([Put("p", b"1")])
        await b.queue.record([Put("q", b"2")])
        self.assertEqual(len(await c.queue.view()), 2)
        result = await c.queue.commit()
        self.assertEqual(sorted(ch.key for ch in result.changes), ["p", "q"])
        self.assertEqual((await a.queue.commit()).changes, ())
        self.assertEqual(len(await b.queue.view()), 0)
        self.assertEqual((await stores[0].get("q")).value, b"2")

    async def test_concurrent_queue_commits_apply_once(self):
        """Two nodes committing the queue at once: its writes apply in exactly one etcd revision."""
        stores, (a, b, c) = await self.nodes()
        await c.queue.record([Put("k%d" % n, b"v") for n in range(5)])
        results = await DeferredList([a.queue.commit(), b.queue.commit()], consumeErrors=True)
        self.assertTrue(all(ok for ok, _ in results), results)
        applied = [r for _, r in results if r.changes]
        self.assertEqual(len(applied), 1)
        entries = await stores[2].get_many(["k%d" % n for n in range(5)])
        self.assertEqual({e.version for e in entries.values()}, {1})
        self.assertEqual(len(await c.queue.view()), 0)

    async def test_record_during_commit_is_not_lost(self):
        """A queue write staged on B while A commits is either in A's commit or still queued, never dropped."""
        stores, (a, b, _) = await self.nodes()
        for round_ in range(10):
            await a.queue.record([Put("first%d" % round_, b"x")])
            commit = a.queue.commit()
            await b.queue.record([Put("late%d" % round_, b"y")])
            await commit
            committed = await stores[0].get("late%d" % round_)
            queued = (await b.queue.view()).staged("late%d" % round_)
            self.assertTrue((committed is None) != (queued is None), (committed, queued))
            await b.queue.commit()


class RecordEncodingTests(SynchronousTestCase):
    """A record's bytes, without etcd."""

    def test_round_trip(self):
        """Puts (with content type, expiry, any bytes), deletes, observations and preconditions survive encoding."""
        ops = [Put("k", b"\x00\n{}", "text/plain", 17.5), Delete("d"), Put("ü/é", b"")]
        observed = {"k": 3, "ü/é": 0}
        pre = [Check.equals("k", 3, tag="If-Match"), Check.absent("n", tag="If-None-Match")]
        data = encode_record(ops, observed, pre)
        self.assertEqual(decode_record(data), (ops, observed, pre))
        self.assertEqual(
            [c.tag for c in decode_record(data)[2]], ["If-Match", "If-None-Match"]
        )

    def test_damaged(self):
        """A record kvtwist did not write is reported, not half-read."""
        from kvtwist.errors import StoreUnavailable

        for data in (b"", b"not json\n", b'{"ops":[["k","put"]],"obs":{},"pre":[]}\n'):
            with self.assertRaises(StoreUnavailable):
                decode_record(data)


class ConnectionTests(SynchronousTestCase):
    """What the etcd transaction manager needs of the store, declared and checked."""

    def test_store_provides_the_connection(self):
        """The etcd store declares and provides everything the manager uses of it."""
        from zope.interface.verify import verifyObject

        from kvtwist.interfaces import IEtcdConnection
        from kvtwist.store.etcd.store import EtcdStore

        store = EtcdStore(["http://127.0.0.1:1"], Clock())
        self.assertTrue(verifyObject(IEtcdConnection, store))

    def test_wrapped_store_is_accepted(self):
        """A wrapper that passes the store through (kvcache's timed store) is accepted."""
        from kvtwist.metrics import Metrics, TimedStore
        from kvtwist.store.etcd.store import EtcdStore

        clock = Clock()
        store = EtcdStore(["http://127.0.0.1:1"], clock)
        timed = TimedStore(store, Metrics(process=False), clock)
        manager = EtcdTransactions(timed, clock, Limits())
        self.assertEqual(len(manager), 0)

    def test_store_without_the_connection_is_refused(self):
        """A store lacking what the manager uses (a cache, a renamed method) fails at once."""
        from zope.interface.exceptions import Invalid

        with self.assertRaises(Invalid):
            EtcdTransactions(MemoryStore(Clock()), Clock(), Limits())
