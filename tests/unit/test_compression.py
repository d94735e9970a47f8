# -*- test-case-name: tests.unit.test_compression -*-
"""
gzip (L{kvtwist.web.compression}) in memory through the whole tree: answers
over 1 KiB are compressed for clients that ask, with an exact
Content-Length and the same strong ETag; small answers, 304s, HEAD and
event streams stay as they were. One end-to-end test checks the bytes on
a real socket.
"""

from __future__ import annotations

import gzip
import http.client

from treq.testing import RequestTraversalAgent
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import readBody
from twisted.web.http_headers import Headers

from kvtwist.model import Put
from kvtwist.store.cache import CachedStore
from kvtwist.testing import MemoryStore, memory_root
from tests.helpers.e2e import HOST, start_server
from tests.helpers.webtest import Answer

BIG = b'{"text": "%s"}' % (b"kvtwist " * 300,)
SMALL = b'{"text": "short"}'
GZIP = {"Accept-Encoding": "gzip, deflate"}


class GzipTests(SynchronousTestCase):
    """Which answers are compressed, and what their headers say."""

    def setUp(self):
        self.clock = Clock()
        self.store = CachedStore(MemoryStore(self.clock), 1 << 20)
        # A plain Agent, not treq: treq undoes gzip before a test could see it.
        self.agent = RequestTraversalAgent(memory_root(self.store))
        self.store.commit([Put("big", BIG, "application/json"), Put("small", SMALL, "application/json")])

    def get(self, path, method="GET", **headers):
        raw = Headers({k.encode("latin-1"): [v.encode("latin-1")] for k, v in headers.items()})
        d = self.agent.request(method.encode("ascii"), b"http://kv.test" + path.encode("utf-8"), raw)
        self.agent.flush()
        response = self.successResultOf(d)
        body = readBody(response)
        self.agent.flush()
        # Twisted's client keeps Content-Length out of the headers: it is
        # the response's length.
        self.length = response.length
        return Answer(response.code, response.headers, self.successResultOf(body))

    def test_large_answers_compressed(self):
        """A value over 1 KiB is gzipped when asked: Content-Encoding, Vary, exact Content-Length, same ETag."""
        for path in ("/v1/kv/big", "/big"):
            plain = self.get(path)
            for _ in range(2):  # the second read is a cache hit
                answer = self.get(path, **GZIP)
                self.assertEqual(answer.status, 200)
                self.assertEqual(answer.header("content-encoding"), "gzip", path)
                self.assertEqual(answer.header("vary"), "Accept-Encoding")
                self.assertEqual(self.length, len(answer.body))
                self.assertLess(len(answer.body), len(BIG) // 4)
                self.assertEqual(gzip.decompress(answer.body), BIG)
                self.assertEqual(answer.header("etag"), plain.header("etag"))
            self.assertIsNone(plain.header("content-encoding"))
            # The answer could have been compressed: caches must know.
            self.assertEqual(plain.header("vary"), "Accept-Encoding")
            self.assertEqual(plain.body, BIG)

    def test_small_answers_untouched(self):
        """An answer of at most 1 KiB goes as it is, also to a client that asks for gzip."""
        answer = self.get("/v1/kv/small", **GZIP)
        self.assertEqual((answer.body, answer.header("content-encoding")), (SMALL, None))
        self.assertEqual(self.length, len(SMALL))
        self.assertIsNone(self.get("/v1/kv/missing", **GZIP).header("content-encoding"))

    def test_listing_and_problems(self):
        """Any large answer is compressed: a listing with values."""
        answer = self.get("/v1/kv/?values=1", **GZIP)
        self.assertEqual(answer.header("content-encoding"), "gzip")
        self.assertIn(b'"key": "big"', gzip.decompress(answer.body))

    def test_head_and_not_modified(self):
        """HEAD gets GET's headers and no body; a 304 has no body and no encoding."""
        get = self.get("/v1/kv/big", **GZIP)
        head = self.get("/v1/kv/big", "HEAD", **GZIP)
        self.assertEqual(head.body, b"")
        for name in ("content-encoding", "etag", "vary"):
            self.assertEqual(head.header(name), get.header(name), name)
        unchanged = self.get("/v1/kv/big", **dict(GZIP, **{"If-None-Match": get.header("etag")}))
        self.assertEqual((unchanged.status, unchanged.body), (304, b""))
        self.assertIsNone(unchanged.header("content-encoding"))

    def test_event_stream_never_compressed(self):
        """The event stream is sent as written, whatever the client accepts."""
        d = self.agent.request(b"GET", b"http://kv.test/v1/watch?values=1",
                               Headers({b"accept-encoding": [b"gzip"]}))
        self.agent.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        self.assertIsNone(response.headers.getRawHeaders(b"content-encoding"))


class GzipOnTheWireTests(SynchronousTestCase):
    """The real server, over a socket."""

    def test_compressed_on_the_wire(self):
        """Over real HTTP/1.1, a large value comes gzipped with its exact Content-Length, and keep-alive goes on."""
        server = start_server(self)
        connection = http.client.HTTPConnection(HOST, server.port, timeout=10)
        self.addCleanup(connection.close)
        connection.request("PUT", "/v1/kv/big", BIG, {"Content-Type": "application/json"})
        self.assertEqual(connection.getresponse().read()[:1], b"{")
        for _ in range(2):
            connection.request("GET", "/v1/kv/big", headers=GZIP)
            response = connection.getresponse()
            body = response.read()
            self.assertEqual(response.getheader("content-encoding"), "gzip")
            self.assertEqual(int(response.getheader("content-length")), len(body))
            self.assertIsNone(response.getheader("transfer-encoding"))
            self.assertEqual(gzip.decompress(body), BIG)
