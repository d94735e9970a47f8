"""
The v1 API in memory: keys with revisions and CAS,
listing, transactions and batches, through StubTreq over a MemoryStore with
a task.Clock.

One module though long: the classes share one in-memory tree builder and its
client, and follow the v1 routes in order.
"""

import base64

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.limits import Limits
from kvtwist.model import Put
from kvtwist.staging import OP_OVERHEAD
from kvtwist.testing import MemoryStore, memory_root
from tests.helpers.capability_fakes import DeclaredLinearizable, UndeclaredExtras
from tests.helpers.webtest import TreeClient


class V1Case(SynchronousTestCase):
    """A fresh in-memory tree per test."""

    limits = Limits()

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = MemoryStore(self.clock)
        self.client = TreeClient(self, memory_root(self.store, limits=self.limits))

    def put(self, key_path, body=b"v", **headers):
        return self.client.request("PUT", "/v1/kv/" + key_path, body=body, headers=headers)


class KeyTests(V1Case):
    """GET, HEAD, PUT and DELETE of /v1/kv/{key}."""

    def test_put_get_roundtrip(self):
        """PUT stores the bytes and type; GET returns them with ETag and KV-Revision."""
        answer = self.put("a", b"\x00\x01binary", **{"Content-Type": "image/png"})
        self.assertEqual(answer.status, 201)
        self.assertEqual(answer.header("etag"), '"1"')
        self.assertEqual(answer.header("kv-revision"), "1")
        self.assertEqual(answer.header("location"), "/v1/kv/a")
        self.assertEqual(answer.json, {"key": "a", "revision": 1, "created": True, "version": 1})
        answer = self.client.request("GET", "/v1/kv/a")
        self.assertEqual((answer.status, answer.body), (200, b"\x00\x01binary"))
        self.assertEqual(answer.content_type, "image/png")
        self.assertEqual(answer.header("etag"), '"1"')
        self.assertEqual(answer.header("kv-version"), "1")
        self.assertEqual(answer.header("kv-revision"), "1")
        self.assertIsNone(answer.header("kv-expires"))

    def test_default_content_type(self):
        """A value sent without Content-Type is application/octet-stream."""
        self.client.request("PUT", "/v1/kv/a", body=b"x")
        self.assertEqual(
            self.client.request("GET", "/v1/kv/a").content_type, "application/octet-stream"
        )

    def test_update_is_200(self):
        """A PUT over an existing key is 200 with the new ETag and version."""
        self.put("a")
        answer = self.put("a", b"w")
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.header("etag"), '"2"')
        self.assertEqual(answer.json["version"], 2)

    def test_head(self):
        """HEAD answers GET's status and headers without the body."""
        self.put("a", b"hello")
        answer = self.client.request("HEAD", "/v1/kv/a")
        self.assertEqual((answer.status, answer.body), (200, b""))
        self.assertEqual(answer.header("etag"), '"1"')
        self.assertEqual(self.client.request("HEAD", "/v1/kv/nope").status, 404)

    def test_missing_key(self):
        """GET of an absent key is a 404 problem carrying KV-Revision."""
        self.put("other")
        answer = self.client.problem("GET", "/v1/kv/a", 404, "key-not-found")
        self.assertEqual(answer.header("kv-revision"), "1")

    def test_delete(self):
        """DELETE is 204, then the key is gone; deleting again is 404."""
        self.put("a")
        answer = self.client.request("DELETE", "/v1/kv/a")
        self.assertEqual((answer.status, answer.header("kv-revision")), (204, "2"))
        self.client.problem("GET", "/v1/kv/a", 404, "key-not-found")
        self.client.problem("DELETE", "/v1/kv/a", 404, "key-not-found")
        self.assertEqual(self.store.revision, 2)

    def test_slash_and_percent_2f_are_one_key(self):
        """/v1/kv/a%2Fb and /v1/kv/a/b name the same key."""
        self.put("a/b", b"1")
        self.assertEqual(self.client.request("GET", "/v1/kv/a%2Fb").body, b"1")
        self.put("x%2Fy", b"2")
        self.assertEqual(self.client.request("GET", "/v1/kv/x/y").body, b"2")
        self.assertEqual(self.put("a/b/", b"3").status, 201)
        self.assertEqual(self.client.request("GET", "/v1/kv/a/b/").body, b"3")

    def test_odd_keys(self):
        """Spaces, UTF-8, reserved names and leading slashes are ordinary keys."""
        for path, key in [
            ("with%20space", "with space"), ("%C3%A9t%C3%A9", "\u00e9t\u00e9"),
            ("set", "set"), ("commit", "commit"), ("v1", "v1"), ("%2Flead", "/lead"),
        ]:
            self.assertEqual(self.put(path, key.encode()).status, 201, path)
            self.assertEqual(self.client.request("GET", "/v1/kv/" + path).body, key.encode())
        listed = self.client.request("GET", "/v1/kv/").json["items"]
        self.assertIn("\u00e9t\u00e9", [item["key"] for item in listed])

    def test_bad_keys(self):
        """Keys that are not UTF-8 or are over 1024 bytes are 400."""
        self.client.problem("PUT", "/v1/kv/%FF", 400, "bad-key", body=b"x")
        self.client.problem("GET", "/v1/kv/" + "k" * 1025, 400, "key-too-long")
        self.assertEqual(self.store.revision, 0)

    def test_wrong_method_405(self):
        """A wrong method is 405 with Allow, on every v1 resource."""
        for method, path, allowed in [
            ("POST", "/v1/kv/a", "DELETE, GET, HEAD, PUT"),
            ("PUT", "/v1/kv/", "DELETE, GET, HEAD"),
            ("GET", "/v1/txn", "POST"),
            ("GET", "/v1/batch", "POST"),
            ("POST", "/v1/limits", "GET, HEAD"),
        ]:
            answer = self.client.problem(method, path, 405, "method-not-allowed")
            self.assertEqual(answer.header("allow"), allowed, path)
            self.assertIsNotNone(answer.header("kv-revision"))

    def test_head_without_get_is_405(self):
        """HEAD where there is no GET is 405 too (no body), not a 500."""
        answer = self.client.request("HEAD", "/v1/txn")
        self.assertEqual((answer.status, answer.header("allow")), (405, "POST"))

    def test_unknown_v1_paths(self):
        """Unknown paths under /v1 are 404 problems; /v1 alone is the seed's key v1."""
        for path in ("/v1/", "/v1/nope", "/v1/txn/", "/v1/limits/x"):
            self.client.problem("GET", path, 404, "not-found")
        self.client.problem("GET", "/v1", 404, "key-not-found")


class ConditionalTests(V1Case):
    """If-Match, If-None-Match: 412 on writes, 304 on reads."""

    def test_if_match_revision(self):
        """If-Match "<rev>" writes only when the ETag matches."""
        self.put("a")
        answer = self.client.problem("PUT", "/v1/kv/a", 412, "precondition-failed",
                                     body=b"x", headers={"If-Match": '"7"'})
        self.assertEqual(answer.json["current_revision"], 1)
        self.assertEqual(self.put("a", b"y", **{"If-Match": '"1"'}).status, 200)
        self.assertEqual(self.client.request("GET", "/v1/kv/a").body, b"y")

    def test_if_match_star(self):
        """If-Match: * needs the key to exist."""
        self.client.problem("PUT", "/v1/kv/a", 412, "precondition-failed",
                            body=b"x", headers={"If-Match": "*"})
        self.put("a")
        self.assertEqual(self.put("a", b"z", **{"If-Match": "*"}).status, 200)

    def test_if_none_match_star(self):
        """If-None-Match: * creates only (a lock)."""
        self.assertEqual(self.put("lock", **{"If-None-Match": "*"}).status, 201)
        self.client.problem("PUT", "/v1/kv/lock", 412, "precondition-failed",
                            body=b"x", headers={"If-None-Match": "*"})
        self.assertEqual(self.store.revision, 1)

    def test_unmatchable_if_match(self):
        """An If-Match tag that names no revision (or a weak one) never matches."""
        self.put("a")
        for tag in ('"abc"', 'W/"1"', "1"):
            self.client.problem("PUT", "/v1/kv/a", 412, "precondition-failed",
                                body=b"x", headers={"If-Match": tag})

    def test_bad_preconditions(self):
        """A list in If-Match, or an If-None-Match tag on a write, is 400."""
        self.put("a")
        self.client.problem("PUT", "/v1/kv/a", 400, "bad-precondition",
                            body=b"x", headers={"If-Match": '"1", "2"'})
        self.client.problem("PUT", "/v1/kv/a", 400, "bad-precondition",
                            body=b"x", headers={"If-None-Match": '"1"'})

    def test_delete_if_match(self):
        """DELETE honours If-Match: 412 on mismatch, 204 on match."""
        self.put("a")
        self.client.problem("DELETE", "/v1/kv/a", 412, "precondition-failed",
                            headers={"If-Match": '"9"'})
        answer = self.client.request("DELETE", "/v1/kv/a", headers={"If-Match": '"1"'})
        self.assertEqual(answer.status, 204)

    def test_delete_absent_with_if_match(self):
        """If-Match on an absent key fails the precondition (412, not 404)."""
        self.client.problem("DELETE", "/v1/kv/a", 412, "precondition-failed",
                            headers={"If-Match": "*"})

    def test_get_not_modified(self):
        """If-None-Match with the current ETag (or *) gives 304 with the ETag."""
        self.put("a")
        for tag in ('"1"', 'W/"1"', '"5", "1"', "*"):
            answer = self.client.request("GET", "/v1/kv/a", headers={"If-None-Match": tag})
            self.assertEqual((answer.status, answer.body), (304, b""), tag)
            self.assertEqual(answer.header("etag"), '"1"')
        answer = self.client.request("GET", "/v1/kv/a", headers={"If-None-Match": '"0"'})
        self.assertEqual(answer.status, 200)


class TTLTests(V1Case):
    """?ttl= on PUT: KV-Expires, and expiry on the injected clock."""

    def test_ttl_expires(self):
        """A key written with ttl shows KV-Expires and reads as absent after it."""
        answer = self.client.request("PUT", "/v1/kv/t?ttl=30", body=b"x")
        self.assertEqual(answer.status, 201)
        answer = self.client.request("GET", "/v1/kv/t")
        self.assertEqual(answer.header("kv-expires"), "2023-11-14T22:13:50.000Z")
        self.clock.advance(29)
        self.assertEqual(self.client.request("GET", "/v1/kv/t").status, 200)
        self.clock.advance(1)
        self.client.problem("GET", "/v1/kv/t", 404, "key-not-found")
        self.assertEqual(self.client.request("GET", "/v1/kv/").json["items"], [])

    def test_put_without_ttl_clears_it(self):
        """A PUT without ttl makes the key permanent again."""
        self.client.request("PUT", "/v1/kv/t?ttl=5", body=b"x")
        self.client.request("PUT", "/v1/kv/t", body=b"y")
        self.clock.advance(10)
        self.assertEqual(self.client.request("GET", "/v1/kv/t").body, b"y")

    def test_bad_ttl(self):
        """A ttl that is not a positive number of seconds is 400."""
        for ttl in ("0", "-1", "abc", "nan", "inf", "1e12"):
            self.client.problem("PUT", "/v1/kv/t?ttl=" + ttl, 400, "bad-ttl", body=b"x")
        self.assertEqual(self.store.revision, 0)


class ListingTests(V1Case):
    """GET /v1/kv/?prefix=&limit=&after=&values="""

    def test_prefix_and_pages(self):
        """Pages follow key order, each at one revision, with next as cursor."""
        for key in ("p/a", "p/b", "p/c", "q/a"):
            self.put(key, key.encode())
        page = self.client.request("GET", "/v1/kv/?prefix=p/&limit=2").json
        self.assertEqual([i["key"] for i in page["items"]], ["p/a", "p/b"])
        self.assertEqual((page["next"], page["revision"]), ("p/b", 4))
        page = self.client.request("GET", "/v1/kv/?prefix=p/&limit=2&after=p/b").json
        self.assertEqual([i["key"] for i in page["items"]], ["p/c"])
        self.assertIsNone(page["next"])
        item = page["items"][0]
        self.assertEqual(
            item,
            {"key": "p/c", "create_revision": 3, "mod_revision": 3, "version": 1,
             "content_type": "application/octet-stream", "size": 3, "expires": None},
        )

    def test_stable_while_writers_run(self):
        """Keys written before the cursor do not shift later pages."""
        for key in ("b", "d", "f"):
            self.put(key)
        page = self.client.request("GET", "/v1/kv/?limit=2").json
        self.put("a")
        self.put("c")
        page2 = self.client.request("GET", "/v1/kv/?limit=2&after=" + page["next"]).json
        self.assertEqual([i["key"] for i in page2["items"]], ["f"])

    def test_values(self):
        """values=1 inlines JSON values and base64-encodes the rest."""
        self.put("j", b'{"x": [1]}', **{"Content-Type": "application/json"})
        self.put("b", b"\xff\x00", **{"Content-Type": "image/png"})
        self.put("bad", b"{nope", **{"Content-Type": "application/json"})
        items = {i["key"]: i for i in self.client.request("GET", "/v1/kv/?values=1").json["items"]}
        self.assertEqual(items["j"]["value"], {"x": [1]})
        self.assertEqual(base64.b64decode(items["b"]["value_base64"]), b"\xff\x00")
        self.assertEqual(base64.b64decode(items["bad"]["value_base64"]), b"{nope")

    def test_bad_parameters(self):
        """Bad limit, values or after parameters are 400."""
        for query in ("limit=0", "limit=abc", "limit=100000", "values=maybe", "after="):
            answer = self.client.request("GET", "/v1/kv/?" + query)
            self.assertEqual(answer.status, 400, query)

    def test_without_trailing_slash(self):
        """/v1/kv lists too."""
        self.put("a")
        self.assertEqual(len(self.client.request("GET", "/v1/kv").json["items"]), 1)


class ListingBytesTests(V1Case):
    """A listing page also ends at max_list_bytes of keys and values."""

    limits = Limits(max_list_bytes=3000)

    def test_page_ends_early_with_next(self):
        """
        ?limit=1000&values=1 over 1000-byte values stops once the page
        holds max_list_bytes, with next; following next lists every key once.
        """
        for i in range(10):
            self.put("v/%d" % i, b"x" * 1000)
        page = self.client.request("GET", "/v1/kv/?prefix=v/&limit=1000&values=1").json
        self.assertEqual([i["key"] for i in page["items"]], ["v/0", "v/1", "v/2"])
        self.assertEqual(page["next"], "v/2")
        keys = [item["key"] for item in page["items"]]
        for _ in range(10):
            page = self.client.request(
                "GET", "/v1/kv/?prefix=v/&limit=1000&values=1&after=" + page["next"]
            ).json
            keys += [item["key"] for item in page["items"]]
            if page["next"] is None:
                break
        self.assertEqual(keys, ["v/%d" % i for i in range(10)])

    def test_one_value_over_the_bound_still_lists(self):
        """A value larger than max_list_bytes is a page of its own, so the listing progresses."""
        self.put("a", b"x" * 5000)
        self.put("b", b"y")
        page = self.client.request("GET", "/v1/kv/?values=1").json
        self.assertEqual(([i["key"] for i in page["items"]], page["next"]), (["a"], "a"))
        page = self.client.request("GET", "/v1/kv/?values=1&after=a").json
        self.assertEqual(([i["key"] for i in page["items"]], page["next"]), (["b"], None))


class TransactionTests(V1Case):
    """Multi-request transactions under /v1/txn."""

    def begin(self, client=None):
        answer = (client or self.client).request("POST", "/v1/txn")
        self.assertEqual(answer.status, 201)
        self.assertEqual(answer.header("location"), "/v1/txn/" + answer.json["id"])
        self.assertEqual(answer.json["expires_in"], 300.0)
        return "/v1/txn/" + answer.json["id"]

    def test_stage_read_commit(self):
        """Staged writes are visible in the txn only, until commit applies all."""
        self.put("old", b"1")
        txn = self.begin()
        self.assertEqual(self.client.request("PUT", txn + "/kv/a", body=b"A").status, 200)
        self.assertEqual(self.client.request("DELETE", txn + "/kv/old").status, 200)
        answer = self.client.request("POST", txn + "/set", json_body={"j": [1]})
        self.assertEqual((answer.status, answer.json), (201, {"j": "created"}))
        self.assertEqual(self.client.request("GET", txn + "/kv/a").body, b"A")
        self.assertEqual(self.client.request("GET", txn + "/kv/a").header("kv-staged"), "true")
        self.client.problem("GET", txn + "/kv/old", 404, "key-not-found")
        self.client.problem("GET", "/v1/kv/a", 404, "key-not-found")
        self.assertEqual(self.client.request("GET", "/v1/kv/old").body, b"1")
        listing = self.client.request("GET", txn).json
        self.assertEqual([(o["op"], o["key"]) for o in listing["ops"]],
                         [("put", "a"), ("delete", "old"), ("put", "j")])
        answer = self.client.request("POST", txn + "/commit")
        self.assertEqual((answer.status, answer.json), (200, {"revision": 2, "ops": 3}))
        self.assertEqual(self.client.request("GET", "/v1/kv/a").body, b"A")
        self.assertEqual(self.client.request("GET", "/v1/kv/j").body, b"[1]")
        self.client.problem("GET", "/v1/kv/old", 404, "key-not-found")
        self.client.problem("GET", txn, 404, "transaction-not-found")

    def test_read_committed_through_txn(self):
        """A txn reads committed keys with their ETag when it staged nothing."""
        self.put("a", b"1")
        txn = self.begin()
        answer = self.client.request("GET", txn + "/kv/a")
        self.assertEqual((answer.body, answer.header("etag")), (b"1", '"1"'))

    def test_conflict_first_committer_wins(self):
        """A key changed after the txn read it makes the commit 409; nothing applies."""
        self.put("a", b"1")
        first, second = self.begin(), self.begin()
        self.client.request("GET", first + "/kv/a")
        self.client.request("PUT", first + "/kv/b", body=b"first")
        self.client.request("PUT", second + "/kv/a", body=b"second")
        self.assertEqual(self.client.request("POST", second + "/commit").status, 200)
        answer = self.client.problem("POST", first + "/commit", 409, "conflict")
        self.assertEqual(
            answer.json["conflicts"],
            [{"key": "a", "check": "equals", "expected": 1, "actual": 2, "tag": "observed"}],
        )
        self.client.problem("GET", "/v1/kv/b", 404, "key-not-found")
        self.client.problem("POST", first + "/commit", 404, "transaction-not-found")

    def test_staged_key_created_meanwhile_conflicts(self):
        """Two txns creating the same key: the second commit is 409."""
        first, second = self.begin(), self.begin()
        self.client.request("PUT", first + "/kv/k", body=b"1")
        self.client.request("PUT", second + "/kv/k", body=b"2")
        self.client.request("POST", first + "/commit")
        answer = self.client.problem("POST", second + "/commit", 409, "conflict")
        self.assertEqual(answer.json["conflicts"][0]["actual"], 1)
        self.assertEqual(self.client.request("GET", "/v1/kv/k").body, b"1")

    def test_recorded_preconditions(self):
        """If-Match on a staged write is checked at commit and named in the 409."""
        self.put("a")
        txn = self.begin()
        self.client.request("PUT", txn + "/kv/a", body=b"x", headers={"If-Match": '"5"'})
        answer = self.client.problem("POST", txn + "/commit", 409, "conflict")
        self.assertIn({"key": "a", "check": "equals", "expected": 5, "actual": 1,
                       "tag": "If-Match"}, answer.json["conflicts"])

    def test_abort(self):
        """DELETE /v1/txn/{id} aborts (204); the id is then 404."""
        txn = self.begin()
        self.client.request("PUT", txn + "/kv/a", body=b"x")
        self.assertEqual(self.client.request("DELETE", txn).status, 204)
        self.client.problem("PUT", txn + "/kv/a", 404, "transaction-not-found", body=b"x")
        self.client.problem("GET", "/v1/kv/a", 404, "key-not-found")

    def test_idle_expiry(self):
        """An idle txn expires after the timeout; use resets the timer."""
        txn = self.begin()
        self.clock.advance(299)
        self.client.request("PUT", txn + "/kv/a", body=b"x")
        self.clock.advance(299)
        self.assertEqual(self.client.request("GET", txn).status, 200)
        self.clock.advance(300)
        self.client.problem("GET", txn, 404, "transaction-not-found")
        self.client.problem("POST", txn + "/commit", 404, "transaction-not-found")

    def test_unknown_txn(self):
        """Unknown ids are 404 on every transaction route."""
        for method, path in [("GET", "/v1/txn/nope"), ("DELETE", "/v1/txn/nope"),
                             ("POST", "/v1/txn/nope/commit"), ("GET", "/v1/txn/nope/kv/a"),
                             ("POST", "/v1/txn/nope/set")]:
            self.client.problem(method, path, 404, "transaction-not-found", body=b"{}")

    def test_delete_absent_in_txn(self):
        """Staging a delete of a key absent in the txn's view is 404."""
        txn = self.begin()
        self.client.problem("DELETE", txn + "/kv/nope", 404, "key-not-found")
        self.client.request("PUT", txn + "/kv/new", body=b"x")
        self.assertEqual(self.client.request("DELETE", txn + "/kv/new").status, 200)
        self.client.problem("DELETE", txn + "/kv/new", 404, "key-not-found")

    def test_commit_empty_txn(self):
        """Committing a txn that staged nothing is 200 at the current revision."""
        self.put("a")
        txn = self.begin()
        self.assertEqual(self.client.request("POST", txn + "/commit").json["revision"], 1)

    def test_ten_thousand_keys_atomic(self):
        """A 10,000-key transaction commits as one revision (no 128-op cap)."""
        txn = self.begin()
        pairs = {"bulk/%05d" % i: i for i in range(10_000)}
        self.assertEqual(self.client.request("POST", txn + "/set", json_body=pairs).status, 201)
        answer = self.client.request("POST", txn + "/commit")
        self.assertEqual(answer.json, {"revision": 1, "ops": 10_000})
        page = self.client.request("GET", "/v1/kv/?prefix=bulk/&limit=1000").json
        self.assertEqual({i["mod_revision"] for i in page["items"]}, {1})


class TransactionLimitTests(V1Case):
    """Caps on transactions: 429 for count, 413 for size, limit in the body."""

    limits = Limits(max_open_transactions=2, max_staged_ops=3, max_staged_bytes=3 * OP_OVERHEAD + 100)

    def test_open_transactions_cap(self):
        """Beyond max_open_transactions, POST /v1/txn is 429 naming the limit."""
        self.client.request("POST", "/v1/txn")
        self.client.request("POST", "/v1/txn")
        answer = self.client.problem("POST", "/v1/txn", 429, "limit-exceeded")
        self.assertEqual((answer.json["limit_name"], answer.json["limit"]),
                         ("max_open_transactions", 2))

    def test_ops_cap(self):
        """A txn holds at most max_staged_ops ops; the overflow stages nothing."""
        txn = "/v1/txn/" + self.client.request("POST", "/v1/txn").json["id"]
        self.client.request("POST", txn + "/set", json_body={"a": 1, "b": 2})
        answer = self.client.problem("POST", txn + "/set", 413, "limit-exceeded",
                                     json_body={"c": 1, "d": 2})
        self.assertEqual((answer.json["limit"], answer.json["size"]), (3, 4))
        self.assertEqual(len(self.client.request("GET", txn).json["ops"]), 2)

    def test_bytes_cap(self):
        """A txn holds at most max_staged_bytes: key and value bytes plus OP_OVERHEAD per op."""
        txn = "/v1/txn/" + self.client.request("POST", "/v1/txn").json["id"]
        answer = self.client.problem("PUT", txn + "/kv/big", 413, "limit-exceeded", body=b"x" * 1000)
        self.assertEqual(answer.json["limit_name"], "max_staged_bytes")
        self.assertEqual(answer.json["size"], OP_OVERHEAD + len("big") + 1000)

    def test_limits_route(self):
        """/v1/limits reports every limit in force."""
        limits = self.client.request("GET", "/v1/limits").json
        self.assertEqual(limits["max_open_transactions"], 2)
        self.assertEqual(limits["max_staged_ops"], 3)
        self.assertEqual(limits["max_body"], 1048576)


#: What staging one 1000-byte value under a one-letter key weighs.
BIG = OP_OVERHEAD + 1 + 1000


class StagedMemoryTests(V1Case):
    """
    max_staged_bytes_total bounds what every transaction and the shared
    queue stage together: 503 staged-memory-full beyond, and the bytes come
    back when a transaction commits, aborts or expires and when the queue
    commits.
    """

    # Room for two big values, not three.
    limits = Limits(max_staged_bytes_total=2 * BIG + 400)

    def begin(self):
        return "/v1/txn/" + self.client.request("POST", "/v1/txn").json["id"]

    def stage_big(self, txn):
        return self.client.request("PUT", txn + "/kv/a", body=b"x" * 1000)

    def assert_full(self, txn):
        answer = self.client.problem("PUT", txn + "/kv/a", 503, "staged-memory-full", body=b"x" * 1000)
        self.assertEqual(answer.json["limit"], 2 * BIG + 400)
        self.assertEqual(answer.json["limit_name"], "max_staged_bytes_total")
        self.assertEqual(answer.json["size"], 3 * BIG)
        return answer

    def fill(self):
        """Two transactions, each staging one big value: the total is nearly used."""
        first, second = self.begin(), self.begin()
        for txn in (first, second):
            self.assertEqual(self.stage_big(txn).status, 200)
        return first, second

    def test_total_cap_is_503_and_stages_nothing(self):
        """Past the total, staging is 503 staged-memory-full with the limit, and nothing is staged."""
        self.fill()
        third = self.begin()
        self.assert_full(third)
        self.assertEqual(self.client.request("GET", third).json["ops"], [])
        # A small write still fits.
        self.assertEqual(self.client.request("PUT", third + "/kv/b", body=b"y").status, 200)

    def test_shared_queue_counts_toward_the_total(self):
        """The seed's queue and the transactions share one total: a /set past it is 503."""
        self.fill()
        self.client.problem("POST", "/set", 503, "staged-memory-full",
                            json_body={"q": "x" * 1000})
        self.assertEqual(self.client.request("POST", "/commit").status, 204)
        self.client.problem("GET", "/q", 404, "key-not-found")

    def test_commit_releases(self):
        """A committed transaction's bytes are free again."""
        first, _ = self.fill()
        third = self.begin()
        self.assert_full(third)
        self.assertEqual(self.client.request("POST", first + "/commit").status, 200)
        self.assertEqual(self.stage_big(third).status, 200)

    def test_abort_releases(self):
        """An aborted transaction's bytes are free again."""
        first, _ = self.fill()
        third = self.begin()
        self.assertEqual(self.client.request("DELETE", first).status, 204)
        self.assertEqual(self.stage_big(third).status, 200)

    def test_expiry_releases(self):
        """An expired transaction's bytes are free again."""
        self.fill()
        self.clock.advance(self.limits.txn_timeout + 1)
        third = self.begin()
        self.assertEqual(self.stage_big(third).status, 200)

    def test_queue_commit_releases(self):
        """The shared queue's bytes are free again once it commits."""
        first = self.begin()
        self.assertEqual(self.stage_big(first).status, 200)
        self.assertEqual(self.client.request("POST", "/set", json_body={"q": "x" * 998}).status, 201)
        second = self.begin()
        self.assert_full(second)
        self.assertEqual(self.client.request("POST", "/commit").status, 204)
        self.assertEqual(self.stage_big(second).status, 200)

    def test_failed_commit_keeps_its_bytes_counted(self):
        """A conflicted commit releases its bytes with the transaction; nothing leaks or is freed twice."""
        first, second = self.fill()
        self.put("a")  # both staged "a" after reading it absent: they conflict now
        self.client.problem("POST", first + "/commit", 409, "conflict")
        third = self.begin()
        self.assertEqual(self.stage_big(third).status, 200)
        self.assert_full(self.begin())

    def test_limits_route(self):
        """/v1/limits reports max_staged_bytes_total."""
        limits = self.client.request("GET", "/v1/limits").json
        self.assertEqual(limits["max_staged_bytes_total"], 2 * BIG + 400)


class BatchTests(V1Case):
    """POST /v1/batch: one-request transactions."""

    def batch(self, ops):
        return self.client.request("POST", "/v1/batch", json_body={"ops": ops})

    def test_all_op_kinds(self):
        """set, delete, check, check-absent and get apply atomically with results."""
        self.put("old", b"1")
        answer = self.batch([
            {"op": "check", "key": "old", "revision": 1},
            {"op": "check-absent", "key": "new"},
            {"op": "get", "key": "old"},
            {"op": "set", "key": "new", "value": {"x": 1}, "ttl": 60},
            {"op": "set", "key": "bin", "value_base64": "AAE=", "content_type": "image/png"},
            {"op": "delete", "key": "old"},
            {"op": "get", "key": "new"},
            {"op": "get", "key": "old"},
        ])
        self.assertEqual(answer.status, 200, answer.body)
        body = answer.json
        self.assertEqual(body["revision"], 2)
        results = body["results"]
        self.assertEqual(results[2]["value_base64"], "MQ==")
        self.assertEqual(results[3], {"op": "set", "key": "new", "created": True})
        self.assertEqual(results[5], {"op": "delete", "key": "old", "deleted": True})
        self.assertEqual(results[6]["value"], {"x": 1})
        self.assertEqual(results[7], {"op": "get", "key": "old", "found": False})
        self.assertEqual(self.client.request("GET", "/v1/kv/bin").body, b"\x00\x01")

    def test_conflict_names_indexes(self):
        """A failed check is 409 with the failing op indexes; nothing applies."""
        self.put("a")
        answer = self.client.problem("POST", "/v1/batch", 409, "conflict", json_body={"ops": [
            {"op": "set", "key": "x", "value": 1},
            {"op": "check", "key": "a", "revision": 9},
            {"op": "check-absent", "key": "a"},
            {"op": "check-absent", "key": "free"},
        ]})
        self.assertEqual(answer.json["failed"], [1, 2])
        self.client.problem("GET", "/v1/kv/x", 404, "key-not-found")

    def test_large_batch(self):
        """A batch over 128 ops is one atomic commit."""
        answer = self.batch([{"op": "set", "key": "k%d" % i, "value": i} for i in range(500)])
        self.assertEqual(answer.json["revision"], 1)

    def test_bad_batches(self):
        """Malformed batches are 400 naming the op; nothing applies."""
        for ops in (
            "nope",
            [{"op": "explode", "key": "a"}],
            [{"op": "set", "key": "a"}],
            [{"op": "set", "key": "a", "value": 1, "value_base64": "AA=="}],
            [{"op": "set", "key": "a", "value_base64": "!!"}],
            [{"op": "check", "key": "a", "revision": "1"}],
            [{"op": "get", "key": ""}],
            [{"op": "get"}],
            [{"op": "set", "key": "a", "value": 1, "ttl": -5}],
        ):
            answer = self.client.request("POST", "/v1/batch", json_body={"ops": ops})
            self.assertEqual(answer.status, 400, ops)
        self.assertEqual(self.client.request("POST", "/v1/batch", json_body=[]).status, 400)
        self.assertEqual(self.store.revision, 0)


class BatchLimitTests(V1Case):
    """The batch op cap."""

    limits = Limits(max_batch_ops=2)

    def test_batch_cap(self):
        """More ops than max_batch_ops is a 413 naming the limit."""
        answer = self.client.problem("POST", "/v1/batch", 413, "limit-exceeded", json_body={
            "ops": [{"op": "get", "key": "a"}] * 3})
        self.assertEqual((answer.json["limit"], answer.json["size"]), (2, 3))


class ConsistentReadTests(V1Case):
    """?consistent=1 reads past the cache."""

    def test_consistent_read(self):
        """A consistent read returns the committed value like a plain read."""
        self.put("a", b"1")
        answer = self.client.request("GET", "/v1/kv/a?consistent=1")
        self.assertEqual((answer.status, answer.body), (200, b"1"))
        self.client.problem("GET", "/v1/kv/nope?consistent=1", 404, "key-not-found")

    def test_declared_linearizable_reads_are_used(self):
        """Over a store declaring ILinearizableReads, ?consistent=1 reads through its get_linearizable."""
        store = DeclaredLinearizable()
        self.successResultOf(store.commit([Put("a", b"1")]))
        answer = TreeClient(self, memory_root(store)).request("GET", "/v1/kv/a?consistent=1")
        self.assertEqual((answer.status, answer.body, store.linearizable_reads), (200, b"1", ["a"]))

    def test_undeclared_linearizable_reads_are_not_used(self):
        """Over a store with get_linearizable that does not declare it, ?consistent=1 reads with get."""
        store = UndeclaredExtras()
        self.successResultOf(store.commit([Put("a", b"1")]))
        answer = TreeClient(self, memory_root(store)).request("GET", "/v1/kv/a?consistent=1")
        self.assertEqual((answer.status, answer.body, store.linearizable_reads), (200, b"1", []))


class QueryParameterTests(V1Case):
    """A query parameter a route does not take is refused, never ignored."""

    def refused(self, method, path, parameter, allowed, **kw):
        answer = self.client.problem(method, path, 400, "unknown-parameter", **kw)
        self.assertEqual(answer.json["parameter"], parameter)
        self.assertEqual(answer.json["allowed"], allowed)
        self.assertIn(repr(parameter), answer.json["detail"])
        return answer

    def test_consul_recurse_deletes_nothing(self):
        """DELETE /v1/kv/app/?recurse is a 400 naming recurse; the key app/ and app/x stay."""
        self.put("app/")
        self.put("app/x")
        answer = self.refused("DELETE", "/v1/kv/app/?recurse", "recurse", [])
        self.assertIn("takes no query parameters", answer.json["detail"])
        self.assertEqual(sorted(self.store.rows), ["app/", "app/x"])
        self.assertEqual(self.store.revision, 2)

    def test_each_route_names_what_it_takes(self):
        """Unknown parameters per route: the problem lists that route and method's own parameters."""
        self.put("a")
        self.refused("PUT", "/v1/kv/a?flags=4", "flags", ["ttl", "lease"], body=b"x")
        self.refused("DELETE", "/v1/kv/a?ttl=5", "ttl", [])
        listing = ["prefix", "after", "limit", "values", "keys", "separator", "revision", "cursor"]
        self.refused("GET", "/v1/kv/?prefix=a&index=3", "index", listing)
        self.refused("GET", "/v1/kv/?wait=3", "wait", listing)
        self.refused("GET", "/v1/kv/a?rev=1", "rev", ["index", "wait", "consistent", "revision"])
        self.refused("GET", "/v1/watch?recurse=1", "recurse", ["prefix", "values", "after", "prev"])
        self.refused("GET", "/v1/snapshot?recurse=1", "recurse", ["prefix"])
        self.refused("POST", "/v1/compact?now=1", "now", [], json_body={"revision": 0})
        self.refused("POST", "/v1/batch?dry=1", "dry", [], json_body={"ops": []})
        self.refused("GET", "/v1/limits?x", "x", [])
        self.refused("GET", "/a?raw=1", "raw", [])
        self.refused("POST", "/set?x=1", "x", [], json_body={"b": 1})
        self.refused("POST", "/commit?x=1", "x", [])
        self.assertEqual(self.store.revision, 1)
        self.assertEqual(self.client.request("HEAD", "/v1/kv/a?x=1").status, 400)

    def test_known_parameters_still_work(self):
        """Declared parameters pass: a listing with every one of its own parameters answers 200."""
        self.put("a")
        answer = self.client.request("GET", "/v1/kv/?prefix=a&limit=5&after=0&values=1")
        self.assertEqual(answer.status, 200)
        self.assertEqual([item["key"] for item in answer.json["items"]], ["a"])

    def test_bare_flag_is_true(self):
        """A flag named without a value (?values, as Consul clients send ?keys) is on, not ignored."""
        self.put("a", b"x")
        answer = self.client.request("GET", "/v1/kv/?values")
        self.assertEqual(answer.json["items"][0]["value_base64"], "eA==")
        self.assertNotIn("value_base64", self.client.request("GET", "/v1/kv/?values=0").json["items"][0])


class PrefixDeleteTests(V1Case):
    """DELETE /v1/kv/?prefix=P: every key under P in one commit."""

    def test_deletes_under_prefix_in_one_commit(self):
        """200 {deleted, revision}: every key under the prefix goes in one revision; others stay."""
        for key in ("app/a", "app/b/c", "app", "apps"):
            self.put(key)
        answer = self.client.request("DELETE", "/v1/kv/?prefix=app/")
        self.assertEqual((answer.status, answer.json), (200, {"deleted": 2, "revision": 5}))
        self.assertEqual(answer.header("kv-revision"), "5")
        self.assertEqual(sorted(self.store.rows), ["app", "apps"])
        answer = self.client.request("DELETE", "/v1/kv/?prefix=nothing/")
        self.assertEqual(answer.json, {"deleted": 0, "revision": 5})

    def test_everything_needs_all(self):
        """No prefix (or an empty one) is a 400 unless all=1; all=1 with a prefix is a 400 too."""
        self.put("a")
        for path in ("/v1/kv/", "/v1/kv/?prefix=", "/v1/kv/?all=0"):
            self.client.problem("DELETE", path, 400, "bad-parameter")
        self.client.problem("DELETE", "/v1/kv/?prefix=a&all=1", 400, "bad-parameter")
        self.assertEqual(list(self.store.rows), ["a"])
        answer = self.client.request("DELETE", "/v1/kv/?all=1")
        self.assertEqual(answer.json, {"deleted": 1, "revision": 2})
        self.assertEqual(self.store.rows, {})

    def test_limit_is_413_and_deletes_nothing(self):
        """More keys than max_keys_per_request: 413 naming the limit and the count; nothing deleted."""
        self.client = TreeClient(self, memory_root(self.store, limits=Limits(max_keys_per_request=2)))
        for key in ("p/1", "p/2", "p/3"):
            self.put(key)
        answer = self.client.problem("DELETE", "/v1/kv/?prefix=p/", 413, "limit-exceeded")
        self.assertEqual(
            (answer.json["limit_name"], answer.json["limit"], answer.json["size"]),
            ("max_keys_per_request", 2, 3),
        )
        self.assertEqual(len(self.store.rows), 3)

    def test_token_must_write_the_prefix(self):
        """With auth on, a token may delete a prefix inside its write prefixes, not one wider."""
        from kvtwist.auth import Authorizer, Token

        token = Token("app", "a" * 20, read=("",), write=("app/",))
        self.client = TreeClient(self, memory_root(self.store, authorizer=Authorizer([token])))
        self.store.commit([Put("app/x/1", b"1"), Put("apq", b"2")])
        bearer = {"Authorization": "Bearer " + token.secret}
        self.client.problem("DELETE", "/v1/kv/?prefix=ap", 403, "forbidden", headers=bearer)
        self.client.problem("DELETE", "/v1/kv/?all=1", 403, "forbidden", headers=bearer)
        answer = self.client.request("DELETE", "/v1/kv/?prefix=app/x/", headers=bearer)
        self.assertEqual(answer.json["deleted"], 1)
        self.assertEqual(sorted(self.store.rows), ["apq"])


class KeysListingTests(V1Case):
    """GET /v1/kv/?prefix=P&keys=1[&separator=S]: key names, rolled up as Consul does."""

    KEYS = ("app/a", "app/b/c", "app/b/d", "app/c/x/y", "app/d", "apps", "other")

    def setUp(self):
        super().setUp()
        for key in self.KEYS:
            self.put(key)

    def test_keys_only(self):
        """keys=1 lists the names under the prefix, at one revision, with no next on the last page."""
        answer = self.client.request("GET", "/v1/kv/?prefix=app/&keys=1")
        self.assertEqual(
            answer.json,
            {"revision": 7, "keys": ["app/a", "app/b/c", "app/b/d", "app/c/x/y", "app/d"], "next": None},
        )

    def test_rolled_up_at_separator(self):
        """With a separator, P + a/b/c lists as P + a/, once; bare ?keys works as Consul sends it."""
        answer = self.client.request("GET", "/v1/kv/?prefix=app/&keys&separator=/")
        self.assertEqual(answer.json["keys"], ["app/a", "app/b/", "app/c/", "app/d"])
        top = self.client.request("GET", "/v1/kv/?keys=1&separator=/").json["keys"]
        self.assertEqual(top, ["app/", "apps", "other"])

    def test_paged_past_rolled_up_groups(self):
        """Paging with limit and next visits every name once, resuming past a rolled-up group."""
        seen, after = [], None
        for _ in range(10):
            path = "/v1/kv/?prefix=app/&keys=1&separator=/&limit=2"
            if after is not None:
                path += "&after=" + after
            page = self.client.request("GET", path).json
            seen += page["keys"]
            after = page["next"]
            if after is None:
                break
        self.assertEqual(seen, ["app/a", "app/b/", "app/c/", "app/d"])

    def test_bad_combinations(self):
        """keys=1 with values=1, or a separator without keys=1, is a 400 bad-parameter."""
        self.client.problem("GET", "/v1/kv/?keys=1&values=1", 400, "bad-parameter")
        self.client.problem("GET", "/v1/kv/?separator=/", 400, "bad-parameter")
