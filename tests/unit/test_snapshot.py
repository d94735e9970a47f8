"""
Snapshots, in memory (a MemoryStore under the whole tree, through
StubTreq): C{GET /v1/snapshot} (every key at one revision as JSON Lines),
L{kvtwist.client.save_snapshot} and C{kvtwist snapshot save FILE}.
"""

import base64
import io
import json
import os

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from kvtwist import client

from kvtwist.auth import Authorizer, Token
from kvtwist.limits import Limits
from kvtwist.model import Delete, Put
from kvtwist.store.cache import CachedStore
from kvtwist.store.shelve_store import ShelveStore
from kvtwist.testing import InlineThreadPool, MemoryStore, ThreadlessReactor, memory_root
from tests.helpers.cli import CLITestCase
from tests.helpers.webtest import StoreWithoutHistory, TreeClient


def lines_of(body: bytes):
    """The JSON objects of a JSON Lines body."""
    return [json.loads(line) for line in body.decode("utf-8").splitlines()]


class _PagedSlowly:
    """A store whose reads at a revision wait until the test lets them through."""

    def __init__(self, store):
        self._store = store
        self.waiting = []

    def __getattr__(self, name):
        return getattr(self._store, name)

    def list_at(self, *args):
        d = Deferred()
        self.waiting.append((d, args))
        return d

    def release(self):
        d, args = self.waiting.pop(0)
        self._store.list_at(*args).chainDeferred(d)


class SnapshotTests(SynchronousTestCase):
    """The snapshot route over a MemoryStore."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = MemoryStore(self.clock)

    def client(self, store=None, **options):
        return TreeClient(self, memory_root(store or self.store, **options))

    def commit(self, *puts):
        self.successResultOf(self.store.commit(list(puts)))

    def test_header_keys_trailer(self):
        """A header with the revision, one line per live key with its exact bytes, a trailer."""
        self.commit(Put("a/1", b"\x00\xff", "image/png"), Put("b", b"{}", "application/json"))
        self.commit(Put("a/2", b"x", expires=self.clock.seconds() + 5), Put("a/3", b"gone", expires=self.clock.seconds() + 1))
        self.clock.advance(2)
        answer = self.client().request("GET", "/v1/snapshot")
        self.assertEqual((answer.status, answer.content_type), (200, "application/x-ndjson"))
        lines = lines_of(answer.body)
        self.assertEqual(lines[0], {"snapshot": "kvtwist", "format": 1, "revision": 2, "prefix": ""})
        self.assertEqual([line["key"] for line in lines[1:-1]], ["a/1", "a/2", "b"])
        self.assertEqual(
            lines[1],
            {"key": "a/1", "create_revision": 1, "mod_revision": 1, "version": 1,
             "content_type": "image/png", "size": 2, "expires": None,
             "value_base64": base64.b64encode(b"\x00\xff").decode()},
        )
        self.assertEqual(lines[2]["expires"], "2023-11-14T22:13:25.000Z")
        self.assertEqual(lines[-1], {"end": True, "keys": 3, "revision": 2})

    def test_prefix_and_token(self):
        """?prefix= narrows it; a token sees only the keys it may read."""
        self.commit(Put("app/a", b"1"), Put("app/secret/x", b"2"), Put("other", b"3"))
        tokens = [Token("app", "s1", read=("app/a", "other"))]
        client = self.client(authorizer=Authorizer(tokens))
        answer = client.request("GET", "/v1/snapshot?prefix=app/", headers={"Authorization": "Bearer s1"})
        lines = lines_of(answer.body)
        self.assertEqual([line.get("key") for line in lines[1:-1]], ["app/a"])
        self.assertEqual(lines[0]["prefix"], "app/")

    def test_one_revision_while_writes_go_on(self):
        """
        Pages read while commits land all come from the snapshot's revision:
        the snapshot is the store as it was when it began.
        """
        for i in range(6):
            self.commit(Put("k%d" % i, b"old"))
        slow = _PagedSlowly(self.store)
        client = self.client(slow, limits=Limits(max_list_bytes=10))
        stub = client.stub
        d = stub.get("http://kv.test/v1/snapshot")
        stub.flush()
        while slow.waiting:
            self.commit(Put("k0", b"new"), Put("k9", b"new"))
            slow.release()
            stub.flush()
        body = self.successResultOf(stub.content(self.successResultOf(d)))
        lines = lines_of(body)
        self.assertEqual(lines[0]["revision"], 6)
        self.assertEqual([(line["key"], line["value_base64"]) for line in lines[1:-1]],
                         [("k%d" % i, "b2xk") for i in range(6)])
        self.assertEqual(lines[-1], {"end": True, "keys": 6, "revision": 6})
        self.assertGreater(self.store.revision, 7)

    def test_store_without_history(self):
        """A store that keeps no history cannot give one picture: 501."""
        client = self.client(StoreWithoutHistory(self.clock))
        client.problem("GET", "/v1/snapshot", 501, "history-unsupported")


class _Truncated(Resource):
    """A server whose snapshot stream stops before its end line."""

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/x-ndjson")
        return b'{"snapshot":"kvtwist","format":1,"revision":3,"prefix":""}\n{"key":"a"}\n'


class SaveSnapshotTests(SynchronousTestCase):
    """kvtwist.client.save_snapshot."""

    def test_saves_and_checks(self):
        """It copies the stream into the file and reports its revision and keys."""
        store = MemoryStore()
        for i in range(3):
            self.successResultOf(store.commit([Put("k%d" % i, b"v")]))
        http = StubTreq(memory_root(store))
        out = io.BytesIO()
        d = client.save_snapshot(http, "http://kv.test", out, "k")
        http.flush()
        self.assertEqual(self.successResultOf(d), {"revision": 3, "keys": 3, "bytes": len(out.getvalue())})
        self.assertEqual(len(out.getvalue().splitlines()), 5)

    def test_truncated_stream_is_refused(self):
        """A stream without its end line is snapshot-incomplete."""
        http = StubTreq(_Truncated())
        d = client.save_snapshot(http, "http://kv.test", io.BytesIO())
        http.flush()
        self.assertEqual(self.failureResultOf(d, client.KVClientError).value.code, "snapshot-incomplete")

    def test_refusal(self):
        """A store without history: the 501 problem."""
        http = StubTreq(memory_root(StoreWithoutHistory()))
        d = client.save_snapshot(http, "http://kv.test", io.BytesIO())
        http.flush()
        self.assertEqual(self.failureResultOf(d, client.KVClientError).value.status, 501)


class SnapshotCommandTests(CLITestCase):
    """kvtwist snapshot save FILE."""

    def test_save(self):
        """It writes the snapshot to FILE and says what it saved."""
        self.successResultOf(self.store.commit([Put("a", b"1"), Put("b", b"2")]))
        path = os.path.join(self.mktemp() + "-dir", "backup.jsonl")
        os.makedirs(os.path.dirname(path))
        out, err = self.cli("snapshot", "save", path)
        result = json.loads(out)
        self.assertEqual((result["revision"], result["keys"], result["file"], err), (1, 2, path, ""))
        out, _ = self.cli("--output", "text", "snapshot", "save", path)
        self.assertEqual(out, "saved 2 keys at revision 1 to %s\n" % (path,))
        with open(path, "rb") as f:
            self.assertEqual([json.loads(line).get("key") for line in f], [None, "a", "b", None])
        self.assertEqual(os.listdir(os.path.dirname(path)), ["backup.jsonl"])

    def test_failure_leaves_no_file(self):
        """A refused snapshot exits 1 and leaves no file, not even a temporary one."""
        directory = self.mktemp()
        os.makedirs(directory)
        http = StubTreq(memory_root(StoreWithoutHistory()))
        _, err = self.cli("snapshot", "save", os.path.join(directory, "x.jsonl"), code=1, http=http)
        self.assertIn("history-unsupported", err)
        self.assertEqual(os.listdir(directory), [])


class SnapshotLoadTests(SynchronousTestCase):
    """A snapshot file loads into another kvcache like a dump (kvtwist load)."""

    def test_load_a_snapshot(self):
        """Its key lines are loaded with their bytes, types and expiries; its header and end lines skipped."""
        from kvtwist import dumpload

        clock = Clock()
        clock.advance(1_700_000_000)
        source = MemoryStore(clock)
        self.successResultOf(source.commit([
            Put("a", b"\x00\xff", "image/png"), Put("b", b'{"x": 1}', "application/json"),
            Put("t", b"soon", expires=clock.seconds() + 60),
        ]))
        http = StubTreq(memory_root(source))
        out = io.BytesIO()
        d = client.save_snapshot(http, "http://kv.test", out)
        http.flush()
        self.successResultOf(d)
        target = MemoryStore(clock)
        target_http = StubTreq(memory_root(target))
        d = dumpload.load(target_http, "http://kv.test", io.BytesIO(out.getvalue()), clock=clock)
        target_http.flush()
        self.assertEqual(self.successResultOf(d)["loaded"], 3)
        self.assertEqual(
            {k: (e.value, e.content_type, e.expires) for k, e in target.rows.items()},
            {k: (e.value, e.content_type, e.expires) for k, e in source.rows.items()},
        )


class SnapshotRestoreTests(CLITestCase):
    """kvtwist snapshot restore FILE --data DIR, from a shelve store's snapshot."""

    def setUp(self):
        super().setUp()
        self.reactor = ThreadlessReactor()
        self.reactor.advance(1_700_000_000)
        self.source = ShelveStore(os.path.join(self.mktemp(), "data"), self.reactor, InlineThreadPool())
        self.successResultOf(self.source.open())
        self.addCleanup(self.source.close)
        self.http = StubTreq(memory_root(CachedStore(self.source, 1 << 20)))
        self.dir = self.mktemp()
        os.makedirs(self.dir)

    def commit(self, *ops):
        self.successResultOf(self.source.commit(list(ops)))

    def save(self) -> str:
        path = os.path.join(self.dir, "snap.jsonl")
        self.cli("snapshot", "save", path)
        return path

    def test_restore_keeps_revisions_and_etags(self):
        """
        The restored store has the source's revision and every key's value,
        type, create and mod revisions, version and expiry; a server on it
        answers the same ETags, and reads at its revision work from the
        history.
        """
        now = self.reactor.seconds()
        self.commit(Put("a", b"1", "text/plain"), Put("gone", b"x"), Put("t", b"ttl", expires=now + 600))
        self.commit(Put("a", b"2", "text/plain"))
        self.commit(Delete("gone"), Put("bin", b"\x00\xff", "image/png"))
        path = self.save()
        target = os.path.join(self.dir, "restored")
        out, err = self.cli("--output", "text", "snapshot", "restore", path, "--data", target)
        self.assertEqual((out, err), ("restored 3 keys at revision 3 into %s\n" % (target,), ""))
        restored = ShelveStore(target, self.reactor, InlineThreadPool())
        self.successResultOf(restored.open())
        self.addCleanup(restored.close)
        self.assertEqual((restored.revision, restored.compact_revision, restored.key_count), (3, 3, 3))
        for key in ("a", "t", "bin"):
            original = self.successResultOf(self.source.get(key))
            copy = self.successResultOf(restored.get(key))
            self.assertEqual(
                (copy.value, copy.content_type, copy.create_revision, copy.mod_revision, copy.version),
                (original.value, original.content_type, original.create_revision,
                 original.mod_revision, original.version),
            )
            self.assertAlmostEqual(copy.expires or 0, original.expires or 0, places=2)
        self.assertIsNone(self.successResultOf(restored.get("gone")))
        served = TreeClient(self, memory_root(restored))
        answer = served.request("GET", "/v1/kv/a")
        self.assertEqual((answer.body, answer.header("etag"), answer.header("kv-version")), (b"2", '"2"', "2"))
        self.assertEqual(served.request("GET", "/v1/kv/bin?revision=3").header("etag"), '"3"')
        served.problem("GET", "/v1/kv/a?revision=2", 410, "compacted")

    def test_refusals_leave_nothing(self):
        """A cut-short snapshot, or a DIR that is not empty, is exit 2 and builds nothing."""
        self.commit(Put("a", b"1"), Put("b", b"2"))
        path = self.save()
        with open(path, "rb") as f:
            lines = f.readlines()
        cut = os.path.join(self.dir, "cut.jsonl")
        with open(cut, "wb") as f:
            f.writelines(lines[:-1])
        target = os.path.join(self.dir, "restored")
        _, err = self.cli("snapshot", "restore", cut, "--data", target, code=2)
        self.assertIn("no end line", err)
        os.makedirs(target)
        with open(os.path.join(target, "something"), "w"):
            pass
        _, err = self.cli("snapshot", "restore", path, "--data", target, code=2)
        self.assertIn("not empty", err)
        self.assertEqual(sorted(os.listdir(self.dir)), ["cut.jsonl", "restored", "snap.jsonl"])
        self.assertEqual(os.listdir(target), ["something"])
        self.cli("snapshot", "restore", path, code=2)
