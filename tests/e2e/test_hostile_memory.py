"""
Hostile clients against the real C{twistd kvcache}, measured by memory:
each case attacks one server and asserts a bound on the growth of the
server process's resident set size (C{VmRSS} from C{/proc}), and that a
well-behaved client is still served.

The attacks are those that once multiplied memory: clients that pipeline
reads of a large value and never read the answers, event-stream watchers
that never read while one large commit goes out, a stream of large writes
that the watch history once kept outside the read cache, and a listing of
large values in one page.

Each case starts its own server, with limits small enough that the cases
are quick and their bounds clear: C{--max-body 8 MiB} (one large
commit in one request), C{--watch-buffer 256 KiB}, C{--cache-size 8} MiB
and C{--watch-history-bytes 8 MiB}.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import tempfile
import time
from typing import List

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.e2e import HOST, KEEP_ENV, ServerProcess, connect, http_request, rss_kib

MiB = 1024 * 1024
#: The large value the pipelining clients read: 1 MB.
BIG = os.urandom(500_000).hex().encode("ascii")
WATCH_BUFFER = 256 * 1024
HISTORY_BYTES = 8 * MiB
#: Seconds to wait for the server to settle after an attack.
SETTLE = 1.5
#: Socket timeout for reading answers; a hung server fails the case.
READ_TIMEOUT = 10.0


def non_reading_socket(port: int) -> socket.socket:
    """A connection with a 4 KiB receive buffer, so the server's answers back up at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(READ_TIMEOUT)
    sock.connect((HOST, port))
    return sock


def is_closed(sock: socket.socket, limit: int = 64 * MiB) -> bool:
    """Drain C{sock}: whether the server closed it (within C{READ_TIMEOUT})."""
    received = 0
    try:
        while received < limit:
            data = sock.recv(1 << 20)
            if not data:
                return True
            received += len(data)
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    return False


class MemoryBoundTests(SynchronousTestCase):
    """
    Attacks that once multiplied the server's memory. Each case gets a
    fresh server, so what an earlier case left in the allocator's free
    lists cannot hide a later case's growth.
    """

    def setUp(self):
        base = tempfile.mkdtemp(prefix="kvtwist-hostile-memory-")
        if not os.environ.get(KEEP_ENV):
            self.addCleanup(shutil.rmtree, base, True)
        self.server = ServerProcess(
            os.path.join(base, "data"),
            [
                "--max-body", str(8 * MiB),
                "--watch-buffer", str(WATCH_BUFFER),
                "--cache-size", "8",
                "--watch-history-bytes", str(HISTORY_BYTES),
                "--access-log", "off",
            ],
            log_dir=base,
        )
        self.addCleanup(self.server.stop)
        self.server.start()
        self.assertEqual(http_request(self.server.url, "PUT", "/v1/kv/big", BIG)[0], 201)
        self.pid = self.server.process.pid
        # Warm up: the value in the cache, the answer path's objects made.
        for _ in range(3):
            self.assertEqual(http_request(self.server.url, "GET", "/v1/kv/big")[2], BIG)
        self.rss_before = rss_kib(self.pid)

    def growth_mib(self) -> float:
        """RSS growth since the case began, in MiB (printed for the record)."""
        growth = (rss_kib(self.pid) - self.rss_before) / 1024
        print("\n%s: RSS grew %.1f MiB" % (self.id(), growth))
        return growth

    def put_big(self, keys: List[str]) -> None:
        """PUT the 1 MB value to each of C{keys}, on one keep-alive connection."""
        connection = connect(self.server.url, timeout=READ_TIMEOUT)
        try:
            for key in keys:
                status, _, _ = http_request(
                    self.server.url, "PUT", "/v1/kv/" + key, BIG, connection=connection
                )
                self.assertIn(status, (200, 201))
        finally:
            connection.close()

    def test_pipelined_reads_of_a_large_value_stay_bounded(self):
        """
        Three connections that pipeline 3,000 GETs of a 1 MB value each and
        never read grow the server's RSS by less than 64 MiB: a connection's
        further requests are not read while its answers wait to be sent.
        """
        request = b"GET /v1/kv/big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        sockets = [non_reading_socket(self.server.port) for _ in range(3)]
        try:
            for sock in sockets:
                sock.setblocking(False)
                # As much as the kernel takes: the server stops reading.
                sent = 0
                for _ in range(3000):
                    try:
                        sent += sock.send(request)
                    except BlockingIOError:
                        break
                self.assertGreater(sent, 0)
            time.sleep(SETTLE)
            self.assertLess(self.growth_mib(), 64)
            self.assertEqual(http_request(self.server.url, "GET", "/v1/kv/big")[2], BIG)
        finally:
            for sock in sockets:
                sock.close()

    def test_pipelining_client_gets_every_answer_in_order(self):
        """
        A client that pipelines 40 GETs of the 1 MB value interleaved with
        GETs of a small key, and reads as it goes, gets all 80 answers, in
        order, each whole.
        """
        self.assertEqual(http_request(self.server.url, "PUT", "/v1/kv/small", b"s")[0], 201)
        requests = b"".join(
            b"GET /v1/kv/%s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % (name,)
            for _ in range(40)
            for name in (b"big", b"small")
        )
        with socket.create_connection((HOST, self.server.port), timeout=READ_TIMEOUT) as sock:
            sock.sendall(requests)
            bodies = read_answers(sock, 80)
        self.assertEqual(bodies, [BIG, b"s"] * 40)


    def test_watchers_that_never_read_are_cut_off(self):
        """
        30 event-stream watchers (values=1) that never read, and one commit
        of 100 values of 48 KiB (6.4 MiB of events, each stream's buffer
        256 KiB): every watcher is disconnected, and RSS grows by less than
        64 MiB (30 streams holding the commit would be 190 MiB).
        """
        watchers = [non_reading_socket(self.server.port) for _ in range(30)]
        try:
            for sock in watchers:
                sock.sendall(b"GET /v1/watch?prefix=w/&values=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            for sock in watchers:
                self.assertIn(b" 200 ", sock.recv(4096))
            self.rss_before = rss_kib(self.pid)
            value = base64.b64encode(os.urandom(48 * 1024)).decode("ascii")
            ops = [{"op": "set", "key": "w/%d" % i, "value_base64": value} for i in range(100)]
            status, _, body = http_request(
                self.server.url, "POST", "/v1/batch", json.dumps({"ops": ops}).encode("ascii"),
                {"Content-Type": "application/json"}, timeout=READ_TIMEOUT,
            )
            self.assertEqual(status, 200, body[:300])
            time.sleep(SETTLE)
            self.assertLess(self.growth_mib(), 64)
            self.assertEqual([is_closed(sock) for sock in watchers], [True] * 30)
        finally:
            for sock in watchers:
                sock.close()


    def test_large_writes_stay_within_cache_and_history_bounds(self):
        """
        100 PUTs of a 1 MB value to 100 keys grow RSS by less than 48 MiB:
        the read cache (8 MiB) and the watch history (8 MiB of keys and
        values) each keep only their bound of them (the history alone once
        kept all 100).
        """
        self.put_big(["h/%d" % (i,) for i in range(100)])
        time.sleep(SETTLE)
        self.assertLess(self.growth_mib(), 48)

    def test_listing_of_large_values_is_paged_by_bytes(self):
        """
        ?limit=1000&values=1 over 24 values of 1 MB answers a page that
        ends with the value reaching 4 MiB (the default max_list_bytes),
        with next, and RSS grows by less than 48 MiB.
        """
        self.put_big(["l/%02d" % (i,) for i in range(24)])
        self.rss_before = rss_kib(self.pid)
        status, _, body = http_request(
            self.server.url, "GET", "/v1/kv/?prefix=l/&limit=1000&values=1", timeout=READ_TIMEOUT
        )
        self.assertEqual(status, 200)
        page = json.loads(body)
        self.assertEqual([item["key"] for item in page["items"]], ["l/%02d" % i for i in range(5)])
        self.assertEqual(page["next"], "l/04")
        self.assertLess(self.growth_mib(), 48)


def read_answers(sock: socket.socket, count: int) -> List[bytes]:
    """Read C{count} answers framed by Content-Length from C{sock}; their bodies."""
    bodies: List[bytes] = []
    buffer = b""
    for _ in range(count):
        while b"\r\n\r\n" not in buffer:
            buffer += recv_some(sock)
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head[:200]
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(buffer) < length:
            buffer += recv_some(sock)
        bodies.append(buffer[:length])
        buffer = buffer[length:]
    return bodies


def recv_some(sock: socket.socket) -> bytes:
    """Some bytes from C{sock}; the server closing early fails the case."""
    data = sock.recv(1 << 20)
    if not data:
        raise AssertionError("the server closed the connection early")
    return data
