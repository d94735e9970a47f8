# -*- test-case-name: tests.contract.test_store_shelve -*-
"""
The durable store's data directory: where its file is, its lock (one
process at a time, L{kvtwist.store.datalock}), opening and checking it,
and what a failed write there means (L{write_failure}: a full disk is
L{InsufficientStorage}).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from kvtwist.errors import InsufficientStorage, KVError, StoreCorrupt, StoreUnavailable
from kvtwist.store.datalock import DataDirectoryLock, lock_data_dir
from kvtwist.store.shelf import DataShelf
from kvtwist.store.shelf_layout import read_revision
from kvtwist.store.sqlitemap import SQLiteMapping, is_disk_full

#: The file name of the shelf inside the data directory.
DATA_FILE = "kvcache.sqlite3"

def open_data_dir(directory: str) -> str:
    """
    Create C{directory} (mode 0700) if needed and return the data file path.
    Runs before the reactor or on the store thread.
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    return os.path.join(directory, DATA_FILE)


def check_data_dir(directory: str) -> int:
    """
    Open the store in C{directory} on the calling thread, verify it and close
    it again; returns its revision. L{kvtwist.tap} calls this before the
    reactor starts, so a damaged store stops startup with a message.

    @raise StoreCorrupt: if the data is damaged or unreadable.
    @raise DataDirectoryBusy: if another process owns the directory.
    """
    with locked(directory):
        # An older file format is migrated later, on the store thread.
        shelf = DataShelf(open_mapping(directory, check_integrity=True, migrate=False))
        try:
            return read_revision(shelf)
        finally:
            shelf.close()


def open_mapping(directory: str, check_integrity: bool, migrate: bool = True) -> SQLiteMapping:
    """
    The data file of C{directory}, opened (the caller holds the lock); an
    older file format is migrated unless C{migrate} is false (see
    L{SQLiteMapping}).

    @raise StoreCorrupt: if the data is damaged or unreadable.
    """
    try:
        return SQLiteMapping(
            open_data_dir(directory), check_integrity=check_integrity, migrate=migrate
        )
    except OSError as e:
        raise write_failure(
            e, "cannot open the data directory %s" % (directory,), directory, StoreCorrupt
        )


def write_failure(
    error: BaseException, what: str, directory: str, other=StoreUnavailable
) -> KVError:
    """
    The domain error for a write into C{directory} that failed with
    C{error}: itself if it is one, L{InsufficientStorage} for a full disk,
    else C{other}; C{what} says what could not be done.
    """
    if isinstance(error, KVError):
        return error
    if is_disk_full(error, directory):
        return InsufficientStorage("%s: disk full (%s)" % (what, error))
    return other("%s: %s" % (what, error))


def hold_data_dir(directory: str) -> DataDirectoryLock:
    """
    Take (or share, within this process) C{directory}'s lock; see
    L{kvtwist.store.datalock}.

    @raise DataDirectoryBusy: if another process owns the directory.
    @raise StoreCorrupt: if the directory or its lock file cannot be made.
    """
    try:
        return lock_data_dir(directory)
    except OSError as e:
        raise write_failure(
            e, "cannot open the data directory %s" % (directory,), directory, StoreCorrupt
        )


@contextmanager
def locked(directory: str) -> Iterator[DataDirectoryLock]:
    """Hold C{directory}'s lock for the block (L{hold_data_dir})."""
    lock = hold_data_dir(directory)
    try:
        yield lock
    finally:
        lock.release()
