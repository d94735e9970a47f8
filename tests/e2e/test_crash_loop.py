"""
The C{kill -9} crash loop: the real kvcache is
killed at random instants while several writers commit 50-key batches, and
after every restart each batch must be wholly there or wholly absent, and
every acknowledged batch must be there.

Writer C{w} owns keys C{w{w}/k0} .. C{w{w}/k49}. Each round it stages one
batch that gives all 50 keys its next generation number with one
C{POST /set}, then C{POST /commit}; the generation counts as acknowledged
only when the commit answered 204. Generations keep growing across cycles,
so after a restart writer C{w}'s keys must show one generation C{g} with
C{acknowledged <= g <= attempted} (or be absent if nothing was ever
acknowledged). The seed's queue is shared, so another writer's commit may
publish a batch before its own writer's commit answers: that is why C{g}
may exceed the acknowledged generation.

History (the store keeps every change until compaction): one more writer
makes one-key C{PUT /v1/kv/h/...} commits and records the revision each
acknowledged one answered. After every restart, each acknowledged revision
must be readable at that revision from the history (C{?revision=R}: its
value and ETag), and each prefix listed from the history at the current
revision must equal the same listing from the keys themselves: each key's
latest history entry is its current value. Both are written in one SQLite
transaction, so no kill may separate them.
Beside them a deleter owns the keys under C{d/}: each round it writes
its 50 keys with the next generation in one C{POST /v1/batch}, then
deletes them all with one C{DELETE /v1/kv/?prefix=d/}. After a restart
its keys must be all absent or all of one generation, and be a state its
operations passed through no earlier than the last one acknowledged.

L{PrefixDeleteCrashTests} deletes 100,000 keys by prefix in one commit,
timed, and then kills the server during the same delete of a fresh
100,000: after the restart all of them or none are there.

The writers are plain threads with C{http.client} (blocking, each with a
socket timeout), so the loop needs no reactor. Run with C{pytest -s} to see
the figures; C{KVTWIST_CRASH_CYCLES} and C{KVTWIST_CRASH_SEED} change the
number of cycles and replay a seed.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Sequence
from urllib.parse import quote

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.crash import Tally
from tests.helpers.e2e import ServerProcess, child_pids, connect, http_request, temp_dir, wait_ready

#: Cycles of start, write, kill -9: at least 50, so a rare window shows.
CYCLES = int(os.environ.get("KVTWIST_CRASH_CYCLES", "50"))
WRITERS = 4
KEYS_PER_BATCH = 50
#: Seconds the writers run before the kill, drawn uniformly per cycle.
WRITE_TIME = (0.1, 0.4)
#: Upper bound of rounds per writer per cycle (the kill normally ends them).
MAX_ROUNDS = 10_000
#: Socket timeout of every request: a hung server fails the cycle, not the run.
REQUEST_TIMEOUT = 10.0
#: The whole loop must finish within this many seconds (it takes about a
#: minute on a 2-core machine); past it the test stops and fails.
BUDGET = 600.0


def key_name(writer: int, index: int) -> str:
    """The key C{index} of writer C{writer}."""
    return "w%d/k%d" % (writer, index)


def key_path(writer: int, index: int) -> str:
    """The seed path of a key: one segment, so its "/" is percent-encoded."""
    return "/" + quote(key_name(writer, index), safe="")


class WriterState:
    """
    What one writer has done over the whole loop.

    @ivar attempted: the highest generation it ever sent (staged or not).
    @ivar acknowledged: the highest generation whose commit answered 204.
    @ivar batches: how many of its commits were acknowledged.
    @ivar busy: whether a request is on the wire right now.
    @ivar errors: unexpected answers (not a connection cut by the kill).
    """

    def __init__(self, index: int) -> None:
        self.index = index
        self.attempted = 0
        self.acknowledged = 0
        self.batches = 0
        self.busy = False
        self.errors: List[str] = []


def run_rounds(base_url: str, state, stop: threading.Event, one_round) -> None:
    """
    Thread body: call C{one_round(connection)} on one keep-alive connection
    until it returns False, the server dies, C{stop} is set, or
    L{MAX_ROUNDS} pass.
    """
    try:
        connection = connect(base_url, REQUEST_TIMEOUT)
    except OSError:
        return
    try:
        for _ in range(MAX_ROUNDS):
            if stop.is_set() or not one_round(connection):
                return
    except (OSError, http.client.HTTPException):
        # The kill cut the connection: whatever was in flight is unacknowledged.
        return
    finally:
        state.busy = False
        connection.close()


#: The keys of the history writer (it cycles over them, so keys get versions).
HISTORY_KEYS = 20


class HistoryWriterState:
    """
    What the history writer has done: C{acknowledged} holds C{(revision,
    key, value)} of each acknowledged PUT, C{checked} how many of them
    earlier restarts have already verified.
    """

    def __init__(self) -> None:
        self.acknowledged: List[tuple] = []
        self.checked = 0
        self.sent = 0
        self.busy = False
        self.errors: List[str] = []


def write_history(base_url: str, state: HistoryWriterState, stop: threading.Event) -> None:
    """Thread body: one-key PUTs until the server dies or C{stop} is set."""

    def one_put(connection) -> bool:
        state.sent += 1
        key = "h/k%d" % (state.sent % HISTORY_KEYS,)
        value = b"%d" % (state.sent,)
        status, _, answer = http_request(
            base_url, "PUT", "/v1/kv/" + quote(key, safe=""), value, connection=connection
        )
        if status not in (200, 201):
            state.errors.append("PUT %s: %d %r" % (key, status, answer[:200]))
            return False
        state.acknowledged.append((json.loads(answer)["revision"], key, value))
        return True

    run_rounds(base_url, state, stop, one_put)


def check_history(base_url: str, state: HistoryWriterState, tally: "LoopTally", cycle: int) -> None:
    """
    After a restart: every acknowledged revision not yet verified is in the
    history, and every prefix's listing from the history at the current
    revision equals its listing from the keys.
    """
    connection = connect(base_url, REQUEST_TIMEOUT)
    try:
        for revision, key, value in state.acknowledged[state.checked:]:
            status, headers, body = http_request(
                base_url, "GET", "/v1/kv/%s?revision=%d" % (quote(key, safe=""), revision),
                connection=connection,
            )
            tally.history_checked += 1
            if (status, body, headers.get("etag")) != (200, value, '"%d"' % (revision,)):
                tally.history_missing += 1
                tally.violations.append(
                    "cycle %d: acknowledged revision %d of %s: %d %r" % (cycle, revision, key, status, body[:100])
                )
        state.checked = len(state.acknowledged)
        for prefix in ["h/", "d/"] + ["w%d/" % (w,) for w in range(WRITERS)]:
            query = "/v1/kv/?prefix=%s&values=1&limit=1000" % (quote(prefix, safe=""),)
            _, _, body = http_request(base_url, "GET", query, connection=connection)
            current = json.loads(body)
            _, _, body = http_request(
                base_url, "GET", query + "&revision=%d" % (current["revision"],), connection=connection
            )
            if json.loads(body)["items"] != current["items"]:
                tally.history_mismatch += 1
                tally.violations.append(
                    "cycle %d: the history of %s at revision %d differs from its keys"
                    % (cycle, prefix, current["revision"])
                )
    finally:
        connection.close()


def write_batches(base_url: str, state: WriterState, stop: threading.Event) -> None:
    """Thread body: stage and commit batches (see L{run_rounds})."""

    def one_round(connection) -> bool:
        generation = state.attempted + 1
        # Counted as attempted before it is sent: once the bytes leave,
        # the server may commit them even if no answer comes back.
        state.attempted = generation
        body = json.dumps(
            {key_name(state.index, i): generation for i in range(KEYS_PER_BATCH)}
        ).encode("ascii")
        state.busy = True
        status, _, answer = http_request(base_url, "POST", "/set", body, connection=connection)
        if status not in (200, 201):
            state.errors.append("POST /set: %d %r" % (status, answer[:200]))
            return False
        status, _, answer = http_request(base_url, "POST", "/commit", connection=connection)
        state.busy = False
        if status != 204:
            state.errors.append("POST /commit: %d %r" % (status, answer[:200]))
            return False
        state.acknowledged = generation
        state.batches += 1
        return True

    run_rounds(base_url, state, stop, one_round)


class DeleterState:
    """
    What the deleter has done over the whole loop.

    @ivar history: the state each of its operations leaves its keys in, in
        order: a generation, or None once deleted.
    @ivar acknowledged: how many of C{history} were acknowledged (all of
        them up to the last one that answered).
    @ivar attempted: how many of C{history} were sent.
    """

    prefix = "d/"

    def __init__(self) -> None:
        self.history: List[Optional[int]] = []
        self.acknowledged = 0
        self.attempted = 0
        self.generation = 0
        self.busy = False
        self.errors: List[str] = []

    def possible(self) -> List[Optional[int]]:
        """The states the keys may be in after a crash: from the last acknowledged on."""
        states: List[Optional[int]] = [None] + self.history
        return states[self.acknowledged:self.attempted + 1]


def delete_batches(base_url: str, state: DeleterState, stop: threading.Event) -> None:
    """
    Thread body: write the deleter's keys in one batch, then delete them
    by prefix (see L{run_rounds}).
    """

    def one_round(connection) -> bool:
        state.generation += 1
        ops = [
            {"op": "set", "key": "%sk%d" % (state.prefix, i), "value": state.generation}
            for i in range(KEYS_PER_BATCH)
        ]
        for method, path, body, outcome in (
            ("POST", "/v1/batch", json.dumps({"ops": ops}).encode("ascii"), state.generation),
            ("DELETE", "/v1/kv/?prefix=" + state.prefix, None, None),
        ):
            state.history.append(outcome)
            state.attempted = len(state.history)
            state.busy = True
            status, _, answer = http_request(base_url, method, path, body, connection=connection)
            state.busy = False
            if status != 200:
                state.errors.append("%s %s: %d %r" % (method, path, status, answer[:200]))
                return False
            state.acknowledged = len(state.history)
        return True

    run_rounds(base_url, state, stop, one_round)


def check_deleter(base_url: str, state: DeleterState, tally: "LoopTally", cycle: int) -> None:
    """Count a violation if the deleter's keys are split or not a state it passed through."""
    status, _, body = http_request(
        base_url, "GET", "/v1/kv/?prefix=%s&limit=%d&values=1" % (state.prefix, KEYS_PER_BATCH),
        timeout=REQUEST_TIMEOUT,
    )
    if status != 200:
        raise AssertionError("listing the deleter's keys answered %d: %r" % (status, body))
    items = json.loads(body)["items"]
    generations = {item["value"] for item in items}
    if items and (len(items) != KEYS_PER_BATCH or len(generations) != 1):
        tally.partial += 1
        tally.violations.append(
            "cycle %d: deleter partial: %d keys, generations %r" % (cycle, len(items), generations)
        )
        return
    found = generations.pop() if items else None
    if found not in state.possible():
        tally.lost += 1
        tally.violations.append(
            "cycle %d: deleter found %r, expected one of %r" % (cycle, found, state.possible())
        )


def read_generations(base_url: str, state: WriterState) -> List[Optional[int]]:
    """The committed value of each of a writer's keys (None when absent)."""
    values: List[Optional[int]] = []
    connection = connect(base_url, REQUEST_TIMEOUT)
    try:
        for i in range(KEYS_PER_BATCH):
            status, _, body = http_request(
                base_url, "GET", key_path(state.index, i), connection=connection
            )
            if status == 404:
                values.append(None)
            elif status == 200:
                values.append(int(body))
            else:
                raise AssertionError(
                    "GET %s answered %d: %r" % (key_path(state.index, i), status, body)
                )
    finally:
        connection.close()
    return values


class LoopTally(Tally):
    """The loop's figures: kills that hit a request, and history read back."""

    def __init__(self) -> None:
        super().__init__()
        self.kills_in_flight = 0
        self.history_checked = 0
        self.history_missing = 0
        self.history_mismatch = 0

    def summary(self, seconds: float, seed: int) -> str:
        return (
            "crash loop: %d cycles, %d acknowledged batches, %d lost, %d partial, "
            "%d phantom; %d of %d kills hit a request in flight; history: %d acknowledged "
            "revisions read back, %d missing, %d prefix listings differing; %.1f s wall; seed %d"
            % (
                self.cycles,
                self.acknowledged,
                self.lost,
                self.partial,
                self.phantom,
                self.kills_in_flight,
                self.cycles,
                self.history_checked,
                self.history_missing,
                self.history_mismatch,
                seconds,
                seed,
            )
        )


def check_writer(
    state: WriterState, values: List[Optional[int]], tally: LoopTally, cycle: int
) -> None:
    """Count any violation in one writer's keys as read after a restart."""
    present = {value for value in values if value is not None}
    if present and (len(present) > 1 or None in values):
        tally.partial += 1
        tally.violations.append(
            "cycle %d: writer %d partial batch: %r" % (cycle, state.index, values)
        )
        return
    generation = present.pop() if present else 0
    if generation < state.acknowledged:
        tally.lost += 1
        tally.violations.append(
            "cycle %d: writer %d lost: on disk %d, acknowledged %d"
            % (cycle, state.index, generation, state.acknowledged)
        )
    if generation > state.attempted:
        tally.phantom += 1
        tally.violations.append(
            "cycle %d: writer %d phantom: on disk %d, never sent past %d"
            % (cycle, state.index, generation, state.attempted)
        )


class _LoopOutcome:
    """The figures of one run of the loop, shared by the tests below."""

    def __init__(self, tally, errors, summary, deletes) -> None:
        self.tally = tally
        self.errors = errors
        self.summary = summary
        self.deletes = deletes


class CrashLoopTests(SynchronousTestCase):
    """
    kill -9 at random instants never splits or loses a commit.

    The loop takes about a minute, so it runs once; both tests read its
    figures (each runs it if it is selected alone).
    """

    _outcome: Optional[_LoopOutcome] = None
    _failure: Optional[BaseException] = None
    #: Cycles of the loop, and the least the test accepts.
    cycles = CYCLES
    least_cycles = 50
    #: More C{twistd kvcache} options of the server.
    server_args: Sequence[str] = ()

    def outcome(self) -> _LoopOutcome:
        """The loop's outcome, running the loop on first use."""
        cls = type(self)
        if cls._failure is not None:
            raise cls._failure
        if cls._outcome is None:
            try:
                cls._outcome = self._run_loop()
            except BaseException as e:
                cls._failure = e
                raise
        return cls._outcome

    def test_batches_all_or_nothing(self):
        """
        Over at least 50 cycles of start, concurrent 50-key batch commits
        and prefix deletes, and kill -9 at a random instant, every batch and
        every prefix delete is all there or all absent after the restart
        (partial == 0), no value appears that was
        never sent (phantom == 0), and the server answered nothing but the
        expected statuses. The loop must have done real work: more
        acknowledged batches than cycles, and most kills landing while a
        request was on the wire.
        """
        outcome = self.outcome()
        tally = outcome.tally
        self.assertEqual(outcome.errors, [], outcome.summary)
        self.assertEqual(
            (tally.partial, tally.phantom),
            (0, 0),
            "%s\n%s" % (outcome.summary, "\n".join(tally.violations[:20])),
        )
        self.assertGreaterEqual(tally.cycles, self.least_cycles, outcome.summary)
        self.assertGreater(tally.acknowledged, tally.cycles, outcome.summary)
        self.assertGreater(outcome.deletes, tally.cycles // 2, outcome.summary)
        self.assertGreater(tally.kills_in_flight, tally.cycles // 2, outcome.summary)

    def test_acknowledged_batches_survive(self):
        """
        Every batch whose commit answered 204 is on disk after each kill -9
        and restart, and no acknowledged prefix delete is undone (lost == 0).
        """
        outcome = self.outcome()
        tally = outcome.tally
        self.assertEqual(
            tally.lost,
            0,
            "%s\n%s" % (outcome.summary, "\n".join(tally.violations[:20])),
        )

    def test_history_matches_after_each_restart(self):
        """
        After every kill -9 and restart, every acknowledged one-key commit's
        revision is still readable from the history with its value and
        ETag (none missing), and each prefix read from the history at the
        current revision equals the keys themselves (each key's latest
        history entry is its current value).
        """
        outcome = self.outcome()
        tally = outcome.tally
        self.assertEqual(
            (tally.history_missing, tally.history_mismatch),
            (0, 0),
            "%s\n%s" % (outcome.summary, "\n".join(tally.violations[:20])),
        )
        self.assertGreater(tally.history_checked, tally.cycles, outcome.summary)

    def _run_loop(self) -> _LoopOutcome:
        """Run the whole crash loop and collect its figures."""
        self.assertGreaterEqual(self.cycles, self.least_cycles)
        seed = int(os.environ.get("KVTWIST_CRASH_SEED") or random.randrange(2**32))
        rng = random.Random(seed)
        base = temp_dir(self, "crash")
        server = ServerProcess(os.path.join(base, "data"), list(self.server_args), log_dir=base)
        self.addCleanup(server.stop)
        writers = [WriterState(w) for w in range(WRITERS)]
        self.history_writer = HistoryWriterState()
        deleter = DeleterState()
        tally = LoopTally()
        started = time.monotonic()

        for cycle in range(self.cycles + 1):
            self.assertLess(
                time.monotonic() - started,
                BUDGET,
                "over budget: " + tally.summary(time.monotonic() - started, seed),
            )
            if server.running:
                # Only part of it was killed: it must serve again by itself.
                wait_ready(server.url, REQUEST_TIMEOUT)
            else:
                server.start()
            # One reader per writer: the reads are most of a cycle's
            # requests, and the server serves them concurrently.
            with ThreadPoolExecutor(max_workers=WRITERS) as readers:
                read = [
                    readers.submit(read_generations, server.url, state)
                    for state in writers
                ]
                for state, values in zip(writers, read):
                    check_writer(state, values.result(), tally, cycle)
            check_history(server.url, self.history_writer, tally, cycle)
            check_deleter(server.url, deleter, tally, cycle)
            if cycle == self.cycles:
                # The last start only checks what the last kill left.
                break
            self._write_and_kill(server, writers, deleter, tally, rng, cycle)
            tally.cycles += 1
        server.terminate()

        tally.acknowledged = sum(state.batches for state in writers)
        errors = (
            [error for state in writers for error in state.errors]
            + deleter.errors
            + self.history_writer.errors
        )
        deletes = sum(1 for generation in deleter.history[: deleter.acknowledged] if generation is None)
        summary = "%s; %d acknowledged prefix deletes" % (
            tally.summary(time.monotonic() - started, seed), deletes
        )
        print("\n" + summary)
        for line in tally.violations[:20]:
            print("  " + line)
        return _LoopOutcome(tally, errors, summary, deletes)

    def crash(self, server: ServerProcess, cycle: int) -> None:
        """The kill -9 of cycle C{cycle}: the server process."""
        server.kill()

    def _write_and_kill(self, server, writers, deleter, tally, rng, cycle) -> None:
        """Run the writers and the deleter for a random time, then kill -9 (L{crash})."""
        stop = threading.Event()
        threads = [
            threading.Thread(
                target=write_batches,
                args=(server.url, state, stop),
                name="crash-writer-%d" % (state.index,),
                daemon=True,
            )
            for state in writers
        ] + [
            threading.Thread(
                target=delete_batches,
                args=(server.url, deleter, stop),
                name="crash-deleter",
                daemon=True,
            )
        ]
        threads.append(threading.Thread(
            target=write_history, args=(server.url, self.history_writer, stop),
            name="crash-history-writer", daemon=True,
        ))
        for thread in threads:
            thread.start()
        time.sleep(rng.uniform(*WRITE_TIME))
        if any(state.busy for state in writers) or deleter.busy:
            tally.kills_in_flight += 1
        self.crash(server, cycle)
        stop.set()
        for thread in threads:
            thread.join(REQUEST_TIMEOUT + 5)
            self.assertFalse(thread.is_alive(), "a writer hung after the kill")


class WorkersCrashLoopTests(CrashLoopTests):
    """
    The same loop with C{--workers 2}: even cycles kill the owner (its
    workers exit with it, and the whole restarts), odd cycles kill one
    worker (the owner starts another; what its clients were committing is
    acknowledged or not, never half there). Fewer cycles: each one costs
    three processes.
    """

    cycles = int(os.environ.get("KVTWIST_WORKERS_CRASH_CYCLES", "10"))
    least_cycles = 10
    server_args = ("--workers", "2")
    _outcome = None
    _failure = None

    def crash(self, server: ServerProcess, cycle: int) -> None:
        """kill -9 a worker on odd cycles, the owner on even ones."""
        workers = child_pids(server.process.pid)
        if cycle % 2 and workers:
            os.kill(workers[cycle % len(workers)], signal.SIGKILL)
        else:
            server.kill()


#: Keys deleted by one prefix delete in L{PrefixDeleteCrashTests}.
BIG_DELETE = 100_000


def load_offline(data_dir: str, prefixes: List[str]) -> None:
    """
    Write L{BIG_DELETE} keys under each of C{prefixes} into the store in
    C{data_dir} in one commit, in this process, before a server opens it
    (far quicker than sending them over HTTP).
    """
    from kvtwist.model import Put
    from kvtwist.store.shelve_store import ShelveStore
    from kvtwist.testing import InlineThreadPool, ThreadlessReactor

    store = ShelveStore(data_dir, ThreadlessReactor(), InlineThreadPool())
    store.open()
    store.commit(
        [Put("%s%06d" % (prefix, i), b"1", "application/json")
         for prefix in prefixes for i in range(BIG_DELETE)]
    )
    store.close()


class PrefixDeleteCrashTests(SynchronousTestCase):
    """One prefix delete of 100,000 keys: one revision, and all-or-nothing under kill -9."""

    def keys(self, server: ServerProcess) -> int:
        """The server's live key count (C{kvtwist_keys} in /v1/metrics)."""
        _, _, body = http_request(server.url, "GET", "/v1/metrics", timeout=30)
        for line in body.decode().splitlines():
            if line.startswith("kvtwist_keys "):
                return int(float(line.split()[1]))
        self.fail("no kvtwist_keys in /v1/metrics")

    def test_prefix_delete_of_100k_keys(self):
        """
        DELETE /v1/kv/?prefix=P of 100,000 keys answers 200 with deleted =
        100,000 and the next revision (one commit), and leaves none; a
        kill -9 at a random instant during the same delete of another
        100,000 leaves, after the restart, all 100,000 or none.
        """
        base = temp_dir(self, "bigdelete")
        data = os.path.join(base, "data")
        load_offline(data, ["big/", "again/"])
        server = ServerProcess(data, extra_args=["--request-timeout", "120"], log_dir=base)
        self.addCleanup(server.stop)
        server.start()
        self.assertEqual(self.keys(server), 2 * BIG_DELETE)
        started = time.monotonic()
        status, _, body = http_request(server.url, "DELETE", "/v1/kv/?prefix=big/", timeout=120)
        seconds = time.monotonic() - started
        self.assertEqual((status, json.loads(body)), (200, {"deleted": BIG_DELETE, "revision": 2}))
        print("\nprefix delete of %d keys: %.2f s" % (BIG_DELETE, seconds))
        self.assertEqual(self.keys(server), BIG_DELETE)

        outcome: List[object] = []

        def delete() -> None:
            try:
                outcome.append(http_request(server.url, "DELETE", "/v1/kv/?prefix=again/", timeout=120)[0])
            except (OSError, http.client.HTTPException) as e:
                outcome.append(e)

        deleting = threading.Thread(target=delete, daemon=True)
        deleting.start()
        time.sleep(random.uniform(0, seconds))
        server.kill()
        deleting.join(30)
        server.start()
        left = self.keys(server)
        self.assertIn(left, (0, BIG_DELETE), "a prefix delete split by kill -9 (answer: %r)" % (outcome,))
        if outcome == [200]:
            self.assertEqual(left, 0, "an acknowledged prefix delete was undone")
        print("kill -9 during the delete: %d keys left (answer: %r)" % (left, outcome))
        server.terminate()
