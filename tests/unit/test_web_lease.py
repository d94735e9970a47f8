# -*- test-case-name: tests.unit.test_web_lease -*-
"""
The lease routes in memory: grant, attach through PUT, batches and
transactions, keepalive, show, list, revoke and expiry (through the
sweeper, on a task.Clock), errors, permissions, limits and metrics.
"""

import treq
from twisted.internet.task import Clock
from zope.interface import implementer_only
from zope.interface.verify import verifyObject
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.auth import Authorizer, Token
from kvtwist.interfaces import IHistoricalStore, ILeaseListing, ILeasingStore
from kvtwist.limits import Limits
from kvtwist.metrics import Metrics, TimedStore
from kvtwist.store.cache import CachedStore
from kvtwist.sweeper import Sweeper
from kvtwist.testing import MemoryStore, memory_root
from tests.unit.test_watch import parse_sse
from tests.helpers.webtest import TreeClient


@implementer_only(IHistoricalStore)
class PlainStore(MemoryStore):
    """A memory store that does not claim leases."""


@implementer_only(IHistoricalStore, ILeasingStore)
class UnlistedLeases(MemoryStore):
    """A memory store with leases that does not claim to list them."""


class LeaseCase(SynchronousTestCase):
    """A cached MemoryStore tree on a Clock, with a sweeper."""

    limits = Limits(max_leases=3, max_lease_ttl=100.0)

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = CachedStore(MemoryStore(self.clock), 1 << 20)
        self.client = TreeClient(self, memory_root(self.store, limits=self.limits))
        self.sweeper = Sweeper(self.store, self.clock, self.limits)
        self.sweeper.startService()
        self.addCleanup(self.sweeper.stopService)

    def grant(self, ttl=10):
        answer = self.client.request("POST", "/v1/lease", json_body={"ttl": ttl})
        self.assertEqual(answer.status, 201, answer.body)
        return answer.json["id"]

    def put(self, key, lease, body=b"v"):
        return self.client.request("PUT", "/v1/kv/%s?lease=%d" % (key, lease), body=body)


class LeaseRouteTests(LeaseCase):
    """POST /v1/lease, GET and DELETE /v1/lease/{id}, POST .../keepalive."""

    def test_grant_attach_show(self):
        """A grant answers 201 {id, ttl}; a lease shows its ttl, remaining time and keys."""
        answer = self.client.request("POST", "/v1/lease", json_body={"ttl": 10})
        self.assertEqual(answer.status, 201)
        lease = answer.json["id"]
        self.assertEqual(answer.json, {"id": lease, "ttl": 10})
        self.assertEqual(answer.header("location"), "/v1/lease/%d" % lease)
        self.assertEqual(self.put("b", lease).status, 201)
        self.assertEqual(self.put("a", lease).status, 201)
        self.clock.advance(2.5)
        shown = self.client.request("GET", "/v1/lease/%d" % lease)
        self.assertEqual(shown.json, {"id": lease, "ttl": 10, "remaining": 7.5, "keys": ["a", "b"]})

    def test_keepalive_costs_no_revision(self):
        """A keepalive answers {id, ttl} and moves the deadline, with no new revision and no event."""
        lease = self.grant(10)
        self.put("a", lease)
        response, chunks, _ = self.stream()
        before = self.client.request("GET", "/v1/kv/a").header("kv-revision")
        self.clock.advance(9)
        answer = self.client.request("POST", "/v1/lease/%d/keepalive" % lease)
        self.assertEqual((answer.status, answer.json), (200, {"id": lease, "ttl": 10}))
        self.assertEqual(answer.header("kv-revision"), before)
        self.clock.advance(9)
        self.assertEqual(self.client.request("GET", "/v1/kv/a").header("kv-revision"), before)
        self.client.stub.flush()
        # Only heartbeats, at the unchanged revision: no change event.
        events = parse_sse(b"".join(chunks))
        self.assertEqual({(i, kind) for i, kind, _ in events}, {(int(before), "progress")} if events else set())

    def stream(self):
        """Open an event stream on every key: (response, chunks received, done)."""
        stub = self.client.stub
        d = stub.request("GET", "http://kv.test/v1/watch")
        stub.flush()
        response = self.successResultOf(d)
        chunks = []
        done = treq.collect(response, chunks.append)
        stub.flush()
        return response, chunks, done

    def test_revoke_deletes_keys_in_one_commit(self):
        """DELETE revokes: 204, its keys deleted at one revision, then the lease is 404."""
        lease = self.grant()
        self.put("a", lease)
        self.put("b", lease)
        self.client.request("PUT", "/v1/kv/c", body=b"v")
        _, chunks, _ = self.stream()
        answer = self.client.request("DELETE", "/v1/lease/%d" % lease)
        self.assertEqual(answer.status, 204)
        self.assertEqual(answer.header("kv-revision"), "4")
        self.client.stub.flush()
        self.assertEqual(
            [(i, kind, d["key"]) for i, kind, d in parse_sse(b"".join(chunks))],
            [(4, "delete", "a"), (4, "delete", "b")],
        )
        self.client.problem("GET", "/v1/kv/a", 404, "key-not-found")
        self.assertEqual(self.client.request("GET", "/v1/kv/c").status, 200)
        for method, path in (("GET", ""), ("DELETE", ""), ("POST", "/keepalive")):
            self.client.problem(method, "/v1/lease/%d%s" % (lease, path), 404, "lease-not-found")

    def test_expiry_expires_keys_in_one_commit(self):
        """At its deadline the lease is 404 at once; the sweeper expires its keys in one commit."""
        lease = self.grant(5)
        self.put("a", lease)
        self.put("b", lease)
        _, chunks, _ = self.stream()
        self.clock.advance(5)
        self.client.problem("POST", "/v1/lease/%d/keepalive" % lease, 404, "lease-not-found")
        self.client.problem("PUT", "/v1/kv/c?lease=%d" % lease, 404, "lease-not-found")
        self.clock.advance(1)
        self.client.stub.flush()
        self.assertEqual(
            [(i, kind, d["key"]) for i, kind, d in parse_sse(b"".join(chunks))],
            [(3, "expire", "a"), (3, "expire", "b")],
        )
        self.assertEqual(self.sweeper.leases_expired, 1)
        self.client.problem("GET", "/v1/kv/b", 404, "key-not-found")

    def test_sweeper_wakes_at_the_deadline(self):
        """With a 1 s sweep interval, a lease's keys go exactly at its deadline, not up to a sweep later."""
        lease = self.grant(3.5)
        self.put("a", lease)
        self.clock.advance(3.49)
        self.assertEqual(self.client.request("GET", "/v1/kv/a").status, 200)
        self.clock.advance(0.01)
        self.client.problem("GET", "/v1/kv/a", 404, "key-not-found")
        self.assertEqual(self.sweeper.leases_expired, 1)

    def test_batch_and_transaction_attach(self):
        """A batch set and a transaction PUT attach keys; an unknown lease fails the batch."""
        lease = self.grant()
        answer = self.client.request("POST", "/v1/batch", json_body={"ops": [
            {"op": "set", "key": "x", "value": 1, "lease": lease}]})
        self.assertEqual(answer.status, 200, answer.body)
        txn = self.client.request("POST", "/v1/txn").json["id"]
        self.client.request("PUT", "/v1/txn/%s/kv/y?lease=%d" % (txn, lease), body=b"1")
        self.assertEqual(self.client.request("POST", "/v1/txn/%s/commit" % txn).status, 200)
        self.assertEqual(self.client.request("GET", "/v1/lease/%d" % lease).json["keys"], ["x", "y"])
        self.client.problem("POST", "/v1/batch", 404, "lease-not-found", json_body={"ops": [
            {"op": "set", "key": "z", "value": 1}, {"op": "set", "key": "w", "value": 1, "lease": 7}]})
        self.client.problem("GET", "/v1/kv/z", 404, "key-not-found")

    def test_bad_input(self):
        """Bad ttls and lease ids are 400 problems and grant nothing."""
        for body in ({"ttl": 0}, {"ttl": -1}, {"ttl": 101}, {"ttl": "5"}, {"ttl": True}, {}, [5],
                     {"ttl": 5, "x": 1}):
            self.client.problem("POST", "/v1/lease", 400, "bad-ttl", json_body=body)
        self.client.problem("PUT", "/v1/kv/a?lease=abc", 400, "bad-lease", body=b"v")
        self.client.problem("PUT", "/v1/kv/a?lease=0", 400, "bad-lease", body=b"v")
        lease = self.grant()
        self.client.problem("GET", "/v1/lease/abc", 404, "lease-not-found")
        self.assertEqual(self.client.request("POST", "/v1/lease/abc").status, 405)
        self.assertEqual(self.store.lease_count, 1)

    def test_limit_and_metrics(self):
        """Past max_leases a grant is 429; /v1/limits reports it."""
        for _ in range(3):
            self.grant()
        self.client.problem("POST", "/v1/lease", 429, "limit-exceeded", json_body={"ttl": 5})
        limits = self.client.request("GET", "/v1/limits").json
        self.assertEqual((limits["max_leases"], limits["max_lease_ttl"]), (3, 100.0))


class LeaseListingTests(LeaseCase):
    """GET /v1/lease: the leases held, for operators."""

    limits = Limits(max_leases=10, max_lease_ttl=100.0)

    def test_list(self):
        """The held leases, soonest deadline first, with ttl, remaining and keys; ?limit= bounds them."""
        late = self.grant(30)
        soon = self.grant(10)
        gone = self.grant(20)
        self.put("b", soon)
        self.put("a", soon)
        self.put("c", late)
        self.client.request("DELETE", "/v1/lease/%d" % gone)
        self.clock.advance(2.5)
        answer = self.client.request("GET", "/v1/lease")
        self.assertEqual(answer.status, 200)
        self.assertEqual(
            answer.json,
            {
                "leases": [
                    {"id": soon, "ttl": 10, "remaining": 7.5, "keys": ["a", "b"]},
                    {"id": late, "ttl": 30, "remaining": 27.5, "keys": ["c"]},
                ],
                "more": False,
            },
        )
        limited = self.client.request("GET", "/v1/lease?limit=1").json
        self.assertEqual(([lease["id"] for lease in limited["leases"]], limited["more"]), ([soon], True))
        # Past its deadline a lease is no longer listed, swept or not.
        self.clock.advance(7.5)
        self.assertEqual([lease["id"] for lease in self.client.request("GET", "/v1/lease").json["leases"]], [late])

    def test_bad_limit(self):
        """A limit outside 1..1000 or an unknown parameter is a 400; nothing is listed."""
        for query in ("limit=0", "limit=1001", "limit=x"):
            self.client.problem("GET", "/v1/lease?" + query, 400, "bad-parameter")
        answer = self.client.request("GET", "/v1/lease?prefix=a")
        self.assertEqual(answer.status, 400)

    def test_only_readable_keys(self):
        """A token limited to some prefixes sees only the keys it may read; a reader may not list."""
        reader = Token("reader", "r", read=("",))
        app = Token("app", "a", read=("app/",), write=("app/",))
        admin = Token("admin", "x", read=("",), write=("",))
        client = TreeClient(self, memory_root(MemoryStore(self.clock), authorizer=Authorizer([reader, app, admin])))
        lease = client.request(
            "POST", "/v1/lease", json_body={"ttl": 5}, headers={"Authorization": "Bearer x"}
        ).json["id"]
        for key in ("app/a", "secret"):
            client.request("PUT", "/v1/kv/%s?lease=%d" % (key, lease), body=b"v", headers={"Authorization": "Bearer x"})
        listed = client.request("GET", "/v1/lease", headers={"Authorization": "Bearer a"}).json
        self.assertEqual(listed["leases"][0]["keys"], ["app/a"])
        client.problem("GET", "/v1/lease", 403, "forbidden", headers={"Authorization": "Bearer r"})

    def test_store_that_cannot_list(self):
        """A store with leases but without ILeaseListing answers 501 leases-unsupported; other calls work."""
        client = TreeClient(self, memory_root(UnlistedLeases(self.clock)))
        client.problem("GET", "/v1/lease", 501, "leases-unsupported")
        self.assertEqual(client.request("POST", "/v1/lease", json_body={"ttl": 5}).status, 201)

    def test_wrappers_declare_listing(self):
        """TimedStore and CachedStore provide ILeaseListing exactly when the store they wrap does."""
        timed = TimedStore(MemoryStore(self.clock), Metrics(process=False), self.clock)
        self.assertTrue(verifyObject(ILeaseListing, CachedStore(timed, 1 << 20)))
        unlisted = TimedStore(UnlistedLeases(self.clock), Metrics(process=False), self.clock)
        self.assertFalse(ILeaseListing.providedBy(CachedStore(unlisted, 1 << 20)))
        self.assertTrue(ILeasingStore.providedBy(CachedStore(unlisted, 1 << 20)))


class LeaseMetricsTests(LeaseCase):
    """kvtwist_open_leases and kvtwist_lease_expirations_total."""

    def test_open_leases_and_expirations(self):
        """The gauge counts held leases (through the read cache); the counter counts leases ended at their deadline."""
        metrics = Metrics(process=False)
        metrics.watch(store=self.store, sweeper=self.sweeper)
        self.grant(1)
        self.grant(10)

        def sample(name):
            return metrics.registry.get_sample_value(name)

        self.assertEqual((sample("kvtwist_open_leases"), sample("kvtwist_lease_expirations_total")), (2, 0))
        self.clock.advance(2)
        self.assertEqual((sample("kvtwist_open_leases"), sample("kvtwist_lease_expirations_total")), (1, 1))


    def test_wrappers_declare_leases(self):
        """TimedStore and CachedStore provide ILeasingStore exactly when the store they wrap does."""
        timed = TimedStore(MemoryStore(self.clock), Metrics(process=False), self.clock)
        self.assertTrue(verifyObject(ILeasingStore, timed))
        self.assertTrue(verifyObject(ILeasingStore, CachedStore(timed, 1 << 20)))

        plain = TimedStore(PlainStore(), Metrics(process=False), self.clock)
        self.assertFalse(ILeasingStore.providedBy(plain))
        self.assertFalse(ILeasingStore.providedBy(CachedStore(plain, 1 << 20)))


class LeaseUnsupportedTests(SynchronousTestCase):
    """A store without leases answers a clear 501 problem."""

    def test_unsupported(self):
        """Every lease route and ?lease= answer 501 leases-unsupported on a store without leases."""

        client = TreeClient(self, memory_root(PlainStore()))
        client.problem("POST", "/v1/lease", 501, "leases-unsupported", json_body={"ttl": 5})
        client.problem("GET", "/v1/lease/5", 501, "leases-unsupported")
        client.problem("PUT", "/v1/kv/a?lease=5", 501, "leases-unsupported", body=b"v")


class LeaseAuthTests(SynchronousTestCase):
    """Leases need write permission; a revoke needs it on every key of the lease."""

    def test_permissions(self):
        """A read-only token may not use leases; a token may not revoke keys it may not write."""
        reader = Token("reader", "r", read=("",))
        app = Token("app", "a", read=("app/",), write=("app/",))
        admin = Token("admin", "x", read=("",), write=("",))
        client = TreeClient(self, memory_root(MemoryStore(), authorizer=Authorizer([reader, app, admin])))

        def auth(token):
            return {"Authorization": "Bearer " + token.secret}

        client.problem("POST", "/v1/lease", 403, "forbidden", json_body={"ttl": 5}, headers=auth(reader))
        lease = client.request("POST", "/v1/lease", json_body={"ttl": 5}, headers=auth(app)).json["id"]
        client.request("PUT", "/v1/kv/app/a?lease=%d" % lease, body=b"v", headers=auth(app))
        client.request("PUT", "/v1/kv/secret?lease=%d" % lease, body=b"v", headers=auth(admin))
        shown = client.request("GET", "/v1/lease/%d" % lease, headers=auth(app))
        self.assertEqual(shown.json["keys"], ["app/a"])
        client.problem("DELETE", "/v1/lease/%d" % lease, 403, "forbidden", headers=auth(app))
        self.assertEqual(client.request("GET", "/v1/kv/secret", headers=auth(admin)).status, 200)
        self.assertEqual(client.request("DELETE", "/v1/lease/%d" % lease, headers=auth(admin)).status, 204)
