# -*- test-case-name: tests.contract.test_store_etcd -*-
"""
The HTTP transport between L{kvtwist.store.etcd.store.EtcdStore} and
etcd's v3 JSON gateway (C{POST /v3/...}): the members' endpoints and which
one is active, the one loop that goes round them (for requests and for the
ping), TLS, the auth token, and what etcd's error answers mean. How
endpoints fail over, and how TLS and authentication behave, is in
docs/etcd.md ("The gateway").

Everything here runs on the reactor thread.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, List, Optional, Sequence, Tuple

from OpenSSL import SSL
from twisted.internet import error as net_error
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from kvtwist.errors import LimitExceeded, StoreUnavailable
from kvtwist.limits import ETCD_MAX_REQUEST_BYTES, ETCD_MAX_TXN_OPS
from kvtwist.store.etcd.errors import (
    GRPC_PERMISSION_DENIED,
    GRPC_UNAUTHENTICATED,
    Ambiguous,
    Answered,
    Compacted,
    EtcdError,
    LeaseGone,
    NotSent,
    TimedOut,
    describe,
    is_token_refusal,
)
from kvtwist.store.etcd.tls import EtcdCredentials, EtcdTLS

__all__ = [
    "DEFAULT_MAX_REQUEST_BYTES",
    "DEFAULT_MAX_TXN_OPS",
    "EtcdGateway",
]

log = Logger()

#: etcd's defaults (C{--max-txn-ops}, C{--max-request-bytes}).
DEFAULT_MAX_TXN_OPS = ETCD_MAX_TXN_OPS
DEFAULT_MAX_REQUEST_BYTES = ETCD_MAX_REQUEST_BYTES

# At most this many rounds over the endpoints for one request (and no new
# round once a timeout has passed since the first), with this pause between.
_ROUNDS = 10
_RETRY_PAUSE = 0.25

# etcd error messages that mean a write was refused before it was proposed,
# so it surely did not apply.
_SAFE_UNAVAILABLE = ("no leader", "too many requests")

# Failures of an HTTP request that happen before any byte was sent.
_CONNECT_ERRORS = (net_error.ConnectError, net_error.DNSLookupError)
# Words of OpenSSL errors that end a handshake, before the request is sent
# (or read by etcd): a certificate refused either way, a protocol mismatch.
_HANDSHAKE_WORDS = (
    "certificate",
    "alert",
    "handshake",
    "wrong version number",
    "unknown protocol",
    "packet length too long",
)


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """
    Connections to etcd members: an IP address is connected to directly
    (Twisted's default, L{HostnameEndpoint}, reports a refused connection
    only after its 0.3 s attempt delay, which every dead member would add to
    a failover); C{https} URLs are wrapped in TLS by C{tls}.
    """

    def __init__(self, reactor: Any, timeout: float, tls: Optional[IPolicyForHTTPS]) -> None:
        self._reactor = reactor
        self._timeout = timeout
        self._tls = tls

    def endpointForURI(self, uri: Any) -> Any:
        host = uri.host.decode("ascii")
        endpoint: IStreamClientEndpoint
        if isIPAddress(host):
            endpoint = TCP4ClientEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        elif isIPv6Address(host):
            endpoint = TCP6ClientEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        else:
            endpoint = HostnameEndpoint(self._reactor, uri.host, uri.port, timeout=self._timeout)
        if uri.scheme == b"https":
            assert self._tls is not None, "EtcdGateway.start gives https endpoints a policy"
            return wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
        return endpoint


# -- the gateway ----------------------------------------------------------


class EtcdGateway:
    """
    The HTTP client of one etcd store (see docs/etcd.md, "The gateway").

    @param endpoints: base URLs of members' client ports, in order of
        preference (C{"https://10.0.0.11:2379"}).
    @param reactor: does the HTTP requests and times them out.
    @param timeout: seconds one request to one endpoint may take; requests
        go round the endpoints for about as long.
    @param http: a treq-like client (C{post(url, data=, headers=,
        unbuffered=)}) to use instead of the gateway's own (which L{start}
        makes and L{stop} closes); C{tls} does not apply to it.
    @param tls: the TLS policy for C{https} endpoints (by default the
        platform's trust store, no client certificate).
    @param credentials: the etcd user to authenticate as, if any.
    @param max_txn_ops: etcd's C{--max-txn-ops}, for the error a refused
        transaction becomes.
    @param max_request_bytes: etcd's C{--max-request-bytes}, likewise.

    @ivar current: the index of the endpoint tried first.
    @ivar authentications: how many tokens etcd gave this gateway.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        reactor: Any,
        timeout: float = 5.0,
        http: Any = None,
        tls: Optional[IPolicyForHTTPS] = None,
        credentials: Optional[EtcdCredentials] = None,
        max_txn_ops: int = DEFAULT_MAX_TXN_OPS,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        endpoints = [e.rstrip("/") for e in endpoints]
        if not endpoints:
            raise ValueError("the etcd store needs at least one endpoint")
        for endpoint in endpoints:
            if not endpoint.startswith(("http://", "https://")):
                raise ValueError(
                    "an etcd endpoint is an http:// or https:// URL, not %r" % (endpoint,)
                )
        self.endpoints: List[str] = endpoints
        self.timeout = timeout
        self.max_txn_ops = max_txn_ops
        self.max_request_bytes = max_request_bytes
        self.current = 0
        self.authentications = 0
        self._reactor = reactor
        self._given_http = http
        self._http: Any = None
        self._pool: Optional[HTTPConnectionPool] = None
        self._tls = tls
        self._credentials = credentials
        # None: no token yet; "": etcd's auth is off, send none.
        self._token: Optional[str] = None
        # Callers waiting for the authentication under way, if one is.
        self._auth_waiters: Optional[List[Deferred]] = None
        self._auth_off_logged = False

    @property
    def active_endpoint(self) -> str:
        """The endpoint tried first: the last one that answered."""
        return self.endpoints[self.current]

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """
        Make the HTTP client, unless one was given: persistent connections,
        at most 10 per member (concurrent commits each hold one; the default
        of 2 would queue them behind each other).
        """
        if self._http is not None:
            return
        if self._given_http is not None:
            self._http = self._given_http
            return
        from treq.client import HTTPClient

        self._pool = HTTPConnectionPool(self._reactor, persistent=True)
        self._pool.maxPersistentPerHost = 10
        tls = self._tls
        if tls is None and any(e.startswith("https://") for e in self.endpoints):
            tls = EtcdTLS()
        agent = Agent.usingEndpointFactory(
            self._reactor, _Endpoints(self._reactor, self.timeout / 2, tls), pool=self._pool
        )
        self._http = HTTPClient(agent)

    def stop(self) -> Deferred:
        """Close the pooled connections and forget the token."""
        pool, self._pool = self._pool, None
        self._http = None
        self._token = None
        if pool is None:
            return succeed(None)
        return pool.closeCachedConnections()

    # -- requests -------------------------------------------------------------

    async def call(self, path: str, body: dict, write: bool = False) -> dict:
        """
        Send one request, failing over between endpoints (see the module
        docstring); the endpoint that answers becomes the active one.

        @raise Ambiguous: a write's answer was lost.
        @raise StoreUnavailable: no endpoint could serve it, or etcd refused
            the credentials.
        @raise Exception: what L{translate} makes of any other error answer.
        """

        def attempt(endpoint: str) -> Awaitable[dict]:
            return self.request(endpoint, path, body)

        try:
            return await self._rounds(attempt, write, _ROUNDS)
        except Answered as e:
            raise self.translate(e, body)

    async def ping(self, patient: bool = False) -> dict:
        """
        Ask the endpoints for their status, in turn from the active one,
        until one reports a leader and no alarm; C{patient} (for opening)
        goes round again for up to a timeout, so an election is waited out.

        @return: that member's status document.
        @raise StoreUnavailable: no member did (no quorum: none knows a
            leader), saying why for each.
        """

        async def status(endpoint: str) -> dict:
            try:
                document = await self.request(endpoint, "/v3/maintenance/status", {})
            except Answered as e:
                raise NotSent(e.message)
            if document.get("errors"):
                raise NotSent("etcd reports: %s" % ("; ".join(map(str, document["errors"])),))
            if str(document.get("leader", "0")) == "0":
                raise NotSent("etcdserver: no leader")
            return document

        return await self._rounds(status, False, _ROUNDS if patient else 1)

    async def _rounds(
        self, attempt: Callable[[str], Awaitable[Any]], write: bool, rounds: int
    ) -> Any:
        """
        The endpoint loop: C{attempt(endpoint)} on each endpoint in turn from
        the active one, until one succeeds; then round again, after a pause,
        while the first round began less than a timeout ago (a pooled
        connection that a restarted member closed, or an election, is over
        in a moment, and a client should not see it).

        A failure that proves nothing was applied (L{NotSent}, etcd's "no
        leader") moves on; so does any failure of a read. A write whose
        answer was lost raises L{Ambiguous} at once, so a write gets to the
        end of a round only if no endpoint can have applied it, and may go
        round again as safely. Another error answer is raised as it is.
        """
        reasons: List[str] = []
        count = len(self.endpoints)
        began = self._reactor.seconds()
        for round_ in range(rounds):
            if round_:
                if self._reactor.seconds() - began >= self.timeout:
                    break
                await deferLater(self._reactor, _RETRY_PAUSE)
            reasons = []
            start = self.current
            for step in range(count):
                index = (start + step) % count
                endpoint = self.endpoints[index]
                try:
                    result = await attempt(endpoint)
                except NotSent as e:
                    reasons.append("%s: %s" % (endpoint, e))
                    continue
                except Ambiguous as e:
                    if write:
                        self.current = (index + 1) % count
                        raise Ambiguous("%s: %s" % (endpoint, e))
                    reasons.append("%s: %s" % (endpoint, e))
                    continue
                except Answered as e:
                    if e.unavailable:
                        if write and not any(s in e.message for s in _SAFE_UNAVAILABLE):
                            self.current = (index + 1) % count
                            raise Ambiguous("%s: %s" % (endpoint, e.message))
                        reasons.append("%s: %s" % (endpoint, e.message))
                        continue
                    self.current = index
                    raise
                self.current = index
                return result
        raise StoreUnavailable(_unavailable(reasons))

    async def request(self, endpoint: str, path: str, body: dict) -> dict:
        """
        One request to one endpoint, with the auth token when there are
        credentials: got first if there is none yet, and got afresh (once)
        when etcd refuses it, then the request is repeated (a refused
        request was not applied).

        @raise NotSent: nothing reached etcd (or the token could not be
            had there).
        @raise Ambiguous: the answer was lost.
        @raise Answered: etcd answered with an error document.
        @raise StoreUnavailable: etcd refused the credentials.
        """
        if self._credentials is None:
            return await self._post(endpoint, path, body, None)
        token = await self._token_for(endpoint)
        try:
            return await self._post(endpoint, path, body, token)
        except Answered as e:
            if not is_token_refusal(e.message):
                raise
            log.info(
                "etcd refused the auth token ({why}); authenticating as {user} again",
                why=e.message,
                user=self._credentials.user,
            )
        token = await self._token_for(endpoint, stale=token)
        return await self._post(endpoint, path, body, token)

    def open_stream(self, endpoint: str, path: str, body: dict) -> Deferred:
        """
        Start a streamed request (the watch) on C{endpoint}, with the token.

        @return: a Deferred (cancel it to give up) firing with the response,
            whose body the caller reads, and the token it was sent with
            (L{None} without credentials): if etcd refuses that token in
            the stream, pass it to L{token_refused}.
        """
        return Deferred.fromCoroutine(self._open_stream(endpoint, path, body))

    async def _open_stream(self, endpoint: str, path: str, body: dict) -> Tuple[Any, Optional[str]]:
        token = None
        if self._credentials is not None:
            token = await self._token_for(endpoint)
        response = await self._http.post(
            endpoint + path, data=_encode(body), headers=self._headers(token), unbuffered=True
        )
        return response, token

    def token_refused(self, token: Optional[str]) -> None:
        """
        etcd refused C{token} (in a stream): the next request authenticates
        again, unless the token was renewed already.
        """
        if token is not None and token == self._token:
            self._token = None

    def _headers(self, token: Optional[str]) -> Headers:
        headers = Headers(
            {
                b"Content-Type": [b"application/json"],
                # A member without a leader refuses at once ("no leader",
                # before any proposal, so a write surely did not apply)
                # instead of timing out: failover and the no-quorum answer
                # come quickly. A watch is canceled when its member loses
                # the leader, rather than left silent in a minority.
                b"Grpc-Metadata-Hasleader": [b"true"],
            }
        )
        if token:
            # etcd takes the bare token (no "Bearer").
            headers.setRawHeaders(b"Authorization", [token.encode("ascii")])
        return headers

    async def _post(self, endpoint: str, path: str, body: dict, token: Optional[str]) -> dict:
        """
        One request to one endpoint, bounded by the timeout.

        @raise NotSent: nothing reached etcd.
        @raise Ambiguous: the answer was lost.
        @raise Answered: etcd answered with an error document.
        """
        data = _encode(body)

        async def exchange():
            response = await self._http.post(
                endpoint + path, data=data, headers=self._headers(token), unbuffered=True
            )
            content = await _read_body(response)
            return response.code, content

        def timed_out(result, timeout):
            # Whatever the cancellation turned into (CancelledError, or
            # ResponseNeverReceived wrapping it), it was our timeout.
            return Failure(TimedOut("no answer within %gs" % (timeout,)))

        d = Deferred.fromCoroutine(exchange())
        d.addTimeout(self.timeout, self._reactor, onTimeoutCancel=timed_out)
        try:
            status, content = await d
        except TimedOut:
            raise
        except _CONNECT_ERRORS as e:
            raise NotSent(describe(e))
        except Exception as e:
            handshake = _tls_refusal(e)
            if handshake is not None:
                # No request is read over a TLS session that never began.
                raise NotSent(handshake)
            # ResponseNeverReceived, ResponseFailed, connection lost...: the
            # request may have reached etcd.
            lost = describe(e)
            if endpoint.startswith("http://") and _closed_unanswered(e):
                # What a TLS member does to plain HTTP.
                lost += " (if the member expects TLS, use https: etcds:// in --store)"
            raise Ambiguous(lost)
        try:
            document = json.loads(content.decode("utf-8"))
        except ValueError:
            document = None
        if not isinstance(document, dict):
            if status == 400 and b"CommonName of client" in content:
                # etcd's embed/serve.go: with --client-cert-auth and auth on,
                # the gateway cannot pass a certificate's CN on as the user.
                raise NotSent(
                    "etcd refuses a client certificate with a CommonName on its "
                    "JSON gateway while its auth is on (HTTP 400); give kvtwist a "
                    "client certificate without a CN (the user comes from the password)"
                )
            foreign = "not an etcd v3 gateway (HTTP %d, %d bytes)" % (status, len(content))
            if status >= 500 or status == 200:
                raise Ambiguous(foreign)
            raise NotSent(foreign)
        if status == 200 and "code" not in document:
            return document
        code = document.get("code")
        message = document.get("message") or document.get("error")
        if not isinstance(code, int) or not isinstance(message, str):
            raise Ambiguous("unexpected etcd answer (HTTP %d)" % (status,))
        raise Answered(status, code, message)

    # -- authentication -----------------------------------------------------------

    async def _token_for(self, endpoint: str, stale: Optional[str] = None) -> str:
        """
        The token to send (C{""} when etcd's auth is off): the current one,
        unless there is none or it is C{stale}; then one authentication on
        C{endpoint}, shared with every caller that asks meanwhile.
        """
        if self._token is not None and self._token != stale:
            return self._token
        if stale is not None:
            # Until the new one comes, nobody else should send it.
            self._token = None
        waiter: Deferred = Deferred()
        if self._auth_waiters is None:
            # The waiter goes in first: an authentication can finish
            # synchronously (an in-memory client).
            self._auth_waiters = [waiter]
            started = Deferred.fromCoroutine(self._authenticate(endpoint))
            started.addBoth(self._authenticated)
        else:
            self._auth_waiters.append(waiter)
        return await waiter

    def _authenticated(self, result: Any) -> None:
        """Hand the outcome of an authentication to everyone waiting for it."""
        waiters, self._auth_waiters = self._auth_waiters or [], None
        if not isinstance(result, Failure):
            self._token = result
        for waiter in waiters:
            # A waiter cancelled meanwhile (a watch given up) has its result.
            if waiter.called:
                continue
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    async def _authenticate(self, endpoint: str) -> str:
        """
        Get a token from C{endpoint} for the credentials.

        @raise NotSent: the member could not be asked (so the request the
            token was for was not sent either).
        @raise StoreUnavailable: etcd refused the credentials.
        """
        assert self._credentials is not None
        user = self._credentials.user
        try:
            document = await self._post(
                endpoint,
                "/v3/auth/authenticate",
                {"name": user, "password": self._credentials.password},
                None,
            )
        except Ambiguous as e:
            raise NotSent("authenticating as %r: %s" % (user, e))
        except Answered as e:
            if "authentication is not enabled" in e.message:
                if not self._auth_off_logged:
                    self._auth_off_logged = True
                    log.warn(
                        "etcd has authentication disabled: requests go without a "
                        "token (the credentials of {user} are not needed)",
                        user=user,
                    )
                return ""
            if e.unavailable:
                raise NotSent("authenticating as %r: %s" % (user, e.message))
            raise StoreUnavailable(
                "etcd refused the credentials of user %r: %s" % (user, e.message)
            )
        token = document.get("token")
        if not isinstance(token, str) or not token:
            raise NotSent("etcd answered the authentication of %r without a token" % (user,))
        self.authentications += 1
        return token

    # -- errors -------------------------------------------------------------

    def translate(self, answer: Answered, body: dict) -> Exception:
        """
        The exception for an etcd error answer that is not about
        availability; C{body} is the request it answers (to tell how big it
        was).
        """
        message = answer.message
        if "too many operations in txn request" in message:
            # etcd's own limit is lower than kvtwist was told: say so.
            ops = max(len(body.get(part, ())) for part in ("compare", "success", "failure"))
            return LimitExceeded(
                "etcd max-txn-ops",
                min(self.max_txn_ops, ops - 1),
                ops,
                hint="etcd itself refused %d operations in one transaction "
                "(kvtwist is set to allow %d); raise etcd's --max-txn-ops"
                % (ops, self.max_txn_ops),
            )
        if "request is too large" in message:
            # base64 in JSON weighs about 4/3 of the bytes etcd counts
            size = len(json.dumps(body)) * 3 // 4
            return LimitExceeded(
                "etcd max-request-bytes",
                min(self.max_request_bytes, size - 1),
                size,
                hint="etcd itself refused a request of about %d bytes (kvtwist "
                "is set to allow %d); raise etcd's --max-request-bytes"
                % (size, self.max_request_bytes),
            )
        if "compacted" in message:
            return Compacted(message)
        if "requested lease not found" in message:
            return LeaseGone(message)
        if is_token_refusal(message):
            if self._credentials is None:
                return StoreUnavailable(
                    "etcd requires authentication (%s): configure an etcd user "
                    "and password for kvtwist" % (message,)
                )
            return StoreUnavailable("etcd refused a fresh auth token: %s" % (message,))
        if answer.code == GRPC_PERMISSION_DENIED:
            if self._credentials is None:
                # With --client-cert-auth, etcd judges a request without a
                # token as the gateway's own certificate, which is no user.
                return StoreUnavailable(
                    "etcd refused access: %s (kvtwist has no etcd user: if etcd's "
                    "auth is on, configure one and its password)" % (message,)
                )
            return StoreUnavailable(
                "etcd refused access: %s (etcd user %r needs read and write "
                "permission on kvtwist's key prefix range)" % (message, self._credentials.user)
            )
        if answer.code == GRPC_UNAUTHENTICATED:
            return StoreUnavailable("etcd refused access: %s" % (message,))
        return EtcdError("etcd answered HTTP %d: %s" % (answer.status, message))


# -- helpers ----------------------------------------------------------------


def _encode(body: dict) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode("ascii")


def _unavailable(reasons: List[str]) -> str:
    """The detail of a L{StoreUnavailable} after every endpoint failed."""
    detail = "; ".join(reasons) or "no endpoint was tried"
    if any("no leader" in r for r in reasons):
        return (
            "etcd has no leader: a majority of its members is down or cut off "
            "(no quorum), or an election is under way; " + detail
        )
    return "no etcd endpoint could serve the request: " + detail


class _BodyReader(Protocol):
    """Collects a response body for L{_read_body}."""

    def __init__(self, done: Deferred) -> None:
        self.done = done
        self.chunks: List[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        # etcd's gateway always frames its bodies: an end without framing
        # (PotentialDataLoss) may be a truncated answer.
        if reason is None or reason.check(ResponseDone):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


def _read_body(response: Any) -> Deferred:
    """
    The whole body of C{response}. Unlike treq's C{content}, cancelling it
    (our timeout) stops the transfer and closes the connection, so a member
    that stalls mid-body does not keep a connection busy.
    """

    def cancel(_: Deferred) -> None:
        transport = reader.transport
        stop = getattr(transport, "stopProducing", None)
        if stop is not None:
            stop()

    done: Deferred = Deferred(cancel)
    reader = _BodyReader(done)
    response.deliverBody(reader)
    return done


def _ssl_reasons(error: SSL.Error) -> str:
    """OpenSSL's reasons in an L{SSL.Error}, e.g. C{certificate verify failed}."""
    detail = error.args[0] if error.args else ""
    if isinstance(detail, list):
        return "; ".join(str(item[-1]) for item in detail if item) or "unknown TLS error"
    return str(detail) or "unknown TLS error"


def _tls_refusal(error: BaseException) -> Optional[str]:
    """
    The description of a failed TLS handshake inside a transport error (a
    certificate not trusted or not for this host, a client certificate
    refused, a member that does not speak TLS), or L{None}.
    """
    from service_identity import VerificationError

    failures = getattr(error, "reasons", None)
    values = [f.value for f in failures] if failures else [error]
    for value in values:
        if isinstance(value, VerificationError):
            return "TLS: etcd's certificate is not for this host (%s)" % (value,)
        if isinstance(value, SSL.Error):
            reasons = _ssl_reasons(value)
            if any(word in reasons for word in _HANDSHAKE_WORDS):
                return "TLS handshake failed: %s" % (reasons,)
    return None


def _closed_unanswered(error: BaseException) -> bool:
    """Whether the connection was closed cleanly before any answer."""
    failures = getattr(error, "reasons", None) or []
    return isinstance(error, ResponseNeverReceived) and any(
        f.check(net_error.ConnectionDone) for f in failures
    )
