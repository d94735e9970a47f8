# -*- test-case-name: tests.unit.test_staging -*-
"""
Staged writes: the ordered, bounded set of ops a queue or transaction holds
until it is committed.

Staged writes live in memory on the reactor thread. In one process they are
volatile by design: a restart loses them (only commits are durable). On
etcd, the staging area is a node's copy of what etcd holds
(L{kvtwist.store.etcd.transactions}).
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

from kvtwist.errors import LimitExceeded, StagedMemoryFull
from kvtwist.limits import Limits
from kvtwist.model import DeletePrefix, Op

#: Memory one staged op holds beyond its key and value bytes: the op
#: object, the headers of its key string and value bytes, its slot in the
#: staging dict and, in a transaction, its observed revision. Measured with
#: C{tracemalloc} after staging one C{/set} of 100,000 small pairs: 263 B
#: per put in a transaction, 225 in the shared queue, 206 per delete
#: (Python 3.11; 3.13 measures 8 bytes less). Counting it
#: makes C{max_staged_bytes} and C{max_staged_bytes_total} bound the memory
#: staging really takes, not only its payload (see docs/configuration.md).
OP_OVERHEAD = 264


def staged_cost(op: Op) -> int:
    """The bytes one staged op weighs against the staging limits."""
    return OP_OVERHEAD + op.size


def _staged_key(op: Op) -> str:
    """
    The key C{op} is staged under.

    @raise TypeError: for a L{DeletePrefix}, which names no one key: a
        prefix delete is committed at once, never staged.
    """
    if isinstance(op, DeletePrefix):
        raise TypeError("a prefix delete is committed at once, never staged")
    return op.key


class StagedMemory:
    """
    The bytes staged by every queue and transaction of this process
    together, held under C{max_staged_bytes_total}; reactor thread only.

    Ops taken for a commit stay charged until the commit is answered: a
    commit in flight still holds them in memory.

    @ivar limit: the bound, or L{None} for none.
    @ivar used: the bytes charged now.
    """

    def __init__(self, limit: Optional[int] = None) -> None:
        self.limit = limit
        self.used = 0

    def check(self, more: int) -> None:
        """
        @raise StagedMemoryFull: if charging C{more} bytes would pass the limit.
        """
        if self.limit is not None and more > 0 and self.used + more > self.limit:
            raise StagedMemoryFull(self.limit, self.used + more)

    def charge(self, amount: int) -> None:
        """Count C{amount} more bytes (negative: fewer), unchecked."""
        self.used += amount


class StagingArea:
    """
    Staged ops, one per key; staging a key again replaces its op but keeps
    its place in commit order.

    @param memory: the process-wide account its bytes are charged to (by
        default one of its own, unbounded).
    """

    def __init__(self, limits: Limits, memory: Optional[StagedMemory] = None) -> None:
        self._limits = limits
        self._memory = memory if memory is not None else StagedMemory()
        self._ops: Dict[str, Op] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._ops)

    @property
    def size(self) -> int:
        """The staged ops' bytes: key and value bytes plus L{OP_OVERHEAD} each."""
        return self._bytes

    def staged(self, key: str) -> Optional[Op]:
        """The op staged for C{key}, or L{None}."""
        return self._ops.get(key)

    def ops(self) -> List[Op]:
        """The staged ops in commit order."""
        return list(self._ops.values())

    def stage(self, ops: Iterable[Op]) -> None:
        """
        Stage every op of C{ops}, or none of them.

        @raise LimitExceeded: if the area would pass C{max_staged_ops} or
            C{max_staged_bytes}; nothing is staged then.
        @raise StagedMemoryFull: if the process would pass
            C{max_staged_bytes_total}; nothing is staged then.
        """
        incoming, size = self._admit(ops)
        self._ops.update(incoming)
        self._resize(size)

    def admit(self, ops: Iterable[Op]) -> None:
        """
        Check that C{ops} could be staged, staging nothing.

        @raise LimitExceeded: as L{stage} would.
        """
        self._admit(ops)

    def replay(self, ops: Iterable[Op]) -> None:
        """
        Stage C{ops} without checking limits: ops that were admitted when
        they were first staged (a node replaying a transaction kept in etcd).
        """
        size = self._bytes
        for op in ops:
            key = _staged_key(op)
            previous = self._ops.get(key)
            size += staged_cost(op) - (staged_cost(previous) if previous is not None else 0)
            self._ops[key] = op
        self._resize(size)

    def _resize(self, size: int) -> None:
        """Make the area's size C{size}, charging the difference."""
        self._memory.charge(size - self._bytes)
        self._bytes = size

    def _admit(self, ops: Iterable[Op]) -> Tuple[Dict[str, Op], int]:
        """The ops by key and the staged bytes after staging them; raises past a limit."""
        incoming: Dict[str, Op] = {}
        for op in ops:
            incoming[_staged_key(op)] = op
        count = len(self._ops) + sum(1 for key in incoming if key not in self._ops)
        if count > self._limits.max_staged_ops:
            raise LimitExceeded("max_staged_ops", self._limits.max_staged_ops, count)
        size = self._bytes + sum(
            staged_cost(op) - (staged_cost(self._ops[key]) if key in self._ops else 0)
            for key, op in incoming.items()
        )
        if size > self._limits.max_staged_bytes:
            raise LimitExceeded("max_staged_bytes", self._limits.max_staged_bytes, size)
        self._memory.check(size - self._bytes)
        return incoming, size

    def take(self) -> List[Op]:
        """
        Remove and return every staged op, in commit order. Their bytes stay
        charged to the process-wide account until L{settle} is called with
        them, once their commit is answered.
        """
        ops = self.ops()
        self._ops = {}
        self._bytes = 0
        return ops

    def settle(self, ops: Iterable[Op]) -> None:
        """
        Release the bytes of C{ops}, taken for a commit that is now answered
        (put back with L{restore} first if it failed).
        """
        self._memory.charge(-sum(staged_cost(op) for op in ops))

    def restore(self, ops: Iterable[Op]) -> None:
        """
        Put back ops taken for a commit that failed, behind (and overridden
        by) anything staged since. Limits are not re-checked: these ops were
        already admitted.
        """
        merged: Dict[str, Op] = {_staged_key(op): op for op in ops}
        merged.update(self._ops)
        self._ops = merged
        self._resize(sum(staged_cost(op) for op in merged.values()))

    def discard(self) -> None:
        """Drop every staged op and release its bytes (an ended transaction)."""
        self._ops = {}
        self._resize(0)
