"""
The transaction contract suite: one mixin of behaviours that every
L{kvtwist.interfaces.ITransactionManager} must show (the in-memory manager
and the etcd one). Each test module subclasses L{TransactionContract} with a
C{make_managers}, an C{expire_idle} and a C{settle} (see
L{tests.contract.store_contract}: tests are coroutines run through C{settle}).
"""

from __future__ import annotations

from zope.interface.verify import verifyObject

from kvtwist.errors import ConflictError, LimitExceeded, TransactionNotFound
from kvtwist.interfaces import ITransaction, ITransactionManager, ITransactionView
from kvtwist.model import Check, Delete, Put
from tests.contract.store_contract import ExpectFailure, contract


class TransactionContract(ExpectFailure):
    """
    Behaviours of every transaction manager. Subclasses provide:
      - C{make_managers(count, limits)}: C{(store, [manager, ...])}: C{count}
        managers (nodes) over one store, all sharing what they hold if the
        implementation shares at all (C{shared = True});
      - C{expire_idle(manager)}: make a transaction idle past the timeout;
      - C{settle(d)}.
    """

    #: Whether managers made together see each other's transactions.
    shared = False

    async def one(self, **limits):
        store, managers = await self.make_managers(1, **limits)
        return store, managers[0]

    @contract
    async def test_interfaces(self):
        """The manager, its transactions, their views and the queue provide the interfaces."""
        _, manager = await self.one()
        self.assertTrue(verifyObject(ITransactionManager, manager))
        txn = await manager.begin()
        self.assertTrue(verifyObject(ITransaction, txn))
        self.assertTrue(verifyObject(ITransaction, manager.queue))
        self.assertTrue(verifyObject(ITransactionView, await txn.view()))
        self.assertTrue(txn.isolated)
        self.assertFalse(manager.queue.isolated)

    @contract
    async def test_find_by_owner(self):
        """A transaction is found by its id and owner only; others get TransactionNotFound."""
        _, manager = await self.one()
        txn = await manager.begin("alice")
        self.assertEqual((await manager.find(txn.id, "alice")).id, txn.id)
        await self.expect(TransactionNotFound, manager.find(txn.id, "bob"))
        await self.expect(TransactionNotFound, manager.find(txn.id))
        await self.expect(TransactionNotFound, manager.find("no-such-id", "alice"))

    @contract
    async def test_record_and_view(self):
        """Recorded ops are staged in first-staged order; staging a key again replaces its op in place."""
        _, manager = await self.one()
        txn = await manager.begin()
        await txn.record([Put("b", b"1"), Put("a", b"2", "text/plain", 12.5)])
        await txn.record([Delete("c"), Put("b", b"3")])
        view = await (await manager.find(txn.id)).view()
        self.assertEqual(
            view.ops(),
            [Put("b", b"3"), Put("a", b"2", "text/plain", 12.5), Delete("c")],
        )
        self.assertEqual(len(view), 3)
        self.assertEqual(view.staged("a"), Put("a", b"2", "text/plain", 12.5))
        self.assertIsNone(view.staged("zzz"))

    @contract
    async def test_first_touch_is_kept(self):
        """Only the first revision recorded for a key is kept; preconditions accumulate."""
        _, manager = await self.one()
        txn = await manager.begin()
        pre = Check.equals("k", 7, tag="If-Match")
        await txn.record(observed={"k": 3})
        await txn.record([Put("k", b"v")], {"k": 9, "j": 0}, [pre])
        view = await (await manager.find(txn.id)).view()
        self.assertEqual(dict(view.observed), {"k": 3, "j": 0})
        self.assertEqual(list(view.preconditions), [pre])
        self.assertEqual(view.preconditions[0].tag, "If-Match")

    @contract
    async def test_queue_observes_nothing(self):
        """The shared queue records no revisions: last writer wins."""
        _, manager = await self.one()
        view = await manager.queue.record([Put("k", b"v")], {"k": 4})
        self.assertEqual(dict(view.observed), {})
        self.assertEqual(view.ops(), [Put("k", b"v")])

    @contract
    async def test_limits_change_nothing(self):
        """A record past max_staged_ops fails with LimitExceeded and stages none of its ops."""
        _, manager = await self.one(max_staged_ops=2)
        txn = await manager.begin()
        await txn.record([Put("a", b"1")])
        await self.expect(LimitExceeded, txn.record([Put("b", b"2"), Put("c", b"3")], {"b": 0}))
        view = await (await manager.find(txn.id)).view()
        self.assertEqual(view.ops(), [Put("a", b"1")])
        self.assertEqual(dict(view.observed), {})

    @contract
    async def test_commit_applies_all(self):
        """A commit applies every staged op at one revision; the transaction's ops are gone after."""
        store, manager = await self.one()
        gone = (await store.commit([Put("gone", b"x")])).revision
        txn = await manager.begin()
        await txn.record([Put("a", b"1"), Delete("gone")], {"a": 0, "gone": gone})
        result = await (await manager.find(txn.id)).commit()
        await manager.finish(txn.id)
        self.assertEqual([c.kind for c in result.changes], ["put", "delete"])
        self.assertEqual((await store.get("a")).value, b"1")
        self.assertIsNone(await store.get("gone"))
        await self.expect(TransactionNotFound, manager.find(txn.id))

    @contract
    async def test_conflict_applies_nothing(self):
        """A key changed since its first touch makes the commit a ConflictError naming it; nothing applied."""
        store, manager = await self.one()
        txn = await manager.begin()
        await txn.record([Put("a", b"mine"), Put("b", b"mine")], {"a": 0, "b": 0})
        await store.commit([Put("b", b"theirs")])
        error = await self.expect(ConflictError, (await manager.find(txn.id)).commit())
        self.assertEqual([f.check.key for f in error.failures], ["b"])
        self.assertIsNone(await store.get("a"))
        self.assertEqual((await store.get("b")).value, b"theirs")

    @contract
    async def test_manager_commit_ends_the_transaction(self):
        """The manager's commit applies the transaction and ends it: finding it after is TransactionNotFound."""
        store, manager = await self.one()
        txn = await manager.begin()
        await txn.record([Put("a", b"1")], {"a": 0})
        result = await manager.commit_and_end(await manager.find(txn.id))
        self.assertEqual([c.key for c in result.changes], ["a"])
        self.assertEqual((await store.get("a")).value, b"1")
        await self.expect(TransactionNotFound, manager.find(txn.id))

    @contract
    async def test_manager_commit_conflict_ends_the_transaction(self):
        """A conflicted commit through the manager fails with ConflictError and ends the transaction."""
        store, manager = await self.one()
        txn = await manager.begin()
        await txn.record([Put("a", b"mine")], {"a": 0})
        await store.commit([Put("a", b"theirs")])
        error = await self.expect(ConflictError, manager.commit_and_end(await manager.find(txn.id)))
        self.assertEqual([f.check.key for f in error.failures], ["a"])
        await self.expect(TransactionNotFound, manager.find(txn.id))
        self.assertEqual((await store.get("a")).value, b"theirs")

    @contract
    async def test_manager_commit_keeps_the_queue(self):
        """The shared queue committed through the manager stays: it takes writes again after."""
        store, manager = await self.one()
        await manager.queue.record([Put("q", b"1")])
        await manager.commit_and_end(manager.queue)
        self.assertEqual((await store.get("q")).value, b"1")
        view = await manager.queue.record([Put("q", b"2")])
        self.assertEqual(view.ops(), [Put("q", b"2")])

    @contract
    async def test_vet_refuses(self):
        """A vet that raises refuses the commit with its error; nothing applied, the ops stay staged."""
        store, manager = await self.one()
        txn = await manager.begin()
        await txn.record([Put("a", b"1")])
        seen = []

        def vet(ops):
            seen.append(list(ops))
            raise PermissionError("no")

        await self.expect(PermissionError, (await manager.find(txn.id)).commit(vet))
        self.assertEqual(seen, [[Put("a", b"1")]])
        self.assertIsNone(await store.get("a"))
        self.assertEqual((await (await manager.find(txn.id)).view()).ops(), [Put("a", b"1")])

    @contract
    async def test_finish(self):
        """A finished transaction is gone: finding it, recording into it fail."""
        _, manager = await self.one()
        txn = await manager.begin()
        await txn.record([Put("a", b"1")])
        await manager.finish(txn.id)
        await self.expect(TransactionNotFound, manager.find(txn.id))
        await self.expect(TransactionNotFound, txn.record([Put("b", b"2")]))
        await self.expect(TransactionNotFound, txn.commit())

    @contract
    async def test_open_cap(self):
        """Beginning past max_open_transactions is a LimitExceeded (too many); finishing frees a slot."""
        _, manager = await self.one(max_open_transactions=2)
        first = await manager.begin()
        await manager.begin()
        error = await self.expect(LimitExceeded, manager.begin())
        self.assertTrue(error.too_many)
        await manager.finish(first.id)
        await manager.begin()

    @contract
    async def test_idle_expiry(self):
        """A transaction idle past the timeout is gone; nothing it staged was applied."""
        store, manager = await self.one()
        txn = await manager.begin()
        await txn.record([Put("a", b"1")])
        await self.expire_idle(manager)
        await self.expect(TransactionNotFound, manager.find(txn.id))
        self.assertIsNone(await store.get("a"))

    @contract
    async def test_queue_commit(self):
        """The queue commits what it holds (last writer wins) and is empty after."""
        store, manager = await self.one()
        await manager.queue.record([Put("a", b"1")])
        await store.commit([Put("a", b"direct")])
        await manager.queue.record([Put("b", b"2")])
        result = await manager.queue.commit()
        self.assertEqual([c.key for c in result.changes], ["a", "b"])
        self.assertEqual((await store.get("a")).value, b"1")
        self.assertEqual((await manager.queue.view()).ops(), [])
        empty = await manager.queue.commit()
        self.assertEqual(empty.changes, ())

    @contract
    async def test_queue_delete_of_absent_key_leaves_queue_empty(self):
        """A queued delete that finds nothing commits nothing and still leaves the queue empty."""
        store, manager = await self.one()
        await manager.queue.record([Delete("never")])
        result = await manager.queue.commit()
        self.assertEqual(result.changes, ())
        self.assertEqual((await manager.queue.view()).ops(), [])
        await store.commit([Put("never", b"now")])
        await manager.queue.commit()
        self.assertEqual((await store.get("never")).value, b"now")
