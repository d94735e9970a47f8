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
C{kv/}) are left for kvtwist's other shared state.

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

Failover
========
Endpoints are tried in order, starting from the last one that answered. A
request that surely did not reach etcd (connection refused, connect timeout)
or a read that failed in any way moves on to the next endpoint; a read goes
round the endpoints again (pausing briefly) until one timeout has passed, so
an election or a member restart is not seen by clients. A write whose
answer was lost (timeout, dropped connection, etcd's "request timed out")
may or may not have been applied: the commit then reads the touched keys
again and learns the outcome from the commit id in the values it wrote, or
from all touched keys being unchanged (then it retries; both attempts carry
the same compares, so at most one can apply). When the outcome cannot be
learned, the commit fails with L{StoreUnavailable} whose C{outcome} field is
C{"unknown"}. When no endpoint answers, or etcd has no leader, calls fail
with L{StoreUnavailable} naming each endpoint's reason.

Listeners
=========
Listeners hear every commit made through this store that changed something
(including the removal of expired keys, as C{expire} changes), in revision
order, before the committer does: a result that arrives early waits for
concurrent commits that could still take a lower revision. Changes made by
other etcd clients need a watch, which this module does not run.
C{expired()} is always empty: etcd's leases do the sweeping.

Everything here runs on the reactor thread; nothing blocks.
"""

from __future__ import annotations

import base64
import heapq
import itertools
import json
import math
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from twisted.internet import error as net_error
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from zope.interface import implementer

from kvtwist.errors import ConflictError, LimitExceeded, StoreCorrupt, StoreUnavailable
from kvtwist.interfaces import IKeyValueStore
from kvtwist.model import (
    Change,
    Check,
    CheckFailure,
    CommitResult,
    Delete,
    Entry,
    Expire,
    Op,
    Page,
    Put,
)
from kvtwist.store.listeners import Listeners
from kvtwist.store.rules import final_ops, live

__all__ = ["EtcdStore", "EtcdError", "encode_value", "decode_value", "prefix_end"]

#: etcd's default C{--max-txn-ops}.
DEFAULT_MAX_TXN_OPS = 128
#: etcd's default C{--max-request-bytes} (1.5 MiB).
DEFAULT_MAX_REQUEST_BYTES = 1536 * 1024
#: Seconds a lease outlives the expiry it collects: covers clock skew between
#: nodes and etcd's lease-check interval, so etcd never removes a key that a
#: node's clock still sees as live.
LEASE_MARGIN = 2
#: The value-envelope format this module writes and reads.
ENVELOPE_VERSION = 1

# How often one commit reads and retries when concurrent commits keep
# changing its keys between its read and its transaction.
_COMMIT_ATTEMPTS = 10
# How often a multi-request read restarts when etcd compacted its revision.
_READ_ATTEMPTS = 3
# At most this many rounds over the endpoints for one read (and no new round
# once a timeout has passed since the first), with this pause between them.
_READ_ROUNDS = 10
_READ_RETRY_PAUSE = 0.25
# Bounds on one listing: rounds of range requests and keys per request (the
# batch grows when expired keys are skipped).
_LIST_ROUNDS = 64
_LIST_BATCH_MAX = 10000
# At most this many leases are remembered for reuse.
_LEASE_CACHE_SIZE = 1024
# Rough protobuf overheads, to estimate a transaction's size before sending.
_OP_OVERHEAD = 32
_TXN_OVERHEAD = 64

# etcd error messages that mean a write was refused before it was proposed,
# so it surely did not apply.
_SAFE_UNAVAILABLE = ("no leader", "too many requests")
# gRPC status codes (etcd's gateway puts them in "code").
_GRPC_DEADLINE_EXCEEDED = 4
_GRPC_PERMISSION_DENIED = 7
_GRPC_UNAVAILABLE = 14
_GRPC_UNAUTHENTICATED = 16


class EtcdError(Exception):
    """
    etcd answered with an error kvtwist does not expect (a bug or a
    misconfiguration, not a client mistake): answered as a 500 and logged.
    """


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


# -- transport outcomes ---------------------------------------------------


class _NotSent(Exception):
    """The request surely did not reach etcd (or etcd refused it unapplied)."""


class _Ambiguous(Exception):
    """The request may or may not have been applied: its answer was lost."""


class _TimedOut(_Ambiguous):
    """No answer came within the request timeout."""


class _Answered(Exception):
    """
    etcd answered with an error document.

    @ivar code: the gRPC status code; @ivar message: etcd's message.
    """

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    @property
    def unavailable(self) -> bool:
        """Whether etcd could not serve it now (no quorum, timeouts)."""
        return (
            self.code in (_GRPC_UNAVAILABLE, _GRPC_DEADLINE_EXCEEDED)
            or self.status in (503, 504)
        )


class _Compacted(Exception):
    """A read at a fixed revision found that revision compacted away."""


class _LeaseGone(Exception):
    """A put referred to a lease etcd no longer has."""


# Failures of an HTTP request that happen before any byte was sent.
_CONNECT_ERRORS = (net_error.ConnectError, net_error.DNSLookupError)


@implementer(IKeyValueStore)
class EtcdStore:
    """
    A store on the etcd cluster reached through C{endpoints}.

    @param endpoints: base URLs of etcd members' client ports
        (C{"http://127.0.0.1:2379"}), tried in order.
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
    ) -> None:
        endpoints = [e.rstrip("/") for e in endpoints]
        if not endpoints:
            raise ValueError("the etcd store needs at least one endpoint")
        if not prefix:
            raise ValueError("the etcd key prefix must not be empty")
        self.endpoints: List[str] = endpoints
        self.prefix = prefix
        self.timeout = timeout
        self.max_txn_ops = max_txn_ops
        self.max_request_bytes = max_request_bytes
        self.revision = 0
        self.clock: IReactorTime = clock if clock is not None else reactor
        self._reactor = reactor
        self._given_http = http
        self._http: Any = None
        self._pool: Optional[HTTPConnectionPool] = None
        self._current = 0
        self._open = False
        self._inflight: Set[Deferred] = set()
        self._listeners = Listeners()
        # Ordered notification (see _deliver): commits whose transaction may
        # still be applied, each with the revision seen before it was sent,
        # and results waiting for them.
        self._unsettled: Dict[int, int] = {}
        self._tokens = itertools.count()
        self._held: List[Tuple[int, int, CommitResult, Deferred]] = []
        self._delivered = 0
        self._key_prefix = (prefix + "kv/").encode("utf-8")
        # expiry bucket (whole second the lease must outlive) -> (lease id,
        # clock time the lease ends)
        self._leases: Dict[int, Tuple[str, float]] = {}

    @property
    def active_endpoint(self) -> str:
        """The endpoint tried first: the last one that answered."""
        return self.endpoints[self._current]

    # -- lifecycle ----------------------------------------------------------

    def open(self) -> Deferred:
        """
        Set up the HTTP client and check that etcd answers with a leader;
        learns the current revision.

        @return: a Deferred firing with L{None}, or failing with
            L{StoreUnavailable} (then nothing stays open).
        """
        if self._open:
            return succeed(None)
        if self._given_http is not None:
            self._http = self._given_http
        else:
            from treq.client import HTTPClient

            self._pool = HTTPConnectionPool(self._reactor, persistent=True)
            # Concurrent commits each hold a connection; the default of 2
            # per host would queue them behind each other.
            self._pool.maxPersistentPerHost = 10
            agent = Agent(
                self._reactor, pool=self._pool, connectTimeout=self.timeout / 2
            )
            self._http = HTTPClient(agent)
        self._open = True

        d = Deferred.fromCoroutine(self._ping())

        def failed(reason):
            self._open = False
            return self._release().addCallback(lambda _: reason)

        return d.addErrback(failed)

    def close(self) -> Deferred:
        """
        Refuse new calls, let in-flight ones finish (each is bounded by the
        request timeout), then close the pooled connections.
        """
        if not self._open:
            return succeed(None)
        self._open = False
        waiting = DeferredList(list(self._inflight), consumeErrors=True)
        return waiting.addCallback(lambda _: self._release())

    def _release(self) -> Deferred:
        pool, self._pool = self._pool, None
        self._http = None
        self._leases.clear()
        if pool is None:
            return succeed(None)
        return pool.closeCachedConnections()

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
        """Read one live key; see L{IKeyValueStore.get}."""
        return self._run(self._get(key))

    def get_many(self, keys: Iterable[str]) -> Deferred:
        """Read live keys at one revision; see L{IKeyValueStore.get_many}."""
        return self._run(self._get_many(list(keys)))

    def list(self, prefix: str, after: Optional[str], limit: int) -> Deferred:
        """One page of live keys at one revision; see L{IKeyValueStore.list}."""
        return self._run(self._list(prefix, after, limit))

    def commit(self, ops: Sequence[Op], checks: Sequence[Check] = ()) -> Deferred:
        """One etcd transaction; see L{IKeyValueStore.commit}."""
        return self._run(self._commit(list(ops), list(checks)))

    def add_listener(self, listener) -> None:
        """
        Call C{listener(result)} for every commit made through this store
        that changed something, in revision order, before its committer
        hears back. Changes made by other etcd clients reach listeners only
        through a watch, which this store does not run.
        """
        self._listeners.add(listener)

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
        Ask an endpoint for its status; fails with L{StoreUnavailable} when
        none answers, the member knows no leader or has raised an alarm.
        """
        return self._run(self._ping())

    # -- HTTP ---------------------------------------------------------------

    async def _post(self, endpoint: str, path: str, body: dict) -> dict:
        """
        One request to one endpoint, bounded by the timeout.

        @raise _NotSent: nothing reached etcd.
        @raise _Ambiguous: the answer was lost.
        @raise _Answered: etcd answered with an error document.
        """
        data = json.dumps(body, separators=(",", ":")).encode("ascii")

        async def exchange():
            response = await self._http.post(
                endpoint + path,
                data=data,
                headers=Headers({b"Content-Type": [b"application/json"]}),
                unbuffered=True,
            )
            content = await _read_body(response)
            return response.code, content

        def timed_out(result, timeout):
            # Whatever the cancellation turned into (CancelledError, or
            # ResponseNeverReceived wrapping it), it was our timeout.
            return Failure(_TimedOut("no answer within %gs" % (timeout,)))

        d = Deferred.fromCoroutine(exchange())
        d.addTimeout(self.timeout, self._reactor, onTimeoutCancel=timed_out)
        try:
            status, content = await d
        except _TimedOut:
            raise
        except _CONNECT_ERRORS as e:
            raise _NotSent(_describe(e))
        except Exception as e:
            # ResponseNeverReceived, ResponseFailed, connection lost...: the
            # request may have reached etcd.
            raise _Ambiguous(_describe(e))
        try:
            document = json.loads(content.decode("utf-8"))
        except ValueError:
            document = None
        if not isinstance(document, dict):
            message = "not an etcd v3 gateway (HTTP %d, %d bytes)" % (status, len(content))
            if status >= 500 or status == 200:
                raise _Ambiguous(message)
            raise _NotSent(message)
        if status == 200 and "code" not in document:
            return document
        code = document.get("code")
        message = document.get("message") or document.get("error")
        if not isinstance(code, int) or not isinstance(message, str):
            raise _Ambiguous("unexpected etcd answer (HTTP %d)" % (status,))
        raise _Answered(status, code, message)

    async def _call(self, path: str, body: dict, write: bool = False) -> dict:
        """
        Send one request, failing over between endpoints.

        A read goes to the next endpoint after any failure; a write only
        after failures that prove it was not applied, otherwise it raises
        L{_Ambiguous}. The endpoint that answers becomes the first to try.

        @raise StoreUnavailable: when no endpoint could serve it.
        """
        reasons: List[str] = []
        count = len(self.endpoints)
        # A read goes round the endpoints again while its first round began
        # less than a timeout ago: a pooled connection that a restarted
        # member closed, or an election ("leader changed"), is over in a
        # moment, and a client should not see it.
        rounds = 1 if write else _READ_ROUNDS
        began = self._reactor.seconds()
        for round_ in range(rounds):
            if round_:
                if self._reactor.seconds() - began >= self.timeout:
                    break
                await deferLater(self._reactor, _READ_RETRY_PAUSE)
            reasons = []
            start = self._current
            for step in range(count):
                index = (start + step) % count
                endpoint = self.endpoints[index]
                try:
                    document = await self._post(endpoint, path, body)
                except _NotSent as e:
                    reasons.append("%s: %s" % (endpoint, e))
                    continue
                except _Ambiguous as e:
                    if write:
                        self._current = (index + 1) % count
                        raise _Ambiguous("%s: %s" % (endpoint, e))
                    reasons.append("%s: %s" % (endpoint, e))
                    continue
                except _Answered as e:
                    if e.unavailable:
                        if write and not any(s in e.message for s in _SAFE_UNAVAILABLE):
                            self._current = (index + 1) % count
                            raise _Ambiguous("%s: %s" % (endpoint, e.message))
                        reasons.append("%s: %s" % (endpoint, e.message))
                        continue
                    self._current = index
                    raise self._translate(e, body)
                self._current = index
                self._saw(document.get("header"))
                return document
        raise StoreUnavailable(
            "no etcd endpoint could serve the request: " + "; ".join(reasons)
        )

    def _translate(self, answer: _Answered, body: dict) -> Exception:
        """
        The exception for an etcd error that is not about availability;
        C{body} is the request it answers (to tell how big it was).
        """
        message = answer.message
        if "too many operations in txn request" in message:
            # etcd's own limit is lower than kvtwist was told: say so.
            ops = max(len(body.get(part, ())) for part in ("compare", "success", "failure"))
            return LimitExceeded(
                "etcd max-txn-ops",
                min(self.max_txn_ops, ops - 1),
                ops,
                hint="etcd itself refused %d operations in one transaction "
                "(kvtwist is set to allow %d); raise etcd's --max-txn-ops"
                % (ops, self.max_txn_ops),
            )
        if "request is too large" in message:
            # base64 in JSON weighs about 4/3 of the bytes etcd counts
            size = len(json.dumps(body)) * 3 // 4
            return LimitExceeded(
                "etcd max-request-bytes",
                min(self.max_request_bytes, size - 1),
                size,
                hint="etcd itself refused a request of about %d bytes (kvtwist "
                "is set to allow %d); raise etcd's --max-request-bytes"
                % (size, self.max_request_bytes),
            )
        if "compacted" in message:
            return _Compacted(message)
        if "requested lease not found" in message:
            return _LeaseGone(message)
        if answer.code in (_GRPC_UNAUTHENTICATED, _GRPC_PERMISSION_DENIED):
            return StoreUnavailable("etcd refused access: %s" % (message,))
        return EtcdError("etcd answered HTTP %d: %s" % (answer.status, message))

    def _saw(self, header: Any) -> None:
        """Keep the largest revision of any answer."""
        if isinstance(header, dict):
            revision = int(header.get("revision", 0))
            if revision > self.revision:
                self.revision = revision

    # -- reading ------------------------------------------------------------

    def _etcd_key(self, key: str) -> bytes:
        return self._key_prefix + key.encode("utf-8")

    def _row(self, kv: dict) -> _Row:
        """Decode one etcd kv of this store into a L{_Row}."""
        raw_key = _unb64(kv["key"])
        if not raw_key.startswith(self._key_prefix):
            raise EtcdError("etcd returned a key outside the range asked for")
        try:
            key = raw_key[len(self._key_prefix):].decode("utf-8")
        except UnicodeDecodeError:
            raise StoreCorrupt("a key under %r in etcd is not UTF-8" % (self.prefix,))
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
        document = await self._call("/v3/kv/range", {"key": _b64(self._etcd_key(key))})
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
                    document = await self._call("/v3/kv/txn", {"success": ranges})
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

    async def _list(self, prefix: str, after: Optional[str], limit: int) -> Page:
        if limit < 1:
            raise ValueError("a listing needs a limit of at least 1")
        for attempt in range(_READ_ATTEMPTS):
            try:
                return await self._list_once(prefix, after, limit)
            except _Compacted:
                continue
        raise StoreUnavailable(
            "etcd compacted the revision of a listing %d times" % (_READ_ATTEMPTS,)
        )

    async def _list_once(self, prefix: str, after: Optional[str], limit: int) -> Page:
        """
        Range over the prefix at one revision, skipping expired keys, until
        C{limit} live entries and one more are found or the range ends.
        """
        start = self._etcd_key(prefix)
        end = prefix_end(start)
        if after is not None:
            start = max(start, self._etcd_key(after) + b"\x00")
        now = self.clock.seconds()
        found: List[Entry] = []
        revision = 0
        batch = limit + 1
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
            document = await self._call("/v3/kv/range", body)
            if not revision:
                revision = int(document["header"]["revision"])
            kvs = document.get("kvs") or []
            for kv in kvs:
                entry = self._row(kv).entry
                if entry.is_live(now):
                    found.append(entry)
                    if len(found) > limit:
                        return Page(revision, tuple(found[:limit]), True)
            if not document.get("more") or not kvs:
                return Page(revision, tuple(found), False)
            start = _unb64(kvs[-1]["key"]) + b"\x00"
            # Expired keys took room in this batch: ask for more next time.
            batch = min(max(batch * 2, limit + 1 - len(found)), _LIST_BATCH_MAX)
        raise StoreUnavailable(
            "the listing of %r met too many expired keys; etcd's leases have "
            "not removed them yet" % (prefix,)
        )

    async def _ping(self) -> None:
        document = await self._call("/v3/maintenance/status", {})
        if document.get("errors"):
            raise StoreUnavailable(
                "etcd reports: %s" % ("; ".join(map(str, document["errors"])),)
            )
        if str(document.get("leader", "0")) == "0":
            raise StoreUnavailable("the etcd member %s has no leader" % (self.active_endpoint,))

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

    async def _commit(self, ops: List[Op], checks: List[Check]) -> CommitResult:
        final = final_ops(ops)
        touched = list(dict.fromkeys([c.key for c in checks] + list(final)))
        if not touched:
            return CommitResult(self.revision, ())
        if len(touched) > self.max_txn_ops:
            raise LimitExceeded(
                "etcd max-txn-ops",
                self.max_txn_ops,
                len(touched),
                hint="a commit is one etcd transaction with one compare per "
                "checked or written key; raise etcd's --max-txn-ops (and "
                "kvtwist's setting with it)",
            )
        size = self._estimate_size(final, touched)
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
            result = await self._attempt(final, touched, checks, commit_id, lost, token, purged)
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

    def _settle(self, token: int, results: List[CommitResult]) -> Deferred:
        """
        Commit C{token} is over; queue its C{results} for the listeners.

        Listeners must hear commits in revision order, but concurrent
        commits' answers arrive in any order. A commit whose transaction may
        still apply was registered with the revision seen before sending it;
        its revision will be above that. A result is delivered once no
        unsettled commit could take a revision below it.

        @return: a Deferred that fires once C{results} were delivered.
        """
        self._unsettled.pop(token, None)
        waiter: Deferred = succeed(None)
        for result in results:
            if result.changes:
                waiter = Deferred()
                heapq.heappush(
                    self._held, (result.revision, next(self._tokens), result, waiter)
                )
        self._deliver()
        return waiter

    def _deliver(self) -> None:
        """Tell listeners every held result no unsettled commit can precede."""
        if self._unsettled:
            # An unsettled commit's revision is above its floor, and a revision
            # belongs to one transaction only: floor + 1 is safe to pass.
            limit = min(self._unsettled.values()) + 1
        else:
            limit = None
        while self._held and (limit is None or self._held[0][0] <= limit):
            revision, _, result, waiter = heapq.heappop(self._held)
            self._delivered = max(self._delivered, revision)
            self._listeners.notify(result)
            waiter.callback(None)

    async def _attempt(
        self,
        final: Dict[str, Op],
        touched: List[str],
        checks: List[Check],
        commit_id: str,
        lost: List[Tuple[List[Tuple[Op, Optional[Entry]]], Dict[str, int], str]],
        token: int,
        purged: List[CommitResult],
    ) -> CommitResult:
        """
        The read-decide-transact loop of L{_commit}; appends to C{lost} each
        attempt whose answer was lost, to C{purged} the removals of expired
        keys it made, and registers C{token} as unsettled before its first
        write.
        """
        for attempt in range(_COMMIT_ATTEMPTS):
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
                if isinstance(op, Put) and k in rows and current[k] is None
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
                document = await self._call("/v3/kv/txn", txn, write=True)
            except _Ambiguous as e:
                lost.append((plan, guards, str(e)))
                continue
            except _LeaseGone:
                # A cached lease ran out between grant and use: nothing was
                # applied; grant afresh.
                self._leases.clear()
                continue
            if document.get("succeeded"):
                return _result(plan, int(document["header"]["revision"]))
            # A compare failed: another commit changed a touched key between
            # our read and our transaction. Read again and decide again.
        raise StoreUnavailable(
            "the commit lost the race against concurrent commits on its keys "
            "%d times; nothing was applied" % (_COMMIT_ATTEMPTS,)
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
            document = await self._call("/v3/kv/txn", body, write=True)
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
            if op.expires is not None:
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
        document = await self._call("/v3/lease/grant", {"TTL": str(ttl)})
        lease = str(document["ID"])
        for old in [b for b, (_, ends) in self._leases.items() if ends <= now]:
            del self._leases[old]
        if len(self._leases) >= _LEASE_CACHE_SIZE:
            del self._leases[min(self._leases)]
        self._leases[bucket] = (lease, now + ttl)
        return lease


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


class _BodyReader(Protocol):
    """Collects a response body for L{_read_body}."""

    def __init__(self, done: Deferred) -> None:
        self.done = done
        self.chunks: List[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        # etcd's gateway always frames its bodies: an end without framing
        # (PotentialDataLoss) may be a truncated answer.
        if reason is None or reason.check(ResponseDone):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


def _read_body(response: Any) -> Deferred:
    """
    The whole body of C{response}. Unlike treq's C{content}, cancelling it
    (our timeout) stops the transfer and closes the connection, so a member
    that stalls mid-body does not keep a connection busy.
    """

    def cancel(_: Deferred) -> None:
        transport = reader.transport
        stop = getattr(transport, "stopProducing", None)
        if stop is not None:
            stop()

    done: Deferred = Deferred(cancel)
    reader = _BodyReader(done)
    response.deliverBody(reader)
    return done


def _describe(error: BaseException) -> str:
    """A short, str-only description of a transport error."""
    reasons = getattr(error, "reasons", None)
    if reasons:
        # ResponseFailed and friends wrap a list of Failures.
        return "; ".join(
            "%s: %s" % (type(r.value).__name__, r.getErrorMessage()) for r in reasons
        )
    return "%s: %s" % (type(error).__name__, error)
