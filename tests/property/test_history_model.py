"""
A model test of the store's history, driven by hypothesis, on the memory
store and on the shelve store (on an inline thread pool).

Each case is a random program over a few keys: commits of puts (some with
TTLs) and deletes, the clock moving on, expiry sweeps (the sweeper's
C{Expire} commits), compactions to a revision between the compacted one
and the present, and, on the shelve store, closing and reopening it. A
plain model runs alongside, computing each revision's state from the
commit rules by itself. After every step:

  - a read at every kept revision (from the compact revision to the
    present) of every key equals the model's state of that key at that
    revision, and a listing at that revision (paged, two keys a page)
    equals the model's keys at it; expiry counts at the present, so an
    entry whose TTL has passed reads as absent at every revision;
  - a read just before the compact revision is C{RevisionCompacted};
  - replaying the history from the compact revision gives the model's
    commits after it, each change with the entry before and after.

Run with C{pytest -s} to see the case counts; C{KVTWIST_HISTORY_EXAMPLES}
sets the number of cases per store (200 on memory, 30 on shelve, whose
commits each sync to disk, by default).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Tuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.internet import threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kvtwist.errors import RevisionCompacted
from kvtwist.model import Delete, Entry, Expire, Put
from kvtwist.store.shelve_store import ShelveStore
from kvtwist.testing import InlineThreadPool, MemoryStore, ThreadlessReactor
from tests.helpers.etcd import ModelOnEtcd

#: Cases per store: the shelve store syncs every commit to disk, so it runs
#: fewer. C{KVTWIST_HISTORY_EXAMPLES} sets both, for a soak.
MAX_EXAMPLES = int(os.environ.get("KVTWIST_HISTORY_EXAMPLES", "200"))
MAX_SHELVE_EXAMPLES = int(os.environ.get("KVTWIST_HISTORY_EXAMPLES", "30"))
#: etcd answers over HTTP, a few milliseconds a call: few cases.
MAX_ETCD_EXAMPLES = int(os.environ.get("KVTWIST_HISTORY_EXAMPLES", "10"))

KEYS = ("a", "b", "c/d", "\u00fc")
START = 1_700_000_000.0
CONTENT_TYPE = "text/plain"

_keys = st.sampled_from(KEYS)
_puts = st.builds(
    lambda key, value, ttl: ("put", key, value, ttl),
    _keys,
    st.sampled_from([b"1", b"22", b""]),
    st.sampled_from([None, None, 5.0, 20.0]),
)
_deletes = st.builds(lambda key: ("delete", key), _keys)
steps = st.one_of(
    st.builds(lambda ops: ("commit", ops), st.lists(st.one_of(_puts, _puts, _deletes), min_size=1, max_size=3)),
    st.builds(lambda seconds: ("advance", seconds), st.sampled_from([3.0, 10.0])),
    st.just(("sweep",)),
    st.builds(lambda share: ("compact", share), st.floats(0, 1)),
    st.just(("reopen",)),
)
programs = st.lists(steps, min_size=1, max_size=12)


@dataclass
class Model:
    """Each revision's stored rows (expired ones included until swept)."""

    states: List[Dict[str, Entry]] = field(default_factory=lambda: [{}])
    #: Per revision after 0, the (kind, key, entry, previous) it changed.
    commits: Dict[int, List[Tuple[str, str, Optional[Entry], Optional[Entry]]]] = field(
        default_factory=dict
    )
    compact_revision: int = 0

    @property
    def revision(self) -> int:
        return len(self.states) - 1

    def commit(self, ops: List[tuple], now: float) -> None:
        """Apply one commit by the rules: the last op per key wins."""
        final: Dict[str, tuple] = {}
        for op in ops:
            final[op[1]] = op
        rows = dict(self.states[-1])
        new = self.revision + 1
        changes = []
        for key, op in final.items():
            stored = rows.get(key)
            previous = stored if stored is not None and stored.is_live(now) else None
            if op[0] == "put":
                _, _, value, ttl = op
                entry = Entry(
                    key, value, CONTENT_TYPE,
                    previous.create_revision if previous else new, new,
                    previous.version + 1 if previous else 1,
                    now + ttl if ttl is not None else None,
                )
                rows[key] = entry
                changes.append(("put", key, entry, previous))
            elif op[0] == "delete" and previous is not None:
                del rows[key]
                changes.append(("delete", key, None, previous))
            elif op[0] == "expire" and stored is not None and not stored.is_live(now):
                del rows[key]
                changes.append(("expire", key, None, stored))
        if changes:
            self.states.append(rows)
            self.commits[new] = changes

    def live_at(self, revision: int, now: float) -> Dict[str, Entry]:
        """The entries readable at C{revision} when the clock says C{now}."""
        return {k: e for k, e in self.states[revision].items() if e.is_live(now)}


def result_of(d: Deferred):
    """The result of a Deferred that has fired (the stores here answer at once)."""
    results: list = []
    d.addBoth(results.append)
    [result] = results
    if isinstance(result, Failure):
        result.raiseException()
    return result


class Figures:
    """What the runs exercised, printed once per store."""

    def __init__(self) -> None:
        self.cases = 0
        self.commits = 0
        self.compactions = 0
        self.reads = 0

    def summary(self, store: str) -> str:
        return "history model on %s: %d cases, %d commits, %d compactions, %d reads at a revision" % (
            store, self.cases, self.commits, self.compactions, self.reads,
        )


class HistoryModelMixin:
    """
    The model test; subclasses say how to open (and reopen) the store, and
    may run its calls elsewhere (L{call}) and number its revisions their own
    way (the first revision a case sees is L{base_revision}; each model
    revision maps to the store's revision of the same commit).
    """

    store_name = ""
    examples = MAX_EXAMPLES

    def open_store(self, reactor, directory: str):
        raise NotImplementedError

    def call(self, method, *args):
        """The result of one store call (the stores here answer at once)."""
        return result_of(method(*args))

    def base_revision(self, store) -> int:
        """The store's revision that model revision 0 is."""
        return 0

    def to_store(self, revision: int) -> int:
        return self._revisions[revision]

    def to_model(self, entry: Optional[Entry]) -> Optional[Entry]:
        """C{entry} with the model's revision numbers."""
        if entry is None:
            return None
        back = {store: model for model, store in enumerate(self._revisions)}
        return replace(
            entry, create_revision=back[entry.create_revision], mod_revision=back[entry.mod_revision]
        )

    def test_history_matches_the_model(self):
        """
        For random programs of commits, deletes, expiries, compactions and
        reopens, every read and listing at every kept revision equals the
        model's state at that revision, older revisions are compacted, and
        the replayed history equals the model's commits.
        """
        figures = Figures()

        @settings(max_examples=self.examples, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(program=programs)
        def run_case(program):
            figures.cases += 1
            directory = tempfile.mkdtemp(prefix="kvtwist-history-model-")
            try:
                self.run_program(program, directory, figures)
            finally:
                shutil.rmtree(directory, True)

        try:
            run_case()
        finally:
            print("\n" + figures.summary(self.store_name))

    def run_program(self, program, directory: str, figures: Figures) -> None:
        reactor = ThreadlessReactor()
        reactor.advance(START)
        store = self.open_store(reactor, directory)
        model = Model()
        self._revisions = [self.base_revision(store)]
        try:
            for step in program:
                now = reactor.seconds()
                if step[0] == "commit":
                    ops = [Put(op[1], op[2], CONTENT_TYPE, now + op[3] if op[3] else None)
                           if op[0] == "put" else Delete(op[1]) for op in step[1]]
                    result = self.call(store.commit, ops)
                    model.commit(list(step[1]), now)
                    if model.revision >= len(self._revisions):
                        self._revisions.append(result.revision)
                    figures.commits += 1
                elif step[0] == "advance":
                    reactor.advance(step[1])
                elif step[0] == "sweep":
                    due = self.call(store.expired, 100)
                    if due:
                        result = self.call(store.commit, [Expire(key, rev) for key, rev in due])
                        model.commit([("expire", key) for key, _ in due], now)
                        self._revisions.append(result.revision)
                elif step[0] == "compact":
                    low, high = model.compact_revision, model.revision
                    target = low + round(step[1] * (high - low))
                    while self.call(store.compact, self.to_store(target), 2) < self.to_store(target):
                        pass
                    model.compact_revision = max(model.compact_revision, target)
                    figures.compactions += 1
                elif step[0] == "reopen":
                    store = self.reopen(store, reactor, directory)
                self.check(store, model, reactor.seconds(), figures)
        finally:
            self.call(store.close)

    def reopen(self, store, reactor, directory: str):
        """The same store after a close and an open (memory: unchanged)."""
        return store

    def check(self, store, model: Model, now: float, figures: Figures) -> None:
        self.assertEqual(store.revision, self.to_store(model.revision))
        if model.compact_revision:
            self.assertEqual(store.compact_revision, self.to_store(model.compact_revision))
        else:
            self.assertLessEqual(store.compact_revision, self.to_store(0))
        for revision in range(model.compact_revision, model.revision + 1):
            expected = model.live_at(revision, now)
            at = self.to_store(revision)
            for key in KEYS:
                self.assertEqual(
                    self.to_model(self.call(store.get_at, key, at)), expected.get(key), (key, revision)
                )
                figures.reads += 1
            listed: List[Entry] = []
            after = None
            for _ in range(len(KEYS) + 1):
                page = self.call(store.list_at, "", after, 2, at)
                self.assertEqual(page.revision, at)
                listed.extend(self.to_model(entry) for entry in page.entries)
                if not page.more:
                    break
                after = page.entries[-1].key
            self.assertEqual(
                listed, [expected[k] for k in sorted(expected, key=lambda k: k.encode("utf-8"))]
            )
        if model.compact_revision > 0:
            self.assertRaises(
                RevisionCompacted, self.call, store.get_at, "a", self.to_store(model.compact_revision) - 1
            )
        replayed = self.call(
            store.changes, self.to_store(model.compact_revision), self.to_store(model.revision), 1000
        )
        back = {store_revision: model_revision
                for model_revision, store_revision in enumerate(self._revisions)}
        self.assertEqual(
            {back[r.revision]: sorted(
                (c.kind, c.key, self.to_model(c.entry), self.to_model(c.previous)) for c in r.changes)
             for r in replayed},
            {revision: sorted(changes) for revision, changes in model.commits.items()
             if revision > model.compact_revision},
        )


class MemoryHistoryModelTests(HistoryModelMixin, SynchronousTestCase):
    """The history model on the memory store."""

    store_name = "memory"

    def open_store(self, reactor, directory: str):
        return MemoryStore(reactor)


class ShelveHistoryModelTests(HistoryModelMixin, SynchronousTestCase):
    """The history model on the shelve store, reopened from disk at times."""

    store_name = "shelve"
    examples = MAX_SHELVE_EXAMPLES

    def open_store(self, reactor, directory: str):
        store = ShelveStore(os.path.join(directory, "data"), reactor, InlineThreadPool())
        result_of(store.open())
        return store

    def reopen(self, store, reactor, directory: str):
        result_of(store.close())
        return self.open_store(reactor, directory)


class EtcdHistoryModelTests(ModelOnEtcd, HistoryModelMixin, TestCase):
    """
    The history model on the etcd store: a few cases on one etcd, each
    under its own key prefix; hypothesis runs in a thread and each store
    call on the reactor. Puts carry no TTL here: a put over an expired key
    that etcd still holds is two etcd revisions (the purge, then the put),
    which the model does not number (expiry at a revision is pinned by the
    store contract on etcd).
    """

    store_name = "etcd"
    examples = MAX_ETCD_EXAMPLES

    def test_history_matches_the_model(self):
        """
        For random programs of commits, deletes, compactions and reopens,
        every read and listing at every kept etcd revision equals the
        model's state at that revision, older revisions are compacted, and
        the replayed history (an etcd watch) equals the model's commits.
        """
        return threads.deferToThread(super().test_history_matches_the_model)

    def run_program(self, program, directory: str, figures: Figures) -> None:
        untimed = [
            ("commit", [op[:3] + (None,) if op[0] == "put" else op for op in step[1]])
            if step[0] == "commit" else step
            for step in program
        ]
        self.prefix = self.new_prefix("history-model")
        super().run_program(untimed, directory, figures)

    def call(self, method, *args):
        return self.on_reactor(method, *args)

    def base_revision(self, store) -> int:
        return store.revision

    def open_store(self, clock, directory: str):
        return self.open_etcd_store(self.prefix, clock)

    def reopen(self, store, clock, directory: str):
        self.call(store.close)
        return self.open_store(clock, directory)
