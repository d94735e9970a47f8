"""
Test doubles shipped with kvtwist, for kvtwist's own tests and for yours.

- L{MemoryStore}: an in-memory L{IKeyValueStore} with the same commit rules
  as the shelve store (it passes the same contract suite).
- L{InlineThreadPool} and L{ThreadlessReactor}: make code that defers to a
  thread pool run synchronously, so unit tests stay deterministic.
- L{memory_root}: a whole kvcache Resource tree over a L{MemoryStore}, ready
  for C{treq.testing.StubTreq}.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from zope.interface import implementer

from kvtwist.errors import KVError, StoreUnavailable
from kvtwist.interfaces import IKeyValueStore
from kvtwist.model import Check, Entry, Op, Page
from kvtwist.store.listeners import Listeners
from kvtwist.store.rules import apply_commit, count_delta, live

__all__ = [
    "MemoryStore",
    "InlineThreadPool",
    "ThreadlessReactor",
    "memory_root",
]


class _DictTable:
    """The L{kvtwist.store.rules.Table} view of a dict of entries."""

    def __init__(self, rows: Dict[str, Entry]) -> None:
        self._rows = rows

    def read(self, key: str) -> Optional[Entry]:
        return self._rows.get(key)

    def write(self, entry: Entry) -> None:
        self._rows[entry.key] = entry

    def remove(self, key: str) -> None:
        self._rows.pop(key, None)


@implementer(IKeyValueStore)
class MemoryStore:
    """
    An in-memory store: every Deferred it returns has already fired.

    @param clock: decides expiry; a L{Clock} in tests.
    @ivar fail_commits: set to an exception to make every commit fail with it
        (to test how callers handle an unavailable store).
    """

    def __init__(self, clock: Optional[IReactorTime] = None) -> None:
        self.revision = 0
        self.rows: Dict[str, Entry] = {}
        self.clock = clock if clock is not None else Clock()
        self.fail_commits: Optional[Exception] = None
        self.key_count = 0
        self.commits: List[Sequence[Op]] = []
        self.closed = False
        self._listeners = Listeners()

    def _guard(self) -> Optional[Deferred]:
        if self.closed:
            return fail(StoreUnavailable("the store is closed"))
        return None

    def open(self) -> Deferred:
        self.closed = False
        return succeed(None)

    def close(self) -> Deferred:
        self.closed = True
        return succeed(None)

    def get(self, key: str) -> Deferred:
        return self._guard() or succeed(live(self.rows.get(key), self.clock.seconds()))

    def get_many(self, keys: Iterable[str]) -> Deferred:
        now = self.clock.seconds()
        found = {}
        for key in keys:
            entry = live(self.rows.get(key), now)
            if entry is not None:
                found[key] = entry
        return self._guard() or succeed(found)

    def list(self, prefix: str, after: Optional[str], limit: int) -> Deferred:
        now = self.clock.seconds()
        after_bytes = after.encode("utf-8") if after is not None else None
        keys = sorted(
            (k for k in self.rows if k.startswith(prefix)),
            key=lambda k: k.encode("utf-8"),
        )
        entries = [
            self.rows[k]
            for k in keys
            if (after_bytes is None or k.encode("utf-8") > after_bytes)
            and self.rows[k].is_live(now)
        ]
        page = Page(self.revision, tuple(entries[:limit]), len(entries) > limit)
        return self._guard() or succeed(page)

    def commit(self, ops: Sequence[Op], checks: Sequence[Check] = ()) -> Deferred:
        guard = self._guard()
        if guard is not None:
            return guard
        if self.fail_commits is not None:
            return fail(self.fail_commits)
        try:
            result = apply_commit(
                _DictTable(self.rows), self.revision, ops, checks, self.clock.seconds()
            )
        except KVError as e:
            return fail(e)
        self.revision = result.revision
        self.key_count += count_delta(result)
        self.commits.append(list(ops))
        self._listeners.notify(result)
        return succeed(result)

    def ping(self) -> Deferred:
        return self._guard() or succeed(None)

    def add_listener(self, listener) -> None:
        self._listeners.add(listener)

    def expired(self, limit: int) -> Deferred:
        now = self.clock.seconds()
        due = sorted(
            (entry.expires, entry.key, entry.mod_revision)
            for entry in self.rows.values()
            if not entry.is_live(now)
        )
        return self._guard() or succeed([(key, rev) for _, key, rev in due[:limit]])


class InlineThreadPool:
    """
    A stand-in for L{twisted.python.threadpool.ThreadPool} that runs each
    call at once on the calling thread (Twisted's C{NonThreadPool} pattern).
    """

    started = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False

    def callInThreadWithCallback(
        self, onResult: Callable[[bool, object], None], func, *args, **kw
    ) -> None:
        try:
            result = func(*args, **kw)
        except BaseException:
            from twisted.python.failure import Failure

            onResult(False, Failure())
        else:
            onResult(True, result)


class ThreadlessReactor(Clock):
    """
    A L{Clock} whose C{callFromThread} runs the call at once: with
    L{InlineThreadPool}, C{deferToThreadPool} becomes synchronous.
    """

    def callFromThread(self, f, *args, **kw) -> None:
        f(*args, **kw)


def memory_root(store: Optional[IKeyValueStore] = None, **options):
    """
    A complete kvcache Resource tree over C{store} (a fresh L{MemoryStore}
    by default), for C{StubTreq(memory_root())}.
    """
    from kvtwist.web.root import make_root

    return make_root(store if store is not None else MemoryStore(), **options)
