# -*- test-case-name: tests.unit.test_cache -*-
"""
The read cache: committed entries served from memory on the reactor thread.

A thread hop per GET halves throughput (measured: 0.51 x the bare
twisted.web ceiling), so L{CachedStore} wraps any store and answers reads
from a bounded LRU of entries (and of known-absent keys) without leaving the
reactor thread. Misses go to the store and fill the cache; concurrent misses
on one key share one store read.

Coherence: the cache changes only when a commit is acknowledged, with that
commit's own changes, so a read never sees a half-applied or staged write.
A miss read that was in flight while a commit changed its key is not used
to fill the cache (it may predate the commit). Stores whose data also
changes elsewhere (etcd, other nodes) call L{CachedStore.apply_changes} or
L{CachedStore.invalidate_all} from their watch.

Hot keys also keep what answering them takes, encoded once: the web layer
passes an encoder to L{CachedStore.peek_encoded}, whose result (header
bytes, say) lives and dies with the cached entry, so a commit that changes
the key drops it with the old entry and no answer is ever stale.

The bound is on real memory: each key is charged what its Python objects
take (L{cost}), not only its key and value bytes, so C{--cache-size} bounds
the process's growth.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from kvtwist.interfaces import (
    ICountedStore,
    IKeyValueStore,
    ILinearizableReads,
    IReadCache,
    IWatchedStore,
)
from kvtwist.model import Check, CommitResult, Entry, Op
from kvtwist.store.capabilities import ForwardsHistory, ForwardsLeases, passes_capabilities_of, read_linearizable
from kvtwist.store.history import keeps_history_of
from kvtwist.store.leases import grants_leases_of

# What one cached key costs beyond the strings and bytes it holds, from
# tracemalloc on CPython 3.11 (tests/unit/test_cache.py checks the sums against
# it), rounded up because tracemalloc counts the bytes asked for and the
# allocator hands out 16-byte multiples.
#: Bytes of the key's OrderedDict item (about 92 with the table's slack)
#: and of its _Slot (64).
SLOT_OVERHEAD = 192
#: Bytes of an L{Entry} beyond its key, value and content type: the object
#: and its attribute values (136), three revision ints (32 each) and an
#: expiry float (24), charged whether or not they are small or shared.
ENTRY_OVERHEAD = 272
#: Bytes of an L{Absent} (40) and its revision int (32).
ABSENT_OVERHEAD = 96


class Absent:
    """
    The cached fact that a key does not exist, as of revision C{seen_at}
    (at least): a change older than that must not overwrite it.
    """

    __slots__ = ("seen_at",)

    def __init__(self, seen_at: int) -> None:
        self.seen_at = seen_at

    def __repr__(self) -> str:
        return "Absent(%d)" % (self.seen_at,)


#: Absent since the beginning: what the cache assumes of nothing.
ABSENT = Absent(0)
Cached = Union[Entry, Absent]


def _as_of(cached: Cached) -> int:
    """The revision up to which C{cached} is known to be current."""
    return cached.mod_revision if isinstance(cached, Entry) else cached.seen_at


def cost(key: str, cached: Cached) -> int:
    """
    The bytes the cache charges for holding C{cached} under C{key}: every
    Python object behind it (an encoded answer built later is charged when
    it is built).
    """
    if isinstance(cached, Entry):
        held = (
            ENTRY_OVERHEAD
            + sys.getsizeof(cached.value)
            + sys.getsizeof(cached.content_type)
        )
    else:
        held = ABSENT_OVERHEAD
    return SLOT_OVERHEAD + sys.getsizeof(key) + held


class _Slot:
    """
    One cached key: its state, the bytes charged for it, and the answer an
    encoder built from it (with the encoder, so another one never reuses it).
    """

    __slots__ = ("cached", "cost", "encoded", "encoder")

    def __init__(self, cached: Cached, cost: int) -> None:
        self.cached = cached
        self.cost = cost
        self.encoded: Any = None
        self.encoder: Optional[Callable[[Entry], Any]] = None


@implementer(IKeyValueStore, IReadCache, ILinearizableReads)
class CachedStore(ForwardsHistory, ForwardsLeases):
    """
    C{store} behind an LRU of at most C{max_bytes} (reactor thread only).

    It reads past itself (L{ILinearizableReads}) over any store, and keeps
    the key count (L{ICountedStore}) and the watch resets
    (L{IWatchedStore}) of the store it wraps when that one has them.

    @ivar hits: reads answered from memory.
    @ivar misses: reads that went to the store.
    """

    def __init__(self, store: IKeyValueStore, max_bytes: int) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._cache: "OrderedDict[str, _Slot]" = OrderedDict()
        self._bytes = 0
        self._inflight: Dict[str, List[Deferred]] = {}
        self._stale: Set[str] = set()
        # Bumped whenever cached state changes under readers: a batch read
        # started in an older generation may predate the change.
        self._generation = 0
        # While the store cannot tell us about others' changes (an etcd
        # watch that is down), the cache neither answers nor fills.
        self._bypass = False
        store.add_listener(self.apply_changes)
        # History passes through uncached: the cache holds the present.
        keeps_history_of(self, store)
        # Leases pass through; the commits that end them reach the cache
        # through the listener, like every commit.
        grants_leases_of(self, store)
        # Key counts and resets pass through. The cache hears each reset
        # first (it registered first), so a change feed built on top reads
        # fresh state when it hears the same reset.
        passes_capabilities_of(self, store, (ICountedStore, IWatchedStore))
        if IWatchedStore.providedBy(store):
            IWatchedStore(store).add_reset_listener(self._on_reset)

    # -- the wrapped store's state -----------------------------------------

    @property
    def revision(self) -> int:  # type: ignore[override]
        return self.store.revision

    @property
    def clock(self):  # type: ignore[override]
        return self.store.clock

    @property
    def key_count(self) -> int:
        """The wrapped store's key count (L{ICountedStore}, when it keeps one)."""
        return ICountedStore(self.store).key_count

    def add_reset_listener(self, listener) -> None:
        """The wrapped store's watch resets (L{IWatchedStore}, when it has them)."""
        IWatchedStore(self.store).add_reset_listener(listener)

    @property
    def size(self) -> int:
        """Bytes the cache holds, by its own accounting."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._cache)

    # -- cache bookkeeping ---------------------------------------------------

    def _on_reset(self, reset) -> None:
        """The store's change feed was lost or came back: start afresh."""
        self.invalidate_all()
        self._bypass = not reset.watching

    def _store(self, key: str, cached: Cached) -> None:
        if self._bypass:
            return
        old = self._cache.pop(key, None)
        if old is not None:
            self._bytes -= old.cost
        charge = cost(key, cached)
        if charge > self.max_bytes:
            return
        self._cache[key] = _Slot(cached, charge)
        self._bytes += charge
        self._evict()

    def _evict(self) -> None:
        """Drop least recently used keys until the cache is within its bound."""
        while self._bytes > self.max_bytes:
            _, evicted = self._cache.popitem(last=False)
            self._bytes -= evicted.cost

    def peek(self, key: str) -> Tuple[bool, Optional[Entry]]:
        """
        Answer a read from memory if possible: C{(True, entry or None)} on a
        hit, C{(False, None)} on a miss. Never does I/O.
        """
        slot = self._cache.get(key)
        if slot is None:
            return False, None
        self._cache.move_to_end(key)
        self.hits += 1
        cached = slot.cached
        if isinstance(cached, Entry) and cached.is_live(self.store.clock.seconds()):
            return True, cached
        return True, None

    def peek_encoded(self, key: str, encode: Callable[[Entry], Any]) -> Any:
        """
        C{encode(entry)} for the live cached entry of C{key}, built on its
        first hit and kept (and charged) with the entry; None unless the key
        is cached and live (then read it the ordinary way, which also answers
        absent keys). Never does I/O; counts a hit only when it answers.

        @param encode: a function of an L{Entry} only, whose result does not
            change while the entry does not (the result's C{sys.getsizeof}
            is charged to the cache).
        """
        slot = self._cache.get(key)
        if slot is None:
            return None
        entry = slot.cached
        if type(entry) is not Entry:
            return None
        # Most keys never expire: no clock read for them.
        expires = entry.expires
        if expires is not None and expires <= self.store.clock.seconds():
            return None
        self._cache.move_to_end(key)
        self.hits += 1
        if slot.encoder is encode:
            return slot.encoded
        encoded = encode(entry)
        charge = sys.getsizeof(encoded)
        if slot.encoder is not None:
            # Another encoder's answer: replaced, and no longer charged.
            charge -= sys.getsizeof(slot.encoded)
        slot.encoded = encoded
        slot.encoder = encode
        slot.cost += charge
        self._bytes += charge
        # The key is the most recently used: others go first, and it goes
        # itself only if it alone passes the bound (this answer is still
        # right: it was built from the live entry).
        self._evict()
        return encoded

    def apply_changes(self, result: CommitResult) -> None:
        """
        Bring cached keys up to date with an acknowledged commit: the inner
        store calls this before the committer hears back.
        """
        self._generation += 1
        for change in result.changes:
            if change.key in self._inflight:
                self._stale.add(change.key)
            slot = self._cache.get(change.key)
            if slot is None and change.entry is None:
                # Nobody read it: caching its absence would only push out
                # keys that are read (a prefix delete removes thousands).
                continue
            if slot is not None and _as_of(slot.cached) > result.revision:
                # A change replayed after a watch reset, older than what a
                # read has since put here: keep the newer state.
                continue
            self._store(change.key, change.entry or Absent(result.revision))

    def invalidate_all(self) -> None:
        """Forget everything (when changes may have been missed)."""
        self._generation += 1
        self._cache.clear()
        self._bytes = 0
        self._stale.update(self._inflight)

    # -- IKeyValueStore ------------------------------------------------------

    def open(self) -> Deferred:
        return self.store.open()

    def close(self) -> Deferred:
        self.invalidate_all()
        return self.store.close()

    def ping(self) -> Deferred:
        return self.store.ping()

    def list(
        self, prefix: str, after: Optional[str], limit: int, max_bytes: Optional[int] = None
    ) -> Deferred:
        return self.store.list(prefix, after, limit, max_bytes)

    def get_linearizable(self, key: str) -> Deferred:
        """
        Read C{key} from the store itself, never from memory, reflecting
        every commit acknowledged before the call (for C{?consistent=1}).
        """
        return read_linearizable(self.store, key)

    def get(self, key: str) -> Deferred:
        hit, entry = self.peek(key)
        if hit:
            return succeed(entry)
        self.misses += 1
        waiter: Deferred = Deferred()
        waiters = self._inflight.get(key)
        if waiters is not None:
            waiters.append(waiter)
            return waiter
        self._inflight[key] = [waiter]
        self.store.get(key).addBoth(self._filled, key, self.store.revision)
        return waiter

    def _filled(self, result: object, key: str, started_at: int) -> None:
        waiters = self._inflight.pop(key, [])
        if key in self._stale:
            self._stale.discard(key)
        elif isinstance(result, Entry) or result is None:
            self._store(key, result if result is not None else Absent(started_at))
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def get_many(self, keys: Iterable[str]) -> Deferred:
        keys = list(keys)
        found: Dict[str, Entry] = {}
        missing: List[str] = []
        for key in dict.fromkeys(keys):
            hit, entry = self.peek(key)
            if not hit:
                missing.append(key)
            elif entry is not None:
                found[key] = entry
        if not missing:
            return succeed(found)
        self.misses += len(missing)
        generation = self._generation
        started_at = self.store.revision

        def fill(fetched: Dict[str, Entry]) -> Dict[str, Entry]:
            # Fill only if nothing changed meanwhile: the batch read may
            # predate the change.
            if self._generation == generation:
                for key in missing:
                    self._store(key, fetched.get(key) or Absent(started_at))
            found.update(fetched)
            return found

        return self.store.get_many(missing).addCallback(fill)

    def commit(self, ops: Sequence[Op], checks: Sequence[Check] = ()) -> Deferred:
        # The cache is brought up to date by apply_changes, as a listener.
        return self.store.commit(ops, checks)

    def delete_prefix(self, prefix: str, max_keys: int) -> Deferred:
        # The cache is brought up to date by apply_changes, as a listener.
        return self.store.delete_prefix(prefix, max_keys)

    def add_listener(self, listener) -> None:
        self.store.add_listener(listener)

    def expired(self, limit: int) -> Deferred:
        return self.store.expired(limit)
