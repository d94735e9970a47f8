# -*- test-case-name: tests.property.test_history_model -*-
"""
What every local store shares about history (see
L{kvtwist.interfaces.IHistoricalStore}): which revisions a read may ask
for, the record kinds, and the in-memory history of
L{kvtwist.testing.MemoryStore}.

Compaction at C{C} keeps, per key, only what a read at C{C} or later
needs: every record after C{C}, and the key's last record at or before
C{C} if that record is a put (a tombstone at or before C{C} reads the same
as no record at all). It goes through the history in revision order, in
steps of whole revisions, so one step is bounded by a record count (or by
one commit, if that alone is larger).
"""

from __future__ import annotations

from collections import deque
from typing import Deque, Dict, List, Optional, Tuple

from zope.interface import alsoProvides

from kvtwist.errors import FutureRevision, RevisionCompacted
from kvtwist.interfaces import IHistoricalStore
from kvtwist.model import Change, CommitResult, Entry

#: History record kinds, as the change kinds of L{kvtwist.model.Change}.
PUT = "put"
DELETE = "delete"
EXPIRE = "expire"
#: The small integer each kind is stored as on disk.
KIND_CODES = {PUT: 0, DELETE: 1, EXPIRE: 2}
KINDS = {code: kind for kind, code in KIND_CODES.items()}


def keeps_history_of(wrapper: object, store: object) -> None:
    """
    Declare that C{wrapper} provides L{IHistoricalStore} when the C{store}
    it wraps (and forwards history calls to) does: a wrapper keeps history
    exactly when what it wraps does.
    """
    if IHistoricalStore.providedBy(store):
        alsoProvides(wrapper, IHistoricalStore)


def replayed_change(kind: str, key: str, entry: Optional[Entry], before: Optional[Entry]) -> Change:
    """
    The L{Change} a history record replays, given the key's record before
    it (C{before}): as the commit reported it. A put that created its key
    (a new create revision) had no previous entry, even if an expired one
    was still stored then.
    """
    if kind == PUT and entry is not None and entry.create_revision == entry.mod_revision:
        before = None
    return Change(kind, key, entry, before)


def check_readable(revision: int, compact_revision: int, current: int) -> None:
    """
    Refuse a read at C{revision} that the history cannot answer.

    @raise FutureRevision: C{revision} is after C{current}.
    @raise RevisionCompacted: C{revision} is before C{compact_revision}.
    """
    if revision > current:
        raise FutureRevision(revision, current)
    if revision < compact_revision:
        raise RevisionCompacted(revision, compact_revision)


def check_replayable(after: int, compact_revision: int) -> None:
    """
    @raise RevisionCompacted: events after C{after} are no longer all kept.
    """
    if after < compact_revision:
        raise RevisionCompacted(after, compact_revision)


def check_compactable(revision: int, current: int) -> None:
    """
    @raise FutureRevision: C{revision} is after C{current}.
    """
    if revision > current:
        raise FutureRevision(revision, current)


def step_end(target: int, next_revision: Optional[int], first_revision: Optional[int]) -> int:
    """
    Where one compaction step towards C{target} ends.

    @param next_revision: the revision of the first record past the step's
        record budget, or L{None} if the budget reaches past the end.
    @param first_revision: the revision of the first record the step
        compacts, or L{None} if there is none.
    @return: the step's compact revision: whole revisions only, at least
        one revision of progress when there are records to compact.
    """
    if next_revision is None or first_revision is None:
        return target
    end = next_revision - 1
    if end < first_revision:
        # One commit alone has more records than the budget: take it whole.
        end = next_revision
    return min(end, target)


#: One record of a key's history: its revision, kind and, for a put, the
#: entry written.
Version = Tuple[int, str, Optional[Entry]]


class MemoryHistory:
    """
    The history of L{kvtwist.testing.MemoryStore}: every key's versions,
    plus the log of records in revision order that compaction walks.
    """

    def __init__(self) -> None:
        self.compact_revision = 0
        self._versions: Dict[str, List[Version]] = {}
        #: (revision, key) of every record not yet passed by compaction.
        self._log: Deque[Tuple[int, str]] = deque()
        self.size = 0

    def record(self, result: CommitResult) -> None:
        """Keep the changes of one applied commit."""
        for change in result.changes:
            self._versions.setdefault(change.key, []).append(
                (result.revision, change.kind, change.entry)
            )
            self._log.append((result.revision, change.key))
            self.size += 1

    def entry_at(self, key: str, revision: int) -> Optional[Entry]:
        """C{key}'s entry as of C{revision}, expired or not; L{None} if absent."""
        found = None
        for at, _, entry in self._versions.get(key, ()):
            if at > revision:
                break
            found = entry
        return found

    def changes(self, after: int, upto: int, max_records: int) -> List[CommitResult]:
        """The commits in C{(after, upto]}, whole, about C{max_records} changes at most."""
        grouped: Dict[int, List[Change]] = {}
        count = 0
        for revision, key in self._log:
            if revision <= after:
                continue
            if revision > upto or (count >= max_records and revision not in grouped):
                break
            kind, entry = next((v[1], v[2]) for v in self._versions[key] if v[0] == revision)
            grouped.setdefault(revision, []).append(
                replayed_change(kind, key, entry, self.entry_at(key, revision - 1))
            )
            count += 1
        return [
            CommitResult(revision, tuple(sorted(changes, key=lambda c: c.key.encode("utf-8"))))
            for revision, changes in grouped.items()
        ]

    def keys(self) -> List[str]:
        """Every key with a record."""
        return list(self._versions)

    def compact(self, target: int, max_records: int) -> int:
        """One compaction step towards C{target}; returns the compact revision."""
        if target <= self.compact_revision:
            return self.compact_revision
        log = self._log
        budget = max_records
        while log and log[0][0] <= target:
            revision = log[0][0]
            if budget <= 0:
                break
            while log and log[0][0] == revision:
                _, key = log.popleft()
                budget -= 1
                self._forget_before(key, revision)
        self.compact_revision = target if not log else min(target, log[0][0] - 1)
        return self.compact_revision

    def _forget_before(self, key: str, revision: int) -> None:
        """Drop C{key}'s records before C{revision}, and a tombstone at it."""
        versions = self._versions[key]
        kept = [v for v in versions if v[0] > revision or (v[0] == revision and v[1] == PUT)]
        self.size -= len(versions) - len(kept)
        if kept:
            self._versions[key] = kept
        else:
            del self._versions[key]
