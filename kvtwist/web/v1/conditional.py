# -*- test-case-name: tests.unit.test_web_v1 -*-
"""
Conditional requests (RFC 9110 §13) on keys, where the ETag is the key's
mod_revision: C{If-Match} and C{If-None-Match} become store preconditions on
writes, and C{If-None-Match} gives 304 on reads.

Supported: C{If-Match: *} or one C{"<rev>"}; C{If-None-Match: *} on writes;
C{If-None-Match: *} or a list of C{"<rev>"} (weak or strong) on reads. An
If-Match tag that is not a revision can never match (412).
"""

from __future__ import annotations

from typing import List, Optional

from twisted.web.server import Request

from kvtwist.errors import InvalidInput
from kvtwist.model import Check, Entry
from kvtwist.wire import etag_revision

IF_MATCH = "If-Match"
IF_NONE_MATCH = "If-None-Match"


def _tags(raw: bytes) -> List[str]:
    return [tag.strip() for tag in raw.decode("latin-1").split(",") if tag.strip()]


def _revision(tag: str) -> Optional[int]:
    """The revision an entity tag names (weak or strong), or None if it names none."""
    return etag_revision(tag, weak=True)


def write_checks(request: Request, key: str) -> List[Check]:
    """
    The preconditions of a write to C{key}, tagged with the header they
    come from.

    @raise InvalidInput: for a list in If-Match, or an If-None-Match other
        than C{*} on a write.
    """
    checks: List[Check] = []
    if_match = request.getHeader(b"if-match")
    if if_match is not None:
        tags = _tags(if_match)
        if tags == ["*"]:
            checks.append(Check.present(key, tag=IF_MATCH))
        elif len(tags) == 1:
            revision = _revision(tags[0]) if not tags[0].startswith("W/") else None
            # A tag that names no revision (or a weak one: If-Match compares
            # strongly) can never match, so it must fail: revision -1.
            checks.append(
                Check.equals(key, revision if revision is not None else -1, tag=IF_MATCH)
            )
        else:
            raise InvalidInput(
                "bad-precondition", 'If-Match takes "*" or exactly one "<revision>"'
            )
    if_none_match = request.getHeader(b"if-none-match")
    if if_none_match is not None:
        if _tags(if_none_match) != ["*"]:
            raise InvalidInput(
                "bad-precondition", 'on writes, If-None-Match takes only "*"'
            )
        checks.append(Check.absent(key, tag=IF_NONE_MATCH))
    return checks


def not_modified(request: Request, entry: Optional[Entry]) -> bool:
    """Whether a read of C{entry} should answer 304 (If-None-Match matched)."""
    raw = request.getHeader(b"if-none-match")
    if raw is None or entry is None:
        return False
    tags = _tags(raw)
    if tags == ["*"]:
        return True
    return entry.mod_revision in {_revision(tag) for tag in tags}


def precondition_failures(checks) -> bool:
    """Whether any failed check came from a client's conditional header."""
    return any(f.check.tag in (IF_MATCH, IF_NONE_MATCH) for f in checks)
