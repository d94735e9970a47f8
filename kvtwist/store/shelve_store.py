# -*- test-case-name: tests.contract.test_store_shelve -*-
"""
The durable embedded store: a L{DataShelf} on SQLite, reached only through
one dedicated thread.

Public methods run on the reactor thread and return Deferreds; every method
named C{_sync_*} runs on the store thread (a one-thread pool owned by
L{kvtwist.service.StoreService}) and is the only code that touches the shelf.

History: every change is also written to the history table (see
L{kvtwist.interfaces.IHistoricalStore}) by the same flush, in the same
SQLite transaction as the data, so a crash never separates them; a commit
adds one history row per key it changed, whatever the store's size.

Leases: the lease rows and key attachments live in their own tables of
the same SQLite file (L{kvtwist.store.sqlitemap}), changed by the same
transaction as the data. Grants, keepalives, revokes and expiries are
queued with the commits, so each is durable (synced) before it is answered:
a keepalive acknowledged before a crash is never lost after it.

Group commit: commits that arrive while the store thread is busy wait in a
queue; the next trip to the thread applies all of them, each with its own
checks and revision, inside one SQLite transaction and one sync. So no
commit waits for more than the sync in progress plus its own.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from zope.interface import implementer

from kvtwist.errors import FutureRevision, KVError, StoreUnavailable
from kvtwist.interfaces import ICountedStore, IHistoricalStore, ILeaseListing, ILeasingStore, IWorkInFlight
from kvtwist.model import Change, Check, CommitResult, DeletePrefix, Entry, Op, Page, PageBuilder
from kvtwist.store import leases as lease_rules
from kvtwist.store.datadir import hold_data_dir, open_mapping, write_failure
from kvtwist.store.datalock import DataDirectoryLock
from kvtwist.store.history import (
    PUT,
    check_compactable,
    check_readable,
    check_replayable,
    replayed_change,
)
from kvtwist.store.listeners import Listeners
from kvtwist.store.rules import count_delta, live, touched_keys
from kvtwist.store.shelf import DataShelf
from kvtwist.store.shelf_layout import (
    COMPACT_REVISION,
    KEY_PREFIX,
    REBUILD_CHUNK,
    ShelfLeases,
    ShelfTable,
    entry_of,
    history_entry,
    read_compact_revision,
    read_revision,
)

def _collect_page(
    fetch: Callable[[Optional[str], int], List[Tuple[str, Optional[Entry]]]],
    revision: int,
    after: Optional[str],
    limit: int,
    max_bytes: Optional[int],
    now: float,
) -> Page:
    """
    One page (L{PageBuilder}: C{limit} entries, C{max_bytes}) of the live
    entries after C{after}: C{fetch(cursor, count)} gives up to C{count}
    C{(key, entry or None)} in key order after C{cursor}; absent (a history
    tombstone) and expired ones are skipped, fetching on as needed.
    """
    builder = PageBuilder(limit, max_bytes, now)
    cursor = after
    reading = True
    while reading:
        batch = builder.batch()
        rows = fetch(cursor, batch)
        for key, entry in rows:
            cursor = key
            if entry is not None and not builder.take(entry):
                reading = False
                break
        if len(rows) < batch:
            break
    return builder.page(revision)


#: One change to apply on the store thread: C{(keys, change)}, where
#: C{change(table, leases, revision, now)} (store thread) returns a
#: L{CommitResult}, a L{kvtwist.model.Lease} or L{None}, or raises a
#: L{KVError} having changed nothing; C{keys} are the keys it reads, read
#: ahead with the rest of its group.
_Work = Tuple[Sequence[str], Callable[["ShelfTable", ShelfLeases, int, float], object]]

#: A queued change: its work, the Deferred of its answer, and how many
#: trips had finished when it was submitted.
_PendingCommit = Tuple[_Work, Deferred, int]


def _op_count(work: _Work) -> int:
    """How many keys a queued change names (a commit's ops and checks; none for a lease change)."""
    return len(work[0])


def _commits(count: int, ops: int) -> str:
    return "%d commit%s (%d ops)" % (count, "" if count == 1 else "s", ops)


@implementer(IHistoricalStore, ILeasingStore, ILeaseListing, IWorkInFlight, ICountedStore)
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
        self.compact_revision = 0
        self.history_size = 0
        self.lease_count = 0
        #: Each lease's deadline as this store last granted or renewed it
        #: (reactor thread), for next_deadline.
        self._deadlines: Dict[int, float] = {}
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
            queued_ops = sum(_op_count(work) for work, _, _ in self._queue)
            parts.append("%s queued" % (_commits(len(self._queue), queued_ops),))
        if self._reads:
            parts.append("%d read%s" % (self._reads, "" if self._reads == 1 else "s"))
        if self._closing:
            parts.append("closing the store file")
        return " and ".join(parts) or "nothing"

    def open(self) -> Deferred:
        d = deferToThreadPool(self._reactor, self._pool, self._sync_open)

        def opened(state: Tuple[int, int, int, int, Dict[int, float]]) -> None:
            (
                self.revision,
                self.key_count,
                self.compact_revision,
                self.history_size,
                self._deadlines,
            ) = state
            self.lease_count = len(self._deadlines)
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

    def get_at(self, key: str, revision: int) -> Deferred:
        return self._read_at(revision, self._sync_get_at, key, revision, self.clock.seconds())

    def list_at(
        self,
        prefix: str,
        after: Optional[str],
        limit: int,
        revision: int,
        max_bytes: Optional[int] = None,
    ) -> Deferred:
        return self._read_at(
            revision, self._sync_list_at, prefix, after, limit, revision, max_bytes,
            self.clock.seconds(),
        )

    def _read_at(self, revision: int, function, *args) -> Deferred:
        # A revision not acknowledged yet is the future even if the store
        # thread has written it; compaction is checked on the thread.
        if revision > self.revision:
            return fail(FutureRevision(revision, self.revision))
        return self._run(function, *args)

    def changes(self, after: int, upto: int, max_records: int) -> Deferred:
        # Only acknowledged commits are replayed.
        return self._run(self._sync_changes, after, min(upto, self.revision), max_records)

    def compact(self, revision: int, max_records: int) -> Deferred:
        try:
            check_compactable(revision, self.revision)
        except KVError as e:
            return fail(e)
        if revision <= self.compact_revision:
            return succeed(self.compact_revision)

        def compacted(done: Tuple[int, int]) -> int:
            self.compact_revision, removed = done
            self.history_size -= removed
            return self.compact_revision

        return self._run(self._sync_compact, revision, max_records).addCallback(compacted)

    def ping(self) -> Deferred:
        d = self._run(self._sync_ping)

        def failed(reason: Failure) -> Failure:
            return Failure(
                write_failure(reason.value, "the store cannot write", self.directory)
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
        ops, checks = list(ops), list(checks)
        return self._submit(
            touched_keys(ops, checks),
            lambda table, leases, revision, now: lease_rules.commit(
                table, leases, revision, ops, checks, now
            ),
        )

    def _submit(self, keys: Sequence[str], change) -> Deferred:
        """Queue one change (see L{_Work}) for the next trip to the store thread."""
        if not self._open:
            return fail(StoreUnavailable("the store is closed"))
        d: Deferred = Deferred()
        self._queue.append(((keys, change), d, self._trips_done))
        self._flush()
        return d

    @property
    def next_deadline(self) -> Optional[float]:
        return min(self._deadlines.values(), default=None)

    def _track(self, lease):
        """Keep a granted or renewed lease's deadline for next_deadline."""
        self._deadlines[lease.id] = lease.deadline
        return lease

    def _untrack(self, lease_id: int, outcome: object) -> object:
        """Forget a lease that ended (a revoke, an expiry, or not found)."""
        self._deadlines.pop(lease_id, None)
        return outcome

    def grant(self, ttl: float, max_leases: int) -> Deferred:
        return self._submit(
            (), lambda table, leases, revision, now: lease_rules.grant(leases, ttl, now, max_leases)
        ).addCallback(self._track)

    def keepalive(self, lease_id: int) -> Deferred:
        return self._submit(
            (), lambda table, leases, revision, now: lease_rules.renew(leases, lease_id, now)
        ).addCallback(self._track)

    def lease(self, lease_id: int) -> Deferred:
        return self._run(self._sync_lease, lease_id, self.clock.seconds())

    def held_leases(self, limit: int) -> Deferred:
        return self._run(self._sync_leases, limit, self.clock.seconds())

    def revoke(self, lease_id: int) -> Deferred:
        d = self._submit(
            (),
            lambda table, leases, revision, now: lease_rules.revoke(
                table, leases, revision, lease_id, now
            ),
        )
        return d.addCallback(lambda result: self._untrack(lease_id, result))

    def expired_leases(self, limit: int) -> Deferred:
        return self._run(self._sync_expired_leases, self.clock.seconds(), limit)

    def expire_lease(self, lease_id: int) -> Deferred:
        d = self._submit(
            (),
            lambda table, leases, revision, now: lease_rules.expire(
                table, leases, revision, lease_id, now
            ),
        )
        # Not due (None): renewed meanwhile, its deadline is tracked already.
        return d.addCallback(
            lambda result: result if result is None else self._untrack(lease_id, result)
        )

    def _flush(self) -> None:
        """Send every queued commit to the store thread, unless a trip is on."""
        if self._flushing is not None or not self._queue:
            return
        batch, self._queue = self._queue, []
        flushing: Deferred = Deferred()
        self._flushing = flushing
        self._trip_size = (len(batch), sum(_op_count(work) for work, _, _ in batch))
        d = deferToThreadPool(
            self._reactor,
            self._pool,
            self._sync_commit_group,
            [work for work, _, _ in batch],
            self.clock.seconds(),
        )

        def waited() -> None:
            # This trip is the (_trips_done + 1)th to finish.
            if self.syncs_waited_observer is not None:
                for _, _, done_before in batch:
                    self.syncs_waited_observer(self._trips_done + 1 - done_before)

        def applied(done: Tuple[List[object], float, int]) -> None:
            outcomes, sync_seconds, self.lease_count = done
            if self.sync_observer is not None:
                self.sync_observer(sync_seconds, len(batch))
            waited()
            # Every listener hears of the whole group before any commit of
            # it is answered: a listener that batches (the workers' change
            # feed) sends the group as one message.
            for outcome in outcomes:
                if isinstance(outcome, CommitResult):
                    self.revision = max(self.revision, outcome.revision)
                    self.key_count += count_delta(outcome)
                    self.history_size += len(outcome.changes)
                    self._listeners.notify(outcome)
            for (_, waiter, _), outcome in zip(batch, outcomes):
                if isinstance(outcome, KVError):
                    waiter.errback(Failure(outcome))
                else:
                    waiter.callback(outcome)

        def failed(reason: Failure) -> None:
            error = write_failure(
                reason.value, "the commit could not be written", self.directory
            )
            waited()
            for _, waiter, _ in batch:
                waiter.errback(Failure(error))

        def next_trip(_: object) -> None:
            self._trips_done += 1
            self._trip_size = None
            self._flushing = None
            flushing.callback(None)
            self._flush()

        d.addCallbacks(applied, failed).addBoth(next_trip)

    # -- store thread ----------------------------------------------------

    def _sync_open(self) -> Tuple[int, int, int, int, Dict[int, float]]:
        """
        Store thread: open (creating if needed) and verify the shelf; return
        its revision, how many keys it holds, its compact revision, how
        many history records it keeps and its leases' deadlines.
        """
        # Held until the shelf closes: no other process writes the file.
        lock = hold_data_dir(self.directory)
        try:
            mapping = open_mapping(self.directory, self._check_integrity)
        except BaseException:
            lock.release()
            raise
        self._lock = lock
        self._shelf = DataShelf(mapping)
        revision = read_revision(self._shelf)
        compact_revision = self._sync_prepare_history(revision)
        return (
            revision,
            mapping.count_prefix(KEY_PREFIX.encode("ascii")),
            compact_revision,
            mapping.history_count(),
            mapping.lease_deadlines(),
        )

    def _sync_prepare_history(self, revision: int) -> int:
        """
        Store thread: make sure the history covers the data, and return the
        compact revision. A store that had data before it kept history (or
        was written meanwhile by a kvtwist that kept none: its newest
        history record is older than its revision, with no compaction to
        explain it) gets its history rebuilt from the keys, compacted at
        the present.
        """
        shelf = self._sync_shelf()
        mapping = shelf.dict
        compact_revision = read_compact_revision(shelf)
        newest = mapping.history_bounds()[1] or 0
        if not mapping.history_created and (newest >= revision or compact_revision >= revision):
            return compact_revision
        with mapping.transaction():
            mapping.clear_history()
            cursor = None
            while True:
                rows = shelf.scan(KEY_PREFIX, cursor, REBUILD_CHUNK)
                shelf.write_history(
                    (key[len(KEY_PREFIX):], record[3], PUT, record)  # type: ignore[index]
                    for key, record in rows
                )
                if len(rows) < REBUILD_CHUNK:
                    break
                cursor = rows[-1][0]
            mapping.set_state(COMPACT_REVISION, str(revision))
        return revision

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
        return live(ShelfTable(self._sync_shelf()).read(key), now)

    def _sync_get_many(self, keys: List[str], now: float) -> Dict[str, Entry]:
        """Store thread: read several live entries at one revision."""
        shelf = self._sync_shelf()
        table = ShelfTable(shelf)
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

        def fetch(cursor: Optional[str], count: int) -> List[Tuple[str, Optional[Entry]]]:
            rows = shelf.scan(KEY_PREFIX + prefix, KEY_PREFIX + cursor if cursor is not None else None, count)
            return [
                (shelf_key[len(KEY_PREFIX):], entry_of(shelf_key[len(KEY_PREFIX):], record))
                for shelf_key, record in rows
            ]

        with shelf.dict.snapshot():
            revision = read_revision(shelf)
            return _collect_page(fetch, revision, after, limit, max_bytes, now)

    def _sync_check_readable(self, revision: int) -> None:
        """Store thread, in a snapshot: refuse a compacted revision."""
        shelf = self._sync_shelf()
        check_readable(revision, read_compact_revision(shelf), read_revision(shelf))

    def _sync_get_at(self, key: str, revision: int, now: float) -> Optional[Entry]:
        """Store thread: one key as of C{revision}, if live."""
        shelf = self._sync_shelf()
        with shelf.dict.snapshot():
            self._sync_check_readable(revision)
            return live(history_entry(shelf.history_at(key, revision)), now)

    def _sync_list_at(
        self,
        prefix: str,
        after: Optional[str],
        limit: int,
        revision: int,
        max_bytes: Optional[int],
        now: float,
    ) -> Page:
        """Store thread: one page of the entries live as of C{revision}."""
        shelf = self._sync_shelf()

        def fetch(cursor: Optional[str], count: int) -> List[Tuple[str, Optional[Entry]]]:
            return [
                (record[0], history_entry(record))
                for record in shelf.history_scan(prefix, cursor, revision, count)
            ]

        with shelf.dict.snapshot():
            self._sync_check_readable(revision)
            return _collect_page(fetch, revision, after, limit, max_bytes, now)

    def _sync_changes(self, after: int, upto: int, max_records: int) -> List[CommitResult]:
        """Store thread: the commits in C{(after, upto]} from the history, whole."""
        shelf = self._sync_shelf()
        grouped: Dict[int, List[Change]] = {}
        with shelf.dict.snapshot():
            check_replayable(after, read_compact_revision(shelf))
            for record, previous in shelf.history_changes(after, upto, max_records):
                key, revision, kind, _ = record
                grouped.setdefault(revision, []).append(
                    replayed_change(kind, key, history_entry(record), history_entry(previous))
                )
        return [CommitResult(revision, tuple(changes)) for revision, changes in grouped.items()]

    def _sync_compact(self, revision: int, max_records: int) -> Tuple[int, int]:
        """
        Store thread: one bounded compaction step towards C{revision}, in
        its own durable transaction; returns the compact revision after it
        and how many history records it removed.
        """
        shelf = self._sync_shelf()
        mapping = shelf.dict
        with mapping.transaction():
            lower = read_compact_revision(shelf)
            if revision <= lower:
                return lower, 0
            reached, removed = mapping.compact_history(lower, revision, max_records)
            mapping.set_state(COMPACT_REVISION, str(reached))
        return reached, removed

    def _sync_expired(self, now: float, limit: int) -> List[Tuple[str, int]]:
        """Store thread: the expiry index's entries that are due."""
        shelf = self._sync_shelf()
        with shelf.dict.snapshot():
            return ShelfTable(shelf).expired(now, limit)

    def _sync_lease(self, lease_id: int, now: float):
        """Store thread: a held lease with its keys."""
        shelf = self._sync_shelf()
        with shelf.dict.snapshot():
            return lease_rules.describe(ShelfLeases(shelf), lease_id, now)

    def _sync_leases(self, limit: int, now: float):
        """Store thread: the leases held, with their keys, read at one snapshot."""
        shelf = self._sync_shelf()
        with shelf.dict.snapshot():
            return lease_rules.listing(ShelfLeases(shelf), limit, now)

    def _sync_expired_leases(self, now: float, limit: int) -> List[int]:
        """Store thread: the ids of leases past their deadline."""
        return self._sync_shelf().dict.due_leases(now, limit)

    def _sync_ping(self) -> None:
        """Store thread: a small durable write (L{SQLiteMapping.ping})."""
        self._sync_shelf().dict.ping()

    def _sync_commit_group(
        self, group: List[_Work], now: float
    ) -> Tuple[List[object], float, int]:
        """
        Store thread: apply each change of C{group} (commits and lease
        changes) in order, in one SQLite transaction and one sync. Returns,
        per change, its outcome (a L{CommitResult}, a lease, L{None}) or its
        L{KVError} (a failed check, an unknown lease: that change alone
        applied nothing), the seconds the sync took, and the leases held
        after it. If the transaction fails, nothing of the group is applied
        and the exception propagates.
        """
        shelf = self._sync_shelf()
        table = ShelfTable(shelf)
        leases = ShelfLeases(shelf)
        outcomes: List[object] = []
        with shelf.dict.transaction() as timing:
            revision = read_revision(shelf)
            table.prefetch(key for keys, _ in group for key in keys)
            for _, change in group:
                try:
                    outcome = change(table, leases, revision, now)
                except KVError as e:
                    outcomes.append(e)
                    continue
                if isinstance(outcome, CommitResult):
                    revision = outcome.revision
                    table.record_history(outcome)
                outcomes.append(outcome)
            table.set_revision(revision)
            table.flush()
            leases.flush()
            lease_count = leases.count()
        return outcomes, timing.sync_seconds, lease_count

