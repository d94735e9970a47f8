"""
Tests for the C{kvtwist} command (L{kvtwist.cli}) itself and its seed
commands: output formats, options and their defaults, usage errors and
exit codes, connections, completion, signals, the console script.
"""

from __future__ import annotations

import io
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from typing import Dict, Optional
from urllib.parse import quote

from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionRefusedError, DNSLookupError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseNeverReceived

import kvtwist
from kvtwist.cli import main

from tests.helpers.client import AWKWARD_KEYS, Recorder
from tests.helpers.cli import PROJECT, CLITestCase, Failing, Hanging


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
