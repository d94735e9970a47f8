# -*- test-case-name: tests.unit.test_batch_branching -*-
"""
C{POST /v1/batch} in memory: etcd's branching form (compare, success,
failure), and batches that write nothing, which are answered from reads
at one revision and never as a commit.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.model import Put
from kvtwist.store.cache import CachedStore
from kvtwist.testing import MemoryStore, memory_root
from kvtwist.web.v1.batch_ops import json_equal
from tests.helpers.webtest import TreeClient


class HeldCommits(MemoryStore):
    """A MemoryStore whose commits wait until C{release()} (a busy store thread)."""

    def __init__(self, clock):
        super().__init__(clock)
        self.held = []
        self.hold = False

    def commit(self, ops, checks=()):
        if not self.hold:
            return super().commit(ops, checks)
        d = Deferred()
        self.held.append((ops, checks, d))
        return d

    def release(self):
        held, self.held = self.held, []
        self.hold = False
        for ops, checks, d in held:
            super().commit(ops, checks).chainDeferred(d)


class ChangesWhileRead(MemoryStore):
    """A MemoryStore where another client commits C{change} right after the first read."""

    change = None

    def get_many(self, keys):
        d = super().get_many(keys)
        change, self.change = self.change, None
        if change is not None:
            super().commit(change)
        return d


class BranchCase(SynchronousTestCase):
    """A fresh tree per test over a store made by C{make_store}."""

    def make_store(self, clock):
        return MemoryStore(clock)

    def setUp(self):
        self.clock = Clock()
        self.store = self.make_store(self.clock)
        self.client = TreeClient(self, memory_root(self.store))
        self.store.commit([Put("cfg", b'{"mode": "a", "n": 1}', "application/json"),
                           Put("raw", b"\x00\x01", "application/octet-stream")])

    def branch(self, compare, success=(), failure=()):
        answer = self.client.request("POST", "/v1/batch", json_body={
            "compare": list(compare), "success": list(success), "failure": list(failure)})
        self.assertEqual(answer.status, 200, answer.body)
        return answer.json


class BranchingTests(BranchCase):
    """compare / success / failure."""

    def test_success_branch(self):
        """When every compare holds, the success ops apply in one commit: succeeded true, its results."""
        body = self.branch(
            [{"key": "cfg", "value": {"n": 1, "mode": "a"}}, {"key": "new", "absent": True},
             {"key": "cfg", "version": 1}, {"key": "cfg", "mod_revision": 2, "cmp": "<"}],
            success=[{"op": "set", "key": "new", "value": 2}, {"op": "get", "key": "cfg"}],
            failure=[{"op": "set", "key": "lost", "value": 3}],
        )
        self.assertEqual((body["succeeded"], body["revision"]), (True, 2))
        self.assertEqual(body["results"][0], {"op": "set", "key": "new", "created": True})
        self.assertEqual(body["results"][1]["value"], {"mode": "a", "n": 1})
        self.assertEqual(sorted(self.store.rows), ["cfg", "new", "raw"])

    def test_failure_branch(self):
        """When a compare fails, the failure ops apply instead: succeeded false, still a 200."""
        body = self.branch(
            [{"key": "cfg", "value": {"mode": "b", "n": 1}}],
            success=[{"op": "delete", "key": "cfg"}],
            failure=[{"op": "set", "key": "fallback", "value": True}, {"op": "delete", "key": "raw"}],
        )
        self.assertEqual((body["succeeded"], body["revision"]), (False, 2))
        self.assertEqual(body["results"][1], {"op": "delete", "key": "raw", "deleted": True})
        self.assertEqual(sorted(self.store.rows), ["cfg", "fallback"])

    def test_compare_kinds(self):
        """Each compare: value (JSON, base64, !=), absent true/false, and the fields with = != < >."""
        cases = [
            ({"key": "raw", "value_base64": "AAE="}, True),
            ({"key": "raw", "value": "\u0000\u0001"}, False),
            ({"key": "cfg", "value": {"mode": "a", "n": True}}, False),
            ({"key": "cfg", "value": {"mode": "a", "n": 1.0}}, True),
            ({"key": "cfg", "value": 1, "cmp": "!="}, True),
            ({"key": "gone", "value": 1, "cmp": "!="}, True),
            ({"key": "gone", "value": None}, False),
            ({"key": "cfg", "absent": False}, True),
            ({"key": "gone", "absent": True}, True),
            ({"key": "cfg", "create_revision": 1}, True),
            ({"key": "cfg", "create_revision": 1, "cmp": "!="}, False),
            ({"key": "cfg", "mod_revision": 0, "cmp": ">"}, True),
            ({"key": "gone", "version": 0}, True),
            ({"key": "gone", "mod_revision": 1, "cmp": "<"}, True),
        ]
        for compare, expected in cases:
            self.assertEqual(self.branch([compare])["succeeded"], expected, compare)

    def test_read_only_branch_commits_nothing(self):
        """A branching batch whose chosen branch only reads commits nothing and answers the current revision."""
        commits = len(self.store.commits)
        body = self.branch([{"key": "cfg", "version": 7}],
                           success=[{"op": "delete", "key": "cfg"}],
                           failure=[{"op": "get", "key": "cfg"}, {"op": "get", "key": "gone"}])
        self.assertEqual((body["succeeded"], body["revision"]), (False, 1))
        self.assertEqual(body["results"][1], {"op": "get", "key": "gone", "found": False})
        self.assertEqual(len(self.store.commits), commits)

    def test_bad_bodies(self):
        """Malformed compares and branch ops are 400 bad-op naming where; nothing applies."""
        for body in (
            {"compare": [{"key": "a"}]},
            {"compare": [{"key": "a", "version": 1, "value": 1}]},
            {"compare": [{"key": "a", "version": -1}]},
            {"compare": [{"key": "a", "version": 1, "cmp": "~"}]},
            {"compare": [{"key": "a", "value": 1, "cmp": "<"}]},
            {"compare": [{"key": "a", "absent": 1}]},
            {"compare": [{"key": "a", "absent": True, "extra": 1}]},
            {"compare": [], "success": [{"op": "check-absent", "key": "a"}]},
            {"compare": [], "failure": [{"op": "set", "key": "a"}]},
            {"compare": [], "other": []},
            {"ops": [], "compare": []},
        ):
            answer = self.client.request("POST", "/v1/batch", json_body=body)
            self.assertEqual(answer.status, 400, body)
            self.assertIn(answer.json["code"], ("bad-op", "bad-batch"), body)
        self.assertEqual(self.store.revision, 1)


class GuardTests(BranchCase):
    """A compared key changed by another commit before the branch applies."""

    def make_store(self, clock):
        return ChangesWhileRead(clock)

    def test_compares_start_again(self):
        """The branch chosen on a stale read is not applied: the batch reads again and decides again."""
        self.store.change = [Put("cfg", b'{"mode": "b"}', "application/json")]
        body = self.branch([{"key": "cfg", "value": {"mode": "a", "n": 1}}],
                           success=[{"op": "set", "key": "picked", "value": "success"}],
                           failure=[{"op": "set", "key": "picked", "value": "failure"}])
        self.assertEqual((body["succeeded"], body["revision"]), (False, 3))
        self.assertEqual(self.store.rows["picked"].value, b'"failure"')


class ReadOnlyBatchTests(SynchronousTestCase):
    """Batches that write nothing are reads, not commits."""

    def setUp(self):
        self.clock = Clock()
        self.inner = HeldCommits(self.clock)
        self.store = CachedStore(self.inner, 1 << 20)
        self.client = TreeClient(self, memory_root(self.store))
        self.store.commit([Put("a", b"1", "application/json"), Put("b", b"2", "application/json")])
        self.client.request("GET", "/v1/kv/a")
        self.client.request("GET", "/v1/kv/b")

    def test_gets_and_checks_commit_nothing(self):
        """Gets and checks: 200 at the current revision, no commit made."""
        commits = len(self.inner.commits)
        answer = self.client.request("POST", "/v1/batch", json_body={"ops": [
            {"op": "get", "key": "a"}, {"op": "check", "key": "b", "revision": 1},
            {"op": "check-absent", "key": "c"}, {"op": "get", "key": "c"}]})
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.json["revision"], 1)
        self.assertEqual([r.get("found", r.get("ok")) for r in answer.json["results"]],
                         [True, True, True, False])
        self.assertEqual(len(self.inner.commits), commits)

    def test_failed_check_is_409_without_commit(self):
        """A failing check in a read-only batch is the usual 409 naming it; no commit is made."""
        commits = len(self.inner.commits)
        answer = self.client.problem("POST", "/v1/batch", 409, "conflict", json_body={"ops": [
            {"op": "get", "key": "a"}, {"op": "check-absent", "key": "b"}]})
        self.assertEqual(answer.json["failed"], [1])
        self.assertEqual(len(self.inner.commits), commits)

    def test_never_waits_behind_commits(self):
        """While a commit is stuck on the store, a read-only batch of cached keys answers at once."""
        self.inner.hold = True
        pending = self.client.stub.request(
            "PUT", "http://kv.test/v1/kv/slow", data=b"x")
        self.client.stub.flush()
        self.assertNoResult(pending)
        answer = self.client.request("POST", "/v1/batch", json_body={
            "compare": [{"key": "a", "value": 1}], "success": [{"op": "get", "key": "b"}]})
        self.assertEqual((answer.status, answer.json["succeeded"], answer.json["revision"]),
                         (200, True, 1))
        self.inner.release()
        self.client.stub.flush()
        self.assertEqual(self.successResultOf(pending).code, 201)


class JsonEqualTests(SynchronousTestCase):
    """Value compares compare JSON, not Python objects."""

    def test_json_equal(self):
        """Numbers by value, booleans apart from numbers, containers member by member."""
        self.assertTrue(json_equal({"a": [1, 2.0]}, {"a": [1.0, 2]}))
        self.assertFalse(json_equal(True, 1))
        self.assertFalse(json_equal([0], [False]))
        self.assertFalse(json_equal({"a": 1}, {"a": 1, "b": 2}))
        self.assertFalse(json_equal("1", 1))


class CounterTests(BranchCase):
    """incr in batches (both forms) and in transactions."""

    def test_batch_incr(self):
        """incr adds to a JSON integer (absent: 0), of any size; results say each step's value; a get sees it."""
        self.store.commit([Put("big", str(10 ** 30).encode(), "application/json")])
        answer = self.client.request("POST", "/v1/batch", json_body={"ops": [
            {"op": "incr", "key": "n"}, {"op": "incr", "key": "n", "by": 41},
            {"op": "get", "key": "n"}, {"op": "incr", "key": "big", "by": -1}]})
        self.assertEqual(answer.status, 200, answer.body)
        results = answer.json["results"]
        self.assertEqual([r.get("value") for r in results], [1, 42, 42, 10 ** 30 - 1])
        self.assertEqual(self.store.rows["n"].value, b"42")
        self.assertEqual(self.store.rows["n"].content_type, "application/json")

    def test_not_an_integer_is_409(self):
        """incr of a value that is not a JSON integer is a 409 not-an-integer; nothing applies."""
        for key in ("cfg", "raw"):
            answer = self.client.problem("POST", "/v1/batch", 409, "not-an-integer", json_body={
                "ops": [{"op": "set", "key": "other", "value": 1}, {"op": "incr", "key": key}]})
            self.assertEqual(answer.json["key"], key)
        self.assertNotIn("other", self.store.rows)
        self.client.problem("POST", "/v1/batch", 400, "bad-op",
                            json_body={"ops": [{"op": "incr", "key": "n", "by": 1.5}]})

    def test_incr_in_a_branch(self):
        """incr is a branch op: a compare-and-increment."""
        body = self.branch([{"key": "n", "absent": True}],
                           success=[{"op": "incr", "key": "n", "by": 3}])
        self.assertEqual((body["succeeded"], body["results"]), (True, [{"op": "incr", "key": "n", "value": 3}]))

    def test_transaction_incr(self):
        """POST /v1/txn/{id}/incr stages the sum read through the transaction; a concurrent change makes the commit 409."""
        self.store.commit([Put("n", b"5", "application/json")])
        txn = self.client.request("POST", "/v1/txn").json["id"]
        answer = self.client.request("POST", "/v1/txn/%s/incr" % txn, json_body={"key": "n", "by": 2})
        self.assertEqual(answer.json, {"key": "n", "value": 7, "staged": "put", "ops": 1})
        answer = self.client.request("POST", "/v1/txn/%s/incr" % txn, json_body={"key": "n"})
        self.assertEqual(answer.json["value"], 8)
        self.assertEqual(self.store.rows["n"].value, b"5")
        self.assertEqual(self.client.request("POST", "/v1/txn/%s/commit" % txn).status, 200)
        self.assertEqual(self.store.rows["n"].value, b"8")
        other = self.client.request("POST", "/v1/txn").json["id"]
        self.client.request("POST", "/v1/txn/%s/incr" % other, json_body={"key": "n"})
        self.store.commit([Put("n", b"100", "application/json")])
        self.client.problem("POST", "/v1/txn/%s/commit" % other, 409, "conflict")
        self.assertEqual(self.store.rows["n"].value, b"100")
        bad = self.client.request("POST", "/v1/txn").json["id"]
        self.client.problem("POST", "/v1/txn/%s/incr" % bad, 409, "not-an-integer", json_body={"key": "cfg"})
        self.client.problem("POST", "/v1/txn/%s/incr" % bad, 400, "bad-incr", json_body={"key": "n", "by": "2"})
