"""
The GET hot path (L{kvtwist.web.encoded}): a read of a cached key is
answered with headers encoded once per cached entry, and that answer is the
ordinary one on the wire (headers, HEAD, keep-alive, access log, metrics),
never stale after a commit, and never given to a token that may not read.
"""

import re

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.internet.error import ConnectionDone
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from kvtwist.auth import Authorizer, Token
from kvtwist.metrics import Metrics
from kvtwist.model import Put
from kvtwist.store.cache import CachedStore
from kvtwist.testing import MemoryStore, memory_root
from kvtwist.web.http import KVSite
from tests.helpers.capability_fakes import DeclaredReadCache, UndeclaredExtras
from tests.helpers.webtest import TreeClient

PEER = IPv4Address("TCP", "127.0.0.1", 40000)
JSON = "application/json"


def cached_store(clock=None):
    """A MemoryStore behind the read cache, as kvcache runs it."""
    return CachedStore(MemoryStore(clock), 1 << 20)


class ReadCacheCapabilityTests(SynchronousTestCase):
    """The GET fast path asks the store's cache only if the store declares IReadCache."""

    def read_every_way(self, store) -> None:
        """Commit C{a} into C{store}, then read it by v1 GET, seed GET and conditional GET."""
        self.successResultOf(store.commit([Put("a", b"1")]))
        client = TreeClient(self, memory_root(store))
        self.assertEqual(client.request("GET", "/v1/kv/a").body, b"1")
        self.assertEqual(client.request("GET", "/a").body, b"1")
        conditional = client.request("GET", "/v1/kv/a", headers={"If-None-Match": '"99"'})
        self.assertEqual(conditional.body, b"1")

    def test_undeclared_cache_is_not_asked(self):
        """A store with peek and peek_encoded that does not declare IReadCache is read the ordinary way on every GET path."""
        store = UndeclaredExtras()
        self.read_every_way(store)
        self.assertEqual(store.peeks, [])

    def test_declared_cache_is_asked(self):
        """A store declaring IReadCache is asked first on every GET path (conditional ones too); its miss falls back to the ordinary read."""
        store = DeclaredReadCache()
        self.read_every_way(store)
        self.assertEqual(store.peeks, ["a", "a", "a"])


def head_and_body(output: bytes):
    """The status line, the header lines (without Date) as a set, and the body."""
    head, _, body = output.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    return status, {line for line in lines if not line.startswith(b"Date: ")}, body


class FreshnessTests(SynchronousTestCase):
    """An encoded answer lives and dies with its cached entry."""

    def setUp(self):
        self.store = cached_store()
        self.client = TreeClient(self, memory_root(self.store))

    def commit(self, *ops):
        self.successResultOf(self.store.commit(list(ops)))

    def test_seed_answer_rebuilt_after_commit(self):
        """After a commit, GET /{key} has the new body, ETag and length: nothing stale."""
        self.commit(Put("a", b"1", JSON))
        for _ in range(2):  # the second read is answered from the encoded entry
            answer = self.client.request("GET", "/a")
            self.assertEqual((answer.body, answer.header("etag")), (b"1", '"1"'))
        self.commit(Put("a", b'{"longer": true}', JSON))
        answer = self.client.request("GET", "/a")
        # (treq drops Content-Length; WireTests check it on the wire.)
        self.assertEqual(
            (answer.status, answer.body, answer.header("etag")), (200, b'{"longer": true}', '"2"')
        )
        self.assertEqual(answer.content_type, JSON)

    def test_v1_revision_is_current(self):
        """
        GET /v1/kv/{key} carries the store's KV-Revision of the moment, even
        while the key's own encoded headers stay cached; its own headers
        change when it does.
        """
        self.commit(Put("a", b"x", "text/plain"))
        self.assertEqual(self.client.request("GET", "/v1/kv/a").header("kv-revision"), "1")
        self.commit(Put("b", b"y"))
        answer = self.client.request("GET", "/v1/kv/a")
        self.assertEqual(
            [answer.header(h) for h in ("kv-revision", "etag", "kv-version", "content-type")],
            ["2", '"1"', "1", "text/plain"],
        )
        self.commit(Put("a", b"xyz", "text/plain"))
        answer = self.client.request("GET", "/v1/kv/a")
        self.assertEqual(
            [answer.header(h) for h in ("kv-revision", "etag", "kv-version", "kv-create-revision")],
            ["3", '"3"', "2", "1"],
        )
        self.assertEqual(answer.body, b"xyz")

    def test_both_routes_in_turn(self):
        """A key read on the seed route and on v1 in turn gets each route's own headers."""
        self.commit(Put("a", b"1", JSON))
        for _ in range(2):
            seed = self.client.request("GET", "/a")
            v1 = self.client.request("GET", "/v1/kv/a")
            self.assertEqual((seed.body, seed.header("etag"), seed.header("kv-version")), (b"1", '"1"', None))
            self.assertEqual((v1.body, v1.header("etag"), v1.header("kv-version")), (b"1", '"1"', "1"))

    def test_v1_conditional_on_cached_key(self):
        """If-None-Match on a cached key still answers 304 with the entry's headers."""
        self.commit(Put("a", b"x"))
        self.client.request("GET", "/v1/kv/a")
        answer = self.client.request("GET", "/v1/kv/a", headers={"If-None-Match": '"1"'})
        self.assertEqual((answer.status, answer.body, answer.header("etag")), (304, b"", '"1"'))
        answer = self.client.request("GET", "/v1/kv/a", headers={"If-None-Match": '"7"'})
        self.assertEqual((answer.status, answer.body), (200, b"x"))

    def test_expired_cached_key_is_absent(self):
        """A cached key past its expiry is a 404 on both routes, not its encoded answer."""
        clock = Clock()
        clock.advance(1000)
        self.store = cached_store(clock)
        self.client = TreeClient(self, memory_root(self.store))
        self.commit(Put("t", b"1", JSON, expires=1010.0))
        self.assertEqual(self.client.request("GET", "/t").status, 200)
        self.assertEqual(self.client.request("GET", "/v1/kv/t").status, 200)
        clock.advance(10)
        self.client.problem("GET", "/t", 404, "key-not-found")
        self.client.problem("GET", "/v1/kv/t", 404, "key-not-found")

    def test_forbidden_even_when_cached(self):
        """A token that may not read a key gets 403, however hot the key is."""
        reader = Token("reader", "r-secret", read=("app/",))
        client = TreeClient(self, memory_root(self.store, authorizer=Authorizer([reader])))
        self.commit(Put("app/a", b"1", JSON), Put("secret", b"2", JSON))
        auth = {"Authorization": "Bearer r-secret"}
        for path in ("/app%2Fa", "/v1/kv/app/a"):
            self.assertEqual(client.request("GET", path, headers=auth).body, b"1")
        for path in ("/secret", "/v1/kv/secret"):
            self.assertEqual(client.request("GET", path, headers=auth).status, 403)
        self.assertEqual(client.request("GET", "/app%2Fa").status, 401)

    def test_cookie_takes_the_ordinary_path(self):
        """
        A request twisted.web would alter on its first write (here, with a
        cookie) is answered the ordinary way, whole.
        """
        root = memory_root(self.store)

        class Cookies(Resource):
            def getChildWithDefault(self, path, request):
                request.addCookie(b"c", b"1")
                return root.getChildWithDefault(path, request)

        client = TreeClient(self, Cookies())
        self.commit(Put("a", b"1", JSON))
        client.request("GET", "/a")
        answer = client.request("GET", "/a")
        self.assertEqual(
            (answer.status, answer.body, answer.header("etag"), answer.header("set-cookie")),
            (200, b"1", '"1"', "c=1"),
        )


class WireTests(SynchronousTestCase):
    """The encoded answer, byte for byte, through kvcache's own site."""

    def setUp(self):
        self.clock = Clock()
        self.metrics = Metrics(process=False)
        self.store = cached_store(self.clock)
        self.successResultOf(self.store.commit([Put("a", b'{"n": 1}', JSON, expires=1e9)]))

    def site(self, store, **kwargs):
        return KVSite(memory_root(store), metrics=self.metrics, reactor=self.clock, **kwargs)

    def exchange(self, site, data: bytes):
        """Send C{data} on a new connection and return (output, transport)."""
        transport = StringTransport(peerAddress=PEER)
        channel = site.buildProtocol(PEER)
        channel.makeConnection(transport)
        channel.dataReceived(data)
        output = transport.value()
        channel.connectionLost(Failure(ConnectionDone()))
        return output, transport

    def test_same_answer_as_the_ordinary_path(self):
        """
        A cached read writes the status line, headers and body the ordinary
        path writes for the same entry (an uncached store), on both routes.
        """
        uncached = MemoryStore(self.clock)
        self.successResultOf(uncached.commit([Put("a", b'{"n": 1}', JSON, expires=1e9)]))
        for request in (b"GET /a HTTP/1.1\r\n\r\n", b"GET /v1/kv/a HTTP/1.1\r\n\r\n"):
            ordinary, _ = self.exchange(self.site(uncached, access_log="off"), request)
            site = self.site(self.store, access_log="off")
            self.exchange(site, request)
            encoded, _ = self.exchange(site, request)
            self.assertEqual(head_and_body(encoded), head_and_body(ordinary))
            if b"/v1/" in request:
                self.assertIn(b"\r\nKv-Expires: 2001-09-09T01:46:40.000Z\r\n", encoded)

    def test_length_rebuilt_after_commit(self):
        """After a commit, the cached key's answer has the new length and ETag on the wire."""
        site = self.site(self.store, access_log="off")
        for _ in range(2):
            self.exchange(site, b"GET /a HTTP/1.1\r\n\r\n")
        self.successResultOf(self.store.commit([Put("a", b"[1, 2, 3, 4]", JSON)]))
        _, lines, body = head_and_body(self.exchange(site, b"GET /a HTTP/1.1\r\n\r\n")[0])
        self.assertEqual(body, b"[1, 2, 3, 4]")
        self.assertLessEqual({b"Content-Length: 12", b'ETag: "2"'}, lines)

    def test_head(self):
        """HEAD on a cached key: the GET's headers, Content-Length included, and no body."""
        site = self.site(self.store, access_log="off")
        get, _ = self.exchange(site, b"GET /a HTTP/1.1\r\n\r\n")
        head, _ = self.exchange(site, b"HEAD /a HTTP/1.1\r\n\r\n")
        status, lines, body = head_and_body(head)
        self.assertEqual((status, lines, body), head_and_body(get)[:2] + (b"",))
        self.assertIn(b"Content-Length: 8", lines)

    def test_keep_alive_and_close(self):
        """
        Pipelined reads on one connection each get their answer; a client
        asking to close gets Connection: close and the connection closes;
        an HTTP/1.0 client gets an HTTP/1.0 status line.
        """
        site = self.site(self.store, access_log="off")
        output, transport = self.exchange(site, b"GET /a HTTP/1.1\r\n\r\n" * 3)
        self.assertEqual(re.findall(rb"HTTP/1\.1 (\d+) ", output), [b"200"] * 3)
        self.assertEqual(output.count(b'{"n": 1}'), 3)
        self.assertFalse(transport.disconnecting)
        output, transport = self.exchange(site, b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n")
        self.assertIn(b"\r\nConnection: close\r\n", output)
        self.assertTrue(transport.disconnecting)
        output, _ = self.exchange(site, b"GET /a HTTP/1.0\r\n\r\n")
        self.assertTrue(output.startswith(b"HTTP/1.0 200 OK\r\n"), output)

    def test_access_log_and_metrics(self):
        """An encoded answer is logged and counted like any other: status, bytes, route."""
        path = self.mktemp()
        site = self.site(self.store, access_log="clf", access_log_file=path)
        site.startFactory()
        for _ in range(2):
            self.exchange(site, b"GET /a HTTP/1.1\r\nUser-Agent: probe/1\r\n\r\n")
        self.exchange(site, b"HEAD /v1/kv/a HTTP/1.1\r\n\r\n")
        site.stopFactory()
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        self.assertEqual(len(lines), 3)
        self.assertRegex(lines[1], r'"GET /a HTTP/1\.1" 200 8 "-" "probe/1"$')
        self.assertRegex(lines[2], r'"HEAD /v1/kv/a HTTP/1\.1" 200 - ')
        sample = self.metrics.registry.get_sample_value
        self.assertEqual(
            sample("kvtwist_http_requests_total", {"route": "/{key}", "method": "GET", "status": "200"}),
            2,
        )
        self.assertEqual(
            sample("kvtwist_http_requests_total", {"route": "/v1/kv/{key}", "method": "HEAD", "status": "200"}),
            1,
        )
