"""
End to end with C{twistd -n kvcache --workers 2}: read-your-writes across
workers, metrics and readiness of every process, and the lifecycle (a
killed worker is restarted, workers end with their owner, SIGTERM stops
all), and history and leases forwarded to the owner (reads at a
revision, watch resumes, leases used across workers). The API suites also
run with workers (the C{OnWorkers} classes of
tests/e2e/test_e2e_*.py).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from typing import List, Tuple

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.test_tls import _UnixHTTPConnection
from tests.helpers.e2e import (
    child_pids,
    free_port,
    connect,
    http_request,
    run_twistd,
    start_server,
    temp_dir,
    wait_ready,
)

WORKERS = ["--workers", "2"]
#: Seconds a lifecycle change (a restart, an exit) may take.
SETTLE = 10.0


def gone(pids, timeout: float = SETTLE) -> bool:
    """Whether every process of C{pids} has exited within C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        if not any(os.path.exists("/proc/%d" % (pid,)) for pid in pids):
            return True
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return False


def serving_workers(pid: int, count: int, timeout: float = SETTLE):
    """The C{count} worker ids of owner C{pid}, once there are that many."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        pids = child_pids(pid)
        if len(pids) == count or time.monotonic() > deadline:
            return pids
        time.sleep(0.05)
    return child_pids(pid)


def watch_events(base_url: str, after: int, count: int) -> List[Tuple[int, str, dict]]:
    """
    The first C{count} events (id, kind, data) but progress events of a
    watch of C{h/} with C{?prev=1} resumed with C{Last-Event-ID: after},
    on a connection of its own.
    """
    connection = connect(base_url, timeout=SETTLE)
    try:
        connection.request("GET", "/v1/watch?prefix=h/&prev=1", headers={"Last-Event-ID": str(after)})
        response = connection.getresponse()
        assert response.status == 200, response.status
        events: List[Tuple[int, str, dict]] = []
        fields = {}
        for _ in range(100 * count):
            line = response.fp.readline()
            if not line:
                break
            name, _, value = line.decode().rstrip("\n").partition(": ")
            if name:
                fields[name] = value
                continue
            if fields.get("event") not in (None, "progress"):
                events.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
                if len(events) == count:
                    break
            fields = {}
        return events
    finally:
        connection.close()


def served_by(base_url: str, method: str):
    """The workers whose metrics count requests of C{method}."""
    _, _, metrics = http_request(base_url, "GET", "/v1/metrics")
    return {
        line.split('worker="')[1].split('"')[0]
        for line in metrics.decode().splitlines()
        if line.startswith("kvtwist_http_requests_total") and 'method="%s"' % (method,) in line
    }


class ReadYourWritesTests(SynchronousTestCase):
    """A write acknowledged by one worker is seen by every other at once."""

    def test_put_then_get_on_new_connections(self):
        """
        1,000 PUT-then-GET pairs, each request on a connection of its own
        (so the kernel spreads them over both workers): every GET returns
        the value its PUT just wrote, and both workers answered requests.
        """
        server = start_server(self, extra_args=WORKERS)
        stale = []
        for i in range(1000):
            key = "/v1/kv/ryw/%d" % (i % 50)
            value = b"%d" % (i,)
            status, _, _ = http_request(server.url, "PUT", key, value)
            self.assertIn(status, (200, 201))
            status, _, body = http_request(server.url, "GET", key)
            if (status, body) != (200, value):
                stale.append((i, status, body))
        self.assertEqual(stale, [])
        self.assertEqual(served_by(server.url, "PUT"), {"0", "1"})


class ProcessTests(SynchronousTestCase):
    """Metrics, readiness and the lifecycle of the owner and its workers."""

    def test_metrics_of_every_process(self):
        """/v1/metrics on any worker holds the owner's and each worker's samples, labelled."""
        server = start_server(self, extra_args=WORKERS)
        status, _, body = http_request(server.url, "GET", "/v1/metrics")
        self.assertEqual(status, 200)
        text = body.decode()
        for process in ("owner", "0", "1"):
            self.assertIn('process_resident_memory_bytes{worker="%s"}' % (process,), text)
        self.assertIn('kvtwist_store_revision{worker="owner"}', text)

    def test_ops_listener_served_by_the_owner(self):
        """
        --ops-listen is the owner's: /readyz there is ready once every
        worker serves, and /metrics holds every process's samples.
        """
        ops_port = free_port()
        server = start_server(self, extra_args=WORKERS + ["--ops-listen", "tcp:%d:interface=127.0.0.1" % ops_port])
        ops = "http://127.0.0.1:%d" % (ops_port,)
        wait_ready(server.url, SETTLE)
        status, _, body = http_request(ops, "GET", "/readyz")
        self.assertEqual(status, 200, body)
        _, _, body = http_request(ops, "GET", "/metrics")
        for process in ("owner", "0", "1"):
            self.assertIn('process_resident_memory_bytes{worker="%s"}' % (process,), body.decode())

    def test_killed_worker_is_restarted(self):
        """
        A worker killed with -9 is replaced by a new process; the server is
        ready again and keeps what was written before.
        """
        server = start_server(self, extra_args=WORKERS)
        self.assertEqual(http_request(server.url, "PUT", "/v1/kv/kept", b"yes")[0], 201)
        workers = serving_workers(server.process.pid, 2)
        self.assertEqual(len(workers), 2)
        os.kill(workers[0], signal.SIGKILL)
        self.assertTrue(gone([workers[0]]))
        replaced = serving_workers(server.process.pid, 2)
        self.assertEqual(len(replaced), 2)
        self.assertNotIn(workers[0], replaced)
        wait_ready(server.url, SETTLE)
        for _ in range(10):
            self.assertEqual(http_request(server.url, "GET", "/v1/kv/kept")[2], b"yes")

    def test_stopped_worker_leaves_its_socket_serving(self):
        """
        A worker that stops on its own (SIGTERM) is restarted on the same
        listening socket, still open: afterwards both workers answer.
        """
        server = start_server(self, extra_args=WORKERS)
        workers = serving_workers(server.process.pid, 2)
        os.kill(workers[1], signal.SIGTERM)
        self.assertTrue(gone([workers[1]]))
        self.assertEqual(len(serving_workers(server.process.pid, 2)), 2)
        wait_ready(server.url, SETTLE)
        for _ in range(40):
            self.assertEqual(http_request(server.url, "GET", "/v1/kv/absent")[0], 404)
        self.assertEqual(served_by(server.url, "GET"), {"0", "1"})

    def test_hung_worker_replaced(self):
        """
        A worker that stops answering (SIGSTOP) holds a commit only until
        the feed's timeout: the commit is answered through the other worker,
        and the hung one is killed and replaced.
        """
        server = start_server(self, extra_args=WORKERS)
        workers = serving_workers(server.process.pid, 2)
        os.kill(workers[0], signal.SIGSTOP)
        self.addCleanup(lambda: gone([workers[0]], 0) or os.kill(workers[0], signal.SIGKILL))
        # A PUT that reaches the live worker commits, and waits for the
        # hung one's feed; one on the hung worker's socket never answers.
        # Either way the client gives up soon: the commit goes on.
        deadline = time.monotonic() + 3 * SETTLE
        for _ in range(30):
            if gone([workers[0]], 0) or time.monotonic() > deadline:
                break
            try:
                http_request(server.url, "PUT", "/v1/kv/h", b"1", timeout=1.5)
            except OSError:
                pass
        self.assertTrue(gone([workers[0]]), "the hung worker was not killed")
        self.assertEqual(len(serving_workers(server.process.pid, 2)), 2)
        wait_ready(server.url, SETTLE)
        self.assertEqual(http_request(server.url, "GET", "/v1/kv/h")[:3:2], (200, b"1"))

    def test_workers_exit_with_their_owner(self):
        """When the owner is killed with -9, every worker exits by itself."""
        server = start_server(self, extra_args=WORKERS)
        workers = serving_workers(server.process.pid, 2)
        server.kill()
        self.assertTrue(gone(workers), "workers outlived their owner")

    def test_sigterm_stops_everything(self):
        """SIGTERM to the owner stops the workers and the owner, with status 0."""
        server = start_server(self, extra_args=WORKERS)
        workers = serving_workers(server.process.pid, 2)
        self.assertEqual(server.terminate(), 0)
        self.assertTrue(gone(workers))

    def test_tls_endpoint_refused(self):
        """An ssl: endpoint with --workers 2 ends startup with a message naming it."""
        data = os.path.join(temp_dir(self), "data")
        result = run_twistd(
            ["-n", "--pidfile=", "kvcache", "--data", data, "--workers", "2",
             "--allow-open", "--listen", "ssl:0:privateKey=k.pem:certKey=c.pem"]
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("cannot be shared by workers", result.stdout + result.stderr)

    def test_unix_socket_shared(self):
        """
        A unix: endpoint (next to a TCP one) is served by the workers with
        the mode asked for; a worker that stops leaves the socket and its
        file to the others, and the owner removes the file at a graceful
        stop.
        """
        path = os.path.join(temp_dir(self, "unix"), "kv.sock")
        server = start_server(
            self,
            extra_args=WORKERS + ["--listen", "tcp:{port}:interface=127.0.0.1", "--listen", "unix:%s:mode=600" % (path,)],
        )
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        workers = serving_workers(server.process.pid, 2)
        os.kill(workers[0], signal.SIGTERM)
        self.assertTrue(gone([workers[0]]))
        self.assertTrue(os.path.exists(path))
        connection = _UnixHTTPConnection(path)
        self.addCleanup(connection.close)
        connection.request("PUT", "/v1/kv/u", body=b"over unix")
        self.assertEqual(connection.getresponse().status, 201)
        self.assertEqual(server.terminate(), 0)
        self.assertFalse(os.path.exists(path))


class ForwardedTests(SynchronousTestCase):
    """History and leases behave through either worker as in one process."""

    def test_history_through_any_worker(self):
        """
        A read at a revision, a watch resumed with Last-Event-ID (with the
        previous entries of ?prev=1) and a snapshot answer the same on every
        connection (both workers serve them), also after the whole server
        restarted on its data: the history is the owner's.
        """
        server = start_server(self, extra_args=WORKERS)
        revisions = [
            json.loads(http_request(server.url, "PUT", "/v1/kv/h/k", b"%d" % (n,))[2])["revision"]
            for n in range(3)
        ]
        for restarted in (False, True):
            for _ in range(12):
                status, _, body = http_request(server.url, "GET", "/v1/kv/h/k?revision=%d" % (revisions[0],))
                self.assertEqual((status, body), (200, b"0"))
                events = watch_events(server.url, revisions[0], 2)
                self.assertEqual([(revision, kind) for revision, kind, _ in events], [(r, "put") for r in revisions[1:]])
                self.assertEqual([data["prev"]["version"] for _, _, data in events], [1, 2])
            status, _, body = http_request(server.url, "GET", "/v1/snapshot?prefix=h/")
            self.assertEqual(status, 200)
            self.assertEqual(json.loads(body.splitlines()[0])["revision"], revisions[-1])
            if not restarted:
                self.assertEqual(served_by(server.url, "GET"), {"0", "1"})
                self.assertEqual(server.terminate(), 0)
                server.start()

    def test_lease_across_workers(self):
        """
        A lease granted on one connection is attached, renewed (no new
        revision), shown and revoked on others, whichever worker each
        reaches; its key goes with the revoke.
        """
        server = start_server(self, extra_args=WORKERS)
        status, _, body = http_request(server.url, "POST", "/v1/lease", b'{"ttl": 30}')
        self.assertEqual(status, 201, body)
        lease = json.loads(body)["id"]
        self.assertEqual(http_request(server.url, "PUT", "/v1/kv/l/a?lease=%d" % (lease,), b"1")[0], 201)
        # Sixteen rounds: both workers answer some (all on one: 2**-15).
        for _ in range(16):
            status, headers, body = http_request(server.url, "POST", "/v1/lease/%d/keepalive" % (lease,))
            self.assertEqual(status, 200, body)
            self.assertEqual(headers["kv-revision"], "1")
            status, _, body = http_request(server.url, "GET", "/v1/lease/%d" % (lease,))
            self.assertEqual((status, json.loads(body)["keys"]), (200, ["l/a"]))
        self.assertEqual(served_by(server.url, "POST"), {"0", "1"})
        self.assertEqual(http_request(server.url, "DELETE", "/v1/lease/%d" % (lease,))[0], 204)
        for _ in range(6):
            self.assertEqual(http_request(server.url, "GET", "/v1/kv/l/a")[0], 404)
            self.assertEqual(http_request(server.url, "GET", "/v1/lease/%d" % (lease,))[0], 404)
