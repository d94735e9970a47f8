"""
The HTTP layer's limits in memory (docs/operations.md, "Limits and what
clients see"): L{KVSite} and L{KVChannel} driven byte by byte over a
C{StringTransport}, with time on a L{Clock}, in front of a real Resource
tree over a L{MemoryStore}.

What is pinned: the body cap (declared, streamed and chunk-declared, never
a C{100 Continue} past it), the whole-request deadline against slow-drip
clients (and that it covers only the request, not a long answer), the idle
timeout, the connection cap, answers instead of silent closes for
overlong, malformed and bare-LF heads (and bare-LF chunked bodies),
pipelining in order and its back-pressure, what a refused
client can still read, access-log formats and the request metrics the
site records. No port is bound and no real time passes.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from typing import List, Optional

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import combinedLogFormatter
from twisted.web.resource import Resource
from zope.interface import implementer

from kvtwist.limits import Limits
from kvtwist.metrics import Metrics
from kvtwist.testing import MemoryStore, memory_root
from kvtwist.web.http import REFUSED_LINGER, KVSite, _Refused, clf_log_formatter

LIMITS = Limits(
    max_body=100,
    request_timeout=10.0,
    idle_timeout=60.0,
    max_connections=3,
    max_header_bytes=1024,
    max_headers=20,
    max_batch_ops=2,
)

PEER = IPv4Address("TCP", "127.0.0.1", 40000)


@implementer(ITCPTransport)
class HalfClosingTransport(StringTransport):
    """
    A StringTransport that records half-closes and aborts, like TCP's (and
    says it is one: the site half-closes only transports that provide
    L{ITCPTransport}).
    """

    write_closed = False
    aborted = False
    no_delay = False
    keep_alive = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def getTcpNoDelay(self) -> bool:
        return self.no_delay

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled

    def getTcpKeepAlive(self) -> bool:
        return self.keep_alive

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.keep_alive = enabled

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


def statuses(output: bytes) -> List[int]:
    """The status codes of every response in C{output}, in order."""
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", output)]


def problem(output: bytes) -> dict:
    """The problem+json body of a single response."""
    head, _, body = output.partition(b"\r\n\r\n")
    assert b"application/problem+json" in head.lower(), head
    return json.loads(body)


class SiteTestCase(SynchronousTestCase):
    """A site over a fresh MemoryStore, on a Clock."""

    limits = LIMITS
    access_log = "off"

    def setUp(self):
        self.clock = Clock()
        self.store = MemoryStore(self.clock)
        self.metrics = Metrics(process=False)
        self.site = KVSite(
            memory_root(self.store, limits=self.limits),
            self.limits,
            metrics=self.metrics,
            access_log=self.access_log,
            access_log_file=getattr(self, "log_path", None),
            reactor=self.clock,
        )

    def connect(self, transport: Optional[StringTransport] = None):
        """A new connection: C{(channel, transport)}."""
        transport = transport if transport is not None else HalfClosingTransport(peerAddress=PEER)
        channel = self.site.buildProtocol(PEER)
        channel.makeConnection(transport)
        return channel, transport

    def exchange(self, data: bytes) -> bytes:
        """Send C{data} on a new connection, close it, and return what came back."""
        channel, transport = self.connect()
        channel.dataReceived(data)
        channel.connectionLost(Failure(ConnectionDone()))
        return transport.value()

    def rejected(self, limit: str) -> float:
        return self.metrics.registry.get_sample_value(
            "kvtwist_rejected_requests_total", {"limit": limit}
        )

    def assertStoreUntouched(self):
        """Nothing was committed, and the shared seed queue holds nothing."""
        self.assertEqual(self.store.revision, 0)
        self.assertEqual(statuses(self.exchange(b"POST /commit HTTP/1.1\r\nHost: x\r\n\r\n")), [204])
        self.assertEqual(self.store.revision, 0)


class BodyLimitTests(SiteTestCase):
    """max_body: 413 at once, whatever the framing."""

    def test_declared_over_cap_no_continue(self):
        """
        A Content-Length past the cap is a 413 naming the limit and the
        size right after the headers, with no 100 Continue even when the
        client asks for one; the connection is half-closed.
        """
        channel, transport = self.connect()
        channel.dataReceived(
            b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: 101\r\n\r\n"
        )
        output = transport.value()
        self.assertNotIn(b"100 Continue", output)
        self.assertEqual(statuses(output), [413])
        self.assertEqual(
            {k: v for k, v in problem(output).items() if k in ("code", "limit_name", "limit", "size")},
            {"code": "body-too-large", "limit_name": "max_body", "limit": 100, "size": 101},
        )
        self.assertTrue(transport.write_closed)
        self.assertEqual(self.rejected("max_body"), 1)
        self.assertStoreUntouched()

    def test_continue_under_cap(self):
        """Under the cap, Expect: 100-continue gets its 100 and the request is served."""
        channel, transport = self.connect()
        channel.dataReceived(
            b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        self.assertEqual(transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        channel.dataReceived(b"hello")
        self.assertEqual(statuses(transport.value()), [100, 201])
        self.assertEqual(self.store.revision, 1)

    def test_streamed_chunks_over_cap(self):
        """A chunked body is counted as it arrives: 413 once it passes the cap."""
        channel, transport = self.connect()
        channel.dataReceived(b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            channel.dataReceived(b"28\r\n" + b"x" * 40 + b"\r\n")
        self.assertEqual(statuses(transport.value()), [413])
        self.assertEqual(problem(transport.value())["limit_name"], "max_body")
        self.assertStoreUntouched()

    def test_declared_chunk_over_cap(self):
        """A chunk size past the cap is refused at once, before its bytes arrive."""
        output = self.exchange(
            b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffff\r\nab"
        )
        self.assertEqual(statuses(output), [413])
        self.assertEqual(problem(output)["size"], 0xFFFFFFFF + 0)
        self.assertStoreUntouched()

    def test_nothing_read_after_refusal(self):
        """Bytes after a refused request (a smuggled second request) are never parsed."""
        channel, transport = self.connect()
        channel.dataReceived(
            b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n"
            + b"PUT /v1/kv/b HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nb"
        )
        channel.dataReceived(b"PUT /v1/kv/c HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nc")
        self.assertEqual(statuses(transport.value()), [413])
        self.assertStoreUntouched()

    def test_refused_connection_is_aborted_after_linger(self):
        """A refused connection is half-closed at once and aborted REFUSED_LINGER seconds later."""
        channel, transport = self.connect()
        channel.dataReceived(b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n")
        self.assertTrue(transport.write_closed)
        self.assertFalse(transport.aborted)
        self.clock.advance(REFUSED_LINGER)
        self.assertTrue(transport.aborted)


class DeadlineTests(SiteTestCase):
    """request_timeout: a request must be whole 10 s after its first byte."""

    def drip(self, channel, data: bytes, interval: float = 1.0) -> None:
        """Send C{data} one byte per C{interval} seconds of the clock."""
        for byte in data:
            channel.dataReceived(bytes([byte]))
            self.clock.advance(interval)

    def test_slow_head_cut_at_deadline(self):
        """
        A head dripped one byte a second (which keeps resetting the idle
        timeout) gets a 408 naming the limit 10 s after its first byte.
        """
        channel, transport = self.connect()
        self.drip(channel, b"GET /v1/kv/a HTTP/1.1\r\n")
        output = transport.value()
        self.assertEqual(statuses(output), [408])
        body = problem(output)
        self.assertEqual(
            (body["code"], body["limit_name"], body["limit"]),
            ("request-timeout", "request_timeout", 10),
        )
        self.assertEqual(self.rejected("request_timeout"), 1)

    def test_nothing_before_deadline(self):
        """Up to the deadline a slow client is left alone."""
        channel, transport = self.connect()
        self.drip(channel, b"GET /v1/kv/a HT", interval=0.5)
        self.clock.advance(10.0 - 0.5 * 15 - 0.01)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.02)
        self.assertEqual(statuses(transport.value()), [408])

    def test_slow_body_cut_at_deadline(self):
        """A head sent at once and a body dripped slowly are cut at the same deadline."""
        channel, transport = self.connect()
        channel.dataReceived(b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n")
        self.drip(channel, b"y" * 20)
        self.assertEqual(statuses(transport.value()), [408])
        self.assertStoreUntouched()

    def test_each_request_gets_its_own_deadline(self):
        """On a kept-alive connection each request has the full deadline from its own first byte."""
        channel, transport = self.connect()
        request = b"GET /v1/kv/a HTTP/1.1\r\nHost: x\r\n\r\n"
        self.drip(channel, request, interval=0.25)
        self.clock.advance(30)
        self.drip(channel, request, interval=0.25)
        self.assertEqual(statuses(transport.value()), [404, 404])

    def test_deadline_counts_from_each_request_start(self):
        """
        A request that starts late in the deadline period of an earlier one
        still gets its full deadline from its own first byte, no more.
        """
        channel, transport = self.connect()
        channel.dataReceived(b"GET /v1/kv/a HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(9)
        channel.dataReceived(b"GET /v1/kv/a HTTP/1.1\r\n")
        self.clock.advance(9.9)
        self.assertEqual(statuses(transport.value()), [404])
        self.clock.advance(0.1)
        self.assertEqual(statuses(transport.value()), [404, 408])

    def test_one_timer_for_many_requests(self):
        """Many quick requests on one connection leave at most one deadline timer pending."""
        channel, transport = self.connect()
        for _ in range(50):
            channel.dataReceived(b"GET /v1/kv/a HTTP/1.1\r\nHost: x\r\n\r\n")
        deadlines = [call for call in self.clock.getDelayedCalls() if "_check_deadline" in repr(call.func)]
        self.assertEqual(len(deadlines), 1)
        self.clock.advance(10)
        self.assertEqual(statuses(transport.value()), [404] * 50)
        self.assertFalse(transport.disconnecting)

    def test_long_answer_not_cut(self):
        """The deadline ends when the request is whole: a 30 s long-poll is answered, not cut."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET /v1/kv/a?index=0&wait=30 HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(25)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(10)
        self.assertEqual(statuses(transport.value()), [404])

    def test_idle_connection_closed(self):
        """A connection that sends nothing is closed after idle_timeout."""
        channel, transport = self.connect()
        self.clock.advance(59)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)


class HeadLimitTests(SiteTestCase):
    """Heads that are too long, too many or malformed are answered, never silently closed."""

    def assertRefused(self, data: bytes, status: int, code: str, limit_name: Optional[str] = None):
        output = self.exchange(data)
        self.assertEqual(statuses(output), [status], output[:200])
        body = problem(output)
        self.assertEqual(body["code"], code)
        self.assertEqual(body.get("limit_name"), limit_name)
        self.assertStoreUntouched()
        return body

    def test_overlong_request_line(self):
        """A request line past max_header_bytes is a 414 naming the limit."""
        body = self.assertRefused(
            b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            414,
            "uri-too-long",
            "max_header_bytes",
        )
        self.assertEqual(body["limit"], 1024)

    def test_overlong_request_line_without_end(self):
        """A request line that never ends is refused once it passes the limit."""
        self.assertRefused(b"GET /" + b"a" * 1100, 414, "uri-too-long", "max_header_bytes")

    def test_overlong_headers(self):
        """Headers adding up past max_header_bytes are a 431."""
        self.assertRefused(
            b"GET /v1/kv/a HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 100) for i in range(12)) + b"\r\n",
            431,
            "headers-too-large",
            "max_header_bytes",
        )

    def test_too_many_headers(self):
        """More than max_headers header lines are a 431."""
        self.assertRefused(
            b"GET /v1/kv/a HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(21)) + b"\r\n",
            431,
            "too-many-headers",
            "max_headers",
        )

    def test_bare_lf_head(self):
        """A head with bare LF line endings is a 400 at once, not a wait for the deadline."""
        self.assertRefused(b"GET /v1/kv/a HTTP/1.1\nHost: x\n\n", 400, "bad-request")

    def test_bare_lf_chunked_body(self):
        """A chunked body framed with bare LFs is a 400 at once, not a wait for the deadline."""
        self.assertRefused(
            b"PUT /v1/kv/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\na\n0\n\n",
            400,
            "bad-request",
        )

    def test_bare_cr(self):
        """A bare CR inside a head line is a 400."""
        self.assertRefused(b"GET /v1/kv/a HTTP/1.1\r\nHost: x\rX: y\r\n\r\n", 400, "bad-request")

    def test_obsolete_folding(self):
        """A folded header line is a 400 (RFC 9112 5.2), not joined silently."""
        self.assertRefused(b"GET /v1/kv/a HTTP/1.1\r\nX: a\r\n b\r\n\r\n", 400, "bad-request")

    def test_transfer_encoding_other_than_chunked(self):
        """Transfer-Encoding identity (which Twisted ignores) or gzip is a 400."""
        for value in (b"identity", b"gzip", b"gzip, chunked"):
            self.assertRefused(
                b"PUT /v1/kv/a HTTP/1.1\r\nTransfer-Encoding: " + value + b"\r\n\r\n0\r\n\r\n",
                400,
                "bad-request",
            )

    def test_conflicting_lengths(self):
        """Two Content-Lengths, or Content-Length with chunked, are a problem+json 400."""
        self.assertRefused(
            b"PUT /v1/kv/a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            400,
            "bad-request",
        )
        self.assertRefused(
            b"PUT /v1/kv/a HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "bad-request",
        )
        self.assertEqual(
            self.metrics.registry.get_sample_value("kvtwist_malformed_requests_total"), 2
        )

    def test_pipelined_in_order(self):
        """Requests pipelined in one packet are answered in order."""
        output = self.exchange(
            b"PUT /v1/kv/a HTTP/1.1\r\nContent-Length: 1\r\n\r\n1"
            b"GET /v1/kv/a HTTP/1.1\r\n\r\n"
            b"GET /v1/kv/missing HTTP/1.1\r\n\r\n"
            b"DELETE /v1/kv/a HTTP/1.1\r\n\r\n"
        )
        self.assertEqual(statuses(output), [201, 200, 404, 204])


class PushingBackTransport(HalfClosingTransport):
    """A transport whose write buffer is full after every write while C{full} is set."""

    full = True

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.full and self.producer is not None:
            self.producer.pauseProducing()


class PipeliningBackPressureTests(SiteTestCase):
    """A connection's pipelined requests wait while its answers are not sent."""

    def test_further_requests_wait_for_the_transport(self):
        """
        Once a request is answered while the transport pushes back, the
        requests pipelined behind it are neither parsed nor read until the
        transport has flushed; then they are answered in order.
        """
        channel, transport = self.connect(PushingBackTransport(peerAddress=PEER))
        channel.dataReceived(
            b"GET /v1/kv/a HTTP/1.1\r\n\r\n"
            b"PUT /v1/kv/a HTTP/1.1\r\nContent-Length: 1\r\n\r\n1"
            b"GET /v1/kv/a HTTP/1.1\r\n\r\n"
        )
        self.assertEqual(statuses(transport.value()), [404])
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(self.store.revision, 0)
        transport.full = False
        channel.resumeProducing()
        self.assertEqual(statuses(transport.value()), [404, 201, 200])
        self.assertEqual(transport.producerState, "producing")

    def test_held_requests_get_a_fresh_deadline(self):
        """
        A held, unfinished request is not cut while it is held, however
        long; its deadline starts when it is released.
        """
        channel, transport = self.connect(PushingBackTransport(peerAddress=PEER))
        channel.dataReceived(b"GET /v1/kv/a HTTP/1.1\r\n\r\nGET /v1/kv/b HTTP/1.1\r\n")
        self.clock.advance(self.limits.request_timeout * 2)
        self.assertEqual(statuses(transport.value()), [404])
        transport.full = False
        channel.resumeProducing()
        self.clock.advance(self.limits.request_timeout - 1)
        self.assertEqual(statuses(transport.value()), [404])
        self.clock.advance(1)
        self.assertEqual(statuses(transport.value()), [404, 408])


class QueryArgsTests(SynchronousTestCase):
    """C{request.args} is the query string, whatever the body is."""

    def args_seen(self, head: bytes, body: bytes) -> dict:
        """The C{request.args} a resource sees for a POST of C{body}."""
        seen = {}

        class Recorder(Resource):
            isLeaf = True

            def render_POST(self, request):
                seen.update(request.args)
                return b"ok"

        site = KVSite(Recorder(), LIMITS, reactor=Clock())
        channel = site.buildProtocol(PEER)
        transport = StringTransport(peerAddress=PEER)
        channel.makeConnection(transport)
        channel.dataReceived(head + b"Content-Length: %d\r\n\r\n" % (len(body),) + body)
        self.assertEqual(statuses(transport.value()), [200])
        return seen

    def test_form_body_is_not_parsed_into_args(self):
        """
        A POST with an HTML-form body (urlencoded or multipart) leaves
        C{request.args} to the query string: no route takes a form, and a
        body's fields never pose as query parameters.
        """
        urlencoded = self.args_seen(
            b"POST /x?ttl=5 HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n",
            b"ttl=0&wait=1",
        )
        self.assertEqual(urlencoded, {b"ttl": [b"5"]})
        multipart = self.args_seen(
            b"POST /x HTTP/1.1\r\nContent-Type: multipart/form-data; boundary=b\r\n",
            b'--b\r\nContent-Disposition: form-data; name="wait"\r\n\r\n1\r\n--b--\r\n',
        )
        self.assertEqual(multipart, {})


class ConnectionCapTests(SiteTestCase):
    """max_connections over every listener."""

    def test_cap(self):
        """
        Beyond the cap a connection is aborted as soon as it is made and
        counted; when one closes, a new one is accepted again.
        """
        channels = [self.connect()[0] for _ in range(3)]
        self.assertEqual(self.site.open_connections, 3)
        refused = self.site.buildProtocol(PEER)
        self.assertIsInstance(refused, _Refused)
        transport = HalfClosingTransport()
        refused.makeConnection(transport)
        self.assertTrue(transport.aborted)
        self.assertEqual(self.rejected("max_connections"), 1)
        channels[0].connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.site.open_connections, 2)
        channel, transport = self.connect()
        channel.dataReceived(b"GET /healthz-less HTTP/1.1\r\n\r\n")
        self.assertEqual(statuses(transport.value()), [404])

    def test_closed_twice_counted_once(self):
        """A connection is uncounted once, however its loss is reported."""
        channel, _ = self.connect()
        channel.connectionLost(Failure(ConnectionDone()))
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.site.open_connections, 0)


class MetricsTests(SiteTestCase):
    """What the site records per request."""

    def sample(self, name, **labels):
        return self.metrics.registry.get_sample_value(name, labels)

    def test_requests_by_route_method_status(self):
        """Answered requests are counted by route template, method and status, with a latency."""
        self.exchange(b"PUT /v1/kv/a HTTP/1.1\r\nContent-Length: 1\r\n\r\n1")
        self.exchange(b"PUT /v1/kv/b HTTP/1.1\r\nContent-Length: 1\r\n\r\n1")
        self.exchange(b"BREW /v1/kv/b HTTP/1.1\r\n\r\n")
        self.assertEqual(
            self.sample("kvtwist_http_requests_total", route="/v1/kv/{key}", method="PUT", status="201"),
            2,
        )
        self.assertEqual(
            self.sample("kvtwist_http_requests_total", route="/v1/kv/{key}", method="other", status="405"),
            1,
        )
        self.assertEqual(
            self.sample("kvtwist_http_request_duration_seconds_count", route="/v1/kv/{key}"), 3
        )

    def test_application_limit_counted(self):
        """A 413 the application answers is counted under the limit its problem names."""
        body = json.dumps({"ops": [{"op": "get", "key": k} for k in "abc"]}).encode()
        output = self.exchange(
            b"POST /v1/batch HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        self.assertEqual(statuses(output), [413])
        self.assertEqual(self.rejected("max_batch_ops"), 1)


class AccessLogTests(SiteTestCase):
    """--access-log clf | json | off."""

    def logged(self, access_log: str) -> str:
        self.log_path = os.path.join(self.mktemp() + "-access.log")
        self.access_log = access_log
        self.setUp()
        self.site.startFactory()
        self.exchange(b"PUT /v1/kv/a HTTP/1.1\r\nUser-Agent: probe/1\r\nContent-Length: 2\r\n\r\nhi")
        self.site.stopFactory()
        if not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, encoding="utf-8") as f:
            return f.read()

    def test_clf(self):
        """clf writes one Combined Log Format line per request."""
        line = self.logged("clf")
        self.assertRegex(
            line, r'^"127\.0\.0\.1" - - \[.+\] "PUT /v1/kv/a HTTP/1\.1" 201 \d+ "-" "probe/1"\n$'
        )

    def test_json(self):
        """json writes one JSON object per request, with route, status and duration."""
        document = json.loads(self.logged("json"))
        self.assertEqual(
            {k: document[k] for k in ("remote", "method", "path", "status", "route", "user_agent", "token")},
            {
                "remote": "127.0.0.1",
                "method": "PUT",
                "path": "/v1/kv/a",
                "status": 201,
                "route": "/v1/kv/{key}",
                "user_agent": "probe/1",
                "token": "anyone",
            },
        )
        self.assertEqual(document["duration"], 0.0)

    def test_off(self):
        """off writes nothing."""
        self.assertEqual(self.logged("off"), "")

    def test_bad_format(self):
        """Only off, clf and json are formats."""
        self.assertRaises(ValueError, KVSite, memory_root(), access_log="loud")

    def test_clf_is_twisted_combined_log_format(self):
        """
        kvtwist's cheaper clf formatter writes exactly twisted.web's
        combinedLogFormatter line, for plain fields and for every kind of
        field that needs escaping (quotes, backslashes, control bytes,
        non-ASCII), over IPv4, IPv6 and UNIX peers.
        """
        fields = [
            b"plain", b'quo"te', b"sin'gle", b"both'\"", b"back\\slash",
            b"\x00ctl\x1b", b"caf\xc3\xa9", b"\xff", b"tab\there", b"", b"'", b'"',
        ]
        peers = [PEER, IPv6Address("TCP", "::1", 1), UNIXAddress(b"/run/kv.sock")]
        for field, peer in itertools.product(fields, peers):
            for request in (
                FormattedRequest(peer, field or b"GET", b"/p" + field, b"HTTP/1.1", 200, len(field), field, field),
                FormattedRequest(peer, b"GET", field, field, 404, 0, None, None),
            ):
                self.assertEqual(
                    clf_log_formatter("[28/Nov/2026:04:00:00 +0000]", request),
                    combinedLogFormatter("[28/Nov/2026:04:00:00 +0000]", request),
                )


class FormattedRequest:
    """What an access-log formatter reads of a request."""

    def __init__(self, peer, method, uri, protocol, code, length, referer, agent):
        self._peer = peer
        self.method = method
        self.uri = uri
        self.clientproto = protocol
        self.code = code
        self.sentLength = length
        self._headers = {b"referer": referer or None, b"user-agent": agent or None}

    def getClientAddress(self):
        return self._peer

    def getHeader(self, name):
        return self._headers.get(name)
