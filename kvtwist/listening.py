# -*- test-case-name: tests.e2e.test_tls -*-
"""
kvcache's listeners: one Service per C{--listen} endpoint, each of which
logs the URL it serves (and the admin page's) once it is bound, so an
operator reads where to point a browser or C{kvtwist --url} from the
startup log, port 0 and unix sockets included.
"""

from __future__ import annotations

from typing import Any, Optional
from urllib.parse import quote

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from zope.interface import implementer

__all__ = ["listening_service", "url_of"]

log = Logger()


def url_of(address: Any, tls: bool) -> Optional[str]:
    """
    The base URL a client uses for a bound address: C{http://HOST:PORT/}
    (C{https} over TLS, IPv6 hosts in brackets), or for a unix socket the
    C{http+unix://} form C{kvtwist --url} takes (its path percent-encoded);
    L{None} for an address of another kind.
    """
    scheme = "https" if tls else "http"
    if isinstance(address, IPv4Address):
        return "%s://%s:%d/" % (scheme, address.host, address.port)
    if isinstance(address, IPv6Address):
        return "%s://[%s]:%d/" % (scheme, address.host, address.port)
    if isinstance(address, UNIXAddress) and address.name:
        # UNIXAddress keeps the path as bytes (it converts a str).
        path = address.name.decode("utf-8", "surrogateescape")
        return "%s+unix://%s/" % (scheme, quote(path, safe=""))
    return None


@implementer(IStreamServerEndpoint)
class _Announced:
    """An endpoint that logs the URL of each port it binds."""

    def __init__(self, endpoint: IStreamServerEndpoint, description: str, ui: bool) -> None:
        self._endpoint = endpoint
        self._description = description
        self._tls = isinstance(endpoint, SSL4ServerEndpoint)
        self._ui = ui

    def listen(self, factory: Any) -> Any:
        return self._endpoint.listen(factory).addCallback(self._announce)

    def _announce(self, port: IListeningPort) -> IListeningPort:
        url = url_of(port.getHost(), self._tls)
        if url is None:
            log.info("kvcache: listening on {endpoint}", endpoint=self._description)
        elif self._ui and not url.startswith(("http+unix", "https+unix")):
            # A browser cannot open a unix socket: the page is named on
            # the TCP listeners only.
            log.info("kvcache: listening on {url} (admin page: {url}ui/)", url=url)
        else:
            log.info("kvcache: listening on {url}", url=url)
        return port


def listening_service(
    description: str, factory: Any, reactor: Any, ui: bool
) -> StreamServerEndpointService:
    """
    What C{twisted.application.strports.service} makes of an endpoint
    string, with the URL (and, with the admin page on, its URL) logged once
    the port is bound.

    @param ui: whether the admin page is served (at C{/ui/}).
    @raise Exception: whatever parsing the endpoint string raises (a bad
        string, a missing certificate).
    """
    endpoint = serverFromString(reactor, description)
    return StreamServerEndpointService(_Announced(endpoint, description, ui), factory)
