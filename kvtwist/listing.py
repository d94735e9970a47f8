# -*- test-case-name: tests.unit.test_web_v1 -*-
"""
Prefix listings as a token sees them: only keys it may read, and a cursor
that never names another key.

A token reads the keys under its read prefixes. A listing of C{prefix}
visits only the parts of the key space that are both under C{prefix} and
readable, in key order, so that:

  - a page is filled with readable keys (unreadable ones are never
    fetched, so there is nothing to skip);
  - the C{next} cursor of a page is its last key, which the token may read:
    following cursors reveals no key name beyond the token's reach;
  - the work of one page is bounded by the page size and the number of the
    token's read prefixes.
"""

from __future__ import annotations

from typing import List, Optional

from kvtwist.auth import Token
from kvtwist.interfaces import IHistoricalStore, IKeyValueStore
from kvtwist.model import Page


def readable_prefixes(token: Token, prefix: str) -> List[str]:
    """
    The prefixes whose keys are exactly the keys under C{prefix} that
    C{token} may read: in key order, none under another, empty when the
    token may read none of them.
    """
    if token.may_read(prefix):
        # Every key under prefix starts with one of the token's prefixes.
        return [prefix]
    narrower: List[str] = []
    # Code point order is the store's UTF-8 byte order, and sorting puts
    # a prefix before the prefixes under it.
    for rule in sorted(rule for rule in token.read if rule.startswith(prefix)):
        if not narrower or not rule.startswith(narrower[-1]):
            narrower.append(rule)
    return narrower


async def list_readable(
    store: IKeyValueStore,
    token: Token,
    prefix: str,
    after: Optional[str],
    limit: int,
    max_bytes: Optional[int] = None,
    at: Optional[int] = None,
) -> Page:
    """
    Up to C{limit} live keys under C{prefix} after C{after} that C{token}
    may read, in key order, as one L{Page} (C{more} when readable keys may
    follow its last). With C{max_bytes}, the page also ends with the entry
    whose key and value bytes reach that bound, as a store's own page does.
    With C{at}, the keys as of that revision (the store must keep history:
    L{IHistoricalStore}).

    A page spanning several of the token's prefixes is read with one store
    call per prefix: on a store with history every call after the first
    reads at the first one's revision, so the page is one picture; on
    others its C{revision} is that of the first call, the lowest, so that
    watching from it misses no change.
    """
    entries: list = []
    used = 0
    revision: Optional[int] = None
    ranges = [
        rule
        for rule in readable_prefixes(token, prefix)
        # A range wholly before the cursor has nothing left to list.
        if after is None or rule > after or after.startswith(rule)
    ]
    for index, rule in enumerate(ranges):
        cursor = after
        while True:
            left = None if max_bytes is None else max_bytes - used
            if at is None:
                page = await store.list(rule, cursor, limit - len(entries), left)
                if IHistoricalStore.providedBy(store):
                    at = page.revision
            else:
                page = await store.list_at(  # type: ignore[attr-defined]
                    rule, cursor, limit - len(entries), at, left
                )
            if revision is None:
                revision = page.revision
            entries.extend(page.entries)
            used += sum(len(entry.key) + len(entry.value) for entry in page.entries)
            if len(entries) >= limit or (max_bytes is not None and used >= max_bytes):
                return Page(revision, tuple(entries), page.more or index + 1 < len(ranges))
            if not (page.more and page.entries):
                break
            # A store page may end short of what was asked: go on in it.
            cursor = page.entries[-1].key
    if revision is None:
        # Nothing readable to visit.
        revision = at if at is not None else store.revision
    return Page(revision, tuple(entries), False)
