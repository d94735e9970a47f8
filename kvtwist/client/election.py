# -*- test-case-name: tests.unit.test_client_coordination -*-
"""
Leader election on leases and revisions (etcd's election recipe), on the
same queue as L{kvtwist.client.lock.Lock}: the candidate whose key under
C{NAME/} has the lowest C{create_revision} leads, and its key's value is
the leader's proclamation.

    election = Election(treq, url, "svc/leader", reactor=reactor, ttl=5)
    await election.campaign(b"node-1")      # returns once leading
    await election.proclaim(b"node-1 v2")   # only while leading (If-Match)
    await election.resign()                 # the next candidate leads

    async for value in observe(treq, url, "svc/leader"):
        print("leader is now", value)       # None while nobody leads
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Dict, Optional

from twisted.internet.interfaces import IReactorTime

from kvtwist.client.errors import PreconditionFailedError
from kvtwist.client.kv import put
from kvtwist.client.lease import Lease, LeaseLost
from kvtwist.client.lock import contenders, take_turn
from kvtwist.client.watch import watch
from kvtwist.wire import decode_base64


class NotLeader(Exception):
    """A proclamation by a candidate that does not lead (any more)."""


def _value_of(item: Dict[str, Any]) -> bytes:
    """A listing item's value as bytes (a JSON value re-encoded compactly)."""
    if "value_base64" in item:
        return decode_base64(item["value_base64"])
    return json.dumps(item.get("value"), separators=(",", ":")).encode("utf-8")


async def leader(http: Any, url: str, name: str, *, token: Optional[str] = None) -> Optional[bytes]:
    """The leader's value on C{name} now, or L{None} if nobody leads."""
    queue = await contenders(http, url, name, values=True, token=token)
    return _value_of(queue[0]) if queue else None


async def observe(
    http: Any, url: str, name: str, *, token: Optional[str] = None, **watch_options: Any
) -> AsyncIterator[Optional[bytes]]:
    """
    The leader's value now, then again each time it changes (L{None} while
    nobody leads), following C{NAME/} through an event stream.
    """
    current = await leader(http, url, name, token=token)
    yield current
    async with watch(http, url, name + "/", token=token, **watch_options) as events:
        async for _ in events:
            now = await leader(http, url, name, token=token)
            if now != current:
                current = now
                yield current


class Election:
    """
    One candidate in the election C{name}, on a lease of C{ttl} seconds.

    @ivar lost: fires with a L{LeaseLost} if the candidate's lease is lost.
    """

    def __init__(
        self,
        http: Any,
        url: str,
        name: str,
        *,
        reactor: IReactorTime,
        ttl: float = 10.0,
        token: Optional[str] = None,
    ) -> None:
        self._http = http
        self._url = url
        self.name = name
        self._token = token
        self.lease = Lease(http, url, ttl, reactor=reactor, token=token)
        self.key: Optional[str] = None
        self._revision: Optional[int] = None
        self._leading = False

    @property
    def lost(self):
        """Fires with a L{LeaseLost} if the candidate's lease is lost."""
        return self.lease.lost

    @property
    def leading(self) -> bool:
        """Whether this candidate leads now (its lease not lost)."""
        return self._leading and self.lease.held

    async def campaign(self, value: bytes) -> None:
        """
        Stand with C{value}; return once leading.

        @raise LeaseLost: if the lease is lost while waiting.
        """
        created = await take_turn(
            self._http, self._url, self.name, self.lease, value, self._token
        )
        self.key = created["key"]
        self._revision = created["mod_revision"]
        self._leading = True

    async def proclaim(self, value: bytes) -> None:
        """
        Change the leader's value, only while leading.

        @raise NotLeader: if this candidate does not lead, or its key
            changed under it.
        """
        if not self.leading or self.key is None:
            raise NotLeader("%s does not lead %r" % (self.key, self.name))
        try:
            written = await put(
                self._http, self._url, self.key, value,
                lease=self.lease.id, if_match=self._revision, token=self._token,
            )
        except PreconditionFailedError:
            self._leading = False
            raise NotLeader("%s no longer holds its place in %r" % (self.key, self.name))
        self._revision = written["mod_revision"]

    async def resign(self) -> None:
        """Stop leading (or campaigning): the next candidate leads at once."""
        self._leading = False
        await self.lease.revoke()


__all__ = ["Election", "NotLeader", "LeaseLost", "leader", "observe"]
