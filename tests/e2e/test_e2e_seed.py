"""
End to end: the real C{twistd -n kvcache} as a subprocess on a free loopback
port, scripted with treq. What only a real process shows: the plugin is
found, data survives a restart while staged writes do not, signals stop it
cleanly, a damaged store stops startup, and bad input on the wire is
answered with problem+json and changes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from tests.helpers.e2e import (
    HOST,
    ServerProcess,
    http_request,
    run_twistd,
    start_server,
    temp_dir,
    treq_client,
)
from tests.helpers.e2e_stores import OnShelve, OnWorkers

DATA_FILE = "kvcache.sqlite3"
#: Single segments the server uses in other routes (/v1/..., /ui/, the
#: operations listener): each is still a seed key at the root.
ROUTE_NAMES = ("healthz", "readyz", "metrics", "ui", "v1", "limits", "watch", "txn", "batch")
PROBLEM = "application/problem+json"


async def call(client, method, url, body=None, headers=None):
    """One request with treq: C{(status, headers, body bytes)}."""
    response = await client.request(method, url, data=body, headers=headers)
    content = await response.content()
    return response.code, response.headers, content


def content_type(headers) -> str:
    """The bare media type of a response."""
    # Header names as bytes: Twisted caches str and bytes names in one dict,
    # and mixing them trips BytesWarning under python -b.
    values = headers.getRawHeaders(b"content-type") or [b""]
    return values[0].split(b";")[0].strip().decode("ascii")


@implementer(IBodyProducer)
class ChunkedBody:
    """A body of unknown length, so treq sends it chunked."""

    length = UNKNOWN_LENGTH

    def __init__(self, chunks):
        self._chunks = chunks

    def startProducing(self, consumer):
        for chunk in self._chunks:
            consumer.write(chunk)
        return succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


def shutdown_state(data_dir: str, scratch: str) -> str:
    """
    The shutdown mark a kvtwist store file carries ("clean" or "dirty"),
    read from a copy so the store itself is not touched.
    """
    copy = os.path.join(scratch, "copy.sqlite3")
    shutil.copyfile(os.path.join(data_dir, DATA_FILE), copy)
    db = sqlite3.connect(copy)
    try:
        row = db.execute("SELECT value FROM state WHERE name = 'shutdown'").fetchone()
    finally:
        db.close()
    return row[0] if row else "missing"


def assert_graceful_stop(testcase, server, code, signum=signal.SIGTERM):
    """
    C{server} went through its shutdown path rather than dying: twistd's
    shutdown finished with exit status 0 and nothing was logged as a
    traceback.
    """
    log = server.log_text()
    testcase.assertEqual(code, 0, log)
    testcase.assertIn("Server Shut Down.", log)
    testcase.assertNotIn("Traceback", log)


class _Any:
    """Equal to anything: a placeholder in expected tuples."""

    def __eq__(self, other):
        return True

    def __repr__(self):
        return "<any>"


_any = _Any()


class SeedRoundTripTests(OnShelve, TestCase):
    """The seed API through the real server."""

    async def test_done_when_scenario(self):
        """
        The seed's basic scenario: POST /set {"a":1} is 201, GET /a is still 404
        (staged writes are invisible), POST /commit is 204, GET /a is 1.
        """
        server = self.start_kvcache()
        client = treq_client(self)
        status, headers, body = await call(
            client, "POST", server.url + "/set", b'{"a":1}'
        )
        self.assertEqual((status, json.loads(body)), (201, {"a": "created"}))
        status, headers, body = await call(client, "GET", server.url + "/a")
        self.assertEqual(status, 404)
        self.assertEqual(content_type(headers), PROBLEM)
        status, headers, body = await call(client, "POST", server.url + "/commit")
        self.assertEqual((status, body), (204, b""))
        status, headers, body = await call(client, "GET", server.url + "/a")
        self.assertEqual((status, body), (200, b"1"))
        self.assertEqual(content_type(headers), "application/json")
        self.assertTrue(headers.getRawHeaders(b"etag"))
        # Updating a committed key is a 200 "updated".
        status, headers, body = await call(
            client, "POST", server.url + "/set", b'{"a":2}'
        )
        self.assertEqual((status, json.loads(body)), (200, {"a": "updated"}))
        assert_graceful_stop(self, server, server.terminate())

    async def test_route_names_are_seed_keys(self):
        """
        Every single-segment name the server uses elsewhere round-trips as
        a seed key through the real server (admin page and metrics on):
        DELETE of the absent key is 404, POST /set stages it, POST /commit
        applies it, GET /name reads it, DELETE /name and a commit remove it.
        """
        server = start_server(self)
        client = treq_client(self)
        pairs = {name: {"is": name} for name in ROUTE_NAMES}
        for name in ROUTE_NAMES:
            status, _, _ = await call(client, "DELETE", server.url + "/" + name)
            self.assertEqual(status, 404, name)
        status, _, body = await call(client, "POST", server.url + "/set", json.dumps(pairs).encode())
        self.assertEqual(status, 201, body)
        self.assertEqual((await call(client, "POST", server.url + "/commit"))[0], 204)
        for name in ROUTE_NAMES:
            status, headers, body = await call(client, "GET", server.url + "/" + name)
            self.assertEqual((status, json.loads(body)), (200, {"is": name}), name)
            self.assertEqual(content_type(headers), "application/json")
            status, _, body = await call(client, "DELETE", server.url + "/" + name)
            self.assertEqual((status, json.loads(body)), (200, {name: "deleted"}), name)
        self.assertEqual((await call(client, "POST", server.url + "/commit"))[0], 204)
        for name in ROUTE_NAMES:
            self.assertEqual((await call(client, "GET", server.url + "/" + name))[0], 404, name)
        # The routes themselves are where they moved: two segments or more.
        self.assertEqual((await call(client, "GET", server.url + "/v1/healthz"))[0], 200)
        self.assertEqual((await call(client, "GET", server.url + "/ui/"))[0], 200)
        assert_graceful_stop(self, server, server.terminate())

    async def test_restart_keeps_committed_loses_staged(self):
        """
        Committed keys (and deletes) survive SIGTERM and a restart on the
        same data directory; writes staged but not committed are gone, as
        documented, and a commit after the restart does not revive them.
        """
        server = self.start_kvcache()
        client = treq_client(self)
        url = server.url
        await call(client, "POST", url + "/set", b'{"a": 1, "b": {"x": [1, "y"]}, "c": 3}')
        self.assertEqual((await call(client, "POST", url + "/commit"))[0], 204)
        await call(client, "DELETE", url + "/c")
        self.assertEqual((await call(client, "POST", url + "/commit"))[0], 204)
        # Staged only: must not outlive the process.
        status, _, _ = await call(client, "POST", url + "/set", b'{"staged": true, "a": 99}')
        self.assertEqual(status, 200)
        assert_graceful_stop(self, server, server.terminate())

        server.start()
        url = server.url
        self.assertEqual(await call(client, "GET", url + "/a"), (200, _any, b"1"))
        status, _, body = await call(client, "GET", url + "/b")
        self.assertEqual((status, json.loads(body)), (200, {"x": [1, "y"]}))
        self.assertEqual((await call(client, "GET", url + "/c"))[0], 404)
        self.assertEqual((await call(client, "GET", url + "/staged"))[0], 404)
        self.assertEqual((await call(client, "POST", url + "/commit"))[0], 204)
        self.assertEqual((await call(client, "GET", url + "/staged"))[0], 404)
        self.assertEqual(await call(client, "GET", url + "/a"), (200, _any, b"1"))
        assert_graceful_stop(self, server, server.terminate())


class SeedRoundTripTestsOnWorkers(OnWorkers, SeedRoundTripTests):
    """The seed API through a server with two workers (its queue is the owner's)."""


class SignalTests(TestCase):
    """Graceful stop on SIGTERM and SIGINT."""

    async def _stop_with(self, signum):
        """Commit a key, send C{signum}, return the exit status."""
        base = temp_dir(self)
        server = start_server(self)
        client = treq_client(self)
        await call(client, "POST", server.url + "/set", b'{"k": "v"}')
        self.assertEqual((await call(client, "POST", server.url + "/commit"))[0], 204)
        server.send_signal(signum)
        code = server.wait()
        assert_graceful_stop(self, server, code, signum)
        # A clean close checkpoints the write-ahead log away and marks the
        # file clean; a crash would leave "dirty".
        self.assertFalse(os.path.exists(os.path.join(server.data_dir, DATA_FILE + "-wal")))
        self.assertEqual(shutdown_state(server.data_dir, base), "clean")
        return code

    async def test_sigterm_closes_store(self):
        """SIGTERM runs the shutdown path and closes the store cleanly."""
        await self._stop_with(signal.SIGTERM)

    async def test_sigint_closes_store(self):
        """SIGINT (^C) runs the shutdown path and closes the store cleanly."""
        await self._stop_with(signal.SIGINT)

    async def test_sigterm_exits_zero(self):
        """After SIGTERM the process exits with status 0: a graceful stop, not a crash."""
        self.assertEqual(await self._stop_with(signal.SIGTERM), 0)

    async def test_sigint_exits_zero(self):
        """After SIGINT the process exits with status 0: a graceful stop, not a crash."""
        self.assertEqual(await self._stop_with(signal.SIGINT), 0)

    async def _sigterm_during_commits(self):
        """
        Run 20 clients that each stage and commit their own key over and
        over, SIGTERM the server once commits are being acknowledged, restart
        it, and return C{(server, client, {client: last acknowledged value},
        the first run's log, its exit status)}.
        """
        server = start_server(self)
        client = treq_client(self)
        url = server.url
        acknowledged = {}
        some_acks = Deferred()

        async def writer(i):
            # Bounded: ends at the first refusal or cut-off, or after 500 rounds.
            for value in range(1, 501):
                try:
                    status, _, _ = await call(
                        client, "POST", url + "/set", b'{"t%d": %d}' % (i, value)
                    )
                    if status not in (200, 201):
                        return
                    status, _, _ = await call(client, "POST", url + "/commit")
                except Exception:
                    # Cut off by the shutdown: unacknowledged, so no promise.
                    return
                if status != 204:
                    return
                acknowledged[i] = value
                if len(acknowledged) >= 10 and not some_acks.called:
                    some_acks.callback(None)

        pending = [Deferred.fromCoroutine(writer(i)) for i in range(20)]
        # Signal while the clients are busy.
        await some_acks.addTimeout(20, reactor)
        server.send_signal(signal.SIGTERM)
        await gatherResults(pending)
        code = await server.wait_async()
        log = server.log_text()
        server.start()
        return server, client, acknowledged, log, code

    async def test_sigterm_during_commits(self):
        """
        SIGTERM while commits are in flight: the server stops through its
        shutdown path and every commit it acknowledged with 204 is on disk
        after a restart.
        """
        server, client, acknowledged, log, code = await self._sigterm_during_commits()
        self.assertIn(code, (0, -signal.SIGTERM), log)
        self.assertIn("Server Shut Down.", log)
        self.assertGreaterEqual(len(acknowledged), 10)
        for i, value in sorted(acknowledged.items()):
            status, _, body = await call(client, "GET", server.url + "/t%d" % (i,))
            self.assertEqual(status, 200, "t%d lost" % (i,))
            # A later stage may have been published by another client's
            # commit, so the value is at least the acknowledged one.
            self.assertGreaterEqual(int(body), value, "t%d went back" % (i,))
        assert_graceful_stop(self, server, server.terminate())


class ShutdownRaceTests(SynchronousTestCase):
    """Requests that meet a shutdown are refused cleanly."""

    def _burst_then_sigterm(self, connections=40):
        """
        Open C{connections} sockets, send a C{POST /set} on each, SIGTERM
        the server at once (the requests meet the store's close), and return
        C{(status lines answered, log)}. Raw sockets keep the timing tight.
        """
        server = start_server(self)
        body = b'{"x": 1}'
        request = (
            b"POST /set HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        sockets = []
        for _ in range(connections):
            sock = socket.create_connection((HOST, server.port), timeout=5)
            self.addCleanup(sock.close)
            sockets.append(sock)
        for sock in sockets:
            sock.sendall(request)
        server.send_signal(signal.SIGTERM)
        server.wait()
        answers = []
        for sock in sockets:
            try:
                first_line = sock.makefile("rb").readline()
            except OSError:
                # Reset by the shutdown: no answer, no promise.
                continue
            if first_line:
                answers.append(int(first_line.split()[1]))
        return answers, server.log_text()

    def test_requests_meeting_shutdown_get_no_500(self):
        """
        Requests caught by a SIGTERM are answered (201, or 503
        store-unavailable) or cut off, never a 500 with a traceback logged.
        Tried three times: the race is timing-dependent.
        """
        for _ in range(3):
            answers, log = self._burst_then_sigterm()
            self.assertNotIn("Traceback", log)
            self.assertLessEqual(set(answers), {200, 201, 503}, answers)


class PluginTests(SynchronousTestCase):
    """twistd finds the kvcache plugin."""

    def test_twistd_help_lists_kvcache(self):
        """C{twistd --help} names the kvcache command with its description."""
        result = run_twistd(["--help"])
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = [line.split() for line in result.stdout.splitlines()]
        self.assertIn("kvcache", [words[0] for words in lines if words])

    def test_kvcache_help_lists_options(self):
        """C{twistd kvcache --help} documents the seed's options."""
        result = run_twistd(["kvcache", "--help"])
        self.assertEqual(result.returncode, 0, result.stderr)
        for option in ("--port", "--host", "--listen", "--data", "--max-body"):
            self.assertIn(option, result.stdout)

    def test_get_plugins_finds_kvcache(self):
        """
        C{getPlugins(IServiceMaker)} yields exactly one maker whose tapname
        is kvcache and whose options are kvtwist's (Twisted only logs a
        broken dropin, so this is checked explicitly).
        """
        from twisted.application.service import IServiceMaker
        from twisted.plugin import getPlugins

        from kvtwist import tap

        makers = [m for m in getPlugins(IServiceMaker) if m.tapname == "kvcache"]
        self.assertEqual(len(makers), 1)
        self.assertIs(makers[0].options, tap.Options)


class DamagedStoreTests(SynchronousTestCase):
    """A damaged data file stops startup; it never serves an empty store."""

    def _assert_refused(self, data_dir, base):
        before = open(os.path.join(data_dir, DATA_FILE), "rb").read()
        server = ServerProcess(data_dir, log_dir=base)
        self.addCleanup(server.stop)
        server.launch()
        code = server.wait()
        log = server.log_text()
        self.assertNotEqual(code, 0, log)
        self.assertIn("kvcache: cannot start", log)
        self.assertIn(DATA_FILE, log)
        # Said in one line, not a traceback.
        self.assertNotIn("Traceback", log)
        self.assertNotIn(" starting on ", log)
        after = open(os.path.join(data_dir, DATA_FILE), "rb").read()
        self.assertEqual(after, before, "the damaged file was changed")

    def test_garbage_file(self):
        """Garbage in kvcache.sqlite3 makes twistd exit non-zero with a clear message."""
        base = temp_dir(self)
        data_dir = os.path.join(base, "data")
        os.makedirs(data_dir, mode=0o700)
        with open(os.path.join(data_dir, DATA_FILE), "wb") as f:
            f.write(b"this is not a kvtwist store\n" * 200)
        self._assert_refused(data_dir, base)

    def test_overwritten_pages(self):
        """
        A real store whose pages were overwritten after a clean stop is
        refused at startup, never served half-read.
        """
        base = temp_dir(self)
        data_dir = os.path.join(base, "data")
        server = ServerProcess(data_dir, log_dir=base)
        self.addCleanup(server.stop)
        server.start()
        pairs = {"key%03d" % i: "value %d " % i * 20 for i in range(300)}
        status, _, _ = http_request(server.url, "POST", "/set", json.dumps(pairs).encode())
        self.assertIn(status, (200, 201))
        self.assertEqual(http_request(server.url, "POST", "/commit")[0], 204)
        assert_graceful_stop(self, server, server.terminate())
        path = os.path.join(data_dir, DATA_FILE)
        size = os.path.getsize(path)
        self.assertGreater(size, 4 * 4096)
        with open(path, "r+b") as f:
            # Keep the header page, trash everything after it.
            f.seek(4096)
            f.write(b"\xa5" * (size - 4096))
        self._assert_refused(data_dir, base)


class BadInputTests(TestCase):
    """
    Bad input over the wire: each answer is problem+json with the right
    status, and none of it changes the store or the staged queue.
    """

    MAX_BODY = 1000

    def setUp(self):
        self.server = start_server(self, extra_args=["--max-body", str(self.MAX_BODY)])
        self.client = treq_client(self)

    async def expect_problem(self, status, method, path, body=None, headers=None):
        got, response_headers, content = await call(
            self.client, method, self.server.url + path, body, headers
        )
        self.assertEqual(got, status, (method, path, body, content))
        self.assertEqual(content_type(response_headers), PROBLEM, (method, path))
        document = json.loads(content)
        self.assertEqual(document["status"], status)
        for field in ("type", "title", "detail", "code"):
            self.assertIn(field, document)
        self.assertNotIn("Traceback", document["detail"])
        return document

    async def assert_unchanged(self, forbidden):
        """
        Commit whatever is staged: the one good staged key lands, none of
        C{forbidden} does, and the server is still up and sane.
        """
        url = self.server.url
        self.assertEqual((await call(self.client, "POST", url + "/commit"))[0], 204)
        status, _, body = await call(self.client, "GET", url + "/good")
        self.assertEqual((status, body), (200, b"1"))
        for key in forbidden:
            status, _, _ = await call(self.client, "GET", url + "/" + key)
            self.assertEqual(status, 404, key)
        self.assertTrue(self.server.running)
        self.assertNotIn("Traceback", self.server.log_text())

    async def stage_good(self):
        url = self.server.url
        status, _, _ = await call(self.client, "POST", url + "/set", b'{"good": 1}')
        self.assertEqual(status, 201)

    async def test_malformed_json(self):
        """
        Invalid JSON, NaN/Infinity, duplicate keys, lone surrogates, invalid
        UTF-8, deep nesting, a non-object body, an empty key and a key over
        1024 bytes are each a 400 and stage nothing.
        """
        await self.stage_good()
        bad_bodies = [
            b'{"bad1": ',
            b'{"bad1": NaN}',
            b'{"bad1": Infinity}',
            b'{"bad1": -Infinity}',
            b'{"bad1": 1, "bad1": 2}',
            b'{"bad1": "\\ud800"}',
            b'{"bad1": "\xff\xfe"}',
            b'{"bad1": ' + b"[" * 200 + b"]" * 200 + b"}",
            b'["bad1", 1]',
            b'"bad1"',
            b"",
            b'{"": 1, "bad1": 2}',
        ]
        for body in bad_bodies:
            await self.expect_problem(400, "POST", "/set", body)
        # A key over the 1024-byte limit needs a body bigger than this
        # server's --max-body, so it is sent to a path instead.
        long_key = "k" * 1025
        await self.expect_problem(400, "DELETE", "/" + long_key)
        await self.assert_unchanged(["bad1"])

    async def test_body_too_large_declared(self):
        """A body whose Content-Length passes --max-body is a 413 naming the limit."""
        await self.stage_good()
        pairs = {"big%d" % i: "x" * 50 for i in range(40)}
        body = json.dumps(pairs).encode()
        self.assertGreater(len(body), self.MAX_BODY)
        document = await self.expect_problem(413, "POST", "/set", body)
        self.assertEqual(document.get("limit"), self.MAX_BODY)
        await self.assert_unchanged(["big0", "big39"])

    async def test_body_too_large_chunked(self):
        """A chunked body that grows past --max-body is a 413 too."""
        await self.stage_good()
        chunks = [b'{"big0": "'] + [b"x" * 100] * 30 + [b'"}']
        document = await self.expect_problem(413, "POST", "/set", ChunkedBody(chunks))
        self.assertEqual(document.get("limit"), self.MAX_BODY)
        await self.assert_unchanged(["big0"])

    async def test_body_too_large_refused_before_sending(self):
        """
        A declared Content-Length past --max-body is refused with 413 right
        after the headers, without a C{100 Continue}: the client never has
        to send the body.
        """
        await self.stage_good()
        with socket.create_connection((HOST, self.server.port), timeout=10) as sock:
            sock.sendall(
                b"POST /set HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
                b"Content-Length: %d\r\n\r\n" % (self.MAX_BODY * 5,)
            )
            status_line = sock.makefile("rb").readline()
        self.assertTrue(status_line.startswith(b"HTTP/1.1 413 "), status_line)
        await self.assert_unchanged([])

    async def test_unknown_paths_and_methods(self):
        """
        Unknown paths and methods other than the seed's are 404 problems
        (the seed's rule), and change nothing.
        """
        await self.stage_good()
        for method, path in [
            ("GET", "/"),
            ("GET", "/good/child"),
            ("GET", "/set"),
            ("GET", "/commit"),
            ("PUT", "/good"),
            ("POST", "/good"),
            ("PUT", "/set"),
            ("DELETE", "/commit"),
            ("PATCH", "/good"),
        ]:
            await self.expect_problem(404, method, path, b'{"bad1": 1}')
        await self.expect_problem(404, "DELETE", "/never-staged")
        await self.assert_unchanged(["bad1", "never-staged"])
