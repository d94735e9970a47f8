"""
Tests for L{kvtwist.client}: every function against the whole Resource tree
in memory (C{StubTreq(memory_root())}), plus a recording resource for what
goes on the wire and for answers a kvcache would never give (a proxy's
HTML, a body that is not JSON).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from treq.testing import StubTreq
from twisted.internet.defer import fail
from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from kvtwist import client
from kvtwist.client import KVClientError, NotFoundError
from kvtwist.errors import StoreUnavailable
from kvtwist.testing import MemoryStore, memory_root

URL = "http://kv.test"

#: Keys that must survive the trip as one path segment.
AWKWARD_KEYS = [
    "a/b",
    "a/b/",
    "/lead",
    "with space",
    "caf\u00e9 \u2603 \U0001f600",
    "100%",
    "q?x=1#frag",
    "a%2Fb",
    "plus+sign",
    ".",
    "..",
    "set",
    "commit",
]


class Recorder(Resource):
    """
    A leaf resource that records every request and answers with one canned
    response.

    @ivar requests: C{(method, uri, headers, body)} per request.
    """

    isLeaf = True

    def __init__(
        self, status: int = 200, body: bytes = b"{}", content_type: bytes = b"application/json"
    ) -> None:
        super().__init__()
        self.status = status
        self.body = body
        self.content_type = content_type
        self.requests: List[Tuple[bytes, bytes, object, bytes]] = []

    def render(self, request: Request) -> bytes:
        self.requests.append(
            (request.method, request.uri, request.requestHeaders, request.content.read())
        )
        request.setResponseCode(self.status)
        request.setHeader(b"content-type", self.content_type)
        return self.body

    def header(self, index: int, name: bytes) -> Optional[bytes]:
        """One header of the C{index}th request, or L{None}."""
        values = self.requests[index][2].getRawHeaders(name)  # type: ignore[attr-defined]
        return values[0] if values else None


class NoNetwork:
    """A treq-like client that must not be used."""

    def __init__(self, test: SynchronousTestCase) -> None:
        self._test = test

    def request(self, *args, **kwargs):
        self._test.fail("a request was sent: %r %r" % (args, kwargs))


class Refused:
    """A treq-like client whose every connection is refused."""

    def request(self, *args, **kwargs):
        return fail(ConnectionRefusedError("Connection refused"))


class MemoryServerTests(SynchronousTestCase):
    """Every client function against the real Resource tree over a MemoryStore."""

    def setUp(self) -> None:
        self.store = MemoryStore()
        self.http = StubTreq(memory_root(self.store))

    def result(self, d):
        self.http.flush()
        return self.successResultOf(d)

    def error(self, d, *types):
        self.http.flush()
        return self.failureResultOf(d, *types).value

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


class WireTests(SynchronousTestCase):
    """What the client sends, and how it reads answers no kvcache would give."""

    def call(self, recorder: Recorder, d_factory):
        http = StubTreq(recorder)
        d = d_factory(http)
        http.flush()
        return d

    def test_requests_on_the_wire(self) -> None:
        """Each function sends its method, path, JSON body and content type."""
        recorder = Recorder(200, b'{"k": "created"}')
        http = StubTreq(recorder)
        client.get(http, URL, "k")
        client.set_many(http, URL, {"k": [1, "\u00e9"]})
        client.delete(http, URL, "k", "a/b")
        http.flush()
        self.assertEqual(
            [(method, uri, body) for method, uri, _, body in recorder.requests],
            [
                (b"GET", b"/k", b""),
                (b"POST", b"/set", '{"k":[1,"\u00e9"]}'.encode("utf-8")),
                (b"DELETE", b"/set", b'["k","a/b"]'),
            ],
        )
        self.assertIsNone(recorder.header(0, b"content-type"))
        self.assertEqual(recorder.header(1, b"content-type"), b"application/json")
        self.assertEqual(recorder.header(2, b"content-type"), b"application/json")

    def test_commit_on_the_wire(self) -> None:
        """commit() sends POST /commit with no body."""
        recorder = Recorder(204, b"")
        self.successResultOf(self.call(recorder, lambda http: client.commit(http, URL)))
        self.assertEqual(recorder.requests[0][:2], (b"POST", b"/commit"))
        self.assertEqual(recorder.requests[0][3], b"")

    def test_key_is_one_encoded_segment(self) -> None:
        """The key is percent-encoded as a single path segment, dots included."""
        expected = {
            "a/b": b"/a%2Fb",
            "with space": b"/with%20space",
            "caf\u00e9": b"/caf%C3%A9",
            "100%": b"/100%25",
            "q?x#y": b"/q%3Fx%23y",
            ".": b"/%2E",
            "..": b"/%2E%2E",
            "...": b"/...",
        }
        recorder = Recorder(200, b"1")
        http = StubTreq(recorder)
        for key in expected:
            client.get(http, URL, key)
        http.flush()
        self.assertEqual([r[1] for r in recorder.requests], list(expected.values()))

    def test_base_url_path_prefix_kept(self) -> None:
        """A base URL with a path prefix (with or without '/') prefixes every route."""
        recorder = Recorder(200, b"1")
        http = StubTreq(recorder)
        client.get(http, "http://kv.test/prefix", "a")
        client.get(http, "http://kv.test/prefix/", "b")
        http.flush()
        self.assertEqual([r[1] for r in recorder.requests], [b"/prefix/a", b"/prefix/b"])

    def test_token_sent_as_bearer(self) -> None:
        """token= sends 'Authorization: Bearer <token>'; without it, no Authorization."""
        recorder = Recorder(204, b"")
        http = StubTreq(recorder)
        client.commit(http, URL, token="s3cr3t-T0ken")
        client.commit(http, URL)
        http.flush()
        self.assertEqual(recorder.header(0, b"authorization"), b"Bearer s3cr3t-T0ken")
        self.assertIsNone(recorder.header(1, b"authorization"))

    def test_bad_token_raises_at_once(self) -> None:
        """A token with spaces, newlines, non-ASCII or nothing raises ValueError before I/O."""
        for token in ("a b", "a\r\nX-Evil: 1", "t\u00e9", ""):
            self.assertRaises(ValueError, client.commit, NoNetwork(self), URL, token=token)

    def test_non_json_error_body_is_readable(self) -> None:
        """An HTML error page (a proxy's 502) gives a readable one-line error."""
        recorder = Recorder(
            502, b"<html>\n<body>Bad   Gateway</body>\n</html>", b"text/html"
        )
        e = self.failureResultOf(
            self.call(recorder, lambda http: client.get(http, URL, "a")), KVClientError
        ).value
        self.assertEqual(e.status, 502)
        self.assertEqual(e.code, "http-502")
        self.assertEqual(str(e), "502 http-502: <html> <body>Bad Gateway</body> </html>")

    def test_long_error_body_is_cut(self) -> None:
        """A long non-JSON error body is quoted only up to 200 characters."""
        recorder = Recorder(500, b"x" * 5000, b"text/plain")
        e = self.failureResultOf(
            self.call(recorder, lambda http: client.commit(http, URL)), KVClientError
        ).value
        self.assertEqual(e.detail, "x" * 200 + "...")

    def test_empty_or_undecodable_error_body(self) -> None:
        """An empty or non-UTF-8 error body still gives a readable error."""
        empty = self.failureResultOf(
            self.call(Recorder(503, b""), lambda http: client.commit(http, URL)),
            KVClientError,
        ).value
        self.assertEqual(str(empty), "503 http-503: Service Unavailable")
        garbled = self.failureResultOf(
            self.call(Recorder(400, b"\xff\xfe bad"), lambda http: client.commit(http, URL)),
            KVClientError,
        ).value
        self.assertEqual(str(garbled), "400 http-400: \ufffd\ufffd bad")

    def test_json_error_body_that_is_not_an_object(self) -> None:
        """A JSON error body that is not an object is treated like any non-problem body."""
        e = self.failureResultOf(
            self.call(Recorder(400, b'"nope"'), lambda http: client.commit(http, URL)),
            KVClientError,
        ).value
        self.assertEqual(str(e), '400 http-400: "nope"')

    def test_404_without_problem_is_not_found(self) -> None:
        """Any 404 is a NotFoundError, with no missing keys if the body names none."""
        e = self.failureResultOf(
            self.call(Recorder(404, b"gone", b"text/plain"), lambda http: client.get(http, URL, "a")),
            NotFoundError,
        ).value
        self.assertEqual(e.missing, [])
        self.assertEqual(str(e), "404 http-404: gone")

    def test_success_body_not_json(self) -> None:
        """A 200 whose body is not JSON fails with KVClientError code bad-response."""
        e = self.failureResultOf(
            self.call(Recorder(200, b"<html>", b"text/html"), lambda http: client.get(http, URL, "a")),
            KVClientError,
        ).value
        self.assertEqual((e.status, e.code), (200, "bad-response"))
        self.assertIn("<html>", str(e))

    def test_outcome_body_not_an_object(self) -> None:
        """set_many() and delete() fail with bad-response if the answer is not an object."""
        for call in (
            lambda http: client.set_many(http, URL, {"a": 1}),
            lambda http: client.delete(http, URL, "a"),
        ):
            e = self.failureResultOf(self.call(Recorder(200, b"[]"), call), KVClientError).value
            self.assertEqual(e.code, "bad-response")

    def test_unexpected_success_status_is_an_error(self) -> None:
        """A status the route never answers (200 to commit) is an error, not a success."""
        e = self.failureResultOf(
            self.call(Recorder(200, b"{}"), lambda http: client.commit(http, URL)),
            KVClientError,
        ).value
        self.assertEqual(e.status, 200)

    def test_connection_errors_pass_through(self) -> None:
        """A refused connection fails the Deferred with Twisted's ConnectionRefusedError."""
        for call in (
            lambda: client.get(Refused(), URL, "a"),
            lambda: client.set_many(Refused(), URL, {"a": 1}),
            lambda: client.delete(Refused(), URL, "a"),
            lambda: client.commit(Refused(), URL),
        ):
            self.failureResultOf(call(), ConnectionRefusedError)


class ErrorTests(SynchronousTestCase):
    """KVClientError's readable form."""

    def test_str_with_code_and_detail(self) -> None:
        """str() is '<status> <code>: <detail>'."""
        e = KVClientError(409, {"code": "conflict", "detail": "it moved", "title": "Conflict"})
        self.assertEqual(str(e), "409 conflict: it moved")
        self.assertEqual((e.code, e.detail), ("conflict", "it moved"))

    def test_str_falls_back_to_title_then_phrase(self) -> None:
        """Without detail the title is used, then the status phrase; without code none is shown."""
        self.assertEqual(str(KVClientError(413, {"title": "Too big"})), "413: Too big")
        self.assertEqual(str(KVClientError(413, {})), "413: Request Entity Too Large")
        self.assertEqual(str(KVClientError(599, {"code": 7})), "599: HTTP error")

    def test_problem_is_copied(self) -> None:
        """The problem dict is the error's own copy, and args carry status and problem."""
        problem = {"code": "x"}
        e = KVClientError(400, problem)
        problem["code"] = "y"
        self.assertEqual(e.problem, {"code": "x"})
        self.assertEqual(e.args, (400, {"code": "x"}))
