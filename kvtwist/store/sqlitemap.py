# -*- test-case-name: tests.contract.test_store_shelve -*-
"""
A byte-string mapping on the stdlib C{sqlite3} module: the storage under
kvtwist's C{shelve.Shelf}.

Why not C{dbm}: Python 3.11 here has only C{dbm.dumb}, which reopened empty
after C{kill -9} in up to 94 of 200 runs; 3.13's C{dbm.sqlite3} splits
batches and its files do not open on 3.11. This module gives the shelf what
it lacks: WAL with C{synchronous=FULL}, explicit transactions (one
C{BEGIN IMMEDIATE ... COMMIT} per group of commits), ordered range scans, and
a CRC on every row so a damaged value is refused, never served. The file is
opened in exclusive locking mode (one connection, no mapped C{-shm}), and a
full disk is told apart from damage (L{is_disk_full}).

Layout: a rowid table whose unique index on C{key} holds keys only, so a
key lookup walks small index entries and never reads a value. (Format 1 was
a C{WITHOUT ROWID} table keyed by C{key}: there a key comparison against a
row whose value overflowed its page read every overflow page of that value,
so a few large values slowed every write; see docs/performance.md.) A format-1 file is migrated on open, in one
transaction: a crash during it leaves the old layout, whole.

Everything here runs on the store thread only (the connection enforces it
with C{check_same_thread}).
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import time
import zlib
from contextlib import contextmanager
from typing import Dict, Iterable, Iterator, List, Mapping, MutableMapping, Optional, Sequence, Tuple

from kvtwist.errors import InsufficientStorage, StoreCorrupt, StoreUnavailable
from kvtwist.store.history import KIND_CODES, PUT, step_end

#: Written into the SQLite header so a random database is not taken for ours.
APPLICATION_ID = 0x6B767477  # "kvtw"
SCHEMA_VERSION = 2
#: The format this module migrates from (see L{SQLiteMapping._migrate}).
FORMAT_WITHOUT_ROWID = 1

#: The value comes last: reading C{crc} or C{key} from a row then never
#: walks the value's overflow pages.
_SCHEMA = """
CREATE TABLE shelf (
    id INTEGER PRIMARY KEY,
    key BLOB NOT NULL UNIQUE,
    crc INTEGER NOT NULL,
    value BLOB NOT NULL
)
"""


#: The history of every change (see L{kvtwist.interfaces.IHistoricalStore}):
#: one row per key a commit changed, with the pickled entry of a put and no
#: record for a delete or expiry. Its own table, made by the opening that
#: migrates (after any migration of the key table, whose layout changes
#: beside it; L{SQLiteMapping.history_created}). The index walks it in
#: revision order (compaction, watches).
_HISTORY_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS history (
        key BLOB NOT NULL,
        revision INTEGER NOT NULL,
        kind INTEGER NOT NULL,
        record BLOB,
        crc INTEGER NOT NULL,
        PRIMARY KEY (key, revision)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX IF NOT EXISTS history_by_revision ON history (revision)",
)

#: Leases (see L{kvtwist.interfaces.ILeasingStore}): each lease's ttl and
#: absolute deadline (the store clock's seconds, so the remaining time
#: survives a restart), and which lease each attached key belongs to. Written
#: in the same transaction as the data they govern.
_LEASE_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS leases (
        id INTEGER PRIMARY KEY,
        ttl REAL NOT NULL,
        deadline REAL NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS leases_by_deadline ON leases (deadline)",
    """
    CREATE TABLE IF NOT EXISTS lease_keys (
        key BLOB PRIMARY KEY,
        lease INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
    "CREATE INDEX IF NOT EXISTS lease_keys_by_lease ON lease_keys (lease, key)",
)

#: A history row: key, revision, kind code, and the record (None for a
#: tombstone).
HistoryRow = Tuple[bytes, int, int, Optional[bytes]]


def _history_crc(key: bytes, revision: int, kind: int, record: Optional[bytes]) -> int:
    return _crc(key, b"%d:%d:" % (revision, kind) + (record or b""))


def _out_of_space(path: str) -> bool:
    try:
        return os.statvfs(path).f_bavail == 0
    except OSError:
        return False


def is_disk_full(error: BaseException, path: Optional[str] = None) -> bool:
    """
    Whether C{error} says the file system is out of space (or the owner's
    quota): SQLite's C{SQLITE_FULL}, C{ENOSPC} or C{EDQUOT} from the OS,
    or, with the C{path} written to, an SQLite I/O error while that file
    system has no space left (SQLite reports some failed writes, such as
    growing a file, as plain I/O errors).
    """
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    if not isinstance(error, sqlite3.Error):
        return False
    code = getattr(error, "sqlite_errorcode", None)  # Python 3.11 and newer
    if code is None:
        if "disk is full" in str(error):
            return True
        io_error = "disk I/O error" in str(error)
    else:
        if code & 0xFF == sqlite3.SQLITE_FULL:
            return True
        io_error = code & 0xFF == sqlite3.SQLITE_IOERR
    return io_error and path is not None and _out_of_space(path)


#: The files SQLite keeps next to the database in WAL mode.
SIDE_FILES = ("-wal", "-shm")


def check_writable(path: str) -> None:
    """
    Refuse a store whose file, write-ahead log or shared-memory file exists
    but is not a regular file this process can open for writing: an
    immutable file (C{chattr +i}, which stops root too), a directory, a
    read-only mount. SQLite would otherwise fail with a misleading
    "readonly database", or die of SIGBUS touching a mapped C{-shm} it
    cannot write.

    @raise StoreUnavailable: naming the file and what is wrong with it.
    """
    for name in (path,) + tuple(path + suffix for suffix in SIDE_FILES):
        try:
            mode = os.lstat(name).st_mode
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(mode):
            raise StoreUnavailable(
                "%s is not a regular file; kvcache must be able to write it" % (name,)
            )
        try:
            os.close(os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC))
        except OSError as e:
            raise StoreUnavailable(
                "%s cannot be opened for writing (%s); kvcache must be able to "
                "write it: is it immutable (lsattr, chattr -i), owned by another "
                "user, or on a read-only mount?" % (name, e.strerror or e)
            )


def _crc(key: bytes, value: bytes) -> int:
    # The key is folded in so a row whose value was swapped with another's
    # is caught as well as a flipped byte.
    return zlib.crc32(value, zlib.crc32(key))


def prefix_upper_bound(prefix: bytes) -> Optional[bytes]:
    """
    The smallest byte string greater than every string starting with
    C{prefix}, or L{None} when there is none (an empty or all-0xFF prefix).
    """
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


#: Rows per statement in L{SQLiteMapping.get_many} and
#: L{SQLiteMapping.update_many}: three parameters a row stays under the 999
#: that SQLite before 3.32 allowed in one statement.
ROWS_PER_STATEMENT = 300


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class CommitTiming:
    """How long a transaction's COMMIT took (a measurement, not logic)."""

    sync_seconds = 0.0


class SQLiteMapping(MutableMapping[bytes, bytes]):
    """
    A durable C{bytes -> bytes} mapping in one SQLite file.

    Outside L{transaction} each write is its own durable transaction; kvtwist
    always writes inside one.

    @param migrate: rewrite a format-1 file into the current layout (see
        L{_migrate}). Without it such a file is read and written in its old
        layout: a preflight check on the main thread leaves the migration
        to the store thread.
    @raise StoreCorrupt: from the constructor, if the file is not a kvtwist
        store, fails SQLite's integrity check, or lost its write-ahead log.
    """

    _closed = False

    def __init__(self, path: str, check_integrity: bool = True, migrate: bool = True) -> None:
        self.path = path
        check_writable(path)
        wal_existed = os.path.exists(path + "-wal")
        created = not os.path.exists(path)
        if created:
            # Created here with 0600 so SQLite's -wal and -shm files, which
            # copy the database's mode, are private too.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        elif os.path.getsize(path) == 0 and not wal_existed:
            # SQLite would take an empty file for a new database: a store
            # cut to nothing must not come back as an empty store.
            raise StoreCorrupt(
                "%s is empty: refusing to start it as a new, empty store "
                "(delete it to start afresh, or restore it from a backup)" % (path,)
            )
        try:
            self._db = sqlite3.connect(path, isolation_level=None)
            self._setup(check_integrity, wal_existed, migrate)
        except sqlite3.DatabaseError as e:
            self._close_quietly()
            if is_disk_full(e, os.path.dirname(path) or "."):
                # Opening writes (the shutdown mark, a checkpoint): a full
                # disk is not damage.
                raise InsufficientStorage(
                    "%s: disk full (%s); free space on its file system and "
                    "start again" % (path, e)
                )
            if "database is locked" in str(e):
                # Exclusive locking: another connection has the file open.
                raise StoreUnavailable("%s is in use by another connection (%s)" % (path, e))
            raise StoreCorrupt("%s: not a readable kvtwist store (%s)" % (path, e))
        except StoreCorrupt:
            self._close_quietly()
            raise

    def _close_quietly(self) -> None:
        db = getattr(self, "_db", None)
        self._closed = True
        if db is not None:
            db.close()

    def _setup(self, check_integrity: bool, wal_existed: bool, migrate: bool) -> None:
        db = self._db
        # Before the first read: in exclusive locking mode SQLite keeps the
        # WAL index in its own memory instead of mapping the -shm file, so
        # no -shm (made immutable or truncated by someone, even while we
        # run) can kill the process with SIGBUS. One connection at a time
        # uses the file anyway (the data directory's lock sees to that).
        db.execute("PRAGMA locking_mode = EXCLUSIVE")
        application_id = db.execute("PRAGMA application_id").fetchone()[0]
        tables = db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
        ).fetchall()
        if application_id == 0 and not tables:
            db.execute("PRAGMA application_id = %d" % APPLICATION_ID)
            db.execute("PRAGMA user_version = %d" % SCHEMA_VERSION)
            db.execute(_SCHEMA)
            # A new store is "clean": it has no write-ahead log to lose.
            db.execute(
                "CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value TEXT)"
            )
            db.execute("INSERT OR REPLACE INTO state VALUES ('shutdown', 'clean')")
        elif application_id != APPLICATION_ID:
            raise StoreCorrupt("%s is not a kvtwist store" % (self.path,))
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (SCHEMA_VERSION, FORMAT_WITHOUT_ROWID):
            raise StoreCorrupt(
                "%s has store format %d; this kvtwist reads format %d"
                % (self.path, version, SCHEMA_VERSION)
            )
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StoreCorrupt("%s: cannot enable write-ahead logging" % (self.path,))
        db.execute("PRAGMA synchronous = FULL")
        shutdown = db.execute(
            "SELECT value FROM state WHERE name = 'shutdown'"
        ).fetchone()
        if shutdown is not None and shutdown[0] == "dirty" and not wal_existed:
            # The last run crashed, so its recent commits lived in the
            # write-ahead log; that log is gone, so acknowledged commits
            # would silently vanish. Refuse rather than serve old data.
            raise StoreCorrupt(
                "%s: the write-ahead log %s-wal of an unclean shutdown is "
                "missing; acknowledged commits may be lost. Restore it, or "
                "restore the store from a backup." % (self.path, self.path)
            )
        if check_integrity:
            self._check_integrity()
        if version == FORMAT_WITHOUT_ROWID and migrate:
            self._migrate()
        #: Whether this open made the history table (the store then builds
        #: its history from the keys); a read-only preflight makes nothing.
        self.history_created = False
        if migrate:
            self.history_created = not db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'history'"
            ).fetchone()
            for statement in _HISTORY_SCHEMA + _LEASE_SCHEMA:
                db.execute(statement)
        self._count_leases()
        self._mark("dirty")
        # Move the "dirty" mark into the main file, so that losing the log
        # from here on is detectable at the next start.
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _check_integrity(self) -> None:
        """
        Refuse a damaged file: a size that is not whole pages, SQLite's
        structural check, then every row's checksum (a full scan: startup
        time grows with the store, see docs/performance.md).
        """
        db = self._db
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        size = os.path.getsize(self.path)
        if size % page_size:
            raise StoreCorrupt(
                "%s is truncated: %d bytes is not a whole number of %d-byte pages"
                % (self.path, size, page_size)
            )
        problems = [row[0] for row in db.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise StoreCorrupt(
                "%s failed its integrity check: %s" % (self.path, "; ".join(problems[:5]))
            )
        db.create_function("kvtwist_crc", 2, _crc, deterministic=True)
        damaged = db.execute(
            "SELECT key FROM shelf WHERE kvtwist_crc(key, value) != crc LIMIT 5"
        ).fetchall()
        if damaged:
            raise StoreCorrupt(
                "%s: the stored values of %s are damaged (checksum mismatch)"
                % (self.path, ", ".join(repr(bytes(key)) for (key,) in damaged))
            )

    def _migrate(self) -> None:
        """
        Rewrite a format-1 shelf (C{WITHOUT ROWID}) into the current layout,
        checksums as they are, in one transaction: SQLite's write-ahead log
        makes it all or nothing, so a crash leaves format 1 whole and the
        next open migrates again. Runs after the integrity check, so a
        damaged file is refused, not migrated. The file keeps the old
        table's pages as free pages, reused by later writes.
        """
        db = self._db
        with self.transaction():
            db.execute("ALTER TABLE shelf RENAME TO shelf_format_1")
            db.execute(_SCHEMA)
            db.execute(
                "INSERT INTO shelf (key, crc, value) "
                "SELECT key, crc, value FROM shelf_format_1 ORDER BY key"
            )
            db.execute("DROP TABLE shelf_format_1")
            db.execute("PRAGMA user_version = %d" % SCHEMA_VERSION)

    def _mark(self, state: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO state VALUES ('shutdown', ?)", (state,)
        )

    @contextmanager
    def transaction(self) -> Iterator["CommitTiming"]:
        """
        Run the block as one durable write transaction: on a normal exit it is
        committed and synced (WAL, C{synchronous=FULL}); on an exception it is
        rolled back and the exception propagates. The yielded
        L{CommitTiming} holds, afterwards, how long the COMMIT (the sync) took.
        """
        timing = CommitTiming()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield timing
        except BaseException:
            self._db.execute("ROLLBACK")
            self._count_leases()
            raise
        started = time.perf_counter()
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error:
            # SQLite rolls back by itself on most failed COMMITs (a full
            # disk); make sure, so the next write can BEGIN again.
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        timing.sync_seconds = time.perf_counter() - started

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Run the block's reads against one consistent state of the file."""
        self._db.execute("BEGIN")
        try:
            yield
        finally:
            self._db.execute("COMMIT")

    def _checked(self, key: bytes, value: bytes, crc: int) -> bytes:
        if _crc(key, value) != crc:
            raise StoreCorrupt(
                "%s: the stored value of %r is damaged (checksum mismatch)"
                % (self.path, key)
            )
        return value

    def __getitem__(self, key: bytes) -> bytes:
        row = self._db.execute(
            "SELECT value, crc FROM shelf WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            raise KeyError(key)
        return self._checked(key, row[0], row[1])

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO shelf (key, value, crc) VALUES (?, ?, ?)",
            (key, value, _crc(key, value)),
        )

    # The many-row methods exist for the store thread's sake: every sqlite3
    # call gives up the GIL, and under load each one then waits for the
    # reactor thread to hand it back (about 0.3 ms, measured), so a group
    # commit costs what its number of statements costs, far more than its
    # I/O. One statement per 300 rows instead of one per row.

    def get_many(self, keys: Iterable[bytes]) -> Dict[bytes, bytes]:
        """
        The stored values of those of C{keys} that exist (checksums
        verified), read with one statement per L{ROWS_PER_STATEMENT} keys.
        """
        found: Dict[bytes, bytes] = {}
        for chunk in _chunks(list(dict.fromkeys(keys)), ROWS_PER_STATEMENT):
            sql = "SELECT key, value, crc FROM shelf WHERE key IN (%s)" % ",".join("?" * len(chunk))
            for key, value, crc in self._db.execute(sql, chunk):
                found[key] = self._checked(key, value, crc)
        return found

    def update_many(self, puts: Mapping[bytes, bytes], deletes: Iterable[bytes] = ()) -> None:
        """
        Store every value of C{puts} under its key and remove every key of
        C{deletes} (absent ones included), with one statement per
        L{ROWS_PER_STATEMENT} rows. A key in both ends up stored.
        """
        removed = [key for key in dict.fromkeys(deletes) if key not in puts]
        for chunk in _chunks(removed, ROWS_PER_STATEMENT):
            self._db.execute(
                "DELETE FROM shelf WHERE key IN (%s)" % ",".join("?" * len(chunk)), chunk
            )
        for chunk in _chunks(list(puts.items()), ROWS_PER_STATEMENT):
            params: list = []
            for key, value in chunk:
                params += (key, value, _crc(key, value))
            self._db.execute(
                "INSERT OR REPLACE INTO shelf (key, value, crc) VALUES %s"
                % ",".join(["(?, ?, ?)"] * len(chunk)),
                params,
            )

    def __delitem__(self, key: bytes) -> None:
        if self._db.execute("DELETE FROM shelf WHERE key = ?", (key,)).rowcount == 0:
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return (
            self._db.execute("SELECT 1 FROM shelf WHERE key = ?", (key,)).fetchone()
            is not None
        )

    def __iter__(self) -> Iterator[bytes]:
        for (key,) in self._db.execute("SELECT key FROM shelf ORDER BY key").fetchall():
            yield key

    def __len__(self) -> int:
        return self._db.execute("SELECT count(*) FROM shelf").fetchone()[0]

    def scan(
        self, prefix: bytes, after: Optional[bytes], limit: int
    ) -> List[Tuple[bytes, bytes]]:
        """
        Up to C{limit} C{(key, value)} pairs whose key starts with C{prefix}
        and sorts after C{after}, in byte order.
        """
        lower = prefix if after is None or after < prefix else after
        comparison = ">=" if after is None or after < prefix else ">"
        upper = prefix_upper_bound(prefix)
        sql = "SELECT key, value, crc FROM shelf WHERE key %s ?" % comparison
        params: list = [lower]
        if upper is not None:
            sql += " AND key < ?"
            params.append(upper)
        sql += " ORDER BY key LIMIT ?"
        params.append(limit)
        return [
            (key, self._checked(key, value, crc))
            for key, value, crc in self._db.execute(sql, params)
        ]

    def count_prefix(self, prefix: bytes) -> int:
        """How many keys start with C{prefix}."""
        upper = prefix_upper_bound(prefix)
        if upper is None:
            return self._db.execute("SELECT count(*) FROM shelf WHERE key >= ?", (prefix,)).fetchone()[0]
        return self._db.execute(
            "SELECT count(*) FROM shelf WHERE key >= ? AND key < ?", (prefix, upper)
        ).fetchone()[0]

    # -- history -------------------------------------------------------------

    def add_history(self, rows: Sequence[HistoryRow]) -> None:
        """Insert history rows (inside the caller's transaction)."""
        for chunk in _chunks(list(rows), ROWS_PER_STATEMENT // 2):
            params: list = []
            for key, revision, kind, record in chunk:
                params += (key, revision, kind, record, _history_crc(key, revision, kind, record))
            self._db.execute(
                "INSERT OR REPLACE INTO history (key, revision, kind, record, crc) VALUES %s"
                % ",".join(["(?, ?, ?, ?, ?)"] * len(chunk)),
                params,
            )

    def _checked_history(self, row: tuple) -> HistoryRow:
        key, revision, kind, record, crc = row
        if _history_crc(key, revision, kind, record) != crc:
            raise StoreCorrupt(
                "%s: the history of %r at revision %d is damaged (checksum mismatch)"
                % (self.path, key, revision)
            )
        return key, revision, kind, record

    def history_at(self, key: bytes, revision: int) -> Optional[HistoryRow]:
        """C{key}'s last history row at or before C{revision}, or L{None}."""
        row = self._db.execute(
            "SELECT key, revision, kind, record, crc FROM history"
            " WHERE key = ? AND revision <= ? ORDER BY revision DESC LIMIT 1",
            (key, revision),
        ).fetchone()
        return self._checked_history(row) if row is not None else None

    def history_scan(
        self, prefix: bytes, after: Optional[bytes], revision: int, limit: int
    ) -> List[HistoryRow]:
        """
        For up to C{limit} keys starting with C{prefix} and sorting after
        C{after}, in byte order: each key's last history row at or before
        C{revision} (tombstones included: the caller skips them).
        """
        lower = prefix if after is None or after < prefix else after
        comparison = ">=" if after is None or after < prefix else ">"
        upper = prefix_upper_bound(prefix)
        # SQLite takes a bare column's value from the row max() chose.
        sql = (
            "SELECT key, max(revision), kind, record, crc FROM history"
            " WHERE key %s ? AND revision <= ?" % comparison
        )
        params: list = [lower, revision]
        if upper is not None:
            sql += " AND key < ?"
            params.append(upper)
        sql += " GROUP BY key ORDER BY key LIMIT ?"
        params.append(limit)
        return [self._checked_history(row) for row in self._db.execute(sql, params)]

    def _step(self, lower: int, target: int, max_records: int) -> int:
        """
        Where a walk of the history in revision order from C{lower}
        towards C{target} stops after about C{max_records} rows (see
        L{kvtwist.store.history.step_end}).
        """
        db = self._db
        first = db.execute(
            "SELECT revision FROM history WHERE revision > ? ORDER BY revision LIMIT 1",
            (lower,),
        ).fetchone()
        beyond = db.execute(
            "SELECT revision FROM history WHERE revision > ? ORDER BY revision LIMIT 1 OFFSET ?",
            (lower, max_records),
        ).fetchone()
        return step_end(
            target,
            beyond[0] if beyond is not None else None,
            first[0] if first is not None else None,
        )

    def history_changes(
        self, after: int, upto: int, max_records: int
    ) -> List[Tuple[HistoryRow, Optional[HistoryRow]]]:
        """
        The history rows after C{after} up to C{upto}, whole revisions,
        about C{max_records} at most, in revision then key order: each with
        its key's row before it (L{None} if none is kept).
        """
        end = self._step(after, upto, max_records)
        rows = self._db.execute(
            """
            SELECT h.key, h.revision, h.kind, h.record, h.crc,
                   p.key, p.revision, p.kind, p.record, p.crc
            FROM history AS h LEFT JOIN history AS p ON p.key = h.key AND p.revision = (
                SELECT max(revision) FROM history WHERE key = h.key AND revision < h.revision
            )
            WHERE h.revision > ? AND h.revision <= ?
            ORDER BY h.revision, h.key
            """,
            (after, end),
        )
        return [
            (
                self._checked_history(row[:5]),
                self._checked_history(row[5:]) if row[5] is not None else None,
            )
            for row in rows
        ]

    def history_count(self) -> int:
        """How many history rows are kept."""
        return self._db.execute("SELECT count(*) FROM history").fetchone()[0]

    def history_bounds(self) -> Tuple[Optional[int], Optional[int]]:
        """The oldest and newest revision in the history (L{None} if empty)."""
        return self._db.execute("SELECT min(revision), max(revision) FROM history").fetchone()

    def compact_history(self, lower: int, target: int, max_records: int) -> Tuple[int, int]:
        """
        One compaction step (see L{kvtwist.store.history}) from compact
        revision C{lower} towards C{target}, inside the caller's
        transaction. Returns the new compact revision and how many rows
        were removed.
        """
        end = self._step(lower, target, max_records)
        # Per key changed in (lower, end]: every older row, and its last
        # row in the step if that is a tombstone.
        removed = self._db.execute(
            """
            DELETE FROM history WHERE (key, revision) IN (
                SELECT h.key, h.revision FROM history AS h JOIN (
                    SELECT key, max(revision) AS last FROM history
                    WHERE revision > ? AND revision <= ? GROUP BY key
                ) AS t ON h.key = t.key
                WHERE h.revision < t.last OR (h.revision = t.last AND h.kind != 0)
            )
            """,
            (lower, end),
        ).rowcount
        return end, removed

    def clear_history(self) -> None:
        """Remove every history row (before rebuilding it)."""
        self._db.execute("DELETE FROM history")

    # -- leases --------------------------------------------------------------
    #
    # The counts of leases and attached keys are kept in memory (recounted
    # after a rollback), so that a commit in a store with no attached keys
    # costs no lease statement at all.

    def _count_leases(self) -> None:
        db = self._db
        if not db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'leases'"
        ).fetchone():
            # A read-only preflight of a store from before leases.
            self.lease_count = self.attached_count = 0
            return
        self.lease_count = db.execute("SELECT count(*) FROM leases").fetchone()[0]
        self.attached_count = db.execute("SELECT count(*) FROM lease_keys").fetchone()[0]

    def lease(self, lease_id: int) -> Optional[Tuple[float, float]]:
        """C{(ttl, deadline)} of a stored lease, or L{None}."""
        return self._db.execute(
            "SELECT ttl, deadline FROM leases WHERE id = ?", (lease_id,)
        ).fetchone()

    def set_lease(self, lease_id: int, ttl: float, deadline: float) -> None:
        """Store or renew a lease (inside the caller's transaction)."""
        renewed = self._db.execute(
            "UPDATE leases SET ttl = ?, deadline = ? WHERE id = ?", (ttl, deadline, lease_id)
        ).rowcount
        if not renewed:
            self._db.execute(
                "INSERT INTO leases (id, ttl, deadline) VALUES (?, ?, ?)", (lease_id, ttl, deadline)
            )
            self.lease_count += 1

    def drop_lease(self, lease_id: int) -> None:
        """Remove a lease and its key attachments."""
        self.lease_count -= self._db.execute("DELETE FROM leases WHERE id = ?", (lease_id,)).rowcount
        self.attached_count -= self._db.execute(
            "DELETE FROM lease_keys WHERE lease = ?", (lease_id,)
        ).rowcount

    def lease_keys(self, lease_id: int) -> List[bytes]:
        """The keys attached to a lease, in byte order."""
        return [
            key
            for (key,) in self._db.execute(
                "SELECT key FROM lease_keys WHERE lease = ? ORDER BY key", (lease_id,)
            )
        ]

    def attach_many(self, attachments: Mapping[bytes, Optional[int]]) -> None:
        """
        Attach each key to its lease, or detach it (L{None}), a few
        statements in all; none when nothing is or gets attached.
        """
        if self.attached_count:
            for chunk in _chunks(list(attachments), ROWS_PER_STATEMENT):
                self.attached_count -= self._db.execute(
                    "DELETE FROM lease_keys WHERE key IN (%s)" % ",".join("?" * len(chunk)), chunk
                ).rowcount
        attached = [(key, lease) for key, lease in attachments.items() if lease is not None]
        self.attached_count += len(attached)
        for chunk in _chunks(attached, ROWS_PER_STATEMENT):
            self._db.execute(
                "INSERT INTO lease_keys (key, lease) VALUES %s" % ",".join(["(?, ?)"] * len(chunk)),
                [value for row in chunk for value in row],
            )

    def lease_deadlines(self) -> Dict[int, float]:
        """Every stored lease's deadline."""
        return dict(self._db.execute("SELECT id, deadline FROM leases"))

    def due_leases(self, now: float, limit: int) -> List[int]:
        """Up to C{limit} ids of leases whose deadline is at or before C{now}, soonest first."""
        return [
            lease_id
            for (lease_id,) in self._db.execute(
                "SELECT id FROM leases WHERE deadline <= ? ORDER BY deadline LIMIT ?", (now, limit)
            )
        ]

    def held_leases(self, now: float, limit: int) -> List[Tuple[int, float, float]]:
        """Up to C{limit} C{(id, ttl, deadline)} of leases whose deadline is after C{now}, soonest first."""
        return list(
            self._db.execute(
                "SELECT id, ttl, deadline FROM leases WHERE deadline > ? ORDER BY deadline, id LIMIT ?",
                (now, limit),
            )
        )

    def state(self, name: str) -> Optional[str]:
        """A value of the store's own state table, or L{None}."""
        row = self._db.execute("SELECT value FROM state WHERE name = ?", (name,)).fetchone()
        return row[0] if row is not None else None

    def set_state(self, name: str, value: str) -> None:
        """Set a value of the store's own state table."""
        self._db.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (name, value))

    def ping(self) -> None:
        """
        Prove a write can be made durable now: rewrite the shutdown mark
        (already "dirty" while open) in a synced transaction. Its page goes
        to the write-ahead log like a commit's, so a full or failing disk
        fails it as it fails commits; no data changes.
        """
        with self.transaction():
            self._mark("dirty")

    def close(self) -> None:
        """Mark a clean shutdown, checkpoint, and close the file (once)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._mark("clean")
        finally:
            self._db.close()
