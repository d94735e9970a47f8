# -*- test-case-name: tests.unit.test_web_history -*-
"""
C{POST /v1/compact {"revision": N}}: compact the store's history up to
revision N now (the operations permission), in the same bounded steps as
the background compactor, so commits go on between the steps.
"""

from __future__ import annotations

from typing import Any, Dict

from twisted.internet.defer import Deferred
from twisted.web.server import Request

from kvtwist.auth import Authorizer, principal_of
from kvtwist.compactor import compact_until
from kvtwist.errors import InvalidInput
from kvtwist.interfaces import IHistoricalStore
from kvtwist.strictjson import parse
from kvtwist.web.resource import Response, json_response, read_body
from kvtwist.web.v1.base import V1Resource
from kvtwist.web.v1.history import historical


def history_state(store: IHistoricalStore) -> Dict[str, Any]:
    """What the history holds now: for C{/v1/limits} and compaction answers."""
    return {
        "revision": store.revision,
        "compact_revision": store.compact_revision,
        "records": store.history_size,
    }


def requested_revision(document: Any) -> int:
    """
    The revision of a C{{"revision": N}} body.

    @raise InvalidInput: for any other shape.
    """
    revision = document.get("revision") if isinstance(document, dict) else None
    if (
        not isinstance(document, dict)
        or set(document) != {"revision"}
        or type(revision) is not int
        or revision < 0
    ):
        raise InvalidInput(
            "bad-compact", 'the body must be {"revision": N}, N a non-negative integer'
        )
    return revision


class Compact(V1Resource):
    """C{/v1/compact}: compact the history up to a revision."""

    route = "/v1/compact"

    def render_POST(self, request: Request) -> int:
        return self.respond(request, lambda request: Deferred.fromCoroutine(self._compact(request)))

    async def _compact(self, request: Request) -> Response:
        Authorizer.require_ops(principal_of(request))
        revision = requested_revision(parse(read_body(request)))
        store = historical(self.context.store)
        await compact_until(store, revision, self.context.limits.compact_batch)
        return json_response(200, history_state(store))
