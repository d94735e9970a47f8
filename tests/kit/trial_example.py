"""
A downstream trial module using L{kvtwist.testing}, written the way a user
of kvtwist would write it (it is also the trial example in
C{docs/testing.md}).

Run with C{python -m twisted.trial tests.kit.trial_example}; the file name
does not start with C{test_} so pytest leaves it to trial, and
C{tests.e2e.test_kit} runs it that way and checks the pass count.
"""

from __future__ import annotations

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kvtwist import client
from kvtwist.model import Put
from kvtwist.testing import KVCacheServerMixin, memory_client


async def enable_flag(http, url: str, name: str) -> int:
    """
    The "code under test": turn a feature flag on, return its revision.
    Like every kvtwist.client function, it takes the HTTP client first.
    """
    result = await client.put(
        http, url, "flags/" + name, b"true", content_type="application/json"
    )
    return result["mod_revision"]


class InMemoryTests(SynchronousTestCase):
    """The in-memory kvcache through StubTreq: no network, no reactor."""

    def test_flag_round_trip(self) -> None:
        """Code that takes a treq-like client runs against StubTreq at once."""
        http, store = memory_client()
        revision = self.successResultOf(
            Deferred.fromCoroutine(enable_flag(http, "http://kv.test", "beta"))
        )
        entry = self.successResultOf(client.get_entry(http, "http://kv.test", "flags/beta"))
        self.assertEqual((entry.value, entry.mod_revision), (b"true", revision))
        self.assertEqual(store.rows["flags/beta"].value, b"true")

    def test_missing_key(self) -> None:
        """A key nobody wrote is a NotFoundError, as from a real server."""
        http, _ = memory_client()
        failure = self.failureResultOf(
            client.get_entry(http, "http://kv.test", "nope"), client.NotFoundError
        )
        self.assertEqual(failure.value.code, "key-not-found")


class ServerTests(KVCacheServerMixin, TestCase):
    """A real kvcache on a loopback port, stopped after each test."""

    async def test_flag_over_tcp(self) -> None:
        """The same code works over a real connection to the in-process server."""
        url = self.start_kvcache()
        self.assertTrue(url.startswith("http://127.0.0.1:"))
        http = self.kvcache_client()
        revision = await enable_flag(http, url, "beta")
        entry = await client.get_entry(http, url, "flags/beta")
        self.assertEqual((entry.value, entry.mod_revision), (b"true", revision))

    async def test_seed_the_store_directly(self) -> None:
        """What a test commits to self.kvcache.store is served at once."""
        url = self.start_kvcache()
        await self.kvcache.store.commit([Put("config/mode", b'"fast"', "application/json")])
        entry = await client.get_entry(self.kvcache_client(), url, "config/mode")
        self.assertEqual(entry.value, b'"fast"')

    async def test_treq_module_pool(self) -> None:
        """
        Code that uses the treq module itself (its global, persistent pool)
        leaves nothing behind: stopping the server closes kept-alive
        connections, so trial finds the reactor clean.
        """
        url = self.start_kvcache()
        response = await treq.put(
            url + "/v1/kv/greeting", data=b"hello", headers={b"Content-Type": [b"text/plain"]}
        )
        self.assertEqual(response.code, 201)
        await treq.content(response)
        response = await treq.get(url + "/v1/kv/greeting")
        self.assertEqual(await treq.content(response), b"hello")

    async def test_open_stream_is_closed_at_cleanup(self) -> None:
        """
        A Server-Sent Events stream still open when the test ends is cut by
        the server's cleanup, with its heartbeat timer.
        """
        url = self.start_kvcache()
        http = self.kvcache_client()
        response = await http.get(url + "/v1/watch?prefix=jobs/")
        self.assertEqual(response.code, 200)
        received = []
        first_event: Deferred = Deferred()

        def chunk(data: bytes) -> None:
            received.append(data)
            if b"event: put" in b"".join(received) and not first_event.called:
                first_event.callback(None)

        done = treq.collect(response, chunk)
        done.addErrback(lambda failure: None)  # cut by the cleanup: expected
        await client.put(http, url, "jobs/1", b"queued")
        await first_event
        self.assertIn(b"jobs/1", b"".join(received))

    async def test_ttl_expires_in_real_time(self) -> None:
        """The in-process server keeps real time: a short TTL runs out."""
        url = self.start_kvcache()
        http = self.kvcache_client()
        await client.put(http, url, "session", b"x", ttl=0.2)
        await deferLater(reactor, 0.3, lambda: None)
        with self.assertRaises(client.NotFoundError):
            await client.get_entry(http, url, "session")

    async def test_on_disk_store_survives_a_restart(self) -> None:
        """With data_dir, a second server on the same directory sees the data."""
        data_dir = self.mktemp()
        url = self.start_kvcache(data_dir=data_dir)
        http = self.kvcache_client()
        await client.put(http, url, "kept", b"on disk")
        await self.kvcache.stop()
        url = self.start_kvcache(data_dir=data_dir)
        entry = await client.get_entry(http, url, "kept")
        self.assertEqual(entry.value, b"on disk")

    async def test_servers_are_independent(self) -> None:
        """Two servers in one test have separate stores and ports."""
        first = self.start_kvcache()
        second = self.start_kvcache()
        self.assertNotEqual(first, second)
        http = self.kvcache_client()
        await client.put(http, first, "k", b"1")
        with self.assertRaises(client.NotFoundError):
            await client.get_entry(http, second, "k")
