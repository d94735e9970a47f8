"""
The seed service's routes, kept exactly: C{GET /{key}}, C{DELETE /{key}},
C{POST /set}, C{DELETE /set}, C{POST /commit}. Any other path or method is
a 404 (the seed's rule; the v1 tree answers 405 instead).

Values here are JSON. C{{key}} is one percent-decoded path segment.
"""

from __future__ import annotations

import json
from typing import Any, List

from twisted.internet.defer import Deferred
from twisted.web.server import Request

from kvtwist.errors import InvalidInput, KeyNotFound
from kvtwist.interfaces import IKeyValueStore
from kvtwist.queue import PendingQueue
from kvtwist.strictjson import decode_key, parse
from kvtwist.web.resource import KVResource, Response


def json_response(status: int, document: Any) -> Response:
    """A JSON L{Response}."""
    return Response(status, json.dumps(document, ensure_ascii=False).encode("utf-8"))


def etag(mod_revision: int) -> bytes:
    """The ETag of a key: its mod_revision, quoted."""
    return b'"%d"' % (mod_revision,)


def read_body(request: Request) -> bytes:
    """The request body (already bounded by the site's body limit)."""
    request.content.seek(0)
    return request.content.read()


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
    raise InvalidInput(
        "bad-keys", 'expected "key", ["key", ...] or {"key": ...}'
    )


class SeedKey(KVResource):
    """C{/{key}}: read a committed value, or stage its delete."""

    def __init__(self, store: IKeyValueStore, queue: PendingQueue, raw_key: bytes):
        super().__init__()
        self._store = store
        self._queue = queue
        self._raw_key = raw_key

    def render_GET(self, request: Request) -> int:
        return self.respond(request, self._get)

    async def _read(self) -> Response:
        key = decode_key(self._raw_key)
        entry = await self._store.get(key)
        if entry is None:
            raise KeyNotFound([key])
        return Response(
            200,
            entry.value,
            entry.content_type.encode("utf-8"),
            {b"etag": etag(entry.mod_revision)},
        )

    def _get(self, request: Request) -> Deferred:
        return Deferred.fromCoroutine(self._read())

    def render_DELETE(self, request: Request) -> int:
        return self.respond(request, self._delete)

    def _delete(self, request: Request) -> Deferred:
        d = self._queue.stage_delete([decode_key(self._raw_key)])
        return d.addCallback(lambda result: json_response(200, result))


class SeedSet(KVResource):
    """C{/set}: stage writes (POST) or deletes (DELETE) in the shared queue."""

    def __init__(self, queue: PendingQueue) -> None:
        super().__init__()
        self._queue = queue

    def render_POST(self, request: Request) -> int:
        return self.respond(request, self._set)

    def _set(self, request: Request) -> Deferred:
        document = parse(read_body(request))
        if not isinstance(document, dict):
            raise InvalidInput("bad-pairs", 'expected a JSON object {"key": value, ...}')

        def answer(result: dict) -> Response:
            created = bool(result) and all(v == "created" for v in result.values())
            return json_response(201 if created else 200, result)

        return self._queue.stage_set(document).addCallback(answer)

    def render_DELETE(self, request: Request) -> int:
        return self.respond(request, self._delete)

    def _delete(self, request: Request) -> Deferred:
        keys = keys_to_delete(parse(read_body(request)))
        d = self._queue.stage_delete(keys)
        return d.addCallback(lambda result: json_response(200, result))


class SeedCommit(KVResource):
    """C{/commit}: apply the shared queue atomically and durably."""

    def __init__(self, queue: PendingQueue) -> None:
        super().__init__()
        self._queue = queue

    def render_POST(self, request: Request) -> int:
        return self.respond(request, self._commit)

    def _commit(self, request: Request) -> Deferred:
        return self._queue.commit().addCallback(
            lambda result: Response(204, content_type=None)
        )
