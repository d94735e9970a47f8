"""
The HTTP server kvcache runs: a L{twisted.web.server.Site} whose requests
refuse an oversized body before reading it.

Twisted itself accepts bodies of any size (measured: 100 MiB, and a
C{Content-Length: 10^12} left waiting). Here the declared length is checked
when the headers end, before any C{100 Continue}, and the received bytes as
they arrive; past the limit the client gets a 413 problem and the
connection is closed.
"""

from __future__ import annotations

from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from kvtwist.web.problems import problem_body


#: Seconds a refused connection stays half-open, so the client can read the
#: 413 before the socket closes (closing with unread input would reset it).
REFUSED_LINGER = 2.0


class KVRequest(Request):
    """A request that counts its body against C{site.max_body}."""

    _body_received = 0

    def gotLength(self, length) -> None:
        limit = self.channel.site.max_body
        if length is not None and length > limit:
            self.channel.refuse_body(limit, length)
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.channel.refused:
            return
        self._body_received += len(data)
        limit = self.channel.site.max_body
        if self._body_received > limit:
            self.channel.refuse_body(limit, self._body_received)
            return
        super().handleContentChunk(data)


class KVChannel(HTTPChannel):
    """An HTTP channel that can refuse a request body mid-stream."""

    refused = False

    def refuse_body(self, limit: int, size: int) -> None:
        """Answer 413 naming the limit and the size, then close."""
        if self.refused:
            return
        self.refused = True
        body = problem_body(
            413,
            "body-too-large",
            "request bodies are limited to %d bytes; this one has %s%d"
            % (limit, "at least " if size == limit + 1 else "", size),
            limit_name="max_body",
            limit=limit,
            size=size,
        )
        self.transport.write(
            b"HTTP/1.1 413 Content Too Large\r\n"
            b"Content-Type: application/problem+json\r\n"
            b"Content-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % (len(body),)
            + body
        )
        # Half-close: the client reads the whole answer; what it still sends
        # is discarded by dataReceived until it closes or the timer fires.
        if hasattr(self.transport, "loseWriteConnection"):
            self.transport.loseWriteConnection()
            self.callLater(REFUSED_LINGER, self.transport.abortConnection)
        else:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.refused:
            return
        super().dataReceived(data)

    def _send100Continue(self) -> None:
        if not self.refused:
            super()._send100Continue()


class KVSite(Site):
    """
    The kvcache site: L{KVChannel} connections, L{KVRequest} requests.

    @ivar max_body: the largest request body accepted, in bytes.
    """

    protocol = KVChannel
    requestFactory = KVRequest

    def __init__(self, resource: IResource, max_body: int, **kwargs) -> None:
        super().__init__(resource, requestFactory=KVRequest, **kwargs)
        self.max_body = max_body
