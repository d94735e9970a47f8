"""
The seed's routes, in memory: every route, status and error through
StubTreq over a MemoryStore (docs/api.md, "Two APIs" and "Errors").
"""

from twisted.trial.unittest import SynchronousTestCase

from kvtwist.errors import StoreUnavailable
from kvtwist.limits import Limits
from kvtwist.testing import MemoryStore, memory_root
from tests.helpers.webtest import TreeClient


class SeedRouteTests(SynchronousTestCase):
    """The seed API kept exactly."""

    def setUp(self):
        self.store = MemoryStore()
        self.client = TreeClient(self, memory_root(self.store))

    def test_set_commit_get(self):
        """POST /set stages (201), GET sees nothing, POST /commit applies (204)."""
        answer = self.client.request("POST", "/set", json_body={"a": 1, "b": {"x": [1, 2]}})
        self.assertEqual(answer.status, 201)
        self.assertEqual(answer.json, {"a": "created", "b": "created"})
        self.client.problem("GET", "/a", 404, "key-not-found")
        answer = self.client.request("POST", "/commit")
        self.assertEqual((answer.status, answer.body), (204, b""))
        answer = self.client.request("GET", "/a")
        self.assertEqual((answer.status, answer.body), (200, b"1"))
        self.assertEqual(answer.content_type, "application/json")
        self.assertEqual(answer.header("etag"), '"1"')
        self.assertEqual(self.client.request("GET", "/b").json, {"x": [1, 2]})

    def test_set_existing_is_200(self):
        """POST /set answers 200 when any key already exists, saying which."""
        self.client.request("POST", "/set", json_body={"a": 1})
        self.client.request("POST", "/commit")
        answer = self.client.request("POST", "/set", json_body={"a": 2, "c": 3})
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.json, {"a": "updated", "c": "created"})

    def test_later_stage_replaces_earlier(self):
        """Staging a key twice keeps the last value (last writer wins)."""
        self.client.request("POST", "/set", json_body={"a": 1})
        self.client.request("POST", "/set", json_body={"a": 2})
        self.client.request("POST", "/commit")
        self.assertEqual(self.client.request("GET", "/a").body, b"2")

    def test_commit_is_one_atomic_commit(self):
        """One POST /commit applies the whole queue as one store commit."""
        self.client.request("POST", "/set", json_body={"a": 1})
        self.client.request("POST", "/set", json_body={"b": 2})
        self.client.request("DELETE", "/set", json_body="a")
        self.client.request("POST", "/commit")
        self.assertEqual(len(self.store.commits), 1)
        self.assertEqual(self.store.revision, 1)
        self.client.problem("GET", "/a", 404, "key-not-found")

    def test_route_names_are_keys(self):
        """
        In the tree twistd serves (admin page and operations endpoints
        mounted), every single segment but set and commit is a key: GET and
        DELETE answer as for any key (404 when absent, never another
        route's answer), and each round-trips through /set and /commit.
        """
        from kvtwist.web.ops import ops_children
        from kvtwist.web.ui import make_ui_resource

        client = TreeClient(
            self,
            memory_root(
                self.store,
                extra_children={b"ui": make_ui_resource()},
                ops=ops_children(self.store, None, self.store.clock),
            ),
        )
        names = ("healthz", "readyz", "metrics", "ui", "v1", "limits", "watch", "txn", "batch")
        for name in names:
            client.problem("GET", "/" + name, 404, "key-not-found")
            client.problem("DELETE", "/" + name, 404, "key-not-found")
        self.assertEqual(client.request("POST", "/set", json_body={n: n for n in names}).status, 201)
        client.request("POST", "/commit")
        for name in names:
            answer = client.request("GET", "/" + name)
            self.assertEqual((answer.status, answer.json), (200, name), name)
            self.assertEqual(client.request("DELETE", "/" + name).json, {name: "deleted"})
        client.request("POST", "/commit")
        for name in names:
            client.problem("GET", "/" + name, 404, "key-not-found")
        self.assertEqual(client.request("GET", "/v1/healthz").json, {"status": "alive"})
        self.assertEqual(client.request("GET", "/ui/").status, 200)
        client.problem("GET", "/v1/nothing", 404, "not-found")
        client.problem("GET", "/nothing/more", 404, "not-found")

    def test_empty_commit(self):
        """POST /commit with nothing pending is 204 and makes no revision."""
        answer = self.client.request("POST", "/commit")
        self.assertEqual(answer.status, 204)
        self.assertEqual(self.store.revision, 0)

    def test_empty_set(self):
        """An empty object stages nothing and answers 200 (nothing created)."""
        answer = self.client.request("POST", "/set", json_body={})
        self.assertEqual((answer.status, answer.json), (200, {}))

    def test_delete_shapes(self):
        """DELETE /set takes "k", ["k1","k2"] or {"k": ...}."""
        self.client.request("POST", "/set", json_body={"a": 1, "b": 2, "c": 3, "d": 4})
        self.client.request("POST", "/commit")
        for body in ("a", ["b", "c"], {"d": None}):
            answer = self.client.request("DELETE", "/set", json_body=body)
            self.assertEqual(answer.status, 200, answer.body)
        self.assertEqual(
            self.client.request("DELETE", "/set", json_body=["a"]).json, {"a": "deleted"}
        )
        self.client.request("POST", "/commit")
        for key in "abcd":
            self.client.problem("GET", "/" + key, 404, "key-not-found")

    def test_delete_unknown_stages_nothing(self):
        """Deleting an unknown key is 404 naming it, and nothing is staged."""
        self.client.request("POST", "/set", json_body={"a": 1})
        self.client.request("POST", "/commit")
        answer = self.client.problem(
            "DELETE", "/set", 404, "key-not-found", json_body=["a", "nope", "nix"]
        )
        self.assertEqual(answer.json["missing"], ["nope", "nix"])
        self.client.request("POST", "/commit")
        self.assertEqual(self.client.request("GET", "/a").body, b"1")

    def test_delete_staged_only_key(self):
        """A key only staged (not committed) can be deleted, cancelling it."""
        self.client.request("POST", "/set", json_body={"new": 1})
        self.assertEqual(self.client.request("DELETE", "/new").status, 200)
        self.client.request("POST", "/commit")
        self.client.problem("GET", "/new", 404, "key-not-found")
        self.assertEqual(self.store.revision, 0)

    def test_delete_key_route(self):
        """DELETE /{key} stages one delete: 200, or 404 for an unknown key."""
        self.client.request("POST", "/set", json_body={"a": 1})
        self.client.request("POST", "/commit")
        self.assertEqual(self.client.request("DELETE", "/a").json, {"a": "deleted"})
        self.assertEqual(self.client.request("GET", "/a").status, 200)
        self.client.request("POST", "/commit")
        self.client.problem("GET", "/a", 404, "key-not-found")
        self.client.problem("DELETE", "/a", 404, "key-not-found")

    def test_odd_keys(self):
        """Keys are one percent-decoded segment: %2F, spaces, UTF-8 all work."""
        keys = {"a/b": "a%2Fb", "with space": "with%20space", "\u00e9t\u00e9": "%C3%A9t%C3%A9"}
        self.client.request("POST", "/set", json_body={k: k for k in keys})
        self.client.request("POST", "/commit")
        for key, path in keys.items():
            answer = self.client.request("GET", "/" + path)
            self.assertEqual((answer.status, answer.json), (200, key))

    def test_reserved_names_are_routes(self):
        """GET /set and GET /commit are 404: those names are operations here."""
        self.client.problem("GET", "/set", 404, "not-found")
        self.client.problem("GET", "/commit", 404, "not-found")

    def test_unknown_paths_404(self):
        """The root, nested paths and trailing slashes are 404 problems."""
        for path in ("/", "/a/b", "/a/", "/set/x", "/commit/x"):
            self.client.problem("GET", path, 404, "not-found")

    def test_other_methods_404(self):
        """Methods the seed did not list answer 404, not 405."""
        for method, path in [
            ("PUT", "/a"), ("POST", "/a"), ("PATCH", "/set"), ("GET", "/commit"),
            ("DELETE", "/commit"), ("PUT", "/set"), ("OPTIONS", "/a"),
        ]:
            self.client.problem(method, path, 404, "not-found")

    def test_head_of_key(self):
        """HEAD /{key} answers like GET without a body."""
        self.client.request("POST", "/set", json_body={"a": "x"})
        self.client.request("POST", "/commit")
        answer = self.client.request("HEAD", "/a")
        self.assertEqual((answer.status, answer.body), (200, b""))


class BadInputTests(SynchronousTestCase):
    """Bad input is a 400 problem and stages nothing."""

    def setUp(self):
        self.store = MemoryStore()
        self.client = TreeClient(self, memory_root(self.store))

    def assert_nothing_staged(self):
        self.client.request("POST", "/commit")
        self.assertEqual(self.store.revision, 0)

    def test_bad_bodies(self):
        """Each malformed JSON shape is a 400 with its own code."""
        cases = [
            (b"{", "bad-json"),
            (b"", "bad-json"),
            (b'{"a": NaN}', "bad-json"),
            (b'{"a": Infinity}', "bad-json"),
            (b'{"a": -Infinity}', "bad-json"),
            (b'{"a": 1, "a": 2}', "duplicate-key"),
            (b'{"a": {"b": 1, "b": 1}}', "duplicate-key"),
            (b'{"a": "\xff"}', "bad-encoding"),
            (b'{"a": "\\ud800"}', "bad-encoding"),
            (b'{"\\udfff": 1}', "bad-encoding"),
            (b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}", "too-deep"),
            (b'{"a": ' + b"[" * 100000 + b"]" * 100000 + b"}", "too-deep"),
            (b"\xef\xbb\xbf{}", "bad-json"),
            (b"[1, 2]", "bad-pairs"),
            (b'"a"', "bad-pairs"),
            (b'{"a": 1' + b"0" * 5000 + b"}", "bad-json"),
            (b'{"": 1}', "bad-key"),
            (('{"%s": 1}' % ("k" * 1025)).encode(), "key-too-long"),
        ]
        for body, code in cases:
            with self.subTest(body=body[:40]):
                self.client.problem("POST", "/set", 400, code, body=body)
        self.assert_nothing_staged()

    def test_bad_delete_bodies(self):
        """DELETE /set needs a string, a list of strings or an object."""
        for body, code in [(b"1", "bad-keys"), (b"[1]", "bad-keys"), (b"null", "bad-keys"),
                           (b"{", "bad-json"), (b'[""]', "bad-key")]:
            self.client.problem("DELETE", "/set", 400, code, body=body)
        self.assert_nothing_staged()

    def test_key_too_long_in_path(self):
        """A path key over 1024 bytes is a 400."""
        answer = self.client.problem("GET", "/" + "k" * 1025, 400, "key-too-long")
        self.assertEqual((answer.json["limit"], answer.json["size"]), (1024, 1025))

    def test_key_not_utf8_in_path(self):
        """A path key that is not UTF-8 is a 400."""
        self.client.problem("GET", "/%FF", 400, "bad-key")

    def test_keys_per_request_limit(self):
        """More keys in one request than allowed is a 413 naming the limit."""
        client = TreeClient(self, memory_root(self.store, limits=Limits(max_keys_per_request=2)))
        answer = client.problem("POST", "/set", 413, "limit-exceeded", json_body={"a": 1, "b": 2, "c": 3})
        self.assertEqual((answer.json["limit"], answer.json["size"]), (2, 3))
        self.assert_nothing_staged()

    def test_staged_ops_limit(self):
        """The shared queue holds at most max_staged_ops keys."""
        client = TreeClient(self, memory_root(self.store, limits=Limits(max_staged_ops=3)))
        client.request("POST", "/set", json_body={"a": 1, "b": 2})
        client.problem("POST", "/set", 413, "limit-exceeded", json_body={"c": 1, "d": 2})
        self.assertEqual(client.request("POST", "/set", json_body={"a": 5, "c": 1}).status, 201)


class StoreFailureTests(SynchronousTestCase):
    """An unavailable store is a 503 problem, and the queue is kept."""

    def test_commit_failure_keeps_queue(self):
        """A failed commit is 503; the staged writes commit on the next try."""
        store = MemoryStore()
        client = TreeClient(self, memory_root(store))
        client.request("POST", "/set", json_body={"a": 1})
        store.fail_commits = StoreUnavailable("disk on fire")
        client.problem("POST", "/commit", 503, "store-unavailable")
        store.fail_commits = None
        self.assertEqual(client.request("POST", "/commit").status, 204)
        self.assertEqual(client.request("GET", "/a").body, b"1")

    def test_unexpected_error_is_500_without_internals(self):
        """An unexpected exception is a logged 500 problem with no traceback."""
        store = MemoryStore()
        store.fail_commits = ZeroDivisionError("secret internals")
        client = TreeClient(self, memory_root(store))
        client.request("POST", "/set", json_body={"a": 1})
        answer = client.problem("POST", "/commit", 500, "internal-error")
        self.assertNotIn(b"secret", answer.body)
        self.assertNotIn(b"Traceback", answer.body)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class HeldStore(MemoryStore):
    """A MemoryStore whose commits are applied at once but answered later."""

    def __init__(self):
        super().__init__()
        self.held = []

    def commit(self, ops, checks=()):
        from twisted.internet.defer import Deferred

        outcome = super().commit(ops, checks)
        d = Deferred()
        self.held.append((outcome, d))
        return d

    def answer(self, index=0, error=None):
        """Answer the held commit C{index}: its outcome, or C{error}."""
        outcome, d = self.held.pop(index)
        if error is not None:
            outcome.addErrback(lambda _: None)
            d.errback(error)
        else:
            outcome.chainDeferred(d)


class SharedQueueDurabilityTests(SynchronousTestCase):
    """A seed commit answers only once every write it covers is durable."""

    def setUp(self):
        self.store = HeldStore()
        self.client = TreeClient(self, memory_root(self.store))
        self.stub = self.client.stub

    def start(self, method, path, body=None):
        d = self.stub.request(method, "http://kv.test" + path, data=body)
        self.stub.flush()
        return d

    def test_empty_commit_waits_for_inflight(self):
        """B's commit that finds the queue emptied by A's waits for A's sync."""
        self.client.request("POST", "/set", json_body={"b": 1})
        first = self.start("POST", "/commit")  # carries B's write
        second = self.start("POST", "/commit")  # B's own: nothing left to send
        self.assertNoResult(second)
        self.store.answer()
        self.stub.flush()
        self.assertEqual(self.successResultOf(first).code, 204)
        self.assertEqual(self.successResultOf(second).code, 204)

    def test_later_commit_fails_if_earlier_fails(self):
        """If the commit carrying B's write fails, B's commit fails too (503)."""
        self.client.request("POST", "/set", json_body={"b": 1})
        first = self.start("POST", "/commit")
        self.client.request("POST", "/set", json_body={"c": 2})
        second = self.start("POST", "/commit")
        self.store.answer(0, StoreUnavailable("disk gone"))
        self.stub.flush()
        self.assertEqual(self.successResultOf(first).code, 503)
        self.assertNoResult(second)
        self.store.answer(0)
        self.stub.flush()
        self.assertEqual(self.successResultOf(second).code, 503)
        # B's write was put back in the queue: the next commit carries it.
        self.assertEqual(self.client.request("POST", "/set", json_body={}).status, 200)
        third = self.start("POST", "/commit")
        self.store.answer(0)
        self.stub.flush()
        self.assertEqual(self.successResultOf(third).code, 204)
        self.assertEqual(self.client.request("GET", "/b").body, b"1")
