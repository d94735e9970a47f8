# -*- test-case-name: tests.property.test_lease_model -*-
"""
A model test of leases (L{kvtwist.interfaces.ILeasingStore}) on the memory
store, the shelve store (on an inline thread pool) and etcd (without clock
advances there), driven by hypothesis.

Each example is a short random program over a few keys and lease slots:
grants, puts attaching a key to a lease (or to none), deletes, keepalives,
revokes and clock advances; after each advance the expiry sweep runs (as
the sweeper does: every due lease ended in a commit of its own). A plain
model runs alongside, and after every step:

  - the keys in the store, and their values, equal the model's;
  - every call's outcome is predicted: a lease past its deadline, revoked
    or expired is C{LeaseNotFound} for a put, a keepalive or a revoke, and
    that put changes nothing;
  - each revoke and each lease expiry is exactly one commit (one listener
    call, one revision) holding one change per key of the lease (C{delete}
    for a revoke, C{expire} for an expiry), or no commit at all for a
    lease without keys; a keepalive is no commit.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.internet import threads
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kvtwist.errors import LeaseNotFound
from kvtwist.model import Delete, Put
from kvtwist.store.shelve_store import ShelveStore
from kvtwist.testing import InlineThreadPool, MemoryStore, ThreadlessReactor
from tests.helpers.etcd import ModelOnEtcd

#: etcd answers over HTTP: few cases there.
MAX_ETCD_EXAMPLES = int(os.environ.get("KVTWIST_LEASE_EXAMPLES", "25"))
KEYS = ("a", "b", "c", "d")
SLOTS = 3
START = 1_700_000_000.0

steps = st.lists(
    st.one_of(
        st.tuples(st.just("grant"), st.sampled_from([1.0, 2.5, 4.0])),
        st.tuples(st.just("put"), st.sampled_from(KEYS), st.sampled_from([None, 0, 1, 2])),
        st.tuples(st.just("delete"), st.sampled_from(KEYS)),
        st.tuples(st.just("keepalive"), st.integers(0, SLOTS - 1)),
        st.tuples(st.just("revoke"), st.integers(0, SLOTS - 1)),
        st.tuples(st.just("advance"), st.sampled_from([0.5, 1.0, 2.0])),
    ),
    max_size=25,
)


@dataclass
class Model:
    """What the store must hold: keys (value and lease) and leases (ttl, deadline)."""

    now: float = START
    keys: Dict[str, Tuple[bytes, Optional[int]]] = field(default_factory=dict)
    leases: Dict[int, Tuple[float, float]] = field(default_factory=dict)

    def held(self, lease: Optional[int]) -> bool:
        return lease is not None and lease in self.leases and self.leases[lease][1] > self.now

    def keys_of(self, lease: int) -> List[str]:
        return sorted(key for key, (_, owner) in self.keys.items() if owner == lease)

    def end(self, lease: int) -> List[str]:
        gone = self.keys_of(lease)
        for key in gone:
            del self.keys[key]
        del self.leases[lease]
        return gone


def outcome(d: Deferred):
    """The result of an already-fired Deferred, or its failure."""
    results: list = []
    d.addBoth(results.append)
    [result] = results
    return result


class LeaseModel:
    """
    The program runner; subclasses make the store, and may run its calls
    elsewhere (L{call}).
    """

    #: Whether each commit takes exactly the next revision (not on etcd,
    #: where a revoke first marks the lease at a revision of its own).
    exact_revisions = True

    def call(self, method, *args):
        """The result of one store call, or its L{Failure}."""
        return outcome(method(*args))

    def make_store(self):
        """A new, open, empty store timed by C{self.clock}."""
        raise NotImplementedError

    def advance(self, store, seconds: float) -> None:
        """Let C{seconds} pass on the store's clock."""
        self.clock.advance(seconds)

    def store_keys(self, store) -> Dict[str, bytes]:
        page = self.call(store.list, "", None, 100)
        return {entry.key: entry.value for entry in page.entries}

    def run_program(self, program) -> None:
        store = self.make_store()
        commits: list = []
        store.add_listener(commits.append)
        model = Model()
        slots: List[Optional[int]] = [None] * SLOTS
        written = granted = 0
        try:
            self.steps(store, program, commits, model, slots, written, granted)
        finally:
            self.dispose(store)

    def dispose(self, store) -> None:
        """Release what C{make_store} took."""

    def steps(self, store, program, commits, model, slots, written, granted) -> None:
        for step in program:
            kind = step[0]
            before = (len(commits), store.revision)
            if kind == "grant":
                lease = self.call(store.grant, step[1], 100)
                model.leases[lease.id] = (step[1], model.now + step[1])
                slots[granted % SLOTS] = lease.id
                granted += 1
                self.assertEqual(len(commits), before[0])
            elif kind == "put":
                _, key, slot = step
                lease = slots[slot] if slot is not None else None
                written += 1
                value = b"%d" % (written,)
                result = self.call(store.commit, [Put(key, value, lease=lease)])
                if lease is not None and not model.held(lease):
                    self.assertIsInstance(result, Failure)
                    result.trap(LeaseNotFound)
                    self.assertEqual((len(commits), store.revision), before)
                else:
                    self.assertNotIsInstance(result, Failure)
                    model.keys[key] = (value, lease)
            elif kind == "delete":
                self.call(store.commit, [Delete(step[1])])
                model.keys.pop(step[1], None)
            elif kind == "keepalive":
                lease = slots[step[1]]
                if lease is None:
                    continue
                result = self.call(store.keepalive, lease)
                if model.held(lease):
                    self.assertNotIsInstance(result, Failure)
                    ttl = model.leases[lease][0]
                    model.leases[lease] = (ttl, model.now + ttl)
                else:
                    self.assertIsInstance(result, Failure)
                    result.trap(LeaseNotFound)
                self.assertEqual((len(commits), store.revision), before)
            elif kind == "revoke":
                lease = slots[step[1]]
                if lease is None:
                    continue
                result = self.call(store.revoke, lease)
                if model.held(lease):
                    gone = model.end(lease)
                    self.assert_one_commit(commits[before[0]:], before[1], store, gone, "delete")
                else:
                    self.assertIsInstance(result, Failure)
                    result.trap(LeaseNotFound)
            else:
                self.advance(store, step[1])
                model.now += step[1]
                # The sweep: every due lease, each in a commit of its own.
                due = sorted(
                    (deadline, lease) for lease, (_, deadline) in model.leases.items()
                    if deadline <= model.now
                )
                swept = self.call(store.expired_leases, 100)
                self.assertEqual(sorted(swept), sorted(lease for _, lease in due))
                for lease in swept:
                    start = (len(commits), store.revision)
                    self.call(store.expire_lease, lease)
                    gone = model.end(lease)
                    self.assert_one_commit(commits[start[0]:], start[1], store, gone, "expire")
            self.assertEqual(
                self.store_keys(store), {key: value for key, (value, _) in model.keys.items()}
            )
            self.assertEqual(store.lease_count, len(model.leases))

    def assert_one_commit(self, new, revision_before, store, gone, kind) -> None:
        """A lease's end: one commit of one change per key (none without keys)."""
        if not gone:
            self.assertEqual([c for c in new if c.changes], [])
            if self.exact_revisions:
                self.assertEqual(store.revision, revision_before)
            return
        self.assertEqual(len(new), 1)
        if self.exact_revisions:
            self.assertEqual(new[0].revision, revision_before + 1)
        self.assertGreater(new[0].revision, revision_before)
        self.assertEqual(sorted((c.kind, c.key) for c in new[0].changes), [(kind, k) for k in gone])


class MemoryLeaseModelTests(LeaseModel, SynchronousTestCase):
    """The model on the memory store."""

    def make_store(self):
        self.clock = ThreadlessReactor()
        self.clock.advance(START)
        return MemoryStore(self.clock)

    @settings(max_examples=200, deadline=None)
    @given(program=steps)
    def test_model(self, program) -> None:
        """Random lease programs on the memory store keep exactly the model's keys; every end is one commit."""
        self.run_program(program)


class ShelveLeaseModelTests(LeaseModel, SynchronousTestCase):
    """The model on the shelve store (inline thread pool)."""

    def make_store(self):
        self.clock = ThreadlessReactor()
        self.clock.advance(START)
        self.directory = tempfile.mkdtemp(prefix="kvtwist-lease-model-")
        store = ShelveStore(os.path.join(self.directory, "data"), self.clock, InlineThreadPool())
        outcome(store.open())
        return store

    def dispose(self, store) -> None:
        outcome(store.close())
        shutil.rmtree(self.directory, True)

    @settings(max_examples=25, deadline=None)
    @given(program=steps)
    def test_model(self, program) -> None:
        """Random lease programs on the shelve store keep exactly the model's keys; every end is one commit."""
        self.run_program(program)


class EtcdLeaseModelTests(ModelOnEtcd, LeaseModel, TestCase):
    """
    The model on etcd leases, a few cases on one etcd, each under its own
    key prefix; hypothesis runs in a thread and each store call on the
    reactor. No clock advances: etcd's leases keep etcd's clock, so leases
    are granted for a minute (longer than a case) and end only by revoke
    (etcd's own expiry: EtcdLeaseTests in tests/contract/test_store_etcd.py).
    """

    exact_revisions = False

    def call(self, method, *args):
        def run():
            # Boxed, so a failure comes back as a value, as outcome() gives it.
            return method(*args).addBoth(lambda result: [result])

        [result] = self.on_reactor(run)
        return result

    def make_store(self):
        self.clock = Clock()
        self.clock.advance(START)
        return self.open_etcd_store(self.new_prefix("lease-model"), self.clock)

    def dispose(self, store) -> None:
        self.on_reactor(store.close)

    def test_model(self):
        """Random lease programs on etcd keep exactly the model's keys; every revoke is one commit."""

        @settings(max_examples=MAX_ETCD_EXAMPLES, deadline=None)
        @given(program=steps)
        def run(program) -> None:
            self.run_program([
                ("grant", 60.0) if step[0] == "grant" else step
                for step in program if step[0] != "advance"
            ])

        return threads.deferToThread(run)
