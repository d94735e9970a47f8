# -*- test-case-name: tests.unit.test_auth -*-
"""
Bearer tokens with per-key-prefix rules.

A L{Token} has a name (what logs and transactions know it by), a secret
(what clients send as C{Authorization: Bearer <secret>}), the key prefixes it
may read and write, and whether it may use the operations endpoints. With no
tokens configured, auth is off and everyone may do everything.

Secrets are compared in constant time (over their SHA-256 digests, so even
their lengths do not leak) and never logged or echoed.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence, Tuple

from kvtwist.errors import Forbidden, Unauthorized


@dataclass(frozen=True)
class Token:
    """
    One configured token.

    @ivar read: key prefixes it may read (C{""} means every key).
    @ivar write: key prefixes it may write; writing does not imply reading.
    @ivar ops: whether it may use /v1/readyz, /v1/metrics and POST /v1/compact
        (any valid token may read /v1/limits; /v1/healthz needs none).
    """

    name: str
    secret: str = field(repr=False)
    read: Tuple[str, ...] = ()
    write: Tuple[str, ...] = ()
    ops: bool = False

    def __post_init__(self) -> None:
        # Prefix tuples are matched with one str.startswith call (C, no
        # generator); "" (every key) short-cuts it on the GET hot path.
        object.__setattr__(self, "_read_all", "" in self.read)
        object.__setattr__(self, "_write_all", "" in self.write)

    def may_read(self, key: str) -> bool:
        return self._read_all or key.startswith(self.read)  # type: ignore[attr-defined]

    @property
    def writes_everything(self) -> bool:
        """Whether it may write every key (then no write needs vetting)."""
        return self._write_all  # type: ignore[attr-defined]

    def may_write(self, key: str) -> bool:
        return self._write_all or key.startswith(self.write)  # type: ignore[attr-defined]


#: The principal of every request when auth is off.
ANYONE = Token("anyone", "", read=("",), write=("",), ops=True)

#: The principal of a request that was never authenticated: it may do
#: nothing. The authenticating top of the tree
#: (L{kvtwist.web.root.Authenticating}) records a principal on every request
#: it lets through to a route that needs one (L{ANYONE} when auth is off), so
#: a route reached some other way is refused rather than open to all.
NOBODY = Token("nobody", "")


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


class Authorizer:
    """Decides who a request is and what it may do."""

    def __init__(self, tokens: Iterable[Token] = ()) -> None:
        self.tokens: List[Token] = list(tokens)
        self._digests = [(_digest(token.secret), token) for token in self.tokens]

    @property
    def enabled(self) -> bool:
        """Auth is on when at least one token is configured."""
        return bool(self.tokens)

    def authenticate(self, authorization: Optional[bytes]) -> Token:
        """
        The token a request's C{Authorization} header names.

        @raise Unauthorized: if auth is on and the header is missing,
            malformed or matches no token.
        """
        if not self.enabled:
            return ANYONE
        if authorization is None:
            raise Unauthorized("this server needs a bearer token (Authorization: Bearer ...)")
        scheme, _, secret = authorization.partition(b" ")
        if scheme.lower() != b"bearer" or not secret.strip():
            raise Unauthorized("use Authorization: Bearer <token>")
        presented = hashlib.sha256(secret.strip()).digest()
        found = None
        # Compare against every token, always, so timing reveals nothing.
        for digest, token in self._digests:
            if hmac.compare_digest(digest, presented):
                found = token
        if found is None:
            raise Unauthorized("the bearer token is not valid")
        return found

    @staticmethod
    def require_read(token: Token, keys: Sequence[str]) -> None:
        """@raise Forbidden: naming the keys C{token} may not read."""
        denied = [key for key in keys if not token.may_read(key)]
        if denied:
            raise Forbidden(
                "token %r may not read %s" % (token.name, ", ".join(map(repr, denied[:10]))),
                keys=denied,
            )

    @staticmethod
    def require_write(token: Token, keys: Sequence[str]) -> None:
        """@raise Forbidden: naming the keys C{token} may not write."""
        denied = [key for key in keys if not token.may_write(key)]
        if denied:
            raise Forbidden(
                "token %r may not write %s" % (token.name, ", ".join(map(repr, denied[:10]))),
                keys=denied,
            )

    @staticmethod
    def require_ops(token: Token) -> None:
        """@raise Forbidden: unless C{token} may use the operations endpoints."""
        if not token.ops:
            raise Forbidden("token %r may not use the operations endpoints" % (token.name,))


@dataclass(frozen=True)
class WriteRights:
    """
    A commit's vet (L{kvtwist.interfaces.ITransaction.commit}): refuses
    ops on keys the token C{name} may not write. Plain data (never the
    secret), so the process that holds a transaction can run it itself
    (with C{--workers}, the owner: the commit then takes one call).
    """

    name: str
    write: Tuple[str, ...]

    @classmethod
    def of(cls, token: Token) -> "WriteRights":
        return cls(token.name, tuple(token.write))

    def __call__(self, ops: Sequence) -> None:
        """@raise Forbidden: naming the keys of C{ops} the token may not write."""
        Authorizer.require_write(Token(self.name, "", write=self.write), [op.key for op in ops])


def principal_of(request) -> Token:
    """
    The token the request was authenticated as (L{ANYONE} if auth is off),
    or L{NOBODY} if it was never authenticated: fail closed.
    """
    return getattr(request, "kvtwist_principal", NOBODY)
