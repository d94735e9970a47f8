"""
Tests for the scripts in C{examples/}: their functions against the
in-process kvcache of L{kvtwist.testing.KVCacheServerMixin} (real HTTP on
127.0.0.1, so long-polls and event streams behave as they do in
production), and each script run from the command line, as its docstring
says, against the real C{twistd kvcache}.
"""

from __future__ import annotations

import importlib.util
import io
import os
import select
import subprocess
import sys
import time
from types import ModuleType
from typing import Any, List

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kvtwist import client
from kvtwist.limits import Limits
from kvtwist.model import Put
from kvtwist.testing import KVCacheServerMixin
from tests.helpers.e2e import http_request, start_server, temp_dir
from tests.helpers.paths import REPO

EXAMPLES = os.path.join(REPO, "examples")


def load_example(name: str) -> ModuleType:
    """Import C{examples/<name>.py} (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location("examples_" + name,
                                                  os.path.join(EXAMPLES, name + ".py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered first, as an import would: dataclasses look their module up.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


feature_flags = load_example("feature_flags")
job_lock = load_example("job_lock")
leader_election = load_example("leader_election")
config_watcher = load_example("config_watcher")
bulk_import = load_example("bulk_import")


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def until(condition, timeout: float = 10.0, step: float = 0.01) -> None:
    """Wait (on the reactor, bounded) until C{condition()} holds."""
    for _ in range(int(timeout / step) + 1):
        if condition():
            return
        await sleep(step)
    raise AssertionError("condition not met within %g s" % (timeout,))


class Lines(io.StringIO):
    """An output stream whose lines a test can wait for."""

    def lines(self) -> List[str]:
        return self.getvalue().splitlines()


class FeatureFlagTests(KVCacheServerMixin, TestCase):
    """examples/feature_flags.py: long-polls follow a flag."""

    async def test_follows_changes(self) -> None:
        """The flag's initial absence, then a set and a delete, each reported once."""
        url = self.start_kvcache()
        http = self.kvcache_client()
        out = Lines()
        done = feature_flags.main(reactor, "--url", url, "--flag", "beta", "--changes", "2",
                                  "--wait", "10", http=http, out=out)
        await until(lambda: len(out.lines()) == 1)
        self.assertEqual(out.lines(), ["beta is not set (revision 0)"])
        await sleep(0.05)
        put = await client.put(http, url, "flags/beta", b"true", content_type="application/json")
        await until(lambda: len(out.lines()) == 2)
        await client.remove(http, url, "flags/beta")
        await done
        self.assertEqual(out.lines(), [
            "beta is not set (revision 0)",
            "beta = true (revision %d)" % (put["mod_revision"],),
            "beta is not set (revision %d)" % (put["mod_revision"] + 1,),
        ])

    async def test_wait_runs_out(self) -> None:
        """A poll whose wait ran out is asked again; other keys are no news."""
        url = self.start_kvcache()
        http = self.kvcache_client()
        await client.put(http, url, "flags/beta", b"1", content_type="application/json")
        states: List[Any] = []
        done = Deferred.fromCoroutine(
            feature_flags.follow_flag(http, url, "beta", states.append, changes=1, wait=0.1)
        )
        await client.put(http, url, "flags/other", b"2")
        await sleep(0.4)  # several polls time out meanwhile
        self.assertEqual(len(states), 1)
        await client.put(http, url, "flags/beta", b"2", content_type="application/json")
        last = await done
        self.assertEqual([s.value for s in states], [1, 2])
        self.assertEqual(last.revision, 3)

    async def test_text_flag(self) -> None:
        """A flag stored as text (not JSON) reads as its text."""
        url = self.start_kvcache()
        http = self.kvcache_client()
        await client.put(http, url, "flags/name", b"blue", content_type="text/plain")
        state = await feature_flags.read_flag(http, url, "name")
        self.assertEqual((state.present, state.value), (True, "blue"))


class JobLockTests(KVCacheServerMixin, TestCase):
    """examples/job_lock.py: kvtwist.client.Lock on leases."""

    #: Expired leases are ended within a tenth of a second.
    limits = Limits(sweep_interval=0.1)

    async def test_one_holder_at_a_time(self) -> None:
        """A second worker waits while the first works, then takes the lock with a higher fencing revision."""
        url = self.start_kvcache(limits=self.limits)
        http = self.kvcache_client()
        first_out, second_out = Lines(), Lines()
        first = Deferred.fromCoroutine(
            job_lock.run_locked(http, url, "nightly", "w1", 5, 0.5, reactor, first_out))
        await until(lambda: first_out.lines())
        self.assertEqual(await job_lock.holder(http, url, "nightly"), "w1")
        second = Deferred.fromCoroutine(
            job_lock.run_locked(http, url, "nightly", "w2", 5, 0.1, reactor, second_out))
        await until(lambda: second_out.lines())
        self.assertEqual(second_out.lines(), ["waiting for locks/nightly, held by w1"])
        self.assertEqual((await first, await second), (0, 0))
        acquired = [line for out in (first_out, second_out) for line in out.lines()
                    if line.startswith("acquired")]
        fencing = [int(line.split()[-1].rstrip(")")) for line in acquired]
        self.assertEqual(fencing, sorted(set(fencing)))
        self.assertEqual(first_out.lines()[-1], "released locks/nightly")
        self.assertIsNone(await job_lock.holder(http, url, "nightly"))

    async def test_crashed_holder_is_taken_over(self) -> None:
        """A holder that stops renewing without releasing loses the lock after its ttl."""
        url = self.start_kvcache(limits=self.limits)
        http = self.kvcache_client()
        out = Lines()
        code = await job_lock.run_locked(http, url, "nightly", "w1", 0.6, 0.1, reactor, out,
                                         release=False)
        self.assertEqual((code, out.lines()[-1]), (0, "exiting without releasing locks/nightly"))
        self.assertEqual(await job_lock.holder(http, url, "nightly"), "w1")
        taken = Lines()
        self.assertEqual(
            await job_lock.run_locked(http, url, "nightly", "w2", 5, 0.1, reactor, taken), 0)
        self.assertIn("acquired locks/nightly as w2", taken.getvalue())


class LeaderElectionTests(KVCacheServerMixin, TestCase):
    """examples/leader_election.py: kvtwist.client.Election."""

    async def test_resign_hands_over_and_observe_follows(self) -> None:
        """The first candidate leads, resigns after --lead; the second leads next; an observer sees both."""
        url = self.start_kvcache(limits=Limits(sweep_interval=0.1))
        http = self.kvcache_client()
        seen, one, two = Lines(), Lines(), Lines()
        first = Deferred.fromCoroutine(
            leader_election.lead(http, url, "svc/leader", "node-1", 5, 0.3, reactor, one))
        await until(lambda: one.lines())
        observing = Deferred.fromCoroutine(
            leader_election.observe(http, url, "svc/leader", 1, reactor, seen))
        await until(lambda: seen.lines())
        second = Deferred.fromCoroutine(
            leader_election.lead(http, url, "svc/leader", "node-2", 5, 0.1, reactor, two))
        self.assertEqual((await first, await second, await observing), (0, 0, 0))
        self.assertEqual(one.lines(), ["leading svc/leader as node-1", "resigned svc/leader"])
        self.assertEqual(two.lines(), ["leading svc/leader as node-2", "resigned svc/leader"])
        self.assertEqual(seen.lines(), ["leader: node-1", "leader: node-2"])


class SSEParserTests(SynchronousTestCase):
    """examples/config_watcher.py's SSEParser: the wire format."""

    def test_split_anywhere(self) -> None:
        """Events come out whole however the bytes are split; comments are skipped."""
        wire = (b"retry: 1000\n\n: heartbeat\n\nid: 7\r\nevent: put\r\n"
                b'data: {"key": "a"}\r\n\r\nid: 8\nevent: delete\ndata: x\ndata: y\n\n')
        for size in (1, 3, 7, len(wire)):
            parser = config_watcher.SSEParser()
            events = []
            for start in range(0, len(wire), size):
                events.extend(parser.feed(wire[start:start + size]))
            self.assertEqual(events, [
                config_watcher.Event("7", "put", '{"key": "a"}'),
                config_watcher.Event("8", "delete", "x\ny"),
            ])


class ConfigWatcherTests(KVCacheServerMixin, TestCase):
    """examples/config_watcher.py: a snapshot, then the event stream."""

    async def test_snapshot_then_events(self) -> None:
        """The watcher prints the snapshot, then each change, and stops after N."""
        url = self.start_kvcache()
        http = self.kvcache_client()
        await client.put(http, url, "config/old", b"1", content_type="application/json")
        await client.put(http, url, "other", b"x")
        out = Lines()
        done = Deferred.fromCoroutine(
            config_watcher.watch_config(http, url, "config/", out, events=2)
        )
        await until(lambda: "watching config/ from revision 2" in out.lines())
        await client.put(http, url, "config/mode", b'"fast"', content_type="application/json")
        await client.remove(http, url, "config/old")
        copy = await done
        self.assertEqual(copy.values, {"config/mode": "fast"})
        self.assertEqual(out.lines(), [
            "config/old = 1",
            "watching config/ from revision 2",
            'put config/mode = "fast" (revision 3)',
            "delete config/old (revision 4)",
        ])

    async def test_no_change_missed_between_snapshot_and_stream(self) -> None:
        """A commit after the snapshot but before the stream opens is still seen."""
        url = self.start_kvcache()
        http = self.kvcache_client()
        store = self.kvcache.store

        class Hooked:
            def request(self, method: str, target: str, **kwargs: Any) -> Deferred:
                if "/v1/watch" in target and store.revision == 0:
                    store.commit([Put("config/late", b"1", "application/json")])
                return http.request(method, target, **kwargs)

            def get(self, target: str, **kwargs: Any) -> Deferred:
                return self.request("GET", target, **kwargs)

        copy = await config_watcher.watch_config(Hooked(), url, "config/", Lines(), events=1)
        self.assertEqual(copy.values, {"config/late": 1})

    async def test_resync_when_history_is_gone(self) -> None:
        """A 410 (history compacted past the snapshot) makes it take a new snapshot."""
        url = self.start_kvcache()
        http = self.kvcache_client()
        store = self.kvcache.store
        burst = []

        class Hooked:
            def request(self, method: str, target: str, **kwargs: Any) -> Deferred:
                if "/v1/watch" in target and not burst:
                    burst.append(True)
                    for i in range(5):
                        store.commit([Put("config/k%d" % i, b"%d" % i, "application/json")])
                    # The history the watch would resume from is gone.
                    store.compact(store.revision, 1000)
                return http.request(method, target, **kwargs)

            def get(self, target: str, **kwargs: Any) -> Deferred:
                return self.request("GET", target, **kwargs)

        out = Lines()
        done = Deferred.fromCoroutine(
            config_watcher.watch_config(Hooked(), url, "config/", out, events=1)
        )
        await until(lambda: "watching config/ from revision 5" in out.lines())
        await client.put(http, url, "config/new", b"true", content_type="application/json")
        copy = await done
        self.assertIn("the server's history no longer reaches revision 0: resyncing",
                      out.lines())
        self.assertEqual(len(copy.values), 6)


class BulkImportTests(KVCacheServerMixin, TestCase):
    """examples/bulk_import.py: one transaction, all rows or none."""

    def csv(self, text: str) -> str:
        path = os.path.join(temp_dir(self, "examples"), "rows.csv")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    async def test_one_commit(self) -> None:
        """Every row lands in one commit, under the prefix, as text."""
        url = self.start_kvcache()
        out = Lines()
        path = self.csv("key,value\nalice,admin\nbob,\ncaf\u00e9,\u2603\n")
        code = await bulk_import.run(self.kvcache_client(), url, path, "users/", False, out)
        self.assertEqual(code, 0)
        self.assertEqual(out.lines(), ["imported 3 keys at revision 1"])
        store = self.kvcache.store
        self.assertEqual(len(store.commits), 1)
        self.assertEqual(store.rows["users/caf\u00e9"].value, "\u2603".encode("utf-8"))
        self.assertEqual(store.rows["users/bob"].content_type, "text/plain; charset=utf-8")

    async def test_only_new_refuses_all(self) -> None:
        """With only_new, one existing key means nothing is imported (409)."""
        url = self.start_kvcache()
        http = self.kvcache_client()
        await client.put(http, url, "users/bob", b"old", content_type="text/plain")
        out = Lines()
        path = self.csv("key,value\nalice,admin\nbob,new\n")
        code = await bulk_import.run(http, url, path, "users/", True, out)
        self.assertEqual(code, bulk_import.EXIT_CONFLICT)
        self.assertEqual(out.lines(), ["nothing imported: users/bob exist(s) already or changed"])
        self.assertEqual(sorted(self.kvcache.store.rows), ["users/bob"])
        self.assertEqual(self.kvcache.store.rows["users/bob"].value, b"old")

    def test_bad_csv(self) -> None:
        """A CSV without key,value columns, or with an empty key, is refused."""
        with self.assertRaises(ValueError):
            bulk_import.read_rows(self.csv("name,value\na,1\n"))
        with self.assertRaises(ValueError):
            bulk_import.read_rows(self.csv("key,value\n,1\n"))


# -- the scripts from the command line, against the real server ------------------------


class Script:
    """One example script running as a subprocess; its stdout read line by line."""

    def __init__(self, testcase: SynchronousTestCase, name: str, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-b", os.path.join(EXAMPLES, name + ".py")] + list(args),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        testcase.addCleanup(self.close)
        self._pending = b""

    def readline(self, timeout: float = 30.0) -> str:
        """The next line of output (bounded by C{timeout})."""
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        for _ in range(100000):
            if b"\n" in self._pending:
                line, self._pending = self._pending.split(b"\n", 1)
                return line.decode("utf-8")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready, _, _ = select.select([self.process.stdout], [], [], remaining)
            if ready:
                chunk = os.read(self.process.stdout.fileno(), 4096)
                if not chunk:
                    break
                self._pending += chunk
        raise AssertionError("no line of output within %g s; so far %r, stderr %r"
                             % (timeout, self._pending, self.stderr()))

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout=timeout)

    def rest(self) -> str:
        """The output after the lines read, once the process has ended."""
        assert self.process.stdout is not None
        return (self._pending + self.process.stdout.read()).decode("utf-8")

    def stderr(self) -> str:
        if self.process.poll() is None or self.process.stderr is None:
            return "(still running)"
        return self.process.stderr.read().decode("utf-8", "replace")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def put(url: str, key: str, value: bytes, content_type: str = "application/json") -> None:
    status, _, body = http_request(url, "PUT", "/v1/kv/" + key, value,
                                   {"Content-Type": content_type})
    assert status in (200, 201), (status, body)


class CommandLineTests(SynchronousTestCase):
    """Each script, run as its docstring shows, against twistd kvcache."""

    def test_feature_flags(self) -> None:
        """feature_flags.py prints the flag, then its change, and exits after --changes."""
        server = start_server(self)
        script = Script(self, "feature_flags", "--url", server.url, "--flag", "beta",
                        "--changes", "1", "--wait", "20")
        self.assertEqual(script.readline(), "beta is not set (revision 0)")
        put(server.url, "flags/beta", b"true")
        self.assertEqual(script.readline(), "beta = true (revision 1)")
        self.assertEqual(script.wait(), 0, script.stderr())

    def test_job_lock(self) -> None:
        """job_lock.py: a second worker waits while the first holds the lock, and takes it over when the first is killed."""
        server = start_server(self, extra_args=["--sweep-interval", "0.1"])
        first = Script(self, "job_lock", "--url", server.url, "--job", "nightly",
                       "--owner", "w1", "--ttl", "1", "--work", "60")
        self.assertTrue(first.readline().startswith("acquired locks/nightly as w1 (fencing revision "))
        second = Script(self, "job_lock", "--url", server.url, "--job", "nightly",
                        "--owner", "w2", "--ttl", "5", "--work", "0.1")
        self.assertEqual(second.readline(), "waiting for locks/nightly, held by w1")
        first.close()  # killed: it never releases, as a crashed worker
        self.assertTrue(second.readline().startswith("acquired locks/nightly as w2"))
        self.assertEqual(second.wait(), 0, second.stderr())
        self.assertEqual(second.rest(), "released locks/nightly\n")

    def test_leader_election(self) -> None:
        """leader_election.py: the second candidate leads once the first resigns."""
        server = start_server(self, extra_args=["--sweep-interval", "0.1"])
        first = Script(self, "leader_election", "--url", server.url, "--name", "svc/leader",
                       "--value", "node-1", "--ttl", "5", "--lead", "1")
        self.assertEqual(first.readline(), "leading svc/leader as node-1")
        second = Script(self, "leader_election", "--url", server.url, "--name", "svc/leader",
                        "--value", "node-2", "--ttl", "5", "--lead", "0.1")
        self.assertEqual(first.wait(), 0, first.stderr())
        self.assertEqual(second.readline(), "leading svc/leader as node-2")
        self.assertEqual(second.wait(), 0, second.stderr())

    def test_config_watcher(self) -> None:
        """config_watcher.py prints the snapshot and N events, then exits 0."""
        server = start_server(self)
        put(server.url, "config/mode", b'"fast"')
        script = Script(self, "config_watcher", "--url", server.url, "--prefix", "config/",
                        "--events", "2")
        self.assertEqual(script.readline(), 'config/mode = "fast"')
        self.assertEqual(script.readline(), "watching config/ from revision 1")
        put(server.url, "config/mode", b'"slow"')
        http_request(server.url, "DELETE", "/v1/kv/config/mode")
        self.assertEqual(script.readline(), 'put config/mode = "slow" (revision 2)')
        self.assertEqual(script.readline(), "delete config/mode (revision 3)")
        self.assertEqual(script.wait(), 0, script.stderr())

    def test_bulk_import(self) -> None:
        """bulk_import.py imports a CSV, and with --only-new a second run imports nothing."""
        server = start_server(self)
        path = os.path.join(temp_dir(self, "examples"), "users.csv")
        with open(path, "w", encoding="utf-8") as f:
            f.write("key,value\nalice,admin\nbob,user\n")
        script = Script(self, "bulk_import", "--url", server.url, "--prefix", "users/", path)
        self.assertEqual(script.wait(), 0, script.stderr())
        self.assertEqual(script.rest(), "imported 2 keys at revision 1\n")
        again = Script(self, "bulk_import", "--url", server.url, "--prefix", "users/",
                       "--only-new", path)
        self.assertEqual(again.wait(), 4, again.stderr())
        self.assertIn("nothing imported", again.rest())
        status, _, body = http_request(server.url, "GET", "/v1/kv/users/alice")
        self.assertEqual((status, body), (200, b"admin"))

    def test_bulk_import_wrong_header(self) -> None:
        """A CSV without key,value columns is one line on stderr and exit 2, not a traceback."""
        path = os.path.join(temp_dir(self, "examples"), "people.csv")
        with open(path, "w", encoding="utf-8") as f:
            f.write("name,value\nalice,admin\n")
        script = Script(self, "bulk_import", "--url", "http://127.0.0.1:9", path)
        self.assertEqual(script.wait(), 2)
        self.assertEqual(script.rest(), "")
        self.assertEqual(
            script.stderr(),
            "bulk_import: %s needs a header row with key and value columns (it has: name,value)\n"
            % (path,),
        )

    def test_docstrings_name_the_venv_python(self) -> None:
        """
        Each script's usage lines run it with .venv/bin/python (what ./run.sh
        makes): a bare python lacks treq and kvtwist.
        """
        for name in sorted(os.listdir(EXAMPLES)):
            if not name.endswith(".py"):
                continue
            with open(os.path.join(EXAMPLES, name), encoding="utf-8") as f:
                usage = [line.strip() for line in f.read().split('"""')[1].splitlines()
                         if "examples/" + name in line]
            self.assertTrue(usage, name)
            for line in usage:
                self.assertTrue(line.startswith(".venv/bin/python examples/" + name), line)
