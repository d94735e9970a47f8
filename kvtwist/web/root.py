"""
The Resource tree: L{make_root} builds the whole of kvcache's URL space.

C{/set} and C{/commit} are static children; every other first segment is a
key (L{kvtwist.web.seed.SeedKey}).
"""

from __future__ import annotations

from typing import Optional

from twisted.web.resource import Resource
from twisted.web.server import Request

from kvtwist.interfaces import IKeyValueStore
from kvtwist.limits import Limits
from kvtwist.queue import PendingQueue
from kvtwist.web.resource import NOT_FOUND, KVResource
from kvtwist.web.seed import SeedCommit, SeedKey, SeedSet


class Root(KVResource):
    """C{/}: the seed's operations, then keys."""

    def __init__(self, store: IKeyValueStore, queue: PendingQueue) -> None:
        super().__init__()
        self._store = store
        self._queue = queue

    def getChild(self, path: bytes, request: Request) -> Resource:
        if not path:
            return NOT_FOUND
        return SeedKey(self._store, self._queue, path)

    def render(self, request: Request) -> int:
        return NOT_FOUND.render(request)


def make_root(store: IKeyValueStore, limits: Optional[Limits] = None) -> Resource:
    """
    The kvcache Resource tree over C{store}.

    @param limits: the limits in force (defaults: L{Limits}()).
    """
    limits = limits if limits is not None else Limits()
    queue = PendingQueue(store, limits)
    root = Root(store, queue)
    root.putChild(b"set", SeedSet(queue))
    root.putChild(b"commit", SeedCommit(queue))
    return root
