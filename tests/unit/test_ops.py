"""
The operations endpoints and metrics: C{/v1/healthz}, C{/v1/readyz},
C{/v1/metrics} in memory through StubTreq (auth, readiness failures, the
exposition), the same at root paths on the operations listener's tree, the
metric objects themselves, and one end-to-end test that scrapes a real
C{twistd kvcache} (on its API and on C{--ops-listen}) and checks that every
counter moves.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Dict, Optional

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from kvtwist.auth import Authorizer, Token
from kvtwist.errors import ConflictError, InsufficientStorage
from kvtwist.limits import Limits
from kvtwist.metrics import Metrics, RequestStats, TimedStore
from kvtwist.model import Check, Put
from kvtwist.store.cache import CachedStore
from kvtwist.interfaces import (
    ICountedStore,
    IEtcdConnection,
    IHistoricalStore,
    ILeaseListing,
    ILeasingStore,
    ILinearizableReads,
    IReadCache,
    IWatchedStore,
    IWorkInFlight,
)
from kvtwist.metrics import TIMED_CAPABILITIES
from kvtwist.testing import MemoryStore, WatchedMemoryStore
from tests.helpers.capability_fakes import DeclaredLinearizable, UndeclaredExtras
from kvtwist.web.ops import ops_children, ops_root
from kvtwist.web.root import make_root
from tests.helpers.e2e import HOST, free_port, http_request, start_server, temp_dir
from tests.helpers.webtest import Answer

OPS = Token("ops", "o" * 20, ops=True)
APP = Token("app", "a" * 20, read=("app/",), write=("app/",))


def bearer(token: Token) -> Dict[str, str]:
    return {"authorization": "Bearer " + token.secret}


def parse_exposition(text: str) -> Dict[tuple, float]:
    """Samples of a Prometheus text exposition: C{(name, sorted labels) -> value}."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


class OpsTreeTests(SynchronousTestCase):
    """
    The operations endpoints in the real tree, over a MemoryStore: under
    C{/v1} on the API's tree (test paths name them as C{/healthz} and so
    on; C{mount} is put in front).
    """

    mount = "/v1"

    def setUp(self):
        self.clock = Clock()
        self.store = MemoryStore(self.clock)
        self.metrics = Metrics(process=False)
        self.build()

    def build(self, store=None, tokens=(OPS, APP)):
        store = store if store is not None else self.store
        self.stub = StubTreq(self.tree(store, Authorizer(tokens)))

    def tree(self, store, authorizer):
        """The tree under test."""
        return make_root(
            store,
            Limits(),
            clock=self.clock,
            authorizer=authorizer,
            ops=ops_children(store, self.metrics, self.clock),
        )

    def start(self, method: str, path: str, token: Optional[Token] = None) -> Deferred:
        headers = {b"authorization": [b"Bearer " + token.secret.encode()]} if token else {}
        return self.stub.request(method, "http://kv.test" + self.mount + path, headers=headers)

    def finish(self, d: Deferred) -> Answer:
        self.stub.flush()
        response = self.successResultOf(d)
        content = self.stub.content(response)
        self.stub.flush()
        return Answer(response.code, response.headers, self.successResultOf(content))

    def request(self, method: str, path: str, token: Optional[Token] = None) -> Answer:
        return self.finish(self.start(method, path, token))

    def test_healthz_needs_no_token(self):
        """/healthz answers 200 JSON to anyone, even with auth on, and is never cached."""
        answer = self.request("GET", "/healthz")
        self.assertEqual((answer.status, answer.json), (200, {"status": "alive"}))
        self.assertEqual(answer.header("cache-control"), "no-store")
        self.assertEqual(self.request("HEAD", "/healthz").status, 200)

    def test_other_methods_405(self):
        """Other methods on the operations endpoints are 405 with Allow."""
        for path in ("/healthz", "/readyz", "/metrics"):
            answer = self.request("POST", path, OPS)
            self.assertEqual(answer.status, 405, path)
            self.assertEqual(answer.header("allow"), "GET, HEAD")
            self.assertEqual(answer.json["code"], "method-not-allowed")

    def test_readyz_and_metrics_need_ops_token(self):
        """/readyz and /metrics: 401 with no token, 403 for a token without ops, 200 for an ops token."""
        for path in ("/readyz", "/metrics"):
            answer = self.request("GET", path)
            self.assertEqual(answer.status, 401, path)
            self.assertIn("Bearer", answer.header("www-authenticate"))
            answer = self.request("GET", path, APP)
            self.assertEqual((answer.status, answer.json["code"]), (403, "forbidden"), path)
            self.assertEqual(self.request("GET", path, OPS).status, 200, path)

    def test_auth_off_everyone_is_ops(self):
        """With no tokens configured, /readyz and /metrics are open."""
        self.build(tokens=())
        self.assertEqual(self.request("GET", "/readyz").status, 200)
        self.assertEqual(self.request("GET", "/metrics").status, 200)

    def test_ready(self):
        """/readyz is 200 with the revision when the store's round trip succeeds."""
        answer = self.request("GET", "/readyz", OPS)
        self.assertEqual((answer.status, answer.json), (200, {"status": "ready", "revision": 0}))

    def test_not_ready_when_closed(self):
        """A closed store makes /readyz a 503 problem saying so."""
        self.store.close()
        answer = self.request("GET", "/readyz", OPS)
        self.assertEqual(answer.status, 503)
        self.assertEqual(answer.content_type, "application/problem+json")
        self.assertEqual(answer.json["code"], "store-unavailable")
        self.assertIn("closed", answer.json["detail"])

    def test_not_ready_when_ping_hangs(self):
        """A store that does not answer its ping within 5 s makes /readyz a 503."""
        self.store.ping = lambda: Deferred()
        d = self.start("GET", "/readyz", OPS)
        self.stub.flush()
        self.assertNoResult(d)
        self.clock.advance(5)
        answer = self.finish(d)
        self.assertEqual(answer.status, 503)
        self.assertIn("did not answer within 5 seconds", answer.json["detail"])

    def test_not_ready_on_disk_error(self):
        """A failing ping (a disk error) is a 503 naming the error, without a traceback."""
        self.store.ping = lambda: fail(OSError(28, "No space left on device"))
        answer = self.request("GET", "/readyz", OPS)
        self.assertEqual(answer.status, 503)
        self.assertIn("OSError", answer.json["detail"])
        self.assertIn("No space left", answer.json["detail"])
        self.assertNotIn("Traceback", answer.json["detail"])

    def test_not_ready_while_writes_fail(self):
        """While the store cannot write (a full disk), /readyz is 503 with the store's error and a commit is 507; once the write probe passes again, /readyz is 200."""
        self.store.fail_commits = InsufficientStorage("the commit could not be written: disk full")
        answer = self.request("GET", "/readyz", OPS)
        self.assertEqual((answer.status, answer.json["code"]), (503, "insufficient-storage"))
        self.assertIn("disk full", answer.json["detail"])
        if self.mount:  # (the operations listener serves no API to write through)
            put = self.finish(
                self.stub.request(
                    "PUT",
                    "http://kv.test/v1/kv/app/x",
                    data=b"1",
                    headers={b"authorization": [b"Bearer " + APP.secret.encode()]},
                )
            )
            self.assertEqual((put.status, put.json["code"]), (507, "insufficient-storage"))
        self.store.fail_commits = None
        self.assertEqual(self.request("GET", "/readyz", OPS).status, 200)

    def test_probes_in_flight_share_one_write(self):
        """Readiness probes that arrive while one is in flight share its outcome: one store write, however many ask."""
        pings = []
        self.store.ping = lambda: pings.append(Deferred()) or pings[-1]
        started = [self.start("GET", "/readyz", OPS) for _ in range(3)]
        self.stub.flush()
        self.assertEqual(len(pings), 1)
        pings[0].callback(None)
        for d in started:
            self.assertEqual(self.finish(d).status, 200)
        # The next probe, after the answer, writes again.
        later = self.start("GET", "/readyz", OPS)
        self.stub.flush()
        self.assertEqual(len(pings), 2)
        pings[1].errback(InsufficientStorage("disk full"))
        self.assertEqual(self.finish(later).status, 503)

    def test_metrics_exposition(self):
        """/metrics is the Prometheus text format of this kvcache's own registry."""
        answer = self.request("GET", "/metrics", OPS)
        self.assertEqual(answer.status, 200)
        self.assertTrue(answer.header("content-type").startswith("text/plain; version=0.0.4"))
        names = {family.name for family in text_string_to_metric_families(answer.body.decode())}
        for name in (
            "kvtwist_http_requests",
            "kvtwist_http_request_duration_seconds",
            "kvtwist_rejected_requests",
            "kvtwist_commits",
            "kvtwist_commit_duration_seconds",
            "kvtwist_sync_duration_seconds",
        ):
            self.assertIn(name, names)


class OpsListenerTreeTests(OpsTreeTests):
    """
    The operations listener's tree (C{--ops-listen}): the same endpoints,
    at root paths, with the same authentication; nothing else is there.
    """

    mount = ""

    def tree(self, store, authorizer):
        return ops_root(store, self.metrics, self.clock, authorizer)

    def test_nothing_else(self):
        """The API is not served here: other paths are problem+json 404s, with or without a token."""
        for path in ("/", "/v1/kv/a", "/set", "/a", "/v1/healthz", "/healthz/more"):
            answer = self.request("GET", path, OPS)
            self.assertEqual((answer.status, answer.json["code"]), (404, "not-found"), path)
        self.assertEqual(self.request("GET", "/v1/kv/a").status, 401)


class MetricsObjectTests(SynchronousTestCase):
    """L{Metrics}, L{RequestStats} and L{TimedStore} directly."""

    def sample(self, metrics, name, **labels):
        return metrics.registry.get_sample_value(name, labels)

    def test_own_registry(self):
        """Each Metrics has its own registry; nothing lands in prometheus_client's global one."""
        first, second = Metrics(process=False), Metrics(process=False)
        first.reject("max_body")
        self.assertEqual(self.sample(first, "kvtwist_rejected_requests_total", limit="max_body"), 1)
        self.assertEqual(self.sample(second, "kvtwist_rejected_requests_total", limit="max_body"), 0)
        self.assertIsNone(REGISTRY.get_sample_value("kvtwist_rejected_requests_total", {"limit": "max_body"}))

    def test_request_histogram_buckets(self):
        """Latencies land in cumulative le buckets (upper bounds inclusive), with count and sum."""
        stats = RequestStats(buckets=(0.1, 1.0))
        for seconds in (0.05, 0.1, 0.5, 2.0):
            stats.observe("/r", "GET", 200, seconds)
        families = {family.name: family for family in stats.collect()}
        samples = {
            (s.name, s.labels.get("le")): s.value
            for s in families["kvtwist_http_request_duration_seconds"].samples
        }
        self.assertEqual(
            samples,
            {
                ("kvtwist_http_request_duration_seconds_bucket", "0.1"): 2,
                ("kvtwist_http_request_duration_seconds_bucket", "1.0"): 3,
                ("kvtwist_http_request_duration_seconds_bucket", "+Inf"): 4,
                ("kvtwist_http_request_duration_seconds_count", None): 4,
                ("kvtwist_http_request_duration_seconds_sum", None): 2.65,
            },
        )

    def test_timed_store_commits(self):
        """Commits through TimedStore are counted by outcome and timed on the clock."""
        clock = Clock()
        metrics = Metrics(process=False)
        store = TimedStore(MemoryStore(clock), metrics, clock)
        self.successResultOf(store.commit([Put("a", b"1")]))
        self.failureResultOf(store.commit([], [Check.absent("a")]), ConflictError)
        self.assertEqual(self.sample(metrics, "kvtwist_commits_total", outcome="ok"), 1)
        self.assertEqual(self.sample(metrics, "kvtwist_commits_total", outcome="conflict"), 1)
        self.assertEqual(self.sample(metrics, "kvtwist_commit_duration_seconds_count"), 1)
        self.assertEqual(store.revision, 1)
        self.assertEqual(store.key_count, 1)

    def test_sync_observer(self):
        """observe_sync records the sync's seconds and how many commits it carried."""
        metrics = Metrics(process=False)
        metrics.observe_sync(0.004, 3)
        self.assertEqual(self.sample(metrics, "kvtwist_sync_duration_seconds_count"), 1)
        self.assertEqual(self.sample(metrics, "kvtwist_commits_per_sync_bucket", le="4.0"), 1)
        self.assertEqual(self.sample(metrics, "kvtwist_commits_per_sync_bucket", le="2.0"), 0)

    def test_state_read_at_scrape_time(self):
        """Cache, key and revision figures are read from the live store when scraped."""
        clock = Clock()
        metrics = Metrics(process=False)
        store = CachedStore(MemoryStore(clock), 1 << 20)
        metrics.watch(store=store)
        self.successResultOf(store.commit([Put("a", b"1")]))
        self.successResultOf(store.get("a"))
        self.successResultOf(store.get("b"))
        self.assertEqual(self.sample(metrics, "kvtwist_cache_hits_total"), 1)
        self.assertEqual(self.sample(metrics, "kvtwist_cache_misses_total"), 1)
        self.assertEqual(self.sample(metrics, "kvtwist_keys"), 1)
        self.assertEqual(self.sample(metrics, "kvtwist_store_revision"), 1)
        self.assertRaises(TypeError, metrics.watch, nonsense=1)

    def test_undeclared_cache_and_count_are_not_read(self):
        """
        A store with a cache's counters and a key count that declares neither
        IReadCache nor ICountedStore shows no cache metrics and 0 keys.
        """
        metrics = Metrics(process=False)
        store = UndeclaredExtras()
        self.successResultOf(store.commit([Put("a", b"1")]))
        metrics.watch(store=store)
        self.assertIsNone(self.sample(metrics, "kvtwist_cache_hits_total"))
        self.assertIsNone(self.sample(metrics, "kvtwist_cache_max_bytes"))
        self.assertEqual(self.sample(metrics, "kvtwist_keys"), 0)
        self.assertEqual(self.sample(metrics, "kvtwist_store_revision"), 1)

    def test_timed_store_has_exactly_the_capabilities_it_wraps(self):
        """
        TimedStore declares each capability it forwards exactly when the
        store it wraps declares it, and provides each fully (verifyObject).
        """
        clock = Clock()
        for inner, expected in [
            (MemoryStore(clock), {IHistoricalStore, ILeasingStore, ILeaseListing, ICountedStore}),
            (WatchedMemoryStore(clock),
             {IHistoricalStore, ILeasingStore, ILeaseListing, ICountedStore, IWatchedStore}),
            (DeclaredLinearizable(clock), {IHistoricalStore, ILinearizableReads}),
            (UndeclaredExtras(clock), {IHistoricalStore}),
        ]:
            timed = TimedStore(inner, Metrics(process=False), clock)
            declared = {capability for capability in TIMED_CAPABILITIES if capability.providedBy(timed)}
            self.assertEqual(declared, expected, type(inner).__name__)
            for capability in declared:
                self.assertTrue(verifyObject(capability, timed))
        self.assertEqual(
            set(TIMED_CAPABILITIES),
            {IHistoricalStore, ILeasingStore, ILeaseListing, ILinearizableReads, IWatchedStore,
             ICountedStore, IEtcdConnection, IWorkInFlight},
        )

    def test_timed_store_forwards_what_it_declares(self):
        """Through TimedStore, a declared capability reaches the store: its linearizable reads, its resets, its count."""
        clock = Clock()
        inner = WatchedMemoryStore(clock)
        timed = TimedStore(inner, Metrics(process=False), clock)
        timed.add_reset_listener(print)
        self.assertEqual(inner.reset_listeners, [print])
        self.successResultOf(timed.commit([Put("a", b"1")]))
        self.assertEqual(timed.key_count, 1)
        linearizable = DeclaredLinearizable(clock)
        self.successResultOf(linearizable.commit([Put("a", b"1")]))
        timed = TimedStore(linearizable, Metrics(process=False), clock)
        self.assertEqual(self.successResultOf(timed.get_linearizable("a")).value, b"1")
        self.assertEqual(linearizable.linearizable_reads, ["a"])

    def test_timed_store_goes_under_the_cache(self):
        """A TimedStore over a read cache is refused: it forwards no IReadCache, so the cache goes above it."""
        clock = Clock()
        cache = CachedStore(MemoryStore(clock), 1 << 20)
        self.assertTrue(IReadCache.providedBy(cache))
        self.assertRaises(TypeError, TimedStore, cache, Metrics(process=False), clock)

    def test_history_gauges(self):
        """A store with history (through TimedStore and the cache) shows its compact revision and records."""
        clock = Clock()
        metrics = Metrics(process=False)
        store = CachedStore(TimedStore(MemoryStore(clock), metrics, clock), 1 << 20)
        metrics.watch(store=store)
        for value in (b"1", b"2", b"3"):
            self.successResultOf(store.commit([Put("a", value)]))
        self.successResultOf(store.compact(2, 100))
        self.assertEqual(self.sample(metrics, "kvtwist_compact_revision"), 2)
        self.assertEqual(self.sample(metrics, "kvtwist_history_records"), 2)


class MetricsEndToEndTests(SynchronousTestCase):
    """A real kvcache's /metrics moves with what it does."""

    def test_counters_move(self):
        """
        After a write, cached reads, an oversized body, an open
        transaction, an expiring key and an open long-poll, the scraped
        exposition shows each: requests by route and status, cache hits,
        commits and their latency, syncs, rejections by limit, open
        transactions, keys, expirations and watchers. Readiness and
        metrics need the ops token.
        """
        base = temp_dir(self, "ops")
        tokens = os.path.join(base, "tokens.toml")
        with open(tokens, "w") as f:
            f.write(
                '[tokens.ops]\nsecret = "%s"\nops = true\n'
                '[tokens.app]\nsecret = "%s"\nread = [""]\nwrite = [""]\n'
                % (OPS.secret, APP.secret)
            )
        os.chmod(tokens, 0o600)
        ops_port = free_port()
        server = start_server(
            self,
            extra_args=[
                "--token-file", tokens, "--max-body", "1000", "--sweep-interval", "0.2",
                "--ops-listen", "tcp:%d:interface=%s" % (ops_port, HOST),
            ],
        )
        url = server.url
        ops_url = "http://%s:%d" % (HOST, ops_port)
        app, ops = bearer(APP), bearer(OPS)

        # The helper's probe took the 401 of /v1/readyz for "up"; wait
        # (bounded) until the store is open for real.
        for _ in range(100):
            if http_request(url, "GET", "/v1/readyz", headers=ops)[0] == 200:
                break
            time.sleep(0.05)
        self.assertEqual(http_request(url, "GET", "/v1/healthz")[0], 200)
        self.assertEqual(http_request(url, "GET", "/v1/readyz")[0], 401)
        self.assertEqual(http_request(url, "GET", "/v1/readyz", headers=app)[0], 403)
        self.assertEqual(http_request(url, "GET", "/v1/readyz", headers=ops)[0], 200)
        self.assertEqual(http_request(url, "GET", "/v1/metrics", headers=app)[0], 403)
        # The root's single segments are the seed's keys, on the API's
        # listener; the operations listener serves the probes there.
        self.assertEqual(http_request(url, "GET", "/healthz", headers=app)[0], 404)
        self.assertEqual(http_request(ops_url, "GET", "/healthz")[0], 200)
        self.assertEqual(http_request(ops_url, "GET", "/readyz", headers=ops)[0], 200)
        self.assertEqual(http_request(ops_url, "GET", "/metrics")[0], 401)
        self.assertIn(b"kvtwist_commits", http_request(ops_url, "GET", "/metrics", headers=ops)[2])
        self.assertEqual(http_request(ops_url, "GET", "/v1/kv/a", headers=app)[0], 404)

        self.assertEqual(http_request(url, "PUT", "/v1/kv/a", b"1", app)[0], 201)
        for _ in range(2):
            self.assertEqual(http_request(url, "GET", "/v1/kv/a", headers=app)[0], 200)
        self.assertEqual(http_request(url, "PUT", "/v1/kv/big", b"x" * 2000, app)[0], 413)
        self.assertEqual(http_request(url, "POST", "/v1/txn", b"", app)[0], 201)
        self.assertEqual(http_request(url, "PUT", "/v1/kv/brief?ttl=0.5", b"1", app)[0], 201)

        # A long-poll held open on a raw socket while we scrape.
        poll = socket.create_connection((HOST, server.port), timeout=10)
        self.addCleanup(poll.close)
        poll.sendall(
            b"GET /v1/kv/a?index=999&wait=30 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n\r\n"
            % (APP.secret.encode(),)
        )

        def scrape():
            status, headers, body = http_request(url, "GET", "/v1/metrics", headers=ops)
            self.assertEqual(status, 200)
            return parse_exposition(body.decode("utf-8"))

        # Bounded wait for the sweeper and the long-poll to show.
        deadline = time.monotonic() + 10
        for _ in range(100):
            samples = scrape()
            if (
                samples.get(("kvtwist_expirations_total", ())) == 1
                and samples.get(("kvtwist_watchers", ())) == 1
            ) or time.monotonic() > deadline:
                break
            time.sleep(0.1)

        def get(name, **labels):
            return samples.get((name, tuple(sorted(labels.items()))))

        self.assertEqual(get("kvtwist_http_requests_total", route="/v1/kv/{key}", method="PUT", status="201"), 2)
        self.assertEqual(get("kvtwist_http_requests_total", route="/v1/kv/{key}", method="GET", status="200"), 2)
        self.assertGreaterEqual(
            get("kvtwist_http_requests_total", route="(unauthenticated)", method="GET", status="401"), 1
        )
        self.assertGreaterEqual(get("kvtwist_http_request_duration_seconds_count", route="/v1/kv/{key}"), 4)
        self.assertGreaterEqual(get("kvtwist_cache_hits_total"), 1)
        self.assertGreaterEqual(get("kvtwist_commits_total", outcome="ok"), 3)
        self.assertGreaterEqual(get("kvtwist_commit_duration_seconds_count"), 3)
        self.assertGreaterEqual(get("kvtwist_sync_duration_seconds_count"), 1)
        self.assertEqual(get("kvtwist_rejected_requests_total", limit="max_body"), 1)
        self.assertEqual(get("kvtwist_open_transactions"), 1)
        self.assertEqual(get("kvtwist_keys"), 1)
        self.assertEqual(get("kvtwist_expirations_total"), 1)
        self.assertEqual(get("kvtwist_watchers"), 1)
        self.assertGreaterEqual(get("kvtwist_open_connections"), 2)
        self.assertGreater(get("process_resident_memory_bytes"), 0)
        self.assertEqual(server.terminate(), 0)
