"""
Tests for L{kvtwist.client._wire}: what the client functions put on the
wire (user agent, one encoded segment per key, a base URL's path prefix,
bearer tokens, v1 query strings and bodies) and how they read answers a
kvcache would never give (a proxy's HTML, a body that is not JSON), through
a recording resource.
"""

from __future__ import annotations

from typing import Tuple

from treq.testing import StubTreq
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kvtwist import client
from kvtwist.client import ConflictError, KVClientError, NotFoundError, PreconditionFailedError
from tests.helpers.client import NoNetwork, Recorder, Refused, URL


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
