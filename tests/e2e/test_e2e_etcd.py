"""
Two real C{twistd kvcache --store etcd://...} nodes on one real etcd
(docs/scale-out.md): a write through one node is served by the other, at
once with C{?consistent=1} and from its cache once its watch delivers it;
revisions and ETags come from etcd.
"""

import http.client
import json
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.e2e import http_request, start_server
from tests.helpers.etcd import EtcdCluster, etcd_available
from tests.unit.test_ops import parse_exposition

AVAILABLE, WHY = etcd_available()


class TwoNodesTests(SynchronousTestCase):
    """kvcache nodes as stateless front-ends of one etcd."""

    if not AVAILABLE:
        skip = WHY

    def setUp(self):
        self.etcd = EtcdCluster(1).start()
        self.addCleanup(self.etcd.stop)
        store = "etcd://" + ",".join(url.split("//", 1)[1] for url in self.etcd.client_urls)
        self.nodes = [
            start_server(self, extra_args=["--store", store, "--etcd-prefix", "/e2e/"])
            for _ in range(2)
        ]

    def test_write_on_one_node_read_on_the_other(self):
        """A PUT through node A is read through node B, consistent at once, cached soon."""
        a, b = (node.url for node in self.nodes)
        status, headers, _ = http_request(a, "PUT", "/v1/kv/shared/x", b"1")
        self.assertEqual(status, 201)
        etag = headers["etag"]
        status, headers, body = http_request(b, "GET", "/v1/kv/shared/x?consistent=1")
        self.assertEqual((status, body, headers["etag"]), (200, b"1", etag))
        # Overwrite through A; B's cache must follow through its etcd watch.
        http_request(a, "PUT", "/v1/kv/shared/x", b"2")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            status, _, body = http_request(b, "GET", "/v1/kv/shared/x")
            if body == b"2":
                break
            time.sleep(0.02)
        self.assertEqual(body, b"2")

    def test_branching_batch_across_nodes(self):
        """
        A branching batch on etcd: its compares see another node's write,
        the chosen branch applies in one etcd transaction (one revision),
        and a batch of compares and gets commits nothing.
        """
        a, b = (node.url for node in self.nodes)
        self.assertEqual(http_request(a, "PUT", "/v1/kv/mode", b'"blue"', {"Content-Type": "application/json"})[0], 201)
        body = json.dumps({
            "compare": [{"key": "mode", "value": "blue"}, {"key": "lock", "absent": True}],
            "success": [{"op": "set", "key": "mode", "value": "green"}, {"op": "set", "key": "by", "value": "b"}],
            "failure": [{"op": "get", "key": "mode"}],
        }).encode()
        status, _, answer = http_request(b, "POST", "/v1/batch", body)
        first = json.loads(answer)
        self.assertEqual((status, first["succeeded"]), (200, True))
        by = json.loads(http_request(a, "GET", "/v1/kv/?prefix=by")[2])
        self.assertEqual([item["mod_revision"] for item in by["items"]], [first["revision"]])
        status, _, answer = http_request(a, "POST", "/v1/batch", body)
        second = json.loads(answer)
        self.assertEqual((second["succeeded"], second["revision"]), (False, first["revision"]))
        self.assertEqual(second["results"][0]["value"], "green")

    def test_seed_api_and_conflicts_across_nodes(self):
        """Seed commits land in etcd; a CAS through one node sees the other's write."""
        a, b = (node.url for node in self.nodes)
        self.assertEqual(http_request(a, "POST", "/set", b'{"k": 1}')[0], 201)
        self.assertEqual(http_request(a, "POST", "/commit")[0], 204)
        self.assertEqual(http_request(b, "GET", "/v1/kv/k?consistent=1")[2], b"1")
        etag = http_request(b, "GET", "/v1/kv/k?consistent=1")[1]["etag"]
        self.assertEqual(http_request(b, "PUT", "/v1/kv/k", b"2", {"If-Match": etag})[0], 200)
        self.assertEqual(http_request(a, "PUT", "/v1/kv/k", b"3", {"If-Match": etag})[0], 412)

    def test_transaction_commits_are_timed(self):
        """
        Commits of transactions kept in etcd (the seed queue, a v1
        transaction, a conflicted one) are counted and timed in /v1/metrics
        as a PUT's commit is.
        """
        a, b = (node.url for node in self.nodes)
        self.assertEqual(http_request(a, "POST", "/set", b'{"timed": 1}')[0], 201)
        self.assertEqual(http_request(a, "POST", "/commit")[0], 204)
        status, _, body = http_request(a, "POST", "/v1/txn")
        self.assertEqual(status, 201)
        txn = json.loads(body)["id"]
        self.assertEqual(http_request(a, "GET", "/v1/txn/%s/kv/timed" % txn)[0], 200)
        self.assertEqual(http_request(a, "PUT", "/v1/txn/%s/kv/timed" % txn, b"3")[0], 200)
        self.assertEqual(http_request(b, "PUT", "/v1/kv/timed", b"2")[0], 200)
        self.assertEqual(http_request(a, "POST", "/v1/txn/%s/commit" % txn)[0], 409)
        samples = parse_exposition(http_request(a, "GET", "/v1/metrics")[2].decode())
        self.assertEqual(samples[("kvtwist_commit_duration_seconds_count", ())], 1)
        self.assertEqual(samples[("kvtwist_commits_total", (("outcome", "ok"),))], 1)
        self.assertEqual(samples[("kvtwist_commits_total", (("outcome", "conflict"),))], 1)

    def test_ui_is_served(self):
        """The admin page is mounted by twistd kvcache (--ui on by default)."""
        status, headers, body = http_request(self.nodes[0].url, "GET", "/ui/")
        self.assertEqual(status, 200)
        self.assertIn("text/html", headers["content-type"])


    def test_history_across_nodes(self):
        """
        Writes through node A are read at their revisions through node B,
        B's watch resumes from etcd's history with previous values, and a
        compaction through B makes older reads 410 compacted on A.
        """
        a, b = (node.url for node in self.nodes)
        first = int(http_request(a, "PUT", "/v1/kv/h/x", b"1")[1]["kv-revision"])
        second = int(http_request(a, "PUT", "/v1/kv/h/x", b"2")[1]["kv-revision"])
        status, _, body = http_request(b, "GET", "/v1/kv/h/x?revision=%d" % (first,))
        self.assertEqual((status, body), (200, b"1"))
        status, _, body = http_request(b, "GET", "/v1/kv/?prefix=h/&revision=%d" % (first,))
        self.assertEqual((status, json.loads(body)["revision"]), (200, first))
        self.assertIn(
            ("put", "Mg==", "MQ=="),
            [(e["kind"], e["value_base64"], e["prev"]["value_base64"])
             for e in watch_events(b, "/v1/watch?prefix=h/&values=1&prev=1&after=%d" % (first,), second)],
        )
        status, _, _ = http_request(b, "POST", "/v1/compact", json.dumps({"revision": second}).encode())
        self.assertEqual(status, 200)
        status, _, body = http_request(a, "GET", "/v1/kv/h/x?revision=%d" % (first,))
        self.assertEqual((status, json.loads(body)["compact_revision"]), (410, second))


def watch_events(base_url: str, path: str, upto: int) -> list:
    """The data of a watch's events up to revision C{upto} (bounded: 5 s)."""
    host, port = base_url.split("//", 1)[1].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        events = []
        kind, revision = None, 0
        while True:
            line = response.fp.readline().decode("utf-8").rstrip("\n")
            if line.startswith("id: "):
                revision = int(line[len("id: "):])
            elif line.startswith("event: "):
                kind = line[len("event: "):]
            elif line.startswith("data: ") and kind != "progress":
                events.append(dict(json.loads(line[len("data: "):]), kind=kind))
            elif not line and revision >= upto:
                return events
    finally:
        connection.close()


class EtcdLimitsTests(SynchronousTestCase):
    """etcd's request limits, as a node is told them, are reported and enforced as 413s."""

    if not AVAILABLE:
        skip = WHY

    def setUp(self):
        self.etcd = EtcdCluster(1).start()
        self.addCleanup(self.etcd.stop)
        store = "etcd://" + self.etcd.client_urls[0].split("//", 1)[1]
        self.node = start_server(
            self, extra_args=["--store", store, "--etcd-prefix", "/limits/", "--etcd-max-txn-ops", "4"]
        )

    def test_reported_and_enforced(self):
        """/v1/limits shows etcd_max_txn_ops; a batch or transaction touching more keys is a 413 that applies nothing."""
        url = self.node.url
        status, _, body = http_request(url, "GET", "/v1/limits")
        limits = json.loads(body)
        self.assertEqual((status, limits["etcd_max_txn_ops"]), (200, 4))
        self.assertEqual(limits["etcd_max_request_bytes"], 1536 * 1024)
        ops = [{"op": "set", "key": "k%d" % n, "value": n} for n in range(5)]
        status, _, body = http_request(url, "POST", "/v1/batch", json.dumps({"ops": ops}).encode(),
                                       {"Content-Type": "application/json"})
        problem = json.loads(body)
        self.assertEqual((status, problem["limit_name"], problem["limit"]), (413, "etcd max-txn-ops", 4))
        self.assertIn("--max-txn-ops", problem["detail"])
        self.assertEqual(http_request(url, "GET", "/v1/kv/k0?consistent=1")[0], 404)
        txn = "/v1/txn/" + json.loads(http_request(url, "POST", "/v1/txn")[2])["id"]
        self.assertEqual(http_request(url, "POST", txn + "/set", json.dumps({"k%d" % n: n for n in range(5)}).encode())[0], 201)
        status, _, body = http_request(url, "POST", txn + "/commit")
        self.assertEqual((status, json.loads(body)["limit_name"]), (413, "etcd max-txn-ops"))
        self.assertEqual(http_request(url, "GET", "/v1/kv/k0?consistent=1")[0], 404)
        # Not a conflict: the transaction stays open to be cut down.
        self.assertEqual(http_request(url, "GET", txn)[0], 200)
