# -*- test-case-name: tests.unit.test_web_lease -*-
"""
C{/v1/lease}: leases (see L{kvtwist.interfaces.ILeasingStore}).

C{POST /v1/lease} C{{"ttl": S}} grants one (201 C{{"id", "ttl"}});
C{GET /v1/lease?limit=N} lists the leases held (C{{"leases": [...],
"more"}}, soonest deadline first; only on a store that provides
L{kvtwist.interfaces.ILeaseListing}, else 501 C{leases-unsupported});
C{GET /v1/lease/{id}} shows it (C{{"id", "ttl", "remaining", "keys"}});
C{POST /v1/lease/{id}/keepalive} renews it, writing no key (200
C{{"id", "ttl"}}); C{DELETE /v1/lease/{id}} revokes it, deleting its keys
in one commit (204). Keys are attached with C{PUT /v1/kv/{key}?lease=ID}
(and C{"lease"} in batch sets). An unknown, revoked or expired lease is a
404 C{lease-not-found}; a store without leases answers 501
C{leases-unsupported}.

Permissions: leases need a token that may write (at least one write
prefix). A lease id is a random 53-bit number, so holding it is what lets
a client renew or revoke it; a revoke also needs write permission on every
key the lease holds (403 naming the others, nothing revoked), and a lease's
C{keys} list only the keys the token may read.
"""

from __future__ import annotations

import math
from typing import Optional

from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import Request

from kvtwist.auth import Authorizer, Token, principal_of
from kvtwist.errors import Forbidden, InvalidInput, LeaseNotFound, LeasesUnsupported
from kvtwist.interfaces import ILeaseListing
from kvtwist.model import Lease
from kvtwist.strictjson import parse
from kvtwist.web.resource import Response, json_response, read_body
from kvtwist.web.v1.base import V1Context, V1Resource, int_arg
from kvtwist.web.v1.leasing import leasing, parse_lease_id


def require_lease_user(token: Token) -> None:
    """@raise Forbidden: unless C{token} may write some key."""
    if not token.write:
        raise Forbidden("token %r may not use leases: they need write permission" % (token.name,))


def _number(value: float) -> float:
    """A ttl or remaining time for JSON: whole seconds as integers, else milliseconds."""
    rounded = round(value, 3)
    return int(rounded) if rounded == int(rounded) else rounded


def lease_summary(lease: Lease) -> dict:
    """C{{"id", "ttl"}}: what a grant and a keepalive answer."""
    return {"id": lease.id, "ttl": _number(lease.ttl)}


#: Leases a listing returns unless C{?limit=} asks for another number...
DEFAULT_LEASE_LISTING = 100
#: ...and at most: each comes with all of its keys.
MAX_LEASE_LISTING = 1000


def lease_description(lease: Lease, token: Token, now: float) -> dict:
    """C{{"id", "ttl", "remaining", "keys"}}, with only the keys C{token} may read."""
    return {
        **lease_summary(lease),
        "remaining": _number(lease.remaining(now)),
        "keys": [key for key in lease.keys if token.may_read(key)],
    }


class LeaseCollection(V1Resource):
    """C{/v1/lease}: C{POST} grants a lease, C{GET} lists them; each child is one."""

    route = "/v1/lease"
    parameters = {"GET": ("limit",)}

    def getChild(self, path: bytes, request: Request) -> Resource:
        if not path:
            return super().getChild(path, request)
        try:
            lease_id = parse_lease_id(path.decode("ascii", "replace"))
        except InvalidInput:
            # No lease has that id: each method answers 404, others 405.
            lease_id = None
        return LeaseResource(self.context, lease_id)

    def render_GET(self, request: Request) -> int:
        return self.respond(request, lambda request: Deferred.fromCoroutine(self._list(request)))

    async def _list(self, request: Request) -> Response:
        token = principal_of(request)
        require_lease_user(token)
        store = leasing(self.context.store)
        if not ILeaseListing.providedBy(store):
            # Leases work, but this store cannot enumerate them.
            raise LeasesUnsupported()
        limit = int_arg(request, "limit", DEFAULT_LEASE_LISTING, 1, MAX_LEASE_LISTING)
        # One more than asked tells whether there are more.
        leases = await store.held_leases(limit + 1)
        now = self.context.clock.seconds()
        return json_response(
            200,
            {
                "leases": [lease_description(lease, token, now) for lease in leases[:limit]],
                "more": len(leases) > limit,
            },
        )

    def render_POST(self, request: Request) -> int:
        return self.respond(request, lambda request: Deferred.fromCoroutine(self._grant(request)))

    async def _grant(self, request: Request) -> Response:
        require_lease_user(principal_of(request))
        store = leasing(self.context.store)
        body = parse(read_body(request))
        ttl = body.get("ttl") if isinstance(body, dict) else None
        limit = self.context.limits.max_lease_ttl
        if (
            not isinstance(body, dict)
            or set(body) != {"ttl"}
            or isinstance(ttl, bool)
            or not isinstance(ttl, (int, float))
            or not (0 < ttl <= limit)
            or math.isnan(ttl)
        ):
            raise InvalidInput(
                "bad-ttl",
                'the body must be {"ttl": S}: seconds above 0 and at most %s (--max-lease-ttl)'
                % (_number(limit),),
            )
        lease = await store.grant(ttl, self.context.limits.max_leases)
        response = json_response(201, lease_summary(lease))
        response.headers[b"location"] = b"/v1/lease/%d" % (lease.id,)
        return response


class LeasePart(V1Resource):
    """A resource about one lease (L{None}: a segment that is no lease id)."""

    def __init__(self, context: V1Context, lease_id: Optional[int]) -> None:
        super().__init__(context)
        self._lease_id = lease_id

    @property
    def lease_id(self) -> int:
        """
        The lease's id.

        @raise LeaseNotFound: for a segment that is no lease id.
        """
        if self._lease_id is None:
            raise LeaseNotFound(None)
        return self._lease_id


class LeaseResource(LeasePart):
    """C{/v1/lease/{id}}: show (GET) or revoke (DELETE); C{keepalive} below."""

    route = "/v1/lease/{id}"

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"keepalive" and not request.postpath:
            return LeaseKeepalive(self.context, self._lease_id)
        return super().getChild(path, request)

    def render_GET(self, request: Request) -> int:
        return self.respond(request, lambda request: Deferred.fromCoroutine(self._show(request)))

    async def _show(self, request: Request) -> Response:
        token = principal_of(request)
        require_lease_user(token)
        lease = await leasing(self.context.store).lease(self.lease_id)
        return json_response(200, lease_description(lease, token, self.context.clock.seconds()))

    def render_DELETE(self, request: Request) -> int:
        return self.respond(request, lambda request: Deferred.fromCoroutine(self._revoke(request)))

    async def _revoke(self, request: Request) -> Response:
        token = principal_of(request)
        require_lease_user(token)
        store = leasing(self.context.store)
        if not token.may_write(""):
            # The revoke deletes the lease's keys: a token limited to some
            # prefixes must be allowed to delete each of them.
            Authorizer.require_write(token, (await store.lease(self.lease_id)).keys)
        await store.revoke(self.lease_id)
        return Response(204, content_type=None)


class LeaseKeepalive(LeasePart):
    """C{/v1/lease/{id}/keepalive}: C{POST} renews the lease."""

    route = "/v1/lease/{id}/keepalive"

    def render_POST(self, request: Request) -> int:
        return self.respond(request, lambda request: Deferred.fromCoroutine(self._renew(request)))

    async def _renew(self, request: Request) -> Response:
        require_lease_user(principal_of(request))
        lease = await leasing(self.context.store).keepalive(self.lease_id)
        return json_response(200, lease_summary(lease))
