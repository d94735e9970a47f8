"""
Read-cache coherence across kvcache nodes sharing one etcd cluster.

Each "node" here is the storage stack of one kvcache process: a
L{CachedStore} over its own L{EtcdStore}, with the store's reset hook wired
to L{CachedStore.invalidate_all} (as the service wires it). No HTTP layer:
what is pinned is that a commit made through node A reaches node B's cache
through B's etcd watch, how long that takes, and what happens to B's cache
when its watch or etcd's quorum is lost.

 - On a one-member etcd and on three members (A and B on different ones):
   the delay from A's commit to B's cache, measured
   over 500 writes and printed (run pytest with C{-s} to see it); and two
   nodes committing concurrently end with identical, correct caches.
 - On a three-member etcd: killing (SIGKILL) the member that carries B's
   watch empties B's cache until the watch runs again on another member;
   killing two members makes writes and linearizable reads fail with
   StoreUnavailable and empties B's cache, and restarting them restores
   service. Throughout, writers record every commit's outcome, and a model
   check finds every acknowledged commit whole and nothing applied that was
   refused.

Skipped, with the reason, when etcd is not installed.
"""

from __future__ import annotations

import random
import time
from typing import Dict, List, Set

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from benchmarks.stats import percentile
from kvtwist.errors import ConflictError, StoreUnavailable
from kvtwist.model import Check, CommitResult, Delete, Put
from kvtwist.store.cache import CachedStore
from kvtwist.store.etcd.store import EtcdStore
from kvtwist.store.etcd.watchloop import WatchReset
from tests.helpers.etcd import EtcdCluster, etcd_available, wait_for
from tests.contract.store_contract import ExpectFailure

_AVAILABLE, _REASON = etcd_available()
SKIP = None if _AVAILABLE else _REASON

#: Bytes of read cache per node: more than every test's keys.
CACHE_BYTES = 4 << 20


class Node:
    """
    One kvcache node's storage: a read cache over an etcd store, the reset
    hook wired to drop the cache, and a record of what its listeners heard.

    @ivar arrivals: revision -> C{time.perf_counter()} when the listeners
        (the cache first) heard it.
    @ivar heard: revisions in the order listeners heard them.
    @ivar resets: each L{WatchReset} with the cache's size just after it
        was handled and the C{time.perf_counter()} it came.
    """

    def __init__(self, name: str, endpoints: List[str], timeout: float = 3.0) -> None:
        self.name = name
        self.store = EtcdStore(endpoints, reactor, timeout=timeout)
        self.cache = CachedStore(self.store, CACHE_BYTES)
        self.arrivals: Dict[int, float] = {}
        self.heard: List[int] = []
        self.resets: List[tuple] = []
        self._waiting: Dict[int, List[Deferred]] = {}
        # Registered after the cache's own listener: when this runs, the
        # cache already holds the change.
        self.store.add_listener(self._heard)
        self.store.add_reset_listener(self._reset)

    def _heard(self, result: CommitResult) -> None:
        self.arrivals[result.revision] = time.perf_counter()
        self.heard.append(result.revision)
        for waiter in self._waiting.pop(result.revision, []):
            waiter.callback(None)

    def _reset(self, reset: WatchReset) -> None:
        # What the service does with the hook: the cache may have missed
        # changes, so it forgets everything.
        self.cache.invalidate_all()
        self.resets.append((reset, len(self.cache), time.perf_counter()))

    def heard_revision(self, revision: int, timeout: float = 10.0) -> Deferred:
        """A Deferred firing once listeners heard C{revision} (failing after C{timeout})."""
        d: Deferred = Deferred()
        if revision in self.arrivals:
            d.callback(None)
            return d
        self._waiting.setdefault(revision, []).append(d)
        return d.addTimeout(timeout, reactor)

    def peek(self, key: str):
        """The cache's answer without I/O: C{(hit, value or None)}."""
        hit, entry = self.cache.peek(key)
        return hit, entry.value if entry is not None else None


class ModelWriter:
    """
    Commits through one node until stopped: commit C{n} writes the three
    keys C{model/<name><n>/0..2}, all with value C{n}. Every outcome is
    recorded, so a model check can tell afterwards that each acknowledged
    commit is there whole, none is there in part, and none refused with
    "nothing was applied" is there at all.
    """

    def __init__(self, node: Node, name: str, limit: int = 2000) -> None:
        self.node = node
        self.name = name
        self.limit = limit
        self.acked: Dict[str, int] = {}
        self.refused: Set[str] = set()
        self.unknown: Set[str] = set()
        self.stopped = False
        self.done: Deferred = Deferred.fromCoroutine(self._run())

    async def _run(self) -> None:
        for n in range(self.limit):
            if self.stopped:
                return
            commit = "%s%05d" % (self.name, n)
            ops = [Put("model/%s/%d" % (commit, j), commit.encode("ascii")) for j in range(3)]
            try:
                result = await self.node.cache.commit(ops)
            except StoreUnavailable as e:
                if e.extra.get("outcome") == "unknown":
                    self.unknown.add(commit)
                else:
                    self.refused.add(commit)
                # Do not spin while etcd is down.
                await deferLater(reactor, 0.1)
                continue
            self.acked[commit] = result.revision
            # Leave the reactor to the test between commits.
            await deferLater(reactor, 0.005)

    def stop(self) -> Deferred:
        """Stop after the commit in flight; fires when the writer is done."""
        self.stopped = True
        return self.done


class CoherenceTestCase(ExpectFailure, TestCase):
    """Helpers: nodes on a cluster, and the model check."""

    skip = SKIP
    timeout = 90

    def start_cluster(self, size: int) -> EtcdCluster:
        cluster = EtcdCluster(size)
        self.addCleanup(cluster.stop)
        cluster.start()
        return cluster

    async def open_node(self, name: str, endpoints: List[str], **kw) -> Node:
        node = Node(name, endpoints, **kw)
        await node.cache.open()
        self.addCleanup(node.cache.close)
        return node

    def start_writer(self, node: Node, name: str) -> ModelWriter:
        """A L{ModelWriter} on C{node}, stopped before the node closes."""
        writer = ModelWriter(node, name)
        self.addCleanup(writer.stop)
        return writer

    async def model_check(self, endpoints: List[str], writers: List[ModelWriter]) -> int:
        """
        Read every model key linearizably through a fresh store and check
        each writer's record: acknowledged commits whole, refused ones
        absent, none partial. Returns how many commits were found.
        """
        checker = EtcdStore(endpoints, reactor, timeout=5.0, watch=False)
        await checker.open()
        try:
            found: Dict[str, List[bytes]] = {}
            after = None
            for _ in range(1000):
                page = await checker.list("model/", after, 500)
                for entry in page.entries:
                    commit = entry.key.split("/")[1]
                    found.setdefault(commit, []).append(entry.value)
                if not page.more:
                    break
                after = page.entries[-1].key
            else:
                self.fail("the model keys did not fit in 1000 pages")
        finally:
            await checker.close()
        partial = {c: v for c, v in found.items() if v != [c.encode("ascii")] * 3}
        self.assertEqual(partial, {}, "commits found in part or with foreign values")
        for writer in writers:
            lost = sorted(set(writer.acked) - set(found))
            self.assertEqual(lost, [], "acknowledged commits lost")
            applied = sorted(writer.refused & set(found))
            self.assertEqual(applied, [], "commits said to be refused were applied")
            recorded = set(writer.acked) | writer.refused | writer.unknown
            self.assertEqual(
                sorted(c for c in found if c.startswith(writer.name) and c not in recorded),
                [],
                "commits nobody made",
            )
        return len(found)

    async def assert_cache_coherent(self, node: Node, keys: List[str], reader: EtcdStore) -> None:
        """Every cached key of C{keys} holds what a linearizable read returns."""
        for key in keys:
            hit, value = node.peek(key)
            if hit:
                entry = await reader.get_linearizable(key)
                expected = entry.value if entry is not None else None
                self.assertEqual(value, expected, "%s's cache is stale for %r" % (node.name, key))


    async def measure_visibility(self, size: int) -> None:
        """
        Time 500 one-key commits through node A until node B's cache has
        them, on a C{size}-member etcd (with several members, B prefers and
        watches another member than A); print p50/p99 and check B's cache
        and watch.
        """
        cluster = self.start_cluster(size)
        urls = cluster.client_urls
        a = await self.open_node("A", urls)
        b = await self.open_node("B", urls[-1:] + urls[:-1])
        if size > 1:
            self.assertNotEqual(a.store.watch_endpoint, b.store.watch_endpoint)
        keys = ["vis/%02d" % i for i in range(50)]
        # B has every key cached (as absent): a stale cache would keep
        # answering from memory, so the checks below would see it.
        for key in keys:
            self.assertIsNone(await b.cache.get(key))
            self.assertEqual(b.peek(key), (True, None))
        since_call: List[float] = []
        since_ack: List[float] = []
        for i in range(500):
            key = keys[i % len(keys)]
            value = b"%d" % i
            began = time.perf_counter()
            result = await a.cache.commit([Put(key, value)])
            acked = time.perf_counter()
            await b.heard_revision(result.revision)
            since_call.append(b.arrivals[result.revision] - began)
            since_ack.append(b.arrivals[result.revision] - acked)
            self.assertEqual(b.peek(key), (True, value))
        before_ack = sum(1 for d in since_ack if d <= 0)
        print(
            "\ncross-node visibility, N=500 one-key commits through node A, %d-member "
            "etcd on loopback (B watching %s member):\n"
            "  A's commit call -> B's cache: p50 %.2f ms, p99 %.2f ms, max %.2f ms\n"
            "  A's acknowledgement -> B's cache: p50 %.2f ms, p99 %.2f ms "
            "(B had it first in %d of 500)"
            % (
                size,
                "the same" if size == 1 else "another",
                percentile(since_call, 0.5) * 1e3,
                percentile(since_call, 0.99) * 1e3,
                max(since_call) * 1e3,
                percentile(since_ack, 0.5) * 1e3,
                percentile(since_ack, 0.99) * 1e3,
                before_ack,
            )
        )
        self.assertLess(percentile(since_ack, 0.99), 1.0)
        # Nothing of this was read from etcd by B: every answer was a hit.
        self.assertEqual(b.cache.misses, len(keys))
        self.assertEqual(b.resets[1:], [])


class OneMemberTests(CoherenceTestCase):
    """Two nodes on a one-member etcd."""

    async def test_visibility_delay(self):
        """
        A value committed through node A is served from node B's cache once B's watch
        delivers it; the delay over 500 writes is printed, and its p99 stays under a
        second.
        """
        await self.measure_visibility(1)
    async def test_concurrent_nodes_converge(self):
        """
        Two nodes committing concurrently (puts, deletes, checked commits) hear the
        same revisions in the same order, and end with caches equal to etcd.
        """
        cluster = self.start_cluster(1)
        a = await self.open_node("A", cluster.client_urls)
        b = await self.open_node("B", cluster.client_urls)
        keys = ["conv/%d" % i for i in range(20)]
        for node in (a, b):
            for key in keys:
                await node.cache.get(key)
        rng = random.Random(7)
        revisions: List[int] = []

        async def writer(node: Node) -> None:
            for _ in range(60):
                chosen = rng.sample(keys, 3)
                ops = [
                    Delete(k) if rng.random() < 0.25 else Put(k, b"%s-%d" % (node.name.encode(), rng.randrange(1000)))
                    for k in chosen
                ]
                checks = []
                if rng.random() < 0.3:
                    entry = await node.cache.get(chosen[0])
                    checks = [Check.equals(chosen[0], entry.mod_revision) if entry else Check.absent(chosen[0])]
                try:
                    result = await node.cache.commit(ops, checks)
                except ConflictError:
                    continue
                if result.changes:
                    revisions.append(result.revision)

        await gatherResults(
            [Deferred.fromCoroutine(writer(a)), Deferred.fromCoroutine(writer(b))]
        )
        last = max(revisions)
        await gatherResults([a.heard_revision(last), b.heard_revision(last)])
        self.assertEqual(a.heard, b.heard)
        self.assertEqual(a.heard, sorted(set(a.heard)))
        self.assertTrue(set(revisions) <= set(a.heard))
        for node in (a, b):
            await self.assert_cache_coherent(node, keys, a.store)
        self.assertEqual([b.peek(k) for k in keys], [a.peek(k) for k in keys])


class ThreeMemberTests(CoherenceTestCase):
    """Two nodes on a three-member etcd that loses members."""

    async def test_visibility_delay(self):
        """
        On three members, with A and B watching different members, a value
        committed through A is served from B's cache once B's watch delivers
        it; the delay over 500 writes is printed, and its p99 stays under a
        second.
        """
        await self.measure_visibility(3)

    async def test_watch_member_killed(self):
        """
        Killing the member that carries B's watch empties B's cache until the watch
        runs on another member; B's cache then refills and follows A's commits; writes
        go on; no acknowledged commit is lost and none is partial.
        """
        cluster = self.start_cluster(3)
        urls = cluster.client_urls
        a = await self.open_node("A", urls)
        # B starts from member 2, so its watch runs there; A's does not.
        b = await self.open_node("B", urls[2:] + urls[:2])
        self.assertEqual(b.store.watch_endpoint, urls[2])
        self.assertEqual(a.store.watch_endpoint, urls[0])
        keys = ["w/%d" % i for i in range(10)]
        for i, key in enumerate(keys):
            await a.cache.commit([Put(key, b"v0")])
            self.assertEqual(await b.cache.get(key), (await a.store.get(key)))
        self.assertEqual(len(b.cache), len(keys))
        writer = self.start_writer(a, "a")
        await deferLater(reactor, 0.3)
        count = len(b.resets)
        cluster.kill(2)
        await wait_for(lambda: len(b.resets) > count, "B's watch to be reported lost")
        lost, size, _ = b.resets[count]
        self.assertEqual((lost.watching, size), (False, 0))
        self.assertIn(urls[2], lost.reason)
        await wait_for(lambda: b.store.watching, "B's watch to run again", timeout=20)
        self.assertIn(b.store.watch_endpoint, urls[:2])
        resumed, size, _ = b.resets[-1]
        self.assertEqual((resumed.watching, resumed.history_lost, size), (True, False, 0))
        # Reads refill B's cache (the watch also fills it with A's model
        # commits); A's next commit reaches it by the watch.
        for key in keys:
            await b.cache.get(key)
        self.assertEqual([b.peek(k)[0] for k in keys], [True] * len(keys))
        result = await a.cache.commit([Put(keys[0], b"after")])
        await b.heard_revision(result.revision)
        self.assertEqual(b.peek(keys[0]), (True, b"after"))
        cluster.restart(2, wait=False)
        await cluster.when_healthy(timeout=30)
        await deferLater(reactor, 0.3)
        await writer.stop()
        self.assertGreater(len(writer.acked), 10)
        last = max(writer.acked.values())
        await b.heard_revision(last)
        # B heard A's model commits in order, and its cache agrees with etcd.
        self.assertEqual(b.heard, sorted(b.heard))
        self.assertTrue(set(writer.acked.values()) <= set(b.heard))
        await self.assert_cache_coherent(b, keys, a.store)
        found = await self.model_check(urls, [writer])
        print(
            "\nwatch member killed: B's watch lost and back on another member in %.2f s; "
            "A's writer: %d acknowledged, %d refused, %d unknown; %d commits found whole"
            % (
                resumed_after(b.resets, count),
                len(writer.acked),
                len(writer.refused),
                len(writer.unknown),
                found,
            )
        )

    async def test_quorum_lost_and_regained(self):
        """
        With two members of three killed, writes and linearizable reads fail with
        StoreUnavailable saying etcd has no leader, ping fails, B's watch is lost and
        its cache emptied; restarting the members restores writes, the watch and the
        cache; no acknowledged commit is lost and none is partial.
        """
        cluster = self.start_cluster(3)
        urls = cluster.client_urls
        a = await self.open_node("A", urls)
        b = await self.open_node("B", urls[2:] + urls[:2])
        writer = self.start_writer(a, "q")
        await a.cache.commit([Put("q/key", b"before")])
        self.assertEqual((await b.cache.get("q/key")).value, b"before")
        self.assertEqual(b.peek("q/key"), (True, b"before"))
        await deferLater(reactor, 0.3)
        count = len(b.resets)
        # Member 2 (B's watch) survives, alone: it loses its leader.
        cluster.kill(0)
        cluster.kill(1)
        await wait_for(lambda: len(b.resets) > count, "B's watch to be reported lost", timeout=20)
        lost, size, _ = b.resets[count]
        self.assertEqual((lost.watching, size), (False, 0))
        self.assertIn("no leader", lost.reason)
        for store in (a.store, b.store):
            error = await self.expect(StoreUnavailable, store.ping())
            self.assertIn("etcd has no leader", error.detail)
        failures = await gatherResults(
            [
                Deferred.fromCoroutine(self.expect(StoreUnavailable, a.cache.commit([Put("q/key", b"x")]))),
                Deferred.fromCoroutine(self.expect(StoreUnavailable, a.store.get_linearizable("q/key"))),
                # B's cache was emptied: its read goes to etcd, and fails.
                Deferred.fromCoroutine(self.expect(StoreUnavailable, b.cache.get("q/key"))),
            ]
        )
        for error in failures:
            self.assertIn("no leader", error.detail)
        cluster.restart(0, wait=False)
        cluster.restart(1, wait=False)
        await cluster.when_healthy(timeout=30)
        # Service resumes by itself: no store was reopened.
        for _ in range(50):
            try:
                await a.store.ping()
                result = await a.cache.commit([Put("q/key", b"after")])
                break
            except StoreUnavailable:
                await deferLater(reactor, 0.2)
        else:
            self.fail("no service 10 s after the quorum returned")
        await wait_for(lambda: b.store.watching, "B's watch to run again", timeout=20)
        await b.heard_revision(result.revision)
        self.assertEqual(b.peek("q/key"), (True, b"after"))
        await deferLater(reactor, 0.3)
        await writer.stop()
        self.assertGreater(len(writer.refused) + len(writer.unknown), 0)
        found = await self.model_check(urls, [writer])
        print(
            "\nquorum lost and regained: A's writer: %d acknowledged, %d refused, %d unknown; "
            "%d commits found whole; B's watch back %.2f s after it was lost"
            % (
                len(writer.acked),
                len(writer.refused),
                len(writer.unknown),
                found,
                resumed_after(b.resets, count),
            )
        )


def resumed_after(resets: List[tuple], index: int) -> float:
    """Seconds from the loss reported at C{resets[index]} to the next resume."""
    lost_at = resets[index][2]
    for reset, _, at in resets[index + 1:]:
        if reset.watching:
            return at - lost_at
    return float("nan")
