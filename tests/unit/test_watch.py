"""
TTL sweeping, long-polls and the Server-Sent Events feed, in memory with a
task.Clock (docs/api.md, "TTLs" and "Watching").
"""

import json

import treq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.logger import capturedLogs, formatEvent

from kvtwist.errors import InsufficientStorage
from kvtwist.events import EVENT_OVERHEAD, ChangeHub
from kvtwist.limits import Limits
from kvtwist.model import Put
from kvtwist.store.cache import CachedStore
from kvtwist.sweeper import Sweeper
from kvtwist.testing import MemoryStore, WatchedMemoryStore, memory_root
from tests.helpers.capability_fakes import UndeclaredExtras
from kvtwist.transactions import TransactionManager
from kvtwist.web.v1.base import V1Context
from kvtwist.web.v1.watch import EventStream
from tests.helpers.webtest import StoreWithoutHistory, TreeClient


def parse_sse(data: bytes):
    """The events in an SSE byte stream, as (id, event, data) tuples."""
    events = []
    for frame in data.decode("utf-8").split("\n\n"):
        fields = {}
        for line in frame.split("\n"):
            if line and not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
        if "event" in fields:
            events.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
    return events


class WatchCase(SynchronousTestCase):
    """A cached MemoryStore tree on a Clock, with a sweeper."""

    limits = Limits(sweep_batch=3, watch_history=5, max_watchers=3, heartbeat=15.0)
    jitter = 0.0

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = CachedStore(MemoryStore(self.clock), 1 << 20)
        self.root = memory_root(self.store, limits=self.limits, random=lambda: self.jitter)
        self.client = TreeClient(self, self.root)
        self.sweeper = Sweeper(self.store, self.clock, self.limits)

    def put(self, path, body=b"v", **headers):
        return self.client.request("PUT", "/v1/kv/" + path, body=body, headers=headers)

    def start(self, method, path, headers=None):
        """Send a request that stays open; returns (stub, Deferred of response)."""
        stub = self.client.stub
        d = stub.request(method, "http://kv.test" + path,
                         headers={k.encode(): [v.encode()] for k, v in (headers or {}).items()})
        stub.flush()
        return d

    def stream(self, path, headers=None):
        """Open an SSE stream; returns (response, received chunks list)."""
        response = self.successResultOf(self.start("GET", path, headers))
        chunks = []
        done = treq.collect(response, chunks.append)
        self.client.stub.flush()
        return response, chunks, done


class SweeperTests(WatchCase):
    """Expired keys are removed by commits of their own, in bounded batches."""

    def test_sweeps_in_batches(self):
        """Seven expired keys go in batches of three, each batch one revision."""
        for i in range(7):
            self.put("t%d?ttl=5" % i)
        self.put("keep")
        self.sweeper.startService()
        self.addCleanup(self.sweeper.stopService)
        self.clock.advance(6)
        # First tick at 1 s found nothing; the one at 6 s finds a full batch
        # and runs the next at once, until a batch comes back short.
        self.assertEqual(self.sweeper.swept, 7)
        self.assertEqual(self.store.revision, 8 + 3)
        self.assertEqual([i["key"] for i in self.client.request("GET", "/v1/kv/").json["items"]],
                         ["keep"])

    def test_full_disk_logs_one_line(self):
        """A sweep whose commit fails on a full disk logs one warning line with the store's error, no traceback, and retries until it passes."""
        self.put("t?ttl=1")
        self.store.store.fail_commits = InsufficientStorage("the commit could not be written: disk full")
        self.sweeper.startService()
        self.addCleanup(self.sweeper.stopService)
        with capturedLogs() as events:
            self.clock.advance(2)
        self.assertEqual(
            [formatEvent(event) for event in events],
            ["expiry sweep failed, retrying later: the commit could not be written: disk full"],
        )
        self.assertTrue(all(event.get("log_failure") is None for event in events))
        self.store.store.fail_commits = None
        self.clock.advance(1)
        self.assertEqual(self.sweeper.swept, 1)

    def test_expiry_survives_in_store_rows(self):
        """Before the sweep, an expired key is invisible but still stored."""
        self.put("t?ttl=1")
        self.clock.advance(2)
        self.client.problem("GET", "/v1/kv/t", 404, "key-not-found")
        self.assertIn("t", self.store.store.rows)


class LongPollTests(WatchCase):
    """GET /v1/kv/{key}?index=N&wait=S."""

    def test_answers_at_once_when_newer(self):
        """A key already past the index answers immediately."""
        self.put("a")
        self.put("a", b"w")
        answer = self.client.request("GET", "/v1/kv/a?index=1&wait=30")
        self.assertEqual((answer.status, answer.body), (200, b"w"))

    def test_wakes_on_commit(self):
        """A held read wakes with the new value when the key is written."""
        self.put("a", b"1")
        d = self.start("GET", "/v1/kv/a?index=1&wait=30")
        self.assertNoResult(d)
        self.put("other")
        self.assertNoResult(d)
        self.put("a", b"2")
        self.client.stub.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        self.assertEqual(self.successResultOf(treq.content(response)), b"2")
        self.assertEqual(self.root.root.children[b"v1"].context.watchers.active, 0)

    def test_timeout_answers_unchanged_state(self):
        """At the end of the wait the unchanged value comes back."""
        self.put("a", b"1")
        d = self.start("GET", "/v1/kv/a?index=1&wait=10")
        self.clock.advance(9.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.client.stub.flush()
        self.assertEqual(self.successResultOf(d).code, 200)

    def test_wait_is_capped_and_jittered(self):
        """wait is capped at max_wait and stretched by at most 1/16."""
        self.jitter = 1.0  # the largest jitter random() can give (just under)
        self.put("a")
        d = self.start("GET", "/v1/kv/a?index=1&wait=100000")
        self.clock.advance(600 + 600 / 16 - 0.01)
        self.assertNoResult(d)
        self.clock.advance(0.02)
        self.client.stub.flush()
        self.assertEqual(self.successResultOf(d).code, 200)

    def test_default_wait(self):
        """Without wait, a long-poll waits the default 60 s."""
        self.put("a")
        d = self.start("GET", "/v1/kv/a?index=1")
        self.clock.advance(59.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.client.stub.flush()
        self.successResultOf(d)

    def test_missing_key_wakes_only_on_appear(self):
        """A watch on a missing key ignores other writes and wakes when it appears."""
        d = self.start("GET", "/v1/kv/new?index=0&wait=30")
        self.put("x")
        self.put("y")
        self.assertNoResult(d)
        self.put("new", b"here")
        self.client.stub.flush()
        self.assertEqual(self.successResultOf(treq.content(self.successResultOf(d))), b"here")

    def test_index_zero_waits_past_the_history(self):
        """
        index=0 on a missing key waits for it to appear even when the event
        history no longer reaches revision 0 (a restarted store, or etcd,
        whose revisions start at 1): absence is not news to a client that
        never saw the key.
        """
        for n in range(self.limits.watch_history + 2):
            self.put("filler%d" % n)
        self.put("gone")
        self.client.request("DELETE", "/v1/kv/gone")
        for key in ("new", "gone"):
            d = self.start("GET", "/v1/kv/%s?index=0&wait=30" % key)
            self.assertNoResult(d)
            self.put(key, b"here")
            self.client.stub.flush()
            self.assertEqual(self.successResultOf(treq.content(self.successResultOf(d))), b"here")

    def test_deleted_after_index_answers_404_at_once(self):
        """A key deleted after the index answers 404 immediately."""
        self.put("a")
        self.client.request("DELETE", "/v1/kv/a")
        answer = self.client.request("GET", "/v1/kv/a?index=1&wait=30")
        self.assertEqual(answer.status, 404)

    def test_wakes_on_delete_and_expiry(self):
        """A held read wakes with 404 when the key is deleted or swept."""
        self.put("a")
        d = self.start("GET", "/v1/kv/a?index=1&wait=30")
        self.client.request("DELETE", "/v1/kv/a")
        self.client.stub.flush()
        self.assertEqual(self.successResultOf(d).code, 404)
        self.put("t?ttl=2")
        d = self.start("GET", "/v1/kv/t?index=3&wait=30")
        self.sweeper.startService()
        self.addCleanup(self.sweeper.stopService)
        self.clock.advance(3)
        self.client.stub.flush()
        self.assertEqual(self.successResultOf(d).code, 404)

    def test_disconnect_releases(self):
        """A client that leaves releases its subscription, timer and slot."""
        self.put("a")
        hub = self.root.root.children[b"v1"].context.hub
        d = self.start("GET", "/v1/kv/a?index=1&wait=30")
        self.assertEqual(hub.subscribers, 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        d.cancel()
        self.client.stub.flush()
        self.assertEqual(hub.subscribers, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.failureResultOf(d)

    def test_bad_parameters(self):
        """A non-numeric index or wait is a 400."""
        self.put("a")
        self.client.problem("GET", "/v1/kv/a?index=x", 400, "bad-parameter")
        self.client.problem("GET", "/v1/kv/a?index=1&wait=-1", 400, "bad-parameter")

    def test_watcher_cap(self):
        """Beyond max_watchers, a long-poll is 429."""
        self.put("a")
        for _ in range(3):
            self.start("GET", "/v1/kv/a?index=1&wait=30")
        self.client.problem("GET", "/v1/kv/a?index=1&wait=30", 429, "limit-exceeded")


class EventStreamTests(WatchCase):
    """GET /v1/watch: Server-Sent Events."""

    def test_events_of_commits(self):
        """One event per changed key, with id = revision, in commit order."""
        response, chunks, _ = self.stream("/v1/watch?prefix=p/")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"text/event-stream; charset=utf-8"])
        self.put("p/a", b"1")
        self.put("q/x")
        self.client.request("POST", "/v1/batch", json_body={"ops": [
            {"op": "set", "key": "p/b", "value": 2}, {"op": "delete", "key": "p/a"}]})
        self.client.stub.flush()
        events = parse_sse(b"".join(chunks))
        self.assertEqual([(i, kind, d["key"]) for i, kind, d in events],
                         [(1, "put", "p/a"), (3, "put", "p/b"), (3, "delete", "p/a")])
        self.assertEqual(events[0][2], {"key": "p/a", "revision": 1, "version": 1,
                                        "content_type": "application/octet-stream", "size": 1})

    def test_prefix_delete_events(self):
        """A prefix delete is one delete event per key, all with the one revision of its commit."""
        for key in ("p/a", "p/b", "q/c"):
            self.put(key)
        response, chunks, _ = self.stream("/v1/watch?prefix=&after=3")
        self.assertEqual(self.client.request("DELETE", "/v1/kv/?prefix=p/").json["revision"], 4)
        self.client.stub.flush()
        events = parse_sse(b"".join(chunks))
        self.assertEqual(sorted((i, kind, d["key"]) for i, kind, d in events),
                         [(4, "delete", "p/a"), (4, "delete", "p/b")])

    def test_values(self):
        """values=1 includes small values: JSON inline, others base64."""
        _, chunks, _ = self.stream("/v1/watch?values=1")
        self.client.request("POST", "/set", json_body={"j": {"x": 1}})
        self.client.request("POST", "/commit")
        self.put("b", b"\x00")
        self.client.stub.flush()
        events = parse_sse(b"".join(chunks))
        self.assertEqual(events[0][2]["value"], {"x": 1})
        self.assertEqual(events[1][2]["value_base64"], "AA==")

    def test_expire_events(self):
        """The sweeper's removals are expire events."""
        _, chunks, _ = self.stream("/v1/watch")
        self.put("t?ttl=1")
        self.sweeper.startService()
        self.addCleanup(self.sweeper.stopService)
        self.clock.advance(2)
        self.client.stub.flush()
        self.assertEqual([(i, k) for i, k, _ in parse_sse(b"".join(chunks))],
                         [(1, "put"), (2, "expire")])

    def test_resume_from_last_event_id(self):
        """Last-Event-ID replays exactly the events after it, then goes live."""
        for key in ("a", "b", "c"):
            self.put(key)
        _, chunks, _ = self.stream("/v1/watch", {"Last-Event-ID": "1"})
        self.put("d")
        self.client.stub.flush()
        self.assertEqual([i for i, _, _ in parse_sse(b"".join(chunks))], [2, 3, 4])
        _, chunks, _ = self.stream("/v1/watch?after=3")
        self.client.stub.flush()
        self.assertEqual([i for i, _, _ in parse_sse(b"".join(chunks))], [4])

    def test_resume_from_the_store_history(self):
        """
        A resume point older than the in-memory feed keeps is replayed from
        the store's history; only a compacted one is 410, naming the
        compact revision.
        """
        for i in range(8):
            self.put("k%d" % i)
        _, chunks, _ = self.stream("/v1/watch?after=1")
        self.put("k8")
        self.client.stub.flush()
        self.assertEqual([i for i, _, _ in parse_sse(b"".join(chunks))], list(range(2, 10)))
        self.successResultOf(self.store.compact(4, 100))
        answer = self.client.problem("GET", "/v1/watch?after=3", 410, "history-gone")
        self.assertEqual(answer.json["oldest_revision"], 4)
        self.assertEqual(self.stream("/v1/watch?after=4")[0].code, 200)

    def test_previous_values(self):
        """prev=1 adds each key's previous metadata and value, live and replayed."""
        self.put("a", b"1", **{"Content-Type": "text/plain"})
        _, chunks, _ = self.stream("/v1/watch?prev=1")
        self.put("a", b"2")
        self.client.request("DELETE", "/v1/kv/a")
        self.put("b", b"new")
        _, replayed, _ = self.stream("/v1/watch?prev=1", {"Last-Event-ID": "1"})
        self.client.stub.flush()
        for received in (chunks, replayed):
            events = parse_sse(b"".join(received))
            self.assertEqual(
                [(kind, d["key"], d["prev"] and d["prev"]["value_base64"]) for _, kind, d in events],
                [("put", "a", "MQ=="), ("delete", "a", "Mg=="), ("put", "b", None)],
            )
            self.assertEqual(
                events[0][2]["prev"],
                {"key": "a", "create_revision": 1, "mod_revision": 1, "version": 1,
                 "content_type": "text/plain", "size": 1, "expires": None, "value_base64": "MQ=="},
            )

    def test_commits_marked_whole(self):
        """Every event but the last of its commit says more_in_commit, live and replayed."""
        _, chunks, _ = self.stream("/v1/watch")
        self.client.request("POST", "/v1/batch", json_body={"ops": [
            {"op": "set", "key": "a", "value": 1}, {"op": "set", "key": "b", "value": 2}]})
        self.put("c")
        _, replayed, _ = self.stream("/v1/watch?after=0")
        self.client.stub.flush()
        for received in (chunks, replayed):
            self.assertEqual(
                [(i, d.get("more_in_commit", False)) for i, _, d in parse_sse(b"".join(received))],
                [(1, True), (1, False), (2, False)],
            )

    def test_heartbeats_are_progress(self):
        """
        Every heartbeat interval a progress event goes out whose id is the
        revision the stream is complete up to: the store's, on a quiet prefix.
        """
        self.put("before")
        _, chunks, _ = self.stream("/v1/watch?prefix=quiet/")
        self.clock.advance(15)
        self.put("elsewhere")
        self.put("again")
        self.clock.advance(15)
        self.client.stub.flush()
        self.assertEqual(
            parse_sse(b"".join(chunks)),
            [(1, "progress", {"revision": 1}), (3, "progress", {"revision": 3})],
        )

    def test_watcher_cap(self):
        """Beyond max_watchers, a stream is 429."""
        for _ in range(3):
            self.stream("/v1/watch")
        self.client.problem("GET", "/v1/watch", 429, "limit-exceeded")

    def test_bad_resume(self):
        """A resume point that is not a revision is 400."""
        self.client.problem("GET", "/v1/watch?after=x", 400, "bad-parameter")


class FakeTransport:
    """Records whether the slow reader was cut off."""

    aborted = False

    def abortConnection(self):
        self.aborted = True


class FakeChannel:
    """The channel of a L{FakeRequest}."""

    def __init__(self):
        self.transport = FakeTransport()


class FakeRequest:
    """
    Just enough of a Request for an L{EventStream}: Twisted's DummyRequest
    drives any registered producer in a loop, which a push producer (like
    EventStream) never leaves.
    """

    #: Set to push back (pause the producer) on every write, as a
    #: transport whose buffer is full does.
    push_back = False

    def __init__(self):
        self.written = []
        self.channel = FakeChannel()
        self.producer = None
        self._finished = []

    def write(self, data):
        self.written.append(data)
        if self.push_back and self.producer is not None:
            self.producer.pauseProducing()

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def notifyFinish(self):
        d = Deferred()
        self._finished.append(d)
        return d

    def lose_connection(self):
        """What Twisted does when the client goes away."""
        for d in self._finished:
            d.errback(ConnectionDone())


class EventStreamUnitTests(SynchronousTestCase):
    """EventStream's lifecycle: slow readers, resume, disconnects."""

    def setUp(self):
        self.clock = Clock()
        self.store = MemoryStore(self.clock)
        self.limits = Limits(watch_buffer=1000)
        self.hub = ChangeHub(self.store, 100)
        self.context = V1Context(
            self.store, TransactionManager(self.clock, self.limits, self.store), self.limits,
            self.clock, self.hub,
        )
        self.request = FakeRequest()
        self.stream = EventStream(self.request, self.context, lambda key: True, False)

    def test_slow_reader_disconnected(self):
        """Past watch_buffer bytes queued while paused, the stream is cut."""
        self.successResultOf(self.store.commit([Put("a", b"x")]))
        self.assertEqual(len(self.request.written), 1)
        self.stream.pauseProducing()
        for i in range(20):
            self.successResultOf(self.store.commit([Put("k%d" % i, b"x" * 10)]))
        self.assertTrue(self.request.channel.transport.aborted)
        self.assertEqual((self.hub.subscribers, self.context.watchers.active), (0, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_commit_larger_than_buffer_cuts_off(self):
        """A commit whose events pass watch_buffer cuts the reader off unwritten, paused or not."""
        self.successResultOf(self.store.commit([Put("k%d" % i, b"x") for i in range(20)]))
        self.assertEqual(self.request.written, [])
        self.assertTrue(self.request.channel.transport.aborted)
        self.assertEqual((self.hub.subscribers, self.context.watchers.active), (0, 0))

    def test_bytes_waiting_in_the_transport_count(self):
        """
        What was written just before the transport pushed back still counts
        against watch_buffer: a later commit that would pass it with those
        bytes cuts the reader off, and after the transport flushed it fits.
        """
        self.request.push_back = True
        self.successResultOf(self.store.commit([Put("k%d" % i, b"x") for i in range(6)]))
        self.assertEqual(len(self.request.written), 1)
        self.assertGreater(len(self.request.written[0]), 500)
        self.stream.resumeProducing()
        self.request.push_back = False
        self.successResultOf(self.store.commit([Put("k%d" % i, b"x") for i in range(6)]))
        self.assertEqual(len(self.request.written), 2)
        self.request.push_back = True
        self.successResultOf(self.store.commit([Put("k%d" % i, b"x") for i in range(6)]))
        self.successResultOf(self.store.commit([Put("k%d" % i, b"x") for i in range(6)]))
        self.assertEqual(len(self.request.written), 3)
        self.assertTrue(self.request.channel.transport.aborted)

    def test_backlog_larger_than_buffer_cuts_off(self):
        """A resume backlog whose events pass watch_buffer cuts the reader off unwritten."""
        for i in range(20):
            self.successResultOf(self.store.commit([Put("k%d" % i, b"x")]))
        request = FakeRequest()
        stream = EventStream(request, self.context, lambda key: True, False)
        stream.send(self.hub.since(0, lambda key: True))
        self.assertEqual(request.written, [])
        self.assertTrue(request.channel.transport.aborted)

    def test_resume_flushes_queue(self):
        """Events queued while paused go out in order on resume."""
        self.stream.pauseProducing()
        for key in ("a", "b"):
            self.successResultOf(self.store.commit([Put(key, b"x")]))
        self.assertEqual(self.request.written, [])
        self.stream.resumeProducing()
        self.assertEqual([i for i, _, _ in parse_sse(b"".join(self.request.written))], [1, 2])

    def test_disconnect_releases(self):
        """A stream whose client leaves releases subscription, timer and slot."""
        self.assertEqual((self.hub.subscribers, self.context.watchers.active), (1, 1))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.request.lose_connection()
        self.assertEqual((self.hub.subscribers, self.context.watchers.active), (0, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.successResultOf(self.store.commit([Put("late", b"x")]))
        self.assertEqual(self.request.written, [])


class _UnfiredChanges:
    """A store whose history reads wait until the test fires them."""

    def __init__(self, store):
        self._store = store
        self.reads = []

    def __getattr__(self, name):
        return getattr(self._store, name)

    def changes(self, after, upto, max_records):
        d = Deferred()
        self.reads.append((d, self._store.changes(after, upto, max_records)))
        return d

    def fire(self):
        d, answer = self.reads.pop(0)
        answer.chainDeferred(d)


class InMemoryFeedTests(WatchCase):
    """On a store without history, streams resume from the change feed's memory."""

    def setUp(self):
        super().setUp()
        self.store = CachedStore(StoreWithoutHistory(self.clock), 1 << 20)
        self.root = memory_root(self.store, limits=self.limits, random=lambda: self.jitter)
        self.client = TreeClient(self, self.root)

    def test_history_overflow_is_410(self):
        """A resume point that has left the feed's bounded memory is 410 naming the oldest."""
        for i in range(8):
            self.put("k%d" % i)
        answer = self.client.problem("GET", "/v1/watch?after=1", 410, "history-gone")
        self.assertEqual(answer.json["oldest_revision"], 3)
        _, chunks, _ = self.stream("/v1/watch?after=3&prev=1")
        self.client.stub.flush()
        events = parse_sse(b"".join(chunks))
        self.assertEqual([i for i, _, _ in events], [4, 5, 6, 7, 8])
        self.assertIsNone(events[0][2]["prev"])


class ReplayTests(SynchronousTestCase):
    """A resumed stream replays the history while live commits are held back."""

    def test_live_commits_wait_for_the_replay(self):
        """
        Commits made while the history is read come after it, each event
        once, in revision order: no gap, no repeat.
        """
        from kvtwist.web.v1.watch import replay

        clock = Clock()
        store = MemoryStore(clock)
        limits = Limits()
        hub = ChangeHub(store, 100)
        context = V1Context(store, TransactionManager(clock, limits, store), limits, clock, hub)
        for key in ("a", "b", "c"):
            self.successResultOf(store.commit([Put(key, b"x")]))
        request = FakeRequest()
        slow = _UnfiredChanges(store)
        stream = EventStream(request, context, lambda key: True, False, replaying=True, position=1)
        done = Deferred.fromCoroutine(replay(stream, slow, 1, hub.position))
        self.successResultOf(store.commit([Put("d", b"x")]))
        self.successResultOf(store.commit([Put("b", b"y")]))
        self.assertEqual(request.written, [])
        clock.advance(15)  # a heartbeat while replaying: still at the resume point
        slow.fire()
        self.successResultOf(done)
        self.assertEqual(slow.reads, [])
        self.successResultOf(store.commit([Put("e", b"x")]))
        events = parse_sse(b"".join(request.written))
        self.assertEqual(
            [(i, kind, d.get("key")) for i, kind, d in events],
            [(1, "progress", None), (2, "put", "b"), (3, "put", "c"), (4, "put", "d"),
             (5, "put", "b"), (6, "put", "e")],
        )
        self.assertEqual(stream.position, 6)

    def test_held_events_are_bounded(self):
        """Past watch_buffer bytes held during a replay, the stream is cut off."""
        clock = Clock()
        store = MemoryStore(clock)
        limits = Limits(watch_buffer=500)
        hub = ChangeHub(store, 100)
        context = V1Context(store, TransactionManager(clock, limits, store), limits, clock, hub)
        request = FakeRequest()
        EventStream(request, context, lambda key: True, False, replaying=True, position=0)
        for i in range(10):
            self.successResultOf(store.commit([Put("k%d" % i, b"x" * 50)]))
        self.assertTrue(request.channel.transport.aborted)
        self.assertEqual((hub.subscribers, context.watchers.active), (0, 0))


class HistoryResetTests(SynchronousTestCase):
    """A change feed that lost history (etcd compaction) refuses old resumes."""

    def test_lost_history_moves_horizon(self):
        """After a reset with history lost, resuming from before it is a 410."""
        from kvtwist.errors import HistoryGone
        from kvtwist.store.etcd.watchloop import WatchReset

        store = WatchedMemoryStore()
        resets = store.reset_listeners
        hub = ChangeHub(store, 100)
        for key in ("a", "b"):
            self.successResultOf(store.commit([Put(key, b"")]))
        self.assertEqual(len(hub.since(0, lambda key: True)), 2)
        resets[0](WatchReset(True, True, 7, "compacted"))
        self.assertRaises(HistoryGone, hub.since, 6, lambda key: True)
        self.assertEqual(hub.since(7, lambda key: True), [])

    def test_undeclared_resets_are_not_followed(self):
        """A store with add_reset_listener that does not declare IWatchedStore is not asked for resets."""
        store = UndeclaredExtras()
        ChangeHub(store, 100)
        self.assertEqual(store.reset_listeners, [])


class HistoryBytesTests(SynchronousTestCase):
    """The history is bounded in bytes as well as in events, by whole commits."""

    def setUp(self):
        self.store = MemoryStore()
        self.hub = ChangeHub(self.store, 100, max_bytes=3 * (EVENT_OVERHEAD + 1 + 1000))

    def test_oldest_commits_leave_past_the_byte_bound(self):
        """Four 1000-byte values in a history of about three: the first commit leaves, resuming before it is a 410."""
        from kvtwist.errors import HistoryGone

        for key in "abcd":
            self.successResultOf(self.store.commit([Put(key, b"x" * 1000)]))
        self.assertRaises(HistoryGone, self.hub.since, 0, lambda key: True)
        self.assertEqual([event.key for event in self.hub.since(1, lambda key: True)], ["b", "c", "d"])

    def test_commit_larger_than_the_bound_leaves_at_once(self):
        """A commit larger than the whole bound is delivered but not kept: resuming from before it is a 410."""
        from kvtwist.errors import HistoryGone

        delivered = []
        self.hub.subscribe(lambda key: True, lambda revision, events: delivered.append(len(events)))
        self.successResultOf(self.store.commit([Put("small", b"x")]))
        self.successResultOf(self.store.commit([Put(k, b"x" * 1000) for k in "abcd"]))
        self.assertEqual(delivered, [1, 4])
        self.assertRaises(HistoryGone, self.hub.since, 1, lambda key: True)
        self.assertEqual(self.hub.since(2, lambda key: True), [])

    def test_event_count_bound_still_holds(self):
        """Small events are bounded by the event count as before, keeping the newest commit."""
        hub = ChangeHub(self.store, 2, max_bytes=10**9)
        for key in "abc":
            self.successResultOf(self.store.commit([Put(key, b"")]))
        self.assertEqual([event.key for event in hub.since(1, lambda key: True)], ["b", "c"])
