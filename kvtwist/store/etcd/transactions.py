# -*- test-case-name: tests.contract.test_txn_managers -*-
"""
Transactions and the seed's shared queue kept in etcd, so that every kvcache
node on the cluster sees them: a transaction begun on node A can be staged
on node B and committed on node C, and C{POST /set} on one node is committed
by C{POST /commit} on another.

docs/etcd.md ("Transactions in etcd") describes the layout of their keys
under the store's prefix, the records, how concurrent nodes stay exact and
how transactions expire.
"""

from __future__ import annotations

import json
import math
import secrets
from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer
from zope.interface.verify import verifyObject

from kvtwist.errors import LimitExceeded, StoreUnavailable
from kvtwist.interfaces import IEtcdConnection, ITransaction, ITransactionManager, ITransactionView
from kvtwist.limits import Limits
from kvtwist.model import Check, CommitResult, Delete, DeletePrefix, Op, Put
from kvtwist.staging import StagingArea
from kvtwist.store.etcd.codec import b64, mod_compare, prefix_end, unb64
from kvtwist.store.etcd.commits import Rider, RiderBroken
from kvtwist.store.etcd.errors import Ambiguous, LeaseGone
from kvtwist.transactions import EndsAfterCommit, StagedView, Vet, not_found, observation_checks

log = Logger()

#: How often one change or commit is computed again after other nodes
#: changed the same transaction in between.
ATTEMPTS = 16
#: Transaction states a node keeps, most recently used first.
STATE_CACHE = 256
#: The id the seed's queue goes by (never a generated id: those are base64url).
QUEUE_ID = "shared"
#: The bytes of an etcd request per byte of value (base64 in the gateway's JSON).
_GATEWAY_INFLATION = 4 / 3


class _Slot:
    """Where one transaction's state lives in etcd."""

    def __init__(self, prefix: bytes, txn_id: str) -> None:
        self.id = txn_id
        self.queue = txn_id == QUEUE_ID
        if self.queue:
            self.head = prefix + b"queue/h"
            self.records = prefix + b"queue/r/"
        else:
            name = txn_id.encode("ascii")
            self.head = prefix + b"txn/h/" + name
            self.records = prefix + b"txn/r/" + name + b"/"

    def record_key(self, seq: int) -> bytes:
        """The key of record C{seq}: zero-padded, so etcd's byte order is seq order."""
        return self.records + b"%012d" % (seq,)

    def drop(self) -> List[dict]:
        """etcd requests deleting the head and every record."""
        return [
            {"request_delete_range": {"key": b64(self.head)}},
            {
                "request_delete_range": {
                    "key": b64(self.records),
                    "range_end": b64(prefix_end(self.records)),
                }
            },
        ]

    def read_after(self, seq: int) -> List[dict]:
        """etcd requests reading the head and the records after C{seq}."""
        return [
            {"request_range": {"key": b64(self.head)}},
            {
                "request_range": {
                    "key": b64(self.record_key(seq + 1)),
                    "range_end": b64(prefix_end(self.records)),
                }
            },
        ]


@implementer(ITransactionView)
class TxnState(StagedView):
    """
    A node's copy of one transaction's state, as of the head's
    C{head_mod} (0: no head in etcd, an empty queue).
    """

    def __init__(self, limits: Limits, isolated: bool) -> None:
        self.isolated = isolated
        self.staging = StagingArea(limits)
        self.observed: Dict[str, int] = {}
        self.preconditions: List[Check] = []
        self.owner: Optional[str] = None
        self.lease: Optional[str] = None
        self.seq = 0
        self.head_create = 0
        self.head_mod = 0

    def apply(self, ops: Sequence[Op], observed: Mapping[str, int], preconditions: Sequence[Check]) -> None:
        """Replay one record (limits were checked when it was written)."""
        self.staging.replay(ops)
        if self.isolated:
            for key, revision in observed.items():
                self.observed.setdefault(key, revision)
        self.preconditions.extend(preconditions)


def encode_record(
    ops: Sequence[Op], observed: Mapping[str, int], preconditions: Sequence[Check]
) -> bytes:
    """The etcd value of one record (see docs/etcd.md, "Transactions in etcd")."""
    shapes: List[list] = []
    values: List[bytes] = []
    for op in ops:
        if isinstance(op, Put):
            shape = [op.key, "put", op.content_type, op.expires, len(op.value)]
            if op.lease is not None:
                # Only then: records written before leases stay readable.
                shape.append(op.lease)
            shapes.append(shape)
            values.append(op.value)
        elif not isinstance(op, DeletePrefix):
            shapes.append([op.key, "delete"])
        else:
            # Staging holds writes of single keys only.
            raise TypeError("a transaction record cannot hold %r" % (op,))
    header = {
        "ops": shapes,
        "obs": dict(observed),
        "pre": [[c.key, c.kind, c.revision, _tag(c.tag)] for c in preconditions],
    }
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=True)
    return text.encode("ascii") + b"\n" + b"".join(values)


def _tag(tag: object) -> object:
    """A check's tag as JSON can carry it."""
    return tag if tag is None or isinstance(tag, (str, int)) else str(tag)


def decode_record(data: bytes) -> Tuple[List[Op], Dict[str, int], List[Check]]:
    """
    The ops, observations and preconditions of one record.

    @raise StoreUnavailable: if the record is not one kvtwist wrote.
    """
    try:
        line, _, rest = data.partition(b"\n")
        header = json.loads(line)
        ops: List[Op] = []
        offset = 0
        for shape in header["ops"]:
            if shape[1] == "put":
                key, _, content_type, expires, length = shape[:5]
                lease = int(shape[5]) if len(shape) > 5 else None
                ops.append(Put(key, rest[offset:offset + length], content_type, expires, lease))
                offset += length
            else:
                ops.append(Delete(shape[0]))
        observed = {str(k): int(v) for k, v in header["obs"].items()}
        preconditions = [Check(key, kind, int(revision), tag) for key, kind, revision, tag in header["pre"]]
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise StoreUnavailable("a transaction record in etcd is damaged: %s" % (e,))
    return ops, observed, preconditions


@implementer(ITransaction)
class EtcdTransaction:
    """
    One transaction kept in etcd, as one request (or the queue) sees it.
    """

    def __init__(self, manager: "EtcdTransactions", slot: _Slot, owner: Optional[str],
                 state: Optional[TxnState] = None) -> None:
        self.id = slot.id
        self.owner = owner
        self.isolated = not slot.queue
        self._manager = manager
        self._slot = slot
        # The state find() just read: the request's first view needs no
        # second round trip.
        self._fresh = state

    def view(self) -> Deferred:
        """See L{ITransaction.view}: the state in etcd now."""
        if self._fresh is not None:
            state, self._fresh = self._fresh, None
            return succeed(state)
        return Deferred.fromCoroutine(self._manager.load(self._slot))

    def record(
        self,
        ops: Iterable[Op] = (),
        observed: Optional[Mapping[str, int]] = None,
        preconditions: Iterable[Check] = (),
    ) -> Deferred:
        """See L{ITransaction.record}."""
        self._fresh = None
        ops, observed, preconditions = list(ops), dict(observed or {}), list(preconditions)
        return self._manager.one_at_a_time(
            self._slot, self._manager.append, ops, observed, preconditions
        )

    def commit(self, vet: Optional[Vet] = None) -> Deferred:
        """See L{ITransaction.commit}."""
        self._fresh = None
        return self._manager.one_at_a_time(self._slot, self._manager.commit, vet)


@implementer(ITransactionManager)
class EtcdTransactions(EndsAfterCommit):
    """
    Transactions and the seed's queue in etcd, through C{store}'s
    connection to it (see docs/etcd.md, "Transactions in etcd").

    @param store: the L{kvtwist.store.etcd.store.EtcdStore}, or a wrapper
        that passes its C{commit_with}, C{call} and attributes through
        (kvcache gives the L{kvtwist.metrics.TimedStore} that times its
        commits), not a cache in front of it: commits go to it directly so
        the staged state can ride along; its listeners (a node's cache, its
        change feed) hear them as usual. It is checked against
        L{IEtcdConnection} here, so a store without what the manager uses
        fails at once.
    @param clock: times this node's estimate of its open transactions.
    """

    def __init__(self, store: IEtcdConnection, clock: IReactorTime, limits: Limits) -> None:
        # A wrapper (TimedStore) declares the connection exactly when the
        # store it wraps does, so the check needs no tentative mode.
        verifyObject(IEtcdConnection, store)
        self._store = store
        self._clock = clock
        self._limits = limits
        self._prefix = store.prefix.encode("utf-8")
        self._states: "OrderedDict[str, TxnState]" = OrderedDict()
        # Transactions begun or found on this node and when they would
        # expire if nobody touched them again: the metrics gauge.
        self._known: Dict[str, float] = {}
        self._locks: Dict[str, DeferredLock] = {}
        self.queue = EtcdTransaction(self, _Slot(self._prefix, QUEUE_ID), None)

    @property
    def timeout(self) -> float:
        """Seconds of idleness after which a transaction expires."""
        return self._limits.txn_timeout

    def __len__(self) -> int:
        now = self._clock.seconds()
        for txn_id in [t for t, ends in self._known.items() if ends <= now]:
            del self._known[txn_id]
        return len(self._known)

    # -- the manager ----------------------------------------------------------

    def begin(self, owner: Optional[str] = None) -> Deferred:
        """See L{ITransactionManager.begin}: a head on a new lease."""
        return Deferred.fromCoroutine(self._begin(owner))

    async def _begin(self, owner: Optional[str]) -> EtcdTransaction:
        heads = self._prefix + b"txn/h/"
        document = await self._store.call(
            "/v3/kv/range",
            {"key": b64(heads), "range_end": b64(prefix_end(heads)), "count_only": True},
        )
        count = int(document.get("count", 0))
        if count >= self._limits.max_open_transactions:
            raise LimitExceeded(
                "max_open_transactions",
                self._limits.max_open_transactions,
                count + 1,
                too_many=True,
            )
        ttl = max(1, math.ceil(self.timeout))
        grant = await self._store.call("/v3/lease/grant", {"TTL": str(ttl)})
        lease = str(grant["ID"])
        slot = _Slot(self._prefix, secrets.token_urlsafe(12))
        head = {"owner": owner, "seq": 0, "lease": lease}
        document = await self._store.call(
            "/v3/kv/txn",
            {
                "compare": [_create_compare(slot.head, 0)],
                "success": [_put(slot.head, _json(head), lease)],
            },
            write=True,
        )
        if not document.get("succeeded"):
            # 96 random bits met an existing id: say so rather than share it.
            raise StoreUnavailable("a new transaction id was already taken; begin again")
        state = TxnState(self._limits, isolated=True)
        state.owner, state.lease = owner, lease
        state.head_create = state.head_mod = int(document["header"]["revision"])
        self._remember(slot.id, state)
        self._known[slot.id] = self._clock.seconds() + self.timeout
        return EtcdTransaction(self, slot, owner, state)

    def find(self, txn_id: str, owner: Optional[str] = None) -> Deferred:
        """See L{ITransactionManager.find}: read it and renew its lease."""
        return Deferred.fromCoroutine(self._find(txn_id, owner))

    async def _find(self, txn_id: str, owner: Optional[str]) -> EtcdTransaction:
        if not _valid_id(txn_id):
            raise not_found(txn_id)
        slot = _Slot(self._prefix, txn_id)
        state = await self.load(slot)
        if state.owner != owner:
            raise not_found(txn_id)
        if state.lease is not None:
            try:
                answer = await self._store.call("/v3/lease/keepalive", {"ID": state.lease})
            except LeaseGone:
                answer = {}
            if int(answer.get("result", {}).get("TTL", 0)) <= 0:
                self._forget(txn_id)
                raise not_found(txn_id)
        self._known[txn_id] = self._clock.seconds() + self.timeout
        return EtcdTransaction(self, slot, owner, state)

    def finish(self, txn_id: str) -> Deferred:
        """See L{ITransactionManager.finish}: delete its keys, revoke its lease."""
        return Deferred.fromCoroutine(self._finish(txn_id))

    async def _finish(self, txn_id: str) -> None:
        if not _valid_id(txn_id):
            return
        state = self._states.get(txn_id)
        self._forget(txn_id)
        slot = _Slot(self._prefix, txn_id)
        await self._store.call("/v3/kv/txn", {"compare": [], "success": slot.drop()}, write=True)
        if state is not None and state.lease is not None:
            self._revoke(state.lease)

    def abort_all(self) -> None:
        """Forget this node's copies: the transactions themselves stay in etcd."""
        self._states.clear()
        self._known.clear()

    # -- reading, recording, committing -------------------------------------

    def one_at_a_time(self, slot: _Slot, change, *args) -> Deferred:
        """
        Run C{change(slot, *args)} (a coroutine function) once no other
        change of the same transaction runs on this node: concurrent
        requests here would only make each other compute again; the
        head's compare handles other nodes.
        """
        lock = self._locks.get(slot.id)
        if lock is None:
            lock = self._locks[slot.id] = DeferredLock()

        def run() -> Deferred:
            return Deferred.fromCoroutine(change(slot, *args))

        def release(outcome: object) -> object:
            if not lock.locked and not lock.waiting:
                self._locks.pop(slot.id, None)
            return outcome

        return lock.run(run).addBoth(release)

    async def load(self, slot: _Slot) -> TxnState:
        """
        The transaction's current state: the head and the records this node
        has not seen, in one read.

        @raise TransactionNotFound: no head (the queue reads as empty).
        """
        cached = self._states.get(slot.id)
        after = cached.seq if cached is not None else 0
        document = await self._store.call("/v3/kv/txn", {"compare": [], "success": slot.read_after(after)})
        try:
            return self._refresh(slot, cached, document.get("responses") or [])
        except _Stale:
            # Another incarnation of it (the queue after a commit): all again.
            document = await self._store.call("/v3/kv/txn", {"compare": [], "success": slot.read_after(0)})
            return self._refresh(slot, None, document.get("responses") or [])

    def _refresh(self, slot: _Slot, cached: Optional[TxnState], responses: List[dict]) -> TxnState:
        """
        The state after reading C{responses} (of L{_Slot.read_after} from
        C{cached}'s seq, or from the start without C{cached}).

        @raise _Stale: C{cached} belongs to another head than the one read.
        """
        heads = _kvs(responses[0])
        if not heads:
            self._forget(slot.id)
            if slot.queue:
                return self._remember(slot.id, TxnState(self._limits, isolated=False))
            raise not_found(slot.id)
        head = heads[0]
        create, mod = int(head["create_revision"]), int(head["mod_revision"])
        if cached is not None and cached.head_create != create:
            self._forget(slot.id)
            raise _Stale()
        if cached is not None and cached.head_mod == mod:
            return cached
        info = json.loads(unb64(head["value"]))
        state = cached if cached is not None else TxnState(self._limits, isolated=not slot.queue)
        try:
            for kv in _kvs(responses[1]):
                seq = _seq_of(slot, kv)
                if seq <= state.seq:
                    continue  # applied already, by a concurrent request here
                if seq > int(info["seq"]):
                    break
                state.apply(*decode_record(unb64(kv.get("value", ""))))
                state.seq = seq
        except BaseException:
            self._forget(slot.id)
            raise
        state.owner, state.lease = info.get("owner"), info.get("lease")
        state.head_create, state.head_mod = create, max(mod, state.head_mod)
        return self._remember(slot.id, state)

    async def append(
        self,
        slot: _Slot,
        ops: List[Op],
        observed: Dict[str, int],
        preconditions: List[Check],
    ) -> TxnState:
        """
        Add one record (see L{ITransaction.record}), computed again from the
        current state whenever another node changed it first.
        """
        state = await self.load(slot)
        for _ in range(ATTEMPTS):
            state.staging.admit(ops)
            first = {k: r for k, r in observed.items() if k not in state.observed} if state.isolated else {}
            if not ops and not first and not preconditions:
                return state
            record = encode_record(ops, first, preconditions)
            self._check_size(record)
            seq = state.seq + 1
            head = {"owner": state.owner, "seq": seq, "lease": state.lease}
            body = {
                "compare": [mod_compare(slot.head, state.head_mod)],
                "success": [
                    _put(slot.head, _json(head), state.lease),
                    _put(slot.record_key(seq), record, state.lease),
                ],
                "failure": slot.read_after(state.seq),
            }
            try:
                document = await self._store.call("/v3/kv/txn", body, write=True)
            except LeaseGone:
                self._forget(slot.id)
                raise not_found(slot.id)
            except Ambiguous:
                # Applied or not, the next read tells; the record is
                # idempotent, so recording it twice changes nothing.
                state = await self.load(slot)
                continue
            if document.get("succeeded"):
                revision = int(document["header"]["revision"])
                if state.seq == seq - 1:
                    # (A concurrent request here may have read it back first.)
                    state.apply(ops, first, preconditions)
                    state.seq = seq
                    if not state.head_mod:
                        state.head_create = revision
                    state.head_mod = max(revision, state.head_mod)
                return self._remember(slot.id, state)
            state = await self._after_failure(slot, state, document)
        raise StoreUnavailable(
            "transaction %r changed under this request %d times; nothing was "
            "recorded, try again" % (slot.id, ATTEMPTS)
        )

    async def _after_failure(self, slot: _Slot, state: TxnState, document: dict) -> TxnState:
        """The state a failed guarded transaction's failure reads show."""
        try:
            return self._refresh(slot, state, document.get("responses") or [])
        except _Stale:
            return await self.load(slot)

    async def commit(self, slot: _Slot, vet: Optional[Vet]) -> CommitResult:
        """
        Commit the transaction's staged ops with its checks, deleting its
        state in the same etcd transaction (see docs/etcd.md, "Transactions
        in etcd").
        """
        state = await self.load(slot)
        for _ in range(ATTEMPTS):
            ops = state.ops()
            if vet is not None:
                vet(ops)
            checks = observation_checks(state.observed, state.preconditions) if state.isolated else []
            if not ops and not checks:
                return CommitResult(self._store.revision, ())
            rider = Rider(slot.head, state.head_mod, slot.drop())
            try:
                result = await self._store.commit_with(ops, checks, rider)
            except RiderBroken as e:
                if not e.mod_revision and not slot.queue:
                    self._forget(slot.id)
                    raise not_found(slot.id)
                state = await self.load(slot)
                continue
            if not result.changes and not await self._drop_if(slot, state):
                # Nothing needed sending (deletes of absent keys), but the
                # state changed before it could be removed: commit again.
                state = await self.load(slot)
                continue
            self._forget(slot.id)
            if state.lease is not None:
                self._revoke(state.lease)
            return result
        raise StoreUnavailable(
            "transaction %r changed under its commit %d times; nothing was "
            "applied, try again" % (slot.id, ATTEMPTS)
        )

    async def _drop_if(self, slot: _Slot, state: TxnState) -> bool:
        """Delete the state if its head is still C{state}'s; whether it was."""
        if not state.head_mod:
            return True
        document = await self._store.call(
            "/v3/kv/txn",
            {"compare": [mod_compare(slot.head, state.head_mod)], "success": slot.drop()},
            write=True,
        )
        return bool(document.get("succeeded"))

    # -- helpers ----------------------------------------------------------------

    def _check_size(self, record: bytes) -> None:
        """
        @raise LimitExceeded: if etcd would refuse the record's request.
        """
        size = int(len(record) * _GATEWAY_INFLATION) + 1024
        if size > self._store.max_request_bytes:
            raise LimitExceeded(
                "etcd max-request-bytes",
                self._store.max_request_bytes,
                size,
                hint="what one request stages is one etcd request; stage it in "
                "smaller requests, or raise etcd's --max-request-bytes (and "
                "kvtwist's setting with it)",
            )

    def _remember(self, txn_id: str, state: TxnState) -> TxnState:
        # max_staged_bytes_total does not refuse staging here: the staged
        # writes live in etcd (bounded by its own quota), and a node only
        # caches copies. It bounds that cache instead: the least recently
        # used copies go first (read again from etcd when next needed).
        self._states[txn_id] = state
        self._states.move_to_end(txn_id)
        while len(self._states) > 1 and (
            len(self._states) > STATE_CACHE
            or sum(s.staging.size for s in self._states.values())
            > self._limits.max_staged_bytes_total
        ):
            self._states.popitem(last=False)
        return state

    def _forget(self, txn_id: str) -> None:
        self._states.pop(txn_id, None)
        self._known.pop(txn_id, None)

    def _revoke(self, lease: str) -> None:
        """Revoke C{lease} in the background: its keys are gone already."""
        d = Deferred.fromCoroutine(self._store.call("/v3/lease/revoke", {"ID": lease}))
        d.addErrback(lambda f: log.debug("lease revoke failed: {f}", f=f.value))


class _Stale(Exception):
    """This node's copy of a transaction cannot be brought up to date by appending."""


def _valid_id(txn_id: str) -> bool:
    """Whether C{txn_id} could be a generated id (base64url) and not the queue's."""
    return bool(txn_id) and len(txn_id) <= 64 and txn_id != QUEUE_ID and all(
        c.isascii() and (c.isalnum() or c in "-_") for c in txn_id
    )


def _kvs(response: dict) -> List[dict]:
    return response.get("response_range", {}).get("kvs") or []


def _seq_of(slot: _Slot, kv: dict) -> int:
    return int(unb64(kv["key"])[len(slot.records):])


def _json(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode("ascii")


def _put(key: bytes, value: bytes, lease: Optional[str]) -> dict:
    put: Dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease is not None:
        put["lease"] = lease
    return {"request_put": put}


def _create_compare(key: bytes, create_revision: int) -> dict:
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL",
            "create_revision": str(create_revision)}
