# -*- test-case-name: tests.unit.test_http_limits -*-
"""
The HTTP server kvcache runs: a L{twisted.web.server.Site} that holds its
own limits against hostile clients before any Resource sees a request.

What plain twisted.web does not do (measured on Twisted 26.10), and this
module does:

  - a body cap: Twisted accepts bodies of any size (100 MiB, and a
    C{Content-Length: 10^12} left waiting). Here the declared length is
    checked when the headers end, before any C{100 Continue}, and the
    received bytes as they arrive: past C{max_body} the client gets 413;
  - a whole-request deadline: Twisted's idle timeout is reset by every
    byte, so a client sending one byte a second holds a connection as long
    as it likes. Here a request must be complete C{request_timeout} seconds
    after its first byte, or the client gets 408;
  - a connection cap over every listener: beyond C{max_connections} a new
    connection is closed at once;
  - answers instead of silent closes: an overlong request line is a 414,
    overlong or too many headers a 431, bare LF line endings and every
    other malformed head a 400, each a problem+json body naming the limit.

Every refusal is written directly on the transport, followed by a
half-close: the client can read the answer, what it still sends is
discarded, and the connection is aborted after L{REFUSED_LINGER} seconds
(closing with unread input would reset the connection and could destroy
the answer before the client reads it).

Everything here runs on the reactor thread.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime, timezone
from typing import Optional, Type, TypeVar

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IDelayedCall, ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.logger import Logger
from twisted.web import http
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from kvtwist.limits import Limits
from kvtwist.web.problems import problem_body

log = Logger()

#: Seconds a refused connection stays half-open, so the client can read the
#: answer before the socket closes.
REFUSED_LINGER = 2.0

#: A line feed not preceded by a carriage return.
_BARE_LF = re.compile(rb"(?<!\r)\n")

#: Methods counted under their own name in metrics; any other is "other",
#: so a client cannot grow the label set without bound.
KNOWN_METHODS = frozenset(
    [b"GET", b"HEAD", b"PUT", b"POST", b"DELETE", b"PATCH", b"OPTIONS"]
)

_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
}


def _number(value: float) -> object:
    """A limit as JSON shows it: an integer when it is one."""
    return int(value) if float(value).is_integer() else value


class KVRequest(Request):
    """
    A request that counts its body against C{site.max_body}, and records
    when it started and which limit refused it, for metrics.

    Overrides that run for every request call the base class by name, not
    through C{super()}: on CPython 3.11 each C{super()} call cost about 1000
    instructions, and six of them were 3 % of a cached GET (here and in
    L{KVChannel}).

    @ivar kvtwist_limit: the configured limit an answer refused this request
        under (the C{limit_name} of its problem body), recorded by
        L{kvtwist.web.resource.write_response} from the error itself; the
        label the rejected-requests metric counts a 413 or 429 under.
    """

    channel: KVChannel
    _body_received = 0
    _kv_started: Optional[float] = None
    #: The route template, set by the resource that answers (for metrics).
    kvtwist_route = "(none)"
    kvtwist_limit: Optional[str] = None

    def __init__(self, *args, **kwargs) -> None:
        # No API of kvtwist takes an HTML form, so a POST body is never
        # parsed into C{request.args}: that parse ran Python's email package
        # over every POST's Content-Type (about a tenth of the server's CPU
        # in a set+commit load), and it let form fields of a body pose as
        # query parameters. C{request.args} holds the query string only.
        kwargs["parsePOSTFormSubmission"] = False
        Request.__init__(self, *args, **kwargs)

    def gotLength(self, length) -> None:
        limit = self.channel.site.max_body
        if length is not None and length > limit:
            self.channel.refuse_body(limit, length)
        Request.gotLength(self, length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.channel.refused:
            return
        self._body_received += len(data)
        limit = self.channel.site.max_body
        if self._body_received > limit:
            self.channel.refuse_body(limit, self._body_received)
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self._kv_started = self.channel.site.reactor.seconds()
        Request.requestReceived(self, command, path, version)


class KVChannel(HTTPChannel):
    """
    An HTTP/1.1 channel with a whole-request deadline, header limits that
    answer, and refusals that close cleanly.

    @ivar refused: set once an answer has refused the request; from then
        on nothing more is read or dispatched.
    @ivar site: the L{KVSite} that made this channel (set by
        L{Site.buildProtocol}).
    """

    site: KVSite

    # The header limits (MAX_LENGTH, totalHeadersSize, maxHeaders) are class
    # attributes of the subclass each KVSite makes (see KVSite.__init__).
    # Overrides that run for every request call HTTPChannel by name (see
    # KVRequest for why).

    refused = False
    _deadline: Optional[IDelayedCall] = None
    #: When the first byte of the request being received came, or None
    #: between requests.
    _request_started: Optional[float] = None
    _counted = False

    # -- refusing ------------------------------------------------------------

    def refuse(
        self,
        status: int,
        code: str,
        detail: str,
        limit_name: Optional[str] = None,
        **extra: object,
    ) -> None:
        """
        Answer C{status} with a problem+json body, read nothing more, and
        close: at once for writing, for good after L{REFUSED_LINGER}.
        """
        if self.refused:
            return
        self.refused = True
        self._cancel_deadline()
        self.setTimeout(None)
        # Stops LineReceiver's loop over what is already buffered.
        self.clearLineBuffer()
        metrics = self.site.metrics
        if metrics is not None:
            if limit_name is not None:
                metrics.reject(limit_name)
            else:
                metrics.bad_request()
        if limit_name is not None:
            extra["limit_name"] = limit_name
        body = problem_body(status, code, detail, **extra)
        transport = self.transport
        if transport is None:
            # Not connected (any more): nobody to answer.
            return
        transport.write(
            b"HTTP/1.1 %d %s\r\n"
            b"Content-Type: application/problem+json\r\n"
            b"Content-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % (status, _REASONS[status], len(body))
            + body
        )
        # Half-close: the client reads the whole answer; what it still sends
        # is discarded by dataReceived until it closes or the timer fires.
        # TCP and UNIX sockets can half-close; a TLS connection cannot, and
        # closes once the answer is sent.
        if ITCPTransport.providedBy(transport):
            transport.loseWriteConnection()
            self.callLater(REFUSED_LINGER, transport.abortConnection)
        else:
            transport.loseConnection()

    def refuse_body(self, limit: int, size: int) -> None:
        """Answer 413 naming the limit and the size, then close."""
        self.refuse(
            413,
            "body-too-large",
            "request bodies are limited to %d bytes; this one has %s%d"
            % (limit, "at least " if size == limit + 1 else "", size),
            limit_name="max_body",
            limit=limit,
            size=size,
        )

    def _refuse_head(self, size: int) -> None:
        # The request line alone too long is a URI too long; anything later
        # is the header section.
        if self._HTTPChannel__first_line:  # type: ignore[attr-defined]  # HTTPChannel's private state, read only
            self.refuse(
                414,
                "uri-too-long",
                "the request line is limited to %d bytes; this one has at least %d"
                % (self.MAX_LENGTH, size),
                limit_name="max_header_bytes",
                limit=self.MAX_LENGTH,
                size=size,
            )
        else:
            self.refuse(
                431,
                "headers-too-large",
                "the request line and headers are limited to %d bytes; these have at least %d"
                % (self.totalHeadersSize, size),
                limit_name="max_header_bytes",
                limit=self.totalHeadersSize,
                size=size,
            )

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's own answer is a bare "400 Bad Request" with no body.
        self.refuse(
            400,
            "bad-request",
            "the request is not valid HTTP/1.1 (request line, header syntax, "
            "Content-Length, Transfer-Encoding or chunked body)",
        )

    # -- the whole-request deadline -------------------------------------------
    #
    # One timer per connection, not one per request: a request only notes
    # when its first byte came (_request_started) and when it is whole
    # clears it. The timer, armed when a request starts and none is pending,
    # checks on firing whether the request in progress (if any) is past its
    # deadline, and re-arms itself for the rest of it if not. A kept-alive
    # connection thus schedules at most one timer per deadline period
    # instead of a schedule and a cancel per request (2 % of a cached GET).

    def _start_request_clock(self) -> None:
        self._request_started = self.site.reactor.seconds()
        if self._deadline is None:
            self._deadline = self.callLater(self.site.request_timeout, self._check_deadline)

    def _cancel_deadline(self) -> None:
        self._request_started = None
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _check_deadline(self) -> None:
        self._deadline = None
        started = self._request_started
        if started is None or self.refused:
            return
        remaining = started + self.site.request_timeout - self.site.reactor.seconds()
        if remaining > 1e-6:
            # A request that began after the timer was armed.
            self._deadline = self.callLater(remaining, self._check_deadline)
            return
        self._request_timed_out()

    def _request_timed_out(self) -> None:
        limit = self.site.request_timeout
        self.refuse(
            408,
            "request-timeout",
            "a request must arrive whole within %s seconds of its first byte"
            % (_number(limit),),
            limit_name="request_timeout",
            limit=_number(limit),
        )

    # -- parsing ---------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.refused:
            return
        if (
            self._request_started is None
            and not self._handlingRequest
            and not self.paused
            and data
        ):
            # The first byte of a request: from now on it must be complete
            # within the deadline, however slowly the bytes trickle in.
            self._start_request_clock()
        nested = self._busyReceiving
        HTTPChannel.dataReceived(self, data)
        transport = self.transport
        if (
            not nested
            # Usually empty: a request arrives whole and is answered.
            and self._buffer
            and self.line_mode
            # Held pipelined requests are whole requests, bodies included.
            and not self.paused
            and not self.refused
            and not self._handlingRequest
            and transport is not None
            and not transport.disconnecting  # type: ignore[attr-defined]  # every Twisted stream transport (TCP, UNIX, TLS) has it; ITransport does not declare it
            and _BARE_LF.search(self._buffer)
        ):
            # What is left in line mode is an unfinished line of the head;
            # a bare LF there would only wait for a CRLF until the deadline.
            self._bare_line_ending()

    def _bare_line_ending(self) -> None:
        self.refuse(
            400,
            "bad-request",
            "lines of the request head and of a chunked body's framing must end "
            "with CRLF, not a bare LF or CR",
        )

    def lineReceived(self, line: bytes) -> None:
        if self.refused:
            return
        # Ints, not b"\n": CPython answers `bytes in bytes` by first trying
        # the needle as an int and discarding the TypeError, which made
        # this check a tenth of the whole GET hot path's time.
        if 10 in line or 13 in line:
            self._bare_line_ending()
            return
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._refuse_head(self._receivedHeaderSize + len(line))
            return
        if line[:1] in (b" ", b"\t") and not self._HTTPChannel__first_line:  # type: ignore[attr-defined]  # HTTPChannel's private state, read only
            # Twisted joins folded header lines; a proxy in front may not,
            # and two readings of one head are how requests get smuggled.
            # RFC 9112 5.2 allows rejecting them.
            self.refuse(400, "bad-request", "obsolete line folding in headers is not accepted")
            return
        HTTPChannel.lineReceived(self, line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if not self.refused:
            self._refuse_head(self._receivedHeaderSize + len(line))

    def headerReceived(self, line: bytes) -> bool:
        if self.refused:
            return False
        if self._receivedHeaderCount >= self.maxHeaders:
            self.refuse(
                431,
                "too-many-headers",
                "a request may have at most %d header lines" % (self.maxHeaders,),
                limit_name="max_headers",
                limit=self.maxHeaders,
                size=self._receivedHeaderCount + 1,
            )
            return False
        name, colon, value = line.partition(b":")
        if (
            colon
            and name.lower() == b"transfer-encoding"
            and value.strip(b" \t").lower() != b"chunked"
        ):
            # Twisted silently ignores "identity" (then reads no body at
            # all); anything but plain chunked is refused here.
            self.refuse(
                400,
                "bad-request",
                "Transfer-Encoding must be exactly chunked (got %s)"
                % (value.strip().decode("latin-1")[:40],),
            )
            return False
        return HTTPChannel.headerReceived(self, line)

    def rawDataReceived(self, data: bytes) -> None:
        if self.refused:
            return
        super().rawDataReceived(data)
        decoder = self._transferDecoder
        if self.refused or self._handlingRequest or decoder is None:
            return
        state = getattr(decoder, "state", None)
        if state in ("CHUNK_LENGTH", "TRAILER") and _BARE_LF.search(
            getattr(decoder, "_buffer", b"")
        ):
            # Twisted's decoder waits for a CRLF that a bare-LF client
            # never sends: without this the request would sit until the
            # deadline's 408. (Reads Twisted's decoder buffer, as below.)
            self._bare_line_ending()
            return
        if state == "BODY" and self.requests:
            # A chunk size is a declaration like Content-Length: refuse one
            # that passes the cap at once rather than wait for its bytes.
            # (Reads Twisted's decoder state; if that changes, the streamed
            # count in KVRequest still holds the cap.)
            declared = getattr(decoder, "length", None)
            received = getattr(self.requests[-1], "_body_received", 0)
            limit = self.site.max_body
            if isinstance(declared, int) and received + declared > limit:
                self.refuse_body(limit, received + declared)

    def allContentReceived(self) -> None:
        if self.refused:
            return
        # Whole: the deadline no longer applies (the timer, if pending,
        # finds no request in progress and lapses).
        self._request_started = None
        HTTPChannel.allContentReceived(self)

    def _send100Continue(self) -> None:
        if not self.refused:
            super()._send100Continue()

    # -- back-pressure on pipelined requests ------------------------------------
    #
    # HTTPChannel pauses the transport when its write buffer fills only if
    # no request is being handled at that moment. A cached GET is answered
    # while it is handled, so the pause never came, and every request
    # pipelined behind it was parsed and answered into the write buffer at
    # once: 3,000 pipelined GETs of a 1 MB value from a client that never
    # reads queued 3 GB. Here, once a request is done while the transport
    # still holds more than its buffer size unsent, the channel stops
    # parsing (LineReceiver's C{paused} flag leaves the rest in its buffer)
    # and stops reading, until the transport has flushed. A connection's
    # queued answers are thus bounded by the transport's buffer size
    # (64 KiB) plus the last answer written.

    def requestDone(self, request) -> None:
        if self._waitingForTransport and self.persistent and not self.refused:
            self.paused = True
            HTTPChannel.requestDone(self, request)
            self._networkProducer.pauseProducing()
            return
        HTTPChannel.requestDone(self, request)

    def resumeProducing(self) -> None:
        HTTPChannel.resumeProducing(self)
        if self.paused and not self._waitingForTransport:
            self.paused = False
            if self._buffer and not self.refused:
                # The held requests arrive now, as far as the deadline and
                # the idle timeout are concerned.
                self._start_request_clock()
                self.dataReceived(b"")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_deadline()
        if self._counted:
            self._counted = False
            self.site.connection_closed()
        super().connectionLost(reason)


class _Refused(Protocol):
    """A connection over the cap: closed as soon as it is made."""

    def connectionMade(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.abortConnection()  # type: ignore[attr-defined]  # every Twisted stream transport (TCP, UNIX, TLS) has it; ITransport does not declare it


#: What twisted.web's access-log escaping changes: anything but printable
#: ASCII, and the double quote and backslash.
_NEEDS_ESCAPE = re.compile(rb'[^\x20-\x7e]|["\\]')


def _clf_escape(value) -> str:
    """
    A field as twisted.web's Combined Log Format escapes it (a Python
    repr, always as if between double quotes); plain printable ASCII, what
    nearly every field is, skips the repr.
    """
    if not isinstance(value, bytes):
        value = value.encode("ascii")
    if _NEEDS_ESCAPE.search(value) is None:
        return value.decode("ascii")
    text = repr(value)[1:]
    if text.startswith("'"):
        return text[1:-1].replace('"', '\\"').replace("\\'", "'")
    return text[1:-1]


def clf_log_formatter(timestamp: str, request: Request) -> str:
    """
    One access-log line in the Combined Log Format (an
    L{IAccessLogFormatter}): the very line twisted.web's
    C{combinedLogFormatter} writes, made without a repr per field.
    """
    address = request.getClientAddress()
    ip = address.host if isinstance(address, (IPv4Address, IPv6Address)) else b"-"
    return '"%s" - - %s "%s %s %s" %d %s "%s" "%s"' % (
        _clf_escape(ip),
        timestamp,
        _clf_escape(request.method),
        _clf_escape(request.uri),
        _clf_escape(request.clientproto),
        request.code,
        request.sentLength or "-",
        _clf_escape(request.getHeader(b"referer") or b"-"),
        _clf_escape(request.getHeader(b"user-agent") or b"-"),
    )


def json_log_formatter(timestamp: str, request: Request) -> str:
    """
    One access-log line as a JSON object (an L{IAccessLogFormatter}):
    time, client, method, path, protocol, status, bytes, route, duration,
    token name (never its secret), referer and user agent.
    """
    address = request.getClientAddress()
    started = getattr(request, "_kv_started", None)
    # A request that lost its connection has no channel any more.
    channel = request.channel
    now = channel.site.reactor.seconds() if isinstance(channel, KVChannel) else None
    principal = getattr(request, "kvtwist_principal", None)
    document = {
        "time": datetime.fromtimestamp(
            now if now is not None else 0, timezone.utc
        ).isoformat(timespec="milliseconds"),
        "remote": getattr(address, "host", None) or getattr(address, "name", None) or "-",
        "method": request.method.decode("latin-1"),
        "path": request.uri.decode("latin-1"),
        "protocol": request.clientproto.decode("latin-1"),
        "status": request.code,
        "bytes": request.sentLength,
        "route": getattr(request, "kvtwist_route", None),
        "duration": round(now - started, 6) if now is not None and started is not None else None,
        "token": getattr(principal, "name", None),
        "referer": (request.getHeader(b"referer") or b"").decode("latin-1") or None,
        "user_agent": (request.getHeader(b"user-agent") or b"").decode("latin-1") or None,
    }
    if isinstance(document["remote"], bytes):
        document["remote"] = document["remote"].decode("latin-1")
    return json.dumps(document, ensure_ascii=True, separators=(",", ":"))


_Channel = TypeVar("_Channel", bound=KVChannel)


def _with_header_limits(base: Type[_Channel], limits: Limits) -> Type[_Channel]:
    """
    A subclass of C{base} carrying C{limits}' header limits as class
    attributes (see L{KVSite.__init__} for why not on each connection).
    """
    limited = type(
        base.__name__,
        (base,),
        {
            "__module__": base.__module__,
            "MAX_LENGTH": limits.max_header_bytes,
            "totalHeadersSize": limits.max_header_bytes,
            "maxHeaders": limits.max_headers,
        },
    )
    # Always true; it tells the type checker what type() made.
    if not issubclass(limited, base):
        raise TypeError("%r is not a subclass of %r" % (limited, base))
    return limited


class _WholeLines:
    """
    Access lines to a stream the site does not own (stdout): each written
    and flushed whole, so they never interleave with another writer's, and
    never closed by the site.
    """

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, line: str) -> None:
        self._stream.write(line)
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()


class KVSite(Site):
    """
    The kvcache site: L{KVChannel} connections, L{KVRequest} requests, the
    connection cap, access logging and request metrics.

    @param limits: the limits in force (body, deadline, idle timeout,
        connection cap, header limits).
    @param metrics: a L{kvtwist.metrics.Metrics} to record requests and
        refusals in, or None.
    @param access_log: C{off}, C{clf} (Combined Log Format, the default)
        or C{json}.
    @param access_log_file: where access lines go (default: C{clf} lines
        to the twistd log, through Twisted's logging; C{json} lines to
        stdout as they are, one JSON object a line).
    @param max_body: overrides C{limits.max_body} (kept for callers that
        only set the body cap).

    @ivar open_connections: connections open now, over every listener.
    """

    # Factory.buildProtocol calls a channel class as it calls HTTPFactory's
    # default, the factory function of Twisted's HTTP/2-capable proxy.
    protocol: Type[KVChannel] = KVChannel  # type: ignore[assignment]  # HTTPFactory types protocol as that function
    requestFactory = KVRequest

    def __init__(
        self,
        resource: IResource,
        limits: Optional[Limits] = None,
        metrics=None,
        access_log: str = "clf",
        access_log_file: Optional[str] = None,
        max_body: Optional[int] = None,
        **kwargs,
    ) -> None:
        if access_log not in ("off", "clf", "json"):
            raise ValueError("access_log must be off, clf or json")
        limits = limits if limits is not None else Limits()
        kwargs.setdefault("timeout", limits.idle_timeout)
        kwargs.setdefault(
            "logFormatter", json_log_formatter if access_log == "json" else clf_log_formatter
        )
        super().__init__(
            resource, requestFactory=KVRequest, logPath=access_log_file, **kwargs
        )
        self.limits = limits
        self.max_body = max_body if max_body is not None else limits.max_body
        self.request_timeout = limits.request_timeout
        self.max_connections = limits.max_connections
        self.max_header_bytes = limits.max_header_bytes
        self.max_headers = limits.max_headers
        # This site's header limits, as class attributes of its own channel
        # class rather than set on each connection: Twisted checks one line
        # against MAX_LENGTH and the whole head against totalHeadersSize
        # (one limit covers both here). Three more instance attributes
        # pushed the channel's __dict__ past what CPython keeps as a shared
        # key table, and every attribute read on the channel, Twisted's own
        # included, got slower: 3.5 % of a cached GET's instructions.
        self.protocol = _with_header_limits(self.protocol, limits)
        self.metrics = metrics
        self.access_log = access_log
        self.open_connections = 0
        self._refused_while_full = 0

    def buildProtocol(self, addr):
        if self.open_connections >= self.max_connections:
            if self._refused_while_full == 0:
                log.warn(
                    "connection cap reached ({count} open): refusing new connections",
                    count=self.open_connections,
                )
            self._refused_while_full += 1
            if self.metrics is not None:
                self.metrics.reject("max_connections")
            return _Refused()
        channel = super().buildProtocol(addr)
        self.open_connections += 1
        channel._counted = True
        return channel

    def connection_closed(self) -> None:
        """A counted connection has gone: one more may be accepted."""
        self.open_connections -= 1
        if self._refused_while_full and self.open_connections < self.max_connections:
            log.info(
                "below the connection cap again; {refused} connections were refused",
                refused=self._refused_while_full,
            )
            self._refused_while_full = 0

    def startFactory(self) -> None:
        super().startFactory()
        if self.access_log == "json" and self.logPath is None and sys.__stdout__ is not None:
            # JSON lines to stdout as they are, where twistd -n writes its
            # own log too: through Twisted's log each would get twistd's
            # "<time> [twisted.python.log#info] " prefix and stop being
            # JSON, which jq and log shippers then refuse.
            self._logFile = _WholeLines(sys.__stdout__)

    def _openLogFile(self, path):
        # A plain append-mode file (what HTTPFactory does), not Site's
        # LogFile, which rotates by itself every megabyte: rotation is the
        # operator's logrotate's job.
        return http.HTTPFactory._openLogFile(self, path)

    def log(self, request: http.Request) -> None:
        # Runs for every answered request: plain attribute reads (KVRequest
        # has class defaults) and one bytes-keyed count; names are decoded
        # only when /v1/metrics is scraped. Every request here is a
        # KVRequest (requestFactory).
        metrics = self.metrics
        if metrics is not None and isinstance(request, KVRequest):
            started = request._kv_started
            method = request.method
            code = request.code
            metrics.requests.observe(
                request.kvtwist_route,
                method if method in KNOWN_METHODS else b"other",
                code,
                self.reactor.seconds() - started if started is not None else 0.0,
            )
            if code == 413 or code == 429:
                metrics.reject(request.kvtwist_limit or "other")
        if self.access_log != "off":
            super().log(request)
