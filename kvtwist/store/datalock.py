# -*- test-case-name: tests.contract.test_store_shelve -*-
"""
One owner per data directory: a kernel lock on C{DIR/lock}.

Two servers on one data directory would each keep their own revision,
cache and group-commit queue over one SQLite file: a write through one is
invisible to the other, which serves stale reads. So whoever opens the
store first takes C{flock(LOCK_EX | LOCK_NB)} on C{DIR/lock} (mode 0600)
and writes its PID into it; any other process that tries is refused with
L{DataDirectoryBusy}, naming that PID.

The kernel drops an C{flock} lock when the last descriptor of it closes,
so a C{kill -9} leaves no stale lock: the next start takes it at once. The
PID in the file is only for the message; the lock alone decides. A lock
taken before twistd daemonizes is inherited by the daemon (C{flock} locks
belong to the open file, not the process); L{DataDirectoryLock.record_pid}
then writes the daemon's PID.

Within one process the lock is shared: L{lock_data_dir} counts holders, so
the startup check, the store thread and C{kvtwist.testing} may each hold
it, and it is unlocked when the last one releases it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from typing import Dict, Optional

#: The lock file's name inside the data directory.
LOCK_FILE = "lock"


class DataDirectoryBusy(Exception):
    """Another process holds the data directory's lock."""

    def __init__(self, directory: str, holder: Optional[int]) -> None:
        who = "process %d" % (holder,) if holder is not None else "another process"
        super().__init__(
            "the data directory %s is in use by %s (it holds %s); "
            "one server owns a data directory at a time"
            % (directory, who, os.path.join(directory, LOCK_FILE))
        )
        self.directory = directory
        self.holder = holder


class DataDirectoryLock:
    """The lock of one data directory, held by this process."""

    def __init__(self, directory: str, fd: int) -> None:
        self.directory = directory
        self._fd = fd
        self._holders = 1

    def record_pid(self) -> None:
        """
        Write this process's PID into the lock file (after a fork too). The
        PID is only a note for the message, so a full disk is not an error
        here: the store's own open says so.
        """
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, b"%d\n" % (os.getpid(),), 0)
        except OSError:
            pass

    def release(self) -> None:
        """Give up one hold; the last one unlocks and closes the file."""
        with _registry_guard:
            self._holders -= 1
            if self._holders:
                return
            del _held[self.directory]
        # The file stays: removing it would race a process locking it.
        os.close(self._fd)


_registry_guard = threading.Lock()
_held: Dict[str, DataDirectoryLock] = {}


def _holder_pid(fd: int) -> Optional[int]:
    try:
        return int(os.pread(fd, 32, 0).split()[0])
    except (OSError, ValueError, IndexError):
        return None


def lock_data_dir(directory: str) -> DataDirectoryLock:
    """
    Hold the lock of C{directory}, creating the directory (mode 0700) and
    its lock file (mode 0600) if needed.

    @raise DataDirectoryBusy: if another process holds it.
    @raise OSError: if the directory or the lock file cannot be made.
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    key = os.path.realpath(directory)
    with _registry_guard:
        held = _held.get(key)
        if held is not None:
            held._holders += 1
            return held
        fd = os.open(
            os.path.join(directory, LOCK_FILE),
            os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
            0o600,
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _holder_pid(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DataDirectoryBusy(directory, holder) from None
            raise
        lock = _held[key] = DataDirectoryLock(key, fd)
    lock.record_pid()
    return lock
