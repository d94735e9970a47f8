"""
The store contract run against L{kvtwist.store.etcd.store.EtcdStore} on a
real one-member etcd, plus what only the etcd store has: its key and value
encoding, etcd's transaction limits, leases for expiring keys, failover
between endpoints, answers lost on the way back, concurrent writers, the
watch that tells listeners about other clients' changes (lost, resumed,
compacted away), linearizable reads, and a cluster that loses its quorum.

How the watch's events become listener calls (grouping, deduplication
against the store's own commits, lost history, stalls) is also pinned
without etcd, by feeding watch documents to a store directly.

Each test gets a fresh etcd process (about a third of a second to start), so
no test sees another's revisions or leases. Without an etcd binary every
test here is skipped with the reason.

One module though long: every class shares the per-test etcd process and the
store factory, and the contract run is one subclass among them.
"""

from __future__ import annotations

import base64
import json
import math

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, ResponseNeverReceived
from twisted.web.resource import Resource

from kvtwist.errors import ConflictError, LeaseNotFound, LimitExceeded, StoreCorrupt, StoreUnavailable
from kvtwist.interfaces import IEtcdConnection, ILinearizableReads, IWatchedStore
from kvtwist.model import Change, Check, CommitResult, Delete, Entry, Expire, Put
from kvtwist.store.etcd.codec import decode_value, encode_value, prefix_end
from kvtwist.store.etcd.errors import EtcdError
from kvtwist.store.etcd.store import EtcdStore
from kvtwist.store.etcd.stream import WatchStream
from kvtwist.store.etcd.watchloop import WatchReset
from tests.helpers.etcd import EtcdCluster, WatchGate, etcd_available, refused_port, wait_for
from tests.contract.store_contract import ExpectFailure, StoreContract, contract

_AVAILABLE, _REASON = etcd_available()
SKIP = None if _AVAILABLE else _REASON


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


class RawEtcd:
    """
    Talks to etcd directly (not through the store), to see what the store
    really wrote; owns a connection pool that L{close} empties.
    """

    def __init__(self, url: str) -> None:
        from treq.client import HTTPClient

        self.url = url
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.http = HTTPClient(Agent(reactor, pool=self.pool))

    async def post(self, path: str, body: dict) -> dict:
        response = await self.http.post(
            self.url + path, data=json.dumps(body).encode("ascii")
        )
        return json.loads(await response.content())

    async def kvs(self, key: bytes, prefix: bool = False) -> list:
        body = {"key": b64(key)}
        if prefix:
            body["range_end"] = b64(prefix_end(key))
        return (await self.post("/v3/kv/range", body)).get("kvs", [])

    async def revision(self) -> int:
        return int((await self.post("/v3/kv/range", {"key": b64(b"\0")}))["header"]["revision"])

    def close(self) -> Deferred:
        return self.pool.closeCachedConnections()


class EtcdTestCase(ExpectFailure, TestCase):
    """A fresh one-member etcd per test, and helpers to open stores on it."""

    skip = SKIP
    # Bounded: a hung test fails instead of stalling the suite.
    timeout = 60

    def setUp(self):
        self.cluster = EtcdCluster(1)
        self.addCleanup(self.cluster.stop)
        self.cluster.start()
        self.raw = RawEtcd(self.cluster.client_urls[0])
        self.addCleanup(self.raw.close)
        self.clock = Clock()
        # Expiry is judged by this clock, leases by etcd's: start it at the
        # real time so lease TTLs are sensible.
        self.clock.advance(reactor.seconds())

    async def open_store(self, endpoints=None, **kw):
        kw.setdefault("clock", self.clock)
        store = EtcdStore(endpoints or self.cluster.client_urls, reactor, **kw)
        await store.open()
        self.addCleanup(store.close)
        return store

    def settle(self, d):
        """Test coroutines are run by trial (see L{contract})."""
        return d


class EtcdStoreContractTests(StoreContract, EtcdTestCase):
    """EtcdStore keeps the whole store contract (revisions may skip)."""

    capabilities = (ILinearizableReads, IWatchedStore, IEtcdConnection)
    exact_revisions = False
    # etcd's leases remove expired keys; kvtwist does not sweep them.
    sweeps_itself = False
    # etcd's own revisions are the history: history_size counts revisions,
    # and etcd compacts in one call.
    counts_history_records = False
    compacts_in_steps = False
    # etcd leases: etcd's clock, etcd expires them (EtcdLeaseTests).
    lease_clock_injected = False

    async def make_store(self):
        return await self.open_store()

    def advance(self, seconds):
        self.clock.advance(seconds)

    @contract
    async def test_empty(self):
        """
        A new store on a fresh etcd has no keys and lists nothing; its
        revision is etcd's, which starts at 1 (the contract's 0 does not hold
        on etcd).
        """
        store = await self.make_store()
        self.assertEqual(store.revision, 1)
        self.assertIsNone(await store.get("a"))
        self.assertEqual(await store.get_many(["a", "b"]), {})
        page = await store.list("", None, 10)
        self.assertEqual((page.revision, page.entries, page.more), (1, (), False))


class EncodingTests(SynchronousTestCase):
    """The value envelope and key ranges, without etcd."""

    def test_envelope_round_trip(self):
        """A value, its type, expiry and commit id come back as written."""
        data = encode_value(b"\n\x00raw\n", "text/plain; x=\"\\n\"", 1700000000.25, "c1")
        self.assertEqual(data.count(b"\n", 0, data.index(b"\n") + 1), 1)
        self.assertEqual(
            decode_value("k", data), (b"\n\x00raw\n", "text/plain; x=\"\\n\"", 1700000000.25, "c1")
        )
        self.assertEqual(decode_value("k", encode_value(b"", "a/b", None, "c"))[2], None)

    def test_transaction_records_keep_leases(self):
        """A staged put's lease survives its transaction record; a put without one has none."""
        from kvtwist.store.etcd.transactions import decode_record, encode_record

        ops = [Put("a", b"1", "text/plain", None, 7), Put("b", b"22"), Delete("c")]
        decoded, _, _ = decode_record(encode_record(ops, {}, []))
        self.assertEqual(decoded, ops)

    def test_envelope_refuses_foreign_values(self):
        """Anything that is not a kvtwist envelope is StoreCorrupt, not served."""
        for data in [
            b"plain value",
            b"{}\nx",
            b'{"v":2,"ct":"a","exp":null}\nx',
            b'{"v":1,"ct":5,"exp":null}\nx',
            b'{"v":1,"ct":"a","exp":"soon"}\nx',
            b'{"v":1,"ct":"a","exp":true}\nx',
            b"\xff\xfe\nx",
            b"\x80\x04\x95pickle\n",
        ]:
            self.assertRaises(StoreCorrupt, decode_value, "k", data)

    def test_base64_is_strict(self):
        """
        Every base64 field of etcd's answers is decoded strictly: bytes outside
        the alphabet or wrong padding are refused, not read as other bytes.
        """
        from kvtwist.store.etcd.codec import b64 as encode, unb64 as decode

        self.assertEqual(decode(encode(b"\x00\xffkey")), b"\x00\xffkey")
        for text in ["a2V5\n", "a2V5!", "a2V", "é"]:
            self.assertRaises(ValueError, decode, text)

    def test_prefix_end(self):
        """The range end of a prefix is the first key past every key under it."""
        self.assertEqual(prefix_end(b"/kvtwist/kv/p"), b"/kvtwist/kv/q")
        self.assertEqual(prefix_end(b"a\xff\xff"), b"b")
        self.assertEqual(prefix_end(b"\xff"), b"\x00")


class ListenerOrderTests(SynchronousTestCase):
    """The ordering of listener calls, driven without etcd."""

    def test_held_until_earlier_commits_settle(self):
        """A result waits while a commit that could take a lower revision is unsettled."""
        from kvtwist.model import Change, CommitResult

        store = EtcdStore(["http://127.0.0.1:1"], Clock())
        heard = []
        store.add_listener(lambda result: heard.append(result.revision))

        def result(revision):
            return CommitResult(revision, (Change("delete", "k", None, None),))

        # Two commits sent after revision 10 was seen: they get 11 and 12 in
        # some order; the one answered first (12) must wait for the other.
        store.delivery.unsettled = {1: 10, 2: 10}
        second = store.delivery.settle(2, [result(12)])
        self.assertEqual(heard, [])
        self.assertNoResult(second)
        first = store.delivery.settle(1, [result(11)])
        self.assertEqual(heard, [11, 12])
        self.successResultOf(first)
        self.successResultOf(second)
        # A commit sent after 12 was seen cannot precede 13.
        store.delivery.unsettled = {3: 12}
        self.successResultOf(store.delivery.settle(4, [result(13)]))
        self.assertEqual(heard, [11, 12, 13])
        # Results that changed nothing are not heard.
        self.successResultOf(store.delivery.settle(3, [CommitResult(13, ())]))
        self.assertEqual(heard, [11, 12, 13])


def watch_kv(key, value=b"v", mod=5, create=None, version=1, expires=None):
    """An etcd kv of the default prefix, as the gateway's watch sends it."""
    return {
        "key": b64(b"/kvtwist/kv/" + key.encode("utf-8")),
        "value": b64(encode_value(value, "text/plain", expires, "c0")),
        "create_revision": str(create or mod),
        "mod_revision": str(mod),
        "version": str(version),
    }


def watch_put(key, mod, prev=None, **kw):
    event = {"kv": watch_kv(key, mod=mod, **kw)}
    if prev is not None:
        event["prev_kv"] = prev
    return event


def watch_delete(key, mod, prev=None):
    event = {
        "type": "DELETE",
        "kv": {"key": b64(b"/kvtwist/kv/" + key.encode("utf-8")), "mod_revision": str(mod)},
    }
    if prev is not None:
        event["prev_kv"] = prev
    return event


class FakeTransport:
    """Records that a watch stream was told to stop."""

    def __init__(self):
        self.stopped = False

    def stopProducing(self):
        self.stopped = True


class WatchDeliveryTests(SynchronousTestCase):
    """
    Watch documents fed to a store whose watch is marked running (no etcd,
    no sockets): what listeners and reset listeners hear.
    """

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = EtcdStore(["http://127.0.0.1:1"], self.clock, timeout=5.0)
        self.heard = []
        self.resets = []
        self.store.add_listener(self.heard.append)
        self.store.add_reset_listener(self.resets.append)
        # What open() and a created watch would have set up.
        self.store.watch_loop.task = Deferred()
        self.store.watch_loop.live = True
        self.stream = self.new_stream()

    def new_stream(self):
        stream = WatchStream(self.store.watch_loop.document)
        stream.makeConnection(FakeTransport())
        self.store.watch_loop.stream = stream
        return stream

    def feed(self, *events, header=None):
        """One watch response carrying C{events}."""
        result = {"header": {"revision": str(header or 0)}, "events": list(events)}
        self.stream.dataReceived(json.dumps({"result": result}).encode("ascii") + b"\n")

    def own(self, revision, key="own"):
        """Settle one of the store's own commits at C{revision}; its waiter."""
        self.store.delivery.unsettled[revision] = revision - 1
        entry = Entry(key, b"mine", "text/plain", revision, revision, 1)
        return self.store.delivery.settle(revision, [CommitResult(revision, (Change("put", key, entry, None),))])

    def test_events_grouped_per_revision(self):
        """
        Events become one CommitResult per revision, in order: puts with their
        previous value, deletes, and deletes of expired values as expire.
        """
        a3 = watch_kv("a", b"old", mod=3)
        t4 = watch_kv("t", b"ttl", mod=4, expires=900.0)
        self.feed(
            watch_put("a", 5, prev=a3, create=3, version=2),
            watch_put("b", 5),
            watch_delete("a", 6, prev=watch_kv("a", mod=5, create=3, version=2)),
            watch_delete("t", 7, prev=t4),
            header=7,
        )
        self.assertEqual([r.revision for r in self.heard], [5, 6, 7])
        five = self.heard[0]
        self.assertEqual([(c.kind, c.key) for c in five.changes], [("put", "a"), ("put", "b")])
        self.assertEqual(
            five.changes[0].entry, Entry("a", b"v", "text/plain", 3, 5, 2, None)
        )
        self.assertEqual(five.changes[0].previous.value, b"old")
        self.assertIsNone(five.changes[1].previous)
        self.assertEqual(
            [(c.kind, c.key, c.entry) for c in self.heard[1].changes], [("delete", "a", None)]
        )
        self.assertEqual(self.heard[1].changes[0].previous.mod_revision, 5)
        # t expired at 900 by the store's clock (1000): etcd's lease removed it.
        self.assertEqual([(c.kind, c.key) for c in self.heard[2].changes], [("expire", "t")])
        self.assertEqual(self.heard[2].changes[0].previous.value, b"ttl")
        self.assertEqual(self.store.revision, 7)
        # A response repeating processed revisions (a resumed watch) is
        # not heard twice.
        self.feed(watch_put("b", 5), watch_delete("a", 6))
        self.assertEqual(len(self.heard), 3)

    def test_own_commit_waits_for_the_watch(self):
        """
        While the watch runs, an own commit is heard when the watch reaches its
        revision, after other clients' earlier changes, with its own result, once.
        """
        waiter = self.own(6)
        self.assertEqual(self.heard, [])
        self.assertNoResult(waiter)
        self.feed(watch_put("theirs", 5), watch_put("own", 6), header=6)
        self.assertEqual([r.revision for r in self.heard], [5, 6])
        self.assertEqual(self.heard[1].changes[0].entry.value, b"mine")
        self.successResultOf(waiter)
        self.assertEqual(self.resets, [])

    def test_watch_before_answer(self):
        """
        When the watch delivers an own commit before its answer arrives, the
        answer only wakes the committer: listeners hear the revision once.
        """
        self.store.delivery.unsettled[99] = 4
        self.feed(watch_put("own", 5), header=5)
        self.assertEqual([r.revision for r in self.heard], [5])
        waiter = self.own(5)
        self.successResultOf(waiter)
        self.assertEqual(len(self.heard), 1)

    def test_lost_watch_delivers_directly_and_resumes(self):
        """
        With the watch lost, own commits are heard directly; the resumed watch
        skips them, and another client's change below them is reported as lost
        history, not delivered out of order.
        """
        self.store.watch_loop.seen = self.store.delivery.delivered = 4
        self.store.watch_loop.lost("test")
        self.assertEqual(
            self.resets, [WatchReset(False, False, 4, "the etcd watch was lost: test")]
        )
        self.successResultOf(self.own(7))
        self.assertEqual([r.revision for r in self.heard], [7])
        # The watch comes back from revision 5 and replays 5..7.
        self.stream = self.new_stream()
        self.store.watch_loop.started("http://127.0.0.1:1", 5, "")
        self.assertEqual(self.resets[-1].watching, True)
        self.assertEqual(self.resets[-1].history_lost, False)
        self.assertEqual(self.resets[-1].revision, 4)
        self.feed(watch_put("theirs", 6), watch_put("own", 7), watch_put("later", 8))
        self.assertEqual([r.revision for r in self.heard], [7, 8])
        lost = self.resets[-1]
        self.assertEqual((lost.watching, lost.history_lost, lost.revision), (True, True, 7))
        self.assertIn("revision 6", lost.reason)
        self.assertEqual(len(self.resets), 3)

    def test_resume_without_own_commits_loses_nothing(self):
        """A watch resumed after a loss delivers what it missed, in order, with no lost history."""
        self.store.watch_loop.seen = self.store.delivery.delivered = 4
        self.store.watch_loop.lost("test")
        self.stream = self.new_stream()
        self.store.watch_loop.started("http://127.0.0.1:1", 5, "")
        self.feed(watch_put("x", 5), watch_put("y", 6))
        self.assertEqual([r.revision for r in self.heard], [5, 6])
        self.assertEqual([r.history_lost for r in self.resets], [False, False])

    def test_stalled_watch_is_dropped(self):
        """
        An own commit the running watch has not delivered within the timeout ends
        the watch; once lost, the commit is delivered directly.
        """
        waiter = self.own(6)
        self.clock.advance(4.9)
        self.assertFalse(self.stream.transport.stopped)
        self.clock.advance(0.2)
        self.assertTrue(self.stream.transport.stopped)
        self.assertIn("did not deliver revision 6 within 5s", self.stream.reason)
        self.assertNoResult(waiter)
        # The watch loop reports the loss when the connection is gone.
        self.store.watch_loop.lost(self.stream.reason)
        self.successResultOf(waiter)
        self.assertEqual([r.revision for r in self.heard], [6])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_undecodable_change_is_lost_history(self):
        """
        A change whose value is not a kvtwist value cannot be described: it is
        reported as lost history and delivery goes on.
        """
        bad = watch_put("x", 5)
        bad["kv"]["value"] = b64(b"not an envelope")
        self.feed(bad, watch_put("y", 6))
        self.assertEqual([r.revision for r in self.heard], [6])
        self.assertEqual([(r.history_lost, r.revision) for r in self.resets], [(True, 5)])

    def test_compaction_and_errors_end_the_stream(self):
        """
        A canceled watch records the compact revision; an error document or a
        line that is not JSON ends the stream with the reason.
        """
        cancel = {"result": {"header": {}, "canceled": True, "compact_revision": "9"}}
        self.stream.dataReceived(json.dumps(cancel).encode("ascii") + b"\n")
        self.assertEqual(self.stream.compacted, 9)
        self.assertTrue(self.stream.transport.stopped)
        self.assertIn("revision 9 is compacted", self.stream.reason)
        stream = self.new_stream()
        stream.dataReceived(b'{"error":{"grpc_code":14,"message":"etcdserver: no leader"}}')
        # The gateway ends the body after an error without a newline.
        stream.connectionLost(Failure(ResponseDone()))
        self.assertEqual(self.successResultOf(stream.done), "etcd ended the watch: etcdserver: no leader")
        self.failureResultOf(stream.created, StoreUnavailable)
        stream = self.new_stream()
        stream.dataReceived(b"<html>\n")
        self.assertIn("not JSON", stream.reason)

    def test_stream_reassembles_lines(self):
        """Documents split across reads, or several in one read, arrive whole, in order."""
        lines = []
        stream = WatchStream(lambda _, line: lines.append(json.loads(line)))
        stream.makeConnection(FakeTransport())
        created = {"result": {"header": {"revision": "3"}, "created": True}}
        data = json.dumps(created).encode() + b"\n" + json.dumps({"n": 1}).encode() + b"\n"
        for i in range(0, len(data), 7):
            stream.dataReceived(data[i:i + 7])
        stream.dataReceived(b'{"n": 2}\n{"n": 3}\n{"n"')
        stream.dataReceived(b": 4}\n")
        self.assertEqual(lines, [created, {"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}])
        stream.connectionLost(Failure(ResponseDone()))
        self.assertEqual(self.successResultOf(stream.done), "etcd ended the watch stream")
        self.failureResultOf(stream.created, StoreUnavailable)


class FakeGateway(Resource):
    """
    An in-memory stand-in for etcd's JSON gateway answering each path with a
    canned status and document (or raw bytes).
    """

    isLeaf = True

    def __init__(self, answers):
        super().__init__()
        self.answers = answers
        self.paths = []

    def render_POST(self, request):
        path = request.path.decode("ascii")
        self.paths.append(path)
        status, document = self.answers.get(path, (404, b"404 page not found"))
        request.setResponseCode(status)
        if isinstance(document, bytes):
            return document
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(document).encode("ascii")


class GatewayAnswerTests(SynchronousTestCase):
    """How the store reads etcd's answers, with an injected treq-like client."""

    STATUS = (200, {"header": {"revision": "7"}, "leader": "42"})

    def open_store(self, answers, **kw):
        self.clock = Clock()
        self.gateway = FakeGateway(answers)
        # The fake answers single requests only; the watch is tested on a
        # real etcd and through WatchDeliveryTests.
        kw.setdefault("watch", False)
        store = EtcdStore(
            ["http://etcd.invalid:2379"], self.clock, http=StubTreq(self.gateway), **kw
        )
        return store, self.drive(store.open())

    def drive(self, d):
        """Advance the clock (bounded) until C{d} has a result."""
        for _ in range(200):
            if d.called:
                break
            self.clock.advance(0.25)
        return d

    def test_no_leader_is_unavailable(self):
        """etcd's "no leader" answer is StoreUnavailable carrying etcd's words."""
        message = "etcdserver: no leader"
        no_leader = (503, {"error": message, "message": message, "code": 14})
        store, opened = self.open_store(
            {"/v3/maintenance/status": self.STATUS, "/v3/kv/range": no_leader}
        )
        self.successResultOf(opened)
        self.assertEqual(store.revision, 7)
        failure = self.failureResultOf(self.drive(store.get("a")), StoreUnavailable)
        self.assertIn("etcdserver: no leader", failure.value.detail)
        # Reads went round again for a while before giving up.
        self.assertGreater(self.gateway.paths.count("/v3/kv/range"), 1)
        self.successResultOf(store.close())

    def test_member_without_leader_fails_open(self):
        """A status without a leader, or with alarms, is StoreUnavailable at open and ping."""
        header = {"revision": "3"}
        _, opened = self.open_store({"/v3/maintenance/status": (200, {"header": header})})
        self.assertIn("no leader", self.failureResultOf(opened, StoreUnavailable).value.detail)
        _, opened = self.open_store(
            {
                "/v3/maintenance/status": (
                    200,
                    {"header": header, "leader": "1", "errors": ["NOSPACE"]},
                )
            }
        )
        self.assertIn("NOSPACE", self.failureResultOf(opened, StoreUnavailable).value.detail)

    def test_not_a_gateway(self):
        """An endpoint that is not etcd's gateway is unavailable, said so."""
        _, opened = self.open_store({})
        failure = self.failureResultOf(opened, StoreUnavailable)
        self.assertIn("not an etcd v3 gateway (HTTP 404", failure.value.detail)

    def test_unexpected_error_is_not_hidden(self):
        """
        An etcd error kvtwist does not expect surfaces as EtcdError (a 500),
        not as a client error.
        """
        odd = (400, {"error": "etcdserver: duplicate key given in txn request",
                     "message": "etcdserver: duplicate key given in txn request", "code": 3})
        store, opened = self.open_store(
            {"/v3/maintenance/status": self.STATUS, "/v3/kv/range": odd}
        )
        self.successResultOf(opened)
        failure = self.failureResultOf(self.drive(store.get("a")), EtcdError)
        self.assertIn("duplicate key", str(failure.value))


class EtcdLeaseTests(EtcdTestCase):
    """Client leases are etcd leases (kvtwist.store.etcd.leases)."""

    @contract
    async def test_expiry_is_one_commit_of_expires_on_every_node(self):
        """
        When etcd expires a lease (its own clock), its keys go at one
        revision, which every node's watch reports as one commit of expire
        changes; the lease is then unknown and no longer counted.
        """
        a = await self.open_store()
        b = await self.open_store()
        heard = {a: [], b: []}
        for store, seen in heard.items():
            store.add_listener(lambda result, seen=seen: seen.append(result) if any(
                c.kind == "expire" for c in result.changes) else None)
        lease = await a.grant(1, 100)
        self.assertEqual(a.lease_count, 1)
        await wait_for(lambda: b.lease_count == 1, "b counting the lease through its watch")
        await a.commit([Put("x", b"1", lease=lease.id), Put("y", b"1", lease=lease.id), Put("z", b"1")])
        await wait_for(lambda: heard[a] and heard[b], "the lease's expiry", timeout=15)
        for seen in heard.values():
            [result] = seen
            self.assertEqual(sorted((c.kind, c.key) for c in result.changes), [("expire", "x"), ("expire", "y")])
        self.assertEqual(heard[a][0].revision, heard[b][0].revision)
        self.assertEqual(sorted(await b.get_many(["x", "y", "z"])), ["z"])
        await self.expect(LeaseNotFound, b.lease(lease.id))
        self.assertEqual((a.lease_count, b.lease_count), (0, 0))

    @contract
    async def test_revoke_through_one_node_is_a_delete_on_another(self):
        """
        A revoke through one node is one commit of delete changes for every
        node's listeners; the keys are gone and a keepalive is refused.
        """
        a = await self.open_store()
        b = await self.open_store()
        seen = []
        b.add_listener(seen.append)
        lease = await a.grant(30, 100)
        self.assertEqual((await b.lease(lease.id)).keys, ())
        await a.commit([Put("x", b"1", lease=lease.id)])
        self.assertEqual((await b.keepalive(lease.id)).ttl, 30)
        result = await a.revoke(lease.id)
        self.assertEqual([(c.kind, c.key) for c in result.changes], [("delete", "x")])
        await wait_for(lambda: seen and seen[-1].revision == result.revision, "the revoke on b")
        self.assertEqual([(c.kind, c.key) for c in seen[-1].changes], [("delete", "x")])
        await self.expect(LeaseNotFound, b.keepalive(lease.id))
        self.assertIsNone(await b.get("x"))

    @contract
    async def test_lease_ids_are_json_safe_and_anchors_stay_hidden(self):
        """
        Lease ids are below 2**53; a lease's anchor key is no kvtwist key:
        listings, snapshots and history reads never show it.
        """
        store = await self.open_store()
        lease = await store.grant(30, 100)
        self.assertLess(lease.id, 2 ** 53)
        await store.commit([Put("k", b"1")])
        self.assertEqual([e.key for e in (await store.list("", None, 10)).entries], ["k"])
        self.assertEqual([e.key for e in (await store.list_at("", None, 10, store.revision)).entries], ["k"])
        replay = await store.changes(0, store.revision, 100)
        self.assertEqual([[c.key for c in r.changes] for r in replay], [["k"]])
        # Deleting every key leaves the lease (and its anchor) alone.
        deleted = await store.delete_prefix("", 10)
        self.assertEqual([c.key for c in deleted.changes], ["k"])
        self.assertEqual((await store.lease(lease.id)).keys, ())


class EtcdStoreTests(EtcdTestCase):
    """What the etcd store promises beyond the contract."""

    @contract
    async def test_key_encoding(self):
        """
        Keys live at prefix + "kv/" + UTF-8; values are a JSON header line and the raw
        bytes; revisions are etcd's.
        """
        store = await self.open_store(prefix="/app/")
        key = "d\u00e9j\u00e0/vu"
        result = await store.commit([Put(key, b"\x00v", "text/plain", expires=2e9)])
        [kv] = await self.raw.kvs(b"/app/kv/" + "d\u00e9j\u00e0/vu".encode("utf-8"))
        head, _, value = unb64(kv["value"]).partition(b"\n")
        self.assertEqual(value, b"\x00v")
        header = json.loads(head)
        self.assertEqual((header["ct"], header["exp"], header["v"]), ("text/plain", 2e9, 1))
        entry = await store.get("d\u00e9j\u00e0/vu")
        self.assertEqual(
            (entry.create_revision, entry.mod_revision, entry.version),
            (int(kv["create_revision"]), int(kv["mod_revision"]), int(kv["version"])),
        )
        self.assertEqual(entry.mod_revision, result.revision)
        # Nothing else was written under the prefix.
        self.assertEqual(len(await self.raw.kvs(b"/app/", prefix=True)), 1)

    @contract
    async def test_foreign_value_is_corrupt(self):
        """A value under the prefix that is not kvtwist's is refused, never served."""
        store = await self.open_store()
        await self.raw.post("/v3/kv/put", {"key": b64(b"/kvtwist/kv/x"), "value": b64(b"hello")})
        await self.expect(StoreCorrupt, store.get("x"))
        await self.expect(StoreCorrupt, store.list("", None, 10))

    @contract
    async def test_too_many_ops(self):
        """
        A commit over max_txn_ops is LimitExceeded and applies nothing; it is never
        split.
        """
        store = await self.open_store()
        await store.commit([Put("seen", b"")])
        before = await self.raw.revision()
        error = await self.expect(
            LimitExceeded, store.commit([Put("k%d" % i, b"v") for i in range(129)])
        )
        self.assertEqual((error.extra["limit"], error.extra["size"]), (128, 129))
        self.assertEqual(error.extra["limit_name"], "etcd max-txn-ops")
        self.assertIn("raise etcd's --max-txn-ops", error.detail)
        self.assertFalse(error.too_many)
        # Checks count too: each is a compare in the one transaction.
        error = await self.expect(
            LimitExceeded,
            store.commit([Put("k%d" % i, b"v") for i in range(100)],
                         [Check.absent("c%d" % i) for i in range(29)]),
        )
        self.assertEqual(error.extra["size"], 129)
        self.assertEqual(await self.raw.revision(), before)
        self.assertEqual(await self.raw.kvs(b"/kvtwist/kv/k", prefix=True), [])
        # Exactly at the limit is fine.
        await store.commit([Put("k%d" % i, b"v") for i in range(128)])

    @contract
    async def test_etcd_limits_mapped(self):
        """
        When etcd itself refuses a txn as too big, that is LimitExceeded too, with
        nothing applied.
        """
        store = await self.open_store(max_txn_ops=1000, max_request_bytes=8 << 20)
        before = await self.raw.revision()
        error = await self.expect(
            LimitExceeded, store.commit([Put("k%d" % i, b"v") for i in range(129)])
        )
        self.assertEqual(error.extra["size"], 129)
        self.assertIn("--max-txn-ops", error.detail)
        error = await self.expect(LimitExceeded, store.commit([Put("big", b"x" * (1600 * 1024))]))
        self.assertEqual(error.extra["limit_name"], "etcd max-request-bytes")
        self.assertIn("--max-request-bytes", error.detail)
        self.assertEqual(await self.raw.revision(), before)

    @contract
    async def test_request_size_limit(self):
        """A commit over etcd's request size is LimitExceeded before it is sent."""
        store = await self.open_store()
        error = await self.expect(LimitExceeded, store.commit([Put("big", b"x" * (1600 * 1024))]))
        self.assertEqual(error.extra["limit"], 1536 * 1024)
        self.assertGreater(error.extra["size"], 1600 * 1024)
        self.assertIsNone(await store.get("big"))
        # A value comfortably under the limit goes through.
        await store.commit([Put("ok", b"x" * (1024 * 1024))])
        self.assertEqual(len((await store.get("ok")).value), 1024 * 1024)

    @contract
    async def test_ttl_put_attaches_lease(self):
        """
        A Put with an expiry gets a lease, and etcd removes the key after it expires;
        the watch tells listeners, as an expire change.
        """
        store = await self.open_store(clock=reactor)
        heard = []
        store.add_listener(lambda result: heard.extend((c.kind, c.key) for c in result.changes))
        now = reactor.seconds()
        await store.commit([Put("t", b"1", expires=now + 1), Put("keep", b"2")])
        [kv] = await self.raw.kvs(b"/kvtwist/kv/t")
        lease = kv.get("lease", "0")
        self.assertNotEqual(lease, "0")
        ttl = await self.raw.post("/v3/lease/timetolive", {"ID": lease})
        self.assertLessEqual(int(ttl["TTL"]), 1 + 2 + 1)
        # etcd itself removes the key once the lease runs out (the store
        # already reads it as absent a little earlier).
        for _ in range(100):
            if not await self.raw.kvs(b"/kvtwist/kv/t"):
                break
            await deferLater(reactor, 0.1)
        else:
            self.fail("etcd did not remove the expired key within 10 s")
        self.assertIsNone(await store.get("t"))
        self.assertEqual((await store.get("keep")).value, b"2")
        await wait_for(lambda: ("expire", "t") in heard, "the expiry to reach listeners")
        self.assertEqual(heard, [("put", "t"), ("put", "keep"), ("expire", "t")])

    @contract
    async def test_leases_shared_and_detached(self):
        """
        Puts expiring in the same second share a lease; a Put without expiry drops it.
        """
        store = await self.open_store()
        # a and b expire within one whole second, c later.
        expires = math.floor(self.clock.seconds()) + 100.2
        await store.commit([Put("a", b"", expires=expires)])
        await store.commit(
            [Put("b", b"", expires=expires + 0.5), Put("c", b"", expires=expires + 50)]
        )
        leases = {}
        for key in "abc":
            [kv] = await self.raw.kvs(b"/kvtwist/kv/" + key.encode())
            leases[key] = kv["lease"]
        self.assertEqual(leases["a"], leases["b"])
        self.assertNotEqual(leases["a"], leases["c"])
        # A later write without expiry detaches the lease: etcd keeps the key.
        await store.commit([Put("a", b"forever")])
        [kv] = await self.raw.kvs(b"/kvtwist/kv/a")
        self.assertEqual(kv.get("lease", "0"), "0")
        self.assertIsNone((await store.get("a")).expires)

    @contract
    async def test_failover_past_dead_endpoint(self):
        """
        With the first endpoint refusing connections, the store works through the second
        and stays there.
        """
        dead = "http://127.0.0.1:%d" % (refused_port(self),)
        live = self.cluster.client_urls[0]
        store = await self.open_store([dead, live])
        self.assertEqual(store.active_endpoint, live)
        result = await store.commit([Put("a", b"1")])
        self.assertEqual((await store.get("a")).mod_revision, result.revision)
        self.assertEqual(store.active_endpoint, live)

    @contract
    async def test_all_endpoints_dead(self):
        """
        When no endpoint answers, open fails with StoreUnavailable naming each
        endpoint's reason.
        """
        dead = ["http://127.0.0.1:%d" % (refused_port(self),) for _ in range(2)]
        store = EtcdStore(dead, reactor, clock=self.clock, timeout=0.5)
        error = await self.expect(StoreUnavailable, store.open())
        for url in dead:
            self.assertIn(url, error.detail)
        self.assertIn("ConnectionRefused", error.detail)
        # The failed open left nothing open: calls are refused at once.
        await self.expect(StoreUnavailable, store.get("a"))

    @contract
    async def test_etcd_gone_after_open(self):
        """
        Reads, commits and pings fail with StoreUnavailable once etcd is gone; reset
        listeners hear the watch was lost; close ends the watch's retries.
        """
        store = await self.open_store(timeout=0.5)
        resets = []
        store.add_reset_listener(resets.append)
        result = await store.commit([Put("a", b"1")])
        self.cluster.kill(0)
        await self.expect(StoreUnavailable, store.get("a"))
        await self.expect(StoreUnavailable, store.commit([Put("a", b"2")]))
        await self.expect(StoreUnavailable, store.ping())
        await wait_for(lambda: resets, "the watch to be reported lost")
        self.assertFalse(store.watching)
        self.assertEqual(resets[0].watching, False)
        self.assertEqual(resets[0].revision, result.revision)
        self.assertIn("the etcd watch was lost", resets[0].reason)
        # The watch keeps retrying (with pauses) until close, which stops it
        # at once and leaves nothing behind (trial checks the reactor).
        await deferLater(reactor, 0.5)
        began = reactor.seconds()
        await store.close()
        self.assertLess(reactor.seconds() - began, 1.0)
        self.assertEqual(len(resets), 1)

    @contract
    async def test_watch_delivers_other_clients_changes(self):
        """
        A store's listeners hear commits made through another store on the same etcd,
        as the same CommitResult the committer got, each once, in order; revision follows.
        """
        a = await self.open_store()
        b = await self.open_store()
        self.assertTrue(b.watching)
        self.assertEqual(b.watch_endpoint, self.cluster.client_urls[0])
        heard = []
        b.add_listener(heard.append)
        results = [await a.commit([Put("k", b"1", "text/plain"), Put("j", b"x")])]
        results.append(await a.commit([Put("k", b"2")], [Check.equals("k", results[0].revision)]))
        results.append(await a.commit([Delete("j")]))
        own = await b.commit([Put("from-b", b"")])
        await wait_for(lambda: len(heard) >= 4, "four commits to reach b's listener")
        self.assertEqual(heard, results + [own])
        self.assertEqual(b.revision, own.revision)
        # a hears b's commit too, and its own ones exactly once.
        await wait_for(lambda: a.revision == own.revision, "a to see b's commit")

    @contract
    async def test_linearizable_read(self):
        """get_linearizable reads etcd at once: another store's acknowledged commit is there."""
        a = await self.open_store()
        b = await self.open_store(watch=False)
        for i in range(5):
            result = await b.commit([Put("k", b"%d" % i)])
            entry = await a.get_linearizable("k")
            self.assertEqual((entry.value, entry.mod_revision), (b"%d" % i, result.revision))
        await b.commit([Delete("k")])
        self.assertIsNone(await a.get_linearizable("k"))

    async def gated_store(self):
        """A store whose watches the test can refuse, its listeners' logs, and another store."""
        gate = WatchGate()
        self.addCleanup(gate.close)
        store = await self.open_store(http=gate)
        heard = []
        resets = []
        store.add_listener(lambda result: heard.append(result.revision))
        store.add_reset_listener(resets.append)
        other = await self.open_store(watch=False)
        return gate, store, heard, resets, other

    async def drop_watch(self, gate, store, resets):
        """Refuse watches and end the running one; wait until it is reported lost."""
        gate.blocked = True
        count = len(resets)
        store.watch_loop.stream.abort("the test drops the watch")
        await wait_for(lambda: len(resets) > count, "the watch to be reported lost")
        self.assertEqual(resets[-1].watching, False)
        self.assertFalse(store.watching)

    @contract
    async def test_watch_lost_and_resumed(self):
        """
        While the watch is down own commits are still heard at once; the resumed watch
        delivers what others committed meanwhile, unless it lies below an own commit
        already heard: then it is reported as lost history.
        """
        gate, store, heard, resets, other = await self.gated_store()
        await self.drop_watch(gate, store, resets)
        missed = await other.commit([Put("theirs", b"")])
        self.assertNotIn(missed.revision, heard)
        mine = await store.commit([Put("mine", b"")])
        self.assertEqual(heard, [mine.revision])
        gate.blocked = False
        await wait_for(lambda: store.watching, "the watch to resume")
        later = await other.commit([Put("later", b"")])
        await wait_for(lambda: later.revision in heard, "the watch to deliver a new commit")
        self.assertEqual(heard, [mine.revision, later.revision])
        # Lost after revision 1 (a fresh etcd), resumed after it, and the
        # other client's commit turned up below ours.
        self.assertEqual(
            [(r.watching, r.history_lost, r.revision) for r in resets],
            [(False, False, 1), (True, False, 1), (True, True, mine.revision)],
        )
        self.assertIn("revision %d" % (missed.revision,), resets[-1].reason)
        # Down again, with only other clients committing: nothing is lost.
        await self.drop_watch(gate, store, resets)
        missed = [await other.commit([Put("x%d" % i, b"")]) for i in range(3)]
        gate.blocked = False
        await wait_for(lambda: store.watching, "the watch to resume")
        await wait_for(lambda: missed[-1].revision in heard, "the missed commits")
        self.assertEqual(heard[2:], [r.revision for r in missed])
        self.assertEqual(resets[-1], WatchReset(
            True, False, later.revision, resets[-1].reason
        ))
        self.assertIn("watching from revision %d" % (later.revision + 1), resets[-1].reason)

    @contract
    async def test_watch_resumes_after_compaction(self):
        """
        When etcd compacted the revisions a watch must resume from, reset listeners
        hear that history up to the current revision is lost, and the watch goes on
        from there.
        """
        gate, store, heard, resets, other = await self.gated_store()
        await self.drop_watch(gate, store, resets)
        gone = [await other.commit([Put("gone", b"%d" % i)]) for i in range(2)]
        current = await self.raw.revision()
        await self.raw.post("/v3/kv/compaction", {"revision": str(current), "physical": True})
        gate.blocked = False
        # etcd first creates the watch, then cancels it as compacted: the
        # store starts afresh from the current revision.
        await wait_for(lambda: resets[-1].history_lost, "the watch to resume after compaction")
        reset = resets[-1]
        self.assertEqual((reset.watching, reset.history_lost, reset.revision), (True, True, current))
        self.assertTrue(store.watching)
        self.assertIn("compacted", reset.reason)
        after = await other.commit([Put("after", b"")])
        await wait_for(lambda: after.revision in heard, "the watch to deliver a new commit")
        self.assertEqual(heard, [after.revision])
        self.assertEqual(store.revision, after.revision)
        self.assertEqual((await store.get("gone")).value, b"1")
        self.assertNotIn(gone[0].revision, heard)

    def hung_endpoint(self):
        """A listening port that accepts connections and never answers."""
        connections = []

        class Silent(Protocol):
            def connectionMade(self):
                connections.append(self)

        port = reactor.listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")

        def close():
            for protocol in connections:
                protocol.transport.abortConnection()
            return port.stopListening()

        self.addCleanup(close)
        return "http://127.0.0.1:%d" % (port.getHost().port,)

    @contract
    async def test_failover_past_hung_endpoint(self):
        """
        An endpoint that never answers is left after the timeout; the commit lands once.
        """
        hung = self.hung_endpoint()
        live = self.cluster.client_urls[0]
        store = await self.open_store([hung, live], timeout=0.5)
        self.assertEqual(store.active_endpoint, live)
        # Send the next request to the hung endpoint first again.
        store.gateway.current = 0
        before = await self.raw.revision()
        result = await store.commit([Put("a", b"1")], [Check.absent("a")])
        self.assertEqual(result.revision, before + 1)
        self.assertEqual(await self.raw.revision(), before + 1)
        self.assertEqual((await store.get("a")).version, 1)
        self.assertEqual(store.active_endpoint, live)

    def lossy_http(self, forward: bool):
        """
        A treq client over its own pool that, once armed, loses the answer of
        the next write transaction: after etcd applied it (C{forward}) or
        before sending it at all.
        """
        from treq.client import HTTPClient

        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        inner = HTTPClient(Agent(reactor, pool=pool))
        # Armed by the test once its keys are set up.
        state = {"armed": False, "lost": 0}

        class Lossy:
            async def _post(self, url, **kw):
                guarded_txn = url.endswith("/v3/kv/txn") and b'"compare"' in kw["data"]
                if guarded_txn and state["armed"] and not state["lost"]:
                    state["lost"] += 1
                    if forward:
                        response = await inner.post(url, **kw)
                        await response.content()
                    raise ResponseNeverReceived([Failure(ConnectionLost("lost on purpose"))])
                return await inner.post(url, **kw)

            def post(self, url, **kw):
                return Deferred.fromCoroutine(self._post(url, **kw))

        return Lossy(), state

    @contract
    async def test_lost_answer_of_applied_commit(self):
        """
        A commit applied by etcd whose answer was lost is reported applied, not as a
        conflict, and not applied twice.
        """
        http, state = self.lossy_http(forward=True)
        store = await self.open_store(http=http)
        first = await store.commit([Put("a", b"1")])
        state["armed"] = True
        result = await store.commit(
            [Put("a", b"2"), Delete("gone")], [Check.equals("a", first.revision)]
        )
        self.assertEqual(state["lost"], 1)
        entry = await store.get("a")
        self.assertEqual((entry.value, entry.version), (b"2", 2))
        self.assertEqual(result.revision, entry.mod_revision)
        self.assertEqual(result.changes[0].entry, entry)
        self.assertEqual(result.changes[0].previous.value, b"1")

    @contract
    async def test_lost_answer_of_unapplied_commit(self):
        """A commit whose request never reached etcd is retried and applied once."""
        http, state = self.lossy_http(forward=False)
        store = await self.open_store(http=http)
        before = await self.raw.revision()
        state["armed"] = True
        result = await store.commit([Put("a", b"1")], [Check.absent("a")])
        self.assertEqual(state["lost"], 1)
        self.assertEqual(result.revision, before + 1)
        self.assertEqual((await store.get("a")).version, 1)

    @contract
    async def test_lost_answer_unknown_outcome(self):
        """
        A lost answer to a delete-only commit that etcd applied is StoreUnavailable with
        outcome "unknown".
        """
        http, state = self.lossy_http(forward=True)
        store = await self.open_store(http=http)
        await store.commit([Put("a", b"1")])
        state["armed"] = True
        error = await self.expect(StoreUnavailable, store.commit([Delete("a")]))
        self.assertEqual(error.extra.get("outcome"), "unknown")
        # It did apply: the store said it could not tell, not that it failed.
        self.assertIsNone(await store.get("a"))

    @contract
    async def test_concurrent_writers(self):
        """
        Of two commits checking one revision exactly one lands; unchecked concurrent
        commits all land.
        """
        stores = [await self.open_store() for _ in range(2)]
        first = await stores[0].commit([Put("a", b"0")])
        outcomes = await gatherResults(
            [
                Deferred.fromCoroutine(
                    self.outcome_of(
                        s.commit([Put("a", b"%d" % i)], [Check.equals("a", first.revision)])
                    )
                )
                for i, s in enumerate(stores)
            ]
        )
        self.assertEqual(
            sorted(type(o).__name__ for o in outcomes), ["CommitResult", "ConflictError"]
        )
        # Without checks, concurrent writers all land, one after another.
        results = await gatherResults(
            [s.commit([Put("n", b"%d" % i)]) for i in range(3) for s in stores]
        )
        self.assertEqual(len({r.revision for r in results}), 6)
        self.assertEqual((await stores[0].get("n")).version, 6)

    async def outcome_of(self, d):
        try:
            return await d
        except ConflictError as e:
            return e

    @contract
    async def test_listeners_hear_concurrent_commits_in_order(self):
        """
        Concurrent commits reach listeners in revision order, each before its committer;
        removals of expired keys are expire changes.
        """
        store = await self.open_store()
        heard = []
        answered = []

        def listener(result):
            heard.append(result.revision)

        store.add_listener(listener)

        def answered_after_heard(result):
            # The committer hears back only after the listeners did.
            answered.append(result.revision in heard)
            return result

        results = await gatherResults(
            [
                store.commit([Put("k%d" % i, b"")]).addCallback(answered_after_heard)
                for i in range(12)
            ]
        )
        self.assertEqual(heard, sorted(heard))
        self.assertEqual(sorted(heard), sorted(r.revision for r in results))
        self.assertEqual(answered, [True] * 12)
        # A Put over a key that expired but that etcd still holds first
        # removes it: listeners hear that as an expire, then the put.
        now = self.clock.seconds()
        await store.commit([Put("t", b"1", expires=now + 5)])
        self.clock.advance(10)
        kinds = []
        store.add_listener(lambda result: kinds.append([(c.kind, c.key) for c in result.changes]))
        await store.commit([Put("t", b"2")])
        self.assertEqual(kinds, [[("expire", "t")], [("put", "t")]])
        self.assertEqual(heard, sorted(heard))

    @contract
    async def test_expire_op(self):
        """
        An Expire op removes only the expired version it names, as an expire change;
        expired() stays empty.
        """
        store = await self.open_store()
        now = self.clock.seconds()
        first = await store.commit(
            [Put("t", b"1", expires=now + 5), Put("u", b"2", expires=now + 500)]
        )
        self.assertEqual(await store.expired(10), [])
        # Not yet expired, or another version: nothing happens.
        result = await store.commit([Expire("t", first.revision), Expire("u", first.revision + 1)])
        self.assertEqual(result.changes, ())
        self.clock.advance(10)
        result = await store.commit([Expire("t", first.revision), Expire("u", first.revision)])
        self.assertEqual([(c.kind, c.key) for c in result.changes], [("expire", "t")])
        self.assertEqual(result.changes[0].previous.value, b"1")
        self.assertEqual(await self.raw.kvs(b"/kvtwist/kv/t"), [])
        self.assertEqual((await store.get("u")).value, b"2")

    @contract
    async def test_close_finishes_inflight_commits(self):
        """close lets a commit in flight finish, then refuses further calls."""
        store = await self.open_store()
        pending = store.commit([Put("a", b"1")])
        closed = store.close()
        result = await pending
        await closed
        self.assertGreater(result.revision, 1)
        await self.expect(StoreUnavailable, store.get("a"))
        other = await self.open_store()
        self.assertEqual((await other.get("a")).value, b"1")

    @contract
    async def test_list_skips_expired_keys(self):
        """
        Listing fills a page past runs of expired keys etcd still holds, at one
        revision.
        """
        store = await self.open_store()
        now = self.clock.seconds()
        await store.commit([Put("e%02d" % i, b"", expires=now + 5) for i in range(40)]
                           + [Put("f1", b""), Put("f2", b""), Put("f3", b"")])
        self.clock.advance(10)
        page = await store.list("", None, 2)
        self.assertEqual(([e.key for e in page.entries], page.more), (["f1", "f2"], True))
        page = await store.list("", "f2", 2)
        self.assertEqual(([e.key for e in page.entries], page.more), (["f3"], False))
        page = await store.list("e", None, 5)
        self.assertEqual((page.entries, page.more), ((), False))

    @contract
    async def test_get_many_beyond_max_txn_ops(self):
        """get_many of more keys than one transaction may hold reads them all."""
        store = await self.open_store(max_txn_ops=4)
        await store.commit([Put("k%d" % i, b"%d" % i) for i in range(4)])
        await store.commit([Put("k%d" % i, b"%d" % i) for i in range(4, 8)])
        found = await store.get_many(["k%d" % i for i in range(10)])
        self.assertEqual(sorted(found), ["k%d" % i for i in range(8)])

    @contract
    async def test_stores_share_etcd(self):
        """
        Two stores on one etcd see each other's commits; the revision follows every
        writer.
        """
        a = await self.open_store()
        b = await self.open_store()
        result = await a.commit([Put("k", b"from a")])
        self.assertEqual((await b.get("k")).value, b"from a")
        self.assertEqual(b.revision, result.revision)
        # Another prefix is another keyspace on the same etcd, sharing its
        # revision.
        c = await self.open_store(prefix="/other/")
        self.assertIsNone(await c.get("k"))
        later = await c.commit([Put("k", b"c")])
        self.assertGreater(later.revision, result.revision)
        await a.get("k")
        self.assertEqual(a.revision, later.revision)


class QuorumTests(TestCase):
    """A three-member cluster losing and regaining its quorum."""

    skip = SKIP
    timeout = 90

    def settle(self, d):
        """Test coroutines are run by trial (see L{contract})."""
        return d

    expect = EtcdTestCase.expect

    @contract
    async def test_quorum_loss_and_return(self):
        """
        With one member of three killed, writes and linearizable reads go on; with
        two, commits, linearizable reads and ping fail with StoreUnavailable saying
        etcd has no leader, and the watch is reported lost; once the members are
        back, service and the watch resume by themselves.
        """
        cluster = EtcdCluster(3)
        self.addCleanup(cluster.stop)
        cluster.start()
        # Longer than an election after the leader dies (1-2 s by default).
        store = EtcdStore(cluster.client_urls, reactor, timeout=3)
        await store.open()
        self.addCleanup(store.close)
        other = EtcdStore(cluster.client_urls[::-1], reactor, timeout=3, watch=False)
        await other.open()
        self.addCleanup(other.close)
        heard = []
        resets = []
        store.add_listener(lambda result: heard.append(result.revision))
        store.add_reset_listener(resets.append)
        await store.commit([Put("a", b"1")])
        # Kill a member that does not carry the watch, then one that does
        # not answer first: what remains is the watch's member alone.
        watched = cluster.client_urls.index(store.watch_endpoint)
        first, second = [i for i in range(3) if i != watched]
        cluster.kill(first)
        # One member down: the majority serves.
        await store.commit([Put("a", b"2")])
        self.assertEqual((await store.get_linearizable("a")).value, b"2")
        await store.ping()
        cluster.kill(second)
        try:
            await store.commit([Put("a", b"3")])
        except StoreUnavailable as e:
            self.assertIn(cluster.client_urls[watched], e.detail)
        else:
            self.fail("a commit without quorum succeeded")
        # The survivor steps down once it misses the others (bounded wait);
        # then everything says why.
        for _ in range(100):
            try:
                await store.ping()
            except StoreUnavailable as e:
                self.assertIn("etcd has no leader", e.detail)
                self.assertIn("(no quorum)", e.detail)
                break
            await deferLater(reactor, 0.1)
        else:
            self.fail("ping kept succeeding without quorum")
        error = await self.expect(StoreUnavailable, store.commit([Put("a", b"4")]))
        self.assertIn("no leader", error.detail)
        error = await self.expect(StoreUnavailable, store.get_linearizable("a"))
        self.assertIn("etcd has no leader", error.detail)
        # The member cancels the watch when it loses its leader.
        await wait_for(lambda: not store.watching, "the watch to be reported lost", timeout=15)
        self.assertEqual([r.watching for r in resets], [False])
        cluster.restart(first, wait=False)
        cluster.restart(second, wait=False)
        await cluster.when_healthy(timeout=30)
        # The members may hold one more election once all are back: a
        # client retrying for a few seconds is served.
        for _ in range(50):
            try:
                await store.ping()
                result = await store.commit([Put("b", b"back")])
                break
            except StoreUnavailable:
                await deferLater(reactor, 0.2)
        else:
            self.fail("no service 10 s after quorum returned")
        self.assertEqual((await store.get("b")).mod_revision, result.revision)
        self.assertIn((await store.get_linearizable("a")).value, (b"2", b"3"))
        await wait_for(lambda: store.watching, "the watch to resume", timeout=15)
        self.assertEqual(resets[-1].watching, True)
        theirs = await other.commit([Put("c", b"from other")])
        await wait_for(lambda: theirs.revision in heard, "the resumed watch to deliver")
        self.assertEqual(heard, sorted(heard))
