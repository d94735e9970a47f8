"""
The store contract run against L{kvtwist.store.shelve_store.ShelveStore},
plus what only a store on disk has: persistence, file modes, refusal of
damaged data, group commit and a real store thread.

One module though long: the contract run and the on-disk behaviours share
the temporary data directories and the inline store thread.
"""

import fcntl
import os
import pickle
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from typing import Optional

from hypothesis import given, settings
from hypothesis import strategies as st

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from zope.interface.verify import verifyObject

from kvtwist.errors import (
    ConflictError,
    InsufficientStorage,
    RevisionCompacted,
    StoreCorrupt,
    StoreUnavailable,
)
from kvtwist.interfaces import ICountedStore, IWorkInFlight
from kvtwist.model import Check, Delete, Expire, Put
from kvtwist.service import StoreService, store_thread_pool
from kvtwist.store import sqlitemap
from kvtwist.store.datalock import LOCK_FILE, DataDirectoryBusy
from kvtwist.store.datadir import DATA_FILE, check_data_dir, hold_data_dir
from kvtwist.store.shelve_store import ShelveStore
from kvtwist.testing import InlineThreadPool, MemoryStore, ThreadlessReactor
from tests.contract.store_contract import StoreContract


class InlineShelve:
    """Open shelve stores on an inline pool: every Deferred fires at once."""

    def open_store(self, directory=None):
        if directory is None:
            directory = os.path.join(self.mktemp(), "data")
        self.reactor = getattr(self, "reactor", None) or ThreadlessReactor()
        if self.reactor.seconds() == 0:
            self.reactor.advance(1_700_000_000)
        store = ShelveStore(directory, self.reactor, InlineThreadPool())
        self.successResultOf(store.open())
        self.addCleanup(store.close)
        return store


class ShelveStoreContractTests(InlineShelve, StoreContract, SynchronousTestCase):
    """ShelveStore keeps the whole store contract."""

    capabilities = (ICountedStore, IWorkInFlight)

    async def make_store(self):
        return self.open_store()

    def advance(self, seconds):
        self.reactor.advance(seconds)

    def settle(self, d):
        self.successResultOf(d)


class ShelveStoreDiskTests(InlineShelve, SynchronousTestCase):
    """What the shelve store promises about its files."""

    def test_survives_reopen(self):
        """Committed keys, revisions and expiry are there after a reopen."""
        directory = os.path.join(self.mktemp(), "data")
        store = self.open_store(directory)
        self.successResultOf(store.commit([Put("a", b"1", expires=2e9)]))
        self.successResultOf(store.commit([Put("b", b"2")]))
        self.successResultOf(store.close())
        again = self.open_store(directory)
        self.assertEqual((again.revision, again.key_count), (2, 2))
        entry = self.successResultOf(again.get("a"))
        self.assertEqual((entry.value, entry.expires, entry.mod_revision), (b"1", 2e9, 1))

    def test_leases_survive_reopen(self):
        """A lease keeps its keys and its remaining time across a reopen, then expires on time."""
        directory = os.path.join(self.mktemp(), "data")
        store = self.open_store(directory)
        lease = self.successResultOf(store.grant(30, 10))
        self.successResultOf(store.commit([Put("a", b"1", lease=lease.id)]))
        self.reactor.advance(10)
        self.successResultOf(store.close())
        again = self.open_store(directory)
        self.reactor.advance(5)
        shown = self.successResultOf(again.lease(lease.id))
        self.assertEqual((shown.keys, shown.remaining(self.reactor.seconds()), again.lease_count), (("a",), 15, 1))
        self.reactor.advance(15)
        self.assertEqual(self.successResultOf(again.expired_leases(10)), [lease.id])
        self.successResultOf(again.expire_lease(lease.id))
        self.assertIsNone(self.successResultOf(again.get("a")))

    def test_modes(self):
        """The data directory is 0700 and every file in it 0600."""
        directory = os.path.join(self.mktemp(), "data")
        store = self.open_store(directory)
        self.successResultOf(store.commit([Put("a", b"1")]))
        self.assertEqual(stat.S_IMODE(os.stat(directory).st_mode), 0o700)
        names = os.listdir(directory)
        self.assertIn(DATA_FILE, names)
        for name in names:
            mode = stat.S_IMODE(os.stat(os.path.join(directory, name)).st_mode)
            self.assertEqual(mode, 0o600, name)

    def test_empty_file_refused(self):
        """A data file cut to nothing is refused, not taken for a new store."""
        directory = os.path.join(self.mktemp(), "data")
        store = self.open_store(directory)
        self.successResultOf(store.close())
        with open(os.path.join(directory, DATA_FILE), "r+b") as f:
            f.truncate(0)
        error = self.assertRaises(StoreCorrupt, check_data_dir, directory)
        self.assertIn("is empty", str(error))

    def test_partial_page_refused(self):
        """A data file that is not a whole number of pages is refused."""
        directory = os.path.join(self.mktemp(), "data")
        store = self.open_store(directory)
        self.successResultOf(store.close())
        with open(os.path.join(directory, DATA_FILE), "ab") as f:
            f.write(b"x" * 100)
        error = self.assertRaises(StoreCorrupt, check_data_dir, directory)
        self.assertIn("truncated", str(error))

    def test_garbage_file_refused(self):
        """A data file that is not SQLite stops the open with StoreCorrupt."""
        directory = os.path.join(self.mktemp(), "data")
        os.makedirs(directory)
        with open(os.path.join(directory, DATA_FILE), "wb") as f:
            f.write(b"this is not a database" * 100)
        self.assertRaises(StoreCorrupt, check_data_dir, directory)

    def test_foreign_sqlite_refused(self):
        """Another application's SQLite file is not taken for a store."""
        directory = os.path.join(self.mktemp(), "data")
        os.makedirs(directory)
        db = sqlite3.connect(os.path.join(directory, DATA_FILE))
        db.execute("CREATE TABLE t (x)")
        db.commit()
        db.close()
        error = self.assertRaises(StoreCorrupt, check_data_dir, directory)
        self.assertIn("not a kvtwist store", str(error))

    def _tamper(self, directory, sql, *params):
        path = os.path.join(directory, DATA_FILE)
        db = sqlite3.connect(path)
        db.execute(sql, params)
        db.commit()
        db.close()

    def test_flipped_value_never_served(self):
        """A value changed behind the store's back is refused, not served."""
        directory = os.path.join(self.mktemp(), "data")
        store = self.open_store(directory)
        self.successResultOf(store.commit([Put("a", b"precious")]))
        self.successResultOf(store.close())
        self._tamper(
            directory,
            "UPDATE shelf SET value = ? WHERE key = ?",
            pickle.dumps((b"garbled!", "application/octet-stream", 1, 1, 1, None), 4),
            b"k/a",
        )
        error = self.assertRaises(StoreCorrupt, check_data_dir, directory)
        self.assertIn("checksum", str(error))
        # Past the startup check (if the damage came later), reads refuse it.
        again = ShelveStore(directory, self.reactor, InlineThreadPool(), check_integrity=False)
        self.successResultOf(again.open())
        self.addCleanup(again.close)
        self.failureResultOf(again.get("a")).trap(StoreCorrupt)

    def test_pickled_objects_refused(self):
        """A record that would unpickle a class is refused."""
        directory = os.path.join(self.mktemp(), "data")
        store = self.open_store(directory)
        self.successResultOf(store.close())
        import zlib

        payload = pickle.dumps(os.system, 4)
        self._tamper(
            directory,
            "INSERT INTO shelf (key, value, crc) VALUES (?, ?, ?)",
            b"k/evil",
            payload,
            zlib.crc32(payload, zlib.crc32(b"k/evil")),
        )
        again = ShelveStore(directory, self.reactor, InlineThreadPool(), check_integrity=False)
        self.successResultOf(again.open())
        self.addCleanup(again.close)
        self.failureResultOf(again.get("evil")).trap(StoreCorrupt)

    def test_history_survives_reopen(self):
        """History records and the compact revision are on disk, read after a reopen."""
        directory = os.path.join(self.mktemp(), "data")
        store = self.open_store(directory)
        for value in (b"1", b"2", b"3"):
            self.successResultOf(store.commit([Put("a", value)]))
        self.successResultOf(store.commit([Delete("a")]))
        self.assertEqual(self.successResultOf(store.compact(2, 100)), 2)
        self.successResultOf(store.close())
        again = self.open_store(directory)
        self.assertEqual((again.compact_revision, again.history_size), (2, 3))
        self.assertEqual(self.successResultOf(again.get_at("a", 3)).value, b"3")
        self.assertIsNone(self.successResultOf(again.get_at("a", 4)))
        self.failureResultOf(again.get_at("a", 1)).trap(RevisionCompacted)

    def test_history_rebuilt_when_missing(self):
        """
        A store without history (written by a kvtwist that kept none) gets
        one built from its keys at open, compacted at its revision.
        """
        directory = os.path.join(self.mktemp(), "data")
        store = self.open_store(directory)
        self.successResultOf(store.commit([Put("a", b"1"), Put("b", b"1")]))
        self.successResultOf(store.commit([Put("a", b"2")]))
        self.successResultOf(store.close())
        self._tamper(directory, "DROP TABLE history")
        again = self.open_store(directory)
        self.assertEqual((again.revision, again.compact_revision, again.history_size), (2, 2, 2))
        self.assertEqual(self.successResultOf(again.get_at("a", 2)).value, b"2")
        self.failureResultOf(again.get_at("a", 1)).trap(RevisionCompacted)
        self.successResultOf(again.commit([Put("b", b"2")]))
        self.successResultOf(again.close())
        # Commits made by a kvtwist that wrote no history are noticed too.
        self._tamper(directory, "DELETE FROM history WHERE revision = 3")
        third = self.open_store(directory)
        self.assertEqual((third.compact_revision, third.history_size), (3, 2))
        self.assertEqual(self.successResultOf(third.get_at("b", 3)).value, b"2")

    def test_damaged_history_never_served(self):
        """A history record changed behind the store's back is refused."""
        directory = os.path.join(self.mktemp(), "data")
        store = self.open_store(directory)
        self.successResultOf(store.commit([Put("a", b"precious")]))
        self.successResultOf(store.commit([Put("a", b"newer")]))
        self.successResultOf(store.close())
        self._tamper(
            directory,
            "UPDATE history SET record = ? WHERE key = ? AND revision = 1",
            pickle.dumps((b"garbled!", "application/octet-stream", 1, 1, 1, None), 4),
            b"a",
        )
        again = self.open_store(directory)
        self.failureResultOf(again.get_at("a", 1)).trap(StoreCorrupt)
        self.assertEqual(self.successResultOf(again.get_at("a", 2)).value, b"newer")

    def test_missing_wal_after_crash_refused(self):
        """A store whose last run crashed and whose WAL is gone will not open."""
        directory = os.path.join(self.mktemp(), "data")
        store = self.open_store(directory)
        self.successResultOf(store.commit([Put("a", b"1")]))
        # Simulate a crash: the file stays marked dirty; then lose the WAL.
        path = os.path.join(directory, DATA_FILE)
        mapping = store._shelf.dict
        mapping._closed = True  # no clean-shutdown mark: this is a crash
        mapping._db.close()
        store._shelf = None
        store._open = False
        if os.path.exists(path + "-wal"):
            os.unlink(path + "-wal")
        error = self.assertRaises(StoreCorrupt, check_data_dir, directory)
        self.assertIn("write-ahead log", str(error))

    def test_group_commit_keeps_each_outcome(self):
        """
        Commits queued behind a busy store thread keep their own results,
        and none waits for more than the sync in progress and its own (the
        syncs-waited count metrics report).
        """
        pool = HeldThreadPool()
        reactor = ThreadlessReactor()
        store = ShelveStore(os.path.join(self.mktemp(), "data"), reactor, pool)
        pool.release_all = True
        self.successResultOf(store.open())
        pool.release_all = False
        syncs = []
        store.sync_observer = lambda seconds, count: syncs.append((seconds, count))
        waited = []
        store.syncs_waited_observer = waited.append
        first = store.commit([Put("a", b"1")])
        second = store.commit([Put("a", b"2")], [Check.equals("a", 1)])
        third = store.commit([Put("b", b"x")], [Check.equals("a", 99)])
        fourth = store.commit([Put("c", b"y")])
        # One trip is in flight (the first commit); the rest wait as a group.
        self.assertEqual(len(pool.held), 1)
        pool.run_next()
        self.assertEqual(self.successResultOf(first).revision, 1)
        self.assertEqual(len(pool.held), 1)
        pool.run_next()
        self.assertEqual(self.successResultOf(second).revision, 2)
        self.failureResultOf(third).trap(ConflictError)
        self.assertEqual(self.successResultOf(fourth).revision, 3)
        self.assertEqual(store.revision, 3)
        pool.release_all = True
        self.assertEqual(len(syncs), 2)
        self.assertEqual([count for _, count in syncs], [1, 3])
        # The first went at once (its own sync); the others waited for it.
        self.assertEqual(waited, [1, 2, 2, 2])
        # Submitted while the store thread is idle again: its own sync only.
        self.successResultOf(store.commit([Put("d", b"z")]))
        self.assertEqual(waited[-1], 1)
        self.successResultOf(store.close())


    def test_group_told_to_listeners_before_any_answer(self):
        """
        Every listener hears of each commit of a group before the first
        commit of it is answered (so a listener that batches, such as the
        workers' change feed, sends the group as one message).
        """
        pool = HeldThreadPool()
        reactor = ThreadlessReactor()
        store = ShelveStore(os.path.join(self.mktemp(), "data"), reactor, pool)
        pool.release_all = True
        self.successResultOf(store.open())
        pool.release_all = False
        events = []
        store.add_listener(lambda result: events.append(("heard", result.revision)))
        store.commit([Put("a", b"1")])
        group = [store.commit([Put(key, b"1")]) for key in ("b", "c")]
        for d in group:
            d.addCallback(lambda result: events.append(("answered", result.revision)))
        pool.run_next()
        pool.run_next()
        self.assertEqual(events, [("heard", 1), ("heard", 2), ("heard", 3), ("answered", 2), ("answered", 3)])
        pool.release_all = True
        self.successResultOf(store.close())


def _lockable_elsewhere(directory: str) -> bool:
    """Whether a new open of DIR/lock could take its flock (as another process would)."""
    fd = os.open(os.path.join(directory, LOCK_FILE), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


class DataDirectoryLockTests(InlineShelve, SynchronousTestCase):
    """The store holds its data directory's lock while open, shared within the process."""

    def test_held_while_open(self):
        """An open store holds DIR/lock (with this PID); closing it releases the lock."""
        directory = os.path.join(self.mktemp(), "data")
        store = self.open_store(directory)
        self.assertFalse(_lockable_elsewhere(directory))
        with open(os.path.join(directory, LOCK_FILE)) as f:
            self.assertEqual(f.read(), "%d\n" % (os.getpid(),))
        self.successResultOf(store.close())
        self.assertTrue(_lockable_elsewhere(directory))

    def test_shared_within_the_process(self):
        """A hold for the process's life (as twistd takes it), the startup check and the store share the lock; it is freed when the last lets go."""
        directory = os.path.join(self.mktemp(), "data")
        held = hold_data_dir(directory)
        self.assertEqual(check_data_dir(directory), 0)
        store = self.open_store(directory)
        held.release()
        self.assertFalse(_lockable_elsewhere(directory))
        self.successResultOf(store.close())
        self.assertTrue(_lockable_elsewhere(directory))

    def test_one_open_store_per_file(self):
        """A second store opened on a directory while one is open in the same process is refused (it would serve stale reads)."""
        directory = os.path.join(self.mktemp(), "data")
        self.open_store(directory)
        second = ShelveStore(directory, self.reactor, InlineThreadPool())
        failure = self.failureResultOf(second.open(), StoreUnavailable)
        self.assertIn("in use by another connection", failure.value.detail)

    def test_busy_names_the_holder(self):
        """The refusal names the holder's PID and the directory."""
        error = DataDirectoryBusy("/srv/kv", 4242)
        self.assertEqual(
            str(error),
            "the data directory /srv/kv is in use by process 4242 (it holds "
            "/srv/kv/lock); one server owns a data directory at a time",
        )


class FullDiskTests(InlineShelve, SynchronousTestCase):
    """SQLite's "database or disk is full" (here its page-count cap) is InsufficientStorage, and passes."""

    def test_full_then_space_returns(self):
        """A commit past the space left fails with InsufficientStorage and applies nothing; once there is room the same commit succeeds."""
        store = self.open_store()
        self.successResultOf(store.commit([Put("a", b"1")]))
        db = store._shelf.dict._db
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute("PRAGMA max_page_count = %d" % (pages,))
        failure = self.failureResultOf(store.commit([Put("big", b"x" * 100_000)]), InsufficientStorage)
        self.assertIn("disk full", failure.value.detail)
        self.assertIsNone(self.successResultOf(store.get("big")))
        db.execute("PRAGMA max_page_count = %d" % (pages * 100,))
        self.successResultOf(store.ping())
        self.successResultOf(store.commit([Put("big", b"x" * 100_000)]))
        self.assertEqual(store.revision, 2)


#: The table of store format 1, as kvtwist created it before the rowid
#: layout: the fixture the migration is tested from.
FORMAT_1_TABLE = """
CREATE TABLE shelf (
    key BLOB PRIMARY KEY,
    value BLOB NOT NULL,
    crc INTEGER NOT NULL
) WITHOUT ROWID
"""


def make_format_1(directory):
    """
    Turn the closed store in C{directory} into a format-1 file: the same
    rows (records and checksums as written) in the old C{WITHOUT ROWID}
    table, C{user_version} 1, marked cleanly shut down.
    """
    db = sqlite3.connect(os.path.join(directory, DATA_FILE), isolation_level=None)
    db.execute("BEGIN")
    db.execute("ALTER TABLE shelf RENAME TO current")
    db.execute(FORMAT_1_TABLE)
    db.execute("INSERT INTO shelf SELECT key, value, crc FROM current")
    db.execute("DROP TABLE current")
    db.execute("PRAGMA user_version = 1")
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def store_format(directory):
    """The closed data file's C{user_version} and whether its shelf is WITHOUT ROWID."""
    db = sqlite3.connect(os.path.join(directory, DATA_FILE))
    try:
        return connection_format(db)
    finally:
        db.close()


def connection_format(db):
    """L{store_format} through C{db} (an open store's own connection: it holds the file exclusively)."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    sql = db.execute("SELECT sql FROM sqlite_master WHERE name = 'shelf'").fetchone()[0]
    return version, "WITHOUT ROWID" in sql


class FormatMigrationTests(InlineShelve, SynchronousTestCase):
    """A format-1 data file (WITHOUT ROWID) is migrated on open, losing nothing."""

    def populated_format_1(self):
        """A closed format-1 store with several revisions, an expiry and a delete; and its entries."""
        directory = os.path.join(self.mktemp(), "data")
        store = self.open_store(directory)
        now = self.reactor.seconds()
        self.successResultOf(store.commit([Put("a", b"1"), Put("big", b"B" * 300_000)]))
        self.successResultOf(store.commit([Put("a", b"2", "text/plain"), Put("gone", b"x")]))
        self.successResultOf(store.commit([Put("ttl", b"t", expires=now + 60), Delete("gone")]))
        self.successResultOf(store.commit([Put("é/ü", b"\x00\xff")]))
        keys = ["a", "big", "ttl", "é/ü"]
        entries = self.successResultOf(store.get_many(keys))
        self.assertEqual(len(entries), 4)
        self.successResultOf(store.close())
        make_format_1(directory)
        self.assertEqual(store_format(directory), (1, True))
        return directory, entries

    def test_open_migrates_and_keeps_everything(self):
        """Every value, content type, revision, version and expiry survives; the file is format 2."""
        directory, before = self.populated_format_1()
        store = self.open_store(directory)
        self.assertEqual(connection_format(store._shelf.dict._db), (2, False))
        self.assertEqual((store.revision, store.key_count), (4, 4))
        self.assertEqual(self.successResultOf(store.get_many(list(before))), before)
        # The expiry index came along: the key is swept when due.
        self.assertEqual(self.successResultOf(store.expired(10)), [])
        self.reactor.advance(61)
        self.assertEqual(self.successResultOf(store.expired(10)), [("ttl", 3)])
        # And the store goes on working in its new layout.
        self.successResultOf(store.commit([Put("a", b"3")]))
        self.assertEqual(self.successResultOf(store.get("a")).version, 3)

    def test_preflight_leaves_migration_to_the_store_thread(self):
        """The startup check reads a format-1 file as it is; the store's own open migrates it."""
        directory, _ = self.populated_format_1()
        self.assertEqual(check_data_dir(directory), 4)
        self.assertEqual(store_format(directory), (1, True))

    def test_failed_migration_leaves_format_1_whole(self):
        """A migration that fails part-way changes nothing; the next open migrates."""
        directory, before = self.populated_format_1()
        broken = self.patch(sqlitemap, "_SCHEMA", "CREATE TABLE shelf (broken")
        self.assertRaises(StoreCorrupt, ShelveStore(directory, self.reactor, InlineThreadPool())._sync_open)
        self.assertEqual(store_format(directory), (1, True))
        self.assertEqual(check_data_dir(directory), 4)
        broken.restore()
        store = self.open_store(directory)
        self.assertEqual(self.successResultOf(store.get_many(list(before))), before)

    def test_damaged_format_1_refused_not_migrated(self):
        """A damaged format-1 file is refused at open, and left as it was."""
        directory, _ = self.populated_format_1()
        db = sqlite3.connect(os.path.join(directory, DATA_FILE))
        db.execute("UPDATE shelf SET value = ? WHERE key = ?", (b"garbled", b"k/a"))
        db.commit()
        db.close()
        store = ShelveStore(directory, self.reactor, InlineThreadPool())
        error = self.assertRaises(StoreCorrupt, store._sync_open)
        self.assertIn("checksum", str(error))
        self.assertEqual(store_format(directory), (1, True))

    def test_kill_during_migration_leaves_one_layout(self):
        """kill -9 in the middle of a migration leaves the old layout whole; the next open migrates it."""
        directory = os.path.join(self.mktemp(), "data")
        store = self.open_store(directory)
        # Enough to make the migration last a while: 24 MiB to copy.
        self.successResultOf(store.commit([Put("v%02d" % i, bytes([i]) * (1 << 20)) for i in range(24)]))
        self.successResultOf(store.close())
        make_format_1(directory)
        child = subprocess.Popen(
            [sys.executable, "-c", MIGRATE_AND_REPORT, os.path.join(directory, DATA_FILE)],
            stdout=subprocess.PIPE,
        )
        self.assertEqual(child.stdout.readline(), b"migrating\n")
        time.sleep(0.02)
        child.kill()
        rest = child.stdout.read()
        child.wait()
        child.stdout.close()
        self.assertNotIn(b"migrated", rest, "the migration ended before the kill: make it longer")
        self.assertEqual(store_format(directory), (1, True))
        store = self.open_store(directory)
        self.assertEqual(connection_format(store._shelf.dict._db), (2, False))
        self.assertEqual(store.revision, 1)
        entries = self.successResultOf(store.get_many(["v%02d" % i for i in range(24)]))
        self.assertEqual([e.value for e in entries.values()], [bytes([i]) * (1 << 20) for i in range(24)])


#: Run in a child process: open a format-1 file, saying when the migration
#: starts and when it ended.
MIGRATE_AND_REPORT = """
import sys
from kvtwist.store.sqlitemap import SQLiteMapping

class Reporting(SQLiteMapping):
    def _migrate(self):
        print("migrating", flush=True)
        super()._migrate()
        print("migrated", flush=True)

Reporting(sys.argv[1], check_integrity=False).close()
"""


class StatementCountTests(InlineShelve, SynchronousTestCase):
    """
    A group commit costs a fixed number of SQLite statements, whatever the
    number of keys: on the store thread each statement waits for the GIL
    (see L{kvtwist.store.sqlitemap.SQLiteMapping.get_many}).
    """

    def statements_for(self, store, ops):
        """The SQL statements a commit of C{ops} runs, and its result."""
        statements = []
        connection = store._shelf.dict._db
        connection.set_trace_callback(statements.append)
        try:
            result = self.successResultOf(store.commit(ops))
        finally:
            connection.set_trace_callback(None)
        return statements, result

    def test_statements_do_not_grow_with_keys(self):
        """
        Committing 10 keys and committing 100 keys (overwriting keys with
        TTLs, so their expiry index moves) run the same number of
        statements, at most eight; the data, revisions and index are right.
        """
        store = self.open_store()
        expires = self.reactor.seconds() + 100
        for count in (10, 100):
            names = ["k%d-%d" % (count, i) for i in range(count)]
            self.successResultOf(store.commit([Put(name, b"old", expires=expires) for name in names]))
        counts = {}
        for count in (10, 100):
            names = ["k%d-%d" % (count, i) for i in range(count)]
            statements, result = self.statements_for(
                store, [Put(name, b"new", expires=expires + 50) for name in names]
            )
            counts[count] = len(statements)
            self.assertEqual([change.entry.version for change in result.changes], [2] * count)
        self.assertEqual(counts[10], counts[100])
        self.assertLessEqual(counts[100], 8)
        self.assertEqual(self.successResultOf(store.get("k100-99")).value, b"new")
        self.reactor.advance(120)
        # Only the moved index entries remain: nothing is due before +150 s.
        self.assertEqual(self.successResultOf(store.expired(1000)), [])
        self.reactor.advance(40)
        self.assertEqual(len(self.successResultOf(store.expired(1000))), 110)


#: The model test's world: a few keys, so commits collide.
MODEL_KEYS = ("a", "b", "c")
MODEL_START = 1_700_000_000.0


def _model_op(kind: str, key: str, value: bytes, ttl: Optional[float], mod_revision: int):
    if kind == "put":
        return Put(key, value, expires=MODEL_START + ttl if ttl is not None else None)
    if kind == "delete":
        return Delete(key)
    return Expire(key, mod_revision)


_keys = st.sampled_from(MODEL_KEYS)
model_ops = st.builds(
    _model_op,
    st.sampled_from(["put", "put", "delete", "expire"]),
    _keys,
    st.sampled_from([b"1", b"22"]),
    st.sampled_from([None, 30.0, 60.0]),
    st.integers(1, 6),
)
model_checks = st.one_of(
    st.builds(Check.equals, _keys, st.integers(0, 6)),
    st.builds(Check.absent, _keys),
    st.builds(Check.present, _keys),
)
model_commits = st.tuples(
    st.lists(model_ops, max_size=4), st.lists(model_checks, max_size=2)
)


class GroupCommitModelTests(SynchronousTestCase):
    """
    Commits grouped into one trip of the store thread (one SQLite
    transaction, reads prefetched, writes held back and applied at the end)
    give exactly what the same commits give applied one by one to the memory
    store, which shares the commit rules: each outcome (revision, changes,
    or the conflict's failed checks), the data, the expiry index, and all
    of it again after a reopen.
    """

    def outcome(self, d):
        """A commit's result, or its conflict's failures, for comparison."""
        results = []
        d.addBoth(results.append)
        [result] = results
        if isinstance(result, Failure):
            result.trap(ConflictError)
            return ("conflict", result.value.failures)
        return ("ok", result.revision, result.changes)

    def state(self, store, clock):
        """Every model key's entry, and the expiry index up to 100 s on."""
        entries = {}
        for key in MODEL_KEYS:
            entries[key] = self.successResultOf(store.get(key))
        clock.advance(100)
        due = sorted(self.successResultOf(store.expired(100)))
        clock.advance(-100)
        return entries, due

    @settings(max_examples=150, deadline=None)
    @given(history=st.lists(model_commits, max_size=4), group=st.lists(model_commits, min_size=1, max_size=6))
    def test_grouped_commits_match_one_by_one(self, history, group):
        """
        A history of single commits, then a group queued behind a busy
        store thread: outcomes, data and expiry index equal the memory
        store's, before and after reopening.
        """
        directory = os.path.join(tempfile.mkdtemp(prefix="kvtwist-group-"), "data")
        self.addCleanup(shutil.rmtree, os.path.dirname(directory), True)
        pool = HeldThreadPool()
        reactor = ThreadlessReactor()
        reactor.advance(MODEL_START)
        store = ShelveStore(directory, reactor, pool)
        pool.release_all = True
        self.successResultOf(store.open())
        memory = MemoryStore(Clock())
        memory.clock.advance(MODEL_START)

        for ops, checks in history:
            self.assertEqual(
                self.outcome(store.commit(ops, checks)), self.outcome(memory.commit(ops, checks))
            )
        # One commit holds the store thread; the group queues behind it and
        # goes in the next trip, as one.
        pool.release_all = False
        busy = store.commit([Put("busy", b"x")])
        pending = [store.commit(ops, checks) for ops, checks in group]
        pool.run_next()
        self.assertEqual(len(pool.held), 1)
        pool.run_next()
        expected_busy = self.outcome(memory.commit([Put("busy", b"x")]))
        self.assertEqual(self.outcome(busy), expected_busy)
        for (ops, checks), d in zip(group, pending):
            self.assertEqual(self.outcome(d), self.outcome(memory.commit(ops, checks)))
        pool.release_all = True
        expected = self.state(memory, memory.clock)
        self.assertEqual(self.state(store, reactor), expected)
        self.successResultOf(store.close())

        reopened = ShelveStore(directory, reactor, InlineThreadPool())
        self.successResultOf(reopened.open())
        self.assertEqual(reopened.revision, memory.revision)
        self.assertEqual(self.state(reopened, reactor), expected)
        self.successResultOf(reopened.close())


class HeldThreadPool(InlineThreadPool):
    """An inline pool that holds calls until the test runs them."""

    release_all = False

    def __init__(self):
        self.held = []

    def callInThreadWithCallback(self, onResult, func, *args, **kw):
        if self.release_all:
            return super().callInThreadWithCallback(onResult, func, *args, **kw)
        self.held.append((onResult, func, args, kw))

    def run_next(self):
        onResult, func, args, kw = self.held.pop(0)
        super().callInThreadWithCallback(onResult, func, *args, **kw)


class BoundedStopTests(SynchronousTestCase):
    """A graceful stop waits for the store, but at most --stop-timeout seconds."""

    def held_store(self):
        """A shelve store on a held pool, open, with nothing run yet."""
        pool = HeldThreadPool()
        store = ShelveStore(os.path.join(self.mktemp(), "data"), ThreadlessReactor(), pool)
        pool.release_all = True
        self.successResultOf(store.open())
        pool.release_all = False
        self.addCleanup(self._release, store, pool)
        return store, pool

    def _release(self, store, pool):
        pool.release_all = True
        while pool.held:
            pool.run_next()
        store._sync_close()

    def test_work_in_flight(self):
        """The store names the group commit on its thread, the commits queued behind it, and reads not answered."""
        store, pool = self.held_store()
        self.assertTrue(verifyObject(IWorkInFlight, store))
        self.assertEqual(store.work_in_flight(), "nothing")
        store.commit([Put("a", b"1"), Put("b", b"2")])
        store.commit([Put("c", b"3")])
        store.commit([Delete("a")])
        store.get("a")
        self.assertEqual(
            store.work_in_flight(),
            "a group of 1 commit (2 ops) on the store thread and 2 commits (2 ops) queued and 1 read",
        )

    def test_cut_short_after_the_timeout(self):
        """A store close that outlasts the stop timeout is logged as cut short, naming the work abandoned, and the process exits 0."""
        store, pool = self.held_store()
        store.commit([Put("a", b"1")])
        clock, exits = Clock(), []
        service = StoreService(
            store, None, clock, stop_timeout=3, work_in_flight=store, exit=exits.append
        )
        service.running = True
        with capturedLogs() as events:
            d = service.stopService()
            clock.advance(2.9)
            self.assertEqual(exits, [])
            clock.advance(0.1)
        self.assertNoResult(d)
        self.assertEqual(exits, [0])
        text = [formatEvent(event) for event in events]
        self.assertEqual(len(text), 1, text)
        self.assertIn("graceful stop cut short after 3 s", text[0])
        self.assertIn("abandoning a group of 1 commit (1 ops) on the store thread", text[0])

    def test_stop_in_time_is_not_cut(self):
        """A store that closes within the timeout stops normally: no exit, no warning later."""
        store, pool = self.held_store()
        clock, exits = Clock(), []
        service = StoreService(store, None, clock, stop_timeout=3, exit=exits.append)
        service.running = True
        d = service.stopService()
        pool.release_all = True
        pool.run_next()
        self.successResultOf(d)
        clock.advance(10)
        self.assertEqual(exits, [])


class RealThreadTests(TestCase):
    """The shelve store on its real one-thread pool, under the real reactor."""

    async def _exercise(self, directory):
        pool = store_thread_pool()
        store = ShelveStore(directory, reactor, pool)
        service = StoreService(store, pool, reactor)
        service.startService()
        await service.ready
        results = await gatherResults(
            [store.commit([Put("k%d" % i, b"%d" % i)]) for i in range(50)]
        )
        self.assertEqual(sorted(r.revision for r in results), list(range(1, 51)))
        found = await store.get_many(["k%d" % i for i in range(50)])
        self.assertEqual(len(found), 50)
        await service.stopService()
        self.assertFalse(pool.started)

    def test_real_pool(self):
        """Concurrent commits on the real store thread all land, each once."""
        return Deferred.fromCoroutine(
            self._exercise(os.path.join(self.mktemp(), "data"))
        )
