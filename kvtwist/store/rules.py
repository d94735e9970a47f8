# -*- test-case-name: tests.contract.test_store_memory -*-
"""
The commit rules every local store shares: how checks are evaluated, how
revisions, versions and create revisions advance, what an expired key means.

A store supplies a L{Table} (its raw rows) and calls L{apply_commit} inside
whatever makes its writes atomic. Keeping the rules in one function is what
lets the memory fake and the shelve store pass one contract suite.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Protocol, Sequence, Tuple, TypeVar, Union

from kvtwist.errors import ConflictError, InvalidInput, LimitExceeded, NotAnInteger
from kvtwist.model import (
    Change,
    Check,
    CheckFailure,
    CommitResult,
    Delete,
    DeletePrefix,
    Entry,
    Expire,
    Incr,
    JSON_CONTENT_TYPE,
    KeyedOp,
    Op,
    Put,
)
from kvtwist.strictjson import encode, parse

#: Some kinds of op: L{final_ops} and L{fold_increments} answer in the
#: kinds they are given (a commit's expanded ops have no L{DeletePrefix}).
_Ops = TypeVar("_Ops", bound=Op)


class Table(Protocol):
    """Raw access to a store's rows, expired ones included."""

    def read(self, key: str) -> Optional[Entry]:
        """The stored entry for C{key}, live or expired, or L{None}."""

    def write(self, entry: Entry) -> None:
        """Store C{entry} under its key."""

    def remove(self, key: str) -> None:
        """Remove C{key}'s row if present."""

    def keys_under(self, prefix: str) -> Iterable[str]:
        """Every stored key starting with C{prefix}, expired ones included."""


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


def final_ops(ops: Iterable[_Ops]) -> Dict[str, _Ops]:
    """
    The op that wins for each key (the last one given), keyed in the order
    keys first appear.

    @raise TypeError: for a L{DeletePrefix}, which names no one key (expand
        it first: L{expand_prefix_deletes}).
    """
    result: Dict[str, _Ops] = {}
    for op in ops:
        if isinstance(op, DeletePrefix):
            raise TypeError("a prefix delete names no one key; expand it first")
        result[op.key] = op
    return result


def touched_keys(ops: Iterable[Op], checks: Iterable[Check]) -> List[str]:
    """The keys C{ops} and C{checks} name (a L{DeletePrefix} names none)."""
    keys = [op.key for op in ops if not isinstance(op, DeletePrefix)]
    return keys + [check.key for check in checks]


def expand_prefix_deletes(table: Table, ops: Sequence[Op], now: float) -> List[KeyedOp]:
    """
    C{ops} with each L{DeletePrefix} replaced by a L{Delete} of every key
    under its prefix at that point of the commit: stored keys, and keys
    written by the commit's earlier ops.

    @raise LimitExceeded: when more live keys than the op's C{max_keys}
        would go (C{max_keys_per_request}: a prefix delete names each key
        it deletes); C{table} is untouched.
    """
    expanded: List[KeyedOp] = []
    for op in ops:
        if not isinstance(op, DeletePrefix):
            expanded.append(op)
            continue
        keys = dict.fromkeys(table.keys_under(op.prefix))
        written = {o.key: o for o in expanded if o.key.startswith(op.prefix)}
        keys.update(dict.fromkeys(written))
        doomed = [
            key for key in keys
            if isinstance(written.get(key), Put)
            or (key not in written and live(table.read(key), now) is not None)
        ]
        if len(doomed) > op.max_keys:
            raise LimitExceeded(
                "max_keys_per_request",
                op.max_keys,
                len(doomed),
                hint="a prefix delete counts each key it deletes",
            )
        expanded.extend(Delete(key) for key in doomed)
    return expanded


def counter_value(key: str, value: bytes, content_type: str) -> int:
    """
    The integer a counter's stored value holds.

    @raise NotAnInteger: unless it is a JSON integer stored as JSON.
    """
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        try:
            number = parse(value)
        except InvalidInput:
            number = None
        if type(number) is int:
            return number
    raise NotAnInteger(key)


def increment(base: "Optional[Put | Entry]", op: Incr) -> Put:
    """
    The write C{op} makes over C{base}, the key's live entry or staged
    write (None: absent, counted as 0); the expiry is kept.

    @raise NotAnInteger: when C{base} holds no JSON integer.
    """
    current = counter_value(op.key, base.value, base.content_type) if base is not None else 0
    expires = base.expires if base is not None else None
    return Put(op.key, encode(current + op.by), JSON_CONTENT_TYPE, expires)


def fold_increments(ops: Sequence[_Ops]) -> List[Union[_Ops, Put, Incr]]:
    """
    C{ops} with each L{Incr} that follows a write of its key in the same
    commit resolved against that write (a L{Put}, or absent after a
    L{Delete}), and increments of one key in a row merged. What is left
    are increments of the stored value, each the first write of its key.

    @raise NotAnInteger: when a write before an increment is not an integer.
    """
    folded: List[Union[_Ops, Put, Incr]] = []
    last: Dict[str, int] = {}
    for op in ops:
        if isinstance(op, DeletePrefix):
            folded.append(op)
            continue
        key = op.key
        if isinstance(op, Incr) and key in last:
            earlier = folded[last[key]]
            # (After the sweeper's Expire the key may or may not go: the
            # increment is left to meet the stored state.)
            if not isinstance(earlier, Expire):
                merged: Union[Put, Incr] = op
                if isinstance(earlier, Incr):
                    merged = Incr(key, earlier.by + op.by)
                elif isinstance(earlier, Put):
                    merged = increment(earlier, op)
                elif isinstance(earlier, Delete):
                    merged = increment(None, op)
                folded[last[key]] = merged
                continue
        last[key] = len(folded)
        folded.append(op)
    return folded


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
    @raise LimitExceeded: if a L{DeletePrefix} would delete too many keys;
        C{table} is then untouched.
    """
    failures = failed_checks(table, checks, now)
    if failures:
        raise ConflictError(failures)
    writes = [
        increment(live(table.read(op.key), now), op) if isinstance(op, Incr) else op
        for op in fold_increments(expand_prefix_deletes(table, ops, now))
    ]
    planned: List[Tuple[Union[Put, Delete, Expire], Optional[Entry]]] = []
    for op in final_ops(writes).values():
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
