# -*- test-case-name: tests.e2e.test_kit -*-
"""
Test doubles shipped with kvtwist, for kvtwist's own tests and for yours.

- L{MemoryStore}: an in-memory L{IKeyValueStore} with the same commit rules
  as the shelve store (it passes the same contract suite);
  L{WatchedMemoryStore}: one whose watch resets a test sends by hand.
- L{InlineThreadPool} and L{ThreadlessReactor}: make code that defers to a
  thread pool run synchronously, so unit tests stay deterministic.
- L{memory_root}: a whole kvcache Resource tree over a L{MemoryStore}, ready
  for C{treq.testing.StubTreq}; L{memory_client} gives the C{StubTreq} and
  the store together. No network, no reactor: the Deferreds fire at once.
- L{KVCacheServer}: a real kvcache served in process on a free 127.0.0.1
  port (a L{MemoryStore}, or the on-disk shelve store), for code that needs
  a real HTTP connection (streams, long-polls, other HTTP clients).
- L{KVCacheServerMixin}: a trial C{TestCase} mixin that starts one with
  C{start_kvcache()} and stops it when the test ends.

The pytest-twisted fixtures (C{kvcache_url}, C{kvcache_store},
C{kvcache_server}, C{kvcache_stub}) are in L{kvtwist.pytest_plugin}, which
pytest loads by itself once kvtwist is installed. C{docs/testing.md} has
copy-paste examples for each.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from kvtwist.errors import KVError, StoreUnavailable
from kvtwist.interfaces import (
    ICountedStore,
    IHistoricalStore,
    IKeyValueStore,
    ILeaseListing,
    ILeasingStore,
    IWatchedStore,
)
from kvtwist.model import Check, CommitResult, DeletePrefix, Entry, Op, Page, PageBuilder
from kvtwist.store import leases as lease_rules
from kvtwist.store.history import MemoryHistory, check_compactable, check_readable, check_replayable
from kvtwist.store.listeners import Listeners
from kvtwist.store.rules import count_delta, live

if TYPE_CHECKING:
    from twisted.web.resource import IResource

    from kvtwist.limits import Limits
    from kvtwist.web.http import KVSite

__all__ = [
    "MemoryStore",
    "WatchedMemoryStore",
    "InlineThreadPool",
    "ThreadlessReactor",
    "memory_root",
    "memory_client",
    "KVCacheServer",
    "KVCacheServerMixin",
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

    def keys_under(self, prefix: str) -> List[str]:
        return [key for key in self._rows if key.startswith(prefix)]


class _DictLeases:
    """The L{kvtwist.store.leases.LeaseTable} of a L{MemoryStore}."""

    def __init__(self) -> None:
        self.rows: Dict[int, Tuple[float, float]] = {}
        self.attached: Dict[str, int] = {}
        self._keys: Dict[int, set] = {}

    def lease(self, lease_id: int) -> Optional[Tuple[float, float]]:
        return self.rows.get(lease_id)

    def set_lease(self, lease_id: int, ttl: float, deadline: float) -> None:
        self.rows[lease_id] = (ttl, deadline)

    def drop_lease(self, lease_id: int) -> None:
        self.rows.pop(lease_id, None)
        for key in self._keys.pop(lease_id, ()):
            self.attached.pop(key, None)

    def keys_of(self, lease_id: int) -> List[str]:
        return sorted(self._keys.get(lease_id, ()), key=lambda k: k.encode("utf-8"))

    def attach(self, key: str, lease_id: Optional[int]) -> None:
        before = self.attached.pop(key, None)
        if before is not None:
            self._keys[before].discard(key)
        if lease_id is not None:
            self.attached[key] = lease_id
            self._keys.setdefault(lease_id, set()).add(key)

    def due(self, now: float, limit: int) -> List[int]:
        due = sorted((deadline, lease_id) for lease_id, (_, deadline) in self.rows.items() if deadline <= now)
        return [lease_id for _, lease_id in due[:limit]]

    def count(self) -> int:
        return len(self.rows)

    def held(self, now: float, limit: int) -> List[Tuple[int, float, float]]:
        rows = sorted(
            (deadline, lease_id, ttl) for lease_id, (ttl, deadline) in self.rows.items() if deadline > now
        )
        return [(lease_id, ttl, deadline) for deadline, lease_id, ttl in rows[:limit]]


@implementer(IHistoricalStore, ILeasingStore, ILeaseListing, ICountedStore)
class MemoryStore:
    """
    An in-memory store: every Deferred it returns has already fired. It
    keeps history like the shelve store (reads at a revision, compaction),
    and leases.

    @param clock: decides expiry; a L{Clock} in tests.
    @ivar fail_commits: set to an exception to make every commit, and the
        write probe L{ping}, fail with it (to test how callers handle an
        unavailable store or a full disk).
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
        self.history = MemoryHistory()
        self.leases = _DictLeases()

    @property
    def lease_count(self) -> int:
        return self.leases.count()

    @property
    def next_deadline(self) -> Optional[float]:
        return min((deadline for _, deadline in self.leases.rows.values()), default=None)

    @property
    def compact_revision(self) -> int:
        return self.history.compact_revision

    @property
    def history_size(self) -> int:
        return self.history.size

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

    def list(
        self, prefix: str, after: Optional[str], limit: int, max_bytes: Optional[int] = None
    ) -> Deferred:
        page = _page(self.rows, prefix, after, limit, max_bytes, self.revision, self.clock.seconds())
        return self._guard() or succeed(page)

    def _from_history(self, check: Callable[[], None], answer: Callable[[], Any]) -> Deferred:
        """C{answer()} if the store is open and C{check()} passes, else their failure."""
        guard = self._guard()
        if guard is not None:
            return guard
        try:
            check()
        except KVError as e:
            return fail(e)
        return succeed(answer())

    def get_at(self, key: str, revision: int) -> Deferred:
        return self._from_history(
            lambda: check_readable(revision, self.compact_revision, self.revision),
            lambda: live(self.history.entry_at(key, revision), self.clock.seconds()),
        )

    def list_at(
        self,
        prefix: str,
        after: Optional[str],
        limit: int,
        revision: int,
        max_bytes: Optional[int] = None,
    ) -> Deferred:
        def page() -> Page:
            rows = {}
            for key in self.history.keys():
                entry = self.history.entry_at(key, revision)
                if entry is not None:
                    rows[key] = entry
            return _page(rows, prefix, after, limit, max_bytes, revision, self.clock.seconds())

        return self._from_history(
            lambda: check_readable(revision, self.compact_revision, self.revision), page
        )

    def changes(self, after: int, upto: int, max_records: int) -> Deferred:
        return self._from_history(
            lambda: check_replayable(after, self.compact_revision),
            lambda: self.history.changes(after, min(upto, self.revision), max_records),
        )

    def compact(self, revision: int, max_records: int) -> Deferred:
        return self._from_history(
            lambda: check_compactable(revision, self.revision),
            lambda: self.history.compact(revision, max_records),
        )

    def commit(self, ops: Sequence[Op], checks: Sequence[Check] = ()) -> Deferred:
        return self._guard() or self._apply(
            lambda table, revision, now: lease_rules.commit(
                table, self.leases, revision, ops, checks, now
            ),
            ops,
        )

    def _apply(
        self,
        change: Callable[[_DictTable, int, float], Optional[CommitResult]],
        ops: Optional[Sequence[Op]] = None,
    ) -> Deferred:
        """
        Make one commit with C{change(table, revision, now)}, which returns
        its L{CommitResult} (or L{None} when it had nothing to do) or raises;
        C{ops}, those of a plain commit, are kept in C{commits}.
        """
        if self.fail_commits is not None:
            return fail(self.fail_commits)
        try:
            result = change(_DictTable(self.rows), self.revision, self.clock.seconds())
        except KVError as e:
            return fail(e)
        if result is None:
            return succeed(None)
        self.revision = result.revision
        self.key_count += count_delta(result)
        self.history.record(result)
        if ops is not None:
            self.commits.append(list(ops))
        self._listeners.notify(result)
        return succeed(result)

    def delete_prefix(self, prefix: str, max_keys: int) -> Deferred:
        return self.commit([DeletePrefix(prefix, max_keys)])

    def _leases_now(self, rule, *args, writes: bool = True) -> Deferred:
        """
        Run a lease rule that changes no key, C{rule(leases, *args, now)};
        one that C{writes} fails like a commit under C{fail_commits}.
        """
        guard = self._guard()
        if guard is not None:
            return guard
        if writes and self.fail_commits is not None:
            return fail(self.fail_commits)
        try:
            return succeed(rule(self.leases, *args, self.clock.seconds()))
        except KVError as e:
            return fail(e)

    def grant(self, ttl: float, max_leases: int) -> Deferred:
        return self._leases_now(
            lambda leases, now: lease_rules.grant(leases, ttl, now, max_leases)
        )

    def keepalive(self, lease_id: int) -> Deferred:
        return self._leases_now(lease_rules.renew, lease_id)

    def lease(self, lease_id: int) -> Deferred:
        return self._leases_now(lease_rules.describe, lease_id, writes=False)

    def held_leases(self, limit: int) -> Deferred:
        return self._leases_now(lease_rules.listing, limit, writes=False)

    def revoke(self, lease_id: int) -> Deferred:
        return self._guard() or self._apply(
            lambda table, revision, now: lease_rules.revoke(table, self.leases, revision, lease_id, now)
        )

    def expired_leases(self, limit: int) -> Deferred:
        return self._guard() or succeed(self.leases.due(self.clock.seconds(), limit))

    def expire_lease(self, lease_id: int) -> Deferred:
        return self._guard() or self._apply(
            lambda table, revision, now: lease_rules.expire(table, self.leases, revision, lease_id, now)
        )

    def ping(self) -> Deferred:
        # The ping is a write probe: a store that fails commits fails it.
        guard = self._guard()
        if guard is None and self.fail_commits is not None:
            return fail(self.fail_commits)
        return guard or succeed(None)

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


@implementer(IWatchedStore)
class WatchedMemoryStore(MemoryStore):
    """
    A L{MemoryStore} that says it learns of changes through a watch, as
    etcd does: a test plays the watch's resets by calling each of
    C{reset_listeners} with a L{kvtwist.store.etcd.watchloop.WatchReset}.
    """

    def __init__(self, clock: Optional[IReactorTime] = None) -> None:
        super().__init__(clock)
        self.reset_listeners: List[Callable[[Any], None]] = []

    def add_reset_listener(self, listener: Callable[[Any], None]) -> None:
        self.reset_listeners.append(listener)


def _page(
    rows: Dict[str, Entry],
    prefix: str,
    after: Optional[str],
    limit: int,
    max_bytes: Optional[int],
    revision: int,
    now: float,
) -> Page:
    """One listing page of C{rows} (live entries only), in UTF-8 byte order."""
    builder = PageBuilder(limit, max_bytes, now)
    after_bytes = after.encode("utf-8") if after is not None else None
    keys = sorted((k for k in rows if k.startswith(prefix)), key=lambda k: k.encode("utf-8"))
    for k in keys:
        if (after_bytes is None or k.encode("utf-8") > after_bytes) and not builder.take(rows[k]):
            break
    return builder.page(revision)


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


def memory_client(store: Optional[IKeyValueStore] = None, **options) -> Tuple[Any, Any]:
    """
    An in-memory kvcache and a treq-like client for it, with no network:
    C{(StubTreq(memory_root(store, **options)), store)}. Pass the client
    wherever your code takes treq (every L{kvtwist.client} function does).

    @param store: the store to serve (a fresh L{MemoryStore} by default);
        returned as the second item, to seed it or look into it.
    @param options: more keyword arguments of L{kvtwist.web.root.make_root}
        (C{limits}, C{authorizer}, ...).
    """
    from treq.testing import StubTreq

    if store is None:
        store = MemoryStore()
    return StubTreq(memory_root(store, **options)), store


@implementer(IReactorFromThreads)
class _ReactorThreadCalls:
    """
    The real reactor, except that C{callFromThread} runs the call at once.

    With L{InlineThreadPool}, a store that defers to its thread pool then
    does its work on the reactor thread, synchronously: the on-disk store of
    L{KVCacheServer} opens before C{start} returns, and still has exactly
    one thread touching its files. Time (C{seconds}, C{callLater}) is the
    real reactor's, so TTLs expire in real time.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def callFromThread(self, callable: Callable[..., Any], *args: object, **kwargs: object) -> None:
        callable(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


def _tracking_site(root: IResource, limits: Limits, reactor: Any) -> KVSite:
    """
    kvcache's own site over C{root} (body cap, request deadline, idle
    timeout and connection cap as in production; no access log lines) that
    also keeps each open connection in C{kvtwist_connections}, with a
    Deferred that fires once it is lost, so L{KVCacheServer.stop} can close
    the connections clients keep alive (stopListening alone leaves them
    open, and trial would report the test's reactor as unclean).
    """
    # Imported here, as in KVCacheServer.start: kvtwist.testing stays light
    # for the users of its in-memory fakes alone.
    from kvtwist.web.http import KVChannel, KVSite

    class TrackingSite(KVSite):
        kvtwist_connections: Dict[KVChannel, Deferred]

    class TrackedKVChannel(KVChannel):
        site: TrackingSite

        def connectionMade(self) -> None:
            self.site.kvtwist_connections[self] = Deferred()
            super().connectionMade()

        def connectionLost(self, reason: Failure = connectionDone) -> None:
            try:
                super().connectionLost(reason)
            finally:
                lost = self.site.kvtwist_connections.pop(self, None)
                if lost is not None:
                    lost.callback(None)

    TrackingSite.protocol = TrackedKVChannel
    site = TrackingSite(root, limits, access_log="off", reactor=reactor)
    site.kvtwist_connections = {}
    return site


class KVCacheServer:
    """
    A kvcache served in process over real TCP on 127.0.0.1: the whole
    Resource tree of L{kvtwist.web.root.make_root} behind kvcache's own
    HTTP site (body cap and other limits included), on the running reactor.

        server = KVCacheServer()
        url = server.start()          # "http://127.0.0.1:<free port>"
        ...
        await server.stop()

    Differences from C{twistd kvcache}: the store is a L{MemoryStore} by
    default; with C{data_dir} it is the on-disk shelve store, whose SQLite
    calls then run on the reactor thread (fine for tests, too slow for
    production). C{/v1/healthz} and C{/v1/readyz} are there, C{/v1/metrics}
    and the admin page are not (add routes with C{ops} and
    C{extra_children}); there is no
    access log, and auth is off unless you pass an C{authorizer}.

    @param store: serve this store (already open); the server never closes
        a store it was given. By default it makes its own L{MemoryStore}
        (timed by the real reactor), or, with C{data_dir}, a shelve store.
    @param data_dir: keep the data on disk in this directory (created if
        missing), in the same format as C{twistd kvcache --data}.
    @param limits: a L{kvtwist.limits.Limits} (the defaults otherwise).
    @param sweep: run the expiry sweeper, so expired keys are removed as
        commits and watchers get C{expire} events, as in the real server.
    @param reactor: the reactor to listen on (the global one by default).
    @param root_options: more keyword arguments of C{make_root}
        (C{authorizer}, C{extra_children}, ...).

    @ivar url: the base URL, without a trailing slash, once started.
    @ivar port: the TCP port, once started.
    @ivar store: the store served (for seeding and inspecting it).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        store: Optional[IKeyValueStore] = None,
        *,
        data_dir: Optional[str] = None,
        limits=None,
        sweep: bool = True,
        reactor: Any = None,
        **root_options: Any,
    ) -> None:
        if store is not None and data_dir is not None:
            raise ValueError("pass either a store or a data_dir, not both")
        if reactor is None:
            # Imported here, not at module level: importing the reactor
            # installs it, and pytest-twisted must choose it first.
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        from kvtwist.limits import Limits

        self._reactor = reactor
        self.limits = limits if limits is not None else Limits()
        self._data_dir = data_dir
        self._owns_store = store is None
        self.store: Any = store
        self._sweep = sweep
        self._root_options = root_options
        self._listening: Any = None
        self._site: Any = None
        self._sweeper: Any = None
        self._transactions: Any = None
        self._stopped = False
        self.port: Optional[int] = None

    @property
    def url(self) -> str:
        """The base URL (C{http://127.0.0.1:PORT}); only once started."""
        if self.port is None:
            raise RuntimeError("the kvcache server has not been started")
        return "http://%s:%d" % (self.host, self.port)

    def _open_store(self) -> Any:
        if self._data_dir is None:
            return MemoryStore(clock=self._reactor)
        from kvtwist.store.cache import CachedStore
        from kvtwist.store.shelve_store import ShelveStore

        store = CachedStore(
            ShelveStore(self._data_dir, _ReactorThreadCalls(self._reactor), InlineThreadPool()),
            self.limits.cache_bytes,
        )
        opened: List[Any] = []
        store.open().addBoth(opened.append)
        # Inline threads: the open has finished (or failed) by now.
        if not opened:
            raise RuntimeError("the on-disk store did not open synchronously")
        if isinstance(opened[0], Failure):
            opened[0].raiseException()
        return store

    def start(self) -> str:
        """
        Open the store, listen on a free port of 127.0.0.1 and return the
        base URL. Synchronous: the server answers as soon as the reactor
        runs. A server starts once; after L{stop}, make a new one (on the
        same C{data_dir} to see the same data).

        @raise kvtwist.errors.StoreCorrupt: if C{data_dir} holds a damaged
            store.
        """
        if self._listening is not None:
            raise RuntimeError("the kvcache server is already running")
        if self._stopped:
            # Its own store is closed by now: a new server is the honest way.
            raise RuntimeError("a stopped kvcache server cannot start again; make a new one")
        from kvtwist.sweeper import Sweeper
        from kvtwist.transactions import TransactionManager
        from kvtwist.web.ops import ops_children
        from kvtwist.web.root import make_root

        if self.store is None:
            self.store = self._open_store()
        # Our own transaction manager: its idle timers run on the real
        # reactor, and stop() cancels them (a timer left pending would make
        # trial report an unclean reactor).
        self._transactions = TransactionManager(self._reactor, self.limits, self.store)
        options = dict(self._root_options)
        # /v1/healthz and /v1/readyz as twistd serves them (no
        # /v1/metrics: no registry here); routes the caller passes come on
        # top.
        ops = ops_children(self.store, None, self._reactor)
        ops.update(options.pop("ops", None) or {})
        root = make_root(
            self.store,
            self.limits,
            clock=self._reactor,
            transactions=self._transactions,
            ops=ops,
            **options,
        )
        site = _tracking_site(root, self.limits, self._reactor)
        self._site = site
        self._listening = self._reactor.listenTCP(0, site, interface=self.host)
        self.port = self._listening.getHost().port
        if self._sweep:
            self._sweeper = Sweeper(self.store, self._reactor, self.limits)
            self._sweeper.startService()
        return self.url

    def stop(self) -> Deferred:
        """
        Stop listening, close every open connection, stop the sweeper,
        forget open transactions and close the store (unless it was given).
        Idempotent.

        @return: a Deferred that fires when all of that is done.
        """
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        listening, self._listening = self._listening, None
        if listening is None:
            return
        self._stopped = True
        await listening.stopListening()
        connections = self._site.kvtwist_connections
        lost = list(connections.values())
        for channel in list(connections):
            channel.transport.abortConnection()
        if lost:
            await DeferredList(lost, consumeErrors=True)
        # Code under test often calls the treq module itself, whose global
        # pool keeps each idle connection with a 240 s timer, even after the
        # peer has closed it: trial would call that timer an unclean
        # reactor. Drop the pool's idle connections (it reconnects as needed).
        pool = _treq_global_pool()
        if pool is not None:
            await pool.closeCachedConnections()
        if self._sweeper is not None:
            await _maybe(self._sweeper.stopService())
            self._sweeper = None
        self._transactions.abort_all()
        if self._owns_store:
            await self.store.close()
        # One more turn of the reactor: clients see their end of the
        # aborted connections close (and a pool cancels its idle timers).
        from twisted.internet.task import deferLater

        await deferLater(self._reactor, 0, lambda: None)


def _treq_global_pool() -> Any:
    """The connection pool of the C{treq} module's functions, if made yet."""
    try:
        from treq.api import get_global_pool
    except ImportError:  # a treq without it: nothing to clean
        return None
    return get_global_pool()


def _maybe(result: Any) -> Deferred:
    return result if isinstance(result, Deferred) else succeed(result)


class KVCacheServerMixin:
    """
    Mix into a trial C{twisted.trial.unittest.TestCase} for a real kvcache
    in the test's process:

        class FlagTests(KVCacheServerMixin, TestCase):
            async def test_flag(self):
                url = self.start_kvcache()
                http = self.kvcache_client()
                await client.put(http, url, "flags/beta", b"true")

    Every server started is stopped when the test ends (C{addCleanup}):
    listener, open connections, sweeper, store.
    """

    def start_kvcache(self, **options: Any) -> str:
        """
        Start a L{KVCacheServer} for this test and return its base URL.
        The server is kept as C{self.kvcache} (the last one started).

        @param options: those of L{KVCacheServer}; and C{on_disk=True} for
            the shelve store in a temporary directory removed afterwards.
        """
        if options.pop("on_disk", False) and options.get("data_dir") is None:
            data_dir = tempfile.mkdtemp(prefix="kvtwist-kit-")
            self.addCleanup(shutil.rmtree, data_dir, True)  # type: ignore[attr-defined]
            options["data_dir"] = data_dir
        server = KVCacheServer(**options)
        url = server.start()
        self.addCleanup(server.stop)  # type: ignore[attr-defined]
        self.kvcache = server
        return url

    def kvcache_client(self) -> Any:
        """
        A real treq C{HTTPClient} whose connections are closed when the
        test ends, so no socket outlives it. (Code that uses the C{treq}
        module's own pool works too: stopping the server closes its end.)
        """
        from treq.client import HTTPClient
        from twisted.internet import reactor
        from twisted.web.client import Agent, HTTPConnectionPool

        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)  # type: ignore[attr-defined]
        return HTTPClient(Agent(reactor, pool=pool))
