"""
Tests for L{kvtwist.client}: every function against the whole Resource tree
in memory (C{StubTreq(memory_root())}), plus a recording resource for what
goes on the wire and for answers a kvcache would never give (a proxy's
HTML, a body that is not JSON).
"""

from __future__ import annotations

import http
import json
from typing import List, Optional, Tuple

from treq.testing import StubTreq
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.resource import Resource
from twisted.web.server import Request

from kvtwist import client
from kvtwist.client import (
    ConflictError,
    EventStreamParser,
    HistoryGone,
    KVClientError,
    NotFoundError,
    PreconditionFailedError,
    ServerSentEvent,
    SSEComment,
    WatchEvent,
)
from kvtwist.errors import StoreUnavailable
from kvtwist.limits import Limits
from kvtwist.model import Put
from kvtwist.testing import MemoryStore, memory_root
from kvtwist.transactions import TransactionManager

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

    def test_user_agent(self) -> None:
        """Every request says it comes from kvtwist and which version: User-Agent: kvtwist/VERSION."""
        import kvtwist

        recorder = Recorder(200, b"{}")
        http = StubTreq(recorder)
        client.get(http, URL, "k")
        client.put(http, URL, "k", b"v")
        client.batch(http, URL, [])
        client.get_limits(http, URL)
        client.watch(http, URL, "p", clock=Clock())
        http.flush()
        agents = {headers.getRawHeaders(b"user-agent")[0] for _, _, headers, _ in recorder.requests}
        self.assertEqual(len(recorder.requests), 5)
        self.assertEqual(agents, {("kvtwist/%s" % (kvtwist.__version__,)).encode("ascii")})

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
        # The phrase is the running Python's (3.13 says "Content Too Large").
        phrase = http.HTTPStatus(413).phrase
        self.assertEqual(str(KVClientError(413, {})), "413: " + phrase)
        self.assertEqual(str(KVClientError(599, {"code": 7})), "599: HTTP error")

    def test_problem_is_copied(self) -> None:
        """The problem dict is the error's own copy, and args carry status and problem."""
        problem = {"code": "x"}
        e = KVClientError(400, problem)
        problem["code"] = "y"
        self.assertEqual(e.problem, {"code": "x"})
        self.assertEqual(e.args, (400, {"code": "x"}))


# -- the v1 API ----------------------------------------------------------------


class Interloper:
    """
    A treq-like client that forwards to C{http}, but first calls C{before}
    when it sees the first request whose URL ends with C{trigger}: another
    client's write landing between two requests of a transaction.

    @ivar requests: C{(method, url)} of every request forwarded.
    """

    def __init__(self, http, trigger: str, before) -> None:
        self._http = http
        self._trigger = trigger
        self._before = before
        self.requests: List[Tuple[str, str]] = []

    def request(self, method, url, **kwargs):
        if self._before is not None and url.endswith(self._trigger):
            before, self._before = self._before, None
            before()
        self.requests.append((method, url))
        return self._http.request(method, url, **kwargs)


class FailAfter:
    """
    A treq-like client that forwards the first C{count} requests to C{http};
    later ones fail with C{exception}, or never answer if it is L{None}.

    @ivar requests: C{(method, url)} of every request, forwarded or not.
    @ivar cancelled: how many unanswered requests were cancelled.
    """

    def __init__(self, http, count: int, exception: Optional[Exception] = None) -> None:
        self._http = http
        self._count = count
        self._exception = exception
        self.requests: List[Tuple[str, str]] = []
        self.cancelled = 0

    def request(self, method, url, **kwargs):
        self.requests.append((method, url))
        if len(self.requests) <= self._count:
            return self._http.request(method, url, **kwargs)
        if self._exception is not None:
            return fail(self._exception)

        def cancel(d) -> None:
            self.cancelled += 1

        return Deferred(cancel)


class V1TestCase(SynchronousTestCase):
    """The whole tree in memory, with its transactions and clock at hand."""

    def setUp(self) -> None:
        self.store = MemoryStore()
        self.clock = self.store.clock
        self.transactions = TransactionManager(self.clock, Limits(), self.store)
        self.http = StubTreq(memory_root(self.store, transactions=self.transactions))

    def result(self, d):
        self.http.flush()
        return self.successResultOf(d)

    def error(self, d, *types):
        self.http.flush()
        return self.failureResultOf(d, *types).value

    def put(self, key: str, value: bytes = b"v", **kwargs):
        return self.result(client.put(self.http, URL, key, value, **kwargs))

    def run_coroutine(self, coroutine):
        d = Deferred.fromCoroutine(coroutine)
        self.http.flush()
        return d


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


class V1WireTests(SynchronousTestCase):
    """What the v1 functions send, and how they read odd answers."""

    def sent(self, status: int, body: bytes, call) -> Tuple[Recorder, object]:
        recorder = Recorder(status, body)
        http = StubTreq(recorder)
        d = call(http)
        http.flush()
        return recorder, d

    def test_put_on_the_wire(self) -> None:
        """put() sends PUT /v1/kv/<one segment>?ttl=, the raw body, its type and conditions as bytes."""
        recorder, d = self.sent(201, b'{"revision": 5}', lambda http: client.put(
            http, URL, "a/b c\u00e9", b"\x00raw", content_type="text/x; q=1", ttl=30,
            if_match=5, if_none_match=True,
        ))
        method, uri, headers, body = recorder.requests[0]
        self.assertEqual((method, uri, body), (b"PUT", b"/v1/kv/a%2Fb%20c%C3%A9?ttl=30", b"\x00raw"))
        self.assertEqual(recorder.header(0, b"content-type"), b"text/x; q=1")
        self.assertEqual(recorder.header(0, b"if-match"), b'"5"')
        self.assertEqual(recorder.header(0, b"if-none-match"), b"*")
        self.assertEqual(self.successResultOf(d)["mod_revision"], 5)

    def test_put_float_ttl_and_star(self) -> None:
        """A float TTL is sent as Python writes it; if_match='*' as '*'."""
        recorder, d = self.sent(200, b"{}", lambda http: client.put(
            http, URL, "k", b"", ttl=0.25, if_match="*"))
        self.assertEqual(recorder.requests[0][1], b"/v1/kv/k?ttl=0.25")
        self.assertEqual(recorder.header(0, b"if-match"), b"*")
        self.assertIsNone(recorder.header(0, b"if-none-match"))
        self.assertEqual(self.successResultOf(d)["mod_revision"], None)

    def test_get_entry_accepts_anything(self) -> None:
        """get_entry() asks for any type, and reads missing metadata headers as None."""
        recorder, d = self.sent(200, b"raw", lambda http: client.get_entry(http, URL, "k"))
        self.assertEqual(recorder.requests[0][:2], (b"GET", b"/v1/kv/k"))
        self.assertEqual(recorder.header(0, b"accept"), b"*/*")
        entry = self.successResultOf(d)
        self.assertEqual(
            (entry.value, entry.content_type, entry.mod_revision, entry.version, entry.revision),
            (b"raw", "application/json", None, None, None),
        )

    def test_list_query(self) -> None:
        """list_keys() encodes every query value; defaults are left out."""
        recorder, d = self.sent(200, b'{"items": [], "next": null}', lambda http: client.list_keys(
            http, URL, "a/b c&d=\u00e9", limit=10, after="a/b c&d=\u00e9 x", values=True))
        self.assertEqual(
            recorder.requests[0][1],
            b"/v1/kv/?prefix=a%2Fb%20c%26d%3D%C3%A9&limit=10&after=a%2Fb%20c%26d%3D%C3%A9%20x&values=1",
        )
        recorder, d = self.sent(200, b'{"items": [], "next": null}', lambda http: client.list_keys(http, URL))
        self.assertEqual(recorder.requests[0][1], b"/v1/kv/")

    def test_transaction_urls(self) -> None:
        """Transaction methods address /v1/txn/<id>/..., the id and key each one segment."""
        recorder = Recorder(200, b"{}")
        http = StubTreq(recorder)
        txn = client.Transaction(http, URL + "/prefix/", "t/1 x", token="tok")
        txn.put("a/b", b"v")
        txn.delete("a b", if_match="*")
        txn.get("\u00e9")
        txn.set_many({"k": 1})
        txn.describe()
        txn.commit()
        http.flush()
        self.assertEqual(
            [(m, u) for m, u, _, _ in recorder.requests],
            [
                (b"PUT", b"/prefix/v1/txn/t%2F1%20x/kv/a%2Fb"),
                (b"DELETE", b"/prefix/v1/txn/t%2F1%20x/kv/a%20b"),
                (b"GET", b"/prefix/v1/txn/t%2F1%20x/kv/%C3%A9"),
                (b"POST", b"/prefix/v1/txn/t%2F1%20x/set"),
                (b"GET", b"/prefix/v1/txn/t%2F1%20x"),
                (b"POST", b"/prefix/v1/txn/t%2F1%20x/commit"),
            ],
        )
        self.assertEqual(recorder.header(1, b"if-match"), b"*")
        self.assertEqual(
            {recorder.header(i, b"authorization") for i in range(6)}, {b"Bearer tok"}
        )

    def test_begin_and_batch_on_the_wire(self) -> None:
        """begin() posts to /v1/txn; batch() posts {"ops": [...]} to /v1/batch."""
        recorder, d = self.sent(201, b'{"id": "t1", "expires_in": 9}', lambda http: client.begin(http, URL))
        self.assertEqual(recorder.requests[0][:2], (b"POST", b"/v1/txn"))
        self.assertEqual(self.successResultOf(d).expires_in, 9)
        recorder, d = self.sent(200, b"{}", lambda http: client.batch(
            http, URL, [{"op": "get", "key": "k"}]))
        self.assertEqual(
            recorder.requests[0][1:4:2], (b"/v1/batch", b'{"ops":[{"op":"get","key":"k"}]}')
        )

    def test_begin_without_an_id(self) -> None:
        """A begin answer without a string id is a bad-response; a bad expires_in is None."""
        for body in (b"{}", b'{"id": 3}', b'{"id": ""}'):
            recorder, d = self.sent(201, body, lambda http: client.begin(http, URL))
            self.assertEqual(self.failureResultOf(d, KVClientError).value.code, "bad-response")
        recorder, d = self.sent(201, b'{"id": "t", "expires_in": true}', lambda http: client.begin(http, URL))
        self.assertIsNone(self.successResultOf(d).expires_in)

    def test_conflict_and_precondition_errors(self) -> None:
        """409 is a ConflictError and 412 a PreconditionFailedError, read defensively."""
        recorder, d = self.sent(409, b'{"code": "conflict", "conflicts": [{"key": "a"}, 3], "failed": [1, "x"]}',
                                lambda http: client.batch(http, URL, []))
        e = self.failureResultOf(d, ConflictError).value
        self.assertEqual((e.conflicts, e.failed), ([{"key": "a"}], [1]))
        recorder, d = self.sent(409, b"<html>", lambda http: client.batch(http, URL, []))
        e = self.failureResultOf(d, ConflictError).value
        self.assertEqual((e.conflicts, e.failed, e.code), ([], [], "http-409"))
        recorder, d = self.sent(412, b"{}", lambda http: client.remove(http, URL, "a"))
        e = self.failureResultOf(d, PreconditionFailedError).value
        self.assertEqual((e.key, e.current_revision), (None, None))


# -- watching ------------------------------------------------------------------

def frame(revision: int, key: str, kind: str = "put", **data) -> bytes:
    """One event frame as the server writes it."""
    document = {"key": key, "revision": revision, **data}
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (
        revision, kind.encode(), json.dumps(document).encode()
    )


def keys_of(events) -> List[Tuple[int, str, str]]:
    """(revision, kind, key) of each event, for comparisons."""
    return [(e.revision, e.kind, e.key) for e in events]


class EventStreamParserTests(SynchronousTestCase):
    """The text/event-stream parser, by the WHATWG rules, fed in any chunks."""

    STREAM = (
        b"retry: 1000\n\n"
        b"id: 1\nevent: put\ndata: {\"key\": \"a\"}\n\n"
        b": heartbeat\n\n"
        b"event: note\r\ndata: line one\r\ndata: line two\r\n\r\n"
        b"id: 2\rdata: caf\xc3\xa9 \xf0\x9f\x98\x80\r\r"
    )
    EXPECTED = [
        ServerSentEvent("put", '{"key": "a"}', "1"),
        SSEComment("heartbeat"),
        ServerSentEvent("note", "line one\nline two", "1"),
        ServerSentEvent("message", "caf\u00e9 \U0001f600", "2"),
    ]

    def feed_all(self, chunks) -> list:
        parser = EventStreamParser()
        out: list = []
        for chunk in chunks:
            out.extend(parser.feed(chunk))
        return out

    def test_whole_stream(self) -> None:
        """A stream in one chunk gives its messages and comments in order; retry is read."""
        parser = EventStreamParser()
        self.assertEqual(parser.feed(self.STREAM), self.EXPECTED)
        self.assertEqual((parser.retry, parser.last_event_id), (1000, "2"))

    def test_split_at_every_byte(self) -> None:
        """Byte by byte (splitting CRLFs and UTF-8 sequences) gives the same result."""
        chunks = [self.STREAM[i : i + 1] for i in range(len(self.STREAM))]
        self.assertEqual(self.feed_all(chunks), self.EXPECTED)

    def test_split_at_every_point(self) -> None:
        """Any two-chunk split gives the same result (a CR ending one chunk, LF the next)."""
        for cut in range(len(self.STREAM) + 1):
            self.assertEqual(
                self.feed_all([self.STREAM[:cut], self.STREAM[cut:]]), self.EXPECTED, cut
            )

    def test_field_rules(self) -> None:
        """One leading space is dropped, a bare field is empty, unknown fields and bad ids/retries are ignored."""
        parser = EventStreamParser()
        out = parser.feed(
            b"\xef\xbb\xbfdata:x\ndata:  two\ndata\nfoo: bar\nid: 7\n\n"
            b"id: bad\x00id\nretry: soon\ndata: y\n\n"
        )
        self.assertEqual(
            out, [ServerSentEvent("message", "x\n two\n", "7"), ServerSentEvent("message", "y", "7")]
        )
        self.assertIsNone(parser.retry)

    def test_message_without_data_sets_id_only(self) -> None:
        """A message with no data is not dispatched, but its id becomes the last event ID."""
        parser = EventStreamParser()
        self.assertEqual(parser.feed(b"id: 9\nevent: put\n\n"), [])
        self.assertEqual(parser.last_event_id, "9")
        self.assertEqual(parser.feed(b"data: z\n\n"), [ServerSentEvent("message", "z", "9")])

    def test_unfinished_message_waits(self) -> None:
        """Nothing is dispatched until the blank line that ends a message."""
        parser = EventStreamParser()
        self.assertEqual(parser.feed(b"id: 1\nevent: put\ndata: {}\n"), [])
        self.assertEqual(len(parser.feed(b"\n")), 1)

    def test_oversized_line_refused(self) -> None:
        """A line without an end past max_bytes is a ValueError, not unbounded memory."""
        parser = EventStreamParser(max_bytes=100)
        parser.feed(b"data: " + b"x" * 90)
        self.assertRaises(ValueError, parser.feed, b"x" * 20)

    def test_oversized_message_refused(self) -> None:
        """Data lines adding up past max_bytes are a ValueError."""
        parser = EventStreamParser(max_bytes=100)
        self.assertRaises(ValueError, parser.feed, (b"data: " + b"y" * 40 + b"\n") * 3)


class FakeBodyTransport:
    """The transport a response body's protocol gets: records pauses and closes."""

    def __init__(self, stream: "FakeStream") -> None:
        self.stream = stream
        self.paused = False
        self.pauses = 0
        self.lost = False

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.loseConnection()

    def loseConnection(self) -> None:
        # As Twisted reports a body cut short by our side.
        if not self.lost:
            self.lost = True
            self.stream.lose(ResponseFailed([Failure(net_error.ConnectionDone())]))


class FakeStream:
    """One scripted response: its body goes to whatever protocol the client gives it."""

    def __init__(self, code: int, headers: Headers, body: bytes = b"", open_ended: bool = True) -> None:
        self.code = code
        self.headers = headers
        self.length = UNKNOWN_LENGTH if open_ended else len(body)
        self._body = body
        self._open_ended = open_ended
        self.protocol = None
        self.transport = FakeBodyTransport(self)
        self.ended = False

    def deliverBody(self, protocol) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)
        if self._body:
            protocol.dataReceived(self._body)
        if not self._open_ended:
            self.lose(ResponseDone())

    def send(self, data: bytes) -> None:
        """Bytes from the server."""
        assert not self.ended
        self.protocol.dataReceived(data)

    def lose(self, reason: Exception) -> None:
        if not self.ended:
            self.ended = True
            self.protocol.connectionLost(Failure(reason))

    def finish(self) -> None:
        """The server ends the stream properly."""
        self.lose(ResponseDone())

    def drop(self) -> None:
        """The connection breaks."""
        self.lose(ResponseFailed([Failure(net_error.ConnectionLost())]))


class StreamServer:
    """
    A treq-like client whose answers the test scripts: each request waits
    until the test answers it with L{open}, L{answer} or L{refuse}.

    @ivar requests: C{(method, url, headers, kwargs)} of every request.
    """

    def __init__(self) -> None:
        self.requests: List[Tuple[str, str, Headers, dict]] = []
        self.waiting: List[Deferred] = []
        self.cancelled = 0

    def request(self, method, url, headers=None, **kwargs):
        self.requests.append((method, url, headers, kwargs))

        def cancel(d) -> None:
            self.cancelled += 1
            self.waiting.remove(d)

        d = Deferred(cancel)
        self.waiting.append(d)
        return d

    def header(self, name: bytes, index: int = -1) -> Optional[bytes]:
        values = self.requests[index][2].getRawHeaders(name)
        return values[0] if values else None

    def open(self, revision: int = 0, content_type: bytes = b"text/event-stream; charset=utf-8") -> FakeStream:
        """Answer the oldest waiting request with an event stream."""
        headers = Headers({b"content-type": [content_type], b"kv-revision": [b"%d" % (revision,)]})
        stream = FakeStream(200, headers)
        self.waiting.pop(0).callback(stream)
        return stream

    def answer(self, code: int, problem: dict) -> None:
        """Answer the oldest waiting request with a problem document."""
        body = json.dumps(problem).encode()
        headers = Headers({b"content-type": [b"application/problem+json"]})
        self.waiting.pop(0).callback(FakeStream(code, headers, body, open_ended=False))

    def refuse(self) -> None:
        """The oldest waiting request's connection is refused."""
        self.waiting.pop(0).errback(ConnectionRefusedError("Connection refused"))


class WatchTestMixin:
    """Consume a Watch from a coroutine, as an application would."""

    def consume(self, watch, into: list) -> Deferred:
        """Append every event of C{watch} to C{into}; fires when the iteration ends."""

        async def run() -> None:
            async for event in watch:
                into.append(event)

        return Deferred.fromCoroutine(run())


class ScriptedWatchTests(WatchTestMixin, SynchronousTestCase):
    """watch() against a scripted server: resume points, backoff, errors, flow control."""

    def setUp(self) -> None:
        self.server = StreamServer()
        self.clock = Clock()
        self.events: list = []

    def watch(self, **kwargs):
        kwargs.setdefault("clock", self.clock)
        kwargs.setdefault("random", lambda: 1.0)
        watch = client.watch(self.server, URL, "p/", **kwargs)
        self.done = self.consume(watch, self.events)
        self.addCleanup(watch.close)
        return watch

    def test_request(self) -> None:
        """The stream is asked for with the prefix, values, Accept, token, and unbuffered."""
        client.watch(self.server, URL + "/base/", "a b/", values=True, token="t0k", clock=self.clock).close()
        method, url, headers, kwargs = self.server.requests[0]
        self.assertEqual((method, url), ("GET", URL + "/base/v1/watch?prefix=a%20b%2F&values=1"))
        self.assertEqual(self.server.header(b"accept"), b"text/event-stream")
        self.assertEqual(self.server.header(b"authorization"), b"Bearer t0k")
        self.assertIsNone(self.server.header(b"last-event-id"))
        # A buffered treq response would keep the whole stream in memory.
        self.assertEqual(kwargs, {"unbuffered": True})

    def test_after_is_sent_as_last_event_id(self) -> None:
        """after=REV asks the server to replay from REV."""
        self.watch(after=41)
        self.assertEqual(self.server.header(b"last-event-id"), b"41")

    def test_events_and_when_open(self) -> None:
        """when_open fires with KV-Revision; events come in order with their data."""
        watch = self.watch()
        opened = watch.when_open()
        self.assertNoResult(opened)
        stream = self.server.open(revision=4)
        self.assertEqual(self.successResultOf(opened), 4)
        self.assertEqual(self.successResultOf(watch.when_open()), 4)
        stream.send(b"retry: 1000\n\n" + frame(5, "p/a", version=1) + frame(6, "p/a", "delete")
                    + frame(7, "p/t", "expire") + b"id: 8\nevent: future\ndata: {}\n\n")
        self.assertEqual(keys_of(self.events), [(5, "put", "p/a"), (6, "delete", "p/a"), (7, "expire", "p/t")])
        self.assertEqual(self.events[0].data, {"key": "p/a", "revision": 5, "version": 1})
        self.assertEqual((self.events[0].version, self.events[1].version), (1, None))
        self.assertEqual(watch.last_revision, 7)
        self.assertEqual(watch.retry, 1.0)

    def test_resume_after_whole_commits(self) -> None:
        """A drop right after a heartbeat resumes from the last revision, at once."""
        self.watch()
        stream = self.server.open(revision=0)
        stream.send(frame(1, "p/a") + frame(2, "p/b") + b": heartbeat\n\n")
        stream.drop()
        self.assertEqual(len(self.server.requests), 2)  # no backoff after progress
        self.assertEqual(self.server.header(b"last-event-id"), b"2")
        self.server.open(revision=3).send(frame(3, "p/c"))
        self.assertEqual([e.revision for e in self.events], [1, 2, 3])

    def test_resume_after_the_last_event_of_a_commit(self) -> None:
        """
        A drop right after a commit's last event (no more_in_commit) resumes
        from that commit's revision itself, not the one before.
        """
        self.watch()
        stream = self.server.open(revision=0)
        stream.send(frame(1, "p/a") + frame(2, "p/b", more_in_commit=True) + frame(2, "p/c"))
        stream.drop()
        self.assertEqual(self.server.header(b"last-event-id"), b"2")
        self.server.open(revision=3).send(frame(3, "p/d"))
        self.assertEqual([e.revision for e in self.events], [1, 2, 2, 3])

    def test_progress_is_a_resume_point(self) -> None:
        """
        A progress event moves the resume point to its id (a quiet prefix
        resumes from the present) and is not yielded.
        """
        watch = self.watch()
        stream = self.server.open(revision=3)
        stream.send(frame(4, "p/a") + b'id: 9\nevent: progress\ndata: {"revision": 9}\n\n')
        self.assertEqual((keys_of(self.events), watch.last_revision), ([(4, "put", "p/a")], 9))
        stream.drop()
        self.assertEqual(self.server.header(b"last-event-id"), b"9")
        self.server.open(revision=10).send(frame(9, "p/late") + frame(10, "p/b"))
        self.assertEqual([e.revision for e in self.events], [4, 10])

    def test_progress_without_revision_is_bad(self) -> None:
        """A progress event without a numeric id is a bad-response."""
        self.watch(reconnect=False)
        self.server.open(revision=3).send(b"event: progress\ndata: {}\n\n")
        self.assertEqual(self.failureResultOf(self.done, KVClientError).value.code, "bad-response")

    def test_resume_inside_a_commit(self) -> None:
        """
        A drop that cut a commit short (its last event said more_in_commit)
        resumes from the revision before it; its replayed events already
        yielded are dropped.
        """
        watch = self.watch()
        stream = self.server.open(revision=3)
        stream.send(frame(4, "p/x") + frame(5, "p/a", more_in_commit=True))  # commit 5 is p/a and p/b
        stream.drop()
        self.assertEqual(self.server.header(b"last-event-id"), b"4")
        stream = self.server.open(revision=6)
        stream.send(frame(5, "p/a", more_in_commit=True) + frame(5, "p/b") + frame(6, "p/c"))
        self.assertEqual(keys_of(self.events), [(4, "put", "p/x"), (5, "put", "p/a"),
                                                (5, "put", "p/b"), (6, "put", "p/c")])
        self.assertEqual(watch.reconnects, 1)

    def test_later_commit_proves_earlier_whole(self) -> None:
        """
        A heartbeat proves the commits before it whole, not the ones after
        it: a drop after a later event that says more of its commit follows
        resumes from the revision before that event.
        """
        self.watch()
        stream = self.server.open(revision=0)
        stream.send(frame(1, "p/a") + frame(2, "p/b") + b": heartbeat\n\n"
                    + frame(3, "p/c", more_in_commit=True))
        stream.drop()
        self.assertEqual(self.server.header(b"last-event-id"), b"2")

    def test_opening_revision_is_the_first_resume_point(self) -> None:
        """A drop before any event resumes from the revision the stream opened at."""
        self.watch()
        self.server.open(revision=12).finish()
        self.clock.advance(1)  # no progress: one backoff step
        self.assertEqual(self.server.header(b"last-event-id"), b"12")

    def test_replays_and_stale_events_dropped(self) -> None:
        """Events at or before a whole commit (a server replaying too much) are not yielded again."""
        self.watch(after=5)
        self.server.open(revision=9).send(frame(4, "p/old") + frame(5, "p/a") + frame(6, "p/b") + frame(6, "p/b"))
        self.assertEqual(keys_of(self.events), [(6, "put", "p/b")])

    def test_backoff_doubles_and_gives_up(self) -> None:
        """Refused attempts wait 1, 2, 4, ... s (capped); past max_retries the error is raised."""
        self.watch(retry_delay=1.0, max_delay=5.0, max_retries=4)
        times = []
        for _ in range(20):
            if self.server.waiting:
                times.append(self.clock.seconds())
                self.server.refuse()
                continue
            calls = self.clock.getDelayedCalls()
            if not calls:
                break
            self.clock.advance(calls[0].getTime() - self.clock.seconds())
        self.assertEqual(times, [0, 1, 3, 7, 12])
        self.failureResultOf(self.done, ConnectionRefusedError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_jitter(self) -> None:
        """The backoff is scaled by a random factor between 0.5 and 1."""
        self.watch(retry_delay=2.0, random=lambda: 0.0)
        self.server.refuse()
        self.clock.advance(0.999)
        self.assertEqual(len(self.server.requests), 1)
        self.clock.advance(0.001)
        self.assertEqual(len(self.server.requests), 2)

    def test_server_retry_hint_is_the_base(self) -> None:
        """Without retry_delay, the server's retry: hint is the first backoff delay."""
        self.watch()
        stream = self.server.open(revision=0)
        stream.send(b"retry: 3000\n\n")
        stream.drop()
        self.clock.advance(2.9)
        self.assertEqual(len(self.server.requests), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.server.requests), 2)

    def test_quiet_drops_back_off_but_do_not_give_up(self) -> None:
        """Streams that open and drop without an event back off, but never exhaust max_retries."""
        self.watch(retry_delay=1.0, max_delay=2.0, max_retries=1)
        for _ in range(5):
            self.server.open(revision=0).drop()
            self.clock.advance(2)
        self.assertEqual(len(self.server.requests), 6)
        self.assertNoResult(self.done)

    def test_transient_refusals_retried(self) -> None:
        """429 and 503 answers are retried; the next stream resumes."""
        self.watch(retry_delay=1.0)
        self.server.answer(429, {"code": "limit-exceeded"})
        self.clock.advance(1)
        self.server.answer(503, {"code": "store-unavailable"})
        self.clock.advance(2)
        self.server.open(revision=1).send(frame(2, "p/a"))
        self.assertEqual(keys_of(self.events), [(2, "put", "p/a")])

    def test_refusals_not_retried(self) -> None:
        """400, 401, 403 and 404 end the watch with the error; nothing is retried."""
        for status, code in ((400, "bad-parameter"), (401, "unauthorized"), (403, "forbidden"), (404, "not-found")):
            server = StreamServer()
            watch = client.watch(server, URL, clock=self.clock)
            server.answer(status, {"code": code})
            events: list = []
            e = self.failureResultOf(self.consume(watch, events), KVClientError).value
            self.assertEqual((e.status, e.code, len(server.requests)), (status, code, 1))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_history_gone_on_resume(self) -> None:
        """A resume refused with 410 raises HistoryGone with the server's fields."""
        watch = self.watch()
        stream = self.server.open(revision=0)
        stream.send(frame(1, "p/a") + b": heartbeat\n\n")
        stream.drop()
        self.server.answer(410, {"code": "history-gone", "oldest_revision": 50, "requested_revision": 1,
                                 "detail": "events after revision 1 are no longer in the history"})
        e = self.failureResultOf(self.done, HistoryGone).value
        self.assertEqual((e.status, e.oldest_revision, e.requested_revision), (410, 50, 1))
        self.assertIn("410 history-gone", str(e))
        self.assertEqual(keys_of(self.events), [(1, "put", "p/a")])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # The iteration is over: close() has nothing left to do.
        self.successResultOf(watch.close())

    def test_not_an_event_stream(self) -> None:
        """A 200 that is not text/event-stream (a proxy's page) is a bad-response, not retried."""
        self.watch()
        stream = self.server.open(content_type=b"text/html")
        # Closed unread: such a page may be large, or endless.
        self.assertTrue(stream.transport.lost)
        self.assertEqual(self.failureResultOf(self.done, KVClientError).value.code, "bad-response")
        self.assertEqual(len(self.server.requests), 1)

    def test_malformed_event(self) -> None:
        """An event whose data is not a JSON object, or whose id is not its revision, is a bad-response."""
        for bad in (b"id: 1\nevent: put\ndata: [1]\n\n",
                    b"id: 1\nevent: put\ndata: {\"key\": \"k\", \"revision\": 2}\n\n",
                    b"id: x\nevent: put\ndata: {\"key\": \"k\"}\n\n"):
            server = StreamServer()
            events: list = []
            done = self.consume(client.watch(server, URL, clock=self.clock), events)
            stream = server.open()
            stream.send(frame(1, "ok") + bad)
            self.assertTrue(stream.transport.lost)
            self.assertEqual(self.failureResultOf(done, KVClientError).value.code, "bad-response")
            self.assertEqual(keys_of(events), [(1, "put", "ok")])

    def test_idle_timeout_reconnects(self) -> None:
        """No byte, heartbeats included, for idle_timeout seconds: the connection is dropped and resumed."""
        self.watch(idle_timeout=20.0)
        stream = self.server.open(revision=3)
        self.clock.advance(15)
        stream.send(b": heartbeat\n\n")
        self.clock.advance(15)
        self.assertFalse(stream.transport.lost)
        self.clock.advance(5)
        self.assertTrue(stream.transport.lost)
        self.assertEqual(self.server.header(b"last-event-id"), b"3")

    def test_idle_timeout_while_connecting(self) -> None:
        """A request that gets no answer is cancelled after idle_timeout and tried again."""
        self.watch(idle_timeout=20.0, retry_delay=1.0)
        self.clock.advance(20)
        self.assertEqual(self.server.cancelled, 1)
        self.clock.advance(1)
        self.assertEqual(len(self.server.requests), 2)

    def test_no_reconnect_clean_end(self) -> None:
        """With reconnect=False, the stream's end ends the iteration."""
        self.watch(reconnect=False)
        stream = self.server.open()
        stream.send(frame(1, "p/a"))
        stream.finish()
        self.successResultOf(self.done)
        self.assertEqual((len(self.events), len(self.server.requests)), (1, 1))

    def test_no_reconnect_failure(self) -> None:
        """With reconnect=False, a broken connection is raised."""
        self.watch(reconnect=False)
        self.server.open().drop()
        self.failureResultOf(self.done, ResponseFailed)

    def test_flow_control(self) -> None:
        """Past max_buffer unconsumed events the connection pauses, until half are consumed."""
        watch = client.watch(self.server, URL, clock=self.clock, max_buffer=4)
        self.addCleanup(watch.close)
        stream = self.server.open()
        stream.send(b"".join(frame(i, "k%d" % i) for i in range(1, 7)))
        self.assertTrue(stream.transport.paused)
        got = []

        async def take(n: int) -> None:
            for _ in range(n):
                got.append(await watch.__anext__())

        self.successResultOf(Deferred.fromCoroutine(take(3)))
        self.assertTrue(stream.transport.paused)
        self.successResultOf(Deferred.fromCoroutine(take(1)))
        self.assertFalse(stream.transport.paused)
        self.assertEqual([e.revision for e in got], [1, 2, 3, 4])

    def test_on_retry(self) -> None:
        """on_retry hears of each reconnection: the failure (None for a clean end) and the delay."""
        calls = []
        self.watch(retry_delay=1.0, on_retry=lambda failure, delay: calls.append((failure, delay)))
        self.server.refuse()
        self.clock.advance(1)
        stream = self.server.open()
        stream.send(frame(1, "p/a"))
        stream.finish()
        self.assertEqual([(f if f is None else f.type, d) for f, d in calls],
                         [(ConnectionRefusedError, 1.0), (None, 0.0)])

    def test_close_while_open(self) -> None:
        """close() drops the connection, ends the iteration and leaves no timer."""
        watch = self.watch()
        stream = self.server.open()
        closed = watch.close()
        self.assertTrue(stream.transport.lost)
        self.successResultOf(closed)
        self.successResultOf(self.done)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.server.requests), 1)

    def test_close_while_connecting(self) -> None:
        """close() cancels a request still waiting for its answer; when_open fails."""
        watch = self.watch()
        opened = watch.when_open()
        self.successResultOf(watch.close())
        self.assertEqual(self.server.cancelled, 1)
        self.failureResultOf(opened, CancelledError)
        self.successResultOf(self.done)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_during_backoff(self) -> None:
        """close() during a backoff delay cancels it: no request follows."""
        watch = self.watch(retry_delay=1.0)
        self.server.refuse()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.successResultOf(watch.close())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        self.assertEqual(len(self.server.requests), 1)
        self.successResultOf(self.done)

    def test_async_with_closes(self) -> None:
        """Leaving an async with block closes the watch."""
        watch = client.watch(self.server, URL, clock=self.clock)
        stream = self.server.open()

        async def run():
            async with watch as events:
                stream.send(frame(1, "a"))
                async for event in events:
                    return event

        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(run())).key, "a")
        self.assertTrue(stream.transport.lost)

    def test_one_consumer(self) -> None:
        """A second consumer waiting at the same time is a RuntimeError."""
        watch = self.watch()
        second = Deferred.fromCoroutine(watch.__anext__())
        self.failureResultOf(second, RuntimeError)

    def test_bad_arguments(self) -> None:
        """Bad arguments raise at once and send nothing."""
        http = NoNetwork(self)
        for kwargs, exception in (
            ({"prefix": 3}, TypeError),
            ({"after": -1}, ValueError),
            ({"after": "5"}, TypeError),
            ({"after": True}, TypeError),
            ({"max_retries": -1}, ValueError),
            ({"retry_delay": float("nan")}, ValueError),
            ({"max_delay": 0}, ValueError),
            ({"idle_timeout": 0}, ValueError),
            ({"max_buffer": 0}, ValueError),
            ({"token": "a b"}, ValueError),
        ):
            self.assertRaises(exception, client.watch, http, URL, clock=self.clock, **kwargs)

    def test_event_as_item(self) -> None:
        """as_item() puts revision, kind and key first, then the rest of the data."""
        event = WatchEvent(3, "put", "k", {"key": "k", "revision": 3, "size": 1})
        self.assertEqual(list(event.as_item().items()),
                         [("revision", 3), ("kind", "put"), ("key", "k"), ("size", 1)])


class Tap(Resource):
    """
    Wraps a root resource and keeps every request, so that a test can cut
    a stream's connection from the server's side.
    """

    def __init__(self, root: Resource) -> None:
        super().__init__()
        self.root = root
        self.requests: List[Request] = []

    def getChildWithDefault(self, name: bytes, request: Request):
        self.requests.append(request)
        return self.root.getChildWithDefault(name, request)

    def render(self, request: Request):
        return self.root.render(request)

    def streams(self) -> List[Request]:
        """The event-stream requests, oldest first."""
        return [r for r in self.requests if r.uri.startswith(b"/v1/watch")]

    def cut(self) -> None:
        """Drop the latest stream's connection, as a crash or a proxy would."""
        self.streams()[-1].channel.transport.loseConnection()


class WatchMemoryTests(WatchTestMixin, SynchronousTestCase):
    """watch() against the whole Resource tree in memory: the server's real feed."""

    def setUp(self) -> None:
        self.store = MemoryStore()
        self.root = memory_root(self.store, limits=Limits(watch_history=20))
        self.tap = Tap(self.root)
        self.stub = StubTreq(self.tap)
        # Connections fail on demand, to hold the watch in its backoff.
        self.refuse = 0
        self.clock = Clock()
        self.events: list = []

    def request(self, method, url, **kwargs):
        if self.refuse:
            self.refuse -= 1
            return fail(ConnectionRefusedError("Connection refused"))
        return self.stub.request(method, url, **kwargs)

    @property
    def hub(self):
        return self.root.root.children[b"v1"].context.hub

    def watch(self, prefix: str = "", **kwargs):
        watch = client.watch(self, URL, prefix, clock=self.clock, random=lambda: 1.0,
                             retry_delay=1.0, **kwargs)
        self.stub.flush()
        self.done = self.consume(watch, self.events)
        self.addCleanup(self.close, watch)
        return watch

    def close(self, watch) -> None:
        d = watch.close()
        self.stub.flush()
        self.successResultOf(d)

    def put(self, key: str, value: bytes = b"v") -> None:
        d = client.put(self.stub, URL, key, value)
        self.stub.flush()
        self.successResultOf(d)

    def test_live_events(self) -> None:
        """Commits under the prefix arrive in order; a batch's events together; values with values=True."""
        self.put("p/old")
        watch = self.watch("p/", values=True)
        self.assertEqual(self.successResultOf(watch.when_open()), 1)
        self.put("p/a", b"1")
        self.put("q/x")
        d = client.batch(self.stub, URL, [{"op": "set", "key": "p/b", "value": {"j": 1}},
                                          {"op": "delete", "key": "p/a"}])
        self.stub.flush()
        self.successResultOf(d)
        self.assertEqual(keys_of(self.events), [(2, "put", "p/a"), (4, "put", "p/b"), (4, "delete", "p/a")])
        self.assertEqual(self.events[0].data["value_base64"], "MQ==")
        self.assertEqual(self.events[1].data["value"], {"j": 1})

    def test_after_replays_history(self) -> None:
        """after=REV replays the history after REV, then goes live."""
        for key in ("a", "b", "c"):
            self.put(key)
        self.watch(after=1)
        self.put("d")
        self.assertEqual([e.key for e in self.events], ["b", "c", "d"])

    def test_resume_after_server_side_drop(self) -> None:
        """
        Commits made while the connection is down are replayed on resume:
        every event once, none missing.
        """
        watch = self.watch()
        for i in range(3):
            self.put("k%d" % i)
        self.refuse = 1  # the first reconnection fails: a backoff gap
        self.tap.cut()
        self.stub.flush()
        for i in range(3, 6):
            self.put("k%d" % i)
        self.assertEqual(len(self.events), 3)
        self.clock.advance(1)
        self.stub.flush()
        self.put("k6")
        self.assertEqual([e.key for e in self.events], ["k%d" % i for i in range(7)])
        self.assertEqual([e.revision for e in self.events], list(range(1, 8)))
        self.assertEqual(watch.reconnects, 2)
        # Commit 3's only event said no more of it follows: resumed from 3 itself.
        self.assertEqual(self.tap.streams()[-1].getHeader(b"last-event-id"), b"3")

    def test_heartbeat_proves_commits_whole(self) -> None:
        """After a server heartbeat (a progress event), a resume starts at the last revision itself."""
        self.watch()
        for key in ("a", "b", "c"):
            self.put(key)
        self.store.clock.advance(15)  # the server's heartbeat interval
        self.stub.flush()
        self.tap.cut()
        self.stub.flush()
        self.assertEqual(self.tap.streams()[-1].getHeader(b"last-event-id"), b"3")
        self.put("d")
        self.assertEqual([e.key for e in self.events], ["a", "b", "c", "d"])

    def test_resume_before_any_event(self) -> None:
        """A drop before any event resumes from the opening revision: nothing committed meanwhile is lost."""
        self.put("before")
        self.watch()
        self.tap.cut()
        self.stub.flush()
        # A stream that delivered nothing is retried after a backoff step.
        self.put("during")
        self.clock.advance(1)
        self.stub.flush()
        self.assertEqual(self.tap.streams()[-1].getHeader(b"last-event-id"), b"1")
        self.assertEqual(keys_of(self.events), [(2, "put", "during")])

    def disconnected_for(self, commits: int, compact_to: int = 0) -> None:
        """
        Watch, see one commit, then lose the connection for a backoff step
        while C{commits} more are made (and the history is compacted to
        C{compact_to}), then let the watch reconnect.
        """
        self.watch()
        self.put("first")
        self.refuse = 1
        self.tap.cut()
        self.stub.flush()
        for i in range(commits):
            self.put("k%d" % i)
        self.successResultOf(self.store.compact(compact_to, 100))
        self.clock.advance(1)
        self.stub.flush()

    def test_long_disconnection_is_replayed(self) -> None:
        """Disconnected for more commits than the feed keeps in memory: the store's history replays them."""
        self.disconnected_for(25)
        self.assertEqual([x.key for x in self.events], ["first"] + ["k%d" % i for i in range(25)])

    def test_history_gone_on_resume(self) -> None:
        """Disconnected past a compaction: HistoryGone, after the events seen."""
        self.disconnected_for(25, compact_to=6)
        e = self.failureResultOf(self.done, HistoryGone).value
        self.assertEqual(e.oldest_revision, 6)
        self.assertEqual([x.key for x in self.events], ["first"])

    def test_history_gone_at_start(self) -> None:
        """after=REV older than the compacted history: HistoryGone at once."""
        for i in range(25):
            self.put("k%d" % i)
        self.successResultOf(self.store.compact(5, 100))
        self.watch(after=0)
        self.assertEqual(self.failureResultOf(self.done, HistoryGone).value.oldest_revision, 5)

    def test_close_releases_the_server(self) -> None:
        """close() ends the server's subscription and watcher slot, and the iteration."""
        watch = self.watch()
        context = self.root.root.children[b"v1"].context
        self.assertEqual((self.hub.subscribers, context.watchers.active), (1, 1))
        self.close(watch)
        self.assertEqual((self.hub.subscribers, context.watchers.active), (0, 0))
        self.successResultOf(self.done)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class WaitForTests(V1TestCase):
    """wait_for(): one long-poll on a key."""

    def test_at_once_when_newer(self) -> None:
        """A key already past the index answers at once with its entry."""
        self.put("a", b"1")
        self.put("a", b"2")
        entry = self.result(client.wait_for(self.http, URL, "a", 1, wait=30))
        self.assertEqual((entry.value, entry.mod_revision), (b"2", 2))

    def test_wakes_on_commit(self) -> None:
        """A held long-poll fires with the new value when the key is written."""
        self.put("a", b"1")
        d = client.wait_for(self.http, URL, "a", 1, wait=30)
        self.http.flush()
        self.assertNoResult(d)
        self.put("b")
        self.assertNoResult(d)
        self.put("a", b"new")
        self.assertEqual(self.result(d).value, b"new")

    def test_unchanged_at_the_end_of_the_wait(self) -> None:
        """At the end of the wait the unchanged entry comes back (mod_revision not past index)."""
        self.put("a", b"1")
        d = client.wait_for(self.http, URL, "a", 1, wait=5)
        self.http.flush()
        self.clock.advance(6)
        self.assertEqual(self.result(d).mod_revision, 1)

    def test_absent_is_none(self) -> None:
        """A missing key at the end of the wait, or deleted after index, is None."""
        d = client.wait_for(self.http, URL, "nope", 0, wait=5)
        self.http.flush()
        self.clock.advance(6)
        self.assertIsNone(self.result(d))
        self.put("a")
        self.result(client.remove(self.http, URL, "a"))
        self.assertIsNone(self.result(client.wait_for(self.http, URL, "a", 1, wait=30)))

    def test_wire(self) -> None:
        """index and wait go in the query; a whole wait is sent without a fraction."""
        recorder = Recorder(200, b"v", b"text/plain")
        http = StubTreq(recorder)
        d = client.wait_for(http, URL, "a/b", 7, wait=2.0, token="t")
        self.successResultOf(d)
        client.wait_for(http, URL, "a", 0, wait=0.5)
        client.wait_for(http, URL, "a", 0)
        self.assertEqual([r[1] for r in recorder.requests], [
            b"/v1/kv/a%2Fb?index=7&wait=2", b"/v1/kv/a?index=0&wait=0.5", b"/v1/kv/a?index=0"])
        self.assertEqual(recorder.header(0, b"authorization"), b"Bearer t")

    def test_other_404_is_an_error(self) -> None:
        """A 404 that is not about the key (a wrong base URL) is a NotFoundError, not None."""
        http = StubTreq(Recorder(404, b'{"code": "not-found"}', b"application/problem+json"))
        self.failureResultOf(client.wait_for(http, URL, "a", 0), NotFoundError)

    def test_bad_arguments(self) -> None:
        """A bad index or wait raises at once."""
        http = NoNetwork(self)
        for args, kwargs, exception in (
            ((-1,), {}, ValueError),
            (("1",), {}, TypeError),
            ((True,), {}, TypeError),
            ((1,), {"wait": -1}, ValueError),
            ((1,), {"wait": float("inf")}, ValueError),
            ((1,), {"wait": "5"}, TypeError),
        ):
            self.assertRaises(exception, client.wait_for, http, URL, "a", *args, **kwargs)
        self.assertRaises(ValueError, client.wait_for, http, URL, "", 1)
