"""
Tests for L{kvtwist.client.txn}: C{begin} and the L{Transaction}'s methods
against the whole Resource tree in memory.
"""

from __future__ import annotations

from kvtwist import client
from kvtwist.client import ConflictError, KVClientError, NotFoundError
from kvtwist.errors import StoreUnavailable
from tests.helpers.client import NoNetwork, URL, V1TestCase


class TransactionTests(V1TestCase):
    """begin() and the Transaction's methods."""

    def begin(self) -> client.Transaction:
        return self.result(client.begin(self.http, URL))

    def test_begin(self) -> None:
        """begin() fires with an open Transaction: its id and the server's idle timeout."""
        txn = self.begin()
        self.assertIsInstance(txn, client.Transaction)
        self.assertEqual((txn.expires_in, txn.finished), (300.0, False))
        self.assertEqual(len(self.transactions), 1)
        self.assertIn(txn.id, repr(txn))

    def test_reads_its_own_writes_and_commits(self) -> None:
        """A staged put is visible to the transaction only, until commit applies it."""
        txn = self.begin()
        staged = self.result(txn.put("a/b c", b"\xff", content_type="image/x", ttl=10))
        self.assertEqual(staged, {"key": "a/b c", "staged": "put", "committed": False, "ops": 1})
        entry = self.result(txn.get("a/b c"))
        self.assertEqual(
            (entry.value, entry.content_type, entry.staged, entry.mod_revision, entry.etag),
            (b"\xff", "image/x", True, None, None),
        )
        self.assertEqual(entry.as_item(), {
            "key": "a/b c", "staged": True, "content_type": "image/x", "size": 1,
            "expires": None, "value_base64": "/w=="})
        self.error(client.get_entry(self.http, URL, "a/b c"), NotFoundError)
        self.assertEqual(self.result(txn.commit()), {"revision": 1, "ops": 1})
        self.assertTrue(txn.finished)
        self.assertEqual(self.store.rows["a/b c"].value, b"\xff")
        self.assertEqual(self.store.rows["a/b c"].expires, 10)
        self.assertEqual(len(self.transactions), 0)

    def test_get_committed_and_absent(self) -> None:
        """get() through a transaction reads committed values with revisions; absent is 404."""
        self.put("a", b"1")
        txn = self.begin()
        entry = self.result(txn.get("a"))
        self.assertEqual((entry.value, entry.mod_revision, entry.staged), (b"1", 1, False))
        e = self.error(txn.get("nope"), NotFoundError)
        self.assertEqual(e.code, "key-not-found")

    def test_delete(self) -> None:
        """delete() stages a delete the transaction sees at once and commit applies."""
        self.put("a")
        txn = self.begin()
        self.assertEqual(self.result(txn.delete("a")), {"key": "a", "staged": "delete", "ops": 1})
        self.error(txn.get("a"), NotFoundError)
        self.assertIn("a", self.store.rows)
        self.result(txn.commit())
        self.assertNotIn("a", self.store.rows)

    def test_delete_absent(self) -> None:
        """delete() of a key that exists nowhere fails with NotFoundError key-not-found."""
        txn = self.begin()
        self.assertEqual(self.error(txn.delete("nope"), NotFoundError).code, "key-not-found")

    def test_set_many_and_describe(self) -> None:
        """set_many() stages JSON pairs; describe() lists ops, observed revisions and preconditions."""
        self.put("b")
        txn = self.begin()
        self.assertEqual(
            self.result(txn.set_many({"a": [1], "b": None})), {"a": "created", "b": "updated"}
        )
        self.result(txn.put("c", b"x", if_none_match=True))
        description = self.result(txn.describe())
        self.assertEqual(description["id"], txn.id)
        self.assertEqual(
            [(op["op"], op["key"]) for op in description["ops"]],
            [("put", "a"), ("put", "b"), ("put", "c")],
        )
        self.assertEqual(description["observed"], {"a": 0, "b": 1, "c": 0})
        self.assertEqual(
            description["preconditions"],
            [{"key": "c", "check": "absent", "revision": 0, "header": "If-None-Match"}],
        )
        self.result(txn.commit())
        self.assertEqual(self.store.rows["a"].content_type, "application/json")
        self.assertEqual(self.store.rows["a"].value, b"[1]")

    def test_abort(self) -> None:
        """abort() drops the staged ops and ends the transaction; it is 404 afterwards."""
        txn = self.begin()
        self.result(txn.put("a", b"1"))
        self.assertIsNone(self.result(txn.abort()))
        self.assertTrue(txn.finished)
        self.assertEqual(len(self.transactions), 0)
        e = self.error(txn.commit(), NotFoundError)
        self.assertEqual(e.code, "transaction-not-found")
        self.assertEqual(self.store.rows, {})

    def test_conflict(self) -> None:
        """A key changed by another commit after the transaction read it gives ConflictError."""
        self.put("a", b"1")
        txn = self.begin()
        self.result(txn.get("a"))
        self.result(txn.put("b", b"mine"))
        self.put("a", b"theirs")
        e = self.error(txn.commit(), ConflictError)
        self.assertEqual((e.status, e.code, e.failed), (409, "conflict", []))
        self.assertEqual(
            e.conflicts,
            [{"key": "a", "check": "equals", "expected": 1, "actual": 2, "tag": "observed"}],
        )
        self.assertTrue(txn.finished)
        self.assertNotIn("b", self.store.rows)

    def test_staged_precondition_fails_at_commit(self) -> None:
        """A stale if_match on a staged put is accepted now and fails the commit (409)."""
        self.put("a")
        txn = self.begin()
        self.result(txn.put("a", b"2", if_match=7))
        e = self.error(txn.commit(), ConflictError)
        self.assertEqual([c["tag"] for c in e.conflicts], ["If-Match"])
        self.assertEqual(self.store.rows["a"].value, b"v")

    def test_staged_delete_precondition(self) -> None:
        """delete(if_match=) records the precondition for the commit."""
        self.put("a")
        txn = self.begin()
        self.result(txn.delete("a", if_match=5))
        e = self.error(txn.commit(), ConflictError)
        self.assertEqual(e.conflicts[0]["tag"], "If-Match")
        self.assertIn("a", self.store.rows)

    def test_two_transactions_first_committer_wins(self) -> None:
        """Two transactions staging the same key: each sees only its own write; the second gets 409."""
        one, two = self.begin(), self.begin()
        self.result(one.put("k", b"one"))
        self.result(two.put("k", b"two"))
        self.assertEqual(self.result(one.get("k")).value, b"one")
        self.assertEqual(self.result(two.get("k")).value, b"two")
        self.result(one.commit())
        self.error(two.commit(), ConflictError)
        self.assertEqual(self.store.rows["k"].value, b"one")

    def test_expiry(self) -> None:
        """An idle transaction expires after the server's timeout: 404 transaction-not-found."""
        txn = self.begin()
        self.clock.advance(299)
        self.result(txn.put("a", b"1"))
        self.clock.advance(299)
        self.result(txn.describe())
        self.clock.advance(301)
        e = self.error(txn.commit(), NotFoundError)
        self.assertEqual(e.code, "transaction-not-found")
        self.assertFalse(txn.finished)

    def test_store_unavailable_leaves_it_open(self) -> None:
        """A 503 on commit leaves the transaction open (not finished) to retry."""
        txn = self.begin()
        self.result(txn.put("a", b"1"))
        self.store.fail_commits = StoreUnavailable("the disk is gone")
        e = self.error(txn.commit(), KVClientError)
        self.assertEqual(e.status, 503)
        self.assertFalse(txn.finished)
        self.store.fail_commits = None
        self.result(txn.commit())
        self.assertEqual(self.store.rows["a"].value, b"1")

    def test_bad_arguments_raise_at_once(self) -> None:
        """Transaction methods check keys, values and pairs before sending."""
        txn = client.Transaction(NoNetwork(self), URL, "t")
        self.assertRaises(ValueError, txn.put, "", b"v")
        self.assertRaises(TypeError, txn.put, "a", "v")
        self.assertRaises(ValueError, txn.put, "a", b"v", ttl=-1)
        self.assertRaises(ValueError, txn.delete, "a", if_match="?")
        self.assertRaises(ValueError, txn.get, "")
        self.assertRaises(ValueError, txn.set_many, {"a": float("nan")})
