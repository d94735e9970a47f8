"""
What the client tests share: the base URL, awkward keys, treq-like clients
that record, refuse, interfere or fail (L{Recorder}, L{NoNetwork},
L{Refused}, L{Interloper}, L{FailAfter}), the whole tree in memory
(L{V1TestCase}) and a root that can cut a stream (L{Tap}). The CLI tests
use them too.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from kvtwist import client
from kvtwist.limits import Limits
from kvtwist.testing import MemoryStore, memory_root
from kvtwist.transactions import TransactionManager


URL = "http://kv.test"


#: Keys that must survive the trip as one path segment.
AWKWARD_KEYS = [
    "a/b",
    "a/b/",
    "/lead",
    "with space",
    "caf\u00e9 \u2603 \U0001f600",
    "100%",
    "q?x=1#frag",
    "a%2Fb",
    "plus+sign",
    ".",
    "..",
    "set",
    "commit",
]


class Recorder(Resource):
    """
    A leaf resource that records every request and answers with one canned
    response.

    @ivar requests: C{(method, uri, headers, body)} per request.
    """

    isLeaf = True

    def __init__(
        self, status: int = 200, body: bytes = b"{}", content_type: bytes = b"application/json"
    ) -> None:
        super().__init__()
        self.status = status
        self.body = body
        self.content_type = content_type
        self.requests: List[Tuple[bytes, bytes, object, bytes]] = []

    def render(self, request: Request) -> bytes:
        self.requests.append(
            (request.method, request.uri, request.requestHeaders, request.content.read())
        )
        request.setResponseCode(self.status)
        request.setHeader(b"content-type", self.content_type)
        return self.body

    def header(self, index: int, name: bytes) -> Optional[bytes]:
        """One header of the C{index}th request, or L{None}."""
        values = self.requests[index][2].getRawHeaders(name)  # type: ignore[attr-defined]
        return values[0] if values else None


class NoNetwork:
    """A treq-like client that must not be used."""

    def __init__(self, test: SynchronousTestCase) -> None:
        self._test = test

    def request(self, *args, **kwargs):
        self._test.fail("a request was sent: %r %r" % (args, kwargs))


class Refused:
    """A treq-like client whose every connection is refused."""

    def request(self, *args, **kwargs):
        return fail(ConnectionRefusedError("Connection refused"))


class Interloper:
    """
    A treq-like client that forwards to C{http}, but first calls C{before}
    when it sees the first request whose URL ends with C{trigger}: another
    client's write landing between two requests of a transaction.

    @ivar requests: C{(method, url)} of every request forwarded.
    """

    def __init__(self, http, trigger: str, before) -> None:
        self._http = http
        self._trigger = trigger
        self._before = before
        self.requests: List[Tuple[str, str]] = []

    def request(self, method, url, **kwargs):
        if self._before is not None and url.endswith(self._trigger):
            before, self._before = self._before, None
            before()
        self.requests.append((method, url))
        return self._http.request(method, url, **kwargs)


class FailAfter:
    """
    A treq-like client that forwards the first C{count} requests to C{http};
    later ones fail with C{exception}, or never answer if it is L{None}.

    @ivar requests: C{(method, url)} of every request, forwarded or not.
    @ivar cancelled: how many unanswered requests were cancelled.
    """

    def __init__(self, http, count: int, exception: Optional[Exception] = None) -> None:
        self._http = http
        self._count = count
        self._exception = exception
        self.requests: List[Tuple[str, str]] = []
        self.cancelled = 0

    def request(self, method, url, **kwargs):
        self.requests.append((method, url))
        if len(self.requests) <= self._count:
            return self._http.request(method, url, **kwargs)
        if self._exception is not None:
            return fail(self._exception)

        def cancel(d) -> None:
            self.cancelled += 1

        return Deferred(cancel)


class StubTreqTestCase(SynchronousTestCase):
    """Client calls through C{self.http}, a StubTreq, settled at once."""

    http: StubTreq

    def result(self, d):
        """What C{d} fires with once the stub has answered every request."""
        self.http.flush()
        return self.successResultOf(d)

    def error(self, d, *types):
        """The exception C{d} fails with (one of C{types}) once answered."""
        self.http.flush()
        return self.failureResultOf(d, *types).value


class V1TestCase(StubTreqTestCase):
    """The whole tree in memory, with its transactions and clock at hand."""

    def setUp(self) -> None:
        self.store = MemoryStore()
        self.clock = self.store.clock
        self.transactions = TransactionManager(self.clock, Limits(), self.store)
        self.http = StubTreq(memory_root(self.store, transactions=self.transactions))

    def put(self, key: str, value: bytes = b"v", **kwargs):
        return self.result(client.put(self.http, URL, key, value, **kwargs))

    def run_coroutine(self, coroutine):
        d = Deferred.fromCoroutine(coroutine)
        self.http.flush()
        return d


class Tap(Resource):
    """
    Wraps a root resource and keeps every request, so that a test can cut
    a stream's connection from the server's side.
    """

    def __init__(self, root: Resource) -> None:
        super().__init__()
        self.root = root
        self.requests: List[Request] = []

    def getChildWithDefault(self, name: bytes, request: Request):
        self.requests.append(request)
        return self.root.getChildWithDefault(name, request)

    def render(self, request: Request):
        return self.root.render(request)

    def streams(self) -> List[Request]:
        """The event-stream requests, oldest first."""
        return [r for r in self.requests if r.uri.startswith(b"/v1/watch")]

    def cut(self) -> None:
        """Drop the latest stream's connection, as a crash or a proxy would."""
        self.streams()[-1].channel.transport.loseConnection()
