# -*- test-case-name: tests.unit.test_web_v1,tests.unit.test_web_seed -*-
"""
Domain errors: what can go wrong with a request, in kvtwist's own terms.

Nothing here knows about HTTP; L{kvtwist.web.problems} maps each error to a
status and a problem+json body in one place.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional, Sequence

from kvtwist.model import CheckFailure


class KVError(Exception):
    """
    Base of every domain error.

    @ivar code: a stable, machine-readable identifier (it becomes the problem
        body's C{code}).
    @ivar detail: a sentence for humans.
    @ivar extra: further problem fields that help the client (C{limit},
        C{size}, C{missing}, ...).
    @ivar limit_name: the configured limit the request was refused under
        (the problem's C{limit_name}), or None when no limit refused it; the
        rejected-requests metric counts the refusal under this name.
    """

    code = "error"
    limit_name: Optional[str] = None

    def __init__(self, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra: Dict[str, object] = extra


class InvalidInput(KVError):
    """The request is malformed: bad JSON, a bad key, a bad parameter."""

    def __init__(self, code: str, detail: str, **extra: object) -> None:
        super().__init__(detail, **extra)
        self.code = code


class KeyNotFound(KVError):
    """One or more keys do not exist (nor are staged, where that counts)."""

    code = "key-not-found"

    def __init__(self, missing: Sequence[str]) -> None:
        missing = list(missing)
        super().__init__(
            "no such key: " + ", ".join(repr(k) for k in missing[:10])
            + (" and %d more" % (len(missing) - 10) if len(missing) > 10 else ""),
            missing=missing,
        )
        self.missing = missing


class Unauthorized(KVError):
    """No bearer token, or one that matches none configured."""

    code = "unauthorized"


class Forbidden(KVError):
    """The token may not do this (to these keys)."""

    code = "forbidden"


class OriginNotAllowed(Forbidden):
    """
    A browser request from a web page of an origin the server does not
    invite (C{--cors-origin}), nor its own: refused before it runs.
    """

    code = "origin-not-allowed"


class HostNotAllowed(KVError):
    """
    A C{Host} the server does not answer for: on a loopback connection a
    name that is not a loopback name nor an C{--allowed-host} (how DNS
    rebinding reaches a local server).
    """

    code = "host-not-allowed"


class TransactionNotFound(KVError):
    """The transaction id is unknown, finished, expired or someone else's."""

    code = "transaction-not-found"


class ConflictError(KVError):
    """
    A commit's preconditions or conflict checks failed; nothing was applied.

    @ivar failures: the L{CheckFailure}s, in the order the checks were given.
    """

    code = "conflict"

    def __init__(self, failures: Iterable[CheckFailure]) -> None:
        self.failures = list(failures)
        keys = sorted({f.check.key for f in self.failures})
        super().__init__(
            "the commit was not applied: %d check(s) failed on %s"
            % (len(self.failures), ", ".join(repr(k) for k in keys[:10]))
        )


class NotAnInteger(KVError):
    """
    An increment met a value that is not a JSON integer (a counter is a
    value stored as JSON whose text is an integer); nothing was applied.
    """

    code = "not-an-integer"

    def __init__(self, key: str) -> None:
        super().__init__(
            "%r does not hold a JSON integer, so it cannot be incremented" % (key,), key=key
        )


class PreconditionFailed(KVError):
    """A conditional request's C{If-Match} / C{If-None-Match} did not hold."""

    code = "precondition-failed"


class LimitExceeded(KVError):
    """
    A configured limit was passed.

    @ivar too_many: C{True} for a count of live things (open transactions,
        watchers: HTTP 429), C{False} for the size of the request itself
        (HTTP 413).
    """

    code = "limit-exceeded"

    def __init__(
        self, name: str, limit: int, size: int, too_many: bool = False, hint: str = ""
    ) -> None:
        detail = "%s is limited to %d; this request needs %d" % (name, limit, size)
        if hint:
            detail += "; " + hint
        super().__init__(detail, limit_name=name, limit=limit, size=size)
        self.limit_name = name
        self.too_many = too_many


class StagedMemoryFull(LimitExceeded):
    """
    Staging would pass C{max_staged_bytes_total}, the bound on what every
    queue and transaction of this process holds together: the server is
    short of memory for staged writes, not the request too big (HTTP 503;
    it clears as transactions commit, abort or expire).
    """

    code = "staged-memory-full"

    def __init__(self, limit: int, size: int) -> None:
        KVError.__init__(
            self,
            "the staged writes of every transaction and the shared queue are "
            "limited to %d bytes together (max_staged_bytes_total); staging "
            "this would make %d. Commit or abort open transactions, or try "
            "again later" % (limit, size),
            limit_name="max_staged_bytes_total",
            limit=limit,
            size=size,
        )
        self.limit_name = "max_staged_bytes_total"
        self.too_many = True


class HistoryGone(KVError):
    """A watch's resume point has left the event history."""

    code = "history-gone"

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(
            "events after revision %d are no longer in the history; resume "
            "from revision %d or later (list the keys again first)" % (requested, oldest),
            oldest_revision=oldest,
            requested_revision=requested,
        )


class RevisionCompacted(KVError):
    """A read or watch asked for a revision that compaction has removed."""

    code = "compacted"

    def __init__(self, requested: int, compact_revision: int) -> None:
        super().__init__(
            "revision %d has been compacted; the oldest revision kept is %d"
            % (requested, compact_revision),
            compact_revision=compact_revision,
            requested_revision=requested,
        )


class FutureRevision(InvalidInput):
    """A read asked for a revision the store has not reached yet."""

    def __init__(self, requested: int, current: int) -> None:
        super().__init__(
            "future-revision",
            "revision %d is in the future; the current revision is %d" % (requested, current),
            requested_revision=requested,
            current_revision=current,
        )


class HistoryUnsupported(KVError):
    """The store does not keep history (reads at a revision, compaction)."""

    code = "history-unsupported"

    def __init__(self) -> None:
        super().__init__(
            "this store does not keep history: reads at a revision and "
            "compaction are not available on it"
        )


class LeaseNotFound(KVError):
    """A lease id that is unknown, revoked or expired."""

    code = "lease-not-found"

    def __init__(self, lease_id: Optional[int]) -> None:
        if lease_id is None:
            # A path segment that is no lease id at all.
            super().__init__("no such lease: lease ids are positive integers below 2**53")
        else:
            super().__init__(
                "no such lease: %d (unknown, revoked or expired)" % (lease_id,), lease=lease_id
            )
        self.lease_id = lease_id


class LeasesUnsupported(KVError):
    """The store does not provide leases."""

    code = "leases-unsupported"

    def __init__(self) -> None:
        super().__init__("this store does not provide leases")


class StoreUnavailable(KVError):
    """The store cannot serve the request now (closed, failing disk, no quorum)."""

    code = "store-unavailable"


class InsufficientStorage(StoreUnavailable):
    """
    The disk is full: nothing of the write was applied, and writes work
    again, without a restart, once space returns.
    """

    code = "insufficient-storage"


class StoreCorrupt(KVError):
    """
    The data on disk is damaged or is not a kvtwist store. Raised at startup
    (which then fails), or by a read that finds a damaged record (answered
    503, never with the garbled value, never as an empty store).
    """

    code = "store-corrupt"
