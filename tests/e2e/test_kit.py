"""
Tests for the downstream test kit: L{kvtwist.testing}'s in-process server
and memory client, and the pytest plugin.

The example modules in C{tests/kit/} are run here the way a user would run
them, each in a subprocess under its own runner: the trial one with
C{python -m twisted.trial}, the pytest one with pytest finding the fixtures
through kvtwist's C{pytest11} entry point (and once more with plugin
autoloading off and the plugin named with C{-p}). Each run must pass every
test the module defines, so a test that silently stops being collected
fails here.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from importlib import metadata
from typing import Dict, List

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kvtwist import client
from kvtwist.errors import StoreCorrupt
from kvtwist.limits import Limits
from kvtwist.testing import KVCacheServer, KVCacheServerMixin, MemoryStore, memory_client

from tests.helpers.paths import REPO

HERE = os.path.join(REPO, "tests")
KIT = os.path.join(HERE, "kit")

#: Seconds a subprocess run of an example module may take (mostly imports
#: and, with autoloading on, every installed pytest plugin).
RUN_TIMEOUT = 120


def count_tests(path: str) -> int:
    """How many test functions or methods a module defines."""
    with open(path, encoding="utf-8") as f:
        return len(re.findall(r"^\s*(?:async\s+)?def test_", f.read(), re.M))


def clean_env(**extra: str) -> Dict[str, str]:
    """
    The environment for a subprocess runner: this one without pytest's own
    variables (a PYTEST_ADDOPTS meant for the outer run must not leak in),
    plus C{extra}.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(extra)
    return env


def run(args: List[str], cwd: str, env: Dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-b"] + args,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )


class RunnerTests(SynchronousTestCase):
    """The example modules pass under their own runners."""

    def setUp(self) -> None:
        self.workdir = tempfile.mkdtemp(prefix="kvtwist-kit-run-")
        self.addCleanup(shutil.rmtree, self.workdir, True)

    def downstream_copy(self) -> str:
        """
        The pytest example copied into an empty project directory with an
        empty pytest.ini: no conftest and no kvtwist config can help it
        there, only the installed package.
        """
        shutil.copy(os.path.join(KIT, "test_pytest_example.py"), self.workdir)
        with open(os.path.join(self.workdir, "pytest.ini"), "w") as f:
            f.write("[pytest]\naddopts = -p no:cacheprovider\n")
        return os.path.join(self.workdir, "test_pytest_example.py")

    def assert_pytest_passed(self, result: subprocess.CompletedProcess) -> None:
        output = result.stdout + result.stderr
        expected = count_tests(os.path.join(KIT, "test_pytest_example.py"))
        self.assertEqual(result.returncode, 0, output)
        summary = output.strip().splitlines()[-1]
        self.assertRegex(summary, r"\b%d passed\b" % (expected,), output)
        self.assertNotRegex(summary, r"failed|error|skipped", output)

    def test_trial_example_under_trial(self) -> None:
        """
        python -m twisted.trial tests.kit.trial_example passes every test
        of the module, with a clean reactor after each (trial fails a test
        that leaves sockets or timers behind).
        """
        result = run(
            [
                "-m", "twisted.trial",
                "--temp-directory", os.path.join(self.workdir, "_trial_temp"),
                "tests.kit.trial_example",
            ],
            cwd=self.workdir,
            env=clean_env(PYTHONPATH=REPO),
        )
        output = result.stdout + result.stderr
        expected = count_tests(os.path.join(KIT, "trial_example.py"))
        self.assertEqual(result.returncode, 0, output)
        self.assertIn("PASSED (successes=%d)" % (expected,), output)
        self.assertNotIn("DirtyReactor", output)

    def test_pytest_example_through_entry_point(self) -> None:
        """
        pytest finds kvcache_url and the other fixtures with no -p and no
        conftest: the pytest11 entry point of the installed package.
        """
        path = self.downstream_copy()
        result = run(["-m", "pytest", "-q", path], cwd=self.workdir, env=clean_env())
        self.assert_pytest_passed(result)

    def test_pytest_example_with_autoload_off(self) -> None:
        """
        With PYTEST_DISABLE_PLUGIN_AUTOLOAD, naming the plugin with
        -p kvtwist.pytest_plugin (and pytest-twisted's) is enough.
        """
        path = self.downstream_copy()
        result = run(
            ["-m", "pytest", "-q", "-p", "pytest_twisted", "-p", "kvtwist.pytest_plugin", path],
            cwd=self.workdir,
            env=clean_env(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1"),
        )
        self.assert_pytest_passed(result)

    def test_entry_point_metadata(self) -> None:
        """The installed distribution declares pytest11: kvtwist = kvtwist.pytest_plugin."""
        points = {
            (ep.name, ep.value)
            for ep in metadata.distribution("kvtwist").entry_points
            if ep.group == "pytest11"
        }
        self.assertEqual(points, {("kvtwist", "kvtwist.pytest_plugin")})


#: A downstream project's pytest test, collected before its trial one
#: (file names sort so): it starts pytest-twisted's reactor greenlet.
MIXED_PYTEST = """\
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater


@pytest_twisted.ensureDeferred
async def test_waits_on_the_reactor():
    assert await deferLater(reactor, 0.01, lambda: 42) == 42


def test_plain():
    assert True
"""

#: The same project's trial test with a real in-process kvcache.
MIXED_TRIAL = """\
from twisted.trial.unittest import TestCase

from kvtwist import client
from kvtwist.testing import KVCacheServerMixin


class ServerTests(KVCacheServerMixin, TestCase):
    async def test_put_and_read(self):
        url = self.start_kvcache()
        http = self.kvcache_client()
        await client.put(http, url, "k", b"v")
        self.assertEqual((await client.get_entry(http, url, "k")).value, b"v")
"""


class MixedRunnerTests(SynchronousTestCase):
    """A downstream project mixing a KVCacheServerMixin trial test and pytest tests."""

    def project(self) -> str:
        directory = tempfile.mkdtemp(prefix="kvtwist-mixed-")
        self.addCleanup(shutil.rmtree, directory, True)
        for name, text in (("test_1_pytest.py", MIXED_PYTEST), ("test_2_trial.py", MIXED_TRIAL)):
            with open(os.path.join(directory, name), "w") as f:
                f.write(text)
        with open(os.path.join(directory, "pytest.ini"), "w") as f:
            f.write("[pytest]\naddopts = -p no:cacheprovider\n")
        return directory

    def test_passes_with_nothing_downstream(self) -> None:
        """
        With no conftest and no option, the trial test and the pytest tests
        pass in one run: kvtwist's plugin runs the trial test first.
        """
        directory = self.project()
        result = run(["-m", "pytest", "-v"], cwd=directory, env=clean_env())
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 0, output)
        self.assertRegex(output.strip().splitlines()[-1], r"\b3 passed\b", output)
        self.assertNotIn("DirtyReactor", output)
        order = re.findall(r"^(test_\d)_\w+\.py::", output, re.M)
        self.assertEqual(order, ["test_2", "test_1", "test_1"], output)

    def test_fails_in_collected_order(self) -> None:
        """
        Without the ordering (kvtwist_trial_first = false) the same project
        fails as downstream projects did: the trial test after a pytest one
        finds the reactor taken.
        """
        directory = self.project()
        with open(os.path.join(directory, "pytest.ini"), "a") as f:
            f.write("kvtwist_trial_first = false\n")
        result = run(["-m", "pytest", "-q"], cwd=directory, env=clean_env())
        self.assertNotEqual(result.returncode, 0, result.stdout + result.stderr)


class DocsTests(SynchronousTestCase):
    """docs/testing.md shows tested code and states the right counts."""

    def setUp(self) -> None:
        with open(os.path.join(REPO, "docs", "testing.md"), encoding="utf-8") as f:
            self.text = f.read()

    def test_examples_are_the_tested_ones(self) -> None:
        """Every test function shown in the docs exists in tests/kit/."""
        shown = set(re.findall(r"def (test_\w+)", self.text))
        self.assertTrue(shown)
        defined = set()
        for name in ("trial_example.py", "test_pytest_example.py"):
            with open(os.path.join(KIT, name), encoding="utf-8") as f:
                defined.update(re.findall(r"def (test_\w+)", f.read()))
        self.assertEqual(shown - defined, set())

    def test_counts(self) -> None:
        """The test counts the docs give are those of the example modules."""
        for name in ("trial_example.py", "test_pytest_example.py"):
            count = count_tests(os.path.join(KIT, name))
            self.assertIn("`tests/kit/%s` (%d tests)" % (name, count), self.text)


class MemoryClientTests(SynchronousTestCase):
    """L{memory_client}: StubTreq over the whole tree and its store."""

    def test_fresh_store(self) -> None:
        """Without a store it makes a MemoryStore and returns it with the client."""
        http, store = memory_client()
        self.assertIsInstance(http, StubTreq)
        self.assertIsInstance(store, MemoryStore)
        self.successResultOf(client.put(http, "http://kv.test", "k", b"v"))
        self.assertEqual(store.rows["k"].value, b"v")

    def test_given_store_and_options(self) -> None:
        """A given store is served and returned; options reach make_root."""
        mine = MemoryStore()
        http, store = memory_client(mine, limits=Limits(max_list_limit=2))
        self.assertIs(store, mine)
        failure = self.failureResultOf(
            client.list_keys(http, "http://kv.test", limit=3), client.KVClientError
        )
        self.assertEqual(failure.value.status, 400)


class ServerTests(TestCase):
    """L{KVCacheServer} itself: lifecycle and cleanup."""

    def make_server(self, **options) -> KVCacheServer:
        server = KVCacheServer(**options)
        self.addCleanup(server.stop)
        return server

    def test_url_before_start(self) -> None:
        """The URL of a server that was never started is an error, not a guess."""
        with self.assertRaises(RuntimeError):
            KVCacheServer().url

    def test_store_or_data_dir(self) -> None:
        """A given store and a data directory cannot both be served."""
        with self.assertRaises(ValueError):
            KVCacheServer(MemoryStore(), data_dir=self.mktemp())

    def test_start_twice(self) -> None:
        """A running server refuses a second start."""
        server = self.make_server()
        server.start()
        with self.assertRaises(RuntimeError):
            server.start()

    async def test_no_restart(self) -> None:
        """A stopped server refuses to start again (its own store is closed)."""
        server = self.make_server()
        server.start()
        await server.stop()
        with self.assertRaises(RuntimeError):
            server.start()

    def test_loopback_only(self) -> None:
        """It listens on 127.0.0.1, on the port its URL names."""
        server = self.make_server()
        url = server.start()
        self.assertEqual(url, "http://127.0.0.1:%d" % (server.port,))
        self.assertEqual(server._listening.getHost().host, "127.0.0.1")

    async def test_stop_closes_kept_alive_connections(self) -> None:
        """
        stop() closes connections clients keep open, stops listening and is
        idempotent; a given store is left open for its owner.
        """
        store = MemoryStore(clock=reactor)
        server = self.make_server(store=store)
        server.start()
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        self.addCleanup(sock.close)
        # Let the server accept it before stopping.
        for _ in range(200):
            if server._site.kvtwist_connections:
                break
            await deferLater(reactor, 0.005, lambda: None)
        self.assertEqual(len(server._site.kvtwist_connections), 1)
        await server.stop()
        await server.stop()
        try:
            closed = sock.recv(10) == b""
        except ConnectionResetError:
            closed = True  # aborted: the peer sees a reset, which is closed too
        self.assertTrue(closed)
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
        self.assertFalse(store.closed)

    async def test_own_store_closed(self) -> None:
        """The MemoryStore a server made for itself is closed by stop()."""
        server = self.make_server()
        server.start()
        await server.stop()
        self.assertTrue(server.store.closed)

    async def test_open_transactions_forgotten(self) -> None:
        """
        A transaction left open does not leave its idle timer behind (trial
        would report it as an unclean reactor).
        """
        server = self.make_server()
        url = server.start()
        http = KVCacheServerMixin.kvcache_client(self)  # type: ignore[arg-type]
        txn = await client.begin(http, url)
        await txn.put("k", b"v")
        await server.stop()

    def test_damaged_data_dir(self) -> None:
        """A damaged on-disk store fails start() with StoreCorrupt."""
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        with open(os.path.join(data_dir, "kvcache.sqlite3"), "wb") as f:
            f.write(b"this is not a database" * 100)
        server = KVCacheServer(data_dir=data_dir)
        with self.assertRaises(StoreCorrupt):
            server.start()
        self.assertIsNone(server.port)


class MixinTests(KVCacheServerMixin, TestCase):
    """L{KVCacheServerMixin}: start_kvcache and its cleanup."""

    async def test_start_kvcache(self) -> None:
        """start_kvcache returns a URL that serves kvcache and keeps the server."""
        url = self.start_kvcache()
        self.assertEqual(url, self.kvcache.url)
        http = self.kvcache_client()
        await client.put(http, url, "k", b"v")
        self.assertEqual(self.kvcache.store.rows["k"].value, b"v")

    async def test_ops_routes(self) -> None:
        """/v1/healthz and /v1/readyz answer as on twistd kvcache (readyz checks the store)."""
        url = self.start_kvcache()
        http = self.kvcache_client()
        for path in ("/v1/healthz", "/v1/readyz"):
            response = await http.get(url + path)
            await response.content()
            self.assertEqual(response.code, 200, path)
        self.kvcache.store.closed = True
        response = await http.get(url + "/v1/readyz")
        await response.content()
        self.assertEqual(response.code, 503)
        self.kvcache.store.closed = False

    async def test_on_disk_temp_dir(self) -> None:
        """on_disk=True serves the shelve store from a temporary directory."""
        url = self.start_kvcache(on_disk=True)
        await client.put(self.kvcache_client(), url, "k", b"v")
        data_dir = self.kvcache._data_dir
        self.assertTrue(os.path.isfile(os.path.join(data_dir, "kvcache.sqlite3")))
        self.assertEqual(self.kvcache.store.revision, 1)

    async def test_long_poll_over_tcp(self) -> None:
        """A long-poll parked on the server wakes on a write from another client."""
        url = self.start_kvcache()
        http = self.kvcache_client()
        first = await client.put(http, url, "flag", b"off")
        poll: Deferred = http.get(
            url + "/v1/kv/flag?index=%d&wait=10" % (first["mod_revision"],)
        )
        # (Deferred.called is no use here: treq's Deferred is "called" while
        # it waits for the answer.)
        answered: List[object] = []
        poll.addBoth(lambda result: answered.append(result) or result)
        await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(answered, [])
        await client.put(http, url, "flag", b"on")
        response = await poll
        self.assertEqual(await response.content(), b"on")
