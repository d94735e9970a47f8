# -*- test-case-name: tests.contract.test_store_memory,tests.contract.test_store_shelve -*-
"""
The contracts kvtwist's parts are written against: the store every backend
implements (memory, shelve, etcd), and the transactions clients stage into
(kept in node memory, or in etcd so that every node sees them).

Resources and services depend on these interfaces only. Every method that
may wait returns a L{Deferred}; its docstring says what the Deferred fires
with and which L{kvtwist.errors} it fails with.
"""

from zope.interface import Attribute, Interface


class IKeyValueStore(Interface):
    """
    A revisioned key-value store with atomic multi-op commits.

    Revisions: the store has a global C{revision} that increases with every
    commit that changes at least one key. On the shelve and memory stores it
    increases by exactly one per such commit; on etcd it may skip numbers.
    Each key carries C{create_revision}, C{mod_revision} (its ETag) and
    C{version} (see L{kvtwist.model.Entry}). A deleted key is gone: writing
    it again creates it anew.

    Expiry: an entry whose C{expires} is at or before the store clock's
    C{seconds()} is treated as absent by every read, listing and check.
    """

    revision = Attribute(
        "The global revision of the last commit this store has acknowledged "
        "(0 for an empty store). Readable on the reactor thread without I/O."
    )

    clock = Attribute(
        "The IReactorTime whose seconds() decides which keys have expired."
    )

    def open():
        """
        Open the store, checking its data.

        @return: a Deferred firing with L{None} once the store serves.
        @raise kvtwist.errors.StoreCorrupt: (in the Deferred) if the data is
            damaged or not a kvtwist store.
        """

    def close():
        """
        Finish in-flight commits, then release the store's resources.

        @return: a Deferred firing with L{None} when closed. Calls made after
            close fail with L{kvtwist.errors.StoreUnavailable}.
        """

    def get(key):
        """
        Read one committed key.

        @param key: a L{str}.
        @return: a Deferred firing with a L{kvtwist.model.Entry}, or L{None}
            if the key is absent or expired.
        @raise kvtwist.errors.StoreUnavailable: if the store cannot be read.
        """

    def get_many(keys):
        """
        Read several committed keys at one revision.

        @param keys: an iterable of L{str}.
        @return: a Deferred firing with a L{dict} from each key that exists
            to its L{kvtwist.model.Entry}; absent keys are left out.
        @raise kvtwist.errors.StoreUnavailable: if the store cannot be read.
        """

    def list(prefix, after, limit, max_bytes=None):
        """
        List live keys starting with C{prefix}, in UTF-8 byte order, strictly
        after the key C{after} (or from the start when it is L{None}).

        @param limit: the most entries to return (at least 1).
        @param max_bytes: if not L{None}, the page ends with the entry whose
            key and value bytes bring the page's total to this bound (so it
            holds at least one entry), and the store reads not much more
            than that (L{kvtwist.model.PageBuilder}).
        @return: a Deferred firing with a L{kvtwist.model.Page} read at one
            revision.
        @raise kvtwist.errors.StoreUnavailable: if the store cannot be read.
        """

    def commit(ops, checks=()):
        """
        Apply C{ops} atomically and durably if every check in C{checks} holds.

        Ops apply in order; a later op on the same key overrides an earlier
        one. The Deferred fires only once the commit is durable (synced to
        disk for the shelve store, accepted by a quorum for etcd).

        @param ops: a sequence of L{kvtwist.model.Put} and
            L{kvtwist.model.Delete}.
        @param checks: a sequence of L{kvtwist.model.Check}, evaluated against
            the state just before the commit.
        @return: a Deferred firing with a L{kvtwist.model.CommitResult}.
        @raise kvtwist.errors.ConflictError: if any check failed; nothing was
            applied, and the error lists every failed check.
        @raise kvtwist.errors.StoreUnavailable: if the commit could not be
            made durable; nothing was applied. A full disk is its subclass
            L{kvtwist.errors.InsufficientStorage}.
        """

    def delete_prefix(prefix, max_keys):
        """
        Delete every live key that starts with C{prefix} (C{""}: every
        key) in one atomic, durable commit: one revision, one C{delete}
        change per key. On etcd this is one DeleteRange.

        @param max_keys: the most keys it may delete; past it nothing is
            deleted.
        @return: a Deferred firing with the L{kvtwist.model.CommitResult}
            (no changes and the current revision when nothing matched).
        @raise kvtwist.errors.LimitExceeded: more than C{max_keys} live keys
            match; nothing was deleted.
        @raise kvtwist.errors.StoreUnavailable: if the commit could not be
            made durable; nothing was applied.
        """

    def add_listener(listener):
        """
        Call C{listener(result)} on the reactor thread with the
        L{kvtwist.model.CommitResult} of every commit that changed something,
        in revision order: for a commit made through this store, before the
        committer's Deferred fires (so caches are current when the client
        hears back); for changes made elsewhere (other etcd clients), when
        the store learns of them.
        """

    def expired(limit):
        """
        Keys whose expiry has passed and that this store must remove itself
        (etcd removes them through leases, so its list is always empty).

        @return: a Deferred firing with up to C{limit} C{(key, mod_revision)}
            pairs, soonest expiry first; commit them as
            L{kvtwist.model.Expire} ops.
        """

    def ping():
        """
        Prove the store can take a commit now, as closely as it can without
        changing data: the shelve store makes a small durable write of its
        own bookkeeping (no revision, no key, no event), which fails as a
        commit would, so a full or failing disk is seen even when no client
        writes, and seen to pass once it has passed; etcd asks for a leader
        and no alarm (a full etcd database raises one).

        @return: a Deferred firing with L{None} when the store is open and
            writable.
        @raise kvtwist.errors.InsufficientStorage: if the disk is full.
        @raise kvtwist.errors.StoreUnavailable: otherwise.
        """


class IHistoricalStore(IKeyValueStore):
    """
    A store that keeps every committed change (put, delete, expire) with its
    revision until compaction (etcd's MVCC model), written in the same
    atomic commit as the data.

    A read at revision C{N} sees each key as the last commit at or before
    C{N} left it. Expiry still counts at the store clock's present: an
    entry that existed at C{N} but whose C{expires} has passed reads as
    absent, as it does in every current read.

    Compaction at revision C{C} forgets what only reads before C{C} need:
    reads at C{C} and later are still answered exactly, reads before it
    fail with L{kvtwist.errors.RevisionCompacted}.
    """

    compact_revision = Attribute(
        "The oldest revision reads are answered at (0 for a store never "
        "compacted; a store that started keeping history with data in it "
        "starts at the revision it had then). Reactor thread, no I/O."
    )

    history_size = Attribute(
        "How many history records are kept (one per key a commit changed, "
        "less what compaction removed). Reactor thread, no I/O."
    )

    def get_at(key, revision):
        """
        Read C{key} as of C{revision}.

        @param revision: an L{int}, at least C{compact_revision} and at most
            C{revision}.
        @return: a Deferred firing with the L{kvtwist.model.Entry} the key
            had at C{revision} (its C{mod_revision} is that version's ETag),
            or L{None} if it was absent then (or has expired since).
        @raise kvtwist.errors.RevisionCompacted: C{revision} is older than
            C{compact_revision}.
        @raise kvtwist.errors.FutureRevision: C{revision} is newer than the
            store's revision.
        @raise kvtwist.errors.StoreUnavailable: if the store cannot be read.
        """

    def list_at(prefix, after, limit, revision, max_bytes=None):
        """
        L{IKeyValueStore.list} as of C{revision} (C{max_bytes} as there).

        @return: a Deferred firing with a L{kvtwist.model.Page} whose
            C{revision} is C{revision}.
        @raise kvtwist.errors.RevisionCompacted: see L{get_at}.
        @raise kvtwist.errors.FutureRevision: see L{get_at}.
        @raise kvtwist.errors.StoreUnavailable: if the store cannot be read.
        """

    def changes(after, upto, max_records):
        """
        Replay the history: the commits after revision C{after}, up to
        C{upto}, in revision order (to resume a watch from the past).

        @param max_records: the most changes to return, except that a commit
            is never split (one commit with more comes whole).
        @return: a Deferred firing with a L{list} of
            L{kvtwist.model.CommitResult}, each with its changes (in key
            order) carrying the entry after and the entry before
            (C{previous}); empty once nothing is left after C{after}.
        @raise kvtwist.errors.RevisionCompacted: C{after} is older than
            C{compact_revision}: events after it are gone.
        @raise kvtwist.errors.StoreUnavailable: if the store cannot be read.
        """

    def compact(revision, max_records):
        """
        Compact the history towards C{revision}, in one bounded step: the
        step removes the records of at most C{max_records} history records'
        worth of revisions (or of one commit, if that alone has more), so
        commits are never held up long. Call again until the result is
        C{revision}. Compacting to a revision already compacted changes
        nothing.

        @return: a Deferred firing with the C{compact_revision} after the
            step.
        @raise kvtwist.errors.FutureRevision: C{revision} is newer than the
            store's revision.
        @raise kvtwist.errors.StoreUnavailable: nothing was compacted.
        """


class ILeasingStore(IKeyValueStore):
    """
    A store with leases (etcd's model): a lease lives C{ttl} seconds after
    its grant or last keepalive; keys written with C{Put(lease=ID)} are
    attached to it; when it is revoked or expires, all of its keys are
    removed in one commit (one revision: C{delete} changes for a revoke,
    C{expire} changes for an expiry). A put without a lease detaches the
    key; deleting the key detaches it too.

    A keepalive writes no key: no revision, no change, no event. Leases
    are durable: their deadline is kept in the store clock's seconds, so a
    restarted store keeps the remaining time. A lease past its deadline is
    gone for every call below, even before L{expire_lease} removed it; its
    keys stay until then (the expiry sweeper calls it at the deadline it
    learns from C{next_deadline}, at worst a sweep interval later).

    A commit with a C{Put} whose lease is unknown or expired fails with
    L{kvtwist.errors.LeaseNotFound} and applies nothing.
    """

    lease_count = Attribute(
        "Leases held (granted, not yet revoked or removed by expiry). "
        "Reactor thread, no I/O."
    )

    next_deadline = Attribute(
        "The soonest deadline of the leases held, in the store clock's "
        "seconds, or None without leases (so the sweeper can wake then). "
        "Reactor thread, no I/O."
    )

    def grant(ttl, max_leases):
        """
        Grant a new lease of C{ttl} seconds (a positive number).

        @param max_leases: the most leases that may be held at once.
        @return: a Deferred firing with a L{kvtwist.model.Lease} (no keys).
        @raise kvtwist.errors.LimitExceeded: (too many) C{max_leases} leases
            are held already.
        @raise kvtwist.errors.StoreUnavailable: nothing was granted.
        """

    def keepalive(lease_id):
        """
        Renew C{lease_id}: its deadline becomes now plus its ttl, durably.

        @return: a Deferred firing with the renewed L{kvtwist.model.Lease}
            (no keys).
        @raise kvtwist.errors.LeaseNotFound: unknown, revoked or expired.
        @raise kvtwist.errors.StoreUnavailable: the lease was not renewed.
        """

    def lease(lease_id):
        """
        Look C{lease_id} up.

        @return: a Deferred firing with the L{kvtwist.model.Lease} and its
            keys.
        @raise kvtwist.errors.LeaseNotFound: unknown, revoked or expired.
        @raise kvtwist.errors.StoreUnavailable: if the store cannot be read.
        """

    def revoke(lease_id):
        """
        End C{lease_id} now, deleting its keys in one commit.

        @return: a Deferred firing with the L{kvtwist.model.CommitResult}
            (its revision unchanged if the lease held no keys).
        @raise kvtwist.errors.LeaseNotFound: unknown, revoked or expired.
        @raise kvtwist.errors.StoreUnavailable: nothing was changed.
        """

    def expired_leases(limit):
        """
        @return: a Deferred firing with up to C{limit} ids of leases past
            their deadline, soonest first.
        """

    def expire_lease(lease_id):
        """
        Remove C{lease_id} if it is past its deadline, its keys in one
        commit of C{expire} changes.

        @return: a Deferred firing with the L{kvtwist.model.CommitResult},
            or L{None} if the lease was not due (renewed, revoked, unknown).
        @raise kvtwist.errors.StoreUnavailable: nothing was changed.
        """


class ILeaseListing(Interface):
    """
    A leasing store (L{ILeasingStore}) that can also list the leases it
    holds, for an operator to see them (the admin page). Optional: a store
    without it answers C{GET /v1/lease} with 501 C{leases-unsupported},
    and every other lease call still works.
    """

    def held_leases(limit):
        """
        The leases held now (not revoked, not past their deadline), soonest
        deadline first (then by id), each with its keys.

        @param limit: the most leases to return (a positive integer).
        @return: a Deferred firing with a list of up to C{limit}
            L{kvtwist.model.Lease}.
        @raise kvtwist.errors.StoreUnavailable: if the store cannot be read.
        """


class IWorkInFlight(Interface):
    """
    A store that can say what work it still has running, for the log line
    of a graceful stop that was cut short (L{kvtwist.service.StoreService}).
    """

    def work_in_flight():
        """
        On the reactor thread: a short phrase naming the operations started
        and not finished, e.g. C{"a group of 2 commits (100000 ops) on the
        store thread and 3 queued commits (12 ops)"}, or C{"nothing"}.
        """


# -- Capabilities ------------------------------------------------------------
#
# What some stores can do beyond IKeyValueStore, each declared with
# @implementer and checked with providedBy where it is used: a renamed
# method then fails the store's verifyObject test instead of quietly
# sending every request down the slow path. A wrapper (the read cache, the
# commit timer) provides a capability exactly when what it wraps does
# (L{kvtwist.store.capabilities.passes_capabilities_of}).


class IReadCache(Interface):
    """
    A store that answers reads from memory, on the reactor thread, without
    a Deferred (L{kvtwist.store.cache.CachedStore}): the fast path of a
    GET, and the cache gauges of the metrics.
    """

    hits = Attribute("Reads answered from memory.")
    misses = Attribute("Reads that went to the store.")
    size = Attribute("Bytes the cache holds, by its own accounting.")
    max_bytes = Attribute("The most bytes the cache may hold (C{--cache-size}).")

    def __len__():
        """Keys (and known-absent keys) held."""

    def peek(key):
        """
        C{(True, entry or None)} if the cache can answer a read of C{key}
        now (L{None}: absent or expired), else C{(False, None)}. No I/O.
        """

    def peek_encoded(key, encode):
        """
        C{encode(entry)} for the live cached entry of C{key}, built once and
        kept with the entry; L{None} unless the key is cached and live (then
        read it the ordinary way). No I/O.
        """


class ILinearizableReads(Interface):
    """
    A store whose C{get} may answer from what this node last heard (a cache
    kept coherent by a change feed), and that can also read past it.
    """

    def get_linearizable(key):
        """
        Read C{key} reflecting every commit acknowledged (by any node)
        before the call, as C{?consistent=1} asks.

        @return: a Deferred firing as L{IKeyValueStore.get}'s does.
        """


class IWatchedStore(Interface):
    """
    A store that learns of others' changes through a watch that can be lost
    (etcd): its listeners may miss changes, and it says when.
    """

    def add_reset_listener(listener):
        """
        Call C{listener(reset)} on the reactor thread whenever listeners may
        not have heard every change. C{reset} has C{watching} (whether the
        watch runs now), C{history_lost} (some change at or below
        C{revision} will never be heard), C{revision} and C{reason}
        (L{kvtwist.store.etcd.watchloop.WatchReset}).
        """


class ICountedStore(Interface):
    """A store that keeps a count of its keys."""

    key_count = Attribute(
        "Keys in the store (live and expired but not yet swept). Reactor "
        "thread, no I/O."
    )


class IEtcdConnection(Interface):
    """
    A store kept in etcd, as what keeps its own keys beside the store's data
    uses it (the transactions kept in etcd,
    L{kvtwist.store.etcd.transactions}): L{kvtwist.store.etcd.store.EtcdStore},
    or a wrapper that passes these through (L{kvtwist.metrics.TimedStore}).
    """

    prefix = Attribute("The store's etcd key prefix (a str): its own keys live under it.")
    revision = Attribute("The largest etcd revision the store has seen.")
    max_request_bytes = Attribute("etcd's --max-request-bytes: the largest request sent.")

    def call(path, body, write=False):
        """
        Send one etcd v3 gateway request, failing over between endpoints.

        @return: a coroutine of the answer document.
        @raise kvtwist.store.etcd.errors.Ambiguous: a write's answer was lost.
        @raise kvtwist.store.etcd.errors.LeaseGone: a request named a lease
            etcd no longer has.
        """

    def commit_with(ops, checks, rider):
        """
        L{IKeyValueStore.commit}, with C{rider}'s requests in the same etcd
        transaction (L{kvtwist.store.etcd.commits.Rider}).

        @return: a Deferred firing with the L{kvtwist.model.CommitResult}.
        @raise kvtwist.store.etcd.commits.RiderBroken: (in the Deferred) the
            rider's guard no longer held; nothing was applied.
        """


class ITransactionView(Interface):
    """
    What a transaction holds at one moment: its staged ops, the revisions it
    observed and the preconditions it recorded. Read-only; reactor thread.
    """

    isolated = Attribute(
        "Whether observed revisions are recorded and checked at commit "
        "(False for the seed's shared queue: last writer wins)."
    )
    observed = Attribute(
        "C{{key: mod_revision}} at each key's first touch (0: absent)."
    )
    preconditions = Attribute(
        "The L{kvtwist.model.Check}s clients sent with their writes, in order."
    )

    def __len__():
        """The number of keys with a staged op."""

    def staged(key):
        """The L{kvtwist.model.Put} or L{kvtwist.model.Delete} staged for C{key}, or L{None}."""

    def ops():
        """The staged ops in commit order (one per key)."""


class ITransaction(Interface):
    """
    One transaction: a client's own (isolated) or the seed's shared queue.
    """

    id = Attribute("The transaction's id (in URLs).")
    owner = Attribute("The name of the token that began it, or L{None}.")
    isolated = Attribute("See L{ITransactionView.isolated}.")

    def view():
        """
        @return: a Deferred firing with the current L{ITransactionView}.
        @raise kvtwist.errors.TransactionNotFound: if it ended meanwhile.
        @raise kvtwist.errors.StoreUnavailable: if its state cannot be read.
        """

    def record(ops=(), observed=None, preconditions=()):
        """
        Stage C{ops}, keep the revisions in C{observed} for the keys touched
        for the first time (only if isolated), and add C{preconditions}: all
        of it or none of it.

        @return: a Deferred firing with the L{ITransactionView} after it.
        @raise kvtwist.errors.LimitExceeded: past a staging limit.
        @raise kvtwist.errors.TransactionNotFound: if it ended meanwhile.
        @raise kvtwist.errors.StoreUnavailable: if it cannot be recorded.
        """

    def commit(vet=None):
        """
        Commit everything staged, with a check per observed revision and
        every precondition, atomically and durably; C{vet(ops)} is called
        with the exact ops about to be committed and may raise to refuse.

        @return: a Deferred firing with a L{kvtwist.model.CommitResult} once
            the commit (and, for the shared queue, every earlier commit that
            carried its writes) is durable.
        @raise kvtwist.errors.ConflictError: a check failed; nothing applied.
        @raise kvtwist.errors.StoreUnavailable: nothing applied, the staged
            ops are still there to retry.
        @raise kvtwist.errors.TransactionNotFound: if it ended meanwhile.
        """


class ITransactionManager(Interface):
    """
    The open transactions: begun, found by id and owner, ended; plus the
    seed's shared queue.
    """

    timeout = Attribute("Seconds of idleness after which a transaction ends.")
    queue = Attribute("The seed's shared, non-isolated L{ITransaction}.")

    def __len__():
        """Transactions this manager knows to be open (for the metrics gauge)."""

    def begin(owner=None):
        """
        @return: a Deferred firing with a new L{ITransaction} of C{owner}.
        @raise kvtwist.errors.LimitExceeded: (too many) past
            C{max_open_transactions}.
        @raise kvtwist.errors.StoreUnavailable: if it cannot be recorded.
        """

    def find(txn_id, owner=None):
        """
        The open transaction C{txn_id} of C{owner}; finding it counts as
        activity (its idle timer starts again).

        @return: a Deferred firing with the L{ITransaction}.
        @raise kvtwist.errors.TransactionNotFound: unknown, ended, expired,
            or someone else's (which is not revealed).
        @raise kvtwist.errors.StoreUnavailable: if it cannot be looked up.
        """

    def commit_and_end(txn, vet=None):
        """
        Commit C{txn} (L{ITransaction.commit}, with C{vet}), then end it if
        it is isolated and its commit either applied or conflicted: a
        conflict is final (first committer wins; the client begins again).
        A commit that failed otherwise (the store unavailable: nothing
        applied, the staged ops still there) leaves it open to retry; the
        shared queue never ends.

        @return: a Deferred firing as L{ITransaction.commit}'s does, once
            the transaction has ended (when it ends).
        """

    def finish(txn_id):
        """
        End C{txn_id} (committed, aborted or conflicted), dropping whatever
        it still holds.

        @return: a Deferred firing with L{None}.
        """

    def abort_all():
        """Forget the transactions held in this process (at shutdown)."""
