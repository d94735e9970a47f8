"""
Bearer tokens and prefix rules on every route (docs/configuration.md,
"Tokens"), in memory: the matrix of no token, a bad token, a read-only
token, and a write token on an allowed and on a forbidden prefix.
"""

import json

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from kvtwist.auth import ANYONE, NOBODY, Authorizer, Token, principal_of
from kvtwist.limits import Limits
from kvtwist.testing import MemoryStore, memory_root
from kvtwist.web.ops import ops_children
from kvtwist.web.ui import make_ui_resource
from tests.helpers.webtest import TreeClient

READER = Token("reader", "r-secret", read=("app/",))
WRITER = Token("writer", "w-secret", read=("app/",), write=("app/",))
OPS = Token("ops", "o-secret", ops=True)

#: Each route with its method, body, and the permission it needs on app/x.
ROUTES = [
    ("GET", "/app%2Fx", None, "read"),
    ("DELETE", "/app%2Fx", None, "write"),
    ("POST", "/set", {"app/x": 1}, "write"),
    ("DELETE", "/set", ["app/x"], "write"),
    ("GET", "/v1/kv/app/x", None, "read"),
    ("PUT", "/v1/kv/app/x", "raw", "write"),
    ("DELETE", "/v1/kv/app/x", None, "write"),
    ("POST", "/v1/batch", {"ops": [{"op": "get", "key": "app/x"}]}, "read"),
    ("POST", "/v1/batch", {"ops": [{"op": "set", "key": "app/x", "value": 1}]}, "write"),
]


class AuthCase(SynchronousTestCase):
    """A tree with auth on and app/x committed."""

    def setUp(self):
        self.store = MemoryStore()
        self.client = TreeClient(
            self, memory_root(self.store, authorizer=Authorizer([READER, WRITER, OPS]))
        )
        self.as_token(WRITER, "PUT", "/v1/kv/app/x", body=b"1")

    def as_token(self, token, method, path, body=None, secret=None, **kw):
        headers = kw.pop("headers", {})
        if token is not None or secret is not None:
            headers["Authorization"] = "Bearer " + (secret or token.secret)
        if body is not None and not isinstance(body, bytes):
            body = b"raw" if body == "raw" else json.dumps(body).encode()
        return self.client.request(method, path, body=body, headers=headers, **kw)


class MatrixTests(AuthCase):
    """Every route against every kind of caller."""

    def test_no_token_is_401(self):
        """Without a token every route is 401 with WWW-Authenticate."""
        for method, path, body, _ in ROUTES + [("POST", "/commit", None, ""),
                                               ("GET", "/v1/kv/", None, ""),
                                               ("POST", "/v1/txn", None, "")]:
            answer = self.as_token(None, method, path, body)
            self.assertEqual(answer.status, 401, (method, path))
            self.assertEqual(answer.header("www-authenticate"), 'Bearer realm="kvtwist"')
            self.assertEqual(answer.json["code"], "unauthorized")

    def test_bad_token_is_401(self):
        """A token that matches none, or a non-Bearer scheme, is 401."""
        for method, path, body, _ in ROUTES:
            self.assertEqual(self.as_token(None, method, path, body, secret="nope").status, 401)
        answer = self.client.request("GET", "/v1/kv/app/x",
                                     headers={"Authorization": "Basic " + WRITER.secret})
        self.assertEqual(answer.status, 401)

    def test_read_only_token(self):
        """A read-only token reads its prefix and is 403 on every write."""
        for method, path, body, need in ROUTES:
            answer = self.as_token(READER, method, path, body)
            if need == "read":
                self.assertIn(answer.status, (200,), (method, path, answer.body))
            else:
                self.assertEqual(answer.status, 403, (method, path))
                self.assertEqual(answer.json["code"], "forbidden")
        self.assertEqual(self.store.revision, 1)

    def test_write_token_allowed_prefix(self):
        """A write token does reads and writes on its prefix."""
        for method, path, body, need in ROUTES:
            answer = self.as_token(WRITER, method, path, body)
            self.assertLess(answer.status, 400, (method, path, answer.body))
            if path == "/v1/kv/app/x" and method == "DELETE":
                self.as_token(WRITER, "PUT", "/v1/kv/app/x", body=b"1")

    def test_write_token_forbidden_prefix(self):
        """Outside its prefixes a write token is 403 and changes nothing."""
        before = self.store.revision
        for method, path, body, _ in ROUTES:
            path = path.replace("app%2Fx", "other%2Fx").replace("app/x", "other/x")
            if isinstance(body, dict):
                body = json.loads(json.dumps(body).replace("app/x", "other/x"))
            if isinstance(body, list):
                body = ["other/x"]
            answer = self.as_token(WRITER, method, path, body)
            self.assertEqual(answer.status, 403, (method, path))
        self.assertEqual(self.store.revision, before)

    def test_tokens_compared_whole(self):
        """A prefix or extension of a secret is not that secret."""
        for secret in (WRITER.secret[:-1], WRITER.secret + "x", WRITER.secret.upper()):
            self.assertEqual(self.as_token(None, "GET", "/v1/kv/app/x", secret=secret).status, 401)


class ScopedViewsTests(AuthCase):
    """Listings, streams and transactions see only what the token may."""

    def test_listing_filtered(self):
        """A listing leaves out keys the token may not read; paging goes on."""
        other = Token("other", "x-secret", read=("",), write=("",))
        client = TreeClient(self, memory_root(self.store, authorizer=Authorizer([READER, other])))
        for key in ("app/y", "zzz/1", "zzz/2"):
            client.request("PUT", "/v1/kv/" + key, body=b"1",
                           headers={"Authorization": "Bearer x-secret"})
        answer = client.request("GET", "/v1/kv/?limit=2",
                                headers={"Authorization": "Bearer r-secret"}).json
        self.assertEqual([i["key"] for i in answer["items"]], ["app/x", "app/y"])
        answer = client.request("GET", "/v1/kv/?limit=2&after=app/y",
                                headers={"Authorization": "Bearer r-secret"}).json
        self.assertEqual(answer["items"], [])

    def test_listing_cursor_names_only_readable_keys(self):
        """
        A token limited to app/ listing another prefix gets no items and no
        cursor; listing everything, each page is full of readable keys, and
        following the cursors reaches every readable key and names no other.
        """
        other = Token("other", "x-secret", read=("",), write=("",))
        scoped = Token("scoped", "s-secret", read=("app/", "cfg/", "app/deep/"))
        client = TreeClient(self, memory_root(self.store, authorizer=Authorizer([scoped, other])))
        keys = ["secret/%02d" % (n,) for n in range(20)] + ["app/y", "b/1", "cfg/1", "cfg/2", "zzz"]
        for key in keys:
            client.request("PUT", "/v1/kv/" + key, body=b"1",
                           headers={"Authorization": "Bearer x-secret"})

        def page(query):
            return client.request("GET", "/v1/kv/?" + query,
                                  headers={"Authorization": "Bearer s-secret"}).json

        answer = page("prefix=secret/&limit=1")
        self.assertEqual((answer["items"], answer["next"]), ([], None))
        seen, cursors, query = [], [], "limit=2"
        for _ in range(10):
            answer = page(query)
            seen += [item["key"] for item in answer["items"]]
            if answer["next"] is None:
                break
            self.assertEqual(len(answer["items"]), 2)
            cursors.append(answer["next"])
            query = "limit=2&after=" + answer["next"]
        self.assertEqual(seen, ["app/x", "app/y", "cfg/1", "cfg/2"])
        self.assertTrue(all(key.startswith(("app/", "cfg/")) for key in cursors), cursors)
        # A cursor a client makes up is only a starting point.
        answer = page("limit=5&after=secret/05")
        self.assertEqual((answer["items"], answer["next"]), ([], None))
        answer = page("limit=5&prefix=app/&after=b")
        self.assertEqual(answer["items"], [])

    def test_readable_listing_keeps_the_byte_bound_across_prefixes(self):
        """
        A token's listing that spans several of its read prefixes ends a page
        at --max-list-bytes as a plain listing does: the bytes of every prefix
        read count, and the cursor goes on where the page ended.
        """
        scoped = Token("scoped", "s-secret", read=("app/", "cfg/"))
        writer = Token("writer", "w-secret", read=("",), write=("",))
        root = memory_root(
            self.store,
            authorizer=Authorizer([scoped, writer]),
            limits=Limits(max_list_bytes=250),
        )
        client = TreeClient(self, root)
        for key in ["app/1", "app/2", "cfg/1", "cfg/2"]:
            client.request("PUT", "/v1/kv/" + key, body=b"v" * 100,
                           headers={"Authorization": "Bearer w-secret"})
        seen, query = [], "limit=10"
        for _ in range(5):
            answer = client.request("GET", "/v1/kv/?" + query,
                                    headers={"Authorization": "Bearer s-secret"}).json
            seen.append([item["key"] for item in answer["items"]])
            if answer["next"] is None:
                break
            query = "limit=10&after=" + answer["next"]
        # setUp stored the small app/x.
        self.assertEqual(seen, [["app/1", "app/2", "app/x", "cfg/1"], ["cfg/2"]])

    def test_transactions_belong_to_their_token(self):
        """Another token sees someone else's transaction as 404."""
        txn = self.as_token(WRITER, "POST", "/v1/txn").json["id"]
        self.assertEqual(self.as_token(WRITER, "GET", "/v1/txn/" + txn).status, 200)
        answer = self.as_token(READER, "GET", "/v1/txn/" + txn)
        self.assertEqual(answer.status, 404)
        self.assertEqual(self.as_token(READER, "POST", "/v1/txn/%s/commit" % txn).status, 404)

    def test_seed_commit_needs_write_on_everything_queued(self):
        """Committing the shared queue needs write access to every staged key."""
        other = Token("other", "x-secret", read=("",), write=("zzz/",))
        client = TreeClient(self, memory_root(self.store, authorizer=Authorizer([WRITER, other])))
        client.request("POST", "/set", body=b'{"app/x": 2}',
                       headers={"Authorization": "Bearer w-secret"})
        answer = client.request("POST", "/commit", headers={"Authorization": "Bearer x-secret"})
        self.assertEqual(answer.status, 403)
        self.assertEqual(
            client.request("POST", "/commit", headers={"Authorization": "Bearer w-secret"}).status,
            204,
        )

    def test_healthz_needs_no_token(self):
        """/v1/healthz, when mounted, is outside authentication (probes carry no token)."""
        client = TreeClient(
            self,
            memory_root(
                self.store,
                authorizer=Authorizer([READER]),
                ops=ops_children(self.store, None, self.store.clock),
            ),
        )
        answer = client.request("GET", "/v1/healthz")
        self.assertEqual(answer.status, 200, answer.body)


class OpenRoutesTests(AuthCase):
    """
    Only routes really mounted skip authentication: with the admin page or
    the probes off, their names are keys, and keys need a token.
    """

    def test_unmounted_names_are_keys_behind_auth(self):
        """
        Without /ui and /healthz mounted, the keys ui and healthz are read,
        deleted and written only with a token: 401 without one, and the
        keys stay as they were.
        """
        other = Token("all", "a-secret", read=("",), write=("",))
        client = TreeClient(self, memory_root(self.store, authorizer=Authorizer([other])))
        for name in ("ui", "healthz"):
            client.request("PUT", "/v1/kv/" + name, body=b"secret",
                           headers={"Authorization": "Bearer a-secret"})
            for method in ("GET", "DELETE"):
                for path in ("/" + name, "/" + name + "/"):
                    answer = client.request(method, path)
                    self.assertEqual(answer.status, 401, (method, path, answer.body))
                    self.assertEqual(answer.json["code"], "unauthorized")
            answer = client.request("GET", "/" + name, headers={"Authorization": "Bearer a-secret"})
            self.assertEqual((answer.status, answer.body), (200, b"secret"))

    def test_mounted_ui_is_open(self):
        """With the admin page mounted, its files load without a token."""
        client = TreeClient(
            self,
            memory_root(
                self.store,
                authorizer=Authorizer([READER]),
                extra_children={b"ui": make_ui_resource()},
            ),
        )
        self.assertEqual(client.request("GET", "/ui/").status, 200)
        self.assertEqual(client.request("GET", "/v1/kv/app/x").status, 401)

    def test_root_names_are_keys_behind_auth(self):
        """/healthz, /ui and /v1 are seed keys: reading them needs a token like any key."""
        for path in ("/healthz", "/ui", "/v1", "/metrics"):
            self.assertEqual(self.as_token(None, "GET", path).status, 401, path)


class FailClosedTests(AuthCase):
    """A request that was never authenticated may do nothing."""

    def test_unauthenticated_request_is_nobody(self):
        """principal_of a request no authentication saw is NOBODY, who may not read, write or operate."""
        principal = principal_of(DummyRequest([b"v1", b"kv", b"k"]))
        self.assertIs(principal, NOBODY)
        self.assertEqual(
            (principal.may_read(""), principal.may_write(""), principal.writes_everything, principal.ops),
            (False, False, False, False),
        )

    def test_authenticated_request_is_its_token(self):
        """principal_of a request the tree authenticated is the token it recorded."""
        request = DummyRequest([b"k"])
        request.kvtwist_principal = READER
        self.assertIs(principal_of(request), READER)

    def test_route_reached_past_authentication_is_refused(self):
        """
        With auth on, a route reached without the authenticating top of the
        tree refuses reads and writes (403) instead of serving them to anyone.
        """
        top = memory_root(self.store, authorizer=Authorizer([READER, WRITER, OPS]))
        bypass = TreeClient(self, top.root)
        answer = bypass.request("GET", "/v1/kv/app/x")
        self.assertEqual((answer.status, answer.json["code"]), (403, "forbidden"))
        answer = bypass.request("PUT", "/v1/kv/app/y", body=b"2")
        self.assertEqual((answer.status, answer.json["code"]), (403, "forbidden"))
        self.assertEqual(bypass.request("GET", "/app%2Fx").status, 403)
        self.assertIsNone(self.successResultOf(self.store.get("app/y")))


class AuthOffTests(SynchronousTestCase):
    """With no tokens configured, nothing asks for one."""

    def test_open(self):
        """Every route works without Authorization."""
        client = TreeClient(self, memory_root(MemoryStore()))
        self.assertEqual(client.request("PUT", "/v1/kv/a", body=b"1").status, 201)
        self.assertEqual(client.request("GET", "/a").status, 200)

    def test_every_request_is_anyone(self):
        """With auth off the tree records ANYONE on every request, so nothing falls back to NOBODY."""
        root = memory_root(MemoryStore())
        request = DummyRequest([b"v1", b"kv", b"a"])
        root.getChildWithDefault(b"v1", request)
        self.assertIs(principal_of(request), ANYONE)
