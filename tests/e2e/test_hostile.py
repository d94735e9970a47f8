"""
Hostile clients against the real C{twistd kvcache}: raw
bytes on loopback sockets, each case asserting the exact answer (or that
the connection is closed where that is the right answer) and that nothing
changed in the store.

The server runs once for the module with small limits, so the cases are
quick: C{--max-body 1000}, C{--request-timeout 2}, C{--idle-timeout 3},
C{--max-connections 48}; the header limit keeps its default (16384 bytes,
Twisted's own).

"Nothing changed" is checked after every case the same way: the shared
seed queue is committed (C{POST /commit}), and the store's revision must
be what it was before the case, with the seeded keys intact. A case whose
bytes had staged or committed anything would move the revision.

The last test measures a normal client's GET latency undisturbed and then
while slow-drip clients, an idle-connection flood, a stream of malformed
requests and oversized bodies run against the same server, prints both
p99 figures, and checks only a generous sanity bound.

One module though long: every case runs against the one server the module
starts, with the same check that nothing changed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import time
from typing import Callable, List, Tuple

from twisted.trial.unittest import SynchronousTestCase

from benchmarks.stats import percentile
from tests.helpers.e2e import HOST, KEEP_ENV, ServerProcess, connect, http_request

MAX_BODY = 1000
REQUEST_TIMEOUT = 2.0
IDLE_TIMEOUT = 3.0
MAX_CONNECTIONS = 48
#: Socket timeout for reading an answer; a hung server fails the case.
READ_TIMEOUT = 10.0

H = b"Host: 127.0.0.1\r\n"


def read_all(sock: socket.socket, limit: int = 1 << 20) -> Tuple[bytes, bool]:
    """
    Read until the server closes (or C{READ_TIMEOUT}); returns the bytes
    and whether the connection was closed by the server.
    """
    received = b""
    try:
        while len(received) < limit:
            data = sock.recv(65536)
            if not data:
                return received, True
            received += data
    except ConnectionResetError:
        return received, True
    except socket.timeout:
        return received, False
    return received, False


def exchange(data: bytes) -> Tuple[bytes, bool]:
    """Send C{data} on a new connection; return what came back and whether it was closed."""
    with socket.create_connection((HOST, HostileTests.server.port), timeout=READ_TIMEOUT) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_all(sock)


def responses(data: bytes) -> List[Tuple[int, bytes]]:
    """
    The responses in C{data}, in order, as C{(status, body)}: framed by
    Content-Length (none for 1xx, 204 and 304; the rest of the stream
    without one).
    """
    found = []
    for _ in range(1000):
        if not data:
            break
        head, separator, rest = data.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0]
        if not separator or not status_line.startswith(b"HTTP/1.1 "):
            raise AssertionError("not an HTTP response: %r" % (data[:200],))
        status = int(status_line[9:12])
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if status < 200 or status in (204, 304):
            length = 0
        if length is None:
            length = len(rest)
        found.append((status, rest[:length]))
        data = rest[length:]
    return found


def status_codes(response: bytes) -> List[int]:
    """Every status code in C{response}, in order."""
    return [status for status, _ in responses(response)]


def problem_of(response: bytes) -> dict:
    """The problem+json body of a single answer."""
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"application/problem+json" in head.lower(), head[:300]
    return json.loads(body)


def problem_of_body(body: bytes) -> dict:
    """A problem+json body, parsed."""
    return json.loads(body)


def refusal(data: bytes, status: int, code: str, doc: str) -> Callable:
    """A test method: C{data} is answered C{status} with problem C{code}, closed, nothing changed."""

    def test(self):
        self.check_refusal(data, status, code)

    test.__doc__ = doc
    return test


class HostileTests(SynchronousTestCase):
    """Malformed, oversized, slow and piled-up clients; one server for all."""

    server: ServerProcess

    @classmethod
    def setUpClass(cls):
        cls.base = tempfile.mkdtemp(prefix="kvtwist-hostile-")
        cls.server = ServerProcess(
            os.path.join(cls.base, "data"),
            [
                "--max-body", str(MAX_BODY),
                "--request-timeout", str(REQUEST_TIMEOUT),
                "--idle-timeout", str(IDLE_TIMEOUT),
                "--max-connections", str(MAX_CONNECTIONS),
                "--access-log", "off",
            ],
            log_dir=cls.base,
        )
        try:
            cls.server.start()
            url = cls.server.url
            for key, value in (("a", b"1"), ("b", b"2")):
                assert http_request(url, "PUT", "/v1/kv/" + key, value)[0] == 201
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        if not os.environ.get(KEEP_ENV):
            shutil.rmtree(cls.base, True)

    # -- helpers -------------------------------------------------------------

    def revision(self) -> int:
        """The store's revision (from any v1 answer's KV-Revision)."""
        status, headers, _ = http_request(self.server.url, "GET", "/v1/limits")
        self.assertEqual(status, 200)
        return int(headers["kv-revision"])

    def setUp(self):
        self.assertTrue(self.server.running, self.server.log_text()[-2000:])
        self.before = self.revision()

    def assertUnchanged(self):
        """Nothing was staged or committed by the case, and the server is sane."""
        url = self.server.url
        self.assertEqual(http_request(url, "POST", "/commit")[0], 204)
        self.assertEqual(self.revision(), self.before)
        self.assertEqual(http_request(url, "GET", "/v1/kv/a")[2], b"1")
        self.assertEqual(http_request(url, "GET", "/v1/kv/smuggled")[0], 404)
        self.assertNotIn("Traceback", self.server.log_text())

    def check_refusal(self, data: bytes, status: int, code: str) -> bytes:
        """C{data} gets exactly one answer, C{status} with problem C{code}; then the server closes."""
        response, closed = exchange(data)
        self.assertEqual(status_codes(response), [status], response[:300])
        self.assertEqual(problem_of(response)["code"], code)
        self.assertTrue(closed, "the connection was left open after a refusal")
        self.assertUnchanged()
        return response

    # -- smuggling shapes ------------------------------------------------------

    test_conflicting_content_length = refusal(
        b"POST /set HTTP/1.1\r\n" + H + b"Content-Length: 12\r\nContent-Length: 13\r\n\r\n"
        b'{"smuggled":1}',
        400, "bad-request",
        "Two different Content-Length headers are a 400.",
    )
    test_repeated_content_length = refusal(
        b"POST /set HTTP/1.1\r\n" + H + b"Content-Length: 14\r\nContent-Length: 14\r\n\r\n"
        b'{"smuggled":1}',
        400, "bad-request",
        "Two equal Content-Length headers are a 400 too (no guessing which one counts).",
    )
    test_content_length_with_chunked = refusal(
        b"POST /set HTTP/1.1\r\n" + H + b"Content-Length: 14\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'e\r\n{"smuggled":1}\r\n0\r\n\r\n',
        400, "bad-request",
        "Content-Length together with chunked is a 400.",
    )
    test_chunked_with_content_length = refusal(
        b"POST /set HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 14\r\n\r\n"
        b'e\r\n{"smuggled":1}\r\n0\r\n\r\n',
        400, "bad-request",
        "chunked followed by Content-Length is a 400 as well.",
    )
    test_cl_te_smuggling = refusal(
        b"POST /set HTTP/1.1\r\n" + H + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nPUT /v1/kv/smuggled HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
        400, "bad-request",
        "The classic CL.TE smuggle is a 400 and the hidden request never runs.",
    )
    test_transfer_encoding_twice = refusal(
        b"POST /set HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n",
        400, "bad-request",
        "Two Transfer-Encoding headers are a 400.",
    )
    test_transfer_encoding_gzip_chunked = refusal(
        b"POST /set HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        400, "bad-request",
        "A transfer coding other than plain chunked is a 400.",
    )
    test_transfer_encoding_identity = refusal(
        b'POST /set HTTP/1.1\r\n' + H + b'Transfer-Encoding: identity\r\n\r\n{"smuggled":1}',
        400, "bad-request",
        "Transfer-Encoding identity (obsolete; Twisted would read no body) is a 400.",
    )
    test_content_length_not_a_number = refusal(
        b"POST /set HTTP/1.1\r\n" + H + b"Content-Length: twelve\r\n\r\n",
        400, "bad-request",
        "A Content-Length that is not digits is a 400.",
    )
    test_content_length_negative = refusal(
        b"POST /set HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n",
        400, "bad-request",
        "A negative Content-Length is a 400.",
    )
    test_content_length_plus_sign = refusal(
        b"POST /set HTTP/1.1\r\n" + H + b'Content-Length: +14\r\n\r\n{"smuggled":1}',
        400, "bad-request",
        "A Content-Length with a sign is a 400 (int() would accept it).",
    )
    test_content_length_hex = refusal(
        b"POST /set HTTP/1.1\r\n" + H + b'Content-Length: 0xe\r\n\r\n{"smuggled":1}',
        400, "bad-request",
        "A hexadecimal Content-Length is a 400.",
    )
    test_content_length_list = refusal(
        b"POST /set HTTP/1.1\r\n" + H + b'Content-Length: 14, 14\r\n\r\n{"smuggled":1}',
        400, "bad-request",
        "A Content-Length holding a list is a 400.",
    )
    test_bad_chunk_size = refusal(
        b"POST /set HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        400, "bad-request",
        "A chunk size that is not hexadecimal is a 400.",
    )
    test_negative_chunk_size = refusal(
        b"POST /set HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n-e\r\n"
        b'{"smuggled":1}\r\n0\r\n\r\n',
        400, "bad-request",
        "A negative chunk size is a 400.",
    )
    test_prefixed_chunk_size = refusal(
        b"POST /set HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0xe\r\n"
        b'{"smuggled":1}\r\n0\r\n\r\n',
        400, "bad-request",
        "A chunk size with a 0x prefix is a 400.",
    )
    test_chunk_longer_than_declared = refusal(
        b"POST /set HTTP/1.1\r\n" + H + b'Transfer-Encoding: chunked\r\n\r\n3\r\n{"smuggled":1}\r\n0\r\n\r\n',
        400, "bad-request",
        "Chunk data running past its declared size is a 400.",
    )
    test_chunk_size_line_too_long = refusal(
        b"POST /set HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\ne;" + b"x" * 5000
        + b'\r\n{"smuggled":1}\r\n0\r\n\r\n',
        400, "bad-request",
        "A chunk-size line with a 5000-byte extension is a 400.",
    )
    test_bare_lf_in_chunk_framing = refusal(
        b"POST /set HTTP/1.1\r\n" + H + b'Transfer-Encoding: chunked\r\n\r\ne\n{"smuggled":1}\r\n0\r\n\r\n',
        400, "bad-request",
        "A bare LF ending a chunk-size line is a 400.",
    )
    test_bare_lf_chunked_body = refusal(
        b"POST /set HTTP/1.1\r\n" + H + b'Transfer-Encoding: chunked\r\n\r\ne\n{"smuggled":1}\n0\n\n',
        400, "bad-request",
        "A chunked body framed with bare LFs throughout is a 400 at once, not a 408 at the deadline.",
    )
    test_bare_lf_chunked_trailer = refusal(
        b"POST /set HTTP/1.1\r\n" + H + b'Transfer-Encoding: chunked\r\n\r\ne\r\n{"smuggled":1}\r\n0\r\n\n',
        400, "bad-request",
        "A bare LF ending a chunked body's last line is a 400 at once, not a 408 at the deadline.",
    )

    # -- oversized bodies --------------------------------------------------------

    test_declared_body_over_cap = refusal(
        b"POST /set HTTP/1.1\r\n" + H + b"Content-Length: 1001\r\n\r\n",
        413, "body-too-large",
        "A declared body one byte over --max-body is a 413 before any of it is sent.",
    )
    test_declared_body_absurd = refusal(
        b"POST /set HTTP/1.1\r\n" + H + b"Content-Length: 100000000000000000000\r\n\r\n",
        413, "body-too-large",
        "A Content-Length of 10^20 is a 413 at once (Twisted alone would wait for it).",
    )
    test_declared_chunk_over_cap = refusal(
        b"PUT /v1/kv/smuggled HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nffffffffff\r\nxx",
        413, "body-too-large",
        "A single chunk declared larger than the cap is a 413 before its bytes arrive.",
    )
    test_oversized_get = refusal(
        b"GET /v1/kv/a HTTP/1.1\r\n" + H + b"Content-Length: 5000\r\n\r\n" + b"x" * 5000,
        413, "body-too-large",
        "The cap holds on every route, even a GET carrying a body.",
    )

    def test_streamed_body_over_cap(self):
        """A chunked body streamed past the cap is a 413 as soon as the received bytes pass it."""
        with socket.create_connection((HOST, self.server.port), timeout=READ_TIMEOUT) as sock:
            sock.sendall(b"PUT /v1/kv/smuggled HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n")
            sent = 0
            try:
                for _ in range(100):
                    sock.sendall(b"64\r\n" + b"x" * 100 + b"\r\n")
                    sent += 100
                    if sent > MAX_BODY + 500:
                        break
            except (BrokenPipeError, ConnectionResetError):
                pass
            response, closed = read_all(sock)
        self.assertEqual(status_codes(response), [413])
        self.assertGreater(problem_of(response)["size"], MAX_BODY)
        self.assertTrue(closed)
        self.assertUnchanged()

    def test_expect_continue_over_cap(self):
        """Expect: 100-continue with a body over the cap gets a 413 and never a 100 Continue."""
        response = self.check_refusal(
            b"PUT /v1/kv/smuggled HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\nContent-Length: 5000\r\n\r\n",
            413,
            "body-too-large",
        )
        self.assertNotIn(b"100 Continue", response)

    def test_expect_continue_under_cap(self):
        """Under the cap the 100 comes first, then the real answer (a failed precondition: nothing written)."""
        with socket.create_connection((HOST, self.server.port), timeout=READ_TIMEOUT) as sock:
            sock.sendall(
                b"PUT /v1/kv/a HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\nIf-None-Match: *\r\n"
                b"Connection: close\r\nContent-Length: 1\r\n\r\n"
            )
            interim = sock.recv(100)
            self.assertEqual(interim, b"HTTP/1.1 100 Continue\r\n\r\n")
            sock.sendall(b"9")
            response, _ = read_all(sock)
        self.assertEqual(status_codes(response), [412])
        self.assertUnchanged()

    # -- malformed heads ---------------------------------------------------------

    test_nul_in_header_value = refusal(
        b"GET /v1/kv/a HTTP/1.1\r\n" + H + b"X-Note: a\x00b\r\n\r\n",
        400, "bad-request",
        "A NUL in a header value is a 400.",
    )
    test_nul_in_header_name = refusal(
        b"GET /v1/kv/a HTTP/1.1\r\n" + H + b"X-No\x00te: ab\r\n\r\n",
        400, "bad-request",
        "A NUL in a header name is a 400.",
    )
    test_header_without_colon = refusal(
        b"GET /v1/kv/a HTTP/1.1\r\n" + H + b"JustSomeWords\r\n\r\n",
        400, "bad-request",
        "A header line without a colon is a 400.",
    )
    test_space_before_colon = refusal(
        b"GET /v1/kv/a HTTP/1.1\r\n" + H + b"Content-Length : 5\r\n\r\nhello",
        400, "bad-request",
        "Whitespace between a header name and its colon is a 400 (RFC 9112 5.1).",
    )
    test_bad_header_name = refusal(
        b"GET /v1/kv/a HTTP/1.1\r\n" + H + b"X(y): 1\r\n\r\n",
        400, "bad-request",
        "A header name with characters outside token is a 400.",
    )
    test_obsolete_line_folding = refusal(
        b"GET /v1/kv/a HTTP/1.1\r\n" + H + b"X-Note: a\r\n folded\r\n\r\n",
        400, "bad-request",
        "An obs-fold continuation line is a 400, not silently joined.",
    )
    test_overlong_request_line = refusal(
        b"GET /" + b"a" * 17000 + b" HTTP/1.1\r\n" + H + b"\r\n",
        414, "uri-too-long",
        "A 17,000-byte request line is answered 414 (Twisted alone closes without a word).",
    )
    test_endless_request_line = refusal(
        b"GET /" + b"a" * 20000,
        414, "uri-too-long",
        "A request line that never ends is a 414 once it passes the limit.",
    )
    test_overlong_header = refusal(
        b"GET /v1/kv/a HTTP/1.1\r\n" + H + b"X-Big: " + b"b" * 20000 + b"\r\n\r\n",
        431, "headers-too-large",
        "A 20,000-byte header is a 431.",
    )
    test_too_many_headers = refusal(
        b"GET /v1/kv/a HTTP/1.1\r\n" + H + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n",
        431, "too-many-headers",
        "150 header lines (over the default 100) are a 431.",
    )
    test_bare_lf_line_endings = refusal(
        b"GET /v1/kv/a HTTP/1.1\nHost: 127.0.0.1\n\n",
        400, "bad-request",
        "A request with bare-LF line endings throughout is a 400 at once, not a wait.",
    )
    test_bare_lf_in_one_header = refusal(
        b"GET /v1/kv/a HTTP/1.1\r\n" + H + b"X-A: 1\nX-B: 2\r\n\r\n",
        400, "bad-request",
        "A bare LF inside the head is a 400.",
    )
    test_bare_cr = refusal(
        b"GET /v1/kv/a HTTP/1.1\r\n" + H + b"X-A: 1\rX-B: 2\r\n\r\n",
        400, "bad-request",
        "A bare CR inside the head is a 400.",
    )
    test_http_2_request_line = refusal(
        b"GET /v1/kv/a HTTP/2.0\r\n" + H + b"\r\n",
        400, "bad-request",
        "HTTP/2.0 in an HTTP/1 request line is a 400.",
    )
    test_http_0_9 = refusal(
        b"GET /v1/kv/a\r\n\r\n",
        400, "bad-request",
        "An HTTP/0.9 request line is a 400.",
    )
    test_four_part_request_line = refusal(
        b"GET /v1/kv/a HTTP/1.1 extra\r\n" + H + b"\r\n",
        400, "bad-request",
        "A request line with four parts is a 400.",
    )
    test_control_character_in_target = refusal(
        b"GET /v1/kv/a\x01b HTTP/1.1\r\n" + H + b"\r\n",
        400, "bad-request",
        "A control character in the request target is a 400.",
    )

    # -- pipelining -------------------------------------------------------------

    def test_pipelined_answered_in_order(self):
        """Requests pipelined in one packet are answered in order, each with its own body."""
        response, closed = exchange(
            b"GET /v1/kv/a HTTP/1.1\r\n" + H + b"\r\n"
            b"GET /v1/kv/missing HTTP/1.1\r\n" + H + b"\r\n"
            b"GET /v1/kv/b HTTP/1.1\r\n" + H + b"\r\n"
            b"GET /v1/healthz HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"
        )
        answers = responses(response)
        self.assertEqual([status for status, _ in answers], [200, 404, 200, 200])
        self.assertEqual(answers[0][1], b"1")
        self.assertEqual(problem_of_body(answers[1][1])["code"], "key-not-found")
        self.assertEqual(answers[2][1], b"2")
        self.assertEqual(answers[3][1], b'{"status": "alive"}')
        self.assertTrue(closed)
        self.assertUnchanged()

    def test_nothing_after_a_refusal_runs(self):
        """A write pipelined behind a refused request is never parsed, let alone committed."""
        response, closed = exchange(
            b"POST /set HTTP/1.1\r\n" + H + b"Content-Length: 5000\r\n\r\n"
            b"PUT /v1/kv/smuggled HTTP/1.1\r\n" + H + b"Content-Length: 1\r\n\r\nx"
        )
        self.assertEqual(status_codes(response), [413])
        self.assertTrue(closed)
        self.assertUnchanged()

    # -- slow and idle clients -----------------------------------------------------

    def drip(self, head: bytes, body: bytes = b"", interval: float = 0.25) -> Tuple[bytes, float, int]:
        """
        Send C{head} at once and C{body}, or the head itself when there is no
        body, one byte per C{interval}; stop when the server answers or
        closes. Returns the answer, the seconds it took and the bytes sent.
        """
        started = time.monotonic()
        with socket.create_connection((HOST, self.server.port), timeout=READ_TIMEOUT) as sock:
            slow = body or head
            if body:
                sock.sendall(head)
            sock.settimeout(interval)
            sent = 0
            answer = b""
            for byte in slow:
                try:
                    sock.sendall(bytes([byte]))
                    sent += 1
                    answer = sock.recv(4096)
                    break
                except socket.timeout:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
            sock.settimeout(READ_TIMEOUT)
            rest, _ = read_all(sock)
        return answer + rest, time.monotonic() - started, sent

    def test_slow_drip_head_cut_at_deadline(self):
        """
        A head dripped one byte every 0.25 s (each byte would reset an idle
        timeout) gets a 408 at the 2 s deadline, long before it is complete.
        """
        head = b"GET /v1/kv/a HTTP/1.1\r\n" + H + b"X-Padding: " + b"p" * 200 + b"\r\n\r\n"
        response, seconds, sent = self.drip(head)
        self.assertEqual(status_codes(response), [408])
        self.assertEqual(problem_of(response)["limit_name"], "request_timeout")
        self.assertLess(sent, len(head))
        print("\nslow head: cut after %.2f s and %d of %d bytes" % (seconds, sent, len(head)))
        self.assertUnchanged()

    def test_slow_drip_body_cut_at_deadline(self):
        """A fast head with a body dripped one byte every 0.25 s gets a 408 at the deadline; nothing is staged."""
        body = json.dumps({"smuggled": "x" * 200}).encode()
        head = b"POST /set HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % (len(body),)
        response, seconds, sent = self.drip(head, body)
        self.assertEqual(status_codes(response), [408])
        self.assertLess(sent, len(body))
        self.assertUnchanged()

    def test_idle_connection_closed(self):
        """A connection that never sends a byte is closed after --idle-timeout."""
        started = time.monotonic()
        with socket.create_connection((HOST, self.server.port), timeout=READ_TIMEOUT + IDLE_TIMEOUT) as sock:
            response, closed = read_all(sock)
        self.assertEqual((response, closed), (b"", True))
        self.assertGreaterEqual(time.monotonic() - started, IDLE_TIMEOUT - 0.5)
        self.assertUnchanged()

    def open_connections(self) -> int:
        """The server's open-connections gauge, less the scrape's own connection."""
        _, _, body = http_request(self.server.url, "GET", "/v1/metrics")
        for line in body.decode().splitlines():
            if line.startswith("kvtwist_open_connections "):
                return int(float(line.split()[1])) - 1
        self.fail("no kvtwist_open_connections in /v1/metrics")

    def test_idle_flood_up_to_the_cap(self):
        """
        A flood of idle connections is accepted up to --max-connections;
        every connection beyond is closed at once, and once the flood goes
        away new connections are served again.
        """
        in_use = self.open_connections()
        extra = 3
        flood: List[socket.socket] = []
        answered = refused = 0
        try:
            for _ in range(MAX_CONNECTIONS - in_use + extra):
                try:
                    flood.append(socket.create_connection((HOST, self.server.port), timeout=READ_TIMEOUT))
                except ConnectionResetError:
                    # A loaded server can accept and abort a connection over
                    # the cap before the client's connect() has returned:
                    # refused too, only sooner.
                    refused += 1
            time.sleep(0.5)  # let the server accept (and refuse) them all
            for sock in flood:
                try:
                    sock.sendall(b"GET /v1/healthz HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
                    response, _ = read_all(sock)
                except (BrokenPipeError, ConnectionResetError):
                    response = b""
                if status_codes(response) == [200]:
                    answered += 1
                else:
                    refused += 1
        finally:
            for sock in flood:
                sock.close()
        self.assertEqual((answered, refused), (MAX_CONNECTIONS - in_use, extra))
        for _ in range(50):  # bounded: the closed flood frees its slots
            try:
                if http_request(self.server.url, "GET", "/v1/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        self.assertUnchanged()

    # -- browsers -------------------------------------------------------------------

    def browser_request(self, method: str, path: str, body: bytes = b"", **headers: str):
        """One request with the headers a web page's browser sends; returns (status, problem code)."""
        sent = {name.replace("_", "-"): value for name, value in headers.items()}
        status, _, answer = http_request(self.server.url, method, path, body, sent)
        code = problem_of_body(answer).get("code") if answer.startswith(b"{") else None
        return status, code

    def test_foreign_page_writes_nothing(self):
        """
        What a page of another origin can make a browser send, a no-cors
        batch, a text/plain form to /set then /commit, a PUT, a DELETE, is
        403 origin-not-allowed and changes nothing.
        """
        evil = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
        for method, path, body in (
            ("POST", "/v1/batch", b'{"ops": [{"op": "set", "key": "smuggled", "value": 1}]}'),
            ("POST", "/set", b'{"smuggled": 1, "pad": "="}'),
            ("POST", "/commit", b""),
            ("PUT", "/v1/kv/smuggled", b"1"),
            ("DELETE", "/v1/kv/a", b""),
            ("GET", "/v1/kv/a", b""),
        ):
            self.assertEqual(
                self.browser_request(method, path, body, **evil),
                (403, "origin-not-allowed"),
                (method, path),
            )
        self.assertUnchanged()

    def test_rebinding_host_refused(self):
        """A loopback request naming another host (DNS rebinding) is 421; loopback names are served."""
        port = self.server.port
        self.assertEqual(
            self.browser_request("GET", "/v1/kv/a", Host="evil.example:%d" % (port,)),
            (421, "host-not-allowed"),
        )
        for host in ("localhost:%d" % (port,), "127.0.0.1:%d" % (port,), "kv.localhost"):
            self.assertEqual(self.browser_request("GET", "/v1/kv/a", Host=host), (200, None), host)
        self.assertUnchanged()

    test_no_host = refusal(
        b'POST /set HTTP/1.1\r\nConnection: close\r\nContent-Length: 14\r\n\r\n{"smuggled":1}',
        400, "bad-host",
        "An HTTP/1.1 request with no Host header is a 400 (RFC 9112).",
    )
    test_two_hosts = refusal(
        b'POST /set HTTP/1.1\r\n' + H + H + b'Connection: close\r\nContent-Length: 14\r\n\r\n{"smuggled":1}',
        400, "bad-host",
        "An HTTP/1.1 request with two Host headers is a 400 (RFC 9112).",
    )

    # -- service under attack -------------------------------------------------------

    def test_normal_client_keeps_answering_under_attack(self):
        """
        A normal keep-alive client's GETs keep answering while slow-drip
        clients, an idle flood, malformed requests and oversized bodies run:
        p99 under attack stays below 3x the undisturbed p99 plus 50 ms (a
        sanity bound, not a benchmark; both figures are printed).
        """
        undisturbed = self.measure()
        attack = Attack(self.server.port)
        attack.start()
        try:
            time.sleep(0.5)
            # Long enough for slow-drip clients to reach their deadline.
            under_attack = self.measure(min_seconds=REQUEST_TIMEOUT * 2)
        finally:
            attack.stop()
        p99_before, p99_during = percentile(undisturbed, 0.99), percentile(under_attack, 0.99)
        print(
            "\nhostile p99: undisturbed %.2f ms (p50 %.2f ms, %d GETs), under attack %.2f ms "
            "(p50 %.2f ms, %d GETs); attack made %d refused requests, %d slow-drip cuts, "
            "%d idle connections"
            % (
                p99_before * 1000,
                percentile(undisturbed, 0.5) * 1000,
                len(undisturbed),
                p99_during * 1000,
                percentile(under_attack, 0.5) * 1000,
                len(under_attack),
                attack.refused,
                attack.cut,
                attack.idle,
            )
        )
        self.assertGreater(attack.refused, 20, "the attack did not run")
        self.assertGreater(attack.cut, 0, "no slow-drip client was cut")
        self.assertLess(p99_during, 3 * p99_before + 0.05)
        self.assertUnchanged()

    def measure(self, min_samples: int = 400, min_seconds: float = 0.0) -> List[float]:
        """
        Latencies of GETs on one keep-alive connection: at least
        C{min_samples} of them and for at least C{min_seconds} (bounded by
        20 times the sample count).
        """
        connection = connect(self.server.url, READ_TIMEOUT)
        latencies: List[float] = []
        started_all = time.monotonic()
        try:
            for _ in range(min_samples * 20):
                if len(latencies) >= min_samples and time.monotonic() - started_all >= min_seconds:
                    break
                started = time.perf_counter()
                status, _, body = http_request(self.server.url, "GET", "/v1/kv/a", connection=connection)
                latencies.append(time.perf_counter() - started)
                self.assertEqual((status, body), (200, b"1"))
        finally:
            connection.close()
        return latencies


#: What the garbage threads send, round robin.
GARBAGE = [
    b"POST /set HTTP/1.1\r\n" + H + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"GET /v1/kv/a HTTP/1.1\nHost: x\n\n",
    b"GET /" + b"a" * 17000 + b" HTTP/1.1\r\n\r\n",
    b"POST /set HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /v1/kv/a HTTP/1.1\r\nX: a\x00b\r\n\r\n",
    b"POST /set HTTP/1.1\r\n" + H + b"Content-Length: 100000\r\n\r\n" + b"x" * 20000,
]


class Attack:
    """
    Hostile load in threads, bounded in time: 3 slow-drip clients, 20 idle
    connections, 2 threads of malformed requests and oversized bodies.
    """

    SLOW = 3
    IDLE = 20
    GARBAGE_THREADS = 2
    #: The attack stops by itself after this many seconds whatever happens.
    MAX_SECONDS = 60.0

    def __init__(self, port: int) -> None:
        self.port = port
        self.stopping = threading.Event()
        self.threads: List[threading.Thread] = []
        self.idle_sockets: List[socket.socket] = []
        self.refused = 0
        self.cut = 0
        self.idle = 0
        self.deadline = time.monotonic() + self.MAX_SECONDS

    def running(self) -> bool:
        return not self.stopping.is_set() and time.monotonic() < self.deadline

    def start(self) -> None:
        for _ in range(self.IDLE):
            try:
                self.idle_sockets.append(socket.create_connection((HOST, self.port), timeout=READ_TIMEOUT))
                self.idle += 1
            except OSError:
                break
        for index in range(self.SLOW):
            self.spawn(self.slow_drip, "slow-%d" % index)
        for index in range(self.GARBAGE_THREADS):
            self.spawn(self.garbage, "garbage-%d" % index, index)

    def spawn(self, target, name, *args) -> None:
        thread = threading.Thread(target=target, args=args, name="attack-" + name, daemon=True)
        self.threads.append(thread)
        thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(READ_TIMEOUT + 5)
        for sock in self.idle_sockets:
            sock.close()

    def slow_drip(self) -> None:
        """Drip a request head a byte at a time until cut, again and again."""
        while self.running():
            try:
                with socket.create_connection((HOST, self.port), timeout=0.2) as sock:
                    for byte in b"GET /v1/kv/a HTTP/1.1\r\nX-Slow: " + b"s" * 1000:
                        if not self.running():
                            return
                        sock.sendall(bytes([byte]))
                        try:
                            if sock.recv(4096):
                                self.cut += 1
                                break
                        except socket.timeout:
                            continue
            except OSError:
                time.sleep(0.05)

    def garbage(self, offset: int) -> None:
        """Send malformed and oversized requests back to back."""
        index = offset
        while self.running():
            data = GARBAGE[index % len(GARBAGE)]
            index += 1
            try:
                with socket.create_connection((HOST, self.port), timeout=READ_TIMEOUT) as sock:
                    try:
                        sock.sendall(data)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    response, _ = read_all(sock, limit=4096)
                    if response.startswith(b"HTTP/1.1 4"):
                        self.refused += 1
            except OSError:
                pass
            time.sleep(0.005)
