"""
The crash loop for big transactions (docs/architecture.md, "Design
decisions"): the real kvcache is killed with C{kill -9} around the commit of
a 10,000-op transaction, and after every restart the 10,000 keys must show
one generation (the commit is all there or all absent) and every
acknowledged generation must be there.

Every cycle starts the server on the same data directory, checks what the
previous kill left, then opens a transaction, stages C{big/00000} ..
C{big/09999} all equal to the cycle's generation G with one C{/set}, and
commits it while the main thread C{kill -9}s the server at a random instant.
The instants are spread on purpose: some cycles kill before the commit is
sent (while the 10,000 pairs are staged or just after; the commit is held
back until then), most at a random point while the commit runs, and some
just after its answer; each kill is then classified by when it really
landed. A generation counts as acknowledged only when
the commit answered 200.

After a restart the keys must be all absent (nothing acknowledged yet) or
all present with one generation and one mod_revision; that generation may
not be below the highest acknowledged one (lost) nor above the highest ever
sent (phantom). A kill after the commit reached the disk but before its
answer may leave G applied but unacknowledged: allowed, and counted.

Blocking C{http.client} in one worker thread, no reactor. Run with
C{pytest -s} to see the figures; C{KVTWIST_TXN_CRASH_CYCLES} and
C{KVTWIST_TXN_CRASH_SEED} change the number of cycles and replay a seed.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import time
from typing import Dict, List, Optional

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.crash import Tally
from tests.helpers.e2e import ServerProcess, connect, http_request, temp_dir

#: Cycles of start, check, stage, commit, kill -9 (at least 10 asked for).
CYCLES = int(os.environ.get("KVTWIST_TXN_CRASH_CYCLES", "10"))
KEYS = 10_000
#: Keys per listing page when reading them back (the largest page allowed).
PAGE = 1000
#: Socket timeout of every request; a hung server fails the cycle.
REQUEST_TIMEOUT = 30.0
#: Seconds the loop may take before it stops and fails. It takes about a
#: minute on a 2-core machine (a start is 1-2 s, a 10,000-key commit 1-2.5
#: s); the margin is for a machine shared with other test runs.
BUDGET = 150.0
#: First guesses, in seconds, of how long staging and committing 10,000
#: keys take; replaced by measurements as soon as a cycle completes.
FIRST_SET_ESTIMATE = 0.5
FIRST_COMMIT_ESTIMATE = 1.5


def key_name(index: int) -> str:
    """The name of big key C{index}."""
    return "big/%05d" % (index,)


def plan_phases(cycles: int, rng: random.Random) -> List[str]:
    """
    Where each cycle aims its kill: the first waits for the answer (so the
    timings are measured), the others are a shuffled mix weighted towards
    the commit itself.
    """
    rest = cycles - 1
    before = max(2, rest // 4)
    after = max(1, rest // 5)
    phases = ["before"] * before + ["after"] * after
    phases += ["during"] * max(0, rest - len(phases))
    rng.shuffle(phases)
    return ["after"] + phases[:rest]


class Attempt:
    """
    One cycle's writer: its generation, what it got, and when.

    @ivar times: monotonic instants of C{set_sent}, C{commit_sent}, C{acked}.
    @ivar acknowledged: whether the commit answered 200.
    @ivar error: an unexpected answer (not a connection cut by the kill).
    """

    def __init__(self, generation: int) -> None:
        self.generation = generation
        #: Set by the main thread to let the commit go; a cycle aimed
        #: before the commit kills first, so its kill never lands later.
        self.release_commit = threading.Event()
        self.times: Dict[str, float] = {}
        self.events = {name: threading.Event() for name in ("set_sent", "commit_sent", "acked")}
        self.acknowledged = False
        self.error: Optional[str] = None
        self.set_seconds: Optional[float] = None
        self.commit_seconds: Optional[float] = None

    def mark(self, name: str) -> None:
        """Record that C{name} happened now, and wake the main thread."""
        self.times[name] = time.monotonic()
        self.events[name].set()


def write_generation(base_url: str, attempt: Attempt) -> None:
    """
    Thread body: begin, stage the 10,000 keys at this generation with one
    C{/set}, commit. Stops quietly when the kill cuts the connection.
    """
    body = json.dumps({key_name(i): attempt.generation for i in range(KEYS)}).encode("ascii")
    try:
        connection = connect(base_url, REQUEST_TIMEOUT)
    except OSError:
        return
    try:
        status, _, answer = http_request(base_url, "POST", "/v1/txn", connection=connection)
        if status != 201:
            attempt.error = "POST /v1/txn: %d %r" % (status, answer[:200])
            return
        txn = json.loads(answer)["id"]
        attempt.mark("set_sent")
        status, _, answer = http_request(
            base_url, "POST", "/v1/txn/%s/set" % (txn,), body, connection=connection
        )
        if status not in (200, 201):
            attempt.error = "POST /set: %d %r" % (status, answer[:200])
            return
        attempt.set_seconds = time.monotonic() - attempt.times["set_sent"]
        if not attempt.release_commit.wait(REQUEST_TIMEOUT):
            return
        attempt.mark("commit_sent")
        status, _, answer = http_request(
            base_url, "POST", "/v1/txn/%s/commit" % (txn,), connection=connection
        )
        if status != 200 or json.loads(answer).get("ops") != KEYS:
            attempt.error = "POST commit: %d %r" % (status, answer[:200])
            return
        attempt.acknowledged = True
        attempt.commit_seconds = time.monotonic() - attempt.times["commit_sent"]
        attempt.mark("acked")
    except (OSError, http.client.HTTPException):
        # The kill cut the connection: whatever was in flight is unacknowledged.
        return
    finally:
        connection.close()


def read_generation(base_url: str) -> Dict[str, object]:
    """
    The 10,000 keys as the restarted server lists them: how many are
    present, the set of generations and the set of mod_revisions seen.
    """
    connection = connect(base_url, REQUEST_TIMEOUT)
    values: Dict[str, int] = {}
    revisions = set()
    after: Optional[str] = None
    try:
        # Bounded: 10,000 keys are 10 pages; two spare.
        for _ in range(KEYS // PAGE + 2):
            query = "/v1/kv/?prefix=big/&values=1&limit=%d" % (PAGE,)
            if after is not None:
                query += "&after=" + after
            status, _, body = http_request(base_url, "GET", query, connection=connection)
            if status != 200:
                raise AssertionError("listing answered %d: %r" % (status, body[:200]))
            page = json.loads(body)
            for item in page["items"]:
                values[item["key"]] = item["value"]
                revisions.add(item["mod_revision"])
            after = page["next"]
            if after is None:
                break
        else:
            raise AssertionError("the listing did not end")
    finally:
        connection.close()
    return {
        "present": len(values),
        "generations": set(values.values()),
        "revisions": revisions,
        "keys_ok": not values or sorted(values) == [key_name(i) for i in range(KEYS)],
    }


class TransactionTally(Tally):
    """The loop's figures: where the kills fell, stage and commit times, errors."""

    def __init__(self) -> None:
        super().__init__()
        self.applied_unacknowledged = 0
        self.kills = {"before": 0, "during": 0, "after": 0}
        self.set_seconds: List[float] = []
        self.commit_seconds: List[float] = []
        self.errors: List[str] = []

    def summary(self, seconds: float, seed: int) -> str:
        """One line for the test output."""
        def mean(values: List[float]) -> float:
            return sum(values) / len(values) if values else float("nan")

        return (
            "txn crash loop: %d cycles of a 10,000-key commit and kill -9; "
            "%d acknowledged, %d lost, %d partial, %d phantom, %d applied but "
            "unacknowledged; kills before/during/after the commit: %d/%d/%d; "
            "stage %.2f s, commit %.2f s (means); %.1f s wall; seed %d"
            % (
                self.cycles, self.acknowledged, self.lost, self.partial, self.phantom,
                self.applied_unacknowledged, self.kills["before"], self.kills["during"],
                self.kills["after"], mean(self.set_seconds), mean(self.commit_seconds),
                seconds, seed,
            )
        )


class TransactionCrashLoopTests(SynchronousTestCase):
    """kill -9 around 10,000-op transaction commits never splits or loses one."""

    def test_big_commits_all_or_nothing(self):
        """
        Over at least 10 cycles of start, 10,000-key transaction and kill -9
        spread before, during and after the commit, the restarted server
        shows the 10,000 keys all absent or all at one generation and one
        mod_revision (partial == 0), never below the last acknowledged
        generation (lost == 0) nor above the last one sent (phantom == 0);
        every answer was an expected one; and the loop did real work: at
        least one commit acknowledged and at least one kill while a commit
        was in flight.
        """
        self.assertGreaterEqual(CYCLES, 10, "at least 10 cycles are asked for")
        seed = int(os.environ.get("KVTWIST_TXN_CRASH_SEED") or random.randrange(2**32))
        rng = random.Random(seed)
        base = temp_dir(self, "crash-txn")
        server = ServerProcess(os.path.join(base, "data"), log_dir=base)
        self.addCleanup(server.stop)
        tally = TransactionTally()
        started = time.monotonic()
        # The highest generation acknowledged, and the highest ever sent.
        acknowledged = 0
        attempted = 0
        last: Optional[Attempt] = None

        phases = plan_phases(CYCLES, rng)
        for cycle in range(CYCLES + 1):
            elapsed = time.monotonic() - started
            self.assertLess(elapsed, BUDGET, "over budget: " + tally.summary(elapsed, seed))
            server.start()
            self._check(read_generation(server.url), acknowledged, attempted, last, tally, cycle)
            if cycle == CYCLES:
                # The last start only checks what the last kill left.
                break
            attempt = Attempt(cycle + 1)
            attempted = attempt.generation
            self._write_and_kill(server, attempt, phases[cycle], tally, rng)
            if attempt.error:
                tally.errors.append("cycle %d: %s" % (cycle, attempt.error))
            if attempt.acknowledged:
                acknowledged = attempt.generation
                tally.acknowledged += 1
            last = attempt
            tally.cycles += 1
        server.terminate()

        summary = tally.summary(time.monotonic() - started, seed)
        print("\n" + summary)
        for line in tally.violations[:20]:
            print("  " + line)
        self.assertEqual(tally.errors, [], summary)
        self.assertEqual(
            (tally.lost, tally.partial, tally.phantom), (0, 0, 0),
            "%s\n%s" % (summary, "\n".join(tally.violations[:20])),
        )
        self.assertGreaterEqual(tally.cycles, 10, summary)
        self.assertGreater(tally.acknowledged, 0, summary)
        self.assertGreater(tally.kills["during"], 0, summary)

    def _check(
        self, seen, acknowledged: int, attempted: int, last, tally: TransactionTally, cycle: int
    ) -> None:
        """Count any violation in what a restart shows."""
        present = seen["present"]
        generations = seen["generations"]
        if present not in (0, KEYS) or len(generations) > 1 or len(seen["revisions"]) > 1 \
                or not seen["keys_ok"]:
            tally.partial += 1
            tally.violations.append(
                "cycle %d: partial: %d of %d keys, generations %r, revisions %r"
                % (cycle, present, KEYS, sorted(generations)[:10], sorted(seen["revisions"])[:10])
            )
            return
        generation = generations.pop() if generations else 0
        if generation < acknowledged:
            tally.lost += 1
            tally.violations.append(
                "cycle %d: lost: on disk %d, acknowledged %d" % (cycle, generation, acknowledged)
            )
        if generation > attempted:
            tally.phantom += 1
            tally.violations.append(
                "cycle %d: phantom: on disk %d, never sent past %d" % (cycle, generation, attempted)
            )
        if last is not None and not last.acknowledged and generation == last.generation:
            tally.applied_unacknowledged += 1

    def _write_and_kill(self, server, attempt: Attempt, phase: str, tally: TransactionTally, rng) -> None:
        """Run one writer and kill -9 the server at an instant aimed at C{phase}."""
        set_estimate = max(tally.set_seconds[-3:] or [FIRST_SET_ESTIMATE])
        commit_estimate = min(tally.commit_seconds[-3:] or [FIRST_COMMIT_ESTIMATE])
        writer = threading.Thread(
            target=write_generation,
            args=(server.url, attempt),
            name="txn-crash-writer",
            daemon=True,
        )
        writer.start()
        # Each wait is bounded; if the awaited event never comes (the writer
        # failed), the kill simply lands later.
        if phase == "before":
            # While the 10,000 pairs are staged, or just after; the commit
            # is held back until the kill.
            attempt.events["set_sent"].wait(REQUEST_TIMEOUT)
            time.sleep(rng.uniform(0.0, set_estimate * 1.2))
        elif phase == "during":
            attempt.release_commit.set()
            attempt.events["commit_sent"].wait(REQUEST_TIMEOUT)
            time.sleep(rng.uniform(0.05, 0.95) * commit_estimate)
        else:
            attempt.release_commit.set()
            attempt.events["acked"].wait(REQUEST_TIMEOUT * 2)
            time.sleep(rng.uniform(0.0, 0.2))
        killed_at = time.monotonic()
        server.kill()
        # A held-back writer may go now: it meets a dead server.
        attempt.release_commit.set()
        writer.join(REQUEST_TIMEOUT + 5)
        self.assertFalse(writer.is_alive(), "the writer hung after the kill")

        # Where the kill really landed.
        if "commit_sent" not in attempt.times or killed_at < attempt.times["commit_sent"]:
            tally.kills["before"] += 1
        elif "acked" in attempt.times and attempt.times["acked"] <= killed_at:
            tally.kills["after"] += 1
        else:
            tally.kills["during"] += 1
        if attempt.set_seconds is not None:
            tally.set_seconds.append(attempt.set_seconds)
        if attempt.commit_seconds is not None:
            tally.commit_seconds.append(attempt.commit_seconds)
