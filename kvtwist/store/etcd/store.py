# -*- test-case-name: tests.contract.test_store_etcd -*-
"""
The etcd store: kvtwist's store contract on an etcd v3 cluster, spoken to
through etcd's JSON gateway. Several kvcache nodes can share one etcd
cluster: every commit is one etcd transaction, so atomicity and the
optimistic checks hold across nodes.

L{EtcdStore} opens and closes, reads, and hands the rest to its rooms:
L{Commits} (commits and expiry leases), L{WatchLoop} (the watch),
L{Delivery} (listeners in revision order), L{EtcdHistory} and
L{EtcdLeases}. docs/etcd.md describes the design: key and value encoding,
revisions, expiry, commits, failover, reads, the watch and the reset hook.
Everything here runs on the reactor thread; nothing blocks.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from kvtwist.errors import StoreUnavailable
from kvtwist.interfaces import (
    IEtcdConnection,
    IHistoricalStore,
    ILeasingStore,
    ILinearizableReads,
    IWatchedStore,
)
from kvtwist.model import Check, Entry, Op, Page, PageBuilder
from kvtwist.store.etcd.codec import KeySpace, Row, b64, unb64
from kvtwist.store.etcd.commits import Commits, Rider
from kvtwist.store.etcd.delivery import Delivery
from kvtwist.store.etcd.errors import Compacted, describe
from kvtwist.store.etcd.gateway import (
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_TXN_OPS,
    EtcdGateway,
)
from kvtwist.store.etcd.history import EtcdHistory
from kvtwist.store.etcd.leases import EtcdLeases
from kvtwist.store.etcd.tls import EtcdCredentials
from kvtwist.store.etcd.watchloop import WatchLoop, WatchReset
from kvtwist.store.rules import live

__all__ = ["EtcdStore"]

log = Logger()

# How often a multi-request read restarts when etcd compacted its revision.
_READ_ATTEMPTS = 3
# Bounds on one listing: rounds of range requests and keys per request (the
# batch grows when expired keys are skipped).
_LIST_ROUNDS = 64
_LIST_BATCH_MAX = 10000


def _gateway_setting(name: str, doc: str) -> property:
    """An L{EtcdStore} attribute that is its gateway's C{name}."""

    def get(store: "EtcdStore") -> Any:
        return getattr(store._gateway, name)

    def set_(store: "EtcdStore", value: Any) -> None:
        setattr(store._gateway, name, value)

    return property(get, set_, doc=doc)


@implementer(IHistoricalStore, ILeasingStore, ILinearizableReads, IWatchedStore, IEtcdConnection)
class EtcdStore:
    """
    A store on the etcd cluster reached through C{endpoints}.

    @param endpoints: base URLs of etcd members' client ports
        (C{"http://127.0.0.1:2379"}, or C{https://} for TLS), tried in order.
    @param reactor: the reactor that does the HTTP requests and times them
        out (L{IReactorTime} and TCP).
    @param prefix: every key this store owns lives under it (see docs/etcd.md
        for the encoding).
    @param http: a treq-like client (C{post(url, data=, headers=,
        unbuffered=)}), e.g. C{treq.testing.StubTreq}; by default the store
        makes its own over a persistent connection pool created by L{open}
        and closed by L{close}.
    @param clock: the L{IReactorTime} that decides expiry (the reactor when
        not given); tests pass a L{twisted.internet.task.Clock}.
    @param timeout: seconds one request to one endpoint may take.
    @param max_txn_ops: etcd's C{--max-txn-ops}: no commit touching more keys
        is sent.
    @param max_request_bytes: etcd's C{--max-request-bytes}: no commit whose
        transaction would be bigger is sent.
    @param watch: run the watch (see docs/etcd.md, "Watch"); without it,
        listeners hear only this store's own commits and no reset listener
        is ever called (for a store nobody else writes to, and for tests of
        the request layer).
    @param tls: the TLS policy for C{https} endpoints
        (L{kvtwist.store.etcd.tls.EtcdTLS}: CA, client certificate); by
        default the platform's trust store and no client certificate.
    @param credentials: the etcd user and password to authenticate as
        (L{kvtwist.store.etcd.tls.EtcdCredentials}), when etcd's auth is
        on.

    @ivar revision: the largest etcd revision seen (see docs/etcd.md,
        "Revisions").
    @ivar active_endpoint: the endpoint the next request goes to first.
    @ivar keys: where this store's keys live in etcd (L{KeySpace}).
    @ivar delivery: the ordered delivery of results to listeners.
    @ivar watch_loop: the watch, and what it has seen.
    @ivar history: reads at past revisions, compaction, replay.
    @ivar client_leases: the client leases (etcd leases with an anchor).
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        reactor: Any,
        prefix: str = "/kvtwist/",
        http: Any = None,
        clock: Optional[IReactorTime] = None,
        timeout: float = 5.0,
        max_txn_ops: int = DEFAULT_MAX_TXN_OPS,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        watch: bool = True,
        tls: Optional[IPolicyForHTTPS] = None,
        credentials: Optional[EtcdCredentials] = None,
    ) -> None:
        if not prefix:
            raise ValueError("the etcd key prefix must not be empty")
        self._gateway = EtcdGateway(
            endpoints,
            reactor,
            timeout=timeout,
            http=http,
            tls=tls,
            credentials=credentials,
            max_txn_ops=max_txn_ops,
            max_request_bytes=max_request_bytes,
        )
        self.prefix = prefix
        self.revision = 0
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.reactor = reactor
        self.keys = KeySpace(prefix)
        self._open = False
        self._inflight: Set[Deferred] = set()
        # The rooms of the store, each owning its own state.
        self.delivery = Delivery(reactor)
        self.watch_loop = WatchLoop(self, self.delivery, enabled=watch)
        self.delivery.sequencer = self.watch_loop
        self.history = EtcdHistory(self)
        self.client_leases = EtcdLeases(self)
        self._commits = Commits(self)

    # The request settings live in the gateway, which applies them (and
    # words etcd's own refusals with the limits).
    timeout = _gateway_setting("timeout", "Seconds one request to one endpoint may take.")
    max_txn_ops = _gateway_setting(
        "max_txn_ops", "etcd's --max-txn-ops: the most keys a commit touches."
    )
    max_request_bytes = _gateway_setting(
        "max_request_bytes", "etcd's --max-request-bytes: the largest commit sent."
    )

    @property
    def gateway(self) -> EtcdGateway:
        """The HTTP transport to etcd (endpoints, TLS, auth token)."""
        return self._gateway

    @property
    def endpoints(self) -> List[str]:
        """The etcd endpoints, in order of preference."""
        return self._gateway.endpoints

    @property
    def active_endpoint(self) -> str:
        """The endpoint tried first: the last one that answered."""
        return self._gateway.active_endpoint

    @property
    def watching(self) -> bool:
        """Whether the watch runs now (listeners hear other clients' changes)."""
        return self.watch_loop.live

    @property
    def watch_endpoint(self) -> Optional[str]:
        """The endpoint the running watch is on, or L{None}."""
        return self.watch_loop.endpoint if self.watch_loop.live else None

    # -- lifecycle ----------------------------------------------------------

    def open(self) -> Deferred:
        """
        Set up the HTTP client and check that etcd answers with a leader
        (authenticating first when there are credentials); learns the
        current revision.

        @return: a Deferred firing with L{None}, or failing with
            L{StoreUnavailable} (then nothing stays open).
        """
        if self._open:
            return succeed(None)
        self._gateway.start()
        self._open = True

        d = Deferred.fromCoroutine(self._open_async())

        def failed(reason):
            self._open = False
            d = self.watch_loop.stop()
            d.addCallback(lambda _: self._release())
            return d.addCallback(lambda _: reason)

        return d.addErrback(failed)

    async def _open_async(self) -> None:
        """Check etcd, then start the watch and wait until it runs."""
        await self.refresh(patient=True)
        try:
            await self.client_leases.recount()
            await self.history.probe()
        except Exception as e:
            # The compact revision is learned again at the first read etcd
            # finds compacted; the lease count at the next grant.
            log.warn("etcd: its leases or compact revision could not be read: {e}", e=describe(e))
        if not self.watch_loop.enabled:
            return
        await self.watch_loop.start(self.revision)

    def close(self) -> Deferred:
        """
        Refuse new calls, let in-flight ones finish (each is bounded by the
        request timeout), then stop the watch and close the pooled
        connections.
        """
        if not self._open:
            return succeed(None)
        self._open = False
        waiting = DeferredList(list(self._inflight), consumeErrors=True)
        waiting.addCallback(lambda _: self.watch_loop.stop())
        return waiting.addCallback(lambda _: self._release())

    def _release(self) -> Deferred:
        self._commits.forget_leases()
        return self._gateway.stop()

    def _run(self, coroutine) -> Deferred:
        """Start one public call, unless the store is closed; track it."""
        if not self._open:
            coroutine.close()
            return fail(StoreUnavailable("the etcd store is closed"))
        d = Deferred.fromCoroutine(coroutine)
        if not d.called:
            self._inflight.add(d)

            def done(result):
                self._inflight.discard(d)
                return result

            d.addBoth(done)
        return d

    # -- the contract -------------------------------------------------------

    def get(self, key: str) -> Deferred:
        """
        Read one live key, linearizably (see docs/etcd.md, "Reads"); see
        L{IKeyValueStore.get}.
        """
        return self._run(self._get(key))

    def get_linearizable(self, key: str) -> Deferred:
        """
        Read one live key from etcd through its leader's read index, for
        C{?consistent=1}: the result reflects every commit acknowledged (by
        any node) before the call. Call it on this store, not on a cache in
        front of it.

        @return: a Deferred firing with an L{Entry} or L{None}.
        @raise StoreUnavailable: (in the Deferred) without a quorum.
        """
        return self._run(self._get(key))

    def get_many(self, keys: Iterable[str]) -> Deferred:
        """Read live keys at one revision; see L{IKeyValueStore.get_many}."""
        return self._run(self._get_many(list(keys)))

    def list(
        self, prefix: str, after: Optional[str], limit: int, max_bytes: Optional[int] = None
    ) -> Deferred:
        """One page of live keys at one revision; see L{IKeyValueStore.list}."""
        return self._run(self._list(prefix, after, limit, max_bytes))

    def commit(self, ops: Sequence[Op], checks: Sequence[Check] = ()) -> Deferred:
        """One etcd transaction; see L{IKeyValueStore.commit}."""
        return self._run(self._commits.commit(list(ops), list(checks)))

    def commit_with(self, ops: Sequence[Op], checks: Sequence[Check], rider: Rider) -> Deferred:
        """
        L{commit}, with C{rider}'s requests applied in the same etcd
        transaction and only while its guard holds (see L{Rider}).

        @return: like L{commit}; a commit that changed nothing (no ops to
            send) did not apply the rider either.
        @raise RiderBroken: (in the Deferred) the guard no longer held;
            nothing was applied.
        """
        return self._run(self._commits.commit(list(ops), list(checks), rider))

    def delete_prefix(self, prefix: str, max_keys: int) -> Deferred:
        """
        One etcd transaction with one DeleteRange over the prefix; see
        L{IKeyValueStore.delete_prefix} and L{Commits.delete_prefix}.
        """
        return self._run(self._commits.delete_prefix(prefix, max_keys))

    def add_listener(self, listener) -> None:
        """
        Call C{listener(result)} for every revision that changed the key
        range, in revision order, each once: this store's commits before
        their committer hears back, other clients' changes when the watch
        delivers them (see docs/etcd.md, "Listeners").
        """
        self.delivery.listeners.add(listener)

    def add_reset_listener(self, listener: Callable[[WatchReset], None]) -> None:
        """
        Call C{listener(reset)} with a L{WatchReset} each time the watch is
        lost, runs again, or finds that listeners missed changes (see
        docs/etcd.md, "Reset hook", for what a cache and a change feed
        should do).
        Called on the reactor thread; an exception is logged and ignored.
        """
        self.watch_loop.add_reset_listener(listener)

    # -- history (etcd's own revisions; see kvtwist.store.etcd.history) -----

    @property
    def compact_revision(self) -> int:
        """etcd's compact revision, as last learned (see L{EtcdHistory})."""
        return self.history.compact_revision

    @property
    def history_size(self) -> int:
        """
        The etcd revisions kept (current less compacted): etcd does not count
        records per key, and one revision may hold several, or none of this
        store's keys.
        """
        return max(self.revision - max(self.compact_revision, 1), 0)

    def get_at(self, key: str, revision: int) -> Deferred:
        """An etcd range at C{revision}; see L{IHistoricalStore.get_at}."""
        return self._run(self.history.get_at(key, revision))

    def list_at(
        self, prefix: str, after: Optional[str], limit: int, revision: int,
        max_bytes: Optional[int] = None,
    ) -> Deferred:
        """Ranges at C{revision}; see L{IHistoricalStore.list_at}."""
        if limit < 1:
            raise ValueError("a listing needs a limit of at least 1")
        return self._run(self.history.list_at(prefix, after, limit, revision, max_bytes))

    def changes(self, after: int, upto: int, max_records: int) -> Deferred:
        """An etcd watch from C{after + 1}; see L{IHistoricalStore.changes}."""
        return self._run(self.history.changes(after, upto, max_records))

    def compact(self, revision: int, max_records: int) -> Deferred:
        """
        etcd's compaction at C{revision}, in one call (etcd bounds its own
        batches); see L{IHistoricalStore.compact}.
        """
        return self._run(self.history.compact(revision))

    # -- client leases (etcd leases; see kvtwist.store.etcd.leases) ---------

    @property
    def lease_count(self) -> int:
        """Leases held: counted at open, then followed through the watch."""
        return self.client_leases.count

    #: etcd expires leases itself: the sweeper never has to wake for one.
    next_deadline = None

    def grant(self, ttl: float, max_leases: int) -> Deferred:
        """An etcd lease and its anchor; see L{ILeasingStore.grant}."""
        return self._run(self.client_leases.grant(ttl, max_leases))

    def keepalive(self, lease_id: int) -> Deferred:
        """etcd's keepalive: no revision; see L{ILeasingStore.keepalive}."""
        return self._run(self.client_leases.keepalive(lease_id))

    def lease(self, lease_id: int) -> Deferred:
        """etcd's timetolive with keys; see L{ILeasingStore.lease}."""
        return self._run(self.client_leases.lease(lease_id))

    def revoke(self, lease_id: int) -> Deferred:
        """etcd's revoke, one revision; see L{ILeasingStore.revoke}."""
        return self._run(self.client_leases.revoke(lease_id))

    def expired_leases(self, limit: int) -> Deferred:
        """Always empty: etcd expires leases and deletes their keys itself."""
        return succeed([])

    def expire_lease(self, lease_id: int) -> Deferred:
        """Nothing to do (L{None}): etcd expires leases itself."""
        return succeed(None)

    def expired(self, limit: int) -> Deferred:
        """
        Always an empty list: leases make etcd remove expired keys itself,
        and reads treat them as absent until it does.
        """
        return self._run(self._nothing_expired())

    async def _nothing_expired(self) -> List[Entry]:
        return []

    def ping(self) -> Deferred:
        """
        Ask the endpoints for their status, in turn, until one reports a
        leader and no alarm; fails with L{StoreUnavailable} saying why when
        none does (no quorum: no member knows a leader).
        """
        return self._run(self.refresh())

    # -- HTTP ---------------------------------------------------------------

    async def call(self, path: str, body: dict, write: bool = False) -> dict:
        """
        Send one etcd v3 gateway request (C{path}, JSON C{body}), failing
        over between endpoints (see L{EtcdGateway.call}), and keep the
        revision of its answer. Public for what keeps its own keys in the
        same etcd under this store's prefix
        (L{kvtwist.store.etcd.transactions}).

        A read goes to the next endpoint after any failure; a write only
        after failures that prove it was not applied, otherwise it raises
        L{kvtwist.store.etcd.errors.Ambiguous}. The endpoint that answers becomes the first to try.

        @raise StoreUnavailable: when no endpoint could serve it.
        """
        document = await self._gateway.call(path, body, write)
        self.saw(document.get("header"))
        return document

    def saw(self, header: Any) -> None:
        """Keep the largest revision of any answer."""
        if isinstance(header, dict):
            revision = int(header.get("revision", 0))
            if revision > self.revision:
                self.revision = revision

    # -- reading ------------------------------------------------------------

    async def _get(self, key: str) -> Optional[Entry]:
        document = await self.call("/v3/kv/range", {"key": b64(self.keys.etcd_key(key))})
        kvs = document.get("kvs") or []
        if not kvs:
            return None
        return live(self.keys.row(kvs[0]).entry, self.clock.seconds())

    async def _get_many(self, keys: List[str]) -> Dict[str, Entry]:
        if not keys:
            return {}
        rows, _ = await self.read_rows(keys)
        now = self.clock.seconds()
        return {
            key: row.entry for key, row in rows.items() if row.entry.is_live(now)
        }

    async def read_rows(self, keys: Iterable[str]) -> Tuple[Dict[str, Row], int]:
        """
        Read C{keys} (expired ones included) at one revision: read-only
        transactions of at most C{max_txn_ops} ranges, all pinned to the
        revision of the first.

        @return: the rows found and the revision they were read at.
        """
        unique = list(dict.fromkeys(keys))
        for attempt in range(_READ_ATTEMPTS):
            rows: Dict[str, Row] = {}
            revision = 0
            try:
                for start in range(0, max(len(unique), 1), self.max_txn_ops):
                    chunk = unique[start:start + self.max_txn_ops]
                    ranges = []
                    for key in chunk:
                        request: Dict[str, Any] = {"key": b64(self.keys.etcd_key(key))}
                        if revision:
                            request["revision"] = str(revision)
                        ranges.append({"request_range": request})
                    document = await self.call("/v3/kv/txn", {"success": ranges})
                    if not revision:
                        revision = int(document["header"]["revision"])
                    for response in document.get("responses") or []:
                        for kv in response.get("response_range", {}).get("kvs") or []:
                            row = self.keys.row(kv)
                            rows[row.entry.key] = row
            except Compacted:
                if attempt + 1 == _READ_ATTEMPTS:
                    raise StoreUnavailable(
                        "etcd compacted the revision of a multi-part read %d times"
                        % (_READ_ATTEMPTS,)
                    )
                continue
            return rows, revision
        raise AssertionError("unreachable")

    async def _list(
        self, prefix: str, after: Optional[str], limit: int, max_bytes: Optional[int]
    ) -> Page:
        if limit < 1:
            raise ValueError("a listing needs a limit of at least 1")
        for attempt in range(_READ_ATTEMPTS):
            try:
                return await self.list_once(prefix, after, limit, max_bytes)
            except Compacted:
                continue
        raise StoreUnavailable(
            "etcd compacted the revision of a listing %d times" % (_READ_ATTEMPTS,)
        )

    async def list_once(
        self, prefix: str, after: Optional[str], limit: int, max_bytes: Optional[int],
        revision: int = 0,
    ) -> Page:
        """
        Range over the prefix at one revision (C{revision}, or the current
        one when 0), skipping expired keys, until the page is full (C{limit}
        live entries, or C{max_bytes}) and one more live entry is found, or
        the range ends.
        """
        start = self.keys.etcd_key(prefix)
        end = self.keys.range_end(start)
        if after is not None:
            start = max(start, self.keys.etcd_key(after) + b"\x00")
        builder = PageBuilder(limit, max_bytes, self.clock.seconds())
        batch = min(builder.batch(), _LIST_BATCH_MAX)
        for _ in range(_LIST_ROUNDS):
            body: Dict[str, Any] = {
                "key": b64(start),
                "range_end": b64(end),
                "limit": str(batch),
            }
            if revision:
                # Later rounds read the same revision as the first, so the
                # page is one consistent snapshot.
                body["revision"] = str(revision)
            document = await self.call("/v3/kv/range", body)
            if not revision:
                revision = int(document["header"]["revision"])
            kvs = document.get("kvs") or []
            for kv in kvs:
                if not builder.take(self.keys.row(kv).entry):
                    return builder.page(revision)
            if not document.get("more") or not kvs:
                return builder.page(revision)
            start = unb64(kvs[-1]["key"]) + b"\x00"
            # Expired keys took room in this batch: ask for more next time.
            batch = min(builder.batch(batch), _LIST_BATCH_MAX)
        raise StoreUnavailable(
            "the listing of %r met too many expired keys; etcd's leases have "
            "not removed them yet" % (prefix,)
        )

    async def refresh(self, patient: bool = False) -> None:
        """
        Succeed once one member reports a leader and no alarm, trying each
        endpoint in turn from the current one. C{patient} (for open) goes
        round again for up to a timeout, so an election is waited out.
        Keeps the revision the member reports (another node may have moved
        etcd on).
        """
        document = await self._gateway.ping(patient)
        self.saw(document.get("header"))
