# -*- test-case-name: tests.unit.test_ops -*-
"""
The operations endpoints, mounted under C{/v1} by L{kvtwist.tap} (through
C{make_root(ops=...)}):

    /v1/healthz   200 while the process is alive; no token needed (probes)
    /v1/readyz    200 when the store is open and a small durable write
                  succeeds, else 503 problem+json with the reason; ops token
    /v1/metrics   Prometheus text exposition; ops token

The seed's root belongs to the seed's keys (C{GET /metrics} reads the key
C{metrics}), so these never sit at the root of the API's listener. Probes
and scrapers that expect C{/healthz} and C{/metrics} get them from the
operations listener (C{--ops-listen}), whose tree L{ops_root} builds: the
same three resources at root paths, and nothing else.

Authentication happens above them (L{kvtwist.web.root.Authenticating});
here only the C{ops} permission of the authenticated token is checked.
Other methods than GET and HEAD answer 405 with C{Allow}.
"""

from __future__ import annotations

from typing import List, Optional, Protocol, Union

from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request

from kvtwist.auth import Authorizer, principal_of
from kvtwist.errors import KVError
from kvtwist.metrics import CONTENT_TYPE
from kvtwist.web.browsers import BrowserPolicy
from kvtwist.web.resource import Answers405, KVResource, Response, json_response, problem_response

log = Logger()

#: Seconds /readyz waits for the store's round trip: a store thread stuck
#: behind a huge commit for longer is not ready for traffic.
READY_TIMEOUT = 5.0


class Probed(Protocol):
    """
    What C{/readyz} reads of a store: its write probe and revision (an
    L{kvtwist.interfaces.IKeyValueStore}, or with C{--workers} the owner's
    probes, ready when every worker is).
    """

    @property
    def revision(self) -> int:
        """The revision the answer reports."""

    def ping(self) -> Deferred:
        """The write probe (L{kvtwist.interfaces.IKeyValueStore.ping})."""


class Exposing(Protocol):
    """
    What C{/metrics} exposes: a L{kvtwist.metrics.Metrics}, or with
    C{--workers} a view of every process's (then a Deferred).
    """

    def exposition(self) -> Union[bytes, Deferred[bytes]]:
        """The Prometheus text exposition."""


class OpsResource(Answers405):
    """Base of the operations endpoints: GET and HEAD only, 405 otherwise."""

    def decorate(self, response: Response) -> Response:
        # Probes and scrapers must never see a cached answer.
        response.headers[b"cache-control"] = b"no-store"
        return response


class Healthz(OpsResource):
    """C{/v1/healthz}: the process is alive and its reactor answers."""

    route = "/v1/healthz"

    def render_GET(self, request: Request) -> int:
        return self.respond(request, lambda request: json_response(200, {"status": "alive"}))


class Readyz(OpsResource):
    """
    C{/v1/readyz}: ready for traffic when the store is open and its write
    probe (L{IKeyValueStore.ping}: a small durable write, which fails as a
    commit would) succeeds within C{timeout} seconds.

    Each probe is a write of its own, so readiness follows the store's
    latest write: a full or failing disk is 503 with the store's error
    (code C{insufficient-storage} for a full disk) until a write succeeds
    again, and the probe itself is that retry, so readiness comes back once
    space returns even if no client writes.

    Probes that arrive while one is in flight share its outcome: however
    often readiness is asked, the store makes one probe write at a time.
    """

    route = "/v1/readyz"

    def __init__(
        self, store: Probed, clock: IReactorTime, timeout: float = READY_TIMEOUT
    ) -> None:
        super().__init__()
        self._store = store
        self._clock = clock
        self._timeout = timeout
        self._waiting: Optional[List[Deferred]] = None

    def render_GET(self, request: Request) -> int:
        return self.respond(request, self._check)

    def _check(self, request: Request) -> Deferred:
        Authorizer.require_ops(principal_of(request))
        answer: Deferred = Deferred()
        if self._waiting is not None:
            self._waiting.append(answer)
            return answer
        self._waiting = [answer]
        d = self._store.ping()
        d.addTimeout(self._timeout, self._clock)
        d.addCallbacks(self._ready, self._not_ready)
        d.addCallback(self._answer_waiting)
        return answer

    def _answer_waiting(self, response: Response) -> None:
        waiting, self._waiting = self._waiting or [], None
        for answer in waiting:
            answer.callback(response)

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
    """C{/v1/metrics}: the Prometheus text exposition of L{Metrics}."""

    route = "/v1/metrics"

    def __init__(self, metrics: Exposing) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: Request) -> int:
        return self.respond(request, self._expose)

    def _expose(self, request: Request) -> Deferred:
        Authorizer.require_ops(principal_of(request))
        # A worker's exposition comes from its owner (--workers N): a Deferred.
        text = self._metrics.exposition()
        d: Deferred[bytes] = text if isinstance(text, Deferred) else succeed(text)
        return d.addCallback(lambda text: Response(200, text, CONTENT_TYPE))


def ops_children(
    store: Probed,
    metrics: Optional[Exposing],
    clock: IReactorTime,
    ready_timeout: float = READY_TIMEOUT,
    mount: str = "/v1",
) -> "dict[bytes, Resource]":
    """
    The operations endpoints by name: the C{ops} of
    L{kvtwist.web.root.make_root} (mounted under C{/v1}), or the children
    of L{ops_root}'s tree (C{mount=""}, at root paths).

    @param mount: where they are mounted, for their route labels.
    """
    children: "dict[bytes, OpsResource]" = {
        b"healthz": Healthz(),
        b"readyz": Readyz(store, clock, ready_timeout),
    }
    if metrics is not None:
        children[b"metrics"] = MetricsResource(metrics)
    for name, child in children.items():
        child.route = "%s/%s" % (mount, name.decode("ascii"))
    return dict(children)


def ops_root(
    store: Probed,
    metrics: Optional[Exposing],
    clock: IReactorTime,
    authorizer: Authorizer,
    browsers: Optional[BrowserPolicy] = None,
) -> Resource:
    """
    The tree of the operations listener (C{--ops-listen}): C{/healthz}
    (open, for probes), C{/readyz} and C{/metrics} (the ops token when auth
    is on), and a problem+json 404 for anything else; behind the same
    C{Host} and C{Origin} checks as the API (C{browsers}).
    """
    from kvtwist.web.browsers import BrowserGuard
    from kvtwist.web.root import Authenticating

    top = OpsTop()
    for name, child in ops_children(store, metrics, clock, mount="").items():
        top.putChild(name, child)
    guarded: Resource = Authenticating(top, authorizer, open_paths=((b"healthz",),))
    return BrowserGuard(guarded, browsers) if browsers is not None else guarded


class OpsTop(KVResource):
    """The root of the operations listener: only its named children exist."""

    route = "/(ops)"
