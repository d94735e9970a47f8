"""
The base of the C{kvtwist} command's tests (L{kvtwist.cli}): run it in
memory against C{StubTreq(memory_root())}, with stdout and stderr passed in
as C{io.StringIO}; and HTTP stand-ins that fail or never answer.
"""

from __future__ import annotations

import io
import json
from typing import Dict, Optional, Tuple

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.cli import main
from kvtwist.limits import Limits
from kvtwist.testing import MemoryStore, memory_root
from kvtwist.transactions import TransactionManager

from tests.helpers.paths import REPO

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
