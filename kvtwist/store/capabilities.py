# -*- test-case-name: tests.unit.test_ops -*-
"""
Capabilities a store wrapper passes on: a wrapper (the read cache, the
commit timer) forwards a capability's calls to the store it wraps, and
declares the capability exactly when that store provides it, so that
whoever checks it with C{providedBy} sees through the wrapper.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from twisted.internet.defer import Deferred
from zope.interface import alsoProvides
from zope.interface.interface import InterfaceClass

from kvtwist.interfaces import IHistoricalStore, IKeyValueStore, ILeaseListing, ILeasingStore, ILinearizableReads


def passes_capabilities_of(wrapper: object, store: object, capabilities: Iterable[InterfaceClass]) -> None:
    """
    Declare that C{wrapper} provides each of C{capabilities} that C{store}
    provides (C{wrapper} forwards their calls to C{store}).
    """
    for capability in capabilities:
        if capability.providedBy(store):
            alsoProvides(wrapper, capability)


def read_linearizable(store: IKeyValueStore, key: str) -> Deferred:
    """
    C{key} as of every commit acknowledged before the call: through
    L{ILinearizableReads} when C{store} declares it (past every cache), else
    its ordinary read, which for a store without a cache of its own is the
    store as it is now.
    """
    if ILinearizableReads.providedBy(store):
        return ILinearizableReads(store).get_linearizable(key)
    return store.get(key)


class ForwardsHistory:
    """
    L{IHistoricalStore}, forwarded unchanged to C{self.store} (a wrapper
    declares it with L{passes_capabilities_of} when its store provides it).
    """

    store: Any

    @property
    def compact_revision(self) -> int:
        return IHistoricalStore(self.store).compact_revision

    @property
    def history_size(self) -> int:
        return IHistoricalStore(self.store).history_size

    def get_at(self, key: str, revision: int) -> Deferred:
        return IHistoricalStore(self.store).get_at(key, revision)

    def list_at(
        self,
        prefix: str,
        after: Optional[str],
        limit: int,
        revision: int,
        max_bytes: Optional[int] = None,
    ) -> Deferred:
        return IHistoricalStore(self.store).list_at(prefix, after, limit, revision, max_bytes)

    def changes(self, after: int, upto: int, max_records: int) -> Deferred:
        return IHistoricalStore(self.store).changes(after, upto, max_records)

    def compact(self, revision: int, max_records: int) -> Deferred:
        return IHistoricalStore(self.store).compact(revision, max_records)


class ForwardsLeases:
    """
    L{ILeasingStore} and L{ILeaseListing}, forwarded unchanged to
    C{self.store} (declared as L{ForwardsHistory} says).
    """

    store: Any

    @property
    def lease_count(self) -> int:
        return ILeasingStore(self.store).lease_count

    @property
    def next_deadline(self) -> Optional[float]:
        return ILeasingStore(self.store).next_deadline

    def grant(self, ttl: float, max_leases: int) -> Deferred:
        return ILeasingStore(self.store).grant(ttl, max_leases)

    def keepalive(self, lease_id: int) -> Deferred:
        return ILeasingStore(self.store).keepalive(lease_id)

    def lease(self, lease_id: int) -> Deferred:
        return ILeasingStore(self.store).lease(lease_id)

    def revoke(self, lease_id: int) -> Deferred:
        return ILeasingStore(self.store).revoke(lease_id)

    def expired_leases(self, limit: int) -> Deferred:
        return ILeasingStore(self.store).expired_leases(limit)

    def expire_lease(self, lease_id: int) -> Deferred:
        return ILeasingStore(self.store).expire_lease(lease_id)

    def held_leases(self, limit: int) -> Deferred:
        return ILeaseListing(self.store).held_leases(limit)
