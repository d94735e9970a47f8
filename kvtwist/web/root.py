# -*- test-case-name: tests.unit.test_ops -*-
"""
The Resource tree: L{make_root} builds the whole of kvcache's URL space.

    /set, /commit            the seed's operations (static children)
    /{key}                   the seed's keys: every other single segment
    /v1/kv/, /v1/kv/{key}    keys with revisions and CAS, listing
    /v1/txn, /v1/txn/{id}/…  multi-request transactions
    /v1/batch                one-request transactions
    /v1/watch                Server-Sent Events of changes
    /v1/limits               every limit in force
    /v1/healthz, /v1/readyz, /v1/metrics   the operations endpoints
    /ui/                     the admin page (when mounted)

The root's single segments belong to the seed's keys, as in the service
kvcache replaces: C{GET /metrics}, C{/healthz}, C{/ui} or C{/v1} read the
keys of those names. Every other route is a path of two or more segments,
so it never shadows a key.
"""

from __future__ import annotations

import random as _random
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import Request

from kvtwist.auth import ANYONE, Authorizer
from kvtwist.events import ChangeHub
from kvtwist.errors import Unauthorized
from kvtwist.interfaces import IHistoricalStore, IKeyValueStore
from kvtwist.limits import Limits, WatcherCount
from kvtwist.interfaces import ITransactionManager
from kvtwist.transactions import TransactionManager
from kvtwist.web.resource import NOT_FOUND, KVResource, Refused, Response, json_response
from kvtwist.web.browsers import BrowserGuard, BrowserPolicy
from kvtwist.web.seed import SeedCommit, SeedContext, SeedKey, SeedSet
from kvtwist.web.v1.base import V1Context, V1Resource
from kvtwist.web.v1.batch import Batch
from kvtwist.web.v1.compact import Compact, history_state
from kvtwist.web.v1.snapshot import Snapshot
from kvtwist.web.v1.kv import KeyCollection
from kvtwist.web.v1.lease import LeaseCollection
from kvtwist.web.v1.txn import TransactionCollection
from kvtwist.web.v1.watch import Watch


class Root(KVResource):
    """C{/}: the seed's operations and C{v1}, then keys."""

    route = "/"

    def __init__(self, context: SeedContext) -> None:
        super().__init__()
        self._context = context

    #: The seed's own two routes, the only single segments that are not keys.
    SEED_ROUTES = (b"set", b"commit")

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:
        # Resource's own with getChild folded in: one call per request.
        if request.postpath:
            # Two or more segments: a route (/v1/..., /ui/), never a key.
            return self.children.get(path, NOT_FOUND)
        if path in self.SEED_ROUTES:
            return self.children[path]
        if not path:
            return NOT_FOUND
        return SeedKey(self._context, path)

    def render(self, request: Request) -> int:
        return NOT_FOUND.render(request)


class LimitsResource(V1Resource):
    """C{/v1/limits}: every limit in force."""

    route = "/v1/limits"

    def render_GET(self, request: Request) -> int:
        return self.respond(request, self._limits)

    def _limits(self, request: Request) -> Response:
        limits = self.context.limits.as_dict()
        store = self.context.store
        if IHistoricalStore.providedBy(store):
            limits["history"] = history_state(store)
        else:
            # Compaction settings mean nothing to a store without history.
            for name in ("history_retention", "compact_batch", "compact_interval"):
                limits.pop(name, None)
        return json_response(200, limits)


def make_root(
    store: IKeyValueStore,
    limits: Optional[Limits] = None,
    clock: Optional[IReactorTime] = None,
    transactions: Optional[ITransactionManager] = None,
    hub: Optional[ChangeHub] = None,
    random: Optional[Callable[[], float]] = None,
    authorizer: Optional[Authorizer] = None,
    watchers: Optional[WatcherCount] = None,
    extra_children: Optional[Dict[bytes, Resource]] = None,
    ops: Optional[Dict[bytes, Resource]] = None,
    browsers: Optional[BrowserPolicy] = None,
) -> Resource:
    """
    The kvcache Resource tree over C{store}.

    @param limits: the limits in force (defaults: L{Limits}()).
    @param clock: times transactions and TTLs (default: the store's clock).
    @param transactions: the open transactions and the seed's queue
        (default: a new in-memory manager).
    @param hub: the change feed (default: a new one listening to C{store}).
    @param random: the jitter source of long-polls (default: random.random).
    @param authorizer: who may do what (default: auth off).
    @param watchers: the long-poll and stream slots (default: a new count
        of C{limits.max_watchers}).
    @param extra_children: more top-level routes (the admin page at
        C{ui}), mounted as given: reached only by paths of two or more
        segments (C{/ui/}), as single segments are the seed's keys.
    @param ops: the operations endpoints (L{kvtwist.web.ops.ops_children}),
        mounted under C{/v1}.
    @param browsers: the C{Host} and C{Origin} rules in force, checked
        before anything else (default: none, for in-memory tests of the
        API; the server always passes one).
    """
    limits = limits if limits is not None else Limits()
    clock = clock if clock is not None else store.clock
    if transactions is None:
        transactions = TransactionManager(clock, limits, store)
    seed = SeedContext(store, transactions.queue, limits)
    root = Root(seed)
    root.putChild(b"set", SeedSet(seed))
    root.putChild(b"commit", SeedCommit(seed))

    if hub is None:
        hub = ChangeHub(store, limits.watch_history, limits.watch_history_bytes)
    context = V1Context(
        store, transactions, limits, clock, hub, random or _random.random, watchers
    )
    v1 = V1Resource(context)
    v1.putChild(b"kv", KeyCollection(context))
    v1.putChild(b"txn", TransactionCollection(context))
    v1.putChild(b"batch", Batch(context))
    v1.putChild(b"lease", LeaseCollection(context))
    v1.putChild(b"limits", LimitsResource(context))
    v1.putChild(b"compact", Compact(context))
    v1.putChild(b"snapshot", Snapshot(context))
    v1.putChild(b"watch", Watch(context))
    for name, child in (ops or {}).items():
        v1.putChild(name, child)
    root.putChild(b"v1", v1)
    for name, child in (extra_children or {}).items():
        root.putChild(name, child)
    top: Resource = Authenticating(root, authorizer or Authorizer(), open_paths=API_OPEN_PATHS)
    if browsers is not None:
        top = BrowserGuard(top, browsers)
    return top


#: Paths of the API's listener served without a token (while mounted): the
#: liveness probe, and the admin page's files (C{/ui/...}; C{/ui} alone is
#: the key C{ui}).
API_OPEN_PATHS = ((b"v1", b"healthz"), (b"ui", None))


class Authenticating(Resource):
    """
    The top of the tree: authenticates every request (when auth is on)
    before any route sees it, recording the token as
    C{request.kvtwist_principal}. The C{open_paths} stay open while they
    are mounted: the liveness probe, and the admin page for browsers, which
    cannot send a bearer token when they load a page (the page holds no
    data: every API call it makes carries the token and is checked as
    usual). An open path not mounted (the admin page off, say) names keys,
    and keys need a token like any other.

    @param open_paths: paths served without a token, as tuples of
        segments; a last segment of L{None} stands for any one or more
        segments.
    """

    def __init__(
        self, root: Resource, authorizer: Authorizer, open_paths: Sequence[Tuple] = ()
    ) -> None:
        super().__init__()
        self.root = root
        self.authorizer = authorizer
        self._open_paths = tuple(open_paths)
        # Tokens are fixed when the tree is built: with none, every request
        # is ANYONE's and costs no header lookup.
        self._open = not authorizer.enabled

    def _authenticated(self, request: Request) -> Optional[Resource]:
        if self._open:
            request.kvtwist_principal = ANYONE  # type: ignore[attr-defined]
            return None
        try:
            request.kvtwist_principal = self.authorizer.authenticate(  # type: ignore[attr-defined]
                request.getHeader(b"authorization")
            )
        except Unauthorized as error:
            return Refused(error, "(unauthenticated)")
        return None

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:
        if self._open:
            request.kvtwist_principal = ANYONE  # type: ignore[attr-defined]
            return self.root.getChildWithDefault(path, request)
        # postpath is None only before traversal starts.
        if self._is_open(path, request.postpath or []):
            return self.root.getChildWithDefault(path, request)
        refused = self._authenticated(request)
        if refused is not None:
            return refused
        return self.root.getChildWithDefault(path, request)

    def _is_open(self, path: bytes, rest: List[bytes]) -> bool:
        segments = [path] + rest
        for open_path in self._open_paths:
            fixed = [segment for segment in open_path if segment is not None]
            if open_path[-1] is None:
                matches = segments[: len(fixed)] == fixed and len(segments) > len(fixed)
            else:
                matches = segments == fixed
            if matches and self._mounted(fixed):
                return True
        return False

    def _mounted(self, segments: List[bytes]) -> bool:
        """Whether the static route C{segments} is mounted in the tree."""
        node = self.root
        for segment in segments:
            node = node.children.get(segment)
            if node is None:
                return False
        return True

    def render(self, request: Request) -> int:
        refused = self._authenticated(request)
        return (refused or self.root).render(request)

