# -*- test-case-name: tests.unit.test_web_seed,tests.unit.test_web_v1 -*-
"""
The base of every kvtwist Resource, and the single responder that turns a
handler's outcome into bytes on the wire.

Handlers are C{render_<METHOD>} methods that return C{self.respond(request,
handler)}: the handler returns a L{Response} or a Deferred of one, or fails
with a L{kvtwist.errors.KVError}; the responder maps errors to problem+json
(L{kvtwist.web.problems}), logs anything unexpected as a 500 without
internals, and writes nothing to a client that has gone away.
"""

from __future__ import annotations

import json
from urllib.parse import unquote_to_bytes
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union, cast

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource, _IEncodingResource
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from kvtwist import wire
from kvtwist.auth import principal_of
from kvtwist.errors import InvalidInput, KVError
from kvtwist.interfaces import IReadCache
from kvtwist.model import Entry
from kvtwist.strictjson import MAX_KEY_BYTES
from kvtwist.web.compression import LargeBodyGzip
from kvtwist.web.http import KVRequest
from kvtwist.web.problems import (
    PROBLEM_CONTENT_TYPE,
    not_found_body,
    problem_body,
    problem_for,
)

log = Logger()

JSON_CONTENT_TYPE = b"application/json"


@dataclass
class Response:
    """
    What a handler answers: a status, a body and headers.

    @ivar limit_name: for a refusal under a configured limit, the limit's
        name (L{KVError.limit_name}); L{write_response} records it on the
        request for the rejected-requests metric.
    """

    status: int = 200
    body: bytes = b""
    content_type: Optional[bytes] = JSON_CONTENT_TYPE
    headers: Dict[bytes, bytes] = field(default_factory=dict)
    limit_name: Optional[str] = None


Handler = Callable[[Request], Union[Response, "Deferred[Response]"]]


def json_response(status: int, document: Any, **headers: bytes) -> Response:
    """A JSON L{Response}; keyword headers use C{_} for C{-}."""
    return Response(
        status,
        json.dumps(document, ensure_ascii=False).encode("utf-8"),
        JSON_CONTENT_TYPE,
        {name.replace("_", "-").encode("ascii"): value for name, value in headers.items()},
    )


def etag(mod_revision: int) -> bytes:
    """The ETag header value of a key (L{kvtwist.wire.etag}), as bytes."""
    return wire.etag(mod_revision).encode("ascii")


def read_body(request: IRequest) -> bytes:
    """The request body (already bounded by the site's body limit)."""
    # twisted.web sets content before any Resource renders the request.
    content = request.content
    assert content is not None
    content.seek(0)
    return content.read()


def write_response(request: Request, response: Response) -> None:
    """Write C{response} and finish C{request}, unless the client left."""
    if getattr(request, "_kvtwist_gone", False) or request.finished:
        return
    request.setResponseCode(response.status)
    if response.content_type is not None:
        request.setHeader(b"content-type", response.content_type)
    for name, value in response.headers.items():
        request.setHeader(name, value)
    if response.status not in (204, 304):
        request.setHeader(b"content-length", b"%d" % (len(response.body),))
    if response.limit_name is not None and isinstance(request, KVRequest):
        request.kvtwist_limit = response.limit_name
    if response.body:
        request.write(response.body)
    request.finish()


def problem_response(status: int, code: str, detail: str, **extra: object) -> Response:
    """A L{Response} carrying a problem+json body."""
    return Response(
        status, problem_body(status, code, detail, **extra), PROBLEM_CONTENT_TYPE
    )


def error_response(reason: Failure) -> Response:
    """The L{Response} for a failed handler: mapped if known, else a 500."""
    if reason.check(KVError):
        error = reason.value
        status, body = problem_for(error)
        response = Response(status, body, PROBLEM_CONTENT_TYPE, limit_name=error.limit_name)
        if status == 401:
            response.headers[b"www-authenticate"] = b'Bearer realm="kvtwist"'
        return response
    log.failure("unexpected error while answering a request", reason)
    return problem_response(
        500, "internal-error", "the server failed to answer; the error is logged"
    )


def readable_key(raw_key: bytes, request: Request) -> Optional[str]:
    """
    The key C{raw_key} names if it is a valid key the requester may read,
    else None: the check of the cached-read fast paths, which leave bad keys
    and refusals to the ordinary path to answer. What C{decode_key}
    accepts, checked more cheaply: strict UTF-8 (which has no lone
    surrogates) of 1 to C{MAX_KEY_BYTES} bytes.
    """
    if not 0 < len(raw_key) <= MAX_KEY_BYTES:
        return None
    try:
        key = raw_key.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return key if principal_of(request).may_read(key) else None


def peek_entry(store: Any, raw_key: bytes, request: Request) -> Optional[Entry]:
    """
    The live entry for C{raw_key} if the store's read cache (L{IReadCache})
    holds it and the requester may read it, without any Deferred; else None
    (then take the ordinary path, which also reports bad keys, absent keys
    and refusals).
    """
    if not IReadCache.providedBy(store):
        return None
    key = readable_key(raw_key, request)
    return store.peek(key)[1] if key is not None else None


def _mark_gone(reason: Failure, request: Request) -> None:
    request._kvtwist_gone = True  # type: ignore[attr-defined]


def query_names(request: Request) -> List[Tuple[bytes, bool]]:
    """
    Every parameter of C{request}'s query string, in order: its
    percent-decoded name and whether it came with a value (C{=}).
    C{request.args} leaves out a bare name (C{?recurse}), which must not
    pass unseen.
    """
    query = request.uri.partition(b"?")[2]
    names = []
    for part in query.split(b"&"):
        if part:
            name, equals, _ = part.partition(b"=")
            names.append((unquote_to_bytes(name.replace(b"+", b" ")), bool(equals)))
    return names


def unknown_parameter(request: Request, route: str, allowed: Tuple[str, ...]) -> Optional[InvalidInput]:
    """
    The 400 for the first query parameter of C{request} not in C{allowed},
    naming it and saying which parameters the route takes; None when every
    one is known. A parameter silently ignored would look like success (a
    Consul client's C{DELETE /v1/kv/app/?recurse} deleting nothing).
    """
    for raw, _ in query_names(request):
        name = raw.decode("utf-8", "replace")
        if name not in allowed:
            method = request.method.decode("ascii", "replace")
            takes = (
                "takes: " + ", ".join(allowed) if allowed else "takes no query parameters"
            )
            return InvalidInput(
                "unknown-parameter",
                "unknown query parameter %r: %s %s %s" % (name, method, route, takes),
                parameter=name,
                allowed=list(allowed),
            )
    return None


@implementer(_IEncodingResource)
class KVResource(Resource):
    """
    Base Resource: unknown children are a problem+json 404, a method
    without a C{render_<METHOD>} is answered by L{method_not_allowed}, a
    query parameter the method does not take is a 400 problem naming it
    (L{unknown_parameter}), and answers over 1 KiB are gzipped for clients
    that ask (L{kvtwist.web.compression}; twisted.web asks every resource
    it reaches for its encoder).

    @cvar route: the route template this resource serves, recorded on the
        request (C{kvtwist_route}) for metrics and logs.
    @cvar parameters: the query parameters each method takes, by method
        name (C{GET}'s also serve C{HEAD}); a method not listed takes none.
        L{None} for a resource that reads no parameter and lets any pass
        (the admin page's files, where browsers add cache busters).
    """

    route = "(unknown)"
    parameters: Optional[Mapping[str, Tuple[str, ...]]] = {}
    #: Whether answers may be gzipped (not for streams written as they go).
    compressible = True

    def getEncoder(self, request: Request) -> Optional[LargeBodyGzip]:
        """The content encoder of C{request}'s answer (twisted.web's hook)."""
        return LargeBodyGzip(request) if self.compressible else None

    def getChild(self, path: bytes, request: Request) -> Resource:
        return NOT_FOUND

    def render(self, request: Request) -> Union[bytes, int]:
        request.kvtwist_route = self.route  # type: ignore[attr-defined]
        method = request.method
        # HEAD is GET without the body (twisted.web drops it on write).
        if method == b"GET" or method == b"HEAD":
            handler = getattr(self, "render_GET", None)
        else:
            handler = getattr(self, "render_" + method.decode("ascii", "replace"), None)
        if handler is None:
            # A resource that answers no method at all is a path, not a
            # resource: unknown (404), whatever the method.
            answer = (
                self.method_not_allowed(request)
                if self.allowed_methods()
                else not_found_response()
            )
            write_response(request, self.decorate(answer))
            return NOT_DONE_YET
        # (A CORS preflight names the URL of the request it asks about,
        # parameters and all: that request is checked when it comes.)
        if self.parameters is not None and b"?" in request.uri and method != b"OPTIONS":
            allowed = self.parameters.get(handler.__name__[len("render_"):], ())
            refused = unknown_parameter(request, self.route, allowed)
            if refused is not None:
                return self.respond(request, lambda request: fail(refused))
        return handler(request)

    def allowed_methods(self) -> list:
        """The methods this resource answers, for C{Allow}."""
        # Resource itself defines render_HEAD (delegating to render_GET), so
        # HEAD counts only where GET does.
        methods = {
            name[len("render_"):] for name in dir(self) if name.startswith("render_")
        } - {"HEAD"}
        if "GET" in methods:
            methods.add("HEAD")
        return sorted(methods)

    def method_not_allowed(self, request: Request) -> Response:
        """The seed's rule: any other method is 404. The v1 tree says 405."""
        return not_found_response()

    def decorate(self, response: Response) -> Response:
        """Add what every answer of this resource carries; a hook for subtrees."""
        return response

    def respond(self, request: Request, handler: Handler) -> int:
        """
        Run C{handler(request)} and write its outcome when it is ready.
        Returns C{NOT_DONE_YET} for the render method to return.
        """
        request.notifyFinish().addErrback(_mark_gone, request)
        # maybeDeferred waits for a Deferred the handler returns, so what
        # fires is a Response; its overloads cannot say so of a handler that
        # may return either.
        d = cast("Deferred[Response]", maybeDeferred(handler, request))
        d.addErrback(error_response)
        d.addCallback(self._write, request)
        d.addErrback(lambda reason: log.failure("failed to write a response", reason))
        return NOT_DONE_YET

    def _write(self, response: Response, request: Request) -> None:
        write_response(request, self.decorate(response))


def not_found_response() -> Response:
    """The answer to an unknown path or, on seed routes, an unknown method."""
    return Response(404, not_found_body(), PROBLEM_CONTENT_TYPE)


class Answers405(KVResource):
    """
    A resource that answers an unsupported method with 405 and C{Allow}
    (the v1 API's rule, also the operations endpoints' and the UI's),
    rather than the seed's 404.
    """

    def method_not_allowed(self, request: Request) -> Response:
        allowed = ", ".join(self.allowed_methods())
        return Response(
            405,
            problem_body(
                405,
                "method-not-allowed",
                "%s is not allowed here; allowed: %s"
                % (request.method.decode("ascii", "replace"), allowed),
            ),
            PROBLEM_CONTENT_TYPE,
            {b"allow": allowed.encode("ascii")},
        )


class NotFound(KVResource):
    """Answers 404 to everything below and at it."""

    def render(self, request: Request) -> int:
        request.kvtwist_route = self.route  # type: ignore[attr-defined]
        write_response(request, not_found_response())
        return NOT_DONE_YET


NOT_FOUND = NotFound()


class Refused(KVResource):
    """
    Answers a request refused before routing (by authentication, or by the
    browser checks), wherever it was going, with C{error}'s problem.

    @param route: the label of the refusal in metrics and logs.
    """

    isLeaf = True

    def __init__(self, error: KVError, route: str) -> None:
        super().__init__()
        self._error = error
        self.route = route

    def render(self, request: Request) -> int:
        request.kvtwist_route = self.route  # type: ignore[attr-defined]
        return self.respond(request, lambda request: fail(self._error))
