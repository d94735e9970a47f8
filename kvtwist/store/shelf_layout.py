# -*- test-case-name: tests.contract.test_store_shelve -*-
"""
How the durable store lays its data out in a L{DataShelf}: the key
prefixes of user keys, the expiry index and the store's own records, and
the views the store thread works through for one read or one group commit
(L{ShelfTable} for L{kvtwist.store.rules.Table}, L{ShelfLeases} for
L{kvtwist.store.leases.LeaseTable}). L{kvtwist.store.shelve_store} runs
them on its thread; L{kvtwist.store.restore} writes a new store with them.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

from kvtwist.errors import StoreCorrupt
from kvtwist.model import CommitResult, Entry
from kvtwist.store.history import PUT
from kvtwist.store.shelf import DataShelf, HistoryRecord

# Shelf key prefixes: user keys, the expiry index and the store's own
# metadata never collide.
KEY_PREFIX = "k/"
_EXPIRY = "x/"
_REVISION = "m/revision"
#: The name of the compact revision in the SQLite state table.
COMPACT_REVISION = "compact_revision"
#: Keys per read while the history is rebuilt from the keys.
REBUILD_CHUNK = 1000


def _expiry_key(expires: float, key: str) -> str:
    # Fixed-width so that the index sorts by time (to year 5138).
    return "%s%017.3f/%s" % (_EXPIRY, expires, key)


#: Rows read per statement when a prefix delete scans its keys.
_SCAN_PAGE = 10000

#: In L{ShelfTable}'s pending writes: the shelf key is to be removed.
_REMOVED = object()


class ShelfTable:
    """
    The L{kvtwist.store.rules.Table} view of a shelf (store thread only),
    for one read or one group commit.

    Rows read are remembered, and writes are held back until L{flush}, which
    applies all of them in one statement or so: a group commit reads its keys
    in one statement (L{prefetch}) and writes in one, not three statements a
    key (see L{kvtwist.store.sqlitemap.SQLiteMapping.get_many} for why the
    number of statements is what counts). Reads see the writes held back.
    """

    def __init__(self, shelf: DataShelf) -> None:
        self._shelf = shelf
        #: Each key read or written: its entry as the table stands now, or
        #: None when absent.
        self._rows: Dict[str, Optional[Entry]] = {}
        #: Shelf keys changed and not yet flushed: their record, or _REMOVED.
        self._pending: Dict[str, object] = {}
        #: History records of the commits applied, not yet flushed.
        self._history: List[HistoryRecord] = []

    def prefetch(self, keys: Iterable[str]) -> None:
        """Read every one of C{keys} not read yet, in one go."""
        wanted = [key for key in dict.fromkeys(keys) if key not in self._rows]
        if not wanted:
            return
        records = self._shelf.read_many(KEY_PREFIX + key for key in wanted)
        for key in wanted:
            record = records.get(KEY_PREFIX + key)
            self._rows[key] = entry_of(key, record) if record is not None else None

    def read(self, key: str) -> Optional[Entry]:
        if key not in self._rows:
            self.prefetch([key])
        return self._rows[key]

    def _unindex(self, key: str) -> None:
        stored = self.read(key)
        if stored is not None and stored.expires is not None:
            self._pending[_expiry_key(stored.expires, key)] = _REMOVED

    def write(self, entry: Entry) -> None:
        self._unindex(entry.key)
        self._rows[entry.key] = entry
        self._pending[KEY_PREFIX + entry.key] = entry.to_record()
        if entry.expires is not None:
            self._pending[_expiry_key(entry.expires, entry.key)] = entry.mod_revision

    def remove(self, key: str) -> None:
        self._unindex(key)
        self._rows[key] = None
        self._pending[KEY_PREFIX + key] = _REMOVED

    def record_history(self, result: CommitResult) -> None:
        """Keep C{result}'s changes for the history (written by L{flush})."""
        for change in result.changes:
            self._history.append(
                (
                    change.key,
                    result.revision,
                    change.kind,
                    change.entry.to_record() if change.entry is not None else None,
                )
            )
    def keys_under(self, prefix: str) -> List[str]:
        """
        Every key under C{prefix} as the table stands (the shelf's, and this
        group's earlier writes), its rows read in pages as they are scanned.
        """
        cursor: Optional[str] = None
        while True:
            rows = self._shelf.scan(KEY_PREFIX + prefix, cursor, _SCAN_PAGE)
            for shelf_key, record in rows:
                key = shelf_key[len(KEY_PREFIX):]
                if key not in self._rows:
                    self._rows[key] = entry_of(key, record)
            if len(rows) < _SCAN_PAGE:
                break
            cursor = rows[-1][0]
        return [
            key for key, entry in self._rows.items()
            if entry is not None and key.startswith(prefix)
        ]

    def set_revision(self, revision: int) -> None:
        """Record the store's revision (written by the next L{flush})."""
        self._pending[_REVISION] = revision

    def flush(self) -> None:
        """Write everything held back, inside the caller's transaction."""
        pending, self._pending = self._pending, {}
        history, self._history = self._history, []
        self._shelf.write_many(
            {key: record for key, record in pending.items() if record is not _REMOVED},
            [key for key, record in pending.items() if record is _REMOVED],
        )
        self._shelf.write_history(history)

    def expired(self, now: float, limit: int) -> List[Tuple[str, int]]:
        """Up to C{limit} C{(key, mod_revision)} whose expiry is at or before C{now}."""
        due = []
        for index_key, mod_revision in self._shelf.scan(_EXPIRY, None, limit):
            stamp, _, key = index_key[len(_EXPIRY):].partition("/")
            if float(stamp) > now:
                break
            if type(mod_revision) is not int:
                raise StoreCorrupt("the expiry index record of %r is damaged" % (key,))
            due.append((key, mod_revision))
        return due


class ShelfLeases:
    """
    The L{kvtwist.store.leases.LeaseTable} view of the shelf's lease tables
    (store thread only), for one group commit: key attachments are held
    back and written together, a few statements for the whole group.
    """

    def __init__(self, shelf: DataShelf) -> None:
        self._mapping = shelf.dict
        self._encoding = shelf.keyencoding
        self._attachments: Dict[bytes, Optional[int]] = {}

    def lease(self, lease_id: int) -> Optional[Tuple[float, float]]:
        return self._mapping.lease(lease_id)

    def set_lease(self, lease_id: int, ttl: float, deadline: float) -> None:
        self._mapping.set_lease(lease_id, ttl, deadline)

    def drop_lease(self, lease_id: int) -> None:
        self.flush()
        self._mapping.drop_lease(lease_id)

    def keys_of(self, lease_id: int) -> List[str]:
        self.flush()
        return [key.decode(self._encoding) for key in self._mapping.lease_keys(lease_id)]

    def attach(self, key: str, lease_id: Optional[int]) -> None:
        self._attachments[key.encode(self._encoding)] = lease_id

    def due(self, now: float, limit: int) -> List[int]:
        return self._mapping.due_leases(now, limit)

    def count(self) -> int:
        return self._mapping.lease_count

    def held(self, now: float, limit: int) -> List[Tuple[int, float, float]]:
        return self._mapping.held_leases(now, limit)

    def flush(self) -> None:
        """Write the attachments held back, inside the caller's transaction."""
        attachments, self._attachments = self._attachments, {}
        if attachments:
            self._mapping.attach_many(attachments)


def entry_of(key: str, record: object) -> Entry:
    """The L{Entry} a stored record describes; a damaged one is L{StoreCorrupt}."""
    try:
        return Entry.from_record(key, record)  # type: ignore[arg-type]
    except ValueError as e:
        raise StoreCorrupt(str(e))


def read_compact_revision(shelf: DataShelf) -> int:
    raw = shelf.dict.state(COMPACT_REVISION)
    try:
        return int(raw) if raw is not None else 0
    except ValueError:
        raise StoreCorrupt("the store's compact revision record is damaged")


def history_entry(record: Optional[HistoryRecord]) -> Optional[Entry]:
    """The entry a history record holds: L{None} for a tombstone or nothing."""
    if record is None:
        return None
    key, _, kind, stored = record
    if kind != PUT or stored is None:
        return None
    return entry_of(key, stored)


def read_revision(shelf: DataShelf) -> int:
    try:
        revision = shelf[_REVISION]
    except KeyError:
        return 0
    if type(revision) is not int or revision < 0:
        raise StoreCorrupt("the store's revision record is damaged")
    return revision
