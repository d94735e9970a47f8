"""
The commit rules every local store shares: how checks are evaluated, how
revisions, versions and create revisions advance, what an expired key means.

A store supplies a L{Table} (its raw rows) and calls L{apply_commit} inside
whatever makes its writes atomic. Keeping the rules in one function is what
lets the memory fake and the shelve store pass one contract suite.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional, Protocol, Sequence

from kvtwist.errors import ConflictError
from kvtwist.model import (
    Change,
    Check,
    CheckFailure,
    CommitResult,
    Delete,
    Entry,
    Expire,
    Op,
    Put,
)


class Table(Protocol):
    """Raw access to a store's rows, expired ones included."""

    def read(self, key: str) -> Optional[Entry]:
        """The stored entry for C{key}, live or expired, or L{None}."""

    def write(self, entry: Entry) -> None:
        """Store C{entry} under its key."""

    def remove(self, key: str) -> None:
        """Remove C{key}'s row if present."""


def live(entry: Optional[Entry], now: float) -> Optional[Entry]:
    """C{entry} if it exists and has not expired at C{now}, else L{None}."""
    if entry is not None and entry.is_live(now):
        return entry
    return None


def failed_checks(
    table: Table, checks: Iterable[Check], now: float
) -> Sequence[CheckFailure]:
    """Every check in C{checks} that does not hold on C{table} at C{now}."""
    failures = []
    for check in checks:
        entry = live(table.read(check.key), now)
        actual = entry.mod_revision if entry is not None else 0
        if not check.holds(actual):
            failures.append(CheckFailure(check, actual))
    return failures


def final_ops(ops: Iterable[Op]) -> Dict[str, Op]:
    """
    The op that wins for each key (the last one given), keyed in the order
    keys first appear.
    """
    result: Dict[str, Op] = {}
    for op in ops:
        result[op.key] = op
    return result


def count_delta(result: CommitResult) -> int:
    """How a commit changed the number of stored keys."""
    delta = 0
    for change in result.changes:
        if change.kind == "put" and change.previous is None:
            delta += 1
        elif change.kind != "put":
            delta -= 1
    return delta


def apply_commit(
    table: Table,
    revision: int,
    ops: Sequence[Op],
    checks: Sequence[Check],
    now: float,
) -> CommitResult:
    """
    Check, then apply, one commit to C{table}, whose last revision is
    C{revision}.

    @raise ConflictError: if a check failed; C{table} is then untouched.
    """
    failures = failed_checks(table, checks, now)
    if failures:
        raise ConflictError(failures)
    planned = []
    for op in final_ops(ops).values():
        stored = table.read(op.key)
        if isinstance(op, Expire):
            if (
                stored is not None
                and stored.mod_revision == op.mod_revision
                and (op.leased or not stored.is_live(now))
            ):
                planned.append((op, stored))
            continue
        previous = live(stored, now)
        if isinstance(op, Put) or previous is not None:
            planned.append((op, previous))
    if not planned:
        return CommitResult(revision, ())
    new_revision = revision + 1
    changes = []
    for op, previous in planned:
        if isinstance(op, (Delete, Expire)):
            table.remove(op.key)
            kind = "expire" if isinstance(op, Expire) else "delete"
            changes.append(Change(kind, op.key, None, previous))
            continue
        entry = Entry(
            key=op.key,
            value=op.value,
            content_type=op.content_type,
            create_revision=(
                previous.create_revision if previous is not None else new_revision
            ),
            mod_revision=new_revision,
            version=previous.version + 1 if previous is not None else 1,
            expires=op.expires,
        )
        table.write(entry)
        changes.append(Change("put", op.key, entry, previous))
    return CommitResult(new_revision, tuple(changes))
