"""
The store contract suite: one mixin of behaviours that every
L{kvtwist.interfaces.IKeyValueStore} must show. Each store's test module
subclasses L{StoreContract} with a C{make_store} and a C{settle}.

Tests are coroutines; C{settle} turns the coroutine's Deferred into a test
result: synchronously for stores whose Deferreds fire at once (memory, the
shelve store on an inline thread pool), or by returning it to trial for
stores that do real I/O (etcd).

One module though long: the contract is one mixin, so that every store runs
exactly the same behaviours.
"""

from __future__ import annotations

import functools

from twisted.internet.defer import Deferred
from zope.interface.verify import verifyObject

from kvtwist.errors import (
    ConflictError,
    FutureRevision,
    LeaseNotFound,
    LeasesUnsupported,
    LimitExceeded,
    NotAnInteger,
    RevisionCompacted,
    StoreUnavailable,
)
from kvtwist.interfaces import (
    ICountedStore,
    IEtcdConnection,
    IHistoricalStore,
    IKeyValueStore,
    ILeaseListing,
    ILeasingStore,
    ILinearizableReads,
    IReadCache,
    IWatchedStore,
    IWorkInFlight,
)
from kvtwist.model import Check, Delete, Entry, Expire, Incr, Put

#: The optional capabilities a store may declare beyond IKeyValueStore,
#: history and leases (each has its own flag and tests).
CAPABILITIES = (
    IReadCache,
    ILinearizableReads,
    IWatchedStore,
    ICountedStore,
    IEtcdConnection,
    IWorkInFlight,
)


def contract(test):
    """Run the coroutine test method through the test case's C{settle}."""

    @functools.wraps(test)
    def run(self):
        return self.settle(Deferred.fromCoroutine(test(self)))

    return run


class ExpectFailure:
    """C{expect}: await a Deferred that must fail with a given error."""

    async def expect(self, error_type, d):
        """The C{error_type} C{d} fails with; the test fails if it does not."""
        try:
            await d
        except error_type as e:
            return e
        self.fail("expected %s" % (error_type.__name__,))


class StoreContract(ExpectFailure):
    """
    Behaviours of every store. Subclasses provide:
      - C{make_store()}: an opened store, empty;
      - C{advance(seconds)}: move the store's clock forward;
      - C{settle(d)}: wait for the Deferred C{d} and fail the test on error;
      - C{exact_revisions}: whether revisions advance by exactly one.
    """

    exact_revisions = True
    #: Whether expired keys are swept by kvtwist (local stores) rather than
    #: by the backend itself (etcd leases); only then does expired() list.
    sweeps_itself = True
    #: Whether the store provides IHistoricalStore; a store that does not
    #: must say so plainly (the routes then answer history-unsupported).
    keeps_history = True
    #: Whether history_size counts records (one per key a commit changed);
    #: etcd's counts the revisions it keeps.
    counts_history_records = True
    #: Whether compact() goes in steps bounded by its record budget; etcd
    #: compacts in one call (and bounds its own batches).
    compacts_in_steps = True
    #: Whether the store provides ILeasingStore; a store that does not must
    #: say so plainly (the lease routes then answer leases-unsupported).
    grants_leases = True
    #: Whether lease deadlines follow the store's injected clock; etcd's
    #: leases follow etcd's own clock and etcd expires them itself.
    lease_clock_injected = True
    #: The members of L{CAPABILITIES} the store declares, no more, no less.
    capabilities: tuple = ()

    def assert_next_revision(self, before: int, after: int) -> None:
        """Revisions grow; by exactly one where the store promises it."""
        if self.exact_revisions:
            self.assertEqual(after, before + 1)
        else:
            self.assertGreater(after, before)

    async def expect_conflict(self, d: Deferred) -> ConflictError:
        return await self.expect(ConflictError, d)

    @contract
    async def test_interface(self):
        """The store provides IKeyValueStore fully."""
        store = await self.make_store()
        self.assertTrue(verifyObject(IKeyValueStore, store))

    @contract
    async def test_capabilities(self):
        """
        The store declares exactly its expected capabilities and provides
        each fully (verifyObject), so a renamed method fails here rather
        than sending callers down their slower path.
        """
        store = await self.make_store()
        declared = [capability for capability in CAPABILITIES if capability.providedBy(store)]
        self.assertEqual(
            [capability.__name__ for capability in declared],
            [capability.__name__ for capability in CAPABILITIES if capability in self.capabilities],
        )
        for capability in declared:
            self.assertTrue(verifyObject(capability, store))

    @contract
    async def test_empty(self):
        """A new store has revision 0, no keys and lists nothing."""
        store = await self.make_store()
        self.assertEqual(store.revision, 0)
        self.assertIsNone(await store.get("a"))
        self.assertEqual(await store.get_many(["a", "b"]), {})
        page = await store.list("", None, 10)
        self.assertEqual((page.entries, page.more), ((), False))

    @contract
    async def test_put_then_get(self):
        """A committed put is readable with its value, type and revisions."""
        store = await self.make_store()
        result = await store.commit([Put("a", b"\x00\xff", "image/png")])
        self.assertEqual(store.revision, result.revision)
        entry = await store.get("a")
        self.assertEqual(
            (entry.key, entry.value, entry.content_type, entry.version),
            ("a", b"\x00\xff", "image/png", 1),
        )
        self.assertEqual(entry.create_revision, result.revision)
        self.assertEqual(entry.mod_revision, result.revision)
        self.assertEqual([c.kind for c in result.changes], ["put"])
        self.assertIsNone(result.changes[0].previous)

    @contract
    async def test_update_keeps_create_revision(self):
        """An update bumps mod_revision and version, keeps create_revision."""
        store = await self.make_store()
        first = await store.commit([Put("a", b"1")])
        second = await store.commit([Put("a", b"2")])
        self.assert_next_revision(first.revision, second.revision)
        entry = await store.get("a")
        self.assertEqual(entry.value, b"2")
        self.assertEqual(entry.create_revision, first.revision)
        self.assertEqual(entry.mod_revision, second.revision)
        self.assertEqual(entry.version, 2)
        self.assertEqual(second.changes[0].previous.value, b"1")

    @contract
    async def test_multi_op_commit_is_one_revision(self):
        """All ops of one commit share one new revision."""
        store = await self.make_store()
        await store.commit([Put("gone", b"x")])
        before = store.revision
        result = await store.commit(
            [Put("a", b"1"), Put("b", b"2"), Delete("gone")]
        )
        self.assert_next_revision(before, result.revision)
        found = await store.get_many(["a", "b", "gone"])
        self.assertEqual(sorted(found), ["a", "b"])
        self.assertEqual({e.mod_revision for e in found.values()}, {result.revision})
        self.assertEqual(
            [(c.kind, c.key) for c in result.changes],
            [("put", "a"), ("put", "b"), ("delete", "gone")],
        )

    @contract
    async def test_last_op_on_a_key_wins(self):
        """Within one commit a later op on a key overrides an earlier one."""
        store = await self.make_store()
        await store.commit([Put("a", b"1"), Put("a", b"2"), Put("b", b"x"), Delete("b")])
        self.assertEqual((await store.get("a")).value, b"2")
        self.assertEqual((await store.get("a")).version, 1)
        self.assertIsNone(await store.get("b"))

    @contract
    async def test_delete_absent_changes_nothing(self):
        """Deleting absent keys neither fails nor creates a revision."""
        store = await self.make_store()
        await store.commit([Put("a", b"1")])
        before = store.revision
        result = await store.commit([Delete("nope")])
        self.assertEqual((result.revision, result.changes), (before, ()))
        self.assertEqual(store.revision, before)

    @contract
    async def test_delete_then_recreate(self):
        """A key deleted and written again starts over at version 1."""
        store = await self.make_store()
        await store.commit([Put("a", b"1")])
        await store.commit([Put("a", b"2")])
        await store.commit([Delete("a")])
        self.assertIsNone(await store.get("a"))
        result = await store.commit([Put("a", b"3")])
        entry = await store.get("a")
        self.assertEqual((entry.version, entry.create_revision), (1, result.revision))

    @contract
    async def test_checks_pass(self):
        """A commit whose checks all hold is applied."""
        store = await self.make_store()
        first = await store.commit([Put("a", b"1")])
        await store.commit(
            [Put("a", b"2"), Put("b", b"3")],
            [
                Check.equals("a", first.revision),
                Check.present("a"),
                Check.absent("b"),
                Check.equals("c", 0),
            ],
        )
        self.assertEqual((await store.get("a")).value, b"2")

    @contract
    async def test_failed_check_applies_nothing(self):
        """One failed check rejects the whole commit and names every failure."""
        store = await self.make_store()
        first = await store.commit([Put("a", b"1")])
        before = store.revision
        error = await self.expect_conflict(
            store.commit(
                [Put("a", b"2"), Put("b", b"3")],
                [
                    Check.equals("a", first.revision + 100, tag=0),
                    Check.absent("a", tag=1),
                    Check.present("b", tag=2),
                    Check.absent("c", tag=3),
                ],
            )
        )
        self.assertEqual(
            [(f.check.tag, f.actual) for f in error.failures],
            [(0, first.revision), (1, first.revision), (2, 0)],
        )
        self.assertEqual(store.revision, before)
        self.assertEqual((await store.get("a")).value, b"1")
        self.assertIsNone(await store.get("b"))

    @contract
    async def test_list_prefix_order_and_pages(self):
        """Listing filters by prefix, orders by UTF-8 bytes and pages with after."""
        store = await self.make_store()
        keys = ["p/b", "p/a", "p/\u00e9", "p/Z", "q/a", "p", "p/a/x"]
        await store.commit([Put(k, k.encode("utf-8")) for k in keys])
        page = await store.list("p/", None, 3)
        self.assertEqual([e.key for e in page.entries], ["p/Z", "p/a", "p/a/x"])
        self.assertTrue(page.more)
        self.assertEqual(page.revision, store.revision)
        page = await store.list("p/", "p/a/x", 3)
        self.assertEqual([e.key for e in page.entries], ["p/b", "p/\u00e9"])
        self.assertFalse(page.more)
        page = await store.list("", None, 100)
        self.assertEqual(len(page.entries), len(keys))

    @contract
    async def test_list_exact_limit_has_no_more(self):
        """A page that ends exactly at the last key says there is no more."""
        store = await self.make_store()
        await store.commit([Put("a", b""), Put("b", b"")])
        page = await store.list("", None, 2)
        self.assertEqual(([e.key for e in page.entries], page.more), (["a", "b"], False))

    @contract
    async def test_list_ends_a_page_at_max_bytes(self):
        """
        A page ends with the entry whose key and value bytes reach
        max_bytes (saying there is more), paging on from it lists the rest,
        and an entry larger than the bound alone still makes a page.
        """
        store = await self.make_store()
        await store.commit([Put("b/%02d" % i, b"x" * 100) for i in range(10)])
        await store.commit([Put("b/99", b"y" * 1000)])
        page = await store.list("b/", None, 100, 250)
        self.assertEqual([e.key for e in page.entries], ["b/00", "b/01", "b/02"])
        self.assertTrue(page.more)
        keys = [e.key for e in page.entries]
        for _ in range(10):
            page = await store.list("b/", keys[-1], 100, 250)
            keys += [e.key for e in page.entries]
            if not page.more:
                break
        self.assertEqual(keys, ["b/%02d" % i for i in range(10)] + ["b/99"])
        page = await store.list("b/", "b/09", 100, 10)
        self.assertEqual(([e.key for e in page.entries], page.more), (["b/99"], False))
        page = await store.list("b/", None, 100, 10)
        self.assertEqual(([e.key for e in page.entries], page.more), (["b/00"], True))

    @contract
    async def test_list_byte_bound_skips_expired_keys(self):
        """Expired keys neither fill a byte-bounded page nor end it."""
        store = await self.make_store()
        now = store.clock.seconds()
        await store.commit(
            [Put("e/%02d" % i, b"x" * 100, expires=now + 10) for i in range(20)]
            + [Put("e/live", b"1"), Put("e/more", b"2")]
        )
        self.advance(11)
        page = await store.list("e/", None, 100, 5)
        self.assertEqual(([e.key for e in page.entries], page.more), (["e/live"], True))
        page = await store.list("e/", "e/live", 100, 5)
        self.assertEqual(([e.key for e in page.entries], page.more), (["e/more"], False))

    @contract
    async def test_expired_keys_are_absent(self):
        """An expired key reads, lists and checks as absent."""
        store = await self.make_store()
        now = store.clock.seconds()
        await store.commit([Put("t", b"1", expires=now + 10), Put("u", b"2")])
        self.assertIsNotNone(await store.get("t"))
        self.advance(11)
        self.assertIsNone(await store.get("t"))
        self.assertEqual(list(await store.get_many(["t", "u"])), ["u"])
        page = await store.list("", None, 10)
        self.assertEqual([e.key for e in page.entries], ["u"])
        await store.commit([Put("x", b"")], [Check.absent("t")])
        result = await store.commit([Put("t", b"again")])
        entry = await store.get("t")
        self.assertEqual((entry.version, entry.create_revision), (1, result.revision))

    @contract
    async def test_expiry_is_stored(self):
        """The absolute expiry comes back as written."""
        store = await self.make_store()
        expires = store.clock.seconds() + 1000.5
        await store.commit([Put("t", b"1", expires=expires)])
        self.assertEqual((await store.get("t")).expires, expires)

    @contract
    async def test_unicode_and_odd_keys(self):
        """Keys with slashes, spaces, UTF-8 and NUL round-trip."""
        store = await self.make_store()
        keys = ["a/b", "with space", "\u65e5\u672c", "nul\x00key", "x" * 1024]
        await store.commit([Put(k, k.encode("utf-8")) for k in keys])
        found = await store.get_many(keys)
        self.assertEqual({k: e.value for k, e in found.items()}, {k: k.encode() for k in keys})

    @contract
    async def test_entries_are_plain_data(self):
        """Entries read back are Entry values equal field by field."""
        store = await self.make_store()
        await store.commit([Put("a", b"v", "text/plain")])
        entry = await store.get("a")
        self.assertIsInstance(entry, Entry)
        self.assertEqual(entry, (await store.get_many(["a"]))["a"])

    @contract
    async def test_closed_store_is_unavailable(self):
        """After close, reads and commits fail with StoreUnavailable."""
        store = await self.make_store()
        await store.close()
        for call in (lambda: store.get("a"), lambda: store.commit([Put("a", b"")])):
            try:
                await call()
            except StoreUnavailable:
                continue
            self.fail("expected StoreUnavailable")

    @contract
    async def test_ping(self):
        """An open store answers ping."""
        store = await self.make_store()
        self.assertIsNone(await store.ping())

    @contract
    async def test_listeners_see_commits_in_order(self):
        """Listeners hear every changing commit, in order, before the committer."""
        store = await self.make_store()
        heard = []
        store.add_listener(lambda result: heard.append(result))
        first = await store.commit([Put("a", b"1")])
        self.assertEqual(heard[-1].revision, first.revision)
        await store.commit([Delete("absent")])
        second = await store.commit([Put("a", b"2"), Delete("a")])
        revisions = [r.revision for r in heard]
        self.assertEqual(revisions, sorted(revisions))
        self.assertEqual(revisions[-1], second.revision)
        self.assertNotIn(0, [len(r.changes) for r in heard])

    @contract
    async def test_expire_op_sweeps_only_expired_versions(self):
        """Expire removes a key only if expired and unchanged, as an expire change."""
        store = await self.make_store()
        if not self.sweeps_itself:
            self.assertEqual(await store.expired(10), [])
            return
        now = store.clock.seconds()
        await store.commit([Put("soon", b"1", expires=now + 5), Put("later", b"2", expires=now + 50),
                            Put("forever", b"3")])
        self.assertEqual(await store.expired(10), [])
        self.advance(6)
        due = await store.expired(10)
        self.assertEqual([key for key, _ in due], ["soon"])
        stale = await store.commit([Expire("soon", due[0][1] + 1), Expire("forever", 1)])
        self.assertEqual(stale.changes, ())
        before = store.revision
        result = await store.commit([Expire(key, rev) for key, rev in due])
        self.assert_next_revision(before, result.revision)
        self.assertEqual([(c.kind, c.key) for c in result.changes], [("expire", "soon")])
        self.assertEqual(await store.expired(10), [])
        self.advance(100)
        self.assertEqual([key for key, _ in await store.expired(10)], ["later"])

    @contract
    async def test_rewrite_moves_expiry(self):
        """A rewrite without ttl clears the expiry; with one, moves it."""
        store = await self.make_store()
        if not self.sweeps_itself:
            return
        now = store.clock.seconds()
        await store.commit([Put("a", b"1", expires=now + 5), Put("b", b"1", expires=now + 5)])
        await store.commit([Put("a", b"2"), Put("b", b"2", expires=now + 500)])
        self.advance(10)
        self.assertEqual(await store.expired(10), [])
        self.assertEqual((await store.get("a")).value, b"2")

    @contract
    async def test_key_count(self):
        """Stores that count keys follow creates, deletes and expiries."""
        store = await self.make_store()
        if not hasattr(store, "key_count"):
            return
        await store.commit([Put("a", b""), Put("b", b""), Put("c", b"")])
        await store.commit([Put("a", b"again"), Delete("b"), Delete("nope")])
        self.assertEqual(store.key_count, 2)

    @contract
    async def test_delete_prefix_is_one_commit(self):
        """delete_prefix removes every key under the prefix in one revision, one delete change each, heard once."""
        store = await self.make_store()
        await store.commit([Put("app/a", b"1"), Put("app/b/c", b"2"), Put("app", b"3"), Put("apq", b"4")])
        heard = []
        store.add_listener(lambda result: heard.append(result))
        before = store.revision
        result = await store.delete_prefix("app/", 10)
        self.assert_next_revision(before, result.revision)
        self.assertEqual(store.revision, result.revision)
        self.assertEqual(
            sorted((c.kind, c.key, c.previous.value) for c in result.changes),
            [("delete", "app/a", b"1"), ("delete", "app/b/c", b"2")],
        )
        self.assertEqual([r.revision for r in heard], [result.revision])
        page = await store.list("", None, 10)
        self.assertEqual([e.key for e in page.entries], ["app", "apq"])
        if hasattr(store, "key_count"):
            self.assertEqual(store.key_count, 2)

    @contract
    async def test_delete_prefix_nothing_and_all(self):
        """A prefix matching nothing changes nothing; the empty prefix deletes every key."""
        store = await self.make_store()
        await store.commit([Put("a", b"1"), Put("b", b"2")])
        before = store.revision
        nothing = await store.delete_prefix("zz", 10)
        self.assertEqual((nothing.changes, store.revision), ((), before))
        everything = await store.delete_prefix("", 10)
        self.assertEqual(sorted(c.key for c in everything.changes), ["a", "b"])
        self.assertEqual((await store.list("", None, 10)).entries, ())

    @contract
    async def test_delete_prefix_limit_deletes_nothing(self):
        """More keys under the prefix than max_keys: LimitExceeded, and nothing is deleted."""
        store = await self.make_store()
        await store.commit([Put("p/%d" % i, b"x") for i in range(3)])
        before = store.revision
        error = await self.expect(LimitExceeded, store.delete_prefix("p/", 2))
        self.assertEqual((error.extra["limit"], error.extra["size"]), (2, 3))
        self.assertEqual(store.revision, before)
        self.assertEqual(len((await store.list("p/", None, 10)).entries), 3)
        result = await store.delete_prefix("p/", 3)
        self.assertEqual(len(result.changes), 3)

    @contract
    async def test_incr(self):
        """Incr adds to a JSON integer (absent: 0), keeps the expiry, and refuses a non-integer changing nothing."""
        store = await self.make_store()
        first = await store.commit([Incr("n", 5)])
        self.assertEqual(((await store.get("n")).value, first.changes[0].kind), (b"5", "put"))
        await store.commit([Incr("n", -7), Incr("n")])
        entry = await store.get("n")
        self.assertEqual((entry.value, entry.content_type, entry.version), (b"-1", "application/json", 2))
        big = 2 ** 80
        await store.commit([Put("big", str(big).encode(), "application/json"), Incr("big", big)])
        self.assertEqual((await store.get("big")).value, str(2 * big).encode())
        expires = store.clock.seconds() + 1000
        await store.commit([Put("ttl", b"1", "application/json", expires)])
        await store.commit([Incr("ttl")])
        self.assertEqual((await store.get("ttl")).expires, expires)
        before = store.revision
        for value, content_type in ((b"1.5", "application/json"), (b"true", "application/json"),
                                    (b"1", "text/plain"), (b'"1"', "application/json")):
            await store.commit([Put("x", value, content_type)])
            before = store.revision
            await self.expect(NotAnInteger, store.commit([Incr("n"), Incr("x")]))
            self.assertEqual((store.revision, (await store.get("n")).value), (before, b"-1"))

    # -- history (IHistoricalStore) -------------------------------------------

    async def historical_store(self):
        """
        A new store if it keeps history, else None once it is pinned that
        the store does not claim to.
        """
        store = await self.make_store()
        if not self.keeps_history:
            self.assertFalse(IHistoricalStore.providedBy(store))
            return None
        return store

    @contract
    async def test_history_interface(self):
        """A store that keeps history provides IHistoricalStore fully."""
        store = await self.historical_store()
        if store is None:
            return
        self.assertTrue(verifyObject(IHistoricalStore, store))
        self.assertEqual((store.compact_revision, store.history_size), (0, 0))

    @contract
    async def test_read_at_each_revision(self):
        """A read at a revision gives the key's value and metadata as of then."""
        store = await self.historical_store()
        if store is None:
            return
        created = await store.commit([Put("a", b"1", "text/plain"), Put("other", b"x")])
        updated = await store.commit([Put("a", b"2", "application/json")])
        deleted = await store.commit([Delete("a")])
        again = await store.commit([Put("a", b"3")])
        self.assertIsNone(await store.get_at("a", 0))
        first = await store.get_at("a", created.revision)
        self.assertEqual(
            (first.value, first.content_type, first.create_revision, first.mod_revision, first.version),
            (b"1", "text/plain", created.revision, created.revision, 1),
        )
        second = await store.get_at("a", updated.revision)
        self.assertEqual(
            (second.value, second.content_type, second.create_revision, second.mod_revision, second.version),
            (b"2", "application/json", created.revision, updated.revision, 2),
        )
        self.assertIsNone(await store.get_at("a", deleted.revision))
        third = await store.get_at("a", again.revision)
        self.assertEqual((third.value, third.create_revision, third.version), (b"3", again.revision, 1))
        self.assertEqual(await store.get_at("a", store.revision), await store.get("a"))
        if self.counts_history_records:
            self.assertEqual(store.history_size, 5)

    @contract
    async def test_list_at_revision(self):
        """A listing at a revision shows the keys as of then, paged at that revision."""
        store = await self.historical_store()
        if store is None:
            return
        old = await store.commit([Put("p/a", b"1"), Put("p/b", b"1"), Put("p/c", b"1"), Put("q", b"1")])
        await store.commit([Delete("p/b"), Put("p/a", b"2"), Put("p/d", b"2")])
        first = await store.list_at("p/", None, 2, old.revision)
        self.assertEqual(
            ([(e.key, e.value) for e in first.entries], first.more, first.revision),
            ([("p/a", b"1"), ("p/b", b"1")], True, old.revision),
        )
        rest = await store.list_at("p/", "p/b", 2, old.revision)
        self.assertEqual(([e.key for e in rest.entries], rest.more), (["p/c"], False))
        now = await store.list_at("p/", None, 10, store.revision)
        current = await store.list("p/", None, 10)
        self.assertEqual(now.entries, current.entries)

    @contract
    async def test_future_revision_refused(self):
        """Reads and compaction at a revision not reached yet are FutureRevision."""
        store = await self.historical_store()
        if store is None:
            return
        await store.commit([Put("a", b"1")])
        ahead = store.revision + 1
        await self.expect(FutureRevision, store.get_at("a", ahead))
        await self.expect(FutureRevision, store.list_at("", None, 10, ahead))
        await self.expect(FutureRevision, store.compact(ahead, 100))

    @contract
    async def test_compaction(self):
        """
        After compaction at C, reads before C are RevisionCompacted (naming
        C), reads at C and later are unchanged, and superseded records are gone.
        """
        store = await self.historical_store()
        if store is None:
            return
        await store.commit([Put("kept", b"1"), Put("gone", b"1"), Put("moved", b"1")])
        await store.commit([Delete("gone"), Put("moved", b"2")])
        middle = await store.commit([Put("moved", b"3")])
        later = await store.commit([Put("moved", b"4")])
        before = {r: await store.list_at("", None, 10, r) for r in (middle.revision, later.revision)}
        self.assertEqual(await store.compact(middle.revision, 1000), middle.revision)
        self.assertEqual(store.compact_revision, middle.revision)
        error = await self.expect(RevisionCompacted, store.get_at("kept", middle.revision - 1))
        self.assertEqual(error.extra["compact_revision"], middle.revision)
        await self.expect(RevisionCompacted, store.list_at("", None, 10, 0))
        for revision, page in before.items():
            self.assertEqual((await store.list_at("", None, 10, revision)).entries, page.entries)
        self.assertIsNone(await store.get_at("gone", middle.revision))
        # kept@1, moved@3 and moved@4 are all a read at C or later needs.
        if self.counts_history_records:
            self.assertEqual(store.history_size, 3)
        self.assertEqual(await store.compact(1, 1000), middle.revision)

    @contract
    async def test_compaction_in_bounded_steps(self):
        """A small record budget compacts a revision or so per step until the target."""
        store = await self.historical_store()
        if store is None:
            return
        for n in range(5):
            await store.commit([Put("a", b"%d" % n), Put("b", b"%d" % n)])
        target = store.revision
        steps = []
        while not steps or steps[-1] < target:
            steps.append(await store.compact(target, 1))
            self.assertLessEqual(len(steps), 10)
        self.assertEqual(steps, sorted(steps))
        if self.compacts_in_steps:
            self.assertGreater(len(steps), 1)
        self.assertEqual((await store.get_at("b", target)).value, b"4")
        if self.counts_history_records:
            self.assertEqual(store.history_size, 2)

    @contract
    async def test_history_of_expiry(self):
        """
        An expiry is a change in history, and a read at any revision treats
        an entry whose expiry has passed as absent, as current reads do.
        """
        store = await self.historical_store()
        if store is None:
            return
        now = store.clock.seconds()
        put = await store.commit([Put("t", b"1", expires=now + 5)])
        self.assertEqual((await store.get_at("t", put.revision)).expires, now + 5)
        self.advance(6)
        self.assertIsNone(await store.get_at("t", put.revision))
        self.assertEqual((await store.list_at("", None, 10, put.revision)).entries, ())
        if self.sweeps_itself:
            due = await store.expired(10)
            swept = await store.commit([Expire(key, rev) for key, rev in due])
            self.assertIsNone(await store.get_at("t", swept.revision))
            if self.counts_history_records:
                self.assertEqual(store.history_size, 2)

    # -- leases (ILeasingStore) -----------------------------------------------

    async def leasing_store(self):
        """
        A new store if it grants leases, else None once it is pinned that
        the store does not claim to.
        """
        store = await self.make_store()
        if not self.grants_leases:
            self.assertFalse(ILeasingStore.providedBy(store))
            # A put naming a lease is refused, never applied without it.
            await self.expect(LeasesUnsupported, store.commit([Put("a", b"1", lease=5)]))
            return None
        return store

    @contract
    async def test_lease_interface(self):
        """A store with leases provides ILeasingStore fully, holding none at first."""
        store = await self.leasing_store()
        if store is None:
            return
        self.assertTrue(verifyObject(ILeasingStore, store))
        self.assertEqual(store.lease_count, 0)

    @contract
    async def test_lease_grant_attach_show(self):
        """A granted lease is shown with its ttl, remaining time and attached keys."""
        store = await self.leasing_store()
        if store is None:
            return
        lease = await store.grant(10, 100)
        self.assertEqual((lease.ttl, lease.deadline), (10, store.clock.seconds() + 10))
        await store.commit([Put("b", b"1", lease=lease.id), Put("a", b"1", lease=lease.id), Put("c", b"1")])
        self.advance(4)
        shown = await store.lease(lease.id)
        self.assertEqual((shown.id, shown.keys), (lease.id, ("a", "b")))
        self.assertEqual(store.lease_count, 1)
        if not self.lease_clock_injected:
            self.assertIsNone(store.next_deadline)
            return
        self.assertEqual(shown.remaining(store.clock.seconds()), 6)
        self.assertEqual(store.next_deadline, lease.deadline)
        later = await store.grant(30, 100)
        renewed = await store.keepalive(lease.id)
        self.assertEqual(store.next_deadline, renewed.deadline)
        await store.revoke(lease.id)
        self.assertEqual(store.next_deadline, later.deadline)
        await store.revoke(later.id)
        self.assertIsNone(store.next_deadline)

    @contract
    async def test_lease_listing(self):
        """
        A store that lists its leases (optional: ILeaseListing) gives the
        held ones, soonest deadline first, with their keys, at most
        C{limit}; a revoked lease and one past its deadline are not listed.
        """
        store = await self.leasing_store()
        if store is None or not ILeaseListing.providedBy(store):
            return
        self.assertTrue(verifyObject(ILeaseListing, store))
        self.assertEqual(await store.held_leases(10), [])
        late = await store.grant(30, 100)
        soon = await store.grant(10, 100)
        gone = await store.grant(20, 100)
        await store.commit(
            [Put("b", b"1", lease=soon.id), Put("a", b"1", lease=soon.id), Put("c", b"1", lease=late.id)]
        )
        await store.revoke(gone.id)
        listed = await store.held_leases(10)
        self.assertEqual(
            [(lease.id, lease.keys, lease.deadline) for lease in listed],
            [(soon.id, ("a", "b"), soon.deadline), (late.id, ("c",), late.deadline)],
        )
        self.assertEqual([lease.id for lease in await store.held_leases(1)], [soon.id])
        # Due, even before the sweeper's commit removes it: gone from the list.
        self.advance(10)
        self.assertEqual([lease.id for lease in await store.held_leases(10)], [late.id])

    @contract
    async def test_lease_keepalive_writes_nothing(self):
        """A keepalive moves the deadline and makes no revision and no change."""
        store = await self.leasing_store()
        if store is None:
            return
        seen = []
        store.add_listener(seen.append)
        lease = await store.grant(10, 100)
        await store.commit([Put("a", b"1", lease=lease.id)])
        revision, changes = store.revision, len(seen)
        self.advance(8)
        renewed = await store.keepalive(lease.id)
        self.assertEqual(renewed.deadline, store.clock.seconds() + 10)
        self.assertEqual((store.revision, len(seen)), (revision, changes))
        self.advance(8)
        self.assertEqual((await store.lease(lease.id)).keys, ("a",))
        self.assertEqual(await store.expired_leases(10), [])

    @contract
    async def test_lease_revoke_deletes_keys_in_one_commit(self):
        """A revoke deletes every key of the lease in one commit, then the lease is gone."""
        store = await self.leasing_store()
        if store is None:
            return
        lease = await store.grant(10, 100)
        await store.commit([Put("a", b"1", lease=lease.id), Put("b", b"1", lease=lease.id), Put("c", b"1")])
        seen = []
        store.add_listener(seen.append)
        before = store.revision
        result = await store.revoke(lease.id)
        self.assert_next_revision(before, result.revision)
        self.assertEqual(sorted((c.kind, c.key) for c in result.changes), [("delete", "a"), ("delete", "b")])
        self.assertEqual(len(seen), 1)
        self.assertEqual(sorted(await store.get_many(["a", "b", "c"])), ["c"])
        await self.expect(LeaseNotFound, store.lease(lease.id))
        await self.expect(LeaseNotFound, store.revoke(lease.id))
        await self.expect(LeaseNotFound, store.keepalive(lease.id))
        self.assertEqual(store.lease_count, 0)

    @contract
    async def test_lease_expiry_expires_keys_in_one_commit(self):
        """A due lease is gone at once; expire_lease removes its keys as expire changes in one commit."""
        store = await self.leasing_store()
        if store is None or not self.lease_clock_injected:
            # etcd expires its leases by its own clock: see its own tests.
            return
        lease = await store.grant(5, 100)
        await store.commit([Put("a", b"1", lease=lease.id), Put("b", b"1", lease=lease.id)])
        self.advance(5)
        await self.expect(LeaseNotFound, store.keepalive(lease.id))
        await self.expect(LeaseNotFound, store.commit([Put("c", b"1", lease=lease.id)]))
        self.assertEqual(await store.expired_leases(10), [lease.id])
        before = store.revision
        result = await store.expire_lease(lease.id)
        self.assert_next_revision(before, result.revision)
        self.assertEqual(sorted((c.kind, c.key) for c in result.changes), [("expire", "a"), ("expire", "b")])
        self.assertEqual(await store.get_many(["a", "b", "c"]), {})
        self.assertIsNone(await store.expire_lease(lease.id))
        self.assertEqual((await store.expired_leases(10), store.lease_count), ([], 0))

    @contract
    async def test_lease_attachment_follows_the_last_write(self):
        """A put without the lease, or a delete, detaches the key; a put with another lease moves it."""
        store = await self.leasing_store()
        if store is None:
            return
        one = await store.grant(10, 100)
        two = await store.grant(10, 100)
        await store.commit([Put(k, b"1", lease=one.id) for k in ("a", "b", "c")])
        await store.commit([Put("a", b"2"), Delete("b"), Put("c", b"2", lease=two.id)])
        self.assertEqual((await store.lease(one.id)).keys, ())
        self.assertEqual((await store.lease(two.id)).keys, ("c",))
        await store.revoke(one.id)
        self.assertEqual(sorted(await store.get_many(["a", "c"])), ["a", "c"])

    @contract
    async def test_lease_unknown_is_refused_and_applies_nothing(self):
        """A put naming an unknown lease fails the whole commit."""
        store = await self.leasing_store()
        if store is None:
            return
        error = await self.expect(LeaseNotFound, store.commit([Put("a", b"1"), Put("b", b"1", lease=12345)]))
        self.assertEqual(error.extra["lease"], 12345)
        self.assertIsNone(await store.get("a"))
        if self.exact_revisions:
            self.assertEqual(store.revision, 0)
        await self.expect(LeaseNotFound, store.lease(12345))

    @contract
    async def test_lease_limit(self):
        """Past max_leases held, a grant is LimitExceeded; a revoke makes room."""
        store = await self.leasing_store()
        if store is None:
            return
        first = await store.grant(10, 2)
        await store.grant(10, 2)
        error = await self.expect(LimitExceeded, store.grant(10, 2))
        self.assertTrue(error.too_many)
        await store.revoke(first.id)
        await store.grant(10, 2)
    @contract
    async def test_replay_changes(self):
        """
        changes() replays whole commits after a revision, in order, each
        change with the entry after and before it; bounded by the record
        budget but never splitting a commit.
        """
        store = await self.historical_store()
        if store is None:
            return
        first = await store.commit([Put("b", b"1"), Put("a", b"1")])
        second = await store.commit([Put("a", b"2"), Delete("b")])
        third = await store.commit([Put("c", b"3")])
        replay = await store.changes(0, store.revision, 1000)
        self.assertEqual([r.revision for r in replay], [first.revision, second.revision, third.revision])
        self.assertEqual(
            [(c.kind, c.key, c.entry and c.entry.value, c.previous and c.previous.value)
             for c in replay[1].changes],
            [("put", "a", b"2", b"1"), ("delete", "b", None, b"1")],
        )
        self.assertEqual(replay[1].changes[0].entry, await store.get_at("a", second.revision))
        bounded = await store.changes(0, store.revision, 1)
        self.assertEqual([(r.revision, len(r.changes)) for r in bounded], [(first.revision, 2)])
        self.assertEqual([r.revision for r in await store.changes(first.revision, second.revision, 1000)],
                         [second.revision])
        self.assertEqual(await store.changes(third.revision, store.revision, 1000), [])
        await store.compact(second.revision, 1000)
        await self.expect(RevisionCompacted, store.changes(first.revision, store.revision, 1000))
        after = await store.changes(second.revision, store.revision, 1000)
        self.assertEqual([(c.key, c.previous) for c in after[0].changes], [("c", None)])
