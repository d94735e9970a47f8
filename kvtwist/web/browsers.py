# -*- test-case-name: tests.unit.test_browsers -*-
"""
The front door for browsers: every request's C{Host} and C{Origin} are
checked before any route runs, and the origins an operator invites get
CORS.

A web page can make a browser send requests to any address, the user's
loopback included: a form POST or a C{fetch(..., {mode: "no-cors"})} is
not readable by the page, but it runs. Such requests carry the page's
C{Origin}; and a page that reads through DNS rebinding (its own name,
resolved to 127.0.0.1 for the second request) names its own domain in
C{Host}. Clients that are not browsers (curl, the CLI, treq) send no
C{Origin} and name the address they connect to, so the rules below leave
them alone:

  1. An HTTP/1.1 request has exactly one C{Host} header, with a valid
     value (RFC 9112, section 3.2); else 400 C{bad-host}.
  2. C{Host} must name this server (421 C{host-not-allowed} otherwise):
     a loopback name (C{localhost}, C{*.localhost}), an IP address (no DNS,
     so no rebinding) or an C{--allowed-host}. This holds on connections
     that arrived on a loopback address, and on every connection once
     C{--allowed-host} is given; without it, a server reached on another
     address answers any name (its listeners need tokens: protected mode).
  3. A request with an C{Origin} must come from an C{--cors-origin} or from
     the server's own origin (C{scheme://Host}, as the admin page's own
     calls do); else 403 C{origin-not-allowed}.
  4. For an invited origin a preflight C{OPTIONS} is answered here (204),
     and every answer carries C{Access-Control-Allow-Origin} and exposes
     the API's headers.

C{docs/operations.md} ("Browsers") tells operators the same. Everything
here runs on the reactor thread.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Tuple

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from kvtwist.config_values import is_loopback
from kvtwist.errors import HostNotAllowed, InvalidInput, KVError, OriginNotAllowed
from kvtwist.web.resource import KVResource, Refused, Response, write_response

#: The methods and request headers the API takes from a browser.
ALLOW_METHODS = b"GET, HEAD, PUT, POST, DELETE"
ALLOW_HEADERS = b"Authorization, Content-Type, If-Match, If-None-Match, Last-Event-ID"
#: The response headers of the API a page may read.
EXPOSE_HEADERS = (
    b"ETag, KV-Revision, KV-Create-Revision, KV-Version, KV-Expires, Location, "
    b"Allow, WWW-Authenticate"
)
#: Seconds a browser may reuse a preflight's answer.
PREFLIGHT_MAX_AGE = b"600"

#: A Host value: a bracketed IPv6 address or a name (or IPv4 address), and
#: an optional port.
_HOST = re.compile(rb"(\[[0-9a-f:.]+\]|[a-z0-9._~-]+)(?::([0-9]{1,5}))?\Z")

#: What L{_classify} says of a Host value.
_MALFORMED, _TRUSTED, _OTHER = range(3)
#: Host values classified at most; past it the cache starts over, so
#: clients naming ever new hosts cannot grow it.
_HOST_CACHE_SIZE = 256


@dataclass(frozen=True)
class BrowserPolicy:
    """
    What browsers may do: the origins invited (C{--cors-origin}, C{"*"}
    for any) and the extra names the server answers to (C{--allowed-host},
    a host or C{host:port}), all lower case.
    """

    cors_origins: Tuple[str, ...] = ()
    allowed_hosts: Tuple[str, ...] = ()

    @classmethod
    def of(cls, cors_origins: Iterable[str] = (), allowed_hosts: Iterable[str] = ()) -> "BrowserPolicy":
        """A policy from configured values, in any case."""
        return cls(
            tuple(origin.lower() for origin in cors_origins),
            tuple(host.lower() for host in allowed_hosts),
        )


def _ip_literal(name: bytes) -> bool:
    try:
        ipaddress.ip_address(name.strip(b"[]").decode("ascii"))
    except ValueError:
        return False
    return True


def loopback_address(address: object) -> bool:
    """Whether a connection's local C{address} is a loopback IP address."""
    host = getattr(address, "host", None)
    if not isinstance(host, str):
        # A UNIX socket: only a proxy in front can bring a browser there.
        return False
    return is_loopback(host)


class BrowserGuard(Resource):
    """
    The top of the tree: admits a request by its C{Host} and C{Origin}
    (see the module's docstring), answers invited preflights, and adds the
    CORS headers, before C{tree} routes it.
    """

    def __init__(self, tree: Resource, policy: BrowserPolicy) -> None:
        super().__init__()
        self._tree = tree
        self._any_origin = "*" in policy.cors_origins
        self._origins = frozenset(origin.encode("ascii") for origin in policy.cors_origins)
        self._allowed_hosts = frozenset(host.encode("ascii") for host in policy.allowed_hosts)
        self._classified: Dict[bytes, int] = {}

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:
        stop = self._admit(request)
        if stop is not None:
            return stop
        return self._tree.getChildWithDefault(path, request)

    def render(self, request: Request) -> int:
        return (self._admit(request) or self._tree).render(request)

    # -- the checks ------------------------------------------------------------

    def _admit(self, request: Request) -> Optional[Resource]:
        """None to go on routing, or the resource that answers instead."""
        headers = request.requestHeaders
        hosts = headers.getRawHeaders(b"host")
        if hosts is None:
            if request.clientproto != b"HTTP/1.0":
                return _refused(InvalidInput("bad-host", "an HTTP/1.1 request needs a Host header"))
            host = None
        elif len(hosts) != 1:
            return _refused(
                InvalidInput("bad-host", "a request must have one Host header, not %d" % (len(hosts),))
            )
        else:
            host = hosts[0].lower()
            refusal = self._check_host(host, request)
            if refusal is not None:
                return _refused(refusal)
        if self._origins or self._any_origin:
            # The answer depends on Origin: caches must keep them apart.
            request.responseHeaders.addRawHeader(b"vary", b"Origin")
        origins = headers.getRawHeaders(b"origin")
        if origins is None:
            return None
        origin = origins[0].lower() if len(origins) == 1 else None
        if origin is not None and (self._any_origin or origin in self._origins):
            return self._invited(request, origins[0])
        if origin is not None and host is not None and origin == _own_origin(request, host):
            return None
        return _refused(
            OriginNotAllowed(
                "requests from web pages of origin %s are not allowed here "
                "(the server invites origins with --cors-origin)"
                % (b", ".join(origins)[:200].decode("latin-1"),)
            )
        )

    def _check_host(self, host: bytes, request: Request) -> Optional[KVError]:
        kind = self._classified.get(host)
        if kind is None:
            kind = self._classify(host)
            if len(self._classified) >= _HOST_CACHE_SIZE:
                self._classified.clear()
            self._classified[host] = kind
        if kind == _TRUSTED:
            return None
        if kind == _MALFORMED:
            return InvalidInput("bad-host", "the Host header is not a valid host[:port]")
        if self._allowed_hosts or loopback_address(request.getHost()):
            return HostNotAllowed(
                "this server does not answer for %s: it answers to localhost, "
                "*.localhost, IP addresses and its --allowed-host names"
                % (host[:200].decode("latin-1"),)
            )
        return None

    def _classify(self, host: bytes) -> int:
        match = _HOST.match(host)
        if match is None:
            return _MALFORMED
        name = match.group(1)
        if (
            name == b"localhost"
            or name.endswith(b".localhost")
            or name in self._allowed_hosts
            or host in self._allowed_hosts
            or _ip_literal(name)
        ):
            return _TRUSTED
        if name.startswith(b"["):
            return _MALFORMED
        return _OTHER

    def _invited(self, request: Request, origin: bytes) -> Optional[Resource]:
        """Mark the answer for an invited C{origin}; a preflight ends here."""
        request.setHeader(b"access-control-allow-origin", origin)
        if request.method == b"OPTIONS" and request.requestHeaders.hasHeader(
            b"access-control-request-method"
        ):
            return PREFLIGHT
        request.setHeader(b"access-control-expose-headers", EXPOSE_HEADERS)
        return None


#: The port a scheme's origins leave out.
_DEFAULT_PORTS = {b"http": b":80", b"https": b":443"}


def _own_origin(request: Request, host: bytes) -> bytes:
    """The origin of the pages this server serves under C{host}."""
    scheme = b"https" if request.isSecure() else b"http"
    default = _DEFAULT_PORTS[scheme]
    if host.endswith(default):
        host = host[: -len(default)]
    return scheme + b"://" + host


def _refused(error: KVError) -> Resource:
    return Refused(error, "(browser-refused)")


class Preflight(KVResource):
    """Answers an invited origin's preflight C{OPTIONS}: what it may send."""

    isLeaf = True
    route = "(preflight)"

    def render(self, request: Request) -> int:
        request.kvtwist_route = self.route  # type: ignore[attr-defined]
        write_response(
            request,
            Response(
                204,
                b"",
                None,
                {
                    b"access-control-allow-methods": ALLOW_METHODS,
                    b"access-control-allow-headers": ALLOW_HEADERS,
                    b"access-control-max-age": PREFLIGHT_MAX_AGE,
                },
            ),
        )
        return NOT_DONE_YET


PREFLIGHT = Preflight()
