"""
Tests for L{kvtwist.client.seed}: the seed routes' functions (C{get},
C{get_value}, C{set_many}, C{delete}, C{commit}) against the whole Resource
tree in memory (C{StubTreq(memory_root())}).
"""

from __future__ import annotations

from treq.testing import StubTreq

from kvtwist import client
from kvtwist.client import KVClientError, NotFoundError
from kvtwist.errors import StoreUnavailable
from kvtwist.testing import MemoryStore, memory_root
from tests.helpers.client import AWKWARD_KEYS, URL, NoNetwork, StubTreqTestCase


class MemoryServerTests(StubTreqTestCase):
    """Every client function against the real Resource tree over a MemoryStore."""

    def setUp(self) -> None:
        self.store = MemoryStore()
        self.http = StubTreq(memory_root(self.store))

    def committed(self, pairs: dict) -> None:
        self.result(client.set_many(self.http, URL, pairs))
        self.result(client.commit(self.http, URL))

    def test_get_returns_decoded_json(self) -> None:
        """get() fires with the committed value decoded from JSON, for every JSON type."""
        values = {
            "int": 1,
            "float": 2.5,
            "str": "text",
            "null": None,
            "bool": False,
            "list": [1, "two", [3]],
            "object": {"nested": {"caf\u00e9": "\u2603"}},
        }
        self.committed(values)
        for key, value in values.items():
            self.assertEqual(self.result(client.get(self.http, URL, key)), value)

    def test_get_missing_is_not_found(self) -> None:
        """get() of an absent key fails with NotFoundError carrying the problem."""
        e = self.error(client.get(self.http, URL, "a"), NotFoundError)
        self.assertEqual(e.status, 404)
        self.assertEqual(e.code, "key-not-found")
        self.assertEqual(e.missing, ["a"])
        self.assertEqual(e.problem["status"], 404)
        self.assertEqual(str(e), "404 key-not-found: no such key: 'a'")
        self.assertIsInstance(e, KVClientError)

    def test_get_does_not_see_staged_writes(self) -> None:
        """A value staged with set_many() is invisible to get() until commit()."""
        self.result(client.set_many(self.http, URL, {"a": 1}))
        self.error(client.get(self.http, URL, "a"), NotFoundError)
        self.result(client.commit(self.http, URL))
        self.assertEqual(self.result(client.get(self.http, URL, "a")), 1)

    def test_get_empty_key_raises_at_once(self) -> None:
        """get() with an empty key raises ValueError before sending anything."""
        self.assertRaises(ValueError, client.get, NoNetwork(self), URL, "")

    def test_get_non_str_key_raises_at_once(self) -> None:
        """get() with a bytes key raises TypeError before sending anything."""
        self.assertRaises(TypeError, client.get, NoNetwork(self), URL, b"a")

    def test_awkward_keys_round_trip(self) -> None:
        """Keys with '/', spaces, '%', '?', '#', UTF-8 and dot segments are one key each."""
        pairs = {key: i for i, key in enumerate(AWKWARD_KEYS)}
        self.committed(pairs)
        self.assertEqual(
            {key: entry.value for key, entry in self.store.rows.items()},
            {key: str(i).encode("ascii") for key, i in pairs.items()},
        )
        for key in AWKWARD_KEYS:
            if key in ("set", "commit"):
                continue  # the seed's GET route cannot reach these names
            self.assertEqual(self.result(client.get(self.http, URL, key)), pairs[key], key)

    def test_get_reserved_name_is_not_found(self) -> None:
        """get() of a key named 'set' is the seed's 404 for the operation path."""
        self.committed({"set": 1})
        e = self.error(client.get(self.http, URL, "set"), NotFoundError)
        self.assertEqual(e.code, "not-found")

    def test_set_many_reports_created_then_updated(self) -> None:
        """set_many() fires with 'created' for new keys and 'updated' for committed ones."""
        self.assertEqual(
            self.result(client.set_many(self.http, URL, {"a": 1, "b": 2})),
            {"a": "created", "b": "created"},
        )
        self.result(client.commit(self.http, URL))
        self.assertEqual(
            self.result(client.set_many(self.http, URL, {"a": 3, "c": 4})),
            {"a": "updated", "c": "created"},
        )

    def test_set_many_bad_key_is_400_and_stages_nothing(self) -> None:
        """A key the server refuses gives KVClientError 400, and no pair is staged."""
        e = self.error(client.set_many(self.http, URL, {"ok": 1, "": 2}), KVClientError)
        self.assertNotIsInstance(e, NotFoundError)
        self.assertEqual((e.status, e.code), (400, "bad-key"))
        self.assertEqual(str(e), "400 bad-key: the key is empty")
        self.result(client.commit(self.http, URL))
        self.assertEqual(self.store.rows, {})

    def test_set_many_key_too_long_is_400(self) -> None:
        """A key over 1024 UTF-8 bytes gives 400 key-too-long with the limit and size."""
        e = self.error(client.set_many(self.http, URL, {"x" * 1025: 1}), KVClientError)
        self.assertEqual((e.status, e.code), (400, "key-too-long"))
        self.assertEqual((e.problem["limit"], e.problem["size"]), (1024, 1025))

    def test_set_many_rejects_non_strict_json_at_once(self) -> None:
        """NaN, Infinity and lone surrogates raise ValueError before sending."""
        for value in (float("nan"), float("inf"), "\ud800"):
            self.assertRaises(ValueError, client.set_many, NoNetwork(self), URL, {"a": value})

    def test_set_many_rejects_non_json_at_once(self) -> None:
        """A value json cannot encode raises TypeError before sending."""
        self.assertRaises(TypeError, client.set_many, NoNetwork(self), URL, {"a": object()})

    def test_delete_one_key(self) -> None:
        """delete() stages a delete applied by commit(); get() then gives 404."""
        self.committed({"a": 1})
        self.assertEqual(self.result(client.delete(self.http, URL, "a")), {"a": "deleted"})
        self.assertEqual(self.result(client.get(self.http, URL, "a")), 1)
        self.result(client.commit(self.http, URL))
        self.error(client.get(self.http, URL, "a"), NotFoundError)

    def test_delete_several_and_reserved_keys(self) -> None:
        """delete() takes several keys, including awkward and reserved names."""
        self.committed({key: 1 for key in AWKWARD_KEYS})
        self.assertEqual(
            self.result(client.delete(self.http, URL, *AWKWARD_KEYS)),
            {key: "deleted" for key in AWKWARD_KEYS},
        )
        self.result(client.commit(self.http, URL))
        self.assertEqual(self.store.rows, {})

    def test_delete_staged_key(self) -> None:
        """delete() accepts a key that is only staged, not yet committed."""
        self.result(client.set_many(self.http, URL, {"a": 1}))
        self.assertEqual(self.result(client.delete(self.http, URL, "a")), {"a": "deleted"})

    def test_delete_unknown_is_not_found_and_stages_nothing(self) -> None:
        """delete() of unknown keys fails with NotFoundError naming them; nothing is staged."""
        self.committed({"a": 1})
        e = self.error(client.delete(self.http, URL, "a", "x", "y"), NotFoundError)
        self.assertEqual(e.code, "key-not-found")
        self.assertEqual(e.missing, ["x", "y"])
        self.result(client.commit(self.http, URL))
        self.assertEqual(self.result(client.get(self.http, URL, "a")), 1)

    def test_delete_needs_keys(self) -> None:
        """delete() with no key raises ValueError, with a non-str key TypeError, at once."""
        self.assertRaises(ValueError, client.delete, NoNetwork(self), URL)
        self.assertRaises(TypeError, client.delete, NoNetwork(self), URL, "a", 1)

    def test_commit_fires_none(self) -> None:
        """commit() fires with None, also when nothing is staged."""
        self.assertIsNone(self.result(client.commit(self.http, URL)))
        self.result(client.set_many(self.http, URL, {"a": 1}))
        self.assertIsNone(self.result(client.commit(self.http, URL)))
        self.assertEqual(len(self.store.commits), 1)

    def test_commit_store_unavailable_is_503(self) -> None:
        """A failing store gives KVClientError 503 store-unavailable from commit()."""
        self.result(client.set_many(self.http, URL, {"a": 1}))
        self.store.fail_commits = StoreUnavailable("the disk is gone")
        e = self.error(client.commit(self.http, URL), KVClientError)
        self.assertEqual((e.status, e.code), (503, "store-unavailable"))
        self.assertEqual(str(e), "503 store-unavailable: the disk is gone")

    def test_token_accepted_without_auth(self) -> None:
        """A token is harmless against a server without auth."""
        self.result(client.set_many(self.http, URL, {"a": 1}, token="t0ken"))
        self.result(client.commit(self.http, URL, token="t0ken"))
        self.assertEqual(self.result(client.get(self.http, URL, "a", token="t0ken")), 1)
        self.assertEqual(
            self.result(client.delete(self.http, URL, "a", token="t0ken")), {"a": "deleted"}
        )
