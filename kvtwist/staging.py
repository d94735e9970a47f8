"""
Staged writes: the ordered, bounded set of ops a queue or transaction holds
until it is committed.

Staged writes live in memory on the reactor thread. In one process they are
volatile by design: a restart loses them (only commits are durable). On
etcd, the staging area is a node's copy of what etcd holds
(L{kvtwist.store.etcd_transactions}).
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

from kvtwist.errors import LimitExceeded
from kvtwist.limits import Limits
from kvtwist.model import Op


class StagingArea:
    """
    Staged ops, one per key; staging a key again replaces its op but keeps
    its place in commit order.
    """

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._ops: Dict[str, Op] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._ops)

    @property
    def size(self) -> int:
        """Key and value bytes staged."""
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
        """
        incoming, size = self._admit(ops)
        self._ops.update(incoming)
        self._bytes = size

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
        for op in ops:
            previous = self._ops.get(op.key)
            self._bytes += op.size - (previous.size if previous is not None else 0)
            self._ops[op.key] = op

    def _admit(self, ops: Iterable[Op]) -> Tuple[Dict[str, Op], int]:
        """The ops by key and the staged bytes after staging them; raises past a limit."""
        incoming: Dict[str, Op] = {}
        for op in ops:
            incoming[op.key] = op
        count = len(self._ops) + sum(1 for key in incoming if key not in self._ops)
        if count > self._limits.max_staged_ops:
            raise LimitExceeded("max_staged_ops", self._limits.max_staged_ops, count)
        size = self._bytes + sum(
            op.size - (self._ops[key].size if key in self._ops else 0)
            for key, op in incoming.items()
        )
        if size > self._limits.max_staged_bytes:
            raise LimitExceeded("max_staged_bytes", self._limits.max_staged_bytes, size)
        return incoming, size

    def take(self) -> List[Op]:
        """Remove and return every staged op, in commit order."""
        ops = self.ops()
        self._ops = {}
        self._bytes = 0
        return ops

    def restore(self, ops: Iterable[Op]) -> None:
        """
        Put back ops taken for a commit that failed, behind (and overridden
        by) anything staged since. Limits are not re-checked: these ops were
        already admitted.
        """
        merged: Dict[str, Op] = {op.key: op for op in ops}
        merged.update(self._ops)
        self._ops = merged
        self._bytes = sum(op.size for op in merged.values())
