# -*- test-case-name: tests.unit.test_web_v1 -*-
"""
C{/v1/txn}: per-client transactions that span several requests.

C{POST /v1/txn} opens one; C{/v1/txn/{id}/kv/{key}} reads through it and
stages writes and deletes (preconditions recorded for the commit);
C{POST /v1/txn/{id}/set} stages the seed's JSON object shape;
C{POST /v1/txn/{id}/incr} reads a counter through it and stages its sum;
C{GET /v1/txn/{id}} lists what is staged; C{DELETE /v1/txn/{id}} aborts;
C{POST /v1/txn/{id}/commit} applies everything atomically and durably, or
answers 409 naming every conflict and applies nothing. A commit attempt that
conflicts ends the transaction; one that fails because the store is
unavailable (503) leaves it open to retry.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import Request

from kvtwist.auth import Authorizer, principal_of
from kvtwist.errors import InvalidInput, KeyNotFound
from kvtwist.model import Put
from kvtwist.operations import read, stage_deletes, stage_increment, stage_pairs, stage_put
from kvtwist.strictjson import decode_key, parse
from kvtwist.web.resource import Response, json_response, read_body
from kvtwist.web.seed import pairs_from, set_outcome
from kvtwist.web.v1.base import (
    V1Context,
    V1Resource,
    entry_headers,
    owner_of,
    put_from,
)
from kvtwist.web.v1.conditional import write_checks
from kvtwist.web.v1.kv import rest_of_path


def txn_path(txn_id: str) -> bytes:
    """The URL path of a transaction."""
    return b"/v1/txn/" + txn_id.encode("ascii")


class TransactionCollection(V1Resource):
    """C{/v1/txn}: open transactions; each child is one."""

    route = "/v1/txn"

    def getChild(self, path: bytes, request: Request) -> Resource:
        if not path:
            return super().getChild(path, request)
        return TransactionResource(self.context, path.decode("utf-8", "replace"))

    def render_POST(self, request: Request) -> int:
        return self.respond(request, lambda request: Deferred.fromCoroutine(self._begin(request)))

    async def _begin(self, request: Request) -> Response:
        txn = await self.context.transactions.begin(owner_of(request))
        response = json_response(
            201, {"id": txn.id, "expires_in": self.context.transactions.timeout}
        )
        response.headers[b"location"] = txn_path(txn.id)
        return response


class TransactionPart(V1Resource):
    """A resource inside one transaction; finds it (or 404s) per request."""

    def __init__(self, context: V1Context, txn_id: str) -> None:
        super().__init__(context)
        self.txn_id = txn_id

    def transaction(self, request: Request) -> Deferred:
        """A Deferred firing with the open transaction, if the requester owns it."""
        return self.context.transactions.find(self.txn_id, owner_of(request))


class TransactionResource(TransactionPart):
    """C{/v1/txn/{id}}: describe (GET) or abort (DELETE)."""

    route = "/v1/txn/{id}"

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"kv":
            return TransactionKeys(self.context, self.txn_id)
        if path == b"set":
            return TransactionSet(self.context, self.txn_id)
        if path == b"commit":
            return TransactionCommit(self.context, self.txn_id)
        if path == b"incr":
            return TransactionIncr(self.context, self.txn_id)
        return super().getChild(path, request)

    def render_GET(self, request: Request) -> int:
        return self.respond(request, lambda request: Deferred.fromCoroutine(self._describe(request)))

    async def _describe(self, request: Request) -> Response:
        txn = await self.transaction(request)
        view = await txn.view()
        ops = []
        for op in view.ops():
            if isinstance(op, Put):
                ops.append({"op": "put", "key": op.key, "content_type": op.content_type,
                            "size": len(op.value)})
            else:
                ops.append({"op": "delete", "key": op.key})
        return json_response(
            200,
            {
                "id": txn.id,
                "ops": ops,
                "observed": dict(view.observed),
                "preconditions": [
                    {"key": c.key, "check": c.kind, "revision": c.revision, "header": c.tag}
                    for c in view.preconditions
                ],
                "expires_in": self.context.transactions.timeout,
            },
        )

    def render_DELETE(self, request: Request) -> int:
        return self.respond(request, lambda request: Deferred.fromCoroutine(self._abort(request)))

    async def _abort(self, request: Request) -> Response:
        await self.transaction(request)
        await self.context.transactions.finish(self.txn_id)
        return Response(204, content_type=None)


class TransactionKeys(TransactionPart):
    """C{/v1/txn/{id}/kv}: each child path is a key."""

    route = "/v1/txn/{id}/kv"

    def getChild(self, path: bytes, request: Request) -> Resource:
        if not path and not request.postpath:
            return super().getChild(path, request)
        return TransactionKey(self.context, self.txn_id, rest_of_path(path, request))


class TransactionKey(TransactionPart):
    """C{/v1/txn/{id}/kv/{key}}: read through, stage a write or a delete."""

    route = "/v1/txn/{id}/kv/{key}"
    parameters = {"PUT": ("ttl", "lease")}

    def __init__(self, context: V1Context, txn_id: str, raw_key: bytes) -> None:
        super().__init__(context, txn_id)
        self._raw_key = raw_key

    def render_GET(self, request: Request) -> int:
        return self.respond(request, lambda request: Deferred.fromCoroutine(self._get(request)))

    async def _get(self, request: Request) -> Response:
        txn = await self.transaction(request)
        key = decode_key(self._raw_key)
        Authorizer.require_read(principal_of(request), [key])
        found = await read(self.context.store, txn, key)
        if found is None:
            raise KeyNotFound([key])
        if isinstance(found, Put):
            return Response(
                200, found.value, found.content_type.encode("utf-8"), {b"kv-staged": b"true"}
            )
        return Response(200, found.value, found.content_type.encode("utf-8"), entry_headers(found))

    def render_PUT(self, request: Request) -> int:
        return self.respond(request, lambda request: Deferred.fromCoroutine(self._put(request)))

    async def _put(self, request: Request) -> Response:
        txn = await self.transaction(request)
        key = decode_key(self._raw_key)
        Authorizer.require_write(principal_of(request), [key])
        put = put_from(request, key, read_body(request), self.context.clock, self.context.store)
        checks = write_checks(request, key)
        previous, view = await stage_put(self.context.store, txn, put, checks)
        return json_response(
            200, {"key": key, "staged": "put", "committed": previous is not None,
                  "ops": len(view)}
        )

    def render_DELETE(self, request: Request) -> int:
        return self.respond(request, lambda request: Deferred.fromCoroutine(self._delete(request)))

    async def _delete(self, request: Request) -> Response:
        txn = await self.transaction(request)
        key = decode_key(self._raw_key)
        Authorizer.require_write(principal_of(request), [key])
        checks = write_checks(request, key)
        view = await stage_deletes(self.context.store, txn, [key], self.context.limits, checks)
        return json_response(200, {"key": key, "staged": "delete", "ops": len(view)})


class TransactionSet(TransactionPart):
    """C{/v1/txn/{id}/set}: stage a JSON object of pairs (the seed's shape)."""

    route = "/v1/txn/{id}/set"

    def render_POST(self, request: Request) -> int:
        return self.respond(request, lambda request: Deferred.fromCoroutine(self._set(request)))

    async def _set(self, request: Request) -> Response:
        txn = await self.transaction(request)
        pairs = pairs_from(parse(read_body(request)))
        Authorizer.require_write(principal_of(request), list(pairs))
        return set_outcome(await stage_pairs(self.context.store, txn, pairs, self.context.limits))


class TransactionIncr(TransactionPart):
    """
    C{/v1/txn/{id}/incr}: C{{"key": K, "by": N}} (C{by} defaults to 1)
    reads the counter through the transaction and stages its new value.
    """

    route = "/v1/txn/{id}/incr"

    def render_POST(self, request: Request) -> int:
        return self.respond(request, lambda request: Deferred.fromCoroutine(self._incr(request)))

    async def _incr(self, request: Request) -> Response:
        txn = await self.transaction(request)
        document = parse(read_body(request))
        if not isinstance(document, dict) or set(document) - {"key", "by"} or "key" not in document:
            raise InvalidInput("bad-incr", 'expected {"key": K, "by": N}')
        key, by = document["key"], document.get("by", 1)
        if not isinstance(key, str) or type(by) is not int:
            raise InvalidInput("bad-incr", "key must be a string and by an integer")
        Authorizer.require_write(principal_of(request), [key])
        Authorizer.require_read(principal_of(request), [key])
        value, view = await stage_increment(self.context.store, txn, key, by)
        return json_response(200, {"key": key, "value": value, "staged": "put", "ops": len(view)})


class TransactionCommit(TransactionPart):
    """C{/v1/txn/{id}/commit}: all or nothing."""

    route = "/v1/txn/{id}/commit"

    def render_POST(self, request: Request) -> int:
        return self.respond(request, lambda request: Deferred.fromCoroutine(self._commit(request)))

    async def _commit(self, request: Request) -> Response:
        txn = await self.transaction(request)
        # The manager ends it once committed or conflicted (a 503 leaves it
        # open to retry).
        result = await self.context.transactions.commit_and_end(txn)
        return json_response(200, {"revision": result.revision, "ops": len(result.changes)})
