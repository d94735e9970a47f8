"""
Reads of the past through the v1 API, in memory: C{GET /v1/kv/{key}?revision=N},
listings at a revision, and paged listings pinned by their cursor; with the
problems for compacted and future revisions and for a store without history.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from kvtwist.auth import Authorizer, Token
from kvtwist.interfaces import IHistoricalStore
from kvtwist.store.cache import CachedStore
from kvtwist.testing import MemoryStore, memory_root
from kvtwist.web.v1.history import decode_cursor, encode_cursor
from tests.helpers.webtest import StoreWithoutHistory, TreeClient


class HistoryCase(SynchronousTestCase):
    """A fresh in-memory tree over a cached MemoryStore per test."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = MemoryStore(self.clock)
        self.client = TreeClient(self, memory_root(CachedStore(self.store, 1 << 20)))

    def put(self, key, body=b"v", **headers):
        return self.client.request("PUT", "/v1/kv/" + key, body=body, headers=headers)


class ReadAtRevisionTests(HistoryCase):
    """GET /v1/kv/{key}?revision=N"""

    def test_each_version(self):
        """Each revision answers that version's value, ETag, type and metadata."""
        self.put("a", b"one", **{"Content-Type": "text/plain"})
        self.put("a", b"two", **{"Content-Type": "application/json"})
        self.client.request("DELETE", "/v1/kv/a")
        first = self.client.request("GET", "/v1/kv/a?revision=1")
        self.assertEqual((first.status, first.body, first.content_type), (200, b"one", "text/plain"))
        self.assertEqual(
            (first.header("etag"), first.header("kv-version"), first.header("kv-create-revision")),
            ('"1"', "1", "1"),
        )
        self.assertEqual(first.header("kv-revision"), "3")
        second = self.client.request("GET", "/v1/kv/a?revision=2")
        self.assertEqual((second.body, second.header("etag"), second.header("kv-version")), (b"two", '"2"', "2"))
        self.client.problem("GET", "/v1/kv/a?revision=3", 404, "key-not-found")
        self.client.problem("GET", "/v1/kv/a?revision=0", 404, "key-not-found")
        head = self.client.request("HEAD", "/v1/kv/a?revision=1")
        self.assertEqual((head.status, head.body, head.header("etag")), (200, b"", '"1"'))

    def test_conditional_read_at_revision(self):
        """If-None-Match with that version's ETag is a 304."""
        self.put("a", b"one")
        self.put("a", b"two")
        answer = self.client.request("GET", "/v1/kv/a?revision=1", headers={"If-None-Match": '"1"'})
        self.assertEqual(answer.status, 304)

    def test_compacted_is_410(self):
        """A revision older than the history kept is a 410 naming the compact revision."""
        for value in (b"1", b"2", b"3"):
            self.put("a", value)
        self.successResultOf(self.store.compact(2, 100))
        answer = self.client.problem("GET", "/v1/kv/a?revision=1", 410, "compacted")
        self.assertEqual(
            (answer.json["compact_revision"], answer.json["requested_revision"]), (2, 1)
        )
        self.assertEqual(self.client.request("GET", "/v1/kv/a?revision=2").body, b"2")

    def test_future_is_400(self):
        """A revision the store has not reached is a 400 naming the current one."""
        self.put("a")
        answer = self.client.problem("GET", "/v1/kv/a?revision=2", 400, "future-revision")
        self.assertEqual(answer.json["current_revision"], 1)

    def test_bad_revision_parameters(self):
        """A revision that is not a non-negative integer, or one with index, is a 400."""
        self.put("a")
        for query in ("revision=-1", "revision=x", "revision=", "revision=1&index=1"):
            self.client.problem("GET", "/v1/kv/a?" + query, 400, "bad-parameter")

    def test_store_without_history(self):
        """A store that keeps no history answers 501 history-unsupported, changing nothing."""
        plain = StoreWithoutHistory(self.clock)
        self.assertFalse(IHistoricalStore.providedBy(plain))
        client = TreeClient(self, memory_root(plain))
        client.request("PUT", "/v1/kv/a", body=b"1")
        client.problem("GET", "/v1/kv/a?revision=1", 501, "history-unsupported")
        client.problem("GET", "/v1/kv/?revision=1", 501, "history-unsupported")
        page = client.request("GET", "/v1/kv/?limit=1").json
        self.assertEqual(page["cursor"], None)
        client.request("PUT", "/v1/kv/b", body=b"1")
        page = client.request("GET", "/v1/kv/?limit=1").json
        self.assertEqual(decode_cursor(page["cursor"]), (None, "a"))
        rest = client.request("GET", "/v1/kv/?limit=1&cursor=" + page["cursor"]).json
        self.assertEqual([i["key"] for i in rest["items"]], ["b"])




class ListingAtRevisionTests(HistoryCase):
    """GET /v1/kv/?prefix=P&revision=N and the pinned cursor."""

    def test_list_as_of_revision(self):
        """A listing at a revision shows the keys, values and metadata of then."""
        for key in ("p/a", "p/b", "q"):
            self.put(key, b"old")
        self.client.request("DELETE", "/v1/kv/p/a")
        self.put("p/b", b"new")
        self.put("p/c", b"new")
        page = self.client.request("GET", "/v1/kv/?prefix=p/&revision=3&values=1").json
        self.assertEqual(page["revision"], 3)
        self.assertEqual(
            [(i["key"], i["mod_revision"], i["value_base64"]) for i in page["items"]],
            [("p/a", 1, "b2xk"), ("p/b", 2, "b2xk")],
        )
        self.client.problem("GET", "/v1/kv/?revision=9", 400, "future-revision")

    def test_pages_pinned_while_writes_go_on(self):
        """
        Every page reached through the cursor is from the first page's
        revision, whatever is written meanwhile; next stays the last key.
        """
        for key in ("a", "b", "c", "d", "e"):
            self.put(key, b"1")
        first = self.client.request("GET", "/v1/kv/?limit=2").json
        self.assertEqual((first["next"], first["revision"]), ("b", 5))
        self.put("c", b"2")
        self.client.request("DELETE", "/v1/kv/d")
        self.put("bb", b"2")
        seen = [i["key"] for i in first["items"]]
        cursor = first["cursor"]
        while cursor is not None:
            page = self.client.request("GET", "/v1/kv/?limit=2&cursor=" + cursor).json
            self.assertEqual(page["revision"], 5)
            self.assertTrue(all(i["mod_revision"] <= 5 for i in page["items"]))
            seen += [i["key"] for i in page["items"]]
            cursor = page["cursor"]
        self.assertEqual(seen, ["a", "b", "c", "d", "e"])

    def test_pinned_revision_compacted(self):
        """A listing whose revision was compacted meanwhile is a 410."""
        for key in ("a", "b", "c"):
            self.put(key)
        first = self.client.request("GET", "/v1/kv/?limit=1").json
        self.put("a", b"2")
        self.successResultOf(self.store.compact(4, 100))
        self.client.problem("GET", "/v1/kv/?limit=1&cursor=" + first["cursor"], 410, "compacted")

    def test_bad_cursors(self):
        """A cursor a listing did not give, or one with after or revision, is a 400."""
        self.put("a")
        good = encode_cursor(1, "a")
        for query in ("cursor=nope", "cursor=e30", "cursor=" + encode_cursor(1, "a") + "x",
                      "cursor=%s&after=a" % good, "cursor=%s&revision=1" % good):
            answer = self.client.request("GET", "/v1/kv/?" + query)
            self.assertEqual(answer.status, 400, query)
            self.assertIn(answer.json["code"], ("bad-cursor", "bad-parameter"))


class CompactRouteTests(HistoryCase):
    """POST /v1/compact and the history state in /v1/limits."""

    def test_compact(self):
        """Compaction to N answers the history state; reads before N are then 410."""
        for value in (b"1", b"2", b"3"):
            self.put("a", value)
        answer = self.client.request("POST", "/v1/compact", json_body={"revision": 2})
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.json, {"revision": 3, "compact_revision": 2, "records": 2})
        self.client.problem("GET", "/v1/kv/a?revision=1", 410, "compacted")
        again = self.client.request("POST", "/v1/compact", json_body={"revision": 1})
        self.assertEqual(again.json["compact_revision"], 2)

    def test_bad_requests_change_nothing(self):
        """Malformed bodies and future revisions are 400, and compact nothing."""
        self.put("a")
        self.put("a")
        for body in ({}, {"revision": -1}, {"revision": "1"}, {"revision": 1, "x": 1}, [1], {"revision": True}):
            self.client.problem("POST", "/v1/compact", 400, "bad-compact", json_body=body)
        self.client.problem("POST", "/v1/compact", 400, "bad-json", body=b"{")
        self.client.problem("POST", "/v1/compact", 400, "future-revision", json_body={"revision": 3})
        self.assertEqual(self.store.compact_revision, 0)
        self.assertEqual(self.client.request("GET", "/v1/compact").status, 405)

    def test_needs_the_ops_permission(self):
        """Only a token with the ops permission may compact."""
        tokens = [Token("app", "s1", read=("",), write=("",)), Token("admin", "s2", ops=True)]
        client = TreeClient(self, memory_root(self.store, authorizer=Authorizer(tokens)))
        client.request("PUT", "/v1/kv/a", body=b"1", headers={"Authorization": "Bearer s1"})
        client.problem(
            "POST", "/v1/compact", 403, "forbidden", json_body={"revision": 1},
            headers={"Authorization": "Bearer s1"},
        )
        self.assertEqual(self.store.compact_revision, 0)
        answer = client.request(
            "POST", "/v1/compact", json_body={"revision": 1}, headers={"Authorization": "Bearer s2"}
        )
        self.assertEqual((answer.status, self.store.compact_revision), (200, 1))

    def test_without_history(self):
        """A store without history answers 501 and its limits leave compaction out."""
        client = TreeClient(self, memory_root(StoreWithoutHistory(self.clock)))
        client.problem("POST", "/v1/compact", 501, "history-unsupported", json_body={"revision": 0})
        limits = client.request("GET", "/v1/limits").json
        self.assertNotIn("history", limits)
        self.assertNotIn("history_retention", limits)

    def test_limits_show_history(self):
        """/v1/limits shows the retention and the revisions and records kept."""
        self.put("a")
        self.put("a")
        self.successResultOf(self.store.compact(1, 100))
        limits = self.client.request("GET", "/v1/limits").json
        self.assertEqual(limits["history"], {"revision": 2, "compact_revision": 1, "records": 2})
        self.assertEqual(limits["history_retention"], {"revisions": 1_000_000, "seconds": 3600.0})
        self.assertEqual((limits["compact_batch"], limits["compact_interval"]), (10_000, 10.0))
