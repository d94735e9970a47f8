# -*- test-case-name: tests.e2e.test_etcd_tls_auth -*-
"""
How kvtwist reaches a secured etcd: L{EtcdTLS}, the TLS policy for
C{https} endpoints (the CA to trust, a client certificate), and
L{EtcdCredentials}, the user whose token every request carries (see
docs/etcd.md, "TLS" and "Authentication").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from OpenSSL import SSL
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    KeyPair,
    PrivateCertificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

__all__ = ["EtcdCredentials", "EtcdTLS"]

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
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
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
    # The kinds of key OpenSSL can sign a TLS handshake with.
    if not isinstance(key, (
        rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, dsa.DSAPrivateKey,
        ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey,
    )):
        raise ValueError(
            "the etcd client key file %s holds a %s, which TLS cannot use"
            % (path, type(key).__name__)
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

