# -*- test-case-name: tests.contract.test_store_etcd -*-
"""
Commits on etcd: each is one etcd transaction guarded by the
mod_revisions it read, retried when another commit got in between, and
learned again when its answer was lost (docs/etcd.md, "Commits",
"Expiry" and "Failover"). L{Rider} lets the etcd transaction manager
delete its staged state in the very transaction that applies it.
"""

from __future__ import annotations

import json
import math
import os
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

from kvtwist.errors import ConflictError, LimitExceeded, StoreUnavailable
from kvtwist.model import (
    Change,
    Check,
    CheckFailure,
    CommitResult,
    Delete,
    DeletePrefix,
    Entry,
    Expire,
    Incr,
    Op,
    Put,
)
from kvtwist.store.etcd.codec import Row, b64, encode_value, mod_compare
from kvtwist.store.etcd.errors import Ambiguous, LeaseGone
from kvtwist.store.rules import final_ops, fold_increments, increment, live

if TYPE_CHECKING:  # pragma: no cover
    from kvtwist.store.etcd.store import EtcdStore

__all__ = ["LEASE_MARGIN", "Commits", "Rider", "RiderBroken"]

#: Seconds a lease outlives the expiry it collects: covers clock skew between
#: nodes and etcd's lease-check interval, so etcd never removes a key that a
#: node's clock still sees as live.
LEASE_MARGIN = 2

# How often one commit reads and retries when concurrent commits keep
# changing its keys between its read and its transaction.
_COMMIT_ATTEMPTS = 10
# The same for a commit with increments: counters are made to be contended
# (every client adds to the same key), and every round some commit wins, so
# a longer bound only lets a commit wait its turn.
_INCREMENT_ATTEMPTS = 100
# At most this many leases are remembered for reuse.
_LEASE_CACHE_SIZE = 1024
# Rough protobuf overheads, to estimate a transaction's size before sending.
_OP_OVERHEAD = 32
_TXN_OVERHEAD = 64

#: An op of one key, as a commit sends it (a prefix delete is its own
#: transaction, L{Commits.delete_prefix}).
KeyedOp = Union[Put, Delete, Expire, Incr]
#: What a transaction applies: puts (increments resolved) and deletes.
PlannedOp = Union[Put, Delete, Expire]
#: A commit's plan: each op to apply with the entry it replaces.
Plan = List[Tuple[PlannedOp, Optional[Entry]]]


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
    when their commit applies (L{kvtwist.store.etcd.transactions}).

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
        txn["compare"].append(mod_compare(self.guard_key, self.guard_mod))
        txn["success"].extend(self.requests)
        txn["failure"] = [{"request_range": {"key": b64(self.guard_key)}}]

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


class Commits:
    """
    The commits of one L{EtcdStore} (C{commit}, C{commit_with},
    C{delete_prefix}), and the expiry leases they attach to expiring keys.
    """

    def __init__(self, store: "EtcdStore") -> None:
        self._store = store
        self._delivery = store.delivery
        # expiry bucket (whole second the lease must outlive) -> (lease id,
        # clock time the lease ends)
        self._leases: Dict[int, Tuple[str, float]] = {}

    def forget_leases(self) -> None:
        """Forget the expiry leases granted so far (the store closes)."""
        self._leases.clear()

    def _estimate_size(self, final: Dict[str, KeyedOp], touched: List[str]) -> int:
        """Roughly the bytes etcd counts for the transaction (protobuf)."""
        size = _TXN_OVERHEAD
        for key in touched:
            size += len(self._store.keys.etcd_key(key)) + _OP_OVERHEAD
        for op in final.values():
            size += len(self._store.keys.etcd_key(op.key)) + _OP_OVERHEAD
            if isinstance(op, Put):
                # the envelope header is small; count it generously
                size += len(op.value) + len(op.content_type) + 96
        return size

    async def commit(
        self, ops: List[Op], checks: List[Check], rider: Optional[Rider] = None
    ) -> CommitResult:
        # Increments become writes of the values read in _attempt (guarded
        # like every write, so a concurrent change makes them read again).
        final = _keyed(final_ops(fold_increments(ops)))
        touched = list(dict.fromkeys([c.key for c in checks] + list(final)))
        if not touched:
            return CommitResult(self._store.revision, ())
        # etcd counts the compares and the requests of each branch apart.
        compares, requests, extra_bytes = rider.weight() if rider is not None else (0, 0, 0)
        operations = max(len(touched) + compares, len(final) + requests)
        if operations > self._store.max_txn_ops:
            raise LimitExceeded(
                "etcd max-txn-ops",
                self._store.max_txn_ops,
                operations,
                hint="a commit is one etcd transaction with one compare per "
                "checked or written key%s; raise etcd's --max-txn-ops (and "
                "kvtwist's setting with it)"
                % (" and two requests that remove the transaction's staged state"
                   if rider is not None else ""),
            )
        size = self._estimate_size(final, touched) + extra_bytes
        if size > self._store.max_request_bytes:
            raise LimitExceeded(
                "etcd max-request-bytes",
                self._store.max_request_bytes,
                size,
                hint="a commit is one etcd request; raise etcd's "
                "--max-request-bytes (and kvtwist's setting with it)",
            )
        commit_id = os.urandom(8).hex()
        # Set when an attempt's answer was lost: its plan, the mod_revisions
        # its compares expected and why it was lost.
        lost: List[Tuple[Plan, Dict[str, int], str]] = []
        token = self._delivery.token()
        # Expired keys removed on the way (see _purge), to tell listeners.
        purged: List[CommitResult] = []
        try:
            result = await self._attempt(
                final, touched, checks, commit_id, lost, token, purged, rider
            )
        except (StoreUnavailable, ConflictError) as e:
            self._delivery.settle(token, purged)
            if lost and e.extra.get("outcome") != "unknown":
                # A lost attempt that still sits in etcd's log could apply
                # later: "nothing was applied" would be a lie.
                raise _unknown_outcome(lost[-1][2], e.detail)
            raise
        except BaseException:
            self._delivery.settle(token, purged)
            raise
        await self._delivery.settle(token, purged + [result])
        return result

    async def delete_prefix(self, prefix: str, max_keys: int) -> CommitResult:
        """
        Count the keys under C{prefix} at a revision R, then delete them in
        one transaction guarded by "nothing in the range was written after
        R" (a compare over the range), so the count the limit was checked
        against is the set deleted; retried when a write got in between.
        The count includes keys that expired moments ago and that etcd's
        lease has not removed yet (they are deleted too, as C{expire}
        changes).
        """
        start = self._store.keys.etcd_key(prefix)
        end = self._store.keys.range_end(start)
        for attempt in range(_COMMIT_ATTEMPTS):
            counted = await self._store.call(
                "/v3/kv/range",
                {"key": b64(start), "range_end": b64(end), "count_only": True},
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
                return CommitResult(self._store.revision, ())
            read_at = int(counted["header"]["revision"])
            body = {
                "compare": [
                    {
                        "key": b64(start),
                        "range_end": b64(end),
                        "target": "MOD",
                        "result": "LESS",
                        "mod_revision": str(read_at + 1),
                    }
                ],
                "success": [
                    {
                        "request_delete_range": {
                            "key": b64(start),
                            "range_end": b64(end),
                            "prev_kv": True,
                        }
                    }
                ],
            }
            token = self._delivery.token()
            self._delivery.unsettle(token, self._store.revision)
            try:
                document = await self._store.call("/v3/kv/txn", body, write=True)
            except Ambiguous as e:
                self._delivery.settle(token, [])
                # Not retried: a second DeleteRange would also delete keys
                # written since.
                raise _unknown_outcome(str(e), "a prefix delete is not retried")
            except BaseException:
                self._delivery.settle(token, [])
                raise
            if not document.get("succeeded"):
                self._delivery.settle(token, [])
                continue
            now = self._store.clock.seconds()
            changes = []
            for response in document.get("responses") or []:
                deleted = response.get("response_delete_range", {})
                for kv in deleted.get("prev_kvs") or []:
                    entry = self._store.keys.row(kv).entry
                    kind = "delete" if entry.is_live(now) else "expire"
                    changes.append(Change(kind, entry.key, None, entry))
            result = CommitResult(int(document["header"]["revision"]), tuple(changes))
            await self._delivery.settle(token, [result])
            return result
        raise StoreUnavailable(
            "the prefix delete lost the race against concurrent writes under "
            "its prefix %d times; nothing was applied" % (_COMMIT_ATTEMPTS,)
        )


    async def _attempt(
        self,
        final: Dict[str, KeyedOp],
        touched: List[str],
        checks: List[Check],
        commit_id: str,
        lost: List[Tuple[Plan, Dict[str, int], str]],
        token: int,
        purged: List[CommitResult],
        rider: Optional[Rider] = None,
    ) -> CommitResult:
        """
        The read-decide-transact loop of L{commit}; appends to C{lost} each
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
            rows, _ = await self._store.read_rows(touched)
            if lost:
                lost_plan, guards, reason = lost[-1]
                landed = self._landed(lost_plan, rows, commit_id)
                if landed is not None:
                    return landed
                if any(_mod(rows.get(k)) != m for k, m in guards.items()):
                    raise _unknown_outcome(reason, "its keys changed since")
                # Nothing changed: the lost attempt has not applied, and as
                # the next attempt expects the same revisions, at most one of
                # the two ever will.
            now = self._store.clock.seconds()
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
                self._delivery.unsettle(token, self._store.revision)
                removed = await self._purge(stale, rows)
                if removed is not None:
                    purged.append(removed)
                continue
            plan: Plan = []
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
                return CommitResult(self._store.revision, ())
            guards = {k: _mod(rows.get(k)) for k in touched}
            self._delivery.unsettle(token, self._store.revision)
            try:
                txn = await self._transaction(plan, guards, commit_id, now)
                if rider is not None:
                    rider.ride(txn)
                document = await self._store.call("/v3/kv/txn", txn, write=True)
            except Ambiguous as e:
                lost.append((plan, guards, str(e)))
                continue
            except LeaseGone:
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
        plan: Plan,
        rows: Dict[str, Row],
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
        self, stale: Dict[str, int], rows: Dict[str, Row]
    ) -> Optional[CommitResult]:
        """
        Delete expired keys that are about to be written again, each only if
        it is still the expired version that was read.

        @return: the removal as C{expire} changes, if it was applied.
        """
        body = {
            "compare": [mod_compare(self._store.keys.etcd_key(k), m) for k, m in stale.items()],
            "success": [
                {"request_delete_range": {"key": b64(self._store.keys.etcd_key(k))}}
                for k in stale
            ],
        }
        try:
            document = await self._store.call("/v3/kv/txn", body, write=True)
        except Ambiguous:
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
        plan: Plan,
        guards: Dict[str, int],
        commit_id: str,
        now: float,
    ) -> dict:
        """The etcd txn request for C{plan}, guarded by C{guards}."""
        success = []
        for op, _ in plan:
            key = b64(self._store.keys.etcd_key(op.key))
            if not isinstance(op, Put):
                success.append({"request_delete_range": {"key": key}})
                continue
            put: Dict[str, Any] = {
                "key": key,
                "value": b64(
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
            "compare": [mod_compare(self._store.keys.etcd_key(k), m) for k, m in guards.items()],
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
        document = await self._store.call("/v3/lease/grant", {"TTL": str(ttl)})
        lease = str(document["ID"])
        for old in [b for b, (_, ends) in self._leases.items() if ends <= now]:
            del self._leases[old]
        if len(self._leases) >= _LEASE_CACHE_SIZE:
            del self._leases[min(self._leases)]
        self._leases[bucket] = (lease, now + ttl)
        return lease


    async def _check_client_leases(self, plan: Plan) -> None:
        """
        @raise kvtwist.errors.LeaseNotFound: a client lease a put of C{plan}
            names is gone.
        """
        for op, _ in plan:
            if isinstance(op, Put) and op.lease is not None:
                await self._store.client_leases.lease(op.lease)


# -- helpers ----------------------------------------------------------------


def _keyed(final: Dict[str, Op]) -> Dict[str, KeyedOp]:
    """
    C{final} (L{final_ops}' answer) typed as ops of one key each: none is
    a L{DeletePrefix}, which has no key for L{final_ops} to file it under.
    """
    keyed: Dict[str, KeyedOp] = {}
    for key, op in final.items():
        assert not isinstance(op, DeletePrefix), "final_ops keys every op by its key"
        keyed[key] = op
    return keyed


def _mod(row: Optional[Row]) -> int:
    """The mod_revision etcd holds for a key (0 when it has none)."""
    return row.entry.mod_revision if row is not None else 0


def _expiry(expires: Optional[float]) -> Optional[float]:
    return float(expires) if expires is not None else None


def _result(plan: Plan, revision: int) -> CommitResult:
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
