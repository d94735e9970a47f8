# -*- test-case-name: tests.unit.test_snapshot -*-
"""
Building a data directory offline from a snapshot's entries: the keys as
they were, with their create and mod revisions (so their ETags), versions
and expiries, and the store's revision the snapshot's. The history of the
new store starts there: it holds each key's entry, compacted at that
revision, so reads at it work at once and older ones are 410.

Runs on the calling thread with no reactor (C{kvtwist snapshot restore}),
holding the new directory's lock. The store is built beside the target
(C{DIR.restoring-PID}) and renamed into place only when whole, so a
failed or interrupted restore never leaves a half-built store under the
name asked for.
"""

from __future__ import annotations

import itertools
import os
import shutil
from typing import Iterable, Iterator, List

from kvtwist.model import Entry
from kvtwist.store.history import PUT
from kvtwist.store.shelf import DataShelf
from kvtwist.store.datadir import locked, open_mapping
from kvtwist.store.shelf_layout import COMPACT_REVISION, ShelfTable

#: Keys written per SQLite transaction.
RESTORE_BATCH = 1000


def _batches(entries: Iterable[Entry]) -> Iterator[List[Entry]]:
    iterator = iter(entries)
    while True:
        batch = list(itertools.islice(iterator, RESTORE_BATCH))
        if not batch:
            return
        yield batch


def restore_data_dir(directory: str, revision: int, entries: Iterable[Entry]) -> int:
    """
    Build a new store in C{directory} holding C{entries} as they are, at
    store revision C{revision}.

    @param entries: in any order, each key once; consumed once (an error
        it raises aborts the restore, leaving nothing behind).
    @return: the number of keys written.
    @raise ValueError: if C{directory} exists and is not empty, or an
        entry's revisions are after C{revision}.
    """
    if os.path.exists(directory) and (not os.path.isdir(directory) or os.listdir(directory)):
        raise ValueError("%s exists and is not empty: restore into a new directory" % (directory,))
    building = "%s.restoring-%d" % (os.path.abspath(directory).rstrip(os.sep), os.getpid())
    count = 0
    try:
        with locked(building):
            shelf = DataShelf(open_mapping(building, check_integrity=False))
            try:
                for batch in _batches(entries):
                    with shelf.dict.transaction():
                        table = ShelfTable(shelf)
                        table.prefetch(entry.key for entry in batch)
                        for entry in batch:
                            if entry.mod_revision > revision or entry.create_revision > entry.mod_revision:
                                raise ValueError(
                                    "the entry of %r has revisions past the snapshot's %d"
                                    % (entry.key, revision)
                                )
                            table.write(entry)
                        table.flush()
                        shelf.write_history(
                            (entry.key, entry.mod_revision, PUT, entry.to_record()) for entry in batch
                        )
                    count += len(batch)
                with shelf.dict.transaction():
                    table = ShelfTable(shelf)
                    table.set_revision(revision)
                    table.flush()
                    shelf.dict.set_state(COMPACT_REVISION, str(revision))
            finally:
                shelf.close()
        if os.path.isdir(directory):
            os.rmdir(directory)
        os.rename(building, directory)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return count
