"""
Tests for L{kvtwist.client.batch}: C{batch}, one atomic request, and
C{transact}, batch-shaped ops through a multi-request transaction, against
the whole Resource tree in memory.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionRefusedError

from kvtwist import client
from kvtwist.client import ConflictError, KVClientError
from kvtwist.model import Put
from tests.helpers.client import AWKWARD_KEYS, FailAfter, Interloper, NoNetwork, URL, V1TestCase


class BatchTests(V1TestCase):
    """batch(): one atomic request."""

    def test_batch(self) -> None:
        """Every op kind applies atomically and gives its result."""
        self.put("old", b"1")
        self.put("keep", b'{"k": 1}', content_type="application/json")
        result = self.result(client.batch(self.http, URL, [
            {"op": "check", "key": "keep", "revision": 2},
            {"op": "check-absent", "key": "new/\u00e9 x"},
            {"op": "set", "key": "new/\u00e9 x", "value": {"a": [1, None]}},
            {"op": "set", "key": "bin", "value_base64": "AP8=", "content_type": "image/x", "ttl": 5},
            {"op": "delete", "key": "old"},
            {"op": "delete", "key": "never"},
            {"op": "get", "key": "keep"},
            {"op": "get", "key": "new/\u00e9 x"},
            {"op": "get", "key": "never"},
        ]))
        self.assertEqual(result["revision"], 3)
        self.assertEqual(
            [(r["op"], r["key"]) for r in result["results"]],
            [("check", "keep"), ("check-absent", "new/\u00e9 x"), ("set", "new/\u00e9 x"),
             ("set", "bin"), ("delete", "old"), ("delete", "never"), ("get", "keep"),
             ("get", "new/\u00e9 x"), ("get", "never")],
        )
        self.assertEqual(result["results"][6]["value"], {"k": 1})
        self.assertEqual(result["results"][7]["value"], {"a": [1, None]})
        self.assertFalse(result["results"][8]["found"])
        self.assertEqual((result["results"][4]["deleted"], result["results"][5]["deleted"]), (True, False))
        self.assertEqual(self.store.rows["bin"].value, b"\x00\xff")
        self.assertEqual(self.store.rows["new/\u00e9 x"].value, b'{"a":[1,null]}')
        self.assertNotIn("old", self.store.rows)

    def test_conflict_applies_nothing(self) -> None:
        """Failed checks give ConflictError with the failed op indexes; nothing is applied."""
        self.put("a")
        e = self.error(client.batch(self.http, URL, [
            {"op": "set", "key": "b", "value": 1},
            {"op": "check", "key": "a", "revision": 9},
            {"op": "check-absent", "key": "a"},
        ]), ConflictError)
        self.assertEqual(e.failed, [1, 2])
        self.assertEqual(
            e.conflicts,
            [{"key": "a", "check": "equals", "expected": 9, "actual": 1, "tag": 1},
             {"key": "a", "check": "absent", "expected": 0, "actual": 1, "tag": 2}],
        )
        self.assertNotIn("b", self.store.rows)

    def test_bad_op_is_400(self) -> None:
        """A malformed op is the server's 400 bad-op naming its index, not a conflict."""
        e = self.error(client.batch(self.http, URL, [{"op": "set", "key": "a"}]), KVClientError)
        self.assertNotIsInstance(e, ConflictError)
        self.assertEqual((e.status, e.code, e.problem["index"]), (400, "bad-op", 0))

    def test_tuple_and_empty(self) -> None:
        """A tuple of ops works; an empty batch commits nothing."""
        self.result(client.batch(self.http, URL, ({"op": "set", "key": "a", "value": 1},)))
        self.assertEqual(self.result(client.batch(self.http, URL, []))["results"], [])

    def test_bad_arguments_raise_at_once(self) -> None:
        """ops that are not a list, or hold NaN, raise before sending."""
        self.assertRaises(TypeError, client.batch, NoNetwork(self), URL, {"ops": []})
        self.assertRaises(
            ValueError, client.batch, NoNetwork(self), URL,
            [{"op": "set", "key": "a", "value": float("nan")}],
        )


class TransactTests(V1TestCase):
    """transact(): batch-shaped ops through a multi-request transaction."""

    def test_every_op_kind(self) -> None:
        """set, delete, get, check and check-absent are staged in order and committed at once."""
        self.put("old", b"1")
        self.put("keep", b"\x00", content_type="image/x")
        result = self.result(client.transact(self.http, URL, [
            {"op": "check", "key": "keep", "revision": 2},
            {"op": "check-absent", "key": "new/\u00e9 x"},
            {"op": "set", "key": "new/\u00e9 x", "value": {"a": 1}},
            {"op": "set", "key": "bin", "value_base64": "AP8=", "content_type": "image/y", "ttl": 5},
            {"op": "set", "key": "old", "value": "replaced"},
            {"op": "delete", "key": "old"},
            {"op": "delete", "key": "never"},
            {"op": "get", "key": "keep"},
            {"op": "get", "key": "new/\u00e9 x"},
            {"op": "get", "key": "never"},
        ]))
        self.assertEqual((result["revision"], result["ops"]), (3, 3))
        self.assertEqual(
            result["results"],
            [
                {"op": "check", "key": "keep", "ok": True},
                {"op": "check-absent", "key": "new/\u00e9 x", "ok": True},
                {"op": "set", "key": "new/\u00e9 x", "created": True},
                {"op": "set", "key": "bin", "created": True},
                {"op": "set", "key": "old", "created": False},
                {"op": "delete", "key": "old", "deleted": True},
                {"op": "delete", "key": "never", "deleted": False},
                {"op": "get", "found": True, "key": "keep", "create_revision": 2,
                 "mod_revision": 2, "version": 1, "content_type": "image/x", "size": 1,
                 "expires": None, "value_base64": "AA=="},
                {"op": "get", "found": True, "key": "new/\u00e9 x", "staged": True,
                 "content_type": "application/json", "size": 7, "expires": None,
                 "value": {"a": 1}},
                {"op": "get", "key": "never", "found": False},
            ],
        )
        self.assertEqual(self.store.rows["new/\u00e9 x"].value, b'{"a":1}')
        self.assertEqual(
            (self.store.rows["bin"].value, self.store.rows["bin"].content_type,
             self.store.rows["bin"].expires),
            (b"\x00\xff", "image/y", 5),
        )
        self.assertNotIn("old", self.store.rows)
        self.assertEqual(len(self.store.commits), 3)
        self.assertEqual(len(self.transactions), 0)

    def test_awkward_keys(self) -> None:
        """Keys with '/', spaces, '%', UTF-8 and reserved names go through a transaction intact."""
        ops = [{"op": "set", "key": key, "value": i} for i, key in enumerate(AWKWARD_KEYS)]
        self.result(client.transact(self.http, URL, ops))
        self.assertEqual(set(self.store.rows), set(AWKWARD_KEYS))

    def test_check_after_staging_uses_committed_revision(self) -> None:
        """A check after a set of the same key compares the committed revision, as a batch does."""
        self.put("a")
        self.result(client.transact(self.http, URL, [
            {"op": "set", "key": "a", "value": 2},
            {"op": "check", "key": "a", "revision": 1},
        ]))
        self.assertEqual(self.store.rows["a"].value, b"2")

    def test_failed_check_aborts(self) -> None:
        """A check that does not hold raises ConflictError (detected by the client) and aborts."""
        self.put("a")
        recorder = Interloper(self.http, "", None)
        d = client.transact(recorder, URL, [
            {"op": "set", "key": "b", "value": 1},
            {"op": "check", "key": "a", "revision": 7},
            {"op": "check-absent", "key": "a"},
            {"op": "check", "key": "c", "revision": 0},
        ])
        e = self.error(d, ConflictError)
        self.assertEqual((e.status, e.failed, e.problem["detected"]), (409, [1, 2], "client"))
        self.assertEqual(
            e.conflicts,
            [{"key": "a", "check": "equals", "expected": 7, "actual": 1, "tag": 1},
             {"key": "a", "check": "absent", "expected": 0, "actual": 1, "tag": 2}],
        )
        self.assertEqual(
            str(e), "409 conflict: the transaction was aborted: 2 check(s) failed on 'a', 'a'"
        )
        self.assertEqual(recorder.requests[-1][0], "DELETE")
        self.assertNotIn("/kv/", recorder.requests[-1][1])
        self.assertEqual(len(self.transactions), 0)
        self.assertNotIn("b", self.store.rows)

    def test_check_guarded_until_commit(self) -> None:
        """A key changed after a check read it makes the commit fail (409), not pass silently."""

        def theirs() -> None:
            self.successResultOf(self.store.commit([Put("a", b"theirs", "text/plain")]))

        self.put("a")
        http = Interloper(self.http, "/commit", theirs)
        d = client.transact(http, URL, [
            {"op": "check", "key": "a", "revision": 1},
            {"op": "set", "key": "b", "value": 1},
        ])
        e = self.error(d, ConflictError)
        self.assertNotIn("detected", e.problem)
        self.assertEqual(e.conflicts[0]["tag"], "observed")
        self.assertNotIn("b", self.store.rows)
        # The server ended the transaction: no abort is sent after a refused commit.
        self.assertEqual(http.requests[-1][0], "POST")
        self.assertEqual(len(self.transactions), 0)

    def test_server_error_mid_way_aborts(self) -> None:
        """A refused op aborts the transaction: nothing staged before it is applied."""
        http = Interloper(self.http, "", None)
        d = client.transact(http, URL, [
            {"op": "set", "key": "a", "value": 1},
            {"op": "set", "key": "x" * 1025, "value": 2},
            {"op": "set", "key": "c", "value": 3},
        ])
        e = self.error(d, KVClientError)
        self.assertEqual((e.status, e.code), (400, "key-too-long"))
        self.assertEqual([m for m, _ in http.requests], ["POST", "PUT", "PUT", "DELETE"])
        self.assertEqual(len(self.transactions), 0)
        self.assertEqual(self.store.rows, {})

    def test_failed_abort_keeps_the_first_error(self) -> None:
        """If the abort fails too, the error that caused it is the one raised."""
        http = FailAfter(self.http, 2, ConnectionRefusedError("gone"))
        d = client.transact(http, URL, [
            {"op": "set", "key": "a", "value": 1},
            {"op": "set", "key": "b", "value": 2},
        ])
        self.error(d, ConnectionRefusedError)
        self.assertEqual([m for m, _ in http.requests], ["POST", "PUT", "PUT", "DELETE"])

    def test_cancel_sends_no_abort(self) -> None:
        """Cancelling (a timeout) stops at once: no abort is sent; the server expires it."""
        http = FailAfter(self.http, 2)
        d = client.transact(http, URL, [
            {"op": "set", "key": "a", "value": 1},
            {"op": "set", "key": "b", "value": 2},
        ])
        self.http.flush()
        self.assertNoResult(d)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(http.cancelled, 1)
        self.assertEqual(len(http.requests), 3)
        self.assertEqual(len(self.transactions), 1)
        self.clock.advance(301)
        self.assertEqual(len(self.transactions), 0)

    def test_empty(self) -> None:
        """No ops: the transaction is opened and committed with nothing in it."""
        result = self.result(client.transact(self.http, URL, []))
        self.assertEqual((result["results"], result["ops"]), ([], 0))

    def test_bad_ops_raise_at_once(self) -> None:
        """Ops that are not the batch shapes raise ValueError naming the op; nothing is sent."""
        for ops, message in (
            ([1], "op 0: each op is an object"),
            ([{"op": "frob", "key": "a"}], "op 0: each op is an object"),
            ([{"op": "get", "key": "a"}, {"op": "get"}], "op 1: key must be a non-empty string"),
            ([{"op": "get", "key": ""}], "op 0: key must be"),
            ([{"op": "get", "key": "\ud800"}], "op 0: the key holds a lone surrogate"),
            ([{"op": "set", "key": "a"}], "op 0: a set takes exactly one of value and value_base64"),
            ([{"op": "set", "key": "a", "value": 1, "value_base64": ""}], "op 0: a set takes exactly"),
            ([{"op": "set", "key": "a", "value_base64": "!!"}], "op 0: value_base64 is not valid base64"),
            ([{"op": "set", "key": "a", "value_base64": 5}], "op 0: value_base64 is not valid base64"),
            ([{"op": "set", "key": "a", "value_base64": "", "content_type": ""}], "op 0: content_type"),
            ([{"op": "set", "key": "a", "value": 1, "ttl": 0}], "op 0: ttl must be above 0"),
            ([{"op": "set", "key": "a", "value": float("nan")}], "op 0: the value is not strict JSON"),
            ([{"op": "check", "key": "a"}], "op 0: revision must be a non-negative integer"),
            ([{"op": "check", "key": "a", "revision": -1}], "op 0: revision must be"),
            ([{"op": "check", "key": "a", "revision": True}], "op 0: revision must be"),
        ):
            e = self.assertRaises(ValueError, client.transact, NoNetwork(self), URL, ops)
            self.assertTrue(str(e).startswith(message), (ops, str(e)))
        self.assertRaises(TypeError, client.transact, NoNetwork(self), URL, {"ops": []})
        self.assertRaises(
            ValueError, client.transact, NoNetwork(self), URL,
            [{"op": "set", "key": "a", "value": 1, "ttl": True}],
        )
