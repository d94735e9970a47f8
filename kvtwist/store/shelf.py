# -*- test-case-name: tests.contract.test_store_shelve -*-
"""
The shelf kvtwist keeps its data in: a C{shelve.Shelf} over
L{SQLiteMapping}, whose unpickling accepts builtin data only.

Records are tuples of bytes, str, int, float and None (see
L{kvtwist.model.Entry.to_record}); pickles of those need no global lookups,
so the restricted unpickler refuses every C{find_class} call: a tampered file
cannot make kvtwist import or call anything.
"""

from __future__ import annotations

import io
import pickle
import shelve
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

from kvtwist.errors import StoreCorrupt
from kvtwist.store.history import KIND_CODES, KINDS
from kvtwist.store.sqlitemap import HistoryRow, SQLiteMapping

#: A history record as the shelf gives it: key, revision, kind, and the
#: stored record of a put (L{None} for a tombstone).
HistoryRecord = Tuple[str, int, str, Optional[object]]

#: Pickle protocol 4 is read by every supported Python (3.10 and newer).
PICKLE_PROTOCOL = 4


class DataOnlyUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds builtin data and refuses any class or call."""

    def find_class(self, module: str, name: str) -> object:
        raise pickle.UnpicklingError(
            "refusing to load %s.%s from the store: only plain data is stored"
            % (module, name)
        )

    def persistent_load(self, pid: object) -> object:
        raise pickle.UnpicklingError("refusing a persistent id from the store")


def load_data(raw: bytes) -> object:
    """
    Unpickle C{raw}, allowing builtin data types only.

    @raise StoreCorrupt: if C{raw} is not such a pickle.
    """
    try:
        return DataOnlyUnpickler(io.BytesIO(raw)).load()
    except Exception as e:
        raise StoreCorrupt("a stored record cannot be read: %s" % (e,))


class DataShelf(shelve.Shelf):
    """
    A shelf of plain data over an L{SQLiteMapping}. Runs on the store thread.
    """

    dict: SQLiteMapping
    # Set by shelve.Shelf.__init__; the standard library's stubs leave them
    # undeclared.
    keyencoding: str
    _protocol: int

    def __init__(self, mapping: SQLiteMapping) -> None:
        super().__init__(mapping, protocol=PICKLE_PROTOCOL, writeback=False)

    def __getitem__(self, key: str) -> object:
        return load_data(self.dict[key.encode(self.keyencoding)])

    def read_many(self, keys: Iterable[str]) -> Dict[str, object]:
        """The records of those of C{keys} that exist, in one read (see L{SQLiteMapping.get_many})."""
        encoding = self.keyencoding
        rows = self.dict.get_many(key.encode(encoding) for key in keys)
        return {key.decode(encoding): load_data(raw) for key, raw in rows.items()}

    def write_many(self, records: Mapping[str, object], deletes: Iterable[str] = ()) -> None:
        """
        Store every record of C{records} and remove every key of
        C{deletes}, in one write (see L{SQLiteMapping.update_many}).
        """
        encoding = self.keyencoding
        self.dict.update_many(
            {
                key.encode(encoding): pickle.dumps(record, self._protocol)
                for key, record in records.items()
            },
            [key.encode(encoding) for key in deletes],
        )

    def scan(
        self, prefix: str, after: Optional[str], limit: int
    ) -> List[Tuple[str, object]]:
        """
        Up to C{limit} C{(key, value)} pairs whose key starts with C{prefix}
        and sorts after C{after}, in UTF-8 byte order.
        """
        encoding = self.keyencoding
        rows = self.dict.scan(
            prefix.encode(encoding),
            after.encode(encoding) if after is not None else None,
            limit,
        )
        return [(key.decode(encoding), load_data(raw)) for key, raw in rows]

    # -- history (see kvtwist.store.sqlitemap's history table) ---------------

    def write_history(self, records: Iterable[HistoryRecord]) -> None:
        """Add history records, in the caller's transaction."""
        encoding = self.keyencoding
        self.dict.add_history(
            [
                (
                    key.encode(encoding),
                    revision,
                    KIND_CODES[kind],
                    pickle.dumps(record, self._protocol) if record is not None else None,
                )
                for key, revision, kind, record in records
            ]
        )

    def _history_record(self, row: HistoryRow) -> HistoryRecord:
        key, revision, code, raw = row
        kind = KINDS.get(code)
        if kind is None:
            raise StoreCorrupt("a history record of kind %r cannot be read" % (code,))
        record = load_data(raw) if raw is not None else None
        return key.decode(self.keyencoding), revision, kind, record

    def history_at(self, key: str, revision: int) -> Optional[HistoryRecord]:
        """C{key}'s last history record at or before C{revision}, or L{None}."""
        row = self.dict.history_at(key.encode(self.keyencoding), revision)
        return self._history_record(row) if row is not None else None

    def history_scan(
        self, prefix: str, after: Optional[str], revision: int, limit: int
    ) -> List[HistoryRecord]:
        """
        Each key's last history record at or before C{revision}, for up to
        C{limit} keys starting with C{prefix} after C{after}, in UTF-8 byte
        order (see L{SQLiteMapping.history_scan}).
        """
        encoding = self.keyencoding
        rows = self.dict.history_scan(
            prefix.encode(encoding),
            after.encode(encoding) if after is not None else None,
            revision,
            limit,
        )
        return [self._history_record(row) for row in rows]

    def history_changes(
        self, after: int, upto: int, max_records: int
    ) -> List[Tuple[HistoryRecord, Optional[HistoryRecord]]]:
        """History records after C{after} (see L{SQLiteMapping.history_changes})."""
        return [
            (self._history_record(row), self._history_record(previous) if previous is not None else None)
            for row, previous in self.dict.history_changes(after, upto, max_records)
        ]
