# -*- test-case-name: tests.property.test_lease_model,tests.contract.test_store_memory,tests.contract.test_store_shelve -*-
"""
The lease rules every local store shares (see
L{kvtwist.interfaces.ILeasingStore}): granting, renewing, attaching keys
through commits, and ending a lease with all of its keys in one commit.

A store supplies a L{LeaseTable} (its lease rows and key attachments) next
to its L{kvtwist.store.rules.Table}, and calls these functions inside
whatever makes its writes atomic, so the data, the history and the leases
change together or not at all.

Deadlines are absolute, in the store clock's seconds (wall-clock seconds
in a server), so a lease keeps its remaining time across a restart.
"""

from __future__ import annotations

import secrets
from typing import Callable, List, Optional, Protocol, Sequence, Tuple, Union

from zope.interface import alsoProvides

from kvtwist.errors import LeaseNotFound, LimitExceeded
from kvtwist.interfaces import ILeaseListing, ILeasingStore
from kvtwist.model import Check, CommitResult, Delete, DeletePrefix, Expire, Incr, Lease, Op, Put
from kvtwist.store.rules import Table, apply_commit, final_ops

#: Lease ids stay below 2**53, exact in every JSON client.
LEASE_ID_BITS = 53


class LeaseTable(Protocol):
    """Raw access to a store's leases and key attachments."""

    def lease(self, lease_id: int) -> Optional[Tuple[float, float]]:
        """C{(ttl, deadline)} of a stored lease, due or not, or L{None}."""

    def set_lease(self, lease_id: int, ttl: float, deadline: float) -> None:
        """Store (or renew) a lease."""

    def drop_lease(self, lease_id: int) -> None:
        """Remove a lease and detach every key from it."""

    def keys_of(self, lease_id: int) -> List[str]:
        """The keys attached to a lease, in UTF-8 byte order."""

    def attach(self, key: str, lease_id: Optional[int]) -> None:
        """Attach C{key} to C{lease_id}, or detach it (L{None})."""

    def due(self, now: float, limit: int) -> List[int]:
        """Up to C{limit} ids of leases whose deadline is at or before C{now}, soonest first."""

    def count(self) -> int:
        """How many leases are stored."""

    def held(self, now: float, limit: int) -> List[Tuple[int, float, float]]:
        """
        Up to C{limit} C{(id, ttl, deadline)} of leases whose deadline is
        after C{now}, soonest first (then by id).
        """


def grants_leases_of(wrapper: object, store: object) -> None:
    """
    Declare that C{wrapper} provides L{ILeasingStore} (and
    L{ILeaseListing}) when the C{store} it wraps (and forwards lease calls
    to) does.
    """
    if ILeasingStore.providedBy(store):
        alsoProvides(wrapper, ILeasingStore)
    if ILeaseListing.providedBy(store):
        alsoProvides(wrapper, ILeaseListing)


def new_lease_id() -> int:
    """A fresh random lease id: hard to guess, so a lease is hard to hijack."""
    return secrets.randbits(LEASE_ID_BITS) or 1


def held(leases: LeaseTable, lease_id: int, now: float) -> Tuple[float, float]:
    """
    C{(ttl, deadline)} of a lease that is held at C{now}.

    @raise LeaseNotFound: unknown, or past its deadline.
    """
    found = leases.lease(lease_id)
    if found is None or found[1] <= now:
        raise LeaseNotFound(lease_id)
    return found


def grant(
    leases: LeaseTable,
    ttl: float,
    now: float,
    max_leases: int,
    new_id: Callable[[], int] = new_lease_id,
) -> Lease:
    """
    Store a new lease of C{ttl} seconds from C{now}.

    @raise LimitExceeded: C{max_leases} leases are stored already.
    """
    count = leases.count()
    if count >= max_leases:
        raise LimitExceeded("max_leases", max_leases, count + 1, too_many=True)
    lease_id = new_id()
    while leases.lease(lease_id) is not None:
        lease_id = new_id()
    leases.set_lease(lease_id, ttl, now + ttl)
    return Lease(lease_id, ttl, now + ttl)


def renew(leases: LeaseTable, lease_id: int, now: float) -> Lease:
    """
    Move a held lease's deadline to C{now} plus its ttl.

    @raise LeaseNotFound: unknown, or past its deadline.
    """
    ttl, _ = held(leases, lease_id, now)
    leases.set_lease(lease_id, ttl, now + ttl)
    return Lease(lease_id, ttl, now + ttl)


def describe(leases: LeaseTable, lease_id: int, now: float) -> Lease:
    """
    A held lease with its keys.

    @raise LeaseNotFound: unknown, or past its deadline.
    """
    ttl, deadline = held(leases, lease_id, now)
    return Lease(lease_id, ttl, deadline, tuple(leases.keys_of(lease_id)))


def listing(leases: LeaseTable, limit: int, now: float) -> List[Lease]:
    """Up to C{limit} leases held at C{now}, soonest deadline first, with their keys."""
    return [
        Lease(lease_id, ttl, deadline, tuple(leases.keys_of(lease_id)))
        for lease_id, ttl, deadline in leases.held(now, limit)
    ]


def commit(
    table: Table,
    leases: LeaseTable,
    revision: int,
    ops: Sequence[Op],
    checks: Sequence[Check],
    now: float,
) -> CommitResult:
    """
    L{kvtwist.store.rules.apply_commit}, with the leases the puts name
    checked first and every changed key's attachment kept up to date.

    @raise LeaseNotFound: a put names a lease that is not held; nothing is
        applied.
    @raise kvtwist.errors.ConflictError: see C{apply_commit}.
    """
    winners = final_ops(op for op in ops if not isinstance(op, DeletePrefix))
    for op in winners.values():
        if isinstance(op, Put) and op.lease is not None:
            held(leases, op.lease, now)
    result = apply_commit(table, revision, ops, checks, now)
    for change in result.changes:
        # A key changed by an op that names no single key (a range delete,
        # even after a put of it) is detached like any deleted key.
        winner = winners.get(change.key)
        if isinstance(winner, Incr):
            winner = _last_write(ops, change.key)
            if winner is None:
                # An increment of the stored value keeps the key's lease,
                # as it keeps its expiry.
                continue
        leases.attach(
            change.key,
            winner.lease if isinstance(winner, Put) and change.kind == "put" else None,
        )
    return result


def _last_write(ops: Sequence[Op], key: str) -> Optional[Union[Put, Delete]]:
    """The last L{Put} or L{Delete} of C{key} in C{ops}, which an increment after it builds on."""
    found: Optional[Union[Put, Delete]] = None
    for op in ops:
        if isinstance(op, (Put, Delete)) and op.key == key:
            found = op
    return found


def end(
    table: Table,
    leases: LeaseTable,
    revision: int,
    lease_id: int,
    now: float,
    expired: bool,
) -> CommitResult:
    """
    Remove a lease and its keys in one commit: C{delete} changes for a
    revoke, C{expire} changes for an expiry (C{expired}). The caller has
    checked that the lease is held (revoke) or due (expiry).
    """
    ops: List[Op] = []
    for key in leases.keys_of(lease_id):
        if not expired:
            ops.append(Delete(key))
            continue
        stored = table.read(key)
        if stored is not None:
            ops.append(Expire(key, stored.mod_revision, leased=True))
    result = apply_commit(table, revision, ops, (), now)
    leases.drop_lease(lease_id)
    return result


def revoke(
    table: Table, leases: LeaseTable, revision: int, lease_id: int, now: float
) -> CommitResult:
    """
    End a held lease now, deleting its keys in one commit.

    @raise LeaseNotFound: unknown, or past its deadline.
    """
    held(leases, lease_id, now)
    return end(table, leases, revision, lease_id, now, expired=False)


def expire(
    table: Table, leases: LeaseTable, revision: int, lease_id: int, now: float
) -> Optional[CommitResult]:
    """
    End a lease past its deadline, its keys removed as C{expire} changes
    in one commit; L{None} if it is not due (renewed meanwhile, or gone).
    """
    found = leases.lease(lease_id)
    if found is None or found[1] > now:
        return None
    return end(table, leases, revision, lease_id, now, expired=True)
