# -*- test-case-name: tests.e2e.test_e2e_coordination -*-
"""
Leases, locks and elections end to end: a real C{twistd -n kvcache} and
real client processes, some of them killed with -9.

- Lock safety: 5 workers (L{tests.helpers.lock_worker}) contend for 200
  acquisitions while the test kills the holder with -9 every 20; every
  hold is logged with its fencing revision and CLOCK_MONOTONIC times, and
  no two holds may overlap, fencing revisions must grow with time, and
  each lock held by a killed holder must be taken over within ttl + 1 s.
- Election: 3 C{kvtwist elect} processes; killing the leader elects
  another within ttl + 1 s; a leader that resigns (SIGTERM) hands over at
  once.
- C{kvtwist lock NAME -- CMD}: CMD's exit code, the lock released after
  it, and CMD stopped when the lease is lost.
- A keepalive costs no revision and no event, seen from outside.

Loops are bounded in count and time; leases live 1 s (3 s for the
election's candidates), so the whole module takes well under a minute.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

from twisted.trial.unittest import TestCase

from benchmarks.stats import percentile
from tests.helpers.e2e import http_request, temp_dir
from tests.helpers.e2e_stores import OnEtcd, OnShelve
from tests.helpers.cli import PROJECT

#: Every lease in these tests lives this long (seconds).
TTL = 1.0
#: The candidates' leases: long enough that a handover well within it can
#: only be the resignation's doing, even on a loaded machine.
ELECTION_TTL = 3.0
#: The server runs with its defaults (a 1 s sweep interval): the sweeper
#: wakes at the soonest lease deadline by itself.
SERVER_ARGS: List[str] = []
ACQUISITIONS = 200
WORKERS = 5
KILL_EVERY = 20
#: Where the measured figures are written, for the record.
FIGURES_ENV = "KVTWIST_COORDINATION_FIGURES"


def _spawn(argv: List[str], stdout=subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *argv], cwd=PROJECT, stdout=stdout, stderr=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONPATH=PROJECT),
    )


def _kvtwist(url: str, *argv: str, stdout=subprocess.DEVNULL) -> subprocess.Popen:
    return _spawn(["-c", "from kvtwist.cli import run; run()", "--url", url, *argv], stdout)


def _kill(process: subprocess.Popen) -> float:
    """Kill C{process} with -9; the CLOCK_MONOTONIC moment it was dead."""
    process.kill()
    process.wait(10)
    return time.monotonic()


def _record(name: str, figures: dict) -> None:
    path = os.environ.get(FIGURES_ENV)
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"test": name, **figures}) + "\n")


class LockSafety:
    """Five contenders, holders killed with -9: one holder at a time, prompt takeover."""

    #: The workers' lease ttl.
    ttl = TTL

    def read_holds(self, paths: List[str]) -> List[Tuple[str, int, float, int]]:
        lines = []
        for path in paths:
            with open(path) as log:
                for line in log:
                    kind, fencing, moment, pid = line.split()
                    lines.append((kind, int(fencing), float(moment), int(pid)))
        return lines

    def test_no_overlap_and_takeover_within_ttl(self) -> None:
        """
        200 acquisitions by 5 processes, the holder killed with -9 every 20:
        no two holds overlap, fencing revisions grow with time, every killed
        holder's lock is taken over within ttl + 1 s.
        """
        server = self.start_kvcache(SERVER_ARGS)
        logs = temp_dir(self, "locklogs")
        paths = [os.path.join(logs, "worker-%d.log" % i) for i in range(WORKERS)]
        for path in paths:
            open(path, "w").close()

        def worker(i: int) -> subprocess.Popen:
            return _spawn(["-m", "tests.helpers.lock_worker", server.url, "jobs/safety", paths[i], str(self.ttl)])

        workers = [worker(i) for i in range(WORKERS)]
        self.addCleanup(lambda: [w.kill() for w in workers])
        killed: Dict[int, float] = {}
        holder_kills: List[Tuple[int, float]] = []
        kills = 0
        next_kill = KILL_EVERY
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            time.sleep(0.02)
            lines = self.read_holds(paths)
            started = sum(1 for line in lines if line[0] == "S")
            if started >= ACQUISITIONS:
                break
            if started < next_kill:
                continue
            last: Dict[int, Tuple[str, int]] = {}
            for index, path in enumerate(paths):
                for kind, _, _, pid in self.read_holds([path]):
                    last[index] = (kind, pid)
            holding = [i for i, (kind, pid) in last.items()
                       if kind == "S" and pid == workers[i].pid]
            if not holding:
                continue
            victim = holding[0]
            pid = workers[victim].pid
            moment = _kill(workers[victim])
            killed[pid] = moment
            kills += 1
            tail = [line for line in self.read_holds([paths[victim]]) if line[3] == pid]
            if tail and tail[-1][0] == "S":
                holder_kills.append((pid, moment))
            workers[victim] = worker(victim)
            next_kill += KILL_EVERY
        stopped = {w.pid: _kill(w) for w in workers}
        lines = self.read_holds(paths)

        # Each hold: from its S line to its E line, or to the moment its
        # process was dead.
        holds = []
        ends = {(fencing, pid): moment for kind, fencing, moment, pid in lines if kind == "E"}
        unexplained = 0
        for kind, fencing, moment, pid in lines:
            if kind != "S":
                continue
            end = ends.get((fencing, pid))
            if end is None:
                end = killed.get(pid, stopped.get(pid))
                if end is None:
                    unexplained += 1
                    continue
            holds.append((moment, end, fencing, pid))
        holds.sort()
        overlaps = sum(
            1 for before, after in zip(holds, holds[1:]) if after[0] < before[1]
        )
        fencing_order = [fencing for _, _, fencing, _ in holds]
        takeovers = []
        for pid, moment in holder_kills:
            following = [start for start, _, _, other in holds if start > moment and other != pid]
            self.assertTrue(following, "nobody took the lock over after a killed holder")
            takeovers.append(min(following) - moment)
        figures = {
            "acquisitions": len(holds), "kills": kills, "holder_kills": len(holder_kills),
            "overlaps": overlaps, "unexplained": unexplained,
            "takeover_p50": round(percentile(takeovers, 0.5), 3) if takeovers else None,
            "takeover_p99": round(percentile(takeovers, 0.99), 3) if takeovers else None,
            "takeover_max": round(max(takeovers), 3) if takeovers else None,
        }
        _record("lock-safety", figures)
        print("lock safety:", figures)
        self.assertGreaterEqual(len(holds), ACQUISITIONS, figures)
        self.assertGreaterEqual(len(holder_kills), 3, figures)
        self.assertEqual((overlaps, unexplained), (0, 0), figures)
        self.assertEqual(fencing_order, sorted(set(fencing_order)), figures)
        self.assertLessEqual(max(takeovers), self.ttl + 1, figures)


class LockSafetyTests(OnShelve, LockSafety, TestCase):
    """Lock safety on the embedded store."""


class LockSafetyTestsOnEtcd(OnEtcd, LockSafety, TestCase):
    """
    Lock safety on etcd leases: etcd's shortest lease is 2 s (1.5 x its
    election timeout, rounded up), and etcd expires them itself.
    """

    ttl = 2.0


class Election:
    """Three kvtwist elect processes."""

    def leaders(self, paths: List[str]) -> List[int]:
        found = []
        for index, path in enumerate(paths):
            with open(path) as out:
                if "leading" in out.read():
                    found.append(index)
        return found

    def wait_for_leader(self, paths: List[str], excluded: List[int], limit: float) -> Tuple[int, float]:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            fresh = [i for i in self.leaders(paths) if i not in excluded]
            if fresh:
                self.assertEqual(len(fresh), 1, "two leaders at once")
                return fresh[0], time.monotonic()
            time.sleep(0.02)
        self.fail("no new leader within %s s" % (limit,))

    def test_failover_and_resign(self) -> None:
        """Killing the leader elects another within ttl + 1 s; a resigning leader hands over at once."""
        server = self.start_kvcache(SERVER_ARGS)
        out_dir = temp_dir(self, "elect")
        paths = [os.path.join(out_dir, "candidate-%d.out" % i) for i in range(3)]
        candidates = []
        for i, path in enumerate(paths):
            with open(path, "w") as out:
                candidates.append(_kvtwist(
                    server.url, "-o", "text", "elect", "svc/leader", "node-%d" % i,
                    "--ttl", str(ELECTION_TTL), stdout=out,
                ))
        self.addCleanup(lambda: [c.kill() for c in candidates])
        first, _ = self.wait_for_leader(paths, [], 20)
        killed_at = _kill(candidates[first])
        second, elected_at = self.wait_for_leader(paths, [first], ELECTION_TTL + 5)
        failover = elected_at - killed_at
        candidates[second].send_signal(signal.SIGTERM)
        resigned_at = time.monotonic()
        third, handed_at = self.wait_for_leader(paths, [first, second], ELECTION_TTL + 5)
        handover = handed_at - resigned_at
        # A signal is how a candidate ends: it resigned and exits 0.
        self.assertEqual(candidates[second].wait(10), 0)
        leader = json.loads(http_request(server.url, "GET", "/v1/kv/?prefix=svc/leader/&values=1")[2])
        _record("election", {"failover": round(failover, 3), "handover": round(handover, 3)})
        print("election: failover %.3f s, resign handover %.3f s" % (failover, handover))
        self.assertEqual(len(leader["items"]), 1)
        self.assertLessEqual(failover, ELECTION_TTL + 1)
        # At once: well before the resigned leader's lease could have expired.
        self.assertLess(handover, ELECTION_TTL / 2)
        self.assertEqual(sorted({first, second, third}), [0, 1, 2])


class ElectionTests(OnShelve, Election, TestCase):
    """The election on the embedded store."""


class ElectionTestsOnEtcd(OnEtcd, Election, TestCase):
    """The election on etcd leases."""


class LockCommandTests(OnShelve, TestCase):
    """kvtwist lock NAME -- CMD against a real server."""

    def test_exit_code_and_release(self) -> None:
        """CMD runs holding the lock, sees its fencing revision, and its exit code is kvtwist's; the lock is free after."""
        server = self.start_kvcache(SERVER_ARGS)
        result = subprocess.run(
            [sys.executable, "-c", "from kvtwist.cli import run; run()", "--url", server.url,
             "lock", "jobs/cmd", "--ttl", "2", "--",
             "sh", "-c", 'echo "$KVTWIST_FENCING_REVISION $KVTWIST_LOCK_KEY"; exit 3'],
            cwd=PROJECT, capture_output=True, text=True, timeout=30,
        )
        self.assertEqual(result.returncode, 3, result.stderr)
        fencing, key = result.stdout.split()
        self.assertTrue(fencing.isdigit() and key.startswith("jobs/cmd/"))
        listing = json.loads(http_request(server.url, "GET", "/v1/kv/?prefix=jobs/cmd/")[2])
        self.assertEqual(listing["items"], [])

    def test_lost_lease_stops_the_command(self) -> None:
        """When the server goes away for longer than the ttl, CMD gets SIGTERM and kvtwist exits with its code."""
        server = self.start_kvcache(SERVER_ARGS)
        out_dir = temp_dir(self, "lockcmd")
        marker = os.path.join(out_dir, "started")
        process = _kvtwist(
            server.url, "lock", "jobs/lost", "--ttl", str(TTL), "--grace", "1", "--",
            "sh", "-c", 'touch "$0"; exec sleep 30', marker,
        )
        self.addCleanup(process.kill)
        deadline = time.monotonic() + 20
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertTrue(os.path.exists(marker))
        server.kill()
        self.assertEqual(process.wait(TTL + 10), 128 + signal.SIGTERM)


class Keepalive:
    """A keepalive seen from outside."""

    def test_keepalive_costs_no_revision(self) -> None:
        """On the real server a keepalive leaves KV-Revision unchanged and the key's version as it was."""
        server = self.start_kvcache(SERVER_ARGS)
        status, _, body = http_request(
            server.url, "POST", "/v1/lease", b'{"ttl": 30}', {"Content-Type": "application/json"}
        )
        lease = json.loads(body)["id"]
        http_request(server.url, "PUT", "/v1/kv/svc/a?lease=%d" % lease, b"up")
        status, headers, _ = http_request(server.url, "GET", "/v1/kv/svc/a")
        before = dict(headers)
        for _ in range(5):
            status, after_headers, body = http_request(
                server.url, "POST", "/v1/lease/%d/keepalive" % lease
            )
            self.assertEqual(status, 200)
        after = dict(http_request(server.url, "GET", "/v1/kv/svc/a")[1])
        seen = [(h["kv-revision"], h["etag"], h["kv-version"]) for h in (before, after)]
        self.assertEqual(seen[0], seen[1])
        if self.exact_revisions:
            self.assertEqual(seen[0], ("1", '"1"', "1"))


class KeepaliveTests(OnShelve, Keepalive, TestCase):
    """A keepalive on the embedded store."""


class KeepaliveTestsOnEtcd(OnEtcd, Keepalive, TestCase):
    """A keepalive on etcd: etcd's keepalive, no revision either."""
