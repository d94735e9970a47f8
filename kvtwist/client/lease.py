# -*- test-case-name: tests.unit.test_client_coordination -*-
"""
Leases (C{/v1/lease}): the routes one call each (L{grant}, L{keepalive},
L{revoke}, L{show_lease}), and L{Lease}, a lease kept alive while held.

    async with Lease(treq, url, ttl=10, reactor=reactor) as lease:
        await client.put(treq, url, "svc/web-1", b"up", lease=lease.id)
        ...                        # the key lives while this block runs
    # revoked: the key is gone

A L{Lease} renews itself every C{ttl / 3} seconds of the injected reactor's
clock. It counts itself lost, and fires L{Lease.lost} and its C{on_lost}
callback, when the server says the lease is gone (404), or when its own
deadline passes without a renewal getting through: the deadline is
counted from when the last successful keepalive was I{sent}, so the client
gives up no later than the server does. Code holding a lock on a lease
must stop acting as its holder at that moment.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from kvtwist.client._wire import _decode_object, _join, _json_body, _request
from kvtwist.client.errors import NotFoundError

log = Logger()


def _lease_url(url: str, lease_id: int, *rest: str) -> str:
    if type(lease_id) is not int or lease_id <= 0:
        raise ValueError("lease ids are positive ints: %r" % (lease_id,))
    return _join(url, "v1", "lease", "%d" % (lease_id,), *rest)


def _seconds(ttl: Any) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0:
        raise ValueError("a lease ttl is a number of seconds above 0: %r" % (ttl,))
    return ttl


def grant(http: Any, url: str, ttl: float, *, token: Optional[str] = None) -> Deferred:
    """
    Grant a lease of C{ttl} seconds (C{POST /v1/lease}).

    @return: a Deferred firing with C{{"id", "ttl"}}.
    @raise ValueError: at once, for a ttl that is not a positive number.
    @raise KVClientError: (in the Deferred) for an error answer (429 past
        the server's C{max_leases}, 501 on a store without leases).
    """
    body = _json_body({"ttl": _seconds(ttl)})
    d = _request(http, "POST", _join(url, "v1", "lease"), {201}, token, body)
    return d.addCallback(lambda answer: _decode_object(answer.status, answer.body))


def keepalive(http: Any, url: str, lease_id: int, *, token: Optional[str] = None) -> Deferred:
    """
    Renew a lease (C{POST /v1/lease/{id}/keepalive}); writes no key.

    @return: a Deferred firing with C{{"id", "ttl"}}.
    @raise NotFoundError: (in the Deferred) if the lease is gone.
    """
    d = _request(http, "POST", _lease_url(url, lease_id, "keepalive"), {200}, token)
    return d.addCallback(lambda answer: _decode_object(answer.status, answer.body))


def show_lease(http: Any, url: str, lease_id: int, *, token: Optional[str] = None) -> Deferred:
    """
    Look a lease up (C{GET /v1/lease/{id}}).

    @return: a Deferred firing with C{{"id", "ttl", "remaining", "keys"}}.
    @raise NotFoundError: (in the Deferred) if the lease is gone.
    """
    d = _request(http, "GET", _lease_url(url, lease_id), {200}, token)
    return d.addCallback(lambda answer: _decode_object(answer.status, answer.body))


def revoke(http: Any, url: str, lease_id: int, *, token: Optional[str] = None) -> Deferred:
    """
    Revoke a lease, deleting its keys in one commit (C{DELETE
    /v1/lease/{id}}).

    @return: a Deferred firing with L{None}.
    @raise NotFoundError: (in the Deferred) if the lease is gone.
    """
    d = _request(http, "DELETE", _lease_url(url, lease_id), {204}, token)
    return d.addCallback(lambda _: None)


class LeaseLost(Exception):
    """The lease ended without its holder revoking it."""


class Lease:
    """
    A lease kept alive while held. L{grant} (or C{async with}) takes it;
    L{revoke} (or leaving the block) gives it up.

    @param reactor: the L{IReactorTime} that times keepalives (a
        C{task.Clock} in tests).
    @param on_lost: called once with a L{LeaseLost} if the lease is lost.
    @ivar id: the lease id, once granted.
    @ivar lost: a Deferred that fires with a L{LeaseLost} (as its result,
        not a failure) if the lease is lost; never if its holder revokes it.
    """

    def __init__(
        self,
        http: Any,
        url: str,
        ttl: float,
        *,
        reactor: IReactorTime,
        token: Optional[str] = None,
        on_lost: Optional[Callable[[LeaseLost], object]] = None,
    ) -> None:
        self._http = http
        self._url = url
        self.ttl = _seconds(ttl)
        self._reactor = reactor
        self._token = token
        self._on_lost = on_lost
        self.id: Optional[int] = None
        self.lost: Deferred = Deferred()
        self._deadline = 0.0
        self._renewal: Optional[IDelayedCall] = None
        self._expiry: Optional[IDelayedCall] = None
        self._ended = False

    @property
    def held(self) -> bool:
        """Whether the lease is granted, not given up, and within its deadline."""
        return self.id is not None and not self._ended and self._reactor.seconds() < self._deadline

    async def grant(self) -> "Lease":
        """Take the lease and start keeping it alive."""
        sent = self._reactor.seconds()
        granted = await grant(self._http, self._url, self.ttl, token=self._token)
        self.id = granted["id"]
        self._renewed(sent)
        return self

    def _renewed(self, sent: float) -> None:
        if self._ended:
            return
        self._deadline = sent + self.ttl
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = self._reactor.callLater(
            max(0.0, self._deadline - self._reactor.seconds()), self._lose, "its deadline passed"
        )
        if self._renewal is None or not self._renewal.active():
            self._renewal = self._reactor.callLater(self.ttl / 3, self._renew)

    def _renew(self) -> None:
        self._renewal = None
        # Renewals are only scheduled once granted, so an id is there.
        if self._ended or self.id is None:
            return
        sent = self._reactor.seconds()
        d = keepalive(self._http, self._url, self.id, token=self._token)

        def renewed(_: Dict[str, Any]) -> None:
            self._renewed(sent)

        def failed(reason) -> None:
            if reason.check(NotFoundError):
                self._lose("the server says it is gone")
                return
            log.failure("lease keepalive failed; retrying", reason)
            # Try again soon; the deadline timer decides when it is lost.
            if not self._ended:
                self._renewal = self._reactor.callLater(self.ttl / 6, self._renew)

        d.addCallbacks(renewed, failed)

    def _lose(self, why: str) -> None:
        if self._ended:
            return
        self._stop()
        error = LeaseLost("lease %s was lost: %s" % (self.id, why))
        if self._on_lost is not None:
            self._on_lost(error)
        # A value, not a failure: nobody has to wait on it.
        self.lost.callback(error)

    def _stop(self) -> None:
        self._ended = True
        for call in (self._renewal, self._expiry):
            if call is not None and call.active():
                call.cancel()

    def abandon(self) -> None:
        """
        Stop renewing without revoking, as a holder that died would: the
        lease (and its keys) ends at its deadline.
        """
        self._stop()

    async def revoke(self) -> None:
        """Stop renewing and revoke the lease (its keys go); quiet if it is gone already."""
        if self.id is None or self._ended:
            self._stop()
            return
        self._stop()
        try:
            await revoke(self._http, self._url, self.id, token=self._token)
        except NotFoundError:
            pass

    async def __aenter__(self) -> "Lease":
        return await self.grant()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.revoke()
