# -*- test-case-name: tests.unit.test_client_coordination -*-
"""
A fair distributed lock on leases and revisions (etcd's lock recipe).

Each contender takes a L{kvtwist.client.lease.Lease} and creates the key
C{NAME/<lease id>} with it (C{If-None-Match: *}). Contenders queue by their
key's C{create_revision}: the lowest holds the lock; every other one
long-polls only its predecessor's key (no thundering herd) and looks again
when it changes or goes. A holder that dies stops renewing; its lease
expires and its key goes with it, so the next in line takes over within
the lease's ttl (the server's sweeper wakes at the lease's deadline).

The holder's key's C{create_revision} is the lock's B{fencing revision}:
it grows with every acquisition, so a resource guarded by the lock can
refuse writes carrying an older one. A holder whose lease is lost (its
deadline passed without a renewal getting through) stops being the
holder at once: L{Lock.held} turns false and L{Lock.lost} fires.

    async with Lock(treq, url, "jobs/nightly", reactor=reactor, ttl=10) as lock:
        await do_the_job(fencing=lock.fencing_revision)
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from kvtwist.client.kv import list_all, put
from kvtwist.client.lease import Lease, LeaseLost
from kvtwist.client.watch import wait_for


def queue_key(name: str, lease_id: int) -> str:
    """The key a contender on C{name} holding lease C{lease_id} creates."""
    return "%s/%016x" % (name, lease_id)


async def contenders(
    http: Any, url: str, name: str, *, values: bool = False, token: Optional[str] = None
) -> List[Dict[str, Any]]:
    """
    The keys queued on C{name}, first in line first (by C{create_revision}),
    as listing items (with values if asked).
    """
    listing = await list_all(http, url, name + "/", values=values, token=token)
    return sorted(listing["items"], key=lambda item: item["create_revision"])


async def wait_turn(
    http: Any,
    url: str,
    name: str,
    key: str,
    created: int,
    lease: Lease,
    wait: float,
    token: Optional[str] = None,
) -> None:
    """
    Return once C{key} (created at revision C{created}) is first in line
    on C{name}, long-polling only the key just before it (for at most
    C{wait} seconds at a time, so a lost lease is noticed).

    @raise LeaseLost: if the lease is lost, or the key is gone, meanwhile.
    """
    while True:
        if not lease.held:
            raise LeaseLost("lease %s was lost while waiting" % (lease.id,))
        queue = await contenders(http, url, name, token=token)
        if not any(item["key"] == key for item in queue):
            raise LeaseLost("the key %r is gone: its lease ended" % (key,))
        ahead = [item for item in queue if item["create_revision"] < created]
        if not ahead:
            return
        predecessor = ahead[-1]
        await wait_for(
            http, url, predecessor["key"], predecessor["mod_revision"], wait=wait, token=token
        )


async def take_turn(
    http: Any, url: str, name: str, lease: Lease, value: bytes, token: Optional[str] = None
) -> Dict[str, Any]:
    """
    Grant C{lease}, queue on C{name} with C{value} under it and wait until
    first in line (the lock and election recipes' common part); the lease
    is revoked if that fails.

    @return: the queue key's L{kvtwist.client.put} result (its
        C{revision} is the key's create revision).
    @raise LeaseLost: if the lease is lost while waiting.
    """
    await lease.grant()
    lease_id = cast(int, lease.id)  # grant() set it, or raised
    try:
        key = queue_key(name, lease_id)
        created = await put(
            http, url, key, value, lease=lease.id, if_none_match=True, token=token
        )
        await wait_turn(
            http, url, name, key, created["revision"], lease, max(1.0, lease.ttl), token
        )
    except BaseException:
        await lease.revoke()
        raise
    return created


class Lock:
    """
    A fair lock named C{name} (a key prefix), held on a lease of C{ttl}
    seconds kept alive through C{reactor}.

    @param value: stored in the contender's key (who holds it, for humans).
    @param on_lost: called with a L{LeaseLost} if the lease is lost while
        held or waiting.
    @ivar key: this contender's key, once queued.
    @ivar fencing_revision: the key's C{create_revision}, once acquired.
    """

    def __init__(
        self,
        http: Any,
        url: str,
        name: str,
        *,
        reactor: IReactorTime,
        ttl: float = 10.0,
        value: bytes = b"",
        token: Optional[str] = None,
        on_lost: Optional[Callable[[LeaseLost], object]] = None,
    ) -> None:
        if not name or name.endswith("/"):
            raise ValueError("a lock name is a non-empty key prefix without a trailing /")
        self._http = http
        self._url = url
        self.name = name
        self._value = value
        self._token = token
        self.lease = Lease(http, url, ttl, reactor=reactor, token=token, on_lost=on_lost)
        self.key: Optional[str] = None
        self.fencing_revision: Optional[int] = None

    @property
    def held(self) -> bool:
        """Whether this contender holds the lock now (acquired, lease not lost)."""
        return self.fencing_revision is not None and self.lease.held

    @property
    def lost(self) -> Deferred:
        """Fires with a L{LeaseLost} if the lease is lost."""
        return self.lease.lost

    async def acquire(self) -> "Lock":
        """
        Queue and wait until first in line.

        @raise LeaseLost: if the lease is lost while waiting (the queue
            entry is then gone too).
        """
        created = await take_turn(
            self._http, self._url, self.name, self.lease, self._value, self._token
        )
        self.key = created["key"]
        self.fencing_revision = created["revision"]
        return self

    async def release(self) -> None:
        """Give the lock up: revoke the lease, which deletes the key at once."""
        self.fencing_revision = None
        await self.lease.revoke()

    async def __aenter__(self) -> "Lock":
        return await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.release()
