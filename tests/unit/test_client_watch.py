"""
Tests for L{kvtwist.client.watch}: C{watch} against a scripted server
(resume points, backoff, errors, flow control) and against the whole
Resource tree in memory, and C{wait_for}'s long-poll.
"""

from __future__ import annotations

import json
from typing import List, Optional, Tuple

from treq.testing import StubTreq
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from kvtwist import client
from kvtwist.client import HistoryGone, KVClientError, NotFoundError, WatchEvent
from kvtwist.limits import Limits
from kvtwist.testing import MemoryStore, memory_root
from tests.helpers.client import NoNetwork, Recorder, Tap, URL, V1TestCase


def frame(revision: int, key: str, kind: str = "put", **data) -> bytes:
    """One event frame as the server writes it."""
    document = {"key": key, "revision": revision, **data}
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (
        revision, kind.encode(), json.dumps(document).encode()
    )


def keys_of(events) -> List[Tuple[int, str, str]]:
    """(revision, kind, key) of each event, for comparisons."""
    return [(e.revision, e.kind, e.key) for e in events]


class FakeBodyTransport:
    """The transport a response body's protocol gets: records pauses and closes."""

    def __init__(self, stream: "FakeStream") -> None:
        self.stream = stream
        self.paused = False
        self.pauses = 0
        self.lost = False

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.loseConnection()

    def loseConnection(self) -> None:
        # As Twisted reports a body cut short by our side.
        if not self.lost:
            self.lost = True
            self.stream.lose(ResponseFailed([Failure(net_error.ConnectionDone())]))


class FakeStream:
    """One scripted response: its body goes to whatever protocol the client gives it."""

    def __init__(self, code: int, headers: Headers, body: bytes = b"", open_ended: bool = True) -> None:
        self.code = code
        self.headers = headers
        self.length = UNKNOWN_LENGTH if open_ended else len(body)
        self._body = body
        self._open_ended = open_ended
        self.protocol = None
        self.transport = FakeBodyTransport(self)
        self.ended = False

    def deliverBody(self, protocol) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)
        if self._body:
            protocol.dataReceived(self._body)
        if not self._open_ended:
            self.lose(ResponseDone())

    def send(self, data: bytes) -> None:
        """Bytes from the server."""
        assert not self.ended
        self.protocol.dataReceived(data)

    def lose(self, reason: Exception) -> None:
        if not self.ended:
            self.ended = True
            self.protocol.connectionLost(Failure(reason))

    def finish(self) -> None:
        """The server ends the stream properly."""
        self.lose(ResponseDone())

    def drop(self) -> None:
        """The connection breaks."""
        self.lose(ResponseFailed([Failure(net_error.ConnectionLost())]))


class StreamServer:
    """
    A treq-like client whose answers the test scripts: each request waits
    until the test answers it with L{open}, L{answer} or L{refuse}.

    @ivar requests: C{(method, url, headers, kwargs)} of every request.
    """

    def __init__(self) -> None:
        self.requests: List[Tuple[str, str, Headers, dict]] = []
        self.waiting: List[Deferred] = []
        self.cancelled = 0

    def request(self, method, url, headers=None, **kwargs):
        self.requests.append((method, url, headers, kwargs))

        def cancel(d) -> None:
            self.cancelled += 1
            self.waiting.remove(d)

        d = Deferred(cancel)
        self.waiting.append(d)
        return d

    def header(self, name: bytes, index: int = -1) -> Optional[bytes]:
        values = self.requests[index][2].getRawHeaders(name)
        return values[0] if values else None

    def open(self, revision: int = 0, content_type: bytes = b"text/event-stream; charset=utf-8") -> FakeStream:
        """Answer the oldest waiting request with an event stream."""
        headers = Headers({b"content-type": [content_type], b"kv-revision": [b"%d" % (revision,)]})
        stream = FakeStream(200, headers)
        self.waiting.pop(0).callback(stream)
        return stream

    def answer(self, code: int, problem: dict) -> None:
        """Answer the oldest waiting request with a problem document."""
        body = json.dumps(problem).encode()
        headers = Headers({b"content-type": [b"application/problem+json"]})
        self.waiting.pop(0).callback(FakeStream(code, headers, body, open_ended=False))

    def refuse(self) -> None:
        """The oldest waiting request's connection is refused."""
        self.waiting.pop(0).errback(ConnectionRefusedError("Connection refused"))


class WatchTestMixin:
    """Consume a Watch from a coroutine, as an application would."""

    def consume(self, watch, into: list) -> Deferred:
        """Append every event of C{watch} to C{into}; fires when the iteration ends."""

        async def run() -> None:
            async for event in watch:
                into.append(event)

        return Deferred.fromCoroutine(run())


class ScriptedWatchTests(WatchTestMixin, SynchronousTestCase):
    """watch() against a scripted server: resume points, backoff, errors, flow control."""

    def setUp(self) -> None:
        self.server = StreamServer()
        self.clock = Clock()
        self.events: list = []

    def watch(self, **kwargs):
        kwargs.setdefault("clock", self.clock)
        kwargs.setdefault("random", lambda: 1.0)
        watch = client.watch(self.server, URL, "p/", **kwargs)
        self.done = self.consume(watch, self.events)
        self.addCleanup(watch.close)
        return watch

    def test_request(self) -> None:
        """The stream is asked for with the prefix, values, Accept, token, and unbuffered."""
        client.watch(self.server, URL + "/base/", "a b/", values=True, token="t0k", clock=self.clock).close()
        method, url, headers, kwargs = self.server.requests[0]
        self.assertEqual((method, url), ("GET", URL + "/base/v1/watch?prefix=a%20b%2F&values=1"))
        self.assertEqual(self.server.header(b"accept"), b"text/event-stream")
        self.assertEqual(self.server.header(b"authorization"), b"Bearer t0k")
        self.assertIsNone(self.server.header(b"last-event-id"))
        # A buffered treq response would keep the whole stream in memory.
        self.assertEqual(kwargs, {"unbuffered": True})

    def test_after_is_sent_as_last_event_id(self) -> None:
        """after=REV asks the server to replay from REV."""
        self.watch(after=41)
        self.assertEqual(self.server.header(b"last-event-id"), b"41")

    def test_events_and_when_open(self) -> None:
        """when_open fires with KV-Revision; events come in order with their data."""
        watch = self.watch()
        opened = watch.when_open()
        self.assertNoResult(opened)
        stream = self.server.open(revision=4)
        self.assertEqual(self.successResultOf(opened), 4)
        self.assertEqual(self.successResultOf(watch.when_open()), 4)
        stream.send(b"retry: 1000\n\n" + frame(5, "p/a", version=1) + frame(6, "p/a", "delete")
                    + frame(7, "p/t", "expire") + b"id: 8\nevent: future\ndata: {}\n\n")
        self.assertEqual(keys_of(self.events), [(5, "put", "p/a"), (6, "delete", "p/a"), (7, "expire", "p/t")])
        self.assertEqual(self.events[0].data, {"key": "p/a", "revision": 5, "version": 1})
        self.assertEqual((self.events[0].version, self.events[1].version), (1, None))
        self.assertEqual(watch.last_revision, 7)
        self.assertEqual(watch.retry, 1.0)

    def test_resume_after_whole_commits(self) -> None:
        """A drop right after a heartbeat resumes from the last revision, at once."""
        self.watch()
        stream = self.server.open(revision=0)
        stream.send(frame(1, "p/a") + frame(2, "p/b") + b": heartbeat\n\n")
        stream.drop()
        self.assertEqual(len(self.server.requests), 2)  # no backoff after progress
        self.assertEqual(self.server.header(b"last-event-id"), b"2")
        self.server.open(revision=3).send(frame(3, "p/c"))
        self.assertEqual([e.revision for e in self.events], [1, 2, 3])

    def test_resume_after_the_last_event_of_a_commit(self) -> None:
        """
        A drop right after a commit's last event (no more_in_commit) resumes
        from that commit's revision itself, not the one before.
        """
        self.watch()
        stream = self.server.open(revision=0)
        stream.send(frame(1, "p/a") + frame(2, "p/b", more_in_commit=True) + frame(2, "p/c"))
        stream.drop()
        self.assertEqual(self.server.header(b"last-event-id"), b"2")
        self.server.open(revision=3).send(frame(3, "p/d"))
        self.assertEqual([e.revision for e in self.events], [1, 2, 2, 3])

    def test_progress_is_a_resume_point(self) -> None:
        """
        A progress event moves the resume point to its id (a quiet prefix
        resumes from the present) and is not yielded.
        """
        watch = self.watch()
        stream = self.server.open(revision=3)
        stream.send(frame(4, "p/a") + b'id: 9\nevent: progress\ndata: {"revision": 9}\n\n')
        self.assertEqual((keys_of(self.events), watch.last_revision), ([(4, "put", "p/a")], 9))
        stream.drop()
        self.assertEqual(self.server.header(b"last-event-id"), b"9")
        self.server.open(revision=10).send(frame(9, "p/late") + frame(10, "p/b"))
        self.assertEqual([e.revision for e in self.events], [4, 10])

    def test_progress_without_revision_is_bad(self) -> None:
        """A progress event without a numeric id is a bad-response."""
        self.watch(reconnect=False)
        self.server.open(revision=3).send(b"event: progress\ndata: {}\n\n")
        self.assertEqual(self.failureResultOf(self.done, KVClientError).value.code, "bad-response")

    def test_resume_inside_a_commit(self) -> None:
        """
        A drop that cut a commit short (its last event said more_in_commit)
        resumes from the revision before it; its replayed events already
        yielded are dropped.
        """
        watch = self.watch()
        stream = self.server.open(revision=3)
        stream.send(frame(4, "p/x") + frame(5, "p/a", more_in_commit=True))  # commit 5 is p/a and p/b
        stream.drop()
        self.assertEqual(self.server.header(b"last-event-id"), b"4")
        stream = self.server.open(revision=6)
        stream.send(frame(5, "p/a", more_in_commit=True) + frame(5, "p/b") + frame(6, "p/c"))
        self.assertEqual(keys_of(self.events), [(4, "put", "p/x"), (5, "put", "p/a"),
                                                (5, "put", "p/b"), (6, "put", "p/c")])
        self.assertEqual(watch.reconnects, 1)

    def test_later_commit_proves_earlier_whole(self) -> None:
        """
        A heartbeat proves the commits before it whole, not the ones after
        it: a drop after a later event that says more of its commit follows
        resumes from the revision before that event.
        """
        self.watch()
        stream = self.server.open(revision=0)
        stream.send(frame(1, "p/a") + frame(2, "p/b") + b": heartbeat\n\n"
                    + frame(3, "p/c", more_in_commit=True))
        stream.drop()
        self.assertEqual(self.server.header(b"last-event-id"), b"2")

    def test_opening_revision_is_the_first_resume_point(self) -> None:
        """A drop before any event resumes from the revision the stream opened at."""
        self.watch()
        self.server.open(revision=12).finish()
        self.clock.advance(1)  # no progress: one backoff step
        self.assertEqual(self.server.header(b"last-event-id"), b"12")

    def test_replays_and_stale_events_dropped(self) -> None:
        """Events at or before a whole commit (a server replaying too much) are not yielded again."""
        self.watch(after=5)
        self.server.open(revision=9).send(frame(4, "p/old") + frame(5, "p/a") + frame(6, "p/b") + frame(6, "p/b"))
        self.assertEqual(keys_of(self.events), [(6, "put", "p/b")])

    def test_backoff_doubles_and_gives_up(self) -> None:
        """Refused attempts wait 1, 2, 4, ... s (capped); past max_retries the error is raised."""
        self.watch(retry_delay=1.0, max_delay=5.0, max_retries=4)
        times = []
        for _ in range(20):
            if self.server.waiting:
                times.append(self.clock.seconds())
                self.server.refuse()
                continue
            calls = self.clock.getDelayedCalls()
            if not calls:
                break
            self.clock.advance(calls[0].getTime() - self.clock.seconds())
        self.assertEqual(times, [0, 1, 3, 7, 12])
        self.failureResultOf(self.done, ConnectionRefusedError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_jitter(self) -> None:
        """The backoff is scaled by a random factor between 0.5 and 1."""
        self.watch(retry_delay=2.0, random=lambda: 0.0)
        self.server.refuse()
        self.clock.advance(0.999)
        self.assertEqual(len(self.server.requests), 1)
        self.clock.advance(0.001)
        self.assertEqual(len(self.server.requests), 2)

    def test_server_retry_hint_is_the_base(self) -> None:
        """Without retry_delay, the server's retry: hint is the first backoff delay."""
        self.watch()
        stream = self.server.open(revision=0)
        stream.send(b"retry: 3000\n\n")
        stream.drop()
        self.clock.advance(2.9)
        self.assertEqual(len(self.server.requests), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.server.requests), 2)

    def test_quiet_drops_back_off_but_do_not_give_up(self) -> None:
        """Streams that open and drop without an event back off, but never exhaust max_retries."""
        self.watch(retry_delay=1.0, max_delay=2.0, max_retries=1)
        for _ in range(5):
            self.server.open(revision=0).drop()
            self.clock.advance(2)
        self.assertEqual(len(self.server.requests), 6)
        self.assertNoResult(self.done)

    def test_transient_refusals_retried(self) -> None:
        """429 and 503 answers are retried; the next stream resumes."""
        self.watch(retry_delay=1.0)
        self.server.answer(429, {"code": "limit-exceeded"})
        self.clock.advance(1)
        self.server.answer(503, {"code": "store-unavailable"})
        self.clock.advance(2)
        self.server.open(revision=1).send(frame(2, "p/a"))
        self.assertEqual(keys_of(self.events), [(2, "put", "p/a")])

    def test_refusals_not_retried(self) -> None:
        """400, 401, 403 and 404 end the watch with the error; nothing is retried."""
        for status, code in ((400, "bad-parameter"), (401, "unauthorized"), (403, "forbidden"), (404, "not-found")):
            server = StreamServer()
            watch = client.watch(server, URL, clock=self.clock)
            server.answer(status, {"code": code})
            events: list = []
            e = self.failureResultOf(self.consume(watch, events), KVClientError).value
            self.assertEqual((e.status, e.code, len(server.requests)), (status, code, 1))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_history_gone_on_resume(self) -> None:
        """A resume refused with 410 raises HistoryGone with the server's fields."""
        watch = self.watch()
        stream = self.server.open(revision=0)
        stream.send(frame(1, "p/a") + b": heartbeat\n\n")
        stream.drop()
        self.server.answer(410, {"code": "history-gone", "oldest_revision": 50, "requested_revision": 1,
                                 "detail": "events after revision 1 are no longer in the history"})
        e = self.failureResultOf(self.done, HistoryGone).value
        self.assertEqual((e.status, e.oldest_revision, e.requested_revision), (410, 50, 1))
        self.assertIn("410 history-gone", str(e))
        self.assertEqual(keys_of(self.events), [(1, "put", "p/a")])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # The iteration is over: close() has nothing left to do.
        self.successResultOf(watch.close())

    def test_not_an_event_stream(self) -> None:
        """A 200 that is not text/event-stream (a proxy's page) is a bad-response, not retried."""
        self.watch()
        stream = self.server.open(content_type=b"text/html")
        # Closed unread: such a page may be large, or endless.
        self.assertTrue(stream.transport.lost)
        self.assertEqual(self.failureResultOf(self.done, KVClientError).value.code, "bad-response")
        self.assertEqual(len(self.server.requests), 1)

    def test_malformed_event(self) -> None:
        """An event whose data is not a JSON object, or whose id is not its revision, is a bad-response."""
        for bad in (b"id: 1\nevent: put\ndata: [1]\n\n",
                    b"id: 1\nevent: put\ndata: {\"key\": \"k\", \"revision\": 2}\n\n",
                    b"id: x\nevent: put\ndata: {\"key\": \"k\"}\n\n"):
            server = StreamServer()
            events: list = []
            done = self.consume(client.watch(server, URL, clock=self.clock), events)
            stream = server.open()
            stream.send(frame(1, "ok") + bad)
            self.assertTrue(stream.transport.lost)
            self.assertEqual(self.failureResultOf(done, KVClientError).value.code, "bad-response")
            self.assertEqual(keys_of(events), [(1, "put", "ok")])

    def test_idle_timeout_reconnects(self) -> None:
        """No byte, heartbeats included, for idle_timeout seconds: the connection is dropped and resumed."""
        self.watch(idle_timeout=20.0)
        stream = self.server.open(revision=3)
        self.clock.advance(15)
        stream.send(b": heartbeat\n\n")
        self.clock.advance(15)
        self.assertFalse(stream.transport.lost)
        self.clock.advance(5)
        self.assertTrue(stream.transport.lost)
        self.assertEqual(self.server.header(b"last-event-id"), b"3")

    def test_idle_timeout_while_connecting(self) -> None:
        """A request that gets no answer is cancelled after idle_timeout and tried again."""
        self.watch(idle_timeout=20.0, retry_delay=1.0)
        self.clock.advance(20)
        self.assertEqual(self.server.cancelled, 1)
        self.clock.advance(1)
        self.assertEqual(len(self.server.requests), 2)

    def test_no_reconnect_clean_end(self) -> None:
        """With reconnect=False, the stream's end ends the iteration."""
        self.watch(reconnect=False)
        stream = self.server.open()
        stream.send(frame(1, "p/a"))
        stream.finish()
        self.successResultOf(self.done)
        self.assertEqual((len(self.events), len(self.server.requests)), (1, 1))

    def test_no_reconnect_failure(self) -> None:
        """With reconnect=False, a broken connection is raised."""
        self.watch(reconnect=False)
        self.server.open().drop()
        self.failureResultOf(self.done, ResponseFailed)

    def test_flow_control(self) -> None:
        """Past max_buffer unconsumed events the connection pauses, until half are consumed."""
        watch = client.watch(self.server, URL, clock=self.clock, max_buffer=4)
        self.addCleanup(watch.close)
        stream = self.server.open()
        stream.send(b"".join(frame(i, "k%d" % i) for i in range(1, 7)))
        self.assertTrue(stream.transport.paused)
        got = []

        async def take(n: int) -> None:
            for _ in range(n):
                got.append(await watch.__anext__())

        self.successResultOf(Deferred.fromCoroutine(take(3)))
        self.assertTrue(stream.transport.paused)
        self.successResultOf(Deferred.fromCoroutine(take(1)))
        self.assertFalse(stream.transport.paused)
        self.assertEqual([e.revision for e in got], [1, 2, 3, 4])

    def test_on_retry(self) -> None:
        """on_retry hears of each reconnection: the failure (None for a clean end) and the delay."""
        calls = []
        self.watch(retry_delay=1.0, on_retry=lambda failure, delay: calls.append((failure, delay)))
        self.server.refuse()
        self.clock.advance(1)
        stream = self.server.open()
        stream.send(frame(1, "p/a"))
        stream.finish()
        self.assertEqual([(f if f is None else f.type, d) for f, d in calls],
                         [(ConnectionRefusedError, 1.0), (None, 0.0)])

    def test_close_while_open(self) -> None:
        """close() drops the connection, ends the iteration and leaves no timer."""
        watch = self.watch()
        stream = self.server.open()
        closed = watch.close()
        self.assertTrue(stream.transport.lost)
        self.successResultOf(closed)
        self.successResultOf(self.done)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.server.requests), 1)

    def test_close_while_connecting(self) -> None:
        """close() cancels a request still waiting for its answer; when_open fails."""
        watch = self.watch()
        opened = watch.when_open()
        self.successResultOf(watch.close())
        self.assertEqual(self.server.cancelled, 1)
        self.failureResultOf(opened, CancelledError)
        self.successResultOf(self.done)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_during_backoff(self) -> None:
        """close() during a backoff delay cancels it: no request follows."""
        watch = self.watch(retry_delay=1.0)
        self.server.refuse()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.successResultOf(watch.close())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        self.assertEqual(len(self.server.requests), 1)
        self.successResultOf(self.done)

    def test_async_with_closes(self) -> None:
        """Leaving an async with block closes the watch."""
        watch = client.watch(self.server, URL, clock=self.clock)
        stream = self.server.open()

        async def run():
            async with watch as events:
                stream.send(frame(1, "a"))
                async for event in events:
                    return event

        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(run())).key, "a")
        self.assertTrue(stream.transport.lost)

    def test_one_consumer(self) -> None:
        """A second consumer waiting at the same time is a RuntimeError."""
        watch = self.watch()
        second = Deferred.fromCoroutine(watch.__anext__())
        self.failureResultOf(second, RuntimeError)

    def test_bad_arguments(self) -> None:
        """Bad arguments raise at once and send nothing."""
        http = NoNetwork(self)
        for kwargs, exception in (
            ({"prefix": 3}, TypeError),
            ({"after": -1}, ValueError),
            ({"after": "5"}, TypeError),
            ({"after": True}, TypeError),
            ({"max_retries": -1}, ValueError),
            ({"retry_delay": float("nan")}, ValueError),
            ({"max_delay": 0}, ValueError),
            ({"idle_timeout": 0}, ValueError),
            ({"max_buffer": 0}, ValueError),
            ({"token": "a b"}, ValueError),
        ):
            self.assertRaises(exception, client.watch, http, URL, clock=self.clock, **kwargs)

    def test_event_as_item(self) -> None:
        """as_item() puts revision, kind and key first, then the rest of the data."""
        event = WatchEvent(3, "put", "k", {"key": "k", "revision": 3, "size": 1})
        self.assertEqual(list(event.as_item().items()),
                         [("revision", 3), ("kind", "put"), ("key", "k"), ("size", 1)])


class WatchMemoryTests(WatchTestMixin, SynchronousTestCase):
    """watch() against the whole Resource tree in memory: the server's real feed."""

    def setUp(self) -> None:
        self.store = MemoryStore()
        self.root = memory_root(self.store, limits=Limits(watch_history=20))
        self.tap = Tap(self.root)
        self.stub = StubTreq(self.tap)
        # Connections fail on demand, to hold the watch in its backoff.
        self.refuse = 0
        self.clock = Clock()
        self.events: list = []

    def request(self, method, url, **kwargs):
        if self.refuse:
            self.refuse -= 1
            return fail(ConnectionRefusedError("Connection refused"))
        return self.stub.request(method, url, **kwargs)

    @property
    def hub(self):
        return self.root.root.children[b"v1"].context.hub

    def watch(self, prefix: str = "", **kwargs):
        watch = client.watch(self, URL, prefix, clock=self.clock, random=lambda: 1.0,
                             retry_delay=1.0, **kwargs)
        self.stub.flush()
        self.done = self.consume(watch, self.events)
        self.addCleanup(self.close, watch)
        return watch

    def close(self, watch) -> None:
        d = watch.close()
        self.stub.flush()
        self.successResultOf(d)

    def put(self, key: str, value: bytes = b"v") -> None:
        d = client.put(self.stub, URL, key, value)
        self.stub.flush()
        self.successResultOf(d)

    def test_live_events(self) -> None:
        """Commits under the prefix arrive in order; a batch's events together; values with values=True."""
        self.put("p/old")
        watch = self.watch("p/", values=True)
        self.assertEqual(self.successResultOf(watch.when_open()), 1)
        self.put("p/a", b"1")
        self.put("q/x")
        d = client.batch(self.stub, URL, [{"op": "set", "key": "p/b", "value": {"j": 1}},
                                          {"op": "delete", "key": "p/a"}])
        self.stub.flush()
        self.successResultOf(d)
        self.assertEqual(keys_of(self.events), [(2, "put", "p/a"), (4, "put", "p/b"), (4, "delete", "p/a")])
        self.assertEqual(self.events[0].data["value_base64"], "MQ==")
        self.assertEqual(self.events[1].data["value"], {"j": 1})

    def test_after_replays_history(self) -> None:
        """after=REV replays the history after REV, then goes live."""
        for key in ("a", "b", "c"):
            self.put(key)
        self.watch(after=1)
        self.put("d")
        self.assertEqual([e.key for e in self.events], ["b", "c", "d"])

    def test_resume_after_server_side_drop(self) -> None:
        """
        Commits made while the connection is down are replayed on resume:
        every event once, none missing.
        """
        watch = self.watch()
        for i in range(3):
            self.put("k%d" % i)
        self.refuse = 1  # the first reconnection fails: a backoff gap
        self.tap.cut()
        self.stub.flush()
        for i in range(3, 6):
            self.put("k%d" % i)
        self.assertEqual(len(self.events), 3)
        self.clock.advance(1)
        self.stub.flush()
        self.put("k6")
        self.assertEqual([e.key for e in self.events], ["k%d" % i for i in range(7)])
        self.assertEqual([e.revision for e in self.events], list(range(1, 8)))
        self.assertEqual(watch.reconnects, 2)
        # Commit 3's only event said no more of it follows: resumed from 3 itself.
        self.assertEqual(self.tap.streams()[-1].getHeader(b"last-event-id"), b"3")

    def test_heartbeat_proves_commits_whole(self) -> None:
        """After a server heartbeat (a progress event), a resume starts at the last revision itself."""
        self.watch()
        for key in ("a", "b", "c"):
            self.put(key)
        self.store.clock.advance(15)  # the server's heartbeat interval
        self.stub.flush()
        self.tap.cut()
        self.stub.flush()
        self.assertEqual(self.tap.streams()[-1].getHeader(b"last-event-id"), b"3")
        self.put("d")
        self.assertEqual([e.key for e in self.events], ["a", "b", "c", "d"])

    def test_resume_before_any_event(self) -> None:
        """A drop before any event resumes from the opening revision: nothing committed meanwhile is lost."""
        self.put("before")
        self.watch()
        self.tap.cut()
        self.stub.flush()
        # A stream that delivered nothing is retried after a backoff step.
        self.put("during")
        self.clock.advance(1)
        self.stub.flush()
        self.assertEqual(self.tap.streams()[-1].getHeader(b"last-event-id"), b"1")
        self.assertEqual(keys_of(self.events), [(2, "put", "during")])

    def disconnected_for(self, commits: int, compact_to: int = 0) -> None:
        """
        Watch, see one commit, then lose the connection for a backoff step
        while C{commits} more are made (and the history is compacted to
        C{compact_to}), then let the watch reconnect.
        """
        self.watch()
        self.put("first")
        self.refuse = 1
        self.tap.cut()
        self.stub.flush()
        for i in range(commits):
            self.put("k%d" % i)
        self.successResultOf(self.store.compact(compact_to, 100))
        self.clock.advance(1)
        self.stub.flush()

    def test_long_disconnection_is_replayed(self) -> None:
        """Disconnected for more commits than the feed keeps in memory: the store's history replays them."""
        self.disconnected_for(25)
        self.assertEqual([x.key for x in self.events], ["first"] + ["k%d" % i for i in range(25)])

    def test_history_gone_on_resume(self) -> None:
        """Disconnected past a compaction: HistoryGone, after the events seen."""
        self.disconnected_for(25, compact_to=6)
        e = self.failureResultOf(self.done, HistoryGone).value
        self.assertEqual(e.oldest_revision, 6)
        self.assertEqual([x.key for x in self.events], ["first"])

    def test_history_gone_at_start(self) -> None:
        """after=REV older than the compacted history: HistoryGone at once."""
        for i in range(25):
            self.put("k%d" % i)
        self.successResultOf(self.store.compact(5, 100))
        self.watch(after=0)
        self.assertEqual(self.failureResultOf(self.done, HistoryGone).value.oldest_revision, 5)

    def test_close_releases_the_server(self) -> None:
        """close() ends the server's subscription and watcher slot, and the iteration."""
        watch = self.watch()
        context = self.root.root.children[b"v1"].context
        self.assertEqual((self.hub.subscribers, context.watchers.active), (1, 1))
        self.close(watch)
        self.assertEqual((self.hub.subscribers, context.watchers.active), (0, 0))
        self.successResultOf(self.done)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class WaitForTests(V1TestCase):
    """wait_for(): one long-poll on a key."""

    def test_at_once_when_newer(self) -> None:
        """A key already past the index answers at once with its entry."""
        self.put("a", b"1")
        self.put("a", b"2")
        entry = self.result(client.wait_for(self.http, URL, "a", 1, wait=30))
        self.assertEqual((entry.value, entry.mod_revision), (b"2", 2))

    def test_wakes_on_commit(self) -> None:
        """A held long-poll fires with the new value when the key is written."""
        self.put("a", b"1")
        d = client.wait_for(self.http, URL, "a", 1, wait=30)
        self.http.flush()
        self.assertNoResult(d)
        self.put("b")
        self.assertNoResult(d)
        self.put("a", b"new")
        self.assertEqual(self.result(d).value, b"new")

    def test_unchanged_at_the_end_of_the_wait(self) -> None:
        """At the end of the wait the unchanged entry comes back (mod_revision not past index)."""
        self.put("a", b"1")
        d = client.wait_for(self.http, URL, "a", 1, wait=5)
        self.http.flush()
        self.clock.advance(6)
        self.assertEqual(self.result(d).mod_revision, 1)

    def test_absent_is_none(self) -> None:
        """A missing key at the end of the wait, or deleted after index, is None."""
        d = client.wait_for(self.http, URL, "nope", 0, wait=5)
        self.http.flush()
        self.clock.advance(6)
        self.assertIsNone(self.result(d))
        self.put("a")
        self.result(client.remove(self.http, URL, "a"))
        self.assertIsNone(self.result(client.wait_for(self.http, URL, "a", 1, wait=30)))

    def test_wire(self) -> None:
        """index and wait go in the query; a whole wait is sent without a fraction."""
        recorder = Recorder(200, b"v", b"text/plain")
        http = StubTreq(recorder)
        d = client.wait_for(http, URL, "a/b", 7, wait=2.0, token="t")
        self.successResultOf(d)
        client.wait_for(http, URL, "a", 0, wait=0.5)
        client.wait_for(http, URL, "a", 0)
        self.assertEqual([r[1] for r in recorder.requests], [
            b"/v1/kv/a%2Fb?index=7&wait=2", b"/v1/kv/a?index=0&wait=0.5", b"/v1/kv/a?index=0"])
        self.assertEqual(recorder.header(0, b"authorization"), b"Bearer t")

    def test_other_404_is_an_error(self) -> None:
        """A 404 that is not about the key (a wrong base URL) is a NotFoundError, not None."""
        http = StubTreq(Recorder(404, b'{"code": "not-found"}', b"application/problem+json"))
        self.failureResultOf(client.wait_for(http, URL, "a", 0), NotFoundError)

    def test_bad_arguments(self) -> None:
        """A bad index or wait raises at once."""
        http = NoNetwork(self)
        for args, kwargs, exception in (
            ((-1,), {}, ValueError),
            (("1",), {}, TypeError),
            ((True,), {}, TypeError),
            ((1,), {"wait": -1}, ValueError),
            ((1,), {"wait": float("inf")}, ValueError),
            ((1,), {"wait": "5"}, TypeError),
        ):
            self.assertRaises(exception, client.wait_for, http, URL, "a", *args, **kwargs)
        self.assertRaises(ValueError, client.wait_for, http, URL, "", 1)
