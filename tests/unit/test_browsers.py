"""
The browser checks in memory (L{kvtwist.web.browsers}): the C{Origin} rule
and CORS through C{StubTreq} (a loopback connection, with the headers a
browser sends), and the C{Host} rules through L{KVSite} over a
C{StringTransport}, which lets a test choose the address a connection
arrived on and send heads no HTTP client would (no Host, two Hosts).
"""

from __future__ import annotations

import json
from typing import Optional, Tuple

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.auth import Authorizer, Token
from kvtwist.limits import Limits
from kvtwist.testing import MemoryStore, memory_root
from kvtwist.web.browsers import BrowserPolicy
from kvtwist.web.http import KVSite
from tests.helpers.webtest import TreeClient

SERVER = "http://127.0.0.1:8080"
EVIL = "http://evil.example"
APP = "https://app.example"

#: What a hostile page can make a browser send: each route, with a body
#: a form or a no-cors fetch can carry.
ROUTES = [
    ("POST", "/v1/batch", b'{"ops": [{"op": "set", "key": "a", "value": 1}]}', "text/plain"),
    ("POST", "/set", b"a=1", "application/x-www-form-urlencoded"),
    ("POST", "/commit", None, None),
    ("PUT", "/v1/kv/a", b"1", "text/plain"),
    ("DELETE", "/v1/kv/a", None, None),
    ("DELETE", "/a", None, None),
    ("POST", "/v1/txn", None, None),
    ("GET", "/v1/kv/a", None, None),
    ("GET", "/a", None, None),
    ("GET", "/v1/kv/", None, None),
    ("OPTIONS", "/v1/kv/a", None, None),
]


class BrowserCase(SynchronousTestCase):
    """A tree over a MemoryStore behind the browser checks, reached as 127.0.0.1:8080."""

    policy = BrowserPolicy()
    authorizer: Optional[Authorizer] = None

    def setUp(self):
        self.store = MemoryStore()
        self.client = TreeClient(
            self,
            memory_root(self.store, browsers=self.policy, authorizer=self.authorizer),
            base=SERVER,
        )

    def send(self, method: str, path: str, origin: Optional[str] = None, body=None,
             content_type: Optional[str] = None, **headers: str):
        """One request, from a page of C{origin} when given."""
        sent = {name.replace("_", "-"): value for name, value in headers.items()}
        if origin is not None:
            sent["Origin"] = origin
        if content_type is not None:
            sent["Content-Type"] = content_type
        return self.client.request(method, path, body=body, headers=sent)

    def assertNothingChanged(self):
        """No commit happened, and the seed's queue is empty."""
        self.assertEqual(self.store.revision, 0)
        self.assertEqual(self.send("POST", "/commit").status, 204)
        self.assertEqual(self.store.revision, 0)


class OriginTests(BrowserCase):
    """With no origin invited, only requests without Origin, or from the server's own, run."""

    def test_foreign_origin_refused_on_every_route(self):
        """
        A page of another origin gets 403 origin-not-allowed on every route,
        writes and reads alike, and nothing changes.
        """
        for method, path, body, content_type in ROUTES:
            answer = self.send(method, path, EVIL, body, content_type)
            self.assertEqual(answer.status, 403, (method, path, answer.body))
            self.assertEqual(answer.json["code"], "origin-not-allowed")
            self.assertEqual(answer.content_type, "application/problem+json")
            self.assertIsNone(answer.header("access-control-allow-origin"))
        self.assertNothingChanged()

    def test_no_origin_runs(self):
        """Clients that are not browsers send no Origin and are served as ever."""
        self.assertEqual(self.send("PUT", "/v1/kv/a", body=b"1").status, 201)
        answer = self.send("GET", "/a")
        self.assertEqual((answer.status, answer.body), (200, b"1"))
        self.assertIsNone(answer.header("vary"))

    def test_own_origin_runs(self):
        """
        The server's own origin (scheme://Host, as the admin page's calls
        send it) is allowed, under each loopback name.
        """
        self.assertEqual(self.send("PUT", "/v1/kv/a", SERVER, b"1").status, 201)
        for host in ("localhost:8080", "[::1]:8080"):
            answer = self.send("PUT", "/v1/kv/a", "http://" + host, b"2", Host=host)
            self.assertEqual(answer.status, 200, (host, answer.body))

    def test_near_origins_refused(self):
        """Another port, another scheme, 'null', or two Origin headers are not the server's own."""
        for origin in ("http://127.0.0.1:9999", "https://127.0.0.1:8080", "null", "http://127.0.0.1"):
            answer = self.send("PUT", "/v1/kv/a", origin, b"1")
            self.assertEqual(answer.status, 403, origin)
        answer = self.client.request(
            "PUT", "/v1/kv/a", body=b"1", headers={"Origin": SERVER + ", " + SERVER}
        )
        self.assertEqual(answer.status, 403)
        self.assertNothingChanged()

    def test_refused_before_authentication(self):
        """A foreign page gets 403 even where a token would be needed: nothing else runs first."""
        root = memory_root(
            self.store,
            browsers=self.policy,
            authorizer=Authorizer([Token("t", "t-secret-t-secret", read=("",), write=("",))]),
        )
        client = TreeClient(self, root, base=SERVER)
        answer = client.request("POST", "/set", body=b"a=1", headers={"Origin": EVIL})
        self.assertEqual(answer.json["code"], "origin-not-allowed")
        answer = client.request("GET", "/v1/kv/a", headers={"Origin": SERVER})
        self.assertEqual(answer.status, 401)


class CORSTests(BrowserCase):
    """An invited origin gets CORS: preflights answered, headers exposed."""

    policy = BrowserPolicy.of(cors_origins=[APP])

    def test_preflight(self):
        """
        OPTIONS with Access-Control-Request-Method from an invited origin is
        204 with the origin, the methods and headers the API takes, a
        max-age and Vary: Origin; it runs nothing.
        """
        answer = self.send(
            "OPTIONS", "/v1/kv/a", APP,
            Access_Control_Request_Method="PUT",
            Access_Control_Request_Headers="content-type, if-match, authorization",
        )
        self.assertEqual(answer.status, 204)
        self.assertEqual(answer.header("access-control-allow-origin"), APP)
        self.assertEqual(answer.header("vary"), "Origin")
        methods = answer.header("access-control-allow-methods")
        for method in ("GET", "PUT", "POST", "DELETE"):
            self.assertIn(method, methods)
        allowed = answer.header("access-control-allow-headers").lower()
        for header in ("content-type", "if-match", "if-none-match", "authorization", "last-event-id"):
            self.assertIn(header, allowed)
        self.assertEqual(answer.header("access-control-max-age"), "600")
        self.assertEqual(answer.body, b"")
        self.assertNothingChanged()

    def test_actual_requests_carry_cors_headers(self):
        """Answers to an invited origin, errors included, name it and expose the API's headers."""
        answer = self.send("PUT", "/v1/kv/a", APP, b"1")
        self.assertEqual(answer.status, 201)
        self.assertEqual(answer.header("access-control-allow-origin"), APP)
        exposed = answer.header("access-control-expose-headers")
        for header in ("ETag", "KV-Revision", "KV-Expires", "Location"):
            self.assertIn(header, exposed)
        self.assertEqual(answer.header("vary"), "Origin")
        answer = self.send("GET", "/v1/kv/missing", APP)
        self.assertEqual(answer.status, 404)
        self.assertEqual(answer.header("access-control-allow-origin"), APP)

    def test_cached_read_carries_cors_headers(self):
        """The cached-read fast path writes the CORS headers too."""
        self.send("PUT", "/v1/kv/a", body=b"1")
        for path in ("/a", "/v1/kv/a"):
            answer = self.send("GET", path, APP)
            self.assertEqual(answer.status, 200)
            self.assertEqual(answer.header("access-control-allow-origin"), APP)

    def test_other_origins_still_refused(self):
        """An origin not invited is still 403, preflight included, with no CORS headers."""
        for method in ("PUT", "OPTIONS"):
            answer = self.send(method, "/v1/kv/a", EVIL, b"1", Access_Control_Request_Method="PUT")
            self.assertEqual(answer.status, 403)
            self.assertIsNone(answer.header("access-control-allow-origin"))
        self.assertNothingChanged()

    def test_without_origin_vary_only(self):
        """With CORS on, an answer without Origin says it varies by Origin and names none."""
        answer = self.send("GET", "/v1/kv/missing")
        self.assertEqual(answer.header("vary"), "Origin")
        self.assertIsNone(answer.header("access-control-allow-origin"))

    def test_options_without_preflight_header_is_routed(self):
        """An OPTIONS that is not a preflight goes to the route, which answers 405."""
        self.assertEqual(self.send("OPTIONS", "/v1/kv/a", APP).status, 405)


class AnyOriginTests(BrowserCase):
    """C{--cors-origin '*'} invites every origin."""

    policy = BrowserPolicy.of(cors_origins=["*"])

    def test_any_origin(self):
        """Any page may call; each is named back in Access-Control-Allow-Origin."""
        answer = self.send("PUT", "/v1/kv/a", EVIL, b"1")
        self.assertEqual(answer.status, 201)
        self.assertEqual(answer.header("access-control-allow-origin"), EVIL)


LOOPBACK = IPv4Address("TCP", "127.0.0.1", 8080)
LOOPBACK6 = IPv6Address("TCP", "::1", 8080)
LAN = IPv4Address("TCP", "10.0.0.5", 8080)
SOCKET = UNIXAddress(b"/run/kvcache.sock")


class HostTests(SynchronousTestCase):
    """The Host header, over a KVSite connection arriving on a chosen address."""

    def exchange(self, head: bytes, local=LOOPBACK, policy: BrowserPolicy = BrowserPolicy()
                 ) -> Tuple[int, dict]:
        """Send C{head} (a request without body) and return the status and the body as JSON (or {})."""
        site = KVSite(
            memory_root(MemoryStore(), browsers=policy), Limits(), access_log="off", reactor=Clock()
        )
        transport = StringTransport(hostAddress=local, peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        channel = site.buildProtocol(transport.getPeer())
        channel.makeConnection(transport)
        channel.dataReceived(head)
        channel.connectionLost(Failure(ConnectionDone()))
        status_line, _, rest = transport.value().partition(b"\r\n")
        body = rest.partition(b"\r\n\r\n")[2]
        return int(status_line.split()[1]), json.loads(body) if body.startswith(b"{") else {}

    def get(self, host: Optional[bytes], **kw) -> Tuple[int, dict]:
        head = b"GET /v1/kv/a HTTP/1.1\r\n"
        if host is not None:
            head += b"Host: " + host + b"\r\n"
        return self.exchange(head + b"\r\n", **kw)

    def test_loopback_names_answered(self):
        """On loopback, localhost, *.localhost and IP addresses, with or without a port, are served."""
        for host in (b"localhost", b"localhost:8080", b"LocalHost:8080", b"app.localhost:8080",
                     b"127.0.0.1", b"127.0.0.1:8080", b"127.0.0.2:8080", b"[::1]:8080", b"[::1]"):
            for local in (LOOPBACK, LOOPBACK6):
                self.assertEqual(self.get(host, local=local)[0], 404, host)

    def test_other_names_refused_on_loopback(self):
        """On loopback, any other name (DNS rebinding) is 421 host-not-allowed."""
        for host in (b"evil.example:8080", b"evil.example", b"localhost.evil.example", b"127.0.0.1.nip.io"):
            for local in (LOOPBACK, LOOPBACK6, IPv6Address("TCP", "::ffff:127.0.0.1", 8080)):
                status, problem = self.get(host, local=local)
                self.assertEqual(status, 421, (host, local))
                self.assertEqual(problem["code"], "host-not-allowed")

    def test_allowed_host(self):
        """--allowed-host adds a name (any port) or a host:port (that port only)."""
        policy = BrowserPolicy.of(allowed_hosts=["kv.example", "other.example:81"])
        self.assertEqual(self.get(b"kv.example:8080", policy=policy)[0], 404)
        self.assertEqual(self.get(b"KV.example", policy=policy)[0], 404)
        self.assertEqual(self.get(b"other.example:81", policy=policy)[0], 404)
        self.assertEqual(self.get(b"other.example:82", policy=policy)[0], 421)
        self.assertEqual(self.get(b"evil.example", policy=policy)[0], 421)

    def test_beyond_loopback(self):
        """
        On other addresses (and UNIX sockets) any name is served, until
        --allowed-host is given: then only those, loopback names and IP
        addresses.
        """
        for local in (LAN, SOCKET):
            self.assertEqual(self.get(b"kv.example", local=local)[0], 404)
            policy = BrowserPolicy.of(allowed_hosts=["kv.example"])
            self.assertEqual(self.get(b"kv.example", local=local, policy=policy)[0], 404)
            self.assertEqual(self.get(b"10.0.0.5:8080", local=local, policy=policy)[0], 404)
            self.assertEqual(self.get(b"evil.example", local=local, policy=policy)[0], 421)

    def test_missing_or_repeated_host(self):
        """HTTP/1.1 without Host, or with two, or with a malformed one, is 400 bad-host."""
        for head in (
            b"GET /v1/kv/a HTTP/1.1\r\n\r\n",
            b"GET /v1/kv/a HTTP/1.1\r\nHost: localhost\r\nHost: localhost\r\n\r\n",
            b"GET /v1/kv/a HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n",
            b"GET /v1/kv/a HTTP/1.1\r\nHost: \r\n\r\n",
            b"GET /v1/kv/a HTTP/1.1\r\nHost: a b\r\n\r\n",
            b"GET /v1/kv/a HTTP/1.1\r\nHost: a/b\r\n\r\n",
            b"GET /v1/kv/a HTTP/1.1\r\nHost: [nope]:80\r\n\r\n",
        ):
            status, problem = self.exchange(head)
            self.assertEqual(status, 400, head)
            self.assertEqual(problem["code"], "bad-host")

    def test_http10_without_host(self):
        """HTTP/1.0 has no Host requirement: a request without one is served."""
        self.assertEqual(self.exchange(b"GET /v1/kv/a HTTP/1.0\r\n\r\n")[0], 404)
