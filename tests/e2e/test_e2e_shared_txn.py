"""
Transactions and the seed's queue shared by real kvcache nodes through etcd
(docs/scale-out.md): a three-member etcd and two C{twistd kvcache --store
etcd://...} nodes. A transaction begun on node A is staged and committed on
node B; C{POST /set} on both nodes is committed by C{POST /commit} on one;
a conflict made through one node is seen by a commit on the other; a node
killed with C{kill -9} loses nothing staged, since the state is in etcd.
And the failures of etcd members as clients see them: one member of three
killed changes nothing, two make writes 503 and C{/v1/readyz} fail, restarting
them restores both, and no acknowledged write is lost.

Skipped, with the reason, when etcd is not installed. The spanning tests
also run against one server with C{--workers 2}, whose workers share the
owner's transactions and queue.
"""

import json
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.e2e import http_request, start_server
from tests.helpers.etcd import EtcdCluster, etcd_available

AVAILABLE, WHY = etcd_available()


class SpanningTests:
    """
    Transactions and the queue used through two ends C{self.a} and
    C{self.b} of one service: two nodes on etcd, or one server's workers.
    """

    def call(self, base, method, path, body=None, headers=None):
        status, _, data = http_request(base, method, path, body, headers)
        return status, (json.loads(data) if data.startswith(b"{") else data)

    def test_transaction_spans_nodes(self):
        """Begun on A, staged on A and B, read through A, committed on B: all of it lands, once."""
        status, begun = self.call(self.a, "POST", "/v1/txn")
        self.assertEqual(status, 201)
        txn = "/v1/txn/" + begun["id"]
        self.assertEqual(self.call(self.a, "PUT", txn + "/kv/x", b"1")[0], 200)
        self.assertEqual(self.call(self.b, "PUT", txn + "/kv/y", b"2")[0], 200)
        self.assertEqual(self.call(self.b, "POST", txn + "/set", b'{"z": 3}')[0], 201)
        # Read-your-writes through the other node, and nothing outside yet.
        self.assertEqual(self.call(self.a, "GET", txn + "/kv/y"), (200, b"2"))
        self.assertEqual(self.call(self.a, "GET", "/v1/kv/y?consistent=1")[0], 404)
        status, described = self.call(self.a, "GET", txn)
        self.assertEqual([op["key"] for op in described["ops"]], ["x", "y", "z"])
        status, committed = self.call(self.b, "POST", txn + "/commit")
        self.assertEqual((status, committed["ops"]), (200, 3))
        for node in (self.a, self.b):
            self.assertEqual(self.call(node, "GET", "/v1/kv/x?consistent=1"), (200, b"1"))
            self.assertEqual(self.call(node, "GET", "/z"), (200, b"3"))
            self.assertEqual(self.call(node, "GET", txn)[0], 404)

    def test_conflict_across_nodes(self):
        """A key read in a transaction through A and then written through B makes the commit on A a 409."""
        self.call(self.b, "PUT", "/v1/kv/c", b"old")
        txn = "/v1/txn/" + self.call(self.a, "POST", "/v1/txn")[1]["id"]
        self.assertEqual(self.call(self.a, "GET", txn + "/kv/c"), (200, b"old"))
        self.call(self.a, "PUT", txn + "/kv/c", b"mine")
        self.assertEqual(self.call(self.b, "PUT", "/v1/kv/c", b"theirs")[0], 200)
        status, problem = self.call(self.a, "POST", txn + "/commit")
        self.assertEqual(status, 409)
        self.assertEqual([c["key"] for c in problem["conflicts"]], ["c"])
        self.assertEqual(self.call(self.a, "GET", "/v1/kv/c?consistent=1"), (200, b"theirs"))
        # A conflict ends the transaction, on every node.
        self.assertEqual(self.call(self.b, "GET", txn)[0], 404)

    def test_seed_queue_spans_nodes(self):
        """POST /set on A and on B, POST /commit on B: both writes are committed; A's queue is empty after."""
        self.assertEqual(self.call(self.a, "POST", "/set", b'{"qa": 1}')[0], 201)
        self.assertEqual(self.call(self.b, "POST", "/set", b'{"qb": 2}')[0], 201)
        self.assertEqual(self.call(self.a, "GET", "/qa")[0], 404)
        self.assertEqual(self.call(self.b, "POST", "/commit")[0], 204)
        self.assertEqual(self.call(self.a, "GET", "/v1/kv/qa?consistent=1"), (200, b"1"))
        self.assertEqual(self.call(self.a, "GET", "/v1/kv/qb?consistent=1"), (200, b"2"))
        # The seed's DELETE of a key queued through the other node.
        self.assertEqual(self.call(self.a, "POST", "/set", b'{"qc": 3}')[0], 201)
        self.assertEqual(self.call(self.b, "DELETE", "/set", b'["qc"]')[0], 200)
        self.assertEqual(self.call(self.a, "POST", "/commit")[0], 204)
        self.assertEqual(self.call(self.b, "GET", "/v1/kv/qc?consistent=1")[0], 404)


class SharedTransactionNodesTests(SpanningTests, SynchronousTestCase):
    """Two kvcache nodes on a three-member etcd share transactions and the queue."""

    if not AVAILABLE:
        skip = WHY

    def setUp(self):
        self.etcd = EtcdCluster(3).start()
        self.addCleanup(self.etcd.stop)
        hosts = [url.split("//", 1)[1] for url in self.etcd.client_urls]
        self.nodes = []
        for n in range(2):
            # Each node prefers a different member, as docs/scale-out.md says.
            order = hosts[n:] + hosts[:n]
            self.nodes.append(
                start_server(
                    self,
                    extra_args=["--store", "etcd://" + ",".join(order), "--etcd-prefix", "/shared/"],
                )
            )
        self.a, self.b = (node.url for node in self.nodes)

    def test_node_killed_loses_nothing_staged(self):
        """A node killed with kill -9 mid-transaction: the other node finds what it staged and commits it."""
        txn = "/v1/txn/" + self.call(self.a, "POST", "/v1/txn")[1]["id"]
        self.call(self.a, "PUT", txn + "/kv/survivor", b"staged-on-a")
        self.call(self.a, "POST", "/set", b'{"queued": "on-a"}')
        self.nodes[0].kill()
        status, described = self.call(self.b, "GET", txn)
        self.assertEqual((status, [op["key"] for op in described["ops"]]), (200, ["survivor"]))
        self.assertEqual(self.call(self.b, "POST", txn + "/commit")[0], 200)
        self.assertEqual(self.call(self.b, "POST", "/commit")[0], 204)
        self.assertEqual(self.call(self.b, "GET", "/v1/kv/survivor"), (200, b"staged-on-a"))
        self.assertEqual(self.call(self.b, "GET", "/queued"), (200, b'"on-a"'))

    def put(self, node, key):
        """PUT C{key} = C{key} through C{node}; the status (0 if the node did not answer)."""
        try:
            return http_request(node, "PUT", "/v1/kv/" + key, key.encode(), timeout=15)[0]
        except OSError:
            return 0

    def until(self, condition, what, timeout=30.0):
        """Poll C{condition} (bounded) until it holds."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                self.fail("timed out waiting for " + what)
            time.sleep(0.2)

    def test_etcd_members_killed_and_restarted(self):
        """
        kill -9 of one etcd member of three: writes through both nodes go on.
        Of two: writes answer 503 problems and /v1/readyz fails, saying etcd has
        no leader. Restarting them restores writes and /v1/readyz by themselves.
        Throughout, every acknowledged write is there at the end and none
        refused is.
        """
        acked, refused = [], []

        def write(tag, count):
            for n in range(count):
                for name, node in (("a", self.a), ("b", self.b)):
                    key = "fail/%s/%s%d" % (tag, name, n)
                    status = self.put(node, key)
                    (acked if status in (200, 201) else refused).append((key, status))

        write("healthy", 5)
        self.etcd.kill(0)
        write("one-down", 5)
        self.assertEqual([s for _, s in refused], [], "writes failed with one member of three down")
        self.etcd.kill(1)
        status, _, body = http_request(self.b, "PUT", "/v1/kv/fail/no-quorum", b"x", timeout=15)
        problem = json.loads(body)
        self.assertEqual((status, problem["status"]), (503, 503))
        refused.append(("fail/no-quorum", status))
        for node in (self.a, self.b):
            status, _, body = http_request(node, "GET", "/v1/readyz", timeout=15)
            self.assertEqual(status, 503)
            self.assertIn("no leader", json.loads(body)["detail"])
        self.etcd.restart(0, wait=False)
        self.etcd.restart(1, wait=False)
        self.etcd.wait_healthy(timeout=30)
        for node in (self.a, self.b):
            self.until(lambda: http_request(node, "GET", "/v1/readyz", timeout=15)[0] == 200, "/v1/readyz back")
        write("restored", 3)
        self.assertEqual([k for k, s in refused if k != "fail/no-quorum"], [], "writes failed after restart")
        for key, _ in acked:
            self.assertEqual(
                http_request(self.a, "GET", "/v1/kv/%s?consistent=1" % key)[:3:2], (200, key.encode()), key
            )
        for key, _ in refused:
            self.assertEqual(http_request(self.b, "GET", "/v1/kv/%s?consistent=1" % key)[0], 404, key)


class SharedTransactionWorkersTests(SpanningTests, SynchronousTestCase):
    """
    One server with two workers: every request is a connection of its own,
    which the kernel gives to either worker, and the transactions and the
    queue are the owner's.
    """

    def setUp(self):
        self.a = self.b = start_server(self, extra_args=["--workers", "2"]).url
