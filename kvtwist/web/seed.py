# -*- test-case-name: tests.unit.test_web_seed -*-
"""
The seed service's routes, kept exactly: C{GET /{key}}, C{DELETE /{key}},
C{POST /set}, C{DELETE /set}, C{POST /commit}. Any other path or method is
a 404 (the seed's rule; the v1 tree answers 405 instead).

Values here are JSON. C{{key}} is one percent-decoded path segment. The
pending queue is the shared, non-isolated L{ITransaction} every seed client
stages into and commits (see L{kvtwist.transactions}).
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet.defer import Deferred
from twisted.web.server import NOT_DONE_YET, Request

from kvtwist.auth import Authorizer, WriteRights, principal_of
from kvtwist.errors import InvalidInput, KeyNotFound
from kvtwist.interfaces import IKeyValueStore, ITransaction
from kvtwist.limits import Limits
from kvtwist.operations import stage_deletes, stage_pairs
from kvtwist.strictjson import decode_key, parse
from kvtwist.model import Entry
from kvtwist.web.encoded import encode_seed, peek_encoded, seed_response, write_entry
from kvtwist.web.resource import KVResource, Response, json_response, read_body


def keys_to_delete(document: Any) -> List[str]:
    """
    The keys named by a C{DELETE /set} body: a string, a list of strings, or
    an object whose keys are taken.

    @raise InvalidInput: for any other shape.
    """
    if isinstance(document, str):
        return [document]
    if isinstance(document, dict):
        return list(document)
    if isinstance(document, list):
        if not all(isinstance(key, str) for key in document):
            raise InvalidInput("bad-keys", "every key in the list must be a string")
        return document
    raise InvalidInput("bad-keys", 'expected "key", ["key", ...] or {"key": ...}')


def pairs_from(document: Any) -> dict:
    """
    The C{{key: value}} object of a C{/set} body.

    @raise InvalidInput: if the body is not a JSON object.
    """
    if not isinstance(document, dict):
        raise InvalidInput("bad-pairs", 'expected a JSON object {"key": value, ...}')
    return document


def set_outcome(result: dict) -> Response:
    """201 when every key staged is new to the committed store, else 200."""
    created = bool(result) and all(v == "created" for v in result.values())
    return json_response(201 if created else 200, result)


class SeedContext:
    """What every seed route needs: the store, the shared queue, the limits."""

    def __init__(self, store: IKeyValueStore, queue: ITransaction, limits: Limits):
        self.store = store
        self.queue = queue
        self.limits = limits

    def delete(self, request: Request, keys: List[str]) -> Deferred:
        """Stage deletes in the shared queue; 200 with the outcome."""
        Authorizer.require_write(principal_of(request), keys)
        d = Deferred.fromCoroutine(stage_deletes(self.store, self.queue, keys, self.limits))
        return d.addCallback(lambda _: json_response(200, {key: "deleted" for key in keys}))


class SeedKey(KVResource):
    """C{/{key}}: read a committed value, or stage its delete."""

    route = "/{key}"

    def __init__(self, context: SeedContext, raw_key: bytes) -> None:
        super().__init__()
        self._context = context
        self._raw_key = raw_key

    def render_GET(self, request: Request) -> int:
        # The hot path: a cache hit is answered at once, with no Deferred,
        # its headers encoded once while the entry stays cached.
        encoded = peek_encoded(self._context.store, self._raw_key, request, encode_seed)
        if encoded is not None:
            write_entry(request, encoded)
            return NOT_DONE_YET
        return self.respond(request, lambda request: Deferred.fromCoroutine(self._read(request)))

    @staticmethod
    def _found(entry: Entry) -> Response:
        return seed_response(entry)

    async def _read(self, request: Request) -> Response:
        key = decode_key(self._raw_key)
        Authorizer.require_read(principal_of(request), [key])
        entry = await self._context.store.get(key)
        if entry is None:
            raise KeyNotFound([key])
        return self._found(entry)

    def render_DELETE(self, request: Request) -> int:
        return self.respond(
            request, lambda request: self._context.delete(request, [decode_key(self._raw_key)])
        )


class SeedSet(KVResource):
    """C{/set}: stage writes (POST) or deletes (DELETE) in the shared queue."""

    route = "/set"

    def __init__(self, context: SeedContext) -> None:
        super().__init__()
        self._context = context

    def render_POST(self, request: Request) -> int:
        return self.respond(request, self._set)

    def _set(self, request: Request) -> Deferred:
        pairs = pairs_from(parse(read_body(request)))
        Authorizer.require_write(principal_of(request), list(pairs))
        context = self._context
        d = Deferred.fromCoroutine(
            stage_pairs(context.store, context.queue, pairs, context.limits)
        )
        return d.addCallback(set_outcome)

    def render_DELETE(self, request: Request) -> int:
        return self.respond(
            request,
            lambda request: self._context.delete(
                request, keys_to_delete(parse(read_body(request)))
            ),
        )


class SeedCommit(KVResource):
    """C{/commit}: apply the shared queue atomically and durably."""

    route = "/commit"

    def __init__(self, context: SeedContext) -> None:
        super().__init__()
        self._context = context

    def render_POST(self, request: Request) -> int:
        return self.respond(request, self._commit)

    def _commit(self, request: Request) -> Deferred:
        # The shared queue holds everyone's staged writes: committing them
        # publishes them, so the committer must be allowed to write them all.
        principal = principal_of(request)
        # No vet for a token that writes every key (and with auth off): a
        # vet that cannot refuse would only cost a --workers commit a hold.
        vet = None
        if not principal.writes_everything:
            vet = WriteRights.of(principal)
        d = self._context.queue.commit(vet=vet)
        return d.addCallback(lambda result: Response(204, content_type=None))
