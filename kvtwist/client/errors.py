# -*- test-case-name: tests.unit.test_client_errors -*-
"""
What a failed call raises: L{KVClientError} for an error answer (or one
that is not what the route gives), with its subclasses for the statuses a
caller handles apart (404, 409, 412), built from the problem+json document;
and L{TimedOut} for a call that ran out of time (L{with_timeout}).
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any, Dict, List, Mapping, Optional

from twisted.internet.defer import Deferred, TimeoutError
from twisted.python.failure import Failure


#: How much of a non-JSON error body is quoted in an error message.
_SNIPPET_CHARS = 200


class KVClientError(Exception):
    """
    The server answered with an error (or with something that is not a
    kvcache answer).

    @ivar status: the HTTP status code.
    @ivar problem: the problem+json document as a dict: C{type}, C{title},
        C{status}, C{detail}, C{code} and extras such as C{missing} or
        C{limit}. When the server did not send problem+json (a proxy's HTML
        page, say), a stand-in with C{code} C{"http-<status>"} and a
        C{detail} quoting the start of the body.
    """

    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        super().__init__(status, dict(problem))
        self.status = status
        self.problem: Dict[str, Any] = dict(problem)

    @property
    def code(self) -> Optional[str]:
        """The problem's stable C{code}, if it has one."""
        code = self.problem.get("code")
        return code if isinstance(code, str) else None

    @property
    def detail(self) -> str:
        """The problem's C{detail}, else its C{title}, else the status phrase."""
        for field in ("detail", "title"):
            value = self.problem.get(field)
            if isinstance(value, str) and value:
                return value
        return _phrase(self.status)

    def __str__(self) -> str:
        code = self.code
        if code:
            return "%d %s: %s" % (self.status, code, self.detail)
        return "%d: %s" % (self.status, self.detail)


class NotFoundError(KVClientError):
    """
    A 404: the key does not exist (C{code} C{"key-not-found"}, with the keys
    in C{problem["missing"]}), the transaction is unknown, finished or
    expired (C{"transaction-not-found"}), or the URL is not a kvcache route
    (C{"not-found"}).
    """

    @property
    def missing(self) -> list:
        """The keys the server named as missing (empty if it named none)."""
        missing = self.problem.get("missing")
        return list(missing) if isinstance(missing, list) else []


class ConflictError(KVClientError):
    """
    A 409: a transaction commit or a batch was refused and nothing of it
    was applied. A retry from the start (re-reading what changed) may
    succeed.

    Each conflict names a check that did not hold: C{{"key", "check"
    ("equals" | "absent" | "present"), "expected" (a revision; 0 means
    absent), "actual" (the key's revision then; 0 if absent), "tag"}}. The
    tag says where the check came from: C{"observed"} (another commit
    changed a key this transaction read or staged), C{"If-Match"} /
    C{"If-None-Match"} (a precondition staged with the write), or, for a
    batch, the index of the op.

    L{transact} raises this error too when one of its C{check} ops does not
    hold; it finds that out before committing, so the problem then has
    C{"detected": "client"} and the transaction has been aborted.
    """

    @property
    def conflicts(self) -> List[Dict[str, Any]]:
        """Every check that did not hold (empty if the server named none)."""
        conflicts = self.problem.get("conflicts")
        return [c for c in conflicts if isinstance(c, dict)] if isinstance(conflicts, list) else []

    @property
    def failed(self) -> List[int]:
        """The indexes of the failing ops of a batch (empty for a transaction)."""
        failed = self.problem.get("failed")
        if not isinstance(failed, list):
            return []
        return [i for i in failed if type(i) is int]


class PreconditionFailedError(KVClientError):
    """
    A 412: the C{If-Match} or C{If-None-Match} of a L{put} or L{remove} did
    not hold; nothing was written.
    """

    @property
    def key(self) -> Optional[str]:
        """The key whose precondition failed, if the server named it."""
        key = self.problem.get("key")
        return key if isinstance(key, str) else None

    @property
    def current_revision(self) -> Optional[int]:
        """The key's revision when the check ran (0: absent), if given."""
        revision = self.problem.get("current_revision")
        return revision if type(revision) is int else None


#: The error class of each status that has its own.
_ERRORS = {404: NotFoundError, 409: ConflictError, 412: PreconditionFailedError}


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "HTTP error"


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > _SNIPPET_CHARS:
        text = text[:_SNIPPET_CHARS] + "..."
    return text


def _problem_from_body(status: int, body: bytes) -> Dict[str, Any]:
    """
    The problem document in an error answer's C{body}.

    Decoded defensively: a body that is not a JSON object (HTML from a
    proxy, plain text, nothing, invalid UTF-8) becomes a stand-in problem
    with C{code} C{"http-<status>"} and the body's first characters as its
    C{detail}, so every error still reads well.
    """
    try:
        document = json.loads(body.decode("utf-8"))
    except ValueError:
        # UnicodeDecodeError and JSONDecodeError are both ValueErrors.
        document = None
    if isinstance(document, dict):
        return document
    snippet = _one_line(body.decode("utf-8", "replace"))
    return {
        "status": status,
        "title": _phrase(status),
        "detail": snippet or _phrase(status),
        "code": "http-%d" % (status,),
    }


def _error(status: int, body: bytes) -> KVClientError:
    problem = _problem_from_body(status, body)
    cls = _ERRORS.get(status, KVClientError)
    return cls(status, problem)


def _bad_response(status: int, detail: str) -> KVClientError:
    return KVClientError(status, {"status": status, "detail": detail, "code": "bad-response"})


class TimedOut(TimeoutError):
    """
    A call given C{seconds} to finish (L{with_timeout}) did not: C{str()}
    names the time (C{"timed out after 2 s"}).

    @ivar seconds: the time it was given.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__("timed out after %g s" % (seconds,))
        self.seconds = seconds


def with_timeout(d: Deferred, seconds: float, clock: Any) -> Deferred:
    """
    Cancel C{d} unless it fires within C{seconds} on C{clock}, and then fail
    it with L{TimedOut} whatever the cancelled call failed with: a treq
    request cancelled mid-way fails with C{ResponseNeverReceived} wrapping
    the cancellation (which Twisted's own C{addTimeout} passes on as it
    is, with no word of the timeout).

    @return: C{d}.
    """

    def timed_out(result: Any, timeout: float) -> Any:
        if isinstance(result, Failure):
            raise TimedOut(timeout)
        return result

    return d.addTimeout(seconds, clock, onTimeoutCancel=timed_out)
