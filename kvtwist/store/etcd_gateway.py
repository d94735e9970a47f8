"""
The HTTP transport between L{kvtwist.store.etcd_store.EtcdStore} and etcd's
v3 JSON gateway (C{POST /v3/...}): the members' endpoints and which one is
active, the one loop that goes round them (for requests and for the ping),
TLS, the auth token, and what etcd's error answers mean.

Endpoints
=========
Endpoints are base URLs of members' client ports, C{http://HOST:PORT} or
C{https://HOST:PORT}, kept in the configured order. A request goes first to
the active endpoint (the last one that answered; the first configured one at
the start), so each node prefers the member its list starts with: give each
node a list that starts with a different member to spread the load. IP
addresses are connected to directly, so a dead member costs a refused
connection, not Twisted's 0.3 s attempt delay (L{HostnameEndpoint}'s).

Failover
========
L{EtcdGateway.call} tries the endpoints in turn from the active one. A
request that surely did not reach etcd (connection refused, connect timeout,
a failed TLS handshake, a member without a leader: every request asks etcd
to refuse at once then, through the gRPC metadata C{hasleader}) or a read
that failed in any way moves on to the next endpoint; requests go round the
endpoints again (pausing briefly) until one timeout has passed, so an
election or a member restart is not seen by clients. A write whose answer
was lost (timeout, dropped connection, etcd's "request timed out") raises
L{_Ambiguous} at once: only the caller can learn whether it applied. When no
endpoint answers, or etcd has no leader, the call fails with
L{StoreUnavailable} naming each endpoint's reason. L{EtcdGateway.ping} goes
round the same loop, asking each member for its status.

TLS
===
For C{https} endpoints every connection, the watch's included, is TLS
through Twisted (L{optionsForClientTLS}): etcd's certificate must chain to
the configured CA certificates (the platform's trust store without them) and
name the endpoint's host (an IP address or DNS name in its subjectAltName);
a client certificate and key are presented when configured (etcd's
C{--client-cert-auth}). L{EtcdTLS} is that policy, an L{IPolicyForHTTPS}.

Authentication
==============
With L{EtcdCredentials}, the gateway gets a token (C{POST
/v3/auth/authenticate} with the user and password) before its first request,
and sends it as the C{Authorization} header of every request and watch.
When etcd refuses the token (it expired: simple tokens live
C{--auth-token-ttl} seconds after their last use; it was revoked by a
password change; etcd's auth revision moved on; or auth was enabled after
kvtwist started without a token), the request was not applied: the gateway
authenticates again, once, and repeats it. Concurrent requests share one
authentication. Wrong credentials fail with L{StoreUnavailable} saying so,
at once. If etcd's auth is disabled the credentials are not needed: a
warning is logged and requests go without a token. The password is never
logged, and neither is the token.

Everything here runs on the reactor thread.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple

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
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    KeyPair,
    PrivateCertificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from kvtwist.errors import LimitExceeded, StoreUnavailable
from kvtwist.limits import ETCD_MAX_REQUEST_BYTES, ETCD_MAX_TXN_OPS

__all__ = [
    "DEFAULT_MAX_REQUEST_BYTES",
    "DEFAULT_MAX_TXN_OPS",
    "EtcdCredentials",
    "EtcdError",
    "EtcdGateway",
    "EtcdTLS",
    "is_token_refusal",
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
# etcd's answers to a token it does not accept (expired, revoked, from
# before an auth change) or to a request without one while auth is on. The
# request was refused before it was applied.
_TOKEN_REFUSED = (
    "invalid auth token",
    "revision of auth store is old",
    "user name is empty",
    "code = Unauthenticated",
)
# gRPC status codes (etcd's gateway puts them in "code").
_GRPC_DEADLINE_EXCEEDED = 4
_GRPC_PERMISSION_DENIED = 7
_GRPC_UNAVAILABLE = 14
_GRPC_UNAUTHENTICATED = 16

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


class EtcdError(Exception):
    """
    etcd answered with an error kvtwist does not expect (a bug or a
    misconfiguration, not a client mistake): answered as a 500 and logged.
    """


# -- transport outcomes ---------------------------------------------------


class _NotSent(Exception):
    """The request surely did not reach etcd (or etcd refused it unapplied)."""


class _Ambiguous(Exception):
    """The request may or may not have been applied: its answer was lost."""


class _TimedOut(_Ambiguous):
    """No answer came within the request timeout."""


class _Answered(Exception):
    """
    etcd answered with an error document.

    @ivar code: the gRPC status code; @ivar message: etcd's message.
    """

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    @property
    def unavailable(self) -> bool:
        """Whether etcd could not serve it now (no quorum, timeouts)."""
        return (
            self.code in (_GRPC_UNAVAILABLE, _GRPC_DEADLINE_EXCEEDED)
            or self.status in (503, 504)
        )


class _Compacted(Exception):
    """A read at a fixed revision found that revision compacted away."""


class _LeaseGone(Exception):
    """A put referred to a lease etcd no longer has."""


def is_token_refusal(message: str) -> bool:
    """
    Whether etcd's error C{message} (or a watch's cancel reason) says it did
    not accept the auth token, or wanted one: authenticating again may help.
    """
    return any(words in message for words in _TOKEN_REFUSED)


# -- TLS and credentials ------------------------------------------------------

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.S
)


def _read_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError("cannot read the %s %s: %s" % (what, path, e.strerror or e))


def _load_certificates(path: str, what: str) -> List[Certificate]:
    """Every PEM certificate in the file at C{path}, in order."""
    blocks = _PEM_CERTIFICATE.findall(_read_file(path, what))
    if not blocks:
        raise ValueError("the %s %s holds no PEM certificate" % (what, path))
    try:
        return [Certificate.loadPEM(block) for block in blocks]
    except Exception as e:
        raise ValueError("the %s %s holds a certificate that cannot be read (%s)" % (what, path, e))


def _load_key(path: str) -> KeyPair:
    """The unencrypted PEM private key at C{path}."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from OpenSSL.crypto import PKey

    data = _read_file(path, "etcd client key file")
    try:
        # cryptography never prompts for a passphrase (OpenSSL's default
        # callback would, on twistd's terminal): an encrypted key fails here.
        key = load_pem_private_key(data, password=None)
    except (TypeError, ValueError) as e:
        raise ValueError(
            "the etcd client key file %s holds no unencrypted PEM private key (%s)" % (path, e)
        )
    return KeyPair(PKey.from_cryptography_key(key))


@implementer(IPolicyForHTTPS)
class EtcdTLS:
    """
    How connections to etcd's members use TLS: etcd's certificate must chain
    to C{authorities} (the platform's trust store when there are none) and
    name the endpoint's host; C{client} is presented when given (etcd's
    C{--client-cert-auth}), with C{chain} (intermediate certificates).

    An L{IPolicyForHTTPS}: one connection creator per member, made once.
    """

    def __init__(
        self,
        authorities: Optional[Sequence[Certificate]] = None,
        client: Optional[PrivateCertificate] = None,
        chain: Sequence[Certificate] = (),
    ) -> None:
        self._trust = (
            trustRootFromCertificates(list(authorities)) if authorities else platformTrust()
        )
        self._client = client
        self._chain = [c.original for c in chain]
        self._creators: Dict[Tuple[bytes, int], Any] = {}

    @classmethod
    def from_files(
        cls, ca: Optional[str] = None, cert: Optional[str] = None, key: Optional[str] = None
    ) -> "EtcdTLS":
        """
        The policy from PEM files: C{ca} holds the CA certificates to trust
        (all of them), C{cert} the client certificate followed by any
        intermediates, C{key} its unencrypted private key.

        @raise ValueError: naming the file that cannot be read or used, or a
            key that does not belong to the certificate.
        """
        if (cert is None) != (key is None):
            raise ValueError("an etcd client certificate needs its key, and a key its certificate")
        authorities = _load_certificates(ca, "etcd CA file") if ca is not None else None
        client = None
        chain: List[Certificate] = []
        if cert is not None and key is not None:
            certificates = _load_certificates(cert, "etcd client certificate file")
            pair = _load_key(key)
            try:
                # Builds an OpenSSL context, which checks that they match.
                CertificateOptions(
                    privateKey=pair.original, certificate=certificates[0].original
                ).getContext()
            except SSL.Error:
                raise ValueError(
                    "the etcd client key %s does not belong to the certificate %s" % (key, cert)
                )
            client = PrivateCertificate.fromCertificateAndKeyPair(certificates[0], pair)
            chain = certificates[1:]
        return cls(authorities, client, chain)

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        """The client connection creator for the member at C{hostname:port}."""
        creator = self._creators.get((hostname, port))
        if creator is None:
            extra = {"extraCertChain": self._chain} if self._chain else None
            creator = optionsForClientTLS(
                hostname.decode("ascii"),
                trustRoot=self._trust,
                clientCertificate=self._client,
                extraCertificateOptions=extra,
            )
            self._creators[(hostname, port)] = creator
        return creator


@dataclass(frozen=True)
class EtcdCredentials:
    """An etcd user and its password (which no repr or message shows)."""

    user: str
    password: str = field(repr=False)


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
    The HTTP client of one etcd store (see the module docstring).

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

        @raise _Ambiguous: a write's answer was lost.
        @raise StoreUnavailable: no endpoint could serve it, or etcd refused
            the credentials.
        @raise Exception: what L{translate} makes of any other error answer.
        """

        def attempt(endpoint: str) -> Awaitable[dict]:
            return self.request(endpoint, path, body)

        try:
            return await self._rounds(attempt, write, _ROUNDS)
        except _Answered as e:
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
            except _Answered as e:
                raise _NotSent(e.message)
            if document.get("errors"):
                raise _NotSent("etcd reports: %s" % ("; ".join(map(str, document["errors"])),))
            if str(document.get("leader", "0")) == "0":
                raise _NotSent("etcdserver: no leader")
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

        A failure that proves nothing was applied (L{_NotSent}, etcd's "no
        leader") moves on; so does any failure of a read. A write whose
        answer was lost raises L{_Ambiguous} at once, so a write gets to the
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
                except _NotSent as e:
                    reasons.append("%s: %s" % (endpoint, e))
                    continue
                except _Ambiguous as e:
                    if write:
                        self.current = (index + 1) % count
                        raise _Ambiguous("%s: %s" % (endpoint, e))
                    reasons.append("%s: %s" % (endpoint, e))
                    continue
                except _Answered as e:
                    if e.unavailable:
                        if write and not any(s in e.message for s in _SAFE_UNAVAILABLE):
                            self.current = (index + 1) % count
                            raise _Ambiguous("%s: %s" % (endpoint, e.message))
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

        @raise _NotSent: nothing reached etcd (or the token could not be
            had there).
        @raise _Ambiguous: the answer was lost.
        @raise _Answered: etcd answered with an error document.
        @raise StoreUnavailable: etcd refused the credentials.
        """
        if self._credentials is None:
            return await self._post(endpoint, path, body, None)
        token = await self._token_for(endpoint)
        try:
            return await self._post(endpoint, path, body, token)
        except _Answered as e:
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

        @raise _NotSent: nothing reached etcd.
        @raise _Ambiguous: the answer was lost.
        @raise _Answered: etcd answered with an error document.
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
            return Failure(_TimedOut("no answer within %gs" % (timeout,)))

        d = Deferred.fromCoroutine(exchange())
        d.addTimeout(self.timeout, self._reactor, onTimeoutCancel=timed_out)
        try:
            status, content = await d
        except _TimedOut:
            raise
        except _CONNECT_ERRORS as e:
            raise _NotSent(_describe(e))
        except Exception as e:
            handshake = _tls_refusal(e)
            if handshake is not None:
                # No request is read over a TLS session that never began.
                raise _NotSent(handshake)
            # ResponseNeverReceived, ResponseFailed, connection lost...: the
            # request may have reached etcd.
            message = _describe(e)
            if endpoint.startswith("http://") and _closed_unanswered(e):
                # What a TLS member does to plain HTTP.
                message += " (if the member expects TLS, use https: etcds:// in --store)"
            raise _Ambiguous(message)
        try:
            document = json.loads(content.decode("utf-8"))
        except ValueError:
            document = None
        if not isinstance(document, dict):
            if status == 400 and b"CommonName of client" in content:
                # etcd's embed/serve.go: with --client-cert-auth and auth on,
                # the gateway cannot pass a certificate's CN on as the user.
                raise _NotSent(
                    "etcd refuses a client certificate with a CommonName on its "
                    "JSON gateway while its auth is on (HTTP 400); give kvtwist a "
                    "client certificate without a CN (the user comes from the password)"
                )
            message = "not an etcd v3 gateway (HTTP %d, %d bytes)" % (status, len(content))
            if status >= 500 or status == 200:
                raise _Ambiguous(message)
            raise _NotSent(message)
        if status == 200 and "code" not in document:
            return document
        code = document.get("code")
        message = document.get("message") or document.get("error")
        if not isinstance(code, int) or not isinstance(message, str):
            raise _Ambiguous("unexpected etcd answer (HTTP %d)" % (status,))
        raise _Answered(status, code, message)

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

        @raise _NotSent: the member could not be asked (so the request the
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
        except _Ambiguous as e:
            raise _NotSent("authenticating as %r: %s" % (user, e))
        except _Answered as e:
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
                raise _NotSent("authenticating as %r: %s" % (user, e.message))
            raise StoreUnavailable(
                "etcd refused the credentials of user %r: %s" % (user, e.message)
            )
        token = document.get("token")
        if not isinstance(token, str) or not token:
            raise _NotSent("etcd answered the authentication of %r without a token" % (user,))
        self.authentications += 1
        return token

    # -- errors -------------------------------------------------------------

    def translate(self, answer: _Answered, body: dict) -> Exception:
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
            return _Compacted(message)
        if "requested lease not found" in message:
            return _LeaseGone(message)
        if is_token_refusal(message):
            if self._credentials is None:
                return StoreUnavailable(
                    "etcd requires authentication (%s): configure an etcd user "
                    "and password for kvtwist" % (message,)
                )
            return StoreUnavailable("etcd refused a fresh auth token: %s" % (message,))
        if answer.code == _GRPC_PERMISSION_DENIED:
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
        if answer.code == _GRPC_UNAUTHENTICATED:
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

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
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


def _describe(error: BaseException) -> str:
    """A short, str-only description of a transport error."""
    reasons = getattr(error, "reasons", None)
    if reasons:
        # ResponseFailed and friends wrap a list of Failures.
        return "; ".join(
            "%s: %s" % (type(r.value).__name__, r.getErrorMessage()) for r in reasons
        )
    return "%s: %s" % (type(error).__name__, error)
