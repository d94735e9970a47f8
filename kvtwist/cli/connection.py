# -*- test-case-name: tests.unit.test_cli -*-
"""
Where the C{kvtwist} command connects: the C{--url} it accepts, a server
on a unix socket (C{--unix-socket PATH} or an C{http+unix} URL), the HTTP
client it makes, and how it names a failure to reach the server.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple
from urllib.parse import unquote, urlsplit

from twisted.internet import defer, error
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseFailed,
)
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from kvtwist import client
from kvtwist.cli.invocation import UsageError, check_text

__all__ = [
    "CONNECTION_ERRORS",
    "DEFAULT_URL",
    "UNIX_SCHEME",
    "base_url",
    "describe_connection_error",
    "make_http",
    "unix_target",
]

DEFAULT_URL = "http://127.0.0.1:8080"

#: The scheme of a unix socket URL, as requests-unixsocket and others spell
#: it: C{http+unix://%2Frun%2Fkvcache.sock/}, the socket's path
#: percent-encoded where a host would be.
UNIX_SCHEME = "http+unix"

#: Failures that mean the server could not be reached or stopped answering.
CONNECTION_ERRORS = (
    error.ConnectError,  # refused, connect timeout, no route, ...
    error.DNSLookupError,
    error.ConnectionLost,
    error.ConnectionDone,
    ResponseFailed,  # includes ResponseNeverReceived
    RequestTransmissionFailed,
    defer.TimeoutError,  # our --timeout
    OSError,
)


def base_url(text: str) -> str:
    """
    @raise UsageError: unless C{text} is an http or https URL with a host
        (or an C{http+unix} URL naming a socket) and no query or fragment.
    """
    check_text(text, "the URL")
    try:
        parts = urlsplit(text)
        if parts.scheme != UNIX_SCHEME:
            parts.port  # raises ValueError for a bad port
    except ValueError as e:
        raise UsageError("bad --url %r: %s" % (text, e))
    if parts.scheme == UNIX_SCHEME:
        if not parts.netloc:
            raise UsageError("bad --url %r: expected http+unix://%%2Fpath%%2Fto.sock[/PATH]"
                             % (text,))
    elif parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError("bad --url %r: expected http://HOST[:PORT][/PATH]" % (text,))
    if parts.query or parts.fragment:
        raise UsageError("bad --url %r: no query or fragment allowed" % (text,))
    return text


def unix_target(url: str, unix_socket: Optional[str]) -> Tuple[str, Optional[str]]:
    """
    Where to connect: C{(the URL requests name, the unix socket or None)}.
    An C{http+unix} URL names its socket in place of the host; requests
    then go to C{http://localhost} plus its path (the Host a loopback
    listener accepts). C{--unix-socket} wins, as curl's does: the URL then
    only gives the path prefix.
    """
    parts = urlsplit(url)
    if parts.scheme == UNIX_SCHEME:
        unix_socket = unix_socket if unix_socket is not None else unquote(parts.netloc)
        url = "http://localhost" + parts.path
    if unix_socket is not None:
        check_text(unix_socket, "the unix socket path")
    return url, unix_socket


@implementer(IAgentEndpointFactory)
class _UnixSocketEndpoints:
    """Every request's connection goes to one unix socket, whatever its URL."""

    def __init__(self, reactor: Any, path: str) -> None:
        self._reactor = reactor
        self._path = path

    def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
        return UNIXClientEndpoint(self._reactor, self._path)


def make_http(reactor: Any, unix_socket: Optional[str] = None) -> Any:
    """
    The HTTP client the CLI uses by default: a treq C{HTTPClient} on
    C{reactor}, without persistent connections (one command, then exit).

    @param unix_socket: connect every request to this unix socket's path
        instead of the URL's host and port.
    """
    from treq.client import HTTPClient

    pool = HTTPConnectionPool(reactor, persistent=False)
    if unix_socket is None:
        return HTTPClient(Agent(reactor, pool=pool))
    endpoints = _UnixSocketEndpoints(reactor, unix_socket)
    return HTTPClient(Agent.usingEndpointFactory(reactor, endpoints, pool=pool))


def describe_connection_error(e: BaseException) -> str:
    """Why the server could not be reached, for C{kvtwist: cannot reach URL: ...}."""
    if isinstance(e, client.TimedOut):
        return str(e)
    if isinstance(e, defer.TimeoutError):
        return "timed out"
    if isinstance(e, (ResponseFailed, RequestTransmissionFailed)):
        reasons = "; ".join(
            r.getErrorMessage() or r.type.__name__ for r in e.reasons
        )
        return "the connection failed before a whole answer arrived" + (
            " (%s)" % (reasons,) if reasons else "")
    return str(e) or type(e).__name__
