# -*- test-case-name: tests.unit.test_web_lease -*-
"""
What the v1 routes share about leases: the store's lease ability, and the
lease id a write names (C{?lease=} on a C{PUT}, C{"lease"} in a batch set).
"""

from __future__ import annotations

from typing import Any, Optional

from kvtwist.errors import InvalidInput, LeasesUnsupported
from kvtwist.interfaces import IKeyValueStore, ILeasingStore
from kvtwist.store.leases import LEASE_ID_BITS


def leasing(store: IKeyValueStore) -> ILeasingStore:
    """
    C{store}, if it provides leases.

    @raise LeasesUnsupported: otherwise.
    """
    if not ILeasingStore.providedBy(store):
        raise LeasesUnsupported()
    return store


def parse_lease_id(raw: Any, name: str = "lease") -> Optional[int]:
    """
    A lease id given as a decimal string or a JSON integer; L{None} when
    absent.

    @raise InvalidInput: unless it is a positive integer below 2**53.
    """
    if raw is None:
        return None
    if isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 16:
        raw = int(raw)
    if type(raw) is not int or not 0 < raw < 2**LEASE_ID_BITS:
        raise InvalidInput(
            "bad-lease", "%s must be a lease id (a positive integer below 2**53)" % (name,),
            parameter=name,
        )
    return raw


def lease_for_put(store: IKeyValueStore, raw: Any) -> Optional[int]:
    """
    The lease a write asks to be attached to (C{raw}: the C{lease}
    parameter or field). With a C{ttl} too, the key goes at whichever
    comes first: its own expiry or its lease's end.

    @raise InvalidInput: a malformed id.
    @raise LeasesUnsupported: a lease on a store without leases.
    """
    lease_id = parse_lease_id(raw)
    if lease_id is not None:
        leasing(store)
    return lease_id
