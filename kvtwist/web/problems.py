# -*- test-case-name: tests.unit.test_web_v1,tests.unit.test_docs -*-
"""
Problem details (RFC 9457) for every error kvtwist answers, and the one
place where domain errors become HTTP statuses.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Dict, Optional, Tuple

from twisted.web.http import RESPONSES

from kvtwist.errors import (
    ConflictError,
    Forbidden,
    Unauthorized,
    HistoryGone,
    HistoryUnsupported,
    RevisionCompacted,
    HostNotAllowed,
    InsufficientStorage,
    InvalidInput,
    KeyNotFound,
    LeaseNotFound,
    LeasesUnsupported,
    KVError,
    LimitExceeded,
    NotAnInteger,
    PreconditionFailed,
    StagedMemoryFull,
    StoreCorrupt,
    StoreUnavailable,
    TransactionNotFound,
)

PROBLEM_CONTENT_TYPE = b"application/problem+json"
#: Problem C{type} URIs are this base plus the stable code; docs/errors.md
#: describes each code.
TYPE_BASE = "urn:kvtwist:error:"


def _title(status: int) -> str:
    """The reason phrase of C{status} (Twisted's table lacks some, like 431)."""
    phrase = RESPONSES.get(status)
    if phrase is not None:
        return phrase.decode("ascii")
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_body(status: int, code: str, detail: str, **extra: object) -> bytes:
    """The problem+json document for one error."""
    document: Dict[str, object] = {
        "type": TYPE_BASE + code,
        "title": _title(status),
        "status": status,
        "detail": detail,
        "code": code,
    }
    document.update(extra)
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


def _conflicts(error: ConflictError) -> list:
    return [
        {
            "key": failure.check.key,
            "check": failure.check.kind,
            "expected": failure.check.revision,
            "actual": failure.actual,
            **({"tag": failure.check.tag} if failure.check.tag is not None else {}),
        }
        for failure in error.failures
    ]


def status_for(error: KVError) -> int:
    """The HTTP status a domain error is answered with."""
    if isinstance(error, InvalidInput):
        return 400
    if isinstance(error, Unauthorized):
        return 401
    if isinstance(error, Forbidden):
        return 403
    if isinstance(error, (KeyNotFound, TransactionNotFound, LeaseNotFound)):
        return 404
    if isinstance(error, (ConflictError, NotAnInteger)):
        return 409
    if isinstance(error, HostNotAllowed):
        # Misdirected Request: this server does not answer for that name.
        return 421
    if isinstance(error, PreconditionFailed):
        return 412
    if isinstance(error, (HistoryGone, RevisionCompacted)):
        return 410
    if isinstance(error, (HistoryUnsupported, LeasesUnsupported)):
        return 501
    if isinstance(error, StagedMemoryFull):
        return 503
    if isinstance(error, LimitExceeded):
        return 429 if error.too_many else 413
    if isinstance(error, InsufficientStorage):
        return 507
    if isinstance(error, (StoreUnavailable, StoreCorrupt)):
        return 503
    return 400


def problem_for(error: KVError) -> Tuple[int, bytes]:
    """The status and problem+json body for a domain error."""
    status = status_for(error)
    extra = dict(error.extra)
    if isinstance(error, ConflictError):
        extra["conflicts"] = _conflicts(error)
    return status, problem_body(status, error.code, error.detail, **extra)


def not_found_body(detail: Optional[str] = None) -> bytes:
    """The body of a plain 404 for an unknown path or method."""
    return problem_body(404, "not-found", detail or "no such resource")
