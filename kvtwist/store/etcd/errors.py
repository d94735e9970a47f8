# -*- test-case-name: tests.contract.test_store_etcd -*-
"""
What can go wrong between kvtwist and etcd, named once for every module of
the package: how one request ended (L{NotSent}, L{Ambiguous},
L{Answered}), what etcd's refusals mean (L{Compacted}, L{LeaseGone},
L{is_token_refusal}) and L{EtcdError}, the one that reaches clients.
"""

from __future__ import annotations

__all__ = [
    "Ambiguous",
    "Answered",
    "Compacted",
    "EtcdError",
    "GRPC_DEADLINE_EXCEEDED",
    "GRPC_PERMISSION_DENIED",
    "GRPC_UNAUTHENTICATED",
    "GRPC_UNAVAILABLE",
    "LeaseGone",
    "NotSent",
    "TimedOut",
    "describe",
    "is_token_refusal",
]

# gRPC status codes (etcd's gateway puts them in "code").
GRPC_DEADLINE_EXCEEDED = 4
GRPC_PERMISSION_DENIED = 7
GRPC_UNAVAILABLE = 14
GRPC_UNAUTHENTICATED = 16

# etcd's answers to a token it does not accept (expired, revoked, from
# before an auth change) or to a request without one while auth is on. The
# request was refused before it was applied.
_TOKEN_REFUSED = (
    "invalid auth token",
    "revision of auth store is old",
    "user name is empty",
    "code = Unauthenticated",
)


class EtcdError(Exception):
    """
    etcd answered with an error kvtwist does not expect (a bug or a
    misconfiguration, not a client mistake): answered as a 500 and logged.
    """


# -- transport outcomes ---------------------------------------------------


class NotSent(Exception):
    """The request surely did not reach etcd (or etcd refused it unapplied)."""


class Ambiguous(Exception):
    """The request may or may not have been applied: its answer was lost."""


class TimedOut(Ambiguous):
    """No answer came within the request timeout."""


class Answered(Exception):
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
            self.code in (GRPC_UNAVAILABLE, GRPC_DEADLINE_EXCEEDED)
            or self.status in (503, 504)
        )


class Compacted(Exception):
    """A read at a fixed revision found that revision compacted away."""


class LeaseGone(Exception):
    """A put referred to a lease etcd no longer has."""


def is_token_refusal(message: str) -> bool:
    """
    Whether etcd's error C{message} (or a watch's cancel reason) says it did
    not accept the auth token, or wanted one: authenticating again may help.
    """
    return any(words in message for words in _TOKEN_REFUSED)


def describe(error: BaseException) -> str:
    """A short, str-only description of a transport error."""
    reasons = getattr(error, "reasons", None)
    if reasons:
        # ResponseFailed and friends wrap a list of Failures.
        return "; ".join(
            "%s: %s" % (type(r.value).__name__, r.getErrorMessage()) for r in reasons
        )
    return "%s: %s" % (type(error).__name__, error)
