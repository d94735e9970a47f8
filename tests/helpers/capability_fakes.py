"""
Stores that have a capability's methods without declaring it, and stores
that declare it: a caller must take its fast path for the second kind
only, so a capability renamed or left undeclared shows in a test instead
of quietly taking the slow path.
"""

from __future__ import annotations

from zope.interface import implementer, implementer_only

from kvtwist.interfaces import (
    IHistoricalStore,
    IKeyValueStore,
    ILinearizableReads,
    IReadCache,
)
from kvtwist.testing import MemoryStore


@implementer_only(IKeyValueStore, IHistoricalStore)
class UndeclaredExtras(MemoryStore):
    """
    A MemoryStore with the methods and attributes of L{IWatchedStore},
    L{ILinearizableReads}, L{IReadCache} and L{ICountedStore}, declaring
    none of them: each records its calls, which must never come.
    """

    def __init__(self, clock=None):
        super().__init__(clock)
        self.reset_listeners = []
        self.linearizable_reads = []
        self.peeks = []
        self.hits = 5
        self.misses = 6
        self.size = 7
        self.max_bytes = 8

    def __len__(self):
        return 9

    def add_reset_listener(self, listener):
        self.reset_listeners.append(listener)

    def get_linearizable(self, key):
        self.linearizable_reads.append(key)
        return MemoryStore.get(self, key)

    def peek(self, key):
        self.peeks.append(key)
        return True, None

    def peek_encoded(self, key, encode):
        self.peeks.append(key)
        return None


@implementer(ILinearizableReads)
class DeclaredLinearizable(UndeclaredExtras):
    """L{UndeclaredExtras} declaring L{ILinearizableReads}."""


@implementer(IReadCache)
class DeclaredReadCache(UndeclaredExtras):
    """L{UndeclaredExtras} declaring L{IReadCache} (answering every peek a miss)."""

    def peek(self, key):
        self.peeks.append(key)
        return False, None
