"""
Tests for L{kvtwist.client.kv}: C{put}, C{get_entry}, C{remove},
C{list_keys}, C{iter_pages} and C{list_all} against the whole Resource
tree in memory.
"""

from __future__ import annotations

from treq.testing import StubTreq

from kvtwist import client
from kvtwist.client import KVClientError, NotFoundError, PreconditionFailedError
from tests.helpers.client import AWKWARD_KEYS, NoNetwork, Recorder, URL, V1TestCase


class PutTests(V1TestCase):
    """put(): one-op commits with content types, TTLs and preconditions."""

    def test_put_creates(self) -> None:
        """A first put fires with created, revision, version 1, the ETag and no expiry."""
        result = self.put("a", b"\x00\xffbytes", content_type="image/png")
        self.assertEqual(
            result,
            {"key": "a", "revision": 1, "created": True, "version": 1, "etag": '"1"',
             "mod_revision": 1, "expires": None},
        )
        entry = self.store.rows["a"]
        self.assertEqual((entry.value, entry.content_type), (b"\x00\xffbytes", "image/png"))

    def test_put_updates(self) -> None:
        """A second put says created False, with the next revision and version 2."""
        self.put("a")
        self.put("other")
        result = self.put("a", b"2")
        self.assertEqual(
            (result["created"], result["revision"], result["version"], result["etag"]),
            (False, 3, 2, '"3"'),
        )

    def test_default_content_type(self) -> None:
        """Without content_type the value is stored as application/octet-stream."""
        self.put("a")
        self.assertEqual(self.store.rows["a"].content_type, "application/octet-stream")
        self.assertEqual(client.DEFAULT_CONTENT_TYPE, "application/octet-stream")

    def test_empty_value(self) -> None:
        """An empty value is stored and read back as empty bytes."""
        self.put("a", b"")
        self.assertEqual(self.result(client.get_entry(self.http, URL, "a")).value, b"")

    def test_bytes_like_values(self) -> None:
        """bytearray and memoryview values are sent as their bytes."""
        self.put("a", bytearray(b"ba"))
        self.put("b", memoryview(b"mv"))
        self.assertEqual((self.store.rows["a"].value, self.store.rows["b"].value), (b"ba", b"mv"))

    def test_ttl(self) -> None:
        """ttl= makes the key expire: expires is RFC 3339, and the key is gone after it."""
        self.clock.advance(1000)
        result = self.put("a", ttl=30)
        self.assertEqual(result["expires"], "1970-01-01T00:17:10.000Z")
        self.put("b", ttl=0.5)
        self.assertEqual(self.store.rows["b"].expires, 1000.5)
        self.clock.advance(30)
        self.error(client.get_entry(self.http, URL, "a"), NotFoundError)

    def test_if_match_revision_and_etag(self) -> None:
        """if_match= accepts the revision as an int, as '"N"' and as 'N'."""
        etag = self.put("a")["etag"]
        second = self.put("a", b"2", if_match=etag)
        third = self.put("a", b"3", if_match=second["mod_revision"])
        self.put("a", b"4", if_match=str(third["mod_revision"]))
        self.assertEqual(self.store.rows["a"].value, b"4")

    def test_if_match_stale_is_412(self) -> None:
        """A stale if_match fails with PreconditionFailedError naming the key and revision."""
        self.put("a")
        self.put("a", b"2")
        e = self.error(client.put(self.http, URL, "a", b"3", if_match=1), PreconditionFailedError)
        self.assertEqual((e.status, e.code, e.key, e.current_revision), (412, "precondition-failed", "a", 2))
        self.assertIsInstance(e, KVClientError)
        self.assertEqual(self.store.rows["a"].value, b"2")

    def test_if_match_star(self) -> None:
        """if_match='*' writes only a key that exists."""
        e = self.error(client.put(self.http, URL, "a", b"1", if_match="*"), PreconditionFailedError)
        self.assertEqual(e.current_revision, 0)
        self.assertNotIn("a", self.store.rows)
        self.put("a")
        self.assertFalse(self.put("a", b"2", if_match="*")["created"])

    def test_if_none_match(self) -> None:
        """if_none_match=True creates a key but refuses to overwrite it (412)."""
        self.assertTrue(self.put("lock", b"me", if_none_match=True)["created"])
        self.error(
            client.put(self.http, URL, "lock", b"you", if_none_match=True), PreconditionFailedError
        )
        self.assertEqual(self.store.rows["lock"].value, b"me")

    def test_bad_arguments_raise_at_once(self) -> None:
        """Bad values, content types, TTLs and if_match raise before anything is sent."""
        http = NoNetwork(self)
        for kwargs, exception in (
            ({"value": "text"}, TypeError),
            ({"content_type": ""}, ValueError),
            ({"content_type": "text/plain\r\nX-Evil: 1"}, ValueError),
            ({"content_type": "t\u00e9xt/plain"}, ValueError),
            ({"content_type": b"text/plain"}, TypeError),
            ({"ttl": 0}, ValueError),
            ({"ttl": -1}, ValueError),
            ({"ttl": float("nan")}, ValueError),
            ({"ttl": float("inf")}, ValueError),
            ({"ttl": True}, TypeError),
            ({"ttl": "30"}, TypeError),
            ({"if_match": "abc"}, ValueError),
            ({"if_match": '"1'}, ValueError),
            ({"if_match": "W/\"1\""}, ValueError),
            ({"if_match": -1}, ValueError),
            ({"if_match": True}, TypeError),
            ({"if_match": 1.0}, TypeError),
        ):
            arguments = {"value": b"v"}
            arguments.update(kwargs)
            value = arguments.pop("value")
            self.assertRaises(exception, client.put, http, URL, "a", value, **arguments)
        self.assertRaises(ValueError, client.put, http, URL, "", b"v")
        self.assertRaises(TypeError, client.put, http, URL, b"a", b"v")

    def test_server_refuses_long_key(self) -> None:
        """A key over 1024 UTF-8 bytes is the server's 400 key-too-long."""
        e = self.error(client.put(self.http, URL, "\u00e9" * 513, b"v"), KVClientError)
        self.assertEqual((e.status, e.code), (400, "key-too-long"))


class GetEntryTests(V1TestCase):
    """get_entry(): v1 reads with metadata."""

    def test_entry_fields(self) -> None:
        """get_entry() fires with a KeyValue carrying the value and every revision."""
        self.put("a", b"1")
        self.put("a", b"\x00\xff", content_type="application/x-thing; v=1", ttl=60)
        self.put("b")
        entry = self.result(client.get_entry(self.http, URL, "a"))
        self.assertEqual(
            entry,
            client.KeyValue(
                key="a", value=b"\x00\xff", content_type="application/x-thing; v=1",
                mod_revision=2, version=2, create_revision=1,
                expires="1970-01-01T00:01:00.000Z", revision=3, staged=False,
            ),
        )
        self.assertEqual(entry.etag, '"2"')

    def test_missing_is_not_found(self) -> None:
        """get_entry() of an absent key fails with NotFoundError key-not-found."""
        e = self.error(client.get_entry(self.http, URL, "nope"), NotFoundError)
        self.assertEqual((e.code, e.missing), ("key-not-found", ["nope"]))

    def test_reserved_names(self) -> None:
        """Keys named set, commit and v1 are reachable on the v1 routes."""
        for key in ("set", "commit", "v1", "v1/kv"):
            self.put(key, key.encode("ascii"))
            self.assertEqual(self.result(client.get_entry(self.http, URL, key)).value,
                             key.encode("ascii"))

    def test_awkward_keys_round_trip(self) -> None:
        """Keys with '/', spaces, '%', '?', '#', UTF-8 and dots are one key each on v1."""
        for i, key in enumerate(AWKWARD_KEYS):
            self.put(key, b"%d" % (i,))
        self.assertEqual(set(self.store.rows), set(AWKWARD_KEYS))
        for i, key in enumerate(AWKWARD_KEYS):
            entry = self.result(client.get_entry(self.http, URL, key))
            self.assertEqual((entry.key, entry.value), (key, b"%d" % (i,)), key)

    def test_slash_and_encoded_slash_are_one_key(self) -> None:
        """A key with '/' put by the client is the key a raw 'GET /v1/kv/a/b' reads."""
        self.put("a/b", b"slash")
        response = self.result(self.http.get(URL + "/v1/kv/a/b"))
        self.assertEqual(self.result(response.content()), b"slash")

    def test_staged_is_false_and_as_item(self) -> None:
        """as_item() gives the listing shape: JSON values inline, others base64."""
        self.put("j", b'{"x": [1]}', content_type="application/json")
        self.put("p", b"\xff", content_type="text/plain")
        self.put("broken", b"{", content_type="application/problem+json")
        self.assertEqual(
            self.result(client.get_entry(self.http, URL, "j")).as_item(),
            {"key": "j", "create_revision": 1, "mod_revision": 1, "version": 1,
             "content_type": "application/json", "size": 10, "expires": None,
             "value": {"x": [1]}},
        )
        self.assertEqual(self.result(client.get_entry(self.http, URL, "p")).as_item()["value_base64"], "/w==")
        self.assertEqual(self.result(client.get_entry(self.http, URL, "broken")).as_item()["value_base64"], "ew==")


class RemoveTests(V1TestCase):
    """remove(): v1 one-op deletes."""

    def test_remove(self) -> None:
        """remove() fires with the key, deleted and the new revision; the key is gone."""
        self.put("a/b c")
        self.assertEqual(
            self.result(client.remove(self.http, URL, "a/b c")),
            {"key": "a/b c", "deleted": True, "revision": 2},
        )
        self.assertEqual(self.store.rows, {})

    def test_remove_missing(self) -> None:
        """remove() of an absent key fails with NotFoundError."""
        e = self.error(client.remove(self.http, URL, "nope"), NotFoundError)
        self.assertEqual(e.code, "key-not-found")

    def test_remove_if_match(self) -> None:
        """remove(if_match=) deletes only at that revision; a stale one is 412 and keeps the key."""
        etag = self.put("a")["etag"]
        self.put("a", b"2")
        self.error(client.remove(self.http, URL, "a", if_match=etag), PreconditionFailedError)
        self.assertIn("a", self.store.rows)
        self.result(client.remove(self.http, URL, "a", if_match=2))
        self.assertNotIn("a", self.store.rows)

    def test_remove_bad_arguments(self) -> None:
        """remove() raises at once for an empty key or a bad if_match."""
        self.assertRaises(ValueError, client.remove, NoNetwork(self), URL, "")
        self.assertRaises(ValueError, client.remove, NoNetwork(self), URL, "a", if_match="x")


class ListTests(V1TestCase):
    """list_keys(), iter_pages() and list_all()."""

    def setUp(self) -> None:
        super().setUp()
        for key in ("a/1", "a/2", "a/3", "a/4", "a/5", "b"):
            self.put(key, b'"%s"' % (key.encode("ascii"),), content_type="application/json")

    def test_one_page(self) -> None:
        """list_keys() fires with the server's page: revision, items in order, next."""
        page = self.result(client.list_keys(self.http, URL, "a/", limit=2))
        self.assertEqual(page["revision"], 6)
        self.assertEqual([item["key"] for item in page["items"]], ["a/1", "a/2"])
        self.assertEqual(page["next"], "a/2")
        self.assertEqual(
            page["items"][0],
            {"key": "a/1", "create_revision": 1, "mod_revision": 1, "version": 1,
             "content_type": "application/json", "size": 5, "expires": None},
        )

    def test_pages_follow_next(self) -> None:
        """Passing next as after= reads the following page; the last page's next is None."""
        keys = []
        after = None
        for _ in range(3):
            page = self.result(client.list_keys(self.http, URL, "a/", limit=2, after=after))
            keys.extend(item["key"] for item in page["items"])
            after = page["next"]
        self.assertEqual(keys, ["a/1", "a/2", "a/3", "a/4", "a/5"])
        self.assertIsNone(after)

    def test_whole_store_and_values(self) -> None:
        """Without a prefix every key is listed; values=True adds the values."""
        page = self.result(client.list_keys(self.http, URL, values=True))
        self.assertEqual([(i["key"], i["value"]) for i in page["items"]][-1], ("b", "b"))
        self.assertIsNone(page["next"])

    def test_binary_values_are_base64(self) -> None:
        """A non-JSON value is listed as value_base64."""
        self.put("bin", b"\x00\x01", content_type="application/octet-stream")
        page = self.result(client.list_keys(self.http, URL, "bin", values=True))
        self.assertEqual(page["items"][0]["value_base64"], "AAE=")

    def test_empty_listing(self) -> None:
        """A prefix with no keys gives no items and no next."""
        page = self.result(client.list_keys(self.http, URL, "zzz"))
        self.assertEqual((page["items"], page["next"]), ([], None))

    def test_awkward_prefix(self) -> None:
        """A prefix with spaces, '&', '=' and UTF-8 is sent as one query value."""
        for key in ("x y&z=1/\u00e9", "x y&z=1/\u2603", "x y"):
            self.put(key)
        page = self.result(client.list_keys(self.http, URL, "x y&z=1/"))
        self.assertEqual([i["key"] for i in page["items"]], ["x y&z=1/\u00e9", "x y&z=1/\u2603"])

    def test_list_all(self) -> None:
        """list_all() reads every page and fires with every item and the page count."""
        listing = self.result(client.list_all(self.http, URL, "a/", limit=2))
        self.assertEqual([i["key"] for i in listing["items"]], ["a/1", "a/2", "a/3", "a/4", "a/5"])
        self.assertEqual((listing["pages"], listing["next"], listing["revision"]), (3, None, 6))

    def test_list_all_exact_multiple(self) -> None:
        """A listing whose size is a multiple of the page size ends without an empty page."""
        listing = self.result(client.list_all(self.http, URL, "a/", limit=5))
        self.assertEqual((len(listing["items"]), listing["pages"]), (5, 1))

    def test_list_all_after(self) -> None:
        """list_all(after=) starts after that key."""
        listing = self.result(client.list_all(self.http, URL, "a/", limit=2, after="a/3"))
        self.assertEqual([i["key"] for i in listing["items"]], ["a/4", "a/5"])

    def test_iter_pages(self) -> None:
        """iter_pages() yields each page in turn, for async for."""

        async def collect():
            return [page async for page in client.iter_pages(self.http, URL, "a/", limit=2)]

        pages = self.successResultOf(self.run_coroutine(collect()))
        self.assertEqual(
            [[i["key"] for i in page["items"]] for page in pages],
            [["a/1", "a/2"], ["a/3", "a/4"], ["a/5"]],
        )

    def test_iter_pages_pinned_at_first_revision(self) -> None:
        """
        iter_pages() follows each page's cursor, so every page is read at the
        first page's revision while writes go on.
        """

        async def collect():
            pages = []
            async for page in client.iter_pages(self.http, URL, "a/", limit=2):
                pages.append(page)
                self.put("a/%d" % (len(pages) + 2,), b'"changed"', content_type="application/json")
                self.put("a/0%d" % (len(pages),))
            return pages

        pages = self.successResultOf(self.run_coroutine(collect()))
        self.assertEqual([page["revision"] for page in pages], [6, 6, 6])
        self.assertEqual(
            [[(i["key"], i["mod_revision"]) for i in page["items"]] for page in pages],
            [[("a/1", 1), ("a/2", 2)], [("a/3", 3), ("a/4", 4)], [("a/5", 5)]],
        )

    def test_list_and_get_at_revision(self) -> None:
        """list_keys(revision=) and get_entry(revision=) read the past."""
        self.put("a/1", b'"new"', content_type="application/json")
        self.result(client.remove(self.http, URL, "a/2"))
        page = self.result(client.list_keys(self.http, URL, "a/", limit=2, revision=6))
        self.assertEqual([(i["key"], i["mod_revision"]) for i in page["items"]], [("a/1", 1), ("a/2", 2)])
        rest = self.result(client.list_keys(self.http, URL, "a/", limit=2, cursor=page["cursor"]))
        self.assertEqual([i["key"] for i in rest["items"]], ["a/3", "a/4"])
        entry = self.result(client.get_entry(self.http, URL, "a/2", revision=6))
        self.assertEqual(entry.value, b'"a/2"')
        self.error(client.get_entry(self.http, URL, "a/2", revision=8), NotFoundError)
        for kwargs, exception in (({"revision": -1}, ValueError), ({"revision": "1"}, TypeError)):
            self.assertRaises(exception, client.get_entry, NoNetwork(self), URL, "a", **kwargs)
        self.assertRaises(ValueError, client.list_keys, NoNetwork(self), URL, cursor="x", revision=1)

    def test_bad_arguments_raise_at_once(self) -> None:
        """Bad limits, prefixes and after= raise before anything is sent, for every function."""
        for function in (client.list_keys, client.iter_pages, client.list_all):
            for kwargs, exception in (
                ({"limit": 0}, ValueError),
                ({"limit": True}, TypeError),
                ({"limit": "2"}, TypeError),
                ({"after": ""}, ValueError),
                ({"after": 1}, TypeError),
            ):
                self.assertRaises(exception, function, NoNetwork(self), URL, **kwargs)
            self.assertRaises(TypeError, function, NoNetwork(self), URL, b"a/")

    def test_limit_over_server_maximum(self) -> None:
        """A page size above the server's maximum is its 400 bad-parameter."""
        e = self.error(client.list_keys(self.http, URL, limit=10 ** 6), KVClientError)
        self.assertEqual((e.status, e.code), (400, "bad-parameter"))

    def test_next_that_does_not_advance(self) -> None:
        """A server whose next never moves forward fails iteration with bad-response."""
        recorder = Recorder(200, b'{"revision": 1, "items": [], "next": "a"}')
        http = StubTreq(recorder)
        d = client.list_all(http, URL)
        http.flush()
        e = self.failureResultOf(d, KVClientError).value
        self.assertEqual(e.code, "bad-response")
        self.assertEqual(len(recorder.requests), 2)

    def test_page_that_is_not_a_listing(self) -> None:
        """A 200 without items, or with a non-string next, is a bad-response."""
        for body in (b"{}", b'{"items": [], "next": 3}', b"[]"):
            http = StubTreq(Recorder(200, body))
            d = client.list_keys(http, URL)
            http.flush()
            self.assertEqual(self.failureResultOf(d, KVClientError).value.code, "bad-response")
