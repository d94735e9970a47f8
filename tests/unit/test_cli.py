"""
Tests for the C{kvtwist} command (L{kvtwist.cli}): every command, output
format, option default and exit code, in memory against
C{StubTreq(memory_root())}, with stdout and stderr passed in as
C{io.StringIO}.
"""

from __future__ import annotations

import io
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from typing import Dict, Optional, Tuple
from urllib.parse import quote

from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectionRefusedError, DNSLookupError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseNeverReceived

import kvtwist
from kvtwist import client, wire
from kvtwist.cli import main
from kvtwist.limits import Limits
from kvtwist.model import Put
from kvtwist.testing import MemoryStore, memory_root
from kvtwist.transactions import TransactionManager

from tests.helpers.paths import REPO
from tests.helpers.client import AWKWARD_KEYS, FailAfter, Interloper, Recorder, Tap

PROJECT = REPO


class Failing:
    """A treq-like client whose requests fail with C{exception}."""

    def __init__(self, exception: Exception) -> None:
        self.exception = exception

    def request(self, *args, **kwargs):
        return fail(self.exception)


class Hanging:
    """A treq-like client that never answers; counts cancellations."""

    def __init__(self) -> None:
        self.cancelled = 0

    def request(self, *args, **kwargs):
        def cancel(d: Deferred) -> None:
            self.cancelled += 1

        return Deferred(cancel)


class CLITestCase(SynchronousTestCase):
    """Runs L{main} in memory and returns its exit code and output."""

    def setUp(self) -> None:
        self.store = MemoryStore()
        self.http = StubTreq(memory_root(self.store))
        self.clock = Clock()

    def cli(
        self,
        *argv: str,
        code: int = 0,
        http: object = None,
        environ: Optional[Dict[str, str]] = None,
    ) -> Tuple[str, str]:
        """
        Run C{kvtwist ARGV}, assert it exits with C{code}, and return what it
        wrote to stdout and stderr.
        """
        out, err = io.StringIO(), io.StringIO()
        d = main(
            self.clock,
            *argv,
            http=self.http if http is None else http,
            stdout=out,
            stderr=err,
            environ={} if environ is None else environ,
        )
        self.http.flush()
        if code == 0:
            self.assertIsNone(self.successResultOf(d))
        else:
            self.assertEqual(self.failureResultOf(d, SystemExit).value.code, code)
        return out.getvalue(), err.getvalue()


class CommandTests(CLITestCase):
    """get, set, delete and commit against the in-memory server."""

    def test_set_commit_get(self) -> None:
        """set stages, commit applies, get prints the value as one line of JSON."""
        out, err = self.cli("set", "a", '{"x": [1, "caf\u00e9"], "y": null}')
        self.assertEqual((out, err), ('{"a": "created"}\n', ""))
        self.assertEqual(self.cli("commit"), ("", ""))
        self.assertEqual(self.cli("get", "a"), ('{"x": [1, "caf\u00e9"], "y": null}\n', ""))

    def test_set_existing_key_is_updated(self) -> None:
        """set of a committed key prints 'updated'."""
        self.cli("set", "a", "1")
        self.cli("commit")
        self.assertEqual(self.cli("set", "a", "2")[0], '{"a": "updated"}\n')

    def test_set_is_staged_only(self) -> None:
        """set alone does not commit: get still answers 404 (exit 1)."""
        self.cli("set", "a", "1")
        self.cli("get", "a", code=1)
        self.assertEqual(self.store.rows, {})

    def test_get_missing_key(self) -> None:
        """get of an absent key exits 1 with the problem on stderr and nothing on stdout."""
        out, err = self.cli("get", "a", code=1)
        self.assertEqual(out, "")
        self.assertEqual(err, "kvtwist: 404 key-not-found: no such key: 'a'\n")

    def test_set_bad_json_is_usage_error(self) -> None:
        """A value that is not JSON exits 2, hints at quoting, and sends nothing."""
        out, err = self.cli("set", "a", "hello", code=2)
        self.assertEqual(out, "")
        self.assertTrue(err.startswith("kvtwist: the value is not strict JSON: "), err)
        self.assertIn("""(a string needs JSON quotes: '"hello"')""", err)
        self.cli("commit")
        self.assertEqual(self.store.commits, [])

    def test_set_non_strict_json_is_usage_error(self) -> None:
        """NaN, Infinity, duplicate keys, trailing data and lone surrogates exit 2."""
        for value in ("NaN", "-Infinity", '{"a": 1, "a": 2}', "1 2", '"\\ud800"', "[1,]",
                      "[" * 100000 + "]" * 100000):
            out, err = self.cli("set", "--", "a", value, code=2)
            self.assertTrue(err.startswith("kvtwist: the value is not strict JSON: "), err)
            self.assertNotIn("quotes", err)
        self.cli("commit")
        self.assertEqual(self.store.commits, [])

    def test_set_server_rejects_key_with_400(self) -> None:
        """A key the server refuses (empty) exits 1 with the server's 400 problem."""
        out, err = self.cli("set", "", "1", code=1)
        self.assertEqual(err, "kvtwist: 400 bad-key: the key is empty\n")

    def test_set_server_rejects_deep_json_with_400(self) -> None:
        """JSON nested deeper than the server allows exits 1 with 400 too-deep."""
        out, err = self.cli("set", "a", "[" * 100 + "]" * 100, code=1)
        self.assertTrue(err.startswith("kvtwist: 400 too-deep: "), err)

    def test_set_json_scalars(self) -> None:
        """Strings, numbers, booleans and null are stored as given."""
        for value, stored in (('"text"', b'"text"'), ("-1", b"-1"), ("true", b"true"), ("null", b"null")):
            self.cli("set", "--", "k", value)
            self.cli("commit")
            self.assertEqual(self.store.rows["k"].value, stored)

    def test_delete_then_commit(self) -> None:
        """delete prints the outcome and the key is gone after commit."""
        self.cli("set", "a", "1")
        self.cli("commit")
        self.assertEqual(self.cli("delete", "a"), ('{"a": "deleted"}\n', ""))
        self.cli("commit")
        self.cli("get", "a", code=1)

    def test_delete_several_keys(self) -> None:
        """delete takes several keys at once."""
        self.cli("set", "a", "1")
        self.cli("set", "b", "2")
        self.assertEqual(self.cli("delete", "a", "b")[0], '{"a": "deleted", "b": "deleted"}\n')

    def test_delete_missing_key(self) -> None:
        """delete of an unknown key exits 1 naming it; nothing is staged."""
        self.cli("set", "a", "1")
        self.cli("commit")
        out, err = self.cli("delete", "a", "nope", code=1)
        self.assertEqual(err, "kvtwist: 404 key-not-found: no such key: 'nope'\n")
        self.cli("commit")
        self.assertEqual(self.cli("get", "a")[0], "1\n")

    def test_commit_store_unavailable(self) -> None:
        """commit exits 1 when the server's store fails (503)."""
        from kvtwist.errors import StoreUnavailable

        self.cli("set", "a", "1")
        self.store.fail_commits = StoreUnavailable("the disk is gone")
        out, err = self.cli("commit", code=1)
        self.assertEqual(err, "kvtwist: 503 store-unavailable: the disk is gone\n")

    def test_awkward_keys(self) -> None:
        """Keys with '/', spaces, UTF-8, '%' and dots round-trip through set/commit/get/delete."""
        for i, key in enumerate(AWKWARD_KEYS):
            self.cli("set", key, str(i))
        self.cli("commit")
        self.assertEqual(set(self.store.rows), set(AWKWARD_KEYS))
        for i, key in enumerate(AWKWARD_KEYS):
            if key in ("set", "commit"):
                continue  # the seed's GET route cannot reach these names
            self.assertEqual(self.cli("get", key)[0], "%d\n" % (i,), key)
        self.cli("delete", *AWKWARD_KEYS)
        self.cli("commit")
        self.assertEqual(self.store.rows, {})

    def test_key_starting_with_dash(self) -> None:
        """A key that starts with '-' is given after '--'."""
        self.cli("set", "--", "-k", "1")
        self.cli("commit")
        self.assertEqual(self.cli("get", "--", "-k")[0], "1\n")


class OutputTests(CLITestCase):
    """--output json (default) and --output text."""

    def setUp(self) -> None:
        super().setUp()
        self.cli("set", "s", '"two\\nlines \u2603"')
        self.cli("set", "n", '{"b": [1, 2]}')
        self.cli("commit")

    def test_text_get_string_is_raw(self) -> None:
        """--output text prints a string value as it is, without quotes or escapes."""
        self.assertEqual(self.cli("--output", "text", "get", "s")[0], "two\nlines \u2603\n")

    def test_json_get_string_is_quoted(self) -> None:
        """--output json prints a string value as a JSON string on one line."""
        self.assertEqual(self.cli("--output", "json", "get", "s")[0], '"two\\nlines \u2603"\n')

    def test_text_get_other_values_are_json(self) -> None:
        """--output text prints non-string values as JSON."""
        self.assertEqual(self.cli("-o", "text", "get", "n")[0], '{"b": [1, 2]}\n')

    def test_text_set_and_delete(self) -> None:
        """--output text prints one '<outcome> <key>' line per key."""
        self.assertEqual(self.cli("-o", "text", "set", "s", "1")[0], "updated s\n")
        self.assertEqual(self.cli("-o", "text", "set", "new key", "1")[0], "created new key\n")
        self.assertEqual(self.cli("-o", "text", "delete", "s", "n")[0], "deleted s\ndeleted n\n")

    def test_text_commit(self) -> None:
        """--output text prints 'committed' after a commit; json prints nothing."""
        self.assertEqual(self.cli("-o", "text", "commit"), ("committed\n", ""))
        self.assertEqual(self.cli("commit"), ("", ""))

    def test_options_after_command(self) -> None:
        """Global options are accepted after the command too, and win there."""
        self.assertEqual(self.cli("get", "s", "--output", "text")[0], "two\nlines \u2603\n")
        self.assertEqual(self.cli("-o", "json", "get", "-o", "text", "s")[0], "two\nlines \u2603\n")

    def test_errors_are_the_same_in_text_mode(self) -> None:
        """--output text does not change the stderr line of an error."""
        out, err = self.cli("-o", "text", "get", "missing", code=1)
        self.assertEqual(err, "kvtwist: 404 key-not-found: no such key: 'missing'\n")


class OptionTests(CLITestCase):
    """--url, --token and their environment defaults."""

    def run_recorded(self, *argv: str, environ: Optional[Dict[str, str]] = None) -> Recorder:
        recorder = Recorder(204, b"")
        http = StubTreq(recorder)
        out, err = io.StringIO(), io.StringIO()
        d = main(self.clock, *argv, http=http, stdout=out, stderr=err, environ=environ or {})
        http.flush()
        self.successResultOf(d)
        return recorder

    def test_default_url(self) -> None:
        """Without --url or KVTWIST_URL, requests go to 127.0.0.1:8080."""
        recorder = self.run_recorded("commit")
        self.assertEqual(recorder.header(0, b"host"), b"127.0.0.1:8080")

    def test_url_from_environment(self) -> None:
        """KVTWIST_URL sets the base URL, path prefix included."""
        recorder = self.run_recorded("commit", environ={"KVTWIST_URL": "http://kv.example:9000/kv/"})
        self.assertEqual(recorder.header(0, b"host"), b"kv.example:9000")
        self.assertEqual(recorder.requests[0][1], b"/kv/commit")

    def test_url_option_beats_environment(self) -> None:
        """--url wins over KVTWIST_URL."""
        recorder = self.run_recorded(
            "--url", "http://flag.example:1234", "commit",
            environ={"KVTWIST_URL": "http://env.example:9000"},
        )
        self.assertEqual(recorder.header(0, b"host"), b"flag.example:1234")

    def test_token_from_environment(self) -> None:
        """KVTWIST_TOKEN is sent as a bearer token."""
        recorder = self.run_recorded("commit", environ={"KVTWIST_TOKEN": "env-token"})
        self.assertEqual(recorder.header(0, b"authorization"), b"Bearer env-token")

    def test_token_option_beats_environment(self) -> None:
        """--token wins over KVTWIST_TOKEN."""
        recorder = self.run_recorded(
            "--token", "flag-token", "commit", environ={"KVTWIST_TOKEN": "env-token"}
        )
        self.assertEqual(recorder.header(0, b"authorization"), b"Bearer flag-token")

    def test_no_token(self) -> None:
        """Without a token (or with an empty KVTWIST_TOKEN) no Authorization is sent."""
        for environ in ({}, {"KVTWIST_TOKEN": ""}):
            recorder = self.run_recorded("commit", environ=environ)
            self.assertIsNone(recorder.header(0, b"authorization"))

    def test_bad_token_is_usage_error(self) -> None:
        """A token that cannot be a header value exits 2 and sends nothing."""
        out, err = self.cli("--token", "a b", "commit", code=2, http=Failing(AssertionError()))
        self.assertEqual(err, "kvtwist: a token is printable ASCII without spaces\n")

    def test_bad_urls_are_usage_errors(self) -> None:
        """A URL that is not http(s)://HOST[:PORT][/PATH] exits 2 and sends nothing."""
        for url in (
            "localhost:8080",
            "ftp://host/",
            "http://",
            "http://host:port/",
            "http://host/?q=1",
            "http://host/#f",
        ):
            out, err = self.cli("--url", url, "commit", code=2, http=Failing(AssertionError()))
            self.assertTrue(err.startswith("kvtwist: bad --url %r" % (url,)), err)

    def test_bad_url_from_environment(self) -> None:
        """A bad KVTWIST_URL is a usage error too."""
        self.cli("commit", code=2, environ={"KVTWIST_URL": "nope"})


class UsageTests(CLITestCase):
    """Help, version and argument errors."""

    def test_help(self) -> None:
        """--help exits 0 and documents the commands, environment and exit codes."""
        out, err = self.cli("--help")
        self.assertEqual(err, "")
        for text in ("get", "set", "delete", "commit", "KVTWIST_URL", "KVTWIST_TOKEN",
                     "exit codes:", "3  cannot reach the server"):
            self.assertIn(text, out)

    def test_command_help(self) -> None:
        """Each command's --help exits 0 and shows the exit codes."""
        for command in ("get", "set", "delete", "commit"):
            out, err = self.cli(command, "--help")
            self.assertIn("exit codes:", out)
            self.assertEqual(err, "")

    def test_version(self) -> None:
        """--version prints the package version."""
        self.assertEqual(self.cli("--version"), ("kvtwist %s\n" % (kvtwist.__version__,), ""))

    def test_usage_errors(self) -> None:
        """No command, an unknown command, missing or extra arguments exit 2 with usage."""
        for argv in ((), ("frobnicate",), ("get",), ("set", "a"), ("get", "a", "b"),
                     ("delete",), ("--output", "xml", "commit"), ("--timeout", "-1", "commit")):
            out, err = self.cli(*argv, code=2)
            self.assertEqual(out, "", argv)
            self.assertIn("usage: kvtwist", err, argv)
            self.assertIn("error:", err, argv)

    def test_undecodable_arguments(self) -> None:
        """Arguments that were not UTF-8 on the command line exit 2."""
        out, err = self.cli("get", "k\udcff", code=2)
        self.assertEqual(err, "kvtwist: KEY is not valid UTF-8\n")
        out, err = self.cli("set", "k", '"\udcff"', code=2)
        self.assertEqual(err, "kvtwist: the JSON value is not valid UTF-8\n")


class ConnectionTests(CLITestCase):
    """Exit 3 when the server cannot be reached; never a traceback."""

    def test_connection_refused(self) -> None:
        """A refused connection exits 3 with one line naming the URL."""
        out, err = self.cli("get", "a", code=3, http=Failing(ConnectionRefusedError()))
        self.assertEqual(
            err,
            "kvtwist: cannot reach http://127.0.0.1:8080: "
            "Connection was refused by other side.\n",
        )
        self.assertEqual(out, "")

    def test_dns_failure(self) -> None:
        """An unknown host exits 3."""
        out, err = self.cli(
            "--url", "http://nowhere.invalid", "commit", code=3,
            http=Failing(DNSLookupError("nowhere.invalid")),
        )
        self.assertIn("DNS lookup failed", err)

    def test_connection_lost_before_answer(self) -> None:
        """A connection that dies before the answer exits 3 and says so."""
        from twisted.internet.error import ConnectionLost

        out, err = self.cli(
            "commit", code=3,
            http=Failing(ResponseNeverReceived([Failure(ConnectionLost("reset"))])),
        )
        self.assertEqual(
            err,
            "kvtwist: cannot reach http://127.0.0.1:8080: the connection failed "
            "before a whole answer arrived (Connection to the other side was lost "
            "in a non-clean fashion: reset.)\n",
        )

    def test_timeout(self) -> None:
        """With no answer within --timeout seconds, the request is cancelled and exit is 3."""
        hanging = Hanging()
        out, err = io.StringIO(), io.StringIO()
        d = main(self.clock, "--timeout", "5", "get", "a", http=hanging,
                 stdout=out, stderr=err, environ={})
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.assertEqual(self.failureResultOf(d, SystemExit).value.code, 3)
        self.assertEqual(hanging.cancelled, 1)
        self.assertEqual(
            err.getvalue(),
            "kvtwist: cannot reach http://127.0.0.1:8080: timed out after 5 s\n",
        )

    def test_timeout_of_a_request_in_flight(self) -> None:
        """
        A request cancelled mid-way by --timeout fails the way treq's do
        (ResponseNeverReceived wrapping the cancellation); the message still
        names the timeout, not an empty list of reasons.
        """

        class Cancelled(Hanging):
            def request(self, *args, **kwargs):
                def cancel(d: Deferred) -> None:
                    d.errback(ResponseNeverReceived([Failure(CancelledError())]))

                return Deferred(cancel)

        err = io.StringIO()
        d = main(self.clock, "--timeout", "2", "get", "a", http=Cancelled(),
                 stdout=io.StringIO(), stderr=err, environ={})
        self.clock.advance(2)
        self.assertEqual(self.failureResultOf(d, SystemExit).value.code, 3)
        self.assertEqual(
            err.getvalue(),
            "kvtwist: cannot reach http://127.0.0.1:8080: timed out after 2 s\n",
        )

    def test_default_timeout(self) -> None:
        """The default timeout is 60 seconds."""
        d = main(self.clock, "commit", http=Hanging(), stdout=io.StringIO(),
                 stderr=io.StringIO(), environ={})
        self.clock.advance(59)
        self.assertNoResult(d)
        self.clock.advance(1)
        self.assertEqual(self.failureResultOf(d, SystemExit).value.code, 3)

    def test_timeout_zero_waits(self) -> None:
        """--timeout 0 waits for as long as it takes."""
        d = main(self.clock, "--timeout", "0", "commit", http=Hanging(),
                 stdout=io.StringIO(), stderr=io.StringIO(), environ={})
        self.clock.advance(10 ** 6)
        self.assertNoResult(d)

    def test_default_client_on_reactor(self) -> None:
        """Without http=, the CLI connects with the reactor it is given; refusal exits 3."""
        reactor = MemoryReactorClock()
        err = io.StringIO()
        d = main(reactor, "--url", "http://127.0.0.1:9", "commit",
                 stdout=io.StringIO(), stderr=err, environ={})
        host, port, factory, timeout, bind = reactor.tcpClients[0]
        self.assertEqual((host, port), ("127.0.0.1", 9))
        factory.clientConnectionFailed(reactor.connectors[0], Failure(ConnectionRefusedError()))
        # HostnameEndpoint gives up once its attempt loop sees no address left.
        reactor.advance(1)
        self.assertEqual(self.failureResultOf(d, SystemExit).value.code, 3)
        self.assertIn("kvtwist: cannot reach http://127.0.0.1:9: ", err.getvalue())


class UnixSocketTests(SynchronousTestCase):
    """--unix-socket PATH and http+unix:// URLs, against a real server listening on unix:."""

    def setUp(self) -> None:
        from tests.helpers.e2e import start_server

        # Short: a unix socket's path has a limit of about 100 bytes.
        directory = tempfile.mkdtemp(prefix="kvsock-", dir="/tmp")
        self.addCleanup(shutil.rmtree, directory, True)
        self.socket = os.path.join(directory, "kv.sock")
        start_server(self, extra_args=["--listen", "tcp:{port}:interface=127.0.0.1",
                                       "--listen", "unix:" + self.socket])

    def kvtwist(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-b", "-c", "from kvtwist.cli import run; run()", *argv],
            capture_output=True, text=True, timeout=60, env=dict(os.environ, KVTWIST_URL=""),
        )

    def test_unix_socket_option(self) -> None:
        """--unix-socket PATH reaches the server on its unix socket, as curl's option does."""
        put = self.kvtwist("--unix-socket", self.socket, "put", "app/x", "hello")
        self.assertEqual(put.returncode, 0, put.stderr)
        got = self.kvtwist("--unix-socket", self.socket, "-o", "text", "cat", "app/x")
        self.assertEqual((got.returncode, got.stdout), (0, "hello"), got.stderr)

    def test_http_unix_url(self) -> None:
        """--url http+unix://<percent-encoded path>/ names the socket in place of the host."""
        url = "http+unix://%s/" % (quote(self.socket, safe=""),)
        put = self.kvtwist("--url", url, "put", "k", "v")
        self.assertEqual(put.returncode, 0, put.stderr)
        listed = self.kvtwist("--url", url, "-o", "text", "list")
        self.assertEqual((listed.returncode, listed.stdout), (0, "k\n"), listed.stderr)

    def test_missing_socket(self) -> None:
        """A socket nobody listens on is exit 3, naming the socket."""
        result = self.kvtwist("--unix-socket", self.socket + ".nope", "get", "a")
        self.assertEqual(result.returncode, 3)
        self.assertIn("cannot reach unix socket %s.nope" % (self.socket,), result.stderr)


class UnixTargetTests(SynchronousTestCase):
    """How --url and --unix-socket decide where requests go."""

    def test_targets(self) -> None:
        """http+unix URLs carry the socket; --unix-socket wins; the path prefix is kept."""
        from kvtwist.cli.connection import base_url, unix_target

        self.assertEqual(unix_target(base_url("http+unix://%2Frun%2Fkv.sock/pre"), None),
                         ("http://localhost/pre", "/run/kv.sock"))
        self.assertEqual(unix_target("http://127.0.0.1:8080/p", "/tmp/s"),
                         ("http://127.0.0.1:8080/p", "/tmp/s"))
        self.assertEqual(unix_target(base_url("http+unix://%2Fa/"), "/b"),
                         ("http://localhost/", "/b"))
        self.assertEqual(unix_target("http://h:1", None), ("http://h:1", None))

    def test_bad_unix_url(self) -> None:
        """An http+unix URL without a socket is a usage error (exit 2)."""
        err = io.StringIO()
        d = main(Clock(), "--url", "http+unix:///x", "get", "a", stdout=io.StringIO(),
                 stderr=err, environ={})
        self.assertEqual(self.failureResultOf(d, SystemExit).value.code, 2)
        self.assertIn("http+unix://%2Fpath%2Fto.sock", err.getvalue())


class CommandTableTests(SynchronousTestCase):
    """The parser's subcommands and the runner's table of L{Command}s agree."""

    def test_every_subcommand_has_its_command(self) -> None:
        """
        Each subcommand the parser accepts has a Command to run (but
        completion, which the runner answers from the parser), and each
        Command has its subcommand.
        """
        import argparse

        from kvtwist.cli.commands import COMMANDS, GROUPS
        from kvtwist.cli.invocation import Command
        from kvtwist.cli.parser import build_parser

        parser = build_parser(io.StringIO(), io.StringIO(), GROUPS)
        [subcommands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        self.assertEqual(set(subcommands.choices) - {"completion"}, set(COMMANDS))
        for name, command in COMMANDS.items():
            self.assertIsInstance(command, Command, name)


class CompletionTests(SynchronousTestCase):
    """kvtwist completion bash|zsh: scripts made by shtab from the parser."""

    def script(self, shell: str) -> str:
        out = io.StringIO()
        self.assertIsNone(self.successResultOf(
            main(Clock(), "completion", shell, stdout=out, stderr=io.StringIO(), environ={})))
        return out.getvalue()

    def complete(self, script: str, *words: str) -> str:
        """What bash offers for the last of C{words}, with the script loaded."""
        path = os.path.join(tempfile.mkdtemp(prefix="kvtwist-completion-"), "kvtwist.bash")
        self.addCleanup(shutil.rmtree, os.path.dirname(path), True)
        with open(path, "w") as f:
            f.write(script)
        program = 'source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); ' \
                  '_shtab_kvtwist; echo "${COMPREPLY[@]}"'
        result = subprocess.run(["bash", "-c", program, "bash", path, *words],
                                capture_output=True, text=True, timeout=30)
        self.assertEqual(result.stderr, "")
        return result.stdout.strip()

    def test_bash(self) -> None:
        """The bash script completes commands and each command's options."""
        if shutil.which("bash") is None:
            self.skipTest("bash is not installed")
        script = self.script("bash")
        self.assertEqual(self.complete(script, "kvtwist", "li"), "list")
        self.assertEqual(self.complete(script, "kvtwist", "comp"), "completion")
        self.assertEqual(self.complete(script, "kvtwist", "load", "--ba"), "--batch")
        self.assertIn("--unix-socket", self.complete(script, "kvtwist", "--u"))

    def test_zsh(self) -> None:
        """The zsh script is a #compdef function naming every command (and parses, where zsh is)."""
        script = self.script("zsh")
        self.assertTrue(script.startswith("#compdef kvtwist"), script[:80])
        for command in ("get", "put", "cat", "list", "watch", "dump", "load", "completion"):
            self.assertIn("\n    %s:'" % (command,), script)
        if shutil.which("zsh"):
            result = subprocess.run(["zsh", "-n"], input=script, capture_output=True, text=True,
                                    timeout=30)
            self.assertEqual(result.returncode, 0, result.stderr)

    def test_unknown_shell(self) -> None:
        """A shell without a script is a usage error."""
        d = main(Clock(), "completion", "fish", stdout=io.StringIO(), stderr=io.StringIO(),
                 environ={})
        self.assertEqual(self.failureResultOf(d, SystemExit).value.code, 2)


class SignalTests(SynchronousTestCase):
    """SIGINT and SIGTERM through the console script, as real subprocesses."""

    def start(self, *argv: str) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-b", "-c", "from kvtwist.cli import run; run()", *argv],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.addCleanup(lambda: process.poll() is None and process.kill())
        return process

    def silent_server(self) -> socket.socket:
        """A listening socket that will never answer."""
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(30)
        self.addCleanup(listener.close)
        return listener

    def in_request(self, process: subprocess.Popen, listener: socket.socket) -> None:
        """Wait (bounded) until the command has connected: it is then running."""
        connection, _ = listener.accept()
        self.addCleanup(connection.close)
        self.assertIsNone(process.poll(), "the command ended before the signal")

    def url(self, listener: socket.socket) -> str:
        return "http://127.0.0.1:%d" % (listener.getsockname()[1],)

    def test_sigint_during_a_request(self) -> None:
        """A command waiting for its answer, interrupted by SIGINT: exit 130 and one line."""
        listener = self.silent_server()
        process = self.start("--url", self.url(listener), "--timeout", "60", "get", "a")
        self.in_request(process, listener)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
        self.assertEqual((process.returncode, out, err), (130, "", "kvtwist: interrupted\n"))

    def test_sigterm_during_a_request(self) -> None:
        """The same with SIGTERM: exit 143."""
        listener = self.silent_server()
        process = self.start("--url", self.url(listener), "--timeout", "60", "cat", "a")
        self.in_request(process, listener)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
        self.assertEqual((process.returncode, err), (143, "kvtwist: interrupted\n"))

    def test_sigint_ends_a_watch_with_0(self) -> None:
        """^C is how a watch ends: exit 0, nothing on stderr."""
        from tests.helpers.e2e import http_request, start_server

        server = start_server(self)
        http_request(server.url, "PUT", "/v1/kv/a", b"1")
        process = self.start("--url", server.url, "-o", "text", "watch", "--after", "0")
        assert process.stdout is not None
        # The replayed event is printed once the watch runs (bounded wait).
        ready, _, _ = select.select([process.stdout], [], [], 30)
        self.assertTrue(ready, "the watch printed nothing")
        self.assertEqual(process.stdout.readline(), "1 put a\n")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
        self.assertEqual((process.returncode, err), (0, ""))


class ConsoleScriptTests(SynchronousTestCase):
    """run(), the console script, through a real interpreter (no network)."""

    def run_script(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-b", "-W", "error::BytesWarning", "-c",
             "from kvtwist.cli import run; run()", *argv],
            capture_output=True, text=True, timeout=60, cwd=PROJECT,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
        )

    def test_help_exits_0(self) -> None:
        """'kvtwist --help' prints help and exits 0."""
        result = self.run_script("--help")
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        self.assertIn("exit codes:", result.stdout)

    def test_usage_error_exits_2(self) -> None:
        """A usage error exits 2 through react, with one line and no traceback."""
        result = self.run_script("set", "a", "not-json")
        self.assertEqual(result.returncode, 2)
        self.assertEqual(result.stdout, "")
        self.assertNotIn("Traceback", result.stderr)
        self.assertTrue(result.stderr.startswith("kvtwist: the value is not strict JSON"))


# -- the v1 commands ---------------------------------------------------------------


class V1CLITestCase(CLITestCase):
    """L{CLITestCase} with the server's transactions at hand and stdin to feed."""

    def setUp(self) -> None:
        self.store = MemoryStore()
        self.clock = self.store.clock
        self.transactions = TransactionManager(self.clock, Limits(), self.store)
        self.http = StubTreq(memory_root(self.store, transactions=self.transactions))

    def cli(self, *argv: str, code: int = 0, http: object = None,
            environ: Optional[Dict[str, str]] = None, stdin: bytes = b"",
            stdout: Optional[io.TextIOBase] = None) -> Tuple[str, str]:
        """
        Run C{kvtwist ARGV} with C{stdin} as its binary standard input, assert
        it exits with C{code}, and return what it wrote to stdout and stderr.
        """
        out = stdout if stdout is not None else io.StringIO()
        err = io.StringIO()
        d = main(
            self.clock, *argv, http=self.http if http is None else http, stdout=out,
            stderr=err, environ={} if environ is None else environ, stdin=io.BytesIO(stdin),
        )
        self.http.flush()
        if code == 0:
            self.assertIsNone(self.successResultOf(d))
        else:
            self.assertEqual(self.failureResultOf(d, SystemExit).value.code, code)
        return (out.getvalue() if stdout is None else ""), err.getvalue()

    def json_out(self, *argv: str, **kwargs) -> object:
        """Run a command that succeeds and decode its one line of JSON."""
        out, err = self.cli(*argv, **kwargs)
        self.assertEqual(err, "")
        self.assertEqual(out.count("\n"), 1, out)
        return json.loads(out)

    def file(self, content: bytes) -> str:
        """A temporary file holding C{content}; its path."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(content)
        return path


class PutCommandTests(V1CLITestCase):
    """kvtwist put."""

    def test_put_value(self) -> None:
        """put KEY VALUE stores VALUE's UTF-8 bytes and prints the result as JSON."""
        result = self.json_out("put", "a/b c", "caf\u00e9")
        self.assertEqual(
            result,
            {"key": "a/b c", "revision": 1, "created": True, "version": 1, "etag": '"1"',
             "mod_revision": 1, "expires": None},
        )
        entry = self.store.rows["a/b c"]
        self.assertEqual((entry.value, entry.content_type),
                         ("caf\u00e9".encode("utf-8"), "application/octet-stream"))

    def test_put_text_output(self) -> None:
        """--output text prints 'created KEY (revision N)', then 'updated ...'."""
        self.assertEqual(self.cli("-o", "text", "put", "k", "1"), ("created k (revision 1)\n", ""))
        self.assertEqual(self.cli("put", "k", "2", "-o", "text")[0], "updated k (revision 2)\n")

    def test_put_from_stdin(self) -> None:
        """put KEY - stores stdin's bytes exactly, binary included."""
        self.cli("put", "bin", "-", stdin=b"\x00\xff\r\n")
        self.assertEqual(self.store.rows["bin"].value, b"\x00\xff\r\n")
        self.cli("put", "bin2", "--file", "-", stdin=b"\x01")
        self.assertEqual(self.store.rows["bin2"].value, b"\x01")

    def test_put_from_file(self) -> None:
        """put KEY --file F stores the file's bytes."""
        self.cli("put", "f", "--file", self.file(b"\xfe file \x00"))
        self.assertEqual(self.store.rows["f"].value, b"\xfe file \x00")

    def test_put_value_sources_are_exclusive(self) -> None:
        """No value, or VALUE with --file, or an unreadable file exits 2 and sends nothing."""
        out, err = self.cli("put", "k", code=2)
        self.assertEqual(err, "kvtwist: put needs a VALUE, - (stdin) or --file FILE\n")
        out, err = self.cli("put", "k", "v", "--file", self.file(b"x"), code=2)
        self.assertEqual(err, "kvtwist: put takes either VALUE or --file, not both\n")
        missing = self.mktemp()
        out, err = self.cli("put", "k", "--file", missing, code=2)
        self.assertEqual(err, "kvtwist: cannot read %s: No such file or directory\n" % (missing,))
        self.assertEqual(self.store.commits, [])

    def test_put_content_type_and_json(self) -> None:
        """--content-type is stored; --json checks the value and stores application/json."""
        self.cli("put", "t", "hi", "--content-type", "text/plain; charset=utf-8")
        self.assertEqual(self.store.rows["t"].content_type, "text/plain; charset=utf-8")
        self.cli("put", "j", '{"a": [1]}', "--json")
        self.assertEqual(
            (self.store.rows["j"].value, self.store.rows["j"].content_type),
            (b'{"a": [1]}', "application/json"),
        )
        self.cli("put", "j2", "-", "--json", stdin=b"[true]")
        self.assertEqual(self.store.rows["j2"].content_type, "application/json")

    def test_put_json_refuses_bad_json(self) -> None:
        """--json with a value that is not strict JSON (or not UTF-8) exits 2, nothing sent."""
        out, err = self.cli("put", "j", "hello", "--json", code=2)
        self.assertTrue(err.startswith("kvtwist: the value is not strict JSON"), err)
        out, err = self.cli("put", "j", "-", "--json", stdin=b"\xff", code=2)
        self.assertEqual(err, "kvtwist: the value is not strict JSON: it is not UTF-8\n")
        self.cli("put", "j", "NaN", "--json", code=2)
        self.assertEqual(self.store.commits, [])

    def test_put_json_excludes_content_type(self) -> None:
        """--json and --content-type together are a usage error."""
        out, err = self.cli("put", "j", "1", "--json", "-t", "text/plain", code=2)
        self.assertIn("not allowed with argument", err)

    def test_put_bad_content_type(self) -> None:
        """A content type that cannot be a header exits 2."""
        out, err = self.cli("put", "k", "v", "-t", "caf\u00e9", code=2)
        self.assertTrue(err.startswith("kvtwist: content_type is non-empty printable ASCII"), err)

    def test_put_ttl(self) -> None:
        """--ttl makes the key expire, and shows the expiry; a bad TTL exits 2."""
        result = self.json_out("put", "k", "v", "--ttl", "90")
        self.assertEqual(result["expires"], "1970-01-01T00:01:30.000Z")
        self.cli("put", "half", "v", "--ttl", "0.5")
        self.assertEqual(self.store.rows["half"].expires, 0.5)
        for ttl in ("0", "-1", "soon", "inf", "nan"):
            out, err = self.cli("put", "k", "v", "--ttl", ttl, code=2)
            self.assertIn("--ttl", err)

    def test_put_if_match(self) -> None:
        """--if-match writes at the right revision; a stale one exits 4 and writes nothing."""
        self.cli("put", "k", "1")
        self.cli("put", "k", "2", "--if-match", "1")
        out, err = self.cli("put", "k", "3", "--if-match", '"1"', code=4)
        self.assertEqual(
            err,
            "kvtwist: 412 precondition-failed: If-Match did not hold for 'k' "
            "(its current revision is 2)\n",
        )
        self.assertEqual(out, "")
        self.assertEqual(self.store.rows["k"].value, b"2")
        self.cli("put", "absent", "x", "--if-match", "*", code=4)
        out, err = self.cli("put", "k", "4", "--if-match", "latest", code=2)
        self.assertTrue(err.startswith("kvtwist: if_match is a revision"), err)

    def test_put_if_none_match(self) -> None:
        """--if-none-match creates a key, and exits 4 if it exists."""
        self.cli("put", "lock", "me", "--if-none-match")
        self.cli("put", "lock", "you", "--if-none-match", code=4)
        self.assertEqual(self.store.rows["lock"].value, b"me")


class CatCommandTests(V1CLITestCase):
    """kvtwist cat."""

    def setUp(self) -> None:
        super().setUp()
        self.cli("put", "j", '{"a": "\u2603"}', "--json")
        self.cli("put", "bin", "-", stdin=b"\x00\xff\n")

    def test_cat_json(self) -> None:
        """cat prints the entry as JSON: JSON values inline, others base64, with revisions."""
        self.assertEqual(
            self.json_out("cat", "j"),
            {"key": "j", "create_revision": 1, "mod_revision": 1, "version": 1,
             "content_type": "application/json", "size": 12, "expires": None,
             "value": {"a": "\u2603"}, "revision": 2},
        )
        self.assertEqual(self.json_out("cat", "bin")["value_base64"], "AP8K")

    def test_cat_text_writes_exact_bytes(self) -> None:
        """--output text writes the value's bytes exactly, through stdout's buffer."""
        raw = io.BytesIO()
        stdout = io.TextIOWrapper(raw, encoding="utf-8")
        stdout.write("before ")
        self.cli("-o", "text", "cat", "bin", stdout=stdout)
        stdout.flush()
        self.assertEqual(raw.getvalue(), b"before \x00\xff\n")

    def test_cat_text_without_buffer(self) -> None:
        """On a stream without a buffer, the value is written decoded, nothing added."""
        self.assertEqual(self.cli("-o", "text", "cat", "j"), ('{"a": "\u2603"}', ""))

    def test_cat_missing(self) -> None:
        """cat of an absent key exits 1."""
        out, err = self.cli("cat", "nope", code=1)
        self.assertEqual(err, "kvtwist: 404 key-not-found: no such key: 'nope'\n")

    def test_cat_reserved_and_awkward_keys(self) -> None:
        """cat reaches every key put, including set, commit and keys with '/', spaces, UTF-8."""
        for i, key in enumerate(AWKWARD_KEYS):
            self.cli("put", "--", key, str(i))
        for i, key in enumerate(AWKWARD_KEYS):
            self.assertEqual(self.cli("-o", "text", "cat", "--", key)[0], str(i), key)


class TextValueTests(V1CLITestCase):
    """Text values print as text in get, cat, list and batch outputs (client.text_of's rule)."""

    def setUp(self) -> None:
        super().setUp()
        self.cli("put", "app/x", "hello")
        self.cli("put", "app/lines", "-", stdin=b"one\ntwo\n", )
        self.cli("put", "app/latin", "-", "-t", "text/plain; charset=latin-1", stdin=b"caf\xe9")
        self.cli("put", "app/bin", "-", stdin=b"\x00\xff\n")

    def test_get_text(self) -> None:
        """get of a text value prints it: a JSON string, or the text with -o text."""
        self.assertEqual(self.json_out("get", "app/x"), "hello")
        self.assertEqual(self.cli("-o", "text", "get", "app/x"), ("hello\n", ""))
        self.assertEqual(self.cli("-o", "text", "get", "app/lines"), ("one\ntwo\n", ""))
        self.assertEqual(self.json_out("get", "app/latin"), "caf\u00e9")

    def test_get_binary(self) -> None:
        """get of bytes that are not text gives them as base64 with their type."""
        self.assertEqual(self.json_out("get", "app/bin"),
                         {"value_base64": "AP8K", "content_type": "application/octet-stream"})

    def test_get_json_unchanged(self) -> None:
        """get of a JSON value prints the JSON, a string without quotes with -o text."""
        self.cli("put", "j", '"s"', "--json")
        self.assertEqual(self.json_out("get", "j"), "s")
        self.assertEqual(self.cli("-o", "text", "get", "j"), ("s\n", ""))

    def test_get_json_type_that_is_not_strict_json(self) -> None:
        """get of a JSON-typed NaN prints strict JSON (the text as a string), never a bare NaN."""
        self.cli("put", "nan", "NaN", "-t", "application/json")
        out, _ = self.cli("get", "nan")
        self.assertEqual(wire.strictjson(out), "NaN")

    def test_cat_text(self) -> None:
        """cat's JSON gives a text value as "text", not value_base64."""
        item = self.json_out("cat", "app/x")
        self.assertEqual(item["text"], "hello")
        self.assertNotIn("value_base64", item)
        self.assertEqual(self.json_out("cat", "app/bin")["value_base64"], "AP8K")

    def test_list_values_text(self) -> None:
        """-o text list --values shows text as itself, multi-line text quoted, bytes as base64."""
        out, _ = self.cli("-o", "text", "list", "app/", "--values")
        self.assertEqual(out, 'app/bin\tbase64:AP8K\napp/latin\tcaf\u00e9\n'
                              'app/lines\t"one\\ntwo\\n"\napp/x\thello\n')
        page = self.json_out("list", "app/", "--values")
        self.assertEqual([item.get("text") for item in page["items"]],
                         [None, "caf\u00e9", "one\ntwo\n", "hello"])

    def test_batch_get_text(self) -> None:
        """A batch get result of a text value carries it as text."""
        ops = [{"op": "get", "key": "app/x"}]
        result = self.json_out("batch", stdin=json.dumps(ops).encode("ascii"))
        self.assertEqual(result["results"][0]["text"], "hello")
        out, _ = self.cli("-o", "text", "batch", stdin=json.dumps(ops).encode("ascii"))
        self.assertEqual(out.splitlines()[0], "get app/x: hello")

    def test_text_rule(self) -> None:
        """text/* and JSON types decode by their charset; other types only as clean UTF-8."""
        self.assertEqual(client.text_of(b"caf\xc3\xa9", "text/plain"), "caf\u00e9")
        self.assertEqual(client.text_of(b"\x01", "text/plain"), "\x01")
        self.assertIsNone(client.text_of(b"\xe9", "text/plain"))
        self.assertEqual(client.text_of(b"\xe9", "text/csv; charset=latin-1"), "\u00e9")
        self.assertIsNone(client.text_of(b"x", "text/plain; charset=nonsense"))
        self.assertEqual(client.text_of(b"a\tb\r\n", "application/octet-stream"), "a\tb\r\n")
        self.assertIsNone(client.text_of(b"a\x00b", "application/octet-stream"))
        self.assertIsNone(client.text_of(b"\x89PNG", "image/png"))


class RmCommandTests(V1CLITestCase):
    """kvtwist rm."""

    def test_rm(self) -> None:
        """rm deletes the key and prints the result; text prints 'deleted KEY'."""
        self.cli("put", "a b", "1")
        self.cli("put", "c", "1")
        self.assertEqual(self.json_out("rm", "a b"), {"key": "a b", "deleted": True, "revision": 3})
        self.assertEqual(self.cli("-o", "text", "rm", "c"), ("deleted c\n", ""))
        self.assertEqual(self.store.rows, {})

    def test_rm_missing(self) -> None:
        """rm of an absent key exits 1."""
        self.cli("rm", "nope", code=1)

    def test_rm_if_match(self) -> None:
        """rm --if-match with a stale revision exits 4 and keeps the key."""
        self.cli("put", "a", "1")
        self.cli("put", "a", "2")
        out, err = self.cli("rm", "a", "--if-match", "1", code=4)
        self.assertTrue(err.startswith("kvtwist: 412 precondition-failed"), err)
        self.cli("rm", "a", "--if-match", "2")
        self.assertEqual(self.store.rows, {})


class ListCommandTests(V1CLITestCase):
    """kvtwist list."""

    def setUp(self) -> None:
        super().setUp()
        for key in ("a/1", "a/2", "a/3"):
            self.cli("put", key, '"%s"' % (key,), "--json")
        self.cli("put", "a/bin", "-", stdin=b"\x00")
        self.cli("put", "b \u00e9", "x")

    def test_list_json(self) -> None:
        """list PREFIX prints the page as JSON."""
        page = self.json_out("list", "a/")
        self.assertEqual([i["key"] for i in page["items"]], ["a/1", "a/2", "a/3", "a/bin"])
        self.assertEqual((page["revision"], page["next"]), (5, None))
        self.assertNotIn("value", page["items"][0])

    def test_list_text(self) -> None:
        """--output text prints one key per line; without a prefix, every key."""
        self.assertEqual(self.cli("-o", "text", "list"), ("a/1\na/2\na/3\na/bin\nb \u00e9\n", ""))

    def test_list_values(self) -> None:
        """--values adds the values: JSON inline, others base64 (text: after a tab)."""
        out, err = self.cli("-o", "text", "list", "a/", "--values")
        self.assertEqual(out, 'a/1\t"a/1"\na/2\t"a/2"\na/3\t"a/3"\na/bin\tbase64:AA==\n')
        self.assertEqual(self.json_out("list", "a/", "--values")["items"][0]["value"], "a/1")

    def test_list_pages(self) -> None:
        """--limit gives one page with next; text mode hints at --after on stderr; --after resumes."""
        page = self.json_out("list", "a/", "--limit", "2")
        self.assertEqual(([i["key"] for i in page["items"]], page["next"]), (["a/1", "a/2"], "a/2"))
        out, err = self.cli("-o", "text", "list", "a/", "-n", "2")
        self.assertEqual(out, "a/1\na/2\n")
        self.assertEqual(err, 'kvtwist: more keys follow; next page: --after "a/2" (or use --all)\n')
        page = self.json_out("list", "a/", "--limit", "2", "--after", "a/2")
        self.assertEqual([i["key"] for i in page["items"]], ["a/3", "a/bin"])

    def test_list_all(self) -> None:
        """--all follows next through every page and prints them as one listing."""
        listing = self.json_out("list", "--all", "--limit", "1")
        self.assertEqual([i["key"] for i in listing["items"]],
                         ["a/1", "a/2", "a/3", "a/bin", "b \u00e9"])
        self.assertEqual((listing["next"], listing["pages"]), (None, 5))
        out, err = self.cli("-o", "text", "list", "a/", "--all", "-n", "2", "--after", "a/1")
        self.assertEqual((out, err), ("a/2\na/3\na/bin\n", ""))

    def test_list_empty(self) -> None:
        """A prefix with no keys prints an empty listing (text: nothing)."""
        self.assertEqual(self.cli("-o", "text", "list", "zzz"), ("", ""))
        self.assertEqual(self.json_out("list", "zzz")["items"], [])

    def test_list_bad_limit(self) -> None:
        """--limit 0 or a non-number exits 2; one over the server's maximum exits 1."""
        for limit in ("0", "-3", "many"):
            self.cli("list", "--limit", limit, code=2)
        out, err = self.cli("list", "--limit", "1000000", code=1)
        self.assertTrue(err.startswith("kvtwist: 400 bad-parameter"), err)


BATCH_OPS = [
    {"op": "check-absent", "key": "new/\u00e9 x"},
    {"op": "set", "key": "new/\u00e9 x", "value": {"a": 1}},
    {"op": "set", "key": "bin", "value_base64": "AP8=", "content_type": "image/x"},
    {"op": "delete", "key": "old"},
    {"op": "get", "key": "keep"},
    {"op": "get", "key": "missing"},
]

BATCH_TEXT = (
    "check-absent new/\u00e9 x: ok\n"
    "set new/\u00e9 x: created\n"
    "set bin: created\n"
    "delete old: deleted\n"
    'get keep: {"k": 1}\n'
    "get missing: absent\n"
)


class OpsInputTests(V1CLITestCase):
    """What batch and txn accept as input: the same for both commands."""

    def test_bad_json(self) -> None:
        """Input that is not strict JSON, or not UTF-8, exits 2 and sends nothing."""
        for command in ("batch", "txn"):
            for data, message in (
                (b"[{", "the ops in stdin are not strict JSON: "),
                (b"", "the ops in stdin are not strict JSON: "),
                (b'[{"op": "get", "key": "a", "key": "b"}]',
                 "the ops in stdin are not strict JSON: the JSON object repeats the key 'key'"),
                (b'[{"op": "set", "key": "a", "value": NaN}]',
                 "the ops in stdin are not strict JSON: NaN is not valid JSON"),
                (b'["\\ud800"]', "the ops in stdin are not strict JSON: the JSON contains a lone surrogate"),
                (b"\xff[]", "the ops in stdin are not valid UTF-8"),
            ):
                out, err = self.cli(command, stdin=data, code=2, http=Failing(AssertionError()))
                self.assertTrue(err.startswith("kvtwist: " + message), (command, data, err))
                self.assertEqual(out, "")

    def test_wrong_shape(self) -> None:
        """A document that is neither a list nor {"ops": [...]} exits 2."""
        for command in ("batch", "txn"):
            for data in (b"{}", b'{"ops": {}}', b"3", b'"ops"', b"null"):
                out, err = self.cli(command, "-", stdin=data, code=2, http=Failing(AssertionError()))
                self.assertEqual(
                    err, 'kvtwist: the ops in stdin must be a JSON list of ops or {"ops": [...]}\n'
                )

    def test_unreadable_file(self) -> None:
        """A FILE that cannot be read exits 2, naming it."""
        missing = self.mktemp()
        for command in ("batch", "txn"):
            out, err = self.cli(command, missing, code=2)
            self.assertEqual(err, "kvtwist: cannot read %s: No such file or directory\n" % (missing,))

    def test_file_errors_name_the_file(self) -> None:
        """A bad ops file is named in the message."""
        path = self.file(b"[")
        out, err = self.cli("txn", path, code=2)
        self.assertTrue(err.startswith("kvtwist: the ops in %r are not strict JSON" % (path,)), err)


class BatchCommandTests(V1CLITestCase):
    """kvtwist batch."""

    def setUp(self) -> None:
        super().setUp()
        self.cli("put", "old", "1")
        self.cli("put", "keep", '{"k": 1}', "--json")

    def test_batch_from_stdin(self) -> None:
        """batch reads a JSON list of ops from stdin and prints the server's results."""
        result = self.json_out("batch", stdin=json.dumps(BATCH_OPS).encode("utf-8"))
        self.assertEqual(result["revision"], 3)
        self.assertEqual(len(result["results"]), 6)
        self.assertEqual(self.store.rows["new/\u00e9 x"].value, b'{"a":1}')
        self.assertEqual(self.store.rows["bin"].value, b"\x00\xff")
        self.assertNotIn("old", self.store.rows)

    def test_batch_from_file_text(self) -> None:
        """batch FILE reads {"ops": [...]}; text prints one line per op and the revision."""
        path = self.file(json.dumps({"ops": BATCH_OPS}).encode("utf-8"))
        self.assertEqual(
            self.cli("-o", "text", "batch", path), (BATCH_TEXT + "committed revision 3\n", "")
        )

    def test_batch_conflict_exits_4(self) -> None:
        """A failed check exits 4, printing the problem and one line per conflict; nothing applied."""
        ops = [{"op": "set", "key": "x", "value": 1},
               {"op": "check", "key": "keep", "revision": 1},
               {"op": "check-absent", "key": "old"}]
        out, err = self.cli("batch", stdin=json.dumps(ops).encode("ascii"), code=4)
        self.assertEqual(out, "")
        self.assertEqual(
            err,
            "kvtwist: 409 conflict: the commit was not applied: 2 check(s) failed on 'keep', 'old'\n"
            'kvtwist: conflict on "keep" (op 1): expected revision 1, found revision 2\n'
            'kvtwist: conflict on "old" (op 2): expected absent, found revision 1\n',
        )
        self.assertNotIn("x", self.store.rows)

    def test_batch_bad_op_is_the_servers_400(self) -> None:
        """batch leaves op checking to the server: a bad op exits 1 with its 400."""
        out, err = self.cli("batch", stdin=b'[{"op": "set", "key": "a"}]', code=1)
        self.assertEqual(
            err, "kvtwist: 400 bad-op: op 0: a set takes exactly one of value and value_base64\n"
        )


class IncrCommandTests(V1CLITestCase):
    """kvtwist incr."""

    def test_incr_prints_the_new_value(self) -> None:
        """incr KEY [BY] prints the counter's new value (text) or {key, value} (json), any size."""
        self.assertEqual(self.cli("-o", "text", "incr", "hits"), ("1\n", ""))
        self.assertEqual(self.cli("-o", "text", "incr", "hits", "-3"), ("-2\n", ""))
        self.assertEqual(self.json_out("incr", "hits", str(10 ** 25)), {"key": "hits", "value": 10 ** 25 - 2})
        self.assertEqual(self.store.rows["hits"].value, str(10 ** 25 - 2).encode())

    def test_not_an_integer_exits_4(self) -> None:
        """incr of a key that holds no JSON integer exits 4 naming not-an-integer; a bad BY is a usage error."""
        self.cli("put", "name", '"x"', "--json")
        out, err = self.cli("incr", "name", code=4)
        self.assertIn("409 not-an-integer", err)
        self.cli("incr", "n", "1.5", code=2)


class TxnCommandTests(V1CLITestCase):
    """kvtwist txn."""

    def setUp(self) -> None:
        super().setUp()
        self.cli("put", "old", "1")
        self.cli("put", "keep", '{"k": 1}', "--json")

    def test_txn_from_stdin(self) -> None:
        """txn stages each op in a transaction, commits, and prints id, revision, ops and results."""
        result = self.json_out("txn", stdin=json.dumps(BATCH_OPS).encode("utf-8"))
        self.assertEqual((result["revision"], result["ops"]), (3, 3))
        self.assertIsInstance(result["id"], str)
        self.assertEqual(
            [(r["op"], r["key"]) for r in result["results"]],
            [(op["op"], op["key"]) for op in BATCH_OPS],
        )
        self.assertEqual(self.store.rows["new/\u00e9 x"].value, b'{"a":1}')
        self.assertNotIn("old", self.store.rows)
        self.assertEqual(len(self.transactions), 0)

    def test_txn_from_file_text(self) -> None:
        """txn FILE prints the same text as batch would."""
        path = self.file(json.dumps(BATCH_OPS).encode("utf-8"))
        self.assertEqual(
            self.cli("-o", "text", "txn", path), (BATCH_TEXT + "committed revision 3\n", "")
        )

    def test_txn_accepts_the_batch_document(self) -> None:
        """txn also reads {"ops": [...]}, so one file serves both commands."""
        self.cli("txn", "-", stdin=b'{"ops": [{"op": "set", "key": "z", "value": 0}]}')
        self.assertEqual(self.store.rows["z"].value, b"0")

    def test_txn_check_fails_exits_4_and_aborts(self) -> None:
        """A check that does not hold exits 4, aborts the transaction and applies nothing."""
        ops = [{"op": "set", "key": "x", "value": 1},
               {"op": "check", "key": "keep", "revision": 1}]
        out, err = self.cli("txn", stdin=json.dumps(ops).encode("ascii"), code=4)
        self.assertEqual(
            err,
            "kvtwist: 409 conflict: the transaction was aborted: 1 check(s) failed on 'keep'\n"
            'kvtwist: conflict on "keep" (op 1): expected revision 1, found revision 2\n',
        )
        self.assertNotIn("x", self.store.rows)
        self.assertEqual(len(self.transactions), 0)

    def test_txn_commit_conflict_exits_4(self) -> None:
        """Another commit between the reads and the commit exits 4 naming the changed key."""

        def theirs() -> None:
            self.successResultOf(self.store.commit([Put("keep", b"theirs", "text/plain")]))

        http = Interloper(self.http, "/commit", theirs)
        ops = [{"op": "get", "key": "keep"}, {"op": "set", "key": "x", "value": 1}]
        out, err = self.cli("txn", stdin=json.dumps(ops).encode("ascii"), code=4, http=http)
        self.assertEqual(
            err.splitlines()[1],
            'kvtwist: conflict on "keep" (changed by another commit): '
            "expected revision 2, found revision 3",
        )
        self.assertNotIn("x", self.store.rows)

    def test_txn_bad_op_exits_2_sends_nothing(self) -> None:
        """txn checks ops before opening a transaction: a bad op exits 2, nothing sent."""
        out, err = self.cli(
            "txn", stdin=b'[{"op": "get", "key": "a"}, {"op": "check", "key": "a"}]',
            code=2, http=Failing(AssertionError()),
        )
        self.assertEqual(err, "kvtwist: op 1: revision must be a non-negative integer\n")

    def test_txn_server_error_exits_1_and_aborts(self) -> None:
        """An op the server refuses exits 1; the transaction is aborted, nothing applied."""
        ops = [{"op": "set", "key": "a", "value": 1}, {"op": "set", "key": "k" * 1025, "value": 1}]
        out, err = self.cli("txn", stdin=json.dumps(ops).encode("ascii"), code=1)
        self.assertTrue(err.startswith("kvtwist: 400 key-too-long"), err)
        self.assertNotIn("a", self.store.rows)
        self.assertEqual(len(self.transactions), 0)

    def test_txn_timeout_exits_3(self) -> None:
        """A transaction that stops getting answers exits 3 after --timeout."""
        http = FailAfter(self.http, 2)
        ops = [{"op": "set", "key": "a", "value": 1}, {"op": "set", "key": "b", "value": 1}]
        out, err = io.StringIO(), io.StringIO()
        d = main(self.clock, "--timeout", "5", "txn", http=http, stdout=out, stderr=err,
                 environ={}, stdin=io.BytesIO(json.dumps(ops).encode("ascii")))
        self.http.flush()
        self.clock.advance(5)
        self.assertEqual(self.failureResultOf(d, SystemExit).value.code, 3)
        self.assertIn("timed out after 5 s", err.getvalue())
        self.assertEqual(http.cancelled, 1)

    def test_txn_awkward_keys(self) -> None:
        """Keys with '/', spaces, '%', UTF-8 and reserved names go through txn intact."""
        ops = [{"op": "set", "key": key, "value": i} for i, key in enumerate(AWKWARD_KEYS)]
        self.cli("txn", stdin=json.dumps(ops).encode("utf-8"))
        for i, key in enumerate(AWKWARD_KEYS):
            self.assertEqual(self.store.rows[key].value, str(i).encode("ascii"), key)


class V1UsageTests(V1CLITestCase):
    """Help and usage of the v1 commands."""

    def test_help_lists_v1_commands_and_exit_4(self) -> None:
        """--help names the new commands and documents exit code 4."""
        out, err = self.cli("--help")
        for text in ("put", "cat", "rm", "list", "batch", "txn", "4  conflict"):
            self.assertIn(text, out)

    def test_command_help(self) -> None:
        """Each v1 command's --help exits 0; batch and txn show the op shapes."""
        for command in ("put", "cat", "rm", "list", "batch", "txn"):
            out, err = self.cli(command, "--help")
            self.assertIn("exit codes:", out)
            self.assertEqual(err, "")
        for command in ("batch", "txn"):
            self.assertIn('{"op": "check-absent", "key": K}', self.cli(command, "--help")[0])

    def test_usage_errors(self) -> None:
        """Missing or extra arguments of the v1 commands exit 2 with usage."""
        for argv in (("put",), ("cat",), ("cat", "a", "b"), ("rm",), ("list", "a", "b"),
                     ("batch", "a", "b"), ("txn", "a", "b"), ("put", "a", "b", "c")):
            out, err = self.cli(*argv, code=2)
            self.assertIn("usage: kvtwist", err, argv)

    def test_undecodable_arguments(self) -> None:
        """Arguments that were not UTF-8 on the command line exit 2."""
        self.assertEqual(self.cli("put", "k\udcff", "v", code=2)[1], "kvtwist: KEY is not valid UTF-8\n")
        self.assertEqual(self.cli("put", "k", "v\udcff", code=2)[1], "kvtwist: VALUE is not valid UTF-8\n")
        self.assertEqual(self.cli("list", "p\udcff", code=2)[1], "kvtwist: PREFIX is not valid UTF-8\n")
        self.assertEqual(self.cli("txn", "f\udcff", code=2)[1],
                         "kvtwist: the file name is not valid UTF-8\n")


class V1ConsoleScriptTests(SynchronousTestCase):
    """The v1 commands through a real interpreter, reading the real stdin (no network)."""

    def run_script(self, *argv: str, stdin: bytes) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-b", "-W", "error::BytesWarning", "-c",
             "from kvtwist.cli import run; run()", *argv],
            input=stdin, capture_output=True, timeout=60, cwd=PROJECT,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
        )

    def test_txn_reads_stdin(self) -> None:
        """'kvtwist txn' reads the process's stdin; bad JSON there exits 2 without a traceback."""
        result = self.run_script("txn", stdin=b"[{")
        self.assertEqual(result.returncode, 2)
        self.assertEqual(result.stdout, b"")
        self.assertTrue(
            result.stderr.startswith(b"kvtwist: the ops in stdin are not strict JSON"), result.stderr
        )

    def test_bad_op_from_stdin(self) -> None:
        """'kvtwist txn -' names the bad op read from stdin and exits 2."""
        result = self.run_script("txn", "-", stdin=b'[{"op": "nope", "key": "a"}]')
        self.assertEqual(result.returncode, 2)
        self.assertTrue(result.stderr.startswith(b"kvtwist: op 0: "), result.stderr)

    def test_no_stdin(self) -> None:
        """With stdin closed (no sys.stdin), 'put KEY -' exits 2 and says so."""
        result = subprocess.run(
            [sys.executable, "-c",
             "import sys; sys.stdin = None; from kvtwist.cli import run; sys.argv[1:] = "
             "['put', 'k', '-']; run()"],
            capture_output=True, timeout=60, cwd=PROJECT,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
        )
        self.assertEqual((result.returncode, result.stderr), (2, b"kvtwist: there is no stdin to read\n"))


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
