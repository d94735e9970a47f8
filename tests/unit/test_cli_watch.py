"""
Tests for C{kvtwist watch} and C{kvtwist wait} (L{kvtwist.cli.commands.watch}).
"""

from __future__ import annotations

import io
import json
from typing import Tuple

from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock

from kvtwist.cli import main
from kvtwist.limits import Limits
from kvtwist.model import Put
from kvtwist.testing import MemoryStore, memory_root

from tests.helpers.client import Recorder, Tap
from tests.helpers.cli import Failing, Hanging, V1CLITestCase


class WatchCommandTests(V1CLITestCase):
    """kvtwist watch: one line per event, for as long as it runs."""

    def start(self, *argv: str, http: object = None) -> Tuple[Deferred, io.StringIO, io.StringIO]:
        """Start C{kvtwist ARGV} and return its Deferred and output streams, without waiting."""
        out, err = io.StringIO(), io.StringIO()
        d = main(self.clock, *argv, http=self.http if http is None else http,
                 stdout=out, stderr=err, environ={})
        self.http.flush()
        return d, out, err

    def put(self, key: str, value: bytes = b"v") -> None:
        self.cli("put", key, "-", stdin=value)

    @property
    def hub(self):
        return self.http._agent._rootResource.root.children[b"v1"].context.hub

    def test_json_lines_until_timeout(self) -> None:
        """Each event under PREFIX is one JSON line as it happens; --timeout ends it with exit 0."""
        d, out, err = self.start("--timeout", "10", "watch", "p/")
        self.put("p/a", b"1")
        self.put("q/b")
        self.cli("rm", "p/a")
        self.assertNoResult(d)
        self.assertEqual([json.loads(line) for line in out.getvalue().splitlines()], [
            {"revision": 1, "kind": "put", "key": "p/a", "version": 1,
             "content_type": "application/octet-stream", "size": 1},
            {"revision": 3, "kind": "delete", "key": "p/a"},
        ])
        self.clock.advance(10)
        self.http.flush()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(err.getvalue(), "")
        self.assertEqual(self.hub.subscribers, 0)

    def test_text_values_and_after(self) -> None:
        """-o text prints '<revision> <kind> <key>'; --after replays; --values adds values."""
        self.put("a", b"1")
        self.put("b", b'{"x": 1}')
        d, out, _ = self.start("-o", "text", "--timeout", "1", "watch", "--after", "1")
        self.clock.advance(1)
        self.http.flush()
        self.successResultOf(d)
        self.assertEqual(out.getvalue(), "2 put b\n")
        d, out, _ = self.start("--timeout", "1", "watch", "--values", "--after", "0")
        self.clock.advance(1)
        self.http.flush()
        self.successResultOf(d)
        # Both values are UTF-8 text (stored as application/octet-stream).
        self.assertEqual([json.loads(line).get("text") for line in out.getvalue().splitlines()],
                         ["1", '{"x": 1}'])
        d, out, _ = self.start("-o", "text", "--timeout", "1", "watch", "--values", "--after", "0")
        self.clock.advance(1)
        self.http.flush()
        self.successResultOf(d)
        self.assertEqual(out.getvalue(), '1 put a\t1\n2 put b\t{"x": 1}\n')

    def test_runs_until_interrupted(self) -> None:
        """Without --timeout it runs on; cancelling it closes the stream."""
        d, out, _ = self.start("watch")
        self.clock.advance(3600)
        self.put("a")
        self.assertNoResult(d)
        self.assertEqual(out.getvalue().count("\n"), 1)
        d.cancel()
        self.http.flush()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.hub.subscribers, 0)

    def test_history_gone_exits_1(self) -> None:
        """A resume point the server's history no longer reaches (compacted) is exit 1 with the problem."""
        store = MemoryStore(self.clock)
        http = StubTreq(memory_root(store, limits=Limits(watch_history=2)))
        for i in range(5):
            self.successResultOf(store.commit([Put("k%d" % i, b"v")]))
        self.successResultOf(store.compact(3, 100))
        d, out, err = self.start("watch", "--after", "0", http=http)
        http.flush()
        self.assertEqual(self.failureResultOf(d, SystemExit).value.code, 1)
        self.assertTrue(err.getvalue().startswith("kvtwist: 410 history-gone: "), err.getvalue())
        self.assertEqual(out.getvalue(), "")

    def test_unreachable_exits_3(self) -> None:
        """A server that stays unreachable is retried with backoff, then exit 3."""
        failing = Failing(ConnectionRefusedError())
        d, _, err = self.start("watch", http=failing)
        for _ in range(600):
            if d.called:
                break
            self.clock.advance(1)
        self.assertEqual(self.failureResultOf(d, SystemExit).value.code, 3)
        lines = err.getvalue().splitlines()
        # Eight retries announced (max_retries), then the final error.
        self.assertEqual(len(lines), 9, lines)
        self.assertTrue(lines[0].startswith(
            "kvtwist: the event stream from http://127.0.0.1:8080 failed: Connection was refused"),
            lines[0])
        self.assertRegex(lines[0], r"; resuming in \d+\.\d s$")
        self.assertIn("kvtwist: cannot reach http://127.0.0.1:8080: ", lines[-1])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_resume_is_announced(self) -> None:
        """A stream cut by the server is resumed after its last revision, and stderr says so."""
        tap = Tap(memory_root(self.store))
        http = StubTreq(tap)
        d, out, err = self.start("--timeout", "10", "watch", http=http)
        http.flush()
        self.put("a")
        http.flush()
        tap.cut()
        http.flush()
        self.put("b")
        http.flush()
        self.clock.advance(10)
        http.flush()
        self.successResultOf(d)
        self.assertEqual([json.loads(line)["key"] for line in out.getvalue().splitlines()], ["a", "b"])
        self.assertRegex(err.getvalue(), r"^kvtwist: the event stream from http://127.0.0.1:8080 "
                                         r"failed: .*; resuming after revision 1 in 0.0 s\n$")

    def test_bad_arguments_exit_2(self) -> None:
        """A revision that is not a number is a usage error."""
        for argv in (("watch", "--after", "x"), ("watch", "--after", "-1")):
            _, err = self.cli(*argv, code=2)
            self.assertIn("not a revision", err)


class WaitCommandTests(V1CLITestCase):
    """kvtwist wait: one long-poll."""

    def test_wakes_and_prints(self) -> None:
        """wait holds until KEY passes the index, then prints it as cat does, with found."""
        self.cli("put", "a", "1")
        out, err = io.StringIO(), io.StringIO()
        d = main(self.clock, "wait", "a", "--index", "1", "--wait", "30", http=self.http,
                 stdout=out, stderr=err, environ={})
        self.http.flush()
        self.assertNoResult(d)
        self.cli("put", "a", "2", "--json")
        self.http.flush()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(json.loads(out.getvalue()), {
            "key": "a", "found": True, "create_revision": 1, "mod_revision": 2, "version": 2,
            "content_type": "application/json", "size": 1, "expires": None, "value": 2,
            "revision": 2,
        })

    def test_text_prints_the_value(self) -> None:
        """-o text writes the value's bytes exactly."""
        self.cli("put", "a", "hello")
        self.assertEqual(self.cli("-o", "text", "wait", "a", "--index", "0"), ("hello", ""))

    def test_absent(self) -> None:
        """An absent key is {"found": false} (text: a note on stderr), exit 0."""
        self.cli("put", "a", "1")
        self.cli("rm", "a")
        self.assertEqual(self.json_out("wait", "a", "--index", "1"), {"key": "a", "found": False})
        self.assertEqual(self.cli("-o", "text", "wait", "a", "--index", "1"),
                         ("", 'kvtwist: "a" does not exist\n'))

    def test_query(self) -> None:
        """--index and --wait go in the query."""
        recorder = Recorder(200, b"v", b"text/plain")
        self.cli("wait", "k", "--index", "5", "--wait", "2.5", http=StubTreq(recorder))
        self.assertEqual(recorder.requests[0][1], b"/v1/kv/k?index=5&wait=2.5")

    def test_default_timeout_covers_the_wait(self) -> None:
        """Without --timeout, wait gives the server its wait plus 1/16 and 10 s."""
        for argv, limit in ((("--wait", "100"), 100 * 17 / 16 + 10), ((), 60 * 17 / 16 + 10)):
            clock = Clock()
            d = main(clock, "wait", "k", "--index", "0", *argv, http=Hanging(),
                     stdout=io.StringIO(), stderr=io.StringIO(), environ={})
            clock.advance(limit - 0.1)
            self.assertNoResult(d)
            clock.advance(0.2)
            self.assertEqual(self.failureResultOf(d, SystemExit).value.code, 3)

    def test_usage(self) -> None:
        """--index is required and a revision; --wait is 0 or more seconds."""
        for argv in (("wait", "k"), ("wait", "k", "--index", "x"),
                     ("wait", "k", "--index", "1", "--wait", "-1")):
            self.cli(*argv, code=2)
