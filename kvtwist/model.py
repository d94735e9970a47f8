# -*- test-case-name: tests.contract.test_store_memory -*-
"""
The plain data that crosses the store contract: entries, write operations,
preconditions and commit results.

Everything here is immutable and holds only builtin data (str, bytes, int,
float, None), so the same values can be pickled into the shelf, sent to etcd
or compared in tests without translation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple, Union

#: The Content-Type stored with a value written without one.
DEFAULT_CONTENT_TYPE = "application/octet-stream"
#: The Content-Type of values written through the seed's JSON routes.
JSON_CONTENT_TYPE = "application/json"


@dataclass(frozen=True)
class Entry:
    """
    One committed key.

    @ivar create_revision: the global revision of the commit that created the
        key (a key deleted and written again gets a new one).
    @ivar mod_revision: the global revision of the commit that last wrote it;
        this is the key's ETag.
    @ivar version: how many times it was written since it was created (1 on
        creation).
    @ivar expires: absolute expiry in seconds since the epoch, or L{None}.
    """

    key: str
    value: bytes
    content_type: str
    create_revision: int
    mod_revision: int
    version: int
    expires: Optional[float] = None

    def is_live(self, now: float) -> bool:
        """
        Whether the entry is visible at time C{now}: an expired key reads as
        absent everywhere, before any sweeper has removed it.
        """
        return self.expires is None or self.expires > now

    def to_record(self) -> tuple:
        """
        The tuple of builtin values stored on disk for this entry; the key is
        stored beside it, not inside.
        """
        return (
            self.value,
            self.content_type,
            self.create_revision,
            self.mod_revision,
            self.version,
            self.expires,
        )

    @classmethod
    def from_record(cls, key: str, record: tuple) -> "Entry":
        """
        Rebuild an entry from L{to_record}'s tuple.

        @raise ValueError: if the record does not have the expected shape.
        """
        if not isinstance(record, tuple) or len(record) != 6:
            raise ValueError("malformed record for key %r" % (key,))
        value, content_type, create, mod, version, expires = record
        if not (
            isinstance(value, bytes)
            and isinstance(content_type, str)
            and all(type(n) is int for n in (create, mod, version))
            and (expires is None or isinstance(expires, float))
        ):
            raise ValueError("malformed record for key %r" % (key,))
        return cls(key, value, content_type, create, mod, version, expires)


@dataclass(frozen=True)
class Put:
    """
    Write C{value} under C{key}; C{expires} is absolute epoch seconds.
    C{lease} attaches the key to that lease (see
    L{kvtwist.interfaces.ILeasingStore}); a put without one detaches it.
    """

    key: str
    value: bytes
    content_type: str = DEFAULT_CONTENT_TYPE
    expires: Optional[float] = None
    lease: Optional[int] = None

    @property
    def size(self) -> int:
        """Bytes this op weighs against staging limits."""
        return len(self.key.encode("utf-8")) + len(self.value)


@dataclass(frozen=True)
class Delete:
    """Remove C{key}; deleting an absent key changes nothing."""

    key: str

    @property
    def size(self) -> int:
        """Bytes this op weighs against staging limits."""
        return len(self.key.encode("utf-8"))


@dataclass(frozen=True)
class Expire:
    """
    Remove C{key} because it expired: only if its stored mod_revision is
    still C{mod_revision} and its expiry has passed (the sweeper's op; the
    change it makes is an C{expire}, not a C{delete}). With C{leased}, the
    key's lease expired: the key goes whatever its own expiry says.
    """

    key: str
    mod_revision: int
    leased: bool = False

    @property
    def size(self) -> int:
        """Bytes this op weighs against staging limits."""
        return len(self.key.encode("utf-8"))


@dataclass(frozen=True)
class Incr:
    """
    Add C{by} to the JSON integer stored under C{key} (an absent key counts
    as 0), keeping its expiry: the value becomes that integer, as JSON. A
    value that is not a JSON integer fails the whole commit with
    L{kvtwist.errors.NotAnInteger}. Resolved into a L{Put} on the state the
    commit applies to (L{kvtwist.store.rules.increment}).
    """

    key: str
    by: int = 1

    @property
    def size(self) -> int:
        """Bytes this op weighs against staging limits."""
        return len(self.key.encode("utf-8")) + len(str(self.by))


@dataclass(frozen=True)
class DeletePrefix:
    """
    Remove every live key that starts with C{prefix} (C{""}: every key),
    each as a C{delete} change of the one commit; more than C{max_keys} of
    them fails the whole commit with L{kvtwist.errors.LimitExceeded}. The
    local stores' form of L{kvtwist.interfaces.IKeyValueStore.delete_prefix}
    (L{kvtwist.store.rules.apply_commit} expands it); it has no C{key}.
    """

    prefix: str
    max_keys: int

    @property
    def size(self) -> int:
        """Bytes this op weighs against staging limits."""
        return len(self.prefix.encode("utf-8"))


Op = Union[Put, Delete, Expire, DeletePrefix, Incr]
#: An op that names one key: every op but a L{DeletePrefix}. What staging
#: holds, and what a commit's prefix deletes expand into.
KeyedOp = Union[Put, Delete, Expire, Incr]

# The kinds of precondition a commit can carry.
EQUALS = "equals"
ABSENT = "absent"
PRESENT = "present"


@dataclass(frozen=True)
class Check:
    """
    A precondition of a commit, evaluated atomically with it.

    @ivar kind: L{EQUALS} (the key's mod_revision is C{revision}; a revision of
        0 means absent), L{ABSENT} or L{PRESENT}.
    @ivar tag: opaque, echoed in a L{CheckFailure} so callers can tell which of
        their checks failed (an op index, a header name).
    """

    key: str
    kind: str
    revision: int = 0
    tag: object = field(default=None, compare=False)

    @classmethod
    def equals(cls, key: str, revision: int, tag: object = None) -> "Check":
        """The key's mod_revision must be C{revision} (0: the key is absent)."""
        return cls(key, EQUALS, revision, tag)

    @classmethod
    def absent(cls, key: str, tag: object = None) -> "Check":
        """The key must not exist."""
        return cls(key, ABSENT, 0, tag)

    @classmethod
    def present(cls, key: str, tag: object = None) -> "Check":
        """The key must exist."""
        return cls(key, PRESENT, 0, tag)

    def holds(self, mod_revision: int) -> bool:
        """
        Whether the check is met by a key whose current mod_revision is
        C{mod_revision} (0 when absent).
        """
        if self.kind == EQUALS:
            return mod_revision == self.revision
        if self.kind == ABSENT:
            return mod_revision == 0
        return mod_revision != 0


@dataclass(frozen=True)
class CheckFailure:
    """A L{Check} that did not hold, with the key's actual mod_revision."""

    check: Check
    actual: int


@dataclass(frozen=True)
class Change:
    """
    One key changed by a commit: C{entry} is the new state (L{None} for a
    delete), C{previous} the state before (L{None} if it did not exist).
    """

    kind: str  # "put", "delete" or "expire"
    key: str
    entry: Optional[Entry]
    previous: Optional[Entry]


@dataclass(frozen=True)
class CommitResult:
    """
    The outcome of a successful commit.

    @ivar revision: the global revision after the commit; unchanged when the
        commit changed nothing (all its deletes hit absent keys).
    @ivar changes: one L{Change} per key that changed, in op order.
    """

    revision: int
    changes: Tuple[Change, ...]


@dataclass(frozen=True)
class Page:
    """
    One page of a prefix listing, read at a single revision.

    @ivar more: whether keys after the last one returned match the prefix.
    """

    revision: int
    entries: Tuple[Entry, ...]
    more: bool


@dataclass(frozen=True)
class Lease:
    """
    A lease as a store reports it.

    @ivar id: its id (a positive integer below 2**53, so JSON clients in
        every language keep it exact).
    @ivar ttl: the seconds it lives after its grant or last keepalive.
    @ivar deadline: when it expires, in the store clock's seconds.
    @ivar keys: the keys attached to it, in UTF-8 byte order (only where
        asked for).
    """

    id: int
    ttl: float
    deadline: float
    keys: Tuple[str, ...] = ()

    def remaining(self, now: float) -> float:
        """Seconds left at C{now} (0 once due)."""
        return max(0.0, self.deadline - now)
#: Rows a byte-bounded listing reads first, before it knows how large they
#: are: with 1 MiB values a first batch of a thousand rows held 1 GiB.
FIRST_BOUNDED_BATCH = 8


class PageBuilder:
    """
    Collects one page of a listing from rows read in key order, for every
    store: up to C{limit} live entries, and entries holding up to
    C{max_bytes} key and value bytes (the entry that reaches the bound
    ends the page, so a page always holds at least one). The store reads
    rows in batches of L{batch} and hands each to L{take} until it says
    the page is complete or the rows run out.
    """

    def __init__(self, limit: int, max_bytes: Optional[int], now: float) -> None:
        if limit < 1:
            raise ValueError("a listing needs a limit of at least 1")
        self._limit = limit
        self._max_bytes = max_bytes
        self._now = now
        self._entries: List[Entry] = []
        self._bytes = 0
        self._rows = 0
        self._row_bytes = 0
        self._more = False

    def _full(self) -> bool:
        return len(self._entries) >= self._limit or (
            self._max_bytes is not None and self._bytes >= self._max_bytes
        )

    def take(self, entry: Entry) -> bool:
        """
        Consider the next row (expired ones are skipped): whether to read
        on. False once a live entry arrives after the page is full: there
        is more, and that entry starts the next page.
        """
        size = len(entry.key) + len(entry.value)
        self._rows += 1
        self._row_bytes += size
        if not entry.is_live(self._now):
            return True
        if self._full():
            self._more = True
            return False
        self._entries.append(entry)
        self._bytes += size
        return True

    def batch(self, previous: Optional[int] = None) -> int:
        """
        How many rows to read next: enough to fill the page and learn
        whether there is more, and, with a byte bound, no more than the
        rows seen so far suggest fit in it. C{previous}, the last batch's
        size, doubles the count when expired rows took room in it.
        """
        wanted = self._limit + 1 - len(self._entries)
        if previous is not None:
            wanted = max(previous * 2, wanted)
        if self._max_bytes is not None:
            if self._rows:
                mean = max(1.0, self._row_bytes / self._rows)
                wanted = min(wanted, int((self._max_bytes - self._bytes) / mean) + 2)
            else:
                wanted = min(wanted, FIRST_BOUNDED_BATCH)
        return max(1, wanted)

    def page(self, revision: int) -> Page:
        """The page collected, read at C{revision}."""
        return Page(revision, tuple(self._entries), self._more)
