"""
The durable embedded store: a L{DataShelf} on SQLite, reached only through
one dedicated thread.

Public methods run on the reactor thread and return Deferreds; every method
named C{_sync_*} runs on the store thread (a one-thread pool owned by
L{kvtwist.service.StoreService}) and is the only code that touches the shelf.

Group commit: commits that arrive while the store thread is busy wait in a
queue; the next trip to the thread applies all of them, each with its own
checks and revision, inside one SQLite transaction and one sync. So no
commit waits for more than the sync in progress plus its own.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from zope.interface import implementer

from kvtwist.errors import (
    ConflictError,
    InsufficientStorage,
    KVError,
    LimitExceeded,
    NotAnInteger,
    StoreCorrupt,
    StoreUnavailable,
)
from kvtwist.interfaces import IKeyValueStore, IWorkInFlight
from kvtwist.model import Check, CommitResult, DeletePrefix, Entry, Op, Page, PageBuilder
from kvtwist.store.datalock import DataDirectoryLock, lock_data_dir
from kvtwist.store.listeners import Listeners
from kvtwist.store.rules import apply_commit, count_delta, live, touched_keys
from kvtwist.store.shelf import DataShelf
from kvtwist.store.sqlitemap import SQLiteMapping, is_disk_full

#: The file name of the shelf inside the data directory.
DATA_FILE = "kvcache.sqlite3"

# Shelf key prefixes: user keys, the expiry index and the store's own
# metadata never collide.
_KEY = "k/"
_EXPIRY = "x/"
_REVISION = "m/revision"


def _expiry_key(expires: float, key: str) -> str:
    # Fixed-width so that the index sorts by time (to year 5138).
    return "%s%017.3f/%s" % (_EXPIRY, expires, key)


#: Rows read per statement when a prefix delete scans its keys.
_SCAN_PAGE = 10000

#: In L{_ShelfTable}'s pending writes: the shelf key is to be removed.
_REMOVED = object()


class _ShelfTable:
    """
    The L{kvtwist.store.rules.Table} view of a shelf (store thread only),
    for one read or one group commit.

    Rows read are remembered, and writes are held back until L{flush}, which
    applies all of them in one statement or so: a group commit reads its keys
    in one statement (L{prefetch}) and writes in one, not three statements a
    key (see L{kvtwist.store.sqlitemap.SQLiteMapping.get_many} for why the
    number of statements is what counts). Reads see the writes held back.
    """

    def __init__(self, shelf: DataShelf) -> None:
        self._shelf = shelf
        #: Each key read or written: its entry as the table stands now, or
        #: None when absent.
        self._rows: Dict[str, Optional[Entry]] = {}
        #: Shelf keys changed and not yet flushed: their record, or _REMOVED.
        self._pending: Dict[str, object] = {}

    def prefetch(self, keys: Iterable[str]) -> None:
        """Read every one of C{keys} not read yet, in one go."""
        wanted = [key for key in dict.fromkeys(keys) if key not in self._rows]
        if not wanted:
            return
        records = self._shelf.read_many(_KEY + key for key in wanted)
        for key in wanted:
            record = records.get(_KEY + key)
            self._rows[key] = _entry(key, record) if record is not None else None

    def read(self, key: str) -> Optional[Entry]:
        if key not in self._rows:
            self.prefetch([key])
        return self._rows[key]

    def _unindex(self, key: str) -> None:
        stored = self.read(key)
        if stored is not None and stored.expires is not None:
            self._pending[_expiry_key(stored.expires, key)] = _REMOVED

    def write(self, entry: Entry) -> None:
        self._unindex(entry.key)
        self._rows[entry.key] = entry
        self._pending[_KEY + entry.key] = entry.to_record()
        if entry.expires is not None:
            self._pending[_expiry_key(entry.expires, entry.key)] = entry.mod_revision

    def remove(self, key: str) -> None:
        self._unindex(key)
        self._rows[key] = None
        self._pending[_KEY + key] = _REMOVED

    def keys_under(self, prefix: str) -> List[str]:
        """
        Every key under C{prefix} as the table stands (the shelf's, and this
        group's earlier writes), its rows read in pages as they are scanned.
        """
        cursor: Optional[str] = None
        while True:
            rows = self._shelf.scan(_KEY + prefix, cursor, _SCAN_PAGE)
            for shelf_key, record in rows:
                key = shelf_key[len(_KEY):]
                if key not in self._rows:
                    self._rows[key] = _entry(key, record)
            if len(rows) < _SCAN_PAGE:
                break
            cursor = rows[-1][0]
        return [
            key for key, entry in self._rows.items()
            if entry is not None and key.startswith(prefix)
        ]

    def set_revision(self, revision: int) -> None:
        """Record the store's revision (written by the next L{flush})."""
        self._pending[_REVISION] = revision

    def flush(self) -> None:
        """Write everything held back, inside the caller's transaction."""
        pending, self._pending = self._pending, {}
        self._shelf.write_many(
            {key: record for key, record in pending.items() if record is not _REMOVED},
            [key for key, record in pending.items() if record is _REMOVED],
        )

    def expired(self, now: float, limit: int) -> List[Tuple[str, int]]:
        """Up to C{limit} C{(key, mod_revision)} whose expiry is at or before C{now}."""
        due = []
        for index_key, mod_revision in self._shelf.scan(_EXPIRY, None, limit):
            stamp, _, key = index_key[len(_EXPIRY):].partition("/")
            if float(stamp) > now:
                break
            due.append((key, mod_revision))
        return due


def _entry(key: str, record: object) -> Entry:
    """The L{Entry} a stored record describes; a damaged one is L{StoreCorrupt}."""
    try:
        return Entry.from_record(key, record)  # type: ignore[arg-type]
    except ValueError as e:
        raise StoreCorrupt(str(e))


def open_data_dir(directory: str) -> str:
    """
    Create C{directory} (mode 0700) if needed and return the data file path.
    Runs before the reactor or on the store thread.
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    return os.path.join(directory, DATA_FILE)


def check_data_dir(directory: str) -> int:
    """
    Open the store in C{directory} on the calling thread, verify it and close
    it again; returns its revision. L{kvtwist.tap} calls this before the
    reactor starts, so a damaged store stops startup with a message.

    @raise StoreCorrupt: if the data is damaged or unreadable.
    @raise DataDirectoryBusy: if another process owns the directory.
    """
    with _locked(directory):
        # An older file format is migrated later, on the store thread.
        shelf = DataShelf(_open_mapping(directory, check_integrity=True, migrate=False))
        try:
            return _read_revision(shelf)
        finally:
            shelf.close()


def _open_mapping(directory: str, check_integrity: bool, migrate: bool = True) -> SQLiteMapping:
    """
    The data file of C{directory}, opened (the caller holds the lock); an
    older file format is migrated unless C{migrate} is false (see
    L{SQLiteMapping}).

    @raise StoreCorrupt: if the data is damaged or unreadable.
    """
    try:
        return SQLiteMapping(
            open_data_dir(directory), check_integrity=check_integrity, migrate=migrate
        )
    except OSError as e:
        raise _write_failure(
            e, "cannot open the data directory %s" % (directory,), directory, StoreCorrupt
        )


def _write_failure(
    error: BaseException, what: str, directory: str, other=StoreUnavailable
) -> KVError:
    """
    The domain error for a write into C{directory} that failed with
    C{error}: itself if it is one, L{InsufficientStorage} for a full disk,
    else C{other}; C{what} says what could not be done.
    """
    if isinstance(error, KVError):
        return error
    if is_disk_full(error, directory):
        return InsufficientStorage("%s: disk full (%s)" % (what, error))
    return other("%s: %s" % (what, error))


def hold_data_dir(directory: str) -> DataDirectoryLock:
    """
    Take (or share, within this process) C{directory}'s lock; see
    L{kvtwist.store.datalock}.

    @raise DataDirectoryBusy: if another process owns the directory.
    @raise StoreCorrupt: if the directory or its lock file cannot be made.
    """
    try:
        return lock_data_dir(directory)
    except OSError as e:
        raise _write_failure(
            e, "cannot open the data directory %s" % (directory,), directory, StoreCorrupt
        )


@contextmanager
def _locked(directory: str) -> Iterator[DataDirectoryLock]:
    """Hold C{directory}'s lock for the block (L{hold_data_dir})."""
    lock = hold_data_dir(directory)
    try:
        yield lock
    finally:
        lock.release()


def _read_revision(shelf: DataShelf) -> int:
    try:
        revision = shelf[_REVISION]
    except KeyError:
        return 0
    if type(revision) is not int or revision < 0:
        raise StoreCorrupt("the store's revision record is damaged")
    return revision


#: A queued commit: its ops, checks, the Deferred of its answer, and how
#: many trips had finished when it was submitted.
_PendingCommit = Tuple[Sequence[Op], Sequence[Check], Deferred, int]


def _commits(count: int, ops: int) -> str:
    return "%d commit%s (%d ops)" % (count, "" if count == 1 else "s", ops)


@implementer(IKeyValueStore, IWorkInFlight)
class ShelveStore:
    """
    The shelve store in directory C{directory}.

    @param reactor: provides L{IReactorFromThreads} (to come back from the
        store thread) and L{IReactorTime} (the clock that decides expiry).
    @param threadpool: the one-thread pool that owns the shelf; started and
        stopped by its Service, never shared.
    @param check_integrity: run SQLite's C{quick_check} at open (skip it when
        a preflight has just done so).
    """

    def __init__(
        self,
        directory: str,
        reactor: IReactorFromThreads,
        threadpool,
        check_integrity: bool = True,
    ) -> None:
        self.directory = directory
        self.revision = 0
        self._reactor = reactor
        self.clock: IReactorTime = reactor  # type: ignore[assignment]
        self._pool = threadpool
        self._check_integrity = check_integrity
        self._shelf: Optional[DataShelf] = None
        self._lock: Optional[DataDirectoryLock] = None
        self._open = False
        self._queue: List[_PendingCommit] = []
        self._flushing: Optional[Deferred] = None
        self._listeners = Listeners()
        #: Live and not-yet-swept keys, kept from commit changes.
        self.key_count = 0
        #: Called on the reactor thread after each group commit with the
        #: seconds its SQLite COMMIT (the sync) took and how many commits
        #: it carried; for metrics.
        self.sync_observer: Optional[Callable[[float, int], None]] = None
        #: Called on the reactor thread for each commit answered, with how
        #: many trips to the store thread (each one sync) finished between
        #: its submission and its answer, its own included: 1 if the thread
        #: was idle, 2 if it had to wait for the trip in progress, never
        #: more (the group-commit promise, measured); for metrics.
        self.syncs_waited_observer: Optional[Callable[[int], None]] = None
        self._trips_done = 0
        #: Commits and ops of the group commit on the store thread now.
        self._trip_size: Optional[Tuple[int, int]] = None
        #: Reads sent to the store thread and not answered yet.
        self._reads = 0
        self._closing = False

    # -- reactor thread --------------------------------------------------

    def _run(self, function, *args) -> Deferred:
        if not self._open:
            return fail(StoreUnavailable("the store is closed"))
        self._reads += 1

        def answered(result: object) -> object:
            self._reads -= 1
            return result

        return deferToThreadPool(self._reactor, self._pool, function, *args).addBoth(answered)

    def work_in_flight(self) -> str:
        parts: List[str] = []
        if self._trip_size is not None:
            parts.append("a group of %s on the store thread" % (_commits(*self._trip_size),))
        if self._queue:
            queued_ops = sum(len(ops) for ops, _, _, _ in self._queue)
            parts.append("%s queued" % (_commits(len(self._queue), queued_ops),))
        if self._reads:
            parts.append("%d read%s" % (self._reads, "" if self._reads == 1 else "s"))
        if self._closing:
            parts.append("closing the store file")
        return " and ".join(parts) or "nothing"

    def open(self) -> Deferred:
        d = deferToThreadPool(self._reactor, self._pool, self._sync_open)

        def opened(state: Tuple[int, int]) -> None:
            self.revision, self.key_count = state
            self._open = True

        return d.addCallback(opened)

    def close(self) -> Deferred:
        if not self._open:
            return succeed(None)
        # From now on new reads and commits are refused (503); commits
        # already queued still finish before the shelf closes.
        self._open = False
        d = Deferred.fromCoroutine(self._drain())

        def close_file(_: object) -> Deferred:
            self._closing = True
            return deferToThreadPool(self._reactor, self._pool, self._sync_close)

        return d.addCallback(close_file)

    async def _drain(self) -> None:
        while self._flushing is not None:
            await self._flushing

    def get(self, key: str) -> Deferred:
        return self._run(self._sync_get, key, self.clock.seconds())

    def get_many(self, keys: Iterable[str]) -> Deferred:
        return self._run(self._sync_get_many, list(keys), self.clock.seconds())

    def list(
        self, prefix: str, after: Optional[str], limit: int, max_bytes: Optional[int] = None
    ) -> Deferred:
        return self._run(self._sync_list, prefix, after, limit, max_bytes, self.clock.seconds())

    def ping(self) -> Deferred:
        d = self._run(self._sync_ping)

        def failed(reason: Failure) -> Failure:
            return Failure(
                _write_failure(reason.value, "the store cannot write", self.directory)
            )

        return d.addErrback(failed)

    def add_listener(self, listener) -> None:
        self._listeners.add(listener)

    def expired(self, limit: int) -> Deferred:
        return self._run(self._sync_expired, self.clock.seconds(), limit)

    def delete_prefix(self, prefix: str, max_keys: int) -> Deferred:
        # A commit like any other: it queues, joins a group and is synced
        # with it.
        return self.commit([DeletePrefix(prefix, max_keys)])

    def commit(self, ops: Sequence[Op], checks: Sequence[Check] = ()) -> Deferred:
        if not self._open:
            return fail(StoreUnavailable("the store is closed"))
        d: Deferred = Deferred()
        self._queue.append((list(ops), list(checks), d, self._trips_done))
        self._flush()
        return d

    def _flush(self) -> None:
        """Send every queued commit to the store thread, unless a trip is on."""
        if self._flushing is not None or not self._queue:
            return
        batch, self._queue = self._queue, []
        flushing: Deferred = Deferred()
        self._flushing = flushing
        self._trip_size = (len(batch), sum(len(ops) for ops, _, _, _ in batch))
        d = deferToThreadPool(
            self._reactor,
            self._pool,
            self._sync_commit_group,
            [(ops, checks) for ops, checks, _, _ in batch],
            self.clock.seconds(),
        )

        def waited() -> None:
            # This trip is the (_trips_done + 1)th to finish.
            if self.syncs_waited_observer is not None:
                for _, _, _, done_before in batch:
                    self.syncs_waited_observer(self._trips_done + 1 - done_before)

        def applied(done: Tuple[List[object], float]) -> None:
            outcomes, sync_seconds = done
            if self.sync_observer is not None:
                self.sync_observer(sync_seconds, len(batch))
            waited()
            for (_, _, waiter, _), outcome in zip(batch, outcomes):
                if isinstance(outcome, CommitResult):
                    self.revision = max(self.revision, outcome.revision)
                    self.key_count += count_delta(outcome)
                    self._listeners.notify(outcome)
                    waiter.callback(outcome)
                else:
                    waiter.errback(Failure(outcome))

        def failed(reason: Failure) -> None:
            error = _write_failure(
                reason.value, "the commit could not be written", self.directory
            )
            waited()
            for _, _, waiter, _ in batch:
                waiter.errback(Failure(error))

        def next_trip(_: object) -> None:
            self._trips_done += 1
            self._trip_size = None
            self._flushing = None
            flushing.callback(None)
            self._flush()

        d.addCallbacks(applied, failed).addBoth(next_trip)

    # -- store thread ----------------------------------------------------

    def _sync_open(self) -> Tuple[int, int]:
        """
        Store thread: open (creating if needed) and verify the shelf; return
        its revision and how many keys it holds.
        """
        # Held until the shelf closes: no other process writes the file.
        lock = hold_data_dir(self.directory)
        try:
            mapping = _open_mapping(self.directory, self._check_integrity)
        except BaseException:
            lock.release()
            raise
        self._lock = lock
        self._shelf = DataShelf(mapping)
        return _read_revision(self._shelf), mapping.count_prefix(_KEY.encode("ascii"))

    def _sync_shelf(self) -> DataShelf:
        """Store thread: the open shelf, or StoreUnavailable once closed."""
        if self._shelf is None:
            raise StoreUnavailable("the store is closed")
        return self._shelf

    def _sync_close(self) -> None:
        """Store thread: close the shelf (its file is then marked clean)."""
        if self._shelf is not None:
            try:
                self._shelf.close()
            finally:
                self._shelf = None
                if self._lock is not None:
                    self._lock.release()
                    self._lock = None

    def _sync_get(self, key: str, now: float) -> Optional[Entry]:
        """Store thread: read one live entry."""
        return live(_ShelfTable(self._sync_shelf()).read(key), now)

    def _sync_get_many(self, keys: List[str], now: float) -> Dict[str, Entry]:
        """Store thread: read several live entries at one revision."""
        shelf = self._sync_shelf()
        table = _ShelfTable(shelf)
        found = {}
        with shelf.dict.snapshot():
            table.prefetch(keys)
            for key in keys:
                entry = live(table.read(key), now)
                if entry is not None:
                    found[key] = entry
        return found

    def _sync_list(
        self, prefix: str, after: Optional[str], limit: int, max_bytes: Optional[int], now: float
    ) -> Page:
        """Store thread: one page of live entries, read at one revision."""
        shelf = self._sync_shelf()
        builder = PageBuilder(limit, max_bytes, now)
        cursor = after
        with shelf.dict.snapshot():
            revision = _read_revision(shelf)
            reading = True
            while reading:
                batch = builder.batch()
                rows = shelf.scan(_KEY + prefix, _KEY + cursor if cursor is not None else None, batch)
                for shelf_key, record in rows:
                    key = shelf_key[len(_KEY):]
                    cursor = key
                    if not builder.take(_entry(key, record)):
                        reading = False
                        break
                if len(rows) < batch:
                    break
        return builder.page(revision)

    def _sync_expired(self, now: float, limit: int) -> List[Tuple[str, int]]:
        """Store thread: the expiry index's entries that are due."""
        shelf = self._sync_shelf()
        with shelf.dict.snapshot():
            return _ShelfTable(shelf).expired(now, limit)

    def _sync_ping(self) -> None:
        """Store thread: a small durable write (L{SQLiteMapping.ping})."""
        self._sync_shelf().dict.ping()

    def _sync_commit_group(
        self, group: List[Tuple[Sequence[Op], Sequence[Check]]], now: float
    ) -> Tuple[List[object], float]:
        """
        Store thread: apply each commit of C{group} in order, in one SQLite
        transaction and one sync. Returns, per commit, its L{CommitResult} or
        its L{ConflictError}, and the seconds the sync took. If the
        transaction fails, nothing of the group is applied and the exception
        propagates.
        """
        shelf = self._sync_shelf()
        table = _ShelfTable(shelf)
        outcomes: List[object] = []
        with shelf.dict.transaction() as timing:
            revision = _read_revision(shelf)
            table.prefetch(
                key for ops, checks in group for key in touched_keys(ops, checks)
            )
            for ops, checks in group:
                try:
                    result = apply_commit(table, revision, ops, checks, now)
                except (ConflictError, LimitExceeded, NotAnInteger) as e:
                    # Refused before any write: the group's other commits
                    # go on.
                    outcomes.append(e)
                    continue
                revision = result.revision
                outcomes.append(result)
            table.set_revision(revision)
            table.flush()
        return outcomes, timing.sync_seconds

