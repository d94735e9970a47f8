"""
The read cache (L{kvtwist.store.cache.CachedStore}): hits never leave the
reactor thread, and no read is ever staler than the last acknowledged
commit, nor sees a staged write.
"""

import gc
import pickle
import sys
import tracemalloc

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from kvtwist.events import ChangeHub
from kvtwist.interfaces import ICountedStore, ILinearizableReads, IReadCache, IWatchedStore
from kvtwist.metrics import Metrics, TimedStore
from kvtwist.model import Change, CommitResult, Delete, Entry, Put
from kvtwist.store.cache import ABSENT, Absent, CachedStore, cost
from kvtwist.store.etcd.watchloop import WatchReset
from kvtwist.testing import MemoryStore, WatchedMemoryStore, memory_root
from tests.helpers.capability_fakes import DeclaredLinearizable, UndeclaredExtras
from tests.contract.store_contract import StoreContract
# Modules, not classes: names imported here would be collected twice.
from tests.unit import test_web_seed as seed_tests
from tests.unit import test_web_v1 as v1_tests
from tests.helpers.webtest import TreeClient


class SlowStore(MemoryStore):
    """A MemoryStore whose reads wait until the test releases them."""

    def __init__(self, clock=None):
        super().__init__(clock)
        self.reads = []

    def get(self, key):
        d = Deferred()
        self.reads.append((key, d))
        return d

    def release(self):
        """Answer every held read with the store's current state."""
        reads, self.reads = self.reads, []
        for key, d in reads:
            d.callback(MemoryStore.get(self, key).result)


class CachedStoreContractTests(StoreContract, SynchronousTestCase):
    """A cached MemoryStore still keeps the whole store contract."""

    capabilities = (IReadCache, ILinearizableReads, ICountedStore)

    async def make_store(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        return CachedStore(MemoryStore(self.clock), 1 << 20)

    def advance(self, seconds):
        self.clock.advance(seconds)

    def settle(self, d):
        self.successResultOf(d)


class TimedCachedStoreContractTests(StoreContract, SynchronousTestCase):
    """kvcache's own stack, the cache over the commit timer over a store, keeps the whole store contract."""

    capabilities = (IReadCache, ILinearizableReads, ICountedStore)

    async def make_store(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        timed = TimedStore(MemoryStore(self.clock), Metrics(process=False), self.clock)
        return CachedStore(timed, 1 << 20)

    def advance(self, seconds):
        self.clock.advance(seconds)

    def settle(self, d):
        self.successResultOf(d)


class CapabilityTests(SynchronousTestCase):
    """The cache uses what the store under it declares, and only that."""

    def test_undeclared_capabilities_are_not_used(self):
        """
        Over a store that has the methods of IWatchedStore, ILinearizableReads
        and ICountedStore without declaring them, the cache registers no reset
        listener, reads ?consistent=1 with get, and declares neither the key
        count nor resets itself.
        """
        inner = UndeclaredExtras()
        cache = CachedStore(inner, 1 << 20)
        self.successResultOf(inner.commit([Put("a", b"1")]))
        self.assertEqual(self.successResultOf(cache.get_linearizable("a")).value, b"1")
        self.assertEqual((inner.reset_listeners, inner.linearizable_reads), ([], []))
        self.assertFalse(ICountedStore.providedBy(cache))
        self.assertFalse(IWatchedStore.providedBy(cache))

    def test_declared_capabilities_are_used(self):
        """Over a store declaring ILinearizableReads, the cache's linearizable read is the store's."""
        inner = DeclaredLinearizable()
        cache = CachedStore(inner, 1 << 20)
        self.successResultOf(inner.commit([Put("a", b"1")]))
        self.assertEqual(self.successResultOf(cache.get_linearizable("a")).value, b"1")
        self.assertEqual(inner.linearizable_reads, ["a"])

    def test_key_count_and_resets_pass_through(self):
        """
        Over a store declaring ICountedStore and IWatchedStore, the cache
        declares both (verifyObject) and forwards them: a change hub built
        on the cache hears the store's resets after the cache did.
        """
        inner = WatchedMemoryStore()
        cache = CachedStore(inner, 1 << 20)
        self.assertTrue(verifyObject(ICountedStore, cache))
        self.assertTrue(verifyObject(IWatchedStore, cache))
        hub = ChangeHub(cache, 100)
        self.successResultOf(cache.commit([Put("a", b"1"), Put("b", b"2")]))
        self.assertEqual(cache.key_count, 2)
        self.assertEqual(len(inner.reset_listeners), 2)
        for listener in inner.reset_listeners:
            listener(WatchReset(True, True, 1, "compacted"))
        self.assertEqual(hub.horizon, 1)
        self.assertEqual(cache.peek("a"), (False, None))


class CacheTests(SynchronousTestCase):
    """Coherence, bounds and read sharing."""

    def setUp(self):
        self.inner = SlowStore()
        self.cache = CachedStore(self.inner, 1 << 20)

    def seed(self, key, value):
        """Put a committed entry in the inner store behind the cache's back."""
        self.inner.rows[key] = Entry(key, value, "application/octet-stream", 1, 1, 1)

    def test_hit_after_miss(self):
        """A miss reads the store once; later reads are hits with no store read."""
        self.seed("a", b"1")
        d = self.cache.get("a")
        self.assertEqual(len(self.inner.reads), 1)
        self.inner.release()
        self.assertEqual(self.successResultOf(d).value, b"1")
        self.assertEqual(self.successResultOf(self.cache.get("a")).value, b"1")
        self.assertEqual((self.cache.hits, self.cache.misses, len(self.inner.reads)), (1, 1, 0))

    def test_concurrent_misses_share_one_read(self):
        """Three reads of one uncached key make one store read."""
        ds = [self.cache.get("a") for _ in range(3)]
        self.assertEqual(len(self.inner.reads), 1)
        self.inner.release()
        self.assertEqual([self.successResultOf(d) for d in ds], [None] * 3)
        self.assertEqual(self.cache.peek("a"), (True, None))

    def test_no_stale_read_after_commit(self):
        """After a commit is acknowledged, reads see it, with no store read."""
        self.successResultOf(self.cache.commit([Put("a", b"1")]))
        self.successResultOf(self.cache.commit([Put("a", b"2")]))
        self.assertEqual(self.successResultOf(self.cache.get("a")).value, b"2")
        self.successResultOf(self.cache.commit([Delete("a")]))
        self.assertIsNone(self.successResultOf(self.cache.get("a")))
        self.assertEqual(self.inner.reads, [])

    def test_inflight_miss_does_not_refill_old_value(self):
        """A miss in flight across a commit does not put the old value back."""
        self.seed("a", b"old")
        self.inner.get = lambda key: succeed_later(self.inner, key, b"old")
        d = self.cache.get("a")
        self.successResultOf(self.cache.commit([Put("a", b"new")]))
        self.inner.release()
        self.successResultOf(d)
        self.assertEqual(self.successResultOf(self.cache.get("a")).value, b"new")

    def test_get_many_across_commit_does_not_fill(self):
        """A batch read overlapping a commit leaves the commit's state cached."""
        inner = MemoryStore()
        cache = CachedStore(inner, 1 << 20)
        held = Deferred()
        inner.get_many = lambda keys: held
        d = cache.get_many(["a"])
        self.successResultOf(cache.commit([Put("a", b"new")]))
        held.callback({})
        self.successResultOf(d)
        self.assertEqual(cache.peek("a")[1].value, b"new")

    def test_staged_never_visible(self):
        """Writes staged through the tree are not in the cache until committed."""
        store = CachedStore(MemoryStore(), 1 << 20)
        client = TreeClient(self, memory_root(store))
        client.request("GET", "/a")  # cache the absence
        client.request("POST", "/set", json_body={"a": 1})
        self.assertEqual(client.request("GET", "/a").status, 404)
        client.request("POST", "/commit")
        self.assertEqual(client.request("GET", "/a").body, b"1")

    def test_eviction_respects_bound(self):
        """The cache never holds more than max_bytes; least recently used go first."""
        one = cost("k0", Entry("k0", b"x" * 100, "application/octet-stream", 1, 1, 1))
        cache = CachedStore(MemoryStore(), one * 3)
        for i in range(5):
            self.successResultOf(cache.commit([Put("k%d" % i, b"x" * 100)]))
            self.assertLessEqual(cache.size, cache.max_bytes)
        self.assertEqual(list(cache._cache), ["k2", "k3", "k4"])
        cache.peek("k2")
        self.successResultOf(cache.commit([Put("k5", b"y" * 100)]))
        self.assertEqual(list(cache._cache), ["k4", "k2", "k5"])

    def test_oversized_value_not_cached(self):
        """A value bigger than the whole cache is served from the store."""
        cache = CachedStore(MemoryStore(), 1000)
        self.successResultOf(cache.commit([Put("big", b"x" * 5000)]))
        self.assertEqual(cache.peek("big"), (False, None))
        self.assertEqual(len(self.successResultOf(cache.get("big")).value), 5000)

    def test_expired_hit_is_absent(self):
        """A cached entry past its expiry reads as absent."""
        clock = Clock()
        cache = CachedStore(MemoryStore(clock), 1 << 20)
        self.successResultOf(cache.commit([Put("t", b"1", expires=10.0)]))
        self.assertIsNotNone(self.successResultOf(cache.get("t")))
        clock.advance(10)
        self.assertIsNone(self.successResultOf(cache.get("t")))

    def test_invalidate_all(self):
        """invalidate_all empties the cache and marks in-flight reads stale."""
        self.successResultOf(self.cache.commit([Put("a", b"1")]))
        d = self.cache.get("b")
        self.cache.invalidate_all()
        self.inner.release()
        self.successResultOf(d)
        self.assertEqual((len(self.cache), self.cache.size), (0, 0))
        self.assertIs(self.cache._cache.get("b", ABSENT), ABSENT)


def doubled(entry):
    """An encoder for the tests: any function of the entry alone."""
    return entry.value * 2


def other_encoder(entry):
    """A second encoder, whose results must never be mixed with the first's."""
    return entry.value + b"!"


def put_change(revision, entry):
    """The CommitResult of a commit that wrote C{entry}."""
    return CommitResult(revision, (Change("put", entry.key, entry, None),))


class EncodedTests(SynchronousTestCase):
    """peek_encoded: answers built once per cached entry, never stale."""

    def setUp(self):
        self.clock = Clock()
        self.cache = CachedStore(MemoryStore(self.clock), 1 << 20)
        self.calls = []

    def encode(self, entry):
        self.calls.append(entry.value)
        return doubled(entry)

    def test_built_once_per_entry(self):
        """The encoder runs on the first hit only; later hits reuse its result."""
        self.successResultOf(self.cache.commit([Put("a", b"1")]))
        encode = self.encode
        self.assertEqual([self.cache.peek_encoded("a", encode) for _ in range(3)], [b"11"] * 3)
        self.assertEqual(self.calls, [b"1"])
        self.assertEqual(self.cache.hits, 3)

    def test_rebuilt_after_commit(self):
        """A commit to the key drops its encoded answer with the old entry."""
        encode = self.encode
        self.successResultOf(self.cache.commit([Put("a", b"1")]))
        self.assertEqual(self.cache.peek_encoded("a", encode), b"11")
        self.successResultOf(self.cache.commit([Put("a", b"22")]))
        self.assertEqual(self.cache.peek_encoded("a", encode), b"2222")
        self.successResultOf(self.cache.commit([Delete("a")]))
        self.assertIsNone(self.cache.peek_encoded("a", encode))
        self.assertEqual(self.calls, [b"1", b"22"])

    def test_other_encoder_not_served(self):
        """An encoder never gets another encoder's result for the same entry."""
        self.successResultOf(self.cache.commit([Put("a", b"1")]))
        self.assertEqual(self.cache.peek_encoded("a", doubled), b"11")
        self.assertEqual(self.cache.peek_encoded("a", other_encoder), b"1!")
        self.assertEqual(self.cache.peek_encoded("a", doubled), b"11")

    def test_absent_expired_and_uncached_are_not_answered(self):
        """
        Absent, expired and uncached keys give None and count no hit: the
        ordinary read answers (and counts) them.
        """
        self.successResultOf(self.cache.commit([Put("t", b"1", expires=10.0)]))
        self.successResultOf(self.cache.get("gone"))
        self.clock.advance(10)
        for key in ("t", "gone", "never-read"):
            self.assertIsNone(self.cache.peek_encoded(key, self.encode))
        self.assertEqual((self.cache.hits, self.calls), (0, []))

    def test_delete_of_unread_key_caches_nothing(self):
        """A delete caches the absence of keys that were cached, not of keys nobody read."""
        self.successResultOf(self.cache.commit([Put("a", b"1"), Put("b", b"2")]))
        self.cache.invalidate_all()
        self.successResultOf(self.cache.get("a"))
        self.successResultOf(self.cache.commit([Delete("a"), Delete("b")]))
        self.assertEqual(list(self.cache._cache), ["a"])
        self.assertEqual(self.cache.peek("a"), (True, None))

    def test_charged_and_released(self):
        """An encoded answer is charged when built and released with its entry."""
        self.successResultOf(self.cache.commit([Put("a", b"x" * 1000)]))
        before = self.cache.size
        encoded = self.cache.peek_encoded("a", doubled)
        self.assertEqual(self.cache.size, before + sys.getsizeof(encoded))
        self.cache.peek_encoded("a", other_encoder)
        self.assertEqual(self.cache.size, before + sys.getsizeof(b"x" * 1000 + b"!"))
        self.successResultOf(self.cache.commit([Delete("a")]))
        self.assertEqual(self.cache.size, cost("a", Absent(2)))

    def test_bound_holds_with_encoded_answers(self):
        """Charging encoded answers evicts the least recently used keys, never the bound."""
        one = cost("k0", Entry("k0", b"x" * 100, "application/octet-stream", 1, 1, 1))
        cache = CachedStore(MemoryStore(), one * 3)
        for i in range(3):
            self.successResultOf(cache.commit([Put("k%d" % i, b"x" * 100)]))
        self.assertEqual(cache.peek_encoded("k0", doubled), b"x" * 200)
        self.assertLessEqual(cache.size, cache.max_bytes)
        # k0 became the most recently used; k1, now the least, made room.
        self.assertEqual(list(cache._cache), ["k2", "k0"])
        self.assertIsNone(cache.peek_encoded("k1", doubled))

    def test_alone_over_the_bound(self):
        """An answer that makes its own key pass the bound is still right, then dropped."""
        cache = CachedStore(MemoryStore(), cost("a", Entry("a", b"x" * 100, "application/octet-stream", 1, 1, 1)) + 50)
        self.successResultOf(cache.commit([Put("a", b"x" * 100)]))
        self.assertEqual(cache.peek_encoded("a", doubled), b"x" * 200)
        self.assertEqual((len(cache), cache.size), (0, 0))


class MemoryBoundTests(SynchronousTestCase):
    """
    The cache charges what its keys really take in memory (every Python
    object, measured with tracemalloc), so --cache-size bounds the process
    and not only the key and value bytes.
    """

    def filled(self, records, encode=None):
        """
        Fill a cache with entries rebuilt from pickled records, as the
        shelve store makes them (every string and int its own object), and
        return the bytes they keep allocated and the cache.
        """
        cache = CachedStore(MemoryStore(), 1 << 40)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for revision, (key, record) in enumerate(records, 1):
                key = pickle.loads(key)
                if record is None:
                    # A read that finds nothing caches the key's absence
                    # (a delete of a key nobody read caches nothing).
                    cache.get(key)
                    continue
                cache.apply_changes(put_change(revision, Entry.from_record(key, pickle.loads(record))))
                if encode is not None:
                    cache.peek_encoded(key, encode)
            gc.collect()
            used = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        return used, cache

    def assertCharged(self, records, encode=None):
        used, cache = self.filled(records, encode)
        self.assertEqual(len(cache), len(records))
        # Never less than the real memory; not so much more that the cache
        # holds far fewer keys than its bound allows.
        self.assertLessEqual(used, cache.size)
        self.assertLessEqual(cache.size, 1.5 * used)

    @staticmethod
    def records(count, key, value, expires=None):
        """Pickled (key, record) pairs of C{count} entries."""
        return [
            (
                pickle.dumps(key % i),
                pickle.dumps(
                    Entry(key % i, value(i), "application/json", 1000 + i, 1000 + i, 7, expires).to_record()
                ),
            )
            for i in range(count)
        ]

    def test_small_values(self):
        """Small JSON values (the soak's): object overhead is most of the cost."""
        self.assertCharged(
            self.records(2000, "k%08d", lambda i: b'{"n":%d,"s":"populated value"}' % i)
        )

    def test_large_values(self):
        """10 KiB values: the value bytes are most of the cost."""
        self.assertCharged(self.records(200, "big/%d", lambda i: b"v" * 10240))

    def test_ttl_and_non_ascii_keys(self):
        """Keys with an expiry and keys that are not ASCII."""
        self.assertCharged(
            self.records(2000, "clé-ü-%d", lambda i: b"%d" % i, expires=2e9)
        )

    def test_absent_keys(self):
        """Known-absent keys (read and not found)."""
        self.assertCharged([(pickle.dumps("gone-%d" % i), None) for i in range(2000)])

    def test_with_encoded_answers(self):
        """Encoded answers built on hits are charged too."""
        self.assertCharged(
            self.records(2000, "k%08d", lambda i: b'{"n":%d}' % i), encode=doubled
        )


def succeed_later(store, key, value):
    """A held read that answers C{value} when the store releases reads."""
    d = Deferred()
    store.reads.append((key, d))
    return d


class CachedTree:
    """Run a web test class over a cached store."""

    def setUp(self):
        super().setUp()
        self.client = TreeClient(
            self,
            memory_root(
                CachedStore(self.store, 1 << 20), limits=getattr(self, "limits", None)
            ),
        )


class CachedSeedRouteTests(CachedTree, seed_tests.SeedRouteTests):
    """The seed routes behave the same over the read cache."""


class CachedBadInputTests(CachedTree, seed_tests.BadInputTests):
    """Bad input is refused the same over the read cache."""


class CachedKeyTests(CachedTree, v1_tests.KeyTests):
    """v1 keys behave the same over the read cache."""


class CachedConditionalTests(CachedTree, v1_tests.ConditionalTests):
    """Conditional requests behave the same over the read cache."""


class CachedTTLTests(CachedTree, v1_tests.TTLTests):
    """TTLs behave the same over the read cache."""


class CachedListingTests(CachedTree, v1_tests.ListingTests):
    """Listings behave the same over the read cache."""


class CachedTransactionTests(CachedTree, v1_tests.TransactionTests):
    """Transactions behave the same over the read cache."""


class CachedBatchTests(CachedTree, v1_tests.BatchTests):
    """Batches behave the same over the read cache."""


class ResetTests(SynchronousTestCase):
    """A store whose change feed can be lost (etcd) resets the cache."""

    def test_cache_bypassed_while_watch_is_down(self):
        """While the watch is down the cache neither answers nor fills."""
        from kvtwist.store.etcd.watchloop import WatchReset

        inner = WatchedMemoryStore()
        resets = inner.reset_listeners
        cache = CachedStore(inner, 1 << 20)
        self.successResultOf(cache.commit([Put("a", b"1")]))
        self.assertEqual(cache.peek("a")[0], True)
        resets[0](WatchReset(False, False, 1, "lost"))
        self.assertEqual(cache.peek("a"), (False, None))
        self.successResultOf(cache.get("a"))
        self.assertEqual(cache.peek("a"), (False, None))
        resets[0](WatchReset(True, False, 1, "back"))
        self.successResultOf(cache.get("a"))
        self.assertEqual(cache.peek("a")[0], True)

    def test_linearizable_read_skips_cache(self):
        """get_linearizable reads the store even when the key is cached."""
        inner = SlowStore()
        cache = CachedStore(inner, 1 << 20)
        self.successResultOf(cache.commit([Put("a", b"1")]))
        d = cache.get_linearizable("a")
        self.assertEqual(len(inner.reads), 1)
        inner.release()
        self.assertEqual(self.successResultOf(d).value, b"1")


class ReplayTests(SynchronousTestCase):
    """Changes replayed after a watch reset never overwrite newer reads."""

    def test_older_change_does_not_overwrite_newer_entry(self):
        """A replayed put older than the cached entry is ignored."""
        inner = MemoryStore()
        cache = CachedStore(inner, 1 << 20)
        self.successResultOf(cache.commit([Put("a", b"1")]))
        self.successResultOf(cache.commit([Put("a", b"2")]))
        old = Entry("a", b"1", "application/octet-stream", 1, 1, 1)
        cache.apply_changes(CommitResult(1, (Change("put", "a", old, None),)))
        self.assertEqual(cache.peek("a")[1].value, b"2")

    def test_older_put_does_not_resurrect_absent(self):
        """A replayed put older than a cached absence is ignored."""
        inner = MemoryStore()
        cache = CachedStore(inner, 1 << 20)
        self.successResultOf(cache.commit([Put("a", b"1")]))
        self.successResultOf(cache.commit([Delete("a")]))
        old = Entry("a", b"1", "application/octet-stream", 1, 1, 1)
        cache.apply_changes(CommitResult(1, (Change("put", "a", old, None),)))
        self.assertEqual(cache.peek("a"), (True, None))
