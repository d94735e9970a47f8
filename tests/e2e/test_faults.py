"""
Fault behaviour of the real C{twistd kvcache} (docs/operations.md, "Fault
behaviour").

A damaged, truncated or unreadable data file, a write-ahead log deleted
after a crash, and a data directory that cannot be one each make startup
fail with a one-line message and a non-zero exit: the server never starts
listening, never serves an empty store, never answers a garbled value, and
leaves the damaged file as it found it. Where a damage could slip past the
startup check, a second test pins what must hold anyway: no garbled value
is ever served.

The durability order is shown under C{strace} (skipped when strace is
missing or cannot trace): for every acknowledged commit, the sync of the
write-ahead log comes after its last write and before the first byte of
the answer.

Then operators' faults: a second server on a data directory another one
owns (two real processes and a C{kill -9}); a full disk, made by filling a
small tmpfs (skipped where this process may not mount); a store file,
C{-wal} or C{-shm} that cannot be written (C{chattr +i}, skipped where it
does not work, or a directory in its place); and a SIGTERM while a sync
hangs (every C{fdatasync} held by an attached C{strace}), which the
graceful-stop bound must cut short.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Dict, List, Optional, Tuple

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.helpers.e2e import ServerProcess, connect, http_request, temp_dir

DATA_FILE = "kvcache.sqlite3"
KEYS = 300
#: Seconds a start that must fail is given to exit.
EXIT_TIMEOUT = 30.0


def pairs() -> Dict[str, str]:
    """The keys and values every damaged store starts with."""
    return {"key%03d" % i: ("value-%03d-" % i) * 10 for i in range(KEYS)}


class FaultTestCase(SynchronousTestCase):
    """Copy a pristine store, damage it, and start a server on it."""

    #: Pristine data directories, made once per run: C{"terminate"} (a
    #: clean stop) and C{"kill"} (kill -9 after the commit).
    _pristine: Dict[str, str] = {}

    @classmethod
    def pristine(cls, stop: str) -> str:
        """The data directory of a store holding L{pairs}, stopped by C{stop}."""
        found = FaultTestCase._pristine.get(stop)
        if found is not None:
            return found
        base = tempfile.mkdtemp(prefix="kvtwist-faults-pristine-")
        server = ServerProcess(os.path.join(base, "data"), log_dir=base)
        try:
            server.start()
            status, _, _ = http_request(server.url, "POST", "/set", json.dumps(pairs()).encode())
            assert status in (200, 201), status
            assert http_request(server.url, "POST", "/commit")[0] == 204
            if stop == "kill":
                server.kill()
            else:
                assert server.terminate() == 0, server.log_text()
        finally:
            server.stop()
        FaultTestCase._pristine[stop] = server.data_dir
        atexit.register(shutil.rmtree, base, True)
        return server.data_dir

    def make_store(self, stop: str = "terminate") -> ServerProcess:
        """
        A server (not started) on a fresh copy of a store holding L{pairs},
        committed and then stopped (SIGTERM, or kill -9 with C{stop="kill"}).
        """
        base = temp_dir(self, "faults")
        data = os.path.join(base, "data")
        shutil.copytree(self.pristine(stop), data)
        server = ServerProcess(data, log_dir=base)
        self.addCleanup(server.stop)
        return server

    def data_file(self, server: ServerProcess) -> str:
        return os.path.join(server.data_dir, DATA_FILE)

    def outcome(self, server: ServerProcess) -> Optional[int]:
        """
        Launch C{server} and return its exit status, or None as soon as it
        serves (bounded by L{EXIT_TIMEOUT}).
        """
        server.launch()
        deadline = time.monotonic() + EXIT_TIMEOUT
        for _ in range(int(EXIT_TIMEOUT / 0.05) + 1):
            code = server.process.poll()
            if code is not None:
                server.wait()
                return code
            if server._logged_listening() and server._answers():
                return None
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        server.kill()
        self.fail("the server neither exited nor served:\n" + server.log_text()[-2000:])

    def assertRefused(self, server: ServerProcess, *needles: str) -> str:
        """
        Starting C{server} fails: non-zero exit, a one-line "cannot start"
        message (holding every needle), no traceback, never listening, and
        the data file (if any) unchanged.
        """
        path = self.data_file(server)
        before = _read(path)
        code = self.outcome(server)
        log = server.log_text()
        if code is None:
            server.kill()
            self.fail("the damaged store was served:\n" + log[-2000:])
        self.assertNotEqual(code, 0, log)
        self.assertIn("kvcache: cannot start", log)
        for needle in needles:
            self.assertIn(needle, log)
        self.assertNotIn("Traceback", log)
        self.assertNotIn(" starting on ", log)
        self.assertEqual(_read(path), before, "startup changed the damaged file")
        return log

    def assertNeverGarbled(self, server: ServerProcess) -> None:
        """
        If C{server} starts at all, every key reads as its exact value or
        as an error: never as anything else, never as absent.
        """
        if self.outcome(server) is not None:
            return  # refused: nothing can be served
        expected = pairs()
        connection = connect(server.url)
        try:
            for key, value in expected.items():
                status, _, body = http_request(server.url, "GET", "/" + key, connection=connection)
                if status == 200:
                    self.assertEqual(json.loads(body), value, key)
                else:
                    self.assertGreaterEqual(status, 500, (key, status, body[:200]))
        finally:
            connection.close()
            server.kill()


def _read(path: str) -> Optional[bytes]:
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return f.read()


class DamagedFileTests(FaultTestCase):
    """Truncations, flipped bytes and a lost write-ahead log."""

    def test_truncated_to_half(self):
        """A data file cut to half its pages is refused at startup."""
        server = self.make_store()
        path = self.data_file(server)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        self.assertRefused(server, DATA_FILE)

    def test_truncated_to_first_page(self):
        """A data file cut to its first page is refused at startup."""
        server = self.make_store()
        with open(self.data_file(server), "r+b") as f:
            f.truncate(4096)
        self.assertRefused(server, DATA_FILE)

    def test_truncated_inside_header(self):
        """A data file cut inside the SQLite header is refused at startup."""
        server = self.make_store()
        with open(self.data_file(server), "r+b") as f:
            f.truncate(100)
        self.assertRefused(server, DATA_FILE)

    def test_flipped_bytes_in_pages(self):
        """Flipped bytes in b-tree page headers are refused at startup."""
        server = self.make_store()
        path = self.data_file(server)
        with open(path, "r+b") as f:
            for offset in (4096, 4097, 4099, 8192 + 3):
                f.seek(offset)
                byte = f.read(1)
                f.seek(offset)
                f.write(bytes([byte[0] ^ 0xFF]))
        self.assertRefused(server, DATA_FILE)

    def test_deleted_wal_after_crash(self):
        """
        kill -9 leaves committed data in the write-ahead log; deleting it
        then is refused at startup with a message about the log, never a
        silent start on older data.
        """
        server = self.make_store(stop="kill")
        wal = self.data_file(server) + "-wal"
        self.assertTrue(os.path.exists(wal))
        os.remove(wal)
        self.assertRefused(server, "write-ahead log")

    def test_flipped_byte_in_value_never_served(self):
        """A flipped byte inside a value is never served: the key reads as an error, the others intact."""
        server = self.make_store()
        _flip_in_value(self.data_file(server))
        self.assertNeverGarbled(server)

    def test_flipped_byte_in_value_refused(self):
        """A flipped byte inside a value is refused at startup."""
        server = self.make_store()
        _flip_in_value(self.data_file(server))
        self.assertRefused(server, DATA_FILE)

    def test_truncated_inside_last_page_never_served(self):
        """A file cut inside its last page never serves a garbled value."""
        server = self.make_store()
        path = self.data_file(server)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) - 100)
        self.assertNeverGarbled(server)

    def test_truncated_inside_last_page_refused(self):
        """A file cut inside its last page (not a whole number of pages) is refused at startup."""
        server = self.make_store()
        path = self.data_file(server)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) - 100)
        self.assertRefused(server, DATA_FILE)

    def test_truncated_to_nothing_refused(self):
        """A data file cut to 0 bytes is refused, not taken for a new, empty store."""
        server = self.make_store()
        with open(self.data_file(server), "r+b") as f:
            f.truncate(0)
        self.assertRefused(server, DATA_FILE)


def _flip_in_value(path: str) -> None:
    """Flip one bit inside the stored bytes of key005's value."""
    with open(path, "r+b") as f:
        data = f.read()
        offset = data.find(b"value-005-")
        assert offset > 0, "value not found in the data file"
        f.seek(offset + 3)
        f.write(bytes([data[offset + 3] ^ 0x20]))


class DataDirectoryTests(FaultTestCase):
    """Data directories that cannot be used (these fail even for root)."""

    def server_for(self, data_dir: str) -> ServerProcess:
        server = ServerProcess(data_dir, log_dir=temp_dir(self, "faults-log"))
        self.addCleanup(server.stop)
        return server

    def test_data_dir_is_a_file(self):
        """A --data path that is a regular file is refused with its path."""
        path = os.path.join(temp_dir(self), "data")
        with open(path, "w") as f:
            f.write("not a directory\n")
        self.assertRefused(self.server_for(path), path)

    def test_data_dir_under_a_file(self):
        """A --data path below a regular file is refused."""
        parent = os.path.join(temp_dir(self), "file")
        with open(parent, "w") as f:
            f.write("x")
        self.assertRefused(self.server_for(os.path.join(parent, "data")), "Not a directory")

    def test_data_file_is_a_directory(self):
        """A data directory whose kvcache.sqlite3 is a directory is refused."""
        data = os.path.join(temp_dir(self), "data")
        os.makedirs(os.path.join(data, DATA_FILE), mode=0o700)
        self.assertRefused(self.server_for(data), DATA_FILE)

    def test_unreadable_data_file(self):
        """A data file without permissions is refused (not meaningful as root, who ignores them)."""
        if os.geteuid() == 0:
            raise SkipTest("root reads files whatever their mode")
        server = self.make_store()
        os.chmod(self.data_file(server), 0)
        self.addCleanup(os.chmod, self.data_file(server), 0o600)
        self.assertRefused(server, DATA_FILE)


class DataDirectoryLockTests(FaultTestCase):
    """One server owns a data directory: a kernel lock on DIR/lock."""

    def test_second_server_refused_until_first_killed(self):
        """A second server on a running one's data directory exits non-zero naming the holder's PID and the directory; after kill -9 of the first, a new one starts at once and has its data."""
        base = temp_dir(self, "lock")
        data = os.path.join(base, "data")
        first = ServerProcess(data, log_dir=temp_dir(self, "lock-first"))
        self.addCleanup(first.stop)
        first.start()
        self.assertEqual(http_request(first.url, "PUT", "/v1/kv/owner", b"first")[0], 201)
        lock = os.path.join(data, "lock")
        with open(lock) as f:
            self.assertEqual(f.read().strip(), str(first.process.pid))
        self.assertEqual(os.stat(lock).st_mode & 0o777, 0o600)

        second = ServerProcess(data, log_dir=temp_dir(self, "lock-second"))
        self.addCleanup(second.stop)
        self.assertRefused(
            second, "in use by process %d" % (first.process.pid,), data
        )
        refusal = [line for line in second.log_text().splitlines() if "cannot start" in line]
        self.assertEqual(len(refusal), 1, second.log_text())
        # The first server never noticed.
        self.assertEqual(http_request(first.url, "GET", "/v1/kv/owner")[2], b"first")

        first.kill()
        third = ServerProcess(data, log_dir=temp_dir(self, "lock-third"))
        self.addCleanup(third.stop)
        third.start()
        self.assertEqual(http_request(third.url, "GET", "/v1/kv/owner")[2], b"first")
        with open(lock) as f:
            self.assertEqual(f.read().strip(), str(third.process.pid))
        self.assertEqual(third.terminate(), 0)


#: The size of the small file system a full disk is made on.
SMALL_FS = "8m"


def small_file_system(testcase) -> str:
    """
    A fresh tmpfs of L{SMALL_FS}, unmounted when C{testcase} ends; skips
    the test where this process may not mount (not root, no privilege).
    """
    path = temp_dir(testcase, "smallfs")
    try:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % (SMALL_FS,), "tmpfs", path],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SkipTest("cannot mount a tmpfs here: %s" % (e,))
    if result.returncode != 0:
        raise SkipTest("cannot mount a tmpfs here: %s" % (result.stderr.decode().strip(),))
    testcase.addCleanup(subprocess.run, ["umount", "-l", path], capture_output=True, timeout=10)
    return path


def fill_disk(directory: str) -> str:
    """Fill C{directory}'s file system to the last byte; returns the filler file."""
    filler = os.path.join(directory, "filler")
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        for _ in range(1 << 20):  # bounded: 64 GiB at most
            try:
                f.write(chunk)
            except OSError:
                break
        for size in (4096, 512, 1):
            for _ in range(64):
                try:
                    f.write(b"\0" * size)
                except OSError:
                    break
    return filler


class DiskFullTests(SynchronousTestCase):
    """A full disk: 507 for commits, 503 readiness, recovery without a restart, a clear refusal at startup."""

    def serving_on_small_fs(self) -> Tuple[str, ServerProcess]:
        """A small file system, and a server on it holding the key C{kept}."""
        mount = small_file_system(self)
        server = ServerProcess(os.path.join(mount, "data"), log_dir=temp_dir(self, "diskfull-log"))
        self.addCleanup(server.stop)
        server.start()
        self.assertEqual(http_request(server.url, "PUT", "/v1/kv/kept", b"before")[0], 201)
        return mount, server

    def test_full_disk_then_space_returns(self):
        """On a full disk commits are 507 insufficient-storage and change nothing, reads go on, /v1/readyz is 503 with the store's error; once space returns /v1/readyz turns 200 with no client write, writes work, and a restart has every acknowledged commit."""
        mount, server = self.serving_on_small_fs()
        filler = fill_disk(mount)

        status, headers, body = http_request(server.url, "PUT", "/v1/kv/big", b"x" * 200_000)
        self.assertEqual(status, 507, body)
        problem = json.loads(body)
        self.assertEqual(headers["content-type"], "application/problem+json")
        self.assertEqual((problem["code"], problem["status"]), ("insufficient-storage", 507))
        self.assertIn("disk full", problem["detail"])
        self.assertEqual(http_request(server.url, "POST", "/set", b'{"seed": 1}')[0], 201)
        self.assertEqual(http_request(server.url, "POST", "/commit")[0], 507)
        self.assertEqual(http_request(server.url, "GET", "/v1/kv/kept")[2], b"before")
        self.assertEqual(http_request(server.url, "GET", "/v1/kv/big")[0], 404)

        status, _, body = http_request(server.url, "GET", "/v1/readyz")
        self.assertEqual(status, 503, body)
        self.assertEqual(json.loads(body)["code"], "insufficient-storage")
        self.assertIn("disk full", json.loads(body)["detail"])

        os.unlink(filler)
        # No client writes in between: the probe alone turns it ready.
        self.assertEqual(http_request(server.url, "GET", "/v1/readyz")[0], 200)
        self.assertEqual(http_request(server.url, "PUT", "/v1/kv/big", b"x" * 200_000)[0], 201)
        self.assertEqual(server.terminate(), 0, server.log_text())
        server.start()
        self.assertEqual(http_request(server.url, "GET", "/v1/kv/kept")[2], b"before")
        self.assertEqual(len(http_request(server.url, "GET", "/v1/kv/big")[2]), 200_000)
        self.assertEqual(http_request(server.url, "GET", "/seed")[0], 404)
        self.assertEqual(server.terminate(), 0, server.log_text())

    def test_startup_on_a_full_disk(self):
        """Starting on a full disk is refused with "disk full", not as an unreadable store."""
        mount, server = self.serving_on_small_fs()
        self.assertEqual(server.terminate(), 0, server.log_text())
        fill_disk(mount)
        server.launch()
        self.assertNotEqual(server.wait(EXIT_TIMEOUT), 0)
        log = server.log_text()
        self.assertIn("kvcache: cannot start", log)
        self.assertIn("disk full", log)
        self.assertNotIn("not a readable kvtwist store", log)
        self.assertNotIn("Traceback", log)


def _immutable(testcase, path: str) -> None:
    """C{chattr +i path} (undone at cleanup); skips where chattr cannot."""
    try:
        result = subprocess.run(["chattr", "+i", path], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SkipTest("chattr is not available: %s" % (e,))
    if result.returncode != 0:
        raise SkipTest("chattr +i does not work here: %s" % (result.stderr.decode().strip(),))
    testcase.addCleanup(subprocess.run, ["chattr", "-i", path], capture_output=True, timeout=10)


class UnwritableSideFileTests(FaultTestCase):
    """A store file, -wal or -shm kvcache cannot write stops startup with a message, never SIGBUS."""

    def test_immutable_shm_refused(self):
        """An immutable -shm (chattr +i) after a crash is refused with one line naming it."""
        server = self.make_store("kill")
        shm = self.data_file(server) + "-shm"
        with open(shm, "wb") as f:
            f.write(b"\0" * 32768)
        _immutable(self, shm)
        log = self.assertRefused(server, shm, "cannot be opened for writing", "chattr -i")
        self.assertNotIn("not a readable kvtwist store", log)

    def test_immutable_wal_refused(self):
        """An immutable -wal after a crash is refused with one line naming it."""
        server = self.make_store("kill")
        wal = self.data_file(server) + "-wal"
        self.assertTrue(os.path.exists(wal))
        _immutable(self, wal)
        self.assertRefused(server, wal, "cannot be opened for writing")

    def test_shm_directory_refused(self):
        """A -shm that is a directory is refused with one line naming it (no chattr needed)."""
        server = self.make_store("kill")
        shm = self.data_file(server) + "-shm"
        os.mkdir(shm)
        self.assertRefused(server, shm, "is not a regular file")

    def test_shm_made_immutable_while_serving(self):
        """kvcache never maps a -shm (exclusive locking), so one made immutable while it serves cannot kill it: it goes on writing and stops cleanly."""
        server = self.make_store()
        server.start()
        shm = self.data_file(server) + "-shm"
        self.assertEqual(http_request(server.url, "PUT", "/v1/kv/a", b"1")[0], 201)
        self.assertFalse(os.path.exists(shm))
        with open(shm, "wb") as f:
            f.write(b"\0" * 32768)
        _immutable(self, shm)
        for i in range(5):
            self.assertEqual(http_request(server.url, "PUT", "/v1/kv/b%d" % i, b"2")[0], 201)
        self.assertEqual(http_request(server.url, "GET", "/v1/kv/b4")[2], b"2")
        self.assertEqual(server.terminate(), 0, server.log_text())


# -- durability order under strace ----------------------------------------------

#: The syscalls traced: SQLite writes its log with pwrite64, syncs it with
#: fdatasync (fsync where that is missing); Twisted answers with send
#: (sendto) or, for several buffers, sendmsg/writev/write.
TRACED = "fdatasync,fsync,write,pwrite64,pwritev,sendto,sendmsg,writev"
COMMITS = 5

_LINE = re.compile(r"^(?P<pid>\d+)\s+(?P<time>[\d:.]+)\s+(?P<rest>.*)$")
_CALL = re.compile(r"^(?P<name>\w+)\((?P<fd>\d+)<(?P<path>[^>]*)>")
_RESUMED = re.compile(r"^<\.\.\. (?P<name>\w+) resumed>")


class StraceServer(ServerProcess):
    """A kvcache run under C{strace -f}, writing the trace to C{trace_path}."""

    trace_path = ""

    def command(self, port: int) -> List[str]:
        return [
            "strace", "-f", "-tt", "-yy", "-s", "64",
            "-e", "trace=" + TRACED,
            "-o", self.trace_path,
        ] + super().command(port)

    def twistd_pid(self) -> Optional[int]:
        """The traced twistd's pid (the child of strace)."""
        assert self.process is not None
        try:
            with open("/proc/%d/task/%d/children" % (self.process.pid, self.process.pid)) as f:
                children = f.read().split()
        except OSError:
            return None
        return int(children[0]) if children else None


def parse_trace(text: str) -> List[Tuple[int, str, str, str, str]]:
    """
    The traced events in the order strace saw them: C{(index, kind, name,
    path, text)} where C{kind} is C{start} or C{end}. A complete line is
    both; an unfinished call starts at its line and ends at its
    "resumed" line (found by pid and name).
    """
    events = []
    open_calls: Dict[Tuple[str, str], Tuple[str, str]] = {}
    for index, line in enumerate(text.splitlines()):
        match = _LINE.match(line)
        if match is None:
            continue
        pid, rest = match.group("pid"), match.group("rest")
        resumed = _RESUMED.match(rest)
        if resumed is not None:
            name = resumed.group("name")
            path, start_text = open_calls.pop((pid, name), ("", ""))
            events.append((index, "end", name, path, start_text + rest))
            continue
        call = _CALL.match(rest)
        if call is None:
            continue
        name, path = call.group("name"), call.group("path")
        if rest.endswith("<unfinished ...>"):
            open_calls[(pid, name)] = (path, rest)
            events.append((index, "start", name, path, rest))
        else:
            events.append((index, "start", name, path, rest))
            events.append((index, "end", name, path, rest))
    return events


class StraceDurabilityTests(SynchronousTestCase):
    """The sync of an acknowledged commit, seen by the kernel."""

    def test_sync_between_last_wal_write_and_answer(self):
        """
        For each of several acknowledged PUTs (each a commit), in the
        kernel's order of events: the last write to the write-ahead log
        before the answer is followed by a completed fdatasync/fsync of the
        log, and that sync completes before the first byte of the 201 is
        sent.
        """
        if shutil.which("strace") is None:
            raise SkipTest("strace is not installed")
        probe = subprocess.run(
            ["strace", "-f", "-e", "trace=fsync", "true"], capture_output=True, text=True
        )
        if probe.returncode != 0:
            raise SkipTest("strace cannot trace here: %s" % (probe.stderr.strip()[:200],))
        base = temp_dir(self, "strace")
        server = StraceServer(os.path.join(base, "data"), log_dir=base, start_timeout=60)
        server.trace_path = os.path.join(base, "trace.txt")
        self.addCleanup(server.stop)
        server.start()

        connection = connect(server.url, timeout=30)
        try:
            for i in range(COMMITS):
                status, _, _ = http_request(
                    server.url, "PUT", "/v1/kv/durable-%d" % i, b"marker-%d" % i, connection=connection
                )
                self.assertIn(status, (200, 201))
        finally:
            connection.close()
        pid = server.twistd_pid()
        if pid is not None:
            os.kill(pid, 15)
        server.wait(30)

        with open(server.trace_path, encoding="utf-8", errors="replace") as f:
            events = parse_trace(f.read())
        wal = os.path.join(server.data_dir, DATA_FILE) + "-wal"
        answers = [
            index
            for index, kind, name, path, text in events
            if kind == "start"
            and name in ("sendto", "sendmsg", "writev", "write")
            and path.startswith("TCP:")
            and "HTTP/1.1 201 " in text
        ]
        self.assertEqual(len(answers), COMMITS, "expected one 201 per PUT in the trace")
        summary = []
        for answer in answers:
            writes = [
                index
                for index, kind, name, path, _ in events
                if kind == "start" and name in ("pwrite64", "pwritev", "write") and path == wal and index < answer
            ]
            self.assertTrue(writes, "no write to the log before an acknowledged commit")
            last_write = writes[-1]
            syncs = [
                index
                for index, kind, name, path, _ in events
                if kind == "end" and name in ("fdatasync", "fsync") and path == wal and last_write < index < answer
            ]
            self.assertTrue(
                syncs,
                "no completed sync of %s between its last write (trace event %d) and the answer (event %d)"
                % (wal, last_write, answer),
            )
            summary.append((last_write, syncs[0], answer))
        print(
            "\nstrace: %d acknowledged commits; (last WAL write, WAL sync done, 201 sent) "
            "trace events: %s" % (len(answers), summary)
        )


# -- a bounded graceful stop --------------------------------------------------------

#: How long the attached strace holds every fdatasync: far beyond the stop
#: timeout, so only the bound can end the stop in time.
SYNC_DELAY_SECONDS = 60
STOP_TIMEOUT = 1


class BoundedStopTests(SynchronousTestCase):
    """SIGTERM while a commit's sync hangs: the stop is cut short at --stop-timeout, says so, and loses nothing acknowledged."""

    def test_stop_cut_short_during_a_hung_sync(self):
        """With every fdatasync held 60 s (strace attached), SIGTERM during a commit ends the server with status 0 within seconds, logging that the stop was cut short and the commit abandoned; a restart has every acknowledged commit."""
        if shutil.which("strace") is None:
            raise SkipTest("strace is not installed")
        base = temp_dir(self, "stop")
        server = ServerProcess(
            os.path.join(base, "data"), ["--stop-timeout", str(STOP_TIMEOUT)], log_dir=base
        )
        self.addCleanup(server.stop)
        server.start()
        self.assertEqual(http_request(server.url, "PUT", "/v1/kv/kept", b"1")[0], 201)
        tracer = subprocess.Popen(
            ["strace", "-f", "-qq", "-o", "/dev/null", "-p", str(server.process.pid),
             "-e", "trace=fdatasync,fsync", "-e", "signal=none",
             "-e", "inject=fdatasync,fsync:delay_enter=%d" % (SYNC_DELAY_SECONDS * 1000000,)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.addCleanup(lambda: tracer.poll() is None and tracer.kill())
        # strace says nothing when attached; give it a moment, bounded.
        time.sleep(1.0)
        if tracer.poll() is not None:
            raise SkipTest("strace cannot attach here: %s" % (tracer.stderr.read()[:200],))
        # A commit that will hang in its sync: sent, never answered.
        hung = connect(server.url, timeout=30)
        self.addCleanup(hung.close)
        hung.request("PUT", "/v1/kv/hung", body=b"2")
        time.sleep(0.5)
        server.send_signal(signal.SIGTERM)
        cut_short = (
            "graceful stop cut short after 1 s (--stop-timeout): abandoning a "
            "group of 1 commit (1 ops) on the store thread"
        )
        deadline = time.monotonic() + STOP_TIMEOUT + 15
        while cut_short not in server.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertIn(cut_short, server.log_text())
        # The process has called exit(0); the tracer still holds the hung
        # thread in its 60 s stop, and no process is gone before each of
        # its threads has left the kernel: kill the tracer to let it go.
        tracer.kill()
        tracer.wait(timeout=10)
        self.assertEqual(server.wait(timeout=10), 0, server.log_text())
        self.assertNotIn("Traceback", server.log_text())

        server.start()
        self.assertEqual(http_request(server.url, "GET", "/v1/kv/kept")[2], b"1")
        # Unanswered: either wholly there or wholly absent.
        status, _, body = http_request(server.url, "GET", "/v1/kv/hung")
        self.assertIn((status, body if status == 200 else None), ((200, b"2"), (404, None)))
        self.assertEqual(server.terminate(), 0)
