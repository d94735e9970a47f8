# -*- test-case-name: tests.unit.test_web_history -*-
"""
What the v1 routes share to read the past: the store's history ability,
the C{revision} query parameter, and the listing cursor that pins a paged
listing to its first page's revision.

The cursor: a listing page with more keys after it carries, beside C{next}
(the last key, for C{after=}, as before), a C{cursor}: opaque to clients,
it holds the listing's revision and the last key. C{?cursor=} continues
the listing at that same revision, so every page of one listing is one
picture while writes go on. On a store without history the cursor holds
the key only, and each page is read at its own revision.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Optional, Tuple

from twisted.web.server import Request

from kvtwist.errors import HistoryUnsupported, InvalidInput
from kvtwist.interfaces import IHistoricalStore, IKeyValueStore
from kvtwist.strictjson import check_key, parse_revision
from kvtwist.web.v1.base import query_arg


def historical(store: IKeyValueStore) -> IHistoricalStore:
    """
    C{store}, if it keeps history.

    @raise HistoryUnsupported: otherwise.
    """
    if not IHistoricalStore.providedBy(store):
        raise HistoryUnsupported()
    return store


def revision_arg(request: Request, name: str = "revision") -> Optional[int]:
    """
    The revision query parameter C{name} (a non-negative integer), or
    L{None} when absent.

    @raise InvalidInput: if it is not a revision.
    """
    raw = query_arg(request, name)
    if raw is None:
        return None
    revision = parse_revision(raw)
    if revision is None:
        raise InvalidInput(
            "bad-parameter", "%s must be a revision (a non-negative integer)" % (name,),
            parameter=name,
        )
    return revision


def encode_cursor(revision: Optional[int], after: str) -> str:
    """The cursor continuing a listing after key C{after} at C{revision}."""
    document = {"k": after} if revision is None else {"k": after, "r": revision}
    raw = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> Tuple[Optional[int], str]:
    """
    The revision (or L{None}) and the key a cursor continues after.

    @raise InvalidInput: for anything L{encode_cursor} did not make.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        document = json.loads(raw.decode("utf-8"))
        after = document["k"]
        revision = document.get("r")
        if not isinstance(after, str) or set(document) - {"k", "r"}:
            raise ValueError(cursor)
        if revision is not None and (type(revision) is not int or revision < 0):
            raise ValueError(cursor)
        check_key(after)
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, InvalidInput):
        raise InvalidInput(
            "bad-cursor",
            "the cursor is not one a listing gave (pass a page's cursor unchanged)",
            parameter="cursor",
        )
    return revision, after
