"""
The operations endpoints, mounted at the top of the tree by
L{kvtwist.tap} (through C{make_root(extra_children=...)}):

    /healthz   200 while the process is alive; no token needed (probes)
    /readyz    200 when the store is open and a small durable write
               succeeds, else 503 problem+json with the reason; ops token
    /metrics   Prometheus text exposition; ops token

Authentication happens above them (L{kvtwist.web.root.Authenticating});
here only the C{ops} permission of the authenticated token is checked.
Other methods than GET and HEAD answer 405 with C{Allow}.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.defer import Deferred, TimeoutError, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request

from kvtwist.auth import Authorizer, principal_of
from kvtwist.errors import KVError
from kvtwist.interfaces import IKeyValueStore
from kvtwist.metrics import CONTENT_TYPE, Metrics
from kvtwist.web.resource import Answers405, Response, json_response, problem_response

log = Logger()

#: Seconds /readyz waits for the store's round trip: a store thread stuck
#: behind a huge commit for longer is not ready for traffic.
READY_TIMEOUT = 5.0


class OpsResource(Answers405):
    """Base of the operations endpoints: GET and HEAD only, 405 otherwise."""

    def decorate(self, response: Response) -> Response:
        # Probes and scrapers must never see a cached answer.
        response.headers[b"cache-control"] = b"no-store"
        return response


class Healthz(OpsResource):
    """C{/healthz}: the process is alive and its reactor answers."""

    route = "/healthz"

    def render_GET(self, request: Request) -> int:
        return self.respond(request, lambda request: json_response(200, {"status": "alive"}))


class Readyz(OpsResource):
    """
    C{/readyz}: ready for traffic when the store is open and its write
    probe (L{IKeyValueStore.ping}: a small durable write, which fails as a
    commit would) succeeds within C{timeout} seconds.

    Each probe is a write of its own, so readiness follows the store's
    latest write: a full or failing disk is 503 with the store's error
    (code C{insufficient-storage} for a full disk) until a write succeeds
    again, and the probe itself is that retry, so readiness comes back once
    space returns even if no client writes.
    """

    route = "/readyz"

    def __init__(
        self, store: IKeyValueStore, clock: IReactorTime, timeout: float = READY_TIMEOUT
    ) -> None:
        super().__init__()
        self._store = store
        self._clock = clock
        self._timeout = timeout

    def render_GET(self, request: Request) -> int:
        return self.respond(request, self._check)

    def _check(self, request: Request) -> Deferred:
        Authorizer.require_ops(principal_of(request))
        d = self._store.ping()
        d.addTimeout(self._timeout, self._clock)
        d.addCallbacks(self._ready, self._not_ready)
        return d

    def _ready(self, result: object) -> Response:
        return json_response(200, {"status": "ready", "revision": self._store.revision})

    def _not_ready(self, reason: Failure) -> Response:
        code = "store-unavailable"
        if reason.check(TimeoutError):
            detail = "the store did not answer within %g seconds" % (self._timeout,)
        elif reason.check(KVError):
            # The store's own error, as the last commit got it (a full disk
            # is insufficient-storage), answered 503 as readiness is.
            code, detail = reason.value.code, reason.value.detail
        else:
            # A disk or SQLite error: its class and message say what is
            # wrong; never a traceback.
            detail = "the store failed its check: %s: %s" % (
                reason.type.__name__,
                reason.getErrorMessage(),
            )
        log.warn("not ready: {detail}", detail=detail)
        return problem_response(503, code, detail)


class MetricsResource(OpsResource):
    """C{/metrics}: the Prometheus text exposition of L{Metrics}."""

    route = "/metrics"

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: Request) -> int:
        return self.respond(request, self._expose)

    def _expose(self, request: Request) -> Deferred:
        Authorizer.require_ops(principal_of(request))
        # A worker's exposition comes from its owner (--workers N): a Deferred.
        d = maybeDeferred(self._metrics.exposition)
        return d.addCallback(lambda text: Response(200, text, CONTENT_TYPE))


def ops_children(
    store: IKeyValueStore,
    metrics: Optional[Metrics],
    clock: IReactorTime,
    ready_timeout: float = READY_TIMEOUT,
) -> "dict[bytes, Resource]":
    """The C{extra_children} for L{kvtwist.web.root.make_root}."""
    children: "dict[bytes, Resource]" = {
        b"healthz": Healthz(),
        b"readyz": Readyz(store, clock, ready_timeout),
    }
    if metrics is not None:
        children[b"metrics"] = MetricsResource(metrics)
    return children
