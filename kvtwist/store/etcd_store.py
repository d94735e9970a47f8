"""
The etcd store: kvtwist's store contract on an etcd v3 cluster, spoken to
through etcd's JSON gateway (C{POST /v3/...}) with treq. Several kvcache
nodes can share one etcd cluster: every commit is one etcd transaction, so
atomicity and the optimistic checks hold across nodes.

Key encoding
============
A kvtwist key C{k} lives at the etcd key C{prefix + "kv/" + k.encode("utf-8")}
(the prefix defaults to C{/kvtwist/}). etcd orders keys by their bytes, so a
range over C{prefix + "kv/" + p} lists kvtwist keys starting with C{p} in
UTF-8 byte order, as the contract asks. Other subtrees of the prefix (not
C{kv/}) hold kvtwist's other shared state: C{txn/} and C{queue/} the
transactions and the seed's queue (L{kvtwist.store.etcd_transactions}).

Value encoding
==============
An etcd value is a one-line ASCII JSON header, a newline, then the raw value
bytes::

    {"c":"9f2c...","ct":"text/plain","exp":1700000010.5,"v":1}\\n<value bytes>

C{v} is the format version, C{ct} the Content-Type, C{exp} the absolute
expiry (epoch seconds, or null) and C{c} the id of the commit that wrote it
(used to learn whether a commit whose answer was lost was applied). Nothing
is pickled; a value that does not parse is reported as L{StoreCorrupt}.
An entry's C{create_revision}, C{mod_revision} and C{version} are etcd's own.

Revisions
=========
C{revision} is the largest etcd header revision this store has seen. etcd's
revision grows with every write to the cluster (including other nodes', other
prefixes' and lease expiries), so it increases with every commit but may
skip numbers; a fresh etcd starts at 1, not 0.

Expiry
======
The stored C{exp} decides: an entry whose C{exp} is at or before
C{clock.seconds()} reads, lists and checks as absent, whether or not etcd has
removed it yet. To have etcd remove it, a Put with an expiry attaches a lease
whose TTL ends a little after the expiry (leases are shared per expiry
second). A Put over an expired key that etcd still holds first deletes that
key in a separate, guarded transaction, so the new key starts at version 1
with a new create_revision: etcd refuses a delete and a put of one key in
one transaction.

Commits
=======
C{commit(ops, checks)} reads every touched key (checked or written) in one
read-only transaction, evaluates the checks and expiry locally, then sends
ONE transaction that compares each touched key's C{mod_revision} with what
was read (0 for a missing key) and applies the final op of each key. If a
compare fails, another commit got in between: the commit reads again and
retries, a bounded number of times. A check that fails on a read is a
L{ConflictError}. Deletes of absent or expired keys are not sent. A commit
is never split: one needing more operations than etcd's C{--max-txn-ops}, or
a bigger request than C{--max-request-bytes}, fails with L{LimitExceeded}.

Failover, TLS and authentication
================================
The HTTP transport is L{kvtwist.store.etcd_gateway.EtcdGateway}: endpoints
are tried in order from the last one that answered; a request that surely
did not reach etcd, or a read, moves on to the next one, and requests go
round the endpoints for up to a timeout, so an election or a member restart
is not seen by clients. C{https} endpoints are spoken to over TLS (a CA,
optionally a client certificate), and with credentials every request and
the watch carry an auth token, renewed when etcd refuses it. A write whose
answer was lost (timeout, dropped connection, etcd's "request timed out")
may or may not have been applied: the commit then reads the touched keys
again and learns the outcome from the commit id in the values it wrote, or
from all touched keys being unchanged (then it retries; both attempts carry
the same compares, so at most one can apply). When the outcome cannot be
learned, the commit fails with L{StoreUnavailable} whose C{outcome} field is
C{"unknown"}. When no endpoint answers, or etcd has no leader, calls fail
with L{StoreUnavailable} naming each endpoint's reason.

Reads
=====
Every read (C{get}, C{get_many}, C{list}, and the reads inside a commit) is
linearizable: etcd serves it through its leader's read index
(C{serializable: false}), so it needs a quorum and sees every commit that
was acknowledged before it began. L{EtcdStore.get_linearizable} is C{get}
under a name that says so, for C{?consistent=1}: a caller that puts a read
cache in front of the store (L{kvtwist.store.cache.CachedStore}) calls it on
the store itself to bypass the cache.

No quorum
=========
When a majority of etcd's members is down or cut off, writes and reads fail
with L{StoreUnavailable} saying that etcd has no leader (or that no member
answered in time); L{EtcdStore.ping} fails once no endpoint reports a
leader, so C{/v1/readyz} answers 503. Nothing has to be restarted: the next
call after the quorum is back succeeds, and the watch resumes by itself.

Watch
=====
After L{EtcdStore.open} the store watches its key range (C{POST /v3/watch}
through the gateway, with C{prev_kv}, from the revision after the one open
saw) on one endpoint, and requires that member to have a leader (gRPC
metadata C{hasleader}), so a member cut off from the quorum ends the watch
instead of going silent. Each etcd revision that touched the range becomes
one L{CommitResult} (events grouped by C{mod_revision}): a PUT is a C{put}
change, a DELETE is C{expire} when the deleted value's C{exp} had passed by
C{clock.seconds()} (etcd's lease did it, or a sweep) and C{delete}
otherwise; C{previous} comes from C{prev_kv}. The watch advances
C{revision}.

Listeners
=========
Listeners hear every change to the key range, this store's own commits and
other etcd clients' (other kvcache nodes', lease expiries), each revision
once, in revision order:

 - While the watch runs, it is the sequencer: a commit made through this
   store is delivered when the watch reaches its revision (with the
   commit's own result if it has arrived, else the watch's), and its
   committer hears back only after that. A commit the watch has not
   delivered within C{timeout} seconds means the watch is stalled: it is
   dropped and restarted.
 - While the watch is down, this store's own commits are delivered
   directly, in revision order, before their committer hears back (a
   result that arrives early waits for concurrent commits that could still
   take a lower revision). Other clients' changes wait for the watch.
 - When the watch comes back it resumes from the last revision it had
   delivered, on the next endpoint; revisions listeners already heard are
   skipped (deduplicated by revision). A change by another client that
   turns up below a revision already delivered cannot be delivered in
   order: it is dropped and reported as lost history (see below).

C{expired()} is always empty: etcd's leases do the sweeping, and the watch
reports what they removed.

Reset hook
==========
L{EtcdStore.add_reset_listener} registers C{listener(reset)}, called with a
L{WatchReset} whenever listeners may not have heard every change:

 - C{WatchReset(watching=False, ...)} when the watch is lost (connection
   dropped, member killed, member without leader, stalled): other clients'
   changes after C{reset.revision} may be missing until the watch runs
   again. A read cache must drop everything
   (L{kvtwist.store.cache.CachedStore.invalidate_all}).
 - C{WatchReset(watching=True, history_lost=False, ...)} when the watch
   runs (again), resuming after C{reset.revision}; the changes it missed
   follow, in order. A read cache drops everything again (what it cached
   meanwhile may be stale).
 - C{history_lost=True} when listeners did not and will never hear some
   change at or below C{reset.revision}: etcd compacted the revisions the
   watch had to resume from (the watch then resumes from the current
   revision), or another client's change turned up below a revision
   already delivered. A change feed must treat its history up to
   C{reset.revision} as gone (resumes from before it answer 410); a read
   cache drops everything.

L{EtcdStore.watching} says whether the watch runs now.
Everything here runs on the reactor thread; nothing blocks.
"""

from __future__ import annotations

import base64
import heapq
import itertools
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from twisted.internet.defer import CancelledError, Deferred, DeferredList, fail, succeed
from twisted.internet.defer import TimeoutError as DeferTimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.internet.protocol import Protocol
from twisted.web.client import ResponseDone
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from kvtwist.errors import (
    ConflictError,
    LimitExceeded,
    StoreCorrupt,
    StoreUnavailable,
)
from kvtwist.interfaces import IEtcdKeyspace, IHistoricalStore, ILeasingStore, ILinearizableReads, IWatchedStore
from kvtwist.model import (
    Change,
    Check,
    CheckFailure,
    CommitResult,
    Delete,
    Entry,
    Expire,
    Incr,
    Op,
    Page,
    PageBuilder,
    Put,
)
from kvtwist.store.etcd_gateway import (
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_TXN_OPS,
    EtcdCredentials,
    EtcdError,
    EtcdGateway,
    _Ambiguous,
    _Compacted,
    _describe,
    _LeaseGone,
    is_token_refusal,
)
from kvtwist.store.etcd_history import EtcdHistory
from kvtwist.store.etcd_leases import EtcdLeases
from kvtwist.store.listeners import Listeners
from kvtwist.store.rules import final_ops, fold_increments, increment, live

__all__ = [
    "EtcdStore",
    "EtcdError",
    "Rider",
    "RiderBroken",
    "WatchReset",
    "encode_value",
    "decode_value",
    "prefix_end",
]

log = Logger()

#: Seconds a lease outlives the expiry it collects: covers clock skew between
#: nodes and etcd's lease-check interval, so etcd never removes a key that a
#: node's clock still sees as live.
LEASE_MARGIN = 2
#: The value-envelope format this module writes and reads.
ENVELOPE_VERSION = 1

# How often one commit reads and retries when concurrent commits keep
# changing its keys between its read and its transaction.
_COMMIT_ATTEMPTS = 10
# The same for a commit with increments: counters are made to be contended
# (every client adds to the same key), and every round some commit wins, so
# a longer bound only lets a commit wait its turn.
_INCREMENT_ATTEMPTS = 100
# How often a multi-request read restarts when etcd compacted its revision.
_READ_ATTEMPTS = 3
# Bounds on one listing: rounds of range requests and keys per request (the
# batch grows when expired keys are skipped).
_LIST_ROUNDS = 64
_LIST_BATCH_MAX = 10000
# At most this many leases are remembered for reuse.
_LEASE_CACHE_SIZE = 1024
# Rough protobuf overheads, to estimate a transaction's size before sending.
_OP_OVERHEAD = 32
_TXN_OVERHEAD = 64
# Pauses between attempts to (re)start the watch once every endpoint has
# failed in a row: doubling from the first to the second, so a restarted
# member or a returning quorum is found within a second without spinning.
_WATCH_RETRY_FIRST = 0.1
_WATCH_RETRY_MAX = 1.0
# One line of the watch stream (one etcd watch response) may not be bigger:
# etcd sends at most 1000 revisions per response, each under its request
# limit, so this only stops a broken peer from exhausting memory.
_WATCH_LINE_MAX = 256 * 1024 * 1024


# -- encodings ------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def prefix_end(key: bytes) -> bytes:
    """
    The etcd C{range_end} that selects every key starting with C{key}: the
    key with its last byte below 0xff incremented (etcd's own rule).
    """
    end = bytearray(key)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    # All 0xff (or empty): "\0" means "to the end of the keyspace".
    return b"\x00"


def encode_value(
    value: bytes, content_type: str, expires: Optional[float], commit_id: str
) -> bytes:
    """The etcd value for one entry: a JSON header line, then the raw bytes."""
    header = json.dumps(
        {"v": ENVELOPE_VERSION, "ct": content_type, "exp": expires, "c": commit_id},
        separators=(",", ":"),
        sort_keys=True,
        allow_nan=False,
    )
    # ensure_ascii (the default) keeps newlines escaped inside the header, so
    # the first b"\n" always ends it.
    return header.encode("ascii") + b"\n" + value


def decode_value(key: str, data: bytes) -> Tuple[bytes, str, Optional[float], str]:
    """
    Split an etcd value into (value, content_type, expires, commit_id).

    @raise StoreCorrupt: if C{data} is not a kvtwist envelope.
    """
    head, newline, value = data.partition(b"\n")
    try:
        if not newline:
            raise ValueError("no header line")
        header = json.loads(head.decode("ascii"))
        if not isinstance(header, dict) or header.get("v") != ENVELOPE_VERSION:
            raise ValueError("unknown header")
        content_type = header["ct"]
        expires = header["exp"]
        commit_id = header.get("c", "")
        if not isinstance(content_type, str) or not isinstance(commit_id, str):
            raise ValueError("bad header field")
        if expires is not None:
            if isinstance(expires, bool) or not isinstance(expires, (int, float)):
                raise ValueError("bad expiry")
            expires = float(expires)
    except (ValueError, KeyError, UnicodeDecodeError) as e:
        raise StoreCorrupt("the value of key %r in etcd is not a kvtwist value: %s" % (key, e))
    return value, content_type, expires, commit_id


class _Row:
    """One kvtwist key as etcd holds it, expired or not."""

    __slots__ = ("entry", "commit_id")

    def __init__(self, entry: Entry, commit_id: str) -> None:
        self.entry = entry
        self.commit_id = commit_id


@dataclass(frozen=True)
class WatchReset:
    """
    What reset listeners hear (see L{EtcdStore.add_reset_listener} and the
    module docstring).

    @ivar watching: C{False} when the watch was just lost; C{True} when it
        runs (again), or when lost history was found while it runs.
    @ivar history_lost: listeners did not, and will never, hear some change
        at or below C{revision}: a change feed must drop its history up to
        C{revision} (resumes from before it are gone).
    @ivar revision: with C{watching=False}, the last revision the watch had
        covered (other clients' changes after it may be missing); with
        C{watching=True}, the watch delivers every change after it (and with
        C{history_lost}, not every change up to it was delivered).
    @ivar reason: a sentence for logs and readiness reports.
    """

    watching: bool
    history_lost: bool
    revision: int
    reason: str


def _gateway_setting(name: str, doc: str) -> property:
    """An L{EtcdStore} attribute that is its gateway's C{name}."""

    def get(store: "EtcdStore") -> Any:
        return getattr(store._gateway, name)

    def set_(store: "EtcdStore", value: Any) -> None:
        setattr(store._gateway, name, value)

    return property(get, set_, doc=doc)


class RiderBroken(Exception):
    """
    A L{Rider}'s guard key no longer had the expected mod_revision: the
    commit was not applied.

    @ivar mod_revision: the guard key's mod_revision found (0: absent).
    """

    def __init__(self, mod_revision: int) -> None:
        super().__init__("the guard key changed (mod_revision %d)" % (mod_revision,))
        self.mod_revision = mod_revision


class Rider:
    """
    State kept beside the data that must change in the very etcd
    transaction of a commit: the transaction manager's staged ops, deleted
    when their commit applies (L{kvtwist.store.etcd_transactions}).

    The rider's C{requests} (etcd C{RequestOp} documents) are added to the
    commit's transaction, guarded by a compare of C{guard_key}'s
    mod_revision with C{guard_mod}; if that compare is what failed, the
    commit fails with L{RiderBroken} instead of being retried.
    """

    def __init__(self, guard_key: bytes, guard_mod: int, requests: Sequence[dict]) -> None:
        self.guard_key = guard_key
        self.guard_mod = guard_mod
        self.requests = list(requests)

    def weight(self) -> Tuple[int, int, int]:
        """The compares, the requests and (roughly) the bytes the rider adds."""
        size = sum(len(json.dumps(r)) for r in self.requests) + len(self.guard_key) + _OP_OVERHEAD
        return 1, len(self.requests), size

    def ride(self, txn: dict) -> None:
        """Add the guard and the requests to C{txn}, an etcd txn request."""
        txn["compare"].append(_mod_compare(self.guard_key, self.guard_mod))
        txn["success"].extend(self.requests)
        txn["failure"] = [{"request_range": {"key": _b64(self.guard_key)}}]

    def check(self, document: dict) -> None:
        """
        @raise RiderBroken: if the failed transaction C{document} shows the
            guard key changed.
        """
        responses = document.get("responses") or [{}]
        kvs = responses[0].get("response_range", {}).get("kvs") or []
        found = int(kvs[0].get("mod_revision", 0)) if kvs else 0
        if found != self.guard_mod:
            raise RiderBroken(found)


@implementer(IHistoricalStore, ILeasingStore, ILinearizableReads, IWatchedStore, IEtcdKeyspace)
class EtcdStore:
    """
    A store on the etcd cluster reached through C{endpoints}.

    @param endpoints: base URLs of etcd members' client ports
        (C{"http://127.0.0.1:2379"}, or C{https://} for TLS), tried in order.
    @param reactor: the reactor that does the HTTP requests and times them
        out (L{IReactorTime} and TCP).
    @param prefix: every key this store owns lives under it (see the module
        docstring for the encoding).
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
    @param watch: run the watch (see the module docstring); without it,
        listeners hear only this store's own commits and no reset listener
        is ever called (for a store nobody else writes to, and for tests of
        the request layer).
    @param tls: the TLS policy for C{https} endpoints
        (L{kvtwist.store.etcd_gateway.EtcdTLS}: CA, client certificate); by
        default the platform's trust store and no client certificate.
    @param credentials: the etcd user and password to authenticate as
        (L{kvtwist.store.etcd_gateway.EtcdCredentials}), when etcd's auth is
        on.

    @ivar revision: the largest etcd revision seen (see the module docstring).
    @ivar active_endpoint: the endpoint the next request goes to first.
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
        self._reactor = reactor
        self._open = False
        self._inflight: Set[Deferred] = set()
        self._listeners = Listeners()
        # Ordered notification (see _deliver): commits whose transaction may
        # still be applied, each with the revision seen before it was sent,
        # and results waiting for them.
        self._unsettled: Dict[int, int] = {}
        self._tokens = itertools.count()
        # (revision, tie-breaker, result, waiter, reactor time it was held)
        self._held: List[Tuple[int, int, CommitResult, Deferred, float]] = []
        # The largest revision listeners heard (or were told they missed).
        self._delivered = 0
        self._resets: List[Callable[[WatchReset], None]] = []
        # The watch (see _watch_loop): whether to run one, its task, the
        # stream and request in flight, the pause between attempts.
        self._watch_wanted = watch
        self._watch_task: Optional[Deferred] = None
        self._watch_stopping = False
        self._watch_stream: Optional[_WatchStream] = None
        self._watch_request: Optional[Deferred] = None
        self._watch_sleep: Optional[Deferred] = None
        self._watch_live = False
        self._watch_endpoint: Optional[str] = None
        # The largest revision whose watch events were processed.
        self._watch_seen = 0
        # Own commits delivered directly (watch down) above _watch_seen: the
        # resumed watch skips them instead of calling them lost history.
        self._own_direct: Set[int] = set()
        # Lost history already reported up to this revision.
        self._gap_reported = 0
        self._stall_call: Any = None
        self._key_prefix = (prefix + "kv/").encode("utf-8")
        # expiry bucket (whole second the lease must outlive) -> (lease id,
        # clock time the lease ends)
        self._leases: Dict[int, Tuple[str, float]] = {}
        self._history = EtcdHistory(self)
        self._client_leases = EtcdLeases(self)
        self._recorders: Set["_Recorder"] = set()

    # The request settings live in the gateway, which applies them (and
    # words etcd's own refusals with the limits).
    timeout = _gateway_setting("timeout", "Seconds one request to one endpoint may take.")
    max_txn_ops = _gateway_setting(
        "max_txn_ops", "etcd's --max-txn-ops: the most keys a commit touches."
    )
    max_request_bytes = _gateway_setting(
        "max_request_bytes", "etcd's --max-request-bytes: the largest commit sent."
    )
    _current = _gateway_setting("current", "The index of the endpoint tried first.")

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
        return self._watch_live

    @property
    def watch_endpoint(self) -> Optional[str]:
        """The endpoint the running watch is on, or L{None}."""
        return self._watch_endpoint if self._watch_live else None

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
            d = self._stop_watch()
            d.addCallback(lambda _: self._release())
            return d.addCallback(lambda _: reason)

        return d.addErrback(failed)

    async def _open_async(self) -> None:
        """Check etcd, then start the watch and wait until it runs."""
        await self._ping(patient=True)
        try:
            await self._client_leases.recount()
            await self._history.probe()
        except Exception as e:
            # The compact revision is learned again at the first read etcd
            # finds compacted; the lease count at the next grant.
            log.warn("etcd: its leases or compact revision could not be read: {e}", e=_describe(e))
        if not self._watch_wanted:
            return
        self._watch_stopping = False
        self._watch_seen = self._delivered = max(self._delivered, self.revision)
        self._gap_reported = self._watch_seen
        ready: Deferred = Deferred()
        self._watch_task = Deferred.fromCoroutine(self._watch_loop(ready))
        await ready

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
        waiting.addCallback(lambda _: self._stop_watch())
        return waiting.addCallback(lambda _: self._release())

    def _release(self) -> Deferred:
        self._leases.clear()
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
        Read one live key, linearizably (see the module docstring); see
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
        return self._run(self._commit(list(ops), list(checks)))

    def commit_with(self, ops: Sequence[Op], checks: Sequence[Check], rider: "Rider") -> Deferred:
        """
        L{commit}, with C{rider}'s requests applied in the same etcd
        transaction and only while its guard holds (see L{Rider}).

        @return: like L{commit}; a commit that changed nothing (no ops to
            send) did not apply the rider either.
        @raise RiderBroken: (in the Deferred) the guard no longer held;
            nothing was applied.
        """
        return self._run(self._commit(list(ops), list(checks), rider))

    def delete_prefix(self, prefix: str, max_keys: int) -> Deferred:
        """
        One etcd transaction with one DeleteRange over the prefix; see
        L{IKeyValueStore.delete_prefix} and L{_delete_prefix}.
        """
        return self._run(self._delete_prefix(prefix, max_keys))

    def add_listener(self, listener) -> None:
        """
        Call C{listener(result)} for every revision that changed the key
        range, in revision order, each once: this store's commits before
        their committer hears back, other clients' changes when the watch
        delivers them (see the module docstring).
        """
        self._listeners.add(listener)

    def add_reset_listener(self, listener: Callable[[WatchReset], None]) -> None:
        """
        Call C{listener(reset)} with a L{WatchReset} each time the watch is
        lost, runs again, or finds that listeners missed changes (see the
        module docstring for what a cache and a change feed should do).
        Called on the reactor thread; an exception is logged and ignored.
        """
        self._resets.append(listener)

    # -- history (etcd's own revisions; see kvtwist.store.etcd_history) -----

    @property
    def compact_revision(self) -> int:
        """etcd's compact revision, as last learned (see L{EtcdHistory})."""
        return self._history.compact_revision

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
        return self._run(self._history.get_at(key, revision))

    def list_at(
        self, prefix: str, after: Optional[str], limit: int, revision: int,
        max_bytes: Optional[int] = None,
    ) -> Deferred:
        """Ranges at C{revision}; see L{IHistoricalStore.list_at}."""
        if limit < 1:
            raise ValueError("a listing needs a limit of at least 1")
        return self._run(self._history.list_at(prefix, after, limit, revision, max_bytes))

    def changes(self, after: int, upto: int, max_records: int) -> Deferred:
        """An etcd watch from C{after + 1}; see L{IHistoricalStore.changes}."""
        return self._run(self._history.changes(after, upto, max_records))

    def compact(self, revision: int, max_records: int) -> Deferred:
        """
        etcd's compaction at C{revision}, in one call (etcd bounds its own
        batches); see L{IHistoricalStore.compact}.
        """
        return self._run(self._history.compact(revision))

    # -- client leases (etcd leases; see kvtwist.store.etcd_leases) ---------

    @property
    def lease_count(self) -> int:
        """Leases held: counted at open, then followed through the watch."""
        return self._client_leases.count

    #: etcd expires leases itself: the sweeper never has to wake for one.
    next_deadline = None

    def grant(self, ttl: float, max_leases: int) -> Deferred:
        """An etcd lease and its anchor; see L{ILeasingStore.grant}."""
        return self._run(self._client_leases.grant(ttl, max_leases))

    def keepalive(self, lease_id: int) -> Deferred:
        """etcd's keepalive: no revision; see L{ILeasingStore.keepalive}."""
        return self._run(self._client_leases.keepalive(lease_id))

    def lease(self, lease_id: int) -> Deferred:
        """etcd's timetolive with keys; see L{ILeasingStore.lease}."""
        return self._run(self._client_leases.lease(lease_id))

    def revoke(self, lease_id: int) -> Deferred:
        """etcd's revoke, one revision; see L{ILeasingStore.revoke}."""
        return self._run(self._client_leases.revoke(lease_id))

    def expired_leases(self, limit: int) -> Deferred:
        """Always empty: etcd expires leases and deletes their keys itself."""
        return succeed([])

    def expire_lease(self, lease_id: int) -> Deferred:
        """Nothing to do (L{None}): etcd expires leases itself."""
        return succeed(None)

    async def _check_client_leases(self, plan: List[Tuple[Op, Optional[Entry]]]) -> None:
        """
        @raise kvtwist.errors.LeaseNotFound: a client lease a put of C{plan}
            names is gone.
        """
        for op, _ in plan:
            if isinstance(op, Put) and op.lease is not None:
                await self._client_leases.lease(op.lease)

    def record_deliveries(self) -> "_Recorder":
        """
        Start keeping what the watch delivers, per revision, to learn the
        result of a change etcd made on this store's behalf (a revoke).
        """
        recorder = _Recorder(self)
        self._recorders.add(recorder)
        return recorder

    def _recorded(self, revision: int, result: Optional[CommitResult]) -> None:
        for recorder in list(self._recorders):
            recorder.saw(revision, result)

    def expired(self, limit: int) -> Deferred:
        """
        Always an empty list: leases make etcd remove expired keys itself,
        and reads treat them as absent until it does.
        """
        return self._run(self._nothing_expired())

    async def _nothing_expired(self) -> list:
        return []

    def ping(self) -> Deferred:
        """
        Ask the endpoints for their status, in turn, until one reports a
        leader and no alarm; fails with L{StoreUnavailable} saying why when
        none does (no quorum: no member knows a leader).
        """
        return self._run(self._ping())

    # -- HTTP ---------------------------------------------------------------

    async def _post(self, endpoint: str, path: str, body: dict) -> dict:
        """
        One request to one endpoint, bounded by the timeout, with the auth
        token when there are credentials (see L{EtcdGateway.request}).

        @raise _NotSent: nothing reached etcd.
        @raise _Ambiguous: the answer was lost.
        @raise _Answered: etcd answered with an error document.
        """
        return await self._gateway.request(endpoint, path, body)

    async def call(self, path: str, body: dict, write: bool = False) -> dict:
        """
        Send one etcd v3 gateway request (C{path}, JSON C{body}), failing
        over between endpoints (see L{EtcdGateway.call}), and keep the
        revision of its answer. Public for what keeps its own keys in the
        same etcd under this store's prefix
        (L{kvtwist.store.etcd_transactions}).

        A read goes to the next endpoint after any failure; a write only
        after failures that prove it was not applied, otherwise it raises
        L{_Ambiguous}. The endpoint that answers becomes the first to try.

        @raise StoreUnavailable: when no endpoint could serve it.
        """
        document = await self._gateway.call(path, body, write)
        self._saw(document.get("header"))
        return document

    def _saw(self, header: Any) -> None:
        """Keep the largest revision of any answer."""
        if isinstance(header, dict):
            revision = int(header.get("revision", 0))
            if revision > self.revision:
                self.revision = revision

    # -- reading ------------------------------------------------------------

    def _etcd_key(self, key: str) -> bytes:
        return self._key_prefix + key.encode("utf-8")

    def _range_end(self, start: bytes) -> bytes:
        """
        The end of the range of kvtwist keys starting with C{start}: never
        past the last kvtwist key, where lease anchors follow (etcd_leases).
        """
        return min(prefix_end(start), self._key_prefix + b"\xff")

    def _decode_key(self, raw_key: bytes) -> str:
        """The kvtwist key of an etcd key in this store's range."""
        if not raw_key.startswith(self._key_prefix):
            raise EtcdError("etcd returned a key outside the range asked for")
        try:
            return raw_key[len(self._key_prefix):].decode("utf-8")
        except UnicodeDecodeError:
            raise StoreCorrupt("a key under %r in etcd is not UTF-8" % (self.prefix,))

    def _row(self, kv: dict) -> _Row:
        """Decode one etcd kv of this store into a L{_Row}."""
        key = self._decode_key(_unb64(kv["key"]))
        value, content_type, expires, commit_id = decode_value(
            key, _unb64(kv.get("value", ""))
        )
        entry = Entry(
            key=key,
            value=value,
            content_type=content_type,
            create_revision=int(kv.get("create_revision", 0)),
            mod_revision=int(kv.get("mod_revision", 0)),
            version=int(kv.get("version", 0)),
            expires=expires,
        )
        return _Row(entry, commit_id)

    async def _get(self, key: str) -> Optional[Entry]:
        document = await self.call("/v3/kv/range", {"key": _b64(self._etcd_key(key))})
        kvs = document.get("kvs") or []
        if not kvs:
            return None
        return live(self._row(kvs[0]).entry, self.clock.seconds())

    async def _get_many(self, keys: List[str]) -> Dict[str, Entry]:
        if not keys:
            return {}
        rows, _ = await self._read_rows(keys)
        now = self.clock.seconds()
        return {
            key: row.entry for key, row in rows.items() if row.entry.is_live(now)
        }

    async def _read_rows(self, keys: Iterable[str]) -> Tuple[Dict[str, _Row], int]:
        """
        Read C{keys} (expired ones included) at one revision: read-only
        transactions of at most C{max_txn_ops} ranges, all pinned to the
        revision of the first.

        @return: the rows found and the revision they were read at.
        """
        unique = list(dict.fromkeys(keys))
        for attempt in range(_READ_ATTEMPTS):
            rows: Dict[str, _Row] = {}
            revision = 0
            try:
                for start in range(0, max(len(unique), 1), self.max_txn_ops):
                    chunk = unique[start:start + self.max_txn_ops]
                    ranges = []
                    for key in chunk:
                        request: Dict[str, Any] = {"key": _b64(self._etcd_key(key))}
                        if revision:
                            request["revision"] = str(revision)
                        ranges.append({"request_range": request})
                    document = await self.call("/v3/kv/txn", {"success": ranges})
                    if not revision:
                        revision = int(document["header"]["revision"])
                    for response in document.get("responses") or []:
                        for kv in response.get("response_range", {}).get("kvs") or []:
                            row = self._row(kv)
                            rows[row.entry.key] = row
            except _Compacted:
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
                return await self._list_once(prefix, after, limit, max_bytes)
            except _Compacted:
                continue
        raise StoreUnavailable(
            "etcd compacted the revision of a listing %d times" % (_READ_ATTEMPTS,)
        )

    async def _list_once(
        self, prefix: str, after: Optional[str], limit: int, max_bytes: Optional[int],
        revision: int = 0,
    ) -> Page:
        """
        Range over the prefix at one revision (C{revision}, or the current
        one when 0), skipping expired keys, until the page is full (C{limit}
        live entries, or C{max_bytes}) and one more live entry is found, or
        the range ends.
        """
        start = self._etcd_key(prefix)
        end = self._range_end(start)
        if after is not None:
            start = max(start, self._etcd_key(after) + b"\x00")
        builder = PageBuilder(limit, max_bytes, self.clock.seconds())
        batch = min(builder.batch(), _LIST_BATCH_MAX)
        for _ in range(_LIST_ROUNDS):
            body: Dict[str, Any] = {
                "key": _b64(start),
                "range_end": _b64(end),
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
                if not builder.take(self._row(kv).entry):
                    return builder.page(revision)
            if not document.get("more") or not kvs:
                return builder.page(revision)
            start = _unb64(kvs[-1]["key"]) + b"\x00"
            # Expired keys took room in this batch: ask for more next time.
            batch = min(builder.batch(batch), _LIST_BATCH_MAX)
        raise StoreUnavailable(
            "the listing of %r met too many expired keys; etcd's leases have "
            "not removed them yet" % (prefix,)
        )

    async def _ping(self, patient: bool = False) -> None:
        """
        Succeed once one member reports a leader and no alarm, trying each
        endpoint in turn from the current one. C{patient} (for open) goes
        round again for up to a timeout, so an election is waited out.
        """
        document = await self._gateway.ping(patient)
        self._saw(document.get("header"))

    # -- committing ---------------------------------------------------------

    def _estimate_size(self, final: Dict[str, Op], touched: List[str]) -> int:
        """Roughly the bytes etcd counts for the transaction (protobuf)."""
        size = _TXN_OVERHEAD
        for key in touched:
            size += len(self._etcd_key(key)) + _OP_OVERHEAD
        for op in final.values():
            size += len(self._etcd_key(op.key)) + _OP_OVERHEAD
            if isinstance(op, Put):
                # the envelope header is small; count it generously
                size += len(op.value) + len(op.content_type) + 96
        return size

    async def _commit(
        self, ops: List[Op], checks: List[Check], rider: Optional["Rider"] = None
    ) -> CommitResult:
        # Increments become writes of the values read in _attempt (guarded
        # like every write, so a concurrent change makes them read again).
        final = final_ops(fold_increments(ops))
        touched = list(dict.fromkeys([c.key for c in checks] + list(final)))
        if not touched:
            return CommitResult(self.revision, ())
        # etcd counts the compares and the requests of each branch apart.
        compares, requests, extra_bytes = rider.weight() if rider is not None else (0, 0, 0)
        operations = max(len(touched) + compares, len(final) + requests)
        if operations > self.max_txn_ops:
            raise LimitExceeded(
                "etcd max-txn-ops",
                self.max_txn_ops,
                operations,
                hint="a commit is one etcd transaction with one compare per "
                "checked or written key%s; raise etcd's --max-txn-ops (and "
                "kvtwist's setting with it)"
                % (" and two requests that remove the transaction's staged state"
                   if rider is not None else ""),
            )
        size = self._estimate_size(final, touched) + extra_bytes
        if size > self.max_request_bytes:
            raise LimitExceeded(
                "etcd max-request-bytes",
                self.max_request_bytes,
                size,
                hint="a commit is one etcd request; raise etcd's "
                "--max-request-bytes (and kvtwist's setting with it)",
            )
        commit_id = os.urandom(8).hex()
        # Set when an attempt's answer was lost: its plan, the mod_revisions
        # its compares expected and why it was lost.
        lost: List[Tuple[List[Tuple[Op, Optional[Entry]]], Dict[str, int], str]] = []
        token = next(self._tokens)
        # Expired keys removed on the way (see _purge), to tell listeners.
        purged: List[CommitResult] = []
        try:
            result = await self._attempt(
                final, touched, checks, commit_id, lost, token, purged, rider
            )
        except (StoreUnavailable, ConflictError) as e:
            self._settle(token, purged)
            if lost and e.extra.get("outcome") != "unknown":
                # A lost attempt that still sits in etcd's log could apply
                # later: "nothing was applied" would be a lie.
                raise _unknown_outcome(lost[-1][2], e.detail)
            raise
        except BaseException:
            self._settle(token, purged)
            raise
        await self._settle(token, purged + [result])
        return result

    async def _delete_prefix(self, prefix: str, max_keys: int) -> CommitResult:
        """
        Count the keys under C{prefix} at a revision R, then delete them in
        one transaction guarded by "nothing in the range was written after
        R" (a compare over the range), so the count the limit was checked
        against is the set deleted; retried when a write got in between.
        The count includes keys that expired moments ago and that etcd's
        lease has not removed yet (they are deleted too, as C{expire}
        changes).
        """
        start = self._etcd_key(prefix)
        end = self._range_end(start)
        for attempt in range(_COMMIT_ATTEMPTS):
            counted = await self.call(
                "/v3/kv/range",
                {"key": _b64(start), "range_end": _b64(end), "count_only": True},
            )
            count = int(counted.get("count", 0))
            if count > max_keys:
                raise LimitExceeded(
                    "max_keys_per_request",
                    max_keys,
                    count,
                    hint="a prefix delete counts each key it deletes",
                )
            if not count:
                return CommitResult(self.revision, ())
            read_at = int(counted["header"]["revision"])
            body = {
                "compare": [
                    {
                        "key": _b64(start),
                        "range_end": _b64(end),
                        "target": "MOD",
                        "result": "LESS",
                        "mod_revision": str(read_at + 1),
                    }
                ],
                "success": [
                    {
                        "request_delete_range": {
                            "key": _b64(start),
                            "range_end": _b64(end),
                            "prev_kv": True,
                        }
                    }
                ],
            }
            token = next(self._tokens)
            self._unsettled.setdefault(token, self.revision)
            try:
                document = await self.call("/v3/kv/txn", body, write=True)
            except _Ambiguous as e:
                self._settle(token, [])
                # Not retried: a second DeleteRange would also delete keys
                # written since.
                raise _unknown_outcome(str(e), "a prefix delete is not retried")
            except BaseException:
                self._settle(token, [])
                raise
            if not document.get("succeeded"):
                self._settle(token, [])
                continue
            now = self.clock.seconds()
            changes = []
            for response in document.get("responses") or []:
                deleted = response.get("response_delete_range", {})
                for kv in deleted.get("prev_kvs") or []:
                    entry = self._row(kv).entry
                    kind = "delete" if entry.is_live(now) else "expire"
                    changes.append(Change(kind, entry.key, None, entry))
            result = CommitResult(int(document["header"]["revision"]), tuple(changes))
            await self._settle(token, [result])
            return result
        raise StoreUnavailable(
            "the prefix delete lost the race against concurrent writes under "
            "its prefix %d times; nothing was applied" % (_COMMIT_ATTEMPTS,)
        )

    def _settle(self, token: int, results: List[CommitResult]) -> Deferred:
        """
        Commit C{token} is over; queue its C{results} for the listeners.

        Listeners must hear commits in revision order, but concurrent
        commits' answers arrive in any order, and other clients' changes
        arrive through the watch. See L{_deliver}.

        @return: a Deferred that fires once C{results} were delivered (or
            the watch delivered their revisions first).
        """
        self._unsettled.pop(token, None)
        waiter: Deferred = succeed(None)
        now = self._reactor.seconds()
        for result in results:
            if result.changes:
                waiter = Deferred()
                heapq.heappush(
                    self._held, (result.revision, next(self._tokens), result, waiter, now)
                )
        self._deliver()
        return waiter

    def _deliver(self) -> None:
        """
        Release held results of this store's own commits.

        One whose revision listeners already heard (the watch delivered it)
        only wakes its committer. While the watch runs, the rest wait for it:
        it delivers them in order among other clients' changes. Otherwise a
        result is delivered once no unsettled commit could take a revision
        below it: an unsettled commit was registered with the revision seen
        before it was sent, and its revision will be above that.
        """
        if self._unsettled:
            # A revision belongs to one transaction only: floor + 1 is safe.
            limit: Optional[int] = min(self._unsettled.values()) + 1
        else:
            limit = None
        while self._held:
            revision, _, result, waiter, _ = self._held[0]
            if revision <= self._delivered:
                heapq.heappop(self._held)
                waiter.callback(None)
                continue
            if self._watch_live or (limit is not None and revision > limit):
                break
            heapq.heappop(self._held)
            self._delivered = revision
            if self._watch_task is not None:
                self._own_direct.add(revision)
            self._listeners.notify(result)
            waiter.callback(None)
        self._arm_stall_timer()

    async def _attempt(
        self,
        final: Dict[str, Op],
        touched: List[str],
        checks: List[Check],
        commit_id: str,
        lost: List[Tuple[List[Tuple[Op, Optional[Entry]]], Dict[str, int], str]],
        token: int,
        purged: List[CommitResult],
        rider: Optional["Rider"] = None,
    ) -> CommitResult:
        """
        The read-decide-transact loop of L{_commit}; appends to C{lost} each
        attempt whose answer was lost, to C{purged} the removals of expired
        keys it made, and registers C{token} as unsettled before its first
        write. C{rider} goes into the transaction that applies the plan.
        """
        attempts = (
            _INCREMENT_ATTEMPTS
            if any(isinstance(op, Incr) for op in final.values())
            else _COMMIT_ATTEMPTS
        )
        for attempt in range(attempts):
            rows, _ = await self._read_rows(touched)
            if lost:
                plan, guards, reason = lost[-1]
                landed = self._landed(plan, rows, commit_id)
                if landed is not None:
                    return landed
                if any(_mod(rows.get(k)) != m for k, m in guards.items()):
                    raise _unknown_outcome(reason, "its keys changed since")
                # Nothing changed: the lost attempt has not applied, and as
                # the next attempt expects the same revisions, at most one of
                # the two ever will.
            now = self.clock.seconds()
            current = {k: live(r.entry, now) for k, r in rows.items()}
            failures = []
            for check in checks:
                entry = current.get(check.key)
                actual = entry.mod_revision if entry is not None else 0
                if not check.holds(actual):
                    failures.append(CheckFailure(check, actual))
            if failures:
                raise ConflictError(failures)
            # etcd refuses a delete and a put of one key in one transaction,
            # so expired keys about to be written again go first, on their own.
            stale = {
                k: rows[k].entry.mod_revision
                for k, op in final.items()
                if isinstance(op, (Put, Incr)) and k in rows and current[k] is None
            }
            if stale:
                self._unsettled.setdefault(token, self.revision)
                removed = await self._purge(stale, rows)
                if removed is not None:
                    purged.append(removed)
                continue
            plan: List[Tuple[Op, Optional[Entry]]] = []
            for key, op in final.items():
                if isinstance(op, Expire):
                    # The sweeper's op: only the very version it saw, and
                    # only once expired.
                    row = rows.get(key)
                    if (
                        row is not None
                        and row.entry.mod_revision == op.mod_revision
                        and current[key] is None
                    ):
                        plan.append((op, row.entry))
                elif isinstance(op, Incr):
                    plan.append((increment(current.get(key), op), current.get(key)))
                elif isinstance(op, Put) or current.get(key) is not None:
                    plan.append((op, current.get(key)))
            if not plan:
                if lost:
                    raise _unknown_outcome(lost[-1][2], "its deletes found nothing")
                return CommitResult(self.revision, ())
            guards = {k: _mod(rows.get(k)) for k in touched}
            self._unsettled.setdefault(token, self.revision)
            try:
                txn = await self._transaction(plan, guards, commit_id, now)
                if rider is not None:
                    rider.ride(txn)
                document = await self.call("/v3/kv/txn", txn, write=True)
            except _Ambiguous as e:
                lost.append((plan, guards, str(e)))
                continue
            except _LeaseGone:
                # A client's lease is gone (the commit fails), or a cached
                # expiry lease ran out between grant and use: nothing was
                # applied; grant afresh.
                await self._check_client_leases(plan)
                self._leases.clear()
                continue
            if document.get("succeeded"):
                return _result(plan, int(document["header"]["revision"]))
            if rider is not None:
                rider.check(document)
            # A compare failed: another commit changed a touched key between
            # our read and our transaction. Read again and decide again.
        raise StoreUnavailable(
            "the commit lost the race against concurrent commits on its keys "
            "%d times; nothing was applied" % (attempts,)
        )

    def _landed(
        self,
        plan: List[Tuple[Op, Optional[Entry]]],
        rows: Dict[str, _Row],
        commit_id: str,
    ) -> Optional[CommitResult]:
        """
        The result of an attempt whose answer was lost, if its commit id is
        found in a value it wrote; else L{None}.
        """
        for op, _ in plan:
            row = rows.get(op.key)
            if isinstance(op, Put) and row is not None and row.commit_id == commit_id:
                return _result(plan, row.entry.mod_revision)
        return None

    async def _purge(
        self, stale: Dict[str, int], rows: Dict[str, _Row]
    ) -> Optional[CommitResult]:
        """
        Delete expired keys that are about to be written again, each only if
        it is still the expired version that was read.

        @return: the removal as C{expire} changes, if it was applied.
        """
        body = {
            "compare": [_mod_compare(self._etcd_key(k), m) for k, m in stale.items()],
            "success": [
                {"request_delete_range": {"key": _b64(self._etcd_key(k))}}
                for k in stale
            ],
        }
        try:
            document = await self.call("/v3/kv/txn", body, write=True)
        except _Ambiguous:
            # Either way the next read tells what is there.
            return None
        if not document.get("succeeded"):
            return None
        return CommitResult(
            int(document["header"]["revision"]),
            tuple(Change("expire", k, None, rows[k].entry) for k in stale),
        )

    async def _transaction(
        self,
        plan: List[Tuple[Op, Optional[Entry]]],
        guards: Dict[str, int],
        commit_id: str,
        now: float,
    ) -> dict:
        """The etcd txn request for C{plan}, guarded by C{guards}."""
        success = []
        for op, _ in plan:
            key = _b64(self._etcd_key(op.key))
            if not isinstance(op, Put):
                success.append({"request_delete_range": {"key": key}})
                continue
            put: Dict[str, Any] = {
                "key": key,
                "value": _b64(
                    encode_value(op.value, op.content_type, _expiry(op.expires), commit_id)
                ),
            }
            if op.lease is not None:
                # A client lease: etcd deletes the key when it ends (the
                # envelope's expiry, if any, still decides reads).
                put["lease"] = str(op.lease)
            elif op.expires is not None:
                put["lease"] = await self._lease_for(op.expires, now)
            success.append({"request_put": put})
        return {
            "compare": [_mod_compare(self._etcd_key(k), m) for k, m in guards.items()],
            "success": success,
        }

    async def _lease_for(self, expires: float, now: float) -> str:
        """
        A lease that ends C{LEASE_MARGIN} seconds after C{expires}; one is
        granted per expiry second and reused while it lives.
        """
        bucket = math.ceil(expires) + LEASE_MARGIN
        cached = self._leases.get(bucket)
        if cached is not None and cached[1] > now + 1:
            return cached[0]
        ttl = max(bucket - math.floor(now), LEASE_MARGIN)
        document = await self.call("/v3/lease/grant", {"TTL": str(ttl)})
        lease = str(document["ID"])
        for old in [b for b, (_, ends) in self._leases.items() if ends <= now]:
            del self._leases[old]
        if len(self._leases) >= _LEASE_CACHE_SIZE:
            del self._leases[min(self._leases)]
        self._leases[bucket] = (lease, now + ttl)
        return lease


    # -- the watch ------------------------------------------------------------

    async def _watch_loop(self, ready: Deferred) -> None:
        """
        Keep a watch running until L{_stop_watch}: start one on the current
        endpoint, and whenever it ends, tell reset listeners and start the
        next one on the next endpoint, from the last revision processed.
        C{ready} fires once the first watch runs, or fails once every
        endpoint has failed in a row (then L{open} fails).
        """
        failures = 0
        index = self._current
        count = len(self.endpoints)
        reasons: List[str] = []
        # After a compaction: the next watch starts from the current revision
        # (fresh), and its reset says history was lost (lost, the reason).
        fresh = False
        lost = ""
        try:
            while not self._watch_stopping:
                endpoint = self.endpoints[index]
                compacted = 0
                if fresh:
                    reason = await self._skip_to_current()
                    if not reason:
                        fresh = False
                        continue
                else:
                    reason, compacted = await self._watch_attempt(endpoint, ready, lost)
                    if self._watch_live:
                        if self._watch_stopping:
                            break
                        # It ran: whatever ended it, the next attempt
                        # begins a fresh round over the endpoints.
                        failures = 0
                        reasons = []
                        lost = ""
                        self._watch_lost(reason)
                if self._watch_stopping:
                    break
                if compacted:
                    self._history.learned(compacted)
                    fresh = True
                    lost = (
                        "etcd compacted its history up to revision %d before the "
                        "watch could resume after revision %d"
                        % (compacted, self._watch_seen)
                    )
                    log.warn("etcd watch: {lost}; resuming from the current revision", lost=lost)
                    continue
                failures += 1
                reasons.append(reason)
                if failures >= count and not ready.called:
                    ready.errback(
                        Failure(StoreUnavailable(
                            "the etcd watch could not be started: " + "; ".join(reasons[-count:])
                        ))
                    )
                    if self._watch_stopping:
                        break
                index = (index + 1) % count
                delay = 0.0
                if failures >= count:
                    delay = min(
                        _WATCH_RETRY_FIRST * 2 ** min(failures - count, 8), _WATCH_RETRY_MAX
                    )
                self._watch_sleep = deferLater(self._reactor, delay)
                try:
                    await self._watch_sleep
                except CancelledError:
                    break
                finally:
                    self._watch_sleep = None
        except Exception:
            log.failure("the etcd watch loop failed")
            if not ready.called:
                ready.errback(Failure(StoreUnavailable("the etcd watch failed to start")))
        finally:
            self._watch_live = False
            self._watch_endpoint = None

    async def _skip_to_current(self) -> str:
        """
        After a compaction: learn the current revision and treat everything
        up to it as delivered (it is lost history). Returns why it failed,
        or the empty string.
        """
        try:
            document = await self.call(
                "/v3/kv/range", {"key": _b64(self._key_prefix), "count_only": True}
            )
            current = int(document["header"]["revision"])
        except Exception as e:
            return "the current revision could not be read: %s" % (_describe(e),)
        if current > self._watch_seen:
            self._watch_seen = current
        if current > self._delivered:
            self._delivered = current
        self._own_direct = {r for r in self._own_direct if r > self._watch_seen}
        self._deliver()
        return ""

    async def _watch_attempt(self, endpoint: str, ready: Deferred, lost: str) -> Tuple[str, int]:
        """
        Run one watch on C{endpoint} from the revision after C{_watch_seen}
        until it ends. If etcd refused its auth token before it began (it
        expired), it is tried once more with a new one.

        @return: why it ended (or could not start), and the compacted
            revision when etcd refused it for that, else 0.
        """
        reason, compacted, refused = await self._watch_once(endpoint, ready, lost)
        if refused and not self._watch_stopping:
            reason, compacted, _ = await self._watch_once(endpoint, ready, lost)
        return reason, compacted

    async def _watch_once(
        self, endpoint: str, ready: Deferred, lost: str
    ) -> Tuple[str, int, bool]:
        """
        L{_watch_attempt}'s one watch; also says whether etcd refused the
        auth token before the watch began (the gateway then gets a new one).
        """
        start = self._watch_seen + 1
        body = {
            "create_request": {
                "key": _b64(self._key_prefix),
                "range_end": _b64(prefix_end(self._key_prefix)),
                "start_revision": str(start),
                "prev_kv": True,
            }
        }
        # The gateway sends it over its TLS, with the auth token, and asks
        # etcd to cancel it when its member loses the leader, rather than
        # leave it silent in a minority.
        request = self._gateway.open_stream(endpoint, "/v3/watch", body)
        request.addTimeout(self.timeout, self._reactor)
        self._watch_request = request
        try:
            response, token = await request
        except Exception as e:
            if isinstance(e, (CancelledError, DeferTimeoutError)) and not self._watch_stopping:
                return "%s: no answer to the watch within %gs" % (endpoint, self.timeout), 0, False
            return "%s: %s" % (endpoint, _describe(e)), 0, False
        finally:
            self._watch_request = None
        stream = _WatchStream(self._watch_document)
        self._watch_stream = stream
        if response.code != 200:
            stream.http_error = response.code
        # Bounds the wait for etcd's "created" (or for an error body's end).
        timer = self._reactor.callLater(
            self.timeout, stream.abort, "no watch created within %gs" % (self.timeout,)
        )
        try:
            response.deliverBody(stream)
            try:
                await stream.created
            except Exception:
                await stream.done
                if stream.token_refused:
                    self._gateway.token_refused(token)
                return (
                    "%s: %s" % (endpoint, stream.reason or "the watch ended at once"),
                    stream.compacted,
                    stream.token_refused,
                )
            finally:
                if timer.active():
                    timer.cancel()
            if self._watch_stopping:
                stream.abort("the store is closing")
            else:
                self._watch_started(endpoint, start, lost)
                if not ready.called:
                    ready.callback(None)
            reason = await stream.done
            return "%s: %s" % (endpoint, reason), stream.compacted, False
        finally:
            if timer.active():
                timer.cancel()
            if not stream.done.called and stream.transport is not None:
                # Wait for the connection to go, so close() leaves nothing.
                stream.abort("the store is closing")
                await stream.done
            self._watch_stream = None

    def _watch_started(self, endpoint: str, start: int, lost: str) -> None:
        """A watch was created: listeners will hear every change from C{start}."""
        self._watch_live = True
        self._watch_endpoint = endpoint
        reason = "watching from revision %d on %s" % (start, endpoint)
        if lost:
            reason += "; " + lost
            self._gap_reported = max(self._gap_reported, start - 1)
            # Anchors made or deleted in the gap were not seen: count again.
            Deferred.fromCoroutine(self._client_leases.recount()).addErrback(
                lambda f: log.warn("etcd: leases not counted again: {e}", e=_describe(f.value))
            )
        self._notify_resets(WatchReset(True, bool(lost), start - 1, reason))
        self._deliver()

    def _watch_lost(self, reason: str) -> None:
        """The running watch ended: say so, and deliver own commits directly."""
        self._watch_live = False
        self._watch_endpoint = None
        log.info("etcd watch lost: {reason}", reason=reason)
        self._notify_resets(
            WatchReset(False, False, self._watch_seen, "the etcd watch was lost: " + reason)
        )
        self._deliver()

    def _notify_resets(self, reset: WatchReset) -> None:
        for listener in list(self._resets):
            try:
                listener(reset)
            except Exception:
                log.failure("a watch reset listener failed")

    def _stop_watch(self) -> Deferred:
        """
        End the watch (for close or a failed open).

        @return: a Deferred firing once its connection is gone.
        """
        self._watch_stopping = True
        if self._stall_call is not None and self._stall_call.active():
            self._stall_call.cancel()
        self._stall_call = None
        for pending in (self._watch_request, self._watch_sleep):
            if pending is not None and not pending.called:
                pending.cancel()
        if self._watch_stream is not None:
            self._watch_stream.abort("the store is closing")
        task, self._watch_task = self._watch_task, None
        self._own_direct.clear()
        if task is None:
            return succeed(None)
        finished: Deferred = Deferred()

        def ended(result: object) -> None:
            # Let the aborted connection's last callbacks run before the
            # caller closes the pool.
            self._reactor.callLater(0, finished.callback, None)

        task.addBoth(ended)
        return finished

    def _arm_stall_timer(self) -> None:
        """
        While the watch runs and own results wait for it, make sure they do
        not wait longer than a timeout (see L{_watch_stalled}).
        """
        if self._watch_live and self._held:
            if self._stall_call is None or not self._stall_call.active():
                oldest = min(item[4] for item in self._held)
                delay = max(0.0, oldest + self.timeout - self._reactor.seconds())
                self._stall_call = self._reactor.callLater(delay, self._watch_stalled)
        elif self._stall_call is not None:
            if self._stall_call.active():
                self._stall_call.cancel()
            self._stall_call = None

    def _watch_stalled(self) -> None:
        """
        An own commit has waited a timeout for the watch: the watch is stuck
        (e.g. on a member that cannot see etcd's leader but was not told so).
        End it; the loop starts another on the next endpoint, and own
        commits are delivered directly meanwhile.
        """
        self._stall_call = None
        if not (self._watch_live and self._held):
            return
        oldest = min(item[4] for item in self._held)
        if self._reactor.seconds() - oldest < self.timeout:
            self._arm_stall_timer()
            return
        revision = min(item[0] for item in self._held)
        reason = "the watch did not deliver revision %d within %gs of its commit" % (
            revision,
            self.timeout,
        )
        if self._watch_stream is not None:
            self._watch_stream.abort(reason)
        else:
            self._watch_lost(reason)

    def _watch_document(self, stream: "_WatchStream", line: bytes) -> None:
        """Handle one document of a watch stream (see L{_WatchStream})."""
        try:
            document = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            stream.abort("the watch sent a line that is not JSON")
            return
        if not isinstance(document, dict):
            stream.abort("the watch sent a document that is not an object")
            return
        error = document.get("error")
        if error is not None:
            # The gateway's stream error (e.g. "no leader"); the connection
            # ends with it.
            message = error.get("message") if isinstance(error, dict) else error
            stream.token_refused = is_token_refusal(str(message))
            stream.abort("etcd ended the watch: %s" % (message,))
            return
        result = document.get("result")
        if not isinstance(result, dict):
            stream.abort("the watch sent a document without a result")
            return
        if result.get("canceled"):
            compacted = int(result.get("compact_revision") or 0)
            stream.compacted = compacted
            why = result.get("cancel_reason") or (
                "revision %d is compacted" % (compacted,) if compacted else "no reason given"
            )
            # e.g. "rpc error: code = Unauthenticated desc = etcdserver:
            # invalid auth token", for a token that expired.
            stream.token_refused = is_token_refusal(str(why))
            if "PermissionDenied" in str(why):
                why = (
                    "%s (kvtwist's etcd user may not read its key prefix, or etcd's "
                    "auth is on and kvtwist has no credentials)" % (why,)
                )
            stream.abort("etcd canceled the watch: %s" % (why,))
            return
        if result.get("created") and not stream.created.called:
            stream.created.callback(None)
        events = result.get("events")
        if events:
            try:
                self._watch_events(events)
            except (KeyError, TypeError, ValueError) as e:
                stream.abort("the watch sent a malformed event: %s" % (_describe(e),))
                return
        self._saw(result.get("header"))

    def _watch_events(self, events: List[dict]) -> None:
        """
        Deliver watch events, one L{CommitResult} per revision, in order,
        skipping revisions already processed or already delivered.
        """
        groups: Dict[int, List[dict]] = {}
        for event in events:
            groups.setdefault(int(event["kv"]["mod_revision"]), []).append(event)
        for revision in sorted(groups):
            if revision <= self._watch_seen:
                continue
            self._watch_seen = revision
            if revision > self.revision:
                self.revision = revision
            self._client_leases.follow(groups[revision])
            if all(self._client_leases.is_reserved(_unb64(e["kv"]["key"])) for e in groups[revision]):
                # Only lease anchors changed: no kvtwist key did.
                self._recorded(revision, None)
                continue
            if revision <= self._delivered:
                if revision in self._own_direct:
                    # Delivered directly while the watch was down.
                    self._own_direct.discard(revision)
                elif revision > self._gap_reported:
                    self._lost_history(
                        "another client's change at revision %d reached the watch "
                        "after this store's commits up to revision %d had been "
                        "delivered" % (revision, self._delivered)
                    )
                continue
            own = self._held_result(revision)
            if own is None:
                try:
                    own = self._watch_result(revision, groups[revision])
                except (StoreCorrupt, EtcdError) as e:
                    # The change happened, but listeners cannot be told
                    # what it was: they must treat what they know as stale.
                    log.error("etcd watch: revision {revision}: {e}", revision=revision, e=e)
                    self._delivered = revision
                    self._lost_history(
                        "the change at revision %d could not be decoded: %s" % (revision, e)
                    )
                    continue
            self._delivered = revision
            self._listeners.notify(own)
            self._recorded(revision, own)
        self._own_direct = {r for r in self._own_direct if r > self._watch_seen}
        self._deliver()

    def _lost_history(self, reason: str) -> None:
        """Tell reset listeners that changes up to C{_delivered} were missed."""
        self._gap_reported = self._delivered
        log.warn("etcd watch: history lost: {reason}", reason=reason)
        self._notify_resets(WatchReset(self._watch_live, True, self._delivered, reason))

    def _held_result(self, revision: int) -> Optional[CommitResult]:
        """The held result of this store's own commit at C{revision}, if any."""
        for item in self._held:
            if item[0] == revision:
                return item[2]
        return None

    def _watch_result(self, revision: int, events: List[dict]) -> CommitResult:
        """
        The L{CommitResult} of one revision's watch events: PUT is C{put};
        DELETE is C{expire} when the deleted value had expired by the
        store's clock, else C{delete}; C{previous} from C{prev_kv}.
        """
        now = self.clock.seconds()
        leases = self._client_leases
        ends = leases.ended(events)
        changes = []
        for event in events:
            kv = event["kv"]
            if leases.is_reserved(_unb64(kv["key"])):
                continue
            prev = event.get("prev_kv")
            previous = self._row(prev).entry if prev else None
            if event.get("type", "PUT") == "DELETE":
                key = self._decode_key(_unb64(kv["key"]))
                if previous is not None and not previous.is_live(now):
                    changes.append(Change("expire", key, None, previous))
                else:
                    # A lease's end labels it (expire, or delete if revoked).
                    changes.append(leases.label(Change("delete", key, None, previous), prev, ends))
            else:
                entry = self._row(kv).entry
                changes.append(Change("put", entry.key, entry, live(previous, now)))
        return CommitResult(revision, tuple(changes))


# -- helpers ----------------------------------------------------------------


def _mod(row: Optional[_Row]) -> int:
    """The mod_revision etcd holds for a key (0 when it has none)."""
    return row.entry.mod_revision if row is not None else 0


def _mod_compare(etcd_key: bytes, mod_revision: int) -> dict:
    """
    A compare that holds while the key's mod_revision is unchanged (etcd
    compares a missing key as mod_revision 0).
    """
    return {
        "key": _b64(etcd_key),
        "target": "MOD",
        "result": "EQUAL",
        "mod_revision": str(mod_revision),
    }


def _expiry(expires: Optional[float]) -> Optional[float]:
    return float(expires) if expires is not None else None


def _result(plan: List[Tuple[Op, Optional[Entry]]], revision: int) -> CommitResult:
    """The L{CommitResult} of C{plan} applied at C{revision}."""
    changes = []
    for op, previous in plan:
        if isinstance(op, Expire):
            changes.append(Change("expire", op.key, None, previous))
            continue
        if isinstance(op, Delete):
            changes.append(Change("delete", op.key, None, previous))
            continue
        entry = Entry(
            key=op.key,
            value=op.value,
            content_type=op.content_type,
            create_revision=previous.create_revision if previous is not None else revision,
            mod_revision=revision,
            version=previous.version + 1 if previous is not None else 1,
            expires=_expiry(op.expires),
        )
        changes.append(Change("put", op.key, entry, previous))
    return CommitResult(revision, tuple(changes))


def _unknown_outcome(reason: str, why: str) -> StoreUnavailable:
    return StoreUnavailable(
        "the commit's answer was lost (%s) and whether it was applied cannot "
        "be told (%s); read the keys before retrying" % (reason, why),
        outcome="unknown",
    )


class _Recorder:
    """What the watch delivered, per revision, while a change waits for it."""

    def __init__(self, store: EtcdStore) -> None:
        self._store = store
        self._results: Dict[int, Optional[CommitResult]] = {}
        self._waiting: Optional[Tuple[int, Deferred]] = None

    def saw(self, revision: int, result: Optional[CommitResult]) -> None:
        self._results[revision] = result
        if self._waiting is not None and revision >= self._waiting[0]:
            waiter = self._waiting[1]
            self._waiting = None
            waiter.callback(None)

    async def result(self, revision: int) -> CommitResult:
        """
        The result the watch delivered for C{revision} (no changes if it
        touched no kvtwist key); after the timeout without the watch getting
        there, a result without changes.
        """
        store = self._store
        # A watch that is down delivers it when it runs again: not waited for.
        if store._watch_seen < revision and store.watching:
            waiter: Deferred = Deferred()
            self._waiting = (revision, waiter)
            waiter.addTimeout(store.timeout, store._reactor)
            try:
                await waiter
            except (CancelledError, DeferTimeoutError):
                log.warn(
                    "etcd watch: revision {revision} not delivered within {timeout}s",
                    revision=revision, timeout=store.timeout,
                )
        return self._results.get(revision) or CommitResult(revision, ())

    def stop(self) -> None:
        self._store._recorders.discard(self)


class _WatchStream(Protocol):
    """
    The body of one C{/v3/watch} answer: etcd's gateway sends one JSON
    document per line (an error document may end the body without a
    newline). Each goes to C{on_document(stream, line)} as it arrives.

    @ivar created: fires when etcd says the watch was created; fails if the
        stream ends first.
    @ivar done: fires (never fails) with why the stream ended, once its
        connection is gone.
    @ivar reason: why the stream was aborted, if it was.
    @ivar compacted: the compact revision when etcd canceled the watch for
        it, else 0.
    @ivar http_error: the status when the answer was not 200 (its body is
        then the reason).
    @ivar token_refused: whether etcd refused the auth token (or wanted one).
    """

    def __init__(self, on_document: Callable[["_WatchStream", bytes], None]) -> None:
        self._on_document = on_document
        self._chunks: List[bytes] = []
        self._size = 0
        self.created: Deferred = Deferred(lambda _: self.abort("cancelled"))
        self.done: Deferred = Deferred()
        self.reason: Optional[str] = None
        self.compacted = 0
        self.http_error = 0
        self.token_refused = False
        self.closing = False

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        if self.http_error:
            self._keep(data)
            return
        if b"\n" not in data:
            self._keep(data)
            return
        self._chunks.append(data)
        lines = b"".join(self._chunks).split(b"\n")
        rest = lines.pop()
        self._chunks, self._size = ([rest], len(rest)) if rest else ([], 0)
        for line in lines:
            if self.closing:
                return
            if line.strip():
                self._on_document(self, line)

    def _keep(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > _WATCH_LINE_MAX:
            self.abort("a watch response over %d bytes" % (_WATCH_LINE_MAX,))

    def abort(self, reason: str) -> None:
        """Stop reading, remember why, and drop the connection."""
        if self.reason is None:
            self.reason = reason
        if self.closing:
            return
        self.closing = True
        stop = getattr(self.transport, "stopProducing", None)
        if stop is not None:
            stop()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        rest = b"".join(self._chunks).strip()
        self._chunks = []
        if rest and not self.closing:
            if self.http_error:
                self.reason = "HTTP %d: %s" % (
                    self.http_error,
                    rest[:200].decode("utf-8", "replace"),
                )
            else:
                self._on_document(self, rest)
        if self.reason is None:
            if reason is None or reason.check(ResponseDone):
                self.reason = "etcd ended the watch stream"
            else:
                self.reason = "the watch connection was lost (%s)" % (
                    _describe(reason.value),
                )
        if not self.created.called:
            self.created.errback(Failure(StoreUnavailable(self.reason)))
        self.done.callback(self.reason)
